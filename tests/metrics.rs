//! `/metrics`, `/health` and `/version` on the client port and on
//! `--listen-metrics-urls`: etcd's metric names with their types, values that move as
//! the member works, and etcd 3.4's health semantics (an alarm makes it unhealthy).

mod common;

use common::http::{enc as b64, get, post};
use common::{free_port, Server};

/// The value of the sample `name` (without labels) on a metrics page.
fn sample(page: &str, name: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no sample {name}"))
        .trim()
        .parse()
        .expect("a number")
}

const FAMILIES: &[(&str, &str)] = &[
    ("etcd_server_has_leader", "gauge"),
    ("etcd_server_leader_changes_seen_total", "counter"),
    ("etcd_server_proposals_committed_total", "gauge"),
    ("etcd_server_proposals_applied_total", "gauge"),
    ("etcd_server_proposals_pending", "gauge"),
    ("etcd_server_proposals_failed_total", "counter"),
    ("etcd_mvcc_db_total_size_in_bytes", "gauge"),
    ("etcd_disk_wal_fsync_duration_seconds", "histogram"),
    ("etcd_disk_backend_commit_duration_seconds", "histogram"),
    ("etcd_debugging_mvcc_keys_total", "gauge"),
    ("grpc_server_started_total", "counter"),
    ("grpc_server_handled_total", "counter"),
];

#[test]
fn metrics_have_etcds_names_and_move_with_writes() {
    let metrics_port = free_port();
    let metrics_url = format!("http://127.0.0.1:{metrics_port}");
    let s = Server::start_with_args(&["--listen-metrics-urls", &metrics_url]);
    let url = s.client_url();
    let page = get(&url, "/metrics");
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        page.headers
    );
    for (name, kind) in FAMILIES {
        assert!(
            page.body.contains(&format!("\n# TYPE {name} {kind}\n")),
            "no `# TYPE {name} {kind}`"
        );
    }
    // The peer round-trip histograms are one per peer; a single member has no peers, and
    // etcd prints no such family then (Prometheus' Go client leaves out a vector without
    // children).
    assert!(
        !page
            .body
            .contains("etcd_network_peer_round_trip_time_seconds"),
        "a member without peers lists peer round trips"
    );
    let before = &page.body;
    assert_eq!(sample(before, "etcd_server_has_leader"), 1.0);
    assert!(sample(before, "etcd_server_leader_changes_seen_total") >= 1.0);
    assert!(sample(before, "etcd_disk_wal_fsync_duration_seconds_count") >= 1.0);
    let committed = sample(before, "etcd_server_proposals_committed_total");
    let applied = sample(before, "etcd_server_proposals_applied_total");
    for i in 0..5 {
        let put = post(
            &url,
            "/v3/kv/put",
            &format!(r#"{{"key":"{}","value":"dg=="}}"#, b64(&format!("k{i}"))),
        );
        assert_eq!(put.status, 200, "{}", put.body);
    }
    // The metrics listener serves the same registry. Backend commits are batched (etcd
    // commits every --backend-batch-interval, 100 ms), so the page is read again until
    // the commits of these puts show, for up to 10 s.
    let commits = |page: &str| sample(page, "etcd_disk_backend_commit_duration_seconds_count");
    let waited = std::time::Instant::now();
    let after = loop {
        let page = get(&metrics_url, "/metrics");
        assert_eq!(page.status, 200);
        if commits(&page.body) > commits(before)
            || waited.elapsed() > std::time::Duration::from_secs(10)
        {
            break page.body;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    println!("backend commits showed after {:?}", waited.elapsed());
    let after = &after;
    assert!(sample(after, "etcd_server_proposals_committed_total") >= committed + 5.0);
    assert!(sample(after, "etcd_server_proposals_applied_total") >= applied + 5.0);
    assert_eq!(sample(after, "etcd_debugging_mvcc_keys_total"), 5.0);
    assert!(sample(after, "etcd_mvcc_db_total_size_in_bytes") > 0.0);
    assert!(
        commits(after) > commits(before),
        "no backend commit counted for the puts"
    );
    let put_ok = "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"}";
    assert!(
        sample(after, put_ok) >= 5.0,
        "gateway puts are gRPC calls too"
    );
    assert!(
        after.contains("grpc_server_started_total{grpc_method=\"Watch\",grpc_service=\"etcdserverpb.Watch\",grpc_type=\"bidi_stream\"}"),
        "every method is registered up front"
    );
    let health = get(&metrics_url, "/health");
    assert_eq!(
        (health.status, health.body.as_str()),
        (200, "{\"health\":\"true\"}")
    );
    assert_eq!(get(&metrics_url, "/v3/kv/range").status, 404);
}

#[test]
fn health_and_version_follow_etcd() {
    let s = Server::start();
    let url = s.client_url();
    let v = get(&url, "/version");
    assert_eq!(
        (v.status, v.body.as_str()),
        (200, "{\"etcdserver\":\"3.4.23\",\"etcdcluster\":\"3.4.0\"}")
    );
    assert_eq!(get(&url, "/health").body, "{\"health\":\"true\"}");
    // An alarm makes the member unhealthy, unless excluded, as in etcd 3.4.
    let id = post(&url, "/v3/maintenance/status", "{}").json()["header"]["member_id"]
        .as_str()
        .expect("member id")
        .to_string();
    let raise = post(
        &url,
        "/v3/maintenance/alarm",
        &format!(r#"{{"action":"ACTIVATE","memberID":"{id}","alarm":"NOSPACE"}}"#),
    );
    assert_eq!(raise.status, 200, "{}", raise.body);
    let h = get(&url, "/health");
    assert_eq!(
        (h.status, h.body.as_str()),
        (503, "{\"health\":\"false\"}\n")
    );
    assert_eq!(get(&url, "/health?exclude=NOSPACE").status, 200);
    let clear = post(
        &url,
        "/v3/maintenance/alarm",
        &format!(r#"{{"action":"DEACTIVATE","memberID":"{id}","alarm":"NOSPACE"}}"#),
    );
    assert_eq!(clear.status, 200, "{}", clear.body);
    assert_eq!(get(&url, "/health").status, 200);
}
