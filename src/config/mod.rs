//! Server configuration, parsed exactly like etcd 3.4.23 parses its own.
//!
//! Operators swap the `etcd` binary for `detcd` without touching their unit
//! files, so every etcd 3.4 flag, `ETCD_*` environment variable and
//! `--config-file` YAML key is accepted with etcd's defaults, precedence and
//! error messages. The entry point is [`Config::from_args_and_env`], a pure
//! function: the binary passes `std::env::args().skip(1)` and `std::env::vars()`.
//!
//! Precedence follows etcd: if a config file is named (by `--config-file` or
//! `ETCD_CONFIG_FILE`), it is the only source and all other flags and
//! variables are ignored; otherwise command-line flags are applied first and
//! `ETCD_*` variables fill in flags that were not given. Giving the same
//! setting both ways is a fatal error in etcd 3.4, and here too.

mod flags;
mod goparse;
mod url;
mod yaml;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use self::flags::FlagKind;
pub use self::flags::{NOT_IMPLEMENTED_MARK, USAGE};
/// Go's `time.ParseDuration`, for options parsed outside this module (`--auth-token`).
pub(crate) use self::goparse::parse_duration as parse_go_duration;
use self::goparse::{format_duration, parse_bool, parse_duration, parse_int, parse_uint};
pub use self::url::Url;
use crate::logging::{LogConfig, LogLevel, LogOutput, Logger};

/// A flag detcd accepts and parses but whose feature it does not implement yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotImplemented {
    /// The flag's name, without dashes.
    pub flag: &'static str,
    /// Why it has no effect, in a sentence an operator can act on; logged at start when
    /// the flag is given.
    pub why: &'static str,
}

const fn nyi(flag: &'static str, why: &'static str) -> NotImplemented {
    NotImplemented { flag, why }
}

const DISCOVERY: &str = "detcd bootstraps only from --initial-cluster";
const AUTO_COMPACTION: &str = "detcd compacts only on request (etcdctl compact)";
const V2: &str = "detcd serves only the v3 API";
const V2_PROXY: &str = "detcd has no v2 proxy mode";
const WAL_RETENTION: &str =
    "detcd deletes WAL segments once a snapshot covers them and keeps one snapshot";
const BACKEND_BATCH: &str = "detcd commits every applied batch to its backend at once";
const LEASE_CHECKPOINT: &str =
    "detcd restarts a lease's TTL after a leader change instead of checkpointing it";

/// Flags detcd accepts and parses but whose feature it does not implement yet.
///
/// The help text marks each of them with [`NOT_IMPLEMENTED_MARK`], and a member started
/// with one of them logs a warning with its reason. Remove a flag from this list when its
/// feature lands. A test (`every_config_field_is_used_or_listed` in `tests.rs`) fails when
/// a [`Config`] field is read nowhere outside this module and its flag is not listed here,
/// so the list cannot silently go stale.
pub const NOT_YET_IMPLEMENTED: &[NotImplemented] = &[
    nyi("discovery", DISCOVERY),
    nyi("discovery-fallback", DISCOVERY),
    nyi("discovery-proxy", DISCOVERY),
    nyi("discovery-srv", DISCOVERY),
    nyi("discovery-srv-name", DISCOVERY),
    nyi("auto-compaction-retention", AUTO_COMPACTION),
    nyi("auto-compaction-mode", AUTO_COMPACTION),
    nyi("enable-v2", V2),
    nyi("experimental-enable-v2v3", V2),
    nyi("enable-pprof", "detcd serves no Go profiling endpoints"),
    nyi("proxy", V2_PROXY),
    nyi("proxy-failure-wait", V2_PROXY),
    nyi("proxy-refresh-interval", V2_PROXY),
    nyi("proxy-dial-timeout", V2_PROXY),
    nyi("proxy-write-timeout", V2_PROXY),
    nyi("proxy-read-timeout", V2_PROXY),
    nyi(
        "grpc-keepalive-min-time",
        "detcd's HTTP/2 server cannot refuse clients that ping too often",
    ),
    nyi("max-wals", WAL_RETENTION),
    nyi("max-snapshots", WAL_RETENTION),
    nyi("backend-batch-interval", BACKEND_BATCH),
    nyi("backend-batch-limit", BACKEND_BATCH),
    nyi(
        "initial-election-tick-advance",
        "a detcd member always waits a full election timeout before its first election",
    ),
    nyi("experimental-enable-lease-checkpoint", LEASE_CHECKPOINT),
    nyi(
        "experimental-enable-lease-checkpoint-persist",
        LEASE_CHECKPOINT,
    ),
    nyi(
        "log-package-levels",
        "detcd logs every package at --log-level",
    ),
    nyi(
        "experimental-compaction-batch-limit",
        "detcd compacts all revisions of a compaction in one pass",
    ),
    nyi(
        "experimental-warning-apply-duration",
        "detcd does not time individual applies",
    ),
    nyi(
        "experimental-backend-bbolt-freelist-type",
        "detcd's backend is not bbolt",
    ),
];

/// The flags that take a list of URLs (etcd's `UniqueURLs`).
const URL_FLAGS: &[&str] = &[
    "listen-peer-urls",
    "listen-client-urls",
    "listen-metrics-urls",
    "initial-advertise-peer-urls",
    "advertise-client-urls",
];

/// etcd's default `--listen-peer-urls` and `--initial-advertise-peer-urls`.
pub const DEFAULT_PEER_URL: &str = "http://localhost:2380";
/// etcd's default `--listen-client-urls` and `--advertise-client-urls`.
pub const DEFAULT_CLIENT_URL: &str = "http://localhost:2379";
/// etcd's default member name.
pub const DEFAULT_NAME: &str = "default";
/// The backend quota used when `--quota-backend-bytes` is 0 (etcd's 2 GiB default).
pub const DEFAULT_QUOTA_BACKEND_BYTES: i64 = 2 * 1024 * 1024 * 1024;
/// etcd's upper bound on `--election-timeout`.
pub const MAX_ELECTION_TIMEOUT_MS: u64 = 50_000;

/// What the command line asked for.
#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    /// Start the server with this configuration.
    Run(Box<Config>),
    /// `-h`/`--help`: print this text and exit with status 0.
    Help(String),
    /// `--version`: print the version and exit with status 0.
    Version,
}

/// A configuration error, with etcd's message text as its `Display`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Command-line syntax errors reported by Go's `flag` package (unknown
    /// flag, missing or unparsable value). etcd prints the message followed by
    /// [`USAGE`] and exits with status 2.
    #[error("{0}")]
    Syntax(String),
    /// Errors etcd reports as "error verifying flags, ... See 'etcd --help'."
    /// and exits with status 1: invalid combinations, bad `ETCD_*` values, an
    /// unreadable or malformed config file.
    #[error("{0}")]
    Invalid(String),
    /// Errors etcd reports bare, as fatal log lines, and exits with status 1:
    /// a bad URL in the config file, an environment variable shadowed by a
    /// flag, a member missing from `--initial-cluster`.
    #[error("{0}")]
    Fatal(String),
}

