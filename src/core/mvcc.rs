//! etcd's MVCC store, entirely in memory, with etcd 3.4's exact semantics.
//!
//! Every write happens at a *revision* `(main, sub)`: `main` is the store-wide counter,
//! bumped once per write request (a txn included), and `sub` counts the individual key
//! changes inside that request. Each key keeps its history as *generations* (as etcd's
//! `keyIndex`): a generation starts when the key is created and ends with the tombstone
//! that deletes it, so a re-created key starts again at version 1.
//!
//! Durable changes are not written anywhere by this module: every mutating call appends
//! them to a [`WriteBatch`] in etcd's bbolt layout (see [`encode_revision`]), and
//! [`Mvcc::restore`] rebuilds the store from those buckets. Watch events are appended to
//! a `Vec<Event>` with their `prev_kv` filled (the key's value just before the write
//! request, as etcd's watch server looks it up); the watch hub drops it for watchers that
//! did not ask for it. [`Mvcc::history`] reads the same events back for watchers that
//! start in the past or fell behind.
//!
//! Deviation from etcd, on purpose: etcd orders ties of a `sort_target` other than `KEY`
//! with Go's unstable `sort.Sort`; here ties keep ascending key order. For up to 12 keys
//! Go's sort is an insertion sort, so both agree there.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use prost::Message;

use crate::core::crc32c::Crc32c;
use crate::error::EtcdError;
use crate::pb::etcdserverpb::{
    compare, range_request, request_op, response_op, CompactionResponse, Compare,
    DeleteRangeRequest, DeleteRangeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse,
    RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use crate::pb::mvccpb::{event::EventType, Event, KeyValue};
use crate::storage::backend::{BatchOp, Bucket, WriteBatch};

/// The `meta` bucket key recording the compaction a store has started.
pub const SCHEDULED_COMPACT_KEY: &[u8] = b"scheduledCompactRev";
/// The `meta` bucket key recording the last compaction a store has finished.
pub const FINISHED_COMPACT_KEY: &[u8] = b"finishedCompactRev";
/// The name etcd feeds to `HashKV` before the key bucket's entries.
const KEY_BUCKET_NAME: &[u8] = b"key";
/// Length of an encoded revision without the tombstone mark.
const REVISION_LEN_BYTES: usize = 17;

/// One point in the store's history: `main` counts write requests, `sub` counts the key
/// changes inside one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Revision {
    /// The store-wide revision of the write request.
    pub main: i64,
    /// The index of the change inside that request.
    pub sub: i64,
}

/// Encodes `rev` as etcd's `key` bucket does: 8-byte big-endian `main`, `b'_'`, 8-byte
/// big-endian `sub`, and a trailing `b't'` if the entry is a tombstone.
pub fn encode_revision(rev: Revision, tombstone: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(REVISION_LEN_BYTES + 1);
    out.extend_from_slice(&(rev.main as u64).to_be_bytes());
    out.push(b'_');
    out.extend_from_slice(&(rev.sub as u64).to_be_bytes());
    if tombstone {
        out.push(b't');
    }
    debug_assert!(out.len() == REVISION_LEN_BYTES + usize::from(tombstone));
    out
}

/// Decodes a `key` bucket key into its revision and tombstone mark; `None` if malformed.
pub fn decode_revision(bytes: &[u8]) -> Option<(Revision, bool)> {
    let tombstone = match bytes.len() {
        REVISION_LEN_BYTES => false,
        n if n == REVISION_LEN_BYTES + 1 && bytes[REVISION_LEN_BYTES] == b't' => true,
        _ => return None,
    };
    if bytes[8] != b'_' {
        return None;
    }
    let main = i64::from_be_bytes(bytes[0..8].try_into().ok()?);
    let sub = i64::from_be_bytes(bytes[9..17].try_into().ok()?);
    Some((Revision { main, sub }, tombstone))
}

/// One life of a key: from its creation to the tombstone that deletes it (if any).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Generation {
    /// The puts of this life in revision order, each with the value it stored. Never empty.
    puts: Vec<(Revision, KeyValue)>,
    /// The revision of the delete that ended this life.
    tombstone: Option<Revision>,
}

/// The history of one key (etcd's `keyIndex`), generations oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct KeyIndex {
    /// Only the last generation may lack a tombstone.
    generations: Vec<Generation>,
}

impl KeyIndex {
    /// The put visible at main revision `at_main`, if the key existed then.
    fn get(&self, at_main: i64) -> Option<(Revision, &KeyValue)> {
        // Later generations start later, so the first one (from the end) that started at
        // or before `at_main` is the only one that can hold the answer.
        let g = self
            .generations
            .iter()
            .rev()
            .find(|g| g.puts.first().is_some_and(|(r, _)| r.main <= at_main))?;
        if g.tombstone.is_some_and(|t| t.main <= at_main) {
            return None;
        }
        let idx = g.puts.partition_point(|(r, _)| r.main <= at_main);
        debug_assert!(idx >= 1);
        g.puts.get(idx - 1).map(|(r, kv)| (*r, kv))
    }

    /// Whether the key currently exists (its last generation is still open).
    fn is_live(&self) -> bool {
        self.generations
            .last()
            .is_some_and(|g| g.tombstone.is_none())
    }

    /// Records a put at `rev`, opening a new generation if the key was deleted.
    fn put(&mut self, rev: Revision, kv: KeyValue) {
        debug_assert!(self.last_revision().is_none_or(|last| last < rev));
        if self.is_live() {
            if let Some(g) = self.generations.last_mut() {
                g.puts.push((rev, kv));
            }
        } else {
            self.generations.push(Generation {
                puts: vec![(rev, kv)],
                tombstone: None,
            });
        }
    }

