//! The runtime seam: the one module that knows whether detcd runs on real tokio or inside
//! madsim's deterministic simulation. Everything else asks this module for time, tasks,
//! randomness and blocking work, so the same actor code runs unchanged in both worlds.
//!
//! `tokio` and `tonic` in Cargo.toml are madsim's drop-in crates: they re-export the real
//! crates in a normal build and switch to simulated versions under `--cfg madsim`. What
//! differs beyond that (blocking threads, OS randomness, signals) is decided here.

use std::future::Future;
use std::time::Duration;

#[cfg(not(madsim))]
use crate::gateway::h2_authority::AuthorityFixStream;

pub use tokio::time::Instant;

pub mod watch;

#[cfg(not(madsim))]
mod http_split;

/// What a client listener serves besides gRPC: etcd's JSON gateway, `/version`,
/// `/health` and `/metrics` (on real sockets; the simulated network carries gRPC only).
#[derive(Clone)]
pub struct HttpApi {
    /// The member's services, for the health check and metrics.
    pub handle: crate::gateway::Handle,
    /// The largest JSON request body read (`--max-request-bytes` plus gRPC's allowance).
    pub max_request_bytes: usize,
    /// `--cors`, `--host-whitelist` and `--enable-grpc-gateway`.
    pub access: crate::gateway::access::AccessPolicy,
    /// Whether the listener is served over TLS, which exempts it from the Host check.
    pub secure: bool,
}

/// True when this build runs inside madsim's simulator.
pub const SIMULATED: bool = cfg!(madsim);

/// Keeps the items or statements it wraps only in a real (tokio) build: code that needs
/// what only real sockets have, such as a hand-written gRPC service writing encoded
/// bytes, which madsim's message-passing gRPC cannot carry. The seam owns the switch so
/// that no other module names the simulator.
#[cfg(not(madsim))]
#[macro_export]
macro_rules! real_only {
    ($($code:tt)*) => { $($code)* };
}

/// See the real build's definition: in a simulated build the code is left out.
#[cfg(madsim)]
#[macro_export]
macro_rules! real_only {
    ($($code:tt)*) => {};
}

/// Keeps the items or statements it wraps only in a simulated (madsim) build: the
/// counterpart of [`real_only!`](crate::real_only).
#[cfg(madsim)]
#[macro_export]
macro_rules! simulated_only {
    ($($code:tt)*) => { $($code)* };
}

/// See the simulated build's definition: in a real build the code is left out.
#[cfg(not(madsim))]
#[macro_export]
macro_rules! simulated_only {
    ($($code:tt)*) => {};
}

/// Spawns an actor or helper task on the current runtime. The name is recorded for logs.
pub fn spawn<F>(name: &'static str, fut: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tracing::trace!(task = name, "spawn");
    tokio::spawn(fut)
}

/// Runs `fut` on a thread of its own, for a loop that does blocking work between its
/// awaits (the WAL writer's writes and fsyncs): the work runs where the loop is, instead
/// of being handed to the blocking pool and back for each batch, which cost two thread
/// wake-ups per write. The thread drives `fut` with a small single-threaded runtime of
/// its own and ends with it. Under madsim, where threads are forbidden and the simulated
/// disk is memory, `fut` is an ordinary task.
pub fn spawn_dedicated<F>(name: &'static str, fut: F) -> std::io::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    #[cfg(madsim)]
    {
        spawn(name, fut);
        Ok(())
    }
    #[cfg(not(madsim))]
    {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()?;
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || runtime.block_on(fut))?;
        Ok(())
    }
}

/// Sleeps for the given duration of this member's clock (real or simulated time; under
/// simulation a drifting member's clock runs faster or slower, see [`set_clock_rate`]).
pub async fn sleep(duration: Duration) {
    tokio::time::sleep(clock::to_real(duration)).await
}

/// The current monotonic instant on this member's clock.
pub fn now() -> Instant {
    clock::now()
}

/// A periodic timer on this member's clock. A tick that comes late (a busy loop) delays
/// the following ones rather than bursting to catch up, as tokio's
/// `MissedTickBehavior::Delay`. Dropping a pending `tick()` loses nothing, so it can sit
/// in a `select!`.
pub struct Ticker {
    period: Duration,
    next: Instant,
}

