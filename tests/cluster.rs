//! A three-member detcd cluster of real processes on loopback, driven by the real etcdctl:
//! member list, endpoint status, replication between members, and a leader crash.

mod common;

use std::time::{Duration, Instant};

use common::ClusterProc;

/// The member id (hex, as etcdctl's table and JSON-decoded output differ) of the leader.
fn leader_index(c: &ClusterProc, alive: &[usize]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for &i in alive {
            let out = c.etcdctl(&c.client_url(i), &["endpoint", "status", "-w", "json"]);
            if !out.success() {
                continue;
            }
            let v = out.json();
            let st = &v[0]["Status"];
            let (leader, me) = (st["leader"].as_u64(), st["header"]["member_id"].as_u64());
            if leader.is_some() && leader == me {
                return i;
            }
        }
        assert!(Instant::now() < deadline, "no leader among {alive:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn three_process_cluster_replicates_and_survives_leader_kill() {
    let mut c = ClusterProc::start(3);

    let list = c
        .etcdctl(&c.client_url(0), &["member", "list", "-w", "json"])
        .json();
    let members = list["members"].as_array().expect("members");
    assert_eq!(members.len(), 3, "{list}");
    let mut names: Vec<&str> = members
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["m0", "m1", "m2"]);
    for m in members {
        assert_eq!(m["clientURLs"].as_array().map(|a| a.len()), Some(1), "{m}");
        assert_eq!(m["peerURLs"].as_array().map(|a| a.len()), Some(1), "{m}");
    }

    let status = c.etcdctl(
        &c.client_url(0),
        &["endpoint", "status", "--cluster", "-w", "json"],
    );
    let status = status.json();
    let rows = status.as_array().expect("status rows");
    assert_eq!(rows.len(), 3, "{status}");
    let leaders: Vec<u64> = rows
        .iter()
        .map(|r| r["Status"]["leader"].as_u64().unwrap())
        .collect();
    assert!(
        leaders[0] != 0 && leaders.iter().all(|l| *l == leaders[0]),
        "{status}"
    );

    c.etcdctl(&c.client_url(1), &["put", "replicated", "yes"])
        .ok();
    let got = c.etcdctl(
        &c.client_url(2),
        &["get", "replicated", "--print-value-only"],
    );
    assert_eq!(got.ok().trim(), "yes");

    let leader = leader_index(&c, &[0, 1, 2]);
    c.kill_9(leader);
    let rest: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = c.etcdctl(
            &c.client_url(rest[0]),
            &["put", "after-kill", "ok", "--command-timeout=10s"],
        );
        if out.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "writes did not resume: {}",
            out.stderr
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let got = c.etcdctl(
        &c.client_url(rest[1]),
        &["get", "after-kill", "--print-value-only"],
    );
    assert_eq!(got.ok().trim(), "ok");
    let new_leader = leader_index(&c, &rest);
    assert_ne!(new_leader, leader);
}
