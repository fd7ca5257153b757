//! A linearizability checker for histories of etcd key-value requests.
//!
//! # The question
//!
//! A history is a list of [`Operation`]s: who called what when, and what came back when.
//! It is linearizable if every operation can be given a point in time between its call
//! and its return, such that running the operations one by one in that order through the
//! sequential [`Model`] of etcd gives exactly the outputs that were observed. An operation
//! whose outcome is unknown (a timeout, a connection lost) may take effect at any point
//! after its call, however late, or not at all; its output is not checked.
//!
//! # The search
//!
//! This is the Wing–Gong–Lowe algorithm with Lowe's memoization, as in porcupine. Call
//! and return events are kept in a doubly linked list in time order. The search walks the
//! list from the start: each call event it meets is a candidate to be linearized next; it
//! is applied to the model and, if the model agrees with the observed output, the
//! operation is pushed on a stack and both its events are unlinked, and the walk restarts.
//! Meeting a return event means that operation had to be linearized before any operation
//! called later, so the last choice was wrong: the search pops it, reverts the model and
//! tries the next candidate after it. The history is linearizable when no return event is
//! left. A cache of (set of linearized operations, model state) pairs already reached
//! cuts off the search wherever it would redo work: two paths that linearized the same
//! set and reached the same state have the same future.
//!
//! Porcupine would also split the history per key (P-compositionality), but etcd's
//! revisions are global: a put to one key changes what a read of another key reports in
//! its header. So the whole history is searched at once, and the revisions make up for
//! it, since they pin the order of writes almost completely:
//!
//! - every successful response carries the store revision after the request, and the
//!   revision never goes down. So a known operation that reported revision `r` can only be
//!   linearized while the store is at `r` (a read, a failed compare, a delete of nothing,
//!   a grant, a compaction) or at `r - 1` (a put, a delete that deleted something, a txn
//!   that wrote): this is checked before the model even runs (the *revision window*);
//! - a write that reported revision `r` *claims* `r`: no other operation may move the
//!   store to `r`, so an operation whose outcome is unknown, or a revoke that would
//!   delete keys, is not linearized where it would take a claimed revision;
//! - nothing may move the store past a revision that a known operation not yet linearized
//!   still has to see: if an operation reported revision `r` and is not placed yet, the
//!   store must not go above `r`. Without this rule the search would find out much later,
//!   when it meets that operation's return event;
//! - an operation with an unknown outcome that would change nothing at this point is not
//!   linearized here, since that is the same as leaving it out (which is allowed), and an
//!   unknown operation that can never change anything (a read) is dropped up front.
//!
//! With these rules a history whose operations all returned is checked in time close to
//! linear in its length: at every step only the few operations whose revision window
//! contains the store revision get past the first check.
//!
//! Reads are linearized at the exact revision they report, not "some revision at least
//! as new": etcd's header revision for a read at the current revision is the revision the
//! read was served at, so a correct read's whole answer is the state at that revision.
//!
//! # Results
//!
//! [`check`] returns [`CheckResult::Linearizable`] with an order, a
//! [`CheckResult::Violation`] naming the longest linearizable prefix found and the
//! operations that could not be placed after it, with an explanation, or
//! [`CheckResult::Unknown`] when the search budget ([`CheckConfig::max_steps`]) runs
//! out, so that the checker never hangs.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::{self, Write as _};
use std::sync::Arc;

use super::model::{
    Input, KeyValue, Model, Output, Reply, Response, ShowOutput, TxnOpResult, Undo,
};

/// One operation of a history: a request, when it was called, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// The client that issued it (only used in reports).
    pub client_id: u64,
    /// When the client sent it, in simulated nanoseconds.
    pub call_ns: u64,
    /// When the client got the answer, in simulated nanoseconds; `None` if the outcome is
    /// unknown (and then `output` must be `None` too).
    pub return_ns: Option<u64>,
    /// The request.
    pub input: Input,
    /// The answer; `None` if the outcome is unknown: the request may have taken effect at
    /// any point after its call, or not at all. Errors that leave the outcome open
    /// (timeouts, leader changes, lost connections) are recorded as `None`; only the
    /// certain errors of [`KvError`](super::model::KvError) are outputs.
    pub output: Option<Output>,
}

impl Operation {
    /// An operation that returned `output` at `return_ns`.
    pub fn returned(
        client_id: u64,
        call_ns: u64,
        return_ns: u64,
        input: Input,
        output: Output,
    ) -> Self {
        Operation {
            client_id,
            call_ns,
            return_ns: Some(return_ns),
            input,
            output: Some(output),
        }
    }

    /// An operation whose outcome is unknown.
    pub fn unknown(client_id: u64, call_ns: u64, input: Input) -> Self {
        Operation {
            client_id,
            call_ns,
            return_ns: None,
            input,
            output: None,
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {} ", self.client_id)?;
        match self.return_ns {
            Some(r) => write!(f, "[{}..{} ns]", self.call_ns, r)?,
            None => write!(f, "[{}.. ns]", self.call_ns)?,
        }
        write!(f, " {}", self.input)?;
        match &self.output {
            Some(out) => write!(f, " -> {}", ShowOutput(out)),
            None => f.write_str(" -> unknown outcome"),
        }
    }
}

/// How the search runs.
#[derive(Debug, Clone)]
pub struct CheckConfig {
    /// The most candidate placements the search tries before giving up with
    /// [`CheckResult::Unknown`]. Each costs one model step (microseconds at most).
    pub max_steps: u64,
    /// The state before the first operation.
    pub initial: Model,
    /// What watchers saw change at each revision. A placement that moves the store to
    /// a revision listed here must make exactly these changes, so that the linearization
    /// found is one the watch streams agree with (when unknown outcomes leave the order
    /// of writes open, the watch events pin it). Empty: no constraint.
    pub observed: Arc<ObservedChanges>,
}

/// For each revision some watcher saw, what changed at it.
pub type ObservedChanges = BTreeMap<i64, SeenRevision>;

/// What watchers saw change at one revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeenRevision {
    /// Keys seen changing, with the key-value afterwards (`None`: deleted).
    pub changes: BTreeMap<Vec<u8>, Option<KeyValue>>,
    /// Whether a watcher that sees every key and every event type saw this revision, so
    /// that `changes` is everything that changed; otherwise only watchers of some keys or
    /// some event types did, and other keys may have changed too.
    pub complete: bool,
}

