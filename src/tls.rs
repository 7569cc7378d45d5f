//! TLS termination: the rustls server configuration built from `tls:`, and the verified
//! identity of each client certificate.
//!
//! Only HTTP/2 is offered (ALPN `h2`), over TLS 1.3 or 1.2. With `client_auth: require`
//! every caller must present a certificate that chains to `ca_file` and is valid for
//! client authentication; the handshake fails otherwise, before any HTTP/2 byte is read.
//! The certificate's identities (URI SANs such as a SPIFFE ID, DNS SANs, subject CN and a
//! SHA-256 fingerprint) are extracted once per connection for the layers that decide who
//! is calling.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::config::{self, ClientAuth, PeerNames, PeerPattern, Problem};
use crate::sha256::{sha256, to_hex};

/// Builds the server configuration, reading and checking every file `tls:` names. All
/// problems are reported together, each on its field: a missing file, a file with no
/// certificate or key in it, a key that does not belong to the certificate.
pub fn server_config(tls: &config::Tls) -> Result<Arc<ServerConfig>, Vec<Problem>> {
    let mut problems = Vec::new();
    let certs = read_field(
        "tls.cert_file",
        tls.cert_file.as_deref(),
        &mut problems,
        load_certs,
    );
    let key = read_field(
        "tls.key_file",
        tls.key_file.as_deref(),
        &mut problems,
        load_key,
    );
    let roots = match tls.client_auth {
        ClientAuth::None => None,
        ClientAuth::Require | ClientAuth::Optional => read_field(
            "tls.ca_file",
            tls.ca_file.as_deref(),
            &mut problems,
            load_roots,
        ),
    };
    let (Some(certs), Some(key), true) = (certs, key, problems.is_empty()) else {
        return Err(problems);
    };

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = match roots {
        None => WebPkiClientVerifier::no_client_auth(),
        Some(roots) => {
            let builder =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let builder = match tls.client_auth {
                ClientAuth::Optional => builder.allow_unauthenticated(),
                _ => builder,
            };
            builder.build().map_err(|error| {
                vec![Problem::new(
                    "tls.ca_file",
                    format!("cannot verify clients with it: {error}"),
                )]
            })?
        }
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("the aws-lc-rs provider supports TLS 1.2 and 1.3")
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|error| {
            let message = match error {
                rustls::Error::InconsistentKeys(_) => {
                    "does not match the certificate in tls.cert_file".to_owned()
                }
                other => format!("unusable with tls.cert_file: {other}"),
            };
            vec![Problem::new("tls.key_file", message)]
        })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

fn read_field<T>(
    field: &str,
    path: Option<&Path>,
    problems: &mut Vec<Problem>,
    read: fn(&Path) -> Result<T, String>,
) -> Option<T> {
    let Some(path) = path else {
        problems.push(Problem::new(field, "required"));
        return None;
    };
    read(path)
        .map_err(|message| problems.push(Problem::new(field, message)))
        .ok()
}

fn describe_pem_error(path: &Path, error: rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error;
    match error {
        Error::Io(io) if io.kind() == std::io::ErrorKind::NotFound => {
            format!("no such file: {}", path.display())
        }
        Error::Io(io) => format!("cannot read {}: {io}", path.display()),
        Error::NoItemsFound => format!("no PEM item of the expected kind in {}", path.display()),
        other => format!("not valid PEM: {}: {other}", path.display()),
    }
}

/// Reads every certificate from a PEM file, leaf first.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|error| describe_pem_error(path, error))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| describe_pem_error(path, error))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", path.display()));
    }
    Ok(certs)
}

/// Reads a private key (PKCS#8, PKCS#1 or SEC1) from a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|error| describe_pem_error(path, error))
}

fn load_roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|error| {
            format!("not a usable CA certificate in {}: {error}", path.display())
        })?;
    }
    Ok(roots)
}

/// The serving TLS configuration, rebuilt when the files behind it change.
///
/// The files are re-read every [`RELOAD_POLL`] and compared by content hash. That
/// notices every way a certificate is rotated: an edit in place, an atomic rename, and
/// a Kubernetes Secret volume, whose files sit behind a `..data` symlink swapped
/// atomically (a change that watchers of the file itself miss). New handshakes use new
/// material at once; established connections keep theirs. A new pair that is broken or
/// mismatched is refused and the running one kept. Each rebuild starts with an empty
/// session cache, so a client whose certificate a new CA bundle no longer trusts cannot
/// resume its old session.
pub struct ReloadableTls {
    config: std::sync::Mutex<config::Tls>,
    current: std::sync::RwLock<Arc<ServerConfig>>,
    fingerprint: std::sync::Mutex<Option<[u8; 32]>>,
    serving_not_after: std::sync::atomic::AtomicI64,
    metrics: Arc<crate::metrics::Metrics>,
}

