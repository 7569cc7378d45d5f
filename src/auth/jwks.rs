//! Verification keys for a JWT provider: a JWKS file, a JWKS URL fetched over HTTPS in
//! the background, or a shared HMAC secret.
//!
//! A remote key set is refreshed every `refresh_interval` (sooner if the issuer's
//! `Cache-Control: max-age` says so), and again when a token names a key id that is not
//! in the set, which is how key rotation is picked up between refreshes. Those extra
//! fetches are single-flight and at most one per `min_refresh_interval`, so a flood of
//! made-up key ids cannot turn gatehouse into a load generator against the issuer. Calls
//! that arrive while such a fetch is in flight wait for it (within their deadline and
//! [`MAX_KEY_WAIT`]) rather than fail. When the issuer is down, the last good key set
//! keeps serving, and a configuration reload carries it over (see
//! [`JwtVerifier::take_over_keys`](crate::auth::jwt::JwtVerifier::take_over_keys)).
//!
//! A JWKS file is re-read when its content changes, like `keys_file`; a broken file keeps
//! the last good keys. A new key set keeps the very same key objects for keys it shares
//! with the old one (same `kid`, same key material), so tokens verified with them stay
//! in the verified-token cache across a refresh.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use rustls::pki_types::ServerName;
use tokio::time::Instant;

use crate::config::Family;
use crate::sha256::sha256;

/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// Time one fetch may take, connect to last byte.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a call waits for a key set fetch that may bring the key its token names; the
/// call's own deadline, when shorter, bounds the wait too. A fetch cannot take longer.
pub const MAX_KEY_WAIT: Duration = FETCH_TIMEOUT;

/// One verification key.
pub struct VerifyingKey {
    pub kid: Option<String>,
    pub key: DecodingKey,
    /// SHA-256 of the key's parameters, to recognise the same key in a new key set.
    material: [u8; 32],
}

/// The keys of one provider at one moment.
#[derive(Clone, Default)]
pub struct KeySet {
    by_kid: HashMap<String, Arc<VerifyingKey>>,
    all: Vec<Arc<VerifyingKey>>,
    /// A shared secret verifies every token of its provider, whatever `kid` it names.
    shared_secret: bool,
}

impl KeySet {
    /// The key a token names, or the only key when the token names none.
    pub fn find(&self, kid: Option<&str>) -> Option<&Arc<VerifyingKey>> {
        if self.shared_secret {
            return self.all.first();
        }
        match kid {
            Some(kid) => self.by_kid.get(kid),
            None if self.all.len() == 1 => self.all.first(),
            None => None,
        }
    }

