//! The request path, assembled in one place: reading [`build`] top to bottom shows the
//! order in which a call meets each layer before it is forwarded to the app.
//!
//! Every layer is always ready (`poll_ready` returns `Ready` at once): limits on
//! concurrency are enforced by HTTP/2 stream settings and the listener, not by
//! back-pressure inside the chain.

pub mod recovery;

use tower::ServiceBuilder;

use crate::upstream::Forward;
use recovery::{Recovery, RecoveryLayer};

/// The assembled chain, outermost layer first.
pub type Chain = Recovery<Forward>;

/// Builds the chain around the service that forwards calls to the app.
pub fn build(forward: Forward) -> Chain {
    ServiceBuilder::new()
        // Outermost, so that a panic anywhere below it, forwarding included, becomes an
        // INTERNAL status for that one call while the process keeps serving.
        .layer(RecoveryLayer::new())
        .service(forward)
}
