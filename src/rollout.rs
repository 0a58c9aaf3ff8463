//! The rollout state machine (pure: no IO, `now` passed in): steps, bake, promotion, verify
//! and the verdict that fails a rollout.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::health::CheckFailure;

/// Times a rollout waits, from the environment's `[rollout]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub bake: Duration,
    pub timeout: Duration,
    pub verify: Duration,
}

/// How a changed workload is rolled out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// Replica-weighted canary steps (StatefulSets: partition steps).
    #[default]
    Canary,
    /// A full preview beside the old pods, switched in one Service write.
    BlueGreen,
}

impl Strategy {
    /// Reads a `strategy` value (config key or `gitopsd.io/strategy` annotation).
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "canary" => Some(Self::Canary),
            "blue-green" => Some(Self::BlueGreen),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Canary => "canary",
            Self::BlueGreen => "blue-green",
        }
    }
}

/// How changes are rolled out (DESIGN §4).
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutConfig {
    /// How a changed Deployment is rolled out.
    pub strategy: Strategy,
    /// Blue/green: how long the old pods stay up after the switch.
    pub scale_down_delay: Duration,
    /// Blue/green: switch once the preview baked; false waits for `gitopsd approve`.
    pub auto_promote: bool,
    /// Blue/green: how many pods the preview runs before the switch (none: the full count;
    /// never more than it). A short preview is scaled to the full count before the switch.
    pub preview_replicas: Option<u32>,
    /// Blue/green: a Service of the revision to use as the preview Service of the
    /// Deployments it selects, instead of a made `<service>-preview`.
    pub preview_service: Option<String>,
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
            strategy: Strategy::Canary,
            scale_down_delay: Duration::from_secs(30),
            auto_promote: true,
            preview_replicas: None,
            preview_service: None,
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
    pub const HOOK_FAILED: &str = "HookFailed";
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
    /// A post-promotion hook failed (`hook` names it; `detail` says how).
    HookFailed { hook: String, detail: String },
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
        let (next, milestone) = self.transition(observation, now);
        if let Some(next) = next {
            self.phase = next;
        }
        (milestone, self.decision())
    }

    /// The phase an observation leads to from the current one (none: stay) and the milestone
    /// reached on the way.
    fn transition(
        &self,
        observation: Observation,
        now: DateTime<Utc>,
    ) -> (Option<Phase>, Option<Milestone>) {
        match (&self.phase, observation) {
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
            (Phase::Shrink { step }, Observation::Shrunk) => self.shrunk(*step, now),
            (Phase::AwaitReady { step, deadline }, Observation::NotReady { detail })
                if now >= *deadline =>
            {
                self.timed_out(*step, &detail)
            }
            // A pod that crash-loops or cannot pull its image fails the step whenever it is
            // seen: while the step waits for readiness, bakes, or after the promotion.
            (
                Phase::AwaitReady { step, .. } | Phase::Bake { step, .. } | Phase::Shrink { step },
                Observation::Broken { cause, detail },
            ) => {
                let reason = format!("step {} ({}%): {detail}", step + 1, self.weight(*step));
                failed(reason, &cause)
            }
            (Phase::Verify { .. }, Observation::Broken { cause, detail }) => {
                failed(format!("after promotion: {detail}"), &cause)
            }
            (
                Phase::Bake { step, .. } | Phase::AwaitReady { step, .. } | Phase::Shrink { step },
                Observation::CheckFailed(failure),
            ) => self.check_failed_at_step(*step, &failure),
            (Phase::Verify { .. }, Observation::CheckFailed(failure)) => {
                Self::check_failed_in_verify(&failure)
            }
            (Phase::Verify { .. }, Observation::HookFailed { hook, detail }) => failed(
                format!("post-promotion hook {hook} failed: {detail}"),
                cause::HOOK_FAILED,
            ),
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
        }
    }

    /// After a step shrank what it replaces: the last step is the promotion and verifies, any
    /// other bakes.
    fn shrunk(&self, step: usize, now: DateTime<Utc>) -> (Option<Phase>, Option<Milestone>) {
        if self.is_last(step) {
            (
                Some(Phase::Verify {
                    until: after(now, self.timing.verify),
                }),
                Some(Milestone::Promoted),
            )
        } else {
            (
                Some(Phase::Bake {
                    step,
                    until: after(now, self.timing.bake),
                }),
                None,
            )
        }
    }

    /// Fails a step whose objects were not ready by its deadline.
    fn timed_out(&self, step: usize, detail: &str) -> (Option<Phase>, Option<Milestone>) {
        let reason = format!(
            "step {} ({}%): not ready within {}: {detail}",
            step + 1,
            self.weight(step),
            humantime::format_duration(self.timing.timeout)
        );
        failed(reason, cause::TIMEOUT)
    }

    /// Fails a step (before promotion) on a check that reached its threshold.
    fn check_failed_at_step(
        &self,
        step: usize,
        failure: &CheckFailure,
    ) -> (Option<Phase>, Option<Milestone>) {
        let reason = format!(
            "step {} ({}%): check {:?} failed {} times in a row: {}",
            step + 1,
            self.weight(step),
            failure.check,
            failure.consecutive,
            failure.detail
        );
        failed(reason, cause::CHECK_FAILED)
    }

    /// Fails a promoted rollout on a check that reached its threshold while verifying.
    fn check_failed_in_verify(failure: &CheckFailure) -> (Option<Phase>, Option<Milestone>) {
        let reason = format!(
            "verify after promotion: check {:?} failed {} times in a row: {}",
            failure.check, failure.consecutive, failure.detail
        );
        failed(reason, cause::CHECK_FAILED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
    fn a_failed_post_promotion_hook_reverts_and_counts_nowhere_else() {
        let hook_failed = || Observation::HookFailed {
            hook: "command smoke".into(),
            detail: "exited with status 1".into(),
        };
        let mut rollout = Rollout::new(vec![50, 100], timing());
        rollout.observe(Observation::Applied, at(0));
        let before = rollout.phase().clone();
        assert_eq!(
            rollout.observe(hook_failed(), at(1)).0,
            None,
            "not before the promotion"
        );
        assert_eq!(rollout.phase(), &before);
        let mut rollout = Rollout::new(vec![100], timing());
        rollout.observe(Observation::Applied, at(0));
        rollout.observe(Observation::Ready, at(1));
        rollout.observe(Observation::Shrunk, at(1));
        let (milestone, decision) = rollout.observe(hook_failed(), at(2));
        assert!(matches!(milestone, Some(Milestone::Failed { .. })));
        assert_eq!(
            decision,
            Decision::Revert {
                reason: "post-promotion hook command smoke failed: exited with status 1".into(),
                cause: cause::HOOK_FAILED.into()
            }
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
    fn a_pod_that_breaks_during_the_bake_or_the_verify_window_fails_the_rollout() {
        let crash = || Observation::Broken {
            cause: "CrashLoopBackOff".into(),
            detail: "pod web-canary-1: container web is waiting in CrashLoopBackOff".into(),
        };
        let mut baking = Rollout::new(vec![50, 100], timing());
        baking.observe(Observation::Applied, at(0));
        baking.observe(Observation::Ready, at(1));
        let (_, decision) = baking.observe(Observation::Shrunk, at(2));
        assert_eq!(decision, Decision::Watch { until: at(62) });
        let (milestone, decision) = baking.observe(crash(), at(6));
        assert!(
            matches!(milestone, Some(Milestone::Failed { .. })),
            "{milestone:?}"
        );
        assert!(
            matches!(&decision, Decision::Revert { reason, cause } if cause == "CrashLoopBackOff" && reason.starts_with("step 1 (50%): pod web-canary-1")),
            "{decision:?}"
        );

        let mut verifying = Rollout::starting_at(vec![50, 100], timing(), 1);
        verifying.observe(Observation::Applied, at(0));
        verifying.observe(Observation::Ready, at(1));
        let (milestone, _) = verifying.observe(Observation::Shrunk, at(2));
        assert_eq!(milestone, Some(Milestone::Promoted));
        let (_, decision) = verifying.observe(crash(), at(30));
        assert!(
            matches!(&decision, Decision::Revert { reason, .. } if reason.starts_with("after promotion: pod web-canary-1")),
            "{decision:?}"
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

    #[test]
    fn observations_that_do_not_fit_the_phase_change_nothing() {
        let mut rollout = Rollout::new(vec![25, 100], timing());
        let unchanged = |rollout: &mut Rollout, observation: Observation, now| {
            let before = rollout.phase().clone();
            assert_eq!(rollout.observe(observation, now).0, None);
            assert_eq!(rollout.phase(), &before);
        };
        // Checks only count once the step's objects are written.
        unchanged(&mut rollout, Observation::CheckFailed(failure()), at(0));
        unchanged(&mut rollout, Observation::Ready, at(0));
        rollout.observe(Observation::Applied, at(0));
        // Not ready before the deadline is waited out.
        unchanged(
            &mut rollout,
            Observation::NotReady {
                detail: "starting".into(),
            },
            at(29),
        );
        unchanged(&mut rollout, Observation::Shrunk, at(29));
        rollout.observe(Observation::Ready, at(29));
        rollout.observe(Observation::Shrunk, at(29));
        // A bake ends on a tick at its end, not before.
        unchanged(&mut rollout, Observation::Tick, at(88));
        unchanged(&mut rollout, Observation::Applied, at(88));
        assert_eq!(
            rollout.observe(Observation::Tick, at(89)).0,
            Some(Milestone::StepPassed {
                step: 0,
                weight: 25
            })
        );
    }
}
