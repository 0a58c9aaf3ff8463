//! ApplySet ownership (KEP-3659, what `kubectl apply --prune --applyset` uses), pure: the
//! parent ConfigMap that records on the cluster which group-kinds and namespaces an environment
//! owns, its id, and whether a parent found live is this environment's.

use std::collections::BTreeSet;
use std::fmt;

use base64::Engine as _;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::labels::{
    ANNOTATION_GROUP_KINDS, ANNOTATION_NAMESPACES, ANNOTATION_SOURCE, ANNOTATION_TOOLING,
    LABEL_ENVIRONMENT, LABEL_ID, LABEL_MANAGED_BY, MANAGER, TOOL,
};
use crate::model::{KindRef, group_of};

/// Where an environment's parent ConfigMap lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentRef {
    pub name: String,
    pub namespace: String,
}

impl ParentRef {
    /// `gitopsd-<env>` in `namespace`.
    pub fn for_environment(environment: &str, namespace: &str) -> Self {
        Self {
            name: format!("gitopsd-{environment}"),
            namespace: namespace.to_string(),
        }
    }

    /// The applyset id: `applyset-<base64url(sha256(<name>.<namespace>.ConfigMap.))>-v1`.
    pub fn id(&self) -> String {
        let unencoded = format!("{}.{}.ConfigMap.", self.name, self.namespace);
        let digest = Sha256::digest(unencoded.as_bytes());
        let encoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
        format!("applyset-{encoded}-v1")
    }
}

impl fmt::Display for ParentRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConfigMap {}/{}", self.namespace, self.name)
    }
}

/// A type without its version, as the parent records it: `Kind` (core) or `Kind.group`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupKind {
    pub group: String,
    pub kind: String,
}

impl GroupKind {
    pub fn of(kind: &KindRef) -> Self {
        Self {
            group: group_of(&kind.api_version).to_string(),
            kind: kind.kind.clone(),
        }
    }

    /// Reads `Kind` or `Kind.group`; `None` for an empty entry.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if text.is_empty() {
            return None;
        }
        Some(match text.split_once('.') {
            Some((kind, group)) => Self {
                group: group.to_string(),
                kind: kind.to_string(),
            },
            None => Self {
                group: String::new(),
                kind: text.to_string(),
            },
        })
    }
}

impl fmt::Display for GroupKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group.is_empty() {
            f.write_str(&self.kind)
        } else {
            write!(f, "{}.{}", self.kind, self.group)
        }
    }
}

/// What a live parent records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParentState {
    pub id: Option<String>,
    pub tooling: Option<String>,
    pub source: Option<String>,
    pub group_kinds: BTreeSet<GroupKind>,
    pub namespaces: BTreeSet<String>,
}

fn comma_list<T: Ord>(text: Option<&str>, item: impl Fn(&str) -> Option<T>) -> BTreeSet<T> {
    text.unwrap_or_default()
        .split(',')
        .filter_map(item)
        .collect()
}

