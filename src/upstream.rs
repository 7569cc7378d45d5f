//! The plaintext HTTP/2 (h2c) connection to the local app, and the service at the end of
//! the middleware chain that forwards each call over it.
//!
//! One multiplexed connection carries every call; it is opened on first use, and again
//! when it dies, so an app that restarts is picked up without restarting gatehouse.
//! Bodies are never buffered: hyper pipes the caller's request body into the app's stream
//! and the app's response body back, each under HTTP/2 flow control, so a slow reader on
//! one side back-pressures the writer on the other.

use std::convert::Infallible;
use std::error::Error as _;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{CONNECTION, HeaderName, TE, TRANSFER_ENCODING, UPGRADE};
use http::uri::{Authority, Scheme};
use http::{HeaderMap, Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpStream, UnixStream};
use tokio::time::Instant;

use crate::body::{RequestBody, ResponseBody};
use crate::config;
use crate::grpc::{self, Code};
use crate::metrics::Metrics;

type Sender = http2::SendRequest<RequestBody>;

/// Where the app listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// `host:port`, resolved on every connect.
    Tcp(String),
    /// A Unix domain socket, written `unix:/path` in the config.
    Unix(PathBuf),
}

/// The shared connection to the app.
pub struct Upstream {
    target: Target,
    connect_timeout: Duration,
    /// Used for `:authority` when the caller sent none.
    authority: Authority,
    builder: http2::Builder<TokioExecutor>,
    /// The live connection. A std mutex is enough: it is held only to clone a handle.
    current: Mutex<Option<Sender>>,
    /// Serialises reconnects so a burst of calls after the app restarts opens one
    /// connection, not one per call.
    connecting: tokio::sync::Mutex<()>,
    metrics: Arc<Metrics>,
    /// Cancelled when the drain gives up on open calls: they end with UNAVAILABLE.
    abort: tokio_util::sync::CancellationToken,
}

