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

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::{Request, Uri};

use crate::auth::outcome::AuthOutcome;
use crate::body::RequestBody;
use crate::layers::observe::{CallFacts, CallRecord, Observe, Observer};
use crate::layers::watch::{Completion, Outcome};
use crate::telemetry::{CallSpan, Tracing, capped};
use crate::tls::ConnectionInfo;
use crate::trace_context::TraceContext;

/// The Logging layer: an [`Observe`] that writes the access log and exports the span.
pub type Logging<S> = Observe<S, AccessLog>;

/// What Logging does for each call.
#[derive(Clone)]
pub struct AccessLog {
    tracing: Arc<Tracing>,
}

impl AccessLog {
    pub fn new(tracing: Arc<Tracing>) -> Self {
        AccessLog { tracing }
    }
}

impl Observer for AccessLog {
    type Record = AccessRecord;

    fn start(&self, request: &mut Request<RequestBody>) -> AccessRecord {
        let context = TraceContext::from_headers(request.headers(), self.tracing.sample_ratio);
        context.inject(request.headers_mut());
        AccessRecord {
            tracing: self.tracing.clone(),
            started: Instant::now(),
            started_at: SystemTime::now(),
            uri: request.uri().clone(),
            connection: request.extensions().get::<Arc<ConnectionInfo>>().cloned(),
            context,
            facts: CallFacts::of(request),
            answered_here: false,
        }
    }
}

/// Everything the access-log line and the span need, completed at the end of the call.
pub struct AccessRecord {
    tracing: Arc<Tracing>,
    started: Instant,
    started_at: SystemTime,
    uri: Uri,
    connection: Option<Arc<ConnectionInfo>>,
    context: TraceContext,
    facts: Arc<CallFacts>,
    /// gatehouse answered the call without the app.
    answered_here: bool,
}

impl CallRecord for AccessRecord {
    fn answered(&mut self, answered_here: bool) {
        self.answered_here = answered_here;
    }
}

impl Completion for AccessRecord {
    fn complete(self, outcome: Outcome) {
        let duration = self.started.elapsed();
        let auth = self.facts.auth();
        let principal = auth.and_then(AuthOutcome::principal);
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
            auth = auth.map(|auth| auth.method().as_str()),
            refused = auth.and_then(AuthOutcome::refusal),
            // authorization.dry_run: the rule that would have refused this call.
            would_refuse = auth.and_then(AuthOutcome::would_refuse).map(|_| true),
            rule = auth
                .and_then(AuthOutcome::would_refuse)
                .map(tracing::field::display),
            // auth.expire_open_calls: the token expired or the key was revoked mid-call.
            ended_by = self.facts.credentials_ended().get().map(|end| end.label()),
            peer,
            trace_id = %format_args!("{:032x}", self.context.trace_id),
            bytes_in = self.facts.received(),
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
