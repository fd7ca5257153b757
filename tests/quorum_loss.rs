//! Quorum loss with real processes and the real etcdctl: with two of three members killed,
//! a write through the survivor fails with etcd's error within the request timeout (it
//! never hangs and never reports success), serializable reads still answer, and once the
//! two restart the cluster serves every acknowledged write again.

mod common;

use std::time::{Duration, Instant};

use common::ClusterProc;

/// etcd's request timeout for the default timing: 5 s plus twice the election timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(7);
/// etcdctl's own deadline for the write, far beyond the server's request timeout.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);
/// The errors etcd answers a write with when it cannot reach a quorum.
const QUORUM_ERRORS: [&str; 3] = [
    "etcdserver: request timed out",
    "etcdserver: leader changed",
    "etcdserver: no leader",
];

#[test]
fn losing_two_of_three_fails_writes_in_time_and_recovers_on_restart() {
    let mut c = ClusterProc::start(3);
    c.put_spread("q", 10);
    // Make sure the survivor has applied everything before the others go.
    c.etcdctl(&c.client_url(0), &["get", "q9"]).ok();
    c.kill_9(1);
    c.kill_9(2);

    let start = Instant::now();
    let out = c.etcdctl(
        &c.client_url(0),
        &["put", "lost", "x", "--command-timeout=20s"],
    );
    let took = start.elapsed();
    assert!(!out.success(), "a write without quorum succeeded");
    assert!(
        QUORUM_ERRORS.iter().any(|e| out.stderr.contains(e)),
        "unexpected error: {}",
        out.stderr
    );
    // The error text shows the server gave up (etcdctl's own 20 s deadline would say
    // "context deadline exceeded"); its request timeout is 7 s, but on a loaded machine
    // the etcdctl start and the answer can take longer, so only the command timeout is
    // asserted and the measured time is printed.
    println!(
        "the write without quorum failed after {took:?} (server request timeout {REQUEST_TIMEOUT:?},          including the etcdctl start): {}",
        out.stderr.lines().last().unwrap_or_default()
    );
    assert!(
        took < COMMAND_TIMEOUT,
        "the write took {took:?} to fail: it hung until etcdctl gave up"
    );

    // A serializable read is served from the survivor's own state.
    let got = c.etcdctl(
        &c.client_url(0),
        &[
            "get",
            "q",
            "--prefix",
            "--consistency=s",
            "--print-value-only",
        ],
    );
    let values: Vec<&str> = got.ok().lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(values.len(), 10, "{values:?}");

    c.restart_nowait(1);
    c.restart_nowait(2);
    c.put_when_writable(&c.endpoints(), "after", "ok");
    for i in 0..3 {
        let got = c.etcdctl(
            &c.client_url(i),
            &["get", "q", "--prefix", "--print-value-only"],
        );
        let values: Vec<&str> = got.ok().lines().filter(|l| !l.is_empty()).collect();
        assert_eq!(values.len(), 10, "member {i}: {values:?}");
        assert_eq!(
            c.etcdctl(&c.client_url(i), &["get", "after", "--print-value-only"])
                .ok()
                .trim(),
            "ok"
        );
    }
}
