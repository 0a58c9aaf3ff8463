//! Configuration: TOML file plus `GITOPSD_` environment overrides → one validated `Config`,
//! with every problem reported at once under its key.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use figment::value::{Dict, Value};
use serde::Deserialize;
use thiserror::Error;

mod checked;
use checked::{Checked, Expected, HumanDuration, Reader};

/// Default location of the configuration file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/gitopsd/gitopsd.toml";
/// Default state directory (git mirror and journals).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/gitopsd";
/// Largest manifest file read from the repository unless configured otherwise.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Top-level sections that environment variables may override.
const SECTIONS: &[&str] = &["repo", "state", "api"];
/// Default address of the HTTP API.
pub const DEFAULT_API_LISTEN: &str = "127.0.0.1:9107";

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub repo: RepoConfig,
    pub state: StateConfig,
    pub api: Option<ApiConfig>,
    pub webhooks: Vec<WebhookConfig>,
    pub environments: Vec<EnvironmentConfig>,
}

/// A webhook told about rollouts (`[[webhook]]`).
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookConfig {
    pub url: String,
    /// Only these events; empty means all.
    pub events: Vec<String>,
    pub timeout: Duration,
}

/// The events a webhook can ask for.
pub const WEBHOOK_EVENTS: &[&str] = &[
    "rollout_started",
    "step_passed",
    "promoted",
    "failed",
    "reverted",
    "blocked",
    "verify_failed",
];

#[derive(Debug, Clone, PartialEq)]
pub struct RepoConfig {
    /// URL as gix understands it; local paths are made absolute.
    pub url: String,
    /// Set when the repository is on this host (a path or `file://`): watched for new commits.
    pub local_path: Option<PathBuf>,
    pub branch: String,
    pub poll_interval: Duration,
    pub token_file: Option<PathBuf>,
    pub token_username: String,
    pub ssh_key_file: Option<PathBuf>,
    /// known_hosts for ssh; host keys are then checked strictly against it alone.
    pub ssh_known_hosts_file: Option<PathBuf>,
    pub max_file_bytes: u64,
    /// How long one fetch may take before it is interrupted.
    pub fetch_timeout: Duration,
    /// Manifest files one environment folder may hold.
    pub max_files: usize,
    /// Bytes of manifests one environment folder may hold.
    pub max_total_bytes: u64,
    /// Documents, nesting and aliases one revision's YAML may use.
    pub limits: crate::manifest::Limits,
    /// `[repo.verify]`: only signed commits are applied.
    pub verify: Option<crate::source::verify::VerifyConfig>,
}

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
}

/// How changes are rolled out (DESIGN §4).
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutConfig {
    /// Canary weights in percent, increasing, ending with 100 (the promotion).
    pub steps: Vec<u8>,
    /// How long each canary step must stay healthy.
    pub bake: Duration,
    /// How long a step's objects may take to become ready.
    pub timeout: Duration,
    /// How long checks keep running after promotion.
    pub verify: Duration,
    /// After a revert, commit the environment's folder back to the healthy revision and push.
    pub revert_commit: bool,
    /// Restarts a container of a new pod may have before the step fails at once.
    pub max_restarts: u32,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        Self {
            steps: vec![100],
            bake: Duration::ZERO,
            timeout: Duration::from_secs(300),
            verify: Duration::ZERO,
            revert_commit: false,
            max_restarts: 2,
        }
    }
}

