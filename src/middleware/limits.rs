//! Limits: what one identity may take of the app. An identity (the SPIFFE ID, user or
//! API key name that Auth verified; for a public method, the caller's connection) may
//! have at most `limits.per_identity.max_concurrent_calls` calls open and, when
//! `calls_per_second` is set, start at most that many a second (a token bucket holding
//! one second's worth). A call over either is answered RESOURCE_EXHAUSTED without
//! reaching the app, counted in `gatehouse_limit_refusals_total{limit}` and logged.
//!
//! It sits after Auth because it needs the identity Auth decided, which Auth leaves in
//! the request's extensions. The per-identity table is bounded: an identity's entry is
//! removed once it has no call open and its bucket is full again, and entries left with
//! a refilling bucket are swept as the table grows, so the table holds the identities
//! with calls open or started within the last second, and no more.
//!
//! ```no_run
//! # fn example(forward: gatehouse::upstream::Forward) {
//! use std::sync::Arc;
//! use gatehouse::config::PerIdentity;
//! use gatehouse::metrics::Metrics;
//! use gatehouse::middleware::limits::LimitsLayer;
//! use tower::Layer;
//! let limits = PerIdentity { max_concurrent_calls: 64, calls_per_second: 100 };
//! let service = LimitsLayer::new(&limits, Arc::new(Metrics::new())).layer(forward);
//! # }
//! ```

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Request, Response};
use tower::{Layer, Service};

use crate::auth::outcome::AuthOutcome;
use crate::body::{RequestBody, ResponseBody};
use crate::config::PerIdentity;
use crate::grpc::{self, Reason};
use crate::identity::AuthMethod;
use crate::metrics::Metrics;
use crate::server::HeldForCall;
use crate::tls::ConnectionInfo;

/// Below this many entries the table is never swept.
const SWEEP_FLOOR: usize = 64;
/// Caller-controlled text (a user id, a key name, a method) in a log line, at most.
const LOGGED_CHARS: usize = 128;

/// Wraps a service in [`Limits`].
#[derive(Clone)]
pub struct LimitsLayer {
    table: Arc<Table>,
    metrics: Arc<Metrics>,
}

impl LimitsLayer {
    pub fn new(limits: &PerIdentity, metrics: Arc<Metrics>) -> Self {
        let max = limits.max_concurrent_calls;
        let rate = limits.calls_per_second;
        LimitsLayer {
            table: Arc::new(Table {
                max_concurrent_calls: max,
                calls_per_second: rate,
                concurrency_message: format!(
                    "CONCURRENCY_LIMIT: this caller already has {max} calls open \
                     (limits.per_identity.max_concurrent_calls)"
                ),
                rate_message: format!(
                    "RATE_LIMITED: this caller started more than {rate} calls in the last second \
                     (limits.per_identity.calls_per_second)"
                ),
                entries: Mutex::new(Entries {
                    map: HashMap::new(),
                    sweep_at: SWEEP_FLOOR,
                }),
            }),
            metrics,
        }
    }
}

impl<S> Layer<S> for LimitsLayer {
    type Service = Limits<S>;

