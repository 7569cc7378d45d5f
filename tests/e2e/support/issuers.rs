//! Token issuers for the authentication tests: signing keys of every algorithm family
//! made at test time, their JWKS, and an HTTPS server that publishes key sets.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::support::dev_cert;

/// The audience every test provider accepts.
pub const AUDIENCE: &str = "demo";

/// A signing key and the issuer name that uses it.
pub struct Issuer {
    pub iss: String,
    pub alg: Algorithm,
    pub kid: String,
    key: EncodingKey,
    /// The key as a PEM or secret, for files the config points at.
    pub material: Vec<u8>,
    /// The raw public key, for key types whose JWK is built by hand (Ed25519).
    public_raw: Vec<u8>,
}

impl Issuer {
    /// A fresh key for `alg`.
    pub fn generate(name: &str, alg: Algorithm) -> Issuer {
        let (key, material, public_raw) = match alg {
            Algorithm::HS256 => {
                let secret = format!("{name}-secret-that-is-at-least-32-bytes-long").into_bytes();
                (EncodingKey::from_secret(&secret), secret, Vec::new())
            }
            _ => {
                let rcgen_alg = match alg {
                    Algorithm::RS256 => &rcgen::PKCS_RSA_SHA256,
                    Algorithm::PS256 => &rcgen::PKCS_RSA_SHA256,
                    Algorithm::ES256 => &rcgen::PKCS_ECDSA_P256_SHA256,
                    Algorithm::EdDSA => &rcgen::PKCS_ED25519,
                    other => panic!("no test key for {other:?}"),
                };
                let pair = rcgen::KeyPair::generate_for(rcgen_alg).unwrap();
                let pem = pair.serialize_pem();
                let key = match alg {
                    Algorithm::RS256 | Algorithm::PS256 => {
                        EncodingKey::from_rsa_pem(pem.as_bytes())
                    }
                    Algorithm::ES256 => EncodingKey::from_ec_pem(pem.as_bytes()),
                    _ => EncodingKey::from_ed_pem(pem.as_bytes()),
                }
                .unwrap();
                (key, pem.into_bytes(), pair.public_key_raw().to_vec())
            }
        };
        Issuer {
            iss: format!("https://{name}.issuer.test"),
            alg,
            kid: format!("{name}-1"),
            key,
            material,
            public_raw,
        }
    }

    /// The same issuer name and algorithm with a new key and key id.
    pub fn rotated(&self, kid: &str) -> Issuer {
        let mut next = Issuer::generate("rotated", self.alg);
        next.iss = self.iss.clone();
        next.kid = kid.to_owned();
        next
    }

    pub fn jwk(&self) -> Jwk {
        if self.alg == Algorithm::EdDSA {
            use base64::Engine as _;
            let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&self.public_raw);
            let jwk =
                json!({"kty": "OKP", "crv": "Ed25519", "x": x, "alg": "EdDSA", "kid": self.kid});
            return serde_json::from_value(jwk).unwrap();
        }
        let mut jwk = Jwk::from_encoding_key(&self.key, self.alg).unwrap();
        jwk.common.key_id = Some(self.kid.clone());
        jwk
    }

    /// Claims that pass every check, for `sub` in `tenant` with `roles`.
    pub fn claims(&self, sub: &str, tenant: &str, roles: &[&str]) -> Value {
        let now = jsonwebtoken::get_current_timestamp();
        json!({"iss": self.iss, "aud": AUDIENCE, "sub": sub, "exp": now + 600, "iat": now,
               "tenant_id": tenant, "roles": roles})
    }

    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }

    pub fn sign_with_header(&self, header: Header, claims: &Value) -> String {
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }

    pub fn token(&self, sub: &str, tenant: &str, roles: &[&str]) -> String {
        self.sign(&self.claims(sub, tenant, roles))
    }
}

pub fn jwks(issuers: &[&Issuer]) -> String {
    serde_json::to_string(&JwkSet {
        keys: issuers.iter().map(|issuer| issuer.jwk()).collect(),
    })
    .unwrap()
}

#[derive(Default)]
struct Published {
    documents: HashMap<String, String>,
    fetches: HashMap<String, u64>,
    down: bool,
}

/// An HTTPS server (the development server certificate, `localhost`) publishing JWKS
/// documents by path, counting fetches, and able to go down.
#[derive(Clone)]
pub struct JwksServer {
    pub addr: SocketAddr,
    state: Arc<Mutex<Published>>,
    accepting: Arc<Mutex<Option<tokio::task::AbortHandle>>>,
}

impl JwksServer {
    pub async fn start() -> JwksServer {
        use rustls::pki_types::pem::PemObject;
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(dev_cert("server.crt"))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(dev_cert("server.key")).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = JwksServer {
            addr: listener.local_addr().unwrap(),
            state: Arc::default(),
            accepting: Arc::default(),
        };
        let state = server.state.clone();
        let accepting = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let state = state.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(
                        move |request: http::Request<hyper::body::Incoming>| {
                            let state = state.clone();
                            async move {
                                let mut state = state.lock().unwrap();
                                let path = request.uri().path().to_owned();
                                *state.fetches.entry(path.clone()).or_default() += 1;
                                let response = match (state.down, state.documents.get(&path)) {
                                    (false, Some(document)) => http::Response::builder()
                                        .header("content-type", "application/json")
                                        .body(Full::new(Bytes::from(document.clone()))),
                                    _ => http::Response::builder()
                                        .status(503)
                                        .body(Full::new(Bytes::new())),
                                };
                                Ok::<_, std::convert::Infallible>(response.unwrap())
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        *server.accepting.lock().unwrap() = Some(accepting.abort_handle());
        server
    }

    /// Stops the server for good: the listening socket closes, so every fetch from now on
    /// fails to connect, as when the issuer's host is gone.
    pub async fn stop(&self) {
        let Some(accepting) = self.accepting.lock().unwrap().take() else {
            return;
        };
        accepting.abort();
        // Closed once the aborted task is gone: probe until a connect is refused.
        let deadline = tokio::time::Instant::now() + crate::support::PATIENCE;
        while tokio::net::TcpStream::connect(self.addr).await.is_ok() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the JWKS server still accepts connections"
            );
            tokio::task::yield_now().await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    pub fn publish(&self, path: &str, document: String) {
        self.state
            .lock()
            .unwrap()
            .documents
            .insert(path.to_owned(), document);
    }

    pub fn fetches(&self, path: &str) -> u64 {
        self.state
            .lock()
            .unwrap()
            .fetches
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    pub fn set_down(&self, down: bool) {
        self.state.lock().unwrap().down = down;
    }
}

/// One JWT provider entry for `issuer`, its key set written into `dir`.
pub fn provider(dir: &Path, name: &str, issuer: &Issuer, extra: &str) -> String {
    let file = dir.join(format!("{name}.json"));
    std::fs::write(&file, jwks(&[issuer])).unwrap();
    format!(
        "      - {{ name: {name}, issuer: \"{}\", audiences: [{AUDIENCE}], algorithms: [{:?}], jwks_file: \"{}\"{extra} }}\n",
        issuer.iss,
        issuer.alg,
        file.display()
    )
}
