//! etcd's errors: the exact gRPC status codes and messages etcd's clients expect.
//!
//! Every failure a client can see is one of these variants; [`EtcdError::to_status`] turns
//! it into the `tonic::Status` etcd would send, so `etcdctl` prints the same text.

use std::fmt;

/// An error with etcd's meaning, code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EtcdError {
    /// The request has no key.
    EmptyKey,
    /// A key that must exist does not (e.g. `ignore_value` on a missing key).
    KeyNotFound,
    /// `ignore_value` was set together with a value.
    ValueProvided,
    /// `ignore_lease` was set together with a lease.
    LeaseProvided,
    /// A txn has more operations than `--max-txn-ops`.
    TooManyOps,
    /// A txn writes the same key twice in one branch.
    DuplicateKey,
    /// The requested revision has been compacted.
    Compacted,
    /// The requested revision is newer than the store.
    FutureRev,
    /// The request is larger than `--max-request-bytes`.
    RequestTooLarge,
    /// The lease does not exist.
    LeaseNotFound,
    /// The lease already exists.
    LeaseExist,
    /// The requested TTL is too large.
    LeaseTtlTooLarge,
    /// The backend quota is exhausted.
    NoSpace,
    /// The request did not complete in time.
    Timeout,
    /// The cluster has no leader.
    NoLeader,
    /// The leader changed while the request was in flight.
    LeaderChanged,
    /// The server is stopping.
    Stopped,
    /// The server is overloaded (too many pending proposals).
    TooManyRequests,
    /// The server cannot serve the request in its current state.
    NotCapable,
    /// A leader-only request (MoveLeader) reached a member that is not the leader.
    NotLeader,
    /// MoveLeader named a target that is not a voting member.
    BadLeaderTransferee,
    /// MoveLeader's target did not become leader within the request's time.
    TimeoutLeaderTransfer,
    /// MemberAdd: the new member's id is already a member.
    MemberExist,
    /// MemberAdd or MemberUpdate: another member already has one of the peer URLs.
    PeerUrlExist,
    /// A reconfiguration would leave fewer started members than a quorum
    /// (`--strict-reconfig-check`).
    MemberNotEnoughStarted,
    /// MemberAdd or MemberUpdate: a peer URL does not parse.
    MemberBadUrls,
    /// The member id is not a member.
    MemberNotFound,
    /// MemberPromote named a member that is not a learner.
    MemberNotLearner,
    /// MemberPromote named a learner that has not caught up with the leader.
    LearnerNotReady,
    /// MemberAdd of a learner when the cluster already has the most learners allowed.
    TooManyLearners,
    /// A reconfiguration would break the active quorum (`--strict-reconfig-check`).
    Unhealthy,
    /// A learner refuses every client request but serializable reads and status.
    NotSupportedForLearner,
    /// A request was malformed in a way etcd reports with a custom message.
    InvalidArgument(String),
    /// The method is not implemented.
    Unimplemented(String),
    /// The member's data is corrupt; it refuses to serve.
    Corrupt(String),
    /// A CORRUPT alarm is raised: the cluster refuses writes (etcd's `ErrCorrupt`).
    CorruptCluster,
    /// An internal failure (I/O, encoding). The message is for the log and the client.
    Internal(String),
    /// An error etcd has no gRPC status for, which gRPC sends as `Unknown` with the
    /// error's own text (e.g. "auth: token signing attempted with verify-only key").
    Unknown(String),
    /// Auth: there is no root user, so auth cannot be enabled.
    RootUserNotExist,
    /// Auth: the root user lacks the root role, so auth cannot be enabled.
    RootRoleNotExist,
    /// Auth: the user already exists.
    UserAlreadyExist,
    /// Auth: the user name is empty.
    UserEmpty,
    /// Auth: the user does not exist.
    UserNotFound,
    /// Auth: the role already exists.
    RoleAlreadyExist,
    /// Auth: the role does not exist.
    RoleNotFound,
    /// Auth: the role name is empty.
    RoleEmpty,
    /// Auth: wrong user name or password.
    AuthFailed,
    /// Auth: the caller may not do this.
    PermissionDenied,
    /// Auth: the user does not have the role.
    RoleNotGranted,
    /// Auth: the role does not have the permission.
    PermissionNotGranted,
    /// Auth: auth is not enabled (for Authenticate).
    AuthNotEnabled,
    /// Auth: the token is unknown or expired.
    InvalidAuthToken,
    /// Auth: a change that would lock the administrator out (deleting root, revoking the
    /// root role from root) while auth is enabled.
    InvalidAuthMgmt,
    /// Auth: the request was checked against permissions that have changed since.
    AuthOldRevision,
}

