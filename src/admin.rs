//! The admin server (HTTP/1.1 on `telemetry.admin_address`), for Prometheus and
//! Kubernetes:
//!
//! - `GET /metrics`: the Prometheus text exposition.
//! - `GET /healthz`: 200 while the process runs (liveness: restart only if this fails).
//! - `GET /readyz`: 200 when gatehouse can serve calls, else 503 with one reason per
//!   line: the listener is not up yet, gatehouse is draining after SIGTERM, a remote
//!   JWKS has never loaded, or the app is unreachable or reports NOT_SERVING on
//!   `grpc.health.v1.Health/Check` (an app without a health service counts as up once
//!   it answers).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::auth::Authenticator;
use crate::metrics::Metrics;
use crate::reload::Current;
use crate::tls::ReloadableTls;
use crate::upstream::Upstream;

/// What `/readyz` checks.
pub struct Readiness {
    pub listening: AtomicBool,
    pub draining: AtomicBool,
    upstream: Arc<Upstream>,
    authenticator: Arc<Current<Authenticator>>,
    tls: std::sync::OnceLock<Option<Arc<ReloadableTls>>>,
}

impl Readiness {
    pub fn new(upstream: Arc<Upstream>, authenticator: Arc<Current<Authenticator>>) -> Self {
        Readiness {
            listening: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            upstream,
            authenticator,
            tls: std::sync::OnceLock::new(),
        }
    }

    /// The serving certificates, whose expiry makes gatehouse unready.
    pub fn set_tls(&self, tls: Option<Arc<ReloadableTls>>) {
        let _ = self.tls.set(tls);
    }

    /// Every reason gatehouse cannot serve now; empty when ready.
    pub async fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.listening.load(Ordering::SeqCst) {
            problems.push("listener not up yet".to_owned());
        }
        if self.draining.load(Ordering::SeqCst) {
            problems.push("draining: shutting down".to_owned());
        }
        if self
            .tls
            .get()
            .and_then(Option::as_ref)
            .is_some_and(|tls| tls.serving_certificate_expired())
        {
            problems.push("serving certificate expired".to_owned());
        }
        for provider in self.authenticator.get().providers_without_keys() {
            problems.push(format!("JWKS of provider {provider} not loaded"));
        }
        if let Err(reason) = self.upstream.check_health().await {
            problems.push(reason);
        }
        problems
    }
}

/// Serves the admin endpoints until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = async { let _ = shutdown.wait_for(|stop| *stop).await; } => return,
        };
        let metrics = metrics.clone();
        let readiness = readiness.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let metrics = metrics.clone();
                    let readiness = readiness.clone();
                    async move { Ok::<_, Infallible>(answer(&request, &metrics, &readiness).await) }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

async fn answer(
    request: &Request<hyper::body::Incoming>,
    metrics: &Metrics,
    readiness: &Readiness,
) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, content_type: &'static str, body: String| {
        Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("a static response is valid")
    };
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".to_owned(),
        );
    }
    match request.uri().path() {
        "/metrics" => text(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".to_owned()),
        "/readyz" => {
            let problems = readiness.problems().await;
            if problems.is_empty() {
                text(StatusCode::OK, "text/plain", "ready\n".to_owned())
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready\n{}\n", problems.join("\n")),
                )
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: /metrics /healthz /readyz\n".to_owned(),
        ),
    }
}
