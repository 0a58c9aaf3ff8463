//! The rollout driver against an in-memory backend that records every write with the journal
//! position it was made at, and can refuse a chosen write.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

use super::*;
use crate::backend::{FailedObject, Readiness};
use crate::canary;
use crate::config::{Config, EnvironmentConfig, HealthCheckConfig};
use crate::health::CheckResult;
use crate::journal::{self, Journal, Record, SharedJournal};
use crate::manifest::{self, ManifestFile, ParseOptions};
use crate::metrics::Metrics;
use crate::model::KindRef;
use crate::plan::Compare;
use crate::webhook::Notifier;

/// One write the backend took: the journal position it was made at, and what it was.
#[derive(Debug, Clone)]
pub(crate) struct Written {
    /// The journal's next sequence number when the write arrived: every record below it was
    /// journaled before the write.
    next_seq: u64,
    verb: &'static str,
    name: String,
    replicas: Option<u64>,
    kind: String,
    /// The `gitopsd.io/track` a Service's selector narrows to.
    track: Option<String>,
}

/// A backend that keeps nothing but a log of writes, and refuses the `nth` apply of `name`.
pub(crate) struct RecordingBackend {
    pub(crate) journal: SharedJournal,
    writes: Mutex<Vec<Written>>,
    refuse: Option<(String, usize, FailureClass)>,
    applies_of_refused: AtomicUsize,
    /// From this readiness call on (1-based), the step's pods crash-loop.
    crash_from_call: usize,
    /// Readiness calls (from the first) that find the objects still on their way.
    waiting_calls: usize,
    readiness_calls: AtomicUsize,
}

impl RecordingBackend {
    pub(crate) fn new(journal: &SharedJournal) -> Self {
        Self {
            journal: journal.clone(),
            writes: Mutex::default(),
            refuse: None,
            applies_of_refused: AtomicUsize::new(0),
            crash_from_call: usize::MAX,
            waiting_calls: 0,
            readiness_calls: AtomicUsize::new(0),
        }
    }

    pub(crate) fn waiting_for_readiness_calls(mut self, calls: usize) -> Self {
        self.waiting_calls = calls;
        self
    }

    pub(crate) fn crashing_from_readiness_call(mut self, call: usize) -> Self {
        self.crash_from_call = call;
        self
    }

    pub(crate) fn refusing(mut self, name: &str, nth: usize, class: FailureClass) -> Self {
        self.refuse = Some((name.into(), nth, class));
        self
    }

    fn log(&self, verb: &'static str, key: &ResourceKey, body: Option<&Value>) {
        self.writes.lock().expect("not poisoned").push(Written {
            next_seq: self.journal.next_seq(),
            verb,
            name: key.name.clone(),
            replicas: body
                .and_then(|b| b.pointer("/spec/replicas"))
                .and_then(Value::as_u64),
            kind: key.kind.clone(),
            track: body
                .and_then(|b| b.pointer("/spec/selector/gitopsd.io~1track"))
                .and_then(Value::as_str)
                .map(str::to_string),
        });
    }

    pub(crate) fn writes(&self) -> Vec<Written> {
        self.writes.lock().expect("not poisoned").clone()
    }
}

impl Target for RecordingBackend {
    async fn list(&self, _kinds: &BTreeSet<KindRef>) -> Result<Vec<Object>, TargetError> {
        Ok(Vec::new())
    }

    async fn apply(&self, key: &ResourceKey, body: &Value) -> Result<(), TargetError> {
        if let Some((name, nth, class)) = &self.refuse
            && *name == key.name
            && self.applies_of_refused.fetch_add(1, Ordering::SeqCst) + 1 == *nth
        {
            return Err(TargetError::Object {
                operation: "apply",
                object: key.to_string(),
                message: "refused by the test".into(),
                class: *class,
                missing: None,
            });
        }
        self.log("apply", key, Some(body));
        Ok(())
    }

    async fn delete(&self, key: &ResourceKey) -> Result<(), TargetError> {
        self.log("delete", key, None);
        Ok(())
    }