impl Ticker {
    /// A ticker whose first tick is immediate and then one every `period`.
    pub fn new(period: Duration) -> Ticker {
        Ticker {
            period,
            next: now(),
        }
    }

    /// Waits for the next tick.
    pub async fn tick(&mut self) {
        let wait = self.next.saturating_duration_since(now());
        if !wait.is_zero() {
            sleep(wait).await;
        }
        self.next = self.next.max(now()) + self.period;
    }
}

/// Makes the clock of the simulated node `node` run at `rate_ppm` parts per million of
/// real (simulated) time from now on: 1_050_000 is 5% fast. Only the simulator calls
/// this; timers, timeouts and [`now`] on that node follow its clock, as they would on a
/// machine whose oscillator drifts.
#[cfg(madsim)]
pub fn set_clock_rate(node: madsim::task::NodeId, rate_ppm: u64) {
    clock::set_rate(node, rate_ppm);
}

/// Per-node clocks. Outside simulation every clock is the real one.
mod clock {
    use super::Instant;
    use std::time::Duration;

    #[cfg(not(madsim))]
    pub fn now() -> Instant {
        Instant::now()
    }

    #[cfg(not(madsim))]
    pub fn to_real(local: Duration) -> Duration {
        local
    }

    /// One node's clock: from `anchor_real` on, it reads `anchor_local` plus the real time
    /// elapsed scaled by `rate_ppm`.
    #[cfg(madsim)]
    #[derive(Clone, Copy)]
    struct NodeClock {
        anchor_real: Instant,
        anchor_local: Instant,
        rate_ppm: u64,
    }

    #[cfg(madsim)]
    impl NodeClock {
        fn read(&self, real: Instant) -> Instant {
            let elapsed = real.saturating_duration_since(self.anchor_real);
            self.anchor_local + scale(elapsed, self.rate_ppm, 1_000_000)
        }
    }

