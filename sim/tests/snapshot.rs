//! Raft snapshots in simulation: a follower cut off while the leader takes snapshots and
//! compacts its log can only catch up through a streamed snapshot of the state machine;
//! afterwards it serves every write, its watchers see every event, it restarts from the
//! snapshot, and all members hash equal. A member added after the log was compacted
//! starts from a snapshot too. Each run twice from one seed, with one trace.
#![cfg(madsim)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use detcd::pb::etcdserverpb::cluster_client::ClusterClient;
use detcd::pb::etcdserverpb::watch_request::RequestUnion;
use detcd::pb::etcdserverpb::{MemberAddRequest, WatchCreateRequest, WatchRequest};
use detcd::storage::disk::Disk;
use detcd_sim::client::{self, Trace};
use detcd_sim::harness::{self, MemberOptions, SimMember};
use madsim::runtime::Handle;
use madsim::time::{sleep, timeout, Instant};
use tokio_stream::StreamExt;

/// Small enough that a few hundred writes take several snapshots and compact the log far
/// past a follower that was cut off early.
const OPTIONS: MemberOptions = MemberOptions {
    snapshot_count: 40,
    snapshot_catchup_entries: 10,
};

fn run(seed: u64) -> u64 {
    run_scenario(seed, |members| Box::pin(lagging_follower(members)))
}

/// A scenario run on a client node beside the cluster.
type Scenario =
    fn(Vec<SimMember>) -> std::pin::Pin<Box<dyn std::future::Future<Output = u64> + Send>>;

fn run_scenario(seed: u64, scenario: Scenario) -> u64 {
    harness::run_cluster_client(seed, 3, OPTIONS, scenario)
}

/// The snapshot files in member `m`'s snap directory.
fn snap_files(m: &SimMember) -> Vec<String> {
    let dir = format!("/{}.etcd/member/snap", m.name);
    let dir = Path::new(&dir);
    if !m.disk.exists(dir) {
        return Vec::new();
    }
    m.disk
        .list_dir(dir)
        .expect("list snap dir")
        .into_iter()
        .filter(|n| n.ends_with(".snap"))
        .collect()
}

async fn lagging_follower(members: Vec<SimMember>) -> u64 {
    let handle = Handle::current();
    let mut trace = Trace::default();
    let all: Vec<usize> = (0..members.len()).collect();
    for m in &members {
        harness::connect_kv(&m.client_url()).await;
    }
    let leader = client::wait_leader(&members, &all).await;
    trace.record(("leader", leader));
    let mut acked = BTreeMap::new();
    for i in 0..10 {
        let (k, v) = (format!("k{i:03}"), format!("v{i}"));
        let rev = client::put(&members[leader].client_url(), &k, &v)
            .await
            .unwrap_or_else(|e| panic!("put {k}: {e}"));
        trace.record((&k, rev));
        acked.insert(k, v);
    }
    let start_revision = client::put(&members[leader].client_url(), "k-mark", "m")
        .await
        .expect("put mark");
    acked.insert("k-mark".to_string(), "m".to_string());

    // A watcher on the follower, from the next revision on: it must see every later write
    // exactly once and in order, although the follower skips them in its log.
    let lagging = (leader + 1) % 3;
    let mut watch = harness::connect_watch(&members[lagging].client_url()).await;
    let (req_tx, req_rx) = tokio::sync::mpsc::channel(4);
    req_tx
        .send(WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key: b"k".to_vec(),
                range_end: b"l".to_vec(),
                start_revision: start_revision + 1,
                ..Default::default()
            })),
        })
        .await
        .expect("send create");
    let mut events = watch
        .watch(tokio_stream::wrappers::ReceiverStream::new(req_rx))
        .await
        .expect("watch")
        .into_inner();
    let created = events.next().await.expect("created").expect("created");
    assert!(created.created);

    // Cut the follower off while the majority writes enough to snapshot and compact past
    // it several times.
    let rest: Vec<usize> = all.iter().copied().filter(|&i| i != lagging).collect();
    let side = |ix: &[usize]| ix.iter().map(|&i| &members[i]).collect::<Vec<_>>();
    harness::partition(&side(&[lagging]), &side(&rest), true);
    let mut written = Vec::new();
    for i in 10..250 {
        let (k, v) = (format!("k{i:03}"), format!("v{i}"));
        let rev = client::put_retrying(&members, &rest, &k, &v).await;
        written.push((k.clone(), rev));
        acked.insert(k, v);
    }
    trace.record(("written", written.len(), written.last().map(|w| w.1)));
    assert!(
        snap_files(&members[lagging]).is_empty(),
        "the follower received a snapshot while cut off"
    );

    // Heal: the follower's log is far behind the leader's compacted log, so it catches up
    // from a snapshot, which it keeps on disk.
    harness::partition(&side(&[lagging]), &side(&rest), false);
    client::wait_has(&members, lagging, "k", &acked).await;
    let files = snap_files(&members[lagging]);
    assert_eq!(files.len(), 1, "snapshot files on the follower: {files:?}");
    trace.record(("snap files", files));

    // Its watcher saw every write made while it was cut off, in order, once each.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < written.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let resp = match timeout(left, events.next()).await {
            Ok(Some(Ok(r))) => r,
            other => panic!(
                "watch on the follower ended after {} of {} events: {other:?}",
                seen.len(),
                written.len()
            ),
        };
        assert!(!resp.canceled, "watch canceled: {resp:?}");
        for e in resp.events {
            let kv = e.kv.expect("event kv");
            seen.push((
                String::from_utf8_lossy(&kv.key).into_owned(),
                kv.mod_revision,
            ));
        }
    }
    assert_eq!(
        seen, written,
        "the follower's watcher missed or reordered events"
    );

    // Writes through the follower work, and every member hashes equal at one revision.
    let rev = client::put_retrying(&members, &[lagging], "k-after", "a").await;
    acked.insert("k-after".to_string(), "a".to_string());
    trace.record(("after", rev));
    for &i in &all {
        client::wait_has(&members, i, "k", &acked).await;
    }
    let mut hashes = Vec::new();
    for m in &members {
        hashes.push(client::hash_kv(&m.client_url(), rev).await.expect("hashkv"));
    }
    assert!(
        hashes.iter().all(|h| h.0 == hashes[0].0),
        "members disagree at revision {rev}: {hashes:?}"
    );
    trace.record(("hashes", hashes));

    // The follower restarts from its snapshot and WAL; the leader restarts from a log it
    // compacted. Both come back with every acknowledged write.
    handle.kill(members[lagging].node.id());
    handle.restart(members[lagging].node.id());
    client::wait_has(&members, lagging, "k", &acked).await;
    let leader = client::wait_leader(&members, &all).await;
    handle.kill(members[leader].node.id());
    handle.restart(members[leader].node.id());
    let rev = client::put_retrying(&members, &all, "k-end", "e").await;
    acked.insert("k-end".to_string(), "e".to_string());
    trace.record(("end", rev));
    for &i in &all {
        client::wait_has(&members, i, "k", &acked).await;
    }
    // Let the cluster run on a little, so that the trace covers its settling.
    sleep(Duration::from_secs(1)).await;
    trace.finish()
}

