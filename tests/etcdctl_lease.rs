//! Leases through the real `etcdctl` 3.4.23: exact output of `lease grant`,
//! `timetolive` (with and without `--keys`), `list`, `keep-alive` (once and in the
//! background), `revoke`, and keys vanishing when their lease expires.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{etcdctl_bin, Server};

/// Parses `lease <16 hex digits> granted with TTL(<ttl>s)\n` and returns the hex id.
#[track_caller]
fn granted(out: &str, ttl: i64) -> String {
    let line = out
        .strip_suffix('\n')
        .unwrap_or_else(|| panic!("no trailing newline: {out:?}"));
    let rest = line
        .strip_prefix("lease ")
        .unwrap_or_else(|| panic!("unexpected grant output {out:?}"));
    let (id, tail) = rest
        .split_once(' ')
        .unwrap_or_else(|| panic!("unexpected grant output {out:?}"));
    assert_eq!(
        id.len(),
        16,
        "lease id is printed as 16 hex digits: {out:?}"
    );
    assert!(
        id.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        "lowercase hex id expected: {out:?}"
    );
    assert_ne!(id, "0000000000000000", "generated ids are non-zero");
    assert_eq!(tail, format!("granted with TTL({ttl}s)"), "{out:?}");
    id.to_string()
}

/// Parses `lease <id> granted with TTL(<g>s), remaining(<r>s)<rest>\n`, checks `id`,
/// `g` and `rest`, and returns `r`.
#[track_caller]
fn remaining(out: &str, id: &str, granted_ttl: i64, rest: &str) -> i64 {
    let prefix = format!("lease {id} granted with TTL({granted_ttl}s), remaining(");
    let tail = out
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("expected {prefix:?}…, got {out:?}"));
    let (r, after) = tail
        .split_once("s)")
        .unwrap_or_else(|| panic!("unexpected timetolive output {out:?}"));
    assert_eq!(after, format!("{rest}\n"), "{out:?}");
    r.parse()
        .unwrap_or_else(|_| panic!("remaining TTL is not a number: {out:?}"))
}

