//! The accept loop every listener runs, whatever the connections come from: TCP with
//! TLS (inbound), loopback TCP or a Unix socket (outbound). A bounded number of
//! connections, and per client address and per client certificate at most
//! `limits.max_connections_per_client` (inbound); each given one fixed time from accept
//! to the caller's HTTP/2 preface and first SETTINGS, the TLS handshake included, and
//! then served by [`super::connection`]. Accept errors (out of file descriptors) are
//! backed off, never the end of the loop.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::connection::{Greeting, classify, handshake_failed, run_http2};
use super::server::{ChainService, Server};
use crate::config::Limits;
use crate::metrics::Metrics;
use crate::tls::{ConnectionInfo, PeerIdentity, ReloadableTls};

/// Where a listener's connections come from.
pub enum Socket {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Socket {
    /// Where it listens, for the start-up log line.
    pub fn describe(&self) -> String {
        match self {
            Socket::Tcp(tcp) => tcp
                .local_addr()
                .map_or_else(|error| error.to_string(), |a| a.to_string()),
            Socket::Unix(unix) => unix
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(|p| format!("unix:{}", p.display())))
                .unwrap_or_else(|| "unix:?".to_owned()),
        }
    }

    async fn accept(&self) -> std::io::Result<Accepted> {
        Ok(match self {
            Socket::Tcp(tcp) => {
                let (stream, remote) = tcp.accept().await?;
                let _ = stream.set_nodelay(true);
                Accepted::Tcp(stream, remote)
            }
            Socket::Unix(unix) => Accepted::Unix(unix.accept().await?.0),
        })
    }
}

/// One accepted connection.
enum Accepted {
    Tcp(TcpStream, SocketAddr),
    Unix(UnixStream),
}

impl Accepted {
    /// The client's address; a Unix socket's client has none, and is shown as
    /// `0.0.0.0:0`.
    fn remote(&self) -> SocketAddr {
        match self {
            Accepted::Tcp(_, remote) => *remote,
            Accepted::Unix(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        }
    }
}

/// Connections the app may hold open to the outbound port: one per destination its
/// gRPC clients call (a channel each) with room to spare. More are refused at accept,
/// like connections over `limits.max_connections`; the memory budget counts these.
pub const APP_CONNECTIONS: usize = 16;

/// Accepts connections and hands each to the HTTP/2 server, which runs the chain `S`.
pub struct Listener<S> {
    socket: Socket,
    tls: Option<Arc<ReloadableTls>>,
    server: Server<S>,
    limits: Limits,
    metrics: Arc<Metrics>,
    permits: Arc<Semaphore>,
    /// Per client address and certificate; `None`: one client only (the app, outbound).
    clients: Option<Arc<ClientSlots>>,
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
    /// A listener on `socket` whose connections are served by `server`, with TLS when
    /// `tls` is set and `limits.max_connections_per_client` per client address and
    /// certificate.
    pub fn new(
        socket: Socket,
        tls: Option<Arc<ReloadableTls>>,
        server: Server<S>,
        limits: &Limits,
        metrics: Arc<Metrics>,
    ) -> Self {
        let clients = Arc::new(ClientSlots {
            cap: limits.connections_per_client(),
            open: Mutex::default(),
        });
        Listener {
            socket,
            tls,
            server,
            limits: limits.clone(),
            metrics,
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            clients: Some(clients),
        }
    }

    /// The app's own listener (outbound): plaintext, and every connection the one
    /// client's, so only a connection cap bounds them: `limits.max_connections`, and at
    /// most [`APP_CONNECTIONS`].
    pub fn for_the_app(
        socket: Socket,
        server: Server<S>,
        limits: &Limits,
        metrics: Arc<Metrics>,
    ) -> Self {
        let limits = Limits {
            max_connections: limits.max_connections.min(APP_CONNECTIONS),
            ..limits.clone()
        };
        Listener {
            clients: None,
            ..Listener::new(socket, None, server, &limits, metrics)
        }
    }