impl ParentState {
    pub fn from_body(body: &Value) -> Self {
        let label = |name: &str| {
            body.pointer("/metadata/labels")
                .and_then(|labels| labels.get(name))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let annotation = |name: &str| {
            body.pointer("/metadata/annotations")
                .and_then(|annotations| annotations.get(name))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        Self {
            id: label(LABEL_ID),
            tooling: annotation(ANNOTATION_TOOLING),
            source: annotation(ANNOTATION_SOURCE),
            group_kinds: comma_list(
                annotation(ANNOTATION_GROUP_KINDS).as_deref(),
                GroupKind::parse,
            ),
            namespaces: comma_list(annotation(ANNOTATION_NAMESPACES).as_deref(), |text| {
                let text = text.trim();
                (!text.is_empty()).then(|| text.to_string())
            }),
        }
    }
}

/// Who holds a parent found live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// No parent yet.
    Nobody,
    /// This environment (same tool and source).
    Us,
    /// Someone else; the text names them.
    Other(String),
}

/// Whether the live parent (if any) belongs to the environment reading from `source`.
pub fn holder(parent: Option<&ParentState>, source: &str) -> Holder {
    let Some(parent) = parent else {
        return Holder::Nobody;
    };
    let ours_tool = parent
        .tooling
        .as_deref()
        .is_some_and(|tooling| tooling.split('/').next() == Some(TOOL));
    match (&parent.tooling, &parent.source) {
        _ if ours_tool && parent.source.as_deref() == Some(source) => Holder::Us,
        (_, Some(other)) if ours_tool => Holder::Other(format!("gitopsd source {other}")),
        (Some(tooling), _) => Holder::Other(format!("tool {tooling}")),
        (None, _) => Holder::Other(
            "an object that is not an applyset parent of gitopsd (no applyset tooling annotation)"
                .into(),
        ),
    }
}

/// What the parent must record after this change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    pub group_kinds: BTreeSet<GroupKind>,
    /// Namespaces of namespaced members, the parent's own included (left out when written).
    pub namespaces: BTreeSet<String>,
}

impl Record {
    /// Whether the live parent already says exactly this (its own namespace aside).
    pub fn is_recorded_by(&self, parent: &ParentState, parent_ref: &ParentRef) -> bool {
        parent.group_kinds == self.group_kinds
            && parent.namespaces == self.additional_namespaces(parent_ref)
    }

    /// Whether the live parent records at least this.
    pub fn is_covered_by(&self, parent: &ParentState, parent_ref: &ParentRef) -> bool {
        self.group_kinds.is_subset(&parent.group_kinds)
            && self
                .additional_namespaces(parent_ref)
                .is_subset(&parent.namespaces)
    }

    /// This record together with what `parent` already records.
    pub fn union(&self, parent: &ParentState) -> Self {
        let mut union = self.clone();
        union.group_kinds.extend(parent.group_kinds.iter().cloned());
        union.namespaces.extend(parent.namespaces.iter().cloned());
        union
    }

    fn additional_namespaces(&self, parent_ref: &ParentRef) -> BTreeSet<String> {
        self.namespaces
            .iter()
            .filter(|namespace| **namespace != parent_ref.namespace)
            .cloned()
            .collect()
    }
}

/// Who owns the applyset: the environment, its source and the tool version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub environment: String,
    pub source: String,
}

