//! The peer transport: raft messages between members over an internal gRPC service on
//! `--listen-peer-urls`, and the lease calls a follower forwards to the leader.
//!
//! Outbound, each peer has one sender task fed by a bounded queue. The raft actor never
//! waits for the network: when a peer's queue is full the message is dropped and raft is
//! told the peer is unreachable, exactly as etcd's rafthttp does, because raft tolerates
//! lost messages and retransmits what matters. A sender batches whatever is queued and
//! writes the batch to one long-lived `SendStream` call, as etcd's rafthttp keeps one
//! stream per peer: a batch then costs one HTTP/2 DATA frame, where a unary call cost a
//! new stream with headers, trailers and an answer on both sides (profiled: the unary
//! calls were most of a 3-member cluster's CPU for a single client's puts). Because a
//! stream answers nothing per batch, the sender probes the peer with an empty unary call
//! every [`PROBE_INTERVAL`]; the probes mark reachability and measure round trips, and a
//! failed probe or a broken stream drops the connection. The sender then reconnects with
//! a bounded exponential backoff and drops the messages it could not deliver instead of
//! replaying stale heartbeats later. A peer that does not know `SendStream` (an older
//! detcd) gets one unary call per batch.
//!
//! Inbound, every batch is checked before anything is decoded: the cluster id must be
//! ours (a member of another cluster is refused with etcd's "cluster ID mismatch"), the
//! sender must be a known member, and each encoded message is bounded by
//! [`MAX_PEER_MESSAGE_BYTES`] because raft's `protobuf` 2 decoder can be driven into deep
//! recursion by hostile input. Nothing a peer sends can make this member panic: bad input
//! is answered with an error status and logged.
//!
//! Everything goes through tonic, which madsim replaces under simulation, so the same code
//! runs over real TCP and over the simulated network.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status};

use crate::actors::lease_timer::LeaseMsg;
use crate::error::EtcdError;
use crate::gateway::Handle;
use crate::msg::{MembershipRx, RaftMsg, RaftStatus, StorageMsg};
use crate::pb::detcdpb::MemberRecord;
use crate::pb::detcdraftpb::raft_client::RaftClient;
use crate::pb::detcdraftpb::raft_server::Raft;
use crate::pb::detcdraftpb::{
    LeaseRenewRequest, LeaseRenewResponse, MembersRequest, MembersResponse, PromoteRequest,
    PromoteResponse, RaftAck, RaftBatch, SnapshotChunk,
};
use crate::raft::MAX_PEER_MESSAGE_BYTES;
use crate::rt;
use crate::rt::watch;
use crate::storage::snapshot;

/// Messages queued for one peer, at most; past it new messages are dropped (etcd's
/// rafthttp queues 4096 per peer stream).
pub const PEER_QUEUE_BOUND: usize = 4096;
/// Messages sent in one call, at most.
const PEER_BATCH_MAX: usize = 512;
/// How long one delivery call may take before the peer is considered unreachable.
const PEER_SEND_TIMEOUT: Duration = Duration::from_secs(2);
/// How long connecting to a peer may take.
const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The first and the largest pause between reconnection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// The bytes of state in one snapshot chunk.
const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
/// The largest snapshot a member accepts: twice etcd's largest recommended backend quota
/// (8 GiB), so a hostile or confused peer cannot make it buffer without bound.
pub const MAX_SNAPSHOT_BYTES: u64 = 16 * 1024 * 1024 * 1024;
/// How long preparing a snapshot in the storage actor may take.
const SNAPSHOT_PREPARE_TIMEOUT: Duration = Duration::from_secs(60);
/// The time allowed to stream a snapshot: a base plus one second per MiB, so a slow but
/// working link finishes while a stalled one is given up.
const SNAPSHOT_SEND_BASE_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest gRPC message the peer service accepts: a full batch of maximal raft
/// messages is never built (see [`PeerSender`]), so this leaves room for framing only.
pub const MAX_PEER_GRPC_BYTES: usize = MAX_PEER_MESSAGE_BYTES + 64 * 1024;

/// A sender probes its peer this often with an empty unary batch, so that every peer's
/// reachability is known even where raft sends nothing (followers talk only to the
/// leader) and a stalled peer is noticed although the stream answers nothing per batch.
/// `--strict-reconfig-check` relies on it.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// The text of the refusal a removed member's messages get from its former peers.
pub const MEMBER_REMOVED_MESSAGE: &str = "the member has been permanently removed from the cluster";

/// Since when each peer has been reachable without interruption (absent: not reachable
/// now), as the peer senders observe it (etcd's `ActiveSince`).
#[derive(Debug, Clone, Default)]
pub struct PeerHealth {
    active_since: Arc<Mutex<BTreeMap<u64, rt::Instant>>>,
}

impl PeerHealth {
    /// Since when `id` has been reachable, if it is.
    pub fn active_since(&self, id: u64) -> Option<rt::Instant> {
        self.lock().get(&id).copied()
    }

