//! raft's view of the log: a cache of the WAL that can be compacted and can hand out
//! snapshots.
//!
//! The raft crate's `MemStorage` cannot do either as detcd needs: its snapshots carry no
//! state and are taken at the commit index (which, with asynchronous persistence, may not
//! be applied yet), and compacting it loses the term of the entry before the first one,
//! so every follower just behind the compaction point would need a snapshot. [`LogStore`]
//! keeps three positions apart:
//!
//! * the *compaction point*: the entries at or below it are gone (their last index and
//!   term are kept, as raft needs them to append what follows);
//! * the *snapshot point*: the newest index this member has handed to its state machine,
//!   with its term and membership. A snapshot asked for by raft (to send to a follower
//!   behind the compaction point) is described by it; the state itself is attached by the
//!   transport, which asks the storage actor after raft decided to send, so the state is
//!   at least as new as the description (see `actors::transport`);
//! * the entries after the compaction point, and the hard state.

use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

/// The log's contents (see the module docs).
#[derive(Debug, Default)]
pub struct LogCore {
    hard_state: HardState,
    conf_state: ConfState,
    /// Index and term of the last compacted entry.
    compacted_index: u64,
    compacted_term: u64,
    entries: Vec<Entry>,
    /// What a snapshot asked for now would describe.
    snapshot_point: SnapshotMetadata,
}

impl LogCore {
    /// The index of the first entry still held.
    pub fn first_index(&self) -> u64 {
        self.compacted_index + 1
    }

    /// The index of the last entry (the compaction point if none follow it).
    pub fn last_index(&self) -> u64 {
        self.entries
            .last()
            .map_or(self.compacted_index, |e| e.index)
    }

    /// The term of the entry at `index`, if it is held (or is the compaction point).
    pub fn term_of(&self, index: u64) -> Option<u64> {
        if index == self.compacted_index {
            return Some(self.compacted_term);
        }
        if index < self.first_index() || index > self.last_index() {
            return None;
        }
        Some(self.entries[(index - self.first_index()) as usize].term)
    }

    /// Sets the hard state.
    pub fn set_hard_state(&mut self, hs: HardState) {
        self.hard_state = hs;
    }

    /// The hard state.
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// Sets the membership raft starts from.
    pub fn set_conf_state(&mut self, cs: ConfState) {
        self.conf_state = cs;
    }

    /// Appends entries; the first may replace a suffix (a raft conflict). Entries at or
    /// below the compaction point, or leaving a gap, are refused.
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), String> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        if first.index <= self.compacted_index || first.index > self.last_index() + 1 {
            return Err(format!(
                "cannot append entries from {} to a log holding {}..={}",
                first.index,
                self.first_index(),
                self.last_index()
            ));
        }
        let keep = (first.index - self.first_index()) as usize;
        self.entries.truncate(keep);
        self.entries.extend_from_slice(entries);
        Ok(())
    }

    /// The entries held, from the first after the compaction point.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The membership raft starts from.
    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// Drops the entries at or below `index` (capped at the last entry).
    pub fn compact(&mut self, index: u64) {
        let index = index.min(self.last_index());
        if index <= self.compacted_index {
            return;
        }
        let term = self.term_of(index).expect("a held index has a term");
        let drop = (index - self.compacted_index) as usize;
        self.entries.drain(..drop);
        self.compacted_index = index;
        self.compacted_term = term;
    }

    /// Replaces the whole log by a snapshot's position: nothing is held before or after
    /// it, and it is committed.
    pub fn apply_snapshot(&mut self, meta: &SnapshotMetadata) {
        self.entries.clear();
        self.compacted_index = meta.index;
        self.compacted_term = meta.term;
        self.conf_state = meta.get_conf_state().clone();
        self.hard_state.term = self.hard_state.term.max(meta.term);
        self.hard_state.commit = self.hard_state.commit.max(meta.index);
        if self.snapshot_point.index < meta.index {
            self.snapshot_point = meta.clone();
        }
    }

    /// Records what a snapshot would describe now (see the module docs).
    pub fn set_snapshot_point(&mut self, meta: SnapshotMetadata) {
        self.snapshot_point = meta;
    }

    /// The current snapshot point.
    pub fn snapshot_point(&self) -> &SnapshotMetadata {
        &self.snapshot_point
    }
}

/// A shared handle on a [`LogCore`]: raft reads it through [`Storage`], the raft actor
/// writes it.
#[derive(Debug, Clone, Default)]
pub struct LogStore {
    core: Arc<RwLock<LogCore>>,
}

impl LogStore {
    /// An empty log.
    pub fn new() -> LogStore {
        LogStore::default()
    }

