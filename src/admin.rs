//! The admin server (HTTP/1.1 on `telemetry.admin_address`), for Prometheus and
//! Kubernetes:
//!
//! - `GET /metrics`: the metrics, as OpenMetrics when the scraper's `Accept` asks for it
//!   (Prometheus does), else in the classic Prometheus text format; the `Content-Type`
//!   names the format written.
//! - `GET /healthz`: 200 while the process runs (liveness: restart only if this fails).
//! - `GET /readyz`: 200 when gatehouse can serve calls, else 503 with one reason per
//!   line: a certificate, key or CA file does not exist yet (each named; the listener
//!   stays closed until they do), the listener is not up yet, gatehouse is draining after SIGTERM, a remote
//!   JWKS has never loaded, the app's schema is not known yet (`schema.source`), or the
//!   app is unreachable or reports NOT_SERVING on
//!   `grpc.health.v1.Health/Check` (an app without a health service counts as up once
//!   it answers). The app's answer is reused for [`PROBE_TTL`], so a flood of probes
//!   costs the app at most one call per period. With `limits.global`, a line after the
//!   verdict says whether its store answers; it never changes the verdict.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::auth::Authenticator;
use crate::limits::GlobalLimiter;
use crate::metrics::{Exposition, Metrics};
use crate::reload::Current;
use crate::tls::ReloadableTls;
use crate::upstream::Upstream;

/// How long the app's answer to the readiness probe is reused.
pub const PROBE_TTL: Duration = Duration::from_secs(1);

/// What `/readyz` checks.
pub struct Readiness {
    pub listening: AtomicBool,
    pub draining: AtomicBool,
    upstream: Arc<Upstream>,
    authenticator: Arc<Current<Authenticator>>,
    tls: std::sync::OnceLock<Option<Arc<ReloadableTls>>>,
    /// The TLS files gatehouse waits for before it listens, each with what is wrong.
    waiting_for: std::sync::Mutex<Vec<String>>,
    schema: std::sync::OnceLock<Arc<crate::learn::AppSchema>>,
    app_health: Cached<Result<(), String>>,
    global_limits: std::sync::OnceLock<Arc<GlobalLimiter>>,
}

/// A value computed at most once per `ttl`.
pub struct Cached<T> {
    ttl: Duration,
    /// Held while a value is being computed: a probe arriving meanwhile waits for that
    /// answer instead of asking the app again. Only this one await is under the lock.
    last: tokio::sync::Mutex<Option<(Instant, T)>>,
}

