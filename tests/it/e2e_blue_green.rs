//! Real-cluster suite, blue/green: an EndpointSlice watch on the active Service and a pod
//! watch show that through the preview, the switch and the scale-down the Service never has
//! fewer Ready endpoints than the replica count and selects only new pods right after the
//! switch; a check failing on the preview changes nothing served; a check failing after the
//! switch switches back at once; a SIGKILL at every journal point ends with one version and no
//! preview. Run like tests/it/e2e.rs.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufReader;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use gitopsd::journal::Event;
use serde_json::Value;

use crate::e2e::{
    Cluster, READY_PODS, events, marker_check, skipped_without_controllers, workspace_on,
};
use crate::helpers::*;

pub(crate) const REPLICAS: usize = 3;

pub(crate) fn app(namespace: &str, release: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: {REPLICAS}\n  selector:\n    matchLabels: {{app: web}}\n  template:\n    metadata:\n      labels: {{app: web}}\n      annotations: {{release: \"{release}\"}}\n    spec:\n      containers:\n        - name: web\n          image: registry.k8s.io/pause:3.9\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector: {{app: web}}\n  ports: [{{port: 80}}]\n"
    )
}

pub(crate) fn blue_green(verify: &str, scale_down_delay: &str) -> String {
    format!(
        "[environment.rollout]\nstrategy = \"blue-green\"\nbake = \"3s\"\nverify = \"{verify}\"\nscale_down_delay = \"{scale_down_delay}\"\ntimeout = \"3m\"\n"
    )
}

/// Runs `kubectl get <what> --watch` in `namespace` and hands every event's object to `seen`.
fn watch(
    cluster: &Cluster,
    namespace: &str,
    what: &[&str],
    mut seen: impl FnMut(&str, &Value) + Send + 'static,
) -> ChildGuard {
    let mut child = Command::new(&cluster.kubectl)
        .arg("--kubeconfig")
        .arg(&cluster.kubeconfig)
        .args(["get", "-n", namespace])
        .args(what)
        .args(["--watch", "--output-watch-events", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl watch starts");
    let stdout = child.stdout.take().expect("piped stdout");
    std::thread::spawn(move || {
        let stream = serde_json::Deserializer::from_reader(BufReader::new(stdout));
        for event in stream.into_iter::<Value>() {
            let Ok(event) = event else { break };
            seen(event["type"].as_str().unwrap_or(""), &event["object"]);
        }
    });
    ChildGuard(child)
}

/// What the active Service's EndpointSlices said, each time they changed: the pods behind
/// it that are Ready.
#[derive(Default)]
struct Endpoints {
    slices: BTreeMap<String, BTreeSet<String>>,
    states: Vec<(SystemTime, BTreeSet<String>)>,
}

impl Endpoints {
    fn ready(&self) -> BTreeSet<String> {
        self.slices.values().flatten().cloned().collect()
    }
}

/// Ready pods labelled `app=web`, as a pod watch sees them, the fewest seen, and each pod's
/// `release` annotation (the template it runs).
#[derive(Default)]
struct Pods {
    ready: BTreeMap<String, bool>,
    lowest: Option<usize>,
    releases: BTreeMap<String, String>,
}

pub(crate) struct Watches {
    endpoints: Arc<Mutex<Endpoints>>,
    pods: Arc<Mutex<Pods>>,
    _children: [ChildGuard; 2],
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Watches {
    pub(crate) fn start(cluster: &Cluster, namespace: &str) -> Self {
        let endpoints = Arc::new(Mutex::new(Endpoints::default()));
        let recorded = endpoints.clone();
        let slices = watch(
            cluster,
            namespace,
            &["endpointslices", "-l", "kubernetes.io/service-name=web"],
            move |kind, slice| {
                let name = slice["metadata"]["name"]
                    .as_str()
                    .unwrap_or("?")
                    .to_string();
                let ready: BTreeSet<String> = slice["endpoints"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|e| e["conditions"]["ready"] == true)
                    .filter_map(|e| e["targetRef"]["name"].as_str().map(str::to_string))
                    .collect();
                let mut state = lock(&recorded);
                if kind == "DELETED" {
                    state.slices.remove(&name);
                } else {
                    state.slices.insert(name, ready);
                }
                let now = state.ready();
                state.states.push((SystemTime::now(), now));
            },
        );
        let pods = Arc::new(Mutex::new(Pods::default()));
        let recorded = pods.clone();
        let pod_watch = watch(
            cluster,
            namespace,
            &["pods", "-l", "app=web"],
            move |kind, pod| {
                let name = pod["metadata"]["name"].as_str().unwrap_or("?").to_string();
                let ready = kind != "DELETED"
                    && pod["metadata"].get("deletionTimestamp").is_none()
                    && pod["status"]["conditions"].as_array().is_some_and(|c| {
                        c.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    });
                let mut state = lock(&recorded);
                if let Some(release) = pod["metadata"]["annotations"]["release"].as_str() {
                    state.releases.insert(name.clone(), release.to_string());
                }
                state.ready.insert(name, ready);
                if state.lowest.is_some() {
                    let count = state.ready.values().filter(|r| **r).count();
                    state.lowest = state.lowest.map(|low| low.min(count));
                }
            },
        );
        Self {
            endpoints,
            pods,
            _children: [slices, pod_watch],
        }
    }

    /// Waits until the Service has `REPLICAS` ready endpoints; returns them (the old pods)
    /// and starts recording from there.
    pub(crate) fn arm(&self) -> BTreeSet<String> {
        assert!(
            wait_for(Duration::from_secs(60), || lock(&self.endpoints)
                .ready()
                .len()
                == REPLICAS),
            "the Service never had {REPLICAS} ready endpoints"
        );
        assert!(
            wait_for(Duration::from_secs(60), || lock(&self.pods)
                .ready
                .values()
                .filter(|r| **r)
                .count()
                == REPLICAS),
            "the pod watch never saw {REPLICAS} ready pods"
        );
        let old = {
            let mut endpoints = lock(&self.endpoints);
            let ready = endpoints.ready();
            endpoints.states = vec![(SystemTime::now(), ready.clone())];
            ready
        };
        let mut pods = lock(&self.pods);
        pods.lowest = Some(pods.ready.values().filter(|r| **r).count());
        old
    }

    pub(crate) fn states(&self) -> Vec<(SystemTime, BTreeSet<String>)> {
        lock(&self.endpoints).states.clone()
    }

    /// Waits until the endpoints are `REPLICAS` pods satisfying `wanted`.
    pub(crate) fn wait_until(&self, wanted: impl Fn(&BTreeSet<String>) -> bool) -> bool {
        wait_for(Duration::from_secs(60), || {
            let ready = lock(&self.endpoints).ready();
            ready.len() == REPLICAS && wanted(&ready)
        })
    }

    pub(crate) fn lowest_ready_pods(&self) -> usize {
        lock(&self.pods).lowest.unwrap_or(0)
    }

    /// The `release` of `pod`'s template, as the pod watch saw it.
    pub(crate) fn release_of(&self, pod: &str) -> Option<String> {
        lock(&self.pods).releases.get(pod).cloned()
    }

    /// The Ready pods (preview or not) running `release`.
    pub(crate) fn ready_pods_of(&self, release: &str) -> BTreeSet<String> {
        let pods = lock(&self.pods);
        pods.ready
            .iter()
            .filter(|(pod, ready)| {
                **ready && pods.releases.get(*pod).map(String::as_str) == Some(release)
            })
            .map(|(pod, _)| pod.clone())
            .collect()
    }
}

pub(crate) fn is_preview(pod: &str) -> bool {
    pod.starts_with("web-canary-")
}

/// Every recorded endpoint state has at least `REPLICAS` ready pods and never mixes old
/// pods with new ones.
pub(crate) fn assert_never_short_nor_mixed(
    states: &[(SystemTime, BTreeSet<String>)],
    old: &BTreeSet<String>,
) {
    for (_, ready) in states {
        assert!(
            ready.len() >= REPLICAS,
            "the active Service had {} ready endpoints: {ready:?}; all states: {states:?}",
            ready.len()
        );
        let olds = ready.iter().filter(|pod| old.contains(*pod)).count();
        assert!(
            olds == 0 || olds == ready.len(),
            "the active Service mixed old and new pods: {ready:?}"
        );
    }
}

pub(crate) fn journal_names(workspace: &Workspace) -> Vec<&'static str> {
    workspace
        .journal("staging")
        .iter()
        .map(|record| record.event.name())
        .collect()
}

/// The active Service as git wrote it, the preview and its Service gone, `web` at `release`.
pub(crate) fn assert_only_git_objects(cluster: &Cluster, namespace: &str, release: &str) {
    let service = cluster
        .get(Some(namespace), "service/web")
        .expect("the Service is there");
    assert_eq!(
        service["spec"]["selector"],
        serde_json::json!({"app": "web"})
    );
    assert!(
        cluster
            .get(Some(namespace), "deployment/web-canary")
            .is_none()
    );
    assert!(
        cluster
            .get(Some(namespace), "service/web-preview")
            .is_none()
    );
    let web = cluster
        .get(Some(namespace), "deployment/web")
        .expect("web is there");
    assert_eq!(
        web["spec"]["template"]["metadata"]["annotations"]["release"],
        release
    );
    assert_eq!(web["spec"]["replicas"], REPLICAS);
}

#[test]
#[ignore = "needs a real cluster: set GITOPSD_E2E_KUBECONFIG"]
fn e2e_blue_green_switches_in_one_write_and_the_active_service_never_runs_short() {
    if skipped_without_controllers(READY_PODS) {
        return;
    }
    let mut cluster = Cluster::new();
    let namespace = cluster.namespace("bg-switch");
    let workspace = workspace_on(&cluster, &namespace, &blue_green("4s", "3s"));
    workspace
        .repo
        .write("environments/staging/app.yaml", &app(&namespace, "1"));
    workspace.repo.commit("v1");
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    let watches = Watches::start(&cluster, &namespace);
    let old = watches.arm();

    workspace
        .repo
        .write("environments/staging/app.yaml", &app(&namespace, "2"));
    workspace.repo.commit("v2");
    let output = workspace.run(&["run", "--once"]);
    assert_exit(&output, 0);
    assert!(
        watches.wait_until(|ready| ready
            .iter()
            .all(|pod| !is_preview(pod) && !old.contains(pod))),
        "the Service never came to select the new Deployment's pods alone: {:?}",
        watches.states()
    );
    let states = watches.states();
    assert_never_short_nor_mixed(&states, &old);
    let first_new = states
        .iter()
        .map(|(_, ready)| ready)
        .find(|ready| ready.iter().any(|pod| !old.contains(pod)))
        .expect("the Service switched");
    assert!(
        first_new.len() == REPLICAS && first_new.iter().all(|pod| is_preview(pod)),
        "right after the switch the Service selects only the preview's pods: {first_new:?}"
    );
    let lowest = watches.lowest_ready_pods();
    assert!(lowest >= REPLICAS, "ready pods dropped to {lowest}");
    assert_only_git_objects(&cluster, &namespace, "2");
    let names = journal_names(&workspace);
    let tail = &names[names.len() - 5..];
    assert_eq!(
        tail,
        [
            "rollout_started",
            "preview_started",
            "switched",
            "scaled_down",
            "healthy"
        ]
    );
}

#[test]
#[ignore = "needs a real cluster: set GITOPSD_E2E_KUBECONFIG"]
fn e2e_a_blue_green_preview_failing_its_check_changes_nothing_served_and_is_removed() {
    if skipped_without_controllers(READY_PODS) {
        return;
    }
    let mut cluster = Cluster::new();
    let namespace = cluster.namespace("bg-preview");
    let marker = std::env::temp_dir().join(format!("{namespace}.unhealthy"));
    let extra = format!("{}{}", blue_green("4s", "3s"), marker_check(&marker));
    let workspace = workspace_on(&cluster, &namespace, &extra);
    workspace
        .repo
        .write("environments/staging/app.yaml", &app(&namespace, "1"));
    workspace.repo.commit("v1");
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    let watches = Watches::start(&cluster, &namespace);
    let old = watches.arm();

    std::fs::write(&marker, "").expect("marker");
    workspace
        .repo
        .write("environments/staging/app.yaml", &app(&namespace, "2"));
    let bad = workspace.repo.commit("v2");
    let output = workspace.run(&["run", "--once"]);
    let _ = std::fs::remove_file(&marker);
    assert_exit(&output, 1);
    assert!(
        wait_for(Duration::from_secs(30), || cluster
            .kubectl(&["get", "pods", "-n", &namespace, "-o", "name"])
            .lines()
            .all(|pod| !pod.contains("web-canary-"))),
        "the preview pods are removed"
    );
    let states = watches.states();
    assert!(
        states.iter().all(|(_, ready)| *ready == old),
        "the active Service selected the old pods and nothing else throughout: {states:?}"
    );
    assert!(watches.lowest_ready_pods() >= REPLICAS);
    assert_only_git_objects(&cluster, &namespace, "1");
    let names = journal_names(&workspace);
    assert!(
        names.contains(&"preview_started") && !names.contains(&"switched"),
        "{names:?}"
    );
    let history = gitopsd::history::History::from_records(&workspace.journal("staging"));
    assert!(history.failed.iter().any(|failed| failed.0 == bad));
}

#[test]
#[ignore = "needs a real cluster: set GITOPSD_E2E_KUBECONFIG"]
fn e2e_a_check_failing_after_the_blue_green_switch_switches_back_at_once() {
    if skipped_without_controllers(READY_PODS) {
        return;
    }
    let mut cluster = Cluster::new();
    let namespace = cluster.namespace("bg-back");
    let marker = std::env::temp_dir().join(format!("{namespace}.unhealthy"));
    let extra = format!("{}{}", blue_green("60s", "60s"), marker_check(&marker));
    let workspace = workspace_on(&cluster, &namespace, &extra);
    workspace
        .repo
        .write("environments/staging/app.yaml", &app(&namespace, "1"));
    workspace.repo.commit("v1");
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    let watches = Watches::start(&cluster, &namespace);
    let old = watches.arm();

    workspace
        .repo
        .write("environments/staging/app.yaml", &app(&namespace, "2"));
    workspace.repo.commit("v2");
    let mut child = workspace.spawn(&["run", "--once"]);
    assert!(
        watches.wait_until(|ready| ready.iter().all(|pod| is_preview(pod))),
        "the Service never switched to the preview: {:?}",
        watches.states()
    );
    std::fs::write(&marker, "").expect("marker");
    let status = child.wait_timeout(Duration::from_secs(120));
    let _ = std::fs::remove_file(&marker);
    assert_eq!(status.and_then(|s| s.code()), Some(1), "reverted");
    assert!(
        watches.wait_until(|ready| *ready == old),
        "the Service never went back to the old pods: {:?}",
        watches.states()
    );
    let records = workspace.journal("staging");
    let time_of = |name: &str| {
        records
            .iter()
            .rev()
            .find(|record| record.event.name() == name)
            .map(|record| record.time)
            .unwrap_or_else(|| panic!("no {name} record"))
    };
    let verdict = time_of("check_failed");
    let decided = (time_of("switched_back") - verdict)
        .to_std()
        .unwrap_or_default();
    assert!(
        decided < Duration::from_secs(1),
        "switch back journaled {decided:?} after the verdict"
    );
    let states = watches.states();
    let back = states
        .iter()
        .skip_while(|(_, ready)| ready.iter().any(|pod| old.contains(pod)))
        .find(|(_, ready)| ready.iter().any(|pod| old.contains(pod)))
        .map(|(at, _)| chrono::DateTime::<chrono::Utc>::from(*at))
        .expect("the endpoints went back to the old pods");
    let served = (back - verdict).to_std().unwrap_or_default();
    eprintln!(
        "blue/green switch back: journaled {decided:?}, endpoints back {served:?} after the verdict"
    );
    assert!(
        served < Duration::from_secs(3),
        "the old pods were behind the Service again only {served:?} after the verdict"
    );
    assert_never_short_nor_mixed(&states, &old);
    let switched_back = events(&records, "switched_back");
    assert!(
        matches!(switched_back.last(), Some(Event::SwitchedBack { reason, .. }) if reason.contains("after the switch")),
        "{switched_back:?}"
    );
    assert_only_git_objects(&cluster, &namespace, "1");
}

#[test]
#[ignore = "needs a real cluster: set GITOPSD_E2E_KUBECONFIG"]
fn e2e_sigkill_at_each_journal_point_of_a_blue_green_rollout_ends_with_one_version() {
    if skipped_without_controllers(READY_PODS) {
        return;
    }
    let mut cluster = Cluster::new();
    let namespace = cluster.namespace("bg-kill");
    let workspace = workspace_on(&cluster, &namespace, &blue_green("1s", "1s"));
    workspace
        .repo
        .write("environments/staging/app.yaml", &app(&namespace, "0"));
    workspace.repo.commit("v0");
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    let journal_path = gitopsd::journal::Journal::path_for(&workspace.path("state"), "staging");
    let lines = || {
        std::fs::read(&journal_path)
            .map(|bytes| bytes.iter().filter(|b| **b == b'\n').count())
            .unwrap_or(0)
    };
    // rollout_started, preview_started, switched, scaled_down, healthy.
    for point in 1..=5 {
        let before = lines();
        let release = point.to_string();
        workspace
            .repo
            .write("environments/staging/app.yaml", &app(&namespace, &release));
        let tip = workspace.repo.commit(&format!("v{point}"));
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
            .is_some();

        assert_exit(&workspace.run(&["run", "--once"]), 0);
        let records = workspace.journal("staging");
        let after: Vec<&str> = records[killed_at..]
            .iter()
            .map(|r| r.event.name())
            .collect();
        if interrupted {
            assert_eq!(
                after.first(),
                Some(&"revert_started"),
                "point {point}: {after:?}"
            );
            assert!(
                !after.contains(&"rollout_failed"),
                "point {point}: not blamed: {after:?}"
            );
        }
        assert!(
            matches!(records.last().map(|r| &r.event), Some(Event::Healthy { revision }) if revision.0 == tip),
            "point {point}: ends healthy at the tip: {after:?}"
        );
        assert_only_git_objects(&cluster, &namespace, &release);
        assert!(
            wait_for(Duration::from_secs(60), || {
                let pods = cluster.kubectl(&["get", "pods", "-n", &namespace, "-o", "json"]);
                let pods: Value = serde_json::from_str(&pods).unwrap_or_default();
                let items = pods["items"].as_array().cloned().unwrap_or_default();
                items.len() == REPLICAS
                    && items
                        .iter()
                        .all(|pod| pod["metadata"]["annotations"]["release"] == release.as_str())
            }),
            "point {point}: exactly one version runs, {REPLICAS} pods of release {release}"
        );
    }
}

#[test]
#[ignore = "needs a real cluster: set GITOPSD_E2E_KUBECONFIG"]
fn e2e_without_auto_promote_the_blue_green_switch_waits_until_gitopsd_approve() {
    if skipped_without_controllers(READY_PODS) {
        return;
    }
    let mut cluster = Cluster::new();
    let namespace = cluster.namespace("bg-approve");
    let extra = format!("{}auto_promote = false\n", blue_green("3s", "2s"));
    let workspace = workspace_on(&cluster, &namespace, &extra);
    workspace
        .repo
        .write("environments/staging/app.yaml", &app(&namespace, "1"));
    workspace.repo.commit("v1");
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    let watches = Watches::start(&cluster, &namespace);
    let old = watches.arm();

    workspace
        .repo
        .write("environments/staging/app.yaml", &app(&namespace, "2"));
    let tip = workspace.repo.commit("v2");
    let (_daemon, _address) = daemon_with_api(&workspace, "approve-token");
    assert!(
        wait_for(Duration::from_secs(120), || journal_names(&workspace)
            .contains(&"awaiting_approval")),
        "the rollout never came to wait for its approval: {:?}",
        journal_names(&workspace)
    );
    let preview_ready = cluster
        .get(Some(&namespace), "deployment/web-canary")
        .expect("the preview runs while the switch waits");
    assert_eq!(preview_ready["status"]["readyReplicas"], REPLICAS);
    let status = stdout(&workspace.run(&["status", "--env", "staging"]));
    assert!(
        status
            .contains("blue-green: awaiting approval of the switch (gitopsd approve --env staging"),
        "{status}"
    );
    // It is still waiting after that: the switch moves only with the approval.
    assert_eq!(journal_names(&workspace).last(), Some(&"awaiting_approval"));
    assert!(
        watches.states().iter().all(|(_, ready)| *ready == old),
        "the active Service selected only the old pods while the switch waited: {:?}",
        watches.states()
    );

    let approve = workspace.run(&["approve", "--env", "staging", &tip[..10]]);
    assert_exit(&approve, 0);
    assert!(
        wait_for(Duration::from_secs(120), || matches!(
            workspace.journal("staging").last().map(|r| &r.event),
            Some(Event::Healthy { revision }) if revision.0 == tip
        )),
        "the approved switch went ahead to a healthy end: {:?}",
        journal_names(&workspace)
    );
    let names = journal_names(&workspace);
    let tail = &names[names.len() - 6..];
    assert_eq!(
        tail,
        [
            "preview_started",
            "awaiting_approval",
            "approved",
            "switched",
            "scaled_down",
            "healthy"
        ]
    );
    assert_never_short_nor_mixed(&watches.states(), &old);
    assert_only_git_objects(&cluster, &namespace, "2");
}

/// The pods behind `service` that its EndpointSlices say are Ready.
fn ready_endpoints(cluster: &Cluster, namespace: &str, service: &str) -> BTreeSet<String> {
    let label = format!("kubernetes.io/service-name={service}");
    let slices = cluster.kubectl(&[
        "get",
        "endpointslices",
        "-n",
        namespace,
        "-l",
        &label,
        "-o",
        "json",
    ]);
    let slices: Value = serde_json::from_str(&slices).unwrap_or_default();
    slices["items"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|slice| slice["endpoints"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["conditions"]["ready"] == true)
        .filter_map(|e| e["targetRef"]["name"].as_str().map(str::to_string))
        .collect()
}

#[test]
#[ignore = "needs a real cluster: set GITOPSD_E2E_KUBECONFIG"]
fn e2e_a_short_preview_behind_a_named_preview_service_is_scaled_up_before_the_switch() {
    if skipped_without_controllers(READY_PODS) {
        return;
    }
    let mut cluster = Cluster::new();
    let namespace = cluster.namespace("bg-named");
    let extra = format!(
        "{}auto_promote = false\npreview_replicas = 1\npreview_service = \"web-next\"\n",
        blue_green("3s", "2s")
    );
    let workspace = workspace_on(&cluster, &namespace, &extra);
    let next = "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web-next\nspec:\n  selector: {app: web}\n  ports: [{port: 80}]\n";
    let manifests = |release: &str| format!("{}{next}", app(&namespace, release));
    workspace
        .repo
        .write("environments/staging/app.yaml", &manifests("1"));
    workspace.repo.commit("v1");
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    let watches = Watches::start(&cluster, &namespace);
    let old = watches.arm();

    workspace
        .repo
        .write("environments/staging/app.yaml", &manifests("2"));
    let tip = workspace.repo.commit("v2");
    let (_daemon, _address) = daemon_with_api(&workspace, "named-token");
    assert!(
        wait_for(Duration::from_secs(120), || journal_names(&workspace)
            .contains(&"awaiting_approval")),
        "the rollout never came to wait for its approval: {:?}",
        journal_names(&workspace)
    );
    let preview = cluster
        .get(Some(&namespace), "deployment/web-canary")
        .expect("the preview runs");
    assert_eq!(preview["spec"]["replicas"], 1, "preview_replicas");
    assert!(
        wait_for(Duration::from_secs(30), || {
            let behind = ready_endpoints(&cluster, &namespace, "web-next");
            behind.len() == 1 && behind.iter().all(|pod| is_preview(pod))
        }),
        "the named preview Service selects the one preview pod alone: {:?}",
        ready_endpoints(&cluster, &namespace, "web-next")
    );
    assert!(
        cluster
            .get(Some(&namespace), "service/web-preview")
            .is_none(),
        "no preview Service is made beside the named one"
    );

    assert_exit(
        &workspace.run(&["approve", "--env", "staging", &tip[..10]]),
        0,
    );
    assert!(
        wait_for(Duration::from_secs(120), || matches!(
            workspace.journal("staging").last().map(|r| &r.event),
            Some(Event::Healthy { revision }) if revision.0 == tip
        )),
        "the approved switch went ahead to a healthy end: {:?}",
        journal_names(&workspace)
    );
    let states = watches.states();
    assert_never_short_nor_mixed(&states, &old);
    let first_new = states
        .iter()
        .map(|(_, ready)| ready)
        .find(|ready| ready.iter().any(|pod| !old.contains(pod)))
        .expect("the Service switched");
    assert!(
        first_new.len() == REPLICAS && first_new.iter().all(|pod| is_preview(pod)),
        "the preview was scaled to the full count before the switch: {first_new:?}"
    );
    assert_only_git_objects(&cluster, &namespace, "2");
    let named = cluster
        .get(Some(&namespace), "service/web-next")
        .expect("the named preview Service stays");
    assert_eq!(named["spec"]["selector"], serde_json::json!({"app": "web"}));
}

#[test]
#[ignore = "needs a real cluster: set GITOPSD_E2E_KUBECONFIG"]
fn e2e_a_deployment_annotated_blue_green_switches_in_a_canary_environment() {
    if skipped_without_controllers(READY_PODS) {
        return;
    }
    let mut cluster = Cluster::new();
    let namespace = cluster.namespace("bg-annotated");
    let canary = "[environment.rollout]\nsteps = [50, 100]\nbake = \"2s\"\nverify = \"2s\"\nscale_down_delay = \"2s\"\ntimeout = \"3m\"\n";
    let workspace = workspace_on(&cluster, &namespace, canary);
    let annotated = |release: &str| {
        app(&namespace, release).replacen(
            "kind: Deployment\nmetadata:\n  name: web\n",
            "kind: Deployment\nmetadata:\n  name: web\n  annotations:\n    gitopsd.io/strategy: blue-green\n",
            1,
        )
    };
    workspace
        .repo
        .write("environments/staging/app.yaml", &annotated("1"));
    workspace.repo.commit("v1");
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    let watches = Watches::start(&cluster, &namespace);
    let old = watches.arm();

    workspace
        .repo
        .write("environments/staging/app.yaml", &annotated("2"));
    workspace.repo.commit("v2");
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    let names = journal_names(&workspace);
    assert_eq!(
        names[names.len() - 5..],
        [
            "rollout_started",
            "preview_started",
            "switched",
            "scaled_down",
            "healthy"
        ]
    );
    assert!(
        watches.wait_until(|ready| ready
            .iter()
            .all(|pod| !is_preview(pod) && !old.contains(pod))),
        "{:?}",
        watches.states()
    );
    assert_never_short_nor_mixed(&watches.states(), &old);
    assert_only_git_objects(&cluster, &namespace, "2");
    let web = cluster
        .get(Some(&namespace), "deployment/web")
        .expect("web is there");
    assert_eq!(
        web["metadata"]["annotations"]["gitopsd.io/strategy"],
        "blue-green"
    );
    let settled = workspace.journal("staging").len();
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    assert_eq!(
        journal_names(&workspace)[settled..],
        [] as [&str; 0],
        "the live annotation matches git: nothing to put back"
    );
}

#[test]
#[ignore = "needs a real cluster: set GITOPSD_E2E_KUBECONFIG"]
fn e2e_a_restart_after_the_switch_pins_the_service_to_the_old_pods_before_the_preview_goes() {
    if skipped_without_controllers(READY_PODS) {
        return;
    }
    let mut cluster = Cluster::new();
    let namespace = cluster.namespace("bg-unwind");
    let workspace = workspace_on(&cluster, &namespace, &blue_green("30s", "30s"));
    workspace
        .repo
        .write("environments/staging/app.yaml", &app(&namespace, "1"));
    workspace.repo.commit("v1");
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    let watches = Watches::start(&cluster, &namespace);
    let old = watches.arm();

    workspace
        .repo
        .write("environments/staging/app.yaml", &app(&namespace, "2"));
    let tip = workspace.repo.commit("v2");
    let mut child = workspace.spawn(&["run", "--once"]);
    assert!(
        watches.wait_until(|ready| ready.iter().all(|pod| is_preview(pod))),
        "the Service never switched to the preview: {:?}",
        watches.states()
    );
    child.signal(libc::SIGKILL);
    child
        .wait_timeout(Duration::from_secs(10))
        .expect("killed child exits");
    let killed_at = workspace.journal("staging").len();
    let preview_pods: BTreeSet<String> = watches
        .states()
        .last()
        .map(|(_, ready)| ready.clone())
        .unwrap_or_default();

    // The restart reverts (the Service pinned to the old pods, the preview drained), then
    // rolls the tip out again from the start.
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    let after: Vec<&str> = workspace.journal("staging")[killed_at..]
        .iter()
        .map(|record| record.event.name())
        .collect();
    assert_eq!(after.first(), Some(&"revert_started"), "{after:?}");
    assert!(
        matches!(workspace.journal("staging").last().map(|r| &r.event), Some(Event::Healthy { revision }) if revision.0 == tip),
        "{after:?}"
    );
    let states = watches.states();
    for (_, ready) in &states {
        assert!(
            ready.len() >= REPLICAS,
            "the active Service ran short: {ready:?}; all states: {states:?}"
        );
        let olds = ready.iter().filter(|pod| old.contains(*pod)).count();
        let first_previews = ready
            .iter()
            .filter(|pod| preview_pods.contains(*pod))
            .count();
        assert!(
            olds == 0 || first_previews == 0,
            "the active Service selected the old pods and the interrupted preview's at once: {ready:?}; all states: {states:?}"
        );
    }
    assert!(
        states.iter().any(|(_, ready)| *ready == old),
        "the revert put the Service back on the old pods alone before starting over: {states:?}"
    );
    assert_never_short_nor_mixed(&states, &old);
    assert_only_git_objects(&cluster, &namespace, "2");
}
