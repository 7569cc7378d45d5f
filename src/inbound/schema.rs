//! Schema: what the app does not serve never reaches it, and a call to a method with
//! field rules has every request message checked against them (see [`checked`]).
//!
//! With a schema (`schema.source: reflection | descriptor_set`), a call to a method the
//! app's schema does not have is answered UNIMPLEMENTED (UNKNOWN_METHOD), and while no
//! schema is known yet UNAVAILABLE (SCHEMA_UNKNOWN); `schema.unknown_methods: forward`
//! lets both through, except to methods whose deciding rule has field rules, which
//! cannot be checked without one. The app's reflection service is hidden unless
//! `schema.expose_reflection`. A known method's stream kind is written into the call's
//! facts, for Metrics' exact `grpc_type`.
//!
//! It sits after Limits, so only calls admitted within their identity's share cost a
//! lookup, and after Auth, whose verified caller the field rules compare with. Without
//! a schema the layer is a pass-through: the inner future unchanged, no lookup.
//!
//! ```no_run
//! # fn example(forward: gatehouse::inbound::Forward, config: gatehouse::config::Config) {
//! use std::sync::Arc;
//! use gatehouse::inbound::schema::SchemaLayer;
//! use gatehouse::learn::AppSchema;
//! use gatehouse::metrics::Metrics;
//! use tower::Layer;
//! let schema = AppSchema::new(&config.schema, config.authorization.as_ref());
//! let service = SchemaLayer::new(schema, Arc::new(Metrics::new())).layer(forward);
//! # }
//! ```

pub mod checked;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use tower::{Layer, Service};

use crate::auth::outcome::AuthOutcome;
use crate::body::{RequestBody, ResponseBody};
use crate::config::UnknownMethods;
use crate::grpc::{self, Reason};
use crate::layers::observe::CallFacts;
use crate::learn::AppSchema;
use crate::metrics::Metrics;
use crate::schema::{MethodRules, StreamKind};
use crate::tls::ConnectionInfo;
use checked::{CallerIdentity, CheckedRequest, CheckedResponse, Verdict};

