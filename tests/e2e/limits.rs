//! What one caller may take from gatehouse: connection slots (silent connections, one
//! client's share), calls per identity, and memory. Each test first proves the caller
//! took what it could, then that everyone else is still served.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};
use tonic::transport::Endpoint;

use crate::support::pb::*;
use crate::support::*;

/// Reads until gatehouse closes the connection (bounded), discarding what it sent (its
/// own SETTINGS, TLS session tickets).
async fn closed_by_gatehouse<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) {
    let mut buffer = [0u8; 1024];
    let closed = tokio::time::timeout(PATIENCE, async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "gatehouse kept the connection open");
}

/// A TCP connection to `to` from the loopback address `from`.
async fn connect_from(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from.parse().unwrap(), 0))?;
    socket.connect(to).await
}

/// An Echo over a plaintext HTTP/2 connection.
async fn h2c_echo(addr: SocketAddr) -> Result<String, String> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .map_err(|error| error.to_string())?;
    DemoClient::new(channel)
        .echo(EchoRequest {
            message: "served".into(),
            ..Default::default()
        })
        .await
        .map(|reply| reply.into_inner().message)
        .map_err(|status| status.to_string())
}

/// An Echo over mTLS with the development gateway identity.
async fn mtls_echo(addr: SocketAddr) -> Result<String, String> {
    let channel = channel(addr, Some(Identity::gateway()))
        .await
        .map_err(|error| error.to_string())?;
    DemoClient::new(channel)
        .echo(EchoRequest {
            message: "served".into(),
            ..Default::default()
        })
        .await
        .map(|reply| reply.into_inner().message)
        .map_err(|status| status.to_string())
}

fn h2c_config(app: SocketAddr, limits: &[(&str, &str)]) -> String {
    format!(
        "listen: {{ address: 127.0.0.1:0 }}
tls: {{ enabled: false }}
upstream: {{ address: {app} }}
telemetry: {{ log_level: 'info,gatehouse=debug', admin_address: 127.0.0.1:0 }}
limits: {}
",
        flow_map(limits)
    )
}

fn optional_tls_config(app: SocketAddr, limits: &[(&str, &str)]) -> String {
    DevConfig::new(app)
        .client_auth("optional")
        .admin()
        .only_limits(limits)
        .yaml()
}