/// Polls `get <key>` until it returns nothing; returns how long that took.
#[track_caller]
fn wait_gone(s: &Server, key: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if s.etcdctl(&["get", key]).ok().is_empty() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "key {key:?} still present after {limit:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn grant_timetolive_keepalive_revoke() {
    let s = Server::start();
    assert_eq!(s.etcdctl(&["lease", "list"]).ok(), "found 0 leases\n");

    // TTLs below the minimum (1.5 election timeouts, rounded up: 2 s) are raised.
    let short = granted(s.etcdctl(&["lease", "grant", "1"]).ok(), 2);
    let id = granted(s.etcdctl(&["lease", "grant", "100"]).ok(), 100);
    assert_ne!(short, id);

    // `lease list` prints the ids in the server's order; etcd orders by expiry, generated
    // ids in detcd are random, so only the set is compared here (the order is checked with
    // explicit ids in client_lease.rs).
    let out = s.etcdctl(&["lease", "list"]).ok().to_string();
    let mut lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.remove(0), "found 2 leases", "{out}");
    lines.sort();
    let mut want = vec![short.as_str(), id.as_str()];
    want.sort();
    assert_eq!(lines, want, "{out}");

    assert_eq!(s.etcdctl(&["put", "--lease", &id, "k1", "v1"]).ok(), "OK\n");
    assert_eq!(s.etcdctl(&["put", "--lease", &id, "k2", "v2"]).ok(), "OK\n");
    assert_eq!(s.etcdctl(&["put", "k3", "v3"]).ok(), "OK\n");

    let r = remaining(s.etcdctl(&["lease", "timetolive", &id]).ok(), &id, 100, "");
    assert!((95..=100).contains(&r), "remaining {r}");
    // etcd lists attached keys in Go map order (random), so either order is right.
    let out = s
        .etcdctl(&["lease", "timetolive", "--keys", &id])
        .ok()
        .to_string();
    let keys = if out.contains("[k1 k2]") {
        ", attached keys([k1 k2])"
    } else {
        ", attached keys([k2 k1])"
    };
    let r = remaining(&out, &id, 100, keys);
    assert!((95..=100).contains(&r), "remaining {r}");

    // JSON: decimal id, granted-ttl, base64 keys, the current revision.
    let j = s
        .etcdctl(&["lease", "timetolive", "--keys", "-w", "json", &id])
        .json();
    assert_eq!(
        j["id"].as_u64().unwrap(),
        u64::from_str_radix(&id, 16).unwrap()
    );
    assert_eq!(j["granted-ttl"], 100);
    assert_eq!(j["revision"], 4);
    let mut keys: Vec<String> = j["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| common::b64(k.as_str().unwrap()))
        .collect();
    keys.sort();
    assert_eq!(keys, ["k1", "k2"]);
    let ttl = j["ttl"].as_i64().unwrap();
    assert!((95..=100).contains(&ttl), "ttl {ttl}");

    // The lease shows up on the key.
    let j = s.etcdctl(&["get", "k1", "-w", "json"]).json();
    assert_eq!(
        j["kvs"][0]["lease"].as_u64().unwrap(),
        u64::from_str_radix(&id, 16).unwrap()
    );

    assert_eq!(
        s.etcdctl(&["lease", "keep-alive", "--once", &id]).ok(),
        format!("lease {id} keepalived with TTL(100)\n")
    );

    assert_eq!(
        s.etcdctl(&["lease", "revoke", &id]).ok(),
        format!("lease {id} revoked\n")
    );
    // Both keys are gone, the unleased one stays; the deletion was one revision.
    assert_eq!(
        s.etcdctl(&["get", "--prefix", "k"]).ok(),
        "k3\nv3\n",
        "keys of a revoked lease must be deleted"
    );
    let j = s.etcdctl(&["get", "k3", "-w", "json"]).json();
    assert_eq!(j["header"]["revision"], 5, "revoke is one revision");

    let out = s.etcdctl(&["lease", "revoke", &id]);
    assert_eq!(
        out.err_line(),
        "Error: failed to revoke lease (etcdserver: requested lease not found)"
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        s.etcdctl(&["lease", "timetolive", &id]).ok(),
        format!("lease {id} already expired\n")
    );
    assert_eq!(
        s.etcdctl(&["lease", "timetolive", "--keys", &id]).ok(),
        format!("lease {id} already expired\n")
    );

    // Unknown leases.
    let out = s.etcdctl(&["put", "--lease", "1234", "k", "v"]);
    assert_eq!(
        out.err_line(),
        "Error: etcdserver: requested lease not found"
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        s.etcdctl(&["lease", "timetolive", "1234"]).ok(),
        "lease 0000000000001234 already expired\n"
    );
    let out = s.etcdctl(&["lease", "keep-alive", "--once", "1234"]);
    assert_eq!(
        out.err_line(),
        "Error: etcdserver: requested lease not found"
    );
    assert_eq!(out.status.code(), Some(2));

    // TTL above etcd's maximum (9e9 s).
    let out = s.etcdctl(&["lease", "grant", "9000000001"]);
    assert_eq!(
        out.err_line(),
        "Error: failed to grant lease (etcdserver: too large lease TTL)"
    );
    assert_eq!(out.status.code(), Some(1));
    // The maximum itself is fine.
    let big = granted(
        s.etcdctl(&["lease", "grant", "9000000000"]).ok(),
        9_000_000_000,
    );
    s.etcdctl(&["lease", "revoke", &big]).ok();
}

