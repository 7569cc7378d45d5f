//! What one caller may take of the app: the per-pod table of open calls and call rates
//! per identity ([`local`]), and the budgets shared by every replica of a service, kept
//! in Redis (`limits.global`, DESIGN §12), which the rest of this module keeps.
//!
//! ```text
//! call ─▶ Limits layer: local table ─▶ GlobalLimiter::check ─▶ local bucket ─ token? ─▶ admitted
//!                                                                 │ none: lease in flight, wait ≤ timeout
//!                                                                 ▼
//!                        Redis: one GCRA script run per lease, one key per bucket (Cluster-safe)
//! ```
//!
//! No call pays a round trip in the steady state: each replica leases small batches of
//! tokens ([`buckets`]) and spends them locally, topping up before it runs dry. A
//! replica never holds more than a rule's `lease` unspent, so the whole service admits
//! at most the rule's budget plus replicas × lease, and a bucket near empty stops
//! leasing ahead. A refusal is 8 RESOURCE_EXHAUSTED, reason GLOBAL_RATE_LIMITED, with a
//! `google.rpc.RetryInfo` naming when the next call would pass.
//!
//! Nothing waits on the store longer than `timeout`: a call whose bucket has no token
//! waits for the lease in flight at most that long, then `on_store_failure` decides for
//! it; while the store fails, buckets answer from the fallback without asking it and try
//! it again in the background each second ([`buckets::RETRY_AFTER`]). `local` divides
//! each rule by the replicas last seen live ([`replicas`]). Recovery needs nothing: the
//! announcer reconnects and the buckets' next leases succeed. The failure is counted,
//! logged once per spell and shown on `/readyz` as detail, never as unreadiness: a
//! store outage must not take every pod out of its Service.
//!
//! Public methods and health checks never touch the store, and a call counts only in
//! the buckets of the rules that match it ([`rules`]). Without `limits.global` no
//! limiter is made: nothing here runs.

pub mod buckets;
pub mod local;
pub mod metrics;
pub mod replicas;
pub mod rules;
#[cfg(feature = "global-limits")]
pub mod store;
#[cfg(not(feature = "global-limits"))]
#[path = "no_store.rs"]
pub mod store;

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::auth::outcome::AuthOutcome;
use crate::config::{GlobalLimits, OnStoreFailure, Problem};
use crate::grpc::{Reason, Status};
use crate::identity::Principal;
use crate::tls::{ConnectionInfo, PeerIdentity};
use buckets::{Context, LeaseRequest, Source, Table, Take};
use metrics::{GlobalMetrics, Outcome, RuleMetrics};
use replicas::{ANNOUNCE_EVERY, ANNOUNCE_TTL, Health};
use rules::{Call, Rule, bucket_name};
use store::{Store, StoreError};

/// The shortest `RetryInfo` delay sent.
const MIN_RETRY: Duration = Duration::from_millis(1);

thread_local! {
    /// The bucket name of the rule being checked, written here so that finding a bucket
    /// that exists allocates nothing.
    static NAME: RefCell<String> = const { RefCell::new(String::new()) };
}

/// The global limits of one process: rules, local buckets, store and announcer.
pub struct GlobalLimiter {
    rules: Arc<[Rule]>,
    rule_metrics: Vec<RuleMetrics>,
    table: Mutex<Table>,
    store: Store,
    health: Health,
    on_failure: OnStoreFailure,
    timeout: Duration,
    metrics: GlobalMetrics,
    replicas_key: String,
    member: String,
    /// Evictions already added to the metric.
    evicted: AtomicU64,
}

/// The decision for a call.
pub enum Check {
    Admitted,
    Refused(Status),
    /// A lease is on its way; the answer comes within `timeout`.
    Pending(Pending),
}

/// The decision for a call that waits for a lease; no longer than `timeout`.
pub struct Pending(Pin<Box<dyn Future<Output = Result<(), Status>> + Send>>);

impl Future for Pending {
    type Output = Result<(), Status>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        self.0.as_mut().poll(cx)
    }
}

/// Where the walk over the rules stopped.
enum Step {
    Done,
    Refused(Status),
    Wait { rule: usize, notify: Arc<Notify> },
}

/// The tokens a call took so far (bit `i`: rule `i`), given back if a later rule refuses.
#[derive(Default)]
struct Taken {
    lease: u64,
    local: u64,
}

impl Taken {
    fn record(&mut self, rule: usize, source: Source) {
        match source {
            Source::Lease => self.lease |= 1 << rule,
            Source::Local => self.local |= 1 << rule,
            Source::Allowed => {}
        }
    }

