//! The serving side: the rustls server configuration built from `tls:`, and the one
//! handshakes use, swapped when the files behind it change.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;

use super::RELOAD_POLL;
use super::files::{self, Material, first_validity, key_problem, read_material};
use crate::config::{self, ClientAuth, Problem};
use crate::reload::Current;

/// Builds the server configuration, reading and checking every file `tls:` names. All
/// problems are reported together, each on its field: a missing file, a file with no
/// certificate or key in it, a key that does not belong to the certificate.
pub fn server_config(tls: &config::Tls) -> Result<Arc<ServerConfig>, Vec<Problem>> {
    let Material { certs, key, roots } = read_material(
        "tls",
        tls.cert_file.as_deref(),
        tls.key_file.as_deref(),
        tls.ca_file.as_deref(),
        tls.client_auth != ClientAuth::None,
    )?;
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
        .map_err(|error| vec![key_problem("tls", error)])?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// The serving TLS configuration, rebuilt when the files behind it change.
///
/// The files are looked at every [`RELOAD_POLL`] (`stat`, then their content hash when
/// a file resolves to another inode or its size, mtime or ctime moved). That
/// notices every way a certificate is rotated: an edit in place, an atomic rename, and
/// a Kubernetes Secret volume, whose files sit behind a `..data` symlink swapped
/// atomically (a change that watchers of the file itself miss). New handshakes use new
/// material at once; established connections keep theirs. A new pair that is broken or
/// mismatched is refused and the running one kept. Each rebuild starts with an empty
/// session cache, so a client whose certificate a new CA bundle no longer trusts cannot
/// resume its old session.
pub struct ReloadableTls {
    config: std::sync::Mutex<config::Tls>,
    current: Current<ServerConfig>,
    fingerprint: std::sync::Mutex<Option<[u8; 32]>>,
    /// What `stat` said about the files at the last poll: unchanged, they are not read.
    stamps: crate::reload::Stamps,
    serving_not_after: std::sync::atomic::AtomicI64,
    metrics: Arc<crate::metrics::Metrics>,
}

impl ReloadableTls {
    pub fn new(
        tls: &config::Tls,
        initial: Arc<ServerConfig>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        let reloadable = ReloadableTls {
            config: std::sync::Mutex::new(tls.clone()),
            current: Current::new(initial),
            fingerprint: std::sync::Mutex::new(fingerprint(tls)),
            stamps: crate::reload::Stamps::default(),
            serving_not_after: std::sync::atomic::AtomicI64::new(i64::MAX),
            metrics,
        };
        reloadable.record_expiry(tls);
        reloadable
    }

    /// The acceptor for the next handshake.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.get())
    }

    /// Whether the serving certificate has expired.
    pub fn serving_certificate_expired(&self) -> bool {
        let now = crate::clock::unix_now() as i64;
        now >= self
            .serving_not_after
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Rebuilds from `tls` (new paths after a config reload) or the current paths, if
    /// anything changed. `None`: nothing changed; `Some(Ok)`: reloaded.
    pub fn reload(&self, tls: Option<&config::Tls>) -> Option<Result<(), Vec<Problem>>> {
        let mut config = self.config.lock().unwrap_or_else(|p| p.into_inner());
        if tls.is_none() && self.stamps.unchanged(paths(&config)) {
            return None;
        }
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
                self.current.set(server);
                self.record_expiry(&candidate);
                *config = candidate;
                self.metrics.reload("success");
                tracing::info!(
                    cert_file = config.cert_file.as_deref().map(|p| p.display().to_string()),
                    "TLS certificates reloaded"
                );
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
            let Some((not_before, not_after)) = first_validity(path) else {
                continue;
            };
            self.metrics.cert_validity(path, not_before, not_after);
            if serving {
                self.serving_not_after
                    .store(not_after, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }
}

/// The files `tls` names.
fn paths(tls: &config::Tls) -> impl Iterator<Item = &std::path::Path> {
    [&tls.cert_file, &tls.key_file, &tls.ca_file]
        .into_iter()
        .flatten()
        .map(PathBuf::as_path)
}

/// SHA-256 over the contents of every file `tls` names; `None` if one cannot be read.
fn fingerprint(tls: &config::Tls) -> Option<[u8; 32]> {
    files::fingerprint(paths(tls))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
