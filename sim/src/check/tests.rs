//! Tests of the linearizability checker: tiny hand-written histories that must pass or
//! fail, generated histories that must pass, and mutated ones that must fail.

use std::time::Instant;

use proptest::prelude::*;

use super::generate::{random_history, GenerateConfig};
use super::linearizability::{
    check, Cause, CheckConfig, CheckResult, HistoryError, Operation, Rejection, SeenRevision,
};
use super::model::{
    Compare, CompareOp, CompareTarget, Input, KeyValue, KvError, Model, Output, PutRequest,
    PutResult, RangeRequest, RangeResult, Reply, Response, TxnOp, TxnOpResult, TxnRequest,
    TxnResult, Undo,
};

fn kv(k: &str, v: &str, create: i64, modr: i64, version: i64) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: v.into(),
        create_revision: create,
        mod_revision: modr,
        version,
        lease: 0,
    }
}

fn put(k: &str, v: &str) -> Input {
    Input::Put(PutRequest {
        key: k.into(),
        value: v.into(),
        ..PutRequest::default()
    })
}

fn put_lease(k: &str, v: &str, lease: i64) -> Input {
    Input::Put(PutRequest {
        key: k.into(),
        value: v.into(),
        lease,
        prev_kv: false,
    })
}

fn get(k: &str) -> Input {
    Input::Get(RangeRequest {
        key: k.into(),
        ..RangeRequest::default()
    })
}

fn get_range(k: &str, end: &str) -> Input {
    Input::Get(RangeRequest {
        key: k.into(),
        range_end: end.into(),
        limit: 0,
    })
}

fn reply(revision: i64, response: Response) -> Output {
    Ok(Reply { revision, response })
}

fn put_ok(revision: i64) -> Output {
    reply(revision, Response::Put(PutResult::default()))
}

fn get_ok(revision: i64, kvs: Vec<KeyValue>) -> Output {
    let count = kvs.len() as i64;
    reply(
        revision,
        Response::Get(RangeResult {
            kvs,
            count,
            more: false,
        }),
    )
}

fn op(client: u64, call: u64, ret: u64, input: Input, output: Output) -> Operation {
    Operation::returned(client, call, ret, input, output)
}

fn run(history: &[Operation]) -> CheckResult {
    match check(history, &CheckConfig::default()) {
        Ok(r) => r,
        Err(e) => panic!("malformed history: {e}"),
    }
}

#[track_caller]
fn assert_linearizable(history: &[Operation]) {
    let r = run(history);
    if let CheckResult::Violation(v) = &r {
        panic!("expected linearizable, got:\n{}", v.explanation);
    }
    assert!(r.is_linearizable(), "{r:?}");
}

#[track_caller]
fn assert_violation(history: &[Operation]) -> Box<super::linearizability::Violation> {
    match run(history) {
        CheckResult::Violation(v) => v,
        other => panic!("expected a violation, got {other:?}"),
    }
}

/// A compare-and-swap on `a`'s mod revision that puts `v`.
fn cas(expected_mod: i64, v: &str) -> Input {
    Input::Txn(TxnRequest {
        compares: vec![Compare {
            key: "a".into(),
            range_end: Vec::new(),
            target: CompareTarget::ModRevision(expected_mod),
            op: CompareOp::Equal,
        }],
        success: vec![TxnOp::Put(PutRequest {
            key: "a".into(),
            value: v.into(),
            ..PutRequest::default()
        })],
        failure: vec![TxnOp::Get(RangeRequest {
            key: "a".into(),
            ..RangeRequest::default()
        })],
    })
}

fn cas_ok(revision: i64) -> Output {
    reply(
        revision,
        Response::Txn(TxnResult {
            succeeded: true,
            responses: vec![TxnOpResult::Put(PutResult::default())],
        }),
    )
}

