//! One call's stream: the request body pumped into it a chunk of send capacity at a
//! time, and the response body handed back with receive capacity released as the caller
//! takes it. An unfinished pump resets the stream when dropped.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use h2::client::ResponseFuture;
use h2::{Reason, RecvStream, SendStream};
use http::{HeaderMap, Response};
use http_body::{Body, Frame, SizeHint};
use tokio_util::sync::CancellationToken;

use super::stall::{Stall, StallFlag, Starvation};
use super::{BodyFailure, Lease, REPLAY_LIMIT, SEND_CHUNK, StreamError};

/// Waits for the response headers while pumping the request body.
pub(super) async fn exchange<B>(
    mut response: ResponseFuture,
    pump: &mut Pump<B>,
) -> Result<Response<RecvStream>, h2::Error>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: BodyFailure,
{
    std::future::poll_fn(|cx| {
        loop {
            if let Poll::Ready(result) = Pin::new(&mut response).poll(cx) {
                return Poll::Ready(result);
            }
            if pump.is_done() {
                return Poll::Pending;
            }
            match pump.poll_pump(cx) {
                Poll::Ready(Err(error)) => {
                    // A stream the target has just reset fails the pump's next send
                    // locally ("inactive stream"); the response then holds the target's
                    // own answer or reason, and only that says whether the call may be
                    // sent again.
                    if let Poll::Ready(result) = Pin::new(&mut response).poll(cx) {
                        return Poll::Ready(result);
                    }
                    return Poll::Ready(Err(error));
                }
                // The request ended, or the stream closed while the pump ran: the
                // connection task (another thread) may have read the target's answer
                // since the response was polled above, so look again.
                Poll::Ready(Ok(())) => {}
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await
}

/// The request body: the caller's, behind what was already sent on a refused attempt.
pub(super) struct Source<B> {
    replay: VecDeque<Bytes>,
    /// Trailers already received from the body, for a retry.
    trailers: Option<HeaderMap>,
    /// The body has ended (its end, or its trailers, were read).
    ended: bool,
    body: B,
}

impl<B: Body<Data = Bytes> + Unpin> Source<B>
where
    B::Error: BodyFailure,
{
    pub(super) fn new(body: B) -> Self {
        Source {
            replay: VecDeque::new(),
            trailers: None,
            ended: false,
            body,
        }
    }

    pub(super) fn is_end_stream(&self) -> bool {
        self.replay.is_empty() && self.trailers.is_none() && self.body.is_end_stream()
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Reason>>> {
        if let Some(data) = self.replay.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if let Some(trailers) = self.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        if self.ended {
            return Poll::Ready(None);
        }
        match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
            Some(Ok(frame)) => Poll::Ready(Some(Ok(frame))),
            // The caller's stream failed (it reset it, or its connection died), or a
            // layer stopped the request.
            Some(Err(error)) => Poll::Ready(Some(Err(error.reset_reason()))),
            None => Poll::Ready(None),
        }
    }
}

/// The request frames already sent on an attempt.
#[derive(Default)]
struct Sent {
    data: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    ended: bool,
}

/// Pumps a request body into the target's stream, a chunk of send capacity at a time.
pub(super) struct Pump<B> {
    source: Option<Source<B>>,
    stream: SendStream<Bytes>,
    /// Data not yet sent, for want of capacity.
    pending: Option<Bytes>,
    /// What was sent, while small enough to send again.
    sent: Option<Sent>,
    sent_bytes: usize,
    /// Its waits for the target's window.
    starvation: Starvation,
    /// The request body failed or was stopped: the stream is reset, with this reason,
    /// once what was handed to it has been written.
    stopping: Option<Reason>,
    done: bool,
}

impl<B: Body<Data = Bytes> + Unpin> Pump<B>
where
    B::Error: BodyFailure,
{
    pub(super) fn new(
        source: Source<B>,
        stream: SendStream<Bytes>,
        starvation: Starvation,
        done: bool,
    ) -> Self {
        Pump {
            source: Some(source),
            stream,
            pending: None,
            sent: Some(Sent::default()),
            sent_bytes: 0,
            starvation,
            stopping: None,
            done,
        }
    }

    pub(super) fn is_done(&self) -> bool {
        self.done
    }

    /// The body to send again: what was sent, then the rest of the caller's body; `None`
    /// when too much was sent to keep.
    pub(super) fn into_replay(mut self) -> Option<Source<B>> {
        let sent = self.sent.take()?;
        let mut source = self.source.take()?;
        // `sent` holds every frame taken from the source whole, including the one whose
        // rest is still pending, so the pending bytes are not added again.
        let mut replay = sent.data;
        replay.append(&mut source.replay);
        source.replay = replay;
        if sent.trailers.is_some() {
            source.trailers = sent.trailers;
        }
        source.ended |= sent.ended;
        Some(source)
    }

    fn remember(&mut self, frame: &Frame<Bytes>) {
        let Some(sent) = self.sent.as_mut() else {
            return;
        };
        if let Some(data) = frame.data_ref() {
            self.sent_bytes += data.len();
            if self.sent_bytes > REPLAY_LIMIT {
                self.sent = None;
            } else {
                sent.data.push_back(data.clone());
            }
        } else if let Some(trailers) = frame.trailers_ref() {
            sent.trailers = Some(trailers.clone());
        }
    }

    /// Ready(Ok) once the body has been sent to its end, the caller's body failed (the
    /// stream is reset), or the stream closed under it (the response says how);
    /// Ready(Err) when h2 fails the wait for send capacity.
    pub(super) fn poll_pump(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), h2::Error>> {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if let Some(reason) = self.stopping {
                ready!(self.stream.poll_sent(cx));
                self.stream.send_reset(reason);
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            if let Some(data) = self.pending.as_mut() {
                if self.stream.capacity() == 0 {
                    self.stream.reserve_capacity(data.len().min(SEND_CHUNK));
                    match self.stream.poll_capacity(cx) {
                        Poll::Pending => {
                            if self.starvation.waiting(cx).is_some() {
                                return self.give_up();
                            }
                            return Poll::Pending;
                        }
                        Poll::Ready(Some(Ok(_))) => {}
                        Poll::Ready(Some(Err(error))) => {
                            self.starvation.ended();
                            return Poll::Ready(Err(error));
                        }
                        Poll::Ready(None) => {
                            self.starvation.ended();
                            // The stream is closed; its response says how.
                            self.done = true;
                            return Poll::Ready(Ok(()));
                        }
                    }
                    self.starvation.granted();
                    continue;
                }
                let piece = data.split_to(self.stream.capacity().min(data.len()));
                if data.is_empty() {
                    self.pending = None;
                }
                if let Err(error) = self.stream.send_data(piece, false) {
                    return self.closed(&error);
                }
                continue;
            }
            let Some(source) = self.source.as_mut() else {
                self.done = true;
                return Poll::Ready(Ok(()));
            };
            match ready!(source.poll_frame(cx)) {
                Some(Ok(frame)) => {
                    self.remember(&frame);
                    match frame.into_data() {
                        Ok(data) if data.is_empty() => {}
                        Ok(data) => self.pending = Some(data),
                        Err(frame) => {
                            if let Ok(trailers) = frame.into_trailers()
                                && let Err(error) = self.end(Some(trailers))
                            {
                                return self.closed(&error);
                            }
                        }
                    }
                }
                Some(Err(reason)) => {
                    // The caller's side failed, or a layer stopped the request (a message
                    // broke a field rule): the target must learn it, but only after what
                    // was already handed to its stream, which a reset would drop.
                    self.source = None;
                    self.stopping = Some(reason);
                    self.sent = None;
                    continue;
                }
                None => {
                    if let Err(error) = self.end(None) {
                        return self.closed(&error);
                    }
                }
            }
        }
    }
}

impl<B> Pump<B> {
    /// The stream was closed while the pump was sending: the target answered and reset
    /// it (a server that answers without reading the whole request sends RST_STREAM
    /// NO_ERROR), refused it, or the connection went away. h2 rejects the send with
    /// "inactive stream", but that is not how the call ended: its response says how, so
    /// the pump stops quietly and leaves the outcome to the response.
    /// The request ended, with trailers or an empty last frame: the body and the
    /// record of what was sent learn it, and the target gets the end of the stream.
    fn end(&mut self, trailers: Option<http::HeaderMap>) -> Result<(), h2::Error> {
        if let Some(source) = self.source.as_mut() {
            source.ended = true;
        }
        if let Some(sent) = self.sent.as_mut() {
            sent.ended = true;
        }
        match trailers {
            Some(trailers) => self.stream.send_trailers(trailers)?,
            None => self.stream.send_data(Bytes::new(), true)?,
        }
        self.done = true;
        Ok(())
    }

    fn closed(&mut self, error: &h2::Error) -> Poll<Result<(), h2::Error>> {
        tracing::trace!(connection = self.starvation.connection().id, %error, "the stream closed while its request was sent");
        // A no-op on a closed stream; ends the stream if h2 refused the send for another
        // reason, so the target does not wait for the rest of a request that never comes.
        self.stream.send_reset(Reason::CANCEL);
        self.done = true;
        Poll::Ready(Ok(()))
    }

    /// The target stopped reading the stream and the pool gave it up (the reason is in
    /// the stream's stall flag): reset it, so what it holds of the target's windows
    /// comes back; its response fails with the reset.
    fn give_up(&mut self) -> Poll<Result<(), h2::Error>> {
        self.stream.send_reset(Reason::CANCEL);
        self.done = true;
        self.sent = None;
        Poll::Ready(Ok(()))
    }
}

/// A pump kept for its stream's sake.
trait Parked: Send {
    fn reset(&mut self);
}

impl<B: Send> Parked for Pump<B> {
    fn reset(&mut self) {
        // A no-op on a stream that has already closed.
        self.stream.send_reset(Reason::CANCEL);
    }
}

impl std::fmt::Debug for dyn Parked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Parked")
    }
}

impl<B> Drop for Pump<B> {
    fn drop(&mut self) {
        if !self.done {
            // The call ended before its request did (cancelled, timed out, abandoned, its
            // caller's connection died): reset the target's stream explicitly, whatever
            // the pump was waiting for, so the target stops and its windows come back.
            // On a stream that already ended this is a no-op in h2.
            self.stream.send_reset(Reason::CANCEL);
        }
    }
}

/// One call's stream to the target as something besides its response body can end: the
/// request pump can be told to stop forwarding the caller's request, and the stream can
/// be reset, from any thread, whether or not the body is being read. A call whose
/// credentials end while its caller reads nothing is ended this way.
#[derive(Debug, Default)]
pub struct StreamControl {
    /// Cancelled to stop the pump: it hands the stream's send half to `parked`, or resets
    /// the stream when `ended` is set.
    stop: CancellationToken,
    /// The pump once it is done or stopped, kept so a reset can reach its stream.
    parked: std::sync::Mutex<Option<Box<dyn Parked>>>,
    ended: std::sync::atomic::AtomicBool,
    /// Set when the pool gave the stream up because the target stopped reading it.
    stall: Arc<StallFlag>,
}

impl StreamControl {
    /// Stops forwarding the caller's request; what was sent stays sent, and the answer
    /// can still be read.
    pub fn stop_sending(&self) {
        self.stop.cancel();
    }

    /// Resets the target's stream (CANCEL): the target stops, and its windows come back.
    pub fn end(&self) {
        self.ended.store(true, Ordering::SeqCst);
        self.stop.cancel();
        if let Some(mut pump) = self.lock().take() {
            pump.reset();
        }
    }

    /// Why the pool reset the stream, if it did because the target stopped reading it.
    pub fn stalled(&self) -> Option<Stall> {
        self.stall.get()
    }

    pub(super) fn stall_flag(&self) -> Arc<StallFlag> {
        self.stall.clone()
    }

    pub(super) async fn stopped(&self) {
        self.stop.cancelled().await;
    }

    /// Takes the send half of a pump that is done or told to stop: reset at once if the
    /// stream has been ended, else kept until it is.
    pub(super) fn park<B: Send + 'static>(&self, mut pump: Pump<B>) {
        let mut parked = self.lock();
        if self.ended.load(Ordering::SeqCst) {
            drop(parked);
            pump.reset();
            return;
        }
        // Stopped without a reset: the stream stays open for the answer.
        pump.done = true;
        *parked = Some(Box::new(pump));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Box<dyn Parked>>> {
        self.parked.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl crate::body::PeerStream for StreamControl {
    fn stop_sending(&self) {
        StreamControl::stop_sending(self);
    }

    fn end(&self) {
        StreamControl::end(self);
    }
}

/// The target's response body. Receive capacity goes back to the target only as the
/// caller's side takes each frame, so a caller that stops reading stops its own stream
/// at [`STREAM_WINDOW`](super::STREAM_WINDOW) and no other. Dropping it before the end
/// resets the stream.
pub struct ResponseStream {
    pub(super) recv: RecvStream,
    pub(super) data_done: bool,
    pub(super) lease: Lease,
    pub(super) control: Arc<StreamControl>,
}

impl ResponseStream {
    /// The handle that ends this stream from outside its body.
    pub fn control(&self) -> Arc<StreamControl> {
        self.control.clone()
    }

    /// The stream failed: reset by the pool because the target stopped reading it, or
    /// as h2 says.
    fn failed(&self, error: h2::Error) -> StreamError {
        match self.control.stalled() {
            Some(stall) => StreamError::Stalled(stall),
            None => StreamError::Stream(error),
        }
    }
}

impl Drop for ResponseStream {
    fn drop(&mut self) {
        // The call is over, read to its end or abandoned: the pump stops, and a stream
        // that has not ended is reset.
        self.control.end();
    }
}

impl std::fmt::Debug for ResponseStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseStream")
            .field("connection", &self.lease.connection.id)
            .field("data_done", &self.data_done)
            .finish()
    }
}

impl Body for ResponseStream {
    type Data = Bytes;
    type Error = StreamError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamError>>> {
        let this = &mut *self;
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // The server polls the body for the next frame only once the caller's
                    // stream has room for it, so this is the caller taking the data.
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(error)) => return Poll::Ready(Some(Err(this.failed(error)))),
                None => this.data_done = true,
            }
        }
        match ready!(this.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(error) => Poll::Ready(Some(Err(this.failed(error)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    use http::Request;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::super::Connection;
    use super::*;

    type ClientConnection = h2::client::Connection<DuplexStream, Bytes>;

    /// An HTTP/2 frame, for the target side written by hand.
    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let length = u32::try_from(payload.len()).expect("a small payload");
        let mut out = length.to_be_bytes()[1..].to_vec();
        out.extend_from_slice(&[kind, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// Polls the client's connection once, as its task would: it writes what is queued
    /// and reads every frame the target has written so far.
    fn drive(connection: &Mutex<ClientConnection>, cx: &mut Context<'_>) {
        let mut connection = connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Poll::Ready(Err(error)) = Pin::new(&mut *connection).poll(cx) {
            panic!("the client connection failed: {error}");
        }
    }

    /// A client connection over an in-memory pipe whose target side the test writes by
    /// hand. Its task is not spawned: the test decides when it runs.
    async fn connection() -> (
        SendRequest,
        Arc<Mutex<ClientConnection>>,
        Arc<Connection>,
        DuplexStream,
    ) {
        let (client, mut target) = tokio::io::duplex(1 << 20);
        // The target's preface: its SETTINGS, all defaults.
        target
            .write_all(&frame(0x4, 0, 0, &[]))
            .await
            .expect("the pipe takes the target's SETTINGS");
        let (sender, connection) = h2::client::Builder::new()
            .handshake::<_, Bytes>(client)
            .await
            .expect("the client handshake");
        let pooled = Arc::new(Connection {
            id: 1,
            sender: sender.clone(),
            open: AtomicUsize::new(0),
            starved: AtomicUsize::new(0),
            wedged: AtomicUsize::new(0),
            shared: Arc::default(),
            closed: AtomicBool::new(false),
        });
        (sender, Arc::new(Mutex::new(connection)), pooled, target)
    }

    type SendRequest = h2::client::SendRequest<Bytes>;

    fn starvation(connection: Arc<Connection>) -> Starvation {
        Starvation::new(connection, None, Arc::default())
    }

    fn head() -> Request<()> {
        Request::post("http://localhost/made.up.Svc/M")
            .body(())
            .expect("a valid request")
    }

    /// A request body of one message whose end is read only after the client's
    /// connection has read what the target wrote: exactly what the connection task,
    /// on another thread, does when it runs between the exchange polling the response
    /// (not there yet) and the pump sending the end of the request.
    struct EndsAfterTheAnswerIsRead {
        message: Option<Bytes>,
        connection: Arc<Mutex<ClientConnection>>,
        answered: Arc<AtomicBool>,
    }

    impl Body for EndsAfterTheAnswerIsRead {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if let Some(message) = self.message.take() {
                return Poll::Ready(Some(Ok(Frame::data(message))));
            }
            if !self.answered.load(Ordering::Acquire) {
                // Woken by the test's next poll of the exchange.
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            drive(&self.connection, cx);
            Poll::Ready(None)
        }
    }

    #[tokio::test]
    async fn a_target_answering_before_the_request_ends_is_its_answer_not_a_lost_connection() {
        let (mut sender, connection, pooled, mut target) = connection().await;
        let answered = Arc::new(AtomicBool::new(false));
        let body = EndsAfterTheAnswerIsRead {
            message: Some(Bytes::from_static(b"\0\0\0\0\x05hello")),
            connection: connection.clone(),
            answered: answered.clone(),
        };
        let (response, stream) = sender
            .send_request(head(), false)
            .expect("the stream is opened");
        let mut pump = Pump::new(Source::new(body), stream, starvation(pooled), false);
        let exchange = exchange(response, &mut pump);
        tokio::pin!(exchange);

        // The exchange takes the message and waits for send capacity; the connection
        // sends HEADERS and grants it.
        std::future::poll_fn(|cx| {
            assert!(exchange.as_mut().poll(cx).is_pending());
            drive(&connection, cx);
            Poll::Ready(())
        })
        .await;
        // The client's preface, SETTINGS and HEADERS are on the wire: the target reads
        // them, then answers as a tonic or hyper app does for a method it does not have
        // without reading the request: HEADERS(:status 200, grpc-status 12, END_STREAM),
        // then RST_STREAM(NO_ERROR) for the request it will not read.
        let mut preface = [0u8; 24];
        target
            .read_exact(&mut preface)
            .await
            .expect("the client's preface");
        assert_eq!(&preface[..], b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        let mut block = vec![0x88, 0x00, 11];
        block.extend_from_slice(b"grpc-status");
        block.extend_from_slice(&[2, b'1', b'2']);
        let mut answer = frame(0x4, 0x1, 0, &[]);
        answer.extend(frame(0x1, 0x1 | 0x4, 1, &block));
        answer.extend(frame(0x3, 0, 1, &0u32.to_be_bytes()));
        target
            .write_all(&answer)
            .await
            .expect("the pipe takes the answer");
        answered.store(true, Ordering::Release);

        // The exchange polls the response (not read yet), then the pump sends the message
        // and takes the body's end, by which time the connection has read the answer.
        let response = std::future::poll_fn(|cx| exchange.as_mut().poll(cx))
            .await
            .expect("the target's answer, not the pump's failure to send on its closed stream");
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["grpc-status"], "12");
    }

    #[tokio::test]
    async fn a_refused_request_is_sent_again_once_not_twice() {
        let (mut sender, connection, pooled, _target) = connection().await;
        let message = Bytes::from_static(b"\0\0\0\0\x05hello");
        let body = http_body_util::Full::new(message.clone());
        let (response, stream) = sender
            .send_request(head(), false)
            .expect("the stream is opened");
        let mut pump = Pump::new(Source::new(body), stream, starvation(pooled), false);
        // The pump takes the message and waits for capacity; the target refuses the
        // stream before any is granted (the connection is never driven here), so the
        // whole message is still pending.
        std::future::poll_fn(|cx| {
            assert!(pump.poll_pump(cx).is_pending());
            Poll::Ready(())
        })
        .await;
        drop(response);
        drop(connection);
        let mut replay = pump.into_replay().expect("a small request is kept");
        let mut frames = Vec::new();
        std::future::poll_fn(|cx| {
            while let Poll::Ready(Some(frame)) = replay.poll_frame(cx) {
                let frame = frame.expect("the kept body does not fail");
                frames.push(frame.into_data().expect("only data"));
            }
            Poll::Ready(())
        })
        .await;
        assert_eq!(
            frames,
            vec![message],
            "the request sent again is the request"
        );
    }
}
