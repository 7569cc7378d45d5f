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
//!
//! A third promise is kept for calls admitted with a token or an API key: the call cannot
//! outlive its credentials. A [`CredentialsWatch`] (one timer for the token's expiry, one
//! shared signal for the key's revocation) ends the call with `UNAUTHENTICATED` after the
//! last whole gRPC message the app sent, and the app's stream is reset.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime};

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
    /// Only calls admitted with a token or an API key pay for it.
    credentials: Option<Box<Credentials>>,
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
                credentials: None,
                deadline: deadline.map(|at| Box::pin(tokio::time::sleep_until(at))),
                abort: Box::pin(abort.cancelled_owned()),
            }),
        }
    }

    /// Ends the call when `watch` fires, after the last whole message the app sent. A
    /// trailers-only response has nothing left to end.
    pub fn end_when(&mut self, mut watch: CredentialsWatch) {
        let Kind::Forwarded(forwarded) = &mut self.kind else {
            return;
        };
        // A grpc-timeout that ends the call first makes the expiry timer pointless.
        if let Some(deadline) = &forwarded.deadline {
            watch.forget_expiry_after(deadline.deadline());
        }
        if watch.is_idle() {
            return;
        }
        forwarded.credentials = Some(Box::new(Credentials {
            watch,
            framing: Framing::default(),
            closing: None,
        }));
    }
}

/// Why gatehouse ended a call whose credentials stopped being valid while it was open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialsEnd {
    /// The token's `exp`, plus its provider's leeway, passed.
    TokenExpired,
    /// The API key left `keys_file` or the configuration.
    KeyRevoked,
    /// The API key's `not_after` passed.
    KeyExpired,
}

impl CredentialsEnd {
    /// The access log's `ended_by` value and the `reason` label of
    /// `gatehouse_auth_total{result="ended_in_call"}`.
    pub fn label(self) -> &'static str {
        self.reason().label()
    }

    /// The reason in the status details: TOKEN_EXPIRED, KEY_REVOKED or API_KEY_EXPIRED.
    pub fn reason(self) -> Reason {
        match self {
            CredentialsEnd::TokenExpired => Reason::TokenExpired,
            CredentialsEnd::KeyRevoked => Reason::KeyRevoked,
            CredentialsEnd::KeyExpired => Reason::ApiKeyExpired,
        }
    }

    /// The `grpc-message` the caller reads.
    pub fn message(self) -> &'static str {
        match self {
            CredentialsEnd::TokenExpired => "token expired while the call was open",
            CredentialsEnd::KeyRevoked => "API key revoked while the call was open",
            CredentialsEnd::KeyExpired => "API key expired while the call was open",
        }
    }

    /// The status that ends the call, in the trailers or a trailers-only response.
    pub fn status(self) -> grpc::Status {
        grpc::Status::new(self.reason(), self.message())
    }
}

/// Set once a call was ended because its credentials ended; the layers that log and
/// count read it when the call completes.
#[derive(Clone, Debug, Default)]
pub struct CredentialsEnded(Arc<OnceLock<CredentialsEnd>>);

impl CredentialsEnded {
    pub fn get(&self) -> Option<CredentialsEnd> {
        self.0.get().copied()
    }

    fn set(&self, end: CredentialsEnd) {
        let _ = self.0.set(end);
    }
}

/// What ends an admitted call's credentials: a time (a token's `exp` plus leeway, a key's
/// `not_after`) with one timer for the call, and a revocation signal that every call of
/// one API key shares. Nothing is checked per message.
pub struct CredentialsWatch {
    expiry: Option<(Pin<Box<Sleep>>, CredentialsEnd)>,
    revoked: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
    ended: CredentialsEnded,
}

impl CredentialsWatch {
    /// `expires`: when, as wall-clock time, and what to say then; `revoked`: the key's
    /// signal. A time already past ends the call at once.
    pub fn new(
        expires: Option<(SystemTime, CredentialsEnd)>,
        revoked: Option<CancellationToken>,
    ) -> CredentialsWatch {
        let expiry = expires.map(|(at, end)| {
            let left = at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            (Box::pin(tokio::time::sleep(left)), end)
        });
        CredentialsWatch {
            expiry,
            revoked: revoked.map(|token| Box::pin(token.cancelled_owned())),
            ended: CredentialsEnded::default(),
        }
    }

