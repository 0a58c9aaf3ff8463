//! The blue/green state machine (pure: no IO, `now` passed in): preview, bake, switch,
//! verify with the old pods kept, scale-down, and the verdicts that switch back or revert.
//!
//! The phases, for one revision whose Deployment runs blue/green:
//!
//! ```text
//! Preview ─▶ AwaitPreview ─▶ Bake ─▶ [AwaitApproval] ─▶ [ScaleUp ─▶ AwaitFull] ─▶ Switch
//!    ─▶ Verify ─▶ ScaleDown ─▶ AwaitStable ─▶ [Hold] ─▶ Settle ─▶ Succeeded
//! ```
//!
//! `AwaitApproval` is there with `auto_promote = false`; `ScaleUp` when the preview runs
//! fewer pods than the full count (`preview_replicas`), so the switch never sends the traffic
//! of every pod to fewer. `Hold` keeps the preview serving until the verify window is over.
//!
//! A revision that also changes workloads of the canary strategy (a *mixed* rollout) steps
//! them beside the preview: the first canary step is written with the preview, and in place
//! of `Bake` each canary step below 100% waits for its capacity, scales its stables down
//! (`Shrink`) and bakes (`StepBake`), the preview baking with it; then come the approval and
//! the switch, and right after it the canaries' promotion (`Promote ─▶ AwaitPromoted ─▶
//! Retire`) before the verify window opens.
//!
//! Before the switch nothing served has changed, so a failure reverts (the preview is
//! removed). Between the switch and the scale-down the old pods are still up: a failure
//! switches the active Service back in one write first, then reverts. Once the old pods are
//! being replaced a failure reverts, and the revert first brings the Deployment named in git
//! back to the old template and ready behind the preview before it switches back.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::health::CheckFailure;
use crate::rollout::cause;

/// Times a blue/green rollout waits, from the environment's `[rollout]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlueGreenTiming {
    /// How long the preview must stay healthy before the switch.
    pub bake: Duration,
    /// How long the preview (and later the scaled-up stable) may take to become ready.
    pub timeout: Duration,
    /// How long checks keep running after the switch.
    pub verify: Duration,
    /// How long the old pods stay up after the switch.
    pub scale_down_delay: Duration,
    /// Switch once the bake passed; false waits for an approval.
    pub auto_promote: bool,
    /// The preview runs fewer pods than the full count: it is scaled up before the switch.
    pub scale_up: bool,
}

/// Where a blue/green rollout stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    /// The preview Deployment and Service must be written, the active Service pinned to the
    /// old pods.
    Preview,
    /// Written; waiting for every preview pod to be ready.
    AwaitPreview {
        deadline: DateTime<Utc>,
    },
    /// The preview holds while checks run.
    Bake {
        until: DateTime<Utc>,
    },
    /// Mixed: canary step `step` (below 100%) must be written.
    Step {
        step: usize,
    },
    /// Mixed: waiting for the canaries of step `step` to be ready.
    AwaitStep {
        step: usize,
        deadline: DateTime<Utc>,
    },
    /// Mixed: step `step`'s canaries are ready; the stables they replace must be scaled down.
    Shrink {
        step: usize,
    },
    /// Mixed: canary step `step` and the preview hold while checks run.
    StepBake {
        step: usize,
        until: DateTime<Utc>,
    },
    /// The bake passed; an operator must approve the switch.
    AwaitApproval,
    /// The preview must be scaled to the full count before the switch.
    ScaleUp,
    /// Scaled up; waiting for every preview pod to be ready.
    AwaitFull {
        deadline: DateTime<Utc>,
    },
    /// The active Service's selector must move to the new pods, in one write.
    Switch,
    /// Mixed: switched; the canaries' stables must get the new template.
    Promote,
    /// Mixed: waiting for the promoted stables to be ready.
    AwaitPromoted {
        deadline: DateTime<Utc>,
    },
    /// Mixed: the canaries and their config copies must go.
    Retire,
    /// Switched; checks run and the old pods stay up until `scale_down_at`.
    Verify {
        until: DateTime<Utc>,
        scale_down_at: DateTime<Utc>,
    },
    /// The Deployment named in git must get the new template (its old pods go).
    ScaleDown {
        verify_until: DateTime<Utc>,
    },
    /// Waiting for the Deployment named in git to run the new template in full.
    AwaitStable {
        deadline: DateTime<Utc>,
        verify_until: DateTime<Utc>,
    },
    /// The Deployment named in git runs the new template; the active Service keeps
    /// selecting the preview (so a failure can still switch back cleanly) while checks run
    /// until the verify window ends.
    Hold {
        until: DateTime<Utc>,
    },
    /// The active Service gets git's selector back and the preview Deployment goes.
    Settle,
    /// A failure after the switch: the active Service goes back to the old pods first.
    SwitchBack {
        reason: String,
        cause: String,
    },
    Succeeded,
    Failed {
        reason: String,
        cause: String,
    },
}

