//! The table of every flag etcd 3.4 accepts, and the `--help` text built from it.
//!
//! Keeping names, sections, defaults and descriptions in one table lets the
//! parser, the environment-variable mapping and the help text agree by
//! construction.

/// Whether a flag takes a value or is a switch, which changes how Go's `flag`
/// package reads the following argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FlagKind {
    /// `--flag value` or `--flag=value`.
    Value,
    /// `--flag` or `--flag=true|false`; a separate `true` argument is not consumed.
    Bool,
    /// A flag from etcd 2 that etcd 3.4 still accepts as a switch and ignores with a warning.
    Ignored,
}

/// One row of the flag table.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FlagSpec {
    /// The flag name without dashes, which is also its YAML key.
    pub name: &'static str,
    /// The help section heading index into [`SECTIONS`].
    pub section: usize,
    /// The default as etcd's help prints it, quotes included.
    pub default_help: &'static str,
    /// The description lines; continuation lines are already indented.
    pub usage: &'static str,
}

const MEMBER: usize = 0;
const CLUSTERING: usize = 1;
const SECURITY: usize = 2;
const AUTH: usize = 3;
const PROFILING: usize = 4;
const LOGGING: usize = 5;
const PROXY: usize = 6;
const EXPERIMENTAL: usize = 7;
const UNSAFE: usize = 8;
const DEPRECATED: usize = 9;

/// Section headings in the order etcd's help prints them.
pub(crate) const SECTIONS: &[&str] = &[
    "Member:",
    "Clustering:",
    "Security:",
    "Auth:",
    "Profiling and Monitoring:",
    "Logging:",
    "v2 Proxy (to be deprecated in v4):",
    "Experimental feature:",
    "Unsafe feature:",
    "TO BE DEPRECATED:",
];

const fn f(
    name: &'static str,
    section: usize,
    default_help: &'static str,
    usage: &'static str,
) -> FlagSpec {
    FlagSpec {
        name,
        section,
        default_help,
        usage,
    }
}