impl ConfigError {
    /// The process exit status etcd uses for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            ConfigError::Syntax(_) => 2,
            ConfigError::Invalid(_) | ConfigError::Fatal(_) => 1,
        }
    }

    /// The text etcd writes to stderr for this error (without capnslog's
    /// timestamp prefix), ready to print before exiting with [`Self::exit_code`].
    pub fn report(&self) -> String {
        match self {
            ConfigError::Syntax(m) => format!("{m}\n{USAGE}"),
            ConfigError::Invalid(m) => {
                let mut s = format!("etcdmain: error verifying flags, {m}. See 'etcd --help'.");
                if m == ERR_UNSET_ADVERTISE_CLIENT_URLS {
                    s.push_str("\netcdmain: When listening on specific address(es), this etcd process must advertise accessible url(s) to each connected client.");
                }
                s
            }
            ConfigError::Fatal(m) => m.clone(),
        }
    }
}

const ERR_UNSET_ADVERTISE_CLIENT_URLS: &str =
    "--advertise-client-urls is required when --listen-client-urls is set explicitly";

/// `--initial-cluster-state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClusterState {
    /// Bootstrap a new cluster (`new`, the default).
    #[default]
    New,
    /// Join an existing cluster (`existing`).
    Existing,
}

impl ClusterState {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "new" => Some(ClusterState::New),
            "existing" => Some(ClusterState::Existing),
            _ => None,
        }
    }
}

/// `--discovery-fallback`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiscoveryFallback {
    /// Become a v2 proxy when discovery fails (the default).
    #[default]
    Proxy,
    /// Exit when discovery fails.
    Exit,
}

/// `--proxy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProxyMode {
    /// Not a proxy (the default).
    #[default]
    Off,
    /// A read-only v2 proxy.
    Readonly,
    /// A v2 proxy.
    On,
}

/// `--auto-compaction-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AutoCompactionMode {
    /// Retain a time window (the default); bare numbers are hours.
    #[default]
    Periodic,
    /// Retain a number of revisions.
    Revision,
}

/// How urgent a [`Notice`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeLevel {
    /// Informational, e.g. "recognized and used environment variable".
    Info,
    /// A warning, e.g. "unrecognized environment variable".
    Warn,
}

/// A message etcd would log while parsing its configuration.
///
/// Parsing runs before logging is set up, so these are collected and the
/// binary logs them once [`crate::logging::init`] has run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// The log level etcd uses for it.
    pub level: NoticeLevel,
    /// The message text, as etcd words it.
    pub message: String,
}

