//! Client-side helpers for simulation tests: bounded gRPC calls against simulated
//! members, waiting for a leader or for convergence, and a trace of observations that two
//! runs of the same seed must reproduce exactly.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use detcd::pb::etcdserverpb::kv_client::KvClient;
use detcd::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use detcd::pb::etcdserverpb::{PutRequest, RangeRequest, StatusRequest};
use madsim::time::{sleep, timeout, Instant};

use crate::harness::{self, SimMember};

/// etcd's request timeout with the simulated timing: 5 s plus twice the election timeout.
pub const REQUEST_TIMEOUT: Duration = Duration::from_millis(7_000);
/// The errors etcd answers a write with when it cannot reach a quorum.
pub const QUORUM_ERRORS: [&str; 3] = [
    "etcdserver: request timed out",
    "etcdserver: leader changed",
    "etcdserver: no leader",
];

/// Records every observation of a scenario, so two runs can be compared.
#[derive(Default)]
pub struct Trace {
    hasher: std::collections::hash_map::DefaultHasher,
}

impl Trace {
    /// Adds an observation (printed too when `DETCD_SIM_TRACE` is set).
    pub fn record(&mut self, what: impl Hash + std::fmt::Debug) {
        if std::env::var_os("DETCD_SIM_TRACE").is_some() {
            eprintln!("trace: {:?} {what:?}", madsim::time::Instant::now());
        }
        what.hash(&mut self.hasher);
    }

    /// Ends the trace with the simulated time and returns its hash.
    pub fn finish(mut self) -> u64 {
        let now = madsim::time::Instant::now();
        self.record(format!("{now:?}"));
        self.hasher.finish()
    }
}

/// Connects to `url` (bounded: one second).
pub async fn channel(url: &str) -> Result<tonic::transport::Channel, String> {
    let endpoint =
        tonic::transport::Endpoint::from_shared(url.to_string()).map_err(|e| e.to_string())?;
    match timeout(Duration::from_secs(1), endpoint.connect()).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(format!("connect: {e}")),
        Err(_) => Err("connect: timed out".into()),
    }
}

/// Puts through `url`, bounded well past the server's request timeout, so a server that
/// never answers fails the test rather than hanging it.
pub async fn put(url: &str, key: &str, value: &str) -> Result<i64, String> {
    let mut kv = KvClient::new(channel(url).await?);
    let call = kv.put(PutRequest {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
        ..Default::default()
    });
    match timeout(REQUEST_TIMEOUT + Duration::from_secs(3), call).await {
        Ok(Ok(r)) => Ok(r.into_inner().header.map(|h| h.revision).unwrap_or(0)),
        Ok(Err(status)) => Err(status.message().to_string()),
        Err(_) => panic!("put through {url} did not answer within the request timeout"),
    }
}

/// Reads every key under `prefix` through `url`.
pub async fn get_prefix(
    url: &str,
    prefix: &str,
    serializable: bool,
) -> Result<BTreeMap<String, String>, String> {
    let mut kv = KvClient::new(channel(url).await?);
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().unwrap() += 1;
    let call = kv.range(RangeRequest {
        key: prefix.as_bytes().to_vec(),
        range_end: end,
        serializable,
        ..Default::default()
    });
    match timeout(REQUEST_TIMEOUT + Duration::from_secs(3), call).await {
        Ok(Ok(r)) => Ok(r
            .into_inner()
            .kvs
            .into_iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(&kv.key).into_owned(),
                    String::from_utf8_lossy(&kv.value).into_owned(),
                )
            })
            .collect()),
        Ok(Err(status)) => Err(status.message().to_string()),
        Err(_) => panic!("range through {url} did not answer within the request timeout"),
    }
}

