//! The mutual-TLS HTTP/2 connection to one destination: the address resolved, each of
//! its addresses tried in turn, the destination's certificate and identity verified in
//! the handshake (see [`crate::tls::IdentityVerifier`]), and one multiplexed connection
//! kept for the calls that follow, opened again when it dies.
//!
//! Every failure says which of the three things went wrong, because each needs a
//! different fix: the chain did not verify (`UPSTREAM_TLS`: wrong CA, expired, wrong
//! server name), it verified but is not the service the app asked for
//! (`IDENTITY_MISMATCH`), or no address answered at all (`NO_ENDPOINT`).

use std::error::Error as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

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
    /// The live connection. A std mutex is enough: it is held only to clone a handle.
    current: Mutex<Option<Live>>,
    /// One dial at a time, so a burst of calls opens one connection, not one per call.
    dialing: tokio::sync::Mutex<()>,
    /// Where the next dial starts in the resolved addresses, so a dead first address does
    /// not stand in front of every dial.
    next: AtomicUsize,
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
            .initial_max_send_streams(1);
        Endpoint {
            destination,
            address,
            server_name,
            identities,
            tls,
            connect_timeout: CONNECT_TIMEOUT,
            builder,
            current: Mutex::new(None),
            dialing: tokio::sync::Mutex::new(()),
            next: AtomicUsize::new(0),
        }
    }

    /// Sends `request` and returns the destination's response headers, its body
    /// streaming, and the verified identity of the server that answered (its SPIFFE ID
    /// or first SAN). Dropping the future or the body resets the destination's stream.
    pub async fn send(
        &self,
        request: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, Arc<str>), Failure> {
        let Live {
            mut sender, peer, ..
        } = self.sender().await?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|error| self.stream_failure(&error))?;
        Ok((response, peer))
    }

    fn stream_failure(&self, error: &hyper::Error) -> Failure {
        let (code, message) = stream_status(&self.destination, error);
        Failure::Stream {
            destination: self.destination.clone(),
            code,
            message,
        }
    }

    /// The connection new calls use. One made before the client certificate was
    /// rotated is left to its open calls (they keep their stream; the connection closes
    /// when they end), so new calls present the new certificate.
    fn live(&self) -> Option<Live> {
        let generation = self.tls.generation();
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|live| !live.sender.is_closed() && live.generation == generation)
            .cloned()
    }

    async fn sender(&self) -> Result<Live, Failure> {
        if let Some(sender) = self.live() {
            return Ok(sender);
        }
        let _dialing = self.dialing.lock().await;
        if let Some(sender) = self.live() {
            return Ok(sender);
        }
        let sender = self.dial().await?;
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(sender.clone());
        Ok(sender)
    }

    /// Tries every resolved address once, starting after the last one used; the first
    /// that completes both handshakes wins. A TLS or identity failure is reported over
    /// a plain connect failure, since it is the one that needs fixing.
    async fn dial(&self) -> Result<Live, Failure> {
        let no_endpoint = |message: String| Failure::NoEndpoint {
            destination: self.destination.clone(),
            address: self.address.clone(),
            message,
        };
        let addresses: Vec<std::net::SocketAddr> = tokio::net::lookup_host(self.address.as_str())
            .await
            .map_err(|error| no_endpoint(format!("cannot resolve: {error}")))?
            .collect();
        if addresses.is_empty() {
            return Err(no_endpoint("resolves to no address".to_owned()));
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut worst: Option<Failure> = None;
        for offset in 0..addresses.len() {
            let address = addresses[(start + offset) % addresses.len()];
            let attempt = tokio::time::timeout(self.connect_timeout, self.connect(address)).await;
            let failure = match attempt {
                Ok(Ok(sender)) => return Ok(sender),
                Ok(Err(failure)) => failure,
                Err(_) => no_endpoint(format!(
                    "{address} did not complete a connection within {:?}",
                    self.connect_timeout
                )),
            };
            tracing::debug!(destination = %self.destination, %address, error = %failure, "destination address failed");
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

    async fn connect(&self, address: std::net::SocketAddr) -> Result<Live, Failure> {
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

    fn handshake_failure(&self, address: std::net::SocketAddr, error: std::io::Error) -> Failure {
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
