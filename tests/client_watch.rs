//! The Watch service through the Rust `etcd-client` crate. Concrete answers were checked
//! against etcd 3.4.23 (`DETCD_TEST_SERVER=etcd cargo test --test client_watch`).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{within, Server};
use etcd_client::{
    Client, EventType, PutOptions, Txn, TxnOp, WatchFilterType, WatchOptions, WatchResponse,
    WatchStream,
};

/// The next response, bounded in time.
async fn next(s: &mut WatchStream) -> WatchResponse {
    within(15, "watch response", s.message())
        .await
        .expect("watch stream error")
        .expect("watch stream ended")
}

/// Nothing arrives for `ms` milliseconds.
async fn quiet(s: &mut WatchStream, ms: u64) {
    if let Ok(r) = tokio::time::timeout(Duration::from_millis(ms), s.message()).await {
        panic!("unexpected response: {r:?}");
    }
}

/// (type, key, value, mod revision) of each event.
fn evs(r: &WatchResponse) -> Vec<(&'static str, String, String, i64)> {
    r.events()
        .iter()
        .map(|e| {
            let kv = e.kv().unwrap();
            (
                match e.event_type() {
                    EventType::Put => "PUT",
                    EventType::Delete => "DELETE",
                },
                String::from_utf8_lossy(kv.key()).into_owned(),
                String::from_utf8_lossy(kv.value()).into_owned(),
                kv.mod_revision(),
            )
        })
        .collect()
}

fn ev(t: &'static str, k: &str, v: &str, rev: i64) -> (&'static str, String, String, i64) {
    (t, k.to_string(), v.to_string(), rev)
}

fn rev(r: &WatchResponse) -> i64 {
    r.header().unwrap().revision()
}

async fn put(c: &mut Client, k: &str, v: &str) -> i64 {
    within(10, "put", c.put(k, v, None))
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision()
}

#[tokio::test]
async fn many_watchers_on_one_stream_ids_errors_and_cancel() {
    let s = Server::start();
    let mut c = s.client().await;
    let mut w = within(10, "watch", c.watch("a", None)).await.unwrap();
    let r = next(&mut w).await;
    assert!(r.created() && !r.canceled());
    assert_eq!((r.watch_id(), rev(&r)), (0, 1));
    // A client-chosen id, then an automatic one (etcd counts on from 1), then the same
    // client id again, then an empty range.
    w.watch("b", Some(WatchOptions::new().with_watch_id(7)))
        .await
        .unwrap();
    w.watch("c", None).await.unwrap();
    w.watch("d", Some(WatchOptions::new().with_watch_id(7)))
        .await
        .unwrap();
    w.watch("z", Some(WatchOptions::new().with_range("a")))
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..4 {
        let r = next(&mut w).await;
        got.push((
            r.watch_id(),
            r.created(),
            r.canceled(),
            r.cancel_reason().to_string(),
            rev(&r),
        ));
    }
    assert_eq!(
        got,
        vec![
            (7, true, false, String::new(), 1),
            (1, true, false, String::new(), 1),
            (
                -1,
                true,
                true,
                "mvcc: duplicate watch ID provided on the WatchStream".into(),
                1
            ),
            (-1, true, true, "mvcc: watcher range is empty".into(), 1),
        ]
    );
    put(&mut c, "a", "1").await;
    put(&mut c, "b", "2").await;
    put(&mut c, "c", "3").await;
    let mut got = BTreeMap::new();
    for _ in 0..3 {
        let r = next(&mut w).await;
        got.insert(r.watch_id(), (rev(&r), evs(&r)));
    }
    assert_eq!(got[&0], (2, vec![ev("PUT", "a", "1", 2)]));
    assert_eq!(got[&7], (3, vec![ev("PUT", "b", "2", 3)]));
    assert_eq!(got[&1], (4, vec![ev("PUT", "c", "3", 4)]));
    // Cancel answers once, with the current revision; an unknown id gets no answer.
    w.cancel(7).await.unwrap();
    let r = next(&mut w).await;
    assert_eq!(
        (r.watch_id(), r.canceled(), r.created(), rev(&r)),
        (7, true, false, 4)
    );
    w.cancel(99).await.unwrap();
    quiet(&mut w, 300).await;
    put(&mut c, "b", "x").await;
    put(&mut c, "a", "y").await;
    let r = next(&mut w).await;
    assert_eq!((r.watch_id(), evs(&r)), (0, vec![ev("PUT", "a", "y", 6)]));
}

