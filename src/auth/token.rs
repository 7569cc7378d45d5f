//! `gatehouse token`: mints a JWT from a key file, for trying calls by hand. The claims
//! are those a provider checks: `iss`, `aud`, `sub`, `exp` (now plus the lifetime), `iat`,
//! and the tenant and roles when given; with `--bind-cert`, the `cnf` claim that binds
//! the token to a client certificate (RFC 8705).

use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;

use crate::cli::TokenArgs;
use crate::config::{AlgorithmError, Family, parse_algorithms};
use crate::sha256::sha256;

/// Why `gatehouse token` could not make a token; each names the option at fault.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// `--alg` is not an algorithm gatehouse signs with.
    #[error(transparent)]
    Algorithm(#[from] AlgorithmError),
    /// `--key` cannot be read.
    #[error("--key {}: {source}", path.display())]
    ReadKey {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `--key` holds no key of the family `--alg` needs.
    #[error("--key {}: not a {family:?} key: {source}", path.display())]
    NotAKey {
        path: PathBuf,
        family: Family,
        #[source]
        source: jsonwebtoken::errors::Error,
    },
    /// `--bind-cert` is unreadable or holds no certificate.
    #[error("--bind-cert: {0}")]
    BindCert(String),
    /// The signing itself failed.
    #[error("signing failed: {0}")]
    Signing(#[source] jsonwebtoken::errors::Error),
}

/// The signed token, or why it could not be made.
pub fn mint(args: &TokenArgs) -> Result<String, TokenError> {
    let algorithm = parse_algorithms(std::slice::from_ref(&args.alg))?[0];
    let family = Family::of(std::slice::from_ref(&args.alg))?;
    let bytes = std::fs::read(&args.key).map_err(|source| TokenError::ReadKey {
        path: args.key.clone(),
        source,
    })?;
    let invalid = |source| TokenError::NotAKey {
        path: args.key.clone(),
        family,
        source,
    };
    let key = match family {
        Family::Rsa | Family::RsaPss => EncodingKey::from_rsa_pem(&bytes).map_err(invalid)?,
        Family::Ec => EncodingKey::from_ec_pem(&bytes).map_err(invalid)?,
        Family::Ed => EncodingKey::from_ed_pem(&bytes).map_err(invalid)?,
        Family::Hmac => EncodingKey::from_secret(bytes.strip_suffix(b"\n").unwrap_or(&bytes)),
    };
    let now = crate::clock::unix_now();
    // One audience stays a plain string, the form most issuers write.
    let aud = match args.aud.as_slice() {
        [one] => json!(one),
        many => json!(many),
    };
    let mut claims = json!({
        "iss": args.iss,
        "aud": aud,
        "sub": args.sub,
        "iat": now,
        "exp": now + args.ttl.get().as_secs(),
    });
    if let Some(tenant) = &args.tenant {
        claims["tenant_id"] = json!(tenant);
    }
    if !args.roles.is_empty() {
        claims["roles"] = json!(args.roles);
    }
    if let Some(path) = &args.bind_cert {
        let certs = crate::tls::load_certs(path).map_err(TokenError::BindCert)?;
        // The leaf is first in a chain file; it is the certificate the client presents.
        let leaf = certs
            .first()
            .ok_or_else(|| TokenError::BindCert("no certificate".into()))?;
        claims["cnf"] = json!({ "x5t#S256": URL_SAFE_NO_PAD.encode(sha256(leaf)) });
    }
    let mut header = Header::new(algorithm);
    header.kid = args.kid.clone();
    jsonwebtoken::encode(&header, &claims, &key).map_err(TokenError::Signing)
}
