//! Real-cluster suite, hooks in the revision: Jobs annotated `gitopsd.io/hook` run in weight
//! order before anything else of their revision is written, a failing pre-rollout Job holds
//! its revision with nothing applied, a failing post-promotion Job reverts, a revert does not
//! run the healthy revision's migration again (only a hook marked `hook-on-revert`), hook Jobs
//! are neither applyset members nor pruned nor made again on later passes, and a SIGKILL while
//! a hook Job runs leaves exactly one run of it. Run like tests/it/e2e.rs.

use std::time::Duration;

use gitopsd::journal::Event;
use serde_json::Value;

use crate::e2e::{Cluster, events, rollout, skipped_without_controllers, workspace_on};
use crate::helpers::*;

/// What these tests need beyond the API server (see [`skipped_without_controllers`]).
const JOBS_AND_PODS: &str =
    "Jobs that run and Deployments whose pods turn ready (controller manager and kubelet)";

/// Namespace, ConfigMap `web-config` holding `version`, Deployment `web` (its pod template
/// carrying the version) and Service.
fn app(namespace: &str, version: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web-config\ndata:\n  VERSION: \"{version}\"\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 1\n  selector:\n    matchLabels: {{app: web}}\n  template:\n    metadata:\n      labels: {{app: web}}\n      annotations: {{release: \"{version}\"}}\n    spec:\n      containers:\n        - name: web\n          image: registry.k8s.io/pause:3.9\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector: {{app: web}}\n  ports: [{{port: 80}}]\n"
    )
}

/// A hook Job `name`; `annotations` are the Job's (the hook's), `pod` its pod template's
/// (the lab kubelet's `lab/complete-after` and `lab/unhealthy`).
fn job(name: &str, annotations: &str, pod: &str) -> String {
    format!(
        "---\napiVersion: batch/v1\nkind: Job\nmetadata:\n  name: {name}\n  annotations: {{{annotations}}}\nspec:\n  backoffLimit: 0\n  template:\n    metadata:\n      annotations: {{{pod}}}\n    spec:\n      restartPolicy: Never\n      containers: [{{name: run, image: registry.k8s.io/pause:3.9}}]\n"
    )
}

fn commit(workspace: &Workspace, text: &str, message: &str) -> String {
    workspace.repo.write("environments/staging/app.yaml", text);
    workspace.repo.commit(message)
}

/// The journal from `from` on, hook records with when and hook, others by name.
fn journal_since(workspace: &Workspace, from: usize) -> Vec<String> {
    workspace.journal("staging")[from..]
        .iter()
        .filter(|record| record.event.name() != "inventory")
        .map(|record| match &record.event {
            Event::HookStarted { when, hook, .. }
            | Event::HookSucceeded { when, hook, .. }
            | Event::HookFailed { when, hook, .. } => {
                format!("{} {when} {hook}", record.event.name())
            }
            other => other.name().to_string(),
        })
        .collect()
}

