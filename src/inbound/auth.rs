//! Auth: refuses paths outside gRPC's `/Service/Method` grammar, strips caller-sent
//! identity headers and call-context handles from every request, then admits the call
//! (credentials, peer allow-list, authorization rules) and sets the verified identity, or
//! answers with the refusal's gRPC status without calling the app. Either way the
//! decision is written into the call's facts, for the layers above that log and count
//! it and the one below that counts the call against its identity.
//!
//! A call admitted with a token or an API key is then watched until it ends: when the
//! token expires or the key is revoked first, the call ends with UNAUTHENTICATED (see
//! [`CredentialsWatch`]), whether the app has answered yet or not.
//!
//! ```no_run
//! # async fn example(config: gatehouse::config::Config, forward: gatehouse::inbound::Forward) {
//! use std::sync::Arc;
//! use gatehouse::auth::Authenticator;
//! use gatehouse::inbound::auth::AuthLayer;
//! use tower::Layer;
//! use gatehouse::reload::Current;
//! let authenticator = Arc::new(Authenticator::build(&config).expect("valid auth config"));
//! let service = AuthLayer::new(Arc::new(Current::new(authenticator))).layer(forward);
//! # }
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response};
use tower::{Layer, Service};

use crate::auth::outcome::{AuthOutcome, Refusal};
use crate::auth::{Admission, Authenticator, Lifetime};
use crate::body::{CredentialsWatch, RequestBody, ResponseBody};
use crate::call_context;
use crate::grpc;
use crate::identity::{AuthMethod, Principal, strip_identity_headers};
use crate::layers::observe::CallFacts;
use crate::reload::Current;

/// The bearer token Auth verified, in the request's extensions for the Context layer
/// below when it hands out call-context handles.
#[derive(Clone)]
pub struct VerifiedBearer(pub HeaderValue);

/// Wraps a service in [`Auth`].
#[derive(Clone)]
pub struct AuthLayer {
    authenticator: Arc<Current<Authenticator>>,
    keep_bearer: bool,
}

impl AuthLayer {
    /// `authenticator` is read per call, so a configuration reload takes effect at once.
    pub fn new(authenticator: Arc<Current<Authenticator>>) -> Self {
        AuthLayer {
            authenticator,
            keep_bearer: false,
        }
    }

    /// Hands each verified bearer token down as a [`VerifiedBearer`], for call contexts.
    pub fn keeping_bearer(mut self, keep: bool) -> Self {
        self.keep_bearer = keep;
        self
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            authenticator: self.authenticator.clone(),
            keep_bearer: self.keep_bearer,
        }
    }
}

/// See the module documentation.
#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    authenticator: Arc<Current<Authenticator>>,
    keep_bearer: bool,
}

impl<S> Service<Request<RequestBody>> for Auth<S>
where
    S: Service<Request<RequestBody>, Response = Response<ResponseBody>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<RequestBody>) -> Self::Future {
        let facts = CallFacts::of(&mut request);
        // Before anything else: rules, logs and the app must all see the one path the
        // grammar allows, so a path that an app server could decode or normalise into
        // another method never gets as far as authentication. The refusal's outcome makes
        // the layers above log it and count it under the bounded `other` method label.
        let valid_path = request
            .uri()
            .path_and_query()
            .is_some_and(|path| grpc::is_method_path(path.as_str()));
        if !valid_path {
            let refusal = Refusal::invalid_method_path();
            tracing::debug!(reason = refusal.reason.label(), "call refused");
            facts.set_auth(refused(AuthMethod::None, &refusal));
            // No method in the details: this path names none.
            return Box::pin(std::future::ready(Ok(refusal.response(None))));
        }
        let (mut parts, body) = request.into_parts();
        // Strip first, on every path: refused, public and authenticated alike.
        strip_identity_headers(&mut parts.headers);
        call_context::strip_handles(&mut parts.headers);
        let authenticator = self.authenticator.get();
        let keep_bearer = self.keep_bearer;
        // The inner service is always ready; take the ready one and leave a clone.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        // Boxed rather than named: admission awaits the token verifier, an async fn whose
        // future has no name, so a named future would have to box that instead.
        Box::pin(async move {
            let (outcome, lifetime, bearer) = match admitted(authenticator.admit(&mut parts).await)
            {
                Ok(admitted) => admitted,
                Err((attempted, refusal)) => {
                    tracing::debug!(
                        method = parts.uri.path(),
                        reason = refusal.reason.label(),
                        "call refused"
                    );
                    facts.set_auth(refused(attempted, &refusal));
                    return Ok(refusal.response(Some(parts.uri.path())));
                }
            };
            facts.set_auth(outcome);
            if keep_bearer && let Some(bearer) = bearer {
                parts.extensions.insert(VerifiedBearer(bearer));
            }
            let call = inner.call(Request::from_parts(parts, body));
            let watch = lifetime
                .map(|lifetime| {
                    CredentialsWatch::new(lifetime.expires, lifetime.revoked)
                        .recording_into(facts.credentials_ended())
                })
                .filter(|watch| !watch.is_idle());
            match watch {
                None => call.await,
                Some(watch) => until_credentials_end(call, watch).await,
            }
        })
    }
}

