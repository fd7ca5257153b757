//! The watchers of a chaos run. Each one opens a watch through a random member, records
//! every response it receives, and when its stream breaks (a member killed, a partition,
//! a voluntary move) re-creates it on another member from the revision after the last one
//! it was told about, as a careful etcd client does. Once the cluster has converged, each
//! watcher asks for progress until a bookmark reaches the revision of the write that
//! proved convergence, so that a missing event at the end of a stream is noticed too.
//!
//! The recorded streams go to [`crate::check::watch`], which checks etcd's watch
//! guarantees against the linearized history.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use detcd::pb::etcdserverpb as pb;
use detcd::pb::etcdserverpb::watch_client::WatchClient;
use detcd::pb::etcdserverpb::watch_create_request::FilterType;
use detcd::pb::etcdserverpb::watch_request::RequestUnion;
use madsim::time::{sleep, timeout, Instant};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::check::watch::{
    EventKind, Segment, SegmentEnd, WatchEvent, WatchRequest, WatchResponse, WatchStream,
};
use crate::workload::{kv_of, RunCtx};

/// How long a watcher may take to reach the final revision once the cluster converged.
const FINISH_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a watcher waits on one member for a bookmark at the final revision before it
/// moves to another.
const FINISH_PER_MEMBER: Duration = Duration::from_secs(5);
/// How often a finishing watcher repeats its progress request.
const PROGRESS_EVERY: Duration = Duration::from_millis(1_000);
/// How long a watcher waits for one response before it looks at the clock again.
const POLL: Duration = Duration::from_millis(500);
/// The bound on requests queued for one watch stream (a create and progress requests).
const REQUEST_QUEUE_BOUND: usize = 8;

/// The seed of watcher `id`'s generator in a run with `seed`.
pub fn watcher_seed(seed: u64, id: u64) -> u64 {
    seed ^ id.wrapping_mul(0xd1b5_4a32_d192_ed03) ^ 0x5741_5443_4845_5253
}

/// The request of watcher `id`. The first two see everything (they also pin the order of
/// writes for the linearizability checker); the others watch a few keys, maybe with a
/// filter.
fn draw_request(rng: &mut ChaCha8Rng, id: u64, keys: u32) -> WatchRequest {
    if id <= 2 {
        return WatchRequest {
            key: vec![0],
            range_end: vec![0],
            prev_kv: id == 1,
            ..Default::default()
        };
    }
    let low = rng.gen_range(0..keys);
    let high = rng.gen_range(low..keys) + 1;
    WatchRequest {
        key: format!("k{low}").into_bytes(),
        // Keys are `k0`, `k1`, ...: the range from `k{low}` to `k{high}` (exclusive) holds
        // at least `k{low}`, whatever the digits sort as.
        range_end: format!("k{high}").into_bytes(),
        prev_kv: rng.gen_bool(0.5),
        no_put: rng.gen_bool(0.2),
        no_delete: rng.gen_bool(0.2),
        ..Default::default()
    }
}

fn create_pb(request: &WatchRequest, start_revision: i64) -> pb::WatchRequest {
    let mut filters = Vec::new();
    if request.no_put {
        filters.push(FilterType::Noput as i32);
    }
    if request.no_delete {
        filters.push(FilterType::Nodelete as i32);
    }
    pb::WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(pb::WatchCreateRequest {
            key: request.key.clone(),
            range_end: request.range_end.clone(),
            start_revision,
            progress_notify: request.progress_notify,
            filters,
            prev_kv: request.prev_kv,
            watch_id: 0,
            fragment: request.fragment,
        })),
    }
}

fn progress_pb() -> pb::WatchRequest {
    pb::WatchRequest {
        request_union: Some(RequestUnion::ProgressRequest(pb::WatchProgressRequest {})),
    }
}

fn response_of(r: pb::WatchResponse) -> WatchResponse {
    WatchResponse {
        header_revision: r.header.map_or(0, |h| h.revision),
        created: r.created,
        canceled: r.canceled,
        compact_revision: r.compact_revision,
        fragment: r.fragment,
        events: r
            .events
            .into_iter()
            .map(|e| WatchEvent {
                kind: if e.r#type == 1 {
                    EventKind::Delete
                } else {
                    EventKind::Put
                },
                kv: e.kv.map(kv_of).unwrap_or_default(),
                prev_kv: e.prev_kv.map(kv_of),
            })
            .collect(),
    }
}

