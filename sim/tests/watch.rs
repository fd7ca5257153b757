//! A watcher in simulation: it sees every write to its prefix in order, a late watcher
//! replays history, and the same seed gives the same trace.
#![cfg(madsim)]

use std::time::Duration;

use detcd::pb::etcdserverpb::watch_request::RequestUnion;
use detcd::pb::etcdserverpb::{PutRequest, WatchCreateRequest, WatchRequest};
use detcd_sim::harness;

fn create(key: &str, start_revision: i64) -> WatchRequest {
    WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
            key: key.into(),
            range_end: b"w0".to_vec(),
            start_revision,
            ..Default::default()
        })),
    }
}

/// One watch response as observed: (watch id, revision, events as key and revision).
type Observed = (i64, i64, Vec<(String, i64)>);

/// Runs the workload under `seed`; returns the trace (watch id, header revision, event
/// keys and revisions) of every watch response, and the simulated time it ended at.
fn run(seed: u64) -> (Vec<Observed>, Duration) {
    harness::single_member_client(seed, move |url| async move {
        let start = madsim::time::Instant::now();
        let mut kv = harness::connect_kv(&url).await;
        let mut watch = harness::connect_watch(&url).await;
        let (req_tx, req_rx) = tokio::sync::mpsc::channel(16);
        req_tx.send(create("w/", 0)).await.unwrap();
        let mut responses = watch
            .watch(tokio_stream::wrappers::ReceiverStream::new(req_rx))
            .await
            .expect("watch")
            .into_inner();
        let mut trace = Vec::new();
        let mut record = |r: detcd::pb::etcdserverpb::WatchResponse| {
            let evs = r
                .events
                .iter()
                .map(|e| {
                    let kv = e.kv.as_ref().unwrap();
                    (
                        String::from_utf8_lossy(&kv.key).into_owned(),
                        kv.mod_revision,
                    )
                })
                .collect::<Vec<_>>();
            trace.push((r.watch_id, r.header.unwrap().revision, evs));
        };
        record(responses.message().await.unwrap().unwrap());
        for i in 0..20u32 {
            kv.put(PutRequest {
                key: format!("w/{}", i % 4).into_bytes(),
                value: vec![b'v'; i as usize],
                ..Default::default()
            })
            .await
            .expect("put");
            madsim::time::sleep(Duration::from_millis(u64::from(i % 3))).await;
        }
        // A second watcher on the same stream replays history from revision 5.
        req_tx.send(create("w/", 5)).await.unwrap();
        let mut events = 0;
        let mut replayed = 0;
        while events < 20 || replayed < 16 {
            let r = responses.message().await.unwrap().unwrap();
            if r.watch_id == 0 {
                events += r.events.len();
            } else {
                replayed += r.events.len();
            }
            record(r);
        }
        (trace, start.elapsed())
    })
}

#[test]
fn watcher_sees_every_write_and_same_seed_same_trace() {
    let (trace_a, time_a) = harness::on_fresh_thread(|| run(11));
    let (trace_b, time_b) = harness::on_fresh_thread(|| run(11));
    assert_eq!(trace_a, trace_b, "same seed, different trace");
    assert_eq!(time_a, time_b, "same seed, different simulated time");
    // The first response is the creation at revision 1; then one response per write,
    // w/{i % 4} at revision i + 2.
    assert_eq!(trace_a[0], (0, 1, vec![]));
    let live: Vec<(String, i64)> = trace_a
        .iter()
        .filter(|(id, _, evs)| *id == 0 && !evs.is_empty())
        .flat_map(|(_, _, evs)| evs.clone())
        .collect();
    let want: Vec<(String, i64)> = (0..20).map(|i| (format!("w/{}", i % 4), i + 2)).collect();
    assert_eq!(live, want);
    // The late watcher: created at revision 21, then history from revision 5 on.
    let late: Vec<&Observed> = trace_a.iter().filter(|(id, _, _)| *id == 1).collect();
    assert_eq!((late[0].1, late[0].2.len()), (21, 0));
    let replay: Vec<(String, i64)> = late[1..].iter().flat_map(|(_, _, e)| e.clone()).collect();
    assert_eq!(replay, want[3..].to_vec());
}
