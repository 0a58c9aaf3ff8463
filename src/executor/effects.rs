//! What one environment's pass acts through: its backend, journal, health checks, waits,
//! metrics and notifications, each action journaled or counted where the pass needs it.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use super::error::ReconcileError;
use super::writes::{Write, applied_keys};
use crate::backend::{Readiness, Target, TargetError};
use crate::canary;
use crate::config::EnvironmentConfig;
use crate::health::{CheckResult, HealthCheckConfig, HealthTracker};
use crate::heartbeat::{BEAT_INTERVAL, Heartbeat};
use crate::history::History;
use crate::journal::{DriftRecord, Event, JournalError, SharedJournal};
use crate::metrics::Metrics;
use crate::model::{ResourceKey, Revision};
use crate::pass_slots::Slot;
use crate::plan::{Desired, Plan, stage};
use crate::probe::{CheckRunner, Prober};
use crate::rollout::Observation;
use crate::webhook::Notifier;

/// How often readiness is polled while a step waits for it.
const READINESS_POLL: Duration = Duration::from_secs(1);

/// Everything one environment's pass acts through.
pub struct Effects<'a, T: Target, P: CheckRunner = Prober> {
    pub config: &'a EnvironmentConfig,
    pub target: &'a T,
    pub journal: &'a SharedJournal,
    /// Runs the environment's health checks.
    pub checks: &'a P,
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
    /// The pass's place among the daemon's passes working at once: held while it works,
    /// given back while it waits.
    pub slot: Slot,
}

