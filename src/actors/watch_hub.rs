//! The watch hub actor: owns the pure [`WatchHub`] and moves its inputs and outputs.
//!
//! Its one inbox carries, from the storage actor, each applied batch's events and the
//! answers to history reads, in the order the storage actor produced them (what makes
//! catch-up gapless, see [`WatchMsg`]), and from the gateway, stream registrations and
//! client requests. A timer drives catch-up retries and progress notifications; a
//! stream's reader reports ([`WatchMsg::Drained`]) when a queue the hub waits on has
//! drained, so that watchers behind catch up without waiting for the timer.
//!
//! The actor never waits on anything but its inbox and its timer: responses go to each
//! stream's bounded queue only when the hub has checked there is room, and history reads
//! go to the storage actor with `try_send` (a full queue just means "retry on the next
//! tick"), so a slow client or a busy storage actor never blocks writers or other
//! watchers.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::core::watch::{Output, Room, StreamId, WatchConfig, WatchHub};
use crate::msg::{
    QueuedBytes, RaftStatus, StorageMsg, WatchMsg, WatchQueueState, WatchStreamSender,
};
use crate::rt;
use crate::rt::watch;

/// How often catch-up is retried (etcd's watchable store syncs every 100 ms).
pub const TICK_INTERVAL: Duration = Duration::from_millis(100);
/// Bytes of responses one stream's queue may hold (besides its bound in responses), so
/// that a client that does not read holds a bounded amount of memory however large its
/// catch-up responses are. One larger response is accepted into an empty queue.
pub const STREAM_QUEUE_BYTES: usize = 4 * 1024 * 1024;

/// The watch hub actor's state.
pub struct WatchHubActor {
    hub: WatchHub,
    inbox: mpsc::Receiver<WatchMsg>,
    storage_tx: mpsc::Sender<StorageMsg>,
    streams: BTreeMap<StreamId, (WatchStreamSender, QueuedBytes)>,
    raft_status: watch::Receiver<RaftStatus>,
    started: rt::Instant,
}

impl WatchHubActor {
    /// Builds the actor. `current_revision` is the store's revision at start (the storage
    /// actor reports every later batch).
    pub fn new(
        config: WatchConfig,
        current_revision: i64,
        inbox: mpsc::Receiver<WatchMsg>,
        storage_tx: mpsc::Sender<StorageMsg>,
        raft_status: watch::Receiver<RaftStatus>,
        member_id: u64,
        cluster_id: u64,
    ) -> WatchHubActor {
        let mut hub = WatchHub::new(config, current_revision);
        hub.set_identity(cluster_id, member_id);
        WatchHubActor {
            hub,
            inbox,
            storage_tx,
            streams: BTreeMap::new(),
            raft_status,
            started: rt::now(),
        }
    }

    /// Runs until the inbox closes or a shutdown message arrives.
    pub async fn run(mut self) {
        let mut next_tick = rt::now() + TICK_INTERVAL;
        loop {
            let wait = next_tick.saturating_duration_since(rt::now());
            tokio::select! {
                // Branches are polled in order, not at random, so a simulation replays from its
                // seed; the timer comes first so a busy inbox cannot starve catch-up retries.
                biased;
                _ = rt::sleep(wait) => {
                    next_tick = rt::now() + TICK_INTERVAL;
                    let now_ms = self.started.elapsed().as_millis() as u64;
                    self.hub.set_raft_term(self.raft_status.borrow().term);
                    let out = {
                        let streams = &self.streams;
                        self.hub.tick(now_ms, &mut room(streams))
                    };
                    self.execute(out);
                }
                msg = self.inbox.recv() => match msg {
                    None | Some(WatchMsg::Shutdown) => break,
                    Some(msg) => self.handle(msg),
                },
            }
        }
    }