/// Every etcd 3.4 server setting, with etcd's defaults.
///
/// Field names follow the flag names in snake case; where etcd's flag has an
/// implied unit the unit is the name's suffix. Durations that etcd takes as Go
/// durations are [`Duration`]s.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `--name`: human-readable name for this member.
    pub name: String,
    /// `--data-dir`; when not given it is `"${name}.etcd"`, as etcd derives it.
    pub data_dir: String,
    /// `--wal-dir`: dedicated WAL directory; empty means inside `data_dir`.
    pub wal_dir: String,
    /// `--snapshot-count`: committed transactions that trigger a snapshot.
    pub snapshot_count: u64,
    /// `--heartbeat-interval`.
    pub heartbeat_interval_ms: u64,
    /// `--election-timeout`.
    pub election_timeout_ms: u64,
    /// `--initial-election-tick-advance`.
    pub initial_election_tick_advance: bool,
    /// `--listen-peer-urls`.
    pub listen_peer_urls: Vec<Url>,
    /// `--listen-client-urls`.
    pub listen_client_urls: Vec<Url>,
    /// `--listen-metrics-urls`; empty means none.
    pub listen_metrics_urls: Vec<Url>,
    /// `--max-snapshots`: snapshot files to retain (0 is unlimited).
    pub max_snapshots: u64,
    /// `--max-wals`: WAL files to retain (0 is unlimited).
    pub max_wals: u64,
    /// `--quota-backend-bytes`; 0 means [`DEFAULT_QUOTA_BACKEND_BYTES`]
    /// (see [`Config::effective_quota_backend_bytes`]).
    pub quota_backend_bytes: i64,
    /// `--backend-batch-interval`; zero means the backend's default.
    pub backend_batch_interval: Duration,
    /// `--backend-batch-limit`; 0 means the backend's default.
    pub backend_batch_limit: i64,
    /// `--max-txn-ops`: operations permitted in one transaction.
    pub max_txn_ops: u64,
    /// `--max-request-bytes`: largest client request accepted.
    pub max_request_bytes: u64,
    /// `--max-concurrent-streams` per client connection.
    pub max_concurrent_streams: u32,
    /// `--grpc-keepalive-min-time`.
    pub grpc_keepalive_min_time: Duration,
    /// `--grpc-keepalive-interval` (zero disables).
    pub grpc_keepalive_interval: Duration,
    /// `--grpc-keepalive-timeout` (zero disables).
    pub grpc_keepalive_timeout: Duration,
    /// `--enable-grpc-gateway` (undocumented in etcd's help, on by default).
    pub enable_grpc_gateway: bool,

    /// `--initial-advertise-peer-urls`.
    pub initial_advertise_peer_urls: Vec<Url>,
    /// `--initial-cluster`, unparsed; see [`Config::initial_cluster_members`].
    pub initial_cluster: String,
    /// `--initial-cluster-state`.
    pub initial_cluster_state: ClusterState,
    /// `--initial-cluster-token`.
    pub initial_cluster_token: String,
    /// `--advertise-client-urls`; empty when `--listen-client-urls` was given
    /// without it (which [`Config::validate`] rejects).
    pub advertise_client_urls: Vec<Url>,
    /// `--discovery`: discovery service URL.
    pub discovery: String,
    /// `--discovery-fallback`.
    pub discovery_fallback: DiscoveryFallback,
    /// `--discovery-proxy`.
    pub discovery_proxy: String,
    /// `--discovery-srv`: DNS domain for SRV discovery.
    pub discovery_srv: String,
    /// `--discovery-srv-name`.
    pub discovery_srv_name: String,
    /// `--strict-reconfig-check`.
    pub strict_reconfig_check: bool,
    /// `--pre-vote`.
    pub pre_vote: bool,
    /// `--auto-compaction-retention`, unparsed because its unit depends on the mode.
    pub auto_compaction_retention: String,
    /// `--auto-compaction-mode`.
    pub auto_compaction_mode: AutoCompactionMode,
    /// `--enable-v2`.
    pub enable_v2: bool,

    /// `--cert-file`.
    pub cert_file: String,
    /// `--key-file`.
    pub key_file: String,
    /// `--client-cert-auth`.
    pub client_cert_auth: bool,
    /// `--client-crl-file`.
    pub client_crl_file: String,
    /// `--client-cert-allowed-hostname`.
    pub client_cert_allowed_hostname: String,
    /// `--trusted-ca-file`.
    pub trusted_ca_file: String,
    /// `--auto-tls`.
    pub auto_tls: bool,
    /// `--peer-cert-file`.
    pub peer_cert_file: String,
    /// `--peer-key-file`.
    pub peer_key_file: String,
    /// `--peer-client-cert-auth`.
    pub peer_client_cert_auth: bool,
    /// `--peer-trusted-ca-file`.
    pub peer_trusted_ca_file: String,
    /// `--peer-cert-allowed-cn`.
    pub peer_cert_allowed_cn: String,
    /// `--peer-cert-allowed-hostname`.
    pub peer_cert_allowed_hostname: String,
    /// `--peer-auto-tls`.
    pub peer_auto_tls: bool,
    /// `--peer-crl-file`.
    pub peer_crl_file: String,
    /// `--cipher-suites`; empty means the TLS library's defaults.
    pub cipher_suites: Vec<String>,
    /// `--experimental-peer-skip-client-san-verification`.
    pub experimental_peer_skip_client_san_verification: bool,
    /// `--cors`: allowed origins; `*` allows all.
    pub cors: Vec<String>,
    /// `--host-whitelist`: allowed Host headers; `*` allows all.
    pub host_whitelist: Vec<String>,

    /// `--auth-token`: `simple` or `jwt,...` options.
    pub auth_token: String,
    /// `--bcrypt-cost`.
    pub bcrypt_cost: u64,
    /// `--auth-token-ttl`.
    pub auth_token_ttl_secs: u64,

    /// `--enable-pprof`.
    pub enable_pprof: bool,
    /// `--metrics`: `basic` or `extensive`.
    pub metrics: String,

    /// `--logger`.
    pub logger: Logger,
    /// `--log-outputs`: `default`, `stderr`, `stdout`, `systemd/journal` or file paths.
    pub log_outputs: Vec<String>,
    /// `--log-level`.
    pub log_level: LogLevel,
    /// `--debug` (deprecated): forces debug-level logging.
    pub debug: bool,
    /// `--log-package-levels` (deprecated, capnslog only; accepted and ignored).
    pub log_package_levels: String,

    /// `--proxy`.
    pub proxy: ProxyMode,
    /// `--proxy-failure-wait`.
    pub proxy_failure_wait_ms: u64,
    /// `--proxy-refresh-interval`.
    pub proxy_refresh_interval_ms: u64,
    /// `--proxy-dial-timeout`.
    pub proxy_dial_timeout_ms: u64,
    /// `--proxy-write-timeout`.
    pub proxy_write_timeout_ms: u64,
    /// `--proxy-read-timeout`.
    pub proxy_read_timeout_ms: u64,

    /// `--experimental-initial-corrupt-check`.
    pub experimental_initial_corrupt_check: bool,
    /// `--experimental-corrupt-check-time`; zero disables periodic checks.
    pub experimental_corrupt_check_time: Duration,
    /// `--experimental-enable-v2v3`: v3 prefix for emulated v2 state.
    pub experimental_enable_v2v3: String,
    /// `--experimental-backend-bbolt-freelist-type`.
    pub experimental_backend_bbolt_freelist_type: String,
    /// `--experimental-enable-lease-checkpoint`.
    pub experimental_enable_lease_checkpoint: bool,
    /// `--experimental-enable-lease-checkpoint-persist`.
    pub experimental_enable_lease_checkpoint_persist: bool,
    /// `--experimental-compaction-batch-limit`.
    pub experimental_compaction_batch_limit: i64,
    /// `--experimental-watch-progress-notify-interval`.
    pub experimental_watch_progress_notify_interval: Duration,
    /// `--experimental-snapshot-catchup-entries` (etcd 3.5's flag): raft entries kept
    /// behind a snapshot for slow followers.
    pub experimental_snapshot_catchup_entries: u64,
    /// `--experimental-warning-apply-duration`.
    pub experimental_warning_apply_duration: Duration,

    /// `--unsafe-no-fsync`.
    pub unsafe_no_fsync: bool,
    /// `--force-new-cluster`.
    pub force_new_cluster: bool,

    /// The config file the settings came from, if any.
    pub config_file: Option<String>,
    /// Messages etcd would have logged while parsing; log them after
    /// [`crate::logging::init`].
    pub notices: Vec<Notice>,

    /// `--log-output` (deprecated spelling of `--log-outputs`), kept apart
    /// because etcd reconciles the two during validation.
    deprecated_log_output: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        let url = |s: &str| Url::parse(s).map(|u| vec![u]).unwrap_or_default();
        Config {
            name: DEFAULT_NAME.to_string(),
            data_dir: String::new(),
            wal_dir: String::new(),
            snapshot_count: 100_000,
            heartbeat_interval_ms: 100,
            election_timeout_ms: 1000,
            initial_election_tick_advance: true,
            listen_peer_urls: url(DEFAULT_PEER_URL),
            listen_client_urls: url(DEFAULT_CLIENT_URL),
            listen_metrics_urls: Vec::new(),
            max_snapshots: 5,
            max_wals: 5,
            quota_backend_bytes: 0,
            backend_batch_interval: Duration::ZERO,
            backend_batch_limit: 0,
            max_txn_ops: 128,
            max_request_bytes: 1_572_864,
            max_concurrent_streams: u32::MAX,
            grpc_keepalive_min_time: Duration::from_secs(5),
            grpc_keepalive_interval: Duration::from_secs(2 * 3600),
            grpc_keepalive_timeout: Duration::from_secs(20),
            enable_grpc_gateway: true,
            initial_advertise_peer_urls: url(DEFAULT_PEER_URL),
            initial_cluster: format!("{DEFAULT_NAME}={DEFAULT_PEER_URL}"),
            initial_cluster_state: ClusterState::New,
            initial_cluster_token: "etcd-cluster".to_string(),
            advertise_client_urls: url(DEFAULT_CLIENT_URL),
            discovery: String::new(),
            discovery_fallback: DiscoveryFallback::Proxy,
            discovery_proxy: String::new(),
            discovery_srv: String::new(),
            discovery_srv_name: String::new(),
            strict_reconfig_check: true,
            pre_vote: false,
            auto_compaction_retention: "0".to_string(),
            auto_compaction_mode: AutoCompactionMode::Periodic,
            enable_v2: false,
            cert_file: String::new(),
            key_file: String::new(),
            client_cert_auth: false,
            client_crl_file: String::new(),
            client_cert_allowed_hostname: String::new(),
            trusted_ca_file: String::new(),
            auto_tls: false,
            peer_cert_file: String::new(),
            peer_key_file: String::new(),
            peer_client_cert_auth: false,
            peer_trusted_ca_file: String::new(),
            peer_cert_allowed_cn: String::new(),
            peer_cert_allowed_hostname: String::new(),
            peer_auto_tls: false,
            peer_crl_file: String::new(),
            cipher_suites: Vec::new(),
            experimental_peer_skip_client_san_verification: false,
            cors: vec!["*".to_string()],
            host_whitelist: vec!["*".to_string()],
            auth_token: "simple".to_string(),
            bcrypt_cost: 10,
            auth_token_ttl_secs: 300,
            enable_pprof: false,
            metrics: "basic".to_string(),
            logger: Logger::Capnslog,
            log_outputs: vec!["default".to_string()],
            log_level: LogLevel::Info,
            debug: false,
            log_package_levels: String::new(),
            proxy: ProxyMode::Off,
            proxy_failure_wait_ms: 5000,
            proxy_refresh_interval_ms: 30000,
            proxy_dial_timeout_ms: 1000,
            proxy_write_timeout_ms: 5000,
            proxy_read_timeout_ms: 0,
            experimental_initial_corrupt_check: false,
            experimental_corrupt_check_time: Duration::ZERO,
            experimental_enable_v2v3: String::new(),
            experimental_backend_bbolt_freelist_type: "array".to_string(),
            experimental_enable_lease_checkpoint: false,
            experimental_enable_lease_checkpoint_persist: false,
            experimental_compaction_batch_limit: 1000,
            experimental_watch_progress_notify_interval: Duration::from_secs(600),
            experimental_snapshot_catchup_entries: 5000,
            experimental_warning_apply_duration: Duration::from_millis(100),
            unsafe_no_fsync: false,
            force_new_cluster: false,
            config_file: None,
            notices: Vec::new(),
            deprecated_log_output: vec!["default".to_string()],
        }
    }
}

