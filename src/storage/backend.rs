//! The MVCC backend: named buckets of ordered byte keys, written in atomic batches.
//!
//! [`SledBackend`] is the production implementation; [`MemBackend`] serves simulation and
//! tests and can model losing unsynced batches in a crash.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A bucket (etcd's bbolt buckets): each is an ordered map of byte keys to byte values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Bucket {
    /// Revisions to `mvccpb.KeyValue` (etcd's `key` bucket, etcd's revision encoding).
    Key,
    /// Consistent index, compaction progress and other bookkeeping (etcd's `meta` bucket).
    Meta,
    /// Leases (etcd's `lease` bucket).
    Lease,
    /// Auth switch and revision (etcd's `auth` bucket).
    Auth,
    /// Users (etcd's `authUsers` bucket).
    AuthUsers,
    /// Roles (etcd's `authRoles` bucket).
    AuthRoles,
    /// Cluster membership (etcd's `members` bucket).
    Members,
    /// Raised alarms (etcd's `alarm` bucket): each key is an encoded `AlarmMember`, each
    /// value empty, as etcd stores them.
    Alarm,
    /// Ids of removed members, which may never rejoin (etcd's `members_removed` bucket).
    MembersRemoved,
}

/// One change in a [`WriteBatch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchOp {
    /// Set `key` in `bucket` to `value`.
    Put {
        /// The bucket.
        bucket: Bucket,
        /// The key.
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// Remove `key` from `bucket` (no error if absent).
    Delete {
        /// The bucket.
        bucket: Bucket,
        /// The key.
        key: Vec<u8>,
    },
}

/// A set of changes applied atomically: after a crash either all or none are visible.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    /// The changes, applied in order.
    pub ops: Vec<BatchOp>,
}

impl Bucket {
    /// Every bucket, in a fixed order.
    pub const ALL: [Bucket; 9] = [
        Bucket::Key,
        Bucket::Meta,
        Bucket::Lease,
        Bucket::Auth,
        Bucket::AuthUsers,
        Bucket::AuthRoles,
        Bucket::Members,
        Bucket::Alarm,
        Bucket::MembersRemoved,
    ];

    /// etcd's name for the bucket (its bbolt bucket name).
    pub fn etcd_name(self) -> &'static str {
        match self {
            Bucket::Key => "key",
            Bucket::Meta => "meta",
            Bucket::Lease => "lease",
            Bucket::Auth => "auth",
            Bucket::AuthUsers => "authUsers",
            Bucket::AuthRoles => "authRoles",
            Bucket::Members => "members",
            Bucket::Alarm => "alarm",
            Bucket::MembersRemoved => "members_removed",
        }
    }

    /// The bucket's on-disk tag, the first byte of its keys in [`SledBackend`]. These
    /// numbers are a storage format and must never change or be reused.
    pub fn tag(self) -> u8 {
        match self {
            Bucket::Key => 1,
            Bucket::Meta => 2,
            Bucket::Lease => 3,
            Bucket::Auth => 4,
            Bucket::AuthUsers => 5,
            Bucket::AuthRoles => 6,
            Bucket::Members => 7,
            Bucket::Alarm => 8,
            Bucket::MembersRemoved => 9,
        }
    }
}

impl WriteBatch {
    /// Returns an empty batch.
    pub fn new() -> WriteBatch {
        WriteBatch::default()
    }

    /// Adds a put of `key` to `value` in `bucket`.
    pub fn put(&mut self, bucket: Bucket, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push(BatchOp::Put {
            bucket,
            key: key.into(),
            value: value.into(),
        });
    }

    /// Adds a delete of `key` from `bucket`.
    pub fn delete(&mut self, bucket: Bucket, key: impl Into<Vec<u8>>) {
        self.ops.push(BatchOp::Delete {
            bucket,
            key: key.into(),
        });
    }

