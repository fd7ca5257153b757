//! The Watch service: one bidirectional stream per call, carrying many watchers.
//!
//! Each call registers a stream with the watch hub, together with the bounded queue its
//! responses go through, and forwards the client's requests to the hub as they come. The
//! hub answers everything (created, canceled, events, progress); this file only moves
//! messages and notices when the client goes away.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::actors::storage::SharedAuth;
use crate::core::auth::Access;
use crate::core::jwt::TokenProvider;
use crate::core::watch::WatchFrame;
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
    frame: &WatchFrame,
    len: usize,
) {
    if queue.taken(frame.len(), len, STREAM_QUEUE_BOUND)
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

/// One stream's responses as the hub queues them, encoded.
pub type FrameStream = Pin<Box<dyn Stream<Item = Result<WatchFrame, Status>> + Send>>;

/// The generated service, which decodes every frame back into a response: what the
/// simulator serves (its gRPC passes messages, not bytes). Real listeners serve
/// [`WatchFrameServer`], which writes the frames as they are.
#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

    async fn watch(
        &self,
        req: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let frames = self.open(req).await?;
        Ok(Response::new(Box::pin(
            frames.map(|f| f.map(|f| f.decode())),
        )))
    }
}

impl WatchService {
    /// Serves one Watch call: registers the stream with the hub, forwards the client's
    /// requests, and returns the stream's responses.
    pub async fn open(&self, req: Request<Streaming<WatchRequest>>) -> Result<FrameStream, Status> {
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
                                    let frame = WatchFrame::from_response(&resp);
                                    denied_bytes
                                        .bytes
                                        .fetch_add(frame.len(), Ordering::Relaxed);
                                    if tx.send(Ok(frame)).await.is_err() {
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
        Ok(Box::pin(out))
    }
}

crate::real_only! {
pub use wire::{WatchCodec, WatchFrameServer};

/// The Watch service on real listeners, written by hand instead of generated so that its
/// responses are encoded by [`WatchFrame::write`] (copies of shared, already encoded
/// pieces) rather than by prost, response by response. The bytes on the wire are the
/// same.
mod wire {
    use std::convert::Infallible;
    use std::sync::Arc;

    use tonic::codec::{Codec, EncodeBuf, Encoder};
    use tonic::codegen::{http, Body, BoxFuture, Context, Poll, StdError};
    use tonic::Status;

    use super::{FrameStream, WatchService};
    use crate::core::watch::WatchFrame;
    use crate::pb::etcdserverpb::WatchRequest;

    /// Requests decoded by prost, responses written from their frames.
    #[derive(Debug, Clone, Copy, Default)]
    pub struct WatchCodec;

    impl Codec for WatchCodec {
        type Encode = WatchFrame;
        type Decode = WatchRequest;
        type Encoder = FrameEncoder;
        type Decoder = tonic_prost::ProstDecoder<WatchRequest>;

        fn encoder(&mut self) -> FrameEncoder {
            FrameEncoder
        }

        fn decoder(&mut self) -> Self::Decoder {
            tonic_prost::ProstDecoder::default()
        }
    }

    /// Writes a frame's bytes.
    #[derive(Debug, Clone, Copy, Default)]
    pub struct FrameEncoder;

    impl Encoder for FrameEncoder {
        type Item = WatchFrame;
        type Error = Status;

        fn encode(&mut self, item: WatchFrame, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
            item.write(buf);
            Ok(())
        }
    }

    /// The one method of the service.
    struct WatchMethod(Arc<WatchService>);

    impl tonic::server::StreamingService<WatchRequest> for WatchMethod {
        type Response = WatchFrame;
        type ResponseStream = FrameStream;
        type Future = BoxFuture<tonic::Response<FrameStream>, Status>;

        fn call(
            &mut self,
            request: tonic::Request<tonic::Streaming<WatchRequest>>,
        ) -> Self::Future {
            let inner = self.0.clone();
            Box::pin(async move { inner.open(request).await.map(tonic::Response::new) })
        }
    }

    /// etcd's `etcdserverpb.Watch` service, as the generated `WatchServer` serves it
    /// but with [`WatchCodec`].
    #[derive(Clone)]
    pub struct WatchFrameServer {
        inner: Arc<WatchService>,
        max_decoding_message_size: usize,
    }

    impl WatchFrameServer {
        /// Serves `inner`, refusing requests larger than `max_decoding_message_size`.
        pub fn new(inner: WatchService, max_decoding_message_size: usize) -> WatchFrameServer {
            WatchFrameServer {
                inner: Arc::new(inner),
                max_decoding_message_size,
            }
        }
    }

    impl<B> tower_service::Service<http::Request<B>> for WatchFrameServer
    where
        B: Body + Send + 'static,
        B::Error: Into<StdError> + Send + 'static,
    {
        type Response = http::Response<tonic::body::Body>;
        type Error = Infallible;
        type Future = BoxFuture<Self::Response, Self::Error>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: http::Request<B>) -> Self::Future {
            if req.uri().path() != "/etcdserverpb.Watch/Watch" {
                // As the generated servers answer an unknown method.
                return Box::pin(async move {
                    let mut response = http::Response::new(tonic::body::Body::default());
                    let headers = response.headers_mut();
                    headers.insert(
                        Status::GRPC_STATUS,
                        (tonic::Code::Unimplemented as i32).into(),
                    );
                    headers.insert(
                        http::header::CONTENT_TYPE,
                        tonic::metadata::GRPC_CONTENT_TYPE,
                    );
                    Ok(response)
                });
            }
            let method = WatchMethod(self.inner.clone());
            let max_decoding = self.max_decoding_message_size;
            Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(WatchCodec)
                    .apply_max_message_size_config(Some(max_decoding), Some(usize::MAX));
                Ok(grpc.streaming(method, req).await)
            })
        }
    }

    impl tonic::server::NamedService for WatchFrameServer {
        const NAME: &'static str = "etcdserverpb.Watch";
    }
}
}