/// How often certificate files are checked for changes.
pub const RELOAD_POLL: std::time::Duration = std::time::Duration::from_secs(1);

impl ReloadableTls {
    pub fn new(
        tls: &config::Tls,
        initial: Arc<ServerConfig>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        let reloadable = ReloadableTls {
            config: std::sync::Mutex::new(tls.clone()),
            current: std::sync::RwLock::new(initial),
            fingerprint: std::sync::Mutex::new(fingerprint(tls)),
            serving_not_after: std::sync::atomic::AtomicI64::new(i64::MAX),
            metrics,
        };
        reloadable.record_expiry(tls);
        reloadable
    }

    /// The acceptor for the next handshake.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }

    /// Whether the serving certificate has expired.
    pub fn serving_certificate_expired(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        now >= self
            .serving_not_after
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Rebuilds from `tls` (new paths after a config reload) or the current paths, if
    /// anything changed. `None`: nothing changed; `Some(Ok)`: reloaded.
    pub fn reload(&self, tls: Option<&config::Tls>) -> Option<Result<(), Vec<Problem>>> {
        let mut config = self.config.lock().unwrap_or_else(|p| p.into_inner());
        let candidate = tls.unwrap_or(&config).clone();
        let new_fingerprint = fingerprint(&candidate);
        {
            let mut known = self.fingerprint.lock().unwrap_or_else(|p| p.into_inner());
            if *known == new_fingerprint && tls.is_none_or(|tls| tls == &*config) {
                return None;
            }
            *known = new_fingerprint;
        }
        match server_config(&candidate) {
            Ok(server) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = server;
                self.record_expiry(&candidate);
                *config = candidate;
                self.metrics.reload("success");
                tracing::info!(cert_file = ?config.cert_file, "TLS certificates reloaded");
                Some(Ok(()))
            }
            Err(problems) => {
                self.metrics.reload("failure");
                for problem in &problems {
                    tracing::warn!(%problem, "new TLS material refused; keeping the running certificates");
                }
                Some(Err(problems))
            }
        }
    }

    /// Checks the files every [`RELOAD_POLL`] for as long as `self` is in use.
    pub fn spawn_watcher(self: &Arc<Self>) {
        crate::reload::poll(self, RELOAD_POLL, |tls| {
            tls.reload(None);
        });
    }

