//! A checker of etcd's watch guarantees over recorded watch streams.
//!
//! etcd 3.4 documents that watches are *ordered* (events by revision, never going back),
//! *unique* (an event never comes twice), *reliable* (no event in a delivered stretch is
//! left out), *atomic* (the events of one revision come in one response, unless the watcher
//! asked for fragments), *resumable* (a broken watch re-created from the next revision
//! loses and repeats nothing) and *bookmarkable* (a progress notification at revision `r`
//! means every event up to `r` was delivered). This module checks a recorded stream
//! against all of these, and also checks that each event tells the truth: its key-value
//! and `prev_kv` match the authoritative history of the store, it matches the watcher's
//! range and filters, and a watcher that asked for compacted revisions is canceled with
//! the compact revision instead of being given wrong data.
//!
//! The authoritative history is a [`KvHistory`]: every committed change by revision, as
//! the linearizability checker's [`Linearization`] orders the requests
//! ([`KvHistory::from_linearization`]). A watcher is a [`WatchStream`]: its request and one
//! [`Segment`] per time it was created, the first from the requested start revision and
//! each later one re-created (resumed) after the previous one was cut. [`check_watches`]
//! returns every [`WatchViolation`] found, each naming the watcher, segment, response and
//! event, so that a report can highlight them.
//!
//! # What a recorder must capture
//!
//! - Every write of the run goes into the linearizability history, so that the
//!   [`KvHistory`] built from its linearization has every revision a watch can report.
//!   Ending the run with a read after the faults heal pins the last revisions.
//! - Every response of every watcher, raw and in arrival order: the created response,
//!   fragments as separate responses with their `fragment` flag, progress notifications
//!   (including the stream-wide answers to a progress request, once per watcher of the
//!   stream), and the cancel. A watcher's last segment should end with a progress
//!   notification requested after the final read, so that a lost event at the end of a
//!   stream is noticed too.
//! - When a stream breaks, a new [`Segment`] of the same [`WatchStream`] with the start
//!   revision the client resumed from (one past the last event or progress notification
//!   received, or the compact revision after a compaction cancel).
//!
//! Everything here is plain Rust without madsim and never panics on any input.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use super::linearizability::{Linearization, ObservedChanges, Operation};
use super::model::{Input, KeyValue, Model, Undo};

/// Whether a change or event stored or deleted a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A put (etcd's `mvccpb.PUT`).
    Put,
    /// A delete (etcd's `mvccpb.DELETE`).
    Delete,
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EventKind::Put => "PUT",
            EventKind::Delete => "DELETE",
        })
    }
}

/// One committed change to one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The key.
    pub key: Vec<u8>,
    /// The key-value after a put; `None` for a delete.
    pub kv: Option<KeyValue>,
    /// The key-value just before the change (at the previous revision); `None` if the key
    /// did not exist.
    pub prev: Option<KeyValue>,
}

impl Change {
    /// Whether the change is a put or a delete.
    pub fn kind(&self) -> EventKind {
        if self.kv.is_some() {
            EventKind::Put
        } else {
            EventKind::Delete
        }
    }
}

/// All changes committed at one revision, in the order the request made them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevisionChanges {
    /// The revision.
    pub revision: i64,
    /// The changes, at most one per key.
    pub changes: Vec<Change>,
    /// The index in the history of the operation that made them, when the history was
    /// built from a linearization.
    pub op: Option<usize>,
    /// Whether that operation's outcome is unknown. The linearization then chose it among
    /// the writes that may have taken effect, and another choice may fit as well, so a
    /// mismatch at this revision may be the choice's fault rather than the watch's.
    pub outcome_unknown: bool,
}

/// The authoritative history of the store: what every revision changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvHistory {
    /// The store revision before the first change. Events at or below it cannot be
    /// checked against the history and are taken as they are.
    pub base_revision: i64,
    /// The revisions after `base_revision`, in increasing order.
    pub revisions: Vec<RevisionChanges>,
    /// Every revision the store may have been compacted at: those of compactions that
    /// took effect, and of compactions whose outcome is unknown (they may have too).
    pub compact_revisions: Vec<i64>,
}

/// Why a [`KvHistory`] could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryBuildError {
    /// The linearization names an operation the history does not have.
    NoSuchOperation {
        /// The index it names.
        op: usize,
    },
}

impl fmt::Display for HistoryBuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HistoryBuildError::NoSuchOperation { op } => {
                write!(
                    f,
                    "the linearization names operation #{op}, which the history lacks"
                )
            }
        }
    }
}

impl std::error::Error for HistoryBuildError {}

impl KvHistory {
    /// An empty history of a store at `base_revision`.
    pub fn new(base_revision: i64) -> Self {
        KvHistory {
            base_revision,
            revisions: Vec::new(),
            compact_revisions: Vec::new(),
        }
    }

