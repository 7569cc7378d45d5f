//! Context: gives each admitted call that carries a verified bearer token a call-context
//! handle (DESIGN §10), when an outbound destination uses `credentials: context`. The
//! handle reaches the app in `baggage` (`gatehouse-ctx=<hex>`); the app's own calls
//! carry it back to the outbound listener, which attaches this call's token.
//!
//! It sits below Limits, so a call refused for its identity's limits never gets a
//! handle, and its handle rides the response body: it resolves while the call is open
//! and for `outbound.context_grace` after. A call gatehouse answered without the app
//! (the app was unreachable) never showed the app its handle, which then goes at once.
//! With no table configured the layer passes calls through untouched.

use std::convert::Infallible;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderMap, HeaderValue, Request, Response};
use tower::{Layer, Service};

use crate::body::{RequestBody, ResponseBody};
use crate::call_context::{self, CallContexts, MintError, OpenCall};
use crate::grpc::{self, Deadline};
use crate::inbound::auth::VerifiedBearer;
use crate::layers::observe::CallFacts;
use crate::limits::local::Identity;
use crate::metrics::Metrics;
use crate::tls::ConnectionInfo;

/// Wraps a service in [`ContextService`].
#[derive(Clone)]
pub struct ContextLayer {
    table: Option<Arc<CallContexts>>,
    metrics: Arc<Metrics>,
    /// Keys identities for the table's per-identity bound; seeded at random, so no
    /// caller can choose a name that lands on another's key.
    owners: RandomState,
}

impl ContextLayer {
    /// `table`: where handles live; `None` when no destination uses `context`.
    pub fn new(table: Option<Arc<CallContexts>>, metrics: Arc<Metrics>) -> Self {
        ContextLayer {
            table,
            metrics,
            owners: RandomState::new(),
        }
    }
}

impl<S> Layer<S> for ContextLayer {
    type Service = ContextService<S>;

    fn layer(&self, inner: S) -> ContextService<S> {
        ContextService {
            inner,
            table: self.table.clone(),
            metrics: self.metrics.clone(),
            owners: self.owners.clone(),
        }
    }
}

/// See the module documentation.
#[derive(Clone)]
pub struct ContextService<S> {
    inner: S,
    table: Option<Arc<CallContexts>>,
    metrics: Arc<Metrics>,
    owners: RandomState,
}

impl<S> Service<Request<RequestBody>> for ContextService<S>
where
    S: Service<Request<RequestBody>, Response = Response<ResponseBody>, Error = Infallible>,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = ContextFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<RequestBody>) -> Self::Future {
        let bearer = request.extensions_mut().remove::<VerifiedBearer>();
        let open = match (&self.table, bearer) {
            (Some(table), Some(bearer)) => {
                // The identity Limits counted the call against, for the table's bound on
                // one identity's handles.
                let identity = Identity::of(
                    CallFacts::in_request(&request).and_then(|facts| facts.auth()),
                    request
                        .extensions()
                        .get::<Arc<ConnectionInfo>>()
                        .map(Arc::as_ref),
                );
                let handle = Handle {
                    owner: self.owners.hash_one(&identity),
                    authorization: &bearer.0,
                    deadline: Deadline::of(request.extensions()),
                };
                mint(table, &self.metrics, request.headers_mut(), handle)
            }
            _ => None,
        };
        ContextFuture {
            call: self.inner.call(request),
            open,
        }
    }
}

pin_project_lite::pin_project! {
    /// What [`ContextService`] answers with: the answer below, holding the call's handle.
    pub struct ContextFuture<F> {
        #[pin]
        call: F,
        open: Option<OpenCall>,
    }
}

impl<F> Future for ContextFuture<F>
where
    F: Future<Output = Result<Response<ResponseBody>, Infallible>>,
{
    type Output = Result<Response<ResponseBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = std::task::ready!(this.call.poll(cx))?;
        if let Some(open) = this.open.take() {
            if response.extensions().get::<grpc::AnsweredHere>().is_some() {
                open.forget();
            } else {
                // The handle's grace starts when the response body is finished or reset.
                response.body_mut().hold(open);
            }
        }
        Poll::Ready(Ok(response))
    }
}

/// What a handle is minted for.
struct Handle<'a> {
    owner: u64,
    authorization: &'a HeaderValue,
    deadline: Option<Deadline>,
}

/// Gives the call its handle in `baggage`; a full table or an identity at its bound
/// (both counted), or a failed random generator, leave the call without one rather than
/// refusing it.
fn mint(
    table: &Arc<CallContexts>,
    metrics: &Metrics,
    headers: &mut HeaderMap,
    handle: Handle<'_>,
) -> Option<OpenCall> {
    let minted = table.mint(
        handle.owner,
        handle.authorization,
        handle.deadline.map(|deadline| deadline.at),
    );
    let (limit, why) = match minted {
        Ok((open, handle)) => {
            call_context::set_handle(headers, &handle);
            return Some(open);
        }
        Err(MintError::Full) => ("context_max_handles", "the table is full of open calls"),
        Err(MintError::OwnerFull) => (
            "context_max_handles_per_identity",
            "its identity's open calls hold every handle it may have",
        ),
        Err(error) => {
            tracing::warn!(%error, "call admitted without a call context");
            return None;
        }
    };
    metrics.limit_refusal(limit);
    tracing::debug!(why, "call admitted without a call context");
    None
}
