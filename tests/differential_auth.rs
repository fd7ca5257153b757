//! Differential test with auth: one scenario of users, roles, permissions and tokens sent
//! through `etcd-client` to detcd and to the real etcd 3.4.23, comparing every outcome
//! (the response's meaningful fields, or the gRPC code and message).
//!
//! The scenario enables auth, then has an anonymous client, a user with readwrite on
//! `foo` and the prefix `p/`, a read-only user and a user without roles try every kind
//! of request: KV (ranges, puts, deletes), Txn (compares and both branches), Watch,
//! Lease (grant, revoke of leases with keys, time-to-live), Compact, Cluster, Maintenance
//! and the Auth service's admin calls. Then wrong passwords, revoked permissions and
//! roles, a changed password and a deleted user, with clients that keep their old
//! tokens, and finally auth disabled with stale tokens still sent.
//!
//! It runs twice: with simple tokens and with JWT tokens, whose stale-token answers
//! differ ("invalid auth token" versus "revision of auth store is old").

mod common;

use std::time::Duration;

use common::{within, Kind, Server};
use etcd_client::{
    AlarmAction, AlarmType, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, Error,
    GetOptions, LeaseGrantOptions, Permission, PutOptions, Txn, TxnOp, TxnOpResponse,
    UserAddOptions, WatchOptions,
};
use serde_json::{json, Value};

/// The outcome of one call: `{"ok": summary}` or `{"err": {code, message}}`.
fn outcome<T>(r: Result<T, Error>, summary: impl FnOnce(T) -> Value) -> Value {
    match r {
        Ok(v) => json!({ "ok": summary(v) }),
        Err(e) => json!({ "err": error(&e) }),
    }
}

fn error(e: &Error) -> Value {
    match e {
        Error::GRpcStatus(s) => json!({"code": s.code() as i32, "message": s.message()}),
        other => json!({ "other": other.to_string() }),
    }
}

fn kvs(kvs: &[etcd_client::KeyValue]) -> Value {
    kvs.iter()
        .map(|kv| {
            json!([
                String::from_utf8_lossy(kv.key()),
                String::from_utf8_lossy(kv.value()),
                kv.mod_revision(),
                kv.lease()
            ])
        })
        .collect()
}

fn txn_summary(r: etcd_client::TxnResponse) -> Value {
    let ops: Vec<Value> = r
        .op_responses()
        .into_iter()
        .map(|op| match op {
            TxnOpResponse::Get(g) => json!({ "get": kvs(g.kvs()) }),
            TxnOpResponse::Put(_) => json!("put"),
            TxnOpResponse::Delete(d) => json!({ "deleted": d.deleted() }),
            TxnOpResponse::Txn(_) => json!("txn"),
        })
        .collect();
    json!({ "succeeded": r.succeeded(), "ops": ops })
}

/// Connects, as `user` (name, password) when given: an error is the Authenticate error.
async fn connect(url: &str, user: Option<(&str, &str)>) -> Result<Client, Error> {
    let options = user.map(|(name, password)| ConnectOptions::new().with_user(name, password));
    within(20, "connect", Client::connect([url], options)).await
}

/// The first response of a watch on `key` (with `prefix`): created, or canceled and why.
async fn watch(c: &mut Client, key: &str, prefix: bool) -> Value {
    let options = prefix.then(|| WatchOptions::new().with_prefix());
    let mut stream = match c.watch(key, options).await {
        Ok(s) => s,
        Err(e) => return json!({ "err": error(&e) }),
    };
    let first = tokio::time::timeout(Duration::from_secs(5), stream.message()).await;
    match first {
        Err(_) => json!("no response"),
        Ok(Err(e)) => json!({ "err": error(&e) }),
        Ok(Ok(None)) => json!("closed"),
        Ok(Ok(Some(r))) => json!({
            "watch_id": r.watch_id(),
            "created": r.created(),
            "canceled": r.canceled(),
            "cancel_reason": r.cancel_reason(),
        }),
    }
}

/// Records outcomes under labels, so a mismatch names its step.
#[derive(Default)]
struct Log(Vec<(String, Value)>);

