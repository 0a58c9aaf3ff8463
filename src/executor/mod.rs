//! Carries out an environment's next step, as its journal and the branch tip say: a rollout
//! (through [`driver`]), a revert, in-place convergence, or a hold. Every decision is
//! journaled before it is acted on.

mod blue_green;
mod driver;
mod effects;
mod error;
mod hooks;
mod revert;
mod unwind;
mod writes;

use chrono::Utc;

pub use driver::{Driver, Ending, RolloutInput};
pub use effects::Effects;
pub use error::{Outcome, ReconcileError};
pub use writes::change_records;

use crate::backend::Target;
use crate::canary::{self, RolloutSpec};
use crate::desired::{DesiredError, empty_revision_problem, load_with_hooks};
use crate::gates::Gates;
use crate::history::{History, NextStep, Resume, RevertInFlight};
use crate::hooks::{ObjectHook, When};
use crate::journal::{Event, JournalError};
use crate::model::{Action, KindRef, Object, ResourceKey, Revision};
use crate::plan::{self, Compare, Desired, Plan};
use crate::preview;
use crate::rollout::Strategy;
use crate::source::GitSource;
use blue_green::BlueGreenDriver;
use hooks::HookSet;
use writes::{confirm_drift, plan_writes};

/// One environment's pass: what it acts through, and where its revisions come from.
pub struct EnvironmentRun<'a, T: Target> {
    pub fx: Effects<'a, T>,
    pub source: &'a GitSource,
    /// What can hold a new rollout back: window, upstream, approval.
    pub gates: &'a Gates,
}

