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
pub mod outcome;
pub mod policy;
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
use crate::identity::{AuthMethod, Principal, X_API_KEY};
use crate::tls::{ConnectionInfo, PeerIdentity};
use api_key::ApiKeyStore;
use jwks::{JwksFile, KeySet, KeySource, RemoteJwks};
use jwt::{JwtVerifier, Provider};
use outcome::{DecidingRule, Refusal};
use policy::Policy;

/// How often `auth.api_keys.keys_file` and `jwks_file`s are checked for changes.
const KEYS_FILE_POLL: Duration = Duration::from_secs(1);

/// The configured authentication and authorization.
pub struct Authenticator {
    /// `None`: no `auth` section, the client certificate is the only credential.
    credentials: Option<Verifiers>,
    policy: Policy,
}

/// What checks the credentials a caller presents.
struct Verifiers {
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
            credentials: Some(Verifiers {
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
            .map(|provider| provider.name.to_string())
            .collect()
    }

    /// Decides one request: how its caller is admitted, or why it is refused.
    ///
    /// Whatever the answer, credentials (`authorization`, the API key header) have left
    /// the headers, and `authorization` is put back only for a verified token whose
    /// provider forwards it; an admitted call also gets the verified identity headers.
    pub async fn admit(&self, request: &mut Parts) -> Admission {
        let info = request.extensions.get::<Arc<ConnectionInfo>>().cloned();
        let peer = info.as_ref().and_then(|info| info.peer.as_ref());
        let client_cert = info
            .as_ref()
            .and_then(|info| info.client_cert_header.as_ref());
        if let Err(refusal) = self.policy.admit_peer(peer) {
            return Admission::refused(AuthMethod::None, refusal);
        }
        let deadline = crate::grpc::Deadline::of(&request.extensions);
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
            return self.admit_certificate(path, headers, peer, client_cert);
        };
        if policy::any_matches(&credentials.public, path) {
            Principal::anonymous(AuthMethod::None).inject(headers, client_cert);
            return Admission::Public;
        }
        let call = Call {
            path,
            peer,
            client_cert,
            expire_open_calls: credentials.expire_open_calls,
        };
        // What the configuration does not read counts as not sent.
        match (
            bearer.read_by(credentials.jwt.as_ref()),
            api_key.read_by(store),
        ) {
            (Presented::One((jwt, value)), Presented::Absent) => {
                // A token whose key is being fetched waits no longer than the caller would.
                let key_wait = jwt::key_wait(deadline);
                let credited = verify_token(jwt, value, key_wait, peer).await;
                match self.authorize(credited, &call, headers) {
                    Ok(admitted) => Admission::Jwt(admitted),
                    Err(refusal) => Admission::refused(AuthMethod::Jwt, refusal),
                }
            }
            (Presented::Absent, Presented::One((store, key))) => {
                let credited = authenticate_key(store, &key);
                match self.authorize(credited, &call, headers) {
                    Ok(admitted) => Admission::ApiKey(admitted),
                    Err(refusal) => Admission::refused(AuthMethod::ApiKey, refusal),
                }
            }
            (Presented::Absent, Presented::Absent) => Admission::refused(
                AuthMethod::None,
                Refusal::unauthenticated(Reason::MissingCredentials, "missing credentials"),
            ),
            (bearer, api_key) => ambiguous(
                &bearer,
                &api_key,
                store.map_or(&X_API_KEY, |store| store.header()),
            ),
        }
    }

    /// No `auth` section: the client certificate is the only credential.
    fn admit_certificate(
        &self,
        path: &str,
        headers: &mut HeaderMap,
        peer: Option<&PeerIdentity>,
        client_cert: Option<&HeaderValue>,
    ) -> Admission {
        let principal = Principal::anonymous(if peer.is_some() {
            AuthMethod::Mtls
        } else {
            AuthMethod::None
        });
        // Dry run lets through only callers whose certificate authenticated them.
        let decided = match peer {
            Some(_) => self.policy.authorize(path, &principal, peer),
            None => self.policy.enforce(path, &principal, peer).map(|()| None),
        };
        match decided {
            Ok(would_refuse) => {
                principal.inject(headers, client_cert);
                Admission::Certificate {
                    principal,
                    would_refuse,
                }
            }
            Err(refusal) => Admission::refused(principal.method, refusal),
        }
    }

