//! The Election service (`v3electionpb.Election`): Campaign, Proclaim, Leader, Observe
//! and Resign, as etcd's `v3election` serves them over clientv3's
//! `concurrency.Election`.
//!
//! An election named `N` is the set of keys under `N/`. A candidate creates
//! `N/<lease in hex>` holding its proposal, attached to its lease; the key created first
//! is the leader, and a candidate's campaign ends when every key created before its own is
//! gone. The leader's key and its create revision (a [`LeaderKey`]) prove leadership to
//! Proclaim and Resign.

use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use super::concurrency::{
    by_create, created_at, get, go_hex, op_put, op_range, prefix_end, range_at, resign, Caller,
    Undo, UndoOnDrop, WatchPath,
};
use super::{reply, Handle};
use crate::error::EtcdError;
use crate::pb::etcdserverpb::{ResponseHeader, TxnRequest};
use crate::pb::mvccpb::event::EventType;
use crate::pb::v3electionpb::election_server::Election;
use crate::pb::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};
use crate::rt;

/// Leader changes an Observe stream may have queued for its client; a client that reads
/// slower holds the observer back (its watch then catches up from history).
pub const OBSERVE_QUEUE_BOUND: usize = 64;

/// clientv3's `ErrElectionNotLeader`.
const NOT_LEADER: &str = "election: not leader";
/// clientv3's `ErrElectionNoLeader`.
const NO_LEADER: &str = "election: no leader";
/// etcd's `ErrMissingLeaderKey`.
const MISSING_LEADER_KEY: &str = "\"leader\" field must be provided";
/// The error of a candidate whose key went while it waited (its lease expired or was
/// revoked): it must not be told it leads. etcd 3.4 answers such a candidate as leader.
const SESSION_EXPIRED: &str = "election: session expired";

/// The Election service.
pub struct ElectionService {
    handle: Handle,
    watch: WatchPath,
}

impl ElectionService {
    /// Builds the service over the actors' handle and this member's watch hub.
    pub fn new(handle: Handle, watch: WatchPath) -> ElectionService {
        ElectionService { handle, watch }
    }

    fn caller(&self, md: tonic::metadata::MetadataMap) -> Caller {
        Caller::new(self.handle.clone(), self.watch.clone(), md)
    }
}

/// The prefix that holds election `name`'s candidates.
fn prefix_of(name: &[u8]) -> Vec<u8> {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    prefix
}

/// clientv3's `Election.Proclaim`: replaces the leader's value, if `key` is still the one
/// created at `revision`.
async fn proclaim(
    caller: &Caller,
    key: &[u8],
    revision: i64,
    lease: i64,
    value: &[u8],
) -> Result<ResponseHeader, EtcdError> {
    let resp = caller
        .txn(TxnRequest {
            compare: vec![created_at(key, revision)],
            success: vec![op_put(key, value, lease)],
            failure: vec![],
        })
        .await?;
    if !resp.succeeded {
        return Err(EtcdError::Unknown(NOT_LEADER.into()));
    }
    Ok(resp.header.unwrap_or_default())
}

/// clientv3's `Election.Campaign`: stands for election `name` with `value` under `lease`
/// and waits until elected.
async fn campaign(
    caller: &Caller,
    name: &[u8],
    lease: i64,
    value: &[u8],
) -> Result<CampaignResponse, EtcdError> {
    let lease = caller.session_lease(lease).await?;
    let prefix = prefix_of(name);
    let mut key = prefix.clone();
    key.extend_from_slice(go_hex(lease).as_bytes());
    let resp = caller
        .txn(TxnRequest {
            compare: vec![created_at(&key, 0)],
            success: vec![op_put(&key, value, lease)],
            failure: vec![op_range(get(&key))],
        })
        .await?;
    let header = resp.header.unwrap_or_default();
    let mut revision = header.revision;
    if !resp.succeeded {
        // This lease already stands: keep its place, with the new value.
        let kv = range_at(&resp, 0)?
            .kvs
            .first()
            .ok_or_else(|| EtcdError::Internal("candidate key vanished inside a txn".into()))?;
        revision = kv.create_revision;
        if kv.value != value {
            if let Err(e) = proclaim(caller, &key, revision, lease, value).await {
                let _ = resign(caller, &key, revision).await;
                return Err(e);
            }
        }
    }

    let guard = UndoOnDrop::new(
        caller.clone(),
        Undo::Resign {
            key: key.clone(),
            revision,
        },
    );
    let waited = async {
        caller.wait_deletes(&prefix, revision - 1).await?;
        caller.range(get(&key)).await
    }
    .await;
    // As clientv3, only an abandoned campaign resigns; one that failed keeps its key.
    guard.disarm();
    let mine = waited?;
    if mine
        .kvs
        .first()
        .is_none_or(|kv| kv.create_revision != revision)
    {
        return Err(EtcdError::Unknown(SESSION_EXPIRED.into()));
    }
    Ok(CampaignResponse {
        header: Some(header),
        leader: Some(LeaderKey {
            name: name.to_vec(),
            key,
            rev: revision,
            lease,
        }),
    })
}

