//! A three-member detcd cluster of real processes on loopback, driven by the real etcdctl:
//! member list, endpoint status, replication between members, and a leader crash.

mod common;

use std::time::{Duration, Instant};

use common::{grpc_err, ClusterProc};

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

    // The table etcdctl prints: etcd 3.4's columns, one row per member, one leader.
    let table = c.etcdctl(
        &c.client_url(0),
        &["endpoint", "status", "--cluster", "-w", "table"],
    );
    let table = table.ok();
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.split('|').map(str::trim).collect::<Vec<_>>()
                == [
                    "",
                    "ENDPOINT",
                    "ID",
                    "VERSION",
                    "DB SIZE",
                    "IS LEADER",
                    "IS LEARNER",
                    "RAFT TERM",
                    "RAFT INDEX",
                    "RAFT APPLIED INDEX",
                    "ERRORS",
                    ""
                ]),
        "{table}"
    );
    let rows: Vec<Vec<&str>> = lines
        .iter()
        .filter(|l| l.contains("http://127.0.0.1:"))
        .map(|l| l.split('|').map(str::trim).collect())
        .collect();
    assert_eq!(rows.len(), 3, "{table}");
    assert_eq!(rows.iter().filter(|r| r[5] == "true").count(), 1, "{table}");
    assert!(
        rows.iter().all(|r| r[6] == "false" && r[3] == "3.4.23"),
        "{table}"
    );

    // Every member answers health checks through the cluster's member list.
    let health = c.etcdctl(&c.client_url(1), &["endpoint", "health", "--cluster"]);
    health.ok();
    // etcdctl 3.4 prints the health lines on stderr.
    for i in 0..3 {
        let line = format!(
            "{} is healthy: successfully committed proposal",
            c.client_url(i)
        );
        assert!(health.stderr.contains(&line), "{}", health.stderr);
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
    c.put_when_writable(&c.client_url(rest[0]), "after-kill", "ok");
    let got = c.etcdctl(
        &c.client_url(rest[1]),
        &["get", "after-kill", "--print-value-only"],
    );
    assert_eq!(got.ok().trim(), "ok");
    let new_leader = leader_index(&c, &rest);
    assert_ne!(new_leader, leader);
}

/// Each member's id by index, from `endpoint status --cluster -w json` (keyed by URL).
fn member_ids(c: &ClusterProc) -> Vec<u64> {
    let v = c
        .etcdctl(
            &c.client_url(0),
            &["endpoint", "status", "--cluster", "-w", "json"],
        )
        .json();
    let rows = v.as_array().expect("status rows");
    (0..3)
        .map(|i| {
            let url = c.client_url(i);
            let row = rows
                .iter()
                .find(|r| r["Endpoint"].as_str() == Some(url.as_str()))
                .unwrap_or_else(|| panic!("no row for {url} in {v}"));
            row["Status"]["header"]["member_id"].as_u64().expect("id")
        })
        .collect()
}

/// The leader every member reports through `endpoint status --cluster`, once they agree.
fn agreed_leader(c: &ClusterProc) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = c.etcdctl(
            &c.client_url(0),
            &["endpoint", "status", "--cluster", "-w", "json"],
        );
        if out.success() {
            let v = out.json();
            let leaders: Vec<u64> = v
                .as_array()
                .map(|rows| {
                    rows.iter()
                        .filter_map(|r| r["Status"]["leader"].as_u64())
                        .collect()
                })
                .unwrap_or_default();
            if leaders.len() == 3 && leaders[0] != 0 && leaders.iter().all(|l| *l == leaders[0]) {
                return leaders[0];
            }
        }
        assert!(
            Instant::now() < deadline,
            "members do not agree on a leader"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn move_leader_transfers_and_followers_refuse() {
    let c = ClusterProc::start(3);
    let ids = member_ids(&c);
    let leader = leader_index(&c, &[0, 1, 2]);
    let target = (leader + 1) % 3;
    let other = (leader + 2) % 3;

    // etcdctl finds the leader among the endpoints and asks it.
    let out = c.etcdctl(
        &c.endpoints(),
        &["move-leader", &format!("{:x}", ids[target])],
    );
    assert_eq!(
        out.ok().trim(),
        format!(
            "Leadership transferred from {:x} to {:x}",
            ids[leader], ids[target]
        )
    );
    assert_eq!(agreed_leader(&c), ids[target]);

    // An unknown target is refused by the leader.
    let out = c.etcdctl(&c.endpoints(), &["move-leader", "deadbeef"]);
    assert!(!out.success());
    assert!(
        out.stderr
            .contains("Error: etcdserver: bad leader transferee"),
        "{}",
        out.stderr
    );

    // A follower refuses with etcd's "not leader" (etcdctl only ever asks the leader, so
    // ask the follower directly).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let err = rt.block_on(async {
        let mut client = etcd_client::Client::connect([c.client_url(other)], None)
            .await
            .expect("connect");
        client
            .move_leader(ids[leader])
            .await
            .expect_err("a follower must refuse")
    });
    // FailedPrecondition (9), as etcd's ErrGRPCNotLeader.
    assert_eq!(grpc_err(&err), (9, "etcdserver: not leader".to_string()));
    assert_eq!(agreed_leader(&c), ids[target]);
}

#[test]
fn hashkv_and_hash_agree_across_members_after_writes() {
    let c = ClusterProc::start(3);
    c.put_spread("k", 20);
    c.etcdctl(&c.client_url(1), &["del", "k3"]).ok();
    // A linearizable read through every member makes each apply the writes.
    for i in 0..3 {
        c.etcdctl(&c.client_url(i), &["get", "k0"]).ok();
    }
    c.wait_hashkv_agree(Some(22));

    // detcd's whole-backend hash (Maintenance.Hash) agrees too once all have applied.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let hashes: Vec<(u32, i64)> = rt.block_on(async {
        let mut out = Vec::new();
        for i in 0..3 {
            let mut client = etcd_client::Client::connect([c.client_url(i)], None)
                .await
                .expect("connect");
            let h = client.hash().await.expect("hash");
            out.push((h.hash(), h.header().map(|h| h.revision()).unwrap_or(0)));
        }
        out
    });
    assert!(hashes.iter().all(|h| *h == hashes[0]), "{hashes:?}");
    assert_eq!(hashes[0].1, 22, "{hashes:?}");
}
