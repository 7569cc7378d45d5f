//! Certificate-bound tokens (RFC 8705): a JWT whose `cnf` claim names the SHA-256
//! thumbprint of a client certificate (`x5t#S256`) is good only on a connection that
//! presented that certificate, so a token stolen from one workload is useless from another.
//!
//! The thumbprint is read from the claims once, when the token is verified, and kept with
//! the cached identity; [`check`] compares it with the connection's certificate on every
//! call, after the cache, because one token may arrive on many connections.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

use crate::auth::outcome::Refusal;
use crate::grpc::Reason;
use crate::sha256::parse_sha256;
use crate::tls::PeerIdentity;

/// The SHA-256 of a DER certificate, as `cnf.x5t#S256` names it.
pub type Thumbprint = [u8; 32];

/// The certificate thumbprint a token is bound to: `None` when it has no `cnf` claim.
///
/// A `cnf` that binds the token some other way (a `jwk` or `jkt` for DPoP) is refused
/// rather than ignored: its issuer meant it to be unusable as a plain bearer token, and
/// gatehouse cannot check that kind of proof.
pub fn thumbprint(claims: &Value) -> Result<Option<Thumbprint>, Refusal> {
    let Some(cnf) = claims.get("cnf") else {
        return Ok(None);
    };
    let malformed =
        |message: &'static str| Refusal::unauthenticated(Reason::MalformedClaim, message);
    let Some(encoded) = cnf.get("x5t#S256") else {
        return Err(malformed(
            "cnf claim has no x5t#S256: only certificate-bound tokens are accepted",
        ));
    };
    let bytes = encoded
        .as_str()
        .and_then(|text| URL_SAFE_NO_PAD.decode(text).ok())
        .ok_or_else(|| malformed("malformed cnf claim: x5t#S256 is not base64url"))?;
    let thumbprint = Thumbprint::try_from(bytes.as_slice())
        .map_err(|_| malformed("malformed cnf claim: x5t#S256 is not a SHA-256 thumbprint"))?;
    Ok(Some(thumbprint))
}

/// Whether a token bound to `bound` (or not bound, `None`) may be used on a connection
/// whose verified client certificate is `peer`. `required` is the provider's
/// `require_cert_binding`.
pub fn check(
    bound: Option<&Thumbprint>,
    required: bool,
    peer: Option<&PeerIdentity>,
) -> Result<(), Refusal> {
    let Some(bound) = bound else {
        return if required {
            Err(Refusal::unauthenticated(
                Reason::CertBindingRequired,
                "token is not bound to a client certificate (cnf.x5t#S256), which this issuer requires",
            ))
        } else {
            Ok(())
        };
    };
    let mismatch =
        |message: &'static str| Refusal::unauthenticated(Reason::CertBindingMismatch, message);
    let Some(peer) = peer else {
        return Err(mismatch(
            "token is bound to a client certificate and this connection presented none",
        ));
    };
    // The connection's thumbprint was computed once, at the handshake, for
    // x-forwarded-client-cert; it is always 64 hex characters.
    let presented = parse_sha256(&peer.sha256)
        .ok_or_else(|| mismatch("token is bound to another certificate"))?;
    // Constant time, so the comparison reveals nothing about how much of a guessed
    // thumbprint was right.
    aws_lc_rs::constant_time::verify_slices_are_equal(bound, &presented)
        .map_err(|_| mismatch("token is bound to another certificate"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::grpc::Code;
    use crate::sha256::{sha256, to_hex};

    fn peer(der: &[u8]) -> PeerIdentity {
        PeerIdentity {
            sha256: to_hex(&sha256(der)),
            ..PeerIdentity::default()
        }
    }

    fn claims_bound_to(der: &[u8]) -> Value {
        json!({"sub": "u1", "cnf": {"x5t#S256": URL_SAFE_NO_PAD.encode(sha256(der))}})
    }

    #[test]
    fn accepts_a_bound_token_only_from_its_certificate() {
        let bound = thumbprint(&claims_bound_to(b"cert A")).unwrap();
        assert!(bound.is_some());
        assert!(check(bound.as_ref(), false, Some(&peer(b"cert A"))).is_ok());
        assert!(check(bound.as_ref(), true, Some(&peer(b"cert A"))).is_ok());
        for other in [Some(peer(b"cert B")), None] {
            let refusal = check(bound.as_ref(), false, other.as_ref()).unwrap_err();
            assert_eq!(refusal.code, Code::Unauthenticated);
            assert_eq!(refusal.reason.label(), "cert_binding_mismatch");
            assert!(refusal.message.contains("token is bound to"), "{refusal:?}");
        }
    }

    #[test]
    fn unbound_tokens_pass_unless_the_provider_requires_binding() {
        let unbound = thumbprint(&json!({"sub": "u1"})).unwrap();
        assert_eq!(unbound, None);
        assert!(check(None, false, Some(&peer(b"cert A"))).is_ok());
        assert!(check(None, false, None).is_ok());
        let refusal = check(None, true, Some(&peer(b"cert A"))).unwrap_err();
        assert_eq!(
            (refusal.code, refusal.reason.label()),
            (Code::Unauthenticated, "cert_binding_required")
        );
    }

    #[test]
    fn refuses_cnf_claims_it_cannot_check() {
        for cnf in [
            json!({"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}),
            json!({"x5t#S256": 12}),
            json!({"x5t#S256": "not base64url!"}),
            json!({"x5t#S256": URL_SAFE_NO_PAD.encode([1u8; 20])}),
            json!("x5t#S256"),
        ] {
            let refusal = thumbprint(&json!({"sub": "u1", "cnf": cnf})).unwrap_err();
            assert_eq!(refusal.code, Code::Unauthenticated, "{cnf}");
            assert_eq!(refusal.reason.label(), "malformed_claim", "{cnf}");
        }
    }
}