    fn mark(&self, id: u64, active: bool) {
        let mut map = self.lock();
        if active {
            map.entry(id).or_insert_with(rt::now);
        } else {
            map.remove(&id);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, rt::Instant>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.active_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What the transport needs about the cluster. The membership is live: members added or
/// removed through raft appear here once the storage actor applies them.
#[derive(Clone)]
pub struct PeerConfig {
    /// This member's id.
    pub local_id: u64,
    /// The cluster id.
    pub cluster_id: u64,
    /// The applied membership.
    pub membership: MembershipRx,
    /// Peer reachability, written by the senders.
    pub health: PeerHealth,
    /// Members this member has heard from but not yet applied the addition of.
    pub remotes: Remotes,
    /// How peers are dialed (TLS for https peer URLs).
    pub dialer: PeerDialer,
    /// Where probe round trips are recorded (`etcd_network_peer_round_trip_time_seconds`).
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// How this member dials its peers: in the clear for http peer URLs, over TLS with the
/// peer client configuration (`--peer-cert-file`, `--peer-trusted-ca-file`, ...) for
/// https ones.
#[derive(Debug, Clone, Default)]
pub struct PeerDialer {
    tls: Option<Arc<crate::tls::ClientTls>>,
}

impl PeerDialer {
    /// A dialer that uses `tls` for https URLs (none: plain connections only).
    pub fn new(tls: Option<Arc<crate::tls::ClientTls>>) -> PeerDialer {
        PeerDialer { tls }
    }

    fn tls_for(&self, url: &str) -> Option<Arc<crate::tls::ClientTls>> {
        if url.starts_with("https://") {
            self.tls.clone()
        } else {
            None
        }
    }

    /// A channel to `url`, connected within `connect_timeout`.
    pub async fn connect(
        &self,
        url: &str,
        connect_timeout: Duration,
    ) -> Result<tonic::transport::Channel, String> {
        let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
            .map_err(|e| e.to_string())?
            .connect_timeout(connect_timeout);
        let connect = rt::connect_channel(endpoint, self.tls_for(url));
        match rt::timeout_at(rt::now() + connect_timeout, connect).await {
            Ok(Ok(channel)) => Ok(channel),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".into()),
        }
    }

    /// A channel to `url` that connects on first use; every call on it is bounded by
    /// `request_timeout`.
    fn connect_lazy(
        &self,
        url: &str,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Option<tonic::transport::Channel> {
        let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
            .ok()?
            .connect_timeout(connect_timeout)
            .timeout(request_timeout);
        Some(rt::connect_channel_lazy(endpoint, self.tls_for(url)))
    }
}

/// Senders this member does not know as members yet, with their peer URLs, learned from
/// their batches. etcd keeps such "remotes" so that a member that lags behind a
/// membership change can still answer a leader that joined after its applied state: it
/// would otherwise refuse the leader and never hear about the change that adds it.
#[derive(Clone, Default)]
pub struct Remotes(Arc<Mutex<BTreeMap<u64, Vec<String>>>>);

impl Remotes {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Vec<String>>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records that `id` sent from `urls` (bounded: a cluster has few members).
    fn learn(&self, id: u64, urls: &[String]) {
        let mut map = self.lock();
        if map.len() < MAX_REMOTES || map.contains_key(&id) {
            map.insert(id, urls.to_vec());
        }
    }

    /// The peer URLs of remote `id`, if known.
    fn get(&self, id: u64) -> Option<Vec<String>> {
        self.lock().get(&id).cloned()
    }
}

/// The most senders outside the applied membership a member keeps addresses for.
const MAX_REMOTES: usize = 16;

struct PeerQueue {
    urls: Vec<String>,
    /// This member's own peer URLs as its batches to the peer announce them.
    own_urls: Vec<String>,
    tx: mpsc::Sender<Message>,
    /// One snapshot at a time (raft sends a follower nothing else until it hears how the
    /// snapshot went); dropping it ends the peer's snapshot sender.
    snapshot_tx: mpsc::Sender<Message>,
}

/// The raft actor's side of the transport: one bounded queue per peer, following the
/// applied membership.
pub struct Transport {
    config: PeerConfig,
    raft_tx: mpsc::Sender<RaftMsg>,
    storage_tx: mpsc::Sender<StorageMsg>,
    queues: BTreeMap<u64, PeerQueue>,
}

impl Transport {
    /// Starts one sender task and one snapshot sender task per peer. `raft_tx` receives
    /// unreachability and snapshot reports; `storage_tx` provides snapshots' state.
    pub fn start(
        config: &PeerConfig,
        raft_tx: mpsc::Sender<RaftMsg>,
        storage_tx: mpsc::Sender<StorageMsg>,
    ) -> Transport {
        let mut t = Transport {
            config: config.clone(),
            raft_tx,
            storage_tx,
            queues: BTreeMap::new(),
        };
        t.sync();
        t
    }

    /// Brings the sender tasks in line with the membership: a task for every new member,
    /// none for removed ones (dropping a queue ends its task), and a fresh task for a
    /// member whose peer URLs changed.
    fn sync(&mut self) {
        let membership = self.config.membership.borrow_and_update().clone();
        let health = &self.config.health;
        let own_urls = membership
            .members
            .get(&self.config.local_id)
            .map(|m| m.peer_urls.clone())
            .unwrap_or_default();
        let remotes = self.config.remotes.clone();
        self.queues.retain(|id, q| {
            let keep = match membership.members.get(id) {
                Some(m) => m.peer_urls == q.urls && q.own_urls == own_urls,
                // A remote keeps its queue until the membership knows it (or removes it).
                None => {
                    !membership.removed.contains(id) && remotes.get(*id).as_ref() == Some(&q.urls)
                }
            };
            if !keep {
                health.mark(*id, false);
            }
            keep
        });
        for (&id, m) in &membership.members {
            if id == self.config.local_id || self.queues.contains_key(&id) {
                continue;
            }
            self.open(id, m.peer_urls.clone(), own_urls.clone());
        }
    }

    /// Starts the sender tasks of peer `id` at `urls`; batches carry `own_urls`.
    fn open(&mut self, id: u64, urls: Vec<String>, own_urls: Vec<String>) {
        {
            let m_peer_urls = urls;
            let (tx, rx) = mpsc::channel(PEER_QUEUE_BOUND);
            let (snapshot_tx, snapshot_rx) = mpsc::channel(1);
            self.queues.insert(
                id,
                PeerQueue {
                    urls: m_peer_urls.clone(),
                    own_urls: own_urls.clone(),
                    tx,
                    snapshot_tx,
                },
            );
            let snapshot_sender = SnapshotSender {
                dialer: self.config.dialer.clone(),
                local_id: self.config.local_id,
                cluster_id: self.config.cluster_id,
                peer_id: id,
                urls: m_peer_urls.clone(),
                queue: snapshot_rx,
                raft_tx: self.raft_tx.clone(),
                storage_tx: self.storage_tx.clone(),
            };
            rt::spawn("snapshot-sender", snapshot_sender.run());
            let sender = PeerSender {
                dialer: self.config.dialer.clone(),
                local_id: self.config.local_id,
                cluster_id: self.config.cluster_id,
                peer_id: id,
                urls: m_peer_urls,
                own_urls,
                queue: rx,
                raft_tx: self.raft_tx.clone(),
                health: self.config.health.clone(),
                metrics: self.config.metrics.clone(),
            };
            rt::spawn("peer-sender", sender.run());
        }
    }

    /// Queues `msg` for its destination without waiting. Returns false when it had to be
    /// dropped (unknown destination or a full queue); the caller then reports the peer
    /// unreachable to raft. A dropped snapshot is also reported as failed, because raft
    /// waits for that report before it replicates to the follower again.
    pub fn send(&mut self, msg: Message) -> bool {
        if self.config.membership.has_changed() {
            self.sync();
        }
        let to = msg.to;
        if !self.queues.contains_key(&to) {
            // A sender outside the applied membership (a member added after it): answer
            // it at the address its batches came with.
            if let Some(urls) = self.config.remotes.get(to) {
                let membership = self.config.membership.borrow();
                let own_urls = membership
                    .members
                    .get(&self.config.local_id)
                    .map(|m| m.peer_urls.clone())
                    .unwrap_or_default();
                let removed = membership.removed.contains(&to);
                drop(membership);
                if !removed && to != self.config.local_id {
                    self.open(to, urls, own_urls);
                }
            }
        }
        if msg.get_msg_type() == MessageType::MsgSnapshot {
            let queued = self
                .queues
                .get(&to)
                .is_some_and(|q| q.snapshot_tx.try_send(msg).is_ok());
            if !queued {
                let _ = self.raft_tx.try_send(RaftMsg::SnapshotStatus {
                    member_id: to,
                    delivered: false,
                });
            }
            return queued;
        }
        match self.queues.get(&to) {
            Some(q) => q.tx.try_send(msg).is_ok(),
            None => false,
        }
    }
}

/// Streams snapshots to one peer: asks the storage actor for the state when raft decides
/// to send one, sends it in chunks, and tells raft how it went.
struct SnapshotSender {
    dialer: PeerDialer,
    local_id: u64,
    cluster_id: u64,
    peer_id: u64,
    urls: Vec<String>,
    queue: mpsc::Receiver<Message>,
    raft_tx: mpsc::Sender<RaftMsg>,
    storage_tx: mpsc::Sender<StorageMsg>,
}

impl SnapshotSender {
    async fn run(mut self) {
        while let Some(msg) = self.queue.recv().await {
            let index = msg.get_snapshot().get_metadata().index;
            let result = self.send(msg).await;
            let delivered = match result {
                Ok(size_bytes) => {
                    tracing::info!(
                        remote_peer_id = format!("{:x}", self.peer_id),
                        index,
                        size_bytes,
                        "sent database snapshot to remote peer"
                    );
                    true
                }
                Err(e) => {
                    tracing::warn!(
                        remote_peer_id = format!("{:x}", self.peer_id),
                        index,
                        error = %e,
                        "failed to send database snapshot to remote peer"
                    );
                    false
                }
            };
            if self
                .raft_tx
                .send(RaftMsg::SnapshotStatus {
                    member_id: self.peer_id,
                    delivered,
                })
                .await
                .is_err()
            {
                return;
            }
        }
    }

    /// Sends one snapshot; returns the size of its state.
    async fn send(&self, msg: Message) -> Result<usize, String> {
        // The state is taken now, after raft chose the snapshot's position, so it reflects
        // at least that position (the storage actor applies in order; see raft::store).
        let (tx, rx) = oneshot::channel();
        let deadline = rt::now() + SNAPSHOT_PREPARE_TIMEOUT;
        match rt::timeout_at(
            deadline,
            self.storage_tx.send(StorageMsg::SnapshotBlob { reply: tx }),
        )
        .await
        {
            Ok(Ok(())) => {}
            _ => return Err("the storage actor did not take the request".into()),
        }
        let (_, blob) = match rt::timeout_at(deadline, rx).await {
            Ok(Ok(Ok(answer))) => answer,
            Ok(Ok(Err(e))) => return Err(e.to_string()),
            _ => return Err("the storage actor did not answer".into()),
        };
        let header = msg
            .write_to_bytes()
            .map_err(|e| format!("cannot encode the snapshot message: {e}"))?;
        let url = self.urls.first().cloned().unwrap_or_default();
        let mut client = connect(&self.dialer, &url)
            .await
            .ok_or_else(|| format!("cannot connect to {url}"))?;
        let size = blob.len();
        let timeout = SNAPSHOT_SEND_BASE_TIMEOUT + Duration::from_secs((size >> 20) as u64);
        // Chunks are cut as the stream is read, so the state is not held twice.
        let (cluster_id, from, to) = (self.cluster_id, self.local_id, self.peer_id);
        let count = size.div_ceil(SNAPSHOT_CHUNK_BYTES).max(1);
        let chunks = (0..count).map(move |i| {
            let start = i * SNAPSHOT_CHUNK_BYTES;
            let end = (start + SNAPSHOT_CHUNK_BYTES).min(size);
            SnapshotChunk {
                cluster_id,
                from,
                to,
                message: if i == 0 { header.clone() } else { Vec::new() },
                total_bytes: if i == 0 { size as u64 } else { 0 },
                data: blob[start..end].to_vec(),
            }
        });
        let call = client.send_snapshot(tokio_stream::iter(chunks));
        match rt::timeout_at(rt::now() + timeout, call).await {
            Ok(Ok(_)) => Ok(size),
            Ok(Err(status)) => Err(status.message().to_string()),
            Err(_) => Err("timed out".into()),
        }
    }
}

struct PeerSender {
    dialer: PeerDialer,
    local_id: u64,
    cluster_id: u64,
    peer_id: u64,
    urls: Vec<String>,
    own_urls: Vec<String>,
    queue: mpsc::Receiver<Message>,
    raft_tx: mpsc::Sender<RaftMsg>,
    health: PeerHealth,
    metrics: Arc<crate::metrics::Metrics>,
}

/// One open `SendStream` call to the peer.
struct PeerStream {
    /// Batches for the call; dropping it ends the call gracefully.
    tx: mpsc::Sender<RaftBatch>,
    /// Resolves when the call ends: Ok at a graceful end, else the peer's status.
    ended: oneshot::Receiver<Result<(), Status>>,
}

/// The connection state of a [`PeerSender`].
#[derive(Default)]
struct PeerLink {
    client: Option<RaftClient<tonic::transport::Channel>>,
    stream: Option<PeerStream>,
    /// Set when the peer does not know `SendStream` (an older detcd), which then gets
    /// one unary call per batch.
    unary_only: bool,
    /// Which of the peer's URLs the next connection tries.
    url_index: usize,
    /// Whether the peer was reachable at the last probe or delivery.
    active: bool,
}

/// What woke a [`PeerSender`].
enum SenderEvent {
    Message(Message),
    StreamEnded(Result<(), Status>),
    Probe,
}

/// Why a delivery or probe failed.
enum SendFailure {
    /// The peer says this member was removed: the sender stops.
    Removed,
    /// Anything else: the peer is treated as unreachable for now.
    Unreachable(String),
}

impl PeerSender {
    /// Sends raft messages over one `SendStream` call, reopened after a failure with a
    /// bounded exponential backoff, and probes the peer with an empty unary batch every
    /// [`PROBE_INTERVAL`]. A stream carries no per-batch answer, so the probes are what
    /// tell a live peer from a stalled one, mark reachability and measure the round
    /// trip; a failed probe drops the stream as a failed delivery would.
    async fn run(mut self) {
        let mut link = PeerLink::default();
        let mut backoff = BACKOFF_MIN;
        // The first probe goes out at once, so the peer is known reachable early.
        let mut next_probe = rt::now();
        loop {
            let event = {
                let ended = link.stream.as_mut().map(|s| &mut s.ended);
                let probe_in = next_probe.saturating_duration_since(rt::now());
                tokio::select! {
                    // Branches are polled in order, not at random, so a simulation replays from its seed.
                    biased;
                    m = self.queue.recv() => match m {
                        Some(m) => SenderEvent::Message(m),
                        // The raft actor dropped the queue: the peer was removed, or the
                        // member is stopping.
                        None => return,
                    },
                    ended = recv_stream_end(ended) => SenderEvent::StreamEnded(ended),
                    _ = rt::sleep(probe_in) => SenderEvent::Probe,
                }
            };
            let outcome = match event {
                SenderEvent::Message(first) => {
                    let batch = self.take_batch(first);
                    if batch.is_empty() {
                        continue;
                    }
                    self.deliver(&mut link, batch).await
                }
                SenderEvent::StreamEnded(ended) => {
                    link.stream = None;
                    stream_ended(self.peer_id, &mut link.unary_only, ended)
                }
                SenderEvent::Probe => {
                    next_probe = rt::now() + PROBE_INTERVAL;
                    self.probe(&mut link).await
                }
            };
            match outcome {
                Ok(()) => {
                    if link.active {
                        backoff = BACKOFF_MIN;
                    }
                }
                Err(SendFailure::Removed) => {
                    // The peer knows this member was removed: stop, as etcd does on its
                    // peers' "member removed" answer.
                    let _ = self.raft_tx.send(RaftMsg::Removed).await;
                    return;
                }
                Err(SendFailure::Unreachable(e)) => {
                    self.unreachable(&mut link, &e);
                    rt::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    // Messages that queued up meanwhile are stale (heartbeats, old
                    // appends); raft resends what still matters once the peer answers.
                    while self.queue.try_recv().is_ok() {}
                    next_probe = rt::now();
                }
            }
        }
    }

    /// Connects if there is no connection; the client is cheap to clone.
    async fn client(
        &self,
        link: &mut PeerLink,
    ) -> Result<RaftClient<tonic::transport::Channel>, SendFailure> {
        if link.client.is_none() {
            let url = self.urls[link.url_index % self.urls.len().max(1)].clone();
            link.url_index = link.url_index.wrapping_add(1);
            link.client = connect(&self.dialer, &url).await;
        }
        link.client
            .clone()
            .ok_or_else(|| SendFailure::Unreachable("cannot connect".into()))
    }

    /// Queues one batch on the stream (opening it first if needed), or sends it as a
    /// unary call to a peer without streams.
    async fn deliver(
        &self,
        link: &mut PeerLink,
        messages: Vec<Vec<u8>>,
    ) -> Result<(), SendFailure> {
        let client = self.client(link).await?;
        if link.unary_only {
            return self.call(client, messages).await.map(|_| ());
        }
        let first_in_stream = link.stream.is_none();
        let stream = link.stream.get_or_insert_with(|| open_stream(client));
        let batch = RaftBatch {
            cluster_id: self.cluster_id,
            from: self.local_id,
            to: self.peer_id,
            messages,
            // The receiver learns the URLs once per stream.
            from_peer_urls: if first_in_stream {
                self.own_urls.clone()
            } else {
                Vec::new()
            },
        };
        match rt::timeout_at(rt::now() + PEER_SEND_TIMEOUT, stream.tx.send(batch)).await {
            Ok(Ok(())) => Ok(()),
            // The call ended; its status is read from `ended` on the next turn, so only
            // this batch is lost.
            Ok(Err(_)) => Ok(()),
            Err(_) => Err(SendFailure::Unreachable(
                "timed out waiting for the peer stream".into(),
            )),
        }
    }

    /// Sends an empty batch as a unary call: the peer checks and acknowledges it.
    async fn probe(&self, link: &mut PeerLink) -> Result<(), SendFailure> {
        let client = self.client(link).await?;
        let started = rt::now();
        self.call(client, Vec::new()).await?;
        // Every acknowledged probe is a round trip to the peer; etcd's prober measures the
        // same link with its own pings.
        self.metrics
            .observe_peer_rtt(self.peer_id, rt::now().saturating_duration_since(started));
        self.health.mark(self.peer_id, true);
        if !link.active {
            tracing::info!(
                remote_peer_id = format!("{:x}", self.peer_id),
                "peer became active"
            );
            link.active = true;
        }
        Ok(())
    }

    /// One unary `Send` call, bounded by [`PEER_SEND_TIMEOUT`].
    async fn call(
        &self,
        mut client: RaftClient<tonic::transport::Channel>,
        messages: Vec<Vec<u8>>,
    ) -> Result<(), SendFailure> {
        let call = client.send(RaftBatch {
            cluster_id: self.cluster_id,
            from: self.local_id,
            to: self.peer_id,
            messages,
            from_peer_urls: self.own_urls.clone(),
        });
        match rt::timeout_at(rt::now() + PEER_SEND_TIMEOUT, call).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(status)) if status.message() == MEMBER_REMOVED_MESSAGE => {
                Err(SendFailure::Removed)
            }
            Ok(Err(status)) => Err(SendFailure::Unreachable(status.message().to_string())),
            Err(_) => Err(SendFailure::Unreachable("timed out".into())),
        }
    }

    /// Forgets the connection after a failure and tells raft, which slows replication to
    /// the peer down to probing.
    fn unreachable(&self, link: &mut PeerLink, error: &str) {
        self.health.mark(self.peer_id, false);
        if link.active {
            tracing::warn!(
                remote_peer_id = format!("{:x}", self.peer_id),
                error = %error,
                "lost connection with remote peer"
            );
            link.active = false;
        } else {
            tracing::debug!(
                remote_peer_id = format!("{:x}", self.peer_id),
                error = %error,
                "failed to reach remote peer"
            );
        }
        link.client = None;
        link.stream = None;
        // A full inbox only loses this hint, which the next failure repeats.
        let _ = self.raft_tx.try_send(RaftMsg::Unreachable {
            member_id: self.peer_id,
        });
    }

    /// Encodes `first` and whatever else is queued, up to the batch and size limits.
    fn take_batch(&mut self, first: Message) -> Vec<Vec<u8>> {
        let mut batch = Vec::new();
        let mut bytes = 0usize;
        let mut next = Some(first);
        while let Some(m) = next.take() {
            match m.write_to_bytes() {
                Ok(b) if b.len() <= MAX_PEER_MESSAGE_BYTES => {
                    bytes += b.len();
                    batch.push(b);
                }
                Ok(b) => tracing::warn!(
                    size = b.len(),
                    "dropping a raft message larger than the peer message limit"
                ),
                Err(e) => tracing::warn!(error = %e, "cannot encode a raft message"),
            }
            if batch.len() >= PEER_BATCH_MAX || bytes >= MAX_PEER_MESSAGE_BYTES / 2 {
                break;
            }
            next = self.queue.try_recv().ok();
        }
        batch
    }
}

/// How many batches may wait to go out on a peer stream. Past it the sender waits (at
/// most [`PEER_SEND_TIMEOUT`]), the peer's message queue fills, and raft hears that the
/// peer is unreachable, as with a slow unary call before.
const STREAM_QUEUE_BATCHES: usize = 64;

/// Opens a `SendStream` call fed by a bounded queue; the call runs in its own task until
/// the queue's sender is dropped or the peer ends it.
fn open_stream(mut client: RaftClient<tonic::transport::Channel>) -> PeerStream {
    let (tx, rx) = mpsc::channel::<RaftBatch>(STREAM_QUEUE_BATCHES);
    let (ended_tx, ended) = oneshot::channel();
    let batches = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|batch| (batch, rx))
    });
    rt::spawn("peer-stream", async move {
        let result = client.send_stream(batches).await.map(|_| ());
        let _ = ended_tx.send(result);
    });
    PeerStream { tx, ended }
}