/// Connection-specific headers, which HTTP/2 forbids and a proxy must not pass on.
const HOP_BY_HOP: [HeaderName; 5] = [
    CONNECTION,
    TRANSFER_ENCODING,
    UPGRADE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

impl Upstream {
    /// Prepares the connection; nothing is dialled until the first call.
    pub fn new(config: &config::Upstream, metrics: Arc<Metrics>) -> Self {
        let target = config.target();
        let authority = match &target {
            Target::Tcp(address) => address
                .parse()
                .unwrap_or_else(|_| Authority::from_static("localhost")),
            Target::Unix(_) => Authority::from_static("localhost"),
        };
        let mut builder = http2::Builder::new(TokioExecutor::new());
        // No keepalive pings: the app is on loopback or a Unix socket, where a dead app
        // closes the socket and the kernel tells us at once. Pings would only cost: stock
        // grpc-go and grpc C-core servers allow one ping per 5 minutes and answer more
        // with GOAWAY too_many_pings, which drops every call on the connection.
        builder
            .timer(TokioTimer::new())
            // Until the app's SETTINGS arrive, open one stream at a time: an app that
            // allows fewer concurrent streams than the protocol's default would otherwise
            // refuse the calls sent in that first round trip. They queue instead.
            .initial_max_send_streams(1);
        Upstream {
            target,
            connect_timeout: config.connect_timeout.get(),
            authority,
            builder,
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            metrics,
            abort: tokio_util::sync::CancellationToken::new(),
        }
    }

    /// Forwards one call and turns every failure into a gRPC status response.
    pub async fn forward(&self, mut request: Request<RequestBody>) -> Response<ResponseBody> {
        let deadline = request
            .headers()
            .get(grpc::GRPC_TIMEOUT)
            .and_then(grpc::parse_timeout)
            .and_then(|timeout| Instant::now().checked_add(timeout));
        if let Err(message) = self.prepare(&mut request) {
            return grpc::status_response(Code::Internal, message);
        }
        let exchange = async {
            let deadline = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            // Dropping the exchange (deadline, abort) resets the app's stream.
            tokio::select! {
                result = self.send(request) => Ok(result),
                () = deadline => {
                    self.metrics.upstream_error("deadline");
                    Err(grpc::status_response(
                        Code::DeadlineExceeded,
                        "deadline exceeded: grpc-timeout ran out before the app answered",
                    ))
                }
                () = self.abort.cancelled() => Err(grpc::status_response(
                    Code::Unavailable,
                    "gatehouse is shutting down: the drain timeout ended this call",
                )),
            }
        };
        let result = match exchange.await {
            Ok(result) => result,
            Err(refusal) => return refusal,
        };
        match result {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                Response::from_parts(
                    parts,
                    ResponseBody::forwarded(body, deadline, self.abort.clone()),
                )
            }
            Err((code, message)) => grpc::status_response(code, &message),
        }
    }

    /// Ends every open call with `UNAVAILABLE` (the end of a drain that timed out).
    pub fn abort_open_calls(&self) {
        self.abort.cancel();
    }

    /// Whether the app answers: `grpc.health.v1.Health/Check` says SERVING, or the app
    /// has no health service but answered (UNIMPLEMENTED).
    pub async fn check_health(&self) -> Result<(), String> {
        use http_body_util::BodyExt;
        const EMPTY_MESSAGE: &[u8] = &[0, 0, 0, 0, 0];
        let request = Request::post(format!(
            "http://{}/grpc.health.v1.Health/Check",
            self.authority
        ))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(TE, "trailers")
        .body(RequestBody::local(bytes::Bytes::from_static(EMPTY_MESSAGE)))
        .map_err(|error| error.to_string())?;
        let checked = async {
            let response = self.send(request).await.map_err(|(_, message)| message)?;
            let (parts, body) = response.into_parts();
            let collected = http_body_util::Limited::new(body, 64 * 1024)
                .collect()
                .await
                .map_err(|error| format!("app health check: {error}"))?;
            let status = parts
                .headers
                .get(grpc::GRPC_STATUS)
                .or_else(|| collected.trailers().and_then(|t| t.get(grpc::GRPC_STATUS)));
            match status.map(Code::from_header) {
                Some(Code::Unimplemented) => Ok(()),
                Some(Code::Ok) => {
                    // HealthCheckResponse { status = 1 (SERVING) }: field 1, varint 1.
                    let message = collected.to_bytes();
                    if message.get(5..) == Some(&[0x08, 0x01][..]) {
                        Ok(())
                    } else {
                        Err("app health check: not SERVING".to_owned())
                    }
                }
                other => Err(format!(
                    "app health check: status {}",
                    other.map_or("missing", Code::as_str)
                )),
            }
        };
        tokio::time::timeout(Duration::from_secs(2), checked)
            .await
            .unwrap_or_else(|_| Err("app health check: no answer within 2s".to_owned()))
    }

    /// Points the request at the app: `http` scheme, the caller's `:authority` kept.
    fn prepare(&self, request: &mut Request<RequestBody>) -> Result<(), &'static str> {
        let mut parts = std::mem::take(request.uri_mut()).into_parts();
        parts.scheme = Some(Scheme::HTTP);
        if parts.authority.is_none() {
            parts.authority = Some(self.authority.clone());
        }
        *request.uri_mut() =
            Uri::from_parts(parts).map_err(|_| "request path cannot be forwarded")?;
        strip_hop_by_hop(request.headers_mut());
        Ok(())
    }

    /// Sends the request on the live connection, opening one if needed. A request that
    /// never left gatehouse because the connection had just died is retried once on a new
    /// connection; one that reached the app is never retried.
    async fn send(
        &self,
        request: Request<RequestBody>,
    ) -> Result<Response<Incoming>, (Code, String)> {
        // Failures to connect are counted where they happen; these are the requests lost.
        let lost = |error: &hyper::Error| {
            self.metrics.upstream_error("request");
            status_for_error(error, "before the app answered")
        };
        let mut sender = self.ready_sender().await?;
        match sender.try_send_request(request).await {
            Ok(response) => Ok(response),
            Err(mut failed) => match failed.take_message() {
                Some(request) => {
                    let mut sender = self.ready_sender().await?;
                    sender
                        .send_request(request)
                        .await
                        .map_err(|error| lost(&error))
                }
                None => Err(lost(failed.error())),
            },
        }
    }

    async fn ready_sender(&self) -> Result<Sender, (Code, String)> {
        for _ in 0..2 {
            let mut sender = match self.live() {
                Some(sender) => sender,
                None => self.reconnect().await?,
            };
            // A connection that died since it was stored fails here; the next round
            // dials again.
            if sender.ready().await.is_ok() {
                return Ok(sender);
            }
        }
        Err((
            Code::Unavailable,
            "connection to the app keeps closing".to_owned(),
        ))
    }

    fn live(&self) -> Option<Sender> {
        let current = self
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        current
            .as_ref()
            .filter(|sender| !sender.is_closed())
            .cloned()
    }

    async fn reconnect(&self) -> Result<Sender, (Code, String)> {
        let _one_at_a_time = self.connecting.lock().await;
        if let Some(sender) = self.live() {
            return Ok(sender);
        }
        let sender = match tokio::time::timeout(self.connect_timeout, self.connect()).await {
            Ok(Ok(sender)) => sender,
            Ok(Err(message)) => {
                self.metrics.upstream_error("connect");
                return Err((Code::Unavailable, message));
            }
            Err(_) => {
                self.metrics.upstream_error("connect_timeout");
                return Err((
                    Code::Unavailable,
                    format!(
                        "app at {} did not accept a connection within {:?}",
                        self.describe(),
                        self.connect_timeout
                    ),
                ));
            }
        };
        *self
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(sender.clone());
        Ok(sender)
    }

    async fn connect(&self) -> Result<Sender, String> {
        let unreachable =
            |error: std::io::Error| format!("app at {} is unreachable: {error}", self.describe());
        match &self.target {
            Target::Tcp(address) => {
                let stream = TcpStream::connect(address.as_str())
                    .await
                    .map_err(unreachable)?;
                stream.set_nodelay(true).map_err(unreachable)?;
                self.handshake(TokioIo::new(stream)).await
            }
            Target::Unix(path) => {
                let stream = UnixStream::connect(path).await.map_err(unreachable)?;
                self.handshake(TokioIo::new(stream)).await
            }
        }
    }

    async fn handshake<I>(&self, io: I) -> Result<Sender, String>
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let (sender, connection) = self.builder.handshake(io).await.map_err(|error| {
            format!(
                "HTTP/2 handshake with the app at {} failed: {error}",
                self.describe()
            )
        })?;
        let target = self.describe();
        tokio::spawn(async move {
            match connection.await {
                Ok(()) => tracing::debug!(upstream = %target, "connection to the app closed"),
                Err(error) => {
                    tracing::warn!(upstream = %target, %error, "connection to the app failed")
                }
            }
        });
        tracing::debug!(upstream = %self.describe(), "connected to the app");
        Ok(sender)
    }

    fn describe(&self) -> String {
        match &self.target {
            Target::Tcp(address) => address.clone(),
            Target::Unix(path) => format!("unix:{}", path.display()),
        }
    }
}

