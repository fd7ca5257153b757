//! A small metrics registry with etcd's metric names, rendered in the Prometheus text
//! format for `/metrics`.
//!
//! Every value is an atomic that the actors update as they work (the raft actor counts
//! leader changes, the WAL writer times its fsyncs, the storage actor times backend
//! commits and counts keys, the gateway counts proposals and gRPC calls), so recording
//! costs a few atomic additions and never waits for the scrape. Gauges that other parts
//! already keep (the raft status, the backend size) are read when the page is rendered.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Upper bounds (seconds) of etcd's disk histograms: `prometheus.ExponentialBuckets(0.001, 2, 14)`.
pub const DISK_BUCKETS_SECONDS: [f64; 14] = [
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
    8.192,
];

/// Upper bounds (seconds) of etcd's peer round-trip histogram:
/// `prometheus.ExponentialBuckets(0.0001, 2, 14)`.
pub const RTT_BUCKETS_SECONDS: [f64; 14] = [
    0.0001, 0.0002, 0.0004, 0.0008, 0.0016, 0.0032, 0.0064, 0.0128, 0.0256, 0.0512, 0.1024, 0.2048,
    0.4096, 0.8192,
];

/// The gRPC status codes by number, with the names go-grpc-prometheus labels them with.
pub const GRPC_CODE_NAMES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// A histogram with fixed buckets; observations are lock-free.
#[derive(Debug)]
pub struct Histogram {
    bounds_seconds: &'static [f64],
    /// Per-bucket (not cumulative) counts; the last slot is the `+Inf` bucket.
    counts: Vec<AtomicU64>,
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// An empty histogram over `bounds_seconds` (ascending upper bounds).
    pub fn new(bounds_seconds: &'static [f64]) -> Histogram {
        Histogram {
            bounds_seconds,
            counts: (0..=bounds_seconds.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let slot = self
            .bounds_seconds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds_seconds.len());
        self.counts[slot].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// How many observations were recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0u64;
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, bound) in self.bounds_seconds.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += self.counts[self.bounds_seconds.len()].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
        );
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        let _ = writeln!(out, "{name}_sum{} {sum}", braces(labels));
        let _ = writeln!(out, "{name}_count{} {cumulative}", braces(labels));
    }
}

/// The started and handled counters of one gRPC method.
#[derive(Debug)]
struct MethodCounters {
    service: String,
    method: String,
    grpc_type: &'static str,
    started: AtomicU64,
    handled: [AtomicU64; 17],
}

/// Values only a scrape needs, read from the rest of the member when the page is rendered.
#[derive(Debug, Clone, Copy, Default)]
pub struct Snapshot {
    /// Whether the member knows a leader.
    pub has_leader: bool,
    /// The raft commit index (etcd's `proposals_committed_total`).
    pub committed_index: u64,
    /// The backend's size in bytes.
    pub db_size_bytes: u64,
}

/// One member's metrics.
#[derive(Debug)]
pub struct Metrics {
    /// Leader changes this member has seen (`etcd_server_leader_changes_seen_total`).
    pub leader_changes: AtomicU64,
    /// The highest raft index applied to the state machine
    /// (`etcd_server_proposals_applied_total`, a gauge in etcd despite its name).
    pub applied_index: AtomicU64,
    /// Proposals waiting to be applied (`etcd_server_proposals_pending`).
    pub proposals_pending: AtomicU64,
    /// Proposals that failed (`etcd_server_proposals_failed_total`).
    pub proposals_failed: AtomicU64,
    /// Keys in the MVCC store (`etcd_debugging_mvcc_keys_total`).
    pub keys: AtomicU64,
    /// WAL fsync latencies (`etcd_disk_wal_fsync_duration_seconds`).
    pub wal_fsync: Histogram,
    /// Backend commit latencies (`etcd_disk_backend_commit_duration_seconds`).
    pub backend_commit: Histogram,
    /// Round trips to each peer, by peer id (`etcd_network_peer_round_trip_time_seconds`).
    /// One entry per peer this member ever probed, so it is bounded by the membership.
    peer_rtt: Mutex<BTreeMap<u64, Histogram>>,
    /// gRPC counters for every method of etcd's services, indexed by request path.
    grpc: BTreeMap<String, MethodCounters>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry with every counter at zero and the gRPC counters of every method etcd
    /// serves registered, as go-grpc-prometheus registers them when the server starts.
    pub fn new() -> Metrics {
        let mut grpc = BTreeMap::new();
        for (service, method, grpc_type) in grpc_methods() {
            grpc.insert(
                format!("/{service}/{method}"),
                MethodCounters {
                    service,
                    method,
                    grpc_type,
                    started: AtomicU64::new(0),
                    handled: std::array::from_fn(|_| AtomicU64::new(0)),
                },
            );
        }
        Metrics {
            leader_changes: AtomicU64::new(0),
            applied_index: AtomicU64::new(0),
            proposals_pending: AtomicU64::new(0),
            proposals_failed: AtomicU64::new(0),
            keys: AtomicU64::new(0),
            wal_fsync: Histogram::new(&DISK_BUCKETS_SECONDS),
            backend_commit: Histogram::new(&DISK_BUCKETS_SECONDS),
            peer_rtt: Mutex::new(BTreeMap::new()),
            grpc,
        }
    }

