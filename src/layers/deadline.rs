//! Deadline: a call ends when its deadline passes or when a drain runs out of time,
//! whether the answer has begun or not. The one place that waits for either: before
//! the answer, the call below is dropped (which resets the peer's stream) and answered
//! with the status; once the answer streams, the response body ends it the same way.
//!
//! The deadline is what the request's [`Deadline`] extension says: the server sets it
//! from `grpc-timeout` when the request arrives, and layers above may shorten it (an
//! outbound destination's `timeout`, the inbound call a context handle serves). With
//! [`DeadlineLayer::tell_peer`], what is left is sent on as `grpc-timeout`, so the peer
//! gives up no later than gatehouse does.
//!
//! ```no_run
//! # fn example(forward: gatehouse::inbound::Forward) {
//! use gatehouse::layers::deadline::DeadlineLayer;
//! use tokio_util::sync::CancellationToken;
//! use tower::Layer;
//! let service = DeadlineLayer::new(CancellationToken::new()).layer(forward);
//! # }
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;

use std::task::{Context, Poll};

use http::{Request, Response, Uri};
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tower::{Layer, Service};

use crate::body::{Ends, RequestBody, ResponseBody};
use crate::call_context::CallEnd;
use crate::grpc::{self, Deadline};

/// Wraps a service in [`DeadlineService`].
#[derive(Clone)]
pub struct DeadlineLayer {
    abort: CancellationToken,
    tell_peer: bool,
}

impl DeadlineLayer {
    /// `abort` is cancelled when a drain gives up on the calls still open.
    pub fn new(abort: CancellationToken) -> Self {
        DeadlineLayer {
            abort,
            tell_peer: false,
        }
    }

    /// Sends what is left of the deadline on as `grpc-timeout` (outbound: a deadline
    /// that a destination's `timeout` or an inbound call shortened).
    pub fn tell_peer(mut self) -> Self {
        self.tell_peer = true;
        self
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;

    fn layer(&self, inner: S) -> DeadlineService<S> {
        DeadlineService {
            inner,
            abort: self.abort.clone(),
            tell_peer: self.tell_peer,
        }
    }
}

/// See the module documentation.
#[derive(Clone)]
pub struct DeadlineService<S> {
    inner: S,
    abort: CancellationToken,
    tell_peer: bool,
}

impl<S> Service<Request<RequestBody>> for DeadlineService<S>
where
    S: Service<Request<RequestBody>, Response = Response<ResponseBody>, Error = Infallible>,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = DeadlineFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<RequestBody>) -> Self::Future {
        let deadline = Deadline::of(request.extensions());
        if self.tell_peer
            && let Some(deadline) = deadline
        {
            request.headers_mut().insert(
                grpc::GRPC_TIMEOUT,
                grpc::encode_timeout(deadline.remaining()),
            );
        }
        let who = request
            .extensions()
            .get::<grpc::Destination>()
            .map(|destination| destination.0.clone());
        let uri = request.uri().clone();
        // Outbound under a call context: the call ends with the inbound call it serves.
        let inbound = request
            .extensions_mut()
            .remove::<CallEnd>()
            .map(CallEnd::reached);
        DeadlineFuture {
            call: self.inner.call(request),
            ends: Some(Box::new(Ends {
                deadline: deadline
                    .map(|deadline| (Box::pin(tokio::time::sleep_until(deadline.at)), deadline)),
                who,
                abort: Box::pin(self.abort.clone().cancelled_owned()),
                inbound,
            })),
            uri,
        }
    }
}

pin_project_lite::pin_project! {
    /// What [`DeadlineService`] answers with: the answer below, or the status of a call
    /// that ran out of time first.
    pub struct DeadlineFuture<F> {
        #[pin]
        call: F,
        ends: Option<Box<Ends>>,
        uri: Uri,
    }
}

