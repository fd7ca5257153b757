//! The auth half of the apply step, as etcd 3.4's `apply_auth.go` and the auth parts of
//! `apply.go` do it: running the Auth service's replicated requests against the
//! [`AuthStore`], and checking every key-value request's permissions with the user and
//! auth revision its header carries.
//!
//! Pure: the token a successful Authenticate assigns is the proposed prefix and the raft
//! index of its entry, so every member assigns the same token; the member-local token
//! table learns of it (and of tokens to drop) through [`TokenChange`]s.

use crate::core::auth::{Access, AuthChange, AuthStore};
use crate::core::lease::LeaseTable;
use crate::error::EtcdError;
use crate::pb::detcdpb::InternalRequest;
use crate::pb::etcdserverpb::{
    request_op, AuthDisableResponse, AuthEnableResponse, AuthRoleAddResponse,
    AuthRoleDeleteResponse, AuthRoleGetResponse, AuthRoleGrantPermissionResponse,
    AuthRoleListResponse, AuthRoleRevokePermissionResponse, AuthUserAddResponse,
    AuthUserChangePasswordResponse, AuthUserDeleteResponse, AuthUserGetResponse,
    AuthUserGrantRoleResponse, AuthUserListResponse, AuthUserRevokeRoleResponse,
    AuthenticateResponse, RequestOp, ResponseHeader,
};
use crate::storage::backend::WriteBatch;

/// The answer to one applied Auth service request.
#[derive(Debug, Clone, PartialEq)]
pub enum AuthResponse {
    /// AuthEnable.
    Enable(AuthEnableResponse),
    /// AuthDisable.
    Disable(AuthDisableResponse),
    /// Authenticate.
    Authenticate(AuthenticateResponse),
    /// UserAdd.
    UserAdd(AuthUserAddResponse),
    /// UserDelete.
    UserDelete(AuthUserDeleteResponse),
    /// UserGet.
    UserGet(AuthUserGetResponse),
    /// UserChangePassword.
    UserChangePassword(AuthUserChangePasswordResponse),
    /// UserGrantRole.
    UserGrantRole(AuthUserGrantRoleResponse),
    /// UserRevokeRole.
    UserRevokeRole(AuthUserRevokeRoleResponse),
    /// UserList.
    UserList(AuthUserListResponse),
    /// RoleList.
    RoleList(AuthRoleListResponse),
    /// RoleAdd.
    RoleAdd(AuthRoleAddResponse),
    /// RoleDelete.
    RoleDelete(AuthRoleDeleteResponse),
    /// RoleGet.
    RoleGet(AuthRoleGetResponse),
    /// RoleGrantPermission.
    RoleGrantPermission(AuthRoleGrantPermissionResponse),
    /// RoleRevokePermission.
    RoleRevokePermission(AuthRoleRevokePermissionResponse),
}

impl AuthResponse {
    /// Sets the response header (etcd fills every auth response's header).
    pub fn set_header(&mut self, header: ResponseHeader) {
        let h = Some(header);
        match self {
            AuthResponse::Enable(r) => r.header = h,
            AuthResponse::Disable(r) => r.header = h,
            AuthResponse::Authenticate(r) => r.header = h,
            AuthResponse::UserAdd(r) => r.header = h,
            AuthResponse::UserDelete(r) => r.header = h,
            AuthResponse::UserGet(r) => r.header = h,
            AuthResponse::UserChangePassword(r) => r.header = h,
            AuthResponse::UserGrantRole(r) => r.header = h,
            AuthResponse::UserRevokeRole(r) => r.header = h,
            AuthResponse::UserList(r) => r.header = h,
            AuthResponse::RoleList(r) => r.header = h,
            AuthResponse::RoleAdd(r) => r.header = h,
            AuthResponse::RoleDelete(r) => r.header = h,
            AuthResponse::RoleGet(r) => r.header = h,
            AuthResponse::RoleGrantPermission(r) => r.header = h,
            AuthResponse::RoleRevokePermission(r) => r.header = h,
        }
    }
}