    #[cfg(madsim)]
    fn scale(d: Duration, num: u64, den: u64) -> Duration {
        let nanos = d.as_nanos() * u128::from(num) / u128::from(den.max(1));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    // madsim runs a whole simulation on one thread, so per-thread state is per-simulation
    // state: concurrent simulations on other threads each have their own.
    #[cfg(madsim)]
    thread_local! {
        static CLOCKS: std::cell::RefCell<std::collections::BTreeMap<madsim::task::NodeId, NodeClock>> =
            const { std::cell::RefCell::new(std::collections::BTreeMap::new()) };
    }

    /// The clock of the node the current task runs on, if it drifts.
    #[cfg(madsim)]
    fn current() -> Option<NodeClock> {
        CLOCKS.with(|c| {
            let c = c.borrow();
            if c.is_empty() {
                return None;
            }
            c.get(&madsim::plugin::node()).copied()
        })
    }

    #[cfg(madsim)]
    pub fn now() -> Instant {
        let real = Instant::now();
        match current() {
            Some(c) => c.read(real),
            None => real,
        }
    }

    #[cfg(madsim)]
    pub fn to_real(local: Duration) -> Duration {
        match current() {
            Some(c) => scale(local, 1_000_000, c.rate_ppm),
            None => local,
        }
    }

    #[cfg(madsim)]
    pub fn set_rate(node: madsim::task::NodeId, rate_ppm: u64) {
        let real = Instant::now();
        CLOCKS.with(|c| {
            let mut c = c.borrow_mut();
            // Re-anchor where the clock reads now, so it never jumps or goes back.
            let anchor_local = c.get(&node).map_or(real, |old| old.read(real));
            c.insert(
                node,
                NodeClock {
                    anchor_real: real,
                    anchor_local,
                    rate_ppm: rate_ppm.max(1),
                },
            );
        });
    }
}

/// Milliseconds of wall-clock time since the Unix epoch (simulated under madsim).
pub fn unix_time_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A 64-bit random seed. Under madsim it comes from the simulation's seeded generator,
/// so a run is reproducible from its seed; otherwise from the operating system.
pub fn random_u64() -> u64 {
    #[cfg(madsim)]
    {
        use rand::RngCore;
        madsim::rand::thread_rng().next_u64()
    }
    #[cfg(not(madsim))]
    {
        rand::random::<u64>()
    }
}

/// Runs blocking work (an fsync, a large disk read). On tokio it moves to the blocking
/// pool so the async workers keep serving; under madsim, where threads are forbidden and
/// the disk is simulated in memory, it runs inline.
pub async fn blocking<T, F>(f: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    #[cfg(madsim)]
    {
        f()
    }
    #[cfg(not(madsim))]
    {
        match tokio::task::spawn_blocking(f).await {
            Ok(v) => v,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

/// Resolves when the process is asked to stop (SIGTERM or Ctrl-C). Under madsim the
/// simulator delivers a simulated Ctrl-C to a node (`Handle::send_ctrl_c`).
pub async fn shutdown_signal() {
    #[cfg(madsim)]
    {
        let _ = madsim::signal::ctrl_c().await;
    }
    #[cfg(not(madsim))]
    {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => {
                        let _ = ctrl_c.await;
                        return;
                    }
                };
            tokio::select! {
                // Branches are polled in order, not at random, so a simulation replays from its seed.
                biased;
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = ctrl_c.await;
        }
    }
}

/// A bound client or peer listener. Binding happens before the server reports ready, so a
/// port already in use fails the start with a clear error, as in etcd.
pub struct Listener {
    addr: std::net::SocketAddr,
    #[cfg(not(madsim))]
    inner: ListenerInner,
}

/// A TCP or a Unix-domain socket listener.
#[cfg(not(madsim))]
enum ListenerInner {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener, std::path::PathBuf),
}

impl Listener {
    /// The bound address (with the real port when port 0 was asked for); unspecified for
    /// a Unix-domain socket.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// The socket file of a Unix-domain socket listener.
    pub fn socket_path(&self) -> Option<std::path::PathBuf> {
        #[cfg(not(madsim))]
        if let ListenerInner::Unix(_, path) = &self.inner {
            return Some(path.clone());
        }
        None
    }
}

/// Binds a Unix-domain socket listener at `path` (etcd's `unix://` and `unixs://` listen
/// URLs), replacing a socket file a previous run left behind, as etcd does. The
/// simulator has no Unix-domain sockets.
pub async fn bind_unix(path: &std::path::Path) -> std::io::Result<Listener> {
    #[cfg(madsim)]
    {
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            format!("{}: no unix sockets under simulation", path.display()),
        ))
    }
    #[cfg(not(madsim))]
    {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let inner = tokio::net::UnixListener::bind(path)?;
        Ok(Listener {
            addr: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
            inner: ListenerInner::Unix(inner, path.to_path_buf()),
        })
    }
}

/// Binds a TCP listener on `addr`. Under madsim nothing is bound until the server starts:
/// the simulator's network has no ports to contend for.
pub async fn bind(addr: std::net::SocketAddr) -> std::io::Result<Listener> {
    #[cfg(madsim)]
    {
        Ok(Listener { addr })
    }
    #[cfg(not(madsim))]
    {
        let inner = tokio::net::TcpListener::bind(addr).await?;
        let addr = inner.local_addr()?;
        Ok(Listener {
            addr,
            inner: ListenerInner::Tcp(inner),
        })
    }
}

/// How long a client or peer may take to complete its TLS handshake before its
/// connection is closed, so that idle or stalled connections cannot pile up.
#[cfg(not(madsim))]
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepted connections waiting for tonic to take them.
#[cfg(not(madsim))]
const ACCEPT_QUEUE: usize = 64;

/// A gRPC server builder with the layers every detcd listener has: on real sockets, the
/// one that turns a connection's verified client certificate into request metadata for
/// the auth checks (see [`crate::gateway::CERT_CN_METADATA_KEY`]). madsim's tonic has no
/// layers, and its connections carry no certificates.
#[cfg(not(madsim))]
pub type GrpcServer = tonic::transport::Server<
    tower_layer::Stack<
        http_split::HttpSplitLayer,
        tower_layer::Stack<CertIdentityLayer, tower_layer::Identity>,
    >,
