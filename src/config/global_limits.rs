//! `limits.global`: budgets shared by every replica of a service, kept in Redis.
//!
//! A per-pod limit multiplies with the replica count; a rule here is one budget for the
//! whole service, per tenant, identity or method. The store is Redis (standalone, TLS or
//! Cluster); how gatehouse uses it lives in `crate::limits`. This file holds the section's
//! shape, its defaults and the checks `gatehouse check` runs, so a rule that could never
//! pass (a rate or burst of 0) is refused with its field named.

use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

use super::{Duration, MethodPattern, Problem};

/// `limits.global`: where the shared budgets are kept and the rules that spend them.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalLimits {
    /// One `redis://` or `rediss://` URL, or a list of them: the seeds of a Redis Cluster.
    pub redis: RedisNodes,
    /// The store's password (`AUTH`), read from this file; never written in the URL.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Trust roots for `rediss://`; absent: the Mozilla roots built into gatehouse.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Starts every key gatehouse writes; replicas of one service share it, different
    /// services must not.
    pub key_prefix: String,
    /// The longest a call waits for the store; after it, `on_store_failure` decides.
    #[serde(default = "GlobalLimits::default_timeout")]
    pub timeout: Duration,
    /// What calls get while the store cannot be reached.
    #[serde(default)]
    pub on_store_failure: OnStoreFailure,
    /// Buckets (one per tenant, identity or method a rule counts) this replica keeps
    /// locally at most; past it, the least recently used are dropped.
    #[serde(default = "GlobalLimits::default_max_buckets")]
    pub max_buckets: usize,
    /// Every rule whose methods match a call is applied to it.
    pub rules: Vec<GlobalRule>,
}

/// `limits.global.redis`: one address, or the seeds of a Cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisNodes {
    Standalone(String),
    Cluster(Vec<String>),
}

impl RedisNodes {
    /// Every URL with the field path that names it.
    pub fn urls(&self) -> Vec<(String, &str)> {
        match self {
            RedisNodes::Standalone(url) => vec![("limits.global.redis".to_owned(), url.as_str())],
            RedisNodes::Cluster(seeds) => seeds
                .iter()
                .enumerate()
                .map(|(i, url)| (format!("limits.global.redis[{i}]"), url.as_str()))
                .collect(),
        }
    }
}

impl<'de> Deserialize<'de> for RedisNodes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RedisNodes;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a redis:// URL, or a list of them (Redis Cluster seeds)")
            }
            fn visit_str<E: serde::de::Error>(self, url: &str) -> Result<RedisNodes, E> {
                Ok(RedisNodes::Standalone(url.to_owned()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<RedisNodes, A::Error> {
                let mut seeds = Vec::new();
                while let Some(seed) = seq.next_element::<String>()? {
                    seeds.push(seed);
                }
                Ok(RedisNodes::Cluster(seeds))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// `limits.global.on_store_failure`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStoreFailure {
    /// Each replica enforces the rule's rate divided by the replicas it last saw live.
    #[default]
    Local,
    /// Calls pass as if there were no global rule.
    Allow,
    /// Calls the rules match are refused with UNAVAILABLE.
    Deny,
}

impl OnStoreFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            OnStoreFailure::Local => "local",
            OnStoreFailure::Allow => "allow",
            OnStoreFailure::Deny => "deny",
        }
    }
}

/// `limits.global.rules[].per`: what one budget belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Per {
    /// The verified tenant (the JWT's tenant claim, the API key's `tenant_id`).
    Tenant,
    /// The verified caller: JWT provider and user, API key name, or certificate identity.
    Identity,
    /// The method, whoever calls it.
    Method,
    /// The tenant, separately for each method.
    TenantMethod,
}

impl Per {
    pub fn as_str(self) -> &'static str {
        match self {
            Per::Tenant => "tenant",
            Per::Identity => "identity",
            Per::Method => "method",
            Per::TenantMethod => "tenant_method",
        }
    }
}