    /// Whether the batch has no changes.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// The MVCC state's storage: buckets of ordered byte keys, changed in atomic batches.
/// Synchronous: the actor that owns it calls it directly.
pub trait Backend: Send {
    /// Applies `batch` atomically: after a crash either all of it or none of it is visible,
    /// and batches become durable in the order written. Durable only after [`Backend::sync`].
    fn write(&mut self, batch: &WriteBatch) -> io::Result<()>;
    /// [`Backend::write`] of a batch the caller gives up, which a backend that keeps
    /// batches (see [`super::pipelined::PipelinedBackend`]) takes without a copy.
    fn write_owned(&mut self, batch: WriteBatch) -> io::Result<()> {
        self.write(&batch)
    }
    /// The value of `key` in `bucket`.
    fn get(&self, bucket: Bucket, key: &[u8]) -> io::Result<Option<Vec<u8>>>;
    /// Every entry of `bucket`, in key order.
    fn scan(&self, bucket: Bucket) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>>;
    /// The backend's size as the quota measures it and Status reports it (etcd's
    /// `dbSize`): the most bytes of keys and values held at once since the backend was
    /// opened or last defragmented. Like etcd's bbolt file, it grows with the data but
    /// does not shrink when data is deleted, only on [`Backend::defragment`]. Counting
    /// stored bytes rather than the storage engine's files makes every member, on any
    /// engine, report the same size for the same data.
    fn size_bytes(&self) -> u64;
    /// The bytes of keys and values held now (etcd's `dbSizeInUse`).
    fn size_in_use_bytes(&self) -> u64;
    /// Gives back the space of deleted data: [`Backend::size_bytes`] falls to
    /// [`Backend::size_in_use_bytes`] (etcd's defragmentation rewrites its file).
    fn defragment(&mut self) -> io::Result<()>;
    /// Makes everything written so far durable.
    fn sync(&mut self) -> io::Result<()>;
}

/// The buckets of a [`MemBackend`].
type Buckets = BTreeMap<Bucket, BTreeMap<Vec<u8>, Vec<u8>>>;

/// Applies `batch` to `buckets`, returning the change in stored bytes.
fn apply_batch(buckets: &mut Buckets, batch: &WriteBatch) -> i64 {
    let mut delta_bytes = 0i64;
    for op in &batch.ops {
        match op {
            BatchOp::Put { bucket, key, value } => {
                let old = buckets
                    .entry(*bucket)
                    .or_default()
                    .insert(key.clone(), value.clone());
                delta_bytes += (key.len() + value.len()) as i64;
                if let Some(old) = old {
                    delta_bytes -= (key.len() + old.len()) as i64;
                }
            }
            BatchOp::Delete { bucket, key } => {
                if let Some(old) = buckets.get_mut(bucket).and_then(|b| b.remove(key)) {
                    delta_bytes -= (key.len() + old.len()) as i64;
                }
            }
        }
    }
    delta_bytes
}

/// How many unsynced batches a [`MemBackend`] holds before it treats the oldest as
/// persisted, as a real engine eventually does on its own; this bounds its memory when a
/// caller rarely syncs.
pub const MEM_BACKEND_MAX_UNSYNCED_BATCHES: usize = 4096;

/// The shared state of a [`MemBackend`].
#[derive(Debug, Default)]
struct MemState {
    /// What reads see.
    current: Buckets,
    /// Key and value bytes in `current`.
    current_size_bytes: u64,
    /// The most `current_size_bytes` has been since the last defragmentation or crash.
    high_water_bytes: u64,
    /// What survives [`MemBackend::crash`]: `current` as of the last sync.
    durable: Buckets,
    durable_size_bytes: u64,
    /// Batches written since the last sync, in order, so a crash can keep a prefix.
    unsynced: Vec<WriteBatch>,
    /// When set, writes and syncs fail with an injected error.
    fail_writes: bool,
}

/// An in-memory [`Backend`] for simulation and tests. Clones share the same storage (it is
/// an `Arc` inside), so a simulation can keep a handle while a node is crashed, call
/// [`MemBackend::crash`], and give a clone to the restarted node.
#[derive(Debug, Clone, Default)]
pub struct MemBackend {
    state: Arc<Mutex<MemState>>,
}

impl MemBackend {
    /// Returns an empty backend.
    pub fn new() -> MemBackend {
        MemBackend::default()
    }

    fn lock(&self) -> MutexGuard<'_, MemState> {
        // Recover from poisoning so a test reports the original panic, not this one.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Simulates a crash: batches written after the last [`Backend::sync`] are lost.
    pub fn crash(&self) {
        let mut state = self.lock();
        state.current = state.durable.clone();
        state.current_size_bytes = state.durable_size_bytes;
        // A restarted member opens its backend afresh.
        state.high_water_bytes = state.current_size_bytes;
        state.unsynced.clear();
    }

