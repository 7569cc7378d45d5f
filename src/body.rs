//! The bodies that travel through the chain. [`RequestBody`] is the caller's request
//! body on its way to the app, with caller-sent identity headers removed from its
//! trailers too. [`ResponseBody`] is what every layer hands back to the HTTP/2 server:
//! either nothing (a trailers-only status made by gatehouse) or the app's response,
//! streamed frame by frame.
//!
//! A forwarded body is where two promises are kept after the response headers have gone
//! out: the caller's `grpc-timeout` still ends the call (with `DEADLINE_EXCEEDED` in the
//! trailers, and the app's stream cancelled by dropping it), and an app that dies
//! mid-stream ends the call with an error status in the trailers, never with a silent end
//! of stream that a client could read as OK. The body's error type is therefore
//! [`Infallible`]: no error is ever handed to hyper.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::auth::principal::strip_request_trailers;
use crate::grpc::{self, Code, Reason};

/// The caller's request body, streamed to the app as it arrives, or a body gatehouse
/// made itself (a health check of the app).
#[derive(Debug)]
pub struct RequestBody {
    inner: Source,
    /// Bytes received so far, for the access log.
    received: Option<Arc<AtomicU64>>,
}

#[derive(Debug)]
enum Source {
    Caller(Incoming),
    Local(Option<Bytes>),
}

impl RequestBody {
    pub fn new(inner: Incoming) -> Self {
        RequestBody {
            inner: Source::Caller(inner),
            received: None,
        }
    }

    /// A body of one data frame.
    pub fn local(bytes: Bytes) -> Self {
        RequestBody {
            inner: Source::Local(Some(bytes)),
            received: None,
        }
    }

    /// Adds the size of every data frame to `counter` from now on.
    pub fn count_into(&mut self, counter: Arc<AtomicU64>) {
        self.received = Some(counter);
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let frame = match &mut self.inner {
            Source::Caller(incoming) => ready!(Pin::new(incoming).poll_frame(cx)),
            Source::Local(bytes) => bytes.take().map(|bytes| Ok(Frame::data(bytes))),
        };
        if let (Some(counter), Some(Ok(frame))) = (&self.received, &frame)
            && let Some(data) = frame.data_ref()
        {
            counter.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        Poll::Ready(frame.map(|frame| {
            frame.map(|frame| match frame.into_trailers() {
                // Identity headers are gatehouse's to set, in trailers as in headers, and
                // credentials there would reach the app unverified.
                Ok(mut trailers) => {
                    strip_request_trailers(&mut trailers);
                    Frame::trailers(trailers)
                }
                Err(frame) => frame,
            })
        }))
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Source::Caller(incoming) => incoming.is_end_stream(),
            Source::Local(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Source::Caller(incoming) => incoming.size_hint(),
            Source::Local(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

/// A response body: empty, or the app's body being forwarded.
pub struct ResponseBody {
    kind: Kind,
}

enum Kind {
    Empty,
    Forwarded(Forwarded),
}

/// The app's response body as the connection layer streams it; a failure is already the
/// status the caller should see.
pub type Streamed = http_body_util::combinators::UnsyncBoxBody<Bytes, grpc::Status>;

struct Forwarded {
    /// `None` once the stream has ended, by the app or by gatehouse.
    inner: Option<Streamed>,
    /// Boxed because `Sleep` is not `Unpin`; only calls with a `grpc-timeout` pay for it.
    deadline: Option<Pin<Box<Sleep>>>,
    /// Fires when gatehouse stops waiting for open calls at the end of a drain.
    abort: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl ResponseBody {
    /// A body with no frames, for trailers-only responses.
    pub fn empty() -> Self {
        ResponseBody { kind: Kind::Empty }
    }

    /// The app's response body, ended with `DEADLINE_EXCEEDED` if `deadline` passes first.
    /// The app's response body, ended with `UNAVAILABLE` if `abort` fires first.
    pub fn forwarded(inner: Streamed, deadline: Option<Instant>, abort: CancellationToken) -> Self {
        ResponseBody {
            kind: Kind::Forwarded(Forwarded {
                inner: Some(inner),
                deadline: deadline.map(|at| Box::pin(tokio::time::sleep_until(at))),
                abort: Box::pin(abort.cancelled_owned()),
            }),
        }
    }
}

fn status_trailers(status: &grpc::Status) -> Frame<Bytes> {
    Frame::trailers(status.trailers())
}

impl Forwarded {
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        if self.abort.as_mut().poll(cx).is_ready() {
            self.inner = None;
            return Poll::Ready(Some(Ok(status_trailers(&grpc::Status::new(
                Reason::ShuttingDown,
                "gatehouse is shutting down: the drain timeout ended this call",
            )))));
        }
        if let Some(deadline) = self.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            // Dropping the app's body resets its stream: the app sees the cancellation.
            self.inner = None;
            return Poll::Ready(Some(Ok(status_trailers(&grpc::Status::new(
                Reason::Deadline,
                "deadline exceeded: grpc-timeout ran out while the app was answering",
            )))));
        }
        match ready!(Pin::new(inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if frame.is_trailers() {
                    self.inner = None;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(status)) => {
                self.inner = None;
                Poll::Ready(Some(Ok(status_trailers(&status))))
            }
            None => {
                self.inner = None;
                Poll::Ready(None)
            }
        }
    }
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Empty => f.write_str("ResponseBody::Empty"),
            Kind::Forwarded(_) => f.write_str("ResponseBody::Forwarded"),
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match &mut self.get_mut().kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Forwarded(forwarded) => forwarded.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Forwarded(forwarded) => forwarded.inner.as_ref().is_none_or(Body::is_end_stream),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Forwarded(Forwarded {
                inner: Some(inner), ..
            }) => inner.size_hint(),
            Kind::Forwarded(_) => SizeHint::with_exact(0),
        }
    }
}

/// How a call ended, as its response's last frame said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub code: Code,
    /// Response body bytes sent to the caller.
    pub bytes_out: u64,
}

/// What a layer does when a call it watches ends.
pub trait Completion: Send + 'static {
    fn complete(self, outcome: Outcome);
}

/// A completion that fires exactly once: with the outcome, or, if dropped first (the
/// caller went away), as `CANCELLED`.
pub struct Pending<C: Completion> {
    completion: Option<C>,
}

impl<C: Completion> Pending<C> {
    pub fn new(completion: C) -> Self {
        Pending {
            completion: Some(completion),
        }
    }

