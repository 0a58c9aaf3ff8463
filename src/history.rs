//! An environment's story folded from its journal (pure), and what it does next given that
//! story, its gates and the branch tip.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};

use crate::gates::Gates;
use crate::journal::records::{Baseline, Event, Record};
use crate::model::Revision;

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
    /// The hook runs of the rollout or revert under way, by [`crate::hooks::progress_key`]
    /// (what a restart skips, runs again or waits for).
    pub hooks: crate::hooks::Progress,
    /// The most recent hook run and where it stands, for `status`.
    pub last_hook: Option<HookLine>,
}

/// One hook run as `status` shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HookLine {
    pub revision: Revision,
    pub when: String,
    pub hook: String,
    pub state: crate::hooks::HookState,
    /// How long it ran, once it ended.
    pub duration_ms: Option<u64>,
    /// Why it failed.
    pub message: Option<String>,
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
    /// A blue/green rollout's phase: `preview`, `switched`, `switched back`, `scaling down`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Blue/green: an operator approved this revision since its rollout started, so the
    /// switch may go ahead (`auto_promote = false`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub switch_approved: bool,
    /// Blue/green in a mixed rollout: the Deployments previewed (the other canaries are
    /// stepped). Empty: every canary is a preview.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previews: Vec<String>,
}

