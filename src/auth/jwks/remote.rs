//! A JWKS document fetched over HTTPS: the fetch itself, and the refreshes around it
//! (background, on an unknown key id, single-flight and rate-limited; see the
//! [parent module](super)).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use jsonwebtoken::Algorithm;
use rustls::pki_types::ServerName;
use tokio::time::Instant;

use super::KeySet;
use crate::config::Family;
use crate::reload::Current;

/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// Time one fetch may take, connect to last byte.
pub(super) const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// A JWKS document fetched over HTTPS.
pub struct RemoteJwks {
    url: Uri,
    host: String,
    port: u16,
    tls: tokio_rustls::TlsConnector,
    /// The extra trust roots, to tell whether a reloaded configuration fetches the same way.
    extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
    family: Family,
    algorithms: Vec<Algorithm>,
    refresh_interval: Duration,
    min_refresh_interval: Duration,
    keys: Current<KeySet>,
    /// When the last fetch started; fetches for unknown key ids wait this long apart.
    last_fetch: Mutex<Option<Instant>>,
    /// Held for the whole of a fetch, so concurrent refetches share one request.
    fetching: tokio::sync::Mutex<()>,
    /// Woken whenever a fetch ends, loaded or failed.
    fetched: tokio::sync::Notify,
    /// Whether the background refresher runs (it is started once, whoever asks).
    refreshing: AtomicBool,
}

impl RemoteJwks {
    pub fn new(
        url: &str,
        extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
        family: Family,
        algorithms: Vec<Algorithm>,
        refresh_interval: Duration,
        min_refresh_interval: Duration,
    ) -> Result<RemoteJwks, String> {
        let uri: Uri = url.parse().map_err(|error| format!("{url:?}: {error}"))?;
        let host = uri
            .host()
            .ok_or_else(|| format!("{url:?}: no host"))?
            .trim_matches(['[', ']'])
            .to_owned();
        let port = uri.port_u16().unwrap_or(443);
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        for cert in &extra_roots {
            roots
                .add(cert.clone())
                .map_err(|error| format!("jwks_ca_file: {error}"))?;
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| error.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(RemoteJwks {
            url: uri,
            host,
            port,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            extra_roots,
            family,
            algorithms,
            refresh_interval,
            min_refresh_interval,
            keys: Current::new(Arc::new(KeySet::default())),
            last_fetch: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
            fetched: tokio::sync::Notify::new(),
            refreshing: AtomicBool::new(false),
        })
    }

    /// Whether `other` fetches the same document the same way and keeps the same keys
    /// from it, so that its running state (keys, refresher, refetch limits) can serve
    /// in its place.
    pub fn same_source(&self, other: &RemoteJwks) -> bool {
        self.url == other.url
            && self.extra_roots == other.extra_roots
            && self.family == other.family
            && self.algorithms == other.algorithms
            && self.refresh_interval == other.refresh_interval
            && self.min_refresh_interval == other.min_refresh_interval
    }

    /// Serves `keys` until the first fetch succeeds, if nothing has loaded yet: how a
    /// reloaded provider keeps working while its issuer cannot be reached.
    pub fn seed(&self, keys: Arc<KeySet>) {
        self.keys.update(|current| {
            if current.is_empty() {
                keys
            } else {
                current.clone()
            }
        });
    }

    pub fn current(&self) -> Arc<KeySet> {
        self.keys.get()
    }

    /// Fetches now; on success the new keys serve from the next call. Returns the
    /// `max-age` the issuer asked for, if any.
    ///
    /// Call it holding `fetching`. Waiters on `fetched` are woken however it ends.
    pub async fn refresh(&self) -> Result<Option<Duration>, String> {
        let result = self.fetch_and_load().await;
        self.fetched.notify_waiters();
        result
    }

    async fn fetch_and_load(&self) -> Result<Option<Duration>, String> {
        *self.last_fetch.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        let (body, max_age) = tokio::time::timeout(FETCH_TIMEOUT, self.fetch())
            .await
            .map_err(|_| format!("no answer within {FETCH_TIMEOUT:?}"))??;
        let mut skipped = Vec::new();
        let keys = KeySet::from_jwks(&body, self.family, &self.algorithms, &mut skipped)?;
        for reason in skipped {
            tracing::warn!(url = %self.url, reason, "JWKS key skipped");
        }
        tracing::info!(url = %self.url, keys = keys.len(), "JWKS loaded");
        self.keys.update(|current| Arc::new(keys.keeping(current)));
        Ok(max_age)
    }

    fn fetched_recently(&self) -> bool {
        self.last_fetch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|at| at.elapsed() < self.min_refresh_interval)
    }

