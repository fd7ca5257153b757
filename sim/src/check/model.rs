//! A sequential model of etcd 3.4's key-value semantics, as far as they matter for
//! checking linearizability: the key-value map with each key's create and mod revision,
//! version and lease, the store revision, the compact revision and the granted leases.
//!
//! The rules follow etcd 3.4 (and detcd's `src/core/mvcc.rs`, which was verified against
//! it):
//! - an empty store is at revision 1, so the first write gets revision 2;
//! - a put always bumps the revision, even when it stores the same value again;
//! - a delete bumps it iff it deletes at least one key, and all its deletions share one
//!   revision;
//! - a txn bumps it by exactly one iff its chosen branch writes (a put, or a delete that
//!   deletes something); reads inside the txn see the txn's earlier writes;
//! - a lease revoke deletes every attached key in one revision (no bump if it has none);
//! - lease grants and compactions never bump it;
//! - every successful response's header carries the store revision *after* the request.
//!
//! Reads at a past revision (`RangeRequest.revision`) are not modelled: the model keeps
//! only the current state, so that states stay small enough to hash and compare quickly.
//!
//! Every change to the state can be recorded in an [`Undo`] log and reverted, and the
//! state keeps an incrementally maintained [`Model::fingerprint`], so that the
//! linearizability search can step forward and back without cloning the map.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::fmt;
use std::hash::{Hash, Hasher};

/// etcd's revision of an empty store: the first write gets revision 2.
pub const INITIAL_REVISION: i64 = 1;

/// etcd's compact revision of a store that was never compacted.
pub const NEVER_COMPACTED: i64 = -1;

/// One key as a read returns it (etcd's `mvccpb.KeyValue`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct KeyValue {
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// The revision of the put that created the key (in its current generation).
    pub create_revision: i64,
    /// The revision of the last put to the key.
    pub mod_revision: i64,
    /// How many puts the key had since it was created (1 after the first).
    pub version: i64,
    /// The lease the key is attached to; 0 for none.
    pub lease: i64,
}

/// A range read (etcd's `RangeRequest` at the current revision).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct RangeRequest {
    /// The first key.
    pub key: Vec<u8>,
    /// As etcd: empty for the single key `key`, `[0]` for every key from `key` on,
    /// otherwise the end (exclusive) of the range.
    pub range_end: Vec<u8>,
    /// The most keys to return; 0 (or negative) for no limit.
    pub limit: i64,
}

/// The body of a range response.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct RangeResult {
    /// The keys found (at most `limit`), in key order.
    pub kvs: Vec<KeyValue>,
    /// How many keys the range holds, regardless of the limit.
    pub count: i64,
    /// Whether the limit left keys out.
    pub more: bool,
}

/// A put (etcd's `PutRequest`; `ignore_value` and `ignore_lease` are not modelled).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct PutRequest {
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// The lease to attach the key to; 0 for none (which detaches it).
    pub lease: i64,
    /// Whether the response carries the previous key-value.
    pub prev_kv: bool,
}

/// The body of a put response.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct PutResult {
    /// The key-value before the put, if asked for and if the key existed.
    pub prev_kv: Option<KeyValue>,
}

/// A delete (etcd's `DeleteRangeRequest`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct DeleteRequest {
    /// The first key.
    pub key: Vec<u8>,
    /// As in [`RangeRequest::range_end`].
    pub range_end: Vec<u8>,
    /// Whether the response carries the deleted key-values.
    pub prev_kv: bool,
}

/// The body of a delete response.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct DeleteResult {
    /// How many keys were deleted.
    pub deleted: i64,
    /// The deleted key-values, in key order, if asked for.
    pub prev_kvs: Vec<KeyValue>,
}

/// What a txn compare looks at, with the value it compares against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CompareTarget {
    /// The value (a missing key fails every value compare, as in etcd).
    Value(Vec<u8>),
    /// The version (0 for a missing key).
    Version(i64),
    /// The create revision (0 for a missing key).
    CreateRevision(i64),
    /// The mod revision (0 for a missing key).
    ModRevision(i64),
    /// The lease (0 for a missing key or a key without lease).
    Lease(i64),
}

/// How a txn compare relates the key's field to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CompareOp {
    /// `field == target`.
    Equal,
    /// `field != target`.
    NotEqual,
    /// `field < target`.
    Less,
    /// `field > target`.
    Greater,
}

/// One txn compare (etcd's `Compare`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Compare {
    /// The key.
    pub key: Vec<u8>,
    /// As in [`RangeRequest::range_end`]; every key of a range must satisfy the compare.
    pub range_end: Vec<u8>,
    /// The field and the value to compare it with.
    pub target: CompareTarget,
    /// The relation.
    pub op: CompareOp,
}

/// One operation of a txn branch (nested txns are not modelled).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TxnOp {
    /// A range read; it sees the txn's earlier writes.
    Get(RangeRequest),
    /// A put.
    Put(PutRequest),
    /// A delete.
    Delete(DeleteRequest),
}

/// The result of one txn operation (nested headers are not compared).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TxnOpResult {
    /// The result of a [`TxnOp::Get`].
    Get(RangeResult),
    /// The result of a [`TxnOp::Put`].
    Put(PutResult),
    /// The result of a [`TxnOp::Delete`].
    Delete(DeleteResult),
}

