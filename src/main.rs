//! The `detcd` binary: etcd's command line in front of a detcd member.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use detcd::config::{Config, ConfigError, NoticeLevel, Parsed, Url};
use detcd::core::jwt::TokenProvider;
use detcd::server::{BackendChoice, MemberTls, ServerConfig};
use detcd::storage::disk::RealDisk;
use detcd::tls::TlsInfo;

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("snapshot") {
        return ExitCode::from(detcd::snapshot_cmd::run(&argv[1..]));
    }
    let args = argv.into_iter();
    let env = std::env::vars();
    let config = match Config::from_args_and_env(args, env) {
        Ok(Parsed::Run(config)) => config,
        Ok(Parsed::Help(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Version) => {
            println!("etcd Version: {}", detcd::ETCD_VERSION);
            println!("detcd Version: {}", detcd::DETCD_VERSION);
            println!("Git SHA: Not provided");
            println!("Go Version: not applicable (detcd is written in Rust)");
            // Go's names for the architectures, which scripts parsing this line expect.
            let arch = match std::env::consts::ARCH {
                "x86_64" => "amd64",
                "aarch64" => "arm64",
                "x86" => "386",
                other => other,
            };
            println!("Go OS/Arch: {}/{arch}", std::env::consts::OS);
            return ExitCode::SUCCESS;
        }
        Err(e) => return fail(&e),
    };
    if let Err(e) = detcd::logging::init(&config.log_config()) {
        eprintln!("detcd: cannot set up logging: {e}");
        return ExitCode::from(1);
    }
    for notice in &config.notices {
        match notice.level {
            NoticeLevel::Info => tracing::info!("{}", notice.message),
            _ => tracing::warn!("{}", notice.message),
        }
    }
    tracing::info!(
        etcd_version = detcd::ETCD_VERSION,
        detcd_version = detcd::DETCD_VERSION,
        config_file = config.config_file.as_deref().unwrap_or(""),
        "starting detcd"
    );
    let server_config = match server_config(&config) {
        Ok(c) => c,
        Err(msg) => {
            tracing::error!("{msg}");
            eprintln!("{msg}");
            return ExitCode::from(1);
        }
    };
    let outcome = detcd::rt::block_on_main(detcd::server::run(
        server_config,
        detcd::rt::shutdown_signal(),
        None,
    ));
    match outcome {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "detcd member stopped");
            eprintln!("detcd: {e}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("detcd: cannot start the runtime: {e}");
            ExitCode::from(1)
        }
    }
}

fn fail(e: &ConfigError) -> ExitCode {
    if matches!(e, ConfigError::Invalid(_)) {
        // etcd logs these through capnslog, one error line each.
        for line in e.report().lines() {
            eprintln!("{}{line}", detcd::logging::capnslog_prefix('E'));
        }
    } else {
        eprint!("{}", e.report());
        if !e.report().ends_with('\n') {
            eprintln!();
        }
    }
    ExitCode::from(e.exit_code().clamp(1, 255) as u8)
}

/// Resolves a listen URL to a socket address. `localhost` means the IPv4 loopback, as
/// etcd's listener ends up bound to it.
fn listen_addr(url: &Url) -> Result<SocketAddr, String> {
    if url.is_unix() {
        // Client URLs may be Unix-domain sockets (see `config_from`); peer and metrics
        // URLs on them are not served.
        return Err(format!(
            "listen {url}: unix socket listeners are supported for client URLs only"
        ));
    }
    let host = if url.host == "localhost" || url.host.is_empty() {
        "127.0.0.1"
    } else {
        url.host.as_str()
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, url.port));
    }
    (host, url.port)
        .to_socket_addrs()
        .map_err(|e| format!("listen {url}: {e}"))?
        .next()
        .ok_or_else(|| format!("listen {url}: no address for host {host}"))
}

/// Builds the token provider `--auth-token` names, as etcd does at start: key files are
/// read here, and the error is the message etcd stops with.
fn token_provider(auth_token: &str) -> Result<TokenProvider, String> {
    let (provider, warnings) =
        detcd::core::jwt::token_provider(auth_token, &mut |path| std::fs::read(path))?;
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    Ok(provider)
}

