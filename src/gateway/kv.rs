//! The KV service: Range, Put, DeleteRange, Txn, Compact.

use tonic::{Request, Response, Status};

use super::{reply, unimplemented, Handle};
use crate::core::apply::Response as Applied;
use crate::core::validate;
use crate::error::EtcdError;
use crate::pb::detcdpb::InternalRequest;
use crate::pb::etcdserverpb::kv_server::Kv;
use crate::pb::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};

/// The KV service.
pub struct KvService {
    handle: Handle,
}

impl KvService {
    /// Builds the service over the actors' handle.
    pub fn new(handle: Handle) -> KvService {
        KvService { handle }
    }
}

fn unexpected(what: &str) -> EtcdError {
    EtcdError::Internal(format!("apply returned an unexpected response to {what}"))
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let (md, _, req) = req.into_parts();
        if !req.serializable {
            self.handle.refuse_if_learner()?;
        }
        let result = async {
            validate::check_range(&req)?;
            // Reads are served without raft, so this member checks the permission, with
            // the auth store it has applied (etcd's `doSerialize`).
            let info = self
                .handle
                .check_read(&md, &req.key, &req.range_end)
                .await?;
            let resp = self.handle.range(req).await?;
            self.handle.check_still_current(&info)?;
            Ok(resp)
        }
        .await;
        reply(result)
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let (md, _, req) = req.into_parts();
        let result = async {
            self.handle.refuse_if_learner()?;
            let request = InternalRequest {
                put: Some(req),
                ..Default::default()
            };
            // etcd checks the quota before it validates the request.
            self.handle.check_quota(&request).await?;
            if let Some(put) = &request.put {
                validate::check_put(put)?;
            }
            match self.handle.propose_authed(&md, request).await? {
                Applied::Put(r) => Ok(r),
                _ => Err(unexpected("put")),
            }
        }
        .await;
        reply(result)
    }

    async fn delete_range(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let (md, _, req) = req.into_parts();
        let result = async {
            self.handle.refuse_if_learner()?;
            validate::check_delete(&req)?;
            let request = InternalRequest {
                delete_range: Some(req),
                ..Default::default()
            };
            match self.handle.propose_authed(&md, request).await? {
                Applied::DeleteRange(r) => Ok(r),
                _ => Err(unexpected("delete range")),
            }
        }
        .await;
        reply(result)
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let (md, _, req) = req.into_parts();
        let result = async {
            self.handle.refuse_if_learner()?;
            let request = InternalRequest {
                txn: Some(req),
                ..Default::default()
            };
            // etcd checks the quota before it validates the request.
            self.handle.check_quota(&request).await?;
            if let Some(txn) = &request.txn {
                validate::check_txn(txn, self.handle.max_txn_ops)?;
            }
            match self.handle.propose_authed(&md, request).await? {
                Applied::Txn(r) => Ok(r),
                _ => Err(unexpected("txn")),
            }
        }
        .await;
        reply(result)
    }

    async fn compact(
        &self,
        req: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let (md, _, req) = req.into_parts();
        let result = async {
            self.handle.refuse_if_learner()?;
            let request = InternalRequest {
                compaction: Some(req),
                ..Default::default()
            };
            match self.handle.propose_authed(&md, request).await? {
                Applied::Compaction(r) => Ok(r),
                _ => Err(unexpected("compaction")),
            }
        }
        .await;
        reply(result)
    }

    type RangeStreamStream = tokio_stream::wrappers::ReceiverStream<
        Result<crate::pb::etcdserverpb::RangeStreamResponse, Status>,
    >;

    async fn range_stream(
        &self,
        _req: Request<RangeRequest>,
    ) -> Result<Response<Self::RangeStreamStream>, Status> {
        Err(unimplemented("KV.RangeStream"))
    }
}
