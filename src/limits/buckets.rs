//! The replica's side of the shared budgets: one local bucket per tenant, identity or
//! method a rule counts, holding the tokens leased from the store and spending them
//! without a round trip.
//!
//! A bucket asks the store for `lease` tokens at a time and tops itself up when half is
//! spent, before it runs dry, so a steady caller never waits for the store. It never
//! holds more than `lease` unspent tokens, which bounds what the service as a whole can
//! admit beyond the rule: replicas × lease. When the store answers that few tokens are
//! left (fewer than a lease for every live replica), the bucket stops leasing ahead and
//! asks for one token at a time, so the last tokens go to the replicas that have calls,
//! not to one that hoards them. When the store answers that none are left, calls are
//! refused here until the time it named, again without a round trip.
//!
//! When the store fails for a bucket, the bucket falls back to `on_store_failure` for
//! [`RETRY_AFTER`], then leases in the background again while its calls are still
//! answered by the fallback, so no call ever waits on a store that is known to fail.
//! The fallback `local` is a token bucket with the rule's rate and burst divided by the
//! replicas last seen live.
//!
//! The table is bounded by `limits.global.max_buckets`: buckets idle for [`IDLE`] are
//! swept as it grows, and when it is full of active buckets the least recently used
//! eighth is dropped at once. A dropped bucket loses its unspent tokens, which errs on
//! the side of admitting less; the store keeps the budget.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::rules::Rule;
use crate::config::OnStoreFailure;

/// How long a bucket whose lease failed answers from the fallback before trying again.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);
/// A bucket unused this long is swept when the table grows.
pub const IDLE: Duration = Duration::from_secs(10);
/// Below this many buckets the table is never swept.
const SWEEP_FLOOR: usize = 64;
/// The most one bucket can cost this replica, for the memory budget (docs/deploy.md
/// §10): the bucket itself, under 1 KiB (its entry in the table with the table's slack,
/// its name of at most [`super::rules::MAX_NAME_BYTES`], its store key after a `key_prefix` of at
/// most 128 bytes, its `Notify`), and a lease in flight, about 2 KiB (the task that
/// sends it and the request, kept by the client while it is encoded and sent). Every
/// bucket may have a lease in flight at once while the store hangs; a test measures the
/// parts.
pub const BUCKET_COST: u64 = 3 * 1024;

/// What the store answered to a lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Tokens granted, from 0 to the number asked for.
    pub granted: u32,
    /// Tokens left in the store's bucket after this grant.
    pub left: u64,
    /// With nothing left: how long until the store's bucket holds a token again.
    pub refill: Duration,
}

/// Where an admitted call's token came from; a later rule's refusal gives it back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A token leased from the store.
    Lease,
    /// The store is failing: the replica's share (`on_store_failure: local`).
    Local,
    /// The store is failing and `on_store_failure` is `allow`.
    Allowed,
}

/// The decision for one rule on one call.
#[derive(Debug)]
pub enum Take {
    Admitted(Source),
    /// Over the budget; `local` when it is the replica's share while the store fails.
    Refused {
        retry_after: Duration,
        local: bool,
    },
    /// The store is failing and `on_store_failure` is `deny`.
    Unavailable,
    /// No token here yet: a lease is on its way; wait on this, then take again.
    Wait(Arc<Notify>),
}

/// A lease to ask the store for, made by [`Table::take`] and answered by
/// [`Table::complete`].
#[derive(Debug)]
pub struct LeaseRequest {
    /// The bucket's name in the table.
    pub name: Box<str>,
    pub store_key: Arc<str>,
    pub rule: usize,
    pub want: u32,
    /// Woken when the answer is in, even when the bucket was dropped meanwhile.
    pub notify: Arc<Notify>,
}

/// What the table needs to know about the store and the replicas to decide.
#[derive(Clone, Copy, Debug)]
pub struct Context {
    pub on_failure: OnStoreFailure,
    /// Replicas last seen live, at least 1.
    pub replicas: u32,
    /// The store failed recently: a new bucket starts on the fallback.
    pub store_failing: bool,
}

