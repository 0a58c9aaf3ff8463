//! Unit tests of the blue/green state machine: observations and `now` in, decisions out.

use super::*;
use chrono::TimeZone;

fn at(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000 + seconds, 0)
        .single()
        .expect("valid timestamp")
}

fn timing() -> BlueGreenTiming {
    BlueGreenTiming {
        bake: Duration::from_secs(60),
        timeout: Duration::from_secs(30),
        verify: Duration::from_secs(120),
        scale_down_delay: Duration::from_secs(30),
        auto_promote: true,
        scale_up: false,
    }
}

fn failure() -> CheckFailure {
    CheckFailure {
        check: "errors".into(),
        detail: "value 0.2 is above max 0.01".into(),
        consecutive: 3,
    }
}

fn crash() -> Observation {
    Observation::Broken {
        cause: "CrashLoopBackOff".into(),
        detail: "pod web-preview-1: container web is waiting in CrashLoopBackOff".into(),
    }
}

/// A rollout brought to the verify window right after its switch at `at(70)`.
fn switched() -> BlueGreen {
    let mut bg = BlueGreen::new(timing());
    bg.observe(Observation::Written, at(0));
    bg.observe(Observation::Ready, at(10));
    bg.observe(Observation::Tick, at(70));
    let (milestone, decision) = bg.observe(Observation::Written, at(70));
    assert_eq!(milestone, Some(Milestone::Switched));
    assert_eq!(decision, Decision::Watch { until: at(100) });
    bg
}

#[test]
fn preview_bake_switch_verify_scale_down_and_succeed() {
    let mut bg = BlueGreen::new(timing());
    assert_eq!(bg.decision(), Decision::StartPreview);
    assert_eq!(
        bg.observe(Observation::Written, at(0)),
        (None, Decision::AwaitReady { deadline: at(30) })
    );
    assert_eq!(
        bg.observe(Observation::Ready, at(10)),
        (None, Decision::Watch { until: at(70) }),
        "the preview bakes once every preview pod is ready"
    );
    assert_eq!(
        bg.observe(Observation::Tick, at(69)),
        (None, Decision::Watch { until: at(70) })
    );
    assert_eq!(
        bg.observe(Observation::Tick, at(70)),
        (Some(Milestone::PreviewPassed), Decision::Switch)
    );
    assert_eq!(
        bg.observe(Observation::Written, at(71)),
        (
            Some(Milestone::Switched),
            Decision::Watch { until: at(101) }
        ),
        "the old pods stay up for the scale-down delay"
    );
    assert_eq!(
        bg.observe(Observation::Tick, at(101)),
        (None, Decision::ScaleDown)
    );
    assert_eq!(
        bg.observe(Observation::Written, at(102)),
        (None, Decision::AwaitReady { deadline: at(132) })
    );
    assert_eq!(
        bg.observe(Observation::Ready, at(110)),
        (None, Decision::Watch { until: at(191) }),
        "verify runs its full window from the switch, the preview still serving"
    );
    assert_eq!(
        bg.observe(Observation::Tick, at(191)),
        (None, Decision::Settle)
    );
    assert_eq!(
        bg.observe(Observation::Written, at(192)),
        (Some(Milestone::ScaledDown), Decision::Succeed)
    );
}

#[test]
fn a_failure_before_the_switch_reverts_without_switching() {
    for failing in [Observation::CheckFailed(failure()), crash()] {
        let mut bg = BlueGreen::new(timing());
        bg.observe(Observation::Written, at(0));
        bg.observe(Observation::Ready, at(5));
        let (milestone, decision) = bg.observe(failing.clone(), at(20));
        let Some(Milestone::Failed { reason }) = milestone else {
            panic!("expected a failure, got {milestone:?}");
        };
        assert!(reason.starts_with("preview: "), "{reason}");
        assert!(
            matches!(decision, Decision::Revert { .. }),
            "{failing:?}: {decision:?}"
        );
    }
}

#[test]
fn a_preview_not_ready_by_the_deadline_fails_with_a_timeout() {
    let mut bg = BlueGreen::new(timing());
    bg.observe(Observation::Written, at(0));
    let not_ready = || Observation::NotReady {
        detail: "Deployment web-preview: 1 of 3 ready".into(),
    };
    assert_eq!(bg.observe(not_ready(), at(29)).0, None);
    let (_, decision) = bg.observe(not_ready(), at(30));
    assert!(
        matches!(&decision, Decision::Revert { reason, cause } if cause == cause::TIMEOUT && reason.starts_with("preview: not ready within 30s")),
        "{decision:?}"
    );
}

