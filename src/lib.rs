//! gatehouse: a per-pod sidecar that makes gRPC service-to-service calls secure without
//! the services writing any security code.
//!
//! It runs next to an application container, terminates TLS (in production mutual TLS),
//! and hands the application plain HTTP/2 gRPC over a local connection. Inbound and
//! outbound are two instances of one shape: the same accept loop and HTTP/2 server
//! ([`serve`]), the same shared layers ([`layers`]), and one `build()` per direction
//! that reads top to bottom in the order a call meets its layers.
//!
//! ```text
//! caller ──mTLS, HTTP/2──▶ gatehouse :12018 ──h2c──▶ app 127.0.0.1:50051
//!                           │
//!                           ├─ serve: bounded connections, TLS and greeting deadline,
//!                           │  HTTP/2 with explicit limits; non-gRPC gets 415
//!                           ├─ inbound::build:
//!                           │    Recovery ▶ Logging ▶ Metrics ▶ Auth ▶ Limits ▶ Schema
//!                           │    ▶ Context ▶ Deadline ▶ Forward
//!                           └─ upstream: pooled h2c connections, bodies streamed both ways
//! ```
//!
//! The app's own calls out of the pod take the mirror path, when `outbound` is
//! configured ([`outbound`]):
//!
//! ```text
//! app ──h2c──▶ gatehouse 127.0.0.1:15001 ──mTLS, HTTP/2──▶ destination's gatehouse
//!               │
//!               ├─ serve: loopback or unix: only, the same HTTP/2 server
//!               ├─ outbound::build:
//!               │    Recovery ▶ Route ▶ Record ▶ Credentials ▶ Deadline ▶ Endpoint
//!               └─ outbound::endpoint: client certificate, server identity checked in TLS
//! ```
//!
//! # Layout: tiers that follow the data flow
//!
//! A module names only modules of its own tier or a lower one, and no two modules import
//! each other: a low tier never has to know about a high one, and the source reads in
//! the order a call meets it. A unit test (`layering`) reads the crate's own `crate::`
//! and `super::` paths and fails on any that points up or closes a loop.
//!
//! ```text
//! tier 0  vocabulary   grpc (codes, Status, reasons, details, Deadline, the HTTP/2-error
//!                      table) · trace_context · sha256 · reload (Current<T>, poll) · clock ·
//!                      version · test_util (for tests only: a JWKS server)
//! tier 1  data         config · metrics · identity (Principal, the identity header
//!                      table) · call_context · schema (method table, field paths,
//!                      the wire scan)
//! tier 2  connection   tls · body · telemetry · cli · inject (Kubernetes YAML in, with the
//!                      sidecar out)
//! tier 3  stages       serve (accept, connection, server, budget) · pool · upstream ·
//!                      auth · limits (the per-identity table; rules, buckets, store,
//!                      replicas, metrics: budgets shared across replicas in Redis) ·
//!                      learn (the app's schema, from its reflection or a descriptor set)
//! tier 4  layers       layers (recovery, watch, observe, deadline)
//! tier 5  the chains   inbound::build · outbound::build
//! tier 6  processes    admin · app → main
//! ```
//!
//! Call-scoped resources (a limit slot, a call-context handle) ride the response body,
//! which is dropped exactly when the call ends; what the layers below learn about a call
//! (how Auth decided, which server answered) they write into the call's facts, which the
//! observing layers read when it ends. Nothing travels back up a chain in extensions.
//!
//! One way to do each thing: a value swapped on reload is a [`reload::Current`], a file
//! watched for change goes through [`reload::poll`], "now" in seconds is
//! [`clock::unix_now`], `grpc-timeout` is read once into a [`grpc::Deadline`], and the
//! process's signals are installed once, in `app`.
//!
//! # Non-goals
//!
//! - A general egress proxy: outbound reaches only the destinations the config names,
//!   each by its verified identity; there is no pass-through to arbitrary hosts.
//! - Load balancing across many backends inbound: there is one app, on loopback or a
//!   Unix socket.
//! - HTTP/1.1, gRPC-Web and WebSockets: callers speak HTTP/2 gRPC.
//! - A control plane or a service mesh: one YAML file is the whole configuration, and
//!   nothing intercepts traffic the app did not send to gatehouse.
//! - An edge API gateway: no login flows, no quota plans.
//! - A certificate authority: certificates come from cert-manager, SPIRE or another CA,
//!   as files.

#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod auth;
pub mod body;
pub mod call_context;
pub mod cli;
pub mod clock;
pub mod config;
pub mod grpc;
pub mod identity;
pub mod inbound;
pub mod inject;
#[cfg(test)]
mod layering;
pub mod layers;
pub mod learn;
pub mod limits;
pub mod metrics;
pub mod outbound;
pub mod pool;
pub mod reload;
pub mod schema;
pub mod serve;
pub mod sha256;
pub mod telemetry;
#[cfg(any(test, feature = "test-util"))]
pub mod test_util;
pub mod tls;
pub mod trace_context;
pub mod upstream;
pub mod version;