/// Why a single flag value was rejected, before it is wrapped into etcd's
/// message for the source (command line, environment or file).
enum SetError {
    /// Go's `flag` package would shorten a bool parse failure specially.
    Reason(String),
    /// A semantic error that etcd reports during validation instead.
    Invalid(String),
}

impl From<&str> for SetError {
    fn from(s: &str) -> Self {
        SetError::Reason(s.to_string())
    }
}

impl From<String> for SetError {
    fn from(s: String) -> Self {
        SetError::Reason(s)
    }
}

impl Config {
    /// Parses command-line arguments (without the program name) and the
    /// process environment exactly as etcd 3.4 does, then validates the result.
    ///
    /// This is pure apart from reading the config file when one is named.
    pub fn from_args_and_env(
        args: impl IntoIterator<Item = String>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Parsed, ConfigError> {
        let args: Vec<String> = args.into_iter().collect();
        let env: Vec<(String, String)> = env.into_iter().collect();
        if let Some(sub @ ("gateway" | "grpc-proxy")) = args.first().map(String::as_str) {
            return Err(ConfigError::Fatal(format!(
                "'etcd {sub}' is not supported by detcd"
            )));
        }

        let mut cfg = Config::default();
        let mut set_on_command_line: BTreeSet<&'static str> = BTreeSet::new();
        let mut config_file = String::new();
        let mut print_version = false;
        let mut index = 0;
        while index < args.len() {
            let arg = &args[index];
            if arg.len() < 2 || !arg.starts_with('-') {
                break;
            }
            let dashes = if arg.starts_with("--") { 2 } else { 1 };
            if arg == "--" {
                index += 1;
                break;
            }
            index += 1;
            let body = &arg[dashes..];
            if body.is_empty() || body.starts_with('-') || body.starts_with('=') {
                return Err(ConfigError::Syntax(format!("bad flag syntax: {arg}")));
            }
            let (name, inline_value) = match body.find('=') {
                Some(i) => (&body[..i], Some(&body[i + 1..])),
                None => (body, None),
            };
            let Some(kind) = flags::lookup(name) else {
                if name == "help" || name == "h" {
                    return Ok(Parsed::Help(help_text()));
                }
                return Err(ConfigError::Syntax(format!(
                    "flag provided but not defined: -{name}"
                )));
            };
            let canonical = canonical_name(name);
            match kind {
                FlagKind::Bool | FlagKind::Ignored => {
                    let value = inline_value.unwrap_or("true");
                    let result = if name == "version" {
                        parse_bool(value)
                            .map(|v| print_version = v)
                            .map_err(SetError::from)
                    } else {
                        cfg.set(name, value)
                    };
                    match result {
                        Ok(()) => {}
                        Err(SetError::Reason(reason)) => {
                            return Err(ConfigError::Syntax(match inline_value {
                                Some(v) => {
                                    format!("invalid boolean value {v:?} for -{name}: {reason}")
                                }
                                None => format!("invalid boolean flag {name}: {reason}"),
                            }))
                        }
                        Err(SetError::Invalid(m)) => return Err(ConfigError::Invalid(m)),
                    }
                }
                FlagKind::Value => {
                    let value = match inline_value {
                        Some(v) => v.to_string(),
                        None if index < args.len() => {
                            index += 1;
                            args[index - 1].clone()
                        }
                        None => {
                            return Err(ConfigError::Syntax(format!(
                                "flag needs an argument: -{name}"
                            )))
                        }
                    };
                    let result = if name == "config-file" {
                        config_file = value.clone();
                        Ok(())
                    } else {
                        cfg.set(name, &value)
                    };
                    match result {
                        Ok(()) => {}
                        Err(SetError::Reason(reason)) => {
                            return Err(ConfigError::Syntax(format!(
                                "invalid value {value:?} for flag -{name}: {reason}"
                            )))
                        }
                        Err(SetError::Invalid(m)) => return Err(ConfigError::Invalid(m)),
                    }
                }
            }
            set_on_command_line.insert(canonical);
        }
        if let Some(extra) = args.get(index) {
            return Err(ConfigError::Invalid(format!(
                "'{extra}' is not a valid flag"
            )));
        }
        if print_version {
            return Ok(Parsed::Version);
        }

        if config_file.is_empty() {
            config_file = env
                .iter()
                .rev()
                .find(|(k, _)| k == "ETCD_CONFIG_FILE")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
        }
        let mut cfg = if config_file.is_empty() {
            let from_env = cfg.apply_env(&env, &set_on_command_line)?;
            let given: BTreeSet<&'static str> =
                set_on_command_line.union(&from_env).copied().collect();
            cfg.finish_command_line(&given);
            cfg
        } else {
            let mut from_file = Config::default();
            from_file.notices.push(Notice {
                level: NoticeLevel::Info,
                message: format!("Loading server configuration from {config_file:?}. Other configuration command line flags and environment variables will be ignored if provided."),
            });
            yaml::apply_file(&mut from_file, &config_file)?;
            from_file.config_file = Some(config_file);
            from_file
        };
        cfg.normalize_log_outputs();
        cfg.validate()?;
        cfg.finish_defaults();
        Ok(Parsed::Run(Box::new(cfg)))
    }

    /// The full `--help` text, in etcd's layout, with detcd's markers on
    /// flags from [`NOT_YET_IMPLEMENTED`].
    pub fn help() -> String {
        help_text()
    }

    /// Applies `ETCD_*` variables to flags not given on the command line,
    /// following etcd's `SetFlagsFromEnv` and `verifyEnv`.
    fn apply_env(
        &mut self,
        env: &[(String, String)],
        set_on_command_line: &BTreeSet<&'static str>,
    ) -> Result<BTreeSet<&'static str>, ConfigError> {
        // Later duplicates win, as they would in a real environment block.
        let values: BTreeMap<&str, &str> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut used: BTreeSet<String> = BTreeSet::new();
        let mut used_names: BTreeSet<&'static str> = BTreeSet::new();
        let mut first_error = None;
        for name in flags::all_names_sorted() {
            let key = flag_to_env(name);
            if set_on_command_line.contains(name) {
                continue;
            }
            let Some(value) = values.get(key.as_str()).copied().filter(|v| !v.is_empty()) else {
                continue;
            };
            used.insert(key.clone());
            used_names.insert(name);
            let result = match name {
                // These are read before flags are applied (or not at all) by etcd.
                "config-file" => Ok(()),
                "version" => parse_bool(value).map(|_| ()).map_err(SetError::from),
                _ => self.set(name, value),
            };
            match result {
                Ok(()) => self.notices.push(Notice {
                    level: NoticeLevel::Info,
                    message: format!("recognized and used environment variable {key}={value}"),
                }),
                // etcd keeps going and reports the last failure; the first is
                // as informative and more predictable.
                Err(SetError::Reason(reason)) | Err(SetError::Invalid(reason)) => {
                    first_error.get_or_insert(ConfigError::Invalid(format!(
                        "invalid value {value:?} for {key}: {reason}"
                    )));
                }
            }
        }
        let shadowed: BTreeSet<String> =
            set_on_command_line.iter().map(|n| flag_to_env(n)).collect();
        for (key, value) in env {
            if used.contains(key) {
                continue;
            }
            if shadowed.contains(key) {
                return Err(ConfigError::Fatal(format!(
                    "conflicting environment variable {key:?} is shadowed by corresponding command-line flag (either unset environment variable or disable flag)"
                )));
            }
            if key.starts_with("ETCD_") {
                self.notices.push(Notice {
                    level: NoticeLevel::Warn,
                    message: format!("unrecognized environment variable {key}={value}"),
                });
            }
        }
        first_error.map_or(Ok(used_names), Err)
    }

