//! HTTP/2 connections to one target, shared by the calls forwarded to it so that no call
//! can stall another: several connections, stream accounting against the target's own
//! limit, a bounded wait when every connection is full, explicit resets, and send and
//! receive budgets per stream.
//!
//! The pool speaks the `h2` crate directly rather than through hyper's client, because
//! hyper hides the three things isolation needs: the request body is pumped by a task
//! hyper owns, parked on send capacity, so a call whose caller went away is never reset
//! (its stream and the connection window it holds stay taken); the target's stream
//! limit is enforced by an unbounded queue inside h2 that gatehouse cannot see; and
//! receive capacity is released by hyper when a frame is read, not when the caller has
//! taken it. Here the pool counts the streams it opens, pumps request bodies itself
//! (`SendStream::reserve_capacity` / `poll_capacity`, and `send_reset(CANCEL)` on every
//! early end, whatever the pump is waiting for), and releases receive capacity as the
//! caller's side takes each frame.
//!
//! # Budgets
//!
//! - Receive: each stream gets a [`STREAM_WINDOW`] window and each connection
//!   [`STREAM_WINDOW`] × [`STREAMS_PER_CONNECTION`], so the streams of callers that do not
//!   read can fill their own windows but never the connection's. The pool never holds
//!   more streams than the configured connections × [`STREAMS_PER_CONNECTION`], even
//!   when it opens more connections, so the worst case buffered is 128 KiB per stream
//!   whose caller stopped reading: 12.5 MiB per connection's worth of streams, 50 MiB
//!   with the default four, and only when 400 callers at once stop reading. 128 KiB
//!   rather than 64 KiB because a 64 KiB window made a large server stream about 3 times
//!   slower (WINDOW_UPDATE round trips every 32 KiB); 256 KiB was no faster than the
//!   single hyper connection before it but would double the worst case.
//! - Send: gatehouse cannot see the target's windows (h2 keeps the peer's stream and
//!   connection windows private and only assigns capacity out of them), so a true
//!   per-stream cap on bytes the target has not yet read cannot be enforced here. What
//!   the pool does instead: a stream reserves at most [`SEND_CHUNK`] of capacity at a
//!   time, so no stream holds connection window it is not about to use; and it watches
//!   for the one thing that stalls others: a target that stops reading one stream (a
//!   hyper or tonic app does so when that stream's replies back up) lets that stream take
//!   the target's whole connection window (hyper: 1 MiB stream window, 1 MiB connection
//!   window), and every other stream on that connection then waits for capacity.
//!   [`stall`] says how such streams are found and what is done about them: no new call
//!   is placed on a connection with a stream the target stopped reading (wedged); while
//!   every connection has a stream waiting, the pool opens more, up to
//!   [`WEDGED_SURPLUS`] times the configured number (closed again once idle and not
//!   needed); one owner's third wedged stream is reset; and a wedged stream is reset
//!   when calls wait for a stream. A call that finds no connection it can send on waits
//!   in the bounded queue rather than be put beside a stream that is not moving.

mod connection;
pub mod stall;
mod stream;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use h2::Reason;
use http::{Request, Response};
use http_body::Body;

use crate::config::Target;
pub use connection::{Connect, Connecting, Io};
use connection::{Connection, Lease};
pub use stall::{Owner, Stall, WEDGED_AFTER};
use stall::{Shared, Starvation};
use stream::{Pump, Source, exchange};
pub use stream::{ResponseStream, StreamControl};

/// Receive window of one stream (response direction), in bytes.
pub const STREAM_WINDOW: u32 = 128 * 1024;
/// Streams gatehouse puts on one connection at most, whatever the target allows.
pub const STREAMS_PER_CONNECTION: usize = 100;
/// Send capacity a stream reserves at a time (request direction), in bytes.
pub const SEND_CHUNK: usize = 64 * 1024;
/// Request bytes kept per call until the target has answered, so a call the target
/// refused unprocessed (GOAWAY, REFUSED_STREAM) can be sent again. Larger requests are
/// not retried.
pub const REPLAY_LIMIT: usize = 64 * 1024;
/// Connections at most, as a multiple of the configured number, while streams the target
/// stopped reading hold the others.
pub const WEDGED_SURPLUS: usize = 4;
/// How often a call the target did not process is sent again.
const ATTEMPTS: usize = 3;

