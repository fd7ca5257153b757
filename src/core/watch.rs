//! The watch hub: etcd's watch streams and watchers as a pure state machine.
//!
//! A client opens a *stream* and creates *watchers* on it, each over a key range from a
//! start revision. The hub learns about writes through [`WatchHub::on_events`], called once
//! per applied batch in apply order, and answers with [`Output`]s: responses to put on a
//! stream, and history reads to ask the storage actor for.
//!
//! Like etcd's `watchableStore`, watchers are *synced* (they have seen every event up to
//! the hub's current revision and get new events as they are applied) or *unsynced* (they
//! start in the past, or fell behind). Unsynced watchers catch up from the events of the
//! latest revisions, which the hub keeps in memory within a bound (`recent`, shared by
//! all watchers), or, when those do not reach back far enough or the store compacted
//! past the watcher, from MVCC history ([`Output::Fetch`], answered through
//! [`WatchHub::on_history`]); they become synced once they reach the current revision.
//!
//! Responses are [`WatchFrame`]s: each event is encoded once (with and without its
//! previous value) when its batch arrives, each header once per revision, and watchers
//! that get the same events share the bytes, so that the work per watcher is a few
//! reference counts and copies of small slices, not a clone and an encoding of events.
//! A synced watcher gets the revisions of one applied batch in one response.
//!
//! The hub never blocks and never queues events: every call takes a `room` function that
//! says how many more responses, and how many more bytes, a stream's bounded outbound
//! queue accepts right now ([`Room`]). When
//! a watcher's events do not fit, it is moved to the unsynced group at the first revision
//! it has not received, the hub asks to be told when the stream's queue drains
//! ([`Output::WaitForRoom`], then [`WatchHub::on_room`]), and catching up later delivers
//! what it missed, in order. Control
//! responses (created, canceled, progress) are queued per stream instead, up to
//! [`MAX_CONTROL_BACKLOG`], because dropping them would break the protocol; a stream that
//! exceeds that is closed.
//!
//! Gaplessness relies on one property of the caller: a history answer is computed by the
//! storage actor *after* it has applied, and reported through `on_events`, every batch up
//! to the answer's `through_revision`, and before it reports any later batch. The storage
//! actor guarantees this by sending both on the same channel, in order. So when an answer
//! reaching the current revision arrives, nothing is left between it and the live events
//! that follow, and the watcher can join the synced group. The recent revisions are
//! gapless for the same reason: they are exactly the batches `on_events` received, and
//! the storage actor reports a compaction ([`WatchHub::on_compacted`]) before the events
//! of the batch that made it, so a watcher behind the compact revision is always sent to
//! the store, which cancels it as etcd does.
//!
//! Time is an argument (`now_ms`), so the hub is deterministic.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::rc::Rc;

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message as _;

use crate::core::mvcc::History;
use crate::error::EtcdError;
use crate::pb::etcdserverpb::{
    watch_create_request::FilterType, ResponseHeader, WatchCreateRequest, WatchResponse,
};
use crate::pb::mvccpb::{event::EventType, Event};

/// A stream's id, chosen by the gateway.
pub type StreamId = u64;

/// The watch id etcd answers with when a create fails.
pub const INVALID_WATCH_ID: i64 = -1;
/// Control responses a stream may have waiting for room before it is closed.
pub const MAX_CONTROL_BACKLOG: usize = 1024;
/// etcd's message for a watcher whose range is empty (`key >= range_end`).
pub const EMPTY_RANGE_REASON: &str = "mvcc: watcher range is empty";
/// etcd's message for a create that reuses a watch id of its stream.
pub const DUPLICATE_ID_REASON: &str = "mvcc: duplicate watch ID provided on the WatchStream";

/// What a stream's outbound queue accepts right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    /// How many more responses fit.
    pub responses: usize,
    /// How many more bytes (of encoded responses) fit.
    pub bytes: usize,
    /// Whether the queue is empty: then one response larger than `bytes` is accepted,
    /// so that a revision larger than the byte budget can still be delivered.
    pub empty: bool,
}

impl Room {
    /// Room for `responses` responses of any size (tests, and queues bounded by count
    /// only).
    pub fn count(responses: usize) -> Room {
        Room {
            responses,
            bytes: usize::MAX,
            empty: false,
        }
    }
}

/// The hub's limits.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// `--max-request-bytes`: fragmenting watchers get responses split below this size.
    pub max_request_bytes: usize,
    /// How often watchers that asked for `progress_notify` get a progress response when
    /// nothing was sent to them (etcd's `--experimental-watch-progress-notify-interval`).
    pub progress_notify_interval_ms: u64,
    /// The most events one history read returns (it is cut at a revision boundary).
    pub max_history_events: usize,
    /// The most bytes of events one history read returns (likewise cut).
    pub max_history_bytes: usize,
    /// The most history reads outstanding at once.
    pub max_fetches_in_flight: usize,
    /// The most events of recent revisions the hub keeps in memory, so that watchers
    /// that fell behind (their stream's queue was full) catch up from them instead of
    /// each reading the store's history.
    pub max_recent_events: usize,
    /// The most bytes (of encoded events) of recent revisions kept likewise.
    pub max_recent_bytes: usize,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            max_request_bytes: 1536 * 1024,
            progress_notify_interval_ms: 10 * 60 * 1000,
            max_history_events: 1000,
            // etcd bounds a catch-up response only by its number of revisions; detcd
            // also stops at a revision boundary once it holds this many bytes, so one
            // response never holds much more than a stream's byte budget.
            max_history_bytes: 4 * 1024 * 1024,
            max_fetches_in_flight: 64,
            // Enough for several seconds of a busy store's writes, small beside the
            // streams' own queues (4 MiB each).
            max_recent_events: 100_000,
            max_recent_bytes: 16 * 1024 * 1024,
        }
    }
}

/// A history read for a catching-up watcher: the storage actor answers it with
/// [`crate::core::mvcc::Mvcc::history`]`(key, range_end, from_revision, current,
/// max_events)` and hands the result to [`WatchHub::on_history`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryFetch {
    /// Identifies the answer.
    pub fetch_id: u64,
    /// The watcher's key (etcd conventions).
    pub key: Vec<u8>,
    /// The watcher's range end (etcd conventions).
    pub range_end: Vec<u8>,
    /// The first revision wanted.
    pub from_revision: i64,
    /// The most events to return.
    pub max_events: usize,
    /// The most bytes of events to return.
    pub max_bytes: usize,
}

