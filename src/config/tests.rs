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

#[test]
fn flag_forms() {
    let c = run(&[
        "--name",
        "n1",
        "-snapshot-count=5",
        "--max-txn-ops=7",
        "-heartbeat-interval",
        "50",
    ]);
    assert_eq!(c.name, "n1");
    assert_eq!(c.data_dir, "n1.etcd");
    assert_eq!(c.snapshot_count, 5);
    assert_eq!(c.max_txn_ops, 7);
    assert_eq!(c.heartbeat_interval_ms, 50);
    // `--name` alone implies a one-member cluster under that name.
    assert_eq!(c.initial_cluster, "n1=http://localhost:2380");
    let c = run(&[
        "--backend-batch-interval",
        "10ms",
        "--quota-backend-bytes",
        "-1",
    ]);
    assert_eq!(c.backend_batch_interval, Duration::from_millis(10));
    assert_eq!(c.quota_backend_bytes, -1);
}

#[test]
fn booleans() {
    assert!(run(&["--enable-v2"]).enable_v2);
    assert!(run(&["-enable-v2=true"]).enable_v2);
    assert!(!run(&["--strict-reconfig-check=false"]).strict_reconfig_check);
    assert!(run(&["--force-new-cluster=T"]).force_new_cluster);
    // Go never consumes a separate argument for a switch.
    assert_eq!(
        err(&["--enable-v2", "false"]).to_string(),
        "'false' is not a valid flag"
    );
    assert_eq!(
        err(&["--enable-v2=maybe"]).to_string(),
        "invalid boolean value \"maybe\" for -enable-v2: parse error"
    );
    assert_eq!(
        err(&["--enable-v2="]).to_string(),
        "invalid boolean value \"\" for -enable-v2: parse error"
    );
}

#[test]
fn syntax_errors_match_etcd() {
    let cases: &[(&[&str], &str)] = &[
        (&["--snapshot-count", "abc"], "invalid value \"abc\" for flag -snapshot-count: parse error"),
        (&["--initial-cluster-state", "bogus"], "invalid value \"bogus\" for flag -initial-cluster-state: invalid value"),
        (&["--listen-client-urls", "foo"], "invalid value \"foo\" for flag -listen-client-urls: URL scheme must be http, https, unix, or unixs: foo"),
        (&["--listen-client-urls", "http://a"], "invalid value \"http://a\" for flag -listen-client-urls: URL address does not have the form \"host:port\": http://a"),
        (&["--listen-client-urls", "http://a:2379/path"], "invalid value \"http://a:2379/path\" for flag -listen-client-urls: URL must not contain a path: http://a:2379/path"),
        (&["--bogus"], "flag provided but not defined: -bogus"),
        (&["-bogus"], "flag provided but not defined: -bogus"),
        (&["--name"], "flag needs an argument: -name"),
        (&["---name"], "bad flag syntax: ---name"),
        (&["--heartbeat-interval", "-5"], "invalid value \"-5\" for flag -heartbeat-interval: parse error"),
        (&["--max-request-bytes", "1.5"], "invalid value \"1.5\" for flag -max-request-bytes: parse error"),
        (&["--snapshot-count", "99999999999999999999999"], "invalid value \"99999999999999999999999\" for flag -snapshot-count: value out of range"),
        (&["--grpc-keepalive-min-time", "abc"], "invalid value \"abc\" for flag -grpc-keepalive-min-time: parse error"),
        (&["--backend-batch-interval", "3"], "invalid value \"3\" for flag -backend-batch-interval: parse error"),
        (&["--proxy", "bogus"], "invalid value \"bogus\" for flag -proxy: invalid value"),
        (&["--discovery-fallback", "x"], "invalid value \"x\" for flag -discovery-fallback: invalid value"),
        (&["--max-concurrent-streams", "abc"], "invalid value \"abc\" for flag -max-concurrent-streams: strconv.ParseUint: parsing \"abc\": invalid syntax"),
    ];
    for (input, message) in cases {
        let e = err(input);
        assert_eq!(e.to_string(), *message, "{input:?}");
        assert_eq!(e.exit_code(), 2, "{input:?}");
        assert!(e.report().starts_with(message) && e.report().contains("etcd [flags]"));
    }
}

