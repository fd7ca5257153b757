//! Rebuilding raft's log from detcd's WAL at start, or creating a fresh one.
//!
//! The WAL is the source of truth for the raft log and hard state; raft's `MemStorage` is
//! a cache of it. At start the cache is rebuilt from the WAL; a brand-new member writes
//! its identity and initial membership to a new WAL before raft runs at all, so a crash at
//! any point after that restarts the same member.

use std::path::Path;
use std::sync::Arc;

use raft::eraftpb::{ConfState, HardState, SnapshotMetadata};

use raft::eraftpb::{Entry, EntryType};

use crate::raft::membership::{standalone_changes, ConfIds};
use crate::raft::store::LogStore;

use crate::storage::disk::Disk;
use crate::storage::wal::{Wal, WalError};

/// The identity a WAL belongs to, stored as its metadata record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalIdentity {
    /// The member id.
    pub member_id: u64,
    /// The cluster id.
    pub cluster_id: u64,
}

impl WalIdentity {
    /// Encodes the identity as 16 big-endian bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16);
        out.extend_from_slice(&self.member_id.to_be_bytes());
        out.extend_from_slice(&self.cluster_id.to_be_bytes());
        out
    }

    /// Decodes what [`WalIdentity::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Option<WalIdentity> {
        if bytes.len() != 16 {
            return None;
        }
        let mut m = [0u8; 8];
        let mut c = [0u8; 8];
        m.copy_from_slice(&bytes[..8]);
        c.copy_from_slice(&bytes[8..]);
        Some(WalIdentity {
            member_id: u64::from_be_bytes(m),
            cluster_id: u64::from_be_bytes(c),
        })
    }
}

/// A raft log ready for `RawNode`: the WAL to append to and the cache raft reads from.
pub struct RaftLog {
    /// The write-ahead log.
    pub wal: Wal,
    /// raft's view of the log, rebuilt from the WAL.
    pub storage: LogStore,
    /// The latest snapshot the WAL recorded (index 0: the initial membership only).
    pub snapshot: SnapshotMetadata,
    /// Whose log this is.
    pub identity: WalIdentity,
    /// True if the WAL was created just now (a new member).
    pub created: bool,
}

/// Why the raft log could not be opened.
#[derive(Debug)]
pub enum LogError {
    /// The WAL is unreadable or corrupt.
    Wal(WalError),
    /// An I/O error while creating the WAL.
    Io(std::io::Error),
    /// The WAL belongs to another member or cluster.
    IdentityMismatch {
        /// What the WAL says.
        found: Option<WalIdentity>,
        /// What the flags say.
        expected: WalIdentity,
    },
    /// The raft crate rejected the recovered state.
    Raft(String),
}

impl std::fmt::Display for LogError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogError::Wal(e) => write!(f, "{e}"),
            LogError::Io(e) => write!(f, "wal: {e}"),
            LogError::IdentityMismatch { found, expected } => write!(
                f,
                "the WAL belongs to member {:x} of cluster {:x}, but the flags describe member {:x} of cluster {:x}",
                found.map(|i| i.member_id).unwrap_or(0),
                found.map(|i| i.cluster_id).unwrap_or(0),
                expected.member_id,
                expected.cluster_id
            ),
            LogError::Raft(e) => write!(f, "raft: {e}"),
        }
    }
}

impl std::error::Error for LogError {}

/// True if `dir` holds a WAL: the member has been created before, and restarts from it.
pub fn exists(disk: &dyn Disk, dir: &Path) -> bool {
    Wal::exists(disk, dir)
}

/// The identity recorded in the WAL in `dir`. A restarted member takes its member and
/// cluster ids from here, not from its flags, as etcd does: a member that joined a running
/// cluster got an id its flags cannot reproduce. (This reads the WAL once more than the
/// open that follows; starts are rare and the WAL is bounded by compaction.)
pub fn read_identity(disk: Arc<dyn Disk>, dir: &Path) -> Result<WalIdentity, LogError> {
    let metadata = Wal::read_metadata(disk.as_ref(), dir).map_err(LogError::Wal)?;
    WalIdentity::decode(&metadata).ok_or_else(|| {
        LogError::Raft(format!(
            "the WAL in {} has no valid member identity",
            dir.display()
        ))
    })
}

