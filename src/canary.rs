//! Canary plumbing (pure): which Deployments get canaries, and the objects each step needs.
//!
//! A Deployment whose pod template changed, or whose referenced ConfigMap/Secret changed, is
//! not updated in place. At a step of weight w, `<name>-canary` runs the new template with
//! round(w% × N) replicas (at least 1) and the stable Deployment keeps the old template with
//! the rest. The canary's selector and pod labels add `gitopsd.io/track: canary`, so the
//! canary Deployment never selects stable pods while a Service on the app labels selects
//! both. The stable's selector is immutable and stays as git wrote it, so it matches canary
//! pods too (its ReplicaSets only count pods they own; anything else selecting by its labels,
//! a PodDisruptionBudget or a metric query, sees both tracks). Changed ConfigMaps/Secrets the workload uses reach only the canary, as
//! `<name>-canary` copies, until promotion.
//!
//! The stable is written from the manifest it was applied from (the previous revision's), never
//! from its live body, so gitopsd takes no field that git leaves out. A Deployment whose
//! manifest has no `replicas` belongs to an autoscaler or an operator for its size: its
//! stable is never scaled, and the canary runs on top of the live count.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use crate::labels::{ANNOTATION_TEMPLATE_HASH, LABEL_TRACK, TRACK_CANARY, TRACK_STABLE};
use crate::model::{Object, ResourceKey};
use crate::plan::{Action, Change, Desired, Plan};

/// Suffix of every canary object's name.
pub const CANARY_SUFFIX: &str = "-canary";

/// What a live Deployment's pod template is, for deciding whether a write may label it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveTemplate {
    /// The template hash gitopsd stamped when it last wrote it.
    pub hash: Option<String>,
    /// Its pod template already carries `gitopsd.io/track: stable`.
    pub tracked: bool,
}

impl LiveTemplate {
    pub fn of(object: &Object) -> Self {
        Self {
            hash: object
                .annotation(ANNOTATION_TEMPLATE_HASH)
                .map(str::to_string),
            tracked: object
                .body
                .pointer("/spec/template/metadata/labels")
                .and_then(|labels| labels.get(LABEL_TRACK))
                .and_then(Value::as_str)
                == Some(TRACK_STABLE),
        }
    }
}

/// Labels a stable Deployment's pods `gitopsd.io/track: stable` through its template (never its
/// selector, which is immutable), so a metric query can tell the tracks apart. Only when the
/// write changes the template anyway, or the live template has the label already: adding it
/// alone would restart every pod, and upgrading gitopsd must not do that.
pub fn mark_stable_track(
    key: &ResourceKey,
    body: &mut Value,
    template_hash: Option<&str>,
    live: Option<&LiveTemplate>,
) {
    if !is_deployment(key) {
        return;
    }
    let changes_template = live.is_none_or(|live| live.hash.as_deref() != template_hash);
    if !(changes_template || live.is_some_and(|live| live.tracked)) {
        return;
    }
    let Some(template) = body
        .pointer_mut("/spec/template")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let metadata = template
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    let Some(metadata) = metadata.as_object_mut() else {
        return;
    };
    let labels = metadata
        .entry("labels")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(labels) = labels.as_object_mut()
        && !labels.contains_key(LABEL_TRACK)
    {
        labels.insert(LABEL_TRACK.into(), Value::String(TRACK_STABLE.into()));
    }
}

/// One Deployment rolled out through canary steps.
#[derive(Debug, Clone, PartialEq)]
pub struct CanaryUnit {
    /// What the stable is written from during steps: the previous revision's manifest of the
    /// Deployment (its live body, normalized, when that is not at hand).
    pub stable_base: Value,
    /// The Deployment as the revision wants it.
    pub desired: Desired,
    /// Replicas the steps split (N): the manifest's, or the live count when it sets none.
    pub replicas: u32,
    /// The manifest sets `replicas`, so gitopsd owns them and scales the stable down as the
    /// canary grows; otherwise the canary runs on top and the stable is left alone.
    pub scales_stable: bool,
    /// Changed ConfigMaps/Secrets the new template references.
    pub configs: BTreeSet<ResourceKey>,
}

/// One StatefulSet rolled out through canary steps by its partition: at weight w the
/// `round(w% × N)` highest ordinals run the new template, the rest keep the old one.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionUnit {
    /// The StatefulSet as the revision wants it.
    pub desired: Desired,
    /// Replicas the steps split (N): the manifest's, or the live count when it sets none.
    pub replicas: u32,
}

