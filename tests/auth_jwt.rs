//! JWT auth tokens (`--auth-token jwt,...`), driven by the real `etcdctl` 3.4.23 and by raw
//! gRPC calls that send chosen tokens: etcd's walkthrough with RS256 tokens, permission
//! revocation taking effect, a token used across requests and refused after its TTL,
//! tampered and foreign-key tokens refused, tokens made stale by a password change or a
//! deleted user, verify-only members, and the start-up errors for bad options.
//!
//! Keys are generated here, in Rust, at test time. Expected strings were recorded from
//! the real etcd 3.4.23 (`DETCD_TEST_SERVER=etcd` runs the same tests against it).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::{Kind, Server};
use detcd::core::jwt::{token_provider, JwtTokens, TokenProvider};
use detcd::pb::etcdserverpb::auth_client::AuthClient;
use detcd::pb::etcdserverpb::kv_client::KvClient;
use detcd::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use detcd::pb::etcdserverpb::{AuthenticateRequest, HashRequest, PutRequest, RangeRequest};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use tonic::transport::Channel;

const ROOT: &str = "root:rootpw";
const USER0: &str = "user0:pw0";
/// The auth revision after [`walkthrough_setup`], as etcd 3.4 counts it.
const SETUP_AUTH_REVISION: u64 = 8;

/// Key files in a directory of their own: an RSA pair, an EC (P-256) pair, and a second
/// EC key no server knows.
struct Keys {
    dir: tempfile::TempDir,
}

