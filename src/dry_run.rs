//! `validate --server`: a server-side dry run of every object of a revision, so what only the
//! API server knows (unknown fields, invalid labels, admission) is caught before merge.

use std::collections::BTreeSet;

use futures_util::future::join_all;

use crate::backend::{FailureClass, Target, TargetError};
use crate::manifest::Problem;
use crate::model::{ResourceKey, Revision};
use crate::plan::Desired;

/// Dry runs in flight at once.
const CONCURRENCY: usize = 8;

/// What the server made of a revision.
#[derive(Debug, Default)]
pub struct DryRunReport {
    /// Objects the server accepted as they are.
    pub accepted: usize,
    /// Objects it could not judge yet, each with why: their namespace or their type comes
    /// with this same revision.
    pub unchecked: Vec<String>,
    /// Objects it refused, each where it was written, with the server's message.
    pub problems: Vec<Problem>,
}

/// Why a refused dry run says nothing about the object: what it needs arrives with it.
fn waits_for_revision(
    key: &ResourceKey,
    error: &TargetError,
    new_namespaces: &BTreeSet<String>,
    new_types: &BTreeSet<(String, String)>,
) -> Option<String> {
    if new_types.contains(&(key.group.clone(), key.kind.clone())) {
        return Some(format!(
            "{key}: its CustomResourceDefinition comes with this revision"
        ));
    }
    let namespace = key.namespace.as_ref()?;
    let missing = format!("namespaces \"{namespace}\" not found");
    (new_namespaces.contains(namespace) && error.to_string().contains(&missing))
        .then(|| format!("{key}: its namespace comes with this revision"))
}

/// Dry-runs every object as `environment` would apply it at `revision`. An answer that blames
/// the object is a problem; one that blames the cluster (unreachable, 5xx) is an error, as the
/// revision could not be checked.
pub async fn dry_run_all<T: Target>(
    target: &T,
    environment: &str,
    revision: &Revision,
    located: &[(Desired, Problem)],
) -> Result<DryRunReport, TargetError> {
    let new_namespaces: BTreeSet<String> = located
        .iter()
        .filter(|(desired, _)| desired.key.group.is_empty() && desired.key.kind == "Namespace")
        .map(|(desired, _)| desired.key.name.clone())
        .collect();
    let new_types: BTreeSet<(String, String)> = located
        .iter()
        .filter(|(desired, _)| {
            desired.key.group == "apiextensions.k8s.io"
                && desired.key.kind == "CustomResourceDefinition"
        })
        .filter_map(|(desired, _)| {
            let spec = desired.body.get("spec")?;
            Some((
                spec.get("group")?.as_str()?.to_string(),
                spec.pointer("/names/kind")?.as_str()?.to_string(),
            ))
        })
        .collect();
    let mut report = DryRunReport::default();
    for batch in located.chunks(CONCURRENCY) {
        let answers = join_all(batch.iter().map(|(desired, _)| {
            let body = desired.stamped(environment, revision);
            async move { target.dry_run(&desired.key, &body).await }
        }))
        .await;
        for ((desired, at), answer) in batch.iter().zip(answers) {
            match answer {
                Ok(_) => report.accepted += 1,
                Err(error) => {
                    if let Some(reason) =
                        waits_for_revision(&desired.key, &error, &new_namespaces, &new_types)
                    {
                        report.unchecked.push(reason);
                    } else if error.class() == FailureClass::Revision {
                        report.problems.push(Problem {
                            message: format!(
                                "the API server refuses it: {}",
                                server_message(&error)
                            ),
                            ..at.clone()
                        });
                    } else {
                        return Err(error);
                    }
                }
            }
        }
    }
    Ok(report)
}

/// The server's words, without the object name the problem already gives.
fn server_message(error: &TargetError) -> String {
    match error {
        TargetError::Object { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kind: &str, namespace: Option<&str>) -> ResourceKey {
        ResourceKey {
            group: if kind == "Widget" { "example.com" } else { "" }.into(),
            kind: kind.into(),
            namespace: namespace.map(str::to_string),
            name: "x".into(),
        }
    }

    fn refused(message: &str) -> TargetError {
        TargetError::Object {
            operation: "dry-run",
            object: "ConfigMap shop/x".into(),
            message: message.into(),
            class: FailureClass::Revision,
        }
    }

    #[test]
    fn objects_waiting_for_their_namespace_or_type_are_not_blamed() {
        let namespaces = BTreeSet::from(["shop".to_string()]);
        let types = BTreeSet::from([("example.com".to_string(), "Widget".to_string())]);
        let missing = refused("not found (404 NotFound): namespaces \"shop\" not found");
        assert!(
            waits_for_revision(
                &key("ConfigMap", Some("shop")),
                &missing,
                &namespaces,
                &types
            )
            .is_some()
        );
        let elsewhere = refused("not found (404 NotFound): namespaces \"other\" not found");
        assert_eq!(
            waits_for_revision(
                &key("ConfigMap", Some("other")),
                &elsewhere,
                &namespaces,
                &types
            ),
            None,
            "a namespace the revision does not create is a real problem"
        );
        assert!(
            waits_for_revision(
                &key("Widget", Some("shop")),
                &refused("x"),
                &BTreeSet::new(),
                &types
            )
            .is_some()
        );
        assert_eq!(
            waits_for_revision(
                &key("ConfigMap", Some("shop")),
                &refused("invalid (422 Invalid): metadata.labels: Invalid value"),
                &namespaces,
                &types
            ),
            None
        );
    }
}