#[test]
fn validation_errors_match_etcd() {
    let cases: &[(&[&str], &str)] = &[
        (&["extra"], "'extra' is not a valid flag"),
        (&["--", "foo"], "'foo' is not a valid flag"),
        (&["--logger", "foo"], "unknown logger option \"foo\""),
        (&["--log-level", "nope"], "unknown level \"nope\""),
        (&["--auto-compaction-mode", "foo"], "unknown auto-compaction-mode \"foo\""),
        (&["--heartbeat-interval", "0"], "--heartbeat-interval must be >0 (set to 0ms)"),
        (&["--heartbeat-interval", "300"], "--election-timeout[1000ms] should be at least as 5 times as --heartbeat-interval[300ms]"),
        (&["--election-timeout", "60000"], "--election-timeout[60000ms] is too long, and should be set less than 50000ms"),
        (&["--listen-client-urls", "http://:2379"], "expected IP in URL for binding (http://:2379)"),
        (&["--listen-client-urls", "http://example.com:2379", "--advertise-client-urls", "http://a:1"], "expected IP in URL for binding (http://example.com:2379)"),
        (&["--listen-client-urls", "unix://x:2379"], "--advertise-client-urls is required when --listen-client-urls is set explicitly"),
        (&["--initial-advertise-peer-urls", "http://:2380"], "--initial-advertise-peer-urls \"http://:2380\" must be \"host:port\" (unexpected empty host (http://:2380))"),
        (&["--log-outputs", "stderr,stdout"], "--logger=capnslog supports only 1 value in '--log-outputs', got [\"stderr\" \"stdout\"]"),
        (&["--logger", "zap", "--log-outputs", "default,stdout"], "multi logoutput for \"default\" is not supported yet"),
        (&["--discovery", "http://d/x", "--initial-cluster", "a=http://a:1"], "multiple discovery or bootstrap flags are set. Choose one of \"initial-cluster\", \"discovery\" or \"discovery-srv\""),
        (&["--experimental-enable-lease-checkpoint-persist"], "setting experimental-enable-lease-checkpoint-persist requires experimental-enable-lease-checkpoint"),
    ];
    for (input, message) in cases {
        let e = err(input);
        assert_eq!(e.to_string(), *message, "{input:?}");
        assert_eq!(e.exit_code(), 1, "{input:?}");
    }
    let report = err(&["--listen-client-urls", "http://127.0.0.1:2379"]).report();
    assert!(report.contains("error verifying flags, --advertise-client-urls is required"));
    assert!(report.contains("must advertise accessible url(s)"));
}

#[test]
fn urls_are_parsed_sorted_and_deduplicated() {
    let c = run(&[
        "--listen-client-urls",
        "http://127.0.0.2:2379,http://127.0.0.1:2379,http://127.0.0.1:2379",
        "--advertise-client-urls",
        "http://[::1]:2379",
    ]);
    assert_eq!(c.listen_client_urls.len(), 2);
    assert_eq!(
        c.listen_client_urls[0].socket_addr_string(),
        "127.0.0.1:2379"
    );
    assert_eq!(
        c.advertise_client_urls[0].socket_addr_string(),
        "[::1]:2379"
    );
}

#[test]
fn help_and_version() {
    for flag in ["-h", "--help", "-help", "--h"] {
        let Ok(Parsed::Help(text)) = parse(&[flag]) else {
            panic!("{flag}")
        };
        assert!(text.starts_with("Usage:\n\n  etcd [flags]"));
    }
    assert_eq!(parse(&["--version"]), Ok(Parsed::Version));
    assert_eq!(parse(&["-version"]), Ok(Parsed::Version));
    // A syntax error before -h wins, as in Go.
    assert!(parse(&["--bogus", "-h"]).is_err());
}

