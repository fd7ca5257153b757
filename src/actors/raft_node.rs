//! The raft actor: owns the `RawNode` and runs raft's Ready loop.
//!
//! Inputs arrive as [`RaftMsg`]s (client proposals and read barriers, messages from
//! peers) and clock ticks; each turn of the loop feeds them to raft, then handles the
//! `Ready`s raft produced: send messages, hand committed entries to the storage actor,
//! answer read barriers, and pass new entries and the hard state to the WAL writer task.
//!
//! The WAL is written asynchronously (raft-rs's `advance_append_async` and
//! `on_persist_ready`): the fsync runs in a separate task while this loop keeps ticking
//! and stepping peer messages, so heartbeats and votes never wait behind a slow disk.
//! Safety is kept by raft itself: messages that must follow persistence (a follower's
//! append acknowledgements and votes) are held back until the WAL writer reports the
//! ready they belong to as durable, and raft only hands out committed entries that this
//! member has persisted.
//!
//! A member that does not lead still proposes locally: raft forwards the proposal to the
//! leader (as etcd's followers do), and the client waiting here is answered when this
//! member applies the committed entry, which carries the request id in its context. The
//! wait is bounded by the gateway's request timeout, so a proposal lost with a leader
//! change fails with "request timed out" instead of hanging. Linearizable reads on a
//! follower use ReadIndex, which raft forwards to the leader in the same way.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfState, Entry, EntryType, HardState, SnapshotMetadata};
use raft::RawNode;
use tokio::sync::{mpsc, oneshot};

use crate::actors::transport::Transport;
use crate::error::EtcdError;
use crate::msg::{RaftMsg, RaftStatus, StorageMsg, Waiter};
use crate::pb::detcdpb::RequestHeader;
use crate::raft::log::RaftLog;
use crate::raft::membership::{self, ConfIds, MemberChange};
use crate::raft::store::LogStore;
use crate::rt;
use crate::rt::watch;
use crate::storage::disk::Disk;
use crate::storage::snapshot;
use crate::storage::wal::Wal;

/// Proposals waiting for their apply result, at most; past it new proposals are refused
/// with "too many requests" instead of growing memory (etcd's maxGapBetweenApplyAndCommitIndex
/// plays the same role).
pub const MAX_PENDING_PROPOSALS: usize = 10_000;
/// Read barriers waiting for raft, at most.
pub const MAX_PENDING_READS: usize = 10_000;
/// Messages taken from the inbox per loop turn, so one Ready batches many proposals.
const INBOX_BATCH: usize = 256;
/// Readies handed to the WAL writer and not yet durable, at most. Past it the loop stops
/// taking new readies (raft keeps the work for later) but keeps ticking and stepping.
/// While one fsync runs, every loop turn that changes anything (a heartbeat, an append,
/// a batch of proposals) makes a ready, and the outgoing messages of a ready not taken
/// wait with it, heartbeat answers included: the bound must cover the readies of the
/// slowest fsync tolerated, or a slow disk would silence the member and cost the
/// cluster its leader. The writer merges everything queued into one write, so the
/// bound limits memory, not throughput.
const MAX_INFLIGHT_READIES: usize = 4096;
/// A read barrier not answered after this many ticks is asked again: raft drops a
/// ReadIndex silently when the leader has not yet committed an entry in its term, or when
/// the forwarded request or its answer is lost (etcd retries after 500 ms likewise).
const READ_RETRY_TICKS: u64 = 5;
/// A removed member keeps running this many ticks before it stops (etcd's stopWithDelay).
const REMOVED_STOP_TICKS: u64 = 10;
/// Every this many ticks the waiters whose clients gave up are forgotten.
const CLEANUP_TICKS: u64 = 10;

/// One write for the WAL writer task: the entries and hard state of one ready, after
/// the snapshot it carries, if any.
struct WalWrite {
    /// The ready this write belongs to; a compaction record repeats the latest number.
    number: u64,
    hs: Option<HardState>,
    entries: Vec<Entry>,
    snapshot: Option<SnapshotWrite>,
}

/// A snapshot record for the WAL.
struct SnapshotWrite {
    meta: SnapshotMetadata,
    /// A received state machine snapshot, kept in the snap directory (synced) before the
    /// WAL records it, so a restart can load it if the backend did not get it yet.
    blob: Option<Arc<Vec<u8>>>,
}

/// Where the WAL writer keeps received snapshots.
struct SnapDir {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
}

/// Writes one batch of writes in order: runs of plain writes are merged into one fsync;
/// a snapshot record is written after everything before it. Returns the highest number.
fn write_batch(wal: &mut Wal, snap_dir: &SnapDir, batch: Vec<WalWrite>) -> std::io::Result<u64> {
    let mut number = 0;
    let mut hs: Option<HardState> = None;
    let mut entries: Vec<Entry> = Vec::new();
    for write in batch {
        number = number.max(write.number);
        if let Some(snap) = write.snapshot {
            wal.save(hs.take().as_ref(), &std::mem::take(&mut entries))?;
            if let Some(blob) = &snap.blob {
                snapshot::save_file(
                    snap_dir.disk.as_ref(),
                    &snap_dir.dir,
                    snap.meta.term,
                    snap.meta.index,
                    blob,
                )?;
            }
            wal.save_snapshot(&snap.meta)?;
            // Whole segments the snapshot covers are no longer needed to restart.
            wal.release_before(snap.meta.index)?;
        }
        if write.hs.is_some() {
            hs = write.hs;
        }
        if let Some(e) = write.entries.first() {
            // A later ready may replace a suffix of an earlier one (a raft conflict).
            let first_index = e.index;
            entries.retain(|x| x.index < first_index);
            entries.extend(write.entries);
        }
    }
    match (hs, entries.is_empty()) {
        // Only the commit index (or term and vote, which `save_commit` syncs) moved: as
        // etcd, no fsync for a commit index alone.
        (Some(hs), true) => wal.save_commit(&hs)?,
        (hs, _) => wal.save(hs.as_ref(), &entries)?,
    }
    Ok(number)
}

