//! The demo app behind gatehouse: `cargo run --example demo-app -- [ADDRESS]`.
//!
//! Serves `gatehouse.demo.v1.Demo`, `grpc.health.v1.Health` and server reflection in
//! plaintext HTTP/2 on ADDRESS (default 127.0.0.1:50051) until Ctrl-C or SIGTERM.

mod service;

use std::net::SocketAddr;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:50051".to_owned());
    let address: SocketAddr = match address.parse() {
        Ok(address) => address,
        Err(error) => {
            eprintln!("demo-app: {address:?} is not an address like 127.0.0.1:50051: {error}");
            return std::process::ExitCode::from(64);
        }
    };
    let (listener, bound) = match service::bind(address).await {
        Ok(bound) => bound,
        Err(error) => {
            eprintln!("demo-app: cannot listen on {address}: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    println!("demo-app listening on {bound} (plaintext HTTP/2)");
    let stop = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler cannot fail on Unix");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    service::serve(listener, service::DemoService::default(), stop).await;
    std::process::ExitCode::SUCCESS
}
