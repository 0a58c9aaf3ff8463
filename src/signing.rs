//! HMAC-SHA256 over raw request bodies: signing outgoing webhooks and checking the signatures
//! forges put on push events, compared in constant time.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The MAC of `body` under `secret`.
fn mac(secret: &[u8], body: &[u8]) -> HmacSha256 {
    let mut mac =
        HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length, so this holds");
    mac.update(body);
    mac
}

/// The lowercase hex HMAC-SHA256 of `body` under `secret` (what `openssl dgst -sha256 -hmac`
/// prints).
pub fn sign_hex(secret: &[u8], body: &[u8]) -> String {
    hex(&mac(secret, body).finalize().into_bytes())
}

/// Whether `signature` (hex, either case) is the HMAC-SHA256 of `body` under `secret`. The
/// comparison takes the same time wherever the first wrong byte is.
pub fn verify_hex(secret: &[u8], body: &[u8], signature: &str) -> bool {
    let Some(bytes) = unhex(signature.trim()) else {
        return false;
    };
    mac(secret, body).verify_slice(&bytes).is_ok()
}

/// Whether two byte strings are equal, in time that does not depend on where they differ.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(a.ct_eq(b))
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        // Writing into a String cannot fail.
        let _ = write!(text, "{byte:02x}");
    }
    text
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_published_hmac_sha256_test_vector() {
        // RFC 4231, test case 2.
        let signature = sign_hex(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            signature,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert!(verify_hex(
            b"Jefe",
            b"what do ya want for nothing?",
            &signature
        ));
        assert!(verify_hex(
            b"Jefe",
            b"what do ya want for nothing?",
            &signature.to_uppercase()
        ));
        assert!(!verify_hex(
            b"Jefe",
            b"what do ya want for nothing!",
            &signature
        ));
        assert!(!verify_hex(
            b"jefe",
            b"what do ya want for nothing?",
            &signature
        ));
        assert!(!verify_hex(b"Jefe", b"x", "zz"));
        assert!(!verify_hex(b"Jefe", b"x", "abc"));
        assert!(!verify_hex(b"Jefe", b"x", "é1"));
        assert!(!verify_hex(b"Jefe", b"x", ""));
    }

    #[test]
    fn same_compares_whole_strings() {
        assert!(same(b"token", b"token"));
        assert!(!same(b"token", b"tokem"));
        assert!(!same(b"token", b"token2"));
    }
}
