//! The typed configuration, read from one YAML file.
//!
//! Parsing is strict and pure: [`Config::from_yaml`] turns text into a [`Config`] or the
//! path of the first field it could not read (unknown keys are errors, durations are
//! strings such as `250ms`), and [`Config::validate`] lists every remaining problem with
//! its field path. Neither touches the file system; files named by the config (certificates,
//! keys) are read and checked by the modules that own them, which report problems in the
//! same [`Problem`] form. Every field is documented in `config/gatehouse.example.yaml`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

use crate::auth::policy::{MethodPattern, parse_all};
use crate::upstream::Target;

mod peer;

pub use peer::{PeerNames, PeerPattern, identity_pattern};

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listen: Listen,
    #[serde(default)]
    pub tls: Tls,
    pub upstream: Upstream,
    #[serde(default)]
    pub telemetry: Telemetry,
    #[serde(default)]
    pub limits: Limits,
    /// Absent: the client certificate is the only credential (`x-auth-method: mtls`).
    #[serde(default)]
    pub auth: Option<Auth>,
    /// Absent: any authenticated caller may call any method.
    #[serde(default)]
    pub authorization: Option<Authorization>,
    /// Absent: gatehouse guards calls into the pod only.
    #[serde(default)]
    pub outbound: Option<Outbound>,
}

/// `auth`: who may call, proven by a JWT or an API key.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    /// Methods callable without credentials: exact paths or `/pkg.Service/*`.
    #[serde(default = "Auth::default_public_methods")]
    pub public_methods: Vec<String>,
    #[serde(default)]
    pub jwt: Option<Jwt>,
    #[serde(default)]
    pub api_keys: Option<ApiKeys>,
    /// Ends an open call with UNAUTHENTICATED when its token expires (plus leeway), or
    /// its API key is revoked or expires, while the call is still open.
    #[serde(default = "Auth::default_expire_open_calls")]
    pub expire_open_calls: bool,
}

impl Auth {
    fn default_expire_open_calls() -> bool {
        true
    }

    fn default_public_methods() -> Vec<String> {
        vec![
            "/grpc.health.v1.Health/Check".to_owned(),
            "/grpc.health.v1.Health/Watch".to_owned(),
        ]
    }
}

/// `auth.jwt`: bearer tokens, checked against one or more issuers.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Jwt {
    pub providers: Vec<JwtProvider>,
    /// Verified tokens remembered until they expire; 0 turns the cache off.
    #[serde(default = "Jwt::default_cache_size")]
    pub cache_size: usize,
}

impl Jwt {
    fn default_cache_size() -> usize {
        10_000
    }
}

/// `auth.jwt.providers[]`: one token issuer.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtProvider {
    pub name: String,
    /// The exact `iss` claim.
    pub issuer: String,
    /// Accepted `aud` values; the token must name at least one.
    pub audiences: Vec<String>,
    /// One family: RS256/384/512, PS256/384/512, ES256/384, EdDSA, or HS256/384/512.
    pub algorithms: Vec<String>,
    pub jwks_file: Option<PathBuf>,
    /// HTTPS address of the issuer's key set, fetched in the background.
    pub jwks_url: Option<String>,
    /// Extra trust roots (PEM) for `jwks_url`, added to the public web roots.
    pub jwks_ca_file: Option<PathBuf>,
    #[serde(default = "JwtProvider::default_refresh_interval")]
    pub refresh_interval: Duration,
    /// Least time between two fetches of `jwks_url`, however many unknown key ids arrive.
    #[serde(default = "JwtProvider::default_min_refresh_interval")]
    pub min_refresh_interval: Duration,
    /// The shared secret for HS* algorithms.
    pub secret_file: Option<PathBuf>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(default = "JwtProvider::default_leeway")]
    pub leeway: Duration,
    #[serde(default)]
    pub claims: ClaimNames,
    /// A token without the tenant claim is refused unless this is true.
    #[serde(default)]
    pub tenant_optional: bool,
    /// Keep `authorization` on the forwarded request, so the app can pass it on.
    #[serde(default = "enabled")]
    pub forward_token: bool,
    /// Refuse tokens without `cnf.x5t#S256` (RFC 8705). A token that carries it is checked
    /// against the caller's certificate whatever this says.
    #[serde(default)]
    pub require_cert_binding: bool,
}

/// The largest `leeway` a provider may allow on `exp` and `nbf`.
pub const MAX_LEEWAY: std::time::Duration = std::time::Duration::from_secs(5 * 60);

impl JwtProvider {
    fn default_refresh_interval() -> Duration {
        Duration::from_secs(300)
    }
    fn default_min_refresh_interval() -> Duration {
        Duration::from_secs(30)
    }
    fn default_leeway() -> Duration {
        Duration::from_secs(30)
    }
}

/// `claims`: which claims carry the identity; dotted paths reach into objects.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClaimNames {
    pub user_id: String,
    pub tenant_id: String,
    pub roles: String,
}

impl Default for ClaimNames {
    fn default() -> Self {
        ClaimNames {
            user_id: "sub".to_owned(),
            tenant_id: "tenant_id".to_owned(),
            roles: "roles".to_owned(),
        }
    }
}

/// `auth.api_keys`: pre-provisioned keys for callers with no user.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeys {
    #[serde(default = "ApiKeys::default_header")]
    pub header: String,
    #[serde(default)]
    pub keys: Vec<ApiKey>,
    /// A YAML file `keys: [...]` with more entries, re-read when it changes.
    pub keys_file: Option<PathBuf>,
}

impl ApiKeys {
    fn default_header() -> String {
        "x-api-key".to_owned()
    }
}

/// One API key, stored only as the SHA-256 of the key.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    pub name: String,
    /// 64 hex characters, as printed by `gatehouse hash-key`.
    pub sha256: String,
    pub tenant_id: Option<String>,
    pub user_id: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    /// `2027-01-31` or `2027-01-31T12:00:00Z`: the key is refused from then on.
    pub not_after: Option<String>,
}

/// The file named by `auth.api_keys.keys_file`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeysFile {
    pub keys: Vec<ApiKey>,
}

