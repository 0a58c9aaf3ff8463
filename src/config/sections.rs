//! The top-level sections other than `[[environment]]`: `[repo]` (with `[repo.verify]`),
//! `[state]`, `[[webhook]]` and `[api]`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::source::RepoConfig;
use crate::webhook::WebhookConfig;

use super::check::Checker;
use super::raw::{RawApi, RawRepo, RawState, RawVerify, RawWebhook};
use super::{
    ApiConfig, DEFAULT_API_LISTEN, DEFAULT_MAX_FILE_BYTES, DEFAULT_STATE_DIR, Dashboard,
    StateConfig, WEBHOOK_EVENTS,
};

impl Checker {
    pub(super) fn repo(&mut self, raw: Option<RawRepo>, base: &Path) -> Option<RepoConfig> {
        let Some(raw) = raw else {
            self.problem("repo".into(), "missing section");
            return None;
        };
        let mut read = self.reader("repo");
        let url = read.required("url", raw.url);
        let branch = read
            .get("branch", raw.branch)
            .unwrap_or_else(|| "main".into());
        if branch.is_empty() || branch.starts_with('-') || branch.contains("..") {
            read.problem("branch", "must be a branch name");
        }
        let poll_interval = read
            .duration("poll_interval", raw.poll_interval)
            .unwrap_or(Duration::from_secs(30));
        let token_file = read.path("token_file", raw.token_file, base);
        let token_username = read
            .get("token_username", raw.token_username)
            .unwrap_or_else(|| "x-access-token".into());
        let ssh_key_file = read.path("ssh_key_file", raw.ssh_key_file, base);
        let ssh_known_hosts_file =
            read.path("ssh_known_hosts_file", raw.ssh_known_hosts_file, base);
        let max_file_bytes = read
            .get("max_file_bytes", raw.max_file_bytes)
            .unwrap_or(DEFAULT_MAX_FILE_BYTES);
        let defaults = crate::manifest::Limits::default();
        let max_files = read.count("max_files", raw.max_files).unwrap_or(5_000);
        let limits = crate::manifest::Limits {
            max_documents: read
                .count("max_documents", raw.max_documents)
                .unwrap_or(defaults.max_documents),
            max_depth: read
                .count("max_depth", raw.max_depth)
                .unwrap_or(defaults.max_depth),
            max_aliases: read
                .count("max_aliases", raw.max_aliases)
                .unwrap_or(defaults.max_aliases),
        };
        let max_total_bytes = read
            .get("max_total_bytes", raw.max_total_bytes)
            .unwrap_or(64 * 1024 * 1024);
        let fetch_timeout = read
            .duration("fetch_timeout", raw.fetch_timeout)
            .unwrap_or(Duration::from_secs(120));
        let verify = raw.verify.and_then(|verify| self.verify(verify, base));
        let (url, local_path) = resolve_url(&url?, base);
        if token_file.is_some() && !url.starts_with("https://") {
            // gix refuses to send credentials in clear text, so http:// cannot carry a token.
            self.problem("repo.token_file".into(), "needs an https:// url");
        }
        for (key, set) in [
            ("repo.ssh_key_file", ssh_key_file.is_some()),
            ("repo.ssh_known_hosts_file", ssh_known_hosts_file.is_some()),
        ] {
            if set && !is_ssh_url(&url) {
                self.problem(key.into(), "only used with an ssh:// or user@host:path url");
            }
        }
        Some(RepoConfig {
            url,
            local_path,
            branch,
            poll_interval,
            token_file,
            token_username,
            ssh_key_file,
            ssh_known_hosts_file,
            max_file_bytes,
            fetch_timeout,
            max_files,
            max_total_bytes,
            limits,
            verify,
        })
    }

