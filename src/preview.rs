//! Blue/green plumbing (pure): the Services a blue/green rollout writes — the active Service's
//! selector pinned to the old pods, switched to the new ones, given back as git wrote it, and
//! the preview Service beside it.
//!
//! The preview of a Deployment is its canary (`<name>-canary`, see [`crate::canary`]) at the
//! full replica count: its selector and pod labels add `gitopsd.io/track: canary`, so it never
//! claims the old pods. The old pods are told apart by the `gitopsd.io/track: stable` label
//! gitopsd puts on every stable template it writes (see [`crate::canary::mark_stable_track`]):
//! the active Service's selector gains `track: stable` while the preview runs, and
//! `track: canary` at the switch. Service selectors are equalities only, so a Deployment whose
//! live pods lack the stable label cannot be pinned without restarting them ([`PinProblem`]).

use serde_json::{Map, Value};

use crate::canary::LiveTemplate;
use crate::labels::{LABEL_TRACK, TRACK_CANARY, TRACK_STABLE};
use crate::model::ResourceKey;
use crate::plan::Desired;

/// Suffix of the preview Service's name.
pub const PREVIEW_SUFFIX: &str = "-preview";

/// Why a workload cannot run blue/green.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PinProblem {
    #[error(
        "{key}: blue-green needs a Deployment; a {kind} has no second set of pods to switch to (use the canary strategy, which steps a StatefulSet's partition)"
    )]
    NotADeployment { key: String, kind: String },
    #[error(
        "{key}: its live pods lack the label gitopsd.io/track=stable, so no Service can select only them (one rollout with the canary strategy adds it)"
    )]
    Untracked { key: String },
}

/// Checks that a workload can run blue/green: a Deployment whose live pods carry the stable
/// track label (or none live: nothing to pin).
pub fn can_run_blue_green(
    key: &ResourceKey,
    live: Option<&LiveTemplate>,
) -> Result<(), PinProblem> {
    if key.kind != "Deployment" || key.group != "apps" {
        return Err(PinProblem::NotADeployment {
            key: key.to_string(),
            kind: key.kind.clone(),
        });
    }
    match live {
        Some(live) if !live.tracked => Err(PinProblem::Untracked {
            key: key.to_string(),
        }),
        _ => Ok(()),
    }
}

/// The preview Service's key: `<name>-preview` beside the active one.
pub fn preview_key(key: &ResourceKey) -> ResourceKey {
    ResourceKey {
        name: format!("{}{PREVIEW_SUFFIX}", key.name),
        ..key.clone()
    }
}

fn with_track(value: &mut Value, pointer: &str, track: &str) {
    let Some((parent_pointer, field)) = pointer.rsplit_once('/') else {
        return;
    };
    let Some(parent) = value
        .pointer_mut(parent_pointer)
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let labels = parent
        .entry(field)
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(labels) = labels.as_object_mut() {
        labels.insert(LABEL_TRACK.into(), Value::String(track.into()));
    }
}

fn renamed(body: &Value, name: &str) -> Value {
    let mut body = body.clone();
    if let Some(metadata) = body.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.insert("name".into(), Value::String(name.to_string()));
    }
    body
}

fn selector(service: &Value) -> Option<&Map<String, Value>> {
    service
        .pointer("/spec/selector")
        .and_then(Value::as_object)
        .filter(|selector| !selector.is_empty())
}

/// True when `service` (a Service body) selects the pods of `deployment` (a Deployment body):
/// same namespace, a non-empty selector whose every label the pod template carries.
pub fn selects(service: &Desired, deployment: &Desired) -> bool {
    if service.key.kind != "Service"
        || !service.key.group.is_empty()
        || service.key.namespace != deployment.key.namespace
    {
        return false;
    }
    let Some(selector) = selector(&service.body) else {
        return false;
    };
    let pod_labels = deployment.body.pointer("/spec/template/metadata/labels");
    selector.iter().all(|(name, value)| {
        name != LABEL_TRACK && pod_labels.and_then(|labels| labels.get(name)) == Some(value)
    })
}

/// The Services of a revision that select the pods of any of `deployments`: what a blue/green
/// rollout pins, switches and gives back.
pub fn active_services(desired: &[Desired], deployments: &[&Desired]) -> Vec<Desired> {
    desired
        .iter()
        .filter(|service| deployments.iter().any(|d| selects(service, d)))
        .cloned()
        .collect()
}

/// The active Service with its selector narrowed to one track: `stable` pins it to the old
/// pods, `canary` is the switch. Everything else stays as git wrote it.
pub fn on_track(active: &Desired, track: &str) -> Desired {
    let mut body = active.body.clone();
    with_track(&mut body, "/spec/selector", track);
    Desired::from_body(active.key.clone(), body)
}

/// The active Service pinned to the old pods.
pub fn pinned(active: &Desired) -> Desired {
    on_track(active, TRACK_STABLE)
}

/// The active Service switched to the preview (canary) pods.
pub fn switched(active: &Desired) -> Desired {
    on_track(active, TRACK_CANARY)
}

/// The default preview Service: `<active>-preview`, made from the active one, selecting only
/// the preview (canary) pods. Fields the server assigns per Service (cluster IPs, node ports, a load
/// balancer's address) are left out.
pub fn preview_service(active: &Desired) -> Desired {
    let key = preview_key(&active.key);
    let mut body = renamed(&active.body, &key.name);
    if let Some(spec) = body.get_mut("spec").and_then(Value::as_object_mut) {
        for assigned in [
            "clusterIP",
            "clusterIPs",
            "loadBalancerIP",
            "healthCheckNodePort",
        ] {
            spec.remove(assigned);
        }
        if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
            for port in ports.iter_mut().filter_map(Value::as_object_mut) {
                port.remove("nodePort");
            }
        }
    }
    with_track(&mut body, "/spec/selector", TRACK_CANARY);
    Desired::from_body(key, body)
}

#[cfg(test)]
#[path = "preview_tests.rs"]
mod tests;
