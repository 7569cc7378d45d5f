//! Metrics, access logs, traces and the admin endpoints, observed from outside: a
//! Prometheus-style scrape, the process's log lines, and an OTLP/gRPC collector
//! running in the test.

use std::net::SocketAddr;
use std::time::Duration;

use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use tonic::Code;

use crate::support::pb::*;
use crate::support::*;

const KEY: &str = "observability-key-0123456789";

/// gatehouse with the admin server, API-key auth and, optionally, span export.
fn config(app: SocketAddr, otlp: Option<SocketAddr>) -> String {
    let mut config = DevConfig::new(app).admin();
    config.otlp_endpoint = otlp.map(|addr| format!("http://{addr}"));
    config.yaml()
        + &format!(
            "auth:\n  api_keys:\n    keys:\n      - {{ name: svc, sha256: \"{}\", tenant_id: acme, user_id: svc-user, roles: [svc] }}\n",
            hash(KEY)
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_calls_that_end_ok_with_the_apps_error_and_refused() {
    let app = App::start().await;
    let gatehouse = Gatehouse::start(&config(app.addr, None));
    let mut client = client(gatehouse.addr).await;
    for _ in 0..3 {
        client
            .echo(with_key(EchoRequest::default(), KEY))
            .await
            .unwrap();
    }
    for _ in 0..2 {
        let status = client
            .fail(with_key(
                FailRequest {
                    code: 5,
                    message: "no".into(),
                },
                KEY,
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
        let status = client.inspect(InspectRequest {}).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    let (status, scrape) = get(admin(&gatehouse), "/metrics").await;
    assert_eq!(status, 200);
    let demo = r#"grpc_type="unknown",grpc_service="gatehouse.demo.v1.Demo""#;
    let expect = [
        (format!(r#"grpc_server_started_total{{{demo},grpc_method="Echo"}}"#), 3.0),
        (format!(r#"grpc_server_handled_total{{{demo},grpc_method="Echo",grpc_code="OK"}}"#), 3.0),
        (format!(r#"grpc_server_handling_seconds_count{{{demo},grpc_method="Echo"}}"#), 3.0),
        (format!(r#"grpc_server_handled_total{{{demo},grpc_method="Fail",grpc_code="NotFound"}}"#), 2.0),
        (
            r#"grpc_server_handled_total{grpc_type="unknown",grpc_service="other",grpc_method="other",grpc_code="Unauthenticated"}"#.to_owned(),
            2.0,
        ),
        (r#"gatehouse_auth_total{method="api_key",result="allowed",reason="ok"}"#.to_owned(), 5.0),
        (r#"gatehouse_auth_total{method="none",result="refused",reason="missing_credentials"}"#.to_owned(), 2.0),
        ("gatehouse_requests_in_flight".to_owned(), 0.0),
        ("gatehouse_connections".to_owned(), 1.0),
    ];
    for (series, value) in expect {
        assert_eq!(
            sample(&scrape, &series),
            Some(value),
            "{series} in\n{scrape}"
        );
    }
    let echo_sum = sample(
        &scrape,
        &format!(r#"grpc_server_handling_seconds_sum{{{demo},grpc_method="Echo"}}"#),
    )
    .unwrap();
    assert!(echo_sum > 0.0);
    let (status, _) = get(admin(&gatehouse), "/healthz").await;
    assert_eq!(status, 200);
}

/// What Prometheus 2.x sends when it scrapes.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_in_the_format_asked_for_and_pass_promtool() {
    let app = App::start().await;
    let gatehouse = Gatehouse::start(&config(app.addr, None));
    let mut client = client(gatehouse.addr).await;
    client
        .echo(with_key(EchoRequest::default(), KEY))
        .await
        .unwrap();
    client.inspect(InspectRequest {}).await.unwrap_err();
    let admin = admin(&gatehouse);

    let (status, content_type, openmetrics) =
        get_accepting(admin, "/metrics", Some(PROMETHEUS_ACCEPT)).await;
    assert_eq!(status, 200);
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");
    assert!(openmetrics.contains("# TYPE grpc_server_started counter\n"));

    let (status, content_type, text) = get_accepting(admin, "/metrics", None).await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    assert!(!text.contains("# EOF"), "{text}");
    assert!(text.contains("# TYPE grpc_server_started_total counter\n"));
    let build_info = format!(
        r#"gatehouse_build_info{{version="{}",commit="{}"}}"#,
        env!("CARGO_PKG_VERSION"),
        checkout_commit()
    );
    for series in [
        r#"grpc_server_started_total{grpc_type="unknown",grpc_service="gatehouse.demo.v1.Demo",grpc_method="Echo"}"#,
        r#"gatehouse_auth_total{method="none",result="refused",reason="missing_credentials"}"#,
        &build_info,
    ] {
        assert_eq!(sample(&openmetrics, series), Some(1.0), "{series}");
        assert_eq!(sample(&text, series), Some(1.0), "{series}");
    }

    // promtool lints a scrape as Prometheus reads it: names, types, help, suffixes.
    let checked = tokio::task::spawn_blocking(move || {
        let mut promtool = promtool()
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        promtool
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        promtool.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        stdout(&checked),
        stderr(&checked)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_made_up_method_names_leaves_the_labels_bounded() {
    let app = App::start().await;
    let gatehouse = Gatehouse::start(&config(app.addr, None));
    let channel = channel(gatehouse.addr, Some(Identity::gateway()))
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    for i in 0..300 {
        grpc.ready().await.unwrap();
        let codec = tonic_prost::ProstCodec::<EchoRequest, EchoReply>::default();
        let path: http::uri::PathAndQuery = format!("/made.up.Svc{i}/Method{i}").parse().unwrap();
        let status = grpc
            .unary(tonic::Request::new(EchoRequest::default()), path, codec)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    let scrape = scrape_metrics(&gatehouse).await;
    assert!(!scrape.contains("made.up"), "made-up names became labels");
    let series = scrape
        .lines()
        .filter(|line| line.starts_with("grpc_server_started_total"))
        .count();
    assert_eq!(series, 1, "{scrape}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_has_one_line_per_call_with_its_fields_and_no_secret() {
    let app = App::start().await;
    let gatehouse = Gatehouse::start(&config(app.addr, None));
    let mut client = client(gatehouse.addr).await;
    client
        .inspect(with_key(InspectRequest {}, KEY))
        .await
        .unwrap();
    let mut bad = tonic::Request::new(InspectRequest {});
    bad.metadata_mut()
        .insert("x-api-key", "wrong-key-do-not-log-me".parse().unwrap());
    client.inspect(bad).await.unwrap_err();

    let line = gatehouse
        .wait_for_line(&["msg=request", "grpc_code=OK"])
        .await;
    assert_eq!(field(&line, "method"), "/gatehouse.demo.v1.Demo/Inspect");
    assert_eq!(field(&line, "user_id"), "svc-user");
    assert_eq!(field(&line, "tenant_id"), "acme");
    assert_eq!(field(&line, "auth"), "api_key");
    assert_eq!(field(&line, "api_key"), "svc");
    assert_eq!(
        field(&line, "peer"),
        "spiffe://dev.gatehouse/ns/default/sa/gateway"
    );
    assert_eq!(field(&line, "trace_id").len(), 32);
    assert!(field(&line, "duration_ms").parse::<f64>().unwrap() > 0.0);
    assert_eq!(field(&line, "bytes_in"), "5");
    assert!(field(&line, "bytes_out").parse::<u64>().unwrap() > 5);
    let refused = gatehouse
        .wait_for_line(&["msg=request", "grpc_code=Unauthenticated"])
        .await;
    assert_eq!(field(&refused, "refused"), "unknown_api_key");

    let output = gatehouse.output();
    for secret in [KEY, "wrong-key-do-not-log-me", "BEGIN", "PRIVATE KEY"] {
        assert!(
            !output.contains(secret),
            "{secret:?} appears in the log:\n{output}"
        );
    }
    assert_eq!(
        output
            .lines()
            .filter(|line| line.contains("msg=request"))
            .count(),
        2
    );
}

/// The keys of a logfmt line, in order (values may be quoted and hold spaces).
fn logfmt_keys(line: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut rest = line;
    while let Some((key, value)) = rest.split_once('=') {
        keys.push(key.trim().to_owned());
        rest = match value.strip_prefix('"') {
            // Past the closing quote (escaped quotes inside are skipped).
            Some(quoted) => {
                let mut end = 0;
                let bytes = quoted.as_bytes();
                while bytes[end] != b'"' {
                    end += if bytes[end] == b'\\' { 2 } else { 1 };
                }
                &quoted[end + 1..]
            }
            None => value.split_once(' ').map_or("", |(_, rest)| rest),
        };
    }
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_logfmt_names_and_a_numeric_duration() {
    let app = App::start().await;
    let logfmt = Gatehouse::start(&config(app.addr, None));
    let json = Gatehouse::start(
        &config(app.addr, None).replace("telemetry: { ", "telemetry: { log_format: json, "),
    );
    for gatehouse in [&logfmt, &json] {
        let mut client = client(gatehouse.addr).await;
        client
            .inspect(with_key(InspectRequest {}, KEY))
            .await
            .unwrap();
    }
    let logfmt_line = logfmt.wait_for_line(&["msg=request", "grpc_code=OK"]).await;
    let json_line = json
        .wait_for_line(&[r#""msg":"request""#, r#""grpc_code":"OK""#])
        .await;
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&json_line).expect("one JSON object a line");
    let mut json_keys: Vec<&str> = object.keys().map(String::as_str).collect();
    let mut logfmt_keys = logfmt_keys(&logfmt_line);
    json_keys.sort_unstable();
    logfmt_keys.sort_unstable();
    assert_eq!(json_keys, logfmt_keys, "{json_line}\n{logfmt_line}");
    for key in ["ts", "level", "msg", "duration_ms", "method", "trace_id"] {
        assert!(object.contains_key(key), "no {key} in {json_line}");
    }
    assert_eq!(object["level"], "INFO");
    let duration = object["duration_ms"]
        .as_f64()
        .expect("duration_ms is a number");
    assert!(duration > 0.0, "{json_line}");
    assert_eq!(object["bytes_in"], serde_json::json!(5));
    assert_eq!(object["user_id"], "svc-user");
    // Every line is JSON, the start-up lines too.
    for line in json.output().lines() {
        serde_json::from_str::<serde_json::Value>(line).expect(line);
    }
}

/// The app's view of `traceparent`: (trace id, parent span id, flags).
async fn traceparent_seen_by_app(
    client: &mut DemoClient<tonic::transport::Channel>,
    request: tonic::Request<InspectRequest>,
) -> (String, String, String) {
    let metadata = client.inspect(request).await.unwrap().into_inner().metadata;
    let value = metadata
        .iter()
        .find(|e| e.key == "traceparent")
        .expect("the app got a traceparent")
        .value
        .clone();
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    assert_eq!(parts[0], "00");
    (
        parts[1].to_owned(),
        parts[2].to_owned(),
        parts[3].to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continues_or_starts_the_trace_and_exports_the_server_span() {
    let (collector, collector_addr) = Collector::start(false).await;
    let app = App::start().await;
    let gatehouse = Gatehouse::start(&config(app.addr, Some(collector_addr)));
    let mut client = client(gatehouse.addr).await;

    // Continued: same trace, gatehouse's span between the caller's and the app's.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let mut request = with_key(InspectRequest {}, KEY);
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{caller_trace}-{caller_span}-01")
            .parse()
            .unwrap(),
    );
    let (trace, parent, flags) = traceparent_seen_by_app(&mut client, request).await;
    assert_eq!((trace.as_str(), flags.as_str()), (caller_trace, "01"));
    assert_ne!(parent, caller_span, "the app's parent is gatehouse's span");
    let span = collector.span(&hex(&parent)).await;
    assert_eq!(span.trace_id, hex(caller_trace));
    assert_eq!(span.parent_span_id, hex(caller_span));
    assert_eq!(span.name, "gatehouse.demo.v1.Demo/Inspect");
    assert_eq!(span.kind, 2, "SPAN_KIND_SERVER");
    let text = |key| match attribute(&span, key) {
        Some(AnyValue::StringValue(value)) => value,
        other => panic!("{key}: {other:?}"),
    };
    assert_eq!(text("rpc.system"), "grpc");
    assert_eq!(text("rpc.service"), "gatehouse.demo.v1.Demo");
    assert_eq!(text("rpc.method"), "Inspect");
    assert_eq!(text("enduser.id"), "svc-user");
    assert_eq!(text("gatehouse.tenant_id"), "acme");
    assert_eq!(
        text("gatehouse.peer"),
        "spiffe://dev.gatehouse/ns/default/sa/gateway"
    );
    assert_eq!(
        attribute(&span, "rpc.grpc.status_code"),
        Some(AnyValue::IntValue(0))
    );
    assert!(span.end_time_unix_nano > span.start_time_unix_nano);
    gatehouse
        .wait_for_line(&["msg=request", &format!("trace_id={caller_trace}")])
        .await;

    // Started: no traceparent from the caller.
    let (trace, parent, flags) =
        traceparent_seen_by_app(&mut client, with_key(InspectRequest {}, KEY)).await;
    assert_ne!(trace, caller_trace);
    assert_eq!(flags, "01", "sample_ratio 1.0 samples every new trace");
    let span = collector.span(&hex(&parent)).await;
    assert_eq!(span.trace_id, hex(&trace));
    assert!(
        span.parent_span_id.is_empty(),
        "a new trace's first span has no parent"
    );

    // Refused calls are traced too, with their status.
    let mut refused = tonic::Request::new(InspectRequest {});
    let refused_trace = "0af7651916cd43dd8448eb211c80319c";
    refused.metadata_mut().insert(
        "traceparent",
        format!("00-{refused_trace}-b7ad6b7169203331-01")
            .parse()
            .unwrap(),
    );
    client.inspect(refused).await.unwrap_err();
    let span = collector.span_in_trace(&hex(refused_trace)).await;
    assert_eq!(
        attribute(&span, "rpc.grpc.status_code"),
        Some(AnyValue::IntValue(16))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_over_https_naming_the_pod_from_the_otel_environment() {
    let (collector, collector_addr) = Collector::start_tls().await;
    let app = App::start().await;
    let mut config = DevConfig::new(app.addr).admin();
    config.otlp_endpoint = Some(format!("https://127.0.0.1:{}", collector_addr.port()));
    let yaml = config.yaml().replace(
        "service_name: gatehouse-test",
        &format!(
            "service_name: gatehouse-test, otlp_ca_file: {}",
            dev_cert("ca.crt").display()
        ),
    );

    // `check` and `run` agree: the https endpoint and its CA check, and run exports.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gatehouse.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let checked = gatehouse(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(checked.status.code(), Some(0), "{}", stderr(&checked));

    let gatehouse = Gatehouse::start_with_env(
        &yaml,
        &[
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "k8s.pod.name=identity-7d9f-x2x,k8s.namespace.name=prod,service.name=overridden",
            ),
            // The config's service_name is explicit: it wins over the environment.
            ("OTEL_SERVICE_NAME", "overridden-too"),
        ],
    );
    let mut client = client(gatehouse.addr).await;
    let (_, parent, _) =
        traceparent_seen_by_app(&mut client, tonic::Request::new(InspectRequest {})).await;
    let span = collector.span(&hex(&parent)).await;
    assert_eq!(span.name, "gatehouse.demo.v1.Demo/Inspect");
    let mut resource = collector.first_resource().await;
    resource.sort();
    assert_eq!(
        resource,
        [
            "k8s.namespace.name=prod",
            "k8s.pod.name=identity-7d9f-x2x",
            "service.name=gatehouse-test",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_whose_certificate_is_not_trusted_gets_no_spans_and_they_are_counted() {
    let (collector, collector_addr) = Collector::start_tls().await;
    let app = App::start().await;
    let mut config = DevConfig::new(app.addr).admin();
    // No otlp_ca_file: only the public web roots are trusted, not the development CA.
    config.otlp_endpoint = Some(format!("https://127.0.0.1:{}", collector_addr.port()));
    let gatehouse = Gatehouse::start(&config.yaml());
    let mut client = client(gatehouse.addr).await;
    client.inspect(InspectRequest {}).await.unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let series = r#"gatehouse_spans_dropped_total{reason="export_failed"}"#;
    loop {
        let scrape = scrape_metrics(&gatehouse).await;
        if sample(&scrape, series).is_some_and(|dropped| dropped >= 1.0) {
            assert_eq!(
                sample(
                    &scrape,
                    r#"gatehouse_spans_dropped_total{reason="queue_full"}"#
                ),
                Some(0.0)
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{scrape}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(collector.spans().is_empty());
    gatehouse
        .wait_for_line(&["span export failed", "endpoint=https://127.0.0.1"])
        .await;
}

#[test]
fn check_and_run_refuse_a_collector_ca_that_cannot_be_read() {
    let mut config = DevConfig::new("127.0.0.1:50051".parse().unwrap());
    config.otlp_endpoint = Some("https://otel-collector:4317".to_owned());
    let yaml = config.yaml().replace(
        "service_name: gatehouse-test",
        "service_name: gatehouse-test, otlp_ca_file: /nonexistent/collector-ca.crt",
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gatehouse.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let path = path.to_str().unwrap();
    for command in ["check", "run"] {
        let output = gatehouse(&[command, "--config", path]);
        assert_eq!(
            output.status.code(),
            Some(64),
            "{command}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(&format!(
                "{path}: telemetry.otlp_ca_file: no such file: /nonexistent/collector-ca.crt"
            )),
            "{command}: {}",
            stderr(&output)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_or_stalled_never_fails_or_holds_up_a_call() {
    let (_stalled, stalled_addr) = Collector::start(true).await;
    let down = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let app = App::start().await;
    for collector in [stalled_addr, down] {
        let gatehouse = Gatehouse::start(&config(app.addr, Some(collector)));
        let mut client = client(gatehouse.addr).await;
        for _ in 0..50 {
            let mut request = with_key(EchoRequest::default(), KEY);
            // Generous, but far shorter than an exporter timeout or a stalled export.
            request.set_timeout(std::time::Duration::from_secs(3));
            client.echo(request).await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_app_going_down_and_coming_back() {
    let app = App::start().await;
    let app_addr = app.addr;
    let gatehouse = Gatehouse::start(&config(app.addr, None));
    let admin = admin(&gatehouse);
    assert_eq!(get(admin, "/readyz").await, (200, "ready\n".to_owned()));

    app.kill().await;
    // The app's answer is reused for a second (admin::PROBE_TTL): poll, bounded.
    let (status, body) = readyz_until(admin, 503).await;
    assert_eq!(status, 503);
    assert!(body.contains("unreachable"), "{body}");
    assert_eq!(get(admin, "/healthz").await.0, 200, "alive while not ready");

    let _app = App::start_on(app_addr, Default::default()).await;
    assert_eq!(readyz_until(admin, 200).await, (200, "ready\n".to_owned()));
}

/// `/readyz` once it answers `status`, or its last answer after PATIENCE.
async fn readyz_until(admin: SocketAddr, status: u16) -> (u16, String) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let answer = get(admin, "/readyz").await;
        if answer.0 == status || tokio::time::Instant::now() > deadline {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