#[test]
fn sequential_history_passes() {
    let h = vec![
        op(1, 0, 1, put("a", "1"), put_ok(2)),
        op(1, 2, 3, get("a"), get_ok(2, vec![kv("a", "1", 2, 2, 1)])),
        op(1, 4, 5, put("a", "2"), put_ok(3)),
        op(1, 6, 7, get("a"), get_ok(3, vec![kv("a", "2", 2, 3, 2)])),
        op(1, 8, 9, get("b"), get_ok(3, vec![])),
    ];
    let r = run(&h);
    let CheckResult::Linearizable(l) = r else {
        panic!("{r:?}");
    };
    assert_eq!(l.order, vec![0, 1, 2, 3, 4]);
}

#[test]
fn concurrent_read_may_see_either_side_of_a_write() {
    for (seen, rev) in [(None, 1), (Some(kv("a", "1", 2, 2, 1)), 2)] {
        let h = vec![
            op(1, 0, 10, put("a", "1"), put_ok(2)),
            op(2, 5, 15, get("a"), get_ok(rev, seen.into_iter().collect())),
        ];
        assert_linearizable(&h);
    }
}

#[test]
fn stale_read_fails() {
    let h = vec![
        op(1, 0, 1, put("a", "1"), put_ok(2)),
        op(1, 2, 3, put("a", "2"), put_ok(3)),
        op(2, 4, 5, get("a"), get_ok(2, vec![kv("a", "1", 2, 2, 1)])),
    ];
    let v = assert_violation(&h);
    // The revisions alone show it: the read reports revision 2 after a write returned at 3.
    assert_eq!(
        v.cause,
        Cause::RevisionOrder {
            earlier: 1,
            later: 2
        }
    );
    assert_eq!(v.blocking_op, Some(2));
    assert_eq!(v.ops, vec![1, 2], "the read and the write it missed");
    assert!(v.explanation.contains("stale"), "{}", v.explanation);
    assert!(v.explanation.contains("#2 client 2"), "{}", v.explanation);
    assert!(v.explanation.contains("#1 client 1"), "{}", v.explanation);
    // The same stale value under the current header revision is just as wrong.
    let mut h2 = h.clone();
    h2[2].output = Some(get_ok(3, vec![kv("a", "1", 2, 2, 1)]));
    let v = assert_violation(&h2);
    assert_eq!(v.cause, Cause::Search);
    assert_eq!(v.blocking_op, Some(2));
    assert_eq!(v.prefix, vec![0, 1]);
    assert_eq!(v.ops, vec![1, 2], "the read and the write it missed");
    assert!(matches!(
        v.attempts.iter().find(|a| a.op == 2).map(|a| &a.rejection),
        Some(Rejection::OutputMismatch { .. })
    ));
}

#[test]
fn lost_write_fails() {
    for header in [1, 2] {
        let h = vec![
            op(1, 0, 1, put("a", "1"), put_ok(2)),
            op(2, 2, 3, get("a"), get_ok(header, vec![])),
        ];
        assert_violation(&h);
    }
}

#[test]
fn read_of_a_value_never_written_fails() {
    let h = vec![
        op(1, 0, 1, put("a", "1"), put_ok(2)),
        op(2, 0, 3, get("a"), get_ok(2, vec![kv("a", "x", 2, 2, 1)])),
    ];
    assert_violation(&h);
}

#[test]
fn two_cas_both_succeeding_fails() {
    let h = vec![
        op(1, 0, 1, put("a", "0"), put_ok(2)),
        op(1, 2, 10, cas(2, "1"), cas_ok(3)),
        op(2, 2, 10, cas(2, "2"), cas_ok(4)),
    ];
    let v = assert_violation(&h);
    assert!(v.ops.contains(&1) || v.ops.contains(&2), "{v:?}");
    eprintln!("{}", v.explanation);
    // The second one failing, and seeing the first one's value, is fine.
    let mut ok = h.clone();
    ok[2].output = Some(reply(
        3,
        Response::Txn(TxnResult {
            succeeded: false,
            responses: vec![TxnOpResult::Get(RangeResult {
                kvs: vec![kv("a", "1", 2, 3, 2)],
                count: 1,
                more: false,
            })],
        }),
    ));
    assert_linearizable(&ok);
}

