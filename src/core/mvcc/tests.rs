//! Tests of the MVCC store. Concrete answers were checked against etcd 3.4.23.

use super::*;
use crate::pb::etcdserverpb::{
    compare::CompareResult, compare::CompareTarget, compare::TargetUnion,
};

mod model;

fn no_lease(_: i64) -> bool {
    false
}

fn put(m: &mut Mvcc, k: &str, v: &str) -> PutResponse {
    let req = PutRequest {
        key: k.into(),
        value: v.into(),
        ..Default::default()
    };
    m.put(&req, &no_lease, &mut WriteBatch::default(), &mut Vec::new())
        .unwrap()
}

fn del(m: &mut Mvcc, k: &str, end: &[u8]) -> DeleteRangeResponse {
    let req = DeleteRangeRequest {
        key: k.into(),
        range_end: end.to_vec(),
        prev_kv: true,
    };
    m.delete_range(&req, &mut WriteBatch::default(), &mut Vec::new())
        .unwrap()
}

fn get(m: &Mvcc, req: RangeRequest) -> Result<RangeResponse, EtcdError> {
    m.range(&req)
}

fn rr(k: &str, end: &str) -> RangeRequest {
    RangeRequest {
        key: k.into(),
        range_end: end.into(),
        ..Default::default()
    }
}

fn kv(k: &str, v: &str, create: i64, modr: i64, ver: i64) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: v.into(),
        create_revision: create,
        mod_revision: modr,
        version: ver,
        lease: 0,
    }
}

fn keys(r: &RangeResponse) -> Vec<String> {
    r.kvs
        .iter()
        .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
        .collect()
}

fn op_put(k: &str, v: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        })),
    }
}
fn op_get(k: &str, rev: i64) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(RangeRequest {
            key: k.into(),
            revision: rev,
            ..Default::default()
        })),
    }
}
fn op_del(k: &str) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(
            DeleteRangeRequest {
                key: k.into(),
                ..Default::default()
            },
        )),
    }
}
fn cmp(k: &str, target: CompareTarget, result: CompareResult, u: TargetUnion) -> Compare {
    Compare {
        result: result as i32,
        target: target as i32,
        key: k.into(),
        range_end: vec![],
        target_union: Some(u),
    }
}

#[test]
fn fresh_store() {
    let m = Mvcc::new();
    assert_eq!(m.current_revision(), 1);
    assert_eq!(m.compact_revision(), -1);
    assert_eq!(m.key_count(), 0);
    let r = get(&m, rr("a", "")).unwrap();
    assert_eq!((r.kvs.len(), r.count, r.more), (0, 0, false));
}

#[test]
fn hash_matches_etcd() {
    // etcd 3.4.23 after `etcdctl put a 1` on a fresh member: hash 2587454935, compact -1.
    let mut m = Mvcc::new();
    put(&mut m, "a", "1");
    assert_eq!(m.hash_kv(0), Ok((2_587_454_935, -1)));
    assert_eq!(m.hash_kv(3), Err(EtcdError::FutureRev));
}