/// Reads how a stream call to peer `peer_id` ended. A graceful end (the peer restarted
/// its service, or this side dropped the stream) is no failure: the next batch opens a
/// new stream. A peer without `SendStream` sets `unary_only`.
fn stream_ended(
    peer_id: u64,
    unary_only: &mut bool,
    ended: Result<(), Status>,
) -> Result<(), SendFailure> {
    match ended {
        Ok(()) => Ok(()),
        Err(status) if status.message() == MEMBER_REMOVED_MESSAGE => Err(SendFailure::Removed),
        Err(status) if status.code() == tonic::Code::Unimplemented => {
            tracing::info!(
                remote_peer_id = format!("{peer_id:x}"),
                "the peer does not stream raft messages; sending one call per batch"
            );
            *unary_only = true;
            Ok(())
        }
        Err(status) => Err(SendFailure::Unreachable(status.message().to_string())),
    }
}

/// Resolves when the stream call ends (never, without a stream).
async fn recv_stream_end(
    ended: Option<&mut oneshot::Receiver<Result<(), Status>>>,
) -> Result<(), Status> {
    match ended {
        Some(rx) => match rx.await {
            Ok(result) => result,
            Err(_) => Err(Status::unavailable("the peer stream task stopped")),
        },
        None => std::future::pending().await,
    }
}