    /// The history of the requests `history` in the order `linearization` gives them,
    /// starting from `initial` (the [`CheckConfig::initial`] the linearizability check
    /// ran with). Compactions that `linearization` left out had an unknown outcome and
    /// may have happened, so their revisions count as possible compact revisions.
    ///
    /// [`CheckConfig::initial`]: super::linearizability::CheckConfig::initial
    pub fn from_linearization(
        history: &[Operation],
        linearization: &Linearization,
        initial: &Model,
    ) -> Result<KvHistory, HistoryBuildError> {
        let mut steps = Vec::with_capacity(linearization.order.len());
        for &op in &linearization.order {
            let operation = history
                .get(op)
                .ok_or(HistoryBuildError::NoSuchOperation { op })?;
            steps.push((&operation.input, Some(op), operation.output.is_none()));
        }
        let mut built = KvHistory::replay(initial, steps);
        for &op in &linearization.left_out {
            let operation = history
                .get(op)
                .ok_or(HistoryBuildError::NoSuchOperation { op })?;
            if let Input::Compact { revision } = operation.input {
                built.compact_revisions.push(revision);
            }
        }
        built.compact_revisions.sort_unstable();
        built.compact_revisions.dedup();
        Ok(built)
    }

    /// The history of running `inputs` one by one through the model from `initial`.
    pub fn from_inputs<'a>(initial: &Model, inputs: impl IntoIterator<Item = &'a Input>) -> Self {
        KvHistory::replay(initial, inputs.into_iter().map(|i| (i, None, false)))
    }

    /// The history of running `steps` (each an input, the index of its operation and
    /// whether its outcome is unknown) one by one through the model from `initial`.
    fn replay<'a>(
        initial: &Model,
        steps: impl IntoIterator<Item = (&'a Input, Option<usize>, bool)>,
    ) -> Self {
        let mut model = initial.clone();
        let mut built = KvHistory::new(initial.revision());
        // The model does not list its keys, so the state before each change is taken
        // from the changes replayed so far, and from the untouched initial state for a
        // key's first change.
        let mut latest: HashMap<Vec<u8>, Option<KeyValue>> = HashMap::new();
        let mut undo = Undo::new();
        for (input, op, outcome_unknown) in steps {
            undo.clear();
            let before = model.revision();
            let output = model.apply(input, &mut undo);
            if let (Input::Compact { revision }, Ok(_)) = (input, &output) {
                built.compact_revisions.push(*revision);
            }
            if model.revision() == before {
                continue;
            }
            let mut seen: HashSet<&[u8]> = HashSet::new();
            let mut changes = Vec::new();
            for key in undo.changed_keys() {
                if !seen.insert(key) {
                    continue;
                }
                let prev = match latest.get(key) {
                    Some(kv) => kv.clone(),
                    None => initial.get(key).cloned(),
                };
                let kv = model.get(key).cloned();
                latest.insert(key.to_vec(), kv.clone());
                changes.push(Change {
                    key: key.to_vec(),
                    kv,
                    prev,
                });
            }
            built.revisions.push(RevisionChanges {
                revision: model.revision(),
                changes,
                op,
                outcome_unknown,
            });
        }
        built.compact_revisions.sort_unstable();
        built.compact_revisions.dedup();
        built
    }

    /// The last revision of the history (the base revision if nothing changed).
    pub fn last_revision(&self) -> i64 {
        self.revisions
            .last()
            .map_or(self.base_revision, |r| r.revision)
    }
}

/// A watch create request (etcd's `WatchCreateRequest`, without the start revision, which
/// is per [`Segment`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WatchRequest {
    /// The first key.
    pub key: Vec<u8>,
    /// As etcd: empty for the single key `key`, `[0]` for every key from `key` on,
    /// otherwise the end (exclusive) of the range.
    pub range_end: Vec<u8>,
    /// Whether events carry the previous key-value.
    pub prev_kv: bool,
    /// The `NOPUT` filter: put events are not sent.
    pub no_put: bool,
    /// The `NODELETE` filter: delete events are not sent.
    pub no_delete: bool,
    /// Whether the server sends periodic progress notifications.
    pub progress_notify: bool,
    /// Whether the server may split a large revision over several responses.
    pub fragment: bool,
}

impl WatchRequest {
    /// Whether a change of `kind` to `key` is one this watcher is sent.
    pub fn matches(&self, key: &[u8], kind: EventKind) -> bool {
        let filtered = match kind {
            EventKind::Put => self.no_put,
            EventKind::Delete => self.no_delete,
        };
        !filtered && in_range(key, &self.key, &self.range_end)
    }
}

/// Whether `key` is in etcd's `start`/`range_end` range.
fn in_range(key: &[u8], start: &[u8], range_end: &[u8]) -> bool {
    match range_end {
        [] => key == start,
        [0] => key >= start,
        end => key >= start && key < end,
    }
}

/// One event of a watch response (etcd's `mvccpb.Event`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// Put or delete.
    pub kind: EventKind,
    /// The key-value: after a put, the whole new key-value; after a delete, only the key
    /// and the mod revision (the revision of the delete), as etcd sends it.
    pub kv: KeyValue,
    /// The previous key-value, if the watcher asked for it and the key existed.
    pub prev_kv: Option<KeyValue>,
}

