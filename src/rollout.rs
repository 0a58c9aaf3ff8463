//! The rollout state machine (pure: no IO, `now` passed in): steps, bake, promotion, verify,
//! revert, and what an environment does next given its journal and the branch tip.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::gates::Gates;
use crate::health::CheckFailure;
use crate::journal::{Baseline, Event, Record};
use crate::model::Revision;

/// Times a rollout waits, from the environment's `[rollout]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub bake: Duration,
    pub timeout: Duration,
    pub verify: Duration,
}

/// How changes are rolled out (DESIGN §4).
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutConfig {
    /// Canary weights in percent, increasing, ending with 100 (the promotion).
    pub steps: Vec<u8>,
    /// How long each canary step must stay healthy.
    pub bake: Duration,
    /// How long a step's objects may take to become ready.
    pub timeout: Duration,
    /// How long checks keep running after promotion.
    pub verify: Duration,
    /// After a revert, commit the environment's folder back to the healthy revision and push.
    pub revert_commit: bool,
    /// Restarts a container of a new pod may have before the step fails at once.
    pub max_restarts: u32,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        Self {
            steps: vec![100],
            bake: Duration::ZERO,
            timeout: Duration::from_secs(300),
            verify: Duration::ZERO,
            revert_commit: false,
            max_restarts: 2,
        }
    }
}

/// Where a rollout stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    /// The step's objects must be written.
    Apply {
        step: usize,
    },
    /// Written; waiting for the target to report them ready.
    AwaitReady {
        step: usize,
        deadline: DateTime<Utc>,
    },
    /// The step's new capacity is ready: what it replaces may now go (stables scaled down,
    /// canaries and deferred deletions removed at promotion).
    Shrink {
        step: usize,
    },
    /// A canary step holding while checks run.
    Bake {
        step: usize,
        until: DateTime<Utc>,
    },
    /// Promoted; checks keep running.
    Verify {
        until: DateTime<Utc>,
    },
    Succeeded,
    Failed {
        reason: String,
        cause: String,
    },
}

/// Causes of a failed rollout that are not a Kubernetes reason (metrics label them).
pub mod cause {
    pub const CHECK_FAILED: &str = "CheckFailed";
    pub const TIMEOUT: &str = "Timeout";
    pub const REJECTED: &str = "Rejected";
}

/// What the executor saw since the last decision.
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    /// The current step's objects are written.
    Applied,
    /// Every object of the step is ready.
    Ready,
    /// Some object is not ready yet.
    NotReady { detail: String },
    /// Some object will not become ready by waiting (a crash-looping pod, a missed progress
    /// deadline): the step fails at once.
    Broken { cause: String, detail: String },
    /// The step's shrinking writes are done.
    Shrunk,
    /// A check reached its failure threshold.
    CheckFailed(CheckFailure),
    /// Nothing new; time passed.
    Tick,
}

/// What the executor must do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Write the objects of step `step` (`weight` 100 is the promotion).
    ApplyStep { step: usize, weight: u8 },
    /// Poll readiness until ready or `deadline`.
    AwaitReady { deadline: DateTime<Utc> },
    /// Write what step `step` removes, now that its new capacity is ready.
    Shrink { step: usize, weight: u8 },
    /// Run checks until `until`.
    Watch { until: DateTime<Utc> },
    /// The revision is healthy.
    Succeed,
    /// Put the environment back to its last healthy revision.
    Revert { reason: String, cause: String },
}

/// A milestone worth journaling, produced by a transition.
#[derive(Debug, Clone, PartialEq)]
pub enum Milestone {
    StepPassed { step: usize, weight: u8 },
    Promoted,
    Failed { reason: String },
    Succeeded,
}

/// One revision's rollout through its steps.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    steps: Vec<u8>,
    timing: Timing,
    phase: Phase,
}

fn failed(reason: String, cause: &str) -> (Option<Phase>, Option<Milestone>) {
    (
        Some(Phase::Failed {
            reason: reason.clone(),
            cause: cause.to_string(),
        }),
        Some(Milestone::Failed { reason }),
    )
}

fn after(now: DateTime<Utc>, duration: Duration) -> DateTime<Utc> {
    now + chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
}

