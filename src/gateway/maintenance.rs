//! The Maintenance service: Status, Hash, HashKV, Alarm, Defragment and MoveLeader;
//! Snapshot and Downgrade are not served yet.

use tonic::{Request, Response, Status};

use super::{reply, unimplemented, Handle};
use crate::error::EtcdError;
use crate::msg::{RaftMsg, StorageMsg};
use crate::pb::etcdserverpb::maintenance_server::Maintenance;
use crate::pb::etcdserverpb::*;
use crate::rt;

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

    async fn status(
        &self,
        _req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
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
                is_learner: raft.is_learner,
                ..Default::default()
            })
        }
        .await;
        reply(result)
    }

    /// Succeeds without work: etcd rewrites its bbolt file to give back freed pages, but
    /// sled reclaims space by its own background compaction, so there is nothing to do.
    /// The answer carries the usual header.
    async fn defragment(
        &self,
        _req: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        let result = async {
            Ok(DefragmentResponse {
                header: Some(self.header().await?),
            })
        }
        .await;
        reply(result)
    }

    /// detcd's backend hash (see [`crate::actors::storage::backend_hash`]): equal across
    /// members with identical state, with the header at the current revision.
    async fn hash(&self, _req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let result = self
            .handle
            .call(StorageMsg::Hash { reply: tx }, rx, &self.handle.storage_tx)
            .await
            .and_then(|r| r);
        reply(result)
    }

    async fn hash_kv(
        &self,
        req: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        let revision = req.into_inner().revision;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let result = self
            .handle
            .call(
                StorageMsg::HashKv {
                    revision,
                    reply: tx,
                },
                rx,
                &self.handle.storage_tx,
            )
            .await
            .and_then(|r| r);
        reply(result)
    }

    type SnapshotStream = tokio_stream::wrappers::ReceiverStream<Result<SnapshotResponse, Status>>;

    async fn snapshot(
        &self,
        _req: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        Err(unimplemented("Maintenance.Snapshot"))
    }

    /// etcd's MoveLeader: only the leader accepts it ("etcdserver: not leader"), the
    /// target must be a member ("etcdserver: bad leader transferee"); the leader starts
    /// raft's leader transfer and the call returns once the target leads, or fails with
    /// etcd's "leader transfer took too long" when the request timeout passes first.
    async fn move_leader(
        &self,
        req: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        let target = req.into_inner().target_id;
        let deadline = rt::now() + self.handle.request_timeout;
        let result = async {
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.handle
                .call(
                    RaftMsg::TransferLeader { target, reply: tx },
                    rx,
                    &self.handle.raft_tx,
                )
                .await??;
            let mut status = self.handle.raft_status.clone();
            match rt::timeout_at(deadline, status.wait_for(|s| s.leader_id == target)).await {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return Err(EtcdError::Stopped),
                Err(_) => return Err(EtcdError::TimeoutLeaderTransfer),
            }
            let header = self.header().await?;
            Ok(MoveLeaderResponse {
                header: Some(header),
            })
        }
        .await;
        reply(result)
    }

    async fn downgrade(
        &self,
        _req: Request<DowngradeRequest>,
    ) -> Result<Response<DowngradeResponse>, Status> {
        Err(unimplemented("Maintenance.Downgrade"))
    }
}
