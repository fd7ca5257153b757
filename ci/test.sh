#!/usr/bin/env bash
# The whole detcd test suite, as CI runs it on a fresh machine:
#   1. install what the tests drive (the real etcd 3.4 and etcdctl, from Debian);
#   2. check formatting and lints;
#   3. build and test the tokio configuration (unit, model, real-process tests);
#   4. build and test the madsim configuration (simulation tests) in its own target dir;
#   5. show that the simulator catches every bug planted in the server (ci/planted-bugs.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

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

echo "== cargo clippy (madsim configuration)"
RUSTFLAGS="--cfg madsim" cargo clippy -p detcd-sim --all-targets --target-dir target/madsim -- -D warnings

echo "== tests (madsim configuration)"
RUSTFLAGS="--cfg madsim" cargo test -p detcd-sim --target-dir target/madsim

echo "== the simulator catches every planted bug"
bash ci/planted-bugs.sh

echo "== all test stages passed"
