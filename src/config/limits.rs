//! `limits`: what one caller may take from the sidecar.

use serde::Deserialize;

use super::{ByteSize, Duration, Problem};

/// `limits`: what one caller may take from the sidecar. The defaults suit a sidecar in
/// front of one app; each is documented in the example config.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Open connections at once; more are closed at accept.
    pub max_connections: usize,
    /// Open connections from one client address, and with one verified client
    /// certificate identity; absent: a quarter of `max_connections` (at least 1).
    pub max_connections_per_client: Option<usize>,
    /// Time a new connection has from accept to the caller's HTTP/2 preface and first
    /// SETTINGS, the TLS handshake included.
    pub handshake_timeout: Duration,
    /// Concurrent streams (calls) per connection, advertised in SETTINGS.
    pub max_concurrent_streams: u32,
    /// Largest header list a caller may send, in bytes, advertised in SETTINGS.
    pub max_header_list_size: u32,
    /// How often an idle connection is pinged to see that the caller is alive.
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
    /// On SIGTERM, how long in-flight calls may take to finish.
    pub drain_timeout: Duration,
    /// On SIGTERM, how long to keep accepting after `/readyz` turned unready, so load
    /// balancers stop sending before gatehouse stops listening.
    pub drain_delay: Duration,
    /// A connection with no call open for this long is closed with GOAWAY.
    pub idle_timeout: Duration,
    /// Connections older than this are closed with GOAWAY (calls in flight finish), so
    /// clients rebalance; absent: no limit.
    pub max_connection_age: Option<Duration>,
    /// HTTP/2 connections to the app at most, so no single caller's stream can hold a
    /// window every call needs.
    pub upstream_connections: usize,
    /// Calls that may wait for a stream when every connection to the app is at the app's
    /// stream limit; more get RESOURCE_EXHAUSTED at once.
    pub upstream_queue: usize,
    /// How long a call may wait for a stream to the app before RESOURCE_EXHAUSTED.
    pub upstream_queue_timeout: Duration,
    /// What one identity may take of the app.
    pub per_identity: PerIdentity,
    /// The share of the app's streams that calls needing no credentials may take.
    pub public_calls: PublicCalls,
    /// The memory gatehouse may use, checked against the worst case its limits allow;
    /// absent: the cgroup's `memory.max`, when there is one.
    pub memory_limit: Option<ByteSize>,
}

impl Limits {
    /// `max_connections_per_client`, or its default.
    pub fn connections_per_client(&self) -> usize {
        self.max_connections_per_client
            .unwrap_or(self.max_connections.div_ceil(4))
            .max(1)
    }

    /// Streams to the app at most: what the pool puts on its connections.
    pub fn app_streams(&self) -> u32 {
        u32::try_from(self.upstream_connections.saturating_mul(100)).unwrap_or(u32::MAX)
    }

    /// `public_calls.max_concurrent_calls`, or its default: a tenth of the app's streams.
    pub fn public_calls_share(&self) -> u32 {
        self.public_calls
            .max_concurrent_calls
            .unwrap_or(self.app_streams() / 10)
            .max(1)
    }

    /// `public_calls.per_client`, or its default: a quarter of the share.
    pub fn public_calls_per_client(&self) -> u32 {
        self.public_calls
            .per_client
            .unwrap_or(self.public_calls_share() / 4)
            .max(1)
    }

    /// Counts are at least 1 and timeouts longer than zero.
    pub(super) fn validate(&self, problems: &mut Vec<Problem>) {
        let limits = self;
        let positive = [
            ("limits.max_connections", limits.max_connections as u64),
            (
                "limits.max_concurrent_streams",
                u64::from(limits.max_concurrent_streams),
            ),
            (
                "limits.upstream_connections",
                limits.upstream_connections as u64,
            ),
        ];
        let optional = [(
            "limits.max_connections_per_client",
            limits.max_connections_per_client.map(|n| n as u64),
        )];
        for (field, value) in optional {
            if value == Some(0) {
                problems.push(Problem::new(field, "must be at least 1"));
            }
        }
        for (field, value) in [
            (
                "limits.public_calls.max_concurrent_calls",
                limits.public_calls.max_concurrent_calls,
            ),
            (
                "limits.public_calls.per_client",
                limits.public_calls.per_client,
            ),
        ] {
            if value == Some(0) {
                problems.push(Problem::new(field, "must be at least 1"));
            }
        }
        if limits.per_identity.max_concurrent_calls == 0 {
            problems.push(Problem::new(
                "limits.per_identity.max_concurrent_calls",
                "must be at least 1",
            ));
        }
        for (field, value) in positive {
            if value == 0 {
                problems.push(Problem::new(field, "must be at least 1"));
            }
        }
        if limits.max_header_list_size < 1024 {
            problems.push(Problem::new(
                "limits.max_header_list_size",
                "must be at least 1024 bytes",
            ));
        }
        for (field, value) in [
            ("limits.handshake_timeout", limits.handshake_timeout),
            ("limits.keepalive_interval", limits.keepalive_interval),
            ("limits.keepalive_timeout", limits.keepalive_timeout),
            ("limits.idle_timeout", limits.idle_timeout),
            (
                "limits.upstream_queue_timeout",
                limits.upstream_queue_timeout,
            ),
        ] {
            if value.get().is_zero() {
                problems.push(Problem::new(field, "must be longer than 0s"));
            }
        }
    }
}

/// `limits.per_identity`: one caller (SPIFFE ID, user, API key name; for a public
/// method, its connection) cannot take the app's whole stream budget.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PerIdentity {
    /// Calls one identity may have open at once; more are refused with
    /// RESOURCE_EXHAUSTED (CONCURRENCY_LIMIT).
    pub max_concurrent_calls: u32,
    /// Calls one identity may start per second (a token bucket holding one second's
    /// worth); more are refused with RESOURCE_EXHAUSTED (RATE_LIMITED). 0: unlimited.
    pub calls_per_second: u32,
}

/// `limits.public_calls`: calls that need no credentials (`auth.public_methods`, and
/// callers without a certificate where it is optional and no `auth` is configured) are
/// counted per client address or client certificate, and all together may hold only a
/// share of the app's streams, so anonymous callers cannot take the streams that
/// authenticated calls (and the readiness of the pod) need.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublicCalls {
    /// Such calls open at once, from every client; absent: a tenth of the app's streams
    /// (`upstream_connections` x 100).
    pub max_concurrent_calls: Option<u32>,
    /// Such calls open at once from one client address or certificate; absent: a
    /// quarter of `max_concurrent_calls`.
    pub per_client: Option<u32>,
}

impl Default for PerIdentity {
    fn default() -> Self {
        PerIdentity {
            max_concurrent_calls: 256,
            calls_per_second: 0,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 4096,
            max_connections_per_client: None,
            handshake_timeout: Duration::from_secs(10),
            max_concurrent_streams: 100,
            max_header_list_size: 16 * 1024,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(30),
            drain_delay: Duration::from_secs(0),
            idle_timeout: Duration::from_secs(3600),
            max_connection_age: None,
            per_identity: PerIdentity::default(),
            public_calls: PublicCalls::default(),
            memory_limit: None,
            upstream_connections: 4,
            upstream_queue: 256,
            upstream_queue_timeout: Duration::from_secs(2),
        }
    }
}
