//! Every message the actors exchange, in one place.
//!
//! The gateway talks to the raft actor (proposals, read barriers, status) and to the
//! storage actor (reads, status); the raft actor hands committed entries to the storage
//! actor. All channels are bounded (see [`CHANNEL_BOUND`]): a full channel pushes back on
//! the sender instead of growing memory.

use tokio::sync::{mpsc, oneshot};

use crate::core::apply::Response;
use crate::core::watch::{HistoryAnswer, HistoryFetch, StreamId};
use crate::error::EtcdError;
use crate::pb::detcdpb::InternalRequest;
use crate::pb::etcdserverpb::WatchCreateRequest;
use crate::pb::etcdserverpb::{
    HashKvResponse, HashResponse, LeaseLeasesResponse, RangeRequest, RangeResponse, ResponseHeader,
};
use crate::pb::mvccpb::Event;

/// The cluster's membership as the storage actor has applied it: the members by id and
/// the ids of removed members. The storage actor publishes it on a watch channel whenever
/// it changes; the transport, the peer service and the gateway read it from there, so the
/// applied member records stay the single source of membership.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Membership {
    /// The members by id.
    pub members: std::collections::BTreeMap<u64, crate::pb::detcdpb::MemberRecord>,
    /// Ids of removed members.
    pub removed: std::collections::BTreeSet<u64>,
}

impl Membership {
    /// The members in id order.
    pub fn list(&self) -> Vec<crate::pb::detcdpb::MemberRecord> {
        self.members.values().cloned().collect()
    }
}

/// The membership watch channel's receiving half.
pub type MembershipRx = crate::rt::watch::Receiver<std::sync::Arc<Membership>>;

/// The capacity of every inter-actor channel.
pub const CHANNEL_BOUND: usize = 1024;

/// The answer to a proposal once it has been applied.
pub type ApplyReply = Result<Response, EtcdError>;

/// Where an applied proposal's result goes: the client request that is waiting for it.
pub type Waiter = oneshot::Sender<ApplyReply>;

/// Messages to the raft actor.
#[derive(Debug)]
pub enum RaftMsg {
    /// Replicate a request through raft; `reply` receives the apply result.
    Propose {
        /// The request; its header id is assigned by the raft actor. Boxed because
        /// requests are large and most messages are small.
        request: Box<InternalRequest>,
        /// Receives the applied response or the reason the proposal failed.
        reply: Waiter,
    },
    /// A linearizable read barrier: `reply` receives the raft index that the state
    /// machine must reach before the read may be served (raft's ReadIndex).
    ReadIndex {
        /// Receives the index, or why none can be given (no leader, stopping).
        reply: oneshot::Sender<Result<u64, EtcdError>>,
    },
    /// Asks for the raft status.
    Status {
        /// Receives the status.
        reply: oneshot::Sender<RaftStatus>,
    },
    /// Asks the leader to hand leadership to `target` (raft's leader transfer). The reply
    /// only says the transfer was started: the caller watches the raft status for the
    /// new leader.
    TransferLeader {
        /// The member id that should become leader.
        target: u64,
        /// `Ok` once the transfer is started; `NotLeader` on a follower,
        /// `BadLeaderTransferee` for a target that is not a voting member.
        reply: oneshot::Sender<Result<(), EtcdError>>,
    },
    /// Replicates a membership change through raft's configuration; `reply` receives the
    /// member list once the change is applied, or why it was rejected.
    ProposeConfChange {
        /// The change.
        change: crate::raft::membership::MemberChange,
        /// Receives [`Response::Members`] or the error.
        reply: Waiter,
    },
    /// Asks the leader whether learner `member_id` has caught up enough to be promoted
    /// (etcd's `isLearnerReady`); a follower answers `NotLeader`.
    LearnerReady {
        /// The learner's member id.
        member_id: u64,
        /// Receives `Ok` if ready, or `NotLeader`, `MemberNotFound`, `LearnerNotReady`.
        reply: oneshot::Sender<Result<(), EtcdError>>,
    },
    /// A peer refused this member's messages because the cluster removed it: the member
    /// stops, as etcd does when a peer answers that it was removed.
    Removed,
    /// Stops the actor. Proposals still waiting are dropped, which their clients see as
    /// "server stopped".
    Shutdown,
    /// Raft messages received from a peer, already checked for cluster and member ids.
    Step {
        /// The messages, in the order the peer sent them.
        messages: Vec<raft::eraftpb::Message>,
    },
    /// The outcome of streaming a snapshot to a follower (raft waits for it before it
    /// sends that follower anything else).
    SnapshotStatus {
        /// The follower.
        member_id: u64,
        /// Whether the follower received the whole snapshot.
        delivered: bool,
    },
    /// The transport could not deliver to this member: raft should slow down replication
    /// to it (`RawNode::report_unreachable`).
    Unreachable {
        /// The peer's member id.
        member_id: u64,
    },
}

