//! What the global limits report on the admin port. The families are made here and
//! registered with the process's other metrics ([`crate::metrics::Metrics::with`]);
//! every label value comes from the config (a rule's index) or from a fixed list, so
//! callers cannot grow them. A call's counter is looked up once per rule at start.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The `result` label of `gatehouse_global_limit_total`, in [`Outcome`] order.
pub const RESULTS: [&str; 6] = [
    "admitted",
    "refused",
    "local_admitted",
    "local_refused",
    "store_failure_allowed",
    "store_failure_denied",
];

/// What became of one call under one rule; indexes [`RESULTS`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A token leased from the store.
    Admitted = 0,
    /// The shared budget is spent.
    Refused = 1,
    /// The store failed; the replica's share admitted it.
    LocalAdmitted = 2,
    /// The store failed; the replica's share is spent.
    LocalRefused = 3,
    /// The store failed and `on_store_failure` is `allow`.
    StoreFailureAllowed = 4,
    /// The store failed and `on_store_failure` is `deny`.
    StoreFailureDenied = 5,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    rule: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// Store round trips from 50 µs to a second.
const BUCKETS: [f64; 12] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.25, 1.0,
];

/// The global limits' metrics.
#[derive(Clone)]
pub struct GlobalMetrics {
    calls: Family<ResultLabels, Counter>,
    round_trips: Family<OperationLabels, Histogram, fn() -> Histogram>,
    errors: Family<KindLabels, Counter>,
    leases: Family<RuleLabels, Counter>,
    leased_tokens: Family<RuleLabels, Counter>,
    pub store_up: Gauge,
    pub replicas: Gauge,
    pub buckets: Gauge,
    pub evicted: Counter,
}

impl Default for GlobalMetrics {
    fn default() -> Self {
        fn histogram() -> Histogram {
            Histogram::new(BUCKETS)
        }
        GlobalMetrics {
            calls: Family::default(),
            round_trips: Family::new_with_constructor(histogram),
            errors: Family::default(),
            leases: Family::default(),
            leased_tokens: Family::default(),
            store_up: Gauge::default(),
            replicas: Gauge::default(),
            buckets: Gauge::default(),
            evicted: Counter::default(),
        }
    }
}

/// One rule's counters, looked up once.
pub struct RuleMetrics {
    results: [Counter; RESULTS.len()],
    pub leases: Counter,
    pub leased_tokens: Counter,
}

impl RuleMetrics {
    pub fn count(&self, outcome: Outcome) {
        self.results[outcome as usize].inc();
    }
}

impl GlobalMetrics {
    /// Adds every family to `registry` (prometheus-client appends `_total` to counters).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "gatehouse_global_limit",
            "Calls checked against limits.global rules, by rule index and result",
            self.calls.clone(),
        );
        registry.register(
            "gatehouse_global_limit_store_seconds",
            "Round trips to the global limits' store, by operation (lease, announce)",
            self.round_trips.clone(),
        );
        registry.register(
            "gatehouse_global_limit_store_errors",
            "Store requests that failed or took longer than limits.global.timeout, by kind",
            self.errors.clone(),
        );
        registry.register(
            "gatehouse_global_limit_leases",
            "Leases of tokens taken from the store, by rule index",
            self.leases.clone(),
        );
        registry.register(
            "gatehouse_global_limit_leased_tokens",
            "Tokens granted by the store's leases, by rule index",
            self.leased_tokens.clone(),
        );
        registry.register(
            "gatehouse_global_limit_store_up",
            "1 while the store answers, 0 while limits.global.on_store_failure decides",
            self.store_up.clone(),
        );
        registry.register(
            "gatehouse_global_limit_replicas",
            "Replicas sharing the budgets, as last seen in the store",
            self.replicas.clone(),
        );
        registry.register(
            "gatehouse_global_limit_buckets",
            "Buckets this replica keeps (at most limits.global.max_buckets)",
            self.buckets.clone(),
        );
        registry.register(
            "gatehouse_global_limit_evicted_buckets",
            "Buckets dropped while in use because limits.global.max_buckets was reached",
            self.evicted.clone(),
        );
    }

    /// The counters of the rule at `index`.
    pub fn rule(&self, index: usize) -> RuleMetrics {
        let rule = index.to_string();
        let result = |result| {
            self.calls.get_or_create_owned(&ResultLabels {
                rule: rule.clone(),
                result,
            })
        };
        let labels = RuleLabels { rule: rule.clone() };
        RuleMetrics {
            results: RESULTS.map(result),
            leases: self.leases.get_or_create_owned(&labels),
            leased_tokens: self.leased_tokens.get_or_create_owned(&labels),
        }
    }

    pub fn round_trip(&self, operation: &'static str, seconds: f64) {
        self.round_trips
            .get_or_create(&OperationLabels { operation })
            .observe(seconds);
    }

    pub fn error(&self, kind: &'static str) {
        self.errors.get_or_create(&KindLabels { kind }).inc();
    }
}
