#!/usr/bin/env bash
# Proves the simulator finds bugs: for every bug planted in the server (cargo feature
# `planted-bugs`, see src/planted.rs), runs the explorer with the bug on the scenario meant
# to catch it, for a stated range of seeds, and counts the seeds that fail with the kind
# of failure that bug must cause; at least one must. A run that fails for another reason
# (a harness panic, a lost leader) does not count as caught. Then it runs the same seeds,
# with the same durations and the same binary, without the bug: every one of them must
# pass (no failure, and no inconclusive check), so that the failures are the bug's doing.
# Runs in CI from ci/test.sh (in about two minutes); on its own:
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

# bug | scenario | seeds (1..=N, run with the bug and again without) | the failure kinds
# that count as caught (`FAILED SCENARIO seed N (KIND):` of `detcd-sim explore`, see
# failure_class in sim/src/shrink.rs), comma-separated | what catches it
BUGS=(
  "stale-read|leader-isolation|8|linearizability|linearizability: a follower serves a read it has not caught up for"
  "ack-before-fsync|power-loss|8|lost-entries|lost entries: a restarted member's WAL lacks entries it had acknowledged (its backend is ahead of it, or raft finds the leader's commit beyond its log)"
  "double-apply|random-crash|8|linearizability,hashkv|linearizability or HashKV: an entry applied twice after a restart"
  "stale-lease-revoke|lease-expiry-under-partition|8|linearizability|linearizability: a lease revoked by a deposed leader"
  "watch-reorder|slow-watchers|8|watch-guarantee|watch checker: events of one batch delivered out of order"
)

# Checks the HTML report `$5` of a run that caught bug `$2` (scenario `$3`, seed `$4`;
# the explorer's log is `$1`): the log must name it, and it must exist, say how to
# reproduce the run, give the verdict, and highlight what the checkers blame (operations,
# or watch responses). Returns non-zero otherwise.
check_report() {
  local log=$1 bug=$2 scenario=$3 seed=$4 report=$5
  if ! grep -qx "  report: $report" "$log"; then
    echo "the explorer's output does not name the report $report"
    return 1
  elif [[ -z "$report" || ! -s "$report" ]]; then
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
  IFS='|' read -r bug scenario seeds kinds what <<<"$entry"
  echo "== planted bug $bug: scenario $scenario, seeds 1..=$seeds, failure kind $kinds ($what)"
  started=$SECONDS
  log=$(mktemp)
  # The explorer exits non-zero when a run fails, which is what is wanted here.
  DETCD_PLANTED_BUG="$bug" "$SIM" explore --scenario "scenarios/$scenario.toml" \
    --seeds "1..$((seeds + 1))" >"$log" 2>&1 || true
  caught=()
  other=()
  while read -r seed kind; do
    if [[ ",$kinds," == *",$kind,"* ]]; then
      caught+=("$seed")
    else
      other+=("$seed ($kind)")
    fi
  done < <(sed -nE "s/^FAILED $scenario seed ([0-9]+) \(([a-z-]+)\):.*/\1 \2/p" "$log" | sort -n)
  grep -m1 -A2 "^FAILED" "$log" | cut -c1-300 || true
  if ((${#other[@]} > 0)); then
    echo "failed for another reason (not counted as caught): ${other[*]}"
  fi
  if ((${#caught[@]} == 0)); then
    tail -5 "$log"
    echo "NOT CAUGHT: $bug in seeds 1..=$seeds of $scenario"
    summary+=("$bug: NOT caught by $scenario in seeds 1..=$seeds")
    failed=1
  else
    echo "caught: $bug by ${#caught[@]} of $seeds seeds (${caught[*]})"
    check_report "$log" "$bug" "$scenario" "${caught[0]}" "target/detcd-sim/$scenario-${caught[0]}.html" \
      || failed=1
    summary+=("$bug: caught by $scenario ($kinds) in ${#caught[@]} of $seeds seeds, first $((caught[0]))")
  fi
  rm -f "$log"
  echo "-- control: seeds 1..=$seeds of $scenario without the bug must all pass"
  if control "$scenario" "$seeds"; then
    summary+=("$bug: seeds 1..=$seeds of $scenario all pass without it")
  else
    echo "CONTROL FAILED: seeds 1..=$seeds of $scenario do not all pass without $bug"
    summary+=("$bug: CONTROL FAILED, seeds 1..=$seeds of $scenario do not all pass without it")
    failed=1
  fi
  echo "($((SECONDS - started)) s)"
done

echo "== planted bugs (${SECONDS} s)"
printf '%s\n' "${summary[@]}"
exit "$failed"
