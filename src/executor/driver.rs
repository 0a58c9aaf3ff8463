//! The rollout driver: takes one decision at a time from the pure state machine
//! ([`Rollout`]), carries it out through [`Effects`], journals its milestones, and says how
//! the rollout ended. Every step is journaled before anything of it is written.

use std::ops::ControlFlow;

use chrono::{DateTime, Utc};

use super::effects::Effects;
use super::error::ReconcileError;
use super::writes::{Write, applied_keys, baseline, change_records, ordered, step_objects};
use crate::backend::{FailureClass, Target, TargetError};
use crate::canary::{RolloutSpec, StepObjects};
use crate::health::HealthTracker;
use crate::history::Resume;
use crate::journal::{Baseline, ChangeRecord, Event};
use crate::model::{Object, ResourceKey, Revision};
use crate::plan::{Desired, Plan};
use crate::probe::CheckRunner;
use crate::rollout::{Decision, Milestone, Observation, Rollout, Timing, cause};

/// What a rollout is made of, prepared by the pass: the revision, what it replaces, and the
/// plan between them split into canary steps.
pub struct RolloutInput {
    pub revision: Revision,
    /// The last healthy revision, which a failure returns to.
    pub previous: Option<Revision>,
    pub desired: Vec<Desired>,
    pub live: Vec<Object>,
    pub plan: Plan,
    pub spec: RolloutSpec,
    /// The environment's hook commands and the revision's hook objects.
    pub hooks: super::hooks::HookSet,
}

/// How a rollout ended. Reverting is the caller's: it needs the previous revision's manifests.
#[derive(Debug, Clone, PartialEq)]
pub enum Ending {
    /// Every step passed and the verify window stayed healthy; journaled `healthy`.
    Healthy { changes: Vec<ChangeRecord> },
    /// The revision is to blame (a check, a timeout, a broken pod, an object the server
    /// refused); journaled `rollout_failed`. The marks are what a revert restores.
    Failed {
        reason: String,
        cause: String,
        baseline: Vec<Baseline>,
    },
    /// The cluster could not take a write; journaled `blocked`. The revision is not blamed:
    /// the partial step is to be undone and the rollout tried again later.
    Blocked {
        reason: String,
        baseline: Vec<Baseline>,
    },
}

/// What one decision led to: the next decision (with the milestone reached on the way), or
/// the end of the rollout.
type Step = ControlFlow<Ending, (Option<Milestone>, Decision)>;

/// Carries one rollout through its steps.
pub struct Driver<'d, 'a, T: Target, P: CheckRunner> {
    fx: &'d mut Effects<'a, T, P>,
    input: RolloutInput,
    rollout: Rollout,
    /// How the touched objects were marked before, for a revert.
    baseline: Vec<Baseline>,
    /// The first step this run writes: it also writes every change with no canary meaning.
    first_step: usize,
    tracker: HealthTracker,
    /// What the current step applied: what readiness waits for.
    step_keys: Vec<ResourceKey>,
    /// What the current step scales down or deletes once its new capacity is ready.
    shrinking: StepObjects,
}

impl<'d, 'a, T: Target, P: CheckRunner> Driver<'d, 'a, T, P> {
    fn timing(fx: &Effects<'a, T, P>) -> Timing {
        Timing {
            bake: fx.config.rollout.bake,
            timeout: fx.config.rollout.timeout,
            verify: fx.config.rollout.verify,
        }
    }

    fn with(
        fx: &'d mut Effects<'a, T, P>,
        input: RolloutInput,
        rollout: Rollout,
        baseline: Vec<Baseline>,
        first_step: usize,
    ) -> Self {
        let tracker = HealthTracker::new(&fx.config.health);
        Self {
            fx,
            input,
            rollout,
            baseline,
            first_step,
            tracker,
            step_keys: Vec::new(),
            shrinking: StepObjects::default(),
        }
    }

    /// Starts a new rollout: the configured steps when a workload gets a canary, else one
    /// step to 100%. Journals `rollout_started` with the marks a revert would restore.
    pub async fn begin(
        fx: &'d mut Effects<'a, T, P>,
        input: RolloutInput,
    ) -> Result<Self, ReconcileError> {
        let steps = if input.spec.has_canaries() {
            fx.config.rollout.steps.clone()
        } else {
            vec![100]
        };
        let marks = baseline(&input.plan, &input.spec, &input.live);
        let canaries: Vec<String> = input
            .spec
            .canaries
            .iter()
            .map(|unit| unit.desired.key.to_string())
            .collect();
        let changes = change_records(&input.plan.changes);
        fx.journal(Event::RolloutStarted {
            revision: input.revision.clone(),
            previous: input.previous.clone(),
            steps: steps.clone(),
            changes: changes.clone(),
            canaries: canaries.clone(),
            baseline: marks.clone(),
        })
        .await?;
        tracing::info!(
            env = %fx.config.name,
            revision = %input.revision.short(),
            steps = ?steps,
            canaries = ?canaries,
            changes = changes.len(),
            "rollout started"
        );
        let rollout = Rollout::new(steps, Self::timing(fx));
        Ok(Self::with(fx, input, rollout, marks, 0))
    }

