//! HTTP/2 conformance for requests that are not gRPC: gatehouse answers them as any
//! conformant HTTP/2 server would (the request read, then a complete 415), so stream
//! errors on their frames are still reported with the right code, and each one is logged
//! and counted. (docs/deploy.md says how to run the h2spec suite by hand.)

use bytes::Bytes;

use crate::support::*;

const NOT_GRPC_BODY_LIMIT: usize = 64 * 1024;

/// An HTTP/2 connection to gatehouse over mTLS, driven by the h2 client.
async fn h2_client(gatehouse: &Gatehouse) -> h2::client::SendRequest<Bytes> {
    let tls = tls_connect(gatehouse.addr, Some(&Identity::gateway()))
        .await
        .unwrap();
    let (client, connection) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(connection);
    client.ready().await.unwrap()
}

fn json_post(extra: &[(&str, &str)]) -> http::Request<()> {
    let mut request = http::Request::post("https://localhost/api/v1/things")
        .header("content-type", "application/json");
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    request.body(()).unwrap()
}

async fn read_body(body: &mut h2::RecvStream) -> Vec<u8> {
    let mut read = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        read.extend_from_slice(&chunk);
    }
    read
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_grpc_requests_are_read_then_answered_with_a_complete_415() {
    let app = App::start().await;
    let gatehouse = Gatehouse::start(&config_with_admin(app.addr));
    let mut client = h2_client(&gatehouse).await;

    // A body sent in pieces after the headers: read to its end, then a full response.
    let (response, mut request_body) = client.send_request(json_post(&[]), false).unwrap();
    for piece in [&b"{\"a\":"[..], b"1", b"}"] {
        request_body
            .send_data(Bytes::copy_from_slice(piece), false)
            .unwrap();
    }
    request_body.send_data(Bytes::new(), true).unwrap();
    let response = response.await.expect("a response, not a reset");
    assert_eq!(response.status(), http::StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; charset=utf-8"
    );
    let text = read_body(&mut response.into_body()).await;
    assert_eq!(
        String::from_utf8(text).unwrap(),
        "gatehouse serves gRPC only: POST with content-type application/grpc\n"
    );

    // Frames of such a request are still checked: a body shorter than its
    // content-length is a stream error of type PROTOCOL_ERROR (RFC 9113 §8.1.1), not
    // a 415 sent before the body was looked at.
    let (response, mut request_body) = client
        .send_request(json_post(&[("content-length", "10")]), false)
        .unwrap();
    request_body
        .send_data(Bytes::from_static(b"short"), true)
        .unwrap();
    let error = response.await.expect_err("the stream is reset");
    assert_eq!(error.reason(), Some(h2::Reason::PROTOCOL_ERROR), "{error}");

    // A body past the budget is not read: the 415 comes at once and the rest of the
    // request is refused with RST_STREAM(NO_ERROR), as RFC 9113 §8.1 prescribes.
    let (response, mut request_body) = client.send_request(json_post(&[]), false).unwrap();
    request_body
        .send_data(
            Bytes::from(vec![b' '; NOT_GRPC_BODY_LIMIT + 16 * 1024]),
            false,
        )
        .unwrap();
    let response = response.await.expect("a response");
    assert_eq!(response.status(), http::StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let reset = std::future::poll_fn(|cx| request_body.poll_reset(cx))
        .await
        .expect("the rest of the request is refused");
    assert_eq!(reset, h2::Reason::NO_ERROR);

    // Each one is counted and logged, and the connection serves gRPC calls as before.
    let (status, scrape) = get(admin(&gatehouse), "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        scrape.contains("gatehouse_non_grpc_requests_total 3"),
        "{scrape}"
    );
    for body in ["body=ended", "body=stream_error", "body=too_large"] {
        let line = gatehouse
            .wait_for_line(&["msg=\"not a gRPC request\"", body])
            .await;
        assert!(line.contains("path=/api/v1/things"), "{line}");
        assert!(line.contains("content_type=application/json"), "{line}");
    }
    let mut grpc = crate::support::client(gatehouse.addr).await;
    let reply = grpc
        .echo(pb::EchoRequest {
            message: "still here".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(reply.into_inner().message, "still here");
}
