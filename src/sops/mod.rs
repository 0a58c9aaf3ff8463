//! SOPS files encrypted for age recipients, decrypted as sops 3 does: the data key unwrapped
//! with the environment's age identities, every encrypted value checked and decrypted with
//! AES-256-GCM, and the MAC over the file's values verified. Pure but for [`keys::load`].

use serde_json::Value;
use sha2::{Digest as _, Sha512};
use subtle::ConstantTimeEq as _;
use thiserror::Error;

pub mod cipher;
pub mod documents;
pub mod keys;
pub mod metadata;
pub mod tree;

pub use documents::decrypt_documents;
pub use keys::{Identities, KeyFileError};
pub use tree::Node;

use cipher::ValueError;
use metadata::{Metadata, MetadataError};
use tree::Key;

/// The top-level key that marks a SOPS document.
pub const METADATA_KEY: &str = "sops";

/// sops' `MACOnlyEncryptedInitialization` (sha256 of `sops`), hashed first when only
/// encrypted values are in the MAC.
const MAC_ONLY_ENCRYPTED_INIT: [u8; 32] = [
    0x8a, 0x3f, 0xd2, 0xad, 0x54, 0xce, 0x66, 0x52, 0x7b, 0x10, 0x34, 0xf3, 0xd1, 0x47, 0xbe, 0x0b,
    0x0b, 0x97, 0x5b, 0x3b, 0xf4, 0x4f, 0x72, 0xc6, 0xfd, 0xad, 0xec, 0x81, 0x76, 0xf2, 0x7d, 0x69,
];

/// Why a SOPS file could not be decrypted. Messages name paths and recipients, never values.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SopsError {
    #[error("invalid sops metadata: {0}")]
    Metadata(String),
    #[error("{0}")]
    Unsupported(String),
    #[error(
        "encrypted only for {}; gitopsd decrypts SOPS files encrypted for age recipients only (sops --age)",
        .0.join(", ")
    )]
    OnlyOtherKeys(Vec<&'static str>),
    #[error(
        "no matching key: the file is encrypted for {} and none of the age identities in {key_file} is one of them",
        recipients.join(", ")
    )]
    NoMatchingKey {
        recipients: Vec<String>,
        key_file: String,
    },
    #[error("{0}")]
    DataKey(String),
    #[error("tampered value at {path}: it does not verify with the file's data key")]
    TamperedValue { document: usize, path: String },
    #[error("value at {path}: {message}")]
    BadValue {
        document: usize,
        path: String,
        message: String,
    },
    #[error(
        "MAC mismatch: the file was changed after sops encrypted it (a value, encrypted or not, or their order)"
    )]
    MacMismatch,
}

impl SopsError {
    /// The document (1-based among those decrypted together) the error is about, if one.
    pub fn document(&self) -> Option<usize> {
        match self {
            SopsError::TamperedValue { document, .. } | SopsError::BadValue { document, .. } => {
                Some(*document)
            }
            _ => None,
        }
    }
}

/// One decrypted document.
#[derive(Debug, Clone, PartialEq)]
pub struct Decrypted {
    /// The document without its `sops` entry, every value in the clear.
    pub body: Value,
    /// JSON pointers of the values that were encrypted: shown nowhere.
    pub encrypted: Vec<String>,
}

/// Whether a parsed document is a SOPS document (a mapping with a top-level `sops` entry).
pub fn is_encrypted(body: &Value) -> bool {
    body.get(METADATA_KEY).is_some()
}

/// Decrypts the documents of one SOPS file (one tree, one data key, one MAC over all of
/// them), with the `sops` block of the first.
pub fn decrypt(documents: &[Node], identities: &Identities) -> Result<Vec<Decrypted>, SopsError> {
    open(documents, identities).map(|opened| opened.documents)
}

/// A SOPS file whose data key was unwrapped and whose MAC verified.
pub struct Opened {
    metadata: Metadata,
    key: [u8; 32],
    /// Its documents, decrypted.
    pub documents: Vec<Decrypted>,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Opened({} documents)", self.documents.len())
    }
}

impl Opened {
    /// Decrypts another form of one of the file's documents (a render's output, its keys
    /// re-sorted) with the file's data key and rules: every encrypted value must verify where
    /// it stands; the MAC, verified on the file, is not computed again.
    pub fn decrypt_document(&self, document: &Node) -> Result<Decrypted, SopsError> {
        let mut unused = Sha512::new();
        let mut walk = Walk {
            metadata: &self.metadata,
            key: &self.key,
            hash: &mut unused,
            document: 1,
            encrypted: Vec::new(),
        };
        let body = walk.document(document)?;
        Ok(Decrypted {
            body,
            encrypted: walk.encrypted,
        })
    }
}

