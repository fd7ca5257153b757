//! etcd's alarms: the replicated set of raised alarms (NOSPACE, CORRUPT) and the requests
//! each alarm makes every member refuse.
//!
//! Alarms change only through committed [`AlarmRequest`]s, so every member holds the same
//! set and refuses the same requests at the same point of the log, as etcd's
//! `applierV3Capped` (NOSPACE) and `applierV3Corrupt` (CORRUPT) do. The set is kept in the
//! `alarm` bucket, one encoded [`AlarmMember`] per key with an empty value, as etcd keeps
//! it, so it survives restarts and is part of the backend hash.

use std::collections::BTreeSet;

use prost::Message as _;

use crate::error::EtcdError;
use crate::pb::detcdpb::InternalRequest;
use crate::pb::etcdserverpb::{
    alarm_request::AlarmAction, request_op, AlarmMember, AlarmRequest, AlarmResponse, AlarmType,
    TxnRequest,
};
use crate::storage::backend::{Bucket, WriteBatch};

/// The raised alarms, ordered by alarm type and then member id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlarmSet {
    /// `(alarm type, member id)` of every raised alarm.
    raised: BTreeSet<(i32, u64)>,
}

/// The `alarm` bucket key of one alarm: the encoded `AlarmMember`, as etcd writes it.
fn bucket_key(member_id: u64, alarm: i32) -> Vec<u8> {
    AlarmMember { member_id, alarm }.encode_to_vec()
}

/// The text etcd gives an alarm in Status's `errors` and that `etcdctl alarm list` prints:
/// Go's compact protobuf text of the `AlarmMember`, trailing space included.
pub fn alarm_text(member: &AlarmMember) -> String {
    let alarm = AlarmType::try_from(member.alarm)
        .map(|t| t.as_str_name().to_string())
        .unwrap_or_else(|_| member.alarm.to_string());
    let mut text = String::new();
    if member.member_id != 0 {
        text.push_str(&format!("memberID:{} ", member.member_id));
    }
    if member.alarm != 0 {
        text.push_str(&format!("alarm:{alarm} "));
    }
    text
}

impl AlarmSet {
    /// Returns an empty set.
    pub fn new() -> AlarmSet {
        AlarmSet::default()
    }

    /// Rebuilds the set from the `alarm` bucket's entries. A key that does not decode is
    /// [`EtcdError::Corrupt`].
    pub fn restore(entries: Vec<(Vec<u8>, Vec<u8>)>) -> Result<AlarmSet, EtcdError> {
        let mut set = AlarmSet::new();
        for (key, _) in entries {
            let member = AlarmMember::decode(&key[..]).map_err(|e| {
                EtcdError::Corrupt(format!("alarm bucket key does not decode: {e}"))
            })?;
            set.raised.insert((member.alarm, member.member_id));
        }
        Ok(set)
    }

    /// Whether any alarm of type `alarm` is raised.
    pub fn is_raised(&self, alarm: AlarmType) -> bool {
        let t = alarm as i32;
        self.raised.range((t, 0)..=(t, u64::MAX)).next().is_some()
    }

    /// The raised alarms of type `alarm`, or every raised alarm for `NONE` (etcd's
    /// `AlarmStore.Get`).
    pub fn get(&self, alarm: i32) -> Vec<AlarmMember> {
        self.raised
            .iter()
            .filter(|(t, _)| alarm == AlarmType::None as i32 || *t == alarm)
            .map(|&(alarm, member_id)| AlarmMember { member_id, alarm })
            .collect()
    }

    /// Every raised alarm.
    pub fn all(&self) -> Vec<AlarmMember> {
        self.get(AlarmType::None as i32)
    }

    /// Applies a committed alarm request as etcd's `applierV3backend.Alarm` does: GET lists
    /// the alarms of the requested type (all for `NONE`); ACTIVATE raises the alarm (if
    /// new) and answers it; DEACTIVATE clears it and answers it, or answers nothing when it
    /// was not raised. An unknown action answers an empty list. The header is left unset.
    pub fn apply(&mut self, req: &AlarmRequest, batch: &mut WriteBatch) -> AlarmResponse {
        let mut resp = AlarmResponse::default();
        match AlarmAction::try_from(req.action) {
            Ok(AlarmAction::Get) => resp.alarms = self.get(req.alarm),
            Ok(AlarmAction::Activate) => {
                if self.raised.insert((req.alarm, req.member_id)) {
                    batch.put(Bucket::Alarm, bucket_key(req.member_id, req.alarm), vec![]);
                }
                resp.alarms.push(AlarmMember {
                    member_id: req.member_id,
                    alarm: req.alarm,
                });
            }
            Ok(AlarmAction::Deactivate) => {
                if self.raised.remove(&(req.alarm, req.member_id)) {
                    batch.delete(Bucket::Alarm, bucket_key(req.member_id, req.alarm));
                    resp.alarms.push(AlarmMember {
                        member_id: req.member_id,
                        alarm: req.alarm,
                    });
                }
            }
            Err(_) => {}
        }
        resp
    }

