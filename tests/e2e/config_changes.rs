//! The config file is watched like the certificates: an edit in place, or a ConfigMap's
//! `..data` symlink swap, is applied as SIGHUP applies it, without any signal (a
//! distroless image has no `kill`); an invalid file changes nothing, and is logged and
//! counted once.

use std::path::Path;

use tonic::Code;

use crate::support::pb::*;
use crate::support::*;

/// The development config with a rule that refuses the gateway's certificate on
/// `method` (`Echo` or `Inspect`).
fn refusing(app: std::net::SocketAddr, method: &str) -> String {
    DevConfig::new(app).admin().yaml()
        + &format!(
            "authorization:
  rules:
    - methods: [\"/gatehouse.demo.v1.Demo/{method}\"]
      allow_peers: [\"spiffe://dev.gatehouse/ns/default/sa/nobody\"]
"
        )
}

/// The code of an Echo call and of an Inspect call.
async fn codes(client: &mut DemoClient<tonic::transport::Channel>) -> (Code, Code) {
    let code = |result: Result<_, tonic::Status>| result.map_or_else(|s| s.code(), |_| Code::Ok);
    (
        code(client.echo(EchoRequest::default()).await.map(|_| ())),
        code(client.inspect(InspectRequest {}).await.map(|_| ())),
    )
}

/// Waits (bounded) until calls answer `expected`.
async fn until_codes(client: &mut DemoClient<tonic::transport::Channel>, expected: (Code, Code)) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let now = codes(client).await;
        if now == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "calls answer {now:?}, not {expected:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Writes `text` as the kubelet updates a ConfigMap volume: into a new timestamped
/// directory, then an atomic rename of a new `..data` symlink over the old one.
fn swap_data(volume: &Path, version: &str, text: &str) {
    let dir = volume.join(format!("..{version}"));
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("gatehouse.yaml"), text).unwrap();
    let staged = volume.join("..data_tmp");
    std::os::unix::fs::symlink(format!("..{version}"), &staged).unwrap();
    std::fs::rename(&staged, volume.join("..data")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_config_file_is_applied_without_a_signal_and_a_broken_one_is_refused() {
    let app = App::start().await;
    let gatehouse = Gatehouse::start(&refusing(app.addr, "Echo"));
    let mut client = client(gatehouse.addr).await;
    assert_eq!(codes(&mut client).await, (Code::PermissionDenied, Code::Ok));

    // An edit in place: the rule moves to Inspect. No SIGHUP.
    std::fs::write(gatehouse.config_path(), refusing(app.addr, "Inspect")).unwrap();
    until_codes(&mut client, (Code::Ok, Code::PermissionDenied)).await;
    gatehouse
        .wait_for_line(&["configuration file changed"])
        .await;
    gatehouse.wait_for_line(&["configuration reloaded"]).await;
    until_metric(
        &gatehouse,
        r#"gatehouse_config_reloads_total{result="success"}"#,
        1.0,
    )
    .await;

    // Broken: refused, logged with its field, counted once; the running rules stay.
    let broken =
        refusing(app.addr, "Echo").replace("client_auth: require", "client_auth: sometimes");
    std::fs::write(gatehouse.config_path(), broken).unwrap();
    gatehouse
        .wait_for_line(&["configuration reload refused", "tls.client_auth"])
        .await;
    until_metric(
        &gatehouse,
        r#"gatehouse_config_reloads_total{result="failure"}"#,
        1.0,
    )
    .await;
    assert_eq!(codes(&mut client).await, (Code::Ok, Code::PermissionDenied));
    // Still refused once only, however long it stays broken.
    let refusals = gatehouse.count_lines(&["configuration reload refused"]);
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(
        gatehouse.count_lines(&["configuration reload refused"]),
        refusals
    );

    // Fixed: applied.
    std::fs::write(gatehouse.config_path(), refusing(app.addr, "Echo")).unwrap();
    until_codes(&mut client, (Code::PermissionDenied, Code::Ok)).await;
    until_metric(
        &gatehouse,
        r#"gatehouse_config_reloads_total{result="success"}"#,
        2.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_data_swap_is_applied_like_an_edit() {
    let app = App::start().await;
    let gatehouse = Gatehouse::start(&refusing(app.addr, "Echo"));
    let mut client = client(gatehouse.addr).await;
    assert_eq!(codes(&mut client).await, (Code::PermissionDenied, Code::Ok));

    // Turn the file gatehouse reads into a ConfigMap volume's layout, same content:
    // gatehouse.yaml → ..data/gatehouse.yaml, ..data → ..2026_01_01_00_00_00.1.
    let volume = gatehouse.config_path().parent().unwrap().to_owned();
    swap_data(
        &volume,
        "2026_01_01_00_00_00.1",
        &refusing(app.addr, "Echo"),
    );
    let link = volume.join("gatehouse.yaml.link");
    std::os::unix::fs::symlink("..data/gatehouse.yaml", &link).unwrap();
    std::fs::rename(&link, gatehouse.config_path()).unwrap();

    // The kubelet's update: a new directory, and ..data swapped to it.
    swap_data(
        &volume,
        "2026_01_01_00_01_00.2",
        &refusing(app.addr, "Inspect"),
    );
    until_codes(&mut client, (Code::Ok, Code::PermissionDenied)).await;
    gatehouse.wait_for_line(&["configuration reloaded"]).await;
    // The same content under a new ..data is no change at all.
    swap_data(
        &volume,
        "2026_01_01_00_02_00.3",
        &refusing(app.addr, "Inspect"),
    );
    until_metric(
        &gatehouse,
        r#"gatehouse_config_reloads_total{result="success"}"#,
        1.0,
    )
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(gatehouse.count_lines(&["configuration reloaded"]), 1);

    // SIGHUP still works, and is not applied twice by the watcher.
    std::fs::write(
        volume.join("..2026_01_01_00_02_00.3/gatehouse.yaml"),
        refusing(app.addr, "Echo"),
    )
    .unwrap();
    gatehouse.signal("HUP");
    until_codes(&mut client, (Code::PermissionDenied, Code::Ok)).await;
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(gatehouse.count_lines(&["configuration reloaded"]), 2);
}