    fn layer(&self, inner: S) -> Limits<S> {
        Limits {
            inner,
            table: self.table.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// See the module documentation.
#[derive(Clone)]
pub struct Limits<S> {
    inner: S,
    table: Arc<Table>,
    metrics: Arc<Metrics>,
}

/// Who a call is counted against.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
enum Identity {
    User(Box<str>),
    ApiKey(Box<str>),
    Peer(Box<str>),
    /// A caller without a verified name: one per connection.
    Connection(u64),
}

impl Identity {
    /// The identity of a call Auth admitted.
    fn of(outcome: Option<&AuthOutcome>, connection: Option<&ConnectionInfo>) -> Identity {
        let principal = outcome.and_then(AuthOutcome::principal);
        if let Some(principal) = principal {
            match principal.method {
                AuthMethod::ApiKey => {
                    if let Some(name) = &principal.api_key_name {
                        return Identity::ApiKey(name.as_str().into());
                    }
                }
                AuthMethod::Jwt => {
                    if let Some(user) = &principal.user_id {
                        return Identity::User(user.as_str().into());
                    }
                }
                AuthMethod::Mtls | AuthMethod::None => {}
            }
            // A public method is counted per connection even when a certificate was
            // shown, so anonymous calls cannot use up the certificate holder's share.
            if principal.method != AuthMethod::None
                && let Some(peer) = connection.and_then(|c| c.peer.as_ref())
            {
                return Identity::Peer(peer.name().into());
            }
        }
        Identity::Connection(connection.map_or(0, |c| c.id))
    }

    fn describe(&self) -> String {
        let (kind, name) = match self {
            Identity::User(name) => ("user", name),
            Identity::ApiKey(name) => ("api_key", name),
            Identity::Peer(name) => ("peer", name),
            Identity::Connection(id) => return format!("connection:{id}"),
        };
        format!("{kind}:{}", truncated(name))
    }
}

/// At most [`LOGGED_CHARS`] characters of `text`.
fn truncated(text: &str) -> &str {
    match text.char_indices().nth(LOGGED_CHARS) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

struct Table {
    max_concurrent_calls: u32,
    calls_per_second: u32,
    concurrency_message: String,
    rate_message: String,
    entries: Mutex<Entries>,
}

struct Entries {
    map: HashMap<Identity, Entry>,
    /// The table is swept when it reaches this size.
    sweep_at: usize,
}

struct Entry {
    open: u32,
    /// Calls this identity may still start now; refilled at `calls_per_second`.
    tokens: f64,
    refilled: Instant,
}

/// Which limit refused a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Exceeded {
    Concurrency,
    Rate,
}

impl Exceeded {
    fn limit(self) -> &'static str {
        match self {
            Exceeded::Concurrency => "max_concurrent_calls",
            Exceeded::Rate => "calls_per_second",
        }
    }
}

impl Table {
    fn capacity(&self) -> f64 {
        f64::from(self.calls_per_second)
    }

    /// Tops the entry's bucket up to `now`; true when it is full.
    fn refill(&self, entry: &mut Entry, now: Instant) -> bool {
        if self.calls_per_second == 0 {
            return true;
        }
        let elapsed = now.saturating_duration_since(entry.refilled).as_secs_f64();
        entry.tokens = (entry.tokens + elapsed * self.capacity()).min(self.capacity());
        entry.refilled = now;
        entry.tokens >= self.capacity()
    }

    /// A call slot for `identity`, or the limit it is over.
    fn admit(self: &Arc<Self>, identity: Identity) -> Result<CallSlot, (Exceeded, Identity)> {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if !entries.map.contains_key(&identity) && entries.map.len() >= entries.sweep_at {
            self.sweep(&mut entries, now);
        }
        let entry = entries.map.entry(identity.clone()).or_insert(Entry {
            open: 0,
            tokens: self.capacity(),
            refilled: now,
        });
        self.refill(entry, now);
        if self.calls_per_second > 0 && entry.tokens < 1.0 {
            return Err((Exceeded::Rate, identity));
        }
        if entry.open >= self.max_concurrent_calls {
            return Err((Exceeded::Concurrency, identity));
        }
        if self.calls_per_second > 0 {
            entry.tokens -= 1.0;
        }
        entry.open += 1;
        Ok(CallSlot {
            table: self.clone(),
            identity,
        })
    }

    /// Removes the entries that hold nothing any more: no call open, bucket full.
    fn sweep(&self, entries: &mut Entries, now: Instant) {
        entries
            .map
            .retain(|_, entry| entry.open > 0 || !self.refill(entry, now));
        entries.sweep_at = (entries.map.len() * 2).max(SWEEP_FLOOR);
    }

    fn release(&self, identity: &Identity) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let Some(entry) = entries.map.get_mut(identity) else {
            return;
        };
        entry.open = entry.open.saturating_sub(1);
        if entry.open == 0 && self.refill(entry, Instant::now()) {
            entries.map.remove(identity);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map
            .len()
    }
}

/// One open call of an identity; given back when the call's response ends.
struct CallSlot {
    table: Arc<Table>,
    identity: Identity,
}

impl Drop for CallSlot {
    fn drop(&mut self) {
        self.table.release(&self.identity);
    }
}

/// Second of the last refusal logged at INFO: at most one a second, so a caller hammering
/// its limit cannot flood the log (the metric counts every one).
static LAST_REFUSAL_LOG: AtomicU64 = AtomicU64::new(0);

fn log_refusal(identity: &Identity, exceeded: Exceeded, method: &str) {
    let now = crate::clock::unix_now();
    let identity = identity.describe();
    let method = truncated(method);
    let limit = exceeded.limit();
    if LAST_REFUSAL_LOG.swap(now, Ordering::Relaxed) != now {
        tracing::info!(identity, limit, method, "call refused: per-identity limit");
    } else {
        tracing::debug!(identity, limit, method, "call refused: per-identity limit");
    }
}

impl<S> Service<Request<RequestBody>> for Limits<S>
where
    S: Service<Request<RequestBody>, Response = Response<ResponseBody>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = LimitsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<RequestBody>) -> Self::Future {
        let identity = Identity::of(
            request.extensions().get::<AuthOutcome>(),
            request
                .extensions()
                .get::<Arc<ConnectionInfo>>()
                .map(Arc::as_ref),
        );
        let slot = match self.table.admit(identity) {
            Ok(slot) => slot,
            Err((exceeded, identity)) => {
                self.metrics.limit_refusal(exceeded.limit());
                log_refusal(&identity, exceeded, request.uri().path());
                let (reason, message) = match exceeded {
                    Exceeded::Concurrency => {
                        (Reason::ConcurrencyLimit, &self.table.concurrency_message)
                    }
                    Exceeded::Rate => (Reason::RateLimited, &self.table.rate_message),
                };
                let response = grpc::Status::new(reason, message.clone())
                    .with("method", request.uri().path())
                    .with("limit", exceeded.limit())
                    .response();
                return LimitsFuture::Refused {
                    response: std::future::ready(Ok(response)),
                };
            }
        };
        LimitsFuture::Admitted {
            call: self.inner.call(request),
            slot: Some(slot),
        }
    }
}

