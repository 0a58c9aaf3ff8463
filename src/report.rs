//! Diff reports: what a revision would change in each environment, as text, markdown or JSON.

use std::fmt::Write as _;
use std::io::{self, Write};

use serde::Serialize;
use serde_json::Value;

use crate::canary;
use crate::config::RolloutConfig;
use crate::diff::{self, RenderError};
use crate::model::{Object, ResourceKey};
use crate::plan::{Action, Change, Desired, Plan};
use crate::rollout::Strategy;
use crate::unchecked::EncryptedReport;

/// Version of the JSON schema (README "diff --output json").
pub const SCHEMA_VERSION: u32 = 1;
/// Placeholder shown instead of a Secret value.
const REDACTED: &str = "<redacted>";

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DiffReport {
    pub version: u32,
    pub environments: Vec<EnvironmentReport>,
    /// Said once when SOPS documents were read without their key (see [`crate::unchecked`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EnvironmentReport {
    pub environment: String,
    /// `live`, or the revision compared against.
    pub from: String,
    /// The desired revision.
    pub to: String,
    pub summary: Summary,
    pub changes: Vec<ChangeReport>,
    /// Owned objects gone from git that are kept because prune is off.
    pub orphaned: Vec<String>,
    pub rollout: RolloutPreview,
    /// SOPS documents read without their key: encrypted, not checked.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub encrypted: Vec<EncryptedReport>,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Summary {
    pub create: usize,
    pub update: usize,
    pub delete: usize,
    pub unchanged: usize,
}