/// Opens the WAL in `dir` and rebuilds raft's log from it, or, when there is none, creates
/// a WAL for a new member whose initial voters are `voters` (none for a member joining an
/// existing cluster, which learns the membership from the leader).
pub fn open_or_create(
    disk: Arc<dyn Disk>,
    dir: &Path,
    expected: WalIdentity,
    voters: &[u64],
) -> Result<RaftLog, LogError> {
    if !Wal::exists(disk.as_ref(), dir) {
        let wal = Wal::create(disk, dir, &expected.encode()).map_err(LogError::Io)?;
        let mut wal = wal;
        let mut meta = SnapshotMetadata::default();
        meta.set_conf_state(ConfState::from((voters.to_vec(), vec![])));
        wal.save_snapshot(&meta).map_err(LogError::Io)?;
        // etcd's members start in term 1, where their bootstrap entries are written, and
        // hold their first election in term 2; starting in term 1 makes detcd report the
        // same terms as etcd from the first election on.
        let mut hard_state = HardState::default();
        hard_state.set_term(1);
        wal.save(Some(&hard_state), &[]).map_err(LogError::Io)?;
        let storage = LogStore::new();
        storage.wl().set_conf_state(meta.get_conf_state().clone());
        storage.wl().set_hard_state(hard_state);
        return Ok(RaftLog {
            wal,
            storage,
            snapshot: meta,
            identity: expected,
            created: true,
        });
    }
    let (wal, contents) = Wal::open(disk, dir).map_err(LogError::Wal)?;
    let found = WalIdentity::decode(&contents.metadata);
    if found != Some(expected) {
        return Err(LogError::IdentityMismatch { found, expected });
    }
    let storage = LogStore::new();
    let snapshot = contents.snapshot.clone().unwrap_or_default();
    {
        let mut core = storage.wl();
        core.apply_snapshot(&snapshot);
        core.append(&contents.entries).map_err(LogError::Raft)?;
        let mut hs = contents.hard_state.clone().unwrap_or_default();
        hs.commit = hs.commit.max(snapshot.index);
        hs.term = hs.term.max(snapshot.term);
        core.set_hard_state(hs);
    }
    Ok(RaftLog {
        wal,
        storage,
        snapshot,
        identity: expected,
        created: false,
    })
}

impl RaftLog {
    /// `--force-new-cluster`: turns this member's log into that of a one-member cluster,
    /// keeping every committed entry, as etcd's `restartAsStandaloneNode` does. Entries
    /// past the commit index are dropped (they were never committed, and no quorum is left
    /// to commit them), and conf changes removing every other member are appended in the
    /// current term and committed at once, then written to the WAL before raft runs. When
    /// raft applies them, the member is the only voter and elects itself.
    pub fn force_new_cluster(&mut self, local_id: u64) -> Result<usize, LogError> {
        let (entries, hs) = {
            let core = self.storage.rl();
            let hs = core.hard_state().clone();
            let mut conf = ConfIds::from_conf_state(core.conf_state());
            let committed: Vec<Entry> = core
                .entries()
                .iter()
                .filter(|e| e.index <= hs.commit)
                .cloned()
                .collect();
            conf.replay(&committed);
            let changes = standalone_changes(&conf, local_id).map_err(LogError::Raft)?;
            let start = hs.commit.max(self.snapshot.index) + 1;
            let mut entries = Vec::with_capacity(changes.len());
            for (index, cc) in (start..).zip(changes) {
                let data = protobuf::Message::write_to_bytes(&cc)
                    .map_err(|e| LogError::Raft(format!("encoding a conf change: {e}")))?;
                let mut e = Entry {
                    index,
                    term: hs.term.max(1),
                    data: data.into(),
                    ..Default::default()
                };
                e.set_entry_type(EntryType::EntryConfChange);
                entries.push(e);
            }
            (entries, hs)
        };
        let count = entries.len();
        if entries.is_empty() {
            // Alone already. Any uncommitted entries stay: as the only voter this member
            // commits its own log, which is what raft would do with them anyway.
            return Ok(0);
        }
        let mut hs = hs;
        hs.commit = entries.last().map_or(hs.commit, |e| e.index);
        // Writing from commit + 1 replaces the uncommitted suffix in the WAL as well.
        self.wal.save(Some(&hs), &entries).map_err(LogError::Io)?;
        let mut core = self.storage.wl();
        core.append(&entries).map_err(LogError::Raft)?;
        core.set_hard_state(hs);
        Ok(count)
    }

    /// Reconciles the log with the state machine, which has applied up to
    /// `backend_applied_index`, and returns the index raft should consider applied.
    ///
    /// The recovered commit index is raised to what the backend applied, because the
    /// backend only ever applies committed entries while the hard state's commit index is
    /// persisted lazily. raft restarts applying from the WAL's snapshot, not from the
    /// backend's position: it rebuilds its membership from the snapshot's and the
    /// membership changes after it, and the storage actor skips entries it already holds.
    ///
    /// A backend ahead of the end of the log is only legitimate when it was loaded from a
    /// raft snapshot newer than the entries received so far; otherwise the WAL lost
    /// committed entries and the member must not start.
    pub fn reconcile(&mut self, backend_applied_index: u64) -> Result<u64, LogError> {
        let mut core = self.storage.wl();
        let last_index = core.last_index();
        if backend_applied_index > last_index && backend_applied_index > 0 {
            if self.snapshot.index == 0 {
                return Err(LogError::Raft(format!(
                    "the backend has applied index {backend_applied_index} but the WAL ends at {last_index}: the WAL lost committed entries"
                )));
            }
            return Ok(self.snapshot.index);
        }
        let mut hs = core.hard_state().clone();
        if hs.commit < backend_applied_index {
            hs.commit = backend_applied_index;
            core.set_hard_state(hs);
        }
        Ok(self.snapshot.index)
    }
}
