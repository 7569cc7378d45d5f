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
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Sleep;
use tokio_util::sync::WaitForCancellationFutureOwned;

mod credentials;

use credentials::WatchedAnswer;
pub use credentials::{CredentialsEnd, CredentialsEnded, CredentialsWatch, END_GRACE, Framing};

use crate::grpc::{self, Deadline};
use crate::identity::strip_request_trailers;

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
    /// The caller's body seen through a layer that holds or checks its messages.
    Filtered(Filtered),
}

/// A request body a layer builds around the caller's (the Schema layer's field checks):
/// it may end the request early with [`RequestError::Stopped`].
pub struct Filtered(Pin<Box<dyn Body<Data = Bytes, Error = RequestError> + Send>>);

impl std::fmt::Debug for Filtered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Filtered")
    }
}

/// Why a request body ended before its end of stream.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The caller's stream failed: it reset it, or its connection died.
    #[error(transparent)]
    Caller(#[from] hyper::Error),
    /// A layer stopped the request; the caller's status is that layer's to give. What
    /// was forwarded before still reaches the app, then its stream is reset.
    #[error("the request was stopped by gatehouse")]
    Stopped,
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

    /// This body seen through `wrap`, which holds or checks its frames: what the chain
    /// forwards from now on. The byte count set by [`RequestBody::count_into`] goes on.
    pub fn filtered<B>(self, wrap: impl FnOnce(RequestBody) -> B) -> RequestBody
    where
        B: Body<Data = Bytes, Error = RequestError> + Send + 'static,
    {
        RequestBody {
            inner: Source::Filtered(Filtered(Box::pin(wrap(self)))),
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
    type Error = RequestError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let frame = match &mut self.inner {
            Source::Caller(incoming) => {
                ready!(Pin::new(incoming).poll_frame(cx)).map(|f| f.map_err(RequestError::from))
            }
            Source::Local(bytes) => bytes.take().map(|bytes| Ok(Frame::data(bytes))),
            // Already counted and stripped by the body inside it.
            Source::Filtered(filtered) => return filtered.0.as_mut().poll_frame(cx),
        };
        if let (Some(counter), Some(Ok(frame))) = (&self.received, &frame)
            && let Some(data) = frame.data_ref()
        {
            counter.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        Poll::Ready(frame.map(|frame| {
            frame.map(|frame| match frame.into_trailers() {
                // Identity headers and call-context handles are gatehouse's to set, in
                // trailers as in headers, and credentials there would reach the app
                // unverified.
                Ok(mut trailers) => {
                    strip_request_trailers(&mut trailers);
                    crate::call_context::strip_handles(&mut trailers);
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
            Source::Filtered(filtered) => filtered.0.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Source::Caller(incoming) => incoming.size_hint(),
            Source::Local(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Source::Filtered(filtered) => filtered.0.size_hint(),
        }
    }
}

/// The peer's stream under a forwarded body (the app's, or a destination's), as
/// something that can be ended from outside the body: the pool's stream control.
pub trait PeerStream: Send + Sync {
    /// Stops forwarding the caller's request; the answer can still be read.
    fn stop_sending(&self);
    /// Resets the stream.
    fn end(&self);
}

/// A response body: empty, or the app's body being forwarded.
pub struct ResponseBody {
    kind: Kind,
    /// Call-scoped resources, dropped with the body (see [`ResponseBody::hold`]).
    held: Vec<Box<dyn Send + Sync>>,
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
    /// The peer's stream, to end it from outside hyper's polls.
    stream: Option<Arc<dyn PeerStream>>,
    /// Only calls admitted with a token or an API key pay for it.
    credentials: Option<Box<WatchedAnswer>>,
    /// Set by the Deadline layer: the call's deadline and the drain's end.
    ends: Option<Box<Ends>>,
}

/// What ends a forwarded call on gatehouse's own account while the app is answering:
/// its deadline (boxed because `Sleep` is not `Unpin`) and the end of a drain that ran
/// out of time.
pub struct Ends {
    pub deadline: Option<(Pin<Box<Sleep>>, Deadline)>,
    /// Who is answering, as the deadline's status names it; `None`: the app.
    pub who: Option<Arc<str>>,
    pub abort: Pin<Box<WaitForCancellationFutureOwned>>,
    /// Outbound under a call context: the end of the inbound call it serves.
    pub inbound: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl ResponseBody {
    /// A body with no frames, for trailers-only responses.
    pub fn empty() -> Self {
        ResponseBody {
            kind: Kind::Empty,
            held: Vec::new(),
        }
    }

    /// The app's response body, streamed as it arrives; `stream` ends the peer's stream
    /// from outside (when a call's credentials end while its caller reads nothing).
    pub fn forwarded(inner: Streamed, stream: Option<Arc<dyn PeerStream>>) -> Self {
        ResponseBody {
            kind: Kind::Forwarded(Forwarded {
                inner: Some(inner),
                stream,
                credentials: None,
                ends: None,
            }),
            held: Vec::new(),
        }
    }

    /// The peer's stream under a forwarded body, for a layer that wraps the body in one
    /// of its own: the wrapper ends the same stream.
    pub fn peer_stream(&self) -> Option<Arc<dyn PeerStream>> {
        match &self.kind {
            Kind::Forwarded(forwarded) => forwarded.stream.clone(),
            Kind::Empty => None,
        }
    }

    /// Ends the call with `DEADLINE_EXCEEDED` or `UNAVAILABLE` if `ends` fires before the
    /// app's answer has ended. A trailers-only response has nothing left to end.
    pub fn end_by(&mut self, ends: Box<Ends>) {
        if let Kind::Forwarded(forwarded) = &mut self.kind {
            forwarded.ends = Some(ends);
        }
    }

    /// Keeps `guard` until the call ends: a call-scoped resource (a limit slot, a
    /// context handle) is given back exactly when the response body is finished or
    /// reset.
    pub fn hold(&mut self, guard: impl Send + Sync + 'static) {
        self.held.push(Box::new(guard));
    }

    /// Ends the call when `watch` fires, after the last whole message the app sent. A
    /// trailers-only response has nothing left to end.
    pub fn end_when(&mut self, mut watch: CredentialsWatch) {
        let Kind::Forwarded(forwarded) = &mut self.kind else {
            return;
        };
        // A grpc-timeout that ends the call first makes the expiry timer pointless.
        if let Some((sleep, _)) = forwarded
            .ends
            .as_ref()
            .and_then(|ends| ends.deadline.as_ref())
        {
            watch.forget_expiry_after(sleep.deadline());
        }
        if watch.is_idle() {
            return;
        }
        forwarded.credentials = Some(Box::new(WatchedAnswer::new(
            watch,
            forwarded.stream.clone(),
        )));
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
        if let Some(status) = self.ends.as_mut().and_then(|ends| ends.poll_end(cx)) {
            // Dropping the app's body resets its stream: the app sees the cancellation.
            self.inner = None;
            self.credentials = None;
            return Poll::Ready(Some(Ok(status_trailers(&status))));
        }
        if let Some(credentials) = self.credentials.as_mut()
            && credentials.closing.is_none()
            && let Poll::Ready(end) = credentials.poll_end(cx)
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

impl Ends {
    /// The status that ends the call, once the drain or the deadline has fired.
    fn poll_end(&mut self, cx: &mut Context<'_>) -> Option<grpc::Status> {
        if self.abort.as_mut().poll(cx).is_ready() {
            return Some(grpc::Status::shutting_down());
        }
        if let Some(inbound) = self.inbound.as_mut()
            && inbound.as_mut().poll(cx).is_ready()
        {
            return Some(grpc::Status::inbound_call_ended());
        }
        let (sleep, deadline) = self.deadline.as_mut()?;
        sleep
            .as_mut()
            .poll(cx)
            .is_ready()
            .then(|| deadline.exceeded(self.who.as_deref().unwrap_or("the app"), true))
    }
}

/// The empty body, which is what a trailers-only response carries.
impl Default for ResponseBody {
    fn default() -> Self {
        ResponseBody::empty()
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::time::{Duration, SystemTime};

    use http_body_util::BodyExt;
    use tokio::sync::mpsc;

    use tokio_util::sync::CancellationToken;

    use super::credentials::Framing;
    use super::*;
    use crate::grpc::Code;

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
        let body =
            ResponseBody::forwarded(http_body_util::combinators::UnsyncBoxBody::new(app), None);
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

    /// The peer's stream as the test sees it ended.
    #[derive(Default)]
    struct Peer {
        stopped: AtomicBool,
        ended: AtomicBool,
    }

    impl PeerStream for Peer {
        fn stop_sending(&self) {
            self.stopped.store(true, Ordering::SeqCst);
        }

        fn end(&self) {
            self.ended.store(true, Ordering::SeqCst);
        }
    }

    /// A caller that reads nothing never lets hyper poll the body: the revocation still
    /// stops its request at once and resets the app's stream after the grace.
    #[tokio::test(start_paused = true)]
    async fn credentials_that_end_while_nothing_reads_the_body_still_end_the_peers_stream() {
        let (send, frames) = mpsc::unbounded_channel::<Frame<Bytes>>();
        let app = App {
            frames,
            dropped: Arc::new(AtomicBool::new(false)),
        };
        let peer = Arc::new(Peer::default());
        let mut body = ResponseBody::forwarded(
            http_body_util::combinators::UnsyncBoxBody::new(app),
            Some(peer.clone()),
        );
        let revoked = CancellationToken::new();
        let watch = CredentialsWatch::new(None, Some(revoked.clone()));
        let ended = watch.ended();
        body.end_when(watch);
        // The body is never polled from here on.
        revoked.cancel();
        assert!(
            peer.stopped.load(Ordering::SeqCst),
            "the request still flows"
        );
        assert!(!peer.ended.load(Ordering::SeqCst), "reset before the grace");
        tokio::time::sleep(credentials::END_GRACE + Duration::from_millis(10)).await;
        assert!(
            peer.ended.load(Ordering::SeqCst),
            "the app's stream was not reset"
        );
        // When the caller reads again it gets the status.
        let last = body.frame().await.unwrap().unwrap();
        assert_eq!(status(&last).0, "16");
        assert_eq!(ended.get(), Some(CredentialsEnd::KeyRevoked));
        drop(send);
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
