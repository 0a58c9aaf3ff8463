//! The blue/green driver: takes one decision at a time from the pure state machine
//! ([`BlueGreen`]), journals it, carries it out through [`Effects`], and says how the rollout
//! ended. The preview of a changed Deployment is its canary at full size (or at most
//! `preview_replicas`, scaled up before the switch); the active Services are pinned to the old
//! pods, switched to the new ones in one write each (once approved, without `auto_promote`),
//! and given back as git wrote them once the Deployments run the new template. A rollout that
//! ends while the old pods are all up moves the Services back to them and drains the preview
//! first; [`super::unwind`] does the same for a revert after a restart. In a mixed rollout the
//! canary workloads step beside the preview and are promoted right after the switch.

use std::ops::ControlFlow;

use chrono::{DateTime, Utc};

use super::driver::{Ending, RolloutInput, end_blocked, end_healthy, journal_failure};
use super::effects::Effects;
use super::error::ReconcileError;
use super::unwind::drain;
use super::writes::{Write, applied_keys, baseline, change_records, ordered};
use crate::backend::{FailureClass, Target, TargetError};
use crate::blue_green::{BlueGreen, BlueGreenTiming, Decision, Milestone, Observation};
use crate::canary::{self, RolloutSpec, canary_key};
use crate::health::HealthTracker;
use crate::history::History;
use crate::journal::{Baseline, Event};
use crate::model::{ResourceKey, Revision};
use crate::plan::Desired;
use crate::preview::{self, PreviewServices, Strategies};
use crate::probe::CheckRunner;
use crate::rollout::cause;

/// What one decision led to: the next decision (with the milestone reached on the way), or
/// the end of the rollout.
type Step = ControlFlow<Ending, (Option<Milestone>, Decision)>;

/// Carries one blue/green rollout through its phases.
pub struct BlueGreenDriver<'d, 'a, T: Target, P: CheckRunner> {
    fx: &'d mut Effects<'a, T, P>,
    input: RolloutInput,
    machine: BlueGreen,
    baseline: Vec<Baseline>,
    tracker: HealthTracker,
    /// The Services selecting a previewed Deployment's pods, and the preview Services.
    services: PreviewServices,
    /// The previews as first written: at most `preview_replicas` pods each.
    previews: Vec<Desired>,
    /// What readiness waits for.
    waiting: Vec<ResourceKey>,
    /// Whose pods are watched for breakage while checks run.
    watched: Vec<ResourceKey>,
    /// The active Services select only the old pods: the preview can go before a revert.
    pinned: bool,
    /// No write of the scale-down went through: the old pods are all up, so a failure can
    /// still move the active Services back to them.
    old_pods_up: bool,
    /// `switched_back` is journaled for this rollout.
    switched_back: bool,
    /// Mixed: the workloads stepped as canaries beside the preview (none: plain blue/green).
    stepped: RolloutSpec,
    /// Mixed: the stables the current canary step scales down once its canaries are ready.
    shrinking: Vec<Desired>,
}

