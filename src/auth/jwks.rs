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

mod remote;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

use crate::config::Family;
use crate::reload::{Current, Stamps};
use crate::sha256::sha256;

pub use remote::RemoteJwks;

/// Longest a call waits for a key set fetch that may bring the key its token names; the
/// call's own deadline, when shorter, bounds the wait too. A fetch cannot take longer.
pub const MAX_KEY_WAIT: Duration = remote::FETCH_TIMEOUT;

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
    keys: Current<KeySet>,
    /// SHA-256 of the content last read (loaded or refused), to notice changes.
    digest: Mutex<[u8; 32]>,
    /// What `stat` said about the file at the last poll: unchanged, it is not read.
    stamps: Stamps,
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
            keys: Current::new(Arc::new(keys)),
            digest: Mutex::new(sha256(&content)),
            stamps: Stamps::default(),
        })
    }

    pub fn current(&self) -> Arc<KeySet> {
        self.keys.get()
    }

    /// Re-reads the file and, when its content changed and is a usable key set, swaps
    /// the new keys in. Returns whether the keys were replaced.
    pub fn reload_if_changed(&self) -> bool {
        if self.stamps.unchanged([self.path.as_path()]) {
            return false;
        }
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
                self.keys.update(|current| Arc::new(keys.keeping(current)));
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

#[cfg(test)]
mod tests {
    use super::*;

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
