//! The mutual-TLS HTTP/2 connections to one destination: its name resolved to every
//! address it has (again every [`RESOLVE_EVERY`] and after any failure), one connection
//! per address, calls spread round robin over the addresses, an address that fails to
//! connect or to prove its identity backed off (doubling from [`BACKOFF_MIN`] to
//! [`BACKOFF_MAX`]) while the others take its calls. The destination's certificate and
//! identity are verified in the handshake (see [`crate::tls::IdentityVerifier`]).
//!
//! Every failure says which of the three things went wrong, because each needs a
//! different fix: the chain did not verify (`UPSTREAM_TLS`: wrong CA, expired, wrong
//! server name), it verified but is not the service the app asked for
//! (`IDENTITY_MISMATCH`), or no address answered at all (`NO_ENDPOINT`).

use std::error::Error as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::body::RequestBody;
use crate::grpc::{self, Code};
use crate::tls::{ClientTls, IdentityMismatch, PeerPattern};

type Sender = http2::SendRequest<RequestBody>;

/// A live connection and the destination identity its handshake verified.
#[derive(Clone)]
struct Live {
    sender: Sender,
    peer: Arc<str>,
    /// The client TLS material it was made with; see [`ClientTls::generation`].
    generation: u64,
}

/// Why a call could not reach its destination, or failed before it answered.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The handshake failed: the chain, its dates or the server name did not verify,
    /// or the server spoke no TLS or no HTTP/2.
    #[error("UPSTREAM_TLS: {destination} ({address}): {message}")]
    Tls {
        destination: Arc<str>,
        address: String,
        message: String,
    },
    /// The certificate verified but carries none of the destination's identities.
    #[error("IDENTITY_MISMATCH: {destination} ({address}): {source}")]
    Identity {
        destination: Arc<str>,
        address: String,
        #[source]
        source: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// The address did not resolve, or no resolved address accepted a connection.
    #[error("NO_ENDPOINT: {destination} ({address}): {message}")]
    NoEndpoint {
        destination: Arc<str>,
        address: String,
        message: String,
    },
    /// The destination reset the stream or the connection died before it answered.
    #[error("{message}")]
    Stream {
        destination: Arc<str>,
        code: Code,
        message: String,
    },
}

impl Failure {
    /// The status the app receives.
    pub fn code(&self) -> Code {
        match self {
            Failure::Stream { code, .. } => *code,
            _ => Code::Unavailable,
        }
    }

    pub fn response(&self) -> Response<crate::body::ResponseBody> {
        grpc::status_response(self.code(), &self.to_string())
    }
}

/// Connections to one destination.
pub struct Endpoint {
    destination: Arc<str>,
    address: String,
    server_name: ServerName<'static>,
    identities: Arc<[PeerPattern]>,
    tls: Arc<ClientTls>,
    connect_timeout: Duration,
    builder: http2::Builder<TokioExecutor>,
    /// Where the name resolves to, and a connection (or a backoff) per address.
    /// A std mutex is enough: it is never held across an await.
    slots: Mutex<Slots>,
    /// One dial at a time, so a burst of calls opens one connection, not one per call.
    dialing: tokio::sync::Mutex<()>,
    /// Stands in for the resolver in tests, which cannot make a name resolve to several
    /// loopback addresses.
    #[cfg(test)]
    resolved: Option<Vec<SocketAddr>>,
}

/// The resolved addresses of a destination, in the order the resolver gave them.
#[derive(Default)]
struct Slots {
    slots: Vec<Slot>,
    /// When the name was last resolved; `None`: resolve before the next call.
    resolved_at: Option<Instant>,
    /// Where the next call's round starts.
    next: usize,
}

/// One address of a destination.
struct Slot {
    address: SocketAddr,
    live: Option<Live>,
    /// Dials that failed in a row; each doubles the backoff.
    failures: u32,
    /// Until then the address is tried only when every other one has failed too.
    retry_at: Option<Instant>,
}

/// How often a destination's name is resolved again while it works.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(30);
/// The first backoff of a failing address, doubled per failure up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(250);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

