//! Membership changes in simulation: a three-member cluster under a steady write load adds
//! a fourth member as a learner (it joins with `--initial-cluster-state existing` and
//! catches up from the leader), promotes it, removes a follower and then the leader
//! itself, and keeps every acknowledged write. The scenario runs twice under one seed and
//! must produce the same trace.
#![cfg(madsim)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use detcd::pb::etcdserverpb::cluster_client::ClusterClient;
use detcd::pb::etcdserverpb::kv_client::KvClient;
use detcd::pb::etcdserverpb::{
    MemberAddRequest, MemberListRequest, MemberPromoteRequest, MemberRemoveRequest, PutRequest,
};
use detcd_sim::client::{channel, get_prefix, status_of, wait_leader, Trace};
use detcd_sim::harness::{self, MemberOptions, SimMember};
use madsim::runtime::Handle;
use madsim::time::{sleep, timeout, Instant};

/// Puts through `url`; a member that does not answer in time (it may have been removed)
/// is an error, not a failure of the test.
async fn put(url: &str, key: &str, value: &str) -> Result<i64, String> {
    let mut kv = KvClient::new(channel(url).await?);
    let call = kv.put(PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        ..Default::default()
    });
    match timeout(Duration::from_secs(10), call).await {
        Ok(Ok(r)) => Ok(r.into_inner().header.map(|h| h.revision).unwrap_or(0)),
        Ok(Err(status)) => Err(status.message().to_string()),
        Err(_) => Err("client timeout".into()),
    }
}

async fn cluster_client(url: &str) -> ClusterClient<tonic::transport::Channel> {
    ClusterClient::new(harness::connect_channel(url).await)
}

/// The write load: puts `load-NNNN` through the members in `via`, in turn, until `stop`,
/// remembering what was acknowledged.
struct Load {
    via: Mutex<Vec<usize>>,
    acked: Mutex<BTreeMap<String, String>>,
    stop: std::sync::atomic::AtomicBool,
}

async fn run_load(members: Arc<Vec<String>>, load: Arc<Load>) -> u64 {
    let mut i = 0u64;
    let mut failures = 0u64;
    while !load.stop.load(std::sync::atomic::Ordering::SeqCst) {
        let via = load.via.lock().unwrap().clone();
        let url = &members[via[(i as usize) % via.len()]];
        let (k, v) = (format!("load-{i:04}"), format!("v{i}"));
        match put(url, &k, &v).await {
            Ok(_) => {
                load.acked.lock().unwrap().insert(k, v);
                i += 1;
            }
            Err(_) => {
                failures += 1;
                // Try the next member for the same key.
                i += 1;
                sleep(Duration::from_millis(100)).await;
            }
        }
        sleep(Duration::from_millis(20)).await;
    }
    failures
}

async fn wait_has(url: &str, want: &BTreeMap<String, String>, serializable: bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = get_prefix(url, "load-", serializable).await;
        if got.as_ref() == Ok(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{url} never converged: got {:?} keys, want {}",
            got.map(|g| g.len()),
            want.len()
        );
        sleep(Duration::from_millis(200)).await;
    }
}

