//! Starting and stopping one detcd member: open storage, recover, spawn the actors, wait
//! until the member can serve, then serve gRPC until asked to stop.
//!
//! [`ServerConfig`] is what the server needs, independent of how it was configured (flags,
//! environment, config file, or a simulation harness), so the binary and the simulator
//! start members through the same code.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::actors::corrupt_check;
use crate::actors::lease_timer::{LeaseMsg, LeaseTimer, LeaseTimerConfig};
use crate::actors::raft_node::{RaftActor, RaftActorConfig, DEFAULT_SNAPSHOT_COUNT};
use crate::actors::storage::{self, StorageActor};
use crate::actors::transport::{
    self, LeaseForwarder, PeerConfig, PeerDialer, PeerHealth, PeerService, Transport,
    MAX_PEER_GRPC_BYTES,
};
use crate::actors::watch_hub::WatchHubActor;
use crate::core::corrupt::KvHash;
use crate::core::lease;
use crate::core::quota::{self, Quota};
use crate::core::watch::WatchConfig;
use crate::gateway::{self, Handle, MemberInfo};
use crate::msg::{Membership, RaftMsg, RaftStatus, StorageMsg, WatchMsg, CHANNEL_BOUND};
use crate::pb::detcdpb::MemberRecord;
use crate::pb::detcdraftpb::raft_server::RaftServer;
use crate::pb::etcdserverpb::lease_server::LeaseServer;
use crate::pb::etcdserverpb::maintenance_server::MaintenanceServer;
crate::simulated_only! {
    use crate::pb::etcdserverpb::watch_server::WatchServer;
}
use crate::pb::etcdserverpb::{cluster_server::ClusterServer, kv_server::KvServer};
use crate::pb::v3electionpb::election_server::ElectionServer;
use crate::pb::v3lockpb::lock_server::LockServer;
use crate::raft::{ids, log, membership};
use crate::rt;
use crate::rt::watch;
use crate::storage::backend::{Backend, MemBackend, SledBackend};
use crate::storage::disk::Disk;
use crate::storage::pipelined::PipelinedBackend;

/// gRPC framing allowance on top of `--max-request-bytes`, as etcd adds it to the
/// server's receive limit so that the request-size check, not the transport, answers.
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// How long a stopping member waits for in-flight client requests before it closes the
/// remaining client connections.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Which MVCC backend a member uses.
pub enum BackendChoice {
    /// sled, in `<data-dir>/member/snap/db` (production).
    Sled,
    /// An in-memory backend (simulation: sled starts OS threads, which madsim forbids).
    Memory(MemBackend),
}

/// Everything a member needs to start.
pub struct ServerConfig {
    /// `--name`.
    pub name: String,
    /// `--data-dir`.
    pub data_dir: PathBuf,
    /// `--wal-dir` (default `<data-dir>/member/wal`).
    pub wal_dir: Option<PathBuf>,
    /// Addresses from `--listen-client-urls`.
    pub listen_client_addrs: Vec<SocketAddr>,
    /// Unix-domain socket files from `unix://` and `unixs://` `--listen-client-urls`,
    /// served after `listen_client_addrs` (their TLS settings follow those in
    /// [`MemberTls::client`]).
    pub listen_client_sockets: Vec<PathBuf>,
    /// Addresses from `--listen-peer-urls`, where the peer transport is served.
    pub listen_peer_addrs: Vec<SocketAddr>,
    /// `--advertise-client-urls`.
    pub advertise_client_urls: Vec<String>,
    /// `--initial-advertise-peer-urls`.
    pub initial_advertise_peer_urls: Vec<String>,
    /// `--initial-cluster`, parsed: member name and peer URLs.
    pub initial_cluster: Vec<(String, Vec<String>)>,
    /// `--initial-cluster-token`.
    pub initial_cluster_token: String,
    /// `--initial-cluster-state existing`: join a running cluster (which has already
    /// added this member) instead of bootstrapping a new one.
    pub join_existing: bool,
    /// `--strict-reconfig-check`.
    pub strict_reconfig_check: bool,
    /// `--force-new-cluster`: restart a member with data as the only member of its cluster.
    pub force_new_cluster: bool,
    /// `--heartbeat-interval`.
    pub heartbeat_interval_ms: u64,
    /// `--election-timeout`.
    pub election_timeout_ms: u64,
    /// `--max-request-bytes`.
    pub max_request_bytes: usize,
    /// `--max-txn-ops`.
    pub max_txn_ops: usize,
    /// `--experimental-watch-progress-notify-interval`.
    pub watch_progress_notify_interval: Duration,
    /// `--snapshot-count`: applied entries between two snapshots (0: etcd's default).
    pub snapshot_count: u64,
    /// Entries kept in the raft log behind a snapshot for slow followers (etcd: 5000).
    pub snapshot_catchup_entries: u64,
    /// `--quota-backend-bytes`: 0 means etcd's 2 GiB default, a negative value disables
    /// the quota.
    pub quota_backend_bytes: i64,
    /// `--experimental-initial-corrupt-check`.
    pub initial_corrupt_check: bool,
    /// `--experimental-corrupt-check-time`; zero disables the periodic check.
    pub corrupt_check_interval: Duration,
    /// The disk the WAL is written through.
    pub disk: Arc<dyn Disk>,
    /// The MVCC backend.
    pub backend: BackendChoice,
    /// `--bcrypt-cost`: the cost passwords are hashed at.
    pub bcrypt_cost: u32,
    /// `--auth-token-ttl`: how long a simple token lives without use.
    pub auth_token_ttl: Duration,
    /// TLS for the listeners and for connections to peers.
    pub tls: MemberTls,
    /// `--auth-token`: simple tokens, JWTs, or none.
    pub token_provider: Arc<crate::core::jwt::TokenProvider>,
    /// Addresses from `--listen-metrics-urls`, where `/metrics` and `/health` are served
    /// over plain HTTP.
    pub listen_metrics_addrs: Vec<SocketAddr>,
    /// `--max-concurrent-streams`: HTTP/2 streams per client connection.
    pub max_concurrent_streams: u32,
    /// `--grpc-keepalive-interval`: idle time before the server pings a client
    /// connection; `None` (a zero flag) never pings.
    pub grpc_keepalive_interval: Option<Duration>,
    /// `--grpc-keepalive-timeout`: how long such a ping may go unanswered; `None` (a zero
    /// flag) leaves the transport's default.
    pub grpc_keepalive_timeout: Option<Duration>,
    /// `--pre-vote`.
    pub pre_vote: bool,
    /// `--cors`, `--host-whitelist` and `--enable-grpc-gateway`, for the client port's
    /// HTTP side.
    pub http_access: gateway::access::AccessPolicy,
}