impl Default for CheckConfig {
    fn default() -> Self {
        CheckConfig {
            max_steps: 10_000_000,
            initial: Model::new(),
            observed: Arc::new(ObservedChanges::new()),
        }
    }
}

/// What [`check`] found.
#[derive(Debug, Clone)]
pub enum CheckResult {
    /// The history is linearizable.
    Linearizable(Linearization),
    /// The history is not linearizable.
    Violation(Box<Violation>),
    /// The search budget ran out before an answer.
    Unknown(Exhausted),
}

impl CheckResult {
    /// Whether the history was found linearizable.
    pub fn is_linearizable(&self) -> bool {
        matches!(self, CheckResult::Linearizable(_))
    }

    /// How many candidate placements the search tried, whatever it found: compared with
    /// [`CheckConfig::max_steps`], how close the check came to giving up.
    pub fn steps(&self) -> u64 {
        match self {
            CheckResult::Linearizable(l) => l.steps,
            CheckResult::Violation(v) => v.steps,
            CheckResult::Unknown(e) => e.steps,
        }
    }

    /// The violation, if one was found.
    pub fn violation(&self) -> Option<&Violation> {
        match self {
            CheckResult::Violation(v) => Some(v),
            _ => None,
        }
    }
}

/// A witness that a history is linearizable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Linearization {
    /// Indices into the history of the operations that took effect, in linearization
    /// order: every operation that returned, and the unknown ones that were placed.
    pub order: Vec<usize>,
    /// Indices of the operations with unknown outcome that were left out (as if they never
    /// took effect), in history order.
    pub left_out: Vec<usize>,
    /// How many candidate placements the search tried.
    pub steps: u64,
}

/// Why the search stopped without an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exhausted {
    /// How many candidate placements the search tried.
    pub steps: u64,
    /// The length of the longest linearizable prefix found.
    pub longest_prefix: usize,
}

/// Why an operation could not be linearized right after the longest prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// The operation reported revision `reported`, which the store, at `current`, can
    /// only reach from a different revision (or has passed).
    RevisionWindow {
        /// The revision the operation's response header carried.
        reported: i64,
        /// The store revision after the prefix.
        current: i64,
    },
    /// The model answers differently from what was observed.
    OutputMismatch {
        /// What etcd would have answered at this point.
        model: Output,
    },
    /// The operation would move the store to a revision another write reported.
    RevisionClaimed {
        /// The revision.
        revision: i64,
        /// The index of the operation that reported writing it.
        by_op: usize,
    },
    /// The operation would move the store past a revision that an operation not yet
    /// linearized reported, so that operation could never be placed.
    SkipsRevision {
        /// The revision the store would reach.
        revision: i64,
        /// The index of the operation that still needs an earlier revision.
        pending_op: usize,
        /// The revision that operation reported.
        pending_revision: i64,
    },
    /// The outcome is unknown and the operation would change nothing here; that is the
    /// same as leaving it out.
    NoEffect,
    /// The operation would move the store to a revision whose changes watchers saw, but
    /// it would change something else.
    WatchMismatch {
        /// The revision.
        revision: i64,
    },
    /// The last operation of the prefix has an unknown outcome and this one commutes with
    /// it, so the search considers the order with the unknown one later instead.
    CommutesWithUnknown {
        /// The index of the operation with unknown outcome.
        unknown_op: usize,
    },
    /// The operation can be placed here, but every way to continue after it was explored
    /// and failed.
    DeadEnd,
}

/// One candidate that could not be placed after the longest linearizable prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The operation's index in the history.
    pub op: usize,
    /// Why it could not be placed.
    pub rejection: Rejection,
}

/// The key that an operation of the prefix wrote last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastWriter {
    /// The key.
    pub key: Vec<u8>,
    /// The index of the last operation of the prefix that changed it.
    pub op: usize,
}

/// A proof sketch that a history is not linearizable: the longest prefix the search could
/// linearize and why nothing could come next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// How the violation was found.
    pub cause: Cause,
    /// Indices of the operations of the longest linearizable prefix found, in order
    /// (empty when the pre-check found the violation without searching).
    pub prefix: Vec<usize>,
    /// The store revision after the prefix.
    pub revision: i64,
    /// The operation that had returned, and so had to be linearized before every
    /// operation called after its return, but could not be (`None` only in the degenerate
    /// case that no operation was left to blame).
    pub blocking_op: Option<usize>,
    /// Every operation that was a candidate to come next (called before the blocking
    /// operation returned and not in the prefix), with why it could not.
    pub attempts: Vec<Attempt>,
    /// For the keys the blocking operation and the mismatching candidates touch, the
    /// prefix operation that changed each last.
    pub last_writers: Vec<LastWriter>,
    /// The small set of operations to highlight, in history order: the blocking
    /// operation, the operations the candidates' rejections name (one whose reported
    /// revision a candidate would skip, or that claimed its revision), and the last
    /// writers of the keys these involve.
    pub ops: Vec<usize>,
    /// A human-readable account of all of the above.
    pub explanation: String,
    /// How many candidate placements the search tried.
    pub steps: u64,
}