/// Writes readies to the WAL in order, merging whatever is queued into one fsync, and
/// reports the highest ready number that is durable (or the failure, which is fatal).
async fn wal_writer(
    mut wal: Wal,
    snap_dir: SnapDir,
    mut inbox: mpsc::Receiver<WalWrite>,
    done: mpsc::Sender<Result<u64, String>>,
) {
    while let Some(first) = inbox.recv().await {
        let mut batch = vec![first];
        while let Ok(next) = inbox.try_recv() {
            batch.push(next);
        }
        // The writer has a thread of its own (`rt::spawn_dedicated`), so the write and
        // its fsync block nothing else.
        let result = write_batch(&mut wal, &snap_dir, batch);
        // A simulated slow disk charges its sync time here, in this task only, as a real
        // fsync blocks only the thread doing it: raft's loop keeps ticking meanwhile.
        let delay = wal.take_io_delay();
        if !delay.is_zero() {
            rt::sleep(delay).await;
        }
        let report = result.map_err(|e| format!("wal: failed to write to WAL: {e}"));
        let failed = report.is_err();
        if done.send(report).await.is_err() || failed {
            return;
        }
    }
}

/// Settings of the raft actor.
#[derive(Debug, Clone)]
pub struct RaftActorConfig {
    /// This member's id.
    pub member_id: u64,
    /// The cluster id.
    pub cluster_id: u64,
    /// One raft tick, in milliseconds (`--heartbeat-interval`).
    pub heartbeat_interval_ms: u64,
    /// The election timeout in milliseconds (`--election-timeout`).
    pub election_timeout_ms: u64,
    /// `--pre-vote`: a candidate first asks whether it could win, so that a member
    /// rejoining from a partition does not depose a working leader by raising the term.
    pub pre_vote: bool,
    /// The largest encoded proposal accepted (`--max-request-bytes`).
    pub max_request_bytes: usize,
    /// The raft index raft starts applying after (the WAL's snapshot index).
    pub applied_index: u64,
    /// Applied entries between two snapshots (`--snapshot-count`).
    pub snapshot_count: u64,
    /// Entries kept in the log behind a snapshot, so that a slightly lagging follower
    /// still catches up from the log (etcd keeps 5000).
    pub snapshot_catchup_entries: u64,
    /// The disk the WAL and received snapshots are written through.
    pub disk: Arc<dyn Disk>,
    /// Where received snapshots are kept (`<data-dir>/member/snap`).
    pub snap_dir: PathBuf,
    /// This member's metrics (leader changes, WAL fsync latencies).
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// etcd's `--snapshot-count` default.
pub const DEFAULT_SNAPSHOT_COUNT: u64 = 100_000;
/// etcd's `SnapshotCatchUpEntries`.
pub const DEFAULT_SNAPSHOT_CATCHUP_ENTRIES: u64 = 5_000;

/// A fatal raft-actor failure: the member must stop rather than continue unsafely.
#[derive(Debug)]
pub struct RaftFatal(pub String);

impl std::fmt::Display for RaftFatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaftFatal {}

/// The raft actor's state.
pub struct RaftActor {
    node: RawNode<LogStore>,
    store: LogStore,
    wal: Option<Wal>,
    /// The highest ready number handed to the WAL writer.
    last_wal_number: u64,
    /// The index of the latest snapshot recorded in the WAL.
    snapshot_index: u64,
    /// The membership as of each membership change after the latest snapshot, so the
    /// membership at any index a snapshot is taken at is known.
    conf_history: Vec<(u64, ConfState)>,
    /// The answer to a request for the state machine's durable applied index, when a
    /// snapshot is being taken.
    snapshot_rx: Option<oneshot::Receiver<Result<u64, String>>>,
    wal_tx: Option<mpsc::Sender<WalWrite>>,
    wal_done: Option<mpsc::Receiver<Result<u64, String>>>,
    /// Readies sent to the WAL writer, with the messages that may go out only once each
    /// is durable.
    inflight: VecDeque<(u64, Vec<raft::eraftpb::Message>)>,
    transport: Option<Transport>,
    /// Peers a message could not be queued for, reported to raft once the current ready
    /// is advanced (raft must not be stepped while a ready is outstanding).
    unreachable: Vec<u64>,
    ticks: u64,
    config: RaftActorConfig,
    inbox: mpsc::Receiver<RaftMsg>,
    storage_tx: mpsc::Sender<StorageMsg>,
    status_tx: watch::Sender<RaftStatus>,
    pending: HashMap<u64, Waiter>,
    pending_reads: BTreeMap<u64, PendingRead>,
    next_request_id: u64,
    last_leader_id: u64,
    stopping: bool,
    /// Set once this member applied its own removal (or a peer said it was removed).
    removed: bool,
    /// The tick at which the removal was noticed; the loop stops a few ticks later.
    removed_at_tick: Option<u64>,
}

/// A read barrier waiting for raft, and the tick at which it was last asked.
struct PendingRead {
    asked_at_tick: u64,
    reply: oneshot::Sender<Result<u64, EtcdError>>,
}

fn raft_logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

impl RaftActor {
    /// Builds the raft node over a recovered or fresh log.
    pub fn new(
        log: RaftLog,
        config: RaftActorConfig,
        inbox: mpsc::Receiver<RaftMsg>,
        storage_tx: mpsc::Sender<StorageMsg>,
        status_tx: watch::Sender<RaftStatus>,
    ) -> Result<RaftActor, RaftFatal> {
        let election_tick =
            (config.election_timeout_ms / config.heartbeat_interval_ms.max(1)).max(2) as usize;
        let raft_config = raft::Config {
            id: config.member_id,
            election_tick,
            heartbeat_tick: 1,
            // raft hands out every committed entry after its snapshot again (the storage
            // actor skips what the backend already has), as etcd replays its WAL, so that
            // the membership changes among them rebuild raft's configuration. The snapshot
            // index is where the log starts anyway.
            applied: config.applied_index,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: config.pre_vote,
            ..Default::default()
        };
        raft_config
            .validate()
            .map_err(|e| RaftFatal(format!("raft config: {e}")))?;
        let store = log.storage.clone();
        let node = RawNode::new(&raft_config, log.storage, &raft_logger())
            .map_err(|e| RaftFatal(format!("raft: {e}")))?;
        let snapshot_index = log.snapshot.index;
        let conf_history = vec![(snapshot_index, log.snapshot.get_conf_state().clone())];
        // Request ids carry the member id's high bits so that ids proposed by different
        // members do not collide, and start from a random point so that a restarted member
        // does not reuse the ids of its previous life.
        let next_request_id =
            (config.member_id & 0xffff_0000_0000_0000) | (rt::random_u64() & 0x0000_ffff_0000_0000);
        Ok(RaftActor {
            node,
            store,
            wal: Some(log.wal),
            last_wal_number: 0,
            snapshot_index,
            conf_history,
            snapshot_rx: None,
            wal_tx: None,
            wal_done: None,
            inflight: VecDeque::new(),
            transport: None,
            unreachable: Vec::new(),
            ticks: 0,
            config,
            inbox,
            storage_tx,
            status_tx,
            pending: HashMap::new(),
            pending_reads: BTreeMap::new(),
            next_request_id,
            last_leader_id: 0,
            stopping: false,
            removed: false,
            removed_at_tick: None,
        })
    }

