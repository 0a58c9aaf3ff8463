//! `[[environment]]`: each environment's table read and checked (name, folder, target, policy,
//! rollout, approval, window), and the `after` chains between environments.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use figment::value::Value;

use crate::backend::{KubernetesSettings, TargetConfig};
use crate::rollout::{RolloutConfig, Strategy};
use crate::source::RepoConfig;

use super::check::{Checker, Unknown};
use super::checked::{self, Checked, Reader};
use super::raw::{
    Globs, RawClusterScoped, RawEnvironment, RawPolicy, RawRollout, RawTarget, RawWindow, Steps,
    Tables,
};
use super::{EnvironmentConfig, WindowConfig, join, valid_repo_path};

/// Names and target folders of the environments read so far: each must be unique.
#[derive(Default)]
struct Seen {
    names: BTreeSet<String>,
    target_paths: BTreeSet<PathBuf>,
}

impl Checker {
    pub(super) fn environments(
        &mut self,
        raw: Option<Checked<Tables>>,
        base: &Path,
        repo: Option<&RepoConfig>,
    ) -> Vec<EnvironmentConfig> {
        let (repo_url, repo_branch) = repo.map_or(("", ""), |repo| (&repo.url, &repo.branch));
        let origin = format!("{repo_url}#{repo_branch}");
        let Some(items) = self.environment_tables(raw) else {
            return Vec::new();
        };
        let mut seen = Seen::default();
        // Each kept with its index among the tables: problems name that, not its place among
        // the environments that were complete enough to keep.
        let mut environments = Vec::new();
        for (index, item) in items.iter().enumerate() {
            if let Some(environment) = self.environment(item, index, base, &origin, &mut seen) {
                environments.push((index, environment));
            }
        }
        self.afters(&environments, &seen.names);
        environments
            .into_iter()
            .map(|(_, environment)| environment)
            .collect()
    }

    /// The `[[environment]]` tables; a problem when there are none or they are not tables.
    fn environment_tables(&mut self, raw: Option<Checked<Tables>>) -> Option<Vec<Value>> {
        match raw {
            Some(Checked::Valid(Tables(items))) => Some(items),
            Some(Checked::Invalid(_)) => {
                self.problem(
                    "environment".into(),
                    "must be an array of tables ([[environment]])",
                );
                None
            }
            None => {
                self.problem(
                    "environment".into(),
                    "at least one [[environment]] is required",
                );
                None
            }
        }
    }

    /// The environment of table `index`, when it is complete enough to keep; `origin` is
    /// `<repo url>#<branch>`.
    fn environment(
        &mut self,
        item: &Value,
        index: usize,
        base: &Path,
        origin: &str,
        seen: &mut Seen,
    ) -> Option<EnvironmentConfig> {
        let prefix = format!("environment[{index}]");
        let (raw, unknown) = match checked::read::<RawEnvironment>(item) {
            Ok(read) => read,
            Err(problem) => {
                self.problem(join(&prefix, &problem.key), problem.message);
                return None;
            }
        };
        let mut unknown = Unknown::new(&prefix, unknown);
        let mut read = self.reader(prefix.clone());
        let (name, path) = identity(&mut read, raw.name, raw.path, &mut seen.names);
        let namespace = read
            .get("namespace", raw.namespace)
            .unwrap_or_else(|| "default".into());
        let render = raw.render.and_then(|render| {
            let name = name.as_deref().unwrap_or_default();
            let folder = path.as_deref().unwrap_or_default().trim_end_matches('/');
            self.render(render, &prefix, (name, folder), &namespace, &mut unknown)
        });
        let mut target = self.target(raw.target, &prefix, base, &mut unknown);
        let create_namespace =
            self.create_namespace(&prefix, &namespace, raw.create_namespace, &mut target);
        self.folder_not_shared(target.as_ref(), &prefix, seen);
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
        let hooks = self.hooks(raw.hook.unwrap_or_default(), &prefix, &mut unknown);
        let mut read = self.reader(prefix.clone());
        let after = read.get("after", raw.after);
        let manual_approval = approval(&mut read, raw.approval);
        let window = raw
            .window
            .and_then(|window| self.window(window, &prefix, &mut unknown));
        let decryption = self.decryption(raw.decryption, &prefix, base, &mut unknown);
        self.problems.extend(unknown.rest());
        let (name, path, target) = (name?, path?, target?);
        let path = path.trim_end_matches('/').to_string();
        Some(EnvironmentConfig {
            source: format!("{origin}:{path}"),
            name,
            path,
            render,
            target,
            namespace,
            prune,
            allow_empty,
            create_namespace,
            policy,
            rollout,
            health,
            after,
            manual_approval,
            window,
            hooks,
            decryption,
        })
    }