impl<'d, 'a, T: Target, P: CheckRunner> BlueGreenDriver<'d, 'a, T, P> {
    /// Starts a blue/green rollout, mixed when `strategies` also steps canaries (whose
    /// weights it then journals); journals `rollout_started` with the marks a revert restores.
    pub async fn begin(
        fx: &'d mut Effects<'a, T, P>,
        mut input: RolloutInput,
        strategies: Strategies,
        services: PreviewServices,
    ) -> Result<Self, ReconcileError> {
        let marks = baseline(&input.plan, &input.spec, &input.live);
        let canaries: Vec<String> = input
            .spec
            .canaries
            .iter()
            .map(|unit| unit.desired.key.to_string())
            .collect();
        let mixed = strategies.mixed();
        let steps = if mixed {
            fx.config.rollout.steps.clone()
        } else {
            vec![100]
        };
        fx.journal(Event::RolloutStarted {
            revision: input.revision.clone(),
            previous: input.previous.clone(),
            steps: steps.clone(),
            changes: change_records(&input.plan.changes),
            canaries: canaries.clone(),
            baseline: marks.clone(),
        })
        .await?;
        tracing::info!(env = %fx.config.name, revision = %input.revision.short(), previews = ?canaries, mixed, "blue-green rollout started");
        input.spec = strategies.blue_green;
        let rollout = &fx.config.rollout;
        let (previews, scale_up) = preview::sized(
            canary::canary_step(&input.spec, 100).apply,
            rollout.preview_replicas,
        );
        let timing = BlueGreenTiming {
            bake: rollout.bake,
            timeout: rollout.timeout,
            verify: rollout.verify,
            scale_down_delay: rollout.scale_down_delay,
            auto_promote: rollout.auto_promote,
            scale_up,
        };
        let machine = BlueGreen::mixed(timing, &steps, mixed);
        let tracker = HealthTracker::new(&fx.config.health);
        Ok(Self {
            fx,
            input,
            machine,
            baseline: marks,
            tracker,
            services,
            previews,
            waiting: Vec::new(),
            watched: Vec::new(),
            pinned: false,
            old_pods_up: true,
            switched_back: false,
            stepped: strategies.canary,
            shrinking: Vec::new(),
        })
    }

    /// Takes decisions until the rollout ends.
    pub async fn run(mut self) -> Result<Ending, ReconcileError> {
        let mut decision = self.machine.decision();
        loop {
            let step = match decision {
                Decision::StartPreview => self.start_preview().await?,
                Decision::AwaitReady { deadline } => self.await_ready(deadline).await?,
                Decision::Watch { until } => self.watch(until).await?,
                Decision::ScaleUp => self.scale_up().await?,
                Decision::Step { step, weight } => self.step(step, weight).await?,
                Decision::Shrink { .. } => self.shrink().await?,
                Decision::Switch => self.switch().await?,
                Decision::Promote => self.promote().await?,
                Decision::Retire => self.retire().await?,
                Decision::ScaleDown => self.scale_down().await?,
                Decision::Settle => self.settle().await?,
                Decision::SwitchBack => self.switch_back().await?,
                Decision::Succeed => ControlFlow::Break(self.succeed().await?),
                Decision::Revert { reason, cause } => {
                    ControlFlow::Break(self.fail(reason, cause).await?)
                }
                Decision::AwaitApproval => self.await_approval().await?,
            };
            match step {
                ControlFlow::Break(ending) => return Ok(ending),
                ControlFlow::Continue((milestone, next)) => {
                    // Hooks run once everything went to 100%: the switch, and in a mixed
                    // rollout the canaries' promotion.
                    let live = milestone
                        == Some(if self.stepped.has_canaries() {
                            Milestone::Promoted
                        } else {
                            Milestone::Switched
                        });
                    self.reached(milestone).await?;
                    decision = if live {
                        self.post_promotion(next).await?
                    } else {
                        next
                    };
                }
            }
        }
    }

    /// Whose pods are watched while checks run before the scale-down: the previews, and in a
    /// mixed rollout the canaries (or, once promoted, their stables) and the StatefulSets
    /// stepping their partition.
    fn watched_keys(&self, promoted: bool) -> Vec<ResourceKey> {
        let stepped = self.stepped.canaries.iter().map(|unit| {
            if promoted {
                unit.desired.key.clone()
            } else {
                canary_key(&unit.desired.key)
            }
        });
        self.input
            .spec
            .canaries
            .iter()
            .map(|unit| canary_key(&unit.desired.key))
            .chain(stepped)
            .chain(
                self.stepped
                    .partitioned
                    .iter()
                    .map(|unit| unit.desired.key.clone()),
            )
            .collect()
    }

