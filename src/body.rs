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
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::auth::principal::strip_identity_headers;
use crate::grpc::{self, Code};
use crate::upstream;

/// The caller's request body, streamed to the app as it arrives.
#[derive(Debug)]
pub struct RequestBody {
    inner: Incoming,
}

impl RequestBody {
    pub fn new(inner: Incoming) -> Self {
        RequestBody { inner }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        Poll::Ready(frame.map(|frame| {
            frame.map(|frame| match frame.into_trailers() {
                // Identity headers are gatehouse's to set, in trailers as in headers.
                Ok(mut trailers) => {
                    strip_identity_headers(&mut trailers);
                    Frame::trailers(trailers)
                }
                Err(frame) => frame,
            })
        }))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body: empty, or the app's body being forwarded.
#[derive(Debug)]
pub struct ResponseBody {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Empty,
    Forwarded(Forwarded),
}

#[derive(Debug)]
struct Forwarded {
    /// `None` once the stream has ended, by the app or by gatehouse.
    inner: Option<Incoming>,
    /// Boxed because `Sleep` is not `Unpin`; only calls with a `grpc-timeout` pay for it.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl ResponseBody {
    /// A body with no frames, for trailers-only responses.
    pub fn empty() -> Self {
        ResponseBody { kind: Kind::Empty }
    }

    /// The app's response body, ended with `DEADLINE_EXCEEDED` if `deadline` passes first.
    pub fn forwarded(inner: Incoming, deadline: Option<Instant>) -> Self {
        ResponseBody {
            kind: Kind::Forwarded(Forwarded {
                inner: Some(inner),
                deadline: deadline.map(|at| Box::pin(tokio::time::sleep_until(at))),
            }),
        }
    }
}

fn status_trailers(code: Code, message: &str) -> Frame<Bytes> {
    let mut trailers = HeaderMap::with_capacity(2);
    grpc::set_status(&mut trailers, code, message);
    Frame::trailers(trailers)
}

impl Forwarded {
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        if let Some(deadline) = self.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            // Dropping the app's body resets its stream: the app sees the cancellation.
            self.inner = None;
            return Poll::Ready(Some(Ok(status_trailers(
                Code::DeadlineExceeded,
                "deadline exceeded: grpc-timeout ran out while the app was answering",
            ))));
        }
        match ready!(Pin::new(inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                if frame.is_trailers() {
                    self.inner = None;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(error)) => {
                self.inner = None;
                let (code, message) =
                    upstream::status_for_error(&error, "while streaming the response");
                Poll::Ready(Some(Ok(status_trailers(code, &message))))
            }
            None => {
                self.inner = None;
                Poll::Ready(None)
            }
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
