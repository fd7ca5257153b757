//! Invariants checked continuously while a chaos run goes on: every member is asked for
//! its status a few times a second, and the answers must never show two leaders in one
//! term, nor a member whose store revision or raft term went back (a restart included:
//! what a member applied was durable first, so it comes back with at least as much; a
//! member replaced by a new one on the same machine starts over).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use detcd::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use detcd::pb::etcdserverpb::StatusRequest;
use madsim::time::{sleep, timeout};
use tonic::transport::Channel;

use crate::harness::SimMember;
use crate::workload::RunCtx;

/// How often every member is asked.
const POLL_EVERY: Duration = Duration::from_millis(300);
/// How long one status call may take.
const STATUS_TIMEOUT: Duration = Duration::from_millis(500);

/// One member's answer.
struct Seen {
    term: u64,
    leader: u64,
    revision: i64,
}

async fn status(channel: Channel) -> Option<Seen> {
    let mut m = MaintenanceClient::new(channel);
    match timeout(STATUS_TIMEOUT, m.status(StatusRequest {})).await {
        Ok(Ok(r)) => {
            let r = r.into_inner();
            Some(Seen {
                term: r.raft_term,
                leader: r.leader,
                revision: r.header.map_or(0, |h| h.revision),
            })
        }
        _ => None,
    }
}

/// Polls every member until `stop` is set, recording a failure for every broken
/// invariant (each kind once per member, so a broken run does not flood its report).
pub async fn run_monitor(ctx: Arc<RunCtx>, members: Arc<Vec<SimMember>>, stop: Arc<AtomicBool>) {
    let n = members.len();
    let mut channels: Vec<Option<Channel>> = vec![None; n];
    // The leader each term had, and the member that first said so.
    let mut leaders: BTreeMap<u64, (u64, usize)> = BTreeMap::new();
    let mut highest: Vec<(u64, i64)> = vec![(0, 0); n];
    // A member replaced by a new one on the same machine starts from nothing.
    let mut generations: Vec<u64> = members.iter().map(SimMember::generation).collect();
    let mut reported: Vec<bool> = vec![false; n];
    let mut polls = 0u64;
    while !stop.load(Ordering::Relaxed) {
        for i in 0..n {
            let channel = match &channels[i] {
                Some(c) => c.clone(),
                None => match crate::client::channel(&ctx.urls[i]).await {
                    Ok(c) => {
                        channels[i] = Some(c.clone());
                        c
                    }
                    Err(_) => continue,
                },
            };
            let Some(seen) = status(channel).await else {
                channels[i] = None;
                continue;
            };
            let name = &members[i].name;
            let generation = members[i].generation();
            if generation != generations[i] {
                generations[i] = generation;
                highest[i] = (0, 0);
            }
            if seen.leader != 0 {
                match leaders.get(&seen.term) {
                    Some(&(leader, who)) if leader != seen.leader && !reported[i] => {
                        reported[i] = true;
                        ctx.lock().failures.push(format!(
                            "two leaders in term {}: {} named {leader:x}, {name} names {:x}",
                            seen.term, members[who].name, seen.leader
                        ));
                    }
                    Some(_) => {}
                    None => {
                        leaders.insert(seen.term, (seen.leader, i));
                    }
                }
            }
            let (term, revision) = highest[i];
            if (seen.term < term || seen.revision < revision) && !reported[i] {
                reported[i] = true;
                ctx.lock().failures.push(format!(
                    "{name} went back: term {term} revision {revision} earlier, now term {} \
                     revision {}",
                    seen.term, seen.revision
                ));
            }
            highest[i] = (term.max(seen.term), revision.max(seen.revision));
        }
        polls += 1;
        sleep(POLL_EVERY).await;
    }
    ctx.event(format!(
        "monitor: {polls} polls, {} terms with a known leader",
        leaders.len()
    ));
}