    /// Gives the actor a transport to the other members (none for a single member).
    pub fn with_transport(mut self, transport: Transport) -> RaftActor {
        self.transport = Some(transport);
        self
    }

    /// Runs the loop until the inbox closes (shutdown) or a fatal error.
    pub async fn run(mut self) -> Result<(), RaftFatal> {
        let mut wal = self
            .wal
            .take()
            .ok_or_else(|| RaftFatal("wal: missing at start".into()))?;
        wal.set_metrics(self.config.metrics.clone());
        let (wal_tx, wal_rx) = mpsc::channel(MAX_INFLIGHT_READIES);
        let (done_tx, done_rx) = mpsc::channel(MAX_INFLIGHT_READIES);
        let snap_dir = SnapDir {
            disk: self.config.disk.clone(),
            dir: self.config.snap_dir.clone(),
        };
        rt::spawn_dedicated("wal-writer", wal_writer(wal, snap_dir, wal_rx, done_tx))
            .map_err(|e| RaftFatal(format!("wal: cannot start the WAL writer: {e}")))?;
        self.wal_tx = Some(wal_tx);
        self.wal_done = Some(done_rx);
        // A member that is the only voter need not wait an election timeout to lead.
        let voters = self.node.raft.prs().conf().voters().ids().len();
        if voters == 1
            && self
                .node
                .raft
                .prs()
                .conf()
                .voters()
                .contains(self.config.member_id)
        {
            self.node
                .campaign()
                .map_err(|e| RaftFatal(format!("raft campaign: {e}")))?;
        }
        self.rerandomize_election_timeout();
        let mut ticker = rt::Ticker::new(Duration::from_millis(
            self.config.heartbeat_interval_ms.max(1),
        ));
        loop {
            let mut wal_done = self.wal_done.take();
            let mut snapshot_rx = self.snapshot_rx.take();
            tokio::select! {
                // Branches are polled in order, not at random, so a simulation replays from its seed.
                biased;
                _ = ticker.tick() => {
                    self.node.tick();
                    self.on_tick();
                }
                point = recv_snapshot_point(&mut snapshot_rx) => {
                    snapshot_rx = None;
                    match point {
                        Ok(Ok(index)) => self.compact(index)?,
                        Ok(Err(e)) => return Err(RaftFatal(e)),
                        Err(_) => return Err(RaftFatal("storage actor stopped".into())),
                    }
                }
                done = recv_done(&mut wal_done) => {
                    match done {
                        Some(Ok(number)) => self.on_persisted(number),
                        Some(Err(e)) => return Err(RaftFatal(e)),
                        None => return Err(RaftFatal("wal: the WAL writer stopped".into())),
                    }
                }
                msg = self.inbox.recv() => {
                    match msg {
                        Some(RaftMsg::Shutdown) | None => return Ok(()),
                        Some(msg) => {
                            self.handle(msg);
                            for _ in 0..INBOX_BATCH {
                                match self.inbox.try_recv() {
                                    Ok(msg) => self.handle(msg),
                                    Err(_) => break,
                                }
                            }
                        }
                    }
                }
            }
            self.wal_done = wal_done;
            if self.snapshot_rx.is_none() {
                self.snapshot_rx = snapshot_rx;
            }
            while self.inflight.len() < MAX_INFLIGHT_READIES && self.node.has_ready() {
                self.on_ready().await?;
            }
            self.update_snapshot_point();
            self.maybe_snapshot();
            for id in std::mem::take(&mut self.unreachable) {
                self.node.report_unreachable(id);
            }
            self.rerandomize_election_timeout();
            self.publish_status();
            if self.stopping {
                return Ok(());
            }
            if self.removed && self.removed_at_tick.is_none() {
                self.removed_at_tick = Some(self.ticks);
            }
            // etcd stops a removed member after ten ticks rather than at once, so the
            // client that removed it gets its answer and the other members learn that the
            // removal committed.
            if self
                .removed_at_tick
                .is_some_and(|t| self.ticks >= t + REMOVED_STOP_TICKS)
            {
                tracing::warn!(
                    local_member_id = format!("{:x}", self.config.member_id),
                    "the member has been permanently removed from the cluster"
                );
                return Ok(());
            }
        }
    }