    async fn readiness(
        &self,
        keys: &[ResourceKey],
        _max_restarts: u32,
    ) -> Result<Readiness, TargetError> {
        let call = self.readiness_calls.fetch_add(1, Ordering::SeqCst) + 1;
        if call <= self.waiting_calls {
            return Ok(Readiness {
                waiting: vec!["web: 0 of 4 updated".into()],
                failed: Vec::new(),
            });
        }
        if call < self.crash_from_call {
            return Ok(Readiness::default());
        }
        Ok(Readiness {
            waiting: Vec::new(),
            failed: keys
                .iter()
                .map(|key| FailedObject {
                    cause: "CrashLoopBackOff".into(),
                    detail: format!("{key}: pod 1: container web is waiting in CrashLoopBackOff"),
                })
                .collect(),
        })
    }
}

/// Health checks that answer healthy `healthy_first` times, then unhealthy.
pub(crate) struct ScriptedChecks {
    healthy_first: usize,
    calls: AtomicUsize,
}

impl ScriptedChecks {
    pub(crate) fn healthy() -> Self {
        Self::failing_after(usize::MAX)
    }

    pub(crate) fn failing_after(healthy_first: usize) -> Self {
        Self {
            healthy_first,
            calls: AtomicUsize::new(0),
        }
    }
}

impl CheckRunner for ScriptedChecks {
    async fn run(&self, _check: &HealthCheckConfig) -> CheckResult {
        if self.calls.fetch_add(1, Ordering::SeqCst) < self.healthy_first {
            CheckResult::Healthy
        } else {
            CheckResult::Unhealthy("error rate 0.2 above 0.01".into())
        }
    }
}

pub(crate) fn revision(c: char) -> Revision {
    Revision(c.to_string().repeat(40))
}

pub(crate) fn objects(yaml: &str) -> Vec<Object> {
    let file = ManifestFile {
        path: "app.yaml".into(),
        bytes: yaml.as_bytes().to_vec(),
        blob: None,
    };
    let options = ParseOptions {
        default_namespace: "shop".into(),
    };
    manifest::parse(&[file], Vec::new(), &options).expect("test manifests are valid")
}

