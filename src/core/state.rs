//! The replicated state machine: the MVCC store and the lease table, changed together by
//! each committed request, so that a lease revocation and the deletion of its keys, or a
//! put and its lease attachment, are one atomic step on every member.

use crate::core::alarm::AlarmSet;
use crate::core::apply::{self, ApplyOutcome, Response};
use crate::core::auth::AuthStore;
use crate::core::auth_apply::{self, TokenChange};
use crate::core::lease::LeaseTable;
use crate::core::mvcc::Mvcc;
use crate::error::EtcdError;
use crate::pb::detcdpb::InternalRequest;
use crate::pb::etcdserverpb::{
    request_op, DeleteRangeRequest, LeaseGrantResponse, LeaseRevokeResponse, RequestOp, TxnRequest,
};
use crate::storage::backend::WriteBatch;

/// A change to the set of granted leases, reported to the lease timer after it is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseChange {
    /// A lease was granted with this TTL.
    Granted {
        /// The lease id.
        id: i64,
        /// The granted TTL in seconds.
        ttl_s: i64,
    },
    /// A lease was revoked.
    Revoked {
        /// The lease id.
        id: i64,
    },
}

/// The MVCC store and the lease table.
#[derive(Debug, Clone)]
pub struct StateMachine {
    /// The key-value store.
    pub mvcc: Mvcc,
    /// The granted leases and their keys.
    pub leases: LeaseTable,
    /// The raised alarms.
    pub alarms: AlarmSet,
    /// Users, roles and permissions, and whether auth is enabled.
    pub auth: AuthStore,
}

/// What applying one request produced, beyond [`ApplyOutcome`].
#[derive(Debug, Clone, PartialEq)]
pub struct StateOutcome {
    /// The response, the durable changes and the watch events.
    pub outcome: ApplyOutcome,
    /// Lease grants and revocations, for the lease timer.
    pub lease_changes: Vec<LeaseChange>,
    /// Token assignments and invalidations, for the member-local token table.
    pub token_changes: Vec<TokenChange>,
}

impl StateOutcome {
    /// An outcome that changed nothing: `result` with no writes, events or side changes.
    fn only(result: Result<Response, EtcdError>) -> StateOutcome {
        StateOutcome {
            outcome: ApplyOutcome {
                result,
                batch: WriteBatch::default(),
                events: vec![],
            },
            lease_changes: vec![],
            token_changes: vec![],
        }
    }
}

impl StateMachine {
    /// Applies one committed request, appended to the raft log in `entry_term`. Lease
    /// requests are handled here; key-value requests go to [`apply::apply`] with the lease
    /// table answering whether a lease exists, and their events then move key attachments
    /// between leases.
    ///
    /// Alarm requests change the alarm set; while an alarm is raised, the requests it
    /// forbids fail here (see [`AlarmSet::refusal`]), identically on every member.
    ///
    /// Auth requests change the auth store (an Authenticate assigns a token naming
    /// `entry_index`); while auth is enabled, every other request is checked against the
    /// permissions of the user its header names, at the auth revision it was authorized
    /// at, as etcd's auth applier does.
    pub fn apply(
        &mut self,
        req: &InternalRequest,
        entry_term: u64,
        entry_index: u64,
    ) -> StateOutcome {
        if let Some(alarm) = &req.alarm {
            let mut batch = WriteBatch::default();
            let resp = self.alarms.apply(alarm, &mut batch);
            return StateOutcome {
                outcome: ApplyOutcome {
                    result: Ok(Response::Alarm(resp)),
                    batch,
                    events: vec![],
                },
                lease_changes: vec![],
                token_changes: vec![],
            };
        }
        if let Some(e) = self.alarms.refusal(req) {
            return StateOutcome::only(Err(e));
        }
        let mut batch = WriteBatch::default();
        if let Some((result, token_changes)) =
            auth_apply::apply_auth(&mut self.auth, req, entry_index, &mut batch)
        {
            return StateOutcome {
                outcome: ApplyOutcome {
                    result: result.map(|r| Response::Auth(Box::new(r))),
                    batch,
                    events: vec![],
                },
                lease_changes: vec![],
                token_changes,
            };
        }
        if let Err(e) = auth_apply::check_permission(&self.auth, &self.leases, req) {
            return StateOutcome::only(Err(e));
        }
        if let Some(grant) = &req.lease_grant {
            let mut batch = WriteBatch::default();
            let result = self.leases.grant(grant.id, grant.ttl, &mut batch);
            let lease_changes = match result {
                Ok((id, ttl_s)) => vec![LeaseChange::Granted { id, ttl_s }],
                Err(_) => vec![],
            };
            let result = result.map(|(id, ttl)| {
                Response::LeaseGrant(LeaseGrantResponse {
                    header: None,
                    id,
                    ttl,
                    error: String::new(),
                })
            });
            return StateOutcome {
                outcome: ApplyOutcome {
                    result,
                    batch,
                    events: vec![],
                },
                lease_changes,
                token_changes: vec![],
            };
        }
        if let Some(revoke) = &req.lease_revoke {
            if req.expiry_term != 0
                && req.expiry_term != entry_term
                && !crate::planted::active(crate::planted::Bug::StaleLeaseRevoke)
            {
                // An expiry decided under a leadership that had already ended when the
                // proposal entered the log: the current leader's clock, extended on its
                // promotion, decides instead.
                return StateOutcome::only(Err(EtcdError::LeaderChanged));
            }
            return self.revoke(revoke.id);
        }
        let leases = &self.leases;
        let outcome = apply::apply(&mut self.mvcc, req, &|id| leases.exists(id));
        self.leases.observe(&outcome.events);
        StateOutcome {
            outcome,
            lease_changes: vec![],
            token_changes: vec![],
        }
    }

