//! Tests of the watch checker: hand-made streams that pass or break one guarantee each,
//! streams generated from random histories that must pass, and single mutations of them
//! that must fail.

use proptest::prelude::*;

use super::*;
use crate::check::generate::{random_history, GenerateConfig};
use crate::check::model::{DeleteRequest, PutRequest, TxnOp, TxnRequest};

/// SplitMix64, to lay out generated streams from a seed.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }

    fn between(&mut self, lo: i64, hi: i64) -> i64 {
        if hi <= lo {
            lo
        } else {
            lo + i64::try_from(self.below(u64::try_from(hi - lo + 1).unwrap_or(1))).unwrap_or(0)
        }
    }
}

/// How to lay out a generated stream.
#[derive(Default, Clone, Copy)]
struct Plan {
    /// Per mille of revisions that join the previous response instead of starting one.
    merge: u64,
    /// Per mille of responses followed by a progress notification.
    progress: u64,
    /// Per mille of responses after which the stream is cut and resumed.
    cut: u64,
    /// Per mille of multi-event responses split into fragments (if asked for).
    split: u64,
}

fn put(k: &str, v: &str) -> Input {
    Input::Put(PutRequest {
        key: k.into(),
        value: v.into(),
        ..PutRequest::default()
    })
}

fn del(k: &str) -> Input {
    Input::Delete(DeleteRequest {
        key: k.into(),
        ..DeleteRequest::default()
    })
}

/// A txn that puts `a` and deletes `b` in one revision.
fn put_and_delete(a: &str, v: &str, b: &str) -> Input {
    Input::Txn(TxnRequest {
        compares: vec![],
        success: vec![
            TxnOp::Put(PutRequest {
                key: a.into(),
                value: v.into(),
                ..PutRequest::default()
            }),
            TxnOp::Delete(DeleteRequest {
                key: b.into(),
                ..DeleteRequest::default()
            }),
        ],
        failure: vec![],
    })
}

/// Revisions 2..=7: a=1, b=1, a=2, {c=1, delete b}, delete a, b=2.
fn small_history() -> KvHistory {
    let inputs = [
        put("a", "1"),
        put("b", "1"),
        put("a", "2"),
        put_and_delete("c", "1", "b"),
        del("a"),
        put("b", "2"),
    ];
    KvHistory::from_inputs(&Model::new(), inputs.iter())
}

/// Every key.
fn all_keys() -> WatchRequest {
    WatchRequest {
        key: vec![0],
        range_end: vec![0],
        prev_kv: true,
        ..WatchRequest::default()
    }
}

/// The event a correct server sends for `change` at `rev`.
fn event_of(request: &WatchRequest, rev: i64, change: &Change) -> WatchEvent {
    WatchEvent {
        kind: change.kind(),
        kv: change.kv.clone().unwrap_or_else(|| KeyValue {
            key: change.key.clone(),
            mod_revision: rev,
            ..KeyValue::default()
        }),
        prev_kv: if request.prev_kv {
            change.prev.clone()
        } else {
            None
        },
    }
}

fn created(header_revision: i64) -> WatchResponse {
    WatchResponse {
        header_revision,
        created: true,
        ..WatchResponse::default()
    }
}

fn progress(header_revision: i64) -> WatchResponse {
    WatchResponse {
        header_revision,
        ..WatchResponse::default()
    }
}