/// One response received on a watch (etcd's `WatchResponse`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WatchResponse {
    /// The header revision.
    pub header_revision: i64,
    /// Whether this answers the create request.
    pub created: bool,
    /// Whether the server canceled the watcher.
    pub canceled: bool,
    /// The compact revision, when the watcher was canceled because it asked for compacted
    /// revisions; 0 otherwise.
    pub compact_revision: i64,
    /// Whether more fragments of the same revision follow.
    pub fragment: bool,
    /// The events, in order.
    pub events: Vec<WatchEvent>,
}

impl WatchResponse {
    /// Whether this is a progress notification: a response that is none of created,
    /// canceled or compacted and carries no events, whose header revision is a bookmark.
    pub fn is_progress_notify(&self) -> bool {
        self.events.is_empty() && !self.created && !self.canceled && self.compact_revision == 0
    }
}

/// How a segment of a watch ended. The checker treats every segment after the first as
/// a resume whatever this says; it is recorded so that reports can show why a stream was
/// re-created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SegmentEnd {
    /// It was still open when the recording stopped.
    #[default]
    Open,
    /// The client canceled it, or the server did (a response with `canceled`).
    Closed,
    /// The stream broke: a server restart, a network fault, a lost connection.
    Cut,
}

/// One creation of a watcher and what it received until it ended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Segment {
    /// The requested start revision; 0 for "from the next revision on".
    pub start_revision: i64,
    /// The highest revision a compaction that had returned successfully before this
    /// create request was sent compacted at; 0 if none. A watch starting below it must be
    /// canceled with the compact revision.
    pub known_compact_revision: i64,
    /// The responses received, in order.
    pub responses: Vec<WatchResponse>,
    /// How it ended.
    pub end: SegmentEnd,
}

/// One watcher: its request and every creation of it, the later ones resumed after the
/// earlier one was cut (or canceled for compaction).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WatchStream {
    /// The watcher's id in reports (any number unique in the run).
    pub watcher: u64,
    /// The request, the same for every segment.
    pub request: WatchRequest,
    /// The segments, in order.
    pub segments: Vec<Segment>,
}

/// Which guarantee a [`WatchViolation`] breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ViolationKind {
    /// An event's revision is below an earlier event's, or below the start revision.
    Ordered,
    /// The same (revision, key) event came twice.
    Unique,
    /// The events of one revision were split over responses without `fragment`.
    Atomic,
    /// A matching change inside the delivered stretch was never delivered.
    Reliable,
    /// A resumed segment started elsewhere than right after what was delivered.
    Resumable,
    /// An event came after a progress notification that claimed it was delivered.
    Bookmarkable,
    /// An event's `prev_kv` differs from the key-value at the previous revision.
    PrevKv,
    /// An event's type or key-value differs from the history.
    Content,
    /// An event outside the watcher's range, or of a filtered type.
    Filter,
    /// A compacted start was not canceled, or a compaction cancel was unjustified.
    Compaction,
    /// A response out of protocol: created not first, anything after a cancel, a compact
    /// revision without cancel, an event newer than its header.
    Protocol,
}

impl fmt::Display for ViolationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ViolationKind::Ordered => "ordered",
            ViolationKind::Unique => "unique",
            ViolationKind::Atomic => "atomic",
            ViolationKind::Reliable => "reliable",
            ViolationKind::Resumable => "resumable",
            ViolationKind::Bookmarkable => "bookmarkable",
            ViolationKind::PrevKv => "prev_kv",
            ViolationKind::Content => "content",
            ViolationKind::Filter => "filter",
            ViolationKind::Compaction => "compaction",
            ViolationKind::Protocol => "protocol",
        })
    }
}

/// One broken watch guarantee, located precisely enough to highlight in a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchViolation {
    /// The [`WatchStream::watcher`] id.
    pub watcher: u64,
    /// The index of the segment in [`WatchStream::segments`].
    pub segment: usize,
    /// The index of the response in the segment's responses, if one is to blame (for a
    /// missing event: the first response by which it should have arrived).
    pub response_index: Option<usize>,
    /// The index of the event in that response, if one is to blame.
    pub event_index: Option<usize>,
    /// The guarantee broken.
    pub kind: ViolationKind,
    /// What was expected and what came, for people.
    pub explanation: String,
}

impl fmt::Display for WatchViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "watcher {} segment {}", self.watcher, self.segment)?;
        if let Some(r) = self.response_index {
            write!(f, " response {r}")?;
        }
        if let Some(e) = self.event_index {
            write!(f, " event {e}")?;
        }
        write!(f, ": {}: {}", self.kind, self.explanation)
    }
}

/// Checks every watch stream against the history; returns all violations found, in
/// stream order.
pub fn check_watches(streams: &[WatchStream], history: &KvHistory) -> Vec<WatchViolation> {
    let index = Index::new(history);
    streams
        .iter()
        .flat_map(|s| Checker::new(s, &index).run())
        .collect()
}

