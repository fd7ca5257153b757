//! The Maintenance service: Status, HashKV and Alarm now; the rest arrive with clustering.

use tonic::{Request, Response, Status};

use super::{reply, unimplemented, Handle};
use crate::error::EtcdError;
use crate::msg::StorageMsg;
use crate::pb::etcdserverpb::maintenance_server::Maintenance;
use crate::pb::etcdserverpb::*;

/// The Maintenance service.
pub struct MaintenanceService {
    handle: Handle,
}

impl MaintenanceService {
    /// Builds the service over the actors' handle.
    pub fn new(handle: Handle) -> MaintenanceService {
        MaintenanceService { handle }
    }

    async fn header(&self) -> Result<ResponseHeader, EtcdError> {
        let storage = self.handle.storage_status().await?;
        let raft = self.handle.raft_status().await?;
        Ok(ResponseHeader {
            cluster_id: raft.cluster_id,
            member_id: raft.member_id,
            revision: storage.revision,
            raft_term: raft.term,
        })
    }
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let req = req.into_inner();
        let result = async {
            // No alarm can be raised yet (quota and corruption checks arrive with the
            // cluster work), so GET answers an empty list and ACTIVATE/DEACTIVATE are
            // accepted as no-ops on an empty set, as etcd does for an unknown alarm.
            let _ = req;
            Ok(AlarmResponse {
                header: Some(self.header().await?),
                alarms: vec![],
            })
        }
        .await;
        reply(result)
    }

    async fn status(&self, _req: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let result = async {
            let storage = self.handle.storage_status().await?;
            let raft = self.handle.raft_status().await?;
            Ok(StatusResponse {
                header: Some(ResponseHeader {
                    cluster_id: raft.cluster_id,
                    member_id: raft.member_id,
                    revision: storage.revision,
                    raft_term: raft.term,
                }),
                version: crate::ETCD_VERSION.to_string(),
                db_size: storage.db_size_bytes as i64,
                leader: raft.leader_id,
                raft_index: raft.commit_index,
                raft_term: raft.term,
                raft_applied_index: storage.applied_index,
                errors: vec![],
                db_size_in_use: storage.db_size_bytes as i64,
                is_learner: false,
                ..Default::default()
            })
        }
        .await;
        reply(result)
    }

    async fn defragment(
        &self,
        _req: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        Err(unimplemented("Maintenance.Defragment"))
    }

    async fn hash(&self, _req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        Err(unimplemented("Maintenance.Hash"))
    }

    async fn hash_kv(&self, req: Request<HashKvRequest>) -> Result<Response<HashKvResponse>, Status> {
        let revision = req.into_inner().revision;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let result = self
            .handle
            .call(StorageMsg::HashKv { revision, reply: tx }, rx, &self.handle.storage_tx)
            .await
            .and_then(|r| r);
        reply(result)
    }

    type SnapshotStream =
        tokio_stream::wrappers::ReceiverStream<Result<SnapshotResponse, Status>>;

    async fn snapshot(
        &self,
        _req: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(unimplemented("Maintenance.Snapshot"))
    }

    async fn move_leader(
        &self,
        _req: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        Err(unimplemented("Maintenance.MoveLeader"))
    }

    async fn downgrade(
        &self,
        _req: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        Err(unimplemented("Maintenance.Downgrade"))
    }
}