struct Bucket {
    rule: usize,
    store_key: Arc<str>,
    /// Leased and not yet spent.
    tokens: u32,
    leasing: bool,
    /// The store said it is empty: refuse here until then.
    empty_until: Option<Instant>,
    /// The store has fewer tokens than a lease for every replica: do not lease ahead.
    near_empty: bool,
    /// The store failed for this bucket: answer from the fallback, lease again after.
    failing_until: Option<Instant>,
    /// The replica's share while the store fails.
    local: Local,
    used: Instant,
    notify: Arc<Notify>,
}

/// A token bucket with the replica's share of a rule.
struct Local {
    tokens: f64,
    refilled: Instant,
}

/// Every bucket this replica keeps, bounded.
pub struct Table {
    rules: Arc<[Rule]>,
    buckets: Buckets,
}

/// The buckets by name, and what keeps their number bounded.
struct Buckets {
    prefix: String,
    map: HashMap<Box<str>, Bucket>,
    max: usize,
    sweep_at: usize,
    /// Buckets dropped while still in use because the table was full.
    evicted: u64,
}

impl Table {
    pub fn new(rules: Arc<[Rule]>, prefix: &str, max: usize) -> Table {
        Table {
            rules,
            buckets: Buckets {
                prefix: prefix.to_owned(),
                map: HashMap::new(),
                max,
                sweep_at: SWEEP_FLOOR.min(max),
                evicted: 0,
            },
        }
    }

    /// Buckets kept now.
    pub fn buckets(&self) -> usize {
        self.buckets.map.len()
    }

    /// Buckets dropped while in use because the table was full, since start.
    pub fn evicted(&self) -> u64 {
        self.buckets.evicted
    }

    /// Decides one rule for one call counted in the bucket `name`; a lease to send to the
    /// store comes with it when one is due. With `may_wait` false (the call has waited
    /// its `timeout` already), a call that would wait gets the fallback instead.
    pub fn take(
        &mut self,
        rule: usize,
        name: &str,
        now: Instant,
        cx: Context,
        may_wait: bool,
    ) -> (Take, Option<LeaseRequest>) {
        let spec = &self.rules[rule];
        let bucket = self.buckets.get_or_make(rule, spec, name, now, cx);
        bucket.used = now;
        if bucket.tokens > 0 {
            bucket.tokens -= 1;
            let ahead = !bucket.leasing
                && !bucket.near_empty
                && bucket.failing_until.is_none()
                && bucket.empty_until.is_none()
                && bucket.tokens <= spec.lease / 2;
            let lease = ahead.then(|| lease(bucket, name, spec.lease - bucket.tokens));
            return (Take::Admitted(Source::Lease), lease);
        }
        if let Some(until) = bucket.failing_until {
            let retry = (until <= now && !bucket.leasing).then(|| lease(bucket, name, 1));
            return (fallback(bucket, spec, now, cx), retry);
        }
        if let Some(until) = bucket.empty_until.filter(|until| *until > now) {
            let retry_after = until - now;
            return (
                Take::Refused {
                    retry_after,
                    local: false,
                },
                None,
            );
        }
        let request = (!bucket.leasing).then(|| {
            let want = if bucket.near_empty { 1 } else { spec.lease };
            lease(bucket, name, want)
        });
        if may_wait {
            (Take::Wait(bucket.notify.clone()), request)
        } else {
            (fallback(bucket, spec, now, cx), request)
        }
    }