/// How many connections, and how long and how many calls may wait for a stream.
#[derive(Clone, Debug)]
pub struct Settings {
    pub connect_timeout: Duration,
    /// Connections to the target at most.
    pub connections: usize,
    /// Calls that may wait for a free stream when every connection is full.
    pub queue: usize,
    /// How long a call may wait for a free stream.
    pub queue_timeout: Duration,
    /// The largest header list (response headers, or trailers) read from the target,
    /// decoded, advertised in SETTINGS and enforced by h2: an answer over it is refused
    /// and its stream reset, so a misbehaving app or destination cannot make gatehouse
    /// hold more than this per stream (h2's default is 16 MiB). See
    /// [`response_header_list`].
    pub max_header_list: u32,
}

/// The header list gatehouse reads from its peers' answers: twice what it reads from
/// callers' requests (`limits.max_header_list_size`), since answers carry trailers and
/// error details.
pub fn response_header_list(limits: &crate::config::Limits) -> u32 {
    limits.max_header_list_size.saturating_mul(2)
}

/// Why a call could not be sent, or failed before the target answered.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The target refused or dropped the connection attempt.
    #[error("{target} is unreachable: {source}")]
    Connect {
        target: Target,
        #[source]
        source: std::io::Error,
    },
    /// Connecting (TCP and the HTTP/2 handshake) took longer than `connect_timeout`.
    #[error("{target} did not accept a connection within {after:?}")]
    ConnectTimeout { target: Target, after: Duration },
    /// The HTTP/2 handshake failed.
    #[error("HTTP/2 handshake with {target} failed: {source}")]
    Handshake {
        target: Target,
        #[source]
        source: h2::Error,
    },
    /// Every connection is at the target's stream limit and the wait queue is full.
    #[error(
        "{target} has no free stream on any of its {connections} connections and {waiting} calls already wait"
    )]
    QueueFull {
        target: Target,
        connections: usize,
        waiting: usize,
    },
    /// No stream became free within `queue_timeout`.
    #[error("{target} had no free stream on any of its {connections} connections for {after:?}")]
    QueueTimeout {
        target: Target,
        connections: usize,
        after: Duration,
    },
    /// The stream failed: a reset, or the connection died.
    #[error("{0}")]
    Stream(#[source] h2::Error),
    /// The target stopped reading the call's request and the pool reset its stream.
    #[error("{0}")]
    Stalled(Stall),
}

/// How a call's stream failed once the target had answered.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// A reset, or the connection died.
    #[error("{0}")]
    Stream(#[source] h2::Error),
    /// The target stopped reading the call's request and the pool reset its stream.
    #[error("{0}")]
    Stalled(Stall),
}

impl StreamError {
    /// The status the call ends with, its stream having failed `when`.
    pub fn status(&self, far: crate::grpc::Far<'_>, when: &str) -> crate::grpc::Status {
        match self {
            StreamError::Stream(error) => crate::grpc::stream_failure(error, far, when),
            StreamError::Stalled(stall) => stall.status(far),
        }
    }
}

/// How a request body that fails ends the target's stream: the reason of the
/// `RST_STREAM` sent once what was already handed to the stream has been written.
pub trait BodyFailure {
    fn reset_reason(&self) -> Reason;
}

impl BodyFailure for std::convert::Infallible {
    fn reset_reason(&self) -> Reason {
        match *self {}
    }
}

impl BodyFailure for crate::body::RequestError {
    fn reset_reason(&self) -> Reason {
        match self {
            crate::body::RequestError::Caller(_) => Reason::CANCEL,
            // Not CANCEL: hyper-based apps (tonic among them) read a CANCEL on a
            // request stream as its end, and would take the messages before it for a
            // whole request.
            crate::body::RequestError::Stopped => Reason::INTERNAL_ERROR,
        }
    }
}

