//! `etcdctl endpoint ...` against the server, with `--endpoints http://host:port`.
//!
//! etcdctl 3.4 dials these commands (and `--cluster`) with the whole URL as the gRPC
//! target, so its HTTP/2 requests carry `:authority: http://127.0.0.1:<port>`. The `h2`
//! crate rejects that as malformed unless detcd's connection shim
//! (`src/gateway/h2_authority.rs`) repairs it; these tests fail without the shim while
//! `put`/`get` keep working. Every assertion also holds against the real etcd 3.4.23
//! (`DETCD_TEST_SERVER=etcd`).

mod common;

use std::process::Command;

use common::{etcdctl_bin, run_with_timeout, Output, Server, ETCDCTL_TIMEOUT};

/// Runs etcdctl against `endpoints` as given (the harness always uses the client URL).
fn etcdctl_at(endpoints: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(etcdctl_bin());
    cmd.env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(endpoints)
        .args(args);
    run_with_timeout(cmd, None, ETCDCTL_TIMEOUT)
}

/// Checks one entry of `endpoint status -w json` for a healthy single-member cluster.
#[track_caller]
fn check_status(entry: &serde_json::Value, endpoint: &str) -> u64 {
    assert_eq!(entry["Endpoint"], endpoint, "{entry}");
    let st = &entry["Status"];
    let version = st["version"].as_str().unwrap_or_default();
    assert!(version.starts_with("3.4."), "version {version:?} in {st}");
    let member_id = st["header"]["member_id"].as_u64().unwrap_or(0);
    assert_ne!(member_id, 0, "{st}");
    assert_eq!(st["leader"].as_u64(), Some(member_id), "{st}");
    assert!(st["raftIndex"].as_u64().unwrap_or(0) > 0, "{st}");
    assert!(st["raftTerm"].as_u64().unwrap_or(0) > 0, "{st}");
    assert!(st["dbSize"].as_i64().unwrap_or(0) > 0, "{st}");
    member_id
}

#[test]
fn endpoint_status_json() {
    let s = Server::start();
    assert_eq!(s.etcdctl(&["put", "k", "v"]).ok(), "OK\n");
    let j = s.etcdctl(&["endpoint", "status", "-w", "json"]).json();
    let arr = j.as_array().expect("endpoint status -w json is an array");
    assert_eq!(arr.len(), 1, "{j}");
    check_status(&arr[0], &s.client_url());
    assert_eq!(arr[0]["Status"]["header"]["revision"], 2, "{j}");
    // A new member bootstraps in term 1 and holds its first election in term 2.
    assert_eq!(arr[0]["Status"]["raftTerm"], 2, "{j}");
}

#[test]
fn endpoint_status_table() {
    let s = Server::start();
    let j = s.etcdctl(&["endpoint", "status", "-w", "json"]).json();
    let member_id = check_status(&j[0], &s.client_url());
    // The simple format: endpoint, member id in hex, version, db size, is leader,
    // is learner, raft term, raft index, raft applied index, errors.
    let out = s.etcdctl(&["endpoint", "status"]);
    let line = out.ok().trim_end();
    let fields: Vec<&str> = line.split(", ").collect();
    assert_eq!(fields[0], s.client_url(), "{line}");
    assert_eq!(fields[1], format!("{member_id:x}"), "{line}");
    assert!(fields[2].starts_with("3.4."), "{line}");
    assert_eq!(fields[4], "true", "leader: {line}");
    assert_eq!(fields[5], "false", "learner: {line}");
}

#[test]
fn endpoint_health() {
    let s = Server::start();
    let out = s.etcdctl(&["endpoint", "health"]);
    out.ok();
    // etcdctl 3.4 prints the health line on stderr.
    let prefix = format!(
        "{} is healthy: successfully committed proposal: took = ",
        s.client_url()
    );
    assert!(
        out.stderr.starts_with(&prefix),
        "endpoint health said: {:?}",
        out.stderr
    );
    let j = s.etcdctl(&["endpoint", "health", "-w", "json"]).json();
    assert_eq!(j.as_array().map(Vec::len), Some(1), "{j}");
    assert_eq!(j[0]["endpoint"], s.client_url().as_str(), "{j}");
    assert_eq!(j[0]["health"], true, "{j}");
}