    /// Records the store's answer to `request` (`None`: the store failed); the caller
    /// wakes the waiters.
    pub fn complete(
        &mut self,
        request: &LeaseRequest,
        answer: Option<Grant>,
        now: Instant,
        replicas: u32,
    ) {
        let Some(bucket) = self.buckets.map.get_mut(&request.name) else {
            return; // dropped meanwhile: the tokens are lost, which admits less
        };
        let lease = self.rules[bucket.rule].lease;
        bucket.leasing = false;
        match answer {
            Some(grant) => {
                bucket.tokens += grant.granted;
                bucket.failing_until = None;
                bucket.near_empty = grant.left < u64::from(lease) * u64::from(replicas.max(1));
                bucket.empty_until = (grant.left == 0).then(|| now + grant.refill);
            }
            None => bucket.failing_until = Some(now + RETRY_AFTER),
        }
    }

    /// Gives back a token taken for a call that a later rule refused.
    pub fn give_back(&mut self, name: &str, source: Source) {
        if let Some(bucket) = self.buckets.map.get_mut(name) {
            match source {
                Source::Lease => bucket.tokens += 1,
                Source::Local => bucket.local.tokens += 1.0,
                Source::Allowed => {}
            }
        }
    }
}

impl Buckets {
    /// The bucket `name`, made (and the table kept within bounds) if new.
    fn get_or_make(
        &mut self,
        rule: usize,
        spec: &Rule,
        name: &str,
        now: Instant,
        cx: Context,
    ) -> &mut Bucket {
        if !self.map.contains_key(name) {
            if self.map.len() >= self.sweep_at {
                self.make_room(now);
            }
            let bucket = Bucket {
                rule,
                store_key: super::rules::store_key(&self.prefix, name).into(),
                tokens: 0,
                leasing: false,
                empty_until: None,
                near_empty: false,
                // A bucket made while the store fails tries it in the background first.
                failing_until: cx.store_failing.then_some(now),
                local: Local {
                    tokens: local_burst(spec, cx.replicas),
                    refilled: now,
                },
                used: now,
                notify: Arc::new(Notify::new()),
            };
            self.map.insert(name.into(), bucket);
        }
        self.map.get_mut(name).expect("inserted above")
    }

    /// Sweeps idle buckets; when that is not enough, drops the least recently used
    /// eighth of a full table.
    fn make_room(&mut self, now: Instant) {
        self.map.retain(|_, bucket| {
            bucket.leasing || now.saturating_duration_since(bucket.used) < IDLE
        });
        if self.map.len() >= self.max {
            let mut used: Vec<Instant> = self.map.values().map(|b| b.used).collect();
            let drop = (self.max / 8).max(1);
            let cut = *used.select_nth_unstable(drop - 1).1;
            // Those used before the cut go, and as many used at it as make up `drop`.
            let mut ties = drop - used.iter().filter(|used| **used < cut).count();
            let before = self.map.len();
            self.map.retain(|_, bucket| {
                let tie = bucket.used == cut && ties > 0;
                ties -= usize::from(tie);
                bucket.used > cut || (bucket.used == cut && !tie)
            });
            self.evicted += (before - self.map.len()) as u64;
        }
        self.sweep_at = (self.map.len() * 2).clamp(SWEEP_FLOOR.min(self.max), self.max);
    }
}

/// Marks the bucket as leasing and makes the request.
fn lease(bucket: &mut Bucket, name: &str, want: u32) -> LeaseRequest {
    bucket.leasing = true;
    LeaseRequest {
        name: name.into(),
        store_key: bucket.store_key.clone(),
        rule: bucket.rule,
        want: want.max(1),
        notify: bucket.notify.clone(),
    }
}

/// The replica's share of the rule's burst: at least one call.
fn local_burst(rule: &Rule, replicas: u32) -> f64 {
    (f64::from(rule.burst) / f64::from(replicas.max(1))).max(1.0)
}

