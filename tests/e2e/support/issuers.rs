//! Token issuers for the authentication tests: signing keys of every algorithm family
//! made at test time, their JWKS, and an HTTPS server that publishes key sets.

use std::path::Path;

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

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

/// An HTTPS server publishing JWKS documents by path, as an identity provider does.
pub use gatehouse::test_util::JwksServer;

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
