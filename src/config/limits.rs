//! `limits`: what one caller may take from the sidecar, and the sizing of the limits that
//! dominate memory to the memory gatehouse has.

use serde::Deserialize;

use super::{ByteSize, Duration, GlobalLimits, Problem};

/// `limits`: what one caller may take from the sidecar. The defaults suit a sidecar in
/// front of one app; each is documented in the example config. The four that decide the
/// worst-case memory (connections, streams, header list size, connections to the app) are
/// sized to the memory limit when the file leaves them out ([`Limits::size_to`]).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Open connections at once; more are closed at accept. Default: sized.
    pub max_connections: usize,
    /// Open connections from one client address, and with one verified client
    /// certificate identity; absent: a quarter of `max_connections` (at least 1).
    pub max_connections_per_client: Option<usize>,
    /// Time a new connection has from accept to the caller's HTTP/2 preface and first
    /// SETTINGS, the TLS handshake included.
    pub handshake_timeout: Duration,
    /// Concurrent streams (calls) per connection, advertised in SETTINGS. Default: sized.
    pub max_concurrent_streams: u32,
    /// Largest header list a caller may send, in bytes, advertised in SETTINGS. Default:
    /// sized.
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
    /// window every call needs. Default: sized.
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
    /// Budgets shared by every replica, kept in Redis; absent: every limit is per pod.
    pub global: Option<GlobalLimits>,
    /// Which of the sized limits the file wrote; the others are sized.
    #[serde(skip)]
    pub written: Written,
    /// Request bytes each call may make gatehouse hold besides its window: a whole
    /// message for methods with field rules, 0 without (`Schema::held_per_call`). Not
    /// written under `limits`: set from `schema` and `authorization` when the file is
    /// parsed, so the worst case and the sizing count it.
    #[serde(skip)]
    pub held_per_call: u64,
}

/// The limits that decide the worst-case memory, and whether the file wrote each one:
/// a written value is kept (and checked), one left out is sized by [`Limits::size_to`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Written {
    pub max_connections: bool,
    pub max_concurrent_streams: bool,
    pub max_header_list_size: bool,
    pub upstream_connections: bool,
}

/// What the sized limits are sized for when neither `limits.memory_limit` nor a cgroup
/// says how much memory there is: a sidecar's share of a modest node.
pub const UNKNOWN_MEMORY: u64 = 1 << 30;
/// The share of the memory limit the sized limits may promise in the worst case; the
/// rest is headroom for what the budget does not count (allocator slack, the app's
/// bursts of small frames, TLS session caches).
const SIZED_SHARE: (u64, u64) = (3, 4);
/// Below this memory limit, headers are capped at 8 KiB (gRPC Java's and C-core's
/// default metadata limit) and two connections carry the calls to the app.
const SMALL_POD: u64 = 512 << 20;
/// Sized connections stay within what the defaults always allowed.
const MOST_CONNECTIONS: usize = 4096;
/// Sized streams per connection: gRPC's customary 100, down to 8 in a small pod.
const MOST_STREAMS: u32 = 100;
const FEWEST_STREAMS: u32 = 8;
/// Streams per connection are lowered before connections fall below this many: a
/// sidecar is called by many pods, each with a connection or two.
const ENOUGH_CONNECTIONS: usize = 64;
/// Sized connections never go below this many, even when the memory limit is too small
/// for them: `check` then says so rather than the sidecar refusing its callers.
const FEWEST_CONNECTIONS: usize = 16;

impl Written {
    /// Reads which sized limits `text` (a whole configuration file) writes. The file
    /// has parsed already, so anything unreadable here means "not written".
    pub fn in_file(text: &str) -> Written {
        #[derive(Deserialize)]
        struct File {
            #[serde(default)]
            limits: Option<Section>,
        }
        #[derive(Deserialize)]
        struct Section {
            max_connections: Option<serde::de::IgnoredAny>,
            max_concurrent_streams: Option<serde::de::IgnoredAny>,
            max_header_list_size: Option<serde::de::IgnoredAny>,
            upstream_connections: Option<serde::de::IgnoredAny>,
        }
        let Ok(File {
            limits: Some(section),
        }) = serde_saphyr::from_str::<File>(text)
        else {
            return Written::default();
        };
        Written {
            max_connections: section.max_connections.is_some(),
            max_concurrent_streams: section.max_concurrent_streams.is_some(),
            max_header_list_size: section.max_header_list_size.is_some(),
            upstream_connections: section.upstream_connections.is_some(),
        }
    }
}

