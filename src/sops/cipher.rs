//! sops' value cipher: `ENC[AES256_GCM,data:…,iv:…,tag:…,type:…]` strings, AES-256-GCM with a
//! 32-byte IV and the key path as additional data; and the bytes each value adds to the MAC.

use aes_gcm::aead::consts::U32;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::aes::Aes256;
use aes_gcm::{AesGcm, Nonce};
use base64::Engine as _;

use super::tree::Node;

/// AES-256-GCM as sops uses it: 32-byte IVs (`cipher.NewGCMWithNonceSize(…, 32)`).
type SopsGcm = AesGcm<Aes256, U32>;

/// Why one value could not be decrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueError {
    /// Not in sops' `ENC[AES256_GCM,…]` form, or not base64 inside.
    Malformed(&'static str),
    /// The authentication tag does not verify: the value, its IV or its place was changed, or
    /// the data key is not the one it was encrypted with.
    Tampered,
    /// The plaintext does not read as its declared type.
    BadType(String),
    /// A type gitopsd does not decrypt (bytes, time, comment).
    UnsupportedType(String),
}

/// The parts of an encrypted value.
struct Encrypted {
    data: Vec<u8>,
    iv: Vec<u8>,
    tag: Vec<u8>,
    kind: String,
}

fn field<'a>(rest: &'a str, name: &str) -> Option<(&'a str, &'a str)> {
    let rest = rest.strip_prefix(name)?.strip_prefix(':')?;
    Some(rest.split_once(',').unwrap_or((rest, "")))
}

/// Reads `ENC[AES256_GCM,data:<b64>,iv:<b64>,tag:<b64>,type:<type>]`, as sops' regular
/// expression does.
fn parse(value: &str) -> Result<Encrypted, ValueError> {
    let inner = value
        .strip_prefix("ENC[AES256_GCM,")
        .and_then(|rest| rest.strip_suffix(']'))
        .ok_or(ValueError::Malformed("not an ENC[AES256_GCM,…] value"))?;
    let malformed = ValueError::Malformed("not an ENC[AES256_GCM,data:…,iv:…,tag:…,type:…] value");
    let (data, rest) = field(inner, "data").ok_or(malformed.clone())?;
    let (iv, rest) = field(rest, "iv").ok_or(malformed.clone())?;
    let (tag, rest) = field(rest, "tag").ok_or(malformed.clone())?;
    let (kind, rest) = field(rest, "type").ok_or(malformed.clone())?;
    if !rest.is_empty() {
        return Err(malformed);
    }
    let decode = |text: &str| {
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|_| ValueError::Malformed("a part of the value is not base64"))
    };
    Ok(Encrypted {
        data: decode(data)?,
        iv: decode(iv)?,
        tag: decode(tag)?,
        kind: kind.to_string(),
    })
}

/// Decrypts one value with the data key; `additional` is the key path joined with `:` plus a
/// trailing `:`. An empty string stays empty, as sops leaves it unencrypted.
pub fn decrypt_value(value: &str, key: &[u8; 32], additional: &str) -> Result<Node, ValueError> {
    if value.is_empty() {
        return Ok(Node::Str(String::new()));
    }
    let plain = decrypt_bytes(value, key, additional)?;
    let (bytes, kind) = plain;
    let text = || String::from_utf8(bytes.clone()).map_err(|_| bad_type(&kind));
    match kind.as_str() {
        "str" => Ok(Node::Str(text()?)),
        "int" => text()?
            .parse::<i64>()
            .map(Node::Int)
            .map_err(|_| bad_type(&kind)),
        "float" => text()?
            .parse::<f64>()
            .map(Node::Float)
            .map_err(|_| bad_type(&kind)),
        "bool" => parse_bool(&text()?)
            .map(Node::Bool)
            .ok_or_else(|| bad_type(&kind)),
        other => Err(ValueError::UnsupportedType(other.to_string())),
    }
}

/// Decrypts the MAC, a `str` value whose additional data is `lastmodified`.
pub fn decrypt_text(value: &str, key: &[u8; 32], additional: &str) -> Result<String, ValueError> {
    if value.is_empty() {
        return Ok(String::new());
    }
    let (bytes, kind) = decrypt_bytes(value, key, additional)?;
    String::from_utf8(bytes).map_err(|_| bad_type(&kind))
}

fn decrypt_bytes(
    value: &str,
    key: &[u8; 32],
    additional: &str,
) -> Result<(Vec<u8>, String), ValueError> {
    let encrypted = parse(value)?;
    if encrypted.iv.len() != 32 || encrypted.tag.len() != 16 {
        return Err(ValueError::Malformed("the IV or tag has the wrong length"));
    }
    let cipher = SopsGcm::new(key.into());
    let mut message = encrypted.data;
    message.extend_from_slice(&encrypted.tag);
    let nonce = Nonce::<U32>::from_slice(&encrypted.iv);
    let plain = cipher
        .decrypt(
            nonce,
            Payload {
                msg: &message,
                aad: additional.as_bytes(),
            },
        )
        .map_err(|_| ValueError::Tampered)?;
    Ok((plain, encrypted.kind))
}