    /// The record the layers above read when the call completes.
    pub fn ended(&self) -> CredentialsEnded {
        self.ended.clone()
    }

    /// Nothing to watch: no expiry and no revocation signal.
    pub fn is_idle(&self) -> bool {
        self.expiry.is_none() && self.revoked.is_none()
    }

    fn forget_expiry_after(&mut self, deadline: Instant) {
        if self
            .expiry
            .as_ref()
            .is_some_and(|(sleep, _)| sleep.deadline() >= deadline)
        {
            self.expiry = None;
        }
    }

    /// Ready once the credentials have ended; records why.
    pub fn poll_end(&mut self, cx: &mut Context<'_>) -> Poll<CredentialsEnd> {
        let mut end = None;
        if let Some(revoked) = self.revoked.as_mut()
            && revoked.as_mut().poll(cx).is_ready()
        {
            end = Some(CredentialsEnd::KeyRevoked);
        }
        if end.is_none()
            && let Some((sleep, reason)) = self.expiry.as_mut()
            && sleep.as_mut().poll(cx).is_ready()
        {
            end = Some(*reason);
        }
        match end {
            Some(end) => {
                self.ended.set(end);
                Poll::Ready(end)
            }
            None => Poll::Pending,
        }
    }
}

/// A forwarded call's credentials watch, and where the app's response stands in gRPC's
/// message framing so that the call ends between messages.
struct Credentials {
    watch: CredentialsWatch,
    framing: Framing,
    /// The credentials ended in the middle of a message: it is finished first.
    closing: Option<CredentialsEnd>,
}

/// Position in the length-prefixed message stream (1 byte flag, 4 bytes length, the
/// message): a few integer steps per DATA frame, no copy.
#[derive(Debug, Default)]
struct Framing {
    /// The prefix bytes of the next message seen so far (when fewer than 5).
    prefix: [u8; 5],
    prefix_len: u8,
    /// Bytes of the current message still to come.
    remaining: u64,
}

impl Framing {
    fn at_boundary(&self) -> bool {
        self.prefix_len == 0 && self.remaining == 0
    }

