//! The building blocks of the Lock and Election services: etcd's client-side
//! `concurrency` recipes (sessions, waiting for deletions, observing a prefix), run inside
//! the server on behalf of one caller.
//!
//! etcd serves `v3lock` and `v3election` through an in-process client whose calls carry
//! the caller's context, so every read, write, lease grant and watch they make is checked
//! against the caller's permissions, and every error reaches the caller as a plain error
//! (gRPC `Unknown`) with etcd's text. [`Caller`] does the same over this member's own KV,
//! lease and watch paths: writes are proposed through raft with the caller's token, reads
//! are linearizable and checked with the applied auth store, and watches are registered
//! with this member's watch hub.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tonic::metadata::MetadataMap;

use super::Handle;
use crate::core::apply::Response as Applied;
use crate::core::validate;
use crate::error::EtcdError;
use crate::msg::WatchMsg;
use crate::pb::detcdpb::InternalRequest;
use crate::pb::etcdserverpb::{
    compare, range_request, request_op, Compare, DeleteRangeRequest, DeleteRangeResponse,
    LeaseGrantRequest, PutRequest, RangeRequest, RangeResponse, RequestOp, ResponseHeader,
    TxnRequest, TxnResponse, WatchCreateRequest, WatchResponse,
};
use crate::rt;

/// The TTL of the lease a session grants when the caller names none (clientv3's
/// `defaultSessionTTL`).
pub const DEFAULT_SESSION_TTL_S: i64 = 60;

/// How many times a step is tried when raft could not answer it (no leader, leader
/// changed, timed out): every step is written so that repeating it is harmless.
const ATTEMPTS: usize = 5;
/// The pause between two attempts, so that an election can finish.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// A member's watch hub inbox and the counter that numbers its streams.
#[derive(Clone)]
pub struct WatchPath {
    /// The hub's inbox.
    pub watch_tx: mpsc::Sender<WatchMsg>,
    /// Numbers this member's watch streams; shared with every Watch service.
    pub next_stream: Arc<AtomicU64>,
}

/// A client inside the server acting for one caller: its requests carry the caller's
/// credentials (`md`), as etcd's in-process client carries the caller's context.
#[derive(Clone)]
pub struct Caller {
    handle: Handle,
    watch: WatchPath,
    md: MetadataMap,
}

/// etcd's in-process client hands the server's errors on as plain errors, which gRPC
/// sends as `Unknown` with the error's text.
fn as_client_error(e: EtcdError) -> EtcdError {
    match e {
        EtcdError::Unknown(_) => e,
        other => EtcdError::Unknown(other.message()),
    }
}

/// Whether raft did not decide the request (or did not say): trying again may succeed.
fn transient(e: &EtcdError) -> bool {
    matches!(
        e,
        EtcdError::NoLeader | EtcdError::LeaderChanged | EtcdError::Timeout | EtcdError::Stopped
    )
}

/// Formats a lease id as Go's `%x` does (a sign, then the magnitude in hex), which is how
/// clientv3 names a session's keys.
pub fn go_hex(id: i64) -> String {
    if id < 0 {
        format!("-{:x}", id.unsigned_abs())
    } else {
        format!("{id:x}")
    }
}

/// etcd's `GetPrefixRangeEnd`: the smallest key after every key that starts with
/// `prefix`, or `[0]` (to the end of the keyspace) when there is none.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A range over every key under `prefix` returning only the key created first
/// (clientv3's `WithFirstCreate`) or last (`WithLastCreate`).
pub fn by_create(prefix: &[u8], first: bool) -> RangeRequest {
    RangeRequest {
        key: prefix.to_vec(),
        range_end: prefix_end(prefix),
        limit: 1,
        sort_order: if first {
            range_request::SortOrder::Ascend
        } else {
            range_request::SortOrder::Descend
        } as i32,
        sort_target: range_request::SortTarget::Create as i32,
        ..Default::default()
    }
}

/// A single-key range.
pub fn get(key: &[u8]) -> RangeRequest {
    RangeRequest {
        key: key.to_vec(),
        ..Default::default()
    }
}

