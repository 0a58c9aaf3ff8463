//! Real-cluster suite, a revision mixing both strategies and a failure after the blue/green
//! scale-down: an EndpointSlice watch on the active Service and a pod watch show that a
//! blue/green Deployment and a canary Deployment changed together roll out at once (the
//! canary stepping beside the preview), that a failure after the switch switches the
//! blue/green Service back and reverts the canary to its baseline, and that a failure once
//! the old pods are being replaced brings the old template back up behind the preview before
//! the Service goes back to it, so it never selects both pod sets nor runs short. Run like
//! tests/it/e2e.rs.

use std::collections::BTreeSet;
use std::time::Duration;

use gitopsd::journal::Event;

use crate::e2e::{
    Cluster, READY_PODS, events, marker_check, skipped_without_controllers, workspace_on,
};
use crate::e2e_blue_green::{
    REPLICAS, Watches, app, assert_never_short_nor_mixed, assert_only_git_objects, blue_green,
    is_preview,
};
use crate::helpers::*;

/// [`app`] with `web` annotated blue-green, and a Deployment `api` (canary, 4 replicas) with
/// its Service, both at `release`.
fn mixed_app(namespace: &str, release: &str) -> String {
    let web = app(namespace, release).replacen(
        "kind: Deployment\nmetadata:\n  name: web\n",
        "kind: Deployment\nmetadata:\n  name: web\n  annotations:\n    gitopsd.io/strategy: blue-green\n",
        1,
    );
    format!(
        "{web}---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: api\nspec:\n  replicas: 4\n  selector:\n    matchLabels: {{app: api}}\n  template:\n    metadata:\n      labels: {{app: api}}\n      annotations: {{release: \"{release}\"}}\n    spec:\n      containers:\n        - name: api\n          image: registry.k8s.io/pause:3.9\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: api\nspec:\n  selector: {{app: api}}\n  ports: [{{port: 80}}]\n"
    )
}

/// `api` runs `release` alone: its template, 4 replicas, no canary Deployment left.
fn assert_api_at(cluster: &Cluster, namespace: &str, release: &str) {
    let api = cluster
        .get(Some(namespace), "deployment/api")
        .expect("api is there");
    assert_eq!(
        api["spec"]["template"]["metadata"]["annotations"]["release"],
        release
    );
    assert_eq!(api["spec"]["replicas"], 4);
    assert!(
        cluster
            .get(Some(namespace), "deployment/api-canary")
            .is_none(),
        "the canary Deployment is gone"
    );
}

fn names_since(workspace: &Workspace, from: usize) -> Vec<String> {
    workspace.journal("staging")[from..]
        .iter()
        .map(|record| match &record.event {
            Event::StepStarted { weight, .. } => format!("step_started {weight}"),
            Event::StepPassed { weight, .. } => format!("step_passed {weight}"),
            other => other.name().to_string(),
        })
        .collect()
}

