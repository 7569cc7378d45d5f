//! Prometheus metrics, with the names dashboards know from go-grpc-prometheus, rendered
//! as text on the admin port.
//!
//! Label values that callers control are bounded: a method gets its own labels only once
//! the app itself has answered a call to it with a status other than UNIMPLEMENTED (or,
//! with a schema, at its first call, since the schema's methods are the app's own), only
//! if its path is at most [`MAX_METHOD_CHARS`] long, and at most [`MAX_METHODS`] of them;
//! everything else is counted under `grpc_service="other"`. A flood of made-up method
//! names therefore grows neither memory nor the scrape. Each method's metric handles are
//! looked up once and kept, so recording a call to a known method allocates nothing.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Metric, Registry};

use crate::grpc::Code;

/// Distinct methods that get labels of their own.
pub const MAX_METHODS: usize = 256;
/// Longest method path that gets labels of its own.
pub const MAX_METHOD_CHARS: usize = 128;

/// Latency buckets from a tenth of a millisecond to ten seconds.
const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    /// `unary`, `client_stream`, `server_stream` or `bidi_stream` from the app's schema;
    /// `unknown` without one (`schema.source: none`), since a proxy cannot tell them apart.
    grpc_type: &'static str,
    grpc_service: String,
    grpc_method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandledLabels {
    grpc_type: &'static str,
    grpc_service: String,
    grpc_method: String,
    grpc_code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthLabels {
    method: &'static str,
    result: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DryRunLabels {
    /// `/pkg.Svc/Get`, or `other` past the method cap.
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FileLabels {
    file: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

type HistogramFamily = Family<MethodLabels, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClientLabels {
    grpc_type: &'static str,
    grpc_service: String,
    grpc_method: String,
    destination: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClientHandledLabels {
    grpc_type: &'static str,
    grpc_service: String,
    grpc_method: String,
    grpc_code: &'static str,
    destination: String,
}

type ClientHistogramFamily = Family<ClientLabels, Histogram, fn() -> Histogram>;

/// Outbound methods by destination, then by path (looked up without allocating).
type ClientMethods = HashMap<Box<str>, HashMap<Box<str>, Arc<ClientMethodMetrics>>>;

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// `metric`, once registered under `name` with `help`; the registry keeps its own handle.
fn registered<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// Every metric gatehouse exports.
pub struct Metrics {
    registry: Registry,
    started: Family<MethodLabels, Counter>,
    handled: Family<HandledLabels, Counter>,
    handling: HistogramFamily,
    auth: Family<AuthLabels, Counter>,
    tls_errors: Family<ReasonLabels, Counter>,
    upstream_errors: Family<KindLabels, Counter>,
    cert_expiry: Family<FileLabels, Gauge>,
    cert_not_before: Family<FileLabels, Gauge>,
    reloads: Family<ResultLabels, Counter>,
    dry_run_refusals: Family<DryRunLabels, Counter>,
    limit_refusals: Family<LimitLabels, Counter>,
    spans_dropped: Family<ReasonLabels, Counter>,
    pub connections: Gauge,
    pub in_flight: Gauge,
    /// Requests that were not gRPC (answered with HTTP 415).
    pub not_grpc: Counter,
    methods: RwLock<HashMap<Box<str>, Arc<MethodMetrics>>>,
    other: OnceLock<Arc<MethodMetrics>>,
    client_started: Family<ClientLabels, Counter>,
    client_handled: Family<ClientHandledLabels, Counter>,
    client_handling: ClientHistogramFamily,
    client_methods: RwLock<ClientMethods>,
}

/// The handles of one outbound method's metrics, towards one destination.
pub struct ClientMethodMetrics {
    labels: ClientLabels,
    pub started: Counter,
    pub handling: Histogram,
    handled: [OnceLock<Counter>; 17],
}

/// The handles of one method's metrics.
pub struct MethodMetrics {
    labels: MethodLabels,
    pub started: Counter,
    pub handling: Histogram,
    handled: [OnceLock<Counter>; 17],
    dry_run_refusals: OnceLock<Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let r = &mut registry;
        let client_started = registered(
            r,
            "grpc_client_started",
            "Outbound calls started, by destination",
            Family::default(),
        );
        let client_handled = registered(
            r,
            "grpc_client_handled",
            "Outbound calls completed, by status code and destination",
            Family::default(),
        );
        let client_handling = registered(
            r,
            "grpc_client_handling_seconds",
            "Time from an outbound call's arrival to the end of its response",
            ClientHistogramFamily::new_with_constructor(histogram),
        );
        // prometheus-client appends `_total` to counters itself.
        let started = registered(
            r,
            "grpc_server_started",
            "Calls started on the server",
            Family::default(),
        );
        let handled = registered(
            r,
            "grpc_server_handled",
            "Calls completed, by status code",
            Family::default(),
        );
        let handling = registered(
            r,
            "grpc_server_handling_seconds",
            "Time from a call's arrival to the end of its response",
            HistogramFamily::new_with_constructor(histogram),
        );
        let auth = registered(
            r,
            "gatehouse_auth",
            "Authentication and authorization decisions",
            Family::default(),
        );
        let tls_errors = registered(
            r,
            "gatehouse_tls_handshake_errors",
            "TLS handshakes that failed, by reason",
            Family::default(),
        );
        let upstream_errors = registered(
            r,
            "gatehouse_upstream_errors",
            "Failures talking to the app, by kind",
            Family::default(),
        );
        let cert_expiry = registered(
            r,
            "gatehouse_cert_expiry_timestamp_seconds",
            "When the first certificate in each file expires (Unix time)",
            Family::default(),
        );
        let cert_not_before = registered(
            r,
            "gatehouse_cert_not_before_timestamp_seconds",
            "When the first certificate in each file became valid (Unix time): with the expiry, its lifetime",
            Family::default(),
        );
        let reloads = registered(
            r,
            "gatehouse_config_reloads",
            "Reloads of certificates and configuration, by result",
            Family::default(),
        );
        let dry_run_refusals = registered(
            r,
            "gatehouse_authz_dry_run_refusals",
            "Calls authorization.dry_run let through that the rules would have refused, by method",
            Family::default(),
        );
        let limit_refusals = registered(
            r,
            "gatehouse_limit_refusals",
            "Connections and calls refused because a limit was reached, by the limit's name",
            Family::default(),
        );
        let spans_dropped = registered(
            r,
            "gatehouse_spans_dropped",
            "Spans not exported, by reason: queue_full (the export queue or its byte budget was full), rate_limited (spans of calls answered here, past their rate) or export_failed (the collector refused or could not be reached)",
            Family::default(),
        );
        let connections = registered(
            r,
            "gatehouse_connections",
            "Open client connections",
            Gauge::default(),
        );
        let in_flight = registered(
            r,
            "gatehouse_requests_in_flight",
            "Calls being handled",
            Gauge::default(),
        );
        let not_grpc = registered(
            r,
            "gatehouse_non_grpc_requests",
            "Requests that were not gRPC, answered with HTTP 415",
            Counter::default(),
        );
        r.register(
            "gatehouse_build",
            "The gatehouse version and the commit it was built from (value 1)",
            Info::new(vec![
                ("version", crate::version::VERSION),
                ("commit", crate::version::COMMIT),
            ]),
        );
        Metrics {
            registry,
            started,
            handled,
            handling,
            auth,
            tls_errors,
            upstream_errors,
            cert_expiry,
            cert_not_before,
            reloads,
            dry_run_refusals,
            limit_refusals,
            spans_dropped,
            connections,
            in_flight,
            not_grpc,
            methods: RwLock::new(HashMap::new()),
            other: OnceLock::new(),
            client_started,
            client_handled,
            client_handling,
            client_methods: RwLock::new(HashMap::new()),
        }
    }

    /// Every metric, plus the families `register` adds: those of a module above this
    /// one (the global limits), so that one scrape shows them all.
    pub fn with(register: impl FnOnce(&mut Registry)) -> Metrics {
        let mut metrics = Metrics::new();
        register(&mut metrics.registry);
        metrics
    }

    /// The metrics of the method at `path`, if it has labels of its own.
    pub fn known_method(&self, path: &str) -> Option<Arc<MethodMetrics>> {
        self.methods
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(path)
            .cloned()
    }

    /// The metrics of everything without labels of its own.
    pub fn other_method(&self) -> Arc<MethodMetrics> {
        self.other
            .get_or_init(|| Arc::new(self.method_metrics("other", "other")))
            .clone()
    }

    /// The metrics of the method at `path`, which the app has answered: its own labels
    /// while there is room and the path is short enough, else `other`.
    pub fn answered_method(&self, path: &str) -> Arc<MethodMetrics> {
        if path.len() > MAX_METHOD_CHARS {
            return self.other_method();
        }
        let mut methods = self.methods.write().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = methods.get(path) {
            return found.clone();
        }
        if methods.len() >= MAX_METHODS {
            return self.other_method();
        }
        let (service, method) = path
            .strip_prefix('/')
            .and_then(|rest| rest.split_once('/'))
            .unwrap_or(("unknown", "unknown"));
        let metrics = Arc::new(self.method_metrics(service, method));
        methods.insert(path.into(), metrics.clone());
        metrics
    }

    /// The metrics of a method the app's schema has, labelled with its stream kind
    /// (`grpc_type`): its own labels while there is room, else `other`. The schema's
    /// methods are the app's own, not made up by callers; an entry counted before the
    /// schema was known (`unknown`) is replaced once.
    pub fn schema_method(&self, path: &str, grpc_type: &'static str) -> Arc<MethodMetrics> {
        if let Some(found) = self.known_method(path)
            && found.labels.grpc_type == grpc_type
        {
            return found;
        }
        if path.len() > MAX_METHOD_CHARS {
            return self.other_method();
        }
        let mut methods = self.methods.write().unwrap_or_else(|p| p.into_inner());
        match methods.get(path) {
            Some(found) if found.labels.grpc_type == grpc_type => return found.clone(),
            None if methods.len() >= MAX_METHODS => return self.other_method(),
            _ => {}
        }
        let (service, method) = path
            .strip_prefix('/')
            .and_then(|rest| rest.split_once('/'))
            .unwrap_or(("unknown", "unknown"));
        let metrics = Arc::new(self.typed_method_metrics(service, method, grpc_type));
        methods.insert(path.into(), metrics.clone());
        metrics
    }

    fn method_metrics(&self, service: &str, method: &str) -> MethodMetrics {
        self.typed_method_metrics(service, method, "unknown")
    }

    fn typed_method_metrics(
        &self,
        service: &str,
        method: &str,
        grpc_type: &'static str,
    ) -> MethodMetrics {
        let labels = MethodLabels {
            grpc_type,
            grpc_service: service.to_owned(),
            grpc_method: method.to_owned(),
        };
        MethodMetrics {
            started: self.started.get_or_create_owned(&labels),
            handling: self.handling.get_or_create_owned(&labels),
            labels,
            handled: Default::default(),
            dry_run_refusals: OnceLock::new(),
        }
    }

    /// Counts a completed call with `code`.
    pub fn handled(&self, method: &MethodMetrics, code: Code, seconds: f64) {
        method.handling.observe(seconds);
        let counter = method.handled[code as usize].get_or_init(|| {
            let MethodLabels {
                grpc_type,
                grpc_service,
                grpc_method,
            } = method.labels.clone();
            self.handled.get_or_create_owned(&HandledLabels {
                grpc_type,
                grpc_service,
                grpc_method,
                grpc_code: code.as_str(),
            })
        });
        counter.inc();
    }

    /// Counts a call that `authorization.dry_run` let through although the rules refuse
    /// it, under the method's own label as bounded by [`Metrics::answered_method`].
    pub fn dry_run_refusal(&self, method: &MethodMetrics) {
        let counter = method.dry_run_refusals.get_or_init(|| {
            let other = self
                .other
                .get()
                .is_some_and(|other| std::ptr::eq(other.as_ref(), method));
            let labels = &method.labels;
            let method = if other {
                "other".to_owned()
            } else {
                format!("/{}/{}", labels.grpc_service, labels.grpc_method)
            };
            self.dry_run_refusals
                .get_or_create_owned(&DryRunLabels { method })
        });
        counter.inc();
    }

    /// The metrics of an outbound call to `destination` at `path`. Destinations come
    /// from the config; methods are bounded like inbound ones: a path longer than
    /// [`MAX_METHOD_CHARS`], or any past [`MAX_METHODS`] (over all destinations), is
    /// counted as `other`.
    pub fn client_method(&self, destination: &str, path: &str) -> Arc<ClientMethodMetrics> {
        if let Some(found) = self
            .client_methods
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(destination)
            .and_then(|paths| paths.get(path))
        {
            return found.clone();
        }
        let mut methods = self
            .client_methods
            .write()
            .unwrap_or_else(|p| p.into_inner());
        let known: usize = methods.values().map(HashMap::len).sum();
        let path = if known >= MAX_METHODS || path.len() > MAX_METHOD_CHARS {
            "other"
        } else {
            path
        };
        let paths = methods.entry(destination.into()).or_default();
        if let Some(found) = paths.get(path) {
            return found.clone();
        }
        let (service, method) = path
            .strip_prefix('/')
            .and_then(|rest| rest.split_once('/'))
            .unwrap_or(("other", "other"));
        let labels = ClientLabels {
            grpc_type: "unknown",
            grpc_service: service.to_owned(),
            grpc_method: method.to_owned(),
            destination: destination.to_owned(),
        };
        let metrics = Arc::new(ClientMethodMetrics {
            started: self.client_started.get_or_create_owned(&labels),
            handling: self.client_handling.get_or_create_owned(&labels),
            labels,
            handled: Default::default(),
        });
        paths.insert(path.into(), metrics.clone());
        metrics
    }

    /// Counts a completed outbound call with `code`.
    pub fn client_handled(&self, method: &ClientMethodMetrics, code: Code, seconds: f64) {
        method.handling.observe(seconds);
        let counter = method.handled[code as usize].get_or_init(|| {
            let ClientLabels {
                grpc_type,
                grpc_service,
                grpc_method,
                destination,
            } = method.labels.clone();
            self.client_handled
                .get_or_create_owned(&ClientHandledLabels {
                    grpc_type,
                    grpc_service,
                    grpc_method,
                    grpc_code: code.as_str(),
                    destination,
                })
        });
        counter.inc();
    }

    pub fn auth(&self, method: &'static str, result: &'static str, reason: &'static str) {
        self.auth
            .get_or_create(&AuthLabels {
                method,
                result,
                reason,
            })
            .inc();
    }

    pub fn tls_handshake_error(&self, reason: &'static str) {
        self.tls_errors
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn upstream_error(&self, kind: &'static str) {
        self.upstream_errors
            .get_or_create(&KindLabels { kind })
            .inc();
    }

    /// Records the validity of the first certificate in `file`: when it expires, and
    /// when it began, so an alert can speak of the share of its lifetime left.
    pub fn cert_validity(&self, file: &std::path::Path, not_before: i64, not_after: i64) {
        let labels = FileLabels {
            file: file.display().to_string(),
        };
        self.cert_not_before.get_or_create(&labels).set(not_before);
        self.cert_expiry.get_or_create(&labels).set(not_after);
    }

    /// Counts a reload: `success` or `failure`.
    pub fn reload(&self, result: &'static str) {
        self.reloads.get_or_create(&ResultLabels { result }).inc();
    }

    /// Counts a connection or call refused by `limit` (the config key's last part).
    pub fn limit_refusal(&self, limit: &'static str) {
        self.limit_refusals
            .get_or_create(&LimitLabels { limit })
            .inc();
    }

    /// The counter of spans dropped for `reason` (`queue_full`, `rate_limited`,
    /// `export_failed`), to be kept by the exporter.
    pub fn spans_dropped(&self, reason: &'static str) -> Counter {
        self.spans_dropped
            .get_or_create_owned(&ReasonLabels { reason })
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        self.render_as(Exposition::OpenMetrics)
    }

    /// The exposition in `format`.
    pub fn render_as(&self, format: Exposition) -> String {
        let mut out = String::with_capacity(8 * 1024);
        match format {
            Exposition::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut out, &self.registry)
            }
            Exposition::PrometheusText => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            }
        }
        .expect("writing to a String cannot fail");
        out
    }
}

/// The two text formats Prometheus scrapes: the same series, written differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exposition {
    /// OpenMetrics 1.0.0 (`# EOF` at the end, counters typed without `_total`), what
    /// Prometheus asks for first.
    OpenMetrics,
    /// The classic Prometheus text format 0.0.4, for every scraper and tool that does
    /// not ask for OpenMetrics (`promtool check metrics` reads only this one).
    PrometheusText,
}

impl Exposition {
    /// The `Content-Type` that names the format.
    pub const fn content_type(self) -> &'static str {
        match self {
            Exposition::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Exposition::PrometheusText => {
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_go_grpc_prometheus_names() {
        let metrics = Metrics::new();
        let method = metrics.answered_method("/pkg.Svc/Get");
        method.started.inc();
        metrics.handled(&method, Code::NotFound, 0.002);
        metrics.auth("jwt", "refused", "token_expired");
        let text = metrics.render();
        for expected in [
            r#"grpc_server_started_total{grpc_type="unknown",grpc_service="pkg.Svc",grpc_method="Get"} 1"#,
            r#"grpc_server_handled_total{grpc_type="unknown",grpc_service="pkg.Svc",grpc_method="Get",grpc_code="NotFound"} 1"#,
            r#"grpc_server_handling_seconds_count{grpc_type="unknown",grpc_service="pkg.Svc",grpc_method="Get"} 1"#,
            r#"gatehouse_auth_total{method="jwt",result="refused",reason="token_expired"} 1"#,
        ] {
            assert!(text.contains(expected), "missing {expected} in\n{text}");
        }
    }

    #[test]
    fn dry_run_refusals_are_counted_by_bounded_method() {
        let metrics = Metrics::new();
        let get = metrics.answered_method("/pkg.Svc/Get");
        metrics.dry_run_refusal(&get);
        metrics.dry_run_refusal(&get);
        metrics.dry_run_refusal(&metrics.other_method());
        let text = metrics.render();
        for expected in [
            r#"gatehouse_authz_dry_run_refusals_total{method="/pkg.Svc/Get"} 2"#,
            r#"gatehouse_authz_dry_run_refusals_total{method="other"} 1"#,
        ] {
            assert!(text.contains(expected), "missing {expected} in\n{text}");
        }
    }

    #[test]
    fn schema_methods_carry_their_stream_kind() {
        let metrics = Metrics::new();
        let before = metrics.answered_method("/pkg.Svc/Chat");
        before.started.inc();
        let chat = metrics.schema_method("/pkg.Svc/Chat", "bidi_stream");
        chat.started.inc();
        assert!(Arc::ptr_eq(
            &chat,
            &metrics.schema_method("/pkg.Svc/Chat", "bidi_stream")
        ));
        let text = metrics.render();
        assert!(
            text.contains(r#"grpc_server_started_total{grpc_type="bidi_stream",grpc_service="pkg.Svc",grpc_method="Chat"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn made_up_methods_are_bounded() {
        let metrics = Metrics::new();
        for i in 0..MAX_METHODS * 3 {
            metrics
                .answered_method(&format!("/made.up/M{i}"))
                .started
                .inc();
        }
        let long = format!("/made.up/{}", "x".repeat(MAX_METHOD_CHARS));
        metrics.answered_method(&long).started.inc();
        assert_eq!(metrics.methods.read().unwrap().len(), MAX_METHODS);
        let text = metrics.render();
        let series = text
            .lines()
            .filter(|line| line.starts_with("grpc_server_started_total"))
            .count();
        assert_eq!(
            series,
            MAX_METHODS + 1,
            "own labels up to the cap, then `other`"
        );
    }
}
