//! Hooks around a rollout (pure: no IO): what a hook is (a command from the config or an
//! object annotated `gitopsd.io/hook` in the revision), which run at each point of a rollout
//! and in what order, what a restart does with one it interrupted, and the names and marks a
//! hook's object runs under.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::labels::{
    ANNOTATION_HOOK, ANNOTATION_HOOK_DELETE_POLICY, ANNOTATION_HOOK_ON_REVERT,
    ANNOTATION_HOOK_WEIGHT, ANNOTATION_REVISION, LABEL_ENVIRONMENT, LABEL_HOOK, LABEL_MANAGED_BY,
    MANAGER,
};
use crate::model::{ResourceKey, Revision};

/// The variable holding the revision being rolled out (or reverted from).
pub const ENV_REVISION: &str = "GITOPSD_REVISION";
/// The variable holding the environment's name.
pub const ENV_ENVIRONMENT: &str = "GITOPSD_ENVIRONMENT";
/// The variable holding the last healthy revision (empty on a first deploy).
pub const ENV_PREVIOUS_REVISION: &str = "GITOPSD_PREVIOUS_REVISION";
/// The variable holding when the hook runs (`pre-rollout`, `post-promotion`, `on-failure`).
pub const ENV_HOOK: &str = "GITOPSD_HOOK";

/// When a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum When {
    /// After the gates open, before the first step; its failure holds the revision with
    /// nothing of it applied.
    PreRollout,
    /// When the verify window opens after the promotion; its failure reverts.
    PostPromotion,
    /// After a failed revision is reverted.
    OnFailure,
}

impl When {
    pub const ALL: [When; 3] = [When::PreRollout, When::PostPromotion, When::OnFailure];

    /// Reads a `when` value or a `gitopsd.io/hook` annotation.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "pre-rollout" => Some(Self::PreRollout),
            "post-promotion" => Some(Self::PostPromotion),
            "on-failure" => Some(Self::OnFailure),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::PreRollout => "pre-rollout",
            Self::PostPromotion => "post-promotion",
            Self::OnFailure => "on-failure",
        }
    }
}

impl std::fmt::Display for When {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When a hook's object is deleted (`gitopsd.io/hook-delete-policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeletePolicy {
    /// Kept until the hook runs again (for a later revision), then deleted first.
    #[default]
    BeforeCreation,
    /// Deleted once it succeeded (a failed one is kept to look at).
    Succeeded,
    /// Deleted once it failed (a succeeded one is kept).
    Failed,
}

impl DeletePolicy {
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "before-creation" => Some(Self::BeforeCreation),
            "succeeded" => Some(Self::Succeeded),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }

    /// Whether the object goes once its run ended this way.
    pub fn deletes_after(self, succeeded: bool) -> bool {
        match self {
            Self::BeforeCreation => false,
            Self::Succeeded => succeeded,
            Self::Failed => !succeeded,
        }
    }
}

/// A variable a command hook sees besides the `GITOPSD_*` ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookEnv {
    /// Passed through from gitopsd's own environment (when set there).
    Pass(String),
    /// Set to this value.
    Set(String, String),
}

/// `[[environment.hook]]`: a command run on gitopsd's host.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandHook {
    /// How the journal names it (`name`, else the command line).
    pub name: String,
    pub when: When,
    /// Program and arguments; no shell.
    pub argv: Vec<String>,
    pub timeout: Duration,
    pub env: Vec<HookEnv>,
    /// Orders hooks of the same kind, lowest first (default 0).
    pub weight: i64,
    /// A pre-rollout hook that also runs when a revert returns to the revision.
    pub on_revert: bool,
}

/// An object of the revision annotated `gitopsd.io/hook`.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectHook {
    /// The object as the revision names it.
    pub key: ResourceKey,
    /// Its body as the revision has it.
    pub body: Value,
    pub when: When,
    pub weight: i64,
    pub delete_policy: DeletePolicy,
    pub on_revert: bool,
}

/// One hook, of either kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Hook {
    Command(CommandHook),
    Object(ObjectHook),
}

