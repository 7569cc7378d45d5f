//! The accept loop: a bounded number of connections, each given a fixed time to finish
//! its TLS handshake before HTTP/2 is spoken on it, and all of them drained on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::config::Limits;
use crate::metrics::Metrics;
use crate::server::{ConnectionInfo, Server};
use crate::tls::PeerIdentity;

/// Accepts connections and hands each to the HTTP/2 server.
pub struct Listener {
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
    server: Server,
    max_connections: usize,
    handshake_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl Listener {
    pub fn new(
        tcp: TcpListener,
        tls: Option<TlsAcceptor>,
        server: Server,
        limits: &Limits,
        metrics: Arc<Metrics>,
    ) -> Self {
        Listener {
            tcp,
            tls,
            server,
            max_connections: limits.max_connections,
            handshake_timeout: limits.handshake_timeout.get(),
            metrics,
        }
    }

    /// Accepts until `shutdown` turns true. Connections are registered with `graceful`,
    /// which sends each a GOAWAY when the drain starts; handshakes still in progress
    /// at that moment are abandoned so they cannot hold the drain up.
    pub async fn run(self, graceful: &GracefulShutdown, mut shutdown: watch::Receiver<bool>) {
        let permits = Arc::new(Semaphore::new(self.max_connections));
        loop {
            let accepted = tokio::select! {
                accepted = self.tcp.accept() => accepted,
                _ = shutdown.wait_for(|stop| *stop) => return,
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
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                tracing::debug!(remote = %remote_addr, "connection closed at accept: limits.max_connections reached");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let connection = Connection {
                tcp,
                remote_addr,
                tls: self.tls.clone(),
                server: self.server.clone(),
                handshake_timeout: self.handshake_timeout,
                watcher: graceful.watcher(),
                shutdown: shutdown.clone(),
                metrics: self.metrics.clone(),
            };
            tokio::spawn(async move {
                connection.metrics.connections.inc();
                let metrics = connection.metrics.clone();
                connection.serve().await;
                metrics.connections.dec();
                drop(permit);
            });
        }
    }
}

struct Connection {
    tcp: TcpStream,
    remote_addr: SocketAddr,
    tls: Option<TlsAcceptor>,
    server: Server,
    handshake_timeout: Duration,
    watcher: Watcher,
    shutdown: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
}

impl Connection {
    async fn serve(mut self) {
        let remote_addr = self.remote_addr;
        let Some(acceptor) = self.tls.take() else {
            let info = ConnectionInfo::new(remote_addr, None);
            let served = self.watcher.watch(self.server.serve(self.tcp, info)).await;
            log_connection_end(remote_addr, served);
            return;
        };
        let handshake = tokio::time::timeout(self.handshake_timeout, acceptor.accept(self.tcp));
        let stream = tokio::select! {
            result = handshake => result,
            _ = self.shutdown.wait_for(|stop| *stop) => return,
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
        let served = self.watcher.watch(self.server.serve(stream, info)).await;
        log_connection_end(remote_addr, served);
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

fn log_connection_end(remote_addr: SocketAddr, served: Result<(), hyper::Error>) {
    if let Err(error) = served {
        tracing::debug!(remote = %remote_addr, %error, "connection ended with an error");
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