/// One watcher's state across its segments.
struct Watcher {
    id: u64,
    /// Its index in the run record's `watches`.
    slot: usize,
    rng: ChaCha8Rng,
    request: WatchRequest,
    /// The highest revision the combined stream so far has delivered everything up to
    /// (`None` until a segment that started "now" was created).
    through: Option<i64>,
    /// The start revision of the next segment.
    next_start: i64,
}

impl Watcher {
    /// Appends to the current segment.
    fn with_segment(&self, ctx: &RunCtx, f: impl FnOnce(&mut Segment)) {
        let mut rec = ctx.lock();
        if let Some(seg) = rec.watches[self.slot].segments.last_mut() {
            f(seg);
        }
    }

    /// Raises `through` with what a response tells; returns the compact revision if the
    /// response canceled the watcher for compaction.
    fn learn(&mut self, r: &WatchResponse, start_revision: i64) {
        if r.created && start_revision == 0 {
            self.through = Some(self.through.unwrap_or(i64::MIN).max(r.header_revision));
        }
        let mut high = None;
        for e in &r.events {
            high = Some(high.unwrap_or(i64::MIN).max(e.kv.mod_revision));
        }
        if r.is_progress_notify() {
            high = Some(high.unwrap_or(i64::MIN).max(r.header_revision));
        }
        if let Some(h) = high {
            self.through = Some(self.through.unwrap_or(i64::MIN).max(h));
        }
    }
}

/// Runs watcher `id` (1-based) until the run's final revision is set and reached (or the
/// run gives up on one).
pub async fn run_watcher(ctx: Arc<RunCtx>, seed: u64, id: u64) {
    let w = ctx.scenario.workload.clone();
    let n = ctx.urls.len();
    let mut rng = ChaCha8Rng::seed_from_u64(watcher_seed(seed, id));
    let request = draw_request(&mut rng, id, w.keys);
    let slot = {
        let mut rec = ctx.lock();
        rec.watches.push(WatchStream {
            watcher: id,
            request: request.clone(),
            segments: Vec::new(),
        });
        rec.watches.len() - 1
    };
    // Start at a random time in the first third of the run, from "now" or from a past
    // revision (which exercises history reads and compaction cancels).
    let duration_ms = ctx.scenario.duration_s * 1_000;
    sleep(Duration::from_millis(rng.gen_range(0..=duration_ms / 3))).await;
    let known = ctx.max_revision.load(Ordering::Relaxed);
    let next_start = if known > 1 && rng.gen_bool(0.5) {
        rng.gen_range(1..=known)
    } else {
        0
    };
    let mut me = Watcher {
        id,
        slot,
        rng,
        request,
        through: (next_start > 0).then(|| next_start - 1),
        next_start,
    };
    let mut finish_deadline: Option<Instant> = None;
    loop {
        let final_revision = ctx.final_revision.load(Ordering::Relaxed);
        if final_revision < 0 {
            return;
        }
        if final_revision > 0 {
            if me.through.is_some_and(|t| t >= final_revision) {
                ctx.event(format!("watcher {id} reached revision {final_revision}"));
                return;
            }
            let deadline = *finish_deadline.get_or_insert_with(|| Instant::now() + FINISH_TIMEOUT);
            if Instant::now() >= deadline {
                ctx.lock().failures.push(format!(
                    "watcher {id} was not told about revision {final_revision} (it got through {:?}) \
                     within {FINISH_TIMEOUT:?} after the cluster converged",
                    me.through
                ));
                return;
            }
        }
        let m = me.rng.gen_range(0..n);
        run_segment(&ctx, &mut me, m).await;
        // A short pause before the next attempt, so that a dead member is not hammered.
        let pause_ms = me.rng.gen_range(50..=300);
        sleep(Duration::from_millis(pause_ms)).await;
    }
}