/// Checks every watch stream for what needs no authoritative history, for when the
/// linearizability checker gave up and so gave no order of the writes: events in
/// revision order and never repeated, the events of a revision in one response, the
/// watcher's range and filters, progress notifications, the protocol, and compaction
/// cancels against `compact_revisions` (every revision a compaction was requested at,
/// whatever its outcome). What needs the history (each event's content and `prev_kv`,
/// that nothing was skipped, that a resume neither skips nor replays) is not checked, so
/// an empty answer proves less than [`check_watches`]' does; a violation found is one
/// all the same.
pub fn check_watches_without_history(
    streams: &[WatchStream],
    compact_revisions: Vec<i64>,
) -> Vec<WatchViolation> {
    // A history whose base revision is the highest there is: every event is at or below
    // it, so no event is compared with a change, and no change can be missing.
    let history = KvHistory {
        base_revision: i64::MAX,
        revisions: Vec::new(),
        compact_revisions,
    };
    check_watches(streams, &history)
}

/// Checks one watch stream against the history.
pub fn check_watch(stream: &WatchStream, history: &KvHistory) -> Vec<WatchViolation> {
    check_watches(std::slice::from_ref(stream), history)
}

impl WatchRequest {
    /// Whether this watcher is sent every change of every key: its range starts at the
    /// lowest key and has no end, and it filters nothing.
    pub fn sees_everything(&self) -> bool {
        self.range_end == [0]
            && (self.key.is_empty() || self.key == [0])
            && !self.no_put
            && !self.no_delete
    }
}

/// Where an event is: segment, response and event index.
type Place3 = (usize, usize, usize);

/// What one watcher saw change at one revision: each key's key-value afterwards (`None`:
/// deleted) and where the event is.
type SeenByOne = BTreeMap<Vec<u8>, (Option<KeyValue>, Place3)>;

/// What the watchers saw change at each revision, for the linearizability checker to
/// agree with, and a violation for every revision where two of them saw a key change
/// differently. A revision seen by a watcher that sees everything
/// ([`WatchRequest::sees_everything`]) is complete; one seen only by watchers of some keys
/// or event types constrains just the keys they saw. An event's previous key-value also
/// says what the write at its mod revision left, without making that revision complete.
/// Within one watcher, the first event of a (revision, key) counts: repeats are
/// [`check_watches`]' business.
pub fn observed_changes(streams: &[WatchStream]) -> (ObservedChanges, Vec<WatchViolation>) {
    let mut observed = ObservedChanges::new();
    // Who first saw each (revision, key), to name both sides of a disagreement.
    let mut seen_by: HashMap<(i64, Vec<u8>), u64> = HashMap::new();
    let mut violations = Vec::new();
    // Watchers of everything first, so that partial ones are compared against them.
    let mut ordered: Vec<&WatchStream> = streams.iter().collect();
    ordered.sort_by_key(|s| (!s.request.sees_everything(), s.watcher));
    for stream in ordered {
        let complete = stream.request.sees_everything();
        let mut mine: BTreeMap<i64, SeenByOne> = BTreeMap::new();
        // What the events' previous key-values say about earlier revisions: a prev_kv
        // with mod revision m is the key-value the write at m left. This watcher may not
        // have seen revision m itself (it started later), so these never mark a revision
        // complete; they only pin which write happened there.
        let mut earlier: BTreeMap<i64, SeenByOne> = BTreeMap::new();
        for (si, segment) in stream.segments.iter().enumerate() {
            for (ri, response) in segment.responses.iter().enumerate() {
                for (ei, event) in response.events.iter().enumerate() {
                    let kv = match event.kind {
                        EventKind::Put => Some(event.kv.clone()),
                        EventKind::Delete => None,
                    };
                    mine.entry(event.kv.mod_revision)
                        .or_default()
                        .entry(event.kv.key.clone())
                        .or_insert((kv, (si, ri, ei)));
                    if let Some(prev) = event.prev_kv.as_ref().filter(|p| p.mod_revision > 0) {
                        earlier
                            .entry(prev.mod_revision)
                            .or_default()
                            .entry(prev.key.clone())
                            .or_insert((Some(prev.clone()), (si, ri, ei)));
                    }
                }
            }
        }
        for (mark_complete, seen) in [(complete, mine), (false, earlier)] {
            for (revision, changes) in seen {
                let entry = observed.entry(revision).or_default();
                // Watchers of everything come first, so a partial watcher never leaves
                // keys in an entry that a complete one then claims as all there is.
                entry.complete |= mark_complete;
                for (key, (kv, (si, ri, ei))) in changes {
                    match entry.changes.get(&key) {
                        None => {
                            seen_by.insert((revision, key.clone()), stream.watcher);
                            entry.changes.insert(key, kv);
                        }
                        Some(theirs) if *theirs == kv => {}
                        Some(theirs) => {
                            let show = |kv: &Option<KeyValue>| match kv {
                                Some(kv) => format!("PUT {kv}"),
                                None => format!("DELETE {}", Quoted(&key)),
                            };
                            violations.push(WatchViolation {
                                watcher: stream.watcher,
                                segment: si,
                                response_index: Some(ri),
                                event_index: Some(ei),
                                kind: ViolationKind::Content,
                                explanation: format!(
                                    "at revision {revision} this watcher saw {} but watcher {} saw {}",
                                    show(&kv),
                                    seen_by
                                        .get(&(revision, key.clone()))
                                        .copied()
                                        .unwrap_or_default(),
                                    show(theirs)
                                ),
                            });
                        }
                    }
                }
            }
        }
    }
    (observed, violations)
}

