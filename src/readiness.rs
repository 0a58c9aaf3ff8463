//! Readiness of live Kubernetes objects by kind, after the kstatus rules (pure): a verdict from
//! an object's body or its pods, tested on inline YAML.

use serde_json::Value;

/// What an object's status says about it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Ready, or a kind with nothing to wait for.
    Ready,
    /// Not ready yet; what it is waiting for.
    Waiting(String),
}

impl Verdict {
    pub fn is_ready(&self) -> bool {
        matches!(self, Verdict::Ready)
    }

    fn waiting(reason: impl Into<String>) -> Self {
        Verdict::Waiting(reason.into())
    }

    /// The first of `checks` that is not met, in order: `(met, reason)` pairs.
    fn first_unmet(checks: impl IntoIterator<Item = (bool, String)>) -> Self {
        checks
            .into_iter()
            .find(|(met, _)| !met)
            .map_or(Verdict::Ready, |(_, reason)| Verdict::Waiting(reason))
    }
}

/// Whether the object is ready, else what it is waiting for.
pub fn readiness(group: &str, kind: &str, body: &Value) -> Verdict {
    let status = Status(body);
    match (group, kind) {
        ("apps", "Deployment") => status.caught_up().and(|| deployment(status)),
        ("apps", "StatefulSet") => status.caught_up().and(|| stateful_set(status)),
        ("apps", "DaemonSet") => status.caught_up().and(|| daemon_set(status)),
        ("batch", "Job") => job(body),
        ("", "PersistentVolumeClaim") => {
            match body.pointer("/status/phase").and_then(Value::as_str) {
                Some("Bound") => Verdict::Ready,
                phase => Verdict::Waiting(format!(
                    "phase is {}, not Bound",
                    phase.unwrap_or("unknown")
                )),
            }
        }
        ("", "Service") => service(body),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            if condition(body, "Established") {
                Verdict::Ready
            } else {
                Verdict::waiting("not Established yet")
            }
        }
        _ => Verdict::Ready,
    }
}

impl Verdict {
    /// This verdict if waiting, else the next check's.
    fn and(self, next: impl FnOnce() -> Verdict) -> Verdict {
        match self {
            Verdict::Ready => next(),
            waiting => waiting,
        }
    }
}

/// An object's integer fields, read by JSON pointer.
#[derive(Clone, Copy)]
struct Status<'a>(&'a Value);

impl Status<'_> {
    fn int(&self, pointer: &str) -> Option<i64> {
        self.0.pointer(pointer).and_then(Value::as_i64)
    }

    fn str(&self, pointer: &str) -> Option<&str> {
        self.0.pointer(pointer).and_then(Value::as_str)
    }

    /// `spec.replicas`, 1 when unset.
    fn desired(&self) -> i64 {
        self.int("/spec/replicas").unwrap_or(1)
    }

    /// A controller that has not seen the latest spec says nothing about it yet.
    fn caught_up(&self) -> Verdict {
        match (
            self.int("/metadata/generation"),
            self.int("/status/observedGeneration"),
        ) {
            (Some(generation), Some(observed)) if observed < generation => Verdict::Waiting(
                format!("status is for generation {observed}, the spec is at {generation}"),
            ),
            (Some(_), None) => Verdict::waiting("the controller has not observed it yet"),
            _ => Verdict::Ready,
        }
    }
}

fn deployment(status: Status<'_>) -> Verdict {
    let desired = status.desired();
    let updated = status.int("/status/updatedReplicas").unwrap_or(0);
    let available = status.int("/status/availableReplicas").unwrap_or(0);
    let total = status.int("/status/replicas").unwrap_or(0);
    Verdict::first_unmet([
        (
            updated >= desired,
            format!("{updated} of {desired} replicas updated"),
        ),
        (
            total <= updated,
            format!("{} old replicas still running", total - updated),
        ),
        (
            available >= desired,
            format!("{available} of {desired} replicas available"),
        ),
    ])
}

