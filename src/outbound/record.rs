//! Record: what every outbound call leaves behind. A CLIENT span that continues the
//! app's `traceparent` and is handed on as the destination's parent, so the destination's
//! gatehouse continues the same trace; `grpc_client_*` metrics with a `destination`
//! label; one access-log line `msg=outbound`. It is an observer (see
//! [`crate::layers::observe`]) below Route, so the destination is known when the call
//! starts; the server that answered is in the call's facts when it ends.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::{Request, Uri};

use super::route::Routed;
use crate::body::RequestBody;
use crate::layers::observe::{CallFacts, CallRecord, Observer};
use crate::layers::watch::{Completion, Outcome};
use crate::metrics::{ClientMethodMetrics, Metrics};
use crate::telemetry::{CallSpan, Tracing, capped};
use crate::trace_context::TraceContext;

/// What Record does for each outbound call.
#[derive(Clone)]
pub struct OutboundRecord {
    tracing: Arc<Tracing>,
    metrics: Arc<Metrics>,
}

impl OutboundRecord {
    pub fn new(tracing: Arc<Tracing>, metrics: Arc<Metrics>) -> Self {
        OutboundRecord { tracing, metrics }
    }
}

impl Observer for OutboundRecord {
    type Record = ClientRecord;

    fn start(&self, request: &mut Request<RequestBody>) -> ClientRecord {
        // The CLIENT span: a child of the app's span, and the parent the destination sees.
        let context = TraceContext::from_headers(request.headers(), self.tracing.sample_ratio);
        context.inject(request.headers_mut());
        let destination = request
            .extensions()
            .get::<Routed>()
            .and_then(Routed::destination)
            .cloned();
        // Only routed calls name their method: an unknown authority is counted as
        // `other`, so made-up names cannot grow the label set.
        let method = match &destination {
            Some(destination) => self
                .metrics
                .client_method(destination, request.uri().path()),
            None => self.metrics.client_method("unknown", "other"),
        };
        method.started.inc();
        ClientRecord {
            tracing: self.tracing.clone(),
            metrics: self.metrics.clone(),
            started: Instant::now(),
            started_at: SystemTime::now(),
            uri: request.uri().clone(),
            context,
            destination,
            method,
            facts: CallFacts::of(request),
        }
    }
}

/// The log line, metrics and span of one call, completed when it ends.
pub struct ClientRecord {
    tracing: Arc<Tracing>,
    metrics: Arc<Metrics>,
    started: Instant,
    started_at: SystemTime,
    uri: Uri,
    context: TraceContext,
    destination: Option<Arc<str>>,
    method: Arc<ClientMethodMetrics>,
    facts: Arc<CallFacts>,
}

impl CallRecord for ClientRecord {}

impl Completion for ClientRecord {
    fn complete(self, outcome: Outcome) {
        let duration = self.started.elapsed();
        let destination = self.destination.as_deref().unwrap_or("unknown");
        let peer = self.facts.peer();
        self.metrics
            .client_handled(&self.method, outcome.code, duration.as_secs_f64());
        tracing::info!(
            target: "gatehouse::access",
            destination,
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
                destination,
                // No server answered: gatehouse refused or failed the call itself.
                peer.is_none(),
            );
        }
    }
}
