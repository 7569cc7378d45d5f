//! Allocations per call through gatehouse's real chain (Recovery, Logging, Metrics, Auth
//! with an RS256 JWT, Limits, forwarding over the h2c connection pool), counted by a
//! global allocator. Calls are handed to the chain in memory, as the HTTP/2 server hands
//! them over after decoding (the caller's TLS and HTTP/2 are not counted); the app is a
//! minimal HTTP/2 server on loopback answering every call with a 1 KiB message, running
//! on its own thread, whose allocations are not counted either. Only the thread that
//! runs the chain and the pool's connection is counted, so the figure is gatehouse's
//! per-call allocations between the two HTTP/2 hops, body and trailers included.
//!
//!     cargo bench --bench allocs [-- CALLS]
//!
//! `cargo test --bench allocs` runs it briefly (100 calls) so that it cannot rot.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use gatehouse::auth::Authenticator;
use gatehouse::body::RequestBody;
use gatehouse::config::Config;
use gatehouse::inbound::Forward;
use gatehouse::metrics::Metrics;
use gatehouse::reload::Current;
use gatehouse::telemetry::{Logfmt, Tracing};
use gatehouse::tls::{ConnectionInfo, PeerIdentity};
use gatehouse::upstream::Upstream;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tower::Service;

/// The system allocator, counting on the threads that ask to be counted.
struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
    static BYTES: Cell<u64> = const { Cell::new(0) };
}

fn count(size: usize) {
    // `try_with`: the allocator also runs while thread-locals are being torn down.
    let _ = COUNTING.try_with(|counting| {
        if counting.get() {
            ALLOCATIONS.with(|n| n.set(n.get() + 1));
            BYTES.with(|n| n.set(n.get() + size as u64));
        }
    });
}