/// TLS for a member's listeners and for its connections to peers. The default is plain
/// TCP everywhere, which simulations always use: madsim's network carries no TLS.
#[derive(Debug, Clone, Default)]
pub struct MemberTls {
    /// For each of `listen_client_addrs`, in order, the TLS it is served with (an https
    /// URL); a listener without an entry, or with `None`, is served in the clear.
    pub client: Vec<Option<Arc<crate::tls::ServerTls>>>,
    /// Likewise for `listen_peer_addrs`.
    pub peer: Vec<Option<Arc<crate::tls::ServerTls>>>,
    /// What this member dials https peer URLs with.
    pub peer_client: Option<Arc<crate::tls::ClientTls>>,
}

impl MemberTls {
    fn client(&self, index: usize) -> Option<Arc<crate::tls::ServerTls>> {
        self.client.get(index).cloned().flatten()
    }

    fn peer(&self, index: usize) -> Option<Arc<crate::tls::ServerTls>> {
        self.peer.get(index).cloned().flatten()
    }
}

/// Why a member failed to start or stopped abnormally.
#[derive(Debug)]
pub struct ServerError(pub String);

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ServerError {}

fn err(e: impl std::fmt::Display) -> ServerError {
    ServerError(e.to_string())
}

/// The bound client addresses, reported once the member serves (port 0 resolved).
pub type ReadySender = tokio::sync::oneshot::Sender<Vec<SocketAddr>>;