#[test]
fn endpoint_status_and_health_cluster() {
    let s = Server::start();
    // `--cluster` first lists the members (on a connection to the given endpoint), then
    // dials each advertised client URL, again with the scheme in the authority.
    let j = s
        .etcdctl(&["endpoint", "status", "--cluster", "-w", "json"])
        .json();
    let arr = j.as_array().expect("endpoint status -w json is an array");
    assert_eq!(arr.len(), 1, "{j}");
    let member_id = check_status(&arr[0], &s.client_url());

    let members = s.etcdctl(&["member", "list", "-w", "json"]).json();
    assert_eq!(
        members["members"][0]["ID"].as_u64(),
        Some(member_id),
        "{members}"
    );

    let j = s
        .etcdctl(&["endpoint", "health", "--cluster", "-w", "json"])
        .json();
    assert_eq!(j.as_array().map(Vec::len), Some(1), "{j}");
    assert_eq!(j[0]["endpoint"], s.client_url().as_str(), "{j}");
    assert_eq!(j[0]["health"], true, "{j}");
}

#[test]
fn endpoint_status_with_and_without_scheme() {
    let s = Server::start();
    let url = s.client_url();
    let bare = url.trim_start_matches("http://");
    // Without a scheme etcdctl sends a plain authority; both spellings must agree.
    for endpoints in [url.as_str(), bare] {
        let out = etcdctl_at(endpoints, &["endpoint", "status", "-w", "json"]);
        let j = out.json();
        check_status(&j[0], endpoints);
    }
    // Several endpoints, one server: each gets its own connection and request.
    let both = format!("{url},{bare}");
    let j = etcdctl_at(&both, &["endpoint", "status", "-w", "json"]).json();
    let arr = j.as_array().expect("an array");
    assert_eq!(arr.len(), 2, "{j}");
    check_status(&arr[0], &url);
    check_status(&arr[1], bare);
}

#[test]
fn kv_keeps_working_next_to_endpoint_commands() {
    let s = Server::start();
    for i in 0..3 {
        let value = format!("v{i}");
        assert_eq!(s.etcdctl(&["put", "key", &value]).ok(), "OK\n");
        s.etcdctl(&["endpoint", "status"]).ok();
        assert_eq!(s.etcdctl(&["get", "key"]).ok(), format!("key\n{value}\n"));
    }
}

/// `etcdctl defrag` succeeds with etcd's line (detcd has nothing to rewrite: sled compacts
/// itself), and the member keeps serving afterwards.
#[test]
fn defrag_finishes() {
    let s = Server::start();
    s.etcdctl(&["put", "k", "v"]).ok();
    let url = s.client_url();
    let out = s.etcdctl(&["defrag"]);
    assert_eq!(
        out.ok().trim(),
        format!("Finished defragmenting etcd member[{url}]")
    );
    let out = s.etcdctl(&["defrag", "--cluster"]);
    assert_eq!(
        out.ok().trim(),
        format!("Finished defragmenting etcd member[{url}]")
    );
    let got = s.etcdctl(&["get", "k", "--print-value-only"]);
    assert_eq!(got.ok().trim(), "v");
}

/// Maintenance.Hash answers a hash with a header at the current revision, stable while
/// nothing is written and changed by a write.
#[tokio::test]
async fn hash_follows_writes() {
    let s = Server::start();
    let mut c = s.client().await;
    c.put("a", "1", None).await.expect("put");
    let h1 = c.maintenance_client().hash().await.expect("hash");
    let h1_again = c.maintenance_client().hash().await.expect("hash");
    assert_eq!(h1.hash(), h1_again.hash());
    let header = h1.header().expect("header");
    assert_eq!(header.revision(), 2);
    assert_ne!(header.member_id(), 0);
    c.put("b", "2", None).await.expect("put");
    let h2 = c.maintenance_client().hash().await.expect("hash");
    assert_ne!(h1.hash(), h2.hash());
}
