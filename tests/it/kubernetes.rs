//! The kubernetes target against the in-repo API server stand-in (tests/it/apiserver.rs).

use axum::http::Method;

use crate::apiserver::ApiServerStandIn;
use crate::helpers::*;

/// A workspace whose staging environment targets the stand-in.
fn on_stand_in(target_extra: &str) -> (Workspace, ApiServerStandIn) {
    let server = ApiServerStandIn::start();
    let workspace = Workspace::new();
    std::fs::write(workspace.path("kubeconfig"), server.kubeconfig()).expect("kubeconfig");
    workspace.write_config(&workspace.repo.dir.display().to_string(), "30s");
    workspace.edit_config(
        "target = { type = \"directory\", path = \"live/staging\" }",
        &format!("target = {{ type = \"kubernetes\", kubeconfig = \"kubeconfig\", context = \"stand-in\"{target_extra} }}"),
    );
    workspace.repo.write(
        "environments/production/one.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: one\n",
    );
    (workspace, server)
}

fn app(repo: &Repo, image: &str) {
    repo.write(
        "environments/staging/app.yaml",
        &format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  MODE: staging\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 4\n  selector:\n    matchLabels: {{app: web}}\n  template:\n    metadata:\n      labels: {{app: web}}\n    spec:\n      containers:\n        - name: web\n          image: {image}\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector: {{app: web}}\n  ports: [{{port: 80}}]\n"
        ),
    );
}

/// Rolls out through a 50% canary step baking for `bake`.
fn with_two_steps(workspace: &Workspace, bake: &str) {
    let config = std::fs::read_to_string(&workspace.config).expect("config");
    std::fs::write(
        &workspace.config,
        format!("{config}\n[environment.rollout]\nsteps = [50, 100]\nbake = \"{bake}\"\n"),
    )
    .expect("config");
}

/// Commits the app at web:1 and rolls it out.
fn deploy_app(workspace: &Workspace) {
    app(&workspace.repo, "web:1");
    workspace.repo.commit("initial");
    assert_exit(&workspace.run(&["run", "--once"]), 0);
}

/// Commits an environment with nothing in it (a placeholder keeps the folder).
fn remove_app(workspace: &Workspace) {
    workspace.repo.remove("environments/staging/app.yaml");
    workspace
        .repo
        .write("environments/staging/README.md", "empty on purpose\n");
    workspace.repo.commit("remove the app");
}

#[test]
fn apply_then_a_no_op_pass_sends_no_patch_and_lists_once_per_type() {
    let (workspace, server) = on_stand_in("");
    app(&workspace.repo, "web:1");
    workspace.repo.commit("initial");
    let output = workspace.run(&["run", "--once"]);
    assert_exit(&output, 0);
    let deployment = server
        .get("apps", "deployments", Some("shop"), "web")
        .expect("applied");
    assert_eq!(
        deployment["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "gitopsd"
    );
    assert_eq!(
        deployment["metadata"]["managedFields"][0]["manager"], "gitopsd-staging",
        "each environment applies as its own field manager"
    );
    assert!(
        deployment["metadata"]["labels"]["applyset.kubernetes.io/part-of"]
            .as_str()
            .is_some_and(|id| id.starts_with("applyset-")),
        "{deployment}"
    );
    let parent = server
        .get("", "configmaps", Some("shop"), "gitopsd-staging")
        .expect("the applyset parent is created in the environment's namespace");
    assert_eq!(
        parent["metadata"]["annotations"]["applyset.kubernetes.io/contains-group-kinds"],
        "ConfigMap,Deployment.apps,Namespace,Service"
    );
    assert_eq!(
        parent["metadata"]["labels"]["applyset.kubernetes.io/id"],
        deployment["metadata"]["labels"]["applyset.kubernetes.io/part-of"]
    );
    assert!(server.get("", "namespaces", None, "shop").is_some());

    server.reset_counts();
    let output = workspace.run(&["run", "--once"]);
    assert_exit(&output, 0);
    assert_eq!(
        server.count_method("PATCH"),
        0,
        "a no-op pass applies nothing"
    );
    for plural in ["namespaces", "configmaps", "deployments", "services"] {
        assert_eq!(
            server.count(&format!("LIST {plural}")),
            1,
            "one LIST of {plural}"
        );
    }
    assert_eq!(
        server.count_method("GET"),
        1,
        "one GET, of the applyset parent; never a GET per object"
    );
    assert_eq!(server.count("GET configmaps"), 1);

    // Server defaults do not show up as changes in a diff against live.
    let diff = workspace.run(&["diff", "--env", "staging"]);
    assert_exit(&diff, 0);
}

#[test]
fn prune_deletes_only_owned_objects() {
    let (workspace, server) = on_stand_in("");
    app(&workspace.repo, "web:1");
    workspace.repo.write(
        "environments/staging/extra.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: extra\n  namespace: shop\n",
    );
    workspace.repo.commit("with extra");
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    server.put(
        "",
        "configmaps",
        Some("shop"),
        serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "handmade", "namespace": "shop"}}),
        "kubectl",
    );
    workspace.repo.remove("environments/staging/extra.yaml");
    workspace.repo.commit("without extra");
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    let mut names = server.names("", "configmaps");
    names.sort();
    assert_eq!(names, ["gitopsd-staging", "handmade", "settings"]);
}