/// A correct stream for `request` from `start_revision` (0: from after `created_header`)
/// over `history`, laid out by `plan`, ending with a progress notification at the last
/// revision so that nothing at the end can go missing unnoticed.
fn generate(
    history: &KvHistory,
    request: WatchRequest,
    start_revision: i64,
    created_header: i64,
    plan: Plan,
    seed: u64,
) -> WatchStream {
    let mut rng = Rng(seed);
    let index = Index::new(history);
    let last = history.last_revision();
    let start = if start_revision > 0 {
        start_revision
    } else {
        created_header + 1
    };
    // The matching events by revision.
    let mut groups: Vec<(i64, Vec<WatchEvent>)> = Vec::new();
    for (rev, change) in index.matching(&request, start, last) {
        let ev = event_of(&request, rev, change);
        match groups.last_mut() {
            Some((r, evs)) if *r == rev => evs.push(ev),
            _ => groups.push((rev, vec![ev])),
        }
    }
    let mut segments = vec![Segment {
        start_revision,
        responses: vec![created(created_header)],
        ..Segment::default()
    }];
    let mut through;
    let mut i = 0;
    while i < groups.len() {
        let mut events = groups[i].1.clone();
        let mut top = groups[i].0;
        i += 1;
        while i < groups.len() && rng.chance(plan.merge) {
            events.extend(groups[i].1.iter().cloned());
            top = groups[i].0;
            i += 1;
        }
        through = top;
        let header = rng.between(top, last);
        let seg = segments.last_mut().expect("there is a segment");
        if request.fragment && events.len() > 1 && rng.chance(plan.split) {
            let cut_at = 1 + usize::try_from(rng.below(events.len() as u64 - 1)).unwrap_or(0);
            let rest = events.split_off(cut_at);
            seg.responses.push(WatchResponse {
                header_revision: header,
                fragment: true,
                events,
                ..WatchResponse::default()
            });
            events = rest;
        }
        seg.responses.push(WatchResponse {
            header_revision: header,
            events,
            ..WatchResponse::default()
        });
        if rng.chance(plan.progress) {
            // Any revision before the next matching change is a true bookmark.
            let next = groups.get(i).map_or(last, |g| g.0 - 1);
            through = rng.between(through, next);
            seg.responses.push(progress(through));
        }
        if rng.chance(plan.cut) {
            seg.end = SegmentEnd::Cut;
            segments.push(Segment {
                start_revision: through + 1,
                responses: vec![created(rng.between(through, last))],
                ..Segment::default()
            });
        }
    }
    // Even when the last event is at the last revision, the bookmark is what shows
    // that nothing after it in the same response was lost.
    let seg = segments.last_mut().expect("there is a segment");
    seg.responses.push(progress(last));
    WatchStream {
        watcher: 7,
        request,
        segments,
    }
}

/// A plain stream: one response per revision, no cuts, a final progress notification.
fn plain(history: &KvHistory, request: WatchRequest, start_revision: i64) -> WatchStream {
    generate(history, request, start_revision, 1, Plan::default(), 0)
}

fn kinds(violations: &[WatchViolation]) -> Vec<ViolationKind> {
    let mut k: Vec<ViolationKind> = violations.iter().map(|v| v.kind).collect();
    k.sort();
    k.dedup();
    k
}

/// Asserts that exactly the kinds `expected` are reported, and prints them.
#[track_caller]
fn assert_kinds(stream: &WatchStream, history: &KvHistory, expected: &[ViolationKind]) {
    let v = check_watch(stream, history);
    for x in &v {
        eprintln!("{x}");
    }
    assert_eq!(kinds(&v), expected, "{v:#?}");
}

/// The response of the plain stream holding revision `rev` (segment 0).
fn response_of(stream: &WatchStream, rev: i64) -> usize {
    stream.segments[0]
        .responses
        .iter()
        .position(|r| r.events.iter().any(|e| e.kv.mod_revision == rev))
        .expect("revision delivered")
}

#[test]
fn history_records_changes_and_previous_values() {
    let h = small_history();
    assert_eq!(h.base_revision, 1);
    assert_eq!(h.last_revision(), 7);
    let revs: Vec<i64> = h.revisions.iter().map(|r| r.revision).collect();
    assert_eq!(revs, vec![2, 3, 4, 5, 6, 7]);
    let r5 = &h.revisions[3];
    assert_eq!(r5.changes.len(), 2);
    assert_eq!(r5.changes[0].key, b"c");
    assert_eq!(r5.changes[0].kind(), EventKind::Put);
    assert_eq!(r5.changes[1].key, b"b");
    assert_eq!(r5.changes[1].kind(), EventKind::Delete);
    assert_eq!(
        r5.changes[1].prev.as_ref().map(|kv| kv.mod_revision),
        Some(3)
    );
    let r4 = &h.revisions[2];
    assert_eq!(
        r4.changes[0]
            .kv
            .as_ref()
            .map(|kv| (kv.create_revision, kv.version)),
        Some((2, 2))
    );
}