    /// Revokes a lease and deletes its keys in one revision, as etcd does: the deletes
    /// run as one txn, so watchers see them together.
    fn revoke(&mut self, id: i64) -> StateOutcome {
        let mut batch = WriteBatch::default();
        let keys = match self.leases.revoke(id, &mut batch) {
            Ok(keys) => keys,
            Err(e) => return StateOutcome::only(Err(e)),
        };
        let mut events = Vec::new();
        if !keys.is_empty() {
            let txn = TxnRequest {
                compare: vec![],
                success: keys
                    .into_iter()
                    .map(|key| RequestOp {
                        request: Some(request_op::Request::RequestDeleteRange(
                            DeleteRangeRequest {
                                key,
                                ..Default::default()
                            },
                        )),
                    })
                    .collect(),
                failure: vec![],
            };
            if let Err(e) = self.mvcc.txn(&txn, &|_| false, &mut batch, &mut events) {
                // Deleting existing keys cannot fail; if it did, the lease is already gone
                // from the table, and the error is reported rather than hidden.
                return StateOutcome {
                    outcome: ApplyOutcome {
                        result: Err(EtcdError::Internal(format!(
                            "revoking lease {id:x}: deleting its keys failed: {e}"
                        ))),
                        batch,
                        events,
                    },
                    lease_changes: vec![LeaseChange::Revoked { id }],
                    token_changes: vec![],
                };
            }
            self.leases.observe(&events);
        }
        StateOutcome {
            outcome: ApplyOutcome {
                result: Ok(Response::LeaseRevoke(LeaseRevokeResponse { header: None })),
                batch,
                events,
            },
            lease_changes: vec![LeaseChange::Revoked { id }],
            token_changes: vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::etcdserverpb::{LeaseGrantRequest, LeaseRevokeRequest, PutRequest};

    fn machine() -> StateMachine {
        StateMachine {
            mvcc: Mvcc::new(),
            leases: LeaseTable::new(2),
            alarms: AlarmSet::new(),
            auth: AuthStore::new(),
        }
    }

    fn grant(sm: &mut StateMachine, id: i64) {
        let req = InternalRequest {
            lease_grant: Some(LeaseGrantRequest { ttl: 10, id }),
            ..Default::default()
        };
        let out = sm.apply(&req, 1, 0);
        assert!(out.outcome.result.is_ok());
        assert_eq!(
            out.lease_changes,
            vec![LeaseChange::Granted { id, ttl_s: 10 }]
        );
    }

    fn put(sm: &mut StateMachine, key: &str, lease: i64) -> Result<Response, EtcdError> {
        let req = InternalRequest {
            put: Some(PutRequest {
                key: key.into(),
                value: b"v".to_vec(),
                lease,
                ..Default::default()
            }),
            ..Default::default()
        };
        sm.apply(&req, 1, 0).outcome.result
    }

    fn revoke(id: i64, expiry_term: u64) -> InternalRequest {
        InternalRequest {
            lease_revoke: Some(LeaseRevokeRequest { id }),
            expiry_term,
            ..Default::default()
        }
    }

    #[test]
    fn revoke_deletes_every_key_in_one_revision() {
        let mut sm = machine();
        grant(&mut sm, 7);
        put(&mut sm, "a", 7).unwrap();
        put(&mut sm, "b", 7).unwrap();
        put(&mut sm, "c", 0).unwrap();
        let before = sm.mvcc.current_revision();
        let out = sm.apply(&revoke(7, 0), 1, 0);
        assert!(matches!(out.outcome.result, Ok(Response::LeaseRevoke(_))));
        assert_eq!(out.lease_changes, vec![LeaseChange::Revoked { id: 7 }]);
        assert_eq!(sm.mvcc.current_revision(), before + 1, "one revision");
        let keys: Vec<_> = out
            .outcome
            .events
            .iter()
            .map(|e| {
                (
                    e.kv.as_ref().unwrap().key.clone(),
                    e.kv.as_ref().unwrap().mod_revision,
                )
            })
            .collect();
        assert_eq!(
            keys,
            vec![(b"a".to_vec(), before + 1), (b"b".to_vec(), before + 1)]
        );
        assert!(!sm.leases.exists(7));
        assert_eq!(put(&mut sm, "d", 7), Err(EtcdError::LeaseNotFound));
    }

    #[test]
    fn expiry_revocation_from_another_term_is_rejected() {
        let mut sm = machine();
        grant(&mut sm, 9);
        put(&mut sm, "k", 9).unwrap();
        let before = sm.mvcc.current_revision();
        // Decided while leading in term 3, but appended in term 4: stale, rejected.
        let out = sm.apply(&revoke(9, 3), 4, 0);
        assert_eq!(out.outcome.result, Err(EtcdError::LeaderChanged));
        assert!(out.outcome.batch.ops.is_empty() && out.lease_changes.is_empty());
        assert!(sm.leases.exists(9));
        assert_eq!(sm.mvcc.current_revision(), before);
        // Decided and appended in the same term: applied.
        let out = sm.apply(&revoke(9, 4), 4, 0);
        assert!(out.outcome.result.is_ok());
        assert!(!sm.leases.exists(9));
    }

    #[test]
    fn raised_alarms_refuse_writes_until_cleared() {
        use crate::pb::etcdserverpb::{alarm_request::AlarmAction, AlarmRequest, AlarmType};
        let mut sm = machine();
        put(&mut sm, "a", 0).unwrap();
        let alarm = |action: AlarmAction| InternalRequest {
            alarm: Some(AlarmRequest {
                action: action as i32,
                member_id: 5,
                alarm: AlarmType::Nospace as i32,
            }),
            ..Default::default()
        };
        let out = sm.apply(&alarm(AlarmAction::Activate), 1, 0);
        assert!(matches!(out.outcome.result, Ok(Response::Alarm(_))));
        assert_eq!(out.outcome.batch.ops.len(), 1, "the alarm is persisted");
        let before = sm.mvcc.current_revision();
        assert_eq!(put(&mut sm, "b", 0), Err(EtcdError::NoSpace));
        let grant = InternalRequest {
            lease_grant: Some(LeaseGrantRequest { ttl: 10, id: 3 }),
            ..Default::default()
        };
        let out = sm.apply(&grant, 1, 0);
        assert_eq!(out.outcome.result, Err(EtcdError::NoSpace));
        assert!(out.lease_changes.is_empty() && out.outcome.batch.ops.is_empty());
        assert_eq!(sm.mvcc.current_revision(), before);
        sm.apply(&alarm(AlarmAction::Deactivate), 1, 0);
        put(&mut sm, "b", 0).unwrap();
    }
}