/// How many missing changes one segment reports one by one before summing up the rest.
const MAX_MISSING_REPORTED: usize = 20;

/// The history indexed for look-ups by revision and key.
struct Index<'h> {
    /// The history.
    history: &'h KvHistory,
    /// Each revision's changes.
    by_revision: BTreeMap<i64, &'h RevisionChanges>,
    /// The highest revision the store may have been compacted at (`i64::MIN` if none).
    max_compact_revision: i64,
}

impl<'h> Index<'h> {
    /// Indexes `history`.
    fn new(history: &'h KvHistory) -> Self {
        let by_revision = history.revisions.iter().map(|r| (r.revision, r)).collect();
        Index {
            history,
            by_revision,
            max_compact_revision: history
                .compact_revisions
                .iter()
                .copied()
                .max()
                .unwrap_or(i64::MIN),
        }
    }

    /// The change to `key` at `revision`, if any.
    fn change(&self, revision: i64, key: &[u8]) -> Option<&'h Change> {
        self.by_revision
            .get(&revision)
            .and_then(|r| r.changes.iter().find(|c| c.key == key))
    }

    /// A note for a mismatch at `revision`, if an operation with unknown outcome made it.
    fn uncertainty(&self, revision: i64) -> String {
        match self.by_revision.get(&revision) {
            Some(RevisionChanges {
                op,
                outcome_unknown: true,
                ..
            }) => {
                let op =
                    op.map_or_else(|| "an operation".to_string(), |o| format!("operation #{o}"));
                format!(
                    " (the linearization placed {op}, whose outcome is unknown, at this \
                     revision; if another write with unknown outcome took effect instead, \
                     the history is ambiguous here rather than the watch wrong)"
                )
            }
            _ => String::new(),
        }
    }

    /// The changes `request` is sent in `from..=to`, as (revision, change).
    fn matching(
        &self,
        request: &'h WatchRequest,
        from: i64,
        to: i64,
    ) -> impl Iterator<Item = (i64, &'h Change)> + '_ {
        let range = if from <= to { Some(from..=to) } else { None };
        range
            .into_iter()
            .flat_map(move |r| self.by_revision.range(r))
            .flat_map(move |(&rev, r)| {
                r.changes
                    .iter()
                    .filter(move |c| request.matches(&c.key, c.kind()))
                    .map(move |c| (rev, c))
            })
    }
}

/// Writes bytes as a quoted string, escaping what is not printable ASCII.
struct Quoted<'a>(&'a [u8]);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"")?;
        for b in self.0 {
            match b {
                b'"' => f.write_str("\\\"")?,
                b'\\' => f.write_str("\\\\")?,
                0x20..=0x7e => write!(f, "{}", char::from(*b))?,
                _ => write!(f, "\\x{b:02x}")?,
            }
        }
        f.write_str("\"")
    }
}

/// Writes an optional key-value.
struct OptKv<'a>(Option<&'a KeyValue>);

impl fmt::Display for OptKv<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(kv) => kv.fmt(f),
            None => f.write_str("none"),
        }
    }
}

/// Where an event was delivered.
#[derive(Debug, Clone, Copy)]
struct Place {
    /// The segment.
    segment: usize,
    /// The response in the segment.
    response: usize,
    /// The event in the response.
    event: usize,
}

/// The state of checking one watcher.
struct Checker<'a> {
    /// The watcher.
    stream: &'a WatchStream,
    /// The history.
    index: &'a Index<'a>,
    /// Every (revision, key) delivered so far, across segments, and where first.
    delivered: HashMap<(i64, Vec<u8>), Place>,
    /// The violations found.
    violations: Vec<WatchViolation>,
}

/// The state of checking one segment.
struct SegmentState {
    /// The first revision the segment must deliver from, if known (a start revision of 0
    /// is only known from the created response's header).
    start: Option<i64>,
    /// The revision up to which every matching change must have been delivered: the
    /// highest event revision or progress notification so far.
    through: i64,
    /// For each response that raised `through`, the new value and the response index, so
    /// that a missing change can be blamed on the first response that implied it.
    raises: Vec<(i64, usize)>,
    /// The highest event revision so far (`i64::MIN` before any).
    last_event_revision: i64,
    /// The highest progress notification so far and its response index.
    bookmark: Option<(i64, usize)>,
    /// For each revision delivered in this segment, the last response holding it.
    revision_response: HashMap<i64, usize>,
    /// The response that canceled the watcher, if any.
    canceled_at: Option<usize>,
    /// The compact revision the watcher was canceled with, if any.
    compacted_at: Option<i64>,
}

impl<'a> Checker<'a> {
    /// A checker for `stream`.
    fn new(stream: &'a WatchStream, index: &'a Index<'a>) -> Self {
        Checker {
            stream,
            index,
            delivered: HashMap::new(),
            violations: Vec::new(),
        }
    }

