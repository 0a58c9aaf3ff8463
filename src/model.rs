//! Core vocabulary shared by every module: resource keys, manifest objects, revisions.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::labels::{LABEL_ENVIRONMENT, LABEL_MANAGED_BY, MANAGER};

/// Identity of an object: API group, kind, namespace (none for cluster-scoped kinds) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ResourceKey {
    /// API group; empty for the core group (`v1`).
    pub group: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl ResourceKey {
    /// `Kind` for the core group, `Kind.group` otherwise: the form `kubectl` accepts.
    pub fn qualified_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.clone()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(namespace) => write!(f, "{} {}/{}", self.qualified_kind(), namespace, self.name),
            None => write!(f, "{} {}", self.qualified_kind(), self.name),
        }
    }
}

/// A type of object as the API serves it: `apiVersion` and `kind`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct KindRef {
    pub api_version: String,
    pub kind: String,
}

impl KindRef {
    /// The type of an object body, if it names one.
    pub fn of(body: &Value) -> Option<Self> {
        Some(Self {
            api_version: body.get("apiVersion")?.as_str()?.to_string(),
            kind: body.get("kind")?.as_str()?.to_string(),
        })
    }
}

impl fmt::Display for KindRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.api_version, self.kind)
    }
}

/// One manifest object: its key and its full body as parsed from YAML.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    pub key: ResourceKey,
    pub body: Value,
}

impl Object {
    /// Builds an object from a body, reading its key from `apiVersion`, `kind` and `metadata`.
    /// Returns `None` when the body lacks any of them; callers that need reasons use
    /// [`crate::manifest`].
    pub fn from_body(body: Value) -> Option<Self> {
        let api_version = body.get("apiVersion")?.as_str()?;
        let kind = body.get("kind")?.as_str()?.to_string();
        let metadata = body.get("metadata")?;
        let name = metadata.get("name")?.as_str()?.to_string();
        let namespace = metadata
            .get("namespace")
            .and_then(Value::as_str)
            .map(str::to_string);
        let key = ResourceKey {
            group: group_of(api_version).to_string(),
            kind,
            namespace,
            name,
        };
        Some(Self { key, body })
    }

    /// Value of a label, if present.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.body
            .pointer("/metadata/labels")
            .and_then(|labels| labels.get(name))
            .and_then(Value::as_str)
    }

    /// Value of an annotation, if present.
    pub fn annotation(&self, name: &str) -> Option<&str> {
        self.body
            .pointer("/metadata/annotations")
            .and_then(|annotations| annotations.get(name))
            .and_then(Value::as_str)
    }

    /// True when the object carries gitopsd's ownership marks for `environment`.
    pub fn is_owned_by(&self, environment: &str) -> bool {
        self.label(LABEL_MANAGED_BY) == Some(MANAGER)
            && self.label(LABEL_ENVIRONMENT) == Some(environment)
    }
}

/// API group of an `apiVersion` (`apps/v1` → `apps`, `v1` → ``).
pub fn group_of(api_version: &str) -> &str {
    match api_version.split_once('/') {
        Some((group, _version)) => group,
        None => "",
    }
}

/// A git commit id, as full lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Revision(pub String);

impl Revision {
    /// The first 12 hex digits, for logs and tables.
    pub fn short(&self) -> &str {
        self.0.get(..12).unwrap_or(&self.0)
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Built-in kinds that are cluster-scoped in Kubernetes. Without an API server to ask (the
/// directory target, offline diffs) namespaces follow this list; the kubernetes target asks
/// discovery instead.
const CLUSTER_SCOPED: &[(&str, &str)] = &[
    ("", "Namespace"),
    ("", "Node"),
    ("", "PersistentVolume"),
    ("apiextensions.k8s.io", "CustomResourceDefinition"),
    ("rbac.authorization.k8s.io", "ClusterRole"),
    ("rbac.authorization.k8s.io", "ClusterRoleBinding"),
    ("storage.k8s.io", "StorageClass"),
    ("storage.k8s.io", "CSIDriver"),
    ("storage.k8s.io", "CSINode"),
    ("storage.k8s.io", "VolumeAttachment"),
    ("scheduling.k8s.io", "PriorityClass"),
    ("networking.k8s.io", "IngressClass"),
    ("node.k8s.io", "RuntimeClass"),
    (
        "admissionregistration.k8s.io",
        "ValidatingWebhookConfiguration",
    ),
    (
        "admissionregistration.k8s.io",
        "MutatingWebhookConfiguration",
    ),
    ("apiregistration.k8s.io", "APIService"),
];

/// The built-in cluster-scoped kinds, as (group, kind).
pub fn cluster_scoped_kinds() -> impl Iterator<Item = (&'static str, &'static str)> {
    CLUSTER_SCOPED.iter().copied()
}

/// True for built-in kinds known to be cluster-scoped.
pub fn is_cluster_scoped(group: &str, kind: &str) -> bool {
    cluster_scoped_kinds().any(|(g, k)| g == group && k == kind)
}

/// What a change does to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Create,
    Update,
    Delete,
}

impl Action {
    /// Sign shown before an object in diffs (`+`, `~`, `-`).
    pub fn sign(self) -> char {
        match self {
            Action::Create => '+',
            Action::Update => '~',
            Action::Delete => '-',
        }
    }

    pub fn verb(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_is_read_from_body() {
        let object = Object::from_body(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "shop"}
        }))
        .expect("body has apiVersion, kind and name");
        assert_eq!(object.key.group, "apps");
        assert_eq!(object.key.to_string(), "Deployment.apps shop/web");
    }

    #[test]
    fn ownership_needs_both_labels() {
        let owned = Object::from_body(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "labels": {LABEL_MANAGED_BY: MANAGER, LABEL_ENVIRONMENT: "staging"}}
        }))
        .expect("valid body");
        assert!(owned.is_owned_by("staging"));
        assert!(!owned.is_owned_by("production"));
    }

    #[test]
    fn cluster_scope_is_known_for_namespaces_and_crds() {
        assert!(is_cluster_scoped("", "Namespace"));
        assert!(is_cluster_scoped(
            "apiextensions.k8s.io",
            "CustomResourceDefinition"
        ));
        assert!(!is_cluster_scoped("apps", "Deployment"));
    }
}