    /// Accepts until `stop` is cancelled, then stops listening and returns the [`Drain`]
    /// of the connections still open; each of them has been told to GOAWAY. Handshakes
    /// still in progress are abandoned so they cannot hold the drain up.
    pub async fn run(self, stop: CancellationToken) -> Drain {
        let drain = Drain {
            permits: self.permits.clone(),
            max_connections: u32::try_from(self.limits.max_connections).unwrap_or(u32::MAX),
        };
        loop {
            let accepted = tokio::select! {
                accepted = self.socket.accept() => accepted,
                () = stop.cancelled() => return drain,
            };
            let accepted = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Running out of file descriptors must not end the loop: back off
                    // briefly so the error is not spun on, then keep accepting.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let remote_addr = accepted.remote();
            let Ok(permit) = self.permits.clone().try_acquire_owned() else {
                self.metrics.limit_refusal("max_connections");
                tracing::debug!(remote = %remote_addr, "connection closed at accept: limits.max_connections reached");
                continue;
            };
            let client_slot = match &self.clients {
                None => None,
                Some(clients) => {
                    let address = ClientKey::Address(remote_addr.ip().to_canonical());
                    let Some(slot) = clients.take(address) else {
                        self.metrics.limit_refusal("max_connections_per_client");
                        tracing::debug!(remote = %remote_addr, "connection closed at accept: limits.max_connections_per_client reached for its address");
                        continue;
                    };
                    Some(slot)
                }
            };
            let connection = Connection {
                // One deadline from here to the caller's first SETTINGS, TLS included.
                greeting_deadline: crate::clock::instant_after(self.limits.handshake_timeout.get()),
                remote_addr,
                tls: self.tls.clone(),
                server: self.server.clone(),
                limits: self.limits.clone(),
                shutdown: stop.child_token(),
                metrics: self.metrics.clone(),
                clients: self.clients.clone(),
            };
            tokio::spawn(async move {
                let metrics = connection.metrics.clone();
                metrics.connections.inc();
                connection.serve(accepted).await;
                metrics.connections.dec();
                drop((client_slot, permit));
            });
        }
    }
}

struct Connection<S> {
    greeting_deadline: Instant,
    remote_addr: SocketAddr,
    tls: Option<Arc<ReloadableTls>>,
    server: Server<S>,
    limits: Limits,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
    clients: Option<Arc<ClientSlots>>,
}

impl<S: ChainService> Connection<S> {
    async fn serve(self, accepted: Accepted) {
        match accepted {
            Accepted::Unix(unix) => self.plaintext(unix).await,
            Accepted::Tcp(tcp, _) => match self.tls.clone() {
                None => self.plaintext(tcp).await,
                Some(tls) => self.tls(tcp, &tls).await,
            },
        }
    }

    async fn plaintext<I>(self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let info = ConnectionInfo::new(self.remote_addr, None);
        let greeting = Greeting {
            deadline: self.greeting_deadline,
            metrics: &self.metrics,
        };
        run_http2(
            &self.server,
            io,
            info,
            &self.limits,
            &self.shutdown,
            greeting,
        )
        .await;
    }

    async fn tls(self, tcp: TcpStream, tls: &ReloadableTls) {
        let remote_addr = self.remote_addr;
        let handshake = tokio::time::timeout_at(self.greeting_deadline, tls.acceptor().accept(tcp));
        let stream = tokio::select! {
            result = handshake => result,
            () = self.shutdown.cancelled() => return,
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
        let _peer_slot = match (&peer, &self.clients) {
            (Some(peer), Some(clients)) => match clients.take(ClientKey::Peer(peer.key().into())) {
                Some(slot) => Some(slot),
                None => {
                    self.metrics.limit_refusal("max_connections_per_client");
                    tracing::debug!(remote = %remote_addr, peer = peer.name(), "connection closed: limits.max_connections_per_client reached for its certificate");
                    return;
                }
            },
            _ => None,
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
            &self.shutdown,
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
