//! Desired × live objects → the ordered list of creates, updates and deletes (pure).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use crate::diff::{self, RenderError};
use crate::labels::{
    ANNOTATION_HASH, ANNOTATION_REVISION, ANNOTATION_TEMPLATE_HASH, LABEL_ENVIRONMENT,
    LABEL_MANAGED_BY, MANAGER,
};
pub use crate::model::Action;
use crate::model::{Object, ResourceKey, Revision};

/// A desired object after normalization, with its content hash.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub key: ResourceKey,
    /// The normalized body: what the author asked for.
    pub body: Value,
    pub hash: String,
}

impl Desired {
    pub fn new(object: &Object) -> Self {
        Self::from_body(object.key.clone(), object.body.clone())
    }

    /// [`Desired::new`] of an object the caller no longer needs.
    pub fn from_object(object: Object) -> Self {
        Self::from_body(object.key, object.body)
    }

    /// Normalizes and hashes a body built by gitopsd itself (canary objects, scaled stables).
    pub fn from_body(key: ResourceKey, body: Value) -> Self {
        let body = diff::normalize_owned(body);
        let hash = diff::content_hash(&body);
        Self { key, body, hash }
    }

    /// The body to apply: the normalized body plus gitopsd's ownership marks.
    pub fn stamped(&self, environment: &str, revision: &Revision) -> Value {
        let mut body = self.body.clone();
        if let Some(top) = body.as_object_mut() {
            let metadata = top
                .entry("metadata")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Some(metadata) = metadata.as_object_mut() {
                insert_entry(metadata, "labels", LABEL_MANAGED_BY, MANAGER);
                insert_entry(metadata, "labels", LABEL_ENVIRONMENT, environment);
                insert_entry(metadata, "annotations", ANNOTATION_REVISION, &revision.0);
                insert_entry(metadata, "annotations", ANNOTATION_HASH, &self.hash);
                if let Some(template) = self.template_hash() {
                    insert_entry(metadata, "annotations", ANNOTATION_TEMPLATE_HASH, &template);
                }
            }
        }
        body
    }

    /// Hash of a Deployment's or StatefulSet's pod template.
    pub fn template_hash(&self) -> Option<String> {
        if self.key.group != "apps"
            || !matches!(self.key.kind.as_str(), "Deployment" | "StatefulSet")
        {
            return None;
        }
        self.body.pointer("/spec/template").map(diff::content_hash)
    }
}

fn insert_entry(metadata: &mut Map<String, Value>, field: &str, name: &str, value: &str) {
    let entries = metadata
        .entry(field)
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(entries) = entries.as_object_mut() {
        entries.insert(name.to_string(), Value::String(value.to_string()));
    }
}

/// One change to make. Live bodies are normalized.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Create {
        desired: Desired,
    },
    Update {
        desired: Desired,
        live: Value,
        /// Set when the live object was applied from this very desired object and has been
        /// changed since (drift): the field paths that no longer hold git's values.
        drift: Vec<String>,
    },
    Delete {
        key: ResourceKey,
        live: Value,
    },
}

impl Change {
    pub fn key(&self) -> &ResourceKey {
        match self {
            Change::Create { desired } | Change::Update { desired, .. } => &desired.key,
            Change::Delete { key, .. } => key,
        }
    }

    pub fn action(&self) -> Action {
        match self {
            Change::Create { .. } => Action::Create,
            Change::Update { .. } => Action::Update,
            Change::Delete { .. } => Action::Delete,
        }
    }

    /// The desired object, for creates and updates.
    pub fn desired(&self) -> Option<&Desired> {
        match self {
            Change::Create { desired } | Change::Update { desired, .. } => Some(desired),
            Change::Delete { .. } => None,
        }
    }

    /// The drifted field paths, for an update that puts back drift.
    pub fn drift(&self) -> Option<&[String]> {
        match self {
            Change::Update { drift, .. } if !drift.is_empty() => Some(drift),
            _ => None,
        }
    }

    /// The live (or old) normalized body, for updates and deletes.
    pub fn live(&self) -> Option<&Value> {
        match self {
            Change::Create { .. } => None,
            Change::Update { live, .. } | Change::Delete { live, .. } => Some(live),
        }
    }

    /// Unified diff of the normalized live (or old) body against the desired one.
    pub fn render_diff(&self) -> Result<String, RenderError> {
        let old = match self.live() {
            Some(body) => diff::to_yaml(body)?,
            None => String::new(),
        };
        let new = match self.desired() {
            Some(desired) => diff::to_yaml(&desired.body)?,
            None => String::new(),
        };
        let label = self.key().to_string();
        Ok(diff::unified(
            &format!("a/{label}"),
            &format!("b/{label}"),
            &old,
            &new,
        ))
    }
}

