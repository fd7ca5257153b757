//! The HTTP/JSON gateway against the real etcd 3.4.23: the same requests go to the
//! server under test and to etcd over plain HTTP/1.1, and the answers (status and body)
//! must be identical byte for byte once the values that differ between any two clusters
//! are replaced by placeholders: the cluster and member ids, the raft term, auth tokens
//! and a lease's remaining TTL. Answers whose content is member-specific (member list,
//! status) are compared by their field names, and the parts that can be known.
//!
//! With `DETCD_TEST_SERVER=etcd` both sides are etcd, which checks the test itself.

mod common;

use std::time::Duration;

use common::http::{enc as b64, get, post, request, stream_lines, Reply};
use common::Server;

/// Replaces the value of every `"name":"..."` string field whose name is in `names`.
fn mask(body: &str, names: &[&str]) -> String {
    let mut out = body.to_string();
    for name in names {
        let pat = format!("\"{name}\":\"");
        let mut result = String::new();
        let mut rest = out.as_str();
        while let Some(i) = rest.find(&pat) {
            result.push_str(&rest[..i + pat.len()]);
            rest = &rest[i + pat.len()..];
            let end = rest.find('"').unwrap_or(rest.len());
            result.push('*');
            rest = &rest[end..];
        }
        result.push_str(rest);
        out = result;
    }
    out
}

fn normal(body: &str) -> String {
    mask(body, &["cluster_id", "member_id", "raft_term", "token"])
}

/// One request of the scripted sequence, with a label for failure messages.
struct Step {
    label: &'static str,
    path: &'static str,
    body: String,
    /// Extra fields to mask in this step's answer.
    mask: &'static [&'static str],
    /// Whether the Authorization header carries the token from the last authenticate.
    authed: bool,
}

fn step(label: &'static str, path: &'static str, body: impl Into<String>) -> Step {
    Step {
        label,
        path,
        body: body.into(),
        mask: &[],
        authed: false,
    }
}

