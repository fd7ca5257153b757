//! The Cluster service: MemberList from the replicated member records, and membership
//! changes as etcd 3.4 makes them. Additions, promotions and removals go through raft's
//! configuration (conf changes carrying the member record); MemberUpdate is an ordinary
//! replicated request. Each change is checked here first, as etcd checks it before
//! proposing (`--strict-reconfig-check`, duplicate ids and peer URLs, learner limits),
//! and again when applied.

use std::time::Duration;

use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use super::{reply, Handle};
use crate::actors::transport::LeaseForwarder;
use crate::core::apply::Response as Applied;
use crate::error::EtcdError;
use crate::pb::detcdpb::{InternalRequest, MemberRecord, MemberUpdate};
use crate::pb::etcdserverpb::cluster_server::Cluster;
use crate::pb::etcdserverpb::*;
use crate::raft::ids;
use crate::raft::membership::{self, ChangeKind, MemberChange};
use crate::rt;

/// The Cluster service.
pub struct ClusterService {
    handle: Handle,
    forwarder: Option<LeaseForwarder>,
}

impl ClusterService {
    /// Builds the service over the actors' handle.
    pub fn new(handle: Handle) -> ClusterService {
        ClusterService {
            handle,
            forwarder: None,
        }
    }

    /// Forwards promotions received by a follower to the leader through `forwarder`.
    pub fn with_forwarder(mut self, forwarder: LeaseForwarder) -> ClusterService {
        self.forwarder = Some(forwarder);
        self
    }

    /// The header of every Cluster answer. As etcd's cluster server builds it, it carries
    /// no revision: membership is not part of the key space.
    async fn header(&self) -> Result<ResponseHeader, EtcdError> {
        let raft = self.handle.raft_status().await?;
        Ok(ResponseHeader {
            cluster_id: raft.cluster_id,
            member_id: raft.member_id,
            revision: 0,
            raft_term: raft.term,
        })
    }

    async fn member_add_impl(
        &self,
        md: &MetadataMap,
        req: MemberAddRequest,
    ) -> Result<MemberAddResponse, EtcdError> {
        self.handle.refuse_if_learner()?;
        let peer_urls = parse_peer_urls(&req.peer_ur_ls)?;
        // As etcd: membership changes need the root role, checked once the URLs parse.
        self.handle.admin_permitted(md).await?;
        let id = ids::new_member_id(&peer_urls, rt::unix_time_ms() / 1000);
        let mut sorted = peer_urls.clone();
        sorted.sort();
        let record = MemberRecord {
            id,
            name: String::new(),
            peer_urls: sorted,
            client_urls: Vec::new(),
            is_learner: req.is_learner,
        };
        let members = self.members();
        if self.handle.strict_reconfig_check {
            if !record.is_learner && !membership::ready_to_add_voter(&members) {
                tracing::warn!("rejecting member add request; not enough healthy members");
                return Err(EtcdError::MemberNotEnoughStarted);
            }
            if !membership::connected_fully(self.handle.member.member_id, &members, |id| {
                self.connected(id)
            }) {
                tracing::warn!("rejecting member add request; local member has not been connected to all peers, reconfigure breaks active quorum");
                return Err(EtcdError::Unhealthy);
            }
        }
        membership::check_add(&members, &record)?;
        // A member id is derived from the peer URLs and the second of the addition, so a
        // machine removed and added again within one second gets its old id back. etcd
        // refuses that (`ErrIDRemoved`, answered as "member not found"): a removed id is
        // never let back in, and the operator adds again a second later.
        if self.handle.membership.borrow().removed.contains(&record.id) {
            return Err(EtcdError::MemberNotFound);
        }
        let kind = if record.is_learner {
            ChangeKind::AddLearner
        } else {
            ChangeKind::AddVoter
        };
        let list = self
            .configure(MemberChange {
                kind,
                member: record.clone(),
            })
            .await?;
        Ok(MemberAddResponse {
            header: Some(self.header().await?),
            member: Some(to_pb(record)),
            members: list.into_iter().map(to_pb).collect(),
        })
    }

    async fn member_remove_impl(
        &self,
        md: &MetadataMap,
        req: MemberRemoveRequest,
    ) -> Result<MemberRemoveResponse, EtcdError> {
        self.handle.refuse_if_learner()?;
        self.handle.admin_permitted(md).await?;
        let id = req.id;
        let members = self.members();
        let target = members.iter().find(|m| m.id == id);
        if self.handle.strict_reconfig_check && !target.is_some_and(|m| m.is_learner) {
            if !membership::ready_to_remove_voter(&members, id) {
                tracing::warn!("rejecting member remove request; not enough healthy members");
                return Err(EtcdError::MemberNotEnoughStarted);
            }
            let local = self.handle.member.member_id;
            if !membership::remove_keeps_active_quorum(
                local,
                &members,
                id,
                |p| self.handle.peer_health.active_since(p).is_some(),
                |p| self.connected(p),
            ) {
                tracing::warn!("rejecting member remove request; local member has not been connected to all peers, reconfigure breaks active quorum");
                return Err(EtcdError::Unhealthy);
            }
        }
        if target.is_none() {
            return Err(EtcdError::MemberNotFound);
        }
        let list = self
            .configure(MemberChange {
                kind: ChangeKind::Remove,
                member: MemberRecord {
                    id,
                    ..Default::default()
                },
            })
            .await?;
        Ok(MemberRemoveResponse {
            header: Some(self.header().await?),
            members: list.into_iter().map(to_pb).collect(),
        })
    }