    /// etcd's post-processing of command-line mode: implicit defaults are
    /// dropped when related flags are set (by flag or environment variable).
    fn finish_command_line(&mut self, set: &BTreeSet<&'static str>) {
        let flag_or_env = |_: &Config, name: &str| set.contains(name);
        // The default advertise URL only makes sense with the default listen URL.
        if flag_or_env(self, "listen-client-urls")
            && !flag_or_env(self, "advertise-client-urls")
            && !self.may_be_proxy()
        {
            self.advertise_client_urls.clear();
        }
        // Discovery replaces the default static cluster.
        if (!self.discovery.is_empty()
            || !self.discovery_srv.is_empty()
            || !self.discovery_srv_name.is_empty())
            && !flag_or_env(self, "initial-cluster")
        {
            self.initial_cluster.clear();
        }
    }

    /// Defaults etcd fills in after validation, in both modes.
    fn finish_defaults(&mut self) {
        // `etcd --name abc` implies `--initial-cluster abc=<advertise peer URLs>`;
        // etcd decides by comparing with the default string, and so do we.
        let default_cluster = format!("{DEFAULT_NAME}={DEFAULT_PEER_URL}");
        if self.name != DEFAULT_NAME && self.initial_cluster == default_cluster {
            self.initial_cluster = self.initial_cluster_from_name();
        }
        if self.data_dir.is_empty() {
            self.data_dir = format!("{}.etcd", self.name);
            self.notices.push(Notice {
                level: NoticeLevel::Warn,
                message: format!(
                    "no data-dir provided, using default data-dir ./{}",
                    self.data_dir
                ),
            });
        }
    }

