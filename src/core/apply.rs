//! The apply step: runs one committed [`InternalRequest`] against the MVCC store.

use crate::core::mvcc::Mvcc;
use crate::error::EtcdError;
use crate::pb::detcdpb::InternalRequest;
use crate::pb::etcdserverpb::{
    CompactionResponse, DeleteRangeResponse, PutResponse, RangeResponse, TxnResponse,
};
use crate::pb::mvccpb::Event;
use crate::storage::backend::WriteBatch;

/// The answer to one applied key-value request.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    /// The answer to a range.
    Range(RangeResponse),
    /// The answer to a put.
    Put(PutResponse),
    /// The answer to a delete.
    DeleteRange(DeleteRangeResponse),
    /// The answer to a txn.
    Txn(TxnResponse),
    /// The answer to a compaction.
    Compaction(CompactionResponse),
    /// The answer to a lease grant.
    LeaseGrant(crate::pb::etcdserverpb::LeaseGrantResponse),
    /// The answer to a lease revocation.
    LeaseRevoke(crate::pb::etcdserverpb::LeaseRevokeResponse),
    /// A member's published attributes were recorded (no client sees this answer).
    MemberAttrSet,
    /// The answer to an alarm request.
    Alarm(crate::pb::etcdserverpb::AlarmResponse),
    /// The answer to an Auth service request.
    Auth(Box<crate::core::auth_apply::AuthResponse>),
    /// A membership change was applied: the members afterwards, in id order.
    Members(Vec<crate::pb::detcdpb::MemberRecord>),
}

/// What applying one request produced.
#[derive(Debug, Clone, PartialEq)]
pub struct ApplyOutcome {
    /// The answer for the client, or etcd's error.
    pub result: Result<Response, EtcdError>,
    /// The durable changes, to write atomically (empty on error and for reads).
    pub batch: WriteBatch,
    /// The watch events, in revision order, `prev_kv` filled (empty on error).
    pub events: Vec<Event>,
}

/// Applies `req`, which must carry exactly one of `put`, `delete_range`, `txn`,
/// `compaction` and `range` (otherwise: `EtcdError::Internal`). `lease_exists` answers
/// whether a lease id is currently granted. A failed request leaves the store unchanged
/// and returns an empty batch and no events.
///
/// Headers: every response's top-level `header` is `None`; the caller fills it. In etcd
/// 3.4 its revision is the store's revision after the request, i.e.
/// [`Mvcc::current_revision`] once this returns (compaction and reads included).
///
/// Responses nested in a [`TxnResponse`] are different, and are filled here exactly as
/// etcd 3.4.23 fills them (verified against a running etcd 3.4.23): their headers carry
/// *only* a revision (cluster id, member id and raft term are 0), and
/// - a nested range carries the revision the txn reads at: the revision before the txn,
///   or one past it once the txn has changed anything;
/// - a nested put carries the txn's write revision (one past the revision before it);
/// - a nested delete carries the write revision if the txn has changed anything so far
///   (this delete included), else the revision before the txn;
/// - a nested txn's own header is present but empty (revision 0).
///
/// So no helper is needed to fill nested headers, and the caller must not overwrite them.
pub fn apply(
    mvcc: &mut Mvcc,
    req: &InternalRequest,
    lease_exists: &dyn Fn(i64) -> bool,
) -> ApplyOutcome {
    let mut batch = WriteBatch::default();
    let mut events = Vec::new();
    let set = usize::from(req.put.is_some())
        + usize::from(req.delete_range.is_some())
        + usize::from(req.txn.is_some())
        + usize::from(req.compaction.is_some())
        + usize::from(req.range.is_some());
    let result = if set != 1 {
        Err(EtcdError::Internal(format!(
            "etcdserver: internal request carries {set} key-value requests, want exactly 1"
        )))
    } else if let Some(p) = &req.put {
        mvcc.put(p, lease_exists, &mut batch, &mut events)
            .map(Response::Put)
    } else if let Some(d) = &req.delete_range {
        mvcc.delete_range(d, &mut batch, &mut events)
            .map(Response::DeleteRange)
    } else if let Some(t) = &req.txn {
        mvcc.txn(t, lease_exists, &mut batch, &mut events)
            .map(Response::Txn)
    } else if let Some(c) = &req.compaction {
        mvcc.compact(c.revision, &mut batch)
            .map(Response::Compaction)
    } else if let Some(r) = &req.range {
        mvcc.range(r).map(Response::Range)
    } else {
        unreachable!("exactly one request is set")
    };
    if result.is_err() {
        debug_assert!(batch.ops.is_empty() && events.is_empty());
        batch.ops.clear();
        events.clear();
    }
    ApplyOutcome {
        result,
        batch,
        events,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::etcdserverpb::{CompactionRequest, PutRequest, RangeRequest};

    #[test]
    fn dispatch() {
        let mut m = Mvcc::new();
        let none = apply(&mut m, &InternalRequest::default(), &|_| true);
        assert!(matches!(none.result, Err(EtcdError::Internal(_))));
        let put = InternalRequest {
            put: Some(PutRequest {
                key: b"a".to_vec(),
                value: b"1".to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let out = apply(&mut m, &put, &|_| true);
        assert_eq!(out.result, Ok(Response::Put(PutResponse::default())));
        assert_eq!(out.batch.ops.len(), 1);
        assert_eq!(out.events.len(), 1);
        assert_eq!(m.current_revision(), 2);
        let two = InternalRequest {
            range: Some(RangeRequest {
                key: b"a".to_vec(),
                ..Default::default()
            }),
            ..put.clone()
        };
        assert!(matches!(
            apply(&mut m, &two, &|_| true).result,
            Err(EtcdError::Internal(_))
        ));
        let bad_lease = InternalRequest {
            put: Some(PutRequest {
                key: b"a".to_vec(),
                lease: 7,
                ..Default::default()
            }),
            ..Default::default()
        };
        let out = apply(&mut m, &bad_lease, &|_| false);
        assert_eq!(out.result, Err(EtcdError::LeaseNotFound));
        assert!(out.batch.ops.is_empty() && out.events.is_empty());
        let compact = InternalRequest {
            compaction: Some(CompactionRequest {
                revision: 5,
                physical: false,
            }),
            ..Default::default()
        };
        assert_eq!(
            apply(&mut m, &compact, &|_| true).result,
            Err(EtcdError::FutureRev)
        );
        let compact = InternalRequest {
            compaction: Some(CompactionRequest {
                revision: 2,
                physical: true,
            }),
            ..Default::default()
        };
        let out = apply(&mut m, &compact, &|_| true);
        assert_eq!(
            out.result,
            Ok(Response::Compaction(CompactionResponse::default()))
        );
        assert_eq!(out.batch.ops.len(), 2);
        let range = InternalRequest {
            range: Some(RangeRequest {
                key: b"a".to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let out = apply(&mut m, &range, &|_| true);
        let Ok(Response::Range(r)) = out.result else {
            panic!("range failed")
        };
        assert_eq!(r.count, 1);
        assert!(out.batch.ops.is_empty());
    }
}
