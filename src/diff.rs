//! Normalization, content hashes and text diffs of objects: what "changed" means.

use std::fmt::Write as _;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use similar::TextDiff;
use thiserror::Error;

use crate::labels::{
    ANNOTATION_ENCRYPTED, ANNOTATION_STRATEGY, LABEL_MANAGED_BY, LABEL_PART_OF, LABEL_TRACK,
    MANAGER, OWN_PREFIX, TRACK_STABLE,
};

/// Metadata fields that the server or gitopsd sets, never the author.
const SERVER_METADATA: &[&str] = &[
    "managedFields",
    "resourceVersion",
    "uid",
    "creationTimestamp",
    "generation",
    "selfLink",
];

#[derive(Debug, Error)]
pub enum RenderError {
    #[error("cannot render object as YAML: {0}")]
    Yaml(String),
}

/// Strips everything that is not the author's intent: `status`, server-set metadata, and the
/// labels and annotations gitopsd adds itself. Maps left empty by that are removed too, so a
/// manifest without labels equals its applied copy.
pub fn normalize(body: &Value) -> Value {
    // Copies all but what is stripped anyway: a live object's status and managedFields are
    // often most of it.
    let Some(top) = body.as_object() else {
        return body.clone();
    };
    let copy: Map<String, Value> = top
        .iter()
        .filter(|(key, _)| key.as_str() != "status")
        .map(|(key, value)| {
            let value = match (key.as_str(), value.as_object()) {
                ("metadata", Some(metadata)) => Value::Object(
                    metadata
                        .iter()
                        .filter(|(field, _)| !SERVER_METADATA.contains(&field.as_str()))
                        .map(|(field, value)| (field.clone(), value.clone()))
                        .collect(),
                ),
                _ => value.clone(),
            };
            (key.clone(), value)
        })
        .collect();
    normalize_owned(Value::Object(copy))
}

/// [`normalize`] of a body the caller no longer needs, without copying it.
pub fn normalize_owned(mut body: Value) -> Value {
    if let Some(top) = body.as_object_mut() {
        top.remove("status");
        if let Some(metadata) = top.get_mut("metadata").and_then(Value::as_object_mut) {
            for field in SERVER_METADATA {
                metadata.remove(*field);
            }
            strip_own_entries(metadata, "labels");
            strip_own_entries(metadata, "annotations");
        }
        // The stable track label gitopsd adds to pod templates is not the author's either.
        if let Some(labels) = top
            .get_mut("spec")
            .and_then(|spec| spec.pointer_mut("/template/metadata"))
            .and_then(Value::as_object_mut)
        {
            let stable = labels
                .get("labels")
                .and_then(|l| l.get(LABEL_TRACK))
                .and_then(Value::as_str)
                == Some(TRACK_STABLE);
            if stable {
                strip_track(labels);
            }
        }
    }
    body
}

fn strip_track(template_metadata: &mut Map<String, Value>) {
    if let Some(labels) = template_metadata
        .get_mut("labels")
        .and_then(Value::as_object_mut)
    {
        labels.remove(LABEL_TRACK);
        if labels.is_empty() {
            template_metadata.remove("labels");
        }
    }
}

fn strip_own_entries(metadata: &mut Map<String, Value>, field: &str) {
    let Some(entries) = metadata.get_mut(field).and_then(Value::as_object_mut) else {
        return;
    };
    entries.retain(|name, value| {
        // Which values were encrypted in git is the author's, and kept so that a live object
        // says it too (its diff redacts them); so is the strategy a workload asks for.
        let ours = (name.starts_with(OWN_PREFIX)
            && name != ANNOTATION_STRATEGY
            && name != ANNOTATION_ENCRYPTED)
            || name == LABEL_PART_OF
            || (name == LABEL_MANAGED_BY && value.as_str() == Some(MANAGER));
        !ours
    });
    if entries.is_empty() {
        metadata.remove(field);
    }
}

/// The JSON pointers of a body's values that were SOPS-encrypted in git (its
/// [`ANNOTATION_ENCRYPTED`]); none without it.
pub fn encrypted_pointers(body: &Value) -> Vec<String> {
    body.pointer("/metadata/annotations")
        .and_then(|annotations| annotations.get(ANNOTATION_ENCRYPTED))
        .and_then(Value::as_str)
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_default()
}

