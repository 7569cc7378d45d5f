//! One served connection: HTTP/2 until the client leaves, watched from accept to the
//! caller's first SETTINGS (a connection that never greets is dropped at its deadline),
//! then closed with GOAWAY when it idles too long, reaches its maximum age, or the
//! sidecar drains. A connection that has not greeted yet is dropped instead: hyper's
//! graceful shutdown only sets a flag on a connection in that state.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::server::{Activity, ChainService, Server};
use crate::config::Limits;
use crate::metrics::Metrics;
use crate::tls::ConnectionInfo;

/// When the caller's HTTP/2 greeting must have arrived, and where a late one is counted.
pub(super) struct Greeting<'a> {
    pub(super) deadline: Instant,
    pub(super) metrics: &'a Metrics,
}

/// Serves HTTP/2 until the client leaves, sending GOAWAY (and letting open calls finish)
/// when the connection has idled for `idle_timeout`, reached `max_connection_age`, or
/// the sidecar starts draining. Until the caller's preface and first SETTINGS have
/// arrived, the connection is dropped instead: at `greeting.deadline`, or when any of
/// those fire.
pub(super) async fn run_http2<S: ChainService, I>(
    server: &Server<S>,
    io: I,
    info: ConnectionInfo,
    limits: &Limits,
    shutdown: &CancellationToken,
    greeting: Greeting<'_>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let remote_addr = info.remote_addr;
    let activity = Arc::new(Activity::default());
    let (greeted_tx, mut greeted_rx) = oneshot::channel();
    let io = GreetingWatch {
        io,
        head: [0; GREETING_HEAD],
        seen: 0,
        greeted: Some(greeted_tx),
    };
    let certificate_not_after = info.peer.as_ref().and_then(|peer| peer.not_after);
    let connection = server.serve(io, info, activity.clone());
    tokio::pin!(connection);
    let late = tokio::time::sleep_until(greeting.deadline);
    tokio::pin!(late);
    // `greeted` turns true once the SETTINGS arrived; `watching` stops once the
    // watcher has spoken either way (a dropped sender means the connection is gone).
    let (mut greeted, mut watching) = (false, true);
    let ends = time_to_close(
        limits,
        &activity,
        certificate_not_after,
        remote_addr,
        greeting.metrics,
    );
    tokio::pin!(ends);
    let mut closing = false;
    let served = loop {
        tokio::select! {
            served = connection.as_mut() => break served,
            result = &mut greeted_rx, if watching => {
                watching = false;
                greeted = result.is_ok();
                continue;
            }
            () = &mut late, if !greeted => {
                greeting.metrics.tls_handshake_error("no_http2_preface");
                handshake_failed(
                    remote_addr,
                    "no_http2_preface",
                    "no HTTP/2 preface and SETTINGS within limits.handshake_timeout",
                );
                return;
            }
            () = shutdown.cancelled(), if !closing => {}
            () = &mut ends, if !closing => {}
        }
        if !greeted {
            // GOAWAY cannot be sent before the preface; dropping is the only way out.
            tracing::debug!(remote = %remote_addr, "closed before its HTTP/2 preface");
            return;
        }
        connection.as_mut().graceful_shutdown();
        closing = true;
    };
    if let Err(error) = served {
        tracing::debug!(remote = %remote_addr, %error, "connection ended with an error");
    }
}