fn stateful_set(status: Status<'_>) -> Verdict {
    let desired = status.desired();
    let ready = status.int("/status/readyReplicas").unwrap_or(0);
    let updated = status.int("/status/updatedReplicas").unwrap_or(0);
    // Held at a partition (a canary step): only the ordinals at or above it update.
    let partition = status
        .int("/spec/updateStrategy/rollingUpdate/partition")
        .unwrap_or(0);
    if partition > 0 {
        let wanted = (desired - partition).max(0);
        return Verdict::first_unmet([
            (
                ready >= desired,
                format!("{ready} of {desired} replicas ready"),
            ),
            (
                updated >= wanted,
                format!("{updated} of {wanted} replicas above partition {partition} updated"),
            ),
        ]);
    }
    Verdict::first_unmet([
        (
            ready >= desired,
            format!("{ready} of {desired} replicas ready"),
        ),
        (
            updated >= desired,
            format!("{updated} of {desired} replicas updated"),
        ),
        (
            status.str("/status/currentRevision") == status.str("/status/updateRevision"),
            "the rolling update is not finished".into(),
        ),
    ])
}

fn daemon_set(status: Status<'_>) -> Verdict {
    let scheduled = status.int("/status/desiredNumberScheduled").unwrap_or(0);
    let updated = status.int("/status/updatedNumberScheduled").unwrap_or(0);
    let available = status.int("/status/numberAvailable").unwrap_or(0);
    Verdict::first_unmet([
        (
            updated >= scheduled,
            format!("{updated} of {scheduled} pods updated"),
        ),
        (
            available >= scheduled,
            format!("{available} of {scheduled} pods available"),
        ),
    ])
}

fn job(body: &Value) -> Verdict {
    if condition(body, "Failed") {
        Verdict::waiting("the job failed")
    } else if condition(body, "Complete") {
        Verdict::Ready
    } else {
        Verdict::waiting("the job has not completed")
    }
}

fn service(body: &Value) -> Verdict {
    let is_load_balancer =
        body.pointer("/spec/type").and_then(Value::as_str) == Some("LoadBalancer");
    let has_ingress = body
        .pointer("/status/loadBalancer/ingress")
        .and_then(Value::as_array)
        .is_some_and(|ingress| !ingress.is_empty());
    if is_load_balancer && !has_ingress {
        Verdict::waiting("the load balancer has no ingress yet")
    } else {
        Verdict::Ready
    }
}

/// Why an object will not become ready by waiting: a short cause (the Kubernetes reason, for
/// metrics) and what was seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stuck {
    pub cause: String,
    pub detail: String,
}

/// Container waiting reasons that mean the pod is broken, not slow.
const BROKEN_WAITING: [&str; 5] = [
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "CreateContainerConfigError",
    "InvalidImageName",
];

/// An object that has given up, judged from its own status: a Deployment past its progress
/// deadline (for its current spec) or a failed Job.
pub fn stuck(group: &str, kind: &str, body: &Value) -> Option<Stuck> {
    match (group, kind) {
        ("apps", "Deployment") => {
            let int = |pointer: &str| body.pointer(pointer).and_then(Value::as_i64);
            // A condition left from an earlier spec says nothing about this one.
            if int("/status/observedGeneration") < int("/metadata/generation") {
                return None;
            }
            let progressing = conditions(body)
                .find(|c| c.get("type").and_then(Value::as_str) == Some("Progressing"))?;
            let field = |name: &str| progressing.get(name).and_then(Value::as_str);
            (field("status") == Some("False")
                && field("reason") == Some("ProgressDeadlineExceeded"))
            .then(|| Stuck {
                cause: "ProgressDeadlineExceeded".into(),
                detail: format!(
                    "ProgressDeadlineExceeded: {}",
                    field("message").unwrap_or("no progress within progressDeadlineSeconds")
                ),
            })
        }
        ("batch", "Job") => condition(body, "Failed").then(|| {
            let message = conditions(body)
                .find(|c| c.get("type").and_then(Value::as_str) == Some("Failed"))
                .and_then(|c| c.get("message").and_then(Value::as_str))
                .unwrap_or("the job failed");
            Stuck {
                cause: "JobFailed".into(),
                detail: format!("Job failed: {message}"),
            }
        }),
        _ => None,
    }
}

