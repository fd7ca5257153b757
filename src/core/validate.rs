//! The checks etcd's gRPC layer runs on key-value requests before proposing them (etcd
//! 3.4 `etcdserver/api/v3rpc/key.go`). A request that fails here never reaches the log.
//!
//! One deliberate addition: [`check_range`] rejects unknown `sort_order`/`sort_target`
//! values with etcd 3.5's "invalid sort option" error; etcd 3.4 accepts them and then
//! crashes while sorting.

use std::collections::BTreeSet;

use crate::error::EtcdError;
use crate::pb::etcdserverpb::{
    range_request, request_op, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};

/// etcd's default `--max-txn-ops`.
pub const DEFAULT_MAX_TXN_OPS: usize = 128;

/// The message of etcd 3.5's `ErrGRPCInvalidSortOption`.
pub const INVALID_SORT_OPTION: &str = "etcdserver: invalid sort option";

/// etcd's `checkRangeRequest`: the key must be set (and, here, sort options known).
pub fn check_range(r: &RangeRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if range_request::SortOrder::try_from(r.sort_order).is_err()
        || range_request::SortTarget::try_from(r.sort_target).is_err()
    {
        return Err(EtcdError::InvalidArgument(INVALID_SORT_OPTION.into()));
    }
    Ok(())
}

/// etcd's `checkPutRequest`: a key, and no value with `ignore_value` nor lease with
/// `ignore_lease`.
pub fn check_put(r: &PutRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(EtcdError::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(EtcdError::LeaseProvided);
    }
    Ok(())
}

/// etcd's `checkDeleteRequest`: the key must be set.
pub fn check_delete(r: &DeleteRangeRequest) -> Result<(), EtcdError> {
    if r.key.is_empty() {
        return Err(EtcdError::EmptyKey);
    }
    Ok(())
}

/// What etcd's `Txn` handler checks: the op counts and every op (`checkTxnRequest`),
/// then that no branch writes a key twice (`checkIntervals`, success branch first).
pub fn check_txn(r: &TxnRequest, max_txn_ops: usize) -> Result<(), EtcdError> {
    check_txn_request(r, i64::try_from(max_txn_ops).unwrap_or(i64::MAX))?;
    check_intervals(&r.success)?;
    check_intervals(&r.failure)?;
    Ok(())
}

/// etcd's `checkTxnRequest`. The budget of a nested txn is what its parent leaves (and
/// may go negative, which rejects any nested op list), as in etcd.
fn check_txn_request(r: &TxnRequest, max_txn_ops: i64) -> Result<(), EtcdError> {
    let opc = r.compare.len().max(r.success.len()).max(r.failure.len());
    let opc = i64::try_from(opc).unwrap_or(i64::MAX);
    if opc > max_txn_ops {
        return Err(EtcdError::TooManyOps);
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(EtcdError::EmptyKey);
    }
    for op in r.success.iter().chain(&r.failure) {
        check_request_op(op, max_txn_ops - opc)?;
    }
    Ok(())
}

/// etcd's `checkRequestOp`: an empty op is answered with "key not found", as etcd does.
fn check_request_op(op: &RequestOp, max_txn_ops: i64) -> Result<(), EtcdError> {
    match &op.request {
        Some(request_op::Request::RequestRange(r)) => check_range(r),
        Some(request_op::Request::RequestPut(p)) => check_put(p),
        Some(request_op::Request::RequestDeleteRange(d)) => check_delete(d),
        Some(request_op::Request::RequestTxn(t)) => check_txn_request(t, max_txn_ops),
        None => Err(EtcdError::KeyNotFound),
    }
}

/// A deleted interval as etcd's interval tree sees it: `[begin, end)` where an empty
/// bound stands for +infinity ("affine" strings).
#[derive(Debug, Clone, PartialEq, Eq)]
struct DelInterval {
    /// The first key (empty means +infinity, i.e. nothing).
    begin: Vec<u8>,
    /// The first key after the interval (empty means +infinity).
    end: Vec<u8>,
}

