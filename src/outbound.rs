//! Outbound: the app's own calls to other services, secured by gatehouse. The app dials
//! a loopback h2c port and names the destination in `:authority`; gatehouse strips what
//! the app may not send, attaches the destination's credential, opens mutual TLS with
//! the pod's certificate, verifies that the server is the service named, and maps every
//! failure to a gRPC status. The app holds no certificate and no key.
//!
//! ```text
//! app ──h2c──▶ outbound listener (loopback / unix:) ──mTLS, HTTP/2──▶ destination
//!                │
//!                ├─ Recovery ▶ Record (CLIENT span, access log, grpc_client_*)
//!                ├─ route: host of :authority → destination, else UNIMPLEMENTED
//!                ├─ credentials: strip identity headers, keys and call-context handles,
//!                │  then relay / key / none / context (the inbound call's token)
//!                ├─ deadline: min(app's grpc-timeout, destination timeout, and under
//!                │  context the inbound call's remaining deadline), re-encoded
//!                └─ endpoint: TLS chain + identity checked in the handshake
//! ```
//!
//! [`build`] assembles the chain in one place, as `middleware::build` does inbound.

pub mod credentials;
pub mod endpoint;
pub mod listen;
pub mod record;
pub mod route;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::{Service, ServiceBuilder};

use crate::body::{RequestBody, ResponseBody};
use crate::call_context::CallContexts;
use crate::config::{self, Problem};
use crate::grpc::{self, Reason};
use crate::metrics::Metrics;
use crate::middleware::recovery::{Recovery, RecoveryLayer};
use crate::telemetry::Tracing;
use crate::tls::ClientTls;
use credentials::Credentials;
use endpoint::Endpoint;
use record::{Record, RecordLayer, Routed};

/// The assembled outbound chain, outermost layer first.
pub type Chain = Recovery<Record<Dispatch>>;

/// Builds the outbound chain around the destinations.
pub fn build(
    destinations: Arc<Destinations>,
    tracing: Arc<Tracing>,
    metrics: Arc<Metrics>,
    abort: CancellationToken,
) -> Chain {
    ServiceBuilder::new()
        // Outermost, so a panic anywhere below becomes INTERNAL for that one call.
        .layer(RecoveryLayer::new())
        // Every answered call is logged, counted and traced, refusals included; it
        // continues the app's trace with a CLIENT span and hands that span on as the
        // destination's parent.
        .layer(RecordLayer::new(tracing, metrics))
        // Routing, strip-then-set credentials, the deadline and the mTLS exchange.
        .service(Dispatch {
            destinations,
            abort,
        })
}

/// Every configured destination, with its credential and connection.
pub struct Destinations {
    entries: Vec<Arc<Destination>>,
    names: Vec<Arc<str>>,
    tls: Arc<ClientTls>,
    /// Present when a destination uses `credentials: context`; inbound mints into it.
    contexts: Option<Arc<CallContexts>>,
}

/// One destination the app may call.
pub struct Destination {
    pub name: Arc<str>,
    credentials: Credentials,
    timeout: Duration,
    /// `:authority` sent to the destination: its server name and port.
    authority: Authority,
    endpoint: Endpoint,
}

impl Destinations {
    /// Reads every file `outbound` names (client certificate, key, roots, API key files),
    /// reporting every problem on its field. Call after [`config::Config::validate`]
    /// accepted the config.
    pub fn load(config: &config::Config) -> Result<Option<Destinations>, Vec<Problem>> {
        let Some(outbound) = &config.outbound else {
            return Ok(None);
        };
        let mut problems = Vec::new();
        let contexts = outbound.uses_context().then(|| {
            let capacity = outbound.context_max_handles.unwrap_or_else(|| {
                config
                    .limits
                    .max_connections
                    .saturating_mul(config.limits.max_concurrent_streams as usize)
            });
            Arc::new(CallContexts::new(outbound.context_grace.get(), capacity))
        });
        let tls = match ClientTls::load(&outbound.client_tls.resolved(&config.tls)) {
            Ok(tls) => Some(Arc::new(tls)),
            Err(more) => {
                problems.extend(more);
                None
            }
        };
        let mut entries = Vec::new();
        for (i, destination) in outbound.destinations.iter().enumerate() {
            let field = format!("outbound.destinations[{i}]");
            let credentials = match Credentials::load(
                destination,
                &format!("{field}.credentials"),
                contexts.as_ref(),
            ) {
                Ok(credentials) => credentials,
                Err(problem) => {
                    problems.push(problem);
                    continue;
                }
            };
            let identities: Result<Vec<_>, _> = destination
                .identity
                .iter()
                .map(|pattern| crate::config::identity_pattern(pattern))
                .collect();
            let server_name = rustls::pki_types::ServerName::try_from(destination.server_name())
                .map(|name| name.to_owned());
            let port = destination
                .address
                .rsplit_once(':')
                .map_or("", |(_, port)| port);
            let authority = Authority::try_from(format!("{}:{port}", destination.server_name()));
            let (Some(tls), Ok(identities), Ok(server_name), Ok(authority)) =
                (&tls, identities, server_name, authority)
            else {
                // Each of these was reported by validation, or by the TLS loader above.
                continue;
            };
            let name: Arc<str> = Arc::from(destination.name.as_str());
            entries.push(Arc::new(Destination {
                name: name.clone(),
                credentials,
                timeout: destination.timeout.get(),
                authority,
                endpoint: Endpoint::new(
                    name,
                    destination.address.clone(),
                    server_name,
                    Arc::from(identities),
                    tls.clone(),
                ),
            }));
        }
        match (problems.is_empty(), tls) {
            (true, Some(tls)) => Ok(Some(Destinations {
                names: entries.iter().map(|d| d.name.clone()).collect(),
                entries,
                tls,
                contexts,
            })),
            _ => Err(problems),
        }
    }