/// A plan split into what a rollout does when.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RolloutSpec {
    /// Creates and updates with no canary meaning: applied with the first step.
    pub immediate: Vec<Change>,
    pub canaries: Vec<CanaryUnit>,
    /// StatefulSets whose template changed, canaried by partition.
    pub partitioned: Vec<PartitionUnit>,
    /// Changed configs used by canaries: copied during steps, applied at promotion.
    pub held: Vec<Desired>,
    /// Deletions: carried out at promotion, once nothing stable can still use them.
    pub deferred: Vec<Change>,
}

impl RolloutSpec {
    pub fn has_canaries(&self) -> bool {
        !self.canaries.is_empty() || !self.partitioned.is_empty()
    }
}

/// Objects to write and delete for one step, capacity first: `apply` adds capacity (canaries,
/// config copies, promoted stables) and must be ready before `shrink` (stables scaled down)
/// and `delete` (canaries at promotion, deferred deletions) take any away.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepObjects {
    pub apply: Vec<Desired>,
    pub shrink: Vec<Desired>,
    pub delete: Vec<ResourceKey>,
}

fn is_deployment(key: &ResourceKey) -> bool {
    key.group == "apps" && key.kind == "Deployment"
}

fn is_stateful_set(key: &ResourceKey) -> bool {
    key.group == "apps" && key.kind == "StatefulSet"
}

/// DaemonSets have no canary here: a changed template rolls out at 100% with readiness and
/// the verify window.
pub fn is_daemon_set(key: &ResourceKey) -> bool {
    key.group == "apps" && key.kind == "DaemonSet"
}

fn is_config(key: &ResourceKey) -> bool {
    key.group.is_empty() && (key.kind == "ConfigMap" || key.kind == "Secret")
}

/// The canary twin of a key.
pub fn canary_key(key: &ResourceKey) -> ResourceKey {
    ResourceKey {
        name: format!("{}{CANARY_SUFFIX}", key.name),
        ..key.clone()
    }
}

/// Replicas of the canary at `weight` percent of `replicas`: rounded, at least 1, at most all.
pub fn canary_replicas(weight: u8, replicas: u32) -> u32 {
    let rounded = (u64::from(weight) * u64::from(replicas) + 50) / 100;
    u32::try_from(rounded)
        .unwrap_or(replicas)
        .clamp(1, replicas.max(1))
}

fn replicas_of(body: &Value) -> Option<u32> {
    body.pointer("/spec/replicas")
        .and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
}

/// Calls `visit(kind, name)` for every ConfigMap/Secret name a pod template refers to.
fn for_each_config_ref(template: &mut Value, visit: &mut dyn FnMut(&str, &mut Value)) {
    let Some(spec) = template.get_mut("spec") else {
        return;
    };
    for list in ["containers", "initContainers"] {
        let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) else {
            continue;
        };
        for container in containers {
            if let Some(sources) = container.get_mut("envFrom").and_then(Value::as_array_mut) {
                for source in sources {
                    visit_field(source, "/configMapRef/name", "ConfigMap", visit);
                    visit_field(source, "/secretRef/name", "Secret", visit);
                }
            }
            if let Some(vars) = container.get_mut("env").and_then(Value::as_array_mut) {
                for var in vars {
                    visit_field(var, "/valueFrom/configMapKeyRef/name", "ConfigMap", visit);
                    visit_field(var, "/valueFrom/secretKeyRef/name", "Secret", visit);
                }
            }
        }
    }
    if let Some(volumes) = spec.get_mut("volumes").and_then(Value::as_array_mut) {
        for volume in volumes {
            visit_field(volume, "/configMap/name", "ConfigMap", visit);
            visit_field(volume, "/secret/secretName", "Secret", visit);
            if let Some(sources) = volume
                .pointer_mut("/projected/sources")
                .and_then(Value::as_array_mut)
            {
                for source in sources {
                    visit_field(source, "/configMap/name", "ConfigMap", visit);
                    visit_field(source, "/secret/name", "Secret", visit);
                }
            }
        }
    }
}

fn visit_field(
    value: &mut Value,
    pointer: &str,
    kind: &str,
    visit: &mut dyn FnMut(&str, &mut Value),
) {
    if let Some(field) = value.pointer_mut(pointer)
        && field.is_string()
    {
        visit(kind, field);
    }
}

