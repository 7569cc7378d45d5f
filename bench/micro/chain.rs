//! The per-call cost of the observability layers (Logging with tracing, and Metrics),
//! in memory: the same trivial inner service called bare and through both layers, with
//! the access log formatted as logfmt into a sink and the response watched to its end;
//! and of the small steps every call takes: identity headers stripped then set,
//! `grpc-timeout` parsed, and one access-log line formatted as logfmt.
//!
//!     cargo bench --bench chain

use std::convert::Infallible;
use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt as _;
use gatehouse::body::{RequestBody, ResponseBody};
use gatehouse::grpc::{Code, GRPC_STATUS};
use gatehouse::inbound::logging::AccessLog;
use gatehouse::inbound::metrics::CallCounter;
use gatehouse::layers::observe::ObserveLayer;
use gatehouse::metrics::Metrics;
use gatehouse::telemetry::{Logfmt, Tracing};
use http::Request;
use http_body_util::BodyExt;
use tower::{Layer, Service};

fn request() -> Request<RequestBody> {
    Request::post("http://localhost/pkg.Svc/Get")
        .header("content-type", "application/grpc")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .body(RequestBody::local(Bytes::from_static(&[0, 0, 0, 0, 0])))
        .expect("valid request")
}

fn app() -> impl Service<
    Request<RequestBody>,
    Response = http::Response<ResponseBody>,
    Error = Infallible,
    Future: Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(|_: Request<RequestBody>| async {
        let mut response = http::Response::new(ResponseBody::empty());
        response
            .headers_mut()
            .insert(GRPC_STATUS, Code::Ok.header_value());
        Ok::<_, Infallible>(response)
    })
}

fn layers(c: &mut Criterion) {
    let subscriber = tracing_subscriber::fmt()
        .event_format(Logfmt)
        .with_writer(std::io::sink)
        .with_max_level(tracing::Level::INFO)
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("one subscriber");

    let mut bare = app();
    let tracing = Arc::new(Tracing::propagate_only(1.0));
    let mut observed = ObserveLayer::new(AccessLog::new(tracing))
        .layer(ObserveLayer::new(CallCounter::new(Arc::new(Metrics::new()))).layer(app()));

    let mut group = c.benchmark_group("chain");
    group.bench_function("bare", |b| {
        b.iter(|| {
            let response = bare
                .call(black_box(request()))
                .now_or_never()
                .expect("ready")
                .expect("infallible");
            black_box(response.into_body().collect().now_or_never())
        })
    });
    group.bench_function("logging+metrics", |b| {
        b.iter(|| {
            let response = observed
                .call(black_box(request()))
                .now_or_never()
                .expect("ready")
                .expect("infallible");
            black_box(response.into_body().collect().now_or_never())
        })
    });
    group.finish();
}

/// Strip-then-set on a request with a dozen headers, forged identity among them.
fn identity_headers(c: &mut Criterion) {
    use gatehouse::identity::{AuthMethod, Claims, Principal, strip_identity_headers};
    let principal = Principal::new(
        AuthMethod::Jwt,
        Claims {
            user_id: Some("user-1".into()),
            tenant_id: Some("acme".into()),
            roles: vec!["reader".into()],
            ..Claims::default()
        },
    )
    .expect("valid identity");
    let mut headers = http::HeaderMap::new();
    for (name, value) in [
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("user-agent", "grpc-go/1.60"),
        ("grpc-timeout", "5S"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("x-request-id", "4f1c2a"),
        ("x-tenant-id", "forged"),
        ("x_user_id", "forged"),
    ] {
        headers.insert(
            http::HeaderName::from_static(name),
            http::HeaderValue::from_static(value),
        );
    }
    c.bench_function("headers/strip_then_set", |b| {
        b.iter(|| {
            let mut headers = black_box(headers.clone());
            strip_identity_headers(&mut headers);
            principal.inject(&mut headers, None);
            headers
        })
    });
    let value = http::HeaderValue::from_static("250m");
    c.bench_function("grpc_timeout/parse", |b| {
        b.iter(|| gatehouse::grpc::parse_timeout(black_box(&value)))
    });
}

/// One access-log line, with the fields the Logging layer writes for an authenticated
/// call, formatted by gatehouse's logfmt writer into a sink.
fn logfmt_line(c: &mut Criterion) {
    let subscriber = tracing_subscriber::fmt()
        .event_format(Logfmt)
        .with_writer(std::io::sink)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let dispatch = tracing::Dispatch::new(subscriber);
    tracing::dispatcher::with_default(&dispatch, || {
        c.bench_function("logfmt/access_line", |b| {
            b.iter(|| {
                tracing::info!(
                    target: "gatehouse::access",
                    method = black_box("/gatehouse.demo.v1.Demo/Echo"),
                    grpc_code = "OK",
                    duration_ms = %format_args!("{:.3}", black_box(0.4213)),
                    user_id = Some(black_box("user-1")),
                    tenant_id = Some(black_box("acme")),
                    api_key = None::<&str>,
                    auth = Some("jwt"),
                    refused = None::<&str>,
                    peer = Some(black_box("spiffe://cluster.local/ns/web/sa/gateway")),
                    trace_id = %format_args!("{:032x}", black_box(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736_u128)),
                    bytes_in = black_box(1029_u64),
                    bytes_out = black_box(1034_u64),
                    "request"
                );
            })
        });
    });
}

criterion_group!(benches, layers, identity_headers, logfmt_line);
criterion_main!(benches);
