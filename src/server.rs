//! The HTTP/2 server on each accepted connection: explicit protocol settings, the
//! connection's facts put into every request, and the door check that keeps anything
//! that is not gRPC out of the middleware chain.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::ready;
use http::Request;
use http::Response;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tower::Service;

use crate::auth::principal::forwarded_client_cert;
use crate::body::RequestBody;
use crate::config::Limits;
use crate::grpc;
use crate::middleware::recovery::RecoveryBody;
use crate::middleware::{Chain, ChainResponse};
use crate::tls::PeerIdentity;

/// How many streams a client may open and reset before the server has accepted them,
/// the guard against "rapid reset" floods (CVE-2023-44487). Never disabled.
const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;
/// How many streams gatehouse may reset for protocol errors on one connection before it
/// closes the connection, the guard against floods of invalid frames. Never disabled.
const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;

/// What is known about the connection a request arrived on, in every request's
/// extensions.
#[derive(Debug)]
pub struct ConnectionInfo {
    pub remote_addr: SocketAddr,
    /// The verified client certificate's identity; `None` without TLS or without a
    /// client certificate (`client_auth: optional` or `none`).
    pub peer: Option<PeerIdentity>,
    /// `peer` as an `x-forwarded-client-cert` value, built once per connection.
    pub client_cert_header: Option<http::HeaderValue>,
}

impl ConnectionInfo {
    pub fn new(remote_addr: SocketAddr, peer: Option<PeerIdentity>) -> Self {
        let client_cert_header = peer.as_ref().and_then(forwarded_client_cert);
        ConnectionInfo {
            remote_addr,
            peer,
            client_cert_header,
        }
    }
}

/// Serves HTTP/2 connections into the middleware chain.
#[derive(Clone)]
pub struct Server {
    builder: http2::Builder<TokioExecutor>,
    chain: Chain,
}

impl Server {
    pub fn new(limits: &Limits, chain: Chain) -> Self {
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_concurrent_streams(limits.max_concurrent_streams)
            .max_header_list_size(limits.max_header_list_size)
            .keep_alive_interval(limits.keepalive_interval.get())
            .keep_alive_timeout(limits.keepalive_timeout.get())
            .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESET_STREAMS)
            .max_local_error_reset_streams(MAX_LOCAL_ERROR_RESET_STREAMS);
        Server { builder, chain }
    }

    /// The HTTP/2 connection future for one accepted (and, with TLS, handshaken) stream.
    pub fn serve<I>(
        &self,
        io: I,
        info: ConnectionInfo,
        activity: Arc<Activity>,
    ) -> http2::Connection<TokioIo<I>, Door, TokioExecutor>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let door = Door {
            chain: self.chain.clone(),
            info: Arc::new(info),
            activity,
        };
        self.builder.serve_connection(TokioIo::new(io), door)
    }
}

/// The per-connection entry point: stamps the connection's facts on the request and lets
/// only gRPC calls into the chain; anything else gets HTTP 415.
#[derive(Clone)]
pub struct Door {
    chain: Chain,
    info: Arc<ConnectionInfo>,
    activity: Arc<Activity>,
}

/// How many calls are open on a connection, to close connections that idle.
#[derive(Debug, Default)]
pub struct Activity {
    open: AtomicUsize,
    changed: Notify,
}

impl Activity {
    fn open(self: &Arc<Self>) -> OpenCall {
        self.open.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
        OpenCall {
            activity: self.clone(),
        }
    }

    /// Resolves once no call has been open for `limit`.
    pub async fn idle_for(&self, limit: Duration) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.open.load(Ordering::SeqCst) > 0 {
                changed.await;
                continue;
            }
            if tokio::time::timeout(limit, changed).await.is_err() {
                return;
            }
        }
    }
}

/// One open call; closed when its response body is dropped (sent, or reset).
pub struct OpenCall {
    activity: Arc<Activity>,
}

impl Drop for OpenCall {
    fn drop(&mut self) {
        self.activity.open.fetch_sub(1, Ordering::SeqCst);
        self.activity.changed.notify_waiters();
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its call counted as open until it is dropped.
    pub struct CallBody<B> {
        #[pin]
        inner: B,
        open: OpenCall,
    }
}

impl<B: Body> Body for CallBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

type ChainBody = <ChainResponse as ResponseParts>::Body;

/// Names the body type of a response type.
pub trait ResponseParts {
    type Body;
}

impl<B> ResponseParts for Response<B> {
    type Body = B;
}

impl hyper::service::Service<Request<Incoming>> for Door {
    type Response = Response<CallBody<ChainBody>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let open = self.activity.open();
        if !grpc::is_grpc_request(request.method(), request.headers()) {
            let response = RecoveryBody::local(grpc::unsupported_media_type());
            return Box::pin(ready(Ok(response.map(|inner| CallBody { inner, open }))));
        }
        let mut request = request.map(RequestBody::new);
        request.extensions_mut().insert(self.info.clone());
        // Every layer is always ready, so calling a clone directly is sound.
        let call = self.chain.clone().call(request);
        Box::pin(async move {
            let response = call.await?;
            Ok(response.map(|inner| CallBody { inner, open }))
        })
    }
}
