//! etcd's backend quota: what a write is estimated to cost, and whether the backend has
//! room for it (etcd's `backendQuota`).

use crate::pb::detcdpb::InternalRequest;
use crate::pb::etcdserverpb::{request_op, PutRequest, TxnRequest};

/// etcd's default quota, used when `--quota-backend-bytes` is 0: 2 GiB.
pub const DEFAULT_QUOTA_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// The largest quota etcd recommends (8 GiB); a larger one is accepted with a warning.
pub const MAX_QUOTA_BYTES: u64 = 8 * 1024 * 1024 * 1024;
/// etcd's estimate of the backend bytes a put costs beyond its key and value.
pub const KV_OVERHEAD_BYTES: u64 = 256;
/// etcd's estimate of the backend bytes a lease grant costs.
pub const LEASE_OVERHEAD_BYTES: u64 = 64;

/// The quota a member enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// The most bytes the backend may hold; `None` when quotas are disabled.
    pub limit_bytes: Option<u64>,
}

impl Quota {
    /// The quota for `--quota-backend-bytes`: 0 means etcd's 2 GiB default, a negative
    /// value disables the quota (as etcd's `passthroughQuota`).
    pub fn from_flag(quota_backend_bytes: i64) -> Quota {
        let limit_bytes = match quota_backend_bytes {
            n if n < 0 => None,
            0 => Some(DEFAULT_QUOTA_BYTES),
            n => Some(n as u64),
        };
        Quota { limit_bytes }
    }

    /// Whether a backend of `size_bytes` has room for a request costing `cost_bytes`:
    /// etcd's `size + cost < quota`, strictly.
    pub fn available(&self, size_bytes: u64, cost_bytes: u64) -> bool {
        match self.limit_bytes {
            None => true,
            Some(limit) => size_bytes.saturating_add(cost_bytes) < limit,
        }
    }
}

/// etcd's cost of a put: its key and value plus [`KV_OVERHEAD_BYTES`].
pub fn put_cost_bytes(put: &PutRequest) -> u64 {
    KV_OVERHEAD_BYTES + put.key.len() as u64 + put.value.len() as u64
}

/// etcd's cost of a txn: the costlier branch, counting only the puts at its top level
/// (etcd does not look into nested txns).
pub fn txn_cost_bytes(txn: &TxnRequest) -> u64 {
    let branch = |ops: &[crate::pb::etcdserverpb::RequestOp]| -> u64 {
        ops.iter()
            .map(|op| match &op.request {
                Some(request_op::Request::RequestPut(p)) => put_cost_bytes(p),
                _ => 0,
            })
            .sum()
    };
    branch(&txn.success).max(branch(&txn.failure))
}

/// The cost of a request that etcd checks against the quota (puts, txns and lease
/// grants), or `None` for every other request.
pub fn request_cost_bytes(req: &InternalRequest) -> Option<u64> {
    if let Some(p) = &req.put {
        Some(put_cost_bytes(p))
    } else if let Some(t) = &req.txn {
        Some(txn_cost_bytes(t))
    } else if req.lease_grant.is_some() {
        Some(LEASE_OVERHEAD_BYTES)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::etcdserverpb::{LeaseGrantRequest, RequestOp};

    fn put(key: &str, value: &str) -> PutRequest {
        PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        }
    }

    fn put_op(key: &str, value: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(put(key, value))),
        }
    }

    #[test]
    fn flag_and_availability() {
        assert_eq!(Quota::from_flag(0).limit_bytes, Some(DEFAULT_QUOTA_BYTES));
        assert_eq!(Quota::from_flag(-1).limit_bytes, None);
        let q = Quota::from_flag(1000);
        assert!(q.available(500, 499));
        assert!(
            !q.available(500, 500),
            "etcd wants strictly below the quota"
        );
        assert!(!q.available(u64::MAX, 1));
        assert!(Quota::from_flag(-5).available(u64::MAX, u64::MAX));
    }

    #[test]
    fn costs_follow_etcd() {
        assert_eq!(put_cost_bytes(&put("ab", "cde")), 256 + 5);
        let txn = TxnRequest {
            success: vec![put_op("a", "b"), put_op("c", "")],
            failure: vec![put_op("long-key", "long-value")],
            ..Default::default()
        };
        assert_eq!(
            txn_cost_bytes(&txn),
            (256 + 2) + (256 + 1),
            "the costlier branch"
        );
        let nested = TxnRequest {
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestTxn(txn)),
            }],
            ..Default::default()
        };
        assert_eq!(txn_cost_bytes(&nested), 0);
        let grant = InternalRequest {
            lease_grant: Some(LeaseGrantRequest::default()),
            ..Default::default()
        };
        assert_eq!(request_cost_bytes(&grant), Some(64));
        assert_eq!(request_cost_bytes(&InternalRequest::default()), None);
    }
}