#[test]
fn a_failure_after_the_switch_switches_back_first_then_reverts() {
    for failing in [Observation::CheckFailed(failure()), crash()] {
        let mut bg = switched();
        let (milestone, decision) = bg.observe(failing, at(80));
        assert!(
            matches!(&milestone, Some(Milestone::Failed { reason }) if reason.starts_with("after the switch: ")),
            "{milestone:?}"
        );
        assert_eq!(decision, Decision::SwitchBack);
        let (milestone, decision) = bg.observe(Observation::Written, at(80));
        assert_eq!(milestone, Some(Milestone::SwitchedBack));
        assert!(
            matches!(&decision, Decision::Revert { reason, .. } if reason.starts_with("after the switch: ")),
            "{decision:?}"
        );
    }
}

#[test]
fn a_failure_after_the_scale_down_reverts_without_switching_back() {
    let mut bg = switched();
    bg.observe(Observation::Tick, at(100));
    bg.observe(Observation::Written, at(100));
    // While the Deployment named in git takes the new template, and after it did.
    let (_, decision) = bg.clone().observe(crash(), at(102));
    assert!(
        matches!(&decision, Decision::Revert { reason, .. } if reason.starts_with("after the scale-down: ")),
        "{decision:?}"
    );
    assert_eq!(
        bg.observe(Observation::Ready, at(105)).1,
        Decision::Watch { until: at(190) }
    );
    let (_, decision) = bg.observe(Observation::CheckFailed(failure()), at(150));
    assert!(
        matches!(&decision, Decision::Revert { reason, .. } if reason.starts_with("after the scale-down: ")),
        "{decision:?}"
    );
}

#[test]
fn a_verify_window_shorter_than_the_delay_still_keeps_the_old_pods_for_the_delay() {
    let mut bg = BlueGreen::new(BlueGreenTiming {
        verify: Duration::from_secs(10),
        ..timing()
    });
    bg.observe(Observation::Written, at(0));
    bg.observe(Observation::Ready, at(0));
    bg.observe(Observation::Tick, at(60));
    assert_eq!(
        bg.observe(Observation::Written, at(60)).1,
        Decision::Watch { until: at(90) }
    );
    assert_eq!(
        bg.observe(Observation::Tick, at(75)).1,
        Decision::Watch { until: at(90) },
        "the verify window is over, the delay is not"
    );
    assert_eq!(bg.observe(Observation::Tick, at(90)).1, Decision::ScaleDown);
    bg.observe(Observation::Written, at(90));
    assert_eq!(
        bg.observe(Observation::Ready, at(91)).1,
        Decision::Settle,
        "a window already over does not hold the preview"
    );
    assert_eq!(
        bg.observe(Observation::Written, at(91)).1,
        Decision::Succeed
    );
}

#[test]
fn without_auto_promote_the_switch_waits_for_an_approval() {
    let mut bg = BlueGreen::new(BlueGreenTiming {
        auto_promote: false,
        ..timing()
    });
    bg.observe(Observation::Written, at(0));
    bg.observe(Observation::Ready, at(0));
    assert_eq!(
        bg.observe(Observation::Tick, at(60)),
        (Some(Milestone::PreviewPassed), Decision::AwaitApproval)
    );
    assert_eq!(
        bg.observe(Observation::Tick, at(600)).1,
        Decision::AwaitApproval
    );
    assert_eq!(
        bg.observe(Observation::Approved, at(601)).1,
        Decision::Switch
    );

    let mut failing = BlueGreen::new(BlueGreenTiming {
        auto_promote: false,
        ..timing()
    });
    failing.observe(Observation::Written, at(0));
    failing.observe(Observation::Ready, at(0));
    failing.observe(Observation::Tick, at(60));
    assert!(matches!(
        failing
            .observe(Observation::CheckFailed(failure()), at(90))
            .1,
        Decision::Revert { .. }
    ));
}

#[test]
fn observations_that_do_not_fit_the_phase_change_nothing() {
    let unchanged = |bg: &mut BlueGreen, observation: Observation, now| {
        let before = bg.phase().clone();
        assert_eq!(
            bg.observe(observation.clone(), now).0,
            None,
            "{observation:?}"
        );
        assert_eq!(bg.phase(), &before, "{observation:?}");
    };
    let mut bg = BlueGreen::new(timing());
    // Nothing is written yet: checks and readiness do not count.
    unchanged(&mut bg, Observation::CheckFailed(failure()), at(0));
    unchanged(&mut bg, Observation::Ready, at(0));
    unchanged(&mut bg, Observation::Approved, at(0));
    bg.observe(Observation::Written, at(0));
    unchanged(&mut bg, Observation::Written, at(1));
    unchanged(&mut bg, Observation::Tick, at(1));
    bg.observe(Observation::Ready, at(1));
    // An approval with auto_promote does nothing; the bake ends on its own tick.
    unchanged(&mut bg, Observation::Approved, at(2));
    unchanged(&mut bg, Observation::Tick, at(60));
    bg.observe(Observation::Tick, at(61));
    // The switch write in flight is not failed by a check: the write finishes first.
    unchanged(&mut bg, Observation::CheckFailed(failure()), at(61));
    unchanged(&mut bg, Observation::Tick, at(61));
}

