//! The Lease service: Grant, Revoke, KeepAlive (a bidirectional stream), TimeToLive and
//! Leases. Grants and revocations go through raft; keep-alives and remaining TTLs are the
//! lease timer's (the leader's clock), granted TTLs and keys the replicated table's.

use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status, Streaming};

use super::{reply, Handle};
use crate::actors::lease_timer::LeaseMsg;
use crate::actors::transport::LeaseForwarder;
use crate::core::apply::Response as Applied;
use crate::error::EtcdError;
use crate::msg::{StorageMsg, CHANNEL_BOUND};
use crate::pb::detcdpb::InternalRequest;
use crate::pb::etcdserverpb::lease_server::Lease;
use crate::pb::etcdserverpb::*;
use crate::rt;

/// The Lease service.
pub struct LeaseService {
    handle: Handle,
    lease_tx: mpsc::Sender<LeaseMsg>,
    forwarder: Option<LeaseForwarder>,
}

impl LeaseService {
    /// Builds the service over the actors' handle and the lease timer's inbox.
    pub fn new(handle: Handle, lease_tx: mpsc::Sender<LeaseMsg>) -> LeaseService {
        LeaseService {
            handle,
            lease_tx,
            forwarder: None,
        }
    }

    /// Sends keep-alives and remaining-TTL questions to the leader when this member does
    /// not lead: only the leader's lease timer keeps expiries, so a renewal anywhere else
    /// would be lost.
    pub fn with_forwarder(mut self, forwarder: LeaseForwarder) -> LeaseService {
        self.forwarder = Some(forwarder);
        self
    }
}

/// Where a lease call must go: `None` to serve it here (this member leads, or there is
/// no one to forward to), or the leader's id.
fn remote_leader(handle: &Handle, forwarder: &Option<LeaseForwarder>) -> Option<u64> {
    let status = handle.raft_status.borrow().clone();
    if forwarder.is_none() || status.leader_id == status.member_id {
        return None;
    }
    Some(status.leader_id)
}

/// Asks the leader through the forwarder; `None` when the call is to be served here.
async fn forward_lease(
    handle: &Handle,
    forwarder: &Option<LeaseForwarder>,
    id: i64,
    query_only: bool,
) -> Option<Result<i64, EtcdError>> {
    let leader = remote_leader(handle, forwarder)?;
    let forwarder = forwarder.as_ref()?;
    if leader == 0 {
        return Some(Err(EtcdError::NoLeader));
    }
    Some(
        forwarder
            .renew(leader, id, query_only, handle.request_timeout)
            .await,
    )
}

/// Renews a lease through the lease timer and answers with etcd's keep-alive response:
/// TTL 0 when the lease is unknown or already expired.
async fn keep_alive_once(
    handle: &Handle,
    lease_tx: &mpsc::Sender<LeaseMsg>,
    forwarder: &Option<LeaseForwarder>,
    id: i64,
) -> Result<LeaseKeepAliveResponse, EtcdError> {
    let ttl = match forward_lease(handle, forwarder, id, false).await {
        Some(r) => r?,
        None => {
            let (tx, rx) = oneshot::channel();
            handle
                .call(LeaseMsg::KeepAlive { id, reply: tx }, rx, lease_tx)
                .await??
        }
    };
    let (tx, rx) = oneshot::channel();
    let header = handle
        .call(StorageMsg::Header { reply: tx }, rx, &handle.storage_tx)
        .await?;
    Ok(LeaseKeepAliveResponse {
        header: Some(header),
        id,
        ttl,
    })
}