async fn scenario(mut members: Vec<SimMember>) -> u64 {
    let handle = Handle::current();
    let mut trace = Trace::default();
    for m in &members {
        harness::connect_kv(&m.client_url()).await;
    }
    let leader = wait_leader(&members, &[0, 1, 2]).await;
    trace.record(("leader", leader));
    // --strict-reconfig-check wants every peer connected for etcd's health interval.
    sleep(Duration::from_secs(6)).await;

    let mut urls: Vec<String> = members.iter().map(|m| m.client_url()).collect();
    urls.push(format!(
        "http://{}:{}",
        harness::member_ip(3),
        harness::CLIENT_PORT
    ));
    let urls = Arc::new(urls);
    let load = Arc::new(Load {
        via: Mutex::new(vec![0, 1, 2]),
        acked: Mutex::new(BTreeMap::new()),
        stop: std::sync::atomic::AtomicBool::new(false),
    });
    let load_task = madsim::task::spawn(run_load(urls.clone(), load.clone()));
    sleep(Duration::from_secs(2)).await;

    // Add a fourth member as a learner, through the first member.
    let mut c0 = cluster_client(&urls[0]).await;
    let peer4 = harness::member_peer_url(3);
    let added = c0
        .member_add(MemberAddRequest {
            peer_ur_ls: vec![peer4.clone()],
            is_learner: true,
        })
        .await
        .expect("member add")
        .into_inner();
    let new = added.member.clone().expect("added member");
    assert!(new.is_learner);
    assert_eq!(new.peer_ur_ls, vec![peer4.clone()]);
    assert_eq!(added.members.len(), 4);
    trace.record(("added", new.id, added.members.len()));
    // A second learner is refused while the first is one.
    let e = c0
        .member_add(MemberAddRequest {
            peer_ur_ls: vec!["http://10.0.0.9:2380".into()],
            is_learner: true,
        })
        .await
        .expect_err("a second learner");
    assert_eq!(
        e.message(),
        "etcdserver: too many learner members in cluster"
    );
    // The same peer URL cannot be added twice. (Within the same second the new id, from
    // the URLs and the time in seconds, would collide first, as in etcd.)
    sleep(Duration::from_secs(1)).await;
    let e = c0
        .member_add(MemberAddRequest {
            peer_ur_ls: vec![peer4.clone()],
            is_learner: false,
        })
        .await
        .expect_err("a duplicate peer URL");
    assert_eq!(e.message(), "etcdserver: Peer URLs already exists");

    // Start it as etcdctl's `member add` output says: every member, this one included.
    let initial: Vec<(String, Vec<String>)> = (0..4)
        .map(|i| (harness::member_name(i), vec![harness::member_peer_url(i)]))
        .collect();
    members.push(harness::start_joining_member(
        &handle,
        3,
        &harness::member_name(3),
        initial,
    ));
    harness::connect_kv(&urls[3]).await;
    // A learner serves serializable reads only.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match put(&urls[3], "on-learner", "x").await {
            Err(e) if e == "etcdserver: rpc not supported for learner" => break,
            other => {
                assert!(Instant::now() < deadline, "learner put: {other:?}");
                sleep(Duration::from_millis(200)).await;
            }
        }
    }
    trace.record("learner refuses writes");

    // Promote it once it has caught up; a follower forwards the promotion to the leader.
    let follower = (leader + 1) % 3;
    let mut cf = cluster_client(&urls[follower]).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let promoted = loop {
        match cf.member_promote(MemberPromoteRequest { id: new.id }).await {
            Ok(r) => break r.into_inner(),
            Err(e) => {
                assert_eq!(
                    e.message(),
                    "etcdserver: can only promote a learner member which is in sync with leader"
                );
                assert!(Instant::now() < deadline, "learner never caught up");
                sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert!(promoted.members.iter().all(|m| !m.is_learner));
    trace.record(("promoted", promoted.members.len()));
    let e = cf
        .member_promote(MemberPromoteRequest { id: new.id })
        .await
        .expect_err("promoting a voter");
    assert_eq!(e.message(), "etcdserver: can only promote a learner member");
    load.via.lock().unwrap().push(3);
    sleep(Duration::from_secs(6)).await;

    // Remove a follower that is not the one we talk to.
    let ids: Vec<u64> = {
        let list = c0
            .member_list(MemberListRequest { linearizable: true })
            .await
            .expect("member list")
            .into_inner();
        let mut by_url = BTreeMap::new();
        for m in &list.members {
            by_url.insert(m.peer_ur_ls[0].clone(), m.id);
        }
        (0..4)
            .map(|i| by_url[&harness::member_peer_url(i)])
            .collect()
    };
    let leader = wait_leader(&members, &[0, 1, 2, 3]).await;
    trace.record(("leader before removals", leader));
    let victim = (0..4).find(|&i| i != leader && i != 3).unwrap();
    load.via.lock().unwrap().retain(|&i| i != victim);
    let mut cl = cluster_client(&urls[leader]).await;
    let removed = cl
        .member_remove(MemberRemoveRequest { id: ids[victim] })
        .await
        .expect("remove follower")
        .into_inner();
    assert_eq!(removed.members.len(), 3);
    trace.record(("removed follower", victim));
    let e = cl
        .member_remove(MemberRemoveRequest { id: ids[victim] })
        .await
        .expect_err("removing twice");
    assert_eq!(e.message(), "etcdserver: member not found");
    sleep(Duration::from_secs(2)).await;

    // Remove the leader itself: it stops, the other two elect a leader, writes continue.
    load.via.lock().unwrap().retain(|&i| i != leader);
    // It answers before it stops (etcd stops a removed member after a short delay).
    let r = cl
        .member_remove(MemberRemoveRequest { id: ids[leader] })
        .await
        .expect("the leader removes itself")
        .into_inner();
    assert_eq!(r.members.len(), 2);
    trace.record(("removed leader", leader));
    let rest: Vec<usize> = (0..4).filter(|&i| i != leader && i != victim).collect();
    let new_leader = wait_leader(&members, &rest).await;
    trace.record(("new leader", new_leader));
    assert_ne!(new_leader, leader);
    sleep(Duration::from_secs(3)).await;
    load.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let failures = load_task.await.expect("load task");
    let acked = load.acked.lock().unwrap().clone();
    assert!(acked.len() > 50, "only {} writes acknowledged", acked.len());
    trace.record(("acked", acked.len(), failures));
    for &i in &rest {
        wait_has(&urls[i], &acked, false).await;
    }
    // Both removed members stopped serving (the leader on its own, the follower when it
    // applied or was told of its removal), and the list names the remaining two.
    let list = cluster_client(&urls[rest[0]])
        .await
        .member_list(MemberListRequest { linearizable: true })
        .await
        .expect("member list")
        .into_inner();
    let mut names: Vec<String> = list.members.iter().map(|m| m.name.clone()).collect();
    names.sort();
    trace.record(format!("{names:?}"));
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(
        status_of(&urls[leader]).await.is_none(),
        "the removed leader still serves"
    );

    // A member restarted after the changes rebuilds raft's configuration by replaying its
    // log (the joined member, if it is still in, takes its identity from its WAL).
    let restarted = if rest.contains(&3) { 3 } else { rest[0] };
    handle.kill(members[restarted].node.id());
    sleep(Duration::from_secs(2)).await;
    handle.restart(members[restarted].node.id());
    wait_leader(&members, &rest).await;
    let rev = loop {
        match put(&urls[rest[0]], "after-restart", "ok").await {
            Ok(rev) => break rev,
            Err(_) => sleep(Duration::from_millis(200)).await,
        }
    };
    trace.record(("after restart", restarted, rev));
    for &i in &rest {
        wait_has(&urls[i], &acked, false).await;
        let deadline = Instant::now() + Duration::from_secs(60);
        while get_prefix(&urls[i], "after-restart", false).await
            != Ok([("after-restart".to_string(), "ok".to_string())]
                .into_iter()
                .collect())
        {
            assert!(
                Instant::now() < deadline,
                "member {i} lost a write after a restart"
            );
            sleep(Duration::from_millis(200)).await;
        }
    }
    trace.record(format!("{acked:?}"));
    trace.finish()
}

fn run(seed: u64) -> u64 {
    harness::run_cluster_client(seed, 3, MemberOptions::default(), scenario)
}

#[test]
fn add_learner_promote_and_remove_members_including_the_leader_under_load() {
    run(7);
}

/// Same seed, same trace.
#[test]
fn membership_changes_replay_from_their_seed() {
    assert_eq!(run(7), run(7), "same seed, different traces");
}
