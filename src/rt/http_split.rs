//! HTTP beside gRPC on the client port (real sockets only): the layer that tells gRPC
//! requests from the others, the JSON gateway that turns the others into gRPC calls on
//! the same router, `/version`, `/health` and `/metrics`, and the metrics listener.
//!
//! etcd 3.4 splits its client port by content type: HTTP/2 requests with
//! `content-type: application/grpc*` go to the gRPC server, everything else to an HTTP
//! mux holding grpc-gateway (which calls the gRPC server) and the plain endpoints. detcd
//! does the same inside tonic's server, which accepts HTTP/1.1 and HTTP/2 on one
//! connection: [`HttpSplit`] wraps the gRPC router, and a JSON request becomes a gRPC
//! request to that router, so both APIs run the same service code.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::BodyExt as _;
use tonic::body::Body;

use super::HttpApi;
use crate::gateway::access;
use crate::gateway::json::{self, CallKind};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Frames queued between the tasks that transcode a streaming call and the connection.
const STREAM_QUEUE: usize = 16;

/// The largest gRPC message the gateway reads back from the router: a snapshot chunk or
/// a large range answer. Larger ones end the call with an error rather than grow a buffer
/// without bound.
const MAX_RESPONSE_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// The layer that puts [`HttpSplit`] in front of the gRPC router.
#[derive(Clone)]
pub struct HttpSplitLayer {
    api: Option<Arc<HttpApi>>,
}

impl HttpSplitLayer {
    /// Serves the JSON gateway and plain endpoints with `api`; without it (the peer
    /// port) the layer only counts gRPC calls and answers other requests with 404.
    pub fn new(api: Option<HttpApi>) -> HttpSplitLayer {
        HttpSplitLayer {
            api: api.map(Arc::new),
        }
    }
}

impl<S> tower_layer::Layer<S> for HttpSplitLayer {
    type Service = HttpSplit<S>;

    fn layer(&self, inner: S) -> HttpSplit<S> {
        HttpSplit {
            inner,
            api: self.api.clone(),
        }
    }
}

/// Routes each request: gRPC to the router (counted in the gRPC metrics), everything
/// else to the HTTP handlers.
#[derive(Clone)]
pub struct HttpSplit<S> {
    inner: S,
    api: Option<Arc<HttpApi>>,
}

fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

impl<S> tower_service::Service<Request<Body>> for HttpSplit<S>
where
    S: tower_service::Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<Body>, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        // The service that was polled ready serves this request; a clone takes its
        // place for the next one.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let api = self.api.clone();
        if is_grpc(&req) {
            let metrics = api.as_ref().map(|a| a.handle.metrics.clone());
            return Box::pin(call_counted(inner, req, metrics));
        }
        Box::pin(async move {
            Ok(match api {
                Some(api) => serve_http(&api, inner, req).await,
                None => text(StatusCode::NOT_FOUND, "404 page not found\n"),
            })
        })
    }
}

/// Calls the gRPC router, counting the call as go-grpc-prometheus does.
async fn call_counted<S>(
    mut inner: S,
    req: Request<Body>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
) -> Result<Response<Body>, BoxError>
where
    S: tower_service::Service<Request<Body>, Response = Response<Body>>,
    S::Error: Into<BoxError>,
{
    let Some(metrics) = metrics else {
        return inner.call(req).await.map_err(Into::into);
    };
    let path = req.uri().path().to_string();
    metrics.grpc_started(&path);
    let resp = inner.call(req).await.map_err(Into::into)?;
    // A trailers-only answer (an error before any message) carries its status here.
    if let Some(code) = grpc_status(resp.headers()) {
        metrics.grpc_handled(&path, code);
        return Ok(resp);
    }
    Ok(resp.map(|body| {
        Body::new(CountingBody {
            inner: body,
            path,
            metrics: Some(metrics),
        })
    }))
}