impl Summary {
    pub fn changes(&self) -> usize {
        self.create + self.update + self.delete
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ChangeReport {
    pub action: Action,
    /// `Kind[.group] [namespace/]name`.
    pub object: String,
    pub api_group: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    /// Unified diff of the normalized YAML; Secret values are redacted.
    pub diff: String,
    /// For an update that puts back drift (the live object changed outside git since it was
    /// applied): the field paths that no longer hold git's values.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub drift: Vec<String>,
}

/// The rollout the change would get.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RolloutPreview {
    /// `blue-green` when the Deployments would run blue/green, `mixed` when some would run
    /// blue/green and other workloads step as canaries beside them; absent for canary steps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    /// Mixed: the Deployments that would run blue/green (`canaries` then lists those that
    /// step as canaries beside them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub previews: Vec<String>,
    /// Blue/green: how long the old pods would stay up after the switch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scale_down_delay: Option<String>,
    /// Canary weights in percent; `[100]` is a direct apply.
    pub steps: Vec<u8>,
    /// Deployments that would run a canary.
    pub canaries: Vec<String>,
    /// ConfigMaps/Secrets that only canary pods would see until promotion.
    pub canary_configs: Vec<String>,
    /// StatefulSets that would step through their partition, highest ordinals first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub partitioned: Vec<String>,
    /// DaemonSets that would change at 100% (with readiness and verify; no canary).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub direct: Vec<String>,
    /// Anything that would hold the rollout back.
    pub holds: Vec<String>,
    /// The hooks that would run around it, in order (`pre-rollout: Job.batch
    /// shop/migrate-0123abcd will run`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<String>,
    /// Blue/green with `auto_promote = false`: the switch waits for an approval.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub approval: bool,
    /// Blue/green: the preview's pods (each) before it is scaled up for the switch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preview_replicas: Option<u32>,
    /// Why the revision would be refused (Deployments of both strategies).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// Inputs for one environment's report.
pub struct ReportInput<'a> {
    pub environment: &'a str,
    pub from: String,
    pub to: String,
    pub plan: &'a Plan,
    pub desired: &'a [Desired],
    /// Live objects (or the old revision's, for a revision-to-revision diff).
    pub live: &'a [Object],
    pub rollout: &'a RolloutConfig,
    pub holds: Vec<String>,
    /// The hooks the rollout would run, announced.
    pub hooks: Vec<String>,
}

impl EnvironmentReport {
    pub fn build(input: ReportInput<'_>) -> Result<Self, RenderError> {
        let plan = input.plan;
        let mut changes = Vec::new();
        for change in &plan.changes {
            changes.push(change_report(change)?);
        }
        let spec = canary::split(plan, input.desired, input.live, &[]);
        let strategies = crate::preview::by_strategy(&spec, input.desired, input.rollout.strategy);
        let (blue_green, mixed) = match &strategies {
            Ok(strategies) => (strategies.blue_green(), strategies.mixed()),
            Err(_) => (false, false),
        };
        let steps = if spec.has_canaries() && (!blue_green || mixed) {
            input.rollout.steps.clone()
        } else {
            vec![100]
        };
        let keys = |units: &[canary::CanaryUnit]| -> Vec<String> {
            units
                .iter()
                .map(|unit| unit.desired.key.to_string())
                .collect()
        };
        let (canaries, previews) = match &strategies {
            Ok(split) if mixed => (
                keys(&split.canary.canaries),
                keys(&split.blue_green.canaries),
            ),
            _ => (keys(&spec.canaries), Vec::new()),
        };
        let strategy = match (blue_green, mixed) {
            (_, true) => Some("mixed".to_string()),
            (true, false) => Some(Strategy::BlueGreen.as_str().to_string()),
            (false, _) => None,
        };
        Ok(Self {
            environment: input.environment.to_string(),
            from: input.from,
            to: input.to,
            summary: Summary {
                create: plan.count(Action::Create),
                update: plan.count(Action::Update),
                delete: plan.count(Action::Delete),
                unchanged: plan.unchanged,
            },
            changes,
            orphaned: plan.orphaned.iter().map(ToString::to_string).collect(),
            encrypted: Vec::new(),
            rollout: RolloutPreview {
                strategy,
                previews,
                scale_down_delay: blue_green.then(|| {
                    humantime::format_duration(input.rollout.scale_down_delay).to_string()
                }),
                steps,
                canaries,
                canary_configs: spec.held.iter().map(|d| d.key.to_string()).collect(),
                partitioned: spec
                    .partitioned
                    .iter()
                    .map(|unit| unit.desired.key.to_string())
                    .collect(),
                direct: plan
                    .changes
                    .iter()
                    .filter(|change| {
                        change.action() == Action::Update && canary::is_daemon_set(change.key())
                    })
                    .map(|change| change.key().to_string())
                    .collect(),
                holds: input.holds,
                hooks: input.hooks,
                approval: blue_green && !input.rollout.auto_promote,
                preview_replicas: input.rollout.preview_replicas.filter(|_| blue_green),
                refused: strategies.err().map(|mixed| mixed.to_string()),
            },
        })
    }
}

fn change_report(change: &Change) -> Result<ChangeReport, RenderError> {
    let key = change.key();
    let (old, new) = redact(key, change.live(), change.desired().map(|d| &d.body));
    let old = old
        .as_ref()
        .map(diff::to_yaml)
        .transpose()?
        .unwrap_or_default();
    let new = new
        .as_ref()
        .map(diff::to_yaml)
        .transpose()?
        .unwrap_or_default();
    let label = key.to_string();
    Ok(ChangeReport {
        action: change.action(),
        object: label.clone(),
        api_group: key.group.clone(),
        kind: key.kind.clone(),
        namespace: key.namespace.clone(),
        name: key.name.clone(),
        diff: diff::unified(&format!("a/{label}"), &format!("b/{label}"), &old, &new),
        drift: change.drift().map(<[String]>::to_vec).unwrap_or_default(),
    })
}

fn is_secret(key: &ResourceKey) -> bool {
    key.group.is_empty() && key.kind == "Secret"
}

/// Replaces Secret values so a diff shows which keys changed and never a value: equal values
/// become the same placeholder on both sides, changed ones differ only by an old/new marker.
pub fn redact(
    key: &ResourceKey,
    old: Option<&Value>,
    new: Option<&Value>,
) -> (Option<Value>, Option<Value>) {
    let mut old = old.cloned();
    let mut new = new.cloned();
    redact_encrypted(&mut old, &mut new);
    if !is_secret(key) {
        return (old, new);
    }
    for field in ["data", "stringData"] {
        let old_map = old
            .as_ref()
            .and_then(|body| body.get(field))
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let new_map = new
            .as_ref()
            .and_then(|body| body.get(field))
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let mark = |body: &mut Option<Value>,
                    own: &serde_json::Map<String, Value>,
                    other: &serde_json::Map<String, Value>,
                    side: &str| {
            let Some(values) = body
                .as_mut()
                .and_then(|body| body.get_mut(field))
                .and_then(Value::as_object_mut)
            else {
                return;
            };
            for (name, value) in values.iter_mut() {
                let changed = other
                    .get(name)
                    .is_some_and(|theirs| Some(theirs) != own.get(name));
                *value = Value::String(if changed {
                    format!("{REDACTED} ({side} value)")
                } else {
                    REDACTED.to_string()
                });
            }
        };
        mark(&mut old, &old_map, &new_map, "old");
        mark(&mut new, &new_map, &old_map, "new");
    }
    (old, new)
}

/// Replaces the values that were SOPS-encrypted in git (on either side) like Secret values:
/// the same placeholder on both sides when equal, an old/new marker when changed.
fn redact_encrypted(old: &mut Option<Value>, new: &mut Option<Value>) {
    let mut pointers: Vec<String> = [old.as_ref(), new.as_ref()]
        .into_iter()
        .flatten()
        .flat_map(diff::encrypted_pointers)
        .collect();
    pointers.sort();
    pointers.dedup();
    for pointer in pointers {
        let old_value = old
            .as_ref()
            .and_then(|body| body.pointer(&pointer))
            .cloned();
        let new_value = new
            .as_ref()
            .and_then(|body| body.pointer(&pointer))
            .cloned();
        let changed = old_value.is_some() && new_value.is_some() && old_value != new_value;
        for (body, side) in [(&mut *old, "old"), (&mut *new, "new")] {
            if let Some(value) = body.as_mut().and_then(|body| body.pointer_mut(&pointer)) {
                *value = Value::String(if changed {
                    format!("{REDACTED} ({side} value)")
                } else {
                    REDACTED.to_string()
                });
            }
        }
    }
}

/// How text output is coloured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Colour {
    Never,
    Ansi,
}