    async fn member_update_impl(
        &self,
        md: &MetadataMap,
        req: MemberUpdateRequest,
    ) -> Result<MemberUpdateResponse, EtcdError> {
        self.handle.refuse_if_learner()?;
        let mut peer_urls = parse_peer_urls(&req.peer_ur_ls)?;
        self.handle.admin_permitted(md).await?;
        peer_urls.sort();
        membership::check_update(&self.members(), req.id, &peer_urls)?;
        let request = InternalRequest {
            member_update: Some(MemberUpdate {
                member_id: req.id,
                peer_urls,
            }),
            ..Default::default()
        };
        let list = match self.handle.propose(request).await? {
            Applied::Members(list) => list,
            _ => {
                return Err(EtcdError::Internal(
                    "apply returned an unexpected response to member update".into(),
                ))
            }
        };
        Ok(MemberUpdateResponse {
            header: Some(self.header().await?),
            members: list.into_iter().map(to_pb).collect(),
        })
    }

    async fn member_promote_impl(
        &self,
        md: &MetadataMap,
        req: MemberPromoteRequest,
    ) -> Result<MemberPromoteResponse, EtcdError> {
        self.handle.refuse_if_learner()?;
        self.handle.admin_permitted(md).await?;
        let list = match promote_on_leader(&self.handle, req.id).await {
            Err(EtcdError::NotLeader) => self.forward_promote(req.id).await?,
            r => r?,
        };
        Ok(MemberPromoteResponse {
            header: Some(self.header().await?),
            members: list.into_iter().map(to_pb).collect(),
        })
    }

    /// Only the leader knows whether a learner has caught up, so a follower asks the
    /// leader to promote it (etcd forwards to the leader's peer URLs likewise), retrying
    /// within the request timeout while there is no leader or it changes.
    async fn forward_promote(&self, id: u64) -> Result<Vec<MemberRecord>, EtcdError> {
        let Some(forwarder) = &self.forwarder else {
            return Err(EtcdError::NotLeader);
        };
        let deadline = rt::now() + self.handle.request_timeout;
        loop {
            let leader = self.handle.raft_status.borrow().leader_id;
            if leader != 0 && leader != self.handle.member.member_id {
                let left = deadline.saturating_duration_since(rt::now());
                match forwarder.promote(leader, id, left).await {
                    Ok(list) => return Ok(list),
                    Err(status) => {
                        let e = error_from_status(&status);
                        if matches!(
                            e,
                            EtcdError::LearnerNotReady
                                | EtcdError::MemberNotFound
                                | EtcdError::MemberNotLearner
                                | EtcdError::MemberNotEnoughStarted
                        ) {
                            return Err(e);
                        }
                        tracing::debug!(error = %status.message(), "forwarding a promotion to the leader failed");
                    }
                }
            } else if leader == self.handle.member.member_id {
                // Leadership moved here meanwhile.
                return promote_on_leader(&self.handle, id).await;
            }
            if rt::now() >= deadline {
                return Err(EtcdError::Timeout);
            }
            rt::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Proposes a conf change and waits until it is applied.
    async fn configure(&self, change: MemberChange) -> Result<Vec<MemberRecord>, EtcdError> {
        configure(&self.handle, change).await
    }

    fn members(&self) -> Vec<MemberRecord> {
        self.handle.membership.borrow().list()
    }

    /// etcd's "connected since the health interval": reachable without interruption for
    /// at least [`membership::HEALTH_INTERVAL_MS`].
    fn connected(&self, id: u64) -> bool {
        self.handle
            .peer_health
            .active_since(id)
            .is_some_and(|since| {
                rt::now().saturating_duration_since(since)
                    >= Duration::from_millis(membership::HEALTH_INTERVAL_MS)
            })
    }
}

/// Proposes `change` through raft and waits for the member list it leaves.
async fn configure(handle: &Handle, change: MemberChange) -> Result<Vec<MemberRecord>, EtcdError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let applied = handle
        .call(
            crate::msg::RaftMsg::ProposeConfChange { change, reply: tx },
            rx,
            &handle.raft_tx,
        )
        .await??;
    match applied {
        Applied::Members(list) => Ok(list),
        _ => Err(EtcdError::Internal(
            "apply returned an unexpected response to a membership change".into(),
        )),
    }
}

/// Promotes learner `id` if this member leads and the learner has caught up (etcd's
/// `promoteMember`); `NotLeader` tells the caller to ask the leader instead.
pub async fn promote_on_leader(handle: &Handle, id: u64) -> Result<Vec<MemberRecord>, EtcdError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    handle
        .call(
            crate::msg::RaftMsg::LearnerReady {
                member_id: id,
                reply: tx,
            },
            rx,
            &handle.raft_tx,
        )
        .await??;
    let members = handle.membership.borrow().list();
    if handle.strict_reconfig_check && !membership::ready_to_promote(&members) {
        tracing::warn!("rejecting member promote request; not enough healthy members");
        return Err(EtcdError::MemberNotEnoughStarted);
    }
    match members.iter().find(|m| m.id == id) {
        None => return Err(EtcdError::MemberNotFound),
        Some(m) if !m.is_learner => return Err(EtcdError::MemberNotLearner),
        Some(_) => {}
    }
    configure(
        handle,
        MemberChange {
            kind: ChangeKind::Promote,
            member: MemberRecord {
                id,
                ..Default::default()
            },
        },
    )
    .await
}

