//! The most memory gatehouse can need under its limits, which `gatehouse check` prints
//! and compares with the memory limit (docs/deploy.md states the formula).

use super::accept::APP_CONNECTIONS;
use super::server::CALLER_CONNECTION_WINDOW;
use crate::call_context::CallContexts;
use crate::config::{Limits, Outbound};
use crate::limits;
use crate::pool;

/// What an open connection costs besides the data it may make gatehouse hold: TLS
/// record buffers, HTTP/2 state (HPACK tables, frame buffer), the task. Measured: 60 KiB
/// per idle TLS connection (docs/deploy.md), plus up to 10.4 KiB of decoded header values
/// HPACK remembers (two Huffman-coded strings of at most 2 KiB, with what they decode to:
/// `vendor/h2/src/hpack/memo.rs`) once a caller sends long values.
pub const CONNECTION_COST: u64 = 72 * 1024;
/// What an open call costs besides its headers: stream state on both sides, the
/// middleware's records, the forwarding task. Its headers are counted three times (as
/// received, as decoded, as sent on): 6,159 open calls with 12 KB of headers cost 41 KiB
/// each. A caller's call whose messages are checked against field rules holds one more
/// message (`limits.held_per_call`).
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
/// export queue and what every stream to the app may hold; with `outbound`, the app's
/// connections to the outbound port, every call out it may open with what its stream to
/// the destination may hold, and the call-context table; with `limits.global`, its
/// table of buckets. Printed by `gatehouse check` and checked against the memory limit;
/// docs/deploy.md states the formula.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryBudget {
    /// Bytes one connection can cost, its calls included.
    pub per_connection: u64,
    pub connections: u64,
    /// Bytes that do not grow with connections.
    pub fixed: u64,
    /// Bytes the outbound side can take (0 without `outbound`): its connections, calls and
    /// streams to destinations.
    pub outbound: u64,
    /// Bytes the call-context table can take (0 unless a destination uses
    /// `credentials: context`).
    pub contexts: u64,
    /// Bytes the table of `limits.global` can take (0 without it): `max_buckets`
    /// buckets, each with a lease in flight.
    pub global: u64,
    pub total: u64,
}

impl MemoryBudget {
    pub fn of(limits: &Limits, outbound: Option<&Outbound>) -> MemoryBudget {
        let headers = u64::from(limits.max_header_list_size);
        // One frame being decoded: at most a header list, or a DATA frame (16 KiB).
        let frame = headers.max(16 * 1024);
        let per_call = CALL_COST + 3 * headers;
        let idle_connection = CONNECTION_COST + u64::from(CALLER_CONNECTION_WINDOW) + frame;
        // A caller's call may also hold a request message for its field rules.
        let per_connection = idle_connection
            + u64::from(limits.max_concurrent_streams) * (per_call + limits.held_per_call);
        let connections = limits.max_connections as u64;
        // What one stream to the app or a destination may hold, its answer's headers
        // included.
        let per_stream = UPSTREAM_STREAM_COST + u64::from(pool::response_header_list(limits));
        // Streams to the app: as many as callers can open, but never more than the pool
        // puts on its connections.
        let upstream_streams = (connections * u64::from(limits.max_concurrent_streams))
            .min((limits.upstream_connections * pool::STREAMS_PER_CONNECTION) as u64);
        let fixed =
            BASE_COST + upstream_streams * per_stream + crate::telemetry::SPAN_QUEUE_BYTES as u64;
        // The app's calls out: at most `outbound_calls` open at once (more are refused),
        // on at most APP_CONNECTIONS connections.
        let outbound_cost = outbound.map_or(0, |_| {
            let app_connections = limits.max_connections.min(APP_CONNECTIONS) as u64;
            app_connections * idle_connection
                + u64::from(limits.outbound_calls()) * (per_call + per_stream)
        });
        let contexts = outbound
            .filter(|outbound| outbound.uses_context())
            .map_or(0, |outbound| {
                CallContexts::budget(&outbound.context_bounds(limits), headers)
            });
        let global = limits.global.as_ref().map_or(0, limits::memory_budget);
        MemoryBudget {
            per_connection,
            connections,
            fixed,
            outbound: outbound_cost,
            contexts,
            global,
            total: fixed
                .saturating_add(outbound_cost)
                .saturating_add(contexts)
                .saturating_add(global)
                .saturating_add(connections.saturating_mul(per_connection)),
        }
    }
}