/// The answer to a [`HistoryFetch`].
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryAnswer {
    /// The fetch answered.
    pub fetch_id: u64,
    /// The events, or `Compacted`.
    pub result: Result<History, EtcdError>,
    /// The store's compact revision when the answer was computed.
    pub compact_revision: i64,
}

/// What the hub asks its actor to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Put `frame` on the stream's outbound queue (there is room: the hub asked). Its
    /// header is complete (see [`WatchHub::set_identity`]).
    Send {
        /// The stream.
        stream: StreamId,
        /// The encoded response.
        frame: WatchFrame,
    },
    /// Read history and answer with [`WatchHub::on_history`] (or
    /// [`WatchHub::on_fetch_failed`] if the read could not even be asked for).
    Fetch(HistoryFetch),
    /// Something for `stream` waits for room in its queue: call [`WatchHub::on_room`]
    /// once the queue has drained (the periodic [`WatchHub::tick`] retries anyway).
    WaitForRoom {
        /// The stream.
        stream: StreamId,
    },
    /// End the stream with this error; its watchers are gone.
    Close {
        /// The stream.
        stream: StreamId,
        /// Why.
        error: EtcdError,
    },
}

/// The key interval of a watcher, with etcd's conventions decoded.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Range {
    /// One key.
    Single(Vec<u8>),
    /// `[start, end)`; `None` is unbounded (etcd's "from key").
    Interval(Vec<u8>, Option<Vec<u8>>),
}

impl Range {
    fn contains(&self, k: &[u8]) -> bool {
        match self {
            Range::Single(key) => k == key.as_slice(),
            Range::Interval(start, end) => {
                k >= start.as_slice() && end.as_ref().is_none_or(|e| k < e.as_slice())
            }
        }
    }

    /// Back to etcd's `key`/`range_end` encoding.
    fn to_etcd(&self) -> (Vec<u8>, Vec<u8>) {
        match self {
            Range::Single(k) => (k.clone(), Vec::new()),
            Range::Interval(s, None) => (s.clone(), vec![0]),
            Range::Interval(s, Some(e)) => (s.clone(), e.clone()),
        }
    }
}

/// One watcher.
#[derive(Debug, Clone)]
struct Watcher {
    stream: StreamId,
    id: i64,
    range: Range,
    /// Every relevant event below this revision has been delivered (or filtered).
    next_revision: i64,
    synced: bool,
    /// The history read in flight for it, if any.
    fetch: Option<u64>,
    /// Its last history answer did not fit in its stream's queue: no new read until the
    /// next tick, so a full queue does not turn into a storm of reads.
    blocked: bool,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    progress_notify: bool,
    fragment: bool,
    /// Whether anything was sent to it since the last progress tick (etcd sends progress
    /// notifications only to watchers that got nothing in the interval).
    sent_since_progress: bool,
}

/// One client stream.
#[derive(Debug, Default)]
struct Stream {
    /// Watch id to watcher serial.
    watchers: BTreeMap<i64, u64>,
    /// The next id to try for a create without an id (etcd starts at 0).
    next_auto_id: i64,
    /// Control responses waiting for room, oldest first.
    control: VecDeque<WatchResponse>,
    /// A progress request waits until every watcher of the stream is synced, so that the
    /// revision it reports is never ahead of events still owed to a watcher.
    progress_deferred: bool,
}

/// One applied event, encoded once for all the watchers it goes to.
#[derive(Debug)]
struct EncodedEvent {
    revision: i64,
    key: Vec<u8>,
    is_put: bool,
    /// As an `events` field of a response, with `prev_kv`.
    with_prev: Bytes,
    /// Likewise without `prev_kv` (the same buffer if the event has none).
    without_prev: Bytes,
    /// The encoded size of the event with `prev_kv`, as the store's history counts it
    /// against `max_history_bytes`.
    size: usize,
}

impl EncodedEvent {
    fn new(mut ev: Event) -> EncodedEvent {
        let with_prev = encode_event(&ev);
        let size = ev.encoded_len();
        let without_prev = if ev.prev_kv.take().is_some() {
            encode_event(&ev)
        } else {
            with_prev.clone()
        };
        EncodedEvent {
            revision: event_revision(&ev),
            key: ev.kv.map(|kv| kv.key).unwrap_or_default(),
            is_put: ev.r#type == EventType::Put as i32,
            with_prev,
            without_prev,
            size,
        }
    }

    /// The encoded event as `w` gets it.
    fn body(&self, prev_kv: bool) -> &Bytes {
        if prev_kv {
            &self.with_prev
        } else {
            &self.without_prev
        }
    }

    /// The memory it holds, against `max_recent_bytes`.
    fn held_bytes(&self) -> usize {
        let both = if self.with_prev == self.without_prev {
            0
        } else {
            self.without_prev.len()
        };
        self.key.len() + self.with_prev.len() + both
    }
}

/// The events of one recent revision, kept for watchers that fell behind.
#[derive(Debug)]
struct RecentRevision {
    revision: i64,
    /// In apply order.
    events: Vec<EncodedEvent>,
}

/// One response's worth of a batch for a watcher: whole revisions, and the encoded
/// events that pass the watcher's filters (`None` if none does: nothing is sent).
#[derive(Debug)]
struct Chunk {
    first_revision: i64,
    last_revision: i64,
    body: Option<Bytes>,
}

/// What determines a range watcher's responses to a batch: the events of its range (by
/// index), its filters (NOPUT, NODELETE) and whether it wants `prev_kv`.
type PlanKey = (Vec<u32>, bool, bool, bool);

/// What determines a catch-up answer from the recent revisions: watchers that agree on
/// it get the same encoded events.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct CatchUpKey {
    from: i64,
    range: Range,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
}

/// Where a response's events are cut, revision by revision, exactly as the store cuts a
/// history read ([`crate::core::mvcc::Mvcc::history`]): once the events of the
/// watcher's range exceed `max_history_events` or `max_history_bytes`, before the
/// revision that crossed the limit, except that the first revision is always whole.
struct Cut {
    max_events: usize,
    max_bytes: usize,
    events: usize,
    bytes: usize,
    first: bool,
}

/// What [`Cut::add`] decides about a revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CutStep {
    /// It belongs to the response; more may follow.
    Keep,
    /// It belongs to the response, which ends with it (the first revision, over the
    /// limits on its own).
    KeepAndStop,
    /// The response ends before it.
    Stop,
}

