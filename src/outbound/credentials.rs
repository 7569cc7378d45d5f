//! Strip, then set, on the way out: what the app sent that could speak for someone is
//! removed, and only then is the destination's configured credential attached.
//!
//! Every call loses the identity headers of DESIGN §3 (all spellings, `-bin` forms) and
//! any `x-api-key`: a destination's gatehouse derives identity itself, and a key the app
//! holds is a key that can leak. `authorization` survives only under `relay`, and only
//! after a local check, so a token that the destination would refuse costs no round trip
//! and never leaves the pod.
//!
//! Call-context handles (`x-gatehouse-ctx`, the `gatehouse-ctx` baggage member) are
//! stripped from every call whatever the credential: they mean something only inside
//! this pod. Under `context` the handle is first resolved to the inbound call's token.

use std::convert::Infallible;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine as _;
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue, Request, Response};
use tokio::time::Instant;
use tower::{Layer, Service};

use super::route::Routed;
use crate::auth::outcome::Refusal;
use crate::body::{RequestBody, ResponseBody};
use crate::call_context::{self as context, CallContext, CallContexts};
use crate::clock::unix_now;
use crate::config::{self, Problem};
use crate::grpc::{Code, Deadline, Reason};
use crate::identity::{X_API_KEY, is_spelling_of, strip_identity_headers, strip_matching};
use crate::reload::Current;

/// Applies the routed destination's credential to each call (see the module
/// documentation); a call routed nowhere is only stripped.
#[derive(Clone, Copy, Debug, Default)]
pub struct CredentialsLayer;

impl<S> Layer<S> for CredentialsLayer {
    type Service = Credentials<S>;

    fn layer(&self, inner: S) -> Credentials<S> {
        Credentials { inner }
    }
}

/// See [`CredentialsLayer`].
#[derive(Clone)]
pub struct Credentials<S> {
    inner: S,
}

