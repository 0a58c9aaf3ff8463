//! The sections that talk to the forge: `[receivers]` with its `[[receivers.hook]]` tables
//! (push events in) and `[[notify]]` (commit statuses out).

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::check::Checker;
use super::checked::{Checked, HumanDuration};
use super::{HookKind, ReceiverHookConfig, ReceiversConfig};
use crate::commit_status::{CommitStatusConfig, Forge};
use crate::source::RepoConfig;

/// Largest push event body a receiver reads unless configured otherwise.
pub const DEFAULT_RECEIVER_BODY_BYTES: u64 = 1024 * 1024;

#[derive(Debug, Deserialize)]
pub(super) struct RawReceivers {
    pub(super) listen: Option<Checked<String>>,
    pub(super) max_body_bytes: Option<Checked<u64>>,
    pub(super) header_timeout: Option<Checked<HumanDuration>>,
    pub(super) read_timeout: Option<Checked<HumanDuration>>,
    pub(super) hook: Option<Vec<RawReceiverHook>>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawReceiverHook {
    pub(super) name: Option<Checked<String>>,
    #[serde(rename = "type")]
    pub(super) kind: Option<Checked<String>>,
    pub(super) secret_file: Option<Checked<String>>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RawNotify {
    #[serde(rename = "type")]
    pub(super) kind: Option<Checked<String>>,
    pub(super) api_url: Option<Checked<String>>,
    pub(super) token_file: Option<Checked<String>>,
    pub(super) repository: Option<Checked<String>>,
    pub(super) timeout: Option<Checked<HumanDuration>>,
}

impl HookKind {
    /// The `type` naming it.
    pub fn parse(kind: &str) -> Option<Self> {
        match kind {
            "github" => Some(Self::Github),
            "gitlab" => Some(Self::Gitlab),
            "gitea" => Some(Self::Gitea),
            "bitbucket-server" => Some(Self::BitbucketServer),
            "generic-hmac" => Some(Self::GenericHmac),
            _ => None,
        }
    }
}

fn valid_hook_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

impl Checker {
    pub(super) fn receivers(&mut self, raw: RawReceivers, base: &Path) -> Option<ReceiversConfig> {
        let mut read = self.reader("receivers");
        let listen = read.required("listen", raw.listen);
        let max_body_bytes = read
            .get("max_body_bytes", raw.max_body_bytes)
            .unwrap_or(DEFAULT_RECEIVER_BODY_BYTES);
        if max_body_bytes == 0 {
            read.problem("max_body_bytes", "must be at least 1");
        }
        let header_timeout = read
            .duration("header_timeout", raw.header_timeout)
            .unwrap_or(Duration::from_secs(10));
        let read_timeout = read
            .duration("read_timeout", raw.read_timeout)
            .unwrap_or(Duration::from_secs(30));
        let listen = listen.and_then(|listen| match listen.parse() {
            Ok(address) => Some(address),
            Err(_) => {
                read.problem(
                    "listen",
                    format!("invalid address {listen:?}; use e.g. \"0.0.0.0:9108\""),
                );
                None
            }
        });
        let raw_hooks = raw.hook.unwrap_or_default();
        if raw_hooks.is_empty() {
            read.problem("hook", "at least one [[receivers.hook]] is needed");
        }
        let mut hooks: Vec<ReceiverHookConfig> = Vec::new();
        for (index, raw) in raw_hooks.into_iter().enumerate() {
            let mut read = self.reader(format!("receivers.hook[{index}]"));
            let name = read.required("name", raw.name);
            if let Some(name) = &name {
                if !valid_hook_name(name) {
                    read.problem(
                        "name",
                        "use lowercase letters, digits, '-' and '_' (it is the path /hooks/<name>)",
                    );
                } else if hooks.iter().any(|hook| &hook.name == name) {
                    read.problem("name", format!("another hook is called {name:?}"));
                }
            }
            let kind = read.required("type", raw.kind).and_then(|kind| {
                let parsed = HookKind::parse(&kind);
                if parsed.is_none() {
                    read.problem("type", format!("unknown type {kind:?}; expected \"github\", \"gitlab\", \"gitea\", \"bitbucket-server\" or \"generic-hmac\""));
                }
                parsed
            });
            // There is no receiver without a secret: anyone could make gitopsd fetch.
            let secret_file = read.path("secret_file", raw.secret_file.clone(), base);
            if raw.secret_file.is_none() {
                read.problem("secret_file", "missing: every receiver needs a secret");
            }
            if let (Some(name), Some(kind), Some(secret_file)) = (name, kind, secret_file) {
                hooks.push(ReceiverHookConfig {
                    name,
                    kind,
                    secret_file,
                });
            }
        }
        Some(ReceiversConfig {
            listen: listen?,
            max_body_bytes: usize::try_from(max_body_bytes).unwrap_or(usize::MAX),
            header_timeout,
            read_timeout,
            hooks,
        })
    }

    pub(super) fn statuses(
        &mut self,
        raw: Vec<RawNotify>,
        base: &Path,
        repo: Option<&RepoConfig>,
    ) -> Vec<CommitStatusConfig> {
        let mut statuses = Vec::new();
        for (index, raw) in raw.into_iter().enumerate() {
            let mut read = self.reader(format!("notify[{index}]"));
            let forge = read.required("type", raw.kind).and_then(|kind| {
                let forge = Forge::parse(&kind);
                if forge.is_none() {
                    read.problem("type", format!("unknown type {kind:?}; expected \"github-status\", \"gitlab-status\" or \"gitea-status\""));
                }
                forge
            });
            let api_url = read.required("api_url", raw.api_url);
            if let Some(url) = &api_url
                && !url.starts_with("http://")
                && !url.starts_with("https://")
            {
                read.problem("api_url", "must be an http:// or https:// URL");
            }
            if raw.token_file.is_none() {
                read.problem("token_file", "missing");
            }
            let token_file = read.path("token_file", raw.token_file, base);
            let repository = read
                .get("repository", raw.repository)
                .or_else(|| repo.and_then(|repo| crate::commit_status::repository_of(&repo.url)));
            if repository.is_none() && repo.is_some() {
                read.problem(
                    "repository",
                    "missing, and the repo url names no owner/name: set it (\"owner/name\")",
                );
            }
            let timeout = read
                .duration("timeout", raw.timeout)
                .unwrap_or(Duration::from_secs(10));
            if let (Some(forge), Some(api_url), Some(token_file), Some(repository)) =
                (forge, api_url, token_file, repository)
            {
                statuses.push(CommitStatusConfig {
                    forge,
                    api_url,
                    token_file,
                    repository,
                    timeout,
                });
            }
        }
        statuses
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::super::tests::parse;
    use super::*;

    const BASE: &str = r#"
        [repo]
        url = "git@github.com:ops/deploy.git"
        [[environment]]
        name = "a"
        path = "a"
        target = { type = "directory", path = "/srv/a" }
    "#;

    #[test]
    fn receivers_and_statuses_are_read() {
        let config = parse(&format!(
            r#"{BASE}
            [receivers]
            listen = "0.0.0.0:9108"
            [[receivers.hook]]
            name = "github"
            type = "github"
            secret_file = "github-secret"
            [[notify]]
            type = "github-status"
            api_url = "https://api.github.com"
            token_file = "status-token"
            "#
        ))
        .expect("valid");
        let receivers = config.receivers.expect("receivers");
        assert_eq!(receivers.listen.to_string(), "0.0.0.0:9108");
        assert_eq!(receivers.max_body_bytes, 1024 * 1024);
        assert_eq!(receivers.header_timeout, Duration::from_secs(10));
        assert_eq!(receivers.read_timeout, Duration::from_secs(30));
        assert_eq!(
            receivers.hooks,
            vec![ReceiverHookConfig {
                name: "github".into(),
                kind: HookKind::Github,
                secret_file: PathBuf::from("/etc/gitopsd/github-secret"),
            }]
        );
        assert_eq!(config.statuses.len(), 1);
        assert_eq!(config.statuses[0].repository, "ops/deploy");
        assert_eq!(config.statuses[0].forge, Forge::Github);
    }

    #[test]
    fn a_receiver_without_a_secret_and_unknown_types_are_refused() {
        let problems = parse(&format!(
            r#"{BASE}
            [receivers]
            listen = "0.0.0.0:9108"
            max_body_bytes = 0
            [[receivers.hook]]
            name = "GitHub"
            type = "github"
            [[receivers.hook]]
            name = "x"
            type = "gogs"
            secret_file = "s"
            [[notify]]
            type = "slack"
            api_url = "ftp://x"
            "#
        ))
        .expect_err("invalid");
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "notify[0].type",
                "notify[0].api_url",
                "notify[0].token_file",
                "receivers.max_body_bytes",
                "receivers.hook[0].name",
                "receivers.hook[0].secret_file",
                "receivers.hook[1].type",
            ],
            "{problems:#?}"
        );
    }
}