/// `authorization`: which authenticated callers may call which methods.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Authorization {
    /// What a call that no rule matches gets.
    #[serde(default)]
    pub default: DefaultDecision,
    /// Log and count the calls the rules would refuse, and let them through.
    #[serde(default)]
    pub dry_run: bool,
    pub rules: Vec<Rule>,
}

/// `authorization.default`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultDecision {
    /// Any authenticated caller may call a method no rule matches.
    #[default]
    Allow,
    /// A method no rule matches is refused with PERMISSION_DENIED.
    Deny,
}

/// `authorization.rules[]`: the first rule whose `methods` match decides.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub methods: Vec<String>,
    #[serde(default)]
    pub allow_roles: Vec<String>,
    #[serde(default)]
    pub allow_api_keys: Vec<String>,
    #[serde(default)]
    pub allow_peers: Vec<String>,
}

/// `listen`: where callers connect.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    /// Always HTTP/2; TLS unless `tls.enabled` is false.
    pub address: SocketAddr,
}

/// `tls`: the server certificate and how client certificates are checked.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    #[serde(default = "enabled")]
    pub enabled: bool,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Trust roots for client certificates; not needed with `client_auth: none`.
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// Client certificates allowed to call at all: `spiffe://…` (any `scheme://`) patterns
    /// match URI SANs, `dns:NAME` DNS SANs, `cn:NAME` the subject CN; `*` matches within
    /// one segment. Empty: any verified certificate.
    #[serde(default)]
    pub allowed_peers: Vec<String>,
}

fn enabled() -> bool {
    true
}

impl Default for Tls {
    fn default() -> Self {
        Tls {
            enabled: true,
            cert_file: None,
            key_file: None,
            ca_file: None,
            client_auth: ClientAuth::default(),
            allowed_peers: Vec::new(),
        }
    }
}

/// `tls.client_auth`: whether callers must present a certificate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// Every caller presents a certificate signed by `ca_file` (mTLS).
    #[default]
    Require,
    /// A certificate is verified when presented; callers without one are let through.
    Optional,
    /// No certificate is asked for.
    None,
}

impl ClientAuth {
    /// The value as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuth::Require => "require",
            ClientAuth::Optional => "optional",
            ClientAuth::None => "none",
        }
    }
}

/// `upstream`: the app behind gatehouse, spoken to in plaintext HTTP/2.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// `host:port` or `unix:/path/to.sock`.
    pub address: String,
    #[serde(default = "Upstream::default_connect_timeout")]
    pub connect_timeout: Duration,
}

impl Upstream {
    fn default_connect_timeout() -> Duration {
        Duration::from_secs(1)
    }

    /// The parsed address; only meaningful after [`Config::validate`] accepted it.
    pub fn target(&self) -> Target {
        match self.address.strip_prefix("unix:") {
            Some(path) => Target::Unix(PathBuf::from(path)),
            None => Target::Tcp(self.address.clone()),
        }
    }
}

/// `telemetry`: logs, metrics, traces.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Telemetry {
    #[serde(default)]
    pub log_format: LogFormat,
    /// A level (`info`) or per-module levels (`info,gatehouse::upstream=debug`).
    #[serde(default = "Telemetry::default_log_level")]
    pub log_level: String,
    /// Where `/metrics`, `/healthz` and `/readyz` are served; absent: not served.
    pub admin_address: Option<SocketAddr>,
    /// OTLP/gRPC collector for spans; absent: trace context is propagated, nothing is
    /// exported.
    pub otlp_endpoint: Option<String>,
    #[serde(default = "Telemetry::default_service_name")]
    pub service_name: String,
    /// Share of new traces sampled (0.0 to 1.0); a caller's sampled flag is followed.
    #[serde(default = "Telemetry::default_sample_ratio")]
    pub sample_ratio: f64,
}

impl Telemetry {
    fn default_log_level() -> String {
        "info".to_owned()
    }
    fn default_service_name() -> String {
        "gatehouse".to_owned()
    }
    fn default_sample_ratio() -> f64 {
        1.0
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            log_format: LogFormat::default(),
            log_level: Telemetry::default_log_level(),
            admin_address: None,
            otlp_endpoint: None,
            service_name: Telemetry::default_service_name(),
            sample_ratio: Telemetry::default_sample_ratio(),
        }
    }
}

/// `telemetry.log_format`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Logfmt,
    Json,
}

/// `limits`: what one caller may take from the sidecar. The defaults suit a sidecar in
/// front of one app; each is documented in the example config.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Open connections at once; more are closed at accept.
    pub max_connections: usize,
    /// Open connections from one client address, and with one verified client
    /// certificate identity; absent: a quarter of `max_connections` (at least 1).
    pub max_connections_per_client: Option<usize>,
    /// Time a new connection has from accept to the caller's HTTP/2 preface and first
    /// SETTINGS, the TLS handshake included.
    pub handshake_timeout: Duration,
    /// Concurrent streams (calls) per connection, advertised in SETTINGS.
    pub max_concurrent_streams: u32,
    /// Largest header list a caller may send, in bytes, advertised in SETTINGS.
    pub max_header_list_size: u32,
    /// How often an idle connection is pinged to see that the caller is alive.
    pub keepalive_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed.
    pub keepalive_timeout: Duration,
    /// On SIGTERM, how long in-flight calls may take to finish.
    pub drain_timeout: Duration,
    /// On SIGTERM, how long to keep accepting after `/readyz` turned unready, so load
    /// balancers stop sending before gatehouse stops listening.
    pub drain_delay: Duration,
    /// A connection with no call open for this long is closed with GOAWAY.
    pub idle_timeout: Duration,
    /// Connections older than this are closed with GOAWAY (calls in flight finish), so
    /// clients rebalance; absent: no limit.
    pub max_connection_age: Option<Duration>,
    /// HTTP/2 connections to the app at most, so no single caller's stream can hold a
    /// window every call needs.
    pub upstream_connections: usize,
    /// Calls that may wait for a stream when every connection to the app is at the app's
    /// stream limit; more get RESOURCE_EXHAUSTED at once.
    pub upstream_queue: usize,
    /// How long a call may wait for a stream to the app before RESOURCE_EXHAUSTED.
    pub upstream_queue_timeout: Duration,
    /// What one identity may take of the app.
    pub per_identity: PerIdentity,
    /// The memory gatehouse may use, checked against the worst case its limits allow;
    /// absent: the cgroup's `memory.max`, when there is one.
    pub memory_limit: Option<ByteSize>,
}