/// What the raft actor reports about consensus.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RaftStatus {
    /// This member's id.
    pub member_id: u64,
    /// The cluster id.
    pub cluster_id: u64,
    /// The current leader's member id (0 when there is none).
    pub leader_id: u64,
    /// The current raft term.
    pub term: u64,
    /// The raft commit index.
    pub commit_index: u64,
    /// The index of the last entry in the raft log.
    pub last_index: u64,
    /// The index of the latest snapshot (taken here or received from the leader).
    pub snapshot_index: u64,
    /// True while this member is a learner in raft's configuration.
    pub is_learner: bool,
    /// True once this member has been removed from the cluster; it is stopping.
    pub removed: bool,
}

/// Messages to the storage (apply) actor.
#[derive(Debug)]
pub enum StorageMsg {
    /// Committed raft entries, in log order, to apply. `waiters[i]` is the client waiting
    /// for `entries[i]`, if this member proposed it.
    Apply {
        /// The committed entries.
        entries: Vec<raft::eraftpb::Entry>,
        /// One slot per entry.
        waiters: Vec<Option<Waiter>>,
    },
    /// One committed membership change, in log order with the [`StorageMsg::Apply`]
    /// batches around it. The raft actor has already decided whether it takes effect.
    ApplyConfChange {
        /// The committed conf-change entry (for its index and term).
        entry: raft::eraftpb::Entry,
        /// The decoded change if it takes effect, or why it was rejected.
        change: Result<crate::raft::membership::MemberChange, EtcdError>,
        /// The client waiting for it, if this member proposed it.
        waiter: Option<Waiter>,
    },
    /// A read, served once the applied index reaches `min_applied_index`.
    Range {
        /// The request (already validated).
        request: RangeRequest,
        /// The raft index the state machine must have applied first (0: serve now).
        min_applied_index: u64,
        /// Receives the response.
        reply: oneshot::Sender<Result<RangeResponse, EtcdError>>,
    },
    /// Asks for the storage status.
    Status {
        /// Receives the status.
        reply: oneshot::Sender<StorageStatus>,
    },
    /// Stops the actor after everything queued before this message has been applied, and
    /// syncs the backend.
    Shutdown,
    /// Reads history for a catching-up watcher; the answer goes to the watch hub's inbox
    /// as [`WatchMsg::History`], after every applied batch it covers.
    WatchHistory(HistoryFetch),
    /// Asks for a lease's granted TTL and keys (`None`: not granted), with a header.
    LeaseInfo {
        /// The lease id.
        id: i64,
        /// Receives the lease, if granted, and the current header.
        reply: oneshot::Sender<(Option<LeaseInfo>, ResponseHeader)>,
    },
    /// Asks for every granted lease.
    LeaseList {
        /// Receives the list with its header.
        reply: oneshot::Sender<LeaseLeasesResponse>,
    },
    /// Asks for a response header at the current revision.
    Header {
        /// Receives the header.
        reply: oneshot::Sender<ResponseHeader>,
    },
    /// Asks for the cluster's members as the Members bucket records them, in id order.
    MemberList {
        /// Receives the members.
        reply: oneshot::Sender<Vec<crate::pb::detcdpb::MemberRecord>>,
    },
    /// Asks for the hash of the whole backend (Maintenance.Hash).
    Hash {
        /// Receives the hash with its header.
        reply: oneshot::Sender<Result<HashResponse, EtcdError>>,
    },
    /// Asks for a consistent copy of the backend in etcd's bucket layout, the content of
    /// a `Maintenance.Snapshot` (see [`crate::actors::snapshot`]).
    Snapshot {
        /// Receives the buckets.
        reply: oneshot::Sender<Result<crate::storage::bbolt::Buckets, EtcdError>>,
    },
    /// Gives back the backend's unused space (Maintenance.Defragment).
    Defragment {
        /// Receives the outcome.
        reply: oneshot::Sender<Result<(), EtcdError>>,
    },
    /// Asks for the KV hash at a revision (0: current).
    HashKv {
        /// The revision.
        revision: i64,
        /// Receives the hash.
        reply: oneshot::Sender<Result<HashKvResponse, EtcdError>>,
    },
    /// Makes the backend durable and answers the applied index it now holds durably: the
    /// raft log may be compacted up to it.
    SyncApplied {
        /// Receives the index, or the failure (fatal for the member).
        reply: oneshot::Sender<Result<u64, String>>,
    },
    /// Replaces the state machine with a raft snapshot received from the leader, at raft
    /// `index` or later (the blob records the index it reflects).
    InstallSnapshot {
        /// The raft index of the snapshot record.
        index: u64,
        /// The checked snapshot blob ([`crate::storage::snapshot`]).
        blob: std::sync::Arc<Vec<u8>>,
    },
    /// Dumps the state machine for a follower that needs a snapshot, with the applied
    /// index the dump reflects.
    SnapshotBlob {
        /// Receives the index and blob.
        reply: oneshot::Sender<Result<(u64, Vec<u8>), EtcdError>>,
    },
}

/// A granted lease as the replicated lease table knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseInfo {
    /// The granted TTL in seconds.
    pub granted_ttl_s: i64,
    /// The attached keys, in key order.
    pub keys: Vec<Vec<u8>>,
}