    /// Draws the randomized election timeout from the runtime seam whenever the election
    /// clock stands at zero. raft draws its own from `rand::thread_rng`, whose seed comes
    /// from a raw system call that the simulator cannot intercept, so without this a
    /// simulated election would not replay from its seed. Every reset of raft's timeout
    /// also zeroes the clock, and ticks happen only at the start of a loop turn, so the
    /// override at the end of each turn always lands before the timeout is read. Redrawing
    /// when the clock was zeroed for another reason (a heartbeat) keeps the timeout
    /// uniformly distributed, and depends only on raft's state, so it replays exactly.
    fn rerandomize_election_timeout(&mut self) {
        let raft = &mut self.node.raft;
        if raft.election_elapsed != 0 {
            return;
        }
        let min = raft.election_timeout();
        let span = raft.election_timeout().max(1) as u64;
        raft.set_randomized_election_timeout(min + (rt::random_u64() % span) as usize);
    }

    /// Periodic work: re-ask read barriers raft may have dropped, and forget waiters whose
    /// clients gave up (their request timed out), so the bounded maps do not fill.
    fn on_tick(&mut self) {
        self.ticks += 1;
        let now = self.ticks;
        if self.node.raft.leader_id != 0 {
            let stale: Vec<u64> = self
                .pending_reads
                .iter()
                .filter(|(_, r)| now - r.asked_at_tick >= READ_RETRY_TICKS)
                .map(|(&id, _)| id)
                .collect();
            for id in stale {
                if let Some(r) = self.pending_reads.get_mut(&id) {
                    r.asked_at_tick = now;
                }
                self.node.read_index(id.to_be_bytes().to_vec());
            }
        }
        if now.is_multiple_of(CLEANUP_TICKS) {
            self.pending.retain(|_, w| !w.is_closed());
            self.pending_reads.retain(|_, r| !r.reply.is_closed());
        }
    }

    /// The WAL writer made every ready up to `number` durable.
    fn on_persisted(&mut self, number: u64) {
        self.node.on_persist_ready(number);
        while let Some((n, _)) = self.inflight.front() {
            if *n > number {
                break;
            }
            if let Some((_, msgs)) = self.inflight.pop_front() {
                self.send_messages(msgs);
            }
        }
    }

    fn status(&self) -> RaftStatus {
        let raft = &self.node.raft;
        RaftStatus {
            member_id: self.config.member_id,
            cluster_id: self.config.cluster_id,
            leader_id: raft.leader_id,
            term: raft.term,
            commit_index: raft.raft_log.committed,
            last_index: raft.raft_log.last_index(),
            snapshot_index: self.snapshot_index,
            is_learner: raft
                .prs()
                .conf()
                .learners()
                .contains(&self.config.member_id),
            removed: self.removed,
        }
    }

    fn publish_status(&mut self) {
        let status = self.status();
        if status.leader_id != self.last_leader_id {
            if status.leader_id != 0 {
                // etcd counts a change whenever a (new) leader appears.
                self.config
                    .metrics
                    .leader_changes
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(
                    leader = format!("{:x}", status.leader_id),
                    term = status.term,
                    "raft.node: elected leader at term {}",
                    status.term
                );
            } else {
                tracing::info!("raft.node: lost leader");
            }
            // Read barriers taken under the old leader can no longer be answered.
            for (_, r) in std::mem::take(&mut self.pending_reads) {
                let _ = r.reply.send(Err(EtcdError::LeaderChanged));
            }
            self.last_leader_id = status.leader_id;
        }
        self.status_tx.send_if_modified(|old| {
            if *old != status {
                *old = status;
                true
            } else {
                false
            }
        });
    }

