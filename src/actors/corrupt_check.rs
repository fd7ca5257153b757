//! The corruption checks: a starting member compares its KV hash with its peers'
//! (`--experimental-initial-corrupt-check`), and the leader does so periodically
//! (`--experimental-corrupt-check-time`), raising CORRUPT for a member found inconsistent.
//!
//! Peers are asked through the Maintenance service their peer listeners serve (etcd's
//! peer port serves the client API too). The decisions are the pure ones of
//! [`crate::core::corrupt`]; this module only gathers the hashes.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::actors::transport::PeerDialer;
use crate::core::corrupt::{self, KvHash};
use crate::error::EtcdError;
use crate::gateway::Handle;
use crate::msg::StorageMsg;
use crate::pb::detcdpb::InternalRequest;
use crate::pb::etcdserverpb::maintenance_client::MaintenanceClient;
use crate::pb::etcdserverpb::{
    alarm_request::AlarmAction, AlarmRequest, AlarmType, HashKvRequest, HashKvResponse,
};
use crate::rt;

/// Turns a `HashKV` answer into a [`KvHash`].
fn kv_hash(resp: &HashKvResponse) -> KvHash {
    let header = resp.header.unwrap_or_default();
    KvHash {
        member_id: header.member_id,
        hash: resp.hash,
        revision: header.revision,
        compact_revision: resp.compact_revision,
    }
}

/// Asks one peer for its hash at `revision` through each of its URLs in turn.
async fn peer_hash(
    dialer: &PeerDialer,
    id: u64,
    urls: &[String],
    revision: i64,
    timeout: Duration,
) -> Option<KvHash> {
    for url in urls {
        let deadline = rt::now() + timeout;
        let call = async {
            let channel = dialer.connect(url, timeout).await?;
            MaintenanceClient::new(channel)
                .hash_kv(HashKvRequest { revision })
                .await
                .map(|r| r.into_inner())
                .map_err(|s| s.message().to_string())
        };
        match rt::timeout_at(deadline, call).await {
            Ok(Ok(resp)) => return Some(kv_hash(&resp)),
            Ok(Err(e)) => tracing::warn!(
                remote_peer_id = format!("{id:x}"),
                remote_peer_endpoint = %url,
                error = %e,
                "failed hash kv request"
            ),
            Err(_) => tracing::warn!(
                remote_peer_id = format!("{id:x}"),
                remote_peer_endpoint = %url,
                "hash kv request timed out"
            ),
        }
    }
    None
}

/// Every peer's hash at `revision`, leaving out the peers that could not answer (down,
/// behind, or compacted past `revision`), as etcd does.
async fn peer_hashes(
    dialer: &PeerDialer,
    peers: &BTreeMap<u64, Vec<String>>,
    revision: i64,
    timeout: Duration,
) -> Vec<KvHash> {
    let mut hashes = Vec::new();
    for (&id, urls) in peers {
        if let Some(h) = peer_hash(dialer, id, urls, revision, timeout).await {
            hashes.push(h);
        }
    }
    hashes
}

/// etcd's initial corruption check: compares `local` (this member's hash at its current
/// revision, before it serves) with its peers' hashes at that revision. Fails with etcd's
/// "<id> found data inconsistency with peers" if any comparable peer differs.
pub async fn initial_check(
    dialer: &PeerDialer,
    local: KvHash,
    peers: &BTreeMap<u64, Vec<String>>,
    timeout: Duration,
) -> Result<(), String> {
    let id = format!("{:x}", local.member_id);
    tracing::info!(local_member_id = %id, "starting initial corruption check");
    let hashes = peer_hashes(dialer, peers, local.revision, timeout).await;
    let mismatches = corrupt::initial_mismatches(&local, &hashes);
    for peer in &mismatches {
        tracing::warn!(
            local_member_id = %id,
            remote_peer_id = format!("{peer:x}"),
            revision = local.revision,
            "found different hash values from remote peer"
        );
    }
    if !mismatches.is_empty() {
        return Err(format!("{id} found data inconsistency with peers"));
    }
    tracing::info!(local_member_id = %id, "initial corruption checking passed; no corruption");
    Ok(())
}

/// This member's own hash at its current revision.
async fn local_hash(handle: &Handle) -> Result<KvHash, EtcdError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let resp = handle
        .call(
            StorageMsg::HashKv {
                revision: 0,
                reply: tx,
            },
            rx,
            &handle.storage_tx,
        )
        .await??;
    Ok(kv_hash(&resp))
}

/// One pass of the leader's periodic check (etcd's `checkHashKV`); raises CORRUPT for
/// the first member found inconsistent.
async fn check_once(
    handle: &Handle,
    dialer: &PeerDialer,
    peers: &BTreeMap<u64, Vec<String>>,
) -> Result<(), EtcdError> {
    let before = local_hash(handle).await?;
    let hashes = peer_hashes(dialer, peers, before.revision, handle.request_timeout).await;
    handle.read_index().await?;
    let after = local_hash(handle).await?;
    let Some(member_id) = corrupt::periodic_mismatch(&before, &after, &hashes) else {
        return Ok(());
    };
    tracing::warn!(
        member_id = format!("{member_id:x}"),
        revision = before.revision,
        "found hash mismatch; raising the CORRUPT alarm"
    );
    let alarm = InternalRequest {
        alarm: Some(AlarmRequest {
            action: AlarmAction::Activate as i32,
            member_id,
            alarm: AlarmType::Corrupt as i32,
        }),
        ..Default::default()
    };
    handle.propose(alarm).await.map(|_| ())
}

/// The other members' peer URLs, by id, from a membership.
pub fn peers_of(membership: &crate::msg::Membership, local_id: u64) -> BTreeMap<u64, Vec<String>> {
    membership
        .members
        .iter()
        .filter(|(&id, _)| id != local_id)
        .map(|(&id, m)| (id, m.peer_urls.clone()))
        .collect()
}

/// Runs the periodic check every `interval` while this member leads, until `stop` turns
/// true. Each round checks the members of the membership applied at that time, dialing
/// them with `dialer`.
pub async fn run_periodic(
    handle: Handle,
    dialer: PeerDialer,
    interval: Duration,
    mut stop: rt::watch::Receiver<bool>,
) {
    tracing::info!(interval = ?interval, "enabled corruption checking");
    loop {
        tokio::select! {
            // Branches are polled in order, not at random, so a simulation replays from its seed.
            biased;
            _ = stop.wait_for(|s| *s) => return,
            _ = rt::sleep(interval) => {}
        }
        let status = handle.raft_status.borrow().clone();
        if status.leader_id != status.member_id {
            continue;
        }
        let peers = peers_of(&handle.membership.borrow(), status.member_id);
        if let Err(e) = check_once(&handle, &dialer, &peers).await {
            tracing::warn!(error = %e, "failed to check hash KV");
        }
    }
}