/// What the storage actor reports about the state machine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageStatus {
    /// The last applied raft index.
    pub applied_index: u64,
    /// The current MVCC revision.
    pub revision: i64,
    /// The compacted revision.
    pub compact_revision: i64,
    /// The backend's size (see [`crate::storage::backend::Backend::size_bytes`]).
    pub db_size_bytes: u64,
    /// The bytes the backend holds now.
    pub db_size_in_use_bytes: u64,
    /// The number of keys.
    pub key_count: u64,
    /// The raised alarms.
    pub alarms: Vec<crate::pb::etcdserverpb::AlarmMember>,
}

/// Where the watch hub puts one stream's responses: a bounded queue the gateway drains
/// into the gRPC stream.
pub type WatchStreamSender = mpsc::Sender<Result<crate::core::watch::WatchFrame, tonic::Status>>;

/// What the watch hub and the reader of one stream's queue share.
pub type QueuedBytes = std::sync::Arc<WatchQueueState>;

/// The state of one stream's queue that its writer (the watch hub) and its reader (the
/// gateway) share.
#[derive(Debug, Default)]
pub struct WatchQueueState {
    /// The bytes of encoded responses in the queue: the hub adds what it queues, the
    /// reader subtracts what it takes.
    pub bytes: std::sync::atomic::AtomicUsize,
    /// Set by the hub when something of the stream waits for room in the queue; the
    /// reader clears it and tells the hub ([`WatchMsg::Drained`]) once the queue has
    /// drained to half, so that catching up does not wait for the hub's next tick.
    pub waiting: std::sync::atomic::AtomicBool,
}

impl WatchQueueState {
    /// Whether a queue holding `len` responses of `capacity` and `bytes` bytes of
    /// `byte_budget` has drained enough to be worth the hub's attention.
    pub fn drained(len: usize, capacity: usize, bytes: usize, byte_budget: usize) -> bool {
        len.saturating_mul(2) <= capacity && bytes.saturating_mul(2) <= byte_budget
    }

    /// The reader took a response of `size` bytes, leaving `len` in the queue: true if
    /// the hub waits for room and should now be told (the flag is then cleared; set it
    /// again with [`WatchQueueState::rearm`] if telling fails).
    pub fn taken(&self, size: usize, len: usize, capacity: usize) -> bool {
        use std::sync::atomic::Ordering;
        let before = self.bytes.fetch_sub(size, Ordering::Relaxed);
        self.waiting.load(Ordering::Relaxed)
            && Self::drained(
                len,
                capacity,
                before.saturating_sub(size),
                crate::actors::watch_hub::STREAM_QUEUE_BYTES,
            )
            && self.waiting.swap(false, Ordering::AcqRel)
    }

    /// Telling the hub failed (its inbox was full): the next response taken tries again.
    pub fn rearm(&self) {
        self.waiting
            .store(true, std::sync::atomic::Ordering::Release);
    }
}

/// Messages to the watch hub actor.
///
/// The storage actor sends [`WatchMsg::Applied`] after each applied batch and
/// [`WatchMsg::History`] answers on this one channel, in the order it produced them: when
/// a history answer arrives, every batch it covers has already arrived, which is what lets
/// a catching-up watcher rejoin the live events without a gap.
#[derive(Debug)]
pub enum WatchMsg {
    /// The events of one applied batch, in apply order.
    Applied {
        /// The store's revision after the batch.
        revision: i64,
        /// The events, `prev_kv` filled.
        events: Vec<Event>,
    },
    /// The answer to a [`StorageMsg::WatchHistory`] read.
    History(HistoryAnswer),
    /// The store's compact revision changed (sent before the events of the batch that
    /// compacted).
    Compacted {
        /// The new compact revision.
        revision: i64,
    },
    /// A stream whose queue the hub waited on has drained (see
    /// [`WatchQueueState::waiting`]).
    Drained {
        /// The stream.
        stream: StreamId,
    },
    /// A client opened a watch stream.
    OpenStream {
        /// The stream's id (unique per member).
        stream: StreamId,
        /// Where its responses go.
        tx: WatchStreamSender,
        /// The bytes waiting in that queue.
        queued_bytes: QueuedBytes,
    },
    /// The state machine was replaced by a raft snapshot and now stands at `revision`:
    /// watchers that were live catch up from history (or learn they were compacted).
    Restored {
        /// The store's revision after the snapshot.
        revision: i64,
    },
    /// A create request on a stream.
    Create {
        /// The stream.
        stream: StreamId,
        /// The request.
        request: WatchCreateRequest,
    },
    /// A cancel request on a stream.
    Cancel {
        /// The stream.
        stream: StreamId,
        /// The watcher.
        watch_id: i64,
    },
    /// A progress request on a stream.
    Progress {
        /// The stream.
        stream: StreamId,
    },
    /// The client went away.
    CloseStream {
        /// The stream.
        stream: StreamId,
    },
    /// Stops the actor.
    Shutdown,
}