/// A txn (etcd's `TxnRequest`): if every compare holds, `success` runs, else `failure`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct TxnRequest {
    /// The compares, all of which must hold.
    pub compares: Vec<Compare>,
    /// The operations run when the compares hold.
    pub success: Vec<TxnOp>,
    /// The operations run otherwise.
    pub failure: Vec<TxnOp>,
}

/// The body of a txn response.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct TxnResult {
    /// Whether the compares held (so `success` ran).
    pub succeeded: bool,
    /// One result per operation of the branch that ran, in order.
    pub responses: Vec<TxnOpResult>,
}

/// A request to the key-value store.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Input {
    /// A range read at the current revision.
    Get(RangeRequest),
    /// A put.
    Put(PutRequest),
    /// A delete of a key or a range.
    Delete(DeleteRequest),
    /// A txn.
    Txn(TxnRequest),
    /// Grants a lease with a client-chosen, non-zero id. The granted TTL is not checked,
    /// since the server may raise it to its minimum.
    LeaseGrant {
        /// The lease id.
        id: i64,
        /// The requested time to live, in seconds.
        ttl_s: i64,
    },
    /// Revokes a lease, deleting its keys in one revision. A lease expiring is the same
    /// state change, so a history records a possible expiry as a revoke whose outcome is
    /// unknown.
    LeaseRevoke {
        /// The lease id.
        id: i64,
    },
    /// Compacts the store at a revision.
    Compact {
        /// The revision to compact at.
        revision: i64,
    },
    /// Renews a lease once (one request and one answer on a keep-alive stream). It
    /// succeeds only while the lease exists; its header revision is not checked, since
    /// the leader answers keep-alives without going through raft.
    LeaseKeepAlive {
        /// The lease id.
        id: i64,
    },
}

/// The body of a successful response; which variant goes with which [`Input`] variant is
/// fixed (see [`Input::accepts`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Response {
    /// Answers [`Input::Get`].
    Get(RangeResult),
    /// Answers [`Input::Put`].
    Put(PutResult),
    /// Answers [`Input::Delete`].
    Delete(DeleteResult),
    /// Answers [`Input::Txn`].
    Txn(TxnResult),
    /// Answers [`Input::LeaseGrant`].
    LeaseGrant,
    /// Answers [`Input::LeaseRevoke`].
    LeaseRevoke,
    /// Answers [`Input::Compact`].
    Compact,
    /// Answers [`Input::LeaseKeepAlive`].
    LeaseKeepAlive,
}

/// A successful response: the header revision and the body.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reply {
    /// The header revision: the store revision after the request.
    pub revision: i64,
    /// The body.
    pub response: Response,
}

/// The errors whose meaning is certain: the request failed and changed nothing. Other
/// errors (timeouts, leader loss, ...) leave the outcome unknown and are recorded as
/// such, not as an output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KvError {
    /// The request has an empty key.
    EmptyKey,
    /// A txn branch writes a key twice, or puts a key that it also deletes.
    DuplicateKey,
    /// The lease does not exist (put or txn put with an unknown lease, revoke of an
    /// unknown lease, grant with id 0).
    LeaseNotFound,
    /// A grant names a lease that already exists.
    LeaseExist,
    /// A compaction at or below the compact revision.
    Compacted,
    /// A compaction above the current revision.
    FutureRevision,
}

/// What a request returned: a reply, or an error that certainly changed nothing.
pub type Output = Result<Reply, KvError>;

impl Input {
    /// Whether `response` is the kind of body that answers this input.
    pub fn accepts(&self, response: &Response) -> bool {
        matches!(
            (self, response),
            (Input::Get(_), Response::Get(_))
                | (Input::Put(_), Response::Put(_))
                | (Input::Delete(_), Response::Delete(_))
                | (Input::Txn(_), Response::Txn(_))
                | (Input::LeaseGrant { .. }, Response::LeaseGrant)
                | (Input::LeaseRevoke { .. }, Response::LeaseRevoke)
                | (Input::Compact { .. }, Response::Compact)
                | (Input::LeaseKeepAlive { .. }, Response::LeaseKeepAlive)
        )
    }

    /// Whether the request can never change the state, whatever the state is. Such a
    /// request with an unknown outcome constrains nothing and can be dropped.
    pub fn is_read_only(&self) -> bool {
        match self {
            Input::Get(_) | Input::LeaseKeepAlive { .. } => true,
            Input::Txn(t) => t
                .success
                .iter()
                .chain(&t.failure)
                .all(|op| matches!(op, TxnOp::Get(_))),
            _ => false,
        }
    }

    /// The keys (or range starts) the request names, for reports.
    pub fn keys(&self) -> Vec<&[u8]> {
        match self {
            Input::Get(r) => vec![&r.key],
            Input::Put(p) => vec![&p.key],
            Input::Delete(d) => vec![&d.key],
            Input::Txn(t) => {
                let mut keys: Vec<&[u8]> = t.compares.iter().map(|c| &c.key[..]).collect();
                for op in t.success.iter().chain(&t.failure) {
                    keys.push(match op {
                        TxnOp::Get(r) => &r.key,
                        TxnOp::Put(p) => &p.key,
                        TxnOp::Delete(d) => &d.key,
                    });
                }
                keys.sort();
                keys.dedup();
                keys
            }
            Input::LeaseGrant { .. }
            | Input::LeaseRevoke { .. }
            | Input::Compact { .. }
            | Input::LeaseKeepAlive { .. } => Vec::new(),
        }
    }
}