/// A change to the member-local token table that an applied request implies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenChange {
    /// Authenticate assigned `token` to `user`.
    Assign {
        /// The simple token.
        token: String,
        /// The user it stands for.
        user: String,
    },
    /// The user was deleted or its password changed: its tokens are void.
    InvalidateUser(String),
    /// Auth was disabled: every token is void.
    Clear,
}

/// Whether `req` is an Auth service request.
pub fn is_auth_request(req: &InternalRequest) -> bool {
    req.auth_enable.is_some()
        || req.auth_disable.is_some()
        || req.authenticate.is_some()
        || req.auth_user_add.is_some()
        || req.auth_user_delete.is_some()
        || req.auth_user_get.is_some()
        || req.auth_user_change_password.is_some()
        || req.auth_user_grant_role.is_some()
        || req.auth_user_revoke_role.is_some()
        || req.auth_user_list.is_some()
        || req.auth_role_list.is_some()
        || req.auth_role_add.is_some()
        || req.auth_role_delete.is_some()
        || req.auth_role_get.is_some()
        || req.auth_role_grant_permission.is_some()
        || req.auth_role_revoke_permission.is_some()
}

/// etcd's `needAdminPermission`: the Auth requests only the root role may make.
/// Authenticate, UserGet and RoleGet are not among them (the last two have their own rule).
fn needs_admin(req: &InternalRequest) -> bool {
    req.auth_enable.is_some()
        || req.auth_disable.is_some()
        || req.auth_user_add.is_some()
        || req.auth_user_delete.is_some()
        || req.auth_user_change_password.is_some()
        || req.auth_user_grant_role.is_some()
        || req.auth_user_revoke_role.is_some()
        || req.auth_role_add.is_some()
        || req.auth_role_grant_permission.is_some()
        || req.auth_role_revoke_permission.is_some()
        || req.auth_role_delete.is_some()
        || req.auth_user_list.is_some()
        || req.auth_role_list.is_some()
}

/// The user and auth revision a request was authorized with.
fn auth_info(req: &InternalRequest) -> (&str, u64) {
    req.header
        .as_ref()
        .map_or(("", 0), |h| (h.username.as_str(), h.auth_revision))
}

