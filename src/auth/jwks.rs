//! Verification keys for a JWT provider: a JWKS file, a JWKS URL fetched over HTTPS in
//! the background, or a shared HMAC secret.
//!
//! A remote key set is refreshed every `refresh_interval` (sooner if the issuer's
//! `Cache-Control: max-age` says so), and again when a token names a key id that is not
//! in the set, which is how key rotation is picked up between refreshes. Those extra
//! fetches are single-flight and at most one per `min_refresh_interval`, so a flood of
//! made-up key ids cannot turn gatehouse into a load generator against the issuer. When
//! the issuer is down, the last good key set keeps serving.

use std::collections::HashMap;
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

use crate::auth::jwt::Family;

/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// Time one fetch may take, connect to last byte.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// One verification key.
pub struct VerifyingKey {
    pub kid: Option<String>,
    pub key: DecodingKey,
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
            let key = Arc::new(VerifyingKey {
                kid: kid.clone(),
                key,
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
    Static(Arc<KeySet>),
    Remote(Arc<RemoteJwks>),
}

impl KeySource {
    pub fn current(&self) -> Arc<KeySet> {
        match self {
            KeySource::Static(keys) => keys.clone(),
            KeySource::Remote(remote) => remote.current(),
        }
    }
}

/// A JWKS document fetched over HTTPS.
pub struct RemoteJwks {
    url: Uri,
    host: String,
    port: u16,
    tls: tokio_rustls::TlsConnector,
    family: Family,
    algorithms: Vec<Algorithm>,
    refresh_interval: Duration,
    min_refresh_interval: Duration,
    keys: RwLock<Arc<KeySet>>,
    /// When the last fetch started; fetches for unknown key ids wait this long apart.
    last_fetch: Mutex<Option<Instant>>,
    /// Makes concurrent refetches share one request.
    fetching: tokio::sync::Mutex<()>,
    /// Woken whenever a key set is loaded.
    loaded: tokio::sync::Notify,
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
        for cert in extra_roots {
            roots
                .add(cert)
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
            family,
            algorithms,
            refresh_interval,
            min_refresh_interval,
            keys: RwLock::new(Arc::new(KeySet::default())),
            last_fetch: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
            loaded: tokio::sync::Notify::new(),
        })
    }

    pub fn current(&self) -> Arc<KeySet> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Fetches now; on success the new keys serve from the next call. Returns the
    /// `max-age` the issuer asked for, if any.
    pub async fn refresh(&self) -> Result<Option<Duration>, String> {
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
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
        self.loaded.notify_waiters();
        Ok(max_age)
    }

    /// Called when a token names a key id not in the set: fetches again unless a fetch
    /// happened within `min_refresh_interval`, sharing one fetch among concurrent
    /// callers. Returns whether the set may have changed.
    pub async fn refetch_for_unknown_kid(&self) -> bool {
        let recently = |this: &Self| {
            this.last_fetch
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some_and(|at| at.elapsed() < this.min_refresh_interval)
        };
        if recently(self) {
            return false;
        }
        let Ok(_only_fetch) = self.fetching.try_lock() else {
            // Another call is fetching: wait for it and use its result.
            let _done = self.fetching.lock().await;
            return true;
        };
        if recently(self) {
            return false;
        }
        match self.refresh().await {
            Ok(_) => true,
            Err(error) => {
                tracing::warn!(url = %self.url, %error, "JWKS refetch failed; keeping the last good keys");
                false
            }
        }
    }

    /// Waits until a key set has been loaded, at most `limit`.
    pub async fn wait_loaded(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            let loaded = self.loaded.notified();
            if !self.current().is_empty() {
                return true;
            }
            if tokio::time::timeout_at(deadline, loaded).await.is_err() {
                return false;
            }
        }
    }

    /// Keeps the key set fresh in the background for as long as `self` is in use.
    pub fn spawn_refresher(self: &Arc<Self>) {
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