impl Cut {
    fn new(config: &WatchConfig) -> Cut {
        Cut {
            max_events: config.max_history_events,
            max_bytes: config.max_history_bytes,
            events: 0,
            bytes: 0,
            first: true,
        }
    }

    /// Adds a revision with `events` events of the range, of `bytes` encoded bytes.
    fn add(&mut self, events: usize, bytes: usize) -> CutStep {
        let (e, b) = (self.events + events, self.bytes.saturating_add(bytes));
        let over = e > self.max_events || b > self.max_bytes;
        let first = std::mem::replace(&mut self.first, false);
        (self.events, self.bytes) = (e, b);
        match (over, first) {
            (false, _) => CutStep::Keep,
            (true, true) => CutStep::KeepAndStop,
            (true, false) => CutStep::Stop,
        }
    }
}

/// The watch hub (see the module docs).
#[derive(Debug)]
pub struct WatchHub {
    config: WatchConfig,
    /// The revision of the last batch seen through `on_events`.
    current_revision: i64,
    streams: BTreeMap<StreamId, Stream>,
    /// Every watcher by serial. Serials are never reused, so a late history answer for a
    /// canceled watcher cannot reach a new watcher with the same id.
    watchers: BTreeMap<u64, Watcher>,
    next_serial: u64,
    /// Synced single-key watchers by key.
    synced_keys: BTreeMap<Vec<u8>, BTreeSet<u64>>,
    /// Synced range watchers.
    synced_ranges: BTreeSet<u64>,
    /// Unsynced watchers.
    unsynced: BTreeSet<u64>,
    /// Outstanding history reads: fetch id to watcher serial.
    fetches: BTreeMap<u64, u64>,
    next_fetch_id: u64,
    /// When the next progress notification round is due.
    next_progress_ms: Option<u64>,
    /// The events of the latest revisions, oldest first: every event of every revision
    /// from `recent_from` through `current_revision` (revisions without events have no
    /// entry). Bounded by `max_recent_events` and `max_recent_bytes`.
    recent: VecDeque<RecentRevision>,
    recent_from: i64,
    recent_events: usize,
    recent_bytes: usize,
    /// The store's compact revision as last reported ([`WatchHub::on_compacted`]): a
    /// watcher behind it must learn it was compacted, which only the store's history
    /// read reports, so it never catches up from `recent`.
    compact_revision: i64,
    /// Streams told to report room during the current call.
    waiting: BTreeSet<StreamId>,
    /// The member's part of every response header (the revision is each response's).
    identity: ResponseHeader,
    /// The last header encoded, by revision.
    header_cache: Option<(i64, Bytes)>,
    /// Catch-up answers from `recent` computed during the current call (`recent` and the
    /// current revision do not change while they are in use): the encoded events and
    /// the revision through which they are complete.
    catch_up_cache: BTreeMap<CatchUpKey, (Bytes, i64)>,
    /// Responses and bytes handed to each stream during the current call (room
    /// accounting).
    used: BTreeMap<StreamId, (usize, usize)>,
    out: Vec<Output>,
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..ResponseHeader::default()
    })
}

impl WatchHub {
    /// A hub with no streams, at the store's `current_revision`.
    pub fn new(config: WatchConfig, current_revision: i64) -> WatchHub {
        WatchHub {
            config,
            current_revision,
            streams: BTreeMap::new(),
            watchers: BTreeMap::new(),
            next_serial: 0,
            synced_keys: BTreeMap::new(),
            synced_ranges: BTreeSet::new(),
            unsynced: BTreeSet::new(),
            fetches: BTreeMap::new(),
            next_fetch_id: 0,
            next_progress_ms: None,
            recent: VecDeque::new(),
            recent_from: current_revision + 1,
            recent_events: 0,
            recent_bytes: 0,
            compact_revision: 0,
            waiting: BTreeSet::new(),
            identity: ResponseHeader::default(),
            header_cache: None,
            catch_up_cache: BTreeMap::new(),
            used: BTreeMap::new(),
            out: Vec::new(),
        }
    }

    /// Sets the cluster and member ids every response header carries.
    pub fn set_identity(&mut self, cluster_id: u64, member_id: u64) {
        self.identity.cluster_id = cluster_id;
        self.identity.member_id = member_id;
        self.header_cache = None;
    }

    /// Sets the raft term response headers carry from now on (the actor calls this before
    /// each call with the member's current term).
    pub fn set_raft_term(&mut self, raft_term: u64) {
        if self.identity.raft_term != raft_term {
            self.identity.raft_term = raft_term;
            self.header_cache = None;
        }
    }

    /// The revision of the last batch seen.
    pub fn current_revision(&self) -> i64 {
        self.current_revision
    }

    /// The number of watchers (all streams).
    pub fn watcher_count(&self) -> usize {
        self.watchers.len()
    }

    /// The number of watchers catching up from history.
    pub fn unsynced_count(&self) -> usize {
        self.unsynced.len()
    }

    /// Registers a stream.
    pub fn open_stream(&mut self, stream: StreamId) {
        self.streams.entry(stream).or_default();
    }

    /// Forgets a stream and its watchers (the client went away).
    pub fn close_stream(&mut self, stream: StreamId) {
        if let Some(s) = self.streams.remove(&stream) {
            for serial in s.watchers.into_values() {
                self.remove_watcher(serial);
            }
        }
    }

    /// Handles a create request on `stream`, as etcd's `serverWatchStream.recvLoop` does.
    pub fn create(
        &mut self,
        stream: StreamId,
        req: &WatchCreateRequest,
        room: &mut dyn FnMut(StreamId) -> Room,
    ) -> Vec<Output> {
        self.begin();
        if self.streams.contains_key(&stream) {
            self.create_inner(stream, req, room);
        }
        self.finish()
    }

