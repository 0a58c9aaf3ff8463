//! Configuration: TOML file plus `GITOPSD_` environment overrides → one validated `Config`,
//! with every problem reported at once under its key.
//!
//! The validated types and [`Config::load`] live here; reading and checking them is split by
//! section: `raw` (the file as written), `check` (the problem collector), `sections` (`[repo]`,
//! `[state]`, `[api]`, `[[webhook]]`), `forge` (`[receivers]`, `[[notify]]`), `environment`
//! (`[[environment]]`), `health` and `render`.

use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use figment::value::{Dict, Value};
use thiserror::Error;

mod check;
mod checked;
mod decryption;
mod environment;
mod forge;
mod ha;
mod health;
mod hooks;
mod raw;
mod render;
mod sections;

use check::{Checker, Unknown};
pub use decryption::DecryptionConfig;
use raw::RawConfig;

// Defined by the modules that use them, built here; named here too for the callers above.
pub use crate::backend::TargetConfig;
pub use crate::commit_status::CommitStatusConfig;
pub use crate::health::{CheckKind, HealthCheckConfig};
pub use crate::rollout::RolloutConfig;
pub use crate::source::RepoConfig;
pub use crate::webhook::WebhookConfig;
pub use forge::DEFAULT_RECEIVER_BODY_BYTES;

/// Default location of the configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/gitopsd/gitopsd.toml";
/// Default state directory (git mirror and journals).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/gitopsd";
/// Largest manifest file read from the repository unless configured otherwise.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Top-level sections that environment variables may override.
const SECTIONS: &[&str] = &["repo", "state", "api", "decryption", "ha"];
/// Default address of the HTTP API.
pub const DEFAULT_API_LISTEN: &str = "127.0.0.1:9107";

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub repo: RepoConfig,
    pub state: StateConfig,
    pub api: Option<ApiConfig>,
    pub webhooks: Vec<WebhookConfig>,
    /// `[[notify]]`: commit statuses on the forge.
    pub statuses: Vec<CommitStatusConfig>,
    /// `[receivers]`: push events from the forge, on a listener of their own.
    pub receivers: Option<ReceiversConfig>,
    /// `[ha]` with `enabled = true`: Leases decide which daemon acts for each environment.
    pub ha: Option<HaConfig>,
    pub environments: Vec<EnvironmentConfig>,
}

/// `[ha]`: this daemon is one of several sharing the clusters; each environment has a Lease
/// `gitopsd-<environment>` in `lease_namespace`, and only its holder acts for it.
#[derive(Debug, Clone, PartialEq)]
pub struct HaConfig {
    pub lease_namespace: String,
    /// Who this daemon is in the Leases (default: the host name).
    pub identity: String,
    pub timing: crate::lease::Timing,
}

/// `[receivers]`: the listener forges send push events to (the only thing it serves).
#[derive(Debug, Clone, PartialEq)]
pub struct ReceiversConfig {
    pub listen: std::net::SocketAddr,
    /// Bodies over this are refused with 413 before they are read in full.
    pub max_body_bytes: usize,
    /// Longest a client may take to send its request line and headers (then the connection
    /// is closed).
    pub header_timeout: std::time::Duration,
    /// Longest a client may take to send its body (then 408).
    pub read_timeout: std::time::Duration,
    pub hooks: Vec<ReceiverHookConfig>,
}

/// One `[[receivers.hook]]`, served at `/hooks/<name>`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceiverHookConfig {
    pub name: String,
    pub kind: HookKind,
    /// The shared secret (HMAC key, or GitLab's token); required.
    pub secret_file: PathBuf,
}

/// How a receiver hook authenticates and reads its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    /// `X-Hub-Signature-256`, `X-GitHub-Event: push`.
    Github,
    /// `X-Gitlab-Token`, `X-Gitlab-Event: Push Hook`.
    Gitlab,
    /// Gitea and Forgejo: `X-Gitea-Signature` / `X-Forgejo-Signature`, event `push`.
    Gitea,
    /// `X-Hub-Signature`, `X-Event-Key: repo:refs_changed`.
    BitbucketServer,
    /// `X-Signature: sha256=<hex>`; any signed request.
    GenericHmac,
}