#[test]
fn a_crd_and_its_custom_resources_in_one_revision() {
    let (workspace, server) = on_stand_in("");
    // The CRD is Established (and its type served) only on the third look.
    server.delay_crds(3);
    workspace.repo.write(
        "environments/staging/crd.yaml",
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: widgets.example.com\nspec:\n  group: example.com\n  scope: Namespaced\n  names: {kind: Widget, plural: widgets}\n  versions:\n    - {name: v1, served: true, storage: true}\n---\napiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: gear\nspec:\n  teeth: 12\n",
    );
    workspace.repo.commit("crd and cr");
    let output = workspace.run(&["run", "--once"]);
    assert_exit(&output, 0);
    let widget = server
        .get("example.com", "widgets", Some("shop"), "gear")
        .expect("custom resource applied");
    assert_eq!(widget["spec"]["teeth"], 12);
    assert!(
        server.count("GET customresourcedefinitions") >= 3,
        "gitopsd waited for the CRD to be Established"
    );
}

#[test]
fn a_conflict_is_reported_without_force_and_force_takes_over() {
    let (workspace, server) = on_stand_in(", force_conflicts = false");
    server.put(
        "",
        "configmaps",
        Some("shop"),
        serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "namespace": "shop"}, "data": {"MODE": "manual"}}),
        "kubectl",
    );
    app(&workspace.repo, "web:1");
    workspace.repo.commit("initial");
    let output = workspace.run(&["run", "--once"]);
    assert_exit(&output, 1);
    let errors = stderr(&output);
    assert!(
        errors.contains("ConfigMap shop/settings: conflict (409"),
        "{errors}"
    );
    assert!(
        errors.contains("force_conflicts = true takes them over"),
        "{errors}"
    );

    // Git is the source of truth by default.
    workspace.edit_config(", force_conflicts = false", "");
    // The failed revision is held; the next commit rolls out with force.
    workspace.repo.write(
        "environments/staging/note.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: note\n",
    );
    workspace.repo.commit("retry with force");
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    let settings = server
        .get("", "configmaps", Some("shop"), "settings")
        .expect("settings");
    assert_eq!(settings["data"]["MODE"], "staging");
}

#[test]
fn server_errors_are_retried() {
    let (workspace, server) = on_stand_in("");
    app(&workspace.repo, "web:1");
    workspace.repo.commit("initial");
    server.fail(Method::PATCH, "/configmaps/settings", 503, 2);
    let output = workspace.run(&["run", "--once"]);
    assert_exit(&output, 0);
    assert_eq!(
        server.count("PATCH configmaps"),
        4,
        "two 503s, then success (and one write of the applyset parent)"
    );
}

#[test]
fn an_unknown_kind_is_reported_clearly() {
    let (workspace, _server) = on_stand_in("");
    workspace.repo.write(
        "environments/staging/gizmo.yaml",
        "apiVersion: nope.example.com/v1\nkind: Gizmo\nmetadata:\n  name: g\n",
    );
    workspace.repo.commit("unknown kind");
    let output = workspace.run(&["run", "--once"]);
    assert_exit(&output, 1);
    assert!(
        stderr(&output).contains(
            "environments/staging/gizmo.yaml: document 1 (line 1): Gizmo g: unknown type nope.example.com/v1 Gizmo: the API server does not serve it"
        ),
        "{}",
        stderr(&output)
    );
}