/// How a violation was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// The search found that nothing can follow the longest linearizable prefix.
    Search,
    /// The pre-check found an operation that was called after another returned, yet
    /// reports a revision the store had passed when the other returned.
    RevisionOrder {
        /// The index of the operation that returned first.
        earlier: usize,
        /// The index of the operation called after it.
        later: usize,
    },
    /// The pre-check found two writes that both report writing one revision.
    SameRevision {
        /// The index of one write.
        first: usize,
        /// The index of the other.
        second: usize,
        /// The revision.
        revision: i64,
    },
}

/// Why a history cannot be checked at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryError {
    /// An operation returned before it was called.
    ReturnBeforeCall {
        /// The operation's index.
        op: usize,
    },
    /// An operation has an output but no return time.
    OutputWithoutReturn {
        /// The operation's index.
        op: usize,
    },
    /// An operation's response is not the kind its request gets.
    WrongResponseKind {
        /// The operation's index.
        op: usize,
    },
    /// The history has more operations than the checker can index.
    TooManyOperations {
        /// How many it has.
        count: usize,
    },
}

impl fmt::Display for HistoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HistoryError::ReturnBeforeCall { op } => {
                write!(f, "operation #{op} returns before it is called")
            }
            HistoryError::OutputWithoutReturn { op } => {
                write!(f, "operation #{op} has an output but no return time")
            }
            HistoryError::WrongResponseKind { op } => {
                write!(
                    f,
                    "operation #{op} has a response of the wrong kind for its request"
                )
            }
            HistoryError::TooManyOperations { count } => {
                write!(
                    f,
                    "the history has {count} operations, more than the checker indexes"
                )
            }
        }
    }
}

impl std::error::Error for HistoryError {}

/// The end of the event list.
const NIL: usize = usize::MAX;

/// The list's head sentinel.
const HEAD: usize = 0;

/// One operation as the search sees it.
struct Op<'h> {
    /// The index in the history.
    orig: usize,
    /// The request.
    input: &'h Input,
    /// The observed output, `None` if unknown.
    output: Option<&'h Output>,
    /// The store revisions (inclusive) at which a known successful operation can be
    /// linearized, judging by its header revision alone.
    window: Option<(i64, i64)>,
    /// The header revision of a known successful operation: the store revision right
    /// after it.
    reported: Option<i64>,
    /// The event-list node of the call.
    call_node: usize,
    /// The event-list node of the return; `None` if the outcome is unknown.
    return_node: Option<usize>,
    /// A random 128-bit tag; a set of operations is fingerprinted by the XOR of its tags.
    tag: u128,
}

/// One event of the list: an operation's call or return.
#[derive(Clone, Copy)]
struct Node {
    /// The operation's index in the search's operation table.
    op: usize,
    /// Whether this is the call (else the return).
    is_call: bool,
}

/// One linearized operation on the search stack.
struct Frame {
    /// The operation's index in the search's operation table.
    op: usize,
    /// How to revert the model to before it.
    undo: Undo,
    /// Whether the placement was forced: the operation returned, changed nothing and
    /// answered as observed, so placing it at once loses no linearization (see
    /// [`Search::run`]) and no alternative to it needs trying.
    forced: bool,
}

/// What came of trying to linearize one operation next.
enum Verdict {
    /// It can be placed; the model has been advanced and `Undo` reverts it.
    Placed(Undo),
    /// It cannot be placed; the model is unchanged.
    Rejected(Rejection),
}

/// SplitMix64, a small well-mixed generator for the operation tags.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Whether a successful response proves that the request wrote (bumped the revision):
/// `Some(true)` if it certainly did, `Some(false)` if it certainly did not, `None` if the
/// response cannot tell (a revoke deletes keys only if the lease had some).
fn wrote(output: &Output) -> Option<bool> {
    let Ok(reply) = output else {
        return Some(false);
    };
    match &reply.response {
        Response::Put(_) => Some(true),
        Response::Delete(d) => Some(d.deleted > 0),
        Response::Txn(t) => Some(t.responses.iter().any(|r| match r {
            TxnOpResult::Put(_) => true,
            TxnOpResult::Delete(d) => d.deleted > 0,
            TxnOpResult::Get(_) => false,
        })),
        Response::LeaseRevoke => None,
        Response::Get(_) | Response::LeaseGrant | Response::Compact | Response::LeaseKeepAlive => {
            Some(false)
        }
    }
}

/// The search over one history.
struct Search<'h> {
    /// The history.
    history: &'h [Operation],
    /// The operations taking part (unknown read-only ones are dropped).
    ops: Vec<Op<'h>>,
    /// The event list; node 0 is the head sentinel.
    nodes: Vec<Node>,
    /// The next node of each node, [`NIL`] at the end.
    next: Vec<usize>,
    /// The previous node of each node.
    prev: Vec<usize>,
    /// The state before the first operation.
    initial: Model,
    /// The model after the linearized operations.
    model: Model,
    /// The linearized operations, in order.
    stack: Vec<Frame>,
    /// Whether each operation is on the stack.
    linearized: Vec<bool>,
    /// The XOR of the tags of the linearized operations.
    set_tag: u128,
    /// The (linearized set, model state) pairs already reached.
    seen: HashSet<(u128, u64, usize)>,
    /// The reported revision of every known successful operation not linearized yet.
    pending: BTreeSet<(i64, usize)>,
    /// The operation that reported writing each revision.
    claimed: HashMap<i64, usize>,
    /// Return events still in the list.
    returns_left: usize,
    /// Candidate placements tried so far.
    steps: u64,
    /// The budget for `steps`.
    max_steps: u64,
    /// Undo logs to reuse.
    spare: Vec<Undo>,
    /// The deepest dead end met so far.
    deepest: Option<DeadEndSnapshot>,
    /// Two writes (operation-table indices) reporting the same revision, if any.
    duplicate_claim: Option<(usize, usize, i64)>,
    /// What watchers saw change at each revision.
    observed: Arc<ObservedChanges>,
}

