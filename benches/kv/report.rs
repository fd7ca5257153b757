//! Figures of one workload run, and the side-by-side table of detcd and etcd.

use std::time::Duration;

/// What one workload measured on one server.
#[derive(Debug, Clone)]
pub struct Figures {
    /// The workload's name.
    pub name: String,
    /// Operations done (requests, or events delivered for watch fan-out).
    pub ops: usize,
    /// Wall time of the whole workload.
    pub elapsed: Duration,
    /// Each operation's latency in microseconds, sorted.
    pub latencies_us: Vec<u64>,
    /// CPU seconds the server processes used during the workload.
    pub cpu_s: f64,
}

impl Figures {
    /// Figures from unsorted latencies; `ops` defaults to their count.
    pub fn new(name: &str, elapsed: Duration, mut latencies_us: Vec<u64>, cpu_s: f64) -> Figures {
        latencies_us.sort_unstable();
        Figures {
            name: name.to_string(),
            ops: latencies_us.len(),
            elapsed,
            latencies_us,
            cpu_s,
        }
    }

    /// The latency below which a fraction `p` of operations fall, in milliseconds.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let i = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us[i] as f64 / 1000.0
    }

    /// Throughput.
    pub fn ops_per_s(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Server CPU microseconds per operation.
    pub fn cpu_us_per_op(&self) -> f64 {
        self.cpu_s * 1e6 / (self.ops.max(1) as f64)
    }
}

/// Of several runs of the same workload, the one with the highest throughput.
pub fn best(runs: Vec<Figures>) -> Option<Figures> {
    runs.into_iter()
        .max_by(|a, b| a.ops_per_s().total_cmp(&b.ops_per_s()))
}

fn ratio(a: f64, b: f64) -> String {
    if b <= 0.0 {
        "-".to_string()
    } else {
        format!("{:.2}x", a / b)
    }
}

/// Prints detcd's and etcd's figures of each workload side by side, with the ratios
/// (throughput detcd/etcd: higher is better for detcd; p99 and CPU per operation
/// detcd/etcd: lower is better).
pub fn print_side_by_side(title: &str, ours: &[Figures], theirs: &[Figures]) {
    println!("\n== {title}");
    println!(
        "{:<36} {:>10} {:>10} {:>7} | {:>8} {:>8} {:>8} | {:>8} {:>8} {:>8} | {:>7} | {:>8} {:>8} {:>7}",
        "workload",
        "detcd/s",
        "etcd/s",
        "ratio",
        "p50 d",
        "p99 d",
        "p99.9 d",
        "p50 e",
        "p99 e",
        "p99.9 e",
        "p99 d/e",
        "cpu us d",
        "cpu us e",
        "cpu d/e"
    );
    for o in ours {
        let Some(t) = theirs.iter().find(|t| t.name == o.name) else {
            continue;
        };
        println!(
            "{:<36} {:>10.0} {:>10.0} {:>7} | {:>8.2} {:>8.2} {:>8.2} | {:>8.2} {:>8.2} {:>8.2} | {:>7} | {:>8.0} {:>8.0} {:>7}",
            o.name,
            o.ops_per_s(),
            t.ops_per_s(),
            ratio(o.ops_per_s(), t.ops_per_s()),
            o.percentile_ms(0.5),
            o.percentile_ms(0.99),
            o.percentile_ms(0.999),
            t.percentile_ms(0.5),
            t.percentile_ms(0.99),
            t.percentile_ms(0.999),
            ratio(o.percentile_ms(0.99), t.percentile_ms(0.99)),
            o.cpu_us_per_op(),
            t.cpu_us_per_op(),
            ratio(o.cpu_us_per_op(), t.cpu_us_per_op()),
        );
    }
}

/// Prints one server's figures alone (no etcd to compare with, or `--endpoint`).
pub fn print_alone(title: &str, figures: &[Figures]) {
    println!("\n== {title}");
    println!(
        "{:<36} {:>10} {:>9} {:>9} {:>9} {:>10}",
        "workload", "ops/s", "p50 ms", "p99 ms", "p99.9 ms", "cpu us/op"
    );
    for f in figures {
        println!(
            "{:<36} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>10.0}",
            f.name,
            f.ops_per_s(),
            f.percentile_ms(0.5),
            f.percentile_ms(0.99),
            f.percentile_ms(0.999),
            f.cpu_us_per_op()
        );
    }
}

/// Prints a pair of totals with their ratio.
pub fn print_total(what: &str, ours: f64, theirs: f64, unit: &str) {
    println!(
        "{what:<36} detcd {ours:.1} {unit}, etcd {theirs:.1} {unit}, ratio {}",
        ratio(ours, theirs)
    );
}