/// The TLS of the member's listeners and peer connections, from the flags, as etcd sets
/// up its listeners (`configurePeerListeners`, then `configureClientListeners`): https
/// URLs need a certificate, `--auto-tls` and `--peer-auto-tls` generate one when none is
/// given, and http URLs ignore the certificate flags.
fn member_tls(config: &Config) -> Result<MemberTls, String> {
    let (_, dropped) =
        detcd::tls::parse_cipher_suites(&config.cipher_suites).map_err(|e| e.to_string())?;
    for name in dropped {
        tracing::warn!(
            cipher_suite = %name,
            "ignoring a TLS cipher suite detcd does not implement"
        );
    }
    let data_dir = std::path::Path::new(&config.data_dir);
    let hosts = |urls: &[Url]| urls.iter().map(|u| u.host.clone()).collect::<Vec<_>>();

    let mut peer_info = TlsInfo {
        cert_file: config.peer_cert_file.clone(),
        key_file: config.peer_key_file.clone(),
        trusted_ca_file: config.peer_trusted_ca_file.clone(),
        client_cert_auth: config.peer_client_cert_auth,
        crl_file: config.peer_crl_file.clone(),
        allowed_cn: config.peer_cert_allowed_cn.clone(),
        allowed_hostname: config.peer_cert_allowed_hostname.clone(),
        cipher_suites: config.cipher_suites.clone(),
        self_signed: false,
    };
    if config.peer_auto_tls {
        if peer_info.is_empty() {
            let dir = data_dir.join("fixtures").join("peer");
            let generated = detcd::tls::self_cert(&dir, &hosts(&config.listen_peer_urls), true)
                .map_err(|e| e.to_string())?;
            peer_info = TlsInfo {
                cipher_suites: config.cipher_suites.clone(),
                ..generated
            };
        } else {
            tracing::warn!("ignoring peer auto TLS since certs given");
        }
    }
    let mut tls = MemberTls::default();
    for url in &config.listen_peer_urls {
        if !url.is_tls() {
            tls.peer.push(None);
            continue;
        }
        if peer_info.is_empty() {
            return Err(format!(
                "cannot listen on TLS for {}: KeyFile and CertFile are not presented",
                url.socket_addr_string()
            ));
        }
        let mut server = detcd::tls::server_config(&peer_info, false).map_err(|e| e.to_string())?;
        server.check_client_san = !config.experimental_peer_skip_client_san_verification;
        tls.peer.push(Some(Arc::new(server)));
    }
    let dials_https = config.initial_cluster.contains("https://")
        || config.initial_advertise_peer_urls.iter().any(Url::is_tls);
    if !peer_info.is_empty() || dials_https {
        tls.peer_client = Some(Arc::new(
            detcd::tls::client_config(&peer_info).map_err(|e| e.to_string())?,
        ));
    }

    let mut client_info = TlsInfo {
        cert_file: config.cert_file.clone(),
        key_file: config.key_file.clone(),
        trusted_ca_file: config.trusted_ca_file.clone(),
        client_cert_auth: config.client_cert_auth,
        crl_file: config.client_crl_file.clone(),
        allowed_cn: String::new(),
        allowed_hostname: config.client_cert_allowed_hostname.clone(),
        cipher_suites: config.cipher_suites.clone(),
        self_signed: false,
    };
    if config.auto_tls {
        if client_info.is_empty() {
            let dir = data_dir.join("fixtures").join("client");
            let generated = detcd::tls::self_cert(&dir, &hosts(&config.listen_client_urls), false)
                .map_err(|e| e.to_string())?;
            client_info = TlsInfo {
                cipher_suites: config.cipher_suites.clone(),
                ..generated
            };
        } else {
            tracing::warn!("ignoring client auto TLS since certs given");
        }
    }
    let mut client_server = None;
    for url in &config.listen_client_urls {
        if !url.is_tls() {
            if !client_info.is_empty() {
                tracing::warn!(url = %url, "scheme is HTTP while key and cert files are present; ignoring key and cert files");
            }
            if client_info.client_cert_auth {
                tracing::warn!(url = %url, "scheme is HTTP while --client-cert-auth is enabled; ignoring client cert auth for this URL");
            }
            tls.client.push(None);
            continue;
        }
        if client_info.is_empty() {
            return Err(format!(
                "TLS key/cert (--cert-file, --key-file) must be provided for client url {url} with HTTPS scheme"
            ));
        }
        if client_server.is_none() {
            let server = detcd::tls::server_config(&client_info, client_info.client_cert_auth)
                .map_err(|e| e.to_string())?;
            client_server = Some(Arc::new(server));
        }
        tls.client.push(client_server.clone());
    }
    Ok(tls)
}