/// The search's situation at its deepest dead end, kept for the report.
struct DeadEndSnapshot {
    /// The linearized operations (operation-table indices), in order.
    prefix: Vec<usize>,
    /// The store revision after them.
    revision: i64,
    /// The operation whose return event stopped the walk.
    blocking: Option<usize>,
    /// The candidates with why each failed.
    attempts: Vec<(usize, Rejection)>,
}

impl<'h> Search<'h> {
    /// Prepares the search: validates the history, drops what cannot matter, and builds
    /// the event list.
    fn new(history: &'h [Operation], config: &CheckConfig) -> Result<Self, HistoryError> {
        if history.len() >= (u32::MAX / 2) as usize {
            return Err(HistoryError::TooManyOperations {
                count: history.len(),
            });
        }
        let mut ops = Vec::with_capacity(history.len());
        let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * history.len());
        let mut claimed = HashMap::new();
        let mut duplicate_claim = None;
        let mut seed = 0x6c69_6e7a_u64;
        for (orig, o) in history.iter().enumerate() {
            if o.return_ns.is_some_and(|r| r < o.call_ns) {
                return Err(HistoryError::ReturnBeforeCall { op: orig });
            }
            let output = match (&o.output, o.return_ns) {
                (Some(_), None) => return Err(HistoryError::OutputWithoutReturn { op: orig }),
                (Some(out), Some(_)) => Some(out),
                (None, _) => None,
            };
            if let Some(Ok(reply)) = output {
                if !o.input.accepts(&reply.response) {
                    return Err(HistoryError::WrongResponseKind { op: orig });
                }
            }
            if output.is_none() && o.input.is_read_only() {
                // A read whose answer nobody saw constrains nothing.
                continue;
            }
            let index = ops.len();
            let (window, reported) = match output {
                // A keep-alive's header comes from the leader's applied state, not from a
                // point in the log, so its revision pins nothing.
                Some(Ok(Reply {
                    response: Response::LeaseKeepAlive,
                    ..
                })) => (None, None),
                Some(Ok(reply)) => {
                    let r = reply.revision;
                    let before = r.saturating_sub(1);
                    let window = match output.and_then(wrote) {
                        Some(true) => {
                            if let Some(&first) = claimed.get(&r) {
                                duplicate_claim.get_or_insert((first, index, r));
                            } else {
                                claimed.insert(r, index);
                            }
                            (before, before)
                        }
                        Some(false) => (r, r),
                        None => (before, r),
                    };
                    (Some(window), Some(r))
                }
                _ => (None, None),
            };
            let tag = (u128::from(splitmix64(&mut seed)) << 64) | u128::from(splitmix64(&mut seed));
            events.push((o.call_ns, true, index));
            if output.is_some() {
                events.push((o.return_ns.unwrap_or(u64::MAX), false, index));
            }
            ops.push(Op {
                orig,
                input: &o.input,
                output,
                window,
                reported,
                call_node: NIL,
                return_node: None,
                tag,
            });
        }
        // Calls sort before returns at the same instant, so that touching operations
        // count as concurrent: that can only make more histories linearizable.
        events.sort_by_key(|&(t, is_call, op)| (t, !is_call, op));
        let mut nodes = Vec::with_capacity(events.len() + 1);
        nodes.push(Node {
            op: usize::MAX,
            is_call: false,
        });
        let mut returns_left = 0;
        for &(_, is_call, op) in &events {
            let node = nodes.len();
            if let Some(o) = ops.get_mut(op) {
                if is_call {
                    o.call_node = node;
                } else {
                    o.return_node = Some(node);
                    returns_left += 1;
                }
            }
            nodes.push(Node { op, is_call });
        }
        let count = nodes.len();
        let next = (0..count)
            .map(|i| if i + 1 < count { i + 1 } else { NIL })
            .collect();
        let prev = (0..count).map(|i| i.saturating_sub(1)).collect();
        let pending = ops
            .iter()
            .enumerate()
            .filter_map(|(i, o)| o.reported.map(|r| (r, i)))
            .collect();
        let linearized = vec![false; ops.len()];
        Ok(Search {
            history,
            ops,
            nodes,
            next,
            prev,
            initial: config.initial.clone(),
            observed: config.observed.clone(),
            model: config.initial.clone(),
            stack: Vec::new(),
            linearized,
            set_tag: 0,
            seen: HashSet::new(),
            pending,
            claimed,
            returns_left,
            steps: 0,
            max_steps: config.max_steps,
            spare: Vec::new(),
            deepest: None,
            duplicate_claim,
        })
    }

    /// Unlinks a node from the list (it keeps its own links, to be relinked).
    fn unlink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    /// Puts a node back where it was; nodes must be relinked in reverse unlink order.
    fn relink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = node;
        if n != NIL {
            self.prev[n] = node;
        }
    }

    /// Whether the step logged in `undo`, just applied to the model, agrees with what
    /// watchers saw at the new revision: every key they saw changed to the key-value they
    /// saw, and, if a watcher of everything saw it, nothing else.
    fn matches_observed(&self, undo: &Undo, seen: &SeenRevision) -> bool {
        let mut changed = 0usize;
        for key in undo.changed_keys() {
            changed += 1;
            match seen.changes.get(key) {
                None if seen.complete => return false,
                Some(expected) if self.model.get(key) != expected.as_ref() => return false,
                _ => {}
            }
        }
        // Every key seen changing must be among those this step changed.
        let covered = seen
            .changes
            .keys()
            .filter(|k| undo.changed_keys().any(|c| c == k.as_slice()))
            .count();
        covered == seen.changes.len() && (!seen.complete || changed == seen.changes.len())
    }

    /// Tries to linearize `op` next. With `record` the attempt counts against the budget
    /// and a placement is remembered in the cache; without, nothing but the model changes
    /// (for reports).
    fn try_place(&mut self, op: usize, record: bool) -> Verdict {
        let Some(o) = self.ops.get(op) else {
            return Verdict::Rejected(Rejection::DeadEnd);
        };
        let (input, output, window, reported, tag) =
            (o.input, o.output, o.window, o.reported, o.tag);
        let current = self.model.revision();
        if let (Some((lo, hi)), Some(reported)) = (window, reported) {
            if current < lo || current > hi {
                return Verdict::Rejected(Rejection::RevisionWindow { reported, current });
            }
        }
        let mut undo = self.spare.pop().unwrap_or_default();
        let out = self.model.apply(input, &mut undo);
        let rejection = match output {
            Some(expected) if out != *expected => Some(Rejection::OutputMismatch { model: out }),
            None if undo.is_empty() => Some(Rejection::NoEffect),
            _ => None,
        };
        let rejection = rejection.or_else(|| {
            let revision = self.model.revision();
            if revision == current {
                return None;
            }
            if let Some(&by) = self.claimed.get(&revision) {
                if by != op {
                    return Some(Rejection::RevisionClaimed {
                        revision,
                        by_op: self.ops.get(by).map_or(usize::MAX, |b| b.orig),
                    });
                }
            }
            if let Some(seen) = self.observed.get(&revision) {
                if !self.matches_observed(&undo, seen) {
                    return Some(Rejection::WatchMismatch { revision });
                }
            }
            let first_other = self.pending.iter().find(|&&(_, p)| p != op).copied();
            match first_other {
                Some((pending_revision, p)) if pending_revision < revision => {
                    Some(Rejection::SkipsRevision {
                        revision,
                        pending_op: self.ops.get(p).map_or(usize::MAX, |q| q.orig),
                        pending_revision,
                    })
                }
                _ => None,
            }
        });
        let rejection = match rejection {
            None => self
                .commutes_with_unknown_top(op, &mut undo)
                .map(|unknown_op| Rejection::CommutesWithUnknown { unknown_op }),
            r => r,
        };
        let rejection = rejection.or_else(|| {
            // The future from here depends on the set, the state and, if this operation's
            // outcome is unknown, on the rule that what follows it must not commute with
            // it; so that operation is part of the key.
            let constraint = if output.is_none() { op } else { usize::MAX };
            let key = (self.set_tag ^ tag, self.model.fingerprint(), constraint);
            let fresh = if record {
                self.seen.insert(key)
            } else {
                !self.seen.contains(&key)
            };
            (!fresh).then_some(Rejection::DeadEnd)
        });
        match rejection {
            Some(r) => {
                self.model.revert(&mut undo);
                self.spare.push(undo);
                Verdict::Rejected(r)
            }
            None => Verdict::Placed(undo),
        }
    }

    /// If the last linearized operation has an unknown outcome and `op`, just applied with
    /// `undo`, commutes with it (the same output and the same final state in either
    /// order), returns the unknown operation's history index; the model is left as it was.
    ///
    /// Such a placement is redundant: an operation with unknown outcome can always be
    /// moved later past an operation it commutes with (it has no return to respect), so
    /// every linearization has a twin in which each unknown operation is directly followed
    /// by one it does not commute with, or is left out at the end. Searching only those
    /// twins stops the search from trying a lost grant, revoke or compaction, which
    /// take no revision and so fit anywhere, at every position of the history.
    fn commutes_with_unknown_top(&mut self, op: usize, undo: &mut Undo) -> Option<usize> {
        let top = self.stack.last_mut()?;
        let unknown = self.ops.get(top.op)?;
        if unknown.output.is_some() {
            return None;
        }
        let y = self.ops.get(op)?.input;
        let u = unknown.input;
        let after_uy = self.model.fingerprint();
        self.model.revert(undo);
        let out_uy = self.model.apply(y, undo);
        self.model.revert(undo);
        self.model.revert(&mut top.undo);
        let mut y_first = Undo::new();
        let out_yu = self.model.apply(y, &mut y_first);
        let mut u_second = Undo::new();
        let _ = self.model.apply(u, &mut u_second);
        let after_yu = self.model.fingerprint();
        self.model.revert(&mut u_second);
        self.model.revert(&mut y_first);
        let _ = self.model.apply(u, &mut top.undo);
        let _ = self.model.apply(y, undo);
        (after_uy == after_yu && out_uy == out_yu).then_some(unknown.orig)
    }

    /// Pushes `op`, whose placement `try_place` has applied to the model.
    fn push(&mut self, op: usize, undo: Undo) {
        let Some(o) = self.ops.get(op) else {
            return;
        };
        let (call, ret, tag, reported) = (o.call_node, o.return_node, o.tag, o.reported);
        self.set_tag ^= tag;
        if let Some(r) = reported {
            self.pending.remove(&(r, op));
        }
        self.unlink(call);
        if let Some(ret) = ret {
            self.unlink(ret);
            self.returns_left -= 1;
        }
        if let Some(l) = self.linearized.get_mut(op) {
            *l = true;
        }
        let forced = self.ops.get(op).is_some_and(|o| o.output.is_some()) && undo.is_empty();
        self.stack.push(Frame { op, undo, forced });
    }

    /// Pops the last linearized operation, reverting the model; returns it and whether
    /// its placement was forced.
    fn pop(&mut self) -> Option<(usize, bool)> {
        let mut frame = self.stack.pop()?;
        let forced = frame.forced;
        self.model.revert(&mut frame.undo);
        self.spare.push(frame.undo);
        let op = frame.op;
        let o = self.ops.get(op)?;
        let (call, ret, tag, reported) = (o.call_node, o.return_node, o.tag, o.reported);
        self.set_tag ^= tag;
        if let Some(r) = reported {
            self.pending.insert((r, op));
        }
        if let Some(ret) = ret {
            self.relink(ret);
            self.returns_left += 1;
        }
        self.relink(call);
        if let Some(l) = self.linearized.get_mut(op) {
            *l = false;
        }
        Some((op, forced))
    }

    /// Runs the search.
    fn run(mut self) -> CheckResult {
        // A known operation that answers as observed and changes nothing (a read, a
        // failed compare, an error) is placed for good as soon as it can be: any
        // linearization from here that places it later can place it now instead, since
        // every operation still unplaced returned after it was called (else the walk
        // would not have reached it), and it changes no state the others see. Without
        // this, concurrent reads at one revision would be tried in every subset, and a
        // history that is not linearizable would take exponential time to refute.
        //
        // Operations with unknown outcome are tried only after every known candidate at
        // the same point has failed (the *lazy* pass), so they are placed as late as
        // possible: just where something observed needs their effect. Trying them eagerly
        // would place a lost request (or a grant or compaction, which take no revision)
        // early and only find out thousands of steps later, then retry it at every
        // position in between. The lazy pass walks backwards from the blocking return
        // event, so the most recently called unknown operations are tried first: a request
        // usually takes effect soon after its call, while requests that were lost for good
        // pile up at the start of the list.
        let mut node = self.next[HEAD];
        // `Some(blocker)` during the lazy pass, with the return event that ended the
        // known pass.
        let mut lazy: Option<usize> = None;
        loop {
            if self.returns_left == 0 {
                return self.success();
            }
            let event = if node == NIL || node == HEAD {
                None
            } else {
                self.nodes.get(node).copied()
            };
            let candidate = match (lazy, event) {
                (None, Some(e)) if !e.is_call => {
                    // The known pass reached a return event: on to the lazy pass.
                    lazy = Some(node);
                    node = self.prev[node];
                    continue;
                }
                (None, None) => {
                    // The end of the list, which only a list without return events
                    // reaches; handled as a dead end for safety.
                    lazy = Some(NIL);
                    node = HEAD;
                    continue;
                }
                (None, Some(e)) => {
                    if self.ops.get(e.op).is_some_and(|o| o.output.is_some()) {
                        Some(e.op)
                    } else {
                        node = self.next[node];
                        continue;
                    }
                }
                (Some(_), Some(e)) => {
                    if e.is_call && self.ops.get(e.op).is_some_and(|o| o.output.is_none()) {
                        Some(e.op)
                    } else {
                        node = self.prev[node];
                        continue;
                    }
                }
                (Some(_), None) => None,
            };
            let Some(op) = candidate else {
                // Both passes failed: the operation of the blocking return event had to
                // be placed by now, so the last placement was wrong.
                self.note_dead_end(lazy.unwrap_or(NIL));
                // Forced placements have no alternatives: a dead end after one is a dead
                // end before it, so those are popped without trying anything else.
                let popped = loop {
                    match self.pop() {
                        None => return self.violation(),
                        Some((_, true)) => continue,
                        Some((op, false)) => break op,
                    }
                };
                let Some(o) = self.ops.get(popped) else {
                    return self.violation();
                };
                if o.output.is_some() {
                    lazy = None;
                    node = self.next[o.call_node];
                } else {
                    lazy = Some(self.first_return());
                    node = self.prev[o.call_node];
                }
                continue;
            };
            if self.steps >= self.max_steps {
                return CheckResult::Unknown(Exhausted {
                    steps: self.steps,
                    longest_prefix: self
                        .deepest
                        .as_ref()
                        .map_or(self.stack.len(), |d| d.prefix.len().max(self.stack.len())),
                });
            }
            self.steps += 1;
            match self.try_place(op, true) {
                Verdict::Placed(undo) => {
                    self.push(op, undo);
                    node = self.next[HEAD];
                    lazy = None;
                }
                Verdict::Rejected(_) if lazy.is_some() => node = self.prev[node],
                Verdict::Rejected(_) => node = self.next[node],
            }
        }
    }

    /// Finds, without searching, the two kinds of violation that revisions and real
    /// time show directly: two writes reporting the same revision, and an operation
    /// called after another returned that reports an older revision than the other left
    /// the store at (a stale read, or a revision going back). The search would find these
    /// too, but only after backtracking through the whole history to prove that nothing
    /// else works, which takes time proportional to the history times its concurrency;
    /// and a pair of operations is the clearest report there is.
    fn precheck(&self) -> Option<Violation> {
        let orig = |op: usize| self.ops.get(op).map_or(usize::MAX, |o| o.orig);
        if let Some((a, b, revision)) = self.duplicate_claim {
            let (first, second) = (orig(a), orig(b));
            let explanation = format!(
                "not linearizable: two writes report writing revision {revision}, but every \
                 revision is written by one request.\n  - {}\n  - {}\n",
                describe(self.history, first),
                describe(self.history, second)
            );
            return Some(self.pair_violation(
                Cause::SameRevision {
                    first,
                    second,
                    revision,
                },
                second,
                vec![first, second],
                explanation,
            ));
        }
        // Sweeps the known operations in call order, keeping the highest revision
        // reported by those that returned before the current call.
        let mut by_return: Vec<(u64, i64, usize)> = Vec::new();
        let mut by_call: Vec<(u64, usize)> = Vec::new();
        for (i, o) in self.ops.iter().enumerate() {
            let Some(h) = self.history.get(o.orig) else {
                continue;
            };
            if let (Some(r), Some(ret)) = (o.reported, h.return_ns) {
                by_return.push((ret, r, i));
                by_call.push((h.call_ns, i));
            }
        }
        by_return.sort_unstable();
        by_call.sort_unstable();
        let mut returned = by_return.iter().peekable();
        let mut highest: Option<(i64, usize)> = None;
        for &(call_ns, later) in &by_call {
            while let Some(&&(ret, r, i)) = returned.peek() {
                if ret >= call_ns {
                    break;
                }
                if highest.is_none_or(|(h, _)| r > h) {
                    highest = Some((r, i));
                }
                returned.next();
            }
            let (Some((r, earlier)), Some(o)) = (highest, self.ops.get(later)) else {
                continue;
            };
            let Some((_, hi)) = o.window else {
                continue;
            };
            if r > hi {
                let (earlier, later) = (orig(earlier), orig(later));
                let explanation = format!(
                    "not linearizable: {} returned with the store at revision {r}, but {}, \
                     called after that, reports revision {}, so it must have taken effect \
                     while the store was at revision {hi} or earlier. Revisions never go \
                     back, so this is a stale answer.\n",
                    describe(self.history, earlier),
                    describe(self.history, later),
                    o.reported.unwrap_or(hi),
                );
                return Some(self.pair_violation(
                    Cause::RevisionOrder { earlier, later },
                    later,
                    vec![earlier, later],
                    explanation,
                ));
            }
        }
        None
    }

    /// A violation that two operations show on their own.
    fn pair_violation(
        &self,
        cause: Cause,
        blocking: usize,
        mut ops: Vec<usize>,
        explanation: String,
    ) -> Violation {
        ops.sort_unstable();
        ops.dedup();
        Violation {
            cause,
            prefix: Vec::new(),
            revision: self.model.revision(),
            blocking_op: Some(blocking),
            attempts: Vec::new(),
            last_writers: Vec::new(),
            ops,
            explanation,
            steps: 0,
        }
    }

    /// The first return event in the list ([`NIL`] if none).
    fn first_return(&self) -> usize {
        let mut n = self.next[HEAD];
        while n != NIL && self.nodes.get(n).is_some_and(|e| e.is_call) {
            n = self.next[n];
        }
        n
    }

    /// Remembers the situation at a dead end if it is the deepest so far.
    fn note_dead_end(&mut self, node: usize) {
        if self
            .deepest
            .as_ref()
            .is_some_and(|d| d.prefix.len() >= self.stack.len())
        {
            return;
        }
        let mut candidates = Vec::new();
        let mut n = self.next[HEAD];
        while n != NIL && n != node {
            if let Some(e) = self.nodes.get(n) {
                if e.is_call {
                    candidates.push(e.op);
                }
            }
            n = self.next[n];
        }
        let mut attempts = Vec::with_capacity(candidates.len());
        for op in candidates {
            let rejection = match self.try_place(op, false) {
                Verdict::Placed(mut undo) => {
                    // Not reached in practice: every candidate was tried before the walk got
                    // here. Reported as a dead end all the same.
                    self.model.revert(&mut undo);
                    self.spare.push(undo);
                    Rejection::DeadEnd
                }
                Verdict::Rejected(r) => r,
            };
            attempts.push((op, rejection));
        }
        let blocking = self
            .nodes
            .get(node)
            .filter(|n| node != NIL && !n.is_call)
            .map(|n| n.op);
        self.deepest = Some(DeadEndSnapshot {
            prefix: self.stack.iter().map(|f| f.op).collect(),
            revision: self.model.revision(),
            blocking,
            attempts,
        });
    }

    /// The result for a history found linearizable.
    fn success(self) -> CheckResult {
        let order = self
            .stack
            .iter()
            .filter_map(|f| self.ops.get(f.op).map(|o| o.orig))
            .collect();
        let mut placed = vec![false; self.history.len()];
        for f in &self.stack {
            if let Some(p) = self.ops.get(f.op).and_then(|o| placed.get_mut(o.orig)) {
                *p = true;
            }
        }
        let left_out = self
            .history
            .iter()
            .enumerate()
            .filter(|(i, o)| o.output.is_none() && !placed.get(*i).copied().unwrap_or(true))
            .map(|(i, _)| i)
            .collect();
        CheckResult::Linearizable(Linearization {
            order,
            left_out,
            steps: self.steps,
        })
    }

    /// The result for a history found not linearizable, built from the deepest dead end.
    fn violation(self) -> CheckResult {
        let snapshot = self.deepest.unwrap_or(DeadEndSnapshot {
            prefix: Vec::new(),
            revision: self.model.revision(),
            blocking: None,
            attempts: Vec::new(),
        });
        let orig = |op: usize| self.ops.get(op).map_or(usize::MAX, |o| o.orig);
        let prefix: Vec<usize> = snapshot.prefix.iter().map(|&op| orig(op)).collect();
        let blocking_op = snapshot.blocking.map(orig);
        let attempts: Vec<Attempt> = snapshot
            .attempts
            .iter()
            .map(|(op, r)| Attempt {
                op: orig(*op),
                rejection: r.clone(),
            })
            .collect();

        // Which keys matter: those the blocking operation names or reads, and those of the
        // candidates the model disagreed with.
        let mut keys: BTreeSet<Vec<u8>> = BTreeSet::new();
        let mut note_keys = |op: usize, model: Option<&Output>| {
            if let Some(o) = self.history.get(op) {
                keys.extend(o.input.keys().into_iter().map(|k| k.to_vec()));
                if let Some(out) = &o.output {
                    keys.extend(output_keys(out));
                }
                if let Some(out) = model {
                    keys.extend(output_keys(out));
                }
            }
        };
        // The operations that the candidates' rejections name belong to the conflict.
        let mut related = Vec::new();
        if let Some(b) = blocking_op {
            let mut model = None;
            for a in &attempts {
                match &a.rejection {
                    Rejection::OutputMismatch { model: m } if a.op == b => model = Some(m),
                    Rejection::SkipsRevision { pending_op, .. } => related.push(*pending_op),
                    Rejection::RevisionClaimed { by_op, .. } => related.push(*by_op),
                    Rejection::CommutesWithUnknown { unknown_op } => related.push(*unknown_op),
                    _ => {}
                }
            }
            note_keys(b, model);
            for &r in &related {
                note_keys(r, None);
            }
        }
        for a in &attempts {
            if let Rejection::OutputMismatch { model } = &a.rejection {
                note_keys(a.op, Some(model));
            }
        }
        // Replays the prefix to find who changed each of those keys last.
        let mut replay = self.initial.clone();
        let mut writer: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
        for &op in &prefix {
            if let Some(o) = self.history.get(op) {
                let mut u = Undo::new();
                let _ = replay.apply(&o.input, &mut u);
                for k in u.changed_keys() {
                    writer.insert(k.to_vec(), op);
                }
            }
        }
        let last_writers: Vec<LastWriter> = keys
            .iter()
            .filter_map(|k| writer.get(k).map(|&op| LastWriter { key: k.clone(), op }))
            .collect();
        let mut ops: Vec<usize> = blocking_op.into_iter().collect();
        ops.extend(related);
        ops.extend(last_writers.iter().map(|w| w.op));
        ops.sort_unstable();
        ops.dedup();
        let explanation = explain(
            self.history,
            &prefix,
            snapshot.revision,
            blocking_op,
            &attempts,
            &last_writers,
        );
        CheckResult::Violation(Box::new(Violation {
            cause: Cause::Search,
            prefix,
            revision: snapshot.revision,
            blocking_op,
            attempts,
            last_writers,
            ops,
            explanation,
            steps: self.steps,
        }))
    }
}

