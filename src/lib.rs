//! gatehouse: a per-pod sidecar that makes gRPC service-to-service calls secure without
//! the services writing any security code.
//!
//! It runs next to an application container, terminates TLS (in production mutual TLS),
//! and hands the application plain HTTP/2 gRPC over a local connection:
//!
//! ```text
//! caller ──mTLS, HTTP/2──▶ gatehouse :12018 ──h2c──▶ app 127.0.0.1:50051
//!                           │
//!                           ├─ listener: bounded connections, handshake timeout
//!                           ├─ tls: verify the client certificate, keep its identity
//!                           ├─ server: HTTP/2 with explicit limits; non-gRPC gets 415
//!                           ├─ middleware: Recovery ▶ … ▶ forward (outermost first)
//!                           └─ upstream: pooled h2c connections, bodies streamed both ways
//! ```
//!
//! The data flow names the modules: [`listener`] accepts, [`tls`] verifies, [`server`]
//! speaks HTTP/2, [`middleware`] assembles the chain, [`upstream`] forwards; [`grpc`]
//! holds the wire vocabulary and builds every refusal, [`body`] carries responses back.
//!
//! The app's own calls out of the pod take the mirror path, when `outbound` is
//! configured ([`outbound`]):
//!
//! ```text
//! app ──h2c──▶ gatehouse 127.0.0.1:15001 ──mTLS, HTTP/2──▶ destination's gatehouse
//!               │
//!               ├─ outbound::listen: loopback or unix: only, same HTTP/2 limits
//!               ├─ outbound::build: Recovery ▶ Record ▶ route ▶ credentials ▶ deadline
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
//! tier 0  vocabulary   grpc · trace_context · sha256 · reload (Current<T>, poll) · clock
//! tier 1  data         config · metrics · auth::principal · call_context
//! tier 2  connection   tls · body · telemetry · cli · inject (Kubernetes YAML in, with the sidecar out)
//! tier 3  stages       server · pool · upstream · auth::{jwks, api_key, jwt, policy, token, binding}
//! tier 4  the chains   middleware::{watch, recovery, logging, metrics, limits, auth} → middleware::build
//!                      outbound::{route, credentials, record, endpoint, listen} → outbound::build
//! tier 5  processes    listener · admin
//! tier 6  wiring       app::{load, reload, signals, wait} → app · main
//! ```
//!
//! One way to do each thing: a value swapped on reload is a [`reload::Current`], a file
//! watched for change goes through [`reload::poll`], "now" in seconds is
//! [`clock::unix_now`], and the process's signals are installed once, in `app`.
//!
//! # Non-goals
//!
//! - A general egress proxy: outbound reaches only the destinations the config names,
//!   each by its verified identity; there is no pass-through to arbitrary hosts.
//! - Load balancing across many backends inbound: there is one app, on loopback or a
//!   Unix socket.
//! - HTTP/1.1, gRPC-Web and WebSockets: callers speak HTTP/2 gRPC.
//! - A control plane: one YAML file is the whole configuration.

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
pub mod inject;
#[cfg(test)]
mod layering;
pub mod listener;
pub mod metrics;
pub mod middleware;
pub mod outbound;
pub mod pool;
pub mod reload;
pub mod server;
pub mod sha256;
pub mod telemetry;
pub mod tls;
pub mod trace_context;
pub mod upstream;
