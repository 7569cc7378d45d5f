//! Bearer tokens: strict JWT validation against the configured providers, claims mapped
//! to an identity, and a cache of verified tokens.
//!
//! A token is checked in this order, cheapest refusal first: size (8 KiB), header
//! (`alg` of the provider's one family, no `crit`), issuer (picks the provider), key
//! (by `kid`, refetching a remote key set once if the id is unknown), then signature and
//! claims: `exp`, `iss`, `aud` and `sub` required, `nbf` honoured, with the provider's
//! leeway. `jku`, `x5u` and embedded `jwk` headers are never used: keys come only from
//! the config. A verified token is remembered, keyed by HMAC-SHA-256 under a key drawn at
//! start-up, until it expires or its key leaves (or changes in) the key set.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::Value;

use crate::auth::binding::{self, Thumbprint};
use crate::auth::jwks::{KeySource, MAX_KEY_WAIT, VerifyingKey};
use crate::auth::outcome::Refusal;
use crate::clock::unix_now;
use crate::config::{AlgorithmError, ClaimNames, Family, parse_algorithms};
use crate::grpc::Reason;
use crate::identity::{AuthMethod, Claims, Principal, Sources};

/// Tokens longer than this are refused before any decoding.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// One configured issuer.
pub struct Provider {
    pub name: Arc<str>,
    issuer: String,
    family: Family,
    algorithms: Vec<Algorithm>,
    validation: Validation,
    pub keys: KeySource,
    claims: ClaimNames,
    tenant_optional: bool,
    forward_token: bool,
    require_cert_binding: bool,
    leeway: u64,
}

impl Provider {
    /// A provider for `config`; refused when its `algorithms` cannot be used.
    pub fn new(
        config: &crate::config::JwtProvider,
        keys: KeySource,
    ) -> Result<Provider, AlgorithmError> {
        let algorithms = parse_algorithms(&config.algorithms)?;
        let family = Family::of(&config.algorithms)?;
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms.clone();
        validation.leeway = config.leeway.get().as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_issuer(&[&config.issuer]);
        validation.set_audience(&config.audiences);
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        Ok(Provider {
            name: Arc::from(config.name.as_str()),
            issuer: config.issuer.clone(),
            family,
            algorithms,
            validation,
            keys,
            claims: config.claims.clone(),
            tenant_optional: config.tenant_optional,
            forward_token: config.forward_token,
            require_cert_binding: config.require_cert_binding,
            leeway: config.leeway.get().as_secs(),
        })
    }

    fn identity(&self, claims: &Value) -> Result<Principal, Refusal> {
        let text = |path: &str| -> Option<String> {
            match claim(claims, path)? {
                Value::String(text) => Some(text.clone()),
                Value::Number(number) => Some(number.to_string()),
                _ => None,
            }
        };
        let tenant_id = text(&self.claims.tenant_id);
        if tenant_id.is_none() && !self.tenant_optional {
            return Err(Refusal::unauthenticated(
                Reason::MissingTenant,
                format!("token has no {} claim", self.claims.tenant_id),
            ));
        }
        let roles = match claim(claims, &self.claims.roles) {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|item| item.as_str().map(str::to_owned))
                .collect(),
            Some(Value::String(spaced)) => spaced.split_whitespace().map(str::to_owned).collect(),
            _ => Vec::new(),
        };
        let sources = Sources {
            user_id: &self.claims.user_id,
            tenant_id: &self.claims.tenant_id,
            roles: &self.claims.roles,
        };
        let claims = Claims {
            user_id: text(&self.claims.user_id),
            tenant_id,
            roles,
            api_key_name: None,
            provider: Some(self.name.clone()),
        };
        Ok(Principal::from_sources(sources, AuthMethod::Jwt, claims)?)
    }
}

/// A claim by name or dotted path (`realm.tenant`).
fn claim<'a>(claims: &'a Value, path: &str) -> Option<&'a Value> {
    if let Some(value) = claims.get(path) {
        return Some(value);
    }
    path.split('.')
        .try_fold(claims, |value, part| value.get(part))
}

