//! Metrics: counts every call by method and status code and times it to the end of
//! its response; counts authentication decisions and the refusals a dry run let through.
//! A call to a method without labels of its own yet is counted (started and handled)
//! when it ends, once it is known whether the app itself answered it (see
//! [`crate::metrics`]).
//!
//! It sits above Auth so refusals are counted too, and below Logging so that what the
//! log says and what the counters say agree. The status is read at the end of the
//! response body (trailers), where gRPC puts it.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Request, Response};
use tower::{Layer, Service};

use crate::auth::outcome::AuthOutcome;
use crate::body::{CredentialsEnded, RequestBody};
use crate::grpc::{self, Code};
use crate::metrics::{MAX_METHOD_CHARS, MethodMetrics, Metrics as Registry};
use crate::middleware::watch::{Completion, Outcome, Pending, Watched};

/// Wraps a service in [`Metrics`].
#[derive(Clone)]
pub struct MetricsLayer {
    registry: Arc<Registry>,
}

impl MetricsLayer {
    pub fn new(registry: Arc<Registry>) -> Self {
        MetricsLayer { registry }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = Metrics<S>;

    fn layer(&self, inner: S) -> Metrics<S> {
        Metrics {
            inner,
            registry: self.registry.clone(),
        }
    }
}

/// See the module documentation.
#[derive(Clone)]
pub struct Metrics<S> {
    inner: S,
    registry: Arc<Registry>,
}

/// Records one call when it ends.
pub struct Recorder {
    registry: Arc<Registry>,
    started: Instant,
    method: Option<Arc<MethodMetrics>>,
    /// The path of a call to a method without labels yet, which the app answered.
    unknown: Option<Box<str>>,
    /// `authorization.dry_run` let a call to a method without labels yet through
    /// although the rules refuse it: counted once its labels are decided.
    dry_run_refused: bool,
    /// How the admitted caller authenticated, and whether its credentials ended the
    /// call while it was open (`auth.expire_open_calls`).
    credentials: Option<(&'static str, CredentialsEnded)>,
}

impl Completion for Recorder {
    fn complete(self, outcome: Outcome) {
        self.registry.in_flight.dec();
        let method = match (self.method, self.unknown) {
            (Some(method), _) => method,
            // UNIMPLEMENTED: the app does not have it, whatever the caller made up.
            (None, Some(path)) if outcome.code != Code::Unimplemented => {
                let method = self.registry.answered_method(&path);
                method.started.inc();
                method
            }
            (None, _) => {
                let method = self.registry.other_method();
                method.started.inc();
                method
            }
        };
        if self.dry_run_refused {
            self.registry.dry_run_refusal(&method);
        }
        if let Some((auth_method, ended)) = &self.credentials
            && let Some(end) = ended.get()
        {
            self.registry
                .auth(auth_method, "ended_in_call", end.label());
        }
        self.registry
            .handled(&method, outcome.code, self.started.elapsed().as_secs_f64());
    }
}

impl<S, B> Service<Request<RequestBody>> for Metrics<S>
where
    S: Service<Request<RequestBody>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
{
    type Response = Response<Watched<B, Recorder>>;
    type Error = Infallible;
    type Future = MetricsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<RequestBody>) -> Self::Future {
        let registry = self.registry.clone();
        registry.in_flight.inc();
        let pending = Pending::new(Recorder {
            registry: registry.clone(),
            started: Instant::now(),
            method: None,
            unknown: None,
            dry_run_refused: false,
            credentials: None,
        });
        let path = request.uri().clone();
        MetricsFuture {
            call: self.inner.call(request),
            counted: Some((registry, path, pending)),
        }
    }
}

pin_project_lite::pin_project! {
    /// What [`Metrics`] answers with: a named future rather than a boxed one, which
    /// saves an allocation on every call.
    pub struct MetricsFuture<F> {
        #[pin]
        call: F,
        counted: Option<(Arc<Registry>, http::Uri, Pending<Recorder>)>,
    }
}

impl<F, B> Future for MetricsFuture<F>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
    B: http_body::Body<Data = bytes::Bytes>,
{
    type Output = Result<Response<Watched<B, Recorder>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.call.poll(cx))?;
        let (registry, path, pending) = this
            .counted
            .take()
            .expect("MetricsFuture polled after completion");
        Poll::Ready(Ok(count(response, &registry, &path, pending)))
    }
}

/// Counts the answer's method and authentication decision, and watches its body to the
/// end for the status.
fn count<B: http_body::Body<Data = bytes::Bytes>>(
    response: Response<B>,
    registry: &Registry,
    path: &http::Uri,
    mut pending: Pending<Recorder>,
) -> Response<Watched<B, Recorder>> {
    let outcome = response.extensions().get::<AuthOutcome>();
    if let Some(outcome) = outcome {
        match outcome.refusal() {
            None => registry.auth(outcome.method().as_str(), "allowed", "ok"),
            Some(reason) => registry.auth(outcome.method().as_str(), "refused", reason),
        }
    }
    // The query too: a refused `/pkg.Svc/Get?x` is not a call of `Get` and must
    // not be counted as one.
    let path = path
        .path_and_query()
        .map_or(path.path(), |path| path.as_str());
    let answered_here = response.extensions().get::<grpc::AnsweredHere>().is_some();
    let dry_run_refused = outcome.is_some_and(|outcome| outcome.would_refuse().is_some());
    let ended = response.extensions().get::<CredentialsEnded>();
    if let Some(recorder) = pending.get_mut() {
        recorder.credentials = outcome
            .zip(ended.cloned())
            .map(|(outcome, ended)| (outcome.method().as_str(), ended));
        match registry.known_method(path) {
            Some(method) => {
                method.started.inc();
                if dry_run_refused {
                    registry.dry_run_refusal(&method);
                }
                recorder.method = Some(method);
            }
            None if !answered_here && path.len() <= MAX_METHOD_CHARS => {
                recorder.unknown = Some(path.into());
                recorder.dry_run_refused = dry_run_refused;
            }
            None => recorder.dry_run_refused = dry_run_refused,
        }
    }
    let header_code = response
        .headers()
        .get(grpc::GRPC_STATUS)
        .map(Code::from_header);
    response.map(|body| Watched::new(body, pending, header_code))
}
