//! Outbound: the app's own calls to other services, secured by gatehouse. The app dials
//! a loopback h2c port and names the destination in `:authority`; gatehouse strips what
//! the app may not send, attaches the destination's credential, opens mutual TLS with
//! the pod's certificate, verifies that the server is the service named, and maps every
//! failure to a gRPC status. The app holds no certificate and no key.
//!
//! ```text
//! app ──h2c──▶ outbound listener (loopback / unix:) ──mTLS, HTTP/2──▶ destination
//!                │
//!                ├─ Recovery     a panic becomes INTERNAL for that one call
//!                ├─ Route        host of :authority → destination (and its timeout)
//!                ├─ Record       CLIENT span, access log, grpc_client_* metrics
//!                ├─ Credentials  strip identity headers, keys and call-context handles,
//!                │               then relay / key / none / context (the inbound token)
//!                ├─ Deadline     min(app's grpc-timeout, destination timeout, inbound
//!                │               call's deadline), sent on as grpc-timeout
//!                └─ Endpoint     TLS chain + identity checked in the handshake; a call
//!                                routed nowhere is refused UNKNOWN_DESTINATION here
//! ```
//!
//! [`build`] assembles the chain in one place, as `inbound::build` does inbound.

pub mod credentials;
pub mod endpoint;
pub mod record;
pub mod route;

use std::sync::Arc;
use std::time::Duration;

use http::uri::Authority;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;

use crate::call_context::CallContexts;
use crate::config::{self, Problem};
use crate::layers::deadline::{DeadlineLayer, DeadlineService};
use crate::layers::observe::{Observe, ObserveLayer};
use crate::layers::recovery::{Recovery, RecoveryLayer};
use crate::metrics::Metrics;
use crate::telemetry::Tracing;
use crate::tls::ClientTls;
use credentials::{Credential, Credentials, CredentialsLayer};
use endpoint::{Endpoint, Endpoints};
use record::OutboundRecord;
use route::{Route, RouteLayer};

/// The assembled outbound chain, outermost layer first.
pub type Chain = Recovery<Route<Observe<Credentials<DeadlineService<Endpoint>>, OutboundRecord>>>;

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
        // The destination first, so what is recorded names it.
        .layer(RouteLayer::new(destinations.clone()))
        // Every call is logged, counted and traced, refusals included; it continues the
        // app's trace with a CLIENT span and hands that span on as the destination's
        // parent.
        .layer(ObserveLayer::new(OutboundRecord::new(tracing, metrics)))
        // Strip, then set: nothing the app sent speaks for anyone once this is done.
        .layer(CredentialsLayer)
        // The shortest of the deadlines that apply, enforced here and told to the
        // destination, so a call never outlives any of them.
        .layer(DeadlineLayer::new(abort).tell_peer())
        .service(Endpoint::new(destinations))
}

/// Every configured destination, with its credential and connection.
pub struct Destinations {
    entries: Vec<Arc<Destination>>,
    names: Vec<Arc<str>>,
    tls: Arc<ClientTls>,
    /// Present when a destination uses `credentials: context`; inbound mints into it.
    contexts: Option<Arc<CallContexts>>,
    /// Calls out open at once, all destinations together: `Limits::outbound_calls`,
    /// which the memory budget counts.
    calls: Arc<Semaphore>,
    max_calls: u32,
}

/// One destination the app may call.
pub struct Destination {
    pub name: Arc<str>,
    credential: Credential,
    timeout: Duration,
    /// `:authority` sent to the destination: its server name and port.
    authority: Authority,
    endpoints: Endpoints,
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
            let bounds = outbound.context_bounds(&config.limits);
            Arc::new(CallContexts::new(outbound.context_grace.get(), bounds))
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
            let credential = match Credential::load(
                destination,
                &format!("{field}.credentials"),
                contexts.as_ref(),
            ) {
                Ok(credential) => credential,
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
                credential,
                timeout: destination.timeout.get(),
                authority,
                endpoints: Endpoints::new(
                    name,
                    destination.address.clone(),
                    server_name,
                    Arc::from(identities),
                    tls.clone(),
                    crate::pool::response_header_list(&config.limits),
                ),
            }));
        }
        match (problems.is_empty(), tls) {
            (true, Some(tls)) => Ok(Some(Destinations {
                names: entries.iter().map(|d| d.name.clone()).collect(),
                entries,
                tls,
                contexts,
                calls: Arc::new(Semaphore::new(config.limits.outbound_calls() as usize)),
                max_calls: config.limits.outbound_calls(),
            })),
            _ => Err(problems),
        }
    }

    /// Starts re-reading the client certificate and API key files when they change.
    pub fn spawn_watchers(&self, metrics: Arc<Metrics>) {
        self.tls.spawn_watcher(metrics);
        for destination in &self.entries {
            if let Credential::ApiKey(file) = &destination.credential {
                file.spawn_watcher();
            }
        }
    }

    /// The call-context table, when a destination uses `credentials: context`: inbound
    /// gives admitted calls their handles in it.
    pub fn contexts(&self) -> Option<Arc<CallContexts>> {
        self.contexts.clone()
    }

    /// The destination named `host` (ASCII case-insensitively).
    pub fn find(&self, host: &str) -> Option<&Arc<Destination>> {
        route::find(&self.entries, |d| &d.name, host)
    }

    /// A place for one more call out, held until the call ends; `None` when the app
    /// already has [`Destinations::max_calls`] open.
    pub fn call_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.calls.clone().try_acquire_owned().ok()
    }

    /// Calls out open at once, at most.
    pub fn max_calls(&self) -> u32 {
        self.max_calls
    }

    /// Every destination's name, for the refusal of a call that names none.
    pub fn names(&self) -> &[Arc<str>] {
        &self.names
    }
}