/// Creates the watcher once on member `m` and records what comes until the stream breaks,
/// the watcher moves on, or it reaches the final revision.
async fn run_segment(ctx: &RunCtx, me: &mut Watcher, m: usize) {
    let id = me.id;
    let channel = match crate::client::channel(&ctx.urls[m]).await {
        Ok(c) => c,
        Err(e) => {
            ctx.event(format!(
                "watcher {id} could not connect to node{}: {e}",
                m + 1
            ));
            return;
        }
    };
    let start_revision = me.next_start;
    let (tx, rx) = tokio::sync::mpsc::channel(REQUEST_QUEUE_BOUND);
    let _ = tx.try_send(create_pb(&me.request, start_revision));
    {
        // A compaction acknowledged through one member may not be applied yet on the
        // member this watch goes to (a follower that lags, or is cut off), which then
        // still serves the old revisions, as etcd's members do: watches are served from
        // the member's own store. So no compaction is known to bind this watch.
        let known_compact_revision = 0;
        let mut rec = ctx.lock();
        rec.watches[me.slot].segments.push(Segment {
            start_revision,
            known_compact_revision,
            responses: Vec::new(),
            end: SegmentEnd::Open,
        });
    }
    ctx.event(format!(
        "watcher {id} created via node{} from revision {start_revision}",
        m + 1
    ));
    let opened = timeout(
        Duration::from_secs(2),
        WatchClient::new(channel).watch(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
    .await;
    let mut inbound = match opened {
        Ok(Ok(r)) => r.into_inner(),
        Ok(Err(e)) => {
            me.with_segment(ctx, |s| s.end = SegmentEnd::Cut);
            ctx.event(format!("watcher {id} cut: {}", e.message()));
            return;
        }
        Err(_) => {
            me.with_segment(ctx, |s| s.end = SegmentEnd::Cut);
            ctx.event(format!("watcher {id} cut: the watch call timed out"));
            return;
        }
    };
    // While the run goes on, a watcher moves to another member now and then, which
    // exercises resuming even when no fault breaks its stream.
    let move_at = Instant::now() + Duration::from_millis(me.rng.gen_range(2_000..=10_000));
    let read_delay = Duration::from_millis(ctx.scenario.workload.watch_read_delay_ms);
    // When this segment began asking for the final bookmark, and when it last asked.
    let mut finishing_since: Option<Instant> = None;
    let mut last_progress_request: Option<Instant> = None;
    let end = loop {
        let final_revision = ctx.final_revision.load(Ordering::Relaxed);
        if final_revision < 0 {
            break SegmentEnd::Open;
        }
        if final_revision > 0 {
            if me.through.is_some_and(|t| t >= final_revision) {
                break SegmentEnd::Open;
            }
            let since = *finishing_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= FINISH_PER_MEMBER {
                ctx.event(format!(
                    "watcher {id} moves on: no bookmark at {final_revision}"
                ));
                break SegmentEnd::Closed;
            }
            if last_progress_request.is_none_or(|t| t.elapsed() >= PROGRESS_EVERY) {
                let _ = tx.try_send(progress_pb());
                last_progress_request = Some(Instant::now());
            }
        } else if Instant::now() >= move_at {
            ctx.event(format!("watcher {id} moves on"));
            break SegmentEnd::Closed;
        }
        match timeout(POLL, inbound.message()).await {
            Err(_) => continue,
            Ok(Ok(Some(r))) => {
                let r = response_of(r);
                me.learn(&r, start_revision);
                let canceled = r.canceled;
                let compact_revision = r.compact_revision;
                ctx.event(format!(
                    "watcher {id} got header {}{}{} with {} event(s){}",
                    r.header_revision,
                    if r.created { " created" } else { "" },
                    if canceled { " canceled" } else { "" },
                    r.events.len(),
                    r.events
                        .last()
                        .map(|e| format!(" up to revision {}", e.kv.mod_revision))
                        .unwrap_or_default()
                ));
                me.with_segment(ctx, |s| s.responses.push(r));
                if canceled {
                    if compact_revision > 0 {
                        me.through = Some(
                            me.through
                                .unwrap_or(i64::MIN)
                                .max(compact_revision.saturating_sub(1)),
                        );
                    }
                    break SegmentEnd::Closed;
                }
                if !read_delay.is_zero() {
                    // A slow reader: the server must hold events back for it (or catch
                    // it up from history), never drop them.
                    sleep(read_delay).await;
                }
            }
            Ok(Ok(None)) => {
                ctx.event(format!("watcher {id} cut: the stream ended"));
                break SegmentEnd::Cut;
            }
            Ok(Err(e)) => {
                ctx.event(format!("watcher {id} cut: {}", e.message()));
                break SegmentEnd::Cut;
            }
        }
    };
    me.with_segment(ctx, |s| s.end = end);
    // The next segment continues right after what this one delivered; a segment that
    // never learned where "now" was starts from "now" again.
    me.next_start = match me.through {
        Some(t) => t.saturating_add(1),
        None => start_revision,
    };
}