/// Every documented flag, in etcd's help order, plus the few flags etcd
/// accepts without documenting them (listed where they belong).
pub(crate) const FLAGS: &[FlagSpec] = &[
    f("name", MEMBER, "'default'", "Human-readable name for this member."),
    f("data-dir", MEMBER, "'${name}.etcd'", "Path to the data directory."),
    f("wal-dir", MEMBER, "''", "Path to the dedicated wal directory."),
    f("snapshot-count", MEMBER, "'100000'", "Number of committed transactions to trigger a snapshot to disk."),
    f("heartbeat-interval", MEMBER, "'100'", "Time (in milliseconds) of a heartbeat interval."),
    f("election-timeout", MEMBER, "'1000'", "Time (in milliseconds) for an election to timeout. See tuning documentation for details."),
    f("initial-election-tick-advance", MEMBER, "'true'", "Whether to fast-forward initial election ticks on boot for faster election."),
    f("listen-peer-urls", MEMBER, "'http://localhost:2380'", "List of URLs to listen on for peer traffic."),
    f("listen-client-urls", MEMBER, "'http://localhost:2379'", "List of URLs to listen on for client traffic."),
    f("max-snapshots", MEMBER, "'5'", "Maximum number of snapshot files to retain (0 is unlimited)."),
    f("max-wals", MEMBER, "'5'", "Maximum number of wal files to retain (0 is unlimited)."),
    f("quota-backend-bytes", MEMBER, "'0'", "Raise alarms when backend size exceeds the given quota (0 defaults to low space quota)."),
    f("backend-batch-interval", MEMBER, "''", "BackendBatchInterval is the maximum time before commit the backend transaction."),
    f("backend-batch-limit", MEMBER, "'0'", "BackendBatchLimit is the maximum operations before commit the backend transaction."),
    f("max-txn-ops", MEMBER, "'128'", "Maximum number of operations permitted in a transaction."),
    f("max-request-bytes", MEMBER, "'1572864'", "Maximum client request size in bytes the server will accept."),
    f("max-concurrent-streams", MEMBER, "'math.MaxUint32'", "Maximum concurrent streams that each client can open at a time."),
    f("grpc-keepalive-min-time", MEMBER, "'5s'", "Minimum duration interval that a client should wait before pinging server."),
    f("grpc-keepalive-interval", MEMBER, "'2h'", "Frequency duration of server-to-client ping to check if a connection is alive (0 to disable)."),
    f("grpc-keepalive-timeout", MEMBER, "'20s'", "Additional duration of wait before closing a non-responsive connection (0 to disable)."),
    f("enable-grpc-gateway", MEMBER, "'true'", "Enable GRPC gateway."),
    f("initial-advertise-peer-urls", CLUSTERING, "'http://localhost:2380'", "List of this member's peer URLs to advertise to the rest of the cluster."),
    f("initial-cluster", CLUSTERING, "'default=http://localhost:2380'", "Initial cluster configuration for bootstrapping."),
    f("initial-cluster-state", CLUSTERING, "'new'", "Initial cluster state ('new' or 'existing')."),
    f("initial-cluster-token", CLUSTERING, "'etcd-cluster'", "Initial cluster token for the etcd cluster during bootstrap.\n    Specifying this can protect you from unintended cross-cluster interaction when running multiple clusters."),
    f("advertise-client-urls", CLUSTERING, "'http://localhost:2379'", "List of this member's client URLs to advertise to the public.\n    The client URLs advertised should be accessible to machines that talk to etcd cluster. etcd client libraries parse these URLs to connect to the cluster."),
    f("discovery", CLUSTERING, "''", "Discovery URL used to bootstrap the cluster."),
    f("discovery-fallback", CLUSTERING, "'proxy'", "Expected behavior ('exit' or 'proxy') when discovery services fails.\n    \"proxy\" supports v2 API only."),
    f("discovery-proxy", CLUSTERING, "''", "HTTP proxy to use for traffic to discovery service."),
    f("discovery-srv", CLUSTERING, "''", "DNS srv domain used to bootstrap the cluster."),
    f("discovery-srv-name", CLUSTERING, "''", "Suffix to the dns srv name queried when bootstrapping."),
    f("strict-reconfig-check", CLUSTERING, "'true'", "Reject reconfiguration requests that would cause quorum loss."),
    f("pre-vote", CLUSTERING, "'false'", "Enable to run an additional Raft election phase."),
    f("auto-compaction-retention", CLUSTERING, "'0'", "Auto compaction retention length. 0 means disable auto compaction."),
    f("auto-compaction-mode", CLUSTERING, "'periodic'", "Interpret 'auto-compaction-retention' one of: periodic|revision. 'periodic' for duration based retention, defaulting to hours if no time unit is provided (e.g. '5m'). 'revision' for revision number based retention."),
    f("enable-v2", CLUSTERING, "'false'", "Accept etcd V2 client requests."),
    f("cert-file", SECURITY, "''", "Path to the client server TLS cert file."),
    f("key-file", SECURITY, "''", "Path to the client server TLS key file."),
    f("client-cert-auth", SECURITY, "'false'", "Enable client cert authentication."),
    f("client-crl-file", SECURITY, "''", "Path to the client certificate revocation list file."),
    f("client-cert-allowed-hostname", SECURITY, "''", "Allowed TLS hostname for client cert authentication."),
    f("trusted-ca-file", SECURITY, "''", "Path to the client server TLS trusted CA cert file."),
    f("auto-tls", SECURITY, "'false'", "Client TLS using generated certificates."),
    f("peer-cert-file", SECURITY, "''", "Path to the peer server TLS cert file."),
    f("peer-key-file", SECURITY, "''", "Path to the peer server TLS key file."),
    f("peer-client-cert-auth", SECURITY, "'false'", "Enable peer client cert authentication."),
    f("peer-trusted-ca-file", SECURITY, "''", "Path to the peer server TLS trusted CA file."),
    f("peer-cert-allowed-cn", SECURITY, "''", "Required CN for client certs connecting to the peer endpoint."),
    f("peer-cert-allowed-hostname", SECURITY, "''", "Allowed TLS hostname for inter peer authentication."),
    f("peer-auto-tls", SECURITY, "'false'", "Peer TLS using self-generated certificates if --peer-key-file and --peer-cert-file are not provided."),
    f("peer-crl-file", SECURITY, "''", "Path to the peer certificate revocation list file."),
    f("cipher-suites", SECURITY, "''", "Comma-separated list of supported TLS cipher suites between client/server and peers (empty will be auto-populated by Go)."),
    f("cors", SECURITY, "'*'", "Comma-separated whitelist of origins for CORS, or cross-origin resource sharing, (empty or * means allow all)."),
    f("host-whitelist", SECURITY, "'*'", "Acceptable hostnames from HTTP client requests, if server is not secure (empty or * means allow all)."),
    f("auth-token", AUTH, "'simple'", "Specify a v3 authentication token type and its options ('simple' or 'jwt')."),
    f("bcrypt-cost", AUTH, "10", "Specify the cost / strength of the bcrypt algorithm for hashing auth passwords. Valid values are between 4 and 31."),
    f("auth-token-ttl", AUTH, "300", "Time (in seconds) of the auth-token-ttl."),
    f("enable-pprof", PROFILING, "'false'", "Enable runtime profiling data via HTTP server. Address is at client URL + \"/debug/pprof/\""),
    f("metrics", PROFILING, "'basic'", "Set level of detail for exported metrics, specify 'extensive' to include histogram metrics."),
    f("listen-metrics-urls", PROFILING, "''", "List of URLs to listen on for the metrics and health endpoints."),
    f("logger", LOGGING, "'capnslog'", "Specify 'zap' for structured logging or 'capnslog'. [WARN] 'capnslog' will be deprecated in v3.5."),
    f("log-outputs", LOGGING, "'default'", "Specify 'stdout' or 'stderr' to skip journald logging even when running under systemd, or list of comma separated output targets."),
    f("log-level", LOGGING, "'info'", "Configures log level. Only supports debug, info, warn, error, panic, or fatal."),
    f("log-output", LOGGING, "'default'", "[TO BE DEPRECATED IN v3.5] use '--log-outputs'."),
    f("proxy", PROXY, "'off'", "Proxy mode setting ('off', 'readonly' or 'on')."),
    f("proxy-failure-wait", PROXY, "5000", "Time (in milliseconds) an endpoint will be held in a failed state."),
    f("proxy-refresh-interval", PROXY, "30000", "Time (in milliseconds) of the endpoints refresh interval."),
    f("proxy-dial-timeout", PROXY, "1000", "Time (in milliseconds) for a dial to timeout."),
    f("proxy-write-timeout", PROXY, "5000", "Time (in milliseconds) for a write to timeout."),
    f("proxy-read-timeout", PROXY, "0", "Time (in milliseconds) for a read to timeout."),
    f("experimental-initial-corrupt-check", EXPERIMENTAL, "'false'", "Enable to check data corruption before serving any client/peer traffic."),
    f("experimental-corrupt-check-time", EXPERIMENTAL, "'0s'", "Duration of time between cluster corruption check passes."),
    f("experimental-enable-v2v3", EXPERIMENTAL, "''", "Serve v2 requests through the v3 backend under a given prefix."),
    f("experimental-backend-bbolt-freelist-type", EXPERIMENTAL, "'array'", "ExperimentalBackendFreelistType specifies the type of freelist that boltdb backend uses(array and map are supported types)."),
    f("experimental-enable-lease-checkpoint", EXPERIMENTAL, "'false'", "ExperimentalEnableLeaseCheckpoint enables primary lessor to persist lease remainingTTL to prevent indefinite auto-renewal of long lived leases."),
    f("experimental-enable-lease-checkpoint-persist", EXPERIMENTAL, "'false'", "Enable persisting remainingTTL to prevent indefinite auto-renewal of long lived leases. Requires experimental-enable-lease-checkpoint to be enabled."),
    f("experimental-compaction-batch-limit", EXPERIMENTAL, "1000", "ExperimentalCompactionBatchLimit sets the maximum revisions deleted in each compaction batch."),
    f("experimental-peer-skip-client-san-verification", EXPERIMENTAL, "'false'", "Skip verification of SAN field in client certificate for peer connections."),
    f("experimental-watch-progress-notify-interval", EXPERIMENTAL, "'10m'", "Duration of periodical watch progress notification."),
    // From etcd 3.5, which 3.4 operators may already script against.
    f("experimental-snapshot-catchup-entries", EXPERIMENTAL, "5000", "Number of entries for a slow follower to catch up after compacting the raft storage entries."),
    f("experimental-warning-apply-duration", EXPERIMENTAL, "'100ms'", "Warning is generated if requests take more than this duration."),
    f("force-new-cluster", UNSAFE, "'false'", "Force to create a new one-member cluster."),
    f("unsafe-no-fsync", UNSAFE, "'false'", "Disables fsync, unsafe, will cause data loss."),
    f("debug", DEPRECATED, "'false'", "Enable debug-level logging for etcd. [WARN] Will be deprecated in v3.5. Use '--log-level=debug' instead."),
    f("log-package-levels", DEPRECATED, "''", "Specify a particular log level for each etcd package (eg: 'etcdmain=CRITICAL,etcdserver=DEBUG')."),
];