impl InFlight {
    /// A blue/green rollout that journaled a phase before its scale-down: its old pods are
    /// all still up, so a revert can pin the Services to them before the preview goes.
    pub fn blue_green_old_pods_up(&self) -> bool {
        matches!(self.phase.as_deref(), Some(phase) if phase != SCALING_DOWN)
    }
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
            Event::RolloutStarted { .. }
            | Event::StepStarted { .. }
            | Event::StepPassed { .. }
            | Event::CheckFailed { .. }
            | Event::PreviewStarted { .. }
            | Event::AwaitingApproval { .. }
            | Event::Switched { .. }
            | Event::SwitchedBack { .. }
            | Event::ScaledDown { .. }
            | Event::RolloutFailed { .. } => self.apply_rollout(event),
            Event::RevertStarted { .. } | Event::Reverted { .. } => self.apply_revert(event),
            Event::Healthy { .. } | Event::ReconcileFinished { .. } | Event::Inventory { .. } => {
                self.apply_outcome(event)
            }
            Event::Paused { .. }
            | Event::Resumed { .. }
            | Event::Approved { .. }
            | Event::Pinned { .. }
            | Event::Retried { .. } => self.apply_operator_action(event),
            Event::Blocked { .. } | Event::Unblocked { .. } | Event::VerifyFailed { .. } => {
                self.apply_refusal(event)
            }
            Event::HookStarted { .. } | Event::HookSucceeded { .. } | Event::HookFailed { .. } => {
                self.apply_hook(event)
            }
            Event::Acquired {
                state: Some(state), ..
            } => {
                // The cluster's record is what the new holder acts on; one it cannot read
                // (written by a newer gitopsd) leaves this host's history as it was.
                if let Ok(adopted) = serde_json::from_value::<History>(state.clone()) {
                    *self = adopted;
                }
            }
            Event::Rejected { .. }
            | Event::Acquired { .. }
            | Event::ReconcileStarted { .. }
            | Event::ReconcileFailed { .. }
            | Event::Promoted { .. }
            | Event::RolloutResumed { .. }
            | Event::RevertCommitted { .. }
            | Event::DriftCorrected { .. } => {}
        }
    }

    /// Folds a rollout's progress: its start, its steps, failing checks and its failure.
    fn apply_rollout(&mut self, event: &Event) {
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
                    phase: None,
                    switch_approved: false,
                    previews: Vec::new(),
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
            Event::PreviewStarted { .. }
            | Event::AwaitingApproval { .. }
            | Event::Switched { .. }
            | Event::SwitchedBack { .. }
            | Event::ScaledDown { .. } => {
                if let Some(flight) = &mut self.in_flight {
                    flight.phase = Some(blue_green_phase(event).to_string());
                    if let Event::PreviewStarted { previews, .. } = event {
                        flight.previews.clone_from(previews);
                    }
                }
            }
            Event::RolloutFailed {
                revision, reason, ..
            } => self.fail_rollout(revision, reason),
            // `apply` sends only rollout events here.
            _ => {}
        }
    }

    /// Marks `revision` failed, keeping the checks that failed during its rollout.
    fn fail_rollout(&mut self, revision: &Revision, reason: &str) {
        self.blocked = None;
        self.failed.insert(revision.clone());
        self.last_failure = Some(Failure {
            revision: revision.clone(),
            reason: reason.to_string(),
            checks: self
                .in_flight
                .as_ref()
                .map(|flight| flight.failing_checks.clone())
                .unwrap_or_default(),
        });
        if let Some(flight) = &mut self.in_flight {
            flight.failed = Some(reason.to_string());
            if flight.previous.is_none() {
                // A first deploy has nothing to revert to: the failure is final.
                self.in_flight = None;
            }
        }
        if self.in_flight.is_none() {
            // Final (a first deploy, or a pre-rollout hook failed before anything was
            // applied): nothing is reverted, no hook of it runs again.
            self.hooks.clear();
        }
    }

    /// Folds a revert's start and its end.
    fn apply_revert(&mut self, event: &Event) {
        match event {
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
                self.hooks.clear();
                self.in_flight = None;
                self.reverting = None;
                self.current = Some(to.clone());
            }
            // `apply` sends only revert events here.
            _ => {}
        }
    }

    /// Folds where a pass left the environment: healthy, reconciled, and the types it used.
    fn apply_outcome(&mut self, event: &Event) {
        match event {
            Event::Healthy { revision } => {
                self.hooks.clear();
                self.blocked = None;
                self.unverified = None;
                self.in_flight = None;
                self.last_healthy = Some(revision.clone());
                self.current = Some(revision.clone());
                self.healthy.insert(revision.clone());
            }
            Event::ReconcileFinished { revision, .. } => {
                self.blocked = None;
                self.current = Some(revision.clone());
            }
            Event::Inventory { kinds, .. } => {
                self.kinds.extend(kinds.iter().cloned());
            }
            // `apply` sends only outcome events here.
            _ => {}
        }
    }

    /// Folds what an operator asked for: pause, resume, approval, rollback pin, retry.
    fn apply_operator_action(&mut self, event: &Event) {
        match event {
            Event::Paused { .. } => self.paused = true,
            Event::Resumed { .. } => {
                self.paused = false;
                self.pin = None;
            }
            Event::Approved { revision } => {
                self.approved.insert(revision.clone());
                // An approval during a rollout of the revision is also one of its switch.
                if let Some(flight) = &mut self.in_flight
                    && flight.revision == *revision
                {
                    flight.switch_approved = true;
                }
            }
            Event::Pinned { revision, tip } => {
                self.pin = Some((revision.clone(), tip.clone()));
            }
            Event::Retried { revision } => {
                self.hooks.clear();
                self.failed.remove(revision);
            }
            // `apply` sends only operator actions here.
            _ => {}
        }
    }

    /// Folds what held a revision back without blaming it: a refusing cluster, an unverified
    /// signature.
    fn apply_refusal(&mut self, event: &Event) {
        match event {
            Event::Blocked { revision, reason } => {
                self.blocked = Some((revision.clone(), reason.clone()));
            }
            Event::Unblocked { .. } => self.blocked = None,
            Event::VerifyFailed {
                revision, reason, ..
            } => {
                self.unverified = Some((revision.clone(), reason.clone()));
            }
            // `apply` sends only refusals here.
            _ => {}
        }
    }

    /// Folds a hook run: its start and its outcome.
    fn apply_hook(&mut self, event: &Event) {
        use crate::hooks::{HookState, When, progress_key};
        let (revision, when, hook, state, duration_ms, message) = match event {
            Event::HookStarted {
                revision,
                when,
                hook,
                ..
            } => (revision, when, hook, HookState::Running, None, None),
            Event::HookSucceeded {
                revision,
                when,
                hook,
                duration_ms,
            } => (
                revision,
                when,
                hook,
                HookState::Succeeded,
                Some(*duration_ms),
                None,
            ),
            Event::HookFailed {
                revision,
                when,
                hook,
                duration_ms,
                message,
            } => (
                revision,
                when,
                hook,
                HookState::Failed,
                Some(*duration_ms),
                Some(message.clone()),
            ),
            // `apply` sends only hook events here.
            _ => return,
        };
        if let Some(parsed) = When::parse(when) {
            self.hooks
                .insert(progress_key(revision, parsed, hook), state);
        }
        self.last_hook = Some(HookLine {
            revision: revision.clone(),
            when: when.clone(),
            hook: hook.clone(),
            state,
            duration_ms,
            message,
        });
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

/// The blue/green phase once the old pods are being replaced.
const SCALING_DOWN: &str = "scaling down";

/// The phase a blue/green record starts.
fn blue_green_phase(event: &Event) -> &'static str {
    match event {
        Event::Switched { .. } => "switched",
        Event::SwitchedBack { .. } => "switched back",
        Event::ScaledDown { .. } => SCALING_DOWN,
        Event::AwaitingApproval { .. } => "awaiting approval",
        _ => "preview",
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
    use crate::journal::records::ChangeRecord;
    use crate::rollout::cause;
    use chrono::TimeZone;
    use std::time::Duration;

    fn at(seconds: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + seconds, 0)
            .single()
            .expect("valid timestamp")
    }

    fn revision(c: char) -> Revision {
        Revision(c.to_string().repeat(40))
    }

    fn record(seq: u64, event: Event) -> Record {
        Record {
            seq,
            time: at(seq as i64),
            environment: "staging".into(),
            by: None,
            event,
        }
    }

    #[test]
    fn an_acquired_record_with_the_clusters_history_replaces_this_hosts() {
        // This host last saw `a` healthy; the cluster's history has `b` in flight at step 2,
        // step 1 passed, and `c` held as failed.
        let mut cluster = History::from_records(&[record(1, started('b', Some('a')))]);
        cluster.apply(&Event::StepPassed {
            revision: revision('b'),
            step: 0,
            weight: 25,
        });
        cluster.apply(&Event::StepStarted {
            revision: revision('b'),
            step: 1,
            weight: 50,
        });
        cluster.failed.insert(revision('c'));
        let state = serde_json::to_value(&cluster).expect("encodes");
        let mut here = History::from_records(&[record(1, started('a', None))]);
        here.apply(&Event::Healthy {
            revision: revision('a'),
        });
        let without_state = Event::Acquired {
            revision: revision('b'),
            holder: "host-b".into(),
            from: Some("host-a".into()),
            state: None,
        };
        let kept = here.clone();
        here.apply(&without_state);
        assert_eq!(here, kept, "nothing to adopt: this host's history stays");
        here.apply(&Event::Acquired {
            revision: revision('b'),
            holder: "host-b".into(),
            from: Some("host-a".into()),
            state: Some(state),
        });
        assert_eq!(here, cluster);
        let flight = here.in_flight.expect("the rollout in flight");
        assert_eq!((flight.step, flight.passed), (Some((1, 50)), Some(0)));
        assert!(here.failed.contains(&revision('c')));
    }

    #[test]
    fn a_blue_green_rollout_in_flight_shows_its_phase_and_serializes_without_it_otherwise() {
        let b = || revision('b');
        let mut history = History::from_records(&[
            record(1, started('b', Some('a'))),
            record(
                2,
                Event::PreviewStarted {
                    revision: b(),
                    previews: Vec::new(),
                },
            ),
        ]);
        let phase = |history: &History| history.in_flight.as_ref().and_then(|f| f.phase.clone());
        assert_eq!(phase(&history).as_deref(), Some("preview"));
        assert!(
            history
                .in_flight
                .as_ref()
                .is_some_and(InFlight::blue_green_old_pods_up)
        );
        history.apply(&Event::AwaitingApproval { revision: b() });
        assert_eq!(phase(&history).as_deref(), Some("awaiting approval"));
        let approved = |history: &History| {
            history
                .in_flight
                .as_ref()
                .is_some_and(|f| f.switch_approved)
        };
        assert!(!approved(&history));
        history.apply(&Event::Approved {
            revision: revision('c'),
        });
        assert!(!approved(&history), "another revision's approval");
        history.apply(&Event::Approved { revision: b() });
        assert!(
            approved(&history),
            "an approval during the rollout approves its switch"
        );
        for (event, expected) in [
            (Event::Switched { revision: b() }, "switched"),
            (
                Event::SwitchedBack {
                    revision: b(),
                    reason: "check".into(),
                },
                "switched back",
            ),
            (Event::ScaledDown { revision: b() }, "scaling down"),
        ] {
            history.apply(&event);
            assert_eq!(phase(&history).as_deref(), Some(expected));
        }
        assert!(
            !history
                .in_flight
                .as_ref()
                .is_some_and(InFlight::blue_green_old_pods_up),
            "once scaling down, the old pods are being replaced"
        );
        let canary = History::from_records(&[record(1, started('c', Some('a')))]);
        let flight = serde_json::to_value(&canary.in_flight).expect("serializes");
        assert!(flight.get("phase").is_none(), "{flight}");
        let read: InFlight =
            serde_json::from_value(flight).expect("a snapshot without a phase reads");
        assert_eq!(read.phase, None);
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

    #[test]
    fn a_failed_rollout_keeps_the_checks_that_failed_during_it() {
        let history = History::from_records(&[
            record(
                1,
                Event::Healthy {
                    revision: revision('a'),
                },
            ),
            record(2, started('b', Some('a'))),
            record(
                3,
                Event::CheckFailed {
                    revision: revision('b'),
                    check: "errors".into(),
                    detail: "too many".into(),
                },
            ),
            record(
                4,
                Event::RolloutFailed {
                    revision: revision('b'),
                    reason: "bad".into(),
                    cause: Some(cause::CHECK_FAILED.into()),
                },
            ),
        ]);
        let failing = vec![("errors".to_string(), "too many".to_string())];
        assert_eq!(
            history.last_failure,
            Some(Failure {
                revision: revision('b'),
                reason: "bad".into(),
                checks: failing.clone(),
            })
        );
        let flight = history.in_flight.expect("kept for the revert");
        assert_eq!(flight.failed.as_deref(), Some("bad"));
        assert_eq!(flight.failing_checks, failing);
    }

    #[test]
    fn refusals_clear_once_the_environment_moves_on() {
        let blocked = |revision: Revision| Event::Blocked {
            revision,
            reason: "connection refused".into(),
        };
        let unverified = Event::VerifyFailed {
            revision: revision('b'),
            commit: revision('b'),
            reason: "unsigned".into(),
        };
        let mut history = History::default();
        history.apply(&blocked(revision('b')));
        history.apply(&unverified);
        assert!(history.blocked.is_some() && history.unverified.is_some());
        history.apply(&Event::ReconcileFinished {
            revision: revision('a'),
            changes: Vec::new(),
        });
        assert_eq!(history.blocked, None, "a finished reconcile unblocks");
        assert!(history.unverified.is_some(), "but verifies nothing");
        assert_eq!(history.current, Some(revision('a')));

        history.apply(&blocked(revision('c')));
        history.apply(&Event::Unblocked {
            revision: revision('c'),
        });
        assert_eq!(history.blocked, None);

        history.apply(&blocked(revision('c')));
        history.apply(&started('c', Some('a')));
        assert_eq!(history.blocked, None, "a rollout start clears both");
        assert_eq!(history.unverified, None);
    }
}
