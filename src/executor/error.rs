//! How a pass ends: what it did, or why it stopped.

use thiserror::Error;

use crate::backend::{FailureClass, TargetError};
use crate::journal::{ChangeRecord, JournalError};
use crate::manifest::ManifestErrors;
use crate::model::Revision;
use crate::probe::ProberError;
use crate::render::RenderError;
use crate::source::SourceError;

/// Why a pass stopped short. The variant says whom it blames: the revision (rejected, rolled
/// back, held), the cluster (blocked, retried with backoff) or this process (shutdown).
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
    #[error("revision {revision} rejected, nothing applied: {problem}")]
    Empty { revision: Revision, problem: String },
    #[error("revision {revision} not applied: {problems}")]
    Strategy {
        revision: Revision,
        problems: String,
    },
    #[error("revision {revision} not applied: {problems}")]
    Ownership {
        revision: Revision,
        problems: String,
    },
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
    #[error("revision {revision} failed and was reverted to {to}: {reason}")]
    RolledBack {
        revision: Revision,
        to: Revision,
        reason: String,
    },
    #[error("revision {revision} failed on its first deploy, with nothing to revert to: {reason}")]
    FirstDeployFailed { revision: Revision, reason: String },
    #[error("revision {revision} failed before anything of it was applied, and is held: {reason}")]
    HookFailed { revision: Revision, reason: String },
    #[error("revert of {revision} to {to} stopped: {message}; it is retried on the next pass")]
    Revert {
        revision: Revision,
        to: Revision,
        message: String,
    },
    #[error(
        "revision {revision} not applied: {unverified}; the environment stays at its last verified revision"
    )]
    Unverified {
        revision: Revision,
        unverified: crate::source::git::Unverified,
    },
    #[error(
        "revision {revision} blocked by the cluster, not failed; retried with backoff: {reason}"
    )]
    Blocked { revision: Revision, reason: String },
    #[error("stopped by shutdown in the middle of a rollout; it goes on from its step on restart")]
    Interrupted,
    /// `[ha]`: the environment's Lease ran out or went to another daemon mid-pass; the pass
    /// stopped without a write or a record, and the holder carries on.
    #[error("stopped: {0}")]
    Fenced(String),
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// Blocking work (git, files) that never returned.
    #[error(transparent)]
    Stopped(#[from] crate::blocking::Stopped),
    /// A render that could not run at all (its sandbox or cache), as opposed to one that ran
    /// and failed, which rejects the revision.
    #[error("rendering: {0}")]
    Render(#[source] RenderError),
    #[error(transparent)]
    Checks(#[from] ProberError),
}

impl ReconcileError {
    /// What the cluster refuses, when the pass failed because of it rather than the revision:
    /// an environment in this state is `blocked`, and tried again with backoff.
    pub fn blocked_reason(&self) -> Option<String> {
        match self {
            ReconcileError::Blocked { reason, .. } => Some(reason.clone()),
            ReconcileError::Live(error) | ReconcileError::Apply { source: error, .. }
                if error.class() == FailureClass::Infrastructure =>
            {
                Some(error.to_string())
            }
            // A revert that cannot finish is tried again on every pass.
            ReconcileError::Revert { message, .. } => Some(format!("revert stopped: {message}")),
            _ => None,
        }
    }
}

/// What a pass did.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Live state already matched the revision.
    Unchanged { revision: Revision },
    /// Drift was put back, in place.
    Converged {
        revision: Revision,
        changes: Vec<ChangeRecord>,
    },
    /// The revision rolled out and proved healthy.
    RolledOut {
        revision: Revision,
        changes: Vec<ChangeRecord>,
    },
    /// The branch tip failed before; the environment stays at `at`.
    Held {
        failed: Revision,
        at: Option<Revision>,
    },
    /// A gate holds the tip back; nothing was changed.
    Waiting { reason: String },
    /// Kept at the revision an operator rolled back to.
    Pinned { revision: Revision },
}
