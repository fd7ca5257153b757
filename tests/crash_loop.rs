//! The real-process crash loop: three members under concurrent writes, a random member
//! killed with SIGKILL and restarted twenty times, with snapshots and log compaction
//! happening throughout. Afterwards every acknowledged write is on every member and all
//! members' KV hashes agree at the same revision.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::ClusterProc;

/// Kill and restart cycles.
const CYCLES: usize = 20;
/// The seed of the victim and pause choices; printed so a failure can be rerun as is.
const SEED: u64 = 0x5eed_c2a5;

/// A small deterministic generator (xorshift64*), enough to pick victims and pauses.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Writes `c/<n>` = `<n>` through `endpoints` until `stop`, recording every write the
/// cluster acknowledged. Failed writes have an unknown outcome and are not recorded.
fn writer(
    endpoints: Vec<String>,
    id: usize,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let rt = runtime();
        rt.block_on(async {
            let mut failures = 0;
            let mut n = 0usize;
            let mut client: Option<etcd_client::Client> = None;
            while !stop.load(Ordering::SeqCst) {
                if client.is_none() {
                    // Each attempt goes to the next member, so a dead one is skipped.
                    let url = endpoints[n % endpoints.len()].clone();
                    let opts = etcd_client::ConnectOptions::new()
                        .with_connect_timeout(Duration::from_secs(1))
                        .with_timeout(Duration::from_secs(10));
                    client = etcd_client::Client::connect([url], Some(opts)).await.ok();
                }
                let key = format!("c/{id}/{n:06}");
                let ok = match client.as_mut() {
                    Some(c) => c.put(key.as_str(), key.as_str(), None).await.is_ok(),
                    None => false,
                };
                if ok {
                    acked.lock().unwrap().push(key);
                } else {
                    failures += 1;
                    client = None;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                n += 1;
            }
            failures
        })
    })
}

/// Every `c/` key through member `i`, with a linearizable read (retried while the member
/// settles).
fn keys_on(c: &ClusterProc, i: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = runtime().block_on(async {
            let mut client = etcd_client::Client::connect([c.client_url(i)], None).await?;
            let resp = client
                .get("c/", Some(etcd_client::GetOptions::new().with_prefix()))
                .await?;
            let mut keys = Vec::new();
            for kv in resp.kvs() {
                assert_eq!(
                    kv.key(),
                    kv.value(),
                    "member {i}: value of {:?}",
                    kv.key_str()
                );
                keys.push(kv.key_str().unwrap_or_default().to_string());
            }
            Ok::<_, etcd_client::Error>(keys)
        });
        match got {
            Ok(keys) => return keys,
            Err(e) => assert!(Instant::now() < deadline, "member {i} does not answer: {e}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn twenty_kill_9_restarts_under_writes_lose_nothing() {
    common::detcd_only(
        "it needs --experimental-snapshot-catchup-entries (an etcd 3.5 flag that detcd \
         accepts ahead of 3.4) to snapshot after a few writes; etcd 3.4.23 refuses the flag",
    );
    eprintln!("crash loop: seed {SEED:#x}, {CYCLES} cycles");
    let mut c = ClusterProc::start_with_args(
        3,
        &[
            "--snapshot-count",
            "300",
            "--experimental-snapshot-catchup-entries",
            "50",
        ],
    );
    let endpoints: Vec<String> = (0..3).map(|i| c.client_url(i)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..3)
        .map(|id| writer(endpoints.clone(), id, stop.clone(), acked.clone()))
        .collect();

    let mut rng = Rng(SEED);
    for cycle in 0..CYCLES {
        let victim = rng.below(3) as usize;
        let pause_ms = 200 + rng.below(1300);
        std::thread::sleep(Duration::from_millis(300 + rng.below(700)));
        eprintln!("cycle {cycle}: kill -9 member {victim}, down for {pause_ms} ms");
        c.kill_9(victim);
        std::thread::sleep(Duration::from_millis(pause_ms));
        c.restart(victim);
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let failures: usize = writers.into_iter().map(|w| w.join().expect("writer")).sum();
    let mut want = acked.lock().unwrap().clone();
    want.sort();
    eprintln!(
        "crash loop: {} writes acknowledged, {failures} failed or unknown",
        want.len()
    );
    assert!(
        want.len() > 100,
        "too few writes got through: {}",
        want.len()
    );

    // Every acknowledged write is on every member (unacknowledged ones may be too).
    for i in 0..3 {
        let have = keys_on(&c, i);
        let missing: Vec<&String> = want
            .iter()
            .filter(|k| have.binary_search(k).is_err())
            .collect();
        assert!(
            missing.is_empty(),
            "member {i} lost {} acknowledged writes, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
    }

    // And the members agree on the KV hash at one revision.
    c.wait_hashkv_agree(None);
}