    /// The error a committed request fails with because of a raised alarm, if any.
    ///
    /// With CORRUPT raised, etcd's `applierV3Corrupt` refuses puts, deletes, txns,
    /// compactions, lease grants and revocations with "etcdserver: corrupt cluster".
    /// Ranges and read-only txns are never refused: etcd serves them outside the apply
    /// path (`applyV3Base`), so they keep working. With NOSPACE raised, etcd's
    /// `applierV3Capped` refuses puts, txns that put (at their top level, as etcd counts
    /// the cost), and lease grants with "etcdserver: mvcc: database space exceeded";
    /// deletes, compactions and revocations go through, so space can be freed.
    pub fn refusal(&self, req: &InternalRequest) -> Option<EtcdError> {
        if self.is_raised(AlarmType::Corrupt) {
            let read_only_txn = req.txn.as_ref().is_some_and(is_txn_read_only);
            if (req.put.is_some()
                || req.delete_range.is_some()
                || (req.txn.is_some() && !read_only_txn)
                || req.compaction.is_some()
                || req.lease_grant.is_some()
                || req.lease_revoke.is_some())
                && req.alarm.is_none()
            {
                return Some(EtcdError::CorruptCluster);
            }
        }
        if self.is_raised(AlarmType::Nospace)
            && (req.put.is_some()
                || req.lease_grant.is_some()
                || req.txn.as_ref().is_some_and(txn_puts))
        {
            return Some(EtcdError::NoSpace);
        }
        None
    }
}

/// Whether every operation of the txn (both branches, top level) is a range: etcd's
/// `isTxnReadonly`, which decides that the txn is served without raft.
pub fn is_txn_read_only(txn: &TxnRequest) -> bool {
    txn.success
        .iter()
        .chain(&txn.failure)
        .all(|op| matches!(op.request, Some(request_op::Request::RequestRange(_))))
}