#[test]
fn an_image_change_rolls_out_through_a_canary_on_the_api() {
    let (workspace, server) = on_stand_in("");
    with_two_steps(&workspace, "200ms");
    deploy_app(&workspace);
    server.reset_counts();
    app(&workspace.repo, "web:2");
    workspace.repo.commit("web 2");
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    // Stable scaled down, canary created, then the promoted stable and the canary deleted.
    assert_eq!(server.count("PATCH deployments"), 3);
    assert_eq!(server.count("DELETE deployments"), 1);
    let web = server
        .get("apps", "deployments", Some("shop"), "web")
        .expect("web");
    assert_eq!(
        web["spec"]["template"]["spec"]["containers"][0]["image"],
        "web:2"
    );
    assert_eq!(web["spec"]["replicas"], 4);
    assert!(
        server
            .get("apps", "deployments", Some("shop"), "web-canary")
            .is_none()
    );
}

#[test]
fn a_namespace_holding_foreign_objects_is_not_deleted() {
    let (workspace, server) = on_stand_in("");
    workspace.allow_empty_staging();
    deploy_app(&workspace);
    server.put(
        "",
        "configmaps",
        Some("shop"),
        serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "theirs", "namespace": "shop"}}),
        "kubectl",
    );
    // The revision drops everything but a placeholder; the namespace holds `theirs`.
    remove_app(&workspace);
    let output = workspace.run(&["run", "--once"]);
    assert_exit(&output, 1);
    assert!(
        stderr(&output)
            .contains("Namespace shop: the namespace holds objects gitopsd does not own"),
        "{}",
        stderr(&output)
    );
    assert!(server.get("", "namespaces", None, "shop").is_some());
    assert!(
        server
            .get("", "configmaps", Some("shop"), "theirs")
            .is_some()
    );
    // The revision failed, so the environment was reverted to the one before.
    assert!(
        server
            .get("apps", "deployments", Some("shop"), "web")
            .is_some()
    );
}

#[test]
fn a_no_op_pass_over_a_thousand_objects_lists_once_and_patches_nothing() {
    let (workspace, server) = on_stand_in("");
    let mut text = String::new();
    for index in 0..1000 {
        text.push_str(&format!(
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: config-{index:04}\ndata:\n  value: \"{index}\"\n"
        ));
    }
    // Kept under the workspace's file size limit: ten files of a hundred.
    for (part, chunk) in text
        .split_inclusive("---\n")
        .collect::<Vec<_>>()
        .chunks(100)
        .enumerate()
    {
        workspace.repo.write(
            &format!("environments/staging/many-{part}.yaml"),
            &chunk.concat(),
        );
    }
    workspace.repo.commit("a thousand config maps");
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    assert_eq!(
        server.names("", "configmaps").len(),
        1001,
        "a thousand and the applyset parent"
    );
    server.reset_counts();
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    assert_eq!(server.count("LIST configmaps"), 1);
    assert_eq!(server.count_method("PATCH"), 0);
    assert_eq!(server.count_method("GET"), 1, "the applyset parent only");
}

#[test]
fn an_unreachable_cluster_is_a_clear_error_not_a_panic() {
    let (workspace, server) = on_stand_in("");
    let address = server.address;
    drop(server);
    std::fs::write(
        workspace.path("kubeconfig"),
        format!("apiVersion: v1\nkind: Config\nclusters:\n- name: gone\n  cluster:\n    server: http://{address}\ncontexts:\n- name: stand-in\n  context: {{cluster: gone, user: nobody}}\nusers:\n- name: nobody\n  user: {{}}\ncurrent-context: stand-in\n"),
    )
    .expect("kubeconfig");
    app(&workspace.repo, "web:1");
    workspace.repo.commit("initial");
    let output = workspace.run(&["run", "--once"]);
    assert_exit(&output, 1);
    let errors = stderr(&output);
    assert!(!errors.contains("panicked"), "{errors}");
    assert!(errors.contains("cannot reach the API server"), "{errors}");
    let diff = workspace.run(&["diff", "--env", "staging"]);
    assert_exit(&diff, 2);
}

#[test]
fn an_invalid_object_is_reported_by_name_and_the_half_applied_stage_too() {
    let (workspace, server) = on_stand_in("");
    app(&workspace.repo, "web:1");
    workspace.repo.write(
        "environments/staging/broken.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: broken\nspec:\n  replicas: -1\n  selector:\n    matchLabels: {app: broken}\n  template:\n    metadata:\n      labels: {app: broken}\n    spec:\n      containers: [{name: c, image: x}]\n",
    );
    workspace.repo.commit("invalid replicas");
    let output = workspace.run(&["run", "--once"]);
    assert_exit(&output, 1);
    let errors = stderr(&output);
    assert!(
        errors.contains("apply Deployment.apps shop/broken: invalid (422"),
        "{errors}"
    );
    assert!(
        errors.contains("writes done, then"),
        "the half-applied stage is reported: {errors}"
    );
    assert!(
        server
            .get("apps", "deployments", Some("shop"), "broken")
            .is_none()
    );
}