/// The previous values of what a step changed, newest last, to revert it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Undo {
    /// The changes, in the order they were made.
    entries: Vec<UndoEntry>,
}

/// One reverted change.
#[derive(Debug, Clone, PartialEq, Eq)]
enum UndoEntry {
    /// A key's previous key-value (`None`: it did not exist).
    Kv(Vec<u8>, Option<KeyValue>),
    /// A lease's previous TTL (`None`: it did not exist).
    Lease(i64, Option<i64>),
    /// The previous store revision.
    Revision(i64),
    /// The previous compact revision.
    CompactRevision(i64),
}

impl Undo {
    /// An empty log.
    pub fn new() -> Self {
        Undo::default()
    }

    /// Whether the logged step changed nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Forgets every entry, keeping the allocation.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// The keys the logged step changed (put, created or deleted), in change order.
    pub fn changed_keys(&self) -> impl Iterator<Item = &[u8]> {
        self.entries.iter().filter_map(|e| match e {
            UndoEntry::Kv(k, _) => Some(&k[..]),
            _ => None,
        })
    }
}

/// The model's state: what a linearizable etcd would hold after some sequence of requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    /// The live keys.
    kvs: BTreeMap<Vec<u8>, KeyValue>,
    /// The granted leases and their requested TTLs in seconds.
    leases: BTreeMap<i64, i64>,
    /// The store revision.
    revision: i64,
    /// The compact revision ([`NEVER_COMPACTED`] if none).
    compact_revision: i64,
    /// The XOR of [`entry_hash`] over every key-value, kept up to date on each change.
    kvs_hash: u64,
    /// The XOR of [`entry_hash`] over every lease.
    leases_hash: u64,
}

impl Default for Model {
    fn default() -> Self {
        Model::new()
    }
}

/// A 64-bit hash of one map entry. Entries are combined with XOR, which does not depend
/// on order, so the state's hash can be updated per change instead of recomputed.
fn entry_hash<T: Hash>(tag: u8, entry: &T) -> u64 {
    // DefaultHasher::new() uses fixed keys, so fingerprints are the same in every run.
    let mut h = DefaultHasher::new();
    tag.hash(&mut h);
    entry.hash(&mut h);
    h.finish()
}

/// The half-open key interval of an etcd `key`/`range_end` pair; `None` as the end means
/// unbounded. A single key is `[key, key + "\0")`.
fn interval(key: &[u8], range_end: &[u8]) -> (Vec<u8>, Option<Vec<u8>>) {
    match range_end {
        [] => {
            let mut end = key.to_vec();
            end.push(0);
            (key.to_vec(), Some(end))
        }
        [0] => (key.to_vec(), None),
        end => (key.to_vec(), Some(end.to_vec())),
    }
}

/// Whether two intervals overlap.
fn overlaps(a: &(Vec<u8>, Option<Vec<u8>>), b: &(Vec<u8>, Option<Vec<u8>>)) -> bool {
    let a_before_b_ends = b.1.as_ref().is_none_or(|end| a.0 < *end);
    let b_before_a_ends = a.1.as_ref().is_none_or(|end| b.0 < *end);
    a_before_b_ends && b_before_a_ends
}

/// Whether `field` relates to `target` as `op` says.
fn compare_ord(ordering: std::cmp::Ordering, op: CompareOp) -> bool {
    match op {
        CompareOp::Equal => ordering.is_eq(),
        CompareOp::NotEqual => ordering.is_ne(),
        CompareOp::Less => ordering.is_lt(),
        CompareOp::Greater => ordering.is_gt(),
    }
}

/// etcd's `compareKV` on one key-value.
fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    let ordering = match &c.target {
        CompareTarget::Value(v) => kv.value.as_slice().cmp(v.as_slice()),
        CompareTarget::Version(v) => kv.version.cmp(v),
        CompareTarget::CreateRevision(r) => kv.create_revision.cmp(r),
        CompareTarget::ModRevision(r) => kv.mod_revision.cmp(r),
        CompareTarget::Lease(l) => kv.lease.cmp(l),
    };
    compare_ord(ordering, c.op)
}

impl Model {
    /// An empty store, as a fresh etcd: revision 1, never compacted, no leases.
    pub fn new() -> Self {
        Model {
            kvs: BTreeMap::new(),
            leases: BTreeMap::new(),
            revision: INITIAL_REVISION,
            compact_revision: NEVER_COMPACTED,
            kvs_hash: 0,
            leases_hash: 0,
        }
    }

    /// A store holding `kvs` at `revision` with `leases` (id and TTL in seconds) granted,
    /// for histories that start on a store that is not empty. Later duplicates of a key
    /// or lease replace earlier ones.
    pub fn with_state(
        revision: i64,
        kvs: impl IntoIterator<Item = KeyValue>,
        leases: impl IntoIterator<Item = (i64, i64)>,
    ) -> Self {
        let mut m = Model::new();
        m.revision = revision;
        let mut scratch = Undo::new();
        for kv in kvs {
            m.set_kv(kv.key.clone(), Some(kv), &mut scratch);
        }
        for (id, ttl_s) in leases {
            m.set_lease(id, Some(ttl_s), &mut scratch);
        }
        m
    }

