//! The `sops:` block: the data key wrapped for each recipient, the encrypted MAC and its
//! timestamp, and the rule that says which values are encrypted (sops' `shouldBeEncrypted`).

use regex::Regex;

use super::tree::Node;

/// Key types sops can wrap a data key with that gitopsd does not decrypt.
const OTHER_KEY_TYPES: [(&str, &str); 6] = [
    ("kms", "AWS KMS"),
    ("gcp_kms", "GCP KMS"),
    ("azure_kv", "Azure Key Vault"),
    ("hc_vault", "HashiCorp Vault"),
    ("hckms", "HuaweiCloud KMS"),
    ("pgp", "PGP"),
];

/// What the `sops:` block says, as far as gitopsd uses it.
#[derive(Debug, Clone, PartialEq)]
pub struct Metadata {
    /// `(recipient, armored age file holding the data key)` for each age recipient.
    pub age: Vec<(String, String)>,
    /// Names of the other key types the data key is wrapped for (`AWS KMS`, `PGP`, …).
    pub other_keys: Vec<&'static str>,
    /// `lastmodified` as sops formats it again before using it as the MAC's additional data.
    pub last_modified: String,
    pub mac: String,
    pub mac_only_encrypted: bool,
    pub rule: Rule,
}

/// Which values of the tree are encrypted: sops allows one rule per file, and without one
/// every value but those under a key ending in `_unencrypted`.
#[derive(Debug, Clone)]
pub enum Rule {
    UnencryptedSuffix(String),
    EncryptedSuffix(String),
    UnencryptedRegex(Regex),
    EncryptedRegex(Regex),
}

