//! `--config-file`: etcd's YAML configuration format.
//!
//! etcd converts the YAML to JSON and decodes it into its config struct, so
//! keys are the flag names, type mismatches are JSON decoding errors, unknown
//! keys are ignored, and URL lists are comma-separated strings. We decode the
//! YAML generically and feed each value through the flag setter, which keeps
//! one set of parsing rules for all three sources.

use serde_yaml_ng::Value;

use super::{ClusterState, Config, ConfigError, Notice, NoticeLevel, SetError};

/// How etcd's config struct types a YAML key, with the Go type name that
/// appears in its decoding errors.
#[derive(Clone, Copy)]
enum Kind {
    Str,
    Unsigned(&'static str),
    Signed(&'static str),
    Bool,
    Duration,
    StrList,
    UrlList,
}

fn kind_of(key: &str) -> Option<Kind> {
    use Kind::*;
    Some(match key {
        "name"
        | "data-dir"
        | "wal-dir"
        | "initial-cluster"
        | "initial-cluster-token"
        | "initial-cluster-state"
        | "discovery"
        | "discovery-proxy"
        | "discovery-srv"
        | "discovery-srv-name"
        | "auto-compaction-retention"
        | "auto-compaction-mode"
        | "auth-token"
        | "metrics"
        | "logger"
        | "log-level"
        | "log-package-levels"
        | "experimental-enable-v2v3"
        | "experimental-backend-bbolt-freelist-type"
        | "cors"
        | "host-whitelist"
        | "proxy"
        | "discovery-fallback" => Str,
        "snapshot-count" | "experimental-snapshot-catchup-entries" => Unsigned("uint64"),
        "max-concurrent-streams" => Unsigned("uint32"),
        "max-snapshots"
        | "max-wals"
        | "heartbeat-interval"
        | "election-timeout"
        | "max-txn-ops"
        | "max-request-bytes"
        | "bcrypt-cost"
        | "auth-token-ttl"
        | "proxy-failure-wait"
        | "proxy-refresh-interval"
        | "proxy-dial-timeout"
        | "proxy-write-timeout"
        | "proxy-read-timeout" => Unsigned("uint"),
        "quota-backend-bytes" => Signed("int64"),
        "backend-batch-limit" | "experimental-compaction-batch-limit" => Signed("int"),
        "initial-election-tick-advance"
        | "strict-reconfig-check"
        | "enable-v2"
        | "pre-vote"
        | "enable-pprof"
        | "debug"
        | "enable-grpc-gateway"
        | "experimental-initial-corrupt-check"
        | "experimental-enable-lease-checkpoint"
        | "experimental-enable-lease-checkpoint-persist"
        | "unsafe-no-fsync"
        | "force-new-cluster" => Bool,
        "backend-batch-interval"
        | "grpc-keepalive-min-time"
        | "grpc-keepalive-interval"
        | "grpc-keepalive-timeout"
        | "experimental-corrupt-check-time"
        | "experimental-watch-progress-notify-interval"
        | "experimental-warning-apply-duration" => Duration,
        "cipher-suites" | "log-outputs" | "log-output" => StrList,
        "listen-peer-urls"
        | "listen-client-urls"
        | "listen-metrics-urls"
        | "initial-advertise-peer-urls"
        | "advertise-client-urls" => UrlList,
        _ => return None,
    })
}

/// Reads `path` and applies it to `cfg`, with etcd's error messages.
pub(super) fn apply_file(cfg: &mut Config, path: &str) -> Result<(), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        let reason = match e.kind() {
            std::io::ErrorKind::NotFound => "no such file or directory".to_string(),
            std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
            _ => e.to_string(),
        };
        ConfigError::Invalid(format!("open {path}: {reason}"))
    })?;
    apply_str(cfg, &text)
}