    /// Journals `preview_started` (and in a mixed rollout the first canary step), then
    /// writes the active Services pinned to the old pods, the preview Services, the previews
    /// at full size, the first canary step's capacity, and every change with no canary
    /// meaning. The pins go first: Services are written before workloads.
    async fn start_preview(&mut self) -> Result<Step, ReconcileError> {
        let revision = self.input.revision.clone();
        let previews = if self.stepped.has_canaries() {
            self.input
                .spec
                .canaries
                .iter()
                .map(|unit| unit.desired.key.to_string())
                .collect()
        } else {
            Vec::new()
        };
        self.fx
            .journal(Event::PreviewStarted {
                revision: revision.clone(),
                previews,
            })
            .await?;
        tracing::info!(env = %self.fx.config.name, revision = %revision.short(), "preview started");
        let service_keys = self.services.keys();
        let mut apply = self.previews.clone();
        apply.extend(
            self.input
                .spec
                .immediate
                .iter()
                .filter_map(|change| change.desired())
                .filter(|desired| !service_keys.contains(&&desired.key))
                .cloned(),
        );
        if let Some(weight) = self.machine.steps().first().copied() {
            apply.extend(self.canary_step(0, weight).await?);
        }
        // Readiness waits for the previews and the other changes, not for the Services.
        self.waiting = apply.iter().map(|desired| desired.key.clone()).collect();
        apply.extend(self.services.active.iter().map(preview::pinned));
        apply.extend(self.services.previews());
        let writes = ordered(apply, Vec::new());
        self.watched = self.watched_keys(false);
        self.pinned = true;
        self.write(&writes, "preview writes").await
    }

    /// Mixed: journals canary step `step` and returns what it adds (the canaries at
    /// `weight`, the config copies, the StatefulSets' partitions); the stables it scales
    /// down are kept for [`Self::shrink`].
    async fn canary_step(
        &mut self,
        step: usize,
        weight: u8,
    ) -> Result<Vec<Desired>, ReconcileError> {
        self.fx
            .journal(Event::StepStarted {
                revision: self.input.revision.clone(),
                step,
                weight,
            })
            .await?;
        tracing::info!(env = %self.fx.config.name, revision = %self.input.revision.short(), step = step + 1, weight, "canary step started beside the preview");
        let objects = canary::canary_step(&self.stepped, weight);
        self.shrinking = objects.shrink;
        Ok(objects.apply)
    }

    /// Mixed: writes canary step `step` (after the first, which goes with the preview).
    async fn step(&mut self, step: usize, weight: u8) -> Result<Step, ReconcileError> {
        let apply = self.canary_step(step, weight).await?;
        self.waiting = apply.iter().map(|desired| desired.key.clone()).collect();
        let writes = ordered(apply, Vec::new());
        self.write(&writes, "canary step writes").await
    }

    /// Mixed: scales the stables down that the step's ready canaries replace.
    async fn shrink(&mut self) -> Result<Step, ReconcileError> {
        let writes = ordered(std::mem::take(&mut self.shrinking), Vec::new());
        self.write(&writes, "canary scale-downs").await
    }

    /// Mixed: right after the switch, journals the canaries' promotion step and gives their
    /// stables (and the StatefulSets) the new template and configs.
    async fn promote(&mut self) -> Result<Step, ReconcileError> {
        let step = self.machine.steps().len();
        self.fx
            .journal(Event::StepStarted {
                revision: self.input.revision.clone(),
                step,
                weight: 100,
            })
            .await?;
        tracing::info!(env = %self.fx.config.name, revision = %self.input.revision.short(), "promoting the canaries beside the switch");
        let writes = ordered(canary::promotion(&self.stepped).apply, Vec::new());
        self.waiting = applied_keys(&writes);
        self.watched = self.watched_keys(true);
        self.write(&writes, "promotion writes").await
    }

    /// Mixed: deletes the promoted canaries and their config copies.
    async fn retire(&mut self) -> Result<Step, ReconcileError> {
        let writes = ordered(Vec::new(), canary::promotion(&self.stepped).delete);
        self.write(&writes, "canary deletions").await
    }

    /// Scales the previews that run short of the full count up to it, before the switch.
    async fn scale_up(&mut self) -> Result<Step, ReconcileError> {
        tracing::info!(env = %self.fx.config.name, revision = %self.input.revision.short(), "scaling the preview up to the full count before the switch");
        let full: Vec<Desired> = canary::canary_step(&self.input.spec, 100)
            .apply
            .into_iter()
            .filter(|desired| desired.key.kind == "Deployment")
            .collect();
        self.waiting = full.iter().map(|desired| desired.key.clone()).collect();
        let writes = ordered(full, Vec::new());
        self.write(&writes, "preview scale-up writes").await
    }

