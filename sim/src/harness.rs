//! Booting detcd members as simulated nodes and talking to them through real gRPC.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use detcd::pb::etcdserverpb::kv_client::KvClient;
use detcd::pb::etcdserverpb::watch_client::WatchClient;
use detcd::server::{BackendChoice, ServerConfig};
use detcd::storage::backend::MemBackend;
use detcd::storage::disk::SimDisk;
use madsim::runtime::{Handle, NodeHandle};

/// How many times a member's node tries to start before the run fails.
const START_ATTEMPTS: u32 = 20;

/// The client port every simulated member listens on.
pub const CLIENT_PORT: u16 = 2379;
/// The peer port every simulated member listens on.
pub const PEER_PORT: u16 = 2380;

/// One simulated member: its node, address and the disk and backend that outlive crashes.
pub struct SimMember {
    /// The member's name.
    pub name: String,
    /// The simulated node running it.
    pub node: NodeHandle,
    /// The member's IP address in the simulated network.
    pub ip: IpAddr,
    /// The simulated disk its WAL lives on (survives kills, loses unsynced writes on crash).
    pub disk: SimDisk,
    /// How the node boots on its next (re)start; the simulator changes it to replace the
    /// member by a new one on the same machine (see [`SimMember::rejoin_as_new`]).
    boot: Arc<Mutex<Boot>>,
}

/// What a member's node boots with. A new generation is a new member on the same
/// machine: an empty data directory, a fresh backend, and a join of the running cluster.
#[derive(Clone)]
struct Boot {
    initial_cluster: Vec<(String, Vec<String>)>,
    join_existing: bool,
    generation: u64,
    backend: MemBackend,
    /// The member id, once known for a member added at runtime (initial members' ids are
    /// derived from their peer URLs).
    member_id: Option<u64>,
    /// Why the last start failed, if it did.
    last_start_error: Option<String>,
}

impl SimMember {
    /// How many times the member was replaced by a new one ([`SimMember::rejoin_as_new`]).
    pub fn generation(&self) -> u64 {
        self.lock_boot().generation
    }

    /// The id of the member the node runs now, if it was added at runtime (`None` for a
    /// member of the initial cluster, whose id follows from its peer URL).
    pub fn added_member_id(&self) -> Option<u64> {
        self.lock_boot().member_id
    }

    /// Makes the node's next start a new member that joins the running cluster as
    /// `member_id`, listed with the others in `initial_cluster`, with an empty data
    /// directory and backend. The caller adds it to the cluster first and then restarts
    /// the node.
    pub fn rejoin_as_new(&self, member_id: u64, initial_cluster: Vec<(String, Vec<String>)>) {
        let mut b = self.lock_boot();
        b.generation += 1;
        b.join_existing = true;
        b.initial_cluster = initial_cluster;
        b.backend = MemBackend::new();
        b.member_id = Some(member_id);
        b.last_start_error = None;
    }

    /// Why the member's last start failed, if it did (a member that refuses to start,
    /// such as one whose WAL is corrupt, says why here).
    pub fn last_start_error(&self) -> Option<String> {
        self.lock_boot().last_start_error.clone()
    }

    /// Simulates the crash of the member's backend, whose node must be down: batches it
    /// had not synced survive only as a prefix chosen by `seed` (see
    /// `MemBackend::crash_keeping_some`).
    pub fn crash_backend(&self, seed: u64) {
        self.lock_boot().backend.crash_keeping_some(seed);
    }

    /// The data directory the member runs from now.
    pub fn data_dir(&self) -> PathBuf {
        data_dir_of(&self.name, self.generation())
    }

    fn lock_boot(&self) -> std::sync::MutexGuard<'_, Boot> {
        self.boot.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// The member's client URL.
    pub fn client_url(&self) -> String {
        format!("http://{}:{}", self.ip, CLIENT_PORT)
    }
}

/// The IP address of the `i`th member (0-based).
pub fn member_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, (i + 1) as u8))
}