impl Limits {
    /// `max_connections_per_client`, or its default.
    pub fn connections_per_client(&self) -> usize {
        self.max_connections_per_client
            .unwrap_or(self.max_connections.div_ceil(4))
            .max(1)
    }
}

/// `limits.per_identity`: one caller (SPIFFE ID, user, API key name; for a public
/// method, its connection) cannot take the app's whole stream budget.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PerIdentity {
    /// Calls one identity may have open at once; more are refused with
    /// RESOURCE_EXHAUSTED (CONCURRENCY_LIMIT).
    pub max_concurrent_calls: u32,
    /// Calls one identity may start per second (a token bucket holding one second's
    /// worth); more are refused with RESOURCE_EXHAUSTED (RATE_LIMITED). 0: unlimited.
    pub calls_per_second: u32,
}

impl Default for PerIdentity {
    fn default() -> Self {
        PerIdentity {
            max_concurrent_calls: 256,
            calls_per_second: 0,
        }
    }
}

/// A size in bytes, written as a whole number with a unit: `64MiB`, `512KiB`, `1GiB`
/// (or `MB`, `KB`, `GB` in powers of ten; a bare number is bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let invalid = || {
            format!(
                "invalid size {text:?}: write a whole number and a unit (KiB, MiB, GiB), like \"64MiB\""
            )
        };
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: u64 = number.parse().map_err(|_| invalid())?;
        let scale: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            _ => return Err(invalid()),
        };
        number.checked_mul(scale).map(ByteSize).ok_or_else(invalid)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Bytes(u64),
            Text(String),
        }
        match Written::deserialize(deserializer)? {
            Written::Bytes(bytes) => Ok(ByteSize(bytes)),
            Written::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 4096,
            max_connections_per_client: None,
            handshake_timeout: Duration::from_secs(10),
            max_concurrent_streams: 100,
            max_header_list_size: 16 * 1024,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(30),
            drain_delay: Duration::from_secs(0),
            idle_timeout: Duration::from_secs(3600),
            max_connection_age: None,
            per_identity: PerIdentity::default(),
            memory_limit: None,
            upstream_connections: 4,
            upstream_queue: 256,
            upstream_queue_timeout: Duration::from_secs(2),
        }
    }
}

/// A duration written as a string with a unit: `250ms`, `30s`, `5m`, `1h`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Duration(std::time::Duration);

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Duration(std::time::Duration::from_secs(secs))
    }

    pub fn get(self) -> std::time::Duration {
        self.0
    }
}

impl FromStr for Duration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let invalid = || {
            format!(
                "invalid duration {text:?}: write a whole number and a unit (ms, s, m, h), like \"250ms\""
            )
        };
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(invalid)?;
        let (digits, unit) = text.split_at(split);
        let amount: u64 = digits.parse().map_err(|_| invalid())?;
        let duration = match unit {
            "ms" => std::time::Duration::from_millis(amount),
            "s" => std::time::Duration::from_secs(amount),
            "m" => std::time::Duration::from_secs(amount.checked_mul(60).ok_or_else(invalid)?),
            "h" => std::time::Duration::from_secs(amount.checked_mul(3600).ok_or_else(invalid)?),
            _ => return Err(invalid()),
        };
        Ok(Duration(duration))
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string like \"250ms\", \"30s\" or \"5m\"")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Duration, E> {
                text.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// One thing wrong with a configuration, with the dotted path of the field it is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub message: String,
}

impl Problem {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", render(file, problems))]
    Invalid {
        file: PathBuf,
        problems: Vec<Problem>,
    },
}

fn render(file: &Path, problems: &[Problem]) -> String {
    let lines: Vec<String> = problems
        .iter()
        .map(|p| format!("{}: {p}", file.display()))
        .collect();
    lines.join("\n")
}

impl Config {
    /// Parses YAML text. The error names the field it is about, or `(root)` for the
    /// document itself, and says where in the text it is.
    pub fn from_yaml(text: &str) -> Result<Config, Problem> {
        let mut tracked = None;
        let result = serde_saphyr::with_deserializer_from_str(text, |deserializer| {
            serde_path_to_error::deserialize::<_, Config>(deserializer).map_err(|error| {
                let path = error.path().to_string();
                let inner = error.into_inner();
                tracked = Some((path, inner.to_string()));
                inner
            })
        });
        match result {
            Ok(config) => Ok(config),
            Err(error) => {
                let (path, message) =
                    tracked.unwrap_or_else(|| (".".to_owned(), error.to_string()));
                Err(problem_at(&path, &message))
            }
        }
    }

    /// Reads and parses the file; the error names `path`.
    pub fn read(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_yaml(&text).map_err(|problem| ConfigError::Invalid {
            file: path.to_owned(),
            problems: vec![problem],
        })
    }

