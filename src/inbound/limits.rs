//! Limits: what one identity may take of the app, enforced with the per-pod table of
//! [`crate::limits::local`]. A call over a limit is answered RESOURCE_EXHAUSTED without
//! reaching the app, counted in `gatehouse_limit_refusals_total{limit}` and logged.
//!
//! It sits after Auth because it needs the identity Auth decided, which Auth writes into
//! the call's facts. An admitted call's slot rides its response body and is given back
//! when the call ends. The identity also goes with the call, as a [`crate::pool::Owner`],
//! to the pool of connections to the app, which caps the streams one identity can leave
//! the app not reading.
//!
//! ```no_run
//! # fn example(forward: gatehouse::inbound::Forward) {
//! use std::sync::Arc;
//! use gatehouse::config::{Limits, PerIdentity};
//! use gatehouse::metrics::Metrics;
//! use gatehouse::inbound::limits::LimitsLayer;
//! use tower::Layer;
//! let limits = Limits {
//!     per_identity: PerIdentity { max_concurrent_calls: 64, calls_per_second: 100 },
//!     ..Limits::default()
//! };
//! let service = LimitsLayer::new(&limits, Arc::new(Metrics::new())).layer(forward);
//! # }
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::{Layer, Service};

use crate::body::{RequestBody, ResponseBody};
use crate::config::Limits as Settings;
use crate::grpc::{self, Reason};
use crate::layers::observe::CallFacts;
use crate::limits::local::{CallSlot, Exceeded, Identity, Table, truncated};
use crate::metrics::Metrics;
use crate::pool::Owner;
use crate::tls::ConnectionInfo;

/// Wraps a service in [`Limits`].
#[derive(Clone)]
pub struct LimitsLayer {
    table: Arc<Table>,
    metrics: Arc<Metrics>,
}

impl LimitsLayer {
    pub fn new(limits: &Settings, metrics: Arc<Metrics>) -> Self {
        LimitsLayer {
            table: Arc::new(Table::new(limits)),
            metrics,
        }
    }
}

impl<S> Layer<S> for LimitsLayer {
    type Service = Limits<S>;

    fn layer(&self, inner: S) -> Limits<S> {
        Limits {
            inner,
            table: self.table.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// See the module documentation.
#[derive(Clone)]
pub struct Limits<S> {
    inner: S,
    table: Arc<Table>,
    metrics: Arc<Metrics>,
}

/// Second of the last refusal logged at INFO: at most one a second, so a caller hammering
/// its limit cannot flood the log (the metric counts every one).
static LAST_REFUSAL_LOG: AtomicU64 = AtomicU64::new(0);

fn log_refusal(identity: &Identity, exceeded: Exceeded, method: &str) {
    let now = crate::clock::unix_now();
    let identity = identity.describe();
    let method = truncated(method);
    let limit = exceeded.limit();
    if LAST_REFUSAL_LOG.swap(now, Ordering::Relaxed) != now {
        tracing::info!(identity, limit, method, "call refused: per-identity limit");
    } else {
        tracing::debug!(identity, limit, method, "call refused: per-identity limit");
    }
}

impl<S> Service<Request<RequestBody>> for Limits<S>
where
    S: Service<Request<RequestBody>, Response = Response<ResponseBody>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = LimitsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<RequestBody>) -> Self::Future {
        let identity = Identity::of(
            CallFacts::in_request(&request).and_then(|facts| facts.auth()),
            request
                .extensions()
                .get::<Arc<ConnectionInfo>>()
                .map(Arc::as_ref),
        );
        // The pool to the app caps the streams one identity can leave it not reading.
        request.extensions_mut().insert(Owner::of(&identity));
        let slot = match self.table.admit(identity) {
            Ok(slot) => slot,
            Err((exceeded, identity)) => {
                self.metrics.limit_refusal(exceeded.limit());
                log_refusal(&identity, exceeded, request.uri().path());
                let reason = match exceeded {
                    Exceeded::Rate => Reason::RateLimited,
                    Exceeded::Concurrency | Exceeded::PublicPerClient | Exceeded::PublicShare => {
                        Reason::ConcurrencyLimit
                    }
                };
                let response = grpc::Status::new(reason, self.table.message(exceeded).to_owned())
                    .with("method", request.uri().path())
                    .with("limit", exceeded.limit())
                    .response();
                return LimitsFuture::Refused {
                    response: std::future::ready(Ok(response)),
                };
            }
        };
        LimitsFuture::Admitted {
            call: self.inner.call(request),
            slot: Some(slot),
        }
    }
}

pin_project_lite::pin_project! {
    /// What [`Limits`] answers with: a named future rather than a boxed one, which
    /// saves an allocation on every call.
    #[project = LimitsProjection]
    pub enum LimitsFuture<F> {
        Refused { response: std::future::Ready<Result<Response<ResponseBody>, Infallible>> },
        Admitted { #[pin] call: F, slot: Option<CallSlot> },
    }
}

impl<F> Future for LimitsFuture<F>
where
    F: Future<Output = Result<Response<ResponseBody>, Infallible>>,
{
    type Output = Result<Response<ResponseBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            LimitsProjection::Refused { response } => Pin::new(response).poll(cx),
            LimitsProjection::Admitted { call, slot } => {
                let mut response = std::task::ready!(call.poll(cx))?;
                // The slot is given back when the response body is sent or reset.
                if let Some(slot) = slot.take() {
                    response.body_mut().hold(slot);
                }
                Poll::Ready(Ok(response))
            }
        }
    }
}
