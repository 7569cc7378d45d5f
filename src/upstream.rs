//! The plaintext HTTP/2 (h2c) connections to the local app, and the service at the end of
//! the middleware chain that forwards each call over them.
//!
//! The connections are a [`Pool`]: several of them, opened on demand and again when they
//! die, so an app that restarts is picked up without restarting gatehouse, and no single
//! caller's stream can hold a window or a stream slot that other callers need (the pool's
//! module docs say how). Bodies are never buffered: the pool pumps the caller's request
//! body into the app's stream and the app's response body back, each under HTTP/2 flow
//! control, so a slow reader on one side back-pressures the writer on the other.

use std::sync::Arc;
use std::time::Duration;

use http::header::{CONNECTION, HeaderName, TE, TRANSFER_ENCODING, UPGRADE};
use http::uri::{Authority, Scheme};
use http::{HeaderMap, Request, Response, Uri};
use http_body_util::BodyExt;

use crate::body::{PeerStream, RequestBody, ResponseBody};
use crate::config::{self, Target};
use crate::grpc::{self, Code, Far, Reason};
use crate::metrics::Metrics;
use crate::pool::{self, Pool, ResponseStream};

/// The connections to the app.
pub struct Upstream {
    pool: Pool,
    /// A connection of its own for gatehouse's own calls to the app (the readiness
    /// probe's health check), so callers holding every stream of `pool` cannot make the
    /// pod look unready.
    probes: Pool,
    /// Used for `:authority` when the caller sent none.
    authority: Authority,
    metrics: Arc<Metrics>,
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
    /// Prepares the connections; nothing is dialled until the first call.
    pub fn new(config: &config::Upstream, limits: &config::Limits, metrics: Arc<Metrics>) -> Self {
        let target = config.target();
        let authority = match &target {
            Target::Tcp(address) => address
                .parse()
                .unwrap_or_else(|_| Authority::from_static("localhost")),
            Target::Unix(_) => Authority::from_static("localhost"),
        };
        // No keepalive pings: the app is on loopback or a Unix socket, where a dead app
        // closes the socket and the kernel tells us at once. Pings would only cost: stock
        // grpc-go and grpc C-core servers allow one ping per 5 minutes and answer more
        // with GOAWAY too_many_pings, which drops every call on the connection.
        let settings = pool::Settings {
            connect_timeout: config.connect_timeout.get(),
            connections: limits.upstream_connections,
            queue: limits.upstream_queue,
            queue_timeout: limits.upstream_queue_timeout.get(),
            max_header_list: pool::response_header_list(limits),
        };
        let probe_settings = pool::Settings {
            connections: 1,
            queue: 4,
            queue_timeout: Duration::from_secs(2),
            ..settings.clone()
        };
        Upstream {
            probes: Pool::new(target.clone(), probe_settings),
            pool: Pool::new(target, settings),
            authority,
            metrics,
        }
    }

    /// Forwards one call and turns every failure into a gRPC status response. The
    /// call's deadline and the drain's end are the Deadline layer's, above.
    pub async fn forward(&self, mut request: Request<RequestBody>) -> Response<ResponseBody> {
        if let Err(message) = self.prepare(&mut request) {
            return grpc::Status::new(Reason::Internal, message)
                .with("method", request.uri().path())
                .response();
        }
        // Shares the path's bytes: no copy unless the call fails here.
        let uri = request.uri().clone();
        match self.send(request).await {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                let stream: Arc<dyn PeerStream> = body.control();
                let metrics = self.metrics.clone();
                let body = body
                    .map_err(move |error| {
                        if let pool::StreamError::Stalled(stall) = &error {
                            metrics.upstream_error(stall.kind());
                        }
                        error.status(Far::App, "while streaming the response")
                    })
                    .boxed_unsync();
                Response::from_parts(parts, ResponseBody::forwarded(body, Some(stream)))
            }
            Err(status) => status.with("method", uri.path()).response(),
        }
    }

    /// Whether the app answers: `grpc.health.v1.Health/Check` says SERVING, or the app
    /// has no health service but answered (UNIMPLEMENTED).
    pub async fn check_health(&self) -> Result<(), String> {
        const EMPTY_MESSAGE: &[u8] = &[0, 0, 0, 0, 0];
        let request = || {
            Request::post(format!(
                "http://{}/grpc.health.v1.Health/Check",
                self.authority
            ))
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(TE, "trailers")
            .body(RequestBody::local(bytes::Bytes::from_static(EMPTY_MESSAGE)))
            .map_err(|error| error.to_string())
        };
        let checked = async {
            // A check is idempotent, so one sent on a connection that had just died
            // (the app restarted) is sent again: the answer is about the app now.
            let response = match self.probes.send(request()?).await {
                Err(pool::Error::Stream(error)) if error.is_io() => {
                    let again = self.probes.send(request()?).await;
                    self.map_failure(again)
                }
                sent => self.map_failure(sent),
            }
            .map_err(|status| status.message().to_owned())?;
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

    /// Sends the request over the pool and maps its failures to the status the caller
    /// sees, counting each where it happens.
    async fn send(
        &self,
        request: Request<RequestBody>,
    ) -> Result<Response<ResponseStream>, grpc::Status> {
        let sent = self.pool.send(request).await;
        self.map_failure(sent)
    }

    /// The status for a failed send, counted by kind.
    fn map_failure(
        &self,
        sent: Result<Response<ResponseStream>, pool::Error>,
    ) -> Result<Response<ResponseStream>, grpc::Status> {
        sent.map_err(|error| {
            let (kind, reason) = match &error {
                pool::Error::Connect { .. } | pool::Error::Handshake { .. } => {
                    ("connect", Reason::AppUnavailable)
                }
                pool::Error::ConnectTimeout { .. } => ("connect_timeout", Reason::AppUnavailable),
                pool::Error::QueueFull { .. } => ("queue_full", Reason::AppQueueFull),
                pool::Error::QueueTimeout { .. } => ("queue_timeout", Reason::AppQueueTimeout),
                pool::Error::Stream(stream) => {
                    // A reset gatehouse sent itself (the caller went away, a field rule
                    // stopped the request) is no failure of the app's.
                    if stream.is_remote() || !stream.is_reset() {
                        self.metrics.upstream_error("request");
                    }
                    return grpc::stream_failure(stream, Far::App, "before the app answered");
                }
                pool::Error::Stalled(stall) => {
                    self.metrics.upstream_error(stall.kind());
                    return stall.status(Far::App);
                }
            };
            self.metrics.upstream_error(kind);
            grpc::Status::new(reason, format!("app at {error}"))
        })
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