/// The decision while the store fails, by `on_store_failure`.
fn fallback(bucket: &mut Bucket, rule: &Rule, now: Instant, cx: Context) -> Take {
    match cx.on_failure {
        OnStoreFailure::Allow => Take::Admitted(Source::Allowed),
        OnStoreFailure::Deny => Take::Unavailable,
        OnStoreFailure::Local => {
            let rate = rule.per_second / f64::from(cx.replicas.max(1));
            let local = &mut bucket.local;
            let elapsed = now.saturating_duration_since(local.refilled).as_secs_f64();
            local.tokens = (local.tokens + elapsed * rate).min(local_burst(rule, cx.replicas));
            local.refilled = now;
            if local.tokens >= 1.0 {
                local.tokens -= 1.0;
                Take::Admitted(Source::Local)
            } else {
                let retry_after = Duration::from_secs_f64((1.0 - local.tokens) / rate);
                Take::Refused {
                    retry_after,
                    local: true,
                }
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::limits::rules::MAX_NAME_BYTES;

    /// The bucket part of [`BUCKET_COST`] (the lease in flight is measured with the
    /// limiter, `limits::tests`): its table entry twice over (a hash map holds up to
    /// twice the room it uses, and a control byte per slot), its name, its store key,
    /// its `Notify`; each heap block with 16 bytes of the allocator's.
    pub fn bucket_bytes() -> u64 {
        let entry = 2 * (std::mem::size_of::<(Box<str>, Bucket)>() + 1);
        let name = MAX_NAME_BYTES + 16;
        let store_key = 16 + 128 + 1 + MAX_NAME_BYTES + 16;
        let notify = 16 + std::mem::size_of::<Notify>() + 16;
        (entry + name + store_key + notify) as u64
    }

    #[test]
    fn a_bucket_costs_less_than_a_kib() {
        assert!(bucket_bytes() <= 1024, "{}", bucket_bytes());
    }

    fn rules(yaml: &str) -> Arc<[Rule]> {
        let rule: crate::config::GlobalRule = serde_saphyr::from_str(yaml).unwrap();
        vec![Rule::new(0, &rule)].into()
    }

    const UP: Context = Context {
        on_failure: OnStoreFailure::Local,
        replicas: 2,
        store_failing: false,
    };

    /// GCRA as the store's script runs it, in whole tokens, for the replica-side tests.
    struct Store {
        rate: f64,
        burst: f64,
        tokens: f64,
        at: Instant,
        granted: u64,
    }

    impl Store {
        fn new(rate: f64, burst: f64, now: Instant) -> Store {
            Store {
                rate,
                burst,
                tokens: burst,
                at: now,
                granted: 0,
            }
        }

        fn lease(&mut self, want: u32, now: Instant) -> Grant {
            self.tokens = (self.tokens + (now - self.at).as_secs_f64() * self.rate).min(self.burst);
            self.at = now;
            let granted = (self.tokens.floor() as u32).min(want);
            self.tokens -= f64::from(granted);
            self.granted += u64::from(granted);
            let left = self.tokens.floor() as u64;
            let refill = Duration::from_secs_f64((1.0 - self.tokens.fract()) / self.rate);
            Grant {
                granted,
                left,
                refill,
            }
        }
    }

    fn table_tokens(table: &Table) -> u32 {
        table.buckets.map["acme"].tokens
    }

    /// Takes one token for `name`, answering any lease from `store` at once.
    fn take(table: &mut Table, store: &mut Store, name: &str, now: Instant) -> Take {
        loop {
            let (take, lease) = table.take(0, name, now, UP, true);
            if let Some(lease) = lease {
                let grant = store.lease(lease.want, now);
                table.complete(&lease, Some(grant), now, UP.replicas);
            }
            if !matches!(take, Take::Wait(_)) {
                return take;
            }
        }
    }

    #[test]
    fn a_steady_caller_spends_leased_tokens_and_tops_up_before_running_dry() {
        let rules = rules("{ per: tenant, calls_per_second: 100, burst: 100 }");
        assert_eq!(rules[0].lease, 10);
        let mut table = Table::new(rules, "p", 100);
        let now = Instant::now();
        let (first, lease) = table.take(0, "a", now, UP, true);
        assert!(
            matches!(first, Take::Wait(_)),
            "a new bucket waits for its first lease"
        );
        let lease = lease.expect("and asks for one");
        assert_eq!((lease.want, &*lease.store_key), (10, "p:a"));
        table.complete(
            &lease,
            Some(Grant {
                granted: 10,
                left: 90,
                refill: Duration::ZERO,
            }),
            now,
            2,
        );
        let mut leases = 0;
        for _ in 0..100 {
            let (take, lease) = table.take(0, "a", now, UP, true);
            assert!(matches!(take, Take::Admitted(Source::Lease)), "{take:?}");
            if let Some(lease) = lease {
                assert!(lease.want <= 10 - 5, "tops up to a lease, never beyond");
                leases += 1;
                let left = 80;
                table.complete(
                    &lease,
                    Some(Grant {
                        granted: lease.want,
                        left,
                        refill: Duration::ZERO,
                    }),
                    now,
                    2,
                );
            }
        }
        assert!(
            (18..=21).contains(&leases),
            "{leases} round trips for 100 calls"
        );
    }

    #[test]
    fn replicas_together_never_admit_more_than_the_budget_plus_replicas_times_lease() {
        let rules = rules("{ per: tenant, calls_per_second: 50, burst: 20 }");
        let lease = u64::from(rules[0].lease);
        let start = Instant::now();
        let mut store = Store::new(50.0, 20.0, start);
        let mut replicas: Vec<Table> = (0..4)
            .map(|_| Table::new(rules.clone(), "p", 100))
            .collect();
        let mut admitted = 0u64;
        let mut now = start;
        for step in 0..2_000u32 {
            now += Duration::from_millis(1);
            let replica = &mut replicas[(step % 4) as usize];
            for _ in 0..3 {
                if let Take::Admitted(_) = take(replica, &mut store, "acme", now) {
                    admitted += 1;
                }
            }
        }
        let budget = 20.0 + 50.0 * (now - start).as_secs_f64();
        let held: u64 = replicas.iter().map(|t| u64::from(table_tokens(t))).sum();
        assert!(
            held <= 4 * lease,
            "{held} tokens held by 4 replicas, lease {lease}"
        );
        assert_eq!(
            admitted + held,
            store.granted,
            "every call spent a granted token"
        );
        assert!(
            admitted as f64 <= budget + (4 * lease) as f64,
            "{admitted} > {budget}"
        );
        assert!(
            admitted as f64 >= budget * 0.9,
            "{admitted} admitted of {budget}"
        );
    }

    #[test]
    fn an_empty_store_refuses_locally_until_the_time_it_named() {
        let mut table = Table::new(
            rules("{ per: tenant, calls_per_second: 10, burst: 1 }"),
            "p",
            100,
        );
        let now = Instant::now();
        let (_, lease) = table.take(0, "a", now, UP, true);
        let refill = Duration::from_millis(100);
        table.complete(
            &lease.unwrap(),
            Some(Grant {
                granted: 1,
                left: 0,
                refill,
            }),
            now,
            2,
        );
        assert!(matches!(
            table.take(0, "a", now, UP, true),
            (Take::Admitted(Source::Lease), None)
        ));
        let later = now + Duration::from_millis(40);
        match table.take(0, "a", later, UP, true) {
            (
                Take::Refused {
                    retry_after,
                    local: false,
                },
                None,
            ) => {
                assert_eq!(retry_after, Duration::from_millis(60));
            }
            other => panic!("{other:?}"),
        }
        let (take, lease) = table.take(0, "a", now + refill, UP, true);
        assert!(matches!(take, Take::Wait(_)));
        assert_eq!(lease.unwrap().want, 1, "near empty: one token at a time");
    }

    #[test]
    fn a_failing_store_gives_the_replicas_share_and_is_retried_in_the_background() {
        let mut table = Table::new(
            rules("{ per: tenant, calls_per_second: 10, burst: 10 }"),
            "p",
            100,
        );
        let now = Instant::now();
        let (_, lease) = table.take(0, "a", now, UP, true);
        table.complete(&lease.unwrap(), None, now, 2);
        // Two replicas: a burst of 5 here, then 5 a second.
        let admitted = (0..10)
            .filter(|_| {
                matches!(
                    table.take(0, "a", now, UP, true),
                    (Take::Admitted(Source::Local), None)
                )
            })
            .count();
        assert_eq!(admitted, 5);
        match table.take(0, "a", now, UP, true).0 {
            Take::Refused {
                retry_after,
                local: true,
            } => {
                assert_eq!(retry_after, Duration::from_millis(200));
            }
            other => panic!("{other:?}"),
        }
        // After RETRY_AFTER the store is asked again, in the background: the call that
        // asks is still answered by the fallback.
        let later = now + RETRY_AFTER;
        let (take, lease) = table.take(0, "a", later, UP, true);
        assert!(matches!(take, Take::Admitted(Source::Local)), "{take:?}");
        let lease = lease.expect("a lease retries the store");
        table.complete(
            &lease,
            Some(Grant {
                granted: 1,
                left: 9,
                refill: Duration::ZERO,
            }),
            later,
            2,
        );
        assert!(matches!(
            table.take(0, "a", later, UP, true).0,
            Take::Admitted(Source::Lease)
        ));
    }

    #[test]
    fn allow_and_deny_decide_while_the_store_fails() {
        for (on_failure, allowed) in [(OnStoreFailure::Allow, true), (OnStoreFailure::Deny, false)]
        {
            let cx = Context {
                on_failure,
                replicas: 1,
                store_failing: true,
            };
            let mut table = Table::new(rules("{ per: tenant, calls_per_second: 1 }"), "p", 100);
            let now = Instant::now();
            for _ in 0..5 {
                let take = table.take(0, "a", now, cx, true).0;
                assert_eq!(
                    matches!(take, Take::Admitted(Source::Allowed)),
                    allowed,
                    "{take:?}"
                );
                assert_eq!(matches!(take, Take::Unavailable), !allowed, "{take:?}");
            }
        }
    }

    #[test]
    fn a_call_that_waited_its_timeout_gets_the_fallback() {
        let mut table = Table::new(rules("{ per: tenant, calls_per_second: 10 }"), "p", 100);
        let now = Instant::now();
        let (take, lease) = table.take(0, "a", now, UP, true);
        assert!(matches!(take, Take::Wait(_)) && lease.is_some());
        let (take, lease) = table.take(0, "a", now, UP, false);
        assert!(matches!(take, Take::Admitted(Source::Local)), "{take:?}");
        assert!(
            lease.is_none(),
            "the lease already on its way is not asked twice"
        );
    }

    #[test]
    fn the_table_stays_within_max_buckets_under_a_flood_of_tenants() {
        let mut table = Table::new(rules("{ per: tenant, calls_per_second: 10 }"), "p", 1_000);
        let now = Instant::now();
        let granted = Some(Grant {
            granted: 1,
            left: 9,
            refill: Duration::ZERO,
        });
        for i in 0..100_000 {
            let (_, lease) = table.take(0, &format!("t{i}"), now, UP, true);
            // The store answers every lease, so no bucket stays "leasing".
            table.complete(&lease.unwrap(), granted, now, 2);
            assert!(table.buckets() <= 1_000, "{} buckets", table.buckets());
        }
        assert!(table.evicted() > 90_000, "{} evicted", table.evicted());
        assert!(
            table.buckets() >= 875,
            "a full table drops an eighth, not all: {}",
            table.buckets()
        );
        // Idle buckets are swept without counting as evictions.
        let mut table = Table::new(rules("{ per: tenant, calls_per_second: 10 }"), "p", 1_000);
        for i in 0..500 {
            let (_, lease) = table.take(0, &format!("t{i}"), now, UP, true);
            table.complete(&lease.unwrap(), granted, now, 2);
        }
        let later = now + IDLE + IDLE;
        for i in 0..1_000 {
            table.take(0, &format!("u{i}"), later, UP, true);
        }
        assert_eq!((table.evicted(), table.buckets()), (0, 1_000));
    }
}