#[test]
fn versions_and_generations() {
    let mut m = Mvcc::new();
    let mut batch = WriteBatch::default();
    let mut events = Vec::new();
    let req = PutRequest {
        key: "k".into(),
        value: "1".into(),
        ..Default::default()
    };
    m.put(&req, &no_lease, &mut batch, &mut events).unwrap();
    put(&mut m, "k", "2");
    assert_eq!(
        get(&m, rr("k", "")).unwrap().kvs,
        vec![kv("k", "2", 2, 3, 2)]
    );
    let d = del(&mut m, "k", b"");
    assert_eq!(
        (d.deleted, d.prev_kvs.clone()),
        (1, vec![kv("k", "2", 2, 3, 2)])
    );
    assert_eq!(m.current_revision(), 4);
    // Deleting nothing does not bump the revision.
    assert_eq!(del(&mut m, "k", b"").deleted, 0);
    assert_eq!(m.current_revision(), 4);
    // A re-created key starts over at version 1 (etcd: create 13, mod 13, version 1).
    let p = PutRequest {
        key: "k".into(),
        value: "z".into(),
        prev_kv: true,
        ..Default::default()
    };
    let resp = m
        .put(&p, &no_lease, &mut WriteBatch::default(), &mut Vec::new())
        .unwrap();
    assert_eq!(resp.prev_kv, None);
    assert_eq!(
        get(&m, rr("k", "")).unwrap().kvs,
        vec![kv("k", "z", 5, 5, 1)]
    );
    // History stays readable.
    let at = |rev| {
        get(
            &m,
            RangeRequest {
                revision: rev,
                ..rr("k", "")
            },
        )
        .unwrap()
        .kvs
    };
    assert_eq!(at(2), vec![kv("k", "1", 2, 2, 1)]);
    assert_eq!(at(3), vec![kv("k", "2", 2, 3, 2)]);
    assert_eq!(at(4), vec![]);
    assert_eq!(at(1), vec![]);
    assert_eq!(
        get(
            &m,
            RangeRequest {
                revision: 6,
                ..rr("k", "")
            }
        ),
        Err(EtcdError::FutureRev)
    );
    // The first put's durable change and event.
    assert_eq!(
        batch.ops,
        vec![BatchOp::Put {
            bucket: Bucket::Key,
            key: encode_revision(Revision { main: 2, sub: 0 }, false),
            value: kv("k", "1", 2, 2, 1).encode_to_vec(),
        }]
    );
    assert_eq!(
        events,
        vec![Event {
            r#type: EventType::Put as i32,
            kv: Some(kv("k", "1", 2, 2, 1)),
            prev_kv: None
        }]
    );
}

#[test]
fn revision_encoding() {
    let r = Revision {
        main: 0x0102,
        sub: 3,
    };
    let e = encode_revision(r, true);
    assert_eq!(e, b"\0\0\0\0\0\0\x01\x02_\0\0\0\0\0\0\0\x03t".to_vec());
    assert_eq!(decode_revision(&e), Some((r, true)));
    assert_eq!(decode_revision(&e[..17]), Some((r, false)));
    assert_eq!(decode_revision(&e[..16]), None);
    assert_eq!(
        decode_revision(b"\0\0\0\0\0\0\x01\x02-\0\0\0\0\0\0\0\x03"),
        None
    );
}

/// t1..t5 put at revisions 2..6, then t2 overwritten with "a" at 7 (etcd's probe shifted).
fn five_keys() -> Mvcc {
    let mut m = Mvcc::new();
    for k in ["t1", "t2", "t3", "t4", "t5"] {
        put(&mut m, k, &format!("v{k}"));
    }
    put(&mut m, "t2", "a");
    m
}

