//! The blue/green driver's approval gate, preview size and preview Service, against the
//! recording backend of the rollout driver's tests.

use chrono::Utc;

use super::super::driver::Ending;
use super::super::driver::tests::{
    Fixture, RecordingBackend, ScriptedChecks, app, at, begin_blue_green, by_record, names,
    objects, preview_writes, revision,
};
use crate::config::HealthCheckConfig;
use crate::health::CheckResult;
use crate::journal::Event;
use crate::probe::CheckRunner;

/// Healthy checks that, once the switch waits for its approval, note how many writes were
/// made by then and approve the revision, as `gitopsd approve` does through the API.
struct Approver<'f> {
    fixture: &'f Fixture,
    backend: &'f RecordingBackend,
    writes_when_approved: std::sync::Mutex<Option<usize>>,
}

impl CheckRunner for Approver<'_> {
    async fn run(&self, _check: &HealthCheckConfig) -> CheckResult {
        let records = self.fixture.records();
        let mut approved = self
            .writes_when_approved
            .lock()
            .expect("not poisoned: nothing panics while holding it");
        if approved.is_none() && names(&records).contains(&"awaiting_approval") {
            *approved = Some(self.backend.writes().len());
            let revision = records[0].event.revision().clone();
            self.fixture
                .journal
                .append(Event::Approved { revision }, Utc::now())
                .expect("the approval is journaled");
        }
        CheckResult::Healthy
    }
}

#[tokio::test]
async fn without_auto_promote_the_switch_waits_for_an_approval_of_the_revision() {
    let fixture = Fixture::with_rollout(
        "strategy = \"blue-green\"\nbake = \"20ms\"\nverify = \"20ms\"\nscale_down_delay = \"10ms\"\nauto_promote = false",
    );
    let backend = RecordingBackend::new(&fixture.journal);
    let checks = Approver {
        fixture: &fixture,
        backend: &backend,
        writes_when_approved: Default::default(),
    };
    let ending = begin_blue_green(&fixture, &backend, &checks).await;
    assert!(matches!(ending, Ending::Healthy { .. }), "{ending:?}");
    let records = fixture.records();
    assert_eq!(
        names(&records),
        [
            "rollout_started",
            "preview_started",
            "awaiting_approval",
            "approved",
            "switched",
            "scaled_down",
            "healthy"
        ]
    );
    let writes = by_record(&backend.writes(), &records);
    let preview = preview_writes();
    assert_eq!(
        *checks.writes_when_approved.lock().expect("not poisoned"),
        Some(preview.len()),
        "nothing but the preview was written while the switch waited: {writes:?}"
    );
    assert_eq!(
        writes.get(preview.len()),
        Some(&at("switched", "apply Service/web [canary]")),
        "{writes:?}"
    );
}

#[tokio::test]
async fn an_approval_from_before_the_rollout_does_not_approve_its_switch() {
    let fixture =
        Fixture::with_rollout("strategy = \"blue-green\"\nbake = \"0s\"\nauto_promote = false");
    let revision = super::super::driver::tests::revision('b');
    fixture
        .journal
        .append(Event::Approved { revision }, Utc::now())
        .expect("journaled");
    let backend = RecordingBackend::new(&fixture.journal);
    // The checks fail once the rollout waits: had the earlier approval counted, it would have
    // switched and gone on instead.
    let checks = ScriptedChecks::failing_after(0);
    let ending = begin_blue_green(&fixture, &backend, &checks).await;
    let Ending::Failed { reason, .. } = ending else {
        panic!("the rollout waits, and the failing check ends it: {ending:?}");
    };
    assert!(reason.starts_with("preview: check"), "{reason}");
    let records = fixture.records();
    let names = names(&records);
    assert!(
        names.contains(&"awaiting_approval") && !names.contains(&"switched"),
        "{names:?}"
    );
}