#[test]
#[ignore = "needs a real cluster: set GITOPSD_E2E_KUBECONFIG"]
fn e2e_a_mixed_revision_rolls_out_both_ways_and_a_failure_after_the_switch_reverts_both() {
    if skipped_without_controllers(READY_PODS) {
        return;
    }
    let mut cluster = Cluster::new();
    let namespace = cluster.namespace("mixed");
    let marker = std::env::temp_dir().join(format!("{namespace}.unhealthy"));
    let rollout = "[environment.rollout]\nsteps = [50, 100]\nbake = \"2s\"\nverify = \"3s\"\nscale_down_delay = \"2s\"\ntimeout = \"3m\"\n";
    let workspace = workspace_on(
        &cluster,
        &namespace,
        &format!("{rollout}{}", marker_check(&marker)),
    );
    let deploy = |release: &str| {
        workspace.repo.write(
            "environments/staging/app.yaml",
            &mixed_app(&namespace, release),
        );
        workspace.repo.commit(&format!("v{release}"))
    };
    deploy("1");
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    let watches = Watches::start(&cluster, &namespace);
    let old = watches.arm();

    // Both change: the api canary steps 50% beside the web preview, then web switches and
    // api is promoted.
    deploy("2");
    let before = workspace.journal("staging").len();
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    assert_eq!(
        names_since(&workspace, before),
        [
            "rollout_started",
            "preview_started",
            "step_started 50",
            "step_passed 50",
            "switched",
            "step_started 100",
            "promoted",
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
    assert!(watches.lowest_ready_pods() >= REPLICAS);
    assert_only_git_objects(&cluster, &namespace, "2");
    assert_api_at(&cluster, &namespace, "2");

    // Both change again, and a check fails right after the switch (the old web pods still
    // up): web switches back, api goes back to its baseline.
    workspace.edit_config(
        "verify = \"3s\"\nscale_down_delay = \"2s\"",
        "verify = \"60s\"\nscale_down_delay = \"60s\"",
    );
    drop(watches);
    let watches = Watches::start(&cluster, &namespace);
    let old = watches.arm();
    let bad = deploy("3");
    let before = workspace.journal("staging").len();
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
    let states = watches.states();
    assert_never_short_nor_mixed(&states, &old);
    assert!(watches.lowest_ready_pods() >= REPLICAS);
    let names = names_since(&workspace, before);
    assert!(
        names.starts_with(&[
            "rollout_started".to_string(),
            "preview_started".into(),
            "step_started 50".into(),
            "step_passed 50".into(),
            "switched".into(),
        ]) && names.contains(&"switched_back".to_string())
            && names.ends_with(&["reverted".to_string()]),
        "{names:?}"
    );
    let records = workspace.journal("staging");
    let switched_back = events(&records[before..], "switched_back");
    assert!(
        matches!(switched_back.first(), Some(Event::SwitchedBack { reason, .. }) if reason.contains("after the switch")),
        "{switched_back:?}"
    );
    assert_only_git_objects(&cluster, &namespace, "2");
    assert_api_at(&cluster, &namespace, "2");
    assert!(
        wait_for(Duration::from_secs(60), || {
            cluster
                .kubectl(&[
                    "get",
                    "pods",
                    "-n",
                    &namespace,
                    "-l",
                    "app=api",
                    "-o",
                    "jsonpath={range .items[*]}{.metadata.annotations.release}{\"\\n\"}{end}",
                ])
                .lines()
                .all(|release| release == "2")
        }),
        "api's pods all run the baseline again"
    );
    let history = gitopsd::history::History::from_records(&records);
    assert!(history.failed.iter().any(|failed| failed.0 == bad));
}

#[test]
#[ignore = "needs a real cluster: set GITOPSD_E2E_KUBECONFIG"]
fn e2e_a_failure_after_the_blue_green_scale_down_restores_the_old_pods_before_switching_back() {
    if skipped_without_controllers(READY_PODS) {
        return;
    }
    let mut cluster = Cluster::new();
    let namespace = cluster.namespace("bg-late");
    let marker = std::env::temp_dir().join(format!("{namespace}.unhealthy"));
    let extra = format!("{}{}", blue_green("90s", "2s"), marker_check(&marker));
    let workspace = workspace_on(&cluster, &namespace, &extra);
    workspace
        .repo
        .write("environments/staging/app.yaml", &app(&namespace, "1"));
    workspace.repo.commit("v1");
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    let watches = Watches::start(&cluster, &namespace);
    watches.arm();

    workspace
        .repo
        .write("environments/staging/app.yaml", &app(&namespace, "2"));
    let bad = workspace.repo.commit("v2");
    let mut child = workspace.spawn(&["run", "--once"]);
    // The scale-down replaced the old pods: `web` runs the new template in full, the
    // Service still on the preview.
    assert!(
        wait_for(Duration::from_secs(120), || watches
            .ready_pods_of("2")
            .iter()
            .filter(|pod| !is_preview(pod))
            .count()
            == REPLICAS
            && watches.ready_pods_of("1").is_empty()),
        "web never ran the new template in full: {:?}",
        watches.states()
    );
    std::fs::write(&marker, "").expect("marker");
    let status = child.wait_timeout(Duration::from_secs(180));
    let _ = std::fs::remove_file(&marker);
    assert_eq!(status.and_then(|s| s.code()), Some(1), "reverted");
    assert!(
        watches.wait_until(|ready| ready
            .iter()
            .all(|pod| !is_preview(pod) && watches.release_of(pod).as_deref() == Some("1"))),
        "the Service never came to select the restored old pods alone: {:?}",
        watches.states()
    );
    let states = watches.states();
    for (_, ready) in &states {
        assert!(
            ready.len() >= REPLICAS,
            "the active Service had {} ready endpoints: {ready:?}; all states: {states:?}",
            ready.len()
        );
        let previews = ready.iter().filter(|pod| is_preview(pod)).count();
        let releases: BTreeSet<Option<String>> = ready
            .iter()
            .filter(|pod| !is_preview(pod))
            .map(|pod| watches.release_of(pod))
            .collect();
        assert!(
            (previews == ready.len())
                || (previews == 0 && releases.iter().all(|r| r.as_deref() == Some("1"))),
            "the active Service selected preview pods and others, or the new template outside the preview: {ready:?} ({releases:?}); all states: {states:?}"
        );
    }
    assert!(
        states
            .iter()
            .any(|(_, ready)| ready.iter().all(|pod| is_preview(pod))),
        "the Service was on the preview before: {states:?}"
    );
    assert!(watches.lowest_ready_pods() >= REPLICAS);
    let records = workspace.journal("staging");
    let position = |name: &str| {
        records
            .iter()
            .rposition(|record| record.event.name() == name)
            .unwrap_or_else(|| panic!("no {name} record"))
    };
    assert!(position("scaled_down") < position("check_failed"));
    assert!(position("check_failed") < position("switched_back"));
    assert!(position("switched_back") < position("reverted"));
    assert!(
        matches!(&records[position("switched_back")].event, Event::SwitchedBack { reason, .. } if reason.contains("old template is ready again")),
        "{:?}",
        records[position("switched_back")]
    );
    assert_only_git_objects(&cluster, &namespace, "1");
    let history = gitopsd::history::History::from_records(&records);
    assert!(history.failed.iter().any(|failed| failed.0 == bad));
}
