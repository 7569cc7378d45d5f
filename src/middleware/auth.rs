//! Auth: refuses paths outside gRPC's `/Service/Method` grammar, strips caller-sent
//! identity headers from every request, then admits the call (credentials, peer
//! allow-list, authorization rules) and sets the verified identity, or answers with the
//! refusal's gRPC status without calling the app.
//!
//! A call admitted with a token or an API key is then watched until it ends: when the
//! token expires or the key is revoked first, the call ends with UNAUTHENTICATED (see
//! [`CredentialsWatch`]), whether the app has answered yet or not.
//!
//! With a call-context table (a destination uses `credentials: context`), an admitted
//! call with a verified bearer token also gets a handle in `baggage`, alive while the
//! call is open and for the grace after; caller-sent handles never reach the app.
//!
//! ```no_run
//! # async fn example(config: gatehouse::config::Config, forward: gatehouse::upstream::Forward) {
//! use std::sync::Arc;
//! use gatehouse::auth::Authenticator;
//! use gatehouse::middleware::auth::AuthLayer;
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

use http::header::AUTHORIZATION;
use http::{Request, Response};
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::auth::outcome::{AuthOutcome, DecidingRule, Refusal};
use crate::auth::{Admission, Authenticator};
use crate::body::{CredentialsWatch, RequestBody, ResponseBody};
use crate::call_context::{self as context, CallContexts};
use crate::grpc;
use crate::identity::{AuthMethod, Principal, strip_identity_headers};
use crate::metrics::Metrics;
use crate::reload::Current;
use crate::server::HeldForCall;

/// Wraps a service in [`Auth`].
#[derive(Clone)]
pub struct AuthLayer {
    authenticator: Arc<Current<Authenticator>>,
    contexts: Option<Contexts>,
}

/// Where admitted calls get their handles, and what counts a full table.
#[derive(Clone)]
struct Contexts {
    table: Arc<CallContexts>,
    metrics: Arc<Metrics>,
}

impl AuthLayer {
    /// `authenticator` is read per call, so a configuration reload takes effect at once.
    pub fn new(authenticator: Arc<Current<Authenticator>>) -> Self {
        AuthLayer {
            authenticator,
            contexts: None,
        }
    }

    /// Gives admitted calls with a verified bearer token a handle in `table`.
    pub fn with_contexts(
        mut self,
        table: Option<Arc<CallContexts>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        self.contexts = table.map(|table| Contexts { table, metrics });
        self
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            authenticator: self.authenticator.clone(),
            contexts: self.contexts.clone(),
        }
    }
}

