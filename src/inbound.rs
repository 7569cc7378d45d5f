//! The request path, assembled in one place: reading [`build`] top to bottom shows the
//! order in which a call meets each layer before it is forwarded to the app.
//!
//! Every layer is always ready (`poll_ready` returns `Ready` at once): limits on
//! concurrency are enforced by HTTP/2 stream settings, the listener and the Limits
//! layer's refusals, not by back-pressure inside the chain.

pub mod auth;
pub mod context;
pub mod forward;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod schema;

use std::sync::Arc;

use http::Request;
use tokio_util::sync::CancellationToken;
use tower::{Service, ServiceBuilder};

use crate::auth::Authenticator;
use crate::body::RequestBody;
use crate::call_context::CallContexts;
use crate::config::Limits as LimitSettings;
use crate::layers::deadline::{DeadlineLayer, DeadlineService};
use crate::layers::observe::ObserveLayer;
use crate::layers::recovery::{Recovery, RecoveryLayer};
use crate::learn::AppSchema;
use crate::limits::GlobalLimiter;
use crate::reload::Current;
use crate::telemetry::Tracing;
use auth::{Auth, AuthLayer};
use context::{ContextLayer, ContextService};
pub use forward::Forward;
use limits::{Limits, LimitsLayer};
use logging::{AccessLog, Logging};
use metrics::{CallCounter, Metrics};
use schema::{Schema, SchemaLayer};

/// The assembled chain, outermost layer first, around `App`: [`Forward`] in gatehouse,
/// a stand-in for the app in tests.
pub type Chain<App = Forward> =
    Recovery<Logging<Metrics<Auth<Limits<Schema<ContextService<DeadlineService<App>>>>>>>>;

/// What the chain answers with.
pub type ChainResponse = <Chain as Service<Request<RequestBody>>>::Response;

/// What the inbound chain is built from, besides the app.
pub struct Parts {
    pub tracing: Arc<Tracing>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub authenticator: Arc<Current<Authenticator>>,
    pub limits: LimitSettings,
    /// `limits.global`, when configured: budgets shared with the other replicas.
    pub global: Option<Arc<GlobalLimiter>>,
    /// Where call contexts live, when an outbound destination uses `context`.
    pub contexts: Option<Arc<CallContexts>>,
    /// The app's schema, kept current; `None` with `schema.source: none`.
    pub schema: Option<Arc<AppSchema>>,
    /// Cancelled when a drain gives up on the calls still open.
    pub abort: CancellationToken,
}

/// Builds the chain around `app`, the service that forwards calls to the app.
pub fn build<App>(parts: Parts, app: App) -> Chain<App> {
    let Parts {
        tracing,
        metrics,
        authenticator,
        limits,
        global,
        contexts,
        schema,
        abort,
    } = parts;
    ServiceBuilder::new()
        // Outermost, so that a panic anywhere below it, forwarding included, becomes an
        // INTERNAL status for that one call while the process keeps serving.
        .layer(RecoveryLayer::new())
        // Next, so every call that is answered is logged and traced, refusals included,
        // and its time covers everything gatehouse does for it.
        .layer(ObserveLayer::new(AccessLog::new(tracing)))
        // Counts what Logging logs; above Auth so refusals are counted too.
        .layer(ObserveLayer::new(CallCounter::new(metrics.clone())))
        // Nothing reaches the app without a path in gRPC's grammar, having been stripped
        // of forged identity headers and credentials, and admitted.
        .layer(AuthLayer::new(authenticator).keeping_bearer(contexts.is_some()))
        // After Auth, whose verdict names the identity a call counts against; refused
        // calls above it never take a slot, and one identity cannot take the app's
        // whole stream budget. The per-pod limits decide first, so a call they refuse
        // spends nothing of a budget shared with the other replicas (limits.global), nor
        // does one the Schema layer is about to refuse.
        .layer(
            LimitsLayer::new(&limits, metrics.clone())
                .with_global(global)
                .with_schema(schema.clone()),
        )
        // After Limits, so only calls admitted within their identity's share cost a
        // lookup; refuses what the app's schema does not have and checks request fields
        // against the caller Auth verified. A pass-through without a schema.
        .layer(SchemaLayer::new(schema, metrics.clone()))
        // Only calls that will reach the app get a handle for their outbound calls:
        // below Schema, which refuses what the app does not serve.
        .layer(ContextLayer::new(contexts, metrics))
        // Innermost but forwarding: the deadline covers the wait for a stream to the app
        // and the whole answer, and a drain that runs out of time ends what is left.
        .layer(DeadlineLayer::new(abort))
        .service(app)
}