impl Log {
    fn add(&mut self, label: impl Into<String>, v: Value) {
        self.0.push((label.into(), v));
    }
}

/// Every kind of request, by a client `who` that should have readwrite on `foo` and
/// `p/` at most; `lease_base` keeps each client's lease ids apart.
async fn every_request(
    log: &mut Log,
    who: &str,
    c: &mut Client,
    root: &mut Client,
    lease_base: i64,
) {
    let l = |what: &str| format!("{who}: {what}");
    log.add(
        l("get foo"),
        outcome(c.get("foo", None).await, |r| kvs(r.kvs())),
    );
    log.add(
        l("get foo serializable"),
        outcome(
            c.get("foo", Some(GetOptions::new().with_serializable()))
                .await,
            |r| kvs(r.kvs()),
        ),
    );
    log.add(
        l("get other"),
        outcome(c.get("other", None).await, |r| kvs(r.kvs())),
    );
    log.add(
        l("get p/ prefix"),
        outcome(
            c.get("p/", Some(GetOptions::new().with_prefix())).await,
            |r| kvs(r.kvs()),
        ),
    );
    log.add(
        l("get all"),
        outcome(
            c.get("", Some(GetOptions::new().with_all_keys())).await,
            |r| kvs(r.kvs()),
        ),
    );
    log.add(
        l("get r"),
        outcome(c.get("r", None).await, |r| kvs(r.kvs())),
    );
    log.add(
        l("put foo"),
        outcome(c.put("foo", who, None).await, |_| json!("ok")),
    );
    log.add(
        l("put foo prev_kv"),
        outcome(
            c.put("foo", who, Some(PutOptions::new().with_prev_key()))
                .await,
            |r| {
                json!(r
                    .prev_key()
                    .map(|kv| kv.value_str().unwrap_or("").to_string()))
            },
        ),
    );
    log.add(
        l("put other"),
        outcome(c.put("other", who, None).await, |_| json!("ok")),
    );
    log.add(
        l("put p/b"),
        outcome(c.put("p/b", who, None).await, |_| json!("ok")),
    );
    log.add(
        l("delete p/b"),
        outcome(c.delete("p/b", None).await, |r| json!(r.deleted())),
    );
    log.add(
        l("delete p/ prefix prev_kv"),
        outcome(
            c.delete(
                "p/zz",
                Some(DeleteOptions::new().with_prefix().with_prev_key()),
            )
            .await,
            |r| json!(r.deleted()),
        ),
    );
    log.add(
        l("delete other"),
        outcome(c.delete("other", None).await, |r| json!(r.deleted())),
    );
    // Txn: compares and both branches are checked, whichever branch runs.
    let txns = [
        (
            "txn foo only",
            Txn::new()
                .when([Compare::value("foo", CompareOp::NotEqual, "x")])
                .and_then([TxnOp::put("foo", "t", None)])
                .or_else([TxnOp::get("foo", None)]),
        ),
        (
            "txn failure branch writes other",
            Txn::new()
                .when([Compare::value("foo", CompareOp::NotEqual, "x")])
                .and_then([TxnOp::get("foo", None)])
                .or_else([TxnOp::put("other", "t", None)]),
        ),
        (
            "txn compares other",
            Txn::new()
                .when([Compare::version("other", CompareOp::Greater, 0)])
                .and_then([TxnOp::get("foo", None)]),
        ),
        (
            "txn deletes p/ prefix",
            Txn::new().and_then([TxnOp::delete(
                "p/",
                Some(DeleteOptions::new().with_prefix()),
            )]),
        ),
        (
            "txn reads all",
            Txn::new().and_then([TxnOp::get("", Some(GetOptions::new().with_all_keys()))]),
        ),
    ];
    for (name, txn) in txns {
        log.add(l(name), outcome(c.txn(txn).await, txn_summary));
    }
    log.add(l("watch foo"), watch(c, "foo", false).await);
    log.add(l("watch other"), watch(c, "other", false).await);
    log.add(l("watch p/ prefix"), watch(c, "p/", true).await);
    // Leases: granting is free; revoking needs write access to every attached key.
    let own = lease_base;
    let roots = lease_base + 1;
    log.add(
        l("lease grant"),
        outcome(
            c.lease_grant(600, Some(LeaseGrantOptions::new().with_id(own)))
                .await,
            |r| json!(r.ttl()),
        ),
    );
    log.add(
        l("put foo with lease"),
        outcome(
            c.put("foo", "leased", Some(PutOptions::new().with_lease(own)))
                .await,
            |_| json!("ok"),
        ),
    );
    log.add(
        l("lease time to live"),
        outcome(c.lease_time_to_live(own, None).await, |r| json!(r.id())),
    );
    log.add(
        l("lease revoke own"),
        outcome(c.lease_revoke(own).await, |_| json!("ok")),
    );
    root.lease_grant(600, Some(LeaseGrantOptions::new().with_id(roots)))
        .await
        .expect("root grants a lease");
    root.put("r", "2", Some(PutOptions::new().with_lease(roots)))
        .await
        .expect("root attaches r");
    log.add(
        l("lease revoke with r attached"),
        outcome(c.lease_revoke(roots).await, |_| json!("ok")),
    );
    root.lease_revoke(roots).await.ok();
    root.put("r", "2", None).await.expect("root puts r back");
    log.add(
        l("compact"),
        outcome(c.compact(2, None).await, |_| json!("ok")),
    );
    log.add(
        l("member list"),
        outcome(c.member_list().await, |r| json!(r.members().len())),
    );
    log.add(
        l("member update unknown"),
        outcome(
            c.member_update(1, ["http://127.0.0.1:1".to_string()]).await,
            |_| json!("ok"),
        ),
    );
    log.add(l("status"), outcome(c.status().await, |_| json!("ok")));
    log.add(l("hash kv"), outcome(c.hash_kv(0).await, |_| json!("ok")));
    log.add(
        l("defragment"),
        outcome(c.defragment().await, |_| json!("ok")),
    );
    log.add(
        l("alarm list"),
        outcome(
            c.alarm(AlarmAction::Get, AlarmType::None, None).await,
            |r| json!(r.alarms().len()),
        ),
    );
    log.add(
        l("move leader unknown"),
        outcome(c.move_leader(1).await, |_| json!("ok")),
    );
    let snapshot = match c.snapshot().await {
        Err(e) => json!({ "err": error(&e) }),
        Ok(mut s) => match within(10, "snapshot", s.message()).await {
            Ok(Some(_)) => json!("data"),
            Ok(None) => json!("empty"),
            Err(e) => json!({ "err": error(&e) }),
        },
    };
    log.add(l("snapshot"), snapshot);
    // The Auth service: admin calls, and reading one's own record and roles.
    log.add(
        l("user list"),
        outcome(c.user_list().await, |r| json!(r.users())),
    );
    log.add(
        l("role list"),
        outcome(c.role_list().await, |r| json!(r.roles())),
    );
    log.add(
        l("user get self"),
        outcome(c.user_get(who).await, |r| json!(r.roles())),
    );
    log.add(
        l("user get root"),
        outcome(c.user_get("root").await, |r| json!(r.roles())),
    );
    log.add(
        l("role get role0"),
        outcome(c.role_get("role0").await, |r| json!(r.permissions().len())),
    );
    log.add(
        l("role get root"),
        outcome(c.role_get("root").await, |r| json!(r.permissions().len())),
    );
    log.add(
        l("user add"),
        outcome(c.user_add("x", "y", None).await, |_| json!("ok")),
    );
    log.add(
        l("role add"),
        outcome(c.role_add("x").await, |_| json!("ok")),
    );
    log.add(
        l("grant permission"),
        outcome(
            c.role_grant_permission("role0", Permission::read_write("other"))
                .await,
            |_| json!("ok"),
        ),
    );
    log.add(
        l("auth disable"),
        outcome(c.auth_disable().await, |_| json!("ok")),
    );
}

