//! The client side of outbound calls: the pod's certificate presented to destinations,
//! and the check, inside the handshake, that a destination is the service the call is
//! meant for.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::ClientConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::RELOAD_POLL;
use super::files::{Material, key_problem, read_material};
use super::peer::PeerIdentity;
use crate::config::{self, PeerPattern, Problem};

/// The configuration section the client material is read from.
const SECTION: &str = "outbound.client_tls";

/// Why a destination's certificate was refused after its chain verified: it carries none
/// of the identities the destination is configured with. Carried inside the rustls error
/// so the caller can be told what the server presented.
#[derive(Debug, thiserror::Error)]
#[error("the server certificate carries {presented}, none of the expected {expected}")]
pub struct IdentityMismatch {
    pub presented: String,
    pub expected: String,
}

/// Verifies a destination's certificate: first the chain (the configured roots, validity
/// dates, key usage), exactly as webpki does; then that the certificate carries one of
/// the destination's identities, each matched only against SANs of its own kind (a URI
/// SAN that spells a DNS name is not a DNS name). Both happen inside the handshake, so no
/// request byte is sent to a server that fails either.
///
/// The SNI name is checked against the certificate's DNS SANs only when an identity is a
/// `dns:` (or `cn:`) entry. When every identity is a URI (a SPIFFE ID) the URI SAN is the
/// whole proof: an X.509-SVID, as SPIRE, csi-driver-spiffe and Istio CAs issue it,
/// carries no DNS name, and the name the pod dials it by is only the SNI sent.
#[derive(Debug)]
pub struct IdentityVerifier {
    chain: Arc<rustls::client::WebPkiServerVerifier>,
    roots: Arc<rustls::RootCertStore>,
    identities: Arc<[PeerPattern]>,
    /// False when every identity is a URI: no DNS-name check.
    check_name: bool,
}

impl IdentityVerifier {
    /// The chain, and the SNI name unless every identity is a URI.
    fn verify_chain(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
        if self.check_name {
            return self.chain.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            );
        }
        // What WebPkiServerVerifier does, less `verify_server_name`: no CRLs are
        // configured on either path, so nothing else differs.
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            rustls::crypto::aws_lc_rs::default_provider()
                .signature_verification_algorithms
                .all,
        )?;
        Ok(ServerCertVerified::assertion())
    }
}