    fn create_inner(
        &mut self,
        stream: StreamId,
        req: &WatchCreateRequest,
        room: &mut dyn FnMut(StreamId) -> Room,
    ) {
        // etcd: an empty key is "\0", the smallest key; a range end of "\0" means every
        // key from `key` on.
        let key = if req.key.is_empty() {
            vec![0]
        } else {
            req.key.clone()
        };
        let range = match req.range_end.as_slice() {
            [] => Range::Single(key),
            [0] => Range::Interval(key, None),
            end => Range::Interval(key, Some(end.to_vec())),
        };
        let current = self.current_revision;
        let failed = |reason: &str| WatchResponse {
            header: header(current),
            watch_id: INVALID_WATCH_ID,
            created: true,
            canceled: true,
            cancel_reason: reason.to_string(),
            ..WatchResponse::default()
        };
        if let Range::Interval(start, Some(end)) = &range {
            if start >= end {
                self.push_control(stream, failed(EMPTY_RANGE_REASON), room);
                return;
            }
        }
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        // etcd: id 0 asks the stream to pick the lowest free id from a counter.
        let id = if req.watch_id == 0 {
            while s.watchers.contains_key(&s.next_auto_id) {
                s.next_auto_id += 1;
            }
            s.next_auto_id += 1;
            Some(s.next_auto_id - 1)
        } else if s.watchers.contains_key(&req.watch_id) {
            None
        } else {
            Some(req.watch_id)
        };
        let Some(id) = id else {
            self.push_control(stream, failed(DUPLICATE_ID_REASON), room);
            return;
        };
        let start = if req.start_revision == 0 {
            current + 1
        } else {
            req.start_revision
        };
        let serial = self.next_serial;
        self.next_serial += 1;
        s.watchers.insert(id, serial);
        let w = Watcher {
            stream,
            id,
            range,
            next_revision: start,
            synced: false,
            fetch: None,
            blocked: false,
            no_put: req.filters.contains(&(FilterType::Noput as i32)),
            no_delete: req.filters.contains(&(FilterType::Nodelete as i32)),
            prev_kv: req.prev_kv,
            progress_notify: req.progress_notify,
            fragment: req.fragment,
            sent_since_progress: false,
        };
        self.watchers.insert(serial, w);
        self.push_control(
            stream,
            WatchResponse {
                header: header(current),
                watch_id: id,
                created: true,
                ..WatchResponse::default()
            },
            room,
        );
        // etcd: a watcher starting now or in the future is synced; one starting at or
        // before the current revision catches up from history first.
        if start > current {
            self.make_synced(serial);
        } else {
            self.unsynced.insert(serial);
            self.sync_unsynced(room, true);
        }
    }

    /// Handles a cancel request: etcd answers only if the watcher exists.
    pub fn cancel(
        &mut self,
        stream: StreamId,
        watch_id: i64,
        room: &mut dyn FnMut(StreamId) -> Room,
    ) -> Vec<Output> {
        self.begin();
        let serial = self
            .streams
            .get_mut(&stream)
            .and_then(|s| s.watchers.remove(&watch_id));
        if let Some(serial) = serial {
            self.remove_watcher(serial);
            let resp = WatchResponse {
                header: header(self.current_revision),
                watch_id,
                canceled: true,
                ..WatchResponse::default()
            };
            self.push_control(stream, resp, room);
            self.answer_deferred_progress(stream, room);
        }
        self.finish()
    }

    /// Handles a progress request: a response with watch id -1 and the current revision,
    /// once every watcher of the stream is synced.
    pub fn progress(
        &mut self,
        stream: StreamId,
        room: &mut dyn FnMut(StreamId) -> Room,
    ) -> Vec<Output> {
        self.begin();
        if let Some(s) = self.streams.get_mut(&stream) {
            s.progress_deferred = true;
            self.answer_deferred_progress(stream, room);
        }
        self.finish()
    }

    /// Handles one applied batch: `events` in apply order (several revisions possible),
    /// `revision` the store's revision after the batch. Events carry `prev_kv`.
    pub fn on_events(
        &mut self,
        revision: i64,
        events: Vec<Event>,
        room: &mut dyn FnMut(StreamId) -> Room,
    ) -> Vec<Output> {
        self.begin();
        self.flush_all_control(room);
        // Each event is encoded once (with and without its previous value), whatever the
        // number of watchers; the encoding is also what `recent` keeps.
        let events: Vec<EncodedEvent> = events.into_iter().map(EncodedEvent::new).collect();
        self.current_revision = self.current_revision.max(revision);
        self.deliver_batch(&events, room);
        self.remember(events);
        // Watchers behind (some just now) catch up from the recent revisions if their
        // streams have room; reads of the store's history wait for the tick.
        self.sync_unsynced(room, false);
        self.finish()
    }

    /// The store compacted its history up to `revision` (etcd's compact revision).
    pub fn on_compacted(&mut self, revision: i64) {
        self.compact_revision = self.compact_revision.max(revision);
    }

    /// Some stream that was told to wait ([`Output::WaitForRoom`]) has room again:
    /// flushes waiting control responses and lets watchers catch up.
    pub fn on_room(&mut self, room: &mut dyn FnMut(StreamId) -> Room) -> Vec<Output> {
        self.begin();
        self.flush_all_control(room);
        self.sync_unsynced(room, true);
        self.finish()
    }