    pub fn len(&self) -> usize {
        self.all.len()
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// A key set holding one shared secret.
    pub fn secret(secret: &[u8]) -> KeySet {
        let key = Arc::new(VerifyingKey {
            kid: None,
            key: DecodingKey::from_secret(secret),
            material: sha256(secret),
        });
        KeySet {
            by_kid: HashMap::new(),
            all: vec![key],
            shared_secret: true,
        }
    }

    /// Parses a JWKS document, keeping the keys that suit the provider: `kty` of the
    /// provider's family, `use` absent or `sig`, `alg` absent or one of `algorithms`.
    /// Keys that do not suit are skipped, with the reason in `skipped`.
    pub fn from_jwks(
        json: &[u8],
        family: Family,
        algorithms: &[Algorithm],
        skipped: &mut Vec<String>,
    ) -> Result<KeySet, String> {
        #[derive(serde::Deserialize)]
        struct Document {
            keys: Vec<serde_json::Value>,
        }
        let document: Document = serde_json::from_slice(json)
            .map_err(|error| format!("not a JWKS document: {error}"))?;
        let mut set = KeySet::default();
        for (i, value) in document.keys.into_iter().enumerate() {
            let jwk: Jwk = match serde_json::from_value(value) {
                Ok(jwk) => jwk,
                Err(error) => {
                    skipped.push(format!("key {i}: unsupported: {error}"));
                    continue;
                }
            };
            let kid = jwk.common.key_id.clone();
            let label = kid.clone().unwrap_or_else(|| format!("#{i}"));
            if let Err(reason) = suits(&jwk, family, algorithms) {
                skipped.push(format!("key {label}: {reason}"));
                continue;
            }
            let key = match DecodingKey::from_jwk(&jwk) {
                Ok(key) => key,
                Err(error) => {
                    skipped.push(format!("key {label}: unusable: {error}"));
                    continue;
                }
            };
            // The key parameters alone (n and e, x and y, …): `use`, `alg` and the like
            // do not change what a signature check does.
            let material = serde_json::to_vec(&jwk.algorithm)
                .map(|parameters| sha256(&parameters))
                .map_err(|error| format!("key {label}: {error}"))?;
            let key = Arc::new(VerifyingKey {
                kid: kid.clone(),
                key,
                material,
            });
            if let Some(kid) = kid {
                set.by_kid.insert(kid, key.clone());
            }
            set.all.push(key);
        }
        if set.is_empty() {
            return Err(format!(
                "no usable key for {family:?} ({})",
                skipped.join("; ")
            ));
        }
        Ok(set)
    }

    /// This set, where every key that `previous` holds too (same `kid`, same key
    /// material) is `previous`'s own key object. Verified tokens are cached against
    /// their key object, so they stay cached across a refresh unless their key changed
    /// or left the set.
    pub fn keeping(self, previous: &KeySet) -> KeySet {
        if self.shared_secret || previous.all.is_empty() {
            return self;
        }
        let all: Vec<Arc<VerifyingKey>> = self
            .all
            .into_iter()
            .map(|key| {
                previous
                    .all
                    .iter()
                    .find(|old| old.kid == key.kid && old.material == key.material)
                    .cloned()
                    .unwrap_or(key)
            })
            .collect();
        let by_kid = all
            .iter()
            .filter_map(|key| Some((key.kid.clone()?, key.clone())))
            .collect();
        KeySet {
            by_kid,
            all,
            shared_secret: false,
        }
    }
}

fn suits(jwk: &Jwk, family: Family, algorithms: &[Algorithm]) -> Result<(), String> {
    if let Some(key_use) = &jwk.common.public_key_use
        && *key_use != PublicKeyUse::Signature
    {
        return Err("use is not sig".to_owned());
    }
    if let Some(alg) = jwk.common.key_algorithm {
        let allowed = algorithms.iter().any(|a| KeyAlgorithm::from(*a) == alg);
        if !allowed {
            return Err(format!(
                "alg {alg:?} is not one of the provider's algorithms"
            ));
        }
    }
    let kty_fits = match (&jwk.algorithm, family) {
        (AlgorithmParameters::RSA(_), Family::Rsa | Family::RsaPss) => true,
        (AlgorithmParameters::EllipticCurve(ec), Family::Ec) => {
            let curve_fits = |alg: &Algorithm| match alg {
                Algorithm::ES256 => ec.curve == EllipticCurve::P256,
                Algorithm::ES384 => ec.curve == EllipticCurve::P384,
                _ => false,
            };
            algorithms.iter().any(curve_fits)
        }
        (AlgorithmParameters::OctetKeyPair(okp), Family::Ed) => okp.curve == EllipticCurve::Ed25519,
        (AlgorithmParameters::OctetKey(_), Family::Hmac) => true,
        _ => false,
    };
    if kty_fits {
        Ok(())
    } else {
        Err(format!("key type does not fit {family:?}"))
    }
}

/// Where a provider's keys come from.
pub enum KeySource {
    /// Fixed for the life of the configuration (a shared secret).
    Static(Arc<KeySet>),
    /// A JWKS file, re-read when it changes.
    File(Arc<JwksFile>),
    /// A JWKS URL, fetched in the background.
    Remote(Arc<RemoteJwks>),
}

impl KeySource {
    pub fn current(&self) -> Arc<KeySet> {
        match self {
            KeySource::Static(keys) => keys.clone(),
            KeySource::File(file) => file.current(),
            KeySource::Remote(remote) => remote.current(),
        }
    }
}

/// A JWKS document in a file, re-read when its content changes.
pub struct JwksFile {
    path: PathBuf,
    family: Family,
    algorithms: Vec<Algorithm>,
    keys: RwLock<Arc<KeySet>>,
    /// SHA-256 of the content last read (loaded or refused), to notice changes.
    digest: Mutex<[u8; 32]>,
}

impl JwksFile {
    /// Reads and parses the file; the error says what is wrong with it.
    pub fn load(
        path: &Path,
        family: Family,
        algorithms: Vec<Algorithm>,
    ) -> Result<JwksFile, String> {
        let content = std::fs::read(path).map_err(|error| match error.kind() {
            std::io::ErrorKind::NotFound => format!("no such file: {}", path.display()),
            _ => format!("cannot read {}: {error}", path.display()),
        })?;
        let keys = parse_logged(&content, path, family, &algorithms)
            .map_err(|message| format!("{}: {message}", path.display()))?;
        Ok(JwksFile {
            path: path.to_owned(),
            family,
            algorithms,
            keys: RwLock::new(Arc::new(keys)),
            digest: Mutex::new(sha256(&content)),
        })
    }