    /// Journals `switched`, then moves each active Service's selector to the new pods in one
    /// write.
    async fn switch(&mut self) -> Result<Step, ReconcileError> {
        self.fx
            .journal(Event::Switched {
                revision: self.input.revision.clone(),
            })
            .await?;
        self.fx.metrics.switched(&self.fx.config.name, "switched");
        tracing::info!(env = %self.fx.config.name, revision = %self.input.revision.short(), "switching the active Services to the new pods");
        let writes = ordered(
            self.services.active.iter().map(preview::switched).collect(),
            vec![],
        );
        self.pinned = false;
        self.write(&writes, "switch writes").await
    }

    /// Journals `switched_back`, then moves each active Service's selector back to the old
    /// pods in one write.
    async fn switch_back(&mut self) -> Result<Step, ReconcileError> {
        let reason = match self.machine.phase() {
            crate::blue_green::Phase::SwitchBack { reason, .. } => reason.clone(),
            _ => String::new(),
        };
        self.journal_switched_back(reason).await?;
        let writes = ordered(
            self.services.active.iter().map(preview::pinned).collect(),
            vec![],
        );
        let step = self.write(&writes, "switch-back writes").await?;
        self.pinned = true;
        Ok(step)
    }

    /// Journals `scaled_down`, then gives the Deployments (and the configs they use) the new
    /// revision: their old pods are replaced while the active Services select the preview.
    async fn scale_down(&mut self) -> Result<Step, ReconcileError> {
        self.fx
            .journal(Event::ScaledDown {
                revision: self.input.revision.clone(),
            })
            .await?;
        tracing::info!(env = %self.fx.config.name, revision = %self.input.revision.short(), "scaling the old pods down");
        let writes = ordered(canary::promotion(&self.input.spec).apply, Vec::new());
        self.waiting = applied_keys(&writes);
        self.watched = self.watched_keys(true);
        self.watched.extend(
            self.input
                .spec
                .canaries
                .iter()
                .map(|unit| unit.desired.key.clone()),
        );
        self.write(&writes, "scale-down writes").await
    }

    /// Gives the active Services git's selectors back, then deletes the previews, their
    /// config copies, the preview Services and deferred deletions.
    async fn settle(&mut self) -> Result<Step, ReconcileError> {
        let mut delete = canary::promotion(&self.input.spec).delete;
        delete.extend(self.services.made_keys());
        let writes = ordered(self.services.as_in_git(), delete);
        self.write(&writes, "settling writes").await
    }

    async fn journal_switched_back(&mut self, reason: String) -> Result<(), ReconcileError> {
        self.fx
            .journal(Event::SwitchedBack {
                revision: self.input.revision.clone(),
                reason,
            })
            .await?;
        self.switched_back = true;
        self.fx
            .metrics
            .switched(&self.fx.config.name, "switched_back");
        tracing::warn!(env = %self.fx.config.name, revision = %self.input.revision.short(), "switching the active Services back to the old pods");
        Ok(())
    }

    async fn write(&mut self, writes: &[Write], what: &str) -> Result<Step, ReconcileError> {
        let revision = self.input.revision.clone();
        let result = self.fx.write_all(writes, |_| revision.clone()).await;
        if matches!(
            self.machine.phase(),
            crate::blue_green::Phase::ScaleDown { .. }
        ) && result
            .as_ref()
            .err()
            .is_none_or(|(applied, _)| *applied > 0)
        {
            self.old_pods_up = false;
        }
        let Err((applied, error)) = result else {
            return Ok(ControlFlow::Continue(
                self.machine.observe(Observation::Written, Utc::now()),
            ));
        };
        let reason = format!(
            "blue-green: {applied} of {} {what} done, then: {error}",
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
            return Ok(ControlFlow::Break(
                self.fail(reason, cause::REJECTED.into()).await?,
            ));
        }
        let revision = self.input.revision.clone();
        self.back_to_old_pods(&reason).await?;
        let blocked = end_blocked(self.fx, &revision, reason, &self.baseline).await?;
        if self.pinned {
            self.remove_previews(&revision).await?;
        }
        Ok(ControlFlow::Break(blocked))
    }