/// The comparison "`key` was created at `revision`" (0: `key` does not exist).
pub fn created_at(key: &[u8], revision: i64) -> Compare {
    Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Create as i32,
        key: key.to_vec(),
        range_end: vec![],
        target_union: Some(compare::TargetUnion::CreateRevision(revision)),
    }
}

/// A txn operation: a range.
pub fn op_range(r: RangeRequest) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestRange(r)),
    }
}

/// A txn operation: a put of `value` at `key` attached to `lease`.
pub fn op_put(key: &[u8], value: &[u8], lease: i64) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestPut(PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
            ..Default::default()
        })),
    }
}

/// A txn operation: a delete of `key`.
pub fn op_delete(key: &[u8]) -> RequestOp {
    RequestOp {
        request: Some(request_op::Request::RequestDeleteRange(
            DeleteRangeRequest {
                key: key.to_vec(),
                ..Default::default()
            },
        )),
    }
}

/// The range answer at `index` of a txn's responses, or an internal error when the txn
/// did not answer as the recipe built it.
pub fn range_at(resp: &TxnResponse, index: usize) -> Result<&RangeResponse, EtcdError> {
    use crate::pb::etcdserverpb::response_op::Response;
    match resp.responses.get(index).and_then(|r| r.response.as_ref()) {
        Some(Response::ResponseRange(r)) => Ok(r),
        _ => Err(EtcdError::Internal(format!(
            "txn response {index} is not a range"
        ))),
    }
}

impl Caller {
    /// A client acting with the credentials in `md` (a token, or a client certificate's
    /// name).
    pub fn new(handle: Handle, watch: WatchPath, md: MetadataMap) -> Caller {
        Caller { handle, watch, md }
    }

    /// Runs `step` until it succeeds, fails for good, or has been tried [`ATTEMPTS`]
    /// times; the error is the client's view of the last failure.
    async fn retrying<T, F, Fut>(&self, mut step: F) -> Result<T, EtcdError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, EtcdError>>,
    {
        let mut attempt = 1;
        loop {
            match step().await {
                Err(e) if transient(&e) && attempt < ATTEMPTS => {
                    attempt += 1;
                    tracing::debug!(error = %e, attempt, "lock/election step retried");
                    rt::sleep(RETRY_PAUSE).await;
                }
                other => return other.map_err(as_client_error),
            }
        }
    }

    /// A linearizable range, checked against the caller's read permission.
    pub async fn range(&self, req: RangeRequest) -> Result<RangeResponse, EtcdError> {
        validate::check_range(&req).map_err(as_client_error)?;
        self.retrying(|| async {
            let info = self
                .handle
                .check_read(&self.md, &req.key, &req.range_end)
                .await?;
            let resp = self.handle.range(req.clone()).await?;
            self.handle.check_still_current(&info)?;
            Ok(resp)
        })
        .await
    }

    /// A txn, proposed with the caller's credentials after etcd's quota check.
    pub async fn txn(&self, req: TxnRequest) -> Result<TxnResponse, EtcdError> {
        validate::check_txn(&req, self.handle.max_txn_ops).map_err(as_client_error)?;
        let request = InternalRequest {
            txn: Some(req),
            ..Default::default()
        };
        self.retrying(|| async {
            self.handle.check_quota(&request).await?;
            match self
                .handle
                .propose_authed(&self.md, request.clone())
                .await?
            {
                Applied::Txn(r) => Ok(r),
                _ => Err(EtcdError::Internal("unexpected response to txn".into())),
            }
        })
        .await
    }

    /// Deletes `key`, with the caller's credentials.
    pub async fn delete(&self, key: &[u8]) -> Result<DeleteRangeResponse, EtcdError> {
        let req = DeleteRangeRequest {
            key: key.to_vec(),
            ..Default::default()
        };
        validate::check_delete(&req).map_err(as_client_error)?;
        let request = InternalRequest {
            delete_range: Some(req),
            ..Default::default()
        };
        self.retrying(|| async {
            match self
                .handle
                .propose_authed(&self.md, request.clone())
                .await?
            {
                Applied::DeleteRange(r) => Ok(r),
                _ => Err(EtcdError::Internal("unexpected response to delete".into())),
            }
        })
        .await
    }