/// Starts a single-member cluster named `name` on a fresh simulated disk.
pub fn start_single_member(handle: &Handle, name: &str) -> SimMember {
    let initial_cluster = vec![(name.to_string(), vec![member_peer_url(0)])];
    start_member(
        handle,
        0,
        name,
        initial_cluster,
        MemberOptions::default(),
        false,
    )
}

/// Settings a test may change for every member of a simulated cluster.
#[derive(Debug, Clone, Copy)]
pub struct MemberOptions {
    /// `--snapshot-count`.
    pub snapshot_count: u64,
    /// Entries kept behind a snapshot for slow followers.
    pub snapshot_catchup_entries: u64,
}

impl Default for MemberOptions {
    fn default() -> MemberOptions {
        MemberOptions {
            snapshot_count: 100_000,
            snapshot_catchup_entries: 5_000,
        }
    }
}

/// Starts member `i` as a new member joining a running cluster that has already added it
/// (`--initial-cluster-state existing`), with `initial_cluster` listing every member, this
/// one included, as etcdctl's `member add` prints it.
pub fn start_joining_member(
    handle: &Handle,
    i: usize,
    name: &str,
    initial_cluster: Vec<(String, Vec<String>)>,
) -> SimMember {
    start_joining_member_with(handle, i, name, initial_cluster, MemberOptions::default())
}

/// [`start_joining_member`] with non-default member settings.
pub fn start_joining_member_with(
    handle: &Handle,
    i: usize,
    name: &str,
    initial_cluster: Vec<(String, Vec<String>)>,
    options: MemberOptions,
) -> SimMember {
    start_member(handle, i, name, initial_cluster, options, true)
}