#[test]
fn help_lists_every_flag_and_marks_unimplemented() {
    let help = Config::help();
    for spec in flags::FLAGS {
        assert!(
            help.contains(&format!("  --{} ", spec.name)),
            "{}",
            spec.name
        );
    }
    for name in NOT_YET_IMPLEMENTED.iter().map(|n| n.flag) {
        assert!(flags::lookup(name).is_some(), "{name} is not a flag");
        let start = help.find(&format!("  --{name} ")).unwrap();
        let rest = &help[start..];
        let next = rest[3..].find("\n  --").map_or(rest.len(), |i| i + 3);
        assert!(rest[..next].contains(NOT_IMPLEMENTED_MARK), "{name}");
    }
    assert!(
        !help[help.find("  --name ").unwrap()..help.find("  --data-dir").unwrap()]
            .contains(NOT_IMPLEMENTED_MARK)
    );
}

#[test]
fn help_matches_real_etcd_layout() {
    // Strip detcd's additions and compare with `etcd --help` (usage on
    // stderr followed by flags on stdout). The real etcd 3.4.23 must be on PATH: without
    // it there is nothing to compare with, and that is a failure, not a pass.
    let out = std::process::Command::new("etcd")
        .arg("--help")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "the real etcd 3.4.23 must be on PATH to compare `--help` with it ({e}); \
                 install it with `bash ci/install-test-deps.sh`"
            )
        });
    let real = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let hidden = [
        "enable-grpc-gateway",
        "log-output",
        "experimental-enable-lease-checkpoint-persist",
        "unsafe-no-fsync",
        // etcd 3.5's flag, which detcd accepts ahead of 3.4.
        "experimental-snapshot-catchup-entries",
    ];
    let mut ours = String::new();
    let mut skip = false;
    for line in Config::help().lines() {
        if let Some(rest) = line.strip_prefix("  --") {
            skip = hidden.contains(&rest.split(' ').next().unwrap_or(""));
        } else if !line.starts_with("    ") {
            skip = false;
        }
        if skip || line.trim() == NOT_IMPLEMENTED_MARK {
            continue;
        }
        ours.push_str(line);
        ours.push('\n');
    }
    assert_eq!(ours.trim_end(), real.trim_end());
}

#[test]
fn env_vars_fill_in_flags() {
    let Ok(Parsed::Run(c)) = parse_env(
        &["--name", "n1"],
        &[
            ("ETCD_SNAPSHOT_COUNT", "42"),
            ("ETCD_ENABLE_V2", "true"),
            ("ETCD_LISTEN_CLIENT_URLS", "http://127.0.0.1:2379"),
            ("ETCD_ADVERTISE_CLIENT_URLS", "http://127.0.0.1:2379"),
            ("ETCD_BOGUS", "1"),
            ("PATH", "/bin"),
            ("ETCD_WAL_DIR", ""),
        ],
    ) else {
        panic!()
    };
    assert_eq!(c.snapshot_count, 42);
    assert!(c.enable_v2);
    assert_eq!(c.listen_client_urls, vec![url("http://127.0.0.1:2379")]);
    assert!(c.notices.iter().any(|n| n.level == NoticeLevel::Warn
        && n.message == "unrecognized environment variable ETCD_BOGUS=1"));
    assert!(c
        .notices
        .iter()
        .any(|n| n.message == "recognized and used environment variable ETCD_SNAPSHOT_COUNT=42"));
    // Listening via the environment also drops the default advertise URL.
    let e = parse_env(&[], &[("ETCD_LISTEN_CLIENT_URLS", "http://127.0.0.1:2379")]).unwrap_err();
    assert_eq!(e.to_string(), ERR_UNSET_ADVERTISE_CLIENT_URLS);
}

#[test]
fn env_errors_match_etcd() {
    let e = parse_env(&[], &[("ETCD_SNAPSHOT_COUNT", "abc")]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid value \"abc\" for ETCD_SNAPSHOT_COUNT: parse error"
    );
    assert_eq!(e.exit_code(), 1);
    // etcd 3.4 refuses to start when a flag shadows its variable.
    let e = parse_env(&["--name", "y"], &[("ETCD_NAME", "x")]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "conflicting environment variable \"ETCD_NAME\" is shadowed by corresponding command-line flag (either unset environment variable or disable flag)"
    );
    assert_eq!(e.exit_code(), 1);
}

