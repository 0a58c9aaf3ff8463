//! Driver tests of post-promotion hooks: a canary rollout's run as the verify window opens, a
//! blue/green rollout's after the switch, and what their failure does.

use super::*;

#[tokio::test]
async fn a_post_promotion_hook_runs_as_verify_opens_and_its_failure_fails_the_rollout() {
    use crate::hooks::{CommandHook, When};
    let fixture = Fixture::new("0s");
    let backend = RecordingBackend::new(&fixture.journal);
    let checks = ScriptedChecks::healthy();
    let smoke = |argv: &str| crate::executor::hooks::HookSet {
        commands: vec![CommandHook {
            name: "smoke".into(),
            when: When::PostPromotion,
            argv: vec![argv.into()],
            timeout: std::time::Duration::from_secs(10),
            env: Vec::new(),
            weight: 0,
            on_revert: false,
        }],
        objects: Vec::new(),
        work_root: fixture.dir.path().join("hook-tmp"),
    };
    let mut failing = input();
    failing.hooks = smoke("false");
    let mut fx = fixture.effects(&backend, &checks);
    let ending = Driver::begin(&mut fx, failing)
        .await
        .expect("journaled")
        .run()
        .await
        .expect("the rollout runs");
    let Ending::Failed { reason, cause, .. } = ending else {
        panic!("expected a failure, got {ending:?}");
    };
    assert_eq!(cause, crate::rollout::cause::HOOK_FAILED);
    assert_eq!(
        reason,
        "post-promotion hook command smoke failed: exited with status 1"
    );
    let records = fixture.records();
    assert_eq!(
        names(&records)[5..],
        [
            "step_started",
            "promoted",
            "hook_started",
            "hook_failed",
            "rollout_failed"
        ]
    );
    drop(fx);

    let passing = Fixture::new("0s");
    let backend = RecordingBackend::new(&passing.journal);
    let mut input = input();
    input.hooks = smoke("true");
    let mut fx = passing.effects(&backend, &checks);
    let ending = Driver::begin(&mut fx, input)
        .await
        .expect("journaled")
        .run()
        .await
        .expect("the rollout runs");
    assert!(matches!(ending, Ending::Healthy { .. }), "{ending:?}");
    assert_eq!(
        names(&passing.records())[6..],
        ["promoted", "hook_started", "hook_succeeded", "healthy"]
    );
}

#[tokio::test]
async fn a_failing_post_promotion_hook_after_the_switch_switches_back() {
    use crate::hooks::{CommandHook, When};
    let fixture = Fixture::blue_green("0s", "30s", "30s");
    let backend = RecordingBackend::new(&fixture.journal);
    let checks = ScriptedChecks::healthy();
    let mut input = input();
    input.hooks = crate::executor::hooks::HookSet {
        commands: vec![CommandHook {
            name: "smoke".into(),
            when: When::PostPromotion,
            argv: vec!["false".into()],
            timeout: std::time::Duration::from_secs(10),
            env: Vec::new(),
            weight: 0,
            on_revert: false,
        }],
        objects: Vec::new(),
        work_root: fixture.dir.path().join("hook-tmp"),
    };
    let deployments: Vec<&crate::plan::Desired> =
        input.spec.canaries.iter().map(|u| &u.desired).collect();
    let services = crate::preview::PreviewServices::of(&input.desired, &deployments, None)
        .expect("the Services of the revision");
    let strategies = crate::preview::Strategies::all_blue_green(&input.spec);
    let mut fx = fixture.effects(&backend, &checks);
    let ending =
        crate::executor::blue_green::BlueGreenDriver::begin(&mut fx, input, strategies, services)
            .await
            .expect("journaled")
            .run()
            .await
            .expect("the rollout runs");
    let Ending::Failed { cause, reason, .. } = ending else {
        panic!("the hook fails the rollout: {ending:?}");
    };
    assert_eq!(cause, cause::HOOK_FAILED);
    assert_eq!(
        reason,
        "after the switch: post-promotion hook command smoke failed: exited with status 1"
    );
    assert_eq!(
        names(&fixture.records()),
        [
            "rollout_started",
            "preview_started",
            "switched",
            "hook_started",
            "hook_failed",
            "switched_back",
            "rollout_failed"
        ]
    );
}