/// Asks the members at `urls` (peer URLs) for the cluster's id and members, as a member
/// joining with `--initial-cluster-state existing` does (etcd's `GetClusterFromRemotePeers`),
/// trying each URL in turn until one answers.
pub async fn fetch_cluster(
    urls: &[String],
    timeout: Duration,
    dialer: &PeerDialer,
) -> Option<MembersResponse> {
    for url in urls {
        let Some(mut client) = connect(dialer, url).await else {
            tracing::warn!(remote_peer_url = %url, "failed to get cluster response");
            continue;
        };
        match rt::timeout_at(rt::now() + timeout, client.members(MembersRequest {})).await {
            Ok(Ok(r)) => return Some(r.into_inner()),
            _ => tracing::warn!(remote_peer_url = %url, "failed to get cluster response"),
        }
    }
    None
}

async fn connect(dialer: &PeerDialer, url: &str) -> Option<RaftClient<tonic::transport::Channel>> {
    match dialer.connect(url, PEER_CONNECT_TIMEOUT).await {
        Ok(channel) => Some(
            RaftClient::new(channel)
                .max_decoding_message_size(MAX_PEER_GRPC_BYTES)
                .max_encoding_message_size(MAX_PEER_GRPC_BYTES),
        ),
        Err(e) => {
            tracing::debug!(remote_peer_url = %url, error = %e, "cannot connect to peer");
            None
        }
    }
}