#[tokio::test]
async fn a_preview_cut_short_by_preview_replicas_is_scaled_up_before_the_switch() {
    let fixture = Fixture::with_rollout(
        "strategy = \"blue-green\"\nbake = \"20ms\"\nverify = \"20ms\"\nscale_down_delay = \"10ms\"\npreview_replicas = 1",
    );
    let backend = RecordingBackend::new(&fixture.journal);
    let ending = begin_blue_green(&fixture, &backend, &ScriptedChecks::healthy()).await;
    assert!(matches!(ending, Ending::Healthy { .. }), "{ending:?}");
    let records = fixture.records();
    let writes = by_record(&backend.writes(), &records);
    let mut expected: Vec<_> = preview_writes();
    expected[3] = at("preview_started", "apply Deployment/web-canary x1");
    expected.extend([
        at("preview_started", "apply Deployment/web-canary x4"),
        at("switched", "apply Service/web [canary]"),
    ]);
    assert_eq!(writes[..expected.len()], expected[..], "{writes:?}");
}

/// [`super::super::driver::tests::input`] with one more Service selecting the web pods.
fn input_with_service(name: &str) -> super::super::driver::RolloutInput {
    let mut input = super::super::driver::tests::input();
    let service = objects(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{selector: {{app: web}}}}\n"
    ));
    input
        .desired
        .extend(service.iter().map(crate::plan::Desired::new));
    let before = app("web:v1", false);
    input.plan = crate::plan::plan(
        &input.desired,
        &input.live,
        true,
        crate::plan::Compare::Content,
    );
    input.spec = crate::canary::split(&input.plan, &input.desired, &input.live, &before);
    input
}

#[tokio::test]
async fn a_named_preview_service_selects_the_new_pods_until_the_end_and_no_other_is_made() {
    let fixture = Fixture::with_rollout(
        "strategy = \"blue-green\"\nbake = \"20ms\"\nverify = \"20ms\"\nscale_down_delay = \"10ms\"\npreview_service = \"web-next\"",
    );
    let backend = RecordingBackend::new(&fixture.journal);
    let checks = ScriptedChecks::healthy();
    let input = input_with_service("web-next");
    assert_eq!(input.previous, Some(revision('a')));
    let deployments: Vec<&crate::plan::Desired> =
        input.spec.canaries.iter().map(|u| &u.desired).collect();
    let services =
        crate::preview::PreviewServices::of(&input.desired, &deployments, Some("web-next"))
            .expect("declared");
    let strategies = crate::preview::Strategies::all_blue_green(&input.spec);
    let mut fx = fixture.effects(&backend, &checks);
    let ending = super::BlueGreenDriver::begin(&mut fx, input, strategies, services)
        .await
        .expect("journaled")
        .run()
        .await
        .expect("the rollout runs");
    assert!(matches!(ending, Ending::Healthy { .. }), "{ending:?}");
    let records = fixture.records();
    assert_eq!(
        by_record(&backend.writes(), &records),
        [
            at("preview_started", "apply ConfigMap/extra"),
            at("preview_started", "apply Service/web [stable]"),
            at("preview_started", "apply Service/web-next [canary]"),
            at("preview_started", "apply Deployment/web-canary x4"),
            at("switched", "apply Service/web [canary]"),
            at("scaled_down", "apply Deployment/web x4"),
            at("scaled_down", "apply Service/web"),
            at("scaled_down", "apply Service/web-next"),
            at("scaled_down", "delete Deployment/web-canary"),
        ]
    );
}

/// Healthy checks that note the URL of every HTTP check they run, with the last record
/// journaled before it.
struct UrlRecorder<'f> {
    fixture: &'f Fixture,
    seen: std::sync::Mutex<Vec<(&'static str, String)>>,
}

impl CheckRunner for UrlRecorder<'_> {
    async fn run(&self, check: &HealthCheckConfig) -> CheckResult {
        if let crate::health::CheckKind::Http { url, .. } = &check.check {
            let last = names(&self.fixture.records()).last().copied().unwrap_or("");
            self.seen
                .lock()
                .expect("not poisoned: nothing panics while holding it")
                .push((last, url.clone()));
        }
        CheckResult::Healthy
    }
}

const PREVIEW_CHECK: &str = "\n[[environment.health]]\nname = \"new-version\"\ntype = \"http\"\nurl = \"http://{preview}:8080/health\"\ninterval = \"5ms\"\nfailures = 2\n";