    async fn await_ready(&mut self, deadline: DateTime<Utc>) -> Result<Step, ReconcileError> {
        let keys = self.waiting.clone();
        let observation = self.fx.readiness(&keys, deadline).await?;
        Ok(ControlFlow::Continue(
            self.machine.observe(observation.into(), Utc::now()),
        ))
    }

    async fn watch(&mut self, until: DateTime<Utc>) -> Result<Step, ReconcileError> {
        let host = self.preview_host();
        let observation = self
            .fx
            .watch_checks_held(
                &mut self.tracker,
                &self.input.revision,
                &self.watched,
                until,
                host.as_deref(),
                |_| false,
            )
            .await?;
        Ok(ControlFlow::Continue(
            self.machine.observe(observation.into(), Utc::now()),
        ))
    }

    /// Runs the post-promotion hooks once the active Services select the new pods; one that
    /// fails switches back like a failed check, else `next` stands.
    async fn post_promotion(&mut self, next: Decision) -> Result<Decision, ReconcileError> {
        let hooks = self.input.hooks.ordered(crate::hooks::When::PostPromotion);
        let run = self
            .input
            .hooks
            .run(&self.input.revision, self.input.previous.as_ref());
        let Some(failure) = self.fx.run_hooks(&hooks, &run).await? else {
            return Ok(next);
        };
        let observation = crate::rollout::Observation::HookFailed {
            hook: failure.hook,
            detail: failure.message,
        };
        let (milestone, decision) = self.machine.observe(observation.into(), Utc::now());
        self.reached(milestone).await?;
        Ok(decision)
    }

    /// Journals `awaiting_approval`, then runs the checks and watches the preview's pods
    /// until an operator approves the revision (`gitopsd approve` or the API); a failure
    /// meanwhile fails the rollout as during the bake.
    async fn await_approval(&mut self) -> Result<Step, ReconcileError> {
        let revision = self.input.revision.clone();
        self.fx
            .journal(Event::AwaitingApproval {
                revision: revision.clone(),
            })
            .await?;
        tracing::info!(env = %self.fx.config.name, revision = %revision.short(), "preview ready and healthy; the switch waits for an approval: gitopsd approve --env {} {}", self.fx.config.name, revision.short());
        let host = self.preview_host();
        let approved = |history: &History| {
            history
                .in_flight
                .as_ref()
                .is_some_and(|flight| flight.revision == revision && flight.switch_approved)
        };
        let observation = self
            .fx
            .watch_checks_held(
                &mut self.tracker,
                &self.input.revision,
                &self.watched,
                Utc::now(),
                host.as_deref(),
                |history| !approved(history),
            )
            .await?;
        let observation = match observation {
            crate::rollout::Observation::Tick => Observation::Approved,
            other => other.into(),
        };
        if observation == Observation::Approved {
            tracing::info!(env = %self.fx.config.name, revision = %self.input.revision.short(), "switch approved");
        }
        Ok(ControlFlow::Continue(
            self.machine.observe(observation, Utc::now()),
        ))
    }

    /// What `{preview}` in a check's URL names: the preview Service, which selects only the
    /// new pods until the end of the rollout (else the active Service).
    fn preview_host(&self) -> Option<String> {
        self.services
            .preview_host()
            .or_else(|| self.services.active_host())
    }

