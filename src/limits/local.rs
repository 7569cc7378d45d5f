//! The per-pod limits of one identity: at most `limits.per_identity.max_concurrent_calls`
//! calls open and, when `calls_per_second` is set, at most that many started a second
//! (a token bucket holding one second's worth). An identity is what Auth verified: a
//! user together with the provider that vouched for it, an API key's name, or a client
//! certificate by the kind of name it carries.
//!
//! Calls that need no credentials (public methods, and callers without one where the
//! certificate is optional) get a bounded share of the app's streams instead:
//! `limits.public_calls.max_concurrent_calls` all together, `per_client` from one client
//! address or client certificate, however many connections it opens.
//!
//! The table is bounded: an identity's entry is removed once it has no call open and its
//! bucket is full again, and entries left with a refilling bucket are swept as the table
//! grows, so the table holds the identities with calls open or started within the last
//! second, and no more.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::auth::outcome::AuthOutcome;
use crate::config::Limits;
use crate::identity::AuthMethod;
use crate::tls::ConnectionInfo;

/// Below this many entries the table is never swept.
const SWEEP_FLOOR: usize = 64;
/// Caller-controlled text (a user id, a key name) in a log line, at most.
const LOGGED_CHARS: usize = 128;

/// Who a call is counted against.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum Identity {
    /// A JWT's subject, with the provider that verified it: `sub=alice` from a partner's
    /// issuer is not the corporate alice.
    User {
        provider: Arc<str>,
        subject: Box<str>,
    },
    ApiKey(Box<str>),
    /// A client certificate, by [`crate::tls::PeerIdentity::key`].
    Peer(Box<str>),
    /// A call that needed no credentials, by client certificate when it showed one, else
    /// by the client's address.
    Public(Box<str>),
}

impl Identity {
    /// The identity of a call Auth admitted.
    pub fn of(outcome: Option<&AuthOutcome>, connection: Option<&ConnectionInfo>) -> Identity {
        let peer = connection.and_then(|c| c.peer.as_ref());
        if let Some(principal) = outcome.and_then(AuthOutcome::principal) {
            match principal.method {
                AuthMethod::ApiKey => {
                    if let Some(name) = &principal.api_key_name {
                        return Identity::ApiKey(name.as_str().into());
                    }
                }
                AuthMethod::Jwt => {
                    if let Some(user) = &principal.user_id {
                        return Identity::User {
                            provider: principal.provider.clone().unwrap_or_else(|| Arc::from("")),
                            subject: user.as_str().into(),
                        };
                    }
                }
                AuthMethod::Mtls => {
                    if let Some(peer) = peer {
                        return Identity::Peer(peer.key().into());
                    }
                }
                AuthMethod::None => {}
            }
        }
        Identity::Public(match (peer, connection) {
            (Some(peer), _) => peer.key().into(),
            (None, Some(connection)) => {
                format!("ip:{}", connection.remote_addr.ip().to_canonical()).into()
            }
            (None, None) => "ip:unknown".into(),
        })
    }

    fn is_public(&self) -> bool {
        matches!(self, Identity::Public(_))
    }

    pub fn describe(&self) -> String {
        match self {
            Identity::User { provider, subject } => {
                format!("user:{}/{}", truncated(provider), truncated(subject))
            }
            Identity::ApiKey(name) => format!("api_key:{}", truncated(name)),
            Identity::Peer(key) => format!("peer:{}", truncated(key)),
            Identity::Public(client) => format!("public:{}", truncated(client)),
        }
    }
}

/// At most `LOGGED_CHARS` (128) characters of `text`.
pub fn truncated(text: &str) -> &str {
    match text.char_indices().nth(LOGGED_CHARS) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

pub struct Table {
    max_concurrent_calls: u32,
    calls_per_second: u32,
    public_share: u32,
    public_per_client: u32,
    messages: [String; 4],
    entries: Mutex<Entries>,
}

struct Entries {
    map: HashMap<Identity, Entry>,
    /// The table is swept when it reaches this size.
    sweep_at: usize,
    /// Public calls open, from every client.
    public_open: u32,
}

struct Entry {
    open: u32,
    /// Calls this identity may still start now; refilled at `calls_per_second`.
    tokens: f64,
    refilled: Instant,
}

/// Which limit refused a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exceeded {
    Concurrency,
    Rate,
    /// One client's public calls.
    PublicPerClient,
    /// Every client's public calls together.
    PublicShare,
}