    fn handle(&mut self, msg: WatchMsg) {
        // Response headers carry the term of when they are made, as etcd's do.
        self.hub.set_raft_term(self.raft_status.borrow().term);
        let streams = &self.streams;
        let out = match msg {
            WatchMsg::Applied {
                revision,
                mut events,
            } => {
                if crate::planted::active(crate::planted::Bug::WatchReorder) {
                    events.reverse();
                }
                self.hub.on_events(revision, events, &mut room(streams))
            }
            WatchMsg::History(answer) => self.hub.on_history(answer, &mut room(streams)),
            WatchMsg::Compacted { revision } => {
                self.hub.on_compacted(revision);
                Vec::new()
            }
            WatchMsg::Drained { .. } => self.hub.on_room(&mut room(streams)),
            WatchMsg::Restored { revision } => self.hub.on_restore(revision, &mut room(streams)),
            WatchMsg::OpenStream {
                stream,
                tx,
                queued_bytes,
            } => {
                self.streams.insert(stream, (tx, queued_bytes));
                self.hub.open_stream(stream);
                Vec::new()
            }
            WatchMsg::Create { stream, request } => {
                self.hub.create(stream, &request, &mut room(streams))
            }
            WatchMsg::Cancel { stream, watch_id } => {
                self.hub.cancel(stream, watch_id, &mut room(streams))
            }
            WatchMsg::Progress { stream } => self.hub.progress(stream, &mut room(streams)),
            WatchMsg::CloseStream { stream } => {
                self.hub.close_stream(stream);
                self.streams.remove(&stream);
                Vec::new()
            }
            WatchMsg::Shutdown => Vec::new(),
        };
        self.execute(out);
    }

    /// Carries out the hub's outputs. A stream told to wait for room whose queue has
    /// already drained (its reader took everything before the flag was up, so it will
    /// not report) gets one more turn at once rather than at the next tick.
    fn execute(&mut self, out: Vec<Output>) {
        if self.execute_once(out) {
            let out = {
                let streams = &self.streams;
                self.hub.on_room(&mut room(streams))
            };
            // At most one more turn: the flags stay up, the readers report.
            self.execute_once(out);
        }
    }

    /// Carries out the hub's outputs; true if a stream that waits for room already has it.
    fn execute_once(&mut self, out: Vec<Output>) -> bool {
        let mut drained = false;
        for o in out {
            match o {
                Output::Send { stream, frame } => {
                    let Some((tx, queued_bytes)) = self.streams.get(&stream) else {
                        continue;
                    };
                    // The size of the response as sent, counted before it is queued: the
                    // gateway subtracts exactly this when gRPC takes it, possibly before
                    // `try_send` even returns, and the count must never dip below zero
                    // (it would wrap and look full).
                    let size = frame.len();
                    queued_bytes.bytes.fetch_add(size, Ordering::Relaxed);
                    let sent = tx.try_send(Ok(frame));
                    if sent.is_err() {
                        queued_bytes.bytes.fetch_sub(size, Ordering::Relaxed);
                    }
                    match sent {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            // The client went away; its gateway task reports it too.
                            self.hub.close_stream(stream);
                            self.streams.remove(&stream);
                        }
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            // The hub only sends when it saw room, and only this actor
                            // sends on the queue, so this cannot happen; if it did, the
                            // stream's state could no longer be trusted.
                            tracing::error!(
                                stream,
                                "watch stream queue full unexpectedly; closing it"
                            );
                            self.hub.close_stream(stream);
                            self.streams.remove(&stream);
                        }
                    }
                }
                Output::Fetch(fetch) => {
                    let id = fetch.fetch_id;
                    if self
                        .storage_tx
                        .try_send(StorageMsg::WatchHistory(fetch))
                        .is_err()
                    {
                        self.hub.on_fetch_failed(id);
                    }
                }
                Output::WaitForRoom { stream } => {
                    let Some((tx, queue)) = self.streams.get(&stream) else {
                        continue;
                    };
                    queue.waiting.store(true, Ordering::Release);
                    let len = tx.max_capacity() - tx.capacity();
                    let bytes = queue.bytes.load(Ordering::Relaxed);
                    if WatchQueueState::drained(len, tx.max_capacity(), bytes, STREAM_QUEUE_BYTES)
                        && queue.waiting.swap(false, Ordering::AcqRel)
                    {
                        drained = true;
                    }
                }
                Output::Close { stream, error } => {
                    if let Some((tx, _)) = self.streams.remove(&stream) {
                        let _ = tx.try_send(Err(error.to_status()));
                    }
                }
            }
        }
        drained
    }
}

/// The free room of each stream's queue, as the hub asks for it.
fn room(
    streams: &BTreeMap<StreamId, (WatchStreamSender, QueuedBytes)>,
) -> impl FnMut(StreamId) -> Room + '_ {
    move |s| match streams.get(&s) {
        None => Room::count(0),
        Some((tx, queued)) => {
            let queued = queued.bytes.load(Ordering::Relaxed);
            Room {
                responses: tx.capacity(),
                bytes: STREAM_QUEUE_BYTES.saturating_sub(queued),
                empty: tx.capacity() == tx.max_capacity(),
            }
        }
    }
}
