//! The replicated auth store, as etcd 3.4's `auth/store.go` keeps it: whether auth is
//! enabled, the auth revision, users and roles with their key permissions, and the
//! permission check every request goes through.
//!
//! Pure and deterministic: requests arrive already validated and with passwords already
//! hashed (hashing salts with randomness, so it happens once, before the request is
//! proposed, as etcd 3.5 does; etcd 3.4 hashed on every member and so stored different
//! hashes on each). Every change yields the backend writes that persist it in etcd's
//! buckets and encodings (`auth`: `authEnabled`, `authRevision`; `authUsers` and
//! `authRoles`: the `authpb` records by name), so a restart and a snapshot restore
//! rebuild exactly the same store.

use std::collections::BTreeMap;

use prost::Message as _;

use crate::error::EtcdError;
use crate::pb::authpb::{permission, Permission, Role, User, UserAddOptions};
use crate::storage::backend::{Bucket, WriteBatch};

/// The name of the administrator user and role.
pub const ROOT: &str = "root";
/// etcd's key for the enabled flag in the `auth` bucket.
pub const AUTH_ENABLED_KEY: &[u8] = b"authEnabled";
/// etcd's key for the auth revision in the `auth` bucket.
pub const AUTH_REVISION_KEY: &[u8] = b"authRevision";

/// A change to the auth store (the write half of etcd's Auth service).
#[derive(Debug, Clone, PartialEq)]
pub enum AuthChange {
    /// AuthEnable.
    Enable,
    /// AuthDisable.
    Disable,
    /// UserAdd, with the password already hashed (empty with `no_password`).
    UserAdd {
        /// The user.
        name: String,
        /// The bcrypt hash of the password.
        password_hash: Vec<u8>,
        /// The user cannot authenticate with a password (only with a client certificate).
        no_password: bool,
    },
    /// UserDelete.
    UserDelete {
        /// The user.
        name: String,
    },
    /// UserChangePassword, with the new password already hashed.
    UserChangePassword {
        /// The user.
        name: String,
        /// The bcrypt hash of the new password.
        password_hash: Vec<u8>,
    },
    /// UserGrantRole.
    UserGrantRole {
        /// The user.
        user: String,
        /// The role.
        role: String,
    },
    /// UserRevokeRole.
    UserRevokeRole {
        /// The user.
        name: String,
        /// The role.
        role: String,
    },
    /// RoleAdd.
    RoleAdd {
        /// The role.
        name: String,
    },
    /// RoleDelete.
    RoleDelete {
        /// The role.
        role: String,
    },
    /// RoleGrantPermission.
    RoleGrantPermission {
        /// The role.
        name: String,
        /// The permission (an existing one on the same key and range end is replaced).
        perm: Permission,
    },
    /// RoleRevokePermission.
    RoleRevokePermission {
        /// The role.
        role: String,
        /// The key of the permission.
        key: Vec<u8>,
        /// The range end of the permission.
        range_end: Vec<u8>,
    },
}

/// What a request needs on a key range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reading (Range, Watch, txn compares and gets).
    Read,
    /// Writing (Put, DeleteRange, txn puts and deletes).
    Write,
}

/// The auth store (see the module docs).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuthStore {
    enabled: bool,
    revision: u64,
    users: BTreeMap<String, User>,
    roles: BTreeMap<String, Role>,
}