    /// Records the delete at `rev` that ends the current generation.
    fn tombstone(&mut self, rev: Revision) {
        debug_assert!(self.is_live());
        debug_assert!(self.last_revision().is_none_or(|last| last < rev));
        if let Some(g) = self.generations.last_mut() {
            g.tombstone = Some(rev);
        }
    }

    /// Where this history ends now, so that a failed request can cut it back to here.
    fn mark(&self) -> IndexMark {
        let last = self.generations.last();
        IndexMark {
            generations: self.generations.len(),
            last_puts: last.map_or(0, |g| g.puts.len()),
            last_tombstone: last.and_then(|g| g.tombstone),
        }
    }

    /// Cuts the history back to `mark`. A request only appends puts, opens generations
    /// and closes the open one, so cutting back undoes it exactly.
    fn truncate_to(&mut self, mark: &IndexMark) {
        self.generations.truncate(mark.generations);
        if let Some(g) = self.generations.last_mut() {
            g.puts.truncate(mark.last_puts);
            g.tombstone = mark.last_tombstone;
        }
    }

    /// The newest revision recorded for this key.
    fn last_revision(&self) -> Option<Revision> {
        let g = self.generations.last()?;
        g.tombstone.or_else(|| g.puts.last().map(|(r, _)| *r))
    }

    /// Drops every revision not reachable by a read at `at_main` or later, appending the
    /// dropped entries (revision, tombstone mark) to `dropped`. Returns whether the key
    /// still has any history.
    fn compact(&mut self, at_main: i64, dropped: &mut Vec<(Revision, bool)>) -> bool {
        let mut kept = Vec::with_capacity(self.generations.len());
        for mut g in std::mem::take(&mut self.generations) {
            if g.tombstone.is_some_and(|t| t.main <= at_main) {
                // The key was deleted at or before `at_main`: nothing of this life is
                // visible at `at_main` or later, its tombstone included.
                dropped.extend(g.puts.iter().map(|(r, _)| (*r, false)));
                dropped.extend(g.tombstone.map(|t| (t, true)));
                continue;
            }
            // Keep the newest put at or below `at_main` (what a read at `at_main` sees)
            // and everything after it.
            let idx = g.puts.partition_point(|(r, _)| r.main <= at_main);
            if idx > 1 {
                dropped.extend(g.puts.drain(..idx - 1).map(|(r, _)| (r, false)));
            }
            debug_assert!(!g.puts.is_empty());
            kept.push(g);
        }
        self.generations = kept;
        !self.generations.is_empty()
    }
}

/// The extent of a key's history before a request changed it (see [`KeyIndex::mark`]):
/// a few numbers instead of a copy of every stored value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IndexMark {
    /// How many generations there were.
    generations: usize,
    /// How many puts the last generation held.
    last_puts: usize,
    /// The last generation's tombstone.
    last_tombstone: Option<Revision>,
}

/// The key interval of a request, with etcd's conventions for `range_end` decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyRange<'a> {
    /// Exactly one key (`range_end` empty).
    Single(&'a [u8]),
    /// `[start, end)`; `end == None` means unbounded (`range_end == "\0"`).
    Interval(&'a [u8], Option<&'a [u8]>),
}

impl<'a> KeyRange<'a> {
    /// Decodes `key` and `range_end` as etcd does (`mkGteRange`).
    fn new(key: &'a [u8], range_end: &'a [u8]) -> Self {
        match range_end {
            [] => KeyRange::Single(key),
            [0] => KeyRange::Interval(key, None),
            end => KeyRange::Interval(key, Some(end)),
        }
    }

    /// Whether `k` lies in the range.
    fn contains(&self, k: &[u8]) -> bool {
        match *self {
            KeyRange::Single(key) => k == key,
            KeyRange::Interval(start, end) => k >= start && end.is_none_or(|e| k < e),
        }
    }
}

/// Events read back from the store's history (see [`Mvcc::history`]).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct History {
    /// The events in revision order, with `prev_kv` filled where still readable.
    pub events: Vec<Event>,
    /// Every event of the asked range with a revision from the asked start up to and
    /// including this revision is in `events`.
    pub through_revision: i64,
}

/// etcd's MVCC key-value store, in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mvcc {
    /// The revision of the last write request; 1 for an empty store, as etcd.
    current_revision: i64,
    /// The revision of the last compaction; -1 if the store was never compacted, as etcd.
    compact_revision: i64,
    /// Every key with any history left, in key order (etcd's `treeIndex`).
    index: BTreeMap<Vec<u8>, KeyIndex>,
    /// How many keys of `index` exist at the current revision, kept as writes apply so
    /// that counting them (a metric updated after every applied batch) does not walk the
    /// whole index. Invariant: equals the number of live entries of `index`.
    live_keys: usize,
}

impl Default for Mvcc {
    fn default() -> Self {
        Self::new()
    }
}

impl Mvcc {
    /// An empty store at revision 1.
    pub fn new() -> Self {
        Mvcc {
            current_revision: 1,
            compact_revision: -1,
            index: BTreeMap::new(),
            live_keys: 0,
        }
    }

    /// The revision of the last write request (1 for an empty store).
    pub fn current_revision(&self) -> i64 {
        self.current_revision
    }

    /// The revision of the last compaction, or -1 if the store was never compacted (etcd
    /// reports the same -1 in `HashKV`). Reads below this revision fail with `Compacted`.
    pub fn compact_revision(&self) -> i64 {
        self.compact_revision
    }