#[tokio::test]
async fn progress_request_answers_with_current_revision() {
    let s = Server::start();
    let mut c = s.client().await;
    let mut w = within(10, "watch", c.watch("p", None)).await.unwrap();
    next(&mut w).await;
    put(&mut c, "other", "1").await;
    put(&mut c, "other", "2").await;
    w.request_progress().await.unwrap();
    let r = next(&mut w).await;
    assert_eq!(
        (
            r.watch_id(),
            r.created(),
            r.canceled(),
            rev(&r),
            r.events().len()
        ),
        (-1, false, false, 3, 0)
    );
}

#[tokio::test]
async fn progress_notify_interval_flag() {
    let s = Server::start_with_args(&["--experimental-watch-progress-notify-interval=1s"]);
    let mut c = s.client().await;
    put(&mut c, "x", "1").await;
    let mut w = within(
        10,
        "watch",
        c.watch("p", Some(WatchOptions::new().with_progress_notify())),
    )
    .await
    .unwrap();
    next(&mut w).await;
    // Nothing happens on "p": a progress notification with the current revision.
    let r = next(&mut w).await;
    assert_eq!(
        (r.watch_id(), r.created(), rev(&r), r.events().len()),
        (0, false, 2, 0)
    );
}

#[tokio::test]
async fn history_prev_kv_and_filters() {
    let s = Server::start();
    let mut c = s.client().await;
    put(&mut c, "k", "1").await; // 2
    put(&mut c, "k", "2").await; // 3
    within(10, "del", c.delete("k", None)).await.unwrap(); // 4
    put(&mut c, "k", "3").await; // 5
    let mut w = within(
        10,
        "watch",
        c.watch(
            "k",
            Some(WatchOptions::new().with_start_revision(2).with_prev_key()),
        ),
    )
    .await
    .unwrap();
    let r = next(&mut w).await;
    assert_eq!((r.created(), rev(&r)), (true, 5));
    // History arrives in one response with the current revision in its header.
    let r = next(&mut w).await;
    assert_eq!(rev(&r), 5);
    assert_eq!(
        evs(&r),
        vec![
            ev("PUT", "k", "1", 2),
            ev("PUT", "k", "2", 3),
            ev("DELETE", "k", "", 4),
            ev("PUT", "k", "3", 5),
        ]
    );
    let prev: Vec<Option<String>> = r
        .events()
        .iter()
        .map(|e| {
            e.prev_kv()
                .map(|p| String::from_utf8_lossy(p.value()).into_owned())
        })
        .collect();
    assert_eq!(prev, vec![None, Some("1".into()), Some("2".into()), None]);
    // Filters: NOPUT sees only deletes, NODELETE only puts.
    w.watch(
        "k",
        Some(
            WatchOptions::new()
                .with_start_revision(2)
                .with_filters([WatchFilterType::NoPut]),
        ),
    )
    .await
    .unwrap();
    assert!(next(&mut w).await.created());
    let r = next(&mut w).await;
    assert_eq!((r.watch_id(), evs(&r)), (1, vec![ev("DELETE", "k", "", 4)]));
    w.watch(
        "k",
        Some(WatchOptions::new().with_filters([WatchFilterType::NoDelete])),
    )
    .await
    .unwrap();
    assert!(next(&mut w).await.created());
    within(10, "del", c.delete("k", None)).await.unwrap(); // 6
    put(&mut c, "k", "4").await; // 7
    let mut got = Vec::new();
    for _ in 0..4 {
        let r = next(&mut w).await;
        got.push((r.watch_id(), evs(&r)));
    }
    got.sort();
    assert_eq!(
        got,
        vec![
            (0, vec![ev("DELETE", "k", "", 6)]),
            (0, vec![ev("PUT", "k", "4", 7)]),
            (1, vec![ev("DELETE", "k", "", 6)]),
            (2, vec![ev("PUT", "k", "4", 7)]),
        ]
    );
}

