//! A store that grows: loads many keys (100 puts per txn from 16 writers) and prints the
//! write rate for each 100,000 keys, then runs the write workloads on the full store and
//! restarts the member on it.

use std::time::{Duration, Instant};

use etcd_client::{Txn, TxnOp};

use crate::cluster::Cluster;
use crate::report::Figures;
use crate::workloads::{self, Ctx, VALUE_BYTES};

/// Keys per load txn.
const PUTS_PER_TXN: usize = 100;
/// Concurrent loaders.
const WRITERS: usize = 16;
/// Keys between two printed rates.
const STEP_KEYS: usize = 100_000;

/// What a load run measured.
pub struct LoadFigures {
    /// Keys per second for each step of `STEP_KEYS` keys.
    pub rates: Vec<f64>,
    /// Keys per second over the whole load.
    pub overall_rate: f64,
    /// The write workloads on the full store.
    pub full_store: Vec<Figures>,
    /// From stopping the member to its first answered write.
    pub restart: Duration,
    /// Peak resident memory after the restart, MiB.
    pub peak_rss_mib: f64,
}

/// Loads `keys` keys into `cluster`, then measures the rest.
pub async fn run(cluster: &mut Cluster, keys: usize, requests: usize) -> LoadFigures {
    let clients = {
        let ctx = Ctx::new(cluster, requests).await;
        ctx.clients
    };
    let value = vec![b'l'; VALUE_BYTES];
    let mut rates = Vec::new();
    let began = Instant::now();
    let mut loaded = 0;
    while loaded < keys {
        let step = STEP_KEYS.min(keys - loaded);
        let t = Instant::now();
        load_range(&clients, loaded, loaded + step, &value).await;
        let rate = step as f64 / t.elapsed().as_secs_f64().max(1e-9);
        loaded += step;
        println!("  loaded {loaded:>9} keys: {rate:>9.0} keys/s for the last {step}");
        rates.push(rate);
    }
    let overall_rate = keys as f64 / began.elapsed().as_secs_f64().max(1e-9);
    let full_store = {
        let mut ctx = Ctx::new(cluster, requests).await;
        vec![
            workloads::put_one_client(&mut ctx).await,
            workloads::put_concurrent(&mut ctx).await,
            workloads::txn_four_puts(&mut ctx).await,
        ]
    };
    let restart = cluster.restart().await;
    LoadFigures {
        rates,
        overall_rate,
        full_store,
        restart,
        peak_rss_mib: cluster.peak_rss_mib(),
    }
}

/// Writes keys `from..to` in txns of `PUTS_PER_TXN` from `WRITERS` tasks.
async fn load_range(clients: &[etcd_client::Client], from: usize, to: usize, value: &[u8]) {
    let txns = (to - from).div_ceil(PUTS_PER_TXN);
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let mut client = clients[w % clients.len()].clone();
        let value = value.to_vec();
        tasks.push(tokio::spawn(async move {
            let mut t = w;
            while t < txns {
                let first = from + t * PUTS_PER_TXN;
                let last = (first + PUTS_PER_TXN).min(to);
                let ops: Vec<TxnOp> = (first..last)
                    .map(|k| TxnOp::put(format!("load/{k:09}"), value.clone(), None))
                    .collect();
                client
                    .txn(Txn::new().and_then(ops))
                    .await
                    .expect("load txn");
                t += WRITERS;
            }
        }));
    }
    for t in tasks {
        t.await.expect("loader");
    }
}