#[test]
fn history_from_a_linearization_starts_from_the_initial_state() {
    let initial = Model::with_state(
        10,
        [KeyValue {
            key: "a".into(),
            value: "0".into(),
            create_revision: 5,
            mod_revision: 9,
            version: 3,
            lease: 0,
        }],
        [],
    );
    let ops = vec![
        Operation::unknown(0, 0, put("a", "1")),
        Operation::unknown(0, 1, Input::Compact { revision: 11 }),
        Operation::unknown(0, 2, Input::Compact { revision: 4 }),
        Operation::unknown(0, 3, del("a")),
    ];
    let lin = Linearization {
        order: vec![0, 1, 3],
        left_out: vec![2],
        steps: 0,
    };
    let h = KvHistory::from_linearization(&ops, &lin, &initial).expect("valid indices");
    assert_eq!(h.base_revision, 10);
    assert_eq!(h.compact_revisions, vec![4, 11]);
    assert_eq!(h.revisions.len(), 2);
    assert_eq!(
        h.revisions[0].changes[0].prev.as_ref().map(|kv| kv.version),
        Some(3)
    );
    assert_eq!(
        h.revisions[0].changes[0].kv.as_ref().map(|kv| kv.version),
        Some(4)
    );
    let bad = Linearization {
        order: vec![9],
        left_out: vec![],
        steps: 0,
    };
    assert_eq!(
        KvHistory::from_linearization(&ops, &bad, &initial),
        Err(HistoryBuildError::NoSuchOperation { op: 9 })
    );
}

#[test]
fn correct_streams_pass() {
    let h = small_history();
    for request in [
        all_keys(),
        WatchRequest {
            key: "b".into(),
            ..WatchRequest::default()
        },
        WatchRequest {
            key: "a".into(),
            range_end: "c".into(),
            no_delete: true,
            ..WatchRequest::default()
        },
        WatchRequest {
            no_put: true,
            ..all_keys()
        },
    ] {
        for start in [0, 1, 2, 4, 7, 8] {
            assert_kinds(&plain(&h, request.clone(), start), &h, &[]);
        }
    }
}

#[test]
fn a_gap_is_unreliable() {
    let h = small_history();
    let mut s = plain(&h, all_keys(), 2);
    let ri = response_of(&s, 4);
    s.segments[0].responses.remove(ri);
    assert_kinds(&s, &h, &[ViolationKind::Reliable]);
    let v = check_watch(&s, &h);
    assert_eq!(v[0].response_index, Some(ri), "blames the next response");
    assert!(v[0].explanation.contains("revision 4"), "{}", v[0]);
}

#[test]
fn a_duplicate_is_not_unique() {
    let h = small_history();
    let mut s = plain(&h, all_keys(), 2);
    let ri = response_of(&s, 3);
    let copy = s.segments[0].responses[ri].clone();
    s.segments[0].responses.insert(ri + 1, copy);
    assert_kinds(&s, &h, &[ViolationKind::Unique]);
}

#[test]
fn a_reorder_is_not_ordered() {
    let h = small_history();
    let mut s = plain(&h, all_keys(), 2);
    let (a, b) = (response_of(&s, 3), response_of(&s, 4));
    s.segments[0].responses.swap(a, b);
    assert_kinds(&s, &h, &[ViolationKind::Ordered]);
}

#[test]
fn a_split_revision_is_not_atomic_unless_fragmented() {
    let h = small_history();
    let mut s = plain(&h, all_keys(), 2);
    let ri = response_of(&s, 5);
    let second = s.segments[0].responses[ri]
        .events
        .pop()
        .expect("two events");
    let mut rest = s.segments[0].responses[ri].clone();
    rest.events = vec![second];
    s.segments[0].responses.insert(ri + 1, rest);
    assert_kinds(&s, &h, &[ViolationKind::Atomic]);
    // With fragments asked for and the first part flagged, the split is allowed.
    s.request.fragment = true;
    assert_kinds(&s, &h, &[ViolationKind::Atomic]);
    s.segments[0].responses[ri].fragment = true;
    assert_kinds(&s, &h, &[]);
}

#[test]
fn a_wrong_prev_kv_is_reported() {
    let h = small_history();
    let mut s = plain(&h, all_keys(), 2);
    let ri = response_of(&s, 4);
    s.segments[0].responses[ri].events[0].prev_kv = None;
    assert_kinds(&s, &h, &[ViolationKind::PrevKv]);
    // Once the store was compacted past the previous revision, etcd sends none.
    let mut compacted = h.clone();
    compacted.compact_revisions.push(5);
    assert_kinds(&s, &compacted, &[]);
    // A prev_kv nobody asked for is wrong too.
    let mut s = plain(&h, all_keys(), 2);
    s.request.prev_kv = false;
    assert_kinds(&s, &h, &[ViolationKind::PrevKv]);
}

