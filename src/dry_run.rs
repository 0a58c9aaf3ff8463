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
    /// The environment's namespace, missing now, that gitopsd will create first
    /// (`create_namespace = true`); objects in it are counted in `unchecked`.
    pub will_create: Option<String>,
}

/// What gitopsd makes before it applies a revision, besides the revision's own objects.
#[derive(Debug, Default)]
pub struct Made<'a> {
    /// The namespace `create_namespace = true` makes.
    pub namespace: Option<&'a str>,
}

/// Why a refused dry run says nothing about the object: what it needs arrives with it, or is
/// made by gitopsd first (`made`: the namespace of `create_namespace`).
fn waits_for_revision(
    key: &ResourceKey,
    error: &TargetError,
    new_namespaces: &BTreeSet<String>,
    new_types: &BTreeSet<(String, String)>,
    made: Option<&str>,
) -> Option<String> {
    if new_types.contains(&(key.group.clone(), key.kind.clone())) {
        return Some(format!(
            "{key}: its CustomResourceDefinition comes with this revision"
        ));
    }
    let namespace = key.namespace.as_ref()?;
    let TargetError::Object {
        missing: Some(missing),
        ..
    } = error
    else {
        return None;
    };
    if missing.resource != "namespaces" || missing.name != *namespace {
        return None;
    }
    if made == Some(namespace.as_str()) {
        return Some(format!(
            "{key}: its namespace will be created (create_namespace)"
        ));
    }
    new_namespaces
        .contains(namespace)
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
    made: &Made<'_>,
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
                    if let Some(reason) = waits_for_revision(
                        &desired.key,
                        &error,
                        &new_namespaces,
                        &new_types,
                        made.namespace,
                    ) {
                        if reason.ends_with("(create_namespace)") {
                            report.will_create = made.namespace.map(str::to_string);
                        }
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
            missing: None,
        }
    }

    /// A 404 whose details name the namespace, as the API server answers it.
    fn namespace_missing(namespace: &str) -> TargetError {
        TargetError::Object {
            operation: "dry-run",
            object: "ConfigMap shop/x".into(),
            message: "not found (404 NotFound): the namespace is not there".into(),
            class: FailureClass::Revision,
            missing: Some(Box::new(crate::backend::Missing {
                resource: "namespaces".into(),
                name: namespace.into(),
            })),
        }
    }

    #[test]
    fn objects_waiting_for_their_namespace_or_type_are_not_blamed() {
        let namespaces = BTreeSet::from(["shop".to_string()]);
        let types = BTreeSet::from([("example.com".to_string(), "Widget".to_string())]);
        let missing = namespace_missing("shop");
        assert!(
            waits_for_revision(
                &key("ConfigMap", Some("shop")),
                &missing,
                &namespaces,
                &types,
                None
            )
            .is_some()
        );
        let elsewhere = namespace_missing("other");
        assert_eq!(
            waits_for_revision(
                &key("ConfigMap", Some("other")),
                &elsewhere,
                &namespaces,
                &types,
                None
            ),
            None,
            "a namespace the revision does not create is a real problem"
        );
        assert!(
            waits_for_revision(
                &key("Widget", Some("shop")),
                &refused("x"),
                &BTreeSet::new(),
                &types,
                None
            )
            .is_some()
        );
        assert_eq!(
            waits_for_revision(
                &key("ConfigMap", Some("shop")),
                &refused("invalid (422 Invalid): metadata.labels: Invalid value"),
                &namespaces,
                &types,
                None
            ),
            None
        );
        assert_eq!(
            waits_for_revision(
                &key("ConfigMap", Some("shop")),
                &refused("not found (404 NotFound): namespaces \"shop\" not found"),
                &namespaces,
                &types,
                None
            ),
            None,
            "the message text alone decides nothing"
        );
        assert_eq!(
            waits_for_revision(
                &key("ConfigMap", Some("shop")),
                &missing,
                &BTreeSet::new(),
                &types,
                Some("shop")
            )
            .as_deref(),
            Some("ConfigMap shop/x: its namespace will be created (create_namespace)"),
            "create_namespace makes it before anything is applied"
        );
        assert_eq!(
            waits_for_revision(
                &key("ConfigMap", Some("other")),
                &elsewhere,
                &BTreeSet::new(),
                &types,
                Some("shop")
            ),
            None,
            "only the environment's own namespace is made"
        );
    }
}