    /// Simulates a crash in which the storage engine had already persisted some of the
    /// batches written after the last sync: a prefix of them, chosen by `rng_seed`, survives
    /// (never a part of a batch, and never a later batch without the earlier ones).
    pub fn crash_keeping_some(&self, rng_seed: u64) {
        let mut state = self.lock();
        let kept = ChaCha8Rng::seed_from_u64(rng_seed).gen_range(0..=state.unsynced.len());
        let unsynced = std::mem::take(&mut state.unsynced);
        let mut durable = std::mem::take(&mut state.durable);
        let mut size_bytes = state.durable_size_bytes as i64;
        for batch in &unsynced[..kept] {
            size_bytes += apply_batch(&mut durable, batch);
        }
        state.current = durable.clone();
        state.durable = durable;
        state.current_size_bytes = size_bytes as u64;
        state.durable_size_bytes = size_bytes as u64;
        state.high_water_bytes = size_bytes as u64;
    }

    /// Makes [`Backend::write`] and [`Backend::sync`] fail with an `io::Error` while `fail`
    /// is true (nothing is applied by a failed write).
    pub fn set_fail_writes(&self, fail: bool) {
        self.lock().fail_writes = fail;
    }

    /// Returns an independent copy of the current state (unsynced batches included).
    pub fn fork(&self) -> MemBackend {
        let state = self.lock();
        let copy = MemState {
            current: state.current.clone(),
            current_size_bytes: state.current_size_bytes,
            high_water_bytes: state.high_water_bytes,
            durable: state.durable.clone(),
            durable_size_bytes: state.durable_size_bytes,
            unsynced: state.unsynced.clone(),
            fail_writes: state.fail_writes,
        };
        MemBackend {
            state: Arc::new(Mutex::new(copy)),
        }
    }
}

fn injected_fault() -> io::Error {
    io::Error::other("injected backend fault (MemBackend::set_fail_writes)")
}

impl Backend for MemBackend {
    fn write(&mut self, batch: &WriteBatch) -> io::Result<()> {
        let mut state = self.lock();
        if state.fail_writes {
            return Err(injected_fault());
        }
        let delta_bytes = apply_batch(&mut state.current, batch);
        state.current_size_bytes = (state.current_size_bytes as i64 + delta_bytes) as u64;
        state.high_water_bytes = state.high_water_bytes.max(state.current_size_bytes);
        state.unsynced.push(batch.clone());
        if state.unsynced.len() > MEM_BACKEND_MAX_UNSYNCED_BATCHES {
            let persisted: Vec<WriteBatch> = state
                .unsynced
                .drain(..MEM_BACKEND_MAX_UNSYNCED_BATCHES / 2)
                .collect();
            let mut size_bytes = state.durable_size_bytes as i64;
            for batch in &persisted {
                size_bytes += apply_batch(&mut state.durable, batch);
            }
            state.durable_size_bytes = size_bytes as u64;
        }
        assert!(state.unsynced.len() <= MEM_BACKEND_MAX_UNSYNCED_BATCHES);
        Ok(())
    }

    fn get(&self, bucket: Bucket, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        let state = self.lock();
        Ok(state.current.get(&bucket).and_then(|b| b.get(key)).cloned())
    }

    fn scan(&self, bucket: Bucket) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let state = self.lock();
        Ok(state
            .current
            .get(&bucket)
            .map(|b| b.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default())
    }

    fn size_bytes(&self) -> u64 {
        self.lock().high_water_bytes
    }

    fn size_in_use_bytes(&self) -> u64 {
        self.lock().current_size_bytes
    }