#[test]
fn a_wrong_value_or_revision_is_reported() {
    let h = small_history();
    let mut s = plain(&h, all_keys(), 2);
    let ri = response_of(&s, 4);
    s.segments[0].responses[ri].events[0].kv.value = b"x".to_vec();
    assert_kinds(&s, &h, &[ViolationKind::Content]);
    let mut s = plain(&h, all_keys(), 2);
    s.segments[0].responses[ri].events[0].kv.version = 1;
    assert_kinds(&s, &h, &[ViolationKind::Content]);
    let mut s = plain(&h, all_keys(), 2);
    let ri = response_of(&s, 6);
    s.segments[0].responses[ri].events[0].kind = EventKind::Put;
    assert_kinds(&s, &h, &[ViolationKind::Content]);
}

#[test]
fn an_unwatched_event_is_reported() {
    let h = small_history();
    let mut s = plain(
        &h,
        WatchRequest {
            key: "a".into(),
            ..WatchRequest::default()
        },
        2,
    );
    let b = event_of(&s.request, 3, &h.revisions[1].changes[0]);
    s.segments[0].responses.insert(
        2,
        WatchResponse {
            header_revision: 3,
            events: vec![b],
            ..WatchResponse::default()
        },
    );
    assert_kinds(&s, &h, &[ViolationKind::Filter]);
}

#[test]
fn a_premature_progress_notification_is_reported() {
    let h = small_history();
    // The bookmark at 4 comes before the event at 4: it arrives late.
    let mut s = plain(&h, all_keys(), 2);
    let ri = response_of(&s, 4);
    s.segments[0].responses.insert(ri, progress(4));
    assert_kinds(&s, &h, &[ViolationKind::Bookmarkable]);
    // The bookmark at 7 covers an event that never comes.
    let mut s = plain(&h, all_keys(), 2);
    let ri = response_of(&s, 7);
    s.segments[0].responses[ri] = progress(7);
    assert_kinds(&s, &h, &[ViolationKind::Reliable]);
    let v = check_watch(&s, &h);
    assert!(
        v[0].explanation.contains("progress notification"),
        "{}",
        v[0]
    );
}

#[test]
fn resumes_that_replay_or_skip_are_reported() {
    let h = small_history();
    let request = all_keys();
    let good = generate(
        &h,
        request.clone(),
        2,
        1,
        Plan {
            cut: 1000,
            ..Plan::default()
        },
        1,
    );
    assert!(good.segments.len() > 2);
    assert_kinds(&good, &h, &[]);
    // Resuming from the revision already delivered replays it.
    let mut replay = good.clone();
    let first_resume = replay.segments[1].start_revision;
    replay.segments[1].start_revision = first_resume - 1;
    let mut again = replay.segments[0].responses[1].clone();
    again.header_revision = first_resume;
    replay.segments[1].responses.insert(1, again);
    assert_kinds(
        &replay,
        &h,
        &[ViolationKind::Unique, ViolationKind::Resumable],
    );
    // Resuming one revision too late skips it.
    let mut skip = good.clone();
    skip.segments[1].start_revision = first_resume + 1;
    skip.segments[1].responses.remove(1);
    assert_kinds(&skip, &h, &[ViolationKind::Resumable]);
}

#[test]
fn compacted_watches_must_be_canceled() {
    let mut h = small_history();
    h.compact_revisions.push(5);
    let request = all_keys();
    // Canceled with the compact revision: correct, and a resume from there is too.
    let canceled = WatchResponse {
        canceled: true,
        compact_revision: 5,
        ..WatchResponse::default()
    };
    let mut s = plain(&h, request.clone(), 5);
    s.segments.insert(
        0,
        Segment {
            start_revision: 3,
            known_compact_revision: 5,
            responses: vec![created(7), canceled.clone()],
            end: SegmentEnd::Closed,
        },
    );
    assert_kinds(&s, &h, &[]);
    // Events for a compacted start instead of a cancel.
    let mut wrong = plain(&h, request.clone(), 3);
    wrong.segments[0].known_compact_revision = 5;
    assert_kinds(&wrong, &h, &[ViolationKind::Compaction]);
    // A cancel although nothing needed is compacted.
    let mut early = plain(&h, request.clone(), 6);
    early.segments[0].responses.insert(1, canceled.clone());
    early.segments[0].responses.truncate(2);
    assert_kinds(&early, &h, &[ViolationKind::Compaction]);
    // A compact revision no compaction had.
    let mut unknown = s.clone();
    unknown.segments[0].responses[1].compact_revision = 4;
    assert_kinds(
        &unknown,
        &h,
        &[ViolationKind::Resumable, ViolationKind::Compaction],
    );
    // Anything after a cancel.
    let mut after = s.clone();
    after.segments[0].responses.push(progress(7));
    assert_kinds(&after, &h, &[ViolationKind::Protocol]);
}

