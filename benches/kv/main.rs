//! Throughput, latency, CPU and memory of detcd beside the real etcd, in the manner of
//! etcd's own `benchmark` tool: the same workloads, the same client, the same flags, the
//! two servers started alternately in one run, every figure printed with its ratio.
//!
//! ```sh
//! cargo bench --bench kv                          # 1 and 3 members, best of 2 rounds
//! cargo bench --bench kv -- --quick               # a tenth of the requests, 1 round
//! cargo bench --bench kv -- --members 3           # only 3-member clusters
//! cargo bench --bench kv -- --load-keys 1000000   # a growing store (see load.rs)
//! cargo bench --bench kv -- --detcd PATH          # another detcd build (before/after)
//! cargo bench --bench kv -- --only txn --no-etcd  # one workload, detcd alone (profiling)
//! ```
//!
//! It prints figures and asserts nothing about speed: targets are read from the table,
//! never enforced by a test. The machine may be shared: compare the ratios of one run,
//! not absolute figures of different runs.

mod cluster;
mod load;
mod report;
mod workloads;

use std::path::{Path, PathBuf};

use cluster::Cluster;
use report::Figures;

/// The command line.
struct Args {
    /// Requests per concurrent workload.
    requests: usize,
    /// Cluster sizes to run.
    members: Vec<usize>,
    /// Runs of each server per size; the best throughput of each workload is kept.
    rounds: usize,
    /// Keys for the growing-store run; 0 skips it.
    load_keys: usize,
    /// The detcd binary to measure; by default the one cargo built beside the benchmark.
    detcd: PathBuf,
    /// Only the workloads whose names contain this (all when empty).
    only: String,
    /// Leave etcd out (for profiling detcd alone).
    no_etcd: bool,
}