/// A token that passed, whether the app should still see it, and the certificate it is
/// bound to, which [`binding::check`] compares with the connection's on every call.
#[derive(Clone, Debug)]
pub struct Verified {
    pub principal: Arc<Principal>,
    pub forward_token: bool,
    /// `cnf.x5t#S256`, when the token carries it.
    pub bound_to: Option<Thumbprint>,
    /// The provider's `require_cert_binding`.
    pub binding_required: bool,
    /// `exp` plus the provider's leeway, in seconds since the Unix epoch: from then on
    /// the token is refused, and a call it admitted that is still open ends.
    pub expires_at: u64,
}

/// Checks bearer tokens against every configured provider.
pub struct JwtVerifier {
    pub providers: Vec<Provider>,
    cache: Option<TokenCache>,
}

impl JwtVerifier {
    pub fn new(providers: Vec<Provider>, cache_size: usize) -> JwtVerifier {
        let cache = (cache_size > 0).then(|| TokenCache::new(cache_size));
        JwtVerifier { providers, cache }
    }

    /// Takes over the key sets of `running`, the verifier a configuration reload
    /// replaces. A provider (matched by name) whose remote key source is unchanged keeps
    /// the running source itself: its keys, its background refresher and its refetch
    /// limits. A provider whose remote source changed starts with the running keys of
    /// the same family and serves them until its own first fetch succeeds. Without
    /// this, a reload while the issuer is down would leave every JWT call refused.
    pub fn take_over_keys(&mut self, running: &JwtVerifier) {
        for provider in &mut self.providers {
            let Some(previous) = running.providers.iter().find(|p| p.name == provider.name) else {
                continue;
            };
            let KeySource::Remote(remote) = &provider.keys else {
                continue;
            };
            match &previous.keys {
                KeySource::Remote(old) if old.same_source(remote) => {
                    provider.keys = KeySource::Remote(old.clone());
                }
                old if previous.family == provider.family => {
                    let keys = old.current();
                    if !keys.is_empty() {
                        remote.seed(keys);
                    }
                }
                _ => {}
            }
        }
    }

    /// Checks a token, waiting at most [`MAX_KEY_WAIT`] for a key set fetch.
    pub async fn verify(&self, token: &str) -> Result<Verified, Refusal> {
        self.verify_within(token, MAX_KEY_WAIT).await
    }

    /// Checks a token; a token naming a key id that is not (yet) in its provider's key
    /// set waits at most `wait` for a fetch that may bring it.
    pub async fn verify_within(&self, token: &str, wait: Duration) -> Result<Verified, Refusal> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Refusal::unauthenticated(
                Reason::TokenTooLarge,
                "token too large",
            ));
        }
        let now = unix_now();
        if let Some(verified) = self.cache.as_ref().and_then(|cache| cache.get(token, now)) {
            return Ok(verified);
        }
        let malformed = || Refusal::unauthenticated(Reason::MalformedToken, "malformed token");
        let header = jsonwebtoken::decode_header(token).map_err(|_| {
            if names_unknown_algorithm(token) {
                Refusal::unauthenticated(Reason::BadAlgorithm, "algorithm not allowed")
            } else {
                malformed()
            }
        })?;
        if header.crit.is_some() {
            return Err(Refusal::unauthenticated(
                Reason::CriticalHeader,
                "token has critical header parameters",
            ));
        }
        let provider = self.provider_for(token).ok_or_else(malformed)??;
        if !provider.algorithms.contains(&header.alg) {
            return Err(Refusal::unauthenticated(
                Reason::BadAlgorithm,
                "algorithm not allowed",
            ));
        }
        let key = self.key(provider, header.kid.as_deref(), wait).await?;
        let data = jsonwebtoken::decode::<Value>(token, &key.key, &provider.validation)
            .map_err(|error| refusal_for(error.kind()))?;
        let principal = Arc::new(provider.identity(&data.claims)?);
        // Validation required a numeric `exp`; a token without one never gets here.
        let exp = data
            .claims
            .get("exp")
            .and_then(unix_seconds)
            .ok_or_else(|| {
                Refusal::unauthenticated(Reason::MissingClaim, "token has no exp claim")
            })?;
        let expires_at = exp.saturating_add(provider.leeway);
        let verified = Verified {
            principal,
            forward_token: provider.forward_token,
            bound_to: binding::thumbprint(&data.claims)?,
            binding_required: provider.require_cert_binding,
            expires_at,
        };
        if let Some(cache) = &self.cache {
            cache.insert(
                token,
                verified.clone(),
                expires_at,
                Arc::downgrade(&key),
                now,
            );
        }
        Ok(verified)
    }

    /// The provider whose issuer the (not yet verified) payload names. `None` when the
    /// payload cannot be read; an error when no provider has that issuer.
    fn provider_for(&self, token: &str) -> Option<Result<&Provider, Refusal>> {
        #[derive(serde::Deserialize)]
        struct Issuer {
            iss: Option<Value>,
        }
        let payload = token.split('.').nth(1)?;
        let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
        let issuer: Issuer = serde_json::from_slice(&bytes).ok()?;
        let found = match issuer.iss {
            Some(Value::String(iss)) => self.providers.iter().find(|p| p.issuer == iss),
            // No issuer: let the only provider's validation say what is missing.
            None if self.providers.len() == 1 => self.providers.first(),
            _ => None,
        };
        Some(found.ok_or_else(|| Refusal::unauthenticated(Reason::WrongIssuer, "wrong issuer")))
    }

    async fn key(
        &self,
        provider: &Provider,
        kid: Option<&str>,
        wait: Duration,
    ) -> Result<Arc<VerifyingKey>, Refusal> {
        if let Some(key) = provider.keys.current().find(kid) {
            return Ok(key.clone());
        }
        if let (KeySource::Remote(remote), Some(_)) = (&provider.keys, kid)
            && remote.refetch_for_unknown_kid(wait).await
            && let Some(key) = provider.keys.current().find(kid)
        {
            return Ok(key.clone());
        }
        Err(match kid {
            Some(_) => Refusal::unauthenticated(Reason::UnknownKeyId, "unknown key id"),
            None => Refusal::unauthenticated(
                Reason::UnknownKeyId,
                "token names no key id and the provider has several keys",
            ),
        })
    }
}

