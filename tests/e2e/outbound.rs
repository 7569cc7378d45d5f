//! Outbound mode end to end: the app calls gatehouse A's outbound port in plaintext,
//! naming the destination in `:authority`; A opens mutual TLS to gatehouse B (inbound),
//! which forwards to the demo app. Destination certificates, good and broken, are made
//! with rcgen for each run.

use std::net::SocketAddr;

use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use crate::support::pb::*;
use crate::support::*;

/// An Inspect request carrying forged identity headers and a key the app should not hold.
fn forged_inspect(authorization: Option<&str>) -> tonic::Request<InspectRequest> {
    let mut request = tonic::Request::new(InspectRequest {});
    let metadata = request.metadata_mut();
    metadata.insert("x-user-id", "forged-user".parse().unwrap());
    metadata.insert("x-tenant-id", "forged-tenant".parse().unwrap());
    metadata.insert("x_user_roles", "admin".parse().unwrap());
    metadata.insert_bin(
        "x-tenant-id-bin",
        tonic::metadata::MetadataValue::from_bytes(b"forged"),
    );
    metadata.insert("x-api-key", "app-held-key".parse().unwrap());
    if let Some(token) = authorization {
        metadata.insert("authorization", bearer(token));
    }
    request
}

/// The metadata the destination's app saw on an Inspect call that must go through.
async fn seen_by_destination_app(
    client: &mut DemoClient<Channel>,
    request: tonic::Request<InspectRequest>,
) -> Vec<(String, String)> {
    inspect(client, request)
        .await
        .expect("the call went through")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_the_users_token_and_never_the_apps_forged_identity() {
    let fixture = Mesh::new();
    let app = App::start().await;
    let b = fixture.destination("dest", &genuine(), app.addr, "");
    let (a, outbound) = fixture.source(
        app.addr,
        &[entry("identity-service", b.addr, DEST_ID, "relay")],
        "",
    );
    let token = fixture.users.token("alice", "acme", &["reader"]);
    let mut client = app_client(outbound, "identity-service:8080").await;
    let seen = seen_by_destination_app(&mut client, forged_inspect(Some(&token))).await;

    assert_eq!(values(&seen, "x-user-id"), ["alice"], "{seen:?}");
    assert_eq!(values(&seen, "x-tenant-id"), ["acme"], "{seen:?}");
    assert_eq!(values(&seen, "x-auth-method"), ["jwt"]);
    assert!(values(&seen, "x-api-key").is_empty(), "{seen:?}");
    assert!(values(&seen, "x-tenant-id-bin").is_empty(), "{seen:?}");
    assert!(
        values(&seen, "x-user-roles")
            .iter()
            .all(|r| !r.contains("admin"))
    );
    // B saw gatehouse A's client certificate, not some other identity.
    let xfcc = values(&seen, "x-forwarded-client-cert").join("");
    assert!(
        xfcc.contains("URI=spiffe://dev.gatehouse/ns/default/sa/gateway"),
        "{xfcc}"
    );
    // The destination got a deadline: the destination's default timeout, re-encoded.
    let timeout = values(&seen, "grpc-timeout");
    assert_eq!(timeout.len(), 1, "{seen:?}");

    let line = a
        .wait_for_line(&[
            "msg=outbound",
            "destination=identity-service",
            "grpc_code=OK",
        ])
        .await;
    assert_eq!(field(&line, "method"), "/gatehouse.demo.v1.Demo/Inspect");
    assert_eq!(field(&line, "peer"), DEST_ID);
    assert!(!line.contains(&token), "{line}");

    // The app's own stream kinds pass both hops: a server stream and a bidi stream.
    let mut stream = client
        .countdown({
            let mut request = tonic::Request::new(CountdownRequest {
                count: 50,
                payload_size: 10,
                ..Default::default()
            });
            request
                .metadata_mut()
                .insert("authorization", bearer(&token));
            request
        })
        .await
        .unwrap()
        .into_inner();
    let mut count = 0;
    while let Some(reply) = stream.message().await.unwrap() {
        assert_eq!(reply.sequence, count);
        count += 1;
    }
    assert_eq!(count, 50);
    let (sender, receiver) = tokio::sync::mpsc::channel(4);
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(receiver));
    request
        .metadata_mut()
        .insert("authorization", bearer(&token));
    let mut replies = client.chat(request).await.unwrap().into_inner();
    for i in 0..3 {
        sender
            .send(EchoRequest {
                message: format!("m{i}"),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            replies.message().await.unwrap().unwrap().message,
            format!("m{i}")
        );
    }
    drop(sender);
    assert!(replies.message().await.unwrap().is_none());

    // The destination's own statuses and messages pass through untouched.
    let mut fail = tonic::Request::new(FailRequest {
        code: Code::NotFound as i32,
        message: "no such user".into(),
    });
    fail.metadata_mut().insert("authorization", bearer(&token));
    let status = client.fail(fail).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::NotFound, "no such user")
    );
    assert!(
        status.details().is_empty(),
        "a gatehouse added details to the destination's status"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_file_sends_the_service_key_the_app_never_held() {
    let fixture = Mesh::new();
    let app = App::start().await;
    let b = fixture.destination("dest", &genuine(), app.addr, "");
    let key_file = fixture.dir.path().join("service.key");
    let credentials = format!("{{ api_key_file: {} }}", key_file.display());
    let (_a, outbound) = fixture.source(
        app.addr,
        &[entry("audit-service", b.addr, DEST_ID, &credentials)],
        "",
    );
    let mut client = app_client(outbound, "audit-service").await;
    // The app's own (forged) key and a token it happens to carry are both dropped.
    let token = fixture.users.token("mallory", "evil", &[]);
    let seen = seen_by_destination_app(&mut client, forged_inspect(Some(&token))).await;
    assert_eq!(values(&seen, "x-auth-method"), ["api_key"], "{seen:?}");
    assert_eq!(values(&seen, "x-api-key-name"), ["scanner"]);
    assert!(values(&seen, "x-user-id").is_empty(), "{seen:?}");
    assert!(values(&seen, "x-tenant-id").is_empty(), "{seen:?}");
    assert!(values(&seen, "authorization").is_empty(), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_that_are_not_the_named_destination_get_no_request() {
    let fixture = Mesh::new();
    let app = App::start().await;
    let cases = [
        (
            "wrong-spiffe-id",
            destination_cert(
                vec![uri("spiffe://dev.gatehouse/ns/default/sa/impostor")],
                Signer::DevCa,
                (2099, 1, 1),
            ),
            DEST_ID.to_owned(),
            "IDENTITY_MISMATCH",
        ),
        (
            "wrong-ca",
            destination_cert(vec![uri(DEST_ID)], Signer::OtherCa, (2099, 1, 1)),
            DEST_ID.to_owned(),
            "UPSTREAM_TLS",
        ),
        (
            "expired",
            destination_cert(vec![uri(DEST_ID)], Signer::DevCa, (2021, 1, 1)),
            DEST_ID.to_owned(),
            "UPSTREAM_TLS",
        ),
        (
            "dns-only",
            destination_cert(vec![], Signer::DevCa, (2099, 1, 1)),
            DEST_ID.to_owned(),
            "IDENTITY_MISMATCH",
        ),
        (
            "uri-spelling-a-dns-name",
            destination_cert(vec![uri("identity.prod.svc")], Signer::DevCa, (2099, 1, 1)),
            "dns:identity.prod.svc".to_owned(),
            "IDENTITY_MISMATCH",
        ),
    ];
    let mut destinations = Vec::new();
    let mut gatehouses = Vec::new();
    for (name, cert, identity, _) in &cases {
        let b = fixture.destination(name, cert, app.addr, "");
        destinations.push(entry(name, b.addr, identity, "none"));
        gatehouses.push(b);
    }
    // Nothing listens here: the port was free a moment ago and nothing binds it again.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    destinations.push(entry("gone", closed, DEST_ID, "none"));
    let (_a, outbound) = fixture.source(app.addr, &destinations, "");

    let expected = cases
        .iter()
        .map(|(name, _, _, reason)| (*name, *reason))
        .chain([("gone", "NO_ENDPOINT")]);
    for (name, reason) in expected {
        let mut client = app_client(outbound, name).await;
        let status = client
            .inspect(InspectRequest {})
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::Unavailable, "{name}: {status:?}");
        assert!(
            status.message().starts_with(reason),
            "{name}: {}",
            status.message()
        );
        let info = error_info(&status);
        assert_eq!(info.reason, reason, "{name}");
        assert_eq!(info.metadata["destination"], name);
        assert_eq!(info.metadata["method"], "/gatehouse.demo.v1.Demo/Inspect");
    }
    // The first case names what the server presented.
    let mut client = app_client(outbound, "wrong-spiffe-id").await;
    let status = client.inspect(InspectRequest {}).await.unwrap_err();
    assert!(
        status.message().contains("sa/impostor"),
        "{}",
        status.message()
    );
    assert_eq!(app.observed().calls(), 0, "no destination app saw a call");
    for b in &gatehouses {
        assert!(!b.output().contains("msg=request"), "{}", b.output());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_authority_and_bad_relayed_tokens_are_refused_locally() {
    let fixture = Mesh::new();
    let app = App::start().await;
    let b = fixture.destination("dest", &genuine(), app.addr, "");
    let (_a, outbound) = fixture.source(
        app.addr,
        &[entry("identity-service", b.addr, DEST_ID, "relay")],
        "",
    );

    let mut stranger = app_client(outbound, "billing-service:443").await;
    let status = stranger.inspect(InspectRequest {}).await.unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    let info = error_info(&status);
    assert_eq!(info.reason, "UNKNOWN_DESTINATION");
    assert_eq!(info.metadata["authority"], "billing-service");
    for needle in [
        "UNKNOWN_DESTINATION",
        "\"billing-service\"",
        "identity-service",
        "grpc.WithAuthority",
        "-authority",
    ] {
        assert!(
            status.message().contains(needle),
            "{needle}: {}",
            status.message()
        );
    }

    let mut client = app_client(outbound, "identity-service").await;
    let now = jsonwebtoken::get_current_timestamp();
    let mut expired = fixture.users.claims("alice", "acme", &[]);
    expired["exp"] = (now - 120).into();
    let mut foreign = fixture.users.claims("alice", "acme", &[]);
    foreign["aud"] = "billing".into();
    let table = [
        (
            None,
            Code::Unauthenticated,
            "no bearer token",
            "MISSING_CREDENTIALS",
        ),
        (
            Some(fixture.users.sign(&expired)),
            Code::Unauthenticated,
            "expired",
            "TOKEN_EXPIRED",
        ),
        (
            Some(fixture.users.sign(&foreign)),
            Code::PermissionDenied,
            "\"demo\"",
            "AUDIENCE_MISMATCH",
        ),
    ];
    for (token, code, needle, why) in table {
        let status = client
            .inspect(forged_inspect(token.as_deref()))
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().contains(needle), "{}", status.message());
        let info = error_info(&status);
        assert_eq!(info.reason, why);
        assert_eq!(info.metadata["destination"], "identity-service");
    }
    // Two tokens: which one counts would be the destination's guess, so neither leaves.
    let mut twice = forged_inspect(Some(&fixture.users.token("alice", "acme", &[])));
    let second = fixture.users.token("mallory", "acme", &["admin"]);
    twice
        .metadata_mut()
        .append("authorization", format!("Bearer {second}").parse().unwrap());
    let status = client.inspect(twice).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let info = error_info(&status);
    assert_eq!(info.reason, "AMBIGUOUS_CREDENTIALS");
    assert_eq!(info.metadata["destination"], "identity-service");
    assert_eq!(app.observed().calls(), 0, "the destination saw no call");
    assert!(!b.output().contains("msg=request"), "{}", b.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_cancel_and_deadline_reach_the_destination_handler() {
    let fixture = Mesh::new();
    let app = App::start().await;
    let b = fixture.destination("dest", &genuine(), app.addr, "");
    // B refuses calls without a credential, so both destinations send the service key.
    let key_file = fixture.dir.path().join("service.key");
    let credentials = format!("{{ api_key_file: {} }}", key_file.display());
    let quick = format!(
        "    - {{ name: quick, address: \"{}\", server_name: {SERVER_NAME}, identity: [\"{DEST_ID}\"], credentials: {credentials}, timeout: 300ms }}",
        b.addr
    );
    let (_a, outbound) = fixture.source(
        app.addr,
        &[entry("dest", b.addr, DEST_ID, &credentials), quick],
        "",
    );

    // The app gives up on a call: the destination's handler sees the cancellation.
    let mut client = app_client(outbound, "dest").await;
    let call = tokio::spawn(async move { client.wait(WaitRequest { millis: 600_000 }).await });
    assert!(
        app.observed()
            .wait_until(PATIENCE, |seen| seen.waits_started() >= 1)
            .await,
        "the call reached the destination app"
    );
    call.abort();
    assert!(
        app.observed()
            .wait_until(PATIENCE, |seen| seen.cancelled() >= 1)
            .await,
        "the destination handler was cancelled"
    );

    // The destination's timeout ends a call the app set no deadline for, and the
    // destination's stream is reset.
    let mut client = app_client(outbound, "quick").await;
    let status = client
        .wait(WaitRequest { millis: 600_000 })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    let info = error_info(&status);
    assert_eq!(info.reason, "DEADLINE");
    assert_eq!(info.metadata["destination"], "quick");
    assert!(
        app.observed()
            .wait_until(PATIENCE, |seen| seen.cancelled() >= 2)
            .await,
        "the destination handler was cancelled at the deadline"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_through_both_gatehouses() {
    let (collector, collector_addr) = Collector::start(false).await;
    let otlp = format!(", otlp_endpoint: \"http://{collector_addr}\"");
    let fixture = Mesh::new();
    let app = App::start().await;
    let b = fixture.destination("dest", &genuine(), app.addr, &otlp);
    let (_a, outbound) = fixture.source(
        app.addr,
        &[entry("identity-service", b.addr, DEST_ID, "relay")],
        &otlp,
    );
    let app_trace = "5bf92f3577b34da6a3ce929d0e0e4736";
    let app_span = "10f067aa0ba902b7";
    let token = fixture.users.token("alice", "acme", &[]);
    let mut request = forged_inspect(Some(&token));
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{app_trace}-{app_span}-01").parse().unwrap(),
    );
    let mut client = app_client(outbound, "identity-service").await;
    let seen = seen_by_destination_app(&mut client, request).await;
    let traceparent = values(&seen, "traceparent")[0].to_owned();
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(
        parts[1], app_trace,
        "the destination app continues the app's trace"
    );

    // B's SERVER span is the destination app's parent; its parent is A's CLIENT span,
    // whose parent is the app's span.
    let server = collector.span(&hex(parts[2])).await;
    assert_eq!(server.kind, 2, "SPAN_KIND_SERVER");
    assert_eq!(server.trace_id, hex(app_trace));
    let client_span = collector.span(&server.parent_span_id).await;
    assert_eq!(client_span.kind, 3, "SPAN_KIND_CLIENT");
    assert_eq!(client_span.trace_id, hex(app_trace));
    assert_eq!(client_span.parent_span_id, hex(app_span));
    assert_eq!(client_span.name, "gatehouse.demo.v1.Demo/Inspect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_metrics_count_calls_by_destination() {
    let fixture = Mesh::new();
    let app = App::start().await;
    let b = fixture.destination("dest", &genuine(), app.addr, "");
    let (a, outbound) = fixture.source(
        app.addr,
        &[entry("identity-service", b.addr, DEST_ID, "relay")],
        ", admin_address: 127.0.0.1:0",
    );
    let token = fixture.users.token("alice", "acme", &[]);
    let mut client = app_client(outbound, "identity-service").await;
    seen_by_destination_app(&mut client, forged_inspect(Some(&token))).await;
    client.inspect(forged_inspect(None)).await.unwrap_err();
    // Log lines are written when a call ends, after its metrics.
    a.wait_for_line(&["msg=outbound", "grpc_code=Unauthenticated"])
        .await;
    let (status, scrape) = get(admin(&a), "/metrics").await;
    assert_eq!(status, 200);
    let series = |code: &str| {
        format!(
            "grpc_client_handled_total{{grpc_type=\"unknown\",grpc_service=\"gatehouse.demo.v1.Demo\",grpc_method=\"Inspect\",grpc_code=\"{code}\",destination=\"identity-service\"}} 1"
        )
    };
    for expected in [series("OK"), series("Unauthenticated")] {
        assert!(scrape.contains(&expected), "{expected}\n{scrape}");
    }
    assert!(scrape.contains("grpc_client_started_total{"), "{scrape}");
    assert!(
        scrape.contains("grpc_client_handling_seconds_bucket{"),
        "{scrape}"
    );
}

/// A TLS HTTP/2 server with the genuine destination certificate that records the
/// headers of every request and answers OK: what leaves gatehouse A, before any
/// destination gatehouse could clean it up.
struct RawDestination {
    addr: SocketAddr,
    seen: std::sync::Arc<std::sync::Mutex<Vec<http::HeaderMap>>>,
}

impl RawDestination {
    async fn start() -> RawDestination {
        RawDestination::answering_with(0).await
    }

    /// A destination whose every answer carries `padding` bytes of extra headers.
    async fn answering_with(padding: usize) -> RawDestination {
        let cert = genuine();
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            std::sync::Arc::new(dev_roots()),
            provider.clone(),
        )
        .build()
        .unwrap();
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(cert.certs(), cert.key())
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let recorded = seen.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(
                        move |request: http::Request<hyper::body::Incoming>| {
                            recorded.lock().unwrap().push(request.headers().clone());
                            async move {
                                let mut response = http::Response::builder()
                                    .header("content-type", "application/grpc")
                                    .header("grpc-status", "0");
                                const PIECE: usize = 16 * 1024;
                                for i in 0..padding / PIECE {
                                    response = response
                                        .header(format!("x-padding-{i}"), "p".repeat(PIECE));
                                }
                                let response = response
                                    .body(http_body_util::Empty::<bytes::Bytes>::new())
                                    .unwrap();
                                Ok::<_, std::convert::Infallible>(response)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
                });
            }
        });
        RawDestination { addr, seen }
    }

    fn last(&self) -> http::HeaderMap {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request arrived")
    }
}

/// A destination that passes the identity check but answers each call with 15 MiB of
/// headers cannot make gatehouse hold them: each answer is refused at 64 KiB, the app
/// gets INTERNAL saying why, and gatehouse's memory stays where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_answering_with_huge_headers_cannot_grow_gatehouse() {
    let fixture = Mesh::new();
    let app = App::start().await;
    let raw = RawDestination::answering_with(15 << 20).await;
    let (a, outbound) = fixture.source(app.addr, &[entry("raw", raw.addr, DEST_ID, "none")], "");
    let before = rss_kib(a.pid());
    let calls = (0..10).map(|_| async move {
        app_client(outbound, "raw")
            .await
            .inspect(InspectRequest {})
            .await
    });
    let answers = futures_util::future::join_all(calls).await;
    let peak = peak_rss_kib(a.pid());
    assert!(
        peak < before + 32 * 1024,
        "10 answers of 15 MiB of headers took gatehouse from {before} KiB to a peak of {peak} KiB"
    );
    for answer in answers {
        let status = answer.expect_err("no answer with 15 MiB of headers gets through");
        assert_eq!(status.code(), Code::Internal, "{status:?}");
        let info = error_info(&status);
        assert_eq!(info.reason, "RESPONSE_HEADERS_TOO_LARGE");
        assert_eq!(info.metadata["destination"], "raw");
    }
    // The calls reached the destination; those still waiting on a connection its
    // oversized answer closed were ended with the same status.
    assert!(
        !raw.seen.lock().unwrap().is_empty(),
        "no call reached the destination"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_identity_and_app_held_keys_never_leave_the_pod() {
    let fixture = Mesh::new();
    let app = App::start().await;
    let raw = RawDestination::start().await;
    let key_file = fixture.dir.path().join("service.key");
    let with_key = format!("{{ api_key_file: {} }}", key_file.display());
    let (_a, outbound) = fixture.source(
        app.addr,
        &[
            entry("relayed", raw.addr, DEST_ID, "relay"),
            entry("keyed", raw.addr, DEST_ID, &with_key),
            entry("bare", raw.addr, DEST_ID, "none"),
        ],
        "",
    );
    let token = fixture.users.token("alice", "acme", &[]);
    let forbidden = [
        "x-user-id",
        "x-tenant-id",
        "x_user_roles",
        "x-tenant-id-bin",
        "x-api-key",
    ];
    for (name, authorization, api_key) in [
        ("relayed", Some(format!("Bearer {token}")), None),
        ("keyed", None, Some(SERVICE_KEY)),
        ("bare", None, None),
    ] {
        // The app's deadline: shorter than the destination's 10s default for one call,
        // longer for another, none for the third.
        let app_timeout = match name {
            "relayed" => Some(std::time::Duration::from_secs(2)),
            "keyed" => Some(std::time::Duration::from_secs(60)),
            _ => None,
        };
        let mut client = app_client(outbound, name).await;
        let before = raw.seen.lock().unwrap().len();
        // The raw server sends no message, so the client reports INTERNAL; only the
        // request's headers matter here.
        let mut request = forged_inspect(Some(&token));
        if let Some(timeout) = app_timeout {
            request.set_timeout(timeout);
        }
        let _ = client.inspect(request).await;
        assert_eq!(
            raw.seen.lock().unwrap().len(),
            before + 1,
            "{name} reached it"
        );
        let headers = raw.last();
        for header in forbidden {
            let expected = (header == "x-api-key").then_some(api_key).flatten();
            assert_eq!(
                headers.get(header).map(|v| v.to_str().unwrap()),
                expected,
                "{name}: {header} in {headers:?}"
            );
        }
        assert_eq!(
            headers
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_owned()),
            authorization,
            "{name}"
        );
        // The shorter of the two, re-encoded for the destination as what is left of it.
        let sent = headers["grpc-timeout"].to_str().unwrap();
        let left: u64 = sent.strip_suffix('m').unwrap().parse().unwrap();
        let shorter = if name == "relayed" { 2_000 } else { 10_000 };
        assert!(
            left <= shorter && left > shorter - 1_000,
            "{name}: grpc-timeout {sent}, expected what is left of {shorter}ms"
        );
        assert!(headers.contains_key("traceparent"), "{name}: {headers:?}");
    }
}

#[test]
fn check_refuses_an_exposed_listener_a_destination_without_identity_and_twins() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}outbound:
  listen: 0.0.0.0:15001
  destinations:
    - {{ name: identity-service, address: \"id.svc:12018\", credentials: none }}
    - {{ name: Identity-Service, address: \"id2.svc:12018\", identity: [\"{DEST_ID}\"], credentials: context }}
    - {{ name: keyed, address: \"k.svc:12018\", identity: [\"dns:k.svc\"], credentials: {{ api_key_file: /nonexistent/key }} }}
",
        dev_config("127.0.0.1:50051".parse().unwrap())
    );
    let path = dir.path().join("gatehouse.yaml");
    std::fs::write(&path, config).unwrap();
    let output = gatehouse(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(64));
    let errors = stderr(&output);
    for field in [
        "outbound.listen: 0.0.0.0:15001 is not a loopback address",
        "outbound.destinations[0].identity: required",
        "outbound.destinations[1].name: \"Identity-Service\" is used by another destination",
        "outbound.destinations[1].audience: required with credentials: relay or context",
    ] {
        assert!(errors.contains(field), "{field}\n{errors}");
    }

    // Once the config itself is sound, the files it names are read: a missing key file
    // is named too.
    let fixed = std::fs::read_to_string(&path)
        .unwrap()
        .edit("0.0.0.0:15001", "127.0.0.1:15001")
        .edit(
            "credentials: none }",
            &format!("identity: [\"{DEST_ID}\"], credentials: none }}"),
        )
        .edit("name: Identity-Service", "name: other")
        .edit("credentials: context", "credentials: none");
    std::fs::write(&path, fixed).unwrap();
    let output = gatehouse(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(64), "{}", stdout(&output));
    assert!(
        stderr(&output).contains(
            "outbound.destinations[2].credentials.api_key_file: no such file: /nonexistent/key"
        ),
        "{}",
        stderr(&output)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_rotation_keeps_open_streams_and_new_calls_present_the_new_one() {
    let fixture = Mesh::new();
    let app = App::start().await;
    let b = fixture.destination("dest", &genuine(), app.addr, "");
    let (cert_file, key_file) = client_certificate("before").write_to(fixture.dir.path(), "client");
    let credentials = format!(
        "{{ api_key_file: {} }}",
        fixture.dir.path().join("service.key").display()
    );
    let (a, outbound) = fixture.source_presenting(
        app.addr,
        &[entry("dest", b.addr, DEST_ID, &credentials)],
        "",
        (&cert_file, &key_file),
    );
    let mut client = app_client(outbound, "dest").await;
    let presented = |seen: Vec<(String, String)>| values(&seen, "x-forwarded-client-cert").join("");
    let xfcc = presented(
        seen_by_destination_app(&mut client, tonic::Request::new(InspectRequest {})).await,
    );
    assert!(xfcc.contains("sa/before"), "{xfcc}");

    // A long stream opened with the old certificate.
    let mut stream = client
        .countdown(CountdownRequest {
            count: 1_000_000,
            interval_millis: 5,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap().unwrap();

    // Rotate: a new certificate in place of the old, as a Secret update does.
    let rotated = client_certificate("after");
    let staged = fixture.dir.path().join("staged");
    std::fs::create_dir(&staged).unwrap();
    let (new_cert, new_key) = rotated.write_to(&staged, "client");
    std::fs::rename(new_key, &key_file).unwrap();
    std::fs::rename(new_cert, &cert_file).unwrap();
    a.wait_for_line(&["outbound client certificate reloaded"])
        .await;

    let xfcc = presented(
        seen_by_destination_app(&mut client, tonic::Request::new(InspectRequest {})).await,
    );
    assert!(
        xfcc.contains("sa/after"),
        "new calls present the new certificate: {xfcc}"
    );
    // The stream opened before the rotation is still flowing.
    let before = stream.message().await.unwrap().unwrap().sequence;
    for _ in 0..5 {
        let next = stream.message().await.unwrap().unwrap().sequence;
        assert!(next > before);
    }
    assert_eq!(app.observed().cancelled(), 0, "no call was cut off");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbound_port_can_be_a_unix_socket() {
    let fixture = Mesh::new();
    let app = App::start().await;
    let b = fixture.destination("dest", &genuine(), app.addr, "");
    let socket = fixture.dir.path().join("outbound.sock");
    let credentials = format!(
        "{{ api_key_file: {} }}",
        fixture.dir.path().join("service.key").display()
    );
    let config = fixture.source_config(
        app.addr,
        &[entry("dest", b.addr, DEST_ID, &credentials)],
        "",
        (
            &dev_cert("client-gateway.crt"),
            &dev_cert("client-gateway.key"),
        ),
        &format!("unix:{}", socket.display()),
    );
    let a = Gatehouse::start(&config);
    let listening = a.wait_for_line(&["msg=listening"]).await;
    assert_eq!(
        field(&listening, "outbound"),
        format!("unix:{}", socket.display())
    );
    let path = socket.clone();
    let channel = Endpoint::from_static("http://dest")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                tokio::net::UnixStream::connect(path)
                    .await
                    .map(hyper_util::rt::TokioIo::new)
            }
        }))
        .await
        .expect("h2c over the unix socket");
    let seen = seen_by_destination_app(&mut DemoClient::new(channel), forged_inspect(None)).await;
    assert_eq!(values(&seen, "x-api-key-name"), ["scanner"], "{seen:?}");
}

/// A 1 GiB server stream through both hops, read by an app that stops reading for a
/// while: neither gatehouse holds more than a few windows of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_stream_crosses_both_hops_in_flat_memory() {
    let fixture = Mesh::new();
    let app = App::start().await;
    let b = fixture.destination("dest", &genuine(), app.addr, "");
    let credentials = format!(
        "{{ api_key_file: {} }}",
        fixture.dir.path().join("service.key").display()
    );
    let (a, outbound) = fixture.source(
        app.addr,
        // A deadline that leaves a shared test machine room to move 1 GiB twice.
        &[entry("dest", b.addr, DEST_ID, &credentials)
            .edit("audience: demo }", "audience: demo, timeout: 5m }")],
        "",
    );
    let mut client = app_client(outbound, "dest").await;
    client.echo(EchoRequest::default()).await.unwrap();
    let before = (peak_rss_kib(a.pid()), peak_rss_kib(b.pid()));

    const MESSAGES: usize = 4096;
    const SIZE: usize = 256 * 1024;
    let mut stream = client
        .countdown(CountdownRequest {
            count: MESSAGES as u32,
            payload_size: SIZE as u32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    stream.message().await.unwrap().unwrap();
    // Stall until the destination's app stops producing: a buffering proxy would by then
    // have read its answer into memory.
    app.until_countdowns_stall().await;
    let mut total = 1;
    while let Some(reply) = stream.message().await.unwrap() {
        assert_eq!(reply.payload.len(), SIZE);
        total += 1;
    }
    assert_eq!(total, MESSAGES);
    let growth = |now: u64, then: u64| (now.saturating_sub(then)) / 1024;
    let (a_mib, b_mib) = (
        growth(peak_rss_kib(a.pid()), before.0),
        growth(peak_rss_kib(b.pid()), before.1),
    );
    eprintln!("peak RSS growth: outbound {a_mib} MiB, inbound {b_mib} MiB");
    assert!(
        a_mib < 16 && b_mib < 16,
        "grew by {a_mib} / {b_mib} MiB while 1 GiB passed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_apps_outbound_calls_finish() {
    let fixture = Mesh::new();
    let app = App::start().await;
    let b = fixture.destination("dest", &genuine(), app.addr, "");
    let credentials = format!(
        "{{ api_key_file: {} }}",
        fixture.dir.path().join("service.key").display()
    );
    let (mut a, outbound) = fixture.source(
        app.addr,
        &[entry("dest", b.addr, DEST_ID, &credentials)],
        "",
    );
    let mut client = app_client(outbound, "dest").await;
    let in_flight = tokio::spawn(async move { client.wait(WaitRequest { millis: 1500 }).await });
    assert!(
        app.observed()
            .wait_until(PATIENCE, |seen| seen.waits_started() >= 1)
            .await
    );
    // Nothing is open on A's inbound side: only the outbound call holds the drain.
    a.signal("TERM");
    let reply = in_flight
        .await
        .unwrap()
        .expect("the outbound call finished OK");
    assert_eq!(reply.into_inner().message, "waited 1500ms");
    let (status, output) = tokio::task::spawn_blocking(move || (a.wait_exit(), a.output()))
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0), "{output}");
    assert!(output.contains("msg=\"drained; exiting\""), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apps_calls_out_are_bounded_and_the_next_is_refused_busy() {
    let mesh = Mesh::new();
    let app = App::start().await;
    let b = mesh.destination("dest", &genuine(), app.addr, "");
    let key_file = mesh.dir.path().join("service.key");
    let credentials = format!("{{ api_key_file: {} }}", key_file.display());
    // upstream_connections 1: at most 50 calls out at once.
    let config = mesh.source_config(
        app.addr,
        &[entry("audit-service", b.addr, DEST_ID, &credentials)],
        "",
        (
            &dev_cert("client-gateway.crt"),
            &dev_cert("client-gateway.key"),
        ),
        "127.0.0.1:0",
    ) + "limits: { upstream_connections: 1, max_concurrent_streams: 100 }\n";
    let a = Gatehouse::start(&config);
    let client = app_client(outbound_address(&a), "audit-service").await;
    let holders: Vec<_> = (0..50)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move { client.wait(WaitRequest { millis: 60_000 }).await })
        })
        .collect();
    assert!(
        app.observed()
            .wait_until(PATIENCE, |seen| seen.waits_started() == 50)
            .await,
        "the 50 calls out never reached the destination's app: {}",
        app.observed().waits_started()
    );

    let refused = client
        .clone()
        .echo(EchoRequest::default())
        .await
        .expect_err("a 51st call out was carried");
    assert_eq!(
        (refused.code(), reason(&refused).as_str()),
        (Code::ResourceExhausted, "DESTINATION_BUSY"),
        "{refused:?}"
    );
    assert!(
        refused.message().contains("50 calls out open"),
        "{refused:?}"
    );
    assert_eq!(app.observed().calls(), 0, "the refused call left the pod");

    // The held calls end: calls out flow again.
    app.observed().release_waits();
    for call in holders {
        call.await.unwrap().expect("a held call out failed");
    }
    client
        .clone()
        .echo(EchoRequest::default())
        .await
        .expect("a call out after the others ended");
}
