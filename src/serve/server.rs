//! The HTTP/2 server on each accepted connection: explicit protocol settings, the
//! connection's facts put into every request, and the door check that keeps anything
//! that is not gRPC out of the middleware chain.
//!
//! A request that is not gRPC gets HTTP 415 the way a conformant HTTP/2 server answers
//! any request: its body is read to the end first (up to [`NOT_GRPC_BODY_LIMIT`], so
//! frame and content-length errors on its stream are still caught and answered with the
//! right stream error), then a complete response with a short text body is sent. A body
//! larger than the limit, or slower than [`NOT_GRPC_BODY_TIME`], gets the 415 at once and
//! its stream is reset with `NO_ERROR`, which RFC 9113 §8.1 prescribes for a response
//! sent before the request ended.
//!
//! A request whose header list is over `limits.max_header_list_size` never reaches this
//! code: h2 answers it with HTTP 431 itself (see docs/deploy.md, "Oversized headers").

use std::convert::Infallible;
use std::sync::Arc;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http::Response;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tower::Service;

use crate::body::RequestBody;
use crate::config::Limits;
use crate::grpc;
use crate::metrics::Metrics;
use crate::tls::ConnectionInfo;

/// How many streams a client may open and reset before the server has accepted them,
/// the guard against "rapid reset" floods (CVE-2023-44487). Never disabled.
const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// How many streams gatehouse may reset for protocol errors on one connection before it
/// closes the connection, the guard against floods of invalid frames. Never disabled.
const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;
/// Body bytes read from a request that is not gRPC before it is answered; past this the
/// 415 is sent at once and the rest of the request refused with `RST_STREAM(NO_ERROR)`.
pub const NOT_GRPC_BODY_LIMIT: usize = 64 * 1024;
/// How long a request that is not gRPC may take to end its body before it is answered.
pub const NOT_GRPC_BODY_TIME: Duration = Duration::from_secs(5);
/// The body of the 415, for a person or tool reading it.
const NOT_GRPC_MESSAGE: &str =
    "gatehouse serves gRPC only: POST with content-type application/grpc\n";
/// Request paths in the log line of a request that is not gRPC are cut to this many bytes.
const NOT_GRPC_LOGGED_PATH: usize = 200;
/// Receive window of one caller stream, in bytes: what a caller may make gatehouse hold
/// for one call that the app is not reading. hyper's default (1 MiB) let 256 connections
/// pushing stalled requests take 305 MiB; 64 KiB halved the speed of large streams.
pub const CALLER_STREAM_WINDOW: u32 = 256 * 1024;
/// Receive window of one caller connection, in bytes: two streams' worth, so one stalled
/// call does not stop the caller's other calls on the connection, and the most request
/// data one connection can make gatehouse hold. h2 also lets only as many small DATA
/// frames be in flight as half this window pays for (a grpc-go client streaming 300
/// small messages was cut off with ENHANCE_YOUR_CALM at 128 KiB).
pub const CALLER_CONNECTION_WINDOW: u32 = 2 * CALLER_STREAM_WINDOW;
/// Response bytes queued per caller stream beyond what the caller's window takes.
pub const CALLER_SEND_BUFFER: usize = 64 * 1024;
/// The HTTP/2 server settings every listener uses: `limits`, plus the flood guards that
/// are never disabled.
pub fn http2_builder(limits: &Limits) -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(limits.max_header_list_size)
        .keep_alive_interval(limits.keepalive_interval.get())
        .keep_alive_timeout(limits.keepalive_timeout.get())
        .initial_stream_window_size(CALLER_STREAM_WINDOW)
        .initial_connection_window_size(CALLER_CONNECTION_WINDOW)
        .max_send_buf_size(CALLER_SEND_BUFFER)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESET_STREAMS)
        .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESET_STREAMS);
    builder
}

