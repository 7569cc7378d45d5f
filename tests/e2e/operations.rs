//! Living next to a pod for weeks: certificates rotating, configuration reloads, idle
//! and aged connections, and the drain on SIGTERM.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

use crate::support::pb::*;
use crate::support::*;

/// The leaf certificate the server presents on a new connection.
async fn served_certificate(addr: std::net::SocketAddr) -> Vec<u8> {
    let tls = tls_connect(addr, Some(&Identity::gateway()))
        .await
        .expect("handshake");
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// A Kubernetes Secret volume: files behind `..data`, a symlink swapped atomically.
fn publish_secret(dir: &Path, version: &str, identity: &Identity) {
    let versioned = dir.join(format!("..{version}"));
    std::fs::create_dir_all(&versioned).unwrap();
    std::fs::write(versioned.join("tls.crt"), &identity.cert_pem).unwrap();
    std::fs::write(versioned.join("tls.key"), &identity.key_pem).unwrap();
    std::fs::copy(dev_cert("ca.crt"), versioned.join("ca.crt")).unwrap();
    let staged = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&staged);
    std::os::unix::fs::symlink(format!("..{version}"), &staged).unwrap();
    std::fs::rename(&staged, dir.join("..data")).unwrap();
    for file in ["tls.crt", "tls.key", "ca.crt"] {
        let link = dir.join(file);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{file}"), &link).unwrap();
        }
    }
}