/// How long a call may wait for a key set fetch: [`MAX_KEY_WAIT`], or less when the
/// call's deadline is sooner.
pub fn key_wait(deadline: Option<crate::grpc::Deadline>) -> Duration {
    deadline.map_or(MAX_KEY_WAIT, |deadline| {
        deadline.remaining().min(MAX_KEY_WAIT)
    })
}

/// Whether an unreadable header at least names an `alg`, one gatehouse does not
/// implement (`none` above all): worth saying so rather than "malformed".
fn names_unknown_algorithm(token: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Alg {
        alg: String,
    }
    let Some(header) = token.split('.').next() else {
        return false;
    };
    let alg = URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|json| serde_json::from_slice::<Alg>(&json).ok());
    alg.is_some_and(|alg| Algorithm::from_str(&alg.alg).is_err())
}

/// A NumericDate claim in whole seconds: an integer, or a non-negative fraction cut down.
fn unix_seconds(value: &Value) -> Option<u64> {
    value.as_u64().or_else(|| {
        value
            .as_f64()
            .filter(|seconds| seconds.is_finite() && *seconds >= 0.0)
            .map(|seconds| seconds as u64)
    })
}

fn refusal_for(kind: &ErrorKind) -> Refusal {
    match kind {
        ErrorKind::ExpiredSignature => {
            Refusal::unauthenticated(Reason::TokenExpired, "token expired")
        }
        ErrorKind::ImmatureSignature => {
            Refusal::unauthenticated(Reason::TokenNotYetValid, "token not yet valid")
        }
        ErrorKind::InvalidAudience => {
            Refusal::unauthenticated(Reason::WrongAudience, "wrong audience")
        }
        ErrorKind::InvalidIssuer => Refusal::unauthenticated(Reason::WrongIssuer, "wrong issuer"),
        ErrorKind::InvalidSignature => {
            Refusal::unauthenticated(Reason::BadSignature, "bad signature")
        }
        ErrorKind::MissingRequiredClaim(claim) => {
            Refusal::unauthenticated(Reason::MissingClaim, format!("token has no {claim} claim"))
        }
        ErrorKind::InvalidClaimFormat(claim) => {
            Refusal::unauthenticated(Reason::MalformedClaim, format!("malformed {claim} claim"))
        }
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::MissingAlgorithm => {
            Refusal::unauthenticated(Reason::BadAlgorithm, "algorithm not allowed")
        }
        _ => Refusal::unauthenticated(Reason::MalformedToken, "malformed token"),
    }
}

