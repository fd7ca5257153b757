//! Lease expiry under simulation: a member grants leases, keys are attached, and two
//! simulated minutes later the unrenewed lease's keys are gone while a lease renewed over a
//! keep-alive stream survives. Simulated time makes the minutes take milliseconds, and the
//! same seed gives the same answers, byte for byte.
#![cfg(madsim)]

use std::hash::{Hash, Hasher};
use std::time::Duration;

use detcd::pb::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseLeasesRequest, LeaseRevokeRequest,
    LeaseTimeToLiveRequest, PutRequest, RangeRequest, WatchCreateRequest, WatchRequest,
};
use detcd_sim::harness;
use prost::Message;

/// What one run observed, beyond the hash of every response.
#[derive(Debug, PartialEq)]
struct Observed {
    hash: u64,
    /// Keys left under `a/` (the expiring lease) and `b/` (the renewed one).
    a_keys: usize,
    b_keys: usize,
    /// TimeToLive of the expiring lease after two minutes.
    a_ttl: i64,
    a_granted_ttl: i64,
    /// Leases listed after two minutes.
    leases: Vec<i64>,
    b_id: i64,
    /// Simulated seconds the workload took.
    simulated_s: u64,
    /// What a watcher on `a/` saw when the lease expired: (key, event type, revision).
    a_deletes: Vec<(String, i32, i64)>,
}

/// Counts the keys under `prefix/`, hashing the response.
async fn count(
    kv: &mut detcd::pb::etcdserverpb::kv_client::KvClient<tonic::transport::Channel>,
    prefix: &str,
    hasher: &mut impl Hasher,
) -> usize {
    let resp = kv
        .range(RangeRequest {
            key: format!("{prefix}/").into_bytes(),
            range_end: format!("{prefix}0").into_bytes(),
            ..Default::default()
        })
        .await
        .expect("range")
        .into_inner();
    resp.encode_to_vec().hash(hasher);
    resp.kvs.len()
}

