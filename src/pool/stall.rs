//! Streams the target stopped reading, and what the pool does about them so that no
//! caller can stall the others with them.
//!
//! A stream whose request waits for send capacity after it was once granted some is
//! starved; starved for [`WEDGED_AFTER`] it is wedged: the target (a hyper or tonic app
//! whose handler stopped reading it) holds its window, and on most targets the
//! connection's too. The pool then places no new call on that connection and opens
//! others instead. Wedged streams are also counted per [`Owner`], the identity a call's
//! limits are counted against: an owner's stream that wedges while it already has
//! [`STALLED_PER_OWNER`] wedged is reset, so one caller cannot wedge a connection at a
//! time until every connection the pool may open is wedged. And a wedged stream the
//! target has read nothing of for [`STALLED_AFTER`] is reset while other calls wait for
//! a stream, so what a stalled stream holds comes back to the callers who need it.
//!
//! The caller of a stream reset here gets `RESOURCE_EXHAUSTED` saying which rule ended
//! it (see [`Stall`]), not a deadline much later.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::Context;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use super::Connection;
use crate::grpc::Reason;

/// A stream waiting this long for send capacity is one the target stopped reading.
pub const WEDGED_AFTER: Duration = Duration::from_millis(250);
/// Wedged streams one owner may have; the next of its streams to wedge is reset.
pub const STALLED_PER_OWNER: usize = 2;
/// A wedged stream that has waited this long for send capacity is reset when calls wait
/// for a stream: less than `limits.upstream_queue_timeout`'s default (2 s), so the calls
/// waiting get the capacity before they give up.
pub const STALLED_AFTER: Duration = Duration::from_secs(1);

/// Who a call is for, as a request extension: calls of one owner share
/// [`STALLED_PER_OWNER`]. Opaque to the pool: a hash of the identity under a key chosen
/// at random when the process starts, so no caller can pick a name that collides with
/// another's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Owner(u64);

impl Owner {
    /// The owner named by `identity`.
    pub fn of(identity: &impl Hash) -> Owner {
        static KEY: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
        Owner(KEY.get_or_init(Default::default).hash_one(identity))
    }
}

/// Why the pool reset a stream the target was not reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Stall {
    /// The call's owner already had [`STALLED_PER_OWNER`] streams the target was not
    /// reading when this one stopped being read too.
    #[error(
        "stopped reading the request while the same caller had {STALLED_PER_OWNER} other calls it was not reading"
    )]
    OwnerLimit,
    /// The target read nothing of the request for [`STALLED_AFTER`] while other calls
    /// waited for a stream.
    #[error(
        "read nothing of the request for {STALLED_AFTER:?} while other calls waited for a stream"
    )]
    OthersWait,
}

impl Stall {
    /// The reason of the status the call ends with.
    pub fn reason(self) -> Reason {
        match self {
            Stall::OwnerLimit => Reason::StalledCallsLimit,
            Stall::OthersWait => Reason::RequestNotRead,
        }
    }

    /// The status the call ends with.
    pub fn status(self, far: crate::grpc::Far<'_>) -> crate::grpc::Status {
        crate::grpc::not_read(self.reason(), far, &self)
    }

    /// The `kind` it is counted as in `gatehouse_upstream_errors_total`.
    pub fn kind(self) -> &'static str {
        match self {
            Stall::OwnerLimit => "stalled_calls_limit",
            Stall::OthersWait => "request_not_read",
        }
    }
}

/// What the pool, its connections and their streams share.
#[derive(Default)]
pub(super) struct Shared {
    /// A stream was released or freed from a wait, a connection opened or closed:
    /// waiting calls look again.
    pub(super) changed: Notify,
    /// Calls waiting in the queue for a stream.
    pub(super) waiting: AtomicUsize,
    /// Wedged streams per owner. An entry lives only while its owner has one, so the
    /// table never holds more entries than the pool holds streams.
    stalled: Mutex<HashMap<Owner, usize>>,
}

impl Shared {
    fn stalled(&self) -> std::sync::MutexGuard<'_, HashMap<Owner, usize>> {
        self.stalled.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a wedged stream of `owner`; how many it has now.
    fn add_stalled(&self, owner: Owner) -> usize {
        let mut stalled = self.stalled();
        let count = stalled.entry(owner).or_insert(0);
        *count += 1;
        *count
    }

    fn remove_stalled(&self, owner: Owner) {
        let mut stalled = self.stalled();
        if let Some(count) = stalled.get_mut(&owner) {
            *count -= 1;
            if *count == 0 {
                stalled.remove(&owner);
            }
        }
    }
}

/// Set by a stream's pump when it gives the stream up, read by whoever turns the
/// stream's failure into a status.
#[derive(Debug, Default)]
pub(super) struct StallFlag(AtomicU8);

impl StallFlag {
    fn set(&self, stall: Stall) {
        let value = match stall {
            Stall::OwnerLimit => 1,
            Stall::OthersWait => 2,
        };
        self.0.store(value, Ordering::Release);
    }