    /// The store revision.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// The compact revision ([`NEVER_COMPACTED`] if none).
    pub fn compact_revision(&self) -> i64 {
        self.compact_revision
    }

    /// The live key-value of `key`, if any.
    pub fn get(&self, key: &[u8]) -> Option<&KeyValue> {
        self.kvs.get(key)
    }

    /// Whether lease `id` is granted.
    pub fn has_lease(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    /// The ids of the granted leases, in order.
    pub fn lease_ids(&self) -> impl Iterator<Item = i64> + '_ {
        self.leases.keys().copied()
    }

    /// A 64-bit fingerprint of the whole state: equal states have equal fingerprints, and
    /// different states collide with probability about 2^-64. Costs O(1).
    pub fn fingerprint(&self) -> u64 {
        entry_hash(
            3,
            &(
                self.kvs_hash,
                self.leases_hash,
                self.revision,
                self.compact_revision,
            ),
        )
    }

    /// Applies `input` and returns what etcd would answer, without keeping an undo log.
    pub fn step(&mut self, input: &Input) -> Output {
        let mut undo = Undo::new();
        self.apply(input, &mut undo)
    }

    /// Applies `input`, appends to `undo` what it takes to revert it, and returns what
    /// etcd would answer. On an error the state is unchanged and nothing is logged.
    pub fn apply(&mut self, input: &Input, undo: &mut Undo) -> Output {
        match input {
            Input::Get(r) => Ok(Reply {
                revision: self.revision,
                response: Response::Get(self.range(r)),
            }),
            Input::Put(p) => {
                check_key(&p.key)?;
                if p.lease != 0 && !self.leases.contains_key(&p.lease) {
                    return Err(KvError::LeaseNotFound);
                }
                let rev = self.revision.saturating_add(1);
                let result = self.put(p, rev, undo);
                self.set_revision(rev, undo);
                Ok(Reply {
                    revision: rev,
                    response: Response::Put(result),
                })
            }
            Input::Delete(d) => {
                check_key(&d.key)?;
                let result = self.delete(d, undo);
                if result.deleted > 0 {
                    self.set_revision(self.revision.saturating_add(1), undo);
                }
                Ok(Reply {
                    revision: self.revision,
                    response: Response::Delete(result),
                })
            }
            Input::Txn(t) => self.txn(t, undo),
            Input::LeaseGrant { id, ttl_s } => {
                if *id == 0 {
                    return Err(KvError::LeaseNotFound);
                }
                if self.leases.contains_key(id) {
                    return Err(KvError::LeaseExist);
                }
                self.set_lease(*id, Some(*ttl_s), undo);
                Ok(Reply {
                    revision: self.revision,
                    response: Response::LeaseGrant,
                })
            }
            Input::LeaseRevoke { id } => {
                if !self.leases.contains_key(id) {
                    return Err(KvError::LeaseNotFound);
                }
                self.set_lease(*id, None, undo);
                let attached: Vec<Vec<u8>> = self
                    .kvs
                    .values()
                    .filter(|kv| kv.lease == *id)
                    .map(|kv| kv.key.clone())
                    .collect();
                if !attached.is_empty() {
                    for key in attached {
                        self.set_kv(key, None, undo);
                    }
                    self.set_revision(self.revision.saturating_add(1), undo);
                }
                Ok(Reply {
                    revision: self.revision,
                    response: Response::LeaseRevoke,
                })
            }
            Input::LeaseKeepAlive { id } => {
                if !self.leases.contains_key(id) {
                    return Err(KvError::LeaseNotFound);
                }
                // The header of a keep-alive answer comes from the leader's applied state,
                // outside the log's order, so histories record it as 0 and so does this.
                Ok(Reply {
                    revision: 0,
                    response: Response::LeaseKeepAlive,
                })
            }
            Input::Compact { revision } => {
                if *revision <= self.compact_revision {
                    return Err(KvError::Compacted);
                }
                if *revision > self.revision {
                    return Err(KvError::FutureRevision);
                }
                undo.entries
                    .push(UndoEntry::CompactRevision(self.compact_revision));
                self.compact_revision = *revision;
                Ok(Reply {
                    revision: self.revision,
                    response: Response::Compact,
                })
            }
        }
    }

    /// Reverts the changes `undo` logged (which must have been made to this state, as the
    /// last changes), leaving `undo` empty.
    pub fn revert(&mut self, undo: &mut Undo) {
        let mut scratch = Undo::new();
        while let Some(entry) = undo.entries.pop() {
            match entry {
                UndoEntry::Kv(key, prev) => self.set_kv(key, prev, &mut scratch),
                UndoEntry::Lease(id, prev) => self.set_lease(id, prev, &mut scratch),
                UndoEntry::Revision(r) => self.revision = r,
                UndoEntry::CompactRevision(r) => self.compact_revision = r,
            }
            scratch.clear();
        }
    }

    /// Sets (or with `None` removes) a key, keeping the hash and logging the old value.
    fn set_kv(&mut self, key: Vec<u8>, kv: Option<KeyValue>, undo: &mut Undo) {
        if let Some(new) = &kv {
            self.kvs_hash ^= entry_hash(1, new);
        }
        let prev = match kv {
            Some(new) => self.kvs.insert(key.clone(), new),
            None => self.kvs.remove(&key),
        };
        if let Some(old) = &prev {
            self.kvs_hash ^= entry_hash(1, old);
        }
        undo.entries.push(UndoEntry::Kv(key, prev));
    }