    /// `[repo.verify]`: where trust comes from, and which commits need it.
    fn verify(
        &mut self,
        raw: RawVerify,
        base: &Path,
    ) -> Option<crate::source::verify::VerifyConfig> {
        use crate::source::verify::{VerifyConfig, VerifyMode};
        let mut read = self.reader("repo.verify");
        let allowed_signers = read.path("allowed_signers", raw.allowed_signers, base);
        let gpg_keyring = read.path("gpg_keyring", raw.gpg_keyring, base);
        let signing_key = read.path("signing_key", raw.signing_key, base);
        let mode = match read.get("mode", raw.mode).as_deref() {
            None | Some("head") => VerifyMode::Head,
            Some("all") => VerifyMode::All,
            Some(other) => {
                read.problem(
                    "mode",
                    format!("unknown mode {other:?}; expected \"head\" or \"all\""),
                );
                VerifyMode::Head
            }
        };
        if allowed_signers.is_none() && gpg_keyring.is_none() {
            self.problem(
                "repo.verify".into(),
                "needs allowed_signers (SSH signatures) or gpg_keyring (OpenPGP), or both",
            );
            return None;
        }
        Some(VerifyConfig {
            allowed_signers,
            gpg_keyring,
            mode,
            signing_key,
        })
    }

    pub(super) fn state(&mut self, raw: RawState, base: &Path) -> StateConfig {
        let mut read = self.reader("state");
        let dir = read
            .path("dir", raw.dir, base)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        let render_cache_max_bytes = read
            .get("render_cache_max_bytes", raw.render_cache_max_bytes)
            .unwrap_or(256 * 1024 * 1024);
        let defaults = crate::journal::Compaction::default();
        let journal = crate::journal::Compaction {
            max_bytes: read
                .get("journal_max_bytes", raw.journal_max_bytes)
                .unwrap_or(defaults.max_bytes),
            max_age: read
                .duration("journal_max_age", raw.journal_max_age)
                .unwrap_or(defaults.max_age),
            keep_records: match read.count("journal_keep_records", raw.journal_keep_records) {
                Some(0) => {
                    read.problem("journal_keep_records", "must be at least 1");
                    defaults.keep_records
                }
                Some(n) => n,
                None => defaults.keep_records,
            },
        };
        StateConfig {
            dir,
            render_cache_max_bytes,
            journal,
        }
    }

    pub(super) fn webhooks(&mut self, raw: Vec<RawWebhook>, base: &Path) -> Vec<WebhookConfig> {
        let mut webhooks = Vec::new();
        for (index, raw) in raw.into_iter().enumerate() {
            let mut read = self.reader(format!("webhook[{index}]"));
            let url = read.required("url", raw.url);
            if let Some(url) = &url
                && !url.starts_with("http://")
                && !url.starts_with("https://")
            {
                read.problem("url", "must be an http:// or https:// URL");
            }
            let events = read.get("events", raw.events).unwrap_or_default();
            if let Some(unknown) = events
                .iter()
                .find(|e| !WEBHOOK_EVENTS.contains(&e.as_str()))
            {
                read.problem(
                    "events",
                    format!(
                        "unknown event {unknown:?}; events are {}",
                        WEBHOOK_EVENTS.join(", ")
                    ),
                );
            }
            let timeout = read
                .duration("timeout", raw.timeout)
                .unwrap_or(Duration::from_secs(5));
            let secret_file = read.path("secret_file", raw.secret_file, base);
            if let Some(url) = url {
                webhooks.push(WebhookConfig {
                    url,
                    events,
                    timeout,
                    secret_file,
                });
            }
        }
        webhooks
    }

    pub(super) fn api(&mut self, raw: RawApi, base: &Path) -> Option<ApiConfig> {
        let mut read = self.reader("api");
        let listen = read
            .get("listen", raw.listen)
            .unwrap_or_else(|| DEFAULT_API_LISTEN.into());
        let token_file = read.path("token_file", raw.token_file, base);
        let dashboard = read.get("dashboard", raw.dashboard);
        let dashboard = match dashboard.as_deref() {
            None => None,
            Some("public") => Some(Dashboard::Public),
            Some("private") => Some(Dashboard::Private),
            Some(other) => {
                read.problem(
                    "dashboard",
                    format!("{other:?} is not \"public\" or \"private\""),
                );
                None
            }
        };
        match listen.parse::<std::net::SocketAddr>() {
            Ok(listen) => Some(ApiConfig {
                listen,
                token_file,
                dashboard: dashboard.unwrap_or(if listen.ip().is_loopback() {
                    Dashboard::Public
                } else {
                    Dashboard::Private
                }),
            }),
            Err(_) => {
                read.problem(
                    "listen",
                    format!("invalid address {listen:?}; use e.g. \"127.0.0.1:9107\""),
                );
                None
            }
        }
    }
}