    /// Reads and parses the file, then validates it; every problem names `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let config = Config::read(path)?;
        let invalid = |problems| ConfigError::Invalid {
            file: path.to_owned(),
            problems,
        };
        let problems = config.validate();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(invalid(problems))
        }
    }

    /// Every problem that can be seen without reading other files.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let tls = &self.tls;
        if tls.enabled {
            if tls.cert_file.is_none() {
                problems.push(Problem::new(
                    "tls.cert_file",
                    "required when tls.enabled is true",
                ));
            }
            if tls.key_file.is_none() {
                problems.push(Problem::new(
                    "tls.key_file",
                    "required when tls.enabled is true",
                ));
            }
            if tls.ca_file.is_none() && tls.client_auth != ClientAuth::None {
                problems.push(Problem::new(
                    "tls.ca_file",
                    "required to verify client certificates (or set tls.client_auth: none)",
                ));
            }
        }
        if let Err(message) = check_upstream_address(&self.upstream.address) {
            problems.push(Problem::new("upstream.address", message));
        }
        if self.upstream.connect_timeout.get().is_zero() {
            problems.push(Problem::new(
                "upstream.connect_timeout",
                "must be longer than 0s",
            ));
        }
        if let Err(message) = check_log_level(&self.telemetry.log_level) {
            problems.push(Problem::new("telemetry.log_level", message));
        }
        if !(0.0..=1.0).contains(&self.telemetry.sample_ratio) {
            problems.push(Problem::new(
                "telemetry.sample_ratio",
                "a share between 0.0 and 1.0",
            ));
        }
        if let Some(endpoint) = &self.telemetry.otlp_endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            problems.push(Problem::new(
                "telemetry.otlp_endpoint",
                format!("{endpoint:?}: write http://host:4317"),
            ));
        }
        if let Some(auth) = &self.auth {
            validate_auth(auth, &mut problems);
            // A provider that requires bound tokens on a listener that never sees a client
            // certificate would refuse every token it issues.
            let no_client_certs = !tls.enabled || tls.client_auth == ClientAuth::None;
            let providers = auth.jwt.iter().flat_map(|jwt| jwt.providers.iter());
            for (i, provider) in providers.enumerate() {
                if provider.require_cert_binding && no_client_certs {
                    problems.push(Problem::new(
                        format!("auth.jwt.providers[{i}].require_cert_binding"),
                        "needs client certificates: tls.enabled true and tls.client_auth require or optional",
                    ));
                }
            }
        }
        if let Some(authorization) = &self.authorization {
            for (i, rule) in authorization.rules.iter().enumerate() {
                let field = format!("authorization.rules[{i}].methods");
                if rule.methods.is_empty() {
                    problems.push(Problem::new(&field, "name at least one method pattern"));
                }
                parse_all(&rule.methods, &field, MethodPattern::parse, &mut problems);
                parse_all(
                    &rule.allow_peers,
                    &format!("authorization.rules[{i}].allow_peers"),
                    PeerPattern::parse,
                    &mut problems,
                );
            }
        }
        parse_all(
            &self.tls.allowed_peers,
            "tls.allowed_peers",
            PeerPattern::parse,
            &mut problems,
        );
        if let Some(outbound) = &self.outbound {
            validate_outbound(outbound, &self.tls, &mut problems);
        }
        let limits = &self.limits;
        let positive = [
            ("limits.max_connections", limits.max_connections as u64),
            (
                "limits.max_concurrent_streams",
                u64::from(limits.max_concurrent_streams),
            ),
            (
                "limits.upstream_connections",
                limits.upstream_connections as u64,
            ),
        ];
        let optional = [(
            "limits.max_connections_per_client",
            limits.max_connections_per_client.map(|n| n as u64),
        )];
        for (field, value) in optional {
            if value == Some(0) {
                problems.push(Problem::new(field, "must be at least 1"));
            }
        }
        if limits.per_identity.max_concurrent_calls == 0 {
            problems.push(Problem::new(
                "limits.per_identity.max_concurrent_calls",
                "must be at least 1",
            ));
        }
        for (field, value) in positive {
            if value == 0 {
                problems.push(Problem::new(field, "must be at least 1"));
            }
        }
        if limits.max_header_list_size < 1024 {
            problems.push(Problem::new(
                "limits.max_header_list_size",
                "must be at least 1024 bytes",
            ));
        }
        for (field, value) in [
            ("limits.handshake_timeout", limits.handshake_timeout),
            ("limits.keepalive_interval", limits.keepalive_interval),
            ("limits.keepalive_timeout", limits.keepalive_timeout),
            ("limits.idle_timeout", limits.idle_timeout),
            (
                "limits.upstream_queue_timeout",
                limits.upstream_queue_timeout,
            ),
        ] {
            if value.get().is_zero() {
                problems.push(Problem::new(field, "must be longer than 0s"));
            }
        }
        problems
    }
}

/// Turns a serde error into a problem on the right field: for an unknown key, the path
/// of the key itself rather than of the section that holds it.
fn problem_at(path: &str, message: &str) -> Problem {
    let unknown = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(key, _)| key);
    match (unknown, path) {
        (Some(key), "." | "") => Problem::new(key, message),
        (Some(key), section) if !section.ends_with(key) => {
            Problem::new(format!("{section}.{key}"), message)
        }
        (_, "." | "") => Problem::new("(root)", message),
        _ => Problem::new(path, message),
    }
}

