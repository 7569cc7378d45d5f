//! What gatehouse tells operators about itself: log lines ([`logs`]: logfmt or JSON on
//! standard output) and spans (exported over OTLP from a bounded queue).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::SystemTime;

mod export;
mod logs;

pub use export::problems as export_problems;
pub use logs::{Json, LogLevel, Logfmt, init_logging};

use crate::config::Telemetry;
use crate::metrics::Metrics;
use prometheus_client::metrics::counter::Counter;

/// Characters of one caller-controlled field (method, user, tenant, peer) in a log line
/// or span, at most.
pub const MAX_FIELD_CHARS: usize = 256;

/// At most [`MAX_FIELD_CHARS`] characters of `text`.
pub fn capped(text: &str) -> &str {
    match text.char_indices().nth(MAX_FIELD_CHARS) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

/// What the Logging layer knows of a finished call, for its span.
pub struct CallSpan<'a> {
    pub path: &'a str,
    pub context: &'a crate::trace_context::TraceContext,
    pub start: SystemTime,
    pub end: SystemTime,
    pub code: crate::grpc::Code,
    pub principal: Option<&'a crate::identity::Principal>,
    pub peer: Option<&'a str>,
    pub remote: Option<std::net::SocketAddr>,
}

/// Spans waiting for export at most; when the collector is slow or down, further spans
/// are dropped (and counted) rather than slowing a call.
const SPAN_QUEUE: usize = 4096;
/// Bytes of spans waiting for export (or being exported) at most, estimated per span by
/// `span_bytes`; past it spans are dropped, so long names and attributes cannot make
/// the queue grow past this whatever their count.
pub const SPAN_QUEUE_BYTES: usize = 4 * 1024 * 1024;
/// Spans of calls gatehouse answered itself (refusals, an app that is down) exported per
/// second at most, even when callers force the sampled flag.
pub const REFUSED_SPANS_PER_SECOND: u32 = 10;
/// Spans sent to the collector in one request at most.
const SPAN_BATCH: usize = 512;

enum SpanMessage {
    /// A span and its estimated size in bytes.
    Span(Box<opentelemetry_sdk::trace::SpanData>, usize),
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Trace context propagation for every call, and span export when a collector is set.
pub struct Tracing {
    pub sample_ratio: f64,
    queue: Option<tokio::sync::mpsc::Sender<SpanMessage>>,
    /// Estimated bytes of the spans queued or being exported.
    queued_bytes: Arc<AtomicUsize>,
    dropped: Drops,
    refused: RateGate,
}

/// Spans dropped, by reason: `gatehouse_spans_dropped_total{reason}`.
#[derive(Clone, Default)]
struct Drops {
    /// The queue or its byte budget was full.
    queue_full: Counter,
    /// Spans of calls answered here, past [`REFUSED_SPANS_PER_SECOND`].
    rate_limited: Counter,
    /// In a batch the collector refused or could not be sent.
    export_failed: Counter,
}

/// Lets at most `per_second` events through in each wall-clock second.
#[derive(Default)]
struct RateGate {
    /// The current second in the high 32 bits, events let through in it in the low 32.
    state: AtomicU64,
}

impl RateGate {
    fn admit(&self, per_second: u32) -> bool {
        let now = crate::clock::unix_now() as u32;
        let mut current = self.state.load(Ordering::Relaxed);
        loop {
            let (second, count) = ((current >> 32) as u32, current as u32);
            let next = if second == now {
                if count >= per_second {
                    return false;
                }
                current + 1
            } else {
                (u64::from(now) << 32) | 1
            };
            match self.state.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }
}

impl Tracing {
    /// Propagation only: trace context flows through, nothing is exported.
    pub fn propagate_only(sample_ratio: f64) -> Tracing {
        Tracing {
            sample_ratio,
            queue: None,
            queued_bytes: Default::default(),
            dropped: Default::default(),
            refused: RateGate::default(),
        }
    }