    fn defragment(&mut self) -> io::Result<()> {
        let mut state = self.lock();
        state.high_water_bytes = state.current_size_bytes;
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        let mut state = self.lock();
        if state.fail_writes {
            return Err(injected_fault());
        }
        let unsynced = std::mem::take(&mut state.unsynced);
        let mut durable = std::mem::take(&mut state.durable);
        for batch in &unsynced {
            apply_batch(&mut durable, batch);
        }
        state.durable = durable;
        state.durable_size_bytes = state.current_size_bytes;
        Ok(())
    }
}

/// The page cache of [`SledBackend`]'s sled database (sled's default is 1 GiB).
pub const SLED_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// The production [`Backend`] on sled. All buckets share one sled tree, each key prefixed
/// with its bucket's [`Bucket::tag`], so a batch spanning buckets is one atomic sled batch.
///
/// It counts the bytes of keys and values it holds (bucket tags excluded, as
/// [`MemBackend`] counts them) as it writes, for [`Backend::size_bytes`].
#[derive(Debug)]
pub struct SledBackend {
    db: sled::Db,
    /// Key and value bytes stored now.
    in_use_bytes: u64,
    /// The most `in_use_bytes` has been since opening or the last defragmentation.
    high_water_bytes: u64,
    /// What opening read, per bucket, for the first scan of each bucket to take.
    preloaded: Preloaded,
    /// The greatest (prefixed) key of the `Key` bucket ever stored or written. Revision
    /// keys only grow, so almost every put to that bucket is beyond it and provably new:
    /// its size needs no read of an old value (a read per written key was much of the
    /// commit's cost). Invariant: no stored `Key`-bucket key is greater.
    key_bucket_max: Option<Vec<u8>>,
}

/// The entries [`SledBackend::open`] read to count the stored bytes, kept per bucket tag
/// so that the restart's scans of every bucket take them instead of reading the whole
/// database a second time (that second pass was over a quarter of a restart's time
/// with 1,000,000 keys). Invariant: empty once anything was written after opening, so a
/// scan never returns stale entries.
#[derive(Default)]
struct Preloaded(Mutex<BTreeMap<u8, Entries>>);

/// A bucket's entries, in key order.
type Entries = Vec<(Vec<u8>, Vec<u8>)>;

impl std::fmt::Debug for Preloaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let buckets = self.0.lock().map(|m| m.len()).unwrap_or(0);
        write!(f, "Preloaded({buckets} buckets)")
    }
}

impl Preloaded {
    fn take(&self, tag: u8) -> Option<Entries> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&tag)
    }

    fn clear(&self) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if !map.is_empty() {
            map.clear();
        }
    }
}

impl SledBackend {
    /// Opens (or creates) the sled database in the directory `path`.
    pub fn open(path: &Path) -> io::Result<SledBackend> {
        // The MVCC state is held in memory above the backend, so sled's page cache only
        // serves restarts and snapshots: a small one keeps memory near etcd's. Segment
        // cleaning tuned for throughput rewrites less data per write than the default.
        // sled's own fsync every 500 ms is turned off: durability comes from the WAL,
        // and the backend is synced where it matters (before a snapshot lets the WAL
        // release entries, and at a graceful stop). Those periodic fsyncs competed with
        // the WAL's on the same disk: a single client's put p99 was 1.8-2.9x etcd's with
        // them, about 1x without.
        let db = sled::Config::new()
            .path(path)
            .mode(sled::Mode::HighThroughput)
            .cache_capacity(SLED_CACHE_BYTES)
            .flush_every_ms(None)
            .open()?;
        let mut in_use_bytes = 0u64;
        let mut preloaded: BTreeMap<u8, Entries> = BTreeMap::new();
        for item in db.iter() {
            let (key, value) = item?;
            in_use_bytes += (key.len().saturating_sub(1) + value.len()) as u64;
            if let Some((&tag, rest)) = key.split_first() {
                preloaded
                    .entry(tag)
                    .or_default()
                    .push((rest.to_vec(), value.to_vec()));
            }
        }
        Ok(SledBackend {
            in_use_bytes,
            high_water_bytes: in_use_bytes,
            preloaded: Preloaded(Mutex::new(preloaded)),
            key_bucket_max: db
                .scan_prefix([Bucket::Key.tag()])
                .next_back()
                .transpose()?
                .map(|(k, _)| k.to_vec()),
            db,
        })
    }