impl Rollout {
    /// A rollout of `steps` (canary weights ending with 100; `[100]` applies at once).
    pub fn new(steps: Vec<u8>, timing: Timing) -> Self {
        Self {
            steps,
            timing,
            phase: Phase::Apply { step: 0 },
        }
    }

    /// A rollout that goes on from `step` (after a restart).
    pub fn starting_at(steps: Vec<u8>, timing: Timing, step: usize) -> Self {
        Self {
            phase: Phase::Apply {
                step: step.min(steps.len().saturating_sub(1)),
            },
            steps,
            timing,
        }
    }

    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    pub fn steps(&self) -> &[u8] {
        &self.steps
    }

    fn is_last(&self, step: usize) -> bool {
        step + 1 >= self.steps.len()
    }

    fn weight(&self, step: usize) -> u8 {
        self.steps.get(step).copied().unwrap_or(100)
    }

    /// The decision for the current phase.
    pub fn decision(&self) -> Decision {
        match &self.phase {
            Phase::Apply { step } => Decision::ApplyStep {
                step: *step,
                weight: self.weight(*step),
            },
            Phase::AwaitReady { deadline, .. } => Decision::AwaitReady {
                deadline: *deadline,
            },
            Phase::Shrink { step } => Decision::Shrink {
                step: *step,
                weight: self.weight(*step),
            },
            Phase::Bake { until, .. } | Phase::Verify { until } => {
                Decision::Watch { until: *until }
            }
            Phase::Succeeded => Decision::Succeed,
            Phase::Failed { reason, cause } => Decision::Revert {
                reason: reason.clone(),
                cause: cause.clone(),
            },
        }
    }

    /// Feeds one observation; returns a milestone if one was reached, and the next decision.
    pub fn observe(
        &mut self,
        observation: Observation,
        now: DateTime<Utc>,
    ) -> (Option<Milestone>, Decision) {
        let (next, milestone) = match (&self.phase, observation) {
            (Phase::Apply { step }, Observation::Applied) => (
                Some(Phase::AwaitReady {
                    step: *step,
                    deadline: after(now, self.timing.timeout),
                }),
                None,
            ),
            (Phase::AwaitReady { step, .. }, Observation::Ready) => {
                (Some(Phase::Shrink { step: *step }), None)
            }
            (Phase::Shrink { step }, Observation::Shrunk) => {
                if self.is_last(*step) {
                    (
                        Some(Phase::Verify {
                            until: after(now, self.timing.verify),
                        }),
                        Some(Milestone::Promoted),
                    )
                } else {
                    (
                        Some(Phase::Bake {
                            step: *step,
                            until: after(now, self.timing.bake),
                        }),
                        None,
                    )
                }
            }
            (Phase::AwaitReady { step, deadline }, Observation::NotReady { detail })
                if now >= *deadline =>
            {
                let reason = format!(
                    "step {} ({}%): not ready within {}: {detail}",
                    step + 1,
                    self.weight(*step),
                    humantime::format_duration(self.timing.timeout)
                );
                failed(reason, cause::TIMEOUT)
            }
            (Phase::AwaitReady { step, .. }, Observation::Broken { cause, detail }) => {
                let reason = format!("step {} ({}%): {detail}", step + 1, self.weight(*step));
                failed(reason, &cause)
            }
            (
                Phase::Bake { step, .. } | Phase::AwaitReady { step, .. } | Phase::Shrink { step },
                Observation::CheckFailed(failure),
            ) => {
                let reason = format!(
                    "step {} ({}%): check {:?} failed {} times in a row: {}",
                    step + 1,
                    self.weight(*step),
                    failure.check,
                    failure.consecutive,
                    failure.detail
                );
                failed(reason, cause::CHECK_FAILED)
            }
            (Phase::Verify { .. }, Observation::CheckFailed(failure)) => {
                let reason = format!(
                    "verify after promotion: check {:?} failed {} times in a row: {}",
                    failure.check, failure.consecutive, failure.detail
                );
                failed(reason, cause::CHECK_FAILED)
            }
            (Phase::Bake { step, until }, Observation::Tick) if now >= *until => (
                Some(Phase::Apply { step: step + 1 }),
                Some(Milestone::StepPassed {
                    step: *step,
                    weight: self.weight(*step),
                }),
            ),
            (Phase::Verify { until }, Observation::Tick) if now >= *until => {
                (Some(Phase::Succeeded), Some(Milestone::Succeeded))
            }
            _ => (None, None),
        };
        if let Some(next) = next {
            self.phase = next;
        }
        (milestone, self.decision())
    }
}