fn version(cluster: &Cluster, namespace: &str) -> String {
    cluster
        .get(Some(namespace), "configmap/web-config")
        .expect("web-config")["data"]["VERSION"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn time(object: &Value, pointer: &str) -> String {
    object
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{pointer} in {object}"))
        .to_string()
}

/// A workspace on `namespace` with its first revision (no hooks) rolled out.
fn deployed(cluster: &mut Cluster, tag: &str) -> (Workspace, String, String) {
    let namespace = cluster.namespace(tag);
    let workspace = workspace_on(
        cluster,
        &namespace,
        &rollout("[100]").replace("timeout = \"3m\"", "timeout = \"90s\""),
    );
    let first = commit(&workspace, &app(&namespace, "1"), "v1");
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    (workspace, namespace, first)
}

#[test]
#[ignore = "needs a real cluster: set GITOPSD_E2E_KUBECONFIG"]
fn e2e_pre_rollout_jobs_run_in_weight_order_before_any_other_object_changes() {
    if skipped_without_controllers(JOBS_AND_PODS) {
        return;
    }
    let mut cluster = Cluster::new();
    let (workspace, namespace, _) = deployed(&mut cluster, "hook-order");
    // The lighter hook sorts last by name: weight decides.
    let hooks = format!(
        "{}{}",
        job(
            "z-first",
            "gitopsd.io/hook: pre-rollout, gitopsd.io/hook-weight: \"1\"",
            "lab/complete-after: \"2\""
        ),
        job(
            "a-second",
            "gitopsd.io/hook: pre-rollout, gitopsd.io/hook-weight: \"10\"",
            "lab/complete-after: \"2\""
        ),
    );
    let second = commit(
        &workspace,
        &(app(&namespace, "2") + &hooks),
        "v2 with hooks",
    );
    let diff = stdout(&workspace.run(&["diff", "--env", "staging"]));
    let short = &second[..8];
    assert!(
        diff.contains(&format!(
            "pre-rollout: Job.batch {namespace}/z-first-{short} will run\npre-rollout: Job.batch {namespace}/a-second-{short} will run"
        )),
        "{diff}"
    );
    let before = workspace.journal("staging").len();
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    assert_eq!(
        journal_since(&workspace, before),
        [
            format!("hook_started pre-rollout Job.batch {namespace}/z-first"),
            format!("hook_succeeded pre-rollout Job.batch {namespace}/z-first"),
            format!("hook_started pre-rollout Job.batch {namespace}/a-second"),
            format!("hook_succeeded pre-rollout Job.batch {namespace}/a-second"),
            "rollout_started".into(),
            "step_started".into(),
            "promoted".into(),
            "healthy".into(),
        ]
    );
    let first_job = cluster
        .get(Some(&namespace), &format!("job/z-first-{short}"))
        .expect("the first hook's Job is kept (before-creation)");
    let second_job = cluster
        .get(Some(&namespace), &format!("job/a-second-{short}"))
        .expect("the second hook's Job");
    // Seen on the cluster: the second Job was made after the first completed, and the
    // revision's other objects were written after the second completed.
    assert!(
        time(&first_job, "/status/completionTime")
            <= time(&second_job, "/metadata/creationTimestamp")
    );
    let config: Value = serde_json::from_str(&cluster.kubectl(&[
        "get",
        "configmap/web-config",
        "-n",
        &namespace,
        "-o",
        "json",
        "--show-managed-fields",
    ]))
    .expect("kubectl JSON");
    assert_eq!(config["data"]["VERSION"], "2");
    let applied = config["metadata"]["managedFields"]
        .as_array()
        .expect("managed fields")
        .iter()
        .filter(|entry| entry["operation"] == "Apply")
        .map(|entry| time(entry, "/time"))
        .max()
        .expect("gitopsd's apply");
    assert!(
        applied >= time(&second_job, "/status/completionTime"),
        "web-config written at {applied}, before the last hook completed"
    );
    // Hook Jobs are marked as the environment's hooks, and are not members of its applyset.
    let labels = &first_job["metadata"]["labels"];
    assert_eq!(labels["gitopsd.io/hook"], "z-first");
    assert_eq!(labels["gitopsd.io/environment"], "staging");
    assert_eq!(labels["app.kubernetes.io/managed-by"], "gitopsd");
    assert!(
        labels.get("applyset.kubernetes.io/part-of").is_none(),
        "{labels}"
    );
    let uid = cluster.uid(Some(&namespace), &format!("job/z-first-{short}"));

    // Another pass: nothing is pruned, made again, or run again.
    let before = workspace.journal("staging").len();
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    assert_eq!(journal_since(&workspace, before), Vec::<String>::new());
    assert_eq!(
        cluster.uid(Some(&namespace), &format!("job/z-first-{short}")),
        uid
    );

    // The next revision's runs replace this one's (before-creation).
    let third = commit(
        &workspace,
        &(app(&namespace, "3") + &hooks),
        "v3 with hooks",
    );
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    assert!(
        cluster
            .get(Some(&namespace), &format!("job/z-first-{short}"))
            .is_none()
    );
    assert!(
        cluster
            .get(Some(&namespace), &format!("job/z-first-{}", &third[..8]))
            .is_some()
    );
}

#[test]
#[ignore = "needs a real cluster: set GITOPSD_E2E_KUBECONFIG"]
fn e2e_a_failing_pre_rollout_job_holds_its_revision_with_nothing_else_applied() {
    if skipped_without_controllers(JOBS_AND_PODS) {
        return;
    }
    let mut cluster = Cluster::new();
    let (workspace, namespace, first) = deployed(&mut cluster, "hook-hold");
    let web = cluster.uid(Some(&namespace), "deployment/web");
    let generation = cluster
        .get(Some(&namespace), "deployment/web")
        .expect("web")["metadata"]["generation"]
        .clone();
    let text = app(&namespace, "2")
        + &job(
            "migrate",
            "gitopsd.io/hook: pre-rollout",
            "lab/unhealthy: fail",
        )
        + "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: added\n";
    let held = commit(&workspace, &text, "v2 with a failing migration");
    let before = workspace.journal("staging").len();
    let output = workspace.run(&["run", "--once"]);
    assert_exit(&output, 1);
    assert_eq!(
        journal_since(&workspace, before),
        [
            format!("hook_started pre-rollout Job.batch {namespace}/migrate"),
            format!("hook_failed pre-rollout Job.batch {namespace}/migrate"),
            "rollout_failed".into(),
        ]
    );
    let records = workspace.journal("staging");
    let Some(Event::HookFailed { message, .. }) = events(&records, "hook_failed").pop() else {
        panic!("no hook_failed");
    };
    assert!(message.contains("Job failed"), "{message}");
    // Nothing else of the revision reached the cluster.
    assert_eq!(version(&cluster, &namespace), "1");
    assert!(cluster.get(Some(&namespace), "configmap/added").is_none());
    let live = cluster
        .get(Some(&namespace), "deployment/web")
        .expect("web");
    assert_eq!(live["metadata"]["uid"], web.as_str());
    assert_eq!(live["metadata"]["generation"], generation);
    let status = stdout(&workspace.run(&["status", "--env", "staging"]));
    assert!(
        status.contains(&format!("last failed revision:   {} (held;", &held[..12])),
        "{status}"
    );
    assert!(
        status.contains(&format!("last healthy revision:  {}", &first[..12])),
        "{status}"
    );
    // Held: the next pass runs nothing again.
    let before = workspace.journal("staging").len();
    workspace.run(&["run", "--once"]);
    assert_eq!(journal_since(&workspace, before), Vec::<String>::new());
}

#[test]
#[ignore = "needs a real cluster: set GITOPSD_E2E_KUBECONFIG"]
fn e2e_a_failing_post_promotion_job_reverts_and_the_revert_runs_only_hooks_marked_for_it() {
    if skipped_without_controllers(JOBS_AND_PODS) {
        return;
    }
    let mut cluster = Cluster::new();
    let (workspace, namespace, _) = deployed(&mut cluster, "hook-revert");
    // A healthy revision with a migration and a cache flush that should run on a revert.
    let healthy_hooks = job("migrate", "gitopsd.io/hook: pre-rollout", "")
        + &job(
            "flush",
            "gitopsd.io/hook: pre-rollout, gitopsd.io/hook-on-revert: \"true\"",
            "",
        );
    let healthy = commit(
        &workspace,
        &(app(&namespace, "2") + &healthy_hooks),
        "v2 with a migration",
    );
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    let short = &healthy[..8];
    let migration = cluster.uid(Some(&namespace), &format!("job/migrate-{short}"));
    let flush = cluster.uid(Some(&namespace), &format!("job/flush-{short}"));

    // The next revision's smoke test fails after its promotion.
    let text = app(&namespace, "3")
        + &job(
            "smoke",
            "gitopsd.io/hook: post-promotion",
            "lab/unhealthy: fail",
        )
        + &job("cleanup", "gitopsd.io/hook: on-failure", "");
    let bad = commit(&workspace, &text, "v3 with a failing smoke test");
    let before = workspace.journal("staging").len();
    assert_exit(&workspace.run(&["run", "--once"]), 1);
    assert_eq!(
        journal_since(&workspace, before),
        [
            "rollout_started".to_string(),
            "step_started".into(),
            "promoted".into(),
            format!("hook_started post-promotion Job.batch {namespace}/smoke"),
            format!("hook_failed post-promotion Job.batch {namespace}/smoke"),
            "rollout_failed".into(),
            "revert_started".into(),
            format!("hook_started pre-rollout Job.batch {namespace}/flush"),
            format!("hook_succeeded pre-rollout Job.batch {namespace}/flush"),
            format!("hook_started on-failure Job.batch {namespace}/cleanup"),
            format!("hook_succeeded on-failure Job.batch {namespace}/cleanup"),
            "reverted".into(),
        ]
    );
    assert_eq!(version(&cluster, &namespace), "2", "reverted");
    let records = workspace.journal("staging");
    let Some(Event::RolloutFailed { cause, reason, .. }) = events(&records, "rollout_failed").pop()
    else {
        panic!("no rollout_failed");
    };
    assert_eq!(cause.as_deref(), Some("HookFailed"));
    assert!(
        reason.starts_with(&format!(
            "post-promotion hook Job.batch {namespace}/smoke failed: "
        )),
        "{reason}"
    );
    // The healthy revision's migration did not run again; its flush did, as a new run.
    assert_eq!(
        cluster.uid(Some(&namespace), &format!("job/migrate-{short}")),
        migration
    );
    assert_ne!(
        cluster.uid(Some(&namespace), &format!("job/flush-{short}")),
        flush
    );
    let flushed: Vec<&Event> = events(&records, "hook_started")
        .into_iter()
        .filter(|event| event.revision().0 == healthy)
        .collect();
    assert_eq!(
        flushed.len(),
        3,
        "migrate and flush once, flush again on the revert"
    );
    assert!(
        cluster
            .get(Some(&namespace), &format!("job/cleanup-{}", &bad[..8]))
            .is_some()
    );
}

#[test]
#[ignore = "needs a real cluster: set GITOPSD_E2E_KUBECONFIG"]
fn e2e_sigkill_while_a_hook_job_runs_then_a_restart_leaves_exactly_one_run() {
    if skipped_without_controllers(JOBS_AND_PODS) {
        return;
    }
    let mut cluster = Cluster::new();
    let (workspace, namespace, _) = deployed(&mut cluster, "hook-kill");
    let text = app(&namespace, "2")
        + &job(
            "migrate",
            "gitopsd.io/hook: pre-rollout",
            "lab/complete-after: \"12\"",
        );
    let second = commit(&workspace, &text, "v2 with a slow migration");
    let name = format!("job/migrate-{}", &second[..8]);
    let mut child = workspace.spawn(&["run", "--once"]);
    assert!(
        wait_for(Duration::from_secs(60), || cluster
            .get(Some(&namespace), &name)
            .is_some()),
        "the hook Job was created"
    );
    child.signal(libc::SIGKILL);
    child
        .wait_timeout(Duration::from_secs(10))
        .expect("gitopsd died");
    let uid = cluster.uid(Some(&namespace), &name);
    let records = workspace.journal("staging");
    assert_eq!(records.last().map(|r| r.event.name()), Some("hook_started"));
    assert!(
        cluster.get(Some(&namespace), &name).expect("job")["status"]["completionTime"].is_null(),
        "killed while the Job ran"
    );

    assert_exit(&workspace.run(&["run", "--once"]), 0);
    assert_eq!(cluster.uid(Some(&namespace), &name), uid, "the same Job");
    let job = cluster.get(Some(&namespace), &name).expect("job");
    assert_eq!(job["status"]["succeeded"], 1);
    let pods = cluster.kubectl(&[
        "get",
        "pods",
        "-n",
        &namespace,
        "-l",
        &format!("job-name=migrate-{}", &second[..8]),
        "-o",
        "name",
    ]);
    assert_eq!(pods.lines().count(), 1, "one pod ran: {pods}");
    let records = workspace.journal("staging");
    assert_eq!(events(&records, "hook_started").len(), 1);
    assert_eq!(events(&records, "hook_succeeded").len(), 1);
    assert_eq!(version(&cluster, &namespace), "2");
}
