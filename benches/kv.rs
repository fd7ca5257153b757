//! Throughput, latency and memory of the KV and Watch APIs, in the manner of etcd's own
//! `benchmark` tool, for detcd and (when `etcd` is on the PATH) the real etcd side by side
//! on the same machine with the same flags.
//!
//! ```sh
//! cargo bench --bench kv                       # detcd, and etcd if installed
//! cargo bench --bench kv -- --quick            # a tenth of the requests
//! cargo bench --bench kv -- --endpoint URL     # a server that is already running
//! ```
//!
//! It prints figures and asserts nothing about speed: targets are read from the table,
//! never enforced by a test.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions, WatchOptions};

/// The value written by every put (etcd's benchmark defaults to 8 bytes; 256 is closer to
/// what Kubernetes stores in small objects).
const VALUE_BYTES: usize = 256;
/// Concurrent requests in the concurrent workloads, spread over `CONNECTIONS` clients.
const CLIENTS: usize = 100;
const CONNECTIONS: usize = 10;

/// Latency figures of one workload.
struct Figures {
    name: &'static str,
    requests: usize,
    elapsed: Duration,
    latencies_us: Vec<u64>,
}

impl Figures {
    fn new(name: &'static str, elapsed: Duration, mut latencies_us: Vec<u64>) -> Figures {
        latencies_us.sort_unstable();
        Figures {
            name,
            requests: latencies_us.len(),
            elapsed,
            latencies_us,
        }
    }

    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[i] as f64 / 1000.0
    }

    fn ops_per_s(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// A server started for the benchmark, stopped on drop.
struct Started {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Starts `binary` as a single member in a temporary directory, as etcd's defaults would
/// run it, and waits until it answers.
fn start(binary: &Path) -> Started {
    let dir = tempfile::Builder::new()
        .prefix("detcd-bench-")
        .tempdir()
        .expect("temp dir");
    let client = format!("http://127.0.0.1:{}", free_port());
    let peer = format!("http://127.0.0.1:{}", free_port());
    let log = std::fs::File::create(dir.path().join("server.log")).expect("log");
    let child = Command::new(binary)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen-client-urls", &client])
        .args(["--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer])
        .args(["--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &format!("default={peer}")])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
    Started {
        child,
        url: client,
        _dir: dir,
    }
}

async fn connect(url: &str) -> Client {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut c) = Client::connect([url], None).await {
            if c.put("bench/ready", "1", None).await.is_ok() {
                return c;
            }
        }
        assert!(Instant::now() < deadline, "{url} does not answer");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `total` requests from `CLIENTS` tasks over `CONNECTIONS` clients; `op` makes one
/// request, numbered from 0.
async fn concurrent<F, Fut>(clients: &[Client], total: usize, op: F) -> (Duration, Vec<u64>)
where
    F: Fn(Client, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..CLIENTS {
        let client = clients[t % clients.len()].clone();
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = t;
            while i < total {
                let began = Instant::now();
                op(client.clone(), i).await;
                lat.push(began.elapsed().as_micros() as u64);
                i += CLIENTS;
            }
            lat
        }));
    }
    let mut all = Vec::with_capacity(total);
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    (start.elapsed(), all)
}

/// Runs every workload against `url` and returns its figures.
async fn run_all(url: &str, scale: usize) -> Vec<Figures> {
    let mut client = connect(url).await;
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        clients.push(connect(url).await);
    }
    let value = vec![b'v'; VALUE_BYTES];
    let mut out = Vec::new();

    // One client, one request at a time: the latency of a durable write.
    let n = 1_000 * scale / 10;
    let mut lat = Vec::new();
    let start = Instant::now();
    for i in 0..n {
        let began = Instant::now();
        client
            .put(format!("seq/{i:08}"), value.clone(), None)
            .await
            .expect("put");
        lat.push(began.elapsed().as_micros() as u64);
    }
    out.push(Figures::new("put, 1 client", start.elapsed(), lat));

    let n = 20_000 * scale / 10;
    let v = value.clone();
    let (elapsed, lat) = concurrent(&clients, n, move |mut c, i| {
        let v = v.clone();
        async move {
            c.put(format!("key/{:08}", i % 10_000), v, None)
                .await
                .expect("put");
        }
    })
    .await;
    out.push(Figures::new("put, 100 clients", elapsed, lat));

    let (elapsed, lat) = concurrent(&clients, n, |mut c, i| async move {
        c.get(format!("key/{:08}", i % 10_000), None)
            .await
            .expect("get");
    })
    .await;
    out.push(Figures::new(
        "get (linearizable), 100 clients",
        elapsed,
        lat,
    ));

    let (elapsed, lat) = concurrent(&clients, n, |mut c, i| async move {
        c.get(
            format!("key/{:08}", i % 10_000),
            Some(GetOptions::new().with_serializable()),
        )
        .await
        .expect("get");
    })
    .await;
    out.push(Figures::new(
        "get (serializable), 100 clients",
        elapsed,
        lat,
    ));

    let (elapsed, lat) = concurrent(&clients, n / 10, |mut c, i| async move {
        c.get(
            format!("key/{:08}", (i * 100) % 9_900),
            Some(
                GetOptions::new()
                    .with_range(format!("key/{:08}", (i * 100) % 9_900 + 100))
                    .with_serializable(),
            ),
        )
        .await
        .expect("range");
    })
    .await;
    out.push(Figures::new("range of 100 keys, 100 clients", elapsed, lat));

    // Watch: the time from a put's answer to its event reaching a watcher.
    let mut stream = client
        .watch("watched", Some(WatchOptions::new()))
        .await
        .expect("watch");
    let n = 1_000 * scale / 10;
    let mut lat = Vec::new();
    let start = Instant::now();
    for i in 0..n {
        let began = Instant::now();
        client
            .put("watched", format!("{i}"), None)
            .await
            .expect("put");
        loop {
            let resp = stream.message().await.expect("watch").expect("stream");
            if !resp.events().is_empty() {
                break;
            }
        }
        lat.push(began.elapsed().as_micros() as u64);
    }
    drop(stream);
    out.push(Figures::new(
        "put then its watch event",
        start.elapsed(),
        lat,
    ));
    out
}

/// The peak resident memory of a process, from Linux's `/proc`.
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn print(name: &str, figures: &[Figures], rss_mib: Option<f64>) {
    println!("\n{name}");
    println!(
        "{:<34} {:>9} {:>11} {:>9} {:>9} {:>9}",
        "workload", "requests", "ops/s", "p50 ms", "p99 ms", "max ms"
    );
    for f in figures {
        println!(
            "{:<34} {:>9} {:>11.0} {:>9.2} {:>9.2} {:>9.2}",
            f.name,
            f.requests,
            f.ops_per_s(),
            f.percentile_ms(0.5),
            f.percentile_ms(0.99),
            f.percentile_ms(1.0)
        );
    }
    if let Some(rss) = rss_mib {
        println!("peak resident memory: {rss:.1} MiB");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes `--bench`; anything else unknown is ignored the same way.
    let scale = if args.iter().any(|a| a == "--quick") {
        1
    } else {
        10
    };
    let endpoint = args
        .iter()
        .position(|a| a == "--endpoint")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    println!(
        "value {VALUE_BYTES} B, {CLIENTS} concurrent clients over {CONNECTIONS} connections, scale {scale}/10"
    );
    if let Some(url) = endpoint {
        let figures = rt.block_on(run_all(&url, scale));
        print(&url, &figures, None);
        return;
    }
    let mut servers = vec![(
        "detcd",
        Path::new(env!("CARGO_BIN_EXE_detcd")).to_path_buf(),
    )];
    if let Some(etcd) = which("etcd") {
        servers.push(("etcd", etcd));
    } else {
        println!("(etcd is not on the PATH: detcd only)");
    }
    for (name, binary) in servers {
        let server = start(&binary);
        let figures = rt.block_on(run_all(&server.url, scale));
        let rss = peak_rss_mib(server.child.id());
        print(name, &figures, rss);
    }
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}