/// ConfigMaps and Secrets a Deployment's pod template refers to, as keys in its namespace.
pub fn referenced_configs(deployment: &Desired) -> BTreeSet<ResourceKey> {
    let mut found = BTreeSet::new();
    let mut template = deployment
        .body
        .pointer("/spec/template")
        .cloned()
        .unwrap_or(Value::Null);
    for_each_config_ref(&mut template, &mut |kind, name| {
        if let Some(name) = name.as_str() {
            found.insert(ResourceKey {
                group: String::new(),
                kind: kind.to_string(),
                namespace: deployment.key.namespace.clone(),
                name: name.to_string(),
            });
        }
    });
    found
}

/// Splits a plan into immediate changes, canary units, held configs and deferred deletions.
/// `previous` holds the manifests the live objects were applied from, where known.
pub fn split(
    plan: &Plan,
    desired: &[Desired],
    live: &[Object],
    previous: &[Desired],
) -> RolloutSpec {
    let config_updates = config_updates(plan);
    let live_by_key: BTreeMap<&ResourceKey, &Object> =
        live.iter().map(|object| (&object.key, object)).collect();
    let canaries = canary_units(desired, &live_by_key, previous, &config_updates);
    let partitioned = partition_units(plan, desired, &live_by_key);
    // Changed configs a canary uses reach only the canary until promotion.
    let held_keys: BTreeSet<ResourceKey> = canaries
        .iter()
        .flat_map(|unit| unit.configs.iter().cloned())
        .collect();
    let canary_keys: BTreeSet<&ResourceKey> = canaries
        .iter()
        .map(|u| &u.desired.key)
        .chain(partitioned.iter().map(|u| &u.desired.key))
        .collect();
    let (immediate, deferred) = immediate_and_deferred(plan, &canary_keys, &held_keys);
    let held = held_keys
        .iter()
        .filter_map(|key| config_updates.get(key).map(|d| (*d).clone()))
        .collect();
    RolloutSpec {
        immediate,
        canaries,
        partitioned,
        held,
        deferred,
    }
}

/// The ConfigMaps and Secrets the plan updates, by key.
fn config_updates(plan: &Plan) -> BTreeMap<&ResourceKey, &Desired> {
    plan.changes
        .iter()
        .filter_map(|change| match change {
            Change::Update { desired, .. } if is_config(&desired.key) => {
                Some((&desired.key, desired))
            }
            _ => None,
        })
        .collect()
}

/// Whether the wanted pod template differs from the live one (`live_body` normalized).
fn template_changed(current: &Object, live_body: &Value, wanted: &Desired) -> bool {
    // Live templates can carry server defaults: trust the applied template's hash if any.
    match current.annotation(ANNOTATION_TEMPLATE_HASH) {
        Some(applied) => wanted.template_hash().as_deref() != Some(applied),
        None => live_body.pointer("/spec/template") != wanted.body.pointer("/spec/template"),
    }
}

/// A canary unit for every live Deployment whose template or used configs change.
fn canary_units(
    desired: &[Desired],
    live_by_key: &BTreeMap<&ResourceKey, &Object>,
    previous: &[Desired],
    config_updates: &BTreeMap<&ResourceKey, &Desired>,
) -> Vec<CanaryUnit> {
    let previous_by_key: BTreeMap<&ResourceKey, &Desired> =
        previous.iter().map(|d| (&d.key, d)).collect();
    desired
        .iter()
        .filter(|d| is_deployment(&d.key))
        .filter_map(|wanted| {
            // A new Deployment has nothing to compare with: created as is.
            let current = live_by_key.get(&wanted.key)?;
            canary_unit(
                wanted,
                current,
                previous_by_key.get(&wanted.key).copied(),
                config_updates,
            )
        })
        .collect()
}

/// The canary unit of one live Deployment, if its template or a config it uses changes.
fn canary_unit(
    wanted: &Desired,
    current: &Object,
    previous: Option<&Desired>,
    config_updates: &BTreeMap<&ResourceKey, &Desired>,
) -> Option<CanaryUnit> {
    let stable_live = crate::diff::normalize(&current.body);
    let configs: BTreeSet<ResourceKey> = referenced_configs(wanted)
        .into_iter()
        .filter(|key| config_updates.contains_key(key))
        .collect();
    if !template_changed(current, &stable_live, wanted) && configs.is_empty() {
        return None;
    }
    let wanted_replicas = replicas_of(&wanted.body);
    let stable_base = previous.map_or(stable_live.clone(), |previous| previous.body.clone());
    Some(CanaryUnit {
        replicas: wanted_replicas
            .or_else(|| replicas_of(&stable_live))
            .unwrap_or(1),
        scales_stable: wanted_replicas.is_some(),
        stable_base,
        desired: wanted.clone(),
        configs,
    })
}

