//! A [`Backend`] whose writes are committed by a background thread, off the answer path.
//!
//! detcd's MVCC state lives in memory (`core::mvcc`), so an applied write is readable the
//! moment the storage actor has applied it; the backend only has to hold the state for the
//! next restart. Committing it synchronously made every answer wait for sled. This wrapper
//! queues each applied batch to a thread that owns the real backend and commits queued
//! batches merged into one (etcd's bbolt batch transaction does the same: applied changes
//! are committed every 100 ms or 10,000 changes, not per request).
//!
//! # Why no acknowledged write can be lost
//!
//! Durability comes from the WAL, as it always did: the real backend was never fsynced
//! per batch either (sled flushes on its own schedule). Each batch carries the consistent
//! index of the last entry it applies, in the same atomic batch, and merging keeps that
//! true (a merged batch ends with the newest index). A crash therefore leaves the backend
//! at some prefix of the applied batches, and a restart replays the WAL from the index the
//! backend recorded; entries at or below it are skipped, so none applies twice.
//! [`Backend::sync`] drains the queue before it syncs, so a snapshot never lets the WAL
//! release entries that the backend does not hold durably.
//!
//! # Errors
//!
//! A failed commit stops the thread from committing anything later (which would break the
//! prefix property); every later call returns the failure, and the storage actor stops
//! the member, as it did when a synchronous write failed.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::backend::{Backend, Bucket, WriteBatch};

/// The most batches queued for the commit thread; a writer finding the queue full waits,
/// so a slow disk slows applies down instead of growing memory.
pub const PIPELINE_MAX_QUEUED_BATCHES: usize = 1024;

/// The most changes (batch operations) queued for the commit thread, whatever the number
/// of batches. A batch can hold thousands of changes (a raft ready of large txns), so a
/// bound in batches alone let a backlog of seconds of commits build up behind a burst,
/// which then stalled every write that met the full queue. A single batch larger than
/// this is still queued, alone.
pub const PIPELINE_MAX_QUEUED_OPS: usize = 32_768;

/// The most queued batches merged into one commit, which bounds the size of one commit.
pub const PIPELINE_MAX_MERGED_BATCHES: usize = 256;

/// Merging stops once a commit holds this many changes.
pub const PIPELINE_MAX_MERGED_OPS: usize = 8_192;

const _: () = assert!(PIPELINE_MAX_MERGED_BATCHES <= PIPELINE_MAX_QUEUED_BATCHES);
const _: () = assert!(PIPELINE_MAX_MERGED_OPS <= PIPELINE_MAX_QUEUED_OPS);

/// How long the commit thread waits after a first batch for more to merge with it
/// (etcd's batch transaction commits every 100 ms). Each commit rewrites the consistent
/// index and wakes the engine, so fewer, larger commits cost less CPU; a read, sync or
/// snapshot does not wait for it, because a job ends the wait at once.
pub const PIPELINE_COMMIT_INTERVAL_MS: u64 = 10;

/// A job run on the commit thread with the real backend, after every batch queued before.
type Job = Box<dyn FnOnce(&mut dyn Backend) + Send>;

/// What the commit thread is asked to do, in order.
enum Cmd {
    /// Commit this batch.
    Write(WriteBatch),
    /// Run this job once every earlier batch is committed.
    Run(Job),
}

/// What the commit thread publishes for the writer.
#[derive(Default)]
struct Shared {
    /// The real backend's [`Backend::size_bytes`] after the last commit.
    size_bytes: AtomicU64,
    /// The real backend's [`Backend::size_in_use_bytes`] after the last commit.
    in_use_bytes: AtomicU64,
    /// Why a commit failed; once set, nothing more is committed.
    failure: Mutex<Option<String>>,
    /// Changes queued and not yet committed. Invariant: at most
    /// [`PIPELINE_MAX_QUEUED_OPS`], or the changes of one batch.
    queued_ops: Mutex<usize>,
    /// Signalled when queued changes were committed.
    committed: Condvar,
}