fn bad_type(kind: &str) -> ValueError {
    ValueError::BadType(kind.to_string())
}

/// Go's `strconv.ParseBool`.
fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// The bytes a value adds to the MAC (sops' `ToBytes`); `None` for nodes that add none.
pub fn mac_bytes(node: &Node) -> Option<Vec<u8>> {
    let text = match node {
        Node::Str(text) => text.clone(),
        Node::Int(value) => value.to_string(),
        Node::UInt(value) => value.to_string(),
        Node::Float(value) => go_float(*value),
        Node::Bool(true) => "True".into(),
        Node::Bool(false) => "False".into(),
        Node::Null | Node::Seq(_) | Node::Map(_) => return None,
    };
    Some(text.into_bytes())
}

/// Go's `strconv.FormatFloat(value, 'f', -1, 64)`: the shortest decimal that reads back the
/// same, without an exponent.
fn go_float(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        // Rust's Display is the shortest round-trip form and never uses an exponent.
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A data key for the tests' own values (the integration tests use files sops wrote).
    const KEY: [u8; 32] = [7; 32];

    fn encrypt(plain: &[u8], kind: &str, additional: &str, iv: [u8; 32]) -> String {
        let cipher = SopsGcm::new((&KEY).into());
        let sealed = cipher
            .encrypt(
                Nonce::<U32>::from_slice(&iv),
                Payload {
                    msg: plain,
                    aad: additional.as_bytes(),
                },
            )
            .expect("encrypts");
        let (data, tag) = sealed.split_at(sealed.len() - 16);
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        format!(
            "ENC[AES256_GCM,data:{},iv:{},tag:{},type:{kind}]",
            b64(data),
            b64(&iv),
            b64(tag)
        )
    }

    #[test]
    fn values_decrypt_to_their_type() {
        let path = "stringData:a:";
        for (plain, kind, expected) in [
            ("hello", "str", Node::Str("hello".into())),
            ("42", "int", Node::Int(42)),
            ("1.5", "float", Node::Float(1.5)),
            ("True", "bool", Node::Bool(true)),
            ("False", "bool", Node::Bool(false)),
        ] {
            let value = encrypt(plain.as_bytes(), kind, path, [1; 32]);
            assert_eq!(decrypt_value(&value, &KEY, path), Ok(expected));
        }
        assert_eq!(decrypt_value("", &KEY, path), Ok(Node::Str(String::new())));
    }

    #[test]
    fn a_value_moved_changed_or_retyped_does_not_verify() {
        let value = encrypt(b"hello", "str", "data:a:", [2; 32]);
        assert_eq!(
            decrypt_value(&value, &KEY, "data:b:"),
            Err(ValueError::Tampered),
            "another place"
        );
        let mut bytes = value.clone().into_bytes();
        bytes[20] = if bytes[20] == b'A' { b'B' } else { b'A' };
        let changed = String::from_utf8(bytes).expect("ascii");
        assert_eq!(
            decrypt_value(&changed, &KEY, "data:a:"),
            Err(ValueError::Tampered)
        );
        assert_eq!(
            decrypt_value(&value, &[8; 32], "data:a:"),
            Err(ValueError::Tampered),
            "another key"
        );
        assert!(matches!(
            decrypt_value("ENC[AES256_GCM,data:!!]", &KEY, ""),
            Err(ValueError::Malformed(_))
        ));
        let bytes = encrypt(b"x", "bytes", "a:", [3; 32]);
        assert_eq!(
            decrypt_value(&bytes, &KEY, "a:"),
            Err(ValueError::UnsupportedType("bytes".into()))
        );
        let int = encrypt(b"x", "int", "a:", [3; 32]);
        assert_eq!(
            decrypt_value(&int, &KEY, "a:"),
            Err(ValueError::BadType("int".into()))
        );
    }

    #[test]
    fn mac_bytes_are_gos() {
        let text =
            |node: Node| String::from_utf8(mac_bytes(&node).expect("a scalar")).expect("utf-8");
        assert_eq!(text(Node::Float(1.5)), "1.5");
        assert_eq!(text(Node::Float(1000.0)), "1000");
        assert_eq!(text(Node::Float(1e21)), "1000000000000000000000");
        assert_eq!(text(Node::Float(0.000001)), "0.000001");
        assert_eq!(text(Node::Float(f64::INFINITY)), "+Inf");
        assert_eq!(text(Node::Bool(true)), "True");
        assert_eq!(text(Node::Int(-3)), "-3");
        assert_eq!(mac_bytes(&Node::Null), None);
    }
}