    /// The policy's say on a caller whose credential was verified; if admitted, the
    /// identity headers are set and a forwarded token put back.
    fn authorize(
        &self,
        credited: Result<Credited, Refusal>,
        call: &Call<'_>,
        headers: &mut HeaderMap,
    ) -> Result<Admitted, Refusal> {
        let credited = credited?;
        let would_refuse = self
            .policy
            .authorize(call.path, &credited.principal, call.peer)?;
        if let Some(token) = credited.forward {
            headers.insert(AUTHORIZATION, token);
        }
        credited.principal.inject(headers, call.client_cert);
        Ok(Admitted {
            principal: credited.principal,
            would_refuse,
            lifetime: call.expire_open_calls.then_some(credited.lifetime),
            bearer: credited.bearer,
        })
    }
}

/// How one call is admitted, or why it is refused: the whole decision of
/// [`Authenticator::admit`].
#[derive(Debug)]
pub enum Admission {
    /// A method of `auth.public_methods`: no credentials were asked for
    /// ([`AuthMethod::None`]).
    Public,
    /// No `auth` section: the client certificate is the only credential
    /// ([`AuthMethod::Mtls`]), or a caller without one where the policy lets anyone in
    /// ([`AuthMethod::None`]).
    Certificate {
        principal: Arc<Principal>,
        /// `authorization.dry_run`: the part of the policy that would have refused.
        would_refuse: Option<DecidingRule>,
    },
    /// A verified bearer token.
    Jwt(Admitted),
    /// A known API key.
    ApiKey(Admitted),
    Refused {
        /// How the caller tried to authenticate, for the layers that log and count.
        attempted: AuthMethod,
        refusal: Refusal,
    },
}

impl Admission {
    fn refused(attempted: AuthMethod, refusal: Refusal) -> Admission {
        Admission::Refused { attempted, refusal }
    }
}

/// A caller admitted with a credential that can end while its call is open.
#[derive(Debug)]
pub struct Admitted {
    pub principal: Arc<Principal>,
    /// `authorization.dry_run`: the part of the policy that would have refused.
    pub would_refuse: Option<DecidingRule>,
    /// What ends the credential, unless `auth.expire_open_calls` is false.
    pub lifetime: Option<Lifetime>,
    /// The `authorization` value of a verified bearer token, as the caller sent it.
    pub bearer: Option<HeaderValue>,
}

/// What a verified credential says, before the policy has had its say.
struct Credited {
    principal: Arc<Principal>,
    /// The verified `authorization` value (a JWT only).
    bearer: Option<HeaderValue>,
    /// The `authorization` value to hand the app, when the provider forwards tokens.
    forward: Option<HeaderValue>,
    lifetime: Lifetime,
}

/// What the policy and the identity headers need to know of the call.
struct Call<'a> {
    path: &'a str,
    peer: Option<&'a PeerIdentity>,
    client_cert: Option<&'a HeaderValue>,
    expire_open_calls: bool,
}

async fn verify_token(
    verifier: &JwtVerifier,
    value: HeaderValue,
    key_wait: Duration,
    peer: Option<&PeerIdentity>,
) -> Result<Credited, Refusal> {
    let token = bearer_token(value.as_bytes()).ok_or_else(|| {
        Refusal::unauthenticated(
            Reason::MalformedToken,
            "authorization is not a bearer token",
        )
    })?;
    let verified = verifier.verify_within(token, key_wait).await?;
    // Per call, after the cache: a bound token verified on one connection must not pass
    // on another.
    binding::check(verified.bound_to.as_ref(), verified.binding_required, peer)?;
    Ok(Credited {
        principal: verified.principal,
        lifetime: Lifetime {
            expires: unix_time(verified.expires_at).map(|at| (at, CredentialsEnd::TokenExpired)),
            revoked: None,
        },
        bearer: Some(value.clone()),
        forward: verified.forward_token.then_some(value),
    })
}