/// Applies an Auth service request committed at raft index `entry_index`; `None` when
/// `req` is not one. Changes add their writes to `batch` (nothing on error).
pub fn apply_auth(
    store: &mut AuthStore,
    req: &InternalRequest,
    entry_index: u64,
    batch: &mut WriteBatch,
) -> Option<(Result<AuthResponse, EtcdError>, Vec<TokenChange>)> {
    if !is_auth_request(req) {
        return None;
    }
    let (user, _) = auth_info(req);
    if needs_admin(req) {
        if let Err(e) = store.check_admin(user) {
            return Some((Err(e), vec![]));
        }
    }
    let mut tokens = Vec::new();
    let mut change = |store: &mut AuthStore, c: AuthChange| store.apply(&c, batch).map(|_| ());
    let result = if req.auth_enable.is_some() {
        change(store, AuthChange::Enable).map(|()| AuthResponse::Enable(Default::default()))
    } else if req.auth_disable.is_some() {
        let r = change(store, AuthChange::Disable);
        if r.is_ok() {
            tokens.push(TokenChange::Clear);
        }
        r.map(|()| AuthResponse::Disable(Default::default()))
    } else if let Some(a) = &req.authenticate {
        authenticate(store, &a.name, &a.simple_token, entry_index).map(|token| {
            if !token.is_empty() {
                tokens.push(TokenChange::Assign {
                    token: token.clone(),
                    user: a.name.clone(),
                });
            }
            AuthResponse::Authenticate(AuthenticateResponse {
                header: None,
                token,
            })
        })
    } else if let Some(r) = &req.auth_user_add {
        change(
            store,
            AuthChange::UserAdd {
                name: r.name.clone(),
                password_hash: r.hashed_password.as_bytes().to_vec(),
                no_password: r.options.as_ref().is_some_and(|o| o.no_password),
            },
        )
        .map(|()| AuthResponse::UserAdd(Default::default()))
    } else if let Some(r) = &req.auth_user_delete {
        let res = change(
            store,
            AuthChange::UserDelete {
                name: r.name.clone(),
            },
        );
        if res.is_ok() {
            tokens.push(TokenChange::InvalidateUser(r.name.clone()));
        }
        res.map(|()| AuthResponse::UserDelete(Default::default()))
    } else if let Some(r) = &req.auth_user_change_password {
        let res = change(
            store,
            AuthChange::UserChangePassword {
                name: r.name.clone(),
                password_hash: r.hashed_password.as_bytes().to_vec(),
            },
        );
        if res.is_ok() {
            tokens.push(TokenChange::InvalidateUser(r.name.clone()));
        }
        res.map(|()| AuthResponse::UserChangePassword(Default::default()))
    } else if let Some(r) = &req.auth_user_grant_role {
        change(
            store,
            AuthChange::UserGrantRole {
                user: r.user.clone(),
                role: r.role.clone(),
            },
        )
        .map(|()| AuthResponse::UserGrantRole(Default::default()))
    } else if let Some(r) = &req.auth_user_revoke_role {
        change(
            store,
            AuthChange::UserRevokeRole {
                name: r.name.clone(),
                role: r.role.clone(),
            },
        )
        .map(|()| AuthResponse::UserRevokeRole(Default::default()))
    } else if let Some(r) = &req.auth_role_add {
        change(
            store,
            AuthChange::RoleAdd {
                name: r.name.clone(),
            },
        )
        .map(|()| AuthResponse::RoleAdd(Default::default()))
    } else if let Some(r) = &req.auth_role_delete {
        change(
            store,
            AuthChange::RoleDelete {
                role: r.role.clone(),
            },
        )
        .map(|()| AuthResponse::RoleDelete(Default::default()))
    } else if let Some(r) = &req.auth_role_grant_permission {
        match &r.perm {
            None => Err(EtcdError::InvalidArgument(
                "etcdserver: permission is not given".into(),
            )),
            Some(perm) => change(
                store,
                AuthChange::RoleGrantPermission {
                    name: r.name.clone(),
                    perm: perm.clone(),
                },
            )
            .map(|()| AuthResponse::RoleGrantPermission(Default::default())),
        }
    } else if let Some(r) = &req.auth_role_revoke_permission {
        change(
            store,
            AuthChange::RoleRevokePermission {
                role: r.role.clone(),
                key: r.key.clone(),
                range_end: r.range_end.clone(),
            },
        )
        .map(|()| AuthResponse::RoleRevokePermission(Default::default()))
    } else if let Some(r) = &req.auth_user_get {
        // A user may read its own record without the root role.
        match store.check_admin(user) {
            Err(e) if r.name != user => Err(e),
            _ => match store.user(&r.name) {
                None => Err(EtcdError::UserNotFound),
                Some(u) => Ok(AuthResponse::UserGet(AuthUserGetResponse {
                    header: None,
                    roles: u.roles.clone(),
                })),
            },
        }
    } else if let Some(r) = &req.auth_role_get {
        // A user may read the roles it holds without the root role.
        match store.check_admin(user) {
            Err(e) if !store.has_role(user, &r.role) => Err(e),
            _ => match store.role(&r.role) {
                None => Err(EtcdError::RoleNotFound),
                Some(role) => Ok(AuthResponse::RoleGet(AuthRoleGetResponse {
                    header: None,
                    perm: role.key_permission.clone(),
                })),
            },
        }
    } else if req.auth_user_list.is_some() {
        Ok(AuthResponse::UserList(AuthUserListResponse {
            header: None,
            users: store.user_names(),
        }))
    } else {
        Ok(AuthResponse::RoleList(AuthRoleListResponse {
            header: None,
            roles: store.role_names(),
        }))
    };
    if result.is_err() {
        batch.ops.clear();
        tokens.clear();
    }
    Some((result, tokens))
}