    /// Reads the log.
    pub fn rl(&self) -> RwLockReadGuard<'_, LogCore> {
        self.core.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes the log.
    pub fn wl(&self) -> RwLockWriteGuard<'_, LogCore> {
        self.core.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let core = self.rl();
        Ok(RaftState {
            hard_state: core.hard_state.clone(),
            conf_state: core.conf_state.clone(),
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let core = self.rl();
        if low <= core.compacted_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > core.last_index() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let offset = core.first_index();
        let slice = &core.entries[(low - offset) as usize..(high - offset) as usize];
        let max_size = max_size.into().unwrap_or(u64::MAX);
        // At least one entry, then as many as fit (raft's rule for limiting entries).
        let mut size = 0u64;
        let mut out = Vec::new();
        for e in slice {
            size += protobuf::Message::compute_size(e) as u64;
            if !out.is_empty() && size > max_size {
                break;
            }
            out.push(e.clone());
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let core = self.rl();
        match core.term_of(idx) {
            Some(t) => Ok(t),
            None if idx < core.first_index() => Err(raft::Error::Store(StorageError::Compacted)),
            None => Err(raft::Error::Store(StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.rl().first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.rl().last_index())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let core = self.rl();
        let point = &core.snapshot_point;
        if point.index == 0 || point.index < request_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let mut snap = Snapshot::default();
        snap.set_metadata(point.clone());
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: vec![0u8; 10].into(),
            ..Default::default()
        }
    }

    fn log(n: u64) -> LogStore {
        let store = LogStore::new();
        let entries: Vec<Entry> = (1..=n).map(|i| entry(i, 1 + i / 4)).collect();
        store.wl().append(&entries).expect("append");
        store
    }

    #[test]
    fn compaction_keeps_the_term_of_the_last_compacted_entry() {
        let store = log(10);
        store.wl().compact(6);
        assert_eq!(store.first_index().unwrap(), 7);
        assert_eq!(store.last_index().unwrap(), 10);
        assert_eq!(store.term(6).unwrap(), 1 + 6 / 4);
        assert_eq!(
            store.term(5),
            Err(raft::Error::Store(StorageError::Compacted))
        );
        assert_eq!(
            store.entries(6, 8, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Compacted))
        );
        let got = store
            .entries(7, 11, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(
            got.iter().map(|e| e.index).collect::<Vec<_>>(),
            [7, 8, 9, 10]
        );
        // Compacting again below the point, or past the end, is harmless.
        store.wl().compact(3);
        store.wl().compact(50);
        assert_eq!(store.first_index().unwrap(), 11);
        assert_eq!(store.term(10).unwrap(), 1 + 10 / 4);
    }

    #[test]
    fn append_replaces_a_conflicting_suffix_and_refuses_gaps() {
        let store = log(5);
        store.wl().append(&[entry(4, 9)]).expect("conflict");
        assert_eq!(store.last_index().unwrap(), 4);
        assert_eq!(store.term(4).unwrap(), 9);
        assert!(store.wl().append(&[entry(6, 9)]).is_err());
        store.wl().compact(2);
        assert!(store.wl().append(&[entry(2, 9)]).is_err());
    }

    #[test]
    fn entries_are_limited_by_size_but_never_empty() {
        let store = log(10);
        let one = protobuf::Message::compute_size(&entry(1, 1)) as u64;
        let got = store
            .entries(1, 11, Some(one * 3), GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(got.len(), 3);
        let got = store
            .entries(1, 11, Some(0), GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(got.len(), 1);
    }

    #[test]
    fn snapshots_describe_the_snapshot_point_once_there_is_one() {
        let store = log(10);
        assert_eq!(
            store.snapshot(0, 2),
            Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable
            ))
        );
        let mut meta = SnapshotMetadata {
            index: 8,
            term: 3,
            ..Default::default()
        };
        meta.set_conf_state(ConfState::from((vec![1, 2, 3], vec![])));
        store.wl().set_snapshot_point(meta.clone());
        let snap = store.snapshot(0, 2).unwrap();
        assert_eq!(snap.get_metadata(), &meta);
        assert!(store.snapshot(9, 2).is_err());
    }

    #[test]
    fn applying_a_snapshot_empties_the_log_and_commits_its_index() {
        let store = log(10);
        let mut meta = SnapshotMetadata {
            index: 20,
            term: 7,
            ..Default::default()
        };
        meta.set_conf_state(ConfState::from((vec![1, 2], vec![3])));
        store.wl().apply_snapshot(&meta);
        assert_eq!(store.first_index().unwrap(), 21);
        assert_eq!(store.last_index().unwrap(), 20);
        assert_eq!(store.term(20).unwrap(), 7);
        let state = store.initial_state().unwrap();
        assert_eq!(state.hard_state.commit, 20);
        assert_eq!(state.conf_state, meta.get_conf_state().clone());
        store.wl().append(&[entry(21, 7)]).expect("append after");
    }
}