/// Checks a batch and decodes its messages, refusing anything that came from another
/// cluster, from a removed member or from this member itself, or that raft must not take
/// from the network. A sender that is not (yet) in the applied membership is accepted, as
/// etcd does: it may be a member added after this member's applied state.
pub fn decode_batch(
    batch: &RaftBatch,
    local_id: u64,
    cluster_id: u64,
    removed: &BTreeSet<u64>,
) -> Result<Vec<Message>, EtcdError> {
    if batch.cluster_id != cluster_id {
        return Err(EtcdError::InvalidArgument(format!(
            "cluster ID mismatch: local member's cluster ID is {cluster_id:x}, remote peer's is {:x}",
            batch.cluster_id
        )));
    }
    if removed.contains(&batch.from) || batch.from == local_id || batch.from == 0 {
        return Err(EtcdError::InvalidArgument(format!(
            "rejected raft messages from member {:x}",
            batch.from
        )));
    }
    if batch.to != local_id {
        return Err(EtcdError::InvalidArgument(format!(
            "raft messages addressed to member {:x} arrived at member {local_id:x}",
            batch.to
        )));
    }
    let mut out = Vec::with_capacity(batch.messages.len());
    for bytes in &batch.messages {
        if bytes.len() > MAX_PEER_MESSAGE_BYTES {
            return Err(EtcdError::InvalidArgument(format!(
                "raft message of {} bytes exceeds the limit of {MAX_PEER_MESSAGE_BYTES}",
                bytes.len()
            )));
        }
        let m = Message::parse_from_bytes(bytes)
            .map_err(|e| EtcdError::InvalidArgument(format!("cannot decode raft message: {e}")))?;
        if m.from != batch.from || m.to != local_id {
            return Err(EtcdError::InvalidArgument(format!(
                "raft message from {:x} to {:x} in a batch from {:x}",
                m.from, m.to, batch.from
            )));
        }
        // Snapshots come only through their own stream, which carries their state, and
        // local message types must never come from the network.
        match m.get_msg_type() {
            MessageType::MsgSnapshot
            | MessageType::MsgHup
            | MessageType::MsgBeat
            | MessageType::MsgUnreachable
            | MessageType::MsgSnapStatus
            | MessageType::MsgCheckQuorum => {
                return Err(EtcdError::InvalidArgument(format!(
                    "raft message type {:?} is not accepted from a peer",
                    m.get_msg_type()
                )));
            }
            _ => {}
        }
        out.push(m);
    }
    Ok(out)
}

