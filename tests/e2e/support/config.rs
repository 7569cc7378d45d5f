//! The config file gatehouse is started with: built from typed values, so a test names
//! the settings it changes instead of rewriting YAML text that may have moved.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::{dev_cert, gatehouse, stderr};

/// gatehouse with the development certificates in front of an upstream: each field is
/// one setting, and [`DevConfig::yaml`] writes the file. The defaults are what most tests
/// run with: mTLS required, debug logs, a 10 s drain timeout, no admin server.
#[derive(Clone, Debug)]
pub struct DevConfig {
    /// `listen.address`.
    pub listen: String,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub ca_file: PathBuf,
    /// `tls.client_auth`, written as given (a test may give an invalid value).
    pub client_auth: String,
    /// `tls.allowed_peers`, each pattern quoted; the key is left out when empty.
    pub allowed_peers: Vec<String>,
    /// Further `tls` keys, `(key, value)`, written as given.
    pub tls_extra: Vec<(String, String)>,
    /// `upstream.address`, written as given.
    pub upstream: String,
    pub log_level: String,
    /// `telemetry.admin_address: 127.0.0.1:0` when set.
    pub admin: bool,
    /// `telemetry.otlp_endpoint` (and `service_name: gatehouse-test`) when set.
    pub otlp_endpoint: Option<String>,
    /// The `limits` section, `(key, value)` in order; left out when empty.
    pub limits: Vec<(String, String)>,
}

impl DevConfig {
    pub fn new(upstream: SocketAddr) -> DevConfig {
        DevConfig {
            listen: "127.0.0.1:0".to_owned(),
            cert_file: dev_cert("server.crt"),
            key_file: dev_cert("server.key"),
            ca_file: dev_cert("ca.crt"),
            client_auth: "require".to_owned(),
            allowed_peers: Vec::new(),
            tls_extra: Vec::new(),
            upstream: upstream.to_string(),
            log_level: "info,gatehouse=debug".to_owned(),
            admin: false,
            otlp_endpoint: None,
            limits: vec![("drain_timeout".to_owned(), "10s".to_owned())],
        }
    }

    /// The admin server on an ephemeral port (read it back with [`super::admin`]).
    pub fn admin(mut self) -> DevConfig {
        self.admin = true;
        self
    }

    pub fn client_auth(mut self, mode: &str) -> DevConfig {
        self.client_auth = mode.to_owned();
        self
    }

    pub fn allowed_peers(mut self, patterns: &[&str]) -> DevConfig {
        self.allowed_peers = patterns.iter().map(|p| (*p).to_owned()).collect();
        self
    }

    /// Sets one `limits` key, replacing its value when the section already has it.
    pub fn limit(mut self, key: &str, value: &str) -> DevConfig {
        match self.limits.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value.to_owned(),
            None => self.limits.push((key.to_owned(), value.to_owned())),
        }
        self
    }

    /// Replaces the whole `limits` section (the default drain timeout included).
    pub fn only_limits(mut self, limits: &[(&str, &str)]) -> DevConfig {
        self.limits = limits
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self
    }

    /// The certificate, key and CA files `tls.*_file` name.
    pub fn tls_files(mut self, cert: &Path, key: &Path, ca: &Path) -> DevConfig {
        self.cert_file = cert.to_owned();
        self.key_file = key.to_owned();
        self.ca_file = ca.to_owned();
        self
    }

    pub fn yaml(&self) -> String {
        let mut tls_more = String::new();
        if !self.allowed_peers.is_empty() {
            let quoted: Vec<String> = self.allowed_peers.iter().map(|p| quote(p)).collect();
            tls_more += &format!("  allowed_peers: [{}]\n", quoted.join(", "));
        }
        for (key, value) in &self.tls_extra {
            tls_more += &format!("  {key}: {value}\n");
        }
        let mut telemetry = format!("log_level: {}", single_quoted(&self.log_level));
        if self.admin {
            telemetry += ", admin_address: 127.0.0.1:0";
        }
        if let Some(endpoint) = &self.otlp_endpoint {
            telemetry += &format!(
                ", otlp_endpoint: {}, service_name: gatehouse-test",
                quote(endpoint)
            );
        }
        let limits = if self.limits.is_empty() {
            String::new()
        } else {
            let pairs: Vec<String> = self
                .limits
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            format!("limits: {{ {} }}\n", pairs.join(", "))
        };
        format!(
            "listen: {{ address: {listen} }}
tls:
  cert_file: {cert}
  key_file: {key}
  ca_file: {ca}
  client_auth: {client_auth}
{tls_more}upstream: {{ address: {upstream} }}
telemetry: {{ {telemetry} }}
{limits}",
            listen = self.listen,
            cert = self.cert_file.display(),
            key = self.key_file.display(),
            ca = self.ca_file.display(),
            client_auth = self.client_auth,
            upstream = self.upstream,
        )
    }
}

/// A YAML flow mapping, `{ key: value, … }`, each value written as given.
pub fn flow_map(pairs: &[(&str, &str)]) -> String {
    let pairs: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    format!("{{ {} }}", pairs.join(", "))
}

/// A YAML double-quoted scalar.
fn quote(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// A YAML single-quoted scalar.
fn single_quoted(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The config for gatehouse with the development certificates in front of `upstream`.
pub fn dev_config(upstream: SocketAddr) -> String {
    DevConfig::new(upstream).yaml()
}

/// `dev_config` with the admin server on an ephemeral port.
pub fn config_with_admin(upstream: SocketAddr) -> String {
    DevConfig::new(upstream).admin().yaml()
}

/// Text edits for config files a test did not build itself (the example configs, a file
/// gatehouse rewrote) or that a helper built for it: an edit whose text is not there
/// fails the test, so a changed base can never turn an edit into a silent no-op.
pub trait Edit {
    /// `self` with every `from` replaced by `to`; fails the test when there is no `from`.
    fn edit(&self, from: &str, to: &str) -> String;
}

impl Edit for str {
    #[track_caller]
    fn edit(&self, from: &str, to: &str) -> String {
        assert!(
            self.contains(from),
            "nothing to edit: {from:?} is not in the config:\n{self}"
        );
        self.replace(from, to)
    }
}

/// Runs `gatehouse check` on `config`: exit 64, a line `FILE: problem` for each of
/// `problems`, and no mention of any of `valid`.
pub fn check_refuses(dir: &Path, config: &str, problems: &[&str], valid: &[&str]) {
    let path = dir.join("check.yaml");
    std::fs::write(&path, config).unwrap();
    let output = gatehouse(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(64), "{}", stderr(&output));
    let errors = stderr(&output);
    for problem in problems {
        assert!(
            errors.contains(&format!("{}: {problem}", path.display())),
            "{problem}: {errors}"
        );
    }
    for valid in valid {
        assert!(!errors.contains(valid), "{valid} refused: {errors}");
    }
}