    fn source(&self, rule: usize) -> Option<Source> {
        if self.lease & (1 << rule) != 0 {
            Some(Source::Lease)
        } else if self.local & (1 << rule) != 0 {
            Some(Source::Local)
        } else {
            None
        }
    }
}

/// A call's identity, owned, for a call that waits.
struct OwnedCall {
    principal: Arc<Principal>,
    connection: Option<Arc<ConnectionInfo>>,
    path: Box<str>,
}

impl OwnedCall {
    fn call(&self) -> Call<'_> {
        Call {
            principal: &self.principal,
            peer: peer(self.connection.as_ref()),
            path: &self.path,
        }
    }
}

fn peer(connection: Option<&Arc<ConnectionInfo>>) -> Option<&PeerIdentity> {
    connection.and_then(|c| c.peer.as_ref())
}

/// The most memory the limiter of `config` can hold: `max_buckets` buckets, each with a
/// lease in flight ([`buckets::BUCKET_COST`]). The rest (rules, metrics, the one
/// connection to the store) is small and fixed.
pub fn memory_budget(config: &GlobalLimits) -> u64 {
    (config.max_buckets as u64).saturating_mul(buckets::BUCKET_COST)
}

impl GlobalLimiter {
    /// The limiter for `config`, with its files read; nothing is connected yet.
    pub fn new(config: &GlobalLimits) -> Result<GlobalLimiter, Vec<Problem>> {
        let store = Store::new(config)?;
        let rules: Arc<[Rule]> = config
            .rules
            .iter()
            .enumerate()
            .map(|(index, rule)| Rule::new(index, rule))
            .collect();
        let metrics = GlobalMetrics::default();
        Ok(GlobalLimiter {
            rule_metrics: (0..rules.len()).map(|index| metrics.rule(index)).collect(),
            table: Mutex::new(Table::new(
                rules.clone(),
                &config.key_prefix,
                config.max_buckets,
            )),
            rules,
            store,
            health: Health::default(),
            on_failure: config.on_store_failure,
            timeout: config.timeout.get(),
            metrics,
            replicas_key: format!("{}:replicas", config.key_prefix),
            member: replicas::member(),
            evicted: AtomicU64::new(0),
        })
    }