/// etcd's `authStore.Authenticate` once the password was checked: the token for `name`,
/// `prefix` and the entry's raft index, as etcd's simple token provider forms it. An
/// empty prefix assigns no token: the proposing member issues a JWT itself.
fn authenticate(
    store: &AuthStore,
    name: &str,
    prefix: &str,
    entry_index: u64,
) -> Result<String, EtcdError> {
    if !store.is_enabled() {
        return Err(EtcdError::AuthNotEnabled);
    }
    let Some(user) = store.user(name) else {
        return Err(EtcdError::AuthFailed);
    };
    if user.options.as_ref().is_some_and(|o| o.no_password) {
        return Err(EtcdError::AuthFailed);
    }
    if prefix.is_empty() {
        return Ok(String::new());
    }
    Ok(format!("{prefix}.{entry_index}"))
}

/// etcd's `checkLeasePuts`: whether the user may write every key attached to `lease`
/// (it could otherwise delete them by revoking the lease).
fn check_lease_puts(
    store: &AuthStore,
    leases: &LeaseTable,
    user: &str,
    revision: u64,
    lease: i64,
) -> Result<(), EtcdError> {
    for key in leases.keys(lease).unwrap_or_default() {
        store.check(user, revision, Access::Write, &key, b"")?;
    }
    Ok(())
}

/// etcd's `checkTxnReqsPermission` for one branch. Nested txns are not looked into, as in
/// etcd 3.4.
fn check_ops(
    store: &AuthStore,
    user: &str,
    revision: u64,
    ops: &[RequestOp],
) -> Result<(), EtcdError> {
    for op in ops {
        match &op.request {
            Some(request_op::Request::RequestRange(r)) => {
                store.check(user, revision, Access::Read, &r.key, &r.range_end)?;
            }
            Some(request_op::Request::RequestPut(p)) => {
                store.check(user, revision, Access::Write, &p.key, b"")?;
            }
            Some(request_op::Request::RequestDeleteRange(d)) => {
                if d.prev_kv {
                    store.check(user, revision, Access::Read, &d.key, &d.range_end)?;
                }
                store.check(user, revision, Access::Write, &d.key, &d.range_end)?;
            }
            Some(request_op::Request::RequestTxn(_)) | None => {}
        }
    }
    Ok(())
}