fn write_yaml(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("etcd.yml");
    std::fs::write(&path, text).unwrap();
    (dir, path.to_string_lossy().into_owned())
}

#[test]
fn config_file_is_the_only_source() {
    let (_dir, path) = write_yaml(
        "name: infra1\n\
         data-dir: /var/lib/etcd\n\
         snapshot-count: 5000\n\
         heartbeat-interval: 200\n\
         election-timeout: 2000\n\
         listen-client-urls: http://127.0.0.1:2379,http://10.0.0.1:2379\n\
         advertise-client-urls: http://10.0.0.1:2379\n\
         initial-cluster-state: existing\n\
         enable-v2: true\n\
         backend-batch-interval: 10000000\n\
         log-outputs: [stderr]\n\
         logger: zap\n\
         cipher-suites: [TLS_A, TLS_B]\n\
         client-transport-security:\n  cert-file: /c.pem\n  client-cert-auth: true\n\
         peer-transport-security:\n  auto-tls: true\n\
         proxy: readonly\n",
    );
    let Ok(Parsed::Run(c)) = parse_env(
        &["--config-file", &path, "--name", "ignored"],
        &[("ETCD_SNAPSHOT_COUNT", "1")],
    ) else {
        panic!()
    };
    assert_eq!(c.name, "infra1");
    assert_eq!(c.data_dir, "/var/lib/etcd");
    assert_eq!(c.snapshot_count, 5000);
    assert_eq!(c.heartbeat_interval_ms, 200);
    assert_eq!(c.listen_client_urls.len(), 2);
    assert_eq!(c.initial_cluster_state, ClusterState::Existing);
    assert!(c.enable_v2);
    assert_eq!(c.backend_batch_interval, Duration::from_millis(10));
    assert_eq!(c.log_outputs, vec!["stderr"]);
    assert_eq!(c.logger, Logger::Zap);
    assert_eq!(c.cipher_suites, vec!["TLS_A", "TLS_B"]);
    assert_eq!(c.cert_file, "/c.pem");
    assert!(c.client_cert_auth);
    assert!(c.peer_auto_tls);
    assert_eq!(c.proxy, ProxyMode::Readonly);
    assert_eq!(c.config_file.as_deref(), Some(path.as_str()));
    // The environment variable names a config file too.
    let Ok(Parsed::Run(c)) = parse_env(&[], &[("ETCD_CONFIG_FILE", &path)]) else {
        panic!()
    };
    assert_eq!(c.name, "infra1");
}

#[test]
fn config_file_errors_match_etcd() {
    let cases: &[(&str, &str)] = &[
        ("name: 123\n", "error unmarshaling JSON: while decoding JSON: json: cannot unmarshal number into Go struct field configYAML.name of type string"),
        ("snapshot-count: -1\n", "error unmarshaling JSON: while decoding JSON: json: cannot unmarshal number -1 into Go struct field configYAML.snapshot-count of type uint64"),
        ("log-outputs: stderr\n", "error unmarshaling JSON: while decoding JSON: json: cannot unmarshal string into Go struct field configYAML.log-outputs of type []string"),
        ("initial-cluster-state: bogus\n", "unexpected clusterState \"bogus\""),
        ("listen-client-urls: foo\n", "unexpected error setting up listen-client-urls: URL scheme must be http, https, unix, or unixs: foo"),
        ("proxy: bogus\n", "unexpected error setting up proxyFlag: invalid value"),
    ];
    for (text, message) in cases {
        let (_dir, path) = write_yaml(text);
        let e = parse(&["--config-file", &path]).unwrap_err();
        assert_eq!(e.to_string(), *message, "{text}");
        assert_eq!(e.exit_code(), 1);
    }
    let (_dir, path) = write_yaml(": : :\n");
    let e = parse(&["--config-file", &path]).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("error converting YAML to JSON: yaml: "),
        "{e}"
    );
    let e = parse(&["--config-file", "/nonexistent/etcd.yml"]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "open /nonexistent/etcd.yml: no such file or directory"
    );
}

