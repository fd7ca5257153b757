//! A slow disk must not cost the cluster its leader: with every WAL fsync taking 100 ms,
//! and even with fsyncs slower than the election timeout, heartbeats and votes keep
//! flowing (the WAL is written by its own task while raft's loop keeps ticking), so a
//! steady write load runs without a single election. Run twice from one seed, with one
//! trace.
#![cfg(madsim)]

use std::time::Duration;

use detcd::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use detcd::pb::etcdserverpb::StatusRequest;
use detcd_sim::client::{self, Trace};
use detcd_sim::harness::{self, MemberOptions, SimMember};
use madsim::time::{sleep, Instant};

/// The fsync latency every member's disk has in the first phase.
const SYNC_DELAY: Duration = Duration::from_millis(100);
/// The fsync latency of the second phase: longer than the election timeout (1 s), so a
/// member whose raft loop waited for its disk would miss heartbeats and start elections.
const STALL_DELAY: Duration = Duration::from_millis(1500);

/// (leader, raft term) as member `url` reports them.
async fn leader_and_term(url: &str) -> (u64, u64) {
    let mut m = MaintenanceClient::new(client::channel(url).await.expect("connect"));
    let st = m
        .status(StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    (st.leader, st.raft_term)
}

/// Four writers, through every member in turn, for `phase` of simulated time; returns
/// how many writes were acknowledged and how many timed out. Any other error fails the
/// test, and so does any timeout unless `timeouts_allowed`.
async fn write_for(
    members: &[SimMember],
    phase: Duration,
    timeouts_allowed: bool,
) -> (usize, usize) {
    let start = Instant::now();
    let mut writers = Vec::new();
    for w in 0..4usize {
        let urls: Vec<String> = members.iter().map(|m| m.client_url()).collect();
        writers.push(madsim::task::spawn(async move {
            let (mut acked, mut timed_out) = (0usize, 0usize);
            let mut i = 0usize;
            while start.elapsed() < phase {
                let url = &urls[(w + i) % urls.len()];
                let key = format!("w{w}/{:?}/{i:04}", start);
                match client::put(url, &key, "v").await {
                    Ok(rev) => {
                        assert!(rev > 0);
                        acked += 1;
                    }
                    Err(e) if timeouts_allowed && e == "etcdserver: request timed out" => {
                        timed_out += 1;
                    }
                    Err(e) => panic!("writer {w}, put {i}: {e}"),
                }
                i += 1;
            }
            (acked, timed_out)
        }));
    }
    let (mut acked, mut timed_out) = (0, 0);
    for w in writers {
        let (a, t) = w.await.expect("writer");
        acked += a;
        timed_out += t;
    }
    (acked, timed_out)
}

async fn slow_disks(members: Vec<SimMember>) -> u64 {
    let mut trace = Trace::default();
    let all: Vec<usize> = (0..members.len()).collect();
    for m in &members {
        harness::connect_kv(&m.client_url()).await;
    }
    let leader = client::wait_leader(&members, &all).await;
    let before = leader_and_term(&members[leader].client_url()).await;
    trace.record(("before", before));
    // In the second phase a write waits for several fsyncs of 1.5 s in a row (the
    // proposer's, a follower's, each behind the one in progress), so some exceed etcd's
    // request timeout: those may time out, but nothing may fail for lack of a leader.
    for (delay, phase_s, min_writes, timeouts_allowed) in
        [(SYNC_DELAY, 20, 4 * 20, false), (STALL_DELAY, 20, 4, true)]
    {
        for m in &members {
            m.disk.set_sync_delay(delay);
        }
        let (total, timed_out) =
            write_for(&members, Duration::from_secs(phase_s), timeouts_allowed).await;
        // Each write waits for at least one fsync; a write load that makes no progress
        // would mean the cluster stalled.
        assert!(
            total >= min_writes,
            "only {total} writes in {phase_s} s with {delay:?} fsyncs"
        );
        trace.record(("writes", delay, total, timed_out));

        // Not one election happened: every member names the same leader in the same term.
        for m in &members {
            let now = leader_and_term(&m.client_url()).await;
            assert_eq!(
                now, before,
                "member {} saw leadership change ({delay:?} fsyncs)",
                m.name
            );
        }
    }
    sleep(Duration::from_millis(500)).await;
    trace.finish()
}

fn run(seed: u64) -> u64 {
    harness::run_cluster_client(seed, 3, MemberOptions::default(), slow_disks)
}

#[test]
fn a_100ms_fsync_does_not_cost_the_leader() {
    run(5);
}

#[test]
fn slow_disk_run_replays_from_its_seed() {
    assert_eq!(run(9), run(9), "same seed, different traces");
}