    /// The current version of every existing key that is attached to a lease, in key
    /// order: what the lease table needs to rebuild at a restart, without copying the
    /// keys that have no lease (a full range would copy the whole store).
    pub fn live_leased(&self) -> Vec<KeyValue> {
        self.index
            .values()
            .filter(|ki| ki.is_live())
            .filter_map(|ki| ki.generations.last()?.puts.last())
            .filter(|(_, kv)| kv.lease != 0)
            .map(|(_, kv)| kv.clone())
            .collect()
    }

    /// The number of keys that exist at the current revision.
    pub fn key_count(&self) -> usize {
        debug_assert_eq!(self.live_keys, self.count_live_keys(), "live key count");
        self.live_keys
    }

    /// Counts the live keys by walking the index: for restores and for checking
    /// [`Mvcc::live_keys`].
    fn count_live_keys(&self) -> usize {
        self.index.values().filter(|ki| ki.is_live()).count()
    }

    /// The key-values visible at `at_main` in `range`, in key order.
    fn visible(&self, range: &KeyRange<'_>, at_main: i64) -> Vec<(Revision, &KeyValue)> {
        match *range {
            KeyRange::Single(key) => self
                .index
                .get(key)
                .and_then(|ki| ki.get(at_main))
                .into_iter()
                .collect(),
            KeyRange::Interval(start, end) => {
                // BTreeMap::range panics on inverted bounds; etcd answers them with nothing.
                if end.is_some_and(|e| e <= start) {
                    return Vec::new();
                }
                let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
                self.index
                    .range::<[u8], _>((Bound::Included(start), upper))
                    .filter_map(|(_, ki)| ki.get(at_main))
                    .collect()
            }
        }
    }

