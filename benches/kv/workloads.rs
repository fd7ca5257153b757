//! The workloads, in the manner of etcd's own `benchmark` tool: each runs against a
//! cluster through the Rust `etcd-client` crate and returns its figures, with the server
//! CPU it cost.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions, Txn, TxnOp, WatchOptions};

use crate::cluster::Cluster;
use crate::report::Figures;

/// The value written by every put (etcd's benchmark defaults to 8 bytes; 256 is closer to
/// what Kubernetes stores in small objects).
pub const VALUE_BYTES: usize = 256;
/// Concurrent requests in the concurrent workloads, spread over `CONNECTIONS` clients.
pub const CLIENTS: usize = 100;
/// Client connections (etcd's benchmark `--conns`).
pub const CONNECTIONS: usize = 10;
/// Keys the concurrent writes and reads spread over.
const KEY_SPACE: usize = 10_000;
/// Watch streams and watchers per stream of the fan-out workload (etcd's benchmark
/// `watch --streams 10 --watch-per-stream 100`).
const WATCH_STREAMS: usize = 10;
const WATCHERS_PER_STREAM: usize = 100;
/// The longest the fan-out workload waits for its events after the last put.
const FANOUT_DRAIN_TIMEOUT: Duration = Duration::from_secs(120);

/// What the workloads run against: the cluster (for its CPU counters) and clients.
pub struct Ctx<'a> {
    /// The cluster under test.
    pub cluster: &'a Cluster,
    /// One client for sequential work.
    pub client: Client,
    /// `CONNECTIONS` clients for concurrent work.
    pub clients: Vec<Client>,
    /// Requests per concurrent workload (scaled by `--quick`).
    pub requests: usize,
}