fn grpc_status(headers: &http::HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// A gRPC response body that counts its call as handled when the status trailer passes,
/// or as canceled if it is dropped before that (the client went away).
struct CountingBody {
    inner: Body,
    path: String,
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl http_body::Body for CountingBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                if let Some(m) = self.metrics.take() {
                    m.grpc_handled(&self.path, code);
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for CountingBody {
    fn drop(&mut self) {
        if let Some(m) = self.metrics.take() {
            m.grpc_handled(&self.path, 1);
        }
    }
}

/// Adds the CORS headers etcd's access controller writes when the request's origin is
/// allowed (`allow_origin`, from [`AccessPolicy::allow_origin`]); none otherwise.
fn with_cors(mut resp: Response<Body>, allow_origin: Option<&str>) -> Response<Body> {
    let Some(origin) = allow_origin.and_then(|o| HeaderValue::from_str(o).ok()) else {
        return resp;
    };
    let h = resp.headers_mut();
    h.insert(
        "access-control-allow-headers",
        HeaderValue::from_static("accept, content-type, authorization"),
    );
    h.insert(
        "access-control-allow-methods",
        HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"),
    );
    h.insert("access-control-allow-origin", origin);
    resp
}

/// The request's Host: the `Host` header (HTTP/1.1), else the URI's authority (HTTP/2's
/// `:authority`), as Go's `Request.Host` holds it.
fn request_host<B>(req: &Request<B>) -> String {
    req.headers()
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default()
}

/// etcd's access controller, in front of every HTTP handler of the client port: over
/// plain HTTP a Host off `--host-whitelist` is refused with 421 (DNS rebinding); an
/// OPTIONS preflight is answered at once. `Err` holds that early answer, `Ok` the
/// `Access-Control-Allow-Origin` value for the real answer (`None`: no CORS headers).
fn access_check<B>(api: &HttpApi, req: &Request<B>) -> Result<Option<String>, Box<Response<Body>>> {
    if !api.secure {
        let host = request_host(req);
        let name = access::hostname(&host);
        if !api.access.host_allowed(name) {
            tracing::warn!(
                host = name,
                "rejecting HTTP request from {name:?} to prevent DNS rebinding attacks"
            );
            return Err(Box::new(text(
                StatusCode::MISDIRECTED_REQUEST,
                &access::rebinding_refusal(name),
            )));
        }
    }
    let origin = req
        .headers()
        .get(http::header::ORIGIN)
        .and_then(|v| v.to_str().ok());
    let allow_origin = api.access.allow_origin(origin);
    if req.method() == Method::OPTIONS {
        let mut resp = Response::new(Body::empty());
        resp.headers_mut()
            .insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        return Err(Box::new(with_cors(resp, allow_origin.as_deref())));
    }
    Ok(allow_origin)
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut resp = Response::new(Body::new(http_body_util::Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    resp
}

/// A plain-text answer as Go's `http.Error` writes it.
fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut resp = respond(status, "text/plain; charset=utf-8", body.to_string());
    resp.headers_mut().insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// A failed gateway call, as grpc-gateway writes it.
fn grpc_error(code: i32, message: &str) -> Response<Body> {
    let status = StatusCode::from_u16(json::http_status(code)).unwrap_or(StatusCode::OK);
    respond(status, "application/json", json::error_body(code, message))
}

/// The client port's HTTP handlers: the endpoints etcd serves beside grpc-gateway, then
/// the gateway's routes.
async fn serve_http<S>(api: &HttpApi, inner: S, req: Request<Body>) -> Response<Body>
where
    S: tower_service::Service<Request<Body>, Response = Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    let allow_origin = match access_check(api, &req) {
        Ok(origin) => origin,
        Err(early) => return *early,
    };
    let path = req.uri().path().to_string();
    let resp = match path.as_str() {
        "/version" | "/health" if req.method() != Method::GET => {
            text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n")
        }
        "/version" => respond(
            StatusCode::OK,
            "application/json",
            crate::gateway::http::version_body(),
        ),
        "/health" => health(api, req.uri().query()).await,
        "/metrics" => metrics(api),
        // Without the gateway these paths fall through to etcd's plain mux, which knows
        // them not.
        p if !api.access.gateway_enabled
            && (p.starts_with("/v3/") || p.starts_with("/v3beta/")) =>
        {
            text(StatusCode::NOT_FOUND, "404 page not found\n")
        }
        p if p.starts_with("/v3/") || p.starts_with("/v3beta/") => match json::route(p) {
            None => text(StatusCode::NOT_FOUND, "Not Found\n"),
            Some(_) if req.method() != Method::POST => {
                text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n")
            }
            Some(route) => gateway_call(api, inner, route, req).await,
        },
        _ => text(StatusCode::NOT_FOUND, "404 page not found\n"),
    };
    with_cors(resp, allow_origin.as_deref())
}

async fn health(api: &HttpApi, query: Option<&str>) -> Response<Body> {
    let exclude = crate::gateway::http::excluded_alarms(query);
    let (status, body) = crate::gateway::http::health(&api.handle, &exclude).await;
    if status == 200 {
        respond(StatusCode::OK, "text/plain; charset=utf-8", body)
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, &body)
    }
}

fn metrics(api: &HttpApi) -> Response<Body> {
    respond(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        crate::gateway::http::metrics_page(&api.handle),
    )
}

/// Frames one protobuf message for gRPC (uncompressed).
fn grpc_frame(message: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(message.len() + 5);
    b.extend_from_slice(&[0]);
    b.extend_from_slice(
        &u32::try_from(message.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    b.extend_from_slice(message);
    b.freeze()
}

/// Reads a request body whole, refusing one longer than `limit` bytes.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, (i32, String)> {
    let limited = http_body_util::Limited::new(body, limit);
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err((
            8,
            format!("grpc: received message larger than max ({limit} bytes)"),
        )),
        Err(e) => Err((2, e.to_string())),
    }
}

/// One JSON gateway call: the JSON request becomes a gRPC request to the router, and
/// the gRPC answer becomes JSON.
async fn gateway_call<S>(
    api: &HttpApi,
    inner: S,
    route: json::Route,
    req: Request<Body>,
) -> Response<Body>
where
    S: tower_service::Service<Request<Body>, Response = Response<Body>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    let (parts, body) = req.into_parts();
    let input = route.method.input();
    let grpc_body = match route.kind {
        CallKind::Unary | CallKind::ServerStream => {
            let bytes = match read_body(body, api.max_request_bytes).await {
                Ok(b) => b,
                Err((code, message)) => return grpc_error(code, &message),
            };
            match json::request_from_json(&input, &bytes) {
                Ok(msg) => Body::new(http_body_util::Full::new(grpc_frame(&msg))),
                Err(e) => return grpc_error(3, &e),
            }
        }
        CallKind::BidiStream => {
            let (tx, rx) =
                tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(STREAM_QUEUE);
            super::spawn(
                "http-gateway-requests",
                forward_requests(body, input, api.max_request_bytes, tx),
            );
            Body::new(http_body_util::StreamBody::new(
                tokio_stream::wrappers::ReceiverStream::new(rx),
            ))
        }
    };
    let mut grpc_req = Request::new(grpc_body);
    *grpc_req.method_mut() = Method::POST;
    *grpc_req.version_mut() = http::Version::HTTP_2;
    *grpc_req.uri_mut() = match route.grpc_path.parse() {
        Ok(u) => u,
        Err(_) => return grpc_error(13, "bad route"),
    };
    // The router's handlers see the connection (its extensions) as for gRPC requests.
    *grpc_req.extensions_mut() = parts.extensions;
    let headers = grpc_req.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("te", HeaderValue::from_static("trailers"));
    // grpc-gateway hands the Authorization header to etcd as its "token" metadata.
    if let Some(token) = parts.headers.get(http::header::AUTHORIZATION) {
        headers.insert(crate::gateway::TOKEN_METADATA_KEY, token.clone());
    }
    let resp = match call_counted(inner, grpc_req, Some(api.handle.metrics.clone())).await {
        Ok(r) => r,
        Err(e) => return grpc_error(14, &e.to_string()),
    };
    if let Some(status) = tonic::Status::from_header_map(resp.headers()) {
        if status.code() != tonic::Code::Ok {
            let code = status.code() as i32;
            return match route.kind {
                CallKind::Unary => grpc_error(code, status.message()),
                _ => {
                    let http = StatusCode::from_u16(json::http_status(code))
                        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                    respond(
                        http,
                        "application/json",
                        json::stream_error_line(code, status.message()),
                    )
                }
            };
        }
    }
    let output = route.method.output();
    let mut reader = GrpcReader::new(resp.into_body());
    if route.kind == CallKind::Unary {
        let mut first = None;
        loop {
            match reader.next().await {
                Ok(GrpcItem::Message(m)) => {
                    first.get_or_insert(m);
                }
                Ok(GrpcItem::End(status)) => {
                    if let Some(s) = status.filter(|s| s.code() != tonic::Code::Ok) {
                        return grpc_error(s.code() as i32, s.message());
                    }
                    break;
                }
                Err(e) => return grpc_error(13, &e),
            }
        }
        let body = match json::response_to_json(&output, &first.unwrap_or_default()) {
            Ok(b) => b,
            Err(e) => return grpc_error(13, &e),
        };
        let mut resp = respond(StatusCode::OK, "application/json", body);
        resp.headers_mut().insert(
            "grpc-metadata-content-type",
            HeaderValue::from_static("application/grpc"),
        );
        return resp;
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(STREAM_QUEUE);
    super::spawn(
        "http-gateway-responses",
        forward_responses(reader, output, tx),
    );
    let mut resp = Response::new(Body::new(http_body_util::StreamBody::new(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    )));
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        "grpc-metadata-content-type",
        HeaderValue::from_static("application/grpc"),
    );
    resp
}

/// Turns a streamed JSON request body into gRPC request frames, until the body ends, a
/// value does not parse (grpc-gateway then stops sending, as here) or the call ends.
async fn forward_requests(
    mut body: Body,
    input: prost_reflect::MessageDescriptor,
    max_bytes: usize,
    tx: tokio::sync::mpsc::Sender<Result<Frame<Bytes>, BoxError>>,
) {
    let mut splitter = json::JsonStream::new(max_bytes);
    loop {
        let frame = tokio::select! {
            // Branches are polled in order, not at random, so a simulation replays from its seed.
            biased;
            _ = tx.closed() => return,
            f = body.frame() => f,
        };
        let data = match frame {
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => d,
                Err(_) => continue,
            },
            Some(Err(_)) | None => return,
        };
        let values = match splitter.push(&data) {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(error = %e, "gateway: failed to decode a streamed request");
                return;
            }
        };
        for v in values {
            let msg = match json::message_from_json(&input, &v) {
                Ok(m) => prost::Message::encode_to_vec(&m),
                Err(e) => {
                    tracing::debug!(error = %e, "gateway: failed to decode a streamed request");
                    return;
                }
            };
            if tx.send(Ok(Frame::data(grpc_frame(&msg)))).await.is_err() {
                return;
            }
        }
    }
}