fn script() -> Vec<Step> {
    let key = b64("foo");
    let bar = b64("bar");
    vec![
        step(
            "put",
            "/v3/kv/put",
            format!(r#"{{"key":"{key}","value":"{bar}"}}"#),
        ),
        step(
            "put with prev_kv (lowerCamel name)",
            "/v3/kv/put",
            format!(
                r#"{{"key":"{key}","value":"{}","prevKv":true}}"#,
                b64("baz")
            ),
        ),
        step(
            "put a/1",
            "/v3/kv/put",
            format!(r#"{{"key":"{}","value":"{bar}"}}"#, b64("a/1")),
        ),
        step(
            "put a/2",
            "/v3/kv/put",
            format!(r#"{{"key":"{}","value":"{bar}"}}"#, b64("a/2")),
        ),
        step(
            "put a/3",
            "/v3beta/kv/put",
            format!(r#"{{"key":"{}","value":"{bar}"}}"#, b64("a/3")),
        ),
        step(
            "range with range_end and limit",
            "/v3/kv/range",
            format!(
                r#"{{"key":"{}","range_end":"{}","limit":2}}"#,
                b64("a/"),
                b64("a0")
            ),
        ),
        step(
            "range count_only, sorted, string limit",
            "/v3/kv/range",
            format!(
                r#"{{"key":"{}","range_end":"{}","limit":"5","sort_order":"DESCEND","sort_target":"MOD","keys_only":true}}"#,
                b64("a/"),
                b64("a0")
            ),
        ),
        step("range with an empty key", "/v3/kv/range", "{}"),
        step(
            "deleterange with prev_kv",
            "/v3/kv/deleterange",
            format!(r#"{{"key":"{}","prev_kv":true}}"#, b64("a/1")),
        ),
        step(
            "txn with compare",
            "/v3/kv/txn",
            format!(
                r#"{{"compare":[{{"key":"{key}","result":"EQUAL","target":"VALUE","value":"{}"}}],"success":[{{"request_put":{{"key":"{key}","value":"{bar}"}}}},{{"request_range":{{"key":"{key}"}}}},{{"request_delete_range":{{"key":"{}"}}}}],"failure":[{{"request_range":{{"key":"{key}"}}}}]}}"#,
                b64("baz"),
                b64("zzz")
            ),
        ),
        step(
            "txn that fails its compare",
            "/v3/kv/txn",
            format!(
                r#"{{"compare":[{{"key":"{key}","result":"LESS","target":"VERSION","version":"1"}}],"failure":[{{"request_range":{{"key":"{key}","count_only":true}}}}]}}"#
            ),
        ),
        step("compaction", "/v3/kv/compaction", r#"{"revision":"4"}"#),
        step(
            "range at a compacted revision",
            "/v3/kv/range",
            format!(r#"{{"key":"{key}","revision":"2"}}"#),
        ),
        step(
            "compaction in the future",
            "/v3/kv/compaction",
            r#"{"revision":"1000"}"#,
        ),
        step(
            "lease grant",
            "/v3/lease/grant",
            r#"{"TTL":600,"ID":"7000"}"#,
        ),
        step(
            "put with lease",
            "/v3/kv/put",
            format!(
                r#"{{"key":"{}","value":"{bar}","lease":"7000"}}"#,
                b64("leased")
            ),
        ),
        Step {
            mask: &["TTL"],
            ..step(
                "lease timetolive with keys",
                "/v3/lease/timetolive",
                r#"{"ID":"7000","keys":true}"#,
            )
        },
        step("lease leases", "/v3/kv/lease/leases", "{}"),
        step("lease revoke", "/v3/lease/revoke", r#"{"ID":"7000"}"#),
        step(
            "lease revoke again",
            "/v3/kv/lease/revoke",
            r#"{"ID":"7000"}"#,
        ),
        step("alarm list", "/v3/maintenance/alarm", r#"{"action":"GET"}"#),
        step("auth enable without root", "/v3/auth/enable", "{}"),
        step(
            "user add root",
            "/v3/auth/user/add",
            r#"{"name":"root","password":"pw"}"#,
        ),
        step(
            "user grant root",
            "/v3/auth/user/grant",
            r#"{"user":"root","role":"root"}"#,
        ),
        step("auth enable", "/v3/auth/enable", "{}"),
        step(
            "range without a token",
            "/v3/kv/range",
            format!(r#"{{"key":"{key}"}}"#),
        ),
        step(
            "authenticate with a bad password",
            "/v3/auth/authenticate",
            r#"{"name":"root","password":"bad"}"#,
        ),
        step(
            "authenticate",
            "/v3/auth/authenticate",
            r#"{"name":"root","password":"pw"}"#,
        ),
        Step {
            authed: true,
            ..step(
                "range with the token",
                "/v3/kv/range",
                format!(r#"{{"key":"{key}"}}"#),
            )
        },
        Step {
            authed: true,
            ..step("user get", "/v3/auth/user/get", r#"{"name":"root"}"#)
        },
        Step {
            authed: true,
            ..step("user list", "/v3/auth/user/list", "{}")
        },
        Step {
            authed: true,
            ..step("auth disable", "/v3/auth/disable", "{}")
        },
    ]
}

/// Runs the script on `server`, returning each step's status and masked body.
fn run_script(server: &Server) -> Vec<(u16, String)> {
    let url = server.client_url();
    let mut token = String::new();
    let mut out = Vec::new();
    for s in script() {
        let headers: Vec<(&str, &str)> = if s.authed {
            vec![("Authorization", token.as_str())]
        } else {
            vec![]
        };
        let r = request(&url, "POST", s.path, &headers, &s.body);
        if s.path == "/v3/auth/authenticate" && r.status == 200 {
            token = r.json()["token"].as_str().expect("token").to_string();
        }
        out.push((r.status, mask(&normal(&r.body), s.mask)));
    }
    out
}

#[test]
fn kv_lease_and_auth_answers_match_etcd() {
    let ours = Server::start();
    let etcd = Server::start_etcd();
    let a = run_script(&ours);
    let b = run_script(&etcd);
    assert_eq!(a.len(), b.len());
    for (i, ((ours, theirs), step)) in a.iter().zip(&b).zip(script()).enumerate() {
        assert_eq!(
            ours,
            theirs,
            "step {i} ({}): {} answered differently from etcd",
            step.label,
            common::Kind::under_test().name()
        );
    }
}

#[test]
fn errors_and_unknown_paths_match_etcd() {
    let ours = Server::start();
    let etcd = Server::start_etcd();
    let check = |what: &str, f: &dyn Fn(&str) -> Reply, same_body: bool| {
        let a = f(&ours.client_url());
        let b = f(&etcd.client_url());
        assert_eq!(a.status, b.status, "{what}: status ({a:?} vs {b:?})");
        if same_body {
            assert_eq!(a.body, b.body, "{what}: body");
        }
        a
    };
    check("unknown /v3 path", &|u| post(u, "/v3/nope", "{}"), true);
    check(
        "hashkv, which etcd 3.4's gateway does not route",
        &|u| post(u, "/v3/maintenance/hashkv", "{}"),
        true,
    );
    check(
        "v3alpha prefix",
        &|u| post(u, "/v3alpha/kv/range", "{}"),
        true,
    );
    check("GET on a POST route", &|u| get(u, "/v3/kv/range"), true);
    check("unknown top-level path", &|u| get(u, "/livez"), true);
    check("/readyz, absent in 3.4", &|u| get(u, "/readyz"), true);
    // Go's JSON errors have their own wording; status and gRPC code must match.
    let bad = check(
        "a field of the wrong type",
        &|u| post(u, "/v3/kv/range", r#"{"key":"Zm9v","limit":"x"}"#),
        false,
    );
    assert_eq!(bad.json()["code"], 3);
    let bad = check("malformed JSON", &|u| post(u, "/v3/kv/put", "{bad"), false);
    assert_eq!(bad.json()["code"], 3);
    assert_eq!(bad.header("content-type"), Some("application/json"));
}

#[test]
fn member_list_status_and_version_have_etcds_shape() {
    let ours = Server::start();
    let etcd = Server::start_etcd();
    let keys = |v: &serde_json::Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
        k.sort();
        k
    };
    for path in ["/v3/cluster/member/list", "/v3/maintenance/status"] {
        let a = post(&ours.client_url(), path, "{}");
        let b = post(&etcd.client_url(), path, "{}");
        assert_eq!((a.status, b.status), (200, 200), "{path}");
        assert_eq!(keys(&a.json()), keys(&b.json()), "{path}: fields");
    }
    let members = post(&ours.client_url(), "/v3/cluster/member/list", "{}").json();
    let m = &members["members"][0];
    assert_eq!(m["name"], ours.name());
    assert_eq!(m["clientURLs"][0], ours.client_url());
    assert_eq!(m["peerURLs"][0], ours.peer_url());
    assert!(m["ID"]
        .as_str()
        .expect("ID is a string")
        .parse::<u64>()
        .is_ok());
    let status = post(&ours.client_url(), "/v3/maintenance/status", "{}").json();
    assert_eq!(status["version"], "3.4.23");
    assert_eq!(status["leader"], m["ID"]);
    let a = get(&ours.client_url(), "/version");
    let b = get(&etcd.client_url(), "/version");
    assert_eq!((a.status, &a.body), (b.status, &b.body));
    let a = get(&ours.client_url(), "/health");
    let b = get(&etcd.client_url(), "/health");
    assert_eq!(
        (a.status, &a.body),
        (200, &"{\"health\":\"true\"}".to_string())
    );
    assert_eq!((a.status, &a.body), (b.status, &b.body));
}

#[test]
fn watch_streams_events_as_etcd_does() {
    let ours = Server::start();
    let etcd = Server::start_etcd();
    let watch = |s: &Server| -> Vec<String> {
        let url = s.client_url();
        let key = b64("w");
        let lines = stream_lines(
            &url,
            "/v3/watch",
            &format!(r#"{{"create_request":{{"key":"{key}","prev_kv":true}}}}"#),
            3,
            Duration::from_secs(15),
            || {
                assert_eq!(
                    post(
                        &url,
                        "/v3/kv/put",
                        &format!(r#"{{"key":"{key}","value":"YQ=="}}"#)
                    )
                    .status,
                    200
                );
                assert_eq!(
                    post(&url, "/v3/kv/deleterange", &format!(r#"{{"key":"{key}"}}"#)).status,
                    200
                );
            },
        );
        lines.iter().map(|l| normal(l)).collect()
    };
    let a = watch(&ours);
    let b = watch(&etcd);
    assert_eq!(a.len(), 3, "created, put and delete: {a:?}");
    assert!(a[0].contains("\"created\":true"), "{a:?}");
    assert!(a[2].contains("\"type\":\"DELETE\""), "{a:?}");
    assert_eq!(a, b);
}

/// Lock and Election over JSON: grant a lease, lock and unlock, campaign, ask for the
/// leader, and proclaim with a leader key that is not the leader's. Lease ids (and the
/// keys named after them) differ between any two clusters and are masked.
fn lock_and_election_script(server: &Server) -> Vec<(u16, String)> {
    let url = server.client_url();
    let masked = |r: Reply| {
        (
            r.status,
            mask(&normal(&r.body), &["ID", "lease", "key", "TTL"]),
        )
    };
    let mut out = Vec::new();
    let grant = post(&url, "/v3/lease/grant", r#"{"TTL":"30"}"#);
    let lease = grant.json()["ID"].as_str().expect("lease id").to_string();
    out.push(masked(grant));
    let lock = post(
        &url,
        "/v3/lock/lock",
        &format!(r#"{{"name":"{}","lease":"{lease}"}}"#, b64("l1")),
    );
    let key = lock.json()["key"].as_str().expect("lock key").to_string();
    out.push(masked(lock));
    out.push(masked(post(
        &url,
        "/v3/lock/unlock",
        &format!(r#"{{"key":"{key}"}}"#),
    )));
    let campaign = post(
        &url,
        "/v3/election/campaign",
        &format!(
            r#"{{"name":"{}","lease":"{lease}","value":"{}"}}"#,
            b64("e1"),
            b64("v1")
        ),
    );
    out.push(masked(campaign));
    out.push(masked(post(
        &url,
        "/v3/election/leader",
        &format!(r#"{{"name":"{}"}}"#, b64("e1")),
    )));
    out.push(masked(post(
        &url,
        "/v3/election/proclaim",
        &format!(
            r#"{{"leader":{{"name":"{}","key":"{}","rev":"1","lease":"{lease}"}},"value":"{}"}}"#,
            b64("e1"),
            b64("e1/0"),
            b64("v2")
        ),
    )));
    out
}

#[test]
fn lock_and_election_answers_match_etcd() {
    let ours = lock_and_election_script(&Server::start());
    let theirs = lock_and_election_script(&Server::start_etcd());
    assert_eq!(ours.len(), theirs.len());
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert_eq!(a, b, "step {i} answered differently from etcd");
    }
    // The lock and the campaign really happened: statuses 200 and a leader was named.
    assert!(
        ours[..5].iter().all(|(status, _)| *status == 200),
        "{ours:?}"
    );
    assert!(ours[4].1.contains("\"kv\""), "{}", ours[4].1);
}
