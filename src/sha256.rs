//! SHA-256 digests and their hex form: certificate fingerprints, API key hashes, JWT
//! `x5t#S256` bindings and change detection for watched files.

/// A SHA-256 digest.
pub type Digest = [u8; 32];

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> Digest {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    digest.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// Parses the 64 hex characters of a stored hash, with or without a `sha256:` prefix.
pub fn parse_sha256(hex: &str) -> Option<Digest> {
    let hex = hex.strip_prefix("sha256:").unwrap_or(hex);
    if hex.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(digest)
}

/// Lowercase hex.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stored_hashes_with_or_without_prefix() {
        let hash = to_hex(&sha256(b"k"));
        assert_eq!(parse_sha256(&hash), Some(sha256(b"k")));
        assert_eq!(parse_sha256(&format!("sha256:{hash}")), Some(sha256(b"k")));
        assert_eq!(parse_sha256("abc"), None);
        assert_eq!(parse_sha256(&"zz".repeat(32)), None);
    }

    #[test]
    fn hashes_to_the_known_digest() {
        assert_eq!(
            to_hex(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