/// Turns a streamed gRPC answer into `{"result":...}` lines, ending with an error line
/// if the call fails.
async fn forward_responses(
    mut reader: GrpcReader,
    output: prost_reflect::MessageDescriptor,
    tx: tokio::sync::mpsc::Sender<Result<Frame<Bytes>, BoxError>>,
) {
    loop {
        let item = tokio::select! {
            // Branches are polled in order, not at random, so a simulation replays from its seed.
            biased;
            _ = tx.closed() => return,
            i = reader.next() => i,
        };
        let line = match item {
            Ok(GrpcItem::Message(m)) => match json::response_to_json(&output, &m) {
                Ok(j) => format!("{{\"result\":{j}}}\n"),
                Err(e) => json::stream_error_line(13, &e),
            },
            Ok(GrpcItem::End(Some(s))) if s.code() != tonic::Code::Ok => {
                json::stream_error_line(s.code() as i32, s.message())
            }
            Ok(GrpcItem::End(_)) => return,
            Err(e) => json::stream_error_line(13, &e),
        };
        let last = line.starts_with("{\"error\"");
        if tx.send(Ok(Frame::data(Bytes::from(line)))).await.is_err() || last {
            return;
        }
    }
}

enum GrpcItem {
    Message(Vec<u8>),
    End(Option<tonic::Status>),
}

