//! The Lock service (`v3lockpb.Lock`): Lock and Unlock, as etcd's `v3lock` serves them
//! over clientv3's `concurrency.Mutex`.
//!
//! A lock named `N` is the set of keys under `N/`. A caller joins the line by creating
//! `N/<lease in hex>`, attached to its lease; the key created first holds the lock, and
//! every other waiter watches for the deletion of the key created just before its own, so
//! the lock passes in create-revision order. A holder loses the lock when its key goes:
//! by Unlock, or when its lease expires or is revoked.

use tonic::{Request, Response, Status};

use super::concurrency::{
    by_create, created_at, get, go_hex, op_put, op_range, range_at, Caller, Undo, UndoOnDrop,
    WatchPath,
};
use super::{reply, Handle};
use crate::error::EtcdError;
use crate::pb::etcdserverpb::{ResponseHeader, TxnRequest};
use crate::pb::v3lockpb::lock_server::Lock;
use crate::pb::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};

/// The Lock service.
pub struct LockService {
    handle: Handle,
    watch: WatchPath,
}

impl LockService {
    /// Builds the service over the actors' handle and this member's watch hub.
    pub fn new(handle: Handle, watch: WatchPath) -> LockService {
        LockService { handle, watch }
    }
}

/// The error of a waiter whose key went while it waited (its lease expired or was
/// revoked): it must not be told it holds the lock. etcd 3.4 answers such a waiter as if
/// it held the lock; this is the check etcd 3.5 added, with its text.
const SESSION_EXPIRED: &str = "mutex: session is expired";

/// clientv3's `Mutex.Lock` for `name` with `lease`: waits until the caller's key is the
/// oldest under `name/`, and answers with the header and the key.
pub async fn acquire(
    caller: &Caller,
    name: &[u8],
    lease: i64,
) -> Result<(ResponseHeader, Vec<u8>), EtcdError> {
    let lease = caller.session_lease(lease).await?;
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    let mut my_key = prefix.clone();
    my_key.extend_from_slice(go_hex(lease).as_bytes());
    // Join the line unless this lease already stands in it (locking twice with one lease
    // is one acquisition), and learn the holder in the same step.
    let resp = caller
        .txn(TxnRequest {
            compare: vec![created_at(&my_key, 0)],
            success: vec![
                op_put(&my_key, b"", lease),
                op_range(by_create(&prefix, true)),
            ],
            failure: vec![op_range(get(&my_key)), op_range(by_create(&prefix, true))],
        })
        .await?;
    let header = resp.header.unwrap_or_default();
    let my_revision = if resp.succeeded {
        header.revision
    } else {
        range_at(&resp, 0)?
            .kvs
            .first()
            .map(|kv| kv.create_revision)
            .ok_or_else(|| EtcdError::Internal("lock key vanished inside a txn".into()))?
    };
    let holder = range_at(&resp, 1)?.kvs.first();
    if holder.is_none_or(|kv| kv.create_revision == my_revision) {
        return Ok((header, my_key));
    }

    let guard = UndoOnDrop::new(caller.clone(), Undo::Delete(my_key.clone()));
    let waited = async {
        caller.wait_deletes(&prefix, my_revision - 1).await?;
        caller.range(get(&my_key)).await
    }
    .await;
    guard.disarm();
    let mine = match waited {
        Ok(r) => r,
        Err(e) => {
            // As clientv3: a waiter that failed leaves the line.
            if let Err(undo) = caller.delete(&my_key).await {
                tracing::warn!(error = %undo, "could not withdraw a failed lock waiter");
            }
            return Err(e);
        }
    };
    if mine
        .kvs
        .first()
        .is_none_or(|kv| kv.create_revision != my_revision)
    {
        return Err(EtcdError::Unknown(SESSION_EXPIRED.into()));
    }
    Ok((mine.header.unwrap_or_default(), my_key))
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, req: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        self.handle.refuse_if_learner()?;
        let (md, _, req) = req.into_parts();
        let caller = Caller::new(self.handle.clone(), self.watch.clone(), md);
        reply(
            acquire(&caller, &req.name, req.lease)
                .await
                .map(|(header, key)| LockResponse {
                    header: Some(header),
                    key,
                }),
        )
    }

    async fn unlock(
        &self,
        req: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        self.handle.refuse_if_learner()?;
        let (md, _, req) = req.into_parts();
        let caller = Caller::new(self.handle.clone(), self.watch.clone(), md);
        reply(
            caller
                .delete(&req.key)
                .await
                .map(|r| UnlockResponse { header: r.header }),
        )
    }
}
