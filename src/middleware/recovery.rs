//! Recovery: a panic while handling a call becomes an `INTERNAL` gRPC status for that
//! call, logged with the method, and the process keeps serving every other call.
//!
//! Unlike a generic catch-panic layer that answers HTTP 500 (which gRPC clients report as
//! a confusing transport error), this answers with a trailers-only gRPC response.
//!
//! ```
//! use gatehouse::middleware::recovery::RecoveryLayer;
//! use tower::Layer;
//! # let forward = tower::service_fn(|_: http::Request<()>| async {
//! #     Ok::<_, std::convert::Infallible>(gatehouse::grpc::status_response(gatehouse::grpc::Code::Ok, ""))
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
use crate::grpc::{self, Code};

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

impl<S, B> Service<Request<B>> for Recovery<S>
where
    S: Service<Request<B>, Response = Response<ResponseBody>, Error = Infallible>,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = RecoveryFuture<S::Future>;

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
    pub enum RecoveryFuture<F> {
        Running { #[pin] future: F, uri: Uri },
        Panicked { response: Option<Response<ResponseBody>> },
    }
}

impl<F> Future for RecoveryFuture<F>
where
    F: Future<Output = Result<Response<ResponseBody>, Infallible>>,
{
    type Output = Result<Response<ResponseBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            RecoveryProj::Running { future, uri } => {
                match catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
                    Ok(poll) => poll,
                    Err(panic) => Poll::Ready(Ok(recovered(uri, panic.as_ref()))),
                }
            }
            RecoveryProj::Panicked { response } => Poll::Ready(Ok(response
                .take()
                .expect("RecoveryFuture polled after completion"))),
        }
    }
}

fn recovered(uri: &Uri, panic: &(dyn Any + Send)) -> Response<ResponseBody> {
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
    grpc::status_response(Code::Internal, "internal error in gatehouse")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::GRPC_STATUS;

    fn request() -> Request<()> {
        Request::post("/pkg.Svc/Method").body(()).unwrap()
    }

    async fn answer(
        service: &mut impl Service<Request<()>, Response = Response<ResponseBody>, Error = Infallible>,
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
            Ok(grpc::status_response(Code::Ok, ""))
        }));
        assert_eq!(answer(&mut service).await, "13");
        // The same service keeps answering after a panic.
        assert_eq!(answer(&mut service).await, "13");
    }

    #[tokio::test]
    async fn passes_responses_through_untouched() {
        let mut service = RecoveryLayer::new().layer(tower::service_fn(|_: Request<()>| async {
            Ok(grpc::status_response(Code::NotFound, "nope"))
        }));
        assert_eq!(answer(&mut service).await, "5");
    }
}
