//! Recovery: a panic while handling a call becomes an `INTERNAL` gRPC status for that
//! call, logged with the method, and the process keeps serving every other call.
//!
//! Unlike a generic catch-panic layer that answers HTTP 500 (which gRPC clients report as
//! a confusing transport error), this answers with a trailers-only gRPC response.
//!
//! ```
//! use gatehouse::layers::recovery::RecoveryLayer;
//! use tower::Layer;
//! # let forward = tower::service_fn(|_: http::Request<()>| async {
//! #     Ok::<_, std::convert::Infallible>(http::Response::new(gatehouse::body::ResponseBody::empty()))
//! # });
//! let service = RecoveryLayer::new().layer(forward);
//! ```

use std::any::Any;
use std::convert::Infallible;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response, Uri};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::body::ResponseBody;
use crate::grpc::{self, Reason};

/// Wraps a service in [`Recovery`].
#[derive(Clone, Copy, Debug, Default)]
pub struct RecoveryLayer {
    _private: (),
}

impl RecoveryLayer {
    pub fn new() -> Self {
        RecoveryLayer::default()
    }
}

impl<S> Layer<S> for RecoveryLayer {
    type Service = Recovery<S>;

    fn layer(&self, inner: S) -> Recovery<S> {
        Recovery { inner }
    }
}

/// Catches panics in the inner service's `call` and in its response future.
#[derive(Clone, Debug)]
pub struct Recovery<S> {
    inner: S,
}

impl<S, B, RB> Service<Request<B>> for Recovery<S>
where
    S: Service<Request<B>, Response = Response<RB>, Error = Infallible>,
{
    type Response = Response<RecoveryBody<RB>>;
    type Error = Infallible;
    type Future = RecoveryFuture<S::Future, RB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // Kept for the log line should the call panic; cloning a `Uri` only bumps
        // reference counts.
        let uri = request.uri().clone();
        match catch_unwind(AssertUnwindSafe(|| self.inner.call(request))) {
            Ok(future) => RecoveryFuture::Running { future, uri },
            Err(panic) => RecoveryFuture::Panicked {
                response: Some(recovered(&uri, panic.as_ref())),
            },
        }
    }
}

pin_project! {
    /// The response future of [`Recovery`].
    #[project = RecoveryProj]
    pub enum RecoveryFuture<F, RB> {
        Running { #[pin] future: F, uri: Uri },
        Panicked { response: Option<Response<RecoveryBody<RB>>> },
    }
}

impl<F, RB> Future for RecoveryFuture<F, RB>
where
    F: Future<Output = Result<Response<RB>, Infallible>>,
{
    type Output = Result<Response<RecoveryBody<RB>>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            RecoveryProj::Running { future, uri } => {
                match catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
                    Ok(Poll::Ready(Ok(response))) => {
                        Poll::Ready(Ok(response.map(|body| RecoveryBody::Inner { body })))
                    }
                    Ok(Poll::Pending) => Poll::Pending,
                    Err(panic) => Poll::Ready(Ok(recovered(uri, panic.as_ref()))),
                }
            }
            RecoveryProj::Panicked { response } => Poll::Ready(Ok(response
                .take()
                .expect("RecoveryFuture polled after completion"))),
        }
    }
}

fn recovered<RB>(uri: &Uri, panic: &(dyn Any + Send)) -> Response<RecoveryBody<RB>> {
    let reason = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("non-string panic payload");
    tracing::error!(
        method = uri.path(),
        panic = reason,
        "panic while handling a call; answered INTERNAL"
    );
    RecoveryBody::local(
        grpc::Status::new(Reason::Internal, "internal error in gatehouse")
            .with("method", uri.path())
            .response(),
    )
}

pin_project! {
    /// The chain's response body: the inner layers' body, or one made here (a panic's
    /// INTERNAL, or the HTTP server's own answers such as 415).
    #[project = RecoveryBodyProj]
    pub enum RecoveryBody<B> {
        Inner { #[pin] body: B },
        Local { body: ResponseBody },
    }
}

impl<B> RecoveryBody<B> {
    /// Wraps a response made outside the inner layers.
    pub fn local(response: Response<ResponseBody>) -> Response<RecoveryBody<B>> {
        response.map(|body| RecoveryBody::Local { body })
    }
}

impl<B> http_body::Body for RecoveryBody<B>
where
    B: http_body::Body<Data = bytes::Bytes>,
{
    type Data = bytes::Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, B::Error>>> {
        match self.project() {
            RecoveryBodyProj::Inner { body } => body.poll_frame(cx),
            RecoveryBodyProj::Local { body } => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(frame) => {
                    Poll::Ready(frame.map(|frame| frame.map_err(|never| match never {})))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RecoveryBody::Inner { body } => body.is_end_stream(),
            RecoveryBody::Local { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            RecoveryBody::Inner { body } => body.size_hint(),
            RecoveryBody::Local { body } => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::{Code, GRPC_STATUS};

    /// An app's own answer: a status and nothing of gatehouse's.
    fn app_status(code: Code) -> Response<ResponseBody> {
        let mut response = Response::new(ResponseBody::empty());
        response
            .headers_mut()
            .insert(GRPC_STATUS, code.header_value());
        response
    }

    fn request() -> Request<()> {
        Request::post("/pkg.Svc/Method").body(()).unwrap()
    }

    async fn answer(
        service: &mut impl Service<
            Request<()>,
            Response = Response<RecoveryBody<ResponseBody>>,
            Error = Infallible,
        >,
    ) -> String {
        let response = service.call(request()).await.unwrap();
        response.headers()[GRPC_STATUS].to_str().unwrap().to_owned()
    }

    #[tokio::test]
    async fn panic_in_call_becomes_internal() {
        let mut service = RecoveryLayer::new().layer(tower::service_fn(
            |_: Request<()>| -> std::future::Ready<Result<Response<ResponseBody>, Infallible>> {
                panic!("boom in call")
            },
        ));
        assert_eq!(answer(&mut service).await, "13");
    }

    #[tokio::test]
    async fn panic_in_response_future_becomes_internal() {
        let mut service = RecoveryLayer::new().layer(tower::service_fn(|_: Request<()>| async {
            if std::hint::black_box(true) {
                panic!("boom in future");
            }
            Ok(app_status(Code::Ok))
        }));
        assert_eq!(answer(&mut service).await, "13");
        // The same service keeps answering after a panic.
        assert_eq!(answer(&mut service).await, "13");
    }

    #[tokio::test]
    async fn passes_responses_through_untouched() {
        let mut service = RecoveryLayer::new().layer(tower::service_fn(|_: Request<()>| async {
            Ok(app_status(Code::NotFound))
        }));
        assert_eq!(answer(&mut service).await, "5");
    }
}