    /// Records a violation.
    fn report(
        &mut self,
        segment: usize,
        response_index: Option<usize>,
        event_index: Option<usize>,
        kind: ViolationKind,
        explanation: String,
    ) {
        self.violations.push(WatchViolation {
            watcher: self.stream.watcher,
            segment,
            response_index,
            event_index,
            kind,
            explanation,
        });
    }

    /// Checks every segment in order and returns the violations.
    fn run(mut self) -> Vec<WatchViolation> {
        // The revision the combined stream is to continue from after the segments so
        // far; `None` before the first segment or when it cannot be known.
        let mut next: Option<i64> = None;
        for (si, segment) in self.stream.segments.iter().enumerate() {
            let state = self.segment(si, segment, next);
            next = if state.through > i64::MIN {
                state.start.map(|_| state.through.saturating_add(1))
            } else {
                None
            };
            // A watcher canceled for compaction cannot get revisions below the compact
            // revision any more, so a resume from there skips nothing it could have had.
            if let (Some(n), Some(c)) = (next, state.compacted_at) {
                next = Some(n.max(c));
            }
        }
        self.violations
    }

    /// Checks segment `si`, which continues a stream expected to go on from `next`.
    fn segment(&mut self, si: usize, segment: &'a Segment, next: Option<i64>) -> SegmentState {
        let start = if segment.start_revision > 0 {
            Some(segment.start_revision)
        } else {
            segment
                .responses
                .first()
                .filter(|r| r.created)
                .map(|r| r.header_revision.saturating_add(1))
        };
        if let (Some(expected), Some(start)) = (next, start) {
            self.check_resume(si, segment, expected, start);
        }
        let mut state = SegmentState {
            start,
            through: start.map_or(i64::MIN, |s| s.saturating_sub(1)),
            raises: Vec::new(),
            last_event_revision: i64::MIN,
            bookmark: None,
            revision_response: HashMap::new(),
            canceled_at: None,
            compacted_at: None,
        };
        let compacted_start =
            segment.start_revision > 0 && segment.start_revision < segment.known_compact_revision;
        let mut reported_compacted_start = false;
        for (ri, response) in segment.responses.iter().enumerate() {
            if let Some(at) = state.canceled_at {
                self.report(
                    si,
                    Some(ri),
                    None,
                    ViolationKind::Protocol,
                    format!("a response after the watcher was canceled at response {at}"),
                );
                continue;
            }
            if response.created && ri != 0 {
                self.report(
                    si,
                    Some(ri),
                    None,
                    ViolationKind::Protocol,
                    "a created response that is not the segment's first".to_string(),
                );
            }
            if ri == 0 && !response.created {
                self.report(
                    si,
                    Some(ri),
                    None,
                    ViolationKind::Protocol,
                    "the first response of a segment is not the created response".to_string(),
                );
            }
            if compacted_start
                && !reported_compacted_start
                && (!response.events.is_empty() || response.is_progress_notify())
            {
                reported_compacted_start = true;
                self.report(
                    si,
                    Some(ri),
                    None,
                    ViolationKind::Compaction,
                    format!(
                        "the watch starts at revision {} but the store was compacted at {} \
                         before it was created, so it must be canceled with the compact \
                         revision; it got events or progress instead",
                        segment.start_revision, segment.known_compact_revision
                    ),
                );
            }
            if response.compact_revision != 0 {
                self.check_compaction(si, ri, response, &state);
                state.compacted_at = Some(response.compact_revision);
            }
            if response.canceled {
                state.canceled_at = Some(ri);
            }
            if response.is_progress_notify() {
                Self::progress(ri, response, &mut state);
            }
            for (ei, event) in response.events.iter().enumerate() {
                self.event(si, ri, ei, response, event, &mut state);
            }
        }
        if let Some(start) = state.start {
            self.check_reliable(si, start, &state);
        }
        state
    }

    /// Checks that a segment resumed at `start` neither skips nor replays matching
    /// changes, given that the stream so far was to continue from `expected`.
    fn check_resume(&mut self, si: usize, segment: &Segment, expected: i64, start: i64) {
        let request = &self.stream.request;
        let how = if segment.start_revision > 0 {
            format!("resumed from revision {start}")
        } else {
            format!("re-created from the current revision (effectively {start})")
        };
        if start > expected {
            let skipped: Vec<String> = self
                .index
                .matching(request, expected, start.saturating_sub(1))
                .map(|(rev, c)| format!("{} {} at {rev}", c.kind(), Quoted(&c.key)))
                .collect();
            if !skipped.is_empty() {
                self.report(
                    si,
                    None,
                    None,
                    ViolationKind::Resumable,
                    format!(
                        "{how} but the stream so far ends at revision {}; it skips {}",
                        expected.saturating_sub(1),
                        skipped.join(", ")
                    ),
                );
            }
        } else if start < expected {
            let replayed: Vec<String> = self
                .index
                .matching(request, start, expected.saturating_sub(1))
                .map(|(rev, c)| format!("{} {} at {rev}", c.kind(), Quoted(&c.key)))
                .collect();
            if !replayed.is_empty() {
                self.report(
                    si,
                    None,
                    None,
                    ViolationKind::Resumable,
                    format!(
                        "{how} but the stream so far already went through revision {}; \
                         it replays {}",
                        expected.saturating_sub(1),
                        replayed.join(", ")
                    ),
                );
            }
        }
    }