#[test]
fn range_limit_sort_filters() {
    let m = five_keys();
    let base = RangeRequest {
        keys_only: true,
        ..rr("t", "u")
    };
    // Filters apply before the limit; count ignores both (etcd: count 5, more true).
    let r = get(
        &m,
        RangeRequest {
            limit: 2,
            min_mod_revision: 4,
            ..base.clone()
        },
    )
    .unwrap();
    assert_eq!(
        (keys(&r), r.more, r.count),
        (vec!["t2".into(), "t3".into()], true, 5)
    );
    let r = get(
        &m,
        RangeRequest {
            limit: 1,
            min_mod_revision: 6,
            ..base.clone()
        },
    )
    .unwrap();
    assert_eq!((keys(&r), r.more, r.count), (vec!["t2".into()], true, 5));
    let r = get(
        &m,
        RangeRequest {
            limit: 2,
            min_mod_revision: 7,
            ..base.clone()
        },
    )
    .unwrap();
    assert_eq!((keys(&r), r.more, r.count), (vec!["t2".into()], false, 5));
    assert!(r.kvs[0].value.is_empty());
    let r = get(
        &m,
        RangeRequest {
            max_create_revision: 3,
            min_create_revision: 3,
            ..base.clone()
        },
    )
    .unwrap();
    assert_eq!(keys(&r), vec!["t2".to_string()]);
    let r = get(
        &m,
        RangeRequest {
            max_mod_revision: 4,
            ..base.clone()
        },
    )
    .unwrap();
    assert_eq!(keys(&r), vec!["t1".to_string(), "t3".into()]);
    // Sort order NONE with a non-key target sorts ascending (etcd: t2 "a" then t1).
    let r = get(
        &m,
        RangeRequest {
            limit: 2,
            sort_target: 4,
            ..base.clone()
        },
    )
    .unwrap();
    assert_eq!((keys(&r), r.more), (vec!["t2".into(), "t1".into()], true));
    // Descending by version: ties keep key order (etcd: t2 then t1).
    let r = get(
        &m,
        RangeRequest {
            limit: 2,
            sort_order: 2,
            sort_target: 1,
            ..base.clone()
        },
    )
    .unwrap();
    assert_eq!(keys(&r), vec!["t2".to_string(), "t1".into()]);
    let r = get(
        &m,
        RangeRequest {
            sort_order: 2,
            ..base.clone()
        },
    )
    .unwrap();
    assert_eq!(keys(&r), vec!["t5", "t4", "t3", "t2", "t1"]);
    let r = get(
        &m,
        RangeRequest {
            sort_order: 1,
            sort_target: 3,
            ..base.clone()
        },
    )
    .unwrap();
    assert_eq!(keys(&r), vec!["t1", "t3", "t4", "t5", "t2"]);
    // count_only: no kvs, total count, no more (etcd: count 5).
    let r = get(
        &m,
        RangeRequest {
            limit: 2,
            count_only: true,
            ..base.clone()
        },
    )
    .unwrap();
    assert_eq!((r.kvs.len(), r.more, r.count), (0, false, 5));
    // Plain limit.
    let r = get(
        &m,
        RangeRequest {
            limit: 5,
            ..base.clone()
        },
    )
    .unwrap();
    assert_eq!((r.kvs.len(), r.more), (5, false));
    let r = get(
        &m,
        RangeRequest {
            limit: 4,
            ..base.clone()
        },
    )
    .unwrap();
    assert_eq!((r.kvs.len(), r.more), (4, true));
    // "\0" range ends: from a key, and everything.
    assert_eq!(keys(&get(&m, rr("t4", "\0")).unwrap()), vec!["t4", "t5"]);
    assert_eq!(get(&m, rr("\0", "\0")).unwrap().count, 5);
    // An inverted interval is empty rather than an error.
    assert_eq!(get(&m, rr("t4", "t1")).unwrap().count, 0);
    // Historical reads with filters.
    let r = get(
        &m,
        RangeRequest {
            revision: 3,
            ..rr("t", "u")
        },
    )
    .unwrap();
    assert_eq!(
        r.kvs,
        vec![kv("t1", "vt1", 2, 2, 1), kv("t2", "vt2", 3, 3, 1)]
    );
}

#[test]
fn put_options_and_leases() {
    let mut m = Mvcc::new();
    let leases = |id: i64| id == 7 || id == 8;
    let mut b = WriteBatch::default();
    let mut ev = Vec::new();
    let iv = PutRequest {
        key: "k".into(),
        ignore_value: true,
        ..Default::default()
    };
    assert_eq!(
        m.put(&iv, &leases, &mut b, &mut ev),
        Err(EtcdError::KeyNotFound)
    );
    let il = PutRequest {
        key: "k".into(),
        ignore_lease: true,
        ..Default::default()
    };
    assert_eq!(
        m.put(&il, &leases, &mut b, &mut ev),
        Err(EtcdError::KeyNotFound)
    );
    let bad = PutRequest {
        key: "k".into(),
        lease: 9,
        ..Default::default()
    };
    assert_eq!(
        m.put(&bad, &leases, &mut b, &mut ev),
        Err(EtcdError::LeaseNotFound)
    );
    assert!(b.ops.is_empty() && ev.is_empty());
    assert_eq!(m.current_revision(), 1);
    let p = PutRequest {
        key: "k".into(),
        value: "v".into(),
        lease: 7,
        ..Default::default()
    };
    m.put(&p, &leases, &mut b, &mut ev).unwrap();
    // ignore_lease keeps lease 7; ignore_value keeps "v".
    let p = PutRequest {
        key: "k".into(),
        value: "w".into(),
        ignore_lease: true,
        prev_kv: true,
        ..Default::default()
    };
    let resp = m.put(&p, &leases, &mut b, &mut ev).unwrap();
    assert_eq!(resp.prev_kv.unwrap().lease, 7);
    let p = PutRequest {
        key: "k".into(),
        ignore_value: true,
        lease: 8,
        ..Default::default()
    };
    m.put(&p, &leases, &mut b, &mut ev).unwrap();
    let got = get(&m, rr("k", "")).unwrap().kvs;
    assert_eq!(
        got,
        vec![KeyValue {
            lease: 8,
            ..kv("k", "w", 2, 4, 3)
        }]
    );
    // A plain put detaches the lease.
    put(&mut m, "k", "x");
    assert_eq!(get(&m, rr("k", "")).unwrap().kvs[0].lease, 0);
}