impl Shared {
    fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until `ops` more changes fit in the queue, then counts them as queued.
    fn reserve(&self, ops: usize) {
        let mut queued = self.queued_ops.lock().unwrap_or_else(|e| e.into_inner());
        while *queued > 0 && *queued + ops > PIPELINE_MAX_QUEUED_OPS {
            queued = self
                .committed
                .wait(queued)
                .unwrap_or_else(|e| e.into_inner());
        }
        *queued += ops;
    }

    /// Counts `ops` queued changes as committed (or dropped) and wakes waiting writers.
    fn release(&self, ops: usize) {
        let mut queued = self.queued_ops.lock().unwrap_or_else(|e| e.into_inner());
        *queued = queued.saturating_sub(ops);
        self.committed.notify_all();
    }

    fn publish_sizes(&self, backend: &dyn Backend) {
        self.size_bytes
            .store(backend.size_bytes(), Ordering::Relaxed);
        self.in_use_bytes
            .store(backend.size_in_use_bytes(), Ordering::Relaxed);
    }
}

/// A [`Backend`] that commits writes on a background thread (see the module docs).
/// Reads, syncs and defragmentation wait for every queued batch first, so they see
/// everything written before them.
pub struct PipelinedBackend {
    /// Invariant: `Some` until dropped.
    tx: Option<SyncSender<Cmd>>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for PipelinedBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelinedBackend").finish_non_exhaustive()
    }
}

impl PipelinedBackend {
    /// Moves `inner` to a new commit thread.
    pub fn new(inner: Box<dyn Backend>) -> io::Result<PipelinedBackend> {
        let shared = Arc::new(Shared::default());
        shared.publish_sizes(inner.as_ref());
        let (tx, rx) = sync_channel(PIPELINE_MAX_QUEUED_BATCHES);
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("backend-commit".into())
            .spawn(move || commit_loop(inner, &rx, &thread_shared))?;
        Ok(PipelinedBackend {
            tx: Some(tx),
            shared,
            thread: Some(thread),
        })
    }

    fn failed(&self) -> io::Result<()> {
        match self.shared.failure() {
            Some(why) => Err(io::Error::other(why)),
            None => Ok(()),
        }
    }

    fn send(&self, cmd: Cmd) -> io::Result<()> {
        self.failed()?;
        let tx = self.tx.as_ref().expect("the sender lives until drop");
        tx.send(cmd)
            .map_err(|_| self.failed().err().unwrap_or_else(thread_gone))
    }

    /// Runs `job` on the commit thread after every queued batch and returns its result.
    fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut dyn Backend) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let (reply_tx, reply_rx) = sync_channel(1);
        self.send(Cmd::Run(Box::new(move |backend| {
            let _ = reply_tx.send(job(backend));
        })))?;
        // A job dropped unrun (after a failed commit) drops its reply sender.
        reply_rx
            .recv()
            .map_err(|_| self.failed().err().unwrap_or_else(thread_gone))?
    }
}

fn thread_gone() -> io::Error {
    io::Error::other("backend commit thread stopped")
}

