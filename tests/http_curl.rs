//! Every route of the HTTP/JSON gateway, driven by `curl` exactly as etcd's documentation
//! drives it (`curl -L URL -X POST -d '{...}'`, which sends the body as a form, not as
//! JSON), against the server under test and the real etcd 3.4.23. Each answer (HTTP
//! status and body) must be identical once the values that differ between any two
//! clusters are masked: ids, raft terms, tokens, sizes, hashes and the members' own URLs.
//!
//! With `DETCD_TEST_SERVER=etcd` both sides are etcd, which checks the test itself.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use common::{run_with_timeout, Kind, Server};
use sha2::{Digest, Sha256};

/// `s` in standard base64, as the gateway takes bytes fields.
fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Fields whose values differ between any two clusters, whatever the request.
const ALWAYS_MASKED: &[&str] = &["cluster_id", "member_id", "raft_term", "token"];

/// Skips one JSON value starting at `s[0]` and returns its length in bytes.
fn value_len(s: &str) -> usize {
    let bytes = s.as_bytes();
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => {
                    in_string = false;
                    if depth == 0 {
                        return i + 1;
                    }
                }
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => depth += 1,
            b']' | b'}' if depth == 0 => return i,
            b']' | b'}' => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            b',' if depth == 0 => return i,
            _ => {}
        }
    }
    bytes.len()
}

/// Replaces the value (of any JSON type) of every field named in `names` with `*`,
/// keeping the rest of the body byte for byte.
fn mask(body: &str, names: &[&str]) -> String {
    let mut out = body.to_string();
    for name in names.iter().chain(ALWAYS_MASKED) {
        let pat = format!("\"{name}\":");
        let mut result = String::new();
        let mut rest = out.as_str();
        while let Some(i) = rest.find(&pat) {
            result.push_str(&rest[..i + pat.len()]);
            rest = &rest[i + pat.len()..];
            result.push('*');
            rest = &rest[value_len(rest)..];
        }
        result.push_str(rest);
        out = result;
    }
    out
}

/// One curl answer: its exit code, HTTP status and body.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    exit: i32,
    status: String,
    body: String,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.body.lines().next().unwrap_or(""))
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// A string field of the (first) JSON object in the body, at `path`.
    fn field(&self, path: &[&str]) -> String {
        let mut v = self.json();
        for p in path {
            v = v[*p].clone();
        }
        v.as_str()
            .unwrap_or_else(|| panic!("no string at {path:?} in {}", self.body))
            .to_string()
    }
}

/// Runs `curl -sS -L [-X POST -d BODY] URL PATH` with `extra` options, as the etcd
/// documentation's examples do, and splits the HTTP status off the end of the output.
fn curl(base: &str, path: &str, body: Option<&str>, extra: &[&str]) -> Answer {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-L", "-w", "\n%{http_code}"]);
    if let Some(body) = body {
        cmd.args(["-X", "POST", "-d", body]);
    }
    cmd.args(extra).arg(format!("{base}{path}"));
    let out = run_with_timeout(cmd, None, Duration::from_secs(30));
    let (body, status) = out
        .stdout
        .rsplit_once('\n')
        .map_or((String::new(), out.stdout.clone()), |(b, s)| {
            (b.to_string(), s.to_string())
        });
    Answer {
        exit: out.status.code().unwrap_or(-1),
        status,
        body,
    }
}

/// The scripted session: a label, the masked answer, and the raw answer for steps whose
/// content is checked further.
struct Session {
    steps: Vec<(String, Answer)>,
    snapshot: Answer,
    metrics: Answer,
}