#[test]
fn garbage_does_not_panic() {
    let h = small_history();
    let ev = |rev: i64| WatchEvent {
        kind: EventKind::Delete,
        kv: KeyValue {
            key: vec![],
            mod_revision: rev,
            ..KeyValue::default()
        },
        prev_kv: None,
    };
    let s = WatchStream {
        watcher: 1,
        request: WatchRequest {
            key: vec![],
            range_end: vec![],
            ..WatchRequest::default()
        },
        segments: vec![
            Segment::default(),
            Segment {
                start_revision: i64::MAX,
                known_compact_revision: i64::MAX,
                responses: vec![WatchResponse {
                    header_revision: i64::MIN,
                    compact_revision: i64::MIN,
                    events: vec![ev(i64::MIN), ev(i64::MAX), ev(0)],
                    ..WatchResponse::default()
                }],
                end: SegmentEnd::Cut,
            },
            Segment {
                start_revision: i64::MIN,
                responses: vec![created(i64::MAX), progress(i64::MAX)],
                ..Segment::default()
            },
        ],
    };
    assert!(!check_watch(&s, &h).is_empty());
}

/// A random history and a random watcher over its keys `k0..k4`.
fn random_setup(seed: u64, operations: usize, pick: u64) -> (KvHistory, WatchRequest) {
    let generated = random_history(&GenerateConfig {
        seed,
        operations,
        keys: 4,
        ..GenerateConfig::default()
    });
    let lin = Linearization {
        order: generated.order,
        left_out: vec![],
        steps: 0,
    };
    let history = KvHistory::from_linearization(&generated.history, &lin, &Model::new())
        .expect("the generator's order is valid");
    let mut rng = Rng(pick);
    let (key, range_end): (Vec<u8>, Vec<u8>) = match rng.below(4) {
        0 => (format!("k{}", rng.below(4)).into_bytes(), vec![]),
        1 => (b"k1".to_vec(), b"k3".to_vec()),
        2 => (b"k".to_vec(), vec![0]),
        _ => (vec![0], vec![0]),
    };
    let request = WatchRequest {
        key,
        range_end,
        prev_kv: rng.chance(500),
        no_put: rng.chance(100),
        no_delete: rng.chance(200),
        progress_notify: rng.chance(500),
        fragment: rng.chance(300),
    };
    (history, request)
}

/// Lays out a random valid stream for `request` over `history`.
fn random_stream(history: &KvHistory, request: WatchRequest, seed: u64) -> WatchStream {
    let mut rng = Rng(seed ^ 0x5eed);
    let last = history.last_revision();
    let (start, created_header) = if rng.chance(300) {
        (0, rng.between(1, last))
    } else {
        (rng.between(1, last + 1), rng.between(1, last))
    };
    let plan = Plan {
        merge: rng.below(600),
        progress: rng.below(400),
        cut: rng.below(300),
        split: rng.below(800),
    };
    generate(history, request, start, created_header, plan, seed)
}

/// The places of every event of a stream.
fn places(s: &WatchStream) -> Vec<(usize, usize, usize)> {
    let mut out = Vec::new();
    for (si, seg) in s.segments.iter().enumerate() {
        for (ri, r) in seg.responses.iter().enumerate() {
            for ei in 0..r.events.len() {
                out.push((si, ri, ei));
            }
        }
    }
    out
}

fn event_at(s: &WatchStream, p: (usize, usize, usize)) -> &WatchEvent {
    &s.segments[p.0].responses[p.1].events[p.2]
}