#[test]
fn two_writes_reporting_one_revision_fail() {
    let h = vec![
        op(1, 0, 10, put("a", "1"), put_ok(2)),
        op(2, 0, 10, put("b", "1"), put_ok(2)),
    ];
    let v = assert_violation(&h);
    assert_eq!(
        v.cause,
        Cause::SameRevision {
            first: 0,
            second: 1,
            revision: 2
        }
    );
    assert_eq!(v.ops, vec![0, 1]);
}

#[test]
fn revision_going_back_fails() {
    let h = vec![
        op(1, 0, 1, put("a", "1"), put_ok(2)),
        op(1, 2, 3, put("b", "1"), put_ok(3)),
        op(2, 4, 5, get("b"), get_ok(3, vec![kv("b", "1", 3, 3, 1)])),
        op(2, 6, 7, get("a"), get_ok(2, vec![kv("a", "1", 2, 2, 1)])),
    ];
    let v = assert_violation(&h);
    // Either the late read cannot come after the write of b, or that write cannot come
    // before the late read: both are named.
    assert!(
        v.ops.contains(&1) && v.ops.contains(&3),
        "{}",
        v.explanation
    );
    eprintln!("{}", v.explanation);
}

#[test]
fn timed_out_write_observed_later_passes() {
    let h = vec![
        Operation::unknown(1, 0, put("a", "1")),
        op(2, 10, 11, get("a"), get_ok(2, vec![kv("a", "1", 2, 2, 1)])),
    ];
    let r = run(&h);
    let CheckResult::Linearizable(l) = r else {
        panic!("{r:?}");
    };
    assert_eq!(l.order, vec![0, 1]);
    assert!(l.left_out.is_empty());
}

#[test]
fn timed_out_write_may_take_effect_long_after_its_call() {
    let h = vec![
        Operation::unknown(1, 0, put("a", "1")),
        op(2, 10, 11, get("a"), get_ok(1, vec![])),
        op(
            2,
            1000,
            1001,
            get("a"),
            get_ok(2, vec![kv("a", "1", 2, 2, 1)]),
        ),
    ];
    assert_linearizable(&h);
}

#[test]
fn timed_out_write_never_observed_is_left_out() {
    let h = vec![
        Operation::unknown(1, 0, put("a", "1")),
        op(2, 10, 11, put("b", "1"), put_ok(2)),
        op(2, 12, 13, get("a"), get_ok(2, vec![])),
        Operation::unknown(3, 0, get("a")),
    ];
    let r = run(&h);
    let CheckResult::Linearizable(l) = r else {
        panic!("{r:?}");
    };
    assert_eq!(l.order, vec![1, 2]);
    assert_eq!(l.left_out, vec![0, 3]);
}

#[test]
fn timed_out_write_observed_then_unobserved_fails() {
    for header in [1, 2] {
        let h = vec![
            Operation::unknown(1, 0, put("a", "1")),
            op(2, 10, 11, get("a"), get_ok(2, vec![kv("a", "1", 2, 2, 1)])),
            op(2, 12, 13, get("a"), get_ok(header, vec![])),
        ];
        let v = assert_violation(&h);
        assert!(v.ops.contains(&2), "{}", v.explanation);
        eprintln!("{}", v.explanation);
    }
}

#[test]
fn timed_out_write_cannot_take_a_revision_another_write_reported() {
    // The unknown put of a=1 can only be at revision 2 or later, but every revision is
    // taken by a known write, so a read of a=1 is impossible.
    let h = vec![
        Operation::unknown(1, 0, put("a", "1")),
        op(2, 10, 11, put("b", "1"), put_ok(2)),
        op(2, 12, 13, put("b", "2"), put_ok(3)),
        op(2, 14, 15, get("a"), get_ok(3, vec![kv("a", "1", 3, 3, 1)])),
    ];
    assert_violation(&h);
}