    /// clientv3's `NewSession(WithLease(lease))` as etcd's services use it: the lease
    /// itself, or, when the caller names none (0), a fresh lease of
    /// [`DEFAULT_SESSION_TTL_S`] that nothing keeps alive (the services orphan their
    /// sessions at once).
    pub async fn session_lease(&self, lease: i64) -> Result<i64, EtcdError> {
        if lease != 0 {
            return Ok(lease);
        }
        let id = super::lease::new_lease_id();
        let request = InternalRequest {
            lease_grant: Some(LeaseGrantRequest {
                ttl: DEFAULT_SESSION_TTL_S,
                id,
            }),
            ..Default::default()
        };
        let mut first = true;
        self.retrying(|| {
            let retry = !std::mem::replace(&mut first, false);
            let request = request.clone();
            async move {
                self.handle.check_quota(&request).await?;
                match self.handle.propose_authed(&self.md, request).await {
                    Ok(Applied::LeaseGrant(r)) => Ok(r.id),
                    // The earlier attempt was applied after all.
                    Err(EtcdError::LeaseExist) if retry => Ok(id),
                    Ok(_) => Err(EtcdError::Internal(
                        "unexpected response to lease grant".into(),
                    )),
                    Err(e) => Err(e),
                }
            }
        })
        .await
    }

    /// Watches `[key, range_end)` from `start_revision` on this member's watch hub, after
    /// checking the caller may read it (etcd's `isWatchPermitted`).
    pub async fn watch(
        &self,
        key: &[u8],
        range_end: &[u8],
        start_revision: i64,
    ) -> Result<Watcher, EtcdError> {
        self.retrying(|| self.handle.check_read(&self.md, key, range_end))
            .await?;
        let stream = self.watch.next_stream.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(super::watch::STREAM_QUEUE_BOUND);
        let queued_bytes = Arc::new(crate::msg::WatchQueueState::default());
        let hub = self.watch.watch_tx.clone();
        hub.send(WatchMsg::OpenStream {
            stream,
            tx,
            queued_bytes: queued_bytes.clone(),
        })
        .await
        .map_err(|_| as_client_error(EtcdError::Stopped))?;
        // From here the watcher closes its stream when dropped.
        let watcher = Watcher {
            stream,
            rx,
            queued_bytes,
            hub: hub.clone(),
        };
        hub.send(WatchMsg::Create {
            stream,
            request: WatchCreateRequest {
                key: key.to_vec(),
                range_end: range_end.to_vec(),
                start_revision,
                ..Default::default()
            },
        })
        .await
        .map_err(|_| as_client_error(EtcdError::Stopped))?;
        Ok(watcher)
    }