    fn handle(&mut self, msg: RaftMsg) {
        match msg {
            RaftMsg::Propose { mut request, reply } => {
                let id = match self.admit_proposal() {
                    Ok(id) => id,
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        return;
                    }
                };
                // The gateway may have filled the user and auth revision; the id is ours.
                request.header.get_or_insert_with(RequestHeader::default).id = id;
                let data = request.encode_to_vec();
                if data.len() > self.config.max_request_bytes {
                    let _ = reply.send(Err(EtcdError::RequestTooLarge));
                    return;
                }
                let proposed = self.node.propose(id.to_be_bytes().to_vec(), data);
                self.track_proposal(id, proposed, reply);
            }
            RaftMsg::ReadIndex { reply } => {
                if self.node.raft.leader_id == 0 {
                    let _ = reply.send(Err(EtcdError::NoLeader));
                    return;
                }
                if self.pending_reads.len() >= MAX_PENDING_READS {
                    let _ = reply.send(Err(EtcdError::TooManyRequests));
                    return;
                }
                let id = self.next_request_id;
                self.next_request_id = self.next_request_id.wrapping_add(1);
                self.pending_reads.insert(
                    id,
                    PendingRead {
                        asked_at_tick: self.ticks,
                        reply,
                    },
                );
                self.node.read_index(id.to_be_bytes().to_vec());
            }
            RaftMsg::Status { reply } => {
                let _ = reply.send(self.status());
            }
            RaftMsg::TransferLeader { target, reply } => {
                // etcd checks leadership first (maintenance server), then the target
                // (`MoveLeader`): detcd has no learners, so every member raft tracks votes.
                if self.node.raft.leader_id != self.config.member_id {
                    let _ = reply.send(Err(EtcdError::NotLeader));
                    return;
                }
                if target == 0 || !self.node.raft.prs().conf().voters().contains(target) {
                    let _ = reply.send(Err(EtcdError::BadLeaderTransferee));
                    return;
                }
                self.node.transfer_leader(target);
                let _ = reply.send(Ok(()));
            }
            // Taken in batches by `run`; the batch stops at the next turn of the loop.
            RaftMsg::Shutdown => {
                self.stopping = true;
            }
            RaftMsg::Step { messages } => {
                for m in messages {
                    // raft refuses messages from unknown members and local message types
                    // with an error; neither is a reason to stop.
                    if let Err(e) = self.node.step(m) {
                        tracing::debug!(error = %e, "raft: ignored a peer message");
                    }
                }
            }
            RaftMsg::Unreachable { member_id } => {
                self.node.report_unreachable(member_id);
            }
            RaftMsg::SnapshotStatus {
                member_id,
                delivered,
            } => {
                let status = if delivered {
                    raft::SnapshotStatus::Finish
                } else {
                    raft::SnapshotStatus::Failure
                };
                self.node.report_snapshot(member_id, status);
            }
            RaftMsg::ProposeConfChange { change, reply } => self.propose_conf_change(change, reply),
            RaftMsg::LearnerReady { member_id, reply } => {
                let _ = reply.send(self.learner_ready(member_id));
            }
            RaftMsg::Removed => self.removed = true,
        }
    }

    async fn on_ready(&mut self) -> Result<(), RaftFatal> {
        let mut rd = self.node.ready();
        if !rd.messages().is_empty() {
            self.send_messages(rd.take_messages());
        }
        if !rd.snapshot().is_empty() {
            return self.on_snapshot_ready(rd).await;
        }
        self.apply_committed(rd.take_committed_entries()).await?;
        for rs in rd.take_read_states() {
            self.answer_read(&rs.request_ctx, rs.index);
        }
        let entries = rd.take_entries();
        let hs = rd.hs().cloned();
        let (persisted_messages, immediate) = split_persisted(rd.take_persisted_messages());
        self.send_messages(immediate);
        if entries.is_empty() && hs.is_none() && self.inflight.is_empty() {
            // Nothing to make durable and nothing ahead of it: finish the ready now.
            self.send_messages(persisted_messages);
            let mut light = self.node.advance_append(rd);
            self.send_messages(light.take_messages());
            self.apply_committed(light.take_committed_entries()).await?;
            self.node.advance_apply();
            return Ok(());
        }
        // raft reads entries back through its storage before they are durable (a leader
        // replicates while it persists), so its cache gets them now; the WAL, which is
        // what survives a crash, gets them through the writer.
        {
            let store = self.node.mut_store();
            let mut core = store.wl();
            if !entries.is_empty() {
                core.append(&entries)
                    .map_err(|e| RaftFatal(format!("raft storage: {e}")))?;
            }
            if let Some(hs) = &hs {
                core.set_hard_state(hs.clone());
            }
        }
        let number = rd.number();
        self.node.advance_append_async(rd);
        self.node.advance_apply();
        self.inflight.push_back((number, persisted_messages));
        self.last_wal_number = number;
        if crate::planted::active(crate::planted::Bug::AckBeforeFsync) {
            // The planted bug: acknowledge and vote as if the write were already durable.
            self.on_persisted(number);
        }
        let wal_tx = self
            .wal_tx
            .as_ref()
            .ok_or_else(|| RaftFatal("wal: the WAL writer is gone".into()))?;
        // Never full: at most MAX_INFLIGHT_READIES writes are outstanding, the capacity.
        wal_tx
            .try_send(WalWrite {
                number,
                hs,
                entries,
                snapshot: None,
            })
            .map_err(|_| RaftFatal("wal: the WAL writer stopped".into()))?;
        Ok(())
    }