/// Applies mutation `which` (drop, duplicate, swap, change) at random places; `None` if
/// the stream has no event it applies to.
fn mutate(s: &WatchStream, which: u8, pick: u64) -> Option<WatchStream> {
    let mut rng = Rng(pick);
    let all = places(s);
    if all.is_empty() {
        return None;
    }
    let p = all[usize::try_from(rng.below(all.len() as u64)).ok()?];
    let mut m = s.clone();
    match which {
        0 => {
            m.segments[p.0].responses[p.1].events.remove(p.2);
        }
        1 => {
            let copy = event_at(s, p).clone();
            m.segments[p.0].responses[p.1].events.insert(p.2, copy);
        }
        2 => {
            let rev = event_at(s, p).kv.mod_revision;
            let others: Vec<_> = all
                .iter()
                .copied()
                .filter(|q| event_at(s, *q).kv.mod_revision != rev)
                .collect();
            if others.is_empty() {
                return None;
            }
            let q = others[usize::try_from(rng.below(others.len() as u64)).ok()?];
            let (a, b) = (event_at(s, p).clone(), event_at(s, q).clone());
            m.segments[p.0].responses[p.1].events[p.2] = b;
            m.segments[q.0].responses[q.1].events[q.2] = a;
        }
        _ => {
            let e = &mut m.segments[p.0].responses[p.1].events[p.2];
            match e.kind {
                EventKind::Put => e.kv.value.push(b'!'),
                EventKind::Delete => e.kind = EventKind::Put,
            }
        }
    }
    Some(m)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn generated_streams_pass(
        seed in any::<u64>(),
        operations in 1usize..150,
        pick in any::<u64>(),
    ) {
        let (history, request) = random_setup(seed, operations, pick);
        let s = random_stream(&history, request, pick);
        let v = check_watch(&s, &history);
        prop_assert!(v.is_empty(), "{:#?}\n{:#?}", v, s);
    }

    #[test]
    fn mutated_streams_fail(
        seed in any::<u64>(),
        operations in 1usize..150,
        pick in any::<u64>(),
        which in 0u8..4,
    ) {
        let (history, request) = random_setup(seed, operations, pick);
        let s = random_stream(&history, request, pick);
        if let Some(m) = mutate(&s, which, pick.rotate_left(17)) {
            let v = check_watch(&m, &history);
            prop_assert!(!v.is_empty(), "mutation {} accepted:\n{:#?}", which, m);
        }
    }
}

#[test]
fn a_watch_from_now_may_start_at_its_created_header() {
    let h = small_history();
    // The watcher registered at revision 3, but the created response's header was read
    // after the write of revision 4: the event at 4 is still correct.
    let mut s = generate(&h, all_keys(), 0, 3, Plan::default(), 0);
    s.segments[0].responses[0].header_revision = 4;
    assert_kinds(&s, &h, &[]);
    // Dropping that event is not caught (the watch may have started after it), but
    // dropping the next one is.
    let ri = response_of(&s, 5);
    s.segments[0].responses.remove(ri);
    assert_kinds(&s, &h, &[ViolationKind::Reliable]);
}

#[test]
fn a_watcher_that_lost_everything_gets_a_bounded_report() {
    let inputs: Vec<Input> = (0..50).map(|i| put("a", &i.to_string())).collect();
    let h = KvHistory::from_inputs(&Model::new(), inputs.iter());
    let s = WatchStream {
        watcher: 1,
        request: all_keys(),
        segments: vec![Segment {
            start_revision: 2,
            responses: vec![created(1), progress(h.last_revision())],
            ..Segment::default()
        }],
    };
    let v = check_watch(&s, &h);
    assert_eq!(v.len(), MAX_MISSING_REPORTED + 1);
    assert!(v.iter().all(|x| x.kind == ViolationKind::Reliable));
    assert!(
        v[MAX_MISSING_REPORTED].explanation.contains("30 more"),
        "{}",
        v[20]
    );
}

#[test]
fn mismatches_at_unknown_outcome_writes_say_so() {
    let ops = vec![
        Operation::unknown(0, 0, put("a", "1")),
        Operation::unknown(0, 1, put("a", "2")),
    ];
    // The linearization chose the first put; the watch saw the second.
    let lin = Linearization {
        order: vec![0],
        left_out: vec![1],
        steps: 0,
    };
    let h = KvHistory::from_linearization(&ops, &lin, &Model::new()).expect("valid");
    assert_eq!(h.revisions[0].op, Some(0));
    assert!(h.revisions[0].outcome_unknown);
    let mut s = plain(&h, all_keys(), 2);
    s.segments[0].responses[1].events[0].kv.value = b"2".to_vec();
    let v = check_watch(&s, &h);
    assert_eq!(kinds(&v), vec![ViolationKind::Content]);
    assert!(
        v[0].explanation
            .contains("operation #0, whose outcome is unknown"),
        "{}",
        v[0]
    );
}

