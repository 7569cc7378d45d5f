//! The credentials a forwarded call was admitted with, watched while it is open: one timer
//! for a token's expiry (or a key's `not_after`), one revocation signal shared by every
//! call of an API key, and the app's position in gRPC's message framing so that the call
//! ends between messages, never inside one.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body::Frame;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use super::{PeerStream, Streamed, status_trailers};
use crate::grpc::{self, Reason};

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
    /// Whether the credentials have ended, as a waker can tell without polling.
    check: EndCheck,
}

impl CredentialsWatch {
    /// `expires`: when, as wall-clock time, and what to say then; `revoked`: the key's
    /// signal. A time already past ends the call at once.
    pub fn new(
        expires: Option<(SystemTime, CredentialsEnd)>,
        revoked: Option<CancellationToken>,
    ) -> CredentialsWatch {
        let check = EndCheck {
            expires: expires.map(|(at, _)| at),
            revoked: revoked.clone(),
        };
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
            check,
        }
    }

    /// The record the layers above read when the call completes.
    pub fn ended(&self) -> CredentialsEnded {
        self.ended.clone()
    }

    /// Records why the credentials ended in `ended` (the call's facts) from now on.
    pub fn recording_into(mut self, ended: &CredentialsEnded) -> CredentialsWatch {
        self.ended = ended.clone();
        self
    }

    /// Nothing to watch: no expiry and no revocation signal.
    pub fn is_idle(&self) -> bool {
        self.expiry.is_none() && self.revoked.is_none()
    }

    pub(super) fn forget_expiry_after(&mut self, deadline: Instant) {
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
pub(super) struct WatchedAnswer {
    pub(super) watch: CredentialsWatch,
    pub(super) framing: Framing,
    /// The credentials ended in the middle of a message: it is finished first.
    pub(super) closing: Option<CredentialsEnd>,
    /// Polls the watch when the peer's stream can be ended from outside the body.
    waker: Option<Arc<EndWaker>>,
}

/// Whether a call's credentials have ended, from their expiry time and revocation signal:
/// what a waker can check without polling anything.
#[derive(Clone, Debug, Default)]
struct EndCheck {
    expires: Option<SystemTime>,
    revoked: Option<CancellationToken>,
}

impl EndCheck {
    fn ended(&self) -> bool {
        self.revoked
            .as_ref()
            .is_some_and(CancellationToken::is_cancelled)
            || self.expires.is_some_and(|at| SystemTime::now() >= at)
    }
}

/// How long a call whose credentials ended may take to finish the message its answer is
/// in before the peer's stream is reset anyway: a caller reading nothing (a zero window)
/// would otherwise keep the call open for as long as it likes.
pub const END_GRACE: Duration = Duration::from_secs(1);

/// The waker the credentials' timer and revocation signal wake: it acts on the end itself,
/// on the thread that fires it, because the task that reads the body is only woken, and
/// hyper polls a body only when the caller's window has room. At once it stops the
/// caller's request going on to the peer; after [`END_GRACE`] it resets the peer's
/// stream, unless the body has ended it first. Then it wakes the reader, which sends the
/// status when the caller can read.
struct EndWaker {
    reader: futures_util::task::AtomicWaker,
    stream: Arc<dyn PeerStream>,
    check: EndCheck,
    acted: std::sync::atomic::AtomicBool,
    runtime: Option<tokio::runtime::Handle>,
}

impl std::task::Wake for EndWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.check.ended() && !self.acted.swap(true, std::sync::atomic::Ordering::SeqCst) {
            self.stream.stop_sending();
            let stream = Arc::downgrade(&self.stream);
            match &self.runtime {
                Some(runtime) => {
                    runtime.spawn(async move {
                        tokio::time::sleep(END_GRACE).await;
                        if let Some(stream) = stream.upgrade() {
                            stream.end();
                        }
                    });
                }
                None => self.stream.end(),
            }
        }
        self.reader.wake();
    }
}

/// Position in the length-prefixed message stream (1 byte flag, 4 bytes length, the
/// message): a few integer steps per DATA frame, no copy.
#[derive(Debug, Default)]
pub struct Framing {
    /// The prefix bytes of the next message seen so far (when fewer than 5).
    prefix: [u8; 5],
    prefix_len: u8,
    /// Bytes of the current message still to come.
    remaining: u64,
}

impl Framing {
    pub fn at_boundary(&self) -> bool {
        self.prefix_len == 0 && self.remaining == 0
    }

    /// Moves past `data`. With `stop`, stops where a message ends and says how many
    /// bytes of `data` it used; otherwise uses them all.
    pub fn advance(&mut self, data: &[u8], stop: bool) -> usize {
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

impl WatchedAnswer {
    /// Watches `watch`; with `stream`, the peer's stream is ended on time even when
    /// nothing reads the body.
    pub(super) fn new(
        mut watch: CredentialsWatch,
        stream: Option<Arc<dyn PeerStream>>,
    ) -> WatchedAnswer {
        let waker = stream.map(|stream| {
            Arc::new(EndWaker {
                reader: futures_util::task::AtomicWaker::new(),
                stream,
                check: watch.check.clone(),
                acted: std::sync::atomic::AtomicBool::new(false),
                runtime: tokio::runtime::Handle::try_current().ok(),
            })
        });
        if let Some(waker) = &waker {
            // Registers the timer and the signal with the waker now: the caller may never
            // give hyper a reason to poll the body. An end seen already is acted on by the
            // body's first poll.
            let end_waker = std::task::Waker::from(waker.clone());
            let _ = watch.poll_end(&mut Context::from_waker(&end_waker));
        }
        WatchedAnswer {
            watch,
            framing: Framing::default(),
            closing: None,
            waker,
        }
    }

    /// Ready once the credentials have ended, waking `cx` (and, through the end waker,
    /// acting on the peer's stream) when they do.
    pub(super) fn poll_end(&mut self, cx: &mut Context<'_>) -> Poll<CredentialsEnd> {
        match &self.waker {
            None => self.watch.poll_end(cx),
            Some(waker) => {
                waker.reader.register(cx.waker());
                let end_waker = std::task::Waker::from(waker.clone());
                self.watch.poll_end(&mut Context::from_waker(&end_waker))
            }
        }
    }

    /// Passes on a frame of the app's watched response, keeping count of message
    /// boundaries; once the credentials have ended, the current message is the last.
    pub(super) fn forward(
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
