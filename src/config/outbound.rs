//! `outbound`: the app's own calls to other services, made through gatehouse.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Duration, Problem, Tls, identity_pattern};

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
    /// their grace); default the most inbound calls that can be open
    /// (`limits.max_connections` × `limits.max_concurrent_streams`), at most 65,536.
    /// When full, the oldest ended calls make room; a table full of open calls gives new
    /// calls no handle rather than evicting a live one.
    pub context_max_handles: Option<usize>,
    /// `credentials: context`: bytes of bearer tokens the table keeps at most (tokens
    /// are kept trimmed, at most 8 KiB each); default 16 MiB.
    pub context_max_bytes: Option<crate::config::ByteSize>,
    /// `credentials: context`: handles one identity holds at most, calls in their grace
    /// included; past it its own oldest ended calls make room. Default twice
    /// `limits.per_identity.max_concurrent_calls`.
    pub context_max_handles_per_identity: Option<usize>,
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

    /// How much the call-context table may hold, defaults filled in.
    pub fn context_bounds(&self, limits: &crate::config::Limits) -> crate::call_context::Bounds {
        let open_calls = limits
            .max_connections
            .saturating_mul(limits.max_concurrent_streams as usize);
        crate::call_context::Bounds {
            handles: self.context_max_handles.unwrap_or(open_calls.min(65_536)),
            bytes: self.context_max_bytes.map_or(16 << 20, |size| {
                usize::try_from(size.0).unwrap_or(usize::MAX)
            }),
            per_owner: self
                .context_max_handles_per_identity
                .unwrap_or((limits.per_identity.max_concurrent_calls as usize).saturating_mul(2)),
        }
    }

    /// Whether any destination takes its credential from the inbound call.
    pub fn uses_context(&self) -> bool {
        self.destinations
            .iter()
            .any(|destination| destination.credentials == Credentials::Context)
    }

    /// The parsed `listen`; `Err` says why it is refused (not loopback, not an address).
    pub fn listen(&self) -> Result<OutboundListen, ListenError> {
        if let Some(path) = self.listen.strip_prefix("unix:") {
            return if Path::new(path).is_absolute() {
                Ok(OutboundListen::Unix(PathBuf::from(path)))
            } else {
                Err(ListenError::RelativeSocket(self.listen.clone()))
            };
        }
        let address: SocketAddr = self
            .listen
            .parse()
            .map_err(|_| ListenError::NotAnAddress(self.listen.clone()))?;
        if address.ip().is_loopback() {
            Ok(OutboundListen::Tcp(address))
        } else {
            Err(ListenError::NotLoopback(address))
        }
    }

    /// The listener stays in the pod, the client files resolve, and every destination
    /// names a host, an address, the identities it must prove and a credential.
    pub(super) fn validate(&self, tls: &Tls, problems: &mut Vec<Problem>) {
        if let Err(message) = self.listen() {
            problems.push(Problem::new("outbound.listen", message));
        }
        let files = self.client_tls.resolved(tls);
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
        if self.context_max_handles == Some(0) {
            problems.push(Problem::new(
                "outbound.context_max_handles",
                "must be at least 1 (leave it out for max_connections × max_concurrent_streams)",
            ));
        }
        if self.context_max_handles_per_identity == Some(0) {
            problems.push(Problem::new(
                "outbound.context_max_handles_per_identity",
                "must be at least 1 (leave it out for twice limits.per_identity.max_concurrent_calls)",
            ));
        }
        if self
            .context_max_bytes
            .is_some_and(|size| size.0 < crate::call_context::MAX_STORED_TOKEN as u64)
        {
            problems.push(Problem::new(
                "outbound.context_max_bytes",
                "must hold at least one token (8 KiB)",
            ));
        }
        if self.destinations.is_empty() {
            problems.push(Problem::new(
                "outbound.destinations",
                "name at least one destination",
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, destination) in self.destinations.iter().enumerate() {
            destination.validate(&format!("outbound.destinations[{i}]"), &mut names, problems);
        }
    }
}

/// Why `outbound.listen` is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ListenError {
    #[error("{0:?}: a unix socket needs an absolute path, like unix:/run/gatehouse/outbound.sock")]
    RelativeSocket(String),
    #[error("{0:?}: write a loopback ip:port (127.0.0.1:15001, [::1]:15001) or unix:/path")]
    NotAnAddress(String),
    /// Anything that can reach the port calls out with the pod's identity.
    #[error(
        "{0} is not a loopback address: the outbound port is plaintext and calls out with the pod's identity, so only 127.0.0.0/8, ::1 or unix:/path are allowed"
    )]
    NotLoopback(SocketAddr),
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
    /// The problems of the destination at `path`; `names` holds the names (lowercase)
    /// of the destinations before it, which it must not repeat.
    fn validate(
        &self,
        path: &str,
        names: &mut std::collections::HashSet<String>,
        problems: &mut Vec<Problem>,
    ) {
        let at = |field: &str| format!("{path}.{field}");
        let name = &self.name;
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
        if let Err(message) = check_destination_address(&self.address) {
            problems.push(Problem::new(at("address"), message));
        }
        let server_name = self.server_name();
        if server_name.parse::<std::net::IpAddr>().is_ok() {
            let field = if self.server_name.is_some() {
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
        if self.identity.is_empty() {
            problems.push(Problem::new(
                at("identity"),
                "required: the URI SANs (spiffe://…) or dns:NAMEs the destination's certificate must carry",
            ));
        }
        for (j, pattern) in self.identity.iter().enumerate() {
            if let Err(message) = identity_pattern(pattern) {
                problems.push(Problem::new(at(&format!("identity[{j}]")), message));
            }
        }
        match &self.credentials {
            Credentials::Relay | Credentials::Context
                if self.audience.as_deref().is_none_or(str::is_empty) =>
            {
                problems.push(Problem::new(
                    at("audience"),
                    "required with credentials: relay or context (the token's aud must contain it)",
                ))
            }
            _ => {}
        }
        if self.timeout.get().is_zero() {
            problems.push(Problem::new(at("timeout"), "must be longer than 0s"));
        }
    }

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
    use std::path::Path;

    use super::*;
    use crate::config::{Config, MINIMAL};

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
