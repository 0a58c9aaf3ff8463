//! What the journal records: one line per decision, and the events' vocabulary.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::{Action, Revision};

/// One journal line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// 1-based position in the environment's journal.
    pub seq: u64,
    pub time: DateTime<Utc>,
    pub environment: String,
    /// Who asked for an operator's action: the API token's caller or a dashboard session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    #[serde(flatten)]
    pub event: Event,
}

/// A decision or outcome, written before the action it announces is carried out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The revision's manifests are invalid; nothing of it was applied.
    Rejected {
        revision: Revision,
        problems: Vec<String>,
    },
    /// About to apply these changes.
    ReconcileStarted {
        revision: Revision,
        changes: Vec<ChangeRecord>,
    },
    /// Every change of the revision is in place.
    ReconcileFinished {
        revision: Revision,
        changes: Vec<ChangeRecord>,
    },
    /// Applying stopped on an error; the target may hold part of the changes.
    ReconcileFailed {
        revision: Revision,
        applied: usize,
        error: String,
    },
    /// A new revision starts rolling out. `previous` is the last healthy revision, which a
    /// revert returns to; `baseline` is how the objects it touches were marked before.
    RolloutStarted {
        revision: Revision,
        previous: Option<Revision>,
        steps: Vec<u8>,
        changes: Vec<ChangeRecord>,
        /// Deployments that get canaries.
        canaries: Vec<String>,
        baseline: Vec<Baseline>,
    },
    /// A rollout interrupted by a restart goes on from step `step` (its objects are still
    /// there; the step is written again and its bake starts over).
    RolloutResumed { revision: Revision, step: usize },
    /// About to write the objects of a step (weight 100 is the promotion).
    StepStarted {
        revision: Revision,
        step: usize,
        weight: u8,
    },
    /// A canary step stayed ready and healthy for its bake time.
    StepPassed {
        revision: Revision,
        step: usize,
        weight: u8,
    },
    /// The promotion is written and ready; the verify window starts.
    Promoted { revision: Revision },
    /// Blue/green: about to write the preview (the changed Deployments' canaries at full
    /// size, the preview Services) and pin the active Services to the old pods.
    PreviewStarted {
        revision: Revision,
        /// The Deployments previewed, when the rollout also steps canaries (a mixed
        /// rollout): only their canaries are previews. Empty: every canary is.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        previews: Vec<String>,
    },
    /// Blue/green with `auto_promote = false`: the preview is ready and baked; the switch
    /// waits for an operator's approval of the revision (checks keep running).
    AwaitingApproval { revision: Revision },
    /// Blue/green: the preview is ready and baked; about to move the active Services'
    /// selectors to the new pods, one write each.
    Switched { revision: Revision },
    /// Blue/green: a failure after the switch; about to move the active Services' selectors
    /// back to the old pods, one write each.
    SwitchedBack { revision: Revision, reason: String },
    /// Blue/green: the scale-down delay is over; about to give the Deployments the new
    /// template (their old pods go) and then remove the preview.
    ScaledDown { revision: Revision },
    /// A check reached its failure threshold.
    CheckFailed {
        revision: Revision,
        check: String,
        detail: String,
    },
    /// The revision failed; it is not applied again unless an operator retries it. `cause`
    /// is short (`CrashLoopBackOff`, `CheckFailed`, `Timeout`, `Rejected`), for metrics.
    RolloutFailed {
        revision: Revision,
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cause: Option<String>,
    },
    /// The cluster could not take the revision now (unreachable, 5xx, 429, a conflict):
    /// the revision is not blamed and is tried again with backoff.
    Blocked { revision: Revision, reason: String },
    /// What blocked the environment is gone: a pass went through.
    Unblocked { revision: Revision },
    /// An operator cleared the held failure of `revision`, so it rolls out again.
    Retried { revision: Revision },
    /// The branch tip `revision` is not applied: `commit` (the tip, or with `mode = "all"` a
    /// commit before it) is unsigned or not signed by an allowed key.
    VerifyFailed {
        revision: Revision,
        commit: Revision,
        reason: String,
    },
    /// About to put the environment back to `to`. `failed` is false when undoing a rollout
    /// that a restart interrupted.
    RevertStarted {
        revision: Revision,
        to: Revision,
        reason: String,
        failed: bool,
    },
    /// The environment is back at `to`.
    Reverted { revision: Revision, to: Revision },
    /// A commit restoring the environment's folder to the healthy revision was pushed.
    RevertCommitted {
        revision: Revision,
        commit: Revision,
    },
    /// The revision finished its rollout and verify window healthy.
    Healthy { revision: Revision },
    /// An operator paused the environment (`revision`: the branch tip then).
    Paused { revision: Revision },
    /// An operator resumed it; a rollback pin is lifted too.
    Resumed { revision: Revision },
    /// An operator approved `revision` for rollout.
    Approved { revision: Revision },
    /// An operator rolled back to `revision`; it stays pinned while the branch tip is `tip`.
    Pinned { revision: Revision, tip: Revision },
    /// Objects found changed outside git since they were applied were put back: each with
    /// the field paths that no longer held git's values.
    DriftCorrected {
        revision: Revision,
        objects: Vec<DriftRecord>,
    },
    /// About to run a hook (`when`: `pre-rollout`, `post-promotion`, `on-failure`) of
    /// `revision`; `hook` names it (`command <name>`, or the object as the revision names
    /// it), `run` is the name its object runs under.
    HookStarted {
        revision: Revision,
        when: String,
        hook: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        run: Option<String>,
    },
    /// The hook finished successfully after `duration_ms`.
    HookSucceeded {
        revision: Revision,
        when: String,
        hook: String,
        duration_ms: u64,
    },
    /// The hook failed after `duration_ms`: `message` is the exit status and the end of its
    /// stderr, or the failing Job condition's message, or the timeout.
    HookFailed {
        revision: Revision,
        when: String,
        hook: String,
        duration_ms: u64,
        message: String,
    },
    /// `[ha]`: this daemon (`holder`) took the environment's Lease, from `from` when another daemon
    /// held it last. `state`, when set, is the history the cluster keeps for the environment,
    /// which differed from this host's: decisions follow it from here on.
    Acquired {
        revision: Revision,
        holder: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        state: Option<serde_json::Value>,
    },
    /// Every type the environment has used so far (listed on each pass, so objects of a type a
    /// revision drops entirely are still found and pruned).
    Inventory {
        revision: Revision,
        kinds: Vec<crate::model::KindRef>,
    },
}

