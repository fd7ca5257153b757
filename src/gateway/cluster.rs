//! The Cluster service: MemberList (from the replicated Members bucket); membership
//! changes arrive later.

use tonic::{Request, Response, Status};

use super::{reply, unimplemented, Handle};
use crate::error::EtcdError;
use crate::pb::etcdserverpb::cluster_server::Cluster;
use crate::pb::etcdserverpb::*;

/// The Cluster service.
pub struct ClusterService {
    handle: Handle,
}

impl ClusterService {
    /// Builds the service over the actors' handle.
    pub fn new(handle: Handle) -> ClusterService {
        ClusterService { handle }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        _req: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        Err(unimplemented("Cluster.MemberAdd"))
    }

    async fn member_remove(
        &self,
        _req: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        Err(unimplemented("Cluster.MemberRemove"))
    }

    async fn member_update(
        &self,
        _req: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        Err(unimplemented("Cluster.MemberUpdate"))
    }

    async fn member_list(
        &self,
        req: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        let linearizable = req.into_inner().linearizable;
        let result: Result<MemberListResponse, EtcdError> = async {
            if linearizable {
                self.handle.read_index().await?;
            }
            let storage = self.handle.storage_status().await?;
            let raft = self.handle.raft_status().await?;
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
                header: Some(ResponseHeader {
                    cluster_id: raft.cluster_id,
                    member_id: raft.member_id,
                    revision: storage.revision,
                    raft_term: raft.term,
                }),
                members: members
                    .into_iter()
                    .map(|m| Member {
                        id: m.id,
                        name: m.name,
                        peer_ur_ls: m.peer_urls,
                        client_ur_ls: m.client_urls,
                        is_learner: false,
                    })
                    .collect(),
            })
        }
        .await;
        reply(result)
    }

    async fn member_promote(
        &self,
        _req: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        Err(unimplemented("Cluster.MemberPromote"))
    }
}
