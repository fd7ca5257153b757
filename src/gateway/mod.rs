//! The gRPC gateway: one file per etcd service. Each handler validates the request as
//! etcd's gRPC layer does, then either proposes it through the raft actor or reads from
//! the storage actor, and waits (bounded by the request timeout) for the answer.

pub mod access;
pub mod auth;
pub mod cluster;
pub mod concurrency;
pub mod election;
pub mod h2_authority;
pub mod health;
pub mod hpack;
pub mod http;
pub mod json;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod maintenance;
pub mod snapshot;
pub mod watch;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::core::apply::Response;
use crate::core::auth::{Access, AuthStore};
use crate::core::jwt::TokenProvider;
use crate::core::quota::{self, Quota};
use crate::core::token::simple_token_index;
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
    /// The applied auth store and this member's simple tokens.
    pub auth: crate::actors::storage::SharedAuth,
    /// `--bcrypt-cost`: the cost passwords are hashed at.
    pub bcrypt_cost: u32,
    /// `--auth-token`: how tokens are issued and checked.
    pub token_provider: Arc<TokenProvider>,
    /// This member's metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// Who a request acts for, from its token: the user and the auth revision the token was
/// checked at (etcd's `AuthInfo`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthInfo {
    /// The user; empty when the client sent no token.
    pub user: String,
    /// The auth revision at the check; 0 when the client sent no token.
    pub revision: u64,
}

/// Who `token` stands for under `provider`, as this member knows now (no waiting for a
/// simple token from a later raft index), or `None` if the token is invalid. A simple
/// token is renewed by the look-up.
pub fn resolve_token(
    view: &mut crate::actors::storage::AuthView,
    provider: &TokenProvider,
    token: &str,
) -> Option<AuthInfo> {
    match provider {
        TokenProvider::Simple => view.tokens.user_of(token, rt::now()).map(|user| AuthInfo {
            user,
            revision: view.store.revision(),
        }),
        TokenProvider::Jwt(jwt) => {
            let now_ms = i64::try_from(rt::unix_time_ms()).unwrap_or(i64::MAX);
            jwt.verify(token, now_ms).map(|claims| AuthInfo {
                user: claims.username,
                revision: claims.revision,
            })
        }
        TokenProvider::Nop => None,
    }
}

/// The gRPC metadata key etcd's clients send their token under.
pub const TOKEN_METADATA_KEY: &str = "token";

/// The metadata key under which the runtime seam hands over the common name of a verified
/// client certificate (`--client-cert-auth` on a TLS listener). The seam removes whatever
/// a client sends under this key, so only a certificate can set it.
pub const CERT_CN_METADATA_KEY: &str = "detcd-client-cert-cn";

impl Handle {
    /// The applied auth store, as of the last applied batch.
    pub fn auth_store(&self) -> Arc<AuthStore> {
        match self.auth.lock() {
            Ok(v) => v.store.clone(),
            Err(poisoned) => poisoned.into_inner().store.clone(),
        }
    }

    /// etcd's `AuthInfoFromCtx`: the user the request's token stands for. No token is an
    /// anonymous request (whose requests fail at apply while auth is enabled); an unknown,
    /// lapsed, expired or badly signed token is "invalid auth token", whether or not auth
    /// is enabled (disabling it voids every simple token), as in etcd. A simple token stands for its user at the current auth revision; a JWT
    /// carries the auth revision it was issued at, so once auth changed its requests fail
    /// with "revision of auth store is old" until the client authenticates again.
    pub async fn auth_info(
        &self,
        md: &tonic::metadata::MetadataMap,
    ) -> Result<AuthInfo, EtcdError> {
        let Some(token) = md.get(TOKEN_METADATA_KEY).and_then(|t| t.to_str().ok()) else {
            return Ok(self.cert_auth_info(md));
        };
        if let TokenProvider::Simple = &*self.token_provider {
            return self.simple_token_info(token).await;
        }
        let mut view = match self.auth.lock() {
            Ok(v) => v,
            Err(poisoned) => poisoned.into_inner(),
        };
        resolve_token(&mut view, &self.token_provider, token).ok_or(EtcdError::InvalidAuthToken)
    }

    /// [`Handle::auth_info`] for simple tokens. A token assigned at a raft index this
    /// member has not applied yet is waited for, as etcd does.
    async fn simple_token_info(&self, token: &str) -> Result<AuthInfo, EtcdError> {
        for attempt in 0..2 {
            let lagging = {
                let mut view = match self.auth.lock() {
                    Ok(v) => v,
                    Err(poisoned) => poisoned.into_inner(),
                };
                if let Some(info) = resolve_token(&mut view, &TokenProvider::Simple, token) {
                    return Ok(info);
                }
                simple_token_index(token).is_some_and(|i| i > view.applied_index)
            };
            if !lagging || attempt == 1 {
                break;
            }
            // The token is newer than this member's state: catch up once and look again.
            let index = self.read_index().await?;
            let (tx, rx) = oneshot::channel();
            self.call(
                StorageMsg::Range {
                    request: RangeRequest {
                        key: vec![0],
                        limit: 1,
                        count_only: true,
                        serializable: true,
                        ..Default::default()
                    },
                    min_applied_index: index,
                    reply: tx,
                },
                rx,
                &self.storage_tx,
            )
            .await??;
        }
        Err(EtcdError::InvalidAuthToken)
    }

    /// etcd's `AuthInfoFromTLS`, for requests without a token: the common name of the
    /// connection's verified client certificate is the user, when the listener
    /// authenticates with client certificates and auth is enabled.
    fn cert_auth_info(&self, md: &tonic::metadata::MetadataMap) -> AuthInfo {
        let Some(cn) = md.get(CERT_CN_METADATA_KEY).and_then(|v| v.to_str().ok()) else {
            return AuthInfo::default();
        };
        let store = self.auth_store();
        if !store.is_enabled() {
            return AuthInfo::default();
        }
        AuthInfo {
            user: cn.to_string(),
            revision: store.revision(),
        }
    }