// SAFETY: every call is passed unchanged to the system allocator; counting only reads and
// writes const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // A reallocation is an allocation as far as cost goes: count it with its new size.
        count(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const PAYLOAD: usize = 1024;

/// A gRPC message frame: no compression, a 4-byte length, then the bytes.
fn grpc_frame(len: usize) -> Bytes {
    let mut frame = vec![0u8; 5 + len];
    frame[1..5].copy_from_slice(&(len as u32).to_be_bytes());
    Bytes::from(frame)
}

/// The app: answers every call with one 1 KiB message and `grpc-status: 0`.
fn start_app() -> SocketAddr {
    let (ready, address) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("app runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind loopback");
            ready
                .send(listener.local_addr().expect("bound address"))
                .expect("bench waits for the address");
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                // As a gRPC server does: without it the response's HEADERS and DATA
                // frames can wait on the chain's delayed ACK, about 40 ms a call.
                let _ = socket.set_nodelay(true);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        |request: Request<hyper::body::Incoming>| async move {
                            // Read the whole request, as an app would.
                            let _ = request.into_body().collect().await;
                            let mut trailers = http::HeaderMap::new();
                            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                            let body = Full::new(grpc_frame(PAYLOAD))
                                .map_err(|never: Infallible| match never {})
                                .with_trailers(async move { Some(Ok(trailers)) });
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .header("content-type", "application/grpc")
                                    .body(body)
                                    .expect("valid response"),
                            )
                        },
                    );
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(socket), service)
                    .await;
                });
            }
        });
    });
    address.recv().expect("app started")
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --bench allocs` passes nothing and gets a
    // short run in the unoptimised build, enough to show the chain still answers.
    let measuring = std::env::args().any(|arg| arg == "--bench");
    let calls: u64 = std::env::args()
        .skip(1)
        .find(|arg| !arg.starts_with('-'))
        .and_then(|arg| arg.parse().ok())
        .unwrap_or(if measuring { 20_000 } else { 100 });
    let warm_up = if measuring { 1_000 } else { 100 };
    let app = start_app();

    // Logs at `warn`, as bench/run configures gatehouse: the access log is not formatted.
    let subscriber = tracing_subscriber::fmt()
        .event_format(Logfmt)
        .with_writer(std::io::sink)
        .with_max_level(tracing::Level::WARN)
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("one subscriber");

    let config = Config::from_yaml(&format!(
        "listen: {{ address: 127.0.0.1:1 }}\n\
         tls: {{ enabled: false }}\n\
         upstream: {{ address: {app} }}\n\
         auth: {{ jwt: {{ providers: [ {{ name: dev, issuer: https://issuer.dev.gatehouse, \
         audiences: [demo], algorithms: [RS256], jwks_file: certs-dev/jwks.json }} ] }} }}\n"
    ))
    .expect("valid config");
    let authenticator = Authenticator::build(&config).expect("valid auth config");
    let token = gatehouse_token();
    let peer = {
        let der = CertificateDer::from_pem_file("certs-dev/client-gateway.crt")
            .expect("certs-dev/client-gateway.crt");
        PeerIdentity::from_der(&der).expect("a client certificate")
    };
    let connection = Arc::new(ConnectionInfo::new(
        "127.0.0.1:40000".parse().expect("address"),
        Some(peer),
    ));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let metrics = Arc::new(Metrics::new());
        let upstream = Arc::new(Upstream::new(
            &config.upstream,
            &config.limits,
            metrics.clone(),
        ));
        let mut chain = gatehouse::inbound::build(
            gatehouse::inbound::Parts {
                tracing: Arc::new(Tracing::propagate_only(config.telemetry.sample_ratio)),
                metrics,
                authenticator: Arc::new(Current::new(Arc::new(authenticator))),
                limits: config.limits.clone(),
                global: None,
                contexts: None,
                schema: None,
                abort: tokio_util::sync::CancellationToken::new(),
            },
            Forward::new(upstream),
        );
        let body = grpc_frame(PAYLOAD);
        let authorization = http::HeaderValue::try_from(format!("Bearer {token}"))
            .expect("a token is a valid header value");
        let mut call = async || {
            // What hyper's server hands the chain for a call from grpc-go or tonic.
            let mut request = Request::post("http://127.0.0.1:12018/demo.v1.Demo/Echo")
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .header("user-agent", "grpc-go/1.60.1")
                .header("grpc-timeout", "10S")
                .header(
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                )
                .header("authorization", authorization.clone())
                .body(RequestBody::local(body.clone()))
                .expect("valid request");
            request.extensions_mut().insert(connection.clone());
            let response = chain.call(request).await.expect("infallible");
            let status = response
                .headers()
                .get("grpc-status")
                .map(|value| value.as_bytes().to_vec());
            let collected = response.into_body().collect().await.expect("a body");
            let status = status.or_else(|| {
                collected
                    .trailers()
                    .and_then(|t| t.get("grpc-status"))
                    .map(|value| value.as_bytes().to_vec())
            });
            assert_eq!(status.as_deref(), Some(&b"0"[..]), "the call failed");
            assert_eq!(collected.to_bytes().len(), 5 + PAYLOAD);
        };
        // Warm up: the pool's connection, the token cache, the allocator's own free lists.
        for _ in 0..warm_up {
            call().await;
        }
        COUNTING.with(|counting| counting.set(true));
        for _ in 0..calls {
            call().await;
        }
        COUNTING.with(|counting| counting.set(false));
    });
    let allocations = ALLOCATIONS.with(Cell::get);
    let bytes = BYTES.with(Cell::get);
    println!(
        "{{\"calls\":{calls},\"allocations_per_call\":{:.1},\"bytes_per_call\":{:.0}}}",
        allocations as f64 / calls as f64,
        bytes as f64 / calls as f64
    );
}

/// An RS256 token for the dev issuer, as bench/run makes one.
fn gatehouse_token() -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args([
            "token",
            "--key",
            "certs-dev/jwt-signing.key",
            "--kid",
            "dev-1",
            "--iss",
            "https://issuer.dev.gatehouse",
            "--aud",
            "demo",
            "--sub",
            "bench-user",
            "--tenant",
            "acme",
            "--roles",
            "reader",
            "--ttl",
            "2h",
        ])
        .output()
        .expect("gatehouse token");
    assert!(output.status.success(), "gatehouse token failed");
    String::from_utf8(output.stdout)
        .expect("a token is ASCII")
        .trim()
        .to_owned()
}