/// The keys a response shows (read or deleted key-values).
fn output_keys(output: &Output) -> Vec<Vec<u8>> {
    let Ok(reply) = output else {
        return Vec::new();
    };
    let mut keys = Vec::new();
    let mut add = |r: &TxnOpResult| match r {
        TxnOpResult::Get(g) => keys.extend(g.kvs.iter().map(|kv| kv.key.clone())),
        TxnOpResult::Delete(d) => keys.extend(d.prev_kvs.iter().map(|kv| kv.key.clone())),
        TxnOpResult::Put(p) => keys.extend(p.prev_kv.iter().map(|kv| kv.key.clone())),
    };
    match &reply.response {
        Response::Get(g) => add(&TxnOpResult::Get(g.clone())),
        Response::Delete(d) => add(&TxnOpResult::Delete(d.clone())),
        Response::Put(p) => add(&TxnOpResult::Put(p.clone())),
        Response::Txn(t) => t.responses.iter().for_each(&mut add),
        Response::LeaseGrant
        | Response::LeaseRevoke
        | Response::Compact
        | Response::LeaseKeepAlive => {}
    }
    keys
}

/// Writes one history operation as `#index client c [call..return ns] request -> output`.
fn describe(history: &[Operation], op: usize) -> String {
    match history.get(op) {
        Some(o) => format!("#{op} {o}"),
        None => format!("#{op}"),
    }
}

