//! The accept loop: a bounded number of connections, each given one fixed time from
//! accept to the caller's HTTP/2 preface and first SETTINGS (the TLS handshake
//! included); each closed with GOAWAY when it has been idle too long, has reached its
//! maximum age, or the sidecar drains. A connection that has not greeted yet is dropped
//! instead: hyper's graceful shutdown only sets a flag on a connection in that state.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::time::Instant;

use crate::config::Limits;
use crate::metrics::Metrics;
use crate::server::{Activity, ChainService, Server};
use crate::tls::{ConnectionInfo, PeerIdentity, ReloadableTls};

/// Accepts connections and hands each to the HTTP/2 server, which runs the chain `S`.
pub struct Listener<S> {
    tcp: TcpListener,
    tls: Option<Arc<ReloadableTls>>,
    server: Server<S>,
    limits: Limits,
    metrics: Arc<Metrics>,
    permits: Arc<Semaphore>,
    clients: Arc<ClientSlots>,
}

/// Waits for the connections of a stopped listener to finish.
pub struct Drain {
    permits: Arc<Semaphore>,
    max_connections: u32,
}

impl Drain {
    /// Resolves once every connection has closed.
    pub async fn finished(&self) {
        let _all = self.permits.acquire_many(self.max_connections).await;
    }
}

impl<S: ChainService> Listener<S> {
    pub fn new(
        tcp: TcpListener,
        tls: Option<Arc<ReloadableTls>>,
        server: Server<S>,
        limits: &Limits,
        metrics: Arc<Metrics>,
    ) -> Self {
        let permits = Arc::new(Semaphore::new(limits.max_connections));
        let clients = Arc::new(ClientSlots {
            cap: limits.connections_per_client(),
            open: Mutex::default(),
        });
        Listener {
            tcp,
            tls,
            server,
            limits: limits.clone(),
            metrics,
            permits,
            clients,
        }
    }

    /// Accepts until `shutdown` turns true, then stops listening and returns the
    /// [`Drain`] of the connections still open; each of them has been told to GOAWAY.
    /// Handshakes still in progress are abandoned so they cannot hold the drain up.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Drain {
        let drain = Drain {
            permits: self.permits.clone(),
            max_connections: u32::try_from(self.limits.max_connections).unwrap_or(u32::MAX),
        };
        loop {
            let accepted = tokio::select! {
                accepted = self.tcp.accept() => accepted,
                () = stopped(&mut shutdown) => return drain,
            };
            let (tcp, remote_addr) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Running out of file descriptors must not end the loop: back off
                    // briefly so the error is not spun on, then keep accepting.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                self.metrics.limit_refusal("max_connections");
                tracing::debug!(remote = %remote_addr, "connection closed at accept: limits.max_connections reached");
                continue;
            };
            let address = ClientKey::Address(remote_addr.ip().to_canonical());
            let Some(client_slot) = self.clients.take(address) else {
                self.metrics.limit_refusal("max_connections_per_client");
                tracing::debug!(remote = %remote_addr, "connection closed at accept: limits.max_connections_per_client reached for its address");
                continue;
            };
            // One deadline from here to the caller's first SETTINGS, TLS included.
            let greeting_deadline = Instant::now() + self.limits.handshake_timeout.get();
            let _ = tcp.set_nodelay(true);
            let connection = Connection {
                tcp,
                greeting_deadline,
                remote_addr,
                tls: self.tls.clone(),
                server: self.server.clone(),
                limits: self.limits.clone(),
                shutdown: shutdown.clone(),
                metrics: self.metrics.clone(),
                clients: self.clients.clone(),
            };
            tokio::spawn(async move {
                let metrics = connection.metrics.clone();
                metrics.connections.inc();
                connection.serve().await;
                metrics.connections.dec();
                drop((client_slot, permit));
            });
        }
    }
}

async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

struct Connection<S> {
    tcp: TcpStream,
    greeting_deadline: Instant,
    remote_addr: SocketAddr,
    tls: Option<Arc<ReloadableTls>>,
    server: Server<S>,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    clients: Arc<ClientSlots>,
}