/// What a [`Server`] runs every gRPC call through: a service that answers each request
/// with a response whose body never fails, and is always ready (so the door calls a
/// clone directly). The middleware chain is one; the server does not need to know which.
pub trait ChainService: Clone + Send + Sync + 'static {
    /// The body of the chain's responses.
    type Body: Body<Data = Bytes, Error = Infallible> + Send + 'static;
    /// The future of one call.
    type Future: Future<Output = Result<Response<Self::Body>, Infallible>> + Send + 'static;

    fn call(&mut self, request: Request<RequestBody>) -> Self::Future;
}

impl<S, B> ChainService for S
where
    S: Service<Request<RequestBody>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes, Error = Infallible> + Send + 'static,
{
    type Body = B;
    type Future = S::Future;

    fn call(&mut self, request: Request<RequestBody>) -> S::Future {
        Service::call(self, request)
    }
}

/// Serves HTTP/2 connections into a chain of layers (`S`, the middleware chain).
#[derive(Clone)]
pub struct Server<S> {
    builder: http2::Builder<TokioExecutor>,
    chain: S,
    metrics: Arc<Metrics>,
}

impl<S: ChainService> Server<S> {
    pub fn new(limits: &Limits, chain: S, metrics: Arc<Metrics>) -> Self {
        Server {
            builder: http2_builder(limits),
            chain,
            metrics,
        }
    }

    /// The HTTP/2 connection future for one accepted (and, with TLS, handshaken) stream.
    pub fn serve<I>(
        &self,
        io: I,
        info: ConnectionInfo,
        activity: Arc<Activity>,
    ) -> http2::Connection<TokioIo<I>, Door<S>, TokioExecutor>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let door = Door {
            chain: self.chain.clone(),
            info: Arc::new(info),
            activity,
            metrics: self.metrics.clone(),
        };
        self.builder.serve_connection(TokioIo::new(io), door)
    }
}

/// The per-connection entry point: stamps the connection's facts on the request and lets
/// only gRPC calls into the chain; anything else gets HTTP 415.
#[derive(Clone)]
pub struct Door<S> {
    chain: S,
    info: Arc<ConnectionInfo>,
    activity: Arc<Activity>,
    metrics: Arc<Metrics>,
}

/// How many calls are open on a connection (to close connections that idle), and how
/// fast its caller abandons calls (to close one that floods the app with resets).
#[derive(Debug, Default)]
pub struct Activity {
    open: AtomicUsize,
    changed: Notify,
    /// Calls the caller abandoned before their answer ended, each of which costs the app
    /// a reset stream: a bucket of [`CALLER_RESETS_BURST`] refilled at
    /// [`CALLER_RESETS_PER_SECOND`].
    resets: std::sync::Mutex<ResetBudget>,
    /// Set, and told, when the caller has abandoned calls faster than the budget.
    flooding: Notify,
    flooded: std::sync::atomic::AtomicBool,
}

/// Calls a caller may abandon in a burst before its connection is closed.
pub const CALLER_RESETS_BURST: f64 = 200.0;
/// Calls a caller may abandon per second, sustained.
pub const CALLER_RESETS_PER_SECOND: f64 = 50.0;

#[derive(Debug)]
struct ResetBudget {
    tokens: f64,
    refilled: std::time::Instant,
}

impl Default for ResetBudget {
    fn default() -> Self {
        ResetBudget {
            tokens: CALLER_RESETS_BURST,
            refilled: std::time::Instant::now(),
        }
    }
}

impl Activity {
    fn open(self: &Arc<Self>) -> OpenCall {
        self.open.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
        OpenCall {
            activity: self.clone(),
            finished: false,
        }
    }

    /// A call ended before its answer did: the caller reset it, so the app's stream is
    /// reset too. A connection whose caller does this faster than the budget is told to
    /// close, so one caller cannot make gatehouse relay a reset flood to the app.
    fn abandoned(&self) {
        let mut budget = self.resets.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        let elapsed = now.saturating_duration_since(budget.refilled).as_secs_f64();
        budget.tokens =
            (budget.tokens + elapsed * CALLER_RESETS_PER_SECOND).min(CALLER_RESETS_BURST);
        budget.refilled = now;
        budget.tokens -= 1.0;
        if budget.tokens < 0.0 && !self.flooded.swap(true, Ordering::SeqCst) {
            self.flooding.notify_waiters();
        }
    }