    /// Moves past `data`. With `stop`, stops where a message ends and says how many
    /// bytes of `data` it used; otherwise uses them all.
    fn advance(&mut self, data: &[u8], stop: bool) -> usize {
        let mut at = 0;
        while at < data.len() {
            if self.remaining > 0 {
                let take =
                    (data.len() - at).min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                at += take;
                self.remaining -= take as u64;
            } else {
                let have = usize::from(self.prefix_len);
                let take = (data.len() - at).min(5 - have);
                self.prefix[have..have + take].copy_from_slice(&data[at..at + take]);
                at += take;
                self.prefix_len += take as u8;
                if self.prefix_len == 5 {
                    let [_, a, b, c, d] = self.prefix;
                    self.remaining = u64::from(u32::from_be_bytes([a, b, c, d]));
                    self.prefix_len = 0;
                }
            }
            if stop && self.at_boundary() {
                break;
            }
        }
        at
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
            // The message the app was sending when the credentials ended is complete:
            // the status follows it.
            let closing = self.credentials.take().and_then(|c| c.closing);
            return Poll::Ready(closing.map(|end| Ok(status_trailers(&end.status()))));
        };
        if self.abort.as_mut().poll(cx).is_ready() {
            self.inner = None;
            self.credentials = None;
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
            self.credentials = None;
            return Poll::Ready(Some(Ok(status_trailers(&grpc::Status::new(
                Reason::Deadline,
                "deadline exceeded: grpc-timeout ran out while the app was answering",
            )))));
        }
        if let Some(credentials) = self.credentials.as_mut()
            && credentials.closing.is_none()
            && let Poll::Ready(end) = credentials.watch.poll_end(cx)
        {
            if credentials.framing.at_boundary() {
                // Dropping the app's body resets its stream (CANCEL).
                self.inner = None;
                self.credentials = None;
                return Poll::Ready(Some(Ok(status_trailers(&end.status()))));
            }
            credentials.closing = Some(end);
        }
        let frame = ready!(Pin::new(inner).poll_frame(cx));
        if let Some(credentials) = self.credentials.as_mut() {
            return Poll::Ready(credentials.forward(frame, &mut self.inner));
        }
        match frame {
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

impl Credentials {
    /// Passes on a frame of the app's watched response, keeping count of message
    /// boundaries; once the credentials have ended, the current message is the last.
    fn forward(
        &mut self,
        frame: Option<Result<Frame<Bytes>, grpc::Status>>,
        inner: &mut Option<Streamed>,
    ) -> Option<Result<Frame<Bytes>, Infallible>> {
        let closing = self.closing;
        let frame = match frame {
            Some(Ok(frame)) => frame,
            Some(Err(status)) => {
                *inner = None;
                self.closing = None;
                return Some(Ok(status_trailers(&status)));
            }
            None => {
                *inner = None;
                return closing.map(|end| {
                    self.closing = None;
                    Ok(status_trailers(&end.status()))
                });
            }
        };
        match frame.into_data() {
            Ok(mut data) => {
                let used = self.framing.advance(&data, closing.is_some());
                if closing.is_some() && self.framing.at_boundary() {
                    // The rest of the frame starts the next message, which the caller
                    // may no longer receive; the status goes out on the next poll.
                    data.truncate(used);
                    *inner = None;
                }
                Some(Ok(Frame::data(data)))
            }
            Err(frame) if frame.is_trailers() => {
                *inner = None;
                match closing {
                    // The app finished (or broke off) the message and the call at once.
                    Some(end) => {
                        self.closing = None;
                        Some(Ok(status_trailers(&end.status())))
                    }
                    None => Some(Ok(frame)),
                }
            }
            Err(frame) => Some(Ok(frame)),
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
            Kind::Forwarded(forwarded) => {
                // A status still owed after the last message keeps the stream open.
                let owed = forwarded
                    .credentials
                    .as_ref()
                    .is_some_and(|c| c.closing.is_some());
                !owed && forwarded.inner.as_ref().is_none_or(Body::is_end_stream)
            }
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use http_body_util::BodyExt;
    use tokio::sync::mpsc;

    use super::*;

    /// The app's response body: frames as the test sends them; notes when it is dropped
    /// (what resets the app's stream).
    struct App {
        frames: mpsc::UnboundedReceiver<Frame<Bytes>>,
        dropped: Arc<AtomicBool>,
    }

    impl Body for App {
        type Data = Bytes;
        type Error = grpc::Status;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, grpc::Status>>> {
            self.frames.poll_recv(cx).map(|frame| frame.map(Ok))
        }
    }

    impl Drop for App {
        fn drop(&mut self) {
            self.dropped.store(true, Ordering::SeqCst);
        }
    }

    fn message(len: usize, fill: u8) -> Vec<u8> {
        let mut message = vec![0];
        message.extend_from_slice(&u32::try_from(len).unwrap().to_be_bytes());
        message.extend(std::iter::repeat_n(fill, len));
        message
    }

    /// The app's body forwarded: the body, what sends the app's frames, and whether the
    /// app's body was dropped.
    fn forwarded() -> (
        ResponseBody,
        mpsc::UnboundedSender<Frame<Bytes>>,
        Arc<AtomicBool>,
    ) {
        let (send, frames) = mpsc::unbounded_channel();
        let dropped = Arc::new(AtomicBool::new(false));
        let app = App {
            frames,
            dropped: dropped.clone(),
        };
        let body = ResponseBody::forwarded(
            http_body_util::combinators::UnsyncBoxBody::new(app),
            None,
            CancellationToken::new(),
        );
        (body, send, dropped)
    }

    /// A forwarded body watched by a key's revocation signal.
    fn watched() -> (
        ResponseBody,
        mpsc::UnboundedSender<Frame<Bytes>>,
        Arc<AtomicBool>,
        CancellationToken,
        CredentialsEnded,
    ) {
        let (mut body, send, dropped) = forwarded();
        let revoked = CancellationToken::new();
        let watch = CredentialsWatch::new(None, Some(revoked.clone()));
        let ended = watch.ended();
        body.end_when(watch);
        (body, send, dropped, revoked, ended)
    }

    fn status(frame: &Frame<Bytes>) -> (&str, &str) {
        let trailers = frame.trailers_ref().expect("trailers");
        (
            trailers[grpc::GRPC_STATUS].to_str().unwrap(),
            trailers[grpc::GRPC_MESSAGE].to_str().unwrap(),
        )
    }

    #[test]
    fn framing_finds_message_ends_across_and_within_frames() {
        let stream: Vec<u8> = [message(3, 1), message(0, 0), message(70, 2)].concat();
        // Every way of cutting the stream into two frames finds the same boundaries.
        for cut in 0..=stream.len() {
            let mut framing = Framing::default();
            let mut ends = Vec::new();
            let mut offset = 0;
            for frame in [&stream[..cut], &stream[cut..]] {
                let mut at = 0;
                while at < frame.len() {
                    at += framing.advance(&frame[at..], true);
                    if framing.at_boundary() {
                        ends.push(offset + at);
                    }
                }
                offset += frame.len();
            }
            assert_eq!(ends, [8, 13, stream.len()], "cut at {cut}");
        }
        let mut framing = Framing::default();
        assert_eq!(framing.advance(&stream, false), stream.len());
        assert!(framing.at_boundary());
    }

    #[tokio::test]
    async fn revoked_between_messages_ends_at_once_and_resets_the_app() {
        let (mut body, app, dropped, revoked, ended) = watched();
        app.send(Frame::data(Bytes::from(message(4, 1)))).unwrap();
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.data_ref().unwrap().len(), 9);
        revoked.cancel();
        let last = body.frame().await.unwrap().unwrap();
        assert_eq!(
            status(&last),
            ("16", "API key revoked while the call was open")
        );
        assert!(body.frame().await.is_none());
        assert!(
            dropped.load(Ordering::SeqCst),
            "the app's stream was not reset"
        );
        assert_eq!(ended.get(), Some(CredentialsEnd::KeyRevoked));
    }

    #[tokio::test]
    async fn revoked_mid_message_finishes_that_message_and_no_more() {
        let (mut body, app, dropped, revoked, ended) = watched();
        let one = message(4, 1);
        let two = message(10, 2);
        let three = message(2, 3);
        // The first frame ends inside message two.
        let first: Vec<u8> = [&one[..], &two[..7]].concat();
        app.send(Frame::data(Bytes::from(first.clone()))).unwrap();
        assert_eq!(
            body.frame().await.unwrap().unwrap().into_data().unwrap(),
            first
        );
        revoked.cancel();
        // The next frame finishes message two and starts message three.
        let second: Vec<u8> = [&two[7..], &three[..]].concat();
        app.send(Frame::data(Bytes::from(second))).unwrap();
        assert_eq!(
            body.frame().await.unwrap().unwrap().into_data().unwrap(),
            &two[7..],
            "message two finished, message three not begun"
        );
        assert!(!body.is_end_stream(), "the status is still owed");
        let last = body.frame().await.unwrap().unwrap();
        assert_eq!(status(&last).0, "16");
        assert!(body.frame().await.is_none());
        assert!(dropped.load(Ordering::SeqCst));
        assert_eq!(ended.get(), Some(CredentialsEnd::KeyRevoked));
    }

    #[tokio::test]
    async fn an_unrevoked_call_passes_the_apps_own_trailers() {
        let (mut body, app, _dropped, _revoked, ended) = watched();
        app.send(Frame::data(Bytes::from(message(2, 1)))).unwrap();
        let mut trailers = http::HeaderMap::new();
        trailers.insert(grpc::GRPC_STATUS, Code::NotFound.header_value());
        trailers.insert(grpc::GRPC_MESSAGE, grpc::encode_message("no such thing"));
        app.send(Frame::trailers(trailers)).unwrap();
        body.frame().await.unwrap().unwrap();
        let last = body.frame().await.unwrap().unwrap();
        assert_eq!(status(&last), ("5", "no such thing"));
        assert!(body.frame().await.is_none());
        assert_eq!(ended.get(), None);
    }

    #[tokio::test]
    async fn a_token_that_expired_since_admission_ends_the_call_unauthenticated() {
        let (mut body, _app, dropped) = forwarded();
        let expired = SystemTime::now() - Duration::from_secs(1);
        body.end_when(CredentialsWatch::new(
            Some((expired, CredentialsEnd::TokenExpired)),
            None,
        ));
        // The app sends nothing: the timer alone ends the call.
        let last = body.frame().await.unwrap().unwrap();
        assert_eq!(
            status(&last),
            ("16", "token expired while the call was open")
        );
        assert!(dropped.load(Ordering::SeqCst));
    }
}