    /// Adds the global limits' metrics to the process's registry.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        self.metrics.register(registry);
    }

    /// Connects and announces this replica once (at most about a second, so start-up
    /// is never held by a store that is down), then keeps announcing in the background
    /// until `stop` is cancelled.
    pub async fn start(self: &Arc<Self>, stop: CancellationToken) {
        self.announce().await;
        let limiter = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(ANNOUNCE_EVERY) => {}
                }
                limiter.announce().await;
            }
        });
    }

    /// The `/readyz` detail line: the store answers, or how long it has been failing.
    pub fn readiness_detail(&self) -> String {
        self.health
            .describe(Instant::now(), self.on_failure.as_str())
    }

    /// Decides a call to `path` that Auth admitted with `outcome`, on `connection`,
    /// against every rule that matches it. The chain hands over what it knows of the
    /// call, so this does not depend on where the chain keeps it.
    pub fn check(
        self: &Arc<Self>,
        outcome: Option<&AuthOutcome>,
        connection: Option<&Arc<ConnectionInfo>>,
        path: &str,
    ) -> Check {
        let Some(AuthOutcome::Admitted { principal, .. }) = outcome else {
            return Check::Admitted;
        };
        if Call::exempt(principal.method, path) {
            return Check::Admitted;
        }
        let call = Call {
            principal: principal.as_ref(),
            peer: peer(connection),
            path,
        };
        let mut taken = Taken::default();
        match self.walk(call, 0, &mut taken, true) {
            Step::Done => Check::Admitted,
            Step::Refused(status) => Check::Refused(status),
            Step::Wait { rule, notify } => {
                let owned = OwnedCall {
                    principal: principal.clone(),
                    connection: connection.cloned(),
                    path: path.into(),
                };
                let deadline = tokio::time::Instant::now() + self.timeout;
                let waiting = self.clone().wait(owned, rule, notify, taken, deadline);
                Check::Pending(Pending(Box::pin(waiting)))
            }
        }
    }

    /// Decides the rules from `from` on, taking a token from each that applies.
    fn walk(
        self: &Arc<Self>,
        call: Call<'_>,
        from: usize,
        taken: &mut Taken,
        may_wait: bool,
    ) -> Step {
        let now = Instant::now();
        let cx = Context {
            on_failure: self.on_failure,
            replicas: self.health.replicas(),
            store_failing: self.health.failing(now),
        };
        NAME.with_borrow_mut(|name| {
            let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
            for (index, rule) in self.rules.iter().enumerate().skip(from) {
                if !rule.applies_to(call.path) || !bucket_name(name, index, rule, call) {
                    continue;
                }
                let (take, lease) = table.take(index, name, now, cx, may_wait);
                if let Some(lease) = lease {
                    self.spawn_lease(lease);
                }
                let metrics = &self.rule_metrics[index];
                let refusal = match take {
                    Take::Admitted(source) => {
                        metrics.count(match source {
                            Source::Lease => Outcome::Admitted,
                            Source::Local => Outcome::LocalAdmitted,
                            Source::Allowed => Outcome::StoreFailureAllowed,
                        });
                        taken.record(index, source);
                        continue;
                    }
                    Take::Wait(notify) => {
                        return Step::Wait {
                            rule: index,
                            notify,
                        };
                    }
                    Take::Refused { retry_after, local } => {
                        metrics.count(if local {
                            Outcome::LocalRefused
                        } else {
                            Outcome::Refused
                        });
                        self.refused(index, call.path, retry_after, local)
                    }
                    Take::Unavailable => {
                        metrics.count(Outcome::StoreFailureDenied);
                        Status::new(
                            Reason::GlobalLimitUnavailable,
                            "GLOBAL_LIMIT_UNAVAILABLE: the store of limits.global cannot be \
                             reached and on_store_failure is deny",
                        )
                        .with("method", call.path)
                        .with("rule", rule.label.as_str())
                    }
                };
                // The rules before this one took tokens for a call that does not happen.
                for earlier in 0..index {
                    if let Some(source) = taken.source(earlier)
                        && bucket_name(name, earlier, &self.rules[earlier], call)
                    {
                        table.give_back(name, source);
                    }
                }
                return Step::Refused(refusal);
            }
            Step::Done
        })
    }

    /// Waits for the lease of rule `rule`, then decides the rest; past `deadline`, the
    /// rules still waiting are decided by `on_store_failure`.
    async fn wait(
        self: Arc<Self>,
        owned: OwnedCall,
        mut rule: usize,
        mut notify: Arc<Notify>,
        mut taken: Taken,
        deadline: tokio::time::Instant,
    ) -> Result<(), Status> {
        loop {
            let step = {
                let notified = notify.notified();
                tokio::pin!(notified);
                // Listen before looking again, so a lease landing in between is not missed.
                notified.as_mut().enable();
                let may_wait = tokio::time::Instant::now() < deadline;
                match self.walk(owned.call(), rule, &mut taken, may_wait) {
                    Step::Wait {
                        rule: next,
                        notify: same,
                    } if next == rule && Arc::ptr_eq(&same, &notify) => {
                        let _ = tokio::time::timeout_at(deadline, notified).await;
                        continue;
                    }
                    step => step,
                }
            };
            match step {
                Step::Done => return Ok(()),
                Step::Refused(status) => return Err(status),
                Step::Wait {
                    rule: next,
                    notify: next_notify,
                } => (rule, notify) = (next, next_notify),
            }
        }
    }

    /// The refusal of a call over rule `index`.
    fn refused(&self, index: usize, path: &str, retry_after: Duration, local: bool) -> Status {
        let rule = &self.rules[index];
        let message = if local {
            format!(
                "{} (the store is failing: this replica's share)",
                rule.message
            )
        } else {
            rule.message.clone()
        };
        log_refusal(&rule.label, rule.per.as_str(), path, local);
        Status::new(Reason::GlobalRateLimited, message)
            .with("method", path)
            .with("rule", rule.label.as_str())
            .with("per", rule.per.as_str())
            .with_retry_delay(retry_after.max(MIN_RETRY))
    }

    /// Sends a lease to the store in the background; its answer wakes the waiters.
    fn spawn_lease(self: &Arc<Self>, request: LeaseRequest) {
        tokio::spawn(self.clone().lease(request));
    }

    /// Asks the store for `request`'s tokens and records the answer in the table.
    async fn lease(self: Arc<Self>, request: LeaseRequest) {
        let rule = &self.rules[request.rule];
        let started = Instant::now();
        let answer = self
            .store
            .lease(&request.store_key, rule, request.want)
            .await;
        let now = Instant::now();
        let grant = match answer {
            Ok(grant) => {
                self.metrics
                    .round_trip("lease", (now - started).as_secs_f64());
                let metrics = &self.rule_metrics[request.rule];
                metrics.leases.inc();
                metrics.leased_tokens.inc_by(u64::from(grant.granted));
                Some(grant)
            }
            Err(error) => {
                self.store_failed(&error, now);
                None
            }
        };
        let replicas = self.health.replicas();
        self.table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .complete(&request, grant, now, replicas);
        request.notify.notify_waiters();
    }

    /// Counts a store failure, and logs the first of a spell.
    fn store_failed(&self, error: &StoreError, now: Instant) {
        self.metrics.error(error.kind());
        let echo = matches!(error, StoreError::NotConnected);
        if self.health.failed(error, echo, now) {
            tracing::warn!(
                %error,
                on_store_failure = self.on_failure.as_str(),
                replicas = self.health.replicas(),
                "global limits: the store failed; calls are decided by on_store_failure until it answers again"
            );
        }
    }

    /// Connects if needed, announces this replica, and refreshes the gauges.
    async fn announce(&self) {
        let started = Instant::now();
        let answer = match self.store.connect().await {
            Ok(()) => {
                self.store
                    .announce(&self.replicas_key, &self.member, ANNOUNCE_TTL)
                    .await
            }
            Err(error) => Err(error),
        };
        let now = Instant::now();
        match answer {
            Ok(live) => {
                self.metrics
                    .round_trip("announce", (now - started).as_secs_f64());
                self.health.set_replicas(live);
            }
            Err(error) => self.store_failed(&error, now),
        }
        if let Some(since) = self.health.recovered(now) {
            tracing::info!(
                failed_for_s = now.saturating_duration_since(since).as_secs(),
                "global limits: the store answers again"
            );
        }
        self.metrics
            .store_up
            .set(i64::from(!self.health.failing(now)));
        self.metrics.replicas.set(i64::from(self.health.replicas()));
        let (buckets, evicted) = {
            let table = self.table.lock().unwrap_or_else(|p| p.into_inner());
            (table.buckets(), table.evicted())
        };
        self.metrics.buckets.set(buckets as i64);
        let new = evicted.saturating_sub(self.evicted.swap(evicted, Ordering::Relaxed));
        if new > 0 {
            self.metrics.evicted.inc_by(new);
            tracing::warn!(
                evicted = new,
                buckets,
                "global limits: max_buckets reached; the least recently used buckets were dropped"
            );
        }
    }
}