    /// Resolves once the caller has abandoned calls faster than its budget.
    pub async fn flooded(&self) {
        loop {
            let told = self.flooding.notified();
            tokio::pin!(told);
            told.as_mut().enable();
            if self.flooded.load(Ordering::SeqCst) {
                return;
            }
            told.await;
        }
    }

    /// Resolves once no call has been open for `limit`.
    pub async fn idle_for(&self, limit: Duration) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.open.load(Ordering::SeqCst) > 0 {
                changed.await;
                continue;
            }
            if tokio::time::timeout(limit, changed).await.is_err() {
                return;
            }
        }
    }
}

/// One open call; closed when its response body is dropped (sent, or reset).
pub struct OpenCall {
    activity: Arc<Activity>,
    /// The answer was sent to its end: dropping it then is no reset.
    finished: bool,
}

impl Drop for OpenCall {
    fn drop(&mut self) {
        if !self.finished {
            self.activity.abandoned();
        }
        self.activity.open.fetch_sub(1, Ordering::SeqCst);
        self.activity.changed.notify_waiters();
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its call counted as open until it is dropped.
    pub struct CallBody<B> {
        #[pin]
        inner: B,
        open: OpenCall,
    }
}

impl<B: Body> Body for CallBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if frame
            .as_ref()
            .is_none_or(|frame| frame.as_ref().is_ok_and(Frame::is_trailers))
        {
            this.open.finished = true;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: Body> CallBody<B> {
    fn new(inner: B, mut open: OpenCall) -> Self {
        // A trailers-only answer is sent whole with its headers; hyper never polls it.
        open.finished = inner.is_end_stream();
        CallBody { inner, open }
    }
}

pin_project_lite::pin_project! {
    /// What the door answers with: the chain's response, or its own 415.
    #[project = DoorBodyProj]
    pub enum DoorBody<B> {
        Call { #[pin] body: B },
        NotGrpc { body: Full<Bytes> },
    }
}

impl<B: Body<Data = Bytes, Error = Infallible>> Body for DoorBody<B> {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project() {
            DoorBodyProj::Call { body } => body.poll_frame(cx),
            DoorBodyProj::NotGrpc { body } => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|frame| frame.map_err(|never| match never {}))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            DoorBody::Call { body } => body.is_end_stream(),
            DoorBody::NotGrpc { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            DoorBody::Call { body } => body.size_hint(),
            DoorBody::NotGrpc { body } => body.size_hint(),
        }
    }
}

/// How much of a non-gRPC request's body was read before it was answered.
#[derive(Debug, PartialEq, Eq)]
enum Drained {
    /// The body ended (or was never there): the stream closes cleanly after the 415.
    Ended,
    /// Over [`NOT_GRPC_BODY_LIMIT`]: the rest is refused with `RST_STREAM(NO_ERROR)`.
    TooLarge,
    /// Not ended within [`NOT_GRPC_BODY_TIME`]: refused the same way.
    TooSlow,
    /// The stream failed (h2 has already reset it with the right error code).
    Failed,
}

impl Drained {
    fn as_str(&self) -> &'static str {
        match self {
            Drained::Ended => "ended",
            Drained::TooLarge => "too_large",
            Drained::TooSlow => "too_slow",
            Drained::Failed => "stream_error",
        }
    }
}

/// Reads a request body to its end, within the budget for requests that are not gRPC.
/// Reading it is what lets h2 see (and answer) errors in the frames that carry it, and
/// releases their flow-control window.
async fn drain<B>(mut body: B, limit: usize, time: Duration) -> Drained
where
    B: Body + Unpin,
{
    use bytes::Buf as _;
    let deadline = crate::clock::instant_after(time);
    let mut read = 0usize;
    loop {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Drained::TooSlow,
            Ok(None) => return Drained::Ended,
            Ok(Some(Err(_))) => return Drained::Failed,
            Ok(Some(Ok(frame))) => {
                read = read.saturating_add(frame.data_ref().map_or(0, |data| data.remaining()));
                if read > limit {
                    return Drained::TooLarge;
                }
            }
        }
    }
}

