//! Multi-member clusters in simulation: replication through every member, leader crash and
//! restart, a partitioned leader, quorum loss and healing. Each scenario runs twice under
//! the same seed and must produce the same trace, byte for byte.
#![cfg(madsim)]

use std::collections::BTreeMap;

use detcd::pb::etcdserverpb::cluster_client::ClusterClient;
use detcd::pb::etcdserverpb::MemberListRequest;
use detcd_sim::client::{
    channel, expect_no_quorum, get_prefix, put, put_retrying, wait_has, wait_leader, Trace,
};
use detcd_sim::harness::{self, MemberOptions, SimMember};
use madsim::runtime::{Handle, Runtime};

/// Runs `scenario` on a client node beside an `n`-member cluster, on a fresh OS thread, so
/// that per-thread state outside madsim (std's hasher keys) starts anew inside the
/// simulation and the run replays from its seed (see `harness::on_fresh_thread`).
fn in_client<F, Fut>(seed: u64, n: usize, scenario: F) -> u64
where
    F: FnOnce(Vec<SimMember>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = u64> + Send + 'static,
{
    harness::run_cluster_client(seed, n, MemberOptions::default(), scenario)
}

async fn three_members(members: Vec<SimMember>) -> u64 {
    let handle = Handle::current();
    let mut trace = Trace::default();
    let all: Vec<usize> = (0..members.len()).collect();
    for m in &members {
        harness::connect_kv(&m.client_url()).await;
    }
    let leader = wait_leader(&members, &all).await;
    trace.record(("leader", leader));

    // Writes through every member, followers included, are acknowledged...
    let mut acked = BTreeMap::new();
    for i in 0..30 {
        let (k, v) = (format!("k{i:02}"), format!("v{i}"));
        let rev = put(&members[i % 3].client_url(), &k, &v)
            .await
            .unwrap_or_else(|e| panic!("put {k} through {}: {e}", members[i % 3].name));
        trace.record((&k, rev));
        acked.insert(k, v);
    }
    // ...and readable, linearizably, from every member.
    for i in &all {
        let got = get_prefix(&members[*i].client_url(), "k", false).await;
        assert_eq!(got.as_ref(), Ok(&acked), "member {}", members[*i].name);
    }

    // Every member published its name and client URLs through raft.
    let mut cluster = ClusterClient::new(channel(&members[1].client_url()).await.unwrap());
    let list = cluster
        .member_list(MemberListRequest { linearizable: true })
        .await
        .expect("member list")
        .into_inner();
    let mut listed: Vec<(String, Vec<String>, Vec<String>)> = list
        .members
        .iter()
        .map(|m| (m.name.clone(), m.peer_ur_ls.clone(), m.client_ur_ls.clone()))
        .collect();
    listed.sort();
    let want: Vec<(String, Vec<String>, Vec<String>)> = members
        .iter()
        .enumerate()
        .map(|(i, m)| {
            (
                m.name.clone(),
                vec![harness::member_peer_url(i)],
                vec![m.client_url()],
            )
        })
        .collect();
    assert_eq!(listed, want);
    trace.record(format!("{listed:?}"));

    // Kill the leader: the others elect a new one and writes continue through them.
    let old = leader;
    handle.kill(members[old].node.id());
    let rest: Vec<usize> = all.iter().copied().filter(|&i| i != old).collect();
    let leader = wait_leader(&members, &rest).await;
    assert_ne!(leader, old);
    trace.record(("new leader", leader));
    for i in 30..45 {
        let (k, v) = (format!("k{i:02}"), format!("v{i}"));
        let rev = put_retrying(&members, &rest, &k, &v).await;
        trace.record((&k, rev));
        acked.insert(k, v);
    }

    // The old leader restarts from its WAL and catches up.
    handle.restart(members[old].node.id());
    for i in &all {
        wait_has(&members, *i, "k", &acked).await;
    }
    wait_leader(&members, &all).await;
    trace.record(format!("{acked:?}"));
    trace.finish()
}

async fn five_members(members: Vec<SimMember>) -> u64 {
    let handle = Handle::current();
    let mut trace = Trace::default();
    let all: Vec<usize> = (0..members.len()).collect();
    for m in &members {
        harness::connect_kv(&m.client_url()).await;
    }
    let leader = wait_leader(&members, &all).await;
    trace.record(("leader", leader));
    let mut acked = BTreeMap::new();
    for i in 0..10 {
        let (k, v) = (format!("k{i:02}"), format!("v{i}"));
        let rev = put(&members[i % 5].client_url(), &k, &v)
            .await
            .unwrap_or_else(|e| panic!("put {k}: {e}"));
        trace.record((&k, rev));
        acked.insert(k, v);
    }

    // Partition the leader and one follower from the other three.
    let follower = (leader + 1) % 5;
    let minority = [leader, follower];
    let majority: Vec<usize> = all
        .iter()
        .copied()
        .filter(|i| !minority.contains(i))
        .collect();
    let side = |ix: &[usize]| ix.iter().map(|&i| &members[i]).collect::<Vec<_>>();
    harness::partition(&side(&minority), &side(&majority), true);

    // The minority never commits: writes through either of its members fail with
    // etcd's errors within the request timeout.
    let e = expect_no_quorum(&members[leader].client_url(), "minority-a").await;
    trace.record(&e);
    let e = expect_no_quorum(&members[follower].client_url(), "minority-b").await;
    trace.record(&e);
    // A linearizable read there cannot be served either, but a serializable one is.
    assert!(get_prefix(&members[leader].client_url(), "k", false)
        .await
        .is_err());
    let stale = get_prefix(&members[leader].client_url(), "k", true).await;
    assert_eq!(stale.as_ref(), Ok(&acked));

    // The majority elects a leader among itself and keeps accepting writes.
    let new_leader = wait_leader(&members, &majority).await;
    trace.record(("majority leader", new_leader));
    for i in 10..20 {
        let (k, v) = (format!("k{i:02}"), format!("v{i}"));
        let rev = put_retrying(&members, &majority, &k, &v).await;
        trace.record((&k, rev));
        acked.insert(k, v);
    }

    // Heal: everyone converges on the acknowledged writes, and nothing the minority was
    // given survives.
    harness::partition(&side(&minority), &side(&majority), false);
    for &i in &all {
        wait_has(&members, i, "k", &acked).await;
        let minority_keys = get_prefix(&members[i].client_url(), "minority", false).await;
        assert_eq!(minority_keys, Ok(BTreeMap::new()), "member {i}");
    }

    // Quorum loss: with three of five members down, writes fail within the timeout and
    // serializable reads still answer.
    let leader = wait_leader(&members, &all).await;
    let down: Vec<usize> = (1..=3).map(|d| (leader + d) % 5).collect();
    let up: Vec<usize> = all.iter().copied().filter(|i| !down.contains(i)).collect();
    for &i in &down {
        handle.kill(members[i].node.id());
    }
    for &i in &up {
        let e = expect_no_quorum(&members[i].client_url(), "lost").await;
        trace.record(&e);
        let local = get_prefix(&members[i].client_url(), "k", true).await;
        assert!(local.is_ok(), "serializable read on {i}: {local:?}");
    }

    // Heal: the members restart from their disks; every acknowledged write is everywhere.
    for &i in &down {
        handle.restart(members[i].node.id());
    }
    wait_leader(&members, &all).await;
    for i in 20..25 {
        let (k, v) = (format!("k{i:02}"), format!("v{i}"));
        let rev = put_retrying(&members, &all, &k, &v).await;
        trace.record((&k, rev));
        acked.insert(k, v);
    }
    for &i in &all {
        wait_has(&members, i, "k", &acked).await;
        let lost = get_prefix(&members[i].client_url(), "lost", false).await;
        trace.record(format!("{lost:?}"));
    }
    trace.record(format!("{acked:?}"));
    trace.finish()
}

#[test]
fn three_members_replicate_and_survive_a_leader_crash() {
    in_client(11, 3, three_members);
}

#[test]
fn five_members_partition_quorum_loss_and_heal() {
    in_client(23, 5, five_members);
}

/// Same seed, same trace: each run on a fresh thread, so per-thread state outside the
/// simulation (std's hasher keys) starts the same way (see `harness::on_fresh_thread`).
#[test]
fn same_seed_same_trace() {
    let a = harness::on_fresh_thread(|| in_client(11, 3, three_members));
    let b = harness::on_fresh_thread(|| in_client(11, 3, three_members));
    assert_eq!(a, b, "same seed, different traces");
}

#[test]
fn five_members_same_seed_same_trace() {
    let a = harness::on_fresh_thread(|| in_client(29, 5, five_members));
    let b = harness::on_fresh_thread(|| in_client(29, 5, five_members));
    assert_eq!(a, b, "same seed, different traces");
}

/// Stricter than comparing traces: madsim records every draw from its generator (task
/// scheduling, network delays, election timeouts) with the simulated time of the draw in
/// the first run, and the second run fails at the first draw that comes at another time.
#[test]
fn same_seed_same_random_draws() {
    Runtime::check_determinism(11, madsim::Config::default(), || async {
        let handle = Handle::current();
        let members = harness::start_cluster(&handle, 3);
        let client = handle
            .create_node()
            .name("client")
            .ip("10.0.0.100".parse().unwrap())
            .build();
        client
            .spawn(three_members(members))
            .await
            .expect("client task")
    });
}
