//! How many replicas share the budgets, and whether the store answers.
//!
//! Every replica announces itself in the store once a second, in a sorted set under the
//! key prefix scored by the store's clock; members silent for [`ANNOUNCE_TTL`] are
//! dropped. The count last seen is what `on_store_failure: local` divides each rule
//! by, so an outage neither opens the floodgates nor refuses everyone; before the first
//! announcement is answered it is 1. The store counts as failing while any request
//! failed within the last [`FAILING_FOR`], which is what `/readyz`'s detail line and
//! `gatehouse_global_limit_store_up` report.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often a replica announces itself (and reconnects, when the store was lost).
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(1);
/// A replica not heard from for this long is no longer counted.
pub const ANNOUNCE_TTL: Duration = Duration::from_secs(5);
/// The store counts as failing this long after its last failure.
pub const FAILING_FOR: Duration = Duration::from_secs(2);
/// Longest error text kept for the `/readyz` detail.
const ERROR_CHARS: usize = 200;

/// The store's health and the replica count, read on every call without a lock.
pub struct Health {
    epoch: Instant,
    /// Milliseconds after `epoch` of the last failure, plus one; 0: none yet.
    last_failure: AtomicU64,
    replicas: AtomicU32,
    spell: Mutex<Spell>,
}

/// The current failing spell, for the log and `/readyz`.
#[derive(Default)]
struct Spell {
    since: Option<Instant>,
    error: String,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            epoch: Instant::now(),
            last_failure: AtomicU64::new(0),
            replicas: AtomicU32::new(1),
            spell: Mutex::new(Spell::default()),
        }
    }
}

impl Health {
    /// Replicas last seen live, at least 1.
    pub fn replicas(&self) -> u32 {
        self.replicas.load(Ordering::Relaxed).max(1)
    }

    pub fn set_replicas(&self, live: u32) {
        self.replicas.store(live.max(1), Ordering::Relaxed);
    }

    /// Whether a store request failed within the last [`FAILING_FOR`].
    pub fn failing(&self, now: Instant) -> bool {
        match self.last_failure.load(Ordering::Relaxed) {
            0 => false,
            at => {
                let at = self.epoch + Duration::from_millis(at - 1);
                now.saturating_duration_since(at) < FAILING_FOR
            }
        }
    }

    /// Records a failure; true when it starts a failing spell (worth a log line). An
    /// `error` that only echoes an earlier one (no connection, because connecting failed)
    /// keeps the earlier text, which says why.
    pub fn failed(&self, error: &dyn std::fmt::Display, echo: bool, now: Instant) -> bool {
        let starts = !self.failing(now);
        let millis = now.saturating_duration_since(self.epoch).as_millis() as u64;
        self.last_failure.store(millis + 1, Ordering::Relaxed);
        let mut spell = self.spell.lock().unwrap_or_else(|p| p.into_inner());
        if !echo || spell.error.is_empty() {
            spell.error = error.to_string().chars().take(ERROR_CHARS).collect();
        }
        let starts = starts || spell.since.is_none();
        if starts {
            spell.since = Some(now);
        }
        starts
    }

    /// When the spell that just ended began; `None` while failing or when none was.
    pub fn recovered(&self, now: Instant) -> Option<Instant> {
        if self.failing(now) {
            return None;
        }
        self.spell
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .since
            .take()
    }

    /// The `/readyz` detail line.
    pub fn describe(&self, now: Instant, on_failure: &str) -> String {
        let spell = self.spell.lock().unwrap_or_else(|p| p.into_inner());
        let replicas = match self.replicas() {
            1 => "1 replica".to_owned(),
            n => format!("{n} replicas"),
        };
        match spell.since.filter(|_| self.failing(now)) {
            None => format!("global limits: store answering, {replicas} live"),
            Some(since) => format!(
                "global limits: store failing for {}s ({}); on_store_failure: {on_failure}, \
                 {replicas} last seen",
                now.saturating_duration_since(since).as_secs(),
                spell.error
            ),
        }
    }
}

/// This replica's member in the announcement set: host name, process id and a random
/// suffix, so a restarted process with the same name is a new member.
pub fn member() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let host: String = host.trim().chars().take(64).collect();
    let mut random = [0u8; 4];
    let _ = aws_lc_rs::rand::fill(&mut random);
    format!(
        "{host}/{}/{:08x}",
        std::process::id(),
        u32::from_be_bytes(random)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_starts_a_spell_that_ends_after_a_quiet_period() {
        let health = Health::default();
        let now = Instant::now();
        assert!(!health.failing(now));
        assert!(
            health.failed(&"refused", false, now),
            "the first failure starts a spell"
        );
        assert!(!health.failed(&"not connected", true, now + Duration::from_millis(500)));
        assert!(
            health.describe(now, "local").contains("(refused)"),
            "the cause is kept"
        );
        assert!(health.failing(now + Duration::from_secs(1)));
        assert_eq!(health.recovered(now + Duration::from_secs(1)), None);
        let later = now + Duration::from_millis(500) + FAILING_FOR;
        assert!(!health.failing(later));
        assert_eq!(health.recovered(later), Some(now));
        assert_eq!(health.recovered(later), None, "reported once");
    }

    #[test]
    fn describes_the_store_for_readyz() {
        let health = Health::default();
        health.set_replicas(3);
        let now = Instant::now();
        assert_eq!(
            health.describe(now, "local"),
            "global limits: store answering, 3 replicas live"
        );
        health.failed(&"no answer within 25ms", false, now);
        assert_eq!(
            health.describe(now + Duration::from_secs(1), "local"),
            "global limits: store failing for 1s (no answer within 25ms); on_store_failure: local, 3 replicas last seen"
        );
    }

    #[test]
    fn the_replica_count_is_at_least_one() {
        let health = Health::default();
        health.set_replicas(0);
        assert_eq!(health.replicas(), 1);
    }
}