    fn initial_cluster_from_name(&self) -> String {
        let name = if self.name.is_empty() {
            DEFAULT_NAME
        } else {
            &self.name
        };
        self.initial_advertise_peer_urls
            .iter()
            .map(|u| format!("{name}={u}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn may_be_proxy(&self) -> bool {
        let may_fallback =
            !self.discovery.is_empty() && self.discovery_fallback == DiscoveryFallback::Proxy;
        self.proxy != ProxyMode::Off || may_fallback
    }

    /// Records a warning for a flag detcd accepts but does not implement, once per flag,
    /// so that an operator who relies on it learns at start that it has no effect.
    fn note_if_not_implemented(&mut self, name: &str) {
        let Some(why) = Config::not_yet_implemented(name) else {
            return;
        };
        let message =
            format!("--{name} is accepted but not implemented by detcd ({why}); it has no effect");
        if !self.notices.iter().any(|n| n.message == message) {
            self.notices.push(Notice {
                level: NoticeLevel::Warn,
                message,
            });
        }
    }

    /// etcd 3.4 reconciles the deprecated `--log-output` with `--log-outputs`
    /// before validating; this is the non-failing part of that step.
    fn normalize_log_outputs(&mut self) {
        if self.deprecated_log_output.len() > self.log_outputs.len() {
            self.notices.push(Notice {
                level: NoticeLevel::Warn,
                message: "'--log-output' flag has been deprecated! Please use '--log-outputs'!"
                    .to_string(),
            });
            self.log_outputs = self.deprecated_log_output.clone();
        } else if self.deprecated_log_output.len() < self.log_outputs.len() {
            self.deprecated_log_output.clear();
        }
        if self.debug {
            self.notices.push(Notice {
                level: NoticeLevel::Warn,
                message: "[WARNING] Deprecated '--debug' flag is set to true (use '--log-level=debug' instead".to_string(),
            });
        }
    }

    /// Sets one flag from its string form, with Go's parsing rules.
    fn set(&mut self, name: &str, v: &str) -> Result<(), SetError> {
        self.note_if_not_implemented(name);
        let b = || parse_bool(v).map_err(SetError::from);
        let u64v = || parse_uint(v, 64).map_err(SetError::from);
        let i64v = || parse_int(v).map_err(SetError::from);
        let dur = || parse_duration(v).map_err(SetError::from);
        let urls = || unique_urls(v).map_err(SetError::from);
        // etcd's URL flags take "" as an allowed value that leaves the flag at what it
        // was (its default), while still counting as given.
        if v.is_empty() && URL_FLAGS.contains(&name) {
            return Ok(());
        }
        let s = || v.to_string();
        match name {
            "name" => self.name = s(),
            "data-dir" => self.data_dir = s(),
            "wal-dir" => self.wal_dir = s(),
            "snapshot-count" => self.snapshot_count = u64v()?,
            "heartbeat-interval" => self.heartbeat_interval_ms = u64v()?,
            "election-timeout" => self.election_timeout_ms = u64v()?,
            "initial-election-tick-advance" => self.initial_election_tick_advance = b()?,
            "listen-peer-urls" => self.listen_peer_urls = urls()?,
            "listen-client-urls" => self.listen_client_urls = urls()?,
            "listen-metrics-urls" => self.listen_metrics_urls = urls()?,
            "max-snapshots" => self.max_snapshots = u64v()?,
            "max-wals" => self.max_wals = u64v()?,
            "quota-backend-bytes" => self.quota_backend_bytes = i64v()?,
            "backend-batch-interval" => self.backend_batch_interval = dur()?,
            "backend-batch-limit" => self.backend_batch_limit = i64v()?,
            "max-txn-ops" => self.max_txn_ops = u64v()?,
            "max-request-bytes" => self.max_request_bytes = u64v()?,
            "max-concurrent-streams" => {
                self.max_concurrent_streams = goparse::parse_uint32_decimal(v)?
            }
            "grpc-keepalive-min-time" => self.grpc_keepalive_min_time = dur()?,
            "grpc-keepalive-interval" => self.grpc_keepalive_interval = dur()?,
            "grpc-keepalive-timeout" => self.grpc_keepalive_timeout = dur()?,
            "enable-grpc-gateway" => self.enable_grpc_gateway = b()?,
            "initial-advertise-peer-urls" => self.initial_advertise_peer_urls = urls()?,
            "initial-cluster" => self.initial_cluster = s(),
            "initial-cluster-state" => {
                self.initial_cluster_state = ClusterState::parse(v).ok_or("invalid value")?
            }
            "initial-cluster-token" => self.initial_cluster_token = s(),
            "advertise-client-urls" => self.advertise_client_urls = urls()?,
            "discovery" => self.discovery = s(),
            "discovery-fallback" => {
                self.discovery_fallback = match v {
                    "proxy" => DiscoveryFallback::Proxy,
                    "exit" => DiscoveryFallback::Exit,
                    _ => return Err("invalid value".into()),
                }
            }
            "discovery-proxy" => self.discovery_proxy = s(),
            "discovery-srv" => self.discovery_srv = s(),
            "discovery-srv-name" => self.discovery_srv_name = s(),
            "strict-reconfig-check" => self.strict_reconfig_check = b()?,
            "pre-vote" => self.pre_vote = b()?,
            "auto-compaction-retention" => self.auto_compaction_retention = s(),
            "auto-compaction-mode" => {
                self.auto_compaction_mode = match v {
                    "periodic" => AutoCompactionMode::Periodic,
                    "revision" => AutoCompactionMode::Revision,
                    _ => {
                        return Err(SetError::Invalid(format!(
                            "unknown auto-compaction-mode {v:?}"
                        )))
                    }
                }
            }
            "enable-v2" => self.enable_v2 = b()?,
            "cert-file" => self.cert_file = s(),
            "key-file" => self.key_file = s(),
            "client-cert-auth" => self.client_cert_auth = b()?,
            "client-crl-file" => self.client_crl_file = s(),
            "client-cert-allowed-hostname" => self.client_cert_allowed_hostname = s(),
            "trusted-ca-file" => self.trusted_ca_file = s(),
            "auto-tls" => self.auto_tls = b()?,
            "peer-cert-file" => self.peer_cert_file = s(),
            "peer-key-file" => self.peer_key_file = s(),
            "peer-client-cert-auth" => self.peer_client_cert_auth = b()?,
            "peer-trusted-ca-file" => self.peer_trusted_ca_file = s(),
            "peer-cert-allowed-cn" => self.peer_cert_allowed_cn = s(),
            "peer-cert-allowed-hostname" => self.peer_cert_allowed_hostname = s(),
            "peer-auto-tls" => self.peer_auto_tls = b()?,
            "peer-crl-file" => self.peer_crl_file = s(),
            "cipher-suites" => self.cipher_suites = split_list(v),
            "experimental-peer-skip-client-san-verification" => {
                self.experimental_peer_skip_client_san_verification = b()?
            }
            "cors" => {
                // etcd lets "*" through but otherwise demands valid URLs.
                if v != "*" {
                    unique_urls(v)?;
                }
                self.cors = unique_strings(v);
            }
            "host-whitelist" => self.host_whitelist = unique_strings(v),
            "auth-token" => self.auth_token = s(),
            "bcrypt-cost" => self.bcrypt_cost = u64v()?,
            "auth-token-ttl" => self.auth_token_ttl_secs = u64v()?,
            "enable-pprof" => self.enable_pprof = b()?,
            "metrics" => self.metrics = s(),
            "logger" => {
                self.logger = Logger::parse(v)
                    .ok_or_else(|| SetError::Invalid(format!("unknown logger option {v:?}")))?
            }
            "log-outputs" => self.log_outputs = unique_strings(v),
            "log-output" => self.deprecated_log_output = unique_strings(v),
            "log-level" => {
                self.log_level = LogLevel::parse(v)
                    .ok_or_else(|| SetError::Invalid(format!("unknown level {v:?}")))?
            }
            "debug" => self.debug = b()?,
            "log-package-levels" => self.log_package_levels = s(),
            "proxy" => {
                self.proxy = match v {
                    "off" => ProxyMode::Off,
                    "readonly" => ProxyMode::Readonly,
                    "on" => ProxyMode::On,
                    _ => return Err("invalid value".into()),
                }
            }
            "proxy-failure-wait" => self.proxy_failure_wait_ms = u64v()?,
            "proxy-refresh-interval" => self.proxy_refresh_interval_ms = u64v()?,
            "proxy-dial-timeout" => self.proxy_dial_timeout_ms = u64v()?,
            "proxy-write-timeout" => self.proxy_write_timeout_ms = u64v()?,
            "proxy-read-timeout" => self.proxy_read_timeout_ms = u64v()?,
            "experimental-initial-corrupt-check" => self.experimental_initial_corrupt_check = b()?,
            "experimental-corrupt-check-time" => self.experimental_corrupt_check_time = dur()?,
            "experimental-enable-v2v3" => self.experimental_enable_v2v3 = s(),
            "experimental-backend-bbolt-freelist-type" => {
                self.experimental_backend_bbolt_freelist_type = s()
            }
            "experimental-enable-lease-checkpoint" => {
                self.experimental_enable_lease_checkpoint = b()?
            }
            "experimental-enable-lease-checkpoint-persist" => {
                self.experimental_enable_lease_checkpoint_persist = b()?
            }
            "experimental-compaction-batch-limit" => {
                self.experimental_compaction_batch_limit = i64v()?
            }
            "experimental-watch-progress-notify-interval" => {
                self.experimental_watch_progress_notify_interval = dur()?
            }
            "experimental-snapshot-catchup-entries" => {
                self.experimental_snapshot_catchup_entries = u64v()?
            }
            "experimental-warning-apply-duration" => {
                self.experimental_warning_apply_duration = dur()?
            }
            "unsafe-no-fsync" => self.unsafe_no_fsync = b()?,
            "force-new-cluster" => self.force_new_cluster = b()?,
            ignored if flags::IGNORED_FLAGS.contains(&ignored) => {
                self.notices.push(Notice {
                    level: NoticeLevel::Warn,
                    message: format!("flag \"-{ignored}\" is no longer supported - ignoring."),
                });
            }
            // Unreachable through the table-driven parser, but never panic.
            other => return Err(format!("unknown flag {other:?}").into()),
        }
        Ok(())
    }

    /// etcd's flag validation (`embed.Config.Validate` plus etcdmain's proxy
    /// exception), with etcd's messages. [`Config::from_args_and_env`]
    /// already calls this; it is public for configurations built in code.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        self.validate_logging()?;
        for urls in [
            &self.listen_peer_urls,
            &self.listen_client_urls,
            &self.listen_metrics_urls,
        ] {
            check_bind_urls(urls).map_err(ConfigError::Invalid)?;
        }
        for (flag, urls) in [
            (
                "--initial-advertise-peer-urls",
                &self.initial_advertise_peer_urls,
            ),
            ("--advertise-client-urls", &self.advertise_client_urls),
        ] {
            if let Some(u) = urls.iter().find(|u| u.host.is_empty()) {
                return invalid(format!(
                    "{flag} {:?} must be \"host:port\" (unexpected empty host ({u}))",
                    join_urls(urls)
                ));
            }
        }
        let bootstrap_sources = [
            !self.discovery.is_empty(),
            !self.initial_cluster.is_empty(),
            !self.discovery_srv.is_empty(),
        ];
        if bootstrap_sources.iter().filter(|set| **set).count() > 1 {
            return invalid("multiple discovery or bootstrap flags are set. Choose one of \"initial-cluster\", \"discovery\" or \"discovery-srv\"".to_string());
        }
        if self.heartbeat_interval_ms == 0 {
            return invalid(format!(
                "--heartbeat-interval must be >0 (set to {}ms)",
                self.heartbeat_interval_ms
            ));
        }
        if self.election_timeout_ms == 0 {
            return invalid(format!(
                "--election-timeout must be >0 (set to {}ms)",
                self.election_timeout_ms
            ));
        }
        if self.heartbeat_interval_ms.saturating_mul(5) > self.election_timeout_ms {
            return invalid(format!(
                "--election-timeout[{}ms] should be at least as 5 times as --heartbeat-interval[{}ms]",
                self.election_timeout_ms, self.heartbeat_interval_ms
            ));
        }
        if self.election_timeout_ms > MAX_ELECTION_TIMEOUT_MS {
            return invalid(format!(
                "--election-timeout[{}ms] is too long, and should be set less than {MAX_ELECTION_TIMEOUT_MS}ms",
                self.election_timeout_ms
            ));
        }
        // etcd tolerates missing advertise URLs when it may end up a proxy.
        if !self.listen_client_urls.is_empty()
            && self.advertise_client_urls.is_empty()
            && !self.may_be_proxy()
        {
            return invalid(ERR_UNSET_ADVERTISE_CLIENT_URLS.to_string());
        }
        if self.experimental_enable_lease_checkpoint_persist
            && !self.experimental_enable_lease_checkpoint
        {
            return invalid("setting experimental-enable-lease-checkpoint-persist requires experimental-enable-lease-checkpoint".to_string());
        }
        Ok(())
    }

    fn validate_logging(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let (old, new) = (&self.deprecated_log_output, &self.log_outputs);
        if old.len() == new.len() {
            if old.len() > 1 {
                return invalid(
                    "both '--log-output' and '--log-outputs' are set; only set '--log-outputs'"
                        .to_string(),
                );
            }
            if old.is_empty() {
                return invalid(
                    "either '--log-output' or '--log-outputs' flag must be set".to_string(),
                );
            }
            if old == new && old[0] != "default" {
                return invalid(format!(
                    "'--log-output={}' and '--log-outputs={}' are incompatible; only set --log-outputs",
                    go_quoted_list(old),
                    go_quoted_list(new)
                ));
            }
        }
        match self.logger {
            Logger::Capnslog => {
                if self.log_outputs.len() != 1 {
                    return invalid(format!(
                        "--logger=capnslog supports only 1 value in '--log-outputs', got {}",
                        go_quoted_list(&self.log_outputs)
                    ));
                }
                let output = &self.log_outputs[0];
                if !matches!(output.as_str(), "default" | "stderr" | "stdout") {
                    return invalid(format!(
                        "unknown log-output {output:?} (only supports \"default\", \"stderr\", \"stdout\")"
                    ));
                }
            }
            Logger::Zap => {
                if self.log_outputs.len() > 1 && self.log_outputs.iter().any(|o| o == "default") {
                    return invalid(
                        "multi logoutput for \"default\" is not supported yet".to_string(),
                    );
                }
            }
        }
        Ok(())
    }

    /// Parses `--initial-cluster` ("n1=http://a:2380,n2=http://b:2380") into
    /// members in first-appearance order. A name listed several times
    /// collects all its URLs, as etcd's `URLsMap` does; each member's URLs are
    /// sorted like etcd sorts them.
    pub fn initial_cluster_members(&self) -> Result<Vec<(String, Vec<Url>)>, ConfigError> {
        let mut members: Vec<(String, Vec<String>)> = Vec::new();
        for entry in self.initial_cluster.split(',').filter(|e| !e.is_empty()) {
            let (name, url) = entry.split_once('=').unwrap_or((entry, ""));
            match members.iter_mut().find(|(n, _)| n == name) {
                Some((_, urls)) => urls.push(url.to_string()),
                None => members.push((name.to_string(), vec![url.to_string()])),
            }
        }
        members
            .into_iter()
            .map(|(name, urls)| {
                let mut parsed = urls
                    .iter()
                    .map(|u| Url::parse(u))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| {
                        ConfigError::Fatal(format!("error setting up initial cluster: {e}"))
                    })?;
                parsed.sort_by_key(|u| u.to_string());
                Ok((name, parsed))
            })
            .collect()
    }