    /// The watch events of the keys in `key`/`range_end` (etcd's conventions: empty end =
    /// one key, `"\0"` = every key from `key` on) with a main revision in `[from, to]`, in
    /// revision order, each with its `prev_kv` (the key's value at the revision before the
    /// event, if that revision is not compacted), exactly as the live events of
    /// [`Mvcc::put`], [`Mvcc::delete_range`] and [`Mvcc::txn`] were. `to` is clamped to the
    /// current revision. At most `max_events` events and `max_bytes` bytes of encoded
    /// events are returned, cut at a revision boundary so that a revision's events are
    /// never split (the first revision is returned whole even if it is larger); [`History::through_revision`] says how far the answer
    /// reaches. `Compacted` if `from` is below the compact revision, as etcd cancels such
    /// watchers.
    pub fn history(
        &self,
        key: &[u8],
        range_end: &[u8],
        from: i64,
        to: i64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<History, EtcdError> {
        let from = from.max(1);
        if from < self.compact_revision {
            return Err(EtcdError::Compacted);
        }
        let to = to.min(self.current_revision);
        if from > to {
            return Ok(History {
                events: Vec::new(),
                through_revision: to,
            });
        }
        let range = KeyRange::new(key, range_end);
        let keys: Vec<(&Vec<u8>, &KeyIndex)> = match range {
            KeyRange::Single(k) => self.index.get_key_value(k).into_iter().collect(),
            KeyRange::Interval(start, end) => {
                if end.is_some_and(|e| e <= start) {
                    Vec::new()
                } else {
                    let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
                    self.index
                        .range::<[u8], _>((Bound::Included(start), upper))
                        .collect()
                }
            }
        };
        let prev = |ki: &KeyIndex, main: i64| {
            if main > self.compact_revision.max(1) {
                ki.get(main - 1).map(|(_, kv)| kv.clone())
            } else {
                None
            }
        };
        let mut found: Vec<(Revision, Event)> = Vec::new();
        for (k, ki) in keys {
            // Generations and their puts are in revision order: skip whole generations
            // that end before `from`, stop at the first that starts after `to`, and find
            // the first put at or after `from` by binary search, so a watcher catching up
            // on a key with a long history reads only the revisions it asked for.
            for g in &ki.generations {
                let first_main = g.puts.first().map_or(i64::MAX, |(r, _)| r.main);
                if first_main > to {
                    break;
                }
                let last_main = g
                    .tombstone
                    .or_else(|| g.puts.last().map(|(r, _)| *r))
                    .map_or(i64::MIN, |r| r.main);
                if last_main < from {
                    continue;
                }
                let start = g.puts.partition_point(|(r, _)| r.main < from);
                for (r, kv) in g.puts[start..].iter().take_while(|(r, _)| r.main <= to) {
                    found.push((
                        *r,
                        Event {
                            r#type: EventType::Put as i32,
                            kv: Some(kv.clone()),
                            prev_kv: prev(ki, r.main),
                        },
                    ));
                }
                if let Some(t) = g.tombstone.filter(|t| t.main >= from && t.main <= to) {
                    let mut kv = tombstone_kv(k);
                    kv.mod_revision = t.main;
                    found.push((
                        t,
                        Event {
                            r#type: EventType::Delete as i32,
                            kv: Some(kv),
                            prev_kv: prev(ki, t.main),
                        },
                    ));
                }
            }
        }
        found.sort_by_key(|(r, _)| *r);
        let mut through_revision = to;
        let mut cut = found.len();
        // The first event that does not fit, by count or by size.
        let mut bytes = 0usize;
        let limit = found.iter().enumerate().position(|(i, (_, e))| {
            bytes = bytes.saturating_add(e.encoded_len());
            i >= max_events || bytes > max_bytes
        });
        if let Some(limit) = limit {
            // Keep whole revisions only: stop before the revision of the first event that
            // does not fit, except that the first revision is always kept whole. No event
            // of the range lies strictly between the kept ones and that revision.
            let first_main = found[0].0.main;
            let boundary_main = found[limit].0.main;
            let keep_main = if boundary_main == first_main {
                first_main
            } else {
                boundary_main - 1
            };
            cut = found.partition_point(|(r, _)| r.main <= keep_main);
            through_revision = keep_main;
        }
        found.truncate(cut);
        Ok(History {
            events: found.into_iter().map(|(_, e)| e).collect(),
            through_revision,
        })
    }

    /// Answers a range request as of the current revision, exactly as etcd's
    /// `applierV3backend.Range`: the header is left `None` for the caller to fill (etcd's
    /// header revision is [`Mvcc::current_revision`]).
    pub fn range(&self, req: &RangeRequest) -> Result<RangeResponse, EtcdError> {
        self.range_at(req, self.current_revision)
    }

    /// A range as seen by a request whose own current revision is `cur_rev` (inside a
    /// write txn, one past the store's after the txn's first change).
    fn range_at(&self, req: &RangeRequest, cur_rev: i64) -> Result<RangeResponse, EtcdError> {
        if req.revision > cur_rev {
            return Err(EtcdError::FutureRev);
        }
        let rev = if req.revision <= 0 {
            cur_rev
        } else {
            req.revision
        };
        if rev < self.compact_revision {
            return Err(EtcdError::Compacted);
        }
        let found = self.visible(&KeyRange::new(&req.key, &req.range_end), rev);
        let count = found.len() as i64;
        let mut kvs: Vec<KeyValue> = Vec::new();
        if !req.count_only {
            // etcd fetches everything when it must sort or filter, and otherwise one more
            // than the limit so that it can tell whether there is more.
            let needs_all = req.sort_order != range_request::SortOrder::None as i32
                || req.min_mod_revision != 0
                || req.max_mod_revision != 0
                || req.min_create_revision != 0
                || req.max_create_revision != 0;
            let fetch = if !needs_all && req.limit > 0 {
                usize::try_from(req.limit)
                    .unwrap_or(usize::MAX)
                    .saturating_add(1)
            } else {
                usize::MAX
            };
            kvs = found
                .iter()
                .take(fetch)
                .map(|(_, kv)| (*kv).clone())
                .collect();
        }
        // The revision filters apply after the fetch and do not change `count`.
        kvs.retain(|kv| {
            (req.max_mod_revision == 0 || kv.mod_revision <= req.max_mod_revision)
                && (req.min_mod_revision == 0 || kv.mod_revision >= req.min_mod_revision)
                && (req.max_create_revision == 0 || kv.create_revision <= req.max_create_revision)
                && (req.min_create_revision == 0 || kv.create_revision >= req.min_create_revision)
        });
        sort_kvs(&mut kvs, req.sort_order, req.sort_target);
        let mut more = false;
        if req.limit > 0 {
            let limit = usize::try_from(req.limit).unwrap_or(usize::MAX);
            if kvs.len() > limit {
                kvs.truncate(limit);
                more = true;
            }
        }
        if req.keys_only {
            for kv in &mut kvs {
                kv.value.clear();
            }
        }
        debug_assert!(kvs.len() as i64 <= count);
        Ok(RangeResponse {
            header: None,
            kvs,
            more,
            count,
        })
    }

    /// Stores a key-value (etcd's `Put`). `lease_exists` answers whether a lease id is
    /// currently granted. The durable changes are appended to `batch`, the watch event to
    /// `events`; on error neither nor the store changes. The header is left `None` (etcd's
    /// header revision is the new [`Mvcc::current_revision`]).
    pub fn put(
        &mut self,
        req: &PutRequest,
        lease_exists: &dyn Fn(i64) -> bool,
        batch: &mut WriteBatch,
        events: &mut Vec<Event>,
    ) -> Result<PutResponse, EtcdError> {
        if req.lease != 0 && !lease_exists(req.lease) {
            return Err(EtcdError::LeaseNotFound);
        }
        let mut w = WriteTxn::begin(self);
        match w.put(req) {
            Ok(resp) => {
                w.commit(batch, events);
                Ok(resp)
            }
            Err(e) => {
                w.rollback();
                Err(e)
            }
        }
    }

    /// Deletes a key or a range of keys (etcd's `DeleteRange`). Deleting nothing does not
    /// bump the revision. Changes and events are appended as for [`Mvcc::put`].
    pub fn delete_range(
        &mut self,
        req: &DeleteRangeRequest,
        batch: &mut WriteBatch,
        events: &mut Vec<Event>,
    ) -> Result<DeleteRangeResponse, EtcdError> {
        let mut w = WriteTxn::begin(self);
        let resp = w.delete_range(req);
        w.commit(batch, events);
        Ok(resp)
    }

    /// Runs a transaction (etcd's `Txn`): all compares, nested ones included, are evaluated
    /// against the store before the txn; then the puts and ranges of the chosen branches
    /// are checked (missing key for `ignore_value`/`ignore_lease`, missing lease, future or
    /// compacted range revision) before anything runs; then the chosen ops run in order,
    /// all writes at one main revision. A txn without writes does not bump the revision.
    ///
    /// The top-level header is left `None`; nested responses carry the headers etcd 3.4
    /// gives them (see [`crate::core::apply::apply`]).
    pub fn txn(
        &mut self,
        req: &TxnRequest,
        lease_exists: &dyn Fn(i64) -> bool,
        batch: &mut WriteBatch,
        events: &mut Vec<Event>,
    ) -> Result<TxnResponse, EtcdError> {
        let mut path = Vec::new();
        self.compare_to_path(req, &mut path);
        if !is_txn_readonly(req) {
            self.check_ops(req, &path, &mut 0, &|store, op| {
                store.check_put(op, lease_exists)
            })?;
        }
        self.check_ops(req, &path, &mut 0, &|store, op| store.check_range(op))?;
        let mut w = WriteTxn::begin(self);
        let mut cursor = 0;
        match w.txn(req, &path, &mut cursor) {
            Ok(resp) => {
                debug_assert_eq!(cursor, path.len());
                w.commit(batch, events);
                Ok(resp)
            }
            Err(e) => {
                w.rollback();
                Err(e)
            }
        }
    }

    /// Evaluates the compares of `req` and, depth first, of the nested txns of the branch
    /// it takes, all against the store as it is now (etcd's `compareToPath`).
    fn compare_to_path(&self, req: &TxnRequest, path: &mut Vec<bool>) {
        let ok = req.compare.iter().all(|c| self.compare(c));
        path.push(ok);
        let ops = if ok { &req.success } else { &req.failure };
        for op in ops {
            if let Some(request_op::Request::RequestTxn(t)) = &op.request {
                self.compare_to_path(t, path);
            }
        }
    }

    /// Evaluates one compare at the current revision (etcd's `applyCompare`).
    fn compare(&self, c: &Compare) -> bool {
        let found = self.visible(&KeyRange::new(&c.key, &c.range_end), self.current_revision);
        if found.is_empty() {
            // A missing value cannot be told from an empty one, so etcd fails value
            // compares on missing keys and compares the other targets against zero.
            if c.target == compare::CompareTarget::Value as i32 {
                return false;
            }
            return compare_kv(c, &KeyValue::default());
        }
        found.iter().all(|(_, kv)| compare_kv(c, kv))
    }

    /// Runs `check` over the non-txn ops of the branches `path` selects, depth first.
    fn check_ops(
        &self,
        req: &TxnRequest,
        path: &[bool],
        cursor: &mut usize,
        check: &dyn Fn(&Mvcc, &RequestOp) -> Result<(), EtcdError>,
    ) -> Result<(), EtcdError> {
        let ok = path.get(*cursor).copied().unwrap_or(false);
        *cursor += 1;
        for op in if ok { &req.success } else { &req.failure } {
            match &op.request {
                Some(request_op::Request::RequestTxn(t)) => {
                    self.check_ops(t, path, cursor, check)?
                }
                // etcd's gRPC layer rejects empty ops with this error and its apply step
                // would crash on one; answering the same error keeps apply total.
                None => return Err(EtcdError::KeyNotFound),
                Some(_) => check(self, op)?,
            }
        }
        Ok(())
    }

    /// etcd's `checkRequestPut`, against the store before the txn.
    fn check_put(
        &self,
        op: &RequestOp,
        lease_exists: &dyn Fn(i64) -> bool,
    ) -> Result<(), EtcdError> {
        let Some(request_op::Request::RequestPut(p)) = &op.request else {
            return Ok(());
        };
        if (p.ignore_value || p.ignore_lease)
            && self
                .visible(&KeyRange::Single(&p.key), self.current_revision)
                .is_empty()
        {
            return Err(EtcdError::KeyNotFound);
        }
        if p.lease != 0 && !lease_exists(p.lease) {
            return Err(EtcdError::LeaseNotFound);
        }
        Ok(())
    }

    /// etcd's `checkRequestRange`, against the store before the txn.
    fn check_range(&self, op: &RequestOp) -> Result<(), EtcdError> {
        let Some(request_op::Request::RequestRange(r)) = &op.request else {
            return Ok(());
        };
        if r.revision == 0 {
            Ok(())
        } else if r.revision > self.current_revision {
            Err(EtcdError::FutureRev)
        } else if r.revision < self.compact_revision {
            Err(EtcdError::Compacted)
        } else {
            Ok(())
        }
    }

    /// Compacts the store at `rev` (etcd's `Compact`): drops every revision a read at
    /// `rev` or later cannot see, so reads below `rev` fail with `Compacted` from now on.
    /// Appends to `batch` the `scheduledCompactRev` meta key, a delete per dropped
    /// revision (in revision order) and the `finishedCompactRev` meta key.
    pub fn compact(
        &mut self,
        rev: i64,
        batch: &mut WriteBatch,
    ) -> Result<CompactionResponse, EtcdError> {
        if rev <= self.compact_revision {
            return Err(EtcdError::Compacted);
        }
        if rev > self.current_revision {
            return Err(EtcdError::FutureRev);
        }
        let rev_bytes = encode_revision(Revision { main: rev, sub: 0 }, false);
        batch.ops.push(BatchOp::Put {
            bucket: Bucket::Meta,
            key: SCHEDULED_COMPACT_KEY.to_vec(),
            value: rev_bytes.clone(),
        });
        let mut dropped = self.compact_in_memory(rev);
        dropped.sort();
        batch
            .ops
            .extend(dropped.into_iter().map(|(r, tomb)| BatchOp::Delete {
                bucket: Bucket::Key,
                key: encode_revision(r, tomb),
            }));
        batch.ops.push(BatchOp::Put {
            bucket: Bucket::Meta,
            key: FINISHED_COMPACT_KEY.to_vec(),
            value: rev_bytes,
        });
        Ok(CompactionResponse { header: None })
    }

    /// Drops what a compaction at `rev` drops and records `rev` as the compact revision.
    fn compact_in_memory(&mut self, rev: i64) -> Vec<(Revision, bool)> {
        debug_assert!(rev > self.compact_revision && rev <= self.current_revision);
        let mut dropped = Vec::new();
        self.index.retain(|_, ki| ki.compact(rev, &mut dropped));
        self.compact_revision = rev;
        dropped
    }

    /// etcd's `HashKV`: a CRC-32C over the `key` bucket's entries up to revision `rev`
    /// (0 = current), skipping entries at or below the compact revision that a read at
    /// `rev` would not see. Returns the hash and the compact revision. Equal stores hash
    /// equal, and a store built by the same requests as an etcd member hashes as it does.
    pub fn hash_kv(&self, rev: i64) -> Result<(u32, i64), EtcdError> {
        if rev > 0 && rev <= self.compact_revision {
            return Err(EtcdError::Compacted);
        }
        if rev > 0 && rev > self.current_revision {
            return Err(EtcdError::FutureRev);
        }
        let rev = if rev == 0 { self.current_revision } else { rev };
        let keep: BTreeSet<Revision> = self
            .index
            .values()
            .filter_map(|ki| ki.get(rev).map(|(r, _)| r))
            .collect();
        let mut entries: Vec<(Revision, bool, Vec<u8>)> = Vec::new();
        for (key, ki) in &self.index {
            for g in &ki.generations {
                for (r, kv) in &g.puts {
                    entries.push((*r, false, kv.encode_to_vec()));
                }
                if let Some(t) = g.tombstone {
                    entries.push((t, true, tombstone_kv(key).encode_to_vec()));
                }
            }
        }
        entries.sort();
        let mut h = Crc32c::new();
        h.update(KEY_BUCKET_NAME);
        for (r, tomb, value) in &entries {
            if r.main > rev {
                continue;
            }
            if r.main <= self.compact_revision && !keep.is_empty() && !keep.contains(r) {
                continue;
            }
            h.update(&encode_revision(*r, *tomb));
            h.update(value);
        }
        Ok((h.sum(), self.compact_revision))
    }

    /// Rebuilds a store from the `key` and `meta` buckets its batches wrote (what a
    /// restart does). Unknown meta keys are ignored. A malformed entry, or a tombstone
    /// for a key that does not exist, is `Corrupt`. If a compaction was scheduled but not
    /// finished, it is redone in memory, as etcd does.
    pub fn restore(
        key_bucket: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
        meta_bucket: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
    ) -> Result<Mvcc, EtcdError> {
        let corrupt = |what: String| EtcdError::Corrupt(what);
        let mut finished = None;
        let mut scheduled = None;
        for (k, v) in meta_bucket {
            let slot = if k == FINISHED_COMPACT_KEY {
                &mut finished
            } else if k == SCHEDULED_COMPACT_KEY {
                &mut scheduled
            } else {
                continue;
            };
            match decode_revision(&v) {
                Some((r, false)) => *slot = Some(r.main),
                _ => return Err(corrupt(format!("bad compact revision {v:?}"))),
            }
        }
        let mut entries = Vec::new();
        for (k, v) in key_bucket {
            let (rev, tomb) =
                decode_revision(&k).ok_or_else(|| corrupt(format!("bad revision key {k:?}")))?;
            let kv = KeyValue::decode(v.as_slice())
                .map_err(|e| corrupt(format!("bad key-value at {rev:?}: {e}")))?;
            entries.push((rev, tomb, kv));
        }
        entries.sort_by_key(|(rev, _, _)| *rev);
        let mut store = Mvcc::new();
        let mut last: Option<Revision> = None;
        for (rev, tomb, kv) in entries {
            if rev.main < 1 || rev.sub < 0 || last == Some(rev) || kv.key.is_empty() {
                return Err(corrupt(format!("bad entry at {rev:?}")));
            }
            last = Some(rev);
            store.current_revision = store.current_revision.max(rev.main);
            if tomb {
                match store.index.get_mut(&kv.key) {
                    Some(ki) if ki.is_live() => ki.tombstone(rev),
                    _ => return Err(corrupt(format!("tombstone of a missing key at {rev:?}"))),
                }
            } else {
                let live = store.index.get(&kv.key).is_some_and(KeyIndex::is_live);
                if kv.mod_revision != rev.main
                    || kv.version < 1
                    || kv.create_revision < 1
                    || kv.create_revision > kv.mod_revision
                    || (!live && kv.version == 1 && kv.create_revision != rev.main)
                {
                    return Err(corrupt(format!("inconsistent key-value at {rev:?}")));
                }
                store.index.entry(kv.key.clone()).or_default().put(rev, kv);
            }
        }
        if let Some(f) = finished {
            store.compact_revision = f;
            store.current_revision = store.current_revision.max(f);
        }
        if let Some(s) = scheduled {
            if s > store.compact_revision && s <= store.current_revision {
                store.compact_in_memory(s);
            }
        }
        store.live_keys = store.count_live_keys();
        Ok(store)
    }
}

/// The value etcd stores for a tombstone: a key-value with only the key.
fn tombstone_kv(key: &[u8]) -> KeyValue {
    KeyValue {
        key: key.to_vec(),
        ..KeyValue::default()
    }
}

/// Sorts `kvs` as etcd's `Range` does; `kvs` arrives in ascending key order.
fn sort_kvs(kvs: &mut [KeyValue], order: i32, target: i32) {
    use range_request::{SortOrder, SortTarget};
    let mut order = order;
    // etcd sorts ascending by default whenever the target is not the key.
    if target != SortTarget::Key as i32 && order == SortOrder::None as i32 {
        order = SortOrder::Ascend as i32;
    }
    let descend = if order == SortOrder::Ascend as i32 {
        false
    } else if order == SortOrder::Descend as i32 {
        true
    } else {
        // etcd leaves the order alone for NONE and for unknown orders.
        return;
    };
    let Ok(target) = SortTarget::try_from(target) else {
        // etcd 3.4 would crash on an unknown target; validation rejects it beforehand.
        return;
    };
    let key_fn = |a: &KeyValue, b: &KeyValue| match target {
        SortTarget::Key => a.key.cmp(&b.key),
        SortTarget::Version => a.version.cmp(&b.version),
        SortTarget::Create => a.create_revision.cmp(&b.create_revision),
        SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
        SortTarget::Value => a.value.cmp(&b.value),
    };
    // A stable sort on the (possibly reversed) comparison keeps ties in key order, as
    // Go's insertion sort does for the small inputs where its order is well defined.
    if descend {
        kvs.sort_by(|a, b| key_fn(b, a));
    } else {
        kvs.sort_by(key_fn);
    }
}

/// etcd's `compareKV`: compares one key-value against a compare's target value.
fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    use compare::{CompareResult, CompareTarget, TargetUnion};
    let int_target =
        |pick: fn(&TargetUnion) -> Option<i64>| c.target_union.as_ref().and_then(pick).unwrap_or(0);
    let ordering = match CompareTarget::try_from(c.target) {
        Ok(CompareTarget::Value) => {
            let v: &[u8] = match &c.target_union {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_slice().cmp(v)
        }
        Ok(CompareTarget::Create) => kv.create_revision.cmp(&int_target(|t| match t {
            TargetUnion::CreateRevision(r) => Some(*r),
            _ => None,
        })),
        Ok(CompareTarget::Mod) => kv.mod_revision.cmp(&int_target(|t| match t {
            TargetUnion::ModRevision(r) => Some(*r),
            _ => None,
        })),
        Ok(CompareTarget::Version) => kv.version.cmp(&int_target(|t| match t {
            TargetUnion::Version(r) => Some(*r),
            _ => None,
        })),
        Ok(CompareTarget::Lease) => kv.lease.cmp(&int_target(|t| match t {
            TargetUnion::Lease(r) => Some(*r),
            _ => None,
        })),
        // etcd leaves the result at "equal" for targets it does not know.
        Err(_) => std::cmp::Ordering::Equal,
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => ordering.is_eq(),
        Ok(CompareResult::NotEqual) => ordering.is_ne(),
        Ok(CompareResult::Greater) => ordering.is_gt(),
        Ok(CompareResult::Less) => ordering.is_lt(),
        // etcd treats unknown comparison operators as satisfied.
        Err(_) => true,
    }
}

/// etcd's `isTxnReadonly`: a txn is read-only iff every op of both branches is a range.
fn is_txn_readonly(req: &TxnRequest) -> bool {
    req.success
        .iter()
        .chain(&req.failure)
        .all(|op| matches!(op.request, Some(request_op::Request::RequestRange(_))))
}

/// A header carrying only a revision, as etcd's nested txn responses do.
fn rev_header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..ResponseHeader::default()
    })
}