/// A member added once the log is compacted past its beginning can only start from a
/// snapshot, which must include its own addition.
async fn join_after_compaction(members: Vec<SimMember>) -> u64 {
    let handle = Handle::current();
    let mut trace = Trace::default();
    let all: Vec<usize> = (0..members.len()).collect();
    for m in &members {
        harness::connect_kv(&m.client_url()).await;
    }
    let leader = client::wait_leader(&members, &all).await;
    let mut acked = BTreeMap::new();
    for i in 0..150 {
        let (k, v) = (format!("k{i:03}"), format!("v{i}"));
        client::put_retrying(&members, &all, &k, &v).await;
        acked.insert(k, v);
    }
    let channel = client::channel(&members[leader].client_url())
        .await
        .expect("connect");
    let added = ClusterClient::new(channel)
        .member_add(MemberAddRequest {
            peer_ur_ls: vec![harness::member_peer_url(3)],
            is_learner: false,
        })
        .await
        .expect("member add")
        .into_inner();
    trace.record(("members", added.members.len()));
    // More writes, so the addition itself is compacted away before the new member asks.
    for i in 150..250 {
        let (k, v) = (format!("k{i:03}"), format!("v{i}"));
        client::put_retrying(&members, &all, &k, &v).await;
        acked.insert(k, v);
    }
    let initial: Vec<(String, Vec<String>)> = (0..4)
        .map(|i| (harness::member_name(i), vec![harness::member_peer_url(i)]))
        .collect();
    let mut members = members;
    members.push(harness::start_joining_member_with(
        &handle,
        3,
        &harness::member_name(3),
        initial,
        OPTIONS,
    ));
    harness::connect_kv(&members[3].client_url()).await;
    client::wait_has(&members, 3, "k", &acked).await;
    let files = snap_files(&members[3]);
    assert_eq!(files.len(), 1, "the new member's snapshot files: {files:?}");
    trace.record(("snap files", files));
    // It is a full voter: with one of the old members down, it makes up the quorum of
    // three out of four.
    let down = (leader + 1) % 3;
    handle.kill(members[down].node.id());
    let up: Vec<usize> = (0..4).filter(|&i| i != down).collect();
    let rev = client::put_retrying(&members, &up, "k-joined", "j").await;
    acked.insert("k-joined".to_string(), "j".to_string());
    trace.record(("after join", rev));
    client::wait_has(&members, 3, "k", &acked).await;
    trace.finish()
}

#[test]
fn a_member_added_after_compaction_starts_from_a_snapshot() {
    run_scenario(61, |members| Box::pin(join_after_compaction(members)));
}

#[test]
fn joining_after_compaction_replays_from_its_seed() {
    let run = || run_scenario(67, |members| Box::pin(join_after_compaction(members)));
    assert_eq!(run(), run(), "same seed, different traces");
}

#[test]
fn lagging_follower_catches_up_through_a_snapshot() {
    run(31);
}

#[test]
fn lagging_follower_replays_from_its_seed() {
    assert_eq!(run(47), run(47), "same seed, different traces");
}
