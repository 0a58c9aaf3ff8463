//! Carries out an environment's next step: rollouts through canary steps with health checks,
//! reverts, and in-place convergence. Every decision is journaled before it is acted on.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use thiserror::Error;
use tokio::sync::watch;

use crate::backend::{DriftCheck, FailureClass, Target, TargetError};
use crate::canary::{self, CANARY_SUFFIX, RolloutSpec, StepObjects};
use crate::config::EnvironmentConfig;
use crate::gates::Gates;
use crate::health::HealthTracker;
use crate::heartbeat::{BEAT_INTERVAL, Heartbeat};
use crate::journal::{Baseline, ChangeRecord, DriftRecord, Event, JournalError, SharedJournal};
use crate::manifest::{self, ManifestErrors, ParseOptions, Scopes};
use crate::metrics::Metrics;
use crate::model::{ANNOTATION_HASH, ANNOTATION_REVISION, KindRef, Object, ResourceKey, Revision};
use crate::plan::{self, Action, Change, Compare, Desired, Plan, stage};
use crate::probe::Prober;
use crate::rollout::cause;
use crate::rollout::{
    Decision, History, Milestone, NextStep, Observation, Resume, RevertInFlight, Rollout, Timing,
};
use crate::source::{GitSource, RevertScope, SourceError};
use crate::webhook::Notifier;

/// How often readiness is polled while a step waits for it.
const READINESS_POLL: Duration = Duration::from_secs(1);

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
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("worker thread failed: {0}")]
    Worker(String),
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

/// Error while turning a revision into desired objects.
#[derive(Debug, Error)]
pub enum DesiredError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("{0}")]
    Manifests(ManifestErrors),
    #[error("looking up where types live: {0}")]
    Scopes(TargetError),
    #[error("{0}")]
    Render(crate::render::RenderError),
    #[error("worker thread failed: {0}")]
    Worker(String),
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

/// Reads an environment's documents at `revision`; a folder the revision does not have reads
/// as no documents (an empty revision, which the pass then judges).
async fn read_documents(
    source: &GitSource,
    environment: &EnvironmentConfig,
    revision: &Revision,
    keep_parsed: bool,
    threads: manifest::Threads,
) -> Result<manifest::Documents, DesiredError> {
    if let Some(render) = &environment.render {
        return read_rendered(source, environment, render, revision).await;
    }
    let source = source.clone();
    let revision = revision.clone();
    let path = environment.path.clone();
    // Reading blobs and parsing are CPU and disk work: off the async workers.
    let read = tokio::task::spawn_blocking(move || {
        let snapshot = source.snapshot(&revision, &path)?;
        Ok::<_, SourceError>(manifest::read_cached(
            &snapshot.files,
            snapshot.problems,
            &snapshot.limits,
            keep_parsed.then(|| source.parse_cache()),
            threads,
        ))
    })
    .await
    .map_err(|e| DesiredError::Worker(e.to_string()))?;
    match read {
        Ok(documents) => {
            tracing::debug!(env = %environment.name, parsed = documents.parsed_files, cached = documents.cached_files, "manifests read");
            Ok(documents)
        }
        Err(SourceError::MissingPath { .. }) => Ok(manifest::Documents::default()),
        Err(error) => Err(error.into()),
    }
}

/// Renders the environment at `revision` and reads the output as one manifest file named
/// after the command. A render that fails rejects the revision like a manifest problem.
async fn read_rendered(
    source: &GitSource,
    environment: &EnvironmentConfig,
    render: &crate::render::RenderConfig,
    revision: &Revision,
) -> Result<manifest::Documents, DesiredError> {
    use crate::render::{RenderError, Renderer};
    let renderer = Renderer::new(source.state_dir(), render.cache_max_bytes);
    match renderer
        .render(source, render, &environment.path, revision)
        .await
    {
        Ok(rendered) => {
            tracing::debug!(env = %environment.name, command = %rendered.command, cached = rendered.cached, bytes = rendered.output.len(), "rendered");
            let file = manifest::ManifestFile {
                path: format!("render `{}`", rendered.command),
                bytes: rendered.output,
                blob: None,
            };
            Ok(manifest::read_limited(
                &[file],
                Vec::new(),
                &source.limits(),
            ))
        }
        Err(RenderError::Failed(failure)) => Err(DesiredError::Manifests(ManifestErrors(vec![
            manifest::Problem::file(format!("render `{}`", failure.command), failure.message),
        ]))),
        Err(RenderError::Source(error)) => Err(DesiredError::Source(error)),
        Err(error) => Err(DesiredError::Render(error)),
    }
}

/// Settles namespaces, then holds every object to what the environment may touch: one
/// problem per object outside it, each with its file and document.
fn complete_located(
    documents: manifest::Documents,
    environment: &EnvironmentConfig,
    scopes: &Scopes,
) -> Result<Vec<(Desired, manifest::Problem)>, DesiredError> {
    let options = ParseOptions {
        default_namespace: environment.namespace.clone(),
    };
    let located = documents
        .complete_located(&options, scopes)
        .map_err(DesiredError::Manifests)?;
    let refused: Vec<manifest::Problem> = located
        .iter()
        .filter_map(|(object, at)| {
            let why = environment.policy.refusal(&object.key)?;
            Some(manifest::Problem {
                message: format!("not allowed in environment {}: {why}", environment.name),
                ..at.clone()
            })
        })
        .collect();
    if !refused.is_empty() {
        return Err(DesiredError::Manifests(ManifestErrors(refused)));
    }
    Ok(located
        .into_iter()
        .map(|(object, at)| (Desired::from_object(object), at))
        .collect())
}