/// Checks the first chunk of a snapshot stream and decodes its raft message.
pub fn decode_snapshot_header(first: &SnapshotChunk, local_id: u64) -> Result<Message, EtcdError> {
    if first.to != local_id {
        return Err(EtcdError::InvalidArgument(format!(
            "a snapshot addressed to member {:x} arrived at member {local_id:x}",
            first.to
        )));
    }
    if first.total_bytes > MAX_SNAPSHOT_BYTES {
        return Err(EtcdError::InvalidArgument(format!(
            "a snapshot of {} bytes exceeds the limit of {MAX_SNAPSHOT_BYTES}",
            first.total_bytes
        )));
    }
    if first.message.len() > MAX_PEER_MESSAGE_BYTES {
        return Err(EtcdError::InvalidArgument(
            "the snapshot's raft message is too large".into(),
        ));
    }
    let m = Message::parse_from_bytes(&first.message)
        .map_err(|e| EtcdError::InvalidArgument(format!("cannot decode raft message: {e}")))?;
    if m.get_msg_type() != MessageType::MsgSnapshot
        || m.from != first.from
        || m.to != local_id
        || !m.get_snapshot().data.is_empty()
    {
        return Err(EtcdError::InvalidArgument(
            "the snapshot stream does not start with a snapshot message from its sender".into(),
        ));
    }
    Ok(m)
}

/// The peer gRPC service: receives raft batches, forwarded lease calls and promotions,
/// and tells joining members about the cluster.
pub struct PeerService {
    local_id: u64,
    cluster_id: u64,
    membership: MembershipRx,
    raft_tx: mpsc::Sender<RaftMsg>,
    lease_tx: mpsc::Sender<LeaseMsg>,
    status: watch::Receiver<RaftStatus>,
    bootstrap_voters: Vec<u64>,
    handle: Option<Handle>,
    remotes: Remotes,
}

impl PeerService {
    /// Builds the service over the live membership.
    pub fn new(
        config: &PeerConfig,
        raft_tx: mpsc::Sender<RaftMsg>,
        lease_tx: mpsc::Sender<LeaseMsg>,
        status: watch::Receiver<RaftStatus>,
    ) -> PeerService {
        PeerService {
            local_id: config.local_id,
            cluster_id: config.cluster_id,
            membership: config.membership.clone(),
            raft_tx,
            lease_tx,
            status,
            bootstrap_voters: Vec::new(),
            handle: None,
            remotes: config.remotes.clone(),
        }
    }

    /// Answers joining members with `voters` as the configuration the raft log starts
    /// from, and serves forwarded promotions through `handle`.
    pub fn with_cluster(mut self, voters: Vec<u64>, handle: Handle) -> PeerService {
        self.bootstrap_voters = voters;
        self.handle = Some(handle);
        self
    }

    fn member_ids(&self) -> BTreeSet<u64> {
        let mut ids: BTreeSet<u64> = self.membership.borrow().members.keys().copied().collect();
        ids.insert(self.local_id);
        ids
    }

    /// Checks the sender of raft traffic: of this cluster and not removed. Unlike
    /// [`PeerService::check_peer`] it accepts a sender this member does not know yet (see
    /// [`Remotes`]).
    fn check_sender(&self, cluster_id: u64, from: u64) -> Result<(), Status> {
        if cluster_id != self.cluster_id {
            return self.check_peer(cluster_id, from);
        }
        if self.membership.borrow().removed.contains(&from) {
            return Err(Status::permission_denied(MEMBER_REMOVED_MESSAGE));
        }
        Ok(())
    }

    fn check_peer(&self, cluster_id: u64, from: u64) -> Result<(), Status> {
        if cluster_id != self.cluster_id {
            tracing::warn!(
                local_member_cluster_id = format!("{:x}", self.cluster_id),
                remote_peer_cluster_id = format!("{cluster_id:x}"),
                remote_peer_id = format!("{from:x}"),
                "request cluster ID mismatch"
            );
            return Err(Status::failed_precondition(format!(
                "cluster ID mismatch: local member's cluster ID is {:x}, remote peer's is {cluster_id:x}",
                self.cluster_id
            )));
        }
        if self.membership.borrow().removed.contains(&from) {
            return Err(Status::permission_denied(MEMBER_REMOVED_MESSAGE));
        }
        if !self.member_ids().contains(&from) {
            return Err(Status::permission_denied(format!(
                "member {from:x} is not a member of cluster {:x}",
                self.cluster_id
            )));
        }
        Ok(())
    }
}

impl PeerService {
    /// Checks one batch and hands its messages to raft. An error is the status the call
    /// (or the stream) ends with.
    async fn deliver(&self, batch: RaftBatch) -> Result<(), Status> {
        self.check_sender(batch.cluster_id, batch.from)?;
        let decoded = {
            let membership = self.membership.borrow();
            decode_batch(&batch, self.local_id, self.cluster_id, &membership.removed)
        };
        let messages = decoded.map_err(|e| {
            tracing::warn!(
                remote_peer_id = format!("{:x}", batch.from),
                error = %e,
                "rejected raft messages from peer"
            );
            Status::invalid_argument(e.message())
        })?;
        // Only a batch carrying URLs can teach anything, so the member set is built only
        // for those (the first batch of each stream, and unary calls).
        if !batch.from_peer_urls.is_empty() && !self.member_ids().contains(&batch.from) {
            self.remotes.learn(batch.from, &batch.from_peer_urls);
        }
        if messages.is_empty() {
            return Ok(());
        }
        // Waiting here pushes back on the sender, whose bounded queue then drops; the
        // wait is bounded so a stopping raft actor cannot hold the call forever.
        match rt::timeout_at(
            rt::now() + PEER_SEND_TIMEOUT,
            self.raft_tx.send(RaftMsg::Step { messages }),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(EtcdError::Stopped.to_status()),
            Err(_) => Err(EtcdError::TooManyRequests.to_status()),
        }
    }
}