>;
/// A gRPC server builder (madsim: without layers).
#[cfg(madsim)]
pub type GrpcServer = tonic::transport::Server;

/// The router a [`GrpcServer`] builds, which [`serve_grpc`] serves.
#[cfg(not(madsim))]
pub type GrpcRouter = tonic::transport::server::Router<
    tower_layer::Stack<
        http_split::HttpSplitLayer,
        tower_layer::Stack<CertIdentityLayer, tower_layer::Identity>,
    >,
>;
/// The router a [`GrpcServer`] builds (madsim).
#[cfg(madsim)]
pub type GrpcRouter = tonic::transport::server::Router;

/// A new gRPC server builder for a peer listener, which serves gRPC only.
pub fn grpc_server() -> GrpcServer {
    #[cfg(not(madsim))]
    {
        tonic::transport::Server::builder()
            .layer(CertIdentityLayer)
            .layer(http_split::HttpSplitLayer::new(None))
    }
    #[cfg(madsim)]
    {
        tonic::transport::Server::builder()
    }
}

/// The HTTP/2 settings of a client listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientH2 {
    /// `--max-concurrent-streams`: streams per connection.
    pub max_concurrent_streams: u32,
    /// `--grpc-keepalive-interval`: how long a connection may be idle before the server
    /// pings it; `None` never pings.
    pub keepalive_interval: Option<Duration>,
    /// `--grpc-keepalive-timeout`: how long a ping may go unanswered before the
    /// connection is closed.
    pub keepalive_timeout: Option<Duration>,
}

/// A new server builder for a client listener: gRPC, and on real sockets also HTTP/1.1
/// and h2c requests without a gRPC content type, which `api` answers (etcd's JSON
/// gateway and its plain endpoints), with the HTTP/2 settings `h2`.
pub fn client_server(api: HttpApi, h2: ClientH2) -> GrpcServer {
    #[cfg(not(madsim))]
    {
        tonic::transport::Server::builder()
            .accept_http1(true)
            .max_concurrent_streams(h2.max_concurrent_streams)
            .http2_keepalive_interval(h2.keepalive_interval)
            .http2_keepalive_timeout(h2.keepalive_timeout)
            .layer(CertIdentityLayer)
            .layer(http_split::HttpSplitLayer::new(Some(api)))
    }
    #[cfg(madsim)]
    {
        let _ = (api, h2);
        tonic::transport::Server::builder()
    }
}

/// Serves `/metrics` and `/health` on a `--listen-metrics-urls` listener until
/// `shutdown` resolves. The simulated network has no HTTP: there it only waits.
pub async fn serve_metrics(
    listener: Listener,
    api: HttpApi,
    shutdown: impl Future<Output = ()> + Send,
) {
    #[cfg(not(madsim))]
    {
        // Metrics listeners are TCP only: main refuses unix metrics URLs.
        let ListenerInner::Tcp(tcp) = listener.inner else {
            return shutdown.await;
        };
        http_split::serve_metrics(tcp, api, shutdown).await
    }
    #[cfg(madsim)]
    {
        let _ = (listener, api);
        shutdown.await
    }
}

/// Serves a gRPC router on a bound listener until `shutdown` resolves; over TLS when
/// `tls` is given (an https listen URL). Under madsim the simulated network has no TLS,
/// so `tls` is ignored there and the same server code runs in the clear.
pub async fn serve_grpc(
    router: GrpcRouter,
    listener: Listener,
    tls: Option<std::sync::Arc<crate::tls::ServerTls>>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), String> {
    #[cfg(madsim)]
    {
        let _ = tls;
        router
            .serve_with_shutdown(listener.addr, shutdown)
            .await
            .map_err(|e| e.to_string())
    }
    #[cfg(not(madsim))]
    {
        // Handshakes run in their own tasks, so one slow client cannot hold up the
        // others; finished connections queue for tonic. The accept loop ends when tonic
        // drops the queue (the server stopped).
        let (tx, rx) = tokio::sync::mpsc::channel(ACCEPT_QUEUE);
        let acceptor = tls.map(|t| TlsAccept {
            acceptor: tokio_rustls::TlsAcceptor::from(t.config.clone()),
            cert_cn_auth: t.cert_cn_auth,
            check_client_san: t.check_client_san,
        });
        spawn("accept", accept_loop(listener.inner, acceptor, tx));
        let incoming = tokio_stream::wrappers::ReceiverStream::new(rx);
        router
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
            .map_err(|e| e.to_string())
    }
}