#[test]
fn deletes_at_the_compact_revision_may_be_gone_for_a_watch_starting_there() {
    // Revision 6 deletes "a". As in etcd, a compaction at 6 removes that tombstone, so a
    // watcher that starts at 6 afterwards gets only revision 7.
    let mut h = small_history();
    let mut s = plain(&h, all_keys(), 6);
    let at6 = response_of(&s, 6);
    s.segments[0].responses[at6]
        .events
        .retain(|e| e.kv.mod_revision != 6);
    s.segments[0]
        .responses
        .retain(|r| r.created || !r.events.is_empty());
    // Without that compaction the delete is missing.
    assert_kinds(&s, &h, &[ViolationKind::Reliable]);
    h.compact_revisions.push(6);
    assert_kinds(&s, &h, &[]);
    // A watch that starts earlier must still get it: the excuse is only for the start.
    let mut early = plain(&h, all_keys(), 5);
    let at6 = early.segments[0]
        .responses
        .iter()
        .position(|r| r.events.iter().any(|e| e.kv.mod_revision == 6))
        .expect("revision 6 delivered");
    early.segments[0].responses[at6]
        .events
        .retain(|e| e.kv.mod_revision != 6);
    assert_kinds(&early, &h, &[ViolationKind::Reliable]);
}

#[test]
fn previous_key_values_pin_earlier_writes_without_claiming_their_revision() {
    let h = small_history();
    // From revision 4: revisions 2 (a=1) and 3 (b=1) are known only from prev_kv.
    let s = plain(&h, all_keys(), 4);
    let (observed, violations) = observed_changes(std::slice::from_ref(&s));
    assert!(violations.is_empty(), "{violations:?}");
    let at = |rev: i64| {
        observed
            .get(&rev)
            .unwrap_or_else(|| panic!("revision {rev}"))
    };
    let value_of = |rev: i64, key: &str| {
        at(rev).changes[key.as_bytes()]
            .as_ref()
            .map(|kv| kv.value.clone())
    };
    assert_eq!(value_of(2, "a"), Some(b"1".to_vec()));
    assert_eq!(value_of(3, "b"), Some(b"1".to_vec()));
    assert!(!at(2).complete && !at(3).complete);
    // Revisions the watcher saw itself are complete.
    assert!(at(4).complete);
    // Without prev_kv nothing is known of revisions before the start.
    let mut request = all_keys();
    request.prev_kv = false;
    let s = plain(&h, request, 4);
    let (observed, _) = observed_changes(std::slice::from_ref(&s));
    assert!(!observed.contains_key(&2) && !observed.contains_key(&3));
    // A prev_kv that contradicts what another watcher saw at that revision is reported.
    let mut lying = plain(&h, all_keys(), 4);
    lying.watcher = 2;
    let ri = response_of(&lying, 4);
    if let Some(prev) = lying.segments[0].responses[ri].events[0].prev_kv.as_mut() {
        prev.value = b"other".to_vec();
    }
    let truthful = plain(&h, all_keys(), 2);
    let (_, violations) = observed_changes(&[truthful, lying]);
    assert_eq!(kinds(&violations), vec![ViolationKind::Content]);
}

#[test]
fn without_history_a_correct_stream_passes_and_reordered_events_fail() {
    let h = small_history();
    let good = plain(&h, all_keys(), 2);
    assert_eq!(
        check_watches_without_history(std::slice::from_ref(&good), vec![]),
        []
    );
    // Two responses swapped: revisions go back, which needs no history to see.
    let mut bad = good;
    let (a, b) = (response_of(&bad, 3), response_of(&bad, 4));
    bad.segments[0].responses.swap(a, b);
    let v = check_watches_without_history(&[bad], vec![]);
    assert_eq!(kinds(&v), [ViolationKind::Ordered], "{v:#?}");
}

#[test]
fn without_history_a_lost_event_goes_unnoticed() {
    // This is what the history-free check cannot see, which is why a run checked only
    // this way is inconclusive rather than passed.
    let h = small_history();
    let mut stream = plain(&h, all_keys(), 2);
    let r = response_of(&stream, 4);
    stream.segments[0].responses.remove(r);
    assert_eq!(
        check_watches_without_history(std::slice::from_ref(&stream), vec![]),
        []
    );
    assert_kinds(&stream, &h, &[ViolationKind::Reliable]);
}