fn complete(
    documents: manifest::Documents,
    environment: &EnvironmentConfig,
    scopes: &Scopes,
) -> Result<Vec<Desired>, DesiredError> {
    Ok(complete_located(documents, environment, scopes)?
        .into_iter()
        .map(|(desired, _)| desired)
        .collect())
}

/// Reads and validates an environment's desired objects at `revision`, with the scope of each
/// type as `target` knows it (discovery, for Kubernetes).
pub async fn load_desired<T: Target>(
    source: &GitSource,
    environment: &EnvironmentConfig,
    revision: &Revision,
    target: &T,
) -> Result<Vec<Desired>, DesiredError> {
    let (documents, scopes) = documents_and_scopes(source, environment, revision, target).await?;
    complete(documents, environment, &scopes)
}

/// Like [`load_desired`], each object with the file and document it comes from.
pub async fn load_located<T: Target>(
    source: &GitSource,
    environment: &EnvironmentConfig,
    revision: &Revision,
    target: &T,
) -> Result<Vec<(Desired, manifest::Problem)>, DesiredError> {
    let (documents, scopes) = documents_and_scopes(source, environment, revision, target).await?;
    complete_located(documents, environment, &scopes)
}

/// The documents at `revision`, read as `target` wants them kept, and the scopes of their types.
async fn documents_and_scopes<T: Target>(
    source: &GitSource,
    environment: &EnvironmentConfig,
    revision: &Revision,
    target: &T,
) -> Result<(manifest::Documents, Scopes), DesiredError> {
    let documents = read_documents(
        source,
        environment,
        revision,
        target.keeps_parsed_files(),
        manifest::Threads::One,
    )
    .await?;
    let scopes = target
        .scopes(&documents.kinds())
        .await
        .map_err(DesiredError::Scopes)?;
    Ok((documents, scopes))
}

/// Like [`load_desired`], without a target to ask: built-in kinds and CRDs in the revision.
pub async fn load_desired_offline(
    source: &GitSource,
    environment: &EnvironmentConfig,
    revision: &Revision,
) -> Result<Vec<Desired>, DesiredError> {
    // Offline reads are commands comparing revisions, which share most files.
    let documents = read_documents(
        source,
        environment,
        revision,
        true,
        manifest::Threads::EveryCore,
    )
    .await?;
    complete(documents, environment, &Scopes::offline())
}

/// Why a revision with no objects may not be applied over live ones; `None` when it may.
pub fn empty_revision_problem(
    environment: &EnvironmentConfig,
    desired: usize,
    live: usize,
) -> Option<String> {
    (desired == 0 && live > 0 && !environment.allow_empty).then(|| {
        format!(
            "{} holds no objects at this revision while environment {} has {live} live; a mistyped or removed folder must not delete everything (set allow_empty = true if it should)",
            environment.path, environment.name
        )
    })
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

/// Everything one environment's pass works with.
pub struct EnvironmentRun<'a, T: Target> {
    pub config: &'a EnvironmentConfig,
    pub source: &'a GitSource,
    pub target: &'a T,
    pub journal: &'a SharedJournal,
    /// What can hold a new rollout back: window, upstream, approval.
    pub gates: &'a Gates,
    pub prober: &'a Prober,
    /// Turns true when the process is asked to stop.
    pub shutdown: watch::Receiver<bool>,
    /// Beaten as the pass makes progress; the watchdog stops when it goes stale.
    pub heartbeat: Heartbeat,
    pub metrics: &'a Metrics,
    /// Told about rollout events; never blocks.
    pub notifier: &'a Notifier,
    /// The pod templates of live Deployments as last listed (see
    /// [`canary::mark_stable_track`]).
    pub live_templates: BTreeMap<ResourceKey, canary::LiveTemplate>,
}

/// One step of writing: apply or delete.
enum Write {
    Apply(Desired),
    Delete(ResourceKey),
}

impl Write {
    fn key(&self) -> &ResourceKey {
        match self {
            Write::Apply(desired) => &desired.key,
            Write::Delete(key) => key,
        }
    }
}

/// Applies in stage order, then deletes in reverse stage order.
fn ordered(mut applies: Vec<Desired>, mut deletes: Vec<ResourceKey>) -> Vec<Write> {
    applies.sort_by(|a, b| (stage(&a.key), &a.key).cmp(&(stage(&b.key), &b.key)));
    deletes.sort_by(|a, b| (stage(b), b).cmp(&(stage(a), a)));
    applies
        .into_iter()
        .map(Write::Apply)
        .chain(deletes.into_iter().map(Write::Delete))
        .collect()
}

fn applied_keys(writes: &[Write]) -> Vec<ResourceKey> {
    writes
        .iter()
        .filter_map(|write| match write {
            Write::Apply(desired) => Some(desired.key.clone()),
            Write::Delete(_) => None,
        })
        .collect()
}