/// A Deployment of 4 replicas at `image`, its Service, and (in the new revision) a ConfigMap
/// with no canary meaning, which goes out with the first step a run writes.
pub(crate) fn app(image: &str, with_extra: bool) -> Vec<Desired> {
    let extra = "
---
apiVersion: v1
kind: ConfigMap
metadata: {name: extra}
data: {a: b}";
    let yaml = format!(
        "
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, labels: {{app: web}}}}
spec:
  replicas: 4
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec: {{containers: [{{name: web, image: {image}}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec: {{selector: {{app: web}}}}{}",
        if with_extra { extra } else { "" }
    );
    objects(&yaml).iter().map(Desired::new).collect()
}

/// The input of a rollout from image v1 (live, at revision `a`) to v2 (revision `b`).
pub(crate) fn input() -> RolloutInput {
    let before = app("web:v1", false);
    let live: Vec<Object> = before
        .iter()
        .map(|d| Object {
            key: d.key.clone(),
            body: d.stamped("staging", &revision('a')),
        })
        .collect();
    let desired = app("web:v2", true);
    let plan = crate::plan::plan(&desired, &live, true, Compare::Content);
    let spec = canary::split(&plan, &desired, &live, &before);
    assert!(spec.has_canaries(), "the template change makes a canary");
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

pub(crate) struct Fixture {
    dir: tempfile::TempDir,
    config: EnvironmentConfig,
    pub(crate) journal: SharedJournal,
    metrics: Metrics,
    notifier: Notifier,
    /// Kept so that shutdown never comes: a dropped sender reads as one.
    stop: tokio::sync::watch::Sender<bool>,
}

impl Fixture {
    /// Steps 25/50/100 of a Deployment of 4, one check every 10 ms that fails after two bad
    /// results in a row, and the given bake.
    pub(crate) fn new(bake: &str) -> Self {
        Self::with_rollout(&format!(
            "steps = [25, 50, 100]\nbake = \"{bake}\"\nverify = \"0s\""
        ))
    }

    /// Blue/green with the given times; the same check.
    pub(crate) fn blue_green(bake: &str, verify: &str, scale_down_delay: &str) -> Self {
        Self::with_rollout(&format!(
            "strategy = \"blue-green\"\nbake = \"{bake}\"\nverify = \"{verify}\"\nscale_down_delay = \"{scale_down_delay}\""
        ))
    }

    pub(crate) fn with_rollout(rollout: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let toml = format!(
            r#"
[repo]
url = "{root}/repo"
[state]
dir = "{root}/state"
[[environment]]
name = "staging"
path = "staging"
target = {{ type = "directory", path = "{root}/live" }}
namespace = "shop"
[environment.rollout]
timeout = "5s"
{rollout}
[[environment.health]]
type = "exec"
command = "true"
interval = "10ms"
failures = 2
"#,
            root = dir.path().display()
        );
        let path = dir.path().join("gitopsd.toml");
        std::fs::write(&path, toml).expect("write config");
        let mut config = Config::load(&path).expect("test config is valid");
        let config = config.environments.remove(0);
        let journal = SharedJournal::new(
            Journal::open(&dir.path().join("state"), "staging").expect("journal opens"),
        );
        Self {
            dir,
            config,
            journal,
            metrics: Metrics::default(),
            notifier: Notifier::default(),
            stop: tokio::sync::watch::channel(false).0,
        }
    }

    pub(crate) fn effects<'a, T: Target, P: CheckRunner>(
        &'a self,
        backend: &'a T,
        checks: &'a P,
    ) -> Effects<'a, T, P> {
        let shutdown = self.stop.subscribe();
        Effects {
            config: &self.config,
            target: backend,
            journal: &self.journal,
            checks,
            shutdown,
            heartbeat: Default::default(),
            metrics: &self.metrics,
            notifier: &self.notifier,
            live_templates: Default::default(),
            slot: crate::pass_slots::PassSlots::default().slot(),
        }
    }

    pub(crate) fn records(&self) -> Vec<Record> {
        journal::load_all(&self.dir.path().join("state"), "staging").expect("journal reads")
    }
}

/// Runs a new rollout of [`input`] to its end.
async fn begin(fixture: &Fixture, backend: &RecordingBackend, checks: &ScriptedChecks) -> Ending {
    let mut fx = fixture.effects(backend, checks);
    Driver::begin(&mut fx, input())
        .await
        .expect("journaled")
        .run()
        .await
        .expect("the rollout runs")
}

/// The step each write belongs to: the last `step_started` journaled before it.
fn step_of(write: &Written, records: &[Record]) -> Option<usize> {
    records
        .iter()
        .rev()
        .filter(|record| record.seq < write.next_seq)
        .find_map(|record| match record.event {
            Event::StepStarted { step, .. } => Some(step),
            _ => None,
        })
}

/// Writes as `(step, verb, name, replicas)`.
fn by_step(writes: &[Written], records: &[Record]) -> Vec<(Option<usize>, String)> {
    writes
        .iter()
        .map(|write| {
            let replicas = write.replicas.map(|r| format!(" x{r}")).unwrap_or_default();
            (
                step_of(write, records),
                format!("{} {}{replicas}", write.verb, write.name),
            )
        })
        .collect()
}

pub(crate) fn names(records: &[Record]) -> Vec<&'static str> {
    records.iter().map(|record| record.event.name()).collect()
}

fn step(step: usize, write: &str) -> (Option<usize>, String) {
    (Some(step), write.to_string())
}

/// The writes of each step of the 25/50/100 rollout of 4 replicas; `first` also writes the
/// ConfigMap with no canary meaning.
fn expected_writes(from: usize) -> Vec<(Option<usize>, String)> {
    let steps = [
        vec![step(0, "apply web-canary x1"), step(0, "apply web x3")],
        vec![step(1, "apply web-canary x2"), step(1, "apply web x2")],
        vec![step(2, "apply web x4"), step(2, "delete web-canary")],
    ];
    let mut expected: Vec<_> = steps.into_iter().skip(from).flatten().collect();
    expected.insert(0, step(from, "apply extra"));
    expected
}

#[tokio::test]
async fn every_step_is_journaled_before_it_is_written_and_none_is_skipped() {
    let fixture = Fixture::new("0s");
    let backend = RecordingBackend::new(&fixture.journal);
    let checks = ScriptedChecks::healthy();
    let ending = begin(&fixture, &backend, &checks).await;
    assert!(matches!(ending, Ending::Healthy { .. }), "{ending:?}");
    let records = fixture.records();
    assert_eq!(
        names(&records),
        [
            "rollout_started",
            "step_started",
            "step_passed",
            "step_started",
            "step_passed",
            "step_started",
            "promoted",
            "healthy"
        ]
    );
    // Writes of step 2 (the promotion: the stable gets 4 replicas of the new template)
    // made before step 2 is journaled would show here as step 1's.
    assert_eq!(by_step(&backend.writes(), &records), expected_writes(0));
}