/// An admitted call as the layers around Auth see it: the outcome they log and count,
/// what ends the call's credentials, and the verified bearer token.
type Let = (AuthOutcome, Option<Lifetime>, Option<HeaderValue>);

/// What an admission means for the layers around Auth, or the refusal and how the caller
/// tried to authenticate.
fn admitted(admission: Admission) -> Result<Let, (AuthMethod, Refusal)> {
    Ok(match admission {
        Admission::Public => (
            AuthOutcome::Admitted {
                principal: Principal::anonymous(AuthMethod::None),
                would_refuse: None,
            },
            None,
            None,
        ),
        Admission::Certificate {
            principal,
            would_refuse,
        } => (
            AuthOutcome::Admitted {
                principal,
                would_refuse,
            },
            None,
            None,
        ),
        Admission::Jwt(call) | Admission::ApiKey(call) => (
            AuthOutcome::Admitted {
                principal: call.principal,
                would_refuse: call.would_refuse,
            },
            call.lifetime,
            call.bearer,
        ),
        Admission::Refused { attempted, refusal } => return Err((attempted, refusal)),
    })
}

/// What the layers above learn of a refused call.
fn refused(attempted: AuthMethod, refusal: &Refusal) -> AuthOutcome {
    AuthOutcome::Refused {
        attempted,
        reason: refusal.reason,
    }
}

/// The app's answer to `call`, its body ended when `watch` fires. If the credentials end
/// before the app has answered at all (a client stream the app reads to the end first),
/// the call is dropped, which resets the app's stream, and answered here.
async fn until_credentials_end<F>(
    call: F,
    mut watch: CredentialsWatch,
) -> Result<Response<ResponseBody>, Infallible>
where
    F: Future<Output = Result<Response<ResponseBody>, Infallible>>,
{
    let mut call = std::pin::pin!(call);
    let answered = std::future::poll_fn(|cx| {
        if let Poll::Ready(response) = call.as_mut().poll(cx) {
            return Poll::Ready(Ok(response));
        }
        watch.poll_end(cx).map(Err)
    })
    .await;
    match answered {
        Ok(response) => {
            let mut response = response?;
            response.body_mut().end_when(watch);
            Ok(response)
        }
        Err(end) => Ok(end.status().response()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::config::Config;
    use crate::grpc::{Code, GRPC_STATUS};

    #[tokio::test]
    async fn paths_outside_the_grammar_are_refused_before_the_app_is_called() {
        let config = Config::from_yaml(
            "listen: { address: 127.0.0.1:1 }\ntls: { enabled: false }\nupstream: { address: 127.0.0.1:2 }\n",
        )
        .unwrap();
        let authenticator = Arc::new(Authenticator::build(&config).unwrap());
        let called = Arc::new(AtomicUsize::new(0));
        let counter = called.clone();
        let app = tower::service_fn(move |_: Request<RequestBody>| {
            counter.fetch_add(1, Ordering::SeqCst);
            async {
                let mut response = Response::new(ResponseBody::empty());
                response
                    .headers_mut()
                    .insert(GRPC_STATUS, Code::Ok.header_value());
                Ok::<_, Infallible>(response)
            }
        });
        let mut auth = AuthLayer::new(Arc::new(Current::new(authenticator))).layer(app);
        for path in [
            "/pkg.Svc/%47et",
            "/pkg.Svc/Get/",
            "/pkg.Svc/./Get",
            "/pkg.Svc/Get?x",
        ] {
            let mut request = Request::post(path)
                .body(RequestBody::local(bytes::Bytes::new()))
                .unwrap();
            let facts = CallFacts::of(&mut request);
            let response = auth.call(request).await.unwrap();
            assert_eq!(response.headers()[GRPC_STATUS], "12", "{path}");
            let outcome = facts.auth().expect("an outcome");
            assert_eq!(outcome.refusal(), Some("invalid_method_path"), "{path}");
        }
        assert_eq!(
            called.load(Ordering::SeqCst),
            0,
            "a refused path was forwarded"
        );
        let request = Request::post("/pkg.Svc/Get")
            .body(RequestBody::local(bytes::Bytes::new()))
            .unwrap();
        let response = auth.call(request).await.unwrap();
        assert_eq!(response.headers()[GRPC_STATUS], "0");
        assert_eq!(called.load(Ordering::SeqCst), 1);
    }
}
