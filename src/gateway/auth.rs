//! The Auth service: enabling auth, users, roles, permissions and Authenticate.
//!
//! Every request goes through raft, as in etcd 3.4 (reads included, so they see every
//! change committed before them), with the caller's user in the header: the apply step
//! decides whether the caller may make it. Passwords are hashed here, once, before the
//! request is proposed, so every member stores the same hash and the log holds no
//! password. Authenticate checks the password here and proposes only the token to assign.

use tonic::{Request, Response, Status};

use super::{reply, Handle};
use crate::core::apply::Response as Applied;
use crate::core::auth_apply::AuthResponse;
use crate::core::jwt::TokenProvider;
use crate::core::token::simple_token_prefix;
use crate::error::EtcdError;
use crate::pb::detcdpb::{InternalAuthenticateRequest, InternalRequest};
use crate::pb::etcdserverpb::auth_server::Auth;
use crate::pb::etcdserverpb::*;
use crate::rt;

/// The Auth service.
pub struct AuthService {
    handle: Handle,
}

impl AuthService {
    /// Builds the service over the actors' handle.
    pub fn new(handle: Handle) -> AuthService {
        AuthService { handle }
    }

    /// Proposes `request` for the caller and returns the auth answer.
    async fn run(
        &self,
        md: &tonic::metadata::MetadataMap,
        request: InternalRequest,
    ) -> Result<AuthResponse, EtcdError> {
        self.handle.refuse_if_learner()?;
        match self.handle.propose_authed(md, request).await? {
            Applied::Auth(r) => Ok(*r),
            _ => Err(EtcdError::Internal(
                "apply returned an unexpected response to an auth request".into(),
            )),
        }
    }
}

/// A bcrypt hash of `password` at `cost`, salted from the runtime's random source (so
/// simulations are reproducible), in the `$2a$` form etcd's Go bcrypt writes.
pub fn hash_password(password: &str, cost: u32) -> Result<String, EtcdError> {
    let mut salt = [0u8; 16];
    salt[..8].copy_from_slice(&rt::random_u64().to_le_bytes());
    salt[8..].copy_from_slice(&rt::random_u64().to_le_bytes());
    bcrypt::hash_with_salt(password, cost, salt)
        .map(|h| h.format_for_version(bcrypt::Version::TwoA))
        .map_err(|e| EtcdError::Internal(format!("etcdserver: hashing the password: {e}")))
}

/// A generator for RSA blinding and PSS salts, seeded from the runtime's random source
/// (the operating system's, or the simulation's seeded one).
fn token_rng() -> rand_chacha::ChaCha20Rng {
    use rand::SeedableRng;
    let mut seed = [0u8; 32];
    for chunk in seed.chunks_mut(8) {
        chunk.copy_from_slice(&rt::random_u64().to_le_bytes());
    }
    rand_chacha::ChaCha20Rng::from_seed(seed)
}

/// Whether `password` matches the stored bcrypt `hash`; a malformed hash matches nothing.
fn password_matches(password: &str, hash: &[u8]) -> bool {
    std::str::from_utf8(hash)
        .ok()
        .and_then(|h| bcrypt::verify(password, h).ok())
        .unwrap_or(false)
}

fn unexpected() -> EtcdError {
    EtcdError::Internal("apply returned an unexpected response to an auth request".into())
}