impl PartialEq for Rule {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Rule::UnencryptedSuffix(a), Rule::UnencryptedSuffix(b))
            | (Rule::EncryptedSuffix(a), Rule::EncryptedSuffix(b)) => a == b,
            (Rule::UnencryptedRegex(a), Rule::UnencryptedRegex(b))
            | (Rule::EncryptedRegex(a), Rule::EncryptedRegex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

impl Rule {
    /// Whether the value at `path` (the mapping keys above it) is encrypted.
    pub fn encrypts(&self, path: &[&str]) -> bool {
        match self {
            Rule::UnencryptedSuffix(suffix) => {
                !path.iter().any(|key| key.ends_with(suffix.as_str()))
            }
            Rule::EncryptedSuffix(suffix) => path.iter().any(|key| key.ends_with(suffix.as_str())),
            Rule::UnencryptedRegex(regex) => !path.iter().any(|key| regex.is_match(key)),
            Rule::EncryptedRegex(regex) => path.iter().any(|key| regex.is_match(key)),
        }
    }
}

/// Why a `sops:` block cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataError {
    /// Missing or malformed entries.
    Invalid(String),
    /// Something sops supports and gitopsd does not.
    Unsupported(String),
    /// No age recipient: only these other key types.
    NoAgeKeys(Vec<&'static str>),
}

fn text(block: &Node, key: &str) -> Result<Option<String>, MetadataError> {
    match block.get(key) {
        None | Some(Node::Null) => Ok(None),
        Some(Node::Str(value)) => Ok(Some(value.clone())),
        Some(_) => Err(MetadataError::Invalid(format!(
            "sops.{key} is not a string"
        ))),
    }
}

/// Reads a `sops:` block.
pub fn read(block: &Node) -> Result<Metadata, MetadataError> {
    if !matches!(block, Node::Map(_)) {
        return Err(MetadataError::Invalid(
            "the sops entry is not a mapping".into(),
        ));
    }
    if block.get("key_groups").is_some() {
        return Err(MetadataError::Unsupported(
            "key groups (Shamir secret sharing) are not supported; encrypt for age recipients without key_groups".into(),
        ));
    }
    for comments in ["encrypted_comment_regex", "unencrypted_comment_regex"] {
        if text(block, comments)?.is_some() {
            return Err(MetadataError::Unsupported(format!(
                "sops.{comments} is not supported"
            )));
        }
    }
    let other_keys: Vec<&'static str> = OTHER_KEY_TYPES
        .iter()
        .filter(|(key, _)| matches!(block.get(key), Some(Node::Seq(items)) if !items.is_empty()))
        .map(|(_, name)| *name)
        .collect();
    let age = age_recipients(block)?;
    if age.is_empty() {
        return Err(MetadataError::NoAgeKeys(other_keys));
    }
    let last_modified = text(block, "lastmodified")?
        .ok_or_else(|| MetadataError::Invalid("sops.lastmodified is missing".into()))?;
    let last_modified = chrono::DateTime::parse_from_rfc3339(&last_modified)
        .map_err(|_| MetadataError::Invalid("sops.lastmodified is not an RFC 3339 time".into()))?
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mac = text(block, "mac")?.unwrap_or_default();
    let mac_only_encrypted = match block.get("mac_only_encrypted") {
        None | Some(Node::Null) => false,
        Some(Node::Bool(value)) => *value,
        Some(Node::Str(value)) => value.eq_ignore_ascii_case("true"),
        Some(_) => {
            return Err(MetadataError::Invalid(
                "sops.mac_only_encrypted is not a boolean".into(),
            ));
        }
    };
    Ok(Metadata {
        age,
        other_keys,
        last_modified,
        mac,
        mac_only_encrypted,
        rule: rule(block)?,
    })
}

fn age_recipients(block: &Node) -> Result<Vec<(String, String)>, MetadataError> {
    let items = match block.get("age") {
        None | Some(Node::Null) => return Ok(Vec::new()),
        Some(Node::Seq(items)) => items,
        Some(_) => return Err(MetadataError::Invalid("sops.age is not a list".into())),
    };
    items
        .iter()
        .map(|item| {
            let recipient = text(item, "recipient")?.unwrap_or_default();
            let enc = text(item, "enc")?
                .ok_or_else(|| MetadataError::Invalid("an sops.age entry has no enc".into()))?;
            Ok((recipient, enc))
        })
        .collect()
}

/// The file's one encryption rule (sops' `ToInternal`).
fn rule(block: &Node) -> Result<Rule, MetadataError> {
    let mut rules = Vec::new();
    for key in [
        "unencrypted_suffix",
        "encrypted_suffix",
        "unencrypted_regex",
        "encrypted_regex",
    ] {
        if let Some(value) = text(block, key)?.filter(|value| !value.is_empty()) {
            rules.push((key, value));
        }
    }
    if rules.len() > 1 {
        return Err(MetadataError::Invalid(
            "more than one of encrypted_suffix, unencrypted_suffix, encrypted_regex and unencrypted_regex".into(),
        ));
    }
    let regex = |pattern: &str| {
        Regex::new(pattern)
            .map_err(|error| MetadataError::Invalid(format!("invalid regular expression: {error}")))
    };
    Ok(match rules.pop() {
        None => Rule::UnencryptedSuffix("_unencrypted".into()),
        Some(("unencrypted_suffix", value)) => Rule::UnencryptedSuffix(value),
        Some(("encrypted_suffix", value)) => Rule::EncryptedSuffix(value),
        Some(("unencrypted_regex", value)) => Rule::UnencryptedRegex(regex(&value)?),
        Some((_, value)) => Rule::EncryptedRegex(regex(&value)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(yaml: &str) -> Node {
        serde_saphyr::from_str(yaml).expect("valid YAML")
    }

    const AGE: &str = "age:\n  - recipient: age1abc\n    enc: |\n      -----BEGIN AGE ENCRYPTED FILE-----\n      x\n      -----END AGE ENCRYPTED FILE-----\nlastmodified: \"2026-12-07T04:23:07Z\"\nmac: ENC[x]\nversion: 3.11.0\n";

    #[test]
    fn a_block_without_a_rule_leaves_unencrypted_suffixes_alone() {
        let metadata = read(&block(AGE)).expect("valid");
        assert_eq!(metadata.age[0].0, "age1abc");
        assert!(metadata.age[0].1.starts_with("-----BEGIN AGE"));
        assert_eq!(metadata.last_modified, "2026-12-07T04:23:07Z");
        assert!(!metadata.mac_only_encrypted);
        assert!(metadata.rule.encrypts(&["data", "password"]));
        assert!(!metadata.rule.encrypts(&["data", "note_unencrypted", "x"]));
    }

    #[test]
    fn rules_follow_sops() {
        let with = |line: &str| read(&block(&format!("{AGE}{line}\n"))).expect("valid").rule;
        let regex = with("encrypted_regex: ^(data|stringData)$");
        assert!(regex.encrypts(&["data", "a"]));
        assert!(!regex.encrypts(&["metadata", "name"]));
        let unencrypted = with("unencrypted_regex: ^metadata$");
        assert!(!unencrypted.encrypts(&["metadata", "name"]));
        assert!(unencrypted.encrypts(&["spec", "x"]));
        let suffix = with("encrypted_suffix: _secret");
        assert!(suffix.encrypts(&["db_secret", "x"]));
        assert!(!suffix.encrypts(&["db", "x"]));
        let two = read(&block(&format!(
            "{AGE}encrypted_regex: a\nunencrypted_suffix: _u\n"
        )));
        assert!(matches!(two, Err(MetadataError::Invalid(_))), "{two:?}");
    }

    #[test]
    fn offsets_in_lastmodified_are_formatted_as_go_does() {
        let metadata = read(&block(&AGE.replace("04:23:07Z", "04:23:07.5+00:00"))).expect("valid");
        assert_eq!(metadata.last_modified, "2026-12-07T04:23:07Z");
    }

    #[test]
    fn files_without_age_keys_name_the_key_types_they_use() {
        let kms = block(
            "kms:\n  - arn: arn:aws:kms:us-east-1:1:key/x\n    enc: abc\npgp: []\nlastmodified: \"2026-12-07T04:23:07Z\"\nmac: ENC[x]\n",
        );
        assert_eq!(read(&kms), Err(MetadataError::NoAgeKeys(vec!["AWS KMS"])));
        let groups = block(&format!("{AGE}key_groups: []\n"));
        assert!(matches!(read(&groups), Err(MetadataError::Unsupported(_))));
    }
}