/// Runs a member until `shutdown` resolves or an actor fails. `ready` (if given) receives
/// the client addresses once the member serves requests.
pub async fn run(
    cfg: ServerConfig,
    shutdown: impl Future<Output = ()> + Send,
    ready: Option<ReadySender>,
) -> Result<(), ServerError> {
    let member_dir = cfg.data_dir.join("member");
    let wal_dir = cfg
        .wal_dir
        .clone()
        .unwrap_or_else(|| member_dir.join("wal"));
    let Bootstrap {
        member_id,
        cluster_id,
        voters,
        seeds,
    } = bootstrap(&cfg, &wal_dir).await?;

    // The MVCC backend next: it says how far the state machine got.
    let backend: Box<dyn Backend> = match cfg.backend {
        BackendChoice::Sled => {
            let snap_dir = member_dir.join("snap");
            std::fs::create_dir_all(&snap_dir)
                .map_err(|e| ServerError(format!("cannot create {}: {e}", snap_dir.display())))?;
            let sled = SledBackend::open(&snap_dir.join("db")).map_err(|e| {
                ServerError(format!("cannot open backend {}: {e}", snap_dir.display()))
            })?;
            // Commits leave the answer path: see `storage::pipelined` for why no
            // acknowledged write can be lost.
            Box::new(
                PipelinedBackend::new(Box::new(sled)).map_err(|e| {
                    ServerError(format!("cannot start the backend commit thread: {e}"))
                })?,
            )
        }
        BackendChoice::Memory(b) => Box::new(b),
    };
    let mut backend = backend;
    if let Some(seeds) = &seeds {
        // Before the WAL exists: a member with a WAL always has its initial membership.
        storage::seed_members(backend.as_mut(), seeds)
            .map_err(|e| ServerError(format!("backend: cannot record members: {e}")))?;
    }
    tracing::info!(
        name = %cfg.name,
        data_dir = %cfg.data_dir.display(),
        member_id = format!("{member_id:x}"),
        cluster_id = format!("{cluster_id:x}"),
        "starting detcd member"
    );
    // etcd's request timeout: 5 s plus twice the election timeout.
    let request_timeout = Duration::from_millis(5_000 + 2 * cfg.election_timeout_ms);
    let mut raft_log = log::open_or_create(
        cfg.disk.clone(),
        &wal_dir,
        log::WalIdentity {
            member_id,
            cluster_id,
        },
        &voters,
    )
    .map_err(err)?;
    let snap_dir = member_dir.join("snap");
    load_pending_snapshot(
        backend.as_mut(),
        cfg.disk.as_ref(),
        &snap_dir,
        raft_log.snapshot.index,
    )?;
    let min_lease_ttl_s = lease::min_ttl_s(cfg.election_timeout_ms, cfg.heartbeat_interval_ms);
    let recovered = storage::recover(backend.as_ref(), min_lease_ttl_s).map_err(err)?;
    let recovered_revision = recovered.state.mvcc.current_revision();
    tracing::info!(
        applied_index = recovered.applied_index,
        revision = recovered.state.mvcc.current_revision(),
        leases = recovered.state.leases.len(),
        "recovered the MVCC backend"
    );
    let applied_index = raft_log.reconcile(recovered.applied_index).map_err(err)?;
    if cfg.force_new_cluster && !raft_log.created {
        let removed = raft_log.force_new_cluster(member_id).map_err(err)?;
        // etcd 3.4's words ("forcing restart of member <id> in cluster <cid> ..."), which
        // operators and tests look for.
        tracing::warn!(
            removed_members = removed,
            "forcing restart of member {member_id:x} in cluster {cluster_id:x}: the other \
             members are removed and this one continues alone"
        );
    }
    // The configuration the log starts from, which members joining later replay it from.
    let bootstrap_voters = {
        use raft::Storage as _;
        let first = raft_log.storage.first_index().unwrap_or(0);
        match raft_log.storage.initial_state() {
            Ok(state) if first == 1 => state.conf_state.voters,
            _ => Vec::new(),
        }
    };
    if raft_log.created {
        tracing::info!(wal_dir = %wal_dir.display(), "created a new WAL");
    } else {
        tracing::info!(wal_dir = %wal_dir.display(), "restarting local member from its WAL");
    }
    // As etcd, only a member with data of its own is checked, before it serves anything.
    if cfg.initial_corrupt_check && !raft_log.created {
        let (hash, compact_revision) = recovered.state.mvcc.hash_kv(0).map_err(err)?;
        let local = KvHash {
            member_id,
            hash,
            revision: recovered.state.mvcc.current_revision(),
            compact_revision,
        };
        let members = storage::stored_membership(backend.as_ref()).map_err(err)?;
        let peers = corrupt_check::peers_of(&members, member_id);
        let dialer = PeerDialer::new(cfg.tls.peer_client.clone());
        corrupt_check::initial_check(&dialer, local, &peers, request_timeout)
            .await
            .map_err(ServerError)?;
    }

    // Bind before anything serves, so a busy port fails the start.
    let mut listeners = Vec::new();
    for addr in &cfg.listen_client_addrs {
        let l = rt::bind(*addr)
            .await
            .map_err(|e| ServerError(format!("listen tcp {addr}: bind: {}", io_text(&e))))?;
        listeners.push(l);
    }
    for path in &cfg.listen_client_sockets {
        let l = rt::bind_unix(path).await.map_err(|e| {
            ServerError(format!(
                "listen unix {}: bind: {}",
                path.display(),
                io_text(&e)
            ))
        })?;
        listeners.push(l);
    }
    let mut metrics_listeners = Vec::new();
    for addr in &cfg.listen_metrics_addrs {
        let l = rt::bind(*addr)
            .await
            .map_err(|e| ServerError(format!("listen tcp {addr}: bind: {}", io_text(&e))))?;
        metrics_listeners.push(l);
    }
    let mut peer_listeners = Vec::new();
    for addr in &cfg.listen_peer_addrs {
        let l = rt::bind(*addr)
            .await
            .map_err(|e| ServerError(format!("listen tcp {addr}: bind: {}", io_text(&e))))?;
        peer_listeners.push(l);
    }

    let metrics = Arc::new(crate::metrics::Metrics::new());
    let (raft_tx, raft_rx) = mpsc::channel(CHANNEL_BOUND);
    let (storage_tx, storage_rx) = mpsc::channel(CHANNEL_BOUND);
    let (status_tx, mut status_rx) = watch::channel(RaftStatus::default());
    let raft_actor = RaftActor::new(
        raft_log,
        RaftActorConfig {
            member_id,
            cluster_id,
            heartbeat_interval_ms: cfg.heartbeat_interval_ms,
            election_timeout_ms: cfg.election_timeout_ms,
            pre_vote: cfg.pre_vote,
            max_request_bytes: cfg.max_request_bytes,
            applied_index,
            snapshot_count: if cfg.snapshot_count == 0 {
                DEFAULT_SNAPSHOT_COUNT
            } else {
                cfg.snapshot_count
            },
            snapshot_catchup_entries: cfg.snapshot_catchup_entries,
            disk: cfg.disk.clone(),
            snap_dir,
            metrics: metrics.clone(),
        },
        raft_rx,
        storage_tx.clone(),
        status_tx,
    )
    .map_err(err)?;
    let (watch_tx, watch_rx) = mpsc::channel(CHANNEL_BOUND);
    let watch_actor = WatchHubActor::new(
        WatchConfig {
            max_request_bytes: cfg.max_request_bytes,
            progress_notify_interval_ms: cfg.watch_progress_notify_interval.as_millis() as u64,
            ..WatchConfig::default()
        },
        recovered_revision,
        watch_rx,
        storage_tx.clone(),
        status_rx.clone(),
        member_id,
        cluster_id,
    );
    let next_watch_stream = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (membership_tx, membership_rx) = watch::channel(Arc::new(Membership::default()));
    let peer_config = PeerConfig {
        local_id: member_id,
        cluster_id,
        membership: membership_rx.clone(),
        health: PeerHealth::default(),
        remotes: Default::default(),
        dialer: PeerDialer::new(cfg.tls.peer_client.clone()),
        metrics: metrics.clone(),
    };
    // Every member has a transport, even alone: members can be added at any time.
    let raft_actor = raft_actor.with_transport(Transport::start(
        &peer_config,
        raft_tx.clone(),
        storage_tx.clone(),
    ));
    let (lease_tx, lease_rx) = mpsc::channel(CHANNEL_BOUND);
    let lease_timer = LeaseTimer::new(
        LeaseTimerConfig {
            member_id,
            election_timeout_ms: cfg.election_timeout_ms,
            heartbeat_interval_ms: cfg.heartbeat_interval_ms,
        },
        recovered.state.leases.leases().collect::<Vec<_>>(),
        lease_rx,
        raft_tx.clone(),
        status_rx.clone(),
    );
    let quota = Quota::from_flag(cfg.quota_backend_bytes);
    match quota.limit_bytes {
        None => tracing::info!(
            quota_size_bytes = cfg.quota_backend_bytes,
            "disabled backend quota"
        ),
        Some(limit) if limit > quota::MAX_QUOTA_BYTES => tracing::warn!(
            quota_size_bytes = limit,
            quota_maximum_size_bytes = quota::MAX_QUOTA_BYTES,
            "quota exceeds the maximum value"
        ),
        Some(limit) => tracing::info!(quota_size_bytes = limit, "enabled backend quota"),
    }
    let backend_size = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let auth_view = std::sync::Arc::new(std::sync::Mutex::new(crate::actors::storage::AuthView {
        store: std::sync::Arc::new(recovered.state.auth.clone()),
        tokens: crate::core::token::TokenTable::new(cfg.auth_token_ttl),
        applied_index: recovered.applied_index,
    }));
    let storage_actor = StorageActor::new(
        recovered,
        backend,
        member_id,
        cluster_id,
        storage_rx,
        lease_tx.clone(),
    )
    .with_watch_hub(watch_tx.clone())
    .with_auth_view(auth_view.clone())
    .with_quota(quota, backend_size.clone())
    .with_members(membership_tx)
    .map_err(err)?
    .with_metrics(metrics.clone());
    let mut raft_task = rt::spawn("raft", raft_actor.run());
    let mut storage_task = rt::spawn("storage", storage_actor.run());
    let lease_task = rt::spawn("lease-timer", lease_timer.run());
    let watch_task = rt::spawn("watch-hub", watch_actor.run());

    let handle = Handle {
        raft_tx,
        storage_tx,
        raft_status: status_rx.clone(),
        member: MemberInfo {
            name: cfg.name.clone(),
            member_id,
            cluster_id,
            peer_urls: cfg.initial_advertise_peer_urls.clone(),
            client_urls: cfg.advertise_client_urls.clone(),
        },
        max_txn_ops: cfg.max_txn_ops,
        request_timeout,
        quota,
        backend_size,
        membership: membership_rx.clone(),
        peer_health: peer_config.health.clone(),
        strict_reconfig_check: cfg.strict_reconfig_check,
        auth: auth_view,
        bcrypt_cost: cfg.bcrypt_cost,
        token_provider: cfg.token_provider.clone(),
        metrics,
    };

    // The peer transport serves from the start: the member cannot elect a leader or
    // catch up without it.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut servers = Vec::new();
    for (index, listener) in peer_listeners.into_iter().enumerate() {
        let addr = listener.local_addr();
        let tls = cfg.tls.peer(index);
        let secure = tls.is_some();
        let router = rt::grpc_server()
            .add_service(
                RaftServer::new(
                    PeerService::new(
                        &peer_config,
                        handle.raft_tx.clone(),
                        lease_tx.clone(),
                        status_rx.clone(),
                    )
                    .with_cluster(bootstrap_voters.clone(), handle.clone()),
                )
                .max_decoding_message_size(MAX_PEER_GRPC_BYTES)
                .max_encoding_message_size(MAX_PEER_GRPC_BYTES),
            )
            // etcd's peer port serves the client API too; peers ask each other's hashes
            // through it for the corruption checks.
            .add_service(MaintenanceServer::new(
                gateway::maintenance::MaintenanceService::new(handle.clone()),
            ));
        let mut stop = stop_rx.clone();
        servers.push(rt::spawn("grpc-peer", async move {
            rt::serve_grpc(router, listener, tls, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
        }));
        if secure {
            tracing::info!(address = %addr, "serving peer traffic securely on {addr}");
        } else {
            tracing::info!(address = %addr, "serving peer traffic on {addr}");
        }
    }

    // Serve only once a leader exists, this member has applied everything committed
    // before it started, and its name and client URLs are published through raft, as
    // etcd serves only after publishing itself.
    tokio::select! {
        // Branches are polled in order, not at random, so a simulation replays from its seed.
        biased;
        r = async {
            wait_until_caught_up(&handle, &mut status_rx).await?;
            publish(&handle, &cfg.name, &cfg.advertise_client_urls).await;
            Ok::<(), ServerError>(())
        } => r?,
        r = &mut raft_task => return Err(actor_exit("raft", r.map(|r| r.map_err(err)))),
        r = &mut storage_task => return Err(actor_exit("storage", r.map(|r| r.map_err(err)))),
    }
    tracing::info!(
        name = %cfg.name,
        client_urls = ?cfg.advertise_client_urls,
        cluster_id = format!("{cluster_id:x}"),
        "published local member to cluster through raft"
    );
    tracing::info!(
        cluster_version = crate::ETCD_CLUSTER_VERSION,
        "enabled capabilities for version {}",
        &crate::ETCD_CLUSTER_VERSION[..3]
    );

    let max_recv = cfg.max_request_bytes + GRPC_OVERHEAD_BYTES;
    // The Lock and Election services watch through the same hub, on stream ids from the
    // same counter, as the Watch service.
    let watch_path = gateway::concurrency::WatchPath {
        watch_tx: watch_tx.clone(),
        next_stream: next_watch_stream.clone(),
    };
    let mut bound = Vec::new();
    for (index, listener) in listeners.into_iter().enumerate() {
        let socket = listener.socket_path();
        let addr = match &socket {
            Some(path) => path.display().to_string(),
            None => {
                bound.push(listener.local_addr());
                listener.local_addr().to_string()
            }
        };
        let tls = cfg.tls.client(index);
        let secure = tls.is_some();
        let api = rt::HttpApi {
            handle: handle.clone(),
            max_request_bytes: max_recv,
            access: cfg.http_access.clone(),
            secure,
        };
        let h2 = rt::ClientH2 {
            max_concurrent_streams: cfg.max_concurrent_streams,
            keepalive_interval: cfg.grpc_keepalive_interval,
            keepalive_timeout: cfg.grpc_keepalive_timeout,
        };
        let watch_service =
            gateway::watch::WatchService::new(watch_tx.clone(), next_watch_stream.clone())
                .with_learner_check(status_rx.clone())
                .with_auth(handle.auth.clone(), handle.token_provider.clone());
        // Real listeners write the hub's encoded responses as they are; the simulator's
        // gRPC passes messages, so it gets the generated service.
        crate::real_only! {
            let watch_server = gateway::watch::WatchFrameServer::new(watch_service, max_recv);
        }
        crate::simulated_only! {
            let watch_server = WatchServer::new(watch_service)
                .max_decoding_message_size(max_recv)
                .max_encoding_message_size(usize::MAX);
        }
        let router = rt::client_server(api, h2)
            .add_service(
                KvServer::new(gateway::kv::KvService::new(handle.clone()))
                    .max_decoding_message_size(max_recv)
                    .max_encoding_message_size(usize::MAX),
            )
            .add_service(
                MaintenanceServer::new(gateway::maintenance::MaintenanceService::new(
                    handle.clone(),
                ))
                .max_decoding_message_size(max_recv)
                .max_encoding_message_size(usize::MAX),
            )
            .add_service(
                ClusterServer::new(
                    gateway::cluster::ClusterService::new(handle.clone())
                        .with_forwarder(LeaseForwarder::new(&peer_config)),
                )
                .max_decoding_message_size(max_recv)
                .max_encoding_message_size(usize::MAX),
            )
            .add_service(
                LeaseServer::new(
                    gateway::lease::LeaseService::new(handle.clone(), lease_tx.clone())
                        .with_forwarder(LeaseForwarder::new(&peer_config)),
                )
                .max_decoding_message_size(max_recv)
                .max_encoding_message_size(usize::MAX),
            )
            .add_service(
                crate::pb::etcdserverpb::auth_server::AuthServer::new(
                    gateway::auth::AuthService::new(handle.clone()),
                )
                .max_decoding_message_size(max_recv)
                .max_encoding_message_size(usize::MAX),
            )
            .add_service(watch_server)
            .add_service(
                LockServer::new(gateway::lock::LockService::new(
                    handle.clone(),
                    watch_path.clone(),
                ))
                .max_decoding_message_size(max_recv)
                .max_encoding_message_size(usize::MAX),
            )
            .add_service(
                ElectionServer::new(gateway::election::ElectionService::new(
                    handle.clone(),
                    watch_path.clone(),
                ))
                .max_decoding_message_size(max_recv)
                .max_encoding_message_size(usize::MAX),
            )
            .add_service(crate::pb::health::health_server::HealthServer::new(
                gateway::health::HealthService,
            ));
        let mut stop = stop_rx.clone();
        servers.push(rt::spawn("grpc", async move {
            rt::serve_grpc(router, listener, tls, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
        }));
        tracing::info!(
            address = %addr,
            "ready to serve client requests"
        );
        if secure {
            tracing::info!(address = %addr, "serving client requests on {addr}");
        } else {
            tracing::info!(
                address = %addr,
                "serving insecure client requests on {addr}, this is strongly discouraged!"
            );
        }
    }
    for listener in metrics_listeners {
        let addr = listener.local_addr();
        // etcd's metrics listener has no access controller: no Host check, no CORS.
        let api = rt::HttpApi {
            handle: handle.clone(),
            max_request_bytes: max_recv,
            access: Default::default(),
            secure: false,
        };
        let mut stop = stop_rx.clone();
        rt::spawn(
            "metrics",
            rt::serve_metrics(listener, api, async move {
                let _ = stop.wait_for(|s| *s).await;
            }),
        );
        tracing::info!(address = %addr, "serving metrics on {addr}");
    }
    if !cfg.corrupt_check_interval.is_zero() {
        rt::spawn(
            "corrupt-check",
            corrupt_check::run_periodic(
                handle.clone(),
                PeerDialer::new(cfg.tls.peer_client.clone()),
                cfg.corrupt_check_interval,
                stop_rx.clone(),
            ),
        );
    }
    let raft_tx = handle.raft_tx.clone();
    let storage_tx = handle.storage_tx.clone();
    drop(handle);
    if let Some(ready) = ready {
        let _ = ready.send(bound);
    }

    let mut raft_stopped = false;
    let outcome = tokio::select! {
        // Branches are polled in order, not at random, so a simulation replays from its seed.
        biased;
        _ = shutdown => {
            tracing::info!("received a stop request; closing client listeners after in-flight requests");
            Ok(())
        }
        r = &mut raft_task => {
            if status_rx.borrow().removed && matches!(r, Ok(Ok(()))) {
                // etcd stops a member the cluster removed; the process exits normally.
                tracing::warn!("the member has been permanently removed from the cluster; stopping");
                raft_stopped = true;
                Ok(())
            } else {
                Err(actor_exit("raft", r.map(|r| r.map_err(err))))
            }
        }
        r = &mut storage_task => Err(actor_exit("storage", r.map(|r| r.map_err(err)))),
    };
    let _ = stop_tx.send(true);
    // In-flight requests get a bounded grace period; idle client connections that stay
    // open (clients keep HTTP/2 connections alive) must not hold the member up forever.
    let grace_deadline = rt::now() + SHUTDOWN_GRACE;
    for mut s in servers {
        match rt::timeout_at(grace_deadline, &mut s).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "client listener stopped with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "client listener task failed"),
            Err(_) => {
                tracing::info!("closing client connections still open after the grace period");
                s.abort();
            }
        }
    }
    if outcome.is_ok() {
        // Connections that outlived the grace period may still hold handles to the actors,
        // so they are stopped by message rather than by closing their channels. The raft
        // actor stops first, so nothing new commits; the storage actor then applies what
        // was queued before its stop message and syncs the backend.
        if !raft_stopped {
            let _ = raft_tx.send(RaftMsg::Shutdown).await;
            match raft_task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(err(e)),
                Err(e) => return Err(err(e)),
            }
        }
        let _ = storage_tx.send(StorageMsg::Shutdown).await;
        match storage_task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(err(e)),
            Err(e) => return Err(err(e)),
        }
        let _ = lease_tx.send(LeaseMsg::Shutdown).await;
        if let Err(e) = lease_task.await {
            return Err(err(e));
        }
        // Nothing applies any more: the watch hub has nothing left to deliver.
        let _ = watch_tx.send(WatchMsg::Shutdown).await;
        if let Err(e) = watch_task.await {
            return Err(err(e));
        }
        tracing::info!("stopped detcd member");
    }
    outcome
}

