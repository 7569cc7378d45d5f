//! HTTP/2 abuse from a raw client over mTLS, each while a well-behaved client keeps
//! getting answers and no connection to the app is lost. Every attack is bounded
//! in frames and time.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::pb::*;
use crate::support::*;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// HPACK for a POST to `path`: indexed :method and :scheme, literal :path and :authority.
fn request_block(path: &str) -> Vec<u8> {
    let mut block = vec![0x83, 0x87];
    for (index, value) in [(0x04u8, path), (0x01, "localhost")] {
        block.push(index);
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    block
}

/// An HPACK integer with a 7-bit prefix (the high bit of the first byte left clear).
fn hpack_length(mut value: usize) -> Vec<u8> {
    if value < 127 {
        return vec![value as u8];
    }
    let mut out = vec![0x7f];
    value -= 127;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
    out
}

/// The well-behaved side of every test: a normal client is answered, and gatehouse
/// still uses its first connection to the app.
async fn assert_unharmed(gatehouse: &Gatehouse, app: &App) {
    let mut good = client(gatehouse.addr).await;
    let reply = good
        .echo(EchoRequest {
            message: "still served".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(
        reply
            .expect("the good client was answered")
            .into_inner()
            .message,
        "still served"
    );
    assert_eq!(
        app.observed().connections_closed(),
        0,
        "a connection to the app was lost"
    );
}

async fn setup() -> (App, Gatehouse) {
    let app = App::start().await;
    let gatehouse = Gatehouse::start(&dev_config(app.addr));
    // Open the shared connection to the app before the attack.
    client(gatehouse.addr)
        .await
        .echo(EchoRequest::default())
        .await
        .unwrap();
    (app, gatehouse)
}

#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    None,
    ConnectionClosed,
    GoAway,
    StreamReset,
    AnsweredByGatehouse,
}

/// How the server answered stream 1.
async fn refusal<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Refusal {
    let mut buffer = vec![0u8; 64 * 1024];
    let mut seen = Vec::new();
    let read_all = async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return Refusal::ConnectionClosed,
                Ok(n) => seen.extend_from_slice(&buffer[..n]),
            }
            let mut at = 0;
            while at + 9 <= seen.len() {
                let length = u32::from_be_bytes([0, seen[at], seen[at + 1], seen[at + 2]]) as usize;
                let kind = seen[at + 3];
                let stream_id =
                    u32::from_be_bytes([seen[at + 5], seen[at + 6], seen[at + 7], seen[at + 8]])
                        & 0x7fff_ffff;
                match (kind, stream_id) {
                    (0x7, _) => return Refusal::GoAway,
                    (0x3, 1) => return Refusal::StreamReset,
                    (0x1, 1) => return Refusal::AnsweredByGatehouse,
                    _ => {}
                }
                at += 9 + length;
            }
        }
    };
    tokio::time::timeout(PATIENCE, read_all)
        .await
        .unwrap_or(Refusal::None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_is_cut_off_and_others_are_unharmed() {
    let (app, gatehouse) = setup().await;
    let tls = tls_connect(gatehouse.addr, Some(&Identity::gateway()))
        .await
        .unwrap();
    let (client, connection) = h2::client::handshake(tls).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut client = client;
    let mut sent = 0;
    for _ in 0..5_000 {
        let Ok(ready) = client.ready().await else {
            break;
        };
        client = ready;
        let request = http::Request::post("https://localhost/gatehouse.demo.v1.Demo/Wait")
            .header("content-type", "application/grpc")
            .body(())
            .unwrap();
        let Ok((_, mut stream)) = client.send_request(request, false) else {
            break;
        };
        stream.send_reset(h2::Reason::CANCEL);
        sent += 1;
    }
    assert!(sent > 0);
    eprintln!("rapid reset: {sent} streams opened and reset");
    // The reset-stream guard closes the attacking connection long before 5,000.
    assert!(sent < 5_000, "all {sent} resets were accepted");
    tokio::time::timeout(PATIENCE, connection)
        .await
        .expect("the attacking connection was closed")
        .unwrap()
        .ok();
    assert_unharmed(&gatehouse, &app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuation_flood_is_refused_without_buffering_it() {
    let (app, gatehouse) = setup().await;
    let before = peak_rss_kib(gatehouse.pid());
    let mut tls = tls_connect(gatehouse.addr, Some(&Identity::gateway()))
        .await
        .unwrap();
    tls.write_all(PREFACE).await.unwrap();
    tls.write_all(&h2_frame(0x4, 0, 0, &[])).await.unwrap();
    // One header whose value (8 MiB) arrives in CONTINUATION frames that never end.
    let mut block = request_block("/gatehouse.demo.v1.Demo/Echo");
    block.push(0x00);
    block.push(7);
    block.extend_from_slice(b"x-flood");
    block.extend(hpack_length(8 << 20));
    block.resize(16 * 1024, b'a');
    let flood = async {
        tls.write_all(&h2_frame(0x1, 0, 1, &block)).await?;
        let chunk = vec![b'a'; 16 * 1024];
        for _ in 0..512 {
            tls.write_all(&h2_frame(0x9, 0, 1, &chunk)).await?;
        }
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), flood).await;
    let refused = refusal(&mut tls).await;
    assert!(
        matches!(refused, Refusal::GoAway | Refusal::ConnectionClosed),
        "the flood was not cut off: {refused:?}"
    );
    let growth_mib = (peak_rss_kib(gatehouse.pid()) - before) / 1024;
    assert!(growth_mib < 16, "gatehouse grew by {growth_mib} MiB");
    assert_eq!(
        app.observed().calls(),
        1,
        "the flooding request reached the app"
    );
    assert_unharmed(&gatehouse, &app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_lists_over_the_limit_are_refused_and_far_over_it_close_the_connection() {
    let (app, gatehouse) = setup().await;
    for size in [20 * 1024, 1024 * 1024] {
        let mut tls = tls_connect(gatehouse.addr, Some(&Identity::gateway()))
            .await
            .unwrap();
        tls.write_all(PREFACE).await.unwrap();
        tls.write_all(&h2_frame(0x4, 0, 0, &[])).await.unwrap();
        let mut block = request_block("/gatehouse.demo.v1.Demo/Echo");
        block.push(0x00);
        block.push(5);
        block.extend_from_slice(b"x-big");
        block.extend(hpack_length(size));
        block.resize(block.len() + size, b'b');
        // HEADERS then CONTINUATION, 16 KiB each, the last with END_HEADERS.
        let chunks: Vec<&[u8]> = block.chunks(16 * 1024).collect();
        let mut frames = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            let kind = if i == 0 { 0x1 } else { 0x9 };
            let flags = if i == chunks.len() - 1 { 0x4 } else { 0 } | if i == 0 { 0x1 } else { 0 };
            frames.extend(h2_frame(kind, flags, 1, chunk));
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), tls.write_all(&frames)).await;
        // Refused: the stream reset or answered by gatehouse itself, or the connection
        // closed. Never the app.
        let refusal = refusal(&mut tls).await;
        eprintln!("{size}-byte header list: {refusal:?}");
        assert_ne!(
            refusal,
            Refusal::None,
            "a {size}-byte header list was not refused"
        );
        assert_eq!(
            app.observed().calls(),
            1,
            "a {size}-byte header list reached the app"
        );
    }
    assert_unharmed(&gatehouse, &app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_and_ping_floods_from_a_client_that_stops_reading_stay_bounded() {
    let (app, gatehouse) = setup().await;
    let before = peak_rss_kib(gatehouse.pid());
    let mut tls = tls_connect(gatehouse.addr, Some(&Identity::gateway()))
        .await
        .unwrap();
    tls.write_all(PREFACE).await.unwrap();
    let mut burst = Vec::new();
    for i in 0..1_000u32 {
        burst.extend(h2_frame(0x6, 0, 0, &u64::from(i).to_be_bytes()));
        burst.extend(h2_frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]));
    }
    // Never read: the server's answers back up and it must stop reading, not buffer.
    let flood = async {
        for _ in 0..200 {
            tls.write_all(&burst).await?;
        }
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), flood).await;
    let growth_mib = (peak_rss_kib(gatehouse.pid()) - before) / 1024;
    assert!(
        growth_mib < 32,
        "gatehouse grew by {growth_mib} MiB under a PING/SETTINGS flood"
    );
    assert_unharmed(&gatehouse, &app).await;
    drop(tls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_window_reader_back_pressures_the_app_without_growing_memory() {
    let (app, gatehouse) = setup().await;
    let before = peak_rss_kib(gatehouse.pid());
    let tls = tls_connect(gatehouse.addr, Some(&Identity::gateway()))
        .await
        .unwrap();
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake(tls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::post("https://localhost/gatehouse.demo.v1.Demo/Countdown")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut body) = client.send_request(request, false).unwrap();
    // 256 MiB asked for, none of it readable.
    body.send_data(
        grpc_message(&CountdownRequest {
            count: 4096,
            payload_size: 65536,
            ..Default::default()
        }),
        true,
    )
    .unwrap();
    let response = tokio::time::timeout(PATIENCE, response)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    // Wait until the app stops producing: a buffering proxy would by then hold all it read.
    app.until_countdowns_stall().await;
    let growth_mib = (peak_rss_kib(gatehouse.pid()) - before) / 1024;
    assert!(
        growth_mib < 16,
        "gatehouse grew by {growth_mib} MiB for a reader that reads nothing"
    );
    assert_eq!(
        app.observed().finished(),
        0,
        "the app was not back-pressured"
    );
    drop(response);
    drop(client);
    assert_unharmed(&gatehouse, &app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stream_faster_than_the_app_drains_is_flow_controlled() {
    let (app, gatehouse) = setup().await;
    let before = peak_rss_kib(gatehouse.pid());
    let mut client = client(gatehouse.addr).await;
    // 64 MiB offered at once to an app that reads a message every 2 ms.
    let messages = (0..256).map(|i| EchoRequest {
        message: format!("m{i}"),
        payload: vec![7; 256 * 1024],
        pause_millis: 2,
        ..Default::default()
    });
    let slow = tokio::spawn(async move { client.collect(tokio_stream::iter(messages)).await });
    // Others are served while the slow stream is in progress.
    assert_unharmed(&gatehouse, &app).await;
    let reply = tokio::time::timeout(PATIENCE, slow)
        .await
        .expect("the slow stream finished")
        .unwrap()
        .unwrap();
    assert_eq!(reply.into_inner().count, 256);
    let growth_mib = (peak_rss_kib(gatehouse.pid()) - before) / 1024;
    assert!(
        growth_mib < 16,
        "gatehouse grew by {growth_mib} MiB while 64 MiB passed through"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_small_messages_reach_a_slow_reader() {
    let (app, gatehouse) = setup().await;
    let mut client = client(gatehouse.addr).await;
    let request = CountdownRequest {
        count: 10_000,
        payload_size: 8,
        ..Default::default()
    };
    let mut stream = client.countdown(request).await.unwrap().into_inner();
    let mut received = 0u32;
    while let Some(reply) = stream.message().await.unwrap() {
        assert_eq!(reply.sequence, received);
        received += 1;
        if received.is_multiple_of(2_000) {
            // A slow reader: let the windows fill before reading on.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(received, 10_000);
    assert_unharmed(&gatehouse, &app).await;
}

/// A caller that starts calls and resets each once the app is working on it would have
/// gatehouse relay one reset to the app per call, forever. Past a budget (a burst of 200,
/// then 50 a second) its connection is closed instead: the app sees a bounded number of
/// resets however many the caller sends, and others are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_resetting_call_after_call_is_cut_off_before_the_app_sees_them_all() {
    let (app, gatehouse) = setup().await;
    let tls = tls_connect(gatehouse.addr, Some(&Identity::gateway()))
        .await
        .unwrap();
    let (client, connection) = h2::client::handshake(tls).await.unwrap();
    let connection = tokio::spawn(async move {
        let _ = connection.await;
    });
    let countdown = grpc_message(&CountdownRequest {
        count: 1_000,
        interval_millis: 1_000,
        ..Default::default()
    });
    let mut sent = 0;
    let mut client = Some(client);
    while sent < 2_000 {
        let Some(ready) = client.take() else { break };
        let Ok(mut ready) = ready.ready().await else {
            break;
        };
        let request = http::Request::post("https://localhost/gatehouse.demo.v1.Demo/Countdown")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let Ok((answer, mut body)) = ready.send_request(request, false) else {
            break;
        };
        if body.send_data(countdown.clone(), true).is_err() {
            break;
        }
        // Reset only once the app is at work on it: its answer's headers are here.
        match tokio::time::timeout(PATIENCE, answer).await {
            // Dropping the answer and the request's stream resets the call.
            Ok(Ok(response)) => drop((response, body)),
            _ => break,
        }
        sent += 1;
        client = Some(ready);
    }
    assert!(
        tokio::time::timeout(PATIENCE, connection).await.is_ok(),
        "gatehouse kept the connection open after {sent} abandoned calls"
    );
    assert!(
        sent < 400,
        "{sent} calls abandoned before the connection was closed"
    );
    let cancelled = app.observed().cancelled();
    assert!(
        (200..400).contains(&cancelled),
        "the app saw {cancelled} resets for {sent} abandoned calls"
    );
    gatehouse
        .wait_for_line(&["the caller abandoned calls faster"])
        .await;
    assert_unharmed(&gatehouse, &app).await;
}

/// A connection cannot outlast the certificate it was opened with: at its `notAfter`
/// gatehouse sends GOAWAY, and a call that still arrives is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_ends_when_its_client_certificate_does() {
    let (_app, gatehouse) = setup().await;
    let short_lived = broken::client_expiring_in(std::time::Duration::from_secs(3));
    let mut caller = DemoClient::new(
        channel(gatehouse.addr, Some(short_lived))
            .await
            .expect("a connection while the certificate is valid"),
    );
    caller
        .echo(EchoRequest::default())
        .await
        .expect("served while the certificate is valid");
    gatehouse
        .wait_for_line(&["connection closed: its client certificate has expired"])
        .await;
    let status = caller.echo(EchoRequest::default()).await.unwrap_err();
    assert_ne!(status.code(), tonic::Code::Ok, "{status:?}");
}

/// One client opening connection after connection to the admin port cannot hold them
/// all, or keep the kubelet's probe out: past 16 from one address they are closed at
/// accept, and /readyz answers another address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_to_the_admin_port_are_bounded_and_probes_still_answered() {
    let app = App::start().await;
    let gatehouse = Gatehouse::start(&config_with_admin(app.addr));
    let admin = admin(&gatehouse);
    let mut idle = Vec::new();
    for _ in 0..100 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        idle.push(socket.connect(admin).await.unwrap());
    }
    // Read what each got: the held ones nothing yet, the others an immediate close.
    let mut closed = 0;
    for stream in &mut idle {
        let mut byte = [0u8; 1];
        if let Ok(Ok(0)) =
            tokio::time::timeout(Duration::from_millis(200), stream.read(&mut byte)).await
        {
            closed += 1;
        }
    }
    assert_eq!(closed, 84, "16 of the 100 idle connections held");
    let (status, body) = get(admin, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let scrape = scrape_metrics(&gatehouse).await;
    assert!(
        scrape.contains(r#"gatehouse_limit_refusals_total{limit="admin_connections"} 84"#),
        "{scrape}"
    );
}
