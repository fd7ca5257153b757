#!/usr/bin/env bash
# The whole detcd test suite, as CI runs it on a fresh machine:
#   1. install what the tests drive (the real etcd 3.4 and etcdctl, from Debian);
#   2. check formatting and lints;
#   3. build and test the tokio configuration (unit, model, real-process tests);
#   4. run every test that claims etcd's behaviour against the real etcd 3.4.23 too
#      (ci/etcd-pass.sh);
#   5. build and test the madsim configuration (simulation tests) in its own target dir;
#   6. show that the simulator catches every bug planted in the server (ci/planted-bugs.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

# Variables that change what is tested are cleared, so that a stray one in the caller's
# environment cannot, say, make the suite compare etcd with etcd, shorten the differential
# runs, plant a bug in the server, or start the servers with other flags:
# - the tests' server switch and binary paths, and the differential tests' knobs;
# - the planted-bug switch and the simulator's trace and log switches;
# - `ETCD_*` and `ETCDCTL_*`, which detcd, etcd and etcdctl read as flags (ETCD_BIN and
#   ETCDCTL_BIN, the tests' binary paths, are among them);
# - `MADSIM_*` (the simulation runtime's seed, count and limits) and `PROPTEST_*` (the
#   property tests' case counts and seeds);
# - RUSTFLAGS, which would build the tokio configuration with other cfgs (the madsim
#   stages set their own).
unset DETCD_TEST_SERVER DETCD_TEST_KEEP DETCD_DIFF_OPS DETCD_DIFF_SEED DETCD_WDIFF_OPS \
  DETCD_WDIFF_SEED DETCD_PLANTED_BUG DETCD_SIM_TRACE DETCD_SIM_LOG RUSTFLAGS
for var in $(compgen -e); do
  case "$var" in
    ETCD_* | ETCDCTL_* | MADSIM_* | PROPTEST_*) unset "$var" ;;
  esac
done

echo "== installing test dependencies (etcd 3.4, etcdctl, protoc for the etcd-client crate)"
bash ci/install-test-deps.sh
# The Debian package may start a system etcd on the default ports; the tests use their
# own ports, but a stray server is not wanted either.
(systemctl stop etcd || service etcd stop || true) >/dev/null 2>&1

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy (tokio configuration)"
cargo clippy --workspace --all-targets -- -D warnings

echo "== tests (tokio configuration)"
cargo test --workspace

echo "== the etcd pass: tests that claim etcd's behaviour, run against etcd 3.4.23"
bash ci/etcd-pass.sh

echo "== cargo clippy (madsim configuration)"
RUSTFLAGS="--cfg madsim" cargo clippy -p detcd-sim --all-targets --target-dir target/madsim -- -D warnings

echo "== tests (madsim configuration)"
RUSTFLAGS="--cfg madsim" cargo test -p detcd-sim --target-dir target/madsim

echo "== the simulator catches every planted bug"
bash ci/planted-bugs.sh

echo "== all test stages passed"