/// Unwraps the data key of one SOPS file, decrypts its documents and verifies the MAC.
pub fn open(documents: &[Node], identities: &Identities) -> Result<Opened, SopsError> {
    let block = documents
        .first()
        .and_then(|first| first.get(METADATA_KEY))
        .ok_or_else(|| SopsError::Metadata("the first document has no sops entry".into()))?;
    let metadata = metadata::read(block).map_err(|error| match error {
        MetadataError::Invalid(message) => SopsError::Metadata(message),
        MetadataError::Unsupported(message) => SopsError::Unsupported(message),
        MetadataError::NoAgeKeys(kinds) => SopsError::OnlyOtherKeys(kinds),
    })?;
    let key = data_key(&metadata, identities)?;
    let mut hash = Sha512::new();
    if metadata.mac_only_encrypted {
        hash.update(MAC_ONLY_ENCRYPTED_INIT);
    }
    let mut decrypted = Vec::new();
    for (index, document) in documents.iter().enumerate() {
        let mut walk = Walk {
            metadata: &metadata,
            key: &key,
            hash: &mut hash,
            document: index + 1,
            encrypted: Vec::new(),
        };
        let body = walk.document(document)?;
        let encrypted = walk.encrypted;
        decrypted.push(Decrypted { body, encrypted });
    }
    let computed = hex_upper(&hash.finalize());
    let stored = cipher::decrypt_text(&metadata.mac, &key, &metadata.last_modified)
        .map_err(|_| SopsError::MacMismatch)?;
    if !bool::from(computed.as_bytes().ct_eq(stored.as_bytes())) {
        return Err(SopsError::MacMismatch);
    }
    Ok(Opened {
        metadata,
        key,
        documents: decrypted,
    })
}

fn data_key(metadata: &Metadata, identities: &Identities) -> Result<[u8; 32], SopsError> {
    for (_, armored) in &metadata.age {
        if let Some(key) = identities.unwrap(armored).map_err(SopsError::DataKey)? {
            return Ok(key);
        }
    }
    Err(SopsError::NoMatchingKey {
        recipients: metadata.age.iter().map(|(r, _)| r.clone()).collect(),
        key_file: identities.source.clone(),
    })
}

fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02X}")).collect()
}

/// One document's walk in tree order: sops' `walkBranch`, the path being the mapping keys
/// above a value (sequence items share their parent's path).
struct Walk<'a> {
    metadata: &'a Metadata,
    key: &'a [u8; 32],
    hash: &'a mut Sha512,
    document: usize,
    encrypted: Vec<String>,
}

impl Walk<'_> {
    fn document(&mut self, document: &Node) -> Result<Value, SopsError> {
        let Node::Map(items) = document else {
            return Err(self.bad("", "a SOPS document must be a mapping".into()));
        };
        let mut map = serde_json::Map::new();
        for (key, value) in items {
            if key.as_str() == Some(METADATA_KEY) {
                continue;
            }
            let name = self.key_name(key, &[])?;
            let value = self.value(value, &mut vec![name], &mut vec![escape(name)])?;
            map.insert(name.to_string(), value);
        }
        Ok(Value::Object(map))
    }

    fn key_name<'n>(&self, key: &'n Key, path: &[&str]) -> Result<&'n str, SopsError> {
        match key {
            Key::Str(name) => Ok(name),
            Key::Other(what) => Err(self.bad(
                &path.join("."),
                format!("the key {what} is not a string; sops supports string keys only"),
            )),
        }
    }

    fn value<'n>(
        &mut self,
        node: &'n Node,
        path: &mut Vec<&'n str>,
        pointer: &mut Vec<String>,
    ) -> Result<Value, SopsError> {
        match node {
            Node::Map(items) => {
                let mut map = serde_json::Map::new();
                for (key, value) in items {
                    let name = self.key_name(key, path)?;
                    path.push(name);
                    pointer.push(escape(name));
                    let value = self.value(value, path, pointer);
                    path.pop();
                    pointer.pop();
                    map.insert(name.to_string(), value?);
                }
                Ok(Value::Object(map))
            }
            Node::Seq(items) => {
                let mut values = Vec::new();
                for (index, item) in items.iter().enumerate() {
                    pointer.push(index.to_string());
                    let value = self.value(item, path, pointer);
                    pointer.pop();
                    values.push(value?);
                }
                Ok(Value::Array(values))
            }
            Node::Null => Ok(Value::Null),
            leaf => self.leaf(leaf, path, pointer),
        }
    }

    fn leaf(&mut self, node: &Node, path: &[&str], pointer: &[String]) -> Result<Value, SopsError> {
        let encrypted = self.metadata.rule.encrypts(path);
        let plain = if encrypted {
            let Node::Str(text) = node else {
                return Err(self.bad(
                    &path.join("."),
                    "should be encrypted but is not an ENC[…] string".into(),
                ));
            };
            let additional = format!("{}:", path.join(":"));
            let plain = cipher::decrypt_value(text, self.key, &additional)
                .map_err(|error| self.value_error(path, error))?;
            self.encrypted.push(format!("/{}", pointer.join("/")));
            plain
        } else {
            node.clone()
        };
        if !self.metadata.mac_only_encrypted || encrypted {
            if let Some(bytes) = cipher::mac_bytes(&plain) {
                self.hash.update(bytes);
            }
        }
        plain
            .to_json()
            .ok_or_else(|| self.bad(&path.join("."), "is not a finite number".into()))
    }

    fn value_error(&self, path: &[&str], error: ValueError) -> SopsError {
        let path = path.join(".");
        match error {
            ValueError::Tampered => SopsError::TamperedValue {
                document: self.document,
                path,
            },
            ValueError::Malformed(message) => self.bad(&path, message.into()),
            ValueError::BadType(kind) => {
                self.bad(&path, format!("does not read as its type {kind}"))
            }
            ValueError::UnsupportedType(kind) => self.bad(
                &path,
                format!("type {kind} is not supported (str, int, float and bool are)"),
            ),
        }
    }

    fn bad(&self, path: &str, message: String) -> SopsError {
        SopsError::BadValue {
            document: self.document,
            path: if path.is_empty() {
                "(top)".into()
            } else {
                path.into()
            },
            message,
        }
    }
}

/// A JSON pointer segment.
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
#[path = "sops_tests.rs"]
mod tests;
