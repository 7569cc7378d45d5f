//! `listen` and `tls`: where callers connect and how their certificates are checked.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::{PeerPattern, Problem, enabled, parse_all};

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

impl Tls {
    /// The certificate files a listener with TLS on needs.
    pub(super) fn validate_files(&self, problems: &mut Vec<Problem>) {
        let tls = self;
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
    }

    /// Every `allowed_peers` pattern parses.
    pub(super) fn validate_allowed_peers(&self, problems: &mut Vec<Problem>) {
        parse_all(
            &self.allowed_peers,
            "tls.allowed_peers",
            PeerPattern::parse,
            problems,
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, Target};

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
}