impl Keys {
    fn generate() -> Keys {
        let dir = tempfile::tempdir().expect("key dir");
        let mut rng = ChaCha20Rng::seed_from_u64(42);
        let rsa = rsa::RsaPrivateKey::new(&mut rng, 2048).expect("RSA key");
        let write = |name: &str, text: &str| {
            std::fs::write(dir.path().join(name), text).expect("write key");
        };
        write(
            "rsa.pem",
            &rsa.to_pkcs1_pem(LineEnding::LF).expect("PKCS#1 PEM"),
        );
        write(
            "rsa.pub",
            &rsa.to_public_key()
                .to_public_key_pem(LineEnding::LF)
                .expect("PKIX PEM"),
        );
        for (name, seed) in [("ec", 1u64), ("foreign", 2)] {
            let key = p256::SecretKey::random(&mut ChaCha20Rng::seed_from_u64(seed));
            // PKCS#8: the SEC1 form written here names no curve, which Go refuses.
            write(
                &format!("{name}.pem"),
                &key.to_pkcs8_pem(LineEnding::LF).expect("PKCS#8 PEM"),
            );
            write(
                &format!("{name}.pub"),
                &key.public_key()
                    .to_public_key_pem(LineEnding::LF)
                    .expect("PKIX PEM"),
            );
        }
        Keys { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// The same provider the server builds from `options`, for signing tokens here.
    fn provider(&self, options: &str) -> JwtTokens {
        match token_provider(options, &mut |p| std::fs::read(p)) {
            Ok((TokenProvider::Jwt(j), _)) => *j,
            other => panic!("{options}: {other:?}"),
        }
    }
}

fn as_user(s: &Server, user: &str, args: &[&str]) -> common::Output {
    let mut all = vec!["--user", user];
    all.extend_from_slice(args);
    s.etcdctl(&all)
}

/// etcd's walkthrough: root with the root role, role0 with readwrite on `foo`, user0
/// holding role0, then `auth enable`.
fn walkthrough_setup(s: &Server) {
    s.etcdctl(&["role", "add", "root"]).ok();
    s.etcdctl(&["user", "add", ROOT]).ok();
    s.etcdctl(&["user", "grant-role", "root", "root"]).ok();
    s.etcdctl(&["role", "add", "role0"]).ok();
    s.etcdctl(&["role", "grant-permission", "role0", "readwrite", "foo"])
        .ok();
    s.etcdctl(&["user", "add", USER0]).ok();
    s.etcdctl(&["user", "grant-role", "user0", "role0"]).ok();
    assert_eq!(
        s.etcdctl(&["auth", "enable"]).ok(),
        "Authentication Enabled\n"
    );
}

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

/// The claims of a JWT, decoded without checking the signature.
fn claims(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).expect("three segments");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("JSON")
}

#[test]
fn jwt_walkthrough_and_revocation_with_etcdctl() {
    let keys = Keys::generate();
    let options = format!(
        "jwt,pub-key={},priv-key={},sign-method=RS256,ttl=5m",
        keys.path("rsa.pub"),
        keys.path("rsa.pem")
    );
    let s = Server::start_with_args(&["--bcrypt-cost", "4", "--auth-token", &options]);
    walkthrough_setup(&s);

    // user0 may read and write foo, and nothing else.
    assert_eq!(as_user(&s, USER0, &["put", "foo", "bar"]).ok(), "OK\n");
    assert_eq!(as_user(&s, USER0, &["get", "foo"]).ok(), "foo\nbar\n");
    assert_eq!(
        as_user(&s, USER0, &["get", "foo", "--consistency=s"]).ok(),
        "foo\nbar\n"
    );
    assert_eq!(
        as_user(&s, USER0, &["put", "other", "x"]).err_line(),
        "Error: etcdserver: permission denied"
    );
    assert_eq!(
        as_user(&s, USER0, &["user", "list"]).err_line(),
        "Error: etcdserver: permission denied"
    );
    assert_eq!(
        as_user(&s, "user0:wrong", &["get", "foo"]).err_line(),
        "Error: etcdserver: authentication failed, invalid user ID or password"
    );
    assert_eq!(
        s.etcdctl(&["get", "foo"]).err_line(),
        "Error: etcdserver: user name is empty"
    );
    assert_eq!(as_user(&s, ROOT, &["put", "other", "y"]).ok(), "OK\n");
    assert_eq!(as_user(&s, ROOT, &["user", "list"]).ok(), "root\nuser0\n");

    // Revoking role0's permission on foo takes effect for user0's next request.
    assert_eq!(
        as_user(&s, ROOT, &["role", "revoke-permission", "role0", "foo"]).ok(),
        "Permission of key foo is revoked from role role0\n"
    );
    assert_eq!(
        as_user(&s, USER0, &["get", "foo"]).err_line(),
        "Error: etcdserver: permission denied"
    );
    assert_eq!(
        as_user(&s, USER0, &["put", "foo", "x"]).err_line(),
        "Error: etcdserver: permission denied"
    );
    // Granted again, then the role revoked from the user: denied again.
    as_user(
        &s,
        ROOT,
        &["role", "grant-permission", "role0", "readwrite", "foo"],
    )
    .ok();
    assert_eq!(as_user(&s, USER0, &["get", "foo"]).ok(), "foo\nbar\n");
    assert_eq!(
        as_user(&s, ROOT, &["user", "revoke-role", "user0", "role0"]).ok(),
        "Role role0 is revoked from user user0\n"
    );
    assert_eq!(
        as_user(&s, USER0, &["get", "foo"]).err_line(),
        "Error: etcdserver: permission denied"
    );
    // A deleted user can no longer authenticate.
    assert_eq!(
        as_user(&s, ROOT, &["user", "delete", "user0"]).ok(),
        "User user0 deleted\n"
    );
    assert_eq!(
        as_user(&s, USER0, &["get", "foo"]).err_line(),
        "Error: etcdserver: authentication failed, invalid user ID or password"
    );
}

async fn channel(s: &Server) -> Channel {
    Channel::from_shared(s.client_url())
        .expect("url")
        .connect()
        .await
        .expect("connect")
}

async fn authenticate(ch: &Channel, user: &str, password: &str) -> Result<String, tonic::Status> {
    AuthClient::new(ch.clone())
        .authenticate(AuthenticateRequest {
            name: user.into(),
            password: password.into(),
        })
        .await
        .map(|r| r.into_inner().token)
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.metadata_mut()
        .insert("token", token.parse().expect("ASCII token"));
    req
}

/// A linearizable get of `key` with `token`: Ok(values) or Err((code, message)).
async fn get(ch: &Channel, token: &str, key: &str) -> Result<Vec<String>, (i32, String)> {
    KvClient::new(ch.clone())
        .range(with_token(
            RangeRequest {
                key: key.into(),
                ..Default::default()
            },
            token,
        ))
        .await
        .map(|r| {
            r.into_inner()
                .kvs
                .iter()
                .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
                .collect()
        })
        .map_err(|e| (e.code() as i32, e.message().to_string()))
}

async fn put(ch: &Channel, token: &str, key: &str, value: &str) -> Result<(), (i32, String)> {
    KvClient::new(ch.clone())
        .put(with_token(
            PutRequest {
                key: key.into(),
                value: value.into(),
                ..Default::default()
            },
            token,
        ))
        .await
        .map(|_| ())
        .map_err(|e| (e.code() as i32, e.message().to_string()))
}

fn invalid_token() -> (i32, String) {
    (
        tonic::Code::Unauthenticated as i32,
        "etcdserver: invalid auth token".into(),
    )
}

fn old_revision() -> (i32, String) {
    (
        tonic::Code::InvalidArgument as i32,
        "etcdserver: revision of auth store is old".into(),
    )
}

#[tokio::test]
async fn jwt_tokens_across_requests_expiry_tampering_and_staleness() {
    let keys = Keys::generate();
    // Long enough that the requests below, made with this token before it expires, fit
    // in it on a loaded machine; the test then waits the TTL out.
    let ttl_s = 8;
    let options = format!(
        "jwt,pub-key={},priv-key={},sign-method=ES256,ttl={ttl_s}s",
        keys.path("ec.pub"),
        keys.path("ec.pem")
    );
    let s = Server::start_with_args(&["--bcrypt-cost", "4", "--auth-token", &options]);
    walkthrough_setup(&s);
    let ch = channel(&s).await;

    let issued_s = now_s();
    let token = authenticate(&ch, "user0", "pw0")
        .await
        .expect("authenticate");
    let c = claims(&token);
    assert_eq!(c["username"], "user0");
    let revision = c["revision"].as_u64().expect("numeric revision");
    assert_eq!(revision, SETUP_AUTH_REVISION);
    let returned_s = now_s();
    let exp = c["exp"].as_i64().expect("numeric exp");
    // The server stamped the token between the request and its answer: in whole seconds
    // that bounds `exp` exactly, however long the request took.
    println!("token exp {exp}: requested at {issued_s}, answered at {returned_s}, ttl {ttl_s} s");
    assert!(
        (issued_s + ttl_s..=returned_s + ttl_s).contains(&exp),
        "exp {exp}, requested at {issued_s}, answered at {returned_s}"
    );
    assert_eq!(
        token
            .split('.')
            .next()
            .map(|h| URL_SAFE_NO_PAD.decode(h).unwrap()),
        Some(br#"{"alg":"ES256","typ":"JWT"}"#.to_vec())
    );

    // One token serves several requests.
    put(&ch, &token, "foo", "bar").await.expect("put");
    assert_eq!(get(&ch, &token, "foo").await, Ok(vec!["bar".into()]));
    assert_eq!(get(&ch, &token, "foo").await, Ok(vec!["bar".into()]));
    assert_eq!(
        get(&ch, &token, "other").await,
        Err((
            tonic::Code::PermissionDenied as i32,
            "etcdserver: permission denied".into()
        ))
    );

    // A tampered signature, tampered claims, or a foreign key's token is refused.
    let (signed, signature) = token.rsplit_once('.').unwrap();
    let mut sig = URL_SAFE_NO_PAD.decode(signature).unwrap();
    sig[5] ^= 0x40;
    let tampered = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(&sig));
    assert_eq!(get(&ch, &tampered, "foo").await, Err(invalid_token()));
    let header = signed.split('.').next().unwrap();
    let root_claims = URL_SAFE_NO_PAD.encode(format!(
        r#"{{"exp":{},"revision":{revision},"username":"root"}}"#,
        now_s() + 600
    ));
    let escalated = format!("{header}.{root_claims}.{signature}");
    assert_eq!(get(&ch, &escalated, "other").await, Err(invalid_token()));
    let foreign = keys
        .provider(&format!(
            "jwt,priv-key={},sign-method=ES256",
            keys.path("foreign.pem")
        ))
        .sign(
            "root",
            revision,
            now_ms(),
            &mut ChaCha20Rng::seed_from_u64(3),
        )
        .unwrap();
    assert_eq!(get(&ch, &foreign, "other").await, Err(invalid_token()));
    assert_eq!(get(&ch, "not-a-token", "foo").await, Err(invalid_token()));

    // A token made here with the server's own key is accepted: the format is etcd's.
    let own = keys
        .provider(&options)
        .sign(
            "user0",
            revision,
            now_ms(),
            &mut ChaCha20Rng::seed_from_u64(4),
        )
        .unwrap();
    assert_eq!(get(&ch, &own, "foo").await, Ok(vec!["bar".into()]));

    // Past its TTL the token is refused; a new one works.
    tokio::time::sleep(Duration::from_millis(
        ((exp + 1 - now_s()).max(0) as u64) * 1000 + 200,
    ))
    .await;
    assert_eq!(get(&ch, &token, "foo").await, Err(invalid_token()));
    let token = authenticate(&ch, "user0", "pw0")
        .await
        .expect("authenticate");
    assert_eq!(get(&ch, &token, "foo").await, Ok(vec!["bar".into()]));

    // Any auth change makes tokens issued before it stale: clients authenticate again.
    // A changed password thus voids the old token, and the old password too.
    s.etcdctl_stdin(
        &[
            "--user",
            ROOT,
            "user",
            "passwd",
            "user0",
            "--interactive=false",
        ],
        "pw1\n",
    )
    .ok();
    assert_eq!(get(&ch, &token, "foo").await, Err(old_revision()));
    assert_eq!(put(&ch, &token, "foo", "x").await, Err(old_revision()));
    assert_eq!(
        authenticate(&ch, "user0", "pw0")
            .await
            .map_err(|e| e.message().to_string()),
        Err("etcdserver: authentication failed, invalid user ID or password".into())
    );
    let token = authenticate(&ch, "user0", "pw1")
        .await
        .expect("new password");
    assert_eq!(get(&ch, &token, "foo").await, Ok(vec!["bar".into()]));

    // A deleted user's token is stale for key-value requests and names an unknown user
    // for admin ones.
    let root_token = authenticate(&ch, "root", "rootpw").await.expect("root");
    as_user(&s, ROOT, &["user", "delete", "user0"]).ok();
    assert_eq!(get(&ch, &token, "foo").await, Err(old_revision()));
    let status = MaintenanceClient::new(ch.clone())
        .hash(with_token(HashRequest {}, &token))
        .await
        .map(|_| ())
        .map_err(|e| (e.code() as i32, e.message().to_string()));
    // etcd's maintenance service passes the auth layer's error text through as Unknown.
    assert_eq!(
        status,
        Err((tonic::Code::Unknown as i32, "auth: user not found".into()))
    );
    // root's token predates the deletion too, but admin checks ignore the revision.
    assert!(MaintenanceClient::new(ch.clone())
        .hash(with_token(HashRequest {}, &root_token))
        .await
        .is_ok());
}

#[tokio::test]
async fn verify_only_members_accept_tokens_but_do_not_issue_them() {
    let keys = Keys::generate();
    let s = Server::start_with_args(&[
        "--bcrypt-cost",
        "4",
        "--auth-token",
        &format!("jwt,pub-key={},sign-method=RS256", keys.path("rsa.pub")),
    ]);
    walkthrough_setup(&s);
    let ch = channel(&s).await;
    let err = authenticate(&ch, "user0", "pw0").await.unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (
            tonic::Code::Unknown,
            "auth: token signing attempted with verify-only key"
        )
    );
    // The password is still checked first.
    let err = authenticate(&ch, "user0", "nope").await.unwrap_err();
    assert_eq!(
        err.message(),
        "etcdserver: authentication failed, invalid user ID or password"
    );
    assert_eq!(
        as_user(&s, USER0, &["get", "foo"]).err_line(),
        "Error: rpc error: code = Unknown desc = auth: token signing attempted with verify-only key"
    );
    // A token signed elsewhere with the private key is accepted.
    let signer = keys.provider(&format!(
        "jwt,priv-key={},sign-method=RS256",
        keys.path("rsa.pem")
    ));
    let sign = |revision| {
        signer
            .sign(
                "user0",
                revision,
                now_ms(),
                &mut ChaCha20Rng::seed_from_u64(5),
            )
            .unwrap()
    };
    let token = sign(SETUP_AUTH_REVISION);
    put(&ch, &token, "foo", "v").await.expect("put");
    assert_eq!(get(&ch, &token, "foo").await, Ok(vec!["v".into()]));
    // A revision from the future passes the write check (only older ones are refused)
    // but not a read's, which wants the current revision exactly.
    let future = sign(SETUP_AUTH_REVISION + 1);
    put(&ch, &future, "foo", "w").await.expect("put");
    assert_eq!(get(&ch, &future, "foo").await, Err(old_revision()));
    assert_eq!(get(&ch, &token, "foo").await, Ok(vec!["w".into()]));
}

