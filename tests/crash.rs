//! Crash durability: every acknowledged write survives `kill -9` + restart.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{within, Server};
use etcd_client::GetOptions;

const WRITERS: usize = 4;
const CYCLES: usize = 3;
/// Kill after this many acknowledged puts in a cycle, or after KILL_AFTER.
const KILL_AFTER_ACKS: usize = 400;
const KILL_AFTER: Duration = Duration::from_millis(1000);

#[derive(Debug, Clone)]
struct Ack {
    key: String,
    value: String,
    revision: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_keeps_acknowledged_writes() {
    let mut s = Server::start();
    let mut all_acks: Vec<Ack> = Vec::new();

    for cycle in 0..CYCLES {
        let acks: Arc<Mutex<Vec<Ack>>> = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let mut c = s.client().await;
            let acks = acks.clone();
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("c{cycle}/w{w}/{i:06}");
                    let value = format!("value-{cycle}-{w}-{i}");
                    match tokio::time::timeout(
                        Duration::from_secs(5),
                        c.put(key.clone(), value.clone(), None),
                    )
                    .await
                    {
                        Ok(Ok(r)) => {
                            let revision = r.header().expect("put response header").revision();
                            acks.lock().unwrap().push(Ack {
                                key,
                                value,
                                revision,
                            });
                        }
                        // Server gone (killed) or timed out: this writer is done.
                        _ => break,
                    }
                    i += 1;
                }
            }));
        }

        // Let the writers run, then kill -9 mid-stream.
        let t0 = Instant::now();
        while t0.elapsed() < KILL_AFTER && acks.lock().unwrap().len() < KILL_AFTER_ACKS {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let before_kill = acks.lock().unwrap().len();
        s.kill_9();
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            match tokio::time::timeout(Duration::from_secs(20), t).await {
                Ok(r) => r.expect("writer task panicked"),
                Err(_) => panic!("writer task did not finish within 20 s after kill -9"),
            }
        }
        let cycle_acks = acks.lock().unwrap().clone();
        assert!(
            !cycle_acks.is_empty(),
            "cycle {cycle}: no put was acknowledged before kill -9 (server too slow?)"
        );
        all_acks.extend(cycle_acks.iter().cloned());

        s.restart();
        let mut c = s.client().await;
        let r = within(
            30,
            "range over all keys",
            c.get("c", Some(GetOptions::new().with_prefix())),
        )
        .await
        .unwrap_or_else(|e| panic!("cycle {cycle}: range after restart failed: {e:?}"));
        let current = r.header().unwrap().revision();
        let stored: HashMap<String, (String, i64, i64, i64)> = r
            .kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    (
                        String::from_utf8_lossy(kv.value()).into_owned(),
                        kv.mod_revision(),
                        kv.create_revision(),
                        kv.version(),
                    ),
                )
            })
            .collect();
        let max_ack = all_acks.iter().map(|a| a.revision).max().unwrap();
        assert!(
            current >= max_ack,
            "cycle {cycle}: current revision {current} < highest acknowledged revision {max_ack}"
        );
        let mut revs: Vec<i64> = all_acks.iter().map(|a| a.revision).collect();
        revs.sort_unstable();
        revs.dedup();
        assert_eq!(
            revs.len(),
            all_acks.len(),
            "two acknowledged puts share a revision"
        );
        for a in &all_acks {
            match stored.get(&a.key) {
                None => panic!(
                    "cycle {cycle}: acknowledged write lost after kill -9: {a:?} ({} acks total, {} stored keys)",
                    all_acks.len(),
                    stored.len()
                ),
                Some((value, mod_rev, create_rev, version)) => {
                    assert_eq!(value, &a.value, "cycle {cycle}: wrong value for {a:?}");
                    assert_eq!(*mod_rev, a.revision, "cycle {cycle}: mod_revision differs from ack for {a:?}");
                    assert_eq!(*create_rev, a.revision, "cycle {cycle}: create_revision for {a:?}");
                    assert_eq!(*version, 1, "cycle {cycle}: version for {a:?}");
                }
            }
        }
        // Unacknowledged writes that did land must carry the value that was written.
        for (k, (v, _, _, _)) in &stored {
            let parts: Vec<&str> = k.split('/').collect();
            let expect = format!(
                "value-{}-{}-{}",
                &parts[0][1..],
                &parts[1][1..],
                parts[2].parse::<u64>().unwrap()
            );
            assert_eq!(
                v, &expect,
                "cycle {cycle}: key {k} has a value nobody wrote"
            );
        }
        // The restarted server accepts writes at the next revision.
        let r = within(
            30,
            "put after restart",
            c.put(format!("after/{cycle}"), "x", None),
        )
        .await
        .unwrap();
        assert_eq!(r.header().unwrap().revision(), current + 1);
        println!(
            "crash cycle {cycle}: {} acks this cycle ({before_kill} when killed), {} total verified, revision {current}",
            cycle_acks.len(),
            all_acks.len()
        );
    }
}