/// Second of the last refusal logged at INFO: at most one a second, so a caller over
/// its budget cannot flood the log (the metric counts every one).
static LAST_REFUSAL_LOG: AtomicU64 = AtomicU64::new(0);

fn log_refusal(rule: &str, per: &str, method: &str, local: bool) {
    let now = crate::clock::unix_now();
    // Caller-controlled: at most 128 characters of it.
    let method = method
        .char_indices()
        .nth(128)
        .map_or(method, |(at, _)| &method[..at]);
    if LAST_REFUSAL_LOG.swap(now, Ordering::Relaxed) != now {
        tracing::info!(rule, per, method, local, "call refused: global limit");
    } else {
        tracing::debug!(rule, per, method, local, "call refused: global limit");
    }
}

#[cfg(test)]
#[cfg(feature = "global-limits")]
mod tests {
    //! The limiter with a store that cannot be reached (nothing listens on its port): every
    //! lease fails at once, so these run the fallback, the wait and the give-back for real
    //! without a Redis. The end-to-end tests run them against one.

    use super::*;
    use crate::identity::{AuthMethod, Claims};

    fn limiter(rules: &str) -> Arc<GlobalLimiter> {
        let yaml = format!("{{ redis: 'redis://127.0.0.1:1', key_prefix: t, rules: {rules} }}");
        let config: GlobalLimits = serde_saphyr::from_str(&yaml).unwrap();
        Arc::new(GlobalLimiter::new(&config).unwrap_or_else(|p| panic!("{p:?}")))
    }

    /// A call Auth admitted: its outcome and its path.
    struct Request {
        outcome: AuthOutcome,
        path: &'static str,
    }

    fn check(limiter: &Arc<GlobalLimiter>, request: &Request) -> Check {
        limiter.check(Some(&request.outcome), None, request.path)
    }

    fn call(path: &'static str, method: AuthMethod, tenant: &str) -> Request {
        let claims = Claims {
            tenant_id: Some(tenant.to_owned()),
            ..Claims::default()
        };
        let principal = Principal::new(method, claims).unwrap();
        Request {
            outcome: AuthOutcome::Admitted {
                principal: Arc::new(principal),
                would_refuse: None,
            },
            path,
        }
    }

