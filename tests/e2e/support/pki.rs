//! TLS identities: the development PKI from `certs-dev/`, and certificates made with
//! rcgen at test time (SVIDs, client certificates, broken ones).

use std::path::{Path, PathBuf};

use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::dev_cert;

/// A client identity (certificate chain and key), in PEM.
#[derive(Clone)]
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Identity {
    pub fn dev(name: &str) -> Identity {
        Identity {
            cert_pem: std::fs::read_to_string(dev_cert(&format!("{name}.crt"))).unwrap(),
            key_pem: std::fs::read_to_string(dev_cert(&format!("{name}.key"))).unwrap(),
        }
    }

    pub fn gateway() -> Identity {
        Identity::dev("client-gateway")
    }

    /// Writes the identity into `dir` and returns (cert path, key path), for grpcurl.
    pub fn write_to(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        (cert, key)
    }
}

impl Identity {
    pub fn certs(&self) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .map(Result::unwrap)
            .collect()
    }

    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).unwrap()
    }
}

/// The development CA as a trust store.
pub fn dev_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(dev_cert("ca.crt")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    roots
}

/// An X.509-SVID as SPIRE, csi-driver-spiffe and Istio CAs issue them, signed by the
/// development CA: the SPIFFE ID as the only SAN (no DNS name, no IP, no subject CN), for
/// server and client authentication alike.
pub fn svid(spiffe_id: &str) -> Identity {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into().unwrap())];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    signed_by_dev_ca(params)
}

/// A client certificate for `spiffe://dev.gatehouse/ns/default/sa/{name}` (also the
/// subject CN), signed by the development CA.
pub fn client_certificate(name: &str) -> Identity {
    signed_by_dev_ca(client_params(name))
}

/// A certificate with `params` and a new key, signed by the development CA.
pub fn signed_by_dev_ca(params: CertificateParams) -> Identity {
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(dev_cert("ca.key")).unwrap()).unwrap();
    let ca_pem = std::fs::read_to_string(dev_cert("ca.crt")).unwrap();
    signed_by(params, &Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap())
}

/// A certificate with `params` and a new key, signed by a new CA ("some other CA") that
/// gatehouse does not trust.
pub fn signed_by_other_ca(params: CertificateParams) -> Identity {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(DnType::CommonName, "some other CA");
    ca.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    signed_by(params, &Issuer::new(ca, KeyPair::generate().unwrap()))
}

/// A certificate with `params` and a new key, signed by `issuer`.
fn signed_by(params: CertificateParams, issuer: &Issuer<'_, KeyPair>) -> Identity {
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    Identity {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// Client-authentication parameters for `spiffe://dev.gatehouse/ns/default/sa/{name}`,
/// with `name` as the subject CN.
fn client_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.subject_alt_names = vec![SanType::URI(
        format!("spiffe://dev.gatehouse/ns/default/sa/{name}")
            .try_into()
            .unwrap(),
    )];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params
}

/// Broken client certificates, made fresh for each test run.
pub mod broken {
    use super::*;

    /// Valid in every way, but signed by a CA gatehouse does not trust.
    pub fn from_other_ca() -> Identity {
        signed_by_other_ca(client_params("intruder"))
    }

    /// Signed by the trusted development CA, but expired in 2021.
    pub fn expired() -> Identity {
        let mut params = client_params("expired");
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        signed_by_dev_ca(params)
    }

    /// A serving certificate for localhost and 127.0.0.1 signed by the development CA,
    /// valid until `not_after` (year, month, day): (certificate PEM, key PEM).
    pub fn server_certificate(name: &str, not_after: (i32, u8, u8)) -> Identity {
        let mut params = server_params(name);
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        signed_by_dev_ca(params)
    }

    /// A serving certificate like [`server_certificate`], valid from `not_before` to
    /// `not_after` (whole seconds since the Unix epoch): a mesh's short-lived ones.
    pub fn server_certificate_between(name: &str, not_before: u64, not_after: u64) -> Identity {
        let at = |secs| std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        let mut params = server_params(name);
        params.not_before = at(not_before).into();
        params.not_after = at(not_after).into();
        signed_by_dev_ca(params)
    }

    fn server_params(name: &str) -> CertificateParams {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params
    }

    /// A new CA (certificate PEM) that signs nothing gatehouse's clients hold.
    pub fn other_ca() -> String {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name.push(DnType::CommonName, "another CA");
        ca.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        ca.self_signed(&KeyPair::generate().unwrap()).unwrap().pem()
    }

    /// Signed by the trusted development CA for client authentication, with exactly
    /// this subject CN and these SANs: certificates whose names try to pass for others.
    pub fn client_with_names(common_name: &str, sans: Vec<SanType>) -> Identity {
        let mut params = client_params(common_name);
        params.subject_alt_names = sans;
        signed_by_dev_ca(params)
    }

    /// Signed by the trusted development CA, valid from a minute ago until `left` from now.
    pub fn client_expiring_in(left: std::time::Duration) -> Identity {
        let mut params = client_params("short-lived");
        let now = std::time::SystemTime::now();
        params.not_before = (now - std::time::Duration::from_secs(60)).into();
        params.not_after = (now + left).into();
        signed_by_dev_ca(params)
    }

    /// Signed by the trusted development CA, but only for server authentication.
    pub fn server_only_usage() -> Identity {
        let mut params = client_params("wrong-usage");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        signed_by_dev_ca(params)
    }
}