#[test]
fn initial_cluster_members_merge_duplicates() {
    let c = run(&[
        "--name",
        "n1",
        "--initial-advertise-peer-urls",
        "http://10.0.0.1:2380",
        "--initial-cluster",
        "n1=http://10.0.0.1:2380,n2=http://10.0.0.2:2380,n2=http://10.0.0.2:2381",
    ]);
    let members = c.initial_cluster_members().unwrap();
    assert_eq!(members.len(), 2);
    assert_eq!(members[0].0, "n1");
    assert_eq!(
        members[1].1,
        vec![url("http://10.0.0.2:2380"), url("http://10.0.0.2:2381")]
    );
    c.verify_bootstrap().unwrap();
    let mut bad = c.clone();
    bad.initial_cluster = "n1=foo".into();
    assert!(bad.initial_cluster_members().is_err());
}

#[test]
fn verify_bootstrap_messages_match_etcd() {
    let base = |cluster: &str, name: &str, ap: &str| {
        run(&[
            "--name",
            name,
            "--initial-cluster",
            cluster,
            "--initial-advertise-peer-urls",
            ap,
        ])
    };
    let c = base("n1=http://127.0.0.1:2381", "n1", "http://127.0.0.1:2380");
    assert_eq!(
        c.verify_bootstrap().unwrap_err().to_string(),
        "--initial-cluster has n1=http://127.0.0.1:2381 but missing from --initial-advertise-peer-urls=http://127.0.0.1:2380 (resolved urls: \"http://127.0.0.1:2380\" != \"http://127.0.0.1:2381\")"
    );
    let c = base("n1=http://127.0.0.1:2380", "n2", "http://127.0.0.1:2380");
    assert_eq!(
        c.verify_bootstrap().unwrap_err().to_string(),
        "couldn't find local name \"n2\" in the initial cluster configuration"
    );
    let c = base(
        "n1=http://127.0.0.1:2380,n1=http://127.0.0.1:2381",
        "n1",
        "http://127.0.0.1:2380",
    );
    assert_eq!(
        c.verify_bootstrap().unwrap_err().to_string(),
        "--initial-cluster has n1=http://127.0.0.1:2381 but missing from --initial-advertise-peer-urls=http://127.0.0.1:2380 (len([\"http://127.0.0.1:2380\"]) != len([\"http://127.0.0.1:2380\" \"http://127.0.0.1:2381\"]))"
    );
    let c = base(
        "n1=http://127.0.0.1:2380",
        "n1",
        "http://127.0.0.1:2380,http://127.0.0.1:2381",
    );
    assert_eq!(
        c.verify_bootstrap().unwrap_err().to_string(),
        "--initial-advertise-peer-urls has http://127.0.0.1:2381 but missing from --initial-cluster=n1=http://127.0.0.1:2380,n1=http://127.0.0.1:2381"
    );
}

#[test]
fn log_config_follows_flags() {
    let c = run(&[
        "--logger",
        "zap",
        "--log-level",
        "warn",
        "--log-outputs",
        "stdout,/tmp/x.log",
    ]);
    let lc = c.log_config();
    assert_eq!(lc.logger, Logger::Zap);
    assert_eq!(lc.level, LogLevel::Warn);
    assert_eq!(
        lc.outputs,
        vec![LogOutput::File("/tmp/x.log".into()), LogOutput::Stdout]
    );
    assert_eq!(run(&["--debug"]).log_config().level, LogLevel::Debug);
}

#[test]
fn ignored_and_unsupported() {
    let c = run(&["-v"]);
    assert!(c
        .notices
        .iter()
        .any(|n| n.message.contains("\"-v\" is no longer supported")));
    assert_eq!(parse(&["gateway"]).unwrap_err().exit_code(), 1);
}