#[tokio::test]
async fn compacted_start_revision_is_canceled() {
    let s = Server::start();
    let mut c = s.client().await;
    for i in 0..4 {
        put(&mut c, "k", &i.to_string()).await;
    }
    within(10, "compact", c.compact(4, None)).await.unwrap();
    let mut w = within(
        10,
        "watch",
        c.watch("k", Some(WatchOptions::new().with_start_revision(2))),
    )
    .await
    .unwrap();
    let r = next(&mut w).await;
    assert_eq!((r.created(), r.canceled(), rev(&r)), (true, false, 5));
    let r = next(&mut w).await;
    assert_eq!(
        (
            r.watch_id(),
            r.created(),
            r.canceled(),
            r.compact_revision(),
            r.header().map(|h| h.revision())
        ),
        (0, false, true, 4, Some(0))
    );
    // The compact revision itself is still watchable.
    w.watch("k", Some(WatchOptions::new().with_start_revision(4)))
        .await
        .unwrap();
    assert!(next(&mut w).await.created());
    let r = next(&mut w).await;
    assert_eq!(
        evs(&r),
        vec![ev("PUT", "k", "2", 4), ev("PUT", "k", "3", 5)]
    );
}

#[tokio::test]
async fn fragment_splits_large_responses() {
    let s = Server::start();
    let mut c = s.client().await;
    let big = "v".repeat(700 * 1024);
    for k in ["f1", "f2", "f3"] {
        put(&mut c, k, &big).await;
    }
    let opts = WatchOptions::new().with_prefix().with_start_revision(2);
    // Without fragment: all three revisions in one response.
    let mut w = within(10, "watch", c.watch("f", Some(opts.clone())))
        .await
        .unwrap();
    next(&mut w).await;
    assert_eq!(next(&mut w).await.events().len(), 3);
    // With fragment: split below --max-request-bytes (1.5 MiB): two events, then one.
    let mut w = within(10, "watch", c.watch("f", Some(opts.with_fragment())))
        .await
        .unwrap();
    next(&mut w).await;
    assert_eq!(next(&mut w).await.events().len(), 2);
    assert_eq!(next(&mut w).await.events().len(), 1);
}

/// Reads responses until `n` events arrived, checking the guarantees on the way: event
/// revisions strictly increase across responses (ordered, unique, and a revision never
/// continues in a later response: atomic), and each header covers its events.
async fn collect_events(w: &mut WatchStream, n: usize) -> Vec<(String, i64)> {
    let mut out: Vec<(String, i64)> = Vec::new();
    while out.len() < n {
        let r = next(w).await;
        assert!(!r.canceled(), "canceled: {r:?}");
        if r.created() || r.events().is_empty() {
            continue;
        }
        let first = r.events()[0].kv().unwrap().mod_revision();
        if let Some((_, last)) = out.last() {
            assert!(*last < first, "revision {first} after {last}");
        }
        for e in r.events() {
            let kv = e.kv().unwrap();
            assert!(kv.mod_revision() <= rev(&r), "header behind its events");
            out.push((
                String::from_utf8_lossy(kv.key()).into_owned(),
                kv.mod_revision(),
            ));
        }
    }
    out
}

#[tokio::test]
async fn txn_events_arrive_atomically_and_resume_exactly() {
    let s = Server::start();
    let mut c = s.client().await;
    let mut w = within(
        10,
        "watch",
        c.watch("t/", Some(WatchOptions::new().with_prefix())),
    )
    .await
    .unwrap();
    next(&mut w).await;
    // 50 txns of three puts each, from 4 writers at once.
    let mut tasks = Vec::new();
    for t in 0..4 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                if i % 4 != t {
                    continue;
                }
                let ops = (0..3)
                    .map(|j| TxnOp::put(format!("t/{i}/{j}"), "x", None))
                    .collect::<Vec<_>>();
                c.txn(Txn::new().and_then(ops)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        within(60, "writers", t).await.unwrap();
    }
    let got = collect_events(&mut w, 150).await;
    // Reliable: every revision 2..=51, three events each.
    let mut per_rev: BTreeMap<i64, usize> = BTreeMap::new();
    for (_, r) in &got {
        *per_rev.entry(*r).or_default() += 1;
    }
    assert_eq!(
        per_rev.keys().copied().collect::<Vec<_>>(),
        (2..=51).collect::<Vec<_>>()
    );
    assert!(per_rev.values().all(|n| *n == 3));
    // Resumable: from the 100th event's revision + 1, exactly the rest.
    let cut = got[98].1;
    let mut w2 = within(
        10,
        "watch",
        c.watch(
            "t/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(cut + 1),
            ),
        ),
    )
    .await
    .unwrap();
    next(&mut w2).await;
    let want: Vec<(String, i64)> = got.iter().filter(|(_, r)| *r > cut).cloned().collect();
    assert_eq!(collect_events(&mut w2, want.len()).await, want);
}

