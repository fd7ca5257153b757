//! The command line outside of serving: `--version`, and the refusal of unknown flags,
//! bad values and stray arguments, compared with the real etcd 3.4.23 binary.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{run_with_timeout, Kind, Output};

fn run(kind: Kind, args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(kind.binary());
    cmd.current_dir(dir.path()).args(args);
    run_with_timeout(cmd, None, Duration::from_secs(20))
}

#[test]
fn version_names_the_etcd_release_and_gos_platform() {
    let ours = run(Kind::under_test(), &["--version"]);
    let theirs = run(Kind::Etcd, &["--version"]);
    assert!(ours.success() && theirs.success());
    // The first line is what tools parse for the etcd version; the last is Go's platform
    // name (`linux/amd64`, not Rust's `linux/x86_64`).
    assert_eq!(ours.stdout.lines().next(), theirs.stdout.lines().next());
    assert_eq!(
        ours.stdout.lines().last(),
        theirs.stdout.lines().last(),
        "{}",
        ours.stdout
    );
}

#[test]
fn bad_command_lines_are_refused_as_etcd_refuses_them() {
    for args in [
        &["--nope"][..],
        &["--heartbeat-interval", "abc"],
        &["extra-arg"],
    ] {
        let ours = run(Kind::under_test(), args);
        let theirs = run(Kind::Etcd, args);
        assert_eq!(ours.status.code(), theirs.status.code(), "{args:?}");
        assert_ne!(ours.status.code(), Some(0), "{args:?}");
        // The first stderr line, with a capnslog timestamp (which differs between runs)
        // cut off but its level kept: `E | etcdmain: error verifying flags, ...`.
        let message = |o: &Output| {
            let line = o.stderr.lines().find(|l| !l.is_empty()).unwrap_or_default();
            let timestamped = line.len() > 29
                && line.as_bytes()[..4].iter().all(u8::is_ascii_digit)
                && &line[28..31] == " | ";
            if timestamped {
                line[27..].to_string()
            } else {
                line.to_string()
            }
        };
        assert_eq!(message(&ours), message(&theirs), "{args:?}");
    }
}