fn paint(colour: Colour, code: &str, text: &str) -> String {
    match colour {
        Colour::Never => text.to_string(),
        Colour::Ansi => format!("\x1b[{code}m{text}\x1b[0m"),
    }
}

fn diff_line_colour(line: &str) -> Option<&'static str> {
    if line.starts_with("+++") || line.starts_with("---") {
        Some("1")
    } else if line.starts_with('+') {
        Some("32")
    } else if line.starts_with('-') {
        Some("31")
    } else if line.starts_with("@@") {
        Some("36")
    } else {
        None
    }
}

fn rollout_line(rollout: &RolloutPreview) -> String {
    if rollout.strategy.as_deref() == Some("mixed") {
        return mixed_line(rollout);
    }
    if rollout.strategy.is_some() {
        return blue_green_line(rollout);
    }
    let mut line = if rollout.canaries.is_empty() && rollout.partitioned.is_empty() {
        "applied at once (no Deployment or StatefulSet needs a canary)".to_string()
    } else {
        let steps: Vec<String> = rollout.steps.iter().map(|w| format!("{w}%")).collect();
        let mut line = format!("canary {}", steps.join(" → "));
        if !rollout.canaries.is_empty() {
            let _ = write!(line, " for {}", rollout.canaries.join(", "));
        }
        if !rollout.partitioned.is_empty() {
            let _ = write!(
                line,
                "{} {} by partition, highest ordinals first",
                if rollout.canaries.is_empty() {
                    " for"
                } else {
                    ";"
                },
                rollout.partitioned.join(", ")
            );
        }
        line
    };
    if !rollout.canary_configs.is_empty() {
        let _ = write!(
            line,
            "; only canary pods see the new {} until promotion",
            rollout.canary_configs.join(", ")
        );
    }
    if !rollout.direct.is_empty() {
        let _ = write!(
            line,
            "; {} roll out at 100% with readiness and verify (DaemonSets get no canary)",
            rollout.direct.join(", ")
        );
    }
    if let Some(refused) = &rollout.refused {
        let _ = write!(line, "; refused: {refused}");
    }
    line
}