    /// The checks etcd runs when bootstrapping a member that has no WAL yet
    /// (`etcdserver.ServerConfig.VerifyBootstrap` for a new cluster,
    /// `VerifyJoinExisting` otherwise).
    ///
    /// etcd skips these when the data directory already holds a WAL, so a
    /// restarted member may carry stale cluster flags; the server therefore
    /// calls this only when it is about to bootstrap.
    pub fn verify_bootstrap(&self) -> Result<(), ConfigError> {
        let fatal = |m: String| Err(ConfigError::Fatal(m));
        let members = self.initial_cluster_members()?;
        let Some((_, cluster_urls)) = members.iter().find(|(n, _)| *n == self.name) else {
            return fatal(format!(
                "couldn't find local name {:?} in the initial cluster configuration",
                self.name
            ));
        };
        let mut seen = BTreeSet::new();
        if members
            .iter()
            .flat_map(|(_, urls)| urls)
            .any(|u| !seen.insert(u.to_string()))
        {
            return fatal(format!(
                "initial cluster {} has duplicate url",
                urls_map_string(&members)
            ));
        }
        if self.initial_cluster_state == ClusterState::Existing {
            if !self.discovery.is_empty() {
                return fatal(
                    "discovery URL should not be set when joining existing initial cluster"
                        .to_string(),
                );
            }
            return Ok(());
        }
        let mut advertised: Vec<String> = self
            .initial_advertise_peer_urls
            .iter()
            .map(Url::to_string)
            .collect();
        advertised.sort();
        let listed: Vec<String> = cluster_urls.iter().map(Url::to_string).collect();
        if advertised == listed {
            return Ok(());
        }
        let missing: Vec<String> = listed
            .iter()
            .filter(|u| !advertised.contains(u))
            .map(|u| format!("{}={u}", self.name))
            .collect();
        if !missing.is_empty() {
            // etcd appends the reason its URL comparison failed.
            let reason = if advertised.len() != listed.len() {
                format!(
                    "len({}) != len({})",
                    go_quoted_list(&advertised),
                    go_quoted_list(&listed)
                )
            } else {
                let (a, b) = advertised
                    .iter()
                    .zip(&listed)
                    .find(|(a, b)| a != b)
                    .map(|(a, b)| (a.as_str(), b.as_str()))
                    .unwrap_or_default();
                format!("resolved urls: {a:?} != {b:?}")
            };
            return fatal(format!(
                "--initial-cluster has {} but missing from --initial-advertise-peer-urls={} ({reason})",
                missing.join(","),
                advertised.join(",")
            ));
        }
        let extra: Vec<&String> = advertised.iter().filter(|u| !listed.contains(u)).collect();
        let own = advertised
            .iter()
            .map(|u| format!("{}={u}", self.name))
            .collect::<Vec<_>>()
            .join(",");
        fatal(format!(
            "--initial-advertise-peer-urls has {} but missing from --initial-cluster={own}",
            extra
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(",")
        ))
    }

