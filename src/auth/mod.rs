//! Credentials to identity to decision: who is calling (a JWT, an API key, or only the
//! client certificate), and whether they may call this method.
//!
//! [`Authenticator::admit`] is the whole decision for one request, applied by
//! `middleware::auth`. It runs after caller-sent identity headers were stripped and
//! ends by setting the verified ones.

pub mod api_key;
pub mod binding;
pub mod jwks;
pub mod jwt;
pub mod policy;
pub mod principal;
pub mod token;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::AUTHORIZATION;
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue};
use tokio_util::sync::CancellationToken;

use crate::body::CredentialsEnd;
use crate::config::{self, Config, Family, MethodPattern, Problem};
use crate::grpc::Reason;
use crate::server::ConnectionInfo;
use api_key::ApiKeyStore;
use jwks::{JwksFile, KeySet, KeySource, RemoteJwks};
use jwt::{JwtVerifier, Provider};
use policy::Policy;
use principal::{AuthMethod, AuthOutcome, DecidingRule, Principal, Refusal, X_API_KEY};

/// How often `auth.api_keys.keys_file` and `jwks_file`s are checked for changes.
const KEYS_FILE_POLL: Duration = Duration::from_secs(1);

/// The configured authentication and authorization.
pub struct Authenticator {
    /// `None`: no `auth` section, the client certificate is the only credential.
    credentials: Option<Credentials>,
    policy: Policy,
}

struct Credentials {
    public: Vec<MethodPattern>,
    jwt: Option<JwtVerifier>,
    api_keys: Option<Arc<ApiKeyStore>>,
    /// `auth.expire_open_calls`.
    expire_open_calls: bool,
}

/// What ends the credentials an admitted call was let in with (`auth.expire_open_calls`).
#[derive(Clone, Debug, Default)]
pub struct Lifetime {
    /// A token's `exp` plus leeway, or an API key's `not_after`, and what that means.
    pub expires: Option<(SystemTime, CredentialsEnd)>,
    /// The API key's revocation signal.
    pub revoked: Option<CancellationToken>,
}

impl Authenticator {
    /// Builds from the config, reading every file it names (key sets, secrets, keys
    /// files); problems name their fields. Remote key sets are fetched by [`start`].
    ///
    /// [`start`]: Authenticator::start
    pub fn build(config: &Config) -> Result<Authenticator, Vec<Problem>> {
        let policy = Policy::new(&config.tls, config.authorization.as_ref())?;
        let Some(auth) = &config.auth else {
            return Ok(Authenticator {
                credentials: None,
                policy,
            });
        };
        let mut problems = Vec::new();
        let public = config::parse_all(
            &auth.public_methods,
            "auth.public_methods",
            MethodPattern::parse,
            &mut problems,
        );
        let jwt = auth.jwt.as_ref().map(|jwt| {
            let providers = jwt
                .providers
                .iter()
                .enumerate()
                .filter_map(|(i, provider)| match build_provider(provider) {
                    Ok(provider) => Some(provider),
                    Err(problem) => {
                        problems.push(Problem::new(
                            format!("auth.jwt.providers[{i}].{}", problem.field),
                            problem.message,
                        ));
                        None
                    }
                })
                .collect();
            JwtVerifier::new(providers, jwt.cache_size)
        });
        let api_keys = match auth.api_keys.as_ref().map(ApiKeyStore::load).transpose() {
            Ok(store) => store.map(Arc::new),
            Err(more) => {
                problems.extend(more);
                None
            }
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Authenticator {
            credentials: Some(Credentials {
                public,
                jwt,
                api_keys,
                expire_open_calls: auth.expire_open_calls,
            }),
            policy,
        })
    }