    /// Starts re-reading the client certificate and API key files when they change.
    pub fn spawn_watchers(&self, metrics: Arc<Metrics>) {
        self.tls.spawn_watcher(metrics);
        for destination in &self.entries {
            if let Credentials::ApiKey(file) = &destination.credentials {
                file.spawn_watcher();
            }
        }
    }

    /// The call-context table, when a destination uses `credentials: context`: inbound
    /// gives admitted calls their handles in it.
    pub fn contexts(&self) -> Option<Arc<CallContexts>> {
        self.contexts.clone()
    }

    fn find(&self, host: &str) -> Option<&Arc<Destination>> {
        route::find(&self.entries, |d| &d.name, host)
    }
}

impl Destination {
    /// Strip-then-set, the deadline, and the exchange; every failure a gRPC status.
    async fn call(
        &self,
        mut request: Request<RequestBody>,
        abort: CancellationToken,
    ) -> (Response<ResponseBody>, Option<Arc<str>>) {
        // Shares the path's bytes, for the details of a status gatehouse answers with.
        let called = request.uri().clone();
        let status_for = |status: grpc::Status| {
            status
                .with("method", called.path())
                .with("destination", &*self.name)
                .response()
        };
        let inbound_deadline = match self.credentials.apply(request.headers_mut()) {
            Ok(deadline) => deadline,
            Err(refusal) => return (status_for(refusal.status(None)), None),
        };
        // The shorter of the app's deadline and the destination's (and under `context`
        // what is left of the inbound call's), so a call never outlives any of them; the
        // destination is told what is left.
        let mut timeout = request
            .headers()
            .get(grpc::GRPC_TIMEOUT)
            .and_then(grpc::parse_timeout)
            .map_or(self.timeout, |app| app.min(self.timeout));
        if let Some(at) = inbound_deadline {
            timeout = timeout.min(at.saturating_duration_since(Instant::now()));
        }
        let deadline = Instant::now() + timeout;
        let headers = request.headers_mut();
        headers.insert(grpc::GRPC_TIMEOUT, grpc::encode_timeout(timeout));
        headers.remove(http::header::HOST);
        let mut parts = request.uri().clone().into_parts();
        parts.scheme = Some(Scheme::HTTPS);
        parts.authority = Some(self.authority.clone());
        match Uri::from_parts(parts) {
            Ok(uri) => *request.uri_mut() = uri,
            Err(_) => {
                return (
                    status_for(grpc::Status::new(
                        Reason::Internal,
                        "cannot address the destination",
                    )),
                    None,
                );
            }
        }
        // Dropping the exchange (deadline, shutdown) resets the destination's stream.
        let exchange = tokio::select! {
            result = self.endpoint.send(request) => result,
            () = tokio::time::sleep_until(deadline) => {
                let message = format!(
                    "deadline exceeded: {timeout:?} ran out before {} answered",
                    self.name
                );
                return (status_for(grpc::Status::new(Reason::Deadline, message)), None);
            }
            () = abort.cancelled() => {
                return (status_for(grpc::Status::new(
                    Reason::ShuttingDown,
                    "gatehouse is shutting down: the drain timeout ended this call",
                )), None);
            }
        };
        match exchange {
            Ok((response, peer)) => {
                let name = self.name.clone();
                let body = move |body: crate::pool::ResponseStream| {
                    use http_body_util::BodyExt as _;
                    // A failure mid-stream ends the call with the status it maps to.
                    let streamed = body
                        .map_err(move |error| endpoint::stream_status(&name, &error))
                        .boxed_unsync();
                    ResponseBody::forwarded(streamed, Some(deadline), abort)
                };
                (response.map(body), Some(peer))
            }
            Err(failure) => {
                tracing::debug!(destination = %self.name, error = %failure, "outbound call failed");
                (status_for(failure.status()), None)
            }
        }
    }
}

/// The innermost outbound service: finds the destination and makes the call.
#[derive(Clone)]
pub struct Dispatch {
    destinations: Arc<Destinations>,
    /// Cancelled when the drain gives up on open calls: they end with UNAVAILABLE.
    abort: CancellationToken,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, Infallible>> + Send>>;

impl Service<Request<RequestBody>> for Dispatch {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<RequestBody>) -> Self::Future {
        let destinations = self.destinations.clone();
        let abort = self.abort.clone();
        Box::pin(async move {
            let host = route::authority_host(request.uri(), request.headers());
            let Some(destination) = host.and_then(|host| destinations.find(host)).cloned() else {
                let known: Vec<&str> = destinations.names.iter().map(|n| &**n).collect();
                return Ok(route::unknown_destination(host, &known));
            };
            let (mut response, peer) = destination.call(request, abort).await;
            response.extensions_mut().insert(Routed {
                destination: destination.name.clone(),
                peer,
            });
            Ok(response)
        })
    }
}