#[test]
fn a_rollout_resumes_from_a_given_phase() {
    let mut bg = BlueGreen::resuming(timing(), Phase::Switch);
    assert_eq!(bg.decision(), Decision::Switch);
    assert_eq!(
        bg.observe(Observation::Written, at(0)).0,
        Some(Milestone::Switched)
    );
}

#[test]
fn a_preview_running_short_is_scaled_up_and_ready_before_the_switch() {
    let mut bg = BlueGreen::new(BlueGreenTiming {
        auto_promote: false,
        scale_up: true,
        ..timing()
    });
    bg.observe(Observation::Written, at(0));
    bg.observe(Observation::Ready, at(0));
    assert_eq!(
        bg.observe(Observation::Tick, at(60)).1,
        Decision::AwaitApproval
    );
    assert_eq!(
        bg.observe(Observation::Approved, at(70)).1,
        Decision::ScaleUp,
        "approved: the preview goes to the full count first"
    );
    assert_eq!(
        bg.observe(Observation::Written, at(71)).1,
        Decision::AwaitReady { deadline: at(101) }
    );
    assert_eq!(
        bg.observe(
            Observation::NotReady {
                detail: "2 of 4 ready".into()
            },
            at(80)
        )
        .1,
        Decision::AwaitReady { deadline: at(101) }
    );
    assert_eq!(bg.observe(Observation::Ready, at(85)).1, Decision::Switch);

    let mut short = BlueGreen::new(BlueGreenTiming {
        scale_up: true,
        ..timing()
    });
    short.observe(Observation::Written, at(0));
    short.observe(Observation::Ready, at(0));
    assert_eq!(
        short.observe(Observation::Tick, at(60)).1,
        Decision::ScaleUp
    );
    short.observe(Observation::Written, at(60));
    let (_, decision) = short.observe(
        Observation::NotReady {
            detail: "2 of 4 ready".into(),
        },
        at(90),
    );
    let Decision::Revert { reason, cause } = decision else {
        panic!("not full by the deadline: {decision:?}");
    };
    assert!(
        reason.starts_with("preview: not ready within 30s"),
        "{reason}"
    );
    assert_eq!(cause, cause::TIMEOUT);
}

/// A mixed rollout with canary steps 25 and 50 (then 100) beside the preview.
fn mixed() -> BlueGreen {
    BlueGreen::mixed(timing(), &[25, 50, 100], true)
}

#[test]
fn a_mixed_rollout_steps_its_canaries_with_the_preview_then_switches() {
    let mut bg = mixed();
    assert_eq!(bg.decision(), Decision::StartPreview);
    assert_eq!(
        bg.observe(Observation::Written, at(0)),
        (None, Decision::AwaitReady { deadline: at(30) }),
        "the first canary step is written with the preview and waited for with it"
    );
    assert_eq!(
        bg.observe(Observation::Ready, at(5)),
        (None, Decision::Shrink { step: 0 })
    );
    assert_eq!(
        bg.observe(Observation::Written, at(6)),
        (None, Decision::Watch { until: at(66) })
    );
    assert_eq!(
        bg.observe(Observation::Tick, at(66)),
        (
            Some(Milestone::StepPassed {
                step: 0,
                weight: 25
            }),
            Decision::Step {
                step: 1,
                weight: 50
            }
        )
    );
    assert_eq!(
        bg.observe(Observation::Written, at(67)),
        (None, Decision::AwaitReady { deadline: at(97) })
    );
    assert_eq!(
        bg.observe(Observation::Ready, at(70)),
        (None, Decision::Shrink { step: 1 })
    );
    bg.observe(Observation::Written, at(70));
    assert_eq!(
        bg.observe(Observation::Tick, at(130)),
        (
            Some(Milestone::StepPassed {
                step: 1,
                weight: 50
            }),
            Decision::Switch
        ),
        "the switch comes once the last canary step below 100% baked"
    );
}

/// A mixed rollout driven, as the test above checks, to the switch of its preview (at 130 s).
fn mixed_at_the_switch() -> BlueGreen {
    let mut bg = mixed();
    for (observation, second) in [
        (Observation::Written, 0),
        (Observation::Ready, 5),
        (Observation::Written, 6),
        (Observation::Tick, 66),
        (Observation::Written, 67),
        (Observation::Ready, 70),
        (Observation::Written, 70),
        (Observation::Tick, 130),
    ] {
        bg.observe(observation, at(second));
    }
    assert_eq!(bg.decision(), Decision::Switch);
    bg
}