    /// Fetches remote key sets (waiting a few seconds at most, so an issuer that is down
    /// does not stop the sidecar from starting) and starts the background refreshers.
    pub async fn start(&self) {
        let Some(credentials) = &self.credentials else {
            return;
        };
        if let Some(api_keys) = &credentials.api_keys {
            api_keys.spawn_reloader(KEYS_FILE_POLL);
        }
        for provider in credentials.jwt.iter().flat_map(|jwt| &jwt.providers) {
            if let KeySource::File(file) = &provider.keys {
                file.spawn_reloader(KEYS_FILE_POLL);
            }
            if let KeySource::Remote(remote) = &provider.keys {
                remote.spawn_refresher();
                if !remote.wait_loaded(Duration::from_secs(5)).await {
                    tracing::warn!(provider = %provider.name, "JWKS not loaded yet; tokens of this provider are refused until it is");
                }
            }
        }
    }

    /// Takes over the key sets of `running`, the authenticator a reload replaces (see
    /// [`JwtVerifier::take_over_keys`]). Call it before [`start`](Authenticator::start).
    pub fn take_over_keys(&mut self, running: &Authenticator) {
        let new = self.credentials.as_mut().and_then(|c| c.jwt.as_mut());
        let old = running.credentials.as_ref().and_then(|c| c.jwt.as_ref());
        if let (Some(new), Some(old)) = (new, old) {
            new.take_over_keys(old);
        }
        // Calls admitted with a key the new configuration drops end now; calls with a
        // key it keeps stay watched by the new store.
        let new = self.credentials.as_ref().and_then(|c| c.api_keys.as_ref());
        let old = running
            .credentials
            .as_ref()
            .and_then(|c| c.api_keys.as_ref());
        match (new, old) {
            (Some(new), Some(old)) => new.take_over(old),
            (None, Some(old)) => old.revoke_all(),
            _ => {}
        }
    }

    /// Providers whose remote key set has not loaded yet.
    pub fn providers_without_keys(&self) -> Vec<String> {
        let providers = self
            .credentials
            .iter()
            .flat_map(|c| &c.jwt)
            .flat_map(|jwt| &jwt.providers);
        providers
            .filter(|provider| matches!(&provider.keys, KeySource::Remote(remote) if remote.current().is_empty()))
            .map(|provider| provider.name.clone())
            .collect()
    }

    /// Decides one request: on success the verified identity headers are set, the API
    /// key header is gone and `authorization` is kept only if the provider forwards it.
    ///
    /// Either way the [`AuthOutcome`] says how the caller tried to authenticate, for the
    /// layers that log and count.
    pub async fn admit(&self, request: &mut Parts) -> Result<AuthOutcome, (AuthOutcome, Refusal)> {
        self.admit_call(request).await.map(|(outcome, _)| outcome)
    }

    /// [`admit`](Authenticator::admit), and for a call admitted with a token or an API
    /// key (unless `auth.expire_open_calls` is false), what ends its credentials.
    pub async fn admit_call(
        &self,
        request: &mut Parts,
    ) -> Result<(AuthOutcome, Option<Lifetime>), (AuthOutcome, Refusal)> {
        let mut attempted = AuthMethod::None;
        match self.decide(request, &mut attempted).await {
            Ok((principal, would_refuse, lifetime)) => Ok((
                AuthOutcome {
                    method: principal.method,
                    principal: Some(principal),
                    refusal: None,
                    would_refuse,
                },
                lifetime,
            )),
            Err(refusal) => Err((
                AuthOutcome {
                    method: attempted,
                    principal: None,
                    refusal: Some(refusal.reason.label()),
                    would_refuse: None,
                },
                refusal,
            )),
        }
    }