fn session(server: &Server) -> Session {
    let url = server.client_url();
    let mut steps: Vec<(String, Answer)> = Vec::new();
    let mut record = |label: &str, a: &Answer, masked: &[&str]| {
        let mut a = a.clone();
        a.body = mask(&a.body, masked);
        steps.push((label.to_string(), a));
    };
    let post = |path: &str, body: &str| curl(&url, path, Some(body), &[]);
    let authed = |path: &str, body: &str, token: &str| {
        curl(
            &url,
            path,
            Some(body),
            &["-H", &format!("Authorization: {token}")],
        )
    };
    // A stream read for a fixed time: curl ends it (exit 28) and prints what came.
    let stream = |path: &str, body: &str| curl(&url, path, Some(body), &["--max-time", "2"]);
    let key_foo = b64("foo");
    let bar = b64("bar");

    // KV, on both prefixes.
    let a = post(
        "/v3/kv/put",
        &format!(r#"{{"key": "{key_foo}", "value": "{bar}"}}"#),
    );
    record("kv/put", &a, &[]);
    let a = post(
        "/v3beta/kv/put",
        &format!(
            r#"{{"key": "{}", "value": "{}", "prev_kv": true}}"#,
            key_foo,
            b64("baz")
        ),
    );
    record("v3beta kv/put with prev_kv", &a, &[]);
    for i in 0..3 {
        let a = post(
            "/v3/kv/put",
            &format!(
                r#"{{"key": "{}", "value": "{}"}}"#,
                b64(&format!("p/{i}")),
                b64("x")
            ),
        );
        record("kv/put p/i", &a, &[]);
    }
    let a = post(
        "/v3/kv/range",
        &format!(
            r#"{{"key": "{}", "range_end": "{}"}}"#,
            b64("p/"),
            b64("p0")
        ),
    );
    record("kv/range prefix", &a, &[]);
    let a = post(
        "/v3beta/kv/range",
        &format!(r#"{{"key": "{key_foo}", "revision": "2"}}"#),
    );
    record("v3beta kv/range at a revision", &a, &[]);
    let a = post(
        "/v3/kv/txn",
        &format!(
            r#"{{"compare":[{{"target":"VALUE","key":"{key_foo}","value":"{}"}}],"success":[{{"requestPut":{{"key":"{key_foo}","value":"{bar}"}}}}],"failure":[{{"requestRange":{{"key":"{key_foo}"}}}}]}}"#,
            b64("baz")
        ),
    );
    record("kv/txn", &a, &[]);
    let a = post(
        "/v3/kv/deleterange",
        &format!(r#"{{"key": "{}", "prev_kv": true}}"#, b64("p/1")),
    );
    record("kv/deleterange with prev_kv", &a, &[]);

    // Watch: history from revision 1, then the stream stays open until curl stops it.
    let a = stream(
        "/v3/watch",
        &format!(
            r#"{{"create_request": {{"key": "{key_foo}", "start_revision": "1", "prev_kv": true}}}}"#
        ),
    );
    record("watch from revision 1", &a, &["watch_id"]);
    let a = post(
        "/v3/kv/compaction",
        r#"{"revision": "3", "physical": true}"#,
    );
    record("kv/compaction", &a, &[]);
    let a = stream(
        "/v3beta/watch",
        &format!(r#"{{"create_request": {{"key": "{key_foo}", "start_revision": "2"}}}}"#),
    );
    record("watch from a compacted revision", &a, &["watch_id"]);

    // Leases, including the `kv/lease/...` aliases etcd 3.4 serves.
    let grant = post("/v3/lease/grant", r#"{"TTL": "60"}"#);
    record("lease/grant", &grant, &["ID"]);
    let lease = grant.field(&["ID"]);
    let a = post(
        "/v3/kv/put",
        &format!(
            r#"{{"key": "{}", "value": "{bar}", "lease": "{lease}"}}"#,
            b64("leased")
        ),
    );
    record("kv/put with a lease", &a, &[]);
    let a = post("/v3/lease/keepalive", &format!(r#"{{"ID": "{lease}"}}"#));
    record("lease/keepalive", &a, &["ID"]);
    let a = post(
        "/v3/lease/timetolive",
        &format!(r#"{{"ID": "{lease}", "keys": true}}"#),
    );
    record("lease/timetolive", &a, &["ID", "TTL"]);
    let a = post(
        "/v3/kv/lease/timetolive",
        &format!(r#"{{"ID": "{lease}"}}"#),
    );
    record("kv/lease/timetolive", &a, &["ID", "TTL"]);
    let a = post("/v3/lease/leases", "{}");
    record("lease/leases", &a, &["ID"]);
    let a = post("/v3/kv/lease/leases", "{}");
    record("kv/lease/leases", &a, &["ID"]);
    let a = post("/v3/lease/revoke", &format!(r#"{{"ID": "{lease}"}}"#));
    record("lease/revoke", &a, &[]);
    let a = post("/v3/kv/lease/revoke", &format!(r#"{{"ID": "{lease}"}}"#));
    record("kv/lease/revoke of a revoked lease", &a, &[]);

    // Lock and Election.
    let grant = post("/v3/lease/grant", r#"{"TTL": "60"}"#);
    let lease = grant.field(&["ID"]);
    let lock = post(
        "/v3/lock/lock",
        &format!(r#"{{"name": "{}", "lease": "{lease}"}}"#, b64("l")),
    );
    record("lock/lock", &lock, &["key"]);
    let a = post(
        "/v3/lock/unlock",
        &format!(r#"{{"key": "{}"}}"#, lock.field(&["key"])),
    );
    record("lock/unlock", &a, &[]);
    let campaign = post(
        "/v3/election/campaign",
        &format!(
            r#"{{"name": "{}", "lease": "{lease}", "value": "{}"}}"#,
            b64("e"),
            b64("one")
        ),
    );
    record("election/campaign", &campaign, &["key", "lease"]);
    let leader = campaign.json()["leader"].to_string();
    let a = post(
        "/v3/election/proclaim",
        &format!(r#"{{"leader": {leader}, "value": "{}"}}"#, b64("two")),
    );
    record("election/proclaim", &a, &[]);
    let a = post(
        "/v3/election/leader",
        &format!(r#"{{"name": "{}"}}"#, b64("e")),
    );
    record("election/leader", &a, &["key", "lease"]);
    let a = stream(
        "/v3/election/observe",
        &format!(r#"{{"name": "{}"}}"#, b64("e")),
    );
    record("election/observe", &a, &["key", "lease"]);
    let a = post("/v3/election/resign", &format!(r#"{{"leader": {leader}}}"#));
    record("election/resign", &a, &[]);
    let a = post(
        "/v3/election/leader",
        &format!(r#"{{"name": "{}"}}"#, b64("e")),
    );
    record("election/leader after resign", &a, &[]);

    // Cluster: a learner that never starts is added, updated, refused promotion, removed.
    let list_masks: &[&str] = &["ID", "name", "peerURLs", "clientURLs", "members"];
    let a = post("/v3/cluster/member/list", "{}");
    record("cluster/member/list", &a, list_masks);
    let add = post(
        "/v3/cluster/member/add",
        r#"{"peerURLs": ["http://10.0.0.99:2380"], "isLearner": true}"#,
    );
    record("cluster/member/add", &add, &["ID", "members"]);
    let learner = add.field(&["member", "ID"]);
    let a = post(
        "/v3/cluster/member/update",
        &format!(r#"{{"ID": "{learner}", "peerURLs": ["http://10.0.0.98:2380"]}}"#),
    );
    record("cluster/member/update", &a, &["members"]);
    let a = post(
        "/v3/cluster/member/promote",
        &format!(r#"{{"ID": "{learner}"}}"#),
    );
    record("cluster/member/promote of a learner not in sync", &a, &[]);
    let a = post(
        "/v3/cluster/member/remove",
        &format!(r#"{{"ID": "{learner}"}}"#),
    );
    record("cluster/member/remove", &a, &["members"]);
    let a = post("/v3/cluster/member/remove", r#"{"ID": "12345"}"#);
    record("cluster/member/remove of an unknown member", &a, &[]);

    // Maintenance.
    let a = post("/v3/maintenance/status", "{}");
    record(
        "maintenance/status",
        &a,
        &[
            "dbSize",
            "dbSizeInUse",
            "leader",
            "raftIndex",
            "raftAppliedIndex",
            "raftTerm",
        ],
    );
    let a = post("/v3/maintenance/alarm", r#"{"action": "GET"}"#);
    record("maintenance/alarm", &a, &[]);
    let a = post("/v3/maintenance/defragment", "{}");
    record("maintenance/defragment", &a, &[]);
    let a = post("/v3/maintenance/hash", "{}");
    record("maintenance/hash", &a, &["hash"]);
    let a = post(
        "/v3/maintenance/transfer-leadership",
        r#"{"targetID": "1"}"#,
    );
    record("maintenance/transfer-leadership to a stranger", &a, &[]);
    let snapshot = post("/v3/maintenance/snapshot", "{}");

    // Auth: every call, then a request with and without the token.
    let a = post("/v3/auth/role/add", r#"{"name": "reader"}"#);
    record("auth/role/add", &a, &[]);
    let a = post(
        "/v3/auth/role/grant",
        &format!(
            r#"{{"name": "reader", "perm": {{"permType": "READ", "key": "{}", "range_end": "{}"}}}}"#,
            b64("p/"),
            b64("p0")
        ),
    );
    record("auth/role/grant", &a, &[]);
    let a = post("/v3/auth/role/get", r#"{"role": "reader"}"#);
    record("auth/role/get", &a, &[]);
    let a = post("/v3/auth/role/list", "{}");
    record("auth/role/list", &a, &[]);
    let a = post(
        "/v3/auth/role/revoke",
        &format!(
            r#"{{"role": "reader", "key": "{}", "range_end": "{}"}}"#,
            b64("p/"),
            b64("p0")
        ),
    );
    record("auth/role/revoke", &a, &[]);
    for (label, path, body) in [
        (
            "auth/user/add",
            "/v3/auth/user/add",
            r#"{"name": "root", "password": "pw"}"#,
        ),
        (
            "auth/user/add alice",
            "/v3/auth/user/add",
            r#"{"name": "alice", "password": "a"}"#,
        ),
        (
            "auth/user/grant",
            "/v3/auth/user/grant",
            r#"{"user": "root", "role": "root"}"#,
        ),
        (
            "auth/user/grant alice",
            "/v3/auth/user/grant",
            r#"{"user": "alice", "role": "reader"}"#,
        ),
        ("auth/user/get", "/v3/auth/user/get", r#"{"name": "alice"}"#),
        ("auth/user/list", "/v3/auth/user/list", "{}"),
        (
            "auth/user/revoke",
            "/v3/auth/user/revoke",
            r#"{"name": "alice", "role": "reader"}"#,
        ),
        (
            "auth/user/changepw",
            "/v3/auth/user/changepw",
            r#"{"name": "alice", "password": "b"}"#,
        ),
        (
            "auth/user/delete",
            "/v3/auth/user/delete",
            r#"{"name": "alice"}"#,
        ),
        (
            "auth/role/delete",
            "/v3/auth/role/delete",
            r#"{"role": "reader"}"#,
        ),
        ("auth/enable", "/v3/auth/enable", "{}"),
        (
            "kv/range without a token",
            "/v3/kv/range",
            r#"{"key": "Zm9v"}"#,
        ),
        (
            "auth/authenticate with a wrong password",
            "/v3/auth/authenticate",
            r#"{"name": "root", "password": "no"}"#,
        ),
    ] {
        let a = post(path, body);
        record(label, &a, &[]);
    }
    let auth = post(
        "/v3/auth/authenticate",
        r#"{"name": "root", "password": "pw"}"#,
    );
    record("auth/authenticate", &auth, &[]);
    let token = auth.field(&["token"]);
    let a = authed(
        "/v3/kv/range",
        &format!(r#"{{"key": "{key_foo}"}}"#),
        &token,
    );
    record("kv/range with the token", &a, &[]);
    let a = authed("/v3/auth/disable", "{}", &token);
    record("auth/disable", &a, &[]);

    // Errors: a body that is not JSON, an unknown route, and the plain GET endpoints.
    let a = post("/v3/kv/range", "{not json");
    record(
        "malformed body",
        &Answer {
            body: String::new(),
            ..a.clone()
        },
        &[],
    );
    assert!(a.body.contains("\"code\":3"), "{}", a.body);
    let a = post("/v3/kv/nope", "{}");
    record("unknown route", &a, &[]);
    let a = curl(&url, "/version", None, &[]);
    record("/version", &a, &[]);
    let a = curl(&url, "/health", None, &[]);
    record("/health", &a, &[]);
    let metrics = curl(&url, "/metrics", None, &[]);
    Session {
        steps,
        snapshot,
        metrics,
    }
}

/// Decodes a Snapshot stream's blobs and checks the file ends in the SHA-256 of the rest,
/// as `etcdctl snapshot save` checks it.
fn check_snapshot(a: &Answer, who: &str) {
    assert_eq!((a.exit, a.status.as_str()), (0, "200"), "{who}: {a:?}");
    let mut file = Vec::new();
    for line in a.body.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("snapshot line");
        let blob = v["result"]["blob"].as_str().unwrap_or("");
        file.extend(
            base64::engine::general_purpose::STANDARD
                .decode(blob)
                .expect("base64 blob"),
        );
    }
    assert!(file.len() > 32, "{who}: snapshot of {} bytes", file.len());
    let (db, digest) = file.split_at(file.len() - 32);
    assert_eq!(
        Sha256::digest(db).as_slice(),
        digest,
        "{who}: snapshot digest"
    );
}

/// The metric names a scrape exposes.
fn metric_names(a: &Answer) -> BTreeSet<String> {
    a.body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

#[test]
fn every_gateway_route_answers_curl_as_etcd_does() {
    let ours = session(&Server::start());
    let theirs = session(&Server::start_etcd());
    assert_eq!(ours.steps.len(), theirs.steps.len());
    for ((label, a), (_, b)) in ours.steps.iter().zip(&theirs.steps) {
        assert_eq!(
            a,
            b,
            "{label}: {} answered curl differently from etcd",
            Kind::under_test().name()
        );
    }
    // The session did what it says: the writes and the auth round trip succeeded.
    let by_label = |l: &str| &ours.steps.iter().find(|(x, _)| x == l).expect(l).1;
    assert_eq!(by_label("kv/txn").status, "200");
    assert!(by_label("kv/txn").body.contains("\"succeeded\":true"));
    assert!(by_label("kv/range with the token").body.contains("\"kvs\""));
    assert_eq!(by_label("kv/range without a token").status, "400");
    assert!(by_label("watch from revision 1").body.lines().count() >= 2);
    assert_eq!(by_label("watch from revision 1").exit, 28);
    check_snapshot(&ours.snapshot, "ours");
    check_snapshot(&theirs.snapshot, "etcd");
    let names = metric_names(&ours.metrics);
    for name in [
        "etcd_server_has_leader",
        "etcd_server_proposals_committed_total",
        "etcd_mvcc_db_total_size_in_bytes",
        "etcd_disk_wal_fsync_duration_seconds_bucket",
        "grpc_server_handled_total",
    ] {
        assert!(names.contains(name), "/metrics lacks {name}");
        assert!(
            metric_names(&theirs.metrics).contains(name),
            "etcd's /metrics lacks {name}"
        );
    }
}