/// etcd 3.4's permission checks for key-value and lease requests at apply time, with the
/// user and auth revision the request's header carries. Requests without a check pass.
/// Lease revocations the lease timer proposes on expiry (`expiry_term != 0`) are the
/// cluster's own and are not checked.
pub fn check_permission(
    store: &AuthStore,
    leases: &LeaseTable,
    req: &InternalRequest,
) -> Result<(), EtcdError> {
    if !store.is_enabled() {
        return Ok(());
    }
    let (user, revision) = auth_info(req);
    if let Some(p) = &req.put {
        store.check(user, revision, Access::Write, &p.key, b"")?;
        check_lease_puts(store, leases, user, revision, p.lease)?;
        if p.prev_kv {
            store.check(user, revision, Access::Read, &p.key, b"")?;
        }
    } else if let Some(r) = &req.range {
        store.check(user, revision, Access::Read, &r.key, &r.range_end)?;
    } else if let Some(d) = &req.delete_range {
        store.check(user, revision, Access::Write, &d.key, &d.range_end)?;
        if d.prev_kv {
            store.check(user, revision, Access::Read, &d.key, &d.range_end)?;
        }
    } else if let Some(t) = &req.txn {
        for c in &t.compare {
            store.check(user, revision, Access::Read, &c.key, &c.range_end)?;
        }
        check_ops(store, user, revision, &t.success)?;
        check_ops(store, user, revision, &t.failure)?;
    } else if let Some(r) = &req.lease_revoke {
        if req.expiry_term == 0 {
            check_lease_puts(store, leases, user, revision, r.id)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::alarm::AlarmSet;
    use crate::core::apply::Response;
    use crate::core::mvcc::Mvcc;
    use crate::core::state::StateMachine;
    use crate::pb::authpb::{permission, Permission};
    use crate::pb::detcdpb::{InternalAuthenticateRequest, RequestHeader};
    use crate::pb::etcdserverpb::{
        AuthRoleAddRequest, AuthRoleGetRequest, AuthRoleGrantPermissionRequest,
        AuthRoleRevokePermissionRequest, AuthUserAddRequest, AuthUserDeleteRequest,
        AuthUserGetRequest, AuthUserGrantRoleRequest, PutRequest, RangeRequest,
    };

    fn machine() -> StateMachine {
        StateMachine {
            mvcc: Mvcc::new(),
            leases: LeaseTable::new(2),
            alarms: AlarmSet::new(),
            auth: AuthStore::new(),
        }
    }

    fn as_user(user: &str, revision: u64, req: InternalRequest) -> InternalRequest {
        InternalRequest {
            header: Some(RequestHeader {
                id: 1,
                username: user.into(),
                auth_revision: revision,
            }),
            ..req
        }
    }

    fn run(sm: &mut StateMachine, req: InternalRequest) -> Result<Response, EtcdError> {
        sm.apply(&req, 1, 10).outcome.result
    }

    fn user_add(name: &str) -> InternalRequest {
        InternalRequest {
            auth_user_add: Some(AuthUserAddRequest {
                name: name.into(),
                hashed_password: format!("hash-of-{name}"),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn grant_role(user: &str, role: &str) -> InternalRequest {
        InternalRequest {
            auth_user_grant_role: Some(AuthUserGrantRoleRequest {
                user: user.into(),
                role: role.into(),
            }),
            ..Default::default()
        }
    }

    fn role_add(name: &str) -> InternalRequest {
        InternalRequest {
            auth_role_add: Some(AuthRoleAddRequest { name: name.into() }),
            ..Default::default()
        }
    }

    fn put(key: &str) -> InternalRequest {
        InternalRequest {
            put: Some(PutRequest {
                key: key.into(),
                value: b"v".to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// etcd's walkthrough: root with the root role, role0 with readwrite on foo, user0.
    fn walkthrough() -> StateMachine {
        let mut sm = machine();
        for req in [
            role_add("root"),
            user_add("root"),
            grant_role("root", "root"),
            role_add("role0"),
            InternalRequest {
                auth_role_grant_permission: Some(AuthRoleGrantPermissionRequest {
                    name: "role0".into(),
                    perm: Some(Permission {
                        perm_type: permission::Type::Readwrite as i32,
                        key: b"foo".to_vec(),
                        range_end: vec![],
                    }),
                }),
                ..Default::default()
            },
            user_add("user0"),
            grant_role("user0", "role0"),
            InternalRequest {
                auth_enable: Some(Default::default()),
                ..Default::default()
            },
        ] {
            run(&mut sm, req).expect("walkthrough step");
        }
        sm
    }

    #[test]
    fn permissions_are_checked_at_apply_with_the_header_revision() {
        let mut sm = walkthrough();
        let rev = sm.auth.revision();
        assert!(run(&mut sm, as_user("user0", rev, put("foo"))).is_ok());
        assert_eq!(
            run(&mut sm, as_user("user0", rev, put("other"))),
            Err(EtcdError::PermissionDenied)
        );
        assert_eq!(run(&mut sm, put("foo")), Err(EtcdError::UserEmpty));
        let range = InternalRequest {
            range: Some(RangeRequest {
                key: b"foo".to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(run(&mut sm, as_user("user0", rev, range.clone())).is_ok());
        // Admin requests need the root role.
        assert_eq!(
            run(&mut sm, as_user("user0", rev, role_add("x"))),
            Err(EtcdError::PermissionDenied)
        );
        assert_eq!(
            run(&mut sm, role_add("x")),
            Err(EtcdError::UserEmpty),
            "no user while auth is on"
        );
        // Revoking the permission raises the revision: a request authorized before is
        // stale, and one authorized after is denied.
        let revoke = InternalRequest {
            auth_role_revoke_permission: Some(AuthRoleRevokePermissionRequest {
                role: "role0".into(),
                key: b"foo".to_vec(),
                range_end: vec![],
            }),
            ..Default::default()
        };
        run(&mut sm, as_user("root", rev, revoke)).expect("root revokes");
        assert_eq!(
            run(&mut sm, as_user("user0", rev, put("foo"))),
            Err(EtcdError::AuthOldRevision)
        );
        let rev = sm.auth.revision();
        assert_eq!(
            run(&mut sm, as_user("user0", rev, range)),
            Err(EtcdError::PermissionDenied)
        );
    }

    #[test]
    fn authenticate_assigns_an_index_token_and_deletion_voids_it() {
        let mut sm = walkthrough();
        let auth = InternalRequest {
            authenticate: Some(InternalAuthenticateRequest {
                name: "user0".into(),
                simple_token: "abcdefghijklmnop".into(),
            }),
            ..Default::default()
        };
        let out = sm.apply(&auth, 1, 42);
        let Ok(Response::Auth(resp)) = out.outcome.result else {
            panic!("authenticate failed: {:?}", out.outcome.result);
        };
        let AuthResponse::Authenticate(resp) = *resp else {
            panic!("wrong response");
        };
        assert_eq!(resp.token, "abcdefghijklmnop.42");
        assert_eq!(
            out.token_changes,
            vec![TokenChange::Assign {
                token: "abcdefghijklmnop.42".into(),
                user: "user0".into()
            }]
        );
        let nobody = InternalRequest {
            authenticate: Some(InternalAuthenticateRequest {
                name: "nobody".into(),
                simple_token: "x".into(),
            }),
            ..Default::default()
        };
        assert_eq!(run(&mut sm, nobody), Err(EtcdError::AuthFailed));
        let rev = sm.auth.revision();
        let delete = InternalRequest {
            auth_user_delete: Some(AuthUserDeleteRequest {
                name: "user0".into(),
            }),
            ..Default::default()
        };
        let out = sm.apply(&as_user("root", rev, delete), 1, 43);
        assert!(out.outcome.result.is_ok());
        assert!(
            !out.outcome.batch.ops.is_empty(),
            "the deletion is persisted"
        );
        assert_eq!(
            out.token_changes,
            vec![TokenChange::InvalidateUser("user0".into())]
        );
    }

    #[test]
    fn users_read_their_own_record_and_roles() {
        let mut sm = walkthrough();
        let rev = sm.auth.revision();
        let get_user = |name: &str| InternalRequest {
            auth_user_get: Some(AuthUserGetRequest { name: name.into() }),
            ..Default::default()
        };
        let get_role = |role: &str| InternalRequest {
            auth_role_get: Some(AuthRoleGetRequest { role: role.into() }),
            ..Default::default()
        };
        assert!(run(&mut sm, as_user("user0", rev, get_user("user0"))).is_ok());
        assert_eq!(
            run(&mut sm, as_user("user0", rev, get_user("root"))),
            Err(EtcdError::PermissionDenied)
        );
        assert!(run(&mut sm, as_user("user0", rev, get_role("role0"))).is_ok());
        assert_eq!(
            run(&mut sm, as_user("user0", rev, get_role("root"))),
            Err(EtcdError::PermissionDenied)
        );
        assert!(run(&mut sm, as_user("root", rev, get_role("role0"))).is_ok());
    }
}