/// Accepts TCP connections, completes their TLS handshakes when the listener has TLS,
/// and queues them for tonic. Every connection goes through the :authority shim so that
/// etcdctl 3.4's `endpoint` commands, which send `:authority: http://host:port`, are not
/// rejected by h2 (see gateway::h2_authority). TCP_NODELAY as in Go (and as tonic sets it
/// only on connections it accepts itself): without it a small response written right
/// after another (a watch event after the write's response) waits for the client's
/// delayed ACK, some 40 ms.
#[cfg(not(madsim))]
async fn accept_loop(
    listener: ListenerInner,
    acceptor: Option<TlsAccept>,
    tx: tokio::sync::mpsc::Sender<std::io::Result<AuthorityFixStream<ServerConn>>>,
) {
    loop {
        let accepted = tokio::select! {
            // Branches are polled in order, not at random, so a simulation replays from its seed.
            biased;
            _ = tx.closed() => return,
            a = accept_one(&listener) => a,
        };
        let (tcp, remote, info) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: wait a little, as Go's server
                // does, rather than spin.
                tracing::warn!(error = %e, "failed to accept a connection");
                sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        match &acceptor {
            None => {
                let conn = ServerConn {
                    info: ConnInfo {
                        tcp: info,
                        cert_cn: None,
                    },
                    io: ServerIo::Plain(tcp),
                };
                if tx.send(Ok(AuthorityFixStream::new(conn))).await.is_err() {
                    return;
                }
            }
            Some(accept) => {
                let TlsAccept {
                    acceptor,
                    cert_cn_auth,
                    check_client_san,
                } = accept.clone();
                let tx = tx.clone();
                spawn("tls-handshake", async move {
                    let handshake =
                        tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                    let stream = match handshake {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            // etcd logs refused handshakes the same way, so operators can
                            // see why a client or peer cannot connect.
                            tracing::warn!(remote_addr = %remote, error = %e, "rejected connection");
                            return;
                        }
                        Err(_) => {
                            tracing::warn!(remote_addr = %remote, "rejected connection: the TLS handshake timed out");
                            return;
                        }
                    };
                    // A Unix-domain socket has no address to check a certificate against.
                    if let (true, Some(remote_ip)) =
                        (check_client_san, info.remote_addr.map(|a| a.ip()))
                    {
                        let leaf = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|certs| certs.first());
                        if let Some(leaf) = leaf {
                            if let Err(e) = check_san(leaf, remote_ip.to_canonical()).await {
                                tracing::warn!(remote_addr = %remote, error = %e, "rejected connection");
                                return;
                            }
                        }
                    }
                    let cert_cn = if cert_cn_auth {
                        stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|certs| certs.first())
                            .and_then(|c| crate::tls::common_name(c))
                    } else {
                        None
                    };
                    let conn = ServerConn {
                        info: ConnInfo { tcp: info, cert_cn },
                        io: ServerIo::Tls(Box::new(stream)),
                    };
                    let _ = tx.send(Ok(AuthorityFixStream::new(conn))).await;
                });
            }
        }
    }
}

/// Accepts one connection: its stream, the remote address for logs (the socket path for
/// a Unix-domain socket) and what tonic records about it.
#[cfg(not(madsim))]
async fn accept_one(
    listener: &ListenerInner,
) -> std::io::Result<(PlainIo, String, tonic::transport::server::TcpConnectInfo)> {
    match listener {
        ListenerInner::Tcp(l) => {
            let (tcp, remote) = l.accept().await?;
            let _ = tcp.set_nodelay(true);
            let info = tonic::transport::server::Connected::connect_info(&tcp);
            Ok((PlainIo::Tcp(tcp), remote.to_string(), info))
        }
        ListenerInner::Unix(l, path) => {
            let (unix, _) = l.accept().await?;
            let info = tonic::transport::server::TcpConnectInfo {
                local_addr: None,
                remote_addr: None,
            };
            Ok((PlainIo::Unix(unix), path.display().to_string(), info))
        }
    }
}