fn validate_auth(auth: &Auth, problems: &mut Vec<Problem>) {
    parse_all(
        &auth.public_methods,
        "auth.public_methods",
        MethodPattern::parse,
        problems,
    );
    if auth.jwt.is_none() && auth.api_keys.is_none() {
        problems.push(Problem::new(
            "auth",
            "configure jwt, api_keys or both (or leave auth out for mTLS only)",
        ));
    }
    if let Some(jwt) = &auth.jwt {
        if jwt.providers.is_empty() {
            problems.push(Problem::new(
                "auth.jwt.providers",
                "name at least one provider",
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, provider) in jwt.providers.iter().enumerate() {
            let at = |field: &str| format!("auth.jwt.providers[{i}].{field}");
            if !names.insert(provider.name.as_str()) {
                problems.push(Problem::new(
                    at("name"),
                    format!("{:?} is used by another provider", provider.name),
                ));
            }
            if provider.issuer.is_empty() {
                problems.push(Problem::new(at("issuer"), "required"));
            }
            if provider.audiences.is_empty() {
                problems.push(Problem::new(at("audiences"), "name at least one audience"));
            }
            if provider.leeway.get() > MAX_LEEWAY {
                problems.push(Problem::new(
                    at("leeway"),
                    format!(
                        "at most {}m: clock skew beyond that is a broken clock, and a larger leeway keeps expired tokens working",
                        MAX_LEEWAY.as_secs() / 60
                    ),
                ));
            }
            let family = match crate::auth::jwt::Family::of(&provider.algorithms) {
                Ok(family) => Some(family),
                Err(message) => {
                    problems.push(Problem::new(at("algorithms"), message));
                    None
                }
            };
            let sources = [
                provider.jwks_file.is_some(),
                provider.jwks_url.is_some(),
                provider.secret_file.is_some(),
            ];
            if sources.iter().filter(|set| **set).count() != 1 {
                problems.push(Problem::new(
                    at("jwks_file"),
                    "set exactly one of jwks_file, jwks_url or secret_file",
                ));
            }
            let hmac = family == Some(crate::auth::jwt::Family::Hmac);
            if hmac && provider.secret_file.is_none() {
                problems.push(Problem::new(
                    at("secret_file"),
                    "HS* algorithms need secret_file",
                ));
            }
            if !hmac && family.is_some() && provider.secret_file.is_some() {
                problems.push(Problem::new(
                    at("secret_file"),
                    "only HS* algorithms use a shared secret",
                ));
            }
            if let Some(url) = &provider.jwks_url
                && !url.starts_with("https://")
            {
                problems.push(Problem::new(
                    at("jwks_url"),
                    format!("{url:?}: must be an https:// address"),
                ));
            }
            for (field, path) in [
                ("user_id", &provider.claims.user_id),
                ("tenant_id", &provider.claims.tenant_id),
                ("roles", &provider.claims.roles),
            ] {
                if path.is_empty() || path.split('.').any(str::is_empty) {
                    problems.push(Problem::new(
                        at(&format!("claims.{field}")),
                        "a claim name or dotted path",
                    ));
                }
            }
        }
    }
    if let Some(api_keys) = &auth.api_keys {
        if http::HeaderName::from_bytes(api_keys.header.as_bytes()).is_err()
            || api_keys.header != api_keys.header.to_ascii_lowercase()
        {
            problems.push(Problem::new(
                "auth.api_keys.header",
                format!("{:?} is not a lowercase header name", api_keys.header),
            ));
        }
        if api_keys.keys.is_empty() && api_keys.keys_file.is_none() {
            problems.push(Problem::new("auth.api_keys", "set keys, keys_file or both"));
        }
        problems.extend(validate_api_keys(&api_keys.keys, "auth.api_keys.keys"));
    }
}

/// Problems in a list of API keys, each under `prefix[i]`.
pub fn validate_api_keys(keys: &[ApiKey], prefix: &str) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (i, key) in keys.iter().enumerate() {
        if key.name.is_empty() || !names.insert(key.name.as_str()) {
            problems.push(Problem::new(
                format!("{prefix}[{i}].name"),
                "required, and unique",
            ));
        }
        if crate::sha256::parse_sha256(&key.sha256).is_none() {
            problems.push(Problem::new(
                format!("{prefix}[{i}].sha256"),
                "64 hex characters, as printed by `gatehouse hash-key`",
            ));
        }
        // Values that become identity headers: a role with `,` would read as two roles in
        // `x-user-roles`, and an empty id as no id at all.
        for (field, value) in [("tenant_id", &key.tenant_id), ("user_id", &key.user_id)] {
            if value
                .as_deref()
                .is_some_and(|value| value.trim().is_empty())
            {
                problems.push(Problem::new(
                    format!("{prefix}[{i}].{field}"),
                    "empty: leave it out instead",
                ));
            }
        }
        for (j, role) in key.roles.iter().enumerate() {
            if role.is_empty() || role.contains(|c: char| c == ',' || c.is_whitespace()) {
                problems.push(Problem::new(
                    format!("{prefix}[{i}].roles[{j}]"),
                    format!("{role:?}: a role is one non-empty name without ',' or whitespace"),
                ));
            }
        }
        if let Some(not_after) = &key.not_after
            && parse_timestamp(not_after).is_none()
        {
            problems.push(Problem::new(
                format!("{prefix}[{i}].not_after"),
                format!("{not_after:?}: write 2027-01-31 or 2027-01-31T12:00:00Z"),
            ));
        }
    }
    problems
}

/// Seconds since the Unix epoch for `YYYY-MM-DD` (midnight UTC) or
/// `YYYY-MM-DDTHH:MM:SSZ`.
pub fn parse_timestamp(text: &str) -> Option<u64> {
    let (date, time) = match text.split_once('T') {
        Some((date, time)) => (date, Some(time.strip_suffix('Z')?)),
        None => (text, None),
    };
    let mut parts = date.split('-');
    let year: i64 = parts.next()?.parse().ok()?;
    let month: i64 = parts.next()?.parse().ok()?;
    let day: i64 = parts.next()?.parse().ok()?;
    if parts.next().is_some()
        || !(1..=12).contains(&month)
        || !(1..=days_in_month(year, month)).contains(&day)
        || year < 1970
    {
        return None;
    }
    let seconds = match time {
        None => 0,
        Some(time) => {
            let mut hms = time.split(':').map(|part| part.parse::<i64>().ok());
            let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
            if hms.next().is_some() || h > 23 || m > 59 || s > 60 {
                return None;
            }
            h * 3600 + m * 60 + s
        }
    };
    // Days from civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + seconds).ok()
}

/// Days in `month` (1–12) of `year` in the Gregorian calendar, so that a date such as
/// 31 February is refused instead of silently becoming 3 March.
fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Accepts `LEVEL` and `module::path=LEVEL` directives, comma-separated.
fn check_log_level(directives: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    for directive in directives.split(',').map(str::trim) {
        let level = directive
            .rsplit_once('=')
            .map_or(directive, |(_, level)| level);
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "{directive:?} is not a level: use off, error, warn, info, debug or trace, optionally per module (info,gatehouse::upstream=debug)"
            ));
        }
    }
    Ok(())
}

fn check_upstream_address(address: &str) -> Result<(), String> {
    if let Some(path) = address.strip_prefix("unix:") {
        return if Path::new(path).is_absolute() {
            Ok(())
        } else {
            Err(format!(
                "{address:?}: a unix socket needs an absolute path, like unix:/run/app.sock"
            ))
        };
    }
    let port = address
        .rsplit_once(':')
        .map(|(host, port)| (host, port.parse::<u16>()));
    match port {
        Some((host, Ok(port))) if !host.is_empty() && port != 0 => Ok(()),
        _ => Err(format!(
            "{address:?}: expected host:port (127.0.0.1:50051) or unix:/path"
        )),
    }
}