/// JSON with object keys sorted at every level, whatever order the map keeps them in.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (index, (key, item)) in entries.into_iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(item, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Lowercase hex sha256 of the canonical JSON of an already normalized body.
pub fn content_hash(normalized: &Value) -> String {
    let digest = Sha256::digest(canonical_json(normalized).as_bytes());
    let mut hex = String::with_capacity(64);
    for byte in digest.iter() {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// A copy with map keys sorted at every level, so rendered YAML is stable.
pub fn sorted(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(key, item)| (key.clone(), sorted(item)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        scalar => scalar.clone(),
    }
}

/// YAML rendering with sorted keys: the form written to disk and shown in diffs.
pub fn to_yaml(value: &Value) -> Result<String, RenderError> {
    serde_saphyr::to_string(&sorted(value)).map_err(|error| RenderError::Yaml(error.to_string()))
}

/// Unified diff of two texts with three lines of context; empty when they are equal.
pub fn unified(old_label: &str, new_label: &str, old: &str, new: &str) -> String {
    if old == new {
        return String::new();
    }
    TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(old_label, new_label)
        .to_string()
}

/// Paths (`spec.template.spec.containers[0].image`) where `live` does not hold what
/// `desired` sets: the drift check. Fields `desired` leaves out are not looked at, and values
/// are compared loosely (`0.5` and `500m` are one quantity, `80` and `"80"` one port), so a
/// path found here is a suspicion for the server to confirm, not a verdict.
pub fn unmet_fields(desired: &Value, live: &Value) -> Vec<String> {
    let mut paths = Vec::new();
    collect_unmet(desired, Some(live), &mut String::new(), &mut paths);
    paths
}

fn collect_unmet(desired: &Value, live: Option<&Value>, path: &mut String, out: &mut Vec<String>) {
    match (desired, live) {
        (Value::Null, _) => {}
        // Servers drop empty maps and lists; absent and empty agree.
        (Value::Object(map), None) if map.is_empty() => {}
        (Value::Array(items), None) if items.is_empty() => {}
        (Value::Object(wanted), Some(Value::Object(have))) => {
            for (key, value) in wanted {
                let length = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                collect_unmet(value, have.get(key), path, out);
                path.truncate(length);
            }
        }
        (Value::Array(wanted), Some(Value::Array(have))) if wanted.len() == have.len() => {
            for (index, (value, held)) in wanted.iter().zip(have).enumerate() {
                let length = path.len();
                path.push_str(&format!("[{index}]"));
                collect_unmet(value, Some(held), path, out);
                path.truncate(length);
            }
        }
        (wanted, Some(held)) if scalars_agree(wanted, held) => {}
        _ => out.push(if path.is_empty() {
            ".".to_string()
        } else {
            path.clone()
        }),
    }
}

/// Paths where two bodies differ either way (fields only one of them has included).
pub fn differing_fields(old: &Value, new: &Value) -> Vec<String> {
    let mut paths = unmet_fields(new, old);
    for path in unmet_fields(old, new) {
        if !paths.contains(&path) {
            paths.push(path);
        }
    }
    paths.sort();
    paths
}

fn scalars_agree(wanted: &Value, held: &Value) -> bool {
    if wanted == held {
        return true;
    }
    match (wanted, held) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Value::String(text), Value::Number(number))
        | (Value::Number(number), Value::String(text)) => {
            text.parse::<f64>().ok() == number.as_f64()
        }
        (Value::String(a), Value::String(b)) => {
            matches!((quantity(a), quantity(b)), (Some(x), Some(y)) if (x - y).abs() <= x.abs().max(y.abs()) * 1e-12)
        }
        _ => false,
    }
}