    /// Exports spans over OTLP/gRPC to `endpoint` (`telemetry.otlp_endpoint`) from a
    /// background task (which needs the runtime: call from inside it), counting the spans
    /// it drops in `metrics`.
    pub fn exporting(
        endpoint: &str,
        telemetry: &Telemetry,
        metrics: &Metrics,
    ) -> Result<Tracing, String> {
        use opentelemetry_sdk::trace::SpanExporter as _;
        let (resource, ignored) = export::resource(telemetry.service_name.as_deref(), |name| {
            std::env::var(name).ok()
        });
        if let Some(reason) = ignored {
            tracing::warn!(%reason, "resource attributes from the environment");
        }
        let exporter = export::exporter(endpoint, telemetry, resource)?;
        let dropped = Drops {
            queue_full: metrics.spans_dropped("queue_full"),
            rate_limited: metrics.spans_dropped("rate_limited"),
            export_failed: metrics.spans_dropped("export_failed"),
        };
        let export_failed = dropped.export_failed.clone();
        let (queue, mut spans) = tokio::sync::mpsc::channel(SPAN_QUEUE);
        let endpoint = endpoint.to_owned();
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let exported_bytes = queued_bytes.clone();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(SPAN_BATCH);
            let mut last_failure_logged: Option<std::time::Instant> = None;
            loop {
                let Some(first) = spans.recv().await else {
                    break;
                };
                let mut flushed = Vec::new();
                let mut batch_bytes = 0;
                let mut take = |message: SpanMessage, batch: &mut Vec<_>| match message {
                    SpanMessage::Span(span, bytes) => {
                        batch.push(*span);
                        batch_bytes += bytes;
                    }
                    SpanMessage::Flush(done) => flushed.push(done),
                };
                take(first, &mut batch);
                while batch.len() < SPAN_BATCH {
                    match spans.try_recv() {
                        Ok(message) => take(message, &mut batch),
                        Err(_) => break,
                    }
                }
                let spans_in_batch = batch.len() as u64;
                if !batch.is_empty()
                    && let Err(error) = exporter.export(std::mem::take(&mut batch)).await
                {
                    export_failed.inc_by(spans_in_batch);
                    let quiet = last_failure_logged
                        .is_some_and(|at| at.elapsed() < std::time::Duration::from_secs(60));
                    if !quiet {
                        tracing::warn!(endpoint, %error, "span export failed; spans of this batch are lost");
                        last_failure_logged = Some(std::time::Instant::now());
                    }
                }
                // The batch is gone (sent or lost): its bytes no longer count.
                batch.clear();
                exported_bytes.fetch_sub(batch_bytes, Ordering::Relaxed);
                for done in flushed {
                    let _ = done.send(());
                }
            }
        });
        Ok(Tracing {
            sample_ratio: telemetry.sample_ratio,
            queue: Some(queue),
            queued_bytes,
            dropped,
            refused: RateGate::default(),
        })
    }

    /// Queues the span of a finished call; never waits. Spans of calls gatehouse
    /// answered itself (`answered_here`) are let through at most
    /// [`REFUSED_SPANS_PER_SECOND`] a second, and no span once the queue holds
    /// [`SPAN_QUEUE_BYTES`].
    pub fn record(&self, call: CallSpan<'_>, answered_here: bool) {
        let Some(queue) = &self.queue else {
            return;
        };
        if answered_here && !self.refused.admit(REFUSED_SPANS_PER_SECOND) {
            self.dropped.rate_limited.inc();
            return;
        }
        let span = span_data(call);
        let bytes = span_bytes(&span);
        let queued = self.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        if queued + bytes > SPAN_QUEUE_BYTES
            || queue
                .try_send(SpanMessage::Span(Box::new(span), bytes))
                .is_err()
        {
            self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            self.dropped.queue_full.inc();
        }
    }

    /// Queues the CLIENT span of a finished outbound call, under the same budget as
    /// [`Tracing::record`]; never waits.
    pub fn record_client(&self, call: CallSpan<'_>, destination: &str, answered_here: bool) {
        let Some(queue) = &self.queue else {
            return;
        };
        if answered_here && !self.refused.admit(REFUSED_SPANS_PER_SECOND) {
            self.dropped.rate_limited.inc();
            return;
        }
        let mut span = span_data(call);
        span.span_kind = opentelemetry::trace::SpanKind::Client;
        span.attributes.push(opentelemetry::KeyValue::new(
            "server.address",
            destination.to_owned(),
        ));
        let bytes = span_bytes(&span);
        let queued = self.queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        if queued + bytes > SPAN_QUEUE_BYTES
            || queue
                .try_send(SpanMessage::Span(Box::new(span), bytes))
                .is_err()
        {
            self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            self.dropped.queue_full.inc();
        }
    }

    /// Spans dropped because the export queue was full, or past the rate for calls
    /// gatehouse answered itself.
    pub fn dropped(&self) -> u64 {
        self.dropped.queue_full.get() + self.dropped.rate_limited.get()
    }

    /// Estimated bytes of the spans waiting for export.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Relaxed)
    }

    /// Waits (at most `limit`) until the spans queued so far have been sent.
    pub async fn flush(&self, limit: std::time::Duration) {
        let Some(queue) = &self.queue else {
            return;
        };
        let (done, sent) = tokio::sync::oneshot::channel();
        let flushed = async {
            if queue.send(SpanMessage::Flush(done)).await.is_ok() {
                let _ = sent.await;
            }
        };
        let _ = tokio::time::timeout(limit, flushed).await;
    }
}

/// A span's size in memory, roughly: the fixed parts and every string it holds.
fn span_bytes(span: &opentelemetry_sdk::trace::SpanData) -> usize {
    let attributes: usize = span
        .attributes
        .iter()
        .map(|attribute| {
            std::mem::size_of_val(attribute)
                + attribute.key.as_str().len()
                + attribute.value.as_str().len()
        })
        .sum();
    std::mem::size_of_val(span) + span.name.len() + attributes
}

