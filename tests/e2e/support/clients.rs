//! Clients of gatehouse's listener: TLS connections, tonic channels and demo clients.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint};

use super::{DemoClient, Identity, dev_roots};

/// A rustls client configuration that trusts the development CA and speaks h2.
pub fn client_tls(identity: Option<&Identity>) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(dev_roots());
    let mut config = match identity {
        Some(identity) => builder
            .with_client_auth_cert(identity.certs(), identity.key())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// Opens a TLS connection to gatehouse; the error says why the server refused it.
pub async fn tls_connect(
    addr: SocketAddr,
    identity: Option<&Identity>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let connector = tokio_rustls::TlsConnector::from(client_tls(identity));
    let tcp = TcpStream::connect(addr).await?;
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// A gRPC channel to gatehouse over mTLS (or TLS without a client certificate).
pub async fn channel(
    addr: SocketAddr,
    identity: Option<Identity>,
) -> Result<Channel, tonic::transport::Error> {
    let identity = Arc::new(identity);
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let identity = identity.clone();
            async move {
                tls_connect(addr, identity.as_ref().as_ref())
                    .await
                    .map(TokioIo::new)
            }
        }))
        .await
}

/// A demo client over mTLS with the development `gateway` identity.
pub async fn client(addr: SocketAddr) -> DemoClient<Channel> {
    let channel = channel(addr, Some(Identity::gateway()))
        .await
        .expect("mTLS connection to gatehouse");
    DemoClient::new(channel)
        .max_decoding_message_size(16 << 20)
        .max_encoding_message_size(16 << 20)
}

/// A demo client on a bare HTTP/2 connection instead of tonic's transport. It sends a
/// `grpc-timeout` it is given as metadata but never enforces it itself (like many clients
/// in other languages), so a deadline that ends a call was enforced by gatehouse.
pub async fn bare_client(addr: SocketAddr) -> DemoClient<BareChannel> {
    let sender = h2_connection(addr).await;
    DemoClient::with_origin(BareChannel { sender }, "https://localhost".parse().unwrap())
}

/// A bare HTTP/2 connection to gatehouse over mTLS with the development `gateway`
/// identity, for requests made by hand (paths, bodies or trailers no client library
/// would send).
pub async fn h2_connection<B>(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tls = tls_connect(addr, Some(&Identity::gateway()))
        .await
        .expect("mTLS connection to gatehouse");
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await
    .expect("HTTP/2 handshake with gatehouse");
    tokio::spawn(connection);
    sender
}

#[derive(Clone)]
pub struct BareChannel {
    sender: hyper::client::conn::http2::SendRequest<tonic::body::Body>,
}

impl tower::Service<http::Request<tonic::body::Body>> for BareChannel {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, hyper::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), hyper::Error>> {
        self.sender.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let mut sender = self.sender.clone();
        Box::pin(async move { sender.send_request(request).await })
    }
}

/// One gRPC message, framed for a request body sent by hand: the uncompressed flag, the
/// length, the encoded message.
pub fn grpc_message(message: &impl prost::Message) -> bytes::Bytes {
    let encoded = message.encode_to_vec();
    let mut framed = Vec::with_capacity(5 + encoded.len());
    framed.push(0u8);
    framed.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    framed.extend_from_slice(&encoded);
    bytes::Bytes::from(framed)
}