struct CacheEntry {
    /// The token's signature (its last segment): a hit needs the same bytes (compared in
    /// constant time) as well as the same hash of the whole token, so two tokens that share
    /// a hash can only miss, never pass for each other.
    signature: Box<[u8]>,
    verified: Verified,
    valid_until: u64,
    /// Dead once the key leaves the key set (a refresh replaces the set).
    key: Weak<VerifyingKey>,
}

/// Verified tokens, bounded, keyed by SipHash-1-3 of the token (`std`'s `RandomState`)
/// under a 128-bit key drawn from the operating system at start-up, and holding the token's
/// signature. The hash only finds the entry; a hit also needs the stored signature to equal
/// the caller's, compared in constant time. A verified token's signature is unique to it,
/// so passing for a cached token means presenting its signature over other claims *and*
/// hitting its hash under a key the caller never sees: one chance in 2^64 per call. A
/// collision otherwise only makes a token miss the cache and be checked in full.
///
/// Only the signature is kept, not the token: its size is set by the algorithm and key
/// (342 bytes for RS256 with a 2048-bit key, 683 with 4096, 86 for ES256), not by the
/// claims an issuer puts in, so 10,000 RS256 entries hold 3.4 MB of signatures.
///
/// Before, the key was the first 128 bits of HMAC-SHA-256 of the token, and the tokens
/// were not kept: 23,000 instructions for an 800-byte token, an eighth of a proxied call
/// (`bench/callgrind`). SipHash and the comparison cost about 2,000.
///
/// A maintained concurrent cache was measured against this one (`quick_cache` 0.7,
/// `moka` 0.12 with only `sync`): a hit took 65 to 67 ns with `quick_cache`, 67 to 78
/// with this map, 260 with `moka`; `moka` brings 22 crates and 0.2 MB of binary,
/// `quick_cache` 2 crates and 40 KB. Neither is faster, so this map stays: a dependency
/// for no measured gain.
struct TokenCache {
    capacity: usize,
    hasher: std::hash::RandomState,
    entries: RwLock<HashMap<u64, CacheEntry>>,
}

impl TokenCache {
    fn new(capacity: usize) -> TokenCache {
        TokenCache {
            capacity,
            hasher: std::hash::RandomState::new(),
            entries: RwLock::new(HashMap::new()),
        }
    }

    fn key(&self, token: &str) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(token.as_bytes())
    }

    fn get(&self, token: &str, now: u64) -> Option<Verified> {
        let key = self.key(token);
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        let entry = entries.get(&key)?;
        let same =
            aws_lc_rs::constant_time::verify_slices_are_equal(&entry.signature, signature(token));
        (same.is_ok() && now < entry.valid_until && entry.key.strong_count() > 0)
            .then(|| entry.verified.clone())
    }

    fn insert(
        &self,
        token: &str,
        verified: Verified,
        valid_until: u64,
        key: Weak<VerifyingKey>,
        now: u64,
    ) {
        let hash = self.key(token);
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= self.capacity {
            // A full cache is swept once, then left an eighth short, so the next full
            // sweep is `capacity / 8` inserts away: a caller cycling through many valid
            // tokens costs a constant amount per insert under the lock, not a scan of
            // every entry while everyone's cached checks wait.
            entries.retain(|_, entry| now < entry.valid_until && entry.key.strong_count() > 0);
            let room = self.capacity - self.capacity / 8;
            if entries.len() >= room {
                let surplus = entries.len() + 1 - room;
                let victims: Vec<u64> = entries.keys().take(surplus).copied().collect();
                for victim in victims {
                    entries.remove(&victim);
                }
            }
        }
        entries.insert(
            hash,
            CacheEntry {
                signature: signature(token).into(),
                verified,
                valid_until,
                key,
            },
        );
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.read().unwrap().len()
    }
}