/// A partition unit for every updated live StatefulSet whose template changes.
fn partition_units(
    plan: &Plan,
    desired: &[Desired],
    live_by_key: &BTreeMap<&ResourceKey, &Object>,
) -> Vec<PartitionUnit> {
    let updated: BTreeSet<&ResourceKey> = plan
        .changes
        .iter()
        .filter(|change| change.action() == Action::Update)
        .map(Change::key)
        .collect();
    desired
        .iter()
        .filter(|d| is_stateful_set(&d.key) && updated.contains(&d.key))
        .filter_map(|wanted| partition_unit(wanted, live_by_key.get(&wanted.key)?))
        .collect()
}

/// The partition unit of one live StatefulSet, if its template changes and it has a
/// partition to move.
fn partition_unit(wanted: &Desired, current: &Object) -> Option<PartitionUnit> {
    let on_delete = wanted
        .body
        .pointer("/spec/updateStrategy/type")
        .and_then(Value::as_str)
        == Some("OnDelete");
    let live_body = crate::diff::normalize(&current.body);
    // OnDelete leaves pods to whoever deletes them: there is no partition to move.
    if !template_changed(current, &live_body, wanted) || on_delete {
        return None;
    }
    Some(PartitionUnit {
        replicas: replicas_of(&wanted.body)
            .or_else(|| replicas_of(&live_body))
            .unwrap_or(1),
        desired: wanted.clone(),
    })
}

/// Deletions wait for promotion; other changes go first unless a canary or a held config
/// covers them.
fn immediate_and_deferred(
    plan: &Plan,
    canary_keys: &BTreeSet<&ResourceKey>,
    held_keys: &BTreeSet<ResourceKey>,
) -> (Vec<Change>, Vec<Change>) {
    let mut immediate = Vec::new();
    let mut deferred = Vec::new();
    for change in &plan.changes {
        if change.action() == Action::Delete {
            deferred.push(change.clone());
        } else if !canary_keys.contains(change.key()) && !held_keys.contains(change.key()) {
            immediate.push(change.clone());
        }
    }
    (immediate, deferred)
}

fn with_name(body: &Value, name: &str) -> Value {
    let mut body = body.clone();
    if let Some(metadata) = body.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.insert("name".into(), Value::String(name.to_string()));
    }
    body
}

fn insert_label(value: &mut Value, pointer: &str) {
    let parent_pointer = pointer.rsplit_once('/').map_or("", |(parent, _)| parent);
    let field = pointer.rsplit_once('/').map_or(pointer, |(_, field)| field);
    if value
        .pointer(parent_pointer)
        .is_none_or(|parent| !parent.is_object())
    {
        return;
    }
    let parent = value
        .pointer_mut(parent_pointer)
        .and_then(Value::as_object_mut)
        .expect("parent was checked to be an object");
    let labels = parent
        .entry(field)
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(labels) = labels.as_object_mut() {
        labels.insert(LABEL_TRACK.into(), Value::String(TRACK_CANARY.into()));
    }
}

fn set_replicas(body: &mut Value, replicas: u32) {
    if let Some(spec) = body.get_mut("spec").and_then(Value::as_object_mut) {
        spec.insert("replicas".into(), Value::from(replicas));
    }
}

/// A StatefulSet with the new template and its rolling update held at `partition`: pods with
/// an ordinal at or above it run the new template.
fn partitioned_body(unit: &PartitionUnit, partition: u32) -> Desired {
    let mut body = unit.desired.body.clone();
    if let Some(spec) = body.get_mut("spec").and_then(Value::as_object_mut) {
        let strategy = spec
            .entry("updateStrategy")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(strategy) = strategy.as_object_mut() {
            strategy.insert("type".into(), Value::String("RollingUpdate".into()));
            let rolling = strategy
                .entry("rollingUpdate")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Some(rolling) = rolling.as_object_mut() {
                rolling.insert("partition".into(), Value::from(partition));
            }
        }
    }
    Desired::from_body(unit.desired.key.clone(), body)
}