#[test]
fn never_panics_on_odd_input() {
    // Odd input is refused, never a panic, with the message and exit status the real
    // etcd 3.4.23 gives for it (each case was run through /usr/bin/etcd).
    let cases: &[(&[&str], &str, i32)] = &[
        (&["-"], "'-' is not a valid flag", 1),
        (&["="], "'=' is not a valid flag", 1),
        (&["--="], "bad flag syntax: --=", 2),
        (&["-=x"], "bad flag syntax: -=x", 2),
        (
            &["--listen-client-urls", "http://[::1"],
            "invalid value \"http://[::1\" for flag -listen-client-urls: parse \"http://[::1\": missing ']' in host",
            2,
        ),
        (
            &["--listen-client-urls", "http://\u{e9}:1"],
            "expected IP in URL for binding (http://%C3%A9:1)",
            1,
        ),
        (
            &["--election-timeout", "18446744073709551615"],
            "--election-timeout[18446744073709551615ms] is too long, and should be set less than 50000ms",
            1,
        ),
        (
            &["--heartbeat-interval", "18446744073709551615"],
            "--election-timeout[1000ms] should be at least as 5 times as --heartbeat-interval[18446744073709551615ms]",
            1,
        ),
        (
            &["--grpc-keepalive-min-time", "9999999999h"],
            "invalid value \"9999999999h\" for flag -grpc-keepalive-min-time: parse error",
            2,
        ),
    ];
    let mut differences = Vec::new();
    for (input, message, code) in cases {
        match parse(input) {
            Err(e) if e.to_string() == *message && e.exit_code() == *code => {}
            Err(e) => differences.push(format!(
                "{input:?}: detcd says {:?} (exit {}), etcd {message:?} (exit {code})",
                e.to_string(),
                e.exit_code()
            )),
            Ok(other) => differences.push(format!("{input:?}: accepted ({other:?})")),
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));
    // etcd's URL flags allow "" and then keep their default, so etcd refuses
    // `--listen-client-urls ""` only for the missing advertise URL, with exit status 1
    // (checked with etcd 3.4.23), and with `--advertise-client-urls` it listens on the
    // default URL.
    let e = err(&["--listen-client-urls", ""]);
    assert_eq!(
        e.to_string(),
        "--advertise-client-urls is required when --listen-client-urls is set explicitly"
    );
    assert_eq!(e.exit_code(), 1);
    let c = run(&[
        "--listen-client-urls",
        "",
        "--advertise-client-urls",
        "http://127.0.0.1:2379",
    ]);
    assert_eq!(c.listen_client_urls, Config::default().listen_client_urls);
    for flag in URL_FLAGS.iter().filter(|f| !f.contains("client")) {
        let c = run(&[&format!("--{flag}"), ""]);
        assert_eq!(c, run(&[]), "--{flag} \"\" keeps the default");
    }
    // etcd accepts this `--initial-cluster` among the flags and refuses it when it sets
    // up the cluster: a fatal "error setting up initial cluster" and exit status 1.
    let c = run(&["--initial-cluster", "=,==,a"]);
    let e = c.initial_cluster_members().unwrap_err();
    assert_eq!(
        e.to_string(),
        "error setting up initial cluster: URL scheme must be http, https, unix, or unixs: "
    );
    assert_eq!(e.exit_code(), 1);
}

/// Fields read inside this module by a method the rest of detcd calls, with that method:
/// such a field counts as used when the method is called outside `src/config`.
const READ_THROUGH_METHODS: &[(&str, &str)] = &[
    ("log_outputs", "log_config"),
    ("log_level", "log_config"),
    ("debug", "log_config"),
    ("logger", "log_config"),
    ("initial_cluster", "initial_cluster_members"),
];

/// The names of `Config`'s public fields, read from this module's source.
fn config_field_names() -> Vec<String> {
    let src = include_str!("mod.rs");
    let start = src.find("pub struct Config {").expect("struct Config");
    let body = &src[start..];
    let body = &body[..body.find("\n}\n").expect("end of struct Config")];
    body.lines()
        .filter_map(|l| l.trim().strip_prefix("pub "))
        .filter_map(|l| l.split_once(':'))
        .map(|(name, _)| name.to_string())
        .filter(|name| !name.contains(' '))
        .collect()
}

/// Every `.rs` file under `dir`, recursively, except those under `skip`.
fn rust_sources(dir: &std::path::Path, skip: &std::path::Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.starts_with(skip) {
            continue;
        }
        if path.is_dir() {
            rust_sources(&path, skip, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(std::fs::read_to_string(&path).unwrap_or_default());
        }
    }
}

