//! The schema-aware edge: gatehouse learns the app's methods from the app's own
//! reflection (or a descriptor set), refuses what the app does not serve, labels
//! `grpc_type` exactly, and holds every request message of a method with field rules to
//! the caller's verified identity: a message that does not match never reaches the app,
//! the ones before it do.

use std::net::SocketAddr;

use bytes::Bytes;
use tonic::Request;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::support::pb::orders::{OrderRequest, Owner};
use crate::support::pb::*;
use crate::support::*;

/// The API key of tenant `acme`, user `u1`.
const KEY: &str = "acme-app-key-0123456789abcdef";

/// The `/gatehouse.orders.v1.Orders/*` rule: tenant and owner bound to the caller.
const ORDER_RULES: &str = "authorization:
  rules:
    - methods: ['/gatehouse.orders.v1.Orders/*']
      allow_api_keys: [acme-app]
      fields: { tenant_id: '{tenant}', owner.user_id: '{user}' }
";

/// gatehouse in front of `upstream` with the admin port, the `acme-app` key, `rules`
/// and `schema` (a YAML flow map).
fn config(upstream: SocketAddr, schema: &str, rules: &str) -> String {
    let hash = gatehouse::sha256::to_hex(&gatehouse::sha256::sha256(KEY.as_bytes()));
    format!(
        "{}auth:\n  api_keys:\n    keys:\n      - {{ name: acme-app, sha256: \"{hash}\", tenant_id: acme, user_id: u1 }}\n{rules}schema: {schema}\n",
        DevConfig::new(upstream).admin().yaml()
    )
}

/// `message` with the `acme-app` key.
fn keyed<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("x-api-key", KEY.parse().unwrap());
    request
}

fn order(tenant: &str, user: &str, note: &str) -> OrderRequest {
    OrderRequest {
        tenant_id: tenant.into(),
        owner: Some(Owner {
            user_id: user.into(),
            team: "blue".into(),
        }),
        note: note.into(),
        ..OrderRequest::default()
    }
}

async fn orders(gatehouse: &Gatehouse) -> OrdersClient<tonic::transport::Channel> {
    OrdersClient::new(
        channel(gatehouse.addr, Some(Identity::gateway()))
            .await
            .expect("mTLS connection to gatehouse"),
    )
}

/// gatehouse started, once it has learned the app's schema.
async fn learned(config: &str) -> Gatehouse {
    let gatehouse = Gatehouse::start(config);
    gatehouse.wait_for_line(&["schema learned"]).await;
    gatehouse
}

