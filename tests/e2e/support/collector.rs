//! An OTLP/gRPC trace receiver running in the test, in plaintext or behind TLS, and what
//! a test reads from the spans gatehouse exported to it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio::sync::Notify;

use super::{PATIENCE, dev_cert};

/// An OTLP/gRPC trace receiver.
#[derive(Clone, Default)]
pub struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
    /// The resource attributes of every export request, as `key=value`.
    resources: Arc<Mutex<Vec<Vec<String>>>>,
    changed: Arc<Notify>,
    stall: bool,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        if self.stall {
            std::future::pending::<()>().await;
        }
        let resource_spans = request.into_inner().resource_spans;
        for resource_span in &resource_spans {
            let attributes = resource_span
                .resource
                .iter()
                .flat_map(|resource| &resource.attributes)
                .map(
                    |kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                        Some(AnyValue::StringValue(value)) => format!("{}={value}", kv.key),
                        other => format!("{}={other:?}", kv.key),
                    },
                )
                .collect();
            self.resources.lock().unwrap().push(attributes);
        }
        let spans = resource_spans
            .into_iter()
            .flat_map(|r| r.scope_spans)
            .flat_map(|s| s.spans);
        self.spans.lock().unwrap().extend(spans);
        self.changed.notify_waiters();
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    /// A plaintext receiver on a loopback port; with `stall`, it never answers an export.
    pub async fn start(stall: bool) -> (Collector, SocketAddr) {
        let collector = Collector {
            stall,
            ..Collector::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = TraceServiceServer::new(collector.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        (collector, addr)
    }

    /// A receiver behind TLS with the development server certificate (for `localhost`,
    /// `127.0.0.1` and `::1`, from the development CA).
    pub async fn start_tls() -> (Collector, SocketAddr) {
        let collector = Collector::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let identity = tonic::transport::Identity::from_pem(
            std::fs::read(dev_cert("server.crt")).unwrap(),
            std::fs::read(dev_cert("server.key")).unwrap(),
        );
        let service = TraceServiceServer::new(collector.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                .unwrap()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        (collector, addr)
    }

    /// Waits (bounded) for any span, and returns the resource it was exported with.
    pub async fn first_resource(&self) -> Vec<String> {
        let wait = async {
            loop {
                let changed = self.changed.notified();
                if let Some(resource) = self.resources.lock().unwrap().first() {
                    return resource.clone();
                }
                changed.await;
            }
        };
        tokio::time::timeout(PATIENCE, wait)
            .await
            .expect("a span was exported")
    }

    /// Waits (bounded) for the span with id `span_id`.
    pub async fn span(&self, span_id: &[u8]) -> Span {
        self.first_span(|s| s.span_id == span_id).await
    }

    /// Waits (bounded) for a span of the trace `trace_id`.
    pub async fn span_in_trace(&self, trace_id: &[u8]) -> Span {
        self.first_span(|s| s.trace_id == trace_id).await
    }

    /// Every span exported so far.
    pub fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits (bounded) for the first exported span `wanted` accepts.
    async fn first_span(&self, wanted: impl Fn(&Span) -> bool) -> Span {
        let wait = async {
            loop {
                let changed = self.changed.notified();
                if let Some(span) = self.spans.lock().unwrap().iter().find(|s| wanted(s)) {
                    return span.clone();
                }
                changed.await;
            }
        };
        tokio::time::timeout(PATIENCE, wait)
            .await
            .expect("the span was exported")
    }
}

/// The value of the span attribute `key`, if the span has it.
pub fn attribute(span: &Span, key: &str) -> Option<AnyValue> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.clone()?.value)
}

/// The bytes of a hex string, as trace and span ids are written in `traceparent`.
pub fn hex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}