/// The phases of a rollout mixing both strategies: the canary steps beside the preview, the
/// switch with the canaries' promotion, then the blue/green verify and scale-down.
fn mixed_line(rollout: &RolloutPreview) -> String {
    let steps: Vec<String> = rollout.steps.iter().map(|w| format!("{w}%")).collect();
    let mut stepped = rollout.canaries.clone();
    stepped.extend(
        rollout
            .partitioned
            .iter()
            .map(|s| format!("{s} (by partition)")),
    );
    let approval = if rollout.approval {
        " → approval"
    } else {
        ""
    };
    let mut line = format!(
        "mixed: blue-green for {} and canary {} for {}: preview beside the canary steps below 100%{approval} → switch, then the canaries' promotion → verify → scale down (old pods kept {} after the switch)",
        rollout.previews.join(", "),
        steps.join(" → "),
        stepped.join(", "),
        rollout.scale_down_delay.as_deref().unwrap_or("0s")
    );
    if !rollout.canary_configs.is_empty() {
        let _ = write!(
            line,
            "; only new pods see the new {} until the promotion or the scale-down",
            rollout.canary_configs.join(", ")
        );
    }
    if !rollout.direct.is_empty() {
        let _ = write!(
            line,
            "; {} change at 100% with the preview (DaemonSets get no preview)",
            rollout.direct.join(", ")
        );
    }
    line
}

/// The phases a blue/green rollout would go through.
fn blue_green_line(rollout: &RolloutPreview) -> String {
    let preview = match rollout.preview_replicas {
        Some(pods) => format!("preview (at most {pods} pods each) → "),
        None => "preview → ".to_string(),
    };
    let approval = if rollout.approval {
        "approval → "
    } else {
        ""
    };
    let scale_up = if rollout.preview_replicas.is_some() {
        "scale preview up → "
    } else {
        ""
    };
    let mut line = format!(
        "blue-green for {}: {preview}{approval}{scale_up}switch → verify → scale down (old pods kept {} after the switch)",
        rollout.canaries.join(", "),
        rollout.scale_down_delay.as_deref().unwrap_or("0s")
    );
    if !rollout.canary_configs.is_empty() {
        let _ = write!(
            line,
            "; only preview pods see the new {} until the scale-down",
            rollout.canary_configs.join(", ")
        );
    }
    if !rollout.direct.is_empty() {
        let _ = write!(
            line,
            "; {} change at 100% with the preview (DaemonSets get no preview)",
            rollout.direct.join(", ")
        );
    }
    line
}

impl EnvironmentReport {
    /// Whether an encrypted document read without the key changed (by its ciphertext).
    pub fn encrypted_changes(&self) -> bool {
        self.encrypted
            .iter()
            .any(|report| report.ciphertext.is_change())
    }
}

fn summary_line(report: &EnvironmentReport) -> String {
    let summary = report.summary;
    format!(
        "{}: {} to create, {} to update, {} to delete, {} unchanged",
        report.environment, summary.create, summary.update, summary.delete, summary.unchanged
    )
}

fn short(revision: &str) -> &str {
    if revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit()) {
        &revision[..12]
    } else {
        revision
    }
}

impl DiffReport {
    pub fn new(environments: Vec<EnvironmentReport>) -> Self {
        Self {
            version: SCHEMA_VERSION,
            environments,
            note: None,
        }
    }

    pub fn has_changes(&self) -> bool {
        self.environments
            .iter()
            .any(|env| env.summary.changes() > 0 || env.encrypted_changes())
    }