/// One write request in progress (etcd's `storeTxnWrite`): changes go straight into the
/// index at `begin_rev + 1`, and the previous state of every touched key is saved so that
/// a failure can undo them.
struct WriteTxn<'a> {
    /// The store being written.
    store: &'a mut Mvcc,
    /// The store's revision when the request began.
    begin_rev: i64,
    /// The key changes so far, in order: a change's index is its sub revision. Deletes
    /// are key-values with only the key.
    changes: Vec<KeyValue>,
    /// The durable changes so far.
    ops: Vec<BatchOp>,
    /// Where the history of every touched key ended before the request (`None`: it had
    /// none), and whether the key existed then.
    undo: BTreeMap<Vec<u8>, (Option<IndexMark>, bool)>,
}

impl<'a> WriteTxn<'a> {
    /// Starts a write request on `store`.
    fn begin(store: &'a mut Mvcc) -> Self {
        let begin_rev = store.current_revision;
        WriteTxn {
            store,
            begin_rev,
            changes: Vec::new(),
            ops: Vec::new(),
            undo: BTreeMap::new(),
        }
    }

    /// The revision reads inside the request see: the txn's own after its first change.
    fn cur_rev(&self) -> i64 {
        self.begin_rev + i64::from(!self.changes.is_empty())
    }