    /// The admitted caller, in dry run the rule that would have refused it, and what
    /// ends its credentials.
    async fn decide(
        &self,
        request: &mut Parts,
        attempted: &mut AuthMethod,
    ) -> Result<(Arc<Principal>, Option<DecidingRule>, Option<Lifetime>), Refusal> {
        let info = request.extensions.get::<Arc<ConnectionInfo>>().cloned();
        let peer = info.as_ref().and_then(|info| info.peer.as_ref());
        let client_cert = info
            .as_ref()
            .and_then(|info| info.client_cert_header.as_ref());
        self.policy.admit_peer(peer)?;
        let path = request.uri.path();
        let headers = &mut request.headers;

        // Credentials leave every request here, whatever the outcome: the app sees a bearer
        // token only when gatehouse verified it and its provider forwards it (put back
        // below), and never an API key, on public methods and in configurations that do
        // not read them alike.
        let credentials = self.credentials.as_ref();
        let store = credentials.and_then(|c| c.api_keys.as_deref());
        let bearer = take(headers, &AUTHORIZATION);
        let api_key = take(headers, store.map_or(&X_API_KEY, |store| store.header()));
        headers.remove(X_API_KEY);

        let Some(credentials) = credentials else {
            let principal = Principal::anonymous(if peer.is_some() {
                AuthMethod::Mtls
            } else {
                AuthMethod::None
            });
            *attempted = principal.method;
            // Dry run lets through only callers whose certificate authenticated them.
            let would_refuse = match peer {
                Some(_) => self.policy.authorize(path, &principal, peer)?,
                None => {
                    self.policy.enforce(path, &principal, peer)?;
                    None
                }
            };
            principal.inject(headers, client_cert);
            return Ok((principal, would_refuse, None));
        };
        if policy::any_matches(&credentials.public, path) {
            let principal = Principal::anonymous(AuthMethod::None);
            principal.inject(headers, client_cert);
            return Ok((principal, None, None));
        }
        // A token whose key is being fetched waits no longer than the caller would.
        let key_wait = jwt::key_wait(headers);
        let bearer = match (&credentials.jwt, bearer) {
            (None, _) | (Some(_), Presented::Absent) => None,
            (Some(_), Presented::One(value)) => Some(value),
            (Some(_), Presented::Many) => {
                *attempted = AuthMethod::Jwt;
                return Err(Refusal::unauthenticated(
                    Reason::AmbiguousCredentials,
                    "more than one authorization header",
                ));
            }
        };
        let api_key = match (store, api_key) {
            (None, _) | (Some(_), Presented::Absent) => None,
            (Some(_), Presented::One(value)) => Some(value),
            (Some(store), Presented::Many) => {
                *attempted = AuthMethod::ApiKey;
                return Err(Refusal::unauthenticated(
                    Reason::AmbiguousCredentials,
                    format!("more than one {} header", store.header()),
                ));
            }
        };
        let (principal, forward, lifetime) = match (bearer, api_key) {
            (Some(_), Some(_)) => {
                return Err(Refusal::unauthenticated(
                    Reason::AmbiguousCredentials,
                    "both a bearer token and an API key: send one",
                ));
            }
            (Some(value), None) => {
                *attempted = AuthMethod::Jwt;
                let token = bearer_token(value.as_bytes()).ok_or_else(|| {
                    Refusal::unauthenticated(
                        Reason::MalformedToken,
                        "authorization is not a bearer token",
                    )
                })?;
                let verifier = credentials
                    .jwt
                    .as_ref()
                    .expect("bearer tokens are read only with jwt configured");
                let verified = verifier.verify_within(token, key_wait).await?;
                // Per call, after the cache: a bound token verified on one connection
                // must not pass on another.
                binding::check(verified.bound_to.as_ref(), verified.binding_required, peer)?;
                let lifetime = Lifetime {
                    expires: unix_time(verified.expires_at)
                        .map(|at| (at, CredentialsEnd::TokenExpired)),
                    revoked: None,
                };
                (
                    verified.principal,
                    verified.forward_token.then_some(value),
                    lifetime,
                )
            }
            (None, Some(key)) => {
                *attempted = AuthMethod::ApiKey;
                let store = store.expect("the key header is read only with api_keys configured");
                let matched = store.authenticate(key.as_bytes())?;
                let lifetime = Lifetime {
                    expires: matched
                        .not_after
                        .and_then(unix_time)
                        .map(|at| (at, CredentialsEnd::KeyExpired)),
                    revoked: Some(matched.revoked),
                };
                (matched.principal, None, lifetime)
            }
            (None, None) => {
                return Err(Refusal::unauthenticated(
                    Reason::MissingCredentials,
                    "missing credentials",
                ));
            }
        };
        let would_refuse = self.policy.authorize(path, &principal, peer)?;
        if let Some(token) = forward {
            headers.insert(AUTHORIZATION, token);
        }
        principal.inject(headers, client_cert);
        let lifetime = credentials.expire_open_calls.then_some(lifetime);
        Ok((principal, would_refuse, lifetime))
    }
}