    /// The change in stored key and value bytes that `batch` makes, reading the values it
    /// replaces or deletes (and, for keys the batch touches more than once, what the
    /// batch itself wrote before).
    /// Also returns the batch's greatest `Key`-bucket key, for `key_bucket_max`.
    fn size_delta_bytes(&self, batch: &WriteBatch) -> io::Result<(i64, Option<Vec<u8>>)> {
        let mut touched: std::collections::HashMap<Vec<u8>, Option<usize>> =
            std::collections::HashMap::new();
        let mut delta_bytes = 0i64;
        let mut batch_max: Option<Vec<u8>> = None;
        for op in &batch.ops {
            let (key, new_len) = match op {
                BatchOp::Put { bucket, key, value } => (sled_key(*bucket, key), Some(value.len())),
                BatchOp::Delete { bucket, key } => (sled_key(*bucket, key), None),
            };
            let beyond_stored = matches!(
                op,
                BatchOp::Put {
                    bucket: Bucket::Key,
                    ..
                }
            ) && self.key_bucket_max.as_ref().is_none_or(|max| key > *max);
            let old_len = match touched.get(&key) {
                Some(len) => *len,
                None if beyond_stored => None,
                None => self.db.get(&key)?.map(|v| v.len()),
            };
            if beyond_stored && batch_max.as_ref().is_none_or(|max| key > *max) {
                batch_max = Some(key.clone());
            }
            let user_key_len = (key.len() - 1) as i64;
            if let Some(old) = old_len {
                delta_bytes -= user_key_len + old as i64;
            }
            if let Some(new) = new_len {
                delta_bytes += user_key_len + new as i64;
            }
            touched.insert(key, new_len);
        }
        Ok((delta_bytes, batch_max))
    }
}

fn sled_key(bucket: Bucket, key: &[u8]) -> Vec<u8> {
    let mut prefixed = Vec::with_capacity(1 + key.len());
    prefixed.push(bucket.tag());
    prefixed.extend_from_slice(key);
    prefixed
}

impl Backend for SledBackend {
    fn write(&mut self, batch: &WriteBatch) -> io::Result<()> {
        self.preloaded.clear();
        let (delta_bytes, batch_max) = self.size_delta_bytes(batch)?;
        if batch_max.is_some() {
            // Raised before the batch is applied: a key beyond every stored one stays
            // absent if the write fails, so the invariant holds either way.
            self.key_bucket_max = batch_max;
        }
        let mut sled_batch = sled::Batch::default();
        for op in &batch.ops {
            match op {
                BatchOp::Put { bucket, key, value } => {
                    sled_batch.insert(sled_key(*bucket, key), value.as_slice())
                }
                BatchOp::Delete { bucket, key } => sled_batch.remove(sled_key(*bucket, key)),
            }
        }
        self.db.apply_batch(sled_batch)?;
        self.in_use_bytes = (self.in_use_bytes as i64 + delta_bytes).max(0) as u64;
        self.high_water_bytes = self.high_water_bytes.max(self.in_use_bytes);
        Ok(())
    }

    fn get(&self, bucket: Bucket, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        Ok(self.db.get(sled_key(bucket, key))?.map(|v| v.to_vec()))
    }