/// Unwraps the expected variant of an [`AuthResponse`], or fails with an internal error.
macro_rules! expect {
    ($result:expr, $variant:ident) => {
        match $result {
            Ok(AuthResponse::$variant(r)) => Ok(r),
            Ok(_) => Err(unexpected()),
            Err(e) => Err(e),
        }
    };
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        req: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        let (md, _, r) = req.into_parts();
        let request = InternalRequest {
            auth_enable: Some(r),
            ..Default::default()
        };
        reply(expect!(self.run(&md, request).await, Enable))
    }

    async fn auth_disable(
        &self,
        req: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        let (md, _, r) = req.into_parts();
        let request = InternalRequest {
            auth_disable: Some(r),
            ..Default::default()
        };
        reply(expect!(self.run(&md, request).await, Disable))
    }

    async fn auth_status(
        &self,
        _req: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        Err(super::unimplemented("Auth.AuthStatus (etcd 3.5)"))
    }

    async fn authenticate(
        &self,
        req: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let r = req.into_inner();
        let result = async {
            self.handle.refuse_if_learner()?;
            // As etcd: a linearizable barrier first, so the password is checked against
            // every change committed before the request.
            self.handle
                .range(RangeRequest {
                    key: vec![0],
                    limit: 1,
                    count_only: true,
                    ..Default::default()
                })
                .await?;
            for _ in 0..3 {
                let store = self.handle.auth_store();
                if !store.is_enabled() {
                    return Err(EtcdError::AuthNotEnabled);
                }
                let checked_at_revision = store.revision();
                let Some(user) = store.user(&r.name) else {
                    return Err(EtcdError::AuthFailed);
                };
                // etcd's `CheckPassword` has an error of its own for users without a
                // password, which gRPC sends as Unknown.
                if user.options.as_ref().is_some_and(|o| o.no_password) {
                    return Err(EtcdError::Unknown(
                        "auth: authentication failed, password was given for no password user"
                            .into(),
                    ));
                }
                if !password_matches(&r.password, &user.password) {
                    return Err(EtcdError::AuthFailed);
                }
                // As etcd: only simple tokens have a prefix; an empty one tells the apply
                // step that this member issues the token itself.
                let prefix = match &*self.handle.token_provider {
                    TokenProvider::Simple => simple_token_prefix(rt::random_u64),
                    TokenProvider::Jwt(_) | TokenProvider::Nop => String::new(),
                };
                let request = InternalRequest {
                    authenticate: Some(InternalAuthenticateRequest {
                        name: r.name.clone(),
                        simple_token: prefix,
                    }),
                    ..Default::default()
                };
                let resp = match self.handle.propose(request).await? {
                    Applied::Auth(a) => match *a {
                        AuthResponse::Authenticate(resp) => resp,
                        _ => return Err(unexpected()),
                    },
                    _ => return Err(unexpected()),
                };
                // A password change committed between the check and the assignment
                // would make the token stale: check again, as etcd does.
                if self.handle.auth_store().revision() == checked_at_revision {
                    // The revision did not move between the check and now, so it is the
                    // one the entry was applied at: the revision etcd signs into a JWT.
                    return match &*self.handle.token_provider {
                        TokenProvider::Simple => Ok(resp),
                        TokenProvider::Jwt(jwt) => {
                            let now_ms = i64::try_from(rt::unix_time_ms()).unwrap_or(i64::MAX);
                            let token = jwt
                                .sign(&r.name, checked_at_revision, now_ms, &mut token_rng())
                                .map_err(EtcdError::Unknown)?;
                            Ok(AuthenticateResponse { token, ..resp })
                        }
                        TokenProvider::Nop => Err(EtcdError::AuthFailed),
                    };
                }
            }
            Err(EtcdError::AuthFailed)
        }
        .await;
        reply(result)
    }

    async fn user_add(
        &self,
        req: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        let (md, _, mut r) = req.into_parts();
        let result = async {
            if !r.options.as_ref().is_some_and(|o| o.no_password) {
                r.hashed_password = hash_password(&r.password, self.handle.bcrypt_cost)?;
            }
            r.password.clear();
            let request = InternalRequest {
                auth_user_add: Some(r),
                ..Default::default()
            };
            expect!(self.run(&md, request).await, UserAdd)
        }
        .await;
        reply(result)
    }

    async fn user_get(
        &self,
        req: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        let (md, _, r) = req.into_parts();
        let request = InternalRequest {
            auth_user_get: Some(r),
            ..Default::default()
        };
        reply(expect!(self.run(&md, request).await, UserGet))
    }

    async fn user_list(
        &self,
        req: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        let (md, _, r) = req.into_parts();
        let request = InternalRequest {
            auth_user_list: Some(r),
            ..Default::default()
        };
        reply(expect!(self.run(&md, request).await, UserList))
    }

    async fn user_delete(
        &self,
        req: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        let (md, _, r) = req.into_parts();
        let request = InternalRequest {
            auth_user_delete: Some(r),
            ..Default::default()
        };
        reply(expect!(self.run(&md, request).await, UserDelete))
    }

    async fn user_change_password(
        &self,
        req: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        let (md, _, mut r) = req.into_parts();
        let result = async {
            r.hashed_password = hash_password(&r.password, self.handle.bcrypt_cost)?;
            r.password.clear();
            let request = InternalRequest {
                auth_user_change_password: Some(r),
                ..Default::default()
            };
            expect!(self.run(&md, request).await, UserChangePassword)
        }
        .await;
        reply(result)
    }

    async fn user_grant_role(
        &self,
        req: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        let (md, _, r) = req.into_parts();
        let request = InternalRequest {
            auth_user_grant_role: Some(r),
            ..Default::default()
        };
        reply(expect!(self.run(&md, request).await, UserGrantRole))
    }

    async fn user_revoke_role(
        &self,
        req: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        let (md, _, r) = req.into_parts();
        let request = InternalRequest {
            auth_user_revoke_role: Some(r),
            ..Default::default()
        };
        reply(expect!(self.run(&md, request).await, UserRevokeRole))
    }

    async fn role_add(
        &self,
        req: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        let (md, _, r) = req.into_parts();
        let request = InternalRequest {
            auth_role_add: Some(r),
            ..Default::default()
        };
        reply(expect!(self.run(&md, request).await, RoleAdd))
    }

    async fn role_get(
        &self,
        req: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        let (md, _, r) = req.into_parts();
        let request = InternalRequest {
            auth_role_get: Some(r),
            ..Default::default()
        };
        reply(expect!(self.run(&md, request).await, RoleGet))
    }

    async fn role_list(
        &self,
        req: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        let (md, _, r) = req.into_parts();
        let request = InternalRequest {
            auth_role_list: Some(r),
            ..Default::default()
        };
        reply(expect!(self.run(&md, request).await, RoleList))
    }

    async fn role_delete(
        &self,
        req: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        let (md, _, r) = req.into_parts();
        let request = InternalRequest {
            auth_role_delete: Some(r),
            ..Default::default()
        };
        reply(expect!(self.run(&md, request).await, RoleDelete))
    }

    async fn role_grant_permission(
        &self,
        req: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        let (md, _, r) = req.into_parts();
        let request = InternalRequest {
            auth_role_grant_permission: Some(r),
            ..Default::default()
        };
        reply(expect!(self.run(&md, request).await, RoleGrantPermission))
    }

    async fn role_revoke_permission(
        &self,
        req: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        let (md, _, r) = req.into_parts();
        let request = InternalRequest {
            auth_role_revoke_permission: Some(r),
            ..Default::default()
        };
        reply(expect!(self.run(&md, request).await, RoleRevokePermission))
    }
}
