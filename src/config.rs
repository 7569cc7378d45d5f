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
mod jwt;
mod limits;
mod listen;
mod method;
mod outbound;
mod peer;
mod problem;
mod telemetry;
mod units;
mod upstream;

use std::path::Path;

use serde::Deserialize;

pub use api_keys::{ApiKey, ApiKeys, ApiKeysFile, validate_api_keys};
pub use auth::Auth;
pub use authorization::{Authorization, DefaultDecision, Rule};
pub use jwt::{AlgorithmError, ClaimNames, Family, Jwt, JwtProvider, MAX_LEEWAY, parse_algorithms};
pub use limits::{Limits, PerIdentity};
pub use listen::{ClientAuth, Listen, Tls};
pub use method::{InvalidMethodPattern, MethodPattern};
pub use outbound::{ClientTls, Credentials, Destination, ListenError, Outbound, OutboundListen};
pub use peer::{PatternError, PeerNames, PeerPattern, identity_pattern};
pub use problem::{ConfigError, Problem, parse_all};
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
        problems
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
}
