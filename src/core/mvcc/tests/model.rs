//! A model test: random request sequences against an obviously correct model that keeps
//! every historical version in a flat list and scans it linearly, plus a restore check
//! that replays the write batches into a map and rebuilds the store at the end.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::core::apply::{apply, Response};
use crate::pb::detcdpb::InternalRequest;
use crate::pb::etcdserverpb::CompactionRequest;

/// The model: every change ever made, in revision order (`None` value = delete).
#[derive(Debug, Default)]
struct Model {
    hist: Vec<(Vec<u8>, i64, Option<KeyValue>)>,
    rev: i64,
    compact: i64,
}

const KEYS: [&str; 4] = ["a", "b", "c", "d"];

impl Model {
    fn new() -> Self {
        Model {
            hist: Vec::new(),
            rev: 1,
            compact: -1,
        }
    }

    fn at(&self, key: &[u8], rev: i64) -> Option<KeyValue> {
        self.hist
            .iter()
            .rev()
            .find(|(k, r, _)| k == key && *r <= rev)
            .and_then(|(_, _, v)| v.clone())
    }

    fn in_range(k: &[u8], key: &[u8], end: &[u8]) -> bool {
        match end {
            [] => k == key,
            [0] => k >= key,
            e => k >= key && k < e,
        }
    }

    fn visible(&self, key: &[u8], end: &[u8], rev: i64) -> Vec<KeyValue> {
        let mut ks: Vec<Vec<u8>> = self.hist.iter().map(|(k, _, _)| k.clone()).collect();
        ks.sort();
        ks.dedup();
        ks.into_iter()
            .filter(|k| Self::in_range(k, key, end))
            .filter_map(|k| self.at(&k, rev))
            .collect()
    }

    fn range(&self, r: &RangeRequest, cur: i64) -> Result<RangeResponse, EtcdError> {
        if r.revision > cur {
            return Err(EtcdError::FutureRev);
        }
        let rev = if r.revision <= 0 { cur } else { r.revision };
        if rev < self.compact {
            return Err(EtcdError::Compacted);
        }
        let all = self.visible(&r.key, &r.range_end, rev);
        let count = all.len() as i64;
        let mut kvs: Vec<KeyValue> = if r.count_only { vec![] } else { all };
        let filtering = r.sort_order != 0
            || r.min_mod_revision != 0
            || r.max_mod_revision != 0
            || r.min_create_revision != 0
            || r.max_create_revision != 0;
        if !filtering && r.limit > 0 {
            kvs.truncate(r.limit as usize + 1);
        }
        kvs.retain(|kv| {
            (r.max_mod_revision == 0 || kv.mod_revision <= r.max_mod_revision)
                && (r.min_mod_revision == 0 || kv.mod_revision >= r.min_mod_revision)
                && (r.max_create_revision == 0 || kv.create_revision <= r.max_create_revision)
                && (r.min_create_revision == 0 || kv.create_revision >= r.min_create_revision)
        });
        let order = if r.sort_target != 0 && r.sort_order == 0 {
            1
        } else {
            r.sort_order
        };
        let field = |kv: &KeyValue| -> Vec<u8> {
            match r.sort_target {
                0 => kv.key.clone(),
                1 => kv.version.to_be_bytes().to_vec(),
                2 => kv.create_revision.to_be_bytes().to_vec(),
                3 => kv.mod_revision.to_be_bytes().to_vec(),
                _ => kv.value.clone(),
            }
        };
        if order == 1 {
            kvs.sort_by_key(|kv| (field(kv), kv.key.clone()));
        } else if order == 2 {
            kvs.sort_by_key(|kv| (std::cmp::Reverse(field(kv)), kv.key.clone()));
        }
        let more = r.limit > 0 && kvs.len() > r.limit as usize;
        if more {
            kvs.truncate(r.limit as usize);
        }
        if r.keys_only {
            kvs.iter_mut().for_each(|kv| kv.value.clear());
        }
        Ok(RangeResponse {
            header: None,
            kvs,
            more,
            count,
        })
    }

