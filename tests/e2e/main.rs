//! End-to-end tests: the built `gatehouse` binary, on loopback sockets, between real
//! clients (a Rust gRPC client with a client certificate, and grpcurl) and the demo app.
//! One test binary, so the suite links once.

mod support;

mod abuse;
mod auth;
mod beyond;
mod cli;
mod config_changes;
mod conformance;
mod context;
mod expiry;
mod forwarding;
#[cfg(feature = "global-limits")]
mod global_limits;
mod grpcurl;
mod hardening;
mod inject;
mod isolation;
mod keys;
mod late_files;
mod limits;
mod long_streams;
mod monitoring;
mod observability;
mod operations;
mod outbound;
mod refusals;
mod schema;
mod shutdown;
mod spiffe;
mod upstream_failures;
