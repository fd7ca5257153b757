//! Tests for command-line, environment and config-file parsing. Expected
//! messages were taken from running the real etcd 3.4.23 binary.

use super::*;

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn parse_env(list: &[&str], env: &[(&str, &str)]) -> Result<Parsed, ConfigError> {
    Config::from_args_and_env(
        args(list),
        env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
}

fn parse(list: &[&str]) -> Result<Parsed, ConfigError> {
    parse_env(list, &[])
}

fn run(list: &[&str]) -> Config {
    match parse(list) {
        Ok(Parsed::Run(cfg)) => *cfg,
        other => panic!("expected Run for {list:?}, got {other:?}"),
    }
}

fn err(list: &[&str]) -> ConfigError {
    match parse(list) {
        Err(e) => e,
        other => panic!("expected error for {list:?}, got {other:?}"),
    }
}

fn url(s: &str) -> Url {
    Url::parse(s).unwrap()
}

#[test]
fn defaults_match_etcd() {
    let c = run(&[]);
    assert_eq!(c.name, "default");
    assert_eq!(c.data_dir, "default.etcd");
    assert_eq!(c.wal_dir, "");
    assert_eq!(c.snapshot_count, 100_000);
    assert_eq!(c.heartbeat_interval_ms, 100);
    assert_eq!(c.election_timeout_ms, 1000);
    assert!(c.initial_election_tick_advance);
    assert_eq!(c.listen_client_urls, vec![url("http://localhost:2379")]);
    assert_eq!(c.advertise_client_urls, vec![url("http://localhost:2379")]);
    assert_eq!(c.listen_peer_urls, vec![url("http://localhost:2380")]);
    assert_eq!(
        c.initial_advertise_peer_urls,
        vec![url("http://localhost:2380")]
    );
    assert!(c.listen_metrics_urls.is_empty());
    assert_eq!(c.initial_cluster, "default=http://localhost:2380");
    assert_eq!(c.initial_cluster_state, ClusterState::New);
    assert_eq!(c.initial_cluster_token, "etcd-cluster");
    assert_eq!(c.max_snapshots, 5);
    assert_eq!(c.max_wals, 5);
    assert_eq!(c.quota_backend_bytes, 0);
    assert_eq!(c.effective_quota_backend_bytes(), 2 * 1024 * 1024 * 1024);
    assert_eq!(c.max_txn_ops, 128);
    assert_eq!(c.max_request_bytes, 1_572_864);
    assert_eq!(c.max_concurrent_streams, u32::MAX);
    assert_eq!(c.grpc_keepalive_min_time, Duration::from_secs(5));
    assert_eq!(c.grpc_keepalive_interval, Duration::from_secs(7200));
    assert_eq!(c.grpc_keepalive_timeout, Duration::from_secs(20));
    assert!(c.strict_reconfig_check);
    assert!(!c.enable_v2);
    assert_eq!(c.auth_token, "simple");
    assert_eq!(c.bcrypt_cost, 10);
    assert_eq!(c.auth_token_ttl_secs, 300);
    assert_eq!(c.logger, Logger::Capnslog);
    assert_eq!(c.log_level, LogLevel::Info);
    assert_eq!(c.log_outputs, vec!["default"]);
    assert_eq!(c.auto_compaction_mode, AutoCompactionMode::Periodic);
    assert_eq!(c.auto_compaction_retention, "0");
    assert_eq!(c.election_ticks(), 10);
    assert_eq!(c.cors, vec!["*"]);
    assert!(c
        .notices
        .iter()
        .any(|n| n.message == "no data-dir provided, using default data-dir ./default.etcd"));
}