#[tonic::async_trait]
impl Raft for PeerService {
    async fn send(&self, req: Request<RaftBatch>) -> Result<Response<RaftAck>, Status> {
        self.deliver(req.into_inner()).await?;
        Ok(Response::new(RaftAck {}))
    }

    async fn send_stream(
        &self,
        req: Request<tonic::Streaming<RaftBatch>>,
    ) -> Result<Response<RaftAck>, Status> {
        let mut stream = req.into_inner();
        // Batches are delivered in the order they arrive; the first refused one ends the
        // stream with its status, which the sender reads as it would a failed call.
        while let Some(batch) = stream.message().await? {
            self.deliver(batch).await?;
        }
        Ok(Response::new(RaftAck {}))
    }

    async fn send_snapshot(
        &self,
        req: Request<tonic::Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftAck>, Status> {
        let mut stream = req.into_inner();
        let first = match stream.message().await? {
            Some(chunk) => chunk,
            None => return Err(Status::invalid_argument("empty snapshot stream")),
        };
        self.check_sender(first.cluster_id, first.from)?;
        let mut msg = decode_snapshot_header(&first, self.local_id)
            .map_err(|e| Status::invalid_argument(e.message()))?;
        let total = first.total_bytes as usize;
        let mut blob = Vec::with_capacity(total.min(64 << 20));
        blob.extend_from_slice(&first.data);
        while let Some(chunk) = stream.message().await? {
            if blob.len() + chunk.data.len() > total {
                return Err(Status::invalid_argument(
                    "the snapshot is larger than announced",
                ));
            }
            blob.extend_from_slice(&chunk.data);
        }
        if blob.len() != total {
            return Err(Status::invalid_argument(format!(
                "the snapshot stream ended after {} of {total} bytes",
                blob.len()
            )));
        }
        snapshot::verify(&blob).map_err(|e| {
            tracing::warn!(
                remote_peer_id = format!("{:x}", first.from),
                error = %e,
                "rejected a damaged snapshot"
            );
            Status::data_loss(e.to_string())
        })?;
        tracing::info!(
            remote_peer_id = format!("{:x}", first.from),
            index = msg.get_snapshot().get_metadata().index,
            size_bytes = total,
            "received database snapshot"
        );
        msg.mut_snapshot().data = blob.into();
        match rt::timeout_at(
            rt::now() + PEER_SEND_TIMEOUT,
            self.raft_tx.send(RaftMsg::Step {
                messages: vec![msg],
            }),
        )
        .await
        {
            Ok(Ok(())) => Ok(Response::new(RaftAck {})),
            Ok(Err(_)) => Err(EtcdError::Stopped.to_status()),
            Err(_) => Err(EtcdError::TooManyRequests.to_status()),
        }
    }

    async fn lease_renew(
        &self,
        req: Request<LeaseRenewRequest>,
    ) -> Result<Response<LeaseRenewResponse>, Status> {
        let req = req.into_inner();
        self.check_peer(req.cluster_id, req.from)?;
        let status = self.status.borrow().clone();
        if status.leader_id != self.local_id {
            // The caller's view of leadership is stale; it answers its client as etcd
            // does when leadership moves under a request.
            return Err(EtcdError::LeaderChanged.to_status());
        }
        let deadline = rt::now() + PEER_SEND_TIMEOUT;
        let ttl = if req.query_only {
            let (tx, rx) = oneshot::channel();
            send_lease(
                &self.lease_tx,
                deadline,
                LeaseMsg::Remaining {
                    id: req.lease_id,
                    reply: tx,
                },
                rx,
            )
            .await?
            .unwrap_or(-1)
        } else {
            let (tx, rx) = oneshot::channel();
            send_lease(
                &self.lease_tx,
                deadline,
                LeaseMsg::KeepAlive {
                    id: req.lease_id,
                    reply: tx,
                },
                rx,
            )
            .await?
            .map_err(|e| e.to_status())?
        };
        Ok(Response::new(LeaseRenewResponse { ttl }))
    }

    async fn members(
        &self,
        _req: Request<MembersRequest>,
    ) -> Result<Response<MembersResponse>, Status> {
        self.members_impl().await
    }

    async fn promote(
        &self,
        req: Request<PromoteRequest>,
    ) -> Result<Response<PromoteResponse>, Status> {
        self.promote_impl(req).await
    }
}

impl PeerService {
    async fn members_impl(&self) -> Result<Response<MembersResponse>, Status> {
        Ok(Response::new(MembersResponse {
            cluster_id: self.cluster_id,
            members: self.membership.borrow().list(),
            bootstrap_voters: self.bootstrap_voters.clone(),
        }))
    }

    async fn promote_impl(
        &self,
        req: Request<PromoteRequest>,
    ) -> Result<Response<PromoteResponse>, Status> {
        let req = req.into_inner();
        self.check_peer(req.cluster_id, req.from)?;
        let Some(handle) = &self.handle else {
            return Err(EtcdError::NotCapable.to_status());
        };
        let members = crate::gateway::cluster::promote_on_leader(handle, req.member_id)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(PromoteResponse { members }))
    }
}

async fn send_lease<T>(
    lease_tx: &mpsc::Sender<LeaseMsg>,
    deadline: rt::Instant,
    msg: LeaseMsg,
    rx: oneshot::Receiver<T>,
) -> Result<T, Status> {
    match rt::timeout_at(deadline, lease_tx.send(msg)).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return Err(EtcdError::Stopped.to_status()),
        Err(_) => return Err(EtcdError::Timeout.to_status()),
    }
    match rt::timeout_at(deadline, rx).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(_)) => Err(EtcdError::Stopped.to_status()),
        Err(_) => Err(EtcdError::Timeout.to_status()),
    }
}

/// Forwards lease calls and promotions from a follower to the leader's peer service.
#[derive(Clone)]
pub struct LeaseForwarder {
    local_id: u64,
    cluster_id: u64,
    membership: MembershipRx,
    dialer: PeerDialer,
    /// Lazily connecting channels by member id, with the peer URL each was built for.
    channels: Arc<Mutex<BTreeMap<u64, (String, tonic::transport::Channel)>>>,
}

