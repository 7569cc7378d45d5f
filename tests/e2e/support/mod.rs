//! What every end-to-end test needs, one concern a file:
//!
//! - `app`: the demo app, served in-process (its own code is `demo`, with `pb`).
//! - `process`: the gatehouse binary as a child process on an ephemeral port, one-shot
//!   commands, and the commit it was built from.
//! - `config`: the config file gatehouse is started with.
//! - `pki`: TLS identities: the development PKI, and certificates made with rcgen at
//!   test time (SVIDs, client certificates, broken ones).
//! - `clients`: Rust gRPC clients over mTLS, and bare HTTP/2 connections.
//! - `calls`: the credentials a call carries, the metadata the app saw, and a client
//!   stream sent by hand with request trailers.
//! - `frames`: HTTP/2 frames written by hand.
//! - `api_keys`: API key digests and keys files.
//! - `issuers`: token issuers, their JWKS, and a server publishing key sets.
//! - `mesh`: a source and a destination gatehouse for outbound calls.
//! - `collector`: an OTLP trace collector.
//! - `admin`: the admin server and the metrics scrape.
//! - `grpcurl`: grpcurl, run against gatehouse.
//! - `grpc_go`: the grpc-go test app (tests/apps/grpc-go), as a child process.
//! - `status`: the details of the statuses gatehouse generates.
//! - `redis`: Debian's redis-server for the global limits, standalone, with TLS and as
//!   a 3-master Cluster (with the `global-limits` feature).
//!
//! This file holds the bound every wait has, the paths of the repository and the
//! development certificates, and a free loopback port. Everything but `issuers` is
//! re-exported here, so a test needs only `use crate::support::*` (and
//! `crate::support::issuers::*` for tokens).

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
mod frames;
mod grpc_go;
mod grpcurl;
pub mod issuers;
mod mesh;
mod pki;
mod process;
#[cfg(feature = "global-limits")]
mod redis;
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
pub use demo::pb::orders::orders_client::OrdersClient;
pub use frames::*;
pub use grpc_go::*;
pub use grpcurl::*;
pub use mesh::*;
pub use pki::*;
pub use process::*;
#[cfg(feature = "global-limits")]
pub use redis::*;
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
