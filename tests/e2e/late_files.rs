//! Certificate files that appear after gatehouse started, as spiffe-helper and CSI
//! drivers write them: `gatehouse run` waits with its listener closed, `/readyz` names
//! each missing file, and serving starts the moment the files are in place.

use tokio::net::TcpStream;

use crate::support::pb::*;
use crate::support::*;

/// Copies a development certificate file to `to`, as spiffe-helper writing it would.
fn write_dev(name: &str, to: &std::path::Path) {
    std::fs::write(to, std::fs::read(dev_cert(name)).unwrap()).unwrap();
}

/// `/readyz` (status, body) on the admin address `waiting` logged.
async fn readyz(waiting: &str) -> (u16, String) {
    get(field(waiting, "admin").parse().unwrap(), "/readyz").await
}

/// Waits (bounded) until `/readyz` answers a body containing `needle`.
async fn until_readyz_says(waiting: &str, needle: &str) -> (u16, String) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (status, body) = readyz(waiting).await;
        if body.contains(needle) {
            return (status, body);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz never said {needle:?}: {status} {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn assert_refused(result: std::io::Result<TcpStream>) {
    let error = result.expect_err("the listener is closed while files are missing");
    assert_eq!(
        error.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_waits_with_its_listener_closed_for_certificate_files_and_then_serves() {
    let app = App::start().await;
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    let (cert, key, ca) = (
        certs.join("tls.crt"),
        certs.join("tls.key"),
        certs.join("ca.crt"),
    );
    let listen = free_port().await;
    let mut dev = DevConfig::new(app.addr).admin().tls_files(&cert, &key, &ca);
    dev.listen = listen.to_string();
    let config = dev.yaml();

    // `check` still refuses the files that are not there.
    let path = dir.path().join("check.yaml");
    std::fs::write(&path, &config).unwrap();
    let output = gatehouse(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(64));
    assert!(
        stderr(&output).contains(&format!("tls.cert_file: no such file: {}", cert.display())),
        "{}",
        stderr(&output)
    );

    // Missing files are all `run` waits for: with any other problem it exits 64 at once.
    let broken = dev.only_limits(&[("max_connections", "0")]).yaml();
    std::fs::write(&path, &broken).unwrap();
    let mut run = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["run", "--config", path.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = run.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = run.kill();
            panic!("run waited instead of refusing limits.max_connections");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(64));
    let mut errors = String::new();
    std::io::Read::read_to_string(&mut run.stderr.take().unwrap(), &mut errors).unwrap();
    assert!(
        errors.contains("limits.max_connections: must be at least 1"),
        "{errors}"
    );

    let mut gatehouse = Gatehouse::start_until(&config, "waiting for TLS files before listening");
    let waiting = gatehouse
        .wait_for_line(&["waiting for TLS files before listening"])
        .await;
    let (status, body) = readyz(&waiting).await;
    assert_eq!(status, 503, "{body}");
    for (field, path) in [("cert_file", &cert), ("key_file", &key), ("ca_file", &ca)] {
        let expected = format!("waiting for tls.{field}: no such file: {}", path.display());
        assert!(body.contains(&expected), "{expected}: {body}");
    }
    assert_eq!(
        get(field(&waiting, "admin").parse().unwrap(), "/healthz")
            .await
            .0,
        200
    );
    assert_refused(TcpStream::connect(listen).await);

    // Half written: the certificate and CA are there, the key is another one. Still
    // waiting, and /readyz says what is wrong now.
    write_dev("server.crt", &cert);
    write_dev("ca.crt", &ca);
    write_dev("client-gateway.key", &key);
    let (status, body) =
        until_readyz_says(&waiting, "waiting for tls.key_file: does not match").await;
    assert_eq!(status, 503, "{body}");
    assert!(!body.contains("waiting for tls.cert_file"), "{body}");
    assert_refused(TcpStream::connect(listen).await);
    assert!(gatehouse.is_running());

    write_dev("server.key", &key);
    let addr = gatehouse.wait_listening().await;
    assert_eq!(addr, listen);
    let reply = client(addr)
        .await
        .echo(EchoRequest {
            message: "after the files".into(),
            ..Default::default()
        })
        .await
        .expect("served once the files are in place");
    assert_eq!(reply.into_inner().message, "after the files");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while readyz(&waiting).await.0 != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never ready: {:?}",
            readyz(&waiting).await
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_client_files_are_waited_for_and_sigterm_ends_the_wait() {
    let app = App::start().await;
    // The destination: the development server certificate, admitting the gateway.
    let b = Gatehouse::start(&dev_config(app.addr));
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    let config = format!(
        "listen: {{ address: 127.0.0.1:0 }}
tls: {{ enabled: false }}
upstream: {{ address: {app} }}
telemetry: {{ log_level: 'info,gatehouse=debug', admin_address: 127.0.0.1:0 }}
outbound:
  listen: 127.0.0.1:0
  client_tls: {{ cert_file: {cert}, key_file: {key}, ca_file: {ca} }}
  destinations:
    - {{ name: dest, address: \"{b}\", server_name: localhost, identity: [\"dns:localhost\"], credentials: none }}
",
        app = app.addr,
        cert = cert.display(),
        key = key.display(),
        ca = dev_cert("ca.crt").display(),
        b = b.addr,
    );
    let mut a = Gatehouse::start_until(&config, "waiting for TLS files before listening");
    let waiting = a
        .wait_for_line(&["waiting for TLS files before listening"])
        .await;
    let (status, body) = readyz(&waiting).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains(&format!(
            "waiting for outbound.client_tls.cert_file: no such file: {}",
            cert.display()
        )),
        "{body}"
    );
    write_dev("client-gateway.crt", &cert);
    write_dev("client-gateway.key", &key);
    a.wait_listening().await;
    let outbound = outbound_address(&a);
    let mut client = app_client(outbound, "dest").await;
    client
        .echo(EchoRequest::default())
        .await
        .expect("calls out with the certificate that appeared");

    // A gatehouse still waiting stops at once, cleanly, on SIGTERM.
    let mut waiting = Gatehouse::start_until(
        &config.replace(&cert.display().to_string(), "/nonexistent/tls.crt"),
        "waiting for TLS files before listening",
    );
    waiting.signal("TERM");
    assert_eq!(waiting.wait_exit().code(), Some(0), "{}", waiting.output());
}