/// What the executor saw since the last decision.
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    /// The current decision's writes are done.
    Written,
    /// Every object waited for is ready.
    Ready,
    /// Some object is not ready yet.
    NotReady { detail: String },
    /// Some object will not become ready by waiting.
    Broken { cause: String, detail: String },
    /// A check reached its failure threshold.
    CheckFailed(CheckFailure),
    /// An operator approved the switch.
    Approved,
    /// Nothing new; time passed.
    Tick,
}

impl From<crate::rollout::Observation> for Observation {
    /// What the executor's readiness polls and check watches report, in this machine's terms.
    fn from(observation: crate::rollout::Observation) -> Self {
        use crate::rollout::Observation as Seen;
        match observation {
            Seen::Applied | Seen::Shrunk => Self::Written,
            Seen::Ready => Self::Ready,
            Seen::NotReady { detail } => Self::NotReady { detail },
            Seen::Broken { cause, detail } => Self::Broken { cause, detail },
            Seen::CheckFailed(failure) => Self::CheckFailed(failure),
            // A failed post-promotion hook fails the rollout whatever phase it is in.
            Seen::HookFailed { hook, detail } => Self::Broken {
                cause: crate::rollout::cause::HOOK_FAILED.into(),
                detail: format!("post-promotion hook {hook} failed: {detail}"),
            },
            Seen::Tick => Self::Tick,
        }
    }
}

/// What the executor must do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Write the preview Deployment and Service and pin the active Service to the old pods.
    StartPreview,
    /// Poll readiness until ready or `deadline`.
    AwaitReady { deadline: DateTime<Utc> },
    /// Run checks (and watch pods) until `until`.
    Watch { until: DateTime<Utc> },
    /// Run checks until an operator approves.
    AwaitApproval,
    /// Scale the preview to the full count.
    ScaleUp,
    /// Mixed: write the canaries of step `step` at `weight` percent.
    Step { step: usize, weight: u8 },
    /// Mixed: scale down the stables step `step` replaces.
    Shrink { step: usize },
    /// Mixed: give the canaries' stables the new template.
    Promote,
    /// Mixed: delete the canaries and their config copies.
    Retire,
    /// Move the active Service's selector to the new pods, in one write.
    Switch,
    /// Give the Deployment named in git the new template.
    ScaleDown,
    /// Give the active Service git's selector back and delete the preview Deployment.
    Settle,
    /// Move the active Service's selector back to the old pods, in one write.
    SwitchBack,
    /// The revision is healthy.
    Succeed,
    /// Put the environment back to its last healthy revision.
    Revert { reason: String, cause: String },
}

/// A milestone worth journaling, produced by a transition.
#[derive(Debug, Clone, PartialEq)]
pub enum Milestone {
    /// The preview is ready and its bake passed.
    PreviewPassed,
    /// Mixed: canary step `step` baked.
    StepPassed {
        step: usize,
        weight: u8,
    },
    /// Mixed: the canaries' stables run the new template; the canaries are gone.
    Promoted,
    /// The active Service selects the new pods.
    Switched,
    /// The active Service selects the old pods again.
    SwitchedBack,
    /// The Deployment named in git runs the new template; the preview is gone.
    ScaledDown,
    Failed {
        reason: String,
    },
    Succeeded,
}

type Transition = (Option<Phase>, Option<Milestone>);

fn after(now: DateTime<Utc>, duration: Duration) -> DateTime<Utc> {
    now + chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
}

fn failed(reason: String, cause: &str) -> Transition {
    (
        Some(Phase::Failed {
            reason: reason.clone(),
            cause: cause.to_string(),
        }),
        Some(Milestone::Failed { reason }),
    )
}

fn failure_text(failure: &CheckFailure) -> String {
    format!(
        "check {:?} failed {} times in a row: {}",
        failure.check, failure.consecutive, failure.detail
    )
}

/// One revision's blue/green rollout.
#[derive(Debug, Clone, PartialEq)]
pub struct BlueGreen {
    timing: BlueGreenTiming,
    /// Mixed: the canary weights below 100 stepped with the preview.
    steps: Vec<u8>,
    /// Mixed: canaries are promoted right after the switch.
    promote: bool,
    phase: Phase,
}

impl BlueGreen {
    pub fn new(timing: BlueGreenTiming) -> Self {
        Self::mixed(timing, &[], false)
    }