fn run(seed: u64) -> Observed {
    harness::single_member_client(seed, move |url| async move {
        let mut kv = harness::connect_kv(&url).await;
        let mut lease = harness::connect_lease(&url).await;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        let start = madsim::time::Instant::now();

        // Lease A: explicit id, never renewed. Lease B: generated id, kept alive.
        let a = lease
            .lease_grant(LeaseGrantRequest { ttl: 60, id: 0xa })
            .await
            .expect("grant a")
            .into_inner();
        assert_eq!((a.id, a.ttl), (0xa, 60));
        a.encode_to_vec().hash(&mut hasher);
        let b = lease
            .lease_grant(LeaseGrantRequest { ttl: 60, id: 0 })
            .await
            .expect("grant b")
            .into_inner();
        assert!(b.id > 0 && b.ttl == 60, "{b:?}");
        b.encode_to_vec().hash(&mut hasher);

        for (prefix, id) in [("a", a.id), ("b", b.id)] {
            for i in 0..3 {
                let resp = kv
                    .put(PutRequest {
                        key: format!("{prefix}/{i}").into_bytes(),
                        value: b"v".to_vec(),
                        lease: id,
                        ..Default::default()
                    })
                    .await
                    .expect("put")
                    .into_inner();
                resp.encode_to_vec().hash(&mut hasher);
            }
        }

        // A watcher on `a/` from now on: the expiry must reach it as deletes.
        let mut watch = harness::connect_watch(&url).await;
        let (watch_tx, watch_rx) = tokio::sync::mpsc::channel(4);
        watch_tx
            .send(WatchRequest {
                request_union: Some(
                    detcd::pb::etcdserverpb::watch_request::RequestUnion::CreateRequest(
                        WatchCreateRequest {
                            key: b"a/".to_vec(),
                            range_end: b"a0".to_vec(),
                            ..Default::default()
                        },
                    ),
                ),
            })
            .await
            .unwrap();
        let mut watch_stream = watch
            .watch(tokio_stream::wrappers::ReceiverStream::new(watch_rx))
            .await
            .expect("watch")
            .into_inner();
        let created = watch_stream.message().await.unwrap().expect("created");
        assert!(created.created, "{created:?}");

        // Keep B alive every 20 simulated seconds for two minutes.
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(LeaseKeepAliveRequest { id: b.id }).await.unwrap();
        let mut stream = lease
            .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .expect("keep-alive stream")
            .into_inner();
        for round in 0..7 {
            let r = stream
                .message()
                .await
                .expect("keep-alive response")
                .expect("stream open");
            assert_eq!((r.id, r.ttl), (b.id, 60), "round {round}");
            r.encode_to_vec().hash(&mut hasher);
            madsim::time::sleep(Duration::from_secs(20)).await;
            if round < 6 {
                tx.send(LeaseKeepAliveRequest { id: b.id }).await.unwrap();
            }
        }
        let simulated_s = start.elapsed().as_secs();
        let expired = watch_stream.message().await.unwrap().expect("deletes");
        expired.encode_to_vec().hash(&mut hasher);
        let a_deletes = expired
            .events
            .iter()
            .map(|e| {
                let kv = e.kv.as_ref().unwrap();
                (
                    String::from_utf8_lossy(&kv.key).into_owned(),
                    e.r#type,
                    kv.mod_revision,
                )
            })
            .collect();

        let a_keys = count(&mut kv, "a", &mut hasher).await;
        let b_keys = count(&mut kv, "b", &mut hasher).await;

        let ttl = lease
            .lease_time_to_live(LeaseTimeToLiveRequest {
                id: a.id,
                keys: true,
            })
            .await
            .expect("ttl")
            .into_inner();
        ttl.encode_to_vec().hash(&mut hasher);
        let list = lease
            .lease_leases(LeaseLeasesRequest {})
            .await
            .expect("leases")
            .into_inner();
        list.encode_to_vec().hash(&mut hasher);
        let revoke = lease.lease_revoke(LeaseRevokeRequest { id: a.id }).await;
        let err = revoke.expect_err("revoking an expired lease");
        assert_eq!(err.code(), tonic::Code::NotFound);
        assert_eq!(err.message(), "etcdserver: requested lease not found");
        err.message().hash(&mut hasher);
        simulated_s.hash(&mut hasher);

        Observed {
            hash: hasher.finish(),
            a_keys,
            b_keys,
            a_ttl: ttl.ttl,
            a_granted_ttl: ttl.granted_ttl,
            leases: list.leases.iter().map(|l| l.id).collect(),
            b_id: b.id,
            simulated_s,
            a_deletes,
        }
    })
}

#[test]
fn unrenewed_lease_expires_in_simulated_time() {
    let wall = std::time::Instant::now();
    let first = harness::on_fresh_thread(|| run(11));
    let wall_one = wall.elapsed();
    println!("two simulated minutes took {wall_one:?} of wall time: {first:?}");

    assert!(first.simulated_s >= 120, "{first:?}");
    assert_eq!(first.a_keys, 0, "keys of the expired lease are gone");
    assert_eq!(
        (first.a_ttl, first.a_granted_ttl),
        (-1, 0),
        "lease not found"
    );
    assert_eq!(first.b_keys, 3, "the renewed lease keeps its keys");
    // The watcher saw the three keys deleted in one response, at one revision (one txn).
    assert_eq!(first.a_deletes.len(), 3, "{first:?}");
    let rev = first.a_deletes[0].2;
    for (i, (key, kind, r)) in first.a_deletes.iter().enumerate() {
        assert_eq!(key, &format!("a/{i}"));
        assert_eq!(*kind, detcd::pb::mvccpb::event::EventType::Delete as i32);
        assert_eq!(*r, rev, "all deletes share the revocation's revision");
    }
    assert_eq!(first.leases, vec![first.b_id]);
    // Simulated time does not wait for the clock: two simulated minutes must take less
    // wall time than two real ones. That limit is generous on purpose (a debug build on a
    // loaded machine is slow, and the figure printed above says how slow); a run that
    // slept through real time would still exceed it.
    assert!(
        wall_one < Duration::from_secs(first.simulated_s),
        "{} simulated seconds took {wall_one:?} of wall time",
        first.simulated_s
    );

    let second = harness::on_fresh_thread(|| run(11));
    assert_eq!(first, second, "same seed, different responses");
}