/// (member id, leader id) as member `url` reports them, or `None` if it does not answer.
pub async fn status_of(url: &str) -> Option<(u64, u64)> {
    let mut m = MaintenanceClient::new(channel(url).await.ok()?);
    match timeout(Duration::from_secs(2), m.status(StatusRequest {})).await {
        Ok(Ok(r)) => {
            let r = r.into_inner();
            Some((r.header.map(|h| h.member_id).unwrap_or(0), r.leader))
        }
        _ => None,
    }
}

/// The member id the member runs as: for a member of the initial cluster, as etcd derives
/// it from its peer URL; for one added at runtime, the id its addition returned.
pub fn id_of(m: &SimMember) -> u64 {
    if let Some(id) = m.added_member_id() {
        return id;
    }
    let i = (m
        .ip
        .to_string()
        .rsplit('.')
        .next()
        .unwrap()
        .parse::<usize>()
        .unwrap())
        - 1;
    detcd::raft::ids::member_id(&[harness::member_peer_url(i)], "etcd-cluster")
}

/// Waits until every member of `group` reports the same leader, which must be one of
/// `group`, and returns its index in `members`. Members are told apart by the ids they
/// report, so members that joined later (with ids drawn at runtime) count too.
pub async fn wait_leader(members: &[SimMember], group: &[usize]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut seen = Vec::new();
        for &i in group {
            seen.push((i, status_of(&members[i].client_url()).await));
        }
        if let Some((_, Some((_, leader)))) = seen.first() {
            if *leader != 0 && seen.iter().all(|(_, s)| s.map(|s| s.1) == Some(*leader)) {
                if let Some((i, _)) = seen.iter().find(|(_, s)| s.map(|s| s.0) == Some(*leader)) {
                    return *i;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "members {group:?} did not agree on a leader among themselves: {seen:?}"
        );
        sleep(Duration::from_millis(200)).await;
    }
}

/// Puts through the members of `via` in turn until one acknowledges (bounded).
pub async fn put_retrying(members: &[SimMember], via: &[usize], key: &str, value: &str) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut attempt = 0;
    loop {
        let url = members[via[attempt % via.len()]].client_url();
        match put(&url, key, value).await {
            Ok(rev) => return rev,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "put {key} never succeeded; last error: {e}"
                );
            }
        }
        attempt += 1;
        sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until member `i` answers a linearizable read of `prefix` with exactly `want`.
pub async fn wait_has(
    members: &[SimMember],
    i: usize,
    prefix: &str,
    want: &BTreeMap<String, String>,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = get_prefix(&members[i].client_url(), prefix, false).await;
        if got.as_ref() == Ok(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "member {} never converged on {prefix}: got {got:?}, want {want:?}",
            members[i].name
        );
        sleep(Duration::from_millis(200)).await;
    }
}

/// Asserts that a write through `url` fails with one of etcd's quorum errors, within the
/// request timeout (plus scheduling slack), and returns the error.
pub async fn expect_no_quorum(url: &str, key: &str) -> String {
    let start = Instant::now();
    let e = put(url, key, "must-not-commit")
        .await
        .expect_err("a write without quorum succeeded");
    let took = start.elapsed();
    assert!(
        QUORUM_ERRORS.contains(&e.as_str()),
        "unexpected error for a write without quorum: {e}"
    );
    assert!(
        took <= REQUEST_TIMEOUT + Duration::from_secs(1),
        "a write without quorum took {took:?} to fail"
    );
    e
}

/// The KV hash (HashKV) of member `url` at `revision`, with the revision it answered at.
pub async fn hash_kv(url: &str, revision: i64) -> Result<(u32, i64), String> {
    let mut m = MaintenanceClient::new(channel(url).await?);
    let call = m.hash_kv(detcd::pb::etcdserverpb::HashKvRequest { revision });
    match timeout(REQUEST_TIMEOUT, call).await {
        Ok(Ok(r)) => {
            let r = r.into_inner();
            Ok((r.hash, r.header.map(|h| h.revision).unwrap_or(0)))
        }
        Ok(Err(status)) => Err(status.message().to_string()),
        Err(_) => Err("hashkv timed out".into()),
    }
}