/// `limits.global.rules[]`: one budget per tenant, identity or method.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalRule {
    pub per: Per,
    /// Method patterns the rule applies to (`/pkg.Svc/Method`, `/pkg.Svc/*`,
    /// `/pkg.Svc/Prefix*`, `*`); absent: every method.
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    pub calls_per_second: Option<u32>,
    pub calls_per_minute: Option<u32>,
    /// Calls that may start at once after a quiet spell; absent: one period's worth.
    #[serde(default)]
    pub burst: Option<u32>,
    /// Tokens a replica takes from the store at a time; absent: see [`GlobalRule::lease`].
    #[serde(default)]
    pub lease: Option<u32>,
}

/// Rules a call can be checked against, at most.
pub const MAX_RULES: usize = 64;

/// The largest lease gatehouse chooses by itself.
const MAX_DEFAULT_LEASE: u32 = 100;

impl GlobalRule {
    /// Calls per period, and the period: `None` until validated.
    pub fn rate(&self) -> Option<(u32, std::time::Duration)> {
        match (self.calls_per_second, self.calls_per_minute) {
            (Some(calls), None) if calls > 0 => Some((calls, std::time::Duration::from_secs(1))),
            (None, Some(calls)) if calls > 0 => Some((calls, std::time::Duration::from_secs(60))),
            _ => None,
        }
    }

    /// Calls per second, as a fraction for per-minute rules.
    pub fn per_second(&self) -> f64 {
        self.rate().map_or(0.0, |(calls, period)| {
            f64::from(calls) / period.as_secs_f64()
        })
    }

    /// The bucket's size: `burst`, else one period's worth of calls.
    pub fn burst(&self) -> u32 {
        self.burst
            .unwrap_or_else(|| self.rate().map_or(1, |(calls, _)| calls))
    }

    /// Tokens leased at a time: `lease`, else a tenth of a second's worth, at most a
    /// quarter of the burst and [`MAX_DEFAULT_LEASE`], at least 1. Each replica holds at
    /// most this many unspent, so the rule can overshoot by replicas × lease.
    pub fn lease(&self) -> u32 {
        self.lease.unwrap_or_else(|| {
            let tenth = (self.per_second() / 10.0).floor() as u32;
            tenth.min(self.burst() / 4).clamp(1, MAX_DEFAULT_LEASE)
        })
    }

    /// The parsed `methods`; empty means every method. Valid after validation.
    pub fn method_selectors(&self) -> Vec<MethodSelector> {
        self.methods
            .iter()
            .flatten()
            .filter_map(|pattern| MethodSelector::parse(pattern).ok())
            .collect()
    }

    fn validate(&self, field: &str, problems: &mut Vec<Problem>) {
        let never = "0 can never pass: set at least 1, or leave the rule out";
        match (self.calls_per_second, self.calls_per_minute) {
            (Some(_), Some(_)) | (None, None) => problems.push(Problem::new(
                format!("{field}.calls_per_second"),
                "set exactly one of calls_per_second or calls_per_minute",
            )),
            (Some(0), None) => {
                problems.push(Problem::new(format!("{field}.calls_per_second"), never))
            }
            (None, Some(0)) => {
                problems.push(Problem::new(format!("{field}.calls_per_minute"), never))
            }
            _ => {}
        }
        if self.burst == Some(0) {
            problems.push(Problem::new(
                format!("{field}.burst"),
                "0 can never pass: a bucket must hold at least 1 call",
            ));
        }
        match self.lease {
            Some(0) => problems.push(Problem::new(format!("{field}.lease"), "must be at least 1")),
            Some(lease) if self.burst != Some(0) && lease > self.burst() => {
                problems.push(Problem::new(
                    format!("{field}.lease"),
                    format!(
                        "at most burst ({}): a lease is taken from the bucket",
                        self.burst()
                    ),
                ));
            }
            _ => {}
        }
        match &self.methods {
            Some(methods) if methods.is_empty() => problems.push(Problem::new(
                format!("{field}.methods"),
                "name at least one method pattern, or leave methods out for every method",
            )),
            Some(methods) => {
                super::parse_all(
                    methods,
                    &format!("{field}.methods"),
                    MethodSelector::parse,
                    problems,
                );
            }
            None => {}
        }
    }
}