fn is_ssh_url(url: &str) -> bool {
    url.starts_with("ssh://") || is_scp_like(url)
}

/// `user@host:path`, git's shorthand for ssh.
fn is_scp_like(url: &str) -> bool {
    !url.contains("://")
        && url
            .split_once(':')
            .is_some_and(|(host, _)| !host.is_empty() && !host.contains('/'))
}

/// Makes local paths absolute (relative to the config file) and says whether the repository
/// lives on this host.
fn resolve_url(url: &str, base: &Path) -> (String, Option<PathBuf>) {
    if let Some(path) = url.strip_prefix("file://") {
        return (url.to_string(), Some(PathBuf::from(path)));
    }
    if url.contains("://") || is_scp_like(url) {
        return (url.to_string(), None);
    }
    let path = base.join(url);
    (path.display().to_string(), Some(path))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::super::tests::parse;
    use super::DEFAULT_MAX_FILE_BYTES;

    #[test]
    fn journal_compaction_keys_are_read_and_checked() {
        let config = parse(
            r#"
            [repo]
            url = "r"
            [state]
            journal_max_bytes = 4096
            journal_max_age = "7d"
            journal_keep_records = 10
            [[environment]]
            name = "a"
            path = "a"
            target = { type = "directory", path = "a" }
            "#,
        )
        .expect("valid");
        assert_eq!(
            config.state.journal,
            crate::journal::Compaction {
                max_bytes: 4096,
                max_age: Duration::from_secs(7 * 24 * 3600),
                keep_records: 10,
            }
        );
        let problems = parse(
            r#"
            [repo]
            url = "r"
            [state]
            journal_max_age = "soon"
            journal_keep_records = 0
            [[environment]]
            name = "a"
            path = "a"
            target = { type = "directory", path = "a" }
            "#,
        )
        .expect_err("invalid");
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            ["state.journal_max_age", "state.journal_keep_records"],
            "{problems:#?}"
        );
    }

    #[test]
    fn network_urls_are_kept_and_not_watched() {
        let config = parse(
            r#"
            [repo]
            url = "git@example.com:ops/deploy.git"
            ssh_key_file = "id_ed25519"
            [[environment]]
            name = "a"
            path = "a"
            target = { type = "directory", path = "/srv/a" }
            "#,
        )
        .expect("valid");
        assert_eq!(config.repo.max_file_bytes, DEFAULT_MAX_FILE_BYTES);
        assert_eq!(config.repo.url, "git@example.com:ops/deploy.git");
        assert_eq!(config.repo.local_path, None);
        assert_eq!(
            config.repo.ssh_key_file,
            Some(PathBuf::from("/etc/gitopsd/id_ed25519"))
        );
    }

    #[test]
    fn the_dashboard_is_private_unless_it_listens_on_loopback_or_says_public() {
        let dashboard = |api: &str| {
            parse(&format!(
                "[repo]\nurl = \"r\"\n[api]\n{api}\n[[environment]]\nname = \"a\"\npath = \"a\"\ntarget = {{ type = \"directory\", path = \"a\" }}\n"
            ))
            .map(|config| config.api.map(|api| api.dashboard))
        };
        use crate::config::Dashboard::{Private, Public};
        assert_eq!(dashboard("listen = \"127.0.0.1:8080\""), Ok(Some(Public)));
        assert_eq!(dashboard("listen = \"[::1]:8080\""), Ok(Some(Public)));
        assert_eq!(dashboard("listen = \"0.0.0.0:8080\""), Ok(Some(Private)));
        assert_eq!(
            dashboard("listen = \"0.0.0.0:8080\"\ndashboard = \"public\""),
            Ok(Some(Public))
        );
        assert_eq!(
            dashboard("listen = \"127.0.0.1:8080\"\ndashboard = \"private\""),
            Ok(Some(Private))
        );
        let problems = dashboard("dashboard = \"open\"").expect_err("invalid");
        assert_eq!(problems[0].key, "api.dashboard", "{problems:#?}");
        assert!(problems[0].message.contains("\"open\""), "{problems:#?}");
    }
}