fn name_of(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl AuthStore {
    /// An empty, disabled store at revision 0.
    pub fn new() -> AuthStore {
        AuthStore::default()
    }

    /// Rebuilds the store from its three buckets.
    pub fn restore(
        auth: Vec<(Vec<u8>, Vec<u8>)>,
        users: Vec<(Vec<u8>, Vec<u8>)>,
        roles: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<AuthStore, String> {
        let mut store = AuthStore::new();
        for (k, v) in auth {
            if k == AUTH_ENABLED_KEY {
                store.enabled = v.first() == Some(&1);
            } else if k == AUTH_REVISION_KEY {
                let b: [u8; 8] = v
                    .as_slice()
                    .try_into()
                    .map_err(|_| "auth: corrupt authRevision".to_string())?;
                store.revision = u64::from_be_bytes(b);
            }
        }
        for (k, v) in users {
            let user = User::decode(&v[..])
                .map_err(|e| format!("auth: corrupt user {}: {e}", name_of(&k)))?;
            store.users.insert(name_of(&user.name), user);
        }
        for (k, v) in roles {
            let role = Role::decode(&v[..])
                .map_err(|e| format!("auth: corrupt role {}: {e}", name_of(&k)))?;
            store.roles.insert(name_of(&role.name), role);
        }
        Ok(store)
    }

    /// Whether auth is enabled.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// The auth revision: raised by every change, so a request checked against older
    /// permissions can be told apart.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// A user, if it exists.
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    /// Every user name, sorted.
    pub fn user_names(&self) -> Vec<String> {
        self.users.keys().cloned().collect()
    }

    /// A role, if it exists.
    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.get(name)
    }

    /// Every role name, sorted.
    pub fn role_names(&self) -> Vec<String> {
        self.roles.keys().cloned().collect()
    }

    /// Whether `user` holds the root role.
    pub fn has_root_role(&self, user: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.roles.iter().any(|r| r == ROOT))
    }

    fn put_user(&self, batch: &mut WriteBatch, user: &User) {
        batch.put(Bucket::AuthUsers, user.name.clone(), user.encode_to_vec());
    }

    fn put_role(&self, batch: &mut WriteBatch, role: &Role) {
        batch.put(Bucket::AuthRoles, role.name.clone(), role.encode_to_vec());
    }

    fn bump(&mut self, batch: &mut WriteBatch) {
        self.revision += 1;
        batch.put(
            Bucket::Auth,
            AUTH_REVISION_KEY.to_vec(),
            self.revision.to_be_bytes().to_vec(),
        );
    }

    /// Applies a change, adding the writes that persist it to `batch`. Errors are etcd's
    /// and change nothing. Returns whether the store changed (a grant of a role the user
    /// already has, for example, succeeds without a change, as in etcd).
    pub fn apply(
        &mut self,
        change: &AuthChange,
        batch: &mut WriteBatch,
    ) -> Result<bool, EtcdError> {
        match change {
            AuthChange::Enable => {
                if self.enabled {
                    return Ok(false);
                }
                let Some(root) = self.users.get(ROOT) else {
                    return Err(EtcdError::RootUserNotExist);
                };
                if !root.roles.iter().any(|r| r == ROOT) {
                    return Err(EtcdError::RootRoleNotExist);
                }
                self.enabled = true;
                batch.put(Bucket::Auth, AUTH_ENABLED_KEY.to_vec(), vec![1]);
            }
            AuthChange::Disable => {
                if !self.enabled {
                    return Ok(false);
                }
                self.enabled = false;
                batch.put(Bucket::Auth, AUTH_ENABLED_KEY.to_vec(), vec![0]);
            }
            AuthChange::UserAdd {
                name,
                password_hash,
                no_password,
            } => {
                if name.is_empty() {
                    return Err(EtcdError::UserEmpty);
                }
                if self.users.contains_key(name) {
                    return Err(EtcdError::UserAlreadyExist);
                }
                let user = User {
                    name: name.as_bytes().to_vec(),
                    password: if *no_password {
                        Vec::new()
                    } else {
                        password_hash.clone()
                    },
                    roles: Vec::new(),
                    options: Some(UserAddOptions {
                        no_password: *no_password,
                    }),
                };
                self.put_user(batch, &user);
                self.users.insert(name.clone(), user);
            }
            AuthChange::UserDelete { name } => {
                if self.enabled && name == ROOT {
                    return Err(EtcdError::InvalidAuthMgmt);
                }
                if self.users.remove(name).is_none() {
                    return Err(EtcdError::UserNotFound);
                }
                batch.delete(Bucket::AuthUsers, name.as_bytes().to_vec());
            }
            AuthChange::UserChangePassword {
                name,
                password_hash,
            } => {
                let Some(user) = self.users.get_mut(name) else {
                    return Err(EtcdError::UserNotFound);
                };
                user.password = password_hash.clone();
                let user = user.clone();
                self.put_user(batch, &user);
            }
            AuthChange::UserGrantRole { user, role } => {
                if !self.users.contains_key(user) {
                    return Err(EtcdError::UserNotFound);
                }
                if role != ROOT && !self.roles.contains_key(role) {
                    return Err(EtcdError::RoleNotFound);
                }
                let u = self.users.get_mut(user).expect("checked above");
                match u.roles.binary_search(role) {
                    Ok(_) => return Ok(false),
                    Err(at) => u.roles.insert(at, role.clone()),
                }
                let u = u.clone();
                self.put_user(batch, &u);
            }
            AuthChange::UserRevokeRole { name, role } => {
                if self.enabled && name == ROOT && role == ROOT {
                    return Err(EtcdError::InvalidAuthMgmt);
                }
                let Some(u) = self.users.get_mut(name) else {
                    return Err(EtcdError::UserNotFound);
                };
                let Some(at) = u.roles.iter().position(|r| r == role) else {
                    return Err(EtcdError::RoleNotGranted);
                };
                u.roles.remove(at);
                let u = u.clone();
                self.put_user(batch, &u);
            }
            AuthChange::RoleAdd { name } => {
                if name.is_empty() {
                    return Err(EtcdError::RoleEmpty);
                }
                if self.roles.contains_key(name) {
                    return Err(EtcdError::RoleAlreadyExist);
                }
                let role = Role {
                    name: name.as_bytes().to_vec(),
                    key_permission: Vec::new(),
                };
                self.put_role(batch, &role);
                self.roles.insert(name.clone(), role);
            }
            AuthChange::RoleDelete { role } => {
                if self.enabled && role == ROOT {
                    return Err(EtcdError::InvalidAuthMgmt);
                }
                if self.roles.remove(role).is_none() {
                    return Err(EtcdError::RoleNotFound);
                }
                batch.delete(Bucket::AuthRoles, role.as_bytes().to_vec());
                // The role is revoked from every user that had it, in the same change.
                let holders: Vec<String> = self
                    .users
                    .iter()
                    .filter(|(_, u)| u.roles.iter().any(|r| r == role))
                    .map(|(n, _)| n.clone())
                    .collect();
                for name in holders {
                    if let Some(u) = self.users.get_mut(&name) {
                        u.roles.retain(|r| r != role);
                        let u = u.clone();
                        self.put_user(batch, &u);
                    }
                }
            }
            AuthChange::RoleGrantPermission { name, perm } => {
                let Some(role) = self.roles.get_mut(name) else {
                    return Err(EtcdError::RoleNotFound);
                };
                // One permission per key and range end, kept sorted by key as etcd keeps
                // them; granting again replaces the type.
                match role
                    .key_permission
                    .iter_mut()
                    .find(|p| p.key == perm.key && p.range_end == perm.range_end)
                {
                    Some(existing) => existing.perm_type = perm.perm_type,
                    None => {
                        let at = role
                            .key_permission
                            .partition_point(|p| p.key.as_slice() <= perm.key.as_slice());
                        role.key_permission.insert(at, perm.clone());
                    }
                }
                let role = role.clone();
                self.put_role(batch, &role);
            }
            AuthChange::RoleRevokePermission {
                role,
                key,
                range_end,
            } => {
                let Some(r) = self.roles.get_mut(role) else {
                    return Err(EtcdError::RoleNotFound);
                };
                let Some(at) = r
                    .key_permission
                    .iter()
                    .position(|p| &p.key == key && &p.range_end == range_end)
                else {
                    return Err(EtcdError::PermissionNotGranted);
                };
                r.key_permission.remove(at);
                let r = r.clone();
                self.put_role(batch, &r);
            }
        }
        self.bump(batch);
        Ok(true)
    }

    /// etcd's permission check for `user` doing `access` on `[key, range_end)` (a single
    /// key when `range_end` is empty; from `key` on when it is `\0`), for a request
    /// authorized at auth revision `checked_at_revision`. Always allowed while auth is
    /// disabled; the root role may do anything.
    pub fn check(
        &self,
        user: &str,
        checked_at_revision: u64,
        access: Access,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), EtcdError> {
        if !self.enabled {
            return Ok(());
        }
        // As etcd: only a request without a token has revision 0. A JWT names both its
        // user and its revision, so a signed token with an empty user gets past this
        // check and is then denied like any unknown user.
        if checked_at_revision == 0 {
            return Err(EtcdError::UserEmpty);
        }
        if checked_at_revision < self.revision {
            return Err(EtcdError::AuthOldRevision);
        }
        let Some(u) = self.users.get(user) else {
            return Err(EtcdError::PermissionDenied);
        };
        if u.roles.iter().any(|r| r == ROOT) {
            return Ok(());
        }
        let mut permitted: Vec<Interval> = Vec::new();
        for role in u.roles.iter().filter_map(|r| self.roles.get(r)) {
            for p in &role.key_permission {
                let allows = matches!(
                    (access, p.perm_type()),
                    (_, permission::Type::Readwrite)
                        | (Access::Read, permission::Type::Read)
                        | (Access::Write, permission::Type::Write)
                );
                if allows {
                    permitted.push(Interval::of(&p.key, &p.range_end));
                }
            }
        }
        if covers(permitted, &Interval::of(key, range_end)) {
            Ok(())
        } else {
            Err(EtcdError::PermissionDenied)
        }
    }

    /// etcd 3.4's `IsAdminPermitted`: whether `user` may administer auth and the cluster
    /// (it holds the root role). Always allowed while auth is disabled. As in etcd, the
    /// auth revision is not compared: admin rights are looked up afresh at apply time.
    pub fn check_admin(&self, user: &str) -> Result<(), EtcdError> {
        if !self.enabled {
            return Ok(());
        }
        if user.is_empty() {
            return Err(EtcdError::UserEmpty);
        }
        let Some(u) = self.users.get(user) else {
            return Err(EtcdError::UserNotFound);
        };
        if u.roles.iter().any(|r| r == ROOT) {
            Ok(())
        } else {
            Err(EtcdError::PermissionDenied)
        }
    }

    /// Whether `user` holds `role` (etcd's `HasRole`, which lets a user read its own roles).
    pub fn has_role(&self, user: &str, role: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.roles.iter().any(|r| r == role))
    }
}