    fn compare(&self, c: &Compare) -> bool {
        let found = self.visible(&c.key, &c.range_end, self.rev);
        if found.is_empty() {
            return c.target != 3 && compare_kv(c, &KeyValue::default());
        }
        found.iter().all(|kv| compare_kv(c, kv))
    }

    fn path(&self, t: &TxnRequest, out: &mut Vec<bool>) {
        let ok = t.compare.iter().all(|c| self.compare(c));
        out.push(ok);
        for op in if ok { &t.success } else { &t.failure } {
            if let Some(request_op::Request::RequestTxn(n)) = &op.request {
                self.path(n, out);
            }
        }
    }

    /// Applies one request; `changes` collects (key, value-or-delete) at `self.rev + 1`.
    fn apply(
        &mut self,
        req: &InternalRequest,
        leases: &dyn Fn(i64) -> bool,
    ) -> Result<Response, EtcdError> {
        let mut changes = Vec::new();
        let res = if let Some(p) = &req.put {
            if p.lease != 0 && !leases(p.lease) {
                return Err(EtcdError::LeaseNotFound);
            }
            self.put(p, &mut changes).map(Response::Put)
        } else if let Some(d) = &req.delete_range {
            Ok(Response::DeleteRange(self.del(d, &mut changes)))
        } else if let Some(t) = &req.txn {
            let mut path = Vec::new();
            self.path(t, &mut path);
            // Checks against the state before the txn, along the chosen path.
            let mut flat = Vec::new();
            flatten(t, &path, &mut 0, &mut flat);
            let write = !t
                .success
                .iter()
                .chain(&t.failure)
                .all(|op| matches!(op.request, Some(request_op::Request::RequestRange(_))));
            if write {
                for op in &flat {
                    if let Some(request_op::Request::RequestPut(p)) = &op.request {
                        if (p.ignore_value || p.ignore_lease) && self.at(&p.key, self.rev).is_none()
                        {
                            return Err(EtcdError::KeyNotFound);
                        }
                        if p.lease != 0 && !leases(p.lease) {
                            return Err(EtcdError::LeaseNotFound);
                        }
                    }
                }
            }
            for op in &flat {
                if let Some(request_op::Request::RequestRange(r)) = &op.request {
                    if r.revision > self.rev {
                        return Err(EtcdError::FutureRev);
                    }
                    if r.revision != 0 && r.revision < self.compact {
                        return Err(EtcdError::Compacted);
                    }
                }
            }
            self.txn(t, &path, &mut 0, &mut changes).map(Response::Txn)
        } else if let Some(c) = &req.compaction {
            if c.revision <= self.compact {
                return Err(EtcdError::Compacted);
            }
            if c.revision > self.rev {
                return Err(EtcdError::FutureRev);
            }
            self.compact = c.revision;
            Ok(Response::Compaction(CompactionResponse::default()))
        } else if let Some(r) = &req.range {
            self.range(r, self.rev).map(Response::Range)
        } else {
            unreachable!()
        };
        if res.is_err() {
            self.hist.truncate(self.hist.len() - changes.len());
        } else if !changes.is_empty() {
            self.rev += 1;
        }
        res
    }

    fn cur(&self, changes: &[()]) -> i64 {
        self.rev + i64::from(!changes.is_empty())
    }

    fn put(&mut self, p: &PutRequest, changes: &mut Vec<()>) -> Result<PutResponse, EtcdError> {
        let cur = self.cur(changes);
        let prev = self.at(&p.key, cur);
        if (p.ignore_value || p.ignore_lease) && prev.is_none() {
            return Err(EtcdError::KeyNotFound);
        }
        let new_rev = self.rev + 1;
        let kv = KeyValue {
            key: p.key.clone(),
            create_revision: prev.as_ref().map_or(new_rev, |k| k.create_revision),
            mod_revision: new_rev,
            version: prev.as_ref().map_or(1, |k| k.version + 1),
            value: if p.ignore_value {
                prev.as_ref().unwrap().value.clone()
            } else {
                p.value.clone()
            },
            lease: if p.ignore_lease {
                prev.as_ref().unwrap().lease
            } else {
                p.lease
            },
        };
        self.hist.push((p.key.clone(), new_rev, Some(kv)));
        changes.push(());
        Ok(PutResponse {
            header: None,
            prev_kv: if p.prev_kv { prev } else { None },
        })
    }