impl<'a> Ctx<'a> {
    /// Connects the clients.
    pub async fn new(cluster: &'a Cluster, requests: usize) -> Ctx<'a> {
        let client = cluster.client().await;
        let mut clients = Vec::new();
        for _ in 0..CONNECTIONS {
            clients.push(cluster.client().await);
        }
        Ctx {
            cluster,
            client,
            clients,
            requests,
        }
    }
}

fn value() -> Vec<u8> {
    vec![b'v'; VALUE_BYTES]
}

fn key(i: usize) -> String {
    format!("key/{:08}", i % KEY_SPACE)
}

/// Runs `total` requests from `CLIENTS` tasks over the context's clients; `op` makes one
/// request, numbered from 0. Returns the wall time and each request's latency.
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

/// Runs `body`, returning its result and the server CPU seconds it cost.
async fn with_cpu<T>(cluster: &Cluster, body: impl std::future::Future<Output = T>) -> (T, f64) {
    let before = cluster.cpu_s();
    let out = body.await;
    (out, cluster.cpu_s() - before)
}

/// The workloads' names, in the order [`run_all`] runs them.
pub const NAMES: [&str; 8] = [
    "put, 1 client",
    "put, 100 clients",
    "txn of 4 puts, 100 clients",
    "get (linearizable), 100 clients",
    "get (serializable), 100 clients",
    "range of 100 keys, 100 clients",
    "watch fan-out, 1000 watchers (events)",
    "lease keep-alive, 100 clients",
];

/// Every workload whose name contains `only` (all when it is empty), in order.
pub async fn run_all(ctx: &mut Ctx<'_>, only: &str) -> Vec<Figures> {
    let mut figures = Vec::new();
    for (i, name) in NAMES.iter().enumerate() {
        if !name.contains(only) {
            continue;
        }
        figures.push(match i {
            0 => put_one_client(ctx).await,
            1 => put_concurrent(ctx).await,
            2 => txn_four_puts(ctx).await,
            3 => get(ctx, false).await,
            4 => get(ctx, true).await,
            5 => range_100(ctx).await,
            6 => watch_fan_out(ctx).await,
            _ => lease_keep_alive(ctx).await,
        });
    }
    figures
}

/// One client, one put at a time: the latency of a durable write.
pub async fn put_one_client(ctx: &mut Ctx<'_>) -> Figures {
    let n = (ctx.requests / 20).max(50);
    let client = &mut ctx.client;
    let ((elapsed, lat), cpu) = with_cpu(ctx.cluster, async {
        let mut lat = Vec::new();
        let start = Instant::now();
        for i in 0..n {
            let began = Instant::now();
            client
                .put(format!("seq/{i:08}"), value(), None)
                .await
                .expect("put");
            lat.push(began.elapsed().as_micros() as u64);
        }
        (start.elapsed(), lat)
    })
    .await;
    Figures::new("put, 1 client", elapsed, lat, cpu)
}

/// 100 clients putting to a space of 10,000 keys.
pub async fn put_concurrent(ctx: &mut Ctx<'_>) -> Figures {
    let ((elapsed, lat), cpu) = with_cpu(
        ctx.cluster,
        concurrent(&ctx.clients, ctx.requests, |mut c, i| async move {
            c.put(key(i), value(), None).await.expect("put");
        }),
    )
    .await;
    Figures::new("put, 100 clients", elapsed, lat, cpu)
}

/// 100 clients each sending transactions of 4 puts (a Kubernetes-style write).
pub async fn txn_four_puts(ctx: &mut Ctx<'_>) -> Figures {
    let n = ctx.requests / 4;
    let ((elapsed, lat), cpu) = with_cpu(
        ctx.cluster,
        concurrent(&ctx.clients, n, |mut c, i| async move {
            let ops: Vec<TxnOp> = (0..4)
                .map(|j| TxnOp::put(key(4 * i + j), value(), None))
                .collect();
            c.txn(Txn::new().and_then(ops)).await.expect("txn");
        }),
    )
    .await;
    Figures::new("txn of 4 puts, 100 clients", elapsed, lat, cpu)
}

/// 100 clients reading single keys, linearizable or serializable.
pub async fn get(ctx: &mut Ctx<'_>, serializable: bool) -> Figures {
    let ((elapsed, lat), cpu) = with_cpu(
        ctx.cluster,
        concurrent(&ctx.clients, ctx.requests, move |mut c, i| async move {
            let opts = serializable.then(|| GetOptions::new().with_serializable());
            c.get(key(i), opts).await.expect("get");
        }),
    )
    .await;
    let name = if serializable {
        "get (serializable), 100 clients"
    } else {
        "get (linearizable), 100 clients"
    };
    Figures::new(name, elapsed, lat, cpu)
}

/// 100 clients reading ranges of 100 keys (linearizable, etcd's default).
pub async fn range_100(ctx: &mut Ctx<'_>) -> Figures {
    let ((elapsed, lat), cpu) = with_cpu(
        ctx.cluster,
        concurrent(&ctx.clients, ctx.requests / 10, |mut c, i| async move {
            let start = (i * 100) % (KEY_SPACE - 100);
            let opts = GetOptions::new().with_range(key(start + 100));
            c.get(key(start), Some(opts)).await.expect("range");
        }),
    )
    .await;
    Figures::new("range of 100 keys, 100 clients", elapsed, lat, cpu)
}

/// 1,000 watchers of one key (10 streams of 100) while 100 clients put to it as fast as
/// they go. The figure is events delivered per second, unthrottled; each event's latency
/// runs from its put being sent to the watcher receiving it.
pub async fn watch_fan_out(ctx: &mut Ctx<'_>) -> Figures {
    let puts = (ctx.requests / 20).max(100);
    let epoch = Instant::now();
    // When each put (by number, which is its value) was sent, in µs after `epoch`.
    let sent_us: Arc<Vec<AtomicU64>> = Arc::new((0..puts).map(|_| AtomicU64::new(0)).collect());
    let per_stream = WATCHERS_PER_STREAM * puts;
    let mut streams = Vec::new();
    for s in 0..WATCH_STREAMS {
        let mut client = ctx.clients[s % ctx.clients.len()].clone();
        let mut stream = client
            .watch("fanout", Some(WatchOptions::new()))
            .await
            .expect("watch");
        for _ in 1..WATCHERS_PER_STREAM {
            stream
                .watch("fanout", Some(WatchOptions::new()))
                .await
                .expect("watch");
        }
        streams.push(stream);
    }
    // Wait until every watcher is created before writing.
    for stream in &mut streams {
        let mut created = 0;
        while created < WATCHERS_PER_STREAM {
            let resp = stream.message().await.expect("watch").expect("stream");
            created += usize::from(resp.created());
        }
    }
    let mut receivers = Vec::new();
    for mut stream in streams {
        let sent_us = sent_us.clone();
        receivers.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_stream);
            while lat.len() < per_stream {
                let Ok(Ok(Some(resp))) =
                    tokio::time::timeout(FANOUT_DRAIN_TIMEOUT, stream.message()).await
                else {
                    break;
                };
                let now_us = epoch.elapsed().as_micros() as u64;
                for e in resp.events() {
                    let n: usize = e
                        .kv()
                        .and_then(|kv| kv.value_str().ok())
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    let sent = sent_us.get(n).map_or(now_us, |s| s.load(Ordering::Relaxed));
                    lat.push(now_us.saturating_sub(sent));
                }
            }
            (lat, epoch.elapsed())
        }));
    }
    let cpu_before = ctx.cluster.cpu_s();
    let start = Instant::now();
    let sent = sent_us.clone();
    let _ = concurrent(&ctx.clients, puts, move |mut c, i| {
        let sent = sent.clone();
        async move {
            sent[i].store(epoch.elapsed().as_micros() as u64, Ordering::Relaxed);
            c.put("fanout", i.to_string(), None).await.expect("put");
        }
    })
    .await;
    let mut lat = Vec::new();
    let mut last = start;
    for r in receivers {
        let (l, done) = r.await.expect("watch task");
        lat.extend(l);
        last = last.max(epoch + done);
    }
    let cpu = ctx.cluster.cpu_s() - cpu_before;
    let want = WATCH_STREAMS * per_stream;
    if lat.len() < want {
        println!(
            "  watch fan-out: {} of {want} events arrived within {FANOUT_DRAIN_TIMEOUT:?}",
            lat.len()
        );
    }
    Figures::new(
        "watch fan-out, 1000 watchers (events)",
        last.duration_since(start),
        lat,
        cpu,
    )
}