/// Which methods a global rule applies to: a method pattern as elsewhere in the config,
/// or `/pkg.Service/Prefix*`, every method of the service whose name starts with
/// `Prefix` (`/orders.v1.Orders/Export*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MethodSelector {
    Pattern(MethodPattern),
    /// Holds `/pkg.Service/Prefix`.
    Prefix(String),
}

impl MethodSelector {
    pub fn parse(pattern: &str) -> Result<MethodSelector, InvalidSelector> {
        if let Some(prefix) = pattern.strip_suffix('*')
            && crate::grpc::is_method_path(prefix)
        {
            return Ok(MethodSelector::Prefix(prefix.to_owned()));
        }
        MethodPattern::parse(pattern)
            .map(MethodSelector::Pattern)
            .map_err(|_| InvalidSelector(pattern.to_owned()))
    }

    /// Whether the selector matches `path`, a path already in gRPC's grammar.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            MethodSelector::Pattern(pattern) => pattern.matches(path),
            MethodSelector::Prefix(prefix) => {
                path.starts_with(prefix.as_str()) && !path[prefix.len()..].contains('/')
            }
        }
    }
}

/// A global rule's method pattern that names no gRPC method path; the message quotes it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?}: write /pkg.Service/Method, /pkg.Service/Prefix*, /pkg.Service/* or * (names of letters, digits and _)"
)]
pub struct InvalidSelector(String);

impl GlobalLimits {
    fn default_timeout() -> Duration {
        Duration::from_millis(25)
    }

    fn default_max_buckets() -> usize {
        16_384
    }

    /// Every address, the prefix, the timeout and each rule; files are read at load.
    pub(super) fn validate(&self, problems: &mut Vec<Problem>) {
        self.validate_redis(problems);
        let prefix = &self.key_prefix;
        if prefix.is_empty() || prefix.len() > 128 {
            problems.push(Problem::new(
                "limits.global.key_prefix",
                "1 to 128 characters, shared by the replicas of one service (gatehouse:orders)",
            ));
        } else if prefix.contains(['{', '}']) {
            problems.push(Problem::new(
                "limits.global.key_prefix",
                format!("{prefix:?}: braces make a Redis Cluster hash tag, which would put every bucket on one node"),
            ));
        } else if prefix.contains(|c: char| c.is_whitespace() || c.is_control()) {
            problems.push(Problem::new(
                "limits.global.key_prefix",
                format!("{prefix:?}: no whitespace or control characters"),
            ));
        }
        let timeout = self.timeout.get();
        if timeout < std::time::Duration::from_millis(1)
            || timeout > std::time::Duration::from_secs(1)
        {
            problems.push(Problem::new(
                "limits.global.timeout",
                "between 1ms and 1s: calls wait for the store at most this long",
            ));
        }
        if self.max_buckets == 0 {
            problems.push(Problem::new(
                "limits.global.max_buckets",
                "must be at least 1",
            ));
        }
        if self.rules.len() > MAX_RULES {
            problems.push(Problem::new(
                "limits.global.rules",
                format!("at most {MAX_RULES} rules"),
            ));
        }
        if self.rules.is_empty() {
            problems.push(Problem::new(
                "limits.global.rules",
                "name at least one rule, or leave limits.global out",
            ));
        }
        for (i, rule) in self.rules.iter().enumerate() {
            rule.validate(&format!("limits.global.rules[{i}]"), problems);
        }
    }

