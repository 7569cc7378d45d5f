//! When the app is down, dies, is slow or loses its caller, the caller gets the right
//! gRPC status at once and the app's stream is cancelled.

use std::time::Duration;

use tonic::Code;

use crate::support::pb::*;
use crate::support::{self, *};

/// Sends `grpc-timeout` as plain metadata; with [`bare_client`] no client timer races
/// gatehouse's.
fn only_gatehouse_enforces<T>(request: &mut tonic::Request<T>, timeout: &'static str) {
    request.metadata_mut().insert(
        "grpc-timeout",
        tonic::metadata::MetadataValue::from_static(timeout),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_down_is_unavailable_at_once_and_app_back_is_served_without_restart() {
    let app_addr = free_port().await;
    let gatehouse = Gatehouse::start(&dev_config(app_addr));
    let mut client = client(gatehouse.addr).await;

    // The caller's deadline is far away: UNAVAILABLE (not DEADLINE_EXCEEDED) shows that
    // gatehouse answered at once instead of hanging.
    let mut request = tonic::Request::new(EchoRequest::default());
    request.set_timeout(Duration::from_secs(60));
    let status = client.echo(request).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("unreachable"), "{status:?}");
    let info = error_info(&status);
    assert_eq!(info.reason, "APP_UNAVAILABLE");
    assert_eq!(info.metadata["method"], "/gatehouse.demo.v1.Demo/Echo");

    let app = App::start_on(app_addr, Default::default()).await;
    let reply = client
        .echo(EchoRequest {
            message: "back".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(reply.into_inner().message, "back");

    // And again after the app restarts while gatehouse holds a connection to it.
    app.kill().await;
    let status = client.echo(EchoRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(reason(&status), "APP_UNAVAILABLE");
    let _app = App::start_on(app_addr, Default::default()).await;
    let reply = client
        .echo(EchoRequest {
            message: "back again".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(reply.into_inner().message, "back again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_dying_mid_stream_ends_the_call_with_an_error_not_ok() {
    let app = App::start().await;
    let gatehouse = Gatehouse::start(&dev_config(app.addr));
    let mut client = client(gatehouse.addr).await;
    let request = CountdownRequest {
        count: 10_000,
        interval_millis: 5,
        ..Default::default()
    };
    let mut stream = client.countdown(request).await.unwrap().into_inner();
    for _ in 0..3 {
        stream.message().await.unwrap().unwrap();
    }
    app.kill().await;
    let ended = loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended OK although the app died"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
    // Written into the trailers after the app's messages, with the same details.
    assert_eq!(reason(&ended), "APP_UNAVAILABLE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_timeout_before_the_app_answers_is_deadline_exceeded_and_cancels_the_app() {
    let app = App::start().await;
    let gatehouse = Gatehouse::start(&dev_config(app.addr));
    let mut client = bare_client(gatehouse.addr).await;
    let mut request = tonic::Request::new(WaitRequest { millis: 30_000 });
    only_gatehouse_enforces(&mut request, "300m");
    let status = client.wait(request).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    // The demo app does not enforce deadlines itself: this message is gatehouse's.
    assert!(
        status.message().contains("grpc-timeout ran out"),
        "{status:?}"
    );
    assert_eq!(reason(&status), "DEADLINE");
    assert!(
        app.observed()
            .wait_until(PATIENCE, |seen| seen.cancelled() >= 1)
            .await,
        "the app never saw its call cancelled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_timeout_during_a_stream_ends_it_with_deadline_exceeded_and_cancels_the_app() {
    let app = App::start().await;
    let gatehouse = Gatehouse::start(&dev_config(app.addr));
    let mut client = bare_client(gatehouse.addr).await;
    let mut request = tonic::Request::new(CountdownRequest {
        count: 1000,
        interval_millis: 50,
        ..Default::default()
    });
    only_gatehouse_enforces(&mut request, "400m");
    let mut stream = client.countdown(request).await.unwrap().into_inner();
    let mut received = 0;
    let status = loop {
        match stream.message().await {
            Ok(Some(_)) => received += 1,
            Ok(None) => panic!("the stream ended OK past its deadline"),
            Err(status) => break status,
        }
    };
    assert!(received >= 1, "messages before the deadline were forwarded");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status
            .message()
            .contains("grpc-timeout ran out while the app was answering"),
        "{status:?}"
    );
    assert_eq!(reason(&status), "DEADLINE");
    assert!(
        app.observed()
            .wait_until(PATIENCE, |seen| seen.cancelled() >= 1)
            .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_cancelling_mid_stream_cancels_the_apps_stream() {
    let app = App::start().await;
    let gatehouse = Gatehouse::start(&dev_config(app.addr));
    let mut client = client(gatehouse.addr).await;
    let request = CountdownRequest {
        count: 100_000,
        interval_millis: 10,
        ..Default::default()
    };
    let mut stream = client.countdown(request).await.unwrap().into_inner();
    stream.message().await.unwrap().unwrap();
    stream.message().await.unwrap().unwrap();
    assert_eq!(app.observed().cancelled(), 0);
    drop(stream); // RST_STREAM(CANCEL) to gatehouse
    assert!(
        app.observed()
            .wait_until(PATIENCE, |seen| seen.cancelled() >= 1)
            .await,
        "the app's stream was not cancelled"
    );
    // The shared connection to the app survives a cancelled stream.
    let reply = client
        .echo(EchoRequest {
            message: "after".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(reply.into_inner().message, "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_rolling_its_connection_with_goaway_loses_no_call() {
    let (goaway, _) = tokio::sync::broadcast::channel(1);
    let serving = support::demo::Serving {
        goaway: Some(goaway.clone()),
        ..Default::default()
    };
    let app = App::start_serving("127.0.0.1:0".parse().unwrap(), Default::default(), serving).await;
    let gatehouse = Gatehouse::start(&dev_config(app.addr));
    let client = client(gatehouse.addr).await;
    let call = |millis| {
        let mut client = client.clone();
        tokio::spawn(async move { client.wait(WaitRequest { millis }).await })
    };
    let in_flight: Vec<_> = (0..5).map(|_| call(500)).collect();
    assert!(
        app.observed()
            .wait_until(PATIENCE, |seen| seen.waits_started() >= 5)
            .await
    );
    goaway.send(()).unwrap();
    let after: Vec<_> = (0..5).map(|_| call(10)).collect();
    for call in in_flight.into_iter().chain(after) {
        call.await.unwrap().expect("no call was lost to the GOAWAY");
    }
    assert_eq!(
        app.observed().connections(),
        2,
        "new calls went over a new connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_beyond_the_apps_stream_limit_queue_instead_of_failing() {
    let serving = support::demo::Serving {
        max_concurrent_streams: Some(2),
        ..Default::default()
    };
    let app = App::start_serving("127.0.0.1:0".parse().unwrap(), Default::default(), serving).await;
    // One connection, so the calls beyond its limit queue on it rather than open more.
    let config = DevConfig::new(app.addr)
        .limit("upstream_connections", "1")
        .limit("upstream_queue_timeout", "10s")
        .yaml();
    let gatehouse = Gatehouse::start(&config);
    let client = client(gatehouse.addr).await;
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move { client.wait(WaitRequest { millis: 100 }).await })
        })
        .collect();
    for call in calls {
        call.await
            .unwrap()
            .expect("a call beyond the app's limit failed");
    }
    assert_eq!(app.observed().connections(), 1);
}

/// An app whose first connection refuses what it is sent without processing it: its
/// first stream with RST_STREAM(REFUSED_STREAM), its second with GOAWAY (last stream id
/// 0, NO_ERROR). Later connections are passed through to `app`. Returns the address and
/// the count of streams the refusing connection saw.
async fn app_refusing_its_first_connection(
    app: std::net::SocketAddr,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicU64>,
) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let refused = std::sync::Arc::new(AtomicU64::new(0));
    let seen = refused.clone();
    tokio::spawn(async move {
        let (mut first, _) = listener.accept().await.unwrap();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut upstream = tokio::net::TcpStream::connect(app).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut tcp, &mut upstream).await;
                });
            }
        });
        let mut preface = [0u8; 24];
        first.read_exact(&mut preface).await.unwrap();
        first.write_all(&h2_frame(0x4, 0, 0, &[])).await.unwrap();
        loop {
            let mut head = [0u8; 9];
            if first.read_exact(&mut head).await.is_err() {
                return;
            }
            let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let (kind, flags) = (head[3], head[4]);
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let mut payload = vec![0u8; length];
            first.read_exact(&mut payload).await.unwrap();
            let answer = match (kind, flags & 0x1) {
                // SETTINGS (not an ACK): acknowledge. PING (not an ACK): answer.
                (0x4, 0) => h2_frame(0x4, 0x1, 0, &[]),
                (0x6, 0) => h2_frame(0x6, 0x1, 0, &payload),
                (0x1, _) => match seen.fetch_add(1, Ordering::SeqCst) {
                    // RST_STREAM REFUSED_STREAM (7).
                    0 => h2_frame(0x3, 0, stream, &7u32.to_be_bytes()),
                    // GOAWAY, last stream id 0, NO_ERROR: nothing was processed.
                    _ => h2_frame(0x7, 0, 0, &[0; 8]),
                },
                _ => continue,
            };
            if first.write_all(&answer).await.is_err() {
                return;
            }
        }
    });
    (addr, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_the_app_refused_unprocessed_are_sent_again_and_answered() {
    let app = App::start().await;
    let (refusing, refused) = app_refusing_its_first_connection(app.addr).await;
    let gatehouse = Gatehouse::start(&dev_config(refusing));
    let mut client = client(gatehouse.addr).await;
    let reply = client
        .echo(EchoRequest {
            message: "sent three times".into(),
            payload: vec![b'p'; 1000],
            ..Default::default()
        })
        .await
        .expect("a call the app did not process was lost");
    let reply = reply.into_inner();
    assert_eq!(reply.message, "sent three times");
    assert_eq!(
        reply.payload.len(),
        1000,
        "the request body was sent again whole"
    );
    assert_eq!(
        refused.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "refused once with REFUSED_STREAM, once with GOAWAY"
    );
    assert_eq!(app.observed().calls(), 1, "the app processed the call once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_resetting_the_stream_is_app_reset_stream_with_the_code_grpc_maps_it_to() {
    // An app that resets every stream it is sent with INTERNAL_ERROR.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut connection) = h2::server::handshake(tcp).await else {
                    return;
                };
                while let Some(Ok((_request, mut respond))) = connection.accept().await {
                    respond.send_reset(h2::Reason::INTERNAL_ERROR);
                }
            });
        }
    });
    let gatehouse = Gatehouse::start(&dev_config(addr));
    let mut client = client(gatehouse.addr).await;
    let status = client.echo(EchoRequest::default()).await.unwrap_err();
    // gRPC's HTTP/2 mapping: INTERNAL_ERROR is INTERNAL, not the reason's usual UNAVAILABLE.
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(
        status.message().contains("the app reset the stream"),
        "{status:?}"
    );
    let info = error_info(&status);
    assert_eq!(info.reason, "APP_RESET_STREAM");
    assert_eq!(info.metadata["method"], "/gatehouse.demo.v1.Demo/Echo");
}
