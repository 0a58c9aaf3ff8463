//! Real-cluster tests of the daemon's watch cache as rollouts and outages meet it (ignored by
//! default; run like tests/it/e2e.rs): readiness and fail-fast read the cache, a watch broken
//! by an API server restart lists again before anything is decided from it, a type no
//! environment owns any more stops being watched, and an environment limited to named
//! namespaces runs with a namespace-scoped role.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::e2e::{Cluster, READY_PODS, rollout, skipped_without_controllers, workspace_on};
use crate::e2e_blue_green::journal_names;
use crate::e2e_rollout::{commit_web, failure_cause, web_yaml};
use crate::e2e_watch::requests;
use crate::helpers::*;

const TOKEN: &str = "cache-token";

/// The staging environment's row of `/status`.
fn staging_status(address: &str) -> Option<Value> {
    let (code, body) = http_request(address, "GET", "/status", &[], "")?;
    if code != 200 {
        return None;
    }
    let status: Value = serde_json::from_str(&body).ok()?;
    status
        .as_array()?
        .iter()
        .find(|environment| environment["environment"] == "staging")
        .cloned()
}

/// The stores staging reads, as (type, state).
fn cache_rows(address: &str) -> Vec<(String, String)> {
    staging_status(address)
        .and_then(|status| status["cache"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|row| {
            (
                row["type"].as_str().unwrap_or_default().to_string(),
                row["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
#[ignore = "needs a real cluster: GITOPSD_E2E_KUBECONFIG"]
fn e2e_cache_a_canary_crashing_during_its_bake_fails_from_the_daemons_cache() {
    if skipped_without_controllers(READY_PODS) {
        return;
    }
    let mut cluster = Cluster::new();
    let namespace = cluster.namespace("cachecrash");
    let workspace = workspace_on(
        &cluster,
        &namespace,
        &rollout("[50, 100]").replace("bake = \"3s\"", "bake = \"60s\""),
    );
    workspace.edit_config("poll_interval = \"30s\"", "poll_interval = \"1s\"");
    commit_web(
        &workspace,
        &web_yaml(&namespace, "1", Some(4), "", ""),
        "v1",
    );
    let (_daemon, address) = daemon_with_api(&workspace, TOKEN);
    let healthy = |count: usize| {
        journal_names(&workspace)
            .iter()
            .filter(|name| **name == "healthy")
            .count()
            >= count
    };
    assert!(
        wait_for(Duration::from_secs(120), || healthy(1)),
        "v1 never went live: {:?}",
        journal_names(&workspace)
    );
    commit_web(
        &workspace,
        &web_yaml(&namespace, "2", Some(4), "", ""),
        "v2",
    );
    let canary_pods = || {
        cluster
            .kubectl(&[
                "get",
                "pods",
                "-n",
                &namespace,
                "-l",
                "gitopsd.io/track=canary",
                "-o",
                "name",
            ])
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let baking = || journal_names(&workspace).contains(&"step_started") && canary_pods().len() == 2;
    assert!(
        wait_for(Duration::from_secs(90), baking),
        "the first step's canary pods never ran: {:?}",
        journal_names(&workspace)
    );
    // Wait for the canary's pods to be Ready: from here the step only bakes, and readiness
    // polls read the cache.
    assert!(
        wait_for(Duration::from_secs(60), || {
            cluster
                .get(Some(&namespace), "deployment/web-canary")
                .is_some_and(|canary| canary["status"]["readyReplicas"] == 2)
        }),
        "the canary never became ready"
    );
    let (gets, lists) = (requests(&address, "get"), requests(&address, "list"));
    // Polls of a baking step, one a second, neither GET nor LIST: a few seconds of them.
    let polled = passes(&address, "staging");
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        passes(&address, "staging"),
        polled,
        "still the same pass: the rollout bakes"
    );
    assert_eq!(
        requests(&address, "get"),
        gets,
        "readiness polls during the bake read the cache, not the server"
    );
    assert_eq!(requests(&address, "list"), lists, "no LIST of pods either");
    cluster.label_all(&namespace, &canary_pods(), "lab/unhealthy=crash");
    assert!(
        wait_for(Duration::from_secs(40), || failure_cause(&workspace)
            .is_some()),
        "the step never failed: {:?}",
        journal_names(&workspace)
    );
    assert_eq!(
        failure_cause(&workspace).as_deref(),
        Some("CrashLoopBackOff")
    );
    let names = journal_names(&workspace);
    let started = names
        .iter()
        .rposition(|name| *name == "rollout_started")
        .expect("v2's rollout started");
    assert!(
        !names[started..].contains(&"promoted") && !names[started..].contains(&"step_passed"),
        "v2 was never promoted: {names:?}"
    );
    assert!(
        wait_for(Duration::from_secs(60), || {
            cluster
                .get(Some(&namespace), "deployment/web-canary")
                .is_none()
                && cluster
                    .get(Some(&namespace), "deployment/web")
                    .is_some_and(|web| web["spec"]["replicas"] == 4)
        }),
        "the revert removes the canary and gives the stable its size back"
    );
}

/// The lab's kube-apiserver, restarted in place: its pid file, command line and log are in
/// the lab folder the kubeconfig lives in (k8s-lab's up.sh).
struct ApiServer {
    run: PathBuf,
    argv: Vec<String>,
}

impl ApiServer {
    fn of(cluster: &Cluster) -> Self {
        let run = cluster
            .kubeconfig
            .parent()
            .expect("the kubeconfig is in the lab folder")
            .join("run");
        let pid = std::fs::read_to_string(run.join("kube-apiserver.pid"))
            .expect("this test needs a k8s-lab cluster: its run/kube-apiserver.pid");
        let argv: Vec<String> = std::fs::read(format!("/proc/{}/cmdline", pid.trim()))
            .expect("the API server runs")
            .split(|byte| *byte == 0)
            .filter(|arg| !arg.is_empty())
            .map(|arg| String::from_utf8_lossy(arg).into_owned())
            .collect();
        Self { run, argv }
    }

    fn pid(&self) -> String {
        std::fs::read_to_string(self.run.join("kube-apiserver.pid"))
            .expect("pid file")
            .trim()
            .to_string()
    }

    fn stop(&self) {
        let pid = self.pid();
        let status = Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .expect("kill");
        assert!(status.success());
        assert!(
            wait_for(Duration::from_secs(30), || !Path::new(&format!(
                "/proc/{pid}"
            ))
            .exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|stat| stat.contains(") Z "))),
            "the API server did not stop"
        );
    }

    /// Starts it again as up.sh does: its own session, its pid in the pid file, output
    /// appended to its log (down.sh then stops it as ever).
    fn start(&self) {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.run.join("kube-apiserver.log"))
            .expect("the API server's log");
        Command::new("setsid")
            .args(["-f", "sh", "-c", "echo $$ > \"$0\"; exec \"$@\""])
            .arg(self.run.join("kube-apiserver.pid"))
            .args(&self.argv)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .status()
            .expect("start the API server");
    }
}

#[test]
#[ignore = "needs a real cluster: GITOPSD_E2E_KUBECONFIG"]
fn e2e_cache_an_api_server_restart_is_relisted_before_anything_is_decided() {
    // Alone: every other test's client would see the outage too.
    let mut cluster = Cluster::alone();
    let namespace = cluster.namespace("restart");
    let workspace = workspace_on(&cluster, &namespace, "");
    workspace.edit_config("poll_interval = \"30s\"", "poll_interval = \"1s\"");
    let config_map = |name: &str| {
        format!("---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  K: v\n")
    };
    let objects = |names: &[&str]| {
        let mut text = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n");
        for name in names {
            text.push_str(&config_map(name));
        }
        text
    };
    workspace.repo.write(
        "environments/staging/app.yaml",
        &objects(&["a", "b", "c", "gone"]),
    );
    workspace.repo.commit("four config maps");
    let (_daemon, address) = daemon_with_api(&workspace, TOKEN);
    assert!(
        wait_for(Duration::from_secs(60), || cluster
            .get(Some(&namespace), "configmap/gone")
            .is_some()),
        "never applied: {:?}",
        journal_names(&workspace)
    );
    assert!(
        wait_for_pass_after_now(&address, "staging"),
        "no later pass"
    );
    let uids: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|name| cluster.uid(Some(&namespace), &format!("configmap/{name}")))
        .collect();
    let restarts_before = metric_sum(&address, "gitopsd_watch_restarts_total", "").unwrap_or(0);

    let server = ApiServer::of(&cluster);
    server.stop();
    let restarted = std::panic::catch_unwind(|| {
        // The broken watches make their stores unsynced: nothing is decided from them.
        assert!(
            wait_for(Duration::from_secs(30), || cache_rows(&address)
                .iter()
                .any(|(_, state)| state == "syncing")),
            "the stores never showed the outage: {:?}",
            cache_rows(&address)
        );
        // A change in git while the server is away: applied once it is back.
        workspace
            .repo
            .write("environments/staging/app.yaml", &objects(&["a", "b", "c"]));
        workspace.repo.commit("drop gone");
    });
    server.start();
    if let Err(panic) = restarted {
        std::panic::resume_unwind(panic);
    }
    assert!(
        wait_for(Duration::from_secs(120), || cluster
            .kubectl_output(&["get", "--raw", "/readyz"])
            .status
            .success()),
        "the API server came back"
    );
    assert!(
        wait_for(Duration::from_secs(120), || cluster
            .get(Some(&namespace), "configmap/gone")
            .is_none()),
        "the revision made during the outage was applied: {:?}",
        journal_names(&workspace)
    );
    assert!(
        wait_for(Duration::from_secs(60), || {
            let rows = cache_rows(&address);
            !rows.is_empty() && rows.iter().all(|(_, state)| state == "synced")
        }),
        "every store synced again: {:?}",
        cache_rows(&address)
    );
    assert!(
        metric_sum(&address, "gitopsd_watch_restarts_total", "").unwrap_or(0) > restarts_before,
        "the broken watches listed again"
    );
    assert!(
        wait_for_pass_after_now(&address, "staging"),
        "no later pass"
    );
    let after: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|name| cluster.uid(Some(&namespace), &format!("configmap/{name}")))
        .collect();
    assert_eq!(after, uids, "nothing else was deleted or recreated");
}

#[test]
#[ignore = "needs a real cluster: GITOPSD_E2E_KUBECONFIG"]
fn e2e_cache_a_type_no_environment_owns_any_more_is_no_longer_watched() {
    let mut cluster = Cluster::new();
    let namespace = cluster.namespace("unwatch");
    let workspace = workspace_on(&cluster, &namespace, "");
    workspace.edit_config("poll_interval = \"30s\"", "poll_interval = \"1s\"");
    let with_service = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web-config\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector: {{app: web}}\n  ports: [{{port: 80}}]\n"
    );
    workspace
        .repo
        .write("environments/staging/app.yaml", &with_service);
    workspace.repo.commit("with a service");
    let (_daemon, address) = daemon_with_api(&workspace, TOKEN);
    let watched = |kind: &str| cache_rows(&address).iter().any(|(name, _)| name == kind);
    let series = |kind: &str| {
        http_request(&address, "GET", "/metrics", &[], "").is_some_and(|(_, body)| {
            body.contains(&format!("gitopsd_cache_objects{{type=\"{kind}\"}}"))
        })
    };
    assert!(
        wait_for(Duration::from_secs(60), || watched("v1/Service")
            && series("v1/Service")),
        "services are watched: {:?}",
        cache_rows(&address)
    );
    let without_service = with_service
        .split("---\n")
        .filter(|document| !document.contains("kind: Service"))
        .collect::<Vec<_>>()
        .join("---\n");
    workspace
        .repo
        .write("environments/staging/app.yaml", &without_service);
    workspace.repo.commit("no service");
    assert!(
        wait_for(Duration::from_secs(60), || cluster
            .get(Some(&namespace), "service/web")
            .is_none()),
        "the service was pruned"
    );
    assert!(
        wait_for(Duration::from_secs(60), || !watched("v1/Service")
            && !series("v1/Service")),
        "no environment owns a service: its watch stopped: {:?}",
        cache_rows(&address)
    );
    assert!(watched("v1/ConfigMap"), "config maps are still watched");
}

#[test]
#[ignore = "needs a real cluster: GITOPSD_E2E_KUBECONFIG"]
fn e2e_cache_an_environment_limited_to_named_namespaces_needs_only_a_namespaced_role() {
    let mut cluster = Cluster::new();
    let namespace = cluster.namespace("rbac");
    cluster.kubectl(&["create", "namespace", &namespace]);
    cluster.kubectl(&["create", "serviceaccount", "deployer", "-n", &namespace]);
    cluster.kubectl(&[
        "create",
        "role",
        "deployer",
        "-n",
        &namespace,
        "--verb=get,list,watch,create,update,patch,delete",
        "--resource=configmaps,services",
    ]);
    cluster.kubectl(&[
        "create",
        "rolebinding",
        "deployer",
        "-n",
        &namespace,
        "--role=deployer",
        &format!("--serviceaccount={namespace}:deployer"),
    ]);
    let token = cluster.kubectl(&["create", "token", "deployer", "-n", &namespace]);
    let server = cluster.kubectl(&[
        "config",
        "view",
        "--minify",
        "-o",
        "jsonpath={.clusters[0].cluster.server}",
    ]);
    let authority = cluster.kubectl(&[
        "config",
        "view",
        "--raw",
        "--minify",
        "-o",
        "jsonpath={.clusters[0].cluster.certificate-authority-data}",
    ]);
    let workspace = workspace_on(
        &cluster,
        &namespace,
        &format!("allowed_namespaces = [\"{namespace}\"]"),
    );
    let kubeconfig = workspace.root.path().join("deployer.kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: {server}\n    certificate-authority-data: {authority}\nusers:\n- name: deployer\n  user:\n    token: {}\ncontexts:\n- name: deployer\n  context: {{cluster: lab, user: deployer}}\ncurrent-context: deployer\n",
            token.trim()
        ),
    )
    .expect("write the deployer's kubeconfig");
    workspace.edit_config(
        &format!("kubeconfig = \"{}\"", cluster.kubeconfig.display()),
        &format!("kubeconfig = \"{}\"", kubeconfig.display()),
    );
    workspace.edit_config("poll_interval = \"30s\"", "poll_interval = \"1s\"");
    workspace.repo.write(
        "environments/staging/app.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web-config\ndata:\n  MODE: git\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector: {app: web}\n  ports: [{port: 80}]\n",
    );
    workspace.repo.commit("app");
    let (_daemon, address) = daemon_with_api(&workspace, TOKEN);
    assert!(
        wait_for(Duration::from_secs(60), || cluster
            .get(Some(&namespace), "service/web")
            .is_some()),
        "never applied with a namespaced role: {:?} {:?}",
        journal_names(&workspace),
        staging_status(&address)
    );
    assert!(
        wait_for_pass_after_now(&address, "staging"),
        "no later pass"
    );
    let rows = cache_rows(&address);
    for kind in [
        format!("applyset-parents in {namespace}"),
        format!("v1/ConfigMap in {namespace}"),
        format!("v1/Service in {namespace}"),
    ] {
        assert!(
            rows.contains(&(kind.clone(), "synced".to_string())),
            "{kind} is watched in the namespace only: {rows:?}"
        );
    }
    let status = staging_status(&address).unwrap_or_default();
    assert!(status["blocked"].is_null(), "nothing is refused: {status}");
    // Drift is put back from the namespaced watch.
    cluster.kubectl(&[
        "patch",
        "-n",
        &namespace,
        "configmap/web-config",
        "--type",
        "merge",
        "-p",
        "{\"data\":{\"MODE\":\"hand\"}}",
    ]);
    assert!(
        wait_for(Duration::from_secs(30), || cluster
            .get(Some(&namespace), "configmap/web-config")
            .is_some_and(|object| object["data"]["MODE"] == "git")),
        "drift put back"
    );
}