    /// Checks a cancel with a compact revision.
    fn check_compaction(
        &mut self,
        si: usize,
        ri: usize,
        response: &WatchResponse,
        state: &SegmentState,
    ) {
        let c = response.compact_revision;
        if !response.canceled {
            self.report(
                si,
                Some(ri),
                None,
                ViolationKind::Protocol,
                format!("compact revision {c} on a response that does not cancel the watcher"),
            );
        }
        if !self.index.history.compact_revisions.contains(&c) {
            self.report(
                si,
                Some(ri),
                None,
                ViolationKind::Compaction,
                format!(
                    "canceled with compact revision {c}, but no compaction at {c} is in the \
                     history (possible: {:?})",
                    self.index.history.compact_revisions
                ),
            );
        }
        // etcd cancels a watcher only when the next revision it needs is below the
        // compact revision; a watcher that needs nothing compacted must keep going.
        // What the watcher delivered or bookmarked is a lower bound of that revision.
        let needed = state.start.map(|_| state.through.saturating_add(1));
        if let Some(needed) = needed {
            if needed >= c {
                self.report(
                    si,
                    Some(ri),
                    None,
                    ViolationKind::Compaction,
                    format!(
                        "canceled with compact revision {c}, but the watcher needed \
                         revisions from {needed} on, which that compaction keeps"
                    ),
                );
            }
        }
    }

    /// Takes in a progress notification.
    fn progress(ri: usize, response: &WatchResponse, state: &mut SegmentState) {
        let r = response.header_revision;
        if state.bookmark.is_none_or(|(b, _)| r > b) {
            state.bookmark = Some((r, ri));
        }
        if r > state.through {
            state.through = r;
            state.raises.push((r, ri));
        }
    }

    /// Checks one event.
    fn event(
        &mut self,
        si: usize,
        ri: usize,
        ei: usize,
        response: &WatchResponse,
        event: &WatchEvent,
        state: &mut SegmentState,
    ) {
        let request = &self.stream.request;
        let rev = event.kv.mod_revision;
        let key = &event.kv.key;
        let what = format!("{} {} at revision {rev}", event.kind, Quoted(key));
        let at = (Some(ri), Some(ei));
        if response.header_revision != 0 && rev > response.header_revision {
            self.report(
                si,
                at.0,
                at.1,
                ViolationKind::Protocol,
                format!(
                    "{what} is newer than the response's header revision {}",
                    response.header_revision
                ),
            );
        }
        if rev < state.last_event_revision {
            self.report(
                si,
                at.0,
                at.1,
                ViolationKind::Ordered,
                format!(
                    "{what} comes after an event at revision {}",
                    state.last_event_revision
                ),
            );
        }
        // Only an explicit start revision bounds the events from below: etcd reads the
        // created response's header after registering a watcher that starts "now", so a
        // write in between can give events at or below that header.
        let start = self.stream.segments.get(si).map_or(0, |s| s.start_revision);
        if start > 0 && rev < start {
            self.report(
                si,
                at.0,
                at.1,
                ViolationKind::Ordered,
                format!("{what} is below the segment's start revision {start}"),
            );
        }
        if let Some((b, bri)) = state.bookmark {
            if rev <= b {
                self.report(
                    si,
                    at.0,
                    at.1,
                    ViolationKind::Bookmarkable,
                    format!(
                        "{what} arrives after the progress notification at response {bri}, \
                         which claimed everything up to revision {b} was delivered"
                    ),
                );
            }
        }
        let place = Place {
            segment: si,
            response: ri,
            event: ei,
        };
        if let Some(first) = self.delivered.get(&(rev, key.clone())) {
            let first = *first;
            self.report(
                si,
                at.0,
                at.1,
                ViolationKind::Unique,
                format!(
                    "{what} was already delivered (segment {}, response {}, event {})",
                    first.segment, first.response, first.event
                ),
            );
            return;
        }
        self.delivered.insert((rev, key.clone()), place);
        if !request.matches(key, event.kind) {
            self.report(
                si,
                at.0,
                at.1,
                ViolationKind::Filter,
                format!("{what} is outside the watched range or of a filtered type"),
            );
        }
        self.check_content(si, ri, ei, event, &what);
        match state.revision_response.get(&rev) {
            Some(&last) if last != ri => {
                let fragmented = request.fragment
                    && ri.checked_sub(1) == Some(last)
                    && self
                        .stream
                        .segments
                        .get(si)
                        .and_then(|s| s.responses.get(last))
                        .is_some_and(|r| r.fragment);
                if !fragmented {
                    self.report(
                        si,
                        at.0,
                        at.1,
                        ViolationKind::Atomic,
                        format!(
                            "{what} is split from the other events of its revision in \
                             response {last}"
                        ),
                    );
                }
            }
            _ => {}
        }
        state.revision_response.insert(rev, ri);
        state.last_event_revision = state.last_event_revision.max(rev);
        if rev > state.through {
            state.through = rev;
            state.raises.push((rev, ri));
        }
    }

