//! The load generator for gatehouse's benchmarks: gRPC calls to the demo app, directly
//! or through a proxy, over plaintext HTTP/2 or mTLS with a bearer token or API key.
//!
//!     cargo run --release --example load -- --target 127.0.0.1:12018 --tls \
//!         --token "$TOKEN" --mode closed --connections 4 --streams 16 --duration 10s
//!
//! Closed loop (`--mode closed`) finds the saturation throughput: every worker sends its
//! next call as soon as the last one returns. Open loop (`--mode open --rate N`) sends at
//! a fixed rate and measures each call's latency from the moment it was *meant* to be
//! sent, so a stalled proxy shows up as latency instead of quietly lowering the rate
//! (coordinated omission). `--rpc stream` measures a server stream's throughput;
//! `--idle-connections N` opens N connections and holds them. One JSON object is
//! printed on standard output.
//!
//! `--call-timeout 3s` bounds every call (sent as `grpc-timeout` and enforced here too);
//! calls that run out are reported as `timeouts`, apart from other errors, so a stalled
//! proxy ends the run on time instead of hanging it.
//!
//! `--attack chat|streams` is the bad neighbour for the isolation benchmark: one caller
//! that holds shared resources without breaking any limit, on `--attack-streams` streams
//! of one connection. `chat` opens bidirectional `Chat` streams, writes `--payload`-byte
//! messages to them as fast as it is allowed and never reads a reply; `streams` opens
//! server streams of 1 MiB messages and never reads them. It prints one line when the
//! attack is in place (for `chat`: once its writes have stalled), holds it for
//! `--duration`, then exits.

#[path = "../demo-app/service.rs"]
mod service;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use service::pb::demo_client::DemoClient;
use service::pb::{CountdownRequest, EchoRequest};
use tokio::sync::Mutex;
use tonic::transport::{Channel, Endpoint};

