//! Calls of all four kinds pass through gatehouse to the app and back unchanged.

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::metadata::MetadataValue;

use crate::support::pb::*;
use crate::support::*;

async fn setup() -> (App, Gatehouse) {
    let app = App::start().await;
    let gatehouse = Gatehouse::start(&dev_config(app.addr));
    (app, gatehouse)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_unary_calls() {
    let (_app, gatehouse) = setup().await;
    let mut client = client(gatehouse.addr).await;
    let reply = client
        .echo(EchoRequest {
            message: "hello".into(),
            payload: b"abc".to_vec(),
            reply_size: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.message, "hello");
    assert_eq!(reply.payload, b"abc");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_server_streams_long_and_empty() {
    let (_app, gatehouse) = setup().await;
    let mut client = client(gatehouse.addr).await;
    let request = CountdownRequest {
        count: 500,
        payload_size: 100,
        ..Default::default()
    };
    let mut stream = client.countdown(request).await.unwrap().into_inner();
    let mut sequences = Vec::new();
    while let Some(reply) = stream.message().await.unwrap() {
        assert_eq!(reply.payload.len(), 100);
        sequences.push(reply.sequence);
    }
    assert_eq!(sequences, (0..500).collect::<Vec<_>>());

    let mut empty = client
        .countdown(CountdownRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(empty.message().await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_client_streams_long_and_empty() {
    let (_app, gatehouse) = setup().await;
    let mut client = client(gatehouse.addr).await;
    let messages: Vec<EchoRequest> = (0..400)
        .map(|i| EchoRequest {
            message: format!("m{i}"),
            payload: vec![7; 50],
            reply_size: 0,
            ..Default::default()
        })
        .collect();
    let reply = client
        .collect(tokio_stream::iter(messages))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            reply.count,
            reply.payload_bytes,
            reply.last_message.as_str()
        ),
        (400, 20_000, "m399")
    );

    let reply = client
        .collect(tokio_stream::iter(Vec::<EchoRequest>::new()))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((reply.count, reply.payload_bytes), (0, 0));
}

/// Each reply must arrive before the next request is written: proof that neither
/// direction is buffered until the end of the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_bidirectional_streams_message_by_message() {
    let (_app, gatehouse) = setup().await;
    let mut client = client(gatehouse.addr).await;
    let (send, outbound) = mpsc::channel(1);
    let mut replies = client
        .chat(ReceiverStream::new(outbound))
        .await
        .unwrap()
        .into_inner();
    for i in 0..300u32 {
        send.send(EchoRequest {
            message: format!("ping {i}"),
            ..Default::default()
        })
        .await
        .unwrap();
        let reply = replies
            .message()
            .await
            .unwrap()
            .expect("a reply per request");
        assert_eq!((reply.message, reply.sequence), (format!("ping {i}"), i));
    }
    drop(send);
    assert!(replies.message().await.unwrap().is_none());

    let (send, outbound) = mpsc::channel::<EchoRequest>(1);
    drop(send);
    let mut empty = client
        .chat(ReceiverStream::new(outbound))
        .await
        .unwrap()
        .into_inner();
    assert!(empty.message().await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_one_mebibyte_messages_both_ways() {
    let (_app, gatehouse) = setup().await;
    let mut client = client(gatehouse.addr).await;
    let mebibyte = 1 << 20;
    let payload: Vec<u8> = (0..mebibyte).map(|i| (i % 251) as u8).collect();
    let reply = client
        .echo(EchoRequest {
            message: "big".into(),
            payload: payload.clone(),
            reply_size: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.payload, payload, "1 MiB request echoed byte for byte");

    let reply = client
        .echo(EchoRequest {
            message: "big reply".into(),
            payload: vec![],
            reply_size: mebibyte as u32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.payload.len(), mebibyte);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_the_apps_status_and_message_through_unchanged() {
    let (_app, gatehouse) = setup().await;
    let mut client = client(gatehouse.addr).await;
    let message = "nicht gefunden: 100% sicher, %41 stays, ünïcödé ✓ \"quoted\"";
    let status = client
        .fail(FailRequest {
            code: 5,
            message: message.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), message);
    assert_eq!(status.metadata().get("x-demo-trailer").unwrap(), "fail");

    for code in [3, 7, 8, 13, 14, 16] {
        let status = client
            .fail(FailRequest {
                code,
                message: format!("code {code}"),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code() as i32, code);
        assert_eq!(status.message(), format!("code {code}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_custom_metadata_and_trailers_both_ways() {
    let (_app, gatehouse) = setup().await;
    let mut client = client(gatehouse.addr).await;

    let mut request = tonic::Request::new(InspectRequest {});
    request
        .metadata_mut()
        .insert("x-custom", MetadataValue::from_static("hello"));
    request
        .metadata_mut()
        .insert_bin("x-blob-bin", MetadataValue::from_bytes(&[0, 1, 2, 255]));
    let seen = client.inspect(request).await.unwrap().into_inner().metadata;
    let value = |key: &str| {
        seen.iter()
            .find(|entry| entry.key == key)
            .map(|entry| entry.value.clone())
    };
    assert_eq!(value("x-custom").as_deref(), Some("hello"));
    assert_eq!(value("x-blob-bin").as_deref(), Some("AAEC/w"));
    assert_eq!(value("te").as_deref(), Some("trailers"));
    // No auth section: the certificate is the only credential, and the app sees it.
    assert_eq!(value("x-auth-method").as_deref(), Some("mtls"));
    let client_cert = value("x-forwarded-client-cert").unwrap();
    assert!(client_cert.starts_with("Hash="), "{client_cert}");
    assert!(
        client_cert.contains(";URI=spiffe://dev.gatehouse/ns/default/sa/gateway"),
        "{client_cert}"
    );

    let mut request = tonic::Request::new(EchoRequest {
        message: "m".into(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("x-echo-colour", MetadataValue::from_static("blue"));
    let response = client.echo(request).await.unwrap();
    assert_eq!(response.metadata().get("x-echo-colour").unwrap(), "blue");

    // A status after messages arrives in real trailers, with the app's trailer metadata.
    let request = CountdownRequest {
        count: 3,
        end_code: 9,
        end_message: "after three".into(),
        ..Default::default()
    };
    let mut stream = client.countdown(request).await.unwrap().into_inner();
    for _ in 0..3 {
        stream.message().await.unwrap().unwrap();
    }
    let status = stream.message().await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::FailedPrecondition, "after three")
    );
    assert_eq!(
        status.metadata().get("x-demo-trailer").unwrap(),
        "countdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_method_gets_the_apps_unimplemented() {
    let (_app, gatehouse) = setup().await;
    let channel = channel(gatehouse.addr, Some(Identity::gateway()))
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<EchoRequest, EchoReply>::default();
    let path = http::uri::PathAndQuery::from_static("/gatehouse.demo.v1.Demo/NoSuchMethod");
    let status = grpc
        .unary(tonic::Request::new(EchoRequest::default()), path, codec)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_reaches_the_app() {
    let (_app, gatehouse) = setup().await;
    let channel = channel(gatehouse.addr, Some(Identity::gateway()))
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let reply = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        reply.status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
}

/// A 64 MiB response read by a caller that stops reading for a while: with streaming
/// under flow control, gatehouse holds a few windows' worth, never the whole stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_without_buffering_when_the_caller_reads_slowly() {
    let (app, gatehouse) = setup().await;
    let mut client = client(gatehouse.addr).await;
    client.echo(EchoRequest::default()).await.unwrap();
    let before = peak_rss_kib(gatehouse.pid());

    let request = CountdownRequest {
        count: 256,
        payload_size: 256 * 1024,
        ..Default::default()
    };
    let mut stream = client.countdown(request).await.unwrap().into_inner();
    stream.message().await.unwrap().unwrap();
    // Stall until the app stops producing: a buffering proxy would by then have read the
    // app's whole answer into memory.
    let produced = app.until_countdowns_stall().await;
    eprintln!(
        "the app produced {} MiB before flow control held it",
        produced >> 20
    );
    let mut total = 1;
    while let Some(reply) = stream.message().await.unwrap() {
        assert_eq!(reply.payload.len(), 256 * 1024);
        total += 1;
    }
    assert_eq!(total, 256);
    let growth_mib = (peak_rss_kib(gatehouse.pid()) - before) / 1024;
    eprintln!("peak RSS growth: {growth_mib} MiB");
    assert!(
        growth_mib < 16,
        "gatehouse grew by {growth_mib} MiB while 64 MiB passed through"
    );
}

/// A pod with a CPU limit of one core: gatehouse runs everything on one thread (no
/// worker thread to hand wake-ups to), and every kind of call still goes through,
/// many of them at once on one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_on_one_thread_when_it_may_use_one_cpu() {
    let app = App::start().await;
    let gatehouse = Gatehouse::start_on_one_cpu(&dev_config(app.addr));
    let client = client(gatehouse.addr).await;
    let calls = (0..64u32).map(|i| {
        let mut client = client.clone();
        async move {
            let reply = client
                .echo(EchoRequest {
                    message: format!("call {i}"),
                    reply_size: 1024,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                (reply.message, reply.payload.len()),
                (format!("call {i}"), 1024)
            );
        }
    });
    futures_util::future::join_all(calls).await;
    let mut stream = client
        .clone()
        .countdown(CountdownRequest {
            count: 200,
            payload_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut received = 0;
    while stream.message().await.unwrap().is_some() {
        received += 1;
    }
    assert_eq!(received, 200);
    let threads = std::fs::read_dir(format!("/proc/{}/task", gatehouse.pid()))
        .unwrap()
        .count();
    assert_eq!(threads, 1, "gatehouse's threads on one CPU");
}
