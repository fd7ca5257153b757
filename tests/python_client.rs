//! The python-etcd3 client library (Debian's `python3-etcd3`, installed by
//! `ci/install-test-deps.sh`) runs the same session against the server under test and the
//! real etcd 3.4.23 (`tests/clients/python_etcd3.py`): KV, transactions, leases, watches
//! (callback, iterator, prefix, compacted history), the library's locks, members, status
//! and errors. The two transcripts must be identical line for line.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{run_with_timeout, Kind, Server};

/// The interpreter the Debian package installs into (not a user's virtual environment).
const PYTHON: &str = "/usr/bin/python3";

fn session(server: &Server) -> String {
    let url = server.client_url();
    let (host, port) = url
        .trim_start_matches("http://")
        .split_once(':')
        .expect("host:port");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/python_etcd3.py");
    let mut cmd = Command::new(PYTHON);
    cmd.args([script, host, port]);
    let out = run_with_timeout(cmd, None, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "python-etcd3 session against {url} failed ({}):\n{}\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    out.stdout
}

#[test]
fn python_etcd3_session_matches_etcd() {
    let available = Command::new(PYTHON)
        .args(["-c", "import etcd3"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        available,
        "{PYTHON} cannot import etcd3: install python3-etcd3 (ci/install-test-deps.sh does)"
    );
    let ours = session(&Server::start());
    let theirs = session(&Server::start_etcd());
    // The session reached its end: the last line is printed after every other call.
    assert!(
        ours.lines().any(|l| l.starts_with("duplicate lease")),
        "{ours}"
    );
    for (i, (a, b)) in ours.lines().zip(theirs.lines()).enumerate() {
        assert_eq!(
            a,
            b,
            "line {} of the python-etcd3 session differs ({} vs etcd)",
            i + 1,
            Kind::under_test().name()
        );
    }
    assert_eq!(ours.lines().count(), theirs.lines().count());
}