fn value_after(args: &[String], flag: &str) -> Option<String> {
    args.iter()
        .position(|a| a == flag)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn parse_args() -> Args {
    // `cargo bench` passes `--bench`; other unknown arguments are ignored the same way.
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let members = match value_after(&args, "--members").as_deref() {
        Some("1") => vec![1],
        Some("3") => vec![3],
        _ => vec![1, 3],
    };
    Args {
        requests: if quick { 2_000 } else { 20_000 },
        members,
        rounds: value_after(&args, "--rounds")
            .and_then(|v| v.parse().ok())
            .unwrap_or(if quick { 1 } else { 2 }),
        load_keys: value_after(&args, "--load-keys")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        detcd: value_after(&args, "--detcd")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_detcd"))),
        only: value_after(&args, "--only").unwrap_or_default(),
        no_etcd: args.iter().any(|a| a == "--no-etcd"),
    }
}

/// One server's figures over all rounds of one cluster size.
#[derive(Default)]
struct Runs {
    figures: Vec<Vec<Figures>>,
    cpu_s: f64,
    peak_rss_mib: f64,
}

impl Runs {
    /// The best run of each workload.
    fn best(&self) -> Vec<Figures> {
        let Some(first) = self.figures.first() else {
            return Vec::new();
        };
        first
            .iter()
            .filter_map(|w| {
                report::best(
                    self.figures
                        .iter()
                        .flatten()
                        .filter(|f| f.name == w.name)
                        .cloned()
                        .collect(),
                )
            })
            .collect()
    }
}

/// Starts a cluster of `binary`, runs every workload, and records the run.
fn one_round(
    rt: &tokio::runtime::Runtime,
    binary: &Path,
    size: usize,
    args: &Args,
    runs: &mut Runs,
) {
    let cluster = Cluster::start(binary, size, &[]);
    let cpu_before = cluster.cpu_s();
    let figures = rt.block_on(async {
        let mut ctx = workloads::Ctx::new(&cluster, args.requests).await;
        workloads::run_all(&mut ctx, &args.only).await
    });
    runs.cpu_s += cluster.cpu_s() - cpu_before;
    runs.peak_rss_mib = runs.peak_rss_mib.max(cluster.peak_rss_mib());
    runs.figures.push(figures);
}

fn compare_sizes(rt: &tokio::runtime::Runtime, servers: &[(&str, PathBuf)], args: &Args) {
    for &size in &args.members {
        let mut runs: Vec<Runs> = servers.iter().map(|_| Runs::default()).collect();
        for round in 0..args.rounds {
            // Alternate which server goes first, so neither always runs on a warmer or
            // cooler machine.
            let order: Vec<usize> = if round % 2 == 0 {
                (0..servers.len()).collect()
            } else {
                (0..servers.len()).rev().collect()
            };
            for i in order {
                println!(
                    "round {} of {}: {} with {size} member(s)",
                    round + 1,
                    args.rounds,
                    servers[i].0
                );
                one_round(rt, &servers[i].1, size, args, &mut runs[i]);
            }
        }
        let title = format!("{size} member(s), best of {} round(s)", args.rounds);
        match runs.as_slice() {
            [ours, theirs] => {
                report::print_side_by_side(&title, &ours.best(), &theirs.best());
                report::print_total("server CPU, whole run", ours.cpu_s, theirs.cpu_s, "s");
                report::print_total(
                    "peak RSS (members added up)",
                    ours.peak_rss_mib,
                    theirs.peak_rss_mib,
                    "MiB",
                );
            }
            [ours] => report::print_alone(&title, &ours.best()),
            _ => {}
        }
    }
}

fn compare_load(rt: &tokio::runtime::Runtime, servers: &[(&str, PathBuf)], args: &Args) {
    let mut results = Vec::new();
    for (name, binary) in servers {
        println!("loading {} keys into {name}", args.load_keys);
        let mut cluster = Cluster::start(binary, 1, &[]);
        let figures = rt.block_on(load::run(&mut cluster, args.load_keys, args.requests));
        results.push((name, figures));
    }
    println!("\n== a store of {} keys, 1 member", args.load_keys);
    for (name, f) in &results {
        let first = f.rates.first().copied().unwrap_or(0.0);
        let last = f.rates.last().copied().unwrap_or(0.0);
        println!(
            "{name}: {:.0} keys/s overall; first step {first:.0}, last step {last:.0} keys/s ({:.0}% of the first); restart {:.2} s; peak RSS {:.1} MiB",
            f.overall_rate,
            100.0 * last / first.max(1e-9),
            f.restart.as_secs_f64(),
            f.peak_rss_mib
        );
    }
    if let [(_, alone)] = results.as_slice() {
        report::print_alone("write workloads on the full store", &alone.full_store);
    }
    if let [(_, ours), (_, theirs)] = results.as_slice() {
        report::print_side_by_side(
            "write workloads on the full store",
            &ours.full_store,
            &theirs.full_store,
        );
        report::print_total(
            "load rate",
            ours.overall_rate,
            theirs.overall_rate,
            "keys/s",
        );
        report::print_total(
            "restart",
            ours.restart.as_secs_f64(),
            theirs.restart.as_secs_f64(),
            "s",
        );
        report::print_total("peak RSS", ours.peak_rss_mib, theirs.peak_rss_mib, "MiB");
    }
}

fn main() {
    let args = parse_args();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    println!(
        "value {} B, {} concurrent clients over {} connections, {} requests per concurrent workload",
        workloads::VALUE_BYTES,
        workloads::CLIENTS,
        workloads::CONNECTIONS,
        args.requests
    );
    println!("detcd: {}", args.detcd.display());
    let mut servers = vec![("detcd", args.detcd.clone())];
    match which("etcd").filter(|_| !args.no_etcd) {
        Some(etcd) => servers.push(("etcd", etcd)),
        None => println!("(etcd is not on the PATH: detcd only)"),
    }
    compare_sizes(&rt, &servers, &args);
    if args.load_keys > 0 {
        compare_load(&rt, &servers, &args);
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}