    /// The decision, waiting (bounded) when a lease is on its way.
    async fn decide(limiter: &Arc<GlobalLimiter>, request: &Request) -> Result<(), Status> {
        match check(limiter, request) {
            Check::Admitted => Ok(()),
            Check::Refused(status) => Err(status),
            Check::Pending(pending) => tokio::time::timeout(Duration::from_secs(5), pending)
                .await
                .expect("a pending call is decided within the timeout"),
        }
    }

    #[test]
    fn a_bucket_and_its_lease_in_flight_fit_the_memory_budget() {
        let limiter = limiter("[{ per: tenant, calls_per_second: 1 }]");
        let name: Box<str> = "x".repeat(rules::MAX_NAME_BYTES).into();
        let request = LeaseRequest {
            store_key: rules::store_key(&"p".repeat(128), &name).into(),
            name,
            rule: 0,
            want: 1,
            notify: Arc::new(Notify::new()),
        };
        // The task: its future, and tokio's header and trailer around it.
        let task = std::mem::size_of_val(&limiter.clone().lease(request)) + 256;
        // The request the client keeps while it is sent: the script's arguments, and
        // the command encoded (EVALSHA, the script's digest, the key, three numbers).
        let sent = 2 * (64 + 40 + 128 + 1 + rules::MAX_NAME_BYTES + 3 * 24);
        let lease = (task + sent) as u64;
        let bucket = buckets::tests::bucket_bytes();
        assert!(
            bucket + lease <= buckets::BUCKET_COST,
            "a bucket {bucket} bytes, a lease in flight {lease}"
        );
        let config: GlobalLimits = serde_saphyr::from_str(
            "{ redis: 'redis://127.0.0.1:1', key_prefix: t, max_buckets: 1000, rules: [] }",
        )
        .unwrap();
        assert_eq!(memory_budget(&config), 1000 * buckets::BUCKET_COST);
    }

    #[tokio::test]
    async fn public_methods_and_health_checks_never_make_a_bucket() {
        let limiter = limiter("[{ per: tenant, calls_per_second: 1 }]");
        for _ in 0..10 {
            let public = call("/pkg.Svc/Get", AuthMethod::None, "acme");
            assert!(matches!(check(&limiter, &public), Check::Admitted));
            let health = call("/grpc.health.v1.Health/Check", AuthMethod::ApiKey, "acme");
            assert!(matches!(check(&limiter, &health), Check::Admitted));
        }
        assert_eq!(limiter.table.lock().unwrap().buckets(), 0);
    }

    #[tokio::test]
    async fn an_unreachable_store_leaves_the_local_share_and_says_so() {
        let limiter = limiter("[{ per: tenant, calls_per_second: 1, burst: 3 }]");
        let request = call("/pkg.Svc/Get", AuthMethod::ApiKey, "acme");
        for _ in 0..3 {
            decide(&limiter, &request).await.expect("within the share");
        }
        let refused = decide(&limiter, &request).await.unwrap_err();
        assert_eq!(refused.reason(), Reason::GlobalRateLimited);
        assert!(
            refused.message().ends_with("this replica's share)"),
            "{}",
            refused.message()
        );
        let delay = refused.retry_delay().unwrap();
        assert!(
            delay > Duration::from_millis(500) && delay <= Duration::from_secs(1),
            "{delay:?}"
        );
        assert!(
            limiter.readiness_detail().contains("store failing"),
            "{}",
            limiter.readiness_detail()
        );
        // Another tenant has its own share.
        decide(
            &limiter,
            &call("/pkg.Svc/Get", AuthMethod::ApiKey, "globex"),
        )
        .await
        .expect("another tenant");
    }

    #[tokio::test]
    async fn a_call_refused_by_a_later_rule_gives_its_tokens_back() {
        let limiter = limiter(
            "[{ per: tenant, calls_per_second: 1, burst: 3 },
              { per: method, methods: ['/pkg.Svc/Export'], calls_per_second: 1, burst: 1 }]",
        );
        let export = call("/pkg.Svc/Export", AuthMethod::ApiKey, "acme");
        decide(&limiter, &export).await.expect("the first export");
        let refused = decide(&limiter, &export).await.unwrap_err();
        assert!(
            refused.message().contains("rules[1]"),
            "{}",
            refused.message()
        );
        // The refused export took nothing from the tenant's 3: two calls are left.
        let get = call("/pkg.Svc/Get", AuthMethod::ApiKey, "acme");
        decide(&limiter, &get)
            .await
            .expect("the tenant's second call");
        decide(&limiter, &get)
            .await
            .expect("the tenant's third call");
        let refused = decide(&limiter, &get).await.unwrap_err();
        assert!(
            refused.message().contains("rules[0]"),
            "{}",
            refused.message()
        );
    }
}
