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

use std::collections::BTreeSet;

use crate::canary::{CanaryUnit, LiveTemplate, RolloutSpec};
use crate::labels::{ANNOTATION_STRATEGY, LABEL_TRACK, TRACK_CANARY, TRACK_STABLE};
use crate::model::ResourceKey;
use crate::plan::Desired;
use crate::rollout::Strategy;

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

/// The Services one blue/green rollout writes: the active ones it pins, switches and gives
/// back, and the preview Services beside them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PreviewServices {
    /// The Services of the revision selecting a previewed Deployment's pods (as git wants
    /// them), but for the configured preview Service.
    pub active: Vec<Desired>,
    /// The configured preview Services (`preview_service`) of the revision that select a
    /// previewed Deployment's pods, as git wants them: during the rollout they select only
    /// the new pods; at the end they get git's selector back.
    pub named: Vec<Desired>,
    /// The `<service>-preview` Services made for the active Services no named preview
    /// Service stands beside: created with the preview, deleted with it.
    pub made: Vec<Desired>,
}

/// A `preview_service` the revision has no Service of.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "rollout.preview_service is {name:?}, but the revision has no Service of that name (declare it, or leave the key out for a made <service>-preview)"
)]
pub struct NoPreviewService {
    pub name: String,
}

impl PreviewServices {
    /// Sorts the revision's Services for a blue/green rollout of `deployments`. A Service named
    /// `preview_service` that selects a previewed Deployment's pods is its preview Service
    /// (selecting only the new pods until the end); every other Service selecting them is
    /// active, and gets a made `<name>-preview` unless each Deployment it selects has a named
    /// one in its namespace.
    pub fn of(
        desired: &[Desired],
        deployments: &[&Desired],
        preview_service: Option<&str>,
    ) -> Result<Self, NoPreviewService> {
        let named_in_revision = |service: &Desired| {
            service.key.kind == "Service"
                && service.key.group.is_empty()
                && Some(service.key.name.as_str()) == preview_service
        };
        if let Some(name) = preview_service
            && !deployments.is_empty()
            && !desired.iter().any(named_in_revision)
        {
            return Err(NoPreviewService {
                name: name.to_string(),
            });
        }
        let selecting = active_services(desired, deployments);
        let (named, active): (Vec<Desired>, Vec<Desired>) =
            selecting.into_iter().partition(|s| named_in_revision(s));
        let covered = |deployment: &&Desired| named.iter().any(|n| selects(n, deployment));
        let made = active
            .iter()
            .filter(|service| {
                !deployments
                    .iter()
                    .filter(|d| selects(service, d))
                    .all(covered)
            })
            .map(self::preview_service)
            .collect();
        Ok(Self {
            active,
            named,
            made,
        })
    }

    /// Every preview Service as written with the preview: selecting only the new pods.
    pub fn previews(&self) -> Vec<Desired> {
        self.named
            .iter()
            .map(switched)
            .chain(self.made.iter().cloned())
            .collect()
    }

    /// Every Service the rollout writes before its end: what the revision's other changes
    /// must leave to it.
    pub fn keys(&self) -> Vec<&ResourceKey> {
        self.active
            .iter()
            .chain(&self.named)
            .chain(&self.made)
            .map(|service| &service.key)
            .collect()
    }

    /// The made preview Services, which go with the preview.
    pub fn made_keys(&self) -> Vec<ResourceKey> {
        self.made
            .iter()
            .map(|service| service.key.clone())
            .collect()
    }

    /// The Services as git wants them: what the end of the rollout gives back.
    pub fn as_in_git(&self) -> Vec<Desired> {
        self.active.iter().chain(&self.named).cloned().collect()
    }
}

/// The preview Deployments (and config copies) at most `preview_replicas` pods each (none:
/// the full count they come with); true when one of them was cut short, so it must be scaled
/// up before the switch.
pub fn sized(previews: Vec<Desired>, preview_replicas: Option<u32>) -> (Vec<Desired>, bool) {
    let mut short = false;
    let sized = previews
        .into_iter()
        .map(|desired| {
            let Some(limit) = preview_replicas else {
                return desired;
            };
            let full = desired
                .body
                .pointer("/spec/replicas")
                .and_then(Value::as_u64);
            if desired.key.kind != "Deployment" || full.is_none_or(|full| full <= u64::from(limit))
            {
                return desired;
            }
            short = true;
            let mut body = desired.body;
            body["spec"]["replicas"] = Value::from(limit);
            Desired::from_body(desired.key, body)
        })
        .collect();
    (sized, short)
}

