//! Reconciles one environment at one revision: snapshot → objects → plan → journal → target.

use chrono::Utc;
use thiserror::Error;

use crate::config::EnvironmentConfig;
use crate::journal::{ChangeRecord, Event, Journal, JournalError};
use crate::manifest::{self, ManifestErrors, ParseOptions};
use crate::model::Revision;
use crate::plan::{self, Action, Change, Desired, Plan};
use crate::source::{GitSource, SourceError};
use crate::target::{Target, TargetError};

#[derive(Debug, Error)]
pub enum ReconcileError {
    #[error("revision {revision} rejected, nothing applied: {errors}")]
    Rejected {
        revision: Revision,
        errors: ManifestErrors,
    },
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("reading live state: {0}")]
    Live(TargetError),
    #[error(
        "revision {revision}: {applied} of {planned} changes applied, then: {source}; the rest is retried on the next pass"
    )]
    Apply {
        revision: Revision,
        applied: usize,
        planned: usize,
        #[source]
        source: TargetError,
    },
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("worker thread failed: {0}")]
    Worker(String),
}

/// Error while turning a revision into desired objects.
#[derive(Debug, Error)]
pub enum DesiredError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("{0}")]
    Manifests(ManifestErrors),
    #[error("worker thread failed: {0}")]
    Worker(String),
}

/// What a reconcile did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Live state already matched the revision.
    Unchanged { revision: Revision },
    /// These changes were applied.
    Applied {
        revision: Revision,
        changes: Vec<ChangeRecord>,
    },
}

/// Reads and validates an environment's desired objects at `revision`.
pub async fn load_desired(
    source: &GitSource,
    environment: &EnvironmentConfig,
    revision: &Revision,
) -> Result<Vec<Desired>, DesiredError> {
    let source = source.clone();
    let revision = revision.clone();
    let path = environment.path.clone();
    let snapshot = tokio::task::spawn_blocking(move || source.snapshot(&revision, &path))
        .await
        .map_err(|e| DesiredError::Worker(e.to_string()))??;
    let options = ParseOptions {
        default_namespace: environment.namespace.clone(),
    };
    let objects = manifest::parse(&snapshot.files, snapshot.problems, &options)
        .map_err(DesiredError::Manifests)?;
    Ok(objects.iter().map(Desired::new).collect())
}

/// The journal form of a plan's changes.
pub fn change_records(changes: &[Change]) -> Vec<ChangeRecord> {
    changes
        .iter()
        .map(|change| ChangeRecord {
            action: change.action(),
            object: change.key().to_string(),
            hash: change.desired().map(|d| d.hash.clone()),
        })
        .collect()
}

/// Brings the target to `revision`. The plan is journaled before the first change and the
/// outcome after the last, so a crash in between is visible on restart and the next pass
/// finishes the job (the plan is recomputed from live state).
pub async fn reconcile<T: Target>(
    environment: &EnvironmentConfig,
    source: &GitSource,
    target: &T,
    journal: &mut Journal,
    revision: &Revision,
) -> Result<Outcome, ReconcileError> {
    let desired = match load_desired(source, environment, revision).await {
        Ok(desired) => desired,
        Err(DesiredError::Manifests(errors)) => {
            if !journal.last_rejected_is(revision) {
                journal.append(
                    Event::Rejected {
                        revision: revision.clone(),
                        problems: errors.0.iter().map(ToString::to_string).collect(),
                    },
                    Utc::now(),
                )?;
            }
            return Err(ReconcileError::Rejected {
                revision: revision.clone(),
                errors,
            });
        }
        Err(DesiredError::Source(error)) => return Err(error.into()),
        Err(DesiredError::Worker(message)) => return Err(ReconcileError::Worker(message)),
    };
    let live = target.list().await.map_err(ReconcileError::Live)?;
    let plan = plan::plan(&desired, &live, environment.prune);
    for orphan in &plan.orphaned {
        tracing::warn!(object = %orphan, "owned object is gone from git but prune is off; leaving it");
    }
    if plan.is_empty() {
        tracing::debug!(revision = %revision.short(), unchanged = plan.unchanged, "live state matches");
        return Ok(Outcome::Unchanged {
            revision: revision.clone(),
        });
    }
    if let Some(interrupted) = journal.interrupted() {
        tracing::info!(interrupted = %interrupted.short(), "finishing a reconcile that was interrupted");
    }
    let changes = change_records(&plan.changes);
    journal.append(
        Event::ReconcileStarted {
            revision: revision.clone(),
            changes: changes.clone(),
        },
        Utc::now(),
    )?;
    tracing::info!(
        revision = %revision.short(),
        create = plan.count(Action::Create),
        update = plan.count(Action::Update),
        delete = plan.count(Action::Delete),
        "applying"
    );
    if let Err((applied, source)) = apply_plan(&plan, environment, target, revision).await {
        journal.append(
            Event::ReconcileFailed {
                revision: revision.clone(),
                applied,
                error: source.to_string(),
            },
            Utc::now(),
        )?;
        return Err(ReconcileError::Apply {
            revision: revision.clone(),
            applied,
            planned: plan.changes.len(),
            source,
        });
    }
    journal.append(
        Event::ReconcileFinished {
            revision: revision.clone(),
            changes: changes.clone(),
        },
        Utc::now(),
    )?;
    tracing::info!(revision = %revision.short(), changes = changes.len(), "reconciled");
    Ok(Outcome::Applied {
        revision: revision.clone(),
        changes,
    })
}

/// Carries out the plan in order; on error returns how many changes were done.
async fn apply_plan<T: Target>(
    plan: &Plan,
    environment: &EnvironmentConfig,
    target: &T,
    revision: &Revision,
) -> Result<(), (usize, TargetError)> {
    for (done, change) in plan.changes.iter().enumerate() {
        let result = match change.desired() {
            Some(desired) => {
                let body = desired.stamped(&environment.name, revision);
                target.apply(&desired.key, &body).await
            }
            None => target.delete(change.key()).await,
        };
        result.map_err(|error| (done, error))?;
        tracing::info!(action = change.action().verb(), object = %change.key(), "changed");
    }
    Ok(())
}