/// `seconds` since the Unix epoch as a wall-clock time; `None` past what the clock can
/// hold, a time no call lasts until (a token may say `exp: 1e19`).
fn unix_time(seconds: u64) -> Option<SystemTime> {
    UNIX_EPOCH.checked_add(Duration::from_secs(seconds))
}

/// What a caller sent in one credential header.
enum Presented {
    Absent,
    One(HeaderValue),
    /// Two or more: which one counts would be the app's guess, so such a call is refused.
    Many,
}

/// Removes every `name` header from `headers` and says what there was.
fn take(headers: &mut HeaderMap, name: &HeaderName) -> Presented {
    let many = headers.get_all(name).iter().nth(1).is_some();
    match headers.remove(name) {
        None => Presented::Absent,
        Some(_) if many => Presented::Many,
        Some(value) => Presented::One(value),
    }
}

/// The token of `Bearer <token>` (scheme case-insensitive).
fn bearer_token(value: &[u8]) -> Option<&str> {
    let (scheme, token) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = std::str::from_utf8(token).ok()?.trim();
    (!token.is_empty()).then_some(token)
}

fn build_provider(config: &config::JwtProvider) -> Result<Provider, Problem> {
    let family =
        Family::of(&config.algorithms).map_err(|message| Problem::new("algorithms", message))?;
    let algorithms = config::parse_algorithms(&config.algorithms)
        .map_err(|message| Problem::new("algorithms", message))?;
    let keys = if let Some(path) = &config.secret_file {
        let secret = read(path).map_err(|message| Problem::new("secret_file", message))?;
        let secret = secret.strip_suffix(b"\n").unwrap_or(&secret);
        if secret.len() < 32 {
            return Err(Problem::new(
                "secret_file",
                "the secret must be at least 32 bytes",
            ));
        }
        KeySource::Static(Arc::new(KeySet::secret(secret)))
    } else if let Some(path) = &config.jwks_file {
        let file = JwksFile::load(path, family, algorithms)
            .map_err(|message| Problem::new("jwks_file", message))?;
        KeySource::File(Arc::new(file))
    } else if let Some(url) = &config.jwks_url {
        let extra_roots = match &config.jwks_ca_file {
            Some(path) => crate::tls::load_certs(path)
                .map_err(|message| Problem::new("jwks_ca_file", message))?,
            None => Vec::new(),
        };
        let remote = RemoteJwks::new(
            url,
            extra_roots,
            family,
            algorithms,
            config.refresh_interval.get(),
            config.min_refresh_interval.get(),
        )
        .map_err(|message| Problem::new("jwks_url", message))?;
        KeySource::Remote(Arc::new(remote))
    } else {
        return Err(Problem::new(
            "jwks_file",
            "set exactly one of jwks_file, jwks_url or secret_file",
        ));
    };
    Provider::new(config, keys).map_err(|message| Problem::new("algorithms", message))
}