/// Applies YAML text to `cfg`; split from [`apply_file`] for tests.
pub(super) fn apply_str(cfg: &mut Config, text: &str) -> Result<(), ConfigError> {
    let doc: Value = serde_yaml_ng::from_str(text)
        .map_err(|e| ConfigError::Invalid(format!("error converting YAML to JSON: yaml: {e}")))?;
    let map = match doc {
        Value::Null => return Ok(()),
        Value::Mapping(map) => map,
        other => {
            return Err(decode_error(format!(
                "cannot unmarshal {} into Go value of type embed.configYAML",
                json_kind(&other)
            )))
        }
    };
    let default_initial_cluster = cfg.initial_cluster.clone();
    for (key, value) in &map {
        let Some(key) = key.as_str() else { continue };
        // Go's JSON decoder matches field names case-insensitively.
        let key = key.to_ascii_lowercase();
        if value.is_null() {
            continue;
        }
        if key == "client-transport-security" || key == "peer-transport-security" {
            apply_security(cfg, &key, value)?;
            continue;
        }
        let Some(kind) = kind_of(&key) else {
            cfg.notices.push(Notice {
                level: NoticeLevel::Warn,
                message: format!("ignoring unknown config file key {key:?}"),
            });
            continue;
        };
        apply_value(cfg, &key, kind, value)?;
    }
    // A discovery setting replaces the default static cluster.
    if (!cfg.discovery.is_empty() || !cfg.discovery_srv.is_empty())
        && cfg.initial_cluster == default_initial_cluster
    {
        cfg.initial_cluster.clear();
    }
    Ok(())
}

fn apply_value(cfg: &mut Config, key: &str, kind: Kind, value: &Value) -> Result<(), ConfigError> {
    let mismatch = |go_type: &str| {
        decode_error(format!(
            "cannot unmarshal {} into Go struct field configYAML.{key} of type {go_type}",
            json_kind(value)
        ))
    };
    let text = match kind {
        Kind::Str | Kind::UrlList => value.as_str().ok_or_else(|| mismatch("string"))?.to_string(),
        Kind::Bool => value.as_bool().ok_or_else(|| mismatch("bool"))?.to_string(),
        Kind::Unsigned(go_type) => match value {
            Value::Number(n) => match n.as_u64() {
                Some(v) if go_type != "uint32" || v <= u32::MAX as u64 => v.to_string(),
                _ => {
                    return Err(decode_error(format!(
                        "cannot unmarshal number {n} into Go struct field configYAML.{key} of type {go_type}"
                    )))
                }
            },
            _ => return Err(mismatch(go_type)),
        },
        Kind::Signed(go_type) => match value {
            Value::Number(n) => match n.as_i64() {
                Some(v) => v.to_string(),
                None => {
                    return Err(decode_error(format!(
                        "cannot unmarshal number {n} into Go struct field configYAML.{key} of type {go_type}"
                    )))
                }
            },
            _ => return Err(mismatch(go_type)),
        },
        // etcd decodes durations as integer nanoseconds; Go duration strings
        // ("5s") are accepted too, as a convenience etcd lacks.
        Kind::Duration => match value {
            Value::Number(n) => match n.as_i64() {
                Some(v) => format!("{v}ns"),
                None => {
                    return Err(decode_error(format!(
                        "cannot unmarshal number {n} into Go struct field configYAML.{key} of type time.Duration"
                    )))
                }
            },
            Value::String(s) => s.clone(),
            _ => return Err(mismatch("time.Duration")),
        },
        Kind::StrList => {
            let Value::Sequence(items) = value else {
                return Err(mismatch("[]string"));
            };
            let mut parts = Vec::with_capacity(items.len());
            for item in items {
                let Some(s) = item.as_str() else {
                    return Err(decode_error(format!(
                        "cannot unmarshal {} into Go struct field configYAML.{key} of type string",
                        json_kind(item)
                    )));
                };
                parts.push(s.to_string());
            }
            if key == "cipher-suites" {
                cfg.cipher_suites = parts;
            } else if key == "log-outputs" {
                cfg.log_outputs = parts;
            } else {
                cfg.deprecated_log_output = parts;
            }
            return Ok(());
        }
    };
    if key == "initial-cluster-state" {
        // etcd validates this one later, with its own message; empty means "new".
        cfg.initial_cluster_state = match text.as_str() {
            "" => ClusterState::New,
            other => ClusterState::parse(other).ok_or_else(|| {
                ConfigError::Invalid(format!("unexpected clusterState {other:?}"))
            })?,
        };
        return Ok(());
    }
    if text.is_empty() && matches!(kind, Kind::UrlList) {
        // etcd treats an empty URL string as "keep the default".
        return Ok(());
    }
    if text.is_empty() && key == "auto-compaction-mode" {
        return Ok(());
    }
    match cfg.set(key, &text) {
        Ok(()) => Ok(()),
        Err(SetError::Invalid(m)) => Err(ConfigError::Invalid(m)),
        Err(SetError::Reason(reason)) => Err(match (kind, key) {
            (Kind::UrlList, _) => {
                // etcd's message for this key names the wrong flag; keep it.
                let shown = if key == "advertise-client-urls" { "advertise-peer-urls" } else { key };
                ConfigError::Fatal(format!("unexpected error setting up {shown}: {reason}"))
            }
            (_, "proxy") => ConfigError::Fatal(format!("unexpected error setting up proxyFlag: {reason}")),
            (_, "discovery-fallback") => {
                ConfigError::Fatal(format!("unexpected error setting up discovery-fallback flag: {reason}"))
            }
            (Kind::Duration, _) => decode_error(format!(
                "cannot unmarshal string into Go struct field configYAML.{key} of type time.Duration"
            )),
            _ => ConfigError::Invalid(format!("invalid value {text:?} for {key}: {reason}")),
        }),
    }
}