fn server_config(config: &Config) -> Result<ServerConfig, String> {
    let token_provider = token_provider(&config.auth_token)?;
    let members = config
        .initial_cluster_members()
        .map_err(|e| e.to_string())?;
    let wal_dir = if config.wal_dir.is_empty() {
        None
    } else {
        Some(PathBuf::from(&config.wal_dir))
    };
    let data_dir = PathBuf::from(&config.data_dir);
    if !data_dir.join("member").join("wal").exists() && wal_dir.is_none() {
        config.verify_bootstrap().map_err(|e| e.to_string())?;
    }
    let mut tls = member_tls(config)?;
    // Unix-domain socket listeners (`unix://`, `unixs://`) are bound after the TCP ones,
    // so their TLS settings go last too, in the same order.
    let mut tcp_tls = Vec::new();
    let mut unix_tls = Vec::new();
    for (url, t) in config.listen_client_urls.iter().zip(tls.client.drain(..)) {
        if url.is_unix() {
            unix_tls.push(t);
        } else {
            tcp_tls.push(t);
        }
    }
    tls.client = tcp_tls.into_iter().chain(unix_tls).collect();
    let listen_client_addrs = config
        .listen_client_urls
        .iter()
        .filter(|u| !u.is_unix())
        .map(listen_addr)
        .collect::<Result<Vec<_>, _>>()?;
    // As etcd, `unix://host:port` is a socket file named `host:port`.
    let listen_client_sockets = config
        .listen_client_urls
        .iter()
        .filter(|u| u.is_unix())
        .map(|u| PathBuf::from(u.socket_addr_string()))
        .collect();
    let listen_peer_addrs = config
        .listen_peer_urls
        .iter()
        .map(listen_addr)
        .collect::<Result<Vec<_>, _>>()?;
    let listen_metrics_addrs = config
        .listen_metrics_urls
        .iter()
        .map(|url| {
            if url.is_tls() {
                // etcd serves https metrics URLs with the client certificates; detcd
                // serves metrics in the clear only, and says so rather than ignore it.
                return Err(format!(
                    "listen {url}: https metrics listeners are not supported by detcd yet"
                ));
            }
            listen_addr(url)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ServerConfig {
        name: config.name.clone(),
        data_dir,
        wal_dir,
        listen_client_addrs,
        listen_client_sockets,
        listen_peer_addrs,
        advertise_client_urls: config
            .advertise_client_urls
            .iter()
            .map(|u| u.to_string())
            .collect(),
        initial_advertise_peer_urls: config
            .initial_advertise_peer_urls
            .iter()
            .map(|u| u.to_string())
            .collect(),
        initial_cluster: members
            .into_iter()
            .map(|(name, urls)| (name, urls.iter().map(|u| u.to_string()).collect()))
            .collect(),
        initial_cluster_token: config.initial_cluster_token.clone(),
        join_existing: config.initial_cluster_state == detcd::config::ClusterState::Existing,
        strict_reconfig_check: config.strict_reconfig_check,
        force_new_cluster: config.force_new_cluster,
        heartbeat_interval_ms: config.heartbeat_interval_ms,
        election_timeout_ms: config.election_timeout_ms,
        max_request_bytes: config.max_request_bytes as usize,
        max_txn_ops: config.max_txn_ops as usize,
        watch_progress_notify_interval: config.experimental_watch_progress_notify_interval,
        snapshot_count: config.snapshot_count,
        snapshot_catchup_entries: config.experimental_snapshot_catchup_entries,
        quota_backend_bytes: config.quota_backend_bytes,
        initial_corrupt_check: config.experimental_initial_corrupt_check,
        corrupt_check_interval: config.experimental_corrupt_check_time,
        disk: Arc::new(if config.unsafe_no_fsync {
            tracing::warn!(
                "--unsafe-no-fsync is set: the WAL is never synced, so a power loss or kernel crash can lose acknowledged writes"
            );
            RealDisk::without_fsync()
        } else {
            RealDisk::new()
        }),
        backend: BackendChoice::Sled,
        bcrypt_cost: u32::try_from(config.bcrypt_cost).unwrap_or(u32::MAX),
        auth_token_ttl: Duration::from_secs(config.auth_token_ttl_secs),
        tls,
        token_provider: Arc::new(token_provider),
        listen_metrics_addrs,
        max_concurrent_streams: config.max_concurrent_streams,
        grpc_keepalive_interval: nonzero(config.grpc_keepalive_interval),
        grpc_keepalive_timeout: nonzero(config.grpc_keepalive_timeout),
        pre_vote: config.pre_vote,
        http_access: detcd::gateway::access::AccessPolicy {
            cors: config.cors.clone(),
            host_whitelist: config.host_whitelist.clone(),
            gateway_enabled: config.enable_grpc_gateway,
        },
    })
}

/// A duration flag where zero means "off", as etcd's keepalive flags do.
fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_token_types_are_read_as_etcd_reads_them() {
        assert!(matches!(
            token_provider("simple"),
            Ok(TokenProvider::Simple)
        ));
        assert_eq!(
            token_provider("jwt,pub-key=/nonexistent/a,sign-method=RS256").unwrap_err(),
            "auth: invalid auth options"
        );
        assert_eq!(
            token_provider("jwt,sign-method=RS256").unwrap_err(),
            "auth: missing key data"
        );
        assert_eq!(
            token_provider("bogus").unwrap_err(),
            "auth: invalid auth options"
        );
    }
}
