//! The raft actor: owns the `RawNode` and the WAL, and runs raft's Ready loop.
//!
//! Inputs arrive as [`RaftMsg`]s and clock ticks; each turn of the loop feeds them to raft,
//! then handles one `Ready`: persist entries and hard state to the WAL (one fsync per
//! batch), hand committed entries to the storage actor, answer read barriers, advance.
//! The actor awaits only on channels, the clock and the WAL's blocking write; all
//! consensus logic is the raft crate's pure state machine.

use std::collections::HashMap;
use std::time::Duration;

use prost::Message as _;
use raft::eraftpb::{Entry, HardState};
use raft::storage::MemStorage;
use raft::{RawNode, StateRole};
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::EtcdError;
use crate::msg::{RaftMsg, RaftStatus, StorageMsg, Waiter};
use crate::pb::detcdpb::RequestHeader;
use crate::raft::log::RaftLog;
use crate::rt;
use crate::storage::wal::Wal;

/// Proposals waiting for their apply result, at most; past it new proposals are refused
/// with "too many requests" instead of growing memory (etcd's maxGapBetweenApplyAndCommitIndex
/// plays the same role).
pub const MAX_PENDING_PROPOSALS: usize = 10_000;
/// Read barriers waiting for raft, at most.
pub const MAX_PENDING_READS: usize = 10_000;
/// Messages taken from the inbox per loop turn, so one Ready batches many proposals.
const INBOX_BATCH: usize = 256;

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
    /// The largest encoded proposal accepted (`--max-request-bytes`).
    pub max_request_bytes: usize,
    /// The raft index the state machine has already applied.
    pub applied_index: u64,
}

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
    node: RawNode<MemStorage>,
    wal: Option<Wal>,
    config: RaftActorConfig,
    inbox: mpsc::Receiver<RaftMsg>,
    storage_tx: mpsc::Sender<StorageMsg>,
    status_tx: watch::Sender<RaftStatus>,
    pending: HashMap<u64, Waiter>,
    pending_reads: HashMap<u64, oneshot::Sender<Result<u64, EtcdError>>>,
    next_request_id: u64,
    last_leader_id: u64,
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
        let election_tick = (config.election_timeout_ms / config.heartbeat_interval_ms.max(1))
            .max(2) as usize;
        let raft_config = raft::Config {
            id: config.member_id,
            election_tick,
            heartbeat_tick: 1,
            applied: config.applied_index,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        raft_config
            .validate()
            .map_err(|e| RaftFatal(format!("raft config: {e}")))?;
        let node = RawNode::new(&raft_config, log.storage, &raft_logger())
            .map_err(|e| RaftFatal(format!("raft: {e}")))?;
        // Request ids carry the member id's high bits so that ids proposed by different
        // members do not collide, and start from a random point so that a restarted member
        // does not reuse the ids of its previous life.
        let next_request_id = (config.member_id & 0xffff_0000_0000_0000)
            | (rt::random_u64() & 0x0000_ffff_0000_0000);
        Ok(RaftActor {
            node,
            wal: Some(log.wal),
            config,
            inbox,
            storage_tx,
            status_tx,
            pending: HashMap::new(),
            pending_reads: HashMap::new(),
            next_request_id,
            last_leader_id: 0,
        })
    }

    /// Runs the loop until the inbox closes (shutdown) or a fatal error.
    pub async fn run(mut self) -> Result<(), RaftFatal> {
        // A member that is the only voter need not wait an election timeout to lead.
        let voters = self.node.raft.prs().conf().voters().ids().len();
        if voters == 1 && self.node.raft.prs().conf().voters().contains(self.config.member_id) {
            self.node
                .campaign()
                .map_err(|e| RaftFatal(format!("raft campaign: {e}")))?;
        }
        let mut ticker =
            tokio::time::interval(Duration::from_millis(self.config.heartbeat_interval_ms.max(1)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    self.node.tick();
                }
                msg = self.inbox.recv() => {
                    match msg {
                        Some(msg) => {
                            self.handle(msg);
                            for _ in 0..INBOX_BATCH {
                                match self.inbox.try_recv() {
                                    Ok(msg) => self.handle(msg),
                                    Err(_) => break,
                                }
                            }
                        }
                        None => return Ok(()),
                    }
                }
            }
            while self.node.has_ready() {
                self.on_ready().await?;
            }
            self.publish_status();
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
        }
    }

    fn publish_status(&mut self) {
        let status = self.status();
        if status.leader_id != self.last_leader_id {
            if status.leader_id != 0 {
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
            for (_, reply) in self.pending_reads.drain() {
                let _ = reply.send(Err(EtcdError::LeaderChanged));
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
                if self.node.raft.state != StateRole::Leader {
                    // Forwarding to the leader arrives with peer transport; until then a
                    // member that does not lead cannot take proposals.
                    let _ = reply.send(Err(if self.node.raft.leader_id == 0 {
                        EtcdError::NoLeader
                    } else {
                        EtcdError::NotCapable
                    }));
                    return;
                }
                if self.pending.len() >= MAX_PENDING_PROPOSALS {
                    let _ = reply.send(Err(EtcdError::TooManyRequests));
                    return;
                }
                let id = self.next_request_id;
                self.next_request_id = self.next_request_id.wrapping_add(1);
                request.header = Some(RequestHeader { id });
                let data = request.encode_to_vec();
                if data.len() > self.config.max_request_bytes {
                    let _ = reply.send(Err(EtcdError::RequestTooLarge));
                    return;
                }
                match self.node.propose(id.to_be_bytes().to_vec(), data) {
                    Ok(()) => {
                        self.pending.insert(id, reply);
                    }
                    Err(_) => {
                        let _ = reply.send(Err(EtcdError::LeaderChanged));
                    }
                }
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
                self.pending_reads.insert(id, reply);
                self.node.read_index(id.to_be_bytes().to_vec());
            }
            RaftMsg::Status { reply } => {
                let _ = reply.send(self.status());
            }
        }
    }

    async fn on_ready(&mut self) -> Result<(), RaftFatal> {
        let mut rd = self.node.ready();
        if !rd.messages().is_empty() {
            self.send_messages(rd.take_messages());
        }
        if !rd.snapshot().is_empty() {
            return Err(RaftFatal(
                "raft: received a snapshot, which this member cannot install yet".into(),
            ));
        }
        self.apply_committed(rd.take_committed_entries()).await?;
        for rs in rd.take_read_states() {
            self.answer_read(&rs.request_ctx, rs.index);
        }
        let entries = rd.take_entries();
        let hs = rd.hs().cloned();
        if !entries.is_empty() || hs.is_some() {
            self.persist(hs, entries).await?;
        }
        if !rd.persisted_messages().is_empty() {
            self.send_messages(rd.take_persisted_messages());
        }
        let mut light = self.node.advance(rd);
        if let Some(commit) = light.commit_index() {
            self.node.mut_store().wl().mut_hard_state().set_commit(commit);
        }
        self.send_messages(light.take_messages());
        self.apply_committed(light.take_committed_entries()).await?;
        self.node.advance_apply();
        Ok(())
    }

    /// Appends entries and the hard state to the WAL with one fsync, then to raft's cache.
    /// The write runs off the async workers so that the loop's clock keeps ticking.
    async fn persist(&mut self, hs: Option<HardState>, entries: Vec<Entry>) -> Result<(), RaftFatal> {
        let mut wal = self
            .wal
            .take()
            .ok_or_else(|| RaftFatal("wal: lost by an earlier failure".into()))?;
        let (wal, result, hs, entries) = rt::blocking(move || {
            let result = wal.save(hs.as_ref(), &entries);
            (wal, result, hs, entries)
        })
        .await;
        self.wal = Some(wal);
        result.map_err(|e| RaftFatal(format!("wal: failed to write to WAL: {e}")))?;
        let store = self.node.mut_store();
        let mut core = store.wl();
        if !entries.is_empty() {
            core.append(&entries)
                .map_err(|e| RaftFatal(format!("raft storage: {e}")))?;
        }
        if let Some(hs) = hs {
            core.set_hardstate(hs);
        }
        Ok(())
    }

    async fn apply_committed(&mut self, entries: Vec<Entry>) -> Result<(), RaftFatal> {
        if entries.is_empty() {
            return Ok(());
        }
        let waiters = entries
            .iter()
            .map(|e| {
                if e.context.len() == 8 {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&e.context);
                    self.pending.remove(&u64::from_be_bytes(b))
                } else {
                    None
                }
            })
            .collect();
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
        if let Some(reply) = self.pending_reads.remove(&u64::from_be_bytes(b)) {
            let _ = reply.send(Ok(index));
        }
    }

    fn send_messages(&mut self, msgs: Vec<raft::eraftpb::Message>) {
        // Peer transport arrives with multi-member clusters; a single member sends nothing.
        for m in msgs {
            tracing::trace!(to = m.to, "raft: no transport for message");
        }
    }
}