#[test]
fn lease_revoke_deletes_attached_keys_atomically() {
    let setup = || {
        vec![
            op(
                1,
                0,
                1,
                Input::LeaseGrant { id: 7, ttl_s: 10 },
                reply(1, Response::LeaseGrant),
            ),
            op(1, 2, 3, put_lease("a", "1", 7), put_ok(2)),
            op(1, 4, 5, put_lease("b", "1", 7), put_ok(3)),
            op(
                1,
                6,
                20,
                Input::LeaseRevoke { id: 7 },
                reply(4, Response::LeaseRevoke),
            ),
        ]
    };
    let mut a = kv("a", "1", 2, 2, 1);
    a.lease = 7;
    let mut b = kv("b", "1", 3, 3, 1);
    b.lease = 7;
    for (kvs, header) in [(vec![a.clone(), b.clone()], 3), (vec![], 4)] {
        let mut h = setup();
        h.push(op(2, 7, 19, get_range("a", "c"), get_ok(header, kvs)));
        assert_linearizable(&h);
    }
    for (kvs, header) in [(vec![b.clone()], 4), (vec![b.clone()], 3), (vec![a], 4)] {
        let mut h = setup();
        h.push(op(2, 7, 19, get_range("a", "c"), get_ok(header, kvs)));
        assert_violation(&h);
    }
}

#[test]
fn lease_expiry_recorded_as_an_unknown_revoke() {
    let mut a = kv("a", "1", 2, 2, 1);
    a.lease = 7;
    let h = vec![
        op(
            1,
            0,
            1,
            Input::LeaseGrant { id: 7, ttl_s: 1 },
            reply(1, Response::LeaseGrant),
        ),
        op(1, 2, 3, put_lease("a", "1", 7), put_ok(2)),
        op(2, 4, 5, get("a"), get_ok(2, vec![a])),
        Operation::unknown(0, 3, Input::LeaseRevoke { id: 7 }),
        op(2, 100, 101, get("a"), get_ok(3, vec![])),
        op(
            1,
            102,
            103,
            put_lease("b", "1", 7),
            Err(KvError::LeaseNotFound),
        ),
    ];
    assert_linearizable(&h);
}

#[test]
fn certain_errors_are_checked() {
    let h = vec![op(
        1,
        0,
        1,
        put_lease("a", "1", 9),
        Err(KvError::LeaseNotFound),
    )];
    assert_linearizable(&h);
    let h = vec![op(1, 0, 1, put_lease("a", "1", 9), put_ok(2))];
    assert_violation(&h);
    let h = vec![
        op(1, 0, 1, put("a", "1"), put_ok(2)),
        op(
            1,
            2,
            3,
            Input::Compact { revision: 2 },
            reply(2, Response::Compact),
        ),
        op(
            1,
            4,
            5,
            Input::Compact { revision: 2 },
            Err(KvError::Compacted),
        ),
    ];
    assert_linearizable(&h);
}

#[test]
fn exhausted_budget_is_unknown_not_a_hang() {
    let h = random_history(&GenerateConfig {
        operations: 200,
        ..GenerateConfig::default()
    })
    .history;
    let config = CheckConfig {
        max_steps: 10,
        ..CheckConfig::default()
    };
    let r = check(&h, &config);
    assert!(
        matches!(r, Ok(CheckResult::Unknown(ref e)) if e.steps == 10),
        "{r:?}"
    );
}

