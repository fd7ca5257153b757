//! The Watch service: one bidirectional stream per call, carrying many watchers.
//!
//! Each call registers a stream with the watch hub, together with the bounded queue its
//! responses go through, and forwards the client's requests to the hub as they come. The
//! hub answers everything (created, canceled, events, progress); this file only moves
//! messages and notices when the client goes away.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::Stream;
use prost::Message as _;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::actors::storage::SharedAuth;
use crate::core::auth::Access;
use crate::core::jwt::TokenProvider;
use crate::error::EtcdError;
use crate::msg::{WatchMsg, WatchQueueState};
use crate::pb::etcdserverpb::watch_request::RequestUnion;
use crate::pb::etcdserverpb::watch_server::Watch;
use crate::pb::etcdserverpb::{WatchRequest, WatchResponse};
use crate::rt;

/// Responses one stream may have queued for its client (etcd's `chanBufLen`). A client
/// that reads slower than its watchers produce gets no more queued: its watchers fall
/// back to catching up from history.
pub const STREAM_QUEUE_BOUND: usize = 128;

/// The Watch service.
pub struct WatchService {
    watch_tx: mpsc::Sender<WatchMsg>,
    next_stream: Arc<AtomicU64>,
    /// The raft status, to refuse streams while this member is a learner.
    raft_status: Option<rt::watch::Receiver<crate::msg::RaftStatus>>,
    /// The auth view and the token provider, to check each watch's read permission.
    auth: Option<(SharedAuth, Arc<TokenProvider>)>,
}

impl WatchService {
    /// Builds the service over the watch hub's inbox. `next_stream` numbers the streams
    /// of this member; every listener's service must share it.
    pub fn new(watch_tx: mpsc::Sender<WatchMsg>, next_stream: Arc<AtomicU64>) -> WatchService {
        WatchService {
            watch_tx,
            next_stream,
            raft_status: None,
            auth: None,
        }
    }

    /// Checks each watch's read permission with the applied auth store and this member's
    /// tokens (etcd's `isWatchPermitted`).
    pub fn with_auth(mut self, auth: SharedAuth, tokens: Arc<TokenProvider>) -> WatchService {
        self.auth = Some((auth, tokens));
        self
    }

    /// Refuses new streams while `raft_status` says this member is a learner, as etcd's
    /// stream interceptor refuses every stream on a learner.
    pub fn with_learner_check(
        mut self,
        raft_status: rt::watch::Receiver<crate::msg::RaftStatus>,
    ) -> WatchService {
        self.raft_status = Some(raft_status);
        self
    }
}

/// etcd's `isWatchPermitted`: whether the stream's token may read `[key, range_end)`.
/// A token that is invalid fails even while auth is disabled, as in etcd. Without a
/// token, the stream acts for `cert_user`, its connection's client-certificate user, if
/// any.
fn watch_permitted(
    (auth, tokens): &(SharedAuth, Arc<TokenProvider>),
    token: Option<&str>,
    cert_user: Option<&str>,
    key: &[u8],
    range_end: &[u8],
) -> Result<(), EtcdError> {
    let mut view = match auth.lock() {
        Ok(v) => v,
        Err(poisoned) => poisoned.into_inner(),
    };
    let info = match (token, cert_user) {
        (Some(t), _) => {
            super::resolve_token(&mut view, tokens, t).ok_or(EtcdError::InvalidAuthToken)?
        }
        (None, Some(cn)) if view.store.is_enabled() => super::AuthInfo {
            user: cn.to_string(),
            revision: view.store.revision(),
        },
        (None, _) => super::AuthInfo::default(),
    };
    view.store
        .check(&info.user, info.revision, Access::Read, key, range_end)
}

/// The cancel reason etcd gives a watch it refuses: the text of the gRPC error, as Go
/// formats it, for the four errors it tells apart; anything else is "permission denied".
fn watch_cancel_reason(e: &EtcdError) -> String {
    let (code, e) = match e {
        EtcdError::InvalidAuthToken => ("Unauthenticated", e),
        EtcdError::AuthOldRevision => ("InvalidArgument", e),
        EtcdError::UserEmpty => ("InvalidArgument", e),
        _ => ("PermissionDenied", &EtcdError::PermissionDenied),
    };
    format!("rpc error: code = {code} desc = {}", e.message())
}