    /// Handles a ready carrying a snapshot from the leader: this member's log was behind
    /// the leader's compacted log, so the state machine is replaced wholesale.
    ///
    /// Done synchronously, as etcd does: the earlier writes are waited for, the snapshot
    /// (its state in the snap directory, then its WAL record) and this ready's entries are
    /// made durable, and only then is the state handed to the storage actor, ahead of any
    /// entry that follows it. Installing before the WAL records the snapshot could leave a
    /// backend ahead of a log that does not explain it.
    async fn on_snapshot_ready(&mut self, mut rd: raft::Ready) -> Result<(), RaftFatal> {
        self.drain_inflight().await?;
        let snap = rd.snapshot().clone();
        let meta = snap.get_metadata().clone();
        let blob = Arc::new(snap.data.to_vec());
        // The transport checked the blob before raft saw it; a bad one here is a bug.
        snapshot::verify(&blob).map_err(|e| RaftFatal(format!("raft: {e}")))?;
        tracing::info!(
            index = meta.index,
            term = meta.term,
            size_bytes = blob.len(),
            "applying snapshot from the leader"
        );
        let entries = rd.take_entries();
        let hs = rd.hs().cloned();
        let number = rd.number();
        let wal_tx = self
            .wal_tx
            .as_ref()
            .ok_or_else(|| RaftFatal("wal: the WAL writer is gone".into()))?;
        wal_tx
            .try_send(WalWrite {
                number,
                hs: hs.clone(),
                entries: entries.clone(),
                snapshot: Some(SnapshotWrite {
                    meta: meta.clone(),
                    blob: Some(blob.clone()),
                }),
            })
            .map_err(|_| RaftFatal("wal: the WAL writer stopped".into()))?;
        self.last_wal_number = number;
        match self.wal_done.as_mut() {
            Some(done) => match done.recv().await {
                Some(Ok(n)) if n >= number => {}
                Some(Ok(n)) => {
                    return Err(RaftFatal(format!(
                        "wal: the writer reported ready {n} while {number} was the only one outstanding"
                    )))
                }
                Some(Err(e)) => return Err(RaftFatal(e)),
                None => return Err(RaftFatal("wal: the WAL writer stopped".into())),
            },
            None => return Err(RaftFatal("wal: the WAL writer is gone".into())),
        }
        {
            let mut core = self.store.wl();
            core.apply_snapshot(&meta);
            core.append(&entries)
                .map_err(|e| RaftFatal(format!("raft storage: {e}")))?;
            if let Some(hs) = hs {
                core.set_hard_state(hs);
            }
        }
        self.snapshot_index = meta.index;
        self.conf_history = vec![(meta.index, meta.get_conf_state().clone())];
        self.storage_tx
            .send(StorageMsg::InstallSnapshot {
                index: meta.index,
                blob,
            })
            .await
            .map_err(|_| RaftFatal("storage actor stopped".into()))?;
        self.send_messages(rd.take_persisted_messages());
        self.apply_committed(rd.take_committed_entries()).await?;
        for rs in rd.take_read_states() {
            self.answer_read(&rs.request_ctx, rs.index);
        }
        let mut light = self.node.advance_append(rd);
        self.send_messages(light.take_messages());
        self.apply_committed(light.take_committed_entries()).await?;
        self.node.advance_apply();
        Ok(())
    }

    /// Waits until every write handed to the WAL writer is durable.
    async fn drain_inflight(&mut self) -> Result<(), RaftFatal> {
        while !self.inflight.is_empty() {
            let done = match self.wal_done.as_mut() {
                Some(done) => done.recv().await,
                None => return Err(RaftFatal("wal: the WAL writer is gone".into())),
            };
            match done {
                Some(Ok(number)) => self.on_persisted(number),
                Some(Err(e)) => return Err(RaftFatal(e)),
                None => return Err(RaftFatal("wal: the WAL writer stopped".into())),
            }
        }
        Ok(())
    }

    /// Records the membership raft has after applying the conf change at `index`.
    pub fn record_conf_state(&mut self, index: u64, cs: ConfState) {
        self.conf_history.push((index, cs));
    }

    /// The membership as of `index` (at or after the latest snapshot).
    fn conf_state_at(&self, index: u64) -> ConfState {
        self.conf_history
            .iter()
            .rev()
            .find(|(i, _)| *i <= index)
            .or_else(|| self.conf_history.first())
            .map(|(_, cs)| cs.clone())
            .unwrap_or_default()
    }

    /// Moves the snapshot point (what a snapshot sent to a follower describes) to the
    /// newest entry handed to the state machine.
    fn update_snapshot_point(&mut self) {
        let applied = self.node.raft.raft_log.applied;
        if applied == 0 || self.store.rl().snapshot_point().index == applied {
            return;
        }
        let Ok(term) = self.node.raft.raft_log.term(applied) else {
            return;
        };
        let mut meta = SnapshotMetadata {
            index: applied,
            term,
            ..Default::default()
        };
        meta.set_conf_state(self.node.raft.prs().conf().to_conf_state());
        self.store.wl().set_snapshot_point(meta);
    }

    /// Starts a snapshot once `--snapshot-count` entries were applied since the last one:
    /// asks the storage actor to make its state durable and say how far it is.
    fn maybe_snapshot(&mut self) {
        if self.snapshot_rx.is_some() || self.config.snapshot_count == 0 {
            return;
        }
        let applied = self.node.raft.raft_log.applied;
        if applied <= self.snapshot_index + self.config.snapshot_count {
            return;
        }
        let (tx, rx) = oneshot::channel();
        // A full storage inbox only delays the snapshot to a later turn.
        if self
            .storage_tx
            .try_send(StorageMsg::SyncApplied { reply: tx })
            .is_ok()
        {
            tracing::info!(
                applied_index = applied,
                last_snapshot_index = self.snapshot_index,
                snapshot_count = self.config.snapshot_count,
                "triggering snapshot"
            );
            self.snapshot_rx = Some(rx);
        }
    }