/// The canary Deployment of a unit at `replicas`.
fn canary_deployment(unit: &CanaryUnit, replicas: u32) -> Desired {
    let key = canary_key(&unit.desired.key);
    let mut body = with_name(&unit.desired.body, &key.name);
    set_replicas(&mut body, replicas);
    insert_label(&mut body, "/spec/selector/matchLabels");
    insert_label(&mut body, "/spec/template/metadata/labels");
    if let Some(template) = body.pointer_mut("/spec/template") {
        for_each_config_ref(template, &mut |kind, name| {
            let renamed = name.as_str().and_then(|current| {
                let key = ResourceKey {
                    group: String::new(),
                    kind: kind.to_string(),
                    namespace: unit.desired.key.namespace.clone(),
                    name: current.to_string(),
                };
                unit.configs
                    .contains(&key)
                    .then(|| format!("{current}{CANARY_SUFFIX}"))
            });
            if let Some(renamed) = renamed {
                *name = Value::String(renamed);
            }
        });
    }
    Desired::from_body(key, body)
}

/// Objects for a canary step (weight below 100): canary Deployments and config copies, then
/// stable Deployments scaled down to make room once the canary is ready.
pub fn canary_step(spec: &RolloutSpec, weight: u8) -> StepObjects {
    let mut apply = Vec::new();
    let mut shrink = Vec::new();
    for config in &spec.held {
        let key = canary_key(&config.key);
        apply.push(Desired::from_body(
            key.clone(),
            with_name(&config.body, &key.name),
        ));
    }
    for unit in &spec.canaries {
        let canary = canary_replicas(weight, unit.replicas);
        if unit.scales_stable {
            let mut stable = unit.stable_base.clone();
            set_replicas(&mut stable, unit.replicas.saturating_sub(canary));
            shrink.push(Desired::from_body(unit.desired.key.clone(), stable));
        }
        apply.push(canary_deployment(unit, canary));
    }
    for unit in &spec.partitioned {
        let partition = unit
            .replicas
            .saturating_sub(canary_replicas(weight, unit.replicas));
        apply.push(partitioned_body(unit, partition));
    }
    StepObjects {
        apply,
        shrink,
        delete: Vec::new(),
    }
}

