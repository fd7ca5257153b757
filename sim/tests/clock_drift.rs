//! Per-member clock drift under simulation: madsim has one clock for the whole simulation,
//! and detcd's runtime seam runs each member's timers on a clock of its own, so the
//! simulator can make one member's clock fast or slow. A member whose clock runs at twice
//! the real rate expires a lease in half the real time; back at the real rate it takes the
//! whole TTL again.
#![cfg(madsim)]

use std::time::Duration;

use detcd::pb::etcdserverpb::lease_client::LeaseClient;
use detcd::pb::etcdserverpb::{LeaseGrantRequest, LeaseTimeToLiveRequest};
use detcd_sim::harness;
use madsim::runtime::Handle;
use madsim::time::{sleep, Instant};

/// Grants a lease of `ttl_s` through `url` and returns how many whole (simulated, real)
/// seconds pass until the member reports it gone.
async fn lease_lifetime_s(url: &str, ttl_s: i64) -> u64 {
    let mut lease = LeaseClient::new(harness::connect_channel(url).await);
    let id = lease
        .lease_grant(LeaseGrantRequest { ttl: ttl_s, id: 0 })
        .await
        .expect("grant")
        .into_inner()
        .id;
    let granted = Instant::now();
    loop {
        sleep(Duration::from_millis(250)).await;
        let ttl = lease
            .lease_time_to_live(LeaseTimeToLiveRequest { id, keys: false })
            .await
            .expect("time to live")
            .into_inner()
            .ttl;
        if ttl == -1 {
            return granted.elapsed().as_secs();
        }
        assert!(
            granted.elapsed() < Duration::from_secs(60),
            "the lease never expired"
        );
    }
}

#[test]
fn a_fast_clock_expires_leases_sooner_and_the_real_rate_restores_them() {
    let rt = madsim::runtime::Runtime::with_seed_and_config(5, madsim::Config::default());
    let (fast_s, normal_s) = rt.block_on(async {
        let handle = Handle::current();
        let member = harness::start_single_member(&handle, "node1");
        let node = member.node.id();
        let url = member.client_url();
        harness::client_node(&handle)
            .spawn(async move {
                // Let the member elect itself and serve.
                harness::connect_kv(&url).await;
                sleep(Duration::from_secs(3)).await;
                detcd::rt::set_clock_rate(node, 2_000_000);
                let fast_s = lease_lifetime_s(&url, 10).await;
                detcd::rt::set_clock_rate(node, 1_000_000);
                let normal_s = lease_lifetime_s(&url, 10).await;
                (fast_s, normal_s)
            })
            .await
            .expect("client task")
    });
    // etcd's lessor checks expiry every 500 ms, so each lifetime may run a little over.
    assert!(
        (5..=6).contains(&fast_s),
        "a 10 s lease on a 2x clock lived {fast_s} s"
    );
    assert!(
        (10..=11).contains(&normal_s),
        "a 10 s lease at the real rate lived {normal_s} s"
    );
}
