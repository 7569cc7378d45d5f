//! The mutual-TLS HTTP/2 connections to one destination: its name resolved to every
//! address it has (again every [`RESOLVE_EVERY`] and after any failure), each address an
//! endpoint with a [`Pool`] of its own (several connections as the peer's stream limit
//! requires, explicit resets, per-stream windows, calls a GOAWAY left unprocessed sent
//! again), calls spread round robin over the endpoints, and an endpoint that fails to
//! connect or to prove its identity backed off (doubling from [`BACKOFF_MIN`] to
//! [`BACKOFF_MAX`]) while the others take its calls. Each connection's TLS is opened by
//! a [`Connect`] the pool calls, which verifies the destination's certificate and
//! identity in the handshake (see [`crate::tls::IdentityVerifier`]).
//!
//! Every failure says which of the three things went wrong, because each needs a
//! different fix: the chain did not verify (`UPSTREAM_TLS`: wrong CA, expired, wrong
//! server name), it verified but is not the service the app asked for
//! (`IDENTITY_MISMATCH`), or no address answered at all (`NO_ENDPOINT`).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::Scheme;
use http::{Request, Response, Uri};
use http_body_util::BodyExt;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::time::Instant;

mod slots;

use super::route::{self, Routed};
use super::{Destination, Destinations};
use crate::body::{PeerStream, RequestBody, ResponseBody};
use crate::config::{PeerPattern, Target};
use crate::grpc::{self, Far, Reason};
use crate::layers::observe::CallFacts;
use crate::pool::{self, Connect, Connecting, Io, Pool, ResponseStream};
use crate::tls::{ClientTls, IdentityMismatch};
use slots::{Endpointed, Slots};

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
    /// Every connection is at the destination's stream limit and the wait is full or
    /// took too long.
    #[error("{destination}: {message}")]
    Busy {
        destination: Arc<str>,
        message: String,
    },
    /// The destination reset the stream or the connection died before it answered.
    #[error("{}", .status.message())]
    Stream {
        destination: Arc<str>,
        status: grpc::Status,
    },
}

impl Failure {
    /// The status the app receives, naming the destination in its details.
    pub fn status(&self) -> grpc::Status {
        let (reason, destination) = match self {
            Failure::Tls { destination, .. } => (Reason::UpstreamTls, destination),
            Failure::Identity { destination, .. } => (Reason::IdentityMismatch, destination),
            Failure::NoEndpoint { destination, .. } => (Reason::NoEndpoint, destination),
            Failure::Busy { destination, .. } => (Reason::DestinationBusy, destination),
            Failure::Stream { status, .. } => return status.clone(),
        };
        grpc::Status::new(reason, self.to_string()).with("destination", &**destination)
    }

    /// Whether the endpoint itself failed (and should be backed off), rather than one call.
    fn endpoint_failed(&self) -> bool {
        matches!(
            self,
            Failure::Tls { .. } | Failure::Identity { .. } | Failure::NoEndpoint { .. }
        )
    }
}

/// The innermost outbound service: points each call at its destination and sends it
/// over that destination's connections; a call routed nowhere is refused here, with
/// UNIMPLEMENTED naming the destinations there are.
#[derive(Clone)]
pub struct Endpoint {
    destinations: Arc<Destinations>,
}

impl Endpoint {
    pub fn new(destinations: Arc<Destinations>) -> Self {
        Endpoint { destinations }
    }
}

impl tower::Service<Request<RequestBody>> for Endpoint {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<RequestBody>) -> Self::Future {
        match request.extensions().get::<Routed>() {
            Some(Routed::To(destination)) => {
                let destination = destination.clone();
                let Some(slot) = self.destinations.call_slot() else {
                    let status = grpc::Status::new(
                        Reason::DestinationBusy,
                        format!(
                            "the app has {} calls out open, as many as gatehouse carries at once",
                            self.destinations.max_calls()
                        ),
                    )
                    .about(request.uri(), Some(&destination.name));
                    return Box::pin(std::future::ready(Ok(status.response())));
                };
                Box::pin(async move {
                    let mut response = send(&destination, request).await;
                    // The slot is given back when the call ends.
                    response.body_mut().hold(slot);
                    Ok(response)
                })
            }
            Some(Routed::Nowhere(host)) => Box::pin(std::future::ready(Ok(
                route::unknown_destination(host.as_deref(), self.destinations.names()),
            ))),
            None => Box::pin(std::future::ready(Ok(route::unknown_destination(
                None,
                self.destinations.names(),
            )))),
        }
    }
}