/// A key interval `[start, end)`; `end == None` is unbounded.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Interval {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl Interval {
    /// The interval a key and range end name, as etcd reads them: a single key when the
    /// end is empty, everything from the key on when the end is `\0`.
    fn of(key: &[u8], range_end: &[u8]) -> Interval {
        if range_end.is_empty() {
            let mut end = key.to_vec();
            end.push(0);
            Interval {
                start: key.to_vec(),
                end: Some(end),
            }
        } else if range_end == [0] {
            Interval {
                start: key.to_vec(),
                end: None,
            }
        } else {
            Interval {
                start: key.to_vec(),
                end: Some(range_end.to_vec()),
            }
        }
    }
}

/// Whether the union of `permitted` contains all of `wanted`. An empty wanted interval
/// (its end at or before its start) is covered only if its start is, as etcd checks a
/// range request by its key in that case.
fn covers(mut permitted: Vec<Interval>, wanted: &Interval) -> bool {
    permitted.sort_by(|a, b| a.start.cmp(&b.start));
    let empty = matches!(&wanted.end, Some(e) if e.as_slice() <= wanted.start.as_slice());
    let wanted_end = if empty {
        let mut e = wanted.start.clone();
        e.push(0);
        Some(e)
    } else {
        wanted.end.clone()
    };
    // Walk the sorted intervals, extending how far from `wanted.start` is covered.
    let mut reach: Vec<u8> = wanted.start.clone();
    for p in permitted {
        if p.start.as_slice() > reach.as_slice() {
            break;
        }
        match p.end {
            None => return true,
            Some(end) => {
                if end > reach {
                    reach = end;
                }
            }
        }
        if let Some(we) = &wanted_end {
            if reach.as_slice() >= we.as_slice() {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with_user0() -> AuthStore {
        let mut s = AuthStore::new();
        let mut b = WriteBatch::new();
        for change in [
            AuthChange::RoleAdd { name: ROOT.into() },
            AuthChange::UserAdd {
                name: ROOT.into(),
                password_hash: b"h".to_vec(),
                no_password: false,
            },
            AuthChange::UserGrantRole {
                user: ROOT.into(),
                role: ROOT.into(),
            },
            AuthChange::RoleAdd {
                name: "role0".into(),
            },
            AuthChange::RoleGrantPermission {
                name: "role0".into(),
                perm: Permission {
                    perm_type: permission::Type::Readwrite as i32,
                    key: b"foo".to_vec(),
                    range_end: Vec::new(),
                },
            },
            AuthChange::RoleGrantPermission {
                name: "role0".into(),
                perm: Permission {
                    perm_type: permission::Type::Read as i32,
                    key: b"r/".to_vec(),
                    range_end: b"r0".to_vec(),
                },
            },
            AuthChange::UserAdd {
                name: "user0".into(),
                password_hash: b"h0".to_vec(),
                no_password: false,
            },
            AuthChange::UserGrantRole {
                user: "user0".into(),
                role: "role0".into(),
            },
            AuthChange::Enable,
        ] {
            s.apply(&change, &mut b).unwrap();
        }
        s
    }

    #[test]
    fn enable_needs_a_root_user_with_the_root_role() {
        let mut s = AuthStore::new();
        let mut b = WriteBatch::new();
        assert_eq!(
            s.apply(&AuthChange::Enable, &mut b),
            Err(EtcdError::RootUserNotExist)
        );
        s.apply(
            &AuthChange::UserAdd {
                name: ROOT.into(),
                password_hash: b"h".to_vec(),
                no_password: false,
            },
            &mut b,
        )
        .unwrap();
        assert_eq!(
            s.apply(&AuthChange::Enable, &mut b),
            Err(EtcdError::RootRoleNotExist)
        );
        // The root role need not exist as a role to be granted (etcd's exception).
        s.apply(
            &AuthChange::UserGrantRole {
                user: ROOT.into(),
                role: ROOT.into(),
            },
            &mut b,
        )
        .unwrap();
        assert_eq!(s.apply(&AuthChange::Enable, &mut b), Ok(true));
        assert!(s.is_enabled());
        assert_eq!(s.apply(&AuthChange::Enable, &mut b), Ok(false));
    }

    #[test]
    fn permissions_follow_roles_and_ranges() {
        let s = store_with_user0();
        let rev = s.revision();
        let ok = |a, k: &[u8], e: &[u8]| s.check("user0", rev, a, k, e);
        assert_eq!(ok(Access::Read, b"foo", b""), Ok(()));
        assert_eq!(ok(Access::Write, b"foo", b""), Ok(()));
        assert_eq!(
            ok(Access::Read, b"foo1", b""),
            Err(EtcdError::PermissionDenied)
        );
        assert_eq!(ok(Access::Read, b"r/a", b"r/z"), Ok(()));
        assert_eq!(ok(Access::Read, b"r/", b"r0"), Ok(()));
        assert_eq!(
            ok(Access::Read, b"r/", b"r1"),
            Err(EtcdError::PermissionDenied)
        );
        assert_eq!(
            ok(Access::Write, b"r/a", b""),
            Err(EtcdError::PermissionDenied)
        );
        assert_eq!(
            ok(Access::Read, b"r/", b"\0"),
            Err(EtcdError::PermissionDenied)
        );
        // Root may do anything; strangers nothing; stale checks are refused.
        assert_eq!(s.check(ROOT, rev, Access::Write, b"x", b"\0"), Ok(()));
        assert_eq!(
            s.check("nobody", rev, Access::Read, b"foo", b""),
            Err(EtcdError::PermissionDenied)
        );
        assert_eq!(
            s.check("user0", rev - 1, Access::Read, b"foo", b""),
            Err(EtcdError::AuthOldRevision)
        );
        assert_eq!(s.check_admin(ROOT), Ok(()));
        assert_eq!(s.check_admin("user0"), Err(EtcdError::PermissionDenied));
    }

    #[test]
    fn adjacent_and_overlapping_permissions_combine() {
        let permitted = vec![
            Interval::of(b"a", b"c"),
            Interval::of(b"c", b"e"),
            Interval::of(b"d", b"f"),
        ];
        assert!(covers(permitted.clone(), &Interval::of(b"a", b"f")));
        assert!(covers(permitted.clone(), &Interval::of(b"b", b"")));
        assert!(!covers(permitted.clone(), &Interval::of(b"a", b"g")));
        assert!(!covers(permitted, &Interval::of(b"0", b"b")));
        assert!(covers(
            vec![Interval::of(b"k", b"\0")],
            &Interval::of(b"z", b"\0")
        ));
    }

    #[test]
    fn administrators_cannot_lock_themselves_out() {
        let mut s = store_with_user0();
        let mut b = WriteBatch::new();
        for change in [
            AuthChange::UserDelete { name: ROOT.into() },
            AuthChange::UserRevokeRole {
                name: ROOT.into(),
                role: ROOT.into(),
            },
            AuthChange::RoleDelete { role: ROOT.into() },
        ] {
            assert_eq!(s.apply(&change, &mut b), Err(EtcdError::InvalidAuthMgmt));
        }
    }

    #[test]
    fn errors_change_nothing_and_changes_bump_the_revision() {
        let mut s = store_with_user0();
        let before = s.clone();
        let mut b = WriteBatch::new();
        for (change, err) in [
            (
                AuthChange::UserAdd {
                    name: "user0".into(),
                    password_hash: vec![],
                    no_password: true,
                },
                EtcdError::UserAlreadyExist,
            ),
            (
                AuthChange::UserAdd {
                    name: String::new(),
                    password_hash: vec![],
                    no_password: true,
                },
                EtcdError::UserEmpty,
            ),
            (
                AuthChange::UserGrantRole {
                    user: "user0".into(),
                    role: "nope".into(),
                },
                EtcdError::RoleNotFound,
            ),
            (
                AuthChange::UserRevokeRole {
                    name: "user0".into(),
                    role: ROOT.into(),
                },
                EtcdError::RoleNotGranted,
            ),
            (
                AuthChange::RoleRevokePermission {
                    role: "role0".into(),
                    key: b"bar".to_vec(),
                    range_end: vec![],
                },
                EtcdError::PermissionNotGranted,
            ),
            (
                AuthChange::RoleAdd {
                    name: String::new(),
                },
                EtcdError::RoleEmpty,
            ),
            (
                AuthChange::UserDelete {
                    name: "ghost".into(),
                },
                EtcdError::UserNotFound,
            ),
        ] {
            assert_eq!(s.apply(&change, &mut b), Err(err));
        }
        assert_eq!(s, before);
        assert!(b.is_empty());
        let rev = s.revision();
        s.apply(
            &AuthChange::RoleDelete {
                role: "role0".into(),
            },
            &mut b,
        )
        .unwrap();
        assert_eq!(s.revision(), rev + 1);
        assert!(
            s.user("user0").unwrap().roles.is_empty(),
            "revoked from holders"
        );
    }

    #[test]
    fn the_buckets_restore_the_same_store() {
        let mut s = AuthStore::new();
        let mut b = WriteBatch::new();
        let mut backend = crate::storage::backend::MemBackend::new();
        use crate::storage::backend::Backend;
        for change in [
            AuthChange::RoleAdd { name: ROOT.into() },
            AuthChange::UserAdd {
                name: ROOT.into(),
                password_hash: b"h".to_vec(),
                no_password: false,
            },
            AuthChange::UserGrantRole {
                user: ROOT.into(),
                role: ROOT.into(),
            },
            AuthChange::Enable,
            AuthChange::UserAdd {
                name: "gone".into(),
                password_hash: vec![],
                no_password: true,
            },
            AuthChange::UserDelete {
                name: "gone".into(),
            },
        ] {
            s.apply(&change, &mut b).unwrap();
        }
        backend.write(&b).unwrap();
        let restored = AuthStore::restore(
            backend.scan(Bucket::Auth).unwrap(),
            backend.scan(Bucket::AuthUsers).unwrap(),
            backend.scan(Bucket::AuthRoles).unwrap(),
        )
        .unwrap();
        assert_eq!(restored, s);
    }
}