    /// Sets (or with `None` removes) a lease, keeping the hash and logging the old TTL.
    fn set_lease(&mut self, id: i64, ttl_s: Option<i64>, undo: &mut Undo) {
        if let Some(t) = ttl_s {
            self.leases_hash ^= entry_hash(2, &(id, t));
        }
        let prev = match ttl_s {
            Some(t) => self.leases.insert(id, t),
            None => self.leases.remove(&id),
        };
        if let Some(t) = prev {
            self.leases_hash ^= entry_hash(2, &(id, t));
        }
        undo.entries.push(UndoEntry::Lease(id, prev));
    }

    /// Sets the store revision, logging the old one.
    fn set_revision(&mut self, revision: i64, undo: &mut Undo) {
        undo.entries.push(UndoEntry::Revision(self.revision));
        self.revision = revision;
    }

    /// The live keys in etcd's `key`/`range_end` range, in key order.
    fn in_range<'a>(
        &'a self,
        key: &[u8],
        range_end: &[u8],
    ) -> impl Iterator<Item = &'a KeyValue> + 'a {
        let (start, end) = interval(key, range_end);
        let empty = end.as_ref().is_some_and(|e| *e <= start);
        self.kvs
            .range(start..)
            .take_while(move |(k, _)| !empty && end.as_ref().is_none_or(|e| *k < e))
            .map(|(_, kv)| kv)
    }

    /// Answers a range read.
    fn range(&self, r: &RangeRequest) -> RangeResult {
        let limit = usize::try_from(r.limit)
            .ok()
            .filter(|l| *l > 0)
            .unwrap_or(usize::MAX);
        let mut count: i64 = 0;
        let mut kvs = Vec::new();
        for kv in self.in_range(&r.key, &r.range_end) {
            count = count.saturating_add(1);
            if kvs.len() < limit {
                kvs.push(kv.clone());
            }
        }
        let more = usize::try_from(count).unwrap_or(usize::MAX) > kvs.len();
        RangeResult { kvs, count, more }
    }

    /// Puts at revision `rev` (the caller checked the key and the lease and bumps the
    /// revision).
    fn put(&mut self, p: &PutRequest, rev: i64, undo: &mut Undo) -> PutResult {
        let prev = self.kvs.get(&p.key).cloned();
        let (create_revision, version) = prev.as_ref().map_or((rev, 1), |kv| {
            (kv.create_revision, kv.version.saturating_add(1))
        });
        let kv = KeyValue {
            key: p.key.clone(),
            value: p.value.clone(),
            create_revision,
            mod_revision: rev,
            version,
            lease: p.lease,
        };
        self.set_kv(p.key.clone(), Some(kv), undo);
        PutResult {
            prev_kv: if p.prev_kv { prev } else { None },
        }
    }

    /// Deletes a range (the caller bumps the revision if anything was deleted).
    fn delete(&mut self, d: &DeleteRequest, undo: &mut Undo) -> DeleteResult {
        let found: Vec<KeyValue> = self.in_range(&d.key, &d.range_end).cloned().collect();
        for kv in &found {
            self.set_kv(kv.key.clone(), None, undo);
        }
        DeleteResult {
            deleted: i64::try_from(found.len()).unwrap_or(i64::MAX),
            prev_kvs: if d.prev_kv { found } else { Vec::new() },
        }
    }

    /// etcd's `applyCompare`: every key of the range must satisfy the compare; a missing
    /// key fails value compares and compares as zero otherwise.
    fn compare(&self, c: &Compare) -> bool {
        let mut found = self.in_range(&c.key, &c.range_end).peekable();
        if found.peek().is_none() {
            if matches!(c.target, CompareTarget::Value(_)) {
                return false;
            }
            return compare_kv(c, &KeyValue::default());
        }
        found.all(|kv| compare_kv(c, kv))
    }

    /// Runs a txn: the compares pick a branch; the branch is checked as etcd checks it
    /// before anything runs (empty keys, duplicate keys, unknown leases); then its
    /// operations run in order, all writes at one revision.
    fn txn(&mut self, t: &TxnRequest, undo: &mut Undo) -> Output {
        // etcd validates both branches' keys before the request is proposed.
        for branch in [&t.success, &t.failure] {
            check_branch(branch)?;
        }
        for c in &t.compares {
            check_key(&c.key)?;
        }
        let succeeded = t.compares.iter().all(|c| self.compare(c));
        let ops = if succeeded { &t.success } else { &t.failure };
        let read_only = t
            .success
            .iter()
            .chain(&t.failure)
            .all(|op| matches!(op, TxnOp::Get(_)));
        if !read_only {
            for op in ops {
                if let TxnOp::Put(p) = op {
                    if p.lease != 0 && !self.leases.contains_key(&p.lease) {
                        return Err(KvError::LeaseNotFound);
                    }
                }
            }
        }
        let begin = self.revision;
        let rev = begin.saturating_add(1);
        let mut changed = false;
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            responses.push(match op {
                TxnOp::Get(r) => TxnOpResult::Get(self.range(r)),
                TxnOp::Put(p) => {
                    changed = true;
                    TxnOpResult::Put(self.put(p, rev, undo))
                }
                TxnOp::Delete(d) => {
                    let result = self.delete(d, undo);
                    changed |= result.deleted > 0;
                    TxnOpResult::Delete(result)
                }
            });
        }
        if changed {
            self.set_revision(rev, undo);
        }
        Ok(Reply {
            revision: self.revision,
            response: Response::Txn(TxnResult {
                succeeded,
                responses,
            }),
        })
    }
}