/// Objects for the promotion: the new configs and templates on the stable objects, canary
/// objects removed, deferred deletions done.
pub fn promotion(spec: &RolloutSpec) -> StepObjects {
    let mut apply: Vec<Desired> = spec.held.clone();
    apply.extend(spec.canaries.iter().map(|unit| unit.desired.clone()));
    apply.extend(spec.partitioned.iter().map(|unit| {
        match unit
            .desired
            .body
            .pointer("/spec/updateStrategy/rollingUpdate/partition")
        {
            // Git sets a partition of its own: it is git's to keep.
            Some(_) => unit.desired.clone(),
            None => partitioned_body(unit, 0),
        }
    }));
    let mut delete: Vec<ResourceKey> = spec
        .canaries
        .iter()
        .map(|unit| canary_key(&unit.desired.key))
        .collect();
    delete.extend(spec.held.iter().map(|config| canary_key(&config.key)));
    delete.extend(spec.deferred.iter().map(|change| change.key().clone()));
    // After a restart the canary objects are live, so the plan deletes them too.
    let mut seen = BTreeSet::new();
    delete.retain(|key| seen.insert(key.clone()));
    StepObjects {
        apply,
        shrink: Vec::new(),
        delete,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{self, ManifestFile, ParseOptions};
    use crate::model::Revision;

    fn objects(yaml: &str) -> Vec<Object> {
        manifest::parse(
            &[ManifestFile {
                path: "t.yaml".into(),
                bytes: yaml.as_bytes().to_vec(),
                blob: None,
            }],
            Vec::new(),
            &ParseOptions {
                default_namespace: "shop".into(),
            },
        )
        .expect("test manifests are valid")
    }

    fn desired(yaml: &str) -> Vec<Desired> {
        objects(yaml).iter().map(Desired::new).collect()
    }

    fn live(yaml: &str) -> Vec<Object> {
        desired(yaml)
            .iter()
            .map(|d| Object {
                key: d.key.clone(),
                body: d.stamped("staging", &Revision("1".repeat(40))),
            })
            .collect()
    }

    fn app(image: &str, greeting: &str, replicas: u32) -> String {
        format!(
            "
apiVersion: v1
kind: ConfigMap
metadata: {{name: web-config}}
data: {{GREETING: {greeting}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, labels: {{app: web}}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
      - name: web
        image: {image}
        envFrom: [{{configMapRef: {{name: web-config}}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec: {{selector: {{app: web}}}}
"
        )
    }

    fn spec_for(old: &str, new: &str) -> RolloutSpec {
        let live = live(old);
        let wanted = desired(new);
        let plan = crate::plan::plan(&wanted, &live, true, crate::plan::Compare::Content);
        split(&plan, &wanted, &live, &desired(old))
    }

    fn find<'a>(step: &'a StepObjects, name: &str) -> &'a Desired {
        step.apply
            .iter()
            .chain(&step.shrink)
            .find(|d| d.key.name == name)
            .unwrap_or_else(|| panic!("{name} is in the step"))
    }

    #[test]
    fn replicas_round_with_at_least_one_canary() {
        assert_eq!(canary_replicas(10, 10), 1);
        assert_eq!(canary_replicas(50, 10), 5);
        assert_eq!(canary_replicas(100, 10), 10);
        assert_eq!(canary_replicas(10, 3), 1);
        assert_eq!(canary_replicas(25, 10), 3);
        assert_eq!(canary_replicas(1, 1), 1);
    }

    #[test]
    fn image_change_gets_a_canary_split_by_replicas() {
        let spec = spec_for(&app("web:1", "hi", 10), &app("web:2", "hi", 10));
        assert_eq!(spec.canaries.len(), 1);
        assert!(spec.immediate.is_empty());
        let step = canary_step(&spec, 10);
        let stable = find(&step, "web");
        let canary = find(&step, "web-canary");
        assert_eq!(
            (step.apply.len(), step.shrink.len()),
            (1, 1),
            "capacity first: the canary is added, and only then the stable scaled down"
        );
        assert_eq!(step.shrink[0].key.name, "web");
        assert_eq!(stable.body["spec"]["replicas"], 9);
        assert_eq!(
            stable.body["spec"]["template"]["spec"]["containers"][0]["image"],
            "web:1"
        );
        assert_eq!(canary.body["spec"]["replicas"], 1);
        assert_eq!(
            canary.body["spec"]["template"]["spec"]["containers"][0]["image"],
            "web:2"
        );
        assert_eq!(
            canary.body["spec"]["selector"]["matchLabels"][LABEL_TRACK],
            "canary"
        );
        let pod_labels = &canary.body["spec"]["template"]["metadata"]["labels"];
        assert_eq!(
            pod_labels["app"], "web",
            "the Service still selects canary pods"
        );
        assert_eq!(pod_labels[LABEL_TRACK], "canary");
        assert!(
            stable.body["spec"]["selector"]["matchLabels"]
                .get(LABEL_TRACK)
                .is_none(),
            "the stable selector is immutable and stays as it was"
        );
        let half = canary_step(&spec, 50);
        assert_eq!(find(&half, "web").body["spec"]["replicas"], 5);
        assert_eq!(find(&half, "web-canary").body["spec"]["replicas"], 5);

        let promoted = promotion(&spec);
        assert_eq!(promoted.apply.len(), 1);
        assert_eq!(promoted.apply[0].body["spec"]["replicas"], 10);
        assert_eq!(
            promoted.apply[0].body["spec"]["template"]["spec"]["containers"][0]["image"],
            "web:2"
        );
        assert_eq!(promoted.delete, [canary_key(&promoted.apply[0].key)]);
    }

    #[test]
    fn without_replicas_in_git_the_stable_keeps_its_live_size_and_the_canary_surges() {
        let old = app("web:1", "hi", 1).replace("  replicas: 1\n", "");
        let new = app("web:2", "hi", 1).replace("  replicas: 1\n", "");
        let mut live = live(&old);
        // An autoscaler runs 5 pods.
        for object in &mut live {
            if object.key.kind == "Deployment" {
                object.body["spec"]["replicas"] = 5.into();
            }
        }
        let wanted = desired(&new);
        let plan = crate::plan::plan(&wanted, &live, true, crate::plan::Compare::Content);
        let spec = split(&plan, &wanted, &live, &desired(&old));
        assert_eq!(spec.canaries.len(), 1);
        let step = canary_step(&spec, 20);
        assert!(
            step.apply
                .iter()
                .chain(&step.shrink)
                .all(|d| d.key.name != "web"),
            "the stable is not written: its size is not gitopsd's"
        );
        assert_eq!(find(&step, "web-canary").body["spec"]["replicas"], 1);
        assert_eq!(
            find(&canary_step(&spec, 50), "web-canary").body["spec"]["replicas"],
            3
        );
        let promoted = promotion(&spec);
        assert!(
            promoted.apply[0].body["spec"].get("replicas").is_none(),
            "promotion does not take the replicas field either"
        );
    }

    #[test]
    fn the_stable_is_written_from_its_previous_manifest_not_its_live_body() {
        let old = app("web:1", "hi", 4);
        let mut live = live(&old);
        for object in &mut live {
            if object.key.kind == "Deployment" {
                object.body["spec"]["progressDeadlineSeconds"] = 600.into();
            }
        }
        let wanted = desired(&app("web:2", "hi", 4));
        let plan = crate::plan::plan(&wanted, &live, true, crate::plan::Compare::Subset);
        let spec = split(&plan, &wanted, &live, &desired(&old));
        let stable = find(&canary_step(&spec, 50), "web").body.clone();
        assert_eq!(stable["spec"]["replicas"], 2);
        assert!(
            stable["spec"].get("progressDeadlineSeconds").is_none(),
            "a server default is not taken over"
        );
    }

    #[test]
    fn a_statefulset_canaries_by_partition_from_its_highest_ordinals() {
        let sts = |image: &str| {
            format!(
                "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {{name: db}}\nspec:\n  replicas: 4\n  serviceName: db\n  selector: {{matchLabels: {{app: db}}}}\n  template:\n    metadata: {{labels: {{app: db}}}}\n    spec: {{containers: [{{name: db, image: {image}}}]}}\n"
            )
        };
        let spec = spec_for(&sts("db:1"), &sts("db:2"));
        assert!(spec.has_canaries());
        assert_eq!(spec.partitioned.len(), 1);
        assert!(
            spec.immediate.is_empty(),
            "the StatefulSet is not applied at once"
        );
        let partition = |step: &StepObjects| {
            let body = &find(step, "db").body;
            assert_eq!(
                body["spec"]["template"]["spec"]["containers"][0]["image"],
                "db:2"
            );
            body["spec"]["updateStrategy"]["rollingUpdate"]["partition"].clone()
        };
        assert_eq!(partition(&canary_step(&spec, 25)), 3, "ordinal 3 only");
        assert_eq!(partition(&canary_step(&spec, 50)), 2, "ordinals 2 and 3");
        assert_eq!(
            partition(&promotion(&spec)),
            0,
            "promotion updates every pod"
        );
        let on_delete = sts("db:2").replace(
            "  serviceName: db\n",
            "  serviceName: db\n  updateStrategy: {type: OnDelete}\n",
        );
        let spec = spec_for(&sts("db:1"), &on_delete);
        assert!(
            spec.partitioned.is_empty(),
            "OnDelete has no partition to move"
        );
    }

    #[test]
    fn stable_pods_are_labelled_through_the_template_only_when_it_changes_anyway() {
        let web = desired(&app("web:1", "hi", 4))
            .into_iter()
            .find(|d| d.key.kind == "Deployment")
            .expect("web");
        let hash = web.template_hash();
        let labelled = |live: Option<LiveTemplate>, hash: Option<&str>| {
            let mut body = web.body.clone();
            mark_stable_track(&web.key, &mut body, hash, live.as_ref());
            assert!(
                body["spec"]["selector"]["matchLabels"]
                    .get(LABEL_TRACK)
                    .is_none(),
                "the selector is immutable"
            );
            body["spec"]["template"]["metadata"]["labels"]
                .get(LABEL_TRACK)
                .cloned()
        };
        let stable = Some(Value::String(TRACK_STABLE.into()));
        assert_eq!(labelled(None, hash.as_deref()), stable, "a new Deployment");
        let untracked = LiveTemplate {
            hash: hash.clone(),
            tracked: false,
        };
        assert_eq!(
            labelled(Some(untracked.clone()), hash.as_deref()),
            None,
            "same template, never labelled: adding the label alone would restart every pod"
        );
        assert_eq!(
            labelled(Some(untracked), Some("another template")),
            stable,
            "the template changes anyway"
        );
        let tracked = LiveTemplate {
            hash: hash.clone(),
            tracked: true,
        };
        assert_eq!(labelled(Some(tracked), hash.as_deref()), stable, "kept");
        let spec = spec_for(&app("web:1", "hi", 4), &app("web:2", "hi", 4));
        let mut canary = find(&canary_step(&spec, 50), "web-canary").body.clone();
        mark_stable_track(&canary_key(&web.key), &mut canary, None, None);
        assert_eq!(
            canary["spec"]["template"]["metadata"]["labels"][LABEL_TRACK], "canary",
            "a canary stays a canary"
        );
        let mut body = web.body.clone();
        mark_stable_track(&web.key, &mut body, None, None);
        assert_eq!(
            crate::diff::normalize(&body),
            web.body,
            "the label is gitopsd's, not the author's: it never shows as a change"
        );
    }

    #[test]
    fn changed_config_reaches_only_the_canary_until_promotion() {
        let spec = spec_for(&app("web:1", "hi", 4), &app("web:1", "hello", 4));
        assert_eq!(
            spec.canaries.len(),
            1,
            "template is the same, its config is not"
        );
        assert_eq!(spec.held.len(), 1);
        assert!(spec.immediate.is_empty(), "the ConfigMap is held back");
        let step = canary_step(&spec, 50);
        let copy = find(&step, "web-config-canary");
        assert_eq!(copy.body["data"]["GREETING"], "hello");
        let canary = find(&step, "web-canary");
        assert_eq!(
            canary.body["spec"]["template"]["spec"]["containers"][0]["envFrom"][0]["configMapRef"]
                ["name"],
            "web-config-canary"
        );
        assert!(
            step.apply.iter().all(|d| d.key.name != "web-config"),
            "the stable ConfigMap is untouched during steps"
        );
        let promoted = promotion(&spec);
        let names: Vec<&str> = promoted.apply.iter().map(|d| d.key.name.as_str()).collect();
        assert_eq!(names, ["web-config", "web"]);
        let deleted: Vec<&str> = promoted.delete.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(deleted, ["web-canary", "web-config-canary"]);
    }

    #[test]
    fn objects_without_canary_meaning_go_first_and_deletions_last() {
        let old = format!(
            "{}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: old}}\n",
            app("web:1", "hi", 2)
        );
        let new = format!(
            "{}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: unrelated}}\n",
            app("web:1", "hi", 3)
        );
        let spec = spec_for(&old, &new);
        assert!(!spec.has_canaries(), "a replica change is applied in place");
        let immediate: Vec<String> = spec
            .immediate
            .iter()
            .map(|c| c.key().name.clone())
            .collect();
        assert_eq!(immediate, ["unrelated", "web"]);
        assert_eq!(spec.deferred.len(), 1);
        assert_eq!(promotion(&spec).delete[0].name, "old");
    }

    #[test]
    fn new_deployments_are_created_without_canary() {
        let spec = spec_for(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
            &app("web:1", "hi", 2),
        );
        assert!(!spec.has_canaries());
        assert_eq!(spec.immediate.len(), 3);
    }

    #[test]
    fn the_applied_template_hash_wins_over_server_defaults_in_the_live_template() {
        let web = |objects: Vec<Object>| {
            objects
                .into_iter()
                .find(|object| object.key.kind == "Deployment")
                .expect("the app has a Deployment")
        };
        let unstamp = |object: &mut Object| {
            if let Some(annotations) = object
                .body
                .pointer_mut("/metadata/annotations")
                .and_then(Value::as_object_mut)
            {
                annotations.remove(ANNOTATION_TEMPLATE_HASH);
            }
        };
        let changed = |current: &Object, wanted: &Desired| {
            template_changed(current, &crate::diff::normalize(&current.body), wanted)
        };
        let wanted = Desired::new(&web(objects(&app("web:1", "hi", 4))));
        let newer = Desired::new(&web(objects(&app("web:2", "hi", 4))));
        let mut defaulted = web(live(&app("web:1", "hi", 4)));
        defaulted.body["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = 30.into();
        assert!(
            !changed(&defaulted, &wanted),
            "a server default is no change"
        );
        assert!(changed(&defaulted, &newer));

        // Without the hash gitopsd stamps, only the bodies can be compared.
        unstamp(&mut defaulted);
        assert!(changed(&defaulted, &wanted));
        let mut unstamped = web(live(&app("web:1", "hi", 4)));
        unstamp(&mut unstamped);
        assert!(!changed(&unstamped, &wanted));
        assert!(changed(&unstamped, &newer));
    }
}