    /// The state machine holds everything up to `index` durably: record a snapshot there
    /// in the WAL (releasing the segments it covers) and compact raft's log, keeping
    /// `snapshot_catchup_entries` entries for followers that are only a little behind.
    fn compact(&mut self, index: u64) -> Result<(), RaftFatal> {
        if index <= self.snapshot_index {
            return Ok(());
        }
        let term = self
            .node
            .raft
            .raft_log
            .term(index)
            .map_err(|e| RaftFatal(format!("raft: no term for applied index {index}: {e}")))?;
        let mut meta = SnapshotMetadata {
            index,
            term,
            ..Default::default()
        };
        meta.set_conf_state(self.conf_state_at(index));
        let wal_tx = self
            .wal_tx
            .as_ref()
            .ok_or_else(|| RaftFatal("wal: the WAL writer is gone".into()))?;
        // Never full for long: the writer's queue has room for every inflight ready and
        // snapshots are rare; a full queue postpones this snapshot to the next trigger.
        if wal_tx
            .try_send(WalWrite {
                number: self.last_wal_number,
                hs: None,
                entries: Vec::new(),
                snapshot: Some(SnapshotWrite { meta, blob: None }),
            })
            .is_err()
        {
            return Ok(());
        }
        self.snapshot_index = index;
        let keep_from = self.conf_history.partition_point(|(i, _)| *i <= index);
        if keep_from > 1 {
            self.conf_history.drain(..keep_from - 1);
        }
        let compact_to = index.saturating_sub(self.config.snapshot_catchup_entries);
        self.store.wl().compact(compact_to);
        tracing::info!(snapshot_index = index, "saved snapshot");
        tracing::info!(compact_index = compact_to, "compacted Raft logs");
        Ok(())
    }