/// Removes connection-specific headers, keeping `te: trailers`, which gRPC requires.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if headers.get(TE).is_some_and(|te| te != "trailers") {
        headers.remove(TE);
    }
}

/// The status a caller sees for a failure talking to the app, and why.
pub fn status_for_error(error: &hyper::Error, when: &str) -> (Code, String) {
    let h2_error = error
        .source()
        .and_then(|source| source.downcast_ref::<h2::Error>());
    if let Some(h2_error) = h2_error
        && h2_error.is_reset()
        && h2_error.is_remote()
        && let Some(reason) = h2_error.reason()
    {
        return (
            grpc::code_for_reset(reason),
            format!("the app reset the stream {when}: {reason}"),
        );
    }
    (
        Code::Unavailable,
        format!("connection to the app lost {when}: {error}"),
    )
}

/// The innermost service of the chain: forwards the call to the app.
#[derive(Clone)]
pub struct Forward {
    upstream: Arc<Upstream>,
    #[cfg(debug_assertions)]
    panic_probe: bool,
}

impl Forward {
    pub fn new(upstream: Arc<Upstream>) -> Self {
        Forward {
            upstream,
            // Debug builds only: lets the end-to-end tests prove that a panic in the
            // request path becomes INTERNAL. Release builds do not contain this code.
            #[cfg(debug_assertions)]
            panic_probe: std::env::var_os("GATEHOUSE_DEBUG_PANIC_PROBE").is_some(),
        }
    }
}

impl tower::Service<Request<RequestBody>> for Forward {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<RequestBody>) -> Self::Future {
        let upstream = self.upstream.clone();
        #[cfg(debug_assertions)]
        let panic_requested =
            self.panic_probe && request.headers().contains_key("x-gatehouse-debug-panic");
        Box::pin(async move {
            #[cfg(debug_assertions)]
            if panic_requested {
                panic!("panic requested through x-gatehouse-debug-panic");
            }
            Ok(upstream.forward(request).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn strips_connection_specific_headers_but_keeps_te_trailers() {
        let mut headers = HeaderMap::new();
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        headers.insert(UPGRADE, HeaderValue::from_static("h2c"));
        headers.insert(TE, HeaderValue::from_static("trailers"));
        headers.insert("x-custom", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 2);
        assert_eq!(headers[TE], "trailers");
        assert_eq!(headers["x-custom"], "kept");

        headers.insert(TE, HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut headers);
        assert!(headers.get(TE).is_none());
    }
}