/// Connections to one target.
pub struct Pool {
    target: Target,
    settings: Settings,
    connections: Mutex<Vec<Arc<Connection>>>,
    /// One dial at a time, so a burst of calls opens one connection, not one per call.
    dialing: tokio::sync::Mutex<()>,
    /// Shared with the connections and their streams: waiting calls, wedged streams.
    shared: Arc<Shared>,
    next_id: AtomicU64,
    /// Opens connections instead of dialling `target` itself, when set.
    connector: Option<Arc<dyn Connect>>,
}

/// A place in the bounded wait queue, given back when dropped.
struct Queued<'a>(&'a AtomicUsize);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

enum Pick {
    Lease(Lease),
    Dial,
    Full,
}

impl Pool {
    /// Prepares the pool; nothing is dialled until the first call.
    pub fn new(target: Target, settings: Settings) -> Self {
        Pool {
            target,
            settings,
            connections: Mutex::new(Vec::new()),
            dialing: tokio::sync::Mutex::new(()),
            shared: Arc::default(),
            next_id: AtomicU64::new(1),
            connector: None,
        }
    }

    /// A pool whose connections `connector` opens; `target` names them in errors and logs.
    pub fn with_connector(target: Target, settings: Settings, connector: Arc<dyn Connect>) -> Self {
        Pool {
            connector: Some(connector),
            ..Pool::new(target, settings)
        }
    }

    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Open connections, for tests and metrics.
    pub fn connections(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Connection>>> {
        self.connections
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Makes sure a connection is open, dialling one if none is, so a caller with several
    /// targets can find one that answers before it hands over a request it cannot take
    /// back.
    pub async fn ready(&self) -> Result<(), Error> {
        let open = |pool: &Pool| {
            pool.lock()
                .iter()
                .any(|connection| !connection.closed.load(Ordering::Acquire))
        };
        if open(self) {
            return Ok(());
        }
        let _one_at_a_time = self.dialing.lock().await;
        if open(self) {
            return Ok(());
        }
        let connection = self.dial().await?;
        self.lock().push(connection);
        self.shared.changed.notify_waiters();
        Ok(())
    }

    /// Resolves once the pool has no open connection: how a user that keeps one
    /// connection open learns that the target went away (an app that restarts closes
    /// its connections, and the kernel says so at once on loopback).
    pub async fn closed(&self) {
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let open = self
                .lock()
                .iter()
                .any(|connection| !connection.closed.load(Ordering::Acquire));
            if !open {
                return;
            }
            changed.await;
        }
    }

    /// Sends `request` and returns the target's response headers with its body streaming.
    /// The request body is pumped under flow control; dropping the returned future or the
    /// response body before the exchange ends resets the target's stream with CANCEL.
    /// A call the target did not process (GOAWAY above its stream id, REFUSED_STREAM) is
    /// sent again on another connection when its request bytes so far were kept.
    pub async fn send<B>(&self, request: Request<B>) -> Result<Response<ResponseStream>, Error>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: BodyFailure,
    {
        let (parts, body) = request.into_parts();
        let owner = parts.extensions.get::<Owner>().copied();
        let mut head = Request::from_parts(parts, ());
        *head.version_mut() = http::Version::HTTP_2;
        let mut source = Source::new(body);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let lease = self.acquire().await?;
            let mut sender = lease.connection.sender.clone();
            let end_of_stream = source.is_end_stream();
            let (response, stream) = match sender.send_request(copy_head(&head), end_of_stream) {
                Ok(sent) => sent,
                Err(error) => {
                    // The connection is going away; nothing reached the target.
                    lease.connection.closed.store(true, Ordering::Release);
                    if attempt < ATTEMPTS {
                        continue;
                    }
                    return Err(Error::Stream(error));
                }
            };
            let control = Arc::new(StreamControl::default());
            let starvation = Starvation::new(lease.connection.clone(), owner, control.stall_flag());
            let mut pump = Pump::new(source, stream, starvation, end_of_stream);
            match exchange(response, &mut pump).await {
                Ok(response) => return Ok(streaming(response, pump, control, lease)),
                Err(error) => {
                    if let Some(stall) = control.stalled() {
                        return Err(Error::Stalled(stall));
                    }
                    let unprocessed = not_processed(&error);
                    if error.is_go_away() || error.is_io() {
                        // The connection is going or gone: no new calls on it, even
                        // before its task has noticed.
                        lease.connection.closed.store(true, Ordering::Release);
                    }
                    match pump.into_replay() {
                        Some(replay) if unprocessed && attempt < ATTEMPTS => {
                            tracing::debug!(
                                target_address = %self.target,
                                %error,
                                "the target did not process the call; sending it again"
                            );
                            source = replay;
                            drop(lease);
                        }
                        _ => return Err(Error::Stream(error)),
                    }
                }
            }
        }
    }

