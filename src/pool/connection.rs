//! Opening one HTTP/2 connection to a target (a socket the pool dials, or a byte stream a
//! [`Connect`] hands it), and the stream accounting each connection carries: how many
//! streams gatehouse holds on it, how many wait for the target's window, and whether the
//! target has closed it.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::Bytes;
use h2::client::SendRequest;
use tokio::net::{TcpStream, UnixStream};

use super::stall::Shared;
use super::{Error, Pool, STREAM_WINDOW, STREAMS_PER_CONNECTION};
use crate::config::Target;

/// A connection's byte stream, whatever carries it.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Io for T {}

/// Opens the byte stream of each new connection, for targets that need more than a
/// socket: mutual TLS to an outbound destination. The pool speaks HTTP/2 over what it
/// returns, exactly as over a socket it dialled itself. An error is reported as
/// [`Error::Connect`] with the error as its source, so the caller can tell its kinds
/// apart.
pub trait Connect: Send + Sync + 'static {
    fn connect(&self) -> Connecting<'_>;
}

/// A connection being opened by a [`Connect`].
pub type Connecting<'a> =
    std::pin::Pin<Box<dyn Future<Output = std::io::Result<Box<dyn Io>>> + Send + 'a>>;

/// One HTTP/2 connection and the streams gatehouse has open on it.
pub(super) struct Connection {
    pub(super) id: u64,
    pub(super) sender: SendRequest<Bytes>,
    /// Streams gatehouse holds on this connection.
    pub(super) open: AtomicUsize,
    /// Streams whose request data waits for send capacity.
    pub(super) starved: AtomicUsize,
    /// Streams that have waited for send capacity longer than
    /// [`WEDGED_AFTER`](super::WEDGED_AFTER): the target stopped reading them, and the
    /// connection does not count toward the limit.
    pub(super) wedged: AtomicUsize,
    /// The pool's: waiting calls, and wedged streams per owner.
    pub(super) shared: Arc<Shared>,
    /// The connection ended, or the target said GOAWAY: no new streams.
    pub(super) closed: AtomicBool,
}

impl Connection {
    pub(super) fn has_room(&self) -> bool {
        let limit = self
            .sender
            .current_max_send_streams()
            .min(STREAMS_PER_CONNECTION);
        !self.closed.load(Ordering::Acquire) && self.open.load(Ordering::Acquire) < limit
    }
}

/// A stream slot on a connection, given back when dropped.
pub(super) struct Lease {
    pub(super) connection: Arc<Connection>,
}

impl Lease {
    pub(super) fn new(connection: &Arc<Connection>) -> Self {
        connection.open.fetch_add(1, Ordering::AcqRel);
        Lease {
            connection: connection.clone(),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.connection.open.fetch_sub(1, Ordering::AcqRel);
        self.connection.shared.changed.notify_waiters();
    }
}

impl Pool {
    pub(super) async fn dial(&self) -> Result<Arc<Connection>, Error> {
        let after = self.settings.connect_timeout;
        match tokio::time::timeout(after, self.connect()).await {
            Ok(result) => result,
            Err(_) => Err(Error::ConnectTimeout {
                target: self.target.clone(),
                after,
            }),
        }
    }

    async fn connect(&self) -> Result<Arc<Connection>, Error> {
        let unreachable = |source| Error::Connect {
            target: self.target.clone(),
            source,
        };
        if let Some(connector) = &self.connector {
            let stream = connector.connect().await.map_err(unreachable)?;
            return self.handshake(stream, true).await;
        }
        match &self.target {
            Target::Tcp(address) => {
                let stream = TcpStream::connect(address.as_str())
                    .await
                    .map_err(unreachable)?;
                stream.set_nodelay(true).map_err(unreachable)?;
                // Huffman coding only saves bytes on the wire, which cost nothing on
                // loopback; the CPU it takes is a tenth of a proxied call's.
                let remote = !stream.peer_addr().is_ok_and(|peer| peer.ip().is_loopback());
                self.handshake(stream, remote).await
            }
            Target::Unix(path) => {
                let stream = UnixStream::connect(path).await.map_err(unreachable)?;
                self.handshake(stream, false).await
            }
        }
    }

    /// `huffman`: whether header strings are Huffman-coded, worth it only where the
    /// connection's bytes are not free.
    async fn handshake<I>(&self, io: I, huffman: bool) -> Result<Arc<Connection>, Error>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let failed = |source| Error::Handshake {
            target: self.target.clone(),
            source,
        };
        let (sender, mut connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(STREAM_WINDOW * STREAMS_PER_CONNECTION as u32)
            .enable_push(false)
            .max_header_list_size(self.settings.max_header_list)
            .hpack_huffman(huffman)
            // Until the target's SETTINGS arrive, one stream at a time.
            .initial_max_send_streams(1)
            .handshake::<_, Bytes>(io)
            .await
            .map_err(failed)?;
        let mut ping = connection.ping_pong();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let opened = Arc::new(Connection {
            id,
            sender,
            open: AtomicUsize::new(0),
            starved: AtomicUsize::new(0),
            wedged: AtomicUsize::new(0),
            shared: self.shared.clone(),
            closed: AtomicBool::new(false),
        });
        let watched = opened.clone();
        let shared = self.shared.clone();
        let target = self.target.clone();
        tokio::spawn(async move {
            match connection.await {
                Ok(()) => tracing::debug!(upstream = %target, connection = id, "connection closed"),
                Err(error) => {
                    tracing::warn!(upstream = %target, connection = id, %error, "connection failed")
                }
            }
            watched.closed.store(true, Ordering::Release);
            shared.changed.notify_waiters();
        });
        // The target's SETTINGS come before its answer to a PING (its preface must open
        // with them), so once the PONG is here the stream limit is the target's own and
        // calls are never sent into a limit they would be refused by. One PING per
        // connection, at its start, is within what any server's ping policy allows.
        if let Some(ping) = ping.as_mut() {
            ping.ping(h2::Ping::opaque()).await.map_err(failed)?;
        }
        tracing::debug!(
            upstream = %self.target,
            connection = id,
            max_streams = opened.sender.current_max_send_streams(),
            "connected"
        );
        Ok(opened)
    }
}
