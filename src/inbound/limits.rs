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
//! With `limits.global`, a call these limits admit is then checked against the budgets
//! shared by every replica ([`crate::limits::GlobalLimiter`]); a call refused here spends
//! none of them. Without it, nothing more runs per call.
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

use super::schema::refused;
use crate::body::{RequestBody, ResponseBody};
use crate::config::Limits as Settings;
use crate::grpc::{self, Reason};
use crate::layers::observe::CallFacts;
use crate::learn::AppSchema;
use crate::limits::local::{CallSlot, Exceeded, Identity, Table, truncated};
use crate::limits::{Check, GlobalLimiter};
use crate::metrics::Metrics;
use crate::pool::Owner;
use crate::tls::ConnectionInfo;

/// Wraps a service in [`Limits`].
#[derive(Clone)]
pub struct LimitsLayer {
    table: Arc<Table>,
    metrics: Arc<Metrics>,
    global: Option<Arc<GlobalLimiter>>,
    schema: Option<Arc<AppSchema>>,
}

impl LimitsLayer {
    pub fn new(limits: &Settings, metrics: Arc<Metrics>) -> Self {
        LimitsLayer {
            table: Arc::new(Table::new(limits)),
            metrics,
            global: None,
            schema: None,
        }
    }

    /// Also checks every call the per-pod limits admit against `limits.global`.
    pub fn with_global(mut self, global: Option<Arc<GlobalLimiter>>) -> Self {
        self.global = global;
        self
    }

    /// With the app's schema, a call the Schema layer below will refuse (an unknown
    /// method) is not counted against `limits.global`: a caller sending made-up method
    /// paths must not make a bucket (and a key in the store) for each.
    pub fn with_schema(mut self, schema: Option<Arc<AppSchema>>) -> Self {
        self.schema = schema;
        self
    }
}

impl<S> Layer<S> for LimitsLayer {
    type Service = Limits<S>;

    fn layer(&self, inner: S) -> Limits<S> {
        Limits {
            inner,
            table: self.table.clone(),
            metrics: self.metrics.clone(),
            global: self.global.clone(),
            schema: self.schema.clone(),
        }
    }
}

/// See the module documentation.
#[derive(Clone)]
pub struct Limits<S> {
    inner: S,
    table: Arc<Table>,
    metrics: Arc<Metrics>,
    global: Option<Arc<GlobalLimiter>>,
    schema: Option<Arc<AppSchema>>,
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
    S: Service<Request<RequestBody>, Response = Response<ResponseBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
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
        let path = request.uri().path();
        if let Some(global) = &self.global
            && !self.schema.as_ref().is_some_and(|s| refused(s, path))
        {
            let outcome = CallFacts::in_request(&request).and_then(|facts| facts.auth());
            let connection = request.extensions().get::<Arc<ConnectionInfo>>();
            match global.check(outcome, connection, request.uri().path()) {
                Check::Admitted => {}
                // The slot goes back as it is dropped: the call never reaches the app.
                Check::Refused(status) => {
                    return LimitsFuture::Refused {
                        response: std::future::ready(Ok(status.response())),
                    };
                }
                // Rare (a bucket's first lease, a bucket near empty): the boxed future
                // costs an allocation only then.
                Check::Pending(pending) => {
                    let mut inner = self.inner.clone();
                    let call = async move {
                        if let Err(status) = pending.await {
                            return Ok(status.response());
                        }
                        let mut response = inner.call(request).await?;
                        response.body_mut().hold(slot);
                        Ok(response)
                    };
                    return LimitsFuture::Waiting {
                        call: Box::pin(call),
                    };
                }
            }
        }
        LimitsFuture::Admitted {
            call: self.inner.call(request),
            slot: Some(slot),
        }
    }
}

/// A call waiting for `limits.global`'s answer, then for the app's.
type WaitingCall = Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, Infallible>> + Send>>;

