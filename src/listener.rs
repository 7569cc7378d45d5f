//! The accept loop: a bounded number of connections, each given a fixed time to finish
//! its TLS handshake before HTTP/2 is spoken on it; each closed with GOAWAY when it has
//! been idle too long, has reached its maximum age, or the sidecar drains.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::config::Limits;
use crate::metrics::Metrics;
use crate::server::{Activity, ConnectionInfo, Server};
use crate::tls::{PeerIdentity, ReloadableTls};

/// Accepts connections and hands each to the HTTP/2 server.
pub struct Listener {
    tcp: TcpListener,
    tls: Option<Arc<ReloadableTls>>,
    server: Server,
    limits: Limits,
    metrics: Arc<Metrics>,
    permits: Arc<Semaphore>,
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

impl Listener {
    pub fn new(
        tcp: TcpListener,
        tls: Option<Arc<ReloadableTls>>,
        server: Server,
        limits: &Limits,
        metrics: Arc<Metrics>,
    ) -> Self {
        let permits = Arc::new(Semaphore::new(limits.max_connections));
        Listener {
            tcp,
            tls,
            server,
            limits: limits.clone(),
            metrics,
            permits,
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
                tracing::debug!(remote = %remote_addr, "connection closed at accept: limits.max_connections reached");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let connection = Connection {
                tcp,
                remote_addr,
                tls: self.tls.clone(),
                server: self.server.clone(),
                limits: self.limits.clone(),
                shutdown: shutdown.clone(),
                metrics: self.metrics.clone(),
            };
            tokio::spawn(async move {
                let metrics = connection.metrics.clone();
                metrics.connections.inc();
                connection.serve().await;
                metrics.connections.dec();
                drop(permit);
            });
        }
    }
}

async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

struct Connection {
    tcp: TcpStream,
    remote_addr: SocketAddr,
    tls: Option<Arc<ReloadableTls>>,
    server: Server,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
}

impl Connection {
    async fn serve(mut self) {
        let remote_addr = self.remote_addr;
        let Some(tls) = self.tls.take() else {
            let info = ConnectionInfo::new(remote_addr, None);
            let (server, limits, mut shutdown) = (
                self.server.clone(),
                self.limits.clone(),
                self.shutdown.clone(),
            );
            return run_http2(&server, self.tcp, info, &limits, &mut shutdown).await;
        };
        let handshake = tokio::time::timeout(
            self.limits.handshake_timeout.get(),
            tls.acceptor().accept(self.tcp),
        );
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
        let info = ConnectionInfo::new(remote_addr, peer);
        run_http2(&self.server, stream, info, &self.limits, &mut self.shutdown).await;
    }
}

/// Serves HTTP/2 until the client leaves, sending GOAWAY (and letting open calls finish)
/// when the connection has idled for `idle_timeout`, reached `max_connection_age`, or
/// the sidecar starts draining.
async fn run_http2<I>(
    server: &Server,
    io: I,
    info: ConnectionInfo,
    limits: &Limits,
    shutdown: &mut watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let remote_addr = info.remote_addr;
    let activity = Arc::new(Activity::default());
    let connection = server.serve(io, info, activity.clone());
    tokio::pin!(connection);
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
            () = stopped(shutdown), if !closing => {}
            () = &mut age, if !closing => tracing::debug!(remote = %remote_addr, "limits.max_connection_age reached"),
            () = &mut idle, if !closing => tracing::debug!(remote = %remote_addr, "limits.idle_timeout reached"),
        }
        connection.as_mut().graceful_shutdown();
        closing = true;
    };
    if let Err(error) = served {
        tracing::debug!(remote = %remote_addr, %error, "connection ended with an error");
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
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    if LAST_HANDSHAKE_LOG.swap(now, Ordering::Relaxed) != now {
        tracing::warn!(remote = %remote_addr, reason, detail, "TLS handshake failed");
    } else {
        tracing::debug!(remote = %remote_addr, reason, detail, "TLS handshake failed");
    }
}