    /// The revision of the next change.
    fn next_revision(&self) -> Revision {
        Revision {
            main: self.begin_rev + 1,
            sub: self.changes.len() as i64,
        }
    }

    /// Marks where `key`'s history ends before its first change in this request. This
    /// costs the same however long the key's history is.
    fn save(&mut self, key: &[u8]) {
        if !self.undo.contains_key(key) {
            let before = self.store.index.get(key);
            let mark = before.map(KeyIndex::mark);
            let live = before.is_some_and(KeyIndex::is_live);
            self.undo.insert(key.to_vec(), (mark, live));
        }
    }

    /// etcd's `Put` inside a write txn (lease existence is checked by the caller).
    fn put(&mut self, req: &PutRequest) -> Result<PutResponse, EtcdError> {
        let cur = self.cur_rev();
        let prev = self
            .store
            .index
            .get(&req.key)
            .and_then(|ki| ki.get(cur))
            .map(|(_, kv)| kv.clone());
        if (req.ignore_value || req.ignore_lease) && prev.is_none() {
            return Err(EtcdError::KeyNotFound);
        }
        let value = match (&prev, req.ignore_value) {
            (Some(p), true) => p.value.clone(),
            _ => req.value.clone(),
        };
        let lease = match (&prev, req.ignore_lease) {
            (Some(p), true) => p.lease,
            _ => req.lease,
        };
        let rev = self.next_revision();
        let (create_revision, version) = prev
            .as_ref()
            .map_or((rev.main, 1), |p| (p.create_revision, p.version + 1));
        let kv = KeyValue {
            key: req.key.clone(),
            create_revision,
            mod_revision: rev.main,
            version,
            value,
            lease,
        };
        debug_assert!(kv.create_revision <= kv.mod_revision && kv.version >= 1);
        self.save(&req.key);
        self.ops.push(BatchOp::Put {
            bucket: Bucket::Key,
            key: encode_revision(rev, false),
            value: kv.encode_to_vec(),
        });
        let ki = self.store.index.entry(req.key.clone()).or_default();
        if !ki.is_live() {
            self.store.live_keys += 1;
        }
        ki.put(rev, kv.clone());
        self.changes.push(kv);
        Ok(PutResponse {
            header: None,
            prev_kv: if req.prev_kv { prev } else { None },
        })
    }

