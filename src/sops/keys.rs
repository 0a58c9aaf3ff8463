//! age identities (the `age-keygen` file format) and unwrapping a file's data key with them;
//! reading the key file, which must not be readable by every user.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::str::FromStr as _;

use thiserror::Error;

/// The age identities of one key file. Debug never prints them.
#[derive(Clone)]
pub struct Identities {
    keys: Vec<age::x25519::Identity>,
    /// Where they were read from, for error messages.
    pub source: String,
}

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identities({} from {})", self.keys.len(), self.source)
    }
}

/// Why a key file gives no identities.
#[derive(Debug, Error)]
pub enum KeyFileError {
    #[error("age key file {path}: {message}")]
    Unusable { path: PathBuf, message: String },
    /// No file at `path` (a CI job previewing a pull request has no key).
    #[error("age key file {path}: does not exist")]
    Absent { path: PathBuf },
}

impl Identities {
    /// Reads `AGE-SECRET-KEY-1…` lines; blank lines and `#` comments are skipped, as age
    /// does. A line that is not a valid identity is an error naming its number, never its text.
    pub fn parse(text: &str, source: &str) -> Result<Self, String> {
        let mut keys = Vec::new();
        for (number, line) in (1..).zip(text.lines()) {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = age::x25519::Identity::from_str(line)
                .map_err(|_| format!("line {number} is not an age identity (AGE-SECRET-KEY-1…)"))?;
            keys.push(key);
        }
        if keys.is_empty() {
            return Err("holds no age identity (AGE-SECRET-KEY-1…)".into());
        }
        Ok(Self {
            keys,
            source: source.to_string(),
        })
    }

    /// The recipients (public keys) of these identities.
    pub fn recipients(&self) -> Vec<String> {
        self.keys
            .iter()
            .map(|key| key.to_public().to_string())
            .collect()
    }

    /// Unwraps the data key from an armored age file (sops' `enc`); `None` when no identity
    /// opens it.
    pub fn unwrap(&self, armored: &str) -> Result<Option<[u8; 32]>, String> {
        let reader = age::armor::ArmoredReader::new(armored.as_bytes());
        let decryptor = age::Decryptor::new(reader)
            .map_err(|error| format!("the wrapped data key is not an age file: {error}"))?;
        let identities = self.keys.iter().map(|key| key as &dyn age::Identity);
        let mut stream = match decryptor.decrypt(identities) {
            Ok(stream) => stream,
            Err(age::DecryptError::NoMatchingKeys) => return Ok(None),
            Err(error) => return Err(format!("cannot unwrap the data key: {error}")),
        };
        let mut key = Vec::new();
        stream
            .read_to_end(&mut key)
            .map_err(|error| format!("cannot unwrap the data key: {error}"))?;
        <[u8; 32]>::try_from(key.as_slice())
            .map(Some)
            .map_err(|_| format!("the data key is {} bytes, not 32", key.len()))
    }
}

/// Reads an age key file, refusing one that every user may read (as the API token file).
pub async fn load(path: &Path) -> Result<Identities, KeyFileError> {
    use std::os::unix::fs::PermissionsExt as _;
    let unusable = |message: String| KeyFileError::Unusable {
        path: path.to_path_buf(),
        message,
    };
    let metadata = tokio::fs::metadata(path).await.map_err(|error| {
        if error.kind() == std::io::ErrorKind::NotFound {
            KeyFileError::Absent {
                path: path.to_path_buf(),
            }
        } else {
            unusable(format!("cannot read it: {error}"))
        }
    })?;
    let mode = metadata.permissions().mode();
    if mode & 0o004 != 0 {
        return Err(unusable(format!(
            "is readable by every user (mode {:o}); chmod 600 it",
            mode & 0o777
        )));
    }
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|error| unusable(format!("cannot read it: {error}")))?;
    Identities::parse(&text, &path.display().to_string()).map_err(unusable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_as_age_keygen_writes_them() {
        let one = age::x25519::Identity::generate();
        let two = age::x25519::Identity::generate();
        let text = format!(
            "# created: 2026-12-07T04:23:07Z\n# public key: {}\n{}\n\n{}\n",
            one.to_public(),
            secrecy_text(&one),
            secrecy_text(&two)
        );
        let identities = Identities::parse(&text, "keys.txt").expect("valid");
        assert_eq!(
            identities.recipients(),
            [one.to_public().to_string(), two.to_public().to_string()]
        );
        assert!(!format!("{identities:?}").contains("AGE-SECRET-KEY"));
        let bad = Identities::parse("AGE-SECRET-KEY-1NOPE\n", "k").expect_err("invalid");
        assert_eq!(bad, "line 1 is not an age identity (AGE-SECRET-KEY-1…)");
        assert!(Identities::parse("# nothing\n", "k").is_err());
    }

    fn secrecy_text(identity: &age::x25519::Identity) -> String {
        use age::secrecy::ExposeSecret as _;
        identity.to_string().expose_secret().to_string()
    }

    #[test]
    fn a_data_key_unwraps_with_any_matching_identity_only() {
        let mine = age::x25519::Identity::generate();
        let theirs = age::x25519::Identity::generate();
        let data_key = [9u8; 32];
        let recipients = [mine.to_public()];
        let encryptor =
            age::Encryptor::with_recipients(recipients.iter().map(|r| r as &dyn age::Recipient))
                .expect("a recipient");
        let mut armored = Vec::new();
        let armor =
            age::armor::ArmoredWriter::wrap_output(&mut armored, age::armor::Format::AsciiArmor)
                .expect("armor");
        let mut writer = encryptor.wrap_output(armor).expect("writer");
        std::io::Write::write_all(&mut writer, &data_key).expect("write");
        writer
            .finish()
            .and_then(|armor| armor.finish())
            .expect("finish");
        let armored = String::from_utf8(armored).expect("armor is text");
        let both = Identities::parse(
            &format!("{}\n{}\n", secrecy_text(&theirs), secrecy_text(&mine)),
            "k",
        )
        .expect("valid");
        assert_eq!(both.unwrap(&armored), Ok(Some(data_key)));
        let other = Identities::parse(&secrecy_text(&theirs), "k").expect("valid");
        assert_eq!(other.unwrap(&armored), Ok(None));
        assert!(other.unwrap("not age").is_err());
    }
}