/// `outbound`: the app's own calls to other services, made through gatehouse. The app
/// dials `listen` in plaintext and names the destination in `:authority`; gatehouse
/// opens mutual TLS to it, checks the server's identity and attaches credentials.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outbound {
    /// `127.0.0.1:15001` (a loopback address) or `unix:/path`; h2c. Anything that can
    /// reach this port calls out with the pod's identity, so it never leaves the pod.
    pub listen: String,
    /// The pod's certificate and the roots destinations must chain to; each file
    /// defaults to its `tls.*` counterpart.
    #[serde(default)]
    pub client_tls: ClientTls,
    pub destinations: Vec<Destination>,
    /// `credentials: context`: how long a call's handle still resolves after the inbound
    /// call it names has ended, for work the app finishes just after answering.
    #[serde(default = "Outbound::default_context_grace")]
    pub context_grace: Duration,
    /// `credentials: context`: the most handles alive at once (open calls and calls in
    /// their grace); default `limits.max_connections` × `limits.max_concurrent_streams`.
    /// When full, new calls get no handle rather than evicting a live one.
    pub context_max_handles: Option<usize>,
}

/// `outbound.client_tls`: any file left out is taken from `tls`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTls {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Roots that destination servers must chain to.
    pub ca_file: Option<PathBuf>,
}

impl ClientTls {
    /// These files with the `tls` defaults filled in.
    pub fn resolved(&self, tls: &Tls) -> ClientTls {
        ClientTls {
            cert_file: self.cert_file.clone().or_else(|| tls.cert_file.clone()),
            key_file: self.key_file.clone().or_else(|| tls.key_file.clone()),
            ca_file: self.ca_file.clone().or_else(|| tls.ca_file.clone()),
        }
    }
}

/// Where an outbound listener listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutboundListen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl Outbound {
    fn default_context_grace() -> Duration {
        Duration::from_secs(5)
    }

    /// Whether any destination takes its credential from the inbound call.
    pub fn uses_context(&self) -> bool {
        self.destinations
            .iter()
            .any(|destination| destination.credentials == Credentials::Context)
    }

    /// The parsed `listen`; `Err` says why it is refused (not loopback, not an address).
    pub fn listen(&self) -> Result<OutboundListen, String> {
        if let Some(path) = self.listen.strip_prefix("unix:") {
            return if Path::new(path).is_absolute() {
                Ok(OutboundListen::Unix(PathBuf::from(path)))
            } else {
                Err(format!(
                    "{:?}: a unix socket needs an absolute path, like unix:/run/gatehouse/outbound.sock",
                    self.listen
                ))
            };
        }
        let address: SocketAddr = self.listen.parse().map_err(|_| {
            format!(
                "{:?}: write a loopback ip:port (127.0.0.1:15001, [::1]:15001) or unix:/path",
                self.listen
            )
        })?;
        if address.ip().is_loopback() {
            Ok(OutboundListen::Tcp(address))
        } else {
            Err(format!(
                "{address} is not a loopback address: the outbound port is plaintext and calls out with the pod's identity, so only 127.0.0.0/8, ::1 or unix:/path are allowed"
            ))
        }
    }
}

/// `outbound.destinations[]`: one service the app may call.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    /// Matched against the host part of the app's `:authority` (port ignored).
    pub name: String,
    /// `host:port`; every address the host resolves to is an endpoint.
    pub address: String,
    /// SNI and the name the certificate chain is verified for; default: the host of
    /// `address`. Never an IP address.
    pub server_name: Option<String>,
    /// The server certificate must carry one of these: a URI SAN (`spiffe://…`) or a
    /// DNS SAN (`dns:NAME`). Required.
    #[serde(default)]
    pub identity: Vec<String>,
    pub credentials: Credentials,
    /// `relay`: the app's token must name this audience, else the call is refused locally.
    pub audience: Option<String>,
    /// The call's deadline when the app sets none; an app's shorter `grpc-timeout` wins.
    #[serde(default = "Destination::default_timeout")]
    pub timeout: Duration,
}

impl Destination {
    fn default_timeout() -> Duration {
        Duration::from_secs(10)
    }

    /// The host of `address` (brackets of an IPv6 literal removed).
    pub fn host(&self) -> &str {
        let host = self
            .address
            .rsplit_once(':')
            .map_or(self.address.as_str(), |(host, _)| host);
        host.strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
    }

    /// The SNI name: `server_name`, else the host of `address`.
    pub fn server_name(&self) -> &str {
        self.server_name.as_deref().unwrap_or_else(|| self.host())
    }
}

/// `outbound.destinations[].credentials`: what proves the call's origin to the destination.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Credentials {
    /// The app's own `authorization: Bearer` token, checked locally first.
    Relay,
    /// The pod's certificate only.
    None,
    /// The verified token of the inbound call being served, found through the handle
    /// gatehouse gave that call (DESIGN §10); checked locally as `relay` is.
    Context,
    /// A service API key read from this file, sent as `x-api-key`.
    ApiKeyFile(PathBuf),
}