/// See the module documentation.
#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    authenticator: Arc<Current<Authenticator>>,
    contexts: Option<Contexts>,
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

    fn call(&mut self, request: Request<RequestBody>) -> Self::Future {
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
            // No method in the details: this path names none.
            let mut response = refusal.response(None);
            response
                .extensions_mut()
                .insert(refused(AuthMethod::None, &refusal));
            return Box::pin(std::future::ready(Ok(response)));
        }
        let (mut parts, body) = request.into_parts();
        // Strip first, on every path: refused, public and authenticated alike.
        strip_identity_headers(&mut parts.headers);
        context::strip_handles(&mut parts.headers);
        // Read before admission, which may take `authorization` away from the app.
        let presented = self.contexts.as_ref().and_then(|_| {
            let token = parts.headers.get(AUTHORIZATION)?.clone();
            let deadline = parts
                .headers
                .get(grpc::GRPC_TIMEOUT)
                .and_then(grpc::parse_timeout)
                .map(|timeout| Instant::now() + timeout);
            Some((token, deadline))
        });
        let contexts = self.contexts.clone();
        let authenticator = self.authenticator.get();
        // The inner service is always ready; take the ready one and leave a clone.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        // Boxed rather than named: admission awaits the token verifier, an async fn whose
        // future has no name, so a named future would have to box that instead.
        Box::pin(async move {
            let admission = authenticator.admit(&mut parts).await;
            let with_token = matches!(admission, Admission::Jwt(_));
            let (outcome, lifetime) = match admission {
                Admission::Public => (admitted(Principal::anonymous(AuthMethod::None), None), None),
                Admission::Certificate {
                    principal,
                    would_refuse,
                } => (admitted(principal, would_refuse), None),
                Admission::Jwt(call) | Admission::ApiKey(call) => {
                    (admitted(call.principal, call.would_refuse), call.lifetime)
                }
                Admission::Refused { attempted, refusal } => {
                    tracing::debug!(
                        method = parts.uri.path(),
                        reason = refusal.reason.label(),
                        "call refused"
                    );
                    let mut response = refusal.response(Some(parts.uri.path()));
                    response
                        .extensions_mut()
                        .insert(refused(attempted, &refusal));
                    return Ok(response);
                }
            };
            // Limits, below, counts the call against the identity decided here.
            parts.extensions.insert(outcome.clone());
            let open = match (contexts, presented) {
                (Some(contexts), Some((token, deadline))) if with_token => {
                    mint(&contexts, &mut parts.headers, token, deadline)
                }
                _ => None,
            };
            let call = inner.call(Request::from_parts(parts, body));
            let watch = lifetime
                .map(|lifetime| CredentialsWatch::new(lifetime.expires, lifetime.revoked))
                .filter(|watch| !watch.is_idle());
            let mut response = match watch {
                None => call.await?,
                Some(watch) => until_credentials_end(call, watch).await?,
            };
            if let Some(open) = open {
                // Limits, below, holds a slot for every call it lets through to the app; a
                // call it refused never showed the app its handle, so the handle goes at
                // once and refused calls cannot fill the table.
                match response.extensions_mut().remove::<HeldForCall>() {
                    Some(below) => {
                        // The server holds these until the call's stream ends; the
                        // handle's grace starts then.
                        response
                            .extensions_mut()
                            .insert(HeldForCall::new((below, open)));
                    }
                    None => open.forget(),
                }
            }
            response.extensions_mut().insert(outcome);
            Ok(response)
        })
    }
}

/// What the layers above learn of an admitted call.
fn admitted(principal: Arc<Principal>, would_refuse: Option<DecidingRule>) -> AuthOutcome {
    AuthOutcome::Admitted {
        principal,
        would_refuse,
    }
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
    let ended = watch.ended();
    let mut call = std::pin::pin!(call);
    let answered = std::future::poll_fn(|cx| {
        if let Poll::Ready(response) = call.as_mut().poll(cx) {
            return Poll::Ready(Ok(response));
        }
        watch.poll_end(cx).map(Err)
    })
    .await;
    let mut response = match answered {
        Ok(response) => {
            let mut response = response?;
            response.body_mut().end_when(watch);
            response
        }
        Err(end) => end.status().response(),
    };
    response.extensions_mut().insert(ended);
    Ok(response)
}

/// Gives the call its handle in `baggage`; a full table (counted) or a failed random
/// generator leaves the call without one rather than refusing it.
fn mint(
    contexts: &Contexts,
    headers: &mut http::HeaderMap,
    token: http::HeaderValue,
    deadline: Option<Instant>,
) -> Option<context::OpenCall> {
    match contexts.table.mint(token, deadline) {
        Ok((open, handle)) => {
            context::set_handle(headers, &handle);
            Some(open)
        }
        Err(context::MintError::Full) => {
            contexts.metrics.limit_refusal("context_max_handles");
            tracing::debug!("call admitted without a call context: the table is full");
            None
        }
        Err(error) => {
            tracing::warn!(%error, "call admitted without a call context");
            None
        }
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
        let call = |path: &str| {
            Request::post(path)
                .body(RequestBody::local(bytes::Bytes::new()))
                .unwrap()
        };
        for path in [
            "/pkg.Svc/%47et",
            "/pkg.Svc/Get/",
            "/pkg.Svc/./Get",
            "/pkg.Svc/Get?x",
        ] {
            let response = auth.call(call(path)).await.unwrap();
            assert_eq!(response.headers()[GRPC_STATUS], "12", "{path}");
            let outcome = response.extensions().get::<AuthOutcome>().unwrap();
            assert_eq!(outcome.refusal(), Some("invalid_method_path"), "{path}");
        }
        assert_eq!(
            called.load(Ordering::SeqCst),
            0,
            "a refused path was forwarded"
        );
        let response = auth.call(call("/pkg.Svc/Get")).await.unwrap();
        assert_eq!(response.headers()[GRPC_STATUS], "0");
        assert_eq!(called.load(Ordering::SeqCst), 1);
    }
}