fn config_with_certs(app: std::net::SocketAddr, dir: &Path) -> String {
    DevConfig::new(app)
        .tls_files(
            &dir.join("tls.crt"),
            &dir.join("tls.key"),
            &dir.join("ca.crt"),
        )
        .admin()
        .yaml()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotates_certificates_behind_a_kubernetes_symlink_swap_and_an_atomic_rename() {
    let dir = tempfile::tempdir().unwrap();
    let first = broken::server_certificate("first", (2040, 1, 1));
    publish_secret(dir.path(), "2026_a", &first);
    let app = App::start().await;
    let gatehouse = Gatehouse::start(&config_with_certs(app.addr, dir.path()));
    assert_eq!(
        served_certificate(gatehouse.addr).await,
        der(&first.cert_pem)
    );
    let mut established = client(gatehouse.addr).await;

    // Kubernetes: the ..data symlink moves to a new directory in one rename.
    let second = broken::server_certificate("second", (2040, 1, 1));
    publish_secret(dir.path(), "2026_b", &second);
    // Swapped in before it is logged: new connections get it from the line on.
    gatehouse
        .wait_for_nth_line(&["TLS certificates reloaded"], 1)
        .await;
    assert_eq!(
        served_certificate(gatehouse.addr).await,
        der(&second.cert_pem)
    );
    let reply = established
        .echo(EchoRequest {
            message: "old connection".into(),
            ..Default::default()
        })
        .await;
    assert!(reply.is_ok(), "an established connection was disturbed");

    // A broken key is refused; the running pair stays.
    let versioned = dir.path().join("..2026_b");
    std::fs::write(versioned.join("tls.key"), "not a key").unwrap();
    gatehouse.wait_for_line(&["new TLS material refused"]).await;
    assert_eq!(
        served_certificate(gatehouse.addr).await,
        der(&second.cert_pem)
    );

    // A plain atomic rename of each file.
    let third = broken::server_certificate("third", (2040, 1, 1));
    for (file, content) in [("tls.key", &third.key_pem), ("tls.crt", &third.cert_pem)] {
        let staged = versioned.join(format!("{file}.new"));
        std::fs::write(&staged, content).unwrap();
        std::fs::rename(&staged, versioned.join(file)).unwrap();
    }
    gatehouse
        .wait_for_nth_line(&["TLS certificates reloaded"], 2)
        .await;
    assert_eq!(
        served_certificate(gatehouse.addr).await,
        der(&third.cert_pem)
    );

    let scrape = scrape_metrics(&gatehouse).await;
    assert!(
        scrape.contains(r#"gatehouse_config_reloads_total{result="success"}"#),
        "{scrape}"
    );
    assert!(
        scrape.contains(r#"gatehouse_config_reloads_total{result="failure"}"#),
        "{scrape}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_ca_bundle_cannot_be_bypassed_by_session_resumption() {
    let dir = tempfile::tempdir().unwrap();
    publish_secret(
        dir.path(),
        "a",
        &broken::server_certificate("server", (2040, 1, 1)),
    );
    let app = App::start().await;
    let gatehouse = Gatehouse::start(&config_with_certs(app.addr, dir.path()));
    let config = client_tls(Some(&Identity::gateway()));
    let connect = || async {
        let tcp = tokio::net::TcpStream::connect(gatehouse.addr)
            .await
            .unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(config.clone())
            .connect("localhost".try_into().unwrap(), tcp)
            .await?;
        // Speak HTTP/2 far enough to receive the server's SETTINGS (and session tickets).
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            .await?;
        let mut buffer = [0u8; 9];
        tls.read_exact(&mut buffer).await?;
        Ok::<_, std::io::Error>(tls.get_ref().1.handshake_kind())
    };
    connect().await.unwrap();
    assert_eq!(
        connect().await.unwrap(),
        Some(rustls::HandshakeKind::Resumed),
        "sessions resume normally"
    );

    // The CA bundle changes to one that did not sign the client's certificate.
    std::fs::write(dir.path().join("..a/ca.crt"), broken::other_ca()).unwrap();
    gatehouse
        .wait_for_line(&["TLS certificates reloaded"])
        .await;
    let refused = connect().await;
    assert!(
        refused.is_err(),
        "the old session was resumed past the new CA: {refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_expiry_is_exported_and_an_expired_serving_certificate_fails_readyz() {
    let dir = tempfile::tempdir().unwrap();
    publish_secret(
        dir.path(),
        "a",
        &broken::server_certificate("expired", (2021, 1, 1)),
    );
    let app = App::start().await;
    let gatehouse = Gatehouse::start(&config_with_certs(app.addr, dir.path()));
    let scrape = scrape_metrics(&gatehouse).await;
    let series = format!(
        "gatehouse_cert_expiry_timestamp_seconds{{file=\"{}\"}} 1609459200",
        dir.path().join("tls.crt").display()
    );
    assert!(scrape.contains(&series), "{series} not in\n{scrape}");
    let (status, body) = get(admin(&gatehouse), "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("serving certificate expired"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_keys_and_rules_and_an_invalid_file_changes_nothing() {
    let app = App::start().await;
    let with_key = |key: &str, config: DevConfig| {
        config.yaml()
            + &format!(
                "auth:\n  api_keys:\n    keys:\n      - {{ name: k, sha256: \"{}\" }}\n",
                hash(key)
            )
    };
    let gatehouse = Gatehouse::start(&with_key("first-key-0123456789", DevConfig::new(app.addr)));
    let mut client = client(gatehouse.addr).await;
    let call = |key: &'static str| crate::support::with_key(InspectRequest {}, key);
    assert!(client.inspect(call("first-key-0123456789")).await.is_ok());
    assert_eq!(
        client
            .inspect(call("second-key-0123456789"))
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );

    std::fs::write(
        gatehouse.config_path(),
        with_key("second-key-0123456789", DevConfig::new(app.addr)),
    )
    .unwrap();
    gatehouse.signal("HUP");
    gatehouse.wait_for_line(&["configuration reloaded"]).await;
    assert!(client.inspect(call("second-key-0123456789")).await.is_ok());
    assert_eq!(
        client
            .inspect(call("first-key-0123456789"))
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );

    // Invalid: every problem logged, nothing changed.
    std::fs::write(
        gatehouse.config_path(),
        with_key(
            "third-key-0123456789",
            DevConfig::new(app.addr).client_auth("sometimes"),
        ),
    )
    .unwrap();
    gatehouse.signal("HUP");
    gatehouse
        .wait_for_line(&["configuration reload refused", "tls.client_auth"])
        .await;
    assert!(client.inspect(call("second-key-0123456789")).await.is_ok());

    // A restart-only setting is named, the rest applies.
    let mut moved = DevConfig::new(app.addr);
    moved.listen = "127.0.0.1:1".to_owned();
    let moved = with_key("third-key-0123456789", moved);
    std::fs::write(gatehouse.config_path(), moved).unwrap();
    gatehouse.signal("HUP");
    gatehouse
        .wait_for_line(&[
            "takes effect only after a restart",
            "setting=listen.address",
        ])
        .await;
    // Applied before it is logged: the second reload's line means the new key is live.
    gatehouse
        .wait_for_nth_line(&["configuration reloaded"], 2)
        .await;
    assert!(
        client.inspect(call("third-key-0123456789")).await.is_ok(),
        "the reload did not apply"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_and_connections_past_their_age_get_goaway() {
    let app = App::start().await;
    let config = DevConfig::new(app.addr)
        .only_limits(&[("idle_timeout", "300ms")])
        .yaml();
    let gatehouse = Gatehouse::start(&config);
    let tls = tls_connect(gatehouse.addr, Some(&Identity::gateway()))
        .await
        .unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    let connection = tokio::spawn(connection);
    let request = http::Request::post("https://localhost/grpc.health.v1.Health/Check")
        .header("content-type", "application/grpc")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(&[
            0, 0, 0, 0, 0,
        ])))
        .unwrap();
    assert_eq!(sender.send_request(request).await.unwrap().status(), 200);
    tokio::time::timeout(PATIENCE, connection)
        .await
        .expect("an idle connection was closed")
        .unwrap()
        .unwrap();

    // Max age: GOAWAY while a call is open; the call still finishes.
    let config = DevConfig::new(app.addr)
        .only_limits(&[("max_connection_age", "300ms")])
        .yaml();
    let aged = Gatehouse::start(&config);
    let mut client = client(aged.addr).await;
    let reply = client
        .wait(WaitRequest { millis: 1000 })
        .await
        .expect("the open call finished");
    assert_eq!(reply.into_inner().message, "waited 1000ms");
    aged.wait_for_line(&["limits.max_connection_age reached"])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_delay_keeps_serving_while_readyz_is_unready_and_a_stuck_handshake_does_not_hold_the_drain()
 {
    let app = App::start().await;
    let config = DevConfig::new(app.addr)
        .limit("drain_delay", "1s")
        .limit("handshake_timeout", "1h")
        .admin()
        .yaml();
    let mut gatehouse = Gatehouse::start(&config);
    let admin = admin(&gatehouse);
    let _silent = tokio::net::TcpStream::connect(gatehouse.addr)
        .await
        .unwrap();
    gatehouse.signal("TERM");
    gatehouse.wait_for_line(&["draining"]).await;
    let (status, body) = get(admin, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("draining"), "{body}");
    // Still accepting during the delay.
    let mut late = client(gatehouse.addr).await;
    assert!(late.echo(EchoRequest::default()).await.is_ok());
    drop(late);
    let (status, output) =
        tokio::task::spawn_blocking(move || (gatehouse.wait_exit(), gatehouse.output()))
            .await
            .unwrap();
    assert_eq!(status.code(), Some(0), "{output}");
    // A drain held to its timeout also exits 0: only the line says which way it ended.
    assert!(
        output.contains("msg=\"drained; exiting\""),
        "the silent connection held the drain:\n{output}"
    );
    assert!(
        !output.contains("drain timeout reached"),
        "the silent connection held the drain:\n{output}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_ends_the_drain_and_open_calls_fail_instead_of_hanging() {
    let app = App::start().await;
    let config = DevConfig::new(app.addr)
        .only_limits(&[("drain_timeout", "1h")])
        .yaml();
    let mut gatehouse = Gatehouse::start(&config);
    let mut client = client(gatehouse.addr).await;
    // A stream the app is answering, ended by trailers gatehouse writes after its messages.
    let mut streaming = client
        .countdown(CountdownRequest {
            count: 100_000,
            interval_millis: 50,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    streaming.message().await.unwrap().expect("a first message");
    let open = tokio::spawn(async move { client.wait(WaitRequest { millis: 600_000 }).await });
    assert!(
        app.observed()
            .wait_until(PATIENCE, |seen| seen.waits_started() >= 1)
            .await
    );
    gatehouse.signal("TERM");
    gatehouse.wait_for_line(&["draining"]).await;
    gatehouse.signal("TERM");
    let status = tokio::time::timeout(PATIENCE, open)
        .await
        .expect("the open call ended")
        .unwrap()
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(reason(&status), "SHUTTING_DOWN");
    let ended = tokio::time::timeout(PATIENCE, async {
        loop {
            match streaming.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream ended OK although the drain ended it"),
                Err(status) => break status,
            }
        }
    })
    .await
    .expect("the open stream ended");
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
    assert_eq!(reason(&ended), "SHUTTING_DOWN");
    let exit = tokio::task::spawn_blocking(move || gatehouse.wait_exit())
        .await
        .unwrap();
    assert_eq!(exit.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_closed_and_running_out_of_descriptors_is_survived() {
    let app = App::start().await;
    let config = DevConfig::new(app.addr)
        .only_limits(&[
            ("max_connections", "2"),
            ("max_connections_per_client", "2"),
        ])
        .yaml();
    let gatehouse = Gatehouse::start(&config);
    let first = client(gatehouse.addr).await;
    let second = client(gatehouse.addr).await;
    let mut third = tokio::net::TcpStream::connect(gatehouse.addr)
        .await
        .unwrap();
    let mut buffer = [0u8; 1];
    let read = tokio::time::timeout(PATIENCE, third.read(&mut buffer))
        .await
        .expect("closed at accept");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "a third connection was served"
    );
    drop((first, second));

    // Few descriptors: accept fails with EMFILE while silent connections hold them (from
    // one address, so that address may hold more of them than the descriptors allow).
    let config = DevConfig::new(app.addr)
        .limit("max_connections_per_client", "100")
        .yaml();
    let gatehouse = Gatehouse::start_with_fd_limit(&config, 40);
    let mut silent = Vec::new();
    for _ in 0..60 {
        if let Ok(tcp) = tokio::net::TcpStream::connect(gatehouse.addr).await {
            silent.push(tcp);
        }
    }
    gatehouse.wait_for_line(&["accept failed"]).await;
    drop(silent);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let served = async {
            let channel = channel(gatehouse.addr, Some(Identity::gateway()))
                .await
                .ok()?;
            DemoClient::new(channel)
                .echo(EchoRequest::default())
                .await
                .ok()
        };
        if tokio::time::timeout(Duration::from_secs(5), served)
            .await
            .ok()
            .flatten()
            .is_some()
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the accept loop did not recover"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