    /// Checks an event's type, key-value and previous key-value against the history.
    fn check_content(&mut self, si: usize, ri: usize, ei: usize, event: &WatchEvent, what: &str) {
        let rev = event.kv.mod_revision;
        if rev <= self.index.history.base_revision {
            // The history does not reach back this far; nothing to compare with.
            return;
        }
        let at = (Some(ri), Some(ei));
        let Some(change) = self.index.change(rev, &event.kv.key) else {
            self.report(
                si,
                at.0,
                at.1,
                ViolationKind::Content,
                format!(
                    "{what}: the history has no change to this key at this revision{}",
                    self.index.uncertainty(rev)
                ),
            );
            return;
        };
        if change.kind() != event.kind {
            self.report(
                si,
                at.0,
                at.1,
                ViolationKind::Content,
                format!(
                    "{what}: the history has a {} there{}",
                    change.kind(),
                    self.index.uncertainty(rev)
                ),
            );
            return;
        }
        let expected = match &change.kv {
            Some(kv) => kv.clone(),
            // etcd's delete event carries the key and the delete's revision only.
            None => KeyValue {
                key: change.key.clone(),
                mod_revision: rev,
                ..KeyValue::default()
            },
        };
        if event.kv != expected {
            self.report(
                si,
                at.0,
                at.1,
                ViolationKind::Content,
                format!(
                    "{what} carries {}, but the history has {expected}{}",
                    event.kv,
                    self.index.uncertainty(rev)
                ),
            );
        }
        if self.stream.request.prev_kv {
            // etcd reads prev_kv at the previous revision when it sends the event; if that
            // revision is compacted by then, it sends none.
            let may_lack = self.index.max_compact_revision >= rev;
            let ok = event.prev_kv == change.prev || (event.prev_kv.is_none() && may_lack);
            if !ok {
                self.report(
                    si,
                    at.0,
                    at.1,
                    ViolationKind::PrevKv,
                    format!(
                        "{what} carries prev_kv {}, but at revision {} the key was {}{}",
                        OptKv(event.prev_kv.as_ref()),
                        rev.saturating_sub(1),
                        OptKv(change.prev.as_ref()),
                        self.index
                            .uncertainty(change.prev.as_ref().map_or(rev, |p| p.mod_revision))
                    ),
                );
            }
        } else if let Some(prev) = &event.prev_kv {
            self.report(
                si,
                at.0,
                at.1,
                ViolationKind::PrevKv,
                format!("{what} carries prev_kv {prev}, which the watcher did not ask for"),
            );
        }
    }

    /// Checks that every matching change from `start` through the segment's last event
    /// or progress notification was delivered, in this segment or an earlier one.
    fn check_reliable(&mut self, si: usize, start: i64, state: &SegmentState) {
        let request = &self.stream.request;
        let from = start.max(self.index.history.base_revision.saturating_add(1));
        let missing: Vec<(i64, &Change)> = self
            .index
            .matching(request, from, state.through)
            .filter(|(rev, c)| !self.delivered.contains_key(&(*rev, c.key.clone())))
            // As in etcd, a compaction at revision `r` removes the tombstones written at
            // `r` itself (a deleted key keeps nothing), so a watcher that starts exactly
            // at the compact revision, as a watcher canceled for compaction is told to,
            // cannot be sent the deletes of that revision once the compaction ran.
            .filter(|(rev, c)| {
                !(c.kv.is_none()
                    && *rev == start
                    && self.index.history.compact_revisions.contains(rev))
            })
            .collect();
        let total = missing.len();
        for (n, (rev, change)) in missing.into_iter().enumerate() {
            if n == MAX_MISSING_REPORTED {
                // A watcher that lost everything would otherwise flood the report.
                self.report(
                    si,
                    None,
                    None,
                    ViolationKind::Reliable,
                    format!(
                        "and {} more matching changes up to revision {} were never delivered",
                        total - n,
                        state.through
                    ),
                );
                break;
            }
            // Blame the first response whose event or bookmark reached this revision.
            let blamed = state
                .raises
                .iter()
                .find(|(through, _)| *through >= rev)
                .map(|(through, ri)| (*through, *ri));
            let why = match blamed {
                Some((through, ri)) => {
                    let by = self
                        .stream
                        .segments
                        .get(si)
                        .and_then(|s| s.responses.get(ri))
                        .is_some_and(WatchResponse::is_progress_notify);
                    if by {
                        format!("the progress notification at revision {through} claimed it")
                    } else {
                        format!("an event at revision {through} came after it")
                    }
                }
                None => "the stream went past it".to_string(),
            };
            let expected = match &change.kv {
                Some(kv) => format!("PUT {kv}"),
                None => format!("DELETE {}", Quoted(&change.key)),
            };
            self.report(
                si,
                blamed.map(|(_, ri)| ri),
                None,
                ViolationKind::Reliable,
                format!("{expected} at revision {rev} was never delivered, yet {why}"),
            );
        }
    }
}

#[cfg(test)]
mod tests;
