//! What every end-to-end test needs: the demo app in-process, the gatehouse binary as a
//! child process on an ephemeral port, its config, TLS identities (the development PKI,
//! and certificates made with rcgen at test time, broken ones included), a Rust gRPC
//! client over mTLS, the credentials a call carries and the metadata the app saw, API
//! key digests and keys files, a source and destination gatehouse for outbound calls,
//! grpcurl, the admin server, an OTLP trace collector, and the details of the statuses
//! gatehouse generates.
//!
//! Each concern has its own file; everything is re-exported here so a test needs only
//! `use crate::support::*`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

#[path = "../../../examples/demo-app/service.rs"]
pub mod demo;

mod admin;
mod api_keys;
mod app;
mod calls;
mod clients;
mod collector;
mod config;
mod grpcurl;
pub mod issuers;
mod mesh;
mod pki;
mod process;
mod status;

pub use admin::*;
pub use api_keys::*;
pub use app::*;
pub use calls::*;
pub use clients::*;
pub use collector::*;
pub use config::*;
pub use demo::pb;
pub use demo::pb::demo_client::DemoClient;
pub use grpcurl::*;
pub use mesh::*;
pub use pki::*;
pub use process::*;
pub use status::*;

/// Generous bound on anything a test waits for; reaching it means the test failed.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn dev_cert(name: &str) -> PathBuf {
    repo().join("certs-dev").join(name)
}

/// A loopback port with nothing listening on it (it was free a moment ago, and the
/// kernel hands out ephemeral ports in turn, so nothing else takes it soon).
pub async fn free_port() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}