/// Resolves, having said why, when a connection should close gracefully: it reached
/// `max_connection_age` or `idle_timeout`, its client certificate expired (the identity
/// it states ends with it; Auth refuses any call that still arrives), or the caller
/// abandoned calls faster than the reset budget allows.
async fn time_to_close(
    limits: &Limits,
    activity: &Activity,
    certificate_not_after: Option<u64>,
    remote: SocketAddr,
    metrics: &Metrics,
) {
    let age = async {
        match limits.max_connection_age {
            Some(age) => tokio::time::sleep(age.get()).await,
            None => std::future::pending().await,
        }
    };
    let certificate_ends = async {
        match certificate_not_after {
            Some(not_after) => {
                let left = not_after.saturating_sub(crate::clock::unix_now());
                tokio::time::sleep_until(crate::clock::instant_after(Duration::from_secs(
                    left.saturating_add(1),
                )))
                .await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        () = age => tracing::debug!(%remote, "limits.max_connection_age reached"),
        () = activity.idle_for(limits.idle_timeout.get()) => {
            tracing::debug!(%remote, "limits.idle_timeout reached");
        }
        () = certificate_ends => {
            tracing::info!(%remote, "connection closed: its client certificate has expired");
        }
        () = activity.flooded() => {
            metrics.limit_refusal("caller_resets");
            tracing::info!(%remote, "connection closed: the caller abandoned calls faster than gatehouse relays resets to the app");
        }
    }
}

/// The client preface (24 bytes) and the header of the SETTINGS frame that must follow it.
const GREETING_HEAD: usize = 24 + 9;

pin_project_lite::pin_project! {
    /// The caller's side of a connection, watched until its HTTP/2 preface and first
    /// SETTINGS frame have been read; then `greeted` fires. What the bytes say is
    /// hyper's to check: a bad preface ends the connection there.
    struct GreetingWatch<I> {
        #[pin]
        io: I,
        head: [u8; GREETING_HEAD],
        seen: usize,
        greeted: Option<oneshot::Sender<()>>,
    }
}

impl<I: AsyncRead> AsyncRead for GreetingWatch<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        ready!(this.io.poll_read(cx, buf))?;
        if this.greeted.is_some() {
            let fresh = &buf.filled()[before..];
            if *this.seen < GREETING_HEAD {
                let take = fresh.len().min(GREETING_HEAD - *this.seen);
                this.head[*this.seen..*this.seen + take].copy_from_slice(&fresh[..take]);
            }
            *this.seen = this.seen.saturating_add(fresh.len());
            if *this.seen >= GREETING_HEAD {
                let length = u32::from_be_bytes([0, this.head[24], this.head[25], this.head[26]]);
                if *this.seen >= GREETING_HEAD + length as usize
                    && let Some(greeted) = this.greeted.take()
                {
                    let _ = greeted.send(());
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite> AsyncWrite for GreetingWatch<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

/// A bounded label for why a handshake failed.
pub(super) fn classify(error: &std::io::Error) -> &'static str {
    use rustls::{CertificateError, Error};
    let Some(tls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<Error>())
    else {
        return "connection_closed";
    };
    match tls {
        Error::NoCertificatesPresented => "no_client_certificate",
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => "unknown_ca",
        Error::InvalidCertificate(
            CertificateError::Expired | CertificateError::ExpiredContext { .. },
        ) => "certificate_expired",
        Error::InvalidCertificate(_) => "bad_certificate",
        Error::InvalidMessage(_)
        | Error::InappropriateMessage { .. }
        | Error::InappropriateHandshakeMessage { .. } => "not_tls",
        Error::NoApplicationProtocol => "no_alpn",
        Error::PeerIncompatible(_) => "incompatible",
        Error::AlertReceived(_) => "alert_received",
        _ => "other",
    }
}

/// Second of the last handshake failure logged: at most one line a second, so a scanner
/// or a misconfigured client cannot flood the log (the metric counts every one).
static LAST_HANDSHAKE_LOG: AtomicU64 = AtomicU64::new(0);

pub(super) fn handshake_failed(remote_addr: SocketAddr, reason: &str, detail: &str) {
    // The TLS handshake, or (reason `no_http2_preface`) the HTTP/2 greeting after it.
    let what = match reason {
        "no_http2_preface" => "HTTP/2 handshake failed",
        _ => "TLS handshake failed",
    };
    let now = crate::clock::unix_now();
    if LAST_HANDSHAKE_LOG.swap(now, Ordering::Relaxed) != now {
        tracing::warn!(remote = %remote_addr, reason, detail, "{what}");
    } else {
        tracing::debug!(remote = %remote_addr, reason, detail, "{what}");
    }
}