/// A pod that is broken: a container waiting for a reason no wait cures, or restarted more
/// than `max_restarts` times.
pub fn broken_pod(pod: &Value, max_restarts: u32) -> Option<Stuck> {
    let name = pod
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("?");
    let statuses = ["/status/initContainerStatuses", "/status/containerStatuses"]
        .iter()
        .filter_map(|pointer| pod.pointer(pointer).and_then(Value::as_array))
        .flatten();
    for status in statuses {
        let container = status.get("name").and_then(Value::as_str).unwrap_or("?");
        if let Some(reason) = status
            .pointer("/state/waiting/reason")
            .and_then(Value::as_str)
            .filter(|reason| BROKEN_WAITING.contains(reason))
        {
            let message = status
                .pointer("/state/waiting/message")
                .and_then(Value::as_str)
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            return Some(Stuck {
                cause: reason.to_string(),
                detail: format!(
                    "pod {name}: container {container} is waiting in {reason}{message}"
                ),
            });
        }
        let restarts = status
            .get("restartCount")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        if restarts > u64::from(max_restarts) {
            return Some(Stuck {
                cause: "Restarts".into(),
                detail: format!(
                    "pod {name}: container {container} restarted {restarts} times (max_restarts = {max_restarts})"
                ),
            });
        }
    }
    None
}