/// The value of a Kubernetes quantity (`500m`, `1Gi`, `1e3`), if `text` is one.
fn quantity(text: &str) -> Option<f64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exponent => {
            let power: i32 = exponent.strip_prefix(['e', 'E'])?.parse().ok()?;
            10f64.powi(power)
        }
    };
    Some(number * factor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn normalize_drops_server_fields_and_own_marks() {
        let live = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {
                "name": "a", "uid": "123", "resourceVersion": "9", "generation": 2,
                "creationTimestamp": "2026-01-01T00:00:00Z", "managedFields": [],
                "labels": {"app.kubernetes.io/managed-by": "gitopsd", "gitopsd.io/environment": "s"},
                "annotations": {"gitopsd.io/hash": "x", "team": "web"}
            },
            "data": {"k": "v"},
            "status": {"phase": "x"}
        });
        let expected = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "annotations": {"team": "web"}},
            "data": {"k": "v"}
        });
        assert_eq!(normalize(&live), expected);
        assert_eq!(normalize_owned(live), expected, "both forms agree");
    }

    #[test]
    fn a_foreign_manager_label_is_kept() {
        let body = json!({"metadata": {"labels": {"app.kubernetes.io/managed-by": "helm"}}});
        assert_eq!(normalize(&body), body);
    }

    #[test]
    fn hash_ignores_key_order_but_not_values() {
        let a: Value = serde_json::from_str(r#"{"b": 1, "a": {"y": 2, "x": 3}}"#).expect("json");
        let b: Value = serde_json::from_str(r#"{"a": {"x": 3, "y": 2}, "b": 1}"#).expect("json");
        let c: Value = serde_json::from_str(r#"{"a": {"x": 3, "y": 2}, "b": 2}"#).expect("json");
        assert_eq!(content_hash(&a), content_hash(&b));
        assert_ne!(content_hash(&a), content_hash(&c));
        assert_eq!(content_hash(&a).len(), 64);
    }

    #[test]
    fn yaml_round_trips_awkward_scalars() {
        let value = json!({"s": "true", "n": "1.0", "e": "", "m": "a\nb\n", "i": 3, "b": false});
        let text = to_yaml(&value).expect("renders");
        let back: Value = serde_saphyr::from_str(&text).expect("parses back");
        assert_eq!(back, value);
    }

    #[test]
    fn unified_diff_shows_changed_line() {
        let diff = unified("a", "b", "x: 1\ny: 2\n", "x: 1\ny: 3\n");
        assert!(diff.contains("-y: 2"), "{diff}");
        assert!(diff.contains("+y: 3"), "{diff}");
        assert!(unified("a", "b", "same\n", "same\n").is_empty());
    }

    #[test]
    fn drift_check_reads_only_what_git_sets() {
        let desired = json!({
            "spec": {
                "replicas": 2,
                "template": {"spec": {"containers": [
                    {"name": "web", "image": "web:1", "resources": {"limits": {"cpu": "0.5", "memory": "1024Mi"}},
                     "ports": [{"containerPort": "8080"}], "env": []}
                ]}},
                "selector": {}
            }
        });
        let live = json!({
            "spec": {
                "replicas": 2,
                "revisionHistoryLimit": 10,
                "template": {"spec": {"containers": [
                    {"name": "web", "image": "web:1", "imagePullPolicy": "IfNotPresent",
                     "resources": {"limits": {"cpu": "500m", "memory": "1Gi"}},
                     "ports": [{"containerPort": 8080, "protocol": "TCP"}]}
                ]}}
            }
        });
        assert!(
            unmet_fields(&desired, &live).is_empty(),
            "{:?}",
            unmet_fields(&desired, &live)
        );
        let mut drifted = live.clone();
        drifted["spec"]["replicas"] = json!(5);
        drifted["spec"]["template"]["spec"]["containers"][0]["image"] = json!("web:hotfix");
        assert_eq!(
            unmet_fields(&desired, &drifted),
            ["spec.replicas", "spec.template.spec.containers[0].image"]
        );
        let mut unset = desired.clone();
        unset["spec"]
            .as_object_mut()
            .expect("map")
            .remove("replicas");
        assert!(
            unmet_fields(&unset, &drifted)
                .iter()
                .all(|p| p != "spec.replicas"),
            "a field git leaves out is not drift"
        );
    }

    #[test]
    fn quantities_compare_by_value() {
        assert_eq!(quantity("500m"), Some(0.5));
        assert_eq!(quantity("1Gi"), quantity("1024Mi"));
        assert_eq!(quantity("1e3"), Some(1000.0));
        assert_eq!(quantity("web"), None);
        assert!(!scalars_agree(&json!("1"), &json!("1Ki")));
    }

    #[test]
    fn differing_fields_look_both_ways() {
        let old = json!({"data": {"a": "1", "b": "2"}});
        let new = json!({"data": {"a": "9", "c": "3"}});
        assert_eq!(differing_fields(&old, &new), ["data.a", "data.b", "data.c"]);
    }
}