fn span_data(call: CallSpan<'_>) -> opentelemetry_sdk::trace::SpanData {
    use opentelemetry::trace::{
        SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
    };
    use opentelemetry::{InstrumentationScope, KeyValue};
    use std::sync::LazyLock;
    static SCOPE: LazyLock<InstrumentationScope> = LazyLock::new(|| {
        InstrumentationScope::builder("gatehouse")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build()
    });

    let name = call.path.strip_prefix('/').unwrap_or(call.path);
    let (service, method) = name.split_once('/').unwrap_or((name, ""));
    let mut attributes = vec![
        KeyValue::new("rpc.system", "grpc"),
        KeyValue::new("rpc.service", service.to_owned()),
        KeyValue::new("rpc.method", method.to_owned()),
        KeyValue::new("rpc.grpc.status_code", call.code as i64),
    ];
    if let Some(principal) = call.principal {
        if let Some(user) = &principal.user_id {
            attributes.push(KeyValue::new("enduser.id", user.clone()));
        }
        if let Some(tenant) = &principal.tenant_id {
            attributes.push(KeyValue::new("gatehouse.tenant_id", tenant.clone()));
        }
        attributes.push(KeyValue::new(
            "gatehouse.auth_method",
            principal.method.as_str(),
        ));
    }
    if let Some(peer) = call.peer {
        attributes.push(KeyValue::new("gatehouse.peer", peer.to_owned()));
    }
    if let Some(remote) = call.remote {
        attributes.push(KeyValue::new("client.address", remote.ip().to_string()));
    }
    use crate::grpc::Code;
    // Server-side errors, as OpenTelemetry's gRPC conventions define them.
    let status = match call.code {
        Code::Unknown
        | Code::DeadlineExceeded
        | Code::Unimplemented
        | Code::Internal
        | Code::Unavailable
        | Code::DataLoss => Status::error(call.code.as_str()),
        _ => Status::Unset,
    };
    let context = call.context;
    opentelemetry_sdk::trace::SpanData {
        span_context: SpanContext::new(
            TraceId::from_bytes(context.trace_id.to_be_bytes()),
            SpanId::from_bytes(context.span_id.to_be_bytes()),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id: context
            .parent_span_id
            .map_or(SpanId::INVALID, |id| SpanId::from_bytes(id.to_be_bytes())),
        parent_span_is_remote: context.parent_span_id.is_some(),
        span_kind: SpanKind::Server,
        name: name.to_owned().into(),
        start_time: call.start,
        end_time: call.end,
        attributes,
        dropped_attributes_count: 0,
        events: Default::default(),
        links: Default::default(),
        status,
        instrumentation_scope: SCOPE.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tracer whose export queue nobody drains, as with a stalled collector.
    fn stalled() -> (Tracing, tokio::sync::mpsc::Receiver<SpanMessage>) {
        let (queue, spans) = tokio::sync::mpsc::channel(SPAN_QUEUE);
        let tracing = Tracing {
            queue: Some(queue),
            ..Tracing::propagate_only(1.0)
        };
        (tracing, spans)
    }

    fn record(tracing: &Tracing, path: &str, answered_here: bool) {
        let context = crate::trace_context::TraceContext::from_headers(&Default::default(), 1.0);
        tracing.record(
            CallSpan {
                path,
                context: &context,
                start: SystemTime::now(),
                end: SystemTime::now(),
                code: crate::grpc::Code::Ok,
                principal: None,
                peer: None,
                remote: None,
            },
            answered_here,
        );
    }

    #[test]
    fn the_span_queue_is_bounded_in_bytes_not_only_in_count() {
        let (tracing, _spans) = stalled();
        let path = format!("/big.Svc/{}", "m".repeat(8 * 1024));
        for _ in 0..SPAN_QUEUE {
            record(&tracing, &path, false);
        }
        assert!(tracing.queued_bytes() <= SPAN_QUEUE_BYTES);
        let queued = SPAN_QUEUE as u64 - tracing.dropped();
        assert!(
            queued < SPAN_QUEUE as u64 / 4,
            "{queued} spans of 8 KiB names queued"
        );
        assert!(queued > 0);
    }

    #[test]
    fn spans_of_calls_answered_here_are_rate_limited() {
        let (tracing, _spans) = stalled();
        for _ in 0..100 {
            record(&tracing, "/pkg.Svc/Refused", true);
        }
        // A second boundary may fall inside the loop: at most two seconds' worth.
        let queued = 100 - tracing.dropped();
        assert!(
            (1..=2 * u64::from(REFUSED_SPANS_PER_SECOND)).contains(&queued),
            "{queued} spans of refused calls queued"
        );
        record(&tracing, "/pkg.Svc/Answered", false);
        assert_eq!(
            101 - tracing.dropped(),
            queued + 1,
            "the app's answers are not limited"
        );
    }
}
