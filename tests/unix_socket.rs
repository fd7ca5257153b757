//! Client listeners on Unix-domain sockets (`unix://host:port` in `--listen-client-urls`,
//! a socket file named `host:port` in the member's working directory, as etcd makes it):
//! the real etcdctl writes and reads through the socket, and the TCP listener beside it
//! sees the same data. `DETCD_TEST_SERVER=etcd` runs the same test against etcd.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{etcdctl_bin, free_port, run_with_timeout, terminate, Kind};

fn etcdctl(dir: &std::path::Path, endpoint: &str, args: &[&str]) -> common::Output {
    let mut cmd = Command::new(etcdctl_bin());
    cmd.current_dir(dir)
        .env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(endpoint)
        .args(args);
    run_with_timeout(cmd, None, Duration::from_secs(20))
}

#[test]
fn etcdctl_reaches_the_member_over_a_unix_socket() {
    let kind = Kind::under_test();
    let dir = tempfile::tempdir().expect("temp dir");
    let client_tcp = format!("http://127.0.0.1:{}", free_port());
    let peer = format!("http://127.0.0.1:{}", free_port());
    let socket = format!("localhost:{}", free_port());
    let log = std::fs::File::create(dir.path().join("member.log")).expect("log");
    let mut child = Command::new(kind.binary())
        .current_dir(dir.path())
        .args(["--name", "u1", "--data-dir", "data"])
        .arg("--listen-client-urls")
        .arg(format!("{client_tcp},unix://{socket}"))
        .arg("--advertise-client-urls")
        .arg(&client_tcp)
        .arg("--listen-peer-urls")
        .arg(&peer)
        .arg("--initial-advertise-peer-urls")
        .arg(&peer)
        .arg("--initial-cluster")
        .arg(format!("u1={peer}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("spawn the member");
    let unix = format!("unix://{socket}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut put = etcdctl(dir.path(), &unix, &["put", "foo", "over-the-socket"]);
    while !put.success() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        put = etcdctl(dir.path(), &unix, &["put", "foo", "over-the-socket"]);
    }
    let log_text = || std::fs::read_to_string(dir.path().join("member.log")).unwrap_or_default();
    assert!(
        put.success(),
        "put over the socket failed: {put:?}\n{}",
        log_text()
    );
    assert_eq!(put.ok(), "OK\n");
    assert!(
        dir.path().join(&socket).exists(),
        "the socket file {socket} is in the member's working directory"
    );
    assert_eq!(
        etcdctl(dir.path(), &unix, &["get", "foo"]).ok(),
        "foo\nover-the-socket\n"
    );
    assert_eq!(
        etcdctl(dir.path(), &client_tcp, &["get", "foo"]).ok(),
        "foo\nover-the-socket\n"
    );
    terminate(&mut child);
}