/// An environment's story so far, folded from its journal.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct History {
    /// The last revision that finished its rollout healthy.
    pub last_healthy: Option<Revision>,
    /// Revisions that failed: held, not applied again unless an operator retries them.
    pub failed: BTreeSet<Revision>,
    /// A rollout that started and has no outcome yet.
    pub in_flight: Option<InFlight>,
    /// A revert that started and has not finished.
    pub reverting: Option<RevertInFlight>,
    /// The revision the target was last brought to.
    pub current: Option<Revision>,
    /// The most recent failed rollout: revision, reason and the checks that failed.
    pub last_failure: Option<Failure>,
    /// Every revision that finished healthy (what `after` gates downstream read).
    pub healthy: BTreeSet<Revision>,
    /// Paused by an operator.
    pub paused: bool,
    /// Revisions approved by an operator.
    pub approved: BTreeSet<Revision>,
    /// Rolled back by an operator: the pinned revision and the branch tip at that time.
    pub pin: Option<(Revision, Revision)>,
    /// Every type of object the environment has used.
    pub kinds: BTreeSet<crate::model::KindRef>,
    /// What the cluster is refusing now, for the revision it holds back (not a failure of
    /// the revision: it is tried again).
    pub blocked: Option<(Revision, String)>,
    /// A branch tip refused because its signature did not verify, and why.
    pub unverified: Option<(Revision, String)>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Failure {
    pub revision: Revision,
    pub reason: String,
    pub checks: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct InFlight {
    pub revision: Revision,
    pub previous: Option<Revision>,
    pub baseline: Vec<Baseline>,
    /// The canary weights it started with.
    pub steps: Vec<u8>,
    /// Step in flight: index and weight.
    pub step: Option<(usize, u8)>,
    /// The last step that passed its bake.
    pub passed: Option<usize>,
    pub failed: Option<String>,
    /// Checks that failed during this rollout: name and detail.
    pub failing_checks: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RevertInFlight {
    pub revision: Revision,
    pub to: Revision,
    pub reason: String,
    /// False when the revert undoes an interrupted rollout rather than a failed one.
    pub failed: bool,
    pub baseline: Vec<Baseline>,
}

impl History {
    /// Folds journal records, oldest first.
    pub fn from_records(records: &[Record]) -> Self {
        let mut history = History::default();
        for record in records {
            history.apply(&record.event);
        }
        history
    }

    /// Folds one more event in.
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::RolloutStarted {
                revision,
                previous,
                baseline,
                steps,
                ..
            } => {
                self.blocked = None;
                self.unverified = None;
                self.in_flight = Some(InFlight {
                    revision: revision.clone(),
                    previous: previous.clone(),
                    baseline: baseline.clone(),
                    steps: steps.clone(),
                    step: None,
                    passed: None,
                    failed: None,
                    failing_checks: Vec::new(),
                });
            }
            Event::StepStarted { step, weight, .. } => {
                if let Some(flight) = &mut self.in_flight {
                    flight.step = Some((*step, *weight));
                }
            }
            Event::StepPassed { step, .. } => {
                if let Some(flight) = &mut self.in_flight {
                    flight.passed = Some(*step);
                }
            }
            Event::CheckFailed { check, detail, .. } => {
                if let Some(flight) = &mut self.in_flight {
                    flight.failing_checks.push((check.clone(), detail.clone()));
                }
            }
            Event::RolloutFailed {
                revision, reason, ..
            } => {
                self.blocked = None;
                self.failed.insert(revision.clone());
                self.last_failure = Some(Failure {
                    revision: revision.clone(),
                    reason: reason.clone(),
                    checks: self
                        .in_flight
                        .as_ref()
                        .map(|flight| flight.failing_checks.clone())
                        .unwrap_or_default(),
                });
                if let Some(flight) = &mut self.in_flight {
                    flight.failed = Some(reason.clone());
                    if flight.previous.is_none() {
                        // A first deploy has nothing to revert to: the failure is final.
                        self.in_flight = None;
                    }
                }
            }
            Event::RevertStarted {
                revision,
                to,
                reason,
                failed,
            } => {
                let baseline = self
                    .in_flight
                    .as_ref()
                    .map(|flight| flight.baseline.clone())
                    .unwrap_or_default();
                self.reverting = Some(RevertInFlight {
                    revision: revision.clone(),
                    to: to.clone(),
                    reason: reason.clone(),
                    failed: *failed,
                    baseline,
                });
            }
            Event::Reverted { to, .. } => {
                self.in_flight = None;
                self.reverting = None;
                self.current = Some(to.clone());
            }
            Event::Healthy { revision } => {
                self.blocked = None;
                self.unverified = None;
                self.in_flight = None;
                self.last_healthy = Some(revision.clone());
                self.current = Some(revision.clone());
                self.healthy.insert(revision.clone());
            }
            Event::Paused { .. } => self.paused = true,
            Event::Resumed { .. } => {
                self.paused = false;
                self.pin = None;
            }
            Event::Approved { revision } => {
                self.approved.insert(revision.clone());
            }
            Event::Pinned { revision, tip } => {
                self.pin = Some((revision.clone(), tip.clone()));
            }
            Event::Inventory { kinds, .. } => {
                self.kinds.extend(kinds.iter().cloned());
            }
            Event::ReconcileFinished { revision, .. } => {
                self.blocked = None;
                self.current = Some(revision.clone());
            }
            Event::Blocked { revision, reason } => {
                self.blocked = Some((revision.clone(), reason.clone()));
            }
            Event::Unblocked { .. } => self.blocked = None,
            Event::VerifyFailed {
                revision, reason, ..
            } => {
                self.unverified = Some((revision.clone(), reason.clone()));
            }
            Event::Retried { revision } => {
                self.failed.remove(revision);
            }
            Event::Rejected { .. }
            | Event::ReconcileStarted { .. }
            | Event::ReconcileFailed { .. }
            | Event::Promoted { .. }
            | Event::RolloutResumed { .. }
            | Event::RevertCommitted { .. }
            | Event::DriftCorrected { .. } => {}
        }
    }

    /// What to do with the branch tip `tip` at `now`. Reverts come first: no gate or window
    /// ever holds one back.
    pub fn next_step(&self, tip: &Revision, gates: &Gates, now: DateTime<Utc>) -> NextStep {
        if let Some(revert) = &self.reverting {
            return NextStep::Revert(revert.clone());
        }
        if let Some(flight) = &self.in_flight {
            // Interrupted by a restart while the tip is still what it rolls out: go on from
            // the step it had reached rather than undo and redo it.
            if flight.failed.is_none() && flight.revision == *tip {
                let from = match (flight.step, flight.passed) {
                    (_, Some(passed)) => passed + 1,
                    (Some((step, _)), None) => step,
                    (None, None) => 0,
                };
                return NextStep::Resume(Resume {
                    revision: flight.revision.clone(),
                    previous: flight.previous.clone(),
                    steps: flight.steps.clone(),
                    from: from.min(flight.steps.len().saturating_sub(1)),
                    baseline: flight.baseline.clone(),
                });
            }
            // An interrupted first deploy has nothing to return to and is simply done again.
            if let Some(previous) = &flight.previous {
                return NextStep::Revert(RevertInFlight {
                    revision: flight.revision.clone(),
                    to: previous.clone(),
                    reason: flight
                        .failed
                        .clone()
                        .unwrap_or_else(|| "rollout interrupted by a restart".into()),
                    failed: flight.failed.is_some(),
                    baseline: flight.baseline.clone(),
                });
            }
        }
        if let Some((pinned, pinned_tip)) = &self.pin
            && pinned_tip == tip
        {
            return NextStep::Pinned(pinned.clone());
        }
        if self.paused {
            return NextStep::Wait {
                reason: "paused (gitopsd resume to continue)".into(),
            };
        }
        if self.failed.contains(tip) {
            return NextStep::Hold {
                failed: tip.clone(),
                at: self.last_healthy.clone(),
            };
        }
        if self.last_healthy.as_ref() == Some(tip) {
            return NextStep::Converge(tip.clone());
        }
        if let Some(reason) = gates.hold(tip, &self.approved, now) {
            return NextStep::Wait { reason };
        }
        NextStep::Rollout {
            revision: tip.clone(),
            previous: self.last_healthy.clone(),
        }
    }
}

