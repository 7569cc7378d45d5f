//! Logging: one access-log line per call, written when the call ends, and the call's
//! trace: the caller's W3C trace continued (or a new one started), gatehouse's span set
//! as the parent of the app's in the forwarded `traceparent`, and the span exported when
//! sampled.
//!
//! It sits just inside Recovery so it sees every call Recovery lets through, refusals
//! included, and measures the whole time gatehouse spends on it. The line carries
//! method, status, duration, caller identity, peer, trace id and bytes each way, and
//! never a token, a key or a certificate. Each field a caller controls is cut to
//! [`MAX_FIELD_CHARS`](crate::telemetry::MAX_FIELD_CHARS), so a line stays short
//! whatever the caller sends; spans of calls gatehouse answered itself are exported at a
//! bounded rate.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use http::{Request, Response, Uri};
use tower::{Layer, Service};

use crate::auth::principal::AuthOutcome;
use crate::body::{CredentialsEnded, RequestBody};
use crate::grpc::{self, Code};
use crate::middleware::watch::{Completion, Outcome, Pending, Watched};
use crate::telemetry::{CallSpan, Tracing, capped};
use crate::tls::ConnectionInfo;
use crate::trace_context::TraceContext;

/// Wraps a service in [`Logging`].
#[derive(Clone)]
pub struct LoggingLayer {
    tracing: Arc<Tracing>,
}

impl LoggingLayer {
    pub fn new(tracing: Arc<Tracing>) -> Self {
        LoggingLayer { tracing }
    }
}

impl<S> Layer<S> for LoggingLayer {
    type Service = Logging<S>;

    fn layer(&self, inner: S) -> Logging<S> {
        Logging {
            inner,
            tracing: self.tracing.clone(),
        }
    }
}

/// See the module documentation.
#[derive(Clone)]
pub struct Logging<S> {
    inner: S,
    tracing: Arc<Tracing>,
}

/// Everything the access-log line and the span need, completed at the end of the call.
pub struct AccessRecord {
    tracing: Arc<Tracing>,
    started: Instant,
    started_at: SystemTime,
    uri: Uri,
    connection: Option<Arc<ConnectionInfo>>,
    context: TraceContext,
    received: Arc<AtomicU64>,
    auth: Option<AuthOutcome>,
    /// Set if the call's credentials ended it while it was open.
    credentials_ended: Option<CredentialsEnded>,
    /// gatehouse answered the call without the app.
    answered_here: bool,
}

impl Completion for AccessRecord {
    fn complete(self, outcome: Outcome) {
        let duration = self.started.elapsed();
        let principal = self
            .auth
            .as_ref()
            .and_then(|auth| auth.principal.as_deref());
        let peer = self
            .connection
            .as_ref()
            .and_then(|c| c.peer.as_ref())
            .map(|peer| capped(peer.name()));
        tracing::info!(
            target: "gatehouse::access",
            // The query too, so a refused `/pkg.Svc/Get?x` does not read as a call of `Get`.
            method = capped(
                self.uri
                    .path_and_query()
                    .map_or(self.uri.path(), |path| path.as_str())
            ),
            grpc_code = outcome.code.as_str(),
            duration_ms = duration.as_secs_f64() * 1000.0,
            user_id = principal.and_then(|p| p.user_id.as_deref()).map(capped),
            tenant_id = principal.and_then(|p| p.tenant_id.as_deref()).map(capped),
            api_key = principal.and_then(|p| p.api_key_name.as_deref()),
            auth = self.auth.as_ref().map(|auth| auth.method.as_str()),
            refused = self.auth.as_ref().and_then(|auth| auth.refusal),
            // authorization.dry_run: the rule that would have refused this call.
            would_refuse = self.auth.as_ref().and_then(|auth| auth.would_refuse).map(|_| true),
            rule = self
                .auth
                .as_ref()
                .and_then(|auth| auth.would_refuse)
                .map(tracing::field::display),
            // auth.expire_open_calls: the token expired or the key was revoked mid-call.
            ended_by = self
                .credentials_ended
                .as_ref()
                .and_then(CredentialsEnded::get)
                .map(|end| end.label()),
            peer,
            trace_id = %format_args!("{:032x}", self.context.trace_id),
            bytes_in = self.received.load(Ordering::Relaxed),
            bytes_out = outcome.bytes_out,
            "request"
        );
        if self.context.sampled {
            self.tracing.record(
                CallSpan {
                    path: capped(self.uri.path()),
                    context: &self.context,
                    start: self.started_at,
                    end: self.started_at + duration,
                    code: outcome.code,
                    principal,
                    peer,
                    remote: self.connection.as_ref().map(|c| c.remote_addr),
                },
                self.answered_here,
            );
        }
    }
}

impl<S, B> Service<Request<RequestBody>> for Logging<S>
where
    S: Service<Request<RequestBody>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
{
    type Response = Response<Watched<B, AccessRecord>>;
    type Error = Infallible;
    type Future = LoggingFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<RequestBody>) -> Self::Future {
        let context = TraceContext::from_headers(request.headers(), self.tracing.sample_ratio);
        context.inject(request.headers_mut());
        let received = Arc::new(AtomicU64::new(0));
        request.body_mut().count_into(received.clone());
        let pending = Pending::new(AccessRecord {
            tracing: self.tracing.clone(),
            started: Instant::now(),
            started_at: SystemTime::now(),
            uri: request.uri().clone(),
            connection: request.extensions().get::<Arc<ConnectionInfo>>().cloned(),
            context,
            received,
            auth: None,
            credentials_ended: None,
            answered_here: false,
        });
        LoggingFuture {
            call: self.inner.call(request),
            pending: Some(pending),
        }
    }
}

pin_project_lite::pin_project! {
    /// What [`Logging`] answers with: a named future rather than a boxed one, which
    /// saves an allocation on every call.
    pub struct LoggingFuture<F> {
        #[pin]
        call: F,
        pending: Option<Pending<AccessRecord>>,
    }
}

impl<F, B> Future for LoggingFuture<F>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
    B: http_body::Body<Data = bytes::Bytes>,
{
    type Output = Result<Response<Watched<B, AccessRecord>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.call.poll(cx))?;
        let mut pending = this
            .pending
            .take()
            .expect("LoggingFuture polled after completion");
        if let Some(record) = pending.get_mut() {
            record.auth = response.extensions().get::<AuthOutcome>().cloned();
            record.credentials_ended = response.extensions().get::<CredentialsEnded>().cloned();
            record.answered_here = response.extensions().get::<grpc::AnsweredHere>().is_some();
        }
        let header_code = response
            .headers()
            .get(grpc::GRPC_STATUS)
            .map(Code::from_header);
        Poll::Ready(Ok(
            response.map(|body| Watched::new(body, pending, header_code))
        ))
    }
}