fn authenticate_key(store: &ApiKeyStore, key: &HeaderValue) -> Result<Credited, Refusal> {
    let matched = store.authenticate(key.as_bytes())?;
    Ok(Credited {
        principal: matched.principal,
        bearer: None,
        forward: None,
        lifetime: Lifetime {
            expires: matched
                .not_after
                .and_then(unix_time)
                .map(|at| (at, CredentialsEnd::KeyExpired)),
            revoked: Some(matched.revoked),
        },
    })
}

/// `seconds` since the Unix epoch as a wall-clock time; `None` past what the clock can
/// hold, a time no call lasts until (a token may say `exp: 1e19`).
fn unix_time(seconds: u64) -> Option<SystemTime> {
    UNIX_EPOCH.checked_add(Duration::from_secs(seconds))
}

/// What a caller sent in one credential header; `T` is the value, or the value with what
/// reads it.
/// The refusal of a call that sent more than one credential: two of a kind, or both a
/// token and a key.
fn ambiguous<A, B>(
    bearer: &Presented<A>,
    api_key: &Presented<B>,
    key_header: &HeaderName,
) -> Admission {
    let (method, message) = match (bearer, api_key) {
        (Presented::Many, _) => (AuthMethod::Jwt, "more than one authorization header".into()),
        (_, Presented::Many) => (
            AuthMethod::ApiKey,
            format!("more than one {key_header} header"),
        ),
        _ => (
            AuthMethod::None,
            "both a bearer token and an API key: send one".into(),
        ),
    };
    Admission::refused(
        method,
        Refusal::unauthenticated(Reason::AmbiguousCredentials, message),
    )
}

enum Presented<T = HeaderValue> {
    Absent,
    One(T),
    /// Two or more: which one counts would be the app's guess, so such a call is refused.
    Many,
}