/// A rollout a restart interrupted, to go on with.
#[derive(Debug, Clone, PartialEq)]
pub struct Resume {
    pub revision: Revision,
    pub previous: Option<Revision>,
    /// The weights it started with.
    pub steps: Vec<u8>,
    /// The step to go on from (written again; its bake starts over).
    pub from: usize,
    /// How the objects it touches were marked before it started.
    pub baseline: Vec<Baseline>,
}

/// What an environment does on a pass.
#[derive(Debug, Clone, PartialEq)]
pub enum NextStep {
    /// Go on with a rollout a restart interrupted.
    Resume(Resume),
    /// Roll `revision` out; `previous` is what a revert would return to.
    Rollout {
        revision: Revision,
        previous: Option<Revision>,
    },
    /// Already at a healthy `revision`: put back anything that drifted, in place.
    Converge(Revision),
    /// Carry out (or finish) a revert.
    Revert(RevertInFlight),
    /// The tip failed: stay at `at` (the last healthy revision, if any) until a newer commit.
    Hold {
        failed: Revision,
        at: Option<Revision>,
    },
    /// An operator rolled back to this revision: keep the environment at it, in place.
    Pinned(Revision),
    /// A gate holds the tip back (pause, approval, upstream, window): change nothing.
    Wait { reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{ChangeRecord, Event};
    use chrono::TimeZone;

    fn at(seconds: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + seconds, 0)
            .single()
            .expect("valid timestamp")
    }