/// The parent ConfigMap that records `record` for `owner`, for a server-side apply.
pub fn parent_body(parent: &ParentRef, owner: &Owner, record: &Record) -> Value {
    let join = |items: Vec<String>| items.join(",");
    let mut annotations = Map::new();
    annotations.insert(
        ANNOTATION_TOOLING.into(),
        Value::String(format!("{TOOL}/v{}", env!("CARGO_PKG_VERSION"))),
    );
    // Sorted as text, as kubectl writes it.
    let mut group_kinds: Vec<String> = record.group_kinds.iter().map(ToString::to_string).collect();
    group_kinds.sort();
    annotations.insert(
        ANNOTATION_GROUP_KINDS.into(),
        Value::String(join(group_kinds)),
    );
    let namespaces = record.additional_namespaces(parent);
    if !namespaces.is_empty() {
        annotations.insert(
            ANNOTATION_NAMESPACES.into(),
            Value::String(join(namespaces.into_iter().collect())),
        );
    }
    annotations.insert(
        ANNOTATION_SOURCE.into(),
        Value::String(owner.source.clone()),
    );
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": parent.name,
            "namespace": parent.namespace,
            "labels": {
                LABEL_ID: parent.id(),
                LABEL_MANAGED_BY: MANAGER,
                LABEL_ENVIRONMENT: owner.environment,
            },
            "annotations": annotations,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parent_yaml(yaml: &str) -> ParentState {
        let body: Value = serde_saphyr::from_str(yaml).expect("test YAML is valid");
        ParentState::from_body(&body)
    }

    #[test]
    fn id_follows_the_kep_format() {
        let parent = ParentRef::for_environment("staging", "shop");
        let id = parent.id();
        // base64url(sha256("gitopsd-staging.shop.ConfigMap.")), no padding.
        let digest = Sha256::digest(b"gitopsd-staging.shop.ConfigMap.");
        let expected = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest);
        assert_eq!(id, format!("applyset-{expected}-v1"));
        assert!(id.len() <= 63, "label values hold at most 63 characters");
        assert_ne!(id, ParentRef::for_environment("staging", "web").id());
    }

    #[test]
    fn group_kinds_read_and_write_in_kubectl_form() {
        let state = parent_yaml(
            "
metadata:
  labels: {applyset.kubernetes.io/id: x}
  annotations:
    applyset.kubernetes.io/tooling: gitopsd/v0.1.0
    applyset.kubernetes.io/contains-group-kinds: 'ConfigMap,Deployment.apps,Widget.example.com,'
    applyset.kubernetes.io/additional-namespaces: 'a,b'
",
        );
        let kinds: Vec<String> = state.group_kinds.iter().map(ToString::to_string).collect();
        assert_eq!(
            kinds,
            ["ConfigMap", "Deployment.apps", "Widget.example.com"]
        );
        assert_eq!(state.namespaces.len(), 2);
        assert_eq!(
            GroupKind::parse("Widget.example.com").map(|g| g.group),
            Some("example.com".into())
        );
    }

    #[test]
    fn a_parent_of_another_source_or_tool_is_not_ours() {
        let ours = "git@example:ops.git#main:environments/production";
        let parent = |tooling: &str, source: &str| {
            parent_yaml(&format!(
                "metadata:\n  annotations:\n    applyset.kubernetes.io/tooling: '{tooling}'\n    gitopsd.io/source: '{source}'\n"
            ))
        };
        assert_eq!(holder(None, ours), Holder::Nobody);
        assert_eq!(
            holder(Some(&parent("gitopsd/v0.1.0", ours)), ours),
            Holder::Us
        );
        assert_eq!(
            holder(
                Some(&parent("gitopsd/v0.1.0", "/srv/other#main:prod")),
                ours
            ),
            Holder::Other("gitopsd source /srv/other#main:prod".into())
        );
        assert_eq!(
            holder(Some(&parent("kubectl/v1.28", ours)), ours),
            Holder::Other("tool kubectl/v1.28".into())
        );
        assert!(matches!(
            holder(Some(&parent_yaml("metadata: {name: x}")), ours),
            Holder::Other(_)
        ));
    }

    #[test]
    fn the_parent_body_records_kinds_and_other_namespaces() {
        let parent = ParentRef::for_environment("staging", "shop");
        let record = Record {
            group_kinds: ["Deployment.apps", "ConfigMap", "Namespace"]
                .iter()
                .filter_map(|text| GroupKind::parse(text))
                .collect(),
            namespaces: ["shop".to_string(), "audit".to_string()].into(),
        };
        let owner = Owner {
            environment: "staging".into(),
            source: "/srv/repo#main:environments/staging".into(),
        };
        let body = parent_body(&parent, &owner, &record);
        let annotations = &body["metadata"]["annotations"];
        assert_eq!(
            annotations[ANNOTATION_GROUP_KINDS],
            "ConfigMap,Deployment.apps,Namespace"
        );
        assert_eq!(annotations[ANNOTATION_NAMESPACES], "audit");
        assert_eq!(body["metadata"]["labels"][LABEL_ID], parent.id());
        let state = ParentState::from_body(&body);
        assert!(record.is_recorded_by(&state, &parent));
        assert_eq!(holder(Some(&state), &owner.source), Holder::Us);
        let mut more = record.clone();
        more.group_kinds
            .insert(GroupKind::parse("Service").expect("valid"));
        assert!(!more.is_covered_by(&state, &parent));
        assert!(record.is_covered_by(&state, &parent));
        assert!(!more.union(&state).is_covered_by(&state, &parent));
    }
}