    /// The store was replaced by a snapshot at `revision` (a follower that fell behind the
    /// leader's compacted log): the events in between never went through
    /// [`WatchHub::on_events`], so every live watcher catches up from history, which
    /// delivers them or reports that they were compacted, as etcd's watchable store moves
    /// its synced watchers to the unsynced group on restore.
    pub fn on_restore(
        &mut self,
        revision: i64,
        room: &mut dyn FnMut(StreamId) -> Room,
    ) -> Vec<Output> {
        self.begin();
        self.flush_all_control(room);
        let next = self.current_revision + 1;
        let synced: Vec<u64> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.synced)
            .map(|(&serial, _)| serial)
            .collect();
        for serial in synced {
            self.make_unsynced(serial, next);
        }
        self.current_revision = self.current_revision.max(revision);
        // The revisions the snapshot skipped never reached `recent`: from now on it
        // covers only what follows.
        self.recent.clear();
        self.recent_events = 0;
        self.recent_bytes = 0;
        self.recent_from = self.current_revision + 1;
        self.sync_unsynced(room, true);
        self.finish()
    }

    /// Handles the answer to a history read.
    pub fn on_history(
        &mut self,
        answer: HistoryAnswer,
        room: &mut dyn FnMut(StreamId) -> Room,
    ) -> Vec<Output> {
        self.begin();
        self.flush_all_control(room);
        if let Some(serial) = self.fetches.remove(&answer.fetch_id) {
            self.apply_history(serial, answer, room);
        }
        self.sync_unsynced(room, true);
        self.finish()
    }

    /// The read could not be asked for (the storage actor's queue was full): the watcher
    /// stays unsynced and is retried on a later tick.
    pub fn on_fetch_failed(&mut self, fetch_id: u64) {
        if let Some(serial) = self.fetches.remove(&fetch_id) {
            if let Some(w) = self.watchers.get_mut(&serial) {
                w.fetch = None;
            }
        }
    }

    /// The periodic step (every ~100 ms, as etcd's sync loop): flushes waiting control
    /// responses, retries catch-up, and sends due progress notifications.
    pub fn tick(&mut self, now_ms: u64, room: &mut dyn FnMut(StreamId) -> Room) -> Vec<Output> {
        self.begin();
        self.flush_all_control(room);
        let due = *self
            .next_progress_ms
            .get_or_insert(now_ms + self.config.progress_notify_interval_ms);
        if now_ms >= due {
            self.next_progress_ms = Some(now_ms + self.config.progress_notify_interval_ms);
            self.progress_round(room);
        }
        for serial in &self.unsynced {
            if let Some(w) = self.watchers.get_mut(serial) {
                w.blocked = false;
            }
        }
        self.sync_unsynced(room, true);
        let streams: Vec<StreamId> = self
            .streams
            .iter()
            .filter(|(_, s)| s.progress_deferred)
            .map(|(id, _)| *id)
            .collect();
        for s in streams {
            self.answer_deferred_progress(s, room);
        }
        self.finish()
    }

    fn begin(&mut self) {
        self.used.clear();
        self.waiting.clear();
        self.catch_up_cache.clear();
        self.out.clear();
    }

    fn finish(&mut self) -> Vec<Output> {
        self.used.clear();
        self.waiting.clear();
        self.catch_up_cache.clear();
        std::mem::take(&mut self.out)
    }

    /// The encoded header of responses at `revision`, shared by all of them.
    fn header_bytes(&mut self, revision: i64) -> Bytes {
        if let Some((r, b)) = &self.header_cache {
            if *r == revision {
                return b.clone();
            }
        }
        let b = encode_header(&ResponseHeader {
            revision,
            ..self.identity
        });
        self.header_cache = Some((revision, b.clone()));
        b
    }

    /// Asks the actor, once per call and stream, to report when `stream` has room.
    fn wait_for_room(&mut self, stream: StreamId) {
        if self.waiting.insert(stream) {
            self.out.push(Output::WaitForRoom { stream });
        }
    }

    /// Whether `stream` accepts an event response now: nothing waits before it and its
    /// queue has room.
    fn has_room(&self, stream: StreamId, room: &mut dyn FnMut(StreamId) -> Room) -> bool {
        let control_empty = self
            .streams
            .get(&stream)
            .is_some_and(|s| s.control.is_empty());
        let free = self.free(stream, room);
        control_empty && free.responses > 0 && (free.bytes > 0 || free.empty)
    }

    /// What `stream` still accepts in this call.
    fn free(&self, stream: StreamId, room: &mut dyn FnMut(StreamId) -> Room) -> Room {
        let r = room(stream);
        let (n, bytes) = self.used.get(&stream).copied().unwrap_or((0, 0));
        Room {
            responses: r.responses.saturating_sub(n),
            bytes: r.bytes.saturating_sub(bytes),
            empty: r.empty && n == 0,
        }
    }

    fn emit(&mut self, stream: StreamId, frame: WatchFrame) {
        let used = self.used.entry(stream).or_default();
        used.0 += 1;
        used.1 = used.1.saturating_add(frame.len());
        self.out.push(Output::Send { stream, frame });
    }

    /// The frame of a control or progress response, its header completed with the
    /// member's ids and term.
    fn frame_of(&self, mut resp: WatchResponse) -> WatchFrame {
        if let Some(h) = resp.header.as_mut() {
            *h = ResponseHeader {
                revision: h.revision,
                ..self.identity
            };
        }
        WatchFrame::from_response(&resp)
    }

    fn push_control(
        &mut self,
        stream: StreamId,
        resp: WatchResponse,
        room: &mut dyn FnMut(StreamId) -> Room,
    ) {
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        s.control.push_back(resp);
        if s.control.len() > MAX_CONTROL_BACKLOG {
            // The client sends requests but does not read the answers.
            self.close_stream(stream);
            self.out.push(Output::Close {
                stream,
                error: EtcdError::TooManyRequests,
            });
            return;
        }
        self.flush_control(stream, room);
    }

    fn flush_control(&mut self, stream: StreamId, room: &mut dyn FnMut(StreamId) -> Room) {
        loop {
            let free = self.free(stream, room);
            let Some(s) = self.streams.get_mut(&stream) else {
                return;
            };
            // Control responses are small: only the count bounds them.
            if free.responses == 0 {
                if !s.control.is_empty() {
                    self.wait_for_room(stream);
                }
                return;
            }
            let Some(resp) = s.control.pop_front() else {
                return;
            };
            let frame = self.frame_of(resp);
            self.emit(stream, frame);
        }
    }

    fn flush_all_control(&mut self, room: &mut dyn FnMut(StreamId) -> Room) {
        let waiting: Vec<StreamId> = self
            .streams
            .iter()
            .filter(|(_, s)| !s.control.is_empty())
            .map(|(id, _)| *id)
            .collect();
        for s in waiting {
            self.flush_control(s, room);
        }
    }

    /// Emits `responses` on `stream` if all of them fit after its waiting control
    /// responses (by count, and by size unless the queue is empty); otherwise emits
    /// nothing and returns false.
    fn try_emit_all(
        &mut self,
        stream: StreamId,
        responses: Vec<WatchFrame>,
        room: &mut dyn FnMut(StreamId) -> Room,
    ) -> bool {
        let control_empty = self
            .streams
            .get(&stream)
            .is_some_and(|s| s.control.is_empty());
        let free = self.free(stream, room);
        let bytes: usize = responses.iter().map(WatchFrame::len).sum();
        if !control_empty || free.responses < responses.len() || (bytes > free.bytes && !free.empty)
        {
            return false;
        }
        for r in responses {
            self.emit(stream, r);
        }
        true
    }

    /// Delivers the events of one applied batch to the synced watchers they concern.
    /// Each watcher gets the revisions of the batch together, in one response (cut as a
    /// catch-up from history is cut, at revision boundaries), with the batch's revision
    /// in its header, as etcd answers a watcher that catches up: with many writes
    /// applied at once, a response per revision and watcher made the hub, gRPC and the
    /// client do per-response work that the events did not need. A batch of one
    /// revision (any write when writes do not overlap) is delivered as etcd delivers it
    /// live. Watchers that get the same events share one plan of responses, and so one
    /// encoding of them.
    fn deliver_batch(&mut self, events: &[EncodedEvent], room: &mut dyn FnMut(StreamId) -> Room) {
        let header = self.header_bytes(self.current_revision);
        // Single-key watchers: those of one key differ only in filters and prev_kv (and
        // a start inside the batch, which is rare).
        let mut by_key: BTreeMap<&[u8], Vec<u32>> = BTreeMap::new();
        for (i, ev) in events.iter().enumerate() {
            by_key.entry(ev.key.as_slice()).or_default().push(i as u32);
        }
        for (key, idxs) in &by_key {
            let Some(set) = self.synced_keys.get(*key) else {
                continue;
            };
            let serials: Vec<u64> = set.iter().copied().collect();
            let first_rev = events[idxs[0] as usize].revision;
            let mut plans: BTreeMap<(bool, bool, bool), Rc<Vec<Chunk>>> = BTreeMap::new();
            for serial in serials {
                let Some(w) = self.watchers.get(&serial) else {
                    continue;
                };
                let plan = if w.next_revision <= first_rev {
                    plans
                        .entry((w.no_put, w.no_delete, w.prev_kv))
                        .or_insert_with(|| self.plan(events, idxs, w))
                        .clone()
                } else {
                    // It starts in the future, maybe inside the batch.
                    let late: Vec<u32> = idxs
                        .iter()
                        .copied()
                        .filter(|i| events[*i as usize].revision >= w.next_revision)
                        .collect();
                    if late.is_empty() {
                        continue;
                    }
                    self.plan(events, &late, w)
                };
                self.deliver_plan(serial, &plan, &header, room);
            }
        }
        // Range watchers: each its own events; those with the same share the plan.
        let ranges: Vec<u64> = self.synced_ranges.iter().copied().collect();
        let mut plans: BTreeMap<PlanKey, Rc<Vec<Chunk>>> = BTreeMap::new();
        for serial in ranges {
            let Some(w) = self.watchers.get(&serial) else {
                continue;
            };
            let idxs: Vec<u32> = (0..events.len() as u32)
                .filter(|i| {
                    let ev = &events[*i as usize];
                    ev.revision >= w.next_revision && w.range.contains(&ev.key)
                })
                .collect();
            if idxs.is_empty() {
                continue;
            }
            let plan = plans
                .entry((idxs, w.no_put, w.no_delete, w.prev_kv))
                .or_insert_with_key(|(idxs, ..)| self.plan(events, idxs, w))
                .clone();
            self.deliver_plan(serial, &plan, &header, room);
        }
    }

    /// How the events `idxs` (of `w`'s range, in order) go to `w`: in chunks of whole
    /// revisions within the limits of a response, each with the encoded events that
    /// pass its filters.
    fn plan(&self, events: &[EncodedEvent], idxs: &[u32], w: &Watcher) -> Rc<Vec<Chunk>> {
        let ev = |i: u32| &events[i as usize];
        let mut chunks = Vec::new();
        let mut start = 0;
        while start < idxs.len() {
            let mut cut = Cut::new(&self.config);
            let mut end = start;
            while end < idxs.len() {
                let rev = ev(idxs[end]).revision;
                let (mut rev_end, mut size) = (end, 0usize);
                while rev_end < idxs.len() && ev(idxs[rev_end]).revision == rev {
                    size = size.saturating_add(ev(idxs[rev_end]).size);
                    rev_end += 1;
                }
                match cut.add(rev_end - end, size) {
                    CutStep::Keep => end = rev_end,
                    CutStep::KeepAndStop => {
                        end = rev_end;
                        break;
                    }
                    CutStep::Stop => break,
                }
            }
            let part = &idxs[start..end];
            start = end;
            let mut picked = part.iter().map(|i| ev(*i)).filter(|e| passes(w, e.is_put));
            let body = match (picked.next(), picked.next()) {
                (None, _) => None,
                (Some(one), None) => Some(one.body(w.prev_kv).clone()),
                (Some(a), Some(b)) => {
                    let mut buf = BytesMut::new();
                    for e in [a, b].into_iter().chain(picked) {
                        buf.put_slice(e.body(w.prev_kv));
                    }
                    Some(buf.freeze())
                }
            };
            chunks.push(Chunk {
                first_revision: ev(part[0]).revision,
                last_revision: ev(part[part.len() - 1]).revision,
                body,
            });
        }
        Rc::new(chunks)
    }

    /// Sends watcher `serial` its chunks while its stream has room; if one does not fit,
    /// the watcher is unsynced from that chunk's first revision on and catches up later.
    fn deliver_plan(
        &mut self,
        serial: u64,
        plan: &[Chunk],
        header: &Bytes,
        room: &mut dyn FnMut(StreamId) -> Room,
    ) {
        for chunk in plan {
            let Some(w) = self.watchers.get(&serial) else {
                return;
            };
            let stream = w.stream;
            if let Some(body) = &chunk.body {
                let responses = self.event_frames(w, header.clone(), body.clone());
                if !self.try_emit_all(stream, responses, room) {
                    // No room: catch up from this revision on, from the recent revisions
                    // or the store's history, once the stream has room.
                    self.make_unsynced(serial, chunk.first_revision);
                    self.wait_for_room(stream);
                    return;
                }
            }
            // Everything filtered out: etcd sends nothing, but the watcher is past it.
            if let Some(w) = self.watchers.get_mut(&serial) {
                w.next_revision = chunk.last_revision + 1;
                w.sent_since_progress |= chunk.body.is_some();
            }
        }
    }

    /// The response(s) carrying the encoded events `body` to `w`, under `header`: one,
    /// or several fragments if the watcher asked for fragmentation and the response is
    /// too large (etcd's `sendFragments`).
    fn event_frames(&self, w: &Watcher, header: Bytes, body: Bytes) -> Vec<WatchFrame> {
        let whole = WatchFrame::with_events(header.clone(), w.id, false, body.clone());
        let limit = self.config.max_request_bytes;
        if !w.fragment || whole.len() < limit {
            return vec![whole];
        }
        let parts = split_events(&body);
        if parts.len() < 2 {
            return vec![whole];
        }
        // Each fragment takes events while it stays below the limit, but at least one.
        let base = WatchFrame::with_events(header.clone(), w.id, true, Bytes::new()).len();
        let mut out = Vec::new();
        let (mut i, mut offset) = (0, 0);
        while i < parts.len() {
            let start = offset;
            let mut size = base + parts[i].len();
            offset += parts[i].len();
            i += 1;
            while i < parts.len() && size + parts[i].len() < limit {
                size += parts[i].len();
                offset += parts[i].len();
                i += 1;
            }
            out.push(WatchFrame::with_events(
                header.clone(),
                w.id,
                i < parts.len(),
                body.slice(start..offset),
            ));
        }
        out
    }

    fn make_synced(&mut self, serial: u64) {
        let Some(w) = self.watchers.get_mut(&serial) else {
            return;
        };
        self.unsynced.remove(&serial);
        w.synced = true;
        match &w.range {
            Range::Single(k) => {
                self.synced_keys
                    .entry(k.clone())
                    .or_default()
                    .insert(serial);
            }
            Range::Interval(..) => {
                self.synced_ranges.insert(serial);
            }
        }
    }

    fn unindex(&mut self, serial: u64) {
        let Some(w) = self.watchers.get(&serial) else {
            return;
        };
        match &w.range {
            Range::Single(k) => {
                if let Some(set) = self.synced_keys.get_mut(k) {
                    set.remove(&serial);
                    if set.is_empty() {
                        self.synced_keys.remove(k);
                    }
                }
            }
            Range::Interval(..) => {
                self.synced_ranges.remove(&serial);
            }
        }
        self.unsynced.remove(&serial);
    }

    fn make_unsynced(&mut self, serial: u64, next_revision: i64) {
        self.unindex(serial);
        if let Some(w) = self.watchers.get_mut(&serial) {
            w.synced = false;
            w.next_revision = next_revision;
            self.unsynced.insert(serial);
        }
    }

    fn remove_watcher(&mut self, serial: u64) {
        self.unindex(serial);
        if let Some(w) = self.watchers.remove(&serial) {
            if let Some(f) = w.fetch {
                self.fetches.remove(&f);
            }
        }
    }

    /// Lets unsynced watchers whose stream has room catch up: from the recent revisions
    /// when they hold everything the watcher misses, else (if `fetch`) by asking for the
    /// store's history, within the limit of reads in flight.
    fn sync_unsynced(&mut self, room: &mut dyn FnMut(StreamId) -> Room, fetch: bool) {
        if self.unsynced.is_empty() {
            return;
        }
        let candidates: Vec<u64> = self.unsynced.iter().copied().collect();
        // Streams found full in this pass: their other watchers are not looked at.
        let mut full: BTreeSet<StreamId> = BTreeSet::new();
        for serial in candidates {
            let Some(w) = self.watchers.get(&serial) else {
                continue;
            };
            let stream = w.stream;
            if w.fetch.is_some() || full.contains(&stream) {
                continue;
            }
            if !self.has_room(stream, room) {
                full.insert(stream);
                self.wait_for_room(stream);
                continue;
            }
            if self.in_recent(w.next_revision) {
                if !self.catch_up_from_recent(serial, room) {
                    full.insert(stream);
                    self.wait_for_room(stream);
                }
                continue;
            }
            if !fetch || w.blocked || self.fetches.len() >= self.config.max_fetches_in_flight {
                continue;
            }
            let (key, range_end) = w.range.to_etcd();
            let fetch_id = self.next_fetch_id;
            self.next_fetch_id += 1;
            let from_revision = w.next_revision;
            if let Some(w) = self.watchers.get_mut(&serial) {
                w.fetch = Some(fetch_id);
            }
            self.fetches.insert(fetch_id, serial);
            self.out.push(Output::Fetch(HistoryFetch {
                fetch_id,
                key,
                range_end,
                from_revision,
                max_events: self.config.max_history_events,
                max_bytes: self.config.max_history_bytes,
            }));
        }
    }

    /// Whether `recent` holds every event from `revision` on, and `revision` is above
    /// the compact revision (so the store's history would answer with events too).
    fn in_recent(&self, revision: i64) -> bool {
        revision >= self.recent_from && revision > self.compact_revision
    }

    /// Keeps the events of a batch just delivered in `recent`, dropping the oldest
    /// revisions beyond the limits.
    fn remember(&mut self, events: Vec<EncodedEvent>) {
        for ev in events {
            self.recent_events += 1;
            self.recent_bytes = self.recent_bytes.saturating_add(ev.held_bytes());
            match self.recent.back_mut() {
                Some(r) if r.revision == ev.revision => r.events.push(ev),
                _ => self.recent.push_back(RecentRevision {
                    revision: ev.revision,
                    events: vec![ev],
                }),
            }
        }
        while self.recent_events > self.config.max_recent_events
            || self.recent_bytes > self.config.max_recent_bytes
        {
            let Some(r) = self.recent.pop_front() else {
                break;
            };
            self.recent_events -= r.events.len();
            let held: usize = r.events.iter().map(EncodedEvent::held_bytes).sum();
            self.recent_bytes = self.recent_bytes.saturating_sub(held);
            self.recent_from = r.revision + 1;
        }
        if self.recent.is_empty() {
            self.recent_from = self.recent_from.max(self.current_revision + 1);
        }
    }

    /// Sends an unsynced watcher what it misses from `recent`, in responses cut as the
    /// store's history cuts them ([`crate::core::mvcc::Mvcc::history`]), as long as its
    /// stream has room; it becomes synced once it has everything. Returns false if it
    /// stopped for lack of room.
    fn catch_up_from_recent(
        &mut self,
        serial: u64,
        room: &mut dyn FnMut(StreamId) -> Room,
    ) -> bool {
        loop {
            let Some(w) = self.watchers.get(&serial) else {
                return true;
            };
            let (stream, from) = (w.stream, w.next_revision);
            let (body, through) = self.recent_for(serial, from);
            let sent = !body.is_empty();
            if sent {
                // As with history, the header carries the current revision.
                let header = self.header_bytes(self.current_revision);
                let w = &self.watchers[&serial];
                let responses = self.event_frames(w, header, body);
                if !self.try_emit_all(stream, responses, room) {
                    return false;
                }
            }
            let current = self.current_revision;
            let Some(w) = self.watchers.get_mut(&serial) else {
                return true;
            };
            w.next_revision = through.max(from - 1) + 1;
            w.sent_since_progress |= sent;
            if w.next_revision > current {
                self.make_synced(serial);
                self.answer_deferred_progress(stream, room);
                return true;
            }
        }
    }

    /// The encoded events of `recent` from revision `from` on that watcher `serial` gets
    /// (filtered), and the revision through which they are complete: what the store's
    /// history read would answer, cut at the same revision by `max_history_events` and
    /// `max_history_bytes`. Watchers asking the same get the same buffer.
    fn recent_for(&mut self, serial: u64, from: i64) -> (Bytes, i64) {
        let w = &self.watchers[&serial];
        let key = CatchUpKey {
            from,
            range: w.range.clone(),
            no_put: w.no_put,
            no_delete: w.no_delete,
            prev_kv: w.prev_kv,
        };
        if let Some(hit) = self.catch_up_cache.get(&key) {
            return hit.clone();
        }
        let start = self.recent.partition_point(|r| r.revision < from);
        let mut out = BytesMut::new();
        let mut through = self.current_revision;
        let mut cut = Cut::new(&self.config);
        for r in self.recent.range(start..) {
            let in_range = |ev: &&EncodedEvent| w.range.contains(&ev.key);
            let (mut n, mut size) = (0usize, 0usize);
            for ev in r.events.iter().filter(in_range) {
                n += 1;
                size = size.saturating_add(ev.size);
            }
            if n == 0 {
                // Nothing of the watcher's range in this revision.
                continue;
            }
            let step = cut.add(n, size);
            if step == CutStep::Stop {
                through = r.revision - 1;
                break;
            }
            for ev in r.events.iter().filter(in_range) {
                if passes(w, ev.is_put) {
                    out.put_slice(ev.body(w.prev_kv));
                }
            }
            if step == CutStep::KeepAndStop {
                through = r.revision;
                break;
            }
        }
        let answer = (out.freeze(), through);
        self.catch_up_cache.insert(key, answer.clone());
        answer
    }

    fn apply_history(
        &mut self,
        serial: u64,
        answer: HistoryAnswer,
        room: &mut dyn FnMut(StreamId) -> Room,
    ) {
        let Some(w) = self.watchers.get_mut(&serial) else {
            return;
        };
        if w.fetch != Some(answer.fetch_id) {
            return;
        }
        w.fetch = None;
        let (stream, id, from) = (w.stream, w.id, w.next_revision);
        let history = match answer.result {
            Ok(h) => h,
            Err(EtcdError::Compacted) => {
                // etcd answers a compacted start with a response carrying the compact
                // revision (and a header without revision), canceled, and drops the
                // watcher.
                let resp = WatchResponse {
                    header: header(0),
                    watch_id: id,
                    canceled: true,
                    compact_revision: answer.compact_revision,
                    ..WatchResponse::default()
                };
                if let Some(s) = self.streams.get_mut(&stream) {
                    s.watchers.remove(&id);
                }
                self.remove_watcher(serial);
                self.push_control(stream, resp, room);
                self.answer_deferred_progress(stream, room);
                return;
            }
            // Any other failure: try again on a later tick.
            Err(_) => return,
        };
        let w = &self.watchers[&serial];
        let mut body = BytesMut::new();
        for e in history.events.iter().filter(|e| event_revision(e) >= from) {
            if let Some(e) = filter_event(w, e) {
                body.put_slice(&encode_event(&e));
            }
        }
        let through = history.through_revision.max(from - 1);
        let sent = !body.is_empty();
        if sent {
            // As etcd, a catch-up response carries the current revision in its header,
            // so headers on a stream never go back. Only responses without events
            // (progress) are bookmarks, and those are sent to synced watchers only.
            let header = self.header_bytes(self.current_revision);
            let w = &self.watchers[&serial];
            let responses = self.event_frames(w, header, body.freeze());
            if !self.try_emit_all(stream, responses, room) {
                // No room now: a later tick (or the stream draining) reads again.
                if let Some(w) = self.watchers.get_mut(&serial) {
                    w.blocked = true;
                }
                self.wait_for_room(stream);
                return;
            }
        }
        let current = self.current_revision;
        if let Some(w) = self.watchers.get_mut(&serial) {
            w.next_revision = through + 1;
            w.sent_since_progress |= sent;
            if w.next_revision > current {
                self.make_synced(serial);
                self.answer_deferred_progress(stream, room);
            }
        }
    }

    /// Sends a stream's deferred progress response if all its watchers are synced.
    fn answer_deferred_progress(
        &mut self,
        stream: StreamId,
        room: &mut dyn FnMut(StreamId) -> Room,
    ) {
        let Some(s) = self.streams.get(&stream) else {
            return;
        };
        if !s.progress_deferred {
            return;
        }
        let all_synced = s
            .watchers
            .values()
            .all(|serial| self.watchers.get(serial).is_some_and(|w| w.synced));
        if !all_synced {
            return;
        }
        if let Some(s) = self.streams.get_mut(&stream) {
            s.progress_deferred = false;
        }
        let resp = WatchResponse {
            header: header(self.current_revision),
            watch_id: INVALID_WATCH_ID,
            ..WatchResponse::default()
        };
        self.push_control(stream, resp, room);
    }

    /// Progress notifications for synced watchers that asked for them and got nothing
    /// since the last round.
    fn progress_round(&mut self, room: &mut dyn FnMut(StreamId) -> Room) {
        let due: Vec<u64> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.progress_notify)
            .map(|(s, _)| *s)
            .collect();
        for serial in due {
            let Some(w) = self.watchers.get(&serial) else {
                continue;
            };
            let (stream, id, send) = (w.stream, w.id, w.synced && !w.sent_since_progress);
            if send {
                let resp = WatchResponse {
                    header: header(self.current_revision),
                    watch_id: id,
                    ..WatchResponse::default()
                };
                // Skipped when there is no room: the next round tries again.
                let frame = self.frame_of(resp);
                self.try_emit_all(stream, vec![frame], room);
            }
            if let Some(w) = self.watchers.get_mut(&serial) {
                w.sent_since_progress = false;
            }
        }
    }
}

/// The main revision of an event (deletes carry it as `mod_revision` too).
fn event_revision(e: &Event) -> i64 {
    e.kv.as_ref().map_or(0, |kv| kv.mod_revision)
}

/// Whether `w`'s filters let an event of this type through.
fn passes(w: &Watcher, is_put: bool) -> bool {
    !((is_put && w.no_put) || (!is_put && w.no_delete))
}

/// The event as `w` sees it: `None` if a filter drops it; `prev_kv` only if asked for.
fn filter_event(w: &Watcher, e: &Event) -> Option<Event> {
    if !passes(w, e.r#type == EventType::Put as i32) {
        return None;
    }
    // The previous value is copied only for the watchers that asked for it: with many
    // watchers of one key, copying it for each and then dropping it doubled the work.
    Some(Event {
        r#type: e.r#type,
        kv: e.kv.clone(),
        prev_kv: if w.prev_kv { e.prev_kv.clone() } else { None },
    })
}

mod frame;
#[cfg(test)]
mod tests;

pub use frame::{encode_event, encode_header, split_events, WatchFrame};
