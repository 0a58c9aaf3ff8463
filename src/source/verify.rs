//! Commit signature verification: SSH signatures (sshsig, `gpg.format = ssh`) against an
//! OpenSSH allowed-signers file, natively; OpenPGP signatures against an exported keyring, with
//! Debian's `gpgv` (no shell, a timeout, a cleared environment).
// signature checks read key files and run `gpgv`: the blocking side of the I/O boundary.
#![allow(clippy::disallowed_methods)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ssh_key::{HashAlg, PublicKey, SshSig};
use thiserror::Error;

/// The sshsig namespace git signs commits in.
const GIT_NAMESPACE: &str = "git";
/// The longest `gpgv` may take for one signature.
const GPGV_TIMEOUT: Duration = Duration::from_secs(10);

/// Which commits must be signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyMode {
    /// The branch tip.
    Head,
    /// Every commit since the environment's last verified (healthy) revision.
    All,
}

/// `[repo.verify]`, as read from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyConfig {
    pub allowed_signers: Option<PathBuf>,
    pub gpg_keyring: Option<PathBuf>,
    pub mode: VerifyMode,
    /// SSH private key gitopsd signs its own revert commits with.
    pub signing_key: Option<PathBuf>,
}

/// Why a commit is not trusted.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("not signed")]
    Unsigned,
    #[error("signed with {format}, but no {key} is configured in [repo.verify]")]
    NoTrustFor {
        format: &'static str,
        key: &'static str,
    },
    #[error("bad signature: {0}")]
    Bad(String),
    #[error("signed by a key that is not allowed: {0}")]
    Untrusted(String),
    #[error("cannot read {}: {message}", path.display())]
    Trust { path: PathBuf, message: String },
    #[error("cannot run gpgv: {0}")]
    Gpgv(String),
}

/// Who signed a commit that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer(pub String);

/// One line of an allowed-signers file.
#[derive(Debug, Clone, PartialEq)]
struct AllowedSigner {
    principals: String,
    /// `namespaces="…"`: where the key may sign; `None` is everywhere.
    namespaces: Option<Vec<String>>,
    key: PublicKey,
}

/// An OpenSSH allowed-signers file (`ssh-keygen(1)`, ALLOWED SIGNERS).
#[derive(Debug, Clone, PartialEq)]
pub struct AllowedSigners(Vec<AllowedSigner>);

/// Splits at whitespace outside double quotes.
fn fields(line: &str) -> Vec<String> {
    let mut fields = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            c if c.is_whitespace() && !quoted => {
                if !current.is_empty() {
                    fields.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        fields.push(current);
    }
    fields
}

/// Splits an options field at commas outside double quotes.
fn split_options(options: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    for (index, c) in options.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&options[start..index]);
                start = index + 1;
            }
            _ => {}
        }
    }
    parts.push(&options[start..]);
    parts
}

fn is_key_type(field: &str) -> bool {
    field.starts_with("ssh-") || field.starts_with("ecdsa-") || field.starts_with("sk-")
}