impl Presented {
    /// With `reader`, the verifier the configuration has for this credential; without
    /// one, it was not sent as far as gatehouse is concerned.
    fn read_by<R>(self, reader: Option<R>) -> Presented<(R, HeaderValue)> {
        match (reader, self) {
            (None, _) | (Some(_), Presented::Absent) => Presented::Absent,
            (Some(reader), Presented::One(value)) => Presented::One((reader, value)),
            (Some(_), Presented::Many) => Presented::Many,
        }
    }
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
    use crate::grpc::Code;

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
        let token = token.map(|token| format!("Bearer {token}"));
        let headers: Vec<_> = token
            .iter()
            .map(|t| ("authorization", t.as_str()))
            .collect();
        call_with(path, cert, &headers)
    }

    /// A call of `path` with `headers`, on a connection whose client certificate is
    /// `cert`, which names the DNS name `a.example`.
    fn call_with(path: &str, cert: Option<&[u8]>, headers: &[(&str, &str)]) -> Parts {
        let peer = cert.map(|der| PeerIdentity {
            sha256: crate::sha256::to_hex(&crate::sha256::sha256(der)),
            dns_names: vec!["a.example".to_owned()],
            ..PeerIdentity::default()
        });
        let info = ConnectionInfo::new("127.0.0.1:40000".parse().unwrap(), peer);
        let mut request = http::Request::post(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let (mut parts, ()) = request.body(()).unwrap().into_parts();
        parts.extensions.insert(Arc::new(info));
        parts
    }

    const SECRET: [u8; 32] = [7; 32];
    const KEY: &str = "key-of-the-ci-job";
    const EXPIRED_KEY: &str = "key-past-its-not-after";
    const PATH: &str = "/pkg.Svc/Get";

    /// JWT (HS256, `SECRET`) and API keys (`KEY`, named `ci`, and `EXPIRED_KEY`, past
    /// its `not_after`), `/pkg.Health/*` public,
    /// then `more` (an `authorization` section, say).
    fn credentials(more: &str) -> (Authenticator, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, SECRET).unwrap();
        let key = crate::sha256::to_hex(&crate::sha256::sha256(KEY.as_bytes()));
        let expired = crate::sha256::to_hex(&crate::sha256::sha256(EXPIRED_KEY.as_bytes()));
        let authenticator = authenticator(&format!(
            "auth:\n  public_methods: [/pkg.Health/*]\n  jwt:\n    providers:\n      - {{ name: t, issuer: iss, audiences: [svc], algorithms: [HS256], secret_file: {}, tenant_optional: true }}\n  api_keys:\n    keys:\n      - {{ name: ci, sha256: {key}, roles: [deployer] }}\n      - {{ name: old, sha256: {expired}, not_after: 2020-01-01 }}\n{more}",
            secret.display()
        ));
        (authenticator, dir)
    }

    fn token(claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(&SECRET),
        )
        .unwrap()
    }

    fn user_token(roles: &[&str]) -> String {
        let exp = jsonwebtoken::get_current_timestamp() + 600;
        token(
            serde_json::json!({"iss": "iss", "aud": "svc", "sub": "u1", "exp": exp, "roles": roles}),
        )
    }

    /// The refusal of a refused call: how it was attempted, its reason's label and code.
    fn refusal(admission: Admission) -> (AuthMethod, &'static str, Code) {
        match admission {
            Admission::Refused { attempted, refusal } => {
                (attempted, refusal.reason.label(), refusal.code)
            }
            other => panic!("admitted: {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_public_method_is_admitted_without_credentials_which_the_app_never_sees() {
        let (authenticator, _dir) = credentials("");
        let mut request = call_with(
            "/pkg.Health/Check",
            None,
            &[
                ("authorization", "Bearer not-even-a-token"),
                ("x-api-key", "whatever"),
            ],
        );
        let admission = authenticator.admit(&mut request).await;
        assert!(matches!(admission, Admission::Public), "{admission:?}");
        assert_eq!(request.headers["x-auth-method"], "none");
        assert!(request.headers.get(AUTHORIZATION).is_none());
        assert!(request.headers.get(X_API_KEY).is_none());
    }

    #[tokio::test]
    async fn a_verified_token_is_admitted_with_its_identity_and_lifetime() {
        let (authenticator, _dir) = credentials("");
        let token = user_token(&["reader"]);
        let mut request = call(PATH, None, Some(&token));
        let Admission::Jwt(admitted) = authenticator.admit(&mut request).await else {
            panic!("not admitted with the token");
        };
        assert_eq!(admitted.principal.method, AuthMethod::Jwt);
        assert_eq!(admitted.principal.user_id.as_deref(), Some("u1"));
        assert_eq!(admitted.would_refuse, None);
        let lifetime = admitted.lifetime.expect("auth.expire_open_calls is on");
        assert!(matches!(
            lifetime.expires,
            Some((_, CredentialsEnd::TokenExpired))
        ));
        assert_eq!(request.headers["x-user-id"], "u1");
        assert_eq!(request.headers["x-user-roles"], "reader");
        assert_eq!(request.headers["x-auth-method"], "jwt");
        // The provider forwards tokens (its default): the app gets it back.
        assert_eq!(request.headers[AUTHORIZATION], format!("Bearer {token}"));
    }

    #[tokio::test]
    async fn a_known_api_key_is_admitted_and_never_reaches_the_app() {
        let (authenticator, _dir) = credentials("  expire_open_calls: false\n");
        let mut request = call_with(PATH, None, &[("x-api-key", KEY)]);
        let Admission::ApiKey(admitted) = authenticator.admit(&mut request).await else {
            panic!("not admitted with the key");
        };
        assert_eq!(admitted.principal.method, AuthMethod::ApiKey);
        assert_eq!(admitted.principal.api_key_name.as_deref(), Some("ci"));
        assert!(admitted.lifetime.is_none(), "auth.expire_open_calls is off");
        assert_eq!(request.headers["x-api-key-name"], "ci");
        assert_eq!(request.headers["x-auth-method"], "api_key");
        assert!(request.headers.get(X_API_KEY).is_none());
    }

    #[tokio::test]
    async fn without_an_auth_section_the_certificate_is_the_credential() {
        let authenticator = authenticator("");
        let mut request = call(PATH, Some(b"cert A"), None);
        let admission = authenticator.admit(&mut request).await;
        let Admission::Certificate {
            principal,
            would_refuse,
        } = admission
        else {
            panic!("not admitted by its certificate: {admission:?}");
        };
        assert_eq!(principal.method, AuthMethod::Mtls);
        assert_eq!(would_refuse, None);
        assert_eq!(request.headers["x-auth-method"], "mtls");
        assert!(
            request.headers[crate::identity::X_FORWARDED_CLIENT_CERT]
                .to_str()
                .unwrap()
                .starts_with("Hash=")
        );
        // Without a certificate, the policy (allow by default) decides alone.
        let admission = authenticator.admit(&mut call(PATH, None, None)).await;
        assert!(
            matches!(&admission, Admission::Certificate { principal, .. } if principal.method == AuthMethod::None),
            "{admission:?}"
        );
    }

    #[tokio::test]
    async fn each_kind_of_refusal_says_how_the_caller_tried() {
        let (authenticator, _dir) = credentials(
            "authorization:\n  default: deny\n  rules: [ { methods: [/pkg.Svc/*], allow_roles: [reader], allow_api_keys: [ci] } ]\n",
        );
        let good = format!("Bearer {}", user_token(&["reader"]));
        let guest = format!("Bearer {}", user_token(&["guest"]));
        let expired = format!(
            "Bearer {}",
            token(serde_json::json!({"iss": "iss", "aud": "svc", "sub": "u1", "exp": 1_000}))
        );
        let unauthenticated = Code::Unauthenticated;
        let cases: [(&str, &[(&str, &str)], _); 11] = [
            (
                PATH,
                &[],
                (AuthMethod::None, "missing_credentials", unauthenticated),
            ),
            (
                PATH,
                &[("authorization", &good), ("x-api-key", KEY)],
                (AuthMethod::None, "ambiguous_credentials", unauthenticated),
            ),
            (
                PATH,
                &[("authorization", &good), ("authorization", &good)],
                (AuthMethod::Jwt, "ambiguous_credentials", unauthenticated),
            ),
            (
                PATH,
                &[("x-api-key", KEY), ("x-api-key", KEY)],
                (AuthMethod::ApiKey, "ambiguous_credentials", unauthenticated),
            ),
            (
                PATH,
                &[("authorization", "Basic dXNlcjpwYXNz")],
                (AuthMethod::Jwt, "malformed_token", unauthenticated),
            ),
            (
                PATH,
                &[("authorization", &expired)],
                (AuthMethod::Jwt, "token_expired", unauthenticated),
            ),
            (
                PATH,
                &[("x-api-key", "not-a-key")],
                (AuthMethod::ApiKey, "unknown_api_key", unauthenticated),
            ),
            // Verified, then refused by the policy: no rule matches this method.
            (
                "/pkg.Other/Get",
                &[("authorization", &good)],
                (AuthMethod::Jwt, "default_deny", Code::PermissionDenied),
            ),
            (
                "/pkg.Other/Get",
                &[("x-api-key", KEY)],
                (AuthMethod::ApiKey, "default_deny", Code::PermissionDenied),
            ),
            (
                PATH,
                &[("x-api-key", EXPIRED_KEY)],
                (AuthMethod::ApiKey, "expired_api_key", unauthenticated),
            ),
            // The rule for this method allows other roles.
            (
                PATH,
                &[("authorization", &guest)],
                (AuthMethod::Jwt, "rule_denied", Code::PermissionDenied),
            ),
        ];
        for (path, headers, expected) in cases {
            let mut request = call_with(path, None, headers);
            let admission = authenticator.admit(&mut request).await;
            assert_eq!(refusal(admission), expected, "{path} {headers:?}");
            // Refused or not, credentials never stay for the app.
            assert!(request.headers.get(AUTHORIZATION).is_none(), "{headers:?}");
            assert!(request.headers.get(X_API_KEY).is_none(), "{headers:?}");
            assert!(
                request.headers.get("x-auth-method").is_none(),
                "{headers:?}"
            );
        }
    }

    #[tokio::test]
    async fn dry_run_admits_a_verified_caller_and_names_the_rule_that_would_refuse() {
        let (authenticator, _dir) = credentials(
            "authorization:\n  default: deny\n  dry_run: true\n  rules: [ { methods: [/pkg.Svc/*], allow_roles: [reader] } ]\n",
        );
        let token = user_token(&["guest"]);
        let mut request = call(PATH, None, Some(&token));
        let Admission::Jwt(admitted) = authenticator.admit(&mut request).await else {
            panic!("dry run refused a verified caller");
        };
        assert_eq!(admitted.would_refuse, Some(DecidingRule::Rule(0)));
        assert_eq!(request.headers["x-user-id"], "u1");
        // A caller with no credential at all is refused even in dry run.
        let admission = authenticator.admit(&mut call(PATH, None, None)).await;
        assert_eq!(
            refusal(admission),
            (
                AuthMethod::None,
                "missing_credentials",
                Code::Unauthenticated
            )
        );
    }

    #[tokio::test]
    async fn a_peer_outside_the_allow_list_is_refused_before_its_credentials_are_read() {
        let config = Config::from_yaml(
            "listen: { address: 127.0.0.1:1 }\ntls: { enabled: false, allowed_peers: [dns:b.example] }\nupstream: { address: 127.0.0.1:2 }\n",
        )
        .unwrap();
        let authenticator = Authenticator::build(&config).unwrap();
        for cert in [Some(&b"cert A"[..]), None] {
            let admission = authenticator.admit(&mut call(PATH, cert, None)).await;
            assert_eq!(
                refusal(admission),
                (AuthMethod::None, "peer_not_allowed", Code::PermissionDenied)
            );
        }
    }

    #[tokio::test]
    async fn a_cached_bound_token_is_checked_again_on_every_connection() {
        use base64::Engine as _;
        let (authenticator, _dir) = credentials("");
        let exp = jsonwebtoken::get_current_timestamp() + 600;
        let thumbprint = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(crate::sha256::sha256(b"cert A"));
        let token = token(
            serde_json::json!({"iss": "iss", "aud": "svc", "sub": "u1", "exp": exp,
                                             "cnf": {"x5t#S256": thumbprint}}),
        );
        for _ in 0..2 {
            // The second time from the cache: the binding still decides.
            let admission = authenticator
                .admit(&mut call(PATH, Some(b"cert A"), Some(&token)))
                .await;
            assert!(matches!(admission, Admission::Jwt(_)), "{admission:?}");
            for other in [Some(&b"cert B"[..]), None] {
                let admission = authenticator
                    .admit(&mut call(PATH, other, Some(&token)))
                    .await;
                assert_eq!(
                    refusal(admission),
                    (
                        AuthMethod::Jwt,
                        "cert_binding_mismatch",
                        Code::Unauthenticated
                    )
                );
            }
        }
    }

    #[tokio::test]
    async fn dry_run_never_admits_a_caller_without_any_credential() {
        // No auth section: the certificate is the only credential.
        let authenticator =
            authenticator("authorization: { default: deny, dry_run: true, rules: [] }\n");
        let admission = authenticator
            .admit(&mut call(PATH, Some(b"cert A"), None))
            .await;
        let Admission::Certificate {
            principal,
            would_refuse,
        } = admission
        else {
            panic!("dry run refused a caller with a certificate: {admission:?}");
        };
        assert_eq!(principal.method, AuthMethod::Mtls);
        assert_eq!(would_refuse, Some(DecidingRule::Default));
        let admission = authenticator.admit(&mut call(PATH, None, None)).await;
        assert_eq!(
            refusal(admission),
            (AuthMethod::None, "default_deny", Code::PermissionDenied)
        );
    }
}