/// The events a webhook can ask for.
pub const WEBHOOK_EVENTS: &[&str] = &[
    "rollout_started",
    "step_passed",
    "promoted",
    "preview_started",
    "awaiting_approval",
    "switched",
    "switched_back",
    "scaled_down",
    "failed",
    "reverted",
    "blocked",
    "verify_failed",
    "hook_started",
    "hook_succeeded",
    "hook_failed",
];

#[derive(Debug, Clone, PartialEq)]
pub struct StateConfig {
    pub dir: PathBuf,
    /// Bytes of rendered output kept in `<dir>/render-cache`.
    pub render_cache_max_bytes: u64,
    /// When journals are compacted.
    pub journal: crate::journal::Compaction,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EnvironmentConfig {
    pub name: String,
    /// Folder of the environment's manifests, relative to the repository root.
    pub path: String,
    /// How the folder becomes manifests when it is not plain YAML (kustomize, helm, a command).
    pub render: Option<crate::render::RenderConfig>,
    pub target: TargetConfig,
    /// Namespace for namespaced objects that name none.
    pub namespace: String,
    pub prune: bool,
    /// A revision with no objects may delete every live object (else it is rejected).
    pub allow_empty: bool,
    /// `namespace` is made (kubernetes targets) before anything else when missing.
    pub create_namespace: bool,
    /// What the environment may touch: namespaces, kinds, cluster-scoped objects.
    pub policy: crate::policy::Policy,
    /// `<repo url>#<branch>:<path>`: where the environment's manifests come from, recorded on
    /// what it owns so that another install of gitopsd can tell it is not the owner.
    pub source: String,
    pub rollout: RolloutConfig,
    pub health: Vec<HealthCheckConfig>,
    /// Only revisions that finished healthy in this environment roll out here.
    pub after: Option<String>,
    /// Every new revision waits for `gitopsd approve`.
    pub manual_approval: bool,
    /// Changes start only inside this window; reverts run at any time.
    pub window: Option<WindowConfig>,
    /// `[[environment.hook]]`: commands run on this host around a rollout.
    pub hooks: Vec<crate::hooks::CommandHook>,
    /// SOPS decryption of the environment's encrypted documents.
    pub decryption: Option<DecryptionConfig>,
}

/// A change window: a cron schedule (5 fields, or 6 with seconds first) opening it for
/// `duration`, in an IANA time zone.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowConfig {
    pub schedule: String,
    pub duration: Duration,
    pub timezone: String,
}

impl WindowConfig {
    pub fn window(&self) -> crate::gates::Window {
        crate::gates::Window::parse(&self.schedule, self.duration, &self.timezone)
            .expect("window was validated when the config was loaded")
    }
}

/// The HTTP API (`[api]`): health, readiness, metrics, status and control endpoints.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiConfig {
    pub listen: std::net::SocketAddr,
    /// Bearer token for the mutating endpoints; without it they are refused.
    pub token_file: Option<PathBuf>,
    /// Who may read the status pages (`dashboard`): anyone who reaches the listener, or only
    /// a logged-in session. Private by default when `listen` is not loopback.
    pub dashboard: Dashboard,
}

/// `[api] dashboard`: who may read the status pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dashboard {
    /// Anyone who can reach the listener reads them; actions still need a session.
    Public,
    /// Only a session logged in with the API token reads them.
    Private,
}

/// One problem, under the key it concerns (`environment[1].target.path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("config file {} not found", path.display())]
    NotFound { path: PathBuf },
    #[error("cannot load config {}: {message}", path.display())]
    Load { path: PathBuf, message: String },
    #[error("invalid config {}:{}", path.display(), list(problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<ConfigProblem>,
    },
}

fn list(problems: &[ConfigProblem]) -> String {
    problems.iter().map(|p| format!("\n  {p}")).collect()
}