impl Slots {
    /// Replaces the address list, keeping the connection and backoff of every address
    /// that is still in it.
    fn update(&mut self, addresses: Vec<SocketAddr>, now: Instant) {
        let mut old = std::mem::take(&mut self.slots);
        self.slots = addresses
            .into_iter()
            .map(
                |address| match old.iter().position(|s| s.address == address) {
                    Some(at) => old.swap_remove(at),
                    None => Slot {
                        address,
                        live: None,
                        failures: 0,
                        retry_at: None,
                    },
                },
            )
            .collect();
        self.resolved_at = Some(now);
    }

    /// This call's order: round robin over the addresses not backed off, then the
    /// backed-off ones, soonest retry first.
    fn order(&mut self, now: Instant) -> Vec<SocketAddr> {
        let count = self.slots.len();
        if count == 0 {
            return Vec::new();
        }
        let start = self.next % count;
        self.next = self.next.wrapping_add(1);
        let rotated = (0..count).map(|i| &self.slots[(start + i) % count]);
        let (ready, mut waiting): (Vec<&Slot>, Vec<&Slot>) =
            rotated.partition(|slot| slot.retry_at.is_none_or(|at| at <= now));
        waiting.sort_by_key(|slot| slot.retry_at);
        ready
            .into_iter()
            .chain(waiting)
            .map(|s| s.address)
            .collect()
    }

    fn slot(&mut self, address: SocketAddr) -> Option<&mut Slot> {
        self.slots.iter_mut().find(|s| s.address == address)
    }

    fn failed(&mut self, address: SocketAddr, now: Instant) {
        if let Some(slot) = self.slot(address) {
            slot.live = None;
            slot.failures = slot.failures.saturating_add(1);
            let backoff = BACKOFF_MIN
                .saturating_mul(1 << slot.failures.min(8).saturating_sub(1))
                .min(BACKOFF_MAX);
            slot.retry_at = Some(now + backoff);
        }
        // An address that fails may have moved: look the name up again.
        self.resolved_at = None;
    }

    /// The connection to `address` closed; the address itself is not suspect.
    fn dropped(&mut self, address: SocketAddr) {
        if let Some(slot) = self.slot(address) {
            slot.live = None;
        }
    }

    fn connected(&mut self, address: SocketAddr, live: Live) {
        if let Some(slot) = self.slot(address) {
            slot.live = Some(live);
            slot.failures = 0;
            slot.retry_at = None;
        }
    }
}

/// The status for a destination's stream that failed: its reset reason mapped as the
/// gRPC HTTP/2 mapping says, or UNAVAILABLE when the connection was lost.
pub fn stream_status(destination: &str, error: &hyper::Error) -> (Code, String) {
    let h2_error = error
        .source()
        .and_then(|source| source.downcast_ref::<h2::Error>());
    match h2_error.and_then(|e| e.reason().filter(|_| e.is_remote())) {
        Some(reason) => (
            grpc::code_for_reset(reason),
            format!("{destination} reset the stream: {reason}"),
        ),
        None => (
            Code::Unavailable,
            format!("connection to {destination} lost: {error}"),
        ),
    }
}

/// Receive window of one stream from a destination, in bytes.
pub const DESTINATION_STREAM_WINDOW: u32 = 256 * 1024;
/// Receive window of one destination connection, shared by its streams, in bytes.
pub const DESTINATION_CONNECTION_WINDOW: u32 = 1024 * 1024;
/// Request bytes buffered per stream toward a destination, in bytes.
pub const DESTINATION_SEND_BUFFER: usize = 64 * 1024;

