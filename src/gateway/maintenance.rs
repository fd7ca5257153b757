//! The Maintenance service: Status, Hash, HashKV, Alarm, Defragment, MoveLeader and
//! Snapshot; Downgrade is not served yet.

use tonic::{Request, Response, Status};

use super::{reply, unimplemented, Handle};
use crate::core::alarm::alarm_text;
use crate::core::apply::Response as Applied;
use crate::error::EtcdError;
use crate::msg::{RaftMsg, StorageMsg};
use crate::pb::detcdpb::InternalRequest;
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
    /// etcd's Alarm: every action, listing included, goes through raft, so the answer
    /// reflects every alarm committed before it, on whichever member it is asked.
    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let request = InternalRequest {
            alarm: Some(req.into_inner()),
            ..Default::default()
        };
        let result = match self.handle.propose(request).await {
            Ok(Applied::Alarm(r)) => Ok(r),
            Ok(_) => Err(EtcdError::Internal(
                "apply returned an unexpected response to alarm".into(),
            )),
            Err(e) => Err(e),
        };
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
                errors: status_errors(raft.leader_id, &storage.alarms),
                db_size_in_use: storage.db_size_in_use_bytes as i64,
                is_learner: raft.is_learner,
                ..Default::default()
            })
        }
        .await;
        reply(result)
    }

    /// Gives back the space of deleted data on this member (etcd rewrites its bbolt file):
    /// the reported size, which the quota is measured against, falls to the bytes in use.
    /// The answer carries the usual header.
    async fn defragment(
        &self,
        req: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        let result = async {
            // etcd's authMaintenanceServer: only root may defragment, hash or snapshot.
            self.handle.check_admin(req.metadata()).await?;
            let (tx, rx) = tokio::sync::oneshot::channel();
            self.handle
                .call(
                    StorageMsg::Defragment { reply: tx },
                    rx,
                    &self.handle.storage_tx,
                )
                .await??;
            // etcd 3.4 answers a defragmentation with an empty message, header and all.
            Ok(DefragmentResponse { header: None })
        }
        .await;
        reply(result)
    }

    /// detcd's backend hash (see [`crate::actors::storage::backend_hash`]): equal across
    /// members with identical state, with the header at the current revision.
    async fn hash(&self, req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        self.handle.check_admin(req.metadata()).await?;
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
        self.handle.check_admin(req.metadata()).await?;
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

    /// etcd's snapshot stream, from a consistent copy of the backend in etcd's bbolt
    /// format (see [`super::snapshot`]).
    async fn snapshot(
        &self,
        req: Request<SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        self.handle.check_admin(req.metadata()).await?;
        reply(super::snapshot::snapshot_stream(&self.handle).await)
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

/// Status's `errors`, as etcd fills them: "etcdserver: no leader" without a leader, then
/// every raised alarm in Go's compact protobuf text ("memberID:1 alarm:NOSPACE ").
fn status_errors(leader_id: u64, alarms: &[AlarmMember]) -> Vec<String> {
    let mut errors = Vec::new();
    if leader_id == 0 {
        errors.push(EtcdError::NoLeader.message());
    }
    errors.extend(alarms.iter().map(alarm_text));
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_errors_list_no_leader_then_alarms() {
        let alarms = [AlarmMember {
            member_id: 12,
            alarm: AlarmType::Nospace as i32,
        }];
        assert!(status_errors(1, &[]).is_empty());
        assert_eq!(
            status_errors(0, &alarms),
            vec![
                "etcdserver: no leader".to_string(),
                "memberID:12 alarm:NOSPACE ".to_string()
            ]
        );
    }
}