/// The commit thread: commits batches in order, merging those already queued, and runs
/// jobs between them. Returns when the writer is dropped and the queue is empty.
fn commit_loop(mut backend: Box<dyn Backend>, rx: &Receiver<Cmd>, shared: &Shared) {
    let _stopped = Stopped(shared);
    let mut next = rx.recv().ok();
    while let Some(cmd) = next.take() {
        match cmd {
            Cmd::Write(mut batch) => {
                let deadline = Instant::now() + Duration::from_millis(PIPELINE_COMMIT_INTERVAL_MS);
                let mut merged = 1;
                while merged < PIPELINE_MAX_MERGED_BATCHES
                    && batch.ops.len() < PIPELINE_MAX_MERGED_OPS
                {
                    let wait = deadline.saturating_duration_since(Instant::now());
                    match rx.recv_timeout(wait) {
                        Ok(Cmd::Write(more)) => {
                            batch.ops.extend(more.ops);
                            merged += 1;
                        }
                        Ok(job) => {
                            next = Some(job);
                            break;
                        }
                        // On disconnection the writer is gone: commit what there is.
                        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                    }
                }
                if shared.failure().is_none() {
                    match backend.write(&batch) {
                        Ok(()) => shared.publish_sizes(backend.as_ref()),
                        Err(e) => {
                            *shared.failure.lock().unwrap_or_else(|e| e.into_inner()) =
                                Some(format!("backend commit failed: {e}"));
                        }
                    }
                }
                shared.release(batch.ops.len());
            }
            // After a failure the backend misses batches: a job's answer would be wrong,
            // so it is dropped and its caller gets the failure instead.
            Cmd::Run(job) if shared.failure().is_none() => {
                job(backend.as_mut());
                shared.publish_sizes(backend.as_ref());
            }
            // Dropped here, not at the end of the turn: its caller waits for the reply
            // sender to go before this thread waits for more commands.
            Cmd::Run(job) => drop(job),
        }
        if next.is_none() {
            next = rx.recv().ok();
        }
    }
    // The writer is gone (a graceful stop): make the backend durable, so that the next
    // start replays nothing from the WAL. The production backend does not sync on its
    // own schedule (see `SledBackend::open`).
    if shared.failure().is_none() {
        if let Err(e) = backend.sync() {
            *shared.failure.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(format!("backend sync at stop failed: {e}"));
        }
    }
}

/// Marks the commit thread stopped however it ends (a panic included), so that no writer
/// waits for room that will never come: the queue counts as empty and, if the thread did
/// not end because the writer went away, every later call fails.
struct Stopped<'a>(&'a Shared);

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            *self.0.failure.lock().unwrap_or_else(|e| e.into_inner()) =
                Some("backend commit thread panicked".into());
        }
        self.0.release(usize::MAX);
    }
}