#[tokio::test]
async fn a_rollout_resumes_at_every_step_without_redoing_the_steps_before() {
    for from in 0..3 {
        let fixture = Fixture::new("0s");
        let backend = RecordingBackend::new(&fixture.journal);
        let checks = ScriptedChecks::healthy();
        let mut fx = fixture.effects(&backend, &checks);
        let resume = Resume {
            revision: revision('b'),
            previous: Some(revision('a')),
            steps: vec![25, 50, 100],
            from,
            baseline: Vec::new(),
        };
        let ending = Driver::resume(&mut fx, input(), resume)
            .await
            .expect("journaled")
            .run()
            .await
            .expect("the rollout runs");
        assert!(
            matches!(ending, Ending::Healthy { .. }),
            "from {from}: {ending:?}"
        );
        let records = fixture.records();
        assert!(
            matches!(records[0].event, Event::RolloutResumed { step, .. } if step == from),
            "from {from}: {:?}",
            records[0].event
        );
        let started: Vec<usize> = records
            .iter()
            .filter_map(|record| match record.event {
                Event::StepStarted { step, .. } => Some(step),
                _ => None,
            })
            .collect();
        assert_eq!(started, (from..3).collect::<Vec<_>>(), "from {from}");
        assert_eq!(
            by_step(&backend.writes(), &records),
            expected_writes(from),
            "from {from}"
        );
    }
}

#[tokio::test]
async fn a_write_the_server_refuses_mid_step_fails_the_rollout_there() {
    let fixture = Fixture::new("0s");
    // The second apply of the stable is step 2's scale-down to 2 replicas.
    let backend =
        RecordingBackend::new(&fixture.journal).refusing("web", 2, FailureClass::Revision);
    let checks = ScriptedChecks::healthy();
    let ending = begin(&fixture, &backend, &checks).await;
    let Ending::Failed { reason, cause, .. } = ending else {
        panic!("the revision is blamed: {ending:?}");
    };
    assert_eq!(cause, cause::REJECTED);
    assert!(
        reason.starts_with("step 2 (50%): 0 of 1 scale-downs"),
        "{reason}"
    );
    let records = fixture.records();
    assert_eq!(
        names(&records),
        [
            "rollout_started",
            "step_started",
            "step_passed",
            "step_started",
            "rollout_failed"
        ]
    );
    assert_eq!(
        by_step(&backend.writes(), &records),
        expected_writes(0)[..4],
        "nothing of the promotion was written"
    );
}

#[tokio::test]
async fn a_write_the_cluster_cannot_take_blocks_without_blaming_the_revision() {
    let fixture = Fixture::new("0s");
    let backend =
        RecordingBackend::new(&fixture.journal).refusing("web", 2, FailureClass::Infrastructure);
    let checks = ScriptedChecks::healthy();
    let ending = begin(&fixture, &backend, &checks).await;
    assert!(matches!(ending, Ending::Blocked { .. }), "{ending:?}");
    let records = fixture.records();
    assert_eq!(names(&records).last(), Some(&"blocked"));
    assert!(!names(&records).contains(&"rollout_failed"));
}

#[tokio::test]
async fn a_check_that_fails_during_the_bake_fails_the_step_before_it_passes() {
    let fixture = Fixture::new("30s");
    let backend = RecordingBackend::new(&fixture.journal);
    let checks = ScriptedChecks::failing_after(1);
    let ending = begin(&fixture, &backend, &checks).await;
    let Ending::Failed { cause, .. } = ending else {
        panic!("the check fails the rollout: {ending:?}");
    };
    assert_eq!(cause, cause::CHECK_FAILED);
    let records = fixture.records();
    assert_eq!(
        names(&records),
        [
            "rollout_started",
            "step_started",
            "check_failed",
            "rollout_failed"
        ]
    );
    assert_eq!(
        by_step(&backend.writes(), &records),
        expected_writes(0)[..3],
        "only the first step was written"
    );
    assert_eq!(
        checks.calls.load(Ordering::SeqCst),
        3,
        "healthy, then two bad results"
    );
}