#[test]
fn delete_events_and_batch() {
    let mut m = five_keys();
    let mut b = WriteBatch::default();
    let mut ev = Vec::new();
    let req = DeleteRangeRequest {
        key: "t2".into(),
        range_end: "t4".into(),
        prev_kv: false,
    };
    let resp = m.delete_range(&req, &mut b, &mut ev).unwrap();
    assert_eq!((resp.deleted, resp.prev_kvs.len()), (2, 0));
    let tomb = |k: &str, sub| BatchOp::Put {
        bucket: Bucket::Key,
        key: encode_revision(Revision { main: 8, sub }, true),
        value: KeyValue {
            key: k.into(),
            ..Default::default()
        }
        .encode_to_vec(),
    };
    assert_eq!(b.ops, vec![tomb("t2", 0), tomb("t3", 1)]);
    let dev = |k: &str, prev: KeyValue| Event {
        r#type: EventType::Delete as i32,
        kv: Some(KeyValue {
            key: k.into(),
            mod_revision: 8,
            ..Default::default()
        }),
        prev_kv: Some(prev),
    };
    assert_eq!(
        ev,
        vec![
            dev("t2", kv("t2", "a", 3, 7, 2)),
            dev("t3", kv("t3", "vt3", 4, 4, 1))
        ]
    );
    assert_eq!(m.key_count(), 3);
}

fn txn(m: &mut Mvcc, t: &TxnRequest) -> Result<TxnResponse, EtcdError> {
    m.txn(t, &no_lease, &mut WriteBatch::default(), &mut Vec::new())
}

#[test]
fn txn_nested_headers_match_etcd() {
    // Replays the probe against etcd 3.4.23: a=1 at 2, b=2 at 3, then one txn.
    let mut m = Mvcc::new();
    put(&mut m, "a", "1");
    put(&mut m, "b", "2");
    let nested = TxnRequest {
        compare: vec![cmp(
            "x",
            CompareTarget::Version,
            CompareResult::Equal,
            TargetUnion::Version(0),
        )],
        success: vec![op_get("x", 0), op_put("y", "")],
        failure: vec![],
    };
    let t = TxnRequest {
        compare: vec![],
        success: vec![
            op_get("x", 0),
            op_put("x", "1"),
            op_get("x", 0),
            op_del("zz"),
            RequestOp {
                request: Some(request_op::Request::RequestTxn(nested)),
            },
            op_del("a"),
            op_get("b", 2),
        ],
        failure: vec![],
    };
    let resp = txn(&mut m, &t).unwrap();
    let h = |rev| rev_header(rev);
    let x = kv("x", "1", 4, 4, 1);
    use response_op::Response as R;
    let want = vec![
        R::ResponseRange(RangeResponse {
            header: h(3),
            ..Default::default()
        }),
        R::ResponsePut(PutResponse {
            header: h(4),
            prev_kv: None,
        }),
        R::ResponseRange(RangeResponse {
            header: h(4),
            kvs: vec![x.clone()],
            more: false,
            count: 1,
        }),
        R::ResponseDeleteRange(DeleteRangeResponse {
            header: h(4),
            ..Default::default()
        }),
        R::ResponseTxn(TxnResponse {
            header: Some(ResponseHeader::default()),
            succeeded: true,
            responses: vec![
                ResponseOp {
                    response: Some(R::ResponseRange(RangeResponse {
                        header: h(4),
                        kvs: vec![x],
                        more: false,
                        count: 1,
                    })),
                },
                ResponseOp {
                    response: Some(R::ResponsePut(PutResponse {
                        header: h(4),
                        prev_kv: None,
                    })),
                },
            ],
        }),
        R::ResponseDeleteRange(DeleteRangeResponse {
            header: h(4),
            deleted: 1,
            prev_kvs: vec![],
        }),
        R::ResponseRange(RangeResponse {
            header: h(4),
            ..Default::default()
        }),
    ];
    let got: Vec<_> = resp
        .responses
        .into_iter()
        .map(|r| r.response.unwrap())
        .collect();
    assert_eq!(got, want);
    assert!(resp.succeeded && resp.header.is_none());
    assert_eq!(m.current_revision(), 4);
    // y was written at sub 1 (after x), a deleted at sub 2.
    assert_eq!(
        get(&m, rr("y", "")).unwrap().kvs,
        vec![kv("y", "", 4, 4, 1)]
    );
}