/// One health check of an environment.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheckConfig {
    /// Name shown in logs, status and the journal.
    pub name: String,
    pub check: CheckKind,
    pub interval: Duration,
    /// Consecutive bad results that fail the step.
    pub failures: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CheckKind {
    Http {
        url: String,
        expect_status: u16,
        body_contains: Option<String>,
        timeout: Duration,
    },
    Prometheus {
        url: String,
        query: String,
        min: Option<f64>,
        max: Option<f64>,
        /// Whether an empty result counts as healthy.
        empty_is_healthy: bool,
        timeout: Duration,
    },
    Exec {
        /// Program and arguments, split like a shell would but run without one.
        argv: Vec<String>,
        timeout: Duration,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum TargetConfig {
    /// Live state is a folder of YAML files.
    Directory { path: PathBuf },
    /// A Kubernetes cluster through its API server.
    Kubernetes(crate::backend::KubernetesSettings),
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
        let webhooks = check.webhooks(raw.webhook.unwrap_or_default());
        check.problems.extend(unknown.under("webhook"));
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
        check.problems.extend(unknown.rest());
        match (repo, check.problems.is_empty()) {
            (Some(repo), true) => Ok(Config {
                repo,
                state,
                api,
                webhooks,
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

/// Collects problems while taking known keys out of the tree; whatever is left is unknown.
#[derive(Default)]
struct Checker {
    problems: Vec<ConfigProblem>,
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

impl Checker {
    fn problem(&mut self, key: String, message: impl Into<String>) {
        self.problems.push(ConfigProblem {
            key,
            message: message.into(),
        });
    }

    fn environments(
        &mut self,
        raw: Option<Checked<Tables>>,
        base: &Path,
        repo: Option<&RepoConfig>,
    ) -> Vec<EnvironmentConfig> {
        let (repo_url, repo_branch) = repo.map_or(("", ""), |repo| (&repo.url, &repo.branch));
        let items = match raw {
            Some(Checked::Valid(Tables(items))) => items,
            Some(Checked::Invalid(_)) => {
                self.problem(
                    "environment".into(),
                    "must be an array of tables ([[environment]])",
                );
                return Vec::new();
            }
            None => {
                self.problem(
                    "environment".into(),
                    "at least one [[environment]] is required",
                );
                return Vec::new();
            }
        };
        let mut environments: Vec<EnvironmentConfig> = Vec::new();
        let mut names = BTreeSet::new();
        let mut target_paths = BTreeSet::new();
        for (index, item) in items.iter().enumerate() {
            let prefix = format!("environment[{index}]");
            let (raw, unknown) = match checked::read::<RawEnvironment>(item) {
                Ok(read) => read,
                Err(problem) => {
                    self.problem(join(&prefix, &problem.key), problem.message);
                    continue;
                }
            };
            let mut unknown = Unknown::new(&prefix, unknown);
            let mut read = self.reader(prefix.clone());
            let name = read.required("name", raw.name);
            if let Some(name) = &name {
                if !valid_environment_name(name) {
                    read.problem(
                        "name",
                        "must be lowercase letters, digits and '-', starting with a letter",
                    );
                } else if !names.insert(name.clone()) {
                    read.problem("name", format!("duplicate environment {name:?}"));
                }
            }
            let path = read.required("path", raw.path);
            if let Some(path) = &path
                && !valid_repo_path(path)
            {
                read.problem(
                    "path",
                    "must be a relative folder inside the repository (no '..')",
                );
            }
            let namespace = read
                .get("namespace", raw.namespace)
                .unwrap_or_else(|| "default".into());
            let render = raw.render.and_then(|render| {
                self.render(
                    render,
                    &prefix,
                    name.as_deref().unwrap_or_default(),
                    &namespace,
                    &mut unknown,
                )
            });
            let target = self.target(raw.target, &prefix, base, &mut unknown);
            if let Some(TargetConfig::Directory { path }) = &target
                && !target_paths.insert(path.clone())
            {
                self.problem(
                    join(&prefix, "target.path"),
                    "another environment already uses this folder",
                );
            }
            let mut read = self.reader(prefix.clone());
            let prune = read.get("prune", raw.prune).unwrap_or(true);
            let allow_empty = read.get("allow_empty", raw.allow_empty).unwrap_or(false);
            let policy = self.policy(
                RawPolicy {
                    allowed_namespaces: raw.allowed_namespaces,
                    allowed_kinds: raw.allowed_kinds,
                    denied_kinds: raw.denied_kinds,
                    cluster_scoped: raw.cluster_scoped,
                },
                &prefix,
            );
            let rollout = match raw.rollout {
                Some(rollout) => self.rollout(rollout, &prefix, &mut unknown),
                None => RolloutConfig::default(),
            };
            let health = self.health_checks(raw.health.unwrap_or_default(), &prefix, &mut unknown);
            let mut read = self.reader(prefix.clone());
            let after = read.get("after", raw.after);
            let manual_approval = match read.get("approval", raw.approval).as_deref() {
                None | Some("none") => false,
                Some("manual") => true,
                Some(other) => {
                    read.problem(
                        "approval",
                        format!("unknown approval {other:?}; expected \"manual\" or \"none\""),
                    );
                    false
                }
            };
            let window = raw
                .window
                .and_then(|window| self.window(window, &prefix, &mut unknown));
            self.problems.extend(unknown.rest());
            if let (Some(name), Some(path), Some(target)) = (name, path, target) {
                let path = path.trim_end_matches('/').to_string();
                environments.push(EnvironmentConfig {
                    source: format!("{repo_url}#{repo_branch}:{path}"),
                    name,
                    path,
                    render,
                    target,
                    namespace,
                    prune,
                    allow_empty,
                    policy,
                    rollout,
                    health,
                    after,
                    manual_approval,
                    window,
                });
            }
        }
        for (index, environment) in environments.iter().enumerate() {
            let Some(after) = &environment.after else {
                continue;
            };
            let key = format!("environment[{index}].after");
            if *after == environment.name {
                self.problem(key, "an environment cannot wait for itself");
            } else if !names.contains(after) {
                self.problem(key, format!("no environment named {after:?}"));
            } else {
                // Follow the chain; coming back here is a cycle.
                let mut seen = BTreeSet::from([environment.name.clone()]);
                let mut next = Some(after.clone());
                while let Some(current) = next {
                    if !seen.insert(current.clone()) {
                        self.problem(key.clone(), "`after` chains form a cycle");
                        break;
                    }
                    next = environments
                        .iter()
                        .find(|e| e.name == current)
                        .and_then(|e| e.after.clone());
                }
            }
        }
        environments
    }

    fn target(
        &mut self,
        raw: Option<RawTarget>,
        prefix: &str,
        base: &Path,
        unknown: &mut Unknown,
    ) -> Option<TargetConfig> {
        let key = join(prefix, "target");
        let Some(raw) = raw else {
            self.problem(key, "missing");
            return None;
        };
        let mut read = self.reader(key.clone());
        let kind = read.required("type", raw.kind)?;
        let result = match kind.as_str() {
            "directory" => {
                let path = if raw.path.is_some() {
                    read.path("path", raw.path, base)
                } else {
                    read.problem("path", "missing");
                    None
                };
                for (name, set) in [
                    ("kubeconfig", raw.kubeconfig.is_some()),
                    ("context", raw.context.is_some()),
                    ("force_conflicts", raw.force_conflicts.is_some()),
                    ("adopt", raw.adopt.is_some()),
                    ("applyset_namespace", raw.applyset_namespace.is_some()),
                    ("concurrency", raw.concurrency.is_some()),
                    ("requests_per_second", raw.requests_per_second.is_some()),
                    (
                        "delete_foreign_namespaces",
                        raw.delete_foreign_namespaces.is_some(),
                    ),
                ] {
                    read.unknown_if(name, set);
                }
                path.map(|path| TargetConfig::Directory { path })
            }
            "kubernetes" => {
                read.unknown_if("path", raw.path.is_some());
                let kubeconfig = read.path("kubeconfig", raw.kubeconfig, base);
                let context = read.get("context", raw.context);
                let force_conflicts = read
                    .get("force_conflicts", raw.force_conflicts)
                    .unwrap_or(true);
                let adopt = read.get("adopt", raw.adopt).unwrap_or(false);
                let applyset_namespace = read.get("applyset_namespace", raw.applyset_namespace);
                let concurrency = read.count("concurrency", raw.concurrency).unwrap_or(32);
                if concurrency == 0 {
                    read.problem("concurrency", "must be at least 1");
                }
                let delete_foreign_namespaces = read
                    .get("delete_foreign_namespaces", raw.delete_foreign_namespaces)
                    .unwrap_or(false);
                let requests_per_second = read
                    .get("requests_per_second", raw.requests_per_second)
                    .unwrap_or(0);
                Some(TargetConfig::Kubernetes(
                    crate::backend::KubernetesSettings {
                        kubeconfig,
                        context,
                        force_conflicts,
                        adopt,
                        applyset_namespace,
                        concurrency: concurrency.max(1),
                        requests_per_second: u32::try_from(requests_per_second).unwrap_or(u32::MAX),
                        delete_foreign_namespaces,
                    },
                ))
            }
            other => {
                read.problem(
                    "type",
                    format!(
                        "unknown target type {other:?}; expected \"directory\" or \"kubernetes\""
                    ),
                );
                // Which keys belong is unknown too: no "unknown key" for each.
                unknown.drop_under("target");
                return None;
            }
        };
        self.problems.extend(unknown.under("target"));
        result
    }

    fn rollout(&mut self, raw: RawRollout, prefix: &str, unknown: &mut Unknown) -> RolloutConfig {
        let defaults = RolloutConfig::default();
        let mut read = self.reader(join(prefix, "rollout"));
        let steps = match raw.steps {
            None => defaults.steps.clone(),
            Some(Checked::Valid(Steps(items))) => {
                let steps: Vec<Option<u8>> = items
                    .into_iter()
                    .map(|item| match item {
                        Checked::Valid(n) => u8::try_from(n).ok(),
                        Checked::Invalid(_) => None,
                    })
                    .collect();
                let valid: Vec<u8> = steps.iter().flatten().copied().collect();
                let increasing = valid.windows(2).all(|pair| pair[0] < pair[1]);
                if valid.len() != steps.len()
                    || !increasing
                    || valid.first().is_some_and(|first| *first == 0)
                    || valid.last() != Some(&100)
                {
                    read.problem(
                        "steps",
                        "must be increasing percentages between 1 and 100, ending with 100",
                    );
                    defaults.steps.clone()
                } else {
                    valid
                }
            }
            Some(Checked::Invalid(message)) => {
                read.problem("steps", message);
                defaults.steps.clone()
            }
        };
        let bake = read
            .duration_or_zero("bake", raw.bake)
            .unwrap_or(defaults.bake);
        let timeout = read
            .duration("timeout", raw.timeout)
            .unwrap_or(defaults.timeout);
        let verify = read
            .duration_or_zero("verify", raw.verify)
            .unwrap_or(defaults.verify);
        let revert_commit = read
            .get("revert_commit", raw.revert_commit)
            .unwrap_or(defaults.revert_commit);
        let max_restarts = match read.get("max_restarts", raw.max_restarts) {
            Some(n) => u32::try_from(n).unwrap_or_else(|_| {
                read.problem("max_restarts", "is too large");
                defaults.max_restarts
            }),
            None => defaults.max_restarts,
        };
        self.problems.extend(unknown.under("rollout"));
        RolloutConfig {
            steps,
            bake,
            timeout,
            verify,
            revert_commit,
            max_restarts,
        }
    }

    fn health_checks(
        &mut self,
        raw: Vec<RawHealthCheck>,
        prefix: &str,
        unknown: &mut Unknown,
    ) -> Vec<HealthCheckConfig> {
        let mut checks = Vec::new();
        for (index, raw) in raw.into_iter().enumerate() {
            let table = format!("health[{index}]");
            if let Some(check) = self.health_check(raw, &join(prefix, &table), &table, unknown) {
                checks.push(check);
            }
            self.problems.extend(unknown.under(&table));
        }
        checks
    }

    fn health_check(
        &mut self,
        raw: RawHealthCheck,
        key: &str,
        table: &str,
        unknown: &mut Unknown,
    ) -> Option<HealthCheckConfig> {
        let mut read = self.reader(key);
        let kind = read.required("type", raw.kind);
        let name = read.get("name", raw.name);
        let interval = read
            .duration("interval", raw.interval)
            .unwrap_or(Duration::from_secs(10));
        let failures = read.get("failures", raw.failures).unwrap_or(3);
        if failures == 0 {
            read.problem("failures", "must be at least 1");
        }
        let timeout = read.duration("timeout", raw.timeout);
        let kind = kind?;
        let only = |read: &mut Reader<'_>, keys: &[(&str, bool)], allowed: &[&str]| {
            for (name, set) in keys {
                if !allowed.contains(name) {
                    read.unknown_if(name, *set);
                }
            }
        };
        let specific = [
            ("url", raw.url.is_some()),
            ("expect_status", raw.expect_status.is_some()),
            ("body_contains", raw.body_contains.is_some()),
            ("query", raw.query.is_some()),
            ("min", raw.min.is_some()),
            ("max", raw.max.is_some()),
            ("empty_is_healthy", raw.empty_is_healthy.is_some()),
            ("command", raw.command.is_some()),
        ];
        let check = match kind.as_str() {
            "http" => {
                let url = read.required("url", raw.url);
                let expect_status = read.get("expect_status", raw.expect_status).unwrap_or(200);
                let body_contains = read.get("body_contains", raw.body_contains);
                if !(100..=599).contains(&expect_status) {
                    read.problem("expect_status", "must be an HTTP status (100-599)");
                }
                only(
                    &mut read,
                    &specific,
                    &["url", "expect_status", "body_contains"],
                );
                CheckKind::Http {
                    url: url?,
                    expect_status: u16::try_from(expect_status).unwrap_or(200),
                    body_contains,
                    timeout: timeout.unwrap_or(Duration::from_secs(5)),
                }
            }
            "prometheus" => {
                let url = read.required("url", raw.url);
                let query = read.required("query", raw.query);
                let finite = |read: &mut Reader<'_>, key: &str, value: Option<Checked<f64>>| {
                    let number = read.get(key, value)?;
                    if !number.is_finite() {
                        read.problem(key, "must be a number");
                        return None;
                    }
                    Some(number)
                };
                let min = finite(&mut read, "min", raw.min);
                let max = finite(&mut read, "max", raw.max);
                let empty_is_healthy = read
                    .get("empty_is_healthy", raw.empty_is_healthy)
                    .unwrap_or(false);
                if min.is_none() && max.is_none() {
                    read.problem("max", "a prometheus check needs min, max or both");
                }
                only(
                    &mut read,
                    &specific,
                    &["url", "query", "min", "max", "empty_is_healthy"],
                );
                CheckKind::Prometheus {
                    url: url?.trim_end_matches('/').to_string(),
                    query: query?,
                    min,
                    max,
                    empty_is_healthy,
                    timeout: timeout.unwrap_or(Duration::from_secs(5)),
                }
            }
            "exec" => {
                let command = read.required("command", raw.command);
                only(&mut read, &specific, &["command"]);
                let command = command?;
                let argv = match shell_words::split(&command) {
                    Ok(argv) if !argv.is_empty() => argv,
                    Ok(_) => {
                        read.problem("command", "must not be empty");
                        return None;
                    }
                    Err(error) => {
                        read.problem("command", format!("cannot split {command:?}: {error}"));
                        return None;
                    }
                };
                CheckKind::Exec {
                    argv,
                    timeout: timeout.unwrap_or(Duration::from_secs(30)),
                }
            }
            other => {
                read.problem(
                    "type",
                    format!("unknown check type {other:?}; expected \"http\", \"prometheus\" or \"exec\""),
                );
                unknown.drop_under(table);
                return None;
            }
        };
        let name = name.unwrap_or_else(|| match &check {
            CheckKind::Http { url, .. } => format!("http {url}"),
            CheckKind::Prometheus { query, .. } => format!("prometheus {query}"),
            CheckKind::Exec { argv, .. } => format!("exec {}", argv.join(" ")),
        });
        Some(HealthCheckConfig {
            name,
            check,
            interval,
            failures: u32::try_from(failures).unwrap_or(u32::MAX).max(1),
        })
    }

    fn window(
        &mut self,
        raw: RawWindow,
        prefix: &str,
        unknown: &mut Unknown,
    ) -> Option<WindowConfig> {
        let key = join(prefix, "window");
        let mut read = self.reader(key.clone());
        let schedule = read.required("schedule", raw.schedule);
        let duration = if raw.duration.is_some() {
            read.duration("duration", raw.duration)
        } else {
            read.problem("duration", "missing");
            None
        };
        let timezone = read
            .get("timezone", raw.timezone)
            .unwrap_or_else(|| "UTC".into());
        self.problems.extend(unknown.under("window"));
        let (schedule, duration) = (schedule?, duration?);
        match crate::gates::Window::parse(&schedule, duration, &timezone) {
            Ok(_) => Some(WindowConfig {
                schedule,
                duration,
                timezone,
            }),
            Err(message) => {
                self.problem(key, message.to_string());
                None
            }
        }
    }

    /// `render = { kind = … }`: kustomize, helm or a command.
    fn render(
        &mut self,
        raw: RawRender,
        prefix: &str,
        environment: &str,
        namespace: &str,
        unknown: &mut Unknown,
    ) -> Option<crate::render::RenderConfig> {
        use crate::render::{RenderConfig, Tool, is_repo_program};
        let key = join(prefix, "render");
        let mut read = self.reader(key.clone());
        let kind = read.required("kind", raw.kind);
        let timeout = read
            .duration("timeout", raw.timeout)
            .unwrap_or(Duration::from_secs(60));
        let env = read.get("env", raw.env).unwrap_or_default();
        for name in &env {
            if name.is_empty() || name.contains('=') || name == "PATH" || name == "HOME" {
                read.problem(
                    "env",
                    format!("{name:?} cannot be passed: names a variable, not PATH or HOME (gitopsd sets those)"),
                );
            }
        }
        let max_output_bytes = read
            .get("max_output_bytes", raw.max_output_bytes)
            .unwrap_or(64 * 1024 * 1024);
        let max_tree_bytes = read
            .get("max_tree_bytes", raw.max_tree_bytes)
            .unwrap_or(256 * 1024 * 1024);
        let allow_repo_commands = read
            .get("allow_repo_commands", raw.allow_repo_commands)
            .unwrap_or(false);
        let binary = |read: &mut Reader<'_>, value: Option<Checked<String>>| {
            let binary = read.get("binary", value);
            if binary.as_deref() == Some("") {
                read.problem("binary", "must not be empty");
            }
            binary
        };
        let specific = [
            ("binary", raw.binary.is_some()),
            ("chart", raw.chart.is_some()),
            ("values", raw.values.is_some()),
            ("release", raw.release.is_some()),
            ("namespace", raw.namespace.is_some()),
            ("command", raw.command.is_some()),
        ];
        let only = |read: &mut Reader<'_>, allowed: &[&str]| {
            for (name, set) in specific {
                if !allowed.contains(&name) {
                    read.unknown_if(name, set);
                }
            }
        };
        let tool = match kind.as_deref() {
            None => None,
            Some("kustomize") => {
                let binary = binary(&mut read, raw.binary);
                only(&mut read, &["binary"]);
                Some(Tool::Kustomize { binary })
            }
            Some("helm") => {
                let binary = binary(&mut read, raw.binary);
                let chart = read.repo_path("chart", raw.chart);
                let values = read.get("values", raw.values).unwrap_or_default();
                for file in &values {
                    if !valid_repo_path(file) {
                        read.problem(
                            "values",
                            format!(
                                "{file:?} must be a relative path inside the repository (no '..')"
                            ),
                        );
                    }
                }
                let release = read
                    .get("release", raw.release)
                    .unwrap_or_else(|| environment.to_string());
                let namespace = read
                    .get("namespace", raw.namespace)
                    .unwrap_or_else(|| namespace.to_string());
                only(
                    &mut read,
                    &["binary", "chart", "values", "release", "namespace"],
                );
                chart.map(|chart| Tool::Helm {
                    binary,
                    chart,
                    values,
                    release,
                    namespace,
                })
            }
            Some("command") => {
                let had_command = raw.command.is_some();
                let tool = match read.get("command", raw.command) {
                    Some(argv) if argv.first().is_some_and(|program| !program.is_empty()) => {
                        Some(Tool::Command { argv })
                    }
                    Some(_) => {
                        read.problem("command", "must name a program first");
                        None
                    }
                    None => {
                        if !had_command {
                            read.problem("command", "missing");
                        }
                        None
                    }
                };
                only(&mut read, &["command"]);
                tool
            }
            Some(other) => {
                read.problem(
                    "kind",
                    format!(
                        "unknown render kind {other:?}; expected \"kustomize\", \"helm\" or \"command\""
                    ),
                );
                unknown.drop_under("render");
                None
            }
        };
        self.problems.extend(unknown.under("render"));
        let tool = tool?;
        if is_repo_program(tool.program()) && !allow_repo_commands {
            self.problem(
                join(&key, tool.program_key()),
                format!(
                    "{:?} runs a program from the repository, which gitopsd treats as data, not code it trusts; set allow_repo_commands = true to allow it",
                    tool.program()
                ),
            );
        }
        Some(RenderConfig {
            tool,
            timeout,
            env,
            max_output_bytes,
            max_tree_bytes,
            allow_repo_commands,
            cache_max_bytes: 0,
            revert_excluded: Vec::new(),
        })
    }

    /// Globs, each checked; a value that is not a list of strings is one problem.
    fn globs(&mut self, key: &str, raw: Option<Checked<Globs>>) -> Vec<crate::policy::Glob> {
        match raw {
            None => Vec::new(),
            Some(Checked::Invalid(message)) => {
                self.problem(key.to_string(), message);
                Vec::new()
            }
            Some(Checked::Valid(Globs(items))) => self.glob_list(key, items),
        }
    }

    fn glob_list(&mut self, key: &str, items: Vec<Checked<String>>) -> Vec<crate::policy::Glob> {
        let mut globs = Vec::new();
        for item in items {
            match item {
                Checked::Valid(text) => match crate::policy::Glob::new(&text) {
                    Ok(glob) => globs.push(glob),
                    Err(error) => self.problem(
                        key.to_string(),
                        format!("{text:?} is not a valid glob: {error}"),
                    ),
                },
                Checked::Invalid(_) => {
                    self.problem(key.to_string(), "must be an array of glob patterns")
                }
            }
        }
        globs
    }

    /// `allowed_namespaces`, `allowed_kinds`, `denied_kinds` and `cluster_scoped`.
    fn policy(&mut self, raw: RawPolicy, prefix: &str) -> crate::policy::Policy {
        use crate::policy::{ClusterScoped, Policy};
        let allowed_namespaces =
            self.globs(&join(prefix, "allowed_namespaces"), raw.allowed_namespaces);
        let allowed_kinds = self.globs(&join(prefix, "allowed_kinds"), raw.allowed_kinds);
        let denied_kinds = self.globs(&join(prefix, "denied_kinds"), raw.denied_kinds);
        let key = join(prefix, "cluster_scoped");
        let cluster_scoped = match raw.cluster_scoped {
            None => ClusterScoped::Allow,
            Some(Checked::Valid(RawClusterScoped::Word(word))) => match word.as_str() {
                "allow" => ClusterScoped::Allow,
                "deny" => ClusterScoped::Deny,
                other => {
                    self.problem(
                        key,
                        format!("unknown value {other:?}; expected \"allow\", \"deny\" or a list of group/Kind globs"),
                    );
                    ClusterScoped::Deny
                }
            },
            Some(Checked::Valid(RawClusterScoped::Globs(items))) => {
                ClusterScoped::Only(self.glob_list(&key, items))
            }
            Some(Checked::Invalid(message)) => {
                self.problem(key, message);
                ClusterScoped::Deny
            }
        };
        Policy {
            allowed_namespaces,
            allowed_kinds,
            denied_kinds,
            cluster_scoped,
        }
    }
}

/// The file as written: every field optional and every value [`Checked`], so that reading
/// never stops at a problem; [`Checker`] then turns it into a [`Config`].
#[derive(Debug, Deserialize)]
struct RawConfig {
    repo: Option<RawRepo>,
    state: Option<RawState>,
    api: Option<RawApi>,
    webhook: Option<Vec<RawWebhook>>,
    environment: Option<Checked<Tables>>,
}

#[derive(Debug, Deserialize)]
struct RawEnvironment {
    name: Option<Checked<String>>,
    path: Option<Checked<String>>,
    namespace: Option<Checked<String>>,
    render: Option<RawRender>,
    target: Option<RawTarget>,
    prune: Option<Checked<bool>>,
    allow_empty: Option<Checked<bool>>,
    // Not `#[serde(flatten)]`: that hides unknown keys from serde_ignored.
    allowed_namespaces: Option<Checked<Globs>>,
    allowed_kinds: Option<Checked<Globs>>,
    denied_kinds: Option<Checked<Globs>>,
    cluster_scoped: Option<Checked<RawClusterScoped>>,
    rollout: Option<RawRollout>,
    health: Option<Vec<RawHealthCheck>>,
    after: Option<Checked<String>>,
    approval: Option<Checked<String>>,
    window: Option<RawWindow>,
}

/// What an environment may touch, as written.
struct RawPolicy {
    allowed_namespaces: Option<Checked<Globs>>,
    allowed_kinds: Option<Checked<Globs>>,
    denied_kinds: Option<Checked<Globs>>,
    cluster_scoped: Option<Checked<RawClusterScoped>>,
}

/// A list of glob patterns; each item is checked on its own.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
struct Globs(Vec<Checked<String>>);

impl Expected for Globs {
    const WHAT: &'static str = "an array of glob patterns";
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawClusterScoped {
    Word(String),
    Globs(Vec<Checked<String>>),
}

impl Expected for RawClusterScoped {
    const WHAT: &'static str = "\"allow\", \"deny\" or a list of group/Kind globs";
}

/// The `[[environment]]` tables, each read on its own so one broken table spoils no other.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
struct Tables(Vec<Value>);

impl Expected for Tables {
    const WHAT: &'static str = "an array of tables";
}

#[derive(Debug, Deserialize)]
struct RawTarget {
    #[serde(rename = "type")]
    kind: Option<Checked<String>>,
    path: Option<Checked<String>>,
    kubeconfig: Option<Checked<String>>,
    context: Option<Checked<String>>,
    force_conflicts: Option<Checked<bool>>,
    adopt: Option<Checked<bool>>,
    applyset_namespace: Option<Checked<String>>,
    concurrency: Option<Checked<u64>>,
    requests_per_second: Option<Checked<u64>>,
    delete_foreign_namespaces: Option<Checked<bool>>,
}

#[derive(Debug, Deserialize)]
struct RawRollout {
    steps: Option<Checked<Steps>>,
    bake: Option<Checked<HumanDuration>>,
    timeout: Option<Checked<HumanDuration>>,
    verify: Option<Checked<HumanDuration>>,
    revert_commit: Option<Checked<bool>>,
    max_restarts: Option<Checked<u64>>,
}

/// Canary weights; each item is checked on its own.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
struct Steps(Vec<Checked<u64>>);

impl Expected for Steps {
    const WHAT: &'static str = "an array like [10, 50, 100]";
}

#[derive(Debug, Deserialize)]
struct RawHealthCheck {
    #[serde(rename = "type")]
    kind: Option<Checked<String>>,
    name: Option<Checked<String>>,
    interval: Option<Checked<HumanDuration>>,
    failures: Option<Checked<u64>>,
    timeout: Option<Checked<HumanDuration>>,
    url: Option<Checked<String>>,
    expect_status: Option<Checked<u64>>,
    body_contains: Option<Checked<String>>,
    query: Option<Checked<String>>,
    min: Option<Checked<f64>>,
    max: Option<Checked<f64>>,
    empty_is_healthy: Option<Checked<bool>>,
    command: Option<Checked<String>>,
}

#[derive(Debug, Deserialize)]
struct RawWindow {
    schedule: Option<Checked<String>>,
    duration: Option<Checked<HumanDuration>>,
    timezone: Option<Checked<String>>,
}

#[derive(Debug, Deserialize)]
struct RawRender {
    kind: Option<Checked<String>>,
    timeout: Option<Checked<HumanDuration>>,
    env: Option<Checked<Vec<String>>>,
    max_output_bytes: Option<Checked<u64>>,
    max_tree_bytes: Option<Checked<u64>>,
    allow_repo_commands: Option<Checked<bool>>,
    binary: Option<Checked<String>>,
    chart: Option<Checked<String>>,
    values: Option<Checked<Vec<String>>>,
    release: Option<Checked<String>>,
    namespace: Option<Checked<String>>,
    command: Option<Checked<Vec<String>>>,
}

/// Unknown keys of one environment, handed out table by table so each is reported where the
/// table's other problems are.
struct Unknown {
    prefix: String,
    keys: Vec<ConfigProblem>,
}

impl Unknown {
    fn new(prefix: &str, keys: Vec<ConfigProblem>) -> Self {
        Self {
            prefix: prefix.to_string(),
            keys,
        }
    }

    fn is_under(key: &str, table: &str) -> bool {
        key.strip_prefix(table)
            .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
    }

    /// The unknown keys inside `table`, named in full.
    fn under(&mut self, table: &str) -> Vec<ConfigProblem> {
        let (inside, rest) = std::mem::take(&mut self.keys)
            .into_iter()
            .partition(|problem| Self::is_under(&problem.key, table));
        self.keys = rest;
        inside
            .into_iter()
            .map(|problem: ConfigProblem| ConfigProblem {
                key: join(&self.prefix, &problem.key),
                ..problem
            })
            .collect()
    }

    /// Forgets the unknown keys inside `table` (its type is unknown, so are its keys).
    fn drop_under(&mut self, table: &str) {
        self.keys
            .retain(|problem| !Self::is_under(&problem.key, table));
    }

    /// Every unknown key not handed out yet.
    fn rest(self) -> Vec<ConfigProblem> {
        let prefix = self.prefix;
        self.keys
            .into_iter()
            .map(|problem| ConfigProblem {
                key: join(&prefix, &problem.key),
                ..problem
            })
            .collect()
    }
}

#[derive(Debug, Deserialize)]
struct RawRepo {
    url: Option<Checked<String>>,
    branch: Option<Checked<String>>,
    poll_interval: Option<Checked<HumanDuration>>,
    token_file: Option<Checked<String>>,
    token_username: Option<Checked<String>>,
    ssh_key_file: Option<Checked<String>>,
    ssh_known_hosts_file: Option<Checked<String>>,
    max_file_bytes: Option<Checked<u64>>,
    max_files: Option<Checked<u64>>,
    max_documents: Option<Checked<u64>>,
    max_depth: Option<Checked<u64>>,
    max_aliases: Option<Checked<u64>>,
    max_total_bytes: Option<Checked<u64>>,
    fetch_timeout: Option<Checked<HumanDuration>>,
    verify: Option<RawVerify>,
}

#[derive(Debug, Deserialize)]
struct RawVerify {
    allowed_signers: Option<Checked<String>>,
    gpg_keyring: Option<Checked<String>>,
    signing_key: Option<Checked<String>>,
    mode: Option<Checked<String>>,
}

#[derive(Debug, Default, Deserialize)]
struct RawState {
    dir: Option<Checked<String>>,
    render_cache_max_bytes: Option<Checked<u64>>,
    journal_max_bytes: Option<Checked<u64>>,
    journal_max_age: Option<Checked<HumanDuration>>,
    journal_keep_records: Option<Checked<u64>>,
}

#[derive(Debug, Deserialize)]
struct RawApi {
    listen: Option<Checked<String>>,
    token_file: Option<Checked<String>>,
}

#[derive(Debug, Deserialize)]
struct RawWebhook {
    url: Option<Checked<String>>,
    events: Option<Checked<Vec<String>>>,
    timeout: Option<Checked<HumanDuration>>,
}

impl Checker {
    fn reader(&mut self, prefix: impl Into<String>) -> Reader<'_> {
        Reader {
            problems: &mut self.problems,
            prefix: prefix.into(),
        }
    }

    fn repo(&mut self, raw: Option<RawRepo>, base: &Path) -> Option<RepoConfig> {
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

    fn state(&mut self, raw: RawState, base: &Path) -> StateConfig {
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

    fn webhooks(&mut self, raw: Vec<RawWebhook>) -> Vec<WebhookConfig> {
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
            if let Some(url) = url {
                webhooks.push(WebhookConfig {
                    url,
                    events,
                    timeout,
                });
            }
        }
        webhooks
    }

    fn api(&mut self, raw: RawApi, base: &Path) -> Option<ApiConfig> {
        let mut read = self.reader("api");
        let listen = read
            .get("listen", raw.listen)
            .unwrap_or_else(|| DEFAULT_API_LISTEN.into());
        let token_file = read.path("token_file", raw.token_file, base);
        match listen.parse() {
            Ok(listen) => Some(ApiConfig { listen, token_file }),
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

fn valid_environment_name(name: &str) -> bool {
    name.len() <= 63
        && name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn valid_repo_path(path: &str) -> bool {
    let path = Path::new(path);
    !path.as_os_str().is_empty()
        && path
            .components()
            .all(|component| matches!(component, Component::Normal(_)))
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
    use super::*;

    fn parse(toml: &str) -> Result<Config, Vec<ConfigProblem>> {
        let root: Dict = Figment::new()
            .merge(Toml::string(toml))
            .extract()
            .expect("test TOML is well-formed");
        Config::from_dict(root, Path::new("/etc/gitopsd"))
    }

    #[test]
    fn environment_limits_are_checked_with_their_keys() {
        let problems = parse(
            r#"
            [repo]
            url = "deploy-repo"
            [[environment]]
            name = "staging"
            path = "environments/staging"
            target = { type = "directory", path = "live/staging" }
            allowed_kinds = ["apps/[", 3]
            cluster_scoped = "maybe"
            "#,
        )
        .expect_err("invalid");
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "environment[0].allowed_kinds",
                "environment[0].allowed_kinds",
                "environment[0].cluster_scoped"
            ],
            "{problems:?}"
        );
        let config = parse(
            r#"
            [repo]
            url = "deploy-repo"
            [[environment]]
            name = "staging"
            path = "environments/staging"
            target = { type = "directory", path = "live/staging" }
            cluster_scoped = ["core/Namespace"]
            "#,
        )
        .expect("valid");
        assert!(matches!(
            &config.environments[0].policy.cluster_scoped,
            crate::policy::ClusterScoped::Only(globs) if globs.len() == 1
        ));
    }

    #[test]
    fn render_tables_are_read_with_defaults_and_checked_with_their_keys() {
        let config = parse(
            r#"
            [repo]
            url = "deploy-repo"
            [state]
            render_cache_max_bytes = 1000
            [[environment]]
            name = "staging"
            path = "overlays/staging"
            render = { kind = "kustomize" }
            target = { type = "directory", path = "live/staging" }
            [[environment]]
            name = "prod"
            path = "charts/web"
            namespace = "shop"
            render = { kind = "helm", chart = "charts/web", values = ["values/prod.yaml"], env = ["HELM_CACHE_HOME"], timeout = "2m" }
            target = { type = "directory", path = "live/prod" }
            [[environment]]
            name = "other"
            path = "overlays/other"
            target = { type = "directory", path = "live/other" }
            "#,
        )
        .expect("valid");
        let staging = config.environments[0].render.as_ref().expect("render");
        assert_eq!(
            staging.tool,
            crate::render::Tool::Kustomize { binary: None }
        );
        assert_eq!(staging.timeout, Duration::from_secs(60));
        assert_eq!(staging.cache_max_bytes, 1000);
        assert!(!staging.allow_repo_commands);
        assert_eq!(staging.revert_excluded, ["charts/web", "overlays/other"]);
        let prod = config.environments[1].render.as_ref().expect("render");
        assert_eq!(
            prod.tool,
            crate::render::Tool::Helm {
                binary: None,
                chart: "charts/web".into(),
                values: vec!["values/prod.yaml".into()],
                release: "prod".into(),
                namespace: "shop".into(),
            },
            "release and namespace default to the environment's"
        );
        assert_eq!(prod.env, ["HELM_CACHE_HOME"]);
        assert_eq!(prod.timeout, Duration::from_secs(120));
        assert_eq!(config.environments[2].render, None);

        let problems = parse(
            r#"
            [repo]
            url = "deploy-repo"
            [[environment]]
            name = "a"
            path = "a"
            render = { kind = "jsonnet" }
            target = { type = "directory", path = "a" }
            [[environment]]
            name = "b"
            path = "b"
            render = { kind = "helm", values = ["../secrets.yaml"], env = ["PATH"] }
            target = { type = "directory", path = "b" }
            [[environment]]
            name = "c"
            path = "c"
            render = { kind = "command", command = ["./render.sh", "{path}"], shell = true }
            target = { type = "directory", path = "c" }
            [[environment]]
            name = "d"
            path = "d"
            render = { kind = "command", command = [] }
            target = { type = "directory", path = "d" }
            "#,
        )
        .expect_err("invalid");
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "environment[0].render.kind",
                "environment[1].render.env",
                "environment[1].render.chart",
                "environment[1].render.values",
                "environment[2].render.shell",
                "environment[2].render.command",
                "environment[3].render.command",
            ],
            "{problems:#?}"
        );
        assert!(
            problems[5].message.contains("allow_repo_commands = true"),
            "{problems:#?}"
        );
    }

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
    fn kubernetes_targets_force_by_default_and_take_ownership_keys() {
        let config = parse(
            r#"
            [repo]
            url = "https://git.example.com/ops.git"
            [[environment]]
            name = "staging"
            path = "envs/staging"
            allow_empty = true
            target = { type = "kubernetes", context = "lab" }
            [[environment]]
            name = "production"
            path = "envs/production"
            target = { type = "kubernetes", force_conflicts = false, adopt = true, applyset_namespace = "gitopsd" }
            "#,
        )
        .expect("valid");
        let settings = |index: usize| match &config.environments[index].target {
            TargetConfig::Kubernetes(settings) => settings.clone(),
            other => panic!("not kubernetes: {other:?}"),
        };
        assert!(config.environments[0].allow_empty);
        assert!(settings(0).force_conflicts, "git is the source of truth");
        assert!(!settings(0).adopt);
        assert_eq!(settings(0).applyset_namespace, None);
        assert!(!settings(1).force_conflicts);
        assert!(settings(1).adopt);
        assert_eq!(settings(1).applyset_namespace.as_deref(), Some("gitopsd"));
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
    fn rollout_and_health_checks_are_read_and_checked() {
        let config = parse(
            r#"
            [repo]
            url = "r"
            [[environment]]
            name = "a"
            path = "a"
            target = { type = "directory", path = "a" }
            [environment.rollout]
            steps = [10, 50, 100]
            bake = "1m"
            verify = "0s"
            [[environment.health]]
            type = "exec"
            command = "smoke-test --name 'two words'"
            [[environment.health]]
            type = "prometheus"
            url = "http://127.0.0.1:9090/"
            query = "up"
            min = 1
            "#,
        )
        .expect("valid");
        let env = &config.environments[0];
        assert_eq!(env.rollout.steps, [10, 50, 100]);
        assert_eq!(env.rollout.bake, Duration::from_secs(60));
        assert_eq!(env.rollout.verify, Duration::ZERO);
        assert_eq!(env.health[0].failures, 3);
        assert_eq!(env.health[0].name, "exec smoke-test --name two words");
        let CheckKind::Exec { argv, .. } = &env.health[0].check else {
            panic!("exec check expected");
        };
        assert_eq!(argv, &["smoke-test", "--name", "two words"]);
        let CheckKind::Prometheus { url, min, max, .. } = &env.health[1].check else {
            panic!("prometheus check expected");
        };
        assert_eq!(url, "http://127.0.0.1:9090");
        assert_eq!((*min, *max), (Some(1.0), None));

        let problems = parse(
            r#"
            [repo]
            url = "r"
            [[environment]]
            name = "a"
            path = "a"
            target = { type = "directory", path = "a" }
            [environment.rollout]
            steps = [50, 10]
            [[environment.health]]
            type = "prometheus"
            url = "http://p"
            query = "up"
            failures = 0
            [[environment.health]]
            type = "smoke"
            "#,
        )
        .expect_err("invalid");
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "environment[0].rollout.steps",
                "environment[0].health[0].failures",
                "environment[0].health[0].max",
                "environment[0].health[1].type",
            ]
        );
    }

    #[test]
    fn shipped_example_config_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gitopsd.toml");
        let config = Config::load(&path).expect("config/gitopsd.toml documents a valid config");
        assert_eq!(config.environments.len(), 2);
        assert_eq!(config.repo.max_file_bytes, DEFAULT_MAX_FILE_BYTES);
    }

    #[test]
    fn two_environments_cannot_share_a_name_or_folder() {
        let problems = parse(
            r#"
            [repo]
            url = "https://example.com/r.git"
            token_file = "token"
            [[environment]]
            name = "a"
            path = "a"
            target = { type = "directory", path = "/srv/x" }
            [[environment]]
            name = "a"
            path = "b"
            target = { type = "directory", path = "/srv/x" }
            "#,
        )
        .expect_err("invalid");
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["environment[1].name", "environment[1].target.path"]);
    }
}