    fn timing() -> Timing {
        Timing {
            bake: Duration::from_secs(60),
            timeout: Duration::from_secs(30),
            verify: Duration::from_secs(120),
        }
    }

    fn failure() -> CheckFailure {
        CheckFailure {
            check: "errors".into(),
            detail: "value 0.2 is above max 0.01".into(),
            consecutive: 3,
        }
    }

    #[test]
    fn steps_bake_then_promote_and_verify() {
        let mut rollout = Rollout::new(vec![10, 50, 100], timing());
        assert_eq!(
            rollout.decision(),
            Decision::ApplyStep {
                step: 0,
                weight: 10
            }
        );
        assert_eq!(
            rollout.observe(Observation::Applied, at(0)),
            (None, Decision::AwaitReady { deadline: at(30) })
        );
        assert_eq!(
            rollout.observe(Observation::Ready, at(5)),
            (
                None,
                Decision::Shrink {
                    step: 0,
                    weight: 10
                }
            ),
            "what the canary replaces goes only once the canary is ready"
        );
        assert_eq!(
            rollout.observe(Observation::Shrunk, at(5)),
            (None, Decision::Watch { until: at(65) })
        );
        assert_eq!(
            rollout.observe(Observation::Tick, at(64)),
            (None, Decision::Watch { until: at(65) }),
            "bake is not over"
        );
        assert_eq!(
            rollout.observe(Observation::Tick, at(65)),
            (
                Some(Milestone::StepPassed {
                    step: 0,
                    weight: 10
                }),
                Decision::ApplyStep {
                    step: 1,
                    weight: 50
                }
            )
        );
        rollout.observe(Observation::Applied, at(66));
        rollout.observe(Observation::Ready, at(66));
        rollout.observe(Observation::Shrunk, at(66));
        let (milestone, decision) = rollout.observe(Observation::Tick, at(126));
        assert_eq!(
            milestone,
            Some(Milestone::StepPassed {
                step: 1,
                weight: 50
            })
        );
        assert_eq!(
            decision,
            Decision::ApplyStep {
                step: 2,
                weight: 100
            }
        );
        rollout.observe(Observation::Applied, at(127));
        assert_eq!(
            rollout.observe(Observation::Ready, at(128)),
            (
                None,
                Decision::Shrink {
                    step: 2,
                    weight: 100
                }
            ),
            "the canary is deleted only once the promoted stable is ready"
        );
        assert_eq!(
            rollout.observe(Observation::Shrunk, at(128)),
            (
                Some(Milestone::Promoted),
                Decision::Watch { until: at(248) }
            )
        );
        assert_eq!(
            rollout.observe(Observation::Tick, at(248)),
            (Some(Milestone::Succeeded), Decision::Succeed)
        );
    }

