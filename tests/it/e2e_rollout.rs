//! Real-cluster suite, rollouts and revision checks: broken pods and failed Jobs fail a step at
//! once, an invalid object holds its revision until `gitopsd retry`, capacity never drops while
//! a canary runs, an API server outage blocks a rollout without blaming its revision, a restart
//! resumes a rollout, StatefulSets canary by partition, pods carry their track, and objects a
//! revision may not touch, or only the server knows are wrong, are refused before they are
//! applied. Run like tests/it/e2e.rs.

use std::collections::BTreeMap;
use std::io::BufReader;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gitopsd::journal::Event;
use serde_json::Value;

use crate::e2e::{Cluster, READY_PODS, events, rollout, skipped_without_controllers, workspace_on};
use crate::helpers::*;

const TOKEN: &str = "e2e-token";

/// Namespace, Deployment `web` (with `replicas` unless `None`) and its Service. The pod
/// template carries `release` and any `pod_annotations`; `spec_extra` goes into the spec.
pub(crate) fn web_yaml(
    namespace: &str,
    release: &str,
    replicas: Option<u32>,
    pod_annotations: &str,
    spec_extra: &str,
) -> String {
    let replicas = replicas.map_or(String::new(), |n| format!("  replicas: {n}\n"));
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n{replicas}{spec_extra}  selector:\n    matchLabels: {{app: web}}\n  template:\n    metadata:\n      labels: {{app: web}}\n      annotations: {{release: \"{release}\"{pod_annotations}}}\n    spec:\n      containers:\n        - name: web\n          image: registry.k8s.io/pause:3.9\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector: {{app: web}}\n  ports: [{{port: 80}}]\n"
    )
}

pub(crate) fn commit_web(workspace: &Workspace, text: &str, message: &str) -> String {
    workspace.repo.write("environments/staging/app.yaml", text);
    workspace.repo.commit(message)
}

pub(crate) fn failure_cause(workspace: &Workspace) -> Option<String> {
    let records = workspace.journal("staging");
    events(&records, "rollout_failed")
        .last()
        .and_then(|event| match event {
            Event::RolloutFailed { cause, .. } => cause.clone(),
            _ => None,
        })
}

#[test]
#[ignore = "needs a real cluster: set GITOPSD_E2E_KUBECONFIG"]
fn e2e_broken_canary_pods_fail_the_step_at_once_and_name_the_reason() {
    if skipped_without_controllers(READY_PODS) {
        return;
    }
    let mut cluster = Cluster::new();
    let namespace = cluster.namespace("broken");
    let timeout = Duration::from_secs(120);
    let workspace = workspace_on(
        &cluster,
        &namespace,
        &rollout("[50, 100]").replace("timeout = \"3m\"", "timeout = \"120s\""),
    );
    commit_web(
        &workspace,
        &web_yaml(&namespace, "1", Some(2), "", ""),
        "v1",
    );
    assert_exit(&workspace.run(&["run", "--once"]), 0);

    for (lab_state, reason) in [
        ("crash", "CrashLoopBackOff"),
        ("imagepull", "ImagePullBackOff"),
    ] {
        commit_web(
            &workspace,
            &web_yaml(
                &namespace,
                lab_state,
                Some(2),
                &format!(", lab/unhealthy: {lab_state}"),
                "  progressDeadlineSeconds: 15\n",
            ),
            lab_state,
        );
        let started = Instant::now();
        let output = workspace.run(&["run", "--once"]);
        let took = started.elapsed();
        assert_exit(&output, 1);
        assert!(
            took < timeout,
            "the step waited for its whole timeout ({took:?}) instead of failing on {reason}"
        );
        assert!(stderr(&output).contains(reason), "{}", stderr(&output));
        assert_eq!(failure_cause(&workspace).as_deref(), Some(reason));
        let status = stdout(&workspace.run(&["status", "--env", "staging"]));
        assert!(status.contains(reason), "{status}");
        assert!(
            cluster
                .get(Some(&namespace), "deployment/web-canary")
                .is_none(),
            "the revert removed the canary"
        );
    }

    // A Job that fails fails its step at once too.
    let mut text = web_yaml(&namespace, "1", Some(2), "", "");
    text.push_str(
        "---\napiVersion: batch/v1\nkind: Job\nmetadata:\n  name: migrate\nspec:\n  backoffLimit: 0\n  template:\n    metadata:\n      annotations: {lab/unhealthy: fail}\n    spec:\n      restartPolicy: Never\n      containers: [{name: migrate, image: registry.k8s.io/pause:3.9}]\n",
    );
    commit_web(&workspace, &text, "a failing migration");
    let started = Instant::now();
    let output = workspace.run(&["run", "--once"]);
    let took = started.elapsed();
    assert_exit(&output, 1);
    assert!(took < timeout, "waited {took:?} for a failed Job");
    assert_eq!(failure_cause(&workspace).as_deref(), Some("JobFailed"));
    assert!(
        cluster.get(Some(&namespace), "job/migrate").is_none(),
        "reverted"
    );
}

fn count(workspace: &Workspace, event: &str) -> usize {
    events(&workspace.journal("staging"), event).len()
}

#[test]
#[ignore = "needs a real cluster: set GITOPSD_E2E_KUBECONFIG"]
fn e2e_an_invalid_object_holds_the_revision_and_retry_rolls_it_out_again() {
    if skipped_without_controllers(READY_PODS) {
        return;
    }
    let mut cluster = Cluster::new();
    let namespace = cluster.namespace("invalid");
    let workspace = workspace_on(&cluster, &namespace, &rollout("[100]"));
    workspace.edit_config("poll_interval = \"30s\"", "poll_interval = \"1s\"");
    commit_web(
        &workspace,
        &web_yaml(&namespace, "1", Some(1), "", ""),
        "v1",
    );
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    let mut text = web_yaml(&namespace, "2", Some(1), "", "");
    text.push_str(
        "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  labels: {tier: \"not a valid label value!\"}\ndata: {MODE: x}\n",
    );
    let bad = commit_web(&workspace, &text, "invalid label");

    let (_daemon, address) = daemon_with_api(&workspace, TOKEN);
    assert!(
        wait_for(Duration::from_secs(60), || count(&workspace, "reverted")
            >= 1),
        "the invalid revision was never reverted"
    );
    let records = workspace.journal("staging");
    let failed = events(&records, "rollout_failed");
    let Some(Event::RolloutFailed { reason, cause, .. }) = failed.last() else {
        panic!("no rollout_failed: {records:?}");
    };
    assert!(reason.contains("invalid (422"), "{reason}");
    assert!(
        reason.contains("not a valid label value"),
        "the server's message: {reason}"
    );
    assert_eq!(cause.as_deref(), Some("Rejected"));
    let status = stdout(&workspace.run(&["status", "--env", "staging"]));
    assert!(status.contains("held; gitopsd retry"), "{status}");
    // Held: the daemon does not try it again on its own, however many passes it makes.
    assert!(
        wait_for_pass_after_now(&address, "staging"),
        "no staging pass after the revert"
    );
    assert_eq!(
        count(&workspace, "rollout_started"),
        2,
        "v1 and one try of the bad revision"
    );

    let ready = wait_for(Duration::from_secs(30), || {
        http_request(&address, "GET", "/readyz", &[], "").is_some_and(|(status, _)| status == 200)
    });
    assert!(ready, "/readyz never answered 200");
    let output = workspace.run(&["retry", "--env", "staging"]);
    assert_exit(&output, 0);
    assert!(stdout(&output).contains(&bad), "{}", stdout(&output));
    assert!(
        wait_for(Duration::from_secs(60), || count(&workspace, "reverted")
            >= 2),
        "the retried revision did not roll out (and fail) again"
    );
    assert_eq!(count(&workspace, "retried"), 1);
    assert_eq!(
        count(&workspace, "rollout_failed"),
        2,
        "it fails again the same way"
    );
    // An environment whose tip is not held has nothing to retry.
    let none_held = workspace.run(&["retry", "--env", "production"]);
    assert!(!none_held.status.success());
    assert!(
        stderr(&none_held).contains("not held as failed"),
        "{}",
        stderr(&none_held)
    );
}

/// Pods behind the Service (`app=web`) that are Ready and not being deleted, as a watch of
/// pod events reports them.
pub(crate) struct ReadyWatch {
    _child: ChildGuard,
    seen: Arc<Mutex<WatchState>>,
}

#[derive(Default)]
struct WatchState {
    ready: BTreeMap<String, bool>,
    /// The fewest ready pods seen since `arm`, and every pod name seen.
    lowest: Option<usize>,
    armed: bool,
    names: std::collections::BTreeSet<String>,
}

impl WatchState {
    fn count(&self) -> usize {
        self.ready.values().filter(|ready| **ready).count()
    }
}

impl ReadyWatch {
    pub(crate) fn start(cluster: &Cluster, namespace: &str) -> Self {
        let mut child = Command::new(&cluster.kubectl)
            .arg("--kubeconfig")
            .arg(&cluster.kubeconfig)
            .args([
                "get",
                "pods",
                "-n",
                namespace,
                "-l",
                "app=web",
                "--watch",
                "--output-watch-events",
                "-o",
                "json",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("kubectl watch starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let seen = Arc::new(Mutex::new(WatchState::default()));
        let state = seen.clone();
        std::thread::spawn(move || {
            let stream = serde_json::Deserializer::from_reader(BufReader::new(stdout));
            for event in stream.into_iter::<Value>() {
                let Ok(event) = event else { break };
                let pod = &event["object"];
                let name = pod["metadata"]["name"].as_str().unwrap_or("?").to_string();
                let ready = event["type"] != "DELETED"
                    && pod["metadata"].get("deletionTimestamp").is_none()
                    && pod["status"]["conditions"]
                        .as_array()
                        .is_some_and(|conditions| {
                            conditions
                                .iter()
                                .any(|c| c["type"] == "Ready" && c["status"] == "True")
                        });
                let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
                state.names.insert(name.clone());
                state.ready.insert(name, ready);
                if state.armed {
                    let count = state.count();
                    state.lowest = Some(state.lowest.map_or(count, |low| low.min(count)));
                }
            }
        });
        Self {
            _child: ChildGuard(child),
            seen,
        }
    }

    /// Waits until `n` pods are ready, then starts recording the lowest count.
    pub(crate) fn arm_at(&self, n: usize) {
        let ready = wait_for(Duration::from_secs(60), || {
            self.seen.lock().unwrap_or_else(|p| p.into_inner()).count() == n
        });
        assert!(ready, "the watch never saw {n} ready pods");
        let mut state = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        state.armed = true;
        state.lowest = Some(state.count());
    }

    /// Waits until the watch has seen every canary pod go (deleted or on its way) and `n`
    /// pods ready: the deletions of the end of a promotion have all reached it.
    pub(crate) fn wait_for_canaries_gone(&self, n: usize) -> bool {
        wait_for(Duration::from_secs(60), || {
            let state = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            state.count() == n
                && state
                    .ready
                    .iter()
                    .all(|(name, ready)| !ready || !name.starts_with("web-canary-"))
        })
    }

    pub(crate) fn lowest_and_names(&self) -> (usize, Vec<String>) {
        let state = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        (
            state.lowest.unwrap_or(0),
            state.names.iter().cloned().collect(),
        )
    }
}

/// Makes every new pod of a namespace take a few seconds to become Ready, as real containers
/// do (the lab's kubelet makes them Ready at once): pods start with `lab/unhealthy: "true"`
/// from their template, and this lifts it `delay` after it first sees them.
struct SlowStarts {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

const SLOW_START: &str = ", lab/unhealthy: \"true\"";

impl SlowStarts {
    fn start(cluster: &Cluster, namespace: &str, delay: Duration) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let kubectl = cluster.kubectl.clone();
        let kubeconfig = cluster.kubeconfig.clone();
        let namespace = namespace.to_string();
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut first_seen: BTreeMap<String, Instant> = BTreeMap::new();
            while !stopping.load(std::sync::atomic::Ordering::Relaxed) {
                let output = Command::new(&kubectl)
                    .arg("--kubeconfig")
                    .arg(&kubeconfig)
                    .args(["get", "pods", "-n", &namespace, "-o", "json"])
                    .output();
                let pods: Value = output
                    .ok()
                    .and_then(|o| serde_json::from_slice(&o.stdout).ok())
                    .unwrap_or_default();
                for pod in pods["items"].as_array().into_iter().flatten() {
                    if pod["metadata"]["annotations"]["lab/unhealthy"] != "true" {
                        continue;
                    }
                    let name = pod["metadata"]["name"].as_str().unwrap_or("?").to_string();
                    let seen = *first_seen.entry(name.clone()).or_insert_with(Instant::now);
                    if seen.elapsed() >= delay {
                        let _ = Command::new(&kubectl)
                            .arg("--kubeconfig")
                            .arg(&kubeconfig)
                            .args(["annotate", "pod", "-n", &namespace, &name, "lab/unhealthy-"])
                            .output();
                    }
                }
                // The stand-in kubelet's pace: part of the scenario (pods that become Ready
                // some seconds after they appear), not a wait of the test.
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for SlowStarts {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
#[ignore = "needs a real cluster: set GITOPSD_E2E_KUBECONFIG"]
fn e2e_ready_pods_behind_the_service_never_drop_during_a_canary_and_its_promotion() {
    if skipped_without_controllers(READY_PODS) {
        return;
    }
    let mut cluster = Cluster::new();
    for (tag, replicas, floor) in [("capacity", Some(4), 3), ("surge", None, 1)] {
        let namespace = cluster.namespace(tag);
        let workspace = workspace_on(&cluster, &namespace, &rollout("[25, 50, 100]"));
        let _slow = SlowStarts::start(&cluster, &namespace, Duration::from_secs(4));
        commit_web(
            &workspace,
            &web_yaml(&namespace, "1", replicas, SLOW_START, ""),
            "v1",
        );
        assert_exit(&workspace.run(&["run", "--once"]), 0);
        let watch = ReadyWatch::start(&cluster, &namespace);
        let size = replicas.map_or(1, |n| n as usize);
        watch.arm_at(size);

        commit_web(
            &workspace,
            &web_yaml(&namespace, "2", replicas, SLOW_START, ""),
            "v2",
        );
        let output = workspace.run(&["run", "--once"]);
        assert_exit(&output, 0);
        assert!(
            watch.wait_for_canaries_gone(size),
            "the watch never saw the canary go: {:?}",
            watch.lowest_and_names()
        );
        let (lowest, names) = watch.lowest_and_names();
        assert!(
            names.iter().any(|name| name.starts_with("web-canary-")),
            "the watch saw no canary pod: {names:?}"
        );
        assert!(
            lowest >= floor,
            "{tag}: ready pods behind the Service dropped to {lowest} (floor {floor}); pods seen: {names:?}"
        );
        assert!(
            cluster
                .get(Some(&namespace), "deployment/web-canary")
                .is_none()
        );
    }
}

/// A control plane of the test's own, on its own ports and folder, so it can be stopped and
/// started while other tests use the shared one. Purged when dropped.
struct OwnLab {
    dir: PathBuf,
    scripts: PathBuf,
    ports: [u16; 4],
}

impl OwnLab {
    fn start() -> Self {
        let scripts = std::env::var_os("GITOPSD_TEST_LAB").map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/k8s-lab"),
            PathBuf::from,
        );
        let dir = std::env::temp_dir().join(format!("gitopsd-outage-lab-{}", std::process::id()));
        // kube-apiserver, etcd and the controller manager are told their ports and cannot
        // report ports the system picked: take ports free a moment ago, and when up.sh fails
        // (it refuses a port another process took meanwhile) purge and try new ones.
        let mut failures = Vec::new();
        for _ in 0..3 {
            let ports = ports_for_external_process::<4>();
            let lab = Self {
                dir: dir.clone(),
                scripts: scripts.clone(),
                ports,
            };
            match lab.try_script("up.sh", &[]) {
                Ok(()) => return lab,
                // Dropping `lab` purges what this try started.
                Err(error) => failures.push(format!("ports {ports:?}: {error}")),
            }
        }
        panic!("the outage lab did not start:\n{}", failures.join("\n"));
    }

    fn script(&self, name: &str, args: &[&str]) {
        if let Err(error) = self.try_script(name, args) {
            panic!("{error}");
        }
    }

    fn try_script(&self, name: &str, args: &[&str]) -> Result<(), String> {
        let [api, etcd, peer, kcm] = self.ports;
        let output = Command::new("bash")
            .arg(self.scripts.join(name))
            .args(args)
            .env("LAB_DIR", &self.dir)
            .env("LAB_API_PORT", api.to_string())
            .env("LAB_ETCD_PORT", etcd.to_string())
            .env("LAB_ETCD_PEER_PORT", peer.to_string())
            .env("LAB_KCM_PORT", kcm.to_string())
            .output()
            .expect("lab script runs");
        if output.status.success() {
            Ok(())
        } else {
            Err(format!("{name} failed:\n{}", stderr(&output)))
        }
    }

    /// Starts the stopped lab again, on the ports it had (its kubeconfig names them).
    fn up(&self) {
        self.script("up.sh", &[]);
    }

    fn down(&self) {
        self.script("down.sh", &[]);
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }
}

impl Drop for OwnLab {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(self.scripts.join("down.sh"))
            .arg("--purge")
            .env("LAB_DIR", &self.dir)
            .output();
    }
}

#[test]
#[ignore = "needs a real cluster: set GITOPSD_E2E_KUBECONFIG"]
fn e2e_an_api_server_outage_during_a_step_blocks_without_holding_the_revision() {
    if skipped_without_controllers(
        "a k8s-lab of its own (../shared/k8s-lab's scripts) whose Deployment's pods turn ready",
    ) {
        return;
    }
    // Only the lab scripts of the shared cluster's kind are needed: this test runs its own.
    let lab = OwnLab::start();
    let namespace = format!("gitopsd-e2e-{}-outage", std::process::id());
    let workspace = Workspace::new();
    workspace.write_config_with(
        &workspace.repo.dir.display().to_string(),
        "1s",
        "[environment.rollout]\nsteps = [50, 100]\nbake = \"8s\"\ntimeout = \"2m\"\n",
    );
    workspace.edit_config(
        "target = { type = \"directory\", path = \"live/staging\" }\nnamespace = \"shop\"",
        &format!(
            "target = {{ type = \"kubernetes\", kubeconfig = \"{}\" }}\nnamespace = \"{namespace}\"",
            lab.kubeconfig().display()
        ),
    );
    workspace.repo.write(
        "environments/production/one.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: one\n",
    );
    commit_web(
        &workspace,
        &web_yaml(&namespace, "1", Some(2), "", ""),
        "v1",
    );
    assert_exit(&workspace.run(&["run", "--once"]), 0);

    let tip = commit_web(
        &workspace,
        &web_yaml(&namespace, "2", Some(2), "", ""),
        "v2",
    );
    let _daemon = workspace.spawn(&["run"]);
    assert!(
        wait_for(Duration::from_secs(60), || count(
            &workspace,
            "step_started"
        ) >= 1),
        "the rollout never started"
    );
    // Stop the control plane while step 1 bakes; step 2 then meets no API server.
    lab.down();
    assert!(
        wait_for(Duration::from_secs(90), || count(&workspace, "blocked")
            >= 1),
        "the outage was never reported as blocked: {:?}",
        workspace.journal("staging")
    );
    let status = stdout(&workspace.run(&["status", "--env", "staging"]));
    assert!(status.contains("blocked:"), "{status}");
    lab.up();
    let healthy = wait_for(Duration::from_secs(180), || {
        workspace
            .journal("staging")
            .iter()
            .any(|record| matches!(&record.event, Event::Healthy { revision } if revision.0 == tip))
    });
    assert!(
        healthy,
        "the tip never rolled out once the server was back: {:?}",
        workspace.journal("staging")
    );
    assert_eq!(
        count(&workspace, "rollout_failed"),
        0,
        "the revision was never blamed"
    );
    let status = stdout(&workspace.run(&["status", "--env", "staging"]));
    assert!(!status.contains("blocked"), "{status}");
    assert!(!status.contains("last failed revision"), "{status}");
}

#[test]
#[ignore = "needs a real cluster: set GITOPSD_E2E_KUBECONFIG"]
fn e2e_sigkill_at_each_journal_point_of_a_rollout_resumes_it() {
    if skipped_without_controllers(READY_PODS) {
        return;
    }
    let mut cluster = Cluster::new();
    let namespace = cluster.namespace("resume");
    let workspace = workspace_on(
        &cluster,
        &namespace,
        "[environment.rollout]\nsteps = [25, 50, 100]\nbake = \"2s\"\nverify = \"1s\"\ntimeout = \"2m\"\n",
    );
    commit_web(
        &workspace,
        &web_yaml(&namespace, "0", Some(4), "", ""),
        "v0",
    );
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    let journal_path = gitopsd::journal::Journal::path_for(&workspace.path("state"), "staging");
    let lines = || {
        std::fs::read(&journal_path)
            .map(|bytes| bytes.iter().filter(|b| **b == b'\n').count())
            .unwrap_or(0)
    };
    // rollout_started, 3 × step_started, 2 × step_passed, promoted, healthy.
    for point in 1..=8 {
        let before = lines();
        let tip = commit_web(
            &workspace,
            &web_yaml(&namespace, &point.to_string(), Some(4), "", ""),
            &format!("v{point}"),
        );
        let mut child = workspace.spawn(&["run", "--once"]);
        assert!(
            wait_for(Duration::from_secs(60), || lines() >= before + point),
            "point {point} was never reached"
        );
        child.signal(libc::SIGKILL);
        child
            .wait_timeout(Duration::from_secs(10))
            .expect("killed child exits");
        let killed_at = workspace.journal("staging").len();
        let interrupted = gitopsd::history::History::from_records(&workspace.journal("staging"))
            .in_flight
            .map(|flight| flight.step);

        assert_exit(&workspace.run(&["run", "--once"]), 0);
        let records = workspace.journal("staging");
        let after: Vec<&Event> = records[killed_at..].iter().map(|r| &r.event).collect();
        if let Some(step) = interrupted {
            let Some(Event::RolloutResumed { step: resumed, .. }) = after.first() else {
                panic!("point {point}: the restart did not resume: {after:?}");
            };
            if point == 4 {
                assert_eq!(step.map(|(index, _)| index), Some(1), "killed in step 2");
                assert_eq!(*resumed, 1, "step 2 goes on; step 1 is not done again");
            }
            assert!(
                !after.iter().any(|event| event.name() == "revert_started"),
                "point {point}: nothing is undone: {after:?}"
            );
        }
        assert!(
            matches!(records.last().map(|r| &r.event), Some(Event::Healthy { revision }) if revision.0 == tip),
            "point {point}: ends healthy at the tip: {after:?}"
        );
        assert!(
            cluster
                .get(Some(&namespace), "deployment/web-canary")
                .is_none(),
            "point {point}: no canary left"
        );
        let web = cluster
            .get(Some(&namespace), "deployment/web")
            .expect("web");
        assert_eq!(web["spec"]["replicas"], 4, "point {point}");
        assert_eq!(
            web["spec"]["template"]["metadata"]["annotations"]["release"],
            point.to_string(),
            "point {point}"
        );
    }
}

fn stateful_set_yaml(namespace: &str, release: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: db\nspec:\n  clusterIP: None\n  selector: {{app: db}}\n  ports: [{{port: 5432}}]\n---\napiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: db\nspec:\n  replicas: 4\n  serviceName: db\n  selector:\n    matchLabels: {{app: db}}\n  template:\n    metadata:\n      labels: {{app: db}}\n      annotations: {{release: \"{release}\"}}\n    spec:\n      containers:\n        - name: db\n          image: registry.k8s.io/pause:3.9\n"
    )
}

/// An `exec` check that appends `name=<field>` of each pod matching `selector` to `log` as a
/// line every second, and fails while `marker` exists.
fn recording_check(
    cluster: &Cluster,
    namespace: &str,
    selector: &str,
    field: &str,
    log: &std::path::Path,
    marker: &std::path::Path,
) -> String {
    let recorder = log.with_extension("sh");
    std::fs::write(
        &recorder,
        format!(
            "#!/bin/sh\n{} --kubeconfig {} get pods -n {namespace} -l {selector} -o jsonpath='{{range .items[*]}}{{.metadata.name}}={{{field}}} {{end}}' >> {log}\necho >> {log}\ntest ! -f {marker}\n",
            cluster.kubectl.display(),
            cluster.kubeconfig.display(),
            log = log.display(),
            marker = marker.display(),
        ),
    )
    .expect("recorder");
    format!(
        "[[environment.health]]\nname = \"record\"\ntype = \"exec\"\ncommand = \"sh {}\"\ninterval = \"1s\"\nfailures = 1\ntimeout = \"10s\"\n",
        recorder.display()
    )
}

/// Each line the recorder wrote: pod name → controller revision hash.
fn recorded_revisions(log: &std::path::Path) -> Vec<BTreeMap<String, String>> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            line.split_whitespace()
                .filter_map(|pair| pair.split_once('='))
                .map(|(pod, hash)| (pod.to_string(), hash.to_string()))
                .collect()
        })
        .collect()
}

/// Ordinals of the pods on `revision`.
fn ordinals_on(pods: &BTreeMap<String, String>, revision: &str) -> Vec<u32> {
    pods.iter()
        .filter(|(_, hash)| hash.as_str() == revision)
        .filter_map(|(pod, _)| pod.rsplit('-').next()?.parse().ok())
        .collect()
}

#[test]
#[ignore = "needs a real cluster: set GITOPSD_E2E_KUBECONFIG"]
fn e2e_a_statefulset_canaries_by_partition_and_a_failed_check_reverts_every_pod() {
    if skipped_without_controllers(
        "a StatefulSet whose pods turn ready (controller manager and kubelet)",
    ) {
        return;
    }
    let mut cluster = Cluster::new();
    let namespace = cluster.namespace("sts");
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("revisions.log");
    let marker = dir.path().join("unhealthy");
    // Records which pod runs which revision every second of every bake, and fails while the
    // marker exists.
    let check = recording_check(
        &cluster,
        &namespace,
        "app=db",
        ".metadata.labels.controller-revision-hash",
        &log,
        &marker,
    );
    let workspace = workspace_on(
        &cluster,
        &namespace,
        &format!(
            "[environment.rollout]\nsteps = [25, 50, 100]\nbake = \"3s\"\nverify = \"3s\"\ntimeout = \"2m\"\n{check}"
        ),
    );
    commit_web(&workspace, &stateful_set_yaml(&namespace, "1"), "v1");
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    let old_revision =
        cluster.get(Some(&namespace), "statefulset/db").expect("db")["status"]["updateRevision"]
            .as_str()
            .expect("updateRevision")
            .to_string();
    std::fs::remove_file(&log).expect("the first deploy's verify recorded");

    commit_web(&workspace, &stateful_set_yaml(&namespace, "2"), "v2");
    let output = workspace.run(&["run", "--once"]);
    assert_exit(&output, 0);
    let db = cluster.get(Some(&namespace), "statefulset/db").expect("db");
    let new_revision = db["status"]["updateRevision"]
        .as_str()
        .expect("updateRevision");
    assert_ne!(new_revision, old_revision);
    let mut seen: Vec<Vec<u32>> = Vec::new();
    for pods in recorded_revisions(&log) {
        let on_new = ordinals_on(&pods, new_revision);
        if seen.last() != Some(&on_new) {
            seen.push(on_new);
        }
    }
    assert_eq!(
        seen,
        [vec![3], vec![2, 3], vec![0, 1, 2, 3]],
        "the highest ordinals go first, and every bake sees its step's pods ready and updated"
    );

    // A failing check at step 1 puts every pod back on the old revision.
    std::fs::write(&marker, "").expect("marker");
    commit_web(
        &workspace,
        &stateful_set_yaml(&namespace, "3"),
        "v3, unhealthy",
    );
    assert_exit(&workspace.run(&["run", "--once"]), 1);
    std::fs::remove_file(&marker).expect("marker");
    let back = wait_for(Duration::from_secs(60), || {
        let Some(db) = cluster.get(Some(&namespace), "statefulset/db") else {
            return false;
        };
        let pods: Value = serde_json::from_str(&cluster.kubectl(&[
            "get", "pods", "-n", &namespace, "-l", "app=db", "-o", "json",
        ]))
        .expect("pods");
        let hashes: Vec<&str> = pods["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|pod| pod["metadata"]["labels"]["controller-revision-hash"].as_str())
            .collect();
        db["status"]["updateRevision"] == new_revision
            && hashes.len() == 4
            && hashes.iter().all(|hash| *hash == new_revision)
    });
    assert!(back, "after the revert every pod runs v2's revision again");
    let db = cluster.get(Some(&namespace), "statefulset/db").expect("db");
    assert_eq!(
        db["spec"]["template"]["metadata"]["annotations"]["release"], "2",
        "the old template is restored"
    );
}

#[test]
#[ignore = "needs a real cluster: set GITOPSD_E2E_KUBECONFIG"]
fn e2e_validate_server_catches_what_only_the_api_server_knows() {
    if skipped_without_controllers(READY_PODS) {
        return;
    }
    let mut cluster = Cluster::new();
    let namespace = cluster.namespace("validate");
    let workspace = workspace_on(&cluster, &namespace, "");
    commit_web(
        &workspace,
        &web_yaml(&namespace, "1", Some(1), "", ""),
        "v1",
    );

    // Offline everything is valid; on the server, the namespace does not exist yet.
    let output = workspace.run(&["validate", "--server"]);
    assert_exit(&output, 0);
    let text = stdout(&output);
    assert!(
        text.contains("accepted by a server-side dry run")
            && text.contains("its namespace comes with this revision"),
        "{text}"
    );
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    let output = workspace.run(&["validate", "--server"]);
    assert_exit(&output, 0);
    assert!(
        stdout(&output).contains("3 objects, 3 accepted by a server-side dry run"),
        "{}",
        stdout(&output)
    );

    let mut text = web_yaml(&namespace, "2", Some(1), "", "  bogusField: 1\n");
    text.push_str(
        "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  labels: {tier: \"not a valid label value!\"}\n",
    );
    workspace.repo.write("environments/staging/app.yaml", &text);
    workspace.repo.commit("two mistakes only the server sees");
    let offline = workspace.run(&["validate"]);
    assert_exit(&offline, 0);
    let output = workspace.run(&["validate", "--server"]);
    assert_exit(&output, 1);
    let text = stdout(&output);
    assert!(
        text.contains("environments/staging/app.yaml: document 2 (line")
            && text.contains("Deployment.apps")
            && text.contains("field not declared in schema"),
        "the unknown field, with its file and document: {text}"
    );
    assert!(
        text.contains("environments/staging/app.yaml: document 4 (line")
            && text.contains("not a valid label value"),
        "the invalid label, with its file and document: {text}"
    );
    let web = cluster
        .get(Some(&namespace), "deployment/web")
        .expect("web");
    assert_eq!(
        web["spec"]["template"]["metadata"]["annotations"]["release"], "1",
        "a dry run changes nothing"
    );
    assert!(
        cluster
            .get(Some(&namespace), "configmap/settings")
            .is_none()
    );
}

/// `gitopsd.io/track` of each pod of the app, by pod name.
fn tracks(cluster: &Cluster, namespace: &str) -> BTreeMap<String, String> {
    let pods: Value = serde_json::from_str(&cluster.kubectl(&[
        "get", "pods", "-n", namespace, "-l", "app=web", "-o", "json",
    ]))
    .expect("pods");
    pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|pod| pod["metadata"].get("deletionTimestamp").is_none())
        .map(|pod| {
            (
                pod["metadata"]["name"].as_str().unwrap_or("?").to_string(),
                pod["metadata"]["labels"]["gitopsd.io/track"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect()
}

#[test]
#[ignore = "needs a real cluster: set GITOPSD_E2E_KUBECONFIG"]
fn e2e_pods_carry_their_track_and_an_upgrade_restarts_nothing() {
    if skipped_without_controllers(READY_PODS) {
        return;
    }
    let mut cluster = Cluster::new();
    let namespace = cluster.namespace("track");
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("tracks.log");
    // Records each pod's track during every bake.
    let check = recording_check(
        &cluster,
        &namespace,
        "app=web",
        ".metadata.labels.gitopsd\\.io/track",
        &log,
        &dir.path().join("never"),
    );
    let workspace = workspace_on(
        &cluster,
        &namespace,
        &format!("{}{check}", rollout("[50, 100]")),
    );
    commit_web(
        &workspace,
        &web_yaml(&namespace, "1", Some(2), "", ""),
        "v1",
    );
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    let web = cluster
        .get(Some(&namespace), "deployment/web")
        .expect("web");
    assert_eq!(
        web["spec"]["template"]["metadata"]["labels"]["gitopsd.io/track"], "stable",
        "a new Deployment's pods are labelled stable"
    );
    assert!(
        web["spec"]["selector"]["matchLabels"]
            .get("gitopsd.io/track")
            .is_none(),
        "never the selector"
    );
    assert_exit(&workspace.run(&["diff", "--env", "staging"]), 0);

    // As a Deployment applied by an older gitopsd: no label on its template.
    cluster.kubectl(&[
        "patch",
        "deployment",
        "web",
        "-n",
        &namespace,
        "--type=json",
        "-p",
        r#"[{"op": "remove", "path": "/spec/template/metadata/labels/gitopsd.io~1track"}]"#,
    ]);
    assert!(wait_for(Duration::from_secs(30), || {
        tracks(&cluster, &namespace).values().all(String::is_empty)
            && tracks(&cluster, &namespace).len() == 2
    }));
    let generation = |cluster: &Cluster| {
        cluster
            .get(Some(&namespace), "deployment/web")
            .expect("web")["metadata"]["generation"]
            .as_u64()
            .expect("generation")
    };
    let before = generation(&cluster);
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    assert_eq!(
        generation(&cluster),
        before,
        "a pass adds no label on its own"
    );
    // A change that leaves the template alone does not add it either: no pod restarts.
    commit_web(
        &workspace,
        &web_yaml(&namespace, "1", Some(3), "", ""),
        "3 replicas",
    );
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    let web = cluster
        .get(Some(&namespace), "deployment/web")
        .expect("web");
    assert_eq!(web["spec"]["replicas"], 3);
    assert!(
        web["spec"]["template"]["metadata"]["labels"]
            .get("gitopsd.io/track")
            .is_none(),
        "the template is untouched"
    );

    // A template change: canary pods say canary during the bake, and after the promotion the
    // stable's pods say stable.
    let _ = std::fs::remove_file(&log);
    commit_web(
        &workspace,
        &web_yaml(&namespace, "2", Some(3), "", ""),
        "v2",
    );
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    let recorded = std::fs::read_to_string(&log).expect("the check recorded");
    assert!(
        recorded.contains("web-canary-") && recorded.contains("=canary"),
        "{recorded}"
    );
    assert!(wait_for(Duration::from_secs(30), || {
        let tracks = tracks(&cluster, &namespace);
        tracks.len() == 3 && tracks.values().all(|track| track == "stable")
    }));
}

#[test]
#[ignore = "needs a real cluster: set GITOPSD_E2E_KUBECONFIG"]
fn e2e_objects_outside_what_an_environment_may_touch_are_refused_before_anything_is_applied() {
    let mut cluster = Cluster::new();
    let namespace = cluster.namespace("limits");
    let role = format!("{namespace}-everything");
    let workspace = workspace_on(
        &cluster,
        &namespace,
        &format!(
            "allowed_namespaces = [\"{namespace}\"]\ncluster_scoped = [\"core/Namespace\"]\ndenied_kinds = [\"core/Secret\"]\n"
        ),
    );
    let mut text = web_yaml(&namespace, "1", Some(1), "", "");
    text.push_str(&format!(
        "---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: {role}\nrules: []\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: elsewhere\n  namespace: default\n"
    ));
    commit_web(
        &workspace,
        &text,
        "a ClusterRole and a ConfigMap in default",
    );
    let output = workspace.run(&["run", "--once"]);
    assert_exit(&output, 1);
    let errors = stderr(&output);
    assert!(
        errors.contains("document 4 (line") && errors.contains(&format!("ClusterRole.rbac.authorization.k8s.io {role}: not allowed in environment staging: rbac.authorization.k8s.io/ClusterRole is cluster-scoped and not among cluster_scoped")),
        "{errors}"
    );
    assert!(
        errors.contains("ConfigMap default/elsewhere: not allowed in environment staging: namespace \"default\" is not allowed"),
        "{errors}"
    );
    assert!(
        cluster
            .get(None, &format!("namespace/{namespace}"))
            .is_none(),
        "nothing of the revision is applied"
    );
    assert!(cluster.get(None, &format!("clusterrole/{role}")).is_none());
}

#[test]
#[ignore = "needs a real cluster: set GITOPSD_E2E_KUBECONFIG"]
fn e2e_a_daemonset_whose_new_pods_crash_fails_at_once() {
    if skipped_without_controllers("a DaemonSet whose pods start (controller manager and kubelet)")
    {
        return;
    }
    let mut cluster = Cluster::new();
    let namespace = cluster.namespace("daemonset");
    let workspace = workspace_on(
        &cluster,
        &namespace,
        &rollout("[100]").replace("timeout = \"3m\"", "timeout = \"120s\""),
    );
    let agent = |release: &str, annotations: &str| {
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n---\napiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: agent\nspec:\n  selector:\n    matchLabels: {{app: agent}}\n  template:\n    metadata:\n      labels: {{app: agent}}\n      annotations: {{release: \"{release}\"{annotations}}}\n    spec:\n      containers:\n        - name: agent\n          image: registry.k8s.io/pause:3.9\n"
        )
    };
    commit_web(&workspace, &agent("1", ""), "v1");
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    commit_web(
        &workspace,
        &agent("2", ", lab/unhealthy: crash"),
        "v2 crashes",
    );
    let started = Instant::now();
    let output = workspace.run(&["run", "--once"]);
    let took = started.elapsed();
    assert_exit(&output, 1);
    assert!(took < Duration::from_secs(120), "waited {took:?}");
    assert_eq!(
        failure_cause(&workspace).as_deref(),
        Some("CrashLoopBackOff")
    );
    let agent = cluster
        .get(Some(&namespace), "daemonset/agent")
        .expect("agent");
    assert_eq!(
        agent["spec"]["template"]["metadata"]["annotations"]["release"], "1",
        "reverted"
    );
}

#[test]
#[ignore = "needs a real cluster: set GITOPSD_E2E_KUBECONFIG"]
fn e2e_a_canary_that_starts_crashing_during_its_bake_is_not_promoted() {
    if skipped_without_controllers(READY_PODS) {
        return;
    }
    // As an operator tried it: 4 replicas, steps [50, 100], a 60 s bake and no health check
    // at all; the canary's pods turn CrashLoopBackOff a few seconds into the bake.
    let mut cluster = Cluster::new();
    let namespace = cluster.namespace("bakecrash");
    let workspace = workspace_on(
        &cluster,
        &namespace,
        &rollout("[50, 100]").replace("bake = \"3s\"", "bake = \"60s\""),
    );
    commit_web(
        &workspace,
        &web_yaml(&namespace, "1", Some(4), "", ""),
        "v1",
    );
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    commit_web(
        &workspace,
        &web_yaml(&namespace, "2", Some(4), "", ""),
        "v2",
    );
    let mut pass = workspace.spawn(&["run", "--once"]);
    let canary_pods = || {
        let listed = cluster.kubectl(&[
            "get",
            "pods",
            "-n",
            &namespace,
            "-l",
            "gitopsd.io/track=canary",
            "-o",
            "name",
        ]);
        listed.lines().map(str::to_string).collect::<Vec<_>>()
    };
    // The bake has begun once the stable was scaled down to make room for the canary.
    let baking = || {
        canary_pods().len() == 2
            && cluster
                .get(Some(&namespace), "deployment/web")
                .is_some_and(|web| web["spec"]["replicas"] == 2)
    };
    assert!(
        wait_for(Duration::from_secs(90), baking),
        "the first step's canary pods are running"
    );
    cluster.label_all(&namespace, &canary_pods(), "lab/unhealthy=crash");
    let crashed = Instant::now();
    let status = pass
        .wait_timeout(Duration::from_secs(40))
        .expect("the pass ends long before the bake would have");
    assert_eq!(status.code(), Some(1), "the revision failed");
    assert!(
        crashed.elapsed() < Duration::from_secs(30),
        "the step failed {:?} after the crash loop began",
        crashed.elapsed()
    );
    assert_eq!(
        failure_cause(&workspace).as_deref(),
        Some("CrashLoopBackOff")
    );
    let records = workspace.journal("staging");
    let started = records
        .iter()
        .rposition(|record| record.event.name() == "rollout_started")
        .expect("v2's rollout started");
    let since: Vec<&str> = records[started..]
        .iter()
        .map(|record| record.event.name())
        .collect();
    assert!(
        !since.contains(&"promoted") && !since.contains(&"step_passed"),
        "v2's first step never passed and v2 was never promoted: {since:?}"
    );
    let web = cluster
        .get(Some(&namespace), "deployment/web")
        .expect("the stable is there");
    assert_eq!(
        web["spec"]["replicas"], 4,
        "the stable is back at full size"
    );
    assert_eq!(
        web["spec"]["template"]["metadata"]["annotations"]["release"], "1",
        "the stable still runs v1"
    );
    assert!(
        cluster
            .get(Some(&namespace), "deployment/web-canary")
            .is_none(),
        "the revert removed the canary"
    );
}

#[test]
#[ignore = "needs a real cluster: set GITOPSD_E2E_KUBECONFIG"]
fn e2e_an_object_taken_over_before_its_prune_is_left_alone() {
    if skipped_without_controllers(READY_PODS) {
        return;
    }
    // The revision drops ConfigMap `extra`; while its canary bakes (deletions wait for the
    // promotion), another applyset takes `extra` over. The prune must not delete it.
    let mut cluster = Cluster::new();
    let namespace = cluster.namespace("takeover");
    let workspace = workspace_on(
        &cluster,
        &namespace,
        &rollout("[50, 100]").replace("bake = \"3s\"", "bake = \"20s\""),
    );
    let extra = "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: extra\ndata: {a: b}\n";
    let v1 = format!("{}{extra}", web_yaml(&namespace, "1", Some(2), "", ""));
    commit_web(&workspace, &v1, "v1");
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    commit_web(
        &workspace,
        &web_yaml(&namespace, "2", Some(2), "", ""),
        "v2 without extra",
    );
    let mut pass = workspace.spawn(&["run", "--once"]);
    let baking = || {
        events(&workspace.journal("staging"), "step_started").len() >= 2
            && cluster
                .get(Some(&namespace), "deployment/web-canary")
                .is_some()
    };
    assert!(
        wait_for(Duration::from_secs(90), baking),
        "the canary step started"
    );
    cluster.kubectl(&[
        "label",
        "-n",
        &namespace,
        "configmap/extra",
        "applyset.kubernetes.io/part-of=applyset-of-someone-else",
        "--overwrite",
    ]);
    let status = pass
        .wait_timeout(Duration::from_secs(120))
        .expect("the rollout ends");
    assert_eq!(status.code(), Some(0), "v2 rolled out");
    let kept = cluster
        .get(Some(&namespace), "configmap/extra")
        .expect("the object another applyset took over is still there");
    assert_eq!(
        kept["metadata"]["labels"]["applyset.kubernetes.io/part-of"],
        "applyset-of-someone-else"
    );
}