    fn del(&mut self, d: &DeleteRangeRequest, changes: &mut Vec<()>) -> DeleteRangeResponse {
        let found = self.visible(&d.key, &d.range_end, self.cur(changes));
        for kv in &found {
            self.hist.push((kv.key.clone(), self.rev + 1, None));
            changes.push(());
        }
        DeleteRangeResponse {
            header: None,
            deleted: found.len() as i64,
            prev_kvs: if d.prev_kv { found } else { vec![] },
        }
    }

    fn txn(
        &mut self,
        t: &TxnRequest,
        path: &[bool],
        i: &mut usize,
        changes: &mut Vec<()>,
    ) -> Result<TxnResponse, EtcdError> {
        let ok = path[*i];
        *i += 1;
        let mut responses = Vec::new();
        for op in if ok { &t.success } else { &t.failure } {
            use response_op::Response as R;
            let h = |rev| {
                Some(ResponseHeader {
                    revision: rev,
                    ..Default::default()
                })
            };
            let r = match op.request.as_ref().unwrap() {
                request_op::Request::RequestRange(r) => {
                    let cur = self.cur(changes);
                    R::ResponseRange(RangeResponse {
                        header: h(cur),
                        ..self.range(r, cur)?
                    })
                }
                request_op::Request::RequestPut(p) => R::ResponsePut(PutResponse {
                    header: h(self.rev + 1),
                    ..self.put(p, changes)?
                }),
                request_op::Request::RequestDeleteRange(d) => {
                    let resp = self.del(d, changes);
                    R::ResponseDeleteRange(DeleteRangeResponse {
                        header: h(self.cur(changes)),
                        ..resp
                    })
                }
                request_op::Request::RequestTxn(n) => R::ResponseTxn(TxnResponse {
                    header: Some(ResponseHeader::default()),
                    ..self.txn(n, path, i, changes)?
                }),
            };
            responses.push(ResponseOp { response: Some(r) });
        }
        Ok(TxnResponse {
            header: None,
            succeeded: ok,
            responses,
        })
    }
}

/// The non-txn ops of the chosen branches, depth first.
fn flatten(t: &TxnRequest, path: &[bool], i: &mut usize, out: &mut Vec<RequestOp>) {
    let ok = path[*i];
    *i += 1;
    for op in if ok { &t.success } else { &t.failure } {
        match &op.request {
            Some(request_op::Request::RequestTxn(n)) => flatten(n, path, i, out),
            _ => out.push(op.clone()),
        }
    }
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(KEYS.to_vec()).prop_map(|k| k.as_bytes().to_vec())
}

fn range_end() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(vec![]),
        Just(vec![]),
        Just(vec![0]),
        key(),
        Just(b"e".to_vec())
    ]
}

fn range_req() -> impl Strategy<Value = RangeRequest> {
    (
        key(),
        range_end(),
        0i64..4,
        -1i64..4,
        0i32..3,
        0i32..5,
        any::<bool>(),
        prop::bool::weighted(0.1),
        0i64..6,
        0i64..6,
        0i64..4,
        0i64..6,
    )
        .prop_map(
            |(
                key,
                range_end,
                limit,
                rev_back,
                sort_order,
                sort_target,
                keys_only,
                count_only,
                a,
                b,
                c,
                d,
            )| RangeRequest {
                key,
                range_end,
                limit,
                // Encoded relative to the current revision when applied; see `resolve`.
                revision: rev_back,
                sort_order,
                sort_target,
                serializable: false,
                keys_only,
                count_only,
                min_mod_revision: a,
                max_mod_revision: if b == 0 { 0 } else { b + 4 },
                min_create_revision: c,
                max_create_revision: d,
            },
        )
}