/// How a TLS listener accepts connections.
#[cfg(not(madsim))]
#[derive(Clone)]
struct TlsAccept {
    acceptor: tokio_rustls::TlsAcceptor,
    cert_cn_auth: bool,
    check_client_san: bool,
}

/// etcd's `checkSAN` for peer connections: a client certificate that names addresses must
/// name the one the client connects from, directly or through one of its DNS names.
#[cfg(not(madsim))]
async fn check_san(cert: &[u8], remote: std::net::IpAddr) -> Result<(), String> {
    let san = crate::tls::ClientSan::of(cert);
    if let Some(decided) = san.check_ips(remote) {
        return decided;
    }
    let mut resolved = Vec::new();
    for name in &san.dns_names {
        if let Ok(addrs) = tokio::net::lookup_host((name.as_str(), 0)).await {
            resolved.extend(addrs.map(|a| a.ip()));
        }
    }
    san.check_resolved(remote, &resolved)
}

/// What tonic records about an accepted connection (in each request's extensions): its
/// addresses and, on a TLS listener with client-certificate authentication, the verified
/// certificate's common name.
#[cfg(not(madsim))]
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The TCP connection's addresses.
    pub tcp: tonic::transport::server::TcpConnectInfo,
    /// The client certificate's common name, when it authenticates the user.
    pub cert_cn: Option<String>,
}

/// An accepted connection, in the clear or over TLS.
#[cfg(not(madsim))]
pub struct ServerConn {
    info: ConnInfo,
    io: ServerIo,
}

#[cfg(not(madsim))]
enum ServerIo {
    Plain(PlainIo),
    Tls(Box<tokio_rustls::server::TlsStream<PlainIo>>),
}

/// An accepted TCP or Unix-domain socket connection, before any TLS.
#[cfg(not(madsim))]
enum PlainIo {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

#[cfg(not(madsim))]
impl tokio::io::AsyncRead for PlainIo {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            PlainIo::Tcp(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            PlainIo::Unix(s) => std::pin::Pin::new(s).poll_read(cx, buf),
        }
    }
}