impl Limits {
    /// Sizes the limits the file left out to `memory` bytes, so that `worst_case` (the
    /// memory budget of a set of limits, `server::MemoryBudget`) stays within three
    /// quarters of it; written values are kept. In order:
    ///
    /// - `max_header_list_size`: 8 KiB below 512 MiB, else 16 KiB;
    /// - `upstream_connections`: 2 below 512 MiB, else 4;
    /// - `max_concurrent_streams`: 100, lowered (to no fewer than 8) until at least 64
    ///   connections fit;
    /// - `max_connections`: as many as fit (at least 16, at most 4,096).
    ///
    /// docs/deploy.md shows the result for common pod sizes.
    pub fn size_to(&mut self, memory: u64, worst_case: impl Fn(&Limits) -> u64) {
        let small = memory < SMALL_POD;
        if !self.written.max_header_list_size {
            self.max_header_list_size = if small { 8 * 1024 } else { 16 * 1024 };
        }
        if !self.written.upstream_connections {
            self.upstream_connections = if small { 2 } else { 4 };
        }
        let budget = memory / SIZED_SHARE.1 * SIZED_SHARE.0;
        let fits = |limits: &Limits| worst_case(limits) <= budget;
        match (
            self.written.max_connections,
            self.written.max_concurrent_streams,
        ) {
            (true, true) => {}
            (true, false) => {
                self.max_concurrent_streams = most(1, MOST_STREAMS.into(), |streams| {
                    fits(&Limits {
                        max_concurrent_streams: streams as u32, // at most MOST_STREAMS
                        ..self.clone()
                    })
                })
                .map_or(1, |streams| streams as u32);
            }
            (false, true) => {
                self.max_connections = self.connections_that_fit(&fits).max(1);
            }
            (false, false) => {
                let enough = |streams: u64| {
                    let limits = Limits {
                        max_concurrent_streams: streams as u32, // at most MOST_STREAMS
                        ..self.clone()
                    };
                    limits.connections_that_fit(&fits) >= ENOUGH_CONNECTIONS
                };
                self.max_concurrent_streams =
                    most(FEWEST_STREAMS.into(), MOST_STREAMS.into(), enough)
                        .map_or(FEWEST_STREAMS, |streams| streams as u32);
                self.max_connections = self.connections_that_fit(&fits).max(FEWEST_CONNECTIONS);
            }
        }
    }

    /// The most connections (up to 4,096) whose worst case `fits`; 0 when not even one.
    fn connections_that_fit(&self, fits: &impl Fn(&Limits) -> bool) -> usize {
        most(1, MOST_CONNECTIONS as u64, |connections| {
            fits(&Limits {
                max_connections: connections as usize, // at most MOST_CONNECTIONS
                ..self.clone()
            })
        })
        .map_or(0, |connections| connections as usize)
    }

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

    /// Calls out the app may have open at once through the outbound port, all
    /// destinations together: half the app's own streams. More are refused
    /// `DESTINATION_BUSY`.
    pub fn outbound_calls(&self) -> u32 {
        self.app_streams() / 2
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
        if let Some(global) = &limits.global {
            global.validate(problems);
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
            global: None,
            written: Written::default(),
            held_per_call: 0,
        }
    }
}

/// The largest `n` in `low..=high` for which `holds` is true, when `holds` is true up to
/// some point and false after it; `None` when it is false at `low`.
fn most(low: u64, high: u64, holds: impl Fn(u64) -> bool) -> Option<u64> {
    if !holds(low) {
        return None;
    }
    // Invariant: holds(low), and everything above `high` fails.
    let (mut low, mut high) = (low, high);
    while low < high {
        let middle = low + (high - low).div_ceil(2);
        if holds(middle) {
            low = middle;
        } else {
            high = middle - 1;
        }
    }
    Some(low)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, MINIMAL};

    #[test]
    fn the_parsed_config_knows_which_sized_limits_the_file_wrote() {
        let config = Config::from_yaml(&format!(
            "{MINIMAL}limits: {{ max_connections: 64, upstream_connections: 2 }}\n"
        ))
        .unwrap();
        assert_eq!(
            config.limits.written,
            Written {
                max_connections: true,
                upstream_connections: true,
                ..Written::default()
            }
        );
        assert_eq!(
            Config::from_yaml(MINIMAL).unwrap().limits.written,
            Written::default()
        );
    }

    #[test]
    fn most_finds_the_last_value_that_holds() {
        assert_eq!(most(1, 4096, |n| n * n <= 1000), Some(31));
        assert_eq!(most(1, 4096, |_| true), Some(4096));
        assert_eq!(most(8, 100, |n| n < 8), None);
        assert_eq!(most(5, 5, |_| true), Some(5));
    }
}