    fn scan(&self, bucket: Bucket) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        if let Some(entries) = self.preloaded.take(bucket.tag()) {
            return Ok(entries);
        }
        let mut entries = Vec::new();
        for item in self.db.scan_prefix([bucket.tag()]) {
            let (key, value) = item?;
            entries.push((key[1..].to_vec(), value.to_vec()));
        }
        Ok(entries)
    }

    fn size_bytes(&self) -> u64 {
        self.high_water_bytes
    }

    fn size_in_use_bytes(&self) -> u64 {
        self.in_use_bytes
    }

    /// sled reuses the space of deleted data by its own background compaction, so
    /// flushing is all the engine needs; the reported size falls to what is in use.
    fn defragment(&mut self) -> io::Result<()> {
        self.db.flush()?;
        self.high_water_bytes = self.in_use_bytes;
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(ops: &[(Bucket, &str, Option<&str>)]) -> WriteBatch {
        let mut batch = WriteBatch::new();
        for (bucket, key, value) in ops {
            match value {
                Some(value) => batch.put(*bucket, key.as_bytes(), value.as_bytes()),
                None => batch.delete(*bucket, key.as_bytes()),
            }
        }
        batch
    }

    fn pairs(items: &[(&str, &str)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        items
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    /// The behaviour every backend must share.
    fn exercise(backend: &mut dyn Backend) {
        assert_eq!(backend.get(Bucket::Key, b"a").unwrap(), None);
        assert!(backend.scan(Bucket::Key).unwrap().is_empty());
        backend
            .write(&batch(&[
                (Bucket::Key, "b", Some("2")),
                (Bucket::Key, "a", Some("1")),
                (Bucket::Meta, "a", Some("meta")),
                (Bucket::Key, "c", Some("3")),
                (Bucket::Key, "c", None),
                (Bucket::Lease, "x", None),
            ]))
            .unwrap();
        assert_eq!(
            backend.get(Bucket::Key, b"a").unwrap().as_deref(),
            Some(&b"1"[..])
        );
        assert_eq!(backend.get(Bucket::Key, b"c").unwrap(), None);
        assert_eq!(
            backend.get(Bucket::Meta, b"a").unwrap().as_deref(),
            Some(&b"meta"[..])
        );
        assert_eq!(
            backend.scan(Bucket::Key).unwrap(),
            pairs(&[("a", "1"), ("b", "2")])
        );
        assert_eq!(backend.scan(Bucket::Meta).unwrap(), pairs(&[("a", "meta")]));
        assert!(backend.scan(Bucket::Members).unwrap().is_empty());
        // Binary keys sort bytewise, including an empty key and 0xff bytes.
        backend
            .write(&batch(&[(Bucket::Auth, "", Some("empty"))]))
            .unwrap();
        let mut binary = WriteBatch::new();
        binary.put(Bucket::Auth, vec![0xff, 0x00], b"hi".to_vec());
        binary.put(Bucket::Auth, vec![0x00], b"lo".to_vec());
        backend.write(&binary).unwrap();
        let keys: Vec<Vec<u8>> = backend
            .scan(Bucket::Auth)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, vec![vec![], vec![0x00], vec![0xff, 0x00]]);
        backend.write(&batch(&[(Bucket::Key, "a", None)])).unwrap();
        assert_eq!(backend.scan(Bucket::Key).unwrap(), pairs(&[("b", "2")]));
        backend.sync().unwrap();
    }

    #[test]
    fn bucket_tags_are_distinct() {
        let tags: std::collections::BTreeSet<u8> = Bucket::ALL.iter().map(|b| b.tag()).collect();
        assert_eq!(tags.len(), Bucket::ALL.len());
    }

    #[test]
    fn mem_backend_basics_and_size() {
        let mut backend = MemBackend::new();
        exercise(&mut backend);
        // Remaining: Key b=2, Meta a=meta, Auth ""=empty, 0x00=lo, ff00=hi.
        assert_eq!(backend.size_in_use_bytes(), 2 + 5 + 5 + 3 + 4);
        backend
            .write(&batch(&[(Bucket::Key, "b", Some("22"))]))
            .unwrap();
        assert_eq!(backend.size_in_use_bytes(), 2 + 5 + 5 + 3 + 4 + 1);
    }

    /// Size accounting every backend must share: the size grows with the data, stays
    /// when data is deleted, and falls to what is in use on defragmentation.
    fn exercise_size(backend: &mut dyn Backend) {
        let start = backend.size_in_use_bytes();
        assert_eq!(backend.size_bytes(), start);
        backend
            .write(&batch(&[
                (Bucket::Key, "k1", Some("0123456789")),
                (Bucket::Key, "k1", Some("01234")),
                (Bucket::Key, "k2", Some("abc")),
            ]))
            .unwrap();
        assert_eq!(backend.size_in_use_bytes(), start + 7 + 5);
        assert_eq!(backend.size_bytes(), start + 12);
        backend
            .write(&batch(&[
                (Bucket::Key, "k1", None),
                (Bucket::Key, "zz", None),
            ]))
            .unwrap();
        assert_eq!(backend.size_in_use_bytes(), start + 5);
        assert_eq!(backend.size_bytes(), start + 12, "deleting does not shrink");
        backend.defragment().unwrap();
        assert_eq!(backend.size_bytes(), start + 5);
        assert_eq!(backend.size_in_use_bytes(), start + 5);
    }

    #[test]
    fn backends_count_size_alike() {
        exercise_size(&mut MemBackend::new());
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("db");
        let mut sled = SledBackend::open(&path).unwrap();
        exercise_size(&mut sled);
        sled.sync().unwrap();
        let in_use = sled.size_in_use_bytes();
        drop(sled);
        // sled's background flusher may hold the file lock for a moment after the drop.
        let mut attempts = 0;
        let reopened = loop {
            match SledBackend::open(&path) {
                Ok(b) => break b,
                Err(e) if attempts < 100 => {
                    attempts += 1;
                    let _ = e;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => panic!("reopening sled: {e}"),
            }
        };
        assert_eq!(reopened.size_in_use_bytes(), in_use);
        assert_eq!(reopened.size_bytes(), in_use);
    }

    #[test]
    fn mem_backend_crash_drops_unsynced_batches() {
        let mut backend = MemBackend::new();
        let survivor = backend.clone();
        backend
            .write(&batch(&[(Bucket::Key, "a", Some("1"))]))
            .unwrap();
        backend.sync().unwrap();
        backend
            .write(&batch(&[
                (Bucket::Key, "a", None),
                (Bucket::Key, "b", Some("2")),
            ]))
            .unwrap();
        assert_eq!(survivor.scan(Bucket::Key).unwrap(), pairs(&[("b", "2")]));
        let size_synced = 2;
        survivor.crash();
        assert_eq!(backend.scan(Bucket::Key).unwrap(), pairs(&[("a", "1")]));
        assert_eq!(backend.size_bytes(), size_synced);
        // A crash right after a sync loses nothing.
        backend.sync().unwrap();
        backend.crash();
        assert_eq!(backend.scan(Bucket::Key).unwrap(), pairs(&[("a", "1")]));
    }

    #[test]
    fn mem_backend_crash_keeping_some_keeps_whole_batches_in_order() {
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..32 {
            let mut backend = MemBackend::new();
            for i in 0..5 {
                let key = format!("k{i}");
                backend
                    .write(&batch(&[
                        (Bucket::Key, &key, Some("v")),
                        (Bucket::Meta, "last", Some(&key)),
                    ]))
                    .unwrap();
            }
            backend.crash_keeping_some(seed);
            let keys = backend.scan(Bucket::Key).unwrap();
            let kept = keys.len();
            let want: Vec<_> = (0..kept)
                .map(|i| (format!("k{i}").into_bytes(), b"v".to_vec()))
                .collect();
            assert_eq!(keys, want);
            let last = backend.get(Bucket::Meta, b"last").unwrap();
            assert_eq!(
                last,
                kept.checked_sub(1).map(|i| format!("k{i}").into_bytes())
            );
            assert_eq!(
                backend.size_bytes(),
                (kept * 3 + if kept > 0 { 6 } else { 0 }) as u64
            );
            // What survived is now durable.
            backend.crash();
            assert_eq!(backend.scan(Bucket::Key).unwrap().len(), kept);
            seen.insert(kept);
        }
        assert!(seen.len() > 2);
    }

    #[test]
    fn mem_backend_bounds_unsynced_batches() {
        let mut backend = MemBackend::new();
        let total = MEM_BACKEND_MAX_UNSYNCED_BATCHES + 10;
        for i in 0..total {
            let key = format!("{i:08}");
            backend
                .write(&batch(&[(Bucket::Key, &key, Some("v"))]))
                .unwrap();
        }
        assert!(backend.lock().unsynced.len() <= MEM_BACKEND_MAX_UNSYNCED_BATCHES);
        backend.crash();
        // The oldest batches were persisted, in order, and their size is accounted for.
        let kept = backend.scan(Bucket::Key).unwrap();
        assert_eq!(kept.len(), MEM_BACKEND_MAX_UNSYNCED_BATCHES / 2);
        assert_eq!(kept[0].0, b"00000000");
        assert_eq!(backend.size_bytes(), kept.len() as u64 * 9);
    }

    #[test]
    fn backends_are_send() {
        fn assert_send<T: Send>() {}
        assert_send::<MemBackend>();
        assert_send::<SledBackend>();
        assert_send::<Box<dyn Backend>>();
    }

    #[test]
    fn mem_backend_faults_and_fork() {
        let mut backend = MemBackend::new();
        backend
            .write(&batch(&[(Bucket::Key, "a", Some("1"))]))
            .unwrap();
        let fork = backend.fork();
        backend.set_fail_writes(true);
        assert!(backend
            .write(&batch(&[(Bucket::Key, "b", Some("2"))]))
            .is_err());
        assert!(backend.sync().is_err());
        backend.set_fail_writes(false);
        assert_eq!(backend.scan(Bucket::Key).unwrap(), pairs(&[("a", "1")]));
        backend
            .write(&batch(&[(Bucket::Key, "c", Some("3"))]))
            .unwrap();
        assert_eq!(fork.scan(Bucket::Key).unwrap(), pairs(&[("a", "1")]));
    }

    #[test]
    fn sled_backend_basics_and_reopen() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("db");
        {
            let mut backend = SledBackend::open(&path).unwrap();
            exercise(&mut backend);
            backend
                .write(&batch(&[
                    (Bucket::Members, "1", Some("node-1")),
                    (Bucket::Key, "z", Some("26")),
                ]))
                .unwrap();
            backend.sync().unwrap();
            assert!(backend.size_bytes() > 0);
        }
        let backend = SledBackend::open(&path).unwrap();
        assert_eq!(
            backend.scan(Bucket::Key).unwrap(),
            pairs(&[("b", "2"), ("z", "26")])
        );
        assert_eq!(
            backend.scan(Bucket::Members).unwrap(),
            pairs(&[("1", "node-1")])
        );
        assert_eq!(
            backend.get(Bucket::Meta, b"a").unwrap().as_deref(),
            Some(&b"meta"[..])
        );
        assert_eq!(backend.scan(Bucket::Auth).unwrap().len(), 3);
        assert!(backend.scan(Bucket::Lease).unwrap().is_empty());
        // A second scan, served by sled rather than by what opening read, is the same.
        assert_eq!(
            backend.scan(Bucket::Key).unwrap(),
            pairs(&[("b", "2"), ("z", "26")])
        );
    }

    /// Sizes stay exact when the read of an old value is skipped for keys beyond every
    /// stored one: after a reopen, rewriting the greatest key and keys below it still
    /// replaces their old sizes.
    #[test]
    fn sled_sizes_stay_exact_without_reads_for_new_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("db");
        {
            let mut backend = SledBackend::open(&path).unwrap();
            backend
                .write(&batch(&[
                    (Bucket::Key, "a", Some("1")),
                    (Bucket::Key, "m", Some("22")),
                ]))
                .unwrap();
            backend.sync().unwrap();
        }
        let mut backend = SledBackend::open(&path).unwrap();
        assert_eq!(backend.size_in_use_bytes(), 2 + 3);
        backend
            .write(&batch(&[
                (Bucket::Key, "m", Some("4444")),
                (Bucket::Key, "a", Some("55555")),
                (Bucket::Key, "z", Some("1")),
                (Bucket::Key, "y", Some("1")),
                (Bucket::Key, "z", Some("333")),
            ]))
            .unwrap();
        assert_eq!(backend.size_in_use_bytes(), 5 + 6 + 2 + 4);
        backend
            .write(&batch(&[
                (Bucket::Key, "z", None),
                (Bucket::Key, "z", Some("")),
            ]))
            .unwrap();
        assert_eq!(backend.size_in_use_bytes(), 5 + 6 + 2 + 1);
        let reopened_total: u64 = backend
            .scan(Bucket::Key)
            .unwrap()
            .iter()
            .map(|(k, v)| (k.len() + v.len()) as u64)
            .sum();
        assert_eq!(backend.size_in_use_bytes(), reopened_total);
    }

    /// What opening read serves the first scans only until something is written.
    #[test]
    fn sled_scan_after_reopen_and_a_write_sees_the_write() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("db");
        {
            let mut backend = SledBackend::open(&path).unwrap();
            backend
                .write(&batch(&[(Bucket::Key, "a", Some("1"))]))
                .unwrap();
            backend.sync().unwrap();
        }
        let mut backend = SledBackend::open(&path).unwrap();
        backend
            .write(&batch(&[
                (Bucket::Key, "a", Some("2")),
                (Bucket::Key, "b", Some("3")),
            ]))
            .unwrap();
        assert_eq!(
            backend.scan(Bucket::Key).unwrap(),
            pairs(&[("a", "2"), ("b", "3")])
        );
        assert_eq!(backend.size_in_use_bytes(), 4);
    }
}