#[cfg(not(madsim))]
impl tokio::io::AsyncWrite for PlainIo {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            PlainIo::Tcp(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            PlainIo::Unix(s) => std::pin::Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            PlainIo::Tcp(s) => std::pin::Pin::new(s).poll_write_vectored(cx, bufs),
            PlainIo::Unix(s) => std::pin::Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            PlainIo::Tcp(s) => s.is_write_vectored(),
            PlainIo::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            PlainIo::Tcp(s) => std::pin::Pin::new(s).poll_flush(cx),
            PlainIo::Unix(s) => std::pin::Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            PlainIo::Tcp(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            PlainIo::Unix(s) => std::pin::Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(not(madsim))]
impl tonic::transport::server::Connected for ServerConn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

#[cfg(not(madsim))]
impl tokio::io::AsyncRead for ServerConn {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            ServerIo::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            ServerIo::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

#[cfg(not(madsim))]
impl tokio::io::AsyncWrite for ServerConn {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match &mut self.get_mut().io {
            ServerIo::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            ServerIo::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match &mut self.get_mut().io {
            ServerIo::Plain(s) => std::pin::Pin::new(s).poll_write_vectored(cx, bufs),
            ServerIo::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            ServerIo::Plain(s) => s.is_write_vectored(),
            ServerIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            ServerIo::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            ServerIo::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match &mut self.get_mut().io {
            ServerIo::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            ServerIo::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// tonic asks each accepted connection for its addresses; the shim reports those of the
/// connection it wraps.
#[cfg(not(madsim))]
impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AuthorityFixStream<S>
{
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.get_ref().connect_info()
    }
}

/// The layer that hands a connection's verified client-certificate common name to the
/// auth checks as request metadata. It first removes any value a client sent under that
/// key itself, so the metadata can only come from a verified certificate.
#[cfg(not(madsim))]
#[derive(Debug, Clone, Copy, Default)]
pub struct CertIdentityLayer;

#[cfg(not(madsim))]
impl<S> tower_layer::Layer<S> for CertIdentityLayer {
    type Service = CertIdentity<S>;

    fn layer(&self, inner: S) -> CertIdentity<S> {
        CertIdentity { inner }
    }
}

/// The service [`CertIdentityLayer`] wraps around the router.
#[cfg(not(madsim))]
#[derive(Debug, Clone)]
pub struct CertIdentity<S> {
    inner: S,
}

#[cfg(not(madsim))]
impl<S, B> tower_service::Service<http::Request<B>> for CertIdentity<S>
where
    S: tower_service::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> S::Future {
        let key = crate::gateway::CERT_CN_METADATA_KEY;
        req.headers_mut().remove(key);
        let cn = req
            .extensions()
            .get::<ConnInfo>()
            .and_then(|c| c.cert_cn.as_deref())
            .and_then(|cn| http::HeaderValue::from_str(cn).ok());
        if let Some(cn) = cn {
            req.headers_mut().insert(key, cn);
        }
        self.inner.call(req)
    }
}

/// Connects a gRPC channel to `endpoint`, over TLS with `tls` when given (an https peer
/// URL). Under madsim `tls` is ignored: the simulated network carries no TLS.
pub async fn connect_channel(
    endpoint: tonic::transport::Endpoint,
    tls: Option<std::sync::Arc<crate::tls::ClientTls>>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    #[cfg(madsim)]
    {
        let _ = tls;
        endpoint.connect().await
    }
    #[cfg(not(madsim))]
    {
        match tls {
            None => endpoint.connect().await,
            Some(tls) => endpoint.connect_with_connector(TlsConnector { tls }).await,
        }
    }
}

/// Like [`connect_channel`], but connects on first use.
pub fn connect_channel_lazy(
    endpoint: tonic::transport::Endpoint,
    tls: Option<std::sync::Arc<crate::tls::ClientTls>>,
) -> tonic::transport::Channel {
    #[cfg(madsim)]
    {
        let _ = tls;
        endpoint.connect_lazy()
    }
    #[cfg(not(madsim))]
    {
        match tls {
            None => endpoint.connect_lazy(),
            Some(tls) => endpoint.connect_with_connector_lazy(TlsConnector { tls }),
        }
    }
}

/// Dials a peer over TCP and completes a TLS handshake, verifying the peer's certificate
/// against the URL's host.
#[cfg(not(madsim))]
#[derive(Clone)]
struct TlsConnector {
    tls: std::sync::Arc<crate::tls::ClientTls>,
}

#[cfg(not(madsim))]
impl tower_service::Service<http::Uri> for TlsConnector {
    type Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn Future<Output = Result<Self::Response, std::io::Error>> + Send + 'static>,
    >;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), std::io::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let config = self.tls.config.clone();
        Box::pin(async move {
            let invalid = |what: &str| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, what.to_string())
            };
            let host = uri
                .host()
                .ok_or_else(|| invalid("the peer URL has no host"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            let _ = tcp.set_nodelay(true);
            let name = rustls::pki_types::ServerName::try_from(host)
                .map_err(|_| invalid("the peer URL's host is not a valid TLS server name"))?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok(hyper_util::rt::TokioIo::new(stream))
        })
    }
}

/// Runs the process's top-level future to completion: on a multi-threaded tokio runtime in
/// production, or on a fresh madsim runtime (seed 0) when the binary itself is built for
/// simulation.
pub fn block_on_main<F: Future>(fut: F) -> std::io::Result<F::Output> {
    #[cfg(madsim)]
    {
        Ok(madsim::runtime::Runtime::new().block_on(fut))
    }
    #[cfg(not(madsim))]
    {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        Ok(rt.block_on(fut))
    }
}

/// Awaits `fut` until `deadline`; `Err(Elapsed)` if the deadline passes first. (madsim's
/// tokio has `timeout` but not `timeout_at`, so both worlds go through `timeout`.)
pub async fn timeout_at<F: Future>(
    deadline: Instant,
    fut: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    tokio::time::timeout(
        clock::to_real(deadline.saturating_duration_since(now())),
        fut,
    )
    .await
}
