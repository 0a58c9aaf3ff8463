//! Readiness that needs more than the object: the pods of a workload's newest template, and
//! a CRD becoming Established before its custom resources are applied.

use std::time::Duration;

use kube::api::{Api, DynamicObject, ListParams};
use serde_json::Value;

use super::KubernetesTarget;
use super::answers::{answer_error, object_error};
use super::live::POD_SYNC_WAIT;
use crate::backend::TargetError;
use crate::model::ResourceKey;
use crate::readiness::{self, Verdict, readiness};

/// How long an applied CRD may take to become Established.
pub(super) const CRD_ESTABLISHED: Duration = Duration::from_secs(60);

impl KubernetesTarget {
    /// Waits until an applied CRD is Established, so its custom resources can follow.
    pub(super) async fn await_established(
        &self,
        key: &ResourceKey,
        api: &Api<DynamicObject>,
    ) -> Result<(), TargetError> {
        let deadline = tokio::time::Instant::now() + CRD_ESTABLISHED;
        loop {
            let live = self
                .call(|| api.get_opt(&key.name))
                .await
                .map_err(|failure| object_error("apply", key, failure.message))?;
            let body = live
                .map(|live| serde_json::to_value(&live))
                .transpose()
                .map_err(|e| object_error("apply", key, e.to_string()))?;
            let state = match &body {
                Some(body) => readiness(&key.group, &key.kind, body),
                None => Verdict::Waiting("not found after apply".into()),
            };
            match state {
                Verdict::Ready => return Ok(()),
                Verdict::Waiting(reason) if tokio::time::Instant::now() >= deadline => {
                    return Err(object_error(
                        "apply",
                        key,
                        format!(
                            "not Established within {}s: {reason}",
                            CRD_ESTABLISHED.as_secs()
                        ),
                    ));
                }
                Verdict::Waiting(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }

    /// The pods `selector` picks in `namespace` from the daemon's watch of them, started on
    /// first need and held while the rollout waits; `None` where there is no watch cache or
    /// the watch has not listed yet (the caller LISTs).
    async fn watched_pods(&self, namespace: &str, selector: &str) -> Option<Vec<Value>> {
        let watch = self.watched.as_ref()?.pods_of(namespace, selector);
        if !watch.synced_within(POD_SYNC_WAIT).await {
            return None;
        }
        watch.all().ok()
    }

    /// The first broken pod running a workload's newest template (Deployments, StatefulSets
    /// and DaemonSets): its pods by selector (from the watch cache in the daemon, else one
    /// LIST), and when one is broken, for a Deployment one LIST of its ReplicaSets (for a
    /// DaemonSet, of its ControllerRevisions) to tell the new template's pods from the old.
    pub(super) async fn broken_pods(
        &self,
        key: &ResourceKey,
        workload: &Value,
        max_restarts: u32,
    ) -> Result<Option<readiness::Stuck>, TargetError> {
        if key.group != "apps"
            || !matches!(
                key.kind.as_str(),
                "Deployment" | "StatefulSet" | "DaemonSet"
            )
        {
            return Ok(None);
        }
        let Some(selector) = readiness::selector_text(workload) else {
            return Ok(None);
        };
        let namespace = key.namespace.as_deref().unwrap_or("default");
        let params = ListParams::default().labels(&selector);
        let pods = match self.watched_pods(namespace, &selector).await {
            Some(pods) => pods,
            None => {
                let pods: Api<k8s_openapi::api::core::v1::Pod> =
                    Api::namespaced(self.client.clone(), namespace);
                let listed = self
                    .call(|| pods.list(&params))
                    .await
                    .map_err(|failure| answer_error("read pods of", key, failure))?;
                listed
                    .items
                    .iter()
                    .filter_map(|pod| serde_json::to_value(pod).ok())
                    .collect()
            }
        };
        let broken: Vec<(Value, readiness::Stuck)> = pods
            .into_iter()
            .filter_map(|pod| readiness::broken_pod(&pod, max_restarts).map(|s| (pod, s)))
            .collect();
        if broken.is_empty() {
            return Ok(None);
        }
        let owned = match key.kind.as_str() {
            "Deployment" => {
                let sets: Api<k8s_openapi::api::apps::v1::ReplicaSet> =
                    Api::namespaced(self.client.clone(), namespace);
                self.call(|| sets.list(&params))
                    .await
                    .map_err(|failure| answer_error("read replica sets of", key, failure))?
                    .items
                    .iter()
                    .filter_map(|set| serde_json::to_value(set).ok())
                    .collect()
            }
            "DaemonSet" => {
                let revisions: Api<k8s_openapi::api::apps::v1::ControllerRevision> =
                    Api::namespaced(self.client.clone(), namespace);
                self.call(|| revisions.list(&params))
                    .await
                    .map_err(|failure| answer_error("read revisions of", key, failure))?
                    .items
                    .iter()
                    .filter_map(|revision| serde_json::to_value(revision).ok())
                    .collect()
            }
            _ => Vec::new(),
        };
        // A pod of the old template that breaks is not this revision's doing.
        let Some((label, value)) = readiness::new_template_label(&key.kind, workload, &owned)
        else {
            return Ok(None);
        };
        Ok(broken
            .into_iter()
            .find(|(pod, _)| readiness::has_label(pod, label, &value))
            .map(|(_, stuck)| stuck))
    }
}
