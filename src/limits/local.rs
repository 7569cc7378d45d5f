//! The per-pod limits of one identity: at most `limits.per_identity.max_concurrent_calls`
//! calls open and, when `calls_per_second` is set, at most that many started a second
//! (a token bucket holding one second's worth). An identity is the SPIFFE ID, user or
//! API key name that Auth verified; for a public method, the caller's connection.
//!
//! The table is bounded: an identity's entry is removed once it has no call open and its
//! bucket is full again, and entries left with a refilling bucket are swept as the table
//! grows, so the table holds the identities with calls open or started within the last
//! second, and no more.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::auth::outcome::AuthOutcome;
use crate::config::PerIdentity;
use crate::identity::AuthMethod;
use crate::tls::ConnectionInfo;

/// Below this many entries the table is never swept.
const SWEEP_FLOOR: usize = 64;
/// Caller-controlled text (a user id, a key name) in a log line, at most.
const LOGGED_CHARS: usize = 128;

/// Who a call is counted against.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum Identity {
    User(Box<str>),
    ApiKey(Box<str>),
    Peer(Box<str>),
    /// A caller without a verified name: one per connection.
    Connection(u64),
}

impl Identity {
    /// The identity of a call Auth admitted.
    pub fn of(outcome: Option<&AuthOutcome>, connection: Option<&ConnectionInfo>) -> Identity {
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

    pub fn describe(&self) -> String {
        let (kind, name) = match self {
            Identity::User(name) => ("user", name),
            Identity::ApiKey(name) => ("api_key", name),
            Identity::Peer(name) => ("peer", name),
            Identity::Connection(id) => return format!("connection:{id}"),
        };
        format!("{kind}:{}", truncated(name))
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
pub enum Exceeded {
    Concurrency,
    Rate,
}

impl Exceeded {
    pub fn limit(self) -> &'static str {
        match self {
            Exceeded::Concurrency => "max_concurrent_calls",
            Exceeded::Rate => "calls_per_second",
        }
    }
}

impl Table {
    /// The table for `limits`; empty until calls come.
    pub fn new(limits: &PerIdentity) -> Table {
        let max = limits.max_concurrent_calls;
        let rate = limits.calls_per_second;
        Table {
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
        }
    }

    /// The message of a refusal for `exceeded`.
    pub fn message(&self, exceeded: Exceeded) -> &str {
        match exceeded {
            Exceeded::Concurrency => &self.concurrency_message,
            Exceeded::Rate => &self.rate_message,
        }
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

    fn table(max_concurrent_calls: u32, calls_per_second: u32) -> Arc<Table> {
        Arc::new(Table::new(&PerIdentity {
            max_concurrent_calls,
            calls_per_second,
        }))
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