    #[test]
    fn a_failed_check_during_bake_reverts() {
        let mut rollout = Rollout::new(vec![10, 50, 100], timing());
        rollout.observe(Observation::Applied, at(0));
        rollout.observe(Observation::Ready, at(0));
        rollout.observe(Observation::Shrunk, at(0));
        rollout.observe(Observation::Tick, at(60));
        rollout.observe(Observation::Applied, at(60));
        rollout.observe(Observation::Ready, at(61));
        rollout.observe(Observation::Shrunk, at(61));
        let (milestone, decision) = rollout.observe(Observation::CheckFailed(failure()), at(70));
        let Some(Milestone::Failed { reason }) = milestone else {
            panic!("expected a failure milestone");
        };
        assert!(
            reason.starts_with("step 2 (50%): check \"errors\" failed 3 times"),
            "{reason}"
        );
        assert_eq!(
            decision,
            Decision::Revert {
                reason,
                cause: cause::CHECK_FAILED.into()
            }
        );
    }

    #[test]
    fn a_failure_in_the_verify_window_reverts() {
        let mut rollout = Rollout::new(vec![100], timing());
        rollout.observe(Observation::Applied, at(0));
        rollout.observe(Observation::Ready, at(1));
        rollout.observe(Observation::Shrunk, at(1));
        let (_, decision) = rollout.observe(Observation::CheckFailed(failure()), at(50));
        assert!(
            matches!(decision, Decision::Revert { ref reason, .. } if reason.starts_with("verify after promotion")),
            "{decision:?}"
        );
    }

    #[test]
    fn readiness_past_the_deadline_fails_the_step() {
        let mut rollout = Rollout::new(vec![50, 100], timing());
        rollout.observe(Observation::Applied, at(0));
        let not_ready = || Observation::NotReady {
            detail: "Deployment web: 1 of 2 updated".into(),
        };
        assert_eq!(
            rollout.observe(not_ready(), at(29)).0,
            None,
            "still within the timeout"
        );
        let (milestone, decision) = rollout.observe(not_ready(), at(30));
        assert!(matches!(milestone, Some(Milestone::Failed { .. })));
        assert!(
            matches!(decision, Decision::Revert { ref cause, .. } if cause == cause::TIMEOUT),
            "{decision:?}"
        );
    }

    #[test]
    fn a_broken_object_fails_the_step_at_once_without_waiting_for_the_timeout() {
        let mut rollout = Rollout::new(vec![25, 100], timing());
        rollout.observe(Observation::Applied, at(0));
        let (milestone, decision) = rollout.observe(
            Observation::Broken {
                cause: "CrashLoopBackOff".into(),
                detail: "Deployment.apps shop/web-canary: pod web-canary-1: container web is waiting in CrashLoopBackOff".into(),
            },
            at(3),
        );
        let Some(Milestone::Failed { reason }) = milestone else {
            panic!("expected a failure, got {milestone:?}");
        };
        assert!(
            reason.starts_with("step 1 (25%): Deployment.apps shop/web-canary: pod"),
            "{reason}"
        );
        assert_eq!(
            decision,
            Decision::Revert {
                reason,
                cause: "CrashLoopBackOff".into()
            }
        );
    }

    #[test]
    fn zero_bake_and_verify_pass_at_once() {
        let mut rollout = Rollout::new(
            vec![100],
            Timing {
                bake: Duration::ZERO,
                timeout: Duration::from_secs(1),
                verify: Duration::ZERO,
            },
        );
        rollout.observe(Observation::Applied, at(0));
        rollout.observe(Observation::Ready, at(0));
        rollout.observe(Observation::Shrunk, at(0));
        assert_eq!(
            rollout.observe(Observation::Tick, at(0)).1,
            Decision::Succeed
        );
    }