/// Explains a violation in words.
fn explain(
    history: &[Operation],
    prefix: &[usize],
    revision: i64,
    blocking_op: Option<usize>,
    attempts: &[Attempt],
    last_writers: &[LastWriter],
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "not linearizable: no order of the operations agrees with both real time and etcd's \
         semantics."
    );
    let _ = writeln!(
        s,
        "The longest linearizable prefix found has {} operation(s) and leaves the store at \
         revision {revision}.",
        prefix.len()
    );
    if let Some(&last) = prefix.last() {
        let _ = writeln!(s, "Its last operation is {}.", describe(history, last));
    }
    match blocking_op {
        Some(b) => {
            let _ = writeln!(
                s,
                "{} returned, so it must take effect before every operation called after \
                 its return; but none of the {} operation(s) that may come next can:",
                describe(history, b),
                attempts.len()
            );
        }
        None => {
            let _ = writeln!(s, "No operation can come next:");
        }
    }
    for a in attempts {
        let why = match &a.rejection {
            Rejection::RevisionWindow { reported, current } => format!(
                "it reported revision {reported}, which the store cannot reach by this \
                 operation from revision {current}"
            ),
            Rejection::OutputMismatch { model } => {
                format!("etcd would answer {} here", ShowOutput(model))
            }
            Rejection::RevisionClaimed { revision, by_op } => format!(
                "it would write revision {revision}, which {} reported writing",
                describe(history, *by_op)
            ),
            Rejection::SkipsRevision {
                revision,
                pending_op,
                pending_revision,
            } => format!(
                "it would move the store to revision {revision}, past revision \
                 {pending_revision} that {} still has to see",
                describe(history, *pending_op)
            ),
            Rejection::NoEffect => {
                "its outcome is unknown and it would change nothing here".to_string()
            }
            Rejection::CommutesWithUnknown { unknown_op } => format!(
                "it commutes with {}, which has an unknown outcome and is placed just \
                 before it; the order with that one later is searched instead",
                describe(history, *unknown_op)
            ),
            Rejection::DeadEnd => "placing it here leads to a dead end further on".to_string(),
            Rejection::WatchMismatch { revision } => {
                format!("it would write revision {revision}, where watchers saw other changes")
            }
        };
        let _ = writeln!(s, "  - {}: {why}.", describe(history, a.op));
    }
    if !last_writers.is_empty() {
        let _ = writeln!(s, "The keys involved were last changed in the prefix by:");
        for w in last_writers {
            let _ = writeln!(
                s,
                "  - {:?}: {}",
                String::from_utf8_lossy(&w.key),
                describe(history, w.op)
            );
        }
    }
    s
}

/// Checks whether `history` is linearizable with respect to etcd's key-value semantics,
/// starting from `config.initial`. Operations are referred to by their index in `history`.
/// Fails only if the history itself is malformed.
pub fn check(history: &[Operation], config: &CheckConfig) -> Result<CheckResult, HistoryError> {
    let search = Search::new(history, config)?;
    if let Some(v) = search.precheck() {
        return Ok(CheckResult::Violation(Box::new(v)));
    }
    Ok(search.run())
}