/// Runs the server binary with `args` and returns (exited unsuccessfully, all output).
fn start_failure(dir: &Path, auth_token: &str) -> (bool, String) {
    let kind = Kind::under_test();
    let port = common::free_port();
    let peer_port = common::free_port();
    let mut cmd = Command::new(kind.binary());
    cmd.args([
        "--data-dir",
        &dir.join("data").display().to_string(),
        "--listen-client-urls",
        &format!("http://127.0.0.1:{port}"),
        "--advertise-client-urls",
        &format!("http://127.0.0.1:{port}"),
        "--listen-peer-urls",
        &format!("http://127.0.0.1:{peer_port}"),
        "--auth-token",
        auth_token,
    ]);
    let out = common::run_with_timeout(cmd, None, Duration::from_secs(20));
    let _ = std::fs::remove_dir_all(dir.join("data"));
    (!out.success(), format!("{}{}", out.stdout, out.stderr))
}

#[test]
fn bad_jwt_options_stop_the_member_with_etcds_errors() {
    let keys = Keys::generate();
    let dir: PathBuf = keys.dir.path().to_path_buf();
    for (options, expected) in [
        ("jwt,sign-method=RS256".to_string(), "auth: missing key data"),
        (
            format!("jwt,priv-key={}", keys.path("rsa.pem")),
            "auth: invalid auth options",
        ),
        (
            format!("jwt,priv-key={},sign-method=RS256,ttl=5", keys.path("rsa.pem")),
            "auth: invalid auth options",
        ),
        (
            "jwt,priv-key=/nonexistent/key.pem,sign-method=RS256".to_string(),
            "auth: invalid auth options",
        ),
        (
            format!("jwt,priv-key={},sign-method=ES256", keys.path("rsa.pem")),
            "x509: failed to parse private key (use ParsePKCS1PrivateKey instead for this key format)",
        ),
        (
            format!("jwt,pub-key={},sign-method=RS256", keys.path("ec.pub")),
            "key is not a valid RSA public key",
        ),
        (
            format!(
                "jwt,priv-key={},pub-key={},sign-method=ES256",
                keys.path("ec.pem"),
                keys.path("rsa.pub")
            ),
            "key is not a valid ECDSA public key",
        ),
        (
            format!("jwt,priv-key={},sign-method=EdDSA", keys.path("ec.pem")),
            "unsupported signing method: *jwt.SigningMethodEd25519",
        ),
        ("bogus".to_string(), "auth: invalid auth options"),
    ] {
        let (failed, output) = start_failure(&dir, &options);
        assert!(failed, "{options}: started\n{output}");
        assert!(
            output.contains(expected),
            "{options}: expected {expected:?} in\n{output}"
        );
    }
}