/// The cluster DNS name of a Service: `<name>.<namespace>.svc`, what `{preview}` in an HTTP
/// check's URL becomes.
pub fn service_host(key: &ResourceKey) -> String {
    format!(
        "{}.{}.svc",
        key.name,
        key.namespace.as_deref().unwrap_or("default")
    )
}

/// The host `{preview}` names in a canary rollout: the first Service (by key) of the revision that
/// selects a changed Deployment's pods (it sends traffic to canary and stable pods alike).
pub fn canary_host(desired: &[Desired], deployments: &[&Desired]) -> Option<String> {
    active_services(desired, deployments)
        .iter()
        .map(|service| &service.key)
        .min()
        .map(service_host)
}

impl PreviewServices {
    /// The host `{preview}` names while the preview Services exist: the first of them (a named
    /// one before a made one).
    pub fn preview_host(&self) -> Option<String> {
        let first = |services: &[Desired]| services.iter().map(|s| &s.key).min().map(service_host);
        first(&self.named).or_else(|| first(&self.made))
    }

    /// The host `{preview}` names once they are gone: the first active Service, which then
    /// selects only the new pods.
    pub fn active_host(&self) -> Option<String> {
        self.active.iter().map(|s| &s.key).min().map(service_host)
    }
}

/// The `gitopsd.io/strategy` annotation of a body, as written.
fn strategy_annotation(body: &Value) -> Option<&str> {
    body.pointer("/metadata/annotations")
        .and_then(|annotations| annotations.get(ANNOTATION_STRATEGY))
        .and_then(Value::as_str)
}

/// The strategy a workload asks for: its `gitopsd.io/strategy` annotation, else the
/// environment's `default` (an annotation [`strategy_problem`] refuses never gets here).
pub fn strategy_of(body: &Value, default: Strategy) -> Strategy {
    strategy_annotation(body)
        .and_then(Strategy::parse)
        .unwrap_or(default)
}

/// What is wrong with the strategy an object of the revision asks for, if anything: an
/// annotation value that is no strategy, the annotation on what is not a workload, or a
/// StatefulSet or DaemonSet asking for blue-green (by its annotation or the environment's
/// `default`), which has no second set of pods to switch to.
pub fn strategy_problem(key: &ResourceKey, body: &Value, default: Strategy) -> Option<String> {
    let annotation = strategy_annotation(body);
    let workload = key.group == "apps"
        && matches!(
            key.kind.as_str(),
            "Deployment" | "StatefulSet" | "DaemonSet"
        );
    if let Some(value) = annotation {
        if Strategy::parse(value).is_none() {
            return Some(format!(
                "annotation {ANNOTATION_STRATEGY} is {value:?}; expected \"canary\" or \"blue-green\""
            ));
        }
        if !workload {
            return Some(format!(
                "annotation {ANNOTATION_STRATEGY} applies to Deployments, StatefulSets and DaemonSets, not a {}",
                key.kind
            ));
        }
    }
    if !workload || key.kind == "Deployment" || strategy_of(body, default) != Strategy::BlueGreen {
        return None;
    }
    let asked = if annotation.is_some() {
        format!("its annotation {ANNOTATION_STRATEGY}")
    } else {
        "the environment's rollout.strategy".to_string()
    };
    let partition = if key.kind == "StatefulSet" {
        ", which steps a StatefulSet's partition"
    } else {
        ""
    };
    Some(format!(
        "a {} cannot run blue-green (asked by {asked}): it has no second set of pods to switch to; use the canary strategy{partition} (annotate it {ANNOTATION_STRATEGY}: canary)",
        key.kind
    ))
}