    /// A rollout that also steps canaries through `steps` (their weights; those below 100
    /// are stepped with the preview) and, with `promote`, promotes them right after the
    /// switch.
    pub fn mixed(timing: BlueGreenTiming, steps: &[u8], promote: bool) -> Self {
        Self {
            timing,
            steps: steps.iter().copied().filter(|w| *w < 100).collect(),
            promote,
            phase: Phase::Preview,
        }
    }

    /// A rollout that goes on from `phase` (after a restart).
    pub fn resuming(timing: BlueGreenTiming, phase: Phase) -> Self {
        Self {
            timing,
            steps: Vec::new(),
            promote: false,
            phase,
        }
    }

    /// Mixed: the weight of canary step `step`.
    pub fn weight(&self, step: usize) -> u8 {
        self.steps.get(step).copied().unwrap_or(100)
    }

    /// Mixed: the canary weights stepped with the preview.
    pub fn steps(&self) -> &[u8] {
        &self.steps
    }

    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// The decision for the current phase.
    pub fn decision(&self) -> Decision {
        match &self.phase {
            Phase::Preview => Decision::StartPreview,
            Phase::AwaitPreview { deadline }
            | Phase::AwaitStep { deadline, .. }
            | Phase::AwaitFull { deadline }
            | Phase::AwaitPromoted { deadline }
            | Phase::AwaitStable { deadline, .. } => Decision::AwaitReady {
                deadline: *deadline,
            },
            Phase::Bake { until } | Phase::StepBake { until, .. } | Phase::Hold { until } => {
                Decision::Watch { until: *until }
            }
            // The old pods stay up for the whole delay, even past the verify window.
            Phase::Verify { scale_down_at, .. } => Decision::Watch {
                until: *scale_down_at,
            },
            Phase::Step { step } => Decision::Step {
                step: *step,
                weight: self.weight(*step),
            },
            Phase::Shrink { step } => Decision::Shrink { step: *step },
            Phase::AwaitApproval => Decision::AwaitApproval,
            Phase::ScaleUp => Decision::ScaleUp,
            Phase::Switch => Decision::Switch,
            Phase::Promote => Decision::Promote,
            Phase::Retire => Decision::Retire,
            Phase::ScaleDown { .. } => Decision::ScaleDown,
            Phase::Settle => Decision::Settle,
            Phase::SwitchBack { .. } => Decision::SwitchBack,
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

    fn transition(&self, observation: Observation, now: DateTime<Utc>) -> Transition {
        match observation {
            Observation::Written => self.written(now),
            Observation::Ready => self.ready(now),
            Observation::NotReady { detail } => self.not_ready(&detail, now),
            Observation::Broken { cause, detail } => self.fail(detail, &cause),
            Observation::CheckFailed(failure) => {
                self.fail(failure_text(&failure), cause::CHECK_FAILED)
            }
            Observation::Approved => match self.phase {
                Phase::AwaitApproval => (Some(self.promotion()), None),
                _ => (None, None),
            },
            Observation::Tick => self.tick(now),
        }
    }

    /// The verify window and the scale-down, counted from `now` (the switch, or in a mixed
    /// rollout the end of the canaries' promotion).
    fn verifying(&self, now: DateTime<Utc>) -> Phase {
        Phase::Verify {
            until: after(now, self.timing.verify),
            scale_down_at: after(now, self.timing.scale_down_delay),
        }
    }

    /// A write decision is done.
    fn written(&self, now: DateTime<Utc>) -> Transition {
        let waiting = after(now, self.timing.timeout);
        match &self.phase {
            Phase::Preview => (Some(Phase::AwaitPreview { deadline: waiting }), None),
            Phase::Step { step } => (
                Some(Phase::AwaitStep {
                    step: *step,
                    deadline: waiting,
                }),
                None,
            ),
            Phase::Shrink { step } => (
                Some(Phase::StepBake {
                    step: *step,
                    until: after(now, self.timing.bake),
                }),
                None,
            ),
            Phase::ScaleUp => (Some(Phase::AwaitFull { deadline: waiting }), None),
            Phase::Switch if self.promote => (Some(Phase::Promote), Some(Milestone::Switched)),
            Phase::Switch => (Some(self.verifying(now)), Some(Milestone::Switched)),
            Phase::Promote => (Some(Phase::AwaitPromoted { deadline: waiting }), None),
            Phase::Retire => (Some(self.verifying(now)), Some(Milestone::Promoted)),
            Phase::ScaleDown { verify_until } => (
                Some(Phase::AwaitStable {
                    deadline: waiting,
                    verify_until: *verify_until,
                }),
                None,
            ),
            Phase::Settle => (Some(Phase::Succeeded), Some(Milestone::ScaledDown)),
            Phase::SwitchBack { reason, cause } => (
                Some(Phase::Failed {
                    reason: reason.clone(),
                    cause: cause.clone(),
                }),
                Some(Milestone::SwitchedBack),
            ),
            _ => (None, None),
        }
    }

    fn ready(&self, now: DateTime<Utc>) -> Transition {
        match &self.phase {
            // Mixed: the first canary step was written with the preview.
            Phase::AwaitPreview { .. } if !self.steps.is_empty() => {
                (Some(Phase::Shrink { step: 0 }), None)
            }
            Phase::AwaitPreview { .. } => (
                Some(Phase::Bake {
                    until: after(now, self.timing.bake),
                }),
                None,
            ),
            Phase::AwaitStep { step, .. } => (Some(Phase::Shrink { step: *step }), None),
            Phase::AwaitFull { .. } => (Some(Phase::Switch), None),
            Phase::AwaitPromoted { .. } => (Some(Phase::Retire), None),
            Phase::AwaitStable { verify_until, .. } if now < *verify_until => (
                Some(Phase::Hold {
                    until: *verify_until,
                }),
                None,
            ),
            Phase::AwaitStable { .. } => (Some(Phase::Settle), None),
            _ => (None, None),
        }
    }

    fn not_ready(&self, detail: &str, now: DateTime<Utc>) -> Transition {
        match &self.phase {
            Phase::AwaitPreview { deadline }
            | Phase::AwaitStep { deadline, .. }
            | Phase::AwaitFull { deadline }
            | Phase::AwaitPromoted { deadline }
            | Phase::AwaitStable { deadline, .. }
                if now >= *deadline =>
            {
                let detail = format!(
                    "not ready within {}: {detail}",
                    humantime::format_duration(self.timing.timeout)
                );
                self.fail(detail, cause::TIMEOUT)
            }
            _ => (None, None),
        }
    }

    /// A failure: before the switch it reverts; while the old pods are up it switches back
    /// first; once they are being replaced it reverts (and the revert switches back once the
    /// old template is ready again). Writes in flight and the end states are not failed by
    /// it.
    fn fail(&self, detail: String, cause: &str) -> Transition {
        match &self.phase {
            Phase::AwaitStep { step, .. } | Phase::StepBake { step, .. } => failed(
                format!(
                    "step {} ({}%) with the preview: {detail}",
                    step + 1,
                    self.weight(*step)
                ),
                cause,
            ),
            Phase::AwaitPreview { .. }
            | Phase::Bake { .. }
            | Phase::AwaitApproval
            | Phase::AwaitFull { .. } => failed(format!("preview: {detail}"), cause),
            Phase::Verify { .. } | Phase::AwaitPromoted { .. } => {
                let reason = format!("after the switch: {detail}");
                (
                    Some(Phase::SwitchBack {
                        reason: reason.clone(),
                        cause: cause.to_string(),
                    }),
                    Some(Milestone::Failed { reason }),
                )
            }
            Phase::AwaitStable { .. } | Phase::Hold { .. } => {
                failed(format!("after the scale-down: {detail}"), cause)
            }
            _ => (None, None),
        }
    }

    /// What follows the bake (and the approval): the scale-up when the preview runs short,
    /// else the switch.
    fn promotion(&self) -> Phase {
        if self.timing.scale_up {
            Phase::ScaleUp
        } else {
            Phase::Switch
        }
    }

    /// What follows the preview's bake: the approval, or the promotion.
    fn baked(&self) -> Phase {
        if self.timing.auto_promote {
            self.promotion()
        } else {
            Phase::AwaitApproval
        }
    }

    fn tick(&self, now: DateTime<Utc>) -> Transition {
        match &self.phase {
            Phase::Bake { until } if now >= *until => {
                (Some(self.baked()), Some(Milestone::PreviewPassed))
            }
            Phase::StepBake { step, until } if now >= *until => {
                let next = if step + 1 < self.steps.len() {
                    Phase::Step { step: step + 1 }
                } else {
                    self.baked()
                };
                let passed = Milestone::StepPassed {
                    step: *step,
                    weight: self.weight(*step),
                };
                (Some(next), Some(passed))
            }
            Phase::Verify {
                until,
                scale_down_at,
            } if now >= *scale_down_at => (
                Some(Phase::ScaleDown {
                    verify_until: *until,
                }),
                None,
            ),
            Phase::Hold { until } if now >= *until => (Some(Phase::Settle), None),
            _ => (None, None),
        }
    }
}

#[cfg(test)]
#[path = "blue_green_tests.rs"]
mod tests;