    pub fn current(&self) -> Arc<KeySet> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Re-reads the file and, when its content changed and is a usable key set, swaps
    /// the new keys in. Returns whether the keys were replaced.
    pub fn reload_if_changed(&self) -> bool {
        let content = match std::fs::read(&self.path) {
            Ok(content) => content,
            Err(error) => {
                tracing::warn!(file = %self.path.display(), %error, "cannot read jwks_file; keeping the last good keys");
                return false;
            }
        };
        let digest = sha256(&content);
        {
            let mut known = self.digest.lock().unwrap_or_else(|p| p.into_inner());
            if *known == digest {
                return false;
            }
            *known = digest;
        }
        match parse_logged(&content, &self.path, self.family, &self.algorithms) {
            Ok(keys) => {
                let count = keys.len();
                let mut current = self.keys.write().unwrap_or_else(|p| p.into_inner());
                *current = Arc::new(keys.keeping(&current));
                tracing::info!(file = %self.path.display(), keys = count, "JWKS file reloaded");
                true
            }
            Err(message) => {
                tracing::warn!(file = %self.path.display(), problem = message, "JWKS file refused; keeping the last good keys");
                false
            }
        }
    }

    /// Re-reads the file every `interval` for as long as `self` is in use.
    pub fn spawn_reloader(self: &Arc<Self>, interval: Duration) {
        crate::reload::poll(self, interval, |file| {
            file.reload_if_changed();
        });
    }
}

/// Parses a JWKS document, logging the keys that were skipped and why.
fn parse_logged(
    content: &[u8],
    path: &Path,
    family: Family,
    algorithms: &[Algorithm],
) -> Result<KeySet, String> {
    let mut skipped = Vec::new();
    let keys = KeySet::from_jwks(content, family, algorithms, &mut skipped)?;
    for reason in skipped {
        tracing::warn!(file = %path.display(), reason, "JWKS key skipped");
    }
    Ok(keys)
}

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
    keys: RwLock<Arc<KeySet>>,
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
            keys: RwLock::new(Arc::new(KeySet::default())),
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
        let mut current = self.keys.write().unwrap_or_else(|p| p.into_inner());
        if current.is_empty() {
            *current = keys;
        }
    }

    pub fn current(&self) -> Arc<KeySet> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
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
        let mut current = self.keys.write().unwrap_or_else(|p| p.into_inner());
        *current = Arc::new(keys.keeping(&current));
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

    #[test]
    fn keeps_only_keys_that_suit_the_provider() {
        let jwks = br#"{"keys":[
            {"kty":"RSA","kid":"rsa","use":"sig","alg":"RS256","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"},
            {"kty":"RSA","kid":"enc","use":"enc","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"},
            {"kty":"RSA","kid":"ps","alg":"PS256","n":"sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw","e":"AQAB"},
            {"kty":"oct","kid":"secret","k":"c2VjcmV0"},
            {"kty":"EC","kid":"ec","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
        ]}"#;
        let mut skipped = Vec::new();
        let keys = KeySet::from_jwks(jwks, Family::Rsa, &[Algorithm::RS256], &mut skipped).unwrap();
        assert_eq!(keys.len(), 1);
        assert!(keys.find(Some("rsa")).is_some());
        assert!(keys.find(Some("ps")).is_none());
        assert!(
            keys.find(None).is_some(),
            "the only key serves tokens without kid"
        );
        assert_eq!(skipped.len(), 4, "{skipped:?}");

        let mut skipped = Vec::new();
        let error = KeySet::from_jwks(jwks, Family::Ed, &[Algorithm::EdDSA], &mut skipped)
            .err()
            .unwrap();
        assert!(error.contains("no usable key"), "{error}");
    }
}