    /// Records a round trip to peer `peer_id`.
    pub fn observe_peer_rtt(&self, peer_id: u64, d: Duration) {
        let mut map = match self.peer_rtt.lock() {
            Ok(m) => m,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.entry(peer_id)
            .or_insert_with(|| Histogram::new(&RTT_BUCKETS_SECONDS))
            .observe(d);
    }

    /// Counts a gRPC call to `path` (`/package.Service/Method`) as started. Paths of
    /// methods etcd does not serve are not counted, as go-grpc-prometheus sees only
    /// registered methods.
    pub fn grpc_started(&self, path: &str) {
        if let Some(m) = self.grpc.get(path) {
            m.started.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a gRPC call to `path` as finished with status `code`.
    pub fn grpc_handled(&self, path: &str, code: i32) {
        if let Some(m) = self.grpc.get(path) {
            let slot = usize::try_from(code).ok().filter(|c| *c < 17).unwrap_or(2);
            m.handled[slot].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The page `/metrics` serves, in the Prometheus text exposition format 0.0.4, with
    /// families in name order as Prometheus' Go client writes them.
    pub fn render(&self, snap: Snapshot) -> String {
        let mut out = String::with_capacity(64 * 1024);
        let gauge = |out: &mut String, name: &str, help: &str, kind: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {v}");
        };
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        gauge(
            &mut out,
            "etcd_debugging_mvcc_keys_total",
            "Total number of keys.",
            "gauge",
            load(&self.keys),
        );
        let hist = |out: &mut String, name: &str, help: &str, h: &Histogram| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} histogram");
            h.render(out, name, "");
        };
        hist(
            &mut out,
            "etcd_disk_backend_commit_duration_seconds",
            "The latency distributions of commit called by backend.",
            &self.backend_commit,
        );
        hist(
            &mut out,
            "etcd_disk_wal_fsync_duration_seconds",
            "The latency distributions of fsync called by WAL.",
            &self.wal_fsync,
        );
        gauge(
            &mut out,
            "etcd_mvcc_db_total_size_in_bytes",
            "Total size of the underlying database physically allocated in bytes.",
            "gauge",
            snap.db_size_bytes,
        );
        {
            let name = "etcd_network_peer_round_trip_time_seconds";
            let map = match self.peer_rtt.lock() {
                Ok(m) => m,
                Err(poisoned) => poisoned.into_inner(),
            };
            // A family with one histogram per peer: as in etcd (Prometheus' Go client
            // leaves out a vector without children), a member without peers prints none.
            if !map.is_empty() {
                let _ = writeln!(out, "# HELP {name} Round-Trip-Time histogram between peers");
                let _ = writeln!(out, "# TYPE {name} histogram");
            }
            for (peer, h) in map.iter() {
                h.render(&mut out, name, &format!("To=\"{peer:x}\""));
            }
        }
        gauge(
            &mut out,
            "etcd_server_has_leader",
            "Whether or not a leader exists. 1 is existence, 0 is not.",
            "gauge",
            u64::from(snap.has_leader),
        );
        gauge(
            &mut out,
            "etcd_server_leader_changes_seen_total",
            "The number of leader changes seen.",
            "counter",
            load(&self.leader_changes),
        );
        gauge(
            &mut out,
            "etcd_server_proposals_applied_total",
            "The total number of consensus proposals applied.",
            "gauge",
            load(&self.applied_index),
        );
        gauge(
            &mut out,
            "etcd_server_proposals_committed_total",
            "The total number of consensus proposals committed.",
            "gauge",
            snap.committed_index,
        );
        gauge(
            &mut out,
            "etcd_server_proposals_failed_total",
            "The total number of failed proposals seen.",
            "counter",
            load(&self.proposals_failed),
        );
        gauge(
            &mut out,
            "etcd_server_proposals_pending",
            "The current number of pending proposals to commit.",
            "gauge",
            load(&self.proposals_pending),
        );
        // Series sorted by their labels (code, method, service, type), as the Go client
        // sorts them.
        let mut methods: Vec<&MethodCounters> = self.grpc.values().collect();
        let name = "grpc_server_handled_total";
        let _ = writeln!(out, "# HELP {name} Total number of RPCs completed on the server, regardless of success or failure.");
        let _ = writeln!(out, "# TYPE {name} counter");
        let mut codes: Vec<(usize, &str)> = GRPC_CODE_NAMES.iter().copied().enumerate().collect();
        codes.sort_by_key(|(_, n)| *n);
        methods.sort_by(|a, b| (&a.method, &a.service).cmp(&(&b.method, &b.service)));
        for (code, code_name) in &codes {
            for m in &methods {
                let _ = writeln!(
                    out,
                    "{name}{{grpc_code=\"{code_name}\",grpc_method=\"{}\",grpc_service=\"{}\",grpc_type=\"{}\"}} {}",
                    m.method,
                    m.service,
                    m.grpc_type,
                    load(&m.handled[*code])
                );
            }
        }
        let name = "grpc_server_started_total";
        let _ = writeln!(
            out,
            "# HELP {name} Total number of RPCs started on the server."
        );
        let _ = writeln!(out, "# TYPE {name} counter");
        for m in &methods {
            let _ = writeln!(
                out,
                "{name}{{grpc_method=\"{}\",grpc_service=\"{}\",grpc_type=\"{}\"}} {}",
                m.method,
                m.service,
                m.grpc_type,
                load(&m.started)
            );
        }
        out
    }
}

/// Every method of the services etcd's client port serves: (service, method, gRPC type
/// as go-grpc-prometheus names it), from the compiled protobuf descriptors.
fn grpc_methods() -> Vec<(String, String, &'static str)> {
    const SERVICES: [&str; 8] = [
        "etcdserverpb.KV",
        "etcdserverpb.Watch",
        "etcdserverpb.Lease",
        "etcdserverpb.Cluster",
        "etcdserverpb.Maintenance",
        "etcdserverpb.Auth",
        "v3lockpb.Lock",
        "v3electionpb.Election",
    ];
    let mut out = Vec::new();
    let Some(pool) = descriptors() else {
        return out;
    };
    for name in SERVICES {
        let Some(service) = pool.get_service_by_name(name) else {
            continue;
        };
        for m in service.methods() {
            let grpc_type = match (m.is_client_streaming(), m.is_server_streaming()) {
                (false, false) => "unary",
                (true, false) => "client_stream",
                (false, true) => "server_stream",
                (true, true) => "bidi_stream",
            };
            out.push((name.to_string(), m.name().to_string(), grpc_type));
        }
    }
    out
}

/// The protobuf descriptors of etcd's API, as compiled by the build script.
pub fn descriptors() -> Option<&'static prost_reflect::DescriptorPool> {
    static POOL: OnceLock<Option<prost_reflect::DescriptorPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let bytes: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/detcd_descriptor.bin"));
        prost_reflect::DescriptorPool::decode(bytes).ok()
    })
    .as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new(&DISK_BUCKETS_SECONDS);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(100));
        let mut out = String::new();
        h.render(&mut out, "x", "");
        assert!(out.contains("x_bucket{le=\"0.001\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.004\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"8.192\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count 3\n"), "{out}");
        assert_eq!(h.count(), 3);
    }

    #[test]
    fn grpc_methods_are_registered_with_their_types() {
        let m = Metrics::new();
        m.grpc_started("/etcdserverpb.KV/Range");
        m.grpc_handled("/etcdserverpb.KV/Range", 0);
        m.grpc_handled("/etcdserverpb.KV/Range", 99);
        m.grpc_started("/nope.Nope/Nope");
        let page = m.render(Snapshot::default());
        assert!(page.contains("grpc_server_started_total{grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 1\n"), "{page}");
        assert!(page.contains("grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 1\n"));
        assert!(page.contains("grpc_server_handled_total{grpc_code=\"Unknown\",grpc_method=\"Range\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 1\n"));
        assert!(page.contains("grpc_server_started_total{grpc_method=\"Watch\",grpc_service=\"etcdserverpb.Watch\",grpc_type=\"bidi_stream\"} 0\n"));
        assert!(page.contains("grpc_server_started_total{grpc_method=\"Snapshot\",grpc_service=\"etcdserverpb.Maintenance\",grpc_type=\"server_stream\"} 0\n"));
    }
}