fn validate_outbound(outbound: &Outbound, tls: &Tls, problems: &mut Vec<Problem>) {
    if let Err(message) = outbound.listen() {
        problems.push(Problem::new("outbound.listen", message));
    }
    let files = outbound.client_tls.resolved(tls);
    for (field, file) in [
        ("cert_file", &files.cert_file),
        ("key_file", &files.key_file),
        ("ca_file", &files.ca_file),
    ] {
        if file.is_none() {
            problems.push(Problem::new(
                format!("outbound.client_tls.{field}"),
                format!("required (set it here or as tls.{field})"),
            ));
        }
    }
    if outbound.context_max_handles == Some(0) {
        problems.push(Problem::new(
            "outbound.context_max_handles",
            "must be at least 1 (leave it out for max_connections × max_concurrent_streams)",
        ));
    }
    if outbound.destinations.is_empty() {
        problems.push(Problem::new(
            "outbound.destinations",
            "name at least one destination",
        ));
    }
    let mut names = std::collections::HashSet::new();
    for (i, destination) in outbound.destinations.iter().enumerate() {
        let at = |field: &str| format!("outbound.destinations[{i}].{field}");
        let name = &destination.name;
        let valid_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
        if !valid_name {
            problems.push(Problem::new(
                at("name"),
                format!("{name:?}: a host name (letters, digits, -, ., _), as the app sets it in :authority"),
            ));
        } else if !names.insert(name.to_ascii_lowercase()) {
            problems.push(Problem::new(
                at("name"),
                format!("{name:?} is used by another destination"),
            ));
        }
        if let Err(message) = check_destination_address(&destination.address) {
            problems.push(Problem::new(at("address"), message));
        }
        let server_name = destination.server_name();
        if server_name.parse::<std::net::IpAddr>().is_ok() {
            let field = if destination.server_name.is_some() {
                "server_name"
            } else {
                "address"
            };
            problems.push(Problem::new(
                at(field),
                format!("{server_name:?} is an IP address: set server_name to the DNS name the destination's certificate is issued for"),
            ));
        } else if rustls_pki_types::ServerName::try_from(server_name).is_err() {
            problems.push(Problem::new(
                at("server_name"),
                format!("{server_name:?} is not a valid DNS name"),
            ));
        }
        if destination.identity.is_empty() {
            problems.push(Problem::new(
                at("identity"),
                "required: the URI SANs (spiffe://…) or dns:NAMEs the destination's certificate must carry",
            ));
        }
        for (j, pattern) in destination.identity.iter().enumerate() {
            if let Err(message) = identity_pattern(pattern) {
                problems.push(Problem::new(at(&format!("identity[{j}]")), message));
            }
        }
        match &destination.credentials {
            Credentials::Relay | Credentials::Context
                if destination.audience.as_deref().is_none_or(str::is_empty) =>
            {
                problems.push(Problem::new(
                    at("audience"),
                    "required with credentials: relay or context (the token's aud must contain it)",
                ))
            }
            _ => {}
        }
        if destination.timeout.get().is_zero() {
            problems.push(Problem::new(at("timeout"), "must be longer than 0s"));
        }
    }
}