#[test]
fn txn_read_only_and_noop_writes_keep_revision() {
    let mut m = five_keys();
    let t = TxnRequest {
        compare: vec![],
        success: vec![op_get("t1", 0)],
        failure: vec![],
    };
    let r = txn(&mut m, &t).unwrap();
    assert!(r.succeeded);
    assert_eq!(m.current_revision(), 7);
    let t = TxnRequest {
        compare: vec![],
        success: vec![op_del("nope"), op_get("t1", 0)],
        failure: vec![],
    };
    let r = txn(&mut m, &t).unwrap();
    let Some(response_op::Response::ResponseDeleteRange(d)) = &r.responses[0].response else {
        panic!()
    };
    assert_eq!(d.header, rev_header(7));
    assert_eq!(m.current_revision(), 7);
    // Future and compacted revisions in a chosen branch fail the whole txn.
    let t = TxnRequest {
        compare: vec![],
        success: vec![op_put("n", ""), op_get("t1", 8)],
        failure: vec![],
    };
    assert_eq!(txn(&mut m, &t), Err(EtcdError::FutureRev));
    assert_eq!(get(&m, rr("n", "")).unwrap().count, 0);
}

#[test]
fn txn_compares() {
    let mut m = five_keys();
    let ok = |m: &mut Mvcc, c: Compare| {
        let t = TxnRequest {
            compare: vec![c],
            success: vec![],
            failure: vec![],
        };
        txn(m, &t).unwrap().succeeded
    };
    use CompareResult::*;
    use CompareTarget as T;
    // Missing key: zero values, except a value compare, which always fails.
    assert!(ok(
        &mut m,
        cmp("zz", T::Version, Equal, TargetUnion::Version(0))
    ));
    assert!(ok(
        &mut m,
        cmp("zz", T::Create, Less, TargetUnion::CreateRevision(1))
    ));
    assert!(ok(
        &mut m,
        cmp("zz", T::Lease, Equal, TargetUnion::Lease(0))
    ));
    assert!(!ok(
        &mut m,
        cmp("zz", T::Value, Equal, TargetUnion::Value(vec![]))
    ));
    assert!(!ok(
        &mut m,
        cmp("zz", T::Value, NotEqual, TargetUnion::Value(b"x".to_vec()))
    ));
    assert!(ok(
        &mut m,
        cmp("t2", T::Value, Equal, TargetUnion::Value(b"a".to_vec()))
    ));
    assert!(ok(
        &mut m,
        cmp("t2", T::Value, Less, TargetUnion::Value(b"b".to_vec()))
    ));
    assert!(ok(
        &mut m,
        cmp("t2", T::Mod, Greater, TargetUnion::ModRevision(6))
    ));
    assert!(ok(
        &mut m,
        cmp("t2", T::Version, Equal, TargetUnion::Version(2))
    ));
    assert!(!ok(
        &mut m,
        cmp("t2", T::Version, NotEqual, TargetUnion::Version(2))
    ));
    // A mismatched union compares against zero.
    assert!(ok(
        &mut m,
        cmp("t2", T::Version, Greater, TargetUnion::Lease(5))
    ));
    // Ranges: the compare must hold for every key.
    let mut c = cmp("t", T::Create, Greater, TargetUnion::CreateRevision(1));
    c.range_end = b"u".to_vec();
    assert!(ok(&mut m, c.clone()));
    c.target_union = Some(TargetUnion::CreateRevision(2));
    assert!(!ok(&mut m, c.clone()));
    c.key = b"x".to_vec();
    c.range_end = b"\0".to_vec();
    assert!(!ok(&mut m, c));
    // Unknown result operators hold.
    let mut c = cmp("t2", T::Version, Equal, TargetUnion::Version(9));
    c.result = 42;
    assert!(ok(&mut m, c));
}