pin_project_lite::pin_project! {
    /// What [`Limits`] answers with: a named future rather than a boxed one, which
    /// saves an allocation on every call.
    #[project = LimitsProjection]
    pub enum LimitsFuture<F> {
        Refused { response: std::future::Ready<Result<Response<ResponseBody>, Infallible>> },
        Admitted { #[pin] call: F, slot: Option<CallSlot> },
    }
}

impl<F> Future for LimitsFuture<F>
where
    F: Future<Output = Result<Response<ResponseBody>, Infallible>>,
{
    type Output = Result<Response<ResponseBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            LimitsProjection::Refused { response } => Pin::new(response).poll(cx),
            LimitsProjection::Admitted { call, slot } => {
                let mut response = std::task::ready!(call.poll(cx))?;
                // The server keeps the slot with the response body until it is sent or
                // reset.
                if let Some(slot) = slot.take() {
                    response.extensions_mut().insert(HeldForCall::new(slot));
                }
                Poll::Ready(Ok(response))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(max_concurrent_calls: u32, calls_per_second: u32) -> Arc<Table> {
        LimitsLayer::new(
            &PerIdentity {
                max_concurrent_calls,
                calls_per_second,
            },
            Arc::new(Metrics::new()),
        )
        .table
    }

    fn user(name: &str) -> Identity {
        Identity::User(name.into())
    }

    #[test]
    fn refuses_an_identity_over_its_open_calls_and_not_another() {
        let table = table(2, 0);
        let held: Vec<_> = (0..2)
            .map(|_| table.admit(user("a")).ok().unwrap())
            .collect();
        let refused = table.admit(user("a")).err().map(|(exceeded, _)| exceeded);
        assert_eq!(refused, Some(Exceeded::Concurrency));
        assert!(table.admit(user("b")).is_ok(), "another identity is served");
        drop(held);
        assert!(
            table.admit(user("a")).is_ok(),
            "slots come back when calls end"
        );
    }

    #[test]
    fn refuses_an_identity_over_its_rate_until_the_bucket_refills() {
        let table = table(100, 3);
        for _ in 0..3 {
            drop(table.admit(user("a")).ok().unwrap());
        }
        let refused = table.admit(user("a")).err().map(|(exceeded, _)| exceeded);
        assert_eq!(refused, Some(Exceeded::Rate));
        assert!(table.admit(user("b")).is_ok(), "another identity is served");
        {
            let mut entries = table.entries.lock().unwrap();
            let entry = entries.map.get_mut(&user("a")).unwrap();
            entry.refilled -= std::time::Duration::from_secs(1);
        }
        assert!(
            table.admit(user("a")).is_ok(),
            "a second later the bucket is full"
        );
    }

    #[test]
    fn the_table_forgets_identities_with_nothing_open_and_a_full_bucket() {
        let table = table(10, 0);
        for i in 0..10_000 {
            drop(table.admit(Identity::Connection(i)).ok().unwrap());
        }
        assert_eq!(table.len(), 0);

        // One call a second: each bucket refills a second after its call.
        let table = self::table(10, 1);
        for i in 0..1_000 {
            drop(table.admit(Identity::Connection(i)).ok().unwrap());
        }
        // Each bucket is still refilling, so the entries stay until a second has passed.
        assert!(table.len() > SWEEP_FLOOR, "{} entries", table.len());
        {
            let mut entries = table.entries.lock().unwrap();
            for entry in entries.map.values_mut() {
                entry.refilled -= std::time::Duration::from_secs(1);
            }
        }
        // New identities trigger a sweep before the table doubles, which drops them all.
        let swept = (0..2_000).any(|i| {
            drop(table.admit(Identity::Connection(2_000 + i)).ok().unwrap());
            table.len() < 500
        });
        assert!(swept, "{} entries never swept", table.len());
    }
}