    /// Logs a milestone, and journals a mixed rollout's canary steps and promotion; the
    /// decisions journal the other records.
    async fn reached(&mut self, milestone: Option<Milestone>) -> Result<(), ReconcileError> {
        let (env, revision) = (&self.fx.config.name, self.input.revision.clone());
        match milestone {
            Some(Milestone::PreviewPassed) => {
                tracing::info!(env = %env, revision = %revision.short(), "preview ready and healthy")
            }
            Some(Milestone::StepPassed { step, weight }) => {
                tracing::info!(env = %env, revision = %revision.short(), step = step + 1, weight, "canary step passed beside the preview");
                self.fx
                    .journal(Event::StepPassed {
                        revision,
                        step,
                        weight,
                    })
                    .await?;
            }
            Some(Milestone::Switched) => {
                tracing::info!(env = %env, revision = %revision.short(), "switched; verifying")
            }
            Some(Milestone::Promoted) => {
                tracing::info!(env = %env, revision = %revision.short(), "canaries promoted beside the switch; verifying");
                self.fx.journal(Event::Promoted { revision }).await?;
            }
            Some(Milestone::SwitchedBack) => {
                tracing::warn!(env = %env, revision = %revision.short(), "switched back")
            }
            Some(Milestone::ScaledDown) => {
                tracing::info!(env = %env, revision = %revision.short(), "old pods scaled down")
            }
            Some(Milestone::Failed { .. } | Milestone::Succeeded) | None => {}
        }
        Ok(())
    }

    async fn succeed(&mut self) -> Result<Ending, ReconcileError> {
        end_healthy(self.fx, &self.input).await
    }

    /// While the old pods are all up but the active Services do not select only them (a
    /// switch or switch-back that did not go through, a refused scale-down): journals
    /// `switched_back` (once) and pins them to the old pods, one write each. A write the
    /// cluster refuses is logged; the revert then pins them before draining the preview.
    async fn back_to_old_pods(&mut self, reason: &str) -> Result<(), ReconcileError> {
        if !self.old_pods_up || self.pinned {
            return Ok(());
        }
        if !self.switched_back {
            self.journal_switched_back(reason.to_string()).await?;
        }
        let revision = self.input.revision.clone();
        let writes = ordered(
            self.services.active.iter().map(preview::pinned).collect(),
            vec![],
        );
        match self.fx.write_all(&writes, |_| revision.clone()).await {
            Ok(()) => self.pinned = true,
            Err((_, error)) => {
                tracing::warn!(env = %self.fx.config.name, %error, "could not switch the active Services back before the revert; the revert pins them");
            }
        }
        Ok(())
    }

    /// Journals `rollout_failed`. While the old pods are all up, the active Services are
    /// moved back to them first if need be, and the previews and preview Services deleted, so
    /// the revert that follows (which gives the Services git's selectors back) never sends
    /// traffic to them.
    async fn fail(&mut self, reason: String, cause: String) -> Result<Ending, ReconcileError> {
        let revision = self.input.revision.clone();
        self.back_to_old_pods(&reason).await?;
        journal_failure(self.fx, &revision, &reason, &cause).await?;
        if self.pinned {
            self.remove_previews(&revision).await?;
        }
        Ok(Ending::Failed {
            reason,
            cause,
            baseline: self.baseline.clone(),
        })
    }

    /// Scales the previews to zero and waits (within `timeout`) until none of their pods is
    /// left running, then deletes them, their config copies and the preview Services. A
    /// deleted Deployment's pods go only when the garbage collector gets to them, so without
    /// the drain the revert, which gives the active Services git's selectors back, could
    /// briefly select preview pods. A write that fails is left to the revert, which deletes
    /// them too.
    async fn remove_previews(&mut self, revision: &Revision) -> Result<(), ReconcileError> {
        let drained: Vec<Desired> = canary::canary_step(&self.input.spec, 100)
            .apply
            .into_iter()
            .filter(|desired| desired.key.kind == "Deployment")
            .collect();
        drain(self.fx, drained, revision).await?;
        let mut delete = canary::promotion(&self.input.spec).delete;
        delete.retain(|key| self.input.spec.deferred.iter().all(|d| d.key() != key));
        delete.extend(self.services.made_keys());
        let writes = ordered(Vec::new(), delete);
        if let Err((_, error)) = self.fx.write_all(&writes, |_| revision.clone()).await {
            tracing::warn!(env = %self.fx.config.name, %error, "could not remove the preview before the revert; the revert removes it");
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "blue_green_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "mixed_tests.rs"]
mod mixed_tests;
