//! Who is on the other end of a connection: the identity a verified certificate states,
//! its `x-forwarded-client-cert` form for the app, and the facts of the connection every
//! request carries.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use http::HeaderValue;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::config::PeerNames;
use crate::sha256::{sha256, to_hex};

/// Who the client is, as its verified certificate says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    /// URI SANs, such as `spiffe://cluster.local/ns/prod/sa/gateway`.
    pub uris: Vec<String>,
    /// DNS SANs.
    pub dns_names: Vec<String>,
    /// The subject's common name, when it has one.
    pub common_name: Option<String>,
    /// The subject as a distinguished name (`CN=…,O=…`).
    pub subject: String,
    /// Lowercase hex SHA-256 of the certificate's DER encoding.
    pub sha256: String,
    /// The certificate's `notAfter`, in seconds since the Unix epoch: the identity it
    /// states means nothing after it, however long the connection lasts.
    pub not_after: Option<u64>,
}

impl PeerIdentity {
    /// Extracts the identity from a DER certificate that rustls has already verified.
    pub fn from_der(der: &[u8]) -> Result<PeerIdentity, String> {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|error| format!("unparseable client certificate: {error}"))?;
        let mut identity = PeerIdentity {
            subject: cert.subject().to_string(),
            common_name: cert
                .subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .map(str::to_owned),
            sha256: to_hex(&sha256(der)),
            not_after: Some(u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0)),
            ..PeerIdentity::default()
        };
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(uri) => identity.uris.push((*uri).to_owned()),
                    GeneralName::DNSName(dns) => identity.dns_names.push((*dns).to_owned()),
                    _ => {}
                }
            }
        }
        Ok(identity)
    }

    /// Whether the certificate's validity has ended.
    pub fn expired(&self) -> bool {
        self.not_after
            .is_some_and(|not_after| crate::clock::unix_now() > not_after)
    }

    /// The names the configured peer patterns match against.
    pub fn names(&self) -> PeerNames<'_> {
        PeerNames {
            uris: &self.uris,
            dns_names: &self.dns_names,
            common_name: self.common_name.as_deref(),
        }
    }

    /// The SPIFFE ID, if the certificate carries one.
    pub fn spiffe_id(&self) -> Option<&str> {
        self.uris
            .iter()
            .map(String::as_str)
            .find(|uri| uri.starts_with("spiffe://"))
    }

    /// What this peer counts as for per-client limits, with the kind of name it is: its
    /// SPIFFE ID or first URI SAN (`uri:`), else its first DNS SAN (`dns:`), else, for a
    /// certificate without SANs, its subject CN (`cn:`), else its fingerprint
    /// (`sha256:`). A common name can then never pass for a URI SAN it spells out.
    pub fn key(&self) -> String {
        let (kind, name) = self.key_parts();
        format!("{kind}:{name}")
    }

    /// [`PeerIdentity::key`] as its kind (`uri`, `dns`, `cn`, `sha256`) and name, for
    /// callers that write it into a buffer of their own on every call.
    pub fn key_parts(&self) -> (&'static str, &str) {
        if let Some(uri) = self.spiffe_id().or(self.uris.first().map(String::as_str)) {
            return ("uri", uri);
        }
        if let Some(dns) = self.dns_names.first() {
            return ("dns", dns);
        }
        match &self.common_name {
            Some(cn) => ("cn", cn),
            None => ("sha256", &self.sha256),
        }
    }

    /// The one name to show for this peer in logs: SPIFFE ID, else first URI or DNS SAN,
    /// else the common name, else the fingerprint.
    pub fn name(&self) -> &str {
        self.spiffe_id()
            .or(self.uris.first().map(String::as_str))
            .or(self.dns_names.first().map(String::as_str))
            .or(self.common_name.as_deref())
            .unwrap_or(&self.sha256)
    }
}

/// The verified client certificate in Envoy's `x-forwarded-client-cert` format:
/// `Hash=…;Subject="…";URI=…;DNS=…`.
pub fn forwarded_client_cert(peer: &PeerIdentity) -> Option<HeaderValue> {
    let mut value = format!(
        "Hash={};Subject=\"{}\"",
        peer.sha256,
        peer.subject.replace('\\', "\\\\").replace('"', "\\\"")
    );
    for uri in &peer.uris {
        value.push_str(";URI=");
        push_field(&mut value, uri);
    }
    for dns in &peer.dns_names {
        value.push_str(";DNS=");
        push_field(&mut value, dns);
    }
    HeaderValue::try_from(value).ok()
}

/// Quotes a value that contains a separator, as Envoy does.
fn push_field(out: &mut String, value: &str) {
    if value.contains([',', ';', '=', '"']) {
        out.push('"');
        out.push_str(&value.replace('\\', "\\\\").replace('"', "\\\""));
        out.push('"');
    } else {
        out.push_str(value);
    }
}

/// What is known about the connection a request arrived on, in every request's
/// extensions.
#[derive(Debug)]
pub struct ConnectionInfo {
    /// Unique among the connections of this process.
    pub id: u64,
    pub remote_addr: SocketAddr,
    /// The verified client certificate's identity; `None` without TLS or without a
    /// client certificate (`client_auth: optional` or `none`).
    pub peer: Option<PeerIdentity>,
    /// `peer` as an `x-forwarded-client-cert` value, built once per connection.
    pub client_cert_header: Option<HeaderValue>,
}

impl ConnectionInfo {
    pub fn new(remote_addr: SocketAddr, peer: Option<PeerIdentity>) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let client_cert_header = peer.as_ref().and_then(forwarded_client_cert);
        ConnectionInfo {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            remote_addr,
            peer,
            client_cert_header,
        }
    }
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    use super::*;

    #[test]
    fn extracts_spiffe_id_dns_names_and_common_name() {
        let pem = include_str!("../../certs-dev/client-gateway.crt");
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let identity = PeerIdentity::from_der(&der).unwrap();
        assert_eq!(
            identity.spiffe_id(),
            Some("spiffe://dev.gatehouse/ns/default/sa/gateway")
        );
        assert_eq!(
            identity.name(),
            "spiffe://dev.gatehouse/ns/default/sa/gateway"
        );
        assert_eq!(identity.common_name.as_deref(), Some("gateway"));
        assert_eq!(identity.sha256.len(), 64);
        assert!(
            identity.subject.contains("CN=gateway"),
            "{}",
            identity.subject
        );
    }

    #[test]
    fn formats_the_client_certificate_like_envoy() {
        let peer = PeerIdentity {
            uris: vec!["spiffe://td/ns/a/sa/b".into()],
            dns_names: vec!["b.svc".into()],
            common_name: Some("b".into()),
            subject: "CN=b,O=x".into(),
            sha256: "ab".repeat(32),
            not_after: None,
        };
        let value = forwarded_client_cert(&peer).unwrap();
        assert_eq!(
            value,
            format!(
                "Hash={};Subject=\"CN=b,O=x\";URI=spiffe://td/ns/a/sa/b;DNS=b.svc",
                "ab".repeat(32)
            )
            .as_str()
        );
    }
}