    /// etcd's `DeleteRange` inside a write txn.
    fn delete_range(&mut self, req: &DeleteRangeRequest) -> DeleteRangeResponse {
        let range = KeyRange::new(&req.key, &req.range_end);
        let found: Vec<KeyValue> = self
            .store
            .visible(&range, self.cur_rev())
            .into_iter()
            .map(|(_, kv)| kv.clone())
            .collect();
        for kv in &found {
            debug_assert!(range.contains(&kv.key));
            let rev = self.next_revision();
            self.save(&kv.key);
            let tomb = tombstone_kv(&kv.key);
            self.ops.push(BatchOp::Put {
                bucket: Bucket::Key,
                key: encode_revision(rev, true),
                value: tomb.encode_to_vec(),
            });
            if let Some(ki) = self.store.index.get_mut(&kv.key) {
                ki.tombstone(rev);
                self.store.live_keys -= 1;
            }
            self.changes.push(tomb);
        }
        DeleteRangeResponse {
            header: None,
            deleted: found.len() as i64,
            prev_kvs: if req.prev_kv { found } else { Vec::new() },
        }
    }

    /// Runs the branch `path[*cursor]` selects, recursing into nested txns. Nested
    /// responses get etcd 3.4's headers: ranges, puts and deletes carry the revision they
    /// observed or wrote at, nested txns an empty header.
    fn txn(
        &mut self,
        req: &TxnRequest,
        path: &[bool],
        cursor: &mut usize,
    ) -> Result<TxnResponse, EtcdError> {
        let succeeded = path.get(*cursor).copied().unwrap_or(false);
        *cursor += 1;
        let ops = if succeeded {
            &req.success
        } else {
            &req.failure
        };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match &op.request {
                Some(request_op::Request::RequestRange(r)) => {
                    let cur = self.cur_rev();
                    let mut resp = self.store.range_at(r, cur)?;
                    resp.header = rev_header(cur);
                    response_op::Response::ResponseRange(resp)
                }
                Some(request_op::Request::RequestPut(p)) => {
                    let mut resp = self.put(p)?;
                    resp.header = rev_header(self.begin_rev + 1);
                    response_op::Response::ResponsePut(resp)
                }
                Some(request_op::Request::RequestDeleteRange(d)) => {
                    let mut resp = self.delete_range(d);
                    resp.header = rev_header(self.cur_rev());
                    response_op::Response::ResponseDeleteRange(resp)
                }
                Some(request_op::Request::RequestTxn(t)) => {
                    let mut resp = self.txn(t, path, cursor)?;
                    resp.header = Some(ResponseHeader::default());
                    response_op::Response::ResponseTxn(resp)
                }
                None => return Err(EtcdError::KeyNotFound),
            };
            responses.push(ResponseOp {
                response: Some(response),
            });
        }
        Ok(TxnResponse {
            header: None,
            succeeded,
            responses,
        })
    }

    /// Makes the request's changes final: bumps the revision if anything changed and
    /// hands out the durable changes and the watch events.
    fn commit(self, batch: &mut WriteBatch, events: &mut Vec<Event>) {
        if self.changes.is_empty() {
            debug_assert!(self.ops.is_empty());
            return;
        }
        let rev = self.begin_rev + 1;
        self.store.current_revision = rev;
        batch.ops.extend(self.ops);
        let begin_rev = self.begin_rev;
        let index = &self.store.index;
        events.extend(self.changes.into_iter().map(|mut kv| {
            // The value before the request (what etcd's watch server reads at revision
            // - 1) is still in the key's history: the request only added revisions
            // above `begin_rev`, which a read at `begin_rev` does not see.
            let prev_kv = index
                .get(&kv.key)
                .and_then(|ki| ki.get(begin_rev))
                .map(|(_, p)| p.clone());
            // Deletes are the only changes without a create revision; their event
            // carries the delete's revision as mod revision.
            let kind = if kv.create_revision == 0 {
                kv.mod_revision = rev;
                EventType::Delete
            } else {
                EventType::Put
            };
            Event {
                r#type: kind as i32,
                kv: Some(kv),
                prev_kv,
            }
        }));
    }

    /// Undoes every change of the request.
    fn rollback(self) {
        for (key, (mark, was_live)) in self.undo {
            let is_live = self.store.index.get(&key).is_some_and(KeyIndex::is_live);
            match mark {
                Some(mark) => {
                    if let Some(ki) = self.store.index.get_mut(&key) {
                        ki.truncate_to(&mark);
                    }
                }
                None => {
                    self.store.index.remove(&key);
                }
            }
            self.store.live_keys =
                self.store.live_keys + usize::from(was_live) - usize::from(is_live);
        }
        debug_assert_eq!(self.store.current_revision, self.begin_rev);
    }
}

#[cfg(test)]
mod tests;