impl<S> Service<Request<RequestBody>> for Credentials<S>
where
    S: Service<Request<RequestBody>, Response = Response<ResponseBody>, Error = Infallible>,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = CredentialsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<RequestBody>) -> Self::Future {
        let destination = match request.extensions().get::<Routed>() {
            Some(Routed::To(destination)) => destination.clone(),
            _ => {
                strip(request.headers_mut());
                return CredentialsFuture::Sent {
                    call: self.inner.call(request),
                };
            }
        };
        match destination.credential.apply(request.headers_mut()) {
            Ok(serves) => {
                if let Some(inbound) = serves {
                    let extensions = request.extensions_mut();
                    if let Some(at) = inbound.deadline {
                        Deadline::shorten(extensions, at, "the inbound call's deadline");
                    }
                    // The Deadline layer below ends the call when the inbound one ends.
                    extensions.insert(inbound.ends);
                }
                CredentialsFuture::Sent {
                    call: self.inner.call(request),
                }
            }
            Err(refusal) => {
                let status = refusal
                    .status(None)
                    .about(request.uri(), Some(&destination.name));
                CredentialsFuture::Refused {
                    response: Some(status.response()),
                }
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// What [`Credentials`] answers with: the call sent on, or refused here.
    #[project = CredentialsProjection]
    pub enum CredentialsFuture<F> {
        Sent { #[pin] call: F },
        Refused { response: Option<Response<ResponseBody>> },
    }
}

impl<F> Future for CredentialsFuture<F>
where
    F: Future<Output = Result<Response<ResponseBody>, Infallible>>,
{
    type Output = Result<Response<ResponseBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            CredentialsProjection::Sent { call } => call.poll(cx),
            CredentialsProjection::Refused { response } => Poll::Ready(Ok(response
                .take()
                .expect("CredentialsFuture polled after completion"))),
        }
    }
}

/// Removes what the app may not send out, whatever the destination: handles, identity
/// headers and API keys.
fn strip(headers: &mut HeaderMap) {
    context::strip_handles(headers);
    strip_identity_headers(headers);
    strip_api_keys(headers);
}

/// A destination's credential, ready to attach.
pub enum Credential {
    /// The app's bearer token, forwarded when it names `audience` and has not expired.
    Relay { audience: String },
    /// Nothing but the pod's certificate.
    None,
    /// A key read from a file (re-read when the file changes) and sent as `x-api-key`.
    ApiKey(Arc<ApiKeyFile>),
    /// The verified token of the inbound call whose handle the app carried, checked as
    /// `relay` checks the app's own.
    Context {
        audience: String,
        contexts: Arc<CallContexts>,
    },
}

/// The refusal's message when a handle is missing, unknown or past its grace.
const NO_CALL_CONTEXT: &str = "NO_CALL_CONTEXT: no live call context: this destination uses credentials: context, so the call must carry the gatehouse-ctx baggage member (or x-gatehouse-ctx) of an inbound call that is open or ended less than outbound.context_grace ago";

impl Credential {
    /// Reads what the config names; problems are reported on `field`. `contexts` is the
    /// table `credentials: context` resolves handles in.
    pub fn load(
        destination: &config::Destination,
        field: &str,
        contexts: Option<&Arc<CallContexts>>,
    ) -> Result<Credential, Problem> {
        match &destination.credentials {
            config::Credentials::Relay => Ok(Credential::Relay {
                audience: destination.audience.clone().unwrap_or_default(),
            }),
            config::Credentials::None => Ok(Credential::None),
            config::Credentials::ApiKeyFile(path) => {
                let key = read_key(path)
                    .map_err(|message| Problem::new(format!("{field}.api_key_file"), message))?;
                Ok(Credential::ApiKey(Arc::new(ApiKeyFile {
                    path: path.clone(),
                    key: Current::new(Arc::new(key)),
                })))
            }
            config::Credentials::Context => match contexts {
                Some(contexts) => Ok(Credential::Context {
                    audience: destination.audience.clone().unwrap_or_default(),
                    contexts: contexts.clone(),
                }),
                None => Err(Problem::new(field, "context needs the call context table")),
            },
        }
    }

    /// Strips what the app may not send out, then attaches this credential. A refusal
    /// means nothing is sent. `Ok` carries, under `context`, the inbound call this one
    /// serves: its deadline and its end, neither of which the call may outlive.
    pub fn apply(&self, headers: &mut HeaderMap) -> Result<Option<CallContext>, Refusal> {
        let handle = match self {
            Credential::Context { .. } => context::sent_handle(headers),
            _ => None,
        };
        strip(headers);
        match self {
            Credential::Relay { audience } => {
                check_relayed_token(headers, audience, unix_now()).map(|()| None)
            }
            Credential::None => {
                headers.remove(AUTHORIZATION);
                Ok(None)
            }
            Credential::ApiKey(file) => {
                headers.remove(AUTHORIZATION);
                headers.insert(X_API_KEY, file.key.get().as_ref().clone());
                Ok(None)
            }
            Credential::Context { audience, contexts } => {
                // Whatever the app sent is replaced: only the handle speaks for the user.
                headers.remove(AUTHORIZATION);
                let call = handle
                    .and_then(|handle| contexts.resolve(&handle))
                    .ok_or_else(|| {
                        Refusal::unauthenticated(Reason::NoCallContext, NO_CALL_CONTEXT)
                    })?;
                if call.deadline.is_some_and(|at| at <= Instant::now()) {
                    return Err(Refusal {
                        code: Code::DeadlineExceeded,
                        message: "deadline exceeded: the inbound call this call serves has run out of time".into(),
                        reason: Reason::Deadline,
                        rule: None,
                    });
                }
                headers.insert(AUTHORIZATION, call.token.clone());
                check_relayed_token(headers, audience, unix_now())?;
                Ok(Some(call))
            }
        }
    }
}

/// Removes `x-api-key` in every spelling (`x_api_key`, `-bin`), so a key the app holds
/// never leaves the pod under any name a server might read.
fn strip_api_keys(headers: &mut HeaderMap) {
    strip_matching(headers, |name| is_spelling_of(name, &X_API_KEY));
}

/// The key behind `credentials: { api_key_file }`.
pub struct ApiKeyFile {
    path: PathBuf,
    key: Current<HeaderValue>,
}

impl ApiKeyFile {
    /// Re-reads the file; a file that became unreadable or empty keeps the running key.
    pub fn reload(&self) {
        match read_key(&self.path) {
            Ok(key) if key != *self.key.get() => {
                self.key.set(Arc::new(key));
                tracing::info!(file = %self.path.display(), "outbound API key reloaded");
            }
            Ok(_) => {}
            Err(message) => {
                tracing::warn!(problem = %message, "outbound API key file unusable; keeping the running key");
            }
        }
    }

    /// Checks the file every [`crate::tls::RELOAD_POLL`] for as long as `self` is in use.
    pub fn spawn_watcher(self: &Arc<Self>) {
        crate::reload::poll(self, crate::tls::RELOAD_POLL, ApiKeyFile::reload);
    }
}

/// The key in `path`, one trailing newline ignored, as a sensitive header value (kept
/// out of HPACK's dynamic table and of debug output).
fn read_key(path: &Path) -> Result<HeaderValue, String> {
    let text = std::fs::read(path).map_err(|error| match error.kind() {
        std::io::ErrorKind::NotFound => format!("no such file: {}", path.display()),
        _ => format!("cannot read {}: {error}", path.display()),
    })?;
    let key = text.strip_suffix(b"\n").unwrap_or(&text);
    let key = key.strip_suffix(b"\r").unwrap_or(key);
    if key.is_empty() {
        return Err(format!("{}: the file is empty", path.display()));
    }
    let mut value = HeaderValue::from_bytes(key)
        .map_err(|_| format!("{}: the key is not a valid header value", path.display()))?;
    value.set_sensitive(true);
    Ok(value)
}

/// The local check before a token is relayed: a well-formed JWT, not expired, whose
/// `aud` contains `audience`. The signature is the destination's to check: gatehouse
/// may not hold the issuer's keys, and the destination checks it anyway.
fn check_relayed_token(headers: &HeaderMap, audience: &str, now: u64) -> Result<(), Refusal> {
    let claims = relayed_claims(relayed_token(headers)?)?;
    let expires = claims.get("exp").and_then(serde_json::Value::as_u64);
    match expires {
        None => {
            return Err(Refusal::unauthenticated(
                Reason::MalformedToken,
                "the bearer token to relay has no exp claim",
            ));
        }
        Some(exp) if exp <= now => {
            return Err(Refusal::unauthenticated(
                Reason::TokenExpired,
                "the bearer token to relay has expired",
            ));
        }
        Some(_) => {}
    }
    let names_audience = match claims.get("aud") {
        Some(serde_json::Value::String(aud)) => aud == audience,
        Some(serde_json::Value::Array(auds)) => {
            auds.iter().any(|aud| aud.as_str() == Some(audience))
        }
        _ => false,
    };
    if names_audience {
        Ok(())
    } else {
        Err(Refusal::permission_denied(
            Reason::AudienceMismatch,
            format!(
                "the bearer token's aud does not contain {audience:?}, the audience this destination requires"
            ),
        ))
    }
}

/// The one bearer token the app's call carries.
fn relayed_token(headers: &HeaderMap) -> Result<&str, Refusal> {
    const MISSING: &str = "no bearer token to relay: this destination uses credentials: relay, so the call needs the user's authorization: Bearer token";
    if headers.get_all(AUTHORIZATION).iter().nth(1).is_some() {
        // Which one the destination reads would be its guess; neither leaves the pod.
        return Err(Refusal::unauthenticated(
            Reason::AmbiguousCredentials,
            "more than one authorization header: send one bearer token",
        ));
    }
    headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .ok_or_else(|| Refusal::unauthenticated(Reason::MissingCredentials, MISSING))
}

/// The claims of a well-formed JWT (three parts, a JSON object header and payload, a
/// signature), which is not verified here: the destination does that.
fn relayed_claims(token: &str) -> Result<serde_json::Value, Refusal> {
    let malformed = || {
        Refusal::unauthenticated(
            Reason::MalformedToken,
            "the bearer token to relay is not a well-formed JWT",
        )
    };
    if token.len() > crate::auth::jwt::MAX_TOKEN_BYTES {
        return Err(malformed());
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed());
    };
    let decode = |part: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
            .filter(serde_json::Value::is_object)
    };
    if decode(header).is_none() || signature.is_empty() {
        return Err(malformed());
    }
    decode(payload).ok_or_else(malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(claims: serde_json::Value) -> HeaderValue {
        let encode = |value: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
        };
        let header = encode(serde_json::json!({"alg": "RS256", "typ": "JWT"}));
        let value = format!("Bearer {header}.{}.c2ln", encode(claims));
        HeaderValue::try_from(value).unwrap()
    }

    fn relay(authorization: Option<HeaderValue>) -> Result<HeaderMap, Refusal> {
        let mut headers = HeaderMap::new();
        if let Some(value) = authorization {
            headers.insert(AUTHORIZATION, value);
        }
        headers.insert("x-tenant-id", HeaderValue::from_static("forged"));
        headers.insert("x_user_id-bin", HeaderValue::from_static("Zm9yZ2Vk"));
        headers.insert("x-api-key", HeaderValue::from_static("app-held"));
        headers.insert("x_api_key", HeaderValue::from_static("app-held"));
        let credential = Credential::Relay {
            audience: "identity-service".to_owned(),
        };
        credential.apply(&mut headers).map(|_| headers)
    }

    #[test]
    fn relays_a_live_token_for_the_audience_and_strips_the_rest() {
        let valid =
            token(serde_json::json!({"exp": unix_now() + 60, "aud": ["x", "identity-service"]}));
        let headers = relay(Some(valid.clone())).unwrap();
        assert_eq!(headers.get(AUTHORIZATION), Some(&valid));
        assert_eq!(headers.len(), 1, "{headers:?}");
    }

    #[test]
    fn refuses_missing_expired_and_foreign_tokens_locally() {
        let table = [
            (
                None,
                crate::grpc::Code::Unauthenticated,
                "MISSING_CREDENTIALS",
            ),
            (
                Some(HeaderValue::from_static("Bearer not-a-jwt")),
                crate::grpc::Code::Unauthenticated,
                "MALFORMED_TOKEN",
            ),
            (
                Some(token(
                    serde_json::json!({"exp": unix_now() - 1, "aud": "identity-service"}),
                )),
                crate::grpc::Code::Unauthenticated,
                "TOKEN_EXPIRED",
            ),
            (
                Some(token(
                    serde_json::json!({"exp": unix_now() + 60, "aud": "billing"}),
                )),
                crate::grpc::Code::PermissionDenied,
                "AUDIENCE_MISMATCH",
            ),
        ];
        for (authorization, code, reason) in table {
            let refusal = relay(authorization).unwrap_err();
            assert_eq!(
                (refusal.code, refusal.reason.as_str()),
                (code, reason),
                "{refusal:?}"
            );
        }
    }

    #[test]
    fn api_key_replaces_whatever_the_app_sent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "service-key\n").unwrap();
        let destination: config::Destination = serde_saphyr::from_str(&format!(
            "{{ name: a, address: 'a:1', identity: ['dns:a'], credentials: {{ api_key_file: {} }} }}",
            path.display()
        ))
        .unwrap();
        let credential = Credential::load(&destination, "d", None).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", HeaderValue::from_static("app-held"));
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer x.y.z"));
        credential.apply(&mut headers).unwrap();
        assert_eq!(headers.get_all("x-api-key").iter().count(), 1);
        assert_eq!(headers["x-api-key"], "service-key");
        assert!(headers.get(AUTHORIZATION).is_none());

        std::fs::write(&path, "rotated").unwrap();
        let Credential::ApiKey(file) = &credential else {
            unreachable!("loaded from api_key_file")
        };
        file.reload();
        credential.apply(&mut headers).unwrap();
        assert_eq!(headers["x-api-key"], "rotated");
    }

    #[test]
    fn context_attaches_the_inbound_calls_token_and_strips_the_handle() {
        let contexts = Arc::new(CallContexts::new(
            std::time::Duration::from_secs(5),
            context::Bounds {
                handles: 8,
                bytes: 1 << 20,
                per_owner: 8,
            },
        ));
        let credential = Credential::Context {
            audience: "identity-service".to_owned(),
            contexts: contexts.clone(),
        };
        let user = token(serde_json::json!({"exp": unix_now() + 60, "aud": "identity-service"}));
        let later = Instant::now() + std::time::Duration::from_secs(30);
        let (open, handle) = contexts.mint(1, &user, Some(later)).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("baggage", HeaderValue::from_static("a=1"));
        context::set_handle(&mut headers, &handle);
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_static("Bearer app.own.token"),
        );
        let serves = credential
            .apply(&mut headers)
            .unwrap()
            .expect("the inbound call");
        assert_eq!(serves.deadline, Some(later));
        assert_eq!(headers.get(AUTHORIZATION), Some(&user));
        assert_eq!(headers["baggage"], "a=1");
        let context::CallEnd::With(ends) = serves.ends else {
            panic!("the inbound call is open")
        };
        drop(open);
        assert!(
            ends.is_cancelled(),
            "the call out ends when the inbound call does"
        );

        // Another destination's credential still strips a handle the app sent.
        let mut headers = HeaderMap::new();
        headers.insert(context::X_GATEHOUSE_CTX, handle.clone());
        Credential::None.apply(&mut headers).unwrap();
        assert!(headers.is_empty(), "{headers:?}");

        let refused = |token: HeaderValue, deadline| {
            let (_open, handle) = contexts.mint(2, &token, deadline).unwrap();
            let mut headers = HeaderMap::new();
            headers.insert(context::X_GATEHOUSE_CTX, handle);
            let refusal = credential.apply(&mut headers).unwrap_err();
            (refusal.code, refusal.reason)
        };
        let past = Instant::now().checked_sub(std::time::Duration::from_millis(1));
        assert_eq!(
            refused(user.clone(), past),
            (crate::grpc::Code::DeadlineExceeded, Reason::Deadline)
        );
        let foreign = token(serde_json::json!({"exp": unix_now() + 60, "aud": "billing"}));
        assert_eq!(
            refused(foreign, None),
            (
                crate::grpc::Code::PermissionDenied,
                Reason::AudienceMismatch
            )
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            context::X_GATEHOUSE_CTX,
            HeaderValue::from_static("0123456789abcdef0123456789abcdef"),
        );
        let refusal = credential.apply(&mut headers).unwrap_err();
        assert_eq!(refusal.reason, Reason::NoCallContext);
        assert!(headers.get(AUTHORIZATION).is_none());
    }
}