/// Accounts for a response the reader took from stream `stream`'s queue, leaving `len`
/// there, and tells the hub if it waits for this queue to drain. The hub's inbox is
/// bounded and the reader never waits on it: if it is full, the next response taken
/// tries again (and the hub's tick retries anyway).
pub fn took(
    queue: &WatchQueueState,
    hub: &mpsc::Sender<WatchMsg>,
    stream: u64,
    resp: &WatchResponse,
    len: usize,
) {
    if queue.taken(resp.encoded_len(), len, STREAM_QUEUE_BOUND)
        && hub.try_send(WatchMsg::Drained { stream }).is_err()
    {
        queue.rearm();
    }
}

/// What one client request becomes for the hub (`None`: etcd ignores it).
fn to_hub(stream: u64, req: WatchRequest) -> Option<WatchMsg> {
    match req.request_union? {
        RequestUnion::CreateRequest(request) => Some(WatchMsg::Create { stream, request }),
        RequestUnion::CancelRequest(c) => Some(WatchMsg::Cancel {
            stream,
            watch_id: c.watch_id,
        }),
        RequestUnion::ProgressRequest(_) => Some(WatchMsg::Progress { stream }),
    }
}

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

    async fn watch(
        &self,
        req: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        if self
            .raft_status
            .as_ref()
            .is_some_and(|s| s.borrow().is_learner)
        {
            return Err(EtcdError::NotSupportedForLearner.to_status());
        }
        let token = req
            .metadata()
            .get(super::TOKEN_METADATA_KEY)
            .and_then(|t| t.to_str().ok())
            .map(str::to_string);
        let cert_user = req
            .metadata()
            .get(super::CERT_CN_METADATA_KEY)
            .and_then(|t| t.to_str().ok())
            .map(str::to_string);
        let auth = self.auth.clone();
        let mut inbound = req.into_inner();
        let stream = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(STREAM_QUEUE_BOUND);
        let queued_bytes = Arc::new(WatchQueueState::default());
        self.watch_tx
            .send(WatchMsg::OpenStream {
                stream,
                tx: tx.clone(),
                queued_bytes: queued_bytes.clone(),
            })
            .await
            .map_err(|_| EtcdError::Stopped.to_status())?;
        let hub = self.watch_tx.clone();
        let denied_bytes = queued_bytes.clone();
        rt::spawn("watch-stream", async move {
            loop {
                tokio::select! {
                    // Branches are polled in order, not at random, so a simulation replays from its seed.
                    biased;
                    msg = inbound.message() => match msg {
                        Ok(Some(req)) => {
                            if let (Some(auth), Some(RequestUnion::CreateRequest(c))) =
                                (&auth, &req.request_union)
                            {
                                if let Err(e) = watch_permitted(
                                    auth,
                                    token.as_deref(),
                                    cert_user.as_deref(),
                                    &c.key,
                                    &c.range_end,
                                ) {
                                    // As etcd: the watch is created and canceled at once,
                                    // under clientv3's InvalidWatchID.
                                    let resp = WatchResponse {
                                        header: Some(Default::default()),
                                        watch_id: -1,
                                        created: true,
                                        canceled: true,
                                        cancel_reason: watch_cancel_reason(&e),
                                        ..Default::default()
                                    };
                                    denied_bytes
                                        .bytes
                                        .fetch_add(resp.encoded_len(), Ordering::Relaxed);
                                    if tx.send(Ok(resp)).await.is_err() {
                                        break;
                                    }
                                    continue;
                                }
                            }
                            if let Some(m) = to_hub(stream, req) {
                                if hub.send(m).await.is_err() {
                                    break;
                                }
                            }
                        }
                        Ok(None) => {
                            // The client closed its side; as etcd, keep sending until
                            // it goes away.
                            tx.closed().await;
                            break;
                        }
                        Err(_) => break,
                    },
                    _ = tx.closed() => break,
                }
            }
            let _ = hub.send(WatchMsg::CloseStream { stream }).await;
        });
        // Whatever gRPC takes leaves the queue's byte count, so the hub sees the room, and
        // the hub hears when a queue it waits on has drained.
        let drain_hub = self.watch_tx.clone();
        let mut rx = rx;
        let out = futures::stream::poll_fn(move |cx| {
            let item = std::task::ready!(rx.poll_recv(cx));
            if let Some(Ok(r)) = &item {
                took(&queued_bytes, &drain_hub, stream, r, rx.len());
            }
            std::task::Poll::Ready(item)
        });
        Ok(Response::new(Box::pin(out)))
    }
}