const SILENT_LIMITS: &[(&str, &str)] = &[
    ("max_connections", "3"),
    ("max_connections_per_client", "3"),
    ("handshake_timeout", "2s"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_silent_after_tls_hold_their_slots_only_until_the_handshake_timeout() {
    let app = App::start().await;
    let gatehouse = Gatehouse::start(&optional_tls_config(app.addr, SILENT_LIMITS));
    // No certificate needed: TLS completes, then not a byte of HTTP/2.
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(
            tls_connect(gatehouse.addr, None)
                .await
                .expect("TLS without a client certificate"),
        );
    }
    until_metric(&gatehouse, "gatehouse_connections", 3.0).await;
    let mut refused = TcpStream::connect(gatehouse.addr).await.unwrap();
    closed_by_gatehouse(&mut refused).await;
    let out = mtls_echo(gatehouse.addr).await;
    assert!(out.is_err(), "a caller got in while every slot was held");

    for stream in &mut silent {
        closed_by_gatehouse(stream).await;
    }
    gatehouse
        .wait_for_line(&["HTTP/2 handshake failed", "reason=no_http2_preface"])
        .await;
    assert_eq!(mtls_echo(gatehouse.addr).await.as_deref(), Ok("served"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_h2c_connections_hold_their_slots_only_until_the_handshake_timeout() {
    let app = App::start().await;
    let gatehouse = Gatehouse::start(&h2c_config(app.addr, SILENT_LIMITS));
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(TcpStream::connect(gatehouse.addr).await.unwrap());
    }
    until_metric(&gatehouse, "gatehouse_connections", 3.0).await;
    let mut refused = TcpStream::connect(gatehouse.addr).await.unwrap();
    closed_by_gatehouse(&mut refused).await;

    for stream in &mut silent {
        closed_by_gatehouse(stream).await;
    }
    gatehouse
        .wait_for_line(&["HTTP/2 handshake failed", "reason=no_http2_preface"])
        .await;
    assert_eq!(h2c_echo(gatehouse.addr).await.as_deref(), Ok("served"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_greets_is_dropped_by_the_drain_not_kept() {
    let app = App::start().await;
    let config = h2c_config(
        app.addr,
        &[
            ("handshake_timeout", "1h"),
            ("drain_timeout", "1h"),
            ("drain_delay", "0s"),
        ],
    );
    let mut gatehouse = Gatehouse::start(&config);
    let mut silent = TcpStream::connect(gatehouse.addr).await.unwrap();
    until_metric(&gatehouse, "gatehouse_connections", 1.0).await;
    gatehouse.signal("TERM");
    closed_by_gatehouse(&mut silent).await;
    let exit = tokio::task::spawn_blocking(move || gatehouse.wait_exit())
        .await
        .unwrap();
    assert_eq!(
        exit.code(),
        Some(0),
        "a drain held up by a silent connection"
    );
}

/// An h2c channel from the loopback address `from`, its HTTP/2 handshake done.
async fn h2c_channel_from(
    from: &'static str,
    to: SocketAddr,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    Endpoint::from_shared(format!("http://{to}"))
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| async move {
            connect_from(from, to)
                .await
                .map(hyper_util::rt::TokioIo::new)
        }))
        .await
}

/// An mTLS channel from the loopback address `from` with `identity`.
async fn mtls_channel_from(
    from: &'static str,
    to: SocketAddr,
    identity: &'static str,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    Endpoint::from_shared(format!("http://{to}"))
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| async move {
            let tcp = connect_from(from, to).await?;
            let connector =
                tokio_rustls::TlsConnector::from(client_tls(Some(&Identity::dev(identity))));
            let server = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            connector
                .connect(server, tcp)
                .await
                .map(hyper_util::rt::TokioIo::new)
        }))
        .await
}

async fn echo_on(channel: tonic::transport::Channel) -> Result<String, tonic::Status> {
    DemoClient::new(channel)
        .echo(EchoRequest {
            message: "served".into(),
            ..Default::default()
        })
        .await
        .map(|reply| reply.into_inner().message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_address_over_its_share_is_refused_while_another_connects() {
    let app = App::start().await;
    let limits = &[
        ("max_connections", "10"),
        ("max_connections_per_client", "2"),
    ];
    let gatehouse = Gatehouse::start(&h2c_config(app.addr, limits));
    let mut held = Vec::new();
    for _ in 0..2 {
        let channel = h2c_channel_from("127.0.0.2", gatehouse.addr)
            .await
            .expect("within its share");
        echo_on(channel.clone()).await.expect("served");
        held.push(channel);
    }
    let mut third = connect_from("127.0.0.2", gatehouse.addr).await.unwrap();
    closed_by_gatehouse(&mut third).await;
    let scrape = scrape_metrics(&gatehouse).await;
    assert_eq!(
        sample(
            &scrape,
            r#"gatehouse_limit_refusals_total{limit="max_connections_per_client"}"#
        ),
        Some(1.0),
        "{scrape}"
    );

    let other = h2c_channel_from("127.0.0.3", gatehouse.addr)
        .await
        .expect("another address connects");
    let served = async {
        assert_eq!(echo_on(other.clone()).await.unwrap(), "served");
        let chunks = (0..4).map(|_| EchoRequest {
            payload: vec![7; 64 * 1024],
            ..Default::default()
        });
        let reply = DemoClient::new(other)
            .collect(tokio_stream::iter(chunks))
            .await
            .unwrap();
        assert_eq!(reply.into_inner().count, 4, "a 256 KiB client stream");
    };
    tokio::time::timeout(Duration::from_secs(3), served)
        .await
        .expect("another address served within 3 s");
    // The held connections still work: the refusal touched only the one over the cap.
    for channel in held.drain(..) {
        assert_eq!(echo_on(channel).await.unwrap(), "served");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_certificate_over_its_share_is_refused_from_any_address() {
    let app = App::start().await;
    let limits = &[
        ("max_connections", "10"),
        ("max_connections_per_client", "2"),
    ];
    let gatehouse = Gatehouse::start(&optional_tls_config(app.addr, limits));
    let mut held = Vec::new();
    for from in ["127.0.0.2", "127.0.0.3"] {
        let channel = mtls_channel_from(from, gatehouse.addr, "client-gateway")
            .await
            .expect("within its share");
        echo_on(channel.clone()).await.expect("served");
        held.push(channel);
    }
    // A third address, the same certificate: TLS completes, then the connection is closed.
    let refused = match mtls_channel_from("127.0.0.4", gatehouse.addr, "client-gateway").await {
        Err(_) => true,
        Ok(channel) => echo_on(channel).await.is_err(),
    };
    assert!(
        refused,
        "a third connection with the same certificate was served"
    );
    gatehouse
        .wait_for_line(&["max_connections_per_client reached for its certificate"])
        .await;
    let other = mtls_channel_from("127.0.0.4", gatehouse.addr, "client-compliance-scanner")
        .await
        .expect("another certificate connects");
    assert_eq!(echo_on(other).await.unwrap(), "served");
}

const KEY_A: &str = "limits-key-a-0123456789abcdef";
const KEY_B: &str = "limits-key-b-0123456789abcdef";

/// gatehouse with two API keys, `a` and `b`, and the admin port.
fn keyed_config(app: SocketAddr, per_identity: &str) -> String {
    DevConfig::new(app)
        .admin()
        .only_limits(&[("per_identity", per_identity)])
        .yaml()
        + &format!(
            "auth:\n  api_keys:\n    keys:\n      - {{ name: a, sha256: \"{}\" }}\n      - {{ name: b, sha256: \"{}\" }}\n",
            hash(KEY_A),
            hash(KEY_B)
        )
}

async fn echo_as(
    client: &mut DemoClient<tonic::transport::Channel>,
    key: &str,
) -> Result<(), tonic::Status> {
    client
        .echo(with_key(EchoRequest::default(), key))
        .await
        .map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_over_its_open_calls_is_refused_while_another_is_served() {
    let app = App::start().await;
    let config = keyed_config(app.addr, "{ max_concurrent_calls: 2 }");
    let gatehouse = Gatehouse::start(&config);
    let mut client = client(gatehouse.addr).await;
    // Identity a holds both of its slots with calls the app keeps open.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut client = client.clone();
        held.push(tokio::spawn(async move {
            client
                .wait(with_key(WaitRequest { millis: 600_000 }, KEY_A))
                .await
        }));
    }
    assert!(
        app.observed()
            .wait_until(PATIENCE, |observed| observed.waits_started() == 2)
            .await,
        "identity a's calls never reached the app"
    );
    let refused = echo_as(&mut client, KEY_A).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    let info = error_info(&refused);
    assert_eq!(info.reason, "CONCURRENCY_LIMIT");
    assert_eq!(info.metadata["limit"], "max_concurrent_calls");
    assert!(
        refused.message().contains("CONCURRENCY_LIMIT")
            && refused
                .message()
                .contains("limits.per_identity.max_concurrent_calls"),
        "{}",
        refused.message()
    );
    // Same connection, another identity: served at once.
    tokio::time::timeout(Duration::from_secs(3), echo_as(&mut client, KEY_B))
        .await
        .expect("identity b answered within 3 s")
        .expect("identity b served");
    let scrape = scrape_metrics(&gatehouse).await;
    assert_eq!(
        sample(
            &scrape,
            r#"gatehouse_limit_refusals_total{limit="max_concurrent_calls"}"#
        ),
        Some(1.0),
        "{scrape}"
    );
    gatehouse
        .wait_for_line(&["call refused: per-identity limit", "identity=api_key:a"])
        .await;

    // Its calls ended, identity a is served again.
    for call in held {
        call.abort();
    }
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while echo_as(&mut client, KEY_A).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "identity a's slots never came back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_over_its_call_rate_is_refused_while_another_is_served() {
    let app = App::start().await;
    let config = keyed_config(app.addr, "{ calls_per_second: 3 }");
    let gatehouse = Gatehouse::start(&config);
    let mut client = client(gatehouse.addr).await;
    let mut refused = None;
    for _ in 0..50 {
        if let Err(status) = echo_as(&mut client, KEY_A).await {
            refused = Some(status);
            break;
        }
    }
    let refused = refused.expect("50 calls in a row never hit 3 calls a second");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    let info = error_info(&refused);
    assert_eq!(info.reason, "RATE_LIMITED");
    assert_eq!(info.metadata["limit"], "calls_per_second");
    assert!(
        refused.message().contains("RATE_LIMITED"),
        "{}",
        refused.message()
    );
    echo_as(&mut client, KEY_B)
        .await
        .expect("identity b served");
    let scrape = scrape_metrics(&gatehouse).await;
    assert!(
        sample(
            &scrape,
            r#"gatehouse_limit_refusals_total{limit="calls_per_second"}"#
        )
        .is_some_and(|count| count >= 1.0),
        "{scrape}"
    );
}

/// An app that takes every call and never reads a byte of it: it advertises a stream
/// window of 0, so everything a caller pushes stays in gatehouse. Counts the calls.
async fn start_app_that_never_reads() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let calls = counted.clone();
            tokio::spawn(async move {
                let Ok(mut connection) = h2::server::Builder::new()
                    .initial_window_size(0)
                    .handshake::<_, bytes::Bytes>(tcp)
                    .await
                else {
                    return;
                };
                let mut held = Vec::new();
                while let Some(Ok(call)) = connection.accept().await {
                    held.push(call);
                    calls.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    (addr, calls)
}

/// One connection from `from` (TLS without a client certificate) with one call that
/// pushes request data as fast as gatehouse's flow control allows, up to `limit` bytes;
/// `pushed` counts the bytes gatehouse let it send.
async fn push_stalled_request(
    from: &'static str,
    to: SocketAddr,
    key: &'static str,
    limit: usize,
    pushed: Arc<AtomicUsize>,
) -> Option<tokio::task::JoinHandle<()>> {
    let tcp = connect_from(from, to).await.ok()?;
    let connector = tokio_rustls::TlsConnector::from(client_tls(None));
    let server = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(server, tcp).await.ok()?;
    let (client, connection) = h2::client::handshake(tls).await.ok()?;
    let mut client = client.ready().await.ok()?;
    let request = http::Request::post("https://localhost/gatehouse.demo.v1.Demo/Collect")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-api-key", key)
        .body(())
        .unwrap();
    let (response, mut stream) = client.send_request(request, false).ok()?;
    Some(tokio::spawn(async move {
        let _keep = (client, response);
        let connection = tokio::spawn(connection);
        let mut sent = 0;
        while sent < limit {
            stream.reserve_capacity(16 * 1024);
            let granted = match std::future::poll_fn(|cx| stream.poll_capacity(cx)).await {
                Some(Ok(granted)) => granted,
                _ => break,
            };
            if stream
                .send_data(bytes::Bytes::from(vec![0u8; granted]), false)
                .is_err()
            {
                break;
            }
            sent += granted;
            pushed.fetch_add(granted, Ordering::SeqCst);
        }
        let _ = connection.await;
    }))
}

const ATTACKER_KEY: &str = "limits-attacker-0123456789abcdef";

/// TLS with optional client certificates, an attacker's API key, the admin port.
fn memory_config(app: SocketAddr, limits: &[(&str, &str)]) -> String {
    optional_tls_config(app, limits)
        + &format!(
            "auth:\n  api_keys:\n    keys:\n      - {{ name: attacker, sha256: \"{}\" }}\n      - {{ name: a, sha256: \"{}\" }}\n",
            hash(ATTACKER_KEY),
            hash(KEY_A)
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_each_pushing_a_stalled_request_stay_within_the_printed_budget() {
    let (app, calls) = start_app_that_never_reads().await;
    // One call per connection: the budget then counts one call's state per connection.
    let limits = &[
        ("max_connections", "256"),
        ("max_concurrent_streams", "1"),
        ("per_identity", "{ max_concurrent_calls: 1000 }"),
    ];
    let config = memory_config(app, limits);
    let gatehouse = Gatehouse::start(&config);
    let check = self::gatehouse(&[
        "check",
        "--config",
        gatehouse.config_path().to_str().unwrap(),
    ]);
    let printed = stdout(&check);
    let budget_mib: u64 = printed
        .split("worst-case memory: ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|mib| mib.parse().ok())
        .unwrap_or_else(|| panic!("no budget in {printed:?}"));
    let idle = rss_kib(gatehouse.pid());

    // The default share, a quarter of the slots per address: four addresses fill them.
    let pushed = Arc::new(AtomicUsize::new(0));
    let mut attackers = Vec::new();
    for from in ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"] {
        for _ in 0..64 {
            let attacker =
                push_stalled_request(from, gatehouse.addr, ATTACKER_KEY, 1 << 20, pushed.clone())
                    .await
                    .expect("within the limits");
            attackers.push(attacker);
        }
    }
    // The attack happened: every call reached the app, and gatehouse took at least a
    // full stream window from each caller that it could not pass on.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let window = 256 * 1024; // gatehouse's stream window (server::CALLER_STREAM_WINDOW)
    while calls.load(Ordering::SeqCst) < 256 || pushed.load(Ordering::SeqCst) < 256 * window {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the attack did not get going: {} calls, {} bytes pushed",
            calls.load(Ordering::SeqCst),
            pushed.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    until_metric(&gatehouse, "gatehouse_connections", 256.0).await;
    let mut refused = connect_from("127.0.0.6", gatehouse.addr).await.unwrap();
    closed_by_gatehouse(&mut refused).await;

    let peak = peak_rss_kib(gatehouse.pid());
    let pushed = pushed.load(Ordering::SeqCst);
    eprintln!(
        "256 connections pushing stalled requests: {} KiB pushed in all ({} KiB each), \
         RSS {idle} KiB idle, {} KiB now, peak {peak} KiB; budget {budget_mib} MiB",
        pushed / 1024,
        pushed / 1024 / 256,
        rss_kib(gatehouse.pid()),
    );
    assert!(
        peak <= budget_mib * 1024,
        "peak RSS {peak} KiB over the budget of {budget_mib} MiB"
    );
    for attacker in attackers {
        attacker.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_method_names_the_app_does_not_have_leave_the_scrape_small() {
    let app = App::start().await;
    let gatehouse = Gatehouse::start(&keyed_config(app.addr, "{}"));
    let mut client = client(gatehouse.addr).await;
    echo_as(&mut client, KEY_A).await.expect("a real method");
    let channel = channel(gatehouse.addr, Some(Identity::gateway()))
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    for i in 0..300 {
        grpc.ready().await.unwrap();
        let codec = tonic_prost::ProstCodec::<EchoRequest, EchoReply>::default();
        // 8 KB names, admitted (a valid key), answered UNIMPLEMENTED by the app itself.
        let name = format!("/made.up.Svc{i}/M{}", "x".repeat(8 * 1024));
        let path: http::uri::PathAndQuery = name.parse().unwrap();
        let status = grpc
            .unary(with_key(EchoRequest::default(), KEY_A), path, codec)
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unimplemented, "{status:?}");
        assert!(
            status.details().is_empty(),
            "the app's own status was given details"
        );
    }
    let scrape = scrape_metrics(&gatehouse).await;
    eprintln!(
        "/metrics after 300 made-up 8 KB methods: {} bytes",
        scrape.len()
    );
    assert!(
        scrape.len() < 32 * 1024,
        "/metrics grew to {} bytes",
        scrape.len()
    );
    assert!(!scrape.contains("made.up"), "made-up names became labels");
    let other = r#"grpc_server_handled_total{grpc_type="unknown",grpc_service="other",grpc_method="other",grpc_code="Unimplemented"}"#;
    assert_eq!(sample(&scrape, other), Some(300.0), "{scrape}");
    let echo = r#"grpc_server_handled_total{grpc_type="unknown",grpc_service="gatehouse.demo.v1.Demo",grpc_method="Echo",grpc_code="OK"}"#;
    assert_eq!(sample(&scrape, echo), Some(1.0), "{scrape}");
}

#[test]
fn check_prints_the_worst_case_memory_and_refuses_limits_that_do_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gatehouse.yaml");
    let config = |memory: &str| {
        DevConfig::new("127.0.0.1:50051".parse().unwrap())
            .only_limits(&[
                ("max_connections", "128"),
                ("max_concurrent_streams", "16"),
                ("max_header_list_size", "8192"),
                ("memory_limit", memory),
            ])
            .yaml()
    };
    std::fs::write(&path, config("256MiB")).unwrap();
    let output = gatehouse(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        stdout(&output).contains(
            "worst-case memory: 200 MiB (128 connections x 1112 KiB + 61 MiB), \
             limit 256 MiB (limits.memory_limit)\n\
             sized to 256 MiB (limits.memory_limit): upstream_connections 2"
        ),
        "{}",
        stdout(&output)
    );

    std::fs::write(&path, config("100MiB")).unwrap();
    let output = gatehouse(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(64));
    let errors = stderr(&output);
    assert!(
        errors.contains("limits: worst-case memory 200 MiB")
            && errors.contains("exceeds the memory limit of 100 MiB (limits.memory_limit)")
            && errors.contains("limits.max_connections"),
        "{errors}"
    );
    // `run` refuses it the same way.
    let output = gatehouse(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(64), "{}", stderr(&output));

    std::fs::write(&path, config("lots")).unwrap();
    let output = gatehouse(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(64));
    assert!(
        stderr(&output).contains("limits.memory_limit"),
        "{}",
        stderr(&output)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_left_out_are_sized_to_the_memory_limit_and_written_ones_win() {
    let app = App::start().await;
    // A pod-sized config: the memory limit as Kubernetes spells it, nothing else.
    let config = h2c_config(app.addr, &[("memory_limit", "160Mi")]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gatehouse.yaml");
    std::fs::write(&path, &config).unwrap();
    let output = gatehouse(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "ok\n\
         worst-case memory: 120 MiB (66 connections x 920 KiB + 61 MiB), limit 160 MiB (limits.memory_limit)\n\
         sized to 160 MiB (limits.memory_limit): max_connections 66, max_concurrent_streams 10, \
         max_header_list_size 8192, upstream_connections 2\n"
    );
    // `run` serves with what `check` printed: callers are told 10 streams.
    let running = Gatehouse::start(&config);
    running
        .wait_for_line(&[
            "limits left out of the file were sized",
            "max_connections 66",
        ])
        .await;
    let tcp = tokio::net::TcpStream::connect(running.addr).await.unwrap();
    let (_client, mut connection) = h2::client::handshake(tcp).await.unwrap();
    // Drive the connection until the server's SETTINGS are read: until then h2 assumes
    // no limit.
    let advertised = tokio::time::timeout(
        PATIENCE,
        std::future::poll_fn(|cx| {
            use std::future::Future;
            if let std::task::Poll::Ready(ended) = std::pin::Pin::new(&mut connection).poll(cx) {
                panic!("the connection ended: {ended:?}");
            }
            match connection.max_concurrent_send_streams() {
                usize::MAX => std::task::Poll::Pending,
                streams => std::task::Poll::Ready(streams),
            }
        }),
    )
    .await
    .expect("gatehouse sent its SETTINGS");
    assert_eq!(advertised, 10);

    // A written value wins over the sizing, and is still checked against the limit.
    let config = h2c_config(
        app.addr,
        &[("memory_limit", "160Mi"), ("max_concurrent_streams", "100")],
    );
    std::fs::write(&path, &config).unwrap();
    let output = gatehouse(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("(16 connections x 3800 KiB + 61 MiB)"),
        "{}",
        stdout(&output)
    );
    let config = h2c_config(
        app.addr,
        &[("memory_limit", "160Mi"), ("max_connections", "4096")],
    );
    std::fs::write(&path, &config).unwrap();
    let output = gatehouse(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(64), "{}", stdout(&output));
    assert!(
        stderr(&output).contains("exceeds the memory limit of 160 MiB (limits.memory_limit)"),
        "{}",
        stderr(&output)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_never_greets_is_dropped_when_its_idle_timeout_fires() {
    let app = App::start().await;
    let config = h2c_config(
        app.addr,
        &[("handshake_timeout", "1h"), ("idle_timeout", "300ms")],
    );
    let gatehouse = Gatehouse::start(&config);
    let mut silent = TcpStream::connect(gatehouse.addr).await.unwrap();
    until_metric(&gatehouse, "gatehouse_connections", 1.0).await;
    closed_by_gatehouse(&mut silent).await;
    gatehouse
        .wait_for_line(&["closed before its HTTP/2 preface"])
        .await;
    until_metric(&gatehouse, "gatehouse_connections", 0.0).await;
}

/// Public calls count against their client, by certificate when it showed one: a second
/// connection brings no new share, another certificate has its own, and an
/// authenticated identity on the same connection is not touched by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_calls_count_against_their_client_not_their_connection() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let app = App::start().await;
    let config = DevConfig::new(app.addr)
        .admin()
        .only_limits(&[("public_calls", "{ per_client: 2 }")])
        .yaml()
        + &format!(
            "auth:\n  api_keys:\n    keys:\n      - {{ name: a, sha256: \"{}\" }}\n",
            hash(KEY_A)
        );
    let gatehouse = Gatehouse::start(&config);
    let watch = |channel: tonic::transport::Channel| async move {
        let mut stream = HealthClient::new(channel)
            .watch(HealthCheckRequest::default())
            .await?
            .into_inner();
        // The first status arrived: the watch is open through gatehouse.
        stream.message().await?;
        Ok::<_, tonic::Status>(stream)
    };
    let first = channel(gatehouse.addr, Some(Identity::gateway()))
        .await
        .unwrap();
    let _open = [
        watch(first.clone()).await.expect("first watch"),
        watch(first.clone()).await.expect("second watch"),
    ];
    let refused = watch(first.clone()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert_eq!(reason(&refused), "CONCURRENCY_LIMIT");
    assert!(
        refused.message().contains("limits.public_calls.per_client"),
        "{}",
        refused.message()
    );
    // An authenticated identity on the same connection has its own share.
    echo_as(&mut DemoClient::new(first), KEY_A)
        .await
        .expect("identity a served on the same connection");
    // Another connection with the same certificate brings no new share...
    let second = channel(gatehouse.addr, Some(Identity::gateway()))
        .await
        .unwrap();
    let refused = watch(second).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    // ...another certificate has its own.
    let other = channel(
        gatehouse.addr,
        Some(Identity::dev("client-compliance-scanner")),
    )
    .await
    .unwrap();
    watch(other)
        .await
        .expect("a watch with another certificate");
}

/// The public Watch streams that one connection from `from` (no certificate, no
/// credentials) asked for: the ones gatehouse let through to the app
/// (held open, never read), and the reasons of the ones it refused.
async fn watch_streams(
    from: &str,
    to: SocketAddr,
    count: usize,
) -> (Vec<h2::RecvStream>, Vec<String>) {
    let tcp = connect_from(from, to).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(client_tls(None))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let (client, connection) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.unwrap();
    let mut answers = Vec::new();
    for _ in 0..count {
        let request = http::Request::post("https://localhost/grpc.health.v1.Health/Watch")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        client = client.ready().await.unwrap();
        let (answer, mut body) = client.send_request(request, false).unwrap();
        // Refused at once, the stream may be closed before its message goes.
        let _ = body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true);
        answers.push(answer);
    }
    let (mut held, mut refused) = (Vec::new(), Vec::new());
    for answer in answers {
        let response = tokio::time::timeout(PATIENCE, answer)
            .await
            .expect("an answer")
            .expect("a response");
        match response.headers().get("grpc-status") {
            // Trailers-only: gatehouse (or the app) refused it.
            Some(_) => refused.push(error_info_in(response.headers()).reason),
            None => held.push(response.into_body()),
        }
    }
    (held, refused)
}

/// Calls that need no credentials get a bounded share of the app's streams, counted per
/// client address, not per connection: eight addresses asking for 800 Health/Watch
/// streams get the share (40 of the app's 400 streams, at most 10 each), and a JWT
/// caller and the readiness probe are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_streams_get_a_bounded_share_and_leave_the_app_to_everyone_else() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = crate::support::issuers::Issuer::generate("fair", jsonwebtoken::Algorithm::ES256);
    let app = App::start().await;
    // Callers need no certificate: anonymous clients are told apart by their address.
    let config = DevConfig::new(app.addr)
        .admin()
        .client_auth("optional")
        .limit("upstream_connections", "4")
        .limit("max_concurrent_streams", "100")
        .yaml()
        + &format!(
            "auth:\n  jwt:\n    providers:\n{}",
            crate::support::issuers::provider(dir.path(), "fair", &issuer, "")
        );
    let gatehouse = Gatehouse::start(&config);
    let mut held = Vec::new();
    let mut refused = Vec::new();
    for address in 2..10 {
        for _ in 0..2 {
            let (open, no) = watch_streams(&format!("127.0.0.{address}"), gatehouse.addr, 50).await;
            assert!(
                open.len() <= 10,
                "127.0.0.{address} held {} streams",
                open.len()
            );
            held.extend(open);
            refused.extend(no);
        }
    }
    assert_eq!(held.len(), 40, "the public share of 400 app streams");
    assert_eq!(refused.len(), 760);
    assert!(
        refused.iter().all(|reason| reason == "CONCURRENCY_LIMIT"),
        "{refused:?}"
    );

    // Meanwhile an authenticated caller is answered at once, and the pod stays ready.
    let token = issuer.token("alice", "acme", &[]);
    let mut request = tonic::Request::new(EchoRequest {
        message: "served".into(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request.set_timeout(Duration::from_secs(3));
    let reply = client(gatehouse.addr).await.echo(request).await;
    assert_eq!(
        reply.expect("the JWT call was served").into_inner().message,
        "served"
    );
    let (status, body) = get(admin(&gatehouse), "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let scrape = scrape_metrics(&gatehouse).await;
    assert!(
        scrape.contains(r#"gatehouse_limit_refusals_total{limit="public_calls.per_client"}"#)
            && scrape.contains(
                r#"gatehouse_limit_refusals_total{limit="public_calls.max_concurrent_calls"}"#
            ),
        "{scrape}"
    );
    drop(held);
}

/// A demo client with the gateway's certificate, connecting from loopback address `from`.
async fn client_from(
    from: &'static str,
    to: SocketAddr,
    identity: Identity,
) -> DemoClient<tonic::transport::Channel> {
    let identity = Arc::new(identity);
    let channel = Endpoint::from_shared(format!("http://{to}"))
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let identity = identity.clone();
            async move {
                let tcp = connect_from(from, to).await?;
                tokio_rustls::TlsConnector::from(client_tls(Some(&identity)))
                    .connect(
                        rustls::pki_types::ServerName::try_from("localhost").unwrap(),
                        tcp,
                    )
                    .await
                    .map(hyper_util::rt::TokioIo::new)
            }
        }))
        .await
        .expect("a connection");
    DemoClient::new(channel)
}

/// Per-identity limits tell users apart by who vouched for them: a partner issuer's
/// `sub=alice` holding her whole allowance leaves the corporate alice hers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_limits_are_keyed_by_the_issuer_that_vouched_for_her() {
    use crate::support::issuers::{Issuer, provider};
    let dir = tempfile::tempdir().unwrap();
    let corporate = Issuer::generate("corp", jsonwebtoken::Algorithm::ES256);
    let partner = Issuer::generate("partner", jsonwebtoken::Algorithm::ES256);
    let app = App::start().await;
    let config = DevConfig::new(app.addr)
        .limit("per_identity", "{ max_concurrent_calls: 1 }")
        .yaml()
        + &format!(
            "auth:\n  jwt:\n    providers:\n{}{}",
            provider(dir.path(), "corp", &corporate, ""),
            provider(dir.path(), "partner", &partner, "")
        );
    let gatehouse = Gatehouse::start(&config);

    // The partner's alice holds her one call open...
    let hold = with_token(
        WaitRequest { millis: 600_000 },
        &partner.token("alice", "acme", &[]),
    );
    let mut partner_client = client(gatehouse.addr).await;
    let held = tokio::spawn(async move { partner_client.wait(hold).await });
    assert!(
        app.observed()
            .wait_until(PATIENCE, |seen| seen.waits_started() >= 1)
            .await,
        "the partner's call is open at the app"
    );
    // ...so her next one is over her limit...
    let again = with_token(EchoRequest::default(), &partner.token("alice", "acme", &[]));
    let status = client(gatehouse.addr).await.echo(again).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    // ...but the corporate alice's is not.
    let corporate_call = with_token(
        EchoRequest {
            message: "corporate".into(),
            ..Default::default()
        },
        &corporate.token("alice", "acme", &[]),
    );
    let reply = client(gatehouse.addr).await.echo(corporate_call).await;
    assert_eq!(
        reply
            .expect("the corporate alice is served")
            .into_inner()
            .message,
        "corporate"
    );
    held.abort();
}

/// One connection per certificate identity: a certificate whose only name is the CN
/// `spiffe://dev.gatehouse/ns/default/sa/gateway` is not the gateway's certificate (whose
/// SPIFFE ID is its URI SAN) and cannot take the gateway's connection slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_common_name_cannot_take_the_slot_of_the_uri_san_it_spells_out() {
    let app = App::start().await;
    let config = DevConfig::new(app.addr)
        .limit("max_connections_per_client", "1")
        .yaml();
    let gatehouse = Gatehouse::start(&config);
    let impostor =
        broken::client_with_names("spiffe://dev.gatehouse/ns/default/sa/gateway", vec![]);
    let mut impostor = client_from("127.0.0.2", gatehouse.addr, impostor).await;
    impostor
        .echo(EchoRequest::default())
        .await
        .expect("the impostor's own connection serves it");
    let mut gateway = client_from("127.0.0.3", gatehouse.addr, Identity::gateway()).await;
    let reply = gateway
        .echo(EchoRequest {
            message: "the gateway".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(
        reply
            .expect("the gateway has its own slot")
            .into_inner()
            .message,
        "the gateway"
    );
}