    /// `create_namespace`: kubernetes targets only; the target is told which namespace.
    fn create_namespace(
        &mut self,
        prefix: &str,
        namespace: &str,
        raw: Option<Checked<bool>>,
        target: &mut Option<TargetConfig>,
    ) -> bool {
        let mut read = self.reader(prefix.to_string());
        let create = read.get("create_namespace", raw).unwrap_or(false);
        match target {
            Some(TargetConfig::Kubernetes(settings)) if create => {
                settings.create_namespace = Some(namespace.to_string());
            }
            Some(TargetConfig::Directory { .. }) if create => self.problem(
                join(prefix, "create_namespace"),
                "only a kubernetes target has namespaces to create",
            ),
            _ => {}
        }
        create
    }

    /// A directory target's folder belongs to one environment only.
    fn folder_not_shared(&mut self, target: Option<&TargetConfig>, prefix: &str, seen: &mut Seen) {
        if let Some(TargetConfig::Directory { path }) = target
            && !seen.target_paths.insert(path.clone())
        {
            self.problem(
                join(prefix, "target.path"),
                "another environment already uses this folder",
            );
        }
    }

    /// Each kept environment's `after`: another environment, with no chain coming back to it.
    /// `environments` are paired with their table's index.
    fn afters(&mut self, environments: &[(usize, EnvironmentConfig)], names: &BTreeSet<String>) {
        for (index, environment) in environments {
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
                        .find(|(_, e)| e.name == current)
                        .and_then(|(_, e)| e.after.clone());
                }
            }
        }
    }

    fn target(
        &mut self,
        raw: Option<RawTarget>,
        prefix: &str,
        base: &Path,
        unknown: &mut Unknown,
    ) -> Option<TargetConfig> {
        let key = join(prefix, "target");
        let Some(mut raw) = raw else {
            self.problem(key, "missing");
            return None;
        };
        let mut read = self.reader(key);
        let kind = read.required("type", raw.kind.take())?;
        let result = match kind.as_str() {
            "directory" => directory_target(&mut read, raw, base),
            "kubernetes" => Some(kubernetes_target(&mut read, raw, base)),
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
        let strategy = match read.get("strategy", raw.strategy) {
            Some(value) => Strategy::parse(&value).unwrap_or_else(|| {
                read.problem("strategy", strategy_problem(&value));
                defaults.strategy
            }),
            None => defaults.strategy,
        };
        let blue_green = blue_green_keys(
            &mut read,
            raw.scale_down_delay,
            raw.auto_promote,
            raw.preview_replicas,
            raw.preview_service,
        );
        self.problems.extend(unknown.under("rollout"));
        RolloutConfig {
            strategy,
            steps,
            bake,
            timeout,
            verify,
            revert_commit,
            max_restarts,
            ..blue_green
        }
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

/// `name` and `path`: a unique name and a folder inside the repository.
fn identity(
    read: &mut Reader<'_>,
    name: Option<Checked<String>>,
    path: Option<Checked<String>>,
    names: &mut BTreeSet<String>,
) -> (Option<String>, Option<String>) {
    let name = read.required("name", name);
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
    let path = read.required("path", path);
    if let Some(path) = &path
        && !valid_repo_path(path)
    {
        read.problem(
            "path",
            "must be a relative folder inside the repository (no '..')",
        );
    }
    (name, path)
}

/// The blue/green keys of `[rollout]`, in a config otherwise left at its defaults.
fn blue_green_keys(
    read: &mut Reader<'_>,
    scale_down_delay: Option<Checked<super::checked::HumanDuration>>,
    auto_promote: Option<Checked<bool>>,
    preview_replicas: Option<Checked<u64>>,
    preview_service: Option<Checked<String>>,
) -> RolloutConfig {
    let defaults = RolloutConfig::default();
    let scale_down_delay = read
        .duration_or_zero("scale_down_delay", scale_down_delay)
        .unwrap_or(defaults.scale_down_delay);
    let auto_promote = read
        .get("auto_promote", auto_promote)
        .unwrap_or(defaults.auto_promote);
    let preview_replicas = read
        .get("preview_replicas", preview_replicas)
        .and_then(|n| match u32::try_from(n) {
            Ok(n) if n >= 1 => Some(n),
            _ => {
                read.problem(
                    "preview_replicas",
                    format!("is {n}; expected a pod count of at least 1"),
                );
                None
            }
        });
    let preview_service = read
        .get("preview_service", preview_service)
        .filter(|name| {
            let valid = is_service_name(name);
            if !valid {
                read.problem(
                    "preview_service",
                    format!("{name:?} is not a Service name (lowercase letters, digits and '-', starting with a letter, at most 63)"),
                );
            }
            valid
        });
    RolloutConfig {
        scale_down_delay,
        auto_promote,
        preview_replicas,
        preview_service,
        ..defaults
    }
}

/// A Service name: an RFC 1035 label.
fn is_service_name(name: &str) -> bool {
    name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// `approval`: whether every new revision waits for `gitopsd approve`.
fn approval(read: &mut Reader<'_>, value: Option<Checked<String>>) -> bool {
    match read.get("approval", value).as_deref() {
        None | Some("none") => false,
        Some("manual") => true,
        Some(other) => {
            read.problem(
                "approval",
                format!("unknown approval {other:?}; expected \"manual\" or \"none\""),
            );
            false
        }
    }
}

/// `type = "directory"`: live state is a folder of YAML files.
fn directory_target(read: &mut Reader<'_>, raw: RawTarget, base: &Path) -> Option<TargetConfig> {
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

/// `type = "kubernetes"`: a cluster through its API server.
fn kubernetes_target(read: &mut Reader<'_>, raw: RawTarget, base: &Path) -> TargetConfig {
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
    TargetConfig::Kubernetes(KubernetesSettings {
        kubeconfig,
        context,
        force_conflicts,
        adopt,
        applyset_namespace,
        concurrency: concurrency.max(1),
        requests_per_second: u32::try_from(requests_per_second).unwrap_or(u32::MAX),
        delete_foreign_namespaces,
        create_namespace: None,
    })
}

fn valid_environment_name(name: &str) -> bool {
    name.len() <= 63
        && name.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn strategy_problem(value: &str) -> String {
    format!("is {value:?}; expected \"canary\" or \"blue-green\"")
}

#[cfg(test)]
mod tests {
    use super::super::tests::parse;
    use super::TargetConfig;

    #[test]
    fn the_strategy_and_its_keys_are_read_and_checked_with_their_keys() {
        use crate::rollout::Strategy;
        use std::time::Duration;
        let config = parse(
            r#"
            [repo]
            url = "deploy-repo"
            [[environment]]
            name = "staging"
            path = "environments/staging"
            target = { type = "directory", path = "live/staging" }
            [[environment]]
            name = "production"
            path = "environments/production"
            target = { type = "directory", path = "live/production" }
            [environment.rollout]
            strategy = "blue-green"
            scale_down_delay = "2m"
            auto_promote = false
            preview_replicas = 2
            preview_service = "web-next"
            "#,
        )
        .expect("valid");
        let rollout = |index: usize| config.environments[index].rollout.clone();
        assert_eq!(rollout(0).strategy, Strategy::Canary, "the default");
        assert_eq!(rollout(0).scale_down_delay, Duration::from_secs(30));
        assert_eq!(rollout(1).strategy, Strategy::BlueGreen);
        assert_eq!(rollout(1).scale_down_delay, Duration::from_secs(120));
        assert!(rollout(0).auto_promote, "the default");
        assert!(!rollout(1).auto_promote);
        assert_eq!(
            rollout(0).preview_replicas,
            None,
            "the default: the full count"
        );
        assert_eq!(rollout(1).preview_replicas, Some(2));
        assert_eq!(rollout(0).preview_service, None);
        assert_eq!(rollout(1).preview_service.as_deref(), Some("web-next"));
        let problems = parse(
            r#"
            [repo]
            url = "deploy-repo"
            [[environment]]
            name = "staging"
            path = "environments/staging"
            target = { type = "directory", path = "live/staging" }
            [environment.rollout]
            strategy = "bluegreen"
            scale_down_delay = "soon"
            preview_replicas = 0
            preview_service = "Web_Next"
            "#,
        )
        .expect_err("invalid");
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "environment[0].rollout.strategy",
                "environment[0].rollout.scale_down_delay",
                "environment[0].rollout.preview_replicas",
                "environment[0].rollout.preview_service"
            ],
            "{problems:?}"
        );
        assert!(
            problems[0]
                .to_string()
                .contains("expected \"canary\" or \"blue-green\""),
            "{problems:?}"
        );
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

    #[test]
    fn an_after_problem_names_its_own_table_when_an_earlier_one_is_skipped() {
        let problems = parse(
            r#"
            [repo]
            url = "r"
            [[environment]]
            name = "a"
            path = "a"
            target = { type = "ftp" }
            [[environment]]
            name = "b"
            path = "b"
            target = { type = "directory", path = "b" }
            [[environment]]
            name = "c"
            path = "c"
            target = { type = "directory", path = "c" }
            after = "nowhere"
            "#,
        )
        .expect_err("invalid");
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            ["environment[0].target.type", "environment[2].after"],
            "{problems:#?}"
        );
        assert_eq!(problems[1].message, "no environment named \"nowhere\"");
    }
}