impl std::fmt::Display for MemoryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const MIB: u64 = 1024 * 1024;
        write!(
            f,
            "{} MiB ({} connections x {} KiB + {} MiB",
            self.total.div_ceil(MIB),
            self.connections,
            self.per_connection.div_ceil(1024),
            self.fixed.div_ceil(MIB)
        )?;
        if self.outbound > 0 {
            write!(f, " + {} MiB outbound", self.outbound.div_ceil(MIB))?;
        }
        if self.contexts > 0 {
            write!(f, " + {} MiB call contexts", self.contexts.div_ceil(MIB))?;
        }
        if self.global > 0 {
            write!(f, " + {} MiB global limits", self.global.div_ceil(MIB))?;
        }
        f.write_str(")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const MINIMAL: &str = "listen: { address: 127.0.0.1:1 }\ntls: { enabled: false }\nupstream: { address: 127.0.0.1:2 }\n";

    #[test]
    fn a_message_held_for_field_rules_counts_on_every_call() {
        let plain = Config::from_yaml(MINIMAL).unwrap().limits;
        let checked = Config::from_yaml(&format!(
            "{MINIMAL}schema: {{ source: reflection, max_message_size: 64KiB }}\n\
             authorization:\n  rules:\n    - {{ methods: ['*'], allow_roles: [a], fields: {{ tenant_id: '{{tenant}}' }} }}\n"
        ))
        .unwrap()
        .limits;
        let (plain, checked) = (
            MemoryBudget::of(&plain, None),
            MemoryBudget::of(&checked, None),
        );
        let held = 64 * 1024 + 16 * 1024 + 5;
        assert_eq!(
            checked.per_connection - plain.per_connection,
            u64::from(Limits::default().max_concurrent_streams) * held
        );
    }

    const MIB: u64 = 1024 * 1024;

    fn limits(yaml: &str) -> Limits {
        let config =
            Config::from_yaml(&format!("{MINIMAL}{yaml}")).unwrap_or_else(|p| panic!("{p}"));
        config.limits
    }

    const GLOBAL: &str = "  global:
    redis: redis://127.0.0.1:6379
    key_prefix: p
    MAX_BUCKETS
    rules: [{ per: tenant, calls_per_second: 10 }]
";

    #[test]
    fn the_table_of_global_limits_is_in_the_budget() {
        let written = "limits:\n  max_connections: 100\n  max_concurrent_streams: 100\n";
        let without = MemoryBudget::of(&limits(written), None);
        let with = MemoryBudget::of(
            &limits(&format!("{written}{}", GLOBAL.replace("MAX_BUCKETS", ""))),
            None,
        );
        assert_eq!(without.global, 0);
        // The default 16,384 buckets, each with a lease in flight.
        assert_eq!(with.global, 16_384 * limits::buckets::BUCKET_COST);
        assert_eq!(with.total, without.total + with.global);
        assert!(
            with.to_string().ends_with(" + 48 MiB global limits)"),
            "{with}"
        );
        let fewer = MemoryBudget::of(
            &limits(&format!(
                "{written}{}",
                GLOBAL.replace("MAX_BUCKETS", "max_buckets: 1024")
            )),
            None,
        );
        assert_eq!(fewer.global.div_ceil(MIB), 3);
    }

    #[test]
    fn sized_limits_make_room_for_the_table_of_global_limits() {
        let memory = 256 * MIB;
        let sized = |yaml: &str| {
            let mut limits = limits(yaml);
            limits.size_to(memory, |limits| MemoryBudget::of(limits, None).total);
            limits
        };
        let per_pod = sized("");
        let global = sized(&format!("limits:\n{}", GLOBAL.replace("MAX_BUCKETS", "")));
        // The calls they allow at once.
        let shape =
            |limits: &Limits| limits.max_connections * limits.max_concurrent_streams as usize;
        assert!(shape(&global) < shape(&per_pod));
        assert!(MemoryBudget::of(&global, None).total <= memory * 3 / 4);
    }
}