/// The objects of a step at `weight`; the `first` step of a run also writes every change with
/// no canary meaning.
fn step_objects(spec: &RolloutSpec, first: bool, weight: u8) -> StepObjects {
    let mut objects = if weight < 100 {
        canary::canary_step(spec, weight)
    } else {
        canary::promotion(spec)
    };
    if first {
        objects.apply.extend(
            spec.immediate
                .iter()
                .filter_map(|change| change.desired().cloned()),
        );
    }
    objects
}

impl<T: Target> EnvironmentRun<'_, T> {
    fn journal(&mut self, event: Event) -> Result<(), JournalError> {
        let record = self.journal.append(event, Utc::now())?;
        self.notifier
            .event(&self.config.name, &record.event, record.time);
        Ok(())
    }

    /// Whether an operator paused the environment (the last pause or resume wins).
    fn paused(&self) -> bool {
        self.journal.with_history(|history| history.paused)
    }

    /// Brings the environment toward the branch tip `tip`, as its journal says is next, and
    /// records whether the cluster is blocking it.
    pub async fn pass(&mut self, tip: &Revision) -> Result<Outcome, ReconcileError> {
        let result = self.next(tip).await;
        let blocked = self.journal.with_history(|history| history.blocked.clone());
        match (&result, blocked) {
            (Err(error), blocked) => {
                if let Some(reason) = error.blocked_reason() {
                    self.metrics.set_blocked(&self.config.name, true);
                    let revision = match error {
                        ReconcileError::Blocked { revision, .. } => revision.clone(),
                        _ => tip.clone(),
                    };
                    if blocked != Some((revision.clone(), reason.clone())) {
                        tracing::warn!(env = %self.config.name, revision = %revision.short(), %reason, "blocked by the cluster; the revision is not blamed");
                        self.journal(Event::Blocked { revision, reason })?;
                    }
                }
            }
            (Ok(_), blocked) => {
                self.metrics.set_blocked(&self.config.name, false);
                if blocked.is_some() {
                    self.journal(Event::Unblocked {
                        revision: tip.clone(),
                    })?;
                }
            }
        }
        result
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
            .journal
            .with_history(|history| history.last_healthy.clone());
        let source = self.source.clone();
        let tip = tip.clone();
        let verified = tokio::task::spawn_blocking(move || source.verify(&tip, base.as_ref()))
            .await
            .map_err(|e| ReconcileError::Worker(e.to_string()))?;
        Ok(verified.map(|_| ()))
    }

    /// The tip did not verify: it is journaled (once), counted and announced, and the
    /// environment stays at its last verified revision, still corrected for drift.
    async fn refuse_unverified(
        &mut self,
        tip: &Revision,
        unverified: crate::source::git::Unverified,
    ) -> Result<Outcome, ReconcileError> {
        let history = self.journal.with_history(History::clone);
        let reason = unverified.to_string();
        if history.unverified != Some((tip.clone(), reason.clone())) {
            tracing::error!(env = %self.config.name, revision = %tip.short(), %reason, "revision refused: signature did not verify");
            self.metrics.verify_failed(&self.config.name);
            self.journal(Event::VerifyFailed {
                revision: tip.clone(),
                commit: unverified.commit.clone(),
                reason,
            })?;
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
            let history = self.journal.with_history(History::clone);
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

    async fn desired(&mut self, revision: &Revision) -> Result<Vec<Desired>, ReconcileError> {
        match load_desired(self.source, self.config, revision, self.target).await {
            Ok(desired) => Ok(desired),
            Err(DesiredError::Manifests(errors)) => {
                self.reject(revision, errors.0.iter().map(ToString::to_string).collect())?;
                Err(ReconcileError::Rejected {
                    revision: revision.clone(),
                    errors,
                })
            }
            Err(DesiredError::Source(error)) => Err(error.into()),
            Err(DesiredError::Scopes(error)) => Err(ReconcileError::Live(error)),
            Err(DesiredError::Worker(message)) => Err(ReconcileError::Worker(message)),
            Err(DesiredError::Render(error)) => Err(ReconcileError::Worker(error.to_string())),
        }
    }

    /// Journals a rejection once per revision.
    fn reject(&mut self, revision: &Revision, problems: Vec<String>) -> Result<(), JournalError> {
        if !self.journal.last_rejected_is(revision) {
            self.journal(Event::Rejected {
                revision: revision.clone(),
                problems,
            })?;
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
        let known = self.journal.with_history(|history| history.kinds.clone());
        let mut kinds = known.clone();
        kinds.extend(desired.iter().filter_map(|d| KindRef::of(&d.body)));
        if kinds != known {
            self.journal(Event::Inventory {
                revision: revision.clone(),
                kinds: kinds.iter().cloned().collect(),
            })?;
        }
        let live = self
            .target
            .list(&kinds)
            .await
            .map_err(ReconcileError::Live)?;
        self.live_templates = live
            .iter()
            .filter(|object| object.key.group == "apps" && object.key.kind == "Deployment")
            .map(|object| (object.key.clone(), canary::LiveTemplate::of(object)))
            .collect();
        Ok(live)
    }

    fn compare(&self) -> Compare {
        self.target.compare()
    }

    /// The revision's desired objects, the live ones, and the plan between them. Refuses an
    /// empty revision over live objects, and objects another owner holds.
    async fn plan_for(
        &mut self,
        revision: &Revision,
    ) -> Result<(Vec<Desired>, Vec<Object>, Plan), ReconcileError> {
        let desired = self.desired(revision).await?;
        let live = self.live(&desired, revision).await?;
        if let Some(problem) = empty_revision_problem(self.config, desired.len(), live.len()) {
            self.reject(revision, vec![problem.clone()])?;
            return Err(ReconcileError::Empty {
                revision: revision.clone(),
                problem,
            });
        }
        let mut plan = plan::plan(&desired, &live, self.config.prune, self.compare());
        self.refuse_foreign(revision, &plan).await?;
        confirm_drift(self.target, &mut plan, &live, &self.config.name, revision)
            .await
            .map_err(ReconcileError::Live)?;
        for orphan in &plan.orphaned {
            tracing::warn!(object = %orphan, "owned object is gone from git but prune is off; leaving it");
        }
        Ok((desired, live, plan))
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
        self.reject(revision, problems.clone())?;
        Err(ReconcileError::Ownership {
            revision: revision.clone(),
            problems: problems.join("; "),
        })
    }

    /// Records on the target that the environment now owns exactly the revision's objects
    /// (and, without prune, the ones it left behind).
    async fn settle(
        &self,
        desired: &[Desired],
        orphaned: &[ResourceKey],
    ) -> Result<(), ReconcileError> {
        let keys: Vec<ResourceKey> = desired
            .iter()
            .map(|d| d.key.clone())
            .chain(orphaned.iter().cloned())
            .collect();
        self.target
            .settle(&keys)
            .await
            .map_err(ReconcileError::Live)
    }

    /// Journals and counts the drift a pass put back.
    fn drift_corrected(&mut self, revision: &Revision, plan: &Plan) -> Result<(), JournalError> {
        let objects: Vec<DriftRecord> = plan
            .changes
            .iter()
            .filter_map(|change| {
                Some(DriftRecord {
                    object: change.key().to_string(),
                    fields: change.drift()?.to_vec(),
                })
            })
            .collect();
        if objects.is_empty() {
            return Ok(());
        }
        for object in &objects {
            tracing::info!(env = %self.config.name, object = %object.object, fields = ?object.fields, "drift put back");
        }
        self.metrics.drifted(
            &self.config.name,
            u64::try_from(objects.len()).unwrap_or(u64::MAX),
        );
        self.journal(Event::DriftCorrected {
            revision: revision.clone(),
            objects,
        })
    }

    /// Puts back anything that differs from a healthy revision, in place.
    async fn converge(&mut self, revision: &Revision) -> Result<Outcome, ReconcileError> {
        let (desired, _, plan) = self.plan_for(revision).await?;
        if plan.is_empty() {
            self.settle(&desired, &plan.orphaned).await?;
            return Ok(Outcome::Unchanged {
                revision: revision.clone(),
            });
        }
        let changes = change_records(&plan.changes);
        self.journal(Event::ReconcileStarted {
            revision: revision.clone(),
            changes: changes.clone(),
        })?;
        tracing::info!(revision = %revision.short(), changes = changes.len(), "live state drifted; putting it back");
        let writes = plan_writes(&plan);
        if let Err((applied, source)) = self.write_all(&writes, |_| revision.clone()).await {
            self.journal(Event::ReconcileFailed {
                revision: revision.clone(),
                applied,
                error: source.to_string(),
            })?;
            return Err(ReconcileError::Apply {
                revision: revision.clone(),
                applied,
                planned: writes.len(),
                source,
            });
        }
        self.journal(Event::ReconcileFinished {
            revision: revision.clone(),
            changes: changes.clone(),
        })?;
        self.drift_corrected(revision, &plan)?;
        self.settle(&desired, &plan.orphaned).await?;
        Ok(Outcome::Converged {
            revision: revision.clone(),
            changes,
        })
    }

    /// Writes in order, stamping each object with the revision `revision_of` gives; on error
    /// returns how many writes were done.
    async fn write_all(
        &self,
        writes: &[Write],
        revision_of: impl Fn(&Desired) -> Revision,
    ) -> Result<(), (usize, TargetError)> {
        self.target.announce(&applied_keys(writes));
        let mut done = 0;
        // Stages stay in order; the writes inside one stage go out together, a few at a time.
        // Namespaces go before the rest of their stage, not beside it: what follows (the
        // ownership record, a CRD's custom resources) may live in them.
        let is_namespace =
            |write: &Write| write.key().group.is_empty() && write.key().kind == "Namespace";
        for group in writes.chunk_by(|a, b| {
            stage(a.key()) == stage(b.key())
                && matches!(a, Write::Apply(_)) == matches!(b, Write::Apply(_))
                && is_namespace(a) == is_namespace(b)
        }) {
            // A window that refills as writes finish, so one slow write does not hold up the
            // rest. After an error no new write starts; those in flight are waited for.
            let mut queued = group.iter();
            let mut running = futures_util::stream::FuturesUnordered::new();
            let mut first_error = None;
            let window = self.target.writes_in_flight();
            loop {
                while first_error.is_none() && running.len() < window {
                    let Some(write) = queued.next() else { break };
                    running.push(self.write_one(write, &revision_of));
                }
                match futures_util::StreamExt::next(&mut running).await {
                    None => break,
                    Some(Ok(())) => done += 1,
                    Some(Err(error)) => {
                        first_error.get_or_insert(error);
                    }
                }
            }
            if let Some(error) = first_error {
                return Err((done, error));
            }
        }
        Ok(())
    }

    async fn write_one(
        &self,
        write: &Write,
        revision_of: &impl Fn(&Desired) -> Revision,
    ) -> Result<(), TargetError> {
        match write {
            Write::Apply(desired) => {
                let mut body = desired.stamped(&self.config.name, &revision_of(desired));
                canary::mark_stable_track(
                    &desired.key,
                    &mut body,
                    desired.template_hash().as_deref(),
                    self.live_templates.get(&desired.key),
                );
                self.target.apply(&desired.key, &body).await?;
                tracing::debug!(action = "apply", object = %desired.key, "written");
            }
            Write::Delete(key) => {
                self.target.delete(key).await?;
                tracing::debug!(action = "delete", object = %key, "written");
            }
        }
        Ok(())
    }

    async fn rollout(
        &mut self,
        revision: &Revision,
        previous: Option<Revision>,
        resume: Option<Resume>,
    ) -> Result<Outcome, ReconcileError> {
        let (desired, live, plan) = self.plan_for(revision).await?;
        if plan.is_empty() && resume.is_none() {
            // Nothing to roll out (e.g. a commit outside this environment's folder).
            self.settle(&desired, &plan.orphaned).await?;
            self.journal(Event::Healthy {
                revision: revision.clone(),
            })?;
            return Ok(Outcome::Unchanged {
                revision: revision.clone(),
            });
        }
        // The manifests the stables were applied from: what they are written from during steps.
        let before = match &previous {
            Some(previous) => {
                match load_desired(self.source, self.config, previous, self.target).await {
                    Ok(before) => before,
                    Err(error) => {
                        tracing::warn!(%error, previous = %previous.short(), "cannot read the previous revision; stables are written from their live bodies");
                        Vec::new()
                    }
                }
            }
            None => Vec::new(),
        };
        let spec = canary::split(&plan, &desired, &live, &before);
        let changes = change_records(&plan.changes);
        let timing = Timing {
            bake: self.config.rollout.bake,
            timeout: self.config.rollout.timeout,
            verify: self.config.rollout.verify,
        };
        let (mut rollout, marks, first_step) = match resume {
            Some(resume) => {
                // The steps and marks it started with; the canary objects are still there.
                // Once the stables carry the new template nothing is left but the promotion.
                let last = resume.steps.len().saturating_sub(1);
                let from = if spec.has_canaries() {
                    resume.from
                } else {
                    last
                };
                self.journal(Event::RolloutResumed {
                    revision: revision.clone(),
                    step: from,
                })?;
                tracing::info!(env = %self.config.name, revision = %revision.short(), step = from + 1, "rollout resumed after a restart");
                (
                    Rollout::starting_at(resume.steps, timing, from),
                    resume.baseline,
                    from,
                )
            }
            None => {
                let steps = if spec.has_canaries() {
                    self.config.rollout.steps.clone()
                } else {
                    vec![100]
                };
                let marks = baseline(&plan, &spec, &live);
                let canaries: Vec<String> = spec
                    .canaries
                    .iter()
                    .map(|unit| unit.desired.key.to_string())
                    .collect();
                self.journal(Event::RolloutStarted {
                    revision: revision.clone(),
                    previous: previous.clone(),
                    steps: steps.clone(),
                    changes: changes.clone(),
                    canaries: canaries.clone(),
                    baseline: marks.clone(),
                })?;
                tracing::info!(
                    env = %self.config.name,
                    revision = %revision.short(),
                    steps = ?steps,
                    canaries = ?canaries,
                    changes = changes.len(),
                    "rollout started"
                );
                (Rollout::new(steps, timing), marks, 0)
            }
        };
        let mut tracker = HealthTracker::new(&self.config.health);
        let mut step_keys: Vec<ResourceKey> = Vec::new();
        let mut shrinking = StepObjects::default();
        let mut decision = rollout.decision();
        loop {
            let (milestone, next) = match decision {
                Decision::ApplyStep { step, weight } => {
                    self.journal(Event::StepStarted {
                        revision: revision.clone(),
                        step,
                        weight,
                    })?;
                    tracing::info!(env = %self.config.name, revision = %revision.short(), step = step + 1, weight, "step started");
                    let objects = step_objects(&spec, step == first_step, weight);
                    // Capacity first: what this step adds is written and ready before anything
                    // it replaces is scaled down or deleted.
                    let writes = ordered(objects.apply, Vec::new());
                    shrinking = StepObjects {
                        shrink: objects.shrink,
                        delete: objects.delete,
                        ..StepObjects::default()
                    };
                    step_keys = applied_keys(&writes);
                    match self.write_all(&writes, |_| revision.clone()).await {
                        Ok(()) => rollout.observe(Observation::Applied, Utc::now()),
                        Err((applied, error)) => {
                            let reason = format!(
                                "step {} ({weight}%): {applied} of {} writes done, then: {error}",
                                step + 1,
                                writes.len()
                            );
                            self.write_failed(revision, &previous, &marks, reason, &error)
                                .await?
                        }
                    }
                }
                Decision::Shrink { step, weight } => {
                    let objects = std::mem::take(&mut shrinking);
                    let writes = ordered(objects.shrink, objects.delete);
                    match self.write_all(&writes, |_| revision.clone()).await {
                        Ok(()) => rollout.observe(Observation::Shrunk, Utc::now()),
                        Err((applied, error)) => {
                            let reason = format!(
                                "step {} ({weight}%): {applied} of {} scale-downs and deletions done, then: {error}",
                                step + 1,
                                writes.len()
                            );
                            self.write_failed(revision, &previous, &marks, reason, &error)
                                .await?
                        }
                    }
                }
                Decision::AwaitReady { deadline } => {
                    let observation = self.readiness(&step_keys, deadline).await?;
                    rollout.observe(observation, Utc::now())
                }
                Decision::Watch { until } => {
                    let observation = self.watch_checks(&mut tracker, revision, until).await?;
                    rollout.observe(observation, Utc::now())
                }
                Decision::Succeed => {
                    self.drift_corrected(revision, &plan)?;
                    self.settle(&desired, &plan.orphaned).await?;
                    self.journal(Event::Healthy {
                        revision: revision.clone(),
                    })?;
                    tracing::info!(env = %self.config.name, revision = %revision.short(), "rollout healthy");
                    return Ok(Outcome::RolledOut {
                        revision: revision.clone(),
                        changes,
                    });
                }
                Decision::Revert { reason, cause } => {
                    self.journal(Event::RolloutFailed {
                        revision: revision.clone(),
                        reason: reason.clone(),
                        cause: Some(cause.clone()),
                    })?;
                    self.metrics.rollout_failed(&self.config.name, &cause);
                    tracing::error!(env = %self.config.name, revision = %revision.short(), %reason, "rollout failed");
                    let Some(to) = previous else {
                        tracing::error!(env = %self.config.name, revision = %revision.short(), "first deploy failed: nothing to revert to; holding");
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
                        baseline: marks.clone(),
                    };
                    self.revert(&revert, false).await?;
                    return Err(ReconcileError::RolledBack {
                        revision: revision.clone(),
                        to,
                        reason,
                    });
                }
            };
            match milestone {
                Some(Milestone::StepPassed { step, weight }) => {
                    self.journal(Event::StepPassed {
                        revision: revision.clone(),
                        step,
                        weight,
                    })?;
                    tracing::info!(env = %self.config.name, revision = %revision.short(), step = step + 1, weight, "step passed");
                }
                Some(Milestone::Promoted) => {
                    self.journal(Event::Promoted {
                        revision: revision.clone(),
                    })?;
                    tracing::info!(env = %self.config.name, revision = %revision.short(), "promoted; verifying");
                }
                Some(Milestone::Failed { .. } | Milestone::Succeeded) | None => {}
            }
            decision = next;
        }
    }

    /// Sleeps until `until` or shutdown, beating the heartbeat; false on shutdown.
    async fn sleep_until(&mut self, until: DateTime<Utc>) -> bool {
        loop {
            self.heartbeat.beat();
            let wait = (until - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            if wait.is_zero() {
                return true;
            }
            tokio::select! {
                _ = tokio::time::sleep(wait.min(BEAT_INTERVAL)) => {}
                _ = self.shutdown.changed() => return false,
            }
        }
    }

    async fn readiness(
        &mut self,
        keys: &[ResourceKey],
        deadline: DateTime<Utc>,
    ) -> Result<Observation, ReconcileError> {
        let readiness = self
            .target
            .readiness(keys, self.config.rollout.max_restarts)
            .await
            .map_err(ReconcileError::Live)?;
        if let Some(first) = readiness.failed.first() {
            let detail = readiness
                .failed
                .iter()
                .map(|failed| failed.detail.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            return Ok(Observation::Broken {
                cause: first.cause.clone(),
                detail,
            });
        }
        if readiness.is_ready() {
            return Ok(Observation::Ready);
        }
        let now = Utc::now();
        if now < deadline {
            let next = (now + chrono::Duration::from_std(READINESS_POLL).unwrap_or_default())
                .min(deadline);
            if !self.sleep_until(next).await {
                return Err(ReconcileError::Interrupted);
            }
        }
        Ok(Observation::NotReady {
            detail: readiness.waiting.join("; "),
        })
    }

    /// A write of a step failed. The revision is blamed (reverted and held) only when the
    /// server judged an object; when the cluster could not take the write, the partial step
    /// is undone without blaming the revision, which is tried again with backoff.
    async fn write_failed(
        &mut self,
        revision: &Revision,
        previous: &Option<Revision>,
        marks: &[Baseline],
        reason: String,
        error: &TargetError,
    ) -> Result<(Option<Milestone>, Decision), ReconcileError> {
        if error.class() == FailureClass::Revision {
            return Ok((
                Some(Milestone::Failed {
                    reason: reason.clone(),
                }),
                Decision::Revert {
                    reason,
                    cause: cause::REJECTED.into(),
                },
            ));
        }
        self.journal(Event::Blocked {
            revision: revision.clone(),
            reason: reason.clone(),
        })?;
        tracing::warn!(env = %self.config.name, revision = %revision.short(), %reason, "the cluster refused a write; undoing the step without blaming the revision");
        if let Some(to) = previous {
            let revert = RevertInFlight {
                revision: revision.clone(),
                to: to.clone(),
                reason: format!("blocked: {reason}"),
                failed: false,
                baseline: marks.to_vec(),
            };
            self.revert(&revert, false).await?;
        }
        Err(ReconcileError::Blocked {
            revision: revision.clone(),
            reason,
        })
    }

    /// Runs every check at its interval until `until`; returns at the first check that
    /// reaches its failure threshold, else a tick once `until` has come.
    async fn watch_checks(
        &mut self,
        tracker: &mut HealthTracker,
        revision: &Revision,
        until: DateTime<Utc>,
    ) -> Result<Observation, ReconcileError> {
        let checks = self.config.health.clone();
        let mut due: Vec<DateTime<Utc>> = vec![Utc::now(); checks.len()];
        loop {
            let now = Utc::now();
            let watching = now < until || self.paused();
            for (index, check) in checks.iter().enumerate() {
                if due[index] > now || !watching {
                    continue;
                }
                self.heartbeat.beat();
                let result = tokio::select! {
                    result = self.prober.run(check) => result,
                    _ = self.shutdown.changed() => return Err(ReconcileError::Interrupted),
                };
                self.heartbeat.beat();
                due[index] =
                    Utc::now() + chrono::Duration::from_std(check.interval).unwrap_or_default();
                self.metrics
                    .check(&self.config.name, &check.name, result.is_healthy());
                if let crate::health::CheckResult::Unhealthy(detail) = &result {
                    tracing::warn!(env = %self.config.name, revision = %revision.short(), check = %check.name, %detail, "check unhealthy");
                }
                if let Some(failure) = tracker.record(index, &result) {
                    self.journal(Event::CheckFailed {
                        revision: revision.clone(),
                        check: failure.check.clone(),
                        detail: failure.detail.clone(),
                    })?;
                    return Ok(Observation::CheckFailed(failure));
                }
            }
            let now = Utc::now();
            // A paused rollout holds at its step; checks keep running and can still fail it.
            let held = self.paused();
            if now >= until && !held {
                return Ok(Observation::Tick);
            }
            let horizon = if held {
                now + chrono::Duration::from_std(BEAT_INTERVAL).unwrap_or_default()
            } else {
                until
            };
            let next = due.iter().copied().min().unwrap_or(horizon).min(horizon);
            if !self.sleep_until(next).await {
                return Err(ReconcileError::Interrupted);
            }
        }
    }

    /// Returns the environment to `revert.to` at once: canary objects and objects the bad
    /// revision created are deleted, everything else restored from git with the marks it had.
    async fn revert(
        &mut self,
        revert: &RevertInFlight,
        resumed: bool,
    ) -> Result<(), ReconcileError> {
        if !resumed {
            self.journal(Event::RevertStarted {
                revision: revert.revision.clone(),
                to: revert.to.clone(),
                reason: revert.reason.clone(),
                failed: revert.failed,
            })?;
        }
        tracing::warn!(env = %self.config.name, revision = %revert.revision.short(), to = %revert.to.short(), reason = %revert.reason, "reverting");
        let revert_error = |message: String| ReconcileError::Revert {
            revision: revert.revision.clone(),
            to: revert.to.clone(),
            message,
        };
        let desired = match load_desired(self.source, self.config, &revert.to, self.target).await {
            Ok(desired) => desired,
            Err(error) => return Err(revert_error(error.to_string())),
        };
        let live = self.live(&desired, &revert.to).await?;
        let mut plan = plan::plan(&desired, &live, true, self.compare());
        confirm_drift(self.target, &mut plan, &live, &self.config.name, &revert.to)
            .await
            .map_err(ReconcileError::Live)?;
        let live_by_key: BTreeMap<&ResourceKey, &Object> =
            live.iter().map(|object| (&object.key, object)).collect();
        let writes: Vec<Write> = plan_writes(&plan)
            .into_iter()
            .filter(|write| match write {
                Write::Apply(_) => true,
                // Without prune, only what this rollout made goes.
                Write::Delete(key) => {
                    self.config.prune
                        || key.name.ends_with(CANARY_SUFFIX)
                        || live_by_key
                            .get(key)
                            .and_then(|o| o.annotation(ANNOTATION_REVISION))
                            == Some(revert.revision.0.as_str())
                }
            })
            .collect();
        let marks: BTreeMap<&str, (&Revision, &str)> = revert
            .baseline
            .iter()
            .map(|b| (b.object.as_str(), (&b.revision, b.hash.as_str())))
            .collect();
        let stamp = |desired: &Desired| match marks.get(desired.key.to_string().as_str()) {
            Some((revision, hash)) if *hash == desired.hash => (*revision).clone(),
            _ => revert.to.clone(),
        };
        if let Err((applied, error)) = self.write_all(&writes, stamp).await {
            return Err(revert_error(format!(
                "{applied} of {} writes done, then: {error}",
                writes.len()
            )));
        }
        let kept: Vec<ResourceKey> = if self.config.prune {
            Vec::new()
        } else {
            plan.orphaned.clone()
        };
        self.settle(&desired, &kept).await?;
        self.journal(Event::Reverted {
            revision: revert.revision.clone(),
            to: revert.to.clone(),
        })?;
        tracing::warn!(env = %self.config.name, revision = %revert.revision.short(), to = %revert.to.short(), "reverted");
        if revert.failed && self.config.rollout.revert_commit {
            self.push_revert_commit(revert).await?;
        }
        Ok(())
    }

    async fn push_revert_commit(&mut self, revert: &RevertInFlight) -> Result<(), ReconcileError> {
        let source = self.source.clone();
        let path = self.config.path.clone();
        let excluded = self
            .config
            .render
            .as_ref()
            .map(|r| r.revert_excluded.clone());
        let what = if excluded.is_some() {
            format!("the inputs of {path} (rendered)")
        } else {
            path.clone()
        };
        let message = format!(
            "Revert {} to {}\n\ngitopsd reverted environment {} because revision {} failed:\n{}\n",
            what,
            revert.to.short(),
            self.config.name,
            revert.revision,
            revert.reason
        );
        let healthy = revert.to.clone();
        let pushed = tokio::task::spawn_blocking(move || {
            let scope = match &excluded {
                // A render may read any file: every input is put back but the other
                // environments' own folders.
                Some(excluded) => RevertScope::AllExcept(excluded),
                None => RevertScope::Folder(&path),
            };
            source.push_revert_commit(scope, &healthy, &message)
        })
        .await
        .map_err(|e| ReconcileError::Worker(e.to_string()))?;
        match pushed {
            Ok(Some(commit)) => {
                tracing::info!(env = %self.config.name, commit = %commit.short(), "revert commit pushed");
                self.journal(Event::RevertCommitted {
                    revision: revert.revision.clone(),
                    commit,
                })?;
            }
            Ok(None) => {
                tracing::info!(env = %self.config.name, "the branch already holds the healthy manifests; no revert commit needed");
            }
            // The revert itself stands; the commit is a courtesy to git's history.
            Err(error) => {
                tracing::error!(env = %self.config.name, %error, "revert commit not pushed")
            }
        }
        Ok(())
    }
}

/// A plan's changes as ordered writes.
fn plan_writes(plan: &Plan) -> Vec<Write> {
    plan.changes
        .iter()
        .map(|change| match change {
            Change::Create { desired } | Change::Update { desired, .. } => {
                Write::Apply(desired.clone())
            }
            Change::Delete { key, .. } => Write::Delete(key.clone()),
        })
        .collect()
}

/// How the objects a rollout will touch are marked now, so a revert can restore the marks.
fn baseline(plan: &Plan, spec: &RolloutSpec, live: &[Object]) -> Vec<Baseline> {
    let mut touched: Vec<&ResourceKey> = plan
        .changes
        .iter()
        .filter(|change| change.action() != Action::Create)
        .map(Change::key)
        .collect();
    touched.extend(spec.canaries.iter().map(|unit| &unit.desired.key));
    let live_by_key: BTreeMap<&ResourceKey, &Object> =
        live.iter().map(|object| (&object.key, object)).collect();
    let mut seen = std::collections::BTreeSet::new();
    touched
        .into_iter()
        .filter(|key| seen.insert(*key))
        .filter_map(|key| {
            let object = live_by_key.get(key)?;
            Some(Baseline {
                object: key.to_string(),
                revision: Revision(object.annotation(ANNOTATION_REVISION)?.to_string()),
                hash: object.annotation(ANNOTATION_HASH)?.to_string(),
            })
        })
        .collect()
}

/// Asks the target about each suspected drift: a server-side dry run clears false suspicions
/// (and remembers them) and names the fields that would really change.
async fn confirm_drift<T: Target>(
    target: &T,
    plan: &mut Plan,
    live: &[Object],
    environment: &str,
    revision: &Revision,
) -> Result<(), TargetError> {
    let live_by_key: BTreeMap<&ResourceKey, &Object> =
        live.iter().map(|object| (&object.key, object)).collect();
    let mut kept = Vec::with_capacity(plan.changes.len());
    for change in std::mem::take(&mut plan.changes) {
        let Change::Update {
            desired,
            live: normalized,
            drift,
        } = change
        else {
            kept.push(change);
            continue;
        };
        let Some(object) = live_by_key.get(&desired.key).filter(|_| !drift.is_empty()) else {
            kept.push(Change::Update {
                desired,
                live: normalized,
                drift,
            });
            continue;
        };
        let body = desired.stamped(environment, revision);
        match target.check_drift(&desired.key, &body, object).await? {
            DriftCheck::Cleared => plan.unchanged += 1,
            DriftCheck::Unchecked => kept.push(Change::Update {
                desired,
                live: normalized,
                drift,
            }),
            DriftCheck::Confirmed(fields) => kept.push(Change::Update {
                desired,
                live: normalized,
                drift: if fields.is_empty() { drift } else { fields },
            }),
        }
    }
    plan.changes = kept;
    Ok(())
}
