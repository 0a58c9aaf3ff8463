//! A revision mixing both strategies through the blue/green driver: the canary steps beside
//! the preview, the switch, the canaries' promotion right after it, and a failure after the
//! switch switching the blue/green Service back before the revert.

use super::super::driver::tests::{
    Fixture, RecordingBackend, ScriptedChecks, by_record, names, objects, revision,
};
use super::super::driver::{Ending, RolloutInput};
use crate::canary;
use crate::config::HealthCheckConfig;
use crate::health::CheckResult;
use crate::model::Object;
use crate::plan::{Compare, Desired};
use crate::probe::CheckRunner;
use crate::rollout::Strategy;

/// `web` (blue-green, 4 replicas) and `api` (canary, 4 replicas), each with its Service.
fn mixed_app(image: &str) -> Vec<Desired> {
    let workload = |name: &str, annotations: &str| {
        format!(
            "
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, labels: {{app: {name}}}{annotations}}}
spec:
  replicas: 4
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec: {{containers: [{{name: {name}, image: '{name}:{image}'}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec: {{selector: {{app: {name}}}}}"
        )
    };
    let yaml = format!(
        "{}\n---{}",
        workload("web", ", annotations: {gitopsd.io/strategy: blue-green}"),
        workload("api", "")
    );
    objects(&yaml).iter().map(Desired::new).collect()
}

fn mixed_input() -> RolloutInput {
    let before = mixed_app("v1");
    let live: Vec<Object> = before
        .iter()
        .map(|d| Object {
            key: d.key.clone(),
            body: d.stamped("staging", &revision('a')),
        })
        .collect();
    let desired = mixed_app("v2");
    let plan = crate::plan::plan(&desired, &live, true, Compare::Content);
    let spec = canary::split(&plan, &desired, &live, &before);
    RolloutInput {
        revision: revision('b'),
        previous: Some(revision('a')),
        desired,
        live,
        plan,
        spec,
        hooks: Default::default(),
    }
}

async fn begin_mixed<P: CheckRunner>(
    fixture: &Fixture,
    backend: &RecordingBackend,
    checks: &P,
) -> Ending {
    let input = mixed_input();
    let strategies = crate::preview::by_strategy(&input.spec, &input.desired, Strategy::Canary)
        .expect("web and api share no Service nor config");
    assert!(strategies.mixed());
    let deployments: Vec<&Desired> = strategies
        .blue_green
        .canaries
        .iter()
        .map(|u| &u.desired)
        .collect();
    let services = crate::preview::PreviewServices::of(&input.desired, &deployments, None)
        .expect("web's Service is in the revision");
    let mut fx = fixture.effects(backend, checks);
    crate::executor::blue_green::BlueGreenDriver::begin(&mut fx, input, strategies, services)
        .await
        .expect("journaled")
        .run()
        .await
        .expect("the rollout runs")
}

const MIXED: &str =
    "steps = [50, 100]\nbake = \"30ms\"\nverify = \"40ms\"\nscale_down_delay = \"20ms\"";

#[tokio::test]
async fn a_mixed_rollout_steps_the_canary_beside_the_preview_then_switches_and_promotes() {
    let fixture = Fixture::with_rollout(MIXED);
    let backend = RecordingBackend::new(&fixture.journal);
    let ending = begin_mixed(&fixture, &backend, &ScriptedChecks::healthy()).await;
    assert!(matches!(ending, Ending::Healthy { .. }), "{ending:?}");
    let records = fixture.records();
    assert_eq!(
        names(&records),
        [
            "rollout_started",
            "preview_started",
            "step_started",
            "step_passed",
            "switched",
            "step_started",
            "promoted",
            "scaled_down",
            "healthy"
        ]
    );
    let writes: Vec<(&str, String)> = by_record(&backend.writes(), &records);
    let text: Vec<String> = writes.iter().map(|(at, w)| format!("{at}: {w}")).collect();
    assert_eq!(
        text,
        [
            // The preview, the pin and the first canary step in one go (Services first).
            "step_started: apply Service/web [stable]",
            "step_started: apply Service/web-preview [canary]",
            "step_started: apply Deployment/api-canary x2",
            "step_started: apply Deployment/web-canary x4",
            // Capacity first: the canary's stable shrinks once both are ready.
            "step_started: apply Deployment/api x2",
            // One write switches web; the canary is promoted right after it.
            "switched: apply Service/web [canary]",
            "step_started: apply Deployment/api x4",
            "step_started: delete Deployment/api-canary",
            // Then the scale-down of the old web pods, and at the end of the verify window
            // git's selector back and the preview gone.
            "scaled_down: apply Deployment/web x4",
            "scaled_down: apply Service/web",
            "scaled_down: delete Deployment/web-canary",
            "scaled_down: delete Service/web-preview",
        ],
        "{text:#?}"
    );
}

/// Checks that fail once the journal holds `switched`.
struct FailingAfterSwitch<'f>(&'f Fixture);

impl CheckRunner for FailingAfterSwitch<'_> {
    async fn run(&self, _check: &HealthCheckConfig) -> CheckResult {
        if names(&self.0.records()).contains(&"switched") {
            CheckResult::Unhealthy("error rate 0.2 above 0.01".into())
        } else {
            CheckResult::Healthy
        }
    }
}

#[tokio::test]
async fn a_failure_after_the_switch_of_a_mixed_rollout_switches_back_before_it_fails() {
    let fixture = Fixture::with_rollout(
        "steps = [50, 100]\nbake = \"30ms\"\nverify = \"5s\"\nscale_down_delay = \"5s\"",
    );
    let backend = RecordingBackend::new(&fixture.journal);
    let ending = begin_mixed(&fixture, &backend, &FailingAfterSwitch(&fixture)).await;
    let Ending::Failed { reason, .. } = ending else {
        panic!("the check fails the rollout: {ending:?}");
    };
    assert!(reason.starts_with("after the switch: "), "{reason}");
    let records = fixture.records();
    let names = names(&records);
    let switched_back = names
        .iter()
        .position(|name| *name == "switched_back")
        .expect("switched back");
    assert!(
        names[..switched_back].contains(&"switched")
            && names[switched_back..].ends_with(&["rollout_failed"]),
        "{names:?}"
    );
    let writes = by_record(&backend.writes(), &records);
    let after: Vec<String> = writes
        .iter()
        .skip_while(|(at, _)| *at != "switched_back")
        .map(|(_, write)| write.clone())
        .collect();
    assert_eq!(
        after.first().map(String::as_str),
        Some("apply Service/web [stable]"),
        "the Service goes back to the old web pods first: {after:?}"
    );
    assert!(
        after.contains(&"apply Deployment/web-canary x0".to_string())
            && !after.iter().any(|write| write.contains("Deployment/web x")),
        "the preview is drained, the old web pods untouched: {after:?}"
    );
}
