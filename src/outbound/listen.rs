//! The outbound listener: loopback TCP or a Unix socket, plaintext HTTP/2 with the same
//! server settings and flood guards as the inbound listener, each call into the
//! outbound chain. Non-gRPC requests get HTTP 415, as inbound.

use std::sync::Arc;
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Semaphore, watch};
use tower::Service;

use crate::body::{RequestBody, ResponseBody};
use crate::config::Limits;
use crate::grpc;
use crate::middleware::recovery::RecoveryBody;
use crate::outbound::Chain;

/// A bound outbound socket.
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
}

/// Accepts until `stop` turns true, then closes each connection with GOAWAY and waits
/// (at most `drain`) for its calls to finish.
pub async fn serve(
    socket: Socket,
    chain: Chain,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
) {
    let builder = crate::server::http2_builder(&limits);
    let graceful = GracefulShutdown::new();
    // The app is the only client, but a buggy one must not exhaust file descriptors.
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let accepted = tokio::select! {
            accepted = accept(&socket) => accepted,
            _ = stop.wait_for(|stopped| *stopped) => break,
        };
        let io = match accepted {
            Ok(io) => io,
            Err(error) => {
                tracing::warn!(%error, "outbound accept failed");
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!("outbound connection refused: limits.max_connections reached");
            continue;
        };
        let chain = chain.clone();
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let mut chain = chain.clone();
            async move {
                if !grpc::is_grpc_request(request.method(), request.headers()) {
                    // The app is the only client here: a bare 415 is enough for it to
                    // see it dialled the wrong port.
                    let mut response = http::Response::new(ResponseBody::empty());
                    *response.status_mut() = http::StatusCode::UNSUPPORTED_MEDIA_TYPE;
                    return Ok(RecoveryBody::local(response));
                }
                chain.call(request.map(RequestBody::new)).await
            }
        });
        let connection = graceful.watch(builder.serve_connection(io, service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "outbound connection ended");
            }
            drop(permit);
        });
    }
    drop(socket);
    let _ = tokio::time::timeout(drain, graceful.shutdown()).await;
}

type Io = TokioIo<Box<dyn Stream>>;

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

async fn accept(socket: &Socket) -> std::io::Result<Io> {
    Ok(match socket {
        Socket::Tcp(tcp) => {
            let (stream, _) = tcp.accept().await?;
            let _ = stream.set_nodelay(true);
            TokioIo::new(Box::new(stream))
        }
        Socket::Unix(unix) => TokioIo::new(Box::new(unix.accept().await?.0)),
    })
}