/// Reads length-prefixed gRPC messages and the final status from a response body.
struct GrpcReader {
    body: Body,
    buf: BytesMut,
    ended: bool,
}

impl GrpcReader {
    fn new(body: Body) -> GrpcReader {
        GrpcReader {
            body,
            buf: BytesMut::new(),
            ended: false,
        }
    }

    async fn next(&mut self) -> Result<GrpcItem, String> {
        loop {
            if self.buf.len() >= 5 {
                if self.buf[0] != 0 {
                    return Err("compressed gRPC messages are not supported".into());
                }
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if len > MAX_RESPONSE_MESSAGE_BYTES {
                    return Err("gRPC message too large for the gateway".into());
                }
                if self.buf.len() >= 5 + len {
                    self.buf.advance(5);
                    return Ok(GrpcItem::Message(self.buf.split_to(len).to_vec()));
                }
            }
            if self.ended {
                return Ok(GrpcItem::End(None));
            }
            match self.body.frame().await {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(d) => self.buf.extend_from_slice(&d),
                    Err(frame) => {
                        if let Some(t) = frame.trailers_ref() {
                            self.ended = true;
                            return Ok(GrpcItem::End(tonic::Status::from_header_map(t)));
                        }
                    }
                },
                Some(Err(e)) => return Err(e.to_string()),
                None => self.ended = true,
            }
        }
    }
}

/// Serves `/metrics` and `/health` (and nothing else) on a `--listen-metrics-urls`
/// listener, over HTTP/1.1 or h2c, until `shutdown` resolves.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    api: HttpApi,
    shutdown: impl Future<Output = ()> + Send,
) {
    let api = Arc::new(api);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            // Branches are polled in order, not at random, so a simulation replays from its seed.
            biased;
            _ = &mut shutdown => return,
            a = listener.accept() => a,
        };
        let (tcp, _) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "failed to accept a metrics connection");
                super::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let api = api.clone();
        super::spawn("metrics-conn", async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let api = api.clone();
                async move {
                    let resp = match req.uri().path() {
                        "/metrics" => metrics(&api),
                        "/health" if req.method() == Method::GET => {
                            health(&api, req.uri().query()).await
                        }
                        "/health" => text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n"),
                        _ => text(StatusCode::NOT_FOUND, "404 page not found\n"),
                    };
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            let _ = builder
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                .await;
        });
    }
}