    /// Called when a token names a key id not in the set. A fetch already in flight
    /// (a refetch or the background refresh) is waited for; otherwise one is started,
    /// unless a fetch started within `min_refresh_interval`. The fetch runs in a task
    /// of its own, so a caller that gives up (after `wait`, or by going away) does not
    /// cancel it for the others. Returns whether a fetch ended while waiting, so the set
    /// may have changed.
    pub async fn refetch_for_unknown_kid(self: &Arc<Self>, wait: Duration) -> bool {
        // Registered before anything is checked, so the end of a fetch is never missed.
        let fetched = self.fetched.notified();
        tokio::pin!(fetched);
        fetched.as_mut().enable();
        let in_flight = self.fetching.try_lock().is_err();
        if !in_flight {
            if self.fetched_recently() {
                return false;
            }
            let this = self.clone();
            tokio::spawn(async move {
                let _only_fetch = this.fetching.lock().await;
                // Another caller may have fetched while this one waited for the lock;
                // the refetch limit holds either way.
                if this.fetched_recently() {
                    this.fetched.notify_waiters();
                    return;
                }
                if let Err(error) = this.refresh().await {
                    tracing::warn!(url = %this.url, %error, "JWKS refetch failed; keeping the last good keys");
                }
            });
        }
        tokio::time::timeout(wait, fetched).await.is_ok()
    }

    /// Waits until a key set has been loaded, at most `limit`.
    pub async fn wait_loaded(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let fetched = self.fetched.notified();
            tokio::pin!(fetched);
            fetched.as_mut().enable();
            if !self.current().is_empty() {
                return true;
            }
            if tokio::time::timeout_at(deadline, fetched).await.is_err() {
                return false;
            }
        }
    }

    /// Keeps the key set fresh in the background for as long as `self` is in use. Only
    /// the first call starts the refresher: a source carried over by a configuration
    /// reload keeps the one it has.
    pub fn spawn_refresher(self: &Arc<Self>) {
        if self.refreshing.swap(true, Ordering::SeqCst) {
            return;
        }
        let remote = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(this) = remote.upgrade() else {
                    return;
                };
                let wait = {
                    let _only_fetch = this.fetching.lock().await;
                    match this.refresh().await {
                        Ok(max_age) => max_age
                            .map(|age| age.clamp(this.min_refresh_interval, this.refresh_interval))
                            .unwrap_or(this.refresh_interval),
                        Err(error) => {
                            tracing::warn!(url = %this.url, %error, "JWKS fetch failed; keeping the last good keys");
                            this.min_refresh_interval
                        }
                    }
                };
                drop(this);
                tokio::time::sleep(wait).await;
            }
        });
    }

    async fn fetch(&self) -> Result<(Bytes, Option<Duration>), String> {
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|error| format!("cannot connect: {error}"))?;
        let name = ServerName::try_from(self.host.clone())
            .map_err(|error| format!("bad host name: {error}"))?;
        let tls = self
            .tls
            .connect(name, tcp)
            .await
            .map_err(|error| format!("TLS: {error}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|error| format!("HTTP: {error}"))?;
        tokio::spawn(connection);
        let path = self.url.path_and_query().map_or("/", |pq| pq.as_str());
        let authority = self
            .url
            .authority()
            .map_or(self.host.as_str(), |a| a.as_str());
        let request = http::Request::get(path)
            .header(http::header::HOST, authority)
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, "gatehouse")
            .body(Empty::<Bytes>::new())
            .map_err(|error| error.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|error| format!("HTTP: {error}"))?;
        if !response.status().is_success() {
            return Err(format!("status {}", response.status().as_u16()));
        }
        let max_age = response
            .headers()
            .get(http::header::CACHE_CONTROL)
            .and_then(|value| value.to_str().ok())
            .and_then(parse_max_age);
        let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|error| format!("reading the body: {error}"))?
            .to_bytes();
        Ok((body, max_age))
    }
}

/// `max-age=N` from a `Cache-Control` value.
fn parse_max_age(value: &str) -> Option<Duration> {
    value
        .split(',')
        .filter_map(|directive| directive.trim().strip_prefix("max-age="))
        .find_map(|seconds| seconds.trim_matches('"').parse().ok())
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_max_age_from_cache_control() {
        assert_eq!(
            parse_max_age("public, max-age=600"),
            Some(Duration::from_secs(600))
        );
        assert_eq!(parse_max_age("no-cache"), None);
    }
}
