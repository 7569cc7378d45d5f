//! Record: what every outbound call leaves behind. A CLIENT span that continues the
//! app's `traceparent` and is handed on as the destination's parent, so the destination's
//! gatehouse continues the same trace; `grpc_client_*` metrics with a `destination`
//! label; one access-log line `msg=outbound`. The status is read where gRPC puts it, at
//! the end of the response, through the same [`Watched`] body the inbound layers use.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use http::{Request, Response, Uri};
use tower::{Layer, Service};

use crate::body::RequestBody;
use crate::grpc::{self, Code};
use crate::metrics::Metrics;
use crate::middleware::watch::{Completion, Outcome, Pending, Watched};
use crate::telemetry::{CallSpan, Tracing, capped};
use crate::trace_context::TraceContext;

/// Put in a response's extensions by the dispatcher: where the call went.
#[derive(Clone, Debug)]
pub struct Routed {
    pub destination: Arc<str>,
    /// The verified identity of the server that answered, when one did.
    pub peer: Option<Arc<str>>,
}

/// Wraps a service in [`Record`].
#[derive(Clone)]
pub struct RecordLayer {
    tracing: Arc<Tracing>,
    metrics: Arc<Metrics>,
}

impl RecordLayer {
    pub fn new(tracing: Arc<Tracing>, metrics: Arc<Metrics>) -> Self {
        RecordLayer { tracing, metrics }
    }
}

impl<S> Layer<S> for RecordLayer {
    type Service = Record<S>;

    fn layer(&self, inner: S) -> Record<S> {
        Record {
            inner,
            tracing: self.tracing.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// See the module documentation.
#[derive(Clone)]
pub struct Record<S> {
    inner: S,
    tracing: Arc<Tracing>,
    metrics: Arc<Metrics>,
}

/// The log line, metrics and span of one call, completed when it ends.
pub struct CallRecord {
    tracing: Arc<Tracing>,
    metrics: Arc<Metrics>,
    started: Instant,
    started_at: SystemTime,
    uri: Uri,
    context: TraceContext,
    routed: Option<Routed>,
    method: Option<Arc<crate::metrics::ClientMethodMetrics>>,
}

impl Completion for CallRecord {
    fn complete(self, outcome: Outcome) {
        let duration = self.started.elapsed();
        let destination = self.routed.as_ref().map(|r| &*r.destination);
        let peer = self.routed.as_ref().and_then(|r| r.peer.as_deref());
        if let Some(method) = &self.method {
            self.metrics
                .client_handled(method, outcome.code, duration.as_secs_f64());
        }
        tracing::info!(
            target: "gatehouse::access",
            destination = destination.unwrap_or("unknown"),
            method = capped(self.uri.path()),
            grpc_code = outcome.code.as_str(),
            duration_ms = duration.as_secs_f64() * 1000.0,
            peer,
            trace_id = %format_args!("{:032x}", self.context.trace_id),
            bytes_out = outcome.bytes_out,
            "outbound"
        );
        if self.context.sampled {
            self.tracing.record_client(
                CallSpan {
                    path: capped(self.uri.path()),
                    context: &self.context,
                    start: self.started_at,
                    end: self.started_at + duration,
                    code: outcome.code,
                    principal: None,
                    peer,
                    remote: None,
                },
                destination.unwrap_or("unknown"),
                // No server answered: gatehouse refused or failed the call itself.
                peer.is_none(),
            );
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, Infallible>> + Send>>;

impl<S, B> Service<Request<RequestBody>> for Record<S>
where
    S: Service<Request<RequestBody>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
{
    type Response = Response<Watched<B, CallRecord>>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<RequestBody>) -> Self::Future {
        // The CLIENT span: a child of the app's span, and the parent the destination sees.
        let context = TraceContext::from_headers(request.headers(), self.tracing.sample_ratio);
        context.inject(request.headers_mut());
        let metrics = self.metrics.clone();
        let mut pending = Pending::new(CallRecord {
            tracing: self.tracing.clone(),
            metrics: metrics.clone(),
            started: Instant::now(),
            started_at: SystemTime::now(),
            uri: request.uri().clone(),
            context,
            routed: None,
            method: None,
        });
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let response = inner.call(request).await?;
            if let Some(record) = pending.get_mut() {
                let routed = response.extensions().get::<Routed>().cloned();
                // Only routed calls name their method: an unknown authority is counted
                // as `other`, so made-up names cannot grow the label set.
                let method = match &routed {
                    Some(routed) => metrics.client_method(&routed.destination, record.uri.path()),
                    None => metrics.client_method("unknown", "other"),
                };
                method.started.inc();
                record.method = Some(method);
                record.routed = routed;
            }
            let header_code = response
                .headers()
                .get(grpc::GRPC_STATUS)
                .map(Code::from_header);
            Ok(response.map(|body| Watched::new(body, pending, header_code)))
        })
    }
}