impl Hook {
    /// How the journal, `status` and `diff` name the hook: `command <name>` or the object.
    pub fn name(&self) -> String {
        match self {
            Hook::Command(command) => format!("command {}", command.name),
            Hook::Object(object) => object.key.to_string(),
        }
    }

    pub fn when(&self) -> When {
        match self {
            Hook::Command(command) => command.when,
            Hook::Object(object) => object.when,
        }
    }

    fn on_revert(&self) -> bool {
        match self {
            Hook::Command(command) => command.on_revert,
            Hook::Object(object) => object.on_revert,
        }
    }
}

/// Reads an object's hook annotations: `None` for an ordinary object, an error (for the
/// object's file and document) when they are not understood.
pub fn object_hook(key: &ResourceKey, body: &Value) -> Result<Option<ObjectHook>, String> {
    let annotation = |name: &str| {
        body.pointer("/metadata/annotations")
            .and_then(|annotations| annotations.get(name))
            .and_then(Value::as_str)
    };
    let Some(when) = annotation(ANNOTATION_HOOK) else {
        return Ok(None);
    };
    let when = When::parse(when).ok_or_else(|| {
        format!("{ANNOTATION_HOOK}: {when:?} is not one of \"pre-rollout\", \"post-promotion\", \"on-failure\"")
    })?;
    let weight = match annotation(ANNOTATION_HOOK_WEIGHT) {
        None => 0,
        Some(weight) => weight
            .trim()
            .parse::<i64>()
            .map_err(|_| format!("{ANNOTATION_HOOK_WEIGHT}: {weight:?} is not an integer"))?,
    };
    let delete_policy = match annotation(ANNOTATION_HOOK_DELETE_POLICY) {
        None => DeletePolicy::default(),
        Some(policy) => DeletePolicy::parse(policy).ok_or_else(|| {
            format!("{ANNOTATION_HOOK_DELETE_POLICY}: {policy:?} is not one of \"before-creation\", \"succeeded\", \"failed\"")
        })?,
    };
    let on_revert = match annotation(ANNOTATION_HOOK_ON_REVERT) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(format!(
                "{ANNOTATION_HOOK_ON_REVERT}: {other:?} is not \"true\" or \"false\""
            ));
        }
    };
    if on_revert && when != When::PreRollout {
        return Err(format!(
            "{ANNOTATION_HOOK_ON_REVERT} applies to pre-rollout hooks only, not {when}"
        ));
    }
    Ok(Some(ObjectHook {
        key: key.clone(),
        body: body.clone(),
        when,
        weight,
        delete_policy,
        on_revert,
    }))
}

/// The hooks of kind `when`, in the order they run: by weight, then commands (in the
/// config's order) before objects (by kind, namespace and name).
pub fn ordered(commands: &[CommandHook], objects: &[ObjectHook], when: When) -> Vec<Hook> {
    let mut hooks: Vec<(i64, usize, Hook)> = commands
        .iter()
        .enumerate()
        .filter(|(_, hook)| hook.when == when)
        .map(|(index, hook)| (hook.weight, index, Hook::Command(hook.clone())))
        .collect();
    let mut objects: Vec<&ObjectHook> = objects.iter().filter(|hook| hook.when == when).collect();
    objects.sort_by(|a, b| a.key.cmp(&b.key));
    hooks.extend(objects.into_iter().enumerate().map(|(index, hook)| {
        (
            hook.weight,
            commands.len() + index,
            Hook::Object(hook.clone()),
        )
    }));
    hooks.sort_by_key(|(weight, index, _)| (*weight, *index));
    hooks.into_iter().map(|(_, _, hook)| hook).collect()
}

/// The hooks a revert back to a healthy revision runs before its writes: none of that
/// revision's pre-rollout hooks (migrations go forward only) but those marked to run on a
/// revert.
pub fn on_revert(commands: &[CommandHook], objects: &[ObjectHook]) -> Vec<Hook> {
    ordered(commands, objects, When::PreRollout)
        .into_iter()
        .filter(Hook::on_revert)
        .collect()
}

/// Where one hook of one revision stands, as the journal says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookState {
    /// Started, no outcome: a restart interrupted it.
    Running,
    Succeeded,
    Failed,
}