    /// Proposes `request` on behalf of the client whose metadata is `md`: the header names
    /// the token's user and the auth revision it was checked at, so the apply step checks
    /// the permissions. A request refused as authorized at an old auth revision is
    /// retried with a fresh check, as etcd's `raftRequest` does.
    pub async fn propose_authed(
        &self,
        md: &tonic::metadata::MetadataMap,
        mut request: InternalRequest,
    ) -> Result<Response, EtcdError> {
        let mut attempts = 0;
        let mut last_revision = None;
        loop {
            let info = self.auth_info(md).await?;
            // A JWT names the revision it was issued at: checking it again cannot help.
            if last_revision == Some(info.revision) {
                return Err(EtcdError::AuthOldRevision);
            }
            last_revision = Some(info.revision);
            let header = request.header.get_or_insert_with(Default::default);
            header.username = info.user;
            header.auth_revision = info.revision;
            match self.propose(request.clone()).await {
                Err(EtcdError::AuthOldRevision) if attempts < 3 => attempts += 1,
                other => return other,
            }
        }
    }

    /// etcd's `IsAdminPermitted` for requests served by this member alone (maintenance):
    /// the token's user must hold the root role while auth is enabled. etcd's maintenance
    /// service hands the auth layer's own errors to gRPC unconverted, so clients see them
    /// as `Unknown` with the "auth: ..." text; this does the same.
    pub async fn check_admin(&self, md: &tonic::metadata::MetadataMap) -> Result<(), EtcdError> {
        self.admin_permitted(md).await.map_err(|e| match e {
            EtcdError::UserEmpty => EtcdError::Unknown("auth: user name is empty".into()),
            EtcdError::UserNotFound => EtcdError::Unknown("auth: user not found".into()),
            EtcdError::PermissionDenied => EtcdError::Unknown("auth: permission denied".into()),
            EtcdError::InvalidAuthToken => EtcdError::Unknown("auth: invalid auth token".into()),
            other => other,
        })
    }

    /// etcd's `IsAdminPermitted` with etcd's gRPC errors (membership changes): the token's
    /// user must hold the root role while auth is enabled.
    pub async fn admin_permitted(
        &self,
        md: &tonic::metadata::MetadataMap,
    ) -> Result<(), EtcdError> {
        let info = self.auth_info(md).await?;
        self.auth_store().check_admin(&info.user)
    }

    /// etcd's `IsRangePermitted` for reads served by this member: the caller, if allowed.
    pub async fn check_read(
        &self,
        md: &tonic::metadata::MetadataMap,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<AuthInfo, EtcdError> {
        let info = self.auth_info(md).await?;
        self.auth_store()
            .check(&info.user, info.revision, Access::Read, key, range_end)?;
        Ok(info)
    }

    /// The end of etcd's `doSerialize`: a read checked with a token's auth revision is
    /// refused as stale unless that revision is still the current one (auth changed
    /// while it was served, or the token is from another revision altogether).
    pub fn check_still_current(&self, info: &AuthInfo) -> Result<(), EtcdError> {
        if info.revision != 0 && info.revision != self.auth_store().revision() {
            return Err(EtcdError::AuthOldRevision);
        }
        Ok(())
    }
    /// Proposes a request through raft and waits for its applied result.
    /// Counted in the proposal metrics as etcd counts them: pending while it waits,
    /// failed when it does not apply successfully.
    ///
    /// A write that applied while the backend was full (etcd's apply-time quota check,
    /// which the gateway's [`Handle::check_quota`] can miss because the backend's size
    /// trails the queued commits) raises this member's NOSPACE alarm before it is
    /// answered, as etcd's `applyEntryNormal` does.
    pub async fn propose(&self, request: InternalRequest) -> Result<Response, EtcdError> {
        let raises_alarm = request.alarm.is_none();
        let result = self.propose_once(request).await;
        if raises_alarm && matches!(result, Err(EtcdError::NoSpace)) {
            if let Err(e) = self
                .propose_once(nospace_alarm(self.member.member_id))
                .await
            {
                tracing::warn!(error = %e, "failed to raise the NOSPACE alarm");
            }
        }
        result
    }

    async fn propose_once(&self, request: InternalRequest) -> Result<Response, EtcdError> {
        let (tx, rx) = oneshot::channel();
        let metrics = &self.metrics;
        metrics.proposals_pending.fetch_add(1, Ordering::Relaxed);
        let result = self
            .call(
                RaftMsg::Propose {
                    request: Box::new(request),
                    reply: tx,
                },
                rx,
                &self.raft_tx,
            )
            .await
            .and_then(|r| r);
        metrics.proposals_pending.fetch_sub(1, Ordering::Relaxed);
        if matches!(
            result,
            Err(EtcdError::Timeout
                | EtcdError::Stopped
                | EtcdError::NoLeader
                | EtcdError::LeaderChanged
                | EtcdError::TooManyRequests)
        ) {
            metrics.proposals_failed.fetch_add(1, Ordering::Relaxed);
        }
        result
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
        if let Err(e) = self.propose(nospace_alarm(self.member.member_id)).await {
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

/// The request that raises member `member_id`'s NOSPACE alarm.
fn nospace_alarm(member_id: u64) -> InternalRequest {
    InternalRequest {
        alarm: Some(AlarmRequest {
            action: AlarmAction::Activate as i32,
            member_id,
            alarm: AlarmType::Nospace as i32,
        }),
        ..Default::default()
    }
}