/// Who this member is and what it starts from.
struct Bootstrap {
    member_id: u64,
    cluster_id: u64,
    /// The raft configuration a new WAL starts with (ignored when the WAL exists).
    voters: Vec<u64>,
    /// The membership to record before creating the WAL (none when it exists).
    seeds: Option<Vec<MemberRecord>>,
}

/// Decides the member's identity as etcd does: a member with a WAL restarts as the member
/// the WAL names, ignoring `--initial-cluster`; a new member of a new cluster derives the
/// ids from `--initial-cluster` and the token; a member joining a running cluster asks the
/// listed peers for the cluster and finds itself among its members by peer URLs.
async fn bootstrap(
    cfg: &ServerConfig,
    wal_dir: &std::path::Path,
) -> Result<Bootstrap, ServerError> {
    if log::exists(cfg.disk.as_ref(), wal_dir) {
        let identity = log::read_identity(cfg.disk.clone(), wal_dir).map_err(err)?;
        return Ok(Bootstrap {
            member_id: identity.member_id,
            cluster_id: identity.cluster_id,
            voters: Vec::new(),
            seeds: None,
        });
    }
    if cfg.join_existing {
        return join_existing(cfg).await;
    }
    let member_id = ids::member_id(&cfg.initial_advertise_peer_urls, &cfg.initial_cluster_token);
    let seeds: Vec<MemberRecord> = cfg
        .initial_cluster
        .iter()
        .map(|(_, urls)| MemberRecord {
            id: ids::member_id(urls, &cfg.initial_cluster_token),
            peer_urls: urls.clone(),
            ..Default::default()
        })
        .collect();
    let mut voters: Vec<u64> = seeds.iter().map(|m| m.id).collect();
    if !voters.contains(&member_id) {
        return Err(ServerError(format!(
            "couldn't find local name {:?} in the initial cluster configuration",
            cfg.name
        )));
    }
    voters.sort_unstable();
    voters.dedup();
    Ok(Bootstrap {
        member_id,
        cluster_id: ids::cluster_id(&voters),
        voters,
        seeds: Some(seeds),
    })
}