impl<F> Future for DeadlineFuture<F>
where
    F: Future<Output = Result<Response<ResponseBody>, Infallible>>,
{
    type Output = Result<Response<ResponseBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(response) = this.call.poll(cx) {
            let mut response = response?;
            let ends = this
                .ends
                .take()
                .expect("DeadlineFuture polled after completion");
            response.body_mut().end_by(ends);
            return Poll::Ready(Ok(response));
        }
        let ends = this
            .ends
            .as_mut()
            .expect("DeadlineFuture polled after completion");
        let inbound_ended = ends
            .inbound
            .as_mut()
            .is_some_and(|inbound| inbound.as_mut().poll(cx).is_ready());
        let status = if ends.abort.as_mut().poll(cx).is_ready() {
            grpc::Status::shutting_down()
        } else if inbound_ended {
            grpc::Status::inbound_call_ended()
        } else if let Some((sleep, deadline)) = ends.deadline.as_mut()
            && poll_sleep(sleep, cx)
        {
            deadline.exceeded(ends.who.as_deref().unwrap_or("the app"), false)
        } else {
            return Poll::Pending;
        };
        // Dropping the call below (when this future is dropped) resets the peer's stream.
        let status = status.about(this.uri, ends.who.as_deref());
        Poll::Ready(Ok(status.response()))
    }
}

fn poll_sleep(sleep: &mut Pin<Box<Sleep>>, cx: &mut Context<'_>) -> bool {
    sleep.as_mut().poll(cx).is_ready()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::time::Instant;

    use super::*;
    use crate::grpc::{Code, GRPC_STATUS};

    fn call(deadline: Option<Duration>) -> Request<RequestBody> {
        let mut request = Request::post("http://gatehouse.test/pkg.Svc/Get")
            .body(RequestBody::local(bytes::Bytes::new()))
            .unwrap();
        if let Some(after) = deadline {
            request.extensions_mut().insert(Deadline {
                at: Instant::now() + after,
                source: "grpc-timeout",
            });
        }
        request
    }

    #[tokio::test]
    async fn a_call_past_its_deadline_is_answered_deadline_exceeded_and_dropped() {
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        struct Flag(Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let flag = dropped.clone();
        let never = tower::service_fn(move |_: Request<RequestBody>| {
            let flag = Flag(flag.clone());
            async move {
                let _flag = flag;
                std::future::pending::<Result<Response<ResponseBody>, Infallible>>().await
            }
        });
        let mut service = DeadlineLayer::new(CancellationToken::new()).layer(never);
        let response = service
            .call(call(Some(Duration::from_millis(20))))
            .await
            .unwrap();
        assert_eq!(
            response.headers()[GRPC_STATUS],
            Code::DeadlineExceeded.header_value()
        );
        assert_eq!(
            response.headers()[grpc::GRPC_MESSAGE],
            "deadline exceeded: grpc-timeout ran out before the app answered"
        );
        assert!(dropped.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_drain_that_gives_up_ends_open_calls_unavailable() {
        let abort = CancellationToken::new();
        let never = tower::service_fn(|_: Request<RequestBody>| {
            std::future::pending::<Result<Response<ResponseBody>, Infallible>>()
        });
        let mut service = DeadlineLayer::new(abort.clone()).layer(never);
        let answer = tokio::spawn(service.call(call(None)));
        abort.cancel();
        let response = answer.await.unwrap().unwrap();
        assert_eq!(
            response.headers()[GRPC_STATUS],
            Code::Unavailable.header_value()
        );
    }

    #[tokio::test]
    async fn tells_the_peer_what_is_left() {
        let seen = Arc::new(std::sync::Mutex::new(None));
        let record = seen.clone();
        let peer = tower::service_fn(move |request: Request<RequestBody>| {
            *record.lock().unwrap() = request.headers().get(grpc::GRPC_TIMEOUT).cloned();
            std::future::ready(Ok::<_, Infallible>(Response::new(ResponseBody::empty())))
        });
        let mut service = DeadlineLayer::new(CancellationToken::new())
            .tell_peer()
            .layer(peer);
        service
            .call(call(Some(Duration::from_secs(10))))
            .await
            .unwrap();
        let sent = seen.lock().unwrap().clone().expect("grpc-timeout sent on");
        let left = grpc::parse_timeout(&sent).unwrap();
        assert!(left <= Duration::from_secs(10) && left > Duration::from_secs(9));
    }
}