pin_project_lite::pin_project! {
    /// What [`Limits`] answers with: a named future rather than a boxed one, which
    /// saves an allocation on every call but those that wait for `limits.global`.
    #[project = LimitsProjection]
    pub enum LimitsFuture<F> {
        Refused { response: std::future::Ready<Result<Response<ResponseBody>, Infallible>> },
        Admitted { #[pin] call: F, slot: Option<CallSlot> },
        Waiting { call: WaitingCall },
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
            LimitsProjection::Waiting { call } => call.as_mut().poll(cx),
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

#[cfg(test)]
#[cfg(feature = "global-limits")]
mod tests {
    //! The layer around a stand-in for the app, with `limits.global` on a store nothing
    //! listens on: every lease fails at once, so the first call of a bucket really waits
    //! for its lease and calls are then decided by this replica's share.

    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::auth::outcome::AuthOutcome;
    use crate::config::GlobalLimits;
    use crate::grpc::{Code, GRPC_MESSAGE, GRPC_STATUS};
    use crate::identity::{AuthMethod, Claims, Principal};

    /// Answers OK and counts the calls it is handed.
    #[derive(Clone, Default)]
    struct App(Arc<AtomicUsize>);

    impl Service<Request<RequestBody>> for App {
        type Response = Response<ResponseBody>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Response<ResponseBody>, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<RequestBody>) -> Self::Future {
            self.0.fetch_add(1, Ordering::SeqCst);
            let mut response = Response::new(ResponseBody::empty());
            response
                .headers_mut()
                .insert(GRPC_STATUS, Code::Ok.header_value());
            std::future::ready(Ok(response))
        }
    }

    /// One open call per identity, and `rule` in a store that cannot be reached.
    fn limits(rule: &str, app: &App) -> Limits<App> {
        let yaml = format!("{{ redis: 'redis://127.0.0.1:1', key_prefix: t, rules: [{rule}] }}");
        let config: GlobalLimits = serde_saphyr::from_str(&yaml).unwrap();
        let global = crate::limits::GlobalLimiter::new(&config).unwrap_or_else(|p| panic!("{p:?}"));
        let mut settings = Settings::default();
        settings.per_identity.max_concurrent_calls = 1;
        LimitsLayer::new(&settings, Arc::new(Metrics::new()))
            .with_global(Some(Arc::new(global)))
            .layer(app.clone())
    }

    /// A call Auth admitted with the API key `scanner` of tenant `acme`.
    fn call() -> Request<RequestBody> {
        let mut request = Request::post("http://gatehouse.test/pkg.Svc/Get")
            .body(RequestBody::local(bytes::Bytes::new()))
            .unwrap();
        let claims = Claims {
            tenant_id: Some("acme".to_owned()),
            api_key_name: Some("scanner".to_owned()),
            ..Claims::default()
        };
        let principal = Principal::new(AuthMethod::ApiKey, claims).unwrap();
        CallFacts::of(&mut request).set_auth(AuthOutcome::Admitted {
            principal: Arc::new(principal),
            would_refuse: None,
        });
        request
    }

    /// The status and the message of an answer.
    fn status(response: &Response<ResponseBody>) -> (String, String) {
        let header = |name| {
            response
                .headers()
                .get(name)
                .map_or_else(String::new, |v| v.to_str().unwrap().to_owned())
        };
        (header(GRPC_STATUS), header(GRPC_MESSAGE))
    }

    #[tokio::test]
    async fn a_call_that_waited_for_the_store_holds_its_slot_until_its_body_ends() {
        let app = App::default();
        let mut limits = limits("{ per: tenant, calls_per_second: 100 }", &app);
        let first = limits.call(call());
        assert!(
            matches!(first, LimitsFuture::Waiting { .. }),
            "a bucket's first call waits for its first lease"
        );
        let first = first.await.unwrap();
        assert_eq!(status(&first).0, "0");
        // Its per-pod slot rides its body: a second call of the same caller is refused.
        let second = limits.call(call()).await.unwrap();
        let (code, message) = status(&second);
        assert_eq!(code, "8");
        assert!(message.starts_with("CONCURRENCY_LIMIT"), "{message}");
        drop(first);
        let third = limits.call(call()).await.unwrap();
        assert_eq!(status(&third).0, "0");
        assert_eq!(app.0.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_call_the_global_limit_refuses_gives_its_slot_back_and_never_reaches_the_app() {
        let app = App::default();
        let mut limits = limits("{ per: tenant, calls_per_second: 1, burst: 1 }", &app);
        let first = limits.call(call()).await.unwrap();
        assert_eq!(status(&first).0, "0");
        drop(first);
        for _ in 0..3 {
            let refused = limits.call(call()).await.unwrap();
            let (code, message) = status(&refused);
            assert_eq!(code, "8");
            assert!(message.starts_with("GLOBAL_RATE_LIMITED"), "{message}");
        }
        assert_eq!(app.0.load(Ordering::SeqCst), 1);
    }
}
