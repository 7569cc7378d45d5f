//! Streams cannot outlive their credentials, through the real binary: a token that
//! expires while its server stream is open, an API key revoked from `keys_file` or by a
//! SIGHUP reload while its calls are open, a caller that reads nothing while its
//! credentials end, and `auth.expire_open_calls: false`.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use gatehouse::body::END_GRACE;

use jsonwebtoken::Algorithm;
use tonic::Code;

use crate::support::issuers::*;
use crate::support::pb::*;
use crate::support::*;

const EXPIRED_MESSAGE: &str = "token expired while the call was open";
const REVOKED_MESSAGE: &str = "API key revoked while the call was open";
const STREAM_KEY: &str = "stream-key-0123456789";
const INLINE_KEY: &str = "inline-key-0123456789";

/// gatehouse with one JWT provider (no leeway) and API keys: `inline-key` in the config,
/// `stream-key` in `keys_file`. `extra` is added under `auth:`.
fn config(app: std::net::SocketAddr, dir: &Path, issuer: &Issuer, extra: &str) -> String {
    let keys_file = dir.join("keys.yaml");
    write_keys_file(&keys_file, &[("stream-key", STREAM_KEY)]);
    config_with_admin(app)
        + &format!(
            "auth:
  jwt:
    providers:
{}  api_keys:
    keys:
      - {{ name: inline-key, sha256: \"{}\" }}
    keys_file: \"{}\"
{extra}",
            provider(dir, "short", issuer, ", leeway: 0s"),
            hash(INLINE_KEY),
            keys_file.display()
        )
}

/// One gatehouse under test, with its files, its token issuer, the demo app and a client.
struct Setup {
    dir: tempfile::TempDir,
    issuer: Issuer,
    app: App,
    config: String,
    gatehouse: Gatehouse,
    client: DemoClient<tonic::transport::Channel>,
}

/// Starts the app and gatehouse with [`config`] (`extra` under `auth:`) and connects.
async fn setup(extra: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let issuer = Issuer::generate("short", Algorithm::ES256);
    let app = App::start().await;
    let config = config(app.addr, dir.path(), &issuer, extra);
    let gatehouse = Gatehouse::start(&config);
    let client = client(gatehouse.addr).await;
    Setup {
        dir,
        issuer,
        app,
        config,
        gatehouse,
        client,
    }
}

/// A token of `issuer` that expires `seconds` from now.
fn token_expiring_in(issuer: &Issuer, seconds: u64) -> String {
    let mut claims = issuer.claims("alice", "acme", &[]);
    claims["exp"] = (jsonwebtoken::get_current_timestamp() + seconds).into();
    issuer.sign(&claims)
}

/// Reads `stream` to its end: the messages received, and the status it ended with.
async fn drain(stream: &mut tonic::Streaming<EchoReply>) -> (u32, Result<(), tonic::Status>) {
    let mut received = 0;
    loop {
        match stream.message().await {
            Ok(Some(_)) => received += 1,
            Ok(None) => return (received, Ok(())),
            Err(status) => return (received, Err(status)),
        }
    }
}

/// A `Countdown` of `count` messages, one every `interval_millis`.
fn countdown(count: u32, interval_millis: u32) -> CountdownRequest {
    CountdownRequest {
        count,
        payload_size: 64,
        interval_millis,
        ..Default::default()
    }
}

/// Waits (bounded) until the app has seen `calls` cancelled.
async fn app_saw_cancellations(app: &App, calls: u64) {
    assert!(
        app.observed()
            .wait_until(PATIENCE, |observed| observed.cancelled() >= calls)
            .await,
        "the app's stream was not cancelled: {} cancellations",
        app.observed().cancelled()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_expiring_during_a_server_stream_ends_it_unauthenticated() {
    let mut setup = setup("").await;

    // 20 messages over 10 s; the token (leeway 0) expires about 4 s in.
    let token = token_expiring_in(&setup.issuer, 4);
    let mut stream = setup
        .client
        .countdown(with_token(countdown(20, 500), &token))
        .await
        .expect("admitted: the token is still valid")
        .into_inner();
    let (received, end) = drain(&mut stream).await;
    let status = end.expect_err("the stream outlived its token");
    assert_eq!(
        (status.code(), status.message(), reason(&status).as_str()),
        (Code::Unauthenticated, EXPIRED_MESSAGE, "TOKEN_EXPIRED")
    );
    assert!(
        received > 0,
        "nothing was delivered before the token expired"
    );
    assert!(
        received < 20,
        "the whole stream was delivered: it was not ended"
    );
    app_saw_cancellations(&setup.app, 1).await;

    let line = setup
        .gatehouse
        .wait_for_line(&["msg=request", "ended_by="])
        .await;
    assert_eq!(field(&line, "ended_by"), "token_expired", "{line}");
    assert_eq!(field(&line, "grpc_code"), "Unauthenticated", "{line}");
    wait_for_metric(
        &setup.gatehouse,
        r#"gatehouse_auth_total{method="jwt",result="ended_in_call",reason="token_expired"} 1"#,
    )
    .await;

    // A fresh token works on the same connection: only the expired call ended.
    let fresh = setup.issuer.token("alice", "acme", &[]);
    let mut stream = setup
        .client
        .countdown(with_token(countdown(3, 0), &fresh))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(drain(&mut stream).await.0, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_key_removed_from_keys_file_ends_its_open_stream() {
    let mut setup = setup("").await;

    // 100 messages over 10 s; revoked as soon as the first has arrived.
    let mut revoked = setup
        .client
        .countdown(with_key(countdown(100, 100), STREAM_KEY))
        .await
        .unwrap()
        .into_inner();
    revoked.message().await.unwrap().expect("a first message");
    // A call of another key stays open across the revocation.
    let mut other = setup
        .client
        .countdown(with_key(countdown(30, 100), INLINE_KEY))
        .await
        .unwrap()
        .into_inner();
    other.message().await.unwrap().expect("a first message");

    write_keys_file(
        &setup.dir.path().join("keys.yaml"),
        &[("rotated", "rotated-key-0123456789")],
    );
    let (received, end) = drain(&mut revoked).await;
    let status = end.expect_err("the stream outlived its key");
    assert_eq!(
        (status.code(), status.message(), reason(&status).as_str()),
        (Code::Unauthenticated, REVOKED_MESSAGE, "KEY_REVOKED")
    );
    assert!(
        received + 1 < 100,
        "the whole stream was delivered: it was not ended"
    );
    app_saw_cancellations(&setup.app, 1).await;

    let (rest, end) = drain(&mut other).await;
    end.expect("the other key's stream was ended too");
    assert_eq!(rest + 1, 30);

    let refused = setup
        .client
        .echo(with_key(EchoRequest::default(), STREAM_KEY))
        .await
        .expect_err("the revoked key still works");
    assert_eq!(
        (refused.code(), reason(&refused).as_str()),
        (Code::Unauthenticated, "UNKNOWN_API_KEY")
    );
    wait_for_metric(
        &setup.gatehouse,
        r#"gatehouse_auth_total{method="api_key",result="ended_in_call",reason="key_revoked"} 1"#,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_ends_its_stream_between_messages_never_inside_one() {
    const PAYLOAD: usize = 4 << 20;
    let mut setup = setup("").await;

    // Messages of 4 MiB, each many DATA frames and more than the flow-control windows
    // between the app and the caller hold. The caller reads one, then stops: the windows
    // fill and the app is held in the middle of a message when the key goes.
    let request = CountdownRequest {
        count: 50,
        payload_size: PAYLOAD as u32,
        ..Default::default()
    };
    let mut stream = setup
        .client
        .countdown(with_key(request, STREAM_KEY))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().expect("a first message");
    assert_eq!(first.payload.len(), PAYLOAD);
    assert!(
        setup
            .app
            .observed()
            .wait_until(PATIENCE, |observed| observed.countdown_bytes()
                >= 2 * PAYLOAD as u64)
            .await,
        "the app never started its second message"
    );
    write_keys_file(
        &setup.dir.path().join("keys.yaml"),
        &[("rotated", "rotated-key-0123456789")],
    );
    setup.gatehouse.wait_for_line(&["API keys revoked"]).await;

    // Reading again: only whole messages arrive, then the status.
    let mut received = 1;
    let mut delivered = framed_len(&first);
    let status = loop {
        match stream.message().await {
            Ok(Some(reply)) => {
                assert_eq!(reply.payload.len(), PAYLOAD, "a message was cut");
                received += 1;
                delivered += framed_len(&reply);
            }
            Ok(None) => panic!("the stream outlived its key"),
            Err(status) => break status,
        }
    };
    assert_eq!(
        (status.code(), status.message(), reason(&status).as_str()),
        (Code::Unauthenticated, REVOKED_MESSAGE, "KEY_REVOKED")
    );
    assert!(received < 50, "the whole stream was delivered");
    app_saw_cancellations(&setup.app, 1).await;
    // A client may drop a partial message it holds when the status arrives: what
    // gatehouse sent is exactly the whole messages the caller decoded, not a byte more.
    let line = setup
        .gatehouse
        .wait_for_line(&["msg=request", "ended_by=key_revoked"])
        .await;
    assert_eq!(field(&line, "bytes_out"), delivered.to_string(), "{line}");
}

/// A reply's size on the wire: the 5-byte gRPC prefix and the encoded message.
fn framed_len(reply: &EchoReply) -> usize {
    use prost::Message;
    5 + reply.encoded_len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_dropped_by_a_sighup_reload_ends_a_client_stream_the_app_has_not_answered() {
    let setup = setup("").await;

    // A client stream that stays open: the app reads to the end before it answers, so
    // no response headers have gone out when the key goes.
    let (send, requests) = tokio::sync::mpsc::unbounded_channel();
    send.send(EchoRequest {
        message: "first".into(),
        ..Default::default()
    })
    .unwrap();
    let requests = tokio_stream::wrappers::UnboundedReceiverStream::new(requests);
    let mut client = setup.client.clone();
    let collect = tokio::spawn(async move {
        client
            .collect(with_key(requests, INLINE_KEY))
            .await
            .map(|_| ())
    });
    // `calls` is a bare counter (no change notification): read it until it moves.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while setup.app.observed().calls() < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the client stream never reached the app"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    let without_inline_key = setup.config.edit(&hash(INLINE_KEY), &"0".repeat(64));
    std::fs::write(setup.gatehouse.config_path(), without_inline_key).unwrap();
    setup.gatehouse.signal("HUP");
    let status = tokio::time::timeout(PATIENCE, collect)
        .await
        .expect("the client stream was not ended")
        .unwrap()
        .expect_err("the client stream outlived its key");
    assert_eq!(
        (status.code(), status.message(), reason(&status).as_str()),
        (Code::Unauthenticated, REVOKED_MESSAGE, "KEY_REVOKED")
    );
    // The caller's request stream is still open (`send` is held), so only gatehouse
    // resetting the app's stream can end the app's handler. hyper hands a request body
    // reset with CANCEL to the app as its end, so the handler may finish rather than
    // count a cancellation; either way it is no longer waiting.
    assert!(
        setup
            .app
            .observed()
            .wait_until(PATIENCE, |observed| observed.finished()
                + observed.cancelled()
                >= 1)
            .await,
        "the app's stream was left open"
    );
    drop(send);
    setup
        .gatehouse
        .wait_for_line(&["configuration reloaded"])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_expire_open_calls_false_a_stream_outlives_its_token() {
    let mut setup = setup("  expire_open_calls: false\n").await;

    // 10 messages over 5 s; the token expires about 2 s in.
    let token = token_expiring_in(&setup.issuer, 2);
    let mut stream = setup
        .client
        .countdown(with_token(countdown(10, 500), &token))
        .await
        .unwrap()
        .into_inner();
    let (received, end) = drain(&mut stream).await;
    end.expect("the call was ended although expire_open_calls is false");
    assert_eq!(received, 10);
    assert_eq!(setup.app.observed().cancelled(), 0);
    // The token itself has expired: a new call with it is refused.
    let refused = setup
        .client
        .echo(with_token(EchoRequest::default(), &token))
        .await
        .expect_err("an expired token was admitted");
    assert_eq!(
        (refused.code(), reason(&refused).as_str()),
        (Code::Unauthenticated, "TOKEN_EXPIRED")
    );
}

/// A `Chat` call from a caller that advertises a zero window, so gatehouse can never send
/// it a byte, streaming 32 KiB requests steadily until its stream is refused.
struct ZeroWindowChat {
    response: h2::RecvStream,
    open_window: tokio::sync::oneshot::Sender<()>,
}

impl ZeroWindowChat {
    async fn open(gatehouse: &Gatehouse, credential: (&str, &str)) -> ZeroWindowChat {
        let tls = tls_connect(gatehouse.addr, Some(&Identity::gateway()))
            .await
            .unwrap();
        let (client, mut connection) = h2::client::Builder::new()
            .initial_window_size(0)
            .handshake::<_, Bytes>(tls)
            .await
            .unwrap();
        let (open_window, opened) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            tokio::select! {
                _ = &mut connection => return,
                _ = opened => {}
            }
            connection.set_initial_window_size(1 << 20).unwrap();
            let _ = connection.await;
        });
        let mut client = client.ready().await.unwrap();
        let request = http::Request::post("https://localhost/gatehouse.demo.v1.Demo/Chat")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header(credential.0, credential.1)
            .body(())
            .unwrap();
        let (response, mut body) = client.send_request(request, false).unwrap();
        let message = grpc_message(&EchoRequest {
            payload: vec![7; 32 * 1024],
            // Small replies: the app reads on long after the caller's window is full.
            reply_size: 1,
            ..Default::default()
        });
        tokio::spawn(async move {
            loop {
                body.reserve_capacity(message.len());
                match std::future::poll_fn(|cx| body.poll_capacity(cx)).await {
                    Some(Ok(room)) if room >= message.len() => {}
                    Some(Ok(_)) => continue,
                    _ => return,
                }
                if body.send_data(message.clone(), false).is_err() {
                    return;
                }
                // A steady stream, not a flood: the test is about time, not throughput.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        let response = tokio::time::timeout(PATIENCE, response)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(response.status(), 200);
        ZeroWindowChat {
            response: response.into_body(),
            open_window,
        }
    }

    /// Opens the caller's window and reads the answer to its end: the trailers.
    async fn read_to_the_end(mut self) -> http::HeaderMap {
        self.open_window.send(()).unwrap();
        let answer = &mut self.response;
        while let Some(chunk) = tokio::time::timeout(PATIENCE, answer.data()).await.unwrap() {
            let Ok(chunk) = chunk else { break };
            let _ = answer.flow_control().release_capacity(chunk.len());
        }
        tokio::time::timeout(PATIENCE, answer.trailers())
            .await
            .unwrap()
            .expect("the call ended without trailers")
            .expect("the call ended without trailers")
    }
}

/// Waits until the app has received over 1 MiB of `Chat` requests: the stream flows.
async fn until_chat_flows(app: &App) {
    assert!(
        app.observed()
            .wait_until(PATIENCE, |observed| observed.chat_bytes() > 1 << 20)
            .await,
        "the app never received the caller's stream"
    );
}

/// From `ended` on, past the grace a message in flight gets, the app's stream has been
/// reset and nothing more reaches it, though gatehouse could send the caller nothing.
async fn app_stops_receiving_after(app: &App, ended: std::time::Instant) {
    tokio::time::sleep_until((ended + END_GRACE + Duration::from_secs(1)).into()).await;
    app_saw_cancellations(app, 1).await;
    let after_end = app.observed().chat_bytes();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        app.observed().chat_bytes(),
        after_end,
        "the app went on receiving the stream of ended credentials"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_reading_nothing_cannot_keep_streaming_past_its_token() {
    let setup = setup("").await;
    let expires_in = 3;
    let token = token_expiring_in(&setup.issuer, expires_in);
    let expiry = std::time::Instant::now() + Duration::from_secs(expires_in);
    let bearer = format!("Bearer {token}");
    let chat = ZeroWindowChat::open(&setup.gatehouse, ("authorization", &bearer)).await;
    until_chat_flows(&setup.app).await;

    app_stops_receiving_after(&setup.app, expiry).await;
    let trailers = chat.read_to_the_end().await;
    assert_eq!(trailers["grpc-status"], "16");
    assert_eq!(trailers["grpc-message"], EXPIRED_MESSAGE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_reading_nothing_cannot_keep_streaming_past_its_keys_revocation() {
    let setup = setup("").await;
    let chat = ZeroWindowChat::open(&setup.gatehouse, ("x-api-key", STREAM_KEY)).await;
    until_chat_flows(&setup.app).await;

    write_keys_file(
        &setup.dir.path().join("keys.yaml"),
        &[("rotated", "rotated-key-0123456789")],
    );
    setup
        .gatehouse
        .wait_for_line(&["API keys revoked; their open calls end"])
        .await;
    let revoked = std::time::Instant::now();
    app_stops_receiving_after(&setup.app, revoked).await;
    let trailers = chat.read_to_the_end().await;
    assert_eq!(trailers["grpc-status"], "16");
    assert_eq!(trailers["grpc-message"], REVOKED_MESSAGE);
}
