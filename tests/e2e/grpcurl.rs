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
    let results = tokio::task::spawn_blocking(move || {
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
    let (
        list,
        unary,
        server_stream,
        empty_server_stream,
        client_stream,
        empty_client_stream,
        bidi,
        health,
    ) = results;

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
    assert!(
        inspected.contains("\"value\": \"from-grpcurl\""),
        "{inspected}"
    );
}
