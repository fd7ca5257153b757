//! Runs `scenarios/smoke.toml`: boots one detcd member in simulation, writes and reads keys
//! through the real gRPC KV service, and checks that the same seed gives the same answers,
//! byte for byte.
#![cfg(madsim)]

use std::hash::{Hash, Hasher};
use std::time::Duration;

use detcd::pb::etcdserverpb::{PutRequest, RangeRequest};
use detcd_sim::harness;
use detcd_sim::scenario::{Scenario, Workload};
use prost::Message;

/// Key-value pairs as read back.
type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Runs the workload under `seed` and returns a hash of every response and the final
/// simulated time, plus the values read back.
fn run(seed: u64, workload: Workload) -> (u64, Pairs) {
    harness::single_member_client(seed, move |url| async move {
        let mut kv = harness::connect_kv(&url).await;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        for i in 0..workload.writes {
            let key = format!("key{}", i % workload.keys).into_bytes();
            let value = format!("value{i}").into_bytes();
            let resp = kv
                .put(PutRequest {
                    key,
                    value,
                    prev_kv: true,
                    ..Default::default()
                })
                .await
                .expect("put")
                .into_inner();
            resp.encode_to_vec().hash(&mut hasher);
            // A little simulated think time, so timers and ticks interleave.
            let think_ms = u64::from(i) % (workload.think_time_max_ms + 1);
            madsim::time::sleep(Duration::from_millis(think_ms)).await;
        }
        let resp = kv
            .range(RangeRequest {
                key: b"key".to_vec(),
                range_end: b"kez".to_vec(),
                ..Default::default()
            })
            .await
            .expect("range")
            .into_inner();
        resp.encode_to_vec().hash(&mut hasher);
        madsim::time::Instant::now().elapsed().hash(&mut hasher);
        let kvs = resp.kvs.into_iter().map(|kv| (kv.key, kv.value)).collect();
        (hasher.finish(), kvs)
    })
}

#[test]
fn smoke_scenario_is_correct_and_deterministic() {
    let scenario = Scenario::load("smoke").expect("scenarios/smoke.toml");
    assert_eq!(scenario.members, 1, "the smoke harness boots one member");
    let (seed, w) = (scenario.seed, scenario.workload.clone());
    println!("scenario {} seed {seed} parameters {w:?}", scenario.name);
    let (hash_a, kvs_a) = harness::on_fresh_thread(move || run(seed, w));
    let w = scenario.workload.clone();
    let (hash_b, kvs_b) = harness::on_fresh_thread(move || run(seed, w));
    assert_eq!(hash_a, hash_b, "same seed, different responses");
    assert_eq!(kvs_a, kvs_b);
    // Every key holds the value of the last write that went to it.
    let (writes, keys) = (scenario.workload.writes, scenario.workload.keys);
    assert_eq!(kvs_a.len(), keys.min(writes) as usize);
    for (j, (k, v)) in kvs_a.iter().enumerate() {
        let j = j as u32;
        assert_eq!(k, format!("key{j}").as_bytes());
        let last_i = (0..writes).filter(|i| i % keys == j).max().unwrap();
        assert_eq!(v, format!("value{last_i}").as_bytes());
    }
}