/// Switch flags; every other flag in [`FLAGS`] takes a value.
const BOOL_FLAGS: &[&str] = &[
    "initial-election-tick-advance",
    "strict-reconfig-check",
    "pre-vote",
    "enable-v2",
    "client-cert-auth",
    "auto-tls",
    "peer-client-cert-auth",
    "peer-auto-tls",
    "experimental-peer-skip-client-san-verification",
    "enable-pprof",
    "enable-grpc-gateway",
    "debug",
    "experimental-initial-corrupt-check",
    "experimental-enable-lease-checkpoint",
    "experimental-enable-lease-checkpoint-persist",
    "unsafe-no-fsync",
    "force-new-cluster",
    "version",
];

/// etcd 2 flags that etcd 3.4 still accepts and ignores with a warning.
pub(crate) const IGNORED_FLAGS: &[&str] = &[
    "cluster-active-size",
    "cluster-remove-delay",
    "cluster-sync-interval",
    "config",
    "force",
    "max-result-buffer",
    "max-retry-attempts",
    "peer-heartbeat-interval",
    "peer-election-timeout",
    "retry-interval",
    "snapshot",
    "v",
    "vv",
    "test.coverprofile",
    "test.outputdir",
];

/// Looks a flag up by name, returning how it consumes arguments.
///
/// `config-file` and `version` are real flags that the help lists in its
/// usage block rather than in the table.
pub(crate) fn lookup(name: &str) -> Option<FlagKind> {
    if BOOL_FLAGS.contains(&name) {
        Some(FlagKind::Bool)
    } else if IGNORED_FLAGS.contains(&name) {
        Some(FlagKind::Ignored)
    } else if name == "config-file" || FLAGS.iter().any(|f| f.name == name) {
        Some(FlagKind::Value)
    } else {
        None
    }
}