/// etcd rejects requests with an empty key.
fn check_key(key: &[u8]) -> Result<(), KvError> {
    if key.is_empty() {
        Err(KvError::EmptyKey)
    } else {
        Ok(())
    }
}

/// etcd's `checkIntervals` for one branch: no key put twice, no put inside a deleted
/// range, and no empty keys.
fn check_branch(ops: &[TxnOp]) -> Result<(), KvError> {
    let mut puts: Vec<&[u8]> = Vec::new();
    let mut deletes = Vec::new();
    for op in ops {
        match op {
            TxnOp::Get(r) => check_key(&r.key)?,
            TxnOp::Put(p) => {
                check_key(&p.key)?;
                puts.push(&p.key);
            }
            TxnOp::Delete(d) => {
                check_key(&d.key)?;
                deletes.push(interval(&d.key, &d.range_end));
            }
        }
    }
    puts.sort();
    if puts.windows(2).any(|w| w[0] == w[1]) {
        return Err(KvError::DuplicateKey);
    }
    for p in puts {
        let point = interval(p, &[]);
        if deletes.iter().any(|d| overlaps(d, &point)) {
            return Err(KvError::DuplicateKey);
        }
    }
    Ok(())
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

/// Writes an etcd key range.
struct Range<'a>(&'a [u8], &'a [u8]);

impl fmt::Display for Range<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.1 {
            [] => write!(f, "{}", Quoted(self.0)),
            [0] => write!(f, "[{}..)", Quoted(self.0)),
            end => write!(f, "[{}..{})", Quoted(self.0), Quoted(end)),
        }
    }
}

impl fmt::Display for KeyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}={} (create {}, mod {}, version {}",
            Quoted(&self.key),
            Quoted(&self.value),
            self.create_revision,
            self.mod_revision,
            self.version
        )?;
        if self.lease != 0 {
            write!(f, ", lease {}", self.lease)?;
        }
        f.write_str(")")
    }
}

/// Writes a list of key-values.
struct Kvs<'a>(&'a [KeyValue]);

impl fmt::Display for Kvs<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, kv) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{kv}")?;
        }
        f.write_str("]")
    }
}

impl fmt::Display for RangeRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "get {}", Range(&self.key, &self.range_end))?;
        if self.limit > 0 {
            write!(f, " limit {}", self.limit)?;
        }
        Ok(())
    }
}

impl fmt::Display for PutRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "put {}={}", Quoted(&self.key), Quoted(&self.value))?;
        if self.lease != 0 {
            write!(f, " lease {}", self.lease)?;
        }
        if self.prev_kv {
            f.write_str(" prev_kv")?;
        }
        Ok(())
    }
}

impl fmt::Display for DeleteRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "delete {}", Range(&self.key, &self.range_end))?;
        if self.prev_kv {
            f.write_str(" prev_kv")?;
        }
        Ok(())
    }
}

impl fmt::Display for Compare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.op {
            CompareOp::Equal => "==",
            CompareOp::NotEqual => "!=",
            CompareOp::Less => "<",
            CompareOp::Greater => ">",
        };
        let key = Range(&self.key, &self.range_end);
        match &self.target {
            CompareTarget::Value(v) => write!(f, "value({key}) {op} {}", Quoted(v)),
            CompareTarget::Version(v) => write!(f, "version({key}) {op} {v}"),
            CompareTarget::CreateRevision(r) => write!(f, "create({key}) {op} {r}"),
            CompareTarget::ModRevision(r) => write!(f, "mod({key}) {op} {r}"),
            CompareTarget::Lease(l) => write!(f, "lease({key}) {op} {l}"),
        }
    }
}

impl fmt::Display for TxnOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TxnOp::Get(r) => r.fmt(f),
            TxnOp::Put(p) => p.fmt(f),
            TxnOp::Delete(d) => d.fmt(f),
        }
    }
}

/// Writes a list separated by `sep`.
fn write_list<T: fmt::Display>(f: &mut fmt::Formatter<'_>, items: &[T], sep: &str) -> fmt::Result {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(sep)?;
        }
        write!(f, "{item}")?;
    }
    Ok(())
}

impl fmt::Display for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Input::Get(r) => r.fmt(f),
            Input::Put(p) => p.fmt(f),
            Input::Delete(d) => d.fmt(f),
            Input::Txn(t) => {
                f.write_str("txn if ")?;
                write_list(f, &t.compares, " && ")?;
                f.write_str(" then {")?;
                write_list(f, &t.success, "; ")?;
                f.write_str("} else {")?;
                write_list(f, &t.failure, "; ")?;
                f.write_str("}")
            }
            Input::LeaseGrant { id, ttl_s } => write!(f, "lease grant {id} ttl {ttl_s}s"),
            Input::LeaseKeepAlive { id } => write!(f, "lease keepalive {id}"),
            Input::LeaseRevoke { id } => write!(f, "lease revoke {id}"),
            Input::Compact { revision } => write!(f, "compact {revision}"),
        }
    }
}