/// etcd's join path (`GetClusterFromRemotePeers`, `ValidateClusterAndAssignIDs`): the new
/// member learns the cluster id and members from a listed peer, takes the id of the member
/// whose peer URLs match its own entry, and starts its log from the configuration the
/// cluster's log starts from, then catches up from the leader.
async fn join_existing(cfg: &ServerConfig) -> Result<Bootstrap, ServerError> {
    let remote: Vec<String> = cfg
        .initial_cluster
        .iter()
        .filter(|(name, _)| *name != cfg.name)
        .flat_map(|(_, urls)| urls.iter().cloned())
        .collect();
    // etcd takes the first peer that answers. A peer that has not applied this member's
    // addition yet (one that lags, or was just restarted) answers with a list that does
    // not match, and etcd then fails to start; detcd asks the next peer instead, and
    // reports the first mismatch only if no peer's list matches.
    let dialer = PeerDialer::new(cfg.tls.peer_client.clone());
    let mut first_error = None;
    let mut found = None;
    for url in &remote {
        let Some(existing) =
            transport::fetch_cluster(std::slice::from_ref(url), Duration::from_secs(2), &dialer)
                .await
        else {
            continue;
        };
        match membership::assign_ids(&cfg.initial_cluster, &existing.members) {
            Ok(assigned) => {
                found = Some((existing, assigned));
                break;
            }
            Err(e) => {
                first_error.get_or_insert_with(|| {
                    ServerError(format!(
                        "error validating peerURLs {{ClusterID:{:x} Members:[{}]}}: {e}",
                        existing.cluster_id,
                        existing
                            .members
                            .iter()
                            .map(|m| format!("{:x}={}", m.id, m.peer_urls.join(",")))
                            .collect::<Vec<_>>()
                            .join(" ")
                    ))
                });
            }
        }
    }
    let Some((existing, assigned)) = found else {
        return Err(first_error.unwrap_or_else(|| {
            ServerError(
                "cannot fetch cluster info from peer urls: could not retrieve cluster information from the given URLs"
                    .into(),
            )
        }));
    };
    let Some((_, _, member_id)) = assigned.iter().find(|(name, _, _)| *name == cfg.name) else {
        return Err(ServerError(format!(
            "couldn't find local name {:?} in the initial cluster configuration",
            cfg.name
        )));
    };
    tracing::info!(
        member_id = format!("{member_id:x}"),
        cluster_id = format!("{:x}", existing.cluster_id),
        "joining an existing cluster"
    );
    Ok(Bootstrap {
        member_id: *member_id,
        cluster_id: existing.cluster_id,
        voters: existing.bootstrap_voters,
        seeds: Some(existing.members),
    })
}