/// The `client-transport-security` / `peer-transport-security` maps.
fn apply_security(cfg: &mut Config, key: &str, value: &Value) -> Result<(), ConfigError> {
    let Value::Mapping(map) = value else {
        return Err(decode_error(format!(
            "cannot unmarshal {} into Go struct field configYAML.{key} of type embed.securityConfig",
            json_kind(value)
        )));
    };
    let peer = key.starts_with("peer");
    // etcd copies the whole section over the TLS settings, so fields not
    // mentioned are reset rather than kept.
    let (mut cert, mut key_file, mut ca, mut auth, mut auto) =
        (String::new(), String::new(), String::new(), false, false);
    for (k, v) in map {
        let Some(k) = k.as_str() else { continue };
        let k = k.to_ascii_lowercase();
        if v.is_null() {
            continue;
        }
        let field = format!("{key}.{k}");
        let string = || {
            v.as_str().map(str::to_string).ok_or_else(|| {
                decode_error(format!(
                    "cannot unmarshal {} into Go struct field configYAML.{field} of type string",
                    json_kind(v)
                ))
            })
        };
        let boolean = || {
            v.as_bool().ok_or_else(|| {
                decode_error(format!(
                    "cannot unmarshal {} into Go struct field configYAML.{field} of type bool",
                    json_kind(v)
                ))
            })
        };
        match k.as_str() {
            "cert-file" => cert = string()?,
            "key-file" => key_file = string()?,
            "trusted-ca-file" => ca = string()?,
            "client-cert-auth" => auth = boolean()?,
            "auto-tls" => auto = boolean()?,
            _ => {}
        }
    }
    if peer {
        cfg.peer_cert_file = cert;
        cfg.peer_key_file = key_file;
        cfg.peer_trusted_ca_file = ca;
        cfg.peer_client_cert_auth = auth;
        cfg.peer_auto_tls = auto;
    } else {
        cfg.cert_file = cert;
        cfg.key_file = key_file;
        cfg.trusted_ca_file = ca;
        cfg.client_cert_auth = auth;
        cfg.auto_tls = auto;
    }
    Ok(())
}

fn decode_error(detail: String) -> ConfigError {
    ConfigError::Invalid(format!(
        "error unmarshaling JSON: while decoding JSON: json: {detail}"
    ))
}

/// The JSON type name Go's decoder uses in its errors.
fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Sequence(_) => "array",
        Value::Mapping(_) => "object",
        Value::Tagged(_) => "object",
    }
}