    pub(super) fn get(&self) -> Option<Stall> {
        match self.0.load(Ordering::Acquire) {
            1 => Some(Stall::OwnerLimit),
            2 => Some(Stall::OthersWait),
            _ => None,
        }
    }
}

/// One stream's waits for send capacity, counted on its connection and its owner.
pub(super) struct Starvation {
    connection: Arc<Connection>,
    owner: Option<Owner>,
    flag: Arc<StallFlag>,
    /// Capacity was granted once: the stream is open on the wire. A stream's first wait
    /// is for its HEADERS to go out, not for window, and does not count.
    granted: bool,
    since: Option<Instant>,
    /// Fires when the stream has waited [`WEDGED_AFTER`], then each time it is to look
    /// again whether it should give up.
    timer: Option<Pin<Box<Sleep>>>,
    wedged: bool,
    /// Counted in its owner's wedged streams.
    counted: bool,
}

impl Starvation {
    pub(super) fn new(
        connection: Arc<Connection>,
        owner: Option<Owner>,
        flag: Arc<StallFlag>,
    ) -> Starvation {
        Starvation {
            connection,
            owner,
            flag,
            granted: false,
            since: None,
            timer: None,
            wedged: false,
            counted: false,
        }
    }

    pub(super) fn connection(&self) -> &Arc<Connection> {
        &self.connection
    }

    /// The stream was granted capacity: it is not starved.
    pub(super) fn granted(&mut self) {
        self.granted = true;
        self.ended();
    }

    /// The stream no longer waits (granted, failed, closed, or its pump dropped).
    pub(super) fn ended(&mut self) {
        self.timer = None;
        if self.since.take().is_none() {
            return;
        }
        let shared = &self.connection.shared;
        let mut freed = self.connection.starved.fetch_sub(1, Ordering::AcqRel) == 1;
        if std::mem::take(&mut self.wedged) {
            freed |= self.connection.wedged.fetch_sub(1, Ordering::AcqRel) == 1;
        }
        if std::mem::take(&mut self.counted)
            && let Some(owner) = self.owner
        {
            shared.remove_stalled(owner);
        }
        if freed {
            // The connection takes new calls again.
            shared.changed.notify_waiters();
        }
    }

    /// The stream waits for capacity: counts it starved, and once it has waited long
    /// enough, wedged; `Some` when it should be given up (the flag is set).
    pub(super) fn waiting(&mut self, cx: &mut Context<'_>) -> Option<Stall> {
        if !self.granted {
            return None;
        }
        let now = Instant::now();
        let since = *self.since.get_or_insert_with(|| {
            self.connection.starved.fetch_add(1, Ordering::AcqRel);
            now
        });
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(since + WEDGED_AFTER)));
        if timer.as_mut().poll(cx).is_pending() {
            return None;
        }
        let stall = self.wedge().or_else(|| {
            let others_wait = self.connection.shared.waiting.load(Ordering::Acquire) > 0;
            (others_wait && now >= since + STALLED_AFTER).then_some(Stall::OthersWait)
        });
        if let Some(stall) = stall {
            self.flag.set(stall);
            self.ended();
            return Some(stall);
        }
        // Look again in a while whether calls wait; the wait is already this long.
        let again = (since + STALLED_AFTER).max(now + WEDGED_AFTER);
        if let Some(timer) = self.timer.as_mut() {
            timer.as_mut().reset(again);
            let _ = timer.as_mut().poll(cx);
        }
        None
    }

    /// Marks the stream wedged the first time it is found so; `Some` when its owner has
    /// too many.
    fn wedge(&mut self) -> Option<Stall> {
        if self.wedged {
            return None;
        }
        self.wedged = true;
        self.connection.wedged.fetch_add(1, Ordering::AcqRel);
        tracing::debug!(
            connection = self.connection.id,
            "a stream waits for the target's window; new calls go to other connections"
        );
        self.connection.shared.changed.notify_waiters();
        let owner = self.owner?;
        self.counted = true;
        (self.connection.shared.add_stalled(owner) > STALLED_PER_OWNER).then_some(Stall::OwnerLimit)
    }
}

impl Drop for Starvation {
    fn drop(&mut self) {
        self.ended();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_told_apart_and_the_same_identity_is_one_owner() {
        assert_eq!(Owner::of(&"alice"), Owner::of(&"alice"));
        assert_ne!(Owner::of(&"alice"), Owner::of(&"mallory"));
    }

    #[test]
    fn an_owners_entry_lives_only_while_it_has_a_wedged_stream() {
        let shared = Shared::default();
        let owner = Owner::of(&"mallory");
        assert_eq!(shared.add_stalled(owner), 1);
        assert_eq!(shared.add_stalled(owner), 2);
        shared.remove_stalled(owner);
        shared.remove_stalled(owner);
        assert!(shared.stalled().is_empty());
    }
}