/// An I/O error in the words Go's net package uses, which operators' scripts match on.
fn io_text(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => "address already in use".into(),
        std::io::ErrorKind::AddrNotAvailable => "cannot assign requested address".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

fn actor_exit<E: std::fmt::Display>(
    name: &str,
    r: Result<Result<(), ServerError>, E>,
) -> ServerError {
    match r {
        Ok(Ok(())) => ServerError(format!("the {name} actor stopped unexpectedly")),
        Ok(Err(e)) => ServerError(format!("the {name} actor failed: {e}")),
        Err(e) => ServerError(format!("the {name} actor panicked: {e}")),
    }
}

/// Proposes this member's name and client URLs through raft until the proposal is
/// applied (etcd's ClusterMemberAttrSet), retrying after failures such as a leader change.
async fn publish(handle: &Handle, name: &str, client_urls: &[String]) {
    let request = crate::pb::detcdpb::InternalRequest {
        member_attr_set: Some(crate::pb::detcdpb::MemberAttrSet {
            member_id: handle.member.member_id,
            name: name.to_string(),
            client_urls: client_urls.to_vec(),
        }),
        ..Default::default()
    };
    loop {
        match handle.propose(request.clone()).await {
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, "failed to publish local member to cluster through raft; retrying");
                rt::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Finishes installing a snapshot received from the leader before a crash: the WAL
/// recorded it (its state was saved in the snap directory first), but the backend may not
/// have been loaded from it. The backend's consistent index says which.
fn load_pending_snapshot(
    backend: &mut dyn Backend,
    disk: &dyn Disk,
    snap_dir: &std::path::Path,
    snapshot_index: u64,
) -> Result<(), ServerError> {
    if snapshot_index == 0 {
        return Ok(());
    }
    let backend_index = storage::consistent_index(backend).map_err(err)?;
    if backend_index >= snapshot_index {
        return Ok(());
    }
    let blob = crate::storage::snapshot::load_file(disk, snap_dir, snapshot_index)
        .map_err(|e| ServerError(format!("cannot read snapshot in {}: {e}", snap_dir.display())))?
        .ok_or_else(|| {
            ServerError(format!(
                "the WAL records a snapshot at index {snapshot_index} but the backend is at index {backend_index} and {} holds no snapshot file for it",
                snap_dir.display()
            ))
        })?;
    crate::storage::snapshot::install(backend, &blob).map_err(err)?;
    tracing::info!(
        snapshot_index,
        "recovered the backend from the saved snapshot"
    );
    Ok(())
}

async fn wait_until_caught_up(
    handle: &Handle,
    status_rx: &mut watch::Receiver<RaftStatus>,
) -> Result<(), ServerError> {
    // Each attempt is short: a barrier raft dropped (a leader that has not committed in
    // its term yet) is simply asked again.
    let mut handle = handle.clone();
    handle.request_timeout = handle.request_timeout.min(Duration::from_secs(2));
    let handle = &handle;
    loop {
        if status_rx.borrow().leader_id != 0 {
            match handle.read_index().await {
                Ok(index) => {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    // A range at the barrier resolves only once the state machine has
                    // applied up to it.
                    let req = crate::pb::etcdserverpb::RangeRequest {
                        key: vec![0],
                        count_only: true,
                        ..Default::default()
                    };
                    let msg = crate::msg::StorageMsg::Range {
                        request: req,
                        min_applied_index: index,
                        reply: tx,
                    };
                    if handle.call(msg, rx, &handle.storage_tx).await.is_ok() {
                        return Ok(());
                    }
                }
                Err(e) => tracing::debug!(error = %e, "waiting for the member to catch up"),
            }
        }
        tokio::select! {
            // Branches are polled in order, not at random, so a simulation replays from its seed.
            biased;
            r = status_rx.changed() => {
                if r.is_err() {
                    return Err(ServerError("the raft actor stopped during start".into()));
                }
            }
            _ = rt::sleep(Duration::from_millis(50)) => {}
        }
    }
}