#[test]
fn a_namespace_with_only_controller_made_objects_is_pruned() {
    let (workspace, server) = on_stand_in("");
    workspace.allow_empty_staging();
    deploy_app(&workspace);
    // A pod of our Deployment, as its ReplicaSet would make it.
    server.put(
        "",
        "pods",
        Some("shop"),
        serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-abc", "namespace": "shop",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5f7", "uid": "u1", "controller": true}]}}),
        "kube-controller-manager",
    );
    remove_app(&workspace);
    let output = workspace.run(&["run", "--once"]);
    assert_exit(&output, 0);
    assert!(
        server.get("", "namespaces", None, "shop").is_none(),
        "{}",
        stderr(&output)
    );
}

#[test]
fn server_errors_that_outlast_the_retries_block_the_revision_without_holding_it() {
    let (workspace, server) = on_stand_in("");
    with_two_steps(&workspace, "100ms");
    deploy_app(&workspace);
    app(&workspace.repo, "web:2");
    workspace.repo.commit("web 2");
    // Every attempt at the canary fails: the request's own retries are used up.
    server.fail(Method::PATCH, "/deployments/web-canary", 503, 4);
    let output = workspace.run(&["run", "--once"]);
    assert_exit(&output, 1);
    assert!(
        stderr(&output).contains("blocked by the cluster, not failed"),
        "{}",
        stderr(&output)
    );
    let events: Vec<String> = workspace
        .journal("staging")
        .iter()
        .map(|record| record.event.name().to_string())
        .collect();
    assert!(events.contains(&"blocked".to_string()), "{events:?}");
    assert!(
        !events.contains(&"rollout_failed".to_string()),
        "a 503 does not blame the revision: {events:?}"
    );
    let status = stdout(&workspace.run(&["status"]));
    assert!(status.contains("blocked: step 1 (50%)"), "{status}");
    assert!(!status.contains("last failed revision"), "{status}");
    let web = server
        .get("apps", "deployments", Some("shop"), "web")
        .expect("web");
    assert_eq!(
        web["spec"]["template"]["spec"]["containers"][0]["image"], "web:1",
        "the partial step is undone"
    );

    // The cluster answers again: the same tip rolls out, without a new commit.
    let output = workspace.run(&["run", "--once"]);
    assert_exit(&output, 0);
    let web = server
        .get("apps", "deployments", Some("shop"), "web")
        .expect("web");
    assert_eq!(
        web["spec"]["template"]["spec"]["containers"][0]["image"],
        "web:2"
    );
    let status = stdout(&workspace.run(&["status"]));
    assert!(!status.contains("blocked"), "{status}");
}

/// Writes `count` ConfigMaps into staging, a hundred per file.
fn many_config_maps(workspace: &Workspace, count: usize) {
    for part in 0..count.div_ceil(100) {
        let text: String = (part * 100..((part + 1) * 100).min(count))
            .map(|index| {
                format!(
                    "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: config-{index:04}\n"
                )
            })
            .collect();
        workspace
            .repo
            .write(&format!("environments/staging/many-{part}.yaml"), &text);
    }
}

#[test]
fn writes_back_off_when_the_server_throttles_and_all_land() {
    // Three seats, like a priority level that is almost full: at a fixed 32 requests in
    // flight, most writes would be refused until their retries ran out.
    let (workspace, server) = on_stand_in("");
    server.limit_seats(3);
    server.set_latency(std::time::Duration::from_millis(5));
    many_config_maps(&workspace, 300);
    workspace.repo.commit("three hundred config maps");
    let output = workspace.run(&["run", "--once"]);
    assert_exit(&output, 0);
    assert!(server.throttled() > 0, "the server did throttle");
    assert_eq!(
        server.names("", "configmaps").len(),
        301,
        "every ConfigMap and the applyset parent"
    );
}

#[test]
fn writes_go_out_more_at_once_while_the_server_keeps_up() {
    let (workspace, server) = on_stand_in("");
    server.set_latency(std::time::Duration::from_millis(20));
    many_config_maps(&workspace, 400);
    workspace.repo.commit("four hundred config maps");
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    assert_eq!(server.throttled(), 0);
    // Eight at first (gitopsd's starting limit), raised as each round finished faster.
    assert!(
        server.peak_in_flight() > 8,
        "peak in flight {}",
        server.peak_in_flight()
    );
    assert!(server.peak_in_flight() <= 33, "the ceiling (32) holds");
}

