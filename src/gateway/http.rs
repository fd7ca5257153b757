//! The plain HTTP endpoints of etcd's client and metrics listeners: `/version`, `/health`
//! and `/metrics`, with etcd 3.4's bodies and semantics. The runtime seam serves them;
//! these functions only decide what to answer.

use std::time::Duration;

use crate::gateway::Handle;
use crate::pb::etcdserverpb::AlarmType;
use crate::rt;

/// How long `/health` waits for its linearizable read, as etcd 3.4 waits for its QGET.
pub const HEALTH_READ_TIMEOUT: Duration = Duration::from_secs(1);

/// The body of `GET /version`.
pub fn version_body() -> String {
    format!(
        "{{\"etcdserver\":\"{}\",\"etcdcluster\":\"{}\"}}",
        crate::ETCD_VERSION,
        crate::ETCD_CLUSTER_VERSION
    )
}

/// The alarms `?exclude=NAME` (repeatable) asks `/health` to ignore.
pub fn excluded_alarms(query: Option<&str>) -> Vec<String> {
    query
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.strip_prefix("exclude="))
        .map(str::to_string)
        .collect()
}

/// etcd 3.4's `/health` check: unhealthy while an alarm not excluded is raised, without a
/// leader, or when a linearizable read does not complete within a second. Returns the HTTP
/// status and body: `{"health":"true"}`, or 503 with `{"health":"false"}` and the newline
/// Go's `http.Error` adds.
pub async fn health(handle: &Handle, exclude: &[String]) -> (u16, String) {
    if check_health(handle, exclude).await {
        (200, "{\"health\":\"true\"}".to_string())
    } else {
        (503, "{\"health\":\"false\"}\n".to_string())
    }
}

async fn check_health(handle: &Handle, exclude: &[String]) -> bool {
    let Ok(storage) = handle.storage_status().await else {
        return false;
    };
    for alarm in &storage.alarms {
        let name = AlarmType::try_from(alarm.alarm)
            .map(|a| a.as_str_name().to_string())
            .unwrap_or_else(|_| alarm.alarm.to_string());
        if exclude.contains(&name) {
            continue;
        }
        tracing::warn!(alarm = %name, "/health error due to an alarm");
        return false;
    }
    if handle.raft_status.borrow().leader_id == 0 {
        tracing::warn!("/health error; no leader");
        return false;
    }
    match rt::timeout_at(rt::now() + HEALTH_READ_TIMEOUT, handle.read_index()).await {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "/health error");
            false
        }
        Err(_) => {
            tracing::warn!("/health error: the linearizable read timed out");
            false
        }
    }
}

/// The page `GET /metrics` serves.
pub fn metrics_page(handle: &Handle) -> String {
    let status = handle.raft_status.borrow().clone();
    handle.metrics.render(crate::metrics::Snapshot {
        has_leader: status.leader_id != 0,
        committed_index: status.commit_index,
        db_size_bytes: handle
            .backend_size
            .load(std::sync::atomic::Ordering::Relaxed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_and_excludes() {
        assert_eq!(
            version_body(),
            "{\"etcdserver\":\"3.4.23\",\"etcdcluster\":\"3.4.0\"}"
        );
        assert_eq!(
            excluded_alarms(Some("exclude=NOSPACE&x=1&exclude=CORRUPT")),
            vec!["NOSPACE".to_string(), "CORRUPT".to_string()]
        );
        assert!(excluded_alarms(None).is_empty());
    }
}
