//! `[decryption]` (the default age key file, which `GITOPSD_DECRYPTION__AGE_KEY_FILE` can set)
//! and `[environment.decryption]` (SOPS decryption for one environment).

use std::path::{Path, PathBuf};

use super::check::{Checker, Unknown};
use super::join;
use super::raw::RawDecryption;

/// How an environment decrypts SOPS documents: with the age identities of one key file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecryptionConfig {
    /// An `age-keygen` file of `AGE-SECRET-KEY-1…` identities, not readable by every user.
    pub age_key_file: PathBuf,
}

impl Checker {
    /// The top-level `[decryption]` table: only `age_key_file`, the environments' default.
    pub(super) fn decryption_defaults(&mut self, raw: Option<RawDecryption>, base: &Path) {
        let Some(raw) = raw else {
            return;
        };
        let mut read = self.reader("decryption");
        read.unknown_if("provider", raw.provider.is_some());
        self.default_age_key_file = read.path("age_key_file", raw.age_key_file, base);
    }

    /// An environment's `decryption` table: `provider = "sops"` and an `age_key_file` (its
    /// own or `[decryption]`'s).
    pub(super) fn decryption(
        &mut self,
        raw: Option<RawDecryption>,
        prefix: &str,
        base: &Path,
        unknown: &mut Unknown,
    ) -> Option<DecryptionConfig> {
        let raw = raw?;
        let default = self.default_age_key_file.clone();
        let mut read = self.reader(join(prefix, "decryption"));
        let provider = read.required("provider", raw.provider);
        if let Some(provider) = &provider
            && provider != "sops"
        {
            read.problem(
                "provider",
                format!("unknown provider {provider:?}; expected \"sops\""),
            );
        }
        let own = read.path("age_key_file", raw.age_key_file, base);
        let age_key_file = own.or(default);
        if age_key_file.is_none() {
            read.problem(
                "age_key_file",
                "missing (set it here or as [decryption] age_key_file)",
            );
        }
        self.problems.extend(unknown.under("decryption"));
        match (provider.as_deref(), age_key_file) {
            (Some("sops"), Some(age_key_file)) => Some(DecryptionConfig { age_key_file }),
            _ => None,
        }
    }
}