/// The app's reflection services, which callers reach only with `expose_reflection`.
const REFLECTION: [&str; 2] = [
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// Wraps a service in [`Schema`].
#[derive(Clone)]
pub struct SchemaLayer {
    schema: Option<Arc<AppSchema>>,
    metrics: Arc<Metrics>,
}

impl SchemaLayer {
    /// `None`: no schema, a pass-through. `metrics` counts messages refused for their
    /// size in `gatehouse_limit_refusals_total{limit="max_message_size"}`.
    pub fn new(schema: Option<Arc<AppSchema>>, metrics: Arc<Metrics>) -> Self {
        SchemaLayer { schema, metrics }
    }
}

impl<S> Layer<S> for SchemaLayer {
    type Service = Schema<S>;

    fn layer(&self, inner: S) -> Schema<S> {
        Schema {
            inner,
            schema: self.schema.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// See the module documentation.
#[derive(Clone)]
pub struct Schema<S> {
    inner: S,
    schema: Option<Arc<AppSchema>>,
    metrics: Arc<Metrics>,
}

pin_project_lite::pin_project! {
    /// What [`Schema`] answers with: a named future rather than a boxed one, so a call
    /// costs no allocation here unless its method has field rules.
    #[project = Projected]
    pub enum SchemaFuture<F> {
        Inner { #[pin] call: F },
        Refused { response: Option<Response<ResponseBody>> },
        Checked {
            #[pin]
            call: F,
            verdict: Arc<Verdict>,
            // The call's path, for the refusal's details; taken when the answer comes.
            method: Option<http::Uri>,
        },
    }
}

impl<F> Future for SchemaFuture<F>
where
    F: Future<Output = Result<Response<ResponseBody>, Infallible>>,
{
    type Output = Result<Response<ResponseBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Projected::Inner { call } => call.poll(cx),
            Projected::Refused { response } => {
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
            Projected::Checked {
                call,
                verdict,
                method,
            } => {
                let response = ready!(call.poll(cx))?;
                let method = method.take().expect("polled after completion");
                if let Some(status) = verdict.get() {
                    // Refused before the app answered: the app's stream has been reset.
                    return Poll::Ready(Ok(status
                        .clone()
                        .with("method", method.path())
                        .response()));
                }
                let verdict = verdict.clone();
                Poll::Ready(Ok(response.map(|body| {
                    // The app's stream, so credentials that end while the caller reads
                    // nothing still end it through the wrapper.
                    let stream = body.peer_stream();
                    let checked = CheckedResponse::new(body, verdict, method);
                    ResponseBody::forwarded(UnsyncBoxBody::new(checked), stream)
                })))
            }
        }
    }
}

/// What the layer decided for one call.
enum Decision {
    Refuse(grpc::Status),
    /// Forwarded as without a schema.
    Plain,
    Known(StreamKind, Option<Arc<MethodRules>>),
}

/// Whether the Schema layer refuses calls to `path` (an unknown method, or no schema yet).
pub(super) fn refused(schema: &AppSchema, path: &str) -> bool {
    matches!(decide(schema, path), Decision::Refuse(_))
}

fn decide(schema: &AppSchema, path: &str) -> Decision {
    let settings = schema.settings();
    let forward = settings.unknown_methods == UnknownMethods::Forward;
    if REFLECTION.contains(&path) {
        return if settings.expose_reflection {
            Decision::Known(StreamKind::BidiStream, None)
        } else {
            Decision::Refuse(grpc::Status::new(
                Reason::UnknownMethod,
                format!(
                    "unknown method {path}: the app's reflection is not exposed (schema.expose_reflection)"
                ),
            ))
        };
    }
    let snapshot = schema.snapshot();
    let Some(table) = &snapshot.table else {
        if forward && !schema.has_field_rules(path) {
            return Decision::Plain;
        }
        return Decision::Refuse(grpc::Status::new(
            Reason::SchemaUnknown,
            "the app's schema is not known yet: the app has not answered gatehouse",
        ));
    };
    match table.get(path) {
        Some(entry) => Decision::Known(entry.kind, entry.rules.clone()),
        None if forward && !table.needs_fields(path) => Decision::Plain,
        None => Decision::Refuse(grpc::Status::new(
            Reason::UnknownMethod,
            format!("unknown method {path}: the app does not serve it"),
        )),
    }
}

/// Who the caller is, as Auth wrote it into the call's facts, and its connection.
fn caller(request: &Request<RequestBody>) -> CallerIdentity {
    let principal = CallFacts::in_request(request).and_then(|facts| match facts.auth() {
        Some(AuthOutcome::Admitted { principal, .. }) => Some(principal.clone()),
        _ => None,
    });
    CallerIdentity {
        principal,
        connection: request.extensions().get::<Arc<ConnectionInfo>>().cloned(),
    }
}

impl<S> Service<Request<RequestBody>> for Schema<S>
where
    S: Service<Request<RequestBody>, Response = Response<ResponseBody>, Error = Infallible>,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = SchemaFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<RequestBody>) -> Self::Future {
        let Some(schema) = &self.schema else {
            return SchemaFuture::Inner {
                call: self.inner.call(request),
            };
        };
        let path = request.uri().path();
        let (kind, rules) = match decide(schema, path) {
            Decision::Plain => {
                return SchemaFuture::Inner {
                    call: self.inner.call(request),
                };
            }
            Decision::Refuse(status) => {
                tracing::debug!(
                    method = path,
                    reason = status.reason().label(),
                    "call refused"
                );
                let response = Some(status.with("method", path).response());
                return SchemaFuture::Refused { response };
            }
            Decision::Known(kind, rules) => (kind, rules),
        };
        if let Some(facts) = CallFacts::in_request(&request) {
            facts.set_stream_kind(kind);
        }
        let Some(rules) = rules else {
            return SchemaFuture::Inner {
                call: self.inner.call(request),
            };
        };
        let verdict = Arc::new(Verdict::default());
        let caller = caller(&request);
        let max_message =
            usize::try_from(schema.settings().max_message_size.0).unwrap_or(usize::MAX);
        let (parts, body) = request.into_parts();
        let watched = verdict.clone();
        let metrics = self.metrics.clone();
        let body = body.filtered(|body| {
            CheckedRequest::new(body, rules, caller, watched, max_message).counted(metrics)
        });
        let method = Some(parts.uri.clone());
        SchemaFuture::Checked {
            call: self.inner.call(Request::from_parts(parts, body)),
            verdict,
            method,
        }
    }
}