    /// Human-readable: a header per object (`+ create`, `~ update`, `- delete`), its diff, and
    /// per environment the rollout it would get and a summary line.
    pub fn write_text(&self, colour: Colour, out: &mut dyn Write) -> io::Result<()> {
        for report in &self.environments {
            let title = format!(
                "=== {}: {} → {}",
                report.environment,
                short(&report.from),
                short(&report.to)
            );
            writeln!(out, "{}", paint(colour, "1", &title))?;
            for change in &report.changes {
                let code = match change.action {
                    Action::Create => "1;32",
                    Action::Update => "1;33",
                    Action::Delete => "1;31",
                };
                let mut header = format!(
                    "{} {} {}",
                    change.action.sign(),
                    change.action.verb(),
                    change.object
                );
                if !change.drift.is_empty() {
                    header.push_str(&format!(
                        " (drift: changed outside git: {})",
                        change.drift.join(", ")
                    ));
                }
                writeln!(out, "{}", paint(colour, code, &header))?;
                for line in change.diff.lines() {
                    match diff_line_colour(line) {
                        Some(code) => writeln!(out, "{}", paint(colour, code, line))?,
                        None => writeln!(out, "{line}")?,
                    }
                }
            }
            for orphan in &report.orphaned {
                writeln!(out, "! orphaned {orphan} (gone from git, prune is off)")?;
            }
            for encrypted in &report.encrypted {
                writeln!(out, "{}", encrypted.line())?;
            }
            if report.summary.changes() > 0 {
                writeln!(out, "rollout: {}", rollout_line(&report.rollout))?;
            }
            for hook in &report.rollout.hooks {
                writeln!(out, "{hook}")?;
            }
            for hold in &report.rollout.holds {
                writeln!(out, "{}", paint(colour, "1;35", &format!("hold: {hold}")))?;
            }
            writeln!(out, "{}", summary_line(report))?;
        }
        if let Some(note) = &self.note {
            writeln!(out, "{note}")?;
        }
        Ok(())
    }

