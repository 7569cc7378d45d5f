//! Reading the certificate, key and CA files a TLS section names, for the server side
//! (`tls`) and the client side (`outbound.client_tls`) alike, with every problem reported
//! on its field.

use std::path::Path;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::config::{self, Problem};

/// A certificate chain, its private key and, when asked for, the roots the other side
/// must chain to.
pub(super) struct Material {
    pub certs: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub roots: Option<RootCertStore>,
}

/// Reads `cert_file`, `key_file` and, when `want_roots`, `ca_file` of the section named
/// `section` (`tls`, `outbound.client_tls`). All problems are reported together, each on
/// its field: a file not configured, missing, or with no certificate or key in it.
pub(super) fn read_material(
    section: &str,
    cert_file: Option<&Path>,
    key_file: Option<&Path>,
    ca_file: Option<&Path>,
    want_roots: bool,
) -> Result<Material, Vec<Problem>> {
    let mut problems = Vec::new();
    let field = |name: &str| format!("{section}.{name}");
    let certs = read_field(&field("cert_file"), cert_file, &mut problems, load_certs);
    let key = read_field(&field("key_file"), key_file, &mut problems, load_key);
    let roots = if want_roots {
        read_field(&field("ca_file"), ca_file, &mut problems, load_roots)
    } else {
        None
    };
    match (certs, key) {
        (Some(certs), Some(key)) if problems.is_empty() => Ok(Material { certs, key, roots }),
        _ => Err(problems),
    }
}

/// The problem with a key rustls refused to pair with its certificate, on the section's
/// `key_file`.
pub(super) fn key_problem(section: &str, error: rustls::Error) -> Problem {
    let message = match error {
        rustls::Error::InconsistentKeys(_) => {
            format!("does not match the certificate in {section}.cert_file")
        }
        other => format!("unusable with {section}.cert_file: {other}"),
    };
    Problem::new(format!("{section}.key_file"), message)
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

/// The certificate, key and CA files the configuration names for TLS (`tls.*` when TLS
/// is on, `outbound.client_tls.*` with its defaults when outbound is configured) that do
/// not exist, each as a problem on its field. Certificate sidecars and drivers
/// (spiffe-helper, a CSI driver) write them after the container starts: `gatehouse run`
/// waits for these, and for nothing else.
pub fn missing_files(config: &config::Config) -> Vec<Problem> {
    let tls = &config.tls;
    let server = tls.enabled.then(|| {
        let ca = (tls.client_auth != config::ClientAuth::None).then_some(&tls.ca_file);
        [
            ("tls.cert_file", &tls.cert_file),
            ("tls.key_file", &tls.key_file),
        ]
        .into_iter()
        .chain(ca.map(|ca| ("tls.ca_file", ca)))
        .map(|(field, path)| (field, path.clone()))
        .collect::<Vec<_>>()
    });
    let client = config.outbound.as_ref().map(|outbound| {
        let files = outbound.client_tls.resolved(tls);
        vec![
            ("outbound.client_tls.cert_file", files.cert_file),
            ("outbound.client_tls.key_file", files.key_file),
            ("outbound.client_tls.ca_file", files.ca_file),
        ]
    });
    server
        .into_iter()
        .chain(client)
        .flatten()
        .filter_map(|(field, path)| {
            let path = path?;
            // `exists` follows symlinks: a dangling `..data` link counts as missing.
            (!path.exists())
                .then(|| Problem::new(field, format!("no such file: {}", path.display())))
        })
        .collect()
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

/// SHA-256 over the contents of the files at `paths`, so a change by any route (an edit
/// in place, a rename, a swapped `..data` symlink) is noticed; `None` if one cannot be
/// read.
pub(super) fn fingerprint<'a>(paths: impl IntoIterator<Item = &'a Path>) -> Option<[u8; 32]> {
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for path in paths {
        let content = std::fs::read(path).ok()?;
        context.update(&(content.len() as u64).to_le_bytes());
        context.update(&content);
    }
    context.finish().as_ref().try_into().ok()
}

/// `notBefore` and `notAfter` of the first certificate in a PEM file, as Unix time.
pub(super) fn first_validity(path: &Path) -> Option<(i64, i64)> {
    let der = load_certs(path).ok()?.into_iter().next()?;
    let (_, cert) = X509Certificate::from_der(&der).ok()?;
    let validity = cert.validity();
    Some((
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_names_each_tls_file_that_is_not_there_on_its_field() {
        let text = "
listen: { address: 127.0.0.1:12018 }
tls: { cert_file: certs-dev/server.crt, key_file: /late/tls.key, ca_file: /late/ca.crt, client_auth: none }
upstream: { address: 127.0.0.1:50051 }
outbound:
  listen: 127.0.0.1:15001
  client_tls: { cert_file: /late/client.crt }
  destinations: []
";
        let config = config::Config::from_yaml(text).unwrap();
        let rendered: Vec<String> = missing_files(&config)
            .iter()
            .map(ToString::to_string)
            .collect();
        // client_auth: none reads no tls.ca_file; the client side defaults to it.
        assert_eq!(
            rendered,
            [
                "tls.key_file: no such file: /late/tls.key",
                "outbound.client_tls.cert_file: no such file: /late/client.crt",
                "outbound.client_tls.key_file: no such file: /late/tls.key",
                "outbound.client_tls.ca_file: no such file: /late/ca.crt",
            ]
        );
        let off = text.replace("client_auth: none", "enabled: false");
        let config = config::Config::from_yaml(&off).unwrap();
        assert_eq!(missing_files(&config).len(), 3, "only the client side");
    }
}