/// `gitopsd_passes_total` of staging with `result`.
fn passes_of(address: &str, result: &str) -> u64 {
    metric_sum(
        address,
        "gitopsd_passes_total",
        &format!("environment=\"staging\",result=\"{result}\""),
    )
    .unwrap_or(0)
}

#[test]
#[ignore = "needs a real cluster: GITOPSD_E2E_KUBECONFIG"]
fn e2e_cache_passes_over_unchanged_live_state_read_nothing_and_drift_still_gets_a_full_pass() {
    let mut cluster = Cluster::new();
    let namespace = cluster.namespace("cachequiet");
    let workspace = workspace_on(&cluster, &namespace, "");
    workspace.edit_config("poll_interval = \"30s\"", "poll_interval = \"1s\"");
    workspace.repo.write(
        "environments/staging/settings.yaml",
        &format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  mode: git\n"
        ),
    );
    workspace.repo.commit("settings");
    let (_daemon, address) = daemon_with_api(&workspace, TOKEN);
    // Polls every second: once a pass found nothing to do, the next ones skip.
    assert!(
        wait_for(Duration::from_secs(90), || passes_of(&address, "unchanged")
            >= 2),
        "passes over an unchanged tip and cluster never skipped: {:?}",
        workspace
            .journal("staging")
            .last()
            .map(|record| format!("{:?}", record.event))
    );
    let patches = requests(&address, "patch");
    let full = passes_of(&address, "full");

    // A commit outside staging's folder: the tip is healthy without a read or a plan.
    workspace.repo.write("README.md", "not an environment\n");
    let tip = workspace.repo.commit("readme");
    let healthy_at_tip = || {
        workspace.journal("staging").iter().any(|record| {
            matches!(&record.event, gitopsd::journal::Event::Healthy { revision } if revision.0 == tip)
        })
    };
    assert!(
        wait_for(Duration::from_secs(30), healthy_at_tip),
        "the new tip was never journaled healthy: {:?}",
        journal_names(&workspace)
    );
    assert_eq!(passes_of(&address, "same_folder"), 1);
    assert_eq!(passes_of(&address, "full"), full, "no full pass for it");
    assert_eq!(requests(&address, "patch"), patches, "nothing written");

    // Drift changes the member's resourceVersion, so the next pass is a full one again.
    cluster.kubectl(&[
        "patch",
        "configmap",
        "settings",
        "-n",
        &namespace,
        "--type",
        "merge",
        "-p",
        r#"{"data":{"mode":"hand"}}"#,
    ]);
    assert!(
        wait_for(Duration::from_secs(30), || {
            cluster
                .get(Some(&namespace), "configmap/settings")
                .is_some_and(|settings| settings["data"]["mode"] == "git")
        }),
        "the drift was never put back"
    );
    assert!(passes_of(&address, "full") > full);
}