/// The last dot-separated segment of a compact JWS: its signature.
fn signature(token: &str) -> &[u8] {
    token
        .rsplit_once('.')
        .map_or(token, |(_, signature)| signature)
        .as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::jwks::KeySet;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;
    use std::future::Future as _;

    const SECRET: &[u8] = b"a development secret that is long enough";

    fn provider(yaml_extra: &str) -> Provider {
        let yaml = format!(
            "{{ name: dev, issuer: https://issuer.test, audiences: [svc], algorithms: [HS256], secret_file: /unused{yaml_extra} }}"
        );
        let config: crate::config::JwtProvider = serde_saphyr::from_str(&yaml).unwrap();
        Provider::new(&config, KeySource::Static(Arc::new(KeySet::secret(SECRET)))).unwrap()
    }

    fn verifier() -> JwtVerifier {
        JwtVerifier::new(vec![provider("")], 100)
    }

    fn claims() -> Value {
        json!({"iss": "https://issuer.test", "aud": "svc", "sub": "user-1", "exp": unix_now() + 600,
               "tenant_id": "acme", "roles": ["reader", "writer"]})
    }

    fn sign(claims: &Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(future)
    }

    #[test]
    fn accepts_a_valid_token_and_maps_its_claims() {
        let verified = block_on(verifier().verify(&sign(&claims()))).unwrap();
        let principal = verified.principal;
        assert_eq!(principal.user_id.as_deref(), Some("user-1"));
        assert_eq!(principal.tenant_id.as_deref(), Some("acme"));
        assert_eq!(principal.roles, ["reader", "writer"]);
        assert!(verified.forward_token);
    }

    #[test]
    fn refuses_bad_tokens_with_a_reason() {
        let verifier = verifier();
        let mut cases: Vec<(&str, String)> = Vec::new();
        let with = |f: &dyn Fn(&mut Value)| {
            let mut c = claims();
            f(&mut c);
            sign(&c)
        };
        cases.push((
            "token_expired",
            with(&|c| c["exp"] = json!(unix_now() - 3600)),
        ));
        cases.push((
            "token_not_yet_valid",
            with(&|c| c["nbf"] = json!(unix_now() + 3600)),
        ));
        cases.push(("wrong_audience", with(&|c| c["aud"] = json!("other"))));
        cases.push((
            "wrong_issuer",
            with(&|c| c["iss"] = json!("https://evil.test")),
        ));
        cases.push((
            "missing_claim",
            with(&|c| drop(c.as_object_mut().unwrap().remove("exp"))),
        ));
        cases.push((
            "missing_claim",
            with(&|c| drop(c.as_object_mut().unwrap().remove("sub"))),
        ));
        // A string `exp` is not a time: refused as if absent.
        cases.push((
            "missing_claim",
            with(&|c| c["exp"] = json!((unix_now() + 600).to_string())),
        ));
        cases.push((
            "missing_tenant",
            with(&|c| drop(c.as_object_mut().unwrap().remove("tenant_id"))),
        ));
        let good = sign(&claims());
        let (head, rest) = good.split_once('.').unwrap();
        let (_, signature) = rest.split_once('.').unwrap();
        let forged_payload =
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&json!({"sub": "admin"})).unwrap());
        cases.push((
            "bad_signature",
            format!("{head}.{forged_payload}.{signature}"),
        ));
        cases.push(("malformed_token", "not.a.token".to_owned()));
        cases.push(("token_too_large", "x".repeat(MAX_TOKEN_BYTES + 1)));
        let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        cases.push((
            "bad_algorithm",
            format!("{none_header}.{}.", rest.split_once('.').unwrap().0),
        ));
        let crit_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","crit":["exp"]}"#);
        cases.push(("crit_header", format!("{crit_header}.{rest}")));
        for (reason, token) in cases {
            let refusal = block_on(verifier.verify(&token)).unwrap_err();
            assert_eq!(refusal.reason.label(), reason, "{token}: {refusal:?}");
            assert_eq!(refusal.code, crate::grpc::Code::Unauthenticated);
        }
    }

    #[test]
    fn caches_verified_tokens_until_they_expire() {
        let verifier = verifier();
        let token = sign(&claims());
        block_on(verifier.verify(&token)).unwrap();
        assert_eq!(verifier.cache.as_ref().unwrap().len(), 1);
        let again = block_on(verifier.verify(&token)).unwrap();
        assert_eq!(again.principal.user_id.as_deref(), Some("user-1"));
        assert!(
            verifier
                .cache
                .as_ref()
                .unwrap()
                .get(&token, unix_now() + 10_000)
                .is_none(),
            "expired entries are not served"
        );
    }

    #[test]
    fn a_token_sharing_a_cached_tokens_hash_is_not_admitted() {
        let verifier = verifier();
        let cache = verifier.cache.as_ref().unwrap();
        let token = sign(&claims());
        block_on(verifier.verify(&token)).unwrap();
        // Make another token collide with the cached one: move its entry to the other
        // token's hash, as if the two hashed alike.
        let forged = format!("{token}x");
        {
            let mut entries = cache.entries.write().unwrap();
            let entry = entries.remove(&cache.key(&token)).unwrap();
            entries.insert(cache.key(&forged), entry);
        }
        assert!(
            cache.get(&forged, unix_now()).is_none(),
            "a hash match alone is a hit"
        );
        assert!(
            block_on(verifier.verify(&forged)).is_err(),
            "the forged token is checked in full and refused"
        );
        assert!(
            cache.get(&token, unix_now()).is_none(),
            "the real token is only a miss"
        );
        block_on(verifier.verify(&token)).unwrap();
        assert!(
            cache.get(&token, unix_now()).is_some(),
            "checked again and cached"
        );
    }

    #[test]
    fn the_cache_stays_bounded() {
        let verifier = JwtVerifier::new(vec![provider("")], 3);
        for i in 0..10 {
            let mut c = claims();
            c["sub"] = json!(format!("user-{i}"));
            block_on(verifier.verify(&sign(&c))).unwrap();
        }
        assert!(verifier.cache.as_ref().unwrap().len() <= 3);
    }

    #[test]
    fn a_full_cache_makes_room_for_an_eighth_at_once() {
        let verifier = JwtVerifier::new(vec![provider("")], 16);
        let cache = verifier.cache.as_ref().unwrap();
        let token = |i: usize| {
            let mut c = claims();
            c["sub"] = json!(format!("user-{i}"));
            sign(&c)
        };
        for i in 0..16 {
            block_on(verifier.verify(&token(i))).unwrap();
        }
        assert_eq!(cache.len(), 16, "every live token cached");
        let newest = token(16);
        block_on(verifier.verify(&newest)).unwrap();
        assert_eq!(cache.len(), 14, "two evicted, the new one in");
        assert!(
            cache.get(&newest, unix_now()).is_some(),
            "the new token is cached"
        );
        block_on(verifier.verify(&token(17))).unwrap();
        assert_eq!(
            cache.len(),
            15,
            "the next insert finds room without a sweep"
        );
    }

    #[test]
    fn reads_nested_claims_and_space_separated_roles() {
        let provider = provider(", claims: { tenant_id: realm.tenant, roles: scope }");
        let claims = json!({"sub": "u", "realm": {"tenant": "globex"}, "scope": "read write"});
        let principal = provider.identity(&claims).unwrap();
        assert_eq!(principal.tenant_id.as_deref(), Some("globex"));
        assert_eq!(principal.roles, ["read", "write"]);
    }

    /// An HS256 JWKS document whose keys are `(kid, secret)`.
    fn oct_jwks(keys: &[(&str, &[u8])]) -> String {
        let keys: Vec<Value> = keys
            .iter()
            .map(|(kid, secret)| {
                json!({"kty": "oct", "kid": kid, "alg": "HS256", "k": URL_SAFE_NO_PAD.encode(secret)})
            })
            .collect();
        json!({ "keys": keys }).to_string()
    }

    fn sign_with(kid: &str, secret: &[u8], claims: &Value) -> String {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(kid.to_owned());
        encode(&header, claims, &EncodingKey::from_secret(secret)).unwrap()
    }

    fn provider_with(keys: KeySource) -> Provider {
        let yaml = "{ name: dev, issuer: https://issuer.test, audiences: [svc], algorithms: [HS256], jwks_file: /unused }";
        let config: crate::config::JwtProvider = serde_saphyr::from_str(yaml).unwrap();
        Provider::new(&config, keys).unwrap()
    }

    const OTHER_SECRET: &[u8] = b"another development secret, also long enough";

    #[test]
    fn a_key_set_change_keeps_cached_tokens_whose_key_is_unchanged() {
        use crate::auth::jwks::JwksFile;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, oct_jwks(&[("k1", SECRET)])).unwrap();
        let file = Arc::new(JwksFile::load(&path, Family::Hmac, vec![Algorithm::HS256]).unwrap());
        let verifier = JwtVerifier::new(vec![provider_with(KeySource::File(file.clone()))], 100);
        let cache = verifier.cache.as_ref().unwrap();
        let token = sign_with("k1", SECRET, &claims());
        block_on(verifier.verify(&token)).unwrap();
        assert!(
            cache.get(&token, unix_now()).is_some(),
            "verified and cached"
        );

        // A new key joins, k1 stays as it was: the cached token stays cached.
        std::fs::write(&path, oct_jwks(&[("k1", SECRET), ("k2", OTHER_SECRET)])).unwrap();
        assert!(file.reload_if_changed(), "the new file was loaded");
        assert_eq!(file.current().len(), 2);
        assert!(
            cache.get(&token, unix_now()).is_some(),
            "a refresh that left k1 alone emptied its cache entry"
        );
        let k2 = sign_with("k2", OTHER_SECRET, &claims());
        assert!(
            block_on(verifier.verify(&k2)).is_ok(),
            "the new key verifies"
        );

        // k1 now names different key material: its cached tokens are checked again, and
        // fail against the new key.
        std::fs::write(
            &path,
            oct_jwks(&[("k1", OTHER_SECRET), ("k2", OTHER_SECRET)]),
        )
        .unwrap();
        assert!(file.reload_if_changed());
        assert!(
            cache.get(&token, unix_now()).is_none(),
            "a changed key kept its cache entry"
        );
        let refusal = block_on(verifier.verify(&token)).unwrap_err();
        assert_eq!(refusal.reason.label(), "bad_signature");

        // A broken file changes nothing.
        std::fs::write(&path, "{ not json").unwrap();
        assert!(!file.reload_if_changed());
        assert!(
            block_on(verifier.verify(&k2)).is_ok(),
            "the last good keys serve on"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_arriving_during_an_unknown_kid_fetch_wait_for_it() {
        use crate::auth::jwks::RemoteJwks;
        use rustls::pki_types::pem::PemObject;
        let server = crate::test_util::JwksServer::start().await;
        server.publish("/jwks", oct_jwks(&[("k1", SECRET)]));
        server.hold_answers();
        let ca = rustls::pki_types::CertificateDer::pem_file_iter(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("certs-dev/ca.crt"),
        )
        .unwrap()
        .map(Result::unwrap)
        .collect();
        let remote = RemoteJwks::new(
            &server.url("/jwks"),
            ca,
            Family::Hmac,
            vec![Algorithm::HS256],
            Duration::from_secs(300),
            Duration::from_secs(30),
        )
        .unwrap();
        let verifier = Arc::new(JwtVerifier::new(
            vec![provider_with(KeySource::Remote(Arc::new(remote)))],
            100,
        ));
        let token = sign_with("k1", SECRET, &claims());

        // The first call names a key id the (empty) set lacks: a fetch starts, and the
        // server holds its answer.
        let first = tokio::spawn({
            let (verifier, token) = (verifier.clone(), token.clone());
            async move { verifier.verify(&token).await }
        });
        server.until_fetched("/jwks", 1).await;

        // A second call while the fetch is in flight waits for it instead of failing.
        let mut second = Box::pin(verifier.verify(&token));
        let polled = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(second.as_mut().poll(cx).map(|r| r.map(|_| ())))
        })
        .await;
        assert!(
            polled.is_pending(),
            "a call during the fetch did not wait for it: {polled:?}"
        );
        // A call that may not wait (its deadline is about up) is refused at once.
        let hurried = verifier
            .verify_within(&token, Duration::from_millis(1))
            .await;
        assert_eq!(hurried.unwrap_err().reason.label(), "unknown_kid");

        server.release_answers(1);
        let second = second.await;
        assert!(second.is_ok(), "{second:?}");
        assert!(first.await.unwrap().is_ok());
        assert_eq!(
            server.fetches("/jwks"),
            1,
            "the waiting calls caused fetches of their own"
        );
    }
}