#[cfg(test)]
mod tests {
    //! The whole chain in memory, around a stand-in for the app: no sockets, no server.

    use std::convert::Infallible;
    use std::sync::Mutex;

    use base64::Engine as _;
    use http::{HeaderMap, HeaderName, Response};
    use http_body_util::BodyExt;
    use prost::Message as _;

    use super::*;
    use crate::body::ResponseBody;
    use crate::config::Config;
    use crate::grpc::details::{ErrorInfo, RpcStatus};
    use crate::grpc::{Code, GRPC_MESSAGE, GRPC_STATUS, GRPC_STATUS_DETAILS};

    const SECRET: [u8; 32] = [9; 32];

    /// The app: answers OK and keeps the headers of every call it is handed; a call of
    /// `/pkg.Svc/Panic` panics in it, as a bug below Recovery would.
    #[derive(Clone, Default)]
    struct App {
        seen: Arc<Mutex<Vec<HeaderMap>>>,
    }

    impl App {
        fn calls(&self) -> usize {
            self.seen.lock().unwrap().len()
        }

        fn last(&self) -> HeaderMap {
            self.seen.lock().unwrap().last().cloned().expect("a call")
        }
    }

    impl Service<Request<RequestBody>> for App {
        type Response = Response<ResponseBody>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Response<ResponseBody>, Infallible>>;

        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Infallible>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: Request<RequestBody>) -> Self::Future {
            self.seen.lock().unwrap().push(request.headers().clone());
            if request.uri().path() == "/pkg.Svc/Panic" {
                panic!("the app's stand-in panics on request");
            }
            let mut response = Response::new(ResponseBody::empty());
            response
                .headers_mut()
                .insert(GRPC_STATUS, Code::Ok.header_value());
            std::future::ready(Ok(response))
        }
    }

    struct Harness {
        chain: Chain<App>,
        app: App,
        metrics: Arc<crate::metrics::Metrics>,
        _dir: tempfile::TempDir,
    }

    fn harness() -> Harness {
        harness_with("")
    }

    /// The chain with `more` added to its configuration; with a `schema` section, the
    /// schema of `orders.v1.Orders` learned.
    fn harness_with(more: &str) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, SECRET).unwrap();
        let config = Config::from_yaml(&format!(
            "listen: {{ address: 127.0.0.1:1 }}\ntls: {{ enabled: false }}\nupstream: {{ address: 127.0.0.1:2 }}\n\
             auth:\n  jwt:\n    providers:\n      - {{ name: t, issuer: iss, audiences: [svc], algorithms: [HS256], secret_file: {} }}\n{more}",
            secret.display()
        ))
        .unwrap();
        let schema = AppSchema::new(&config.schema, config.authorization.as_ref());
        if let Some(schema) = &schema {
            let orders = crate::schema::Schema::from_files(&[crate::schema::tests::orders()]);
            schema.learned(orders.unwrap(), "test");
        }
        let authenticator = Authenticator::build(&config).unwrap_or_else(|p| panic!("{p:?}"));
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let app = App::default();
        let chain = build(
            Parts {
                tracing: Arc::new(Tracing::propagate_only(0.0)),
                metrics: metrics.clone(),
                authenticator: Arc::new(Current::new(Arc::new(authenticator))),
                limits: config.limits.clone(),
                global: None,
                contexts: None,
                schema,
                abort: CancellationToken::new(),
            },
            app.clone(),
        );
        Harness {
            chain,
            app,
            metrics,
            _dir: dir,
        }
    }

    fn token() -> String {
        let exp = jsonwebtoken::get_current_timestamp() + 600;
        let claims = serde_json::json!({"iss": "iss", "aud": "svc", "sub": "u1", "exp": exp,
                                        "tenant_id": "acme", "roles": ["reader"]});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(&SECRET),
        )
        .unwrap()
    }

    /// What the caller sees of a call: its status code, message and, for a status
    /// gatehouse generated, the `ErrorInfo` of its details.
    struct Answer {
        status: String,
        message: String,
        info: Option<ErrorInfo>,
    }

    /// A call of `path` with `headers`, as the server hands it to the chain, read to the
    /// end of its body; the status from the headers or the trailers.
    async fn call(chain: &mut Chain<App>, path: &str, headers: &[(&str, &str)]) -> Answer {
        let mut request = Request::post(format!("http://gatehouse.test{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(RequestBody::local(bytes::Bytes::from_static(&[0; 5])))
            .unwrap();
        let response = chain.call(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let collected = body.collect().await.unwrap_or_else(|_| panic!("a body"));
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let read = |name: &HeaderName| parts.headers.get(name).or_else(|| trailers.get(name));
        let text = |name| read(&name).map_or_else(String::new, |v| v.to_str().unwrap().to_owned());
        let info = read(&GRPC_STATUS_DETAILS).map(|value| {
            let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(value.as_bytes())
                .unwrap();
            let status = RpcStatus::decode(bytes.as_slice()).unwrap();
            ErrorInfo::decode(status.details[0].value.as_slice()).unwrap()
        });
        Answer {
            status: text(GRPC_STATUS),
            message: text(GRPC_MESSAGE),
            info,
        }
    }

    /// A log that tests can read: what the chain logs on this thread while the guard
    /// `capture` returns is alive. One global subscriber writes each thread's events to
    /// that thread's log, if it has one: a subscriber per test (`set_default`) can miss
    /// events when another thread's test registers the same callsite first.
    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<u8>>>);

    thread_local! {
        static SINK: std::cell::RefCell<Option<Log>> = const { std::cell::RefCell::new(None) };
    }

    /// Writes to the current thread's log, or nowhere.
    struct ThreadSink;

    impl std::io::Write for ThreadSink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            SINK.with_borrow(|sink| {
                if let Some(log) = sink {
                    log.0.lock().unwrap().extend_from_slice(bytes);
                }
            });
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Stops capturing when dropped.
    struct Capturing;

    impl Drop for Capturing {
        fn drop(&mut self) {
            SINK.set(None);
        }
    }

    impl Log {
        fn capture(&self) -> Capturing {
            static INSTALLED: std::sync::Once = std::sync::Once::new();
            INSTALLED.call_once(|| {
                let subscriber = tracing_subscriber::fmt()
                    .event_format(crate::telemetry::Logfmt)
                    .with_writer(|| ThreadSink)
                    .with_max_level(tracing::Level::WARN)
                    .finish();
                tracing::subscriber::set_global_default(subscriber)
                    .expect("the only global subscriber of the unit tests");
            });
            SINK.set(Some(self.clone()));
            Capturing
        }

        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    #[tokio::test]
    async fn a_public_call_reaches_the_app_as_anonymous_with_forged_identity_stripped() {
        let Harness { mut chain, app, .. } = harness();
        let answer = call(
            &mut chain,
            "/grpc.health.v1.Health/Check",
            &[("x-user-id", "admin"), ("x_tenant_id", "victim")],
        )
        .await;
        assert_eq!(answer.status, "0");
        let seen = app.last();
        assert_eq!(seen["x-auth-method"], "none");
        assert!(seen.get("x-user-id").is_none(), "{seen:?}");
        assert!(seen.get("x_tenant_id").is_none(), "{seen:?}");
    }

    #[tokio::test]
    async fn an_authenticated_call_reaches_the_app_with_the_verified_identity_only() {
        let Harness { mut chain, app, .. } = harness();
        let bearer = format!("Bearer {}", token());
        let answer = call(
            &mut chain,
            "/pkg.Svc/Get",
            &[
                ("authorization", &bearer),
                ("x-user-id", "admin"),
                ("x-user-roles", "admin"),
                ("x-auth-method-bin", "AAAA"),
            ],
        )
        .await;
        assert_eq!(answer.status, "0");
        let seen = app.last();
        assert_eq!(seen["x-user-id"], "u1");
        assert_eq!(seen["x-tenant-id"], "acme");
        assert_eq!(seen["x-user-roles"], "reader");
        assert_eq!(seen["x-auth-method"], "jwt");
        assert_eq!(seen.get_all("x-user-id").iter().count(), 1);
        assert!(seen.get("x-auth-method-bin").is_none(), "{seen:?}");
    }

    #[tokio::test]
    async fn a_refused_call_gets_its_status_and_never_reaches_the_app() {
        let Harness {
            mut chain,
            app,
            metrics,
            ..
        } = harness();
        let answer = call(&mut chain, "/pkg.Svc/Get", &[("x-user-id", "u1")]).await;
        assert_eq!(answer.status, "16", "UNAUTHENTICATED");
        assert_eq!(answer.message, "missing credentials");
        let info = answer.info.expect("details");
        assert_eq!(info.reason, "MISSING_CREDENTIALS");
        assert_eq!(info.metadata["method"], "/pkg.Svc/Get");
        let answer = call(
            &mut chain,
            "/pkg.Svc/Get",
            &[("authorization", "Bearer not.a.token")],
        )
        .await;
        assert_eq!(answer.status, "16", "UNAUTHENTICATED");
        assert_eq!(app.calls(), 0);
        // Metrics, above Auth, counted the refusals.
        let rendered = metrics.render();
        assert!(
            rendered.contains("reason=\"missing_credentials\""),
            "{rendered}"
        );
    }

    #[tokio::test]
    async fn with_a_schema_unknown_methods_never_reach_the_app_and_known_ones_are_typed() {
        let Harness {
            mut chain,
            app,
            metrics,
            ..
        } = harness_with("schema: { source: reflection }\n");
        let bearer = format!("Bearer {}", token());
        let answer = call(
            &mut chain,
            "/orders.v1.Orders/Sync",
            &[("authorization", &bearer)],
        )
        .await;
        assert_eq!(answer.status, "0");
        let answer = call(
            &mut chain,
            "/orders.v1.Orders/Nope",
            &[("authorization", &bearer)],
        )
        .await;
        assert_eq!(answer.status, "12", "UNIMPLEMENTED");
        assert_eq!(answer.info.expect("details").reason, "UNKNOWN_METHOD");
        assert_eq!(app.calls(), 1, "only the known method reached the app");
        // The Schema layer told Metrics the kind through the call's facts.
        let rendered = metrics.render();
        let typed = r#"grpc_server_handled_total{grpc_type="bidi_stream",grpc_service="orders.v1.Orders",grpc_method="Sync",grpc_code="OK"} 1"#;
        assert!(rendered.lines().any(|line| line == typed), "{rendered}");
        let other = r#"grpc_server_handled_total{grpc_type="unknown",grpc_service="other",grpc_method="other",grpc_code="Unimplemented"} 1"#;
        assert!(rendered.lines().any(|line| line == other), "{rendered}");
    }

    #[tokio::test]
    async fn a_panic_in_the_app_becomes_internal_and_the_chain_keeps_serving() {
        let Harness { mut chain, app, .. } = harness();
        let bearer = format!("Bearer {}", token());
        let log = Log::default();
        let logged = log.capture();
        let answer = call(&mut chain, "/pkg.Svc/Panic", &[("authorization", &bearer)]).await;
        drop(logged);
        assert_eq!(answer.status, "13", "INTERNAL");
        assert_eq!(answer.message, "internal error in gatehouse");
        let info = answer.info.expect("details");
        assert_eq!(info.reason, "INTERNAL");
        assert_eq!(info.metadata["method"], "/pkg.Svc/Panic");
        let log = log.text();
        assert!(
            log.contains("panic while handling a call") && log.contains("method=/pkg.Svc/Panic"),
            "{log}"
        );
        assert_eq!(app.calls(), 1);
        let answer = call(&mut chain, "/pkg.Svc/Get", &[("authorization", &bearer)]).await;
        assert_eq!(answer.status, "0");
        assert_eq!(app.calls(), 2);
    }
}