    /// Proposes a membership change as a raft conf change whose entry context is the
    /// request id, so the waiter is found when it is applied, like any proposal.
    fn propose_conf_change(&mut self, change: MemberChange, reply: Waiter) {
        let id = match self.admit_proposal() {
            Ok(id) => id,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let proposed = self
            .node
            .propose_conf_change(id.to_be_bytes().to_vec(), change.to_conf_change());
        self.track_proposal(id, proposed, reply);
    }

    /// Checks that a proposal can be taken now (there is a leader, and room to wait for
    /// it) and gives it a request id.
    fn admit_proposal(&mut self) -> Result<u64, EtcdError> {
        if self.node.raft.leader_id == 0 {
            return Err(EtcdError::NoLeader);
        }
        if self.pending.len() >= MAX_PENDING_PROPOSALS {
            return Err(EtcdError::TooManyRequests);
        }
        let id = self.next_request_id;
        self.next_request_id = self.next_request_id.wrapping_add(1);
        Ok(id)
    }

    /// Waits for the proposal `id` to be applied, or answers why raft refused it.
    fn track_proposal(&mut self, id: u64, proposed: raft::Result<()>, reply: Waiter) {
        match proposed {
            Ok(()) => {
                self.pending.insert(id, reply);
            }
            Err(_) => {
                let _ = reply.send(Err(if self.node.raft.leader_id == 0 {
                    EtcdError::NoLeader
                } else {
                    EtcdError::LeaderChanged
                }));
            }
        }
    }

    /// etcd's `isLearnerReady`: only the leader knows how far a learner has replicated.
    fn learner_ready(&self, member_id: u64) -> Result<(), EtcdError> {
        let raft = &self.node.raft;
        if raft.leader_id != self.config.member_id {
            return Err(EtcdError::NotLeader);
        }
        let Some(learner) = raft.prs().get(member_id) else {
            return Err(EtcdError::MemberNotFound);
        };
        let leader_match = raft
            .prs()
            .get(self.config.member_id)
            .map(|p| p.matched)
            .unwrap_or(0);
        if membership::learner_ready(leader_match, learner.matched) {
            Ok(())
        } else {
            Err(EtcdError::LearnerNotReady)
        }
    }

    fn conf_ids(&self) -> ConfIds {
        let conf = self.node.raft.prs().conf();
        ConfIds {
            voters: conf.voters().ids().iter().collect(),
            learners: conf.learners().iter().copied().collect(),
        }
    }

    /// Decides whether a committed conf change takes effect and, if so, applies it to
    /// raft's configuration. The decision depends only on the configuration the entry
    /// applies to, so every member (and every replay of the log) decides the same.
    fn apply_conf_change_entry(&mut self, entry: &Entry) -> Result<MemberChange, EtcdError> {
        let mut cc = ConfChange::default();
        cc.merge_from_bytes(&entry.data)
            .map_err(|e| EtcdError::Internal(format!("raft: conf change does not decode: {e}")))?;
        let change = MemberChange::from_conf_change(&cc).map_err(EtcdError::Internal)?;
        if let Err(e) = membership::check_conf_change(&self.conf_ids(), &change) {
            tracing::warn!(
                index = entry.index,
                member = format!("{:x}", change.member.id),
                error = %e,
                "validation on configuration change failed"
            );
            return Err(e);
        }
        let cs = self
            .node
            .apply_conf_change(&cc)
            .map_err(|e| EtcdError::Internal(format!("raft: {e}")))?;
        // Snapshots taken at or after this index describe the new membership.
        self.record_conf_state(entry.index, cs);
        tracing::info!(
            index = entry.index,
            change = ?change.kind,
            member = format!("{:x}", change.member.id),
            "applied a configuration change through raft"
        );
        if change.kind == membership::ChangeKind::Remove
            && change.member.id == self.config.member_id
        {
            self.removed = true;
            // A leader that removed itself steps down at once. raft-rs, unlike etcd's raft,
            // assumes a leader is in its own configuration: an append answer or a proposal
            // reaching it in the few ticks before it stops would find no progress for
            // itself and panic. As a follower without a leader it ignores the former and
            // refuses the latter; the others elect a new leader among themselves.
            if self.node.raft.state == raft::StateRole::Leader {
                let term = self.node.raft.term;
                self.node.raft.become_follower(term, raft::INVALID_ID);
            }
        }
        Ok(change)
    }

    async fn apply_committed(&mut self, mut entries: Vec<Entry>) -> Result<(), RaftFatal> {
        // Conf changes go to the storage actor one by one, in order between the batches of
        // other entries, each with the decision taken here when it was applied to raft.
        while let Some(pos) = entries
            .iter()
            .position(|e| e.get_entry_type() == EntryType::EntryConfChange)
        {
            let mut rest = entries.split_off(pos);
            let rest_tail = rest.split_off(1);
            self.apply_entries(entries).await?;
            let entry = rest.remove(0);
            let change = self.apply_conf_change_entry(&entry);
            let waiter = self.take_waiter(&entry);
            self.storage_tx
                .send(StorageMsg::ApplyConfChange {
                    entry,
                    change,
                    waiter,
                })
                .await
                .map_err(|_| RaftFatal("storage actor stopped".into()))?;
            entries = rest_tail;
        }
        self.apply_entries(entries).await
    }

    /// The client waiting for entry `e`, found by the request id in its context.
    fn take_waiter(&mut self, e: &Entry) -> Option<Waiter> {
        if e.context.len() == 8 {
            let mut b = [0u8; 8];
            b.copy_from_slice(&e.context);
            self.pending.remove(&u64::from_be_bytes(b))
        } else {
            None
        }
    }

    async fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<(), RaftFatal> {
        if entries.is_empty() {
            return Ok(());
        }
        let waiters = entries.iter().map(|e| self.take_waiter(e)).collect();
        self.storage_tx
            .send(StorageMsg::Apply { entries, waiters })
            .await
            .map_err(|_| RaftFatal("storage actor stopped".into()))
    }

    fn answer_read(&mut self, ctx: &[u8], index: u64) {
        if ctx.len() != 8 {
            return;
        }
        let mut b = [0u8; 8];
        b.copy_from_slice(ctx);
        if let Some(r) = self.pending_reads.remove(&u64::from_be_bytes(b)) {
            let _ = r.reply.send(Ok(index));
        }
    }

    fn send_messages(&mut self, msgs: Vec<raft::eraftpb::Message>) {
        for m in msgs {
            let to = m.to;
            let sent = match &mut self.transport {
                Some(t) => t.send(m),
                None => false,
            };
            if !sent {
                // A full queue means the peer is slow or gone: raft probes it again later
                // rather than streaming appends into the void.
                tracing::trace!(to = format!("{to:x}"), "raft: dropped a message to a peer");
                if !self.unreachable.contains(&to) {
                    self.unreachable.push(to);
                }
            }
        }
    }
}

/// Splits a follower's messages into those that must wait until the ready they belong to
/// is durable and those that may go now.
///
/// raft-rs holds back every message of a follower's ready until it is persisted, heartbeat
/// answers included, so a follower with a slow disk would look dead to its leader, which
/// then steps down (check-quorum) although nothing is wrong. Only answers that promise
/// durable state must wait, as etcd's raft decides: an append acknowledgement (the
/// entries) and a vote or pre-vote (the vote and term). A candidate's own vote requests
/// wait too: raft-rs asserts, when a candidate becomes leader, that its whole log was
/// durable before it asked for votes (the chaos simulator found the assertion firing
/// with a slow disk during an election). Heartbeat answers, forwarded proposals and read
/// requests promise nothing about this member's disk.
fn split_persisted(
    msgs: Vec<raft::eraftpb::Message>,
) -> (Vec<raft::eraftpb::Message>, Vec<raft::eraftpb::Message>) {
    use raft::eraftpb::MessageType;
    msgs.into_iter().partition(|m| {
        matches!(
            m.get_msg_type(),
            MessageType::MsgAppendResponse
                | MessageType::MsgRequestVote
                | MessageType::MsgRequestPreVote
                | MessageType::MsgRequestVoteResponse
                | MessageType::MsgRequestPreVoteResponse
        )
    })
}

/// Receives the storage actor's answer to a snapshot request; pending forever when no
/// snapshot is being taken.
async fn recv_snapshot_point(
    rx: &mut Option<oneshot::Receiver<Result<u64, String>>>,
) -> Result<Result<u64, String>, oneshot::error::RecvError> {
    match rx {
        Some(rx) => rx.await,
        None => std::future::pending().await,
    }
}

/// Receives the WAL writer's next report; pending forever once there is no writer, so
/// the select in the loop simply never picks this branch.
async fn recv_done(
    rx: &mut Option<mpsc::Receiver<Result<u64, String>>>,
) -> Option<Result<u64, String>> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
