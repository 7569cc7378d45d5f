//! The most memory gatehouse can need under its limits, which `gatehouse check` prints
//! and compares with the memory limit (docs/deploy.md states the formula).

use super::server::CALLER_CONNECTION_WINDOW;
use crate::config::Limits;
use crate::pool;

/// What an open connection costs besides the data it may make gatehouse hold: TLS
/// record buffers, HTTP/2 state (HPACK tables, frame buffer), the task. Measured: 60 KiB
/// per idle TLS connection (docs/deploy.md).
pub const CONNECTION_COST: u64 = 64 * 1024;
/// What an open call costs besides its headers: stream state on both sides, the
/// middleware's records, the forwarding task. Its headers are counted three times (as
/// received, as decoded, as sent on): 6,159 open calls with 12 KB of headers cost 41 KiB
/// each.
pub const CALL_COST: u64 = 8 * 1024;
/// What gatehouse needs with no connection open (a release build idles under 8 MiB):
/// runtime, configuration, key caches, metrics, log buffers.
pub const BASE_COST: u64 = 16 * 1024 * 1024;
/// What one open stream to the app can make gatehouse hold besides its answer's headers:
/// its receive window (response data the caller is not taking) and the request bytes
/// kept until the app answers (so a call the app refused unprocessed can be sent again).
pub const UPSTREAM_STREAM_COST: u64 = pool::STREAM_WINDOW as u64 + pool::REPLAY_LIMIT as u64;

/// The most memory gatehouse can need under its limits: every connection open with
/// every call it may open, each connection holding as much request data as its receive
/// window allows and one frame being read, plus what gatehouse needs anyway, the span
/// export queue and what every stream to the app may hold. Printed by `gatehouse check` and checked
/// against the memory limit; docs/deploy.md states the formula.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryBudget {
    /// Bytes one connection can cost, its calls included.
    pub per_connection: u64,
    pub connections: u64,
    /// Bytes that do not grow with connections.
    pub fixed: u64,
    pub total: u64,
}

impl MemoryBudget {
    pub fn of(limits: &Limits) -> MemoryBudget {
        let headers = u64::from(limits.max_header_list_size);
        // One frame being decoded: at most a header list, or a DATA frame (16 KiB).
        let frame = headers.max(16 * 1024);
        let per_call = CALL_COST + 3 * headers;
        let per_connection = CONNECTION_COST
            + u64::from(CALLER_CONNECTION_WINDOW)
            + frame
            + u64::from(limits.max_concurrent_streams) * per_call;
        let connections = limits.max_connections as u64;
        // Streams to the app: as many as callers can open, but never more than the pool
        // puts on its connections.
        let upstream_streams = (connections * u64::from(limits.max_concurrent_streams))
            .min((limits.upstream_connections * pool::STREAMS_PER_CONNECTION) as u64);
        let fixed = BASE_COST
            + upstream_streams
                * (UPSTREAM_STREAM_COST + u64::from(pool::response_header_list(limits)))
            + crate::telemetry::SPAN_QUEUE_BYTES as u64;
        MemoryBudget {
            per_connection,
            connections,
            fixed,
            total: fixed.saturating_add(connections.saturating_mul(per_connection)),
        }
    }
}

impl std::fmt::Display for MemoryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const MIB: u64 = 1024 * 1024;
        write!(
            f,
            "{} MiB ({} connections x {} KiB + {} MiB)",
            self.total.div_ceil(MIB),
            self.connections,
            self.per_connection.div_ceil(1024),
            self.fixed.div_ceil(MIB)
        )
    }
}