/// 100 clients each keeping a lease alive, one keep-alive after another.
pub async fn lease_keep_alive(ctx: &mut Ctx<'_>) -> Figures {
    let mut leases = Vec::new();
    for _ in 0..CLIENTS {
        leases.push(ctx.client.lease_grant(60, None).await.expect("grant").id());
    }
    let per_client = (ctx.requests / CLIENTS).max(10);
    let ((elapsed, lat), cpu) = with_cpu(ctx.cluster, async {
        let start = Instant::now();
        let mut tasks = Vec::new();
        for (t, id) in leases.into_iter().enumerate() {
            let mut client = ctx.clients[t % ctx.clients.len()].clone();
            tasks.push(tokio::spawn(async move {
                let (mut keeper, mut stream) =
                    client.lease_keep_alive(id).await.expect("keep-alive");
                let mut lat = Vec::with_capacity(per_client);
                for _ in 0..per_client {
                    let began = Instant::now();
                    keeper.keep_alive().await.expect("send");
                    stream.message().await.expect("answer").expect("stream");
                    lat.push(began.elapsed().as_micros() as u64);
                }
                lat
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("task"));
        }
        (start.elapsed(), all)
    })
    .await;
    Figures::new("lease keep-alive, 100 clients", elapsed, lat, cpu)
}