    fn revision(c: char) -> Revision {
        Revision(c.to_string().repeat(40))
    }

    fn record(seq: u64, event: Event) -> Record {
        Record {
            seq,
            time: at(seq as i64),
            environment: "staging".into(),
            event,
        }
    }

    fn started(rev: char, previous: Option<char>) -> Event {
        Event::RolloutStarted {
            revision: revision(rev),
            previous: previous.map(revision),
            steps: vec![10, 100],
            changes: vec![ChangeRecord {
                action: crate::plan::Action::Update,
                object: "Deployment.apps shop/web".into(),
                hash: Some("h".into()),
            }],
            canaries: vec!["Deployment.apps shop/web".into()],
            baseline: Vec::new(),
        }
    }

    #[test]
    fn history_tracks_healthy_failed_and_holds_a_failed_tip() {
        let records = [
            record(1, started('a', None)),
            record(
                2,
                Event::Healthy {
                    revision: revision('a'),
                },
            ),
            record(3, started('b', Some('a'))),
            record(
                4,
                Event::RolloutFailed {
                    revision: revision('b'),
                    reason: "bad".into(),
                    cause: None,
                },
            ),
            record(
                5,
                Event::RevertStarted {
                    revision: revision('b'),
                    to: revision('a'),
                    reason: "bad".into(),
                    failed: true,
                },
            ),
            record(
                6,
                Event::Reverted {
                    revision: revision('b'),
                    to: revision('a'),
                },
            ),
        ];
        let history = History::from_records(&records);
        assert_eq!(history.last_healthy, Some(revision('a')));
        assert_eq!(history.current, Some(revision('a')));
        assert!(history.failed.contains(&revision('b')));
        assert_eq!(
            history.next_step(&revision('b'), &Gates::default(), at(0)),
            NextStep::Hold {
                failed: revision('b'),
                at: Some(revision('a'))
            }
        );
        assert_eq!(
            history.next_step(&revision('c'), &Gates::default(), at(0)),
            NextStep::Rollout {
                revision: revision('c'),
                previous: Some(revision('a'))
            }
        );
        assert_eq!(
            history.next_step(&revision('a'), &Gates::default(), at(0)),
            NextStep::Converge(revision('a'))
        );
    }

    #[test]
    fn an_interrupted_rollout_resumes_at_its_step_unless_the_tip_moved_on() {
        let mut records = vec![
            record(
                1,
                Event::Healthy {
                    revision: revision('a'),
                },
            ),
            record(2, started('b', Some('a'))),
        ];
        let resume_from = |records: &[Record]| match History::from_records(records).next_step(
            &revision('b'),
            &Gates::default(),
            at(0),
        ) {
            NextStep::Resume(resume) => resume.from,
            other => panic!("expected a resume, got {other:?}"),
        };
        assert_eq!(resume_from(&records), 0, "killed before its first step");
        records.push(record(
            3,
            Event::StepStarted {
                revision: revision('b'),
                step: 0,
                weight: 10,
            },
        ));
        assert_eq!(resume_from(&records), 0, "the step is written again");
        records.push(record(
            4,
            Event::StepPassed {
                revision: revision('b'),
                step: 0,
                weight: 10,
            },
        ));
        assert_eq!(resume_from(&records), 1, "a passed step is not baked again");
        let history = History::from_records(&records);
        assert!(history.failed.is_empty());

        // A newer commit arrived meanwhile: the interrupted one is undone, not blamed.
        let NextStep::Revert(revert) = history.next_step(&revision('c'), &Gates::default(), at(0))
        else {
            panic!("expected a revert");
        };
        assert_eq!(revert.to, revision('a'));
        assert!(!revert.failed);
    }

