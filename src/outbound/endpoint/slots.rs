//! The addresses a destination's name resolves to, each with its pool and its backoff,
//! and the order a call tries them in.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use super::{BACKOFF_MAX, BACKOFF_MIN};
use crate::pool::Pool;

/// At most this many of the addresses a name resolves to are used (the first ones, in
/// the resolver's order): each may hold a pool of connections, and a name with
/// hundreds of addresses must not become hundreds of pools.
pub const MAX_ADDRESSES: usize = 16;

/// The resolved addresses of a destination, in the order the resolver gave them.
#[derive(Default)]
pub(super) struct Slots {
    pub slots: Vec<Slot>,
    /// When the name was last resolved; `None`: resolve before the next call.
    pub resolved_at: Option<Instant>,
    /// Where the next call's round starts.
    pub next: usize,
}

/// One address of a destination.
pub(super) struct Slot {
    pub address: SocketAddr,
    /// Its connections, made with the client TLS material of `generation`.
    pub pool: Option<Endpointed>,
    /// Dials that failed in a row; each doubles the backoff.
    pub failures: u32,
    /// Until then the address is tried only when every other one has failed too.
    pub retry_at: Option<Instant>,
}

/// A pool to one address and what its connections were made with.
#[derive(Clone)]
pub(super) struct Endpointed {
    pub pool: Arc<Pool>,
    pub peer: Arc<Mutex<Option<Arc<str>>>>,
    /// See [`ClientTls::generation`].
    pub generation: u64,
}

impl Slots {
    /// Replaces the address list, keeping the connections and backoff of every address
    /// that is still in it.
    pub fn update(&mut self, addresses: Vec<SocketAddr>, now: Instant) {
        let mut old = std::mem::take(&mut self.slots);
        self.slots = addresses
            .into_iter()
            .take(MAX_ADDRESSES)
            .map(
                |address| match old.iter().position(|s| s.address == address) {
                    Some(at) => old.swap_remove(at),
                    None => Slot {
                        address,
                        pool: None,
                        failures: 0,
                        retry_at: None,
                    },
                },
            )
            .collect();
        self.resolved_at = Some(now);
    }

    /// This call's order: round robin over the addresses not backed off, then the
    /// backed-off ones, soonest retry first.
    pub fn order(&mut self, now: Instant) -> Vec<SocketAddr> {
        let count = self.slots.len();
        if count == 0 {
            return Vec::new();
        }
        let start = self.next % count;
        self.next = self.next.wrapping_add(1);
        let rotated = (0..count).map(|i| &self.slots[(start + i) % count]);
        let (ready, mut waiting): (Vec<&Slot>, Vec<&Slot>) =
            rotated.partition(|slot| slot.retry_at.is_none_or(|at| at <= now));
        waiting.sort_by_key(|slot| slot.retry_at);
        ready
            .into_iter()
            .chain(waiting)
            .map(|s| s.address)
            .collect()
    }

    pub fn slot(&mut self, address: SocketAddr) -> Option<&mut Slot> {
        self.slots.iter_mut().find(|s| s.address == address)
    }

    pub fn failed(&mut self, address: SocketAddr, now: Instant) {
        if let Some(slot) = self.slot(address) {
            slot.failures = slot.failures.saturating_add(1);
            let backoff = BACKOFF_MIN
                .saturating_mul(1 << slot.failures.min(8).saturating_sub(1))
                .min(BACKOFF_MAX);
            slot.retry_at = Some(now + backoff);
        }
        // An address that fails may have moved: look the name up again.
        self.resolved_at = None;
    }

    pub fn succeeded(&mut self, address: SocketAddr) {
        if let Some(slot) = self.slot(address) {
            slot.failures = 0;
            slot.retry_at = None;
        }
    }
}
