#!/usr/bin/env bash
# Proves the simulator finds bugs: for every bug planted in the server (cargo feature
# `planted-bugs`, see src/planted.rs), runs the explorer on the scenario meant to catch it
# and requires a failure within a stated number of seeds. Prints how many seeds each bug
# needed. Runs in CI from ci/test.sh; on its own:
#   bash ci/planted-bugs.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# The madsim build of the simulator with the planted bugs compiled in. It shares the
# madsim target dir with the normal simulation build: only detcd and detcd-sim are built
# again (with the feature), the dependencies are reused.
export RUSTFLAGS="--cfg madsim"
TARGET_DIR=target/madsim
cargo build -p detcd-sim --bin detcd-sim --features planted-bugs --target-dir "$TARGET_DIR"
SIM="$TARGET_DIR/debug/detcd-sim"

# bug | scenario | the most seeds it may take | what catches it
BUGS=(
  "stale-read|leader-isolation|10|linearizability: a follower serves a read it has not caught up for"
  "ack-before-fsync|power-loss|20|linearizability: an acknowledged write lost when a majority loses power"
  "double-apply|random-crash|20|linearizability or HashKV: an entry applied twice after a restart"
  "stale-lease-revoke|lease-expiry-under-partition|20|linearizability: a lease revoked by a deposed leader"
  "watch-reorder|slow-watchers|10|watch checker: events of one batch delivered out of order"
)

failed=0
summary=()
for entry in "${BUGS[@]}"; do
  IFS='|' read -r bug scenario max what <<<"$entry"
  echo "== planted bug $bug: scenario $scenario, at most $max seeds ($what)"
  log=$(mktemp)
  # The explorer exits 1 when a run fails, which is what is wanted here.
  DETCD_PLANTED_BUG="$bug" "$SIM" explore --scenario "scenarios/$scenario.toml" \
    --seeds "1..$((max + 1))" --until-failure --threads 1 >"$log" 2>&1 || true
  if line=$(grep -m1 "^first failure at seed" "$log"); then
    seeds=$(sed -E 's/.*caught within ([0-9]+) seed.*/\1/' <<<"$line")
    grep -m3 -A2 "^FAILED" "$log" | cut -c1-300 || true
    echo "caught: $bug within $seeds seed(s)"
    summary+=("$bug: caught by $scenario within $seeds of $max seeds")
    # The failing run's HTML report must exist, say how to reproduce the run, and
    # highlight what the checkers blame (operations, or watch responses).
    report=$(grep -m1 "^  report: " "$log" | sed 's/^  report: //')
    first_seed=$(sed -E 's/^first failure at seed ([0-9]+).*/\1/' <<<"$line")
    if [[ -z "$report" || ! -s "$report" ]]; then
      echo "NO REPORT for $bug"
      failed=1
    elif ! grep -q "detcd-sim run --scenario scenarios/$scenario.toml --seed $first_seed" "$report"; then
      echo "the report $report does not give the reproduce line"
      failed=1
    elif grep -q "not linearizable" "$report" && ! grep -q 'class="flag"' "$report"; then
      echo "the report $report names no violating operation"
      failed=1
    elif grep -q "watch guarantee" "$report" && ! grep -q 'class="watch-violation"' "$report"; then
      echo "the report $report shows no broken watch guarantee"
      failed=1
    else
      echo "report: $report ($(grep -o 'class="flag"' "$report" | wc -l) highlighted rows and bars)"
    fi
  else
    tail -5 "$log"
    echo "NOT CAUGHT: $bug in $max seeds of $scenario"
    summary+=("$bug: NOT caught by $scenario in $max seeds")
    failed=1
  fi
  rm -f "$log"
done

echo "== planted bugs"
printf '%s\n' "${summary[@]}"
exit "$failed"