#[test]
fn txn_checks_run_before_anything() {
    let mut m = five_keys();
    let leases = |id: i64| id == 1;
    let mut bad = op_put("q", "");
    if let Some(request_op::Request::RequestPut(p)) = &mut bad.request {
        p.lease = 2;
    }
    let t = TxnRequest {
        compare: vec![],
        success: vec![op_put("p", ""), bad.clone()],
        failure: vec![],
    };
    let mut b = WriteBatch::default();
    let mut ev = Vec::new();
    assert_eq!(
        m.txn(&t, &leases, &mut b, &mut ev),
        Err(EtcdError::LeaseNotFound)
    );
    assert!(b.ops.is_empty() && ev.is_empty());
    // A bad put in the branch not taken does not matter.
    let t = TxnRequest {
        compare: vec![],
        success: vec![op_put("p", "")],
        failure: vec![bad],
    };
    assert!(m.txn(&t, &leases, &mut b, &mut ev).unwrap().succeeded);
    assert_eq!(m.current_revision(), 8);
    // Unvalidated input that only fails mid-way (etcd would crash) is rolled back.
    let before = m.clone();
    let iv = RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: "t1".into(),
            ignore_value: true,
            ..Default::default()
        })),
    };
    let t = TxnRequest {
        compare: vec![],
        success: vec![op_put("new", ""), op_del("t1"), iv],
        failure: vec![],
    };
    let mut b = WriteBatch::default();
    assert_eq!(
        m.txn(&t, &leases, &mut b, &mut ev),
        Err(EtcdError::KeyNotFound)
    );
    assert_eq!(m, before);
    assert!(b.ops.is_empty());
    let t = TxnRequest {
        compare: vec![],
        success: vec![RequestOp { request: None }],
        failure: vec![],
    };
    assert_eq!(txn(&mut m, &t), Err(EtcdError::KeyNotFound));
}

#[test]
fn txn_writes_share_one_revision() {
    let mut m = Mvcc::new();
    let t = TxnRequest {
        compare: vec![],
        success: vec![
            op_put("a", "1"),
            op_put("a", "2"),
            op_del("a"),
            op_put("a", "3"),
        ],
        failure: vec![],
    };
    let mut b = WriteBatch::default();
    let mut ev = Vec::new();
    m.txn(&t, &no_lease, &mut b, &mut ev).unwrap();
    assert_eq!(m.current_revision(), 2);
    let subs: Vec<_> = b
        .ops
        .iter()
        .map(|op| match op {
            BatchOp::Put { key, .. } => decode_revision(key).unwrap(),
            BatchOp::Delete { .. } => panic!(),
        })
        .collect();
    let r = |sub| Revision { main: 2, sub };
    assert_eq!(
        subs,
        vec![(r(0), false), (r(1), false), (r(2), true), (r(3), false)]
    );
    assert_eq!(ev.len(), 4);
    assert_eq!(ev[1].kv, Some(kv("a", "2", 2, 2, 2)));
    assert_eq!(
        get(&m, rr("a", "")).unwrap().kvs,
        vec![kv("a", "3", 2, 2, 1)]
    );
}

#[test]
fn compaction() {
    let mut m = Mvcc::new();
    put(&mut m, "a", "1"); // 2
    put(&mut m, "a", "2"); // 3
    put(&mut m, "b", "1"); // 4
    del(&mut m, "b", b""); // 5
    put(&mut m, "c", "1"); // 6
    put(&mut m, "a", "3"); // 7
    let mut b = WriteBatch::default();
    assert_eq!(m.compact(8, &mut b), Err(EtcdError::FutureRev));
    m.compact(5, &mut b).unwrap();
    let meta = |k: &[u8]| BatchOp::Put {
        bucket: Bucket::Meta,
        key: k.to_vec(),
        value: encode_revision(Revision { main: 5, sub: 0 }, false),
    };
    let gone = |main, tomb| BatchOp::Delete {
        bucket: Bucket::Key,
        key: encode_revision(Revision { main, sub: 0 }, tomb),
    };
    assert_eq!(
        b.ops,
        vec![
            meta(SCHEDULED_COMPACT_KEY),
            gone(2, false),
            gone(4, false),
            gone(5, true),
            meta(FINISHED_COMPACT_KEY)
        ]
    );
    assert_eq!(m.compact_revision(), 5);
    assert_eq!(m.compact(5, &mut b), Err(EtcdError::Compacted));
    assert_eq!(
        get(
            &m,
            RangeRequest {
                revision: 4,
                ..rr("a", "")
            }
        ),
        Err(EtcdError::Compacted)
    );
    let at5 = get(
        &m,
        RangeRequest {
            revision: 5,
            ..rr("\0", "\0")
        },
    )
    .unwrap();
    assert_eq!(at5.kvs, vec![kv("a", "2", 2, 3, 2)]);
    assert_eq!(get(&m, rr("\0", "\0")).unwrap().count, 2);
    // A txn range below the compact revision fails the txn.
    let t = TxnRequest {
        compare: vec![],
        success: vec![op_get("a", 4)],
        failure: vec![],
    };
    assert_eq!(txn(&mut m, &t), Err(EtcdError::Compacted));
    assert_eq!(m.hash_kv(5), Err(EtcdError::Compacted));
    assert!(m.hash_kv(6).is_ok());
    // etcd: compacting a fresh store at 0 succeeds, and then a negative revision fails.
    let mut f = Mvcc::new();
    f.compact(0, &mut WriteBatch::default()).unwrap();
    assert_eq!(
        f.compact(-5, &mut WriteBatch::default()),
        Err(EtcdError::Compacted)
    );
    f.compact(1, &mut WriteBatch::default()).unwrap();
}