/// A fresh lease id for a grant that did not name one: positive and non-zero, as etcd's.
/// It comes from the seam's random source, so simulations stay reproducible.
pub(crate) fn new_lease_id() -> i64 {
    loop {
        let id = (rt::random_u64() & (i64::MAX as u64)) as i64;
        if id != 0 {
            return id;
        }
    }
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        req: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        // etcd's learner interceptor refuses every lease call on a learner.
        self.handle.refuse_if_learner()?;
        let (md, _, mut req) = req.into_parts();
        if req.id == 0 {
            req.id = new_lease_id();
        }
        let request = InternalRequest {
            lease_grant: Some(req),
            ..Default::default()
        };
        if let Err(e) = self.handle.check_quota(&request).await {
            return reply(Err(e));
        }
        reply(match self.handle.propose_authed(&md, request).await {
            Ok(Applied::LeaseGrant(r)) => Ok(r),
            Ok(_) => Err(EtcdError::Internal(
                "unexpected response to lease grant".into(),
            )),
            Err(e) => Err(e),
        })
    }

    async fn lease_revoke(
        &self,
        req: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        // etcd's learner interceptor refuses every lease call on a learner.
        self.handle.refuse_if_learner()?;
        let (md, _, req) = req.into_parts();
        let request = InternalRequest {
            lease_revoke: Some(req),
            ..Default::default()
        };
        reply(match self.handle.propose_authed(&md, request).await {
            Ok(Applied::LeaseRevoke(r)) => Ok(r),
            Ok(_) => Err(EtcdError::Internal(
                "unexpected response to lease revoke".into(),
            )),
            Err(e) => Err(e),
        })
    }

    type LeaseKeepAliveStream =
        tokio_stream::wrappers::ReceiverStream<Result<LeaseKeepAliveResponse, Status>>;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        // etcd's learner interceptor refuses every lease call on a learner.
        self.handle.refuse_if_learner()?;
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(CHANNEL_BOUND);
        let handle = self.handle.clone();
        let lease_tx = self.lease_tx.clone();
        let forwarder = self.forwarder.clone();
        rt::spawn("lease-keepalive", async move {
            // One request at a time, in order: a client's keep-alives are answered in the
            // order it sent them, and a slow client is pushed back by the bounded channel.
            loop {
                let next = match inbound.message().await {
                    Ok(Some(r)) => r,
                    Ok(None) => return,
                    Err(status) => {
                        tracing::debug!(error = %status, "lease keep-alive stream ended");
                        return;
                    }
                };
                let answer = keep_alive_once(&handle, &lease_tx, &forwarder, next.id)
                    .await
                    .map_err(|e| e.to_status());
                let failed = answer.is_err();
                if tx.send(answer).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        // etcd's learner interceptor refuses every lease call on a learner.
        self.handle.refuse_if_learner()?;
        let req = req.into_inner();
        let result = async {
            let (tx, rx) = oneshot::channel();
            let (info, header) = self
                .handle
                .call(
                    StorageMsg::LeaseInfo {
                        id: req.id,
                        reply: tx,
                    },
                    rx,
                    &self.handle.storage_tx,
                )
                .await?;
            let Some(info) = info else {
                // etcd answers an unknown lease with TTL -1 rather than an error.
                return Ok(LeaseTimeToLiveResponse {
                    header: Some(header),
                    id: req.id,
                    ttl: -1,
                    granted_ttl: 0,
                    keys: vec![],
                });
            };
            let remaining = match forward_lease(&self.handle, &self.forwarder, req.id, true).await {
                Some(r) => Some(r?).filter(|ttl| *ttl >= 0),
                None => {
                    let (tx, rx) = oneshot::channel();
                    self.handle
                        .call(
                            LeaseMsg::Remaining {
                                id: req.id,
                                reply: tx,
                            },
                            rx,
                            &self.lease_tx,
                        )
                        .await?
                }
            };
            Ok(LeaseTimeToLiveResponse {
                header: Some(header),
                id: req.id,
                ttl: remaining.unwrap_or(-1),
                granted_ttl: info.granted_ttl_s,
                keys: if req.keys { info.keys } else { vec![] },
            })
        }
        .await;
        reply(result)
    }

    async fn lease_leases(
        &self,
        _req: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        // etcd's learner interceptor refuses every lease call on a learner.
        self.handle.refuse_if_learner()?;
        let result = async {
            let (tx, rx) = oneshot::channel();
            let mut resp = self
                .handle
                .call(
                    StorageMsg::LeaseList { reply: tx },
                    rx,
                    &self.handle.storage_tx,
                )
                .await?;
            // etcd lists leases by expiry (`lessor.Leases` sorts by expiry), which only the
            // lease timer knows.
            let ids = resp.leases.iter().map(|l| l.id).collect();
            let (tx, rx) = oneshot::channel();
            let ids = self
                .handle
                .call(LeaseMsg::ExpiryOrder { ids, reply: tx }, rx, &self.lease_tx)
                .await?;
            resp.leases = ids.into_iter().map(|id| LeaseStatus { id }).collect();
            Ok(resp)
        }
        .await;
        reply(result)
    }
}