#[test]
fn a_mixed_rollout_promotes_its_canaries_after_the_switch_and_scales_the_old_pods_down() {
    let mut bg = mixed_at_the_switch();
    assert_eq!(
        bg.observe(Observation::Written, at(131)),
        (Some(Milestone::Switched), Decision::Promote),
        "the canaries are promoted right after the switch"
    );
    assert_eq!(
        bg.observe(Observation::Written, at(132)),
        (None, Decision::AwaitReady { deadline: at(162) })
    );
    assert_eq!(
        bg.observe(Observation::Ready, at(140)),
        (None, Decision::Retire)
    );
    assert_eq!(
        bg.observe(Observation::Written, at(141)),
        (
            Some(Milestone::Promoted),
            Decision::Watch { until: at(171) }
        ),
        "the old blue/green pods stay the delay after both went to 100%"
    );
    assert_eq!(
        bg.observe(Observation::Tick, at(171)),
        (None, Decision::ScaleDown)
    );
    bg.observe(Observation::Written, at(171));
    assert_eq!(
        bg.observe(Observation::Ready, at(175)),
        (None, Decision::Watch { until: at(261) })
    );
    assert_eq!(bg.observe(Observation::Tick, at(261)).1, Decision::Settle);
    assert_eq!(
        bg.observe(Observation::Written, at(262)),
        (Some(Milestone::ScaledDown), Decision::Succeed)
    );
}

#[test]
fn a_mixed_rollout_fails_before_the_switch_at_its_canary_step_and_switches_back_after_it() {
    let mut bg = mixed();
    bg.observe(Observation::Written, at(0));
    bg.observe(Observation::Ready, at(5));
    bg.observe(Observation::Written, at(6));
    let (milestone, decision) = bg
        .clone()
        .observe(Observation::CheckFailed(failure()), at(20));
    assert!(
        matches!(&milestone, Some(Milestone::Failed { reason }) if reason.starts_with("step 1 (25%) with the preview: check \"errors\"")),
        "{milestone:?}"
    );
    assert!(matches!(decision, Decision::Revert { .. }), "{decision:?}");
    bg.observe(Observation::Tick, at(66));
    bg.observe(Observation::Written, at(67));
    let not_ready = Observation::NotReady {
        detail: "1 of 2 ready".into(),
    };
    let (_, decision) = bg.clone().observe(not_ready, at(97));
    assert!(
        matches!(&decision, Decision::Revert { reason, cause } if cause == cause::TIMEOUT && reason.starts_with("step 2 (50%) with the preview: not ready")),
        "{decision:?}"
    );
    bg.observe(Observation::Ready, at(70));
    bg.observe(Observation::Written, at(70));
    bg.observe(Observation::Tick, at(130));
    bg.observe(Observation::Written, at(131));
    bg.observe(Observation::Written, at(132));
    // The promotion is under way: the blue/green Services switch back before the revert.
    let (milestone, decision) = bg.observe(crash(), at(135));
    assert!(
        matches!(&milestone, Some(Milestone::Failed { reason }) if reason.starts_with("after the switch: ")),
        "{milestone:?}"
    );
    assert_eq!(decision, Decision::SwitchBack);
}

#[test]
fn a_mixed_rollout_whose_canaries_go_straight_to_100_bakes_the_preview_first() {
    let mut bg = BlueGreen::mixed(timing(), &[100], true);
    bg.observe(Observation::Written, at(0));
    assert_eq!(
        bg.observe(Observation::Ready, at(5)).1,
        Decision::Watch { until: at(65) }
    );
    assert_eq!(
        bg.observe(Observation::Tick, at(65)),
        (Some(Milestone::PreviewPassed), Decision::Switch)
    );
    assert_eq!(
        bg.observe(Observation::Written, at(66)).1,
        Decision::Promote
    );
}

#[test]
fn a_mixed_rollout_without_auto_promote_asks_for_the_approval_after_its_last_step() {
    let mut bg = BlueGreen::mixed(
        BlueGreenTiming {
            auto_promote: false,
            ..timing()
        },
        &[50, 100],
        true,
    );
    bg.observe(Observation::Written, at(0));
    bg.observe(Observation::Ready, at(0));
    bg.observe(Observation::Written, at(0));
    assert_eq!(
        bg.observe(Observation::Tick, at(60)).1,
        Decision::AwaitApproval
    );
    assert_eq!(
        bg.observe(Observation::Approved, at(61)).1,
        Decision::Switch
    );
}
