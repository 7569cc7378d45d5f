//! Watching a response to its end: the status is read where gRPC puts it (the trailers,
//! or the headers of a trailers-only response) and handed, with the bytes sent, to
//! whatever a layer does when a call ends (an access log line, a metric, a span). The
//! inbound layers and the outbound chain watch their responses through the same body.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::grpc::{self, Code};

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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use http_body_util::{BodyExt, Empty, StreamBody};

    use super::*;

    /// Notes every outcome it is handed.
    struct Noted(Arc<Mutex<Vec<Outcome>>>);

    impl Completion for Noted {
        fn complete(self, outcome: Outcome) {
            self.0.lock().unwrap().push(outcome);
        }
    }

    fn noted() -> (Pending<Noted>, Arc<Mutex<Vec<Outcome>>>) {
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        (Pending::new(Noted(outcomes.clone())), outcomes)
    }

    #[test]
    fn a_trailers_only_answer_completes_at_once_with_its_header_status() {
        let (pending, outcomes) = noted();
        let _body = Watched::new(Empty::<Bytes>::new(), pending, Some(Code::PermissionDenied));
        assert_eq!(
            *outcomes.lock().unwrap(),
            [Outcome {
                code: Code::PermissionDenied,
                bytes_out: 0
            }]
        );
    }

    #[tokio::test]
    async fn a_streamed_answer_completes_with_its_trailer_status_and_bytes_sent() {
        let (pending, outcomes) = noted();
        let mut trailers = http::HeaderMap::new();
        trailers.insert(grpc::GRPC_STATUS, Code::NotFound.header_value());
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(b"hello"))),
            Ok(Frame::data(Bytes::from_static(b"!"))),
            Ok(Frame::trailers(trailers)),
        ];
        let body = StreamBody::new(futures_util::stream::iter(frames));
        let collected = Watched::new(body, pending, None).collect().await.unwrap();
        assert_eq!(collected.to_bytes(), "hello!");
        assert_eq!(
            *outcomes.lock().unwrap(),
            [Outcome {
                code: Code::NotFound,
                bytes_out: 6
            }]
        );
    }

    #[test]
    fn a_call_dropped_before_its_end_completes_as_cancelled_once() {
        let (pending, outcomes) = noted();
        let frames =
            futures_util::stream::pending::<Result<Frame<Bytes>, std::convert::Infallible>>();
        drop(Watched::new(StreamBody::new(frames), pending, None));
        assert_eq!(
            *outcomes.lock().unwrap(),
            [Outcome {
                code: Code::Cancelled,
                bytes_out: 0
            }]
        );
    }
}