#[test]
fn the_daemon_writes_nothing_while_its_watch_cache_is_syncing() {
    let (workspace, server) = on_stand_in("");
    deploy_app(&workspace);
    // A pass over this revision would prune everything the environment owns.
    remove_app(&workspace);
    // The daemon's watch of Deployments never gets its list (every attempt is refused): its
    // store never holds the whole set.
    server.fail(Method::GET, "/apis/apps/v1/deployments", 503, usize::MAX);
    server.reset_counts();
    let _daemon = workspace.spawn(&["run"]);
    let blocked = || {
        workspace
            .journal("staging")
            .into_iter()
            .find_map(|record| match record.event {
                gitopsd::journal::Event::Blocked { reason, .. } => Some(reason),
                _ => None,
            })
    };
    assert!(
        wait_for(std::time::Duration::from_secs(60), || blocked().is_some()),
        "the pass was never blocked: {:?}",
        workspace.journal("staging")
    );
    let reason = blocked().unwrap_or_default();
    assert!(
        reason.contains("cache syncing (apps/v1/Deployment)"),
        "{reason}"
    );
    assert_eq!(server.count_method("PATCH"), 0, "nothing is applied");
    assert_eq!(server.count_method("DELETE"), 0, "nothing is pruned");
    assert!(
        server
            .get("apps", "deployments", Some("shop"), "web")
            .is_some(),
        "the Deployment is still there"
    );
    assert!(
        server.count("LIST deployments") > 0,
        "the cache keeps trying to list"
    );
}

#[test]
fn a_watch_told_410_gone_lists_again_and_passes_carry_on_from_the_new_list() {
    let (workspace, server) = on_stand_in("");
    deploy_app(&workspace);
    // The first watch of Deployments after the daemon's first list is told its version is
    // too old, as an API server says once etcd has compacted past it.
    server.fail_watches("/apis/apps/v1/deployments", 410, 1);
    server.reset_counts();
    workspace.edit_config("poll_interval = \"30s\"", "poll_interval = \"1s\"");
    let (_daemon, address) = daemon_with_api(&workspace, "stand-in-token");
    let restarts = || {
        metric_sum(
            &address,
            "gitopsd_watch_restarts_total",
            "type=\"apps/v1/Deployment\"",
        )
        .unwrap_or(0)
    };
    assert!(
        wait_for(std::time::Duration::from_secs(60), || restarts() >= 1),
        "the watch never started over"
    );
    assert!(
        server.count("LIST deployments") >= 2,
        "a fresh list after the 410: {} lists",
        server.count("LIST deployments")
    );
    assert!(
        wait_for_pass_after_now(&address, "staging"),
        "passes carry on"
    );
    assert_eq!(restarts(), 1, "one 410, one relist");
    assert!(
        !workspace
            .journal("staging")
            .iter()
            .any(|record| record.event.name() == "blocked"),
        "the pass after the relist decided from a synced store: {:?}",
        workspace.journal("staging")
    );
    assert_eq!(
        server.count_method("PATCH") + server.count_method("DELETE"),
        0,
        "nothing changed in git: nothing written"
    );
    assert!(
        server.count("WATCH deployments") >= 2,
        "watching again after the relist"
    );
}

#[test]
fn environments_on_one_cluster_share_one_window_of_requests() {
    // Two environments writing 200 objects each at once, each allowed 4 requests in flight:
    // one window for the cluster keeps the server at 4, not 4 per environment.
    let (workspace, server) = on_stand_in(", concurrency = 4");
    workspace.edit_config(
        "target = { type = \"directory\", path = \"live/production\" }",
        "target = { type = \"kubernetes\", kubeconfig = \"kubeconfig\", context = \"stand-in\", concurrency = 4 }",
    );
    server.set_latency(std::time::Duration::from_millis(20));
    for environment in ["staging", "production"] {
        let text: String = (0..200)
            .map(|index| {
                format!(
                    "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {environment}-{index:03}\n"
                )
            })
            .collect();
        workspace
            .repo
            .write(&format!("environments/{environment}/many.yaml"), &text);
    }
    workspace.repo.remove("environments/production/one.yaml");
    workspace
        .repo
        .commit("two hundred config maps in each environment");
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    assert_eq!(
        server.names("", "configmaps").len(),
        402,
        "every ConfigMap and both applyset parents"
    );
    assert!(
        server.peak_in_flight() <= 4,
        "one window of 4 for the cluster, discovery included: peak {}",
        server.peak_in_flight()
    );
}