fn put_req() -> impl Strategy<Value = PutRequest> {
    (
        key(),
        prop::sample::select(vec!["", "x", "y", "zz"]),
        0i64..3,
        any::<bool>(),
        prop::bool::weighted(0.15),
        prop::bool::weighted(0.15),
    )
        .prop_map(
            |(key, v, lease, prev_kv, ignore_value, ignore_lease)| PutRequest {
                key,
                value: if ignore_value { vec![] } else { v.into() },
                lease: if ignore_lease { 0 } else { lease },
                prev_kv,
                ignore_value,
                ignore_lease,
            },
        )
}

fn del_req() -> impl Strategy<Value = DeleteRangeRequest> {
    (key(), range_end(), any::<bool>()).prop_map(|(key, range_end, prev_kv)| DeleteRangeRequest {
        key,
        range_end,
        prev_kv,
    })
}

fn compare_strategy() -> impl Strategy<Value = Compare> {
    (
        key(),
        prop_oneof![Just(vec![]), Just(vec![]), key()],
        0i32..5,
        0i32..4,
        0i64..6,
        prop::sample::select(vec!["", "x", "y"]),
    )
        .prop_map(|(key, range_end, target, result, n, v)| {
            use compare::TargetUnion as U;
            let target_union = Some(match target {
                0 => U::Version(n),
                1 => U::CreateRevision(n),
                2 => U::ModRevision(n),
                3 => U::Value(v.into()),
                _ => U::Lease(n % 3),
            });
            Compare {
                result,
                target,
                key,
                range_end,
                target_union,
            }
        })
}

fn op_strategy() -> BoxedStrategy<RequestOp> {
    let leaf = prop_oneof![
        range_req()
            .prop_map(|r| request_op::Request::RequestRange(RangeRequest { revision: 0, ..r })),
        put_req().prop_map(request_op::Request::RequestPut),
        del_req().prop_map(request_op::Request::RequestDeleteRange),
    ];
    leaf.prop_map(|r| RequestOp { request: Some(r) }).boxed()
}

fn txn_req(depth: u32) -> BoxedStrategy<TxnRequest> {
    let op = if depth == 0 {
        op_strategy()
    } else {
        prop_oneof![4 => op_strategy(), 1 => txn_req(depth - 1).prop_map(|t| RequestOp { request: Some(request_op::Request::RequestTxn(t)) })].boxed()
    };
    (
        prop::collection::vec(compare_strategy(), 0..3),
        prop::collection::vec(op.clone(), 0..4),
        prop::collection::vec(op, 0..3),
    )
        .prop_map(|(compare, success, failure)| TxnRequest {
            compare,
            success,
            failure,
        })
        .boxed()
}

#[derive(Debug, Clone)]
enum Step {
    Req(Box<InternalRequest>),
    /// A range at `current - back` (negative: into the future).
    RangeBack(RangeRequest),
    /// Compact at `current - back`.
    CompactBack(i64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => put_req().prop_map(|p| Step::Req(Box::new(InternalRequest { put: Some(p), ..Default::default() }))),
        2 => del_req().prop_map(|d| Step::Req(Box::new(InternalRequest { delete_range: Some(d), ..Default::default() }))),
        3 => range_req().prop_map(Step::RangeBack),
        3 => txn_req(1).prop_map(|t| Step::Req(Box::new(InternalRequest { txn: Some(t), ..Default::default() }))),
        1 => (0i64..4).prop_map(Step::CompactBack),
    ]
}

