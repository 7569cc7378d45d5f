//! Binding the sockets gatehouse serves on: the callers' port, the app's outbound port and
//! the admin port. Each failure names the setting at fault; all are bound before anything
//! is announced as listening.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::admin::Readiness;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::serve::Socket;

/// Why `gatehouse run` stopped before serving (exit 1); each names the setting at fault.
#[derive(Debug, thiserror::Error)]
pub(super) enum StartError {
    #[error("{field} {address}: cannot listen: {source}")]
    Listen {
        field: &'static str,
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("listen.address {address}: {source}")]
    LocalAddress {
        address: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("outbound.listen: {0}")]
    OutboundListen(#[source] crate::config::ListenError),
    /// `telemetry.otlp_endpoint` could not be set up; the message names it.
    #[error("{0}")]
    Tracing(String),
    #[error("accept loop failed: {0}")]
    AcceptLoop(#[source] tokio::task::JoinError),
}

/// The callers' listener and, when outbound is on, the app's.
pub(super) struct Sockets {
    pub inbound: TcpListener,
    pub inbound_address: SocketAddr,
    pub outbound: Option<Socket>,
}

/// Binds `listen.address` and, when `with_outbound`, `outbound.listen`.
pub(super) async fn sockets(config: &Config, with_outbound: bool) -> Result<Sockets, StartError> {
    let address = config.listen.address;
    let inbound = TcpListener::bind(address)
        .await
        .map_err(|source| StartError::Listen {
            field: "listen.address",
            address: address.to_string(),
            source,
        })?;
    let inbound_address = inbound
        .local_addr()
        .map_err(|source| StartError::LocalAddress { address, source })?;
    let outbound = match (&config.outbound, with_outbound) {
        (Some(section), true) => Some(outbound(section).await?),
        _ => None,
    };
    Ok(Sockets {
        inbound,
        inbound_address,
        outbound,
    })
}

/// Binds `telemetry.admin_address`, when set, and serves the admin endpoints on it until
/// `stop` is cancelled.
pub(super) async fn admin(
    telemetry: &crate::config::Telemetry,
    metrics: &Arc<Metrics>,
    readiness: &Arc<Readiness>,
    stop: CancellationToken,
) -> Result<Option<SocketAddr>, StartError> {
    let Some(address) = telemetry.admin_address else {
        return Ok(None);
    };
    let admin = TcpListener::bind(address)
        .await
        .map_err(|source| StartError::Listen {
            field: "telemetry.admin_address",
            address: address.to_string(),
            source,
        })?;
    let bound = admin.local_addr().ok();
    tokio::spawn(crate::admin::serve(
        admin,
        metrics.clone(),
        readiness.clone(),
        stop,
    ));
    Ok(bound)
}

/// Binds `outbound.listen`, already checked to be loopback or a Unix socket path.
async fn outbound(section: &crate::config::Outbound) -> Result<Socket, StartError> {
    use crate::config::OutboundListen;
    let listen = section.listen().map_err(StartError::OutboundListen)?;
    let cannot = |source| StartError::Listen {
        field: "outbound.listen",
        address: section.listen.to_string(),
        source,
    };
    match listen {
        OutboundListen::Tcp(address) => TcpListener::bind(address)
            .await
            .map(Socket::Tcp)
            .map_err(cannot),
        OutboundListen::Unix(path) => tokio::net::UnixListener::bind(&path)
            .map(Socket::Unix)
            .map_err(cannot),
    }
}