impl Drop for PipelinedBackend {
    /// Commits everything queued before returning, so a graceful stop leaves the backend
    /// as current as the state machine.
    fn drop(&mut self) {
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Backend for PipelinedBackend {
    fn write(&mut self, batch: &WriteBatch) -> io::Result<()> {
        self.write_owned(batch.clone())
    }

    fn write_owned(&mut self, batch: WriteBatch) -> io::Result<()> {
        let ops = batch.ops.len();
        self.failed()?;
        self.shared.reserve(ops);
        let sent = self.send(Cmd::Write(batch));
        if sent.is_err() {
            self.shared.release(ops);
        }
        sent
    }

    fn get(&self, bucket: Bucket, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        let key = key.to_vec();
        self.run(move |b| b.get(bucket, &key))
    }

    fn scan(&self, bucket: Bucket) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        self.run(move |b| b.scan(bucket))
    }

    /// As of the last commit: it trails the queued batches by at most the queue's length,
    /// as etcd's bbolt size trails its uncommitted batch transaction.
    fn size_bytes(&self) -> u64 {
        self.shared.size_bytes.load(Ordering::Relaxed)
    }

    fn size_in_use_bytes(&self) -> u64 {
        self.shared.in_use_bytes.load(Ordering::Relaxed)
    }

    fn defragment(&mut self) -> io::Result<()> {
        self.run(|b| b.defragment())
    }

    fn sync(&mut self) -> io::Result<()> {
        self.run(|b| b.sync())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::backend::{BatchOp, MemBackend};

    fn put(key: &str, value: &str) -> WriteBatch {
        let mut b = WriteBatch::new();
        b.put(Bucket::Key, key.as_bytes(), value.as_bytes());
        b
    }

    #[test]
    fn reads_see_every_earlier_write() {
        let mem = MemBackend::new();
        let mut p = PipelinedBackend::new(Box::new(mem.clone())).unwrap();
        for i in 0..2_000 {
            p.write_owned(put(&format!("k{i:05}"), &i.to_string()))
                .unwrap();
        }
        assert_eq!(p.get(Bucket::Key, b"k01999").unwrap().unwrap(), b"1999");
        assert_eq!(p.scan(Bucket::Key).unwrap().len(), 2_000);
        assert_eq!(p.size_in_use_bytes(), mem.size_in_use_bytes());
        assert!(p.size_bytes() > 0);
    }

    #[test]
    fn later_writes_of_a_key_win_when_batches_merge() {
        let mem = MemBackend::new();
        let mut p = PipelinedBackend::new(Box::new(mem.clone())).unwrap();
        for i in 0..500 {
            p.write_owned(put("same", &i.to_string())).unwrap();
        }
        let mut del = WriteBatch::new();
        del.delete(Bucket::Key, b"gone".to_vec());
        p.write_owned(put("gone", "x")).unwrap();
        p.write_owned(del).unwrap();
        p.sync().unwrap();
        assert_eq!(mem.get(Bucket::Key, b"same").unwrap().unwrap(), b"499");
        assert_eq!(mem.get(Bucket::Key, b"gone").unwrap(), None);
    }

    #[test]
    fn drop_commits_everything_queued() {
        let mem = MemBackend::new();
        let mut p = PipelinedBackend::new(Box::new(mem.clone())).unwrap();
        for i in 0..300 {
            p.write_owned(put(&format!("k{i}"), "v")).unwrap();
        }
        drop(p);
        assert_eq!(mem.scan(Bucket::Key).unwrap().len(), 300);
    }

    /// A crash at any point of the background commit leaves a prefix of the batches, each
    /// whole: whatever survives is exactly the batches up to the consistent index it
    /// records, and nothing synced is lost. The crash is taken on a copy of the backend
    /// at arbitrary moments while the thread commits.
    #[test]
    fn a_crash_leaves_a_prefix_of_whole_batches() {
        let mem = MemBackend::new();
        let mut p = PipelinedBackend::new(Box::new(mem.clone())).unwrap();
        let mut crashed = Vec::new();
        for i in 1..=400u64 {
            let mut b = put(&format!("k{i:04}"), "v");
            b.ops.push(BatchOp::Put {
                bucket: Bucket::Meta,
                key: b"consistent_index".to_vec(),
                value: i.to_be_bytes().to_vec(),
            });
            p.write_owned(b).unwrap();
            if i == 100 {
                p.sync().unwrap();
            }
            if i % 7 == 0 {
                crashed.push((i, mem.fork()));
            }
        }
        drop(p);
        for (seed, (written, copy)) in crashed.into_iter().enumerate() {
            copy.crash_keeping_some(seed as u64);
            let index = copy
                .get(Bucket::Meta, b"consistent_index")
                .unwrap()
                .map(|v| u64::from_be_bytes(v.try_into().unwrap()))
                .unwrap_or(0);
            assert!(index <= written, "crash {seed}: nothing unwritten survives");
            if written >= 100 {
                assert!(index >= 100, "crash {seed}: synced batches survive");
            }
            let keys = copy.scan(Bucket::Key).unwrap();
            assert_eq!(keys.len() as u64, index, "crash {seed}: exactly the prefix");
        }
    }

    #[test]
    fn a_failed_commit_fails_every_later_call_and_commits_nothing_more() {
        let mem = MemBackend::new();
        let mut p = PipelinedBackend::new(Box::new(mem.clone())).unwrap();
        p.write_owned(put("a", "1")).unwrap();
        p.sync().unwrap();
        mem.set_fail_writes(true);
        p.write_owned(put("b", "2")).unwrap();
        assert!(p.sync().is_err(), "the failure reaches the next call");
        mem.set_fail_writes(false);
        assert!(p.write_owned(put("c", "3")).is_err());
        assert!(p.get(Bucket::Key, b"a").is_err());
        drop(p);
        assert_eq!(mem.get(Bucket::Key, b"c").unwrap(), None);
        assert_eq!(mem.get(Bucket::Key, b"a").unwrap().unwrap(), b"1");
    }
}