/// The changes for one environment, in the order they must run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub changes: Vec<Change>,
    /// Objects in `desired` that need no change.
    pub unchanged: usize,
    /// Owned live objects that the revision dropped but pruning is off for.
    pub orphaned: Vec<ResourceKey>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Number of changes with the given action.
    pub fn count(&self, action: Action) -> usize {
        self.changes.iter().filter(|c| c.action() == action).count()
    }
}

/// Apply stage of a kind (DESIGN §4): namespaces and CRDs, then config, then Services, then
/// workloads, then the rest. Deletions run in reverse.
pub fn stage(key: &ResourceKey) -> u8 {
    match (key.group.as_str(), key.kind.as_str()) {
        ("", "Namespace") | ("apiextensions.k8s.io", "CustomResourceDefinition") => 0,
        ("", "ConfigMap" | "Secret" | "ServiceAccount")
        | (
            "rbac.authorization.k8s.io",
            "Role" | "ClusterRole" | "RoleBinding" | "ClusterRoleBinding",
        ) => 1,
        ("", "Service") => 2,
        ("apps", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet")
        | ("batch", "Job" | "CronJob")
        | ("", "Pod" | "ReplicationController") => 3,
        _ => 4,
    }
}

/// How "unchanged" is decided. Either way a live `gitopsd.io/hash` other than the desired
/// hash is a change from git; with the same hash, a difference is drift.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compare {
    /// The normalized live body equals the desired one, so any edit made outside git is drift
    /// (the directory target, whose files gitopsd owns whole).
    Content,
    /// Every field the desired body sets holds the same value live (targets whose live objects
    /// carry server defaults and other writers' fields, like Kubernetes). Fields git leaves
    /// out are not looked at.
    Subset,
}

/// Compares desired objects with the live objects the environment owns.
pub fn plan(desired: &[Desired], live: &[Object], prune: bool, compare: Compare) -> Plan {
    let live_by_key: BTreeMap<&ResourceKey, Value> = live
        .iter()
        .map(|object| (&object.key, diff::normalize(&object.body)))
        .collect();
    let live_hashes: BTreeMap<&ResourceKey, &str> = live
        .iter()
        .filter_map(|object| Some((&object.key, object.annotation(ANNOTATION_HASH)?)))
        .collect();
    let mut applies = Vec::new();
    let mut unchanged = 0;
    for wanted in desired {
        match live_by_key.get(&wanted.key) {
            None => applies.push(Change::Create {
                desired: wanted.clone(),
            }),
            Some(current) => {
                let same_source = live_hashes.get(&wanted.key) == Some(&wanted.hash.as_str());
                let drift = match compare {
                    Compare::Content if *current == wanted.body => None,
                    Compare::Content => Some(diff::differing_fields(current, &wanted.body)),
                    Compare::Subset if !same_source => Some(Vec::new()),
                    Compare::Subset => {
                        let unmet = diff::unmet_fields(&wanted.body, current);
                        (!unmet.is_empty()).then_some(unmet)
                    }
                };
                match drift {
                    None => unchanged += 1,
                    Some(drift) => applies.push(Change::Update {
                        desired: wanted.clone(),
                        live: current.clone(),
                        drift: if same_source { drift } else { Vec::new() },
                    }),
                }
            }
        }
    }
    let wanted_keys: BTreeMap<&ResourceKey, ()> = desired.iter().map(|d| (&d.key, ())).collect();
    let mut deletes = Vec::new();
    let mut orphaned = Vec::new();
    for (key, body) in &live_by_key {
        if wanted_keys.contains_key(key) {
            continue;
        }
        if prune {
            deletes.push(Change::Delete {
                key: (*key).clone(),
                live: body.clone(),
            });
        } else {
            orphaned.push((*key).clone());
        }
    }
    in_order(applies, deletes, unchanged, orphaned)
}

/// The plan with applies in stage order, then deletes in reverse stage order.
fn in_order(
    mut applies: Vec<Change>,
    mut deletes: Vec<Change>,
    unchanged: usize,
    orphaned: Vec<ResourceKey>,
) -> Plan {
    applies.sort_by(|a, b| (stage(a.key()), a.key()).cmp(&(stage(b.key()), b.key())));
    deletes.sort_by(|a, b| (stage(b.key()), b.key()).cmp(&(stage(a.key()), a.key())));
    applies.extend(deletes);
    Plan {
        changes: applies,
        unchanged,
        orphaned,
    }
}