/// How long one address may take to accept TCP and finish the TLS and HTTP/2 handshakes.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl Endpoint {
    pub fn new(
        destination: Arc<str>,
        address: String,
        server_name: ServerName<'static>,
        identities: Arc<[PeerPattern]>,
        tls: Arc<ClientTls>,
    ) -> Self {
        let mut builder = http2::Builder::new(TokioExecutor::new());
        // Destinations are across the network, unlike the app: pings find a dead peer
        // that never sent a FIN. Once a minute stays within what grpc-go servers allow
        // while calls are open.
        builder
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(60))
            .keep_alive_timeout(Duration::from_secs(20))
            // What a destination can make gatehouse hold per connection while the app
            // is slow to read: explicit, rather than hyper's multi-MiB defaults.
            .initial_stream_window_size(DESTINATION_STREAM_WINDOW)
            .initial_connection_window_size(DESTINATION_CONNECTION_WINDOW)
            .max_send_buf_size(DESTINATION_SEND_BUFFER)
            .initial_max_send_streams(1);
        Endpoint {
            destination,
            address,
            server_name,
            identities,
            tls,
            connect_timeout: CONNECT_TIMEOUT,
            builder,
            slots: Mutex::new(Slots::default()),
            dialing: tokio::sync::Mutex::new(()),
            #[cfg(test)]
            resolved: None,
        }
    }

    /// Sends `request` and returns the destination's response headers, its body
    /// streaming, and the verified identity of the server that answered (its SPIFFE ID
    /// or first SAN). Dropping the future or the body resets the destination's stream.
    pub async fn send(
        &self,
        mut request: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Arc<str>), Failure> {
        // A request the connection never took (it closed as the call picked it) is
        // sent again, on a fresh connection; a bound keeps a flapping peer from looping.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (address, live) = self.sender().await?;
            match live.sender.clone().try_send_request(request).await {
                Ok(response) => return Ok((response, live.peer)),
                Err(mut error) => match error.take_message() {
                    Some(unsent) if attempts < 3 => {
                        self.slots().dropped(address);
                        request = unsent;
                    }
                    _ => return Err(self.stream_failure(error.error())),
                },
            }
        }
    }

    fn stream_failure(&self, error: &hyper::Error) -> Failure {
        let (code, message) = stream_status(&self.destination, error);
        Failure::Stream {
            destination: self.destination.clone(),
            code,
            message,
        }
    }

    /// Every address the destination's name resolves to.
    async fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        #[cfg(test)]
        if let Some(fixed) = &self.resolved {
            return Ok(fixed.clone());
        }
        Ok(tokio::net::lookup_host(self.address.as_str())
            .await?
            .collect())
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connection to `address` new calls may use. One made before the client
    /// certificate was rotated is left to its open calls (they keep their stream; the
    /// connection closes when they end), so new calls present the new certificate.
    fn live(&self, address: SocketAddr) -> Option<Live> {
        let generation = self.tls.generation();
        self.slots()
            .slot(address)
            .and_then(|slot| slot.live.as_ref())
            .filter(|live| !live.sender.is_closed() && live.generation == generation)
            .cloned()
    }

    /// A connection for the next call: round robin over the destination's addresses,
    /// skipping those backed off after a failure while any other works. A TLS or
    /// identity failure is reported over a plain connect failure, since it is the one
    /// that needs fixing.
    async fn sender(&self) -> Result<(SocketAddr, Live), Failure> {
        let no_endpoint = |message: String| Failure::NoEndpoint {
            destination: self.destination.clone(),
            address: self.address.clone(),
            message,
        };
        let stale = self
            .slots()
            .resolved_at
            .is_none_or(|at| at.elapsed() >= RESOLVE_EVERY);
        if stale {
            match self.resolve().await {
                Ok(found) => self.slots().update(found, Instant::now()),
                // Keep the addresses known so far, if any: a resolver hiccup should not
                // take down a destination that answers.
                Err(error) if self.slots().slots.is_empty() => {
                    return Err(no_endpoint(format!("cannot resolve: {error}")));
                }
                Err(error) => {
                    tracing::warn!(destination = %self.destination, %error, "cannot resolve again; keeping the known addresses");
                }
            }
        }
        let order = self.slots().order(Instant::now());
        if order.is_empty() {
            return Err(no_endpoint("resolves to no address".to_owned()));
        }
        let mut worst: Option<Failure> = None;
        for address in order {
            if let Some(live) = self.live(address) {
                return Ok((address, live));
            }
            let dialed = {
                let _dialing = self.dialing.lock().await;
                match self.live(address) {
                    Some(live) => Ok(live),
                    None => tokio::time::timeout(self.connect_timeout, self.connect(address))
                        .await
                        .unwrap_or_else(|_| {
                            Err(no_endpoint(format!(
                                "{address} did not complete a connection within {:?}",
                                self.connect_timeout
                            )))
                        }),
                }
            };
            let failure = match dialed {
                Ok(live) => {
                    self.slots().connected(address, live.clone());
                    return Ok((address, live));
                }
                Err(failure) => failure,
            };
            tracing::debug!(destination = %self.destination, %address, error = %failure, "destination address failed; backing off");
            self.slots().failed(address, Instant::now());
            let keep = matches!(
                (&worst, &failure),
                (None, _)
                    | (
                        Some(Failure::NoEndpoint { .. }),
                        Failure::Tls { .. } | Failure::Identity { .. }
                    )
            );
            if keep {
                worst = Some(failure);
            }
        }
        Err(worst.unwrap_or_else(|| no_endpoint("no address answered".to_owned())))
    }

    async fn connect(&self, address: SocketAddr) -> Result<Live, Failure> {
        let tcp = TcpStream::connect(address)
            .await
            .map_err(|error| Failure::NoEndpoint {
                destination: self.destination.clone(),
                address: self.address.clone(),
                message: format!("{address}: {error}"),
            })?;
        let _ = tcp.set_nodelay(true);
        let generation = self.tls.generation();
        let connector = self.tls.connector(self.identities.clone());
        let tls = connector
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|error| self.handshake_failure(address, error))?;
        let peer: Arc<str> = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| crate::tls::PeerIdentity::from_der(leaf).ok())
            .map_or_else(|| Arc::from("unknown"), |peer| Arc::from(peer.name()));
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(Failure::Tls {
                destination: self.destination.clone(),
                address: self.address.clone(),
                message: format!("{address} did not agree to HTTP/2 (ALPN h2)"),
            });
        }
        let (sender, connection) =
            self.builder
                .handshake(TokioIo::new(tls))
                .await
                .map_err(|error| Failure::Tls {
                    destination: self.destination.clone(),
                    address: self.address.clone(),
                    message: format!("{address}: HTTP/2 handshake failed: {error}"),
                })?;
        let destination = self.destination.clone();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%destination, %error, "destination connection ended");
            }
        });
        Ok(Live {
            sender,
            peer,
            generation,
        })
    }

    fn handshake_failure(&self, address: SocketAddr, error: std::io::Error) -> Failure {
        let rustls_error = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        if let Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))) =
            rustls_error
            && other.0.downcast_ref::<IdentityMismatch>().is_some()
        {
            return Failure::Identity {
                destination: self.destination.clone(),
                address: self.address.clone(),
                source: other.0.clone(),
            };
        }
        Failure::Tls {
            destination: self.destination.clone(),
            address: self.address.clone(),
            message: format!("{address}: TLS handshake failed: {error}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, last], 443))
    }

    #[test]
    fn round_robin_skips_backed_off_addresses_and_keeps_state_across_resolves() {
        let now = Instant::now();
        let mut slots = Slots::default();
        slots.update(vec![addr(2), addr(3), addr(4)], now);
        let firsts: Vec<SocketAddr> = (0..3).map(|_| slots.order(now)[0]).collect();
        assert_eq!(firsts, [addr(2), addr(3), addr(4)]);

        slots.failed(addr(3), now);
        assert!(
            slots.resolved_at.is_none(),
            "a failure asks for a new lookup"
        );
        for _ in 0..4 {
            let order = slots.order(now);
            assert_eq!(order.last(), Some(&addr(3)), "{order:?}");
        }
        // The backoff doubles and ends; a success clears it.
        slots.failed(addr(3), now);
        let retry = slots.slot(addr(3)).unwrap().retry_at.unwrap();
        assert_eq!(retry - now, BACKOFF_MIN * 2);
        assert!(slots.order(retry).contains(&addr(3)));

        // A new lookup keeps what is known of addresses still there.
        slots.update(vec![addr(4), addr(3), addr(5)], now);
        assert_eq!(slots.slot(addr(3)).unwrap().failures, 2);
        assert!(slots.slot(addr(2)).is_none());
        assert_eq!(slots.slot(addr(5)).unwrap().failures, 0);
    }

    /// A TLS HTTP/2 server on `ip` that answers every request with `grpc-status: 0`
    /// and counts them.
    async fn server(
        ip: [u8; 4],
        config: Arc<rustls::ServerConfig>,
    ) -> (
        SocketAddr,
        Arc<std::sync::atomic::AtomicUsize>,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from((ip, 0)))
            .await
            .unwrap();
        let address = listener.local_addr().unwrap();
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = count.clone();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, counted) = (acceptor.clone(), counted.clone());
                connections.spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |_| {
                        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        std::future::ready(Ok::<_, std::convert::Infallible>(
                            grpc::status_response(Code::Ok, ""),
                        ))
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        (address, count, task)
    }

    async fn call(endpoint: &Endpoint) -> Result<(), Failure> {
        let request = Request::post("https://dest.test/a.B/C")
            .body(RequestBody::local(bytes::Bytes::new()))
            .expect("a valid request");
        endpoint.send(request).await.map(|_| ())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_share_the_addresses_and_a_dead_one_is_skipped() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("certs-dev");
        let tls = crate::config::Tls {
            cert_file: Some(root.join("server.crt")),
            key_file: Some(root.join("server.key")),
            ca_file: Some(root.join("ca.crt")),
            ..crate::config::Tls::default()
        };
        let server_config = crate::tls::server_config(&tls).unwrap();
        let client = crate::config::ClientTls {
            cert_file: Some(root.join("client-gateway.crt")),
            key_file: Some(root.join("client-gateway.key")),
            ca_file: Some(root.join("ca.crt")),
        };
        let mut servers = Vec::new();
        for last in [2, 3, 4] {
            servers.push(server([127, 0, 0, last], server_config.clone()).await);
        }
        let mut endpoint = Endpoint::new(
            Arc::from("dest"),
            "dest.test:443".to_owned(),
            ServerName::try_from("localhost").unwrap(),
            Arc::from(vec![crate::tls::identity_pattern("dns:localhost").unwrap()]),
            Arc::new(ClientTls::load(&client).unwrap()),
        );
        endpoint.resolved = Some(servers.iter().map(|(address, ..)| *address).collect());
        for _ in 0..9 {
            call(&endpoint).await.unwrap();
        }
        let counts: Vec<usize> = servers
            .iter()
            .map(|(_, count, _)| count.load(std::sync::atomic::Ordering::SeqCst))
            .collect();
        assert_eq!(counts, [3, 3, 3]);

        // 127.0.0.3 goes away: its listener and its connection.
        let (dead, dead_count, task) = servers.remove(1);
        task.abort();
        let _ = task.await;
        // A call sent at the very moment its connection dies fails UNAVAILABLE (the
        // destination may have run it); here the loss is seen first, as it is by any
        // call that comes a moment later.
        let noticed = tokio::time::timeout(Duration::from_secs(20), async {
            while endpoint.live(dead).is_some() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        noticed.await.expect("the closed connection was noticed");
        for _ in 0..6 {
            call(&endpoint).await.unwrap();
        }
        assert_eq!(dead_count.load(std::sync::atomic::Ordering::SeqCst), 3);
        let alive: usize = servers
            .iter()
            .map(|(_, count, _)| count.load(std::sync::atomic::Ordering::SeqCst))
            .sum();
        assert_eq!(
            alive, 12,
            "every call after the loss was answered by the others"
        );
        assert!(
            endpoint.slots().slot(dead).unwrap().retry_at.is_some(),
            "backed off"
        );
    }
}
