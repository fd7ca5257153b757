#!/usr/bin/env bash
# The etcd pass: every real-process test that claims etcd's behaviour runs against the
# real etcd 3.4.23 too (DETCD_TEST_SERVER=etcd, see tests/README.md), so that the expected
# outputs, codes and messages in the tests are etcd's and not only detcd's. Runs in CI
# from ci/test.sh after the tokio tests; on its own:
#   bash ci/etcd-pass.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# The test files that claim etcd's behaviour. Each runs whole, but for the tests listed in
# SKIPS below.
TESTS=(
  etcdctl_kv
  etcdctl_endpoints
  etcdctl_watch
  etcdctl_lease
  client_kv
  client_watch
  client_lease
  auth
  auth_jwt
  lock_election
  alarm
  http_gateway
  http_curl
  http_access
  grpc_health
  unsafe_no_fsync
  python_client
  tls
  unix_socket
  cli
  metrics
  membership
  snapshot
  crash
  wal_dir
  wal_corruption
  quorum_loss
  cluster
  force_new_cluster
)

# Test files left out, as `file|why`. Their tests either compare detcd with etcd whatever
# the switch says, or call `common::detcd_only(why)`, which fails them against etcd with
# the reason instead of letting them pass without having checked anything.
EXCLUDED_FILES=(
  "differential|runs the real etcd as its reference beside the server under test; with the switch it compares etcd with itself, minutes of work that check nothing about the tests' expectations"
  "differential_watch|the same: etcd is always its reference"
  "differential_auth|compares detcd with etcd whatever the switch says"
  "snapshot_restore|detcd's own 'detcd snapshot status/restore' and detcd members restored with them (etcd 3.4's are etcdctl's, tested against both in snapshot.rs)"
  "raft_snapshot|needs --experimental-snapshot-catchup-entries, an etcd 3.5 flag that etcd 3.4.23 refuses (detcd_only)"
  "crash_loop|the same flag (detcd_only)"
)

# Single tests left out of the files in TESTS, as `name|why`. Each calls
# `common::detcd_only(why)`.
SKIPS=(
  "initial_corrupt_check_refuses_a_member_whose_data_differs|alarm.rs: tampers with the member's backend through detcd's sled code; etcd's backend is a bbolt file"
  "periodic_corrupt_check_raises_corrupt_and_writes_stop|alarm.rs: the same tampering"
)

# Every test file is in one list or the other, so that a new file is placed knowingly.
listed=" ${TESTS[*]} "
for entry in "${EXCLUDED_FILES[@]}"; do
  listed+="${entry%%|*} "
done
for f in tests/*.rs; do
  name=$(basename "$f" .rs)
  if [[ "$listed" != *" $name "* ]]; then
    echo "tests/$name.rs is neither in the etcd pass nor excluded from it in ci/etcd-pass.sh" >&2
    exit 1
  fi
done

args=()
for t in "${TESTS[@]}"; do
  args+=(--test "$t")
done
echo "test files left out of the etcd pass:"
for entry in "${EXCLUDED_FILES[@]}"; do
  IFS='|' read -r file why <<<"$entry"
  echo "  $file: $why"
done
echo "tests left out of the etcd pass (detcd only):"
skip_args=()
for entry in "${SKIPS[@]}"; do
  IFS='|' read -r name why <<<"$entry"
  echo "  $name: $why"
  skip_args+=(--skip "$name")
done

start=$(date +%s)
# --exact makes each --skip match one test's whole name.
DETCD_TEST_SERVER=etcd cargo test "${args[@]}" -- --exact "${skip_args[@]}"
echo "the etcd pass took $(($(date +%s) - start)) s"