/// gRPC status codes as etcd uses them (a subset of `tonic::Code`, kept here so pure code
/// does not depend on tonic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// `InvalidArgument` (3).
    InvalidArgument,
    /// `NotFound` (5).
    NotFound,
    /// `FailedPrecondition` (9).
    FailedPrecondition,
    /// `OutOfRange` (11).
    OutOfRange,
    /// `ResourceExhausted` (8).
    ResourceExhausted,
    /// `Unavailable` (14).
    Unavailable,
    /// `Unimplemented` (12).
    Unimplemented,
    /// `DataLoss` (15).
    DataLoss,
    /// `Internal` (13).
    Internal,
    /// `Unknown` (2): what gRPC sends for an error etcd does not map to a status.
    Unknown,
    /// `PermissionDenied` (7).
    PermissionDenied,
    /// `Unauthenticated` (16).
    Unauthenticated,
}

impl EtcdError {
    /// The gRPC code etcd answers this error with.
    pub fn code(&self) -> Code {
        use EtcdError::*;
        match self {
            EmptyKey | KeyNotFound | ValueProvided | LeaseProvided | TooManyOps | DuplicateKey
            | RequestTooLarge | InvalidArgument(_) | MemberBadUrls => Code::InvalidArgument,
            MemberNotFound => Code::NotFound,
            UserEmpty | RoleEmpty | AuthFailed | InvalidAuthMgmt | AuthOldRevision => {
                Code::InvalidArgument
            }
            RootUserNotExist | RootRoleNotExist | UserAlreadyExist | UserNotFound
            | RoleAlreadyExist | RoleNotFound | RoleNotGranted | PermissionNotGranted
            | AuthNotEnabled => Code::FailedPrecondition,
            PermissionDenied => Code::PermissionDenied,
            InvalidAuthToken => Code::Unauthenticated,
            MemberExist | PeerUrlExist | MemberNotLearner | LearnerNotReady | TooManyLearners => {
                Code::FailedPrecondition
            }
            // etcd's map holds a plain error for this one, which gRPC sends as Unknown.
            MemberNotEnoughStarted => Code::Unknown,
            Unhealthy | NotSupportedForLearner => Code::Unavailable,
            Compacted | FutureRev => Code::OutOfRange,
            LeaseNotFound => Code::NotFound,
            LeaseExist | NotCapable | NotLeader | BadLeaderTransferee => Code::FailedPrecondition,
            LeaseTtlTooLarge => Code::OutOfRange,
            NoSpace | TooManyRequests => Code::ResourceExhausted,
            Timeout | NoLeader | LeaderChanged | Stopped | TimeoutLeaderTransfer => {
                Code::Unavailable
            }
            Unimplemented(_) => Code::Unimplemented,
            Corrupt(_) | CorruptCluster => Code::DataLoss,
            Internal(_) => Code::Internal,
            Unknown(_) => Code::Unknown,
        }
    }