#[test]
fn keys_vanish_at_expiry() {
    let s = Server::start();
    // Taken before the grant, so that the lease cannot expire sooner than 3 s after it
    // however long etcdctl takes: the lower bound below holds on a loaded machine.
    let granted_at = Instant::now();
    let id = granted(s.etcdctl(&["lease", "grant", "3"]).ok(), 3);
    s.etcdctl(&["put", "--lease", &id, "e1", "v"]).ok();
    s.etcdctl(&["put", "--lease", &id, "e2", "v"]).ok();
    assert_eq!(s.etcdctl(&["get", "e1"]).ok(), "e1\nv\n");

    // A generous limit: it only keeps a lease that never expires from hanging the test.
    wait_gone(&s, "e1", Duration::from_secs(30));
    let took = granted_at.elapsed();
    println!("the keys of a 3 s lease vanished {took:?} after the grant was sent");
    assert!(
        took >= Duration::from_millis(2_500),
        "keys vanished after {took:?}, before the 3 s TTL"
    );
    assert_eq!(s.etcdctl(&["get", "--prefix", "e"]).ok(), "");
    assert_eq!(
        s.etcdctl(&["lease", "timetolive", "--keys", &id]).ok(),
        format!("lease {id} already expired\n")
    );
    assert_eq!(s.etcdctl(&["lease", "list"]).ok(), "found 0 leases\n");
    // Both keys went in one revision: grant (no revision), 2 puts (2, 3), revoke (4).
    let j = s.etcdctl(&["get", "x", "-w", "json"]).json();
    assert_eq!(j["header"]["revision"], 4);
}

#[test]
fn background_keep_alive_keeps_keys() {
    let s = Server::start();
    let id = granted(s.etcdctl(&["lease", "grant", "2"]).ok(), 2);
    s.etcdctl(&["put", "--lease", &id, "kept", "v"]).ok();

    let mut child = Command::new(etcdctl_bin())
        .env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(s.client_url())
        .args(["lease", "keep-alive", &id])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn etcdctl lease keep-alive");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let reader = thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    // Collect keep-alive lines for well past the 2 s TTL.
    let until = Instant::now() + Duration::from_millis(4_500);
    let mut lines = Vec::new();
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => lines.push(line),
            Err(mpsc::RecvTimeoutError::Timeout) => break,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!("etcdctl lease keep-alive exited early; output so far: {lines:?}")
            }
        }
    }
    let still_there = s.etcdctl(&["get", "kept"]).ok().to_string();
    let r = remaining(s.etcdctl(&["lease", "timetolive", &id]).ok(), &id, 2, "");
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();

    assert_eq!(still_there, "kept\nv\n", "key expired despite keep-alives");
    assert!((0..=2).contains(&r), "remaining {r}");
    // etcdctl renews every TTL/3 and prints one line per response.
    assert!(lines.len() >= 3, "too few keep-alive responses: {lines:?}");
    for line in &lines {
        assert_eq!(line, &format!("lease {id} keepalived with TTL(2)"));
    }

    // Without keep-alives the key goes.
    wait_gone(&s, "kept", Duration::from_secs(30));
    assert_eq!(
        s.etcdctl(&["lease", "timetolive", &id]).ok(),
        format!("lease {id} already expired\n")
    );
}

#[test]
fn keep_alive_ends_when_lease_is_revoked() {
    let s = Server::start();
    let id = granted(s.etcdctl(&["lease", "grant", "3"]).ok(), 3);
    let mut child = Command::new(etcdctl_bin())
        .env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(s.client_url())
        .args(["lease", "keep-alive", &id])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn etcdctl lease keep-alive");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let reader = thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("first keep-alive line");
    assert_eq!(first, format!("lease {id} keepalived with TTL(3)"));
    s.etcdctl(&["lease", "revoke", &id]).ok();

    // etcdctl notices at its next renewal (every TTL/3 = 1 s) and exits 0.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = String::new();
    let status = loop {
        while let Ok(line) = rx.try_recv() {
            last = line;
        }
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("etcdctl lease keep-alive did not exit after revoke (last line {last:?})");
        }
        thread::sleep(Duration::from_millis(50));
    };
    let _ = reader.join();
    while let Ok(line) = rx.try_recv() {
        last = line;
    }
    assert_eq!(last, format!("lease {id} expired or revoked."));
    assert!(status.success(), "{status}");
}