#[test]
fn malformed_histories_are_errors() {
    let bad = |h: Vec<Operation>| check(&h, &CheckConfig::default()).err();
    assert_eq!(
        bad(vec![op(1, 5, 4, put("a", "1"), put_ok(2))]),
        Some(HistoryError::ReturnBeforeCall { op: 0 })
    );
    let mut o = Operation::unknown(1, 0, put("a", "1"));
    o.output = Some(put_ok(2));
    assert_eq!(
        bad(vec![o]),
        Some(HistoryError::OutputWithoutReturn { op: 0 })
    );
    assert_eq!(
        bad(vec![op(1, 0, 1, put("a", "1"), get_ok(2, vec![]))]),
        Some(HistoryError::WrongResponseKind { op: 0 })
    );
    assert!(matches!(
        check(&[], &CheckConfig::default()),
        Ok(CheckResult::Linearizable(_))
    ));
}

#[test]
fn initial_state_is_configurable() {
    let config = CheckConfig {
        initial: Model::with_state(10, [kv("a", "0", 5, 10, 3)], []),
        ..CheckConfig::default()
    };
    let h = vec![op(
        1,
        0,
        1,
        get("a"),
        get_ok(10, vec![kv("a", "0", 5, 10, 3)]),
    )];
    assert!(matches!(
        check(&h, &config),
        Ok(CheckResult::Linearizable(_))
    ));
}

#[test]
fn generated_history_of_10000_operations_passes() {
    let generated = random_history(&GenerateConfig {
        seed: 42,
        operations: 10_000,
        clients: 10,
        ..GenerateConfig::default()
    });
    let start = Instant::now();
    let r = run(&generated.history);
    eprintln!(
        "checked {} operations from 10 clients in {:?}",
        generated.history.len(),
        start.elapsed()
    );
    if let CheckResult::Violation(v) = &r {
        panic!("{}", v.explanation);
    }
    assert!(r.is_linearizable(), "{r:?}");
}

/// A mutation of a generated history: a read of `key` strictly after `writer` returned,
/// answered as if `writer` had not happened yet.
struct StaleRead {
    /// The history with the read's output replaced.
    history: Vec<Operation>,
    /// Whether the stale answer also carries the revision from before the write (else it
    /// keeps its own header revision and only the value is stale).
    stale_header: bool,
}

/// Finds a read that returned strictly after a known write to the same key, and makes it
/// return the key as it was before that write.
fn stale_read(
    history: &[Operation],
    order: &[usize],
    pick: usize,
    stale_header: bool,
) -> Option<StaleRead> {
    // Replays the generation order, noting for every write the key-values before it.
    let mut model = Model::new();
    let mut writes: Vec<(usize, Vec<u8>, Option<KeyValue>, i64)> = Vec::new();
    let mut candidates = Vec::new();
    for &i in order {
        let o = history.get(i)?;
        let before = model.clone();
        let mut undo = Undo::new();
        let _ = model.apply(&o.input, &mut undo);
        let changed: Vec<Vec<u8>> = undo.changed_keys().map(|k| k.to_vec()).collect();
        if o.output.is_some() && model.revision() != before.revision() {
            for k in changed {
                writes.push((i, k.clone(), before.get(&k).cloned(), model.revision()));
            }
        }
        let (Input::Get(r), Some(Ok(reply))) = (&o.input, &o.output) else {
            continue;
        };
        if !r.range_end.is_empty() {
            continue;
        }
        let earlier = writes.iter().rev().find(|(w, k, old, _)| {
            *k == r.key
                && history[*w].return_ns.is_some_and(|ret| ret < o.call_ns)
                && (stale_header || old.is_some())
        });
        if let Some((_, _, old, write_rev)) = earlier {
            let kvs: Vec<KeyValue> = old.iter().cloned().collect();
            let header = if stale_header {
                write_rev - 1
            } else {
                reply.revision
            };
            candidates.push((i, get_ok(header, kvs)));
        }
    }
    if candidates.is_empty() {
        return None;
    }
    let (i, output) = candidates.swap_remove(pick % candidates.len());
    let mut history = history.to_vec();
    history[i].output = Some(output);
    Some(StaleRead {
        history,
        stale_header,
    })
}