async fn scenario(s: &Server) -> Vec<(String, Value)> {
    let url = s.client_url();
    let mut log = Log::default();
    let mut admin = connect(&url, None).await.expect("connect");
    // Enabling auth needs a root user holding the root role.
    log.add(
        "enable without root",
        outcome(admin.auth_enable().await, |_| json!("ok")),
    );
    admin
        .user_add("root", "rootpw", None)
        .await
        .expect("add root");
    log.add(
        "enable without root role",
        outcome(admin.auth_enable().await, |_| json!("ok")),
    );
    log.add(
        "grant root role before adding it",
        outcome(admin.user_grant_role("root", "root").await, |_| json!("ok")),
    );
    admin.role_add("role0").await.expect("role0");
    admin
        .role_grant_permission("role0", Permission::read_write("foo"))
        .await
        .expect("foo");
    admin
        .role_grant_permission("role0", Permission::read_write("p/").with_prefix())
        .await
        .expect("p/");
    admin.role_add("role1").await.expect("role1");
    admin
        .role_grant_permission("role1", Permission::read("r"))
        .await
        .expect("r");
    for (user, role) in [
        ("user0", Some("role0")),
        ("user1", Some("role1")),
        ("user2", None),
    ] {
        admin.user_add(user, "pw", None).await.expect("user");
        if let Some(role) = role {
            admin.user_grant_role(user, role).await.expect("grant");
        }
    }
    admin
        .user_add("nopw", "", Some(UserAddOptions::new().with_no_pwd()))
        .await
        .expect("no-password user");
    admin.user_grant_role("nopw", "role0").await.expect("grant");
    for (k, v) in [("foo", "bar"), ("other", "x"), ("p/a", "1"), ("r", "2")] {
        admin.put(k, v, None).await.expect("put");
    }
    log.add(
        "enable",
        outcome(admin.auth_enable().await, |_| json!("ok")),
    );

    let mut root = connect(&url, Some(("root", "rootpw"))).await.expect("root");
    let mut anon = connect(&url, None).await.expect("anonymous");
    every_request(&mut log, "anonymous", &mut anon, &mut root, 100).await;
    let mut user0 = connect(&url, Some(("user0", "pw"))).await.expect("user0");
    every_request(&mut log, "user0", &mut user0, &mut root, 200).await;
    let mut user1 = connect(&url, Some(("user1", "pw"))).await.expect("user1");
    every_request(&mut log, "user1", &mut user1, &mut root, 300).await;
    let mut user2 = connect(&url, Some(("user2", "pw"))).await.expect("user2");
    every_request(&mut log, "user2", &mut user2, &mut root, 400).await;
    // root may do everything, auth disable included: enable it again, anonymously.
    every_request(&mut log, "root", &mut root.clone(), &mut root, 500).await;
    log.add(
        "enable again",
        outcome(anon.auth_enable().await, |_| json!("ok")),
    );
    log.add(
        "root's token from before",
        outcome(root.get("foo", None).await, |r| kvs(r.kvs())),
    );
    let mut root = connect(&url, Some(("root", "rootpw"))).await.expect("root");

    for (name, password) in [
        ("user0", "wrong"),
        ("nobody", "pw"),
        ("nopw", ""),
        ("nopw", "x"),
    ] {
        log.add(
            format!("authenticate {name}:{password}"),
            outcome(connect(&url, Some((name, password))).await, |_| json!("ok")),
        );
    }

    // Revoking a permission: the client holding a token from before, and a new one.
    let mut user0 = connect(&url, Some(("user0", "pw"))).await.expect("user0");
    root.role_revoke_permission("role0", "foo", None)
        .await
        .expect("revoke foo");
    log.add(
        "revoked: old token get foo",
        outcome(user0.get("foo", None).await, |r| kvs(r.kvs())),
    );
    log.add(
        "revoked: old token watch foo",
        watch(&mut user0, "foo", false).await,
    );
    let mut fresh = connect(&url, Some(("user0", "pw"))).await.expect("user0");
    log.add(
        "revoked: get foo",
        outcome(fresh.get("foo", None).await, |r| kvs(r.kvs())),
    );
    log.add(
        "revoked: put foo",
        outcome(fresh.put("foo", "z", None).await, |_| json!("ok")),
    );
    log.add(
        "revoked: still p/",
        outcome(fresh.put("p/c", "z", None).await, |_| json!("ok")),
    );
    // Revoking the role from the user.
    root.user_revoke_role("user0", "role0")
        .await
        .expect("revoke role");
    log.add(
        "role revoked: old token put p/c",
        outcome(fresh.put("p/c", "y", None).await, |_| json!("ok")),
    );
    let mut fresh = connect(&url, Some(("user0", "pw"))).await.expect("user0");
    log.add(
        "role revoked: put p/c",
        outcome(fresh.put("p/c", "y", None).await, |_| json!("ok")),
    );

    // A changed password.
    root.user_change_password("user1", "pw2")
        .await
        .expect("change password");
    log.add(
        "password changed: old token get r",
        outcome(user1.get("r", None).await, |r| kvs(r.kvs())),
    );
    log.add(
        "password changed: old password",
        outcome(connect(&url, Some(("user1", "pw"))).await, |_| json!("ok")),
    );
    let mut user1 = connect(&url, Some(("user1", "pw2"))).await.expect("user1");
    log.add(
        "password changed: get r",
        outcome(user1.get("r", None).await, |r| kvs(r.kvs())),
    );

    // A deleted user's token.
    root.user_delete("user1").await.expect("delete user1");
    log.add(
        "deleted: get r",
        outcome(user1.get("r", None).await, |r| kvs(r.kvs())),
    );
    log.add(
        "deleted: put r",
        outcome(user1.put("r", "d", None).await, |_| json!("ok")),
    );
    log.add("deleted: watch r", watch(&mut user1, "r", false).await);
    log.add(
        "deleted: hash kv",
        outcome(user1.hash_kv(0).await, |_| json!("ok")),
    );
    log.add(
        "deleted: user get self",
        outcome(user1.user_get("user1").await, |r| json!(r.roles())),
    );
    log.add(
        "deleted: authenticate",
        outcome(connect(&url, Some(("user1", "pw2"))).await, |_| json!("ok")),
    );

    // Auth disabled: anonymous requests pass; what of clients still sending tokens?
    let mut root = connect(&url, Some(("root", "rootpw"))).await.expect("root");
    log.add(
        "disable",
        outcome(root.auth_disable().await, |_| json!("ok")),
    );
    log.add(
        "disabled: anonymous get foo",
        outcome(anon.get("foo", None).await, |r| kvs(r.kvs())),
    );
    log.add(
        "disabled: old token get foo",
        outcome(user2.get("foo", None).await, |r| kvs(r.kvs())),
    );
    log.add(
        "disabled: deleted user's token get r",
        outcome(user1.get("r", None).await, |r| kvs(r.kvs())),
    );
    log.add(
        "disabled: authenticate",
        outcome(connect(&url, Some(("user2", "pw"))).await, |_| json!("ok")),
    );
    log.0
}