    #[test]
    fn a_block_is_not_a_failure_and_a_retry_clears_a_held_failure() {
        let blocked = History::from_records(&[
            record(
                1,
                Event::Healthy {
                    revision: revision('a'),
                },
            ),
            record(
                2,
                Event::Blocked {
                    revision: revision('b'),
                    reason: "connection refused".into(),
                },
            ),
        ]);
        assert_eq!(
            blocked.blocked,
            Some((revision('b'), "connection refused".into()))
        );
        assert!(
            matches!(
                blocked.next_step(&revision('b'), &Gates::default(), at(0)),
                NextStep::Rollout { .. }
            ),
            "a blocked revision is tried again"
        );
        let mut records = vec![
            record(
                1,
                Event::Healthy {
                    revision: revision('a'),
                },
            ),
            record(2, started('b', Some('a'))),
            record(
                3,
                Event::RolloutFailed {
                    revision: revision('b'),
                    reason: "invalid".into(),
                    cause: Some(cause::REJECTED.into()),
                },
            ),
            record(
                4,
                Event::RevertStarted {
                    revision: revision('b'),
                    to: revision('a'),
                    reason: "invalid".into(),
                    failed: true,
                },
            ),
            record(
                5,
                Event::Reverted {
                    revision: revision('b'),
                    to: revision('a'),
                },
            ),
        ];
        assert!(matches!(
            History::from_records(&records).next_step(&revision('b'), &Gates::default(), at(0)),
            NextStep::Hold { .. }
        ));
        records.push(record(
            6,
            Event::Retried {
                revision: revision('b'),
            },
        ));
        assert!(matches!(
            History::from_records(&records).next_step(&revision('b'), &Gates::default(), at(0)),
            NextStep::Rollout { .. }
        ));
    }

    #[test]
    fn no_gate_or_pause_holds_back_a_revert() {
        let records = [
            record(
                1,
                Event::Healthy {
                    revision: revision('a'),
                },
            ),
            record(2, started('b', Some('a'))),
            record(
                3,
                Event::Paused {
                    revision: revision('b'),
                },
            ),
        ];
        let closed = Gates {
            window: Some(
                crate::gates::Window::parse("0 0 1 1 *", Duration::from_secs(60), "UTC")
                    .expect("valid window"),
            ),
            upstream: Some(("staging".into(), BTreeSet::new())),
            manual_approval: true,
        };
        let history = History::from_records(&records);
        assert!(matches!(
            history.next_step(&revision('c'), &closed, at(100)),
            NextStep::Revert(_)
        ));
        // Once back at `a`, the pause and then the gates hold the new tip.
        let mut reverted = records.to_vec();
        reverted.push(record(
            4,
            Event::Reverted {
                revision: revision('b'),
                to: revision('a'),
            },
        ));
        let history = History::from_records(&reverted);
        assert!(
            matches!(history.next_step(&revision('c'), &closed, at(100)), NextStep::Wait { ref reason } if reason.starts_with("paused"))
        );
        reverted.push(record(
            5,
            Event::Resumed {
                revision: revision('c'),
            },
        ));
        let history = History::from_records(&reverted);
        assert!(
            matches!(history.next_step(&revision('c'), &closed, at(100)), NextStep::Wait { ref reason } if reason.contains("healthy in staging"))
        );
    }

    #[test]
    fn an_interrupted_revert_is_finished_and_a_failed_first_deploy_holds() {
        let reverting = [
            record(
                1,
                Event::Healthy {
                    revision: revision('a'),
                },
            ),
            record(2, started('b', Some('a'))),
            record(
                3,
                Event::RolloutFailed {
                    revision: revision('b'),
                    reason: "bad".into(),
                    cause: None,
                },
            ),
            record(
                4,
                Event::RevertStarted {
                    revision: revision('b'),
                    to: revision('a'),
                    reason: "bad".into(),
                    failed: true,
                },
            ),
        ];
        let history = History::from_records(&reverting);
        assert!(
            matches!(history.next_step(&revision('c'), &Gates::default(), at(0)), NextStep::Revert(ref r) if r.failed)
        );

        let first = [
            record(1, started('a', None)),
            record(
                2,
                Event::RolloutFailed {
                    revision: revision('a'),
                    reason: "bad".into(),
                    cause: None,
                },
            ),
        ];
        assert_eq!(
            History::from_records(&first).next_step(&revision('a'), &Gates::default(), at(0)),
            NextStep::Hold {
                failed: revision('a'),
                at: None
            }
        );
    }
}
