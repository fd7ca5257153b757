//! Boots one detcd member in simulation, writes and reads keys through the real gRPC KV
//! service, and checks that the same seed gives the same answers, byte for byte.
#![cfg(madsim)]

use std::hash::{Hash, Hasher};
use std::time::Duration;

use detcd::pb::etcdserverpb::{PutRequest, RangeRequest};
use detcd_sim::harness;
use madsim::runtime::Runtime;
use prost::Message;

/// Runs the workload under `seed` and returns a hash of every response and the final
/// simulated time, plus the values read back.
fn run(seed: u64) -> (u64, Vec<(Vec<u8>, Vec<u8>)>) {
    let rt = Runtime::with_seed_and_config(seed, madsim::Config::default());
    rt.block_on(async {
        let handle = madsim::runtime::Handle::current();
        let member = harness::start_single_member(&handle, "node1");
        let client_node = handle
            .create_node()
            .name("client")
            .ip("10.0.0.100".parse().unwrap())
            .build();
        let url = member.client_url();
        client_node
            .spawn(async move {
                let mut kv = harness::connect_kv(&url).await;
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                for i in 0..50u32 {
                    let key = format!("key{}", i % 7).into_bytes();
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
                    madsim::time::sleep(Duration::from_millis(u64::from(i % 3))).await;
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
            .await
            .expect("client task")
    })
}

#[test]
fn single_member_put_and_range_is_deterministic() {
    let (hash_a, kvs_a) = harness::on_fresh_thread(|| run(7));
    let (hash_b, kvs_b) = harness::on_fresh_thread(|| run(7));
    assert_eq!(hash_a, hash_b, "same seed, different responses");
    assert_eq!(kvs_a, kvs_b);
    // Seven keys; the last write to key j was i = 49 - ((49 - j) % 7).
    assert_eq!(kvs_a.len(), 7);
    for (j, (k, v)) in kvs_a.iter().enumerate() {
        assert_eq!(k, format!("key{j}").as_bytes());
        let last_i = (0..50).filter(|i| i % 7 == j).max().unwrap();
        assert_eq!(v, format!("value{last_i}").as_bytes());
    }
}