/// The 415 for a request that is not gRPC: a complete response with a text body.
fn not_grpc_response<B>() -> Response<DoorBody<B>> {
    let mut response = Response::new(DoorBody::NotGrpc {
        body: Full::new(Bytes::from_static(NOT_GRPC_MESSAGE.as_bytes())),
    });
    *response.status_mut() = http::StatusCode::UNSUPPORTED_MEDIA_TYPE;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// `path` cut to at most `limit` bytes on a character boundary.
fn truncated(path: &str, limit: usize) -> &str {
    if path.len() <= limit {
        return path;
    }
    let mut end = limit;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    &path[..end]
}

impl<S: ChainService> hyper::service::Service<Request<Incoming>> for Door<S> {
    type Response = Response<CallBody<DoorBody<S::Body>>>;
    type Error = Infallible;
    type Future = DoorFuture<S::Future, S::Body>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let open = self.activity.open();
        if !grpc::is_grpc_request(request.method(), request.headers()) {
            self.metrics.not_grpc.inc();
            let (parts, body) = request.into_parts();
            let remote = self.info.remote_addr;
            return DoorFuture::NotGrpc {
                answer: Box::pin(async move {
                    let drained = drain(body, NOT_GRPC_BODY_LIMIT, NOT_GRPC_BODY_TIME).await;
                    // Logged like a refused call, so a misrouted client shows up in the log
                    // and not only in the counter; the path is the caller's, so it is cut.
                    tracing::info!(
                        http_method = %parts.method,
                        path = truncated(parts.uri.path(), NOT_GRPC_LOGGED_PATH),
                        content_type = parts
                            .headers
                            .get(http::header::CONTENT_TYPE)
                            .and_then(|value| value.to_str().ok())
                            .map(|value| truncated(value, NOT_GRPC_LOGGED_PATH)),
                        body = drained.as_str(),
                        remote = %remote,
                        status = 415,
                        "not a gRPC request"
                    );
                    Ok(not_grpc_response().map(|inner| CallBody::new(inner, open)))
                }),
            };
        }
        let mut request = request.map(RequestBody::new);
        // The deadline runs from when the request arrived, read once for every layer.
        if let Some(deadline) =
            grpc::Deadline::from_headers(request.headers(), tokio::time::Instant::now())
        {
            request.extensions_mut().insert(deadline);
        }
        request.extensions_mut().insert(self.info.clone());
        // Every layer is always ready, so calling a clone directly is sound.
        DoorFuture::Call {
            call: self.chain.clone().call(request),
            open: Some(open),
        }
    }
}

type NotGrpcAnswer<B> =
    Pin<Box<dyn Future<Output = Result<Response<CallBody<DoorBody<B>>>, Infallible>> + Send>>;