/// One object whose drift was put back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftRecord {
    pub object: String,
    /// Field paths (`spec.replicas`, `data.MODE`) that differed from git.
    pub fields: Vec<String>,
}

/// How an object was marked before a rollout touched it (absent: it did not exist).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Baseline {
    pub object: String,
    pub revision: Revision,
    pub hash: String,
}

impl Event {
    pub fn name(&self) -> &'static str {
        match self {
            Event::Rejected { .. } => "rejected",
            Event::ReconcileStarted { .. } => "reconcile_started",
            Event::ReconcileFinished { .. } => "reconcile_finished",
            Event::ReconcileFailed { .. } => "reconcile_failed",
            Event::RolloutStarted { .. } => "rollout_started",
            Event::StepStarted { .. } => "step_started",
            Event::StepPassed { .. } => "step_passed",
            Event::Promoted { .. } => "promoted",
            Event::PreviewStarted { .. } => "preview_started",
            Event::AwaitingApproval { .. } => "awaiting_approval",
            Event::Switched { .. } => "switched",
            Event::SwitchedBack { .. } => "switched_back",
            Event::ScaledDown { .. } => "scaled_down",
            Event::CheckFailed { .. } => "check_failed",
            Event::RolloutFailed { .. } => "rollout_failed",
            Event::RevertStarted { .. } => "revert_started",
            Event::Reverted { .. } => "reverted",
            Event::RevertCommitted { .. } => "revert_committed",
            Event::Healthy { .. } => "healthy",
            Event::Paused { .. } => "paused",
            Event::Resumed { .. } => "resumed",
            Event::Approved { .. } => "approved",
            Event::Pinned { .. } => "pinned",
            Event::DriftCorrected { .. } => "drift_corrected",
            Event::Inventory { .. } => "inventory",
            Event::Acquired { .. } => "acquired",
            Event::Blocked { .. } => "blocked",
            Event::RolloutResumed { .. } => "rollout_resumed",
            Event::Unblocked { .. } => "unblocked",
            Event::Retried { .. } => "retried",
            Event::VerifyFailed { .. } => "verify_failed",
            Event::HookStarted { .. } => "hook_started",
            Event::HookSucceeded { .. } => "hook_succeeded",
            Event::HookFailed { .. } => "hook_failed",
        }
    }

    pub fn revision(&self) -> &Revision {
        match self {
            Event::Rejected { revision, .. }
            | Event::ReconcileStarted { revision, .. }
            | Event::ReconcileFinished { revision, .. }
            | Event::ReconcileFailed { revision, .. }
            | Event::RolloutStarted { revision, .. }
            | Event::StepStarted { revision, .. }
            | Event::StepPassed { revision, .. }
            | Event::Promoted { revision }
            | Event::PreviewStarted { revision, .. }
            | Event::AwaitingApproval { revision }
            | Event::Switched { revision }
            | Event::SwitchedBack { revision, .. }
            | Event::ScaledDown { revision }
            | Event::CheckFailed { revision, .. }
            | Event::RolloutFailed { revision, .. }
            | Event::Blocked { revision, .. }
            | Event::RolloutResumed { revision, .. }
            | Event::Unblocked { revision }
            | Event::Retried { revision }
            | Event::VerifyFailed { revision, .. }
            | Event::RevertStarted { revision, .. }
            | Event::Reverted { revision, .. }
            | Event::RevertCommitted { revision, .. }
            | Event::Healthy { revision }
            | Event::Paused { revision }
            | Event::Resumed { revision }
            | Event::Approved { revision }
            | Event::Pinned { revision, .. }
            | Event::DriftCorrected { revision, .. }
            | Event::Inventory { revision, .. }
            | Event::Acquired { revision, .. }
            | Event::HookStarted { revision, .. }
            | Event::HookSucceeded { revision, .. }
            | Event::HookFailed { revision, .. } => revision,
        }
    }
}

/// One planned or applied change, as journaled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeRecord {
    pub action: Action,
    /// The object, as `Kind[.group] [namespace/]name`.
    pub object: String,
    /// Hash of the desired object; none for deletions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_acquired_record_reads_back_with_its_holder_and_the_clusters_history() {
        // Its fields share the record's level (the event is flattened): none may be `by`.
        let record = Record {
            seq: 7,
            time: DateTime::from_timestamp(1_800_000_000, 0).expect("a time"),
            environment: "web".into(),
            by: None,
            event: Event::Acquired {
                revision: Revision("abc".into()),
                holder: "host-b".into(),
                from: Some("host-a".into()),
                state: Some(serde_json::json!({"last_healthy": "abc"})),
            },
        };
        let line = serde_json::to_string(&record).expect("encodes");
        let back: Record = serde_json::from_str(&line).expect("decodes");
        assert_eq!(back, record);
        assert_eq!(back.event.name(), "acquired");
    }
}