impl<S: ChainService> Connection<S> {
    async fn serve(mut self) {
        let remote_addr = self.remote_addr;
        let Some(tls) = self.tls.take() else {
            let info = ConnectionInfo::new(remote_addr, None);
            let (server, limits, mut shutdown) = (
                self.server.clone(),
                self.limits.clone(),
                self.shutdown.clone(),
            );
            let (tcp, deadline, metrics) = (self.tcp, self.greeting_deadline, &self.metrics);
            let greeting = Greeting { deadline, metrics };
            return run_http2(&server, tcp, info, &limits, &mut shutdown, greeting).await;
        };
        let handshake =
            tokio::time::timeout_at(self.greeting_deadline, tls.acceptor().accept(self.tcp));
        let stream = tokio::select! {
            result = handshake => result,
            () = stopped(&mut self.shutdown) => return,
        };
        let failed = |reason: &'static str, detail: &str| {
            self.metrics.tls_handshake_error(reason);
            handshake_failed(remote_addr, reason, detail);
        };
        let stream = match stream {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => return failed(classify(&error), &error.to_string()),
            Err(_) => return failed("timeout", "no handshake within limits.handshake_timeout"),
        };
        let peer = match stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
        {
            None => None,
            Some(der) => match PeerIdentity::from_der(der) {
                Ok(identity) => Some(identity),
                Err(error) => return failed("bad_certificate", &error),
            },
        };
        // One certificate's share, wherever its connections come from.
        let _peer_slot = match &peer {
            None => None,
            Some(peer) => match self.clients.take(ClientKey::Peer(peer.name().into())) {
                Some(slot) => Some(slot),
                None => {
                    self.metrics.limit_refusal("max_connections_per_client");
                    tracing::debug!(remote = %remote_addr, peer = peer.name(), "connection closed: limits.max_connections_per_client reached for its certificate");
                    return;
                }
            },
        };
        let info = ConnectionInfo::new(remote_addr, peer);
        let greeting = Greeting {
            deadline: self.greeting_deadline,
            metrics: &self.metrics,
        };
        run_http2(
            &self.server,
            stream,
            info,
            &self.limits,
            &mut self.shutdown,
            greeting,
        )
        .await;
    }
}

/// Who a connection is counted against for `limits.max_connections_per_client`.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
enum ClientKey {
    Address(IpAddr),
    /// The verified client certificate's identity.
    Peer(Box<str>),
}

/// Open connections per client. Entries exist only while a connection is open, so the
/// table never holds more than two entries per open connection.
struct ClientSlots {
    cap: usize,
    open: Mutex<HashMap<ClientKey, usize>>,
}

impl ClientSlots {
    /// A slot for `key`, or `None` when it already has `cap` connections open.
    fn take(self: &Arc<Self>, key: ClientKey) -> Option<ClientSlot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(key.clone()).or_insert(0);
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            slots: self.clone(),
            key,
        })
    }
}

/// One open connection's place in [`ClientSlots`], given back when dropped.
struct ClientSlot {
    slots: Arc<ClientSlots>,
    key: ClientKey,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// When the caller's HTTP/2 greeting must have arrived, and where a late one is counted.
struct Greeting<'a> {
    deadline: Instant,
    metrics: &'a Metrics,
}

/// Serves HTTP/2 until the client leaves, sending GOAWAY (and letting open calls finish)
/// when the connection has idled for `idle_timeout`, reached `max_connection_age`, or
/// the sidecar starts draining. Until the caller's preface and first SETTINGS have
/// arrived, the connection is dropped instead: at `greeting.deadline`, or when any of
/// those fire.
async fn run_http2<S: ChainService, I>(
    server: &Server<S>,
    io: I,
    info: ConnectionInfo,
    limits: &Limits,
    shutdown: &mut watch::Receiver<bool>,
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
    let connection = server.serve(io, info, activity.clone());
    tokio::pin!(connection);
    let late = tokio::time::sleep_until(greeting.deadline);
    tokio::pin!(late);
    // `greeted` turns true once the SETTINGS arrived; `watching` stops once the
    // watcher has spoken either way (a dropped sender means the connection is gone).
    let (mut greeted, mut watching) = (false, true);
    let age = async {
        match limits.max_connection_age {
            Some(age) => tokio::time::sleep(age.get()).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(age);
    let idle = activity.idle_for(limits.idle_timeout.get());
    tokio::pin!(idle);
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
            () = stopped(shutdown), if !closing => {}
            () = &mut age, if !closing => tracing::debug!(remote = %remote_addr, "limits.max_connection_age reached"),
            () = &mut idle, if !closing => tracing::debug!(remote = %remote_addr, "limits.idle_timeout reached"),
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
fn classify(error: &std::io::Error) -> &'static str {
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

fn handshake_failed(remote_addr: SocketAddr, reason: &str, detail: &str) {
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