impl fmt::Display for RangeResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", Kvs(&self.kvs))?;
        if self.more {
            write!(f, " (of {}, more)", self.count)?;
        }
        Ok(())
    }
}

impl fmt::Display for TxnOpResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TxnOpResult::Get(r) => r.fmt(f),
            TxnOpResult::Put(p) => match &p.prev_kv {
                Some(kv) => write!(f, "ok, prev {kv}"),
                None => f.write_str("ok"),
            },
            TxnOpResult::Delete(d) => {
                write!(f, "deleted {}", d.deleted)?;
                if !d.prev_kvs.is_empty() {
                    write!(f, " {}", Kvs(&d.prev_kvs))?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rev {}", self.revision)?;
        match &self.response {
            Response::Get(r) => write!(f, " {r}"),
            Response::Put(p) => match &p.prev_kv {
                Some(kv) => write!(f, " prev {kv}"),
                None => Ok(()),
            },
            Response::Delete(d) => {
                write!(f, " deleted {}", d.deleted)?;
                if !d.prev_kvs.is_empty() {
                    write!(f, " {}", Kvs(&d.prev_kvs))?;
                }
                Ok(())
            }
            Response::Txn(t) => {
                write!(f, " {} [", if t.succeeded { "then" } else { "else" })?;
                write_list(f, &t.responses, "; ")?;
                f.write_str("]")
            }
            Response::LeaseGrant
            | Response::LeaseRevoke
            | Response::Compact
            | Response::LeaseKeepAlive => Ok(()),
        }
    }
}

impl fmt::Display for KvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KvError::EmptyKey => "error: key is not provided",
            KvError::DuplicateKey => "error: duplicate key given in txn request",
            KvError::LeaseNotFound => "error: requested lease not found",
            KvError::LeaseExist => "error: lease already exists",
            KvError::Compacted => "error: required revision has been compacted",
            KvError::FutureRevision => "error: required revision is a future revision",
        })
    }
}

/// Writes an [`Output`] for people.
pub struct ShowOutput<'a>(pub &'a Output);