    fn validate_redis(&self, problems: &mut Vec<Problem>) {
        if self.redis == RedisNodes::Cluster(Vec::new()) {
            problems.push(Problem::new(
                "limits.global.redis",
                "name the store: one URL, or a list of Cluster seeds",
            ));
        }
        let cluster = matches!(self.redis, RedisNodes::Cluster(_));
        for (field, url) in self.redis.urls() {
            if let Err(message) = check_url(url, cluster) {
                problems.push(Problem::new(field, format!("{url:?}: {message}")));
            }
        }
        let tls = |(_, url): &(String, &str)| url.starts_with("rediss://");
        let urls = self.redis.urls();
        if urls.iter().any(tls) && !urls.iter().all(tls) {
            problems.push(Problem::new(
                "limits.global.redis",
                "the seeds of one Cluster are all redis:// or all rediss://",
            ));
        }
    }
}

/// What is wrong with a store URL, if anything.
fn check_url(url: &str, cluster: bool) -> Result<(), &'static str> {
    let Some(rest) = url
        .strip_prefix("redis://")
        .or_else(|| url.strip_prefix("rediss://"))
    else {
        return Err("write redis://host:6379/0, or rediss:// for TLS");
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = match authority.rsplit_once('@') {
        Some((user, _)) if user.contains(':') => {
            return Err("a password in the URL: put it in password_file instead");
        }
        Some((_, host)) => host,
        None => authority,
    };
    let host = match host.rsplit_once(':') {
        _ if host.ends_with(']') => host,
        Some((host, port)) if port.parse::<u16>().is_ok_and(|port| port > 0) => host,
        Some(_) => "",
        None => host,
    };
    if host.is_empty() || host.contains(['?', '#']) || path.contains(['?', '#']) {
        return Err("expected redis://[user@]host[:port][/db]");
    }
    match path {
        "" | "0" => Ok(()),
        _ if cluster => Err("a Cluster has only database 0"),
        db if db.parse::<u16>().is_ok() => Ok(()),
        _ => Err("the path is the database number: /0"),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, MINIMAL};

    fn problems(global: &str) -> Vec<String> {
        let config = Config::from_yaml(&format!("{MINIMAL}limits:\n  global:\n{global}"))
            .unwrap_or_else(|p| panic!("{p}"));
        config
            .validate()
            .into_iter()
            .filter(|p| p.field.starts_with("limits.global"))
            .map(|p| p.to_string())
            .collect()
    }

    /// The worked example of docs/global-limits.md: DESIGN §12's section, with the JWT
    /// provider whose tenant claim it counts.
    fn documented_example() -> &'static str {
        let doc = include_str!("../../docs/global-limits.md");
        let start = doc.find("```yaml\nauth:").expect("the worked example") + "```yaml\n".len();
        let end = start + doc[start..].find("```").expect("its end");
        &doc[start..end]
    }

    #[test]
    fn the_documented_example_parses_and_validates() {
        let config = Config::from_yaml(&format!("{MINIMAL}{}", documented_example()))
            .unwrap_or_else(|p| panic!("{p}"));
        assert_eq!(config.validate(), vec![]);
        let global = config.limits.global.expect("limits.global");
        assert_eq!(global.timeout.get(), std::time::Duration::from_millis(25));
        assert_eq!(global.on_store_failure, super::OnStoreFailure::Local);
        let [tenant, export] = &global.rules[..] else {
            panic!("two rules")
        };
        assert_eq!((tenant.burst(), tenant.lease()), (1000, 50));
        assert_eq!((export.burst(), export.lease()), (60, 1));
        let selectors = export.method_selectors();
        assert!(selectors[0].matches("/orders.v1.Orders/ExportCsv"));
        assert!(!selectors[0].matches("/orders.v1.Orders/Get"));
        assert!(!selectors[0].matches("/orders.v1.OrdersExtra/Export"));
    }

    #[test]
    fn a_list_of_seeds_is_a_cluster() {
        let text = "    redis: [\"redis://10.0.0.1:6379\", \"redis://10.0.0.2:6379\"]
    key_prefix: gatehouse:orders
    rules: [{ per: method, calls_per_second: 10 }]
";
        assert_eq!(problems(text), Vec::<String>::new());
    }

    #[test]
    fn refuses_rules_that_can_never_pass_naming_the_field() {
        let text =
            "    redis: [\"redis://a:1/3\", \"rediss://b\", \"http://c\", \"redis://u:secret@d\"]
    key_prefix: \"{orders}\"
    timeout: 0s
    rules:
      - { per: tenant, calls_per_second: 0 }
      - { per: tenant, calls_per_minute: 10, burst: 0 }
      - { per: identity, calls_per_second: 1, calls_per_minute: 1 }
      - { per: method, methods: [], calls_per_second: 5, lease: 9 }
      - { per: tenant_method, methods: [\"/pkg.Svc/Get*x\"], calls_per_second: 5, lease: 0 }
";
        assert_eq!(
            problems(text),
            [
                r#"limits.global.redis[0]: "redis://a:1/3": a Cluster has only database 0"#,
                r#"limits.global.redis[2]: "http://c": write redis://host:6379/0, or rediss:// for TLS"#,
                r#"limits.global.redis[3]: "redis://u:secret@d": a password in the URL: put it in password_file instead"#,
                "limits.global.redis: the seeds of one Cluster are all redis:// or all rediss://",
                r#"limits.global.key_prefix: "{orders}": braces make a Redis Cluster hash tag, which would put every bucket on one node"#,
                "limits.global.timeout: between 1ms and 1s: calls wait for the store at most this long",
                "limits.global.rules[0].calls_per_second: 0 can never pass: set at least 1, or leave the rule out",
                "limits.global.rules[1].burst: 0 can never pass: a bucket must hold at least 1 call",
                "limits.global.rules[2].calls_per_second: set exactly one of calls_per_second or calls_per_minute",
                "limits.global.rules[3].lease: at most burst (5): a lease is taken from the bucket",
                "limits.global.rules[3].methods: name at least one method pattern, or leave methods out for every method",
                "limits.global.rules[4].lease: must be at least 1",
                r#"limits.global.rules[4].methods[0]: "/pkg.Svc/Get*x": write /pkg.Service/Method, /pkg.Service/Prefix*, /pkg.Service/* or * (names of letters, digits and _)"#,
            ]
        );
    }

    #[test]
    fn unknown_keys_are_refused_with_their_path() {
        let text = format!(
            "{MINIMAL}limits:\n  global:\n    redis: redis://a\n    key_prefix: p\n    rules: [{{ per: tenant, calls_per_second: 1, brust: 2 }}]\n"
        );
        let problem = Config::from_yaml(&text).unwrap_err();
        assert_eq!(problem.field, "limits.global.rules[0].brust", "{problem}");
        let text = format!(
            "{MINIMAL}limits:\n  global:\n    redis: redis://a\n    key_prefix: p\n    rules: [{{ per: tenants, calls_per_second: 1 }}]\n"
        );
        let problem = Config::from_yaml(&text).unwrap_err();
        assert_eq!(problem.field, "limits.global.rules[0].per", "{problem}");
    }

    #[test]
    fn default_lease_is_a_tenth_of_a_second_within_a_quarter_of_the_burst() {
        let rule = |yaml: &str| -> super::GlobalRule { serde_saphyr::from_str(yaml).unwrap() };
        assert_eq!(rule("{ per: tenant, calls_per_second: 50 }").lease(), 5);
        assert_eq!(
            rule("{ per: tenant, calls_per_second: 50, burst: 8 }").lease(),
            2
        );
        assert_eq!(
            rule("{ per: tenant, calls_per_second: 100000 }").lease(),
            100
        );
        assert_eq!(rule("{ per: tenant, calls_per_minute: 600 }").lease(), 1);
        assert_eq!(
            rule("{ per: tenant, calls_per_second: 50, lease: 7 }").lease(),
            7
        );
    }
}