impl Config {
    /// Loads the file at `path`, applies `GITOPSD_` overrides from the process environment and
    /// validates the result.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        if !path.is_file() {
            return Err(ConfigError::NotFound {
                path: path.to_path_buf(),
            });
        }
        let env = Env::prefixed("GITOPSD_")
            .filter(|key| {
                let key = key.as_str().to_ascii_lowercase();
                SECTIONS
                    .iter()
                    .any(|section| key.starts_with(&format!("{section}__")))
            })
            .split("__");
        let figment = Figment::new().merge(Toml::file(path)).merge(env);
        let root: Dict = figment.extract().map_err(|error| ConfigError::Load {
            path: path.to_path_buf(),
            message: error.to_string(),
        })?;
        let base = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let base = std::path::absolute(&base).map_err(|error| ConfigError::Load {
            path: path.to_path_buf(),
            message: format!("cannot resolve its folder: {error}"),
        })?;
        Self::from_dict(root, &base).map_err(|problems| ConfigError::Invalid {
            path: path.to_path_buf(),
            problems,
        })
    }

    /// Validates the config `toml` (no `GITOPSD_` overrides), as if its file were in `base`.
    pub fn from_toml(toml: &str, base: &Path) -> Result<Self, Vec<ConfigProblem>> {
        let root: Dict = Figment::new()
            .merge(Toml::string(toml))
            .extract()
            .map_err(|error| {
                vec![ConfigProblem {
                    key: String::new(),
                    message: error.to_string(),
                }]
            })?;
        Self::from_dict(root, base)
    }

    /// Validates an already merged tree; relative paths are taken from `base`.
    pub fn from_dict(root: Dict, base: &Path) -> Result<Self, Vec<ConfigProblem>> {
        let root = Value::Dict(figment::value::Tag::Default, root);
        let (raw, unknown) = checked::read::<RawConfig>(&root).map_err(|problem| vec![problem])?;
        let mut check = Checker::default();
        let mut unknown = Unknown::new("", unknown);
        let repo = check.repo(raw.repo, base);
        check.problems.extend(unknown.under("repo"));
        let state = check.state(raw.state.unwrap_or_default(), base);
        check.problems.extend(unknown.under("state"));
        let api = raw.api.and_then(|api| check.api(api, base));
        check.problems.extend(unknown.under("api"));
        let webhooks = check.webhooks(raw.webhook.unwrap_or_default(), base);
        check.problems.extend(unknown.under("webhook"));
        let statuses = check.statuses(raw.notify.unwrap_or_default(), base, repo.as_ref());
        check.problems.extend(unknown.under("notify"));
        let receivers = raw
            .receivers
            .and_then(|receivers| check.receivers(receivers, base));
        check.problems.extend(unknown.under("receivers"));
        let ha = raw.ha.and_then(|ha| check.ha(ha));
        check.problems.extend(unknown.under("ha"));
        check.decryption_defaults(raw.decryption, base);
        check.problems.extend(unknown.under("decryption"));
        let mut environments = check.environments(raw.environment, base, repo.as_ref());
        let paths: Vec<String> = environments.iter().map(|e| e.path.clone()).collect();
        for environment in &mut environments {
            let own = environment.path.clone();
            let Some(render) = environment.render.as_mut() else {
                continue;
            };
            render.cache_max_bytes = state.render_cache_max_bytes;
            // Other environments' own folders, unless they hold this one (a shared base).
            let holds_own = |path: &String| own.starts_with(&format!("{path}/"));
            render.revert_excluded = paths
                .iter()
                .filter(|path| **path != own && !holds_own(path))
                .cloned()
                .collect();
        }
        if ha.is_some() {
            check.ha_targets(&environments);
        }
        check.problems.extend(unknown.rest());
        match (repo, check.problems.is_empty()) {
            (Some(repo), true) => Ok(Config {
                repo,
                state,
                api,
                webhooks,
                statuses,
                receivers,
                ha,
                environments,
            }),
            _ => Err(check.problems),
        }
    }

    /// The environment called `name`.
    pub fn environment(&self, name: &str) -> Option<&EnvironmentConfig> {
        self.environments.iter().find(|env| env.name == name)
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn valid_repo_path(path: &str) -> bool {
    let path = Path::new(path);
    !path.as_os_str().is_empty()
        && path
            .components()
            .all(|component| matches!(component, Component::Normal(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The config `toml` describes, read as if its file were in `/etc/gitopsd`.
    pub(super) fn parse(toml: &str) -> Result<Config, Vec<ConfigProblem>> {
        let root: Dict = Figment::new()
            .merge(Toml::string(toml))
            .extract()
            .expect("test TOML is well-formed");
        Config::from_dict(root, Path::new("/etc/gitopsd"))
    }

    #[test]
    fn minimal_config_gets_defaults_and_absolute_paths() {
        let config = parse(
            r#"
            [repo]
            url = "deploy-repo"
            max_file_bytes = 4096
            [[environment]]
            name = "staging"
            path = "environments/staging/"
            target = { type = "directory", path = "live/staging" }
            "#,
        )
        .expect("valid");
        assert_eq!(config.repo.url, "/etc/gitopsd/deploy-repo");
        assert_eq!(
            config.repo.local_path.as_deref(),
            Some(Path::new("/etc/gitopsd/deploy-repo"))
        );
        assert_eq!(config.repo.branch, "main");
        assert_eq!(config.repo.max_file_bytes, 4096);
        assert_eq!(config.repo.poll_interval, Duration::from_secs(30));
        assert_eq!(config.state.dir, PathBuf::from(DEFAULT_STATE_DIR));
        let env = &config.environments[0];
        assert_eq!(env.path, "environments/staging");
        assert_eq!(env.namespace, "default");
        assert!(env.prune);
        assert!(
            !env.allow_empty,
            "an empty revision is refused unless allowed"
        );
        assert_eq!(
            env.source, "/etc/gitopsd/deploy-repo#main:environments/staging",
            "what ownership records name as the source"
        );
        assert_eq!(
            env.target,
            TargetConfig::Directory {
                path: PathBuf::from("/etc/gitopsd/live/staging")
            }
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let problems = parse(
            r#"
            colour = "blue"
            [repo]
            max_file_bytes = -1
            poll_interval = "soon"
            [[environment]]
            name = "Staging"
            path = "../outside"
            target = { type = "directory" }
            [[environment]]
            name = "prod"
            path = "p"
            target = { type = "ftp" }
            prune = "yes"
            "#,
        )
        .expect_err("invalid");
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "repo.url",
                "repo.poll_interval",
                "repo.max_file_bytes",
                "environment[0].name",
                "environment[0].path",
                "environment[0].target.path",
                "environment[1].target.type",
                "environment[1].prune",
                "colour",
            ],
            "{problems:#?}"
        );
    }

    #[test]
    fn unknown_keys_are_named_in_every_table_and_keys_of_another_type_are_unknown() {
        let problems = parse(
            r#"
            [repo]
            url = "r"
            colour = "blue"
            [repo.verify]
            allowed_signers = "signers"
            strict = true
            [state]
            dri = "/tmp"
            [[webhook]]
            url = "https://hooks.example/x"
            retries = 3
            [[environment]]
            name = "a"
            path = "a"
            target = { type = "directory", path = "a", kubeconfig = "k" }
            colour = "green"
            [environment.rollout]
            stepz = [100]
            [[environment.health]]
            type = "http"
            url = "http://x"
            query = "up"
            [environment.window]
            schedule = "0 2 * * *"
            duration = "1h"
            tz = "UTC"
            "#,
        )
        .expect_err("invalid");
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "repo.colour",
                "repo.verify.strict",
                "state.dri",
                "webhook[0].retries",
                "environment[0].target.kubeconfig",
                "environment[0].rollout.stepz",
                "environment[0].health[0].query",
                "environment[0].window.tz",
                "environment[0].colour",
            ],
            "{problems:#?}"
        );
        assert!(problems.iter().all(|p| p.message == "unknown key"));
    }

    #[test]
    fn create_namespace_tells_a_kubernetes_target_its_namespace_and_is_refused_elsewhere() {
        let config = parse(
            r#"
            [repo]
            url = "r"
            [[environment]]
            name = "guestbook"
            path = "guestbook"
            namespace = "guestbook"
            create_namespace = true
            target = { type = "kubernetes" }
            "#,
        )
        .expect("valid");
        let environment = &config.environments[0];
        assert!(environment.create_namespace);
        let TargetConfig::Kubernetes(settings) = &environment.target else {
            panic!("a kubernetes target");
        };
        assert_eq!(settings.create_namespace.as_deref(), Some("guestbook"));
        let problems = parse(
            r#"
            [repo]
            url = "r"
            [[environment]]
            name = "a"
            path = "a"
            create_namespace = true
            target = { type = "directory", path = "a" }
            "#,
        )
        .expect_err("a directory target has no namespaces");
        assert_eq!(problems[0].key, "environment[0].create_namespace");
    }

    #[test]
    fn shipped_example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gitopsd.toml");
        let config = Config::load(&path).expect("config/gitopsd.toml documents a valid config");
        assert_eq!(config.environments.len(), 2);
        assert_eq!(config.repo.max_file_bytes, DEFAULT_MAX_FILE_BYTES);
    }
}