#[test]
fn a_blocked_environment_tries_again_on_its_own_timer_not_at_the_next_fetch() {
    let (workspace, server) = on_stand_in("");
    deploy_app(&workspace);
    let app_file = workspace.repo.dir.join("environments/staging/app.yaml");
    let text = std::fs::read_to_string(&app_file).expect("app");
    workspace.repo.write(
        "environments/staging/app.yaml",
        &text.replace("MODE: staging", "MODE: retried"),
    );
    workspace.repo.commit("a new mode");
    // One fetch in the whole test: only the environment's own retries can apply the commit.
    workspace.edit_config("poll_interval = \"30s\"", "poll_interval = \"10m\"");
    // The daemon's first lists of Deployments are refused. The watch lists again with backoff
    // (0.5 s doubling, so about 30 s in all): longer than a pass waits for a store to sync.
    server.fail(Method::GET, "/apis/apps/v1/deployments", 503, 6);
    let (_daemon, address) = daemon_with_api(&workspace, "stand-in-token");
    let mode = || {
        server
            .get("", "configmaps", Some("shop"), "settings")
            .map(|settings| settings["data"]["MODE"].clone())
    };
    assert!(
        wait_for(std::time::Duration::from_secs(120), || mode()
            == Some(serde_json::json!("retried"))),
        "the blocked environment never tried again: {:?}",
        workspace.journal("staging")
    );
    assert!(
        workspace
            .journal("staging")
            .iter()
            .any(|record| record.event.name() == "blocked"),
        "the first pass was blocked: {:?}",
        workspace.journal("staging")
    );
    assert_eq!(fetches(&address), Some(1), "applied without another fetch");
}

#[test]
fn the_daemon_does_not_read_back_what_was_ready_as_written() {
    // A first apply: the stores of its types are watched only from its settle, so the
    // objects' readiness cannot come from them. A ConfigMap is ready once present, and the
    // answer to its write says so: no GET per object.
    let (workspace, server) = on_stand_in("");
    many_config_maps(&workspace, 30);
    workspace.repo.commit("thirty config maps");
    let (_daemon, _address) = daemon_with_api(&workspace, "stand-in-token");
    let healthy = || {
        workspace
            .journal("staging")
            .iter()
            .any(|record| record.event.name() == "healthy")
    };
    assert!(
        wait_for(std::time::Duration::from_secs(60), healthy),
        "never healthy: {:?}",
        workspace.journal("staging")
    );
    assert_eq!(
        server.names("", "configmaps").len(),
        31,
        "thirty ConfigMaps and the applyset parent"
    );
    assert!(
        server.count("GET configmaps") <= 2,
        "the ConfigMaps were read back one by one: {} GETs",
        server.count("GET configmaps")
    );
}

#[test]
fn environments_on_one_cluster_look_each_type_up_once_between_them() {
    // The same types in one environment and in two, on one cluster: discovery is asked as
    // often for two as for one.
    let discovery_for = |environments: &[&str]| {
        let (workspace, server) = on_stand_in("");
        if environments.len() == 2 {
            workspace.edit_config(
                "target = { type = \"directory\", path = \"live/production\" }",
                "target = { type = \"kubernetes\", kubeconfig = \"kubeconfig\", context = \"stand-in\" }",
            );
        }
        workspace.repo.remove("environments/production/one.yaml");
        for environment in ["staging", "production"] {
            workspace.repo.write(
                &format!("environments/{environment}/app.yaml"),
                &format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {environment}-settings\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {environment}-web\nspec:\n  ports: [{{port: 80}}]\n"),
            );
        }
        workspace
            .repo
            .commit("one ConfigMap and one Service in each");
        assert_exit(&workspace.run(&["run", "--once"]), 0);
        for environment in environments {
            assert!(
                server
                    .get(
                        "",
                        "configmaps",
                        Some("shop"),
                        &format!("{environment}-settings")
                    )
                    .is_some(),
                "{environment} was applied"
            );
        }
        let asked = server.count_method("DISCOVERY");
        assert!(asked > 0, "the stand-in counts discovery");
        asked
    };
    let one = discovery_for(&["staging"]);
    let two = discovery_for(&["staging", "production"]);
    assert_eq!(two, one, "two environments asked {two} times, one {one}");
}