/// Points `request` at `destination` (`https`, its server name and port as
/// `:authority`) and sends it; every failure a gRPC status naming the destination.
async fn send(
    destination: &Destination,
    mut request: Request<RequestBody>,
) -> Response<ResponseBody> {
    let called = request.uri().clone();
    let status_for =
        |status: grpc::Status| status.about(&called, Some(&destination.name)).response();
    request.headers_mut().remove(http::header::HOST);
    let mut parts = request.uri().clone().into_parts();
    parts.scheme = Some(Scheme::HTTPS);
    parts.authority = Some(destination.authority.clone());
    match Uri::from_parts(parts) {
        Ok(uri) => *request.uri_mut() = uri,
        Err(_) => {
            return status_for(grpc::Status::new(
                Reason::Internal,
                "cannot address the destination",
            ));
        }
    }
    let facts = CallFacts::in_request(&request).cloned();
    match destination.endpoints.send(request).await {
        Ok((response, peer)) => {
            if let Some(facts) = facts {
                facts.set_peer(peer);
            }
            let name = destination.name.clone();
            response.map(move |body| {
                let stream: Arc<dyn PeerStream> = body.control();
                // A failure mid-stream ends the call with the status it maps to.
                let streamed = body
                    .map_err(move |error| {
                        error.status(Far::Destination(&name), "while streaming the response")
                    })
                    .boxed_unsync();
                ResponseBody::forwarded(streamed, Some(stream))
            })
        }
        Err(failure) => {
            tracing::debug!(destination = %destination.name, error = %failure, "outbound call failed");
            status_for(failure.status())
        }
    }
}

/// Connections per endpoint while none of their streams is stalled (the pool opens more,
/// up to [`pool::WEDGED_SURPLUS`] times, while stalled streams hold them all).
pub const CONNECTIONS_PER_ENDPOINT: usize = 2;
/// Calls that may wait for a stream when every connection to an endpoint is at the
/// destination's stream limit, and for how long.
pub const QUEUE: usize = 256;
pub const QUEUE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one address may take to accept TCP and finish the TLS and HTTP/2 handshakes.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a destination's name is resolved again while it works.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(30);
/// The first backoff of a failing address, doubled per failure up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(250);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Opens one TLS connection to one address of a destination, for the pool.
struct TlsConnector {
    address: SocketAddr,
    server_name: ServerName<'static>,
    connector: tokio_rustls::TlsConnector,
    /// The identity the last handshake verified, for the access log.
    peer: Arc<Mutex<Option<Arc<str>>>>,
}

/// The server spoke TLS but would not speak HTTP/2.
#[derive(Debug, thiserror::Error)]
#[error("{0} did not agree to HTTP/2 (ALPN h2)")]
struct NoH2(SocketAddr);

impl Connect for TlsConnector {
    fn connect(&self) -> Connecting<'_> {
        Box::pin(async move {
            let tcp = TcpStream::connect(self.address).await?;
            let _ = tcp.set_nodelay(true);
            let tls = self
                .connector
                .connect(self.server_name.clone(), tcp)
                .await?;
            let (_, session) = tls.get_ref();
            if session.alpn_protocol() != Some(b"h2") {
                return Err(std::io::Error::other(NoH2(self.address)));
            }
            let peer = session
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| crate::tls::PeerIdentity::from_der(leaf).ok())
                .map(|peer| Arc::from(peer.name()));
            *self.peer.lock().unwrap_or_else(|p| p.into_inner()) = peer;
            Ok(Box::new(tls) as Box<dyn Io>)
        })
    }
}

/// Connections to one destination: a pool per address its name resolves to.
pub struct Endpoints {
    destination: Arc<str>,
    address: String,
    server_name: ServerName<'static>,
    identities: Arc<[PeerPattern]>,
    tls: Arc<ClientTls>,
    /// The header list read from the destination's answers (see `pool::Settings`).
    max_header_list: u32,
    /// Where the name resolves to, and a pool (or a backoff) per address.
    /// A std mutex is enough: it is never held across an await.
    slots: Mutex<Slots>,
    /// Stands in for the resolver in tests, which cannot make a name resolve to several
    /// loopback addresses.
    #[cfg(test)]
    resolved: Option<Vec<SocketAddr>>,
}