    /// clientv3's `waitDelete`: waits until `key` is deleted at or after `revision`.
    async fn wait_delete(&self, key: &[u8], revision: i64) -> Result<(), EtcdError> {
        let mut watcher = self.watch(key, &[], revision).await?;
        loop {
            let resp = watcher.next().await?;
            if resp
                .events
                .iter()
                .any(|ev| ev.r#type == crate::pb::mvccpb::event::EventType::Delete as i32)
            {
                return Ok(());
            }
        }
    }

    /// clientv3's `waitDeletes`: waits until no key under `prefix` created at or before
    /// `max_create_revision` is left, newest first, and answers with the header of the
    /// read that found none.
    pub async fn wait_deletes(
        &self,
        prefix: &[u8],
        max_create_revision: i64,
    ) -> Result<ResponseHeader, EtcdError> {
        loop {
            let mut req = by_create(prefix, false);
            req.max_create_revision = max_create_revision;
            let resp = self.range(req).await?;
            let Some(last) = resp.kvs.first() else {
                return Ok(resp.header.unwrap_or_default());
            };
            let revision = resp.header.as_ref().map_or(0, |h| h.revision);
            self.wait_delete(&last.key, revision).await?;
        }
    }
}

/// One watch on this member's hub, on a stream of its own; the stream is closed when the
/// watcher is dropped.
pub struct Watcher {
    stream: u64,
    rx: mpsc::Receiver<Result<crate::core::watch::WatchFrame, tonic::Status>>,
    queued_bytes: Arc<crate::msg::WatchQueueState>,
    hub: mpsc::Sender<WatchMsg>,
}

impl Watcher {
    /// The next response carrying events. A canceled watch (its start revision was
    /// compacted, or the member is going away) is an error, as clientv3 reports it.
    pub async fn next(&mut self) -> Result<WatchResponse, EtcdError> {
        loop {
            let frame = match self.rx.recv().await {
                Some(Ok(f)) => f,
                Some(Err(status)) => return Err(EtcdError::Unknown(status.message().into())),
                None => return Err(EtcdError::Unknown("lost watcher waiting for delete".into())),
            };
            super::watch::took(
                &self.queued_bytes,
                &self.hub,
                self.stream,
                &frame,
                self.rx.len(),
            );
            let resp = frame.decode();
            if resp.canceled {
                return Err(if resp.compact_revision != 0 {
                    as_client_error(EtcdError::Compacted)
                } else {
                    EtcdError::Unknown(resp.cancel_reason)
                });
            }
            if !resp.events.is_empty() {
                return Ok(resp);
            }
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let close = WatchMsg::CloseStream {
            stream: self.stream,
        };
        // The hub's inbox is bounded; when it is full, close the stream a little later
        // rather than block whoever drops the watcher.
        if let Err(mpsc::error::TrySendError::Full(close)) = self.hub.try_send(close) {
            let hub = self.hub.clone();
            rt::spawn("watch-close", async move {
                let _ = hub.send(close).await;
            });
        }
    }
}

/// What an abandoned request leaves behind and must take back.
pub enum Undo {
    /// Delete a lock waiter's key (clientv3's `Mutex.Unlock`).
    Delete(Vec<u8>),
    /// Delete a candidate's key if it is still the one created at `revision`
    /// (clientv3's `Election.Resign`).
    Resign {
        /// The candidate's key.
        key: Vec<u8>,
        /// The key's create revision.
        revision: i64,
    },
}

/// Undoes a waiting request's key when the request is dropped before it finished: gRPC
/// drops a handler whose client went away (etcd's canceled context), and a waiter that is
/// gone must not keep its place in line.
pub struct UndoOnDrop {
    caller: Caller,
    undo: Option<Undo>,
}

impl UndoOnDrop {
    /// Arms the guard.
    pub fn new(caller: Caller, undo: Undo) -> UndoOnDrop {
        UndoOnDrop {
            caller,
            undo: Some(undo),
        }
    }

    /// The request finished (either way): nothing to undo.
    pub fn disarm(mut self) {
        self.undo = None;
    }
}

impl Drop for UndoOnDrop {
    fn drop(&mut self) {
        let Some(undo) = self.undo.take() else {
            return;
        };
        let caller = self.caller.clone();
        rt::spawn("lock-undo", async move {
            let result = match &undo {
                Undo::Delete(key) => caller.delete(key).await.map(|_| ()),
                Undo::Resign { key, revision } => resign(&caller, key, *revision).await.map(|_| ()),
            };
            if let Err(e) = result {
                // The key still goes when its lease expires.
                tracing::warn!(error = %e, "could not withdraw an abandoned lock or campaign");
            }
        });
    }
}

/// clientv3's `Election.Resign`: deletes the candidate's `key` if it is still the one
/// created at `revision`; answers with the txn's header whether or not it was.
pub async fn resign(
    caller: &Caller,
    key: &[u8],
    revision: i64,
) -> Result<ResponseHeader, EtcdError> {
    let resp = caller
        .txn(TxnRequest {
            compare: vec![created_at(key, revision)],
            success: vec![op_delete(key)],
            failure: vec![],
        })
        .await?;
    Ok(resp.header.unwrap_or_default())
}