    /// Goes on with a rollout a restart interrupted, at the step it had reached, with the
    /// steps and marks it started with (its canary objects are still there). Once the
    /// stables carry the new template nothing is left but the promotion.
    pub async fn resume(
        fx: &'d mut Effects<'a, T, P>,
        input: RolloutInput,
        resume: Resume,
    ) -> Result<Self, ReconcileError> {
        let last = resume.steps.len().saturating_sub(1);
        let from = if input.spec.has_canaries() {
            resume.from
        } else {
            last
        };
        fx.journal(Event::RolloutResumed {
            revision: input.revision.clone(),
            step: from,
        })
        .await?;
        tracing::info!(env = %fx.config.name, revision = %input.revision.short(), step = from + 1, "rollout resumed after a restart");
        let rollout = Rollout::starting_at(resume.steps, Self::timing(fx), from);
        Ok(Self::with(fx, input, rollout, resume.baseline, from))
    }

    /// Takes decisions until the rollout ends.
    pub async fn run(mut self) -> Result<Ending, ReconcileError> {
        let mut decision = self.rollout.decision();
        loop {
            let step = match decision {
                Decision::ApplyStep { step, weight } => self.apply_step(step, weight).await?,
                Decision::Shrink { step, weight } => self.shrink(step, weight).await?,
                Decision::AwaitReady { deadline } => self.await_ready(deadline).await?,
                Decision::Watch { until } => self.watch(until).await?,
                Decision::Succeed => ControlFlow::Break(self.succeed().await?),
                Decision::Revert { reason, cause } => {
                    ControlFlow::Break(self.fail(reason, cause).await?)
                }
            };
            match step {
                ControlFlow::Break(ending) => return Ok(ending),
                ControlFlow::Continue((milestone, next)) => {
                    let promoted = milestone == Some(Milestone::Promoted);
                    self.reached(milestone).await?;
                    decision = if promoted {
                        self.post_promotion(next).await?
                    } else {
                        next
                    };
                }
            }
        }
    }

    /// Journals the step, then writes what it adds. Capacity first: what the step adds is
    /// written and ready before anything it replaces is scaled down or deleted.
    async fn apply_step(&mut self, step: usize, weight: u8) -> Result<Step, ReconcileError> {
        let revision = self.input.revision.clone();
        self.fx
            .journal(Event::StepStarted {
                revision: revision.clone(),
                step,
                weight,
            })
            .await?;
        tracing::info!(env = %self.fx.config.name, revision = %revision.short(), step = step + 1, weight, "step started");
        let objects = step_objects(&self.input.spec, step == self.first_step, weight);
        let writes = ordered(objects.apply, Vec::new());
        self.shrinking = StepObjects {
            shrink: objects.shrink,
            delete: objects.delete,
            ..StepObjects::default()
        };
        self.step_keys = applied_keys(&writes);
        self.write_step(step, weight, &writes, "writes", Observation::Applied)
            .await
    }

    /// Scales down and deletes what the step replaced, once its new capacity is ready.
    async fn shrink(&mut self, step: usize, weight: u8) -> Result<Step, ReconcileError> {
        let objects = std::mem::take(&mut self.shrinking);
        let writes = ordered(objects.shrink, objects.delete);
        self.write_step(
            step,
            weight,
            &writes,
            "scale-downs and deletions",
            Observation::Shrunk,
        )
        .await
    }

    /// Writes one part of a step. A failed write blames the revision only when the server
    /// judged an object; when the cluster could not take it, the rollout ends blocked.
    async fn write_step(
        &mut self,
        step: usize,
        weight: u8,
        writes: &[Write],
        what: &str,
        written: Observation,
    ) -> Result<Step, ReconcileError> {
        let revision = self.input.revision.clone();
        let Err((applied, error)) = self.fx.write_all(writes, |_| revision.clone()).await else {
            return Ok(ControlFlow::Continue(
                self.rollout.observe(written, Utc::now()),
            ));
        };
        let reason = format!(
            "step {} ({weight}%): {applied} of {} {what} done, then: {error}",
            step + 1,
            writes.len()
        );
        self.write_failed(reason, &error).await
    }

    async fn write_failed(
        &mut self,
        reason: String,
        error: &TargetError,
    ) -> Result<Step, ReconcileError> {
        if error.class() == FailureClass::Revision {
            return Ok(ControlFlow::Continue((
                Some(Milestone::Failed {
                    reason: reason.clone(),
                }),
                Decision::Revert {
                    reason,
                    cause: cause::REJECTED.into(),
                },
            )));
        }
        let blocked = end_blocked(self.fx, &self.input.revision, reason, &self.baseline).await?;
        Ok(ControlFlow::Break(blocked))
    }

    async fn await_ready(&mut self, deadline: DateTime<Utc>) -> Result<Step, ReconcileError> {
        let keys = self.step_keys.clone();
        let observation = self.fx.readiness(&keys, deadline).await?;
        Ok(ControlFlow::Continue(
            self.rollout.observe(observation, Utc::now()),
        ))
    }