impl fmt::Display for ShowOutput<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Ok(reply) => reply.fmt(f),
            Err(e) => e.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str, v: &str) -> Input {
        Input::Put(PutRequest {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        })
    }

    fn get(k: &str) -> Input {
        Input::Get(RangeRequest {
            key: k.into(),
            ..Default::default()
        })
    }

    fn del(k: &str) -> Input {
        Input::Delete(DeleteRequest {
            key: k.into(),
            ..Default::default()
        })
    }

    fn rev(out: &Output) -> i64 {
        out.as_ref().map(|r| r.revision).unwrap_or(-100)
    }

    #[test]
    fn revisions_follow_etcd() {
        let mut m = Model::new();
        assert_eq!(
            rev(&m.step(&get("a"))),
            1,
            "an empty store is at revision 1"
        );
        assert_eq!(rev(&m.step(&put("a", "1"))), 2);
        assert_eq!(
            rev(&m.step(&put("a", "1"))),
            3,
            "a put of the same value bumps"
        );
        assert_eq!(rev(&m.step(&del("b"))), 3, "deleting nothing does not bump");
        let kv = m.get(b"a").cloned().unwrap_or_default();
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
        assert_eq!(rev(&m.step(&del("a"))), 4);
        assert_eq!(rev(&m.step(&put("a", "2"))), 5);
        let kv = m.get(b"a").cloned().unwrap_or_default();
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (5, 5, 1));
        let read_only = Input::Txn(TxnRequest {
            compares: vec![],
            success: vec![TxnOp::Get(RangeRequest {
                key: "a".into(),
                ..Default::default()
            })],
            failure: vec![],
        });
        assert_eq!(rev(&m.step(&read_only)), 5, "a read-only txn does not bump");
        let two_puts = Input::Txn(TxnRequest {
            compares: vec![],
            success: vec![
                TxnOp::Put(PutRequest {
                    key: "x".into(),
                    value: "1".into(),
                    ..Default::default()
                }),
                TxnOp::Get(RangeRequest {
                    key: "x".into(),
                    ..Default::default()
                }),
                TxnOp::Put(PutRequest {
                    key: "y".into(),
                    value: "1".into(),
                    ..Default::default()
                }),
            ],
            failure: vec![],
        });
        let out = m.step(&two_puts);
        assert_eq!(rev(&out), 6, "a txn bumps once however much it writes");
        let Ok(Reply {
            response: Response::Txn(t),
            ..
        }) = out
        else {
            panic!("txn failed: {out:?}");
        };
        let TxnOpResult::Get(r) = &t.responses[1] else {
            panic!("not a get: {t:?}");
        };
        assert_eq!(r.kvs[0].mod_revision, 6, "reads in a txn see its writes");
        assert_eq!(m.get(b"y").map(|kv| kv.mod_revision), Some(6));
    }

    #[test]
    fn compares_follow_etcd() {
        let mut m = Model::new();
        let cas = |target| {
            Input::Txn(TxnRequest {
                compares: vec![Compare {
                    key: "a".into(),
                    range_end: vec![],
                    target,
                    op: CompareOp::NotEqual,
                }],
                success: vec![],
                failure: vec![],
            })
        };
        let succeeded = |out: Output| match out {
            Ok(Reply {
                response: Response::Txn(t),
                ..
            }) => t.succeeded,
            _ => panic!("not a txn reply"),
        };
        assert!(
            !succeeded(m.step(&cas(CompareTarget::Value(b"x".to_vec())))),
            "a value compare on a missing key fails, even !="
        );
        assert!(!succeeded(m.step(&cas(CompareTarget::Version(0)))));
        let _ = m.step(&put("a", "x"));
        assert!(!succeeded(
            m.step(&cas(CompareTarget::Value(b"x".to_vec())))
        ));
        assert!(succeeded(m.step(&cas(CompareTarget::Version(0)))));
    }

    #[test]
    fn revoke_deletes_attached_keys_in_one_revision() {
        let mut m = Model::new();
        let grant = Input::LeaseGrant { id: 7, ttl_s: 10 };
        assert_eq!(rev(&m.step(&grant)), 1, "a grant does not bump");
        assert_eq!(m.step(&grant), Err(KvError::LeaseExist));
        for k in ["a", "b"] {
            let _ = m.step(&Input::Put(PutRequest {
                key: k.into(),
                value: "v".into(),
                lease: 7,
                prev_kv: false,
            }));
        }
        let _ = m.step(&put("c", "v"));
        assert_eq!(m.revision(), 4);
        assert_eq!(rev(&m.step(&Input::LeaseRevoke { id: 7 })), 5);
        assert!(m.get(b"a").is_none() && m.get(b"b").is_none() && m.get(b"c").is_some());
        assert_eq!(
            m.step(&Input::LeaseRevoke { id: 7 }),
            Err(KvError::LeaseNotFound)
        );
        let with_lease = Input::Put(PutRequest {
            key: "a".into(),
            value: "v".into(),
            lease: 7,
            prev_kv: false,
        });
        assert_eq!(m.step(&with_lease), Err(KvError::LeaseNotFound));
        let _ = m.step(&Input::LeaseGrant { id: 8, ttl_s: 10 });
        assert_eq!(
            rev(&m.step(&Input::LeaseRevoke { id: 8 })),
            5,
            "revoking a lease without keys does not bump"
        );
    }

    #[test]
    fn compaction_errors() {
        let mut m = Model::new();
        let _ = m.step(&put("a", "1"));
        assert_eq!(
            m.step(&Input::Compact { revision: 3 }),
            Err(KvError::FutureRevision)
        );
        assert_eq!(rev(&m.step(&Input::Compact { revision: 2 })), 2);
        assert_eq!(
            m.step(&Input::Compact { revision: 2 }),
            Err(KvError::Compacted)
        );
    }

    #[test]
    fn revert_restores_state_and_fingerprint() {
        let mut m = Model::new();
        let _ = m.step(&Input::LeaseGrant { id: 1, ttl_s: 5 });
        let _ = m.step(&Input::Put(PutRequest {
            key: "a".into(),
            value: "1".into(),
            lease: 1,
            prev_kv: false,
        }));
        let _ = m.step(&put("b", "1"));
        let before = m.clone();
        let inputs = [
            put("a", "2"),
            del("b"),
            Input::LeaseRevoke { id: 1 },
            Input::Compact { revision: 2 },
            Input::Delete(DeleteRequest {
                key: "a".into(),
                range_end: vec![0],
                prev_kv: true,
            }),
        ];
        for input in &inputs {
            let mut undo = Undo::new();
            let _ = m.apply(input, &mut undo);
            m.revert(&mut undo);
            assert_eq!(m, before, "after reverting {input}");
            assert_eq!(m.fingerprint(), before.fingerprint());
        }
        let mut undo = Undo::new();
        for input in &inputs {
            let _ = m.apply(input, &mut undo);
        }
        assert_ne!(m.fingerprint(), before.fingerprint());
        m.revert(&mut undo);
        assert_eq!(m, before);
    }

    #[test]
    fn ranges_and_limits() {
        let mut m = Model::new();
        for k in ["a", "b", "c", "d"] {
            let _ = m.step(&put(k, k));
        }
        let out = m.step(&Input::Get(RangeRequest {
            key: "b".into(),
            range_end: vec![0],
            limit: 2,
        }));
        let Ok(Reply {
            response: Response::Get(r),
            ..
        }) = out
        else {
            panic!("get failed");
        };
        assert_eq!((r.kvs.len(), r.count, r.more), (2, 3, true));
        assert_eq!(r.kvs[0].key, b"b");
        let out = m.step(&Input::Delete(DeleteRequest {
            key: "b".into(),
            range_end: "d".into(),
            prev_kv: false,
        }));
        assert!(matches!(
            out,
            Ok(Reply {
                revision: 6,
                response: Response::Delete(DeleteResult { deleted: 2, .. })
            })
        ));
        let bad = Input::Txn(TxnRequest {
            compares: vec![],
            success: vec![],
            failure: vec![
                TxnOp::Delete(DeleteRequest {
                    key: "a".into(),
                    range_end: "z".into(),
                    prev_kv: false,
                }),
                TxnOp::Put(PutRequest {
                    key: "q".into(),
                    ..Default::default()
                }),
            ],
        });
        assert_eq!(m.step(&bad), Err(KvError::DuplicateKey));
    }
}
