//! Callers without a valid client certificate, and requests that are not gRPC, are
//! refused, and gatehouse keeps serving everyone else.

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::pb::EchoRequest;
use crate::support::*;

/// Connects with `identity` and returns how the server refused: with TLS 1.3 the client
/// finishes its side of the handshake first, so the verdict arrives on the first read.
async fn refusal(addr: std::net::SocketAddr, identity: Option<&Identity>) -> String {
    let mut tls = match tls_connect(addr, identity).await {
        Ok(tls) => tls,
        Err(error) => return error.to_string(),
    };
    let _ = tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
    let mut buffer = [0u8; 64];
    match tokio::time::timeout(PATIENCE, tls.read(&mut buffer))
        .await
        .expect("the server answered")
    {
        Ok(0) => "closed without an alert".to_owned(),
        Ok(n) => panic!("a refused client was sent {n} bytes of HTTP/2"),
        Err(error) => error.to_string(),
    }
}

async fn assert_still_serving(gatehouse: &Gatehouse) {
    let mut client = client(gatehouse.addr).await;
    let reply = client
        .echo(EchoRequest {
            message: "still here".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(reply.into_inner().message, "still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_callers_without_a_valid_client_certificate() {
    let app = App::start().await;
    let gatehouse = Gatehouse::start(&dev_config(app.addr));
    let cases = [
        ("no certificate", None, "CertificateRequired"),
        ("another CA", Some(broken::from_other_ca()), "UnknownCA"),
        ("expired", Some(broken::expired()), "CertificateExpired"),
        (
            "server-only key usage",
            Some(broken::server_only_usage()),
            "UnsupportedCertificate",
        ),
    ];
    for (case, identity, alert) in cases {
        let refused = refusal(gatehouse.addr, identity.as_ref()).await;
        assert!(
            refused.contains(alert),
            "{case}: expected alert {alert}, got: {refused}"
        );
        // A gRPC client gets an error too, never an answer from the app.
        let call = async {
            let channel = channel(gatehouse.addr, identity).await?;
            let mut client = DemoClient::new(channel);
            client
                .echo(EchoRequest::default())
                .await
                .map_err(Box::<dyn std::error::Error>::from)?;
            Ok::<_, Box<dyn std::error::Error>>(())
        };
        assert!(call.await.is_err(), "{case}: the call went through");
    }
    gatehouse.wait_for_line(&["TLS handshake failed"]).await;
    assert_still_serving(&gatehouse).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_plaintext_on_the_tls_port() {
    let app = App::start().await;
    let gatehouse = Gatehouse::start(&dev_config(app.addr));

    // Raw HTTP/2 prior knowledge: no TLS record, so no HTTP/2 answer either.
    let mut tcp = tokio::net::TcpStream::connect(gatehouse.addr)
        .await
        .unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut answer))
        .await
        .expect("connection closed");
    assert!(
        !answer.starts_with(b"\x00\x00"),
        "plaintext HTTP/2 was answered: {answer:?}"
    );

    let addr = gatehouse.addr;
    let output =
        tokio::task::spawn_blocking(move || grpcurl_raw(addr, &["-plaintext"], &["list"], None))
            .await
            .unwrap();
    assert!(
        !output.status.success(),
        "grpcurl -plaintext succeeded: {}",
        stdout(&output)
    );
    assert_still_serving(&gatehouse).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speaks_h2_only_over_tls_1_2_and_1_3() {
    let app = App::start().await;
    let gatehouse = Gatehouse::start(&dev_config(app.addr));
    let identity = Identity::gateway();

    let tls13 = tls_connect(gatehouse.addr, Some(&identity)).await.unwrap();
    assert_eq!(tls13.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(
        tls13.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );

    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls12_only = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(dev_roots())
        .with_client_auth_cert(identity.certs(), identity.key())
        .unwrap();
    tls12_only.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(gatehouse.addr)
        .await
        .unwrap();
    let tls12 = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls12_only))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(
        tls12.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert_eq!(tls12.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));

    // A client that only speaks HTTP/1.1 is refused during the handshake.
    let mut http1 = (*client_tls(Some(&identity))).clone();
    http1.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(gatehouse.addr)
        .await
        .unwrap();
    let refused = tokio_rustls::TlsConnector::from(std::sync::Arc::new(http1))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("NoApplicationProtocol"),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_non_grpc_requests_with_http_415() {
    let app = App::start().await;
    let gatehouse = Gatehouse::start(&dev_config(app.addr));
    let tls = tls_connect(gatehouse.addr, Some(&Identity::gateway()))
        .await
        .unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(connection);
    let requests = [
        http::Request::post("https://localhost/gatehouse.demo.v1.Demo/Echo")
            .header("content-type", "application/json")
            .body(Empty::<Bytes>::new())
            .unwrap(),
        http::Request::get("https://localhost/gatehouse.demo.v1.Demo/Echo")
            .header("content-type", "application/grpc")
            .body(Empty::<Bytes>::new())
            .unwrap(),
        http::Request::post("https://localhost/")
            .body(Empty::<Bytes>::new())
            .unwrap(),
    ];
    for request in requests {
        let response = sender.send_request(request).await.unwrap();
        assert_eq!(response.status(), http::StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
    assert_still_serving(&gatehouse).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_after_the_handshake_timeout() {
    let app = App::start().await;
    let config = DevConfig::new(app.addr)
        .only_limits(&[("handshake_timeout", "2s")])
        .yaml();
    let gatehouse = Gatehouse::start(&config);
    let mut silent = tokio::net::TcpStream::connect(gatehouse.addr)
        .await
        .unwrap();
    let mut buffer = [0u8; 16];
    let read = tokio::time::timeout(PATIENCE, silent.read(&mut buffer))
        .await
        .expect("gatehouse closed the connection");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "a silent client was sent data: {read:?}"
    );
    gatehouse
        .wait_for_line(&["TLS handshake failed", "limits.handshake_timeout"])
        .await;
    assert_still_serving(&gatehouse).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apps_own_not_found_carries_no_gatehouse_details() {
    let app = App::start().await;
    let gatehouse = Gatehouse::start(&dev_config(app.addr));
    let mut client = client(gatehouse.addr).await;
    let status = client
        .fail(crate::support::pb::FailRequest {
            code: 5,
            message: "no such thing".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (tonic::Code::NotFound, "no such thing")
    );
    assert!(
        status.details().is_empty(),
        "gatehouse added details to the app's status: {:?}",
        status.details()
    );
    assert!(status.metadata().get("grpc-status-details-bin").is_none());
    // The app's own trailer metadata passes through.
    assert_eq!(status.metadata().get("x-demo-trailer").unwrap(), "fail");

    // From the same gatehouse, a status it generates itself does carry them.
    let mut bad_path = tonic::client::Grpc::new(
        channel(gatehouse.addr, Some(Identity::gateway()))
            .await
            .unwrap(),
    );
    bad_path.ready().await.unwrap();
    let refused = bad_path
        .unary(
            tonic::Request::new(EchoRequest::default()),
            "/gatehouse.demo.v1.Demo/Ec%68o".parse().unwrap(),
            tonic_prost::ProstCodec::<EchoRequest, crate::support::pb::EchoReply>::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unimplemented);
    assert_eq!(reason(&refused), "INVALID_METHOD_PATH");
}