impl AllowedSigners {
    /// Parses the file's text; a line that cannot be read is an error naming it, so a typo
    /// never silently trusts or distrusts a key.
    pub fn parse(text: &str, path: &Path) -> Result<Self, VerifyError> {
        let mut signers = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let problem = |message: String| VerifyError::Trust {
                path: path.to_path_buf(),
                message: format!("line {}: {message}", index + 1),
            };
            let fields = fields(line);
            let Some((principals, rest)) = fields.split_first() else {
                continue;
            };
            let (options, key_fields) = match rest.first() {
                Some(first) if is_key_type(first) => (None, rest),
                Some(first) => (Some(first.as_str()), &rest[1..]),
                None => return Err(problem("no key".into())),
            };
            let mut namespaces = None;
            for option in options.map(split_options).into_iter().flatten() {
                let (name, value) = option.split_once('=').unwrap_or((option, ""));
                match name.to_ascii_lowercase().as_str() {
                    "namespaces" => {
                        namespaces = Some(
                            value
                                .trim_matches('"')
                                .split(',')
                                .map(str::to_string)
                                .collect(),
                        );
                    }
                    "cert-authority" => {
                        return Err(problem(
                            "cert-authority lines are not supported; list the signing keys".into(),
                        ));
                    }
                    // valid-after / valid-before would need the commit time checked; refuse
                    // rather than ignore a limit the operator set.
                    other => return Err(problem(format!("option {other:?} is not supported"))),
                }
            }
            let key_text = key_fields
                .iter()
                .take(2)
                .cloned()
                .collect::<Vec<_>>()
                .join(" ");
            let key = PublicKey::from_openssh(&key_text)
                .map_err(|e| problem(format!("not a public key: {e}")))?;
            signers.push(AllowedSigner {
                principals: principals.clone(),
                namespaces,
                key,
            });
        }
        Ok(Self(signers))
    }

    pub fn read(path: &Path) -> Result<Self, VerifyError> {
        let text = std::fs::read_to_string(path).map_err(|e| VerifyError::Trust {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Self::parse(&text, path)
    }

    /// Checks an armored SSH signature over `data`; the signer when good and allowed.
    pub fn verify(&self, armored: &[u8], data: &[u8]) -> Result<Signer, VerifyError> {
        let signature =
            SshSig::from_pem(armored).map_err(|e| VerifyError::Bad(format!("unreadable: {e}")))?;
        if signature.namespace() != GIT_NAMESPACE {
            return Err(VerifyError::Bad(format!(
                "made for namespace {:?}, not \"git\"",
                signature.namespace()
            )));
        }
        let fingerprint = PublicKey::from(signature.public_key().clone())
            .fingerprint(HashAlg::Sha256)
            .to_string();
        let signer = self
            .0
            .iter()
            .filter(|signer| signer.key.key_data() == signature.public_key())
            .find(|signer| {
                signer
                    .namespaces
                    .as_ref()
                    .is_none_or(|namespaces| namespaces.iter().any(|n| n == GIT_NAMESPACE))
            })
            .ok_or_else(|| VerifyError::Untrusted(format!("key {fingerprint}")))?;
        signer
            .key
            .verify(GIT_NAMESPACE, data, &signature)
            .map_err(|e| VerifyError::Bad(format!("key {fingerprint}: {e}")))?;
        Ok(Signer(format!("{} (key {fingerprint})", signer.principals)))
    }
}

/// Checks an armored OpenPGP signature over `data` with `gpgv` and the exported keyring.
pub fn verify_gpg(keyring: &Path, armored: &[u8], data: &[u8]) -> Result<Signer, VerifyError> {
    let work = tempfile::tempdir().map_err(|e| VerifyError::Gpgv(e.to_string()))?;
    let signature = work.path().join("commit.sig");
    let payload = work.path().join("commit");
    std::fs::write(&signature, armored).map_err(|e| VerifyError::Gpgv(e.to_string()))?;
    std::fs::write(&payload, data).map_err(|e| VerifyError::Gpgv(e.to_string()))?;
    let keyring = std::path::absolute(keyring).map_err(|e| VerifyError::Trust {
        path: keyring.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut child = Command::new("gpgv")
        .env_clear()
        .env("HOME", work.path())
        .env("PATH", "/usr/bin:/bin")
        .arg("--homedir")
        .arg(work.path())
        .arg("--status-fd")
        .arg("1")
        .arg("--keyring")
        .arg(&keyring)
        .arg(&signature)
        .arg(&payload)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| VerifyError::Gpgv(format!("{e} (install Debian's gpgv)")))?;
    let deadline = Instant::now() + GPGV_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(VerifyError::Gpgv(format!(
                    "no answer within {}s",
                    GPGV_TIMEOUT.as_secs()
                )));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(VerifyError::Gpgv(e.to_string())),
        }
    };
    let mut status_text = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut status_text);
    }
    gpgv_verdict(status.success(), &status_text)
}

/// Reads gpgv's `--status-fd` lines.
fn gpgv_verdict(success: bool, status: &str) -> Result<Signer, VerifyError> {
    let line = |tag: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(&format!("[GNUPG:] {tag} ")))
            .map(str::to_string)
    };
    if success && let Some(good) = line("GOODSIG") {
        let fingerprint = line("VALIDSIG")
            .and_then(|valid| valid.split_whitespace().next().map(str::to_string))
            .unwrap_or_default();
        let user = good.split_once(' ').map_or(good.as_str(), |(_, user)| user);
        return Ok(Signer(format!("{user} (key {fingerprint})")));
    }
    if let Some(bad) = line("BADSIG") {
        return Err(VerifyError::Bad(format!("OpenPGP key {bad}")));
    }
    if let Some(missing) = line("ERRSIG").or_else(|| line("NO_PUBKEY")) {
        let key = missing.split_whitespace().next().unwrap_or("?");
        return Err(VerifyError::Untrusted(format!("OpenPGP key {key}")));
    }
    Err(VerifyError::Bad(
        "gpgv did not confirm the signature".into(),
    ))
}