    pub fn get_mut(&mut self) -> Option<&mut C> {
        self.completion.as_mut()
    }

    pub fn finish(&mut self, outcome: Outcome) {
        if let Some(completion) = self.completion.take() {
            completion.complete(outcome);
        }
    }
}

impl<C: Completion> Drop for Pending<C> {
    fn drop(&mut self) {
        self.finish(Outcome {
            code: Code::Cancelled,
            bytes_out: 0,
        });
    }
}

pin_project_lite::pin_project! {
    /// A response body watched to its end: the status is read where gRPC puts it (the
    /// trailers, or the headers of a trailers-only response) and handed to a
    /// [`Completion`] together with the bytes sent.
    pub struct Watched<B, C: Completion> {
        #[pin]
        inner: B,
        pending: Pending<C>,
        code: Option<Code>,
        bytes_out: u64,
    }
}

impl<B: Body, C: Completion> Watched<B, C> {
    /// `header_code` is the `grpc-status` of the response headers, if any.
    pub fn new(inner: B, mut pending: Pending<C>, header_code: Option<Code>) -> Self {
        if inner.is_end_stream() {
            // Trailers-only: the server will not poll an empty body.
            pending.finish(Outcome {
                code: header_code.unwrap_or(Code::Unknown),
                bytes_out: 0,
            });
        }
        Watched {
            inner,
            pending,
            code: header_code,
            bytes_out: 0,
        }
    }
}

impl<B, C> Body for Watched<B, C>
where
    B: Body<Data = Bytes>,
    C: Completion,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    *this.bytes_out += data.len() as u64;
                } else if let Some(trailers) = frame.trailers_ref() {
                    let code = trailers
                        .get(grpc::GRPC_STATUS)
                        .map_or(Code::Unknown, Code::from_header);
                    this.pending.finish(Outcome {
                        code,
                        bytes_out: *this.bytes_out,
                    });
                }
            }
            Some(Err(_)) => this.pending.finish(Outcome {
                code: Code::Unavailable,
                bytes_out: *this.bytes_out,
            }),
            None => this.pending.finish(Outcome {
                code: this.code.unwrap_or(Code::Unknown),
                bytes_out: *this.bytes_out,
            }),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