impl<T: Clone> Cached<T> {
    pub fn new(ttl: Duration) -> Self {
        Cached {
            ttl,
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// The value computed less than `ttl` ago, or a fresh one from `compute`.
    pub async fn get<F: Future<Output = T>>(&self, compute: impl FnOnce() -> F) -> T {
        let mut last = self.last.lock().await;
        if let Some((at, value)) = last.as_ref()
            && at.elapsed() < self.ttl
        {
            return value.clone();
        }
        let value = compute().await;
        *last = Some((Instant::now(), value.clone()));
        value
    }
}

impl Readiness {
    pub fn new(upstream: Arc<Upstream>, authenticator: Arc<Current<Authenticator>>) -> Self {
        Readiness {
            listening: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            upstream,
            authenticator,
            tls: std::sync::OnceLock::new(),
            waiting_for: std::sync::Mutex::new(Vec::new()),
            schema: std::sync::OnceLock::new(),
            app_health: Cached::new(PROBE_TTL),
            global_limits: std::sync::OnceLock::new(),
        }
    }

    /// The TLS files still awaited (`tls.cert_file: no such file: …`); empty once they
    /// are all there.
    pub fn set_waiting_for(&self, files: Vec<String>) {
        *self.waiting_for.lock().unwrap_or_else(|p| p.into_inner()) = files;
    }

    /// The serving certificates, whose expiry makes gatehouse unready.
    pub fn set_tls(&self, tls: Option<Arc<ReloadableTls>>) {
        let _ = self.tls.set(tls);
    }

    /// The app's schema, which makes gatehouse unready while it is not known.
    pub fn set_schema(&self, schema: Arc<crate::learn::AppSchema>) {
        let _ = self.schema.set(schema);
    }

    /// `limits.global`, whose store `/readyz` describes without making it a condition:
    /// a store outage must not take every replica out of its Service.
    pub fn set_global_limits(&self, global: Option<Arc<GlobalLimiter>>) {
        if let Some(global) = global {
            let _ = self.global_limits.set(global);
        }
    }

    /// Lines that say how gatehouse serves but never make it unready.
    pub fn details(&self) -> Vec<String> {
        self.global_limits
            .get()
            .map(|global| global.readiness_detail())
            .into_iter()
            .collect()
    }

    /// Every reason gatehouse cannot serve now; empty when ready.
    pub async fn problems(&self) -> Vec<String> {
        let mut problems: Vec<String> = self
            .waiting_for
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|file| format!("waiting for {file}"))
            .collect();
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
        if let Some(unknown) = self.schema.get().and_then(|schema| schema.unknown()) {
            problems.push(unknown);
        }
        for provider in self.authenticator.get().providers_without_keys() {
            problems.push(format!("JWKS of provider {provider} not loaded"));
        }
        let health = self.app_health.get(|| self.upstream.check_health()).await;
        if let Err(reason) = health {
            problems.push(reason);
        }
        problems
    }
}

/// Connections the admin server holds at most, from every client.
pub const ADMIN_CONNECTIONS: usize = 256;
/// Connections the admin server holds at most from one client address, so one client
/// filling the others' slots cannot fail the kubelet's probes.
pub const ADMIN_CONNECTIONS_PER_ADDRESS: usize = 16;
/// How long a connection may take to send its request.
const ADMIN_REQUEST_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// Open admin connections, in all and per client address.
#[derive(Default)]
struct Slots {
    open: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
    total: std::sync::atomic::AtomicUsize,
}

/// One admin connection's place in [`Slots`], given back when dropped.
struct Slot {
    slots: Arc<Slots>,
    address: std::net::IpAddr,
}

impl Slots {
    fn take(self: &Arc<Self>, address: std::net::IpAddr) -> Option<Slot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let here = open.entry(address).or_insert(0);
        if *here >= ADMIN_CONNECTIONS_PER_ADDRESS
            || self.total.load(Ordering::SeqCst) >= ADMIN_CONNECTIONS
        {
            if *here == 0 {
                open.remove(&address);
            }
            return None;
        }
        *here += 1;
        self.total.fetch_add(1, Ordering::SeqCst);
        Some(Slot {
            slots: self.clone(),
            address,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(here) = open.get_mut(&self.address) {
            *here -= 1;
            if *here == 0 {
                open.remove(&self.address);
            }
        }
        self.slots.total.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves the admin endpoints until `shutdown` is cancelled: one request per connection,
/// which has [`ADMIN_REQUEST_TIME`] to arrive, and at most [`ADMIN_CONNECTIONS`]
/// connections ([`ADMIN_CONNECTIONS_PER_ADDRESS`] from one address); more are closed at
/// accept and counted in `gatehouse_limit_refusals_total{limit="admin_connections"}`.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let slots = Arc::new(Slots::default());
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        let Some(slot) = slots.take(remote.ip().to_canonical()) else {
            metrics.limit_refusal("admin_connections");
            continue;
        };
        let metrics = metrics.clone();
        let readiness = readiness.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service =
                hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let metrics = metrics.clone();
                    let readiness = readiness.clone();
                    async move { Ok::<_, Infallible>(answer(&request, &metrics, &readiness).await) }
                });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(ADMIN_REQUEST_TIME)
                .keep_alive(false)
                .serve_connection(TokioIo::new(tcp), service);
            // A client that sends its request and then reads nothing cannot hold the
            // slot either.
            let _ = tokio::time::timeout(ADMIN_REQUEST_TIME * 2, connection).await;
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
        "/metrics" => {
            let format = exposition(request.headers().get(http::header::ACCEPT));
            text(
                StatusCode::OK,
                format.content_type(),
                metrics.render_as(format),
            )
        }
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".to_owned()),
        "/readyz" => {
            let problems = readiness.problems().await;
            let details: String = readiness
                .details()
                .iter()
                .map(|detail| detail.clone() + "\n")
                .collect();
            if problems.is_empty() {
                text(StatusCode::OK, "text/plain", format!("ready\n{details}"))
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready\n{}\n{details}", problems.join("\n")),
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

/// The format a scraper asks for in `Accept`: the acceptable range with the highest
/// quality (the first of equals), as Prometheus's Go client negotiates. OpenMetrics is
/// written only when asked for by name; anything else, or no `Accept`, gets the classic
/// text format every scraper reads.
fn exposition(accept: Option<&http::HeaderValue>) -> Exposition {
    let Some(accept) = accept.and_then(|value| value.to_str().ok()) else {
        return Exposition::PrometheusText;
    };
    let mut best: Option<(f32, Exposition)> = None;
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default().to_ascii_lowercase();
        let (mut quality, mut version) = (1.0_f32, None);
        for parameter in parts {
            match parameter.split_once('=').map(|(k, v)| (k.trim(), v.trim())) {
                Some((key, value)) if key.eq_ignore_ascii_case("q") => {
                    quality = value.parse().unwrap_or(0.0);
                }
                Some((key, value)) if key.eq_ignore_ascii_case("version") => {
                    version = Some(value.trim_matches('"'));
                }
                _ => {}
            }
        }
        let format = match (media.as_str(), version) {
            ("application/openmetrics-text", None | Some("1.0.0" | "0.0.1")) => {
                Exposition::OpenMetrics
            }
            ("text/plain", None | Some("0.0.4")) | ("text/*" | "*/*", _) => {
                Exposition::PrometheusText
            }
            _ => continue,
        };
        if quality > 0.0 && best.is_none_or(|(best, _)| quality > best) {
            best = Some((quality, format));
        }
    }
    best.map_or(Exposition::PrometheusText, |(_, format)| format)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn metrics_are_written_in_the_format_the_scraper_asks_for() {
        let cases = [
            // Prometheus 2 and 3.
            (
                Some(
                    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
                ),
                Exposition::OpenMetrics,
            ),
            (
                Some(
                    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.5,text/plain;version=0.0.4;q=0.4,*/*;q=0.1",
                ),
                Exposition::OpenMetrics,
            ),
            // The classic format preferred, or OpenMetrics refused.
            (
                Some("text/plain;version=0.0.4;q=0.9, application/openmetrics-text;q=0.5"),
                Exposition::PrometheusText,
            ),
            (
                Some("application/openmetrics-text;q=0, */*"),
                Exposition::PrometheusText,
            ),
            // A version we do not write is not chosen.
            (
                Some("application/openmetrics-text;version=2.0.0"),
                Exposition::PrometheusText,
            ),
            (Some("*/*"), Exposition::PrometheusText),
            (None, Exposition::PrometheusText),
        ];
        for (accept, expected) in cases {
            let value = accept.map(http::HeaderValue::from_static);
            assert_eq!(exposition(value.as_ref()), expected, "Accept: {accept:?}");
        }
    }

    #[tokio::test]
    async fn a_flood_of_probes_asks_once_per_period() {
        let cached = Arc::new(Cached::new(Duration::from_secs(3600)));
        let asked = Arc::new(AtomicUsize::new(0));
        let probes: Vec<_> = (0..100)
            .map(|_| {
                let (cached, asked) = (cached.clone(), asked.clone());
                tokio::spawn(async move {
                    cached
                        .get(|| async {
                            asked.fetch_add(1, Ordering::SeqCst);
                            tokio::task::yield_now().await;
                            Ok::<(), String>(())
                        })
                        .await
                })
            })
            .collect();
        for probe in probes {
            assert_eq!(probe.await.unwrap(), Ok(()));
        }
        assert_eq!(asked.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_answer_older_than_the_period_is_asked_again() {
        let cached = Cached::new(Duration::ZERO);
        let first = cached
            .get(|| async { Err::<(), _>("down".to_owned()) })
            .await;
        let second = cached.get(|| async { Ok::<(), String>(()) }).await;
        assert_eq!((first, second), (Err("down".to_owned()), Ok(())));
    }
}