/// Compares two desired states (two revisions) offline: the old side plays "live".
pub fn compare_revisions(old: &[Desired], new: &[Desired]) -> Plan {
    // Both sides are normalized and hashed already: equal hashes are equal bodies, so only
    // the objects that changed are copied. The same plan as `plan(new, old, true, Content)`,
    // where no drift is reported because desired bodies carry no hash annotation.
    let old_by_key: BTreeMap<&ResourceKey, &Desired> = old.iter().map(|d| (&d.key, d)).collect();
    let mut applies = Vec::new();
    let mut unchanged = 0;
    for wanted in new {
        match old_by_key.get(&wanted.key) {
            None => applies.push(Change::Create {
                desired: wanted.clone(),
            }),
            Some(before) if before.hash == wanted.hash => unchanged += 1,
            Some(before) => applies.push(Change::Update {
                desired: wanted.clone(),
                live: before.body.clone(),
                drift: Vec::new(),
            }),
        }
    }
    let new_keys: BTreeSet<&ResourceKey> = new.iter().map(|d| &d.key).collect();
    let deletes: Vec<Change> = old
        .iter()
        .filter(|before| !new_keys.contains(&before.key))
        .map(|before| Change::Delete {
            key: before.key.clone(),
            live: before.body.clone(),
        })
        .collect();
    in_order(applies, deletes, unchanged, Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{self, ManifestFile, ParseOptions};

    fn desired(yaml: &str) -> Vec<Desired> {
        let objects = manifest::parse(
            &[ManifestFile {
                path: "t.yaml".into(),
                bytes: yaml.as_bytes().to_vec(),
                blob: None,
            }],
            Vec::new(),
            &ParseOptions {
                default_namespace: "default".into(),
            },
        )
        .expect("test manifests are valid");
        objects.iter().map(Desired::new).collect()
    }

    #[test]
    fn comparing_revisions_by_hash_plans_what_a_full_comparison_plans() {
        let old = desired(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: gone}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: same}\ndata: {a: '1'}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: changed}\ndata: {a: '1'}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: removed}\n",
        );
        let new = desired(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: same}\ndata: {a: '1'}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: changed}\ndata: {a: '2'}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: added}\n",
        );
        let old_as_live: Vec<Object> = old
            .iter()
            .map(|d| Object {
                key: d.key.clone(),
                body: d.body.clone(),
            })
            .collect();
        let by_hash = compare_revisions(&old, &new);
        assert_eq!(by_hash, plan(&new, &old_as_live, true, Compare::Content));
        assert_eq!(by_hash.unchanged, 1);
        let actions: Vec<String> = by_hash
            .changes
            .iter()
            .map(|c| format!("{:?} {}", c.action(), c.key()))
            .collect();
        assert_eq!(
            actions,
            [
                "Create Namespace added",
                "Update ConfigMap default/changed",
                "Delete ConfigMap default/removed",
                "Delete Namespace gone"
            ]
        );
    }

    fn live(items: &[Desired]) -> Vec<Object> {
        let revision = Revision("0".repeat(40));
        items
            .iter()
            .map(|d| Object {
                key: d.key.clone(),
                body: d.stamped("staging", &revision),
            })
            .collect()
    }

    const OLD: &str = "
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec: {replicas: 2}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: keep}
data: {a: '1'}
---
apiVersion: v1
kind: Service
metadata: {name: gone}
";

    const NEW: &str = "
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec: {replicas: 3}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: keep}
data: {a: '1'}
---
apiVersion: v1
kind: Namespace
metadata: {name: added}
";

    #[test]
    fn create_update_delete_and_unchanged() {
        let plan = plan(&desired(NEW), &live(&desired(OLD)), true, Compare::Content);
        let summary: Vec<String> = plan
            .changes
            .iter()
            .map(|c| format!("{} {}", c.action().verb(), c.key()))
            .collect();
        assert_eq!(
            summary,
            [
                "create Namespace added",
                "update Deployment.apps default/web",
                "delete Service default/gone",
            ]
        );
        assert_eq!(plan.unchanged, 1);
        let diff = plan.changes[1].render_diff().expect("renders");
        assert!(diff.contains("-  replicas: 2"), "{diff}");
        assert!(diff.contains("+  replicas: 3"), "{diff}");
    }

    #[test]
    fn without_prune_dropped_objects_are_only_reported() {
        let plan = plan(&desired(NEW), &live(&desired(OLD)), false, Compare::Content);
        assert_eq!(plan.count(Action::Delete), 0);
        assert_eq!(plan.orphaned.len(), 1);
    }

    #[test]
    fn same_state_is_an_empty_plan_even_at_another_revision() {
        let plan = plan(&desired(OLD), &live(&desired(OLD)), true, Compare::Content);
        assert!(plan.is_empty());
        assert_eq!(plan.unchanged, 3);
    }

    #[test]
    fn stamped_body_hashes_back_to_the_desired_hash() {
        let item = &desired(OLD)[0];
        let stamped = item.stamped("staging", &Revision("a".repeat(40)));
        assert_eq!(stamped["metadata"]["labels"][LABEL_ENVIRONMENT], "staging");
        assert_eq!(diff::content_hash(&diff::normalize(&stamped)), item.hash);
    }

    #[test]
    fn deletes_run_in_reverse_stage_order() {
        let old = desired(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: ns1}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n",
        );
        let plan = plan(&[], &live(&old), true, Compare::Content);
        assert_eq!(plan.changes[0].key().kind, "Deployment");
        assert_eq!(plan.changes[1].key().kind, "Namespace");
    }
}
