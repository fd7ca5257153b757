#!/usr/bin/env bash
# Proves the simulator finds bugs: for every bug planted in the server (cargo feature
# `planted-bugs`, see src/planted.rs), runs the explorer on the scenario meant to catch it
# and requires a failure of the kind that bug must cause within a stated number of seeds
# (a failure of another kind, such as a harness panic, does not count). Then it runs the
# same seeds, with the same durations and the same binary, without the bug: every one of
# them must pass (no failure, and no inconclusive check), so that the failure is the
# bug's doing. Prints how many seeds each bug needed. Runs in CI from ci/test.sh; on its
# own:
#   bash ci/planted-bugs.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# The madsim build of the simulator with the planted bugs compiled in. It shares the
# madsim target dir with the normal simulation build: only detcd and detcd-sim are built
# again (with the feature), the dependencies are reused. It is a debug build: detcd
# refuses to compile the feature without debug assertions.
export RUSTFLAGS="--cfg madsim"
TARGET_DIR=target/madsim
cargo build -p detcd-sim --bin detcd-sim --features planted-bugs --target-dir "$TARGET_DIR"
SIM="$TARGET_DIR/debug/detcd-sim"
# The bug is chosen by this variable alone; the control runs must not inherit one.
unset DETCD_PLANTED_BUG

# bug | scenario | the most seeds it may take | the failure kinds that count as caught
# (`first failure kind:` of `detcd-sim explore`, see failure_class in sim/src/shrink.rs),
# comma-separated | what catches it
BUGS=(
  "stale-read|leader-isolation|10|linearizability|linearizability: a follower serves a read it has not caught up for"
  "ack-before-fsync|power-loss|20|progress|the member cannot restart: its WAL lost entries it had acknowledged"
  "double-apply|random-crash|20|linearizability,hashkv|linearizability or HashKV: an entry applied twice after a restart"
  "stale-lease-revoke|lease-expiry-under-partition|20|linearizability|linearizability: a lease revoked by a deposed leader"
  "watch-reorder|slow-watchers|10|watch-guarantee|watch checker: events of one batch delivered out of order"
)

# Checks the HTML report of the failing run named in the explorer's log `$1` (bug `$2`,
# scenario `$3`, seed `$4`): it must exist, say how to reproduce the run, and highlight
# what the checkers blame (operations, or watch responses). Returns non-zero otherwise.
check_report() {
  local log=$1 bug=$2 scenario=$3 seed=$4 report
  report=$(grep -m1 "^  report: " "$log" | sed 's/^  report: //')
  if [[ -z "$report" || ! -s "$report" ]]; then
    echo "NO REPORT for $bug"
    return 1
  elif ! grep -q "detcd-sim run --scenario scenarios/$scenario.toml --seed $seed" "$report"; then
    echo "the report $report does not give the reproduce line"
    return 1
  elif ! grep -q 'class="verdict verdict-failed"' "$report"; then
    echo "the report $report does not give the verdict"
    return 1
  elif grep -q "not linearizable" "$report" && ! grep -q 'class="flag"' "$report"; then
    echo "the report $report names no violating operation"
    return 1
  elif grep -q "watch guarantee" "$report" && ! grep -q 'class="watch-violation"' "$report"; then
    echo "the report $report shows no broken watch guarantee"
    return 1
  fi
  echo "report: $report ($(grep -o 'class="flag"' "$report" | wc -l) highlighted rows and bars)"
}

# Runs seeds 1..=`$2` of scenario `$1` without any planted bug; every run must pass.
control() {
  local scenario=$1 seeds=$2 log
  log=$(mktemp)
  local status=0
  "$SIM" explore --scenario "scenarios/$scenario.toml" --seeds "1..$((seeds + 1))" \
    >"$log" 2>&1 || status=$?
  grep -E "^(FAILED|INCONCLUSIVE) " "$log" | cut -c1-300 || true
  grep -m1 -E "^[0-9]+ passed, [0-9]+ failed, [0-9]+ inconclusive" "$log" || tail -5 "$log"
  rm -f "$log"
  return "$status"
}

failed=0
summary=()
for entry in "${BUGS[@]}"; do
  IFS='|' read -r bug scenario max kinds what <<<"$entry"
  echo "== planted bug $bug: scenario $scenario, at most $max seeds, failure kind $kinds ($what)"
  started=$SECONDS
  log=$(mktemp)
  # The explorer exits non-zero when a run fails, which is what is wanted here.
  DETCD_PLANTED_BUG="$bug" "$SIM" explore --scenario "scenarios/$scenario.toml" \
    --seeds "1..$((max + 1))" --until-failure --threads 1 >"$log" 2>&1 || true
  line=$(grep -m1 "^first failure at seed" "$log" || true)
  kind=$(grep -m1 "^first failure kind: " "$log" | sed 's/^first failure kind: //' || true)
  ran=$max
  if [[ -z "$line" ]]; then
    tail -5 "$log"
    echo "NOT CAUGHT: $bug in $max seeds of $scenario"
    summary+=("$bug: NOT caught by $scenario in $max seeds")
    failed=1
  else
    first_seed=$(sed -E 's/^first failure at seed ([0-9]+).*/\1/' <<<"$line")
    ran=$first_seed
    grep -m3 -A2 "^FAILED" "$log" | cut -c1-300 || true
    if [[ ",$kinds," != *",$kind,"* ]]; then
      echo "CAUGHT FOR ANOTHER REASON: $bug made seed $first_seed fail with kind '$kind'," \
        "not $kinds"
      summary+=("$bug: seed $first_seed of $scenario failed with kind '$kind', not $kinds")
      failed=1
    else
      echo "caught: $bug within $first_seed seed(s) ($kind)"
      check_report "$log" "$bug" "$scenario" "$first_seed" || failed=1
      summary+=("$bug: caught by $scenario ($kind) within $first_seed of $max seeds")
    fi
  fi
  rm -f "$log"
  echo "-- control: seeds 1..=$ran of $scenario without the bug must all pass"
  if control "$scenario" "$ran"; then
    summary+=("$bug: seeds 1..=$ran of $scenario pass without it")
  else
    echo "CONTROL FAILED: seeds 1..=$ran of $scenario do not all pass without $bug"
    summary+=("$bug: CONTROL FAILED, seeds 1..=$ran of $scenario do not all pass without it")
    failed=1
  fi
  echo "($((SECONDS - started)) s)"
done

echo "== planted bugs (${SECONDS} s)"
printf '%s\n' "${summary[@]}"
exit "$failed"