/// All flag names in the sorted order Go's `FlagSet.VisitAll` uses, which is
/// the order etcd consults `ETCD_*` environment variables in.
pub(crate) fn all_names_sorted() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = FLAGS
        .iter()
        .map(|f| f.name)
        .chain(["config-file", "version"])
        .chain(IGNORED_FLAGS.iter().copied())
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// The usage block etcd prints (to stderr) before its flag list and after
/// command-line syntax errors.
pub const USAGE: &str = "Usage:

  etcd [flags]
    Start an etcd server.

  etcd --version
    Show the version of etcd.

  etcd -h | --help
    Show the help information about etcd.

  etcd --config-file
    Path to the server configuration file. Note that if a configuration file is provided, other command line flags and environment variables will be ignored.

  etcd gateway
    Run the stateless pass-through etcd TCP connection forwarding proxy.

  etcd grpc-proxy
    Run the stateless etcd v3 gRPC L7 reverse proxy.
";

/// The marker appended to flags whose feature detcd parses but does not act on.
pub const NOT_IMPLEMENTED_MARK: &str = "(accepted; not yet implemented by detcd)";

/// Renders the full `--help` text: the usage block followed by every flag
/// grouped by section, in etcd's layout.
pub(crate) fn help_text(not_yet_implemented: &[&str]) -> String {
    let mut out = String::from(USAGE);
    // etcd prints the usage block with a trailing newline of its own.
    out.push('\n');
    for (index, heading) in SECTIONS.iter().enumerate() {
        out.push('\n');
        out.push_str(heading);
        out.push('\n');
        if index == DEPRECATED {
            // etcd's help has a blank line after this one heading.
            out.push('\n');
        }
        for flag in FLAGS.iter().filter(|f| f.section == index) {
            out.push_str(&format!(
                "  --{} {}\n    {}\n",
                flag.name, flag.default_help, flag.usage
            ));
            if not_yet_implemented.contains(&flag.name) {
                out.push_str("    ");
                out.push_str(NOT_IMPLEMENTED_MARK);
                out.push('\n');
            }
        }
        if index == UNSAFE {
            out.push_str(
                "\nCAUTIOUS with unsafe flag! It may break the guarantees given by the consensus protocol!\n",
            );
        }
    }
    out
}
