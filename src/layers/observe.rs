//! Observe: what the layers that report on calls have in common. Each starts a record
//! when a call comes in, is told when the answer's head is there, and completes the
//! record when the answer ends, with the status read where gRPC puts it (see
//! [`Watched`]). Inbound, the access log and the metrics are two observers; outbound,
//! the CLIENT span, log line and `grpc_client_*` metrics are one.
//!
//! What layers further down learn about a call (how Auth decided, whether the call's
//! credentials ended it, which server answered, the method's stream kind) they write
//! into the call's [`CallFacts`], which the first observer puts in the request's
//! extensions; the observers read it when the call ends. Nothing travels back up the
//! chain in response extensions.
//!
//! ```no_run
//! # fn example(forward: gatehouse::inbound::Forward, tracing: std::sync::Arc<gatehouse::telemetry::Tracing>) {
//! use gatehouse::inbound::logging::AccessLog;
//! use gatehouse::layers::observe::ObserveLayer;
//! use tower::Layer;
//! let service = ObserveLayer::new(AccessLog::new(tracing)).layer(forward);
//! # }
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response};
use tower::{Layer, Service};

use crate::auth::outcome::AuthOutcome;
use crate::body::{CredentialsEnded, RequestBody};
use crate::grpc::{self, Code};
use crate::layers::watch::{Completion, Pending, Watched};
use crate::schema::StreamKind;

/// What the layers below an observer learn about one call.
#[derive(Debug, Default)]
pub struct CallFacts {
    /// Request body bytes the caller sent so far.
    received: Arc<AtomicU64>,
    auth: OnceLock<AuthOutcome>,
    ended: CredentialsEnded,
    /// Outbound: the verified identity of the server that answered.
    peer: OnceLock<Arc<str>>,
    /// Inbound with a schema: the method's stream kind, for an exact `grpc_type`.
    kind: OnceLock<StreamKind>,
}

impl CallFacts {
    /// The facts of `request`, put in its extensions by the first observer to ask.
    pub fn of(request: &mut Request<RequestBody>) -> Arc<CallFacts> {
        if let Some(facts) = request.extensions().get::<Arc<CallFacts>>() {
            return facts.clone();
        }
        let facts = Arc::new(CallFacts::default());
        request.body_mut().count_into(facts.received.clone());
        request.extensions_mut().insert(facts.clone());
        facts
    }

    /// The facts a request carries, if an observer is above.
    pub fn in_request<B>(request: &Request<B>) -> Option<&Arc<CallFacts>> {
        request.extensions().get::<Arc<CallFacts>>()
    }

    /// Auth's decision; set once.
    pub fn set_auth(&self, outcome: AuthOutcome) {
        let _ = self.auth.set(outcome);
    }

    pub fn auth(&self) -> Option<&AuthOutcome> {
        self.auth.get()
    }

    /// Set if the call's credentials ended it while it was open.
    pub fn credentials_ended(&self) -> &CredentialsEnded {
        &self.ended
    }

    pub fn set_peer(&self, peer: Arc<str>) {
        let _ = self.peer.set(peer);
    }

    pub fn peer(&self) -> Option<&str> {
        self.peer.get().map(|peer| &**peer)
    }

    /// The called method's stream kind, from the app's schema; set once.
    pub fn set_stream_kind(&self, kind: StreamKind) {
        let _ = self.kind.set(kind);
    }

    pub fn stream_kind(&self) -> Option<StreamKind> {
        self.kind.get().copied()
    }

    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
}

/// One call's record, from its start to its end.
pub trait CallRecord: Completion {
    /// The answer's head is here; `answered_here`: gatehouse made it, not the peer.
    fn answered(&mut self, _answered_here: bool) {}
}

/// What an observing layer does for each call.
pub trait Observer: Clone + Send + Sync + 'static {
    type Record: CallRecord;

    /// Starts the record of a call coming in; may add to the request (trace context).
    fn start(&self, request: &mut Request<RequestBody>) -> Self::Record;
}

/// Wraps a service in [`Observe`].
#[derive(Clone)]
pub struct ObserveLayer<O> {
    observer: O,
}

impl<O> ObserveLayer<O> {
    pub fn new(observer: O) -> Self {
        ObserveLayer { observer }
    }
}

impl<S, O: Clone> Layer<S> for ObserveLayer<O> {
    type Service = Observe<S, O>;

    fn layer(&self, inner: S) -> Observe<S, O> {
        Observe {
            inner,
            observer: self.observer.clone(),
        }
    }
}

/// See the module documentation.
#[derive(Clone)]
pub struct Observe<S, O> {
    inner: S,
    observer: O,
}

impl<S, O, B> Service<Request<RequestBody>> for Observe<S, O>
where
    S: Service<Request<RequestBody>, Response = Response<B>, Error = Infallible>,
    O: Observer,
    B: http_body::Body<Data = Bytes>,
{
    type Response = Response<Watched<B, O::Record>>;
    type Error = Infallible;
    type Future = ObserveFuture<S::Future, O::Record>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<RequestBody>) -> Self::Future {
        let record = self.observer.start(&mut request);
        ObserveFuture {
            call: self.inner.call(request),
            pending: Some(Pending::new(record)),
        }
    }
}

pin_project_lite::pin_project! {
    /// What [`Observe`] answers with: the answer below, its body watched to the end. A
    /// named future rather than a boxed one, which saves an allocation on every call.
    pub struct ObserveFuture<F, R: Completion> {
        #[pin]
        call: F,
        pending: Option<Pending<R>>,
    }
}

impl<F, R, B> Future for ObserveFuture<F, R>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
    R: CallRecord,
    B: http_body::Body<Data = Bytes>,
{
    type Output = Result<Response<Watched<B, R>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.call.poll(cx))?;
        let mut pending = this
            .pending
            .take()
            .expect("ObserveFuture polled after completion");
        if let Some(record) = pending.get_mut() {
            record.answered(response.extensions().get::<grpc::AnsweredHere>().is_some());
        }
        let header_code = response
            .headers()
            .get(grpc::GRPC_STATUS)
            .map(Code::from_header);
        Poll::Ready(Ok(
            response.map(|body| Watched::new(body, pending, header_code))
        ))
    }
}