/// One call over raw HTTP/2 with `body` as the request's bytes: the status headers
/// (trailers, or the headers of a trailers-only answer).
async fn raw_call(gatehouse: &Gatehouse, path: &str, body: &[u8]) -> http::HeaderMap {
    let tls = tls_connect(gatehouse.addr, Some(&Identity::gateway()))
        .await
        .unwrap();
    let (client, connection) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::post(format!("https://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-api-key", KEY)
        .body(())
        .unwrap();
    let (response, mut send) = client.send_request(request, false).unwrap();
    send.send_data(Bytes::copy_from_slice(body), true).unwrap();
    let (parts, mut body) = response.await.unwrap().into_parts();
    if parts.headers.contains_key("grpc-status") {
        return parts.headers;
    }
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    body.trailers().await.unwrap().expect("trailers")
}

/// A gRPC message frame around `message`.
fn frame(flag: u8, message: &[u8]) -> Vec<u8> {
    let mut framed = vec![flag];
    framed.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
    framed.extend_from_slice(message);
    framed
}

fn reason_of(trailers: &http::HeaderMap) -> (String, String) {
    let code = trailers["grpc-status"].to_str().unwrap().to_owned();
    (code, error_info_in(trailers).reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unary_request_whose_fields_are_not_the_callers_never_reaches_the_app() {
    let app = App::start().await;
    let gatehouse = learned(&config(app.addr, "{ source: reflection }", ORDER_RULES)).await;
    let mut client = orders(&gatehouse).await;

    let reply = client
        .get(keyed(order("acme", "u1", "mine")))
        .await
        .expect("the caller's own order")
        .into_inner();
    assert_eq!(reply.tenant_id, "acme");
    let seen = app.observed().orders_received();

    let refused = client
        .get(keyed(order("victim-tenant", "u1", "theirs")))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let info = error_info(&refused);
    assert_eq!(info.reason, "FIELD_MISMATCH");
    assert_eq!(info.metadata["field"], "tenant_id");
    assert_eq!(info.metadata["rule"], "0");
    assert!(!refused.message().contains("victim"), "{refused:?}");

    let refused = client
        .get(keyed(order("acme", "someone-else", "theirs")))
        .await
        .unwrap_err();
    assert_eq!(error_info(&refused).metadata["field"], "owner.user_id");

    assert_eq!(
        app.observed().orders_received(),
        seen,
        "a refused message reached the app"
    );
    let output = gatehouse.output();
    assert!(
        !output.contains("victim-tenant") && !output.contains("someone-else"),
        "a field's value was logged:\n{output}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stream_ends_at_its_first_bad_message_after_the_good_ones_arrive() {
    let app = App::start().await;
    let gatehouse = learned(&config(app.addr, "{ source: reflection }", ORDER_RULES)).await;
    let mut client = orders(&gatehouse).await;
    let before = app.observed().orders_received();
    let cancelled = app.observed().cancelled();

    let messages = vec![
        order("acme", "u1", "1"),
        order("acme", "u1", "2"),
        order("acme", "u1", "3"),
        order("victim", "u1", "bad"),
        order("acme", "u1", "5"),
        order("acme", "u1", "6"),
    ];
    let refused = client
        .upload(keyed(tokio_stream::iter(messages)))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert_eq!(reason(&refused), "FIELD_MISMATCH");
    assert!(
        app.observed()
            .wait_until(PATIENCE, |seen| seen.cancelled() > cancelled)
            .await,
        "the app's call was never ended: {} received, {} finished\n{}",
        app.observed().orders_received() - before,
        app.observed().finished(),
        gatehouse.output()
    );
    assert_eq!(
        app.observed().orders_received() - before,
        3,
        "the app sees exactly the messages before the bad one"
    );

    // A stream of good messages only passes whole.
    let good: Vec<_> = (0..50)
        .map(|i| order("acme", "u1", &i.to_string()))
        .collect();
    let reply = client
        .upload(keyed(tokio_stream::iter(good)))
        .await
        .expect("good messages pass")
        .into_inner();
    assert_eq!(reply.received, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bidi_stream_ends_at_its_first_bad_message_after_the_good_ones_arrive() {
    let app = App::start().await;
    let gatehouse = learned(&config(app.addr, "{ source: reflection }", ORDER_RULES)).await;
    let mut client = orders(&gatehouse).await;
    let before = app.observed().orders_received();
    let cancelled = app.observed().cancelled();

    // Interactive, as a bidi stream is: three good messages, each answered by the app,
    // then a bad one and more good ones behind it.
    let (send, requests) = tokio::sync::mpsc::unbounded_channel();
    let mut replies = client
        .sync(keyed(tokio_stream::wrappers::UnboundedReceiverStream::new(
            requests,
        )))
        .await
        .expect("the stream opens")
        .into_inner();
    for n in 1..=3 {
        send.send(order("acme", "u1", &n.to_string())).unwrap();
        let reply = replies.message().await.unwrap().expect("a reply");
        assert_eq!(reply.received, n);
    }
    for message in [
        order("acme", "mallory", "bad"),
        order("acme", "u1", "5"),
        order("acme", "u1", "6"),
    ] {
        send.send(message).unwrap();
    }
    let status = match replies.message().await {
        Ok(Some(reply)) => panic!("a reply after the bad message: {reply:?}"),
        Ok(None) => panic!("the stream ended OK after a bad message"),
        Err(status) => status,
    };
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert_eq!(error_info(&status).metadata["field"], "owner.user_id");
    assert!(
        app.observed()
            .wait_until(PATIENCE, |seen| seen.cancelled() > cancelled)
            .await,
        "the app's call was never ended"
    );
    assert_eq!(app.observed().orders_received() - before, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_compressed_and_oversized_messages_are_refused_before_the_app() {
    let app = App::start().await;
    let gatehouse = learned(&config(
        app.addr,
        "{ source: reflection, max_message_size: 1KiB }",
        ORDER_RULES,
    ))
    .await;
    let path = "/gatehouse.orders.v1.Orders/Get";
    let seen = app.observed().orders_received();
    // Field 1 says 5 bytes follow; none do.
    let trailers = raw_call(&gatehouse, path, &frame(0, &[0x0a, 0x05])).await;
    assert_eq!(
        reason_of(&trailers),
        ("3".into(), "MALFORMED_MESSAGE".into())
    );
    let trailers = raw_call(&gatehouse, path, &frame(1, &[0x0a, 0x00])).await;
    assert_eq!(
        reason_of(&trailers),
        ("3".into(), "MALFORMED_MESSAGE".into())
    );
    // The request ends inside its message.
    let trailers = raw_call(&gatehouse, path, &frame(0, &[0x0a, 0x00])[..5]).await;
    assert_eq!(
        reason_of(&trailers),
        ("3".into(), "MALFORMED_MESSAGE".into())
    );
    let large = prost::Message::encode_to_vec(&OrderRequest {
        payload: vec![7; 2048],
        ..order("acme", "u1", "large")
    });
    let trailers = raw_call(&gatehouse, path, &frame(0, &large)).await;
    assert_eq!(
        reason_of(&trailers),
        ("8".into(), "MESSAGE_TOO_LARGE".into())
    );
    assert_eq!(app.observed().orders_received(), seen);
    wait_for_metric(
        &gatehouse,
        r#"gatehouse_limit_refusals_total{limit="max_message_size"} 1"#,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_methods_never_reach_the_app_and_grpc_type_is_exact() {
    let app = App::start().await;
    let gatehouse = learned(&config(app.addr, "{ source: reflection }", "")).await;
    let channel = channel(gatehouse.addr, Some(Identity::gateway()))
        .await
        .unwrap();
    let mut demo = DemoClient::new(channel);
    demo.echo(keyed(EchoRequest::default())).await.unwrap();
    let mut countdown = demo
        .countdown(keyed(CountdownRequest {
            count: 2,
            ..CountdownRequest::default()
        }))
        .await
        .unwrap()
        .into_inner();
    while countdown.message().await.unwrap().is_some() {}
    demo.collect(keyed(tokio_stream::iter(vec![EchoRequest::default(); 2])))
        .await
        .unwrap();
    let mut chat = demo
        .chat(keyed(tokio_stream::iter(vec![EchoRequest::default(); 2])))
        .await
        .unwrap()
        .into_inner();
    while chat.message().await.unwrap().is_some() {}

    let requests = app.observed().requests();
    for path in ["/gatehouse.demo.v1.Demo/Nope", "/made.up.v1.Svc/Get"] {
        let trailers = raw_call(&gatehouse, path, &frame(0, &[])).await;
        assert_eq!(
            reason_of(&trailers),
            ("12".into(), "UNKNOWN_METHOD".into()),
            "{path}"
        );
    }
    assert_eq!(
        app.observed().requests(),
        requests,
        "an unknown method reached the app"
    );

    let scrape = wait_for_metric(
        &gatehouse,
        r#"grpc_server_handled_total{grpc_type="unknown",grpc_service="other",grpc_method="other",grpc_code="Unimplemented"} 2"#,
    )
    .await;
    for (kind, method) in [
        ("unary", "Echo"),
        ("server_stream", "Countdown"),
        ("client_stream", "Collect"),
        ("bidi_stream", "Chat"),
    ] {
        let line = format!(
            r#"grpc_server_handled_total{{grpc_type="{kind}",grpc_service="gatehouse.demo.v1.Demo",grpc_method="{method}",grpc_code="OK"}} 1"#
        );
        assert!(scrape.lines().any(|l| l == line), "no {line} in\n{scrape}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apps_reflection_is_hidden_unless_exposed() {
    let app = App::start().await;
    let header = format!("x-api-key: {KEY}");
    let hidden = learned(&config(app.addr, "{ source: reflection }", "")).await;
    let listed = grpcurl(hidden.addr, &["-H", &header], &["list"], None);
    assert!(!listed.status.success(), "{}", stdout(&listed));
    let trailers = raw_call(
        &hidden,
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        &frame(0, &[]),
    )
    .await;
    assert_eq!(reason_of(&trailers), ("12".into(), "UNKNOWN_METHOD".into()));

    let exposed = learned(&config(
        app.addr,
        "{ source: reflection, expose_reflection: true }",
        "",
    ))
    .await;
    let listed = grpcurl(exposed.addr, &["-H", &header], &["list"], None);
    assert!(listed.status.success(), "{}", stderr(&listed));
    assert!(
        stdout(&listed).contains("gatehouse.orders.v1.Orders"),
        "{}",
        stdout(&listed)
    );
}

/// `demo.proto` and `orders.proto` as one descriptor set file (concatenated sets merge).
fn descriptor_set(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("app.protoset");
    let mut bytes = demo::pb::FILE_DESCRIPTOR_SET.to_vec();
    bytes.extend_from_slice(demo::pb::orders::FILE_DESCRIPTOR_SET);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_descriptor_set_serves_an_app_without_reflection() {
    let app = App::start_serving(
        "127.0.0.1:0".parse().unwrap(),
        demo::DemoService::default(),
        demo::Serving {
            without_reflection: true,
            ..demo::Serving::default()
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let set = descriptor_set(dir.path());
    let schema = format!(
        "{{ source: descriptor_set, descriptor_set: {} }}",
        set.display()
    );
    let gatehouse = Gatehouse::start(&config(app.addr, &schema, ORDER_RULES));
    gatehouse
        .wait_for_line(&["schema learned", "source=descriptor_set"])
        .await;
    let mut client = orders(&gatehouse).await;
    client.get(keyed(order("acme", "u1", "ok"))).await.unwrap();
    let refused = client
        .get(keyed(order("other", "u1", "no")))
        .await
        .unwrap_err();
    assert_eq!(reason(&refused), "FIELD_MISMATCH");
    let trailers = raw_call(
        &gatehouse,
        "/gatehouse.orders.v1.Orders/Delete",
        &frame(0, &[]),
    )
    .await;
    assert_eq!(reason_of(&trailers), ("12".into(), "UNKNOWN_METHOD".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_restarted_with_a_new_service_is_learned_without_restarting_gatehouse() {
    let without_orders = demo::Serving {
        without_orders: true,
        ..demo::Serving::default()
    };
    let app = App::start_serving(
        "127.0.0.1:0".parse().unwrap(),
        demo::DemoService::default(),
        without_orders,
    )
    .await;
    let addr = app.addr;
    let gatehouse = learned(&config(addr, "{ source: reflection }", ORDER_RULES)).await;
    let path = "/gatehouse.orders.v1.Orders/Get";
    let message = prost::Message::encode_to_vec(&order("acme", "u1", "x"));
    let trailers = raw_call(&gatehouse, path, &frame(0, &message)).await;
    assert_eq!(reason_of(&trailers), ("12".into(), "UNKNOWN_METHOD".into()));

    app.kill().await;
    let app = App::start_on(addr, demo::DemoService::default()).await;
    gatehouse.wait_for_nth_line(&["schema learned"], 2).await;
    let reply = orders(&gatehouse)
        .await
        .get(keyed(order("acme", "u1", "after the restart")))
        .await
        .expect("the new service is known")
        .into_inner();
    assert_eq!(reply.note, "after the restart");
    assert_eq!(app.observed().orders_received(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_schema_is_unknown_calls_are_unavailable_and_readyz_says_why() {
    let app = App::start_serving(
        "127.0.0.1:0".parse().unwrap(),
        demo::DemoService::default(),
        demo::Serving {
            without_reflection: true,
            ..demo::Serving::default()
        },
    )
    .await;
    let refusing = Gatehouse::start(&config(app.addr, "{ source: reflection }", ORDER_RULES));
    refusing
        .wait_for_line(&["schema not learned", "no reflection service"])
        .await;
    let (status, body) = get(admin(&refusing), "/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("schema unknown"), "{body}");
    let trailers = raw_call(&refusing, "/gatehouse.demo.v1.Demo/Echo", &frame(0, &[])).await;
    assert_eq!(reason_of(&trailers), ("14".into(), "SCHEMA_UNKNOWN".into()));

    // `unknown_methods: forward`: through, except where a field rule needs the schema.
    let forwarding = Gatehouse::start(&config(
        app.addr,
        "{ source: reflection, unknown_methods: forward }",
        ORDER_RULES,
    ));
    let mut demo = DemoClient::new(
        channel(forwarding.addr, Some(Identity::gateway()))
            .await
            .unwrap(),
    );
    demo.echo(keyed(EchoRequest::default())).await.unwrap();
    let refused = orders(&forwarding)
        .await
        .get(keyed(order("acme", "u1", "x")))
        .await
        .unwrap_err();
    assert_eq!(reason(&refused), "SCHEMA_UNKNOWN");
    // Rules decide paths in any case, so a spelling an app might look up
    // case-insensitively is no way around the field rules either.
    let trailers = raw_call(
        &forwarding,
        "/gatehouse.orders.v1.orders/get",
        &frame(0, &[]),
    )
    .await;
    assert_eq!(reason_of(&trailers), ("14".into(), "SCHEMA_UNKNOWN".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_go_app_is_learned_through_its_v1alpha_reflection() {
    let go = GrpcGoApp::start();
    let config = format!(
        "{}schema: {{ source: reflection }}\n",
        DevConfig::new(go.addr).admin().yaml()
    );
    let gatehouse = Gatehouse::start(&config);
    gatehouse.wait_for_line(&["schema learned"]).await;
    let channel = channel(gatehouse.addr, Some(Identity::gateway()))
        .await
        .unwrap();
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .expect("Health/Check through gatehouse to grpc-go");
    wait_for_metric(
        &gatehouse,
        r#"grpc_server_handled_total{grpc_type="unary",grpc_service="grpc.health.v1.Health",grpc_method="Check",grpc_code="OK"} 1"#,
    )
    .await;
    let trailers = raw_call(&gatehouse, "/grpc.health.v1.Health/Nope", &frame(0, &[])).await;
    assert_eq!(
        reason_of(&trailers),
        ("12".into(), "UNKNOWN_METHOD".into()),
        "{}",
        go.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_resolves_field_paths_and_schema_prints_what_was_learned() {
    let dir = tempfile::tempdir().unwrap();
    let set = descriptor_set(dir.path());
    let schema = format!(
        "{{ source: descriptor_set, descriptor_set: {} }}",
        set.display()
    );
    let base = config("127.0.0.1:9".parse().unwrap(), &schema, ORDER_RULES);
    let path = dir.path().join("ok.yaml");
    std::fs::write(&path, &base).unwrap();
    let printed = gatehouse(&["schema", "--config", path.to_str().unwrap()]);
    assert!(printed.status.success(), "{}", stderr(&printed));
    let text = stdout(&printed);
    assert!(text.contains("gatehouse.orders.v1.Orders\n"), "{text}");
    for kind in ["unary", "client_stream", "server_stream", "bidi_stream"] {
        assert!(text.contains(kind), "{kind} in\n{text}");
    }
    assert!(
        text.lines().any(|l| l.contains("Upload")
            && l.contains("client_stream")
            && l.contains("gatehouse.orders.v1.OrderRequest")),
        "{text}"
    );
    let checked = gatehouse(&["check", "--config", path.to_str().unwrap()]);
    assert!(checked.status.success(), "{}", stderr(&checked));

    let broken = base.edit("owner.user_id", "owner.name");
    check_refuses(
        dir.path(),
        &broken,
        &[
            "authorization.rules[0].fields.owner.name: in /gatehouse.orders.v1.Orders/Get: gatehouse.orders.v1.Owner has no field name",
        ],
        &["tenant_id"],
    );
}