impl Endpoints {
    pub fn new(
        destination: Arc<str>,
        address: String,
        server_name: ServerName<'static>,
        identities: Arc<[PeerPattern]>,
        tls: Arc<ClientTls>,
        max_header_list: u32,
    ) -> Self {
        Endpoints {
            max_header_list,
            destination,
            address,
            server_name,
            identities,
            tls,
            slots: Mutex::new(Slots::default()),
            #[cfg(test)]
            resolved: None,
        }
    }

    /// Sends `request` and returns the destination's response headers, its body
    /// streaming, and the verified identity of the server that answered (its SPIFFE ID
    /// or first SAN). Dropping the future or the body resets the destination's stream.
    /// An endpoint that cannot be reached is backed off and the call tried on the next;
    /// once the request has gone out, a failure is the call's.
    pub async fn send(
        &self,
        request: Request<RequestBody>,
    ) -> Result<(Response<ResponseStream>, Arc<str>), Failure> {
        self.resolve_if_stale().await?;
        let order = self.slots().order(Instant::now());
        if order.is_empty() {
            return Err(self.no_endpoint("resolves to no address".to_owned()));
        }
        // The body can be taken only once, so each endpoint is first asked for an open
        // connection (dialled if need be) and handed the call only then.
        let mut worst: Option<Failure> = None;
        for address in order {
            let endpointed = self.endpointed(address);
            if let Err(error) = endpointed.pool.ready().await {
                let failure = self.failure(address, error);
                tracing::debug!(destination = %self.destination, %address, error = %failure, "destination address failed; backing off");
                self.slots().failed(address, Instant::now());
                worst = Some(worse(worst, failure));
                continue;
            }
            match endpointed.pool.send(request).await {
                Ok(response) => {
                    self.slots().succeeded(address);
                    let peer = endpointed
                        .peer
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone()
                        .unwrap_or_else(|| Arc::from("unknown"));
                    return Ok((response, peer));
                }
                Err(error) => {
                    let failure = self.failure(address, error);
                    if failure.endpoint_failed() {
                        self.slots().failed(address, Instant::now());
                    }
                    return Err(match worst {
                        Some(earlier) if failure.endpoint_failed() => worse(Some(earlier), failure),
                        _ => failure,
                    });
                }
            }
        }
        Err(worst.unwrap_or_else(|| self.no_endpoint("no address answered".to_owned())))
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pool for `address`. One made before the client certificate was rotated is
    /// left to its open calls (their leases keep its connections until they end), so new
    /// calls present the new certificate.
    fn endpointed(&self, address: SocketAddr) -> Endpointed {
        let generation = self.tls.generation();
        let mut slots = self.slots();
        let Some(slot) = slots.slot(address) else {
            return self.new_pool(address, generation);
        };
        match &slot.pool {
            Some(current) if current.generation == generation => current.clone(),
            _ => {
                let fresh = self.new_pool(address, generation);
                slot.pool = Some(fresh.clone());
                fresh
            }
        }
    }

    fn new_pool(&self, address: SocketAddr, generation: u64) -> Endpointed {
        let peer = Arc::new(Mutex::new(None));
        let connector = TlsConnector {
            address,
            server_name: self.server_name.clone(),
            connector: self.tls.connector(self.identities.clone()),
            peer: peer.clone(),
        };
        let settings = pool::Settings {
            connect_timeout: CONNECT_TIMEOUT,
            connections: CONNECTIONS_PER_ENDPOINT,
            queue: QUEUE,
            queue_timeout: QUEUE_TIMEOUT,
            max_header_list: self.max_header_list,
        };
        let target = Target::Tcp(format!("{} ({address})", self.address));
        Endpointed {
            pool: Arc::new(Pool::with_connector(target, settings, Arc::new(connector))),
            peer,
            generation,
        }
    }

    async fn resolve_if_stale(&self) -> Result<(), Failure> {
        let stale = self
            .slots()
            .resolved_at
            .is_none_or(|at| at.elapsed() >= RESOLVE_EVERY);
        if !stale {
            return Ok(());
        }
        match self.resolve().await {
            Ok(found) => self.slots().update(found, Instant::now()),
            // Keep the addresses known so far, if any: a resolver hiccup should not take
            // down a destination that answers.
            Err(error) if self.slots().slots.is_empty() => {
                return Err(self.no_endpoint(format!("cannot resolve: {error}")));
            }
            Err(error) => {
                tracing::warn!(destination = %self.destination, %error, "cannot resolve again; keeping the known addresses");
            }
        }
        Ok(())
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

    fn no_endpoint(&self, message: String) -> Failure {
        Failure::NoEndpoint {
            destination: self.destination.clone(),
            address: self.address.clone(),
            message,
        }
    }

    /// What a pool error means for the app.
    fn failure(&self, address: SocketAddr, error: pool::Error) -> Failure {
        let tls = |message: String| Failure::Tls {
            destination: self.destination.clone(),
            address: self.address.clone(),
            message,
        };
        match error {
            pool::Error::Connect { source, .. } => self.connect_failure(address, source),
            pool::Error::ConnectTimeout { after, .. } => self.no_endpoint(format!(
                "{address} did not complete a connection within {after:?}"
            )),
            pool::Error::Handshake { source, .. } => {
                tls(format!("{address}: HTTP/2 handshake failed: {source}"))
            }
            error @ (pool::Error::QueueFull { .. } | pool::Error::QueueTimeout { .. }) => {
                Failure::Busy {
                    destination: self.destination.clone(),
                    message: error.to_string(),
                }
            }
            pool::Error::Stalled(stall) => Failure::Stream {
                destination: self.destination.clone(),
                status: stall.status(Far::Destination(&self.destination)),
            },
            pool::Error::Stream(error) => Failure::Stream {
                destination: self.destination.clone(),
                status: grpc::stream_failure(
                    &error,
                    Far::Destination(&self.destination),
                    "before it answered",
                ),
            },
        }
    }

    /// Tells a TLS or identity failure from an address that does not answer.
    fn connect_failure(&self, address: SocketAddr, error: std::io::Error) -> Failure {
        let inner = error.get_ref();
        if let Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))) =
            inner.and_then(|e| e.downcast_ref::<rustls::Error>())
            && other.0.downcast_ref::<IdentityMismatch>().is_some()
        {
            return Failure::Identity {
                destination: self.destination.clone(),
                address: self.address.clone(),
                source: other.0.clone(),
            };
        }
        let tls_error = inner.is_some_and(|e| e.is::<rustls::Error>() || e.is::<NoH2>());
        if tls_error || error.kind() == std::io::ErrorKind::InvalidData {
            return Failure::Tls {
                destination: self.destination.clone(),
                address: self.address.clone(),
                message: format!("{address}: TLS handshake failed: {error}"),
            };
        }
        self.no_endpoint(format!("{address}: {error}"))
    }
}

