//! What gatehouse's own tests need and cannot get from a crate: a JWKS endpoint over
//! HTTPS, as an identity provider serves one. Built for unit tests, and for the
//! end-to-end tests through the `test-util` feature; nothing in the binary calls it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::sync::{Notify, Semaphore};

/// What the server publishes and what it has seen.
#[derive(Default)]
struct Published {
    documents: HashMap<String, String>,
    fetches: HashMap<String, u64>,
    down: bool,
    /// Each answer waits for a [`JwksServer::release_answers`] permit.
    held: bool,
}

/// An HTTPS server (the development server certificate in `certs-dev/`, for
/// `localhost`) publishing JWKS documents by path: it counts fetches, can go down (503)
/// or away (the socket closes), and can hold its answers until the test releases them.
#[derive(Clone)]
pub struct JwksServer {
    pub addr: SocketAddr,
    state: Arc<Mutex<Published>>,
    fetched: Arc<Notify>,
    release: Arc<Semaphore>,
    accepting: Arc<Mutex<Option<tokio::task::AbortHandle>>>,
}

impl JwksServer {
    /// Starts the server on a loopback port.
    ///
    /// # Panics
    ///
    /// When the development certificate cannot be read or no port can be bound: a test
    /// cannot run without them.
    pub async fn start() -> JwksServer {
        let acceptor = tokio_rustls::TlsAcceptor::from(dev_server_config());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port for the JWKS server");
        let server = JwksServer {
            addr: listener.local_addr().expect("the JWKS server's address"),
            state: Arc::default(),
            fetched: Arc::default(),
            release: Arc::new(Semaphore::new(0)),
            accepting: Arc::default(),
        };
        let serving = server.clone();
        let accepting = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, serving) = (acceptor.clone(), serving.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(
                        move |request: http::Request<hyper::body::Incoming>| {
                            let serving = serving.clone();
                            async move {
                                Ok::<_, std::convert::Infallible>(
                                    serving.answer(request.uri().path()).await,
                                )
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        *server.lock_accepting() = Some(accepting.abort_handle());
        server
    }

    async fn answer(&self, path: &str) -> http::Response<Full<Bytes>> {
        let held = {
            let mut state = self.lock();
            *state.fetches.entry(path.to_owned()).or_default() += 1;
            state.held
        };
        self.fetched.notify_waiters();
        if held && let Ok(permit) = self.release.acquire().await {
            permit.forget();
        }
        let state = self.lock();
        match (state.down, state.documents.get(path)) {
            (false, Some(document)) => http::Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(document.clone()))),
            _ => http::Response::builder()
                .status(503)
                .body(Full::new(Bytes::new())),
        }
        .expect("a valid response")
    }

    fn lock(&self) -> MutexGuard<'_, Published> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_accepting(&self) -> MutexGuard<'_, Option<tokio::task::AbortHandle>> {
        self.accepting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops the server for good: the listening socket closes, so every fetch from now on
    /// fails to connect, as when the issuer's host is gone.
    ///
    /// # Panics
    ///
    /// When the socket still accepts connections after 20 s.
    pub async fn stop(&self) {
        let Some(accepting) = self.lock_accepting().take() else {
            return;
        };
        accepting.abort();
        // Closed once the aborted task is gone: probe until a connect is refused.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(self.addr).await.is_ok() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the JWKS server still accepts connections"
            );
            tokio::task::yield_now().await;
        }
    }

    /// The address of `path` on this server.
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    /// Serves `document` at `path` from now on.
    pub fn publish(&self, path: &str, document: String) {
        self.lock().documents.insert(path.to_owned(), document);
    }

    /// Requests for `path` so far.
    pub fn fetches(&self, path: &str) -> u64 {
        self.lock().fetches.get(path).copied().unwrap_or(0)
    }

    /// Waits until `path` has been requested `count` times.
    pub async fn until_fetched(&self, path: &str, count: u64) {
        loop {
            let fetched = self.fetched.notified();
            if self.fetches(path) >= count {
                return;
            }
            fetched.await;
        }
    }

    /// Answers 503 to every request while `down`.
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
    }

    /// From now on, each answer waits for [`JwksServer::release_answers`].
    pub fn hold_answers(&self) {
        self.lock().held = true;
    }

    /// Lets `count` held answers go.
    pub fn release_answers(&self, count: usize) {
        self.release.add_permits(count);
    }
}

/// The server side of TLS with the development certificate.
fn dev_server_config() -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("certs-dev");
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(dir.join("server.crt"))
        .and_then(Iterator::collect)
        .expect("certs-dev/server.crt");
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(dir.join("server.key"))
        .expect("certs-dev/server.key");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|builder| builder.with_no_client_auth().with_single_cert(certs, key))
        .expect("a TLS configuration from the development certificate");
    Arc::new(config)
}