impl DelInterval {
    /// Whether the point `k` (etcd's `[k, k+"\0")`) intersects the interval.
    ///
    /// Note that a `range_end` of `"\0"` is taken literally, as etcd 3.4 does: the interval
    /// `[key, "\0")` is empty, so "delete from key" never conflicts with a put.
    fn contains(&self, k: &[u8]) -> bool {
        let after_begin = !self.begin.is_empty() && k >= self.begin.as_slice();
        let before_end = self.end.is_empty() || k < self.end.as_slice();
        after_begin && before_end
    }
}

/// etcd's `checkIntervals`: within one list of ops (and the txns nested in it), no key may
/// be put twice or both put and deleted; a nested txn's success and failure branches may
/// put the same key since only one of them runs. Returns the puts and the deletes.
fn check_intervals(ops: &[RequestOp]) -> Result<(BTreeSet<Vec<u8>>, Vec<DelInterval>), EtcdError> {
    let mut dels: Vec<DelInterval> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(request_op::Request::RequestDeleteRange(d)) => Some(DelInterval {
                begin: d.key.clone(),
                end: if d.range_end.is_empty() {
                    // A single key is etcd's point interval `[key, key+"\0")`.
                    let mut end = d.key.clone();
                    end.push(0);
                    end
                } else {
                    d.range_end.clone()
                },
            }),
            _ => None,
        })
        .collect();
    let hits = |dels: &[DelInterval], k: &[u8]| dels.iter().any(|d| d.contains(k));
    let mut puts: BTreeSet<Vec<u8>> = BTreeSet::new();
    for op in ops {
        let Some(request_op::Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let (puts_then, dels_then) = check_intervals(&t.success)?;
        let (puts_else, dels_else) = check_intervals(&t.failure)?;
        for k in &puts_then {
            if puts.contains(k) || hits(&dels, k) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        for k in &puts_else {
            if (puts.contains(k) && !puts_then.contains(k)) || hits(&dels, k) {
                return Err(EtcdError::DuplicateKey);
            }
            puts.insert(k.clone());
        }
        // etcd merges a child's deletes only after checking that child's puts, so
        // siblings see them but the child itself does not.
        dels.extend(dels_then);
        dels.extend(dels_else);
    }
    for op in ops {
        let Some(request_op::Request::RequestPut(p)) = &op.request else {
            continue;
        };
        if puts.contains(&p.key) || hits(&dels, &p.key) {
            return Err(EtcdError::DuplicateKey);
        }
        puts.insert(p.key.clone());
    }
    Ok((puts, dels))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::etcdserverpb::{compare, Compare};

    fn put(k: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: k.into(),
                ..Default::default()
            })),
        }
    }
    fn del(k: &str, end: &[u8]) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(
                DeleteRangeRequest {
                    key: k.into(),
                    range_end: end.to_vec(),
                    ..Default::default()
                },
            )),
        }
    }
    fn get(k: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest {
                key: k.into(),
                ..Default::default()
            })),
        }
    }
    fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
        TxnRequest {
            compare: vec![],
            success,
            failure,
        }
    }
    fn nested(t: TxnRequest) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestTxn(t)),
        }
    }

    #[test]
    fn simple_requests() {
        assert_eq!(
            check_range(&RangeRequest::default()),
            Err(EtcdError::EmptyKey)
        );
        assert_eq!(
            check_range(&RangeRequest {
                key: b"a".to_vec(),
                ..Default::default()
            }),
            Ok(())
        );
        let bad_sort = RangeRequest {
            key: b"a".to_vec(),
            sort_target: 9,
            ..Default::default()
        };
        assert_eq!(
            check_range(&bad_sort),
            Err(EtcdError::InvalidArgument(INVALID_SORT_OPTION.into()))
        );
        assert_eq!(check_put(&PutRequest::default()), Err(EtcdError::EmptyKey));
        let p = PutRequest {
            key: b"a".to_vec(),
            value: b"v".to_vec(),
            ignore_value: true,
            ..Default::default()
        };
        assert_eq!(check_put(&p), Err(EtcdError::ValueProvided));
        let p = PutRequest {
            key: b"a".to_vec(),
            lease: 5,
            ignore_lease: true,
            ..Default::default()
        };
        assert_eq!(check_put(&p), Err(EtcdError::LeaseProvided));
        let p = PutRequest {
            key: b"a".to_vec(),
            ignore_lease: true,
            ignore_value: true,
            ..Default::default()
        };
        assert_eq!(check_put(&p), Ok(()));
        assert_eq!(
            check_delete(&DeleteRangeRequest::default()),
            Err(EtcdError::EmptyKey)
        );
    }

    #[test]
    fn txn_op_counts_and_empty_ops() {
        let t = txn(vec![put("a"), put("b"), put("c")], vec![]);
        assert_eq!(check_txn(&t, 3), Ok(()));
        assert_eq!(check_txn(&t, 2), Err(EtcdError::TooManyOps));
        let mut t = txn(vec![], vec![]);
        t.compare = vec![Compare {
            key: vec![],
            ..Default::default()
        }];
        assert_eq!(check_txn(&t, 128), Err(EtcdError::EmptyKey));
        t.compare = vec![
            Compare {
                key: b"k".to_vec(),
                target: compare::CompareTarget::Value as i32,
                ..Default::default()
            };
            3
        ];
        assert_eq!(check_txn(&t, 2), Err(EtcdError::TooManyOps));
        let t = txn(vec![RequestOp { request: None }], vec![]);
        assert_eq!(check_txn(&t, 128), Err(EtcdError::KeyNotFound));
        let t = txn(vec![get("")], vec![]);
        assert_eq!(check_txn(&t, 128), Err(EtcdError::EmptyKey));
        // A nested txn gets the budget its parent leaves: 3 - 2 = 1 op.
        let t = txn(vec![put("a"), nested(txn(vec![put("b")], vec![]))], vec![]);
        assert_eq!(check_txn(&t, 3), Ok(()));
        let t = txn(
            vec![put("a"), nested(txn(vec![put("b"), put("c")], vec![]))],
            vec![],
        );
        assert_eq!(check_txn(&t, 3), Err(EtcdError::TooManyOps));
    }

    #[test]
    fn duplicate_keys() {
        let dup = Err(EtcdError::DuplicateKey);
        assert_eq!(check_txn(&txn(vec![put("a"), put("a")], vec![]), 128), dup);
        // Success and failure are separate.
        assert_eq!(check_txn(&txn(vec![put("a")], vec![put("a")]), 128), Ok(()));
        assert_eq!(
            check_txn(&txn(vec![del("a", b""), put("a")], vec![]), 128),
            dup
        );
        assert_eq!(
            check_txn(&txn(vec![del("p", b"r"), put("q")], vec![]), 128),
            dup
        );
        assert_eq!(
            check_txn(&txn(vec![del("p", b"r"), put("r")], vec![]), 128),
            Ok(())
        );
        // Verified against etcd 3.4.23: "delete from key" does not conflict with a put.
        assert_eq!(
            check_txn(&txn(vec![del("p", b"\0"), put("q")], vec![]), 128),
            Ok(())
        );
        // Two deletes may overlap, and ranges never conflict.
        assert_eq!(
            check_txn(
                &txn(vec![del("a", b"c"), del("b", b""), get("b")], vec![]),
                128
            ),
            Ok(())
        );
        assert_eq!(
            check_txn(&txn(vec![get("a"), put("a")], vec![]), 128),
            Ok(())
        );
        // Nested: then/else may put the same key, but not together with the parent.
        let n = nested(txn(vec![put("x")], vec![put("x")]));
        assert_eq!(check_txn(&txn(vec![n.clone()], vec![]), 128), Ok(()));
        assert_eq!(check_txn(&txn(vec![n.clone(), put("x")], vec![]), 128), dup);
        assert_eq!(
            check_txn(&txn(vec![n.clone(), n.clone()], vec![]), 128),
            dup
        );
        assert_eq!(
            check_txn(&txn(vec![del("x", b""), n.clone()], vec![]), 128),
            dup
        );
        // A nested delete conflicts with a put of the parent level.
        let nd = nested(txn(vec![del("a", b"z")], vec![]));
        assert_eq!(
            check_txn(&txn(vec![nd.clone(), put("m")], vec![]), 128),
            dup
        );
        // Inside one nested branch the usual rule holds.
        let bad = nested(txn(vec![put("y"), put("y")], vec![]));
        assert_eq!(check_txn(&txn(vec![], vec![bad]), 128), dup);
    }
}