    /// The backend quota in bytes, with 0 mapped to etcd's 2 GiB default.
    pub fn effective_quota_backend_bytes(&self) -> i64 {
        if self.quota_backend_bytes <= 0 {
            DEFAULT_QUOTA_BACKEND_BYTES
        } else {
            self.quota_backend_bytes
        }
    }

    /// The election timeout in heartbeat ticks, as etcd computes it.
    pub fn election_ticks(&self) -> u64 {
        self.election_timeout_ms / self.heartbeat_interval_ms.max(1)
    }

    /// The WAL directory: `--wal-dir` or `<data-dir>/member/wal`.
    pub fn wal_dir_path(&self) -> std::path::PathBuf {
        if self.wal_dir.is_empty() {
            std::path::Path::new(&self.data_dir)
                .join("member")
                .join("wal")
        } else {
            self.wal_dir.clone().into()
        }
    }

    /// The logging settings for [`crate::logging::init`]; `--debug` forces
    /// the debug level as it does in etcd.
    pub fn log_config(&self) -> LogConfig {
        LogConfig {
            logger: self.logger,
            level: if self.debug {
                LogLevel::Debug
            } else {
                self.log_level
            },
            outputs: self
                .log_outputs
                .iter()
                .map(|o| LogOutput::parse(o))
                .collect(),
        }
    }

    /// Why `flag` is accepted but has no effect in detcd, or `None` when it works.
    pub fn not_yet_implemented(flag: &str) -> Option<&'static str> {
        NOT_YET_IMPLEMENTED
            .iter()
            .find(|n| n.flag == flag)
            .map(|n| n.why)
    }
}

impl fmt::Display for ClusterState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClusterState::New => "new",
            ClusterState::Existing => "existing",
        })
    }
}

fn help_text() -> String {
    let names: Vec<&str> = NOT_YET_IMPLEMENTED.iter().map(|n| n.flag).collect();
    flags::help_text(&names)
}

/// The static name for a flag, so the set of given flags can borrow it.
fn canonical_name(name: &str) -> &'static str {
    flags::all_names_sorted()
        .into_iter()
        .find(|n| *n == name)
        .unwrap_or("")
}

/// `ETCD_` plus the upper-snake-case flag name, like etcd's `FlagToEnv`.
fn flag_to_env(name: &str) -> String {
    format!("ETCD_{}", name.replace('-', "_").to_ascii_uppercase())
}

/// etcd's `UniqueURLs.Set`: valid, sorted, duplicates removed.
fn unique_urls(v: &str) -> Result<Vec<Url>, String> {
    let mut urls = Url::parse_list(v)?;
    urls.dedup();
    Ok(urls)
}

/// etcd's `UniqueStringsValue`: a sorted set of the comma-separated parts.
fn unique_strings(v: &str) -> Vec<String> {
    let set: BTreeSet<String> = v.split(',').map(str::to_string).collect();
    set.into_iter().collect()
}

/// etcd's `StringsValue`: comma-separated parts, empty input meaning none.
fn split_list(v: &str) -> Vec<String> {
    if v.is_empty() {
        Vec::new()
    } else {
        v.split(',').map(str::to_string).collect()
    }
}

/// etcd's `checkBindURLs`: listeners need an IP literal or `localhost`.
fn check_bind_urls(urls: &[Url]) -> Result<(), String> {
    for u in urls.iter().filter(|u| !u.is_unix()) {
        if u.host == "localhost" {
            continue;
        }
        if u.host.parse::<std::net::IpAddr>().is_err() {
            return Err(format!("expected IP in URL for binding ({u})"));
        }
    }
    Ok(())
}

fn join_urls(urls: &[Url]) -> String {
    urls.iter()
        .map(Url::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Formats a list like Go's `%q` on a `[]string`: `["a" "b"]`.
fn go_quoted_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", quoted.join(" "))
}

/// Formats members like etcd's `URLsMap.String`: sorted `name=url` pairs.
fn urls_map_string(members: &[(String, Vec<Url>)]) -> String {
    let mut pairs: Vec<String> = members
        .iter()
        .flat_map(|(n, urls)| urls.iter().map(move |u| format!("{n}={u}")))
        .collect();
    pairs.sort();
    pairs.join(",")
}

/// Formats a duration as Go would print it, for messages and help text.
pub fn go_duration_string(d: Duration) -> String {
    format_duration(d)
}