    fn record_expiry(&self, tls: &config::Tls) {
        for (path, serving) in [(&tls.cert_file, true), (&tls.ca_file, false)] {
            let Some(path) = path else { continue };
            let Some(not_after) = first_not_after(path) else {
                continue;
            };
            self.metrics.cert_expiry(path, not_after);
            if serving {
                self.serving_not_after
                    .store(not_after, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

/// SHA-256 over the contents of every file `tls` names; `None` if one cannot be read.
fn fingerprint(tls: &config::Tls) -> Option<[u8; 32]> {
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for path in [&tls.cert_file, &tls.key_file, &tls.ca_file]
        .into_iter()
        .flatten()
    {
        let content = std::fs::read(path).ok()?;
        context.update(&(content.len() as u64).to_le_bytes());
        context.update(&content);
    }
    context.finish().as_ref().try_into().ok()
}

/// `notAfter` of the first certificate in a PEM file, as Unix time.
fn first_not_after(path: &Path) -> Option<i64> {
    let der = load_certs(path).ok()?.into_iter().next()?;
    let (_, cert) = X509Certificate::from_der(&der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

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
/// dates, key usage, and the SNI name), exactly as webpki does; then that the certificate
/// carries one of the destination's identities, each matched only against SANs of its
/// own kind (a URI SAN that spells a DNS name is not a DNS name). Both happen inside the
/// handshake, so no request byte is sent to a server that fails either.
#[derive(Debug)]
pub struct IdentityVerifier {
    chain: Arc<rustls::client::WebPkiServerVerifier>,
    identities: Arc<[PeerPattern]>,
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
        let verified = self.chain.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
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
}

fn client_material(files: &config::ClientTls) -> Result<ClientMaterial, Vec<Problem>> {
    let mut problems = Vec::new();
    let certs = read_field(
        "outbound.client_tls.cert_file",
        files.cert_file.as_deref(),
        &mut problems,
        load_certs,
    );
    let key = read_field(
        "outbound.client_tls.key_file",
        files.key_file.as_deref(),
        &mut problems,
        load_key,
    );
    let roots = read_field(
        "outbound.client_tls.ca_file",
        files.ca_file.as_deref(),
        &mut problems,
        load_roots,
    );
    let (Some(certs), Some(key), Some(roots)) = (certs, key, roots) else {
        return Err(problems);
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|error| {
        vec![Problem::new(
            "outbound.client_tls.ca_file",
            format!("cannot verify servers with it: {error}"),
        )]
    })?;
    let material = ClientMaterial { certs, key, chain };
    // Built once here so a key that does not match its certificate is refused at load.
    material.config(Arc::from(Vec::new())).map_err(|error| {
        let message = match error {
            rustls::Error::InconsistentKeys(_) => {
                "does not match the certificate in outbound.client_tls.cert_file".to_owned()
            }
            other => format!("unusable with outbound.client_tls.cert_file: {other}"),
        };
        vec![Problem::new("outbound.client_tls.key_file", message)]
    })?;
    Ok(material)
}

impl ClientMaterial {
    fn config(&self, identities: Arc<[PeerPattern]>) -> Result<ClientConfig, rustls::Error> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = IdentityVerifier {
            chain: self.chain.clone(),
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
                tracing::info!(cert_file = ?self.files.cert_file, "outbound client certificate reloaded");
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
    fingerprint(&config::Tls {
        cert_file: files.cert_file.clone(),
        key_file: files.key_file.clone(),
        ca_file: files.ca_file.clone(),
        ..config::Tls::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::identity_pattern;

    #[test]
    fn extracts_spiffe_id_dns_names_and_common_name() {
        let pem = include_str!("../certs-dev/client-gateway.crt");
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

    fn dev_tls() -> config::Tls {
        config::Tls {
            enabled: true,
            cert_file: Some("certs-dev/server.crt".into()),
            key_file: Some("certs-dev/server.key".into()),
            ca_file: Some("certs-dev/ca.crt".into()),
            client_auth: ClientAuth::Require,
            allowed_peers: Vec::new(),
        }
    }

    #[test]
    fn builds_from_the_development_certificates_with_h2_only() {
        let config = server_config(&dev_tls()).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"h2".to_vec()]);
    }

    #[test]
    fn reports_every_missing_file_on_its_field() {
        let mut tls = dev_tls();
        tls.cert_file = Some("certs-dev/missing.crt".into());
        tls.ca_file = Some("certs-dev/missing-ca.crt".into());
        let problems = server_config(&tls).unwrap_err();
        let rendered: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            rendered,
            [
                "tls.cert_file: no such file: certs-dev/missing.crt",
                "tls.ca_file: no such file: certs-dev/missing-ca.crt"
            ]
        );
    }

    #[test]
    fn rejects_a_key_that_does_not_match_the_certificate() {
        let mut tls = dev_tls();
        tls.key_file = Some("certs-dev/client-gateway.key".into());
        let problems = server_config(&tls).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].field, "tls.key_file");
        assert!(
            problems[0].message.contains("does not match"),
            "{}",
            problems[0]
        );
    }

    #[test]
    fn rejects_a_file_without_certificates() {
        let mut tls = dev_tls();
        tls.cert_file = Some("certs-dev/server.key".into());
        let problems = server_config(&tls).unwrap_err();
        assert_eq!(problems[0].field, "tls.cert_file");
    }

    /// A serving certificate for `localhost` with `uris` as URI SANs, signed by the
    /// development CA: (chain, key).
    fn destination(uris: &[&str]) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        for uri in uris {
            params
                .subject_alt_names
                .push(SanType::URI((*uri).try_into().unwrap()));
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let ca_key = KeyPair::from_pem(include_str!("../certs-dev/ca.key")).unwrap();
        let issuer = Issuer::from_ca_cert_pem(include_str!("../certs-dev/ca.crt"), ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let key = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        (vec![cert.der().clone()], key)
    }

    /// Runs a handshake in memory: the client expects `identities`, the server presents
    /// `uris`. The client's error, if the client refused.
    async fn handshake(uris: &[&str], identities: &[&str]) -> Result<(), std::io::Error> {
        let (chain, key) = destination(uris);
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
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
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
}