#[test]
fn restore_rejects_corruption() {
    let k = encode_revision(Revision { main: 2, sub: 0 }, false);
    let good = kv("a", "1", 2, 2, 1).encode_to_vec();
    assert!(Mvcc::restore(vec![(k.clone(), good.clone())], vec![]).is_ok());
    let bad = |key: Vec<u8>, v: Vec<u8>| {
        matches!(
            Mvcc::restore(vec![(key, v)], vec![]),
            Err(EtcdError::Corrupt(_))
        )
    };
    assert!(bad(k[..16].to_vec(), good.clone()));
    assert!(bad(k.clone(), vec![0xff, 0xff]));
    assert!(bad(k.clone(), kv("a", "1", 2, 3, 1).encode_to_vec()));
    assert!(bad(
        encode_revision(Revision { main: 2, sub: 0 }, true),
        KeyValue {
            key: "a".into(),
            ..Default::default()
        }
        .encode_to_vec()
    ));
    let meta = vec![(FINISHED_COMPACT_KEY.to_vec(), b"x".to_vec())];
    assert!(matches!(
        Mvcc::restore(vec![], meta),
        Err(EtcdError::Corrupt(_))
    ));
}

/// The store of the etcd 3.4.23 watch probe: a=1 (2), a=2 (3), b=1 (4), del a (5), a=3 (6),
/// compaction at 3.
fn watch_probe_store() -> Mvcc {
    let mut m = Mvcc::new();
    put(&mut m, "a", "1");
    put(&mut m, "a", "2");
    put(&mut m, "b", "1");
    del(&mut m, "a", b"");
    put(&mut m, "a", "3");
    m.compact(3, &mut WriteBatch::default()).unwrap();
    m
}

fn put_ev(kv: KeyValue, prev: Option<KeyValue>) -> Event {
    Event {
        r#type: EventType::Put as i32,
        kv: Some(kv),
        prev_kv: prev,
    }
}

fn del_ev(k: &str, rev: i64, prev: Option<KeyValue>) -> Event {
    Event {
        r#type: EventType::Delete as i32,
        kv: Some(KeyValue {
            key: k.into(),
            mod_revision: rev,
            ..Default::default()
        }),
        prev_kv: prev,
    }
}

#[test]
fn history_matches_etcd_watch() {
    let m = watch_probe_store();
    // `etcdctl watch a --rev 4 --prev-kv` against etcd 3.4.23.
    let h = m.history(b"a", b"", 4, 6, usize::MAX, usize::MAX).unwrap();
    assert_eq!(
        h.events,
        vec![
            del_ev("a", 5, Some(kv("a", "2", 2, 3, 2))),
            put_ev(kv("a", "3", 6, 6, 1), None),
        ]
    );
    assert_eq!(h.through_revision, 6);
    // `etcdctl watch --prefix '' --rev 3`: from the compact revision on is readable; the
    // prev_kv of the event at the compact revision is gone with the compaction.
    let h = m
        .history(&[0], &[0], 3, 100, usize::MAX, usize::MAX)
        .unwrap();
    assert_eq!(
        h.events,
        vec![
            put_ev(kv("a", "2", 2, 3, 2), None),
            put_ev(kv("b", "1", 4, 4, 1), None),
            del_ev("a", 5, Some(kv("a", "2", 2, 3, 2))),
            put_ev(kv("a", "3", 6, 6, 1), None),
        ]
    );
    assert_eq!(h.through_revision, 6, "clamped to the current revision");
    // `etcdctl watch a --rev 1`: compacted.
    assert_eq!(
        m.history(b"a", b"", 1, 6, usize::MAX, usize::MAX),
        Err(EtcdError::Compacted)
    );
    assert_eq!(
        m.history(b"a", b"", 2, 6, usize::MAX, usize::MAX),
        Err(EtcdError::Compacted)
    );
    // Nothing to read: an empty answer through the end.
    let h = m.history(b"a", b"", 7, 6, 10, usize::MAX).unwrap();
    assert_eq!((h.events.len(), h.through_revision), (0, 6));
    // Ranges: [b, c) and an inverted range.
    let h = m.history(b"b", b"c", 3, 6, 10, usize::MAX).unwrap();
    assert_eq!(h.events, vec![put_ev(kv("b", "1", 4, 4, 1), None)]);
    assert!(m
        .history(b"c", b"b", 3, 6, 10, usize::MAX)
        .unwrap()
        .events
        .is_empty());
}