    /// Markdown for a pull-request comment: a collapsible section per environment. Stops
    /// adding diffs past `max_bytes` and says so.
    pub fn to_markdown(&self, max_bytes: usize) -> String {
        let mut out = String::from("### gitopsd diff\n\n");
        let mut omitted = 0usize;
        for report in &self.environments {
            let summary = report.summary;
            let _ = writeln!(
                out,
                "<details{}>\n<summary><b>{}</b> ({} → {}): {} to create, {} to update, {} to delete, {} unchanged</summary>\n",
                if summary.changes() > 0 { " open" } else { "" },
                report.environment,
                short(&report.from),
                short(&report.to),
                summary.create,
                summary.update,
                summary.delete,
                summary.unchanged
            );
            if summary.changes() > 0 {
                let _ = writeln!(out, "**Rollout:** {}\n", rollout_line(&report.rollout));
            }
            for hook in &report.rollout.hooks {
                let _ = writeln!(out, "**Hook:** {hook}\n");
            }
            for hold in &report.rollout.holds {
                let _ = writeln!(out, "**Hold:** {hold}\n");
            }
            for change in &report.changes {
                let section = format!(
                    "`{} {} {}`\n\n```diff\n{}```\n\n",
                    change.action.sign(),
                    change.action.verb(),
                    change.object,
                    change.diff
                );
                if out.len() + section.len() > max_bytes {
                    omitted += 1;
                    continue;
                }
                out.push_str(&section);
            }
            for orphan in &report.orphaned {
                let _ = writeln!(out, "- orphaned `{orphan}` (gone from git, prune is off)");
            }
            for encrypted in &report.encrypted {
                let _ = writeln!(out, "- {}", encrypted.line());
            }
            out.push_str("</details>\n\n");
        }
        if let Some(note) = &self.note {
            let _ = writeln!(out, "> {note}\n");
        }
        if omitted > 0 {
            let _ = writeln!(
                out,
                "> **Truncated:** {omitted} object diff{} left out to stay under {max_bytes} bytes. Run `gitopsd diff` locally for the whole output.",
                if omitted == 1 { " was" } else { "s were" }
            );
        }
        out
    }

    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string_pretty(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn secret_key() -> ResourceKey {
        ResourceKey {
            group: String::new(),
            kind: "Secret".into(),
            namespace: Some("shop".into()),
            name: "db".into(),
        }
    }

    #[test]
    fn a_blue_green_rollout_line_names_the_strategy_its_phases_and_what_it_refuses() {
        let mut rollout = RolloutPreview {
            previews: Vec::new(),
            strategy: Some("blue-green".into()),
            scale_down_delay: Some("30s".into()),
            steps: vec![100],
            canaries: vec!["Deployment.apps shop/web".into()],
            canary_configs: Vec::new(),
            partitioned: Vec::new(),
            direct: Vec::new(),
            holds: Vec::new(),
            hooks: Vec::new(),
            approval: false,
            preview_replicas: None,
            refused: None,
        };
        assert_eq!(
            rollout_line(&rollout),
            "blue-green for Deployment.apps shop/web: preview → switch → verify → scale down (old pods kept 30s after the switch)"
        );
        rollout.approval = true;
        rollout.preview_replicas = Some(1);
        rollout.direct = vec!["DaemonSet.apps shop/agent".into()];
        assert_eq!(
            rollout_line(&rollout),
            "blue-green for Deployment.apps shop/web: preview (at most 1 pods each) → approval → scale preview up → switch → verify → scale down (old pods kept 30s after the switch); DaemonSet.apps shop/agent change at 100% with the preview (DaemonSets get no preview)"
        );
        let mixed = RolloutPreview {
            strategy: None,
            scale_down_delay: None,
            approval: false,
            preview_replicas: None,
            direct: Vec::new(),
            canaries: vec![
                "Deployment.apps shop/web".into(),
                "Deployment.apps shop/api".into(),
            ],
            refused: Some("the revision changes workloads of both strategies".into()),
            ..rollout.clone()
        };
        assert!(
            rollout_line(&mixed)
                .ends_with("; refused: the revision changes workloads of both strategies"),
            "{}",
            rollout_line(&mixed)
        );
        let json = serde_json::to_value(&rollout).expect("serializes");
        assert_eq!(json["strategy"], "blue-green");
        rollout.strategy = None;
        rollout.scale_down_delay = None;
        let json = serde_json::to_value(&rollout).expect("serializes");
        assert!(
            json.get("strategy").is_none(),
            "canary reports stay as they were"
        );
    }

    #[test]
    fn secret_values_never_show_but_changed_keys_do() {
        let old = json!({"kind": "Secret", "data": {"user": "YWRtaW4=", "password": "b2xk"}});
        let new = json!({"kind": "Secret", "data": {"user": "YWRtaW4=", "password": "bmV3", "token": "dA=="}});
        let (old, new) = redact(&secret_key(), Some(&old), Some(&new));
        let (old, new) = (old.expect("old"), new.expect("new"));
        assert_eq!(old["data"]["user"], "<redacted>");
        assert_eq!(new["data"]["user"], "<redacted>");
        assert_eq!(old["data"]["password"], "<redacted> (old value)");
        assert_eq!(new["data"]["password"], "<redacted> (new value)");
        assert_eq!(new["data"]["token"], "<redacted>");
        let text = format!("{old}{new}");
        for secret in ["YWRtaW4=", "b2xk", "bmV3", "dA=="] {
            assert!(!text.contains(secret), "{secret} leaked");
        }
    }

    #[test]
    fn values_encrypted_in_git_never_show_on_either_side() {
        let key = ResourceKey {
            kind: "ConfigMap".into(),
            ..secret_key()
        };
        let marked = |pointers: &str, data: Value| json!({"metadata": {"annotations": {"gitopsd.io/encrypted": pointers}}, "data": data});
        let old = marked(r#"["/data/a"]"#, json!({"a": "old-a", "b": "plain"}));
        let new = marked(
            r#"["/data/a","/data/c"]"#,
            json!({"a": "new-a", "b": "plain", "c": "c1"}),
        );
        let (old, new) = redact(&key, Some(&old), Some(&new));
        let (old, new) = (old.expect("old"), new.expect("new"));
        assert_eq!(old["data"]["a"], "<redacted> (old value)");
        assert_eq!(new["data"]["a"], "<redacted> (new value)");
        assert_eq!(new["data"]["c"], "<redacted>");
        assert_eq!(new["data"]["b"], "plain");
        let deleted = marked(r#"["/data/a"]"#, json!({"a": "gone"}));
        let (old, _) = redact(&key, Some(&deleted), None);
        assert_eq!(old.expect("old")["data"]["a"], "<redacted>");
    }

    #[test]
    fn other_kinds_are_untouched() {
        let key = ResourceKey {
            kind: "ConfigMap".into(),
            ..secret_key()
        };
        let body = json!({"data": {"a": "1"}});
        assert_eq!(redact(&key, Some(&body), None).0, Some(body));
    }
}