#[derive(Debug, Parser)]
#[command(about = "gRPC load generator for gatehouse benchmarks")]
struct Args {
    /// host:port to call.
    #[arg(long)]
    target: SocketAddr,
    /// Speak mTLS (with --ca, --cert, --key) instead of plaintext HTTP/2.
    #[arg(long)]
    tls: bool,
    #[arg(long, default_value = "certs-dev/ca.crt")]
    ca: String,
    #[arg(long, default_value = "certs-dev/client-gateway.crt")]
    cert: String,
    #[arg(long, default_value = "certs-dev/client-gateway.key")]
    key: String,
    /// Sent as `authorization: Bearer TOKEN`.
    #[arg(long)]
    token: Option<String>,
    /// Sent as `x-api-key`.
    #[arg(long)]
    api_key: Option<String>,
    /// `EchoRequest.message` of unary calls: what a field rule on `message` compares
    /// (bench/run binds it to the token's tenant).
    #[arg(long, default_value = "")]
    message: String,
    /// The `:authority` to send: the destination's name when calling gatehouse's
    /// outbound port.
    #[arg(long)]
    authority: Option<String>,
    #[arg(long, value_enum, default_value = "closed")]
    mode: Mode,
    /// Calls per second in open-loop mode.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    #[arg(long, default_value = "5s")]
    duration: gatehouse::config::Duration,
    /// Closed loop: stop after this many calls in total instead of after --duration, so
    /// that a profile (bench/callgrind) covers a fixed amount of work.
    #[arg(long)]
    calls: Option<u64>,
    /// Calls before measuring starts.
    #[arg(long, default_value_t = 500)]
    warmup: u64,
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Concurrent calls per connection (closed loop).
    #[arg(long, default_value_t = 8)]
    streams: usize,
    /// Request and reply payload bytes (unary), or bytes per message (stream).
    #[arg(long, default_value_t = 1024)]
    payload: u32,
    #[arg(long, value_enum, default_value = "unary")]
    rpc: Rpc,
    /// Messages in one server stream (`--rpc stream`).
    #[arg(long, default_value_t = 1024)]
    messages: u32,
    /// Open this many connections, hold them for --duration, and report.
    #[arg(long)]
    idle_connections: Option<usize>,
    /// Bound on each call; those that run out count as timeouts.
    #[arg(long)]
    call_timeout: Option<gatehouse::config::Duration>,
    /// Be the bad neighbour instead of measuring (see the top of this file).
    #[arg(long, value_enum)]
    attack: Option<Attack>,
    /// Streams the attack opens: `chat` streams, or server streams.
    #[arg(long, default_value_t = 8)]
    attack_streams: usize,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Attack {
    /// A bidirectional stream written as fast as allowed and never read.
    Chat,
    /// Server streams of large messages, never read.
    Streams,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Mode {
    Closed,
    Open,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Rpc {
    Unary,
    Stream,
}

struct Load {
    args: Args,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Load {
    async fn channel(&self) -> Result<Channel, String> {
        let mut endpoint = Endpoint::from_shared(format!("http://{}", self.args.target))
            .map_err(|e| e.to_string())?
            .initial_stream_window_size(Some(4 << 20))
            .initial_connection_window_size(Some(16 << 20))
            .tcp_nodelay(true);
        if let Some(authority) = &self.args.authority {
            let origin = format!("http://{authority}")
                .parse()
                .map_err(|_| format!("--authority {authority:?}: not a valid authority"))?;
            endpoint = endpoint.origin(origin);
        }
        let Some(tls) = self.tls.clone() else {
            return endpoint
                .connect()
                .await
                .map_err(|e| format!("connect: {e}"));
        };
        let target = self.args.target;
        endpoint
            .connect_with_connector(tower::service_fn(move |_| {
                let tls = tls.clone();
                async move {
                    let tcp = tokio::net::TcpStream::connect(target).await?;
                    tcp.set_nodelay(true)?;
                    let name = ServerName::try_from("localhost").expect("a valid name");
                    let stream = tokio_rustls::TlsConnector::from(tls)
                        .connect(name, tcp)
                        .await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }))
            .await
            .map_err(|e| format!("connect: {e}"))
    }

    /// A request with the caller's credentials and `--call-timeout` as its deadline.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = self.credentials(message);
        if let Some(timeout) = self.args.call_timeout {
            request.set_timeout(timeout.get());
        }
        request
    }

    /// A request with the caller's credentials and no deadline.
    fn credentials<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = &self.args.token {
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("ASCII token"),
            );
        }
        if let Some(key) = &self.args.api_key {
            request
                .metadata_mut()
                .insert("x-api-key", key.parse().expect("ASCII key"));
        }
        request
    }

    fn echo(&self) -> EchoRequest {
        EchoRequest {
            message: self.args.message.clone(),
            payload: vec![b'x'; self.args.payload as usize],
            reply_size: self.args.payload,
            ..Default::default()
        }
    }

    /// One unary call, bounded by `--call-timeout` here as well as by the `grpc-timeout`
    /// it sends, so a proxy that never answers cannot hold the run.
    async fn call(&self, client: &mut DemoClient<Channel>) -> Outcome {
        let call = client.echo(self.request(self.echo()));
        let result = match self.args.call_timeout {
            Some(timeout) => match tokio::time::timeout(timeout.get(), call).await {
                Ok(result) => result,
                Err(_elapsed) => return Outcome::Timeout,
            },
            None => call.await,
        };
        match result {
            Ok(_) => Outcome::Ok,
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
                ) =>
            {
                Outcome::Timeout
            }
            Err(status) => Outcome::Error(status),
        }
    }
}

enum Outcome {
    Ok,
    Timeout,
    Error(tonic::Status),
}

/// Calls that failed, kept apart by why.
#[derive(Default)]
struct Failures {
    errors: AtomicU64,
    timeouts: AtomicU64,
}

impl Failures {
    fn count(&self, outcome: &Outcome) {
        match outcome {
            Outcome::Ok => {}
            Outcome::Timeout => {
                self.timeouts.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Error(_) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn tls_config(args: &Args) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&args.ca).map_err(|e| format!("--ca: {e}"))? {
        roots
            .add(cert.map_err(|e| format!("--ca: {e}"))?)
            .map_err(|e| format!("--ca: {e}"))?;
    }
    let certs = CertificateDer::pem_file_iter(&args.cert)
        .map_err(|e| format!("--cert: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("--cert: {e}"))?;
    let key = PrivateKeyDer::from_pem_file(&args.key).map_err(|e| format!("--key: {e}"))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let tls = match args.tls.then(|| tls_config(&args)).transpose() {
        Ok(tls) => tls,
        Err(message) => {
            eprintln!("load: {message}");
            return std::process::ExitCode::from(64);
        }
    };
    let load = Arc::new(Load { args, tls });
    let result = if let Some(attack) = load.args.attack {
        bad_neighbour(&load, attack).await
    } else if let Some(count) = load.args.idle_connections {
        idle(&load, count).await
    } else {
        match (load.args.rpc, load.args.mode) {
            (Rpc::Stream, _) => stream(&load).await,
            (Rpc::Unary, Mode::Closed) => closed(&load).await,
            (Rpc::Unary, Mode::Open) => open(&load).await,
        }
    };
    match result {
        Ok(report) => {
            println!("{report}");
            std::process::ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("load: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The run's figures as JSON; latencies are `null` when no call succeeded.
fn report(
    calls: u64,
    failures: &Failures,
    elapsed: Duration,
    latencies: &Histogram<u64>,
) -> String {
    let quantile = |q: f64| match latencies.is_empty() {
        true => "null".to_owned(),
        false => latencies.value_at_quantile(q).to_string(),
    };
    let max = match latencies.is_empty() {
        true => "null".to_owned(),
        false => latencies.max().to_string(),
    };
    format!(
        "{{\"calls\":{calls},\"errors\":{},\"timeouts\":{},\"seconds\":{:.3},\"calls_per_second\":{:.1},\"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{max}}}",
        failures.errors.load(Ordering::Relaxed),
        failures.timeouts.load(Ordering::Relaxed),
        elapsed.as_secs_f64(),
        calls as f64 / elapsed.as_secs_f64(),
        quantile(0.5),
        quantile(0.9),
        quantile(0.99),
        quantile(0.999),
    )
}

async fn clients(load: &Load) -> Result<Vec<DemoClient<Channel>>, String> {
    let mut clients = Vec::with_capacity(load.args.connections);
    for _ in 0..load.args.connections {
        let client = DemoClient::new(load.channel().await?)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        clients.push(client);
    }
    // Warm up: connections open, caches filled.
    let mut warm = clients[0].clone();
    for _ in 0..load.args.warmup {
        match load.call(&mut warm).await {
            Outcome::Ok => {}
            Outcome::Timeout => return Err("warm-up call timed out".to_owned()),
            Outcome::Error(status) => return Err(format!("warm-up call failed: {status}")),
        }
    }
    Ok(clients)
}

async fn closed(load: &Arc<Load>) -> Result<String, String> {
    let clients = clients(load).await?;
    let duration = load.args.duration.get();
    let calls = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Failures::default());
    // Calls handed out so far, when the run is bounded by --calls.
    let issued = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(histogram()));
    let started = Instant::now();
    let mut workers = Vec::new();
    for client in clients {
        for _ in 0..load.args.streams {
            let (mut client, load, calls, failures, latencies, issued) = (
                client.clone(),
                load.clone(),
                calls.clone(),
                failures.clone(),
                latencies.clone(),
                issued.clone(),
            );
            workers.push(tokio::spawn(async move {
                let mut own = histogram();
                let go_on = || match load.args.calls {
                    Some(limit) => issued.fetch_add(1, Ordering::Relaxed) < limit,
                    None => started.elapsed() < duration,
                };
                while go_on() {
                    let sent = Instant::now();
                    match load.call(&mut client).await {
                        Outcome::Ok => {
                            calls.fetch_add(1, Ordering::Relaxed);
                            let _ = own.record(sent.elapsed().as_micros() as u64);
                        }
                        failed => failures.count(&failed),
                    }
                }
                let _ = latencies.lock().await.add(&own);
            }));
        }
    }
    for worker in workers {
        let _ = worker.await;
    }
    let elapsed = started.elapsed();
    let latencies = latencies.lock().await;
    Ok(report(
        calls.load(Ordering::Relaxed),
        &failures,
        elapsed,
        &latencies,
    ))
}

async fn open(load: &Arc<Load>) -> Result<String, String> {
    let clients = clients(load).await?;
    let duration = load.args.duration.get();
    let interval = Duration::from_nanos(1_000_000_000 / load.args.rate.max(1));
    let total = (duration.as_secs_f64() * load.args.rate as f64) as u64;
    let failures = Arc::new(Failures::default());
    let latencies = Arc::new(std::sync::Mutex::new(histogram()));
    let started = tokio::time::Instant::now();
    let mut calls = Vec::with_capacity(total as usize);
    for i in 0..total {
        // The intended send time; latency counts from here even if sending is late.
        let intended = started + interval * i as u32;
        tokio::time::sleep_until(intended).await;
        let mut client = clients[i as usize % clients.len()].clone();
        let (load, failures, latencies) = (load.clone(), failures.clone(), latencies.clone());
        calls.push(tokio::spawn(async move {
            match load.call(&mut client).await {
                Outcome::Ok => {
                    let micros = intended.elapsed().as_micros() as u64;
                    let _ = latencies.lock().expect("not poisoned").record(micros);
                }
                failed => failures.count(&failed),
            }
        }));
    }
    for call in calls {
        let _ = call.await;
    }
    let elapsed = started.elapsed();
    let latencies = latencies.lock().expect("not poisoned");
    Ok(report(latencies.len(), &failures, elapsed, &latencies))
}

async fn stream(load: &Arc<Load>) -> Result<String, String> {
    let mut client = DemoClient::new(load.channel().await?).max_decoding_message_size(64 << 20);
    let request = CountdownRequest {
        count: load.args.messages,
        payload_size: load.args.payload,
        ..Default::default()
    };
    let started = Instant::now();
    let mut replies = client
        .countdown(load.request(request))
        .await
        .map_err(|status| format!("stream failed: {status}"))?
        .into_inner();
    let mut bytes = 0u64;
    while let Some(reply) = replies
        .message()
        .await
        .map_err(|status| format!("stream failed: {status}"))?
    {
        bytes += reply.payload.len() as u64;
    }
    let elapsed = started.elapsed();
    Ok(format!(
        "{{\"bytes\":{bytes},\"seconds\":{:.3},\"megabytes_per_second\":{:.1}}}",
        elapsed.as_secs_f64(),
        bytes as f64 / 1e6 / elapsed.as_secs_f64()
    ))
}

async fn idle(load: &Arc<Load>, count: usize) -> Result<String, String> {
    let mut held = Vec::with_capacity(count);
    for _ in 0..count {
        let mut client = DemoClient::new(load.channel().await?);
        // One call per connection, so each is a complete HTTP/2 session through the proxy;
        // with `--message`, so a field rule on it holds.
        let request = EchoRequest {
            message: load.args.message.clone(),
            ..Default::default()
        };
        client
            .echo(load.request(request))
            .await
            .map_err(|status| format!("call failed: {status}"))?;
        held.push(client);
    }
    println!("{{\"idle_connections\":{count}}}");
    tokio::time::sleep(load.args.duration.get()).await;
    drop(held);
    Ok(format!("{{\"released\":{count}}}"))
}

/// How long the `chat` attacker's writes must make no progress before it counts them as
/// stalled (every window on the way to the app full), and how long it tries at most.
const STALLED_FOR: Duration = Duration::from_millis(500);
const STALL_WITHIN: Duration = Duration::from_secs(10);

async fn bad_neighbour(load: &Arc<Load>, attack: Attack) -> Result<String, String> {
    // Its own connection, as an attacker's would be; the attack holds no more than one
    // caller may.
    let mut client = DemoClient::new(load.channel().await?)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    // Held, never read: that is the attack.
    let mut unread = Vec::new();
    let in_place = match attack {
        Attack::Chat => {
            let written = Arc::new(AtomicU64::new(0));
            let payload = load.args.payload as usize;
            let started = Instant::now();
            for _ in 0..load.args.attack_streams {
                let counter = written.clone();
                // Produced only as fast as flow control lets the stream send, so
                // `written` stops growing once the windows up to the app are full.
                let messages = futures_util::stream::repeat_with(move || {
                    counter.fetch_add(payload as u64, Ordering::Relaxed);
                    EchoRequest {
                        payload: vec![b'a'; payload],
                        ..Default::default()
                    }
                });
                let replies = client
                    .chat(load.credentials(messages))
                    .await
                    .map_err(|status| format!("chat: {status}"))?
                    .into_inner();
                unread.push(replies);
            }
            let (mut last, mut since) = (0, Instant::now());
            let stalled = loop {
                tokio::time::sleep(STALLED_FOR / 10).await;
                let now = written.load(Ordering::Relaxed);
                if now != last {
                    (last, since) = (now, Instant::now());
                } else if now > 0 && since.elapsed() >= STALLED_FOR {
                    break true;
                }
                if started.elapsed() >= STALL_WITHIN {
                    break false;
                }
            };
            format!(
                "{{\"attack\":\"chat\",\"open\":{},\"stalled\":{stalled},\"bytes_written\":{last},\"seconds\":{:.3}}}",
                unread.len(),
                started.elapsed().as_secs_f64()
            )
        }
        Attack::Streams => {
            let started = Instant::now();
            for _ in 0..load.args.attack_streams {
                let request = CountdownRequest {
                    count: u32::MAX,
                    payload_size: 1 << 20,
                    ..Default::default()
                };
                let replies = client
                    .countdown(load.credentials(request))
                    .await
                    .map_err(|status| format!("countdown: {status}"))?
                    .into_inner();
                unread.push(replies);
            }
            format!(
                "{{\"attack\":\"streams\",\"open\":{},\"seconds\":{:.3}}}",
                unread.len(),
                started.elapsed().as_secs_f64()
            )
        }
    };
    println!("{in_place}");
    tokio::time::sleep(load.args.duration.get()).await;
    drop(unread);
    Ok(format!("{{\"released\":\"{attack:?}\"}}"))
}
