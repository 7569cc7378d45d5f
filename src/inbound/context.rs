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
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderMap, HeaderValue, Request, Response};
use tower::{Layer, Service};

use crate::body::{RequestBody, ResponseBody};
use crate::call_context::{self, CallContexts, MintError, OpenCall};
use crate::grpc::{self, Deadline};
use crate::inbound::auth::VerifiedBearer;
use crate::metrics::Metrics;

/// Wraps a service in [`ContextService`].
#[derive(Clone)]
pub struct ContextLayer {
    table: Option<Arc<CallContexts>>,
    metrics: Arc<Metrics>,
}

impl ContextLayer {
    /// `table`: where handles live; `None` when no destination uses `context`.
    pub fn new(table: Option<Arc<CallContexts>>, metrics: Arc<Metrics>) -> Self {
        ContextLayer { table, metrics }
    }
}

impl<S> Layer<S> for ContextLayer {
    type Service = ContextService<S>;

    fn layer(&self, inner: S) -> ContextService<S> {
        ContextService {
            inner,
            table: self.table.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// See the module documentation.
#[derive(Clone)]
pub struct ContextService<S> {
    inner: S,
    table: Option<Arc<CallContexts>>,
    metrics: Arc<Metrics>,
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
        let open = match (
            &self.table,
            request.extensions_mut().remove::<VerifiedBearer>(),
        ) {
            (Some(table), Some(bearer)) => {
                let deadline = Deadline::of(request.extensions());
                mint(
                    table,
                    &self.metrics,
                    request.headers_mut(),
                    bearer.0,
                    deadline,
                )
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

/// Gives the call its handle in `baggage`; a full table (counted) or a failed random
/// generator leaves the call without one rather than refusing it.
fn mint(
    table: &Arc<CallContexts>,
    metrics: &Metrics,
    headers: &mut HeaderMap,
    token: HeaderValue,
    deadline: Option<Deadline>,
) -> Option<OpenCall> {
    match table.mint(token, deadline.map(|deadline| deadline.at)) {
        Ok((open, handle)) => {
            call_context::set_handle(headers, &handle);
            Some(open)
        }
        Err(MintError::Full) => {
            metrics.limit_refusal("context_max_handles");
            tracing::debug!("call admitted without a call context: the table is full");
            None
        }
        Err(error) => {
            tracing::warn!(%error, "call admitted without a call context");
            None
        }
    }
}