#[test]
fn stale_read_in_a_large_history_is_found() {
    let generated = random_history(&GenerateConfig {
        seed: 7,
        operations: 10_000,
        ..GenerateConfig::default()
    });
    let Some(m) = stale_read(&generated.history, &generated.order, 4321, true) else {
        panic!("no read to mutate");
    };
    let start = Instant::now();
    let r = run(&m.history);
    eprintln!(
        "found the stale read among 10000 operations in {:?}",
        start.elapsed()
    );
    let Some(v) = r.violation() else {
        panic!("stale read accepted: {r:?}");
    };
    assert!(v.explanation.contains("not linearizable"));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn generated_histories_are_linearizable(
        seed in any::<u64>(),
        operations in 1usize..300,
        clients in 1usize..10,
        keys in 1usize..5,
        unknown_per_mille in 0u32..100,
        lost_per_mille in 0u32..100,
    ) {
        let generated = random_history(&GenerateConfig {
            seed,
            operations,
            clients,
            keys,
            unknown_per_mille,
            lost_per_mille,
            ..GenerateConfig::default()
        });
        let r = run(&generated.history);
        if let CheckResult::Violation(v) = &r {
            prop_assert!(false, "{}", v.explanation);
        }
        prop_assert!(r.is_linearizable(), "{:?}", r);
    }

    #[test]
    fn stale_reads_after_a_write_are_rejected(
        seed in any::<u64>(),
        operations in 20usize..300,
        clients in 1usize..10,
        keys in 1usize..4,
        unknown_per_mille in 0u32..50,
        pick in any::<usize>(),
        stale_header in any::<bool>(),
    ) {
        let generated = random_history(&GenerateConfig {
            seed,
            operations,
            clients,
            keys,
            unknown_per_mille,
            lost_per_mille: unknown_per_mille,
            ..GenerateConfig::default()
        });
        if let Some(m) = stale_read(&generated.history, &generated.order, pick, stale_header) {
            let r = run(&m.history);
            prop_assert!(
                r.violation().is_some(),
                "stale read (header from before the write: {}) accepted: {:?}",
                m.stale_header,
                r
            );
        }
    }
}

#[test]
fn watch_observations_pin_the_order_of_unknown_writes() {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    // Two puts whose outcome is unknown; nothing read them, so either order is
    // linearizable, until watchers report that "b" was written first.
    let history = vec![
        Operation::unknown(1, 10, put("a", "1")),
        Operation::unknown(2, 20, put("b", "1")),
        op(
            3,
            100,
            110,
            get("a"),
            get_ok(3, vec![kv("a", "1", 3, 3, 1)]),
        ),
    ];
    let seen = |k: &str, rev: i64, complete: bool| SeenRevision {
        changes: BTreeMap::from([(k.as_bytes().to_vec(), Some(kv(k, "1", rev, rev, 1)))]),
        complete,
    };
    let with = |observed: Vec<(i64, SeenRevision)>| CheckConfig {
        observed: Arc::new(observed.into_iter().collect()),
        ..CheckConfig::default()
    };
    let order = |config: &CheckConfig| match check(&history, config).unwrap() {
        CheckResult::Linearizable(l) => Some(l.order),
        _ => None,
    };
    assert_eq!(
        order(&with(vec![
            (2, seen("b", 2, true)),
            (3, seen("a", 3, true))
        ])),
        Some(vec![1, 0, 2])
    );
    // A watcher of "b" alone saw revision 2 write "b": that pins the order too, though it
    // says nothing about other keys.
    assert_eq!(
        order(&with(vec![(2, seen("b", 2, false))])),
        Some(vec![1, 0, 2])
    );
    // Watchers that saw "a" written at revision 2 contradict the read of "a" at 3.
    let result = check(&history, &with(vec![(2, seen("a", 2, true))])).unwrap();
    assert!(result.violation().is_some(), "{result:?}");
    // Without observations the history is linearizable.
    assert!(check(&history, &CheckConfig::default())
        .unwrap()
        .is_linearizable());
}
