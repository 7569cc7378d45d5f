//! The request path, assembled in one place: reading [`build`] top to bottom shows the
//! order in which a call meets each layer before it is forwarded to the app.
//!
//! Every layer is always ready (`poll_ready` returns `Ready` at once): limits on
//! concurrency are enforced by HTTP/2 stream settings, the listener and the Limits
//! layer's refusals, not by back-pressure inside the chain.

pub mod auth;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod recovery;

use std::sync::Arc;

use http::Request;
use tower::{Service, ServiceBuilder};

use crate::auth::Authenticator;
use crate::body::RequestBody;
use crate::config::PerIdentity;
use crate::reload::Current;
use crate::telemetry::Tracing;
use crate::upstream::Forward;
use auth::{Auth, AuthLayer};
use limits::{Limits, LimitsLayer};
use logging::{Logging, LoggingLayer};
use metrics::{Metrics, MetricsLayer};
use recovery::{Recovery, RecoveryLayer};

/// The assembled chain, outermost layer first.
pub type Chain = Recovery<Logging<Metrics<Auth<Limits<Forward>>>>>;

/// What the chain answers with.
pub type ChainResponse = <Chain as Service<Request<RequestBody>>>::Response;

/// Builds the chain around the service that forwards calls to the app.
pub fn build(
    tracing: Arc<Tracing>,
    metrics: Arc<crate::metrics::Metrics>,
    authenticator: Arc<Current<Authenticator>>,
    per_identity: &PerIdentity,
    contexts: Option<Arc<crate::outbound::context::CallContexts>>,
    forward: Forward,
) -> Chain {
    ServiceBuilder::new()
        // Outermost, so that a panic anywhere below it, forwarding included, becomes an
        // INTERNAL status for that one call while the process keeps serving.
        .layer(RecoveryLayer::new())
        // Next, so every call that is answered is logged and traced, refusals included,
        // and its time covers everything gatehouse does for it.
        .layer(LoggingLayer::new(tracing))
        // Counts what Logging logs; above Auth so refusals are counted too.
        .layer(MetricsLayer::new(metrics.clone()))
        // Last before forwarding: every layer above sees (and counts) refusals too, and
        // nothing reaches the app without a path in gRPC's grammar, having been stripped
        // of forged identity headers and credentials, and admitted.
        // It also gives admitted calls their call-context handle when outbound
        // destinations use `credentials: context`.
        .layer(AuthLayer::new(authenticator).with_contexts(contexts, metrics.clone()))
        // After Auth, whose verdict names the identity a call counts against; refused
        // calls above it never take a slot, and one identity cannot take the app's
        // whole stream budget.
        .layer(LimitsLayer::new(per_identity, metrics))
        .service(forward)
}