/// Runs the scenario on detcd and on etcd with the same flags and compares step by step.
async fn compare(args: &[&str]) {
    let detcd = Server::start_kind_with_args(Kind::Detcd, args);
    let got = scenario(&detcd).await;
    drop(detcd);
    let etcd = Server::start_kind_with_args(Kind::Etcd, args);
    let want = scenario(&etcd).await;
    assert_eq!(got.len(), want.len(), "both ran the whole scenario");
    let mut mismatches = Vec::new();
    for ((label, g), (_, w)) in got.iter().zip(&want) {
        if g != w {
            mismatches.push(format!("{label}:\n  detcd: {g}\n  etcd:  {w}"));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} steps differ:\n{}",
        mismatches.len(),
        got.len(),
        mismatches.join("\n")
    );
}

#[tokio::test]
async fn auth_with_simple_tokens_matches_etcd() {
    compare(&["--bcrypt-cost", "4"]).await;
}

#[tokio::test]
async fn auth_with_jwt_tokens_matches_etcd() {
    let dir = tempfile::tempdir().expect("key dir");
    let key = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let path = dir.path().join("ec.pem");
    {
        use p256::pkcs8::{EncodePrivateKey, LineEnding};
        std::fs::write(&path, key.to_pkcs8_pem(LineEnding::LF).expect("PEM")).expect("write");
    }
    let options = format!("jwt,priv-key={},sign-method=ES256", path.display());
    compare(&["--bcrypt-cost", "4", "--auth-token", &options]).await;
}
