//! Context propagation end to end (DESIGN §10): a caller calls gatehouse A with a user's
//! token; A hands its app a `gatehouse-ctx` handle in `baggage` and no `authorization`
//! (`forward_token: false`). The app's own call out (made here by the test, carrying
//! only that baggage) goes through A's outbound port to gatehouse B, which must see the
//! user. Every gatehouse logs at debug, so a handle that leaked into a log line would be
//! found.

use std::net::SocketAddr;
use std::time::Duration;

use tonic::Code;
use tonic::transport::Channel;

use crate::support::pb::*;
use crate::support::*;

/// Gatehouse A: inbound in front of `app`, verifying the users' tokens and keeping them
/// from the app, with `identity-service` (gatehouse B at `b`) reached with `credentials:
/// context`. `outbound_extra` is added to the `outbound` section, `telemetry_extra` to
/// `telemetry`.
fn source(
    fixture: &Mesh,
    app: SocketAddr,
    b: SocketAddr,
    outbound_extra: &str,
    telemetry_extra: &str,
) -> (Gatehouse, SocketAddr) {
    source_limited(fixture, app, b, outbound_extra, telemetry_extra, "{}")
}

/// [`source`] with `limits` set to `limits` (a YAML flow mapping).
fn source_limited(
    fixture: &Mesh,
    app: SocketAddr,
    b: SocketAddr,
    outbound_extra: &str,
    otlp: &str,
    limits: &str,
) -> (Gatehouse, SocketAddr) {
    let gatehouse = Gatehouse::start(&format!(
        "listen: {{ address: 127.0.0.1:0 }}
tls:
  cert_file: {cert}
  key_file: {key}
  ca_file: {ca}
upstream: {{ address: {app} }}
auth:
  jwt:
    providers:
      - {{ name: users, issuer: \"{iss}\", audiences: [demo], algorithms: [RS256], jwks_file: {jwks}, forward_token: false }}
telemetry: {{ service_name: source, log_level: 'info,gatehouse=debug'{otlp} }}
limits: {limits}
outbound:
  listen: 127.0.0.1:0
  client_tls:
    cert_file: {client_cert}
    key_file: {client_key}
{outbound_extra}  destinations:
{destination}
",
        cert = dev_cert("server.crt").display(),
        key = dev_cert("server.key").display(),
        ca = dev_cert("ca.crt").display(),
        iss = fixture.users.iss,
        jwks = fixture.dir.path().join("jwks.json").display(),
        client_cert = dev_cert("client-gateway.crt").display(),
        client_key = dev_cert("client-gateway.key").display(),
        destination = entry("identity-service", b, DEST_ID, "context"),
    ));
    let outbound = outbound_address(&gatehouse);
    (gatehouse, outbound)
}

/// The metadata A's app received on an Inspect call sent by a caller with `token`, plus
/// whatever `extra` metadata the caller adds, and the deadline `timeout` if any.
async fn seen_by_source_app(
    a: SocketAddr,
    token: &str,
    extra: &[(&'static str, &str)],
    timeout: Option<Duration>,
) -> Vec<(String, String)> {
    let mut request = tonic::Request::new(InspectRequest {});
    request
        .metadata_mut()
        .insert("authorization", bearer(token));
    for (key, value) in extra {
        request.metadata_mut().append(*key, value.parse().unwrap());
    }
    if let Some(timeout) = timeout {
        request.set_timeout(timeout);
    }
    inspect(&mut client(a).await, request)
        .await
        .expect("the inbound call went through")
}

/// The `gatehouse-ctx` members of the `baggage` the app saw.
fn handles(seen: &[(String, String)]) -> Vec<String> {
    values(seen, "baggage")
        .iter()
        .flat_map(|value| value.split(','))
        .filter_map(|member| member.trim().strip_prefix("gatehouse-ctx="))
        .map(str::to_owned)
        .collect()
}

/// The app's call out, carrying only `metadata` (no token of its own).
async fn call_out(
    client: &mut DemoClient<Channel>,
    metadata: &[(&'static str, &str)],
) -> Result<Vec<(String, String)>, tonic::Status> {
    let mut request = tonic::Request::new(InspectRequest {});
    for (key, value) in metadata {
        request.metadata_mut().append(*key, value.parse().unwrap());
    }
    inspect(client, request).await
}

fn assert_no_call_context(result: Result<Vec<(String, String)>, tonic::Status>, what: &str) {
    let status = result.expect_err(what);
    assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
    assert!(
        status.message().starts_with("NO_CALL_CONTEXT: "),
        "{what}: {}",
        status.message()
    );
    let details = error_info(&status);
    assert_eq!(details.reason, "NO_CALL_CONTEXT", "{what}");
    assert_eq!(
        details.metadata.get("destination").map(String::as_str),
        Some("identity-service"),
        "{what}: {details:?}"
    );
}

/// Calls out every 50 ms (the condition is the passing of time inside gatehouse: no
/// event announces it) until `done` accepts an answer, within `limit`; every answer
/// before that must be a success, or a call the grace's end cut short.
async fn call_out_until(
    client: &mut DemoClient<Channel>,
    metadata: &[(&'static str, &str)],
    limit: Duration,
    done: impl Fn(&tonic::Status) -> bool,
) -> (tonic::Status, u32) {
    let deadline = tokio::time::Instant::now() + limit;
    let mut ticks = tokio::time::interval(Duration::from_millis(50));
    let mut successes = 0;
    loop {
        ticks.tick().await;
        assert!(
            tokio::time::Instant::now() < deadline,
            "still answered after {limit:?}"
        );
        match call_out(client, metadata).await {
            Ok(_) => successes += 1,
            Err(status) if done(&status) => return (status, successes),
            // Made in the grace, still open when it ran out: ended with the grace.
            Err(status) if reason(&status) == "INBOUND_CALL_ENDED" => {}
            Err(status) => panic!("unexpected refusal: {status:?}"),
        }
    }
}

/// Every `baggage` member the app saw whose key a reader could take for the handle's:
/// percent-decoded, trimmed, in any case.
fn handle_like_members(seen: &[(String, String)]) -> Vec<String> {
    values(seen, "baggage")
        .iter()
        .flat_map(|value| value.split(','))
        .filter(|member| {
            let key = member
                .split_once('=')
                .map_or(*member, |(key, _)| key)
                .trim();
            let key = key
                .replace("%2D", "-")
                .replace("%2d", "-")
                .replace("%67", "g");
            key.eq_ignore_ascii_case("gatehouse-ctx")
        })
        .map(|member| member.trim().to_owned())
        .collect()
}

/// A caller cannot smuggle a handle to the app under another spelling (a percent-encoded
/// or re-cased baggage key, which OpenTelemetry's JavaScript propagator decodes; an
/// underscore header) or in request trailers: the app sees gatehouse's handle only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handles_in_other_spellings_or_in_trailers_never_reach_the_app() {
    let fixture = Mesh::new();
    let app = App::start().await;
    let b = fixture.destination("dest", &genuine(), app.addr, "");
    let (a, _outbound) = source(&fixture, app.addr, b.addr, "", "");
    let token = fixture.users.token("alice", "acme", &["reader"]);

    let forged = "0123456789abcdef0123456789abcdef";
    let smuggled = format!(
        "userId=carol,gatehouse%2Dctx={forged}, GATEHOUSE-CTX={forged},%67atehouse-ctx={forged}"
    );
    let seen = seen_by_source_app(
        a.addr,
        &token,
        &[("baggage", &smuggled), ("x_gatehouse_ctx", forged)],
        None,
    )
    .await;
    let members = handle_like_members(&seen);
    assert_eq!(members.len(), 1, "only gatehouse's own handle: {seen:?}");
    assert!(!members[0].contains(forged), "{members:?}");
    assert!(members[0].starts_with("gatehouse-ctx="), "{members:?}");
    assert!(
        values(&seen, "baggage")[0].contains("userId=carol"),
        "{seen:?}"
    );
    assert!(values(&seen, "x_gatehouse_ctx").is_empty(), "{seen:?}");

    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-gatehouse-ctx", forged.parse().unwrap());
    trailers.insert(
        "baggage",
        format!("gatehouse-ctx={forged}").parse().unwrap(),
    );
    trailers.insert("x-custom-trailer", "kept".parse().unwrap());
    let reply = collect_with_trailers(a.addr, &token, trailers).await;
    let trailers = pairs(reply.trailers);
    assert_eq!(
        values(&trailers, "x-custom-trailer"),
        ["kept"],
        "{trailers:?}"
    );
    assert!(
        values(&trailers, "x-gatehouse-ctx").is_empty(),
        "{trailers:?}"
    );
    assert!(handle_like_members(&trailers).is_empty(), "{trailers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_destination_sees_the_verified_user_though_the_app_held_no_token() {
    let (collector, collector_addr) = Collector::start(false).await;
    let otlp = format!(", otlp_endpoint: \"http://{collector_addr}\"");
    let fixture = Mesh::new();
    let app = App::start().await;
    let b = fixture.destination("dest", &genuine(), app.addr, &otlp);
    let (a, outbound) = source(&fixture, app.addr, b.addr, "", &otlp);
    let token = fixture.users.token("alice", "acme", &["reader"]);

    // The caller forges a handle both ways and sends baggage of its own.
    let forged = "0123456789abcdef0123456789abcdef";
    let seen = seen_by_source_app(
        a.addr,
        &token,
        &[
            ("baggage", &format!("userId=carol,gatehouse-ctx={forged}")),
            ("x-gatehouse-ctx", forged),
        ],
        None,
    )
    .await;
    assert!(values(&seen, "authorization").is_empty(), "{seen:?}");
    assert!(values(&seen, "x-gatehouse-ctx").is_empty(), "{seen:?}");
    assert_eq!(values(&seen, "x-user-id"), ["alice"]);
    let minted = handles(&seen);
    assert_eq!(minted.len(), 1, "exactly gatehouse's own handle: {seen:?}");
    let handle = minted[0].clone();
    assert_ne!(handle, forged);
    assert_eq!(handle.len(), 32);
    assert!(handle.bytes().all(|b| b.is_ascii_hexdigit()), "{handle}");
    assert!(
        values(&seen, "baggage")
            .iter()
            .any(|value| value.contains("userId=carol")),
        "the caller's own baggage passes: {seen:?}"
    );
    let inbound_traceparent = values(&seen, "traceparent")[0].to_owned();

    // The app carries only the baggage, as an instrumented app does by itself.
    let mut client = app_client(outbound, "identity-service").await;
    let baggage = format!("region=eu,gatehouse-ctx={handle}");
    let at_destination = call_out(&mut client, &[("baggage", &baggage)])
        .await
        .expect("the call out went through");
    assert_eq!(values(&at_destination, "x-user-id"), ["alice"]);
    assert_eq!(values(&at_destination, "x-tenant-id"), ["acme"]);
    assert_eq!(values(&at_destination, "x-auth-method"), ["jwt"]);
    assert_eq!(
        values(&at_destination, "baggage"),
        ["region=eu"],
        "the handle is stripped before the call leaves the pod, the rest kept"
    );
    // The plain header works as well, and is stripped too.
    let plain = call_out(&mut client, &[("x-gatehouse-ctx", &handle)])
        .await
        .expect("the call out with x-gatehouse-ctx went through");
    assert_eq!(values(&plain, "x-user-id"), ["alice"]);
    assert!(values(&plain, "x-gatehouse-ctx").is_empty(), "{plain:?}");
    assert!(handles(&plain).is_empty(), "{plain:?}");

    // A made-up handle, and the caller's forged one, which never entered the table.
    for (what, made_up) in [
        ("made-up", "fedcba9876543210fedcba9876543210"),
        ("forged by the caller", forged),
        ("not a handle", "nope"),
    ] {
        let baggage = format!("gatehouse-ctx={made_up}");
        assert_no_call_context(call_out(&mut client, &[("baggage", &baggage)]).await, what);
    }
    assert_no_call_context(call_out(&mut client, &[]).await, "no handle at all");

    // The handle is in no log line of either gatehouse, nor in any span either exported.
    let server_span = collector
        .span(&hex(inbound_traceparent.split('-').nth(2).unwrap()))
        .await;
    let destination_traceparent = values(&at_destination, "traceparent")[0].to_owned();
    let destination_span = collector
        .span(&hex(destination_traceparent.split('-').nth(2).unwrap()))
        .await;
    let client_span = collector.span(&destination_span.parent_span_id).await;
    assert_eq!(client_span.kind, 3, "SPAN_KIND_CLIENT");
    a.wait_for_line(&["msg=outbound", "grpc_code=Unauthenticated"])
        .await;
    for span in [&server_span, &destination_span, &client_span] {
        assert!(!format!("{span:?}").contains(&handle), "{span:?}");
    }
    for (name, output) in [("A", a.output()), ("B", b.output())] {
        assert!(output.contains("msg=request"), "{name} logged calls");
        assert!(
            !output.contains(&handle),
            "{name} logged the handle:\n{output}"
        );
        assert!(!output.contains(&token), "{name} logged the token");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_is_refused_once_the_grace_after_its_call_is_over() {
    let fixture = Mesh::new();
    let app = App::start().await;
    let b = fixture.destination("dest", &genuine(), app.addr, "");
    let (a, outbound) = source(&fixture, app.addr, b.addr, "  context_grace: 2s\n", "");
    let token = fixture.users.token("alice", "acme", &[]);
    let seen = seen_by_source_app(a.addr, &token, &[], None).await;
    let handle = handles(&seen).pop().expect("a handle");
    let baggage = format!("gatehouse-ctx={handle}");
    let mut client = app_client(outbound, "identity-service").await;

    // The inbound call has ended: its handle works for the grace, then never again.
    let at_destination = call_out(&mut client, &[("baggage", &baggage)])
        .await
        .expect("within the grace");
    assert_eq!(values(&at_destination, "x-user-id"), ["alice"]);
    let (status, _) = call_out_until(
        &mut client,
        &[("baggage", &baggage)],
        Duration::from_secs(15),
        |status| status.code() == Code::Unauthenticated,
    )
    .await;
    assert_no_call_context(Err(status), "expired");
    assert_no_call_context(
        call_out(&mut client, &[("baggage", &baggage)]).await,
        "still expired",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_out_after_the_inbound_deadline_is_deadline_exceeded() {
    let fixture = Mesh::new();
    let app = App::start().await;
    let b = fixture.destination("dest", &genuine(), app.addr, "");
    let (a, outbound) = source(&fixture, app.addr, b.addr, "  context_grace: 60s\n", "");
    let token = fixture.users.token("alice", "acme", &[]);
    let inbound_timeout = Duration::from_secs(3);
    let seen = seen_by_source_app(a.addr, &token, &[], Some(inbound_timeout)).await;
    let handle = handles(&seen).pop().expect("a handle");
    let baggage = format!("gatehouse-ctx={handle}");
    let mut client = app_client(outbound, "identity-service").await;

    // Before the inbound deadline the destination is given what is left of it, not its
    // own 10 s default.
    let at_destination = call_out(&mut client, &[("baggage", &baggage)])
        .await
        .expect("before the inbound deadline");
    let sent = values(&at_destination, "grpc-timeout")[0];
    let millis: u64 = sent
        .strip_suffix('m')
        .and_then(|digits| digits.parse().ok())
        .unwrap_or_else(|| panic!("grpc-timeout in milliseconds: {sent}"));
    assert!(
        millis <= inbound_timeout.as_millis() as u64,
        "grpc-timeout {sent} is within the inbound call's 3 s"
    );

    let (status, _) = call_out_until(
        &mut client,
        &[("baggage", &baggage)],
        Duration::from_secs(15),
        |status| status.code() == Code::DeadlineExceeded,
    )
    .await;
    assert!(
        status.message().contains("inbound call"),
        "{}",
        status.message()
    );
    assert_eq!(reason(&status), "DEADLINE");
    // The handle is still within its grace: it is the deadline, not the handle, that
    // refuses the call.
    let status = call_out(&mut client, &[("x-gatehouse-ctx", &handle)])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
}

/// An app that holds every call open, answering headers and then nothing until its
/// caller goes away, and hands the test the handle each call carried: what the app of a
/// long inbound call knows.
struct HoldingApp {
    addr: SocketAddr,
    handles: tokio::sync::mpsc::UnboundedReceiver<Option<String>>,
}

impl HoldingApp {
    async fn start() -> HoldingApp {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (sender, received) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let sender = sender.clone();
                let service = hyper::service::service_fn(
                    move |request: http::Request<hyper::body::Incoming>| {
                        let seen: Vec<(String, String)> = request
                            .headers()
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
                            .collect();
                        let _ = sender.send(handles(&seen).pop());
                        async {
                            let never = futures_util::stream::pending::<
                                Result<http_body::Frame<bytes::Bytes>, std::convert::Infallible>,
                            >();
                            Ok::<_, std::convert::Infallible>(
                                http::Response::builder()
                                    .header("content-type", "application/grpc")
                                    .body(http_body_util::StreamBody::new(never))
                                    .unwrap(),
                            )
                        }
                    },
                );
                tokio::spawn(
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service),
                );
            }
        });
        HoldingApp {
            addr,
            handles: received,
        }
    }

    /// The handle of the next call that reaches the app (`None`: it carried none).
    async fn next_handle(&mut self) -> Option<String> {
        tokio::time::timeout(PATIENCE, self.handles.recv())
            .await
            .expect("a call reached the app")
            .expect("the app is up")
    }
}

/// An inbound call of `token` to `a` that stays open (its app holds it) until the task is
/// aborted, which cancels it.
fn open_inbound_call(a: SocketAddr, token: &str) -> tokio::task::JoinHandle<()> {
    let token = token.to_owned();
    tokio::spawn(async move {
        let mut request = tonic::Request::new(CountdownRequest::default());
        request
            .metadata_mut()
            .insert("authorization", bearer(&token));
        let mut client = client(a).await;
        if let Ok(answer) = client.countdown(request).await {
            let mut stream = answer.into_inner();
            while let Ok(Some(_)) = stream.message().await {}
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_full_of_open_calls_gives_new_calls_no_handle_and_keeps_the_live_ones() {
    let fixture = Mesh::new();
    let app = App::start().await;
    let mut holding = HoldingApp::start().await;
    let b = fixture.destination("dest", &genuine(), app.addr, "");
    let (a, outbound) = source(
        &fixture,
        holding.addr,
        b.addr,
        "  context_grace: 60s\n  context_max_handles: 1\n",
        ", admin_address: 127.0.0.1:0",
    );
    let token = fixture.users.token("alice", "acme", &[]);
    let alice = open_inbound_call(a.addr, &token);
    let handle = holding
        .next_handle()
        .await
        .expect("alice's call has a handle");

    // The table is full of an open call: later calls are served, with no handle, and
    // counted.
    let mallory = fixture.users.token("mallory", "evil", &[]);
    let mut mallorys = Vec::new();
    for _ in 0..3 {
        mallorys.push(open_inbound_call(a.addr, &mallory));
        assert_eq!(
            holding.next_handle().await,
            None,
            "an open call was evicted"
        );
    }
    let metrics = scrape_metrics(&a).await;
    assert!(
        metrics.contains("gatehouse_limit_refusals_total{limit=\"context_max_handles\"} 3"),
        "{metrics}"
    );
    // The live handle was not evicted.
    let mut client = app_client(outbound, "identity-service").await;
    let at_destination = call_out(&mut client, &[("x-gatehouse-ctx", &handle)])
        .await
        .expect("the open call's handle still resolves");
    assert_eq!(values(&at_destination, "x-user-id"), ["alice"]);
    alice.abort();
    for call in mallorys {
        call.abort();
    }
}

/// A caller making call after short call cannot keep the table full: calls in their
/// grace give way to new ones (an identity's own first), so another user's call still
/// gets its handle, and padding around a token is not kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_calls_cannot_fill_the_table_or_its_memory() {
    let fixture = Mesh::new();
    let app = App::start().await;
    let b = fixture.destination("dest", &genuine(), app.addr, "");
    let (a, outbound) = source(
        &fixture,
        app.addr,
        b.addr,
        "  context_grace: 60s\n  context_max_handles: 64\n  context_max_handles_per_identity: 16\n",
        ", admin_address: 127.0.0.1:0",
    );
    // 15 KB of padding before a valid token, on every call.
    let mallory = fixture.users.token("mallory", "evil", &[]);
    let padded = format!("{}{mallory}", " ".repeat(15_000));
    let before = rss_kib(a.pid());
    let calls = (0..8).map(|_| {
        let padded = padded.clone();
        async move {
            let mut client = client(a.addr).await;
            for _ in 0..100 {
                let mut request = tonic::Request::new(EchoRequest::default());
                request
                    .metadata_mut()
                    .insert("authorization", format!("Bearer {padded}").parse().unwrap());
                client
                    .echo(request)
                    .await
                    .expect("mallory's call is served");
            }
        }
    });
    futures_util::future::join_all(calls).await;
    let grown = rss_kib(a.pid()).saturating_sub(before);
    // 800 calls in their grace, 15 KB each, would be 12 MB.
    assert!(grown < 6 * 1024, "the table grew gatehouse by {grown} KiB");

    let alice = fixture.users.token("alice", "acme", &[]);
    let seen = seen_by_source_app(a.addr, &alice, &[], None).await;
    let handle = handles(&seen).pop().expect("alice gets a handle");
    let mut client = app_client(outbound, "identity-service").await;
    let at_destination = call_out(&mut client, &[("x-gatehouse-ctx", &handle)])
        .await
        .expect("alice's handle resolves");
    assert_eq!(values(&at_destination, "x-user-id"), ["alice"]);
}

/// An outbound call made under a handle ends when the inbound call it serves ends: it
/// never outlives the call it serves (DESIGN §10).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_out_ends_when_the_inbound_call_it_serves_ends() {
    let fixture = Mesh::new();
    let app = App::start().await;
    let mut holding = HoldingApp::start().await;
    let b = fixture.destination("dest", &genuine(), app.addr, "");
    let (a, outbound) = source(&fixture, holding.addr, b.addr, "", "");
    let token = fixture.users.token("alice", "acme", &[]);
    let inbound = open_inbound_call(a.addr, &token);
    let handle = holding.next_handle().await.expect("a handle");

    // The app's call out under the handle: a wait at the destination, with a deadline
    // far beyond this test.
    let mut client = app_client(outbound, "identity-service").await;
    let mut wait = tonic::Request::new(WaitRequest { millis: 600_000 });
    wait.metadata_mut()
        .insert("x-gatehouse-ctx", handle.parse().unwrap());
    let out = tokio::spawn(async move { client.wait(wait).await });
    assert!(
        app.observed()
            .wait_until(PATIENCE, |seen| seen.waits_started() >= 1)
            .await,
        "the call out reached the destination's app"
    );

    // The inbound call ends (its caller went away): the call out ends with it.
    inbound.abort();
    let status = tokio::time::timeout(Duration::from_secs(5), out)
        .await
        .expect("the call out ended within 5 s of the inbound call")
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), Code::Cancelled, "{status:?}");
    assert_eq!(reason(&status), "INBOUND_CALL_ENDED");
    assert!(
        app.observed()
            .wait_until(PATIENCE, |seen| seen.cancelled() >= 1)
            .await,
        "the destination's handler was cancelled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_refused_below_auth_leave_no_handle_behind() {
    let fixture = Mesh::new();
    let app = App::start().await;
    let b = fixture.destination("dest", &genuine(), app.addr, "");
    let (a, _outbound) = source_limited(
        &fixture,
        app.addr,
        b.addr,
        "  context_grace: 60s\n  context_max_handles: 2\n",
        ", admin_address: 127.0.0.1:0",
        "{ per_identity: { max_concurrent_calls: 1 } }",
    );
    // Bob holds his one call open (and one handle)...
    let bob = fixture.users.token("bob", "acme", &[]);
    let mut held = client(a.addr).await;
    let mut wait = tonic::Request::new(WaitRequest { millis: 60_000 });
    wait.metadata_mut().insert("authorization", bearer(&bob));
    let open = tokio::spawn(async move { held.wait(wait).await });
    assert!(
        app.observed()
            .wait_until(PATIENCE, |seen| seen.waits_started() >= 1)
            .await,
        "bob's call reached the app"
    );
    // ...then floods calls that Limits refuses: each passed Auth, which minted a handle.
    let mut flood = client(a.addr).await;
    for _ in 0..5 {
        let mut request = tonic::Request::new(InspectRequest {});
        request.metadata_mut().insert("authorization", bearer(&bob));
        let status = flood.inspect(request).await.unwrap_err();
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    }
    let metrics = scrape_metrics(&a).await;
    assert!(
        metrics.contains("gatehouse_limit_refusals_total{limit=\"max_concurrent_calls\"} 5"),
        "{metrics}"
    );
    // The refused calls' handles went with them: alice still gets the second slot.
    let alice = fixture.users.token("alice", "acme", &[]);
    let seen = seen_by_source_app(a.addr, &alice, &[], None).await;
    assert_eq!(handles(&seen).len(), 1, "{seen:?}");
    assert!(
        !metrics.contains("limit=\"context_max_handles\""),
        "{metrics}"
    );
    open.abort();
}