#[tokio::test]
async fn slow_watcher_gets_all_10000_writes_in_order() {
    let s = Server::start();
    let mut c = s.client().await;
    // One watcher that does not read while the writes happen, one that reads; the slow
    // one on its own connection (HTTP/2 flow control is per connection too).
    let mut sc = s.client().await;
    let mut slow = within(
        10,
        "watch",
        sc.watch("s/", Some(WatchOptions::new().with_prefix())),
    )
    .await
    .unwrap();
    next(&mut slow).await;
    let mut fast = within(
        10,
        "watch",
        c.watch("s/", Some(WatchOptions::new().with_prefix())),
    )
    .await
    .unwrap();
    next(&mut fast).await;
    let reader = tokio::spawn(async move { collect_events(&mut fast, 10_000).await });
    let mut tasks = Vec::new();
    for t in 0..8 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            for i in (t..10_000).step_by(8) {
                c.put(format!("s/{i:05}"), "v", None).await.unwrap();
            }
        }));
    }
    for t in tasks {
        within(300, "writers", t).await.unwrap();
    }
    let want: Vec<i64> = (2..=10_001).collect();
    let fast_got = within(120, "fast reader", reader).await.unwrap();
    assert_eq!(fast_got.iter().map(|(_, r)| *r).collect::<Vec<_>>(), want);
    let slow_got = within(120, "slow reader", collect_events(&mut slow, 10_000)).await;
    assert_eq!(slow_got, fast_got);
    // And it is live again afterwards.
    let r = put(&mut c, "s/last", "v").await;
    let last = collect_events(&mut slow, 1).await;
    assert_eq!(last, vec![("s/last".to_string(), r)]);
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test]
async fn ten_thousand_unread_watchers_keep_memory_bounded() {
    let s = Server::start();
    let c = s.client().await;
    // The watchers use their own connection: HTTP/2 flow control is per connection too,
    // so unread streams would otherwise hold up the writers' responses in the client.
    let mut wc = s.client().await;
    // The stream read at the end has a connection of its own, for the same reason.
    let mut rc = s.client().await;
    // 10,000 watchers on one prefix, on 100 streams nobody reads.
    let mut streams = Vec::new();
    for i in 0..100 {
        let client = if i == 0 { &mut rc } else { &mut wc };
        let mut w = within(
            10,
            "watch",
            client.watch("m/", Some(WatchOptions::new().with_prefix())),
        )
        .await
        .unwrap();
        for _ in 1..100 {
            w.watch("m/", Some(WatchOptions::new().with_prefix()))
                .await
                .unwrap();
        }
        streams.push(w);
    }
    eprintln!("created 10,000 watchers");
    // Let the creates land, then measure.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = rss_kib(s.pid().unwrap());
    // 2,000 writes of 1 KiB: unbounded queues would hold 10,000 x 2,000 events (20 GB).
    let value = "m".repeat(1024);
    let mut tasks = Vec::new();
    for t in 0..8 {
        let mut c = c.clone();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            for i in (t..2000).step_by(8) {
                c.put(format!("m/{i}"), value.clone(), Some(PutOptions::new()))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        within(300, "writers", t).await.unwrap();
    }
    let after = rss_kib(s.pid().unwrap());
    eprintln!("writes done: rss {before} KiB -> {after} KiB");
    // Unbounded queues would grow by about 20 GB; the bound is far below that yet leaves
    // room for the allocator and sled's cache, whose growth varies from run to run
    // (about 300-500 MB measured).
    assert!(
        after < before + 1024 * 1024,
        "server memory grew from {before} KiB to {after} KiB"
    );
    // The watchers are still served: one stream, read now, gets every event in order
    // for each of its 100 watchers.
    let mut per_id: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    while per_id.len() < 100 || per_id.values().any(|v| v.len() < 2000) {
        let r = next(&mut streams[0]).await;
        assert!(!r.canceled());
        let revs = per_id.entry(r.watch_id()).or_default();
        revs.extend(r.events().iter().map(|e| e.kv().unwrap().mod_revision()));
        assert!(revs.len() <= 2000);
    }
    let want: Vec<i64> = (2..=2001).collect();
    assert!(per_id.values().all(|v| *v == want));
    drop(streams);
}
