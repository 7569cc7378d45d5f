//! The typed configuration, read from one YAML file.
//!
//! Parsing is strict and pure: [`Config::from_yaml`] turns text into a [`Config`] or the
//! path of the first field it could not read (unknown keys are errors, durations are
//! strings such as `250ms`), and [`Config::validate`] lists every remaining problem with
//! its field path. Neither touches the file system; files named by the config (certificates,
//! keys) are read and checked by the modules that own them, which report problems in the
//! same [`Problem`] form. Every field is documented in `config/gatehouse.example.yaml`.
//!
//! Each section lives in its own file with its structs, defaults and validation; this one
//! holds the whole file's shape and runs the sections' checks in the order they are listed.
//! Config is data: it names only the crate's vocabulary (`grpc`, `sha256`), so the values
//! it parses (peer and method patterns, the upstream [`Target`], JWT algorithm families)
//! are defined here for the higher layers to use.

mod api_keys;
mod auth;
mod authorization;
mod global_limits;
mod jwt;
mod limits;
mod listen;
mod method;
mod outbound;
mod peer;
mod problem;
mod schema;
mod telemetry;
mod units;
mod upstream;

use std::path::Path;

use serde::Deserialize;

pub use api_keys::{ApiKey, ApiKeys, ApiKeysFile, validate_api_keys};
pub use auth::Auth;
pub use authorization::{
    Authorization, DefaultDecision, FieldValue, MAX_FIELDS, Rule, is_field_path,
};
pub use global_limits::{
    GlobalLimits, GlobalRule, InvalidSelector, MethodSelector, OnStoreFailure, Per, RedisNodes,
};
pub use jwt::{AlgorithmError, ClaimNames, Family, Jwt, JwtProvider, MAX_LEEWAY, parse_algorithms};
pub use limits::{Limits, PerIdentity, PublicCalls, UNKNOWN_MEMORY, Written};
pub use listen::{ClientAuth, Listen, Tls};
pub use method::{InvalidMethodPattern, MethodPattern};
pub use outbound::{ClientTls, Credentials, Destination, ListenError, Outbound, OutboundListen};
pub use peer::{PatternError, PeerNames, PeerPattern, identity_pattern};
pub use problem::{ConfigError, Problem, parse_all};
pub use schema::{Schema, SchemaSource, UnknownMethods};
pub use telemetry::{LogFormat, Telemetry};
pub use units::{ByteSize, Duration, InvalidDuration, InvalidSize, parse_timestamp};
pub use upstream::{Target, Upstream};

use problem::problem_at;

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
    /// Absent: no schema; every call is an opaque POST.
    #[serde(default)]
    pub schema: Schema,
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
            Ok(mut config) => {
                config.limits.written = limits::Written::in_file(text);
                config.limits.held_per_call =
                    config.schema.held_per_call(config.authorization.as_ref());
                Ok(config)
            }
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

    /// Every problem that can be seen without reading other files, section by section in
    /// the order `gatehouse check` lists them.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        self.tls.validate_files(&mut problems);
        self.upstream.validate(&mut problems);
        self.telemetry.validate(&mut problems);
        if let Some(auth) = &self.auth {
            auth.validate(&self.tls, &mut problems);
        }
        if let Some(authorization) = &self.authorization {
            authorization.validate(&mut problems);
        }
        self.tls.validate_allowed_peers(&mut problems);
        if let Some(outbound) = &self.outbound {
            outbound.validate(&self.tls, &mut problems);
        }
        self.limits.validate(&mut problems);
        self.schema
            .validate(self.authorization.as_ref(), &mut problems);
        problems
    }
}

impl Config {
    /// What `check` warns about without refusing: settings that are valid, and useful
    /// on a developer's machine, but leave the app open to whoever reaches the pod.
    pub fn warnings(&self) -> Vec<Problem> {
        let mut warnings = Vec::new();
        let address = self.listen.address;
        if !self.tls.enabled && !address.ip().is_loopback() && self.auth.is_none() {
            warnings.push(Problem::new(
                "tls.enabled",
                format!(
                    "false, listen.address {address} is not a loopback address and there is \
                     no auth section: anyone who reaches the port calls the app unauthenticated"
                ),
            ));
        }
        warnings
    }
}

/// The default of the switches that are on unless turned off.
fn enabled() -> bool {
    true
}