fn check_destination_address(address: &str) -> Result<(), String> {
    let parsed = address
        .rsplit_once(':')
        .map(|(host, port)| (host, port.parse::<u16>()));
    match parsed {
        Some((host, Ok(port))) if !host.is_empty() && port != 0 && !host.starts_with("unix") => {
            Ok(())
        }
        _ => Err(format!(
            "{address:?}: expected host:port, like identity-service.prod.svc:12018"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "
listen: { address: 127.0.0.1:12018 }
tls: { cert_file: a.crt, key_file: a.key, ca_file: ca.crt }
upstream: { address: 127.0.0.1:50051 }
";

    #[test]
    fn example_config_parses_and_validates() {
        let text = include_str!("../config/gatehouse.example.yaml");
        let config = Config::from_yaml(text).expect("example config parses");
        assert_eq!(config.validate(), vec![]);
        assert_eq!(config.tls.client_auth, ClientAuth::Require);
    }

    #[test]
    fn kubernetes_example_config_parses_and_validates() {
        #[derive(serde::Deserialize)]
        struct ConfigMap {
            data: std::collections::HashMap<String, String>,
        }
        let manifest = include_str!("../deploy/kubernetes/configmap.yaml");
        let config_map: ConfigMap = serde_saphyr::from_str(manifest).expect("a ConfigMap");
        let config = Config::from_yaml(&config_map.data["gatehouse.yaml"])
            .expect("the embedded config parses");
        assert_eq!(config.validate(), vec![]);
        let outbound = config
            .outbound
            .expect("the manifest shows the outbound listener");
        assert_eq!(outbound.destinations[0].name, "audit-service");
    }

    #[test]
    fn dev_config_parses_and_validates() {
        let config =
            Config::from_yaml(include_str!("../config/dev.yaml")).expect("dev config parses");
        assert_eq!(config.validate(), vec![]);
    }

    #[test]
    fn defaults_fill_what_is_left_out() {
        let config = Config::from_yaml(MINIMAL).unwrap();
        assert!(config.tls.enabled);
        assert_eq!(
            config.upstream.connect_timeout.get(),
            std::time::Duration::from_secs(1)
        );
        assert_eq!(config.limits.max_concurrent_streams, 100);
        assert_eq!(config.limits.max_header_list_size, 16384);
        assert_eq!(
            config.limits.handshake_timeout.get(),
            std::time::Duration::from_secs(10)
        );
        assert_eq!(config.telemetry.log_format, LogFormat::Logfmt);
    }

    #[test]
    fn rejects_unknown_key_naming_its_full_path() {
        let text = MINIMAL.replace("ca_file: ca.crt", "ca_file: ca.crt, cert_fil: x");
        let problem = Config::from_yaml(&text).unwrap_err();
        assert_eq!(problem.field, "tls.cert_fil");
        assert!(problem.message.contains("unknown field"), "{problem}");

        let problem = Config::from_yaml(&format!("{MINIMAL}listn: {{}}\n")).unwrap_err();
        assert_eq!(problem.field, "listn");
    }

    #[test]
    fn rejects_numeric_and_unitless_durations() {
        for value in ["5", "\"5\"", "\"5 s\"", "\"1.5s\"", "\"10d\""] {
            let text = format!("{MINIMAL}limits: {{ drain_timeout: {value} }}\n");
            let problem = Config::from_yaml(&text).unwrap_err();
            assert_eq!(problem.field, "limits.drain_timeout", "{value}: {problem}");
        }
        let config =
            Config::from_yaml(&format!("{MINIMAL}limits: {{ drain_timeout: 250ms }}\n")).unwrap();
        assert_eq!(
            config.limits.drain_timeout.get(),
            std::time::Duration::from_millis(250)
        );
    }

    #[test]
    fn validate_lists_every_problem_with_its_field() {
        let text = "
listen: { address: 127.0.0.1:12018 }
upstream: { address: localhost, connect_timeout: 0s }
telemetry: { log_level: loud }
limits: { max_connections: 0, max_header_list_size: 10 }
";
        let fields: Vec<String> = Config::from_yaml(text)
            .unwrap()
            .validate()
            .into_iter()
            .map(|p| p.field)
            .collect();
        assert_eq!(
            fields,
            [
                "tls.cert_file",
                "tls.key_file",
                "tls.ca_file",
                "upstream.address",
                "upstream.connect_timeout",
                "telemetry.log_level",
                "limits.max_connections",
                "limits.max_header_list_size",
            ]
        );
    }

    #[test]
    fn timestamps_name_only_dates_that_exist() {
        assert_eq!(parse_timestamp("1970-01-01"), Some(0));
        assert_eq!(parse_timestamp("2024-02-29"), Some(1_709_164_800));
        assert_eq!(parse_timestamp("2000-02-29T12:00:00Z"), Some(951_825_600));
        assert_eq!(parse_timestamp("2027-01-31T23:59:59Z"), Some(1_801_439_999));
        for impossible in [
            "2027-02-31",
            "2027-02-29",
            "1900-02-29",
            "2100-02-29",
            "2027-04-31",
            "2027-06-31T00:00:00Z",
            "2027-09-31",
            "2027-11-31",
            "2027-13-01",
            "2027-00-10",
            "2027-01-00",
        ] {
            assert_eq!(parse_timestamp(impossible), None, "{impossible}");
        }
    }

    #[test]
    fn open_calls_end_with_their_credentials_unless_turned_off() {
        let auth = |extra: &str| {
            Config::from_yaml(&format!("{MINIMAL}auth: {{ public_methods: []{extra} }}\n"))
                .unwrap()
                .auth
                .unwrap()
        };
        assert!(auth("").expire_open_calls);
        assert!(!auth(", expire_open_calls: false").expire_open_calls);
    }

    #[test]
    fn leeway_is_bounded_and_the_problem_names_the_field() {
        let provider = |leeway: &str| {
            format!(
                "{MINIMAL}auth:
  jwt:
    providers:
      - {{ name: p, issuer: https://i.test, audiences: [a], algorithms: [RS256], jwks_file: /x.json, leeway: {leeway} }}
"
            )
        };
        let problems = |leeway: &str| -> Vec<Problem> {
            Config::from_yaml(&provider(leeway))
                .unwrap()
                .validate()
                .into_iter()
                .filter(|p| p.field.ends_with("leeway"))
                .collect()
        };
        assert_eq!(problems("5m"), vec![]);
        assert_eq!(problems("300s"), vec![]);
        let refused = problems("301s");
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert_eq!(refused[0].field, "auth.jwt.providers[0].leeway");
        assert!(refused[0].message.contains("at most 5m"), "{}", refused[0]);
        assert_eq!(problems("1h").len(), 1);
    }

    #[test]
    fn tls_files_are_optional_when_tls_is_off() {
        let text = "
listen: { address: 127.0.0.1:12018 }
tls: { enabled: false }
upstream: { address: unix:/run/app.sock }
";
        let config = Config::from_yaml(text).unwrap();
        assert_eq!(config.validate(), vec![]);
        assert_eq!(
            config.upstream.target(),
            Target::Unix("/run/app.sock".into())
        );
    }

    const OUTBOUND: &str = "
outbound:
  listen: 127.0.0.1:15001
  destinations:
    - name: identity-service
      address: identity-service.prod.svc:12018
      identity: [\"spiffe://td/ns/prod/sa/identity\"]
      credentials: relay
      audience: identity-service
";

    fn outbound_fields(text: &str) -> Vec<String> {
        Config::from_yaml(&format!("{MINIMAL}{text}"))
            .unwrap()
            .validate()
            .into_iter()
            .map(|p| p.field)
            .collect()
    }

    #[test]
    fn outbound_defaults_to_the_server_files_and_the_address_host() {
        let config = Config::from_yaml(&format!("{MINIMAL}{OUTBOUND}")).unwrap();
        assert_eq!(config.validate(), vec![]);
        let outbound = config.outbound.as_ref().unwrap();
        let files = outbound.client_tls.resolved(&config.tls);
        assert_eq!(files.cert_file.as_deref(), Some(Path::new("a.crt")));
        assert_eq!(files.ca_file.as_deref(), Some(Path::new("ca.crt")));
        let destination = &outbound.destinations[0];
        assert_eq!(destination.server_name(), "identity-service.prod.svc");
        assert_eq!(
            destination.timeout.get(),
            std::time::Duration::from_secs(10)
        );
        assert_eq!(
            outbound.listen(),
            Ok(OutboundListen::Tcp("127.0.0.1:15001".parse().unwrap()))
        );
    }

    #[test]
    fn outbound_refuses_a_listener_off_loopback() {
        for listen in [
            "0.0.0.0:15001",
            "10.0.0.1:15001",
            "\"[::]:15001\"",
            "localhost:1",
            "unix:rel.sock",
        ] {
            let text = OUTBOUND.replace("127.0.0.1:15001", listen);
            assert_eq!(outbound_fields(&text), ["outbound.listen"], "{listen}");
        }
        for listen in [
            "127.0.0.2:0",
            "\"[::1]:15001\"",
            "unix:/run/gatehouse/out.sock",
        ] {
            let text = OUTBOUND.replace("127.0.0.1:15001", listen);
            assert!(outbound_fields(&text).is_empty(), "{listen}");
        }
    }

    #[test]
    fn outbound_names_every_bad_destination_field() {
        let text = "
outbound:
  listen: 127.0.0.1:15001
  destinations:
    - { name: a, address: a.svc:1, credentials: none }
    - { name: A, address: 10.0.0.1:1, identity: [\"cn:a\"], credentials: relay, timeout: 0s }
    - { name: b, address: b.svc, identity: [\"dns:b.svc\"], credentials: context }
";
        assert_eq!(
            outbound_fields(text),
            [
                "outbound.destinations[0].identity",
                "outbound.destinations[1].name",
                "outbound.destinations[1].address",
                "outbound.destinations[1].identity[0]",
                "outbound.destinations[1].audience",
                "outbound.destinations[1].timeout",
                "outbound.destinations[2].address",
                "outbound.destinations[2].audience",
            ]
        );
    }

    #[test]
    fn outbound_reads_api_key_file_credentials() {
        let text = OUTBOUND.replace(
            "credentials: relay",
            "credentials: { api_key_file: /secrets/key }",
        );
        let config = Config::from_yaml(&format!("{MINIMAL}{text}")).unwrap();
        assert_eq!(
            config.outbound.unwrap().destinations[0].credentials,
            Credentials::ApiKeyFile("/secrets/key".into())
        );
    }
}