/// clientv3's `Election.Observe`: sends the leader, then every change of its value, then
/// the next leader when its key goes, and so on, until the client goes away or a read or
/// watch fails (then the stream just ends, as etcd's does).
async fn observe(
    caller: Caller,
    prefix: Vec<u8>,
    tx: mpsc::Sender<Result<LeaderResponse, Status>>,
) {
    loop {
        let Ok(first) = caller.range(by_create(&prefix, true)).await else {
            return;
        };
        let revision = first.header.as_ref().map_or(0, |h| h.revision);
        let (header, kv) = match first.kvs.into_iter().next() {
            Some(kv) => (first.header.unwrap_or_default(), kv),
            None => {
                // No leader yet: wait for the first candidate's key.
                let Ok(mut watcher) = caller.watch(&prefix, &prefix_end(&prefix), revision).await
                else {
                    return;
                };
                loop {
                    let Ok(resp) = watcher.next().await else {
                        return;
                    };
                    let put = resp
                        .events
                        .into_iter()
                        .find(|ev| ev.r#type == EventType::Put as i32)
                        .and_then(|ev| ev.kv);
                    if let Some(kv) = put {
                        let mut header = resp.header.unwrap_or_default();
                        // The response may span several revisions: name the key's own.
                        header.revision = kv.mod_revision;
                        break (header, kv);
                    }
                }
            }
        };
        let answer = LeaderResponse {
            header: Some(header),
            kv: Some(kv.clone()),
        };
        if tx.send(Ok(answer)).await.is_err() {
            return;
        }
        // Follow this leader until its key goes.
        let Ok(mut watcher) = caller.watch(&kv.key, &[], header.revision + 1).await else {
            return;
        };
        'leader: loop {
            let Ok(resp) = watcher.next().await else {
                return;
            };
            for ev in resp.events {
                if ev.r#type == EventType::Delete as i32 {
                    break 'leader;
                }
                let answer = LeaderResponse {
                    header: resp.header,
                    kv: ev.kv,
                };
                if tx.send(Ok(answer)).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        req: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        self.handle.refuse_if_learner()?;
        let (md, _, req) = req.into_parts();
        let caller = self.caller(md);
        reply(campaign(&caller, &req.name, req.lease, &req.value).await)
    }

    async fn proclaim(
        &self,
        req: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        self.handle.refuse_if_learner()?;
        let (md, _, req) = req.into_parts();
        let caller = self.caller(md);
        let result = async {
            let leader = req
                .leader
                .ok_or_else(|| EtcdError::Unknown(MISSING_LEADER_KEY.into()))?;
            let lease = caller.session_lease(leader.lease).await?;
            let header = proclaim(&caller, &leader.key, leader.rev, lease, &req.value).await?;
            Ok(ProclaimResponse {
                header: Some(header),
            })
        }
        .await;
        reply(result)
    }

    async fn leader(
        &self,
        req: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        self.handle.refuse_if_learner()?;
        let (md, _, req) = req.into_parts();
        let caller = self.caller(md);
        let result = async {
            let resp = caller.range(by_create(&prefix_of(&req.name), true)).await?;
            let kv = resp
                .kvs
                .into_iter()
                .next()
                .ok_or_else(|| EtcdError::Unknown(NO_LEADER.into()))?;
            Ok(LeaderResponse {
                header: resp.header,
                kv: Some(kv),
            })
        }
        .await;
        reply(result)
    }

    type ObserveStream = tokio_stream::wrappers::ReceiverStream<Result<LeaderResponse, Status>>;

    async fn observe(
        &self,
        req: Request<LeaderRequest>,
    ) -> Result<Response<Self::ObserveStream>, Status> {
        self.handle.refuse_if_learner()?;
        let (md, _, req) = req.into_parts();
        let caller = self.caller(md);
        let (tx, rx) = mpsc::channel(OBSERVE_QUEUE_BOUND);
        let prefix = prefix_of(&req.name);
        rt::spawn("election-observe", async move {
            let gone = tx.clone();
            tokio::select! {
                // Branches are polled in order, not at random, so a simulation replays
                // from its seed.
                biased;
                _ = gone.closed() => {}
                _ = observe(caller, prefix, tx) => {}
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn resign(
        &self,
        req: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        self.handle.refuse_if_learner()?;
        let (md, _, req) = req.into_parts();
        let caller = self.caller(md);
        let result = async {
            let leader = req
                .leader
                .ok_or_else(|| EtcdError::Unknown(MISSING_LEADER_KEY.into()))?;
            // etcd opens a session here too, which grants a lease when none is named.
            caller.session_lease(leader.lease).await?;
            let header = resign(&caller, &leader.key, leader.rev).await?;
            Ok(ResignResponse {
                header: Some(header),
            })
        }
        .await;
        reply(result)
    }
}