/// The smallest valid configuration, for the sections' tests to extend.
#[cfg(test)]
const MINIMAL: &str = "
listen: { address: 127.0.0.1:12018 }
tls: { cert_file: a.crt, key_file: a.key, ca_file: ca.crt }
upstream: { address: 127.0.0.1:50051 }
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_validates() {
        let text = include_str!("../config/gatehouse.example.yaml");
        let config = Config::from_yaml(text).expect("example config parses");
        assert_eq!(config.validate(), vec![]);
        assert_eq!(config.tls.client_auth, ClientAuth::Require);
    }

    #[test]
    fn the_container_config_is_the_configmaps_and_validates() {
        #[derive(serde::Deserialize)]
        struct ConfigMap {
            data: std::collections::HashMap<String, String>,
        }
        let shipped = include_str!("../deploy/gatehouse.yaml");
        let manifest = include_str!("../deploy/kubernetes/configmap.yaml");
        let config_map: ConfigMap = serde_saphyr::from_str(manifest).expect("a ConfigMap");
        assert_eq!(
            config_map.data["gatehouse.yaml"], shipped,
            "deploy/kubernetes/configmap.yaml carries deploy/gatehouse.yaml as it is"
        );
        let config = Config::from_yaml(shipped).expect("the container config parses");
        assert_eq!(config.validate(), vec![]);
        assert_eq!(config.warnings(), vec![]);
        // Paths in the pod layout of deploy/kubernetes/deployment.yaml.
        let cert = config.tls.cert_file.expect("a certificate");
        assert!(
            cert.starts_with("/etc/gatehouse/certs/"),
            "{}",
            cert.display()
        );

        // The sections shown commented out are valid as they are once uncommented.
        let mut uncommented = String::new();
        let mut inside = false;
        for line in shipped.lines() {
            match line.strip_prefix("# ") {
                Some(rest) if rest == "auth:" || rest == "outbound:" => inside = true,
                _ if line == "#" => inside = false,
                _ => {}
            }
            if inside && let Some(rest) = line.strip_prefix("# ") {
                uncommented += rest;
                uncommented += "\n";
            }
        }
        assert!(uncommented.contains("keys_file"), "{uncommented}");
        assert!(uncommented.contains("audit-service"), "{uncommented}");
        let config = Config::from_yaml(&format!("{shipped}{uncommented}")).expect("parses");
        assert_eq!(config.validate(), vec![]);
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
    fn warns_about_an_open_plaintext_listener_off_loopback_only() {
        let open = "
listen: { address: 0.0.0.0:12018 }
tls: { enabled: false }
upstream: { address: 127.0.0.1:50051 }
";
        let config = Config::from_yaml(open).unwrap();
        assert_eq!(config.validate(), vec![], "a warning, not a problem");
        let warnings: Vec<String> = config.warnings().iter().map(ToString::to_string).collect();
        assert_eq!(
            warnings,
            [
                "tls.enabled: false, listen.address 0.0.0.0:12018 is not a loopback address and \
              there is no auth section: anyone who reaches the port calls the app unauthenticated"
            ]
        );
        for safe in [
            open.replace("0.0.0.0", "127.0.0.1"),
            open.replace("0.0.0.0:12018", "\"[::1]:12018\""),
            format!("{open}auth: {{ api_keys: {{ keys: [] }} }}\n"),
            MINIMAL.replace("127.0.0.1:12018", "0.0.0.0:12018"),
        ] {
            let config = Config::from_yaml(&safe).unwrap();
            assert_eq!(config.warnings(), vec![], "{safe}");
        }
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

    // The next three pin what `gatehouse check` prints for each section: every message
    // and the order the sections are checked in.
    #[test]
    fn reports_core_section_problems_in_order_with_their_messages() {
        let text = r#"
listen: { address: 127.0.0.1:12018 }
upstream: { address: localhost, connect_timeout: 0s }
telemetry: { log_level: loud, sample_ratio: 2, otlp_endpoint: grpc://x }
limits: { max_connections: 0, max_header_list_size: 10, max_connections_per_client: 0, upstream_connections: 0, max_concurrent_streams: 0, keepalive_interval: 0s, idle_timeout: 0s, per_identity: { max_concurrent_calls: 0 } }
"#;
        let problems: Vec<String> = Config::from_yaml(text)
            .unwrap()
            .validate()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            problems,
            [
                "tls.cert_file: required when tls.enabled is true",
                "tls.key_file: required when tls.enabled is true",
                "tls.ca_file: required to verify client certificates (or set tls.client_auth: none)",
                r#"upstream.address: "localhost": expected host:port (127.0.0.1:50051) or unix:/path"#,
                "upstream.connect_timeout: must be longer than 0s",
                r#"telemetry.log_level: "loud" is not a level: use off, error, warn, info, debug or trace, optionally per module (info,gatehouse::upstream=debug)"#,
                "telemetry.sample_ratio: a share between 0.0 and 1.0",
                r#"telemetry.otlp_endpoint: "grpc://x": write http://host:4317, or https://host:4317 for TLS"#,
                "limits.max_connections_per_client: must be at least 1",
                "limits.per_identity.max_concurrent_calls: must be at least 1",
                "limits.max_connections: must be at least 1",
                "limits.max_concurrent_streams: must be at least 1",
                "limits.upstream_connections: must be at least 1",
                "limits.max_header_list_size: must be at least 1024 bytes",
                "limits.keepalive_interval: must be longer than 0s",
                "limits.idle_timeout: must be longer than 0s",
            ]
        );
    }

    #[test]
    fn reports_auth_and_authorization_problems_in_order_with_their_messages() {
        let text = r#"
listen: { address: 127.0.0.1:12018 }
tls: { cert_file: certs-dev/server.crt, key_file: certs-dev/server.key, ca_file: certs-dev/ca.crt, client_auth: none, allowed_peers: [gateway, 'dns:a..b', 'spiffe://td/**'] }
upstream: { address: unix:rel.sock }
auth:
  public_methods: ['/bad', '/pkg.Svc/*', '*', 'x*']
  jwt:
    providers:
      - { name: p, issuer: '', audiences: [], algorithms: [RS256, HS256], jwks_file: /x.json, jwks_url: http://x, leeway: 1h, require_cert_binding: true, claims: { user_id: 'a..b', roles: '' } }
      - { name: p, issuer: i, audiences: [a], algorithms: [none], secret_file: /s }
      - { name: q, issuer: i, audiences: [a], algorithms: [HS256], jwks_file: /x }
      - { name: r, issuer: i, audiences: [a], algorithms: [RS256], secret_file: /x }
      - { name: s, issuer: i, audiences: [a], algorithms: [XX256], secret_file: /x }
      - { name: t, issuer: i, audiences: [a], algorithms: [], secret_file: /x }
  api_keys:
    header: X-Key
    keys:
      - { name: k, sha256: abc, tenant_id: ' ', roles: ['a,b', ''], not_after: 2027-02-31 }
      - { name: k, sha256: 'sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', not_after: '2027-01-31T25:00:00Z' }
authorization:
  default: deny
  rules:
    - { methods: [], allow_peers: ['cn:'] }
    - { methods: ['/a/b/c', '/pkg.S/M'], allow_roles: [x] }
"#;
        let problems: Vec<String> = Config::from_yaml(text)
            .unwrap()
            .validate()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            problems,
            [
                r#"upstream.address: "unix:rel.sock": a unix socket needs an absolute path, like unix:/run/app.sock"#,
                r#"auth.public_methods[0]: "/bad": write /pkg.Service/Method, /pkg.Service/* or * (names of letters, digits and _; no other wildcards)"#,
                r#"auth.public_methods[3]: "x*": write /pkg.Service/Method, /pkg.Service/* or * (names of letters, digits and _; no other wildcards)"#,
                "auth.jwt.providers[0].issuer: required",
                "auth.jwt.providers[0].audiences: name at least one audience",
                "auth.jwt.providers[0].leeway: at most 5m: clock skew beyond that is a broken clock, and a larger leeway keeps expired tokens working",
                r#"auth.jwt.providers[0].algorithms: ["RS256", "HS256"] mixes algorithm families: one family per provider"#,
                "auth.jwt.providers[0].jwks_file: set exactly one of jwks_file, jwks_url or secret_file",
                r#"auth.jwt.providers[0].jwks_url: "http://x": must be an https:// address"#,
                "auth.jwt.providers[0].claims.user_id: a claim name or dotted path",
                "auth.jwt.providers[0].claims.roles: a claim name or dotted path",
                r#"auth.jwt.providers[1].name: "p" is used by another provider"#,
                r#"auth.jwt.providers[1].algorithms: "none" is never accepted"#,
                "auth.jwt.providers[2].secret_file: HS* algorithms need secret_file",
                "auth.jwt.providers[3].secret_file: only HS* algorithms use a shared secret",
                r#"auth.jwt.providers[4].algorithms: "XX256" is not a JWT algorithm (RS256, PS256, ES256, EdDSA, HS256…)"#,
                "auth.jwt.providers[5].algorithms: name at least one algorithm",
                r#"auth.api_keys.header: "X-Key" is not a lowercase header name"#,
                "auth.api_keys.keys[0].sha256: 64 hex characters, as printed by `gatehouse hash-key`",
                "auth.api_keys.keys[0].tenant_id: empty: leave it out instead",
                r#"auth.api_keys.keys[0].roles[0]: "a,b": a role is one non-empty name without ',' or whitespace"#,
                r#"auth.api_keys.keys[0].roles[1]: "": a role is one non-empty name without ',' or whitespace"#,
                r#"auth.api_keys.keys[0].not_after: "2027-02-31": write 2027-01-31 or 2027-01-31T12:00:00Z"#,
                "auth.api_keys.keys[1].name: required, and unique",
                r#"auth.api_keys.keys[1].not_after: "2027-01-31T25:00:00Z": write 2027-01-31 or 2027-01-31T12:00:00Z"#,
                "auth.jwt.providers[0].require_cert_binding: needs client certificates: tls.enabled true and tls.client_auth require or optional",
                "authorization.rules[0].methods: name at least one method pattern",
                r#"authorization.rules[0].allow_peers[0]: "cn:": cn: takes the subject common name"#,
                r#"authorization.rules[1].methods[0]: "/a/b/c": write /pkg.Service/Method, /pkg.Service/* or * (names of letters, digits and _; no other wildcards)"#,
                r#"tls.allowed_peers[0]: "gateway": write a URI (spiffe://trust.domain/ns/NS/sa/SA), dns:NAME or cn:NAME"#,
                r#"tls.allowed_peers[1]: "dns:a..b": dns: takes a DNS name (letters, digits, -, _, * per label)"#,
                r#"tls.allowed_peers[2]: "spiffe://td/**": write one * per segment"#,
            ]
        );
    }

    #[test]
    fn reports_outbound_problems_in_order_with_their_messages() {
        let text = r#"
listen: { address: 127.0.0.1:12018 }
tls: { enabled: false }
upstream: { address: '127.0.0.1:50051' }
outbound:
  listen: 0.0.0.0:1
  context_max_handles: 0
  destinations:
    - { name: a, address: a.svc:1, credentials: none }
    - { name: A, address: 10.0.0.1:1, identity: ['cn:a'], credentials: relay, timeout: 0s }
    - { name: b, address: b.svc, identity: ['dns:b.svc', 'x'], credentials: context }
    - { name: 'b c', address: 'unix:1', server_name: '1.2.3.4', identity: ['spiffe://x/y'], credentials: { api_key_file: /k } }
    - { name: d, address: 'd:1', server_name: 'bad name!', identity: ['spiffe://x/y'], credentials: relay, audience: '' }
"#;
        let problems: Vec<String> = Config::from_yaml(text)
            .unwrap()
            .validate()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            problems,
            [
                "outbound.listen: 0.0.0.0:1 is not a loopback address: the outbound port is plaintext and calls out with the pod's identity, so only 127.0.0.0/8, ::1 or unix:/path are allowed",
                "outbound.client_tls.cert_file: required (set it here or as tls.cert_file)",
                "outbound.client_tls.key_file: required (set it here or as tls.key_file)",
                "outbound.client_tls.ca_file: required (set it here or as tls.ca_file)",
                "outbound.context_max_handles: must be at least 1 (leave it out for max_connections × max_concurrent_streams)",
                "outbound.destinations[0].identity: required: the URI SANs (spiffe://…) or dns:NAMEs the destination's certificate must carry",
                r#"outbound.destinations[1].name: "A" is used by another destination"#,
                r#"outbound.destinations[1].address: "10.0.0.1" is an IP address: set server_name to the DNS name the destination's certificate is issued for"#,
                r#"outbound.destinations[1].identity[0]: "cn:a": cn: cannot name a destination; write its URI SAN (spiffe://…) or dns:NAME"#,
                "outbound.destinations[1].audience: required with credentials: relay or context (the token's aud must contain it)",
                "outbound.destinations[1].timeout: must be longer than 0s",
                r#"outbound.destinations[2].address: "b.svc": expected host:port, like identity-service.prod.svc:12018"#,
                r#"outbound.destinations[2].identity[1]: "x": write a URI (spiffe://trust.domain/ns/NS/sa/SA), dns:NAME or cn:NAME"#,
                "outbound.destinations[2].audience: required with credentials: relay or context (the token's aud must contain it)",
                r#"outbound.destinations[3].name: "b c": a host name (letters, digits, -, ., _), as the app sets it in :authority"#,
                r#"outbound.destinations[3].address: "unix:1": expected host:port, like identity-service.prod.svc:12018"#,
                r#"outbound.destinations[3].server_name: "1.2.3.4" is an IP address: set server_name to the DNS name the destination's certificate is issued for"#,
                r#"outbound.destinations[4].server_name: "bad name!" is not a valid DNS name"#,
                "outbound.destinations[4].audience: required with credentials: relay or context (the token's aud must contain it)",
            ]
        );
    }
}