/// The failure worth reporting: a TLS or identity failure over a plain connect failure,
/// since it is the one that needs fixing.
fn worse(known: Option<Failure>, new: Failure) -> Failure {
    match known {
        Some(known @ (Failure::Tls { .. } | Failure::Identity { .. })) => {
            if matches!(new, Failure::NoEndpoint { .. }) {
                known
            } else {
                new
            }
        }
        _ => new,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, last], 443))
    }

    #[test]
    fn a_name_with_hundreds_of_addresses_uses_the_first_few() {
        let now = Instant::now();
        let mut slots = Slots::default();
        slots.update((1..=200).map(addr).collect(), now);
        let order = slots.order(now);
        assert_eq!(order.len(), slots::MAX_ADDRESSES);
        assert!(
            order
                .iter()
                .all(|a| (1..=16).contains(&a.ip().to_string()[8..].parse::<u8>().unwrap()))
        );
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
                        // A destination's own OK: a status and nothing of gatehouse's.
                        let mut ok = http::Response::new(crate::body::ResponseBody::empty());
                        ok.headers_mut()
                            .insert(grpc::GRPC_STATUS, grpc::Code::Ok.header_value());
                        std::future::ready(Ok::<_, std::convert::Infallible>(ok))
                    });
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
                });
            }
        });
        (address, count, task)
    }

    async fn call(endpoint: &Endpoints) -> Result<(), Failure> {
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
        let mut endpoint = Endpoints::new(
            Arc::from("dest"),
            "dest.test:443".to_owned(),
            ServerName::try_from("localhost").unwrap(),
            Arc::from(vec![
                crate::config::identity_pattern("dns:localhost").unwrap(),
            ]),
            Arc::new(ClientTls::load(&client).unwrap()),
            32 * 1024,
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
        let pool = endpoint.endpointed(dead).pool;
        let noticed = tokio::time::timeout(Duration::from_secs(20), async {
            // Ready while the old connection looks open; once it is seen closed, the
            // pool dials and is refused.
            while pool.ready().await.is_ok() {
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