    async fn watch(&mut self, until: DateTime<Utc>) -> Result<Step, ReconcileError> {
        let deployments: Vec<&Desired> = self
            .input
            .spec
            .canaries
            .iter()
            .map(|u| &u.desired)
            .collect();
        let host = crate::preview::canary_host(&self.input.desired, &deployments);
        let observation = self
            .fx
            .watch_checks_held(
                &mut self.tracker,
                &self.input.revision,
                &self.step_keys,
                until,
                host.as_deref(),
                |_| false,
            )
            .await?;
        Ok(ControlFlow::Continue(
            self.rollout.observe(observation, Utc::now()),
        ))
    }

    /// Journals a milestone the state machine reached.
    async fn reached(&mut self, milestone: Option<Milestone>) -> Result<(), ReconcileError> {
        let revision = self.input.revision.clone();
        match milestone {
            Some(Milestone::StepPassed { step, weight }) => {
                self.fx
                    .journal(Event::StepPassed {
                        revision: revision.clone(),
                        step,
                        weight,
                    })
                    .await?;
                tracing::info!(env = %self.fx.config.name, revision = %revision.short(), step = step + 1, weight, "step passed");
            }
            Some(Milestone::Promoted) => {
                self.fx
                    .journal(Event::Promoted {
                        revision: revision.clone(),
                    })
                    .await?;
                tracing::info!(env = %self.fx.config.name, revision = %revision.short(), "promoted; verifying");
            }
            // The decision that follows journals these.
            Some(Milestone::Failed { .. } | Milestone::Succeeded) | None => {}
        }
        Ok(())
    }

    /// Runs the post-promotion hooks as the verify window opens; one that fails fails the
    /// rollout (which is reverted), else `next` stands.
    async fn post_promotion(&mut self, next: Decision) -> Result<Decision, ReconcileError> {
        let hooks = self.input.hooks.ordered(crate::hooks::When::PostPromotion);
        let run = self
            .input
            .hooks
            .run(&self.input.revision, self.input.previous.as_ref());
        let Some(failure) = self.fx.run_hooks(&hooks, &run).await? else {
            return Ok(next);
        };
        let observation = Observation::HookFailed {
            hook: failure.hook,
            detail: failure.message,
        };
        let (milestone, decision) = self.rollout.observe(observation, Utc::now());
        self.reached(milestone).await?;
        Ok(decision)
    }

    async fn succeed(&mut self) -> Result<Ending, ReconcileError> {
        end_healthy(self.fx, &self.input).await
    }

    async fn fail(&mut self, reason: String, cause: String) -> Result<Ending, ReconcileError> {
        let revision = self.input.revision.clone();
        journal_failure(self.fx, &revision, &reason, &cause).await?;
        Ok(Ending::Failed {
            reason,
            cause,
            baseline: self.baseline.clone(),
        })
    }
}

/// Ends a rollout that proved healthy: the drift it put back journaled, ownership settled,
/// `healthy` journaled.
pub(super) async fn end_healthy<T: Target, P: CheckRunner>(
    fx: &mut Effects<'_, T, P>,
    input: &RolloutInput,
) -> Result<Ending, ReconcileError> {
    fx.drift_corrected(&input.revision, &input.plan).await?;
    fx.settle(&input.desired, &input.plan.orphaned).await?;
    fx.journal(Event::Healthy {
        revision: input.revision.clone(),
    })
    .await?;
    tracing::info!(env = %fx.config.name, revision = %input.revision.short(), "rollout healthy");
    Ok(Ending::Healthy {
        changes: change_records(&input.plan.changes),
    })
}

/// Journals and counts a failed rollout.
pub(crate) async fn journal_failure<T: Target, P: CheckRunner>(
    fx: &mut Effects<'_, T, P>,
    revision: &Revision,
    reason: &str,
    cause: &str,
) -> Result<(), ReconcileError> {
    fx.journal(Event::RolloutFailed {
        revision: revision.clone(),
        reason: reason.to_string(),
        cause: Some(cause.to_string()),
    })
    .await?;
    fx.metrics.rollout_failed(&fx.config.name, cause);
    tracing::error!(env = %fx.config.name, revision = %revision.short(), %reason, "rollout failed");
    Ok(())
}

/// Journals that the cluster could not take a write of `revision`'s rollout: it ends
/// blocked, the revision not blamed, and the caller undoes what was written.
pub(super) async fn end_blocked<T: Target, P: CheckRunner>(
    fx: &mut Effects<'_, T, P>,
    revision: &Revision,
    reason: String,
    baseline: &[Baseline],
) -> Result<Ending, ReconcileError> {
    fx.journal(Event::Blocked {
        revision: revision.clone(),
        reason: reason.clone(),
    })
    .await?;
    tracing::warn!(env = %fx.config.name, revision = %revision.short(), %reason, "the cluster refused a write; undoing the rollout without blaming the revision");
    Ok(Ending::Blocked {
        reason,
        baseline: baseline.to_vec(),
    })
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // the fixture writes its config file
#[path = "driver_tests.rs"]
pub(super) mod tests;