impl LeaseForwarder {
    /// Builds a forwarder over the live membership (nothing connects until used).
    pub fn new(config: &PeerConfig) -> LeaseForwarder {
        LeaseForwarder {
            local_id: config.local_id,
            cluster_id: config.cluster_id,
            membership: config.membership.clone(),
            dialer: config.dialer.clone(),
            channels: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }

    /// A channel to member `id`'s first peer URL, reused while that URL stays the same.
    fn channel(&self, id: u64) -> Option<tonic::transport::Channel> {
        let url = self
            .membership
            .borrow()
            .members
            .get(&id)
            .and_then(|m| m.peer_urls.first().cloned())?;
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((u, c)) = channels.get(&id) {
            if *u == url {
                return Some(c.clone());
            }
        }
        let channel = self
            .dialer
            .connect_lazy(&url, PEER_CONNECT_TIMEOUT, PEER_SEND_TIMEOUT)?;
        channels.insert(id, (url, channel.clone()));
        Some(channel)
    }

    /// Asks the leader `leader_id` to promote learner `member_id`, within `timeout`, and
    /// returns the member list after the promotion.
    pub async fn promote(
        &self,
        leader_id: u64,
        member_id: u64,
        timeout: Duration,
    ) -> Result<Vec<MemberRecord>, Status> {
        let Some(channel) = self.channel(leader_id) else {
            return Err(EtcdError::NoLeader.to_status());
        };
        let mut client = RaftClient::new(channel);
        let call = client.promote(PromoteRequest {
            cluster_id: self.cluster_id,
            from: self.local_id,
            member_id,
        });
        match rt::timeout_at(rt::now() + timeout, call).await {
            Ok(Ok(r)) => Ok(r.into_inner().members),
            Ok(Err(status)) => Err(status),
            Err(_) => Err(EtcdError::Timeout.to_status()),
        }
    }

    /// Renews (or, with `query_only`, asks the remaining TTL of) lease `lease_id` on the
    /// leader `leader_id`, within `timeout`.
    pub async fn renew(
        &self,
        leader_id: u64,
        lease_id: i64,
        query_only: bool,
        timeout: Duration,
    ) -> Result<i64, EtcdError> {
        let Some(channel) = self.channel(leader_id) else {
            return Err(EtcdError::NoLeader);
        };
        let mut client = RaftClient::new(channel);
        let call = client.lease_renew(LeaseRenewRequest {
            cluster_id: self.cluster_id,
            from: self.local_id,
            lease_id,
            query_only,
        });
        match rt::timeout_at(rt::now() + timeout, call).await {
            Ok(Ok(r)) => Ok(r.into_inner().ttl),
            Ok(Err(status)) if status.message() == EtcdError::LeaderChanged.message() => {
                Err(EtcdError::LeaderChanged)
            }
            Ok(Err(status)) => {
                tracing::debug!(error = %status, "forwarding a lease call to the leader failed");
                Err(EtcdError::Timeout)
            }
            Err(_) => Err(EtcdError::Timeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(messages: Vec<Vec<u8>>) -> RaftBatch {
        RaftBatch {
            cluster_id: 7,
            from: 2,
            to: 1,
            messages,
            from_peer_urls: vec![],
        }
    }

    fn heartbeat(from: u64, to: u64) -> Vec<u8> {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgHeartbeat);
        m.from = from;
        m.to = to;
        m.term = 3;
        m.write_to_bytes().unwrap()
    }

    #[test]
    fn a_stream_end_is_read_as_removal_fallback_or_failure() {
        let mut unary_only = false;
        assert!(stream_ended(2, &mut unary_only, Ok(())).is_ok());
        assert!(matches!(
            stream_ended(
                2,
                &mut unary_only,
                Err(Status::permission_denied(MEMBER_REMOVED_MESSAGE))
            ),
            Err(SendFailure::Removed)
        ));
        assert!(matches!(
            stream_ended(2, &mut unary_only, Err(Status::unavailable("gone"))),
            Err(SendFailure::Unreachable(e)) if e == "gone"
        ));
        assert!(!unary_only, "only a peer without the method falls back");
        assert!(stream_ended(2, &mut unary_only, Err(Status::unimplemented("no"))).is_ok());
        assert!(unary_only);
    }

    #[test]
    fn accepts_a_well_formed_batch() {
        let got = decode_batch(&batch(vec![heartbeat(2, 1)]), 1, 7, &BTreeSet::new()).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].get_msg_type(), MessageType::MsgHeartbeat);
    }

    #[test]
    fn refuses_another_cluster_and_removed_members() {
        let mut b = batch(vec![heartbeat(2, 1)]);
        b.cluster_id = 8;
        let e = decode_batch(&b, 1, 7, &BTreeSet::new()).unwrap_err();
        assert!(e.message().contains("cluster ID mismatch"), "{e}");
        // A removed member is refused; one this member does not know yet is not (it may
        // have been added after this member's applied state).
        let mut b = batch(vec![heartbeat(9, 1)]);
        b.from = 9;
        assert!(decode_batch(&b, 1, 7, &BTreeSet::from([9])).is_err());
        assert_eq!(decode_batch(&b, 1, 7, &BTreeSet::new()).unwrap().len(), 1);
        // A message claiming another sender than the batch is refused.
        assert!(decode_batch(&batch(vec![heartbeat(3, 1)]), 1, 7, &BTreeSet::new()).is_err());
    }

    #[test]
    fn garbage_oversized_and_local_messages_are_errors_not_panics() {
        for bytes in [
            vec![0xff; 64],
            vec![0x0a; 1000],
            vec![0x2a, 0xff, 0xff, 0xff, 0xff, 0x0f],
        ] {
            assert!(decode_batch(&batch(vec![bytes]), 1, 7, &BTreeSet::new()).is_err());
        }
        let huge = vec![0u8; MAX_PEER_MESSAGE_BYTES + 1];
        assert!(decode_batch(&batch(vec![huge]), 1, 7, &BTreeSet::new()).is_err());
        let mut hup = Message::default();
        hup.set_msg_type(MessageType::MsgHup);
        hup.from = 2;
        hup.to = 1;
        let b = batch(vec![hup.write_to_bytes().unwrap()]);
        assert!(decode_batch(&b, 1, 7, &BTreeSet::new()).is_err());
    }
}
