//! Readiness of live Kubernetes objects by kind, after the kstatus rules (pure): a verdict from
//! an object's body, tested on inline YAML.

use serde_json::Value;

/// `Ok` when the object is ready, else what it is waiting for.
pub fn readiness(group: &str, kind: &str, body: &Value) -> Result<(), String> {
    let int = |pointer: &str| body.pointer(pointer).and_then(Value::as_i64);
    let generation = int("/metadata/generation");
    let observed = int("/status/observedGeneration");
    // A controller that has not seen the latest spec says nothing about it yet.
    let caught_up = || match (generation, observed) {
        (Some(generation), Some(observed)) if observed < generation => Err(format!(
            "status is for generation {observed}, the spec is at {generation}"
        )),
        (Some(_), None) => Err("the controller has not observed it yet".into()),
        _ => Ok(()),
    };
    let desired = int("/spec/replicas").unwrap_or(1);
    match (group, kind) {
        ("apps", "Deployment") => {
            caught_up()?;
            let updated = int("/status/updatedReplicas").unwrap_or(0);
            let available = int("/status/availableReplicas").unwrap_or(0);
            let total = int("/status/replicas").unwrap_or(0);
            if updated < desired {
                Err(format!("{updated} of {desired} replicas updated"))
            } else if total > updated {
                Err(format!("{} old replicas still running", total - updated))
            } else if available < desired {
                Err(format!("{available} of {desired} replicas available"))
            } else {
                Ok(())
            }
        }
        ("apps", "StatefulSet") => {
            caught_up()?;
            let ready = int("/status/readyReplicas").unwrap_or(0);
            let updated = int("/status/updatedReplicas").unwrap_or(0);
            let current = body
                .pointer("/status/currentRevision")
                .and_then(Value::as_str);
            let update = body
                .pointer("/status/updateRevision")
                .and_then(Value::as_str);
            if ready < desired {
                Err(format!("{ready} of {desired} replicas ready"))
            } else if updated < desired {
                Err(format!("{updated} of {desired} replicas updated"))
            } else if current != update {
                Err("the rolling update is not finished".into())
            } else {
                Ok(())
            }
        }
        ("apps", "DaemonSet") => {
            caught_up()?;
            let scheduled = int("/status/desiredNumberScheduled").unwrap_or(0);
            let updated = int("/status/updatedNumberScheduled").unwrap_or(0);
            let available = int("/status/numberAvailable").unwrap_or(0);
            if updated < scheduled {
                Err(format!("{updated} of {scheduled} pods updated"))
            } else if available < scheduled {
                Err(format!("{available} of {scheduled} pods available"))
            } else {
                Ok(())
            }
        }
        ("batch", "Job") => {
            if condition(body, "Failed") {
                Err("the job failed".into())
            } else if condition(body, "Complete") {
                Ok(())
            } else {
                Err("the job has not completed".into())
            }
        }
        ("", "PersistentVolumeClaim") => {
            match body.pointer("/status/phase").and_then(Value::as_str) {
                Some("Bound") => Ok(()),
                phase => Err(format!(
                    "phase is {}, not Bound",
                    phase.unwrap_or("unknown")
                )),
            }
        }
        ("", "Service") => {
            let is_load_balancer =
                body.pointer("/spec/type").and_then(Value::as_str) == Some("LoadBalancer");
            let has_ingress = body
                .pointer("/status/loadBalancer/ingress")
                .and_then(Value::as_array)
                .is_some_and(|ingress| !ingress.is_empty());
            if is_load_balancer && !has_ingress {
                Err("the load balancer has no ingress yet".into())
            } else {
                Ok(())
            }
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            if condition(body, "Established") {
                Ok(())
            } else {
                Err("not Established yet".into())
            }
        }
        _ => Ok(()),
    }
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
            readiness("apps", "Deployment", &fresh).is_err(),
            "status is stale"
        );
        let rolling = yaml(
            "metadata: {generation: 2}\nspec: {replicas: 3}\nstatus: {observedGeneration: 2, replicas: 4, updatedReplicas: 3, availableReplicas: 3}\n",
        );
        assert_eq!(
            readiness("apps", "Deployment", &rolling),
            Err("1 old replicas still running".into())
        );
        let done = yaml(
            "metadata: {generation: 2}\nspec: {replicas: 3}\nstatus: {observedGeneration: 2, replicas: 3, updatedReplicas: 3, availableReplicas: 3}\n",
        );
        assert_eq!(readiness("apps", "Deployment", &done), Ok(()));
    }

    #[test]
    fn statefulset_and_daemonset() {
        let sts = yaml(
            "metadata: {generation: 1}\nspec: {replicas: 2}\nstatus: {observedGeneration: 1, readyReplicas: 2, updatedReplicas: 2, currentRevision: a, updateRevision: b}\n",
        );
        assert!(readiness("apps", "StatefulSet", &sts).is_err());
        let ds = yaml(
            "metadata: {generation: 1}\nstatus: {observedGeneration: 1, desiredNumberScheduled: 3, updatedNumberScheduled: 3, numberAvailable: 3}\n",
        );
        assert_eq!(readiness("apps", "DaemonSet", &ds), Ok(()));
    }

    #[test]
    fn jobs_pvcs_services_and_crds() {
        let complete = yaml("status: {conditions: [{type: Complete, status: 'True'}]}\n");
        let failed = yaml("status: {conditions: [{type: Failed, status: 'True'}]}\n");
        assert_eq!(readiness("batch", "Job", &complete), Ok(()));
        assert_eq!(
            readiness("batch", "Job", &failed),
            Err("the job failed".into())
        );
        assert!(
            readiness(
                "",
                "PersistentVolumeClaim",
                &yaml("status: {phase: Pending}\n")
            )
            .is_err()
        );
        assert_eq!(
            readiness(
                "",
                "PersistentVolumeClaim",
                &yaml("status: {phase: Bound}\n")
            ),
            Ok(())
        );
        let lb = yaml("spec: {type: LoadBalancer}\nstatus: {loadBalancer: {}}\n");
        assert!(readiness("", "Service", &lb).is_err());
        assert_eq!(
            readiness("", "Service", &yaml("spec: {type: ClusterIP}\n")),
            Ok(())
        );
        let crd = yaml("status: {conditions: [{type: Established, status: 'True'}]}\n");
        assert_eq!(
            readiness("apiextensions.k8s.io", "CustomResourceDefinition", &crd),
            Ok(())
        );
        assert_eq!(readiness("", "ConfigMap", &yaml("data: {}\n")), Ok(()));
    }
}