pin_project_lite::pin_project! {
    /// What the [`Door`] answers with. A call's future is named rather than boxed, which
    /// saves an allocation on every call; the rare non-gRPC answer stays boxed.
    #[project = DoorFutureProjection]
    pub enum DoorFuture<F, B> {
        NotGrpc { answer: NotGrpcAnswer<B> },
        Call { #[pin] call: F, open: Option<OpenCall> },
    }
}

impl<F, B> Future for DoorFuture<F, B>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
    B: Body<Data = Bytes, Error = Infallible>,
{
    type Output = Result<Response<CallBody<DoorBody<B>>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            DoorFutureProjection::NotGrpc { answer } => answer.as_mut().poll(cx),
            DoorFutureProjection::Call { call, open } => {
                let response = std::task::ready!(call.poll(cx))?;
                let open = open.take().expect("DoorFuture polled after completion");
                Poll::Ready(Ok(
                    response.map(|body| CallBody::new(DoorBody::Call { body }, open))
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;

    fn body_of(chunks: Vec<usize>) -> impl Body<Data = Bytes> + Unpin {
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = chunks
            .into_iter()
            .map(|size| Ok(Frame::data(Bytes::from(vec![0u8; size]))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    async fn drain_within_budget<B: Body + Unpin>(body: B) -> Drained {
        drain(body, NOT_GRPC_BODY_LIMIT, NOT_GRPC_BODY_TIME).await
    }

    #[tokio::test]
    async fn reads_a_small_body_to_its_end_and_stops_past_the_limit() {
        assert_eq!(drain_within_budget(body_of(vec![])).await, Drained::Ended);
        assert_eq!(
            drain_within_budget(body_of(vec![16 * 1024; 4])).await,
            Drained::Ended,
            "exactly the limit is read to the end"
        );
        assert_eq!(
            drain_within_budget(body_of(vec![16 * 1024; 4].into_iter().chain([1]).collect())).await,
            Drained::TooLarge
        );
    }

    #[tokio::test]
    async fn a_body_that_never_ends_is_given_up_on() {
        let never = StreamBody::new(futures_util::stream::pending::<
            Result<Frame<Bytes>, Infallible>,
        >());
        let time = Duration::from_millis(10);
        assert_eq!(
            drain(never, NOT_GRPC_BODY_LIMIT, time).await,
            Drained::TooSlow
        );
    }

    /// The server runs whatever chain it is handed: a stub stands in for the middleware
    /// chain here, sees each gRPC call with its connection's facts, and never sees a
    /// request that is not gRPC.
    #[tokio::test]
    async fn serves_any_chain_and_keeps_requests_that_are_not_grpc_out_of_it() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let chain = tower::service_fn({
            let seen = seen.clone();
            move |request: Request<RequestBody>| {
                let info = request.extensions().get::<Arc<ConnectionInfo>>().cloned();
                seen.lock()
                    .unwrap()
                    .push((request.uri().path().to_owned(), info.map(|i| i.remote_addr)));
                let mut answer = Response::new(http_body_util::Empty::<Bytes>::new());
                answer
                    .headers_mut()
                    .insert(grpc::GRPC_STATUS, grpc::Code::Ok.header_value());
                std::future::ready(Ok::<_, Infallible>(answer))
            }
        });
        let server = Server::new(&Limits::default(), chain, Arc::new(Metrics::new()));
        let remote: std::net::SocketAddr = "192.0.2.7:4242".parse().unwrap();
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let connection = server.serve(
            server_io,
            ConnectionInfo::new(remote, None),
            Arc::new(Activity::default()),
        );
        tokio::spawn(connection);
        let (mut sender, client) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(client_io))
                .await
                .unwrap();
        tokio::spawn(client);

        let call = Request::post("http://gatehouse/a.B/C")
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let answer = sender.send_request(call).await.unwrap();
        assert_eq!(answer.status(), http::StatusCode::OK);
        assert_eq!(answer.headers()[grpc::GRPC_STATUS], "0");

        let page = Request::get("http://gatehouse/index.html")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let answer = sender.send_request(page).await.unwrap();
        assert_eq!(answer.status(), http::StatusCode::UNSUPPORTED_MEDIA_TYPE);

        assert_eq!(
            *seen.lock().unwrap(),
            [("/a.B/C".to_owned(), Some(remote))],
            "only the gRPC call reached the chain, with its connection's facts"
        );
    }

    #[test]
    fn cuts_logged_paths_on_character_boundaries() {
        assert_eq!(truncated("/short", 200), "/short");
        assert_eq!(truncated("/ééé", 4), "/é");
        assert_eq!(truncated("/ééé", 3), "/é");
    }
}