impl<T: Target, P: CheckRunner> Effects<'_, T, P> {
    /// Journals `event` durably, then tells the webhooks.
    pub async fn journal(&mut self, event: Event) -> Result<(), JournalError> {
        // `[ha]`: a daemon without the environment's Lease decides nothing for it.
        self.target
            .may_decide()
            .map_err(|refused| JournalError::Fenced(refused.to_string()))?;
        let record = self.journal.append(event, Utc::now())?;
        self.notifier
            .event(&self.config.name, &record.event, record.time);
        // `[ha]`: the decision is on the Lease before anything follows from it, so that a
        // successor never acts on an older one (a failed revision rolled out again).
        if let Err(error) = self.target.carry_decisions().await {
            self.target
                .may_decide()
                .map_err(|refused| JournalError::Fenced(refused.to_string()))?;
            tracing::warn!(env = %self.config.name, %error, "[ha]: decision not on the Lease yet; carried with the next write or renewal");
        }
        Ok(())
    }

    /// Whether an operator paused the environment (the last pause or resume wins).
    pub fn paused(&self) -> bool {
        self.journal.with_history(|history| history.paused)
    }

    /// Records on the target that the environment now owns exactly the revision's objects
    /// (and, without prune, the ones it left behind).
    pub async fn settle(
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
    pub async fn drift_corrected(
        &mut self,
        revision: &Revision,
        plan: &Plan,
    ) -> Result<(), JournalError> {
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
        .await
    }

    /// Writes in order, stamping each object with the revision `revision_of` gives; on error
    /// returns how many writes were done.
    pub async fn write_all(
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

    /// Sleeps until `until`, beating the heartbeat; shutdown interrupts it, and so does
    /// losing the environment's Lease (`[ha]`: the new holder carries the rollout on).
    /// The pass gives its slot back while it sleeps and takes one again before it goes on.
    pub async fn sleep_until(&mut self, until: DateTime<Utc>) -> Result<(), ReconcileError> {
        loop {
            self.heartbeat.beat();
            self.target
                .may_decide()
                .map_err(|refused| ReconcileError::Fenced(refused.to_string()))?;
            let wait = (until - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            if wait.is_zero() {
                return self.take_slot().await;
            }
            self.slot.give_back();
            tokio::select! {
                _ = tokio::time::sleep(wait.min(BEAT_INTERVAL)) => {}
                _ = self.shutdown.changed() => return Err(ReconcileError::Interrupted),
            }
        }
    }

    /// Waits for the pass's slot (unless it holds it), beating the heartbeat; shutdown
    /// interrupts the wait.
    pub async fn take_slot(&mut self) -> Result<(), ReconcileError> {
        if self.slot.is_held() {
            return Ok(());
        }
        let mut shutdown = self.shutdown.clone();
        let heartbeat = self.heartbeat.clone();
        // Pinned once: the place in line is kept across heartbeats.
        let taking = self.slot.take();
        tokio::pin!(taking);
        loop {
            heartbeat.beat();
            tokio::select! {
                () = &mut taking => return Ok(()),
                _ = shutdown.changed() => return Err(ReconcileError::Interrupted),
                _ = tokio::time::sleep(BEAT_INTERVAL) => {}
            }
        }
    }

    /// Where the objects at `keys` stand; when they are still on their way, waits one poll
    /// (never past `deadline`) before saying so. A wait that reached the deadline (the poll,
    /// or the wait for a slot after it) looks once more: the step is decided on how the
    /// objects stand then, not a poll or a queue ago.
    pub async fn readiness(
        &mut self,
        keys: &[ResourceKey],
        deadline: DateTime<Utc>,
    ) -> Result<Observation, ReconcileError> {
        let waiting = match self.look(keys).await? {
            Ok(observation) => return Ok(observation),
            Err(waiting) => waiting,
        };
        let now = Utc::now();
        if now < deadline {
            let next = (now + chrono::Duration::from_std(READINESS_POLL).unwrap_or_default())
                .min(deadline);
            self.sleep_until(next).await?;
            if Utc::now() >= deadline {
                return Ok(self
                    .look(keys)
                    .await?
                    .unwrap_or_else(|detail| Observation::NotReady { detail }));
            }
        }
        Ok(Observation::NotReady { detail: waiting })
    }

    /// The objects at `keys` now: ready or broken, else what they wait for.
    async fn look(
        &self,
        keys: &[ResourceKey],
    ) -> Result<Result<Observation, String>, ReconcileError> {
        let readiness = self
            .target
            .readiness(keys, self.config.rollout.max_restarts)
            .await
            .map_err(ReconcileError::Live)?;
        if let Some(broken) = broken_observation(&readiness) {
            return Ok(Ok(broken));
        }
        if readiness.is_ready() {
            return Ok(Ok(Observation::Ready));
        }
        Ok(Err(readiness.waiting.join("; ")))
    }

    /// Runs every check at its interval until `until`, and looks at the pods of `watched`
    /// every poll; returns at the first check that reaches its failure threshold (journaled)
    /// or the first pod that will not recover (a crash loop, an image that cannot be pulled),
    /// else a tick once `until` has come.
    pub async fn watch_checks(
        &mut self,
        tracker: &mut HealthTracker,
        revision: &Revision,
        watched: &[ResourceKey],
        until: DateTime<Utc>,
    ) -> Result<Observation, ReconcileError> {
        self.watch_checks_held(tracker, revision, watched, until, None, |_| false)
            .await
    }

    /// [`Self::watch_checks`], with `{preview}` in HTTP check URLs replaced by `preview` (the
    /// host of the new version's Service; none: such a check is skipped), and also held (as
    /// by a pause) while `held` says so of the environment's history: a blue/green switch
    /// waiting for its approval.
    pub async fn watch_checks_held(
        &mut self,
        tracker: &mut HealthTracker,
        revision: &Revision,
        watched: &[ResourceKey],
        until: DateTime<Utc>,
        preview: Option<&str>,
        held: impl Fn(&History) -> bool,
    ) -> Result<Observation, ReconcileError> {
        let journal = self.journal;
        let held = || journal.with_history(|history| history.paused || held(history));
        let checks = with_preview(&self.config.health, preview);
        let mut due: Vec<DateTime<Utc>> = vec![Utc::now(); checks.len()];
        let mut pods_due = Utc::now();
        loop {
            let now = Utc::now();
            let watching = now < until || held();
            if watching && !watched.is_empty() && pods_due <= now {
                if let Some(broken) = self.broken(watched).await {
                    return Ok(broken);
                }
                pods_due = now + chrono::Duration::from_std(READINESS_POLL).unwrap_or_default();
            }
            for (index, check) in checks.iter().enumerate() {
                if due[index] > now || !watching {
                    continue;
                }
                self.heartbeat.beat();
                if check.names_preview() {
                    // No Service of this rollout selects the new pods: nothing to ask.
                    due[index] = DateTime::<Utc>::MAX_UTC;
                    continue;
                }
                let result = tokio::select! {
                    result = self.checks.run(check) => result,
                    _ = self.shutdown.changed() => return Err(ReconcileError::Interrupted),
                };
                self.heartbeat.beat();
                due[index] =
                    Utc::now() + chrono::Duration::from_std(check.interval).unwrap_or_default();
                self.metrics
                    .check(&self.config.name, &check.name, result.is_healthy());
                if let CheckResult::Unhealthy(detail) = &result {
                    tracing::warn!(env = %self.config.name, revision = %revision.short(), check = %check.name, %detail, "check unhealthy");
                }
                if let Some(failure) = tracker.record(index, &result) {
                    self.journal(Event::CheckFailed {
                        revision: revision.clone(),
                        check: failure.check.clone(),
                        detail: failure.detail.clone(),
                    })
                    .await?;
                    return Ok(Observation::CheckFailed(failure));
                }
            }
            let now = Utc::now();
            // A paused rollout holds at its step; checks keep running and can still fail it.
            let held = held();
            if now >= until && !held {
                return Ok(Observation::Tick);
            }
            let horizon = if held {
                now + chrono::Duration::from_std(BEAT_INTERVAL).unwrap_or_default()
            } else {
                until
            };
            let next = due.iter().copied().min().unwrap_or(horizon).min(horizon);
            let next = if watched.is_empty() {
                next
            } else {
                next.min(pods_due)
            };
            self.sleep_until(next).await?;
        }
    }

    /// A step's objects that have failed for good, as an observation. The cluster failing to
    /// answer is not the revision's fault: it is logged, and the next poll asks again.
    async fn broken(&self, keys: &[ResourceKey]) -> Option<Observation> {
        match self
            .target
            .readiness(keys, self.config.rollout.max_restarts)
            .await
        {
            Ok(readiness) => broken_observation(&readiness),
            Err(error) => {
                tracing::warn!(env = %self.config.name, %error, "cannot look at the step's pods; asking again at the next poll");
                None
            }
        }
    }
}

/// `checks` with `{preview}` in their HTTP URLs naming `preview`, when there is one.
fn with_preview(checks: &[HealthCheckConfig], preview: Option<&str>) -> Vec<HealthCheckConfig> {
    checks
        .iter()
        .map(|check| match preview {
            Some(host) => check.with_preview(host),
            None => check.clone(),
        })
        .collect()
}

/// The objects that will not become ready by waiting, as one observation (the first one's
/// cause, every one's detail).
fn broken_observation(readiness: &Readiness) -> Option<Observation> {
    let first = readiness.failed.first()?;
    let detail = readiness
        .failed
        .iter()
        .map(|failed| failed.detail.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    Some(Observation::Broken {
        cause: first.cause.clone(),
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::super::driver::tests::{Fixture, RecordingBackend, ScriptedChecks};
    use super::*;
    use crate::pass_slots::PassSlots;

    #[tokio::test]
    async fn a_pass_gives_its_slot_back_while_it_sleeps_and_holds_one_again_after() {
        let fixture = Fixture::new("0s");
        let backend = RecordingBackend::new(&fixture.journal);
        let checks = ScriptedChecks::healthy();
        let slots = PassSlots::new(1);
        let mut fx = fixture.effects(&backend, &checks);
        fx.slot = slots.slot();
        fx.take_slot().await.expect("a free slot");
        assert_eq!(slots.available(), 0);

        let mut other = slots.slot();
        let until = Utc::now() + chrono::Duration::milliseconds(300);
        let (slept, other_got_it) = tokio::join!(fx.sleep_until(until), async {
            // Another environment's pass works while this one sleeps, then ends.
            let took = tokio::time::timeout(Duration::from_secs(2), other.take()).await;
            let held = took.is_ok() && other.is_held();
            drop(other);
            held
        });
        slept.expect("no shutdown");
        assert!(other_got_it, "the sleeping pass kept its slot");
        assert!(fx.slot.is_held(), "the pass goes on without its slot");
        assert_eq!(slots.available(), 0);
    }

    #[tokio::test]
    async fn a_readiness_poll_that_waited_past_its_deadline_for_a_slot_looks_again() {
        let fixture = Fixture::new("0s");
        let backend = RecordingBackend::new(&fixture.journal).waiting_for_readiness_calls(1);
        let checks = ScriptedChecks::healthy();
        let slots = PassSlots::new(1);
        let mut fx = fixture.effects(&backend, &checks);
        fx.slot = slots.slot();
        fx.take_slot().await.expect("a free slot");
        let keys = vec![crate::model::ResourceKey {
            group: "apps".into(),
            kind: "Deployment".into(),
            namespace: Some("shop".into()),
            name: "web".into(),
        }];
        let deadline = Utc::now() + chrono::Duration::milliseconds(200);
        let mut other = slots.slot();
        let (observation, ()) = tokio::join!(fx.readiness(&keys, deadline), async {
            // Another pass takes the slot while this one polls, and works past its deadline.
            other.take().await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            drop(other);
        });
        assert_eq!(
            observation.expect("no shutdown"),
            Observation::Ready,
            "decided on the look from before the wait"
        );
    }
}