/// Whether `text` reads `.name` as a whole identifier.
fn mentions_member(text: &str, name: &str) -> bool {
    let needle = format!(".{name}");
    text.match_indices(&needle).any(|(i, _)| {
        let after = text[i + needle.len()..].chars().next();
        !after.is_some_and(|c| c.is_alphanumeric() || c == '_')
    })
}

/// The flag a field holds: its name in kebab case without the unit suffix.
fn flag_of_field(field: &str) -> String {
    let base = field
        .strip_suffix("_ms")
        .or_else(|| field.strip_suffix("_secs"))
        .unwrap_or(field);
    base.replace('_', "-")
}

#[test]
fn every_config_field_is_used_or_listed() {
    // A flag that is parsed and then read by nothing is a promise detcd does not keep:
    // it must either be wired to its feature or be listed as not implemented (marked in
    // --help, warned about at start).
    let src_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut sources = Vec::new();
    rust_sources(&src_dir, &src_dir.join("config"), &mut sources);
    assert!(
        sources.len() > 20,
        "found too few sources under {src_dir:?}"
    );
    let used = |name: &str| sources.iter().any(|s| mentions_member(s, name));
    let fields = config_field_names();
    assert!(fields.len() > 60, "found too few Config fields: {fields:?}");
    let mut neither = Vec::new();
    for field in &fields {
        let through = READ_THROUGH_METHODS
            .iter()
            .filter(|(f, _)| f == field)
            .any(|(_, method)| used(method));
        let listed = Config::not_yet_implemented(&flag_of_field(field)).is_some();
        if !used(field) && !through && !listed {
            neither.push(field.clone());
        }
    }
    assert!(
        neither.is_empty(),
        "Config fields read nowhere outside src/config and not in NOT_YET_IMPLEMENTED: {neither:?}"
    );
    // The list holds only real flags, and none twice.
    let mut seen = BTreeSet::new();
    for n in NOT_YET_IMPLEMENTED {
        assert!(flags::lookup(n.flag).is_some(), "{} is not a flag", n.flag);
        assert!(seen.insert(n.flag), "{} is listed twice", n.flag);
        assert!(!n.why.is_empty(), "{} has no reason", n.flag);
    }
}

#[test]
fn listed_fields_are_not_silently_used() {
    // A listed flag whose field is read outside src/config has probably been implemented:
    // then it must leave the list, so that --help stops calling it unimplemented.
    let src_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut sources = Vec::new();
    rust_sources(&src_dir, &src_dir.join("config"), &mut sources);
    for field in config_field_names() {
        let flag = flag_of_field(&field);
        if Config::not_yet_implemented(&flag).is_some() {
            assert!(
                !sources.iter().any(|s| mentions_member(s, &field)),
                "--{flag} is listed as not implemented, but Config::{field} is read outside src/config"
            );
        }
    }
}

#[test]
fn a_given_unimplemented_flag_is_warned_about_once() {
    let cfg = run(&["--max-wals", "3", "--max-wals", "4"]);
    let warnings: Vec<&Notice> = cfg
        .notices
        .iter()
        .filter(|n| n.message.starts_with("--max-wals "))
        .collect();
    assert_eq!(warnings.len(), 1, "{:?}", cfg.notices);
    assert_eq!(warnings[0].level, NoticeLevel::Warn);
    assert!(warnings[0].message.contains("not implemented by detcd"));
    // From the environment and from a config file too.
    let Ok(Parsed::Run(cfg)) = parse_env(&[], &[("ETCD_ENABLE_PPROF", "true")]) else {
        panic!("ETCD_ENABLE_PPROF should parse");
    };
    assert!(cfg
        .notices
        .iter()
        .any(|n| n.message.starts_with("--enable-pprof ")));
    let mut from_file = Config::default();
    yaml::apply_str(&mut from_file, "max-snapshots: 3\n").unwrap();
    assert!(from_file
        .notices
        .iter()
        .any(|n| n.message.starts_with("--max-snapshots ")));
    // Flags that work are not warned about.
    let cfg = run(&["--cors", "http://a.example:80", "--pre-vote=true"]);
    assert!(!cfg
        .notices
        .iter()
        .any(|n| n.message.contains("not implemented")));
}
