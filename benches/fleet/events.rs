//! The phases timed from cluster events: drift put back, and a crash loop during a bake.

use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::daemon::Daemon;
use crate::fixture::Fleet;
use crate::kubectl::Kubectl;
use crate::phases::{journal_records, record_time, since, wait_until};

/// Drift trials.
const DRIFT_TRIALS: usize = 3;

pub struct Drift {
    pub trials: usize,
    /// From the outside write to the put-back, as a watch of the object saw them.
    pub median: Duration,
    pub slowest: Duration,
    /// From `kubectl patch` starting to the put-back (median).
    pub from_command: Duration,
}

/// Changes the `mode` key of ConfigMap `config-00` (git sets `git`) in a few environments with
/// `kubectl patch` and times the put-back.
pub fn drift(fleet: &Fleet, kubectl: &Kubectl) -> Drift {
    let mut seen = Vec::new();
    let mut commanded = Vec::new();
    for trial in 0..DRIFT_TRIALS {
        let index = (trial * 2 + 1) * fleet.environments / (DRIFT_TRIALS * 2);
        let namespace = fleet.namespace(index);
        let watch = kubectl.watch(&[
            "configmap",
            "config-00",
            "-n",
            &namespace,
            "-o",
            "jsonpath={.data.mode}{\"\\n\"}",
        ]);
        watch
            .until(Duration::from_secs(30), |line| line == "git")
            .expect("the watch shows the ConfigMap as git has it");
        let started = SystemTime::now();
        kubectl.run(&[
            "patch",
            "configmap",
            "config-00",
            "-n",
            &namespace,
            "--type",
            "merge",
            "-p",
            "{\"data\":{\"mode\":\"hand\"}}",
        ]);
        let (written, _) = watch
            .until(Duration::from_secs(30), |line| line == "hand")
            .expect("the watch sees the outside write");
        let (back, _) = watch
            .until(Duration::from_secs(120), |line| line == "git")
            .expect("the daemon puts the key back (the poll is 10 minutes)");
        seen.push(since(back, written));
        commanded.push(since(back, started));
        eprintln!(
            "fleet: drift in {namespace} put back {} ms after the write",
            since(back, written).as_millis()
        );
    }
    seen.sort();
    commanded.sort();
    Drift {
        trials: DRIFT_TRIALS,
        median: seen[DRIFT_TRIALS / 2],
        slowest: seen[DRIFT_TRIALS - 1],
        from_command: commanded[DRIFT_TRIALS / 2],
    }
}

pub struct Crash {
    pub failed: Duration,
    pub reverted: Duration,
    pub detail: String,
}

/// Waits until environment `bake` is healthy with no rollout in flight.
fn bake_settled(daemon: &Daemon) -> bool {
    wait_until(Duration::from_secs(300), Duration::from_secs(1), || {
        daemon
            .status()
            .get("bake")
            .is_some_and(|bake| bake["last_healthy"].is_string() && bake["in_flight"].is_null())
    })
}

/// Rolls out a new template in environment `bake` (steps [50, 100], 60 s bake); 5 s after its
/// canary pod is Ready (the bake has begun), makes that pod crash-loop (k8s-lab's
/// `lab/unhealthy=crash`), and times, from the pod's first CrashLoopBackOff, the step's failure
/// and the revert's end as the journal records them.
pub fn crash_in_bake(fleet: &Fleet, daemon: &Daemon, kubectl: &Kubectl) -> Crash {
    assert!(
        bake_settled(daemon),
        "environment bake never became healthy"
    );
    let namespace = fleet.bake_namespace();
    let pods = kubectl.watch(&[
        "pods",
        "-n",
        &namespace,
        "-o",
        "jsonpath={.metadata.name} {.metadata.labels.gitopsd\\.io/track} {.status.containerStatuses[0].ready} {.status.containerStatuses[0].state.waiting.reason}{\"\\n\"}",
    ]);
    fleet.write_bake("2");
    let tip = fleet.commit("bake: release 2");
    let (ready_at, line) = pods
        .until(Duration::from_secs(180), |line| {
            let fields: Vec<&str> = line.split(' ').collect();
            fields.len() >= 3 && fields[1] == "canary" && fields[2] == "true"
        })
        .expect("the canary pod turns Ready");
    let pod = line.split(' ').next().unwrap_or_default().to_string();
    // Well into the bake: readiness is looked at every second.
    let into_bake = Duration::from_secs(5);
    std::thread::sleep(into_bake.saturating_sub(since(SystemTime::now(), ready_at)));
    let labelled = SystemTime::now();
    kubectl.run(&[
        "label",
        "pod",
        "-n",
        &namespace,
        &pod,
        "lab/unhealthy=crash",
        "--overwrite",
    ]);
    let (crashed, _) = pods
        .until(Duration::from_secs(60), |line| {
            line.starts_with(&format!("{pod} ")) && line.ends_with("CrashLoopBackOff")
        })
        .expect("the canary pod goes into CrashLoopBackOff");
    let mut failed = None;
    let mut reverted = None;
    let ended = wait_until(Duration::from_secs(180), Duration::from_millis(50), || {
        let after = |event: &str| -> Option<Value> {
            journal_records(&fleet.state, "bake", event)
                .into_iter()
                .rev()
                .find(|record| {
                    record["revision"] == tip.as_str() && record_time(record) >= ready_at
                })
        };
        failed = failed.clone().or_else(|| after("rollout_failed"));
        reverted = reverted.clone().or_else(|| after("reverted"));
        reverted.is_some()
    });
    assert!(ended, "the crash loop never failed the step: {failed:?}");
    let failed = failed.expect("a step fails before its revert");
    let step_passed = journal_records(&fleet.state, "bake", "step_passed")
        .iter()
        .any(|record| record["revision"] == tip.as_str());
    Crash {
        failed: since(record_time(&failed), crashed),
        reverted: since(record_time(reverted.as_ref().expect("reverted")), crashed),
        detail: format!(
            "cause {}; the pod was labelled `lab/unhealthy=crash` {} ms before its first CrashLoopBackOff was seen; {}",
            failed["cause"].as_str().unwrap_or("none"),
            since(crashed, labelled).as_millis(),
            if step_passed {
                "the step passed first"
            } else {
                "v2 never passed a step"
            }
        ),
    }
}