    /// The message etcd sends with this error, byte for byte.
    pub fn message(&self) -> String {
        use EtcdError::*;
        match self {
            EmptyKey => "etcdserver: key is not provided".into(),
            RootUserNotExist => "etcdserver: root user does not exist".into(),
            RootRoleNotExist => "etcdserver: root user does not have root role".into(),
            UserAlreadyExist => "etcdserver: user name already exists".into(),
            UserEmpty => "etcdserver: user name is empty".into(),
            UserNotFound => "etcdserver: user name not found".into(),
            RoleAlreadyExist => "etcdserver: role name already exists".into(),
            RoleNotFound => "etcdserver: role name not found".into(),
            RoleEmpty => "etcdserver: role name is empty".into(),
            AuthFailed => "etcdserver: authentication failed, invalid user ID or password".into(),
            PermissionDenied => "etcdserver: permission denied".into(),
            RoleNotGranted => "etcdserver: role is not granted to the user".into(),
            PermissionNotGranted => "etcdserver: permission is not granted to the role".into(),
            AuthNotEnabled => "etcdserver: authentication is not enabled".into(),
            InvalidAuthToken => "etcdserver: invalid auth token".into(),
            InvalidAuthMgmt => "etcdserver: invalid auth management".into(),
            AuthOldRevision => "etcdserver: revision of auth store is old".into(),
            KeyNotFound => "etcdserver: key not found".into(),
            ValueProvided => "etcdserver: value is provided".into(),
            LeaseProvided => "etcdserver: lease is provided".into(),
            TooManyOps => "etcdserver: too many operations in txn request".into(),
            DuplicateKey => "etcdserver: duplicate key given in txn request".into(),
            Compacted => "etcdserver: mvcc: required revision has been compacted".into(),
            FutureRev => "etcdserver: mvcc: required revision is a future revision".into(),
            RequestTooLarge => "etcdserver: request is too large".into(),
            LeaseNotFound => "etcdserver: requested lease not found".into(),
            LeaseExist => "etcdserver: lease already exists".into(),
            LeaseTtlTooLarge => "etcdserver: too large lease TTL".into(),
            NoSpace => "etcdserver: mvcc: database space exceeded".into(),
            Timeout => "etcdserver: request timed out".into(),
            NoLeader => "etcdserver: no leader".into(),
            LeaderChanged => "etcdserver: leader changed".into(),
            Stopped => "etcdserver: server stopped".into(),
            TooManyRequests => "etcdserver: too many requests".into(),
            NotCapable => "etcdserver: not capable".into(),
            NotLeader => "etcdserver: not leader".into(),
            BadLeaderTransferee => "etcdserver: bad leader transferee".into(),
            TimeoutLeaderTransfer => {
                "etcdserver: request timed out, leader transfer took too long".into()
            }
            MemberExist => "etcdserver: member ID already exist".into(),
            PeerUrlExist => "etcdserver: Peer URLs already exists".into(),
            MemberNotEnoughStarted => {
                "etcdserver: re-configuration failed due to not enough started members".into()
            }
            MemberBadUrls => "etcdserver: given member URLs are invalid".into(),
            MemberNotFound => "etcdserver: member not found".into(),
            MemberNotLearner => "etcdserver: can only promote a learner member".into(),
            LearnerNotReady => {
                "etcdserver: can only promote a learner member which is in sync with leader".into()
            }
            TooManyLearners => "etcdserver: too many learner members in cluster".into(),
            Unhealthy => "etcdserver: unhealthy cluster".into(),
            NotSupportedForLearner => "etcdserver: rpc not supported for learner".into(),
            InvalidArgument(m) | Unimplemented(m) | Internal(m) | Unknown(m) => m.clone(),
            Corrupt(m) => format!("etcdserver: corrupt cluster: {m}"),
            CorruptCluster => "etcdserver: corrupt cluster".into(),
        }
    }

    /// The `tonic::Status` etcd would send for this error.
    pub fn to_status(&self) -> tonic::Status {
        let code = match self.code() {
            Code::InvalidArgument => tonic::Code::InvalidArgument,
            Code::NotFound => tonic::Code::NotFound,
            Code::FailedPrecondition => tonic::Code::FailedPrecondition,
            Code::OutOfRange => tonic::Code::OutOfRange,
            Code::ResourceExhausted => tonic::Code::ResourceExhausted,
            Code::Unavailable => tonic::Code::Unavailable,
            Code::Unimplemented => tonic::Code::Unimplemented,
            Code::DataLoss => tonic::Code::DataLoss,
            Code::Internal => tonic::Code::Internal,
            Code::Unknown => tonic::Code::Unknown,
            Code::PermissionDenied => tonic::Code::PermissionDenied,
            Code::Unauthenticated => tonic::Code::Unauthenticated,
        };
        tonic::Status::new(code, self.message())
    }
}

impl fmt::Display for EtcdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for EtcdError {}

impl From<EtcdError> for tonic::Status {
    fn from(e: EtcdError) -> Self {
        e.to_status()
    }
}