#[tokio::test]
async fn a_pod_that_starts_crashing_during_the_bake_fails_the_step_before_it_passes() {
    // No health check would notice: only the pods tell.
    let fixture = Fixture::new("30s");
    // Call 1 is the step's readiness wait; the bake's first look sees the crash loop.
    let backend = RecordingBackend::new(&fixture.journal).crashing_from_readiness_call(2);
    let checks = ScriptedChecks::healthy();
    let ending = begin(&fixture, &backend, &checks).await;
    let Ending::Failed { cause, reason, .. } = ending else {
        panic!("the crash loop fails the rollout: {ending:?}");
    };
    assert_eq!(cause, "CrashLoopBackOff");
    assert!(reason.starts_with("step 1 (25%): "), "{reason}");
    let records = fixture.records();
    assert_eq!(
        names(&records),
        ["rollout_started", "step_started", "rollout_failed"],
        "the step never passed"
    );
    assert_eq!(
        by_step(&backend.writes(), &records),
        expected_writes(0)[..3],
        "nothing of the next step was written"
    );
}

/// Health checks that turn unhealthy once the journal holds a record named `after`.
struct FailingAfterRecord<'f> {
    fixture: &'f Fixture,
    after: &'static str,
}

impl CheckRunner for FailingAfterRecord<'_> {
    async fn run(&self, _check: &HealthCheckConfig) -> CheckResult {
        if names(&self.fixture.records()).contains(&self.after) {
            CheckResult::Unhealthy("error rate 0.2 above 0.01".into())
        } else {
            CheckResult::Healthy
        }
    }
}

pub(crate) async fn begin_blue_green<P: CheckRunner>(
    fixture: &Fixture,
    backend: &RecordingBackend,
    checks: &P,
) -> Ending {
    let mut fx = fixture.effects(backend, checks);
    let input = input();
    let deployments: Vec<&Desired> = input.spec.canaries.iter().map(|u| &u.desired).collect();
    let named = fixture.config.rollout.preview_service.as_deref();
    let services = crate::preview::PreviewServices::of(&input.desired, &deployments, named)
        .expect("the fixture declares its preview Service");
    let strategies = crate::preview::Strategies::all_blue_green(&input.spec);
    crate::executor::blue_green::BlueGreenDriver::begin(&mut fx, input, strategies, services)
        .await
        .expect("journaled")
        .run()
        .await
        .expect("the rollout runs")
}

/// Writes as `(last record journaled before it, "verb Kind/name xN [track]")`.
pub(crate) fn by_record(writes: &[Written], records: &[Record]) -> Vec<(&'static str, String)> {
    writes
        .iter()
        .map(|write| {
            let last = records
                .iter()
                .rev()
                .find(|record| record.seq < write.next_seq)
                .map_or("", |record| record.event.name());
            let replicas = write.replicas.map(|r| format!(" x{r}")).unwrap_or_default();
            let track = write
                .track
                .as_ref()
                .map(|t| format!(" [{t}]"))
                .unwrap_or_default();
            (
                last,
                format!(
                    "{} {}/{}{replicas}{track}",
                    write.verb, write.kind, write.name
                ),
            )
        })
        .collect()
}

pub(crate) fn at(record: &'static str, write: &str) -> (&'static str, String) {
    (record, write.to_string())
}

/// The preview's writes: the unrelated ConfigMap, the active Service pinned to the old pods,
/// the preview Service, the preview at full size.
pub(crate) fn preview_writes() -> Vec<(&'static str, String)> {
    vec![
        at("preview_started", "apply ConfigMap/extra"),
        at("preview_started", "apply Service/web [stable]"),
        at("preview_started", "apply Service/web-preview [canary]"),
        at("preview_started", "apply Deployment/web-canary x4"),
    ]
}

