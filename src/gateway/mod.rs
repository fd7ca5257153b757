//! The gRPC gateway: one file per etcd service. Each handler validates the request as
//! etcd's gRPC layer does, then either proposes it through the raft actor or reads from
//! the storage actor, and waits (bounded by the request timeout) for the answer.

pub mod cluster;
pub mod h2_authority;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod snapshot;
pub mod watch;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::core::apply::Response;
use crate::core::quota::{self, Quota};
use crate::error::EtcdError;
use crate::msg::{RaftMsg, RaftStatus, StorageMsg, StorageStatus};
use crate::pb::detcdpb::InternalRequest;
use crate::pb::etcdserverpb::{
    alarm_request::AlarmAction, AlarmRequest, AlarmType, RangeRequest, RangeResponse,
};
use crate::rt;

/// What this member tells clients about itself (Cluster.MemberList, Status).
#[derive(Debug, Clone, Default)]
pub struct MemberInfo {
    /// The member's name (`--name`).
    pub name: String,
    /// The member id.
    pub member_id: u64,
    /// The cluster id.
    pub cluster_id: u64,
    /// `--initial-advertise-peer-urls`.
    pub peer_urls: Vec<String>,
    /// `--advertise-client-urls`.
    pub client_urls: Vec<String>,
}

/// The handle every service holds: channels to the actors and the serving limits.
#[derive(Clone)]
pub struct Handle {
    /// To the raft actor.
    pub raft_tx: mpsc::Sender<RaftMsg>,
    /// To the storage actor.
    pub storage_tx: mpsc::Sender<StorageMsg>,
    /// The latest raft status.
    pub raft_status: rt::watch::Receiver<RaftStatus>,
    /// This member.
    pub member: MemberInfo,
    /// `--max-txn-ops`.
    pub max_txn_ops: usize,
    /// How long a request may wait for raft before "request timed out".
    pub request_timeout: Duration,
    /// `--quota-backend-bytes`.
    pub quota: Quota,
    /// The backend's size, as the storage actor last reported it.
    pub backend_size: Arc<AtomicU64>,
    /// The applied membership.
    pub membership: crate::msg::MembershipRx,
    /// Peer reachability, for `--strict-reconfig-check`.
    pub peer_health: crate::actors::transport::PeerHealth,
    /// `--strict-reconfig-check`.
    pub strict_reconfig_check: bool,
}

impl Handle {
    /// Proposes a request through raft and waits for its applied result.
    pub async fn propose(&self, request: InternalRequest) -> Result<Response, EtcdError> {
        let (tx, rx) = oneshot::channel();
        self.call(
            RaftMsg::Propose {
                request: Box::new(request),
                reply: tx,
            },
            rx,
            &self.raft_tx,
        )
        .await?
    }

    /// etcd's quota check before a write (`quotaAlarmer.check`): when the backend has no
    /// room for `request` (a put, txn or lease grant; other requests always pass), raises
    /// this member's NOSPACE alarm through raft, waits for it, and fails with "database
    /// space exceeded" whatever became of the alarm.
    pub async fn check_quota(&self, request: &InternalRequest) -> Result<(), EtcdError> {
        let Some(cost_bytes) = quota::request_cost_bytes(request) else {
            return Ok(());
        };
        let size_bytes = self.backend_size.load(Ordering::Relaxed);
        if self.quota.available(size_bytes, cost_bytes) {
            return Ok(());
        }
        let alarm = InternalRequest {
            alarm: Some(AlarmRequest {
                action: AlarmAction::Activate as i32,
                member_id: self.member.member_id,
                alarm: AlarmType::Nospace as i32,
            }),
            ..Default::default()
        };
        if let Err(e) = self.propose(alarm).await {
            tracing::warn!(error = %e, "failed to raise the NOSPACE alarm");
        }
        Err(EtcdError::NoSpace)
    }

    /// etcd's learner interceptor: a learner refuses client requests other than
    /// serializable reads and status with "rpc not supported for learner".
    pub fn refuse_if_learner(&self) -> Result<(), EtcdError> {
        if self.raft_status.borrow().is_learner {
            Err(EtcdError::NotSupportedForLearner)
        } else {
            Ok(())
        }
    }

    /// Serves a range: linearizable (after a ReadIndex barrier) unless `serializable`.
    pub async fn range(&self, request: RangeRequest) -> Result<RangeResponse, EtcdError> {
        let min_applied_index =
            if request.serializable || crate::planted::active(crate::planted::Bug::StaleRead) {
                0
            } else {
                self.read_index().await?
            };
        let (tx, rx) = oneshot::channel();
        self.call(
            StorageMsg::Range {
                request,
                min_applied_index,
                reply: tx,
            },
            rx,
            &self.storage_tx,
        )
        .await?
    }

    /// Obtains a linearizable read barrier from raft.
    pub async fn read_index(&self) -> Result<u64, EtcdError> {
        let (tx, rx) = oneshot::channel();
        self.call(RaftMsg::ReadIndex { reply: tx }, rx, &self.raft_tx)
            .await?
    }

    /// The storage actor's status.
    pub async fn storage_status(&self) -> Result<StorageStatus, EtcdError> {
        let (tx, rx) = oneshot::channel();
        self.call(StorageMsg::Status { reply: tx }, rx, &self.storage_tx)
            .await
    }

    /// The raft actor's status.
    pub async fn raft_status(&self) -> Result<RaftStatus, EtcdError> {
        let (tx, rx) = oneshot::channel();
        self.call(RaftMsg::Status { reply: tx }, rx, &self.raft_tx)
            .await
    }

    /// Sends `msg` and waits for its reply within the request timeout.
    pub async fn call<M, T>(
        &self,
        msg: M,
        rx: oneshot::Receiver<T>,
        to: &mpsc::Sender<M>,
    ) -> Result<T, EtcdError> {
        let deadline = rt::now() + self.request_timeout;
        match rt::timeout_at(deadline, to.send(msg)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(EtcdError::Stopped),
            Err(_) => return Err(EtcdError::Timeout),
        }
        match rt::timeout_at(deadline, rx).await {
            Ok(Ok(v)) => Ok(v),
            // The actor dropped the reply: it stopped, or lost track of the request when
            // leadership moved.
            Ok(Err(_)) => Err(EtcdError::Stopped),
            Err(_) => Err(EtcdError::Timeout),
        }
    }
}

/// Converts a result into what tonic handlers return.
pub fn reply<T>(r: Result<T, EtcdError>) -> Result<tonic::Response<T>, tonic::Status> {
    r.map(tonic::Response::new).map_err(|e| e.to_status())
}

/// The error for an etcd method detcd does not serve yet.
pub fn unimplemented(method: &str) -> tonic::Status {
    EtcdError::Unimplemented(format!("detcd: {method} is not implemented yet")).to_status()
}