/// The label selector text (`a=b,c in (d,e)`) of a workload's `spec.selector`, or `None` when
/// it has none (a selector that matches everything is never used to find pods).
pub fn selector_text(body: &Value) -> Option<String> {
    let selector = body.pointer("/spec/selector")?;
    let mut terms: Vec<String> = selector
        .get("matchLabels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(key, value)| Some(format!("{key}={}", value.as_str()?)))
        .collect();
    for expression in selector
        .get("matchExpressions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let key = expression.get("key").and_then(Value::as_str)?;
        let values: Vec<&str> = expression
            .get("values")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        terms.push(match expression.get("operator").and_then(Value::as_str)? {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.to_string(),
            "DoesNotExist" => format!("!{key}"),
            _ => return None,
        });
    }
    (!terms.is_empty()).then(|| terms.join(","))
}

/// Which pods run a workload's newest template: for a StatefulSet, its `updateRevision`; for
/// a Deployment, the `pod-template-hash` of its newest ReplicaSet, and for a DaemonSet the
/// `controller-revision-hash` of its newest ControllerRevision, among `revisions` (what the
/// workload owns of those).
pub fn new_template_label(
    kind: &str,
    workload: &Value,
    revisions: &[Value],
) -> Option<(&'static str, String)> {
    let uid = workload.pointer("/metadata/uid").and_then(Value::as_str);
    let newest = |number: &dyn Fn(&Value) -> u64| {
        revisions
            .iter()
            .filter(|owned| {
                owned
                    .pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .is_some_and(|owners| {
                        owners
                            .iter()
                            .any(|o| uid.is_some() && o.get("uid").and_then(Value::as_str) == uid)
                    })
            })
            .max_by_key(|owned| number(owned))
    };
    match kind {
        "StatefulSet" => workload
            .pointer("/status/updateRevision")
            .and_then(Value::as_str)
            .map(|revision| ("controller-revision-hash", revision.to_string())),
        "Deployment" => newest(&|rs| {
            rs.pointer("/metadata/annotations/deployment.kubernetes.io~1revision")
                .and_then(Value::as_str)
                .and_then(|r| r.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .and_then(|rs| {
            rs.pointer("/metadata/labels/pod-template-hash")
                .and_then(Value::as_str)
        })
        .map(|hash| ("pod-template-hash", hash.to_string())),
        "DaemonSet" => newest(&|cr| cr.get("revision").and_then(Value::as_u64).unwrap_or(0))
            .and_then(|cr| {
                cr.pointer("/metadata/labels/controller-revision-hash")
                    .and_then(Value::as_str)
            })
            .map(|hash| ("controller-revision-hash", hash.to_string())),
        _ => None,
    }
}

/// Whether a pod carries `label` = `value`.
pub fn has_label(pod: &Value, label: &str, value: &str) -> bool {
    pod.pointer("/metadata/labels")
        .and_then(|labels| labels.get(label))
        .and_then(Value::as_str)
        == Some(value)
}

fn conditions(body: &Value) -> impl Iterator<Item = &Value> {
    body.pointer("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// True when `status.conditions` holds `kind` with status "True".
fn condition(body: &Value, kind: &str) -> bool {
    body.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|conditions| {
            conditions.iter().any(|c| {
                c.get("type").and_then(Value::as_str) == Some(kind)
                    && c.get("status").and_then(Value::as_str) == Some("True")
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Value {
        serde_saphyr::from_str(text).expect("test YAML is valid")
    }

    #[test]
    fn deployment_needs_observed_generation_and_replicas() {
        let fresh = yaml(
            "metadata: {generation: 2}\nspec: {replicas: 3}\nstatus: {observedGeneration: 1, replicas: 3, updatedReplicas: 3, availableReplicas: 3}\n",
        );
        assert!(
            !readiness("apps", "Deployment", &fresh).is_ready(),
            "status is stale"
        );
        let rolling = yaml(
            "metadata: {generation: 2}\nspec: {replicas: 3}\nstatus: {observedGeneration: 2, replicas: 4, updatedReplicas: 3, availableReplicas: 3}\n",
        );
        assert_eq!(
            readiness("apps", "Deployment", &rolling),
            Verdict::Waiting("1 old replicas still running".into())
        );
        let done = yaml(
            "metadata: {generation: 2}\nspec: {replicas: 3}\nstatus: {observedGeneration: 2, replicas: 3, updatedReplicas: 3, availableReplicas: 3}\n",
        );
        assert_eq!(readiness("apps", "Deployment", &done), Verdict::Ready);
    }

    #[test]
    fn statefulset_and_daemonset() {
        let sts = yaml(
            "metadata: {generation: 1}\nspec: {replicas: 2}\nstatus: {observedGeneration: 1, readyReplicas: 2, updatedReplicas: 2, currentRevision: a, updateRevision: b}\n",
        );
        assert!(!readiness("apps", "StatefulSet", &sts).is_ready());
        let held = |updated: u8| {
            yaml(&format!(
                "metadata: {{generation: 2}}\nspec: {{replicas: 4, updateStrategy: {{rollingUpdate: {{partition: 2}}}}}}\nstatus: {{observedGeneration: 2, readyReplicas: 4, updatedReplicas: {updated}, currentRevision: a, updateRevision: b}}\n"
            ))
        };
        assert!(
            !readiness("apps", "StatefulSet", &held(1)).is_ready(),
            "ordinal 2 is not updated yet"
        );
        assert_eq!(
            readiness("apps", "StatefulSet", &held(2)),
            Verdict::Ready,
            "at a partition, only the ordinals above it update"
        );
        let ds = yaml(
            "metadata: {generation: 1}\nstatus: {observedGeneration: 1, desiredNumberScheduled: 3, updatedNumberScheduled: 3, numberAvailable: 3}\n",
        );
        assert_eq!(readiness("apps", "DaemonSet", &ds), Verdict::Ready);
    }

    #[test]
    fn jobs_pvcs_services_and_crds() {
        let complete = yaml("status: {conditions: [{type: Complete, status: 'True'}]}\n");
        let failed = yaml("status: {conditions: [{type: Failed, status: 'True'}]}\n");
        assert_eq!(readiness("batch", "Job", &complete), Verdict::Ready);
        assert_eq!(
            readiness("batch", "Job", &failed),
            Verdict::Waiting("the job failed".into())
        );
        assert!(
            !readiness(
                "",
                "PersistentVolumeClaim",
                &yaml("status: {phase: Pending}\n")
            )
            .is_ready()
        );
        assert_eq!(
            readiness(
                "",
                "PersistentVolumeClaim",
                &yaml("status: {phase: Bound}\n")
            ),
            Verdict::Ready
        );
        let lb = yaml("spec: {type: LoadBalancer}\nstatus: {loadBalancer: {}}\n");
        assert!(!readiness("", "Service", &lb).is_ready());
        assert_eq!(
            readiness("", "Service", &yaml("spec: {type: ClusterIP}\n")),
            Verdict::Ready
        );
        let crd = yaml("status: {conditions: [{type: Established, status: 'True'}]}\n");
        assert_eq!(
            readiness("apiextensions.k8s.io", "CustomResourceDefinition", &crd),
            Verdict::Ready
        );
        assert_eq!(
            readiness("", "ConfigMap", &yaml("data: {}\n")),
            Verdict::Ready
        );
    }

    #[test]
    fn a_deployment_past_its_progress_deadline_is_stuck_only_for_its_current_spec() {
        let text = |observed: u8| {
            format!(
                "metadata: {{generation: 3}}\nstatus:\n  observedGeneration: {observed}\n  conditions:\n  - {{type: Progressing, status: 'False', reason: ProgressDeadlineExceeded, message: 'ReplicaSet \"web-1\" has timed out progressing.'}}\n"
            )
        };
        let stuck_now = stuck("apps", "Deployment", &yaml(&text(3))).expect("past the deadline");
        assert_eq!(stuck_now.cause, "ProgressDeadlineExceeded");
        assert!(
            stuck_now.detail.contains("timed out progressing"),
            "{stuck_now:?}"
        );
        assert_eq!(
            stuck("apps", "Deployment", &yaml(&text(2))),
            None,
            "stale condition"
        );
        let progressing = yaml(
            "metadata: {generation: 1}\nstatus: {observedGeneration: 1, conditions: [{type: Progressing, status: 'True', reason: ReplicaSetUpdated}]}\n",
        );
        assert_eq!(stuck("apps", "Deployment", &progressing), None);
        let job = yaml(
            "status: {conditions: [{type: Failed, status: 'True', message: BackoffLimitExceeded}]}\n",
        );
        assert_eq!(
            stuck("batch", "Job", &job).map(|s| s.cause),
            Some("JobFailed".into())
        );
    }

    #[test]
    fn broken_pods_are_named_with_their_reason() {
        let pod = |state: &str, restarts: u32| {
            yaml(&format!(
                "metadata: {{name: web-canary-x}}\nstatus:\n  containerStatuses:\n  - {{name: web, restartCount: {restarts}, state: {state}}}\n"
            ))
        };
        let crash = broken_pod(
            &pod(
                "{waiting: {reason: CrashLoopBackOff, message: back-off 10s}}",
                1,
            ),
            2,
        )
        .expect("crash loop");
        assert_eq!(crash.cause, "CrashLoopBackOff");
        assert!(
            crash.detail.contains("pod web-canary-x: container web"),
            "{crash:?}"
        );
        let pull = broken_pod(&pod("{waiting: {reason: ImagePullBackOff}}", 0), 2).expect("pull");
        assert_eq!(pull.cause, "ImagePullBackOff");
        assert_eq!(
            broken_pod(&pod("{waiting: {reason: ContainerCreating}}", 0), 2),
            None
        );
        assert_eq!(
            broken_pod(&pod("{running: {}}", 2), 2),
            None,
            "at the limit"
        );
        assert_eq!(
            broken_pod(&pod("{running: {}}", 3), 2).map(|s| s.cause),
            Some("Restarts".into())
        );
    }

    #[test]
    fn selectors_become_label_selector_text() {
        let body = yaml(
            "spec:\n  selector:\n    matchLabels: {app: web, gitopsd.io/track: canary}\n    matchExpressions:\n    - {key: tier, operator: In, values: [a, b]}\n    - {key: legacy, operator: DoesNotExist}\n",
        );
        assert_eq!(
            selector_text(&body).as_deref(),
            Some("app=web,gitopsd.io/track=canary,tier in (a,b),!legacy")
        );
        assert_eq!(selector_text(&yaml("spec: {selector: {}}\n")), None);
    }

    #[test]
    fn the_newest_replicaset_of_a_deployment_names_its_new_pods() {
        let deployment = yaml("metadata: {uid: d1}\n");
        let rs = |hash: &str, revision: u8, owner: &str| {
            yaml(&format!(
                "metadata:\n  labels: {{pod-template-hash: {hash}}}\n  annotations: {{deployment.kubernetes.io/revision: '{revision}'}}\n  ownerReferences: [{{uid: {owner}}}]\n"
            ))
        };
        let sets = [rs("old", 1, "d1"), rs("new", 2, "d1"), rs("other", 9, "d2")];
        assert_eq!(
            new_template_label("Deployment", &deployment, &sets),
            Some(("pod-template-hash", "new".to_string()))
        );
        let ds = yaml("metadata: {uid: d1}\n");
        let cr = |hash: &str, revision: u8| {
            yaml(&format!(
                "metadata:\n  labels: {{controller-revision-hash: {hash}}}\n  ownerReferences: [{{uid: d1}}]\nrevision: {revision}\n"
            ))
        };
        assert_eq!(
            new_template_label("DaemonSet", &ds, &[cr("old", 1), cr("new", 2)]),
            Some(("controller-revision-hash", "new".to_string()))
        );
        let sts = yaml("status: {updateRevision: web-7f}\n");
        assert_eq!(
            new_template_label("StatefulSet", &sts, &[]),
            Some(("controller-revision-hash", "web-7f".to_string()))
        );
    }
}