/// The journal's key for one hook of one revision.
pub fn progress_key(revision: &Revision, when: When, hook: &str) -> String {
    format!("{} {when} {hook}", revision.0)
}

/// The hook runs of the current rollout, by [`progress_key`].
pub type Progress = BTreeMap<String, HookState>;

/// What to do with one hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookAction {
    /// It already succeeded for this revision: not run again.
    Skip,
    /// Run it (a command a restart interrupted runs again from the start).
    Run,
    /// Its object was created before a restart: find it by name and wait for it, creating
    /// it only if it is gone.
    Adopt,
}

/// What to do with `hook` given where the journal says it stands.
pub fn action(hook: &Hook, state: Option<HookState>) -> HookAction {
    match (state, hook) {
        (Some(HookState::Succeeded), _) => HookAction::Skip,
        (Some(HookState::Running), Hook::Object(_)) => HookAction::Adopt,
        (Some(HookState::Running | HookState::Failed) | None, _) => HookAction::Run,
    }
}

/// The name a hook object runs under for `revision`: its own name with the revision's first
/// eight characters, so a Job's immutable spec never meets the last run's (at most 63
/// characters, a label value's limit).
pub fn run_name(name: &str, revision: &Revision) -> String {
    let short = revision.0.get(..8).unwrap_or(&revision.0);
    let room = 63 - short.len() - 1;
    let stem: String = name.chars().take(room).collect();
    format!("{}-{short}", stem.trim_end_matches(['-', '.']))
}

/// The value of the label naming a hook on its runs: its name, cut to a label value's 63
/// characters.
pub fn hook_label(name: &str) -> String {
    let cut: String = name.chars().take(63).collect();
    cut.trim_end_matches(['-', '.', '_']).to_string()
}

/// The key and body a hook object runs under for `revision` in `environment`: renamed (see
/// [`run_name`]) and marked as gitopsd's hook (managed-by, environment, the hook's own name,
/// the revision). It is not a member of the environment's applyset, so no prune ever sees it.
pub fn run_object(
    hook: &ObjectHook,
    environment: &str,
    revision: &Revision,
) -> (ResourceKey, Value) {
    let mut key = hook.key.clone();
    key.name = run_name(&hook.key.name, revision);
    let mut body = hook.body.clone();
    if let Some(metadata) = body.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.insert("name".into(), Value::String(key.name.clone()));
        let labels = metadata
            .entry("labels")
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
        if let Some(labels) = labels.as_object_mut() {
            labels.insert(LABEL_MANAGED_BY.into(), MANAGER.into());
            labels.insert(LABEL_ENVIRONMENT.into(), environment.into());
            labels.insert(LABEL_HOOK.into(), hook_label(&hook.key.name).into());
        }
        let annotations = metadata
            .entry("annotations")
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
        if let Some(annotations) = annotations.as_object_mut() {
            annotations.insert(ANNOTATION_REVISION.into(), revision.0.clone().into());
        }
    }
    (key, body)
}

/// The `GITOPSD_*` variables a command hook sees.
pub fn variables(
    when: When,
    environment: &str,
    revision: &Revision,
    previous: Option<&Revision>,
) -> Vec<(String, String)> {
    vec![
        (ENV_REVISION.into(), revision.0.clone()),
        (ENV_ENVIRONMENT.into(), environment.into()),
        (
            ENV_PREVIOUS_REVISION.into(),
            previous.map(|p| p.0.clone()).unwrap_or_default(),
        ),
        (ENV_HOOK.into(), when.as_str().into()),
    ]
}

/// How `diff` announces a hook: `pre-rollout: Job.batch shop/migrate-0123abcd will run`.
pub fn announce(hook: &Hook, revision: &Revision) -> String {
    let what = match hook {
        Hook::Command(command) => format!("command {} ({})", command.name, command.argv.join(" ")),
        Hook::Object(object) => {
            let mut key = object.key.clone();
            key.name = run_name(&object.key.name, revision);
            key.to_string()
        }
    };
    match hook.when() {
        When::OnFailure => {
            format!("on-failure: {what} will run if the rollout fails and is reverted")
        }
        when => format!("{when}: {what} will run"),
    }
}