/// Trust as configured, loaded once.
#[derive(Debug, Clone)]
pub struct Verifier {
    pub mode: VerifyMode,
    ssh: Option<AllowedSigners>,
    gpg_keyring: Option<PathBuf>,
}

impl Verifier {
    pub fn load(config: &VerifyConfig) -> Result<Self, VerifyError> {
        Ok(Self {
            mode: config.mode,
            ssh: config
                .allowed_signers
                .as_deref()
                .map(AllowedSigners::read)
                .transpose()?,
            gpg_keyring: config.gpg_keyring.clone(),
        })
    }

    /// Checks a commit's signature header over the commit's signed bytes.
    pub fn check(&self, signature: Option<&[u8]>, data: &[u8]) -> Result<Signer, VerifyError> {
        let signature = signature.ok_or(VerifyError::Unsigned)?;
        if signature.starts_with(b"-----BEGIN SSH SIGNATURE-----") {
            let signers = self.ssh.as_ref().ok_or(VerifyError::NoTrustFor {
                format: "an SSH key",
                key: "allowed_signers",
            })?;
            signers.verify(signature, data)
        } else if signature.starts_with(b"-----BEGIN PGP SIGNATURE-----") {
            let keyring = self.gpg_keyring.as_deref().ok_or(VerifyError::NoTrustFor {
                format: "OpenPGP",
                key: "gpg_keyring",
            })?;
            verify_gpg(keyring, signature, data)
        } else {
            Err(VerifyError::Bad(
                "neither an SSH nor an OpenPGP signature (X.509 is not supported)".into(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILz3tFeLz8CUO4zMTW2NSfrXtLfEwEtLVGxhj2ImcSdm";

    #[test]
    fn allowed_signers_lines_are_read_and_unsupported_options_refused() {
        let path = Path::new("allowed_signers");
        let text = format!(
            "# deployers\nalice@example.com {KEY} alice\nbob@example.com,ops@example.com namespaces=\"file,git\" {KEY}\n"
        );
        let signers = AllowedSigners::parse(&text, path).expect("valid");
        assert_eq!(signers.0.len(), 2);
        assert_eq!(
            signers.0[1].namespaces.as_deref(),
            Some(&["file".to_string(), "git".to_string()][..])
        );
        let dated = format!("carol@example.com valid-after=\"20260101\" {KEY}\n");
        assert!(matches!(
            AllowedSigners::parse(&dated, path),
            Err(VerifyError::Trust { message, .. }) if message.contains("line 1") && message.contains("valid-after")
        ));
        assert!(matches!(
            AllowedSigners::parse("dave@example.com ssh-ed25519 AAAAnotakey\n", path),
            Err(VerifyError::Trust { message, .. }) if message.contains("not a public key")
        ));
    }

    #[test]
    fn gpgv_status_lines_decide_the_verdict() {
        let good = "[GNUPG:] NEWSIG\n[GNUPG:] GOODSIG 0123456789ABCDEF Deployer <deploy@example.com>\n[GNUPG:] VALIDSIG AAAABBBBCCCC 2026-11-30 1800000000 0 4 0 22 10 00 AAAABBBBCCCC\n";
        assert_eq!(
            gpgv_verdict(true, good),
            Ok(Signer(
                "Deployer <deploy@example.com> (key AAAABBBBCCCC)".into()
            ))
        );
        assert!(matches!(
            gpgv_verdict(false, "[GNUPG:] ERRSIG 0123456789ABCDEF 22 10 00 1800000000 9 -\n[GNUPG:] NO_PUBKEY 0123456789ABCDEF\n"),
            Err(VerifyError::Untrusted(key)) if key.contains("0123456789ABCDEF")
        ));
        assert!(matches!(
            gpgv_verdict(false, "[GNUPG:] BADSIG 0123456789ABCDEF Deployer\n"),
            Err(VerifyError::Bad(_))
        ));
        assert!(matches!(gpgv_verdict(false, ""), Err(VerifyError::Bad(_))));
    }

    #[test]
    fn an_unsigned_commit_or_a_format_without_trust_is_refused() {
        let verifier = Verifier {
            mode: VerifyMode::Head,
            ssh: None,
            gpg_keyring: None,
        };
        assert_eq!(verifier.check(None, b"tree x"), Err(VerifyError::Unsigned));
        assert!(matches!(
            verifier.check(Some(b"-----BEGIN SSH SIGNATURE-----\nx"), b"tree x"),
            Err(VerifyError::NoTrustFor {
                key: "allowed_signers",
                ..
            })
        ));
    }
}