#[test]
fn history_limit_keeps_revisions_whole() {
    let mut m = Mvcc::new();
    // Revision 2 writes three keys in one txn, then single puts at 3 and 4.
    let t = TxnRequest {
        compare: vec![],
        success: vec![op_put("x", "1"), op_put("y", "1"), op_put("z", "1")],
        failure: vec![],
    };
    txn(&mut m, &t).unwrap();
    put(&mut m, "x", "2");
    put(&mut m, "y", "2");
    let all = |from, max| m.history(&[0], &[0], from, 4, max, usize::MAX).unwrap();
    // The first revision is returned whole even above the limit.
    let h = all(2, 1);
    assert_eq!((h.events.len(), h.through_revision), (3, 2));
    // Revisions 2 and 3 fit in four events; revision 4 would exceed them.
    let h = all(2, 4);
    assert_eq!((h.events.len(), h.through_revision), (4, 3));
    let h = all(3, 1);
    assert_eq!((h.events.len(), h.through_revision), (1, 3));
    let h = all(2, 100);
    assert_eq!((h.events.len(), h.through_revision), (5, 4));
    // A byte limit cuts the same way: the first revision whole, then whatever fits.
    let one = h.events[0].encoded_len();
    let h2 = m.history(&[0], &[0], 2, 4, 100, one).unwrap();
    assert_eq!((h2.events.len(), h2.through_revision), (3, 2));
    let h2 = m
        .history(&[0], &[0], 2, 4, 100, 3 * one + h.events[3].encoded_len())
        .unwrap();
    assert_eq!((h2.events.len(), h2.through_revision), (4, 3));
    // Live events of the txn carry prev_kv from before the txn (none: all created).
    assert!(h.events[..3].iter().all(|e| e.prev_kv.is_none()));
    assert_eq!(h.events[3].prev_kv, Some(kv("x", "1", 2, 2, 1)));
}

#[test]
fn live_leased_lists_the_current_versions_with_a_lease() {
    let mut m = Mvcc::new();
    let leases = |id: i64| id == 7;
    let leased = |k: &str, v: &str, lease: i64| PutRequest {
        key: k.into(),
        value: v.into(),
        lease,
        ..Default::default()
    };
    let mut b = WriteBatch::default();
    let mut ev = Vec::new();
    m.put(&leased("a", "1", 7), &leases, &mut b, &mut ev)
        .unwrap();
    m.put(&leased("b", "1", 7), &leases, &mut b, &mut ev)
        .unwrap();
    put(&mut m, "c", "plain");
    // "b" loses its lease on overwrite; "d" is deleted while leased.
    put(&mut m, "b", "2");
    m.put(&leased("d", "1", 7), &leases, &mut b, &mut ev)
        .unwrap();
    del(&mut m, "d", b"");
    m.put(&leased("a", "2", 7), &leases, &mut b, &mut ev)
        .unwrap();
    let live: Vec<(String, String, i64)> = m
        .live_leased()
        .into_iter()
        .map(|kv| {
            (
                String::from_utf8(kv.key).unwrap(),
                String::from_utf8(kv.value).unwrap(),
                kv.lease,
            )
        })
        .collect();
    assert_eq!(live, vec![("a".to_string(), "2".to_string(), 7)]);
}