/// Whether a branch of the txn puts at its top level: etcd's quota cost of a txn is
/// non-zero exactly then.
fn txn_puts(txn: &TxnRequest) -> bool {
    txn.success
        .iter()
        .chain(&txn.failure)
        .any(|op| matches!(op.request, Some(request_op::Request::RequestPut(_))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::etcdserverpb::{
        CompactionRequest, DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest,
        RangeRequest, RequestOp,
    };
    use crate::storage::backend::{Backend, MemBackend};

    fn req(action: AlarmAction, member_id: u64, alarm: AlarmType) -> AlarmRequest {
        AlarmRequest {
            action: action as i32,
            member_id,
            alarm: alarm as i32,
        }
    }

    fn member(member_id: u64, alarm: AlarmType) -> AlarmMember {
        AlarmMember {
            member_id,
            alarm: alarm as i32,
        }
    }

    #[test]
    fn activate_get_deactivate_and_restore() {
        let mut set = AlarmSet::new();
        let mut backend = MemBackend::new();
        let mut batch = WriteBatch::new();
        let r = set.apply(
            &req(AlarmAction::Activate, 7, AlarmType::Nospace),
            &mut batch,
        );
        assert_eq!(r.alarms, vec![member(7, AlarmType::Nospace)]);
        // Raising it again answers it again but writes nothing.
        let r = set.apply(
            &req(AlarmAction::Activate, 7, AlarmType::Nospace),
            &mut batch,
        );
        assert_eq!(r.alarms, vec![member(7, AlarmType::Nospace)]);
        assert_eq!(batch.ops.len(), 1);
        set.apply(
            &req(AlarmAction::Activate, 3, AlarmType::Corrupt),
            &mut batch,
        );
        set.apply(
            &req(AlarmAction::Activate, 2, AlarmType::Nospace),
            &mut batch,
        );
        backend.write(&batch).unwrap();
        let all = set
            .apply(&req(AlarmAction::Get, 0, AlarmType::None), &mut batch)
            .alarms;
        assert_eq!(
            all,
            vec![
                member(2, AlarmType::Nospace),
                member(7, AlarmType::Nospace),
                member(3, AlarmType::Corrupt)
            ]
        );
        assert_eq!(set.get(AlarmType::Corrupt as i32).len(), 1);
        let restored = AlarmSet::restore(backend.scan(Bucket::Alarm).unwrap()).unwrap();
        assert_eq!(restored, set);

        let mut batch = WriteBatch::new();
        let r = set.apply(
            &req(AlarmAction::Deactivate, 7, AlarmType::Nospace),
            &mut batch,
        );
        assert_eq!(r.alarms, vec![member(7, AlarmType::Nospace)]);
        let r = set.apply(
            &req(AlarmAction::Deactivate, 7, AlarmType::Nospace),
            &mut batch,
        );
        assert!(r.alarms.is_empty(), "clearing an alarm that is not raised");
        assert!(set.is_raised(AlarmType::Nospace));
        set.apply(
            &req(AlarmAction::Deactivate, 2, AlarmType::Nospace),
            &mut batch,
        );
        assert!(!set.is_raised(AlarmType::Nospace));
        backend.write(&batch).unwrap();
        let restored = AlarmSet::restore(backend.scan(Bucket::Alarm).unwrap()).unwrap();
        assert_eq!(restored.all(), vec![member(3, AlarmType::Corrupt)]);
        let unknown = AlarmRequest {
            action: 9,
            ..Default::default()
        };
        assert!(set.apply(&unknown, &mut batch).alarms.is_empty());
        assert!(AlarmSet::restore(vec![(vec![0xff, 0xff], vec![])]).is_err());
    }

    #[test]
    fn text_is_gos_compact_protobuf_text() {
        assert_eq!(
            alarm_text(&member(10276657743932975437, AlarmType::Nospace)),
            "memberID:10276657743932975437 alarm:NOSPACE "
        );
        assert_eq!(
            alarm_text(&member(1, AlarmType::Corrupt)),
            "memberID:1 alarm:CORRUPT "
        );
    }

    fn op(r: request_op::Request) -> RequestOp {
        RequestOp { request: Some(r) }
    }

    #[test]
    fn refusals_follow_etcds_capped_and_corrupt_appliers() {
        let put = InternalRequest {
            put: Some(PutRequest::default()),
            ..Default::default()
        };
        let delete = InternalRequest {
            delete_range: Some(DeleteRangeRequest::default()),
            ..Default::default()
        };
        let range = InternalRequest {
            range: Some(RangeRequest::default()),
            ..Default::default()
        };
        let read_txn = InternalRequest {
            txn: Some(TxnRequest {
                success: vec![op(request_op::Request::RequestRange(Default::default()))],
                ..Default::default()
            }),
            ..Default::default()
        };
        let delete_txn = InternalRequest {
            txn: Some(TxnRequest {
                failure: vec![op(request_op::Request::RequestDeleteRange(
                    Default::default(),
                ))],
                ..Default::default()
            }),
            ..Default::default()
        };
        let put_txn = InternalRequest {
            txn: Some(TxnRequest {
                failure: vec![op(request_op::Request::RequestPut(Default::default()))],
                ..Default::default()
            }),
            ..Default::default()
        };
        let compact = InternalRequest {
            compaction: Some(CompactionRequest::default()),
            ..Default::default()
        };
        let grant = InternalRequest {
            lease_grant: Some(LeaseGrantRequest::default()),
            ..Default::default()
        };
        let revoke = InternalRequest {
            lease_revoke: Some(LeaseRevokeRequest::default()),
            ..Default::default()
        };
        let alarm = InternalRequest {
            alarm: Some(AlarmRequest::default()),
            ..Default::default()
        };
        let all = [
            &put,
            &delete,
            &range,
            &read_txn,
            &delete_txn,
            &put_txn,
            &compact,
            &grant,
            &revoke,
            &alarm,
        ];

        let mut set = AlarmSet::new();
        assert!(all.iter().all(|r| set.refusal(r).is_none()));

        let mut batch = WriteBatch::new();
        set.apply(
            &req(AlarmAction::Activate, 1, AlarmType::Nospace),
            &mut batch,
        );
        let refused: Vec<_> = all.iter().map(|r| set.refusal(r)).collect();
        let ns = Some(EtcdError::NoSpace);
        assert_eq!(
            refused,
            vec![
                ns.clone(),
                None,
                None,
                None,
                None,
                ns.clone(),
                None,
                ns.clone(),
                None,
                None
            ]
        );

        set.apply(
            &req(AlarmAction::Activate, 2, AlarmType::Corrupt),
            &mut batch,
        );
        let refused: Vec<_> = all.iter().map(|r| set.refusal(r)).collect();
        let c = Some(EtcdError::CorruptCluster);
        assert_eq!(
            refused,
            vec![
                c.clone(),
                c.clone(),
                None,
                None,
                c.clone(),
                c.clone(),
                c.clone(),
                c.clone(),
                c.clone(),
                None
            ]
        );
    }
}