/// Why one revision cannot roll its workloads out with both strategies at once: a Service
/// or a changed ConfigMap/Secret shared by a canary workload and a blue/green Deployment
/// (the canary's weights and the blue/green switch would each need it their own way).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the revision changes workloads of both strategies, blue-green ({}) and canary ({}), that share {}; a Service or changed config cannot follow both a canary's weights and a blue-green switch: change them in separate commits, or give them the same gitopsd.io/strategy",
    blue_green.join(", "),
    canary.join(", "),
    shared.join(", ")
)]
pub struct MixedStrategies {
    pub blue_green: Vec<String>,
    pub canary: Vec<String>,
    /// The Services and configs both kinds use.
    pub shared: Vec<String>,
}

/// A revision's rollout split by strategy: the Deployments previewed and switched (with the
/// changes that go with the preview: everything with no canary meaning, the configs they
/// use, deletions), and the workloads stepped as canaries beside them (with their configs).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Strategies {
    pub blue_green: RolloutSpec,
    pub canary: RolloutSpec,
}

impl Strategies {
    /// Every changed Deployment of `spec` previewed, nothing stepped beside them.
    pub fn all_blue_green(spec: &RolloutSpec) -> Self {
        Self {
            blue_green: spec.clone(),
            canary: RolloutSpec::default(),
        }
    }

    /// Blue/green runs: some changed Deployment asks for it.
    pub fn blue_green(&self) -> bool {
        !self.blue_green.canaries.is_empty()
    }

    /// Both strategies run in one rollout.
    pub fn mixed(&self) -> bool {
        self.blue_green() && self.canary.has_canaries()
    }
}

/// Splits a revision's rollout by the strategy each changed workload asks for (its
/// `gitopsd.io/strategy` annotation, else `default`; StatefulSets step their partition).
/// Without a blue/green Deployment everything is canary, as `spec` stands. Refuses a mix
/// whose two kinds share a Service of `desired` or a changed config.
pub fn by_strategy(
    spec: &RolloutSpec,
    desired: &[Desired],
    default: Strategy,
) -> Result<Strategies, MixedStrategies> {
    let (previewed, stepped): (Vec<CanaryUnit>, Vec<CanaryUnit>) = spec
        .canaries
        .iter()
        .cloned()
        .partition(|unit| strategy_of(&unit.desired.body, default) == Strategy::BlueGreen);
    if previewed.is_empty() {
        return Ok(Strategies {
            blue_green: RolloutSpec::default(),
            canary: spec.clone(),
        });
    }
    let configs = |units: &[CanaryUnit]| -> BTreeSet<ResourceKey> {
        units.iter().flat_map(|unit| unit.configs.clone()).collect()
    };
    let held = |keys: &BTreeSet<ResourceKey>| -> Vec<Desired> {
        spec.held
            .iter()
            .filter(|config| keys.contains(&config.key))
            .cloned()
            .collect()
    };
    let (bg_configs, canary_configs) = (configs(&previewed), configs(&stepped));
    let canary_workloads: Vec<&Desired> = stepped
        .iter()
        .map(|unit| &unit.desired)
        .chain(spec.partitioned.iter().map(|unit| &unit.desired))
        .collect();
    let bg_workloads: Vec<&Desired> = previewed.iter().map(|unit| &unit.desired).collect();
    let mut shared: Vec<String> = bg_configs
        .intersection(&canary_configs)
        .map(ToString::to_string)
        .collect();
    shared.extend(
        active_services(desired, &bg_workloads)
            .iter()
            .filter(|service| canary_workloads.iter().any(|w| selects(service, w)))
            .map(|service| service.key.to_string()),
    );
    if !shared.is_empty() {
        let names = |workloads: &[&Desired]| workloads.iter().map(|d| d.key.to_string()).collect();
        return Err(MixedStrategies {
            blue_green: names(&bg_workloads),
            canary: names(&canary_workloads),
            shared,
        });
    }
    Ok(Strategies {
        blue_green: RolloutSpec {
            immediate: spec.immediate.clone(),
            held: held(&bg_configs),
            canaries: previewed,
            partitioned: Vec::new(),
            deferred: spec.deferred.clone(),
        },
        canary: RolloutSpec {
            immediate: Vec::new(),
            held: held(&canary_configs),
            canaries: stepped,
            partitioned: spec.partitioned.clone(),
            deferred: Vec::new(),
        },
    })
}

#[cfg(test)]
#[path = "preview_tests.rs"]
mod tests;
