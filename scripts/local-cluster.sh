#!/usr/bin/env bash
# Runs the 3-member cluster of scripts/Procfile in the foreground: builds detcd, starts the
# three members with their logs in /tmp/detcd-m{1,2,3}.log, prints how to reach them, and
# stops them all on Ctrl-C. Data stays in /tmp/detcd-m{1,2,3}.etcd between runs (delete
# those directories to start a fresh cluster).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin detcd
pids=()
stop() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap stop EXIT INT TERM
while IFS= read -r line; do
  case "$line" in
    detcd*:*) ;;
    *) continue ;;
  esac
  name="${line%%:*}"
  cmd="${line#*: }"
  # Word splitting is wanted here: the Procfile line is a plain command with flags.
  # shellcheck disable=SC2086
  $cmd >"/tmp/detcd-m${name#detcd}.log" 2>&1 &
  pids+=("$!")
  echo "started $name (pid $!), log /tmp/detcd-m${name#detcd}.log"
done < scripts/Procfile
echo
echo "endpoints: 127.0.0.1:12379,127.0.0.1:22379,127.0.0.1:32379"
echo "try:       ETCDCTL_API=3 etcdctl --endpoints 127.0.0.1:12379,127.0.0.1:22379,127.0.0.1:32379 endpoint status -w table"
echo "Ctrl-C stops the cluster."
wait
