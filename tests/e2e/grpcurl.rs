//! The same paths, driven by grpcurl as a user would (reflection, no proto files).

use crate::support::*;

const DEMO: &str = "gatehouse.demo.v1.Demo";

fn ok(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "grpcurl failed: {}\n{}",
        stderr(output),
        stdout(output)
    );
    stdout(output)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_services_and_calls_all_four_kinds() {
    let app = App::start().await;
    let gatehouse = Gatehouse::start(&dev_config(app.addr));
    let addr = gatehouse.addr;

    // Blocking child processes: run them off the runtime that serves the app.
    let (
        list,
        unary,
        server_stream,
        empty_server_stream,
        client_stream,
        empty_client_stream,
        bidi,
        health,
    ) = tokio::task::spawn_blocking(move || {
        let list = ok(&grpcurl(addr, &[], &["list"], None));
        let unary = ok(&grpcurl(
            addr,
            &["-d", r#"{"message":"hello from grpcurl"}"#],
            &[&format!("{DEMO}/Echo")],
            None,
        ));
        let server_stream = ok(&grpcurl(
            addr,
            &["-d", r#"{"count":200}"#],
            &[&format!("{DEMO}/Countdown")],
            None,
        ));
        let empty_server_stream = ok(&grpcurl(
            addr,
            &["-d", r#"{"count":0}"#],
            &[&format!("{DEMO}/Countdown")],
            None,
        ));
        let inputs: String = (0..300)
            .map(|i| format!("{{\"message\":\"m{i}\",\"payload\":\"eHg=\"}}\n"))
            .collect();
        let client_stream = ok(&grpcurl(
            addr,
            &["-d", "@"],
            &[&format!("{DEMO}/Collect")],
            Some(&inputs),
        ));
        let empty_client_stream = ok(&grpcurl(
            addr,
            &["-d", "@"],
            &[&format!("{DEMO}/Collect")],
            Some(""),
        ));
        let bidi = ok(&grpcurl(
            addr,
            &["-d", "@"],
            &[&format!("{DEMO}/Chat")],
            Some(&inputs),
        ));
        let health = ok(&grpcurl(addr, &[], &["grpc.health.v1.Health/Check"], None));
        (
            list,
            unary,
            server_stream,
            empty_server_stream,
            client_stream,
            empty_client_stream,
            bidi,
            health,
        )
    })
    .await
    .unwrap();

    assert!(
        list.contains(DEMO) && list.contains("grpc.health.v1.Health"),
        "{list}"
    );
    assert!(
        unary.contains("\"message\": \"hello from grpcurl\""),
        "{unary}"
    );
    assert_eq!(
        server_stream.matches("\"message\":").count(),
        200,
        "{server_stream}"
    );
    assert!(server_stream.contains("\"sequence\": 199"));
    assert_eq!(empty_server_stream.trim(), "");
    assert!(client_stream.contains("\"count\": 300"), "{client_stream}");
    assert!(
        client_stream.contains("\"payloadBytes\": \"600\""),
        "{client_stream}"
    );
    assert!(
        client_stream.contains("\"lastMessage\": \"m299\""),
        "{client_stream}"
    );
    assert_eq!(empty_client_stream.trim(), "{\n  \n}");
    assert_eq!(bidi.matches("\"message\":").count(), 300, "{bidi}");
    assert!(health.contains("SERVING"), "{health}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_sees_the_apps_status_and_custom_metadata() {
    let app = App::start().await;
    let gatehouse = Gatehouse::start(&dev_config(app.addr));
    let addr = gatehouse.addr;
    let (failed, inspected) = tokio::task::spawn_blocking(move || {
        let request = r#"{"code":7,"message":"nein: 100% verboten ✗"}"#;
        let failed = grpcurl(addr, &["-d", request], &[&format!("{DEMO}/Fail")], None);
        let inspected = ok(&grpcurl(
            addr,
            &["-H", "x-custom: from-grpcurl"],
            &[&format!("{DEMO}/Inspect")],
            None,
        ));
        (failed, inspected)
    })
    .await
    .unwrap();
    assert!(!failed.status.success());
    let text = stderr(&failed) + &stdout(&failed);
    assert!(text.contains("Code: PermissionDenied"), "{text}");
    assert!(text.contains("Message: nein: 100% verboten ✗"), "{text}");
    // The app's own status: nothing of gatehouse's added to it.
    assert!(!text.contains("Details:"), "{text}");
    assert!(
        inspected.contains("\"value\": \"from-grpcurl\""),
        "{inspected}"
    );
}

/// The quick-start config (`config/dev.yaml`) on an ephemeral port, in front of `app`.
fn dev_yaml(app: std::net::SocketAddr) -> String {
    let text = std::fs::read_to_string(repo().join("config/dev.yaml")).unwrap();
    let certs = repo().join("certs-dev");
    text.edit("127.0.0.1:12018", "127.0.0.1:0")
        .edit("127.0.0.1:50051", &app.to_string())
        .edit("127.0.0.1:9901", "127.0.0.1:0")
        .edit("certs-dev/", &format!("{}/", certs.display()))
}

/// A token for alice of tenant acme with `roles`, minted by `gatehouse token` with the
/// development key, as the README does.
fn minted_token(roles: &str) -> String {
    let minted = std::process::Command::new(crate::support::binary())
        .current_dir(repo())
        .args([
            "token",
            "--key",
            "certs-dev/jwt-signing.key",
            "--kid",
            "dev-1",
            "--iss",
            "https://issuer.dev.gatehouse",
        ])
        .args([
            "--aud", "demo", "--sub", "alice", "--tenant", "acme", "--roles", roles,
        ])
        .output()
        .unwrap();
    assert!(minted.status.success(), "{}", stderr(&minted));
    stdout(&minted).trim().to_owned()
}

/// The README's JWT and API key calls, as written there: a token minted with
/// `gatehouse token`, the development API key, and grpcurl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_calls_with_a_minted_token_and_with_the_development_api_key() {
    let app = App::start().await;
    let gatehouse = Gatehouse::start(&dev_yaml(app.addr));
    let addr = gatehouse.addr;
    let (with_token, with_key, without, admin_only) = tokio::task::spawn_blocking(move || {
        let token = minted_token("reader");
        let key = std::fs::read_to_string(repo().join("certs-dev/api-key-compliance-scanner.txt"))
            .unwrap();
        let auth = format!("authorization: Bearer {token}");
        let api_key = format!("x-api-key: {}", key.trim());
        let with_token = grpcurl(addr, &["-H", &auth], &[&format!("{DEMO}/Inspect")], None);
        let with_key = grpcurl(addr, &["-H", &api_key], &[&format!("{DEMO}/Inspect")], None);
        let without = grpcurl(addr, &[], &[&format!("{DEMO}/Inspect")], None);
        let admin_only = grpcurl(
            addr,
            &["-H", &auth, "-d", r#"{"code":5}"#],
            &[&format!("{DEMO}/Fail")],
            None,
        );
        (with_token, with_key, without, admin_only)
    })
    .await
    .unwrap();
    let with_token = ok(&with_token);
    assert!(
        with_token.contains("\"key\": \"x-user-id\",\n      \"value\": \"alice\""),
        "{with_token}"
    );
    assert!(with_token.contains("\"value\": \"acme\""), "{with_token}");
    let with_key = ok(&with_key);
    assert!(
        with_key.contains("\"value\": \"compliance-scanner\""),
        "{with_key}"
    );
    assert!(
        !with_key.contains("x-api-key\""),
        "the API key reached the app: {with_key}"
    );
    assert!(!without.status.success());
    // Reflection is a method like any other: without credentials grpcurl cannot even
    // describe the service.
    assert!(
        stderr(&without).contains("Unauthenticated"),
        "{}",
        stderr(&without)
    );
    assert!(
        stderr(&without).contains("missing credentials"),
        "{}",
        stderr(&without)
    );
    assert!(
        stderr(&admin_only).contains("Code: PermissionDenied"),
        "{}",
        stderr(&admin_only)
    );

    // The health service is public: a probe without credentials (and without
    // reflection, which is not public) gets its answer.
    let channel = channel(gatehouse.addr, Some(Identity::gateway()))
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let request = tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    };
    assert!(health.check(request).await.is_ok());
}

/// A grpcurl user sees why gatehouse refused a call: the ErrorInfo in the status details,
/// decoded with the proto the repository ships; the app's own statuses have none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_shows_the_reason_of_a_refusal_and_no_details_on_the_apps_status() {
    let app = App::start().await;
    let gatehouse = Gatehouse::start(&dev_yaml(app.addr));
    let addr = gatehouse.addr;
    let (reflected, missing, by_rule, apps_own) = tokio::task::spawn_blocking(move || {
        let protos = repo().join("proto");
        let demo_protos = repo().join("examples/demo-app/proto");
        let bearer = |roles: &str| format!("authorization: Bearer {}", minted_token(roles));
        let (reader, admin) = (bearer("reader"), bearer("admin"));
        let with_schema = |flags: &[&str], call: &str| {
            let schema = [
                "-import-path",
                protos.to_str().unwrap(),
                "-import-path",
                demo_protos.to_str().unwrap(),
                "-proto",
                "demo.proto",
                "-proto",
                "google/rpc/error_details.proto",
            ];
            let flags: Vec<&str> = schema.iter().chain(flags).copied().collect();
            grpcurl(addr, &flags, &[call], None)
        };
        let fail = format!("{DEMO}/Fail");
        let reflected = grpcurl(
            addr,
            &["-v", "-H", &reader, "-d", r#"{"code":5}"#],
            &[&fail],
            None,
        );
        let missing = with_schema(&["-v"], &format!("{DEMO}/Echo"));
        let by_rule = with_schema(&["-H", &reader, "-d", r#"{"code":5}"#], &fail);
        let apps_own = with_schema(
            &[
                "-H",
                &admin,
                "-d",
                r#"{"code":5,"message":"no such thing"}"#,
            ],
            &fail,
        );
        (reflected, missing, by_rule, apps_own)
    })
    .await
    .unwrap();
    let text = |output: &std::process::Output| stderr(output) + &stdout(output);

    // Through reflection grpcurl knows no google.rpc types, yet shows the detail's type.
    let reflected = text(&reflected);
    assert!(reflected.contains("Code: PermissionDenied"), "{reflected}");
    assert!(
        reflected.contains(r#""@type":"type.googleapis.com/google.rpc.ErrorInfo""#),
        "{reflected}"
    );
    // With proto/google/rpc/error_details.proto it decodes the ErrorInfo.
    let missing = text(&missing);
    assert!(missing.contains("Code: Unauthenticated"), "{missing}");
    assert!(
        missing.contains(r#""reason":"MISSING_CREDENTIALS""#),
        "{missing}"
    );
    let by_rule = text(&by_rule);
    assert!(by_rule.contains("Code: PermissionDenied"), "{by_rule}");
    for field in [
        r#""domain":"gatehouse""#,
        r#""reason":"PERMISSION_DENIED_BY_RULE""#,
        r#""method":"/gatehouse.demo.v1.Demo/Fail""#,
        r#""rule":"0""#,
    ] {
        assert!(by_rule.contains(field), "{field} in {by_rule}");
    }
    let apps_own = text(&apps_own);
    assert!(apps_own.contains("Code: NotFound"), "{apps_own}");
    assert!(apps_own.contains("Message: no such thing"), "{apps_own}");
    assert!(!apps_own.contains("Details:"), "{apps_own}");
}
