//! The admin server: its address, plain HTTP/1.1 GETs, and the metrics scrape.

use std::net::SocketAddr;

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::{Gatehouse, PATIENCE, field};

/// The admin address gatehouse logged at start-up (`telemetry.admin_address`).
pub fn admin(gatehouse: &Gatehouse) -> SocketAddr {
    let output = gatehouse.output();
    let line = output
        .lines()
        .find(|line| line.contains("msg=listening"))
        .unwrap();
    field(line, "admin").parse().unwrap()
}

/// `GET path` over HTTP/1.1: status and body.
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let (status, _, body) = get_accepting(addr, path, None).await;
    (status, body)
}

/// `GET path` over HTTP/1.1 with an `Accept` header when given: status, content type
/// and body.
pub async fn get_accepting(
    addr: SocketAddr,
    path: &str,
    accept: Option<&str>,
) -> (u16, String, String) {
    use http_body_util::{BodyExt, Empty};
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut request = http::Request::get(path).header("host", addr.to_string());
    if let Some(accept) = accept {
        request = request.header("accept", accept);
    }
    let request = request.body(Empty::<bytes::Bytes>::new()).unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|value| value.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        content_type,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

/// promtool, unpacked by `tests/tools.sh` into `.tools/` (or named by `$PROMTOOL`).
pub fn promtool() -> std::process::Command {
    let path = std::env::var_os("PROMTOOL")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| super::repo().join(".tools/prometheus/usr/bin/promtool"));
    assert!(
        path.exists(),
        "promtool not found at {}: run `bash tests/run`, which installs it",
        path.display()
    );
    std::process::Command::new(path)
}

/// Waits (bounded) until the scrape has `line`, and returns the scrape.
pub async fn wait_for_metric(gatehouse: &Gatehouse, line: &str) -> String {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let scrape = scrape_metrics(gatehouse).await;
        if scrape.lines().any(|l| l == line) {
            return scrape;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {line:?} in the scrape:\n{scrape}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The metrics scrape of gatehouse's admin server.
pub async fn scrape_metrics(gatehouse: &Gatehouse) -> String {
    get(admin(gatehouse), "/metrics").await.1
}

/// The value of one series in a scrape, if present.
pub fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Waits (bounded) until the admin port reports `series` at `value`.
pub async fn until_metric(gatehouse: &Gatehouse, series: &str, value: f64) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let scrape = scrape_metrics(gatehouse).await;
        if sample(&scrape, series) == Some(value) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} never reached {value}:\n{scrape}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
