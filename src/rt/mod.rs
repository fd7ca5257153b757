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

/// True when this build runs inside madsim's simulator.
pub const SIMULATED: bool = cfg!(madsim);

/// Spawns an actor or helper task on the current runtime. The name is recorded for logs.
pub fn spawn<F>(name: &'static str, fut: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tracing::trace!(task = name, "spawn");
    tokio::spawn(fut)
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
    inner: tokio::net::TcpListener,
}

impl Listener {
    /// The bound address (with the real port when port 0 was asked for).
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.addr
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
        Ok(Listener { addr, inner })
    }
}

/// Serves a gRPC router on a bound listener until `shutdown` resolves.
pub async fn serve_grpc(
    router: tonic::transport::server::Router,
    listener: Listener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), String> {
    #[cfg(madsim)]
    {
        router
            .serve_with_shutdown(listener.addr, shutdown)
            .await
            .map_err(|e| e.to_string())
    }
    #[cfg(not(madsim))]
    {
        use tokio_stream::StreamExt;
        // Every client connection goes through the :authority shim so that etcdctl 3.4's
        // `endpoint` commands, which send `:authority: http://host:port`, are not
        // rejected by h2 (see gateway::h2_authority). TCP_NODELAY as in Go (and as tonic
        // sets it only on connections it accepts itself): without it a small response
        // written right after another (a watch event after the write's response) waits
        // for the client's delayed ACK, some 40 ms.
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener.inner).map(|conn| {
            conn.map(|tcp| {
                let _ = tcp.set_nodelay(true);
                AuthorityFixStream::new(tcp)
            })
        });
        router
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
            .map_err(|e| e.to_string())
    }
}

/// tonic asks each accepted connection for its addresses; the shim reports those of the
/// TCP connection it wraps.
#[cfg(not(madsim))]
impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AuthorityFixStream<S>
{
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.get_ref().connect_info()
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