/// Every hook a rollout of `revision` would run, announced in the order they would run.
pub fn announce_all(
    commands: &[CommandHook],
    objects: &[ObjectHook],
    revision: &Revision,
) -> Vec<String> {
    When::ALL
        .iter()
        .flat_map(|when| ordered(commands, objects, *when))
        .map(|hook| announce(&hook, revision))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(name: &str) -> ResourceKey {
        ResourceKey {
            group: "batch".into(),
            kind: "Job".into(),
            namespace: Some("shop".into()),
            name: name.into(),
        }
    }

    fn job(name: &str, annotations: Value) -> (ResourceKey, Value) {
        (
            key(name),
            json!({"apiVersion": "batch/v1", "kind": "Job",
                   "metadata": {"name": name, "namespace": "shop", "annotations": annotations}}),
        )
    }

    fn object(name: &str, annotations: Value) -> ObjectHook {
        let (key, body) = job(name, annotations);
        object_hook(&key, &body)
            .expect("valid annotations")
            .expect("a hook")
    }

    fn command(name: &str, when: When, weight: i64) -> CommandHook {
        CommandHook {
            name: name.into(),
            when,
            argv: vec!["/bin/true".into()],
            timeout: Duration::from_secs(5),
            env: Vec::new(),
            weight,
            on_revert: false,
        }
    }

    fn revision() -> Revision {
        Revision("0123456789abcdef0123456789abcdef01234567".into())
    }

    #[test]
    fn annotations_are_read_and_bad_ones_named() {
        let (plain_key, plain) = job("web", json!({}));
        assert_eq!(object_hook(&plain_key, &plain), Ok(None));
        let hook = object(
            "migrate",
            json!({"gitopsd.io/hook": "pre-rollout", "gitopsd.io/hook-weight": "-5",
                   "gitopsd.io/hook-delete-policy": "succeeded", "gitopsd.io/hook-on-revert": "true"}),
        );
        assert_eq!(hook.when, When::PreRollout);
        assert_eq!(hook.weight, -5);
        assert_eq!(hook.delete_policy, DeletePolicy::Succeeded);
        assert!(hook.on_revert);
        let defaults = object("smoke", json!({"gitopsd.io/hook": "post-promotion"}));
        assert_eq!(
            (defaults.weight, defaults.delete_policy, defaults.on_revert),
            (0, DeletePolicy::BeforeCreation, false)
        );
        for (annotations, expected) in [
            (
                json!({"gitopsd.io/hook": "PreSync"}),
                "gitopsd.io/hook: \"PreSync\" is not one of",
            ),
            (
                json!({"gitopsd.io/hook": "pre-rollout", "gitopsd.io/hook-weight": "first"}),
                "gitopsd.io/hook-weight: \"first\" is not an integer",
            ),
            (
                json!({"gitopsd.io/hook": "pre-rollout", "gitopsd.io/hook-delete-policy": "HookSucceeded"}),
                "gitopsd.io/hook-delete-policy: \"HookSucceeded\" is not one of",
            ),
            (
                json!({"gitopsd.io/hook": "on-failure", "gitopsd.io/hook-on-revert": "true"}),
                "gitopsd.io/hook-on-revert applies to pre-rollout hooks only",
            ),
        ] {
            let (key, body) = job("x", annotations);
            let error = object_hook(&key, &body).expect_err("refused");
            assert!(error.starts_with(expected), "{error}");
        }
    }

    #[test]
    fn hooks_of_one_kind_run_by_weight_then_commands_then_objects_by_name() {
        let commands = [
            command("backup", When::PreRollout, 0),
            command("smoke", When::PostPromotion, 0),
            command("late", When::PreRollout, 10),
        ];
        let objects = [
            object(
                "migrate-b",
                json!({"gitopsd.io/hook": "pre-rollout", "gitopsd.io/hook-weight": "1"}),
            ),
            object(
                "migrate-a",
                json!({"gitopsd.io/hook": "pre-rollout", "gitopsd.io/hook-weight": "1"}),
            ),
            object(
                "schema",
                json!({"gitopsd.io/hook": "pre-rollout", "gitopsd.io/hook-weight": "-1"}),
            ),
            object("cleanup", json!({"gitopsd.io/hook": "on-failure"})),
        ];
        let names: Vec<String> = ordered(&commands, &objects, When::PreRollout)
            .iter()
            .map(Hook::name)
            .collect();
        assert_eq!(
            names,
            [
                "Job.batch shop/schema",
                "command backup",
                "Job.batch shop/migrate-a",
                "Job.batch shop/migrate-b",
                "command late",
            ]
        );
        assert_eq!(ordered(&commands, &objects, When::PostPromotion).len(), 1);
        assert_eq!(
            ordered(&commands, &objects, When::OnFailure)[0].name(),
            "Job.batch shop/cleanup"
        );
    }

    #[test]
    fn a_revert_runs_only_the_pre_rollout_hooks_marked_for_it() {
        let mut marked = command("reseed", When::PreRollout, 0);
        marked.on_revert = true;
        let commands = [command("migrate", When::PreRollout, 0), marked];
        let objects = [
            object("migrate", json!({"gitopsd.io/hook": "pre-rollout"})),
            object(
                "cache-flush",
                json!({"gitopsd.io/hook": "pre-rollout", "gitopsd.io/hook-on-revert": "true"}),
            ),
        ];
        let names: Vec<String> = on_revert(&commands, &objects)
            .iter()
            .map(Hook::name)
            .collect();
        assert_eq!(names, ["command reseed", "Job.batch shop/cache-flush"]);
    }

    #[test]
    fn a_restart_skips_what_succeeded_reruns_commands_and_adopts_objects() {
        let command = Hook::Command(command("migrate", When::PreRollout, 0));
        let object = Hook::Object(object("migrate", json!({"gitopsd.io/hook": "pre-rollout"})));
        for hook in [&command, &object] {
            assert_eq!(action(hook, None), HookAction::Run);
            assert_eq!(action(hook, Some(HookState::Succeeded)), HookAction::Skip);
            assert_eq!(action(hook, Some(HookState::Failed)), HookAction::Run);
        }
        assert_eq!(action(&command, Some(HookState::Running)), HookAction::Run);
        assert_eq!(action(&object, Some(HookState::Running)), HookAction::Adopt);
    }

    #[test]
    fn a_hook_object_runs_under_a_name_of_its_revision_marked_as_gitopsds() {
        let hook = object("migrate", json!({"gitopsd.io/hook": "pre-rollout"}));
        let (key, body) = run_object(&hook, "prod", &revision());
        assert_eq!(key.name, "migrate-01234567");
        assert_eq!(body["metadata"]["name"], "migrate-01234567");
        assert_eq!(body["metadata"]["labels"]["gitopsd.io/hook"], "migrate");
        assert_eq!(body["metadata"]["labels"]["gitopsd.io/environment"], "prod");
        assert_eq!(
            body["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "gitopsd"
        );
        assert!(
            body["metadata"]["labels"]
                .get("applyset.kubernetes.io/part-of")
                .is_none()
        );
        assert_eq!(
            body["metadata"]["annotations"]["gitopsd.io/revision"],
            revision().0
        );
        let long = run_name(&"x".repeat(80), &revision());
        assert_eq!(long.len(), 63);
        assert!(long.ends_with("-01234567"));
        assert_eq!(
            announce(&Hook::Object(hook), &revision()),
            "pre-rollout: Job.batch shop/migrate-01234567 will run"
        );
    }

    #[test]
    fn commands_see_the_revisions_and_the_environment() {
        let previous = Revision("f".repeat(40));
        let vars = variables(When::OnFailure, "prod", &revision(), Some(&previous));
        let get = |name: &str| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        assert_eq!(get("GITOPSD_REVISION"), Some(revision().0));
        assert_eq!(get("GITOPSD_PREVIOUS_REVISION"), Some(previous.0));
        assert_eq!(get("GITOPSD_ENVIRONMENT").as_deref(), Some("prod"));
        assert_eq!(get("GITOPSD_HOOK").as_deref(), Some("on-failure"));
        let first = variables(When::PreRollout, "prod", &revision(), None);
        assert!(first.contains(&("GITOPSD_PREVIOUS_REVISION".into(), String::new())));
    }
}