/// Starts member `i` (IP, ports and peer URL from its index) of the cluster that
/// `initial_cluster` describes, on its own node with a fresh simulated disk and backend.
/// The node's init closure rebuilds the configuration on every (re)start, while the disk
/// and backend outlive kills, as a real machine's disk does.
fn start_member(
    handle: &Handle,
    i: usize,
    name: &str,
    initial_cluster: Vec<(String, Vec<String>)>,
    options: MemberOptions,
    join_existing: bool,
) -> SimMember {
    let ip = member_ip(i);
    let disk = SimDisk::new();
    let boot = Arc::new(Mutex::new(Boot {
        initial_cluster,
        join_existing,
        generation: 0,
        backend: MemBackend::new(),
        member_id: None,
        last_start_error: None,
    }));
    let node_boot = boot.clone();
    let node_disk = disk.clone();
    let node_name = name.to_string();
    let node = handle
        .create_node()
        .name(name)
        .ip(ip)
        .init(move || {
            let node_name = node_name.clone();
            let node_boot = node_boot.clone();
            let node_boot_errors = node_boot.clone();
            let node_disk = node_disk.clone();
            let make_config = move || {
                let boot = node_boot.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let data_dir = data_dir_of(&node_name, boot.generation);
                ServerConfig {
                    name: node_name.clone(),
                    data_dir,
                    wal_dir: None,
                    listen_client_addrs: vec![SocketAddr::new(ip, CLIENT_PORT)],
                    listen_client_sockets: vec![],
                    listen_peer_addrs: vec![SocketAddr::new(ip, PEER_PORT)],
                    advertise_client_urls: vec![format!("http://{ip}:{CLIENT_PORT}")],
                    initial_advertise_peer_urls: vec![member_peer_url(i)],
                    initial_cluster: boot.initial_cluster,
                    initial_cluster_token: "etcd-cluster".to_string(),
                    join_existing: boot.join_existing,
                    strict_reconfig_check: true,
                    force_new_cluster: false,
                    heartbeat_interval_ms: 100,
                    election_timeout_ms: 1000,
                    max_request_bytes: 1536 * 1024,
                    max_txn_ops: 128,
                    watch_progress_notify_interval: Duration::from_secs(600),
                    snapshot_count: options.snapshot_count,
                    snapshot_catchup_entries: options.snapshot_catchup_entries,
                    quota_backend_bytes: 0,
                    initial_corrupt_check: false,
                    corrupt_check_interval: Duration::ZERO,
                    disk: Arc::new(node_disk.clone()),
                    backend: BackendChoice::Memory(boot.backend),
                    bcrypt_cost: 4,
                    auth_token_ttl: Duration::from_secs(300),
                    tls: Default::default(),
                    token_provider: Default::default(),
                    listen_metrics_addrs: Vec::new(),
                    max_concurrent_streams: u32::MAX,
                    grpc_keepalive_interval: None,
                    grpc_keepalive_timeout: None,
                    // Simulated clusters run with pre-vote, as etcd 3.5 and later do
                    // by default, so that a healed partition does not depose the leader.
                    pre_vote: true,
                    http_access: Default::default(),
                }
            };
            async move {
                // A supervisor's restarts (systemd's `Restart=on-failure`): a start that
                // fails, such as a join that met only peers which had not applied the
                // member's addition yet, is tried again a second later; a member that
                // keeps failing fails the run.
                // A member that refuses to start because its data is corrupt is not
                // restarted: that needs an operator (the simulator replaces the member).
                for attempt in 1..=START_ATTEMPTS {
                    let set_error = |e: Option<String>| {
                        node_boot_errors
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .last_start_error = e;
                    };
                    set_error(None);
                    match detcd::server::run(make_config(), detcd::rt::shutdown_signal(), None)
                        .await
                    {
                        Ok(()) => return,
                        Err(e) => {
                            let e = e.to_string();
                            set_error(Some(e.clone()));
                            if e.contains("refusing to start")
                                || e.contains("lost committed entries")
                            {
                                tracing::error!(error = %e, "member refuses to start");
                                return;
                            }
                            if attempt == START_ATTEMPTS {
                                panic!("member failed: {e}");
                            }
                            tracing::warn!(error = %e, attempt, "member failed to start; retrying");
                            madsim::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
            }
        })
        .build();
    SimMember {
        name: name.to_string(),
        node,
        ip,
        disk,
        boot,
    }
}

/// The data directory of generation `generation` of the member named `name`: a new
/// generation is a new member, with its own empty directory.
fn data_dir_of(name: &str, generation: u64) -> PathBuf {
    if generation == 0 {
        PathBuf::from(format!("/{name}.etcd"))
    } else {
        PathBuf::from(format!("/{name}-{generation}.etcd"))
    }
}

/// Connects a KV client to `url`, retrying while the member starts (bounded).
pub async fn connect_kv(url: &str) -> KvClient<tonic::transport::Channel> {
    KvClient::new(connect_channel(url).await)
}

/// Connects a gRPC channel to `url`, retrying while the member starts (bounded).
pub async fn connect_channel(url: &str) -> tonic::transport::Channel {
    for _ in 0..100 {
        if let Ok(endpoint) = tonic::transport::Endpoint::from_shared(url.to_string()) {
            if let Ok(channel) = endpoint.connect().await {
                return channel;
            }
        }
        madsim::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("could not connect to {url} within 10 s of simulated time");
}

/// Connects a Lease client to `url`, retrying while the member starts (bounded).
pub async fn connect_lease(
    url: &str,
) -> detcd::pb::etcdserverpb::lease_client::LeaseClient<tonic::transport::Channel> {
    detcd::pb::etcdserverpb::lease_client::LeaseClient::new(connect_channel(url).await)
}

/// Connects a Watch client to `url`, retrying while the member starts (bounded).
pub async fn connect_watch(url: &str) -> WatchClient<tonic::transport::Channel> {
    WatchClient::new(connect_channel(url).await)
}

/// The name of the `i`th member (0-based) of a simulated cluster.
pub fn member_name(i: usize) -> String {
    format!("node{}", i + 1)
}

/// The peer URL of the `i`th member.
pub fn member_peer_url(i: usize) -> String {
    format!("http://{}:{PEER_PORT}", member_ip(i))
}

/// Starts an `n`-member cluster (all voters, bootstrapped from a static initial cluster
/// as `--initial-cluster` describes it), each member on its own node, IP and fresh disk.
/// A killed member's node can be restarted with `Handle::restart`: its disk and backend
/// survive, so it recovers from its WAL like a real restarted process.
pub fn start_cluster(handle: &Handle, n: usize) -> Vec<SimMember> {
    start_cluster_with(handle, n, MemberOptions::default())
}

/// [`start_cluster`] with non-default member settings.
pub fn start_cluster_with(handle: &Handle, n: usize, options: MemberOptions) -> Vec<SimMember> {
    let initial_cluster: Vec<(String, Vec<String>)> = (0..n)
        .map(|i| (member_name(i), vec![member_peer_url(i)]))
        .collect();
    (0..n)
        .map(|i| {
            start_member(
                handle,
                i,
                &member_name(i),
                initial_cluster.clone(),
                options,
                false,
            )
        })
        .collect()
}

/// Cuts (or, with `clog == false`, restores) the network between two groups of members in
/// both directions. Client traffic is not affected: only member-to-member links change.
pub fn partition(a: &[&SimMember], b: &[&SimMember], clog: bool) {
    let net = madsim::net::NetSim::current();
    for x in a {
        for y in b {
            let (xi, yi) = (x.node.id(), y.node.id());
            if clog {
                net.clog_link(xi, yi);
                net.clog_link(yi, xi);
            } else {
                net.unclog_link(xi, yi);
                net.unclog_link(yi, xi);
            }
        }
    }
}

/// Connects a Maintenance client to `url`, retrying while the member starts (bounded).
pub async fn connect_maintenance(
    url: &str,
) -> detcd::pb::etcdserverpb::maintenance_client::MaintenanceClient<tonic::transport::Channel> {
    detcd::pb::etcdserverpb::maintenance_client::MaintenanceClient::new(connect_channel(url).await)
}

/// Runs `f` on a fresh OS thread and returns its result.
///
/// Every simulation must start from the same process-level state to replay from its seed.
/// Some state outside madsim's control is per thread and changes as it is used: std's
/// `RandomState` keys (tokio's `select!` fairness is seeded from them) advance with every
/// hasher a thread creates. A fresh thread starts them anew, inside the simulation, where
/// madsim answers the thread's first request for randomness from the seed.
pub fn on_fresh_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    match std::thread::spawn(f).join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Runs `scenario` under `seed`, on a fresh OS thread (see [`on_fresh_thread`]), on a
/// client node at 10.0.0.100 beside the `n`-member cluster [`start_cluster_with`] starts
/// with `options`, handing it the members; returns what the scenario returns.
pub fn run_cluster_client<F, Fut, T>(seed: u64, n: usize, options: MemberOptions, scenario: F) -> T
where
    F: FnOnce(Vec<SimMember>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    on_fresh_thread(move || {
        let rt = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
        rt.block_on(async move {
            let handle = Handle::current();
            let members = start_cluster_with(&handle, n, options);
            client_node(&handle)
                .spawn(scenario(members))
                .await
                .expect("client task")
        })
    })
}

/// The node simulated clients run on.
pub fn client_node(handle: &Handle) -> NodeHandle {
    handle
        .create_node()
        .name("client")
        .ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 100)))
        .build()
}

/// Runs `scenario` under `seed` on a client node beside a fresh single-member cluster,
/// handing it the member's client URL, and returns what the scenario returns.
pub fn single_member_client<F, Fut, T>(seed: u64, scenario: F) -> T
where
    F: FnOnce(String) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let rt = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
    rt.block_on(async move {
        let handle = Handle::current();
        let member = start_single_member(&handle, "node1");
        client_node(&handle)
            .spawn(scenario(member.client_url()))
            .await
            .expect("client task")
    })
}
