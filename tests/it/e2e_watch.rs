//! Real-cluster tests of the daemon's watch cache (ignored by default; see tests/it/e2e.rs for
//! how to run them): passes read live state from the cache, not from LISTs.

use std::time::Duration;

use crate::e2e::{Cluster, workspace_on};
use crate::helpers::*;

const TOKEN: &str = "watch-token";

fn app(namespace: &str, mode: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web-config\ndata:\n  MODE: {mode}\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector: {{app: web}}\n  ports: [{{port: 80}}]\n"
    )
}

/// Requests the daemon's client sent with `verb`.
pub(crate) fn requests(address: &str, verb: &str) -> u64 {
    metric_sum(
        address,
        "gitopsd_kube_requests_total",
        &format!("verb=\"{verb}\""),
    )
    .unwrap_or(0)
}

#[test]
#[ignore = "needs a real cluster: GITOPSD_E2E_KUBECONFIG"]
fn e2e_watch_the_daemon_passes_from_its_cache_without_lists_or_gets() {
    let mut cluster = Cluster::new();
    let namespace = cluster.namespace("watch");
    let workspace = workspace_on(&cluster, &namespace, "");
    workspace.edit_config("poll_interval = \"30s\"", "poll_interval = \"1s\"");
    workspace
        .repo
        .write("environments/staging/app.yaml", &app(&namespace, "git"));
    workspace.repo.commit("app");
    let (_daemon, address) = daemon_with_api(&workspace, TOKEN);
    assert!(
        wait_for(Duration::from_secs(60), || cluster
            .get(Some(&namespace), "configmap/web-config")
            .is_some()),
        "never applied: {:?}",
        workspace.journal("staging")
    );
    assert!(
        wait_for_pass_after_now(&address, "staging"),
        "no pass after the first"
    );
    // Passes went through: every store they needed was synced, and holds the members.
    let cached = |kind: &str| {
        metric_sum(
            &address,
            "gitopsd_cache_objects",
            &format!("type=\"{kind}\""),
        )
    };
    // `/status` shows the stores the environment reads, all synced.
    let (code, body) = http_request(&address, "GET", "/status", &[], "").expect("/status");
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let staging = status
        .as_array()
        .into_iter()
        .flatten()
        .find(|environment| environment["environment"] == "staging")
        .cloned()
        .unwrap_or_default();
    let cache = staging["cache"].as_array().cloned().unwrap_or_default();
    let types: Vec<&str> = cache.iter().filter_map(|t| t["type"].as_str()).collect();
    for kind in [
        "applyset-parents",
        "v1/ConfigMap",
        "v1/Namespace",
        "v1/Service",
    ] {
        assert!(types.contains(&kind), "{kind} in {body}");
    }
    assert!(
        cache.iter().all(|t| t["state"] == "synced"),
        "every store synced: {body}"
    );
    assert!(cached("v1/ConfigMap").is_some_and(|n| n >= 1), "configmaps");
    assert!(cached("v1/Service").is_some_and(|n| n >= 1), "services");
    assert!(cached("v1/Namespace").is_some_and(|n| n >= 1), "namespaces");
    assert!(
        requests(&address, "watch") >= 4,
        "a watch per type and the parents'"
    );
    let blocked = workspace
        .journal("staging")
        .iter()
        .filter(|record| record.event.name() == "blocked")
        .count();
    assert_eq!(blocked, 0, "{:?}", workspace.journal("staging"));

    // No-op passes: nothing LISTed, nothing read.
    let (lists, gets) = (requests(&address, "list"), requests(&address, "get"));
    let before = passes(&address, "staging").unwrap_or(0);
    assert!(
        wait_for_pass_after_now(&address, "staging"),
        "no later pass"
    );
    assert!(passes(&address, "staging").unwrap_or(0) >= before + 2);
    assert_eq!(requests(&address, "list"), lists, "no LIST in a no-op pass");
    assert_eq!(requests(&address, "get"), gets, "no GET in a no-op pass");

    // `gitopsd status` shows the running daemon's stores under the journal's view.
    let shown = workspace.run(&["status", "--env", "staging"]);
    assert_exit(&shown, 0);
    let text = stdout(&shown);
    assert!(text.contains("watch cache:"), "{text}");
    let config_maps = text
        .lines()
        .find(|line| line.trim_start().starts_with("v1/ConfigMap "))
        .unwrap_or_else(|| panic!("a row for config maps: {text}"));
    assert!(config_maps.contains(" synced "), "{config_maps}");
}

#[test]
#[ignore = "needs a real cluster: GITOPSD_E2E_KUBECONFIG"]
fn e2e_watch_a_change_by_another_writer_is_put_back_without_waiting_for_the_poll() {
    let mut cluster = Cluster::new();
    let namespace = cluster.namespace("drift-watch");
    let workspace = workspace_on(&cluster, &namespace, "");
    workspace.edit_config("poll_interval = \"30s\"", "poll_interval = \"10m\"");
    workspace
        .repo
        .write("environments/staging/app.yaml", &app(&namespace, "git"));
    workspace.repo.commit("app");
    let (_daemon, address) = daemon_with_api(&workspace, TOKEN);
    let mode = || {
        cluster
            .get(Some(&namespace), "configmap/web-config")
            .and_then(|object| object["data"]["MODE"].as_str().map(str::to_string))
    };
    assert!(
        wait_for(Duration::from_secs(60), || mode().as_deref() == Some("git")
            && passes(&address, "staging").is_some_and(|n| n >= 1)),
        "never applied: {:?}",
        workspace.journal("staging")
    );
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
    let patched = std::time::Instant::now();
    assert!(
        wait_for(Duration::from_secs(30), || mode().as_deref() == Some("git")),
        "the change was never put back: {:?}",
        workspace.journal("staging")
    );
    assert!(
        patched.elapsed() < Duration::from_secs(10),
        "put back after {:?}, not at once (the poll is 10 minutes)",
        patched.elapsed()
    );
    // Putting it back is gitopsd's own write: it wakes nothing, so passes stop.
    std::thread::sleep(Duration::from_secs(3));
    let settled = passes(&address, "staging");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        passes(&address, "staging"),
        settled,
        "gitopsd's own writes do not wake it"
    );
}