#[tokio::test]
async fn blue_green_journals_each_phase_before_writing_it_and_switches_in_one_write() {
    let fixture = Fixture::blue_green("30ms", "60ms", "20ms");
    let backend = RecordingBackend::new(&fixture.journal);
    let checks = ScriptedChecks::healthy();
    let ending = begin_blue_green(&fixture, &backend, &checks).await;
    assert!(matches!(ending, Ending::Healthy { .. }), "{ending:?}");
    let records = fixture.records();
    assert_eq!(
        names(&records),
        [
            "rollout_started",
            "preview_started",
            "switched",
            "scaled_down",
            "healthy"
        ]
    );
    let mut expected = preview_writes();
    expected.extend([
        at("switched", "apply Service/web [canary]"),
        at("scaled_down", "apply Deployment/web x4"),
        at("scaled_down", "apply Service/web"),
        at("scaled_down", "delete Deployment/web-canary"),
        at("scaled_down", "delete Service/web-preview"),
    ]);
    assert_eq!(by_record(&backend.writes(), &records), expected);
}

#[tokio::test]
async fn a_check_failing_on_the_blue_green_preview_removes_it_without_touching_what_serves() {
    let fixture = Fixture::blue_green("30s", "0s", "0s");
    let backend = RecordingBackend::new(&fixture.journal);
    let checks = ScriptedChecks::failing_after(1);
    let ending = begin_blue_green(&fixture, &backend, &checks).await;
    let Ending::Failed { cause, reason, .. } = ending else {
        panic!("the check fails the rollout: {ending:?}");
    };
    assert_eq!(cause, cause::CHECK_FAILED);
    assert!(reason.starts_with("preview: check"), "{reason}");
    let records = fixture.records();
    assert_eq!(
        names(&records),
        [
            "rollout_started",
            "preview_started",
            "check_failed",
            "rollout_failed"
        ]
    );
    let mut expected = preview_writes();
    expected.extend([
        at("rollout_failed", "apply Deployment/web-canary x0"),
        at("rollout_failed", "delete Deployment/web-canary"),
        at("rollout_failed", "delete Service/web-preview"),
    ]);
    assert_eq!(
        by_record(&backend.writes(), &records),
        expected,
        "no switch; the preview drains and goes while the Service still selects only the old pods"
    );
}

#[tokio::test]
async fn a_check_failing_after_the_switch_switches_back_in_one_write_before_anything_else() {
    let fixture = Fixture::blue_green("0s", "30s", "30s");
    let backend = RecordingBackend::new(&fixture.journal);
    let checks = FailingAfterRecord {
        fixture: &fixture,
        after: "switched",
    };
    let ending = begin_blue_green(&fixture, &backend, &checks).await;
    let Ending::Failed { cause, reason, .. } = ending else {
        panic!("the check fails the rollout: {ending:?}");
    };
    assert_eq!(cause, cause::CHECK_FAILED);
    assert!(reason.starts_with("after the switch: check"), "{reason}");
    let records = fixture.records();
    assert_eq!(
        names(&records),
        [
            "rollout_started",
            "preview_started",
            "switched",
            "check_failed",
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
    assert!(
        fixture
            .metrics
            .render()
            .contains(r#"gitopsd_blue_green_switches_total{environment="staging",direction="switched_back"} 1"#),
        "{}",
        fixture.metrics.render()
    );
}

#[tokio::test]
async fn a_blue_green_pod_crashing_after_the_scale_down_reverts_without_switching_back() {
    let fixture = Fixture::blue_green("0s", "30s", "0s");
    // Calls: the preview's readiness, the first look of the verify window, the scaled-down
    // Deployment's readiness; then the pods of the new template crash.
    let backend = RecordingBackend::new(&fixture.journal).crashing_from_readiness_call(4);
    let checks = ScriptedChecks::healthy();
    let ending = begin_blue_green(&fixture, &backend, &checks).await;
    let Ending::Failed { cause, reason, .. } = ending else {
        panic!("the crash fails the rollout: {ending:?}");
    };
    assert_eq!(cause, "CrashLoopBackOff");
    assert!(reason.starts_with("after the scale-down: "), "{reason}");
    let records = fixture.records();
    assert_eq!(
        names(&records),
        [
            "rollout_started",
            "preview_started",
            "switched",
            "scaled_down",
            "rollout_failed"
        ]
    );
    let writes = by_record(&backend.writes(), &records);
    assert_eq!(
        writes.last().map(|w| w.0),
        Some("scaled_down"),
        "{writes:?}: nothing switched back; the revert restores the rest"
    );
}

#[path = "driver_hook_tests.rs"]
mod hooks;