fn read(path: &std::path::Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|error| match error.kind() {
        std::io::ErrorKind::NotFound => format!("no such file: {}", path.display()),
        _ => format!("cannot read {}: {error}", path.display()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::PeerIdentity;

    #[test]
    fn reads_bearer_tokens_only() {
        assert_eq!(bearer_token(b"Bearer abc.def.ghi"), Some("abc.def.ghi"));
        assert_eq!(bearer_token(b"bearer abc"), Some("abc"));
        assert_eq!(bearer_token(b"Basic dXNlcjpwYXNz"), None);
        assert_eq!(bearer_token(b"Bearer "), None);
        assert_eq!(bearer_token(b"Bear"), None);
    }

    fn authenticator(yaml: &str) -> Authenticator {
        let base = "listen: { address: 127.0.0.1:1 }\ntls: { enabled: false }\nupstream: { address: 127.0.0.1:2 }\n";
        Authenticator::build(&Config::from_yaml(&format!("{base}{yaml}")).unwrap())
            .unwrap_or_else(|problems| panic!("{problems:?}"))
    }

    /// A call of `path` on a connection whose client certificate is `cert` (its DER bytes).
    fn call(path: &str, cert: Option<&[u8]>, token: Option<&str>) -> Parts {
        let peer = cert.map(|der| PeerIdentity {
            sha256: crate::sha256::to_hex(&crate::sha256::sha256(der)),
            ..PeerIdentity::default()
        });
        let info = ConnectionInfo::new("127.0.0.1:40000".parse().unwrap(), peer);
        let mut request = http::Request::post(path);
        if let Some(token) = token {
            request = request.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        let (mut parts, ()) = request.body(()).unwrap().into_parts();
        parts.extensions.insert(Arc::new(info));
        parts
    }

    #[tokio::test]
    async fn a_cached_bound_token_is_checked_again_on_every_connection() {
        use base64::Engine as _;
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, [7u8; 32]).unwrap();
        let authenticator = authenticator(&format!(
            "auth:\n  jwt:\n    providers:\n      - {{ name: t, issuer: iss, audiences: [svc], algorithms: [HS256], secret_file: {}, tenant_optional: true }}\n",
            secret.display()
        ));
        let exp = jsonwebtoken::get_current_timestamp() + 600;
        let thumbprint = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(crate::sha256::sha256(b"cert A"));
        let claims = serde_json::json!({"iss": "iss", "aud": "svc", "sub": "u1", "exp": exp,
                                        "cnf": {"x5t#S256": thumbprint}});
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(&[7u8; 32]),
        )
        .unwrap();
        let path = "/pkg.Svc/Get";
        for _ in 0..2 {
            // The second time from the cache: the binding still decides.
            assert!(
                authenticator
                    .admit(&mut call(path, Some(b"cert A"), Some(&token)))
                    .await
                    .is_ok()
            );
            for other in [Some(&b"cert B"[..]), None] {
                let (outcome, refusal) = authenticator
                    .admit(&mut call(path, other, Some(&token)))
                    .await
                    .unwrap_err();
                assert_eq!(outcome.refusal, Some("cert_binding_mismatch"));
                assert_eq!(refusal.code, crate::grpc::Code::Unauthenticated);
            }
        }
    }

    #[tokio::test]
    async fn dry_run_never_admits_a_caller_without_any_credential() {
        // No auth section: the certificate is the only credential.
        let authenticator =
            authenticator("authorization: { default: deny, dry_run: true, rules: [] }\n");
        let admitted = authenticator
            .admit(&mut call("/pkg.Svc/Get", Some(b"cert A"), None))
            .await
            .unwrap();
        assert_eq!(admitted.method, AuthMethod::Mtls);
        assert_eq!(admitted.would_refuse, Some(DecidingRule::Default));
        let (outcome, refusal) = authenticator
            .admit(&mut call("/pkg.Svc/Get", None, None))
            .await
            .unwrap_err();
        assert_eq!(outcome.refusal, Some("default_deny"));
        assert_eq!(refusal.code, crate::grpc::Code::PermissionDenied);
    }
}