#[tokio::test]
async fn preview_in_a_check_url_names_the_preview_service_until_the_end() {
    let fixture = Fixture::with_rollout(&format!(
        "strategy = \"blue-green\"\nbake = \"40ms\"\nverify = \"120ms\"\nscale_down_delay = \"40ms\"\n{PREVIEW_CHECK}"
    ));
    let backend = RecordingBackend::new(&fixture.journal);
    let checks = UrlRecorder {
        fixture: &fixture,
        seen: Default::default(),
    };
    let ending = begin_blue_green(&fixture, &backend, &checks).await;
    assert!(matches!(ending, Ending::Healthy { .. }), "{ending:?}");
    let seen = checks.seen.into_inner().expect("not poisoned");
    let preview = "http://web-preview.shop.svc:8080/health";
    assert!(
        seen.iter().any(|(last, _)| *last == "preview_started")
            && seen.iter().any(|(last, _)| *last == "scaled_down"),
        "checks ran during the preview and after the scale-down: {seen:?}"
    );
    assert!(
        seen.iter().all(|(_, url)| url == preview),
        "the preview Service serves the new pods until the end of the verify window: {seen:?}"
    );
}

#[tokio::test]
async fn preview_in_a_check_url_names_the_active_service_in_a_canary_rollout() {
    let fixture = Fixture::with_rollout(&format!(
        "steps = [50, 100]\nbake = \"20ms\"\nverify = \"0s\"\n{PREVIEW_CHECK}"
    ));
    let backend = RecordingBackend::new(&fixture.journal);
    let checks = UrlRecorder {
        fixture: &fixture,
        seen: Default::default(),
    };
    let mut fx = fixture.effects(&backend, &checks);
    let ending = super::super::Driver::begin(&mut fx, super::super::driver::tests::input())
        .await
        .expect("journaled")
        .run()
        .await
        .expect("the rollout runs");
    assert!(matches!(ending, Ending::Healthy { .. }), "{ending:?}");
    let seen = checks.seen.into_inner().expect("not poisoned");
    assert!(
        !seen.is_empty()
            && seen
                .iter()
                .all(|(_, url)| url == "http://web.shop.svc:8080/health"),
        "{seen:?}"
    );
}

#[tokio::test]
async fn a_refused_scale_down_moves_the_service_back_to_the_intact_old_pods_before_the_preview_goes()
 {
    let fixture = Fixture::blue_green("0s", "30s", "0s");
    // Applies named web: the pin, the switch, then the Deployment's scale-down, refused.
    let backend = RecordingBackend::new(&fixture.journal).refusing(
        "web",
        3,
        crate::backend::FailureClass::Revision,
    );
    let ending = begin_blue_green(&fixture, &backend, &ScriptedChecks::healthy()).await;
    let Ending::Failed { reason, .. } = ending else {
        panic!("the refused write fails the rollout: {ending:?}");
    };
    assert!(reason.contains("scale-down writes"), "{reason}");
    let records = fixture.records();
    assert_eq!(
        names(&records),
        [
            "rollout_started",
            "preview_started",
            "switched",
            "scaled_down",
            "switched_back",
            "rollout_failed"
        ]
    );
    let mut expected = preview_writes();
    expected.extend([
        at("switched", "apply Service/web [canary]"),
        at("switched_back", "apply Service/web [stable]"),
        at("rollout_failed", "apply Deployment/web-canary x0"),
        at("rollout_failed", "delete Deployment/web-canary"),
        at("rollout_failed", "delete Service/web-preview"),
    ]);
    assert_eq!(by_record(&backend.writes(), &records), expected);
}

#[tokio::test]
async fn a_switch_the_cluster_refuses_moves_back_and_drains_the_preview_before_the_revert() {
    let fixture = Fixture::blue_green("0s", "30s", "30s");
    // Applies named web: the pin, then the switch, refused as by an unreachable cluster.
    let backend = RecordingBackend::new(&fixture.journal).refusing(
        "web",
        2,
        crate::backend::FailureClass::Infrastructure,
    );
    let ending = begin_blue_green(&fixture, &backend, &ScriptedChecks::healthy()).await;
    assert!(matches!(ending, Ending::Blocked { .. }), "{ending:?}");
    let records = fixture.records();
    assert_eq!(
        names(&records),
        [
            "rollout_started",
            "preview_started",
            "switched",
            "switched_back",
            "blocked"
        ]
    );
    let mut expected = preview_writes();
    expected.extend([
        at("switched_back", "apply Service/web [stable]"),
        at("blocked", "apply Deployment/web-canary x0"),
        at("blocked", "delete Deployment/web-canary"),
        at("blocked", "delete Service/web-preview"),
    ]);
    assert_eq!(by_record(&backend.writes(), &records), expected);
}