/// The membership error a peer's status carries, matched by etcd's message.
fn error_from_status(status: &Status) -> EtcdError {
    [
        EtcdError::LearnerNotReady,
        EtcdError::MemberNotFound,
        EtcdError::MemberNotLearner,
        EtcdError::MemberNotEnoughStarted,
        EtcdError::NotLeader,
        EtcdError::Timeout,
    ]
    .into_iter()
    .find(|e| e.message() == status.message())
    .unwrap_or_else(|| EtcdError::Internal(status.message().to_string()))
}

/// Checks peer URLs as etcd's `types.NewURLs` does: each must parse as an http(s) URL with
/// a host and port and nothing after it.
fn parse_peer_urls(urls: &[String]) -> Result<Vec<String>, EtcdError> {
    if urls.is_empty() {
        return Err(EtcdError::MemberBadUrls);
    }
    for u in urls {
        let rest = u
            .strip_prefix("http://")
            .or_else(|| u.strip_prefix("https://"))
            .ok_or(EtcdError::MemberBadUrls)?;
        let Some((host, port)) = rest.rsplit_once(':') else {
            return Err(EtcdError::MemberBadUrls);
        };
        if host.is_empty() || port.parse::<u16>().is_err() || host.contains('/') {
            return Err(EtcdError::MemberBadUrls);
        }
    }
    Ok(urls.to_vec())
}

fn to_pb(m: MemberRecord) -> Member {
    Member {
        id: m.id,
        name: m.name,
        peer_ur_ls: m.peer_urls,
        client_ur_ls: m.client_urls,
        is_learner: m.is_learner,
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        req: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        let (md, _, req) = req.into_parts();
        reply(self.member_add_impl(&md, req).await)
    }

    async fn member_remove(
        &self,
        req: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        let (md, _, req) = req.into_parts();
        reply(self.member_remove_impl(&md, req).await)
    }

    async fn member_update(
        &self,
        req: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        let (md, _, req) = req.into_parts();
        reply(self.member_update_impl(&md, req).await)
    }

    async fn member_list(
        &self,
        req: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        let linearizable = req.into_inner().linearizable;
        let result: Result<MemberListResponse, EtcdError> = async {
            self.handle.refuse_if_learner()?;
            if linearizable {
                self.handle.read_index().await?;
            }
            let header = self.header().await?;
            let (tx, rx) = tokio::sync::oneshot::channel();
            let members = self
                .handle
                .call(
                    crate::msg::StorageMsg::MemberList { reply: tx },
                    rx,
                    &self.handle.storage_tx,
                )
                .await?;
            Ok(MemberListResponse {
                header: Some(header),
                members: members.into_iter().map(to_pb).collect(),
            })
        }
        .await;
        reply(result)
    }

    async fn member_promote(
        &self,
        req: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        let (md, _, req) = req.into_parts();
        reply(self.member_promote_impl(&md, req).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_urls_are_checked_like_etcd() {
        assert!(parse_peer_urls(&["http://10.0.0.1:2380".into()]).is_ok());
        assert!(parse_peer_urls(&["https://host:1".into()]).is_ok());
        for bad in [
            "",
            "10.0.0.1:2380",
            "http://host",
            "http://:2380",
            "http://h:x",
            "unix://a:1",
        ] {
            assert_eq!(
                parse_peer_urls(&[bad.to_string()]),
                Err(EtcdError::MemberBadUrls),
                "{bad}"
            );
        }
        assert_eq!(parse_peer_urls(&[]), Err(EtcdError::MemberBadUrls));
    }
}