fn resolve(step: &Step, current: i64) -> InternalRequest {
    match step {
        Step::Req(r) => (**r).clone(),
        Step::RangeBack(r) => {
            let revision = if r.revision == -1 {
                current + 1
            } else if r.revision == 0 {
                0
            } else {
                current - r.revision
            };
            InternalRequest {
                range: Some(RangeRequest {
                    revision,
                    ..r.clone()
                }),
                ..Default::default()
            }
        }
        Step::CompactBack(b) => InternalRequest {
            compaction: Some(CompactionRequest {
                revision: current - b,
                physical: false,
            }),
            ..Default::default()
        },
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn mvcc_matches_model(steps in prop::collection::vec(step(), 1..40)) {
        let leases = |id: i64| id == 1;
        let mut m = Mvcc::new();
        let mut model = Model::new();
        let mut disk: BTreeMap<(Bucket, Vec<u8>), Vec<u8>> = BTreeMap::new();
        let mut live_events = Vec::new();
        for s in &steps {
            let req = resolve(s, m.current_revision());
            let out = apply(&mut m, &req, &leases);
            // Live events carry the key's value before the request as prev_kv.
            for e in &out.events {
                let kv = e.kv.as_ref().unwrap();
                let before = model.range(&RangeRequest { key: kv.key.clone(), revision: model.rev, ..Default::default() }, model.rev).unwrap();
                prop_assert_eq!(e.prev_kv.as_ref(), before.kvs.first(), "prev_kv of {:?}", e);
            }
            live_events.extend(out.events.iter().cloned());
            let want = model.apply(&req, &leases);
            prop_assert_eq!(&out.result, &want, "request {:?}", req);
            prop_assert_eq!(m.current_revision(), model.rev);
            prop_assert_eq!(m.compact_revision(), model.compact);
            // The kept count of live keys follows puts, deletes, compactions and failed
            // requests undone part way.
            let live = KEYS.iter().filter(|k| model.at(k.as_bytes(), model.rev).is_some()).count();
            prop_assert_eq!(m.key_count(), live);
            if out.result.is_err() {
                prop_assert!(out.batch.ops.is_empty() && out.events.is_empty());
            }
            for op in out.batch.ops {
                match op {
                    BatchOp::Put { bucket, key, value } => { disk.insert((bucket, key), value); }
                    BatchOp::Delete { bucket, key } => { prop_assert!(disk.remove(&(bucket, key)).is_some()); }
                }
            }
        }
        // Every readable revision answers the same in the store, the model and a restored copy.
        let pick = |b: Bucket| disk.iter().filter(move |((bk, _), _)| *bk == b).map(|((_, k), v)| (k.clone(), v.clone())).collect::<Vec<_>>();
        let restored = Mvcc::restore(pick(Bucket::Key), pick(Bucket::Meta)).unwrap();
        prop_assert_eq!(restored.current_revision(), m.current_revision());
        prop_assert_eq!(restored.compact_revision(), m.compact_revision());
        prop_assert_eq!(restored.key_count(), m.key_count());
        prop_assert_eq!(restored.hash_kv(0), m.hash_kv(0));
        for rev in m.compact_revision().max(1)..=m.current_revision() {
            let all = RangeRequest { key: vec![0], range_end: vec![0], revision: rev, ..Default::default() };
            let got = m.range(&all);
            prop_assert_eq!(&got, &model.range(&all, model.rev));
            prop_assert_eq!(&restored.range(&all), &got);
        }
        prop_assert_eq!(&restored, &m);
        // History after the compact revision replays exactly the live events, prev_kv
        // included, for every start, whole or in limited pieces, in the live store and in
        // the restored one.
        let cur = m.current_revision();
        for from in (m.compact_revision() + 1).max(1)..=cur + 1 {
            let want: Vec<_> = live_events.iter().filter(|e| e.kv.as_ref().unwrap().mod_revision >= from).cloned().collect();
            let h = m.history(&[0], &[0], from, cur, usize::MAX, usize::MAX).unwrap();
            prop_assert_eq!(&h.events, &want);
            prop_assert_eq!(h.through_revision, cur);
            prop_assert_eq!(&restored.history(&[0], &[0], from, cur, usize::MAX, usize::MAX).unwrap(), &h);
            let mut pieces = Vec::new();
            let mut next = from;
            while next <= cur {
                let part = m.history(&[0], &[0], next, cur, 3, 60).unwrap();
                prop_assert!(part.through_revision >= next, "no progress from {}", next);
                pieces.extend(part.events);
                next = part.through_revision + 1;
            }
            prop_assert_eq!(&pieces, &want);
        }
        if m.compact_revision() > 1 {
            prop_assert_eq!(m.history(&[0], &[0], m.compact_revision() - 1, cur, 10, usize::MAX), Err(EtcdError::Compacted));
        }
    }
}
