//! `etcdctl watch` against the server. Expected output was checked against etcd 3.4.23
//! (`DETCD_TEST_SERVER=etcd cargo test --test etcdctl_watch`).

mod common;

use std::time::Duration;

use common::Server;

const WAIT: Duration = Duration::from_secs(10);

/// Waits until the background watcher is registered: etcdctl prints nothing on
/// creation, so poll with a write to a sentinel key until it shows up.
fn lines_after_writes(
    s: &Server,
    w: &mut common::Background,
    writes: &[&[&str]],
    n: usize,
) -> Vec<String> {
    // etcdctl gives no sign that the watch is created; give it a moment.
    std::thread::sleep(Duration::from_millis(500));
    for args in writes {
        assert!(s.etcdctl(args).success(), "etcdctl {args:?}");
    }
    w.lines_until(n, WAIT).to_vec()
}

#[test]
fn watch_key_and_prefix() {
    let s = Server::start();
    let mut key = s.etcdctl_background(&["watch", "foo"], None);
    let mut prefix = s.etcdctl_background(&["watch", "--prefix", "fo"], None);
    let got = lines_after_writes(
        &s,
        &mut key,
        &[&["put", "foo", "1"], &["put", "fox", "2"], &["del", "foo"]],
        6,
    );
    assert_eq!(got, ["PUT", "foo", "1", "DELETE", "foo", ""]);
    let got = prefix.lines_until(9, WAIT).to_vec();
    assert_eq!(
        got,
        ["PUT", "foo", "1", "PUT", "fox", "2", "DELETE", "foo", ""]
    );
}

#[test]
fn watch_rev_and_prev_kv() {
    let s = Server::start();
    for (k, v) in [("a", "1"), ("a", "2"), ("b", "1")] {
        assert!(s.etcdctl(&["put", k, v]).success());
    }
    assert!(s.etcdctl(&["del", "a"]).success());
    let mut w = s.etcdctl_background(&["watch", "a", "--rev", "2", "--prev-kv"], None);
    let got = w.lines_until(13, WAIT).to_vec();
    // With --prev-kv, an event whose key had a value prints that one first.
    assert_eq!(
        got,
        ["PUT", "a", "1", "PUT", "a", "1", "a", "2", "DELETE", "a", "2", "a", ""]
    );
}

#[test]
fn watch_compacted_revision_is_canceled() {
    let s = Server::start();
    for v in ["1", "2", "3"] {
        assert!(s.etcdctl(&["put", "k", v]).success());
    }
    assert!(s.etcdctl(&["compaction", "3"]).success());
    let mut w = s.etcdctl_background(&["watch", "k", "--rev", "1"], None);
    let got = w.lines_until(2, WAIT).to_vec();
    assert_eq!(
        got,
        [
            "watch was canceled (etcdserver: mvcc: required revision has been compacted)",
            "Error: watch is canceled by the server"
        ]
    );
    assert!(w.wait_exit(WAIT).is_some(), "etcdctl exits");
}

#[test]
fn watch_interactive() {
    let s = Server::start();
    let mut w = s.etcdctl_background(&["watch", "-i"], Some("watch x\n"));
    let got = lines_after_writes(&s, &mut w, &[&["put", "x", "1"]], 3);
    assert_eq!(got, ["PUT", "x", "1"]);
    w.write_stdin("watch y --prefix\n");
    let got = lines_after_writes(&s, &mut w, &[&["put", "y1", "2"]], 6);
    assert_eq!(got[3..], ["PUT", "y1", "2"]);
}