    /// A stream slot: on a connection with room and no starved stream, on a new
    /// connection, on a connection with room none of whose streams the target stopped
    /// reading, or after a bounded wait.
    async fn acquire(&self) -> Result<Lease, Error> {
        let deadline = crate::clock::instant_after(self.settings.queue_timeout);
        let mut queued = None;
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.pick() {
                Pick::Lease(lease) => return Ok(lease),
                Pick::Dial => {
                    if let Ok(_one_at_a_time) = self.dialing.try_lock() {
                        let dialled = self.dial().await;
                        if let Ok(connection) = &dialled {
                            self.lock().push(connection.clone());
                        }
                        self.shared.changed.notify_waiters();
                        dialled?;
                        continue;
                    }
                    // Another call is dialling; its connection (or failure) wakes us. A
                    // burst of calls meeting a new connection is not a full target, so
                    // this wait takes no place in the queue.
                }
                Pick::Full => {
                    if queued.is_none() {
                        let waiting = self.shared.waiting.fetch_add(1, Ordering::AcqRel);
                        queued = Some(Queued(&self.shared.waiting));
                        if waiting >= self.settings.queue {
                            return Err(Error::QueueFull {
                                target: self.target.clone(),
                                connections: self.connections(),
                                waiting,
                            });
                        }
                    }
                }
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Err(Error::QueueTimeout {
                    target: self.target.clone(),
                    connections: self.connections(),
                    after: self.settings.queue_timeout,
                });
            }
        }
    }

    fn pick(&self) -> Pick {
        let load = |c: &Arc<Connection>| {
            (
                c.wedged.load(Ordering::Acquire),
                c.starved.load(Ordering::Acquire),
                c.open.load(Ordering::Acquire),
            )
        };
        let mut connections = self.lock();
        connections.retain(|connection| !connection.closed.load(Ordering::Acquire));
        // Wedged connections keep serving their streams but do not count: their slots
        // are taken by streams the target stopped reading, not by load.
        let mut counted = connections.iter().filter(|c| load(c).0 == 0).count();
        if counted > self.settings.connections {
            // Connections opened while others were wedged, now idle again: close the
            // surplus (dropping the last handle ends the connection).
            connections.retain(|c| {
                let surplus = counted > self.settings.connections && load(c) == (0, 0, 0);
                counted -= usize::from(surplus);
                !surplus
            });
        }
        // The receive-memory bound: streams in all, whatever the number of connections.
        let streams: usize = connections.iter().map(|c| load(c).2).sum();
        if streams >= self.settings.connections * STREAMS_PER_CONNECTION {
            return Pick::Full;
        }
        let healthy = connections
            .iter()
            .filter(|c| c.has_room() && load(c).1 == 0)
            .min_by_key(|c| load(c).2);
        if let Some(connection) = healthy {
            return Pick::Lease(Lease::new(connection));
        }
        // Every connection is full or has a stream waiting for the target's window: open
        // another, within the limit, or beyond it up to WEDGED_SURPLUS times the limit
        // while streams wait on all of them, since such a wait is most likely a stream
        // the target stopped reading, which would stall any call put beside it.
        let everywhere = connections.iter().all(|c| load(c).1 > 0);
        if connections.len() < self.settings.connections * WEDGED_SURPLUS
            && (counted < self.settings.connections || everywhere)
        {
            return Pick::Dial;
        }
        // A connection whose streams wait for capacity but still get it serves a new
        // call more slowly; one with a stream the target stopped reading would not
        // serve it at all, so the call waits for a stream instead (and its wait is what
        // gets the stopped stream reset).
        let moving = connections
            .iter()
            .filter(|c| c.has_room() && load(c).0 == 0)
            .min_by_key(|c| load(c));
        match moving {
            Some(connection) => Pick::Lease(Lease::new(connection)),
            None => Pick::Full,
        }
    }
}