impl<T: Target> EnvironmentRun<'_, T> {
    /// Brings the environment toward the branch tip `tip`, as its journal says is next, and
    /// records whether the cluster is blocking it.
    pub async fn pass(&mut self, tip: &Revision) -> Result<Outcome, ReconcileError> {
        let result = self.next(tip).await;
        let blocked = self
            .fx
            .journal
            .with_history(|history| history.blocked.clone());
        match (&result, blocked) {
            (Err(error), blocked) => {
                if let Some(reason) = error.blocked_reason() {
                    self.fx.metrics.set_blocked(&self.fx.config.name, true);
                    let revision = match error {
                        ReconcileError::Blocked { revision, .. } => revision.clone(),
                        _ => tip.clone(),
                    };
                    if blocked != Some((revision.clone(), reason.clone())) {
                        tracing::warn!(env = %self.fx.config.name, revision = %revision.short(), %reason, "blocked by the cluster; the revision is not blamed");
                        self.fx.journal(Event::Blocked { revision, reason }).await?;
                    }
                }
            }
            (Ok(_), blocked) => {
                self.fx.metrics.set_blocked(&self.fx.config.name, false);
                if blocked.is_some() {
                    self.fx
                        .journal(Event::Unblocked {
                            revision: tip.clone(),
                        })
                        .await?;
                }
            }
        }
        result
    }

    /// A tip whose environment folder holds the same files as `healthy`, the revision the
    /// last pass found nothing to do for, while live state is as that pass left it (the
    /// caller compared the target's fingerprint): when the journal says a rollout of the tip
    /// from `healthy` is next, that rollout would change nothing, so the tip is journaled
    /// healthy without reading or planning either. `None` where a full pass is needed: a
    /// rendered or decrypted folder (its output may depend on more than the folder), signed
    /// commits to check, a gate, or a folder that changed.
    pub async fn promote_same_folder(
        &mut self,
        tip: &Revision,
        healthy: &Revision,
    ) -> Result<Option<Outcome>, ReconcileError> {
        let config = self.fx.config;
        if config.render.is_some() || config.decryption.is_some() || self.source.verifies() {
            return Ok(None);
        }
        let history = self.fx.journal.with_history(History::clone);
        match history.next_step(tip, self.gates, Utc::now()) {
            NextStep::Rollout {
                revision,
                previous: Some(previous),
            } if &revision == tip && &previous == healthy => {}
            _ => return Ok(None),
        }
        let (source, path) = (self.source.clone(), config.path.clone());
        let (at, from) = (tip.clone(), healthy.clone());
        let same = crate::blocking::off_thread(
            "comparing an environment folder at two revisions",
            move || {
                Ok::<_, crate::source::SourceError>(
                    source.folder_id(&at, &path)? == source.folder_id(&from, &path)?,
                )
            },
        )
        .await??;
        if !same {
            return Ok(None);
        }
        tracing::debug!(env = %config.name, revision = %tip.short(), from = %healthy.short(), "the folder and live state are unchanged; the tip is healthy");
        self.fx
            .journal(Event::Healthy {
                revision: tip.clone(),
            })
            .await?;
        Ok(Some(Outcome::Unchanged {
            revision: tip.clone(),
        }))
    }

    async fn next(&mut self, tip: &Revision) -> Result<Outcome, ReconcileError> {
        if let Err(unverified) = self.verify(tip).await? {
            return self.refuse_unverified(tip, unverified).await;
        }
        self.next_verified(tip).await
    }

    /// Checks the tip's signatures as `[repo.verify]` asks (nothing to check without it).
    async fn verify(
        &self,
        tip: &Revision,
    ) -> Result<Result<(), crate::source::git::Unverified>, ReconcileError> {
        if !self.source.verifies() {
            return Ok(Ok(()));
        }
        let base = self
            .fx
            .journal
            .with_history(|history| history.last_healthy.clone());
        Ok(self.source.verify_off_thread(tip, base.as_ref()).await?)
    }

    /// The tip did not verify: it is journaled (once), counted and announced, and the
    /// environment stays at its last verified revision, still corrected for drift.
    async fn refuse_unverified(
        &mut self,
        tip: &Revision,
        unverified: crate::source::git::Unverified,
    ) -> Result<Outcome, ReconcileError> {
        let history = self.fx.journal.with_history(History::clone);
        let reason = unverified.to_string();
        if history.unverified != Some((tip.clone(), reason.clone())) {
            tracing::error!(env = %self.fx.config.name, revision = %tip.short(), %reason, "revision refused: signature did not verify");
            self.fx.metrics.verify_failed(&self.fx.config.name);
            self.fx
                .journal(Event::VerifyFailed {
                    revision: tip.clone(),
                    commit: unverified.commit.clone(),
                    reason,
                })
                .await?;
        }
        // The last healthy revision was verified when it rolled out: carry on from there.
        if let Some(verified) = history.last_healthy.clone().filter(|r| r != tip) {
            self.next_verified(&verified).await?;
        }
        Err(ReconcileError::Unverified {
            revision: tip.clone(),
            unverified,
        })
    }

    async fn next_verified(&mut self, tip: &Revision) -> Result<Outcome, ReconcileError> {
        // At most: finish an interrupted revert, then act on the tip.
        for _ in 0..2 {
            let history = self.fx.journal.with_history(History::clone);
            match history.next_step(tip, self.gates, Utc::now()) {
                NextStep::Revert(revert) => {
                    let resumed = history.reverting.is_some();
                    self.revert(&revert, resumed).await?;
                    if revert.failed {
                        return Err(ReconcileError::RolledBack {
                            revision: revert.revision,
                            to: revert.to,
                            reason: revert.reason,
                        });
                    }
                }
                NextStep::Hold { failed, at } => {
                    if let Some(at) = &at {
                        self.converge(at).await?;
                    }
                    return Ok(Outcome::Held { failed, at });
                }
                NextStep::Converge(revision) => return self.converge(&revision).await,
                NextStep::Pinned(revision) => {
                    self.converge(&revision).await?;
                    return Ok(Outcome::Pinned { revision });
                }
                NextStep::Wait { reason } => {
                    tracing::debug!(%reason, "holding");
                    return Ok(Outcome::Waiting { reason });
                }
                NextStep::Rollout { revision, previous } => {
                    return self.rollout(&revision, previous, None).await;
                }
                NextStep::Resume(resume) => {
                    let phase = history
                        .in_flight
                        .as_ref()
                        .is_some_and(|f| f.phase.is_some());
                    if let Some(revert) = self.blue_green_interrupted(&resume, phase).await? {
                        self.revert(&revert, false).await?;
                        continue;
                    }
                    let (revision, previous) = (resume.revision.clone(), resume.previous.clone());
                    return self.rollout(&revision, previous, Some(resume)).await;
                }
            }
        }
        Err(ReconcileError::Revert {
            revision: tip.clone(),
            to: tip.clone(),
            message: "the journal still shows a revert in flight after finishing it".into(),
        })
    }

    /// The revision's objects, and apart its hook objects.
    async fn desired(
        &mut self,
        revision: &Revision,
    ) -> Result<(Vec<Desired>, Vec<ObjectHook>), ReconcileError> {
        match load_with_hooks(self.source, self.fx.config, revision, self.fx.target).await {
            Ok(desired) => Ok(desired),
            Err(DesiredError::Manifests(errors)) => {
                self.reject(revision, errors.0.iter().map(ToString::to_string).collect())
                    .await?;
                Err(ReconcileError::Rejected {
                    revision: revision.clone(),
                    errors,
                })
            }
            Err(DesiredError::Source(error)) => Err(error.into()),
            Err(DesiredError::Scopes(error)) => Err(ReconcileError::Live(error)),
            Err(DesiredError::Stopped(error)) => Err(error.into()),
            Err(DesiredError::Render(error)) => Err(ReconcileError::Render(error)),
        }
    }

    /// Journals a rejection once per revision.
    async fn reject(
        &mut self,
        revision: &Revision,
        problems: Vec<String>,
    ) -> Result<(), JournalError> {
        if !self.fx.journal.last_rejected_is(revision) {
            self.fx
                .journal(Event::Rejected {
                    revision: revision.clone(),
                    problems,
                })
                .await?;
        }
        Ok(())
    }

    /// Live objects of every type the environment uses or has used. New types are added to
    /// the inventory in the journal before anything of them is applied.
    async fn live(
        &mut self,
        desired: &[Desired],
        revision: &Revision,
    ) -> Result<Vec<Object>, ReconcileError> {
        let known = self
            .fx
            .journal
            .with_history(|history| history.kinds.clone());
        let mut kinds = known.clone();
        kinds.extend(desired.iter().filter_map(|d| KindRef::of(&d.body)));
        if kinds != known {
            self.fx
                .journal(Event::Inventory {
                    revision: revision.clone(),
                    kinds: kinds.iter().cloned().collect(),
                })
                .await?;
        }
        let live = self
            .fx
            .target
            .list(&kinds)
            .await
            .map_err(ReconcileError::Live)?;
        self.fx.live_templates = live
            .iter()
            .filter(|object| object.key.group == "apps" && object.key.kind == "Deployment")
            .map(|object| (object.key.clone(), canary::LiveTemplate::of(object)))
            .collect();
        Ok(live)
    }

    fn compare(&self) -> Compare {
        self.fx.target.compare()
    }

    /// The revision's desired objects, the live ones, and the plan between them. Refuses an
    /// empty revision over live objects, and objects another owner holds.
    async fn plan_for(
        &mut self,
        revision: &Revision,
    ) -> Result<(Vec<Desired>, Vec<Object>, Plan, Vec<ObjectHook>), ReconcileError> {
        let (desired, hooks) = self.desired(revision).await?;
        let live = self.live(&desired, revision).await?;
        if let Some(problem) = empty_revision_problem(self.fx.config, desired.len(), live.len()) {
            self.reject(revision, vec![problem.clone()]).await?;
            return Err(ReconcileError::Empty {
                revision: revision.clone(),
                problem,
            });
        }
        let mut plan = plan::plan(&desired, &live, self.fx.config.prune, self.compare());
        self.refuse_foreign(revision, &plan).await?;
        confirm_drift(
            self.fx.target,
            &mut plan,
            &live,
            &self.fx.config.name,
            revision,
        )
        .await
        .map_err(ReconcileError::Live)?;
        for orphan in &plan.orphaned {
            tracing::warn!(object = %orphan, "owned object is gone from git but prune is off; leaving it");
        }
        Ok((desired, live, plan, hooks))
    }

    /// Fails the pass, before anything is written, when an object it would create lives
    /// under another owner.
    async fn refuse_foreign(
        &mut self,
        revision: &Revision,
        plan: &Plan,
    ) -> Result<(), ReconcileError> {
        let creates: Vec<ResourceKey> = plan
            .changes
            .iter()
            .filter(|change| change.action() == Action::Create)
            .map(|change| change.key().clone())
            .collect();
        let foreign = self
            .fx
            .target
            .foreign_owners(&creates)
            .await
            .map_err(ReconcileError::Live)?;
        if foreign.is_empty() {
            return Ok(());
        }
        let problems: Vec<String> = foreign
            .iter()
            .map(|found| {
                format!(
                    "{} is live and held by {}; not taking it over (set adopt = true on the target to take it)",
                    found.key, found.owner
                )
            })
            .collect();
        self.reject(revision, problems.clone()).await?;
        Err(ReconcileError::Ownership {
            revision: revision.clone(),
            problems: problems.join("; "),
        })
    }

    /// Puts back anything that differs from a healthy revision, in place.
    async fn converge(&mut self, revision: &Revision) -> Result<Outcome, ReconcileError> {
        let (desired, _, plan, _) = self.plan_for(revision).await?;
        if plan.is_empty() {
            self.fx.settle(&desired, &plan.orphaned).await?;
            return Ok(Outcome::Unchanged {
                revision: revision.clone(),
            });
        }
        let changes = change_records(&plan.changes);
        self.fx
            .journal(Event::ReconcileStarted {
                revision: revision.clone(),
                changes: changes.clone(),
            })
            .await?;
        tracing::info!(revision = %revision.short(), changes = changes.len(), "live state drifted; putting it back");
        let writes = plan_writes(&plan);
        if let Err((applied, source)) = self.fx.write_all(&writes, |_| revision.clone()).await {
            self.fx
                .journal(Event::ReconcileFailed {
                    revision: revision.clone(),
                    applied,
                    error: source.to_string(),
                })
                .await?;
            return Err(ReconcileError::Apply {
                revision: revision.clone(),
                applied,
                planned: writes.len(),
                source,
            });
        }
        self.fx
            .journal(Event::ReconcileFinished {
                revision: revision.clone(),
                changes: changes.clone(),
            })
            .await?;
        self.fx.drift_corrected(revision, &plan).await?;
        self.fx.settle(&desired, &plan.orphaned).await?;
        Ok(Outcome::Converged {
            revision: revision.clone(),
            changes,
        })
    }

    /// Rolls `revision` out through its steps (or resumes it), and reverts it when it fails.
    async fn rollout(
        &mut self,
        revision: &Revision,
        previous: Option<Revision>,
        resume: Option<Resume>,
    ) -> Result<Outcome, ReconcileError> {
        let (desired, live, plan, hook_objects) = self.plan_for(revision).await?;
        let before = self.before(previous.as_ref()).await;
        let hook_set = HookSet::new(&self.fx.config.hooks, hook_objects, self.source.state_dir());
        let hooks_changed = hook_set.objects != before.1;
        if plan.is_empty() && !hooks_changed && resume.is_none() {
            // Nothing to roll out (e.g. a commit outside this environment's folder).
            self.fx.settle(&desired, &plan.orphaned).await?;
            self.fx
                .journal(Event::Healthy {
                    revision: revision.clone(),
                })
                .await?;
            return Ok(Outcome::Unchanged {
                revision: revision.clone(),
            });
        }
        if resume.is_none() {
            self.pre_rollout_hooks(revision, previous.as_ref(), &hook_set)
                .await?;
        }
        let spec = canary::split(&plan, &desired, &live, &before.0);
        let strategies = match resume {
            None => self.strategies(revision, &desired, &spec).await?,
            Some(_) => None,
        };
        let input = RolloutInput {
            revision: revision.clone(),
            previous: previous.clone(),
            desired,
            live,
            plan,
            spec,
            hooks: hook_set,
        };
        let ending = match resume {
            Some(resume) => {
                Driver::resume(&mut self.fx, input, resume)
                    .await?
                    .run()
                    .await?
            }
            None if let Some(strategies) = strategies => {
                let services = self
                    .preview_services(&input, &strategies.blue_green)
                    .await?;
                BlueGreenDriver::begin(&mut self.fx, input, strategies, services)
                    .await?
                    .run()
                    .await?
            }
            None => Driver::begin(&mut self.fx, input).await?.run().await?,
        };
        self.ended(revision, previous, ending).await
    }

    /// The pre-rollout hooks of a rollout that starts; one that fails holds the revision
    /// before anything of it was applied (there is nothing to revert).
    async fn pre_rollout_hooks(
        &mut self,
        revision: &Revision,
        previous: Option<&Revision>,
        hook_set: &HookSet,
    ) -> Result<(), ReconcileError> {
        let Some(failure) = self
            .fx
            .run_hooks(
                &hook_set.ordered(When::PreRollout),
                &hook_set.run(revision, previous),
            )
            .await?
        else {
            return Ok(());
        };
        let reason = format!(
            "pre-rollout hook {} failed: {}",
            failure.hook, failure.message
        );
        driver::journal_failure(
            &mut self.fx,
            revision,
            &reason,
            crate::rollout::cause::HOOK_FAILED,
        )
        .await?;
        Err(ReconcileError::HookFailed {
            revision: revision.clone(),
            reason,
        })
    }

    /// What a rollout's ending leads to: a failed or blocked one is reverted.
    async fn ended(
        &mut self,
        revision: &Revision,
        previous: Option<Revision>,
        ending: Ending,
    ) -> Result<Outcome, ReconcileError> {
        match ending {
            Ending::Healthy { changes } => Ok(Outcome::RolledOut {
                revision: revision.clone(),
                changes,
            }),
            Ending::Failed {
                reason, baseline, ..
            } => {
                let Some(to) = previous else {
                    tracing::error!(env = %self.fx.config.name, revision = %revision.short(), "first deploy failed: nothing to revert to; holding");
                    return Err(ReconcileError::FirstDeployFailed {
                        revision: revision.clone(),
                        reason,
                    });
                };
                let revert = RevertInFlight {
                    revision: revision.clone(),
                    to: to.clone(),
                    reason: reason.clone(),
                    failed: true,
                    baseline,
                };
                self.revert(&revert, false).await?;
                Err(ReconcileError::RolledBack {
                    revision: revision.clone(),
                    to,
                    reason,
                })
            }
            Ending::Blocked { reason, baseline } => {
                // The partial step is undone; the revision is tried again with backoff.
                if let Some(to) = previous {
                    let revert = RevertInFlight {
                        revision: revision.clone(),
                        to,
                        reason: format!("blocked: {reason}"),
                        failed: false,
                        baseline,
                    };
                    self.revert(&revert, false).await?;
                }
                Err(ReconcileError::Blocked {
                    revision: revision.clone(),
                    reason,
                })
            }
        }
    }

    /// How this rollout runs: blue/green (`Some`) when a Deployment whose template changes
    /// asks for it (its `gitopsd.io/strategy` annotation, else the environment's strategy),
    /// mixed when others step as canaries beside it; canary steps (`None`) when none does. A
    /// mix whose two kinds share a Service or a changed config is refused (journaled
    /// `rejected`); StatefulSets and DaemonSets asking for blue-green were refused with their
    /// file when the revision was read. A Deployment whose old pods lack the stable track
    /// label rolls out through canary steps instead, with a warning (and so does the rest).
    async fn strategies(
        &mut self,
        revision: &Revision,
        desired: &[Desired],
        spec: &RolloutSpec,
    ) -> Result<Option<preview::Strategies>, ReconcileError> {
        let strategies = match preview::by_strategy(spec, desired, self.fx.config.rollout.strategy)
        {
            Ok(strategies) if strategies.blue_green() => strategies,
            Ok(_) => return Ok(None),
            Err(mixed) => {
                let problem = mixed.to_string();
                self.reject(revision, vec![problem.clone()]).await?;
                return Err(ReconcileError::Strategy {
                    revision: revision.clone(),
                    problems: problem,
                });
            }
        };
        let untracked: Vec<String> = strategies
            .blue_green
            .canaries
            .iter()
            .filter_map(|unit| {
                let live = self.fx.live_templates.get(&unit.desired.key);
                preview::can_run_blue_green(&unit.desired.key, live).err()
            })
            .map(|problem| problem.to_string())
            .collect();
        if !untracked.is_empty() {
            tracing::warn!(env = %self.fx.config.name, revision = %revision.short(), problems = ?untracked, "blue-green is not possible for this rollout; using canary steps");
            return Ok(None);
        }
        Ok(Some(strategies))
    }

    /// The Services a blue/green rollout writes; a `preview_service` the revision does not
    /// declare rejects it (journaled `rejected`) before anything is written.
    async fn preview_services(
        &mut self,
        input: &RolloutInput,
        blue_green: &RolloutSpec,
    ) -> Result<preview::PreviewServices, ReconcileError> {
        let deployments: Vec<&Desired> = blue_green.canaries.iter().map(|u| &u.desired).collect();
        let named = self.fx.config.rollout.preview_service.as_deref();
        match preview::PreviewServices::of(&input.desired, &deployments, named) {
            Ok(services) => Ok(services),
            Err(problem) => {
                let problem = problem.to_string();
                self.reject(&input.revision, vec![problem.clone()]).await?;
                Err(ReconcileError::Strategy {
                    revision: input.revision.clone(),
                    problems: problem,
                })
            }
        }
    }

    /// A blue/green rollout a restart interrupted is reverted (not blamed) and started over:
    /// which Service selects which pods is read again from nothing but git. A rollout is taken
    /// for one when it journaled a blue/green phase, or may have been about to: the
    /// environment's strategy is blue-green, or a Deployment of the revision asks for it.
    async fn blue_green_interrupted(
        &mut self,
        resume: &Resume,
        phase: bool,
    ) -> Result<Option<RevertInFlight>, ReconcileError> {
        let Some(to) = resume.previous.clone() else {
            return Ok(None);
        };
        let blue_green = phase
            || self.fx.config.rollout.strategy == Strategy::BlueGreen
            || self
                .desired(&resume.revision)
                .await?
                .0
                .iter()
                .any(|desired| {
                    desired.key.kind == "Deployment"
                        && preview::strategy_of(&desired.body, Strategy::Canary)
                            == Strategy::BlueGreen
                });
        Ok(blue_green.then(|| RevertInFlight {
            revision: resume.revision.clone(),
            to,
            reason: "blue-green rollout interrupted by a restart; starting it over".into(),
            failed: false,
            baseline: resume.baseline.clone(),
        }))
    }

    /// The manifests the stables were applied from (what they are written from during
    /// steps), and the previous revision's hook objects.
    async fn before(&self, previous: Option<&Revision>) -> (Vec<Desired>, Vec<ObjectHook>) {
        let Some(previous) = previous else {
            return (Vec::new(), Vec::new());
        };
        match load_with_hooks(self.source, self.fx.config, previous, self.fx.target).await {
            Ok(before) => before,
            Err(error) => {
                tracing::warn!(%error, previous = %previous.short(), "cannot read the previous revision; stables are written from their live bodies");
                (Vec::new(), Vec::new())
            }
        }
    }
}