impl rustls::client::danger::ServerCertVerifier for IdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let verified =
            self.verify_chain(end_entity, intermediates, server_name, ocsp_response, now)?;
        let peer = PeerIdentity::from_der(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        if self
            .identities
            .iter()
            .any(|pattern| pattern.matches(&peer.names()))
        {
            return Ok(verified);
        }
        let presented: Vec<String> = peer
            .uris
            .iter()
            .map(|uri| format!("URI {uri}"))
            .chain(peer.dns_names.iter().map(|dns| format!("DNS {dns}")))
            .collect();
        let expected: Vec<String> = self.identities.iter().map(describe_pattern).collect();
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Other(rustls::OtherError(Arc::new(IdentityMismatch {
                presented: if presented.is_empty() {
                    "no URI or DNS SAN".to_owned()
                } else {
                    presented.join(", ")
                },
                expected: expected.join(", "),
            }))),
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

fn describe_pattern(pattern: &PeerPattern) -> String {
    match pattern {
        PeerPattern::Uri(uri) => format!("URI {uri}"),
        PeerPattern::Dns(dns) => format!("DNS {dns}"),
        PeerPattern::CommonName(cn) => format!("CN {cn}"),
    }
}

/// The pod's client certificate and the roots destinations must chain to, read from
/// `outbound.client_tls` (defaults filled from `tls`).
struct ClientMaterial {
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    chain: Arc<rustls::client::WebPkiServerVerifier>,
    roots: Arc<rustls::RootCertStore>,
}

fn client_material(files: &config::ClientTls) -> Result<ClientMaterial, Vec<Problem>> {
    let Material { certs, key, roots } = read_material(
        SECTION,
        files.cert_file.as_deref(),
        files.key_file.as_deref(),
        files.ca_file.as_deref(),
        true,
    )?;
    let roots = Arc::new(roots.expect("read_material reads the roots when asked for them"));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain = rustls::client::WebPkiServerVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()
    .map_err(|error| {
        vec![Problem::new(
            "outbound.client_tls.ca_file",
            format!("cannot verify servers with it: {error}"),
        )]
    })?;
    let material = ClientMaterial {
        certs,
        key,
        chain,
        roots,
    };
    // Built once here so a key that does not match its certificate is refused at load.
    material
        .config(Arc::from(Vec::new()))
        .map_err(|error| vec![key_problem(SECTION, error)])?;
    Ok(material)
}

impl ClientMaterial {
    fn config(&self, identities: Arc<[PeerPattern]>) -> Result<ClientConfig, rustls::Error> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = IdentityVerifier {
            chain: self.chain.clone(),
            roots: self.roots.clone(),
            check_name: !identities
                .iter()
                .all(|identity| matches!(identity, PeerPattern::Uri(_))),
            identities,
        };
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("the aws-lc-rs provider supports TLS 1.2 and 1.3")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(self.certs.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

/// The client side of outbound calls: the pod's certificate presented to destinations,
/// re-read when its files change (polled like the server's, every [`RELOAD_POLL`], by
/// content hash). New connections use the new material; open ones keep theirs, so a
/// rotation never drops a stream. Broken new material is refused and the running one
/// kept.
pub struct ClientTls {
    files: config::ClientTls,
    material: crate::reload::Current<ClientMaterial>,
    fingerprint: std::sync::Mutex<Option<[u8; 32]>>,
    /// What `stat` said about the files at the last poll: unchanged, they are not read.
    stamps: crate::reload::Stamps,
    /// Counts reloads, so connections made with older material can be retired.
    generation: std::sync::atomic::AtomicU64,
}

impl ClientTls {
    /// Reads the files (each problem on its `outbound.client_tls.*` field).
    pub fn load(files: &config::ClientTls) -> Result<ClientTls, Vec<Problem>> {
        let material = client_material(files)?;
        Ok(ClientTls {
            files: files.clone(),
            material: crate::reload::Current::new(Arc::new(material)),
            fingerprint: std::sync::Mutex::new(client_fingerprint(files)),
            stamps: crate::reload::Stamps::default(),
            generation: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Which material is current: it changes with every successful reload.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The connector for a destination that must prove one of `identities`.
    pub fn connector(&self, identities: Arc<[PeerPattern]>) -> tokio_rustls::TlsConnector {
        let config = self
            .material
            .get()
            .config(identities)
            .expect("the key was checked against the certificate when it was loaded");
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }

    /// Re-reads the files if they changed; `true` when new material is now in use.
    pub fn reload(&self, metrics: &crate::metrics::Metrics) -> bool {
        let files = [
            &self.files.cert_file,
            &self.files.key_file,
            &self.files.ca_file,
        ];
        if self
            .stamps
            .unchanged(files.into_iter().flatten().map(PathBuf::as_path))
        {
            return false;
        }
        let fingerprint = client_fingerprint(&self.files);
        {
            let mut known = self.fingerprint.lock().unwrap_or_else(|p| p.into_inner());
            if *known == fingerprint {
                return false;
            }
            *known = fingerprint;
        }
        match client_material(&self.files) {
            Ok(material) => {
                self.material.set(Arc::new(material));
                self.generation
                    .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                metrics.reload("success");
                tracing::info!(
                    cert_file = self
                        .files
                        .cert_file
                        .as_deref()
                        .map(|p| p.display().to_string()),
                    "outbound client certificate reloaded"
                );
                true
            }
            Err(problems) => {
                metrics.reload("failure");
                for problem in &problems {
                    tracing::warn!(%problem, "new client TLS material refused; keeping the running one");
                }
                false
            }
        }
    }

    /// Checks the files every [`RELOAD_POLL`] for as long as `self` is in use.
    pub fn spawn_watcher(self: &Arc<Self>, metrics: Arc<crate::metrics::Metrics>) {
        crate::reload::poll(self, RELOAD_POLL, move |tls| {
            tls.reload(&metrics);
        });
    }
}

fn client_fingerprint(files: &config::ClientTls) -> Option<[u8; 32]> {
    super::files::fingerprint(
        [&files.cert_file, &files.key_file, &files.ca_file]
            .into_iter()
            .flatten()
            .map(PathBuf::as_path),
    )
}

#[cfg(test)]
mod tests {
    use rustls::ServerConfig;

    use super::*;
    use crate::config::identity_pattern;

    #[test]
    fn reports_client_file_problems_on_their_outbound_fields() {
        let problems = ClientTls::load(&config::ClientTls {
            cert_file: Some("certs-dev/missing.crt".into()),
            key_file: Some("certs-dev/client-gateway.key".into()),
            ca_file: None,
        })
        .err()
        .expect("a missing certificate and CA file are refused");
        let rendered: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            rendered,
            [
                "outbound.client_tls.cert_file: no such file: certs-dev/missing.crt",
                "outbound.client_tls.ca_file: required"
            ]
        );
        let problems = ClientTls::load(&config::ClientTls {
            cert_file: Some("certs-dev/client-gateway.crt".into()),
            key_file: Some("certs-dev/server.key".into()),
            ca_file: Some("certs-dev/ca.crt".into()),
        })
        .err()
        .expect("a key of another certificate is refused");
        let rendered: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            rendered,
            [
                "outbound.client_tls.key_file: does not match the certificate in outbound.client_tls.cert_file"
            ]
        );
    }

    /// A serving certificate with `dns` as DNS SANs and `uris` as URI SANs, signed by the
    /// development CA: (chain, key).
    fn destination(
        dns: &[&str],
        uris: &[&str],
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};
        let dns = dns
            .iter()
            .map(|name| (*name).to_owned())
            .collect::<Vec<_>>();
        let mut params = CertificateParams::new(dns).unwrap();
        for uri in uris {
            params
                .subject_alt_names
                .push(SanType::URI((*uri).try_into().unwrap()));
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let ca_key = KeyPair::from_pem(include_str!("../../certs-dev/ca.key")).unwrap();
        let issuer =
            Issuer::from_ca_cert_pem(include_str!("../../certs-dev/ca.crt"), ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let key = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        (vec![cert.der().clone()], key)
    }

    /// Runs a handshake in memory: the client expects `identities`, the server presents
    /// `uris` and the DNS name `localhost`. The client's error, if the client refused.
    async fn handshake(uris: &[&str], identities: &[&str]) -> Result<(), std::io::Error> {
        handshake_with("localhost", &["localhost"], uris, identities).await
    }

    /// [`handshake`] with the client sending `sni` to a server whose certificate carries
    /// `dns` and `uris`.
    async fn handshake_with(
        sni: &str,
        dns: &[&str],
        uris: &[&str],
        identities: &[&str],
    ) -> Result<(), std::io::Error> {
        let (chain, key) = destination(dns, uris);
        handshake_presenting(sni, chain, key, identities).await
    }

    /// The handshake of [`handshake_with`], the server presenting `chain`.
    async fn handshake_presenting(
        sni: &str,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        identities: &[&str],
    ) -> Result<(), std::io::Error> {
        let mut server = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        server.alpn_protocols = vec![b"h2".to_vec()];
        let client = ClientTls::load(&config::ClientTls {
            cert_file: Some("certs-dev/client-gateway.crt".into()),
            key_file: Some("certs-dev/client-gateway.key".into()),
            ca_file: Some("certs-dev/ca.crt".into()),
        })
        .unwrap();
        let identities: Vec<PeerPattern> = identities
            .iter()
            .map(|text| identity_pattern(text).unwrap())
            .collect();
        let connector = client.connector(Arc::from(identities));
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
        let (client, _server) = tokio::join!(
            connector.connect(name, client_io),
            acceptor.accept(server_io)
        );
        client.map(|_| ())
    }

    fn identity_mismatch(error: &std::io::Error) -> Option<String> {
        match error.get_ref()?.downcast_ref::<rustls::Error>()? {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => other
                .0
                .downcast_ref::<IdentityMismatch>()
                .map(ToString::to_string),
            _ => None,
        }
    }

    #[tokio::test]
    async fn client_accepts_only_a_server_carrying_an_expected_identity_of_its_kind() {
        let id = "spiffe://dev.gatehouse/ns/prod/sa/identity";
        handshake(&[id], &[id]).await.expect("the named server");
        handshake(&[id], &["spiffe://dev.gatehouse/ns/*/sa/identity"])
            .await
            .expect("a pattern");
        handshake(&[], &["dns:localhost"])
            .await
            .expect("a DNS identity");

        let refused = handshake(&["spiffe://dev.gatehouse/ns/prod/sa/other"], &[id])
            .await
            .unwrap_err();
        let message = identity_mismatch(&refused).expect("refused for its identity");
        assert!(
            message.contains("URI spiffe://dev.gatehouse/ns/prod/sa/other"),
            "{message}"
        );
        // A URI SAN that spells the expected DNS name is not a DNS name; the DNS SAN
        // `localhost` does not stand in for a URI either.
        let refused = handshake(&["identity.prod.svc"], &["dns:identity.prod.svc"])
            .await
            .unwrap_err();
        assert!(identity_mismatch(&refused).is_some(), "{refused}");
        let refused = handshake(&[], &["spiffe://localhost"]).await.unwrap_err();
        assert!(identity_mismatch(&refused).is_some(), "{refused}");
    }

    #[tokio::test]
    async fn an_svid_is_checked_by_its_spiffe_id_alone_unless_a_dns_name_is_expected() {
        let id = "spiffe://dev.gatehouse/ns/prod/sa/identity";
        // An X.509-SVID: the URI SAN only; the pod dials it by a Service name.
        handshake_with("identity.prod.svc", &[], &[id], &[id])
            .await
            .expect("the SPIFFE ID is the proof");
        let refused = handshake_with(
            "identity.prod.svc",
            &[],
            &[id],
            &["spiffe://dev.gatehouse/ns/prod/sa/billing"],
        )
        .await
        .unwrap_err();
        assert!(identity_mismatch(&refused).is_some(), "{refused}");
        // A dns: entry keeps the name check, which a certificate without the name fails.
        let refused = handshake_with(
            "identity.prod.svc",
            &[],
            &[id],
            &[id, "dns:identity.prod.svc"],
        )
        .await
        .unwrap_err();
        assert!(identity_mismatch(&refused).is_none(), "{refused}");
        assert!(
            refused.to_string().contains("not valid for name"),
            "{refused}"
        );
        handshake_with("identity.prod.svc", &["identity.prod.svc"], &[id], &[id])
            .await
            .expect("a certificate that has both");
        // Without the name check the chain is still verified: the same SPIFFE ID in a
        // certificate the configured roots did not sign is refused.
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![rcgen::SanType::URI(id.try_into().unwrap())];
        let key = rcgen::KeyPair::generate().unwrap();
        let forged = params.self_signed(&key).unwrap();
        let key = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let refused =
            handshake_presenting("identity.prod.svc", vec![forged.der().clone()], key, &[id])
                .await
                .unwrap_err();
        assert!(identity_mismatch(&refused).is_none(), "{refused}");
        assert!(refused.to_string().contains("UnknownIssuer"), "{refused}");
    }
}