/// Whether the target refused the stream without processing it, so sending it again is
/// safe: a GOAWAY whose last stream id is below it (h2 reports exactly those streams with
/// the GOAWAY's error; a graceful GOAWAY carries NO_ERROR), or RST_STREAM REFUSED_STREAM.
fn not_processed(error: &h2::Error) -> bool {
    error.is_remote()
        && ((error.is_go_away() && error.reason() == Some(Reason::NO_ERROR))
            || (error.is_reset() && error.reason() == Some(Reason::REFUSED_STREAM)))
}

fn copy_head(head: &Request<()>) -> Request<()> {
    let mut copy = Request::new(());
    *copy.method_mut() = head.method().clone();
    *copy.uri_mut() = head.uri().clone();
    *copy.version_mut() = head.version();
    *copy.headers_mut() = head.headers().clone();
    copy
}

/// The target answered: its response streams back to the caller while the rest of the
/// request keeps flowing. The pump's task ends with the call, or stops when told to, and
/// resets the stream if the call ends early.
fn streaming<B>(
    response: Response<h2::RecvStream>,
    mut pump: Pump<B>,
    control: Arc<StreamControl>,
    lease: Lease,
) -> Response<ResponseStream>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: BodyFailure,
{
    let (parts, recv) = response.into_parts();
    if pump.is_done() {
        control.park(pump);
    } else {
        let told = control.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = std::future::poll_fn(|cx| pump.poll_pump(cx).map(|_| ())) => {}
                () = told.stopped() => {}
            }
            told.park(pump);
        });
    }
    let body = ResponseStream {
        recv,
        data_done: false,
        lease,
        control,
    };
    Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use tokio::sync::mpsc;

    #[test]
    fn only_streams_the_target_never_processed_are_sent_again() {
        // h2 builds the remote errors itself; what a unit test can show is that a
        // reason not received from the target never counts as unprocessed.
        let local: h2::Error = h2::Error::from(Reason::REFUSED_STREAM);
        assert!(
            !not_processed(&local),
            "a reason h2 raised locally is not remote"
        );
    }

    /// An HTTP/2 target on loopback that allows `max_streams` streams, gives each a
    /// `window`-byte receive window, never reads a body and never answers; every stream
    /// it accepts is handed to the test.
    async fn silent_target(
        max_streams: u32,
        window: u32,
    ) -> (
        Target,
        mpsc::UnboundedReceiver<h2::server::SendResponse<Bytes>>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let address = listener.local_addr().expect("bound address").to_string();
        let (streams, accepted) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let streams = streams.clone();
                tokio::spawn(async move {
                    let Ok(mut connection) = h2::server::Builder::new()
                        .max_concurrent_streams(max_streams)
                        .initial_window_size(window)
                        .initial_connection_window_size(window)
                        .handshake::<_, Bytes>(tcp)
                        .await
                    else {
                        return;
                    };
                    while let Some(Ok((request, respond))) = connection.accept().await {
                        // Held, never read: the body's window stays used.
                        std::mem::forget(request);
                        let _ = streams.send(respond);
                    }
                });
            }
        });
        (Target::Tcp(address), accepted)
    }

    fn settings(connections: usize, queue: usize, queue_timeout: Duration) -> Settings {
        Settings {
            connect_timeout: Duration::from_secs(5),
            connections,
            queue,
            queue_timeout,
            max_header_list: 32 * 1024,
        }
    }

    fn call(body: Bytes) -> Request<Full<Bytes>> {
        Request::post("http://localhost/pkg.Svc/Call")
            .body(Full::new(body))
            .expect("a valid request")
    }

    #[tokio::test]
    async fn calls_beyond_every_stream_limit_wait_boundedly_then_are_refused() {
        let (target, mut accepted) = silent_target(1, 65_535).await;
        let pool = Arc::new(Pool::new(
            target,
            settings(1, 1, Duration::from_millis(200)),
        ));
        let holder = tokio::spawn({
            let pool = pool.clone();
            async move { pool.send(call(Bytes::from_static(b"held"))).await }
        });
        let _held = accepted
            .recv()
            .await
            .expect("the target got the first call");

        let waiter = tokio::spawn({
            let pool = pool.clone();
            async move { pool.send(call(Bytes::new())).await }
        });
        while pool.shared.waiting.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        let over = pool.send(call(Bytes::new())).await;
        assert!(
            matches!(over, Err(Error::QueueFull { waiting: 1, .. })),
            "{over:?}"
        );
        let waited = waiter.await.expect("the waiter ran");
        assert!(
            matches!(waited, Err(Error::QueueTimeout { .. })),
            "{waited:?}"
        );
        assert_eq!(pool.connections(), 1);
        holder.abort();
    }

    #[tokio::test]
    async fn a_unix_socket_target_is_dialled_and_answers() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("app.sock");
        let listener = tokio::net::UnixListener::bind(&path).expect("bind a Unix socket");
        tokio::spawn(async move {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let Ok(mut connection) = h2::server::Builder::new()
                .handshake::<_, Bytes>(socket)
                .await
            else {
                return;
            };
            while let Some(Ok((_, mut respond))) = connection.accept().await {
                let response = Response::builder()
                    .status(200)
                    .body(())
                    .expect("a valid response");
                let _ = respond.send_response(response, true);
            }
        });
        let pool = Pool::new(Target::Unix(path), settings(1, 1, Duration::from_secs(1)));
        let response = pool
            .send(call(Bytes::from_static(b"over a socket")))
            .await
            .expect("the target answered");
        assert_eq!(response.status(), 200);
        assert!(response.body().is_end_stream());
    }

    #[tokio::test]
    async fn an_abandoned_call_is_reset_while_its_body_waits_for_the_targets_window() {
        // The target's window is 1 KiB and it never reads: the pump parks on capacity.
        let (target, mut accepted) = silent_target(10, 1024).await;
        let pool = Arc::new(Pool::new(target, settings(1, 8, Duration::from_secs(1))));
        let call = tokio::spawn({
            let pool = pool.clone();
            async move { pool.send(call(Bytes::from(vec![7u8; 64 * 1024]))).await }
        });
        let mut respond = accepted.recv().await.expect("the target got the call");
        call.abort();
        let reset = tokio::time::timeout(
            Duration::from_secs(5),
            std::future::poll_fn(|cx| respond.poll_reset(cx)),
        )
        .await
        .expect("the target saw the stream reset")
        .expect("a reset, not a connection error");
        assert_eq!(reset, Reason::CANCEL);
        // The stream slot is free again.
        assert!(
            tokio::time::timeout(Duration::from_secs(5), async {
                while pool
                    .lock()
                    .iter()
                    .any(|c| c.open.load(Ordering::Acquire) > 0)
                {
                    tokio::task::yield_now().await;
                }
            })
            .await
            .is_ok()
        );
    }

    /// A request body of `frames`, then stopped by a layer (a message broke a rule).
    struct StoppedAfter(std::collections::VecDeque<Bytes>);

    impl Body for StoppedAfter {
        type Data = Bytes;
        type Error = crate::body::RequestError;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            std::task::Poll::Ready(Some(match self.0.pop_front() {
                Some(data) => Ok(http_body::Frame::data(data)),
                None => Err(crate::body::RequestError::Stopped),
            }))
        }
    }

    #[tokio::test]
    async fn a_stopped_request_reaches_the_target_up_to_where_it_stopped_then_is_reset() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let target = Target::Tcp(listener.local_addr().expect("bound address").to_string());
        // The target reads the body to its end or its reset.
        let read = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("a connection");
            let mut connection = h2::server::handshake(tcp).await.expect("a handshake");
            let (request, _respond) = connection
                .accept()
                .await
                .expect("a stream")
                .expect("a request");
            tokio::spawn(async move { while connection.accept().await.is_some() {} });
            let mut body = request.into_body();
            let mut received = Vec::new();
            loop {
                match std::future::poll_fn(|cx| body.poll_data(cx)).await {
                    Some(Ok(data)) => {
                        let _ = body.flow_control().release_capacity(data.len());
                        received.extend_from_slice(&data);
                    }
                    Some(Err(error)) => return (received, error.reason()),
                    None => return (received, None),
                }
            }
        });
        let pool = Pool::new(target, settings(1, 1, Duration::from_secs(5)));
        let frames = [&b"one"[..], b"two", b"three"].map(Bytes::from_static);
        let request = Request::post("http://localhost/pkg.Svc/Call")
            .body(StoppedAfter(frames.into()))
            .expect("a valid request");
        let sent = pool.send(request).await;
        assert!(sent.is_err(), "the target never answered");
        let (received, reset) = tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .expect("the target saw the end of the request")
            .expect("the target's task");
        // h2 drops a stream's queued frames on reset: the pump waits until they are written.
        assert_eq!(
            received, b"onetwothree",
            "what was handed on before the stop"
        );
        // Not CANCEL, which apps built on hyper read as the clean end of a request.
        assert_eq!(reset, Some(Reason::INTERNAL_ERROR));
    }

    /// Accepts one connection on loopback, answers the client preface with an empty
    /// SETTINGS frame and PINGs with their acks, and returns the payload of the first HEADERS frame it reads.
    async fn first_header_block() -> (Target, tokio::task::JoinHandle<Vec<u8>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let address = listener.local_addr().expect("bound address").to_string();
        let read = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.expect("a connection");
            let mut preface = [0u8; 24];
            tcp.read_exact(&mut preface).await.expect("the preface");
            assert_eq!(&preface, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
            tcp.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
                .await
                .expect("write SETTINGS");
            loop {
                let mut head = [0u8; 9];
                tcp.read_exact(&mut head).await.expect("a frame header");
                let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                let mut payload = vec![0u8; length];
                tcp.read_exact(&mut payload).await.expect("a frame payload");
                match (head[3], head[4] & 0x1) {
                    (0x1, _) => return payload,
                    // The pool waits for the answer to its PING before it sends a call.
                    (0x6, 0) => {
                        let mut pong = vec![0, 0, 8, 6, 1, 0, 0, 0, 0];
                        pong.extend_from_slice(&payload);
                        tcp.write_all(&pong).await.expect("write PING ack");
                    }
                    _ => {}
                }
            }
        });
        (Target::Tcp(address), read)
    }

    fn call_with_value(value: &'static str) -> Request<Full<Bytes>> {
        let mut request = call(Bytes::from_static(b"x"));
        request
            .headers_mut()
            .insert("x-check", http::HeaderValue::from_static(value));
        request
    }

    const VALUE: &str = "a header value written as it is, 0123456789";

    #[tokio::test]
    async fn header_strings_go_to_a_loopback_target_without_huffman_coding() {
        let (target, block) = first_header_block().await;
        let pool = Arc::new(Pool::new(target, settings(1, 1, Duration::from_secs(5))));
        let call = tokio::spawn(async move { pool.send(call_with_value(VALUE)).await });
        let block = block.await.expect("the target's task");
        call.abort();
        // A raw literal: the length with the H bit clear, then the bytes.
        let mut literal = vec![VALUE.len() as u8];
        literal.extend_from_slice(VALUE.as_bytes());
        assert!(
            block.windows(literal.len()).any(|w| w == literal),
            "the value is not a raw literal in {block:?}"
        );
    }

    struct Dial(String);

    impl Connect for Dial {
        fn connect(&self) -> Connecting<'_> {
            Box::pin(async move {
                let tcp = tokio::net::TcpStream::connect(self.0.as_str()).await?;
                Ok(Box::new(tcp) as Box<dyn Io>)
            })
        }
    }

    #[tokio::test]
    async fn header_strings_through_a_connector_keep_huffman_coding() {
        // A connector opens connections to other pods, never known to be local.
        let (target, block) = first_header_block().await;
        let Target::Tcp(address) = target.clone() else {
            unreachable!()
        };
        let pool = Arc::new(Pool::with_connector(
            target,
            settings(1, 1, Duration::from_secs(5)),
            Arc::new(Dial(address)),
        ));
        let call = tokio::spawn(async move { pool.send(call_with_value(VALUE)).await });
        let block = block.await.expect("the target's task");
        call.abort();
        assert!(
            !block.windows(VALUE.len()).any(|w| w == VALUE.as_bytes()),
            "the value went uncoded in {block:?}"
        );
    }
}