impl Exceeded {
    /// The limit's name, as `gatehouse_limit_refusals_total{limit}` and the status
    /// details name it.
    pub fn limit(self) -> &'static str {
        match self {
            Exceeded::Concurrency => "max_concurrent_calls",
            Exceeded::Rate => "calls_per_second",
            Exceeded::PublicPerClient => "public_calls.per_client",
            Exceeded::PublicShare => "public_calls.max_concurrent_calls",
        }
    }
}

impl Table {
    /// The table for `limits`; empty until calls come.
    pub fn new(limits: &Limits) -> Table {
        let max = limits.per_identity.max_concurrent_calls;
        let rate = limits.per_identity.calls_per_second;
        let share = limits.public_calls_share();
        let per_client = limits.public_calls_per_client();
        Table {
            max_concurrent_calls: max,
            calls_per_second: rate,
            public_share: share,
            public_per_client: per_client,
            messages: [
                format!(
                    "CONCURRENCY_LIMIT: this caller already has {max} calls open \
                     (limits.per_identity.max_concurrent_calls)"
                ),
                format!(
                    "RATE_LIMITED: this caller started more than {rate} calls in the last second \
                     (limits.per_identity.calls_per_second)"
                ),
                format!(
                    "CONCURRENCY_LIMIT: this client already has {per_client} calls open that \
                     need no credentials (limits.public_calls.per_client)"
                ),
                format!(
                    "CONCURRENCY_LIMIT: calls that need no credentials already hold their \
                     {share} of the app's streams (limits.public_calls.max_concurrent_calls)"
                ),
            ],
            entries: Mutex::new(Entries {
                map: HashMap::new(),
                sweep_at: SWEEP_FLOOR,
                public_open: 0,
            }),
        }
    }

    /// The message of a refusal for `exceeded`.
    pub fn message(&self, exceeded: Exceeded) -> &str {
        &self.messages[exceeded as usize]
    }

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
    pub fn admit(self: &Arc<Self>, identity: Identity) -> Result<CallSlot, (Exceeded, Identity)> {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let public = identity.is_public();
        if public && entries.public_open >= self.public_share {
            return Err((Exceeded::PublicShare, identity));
        }
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
        let (most, exceeded) = if public {
            (self.public_per_client, Exceeded::PublicPerClient)
        } else {
            (self.max_concurrent_calls, Exceeded::Concurrency)
        };
        if entry.open >= most {
            return Err((exceeded, identity));
        }
        if self.calls_per_second > 0 {
            entry.tokens -= 1.0;
        }
        entry.open += 1;
        if public {
            entries.public_open += 1;
        }
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
        if identity.is_public() {
            entries.public_open = entries.public_open.saturating_sub(1);
        }
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
pub struct CallSlot {
    table: Arc<Table>,
    identity: Identity,
}

impl Drop for CallSlot {
    fn drop(&mut self) {
        self.table.release(&self.identity);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::PerIdentity;

    fn table(max_concurrent_calls: u32, calls_per_second: u32) -> Arc<Table> {
        Arc::new(Table::new(&Limits {
            per_identity: PerIdentity {
                max_concurrent_calls,
                calls_per_second,
            },
            ..Limits::default()
        }))
    }

    fn user(name: &str) -> Identity {
        Identity::User {
            provider: Arc::from("corp"),
            subject: name.into(),
        }
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
            drop(
                table
                    .admit(Identity::Public(format!("ip:{i}").into()))
                    .ok()
                    .unwrap(),
            );
        }
        assert_eq!(table.len(), 0);

        // One call a second: each bucket refills a second after its call.
        let table = self::table(10, 1);
        for i in 0..1_000 {
            drop(
                table
                    .admit(Identity::Public(format!("ip:{i}").into()))
                    .ok()
                    .unwrap(),
            );
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
            drop(
                table
                    .admit(Identity::Public(format!("ip:{}", 2_000 + i).into()))
                    .ok()
                    .unwrap(),
            );
            table.len() < 500
        });
        assert!(swept, "{} entries never swept", table.len());
    }
}
