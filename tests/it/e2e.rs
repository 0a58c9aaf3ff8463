//! Real-cluster suite, ignored by default. Run it against a disposable control plane:
//!
//! ```sh
//! eval "$(../shared/k8s-lab/up.sh)"
//! GITOPSD_E2E_KUBECONFIG=$KUBECONFIG cargo test --test it -- --ignored e2e
//! ```
//!
//! It needs an API server with the controller manager and something that makes pods Ready
//! (k8s-lab's stand-in kubelet). On an API server alone (`GITOPSD_E2E_CONTROL_PLANE=api-only`:
//! tests/run.sh's envtest control plane from KUBEBUILDER_ASSETS) the tests that need those
//! skip, see [`skipped_without_controllers`]. `kubectl` plays the operator; it is `GITOPSD_TEST_KUBECTL`,
//! else `kubectl` on the PATH. Every test works in namespaces of its own
//! (`gitopsd-e2e-<pid>-<tag>`) and deletes them, any cluster-scoped object it made and any
//! object it left in a shared namespace (an applyset parent in `default`), when it ends, passed
//! or failed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use gitopsd::journal::Event;
use serde_json::Value;

use crate::helpers::*;
use crate::scale::scale_manifests;

/// Held shared by every test, and exclusively by the ones that count the API server's
/// requests, so no other test's traffic lands in their counts.
pub(crate) static QUIET: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Whether the control plane under test is an API server and etcd with nothing else:
/// `GITOPSD_E2E_CONTROL_PLANE=api-only`, which tests/run.sh sets on the envtest control plane
/// it starts from KUBEBUILDER_ASSETS (tests/envtest.sh). Unset or `full`: an API server with
/// the controller manager and a kubelet, as k8s-lab runs.
fn api_only() -> bool {
    match std::env::var("GITOPSD_E2E_CONTROL_PLANE").as_deref() {
        Err(std::env::VarError::NotPresent) | Ok("full") => false,
        Ok("api-only") => true,
        other => panic!("GITOPSD_E2E_CONTROL_PLANE is {other:?}: expected full or api-only"),
    }
}

/// What most tests need beyond the API server: a pass waits until the Deployments it applied
/// are ready, which takes the Deployment and ReplicaSet controllers and a kubelet.
pub(crate) const READY_PODS: &str =
    "Deployments whose pods turn ready (controller manager and kubelet)";

/// Called first by a test that needs what only the controller manager or a kubelet does
/// (`needs` says what). On an API-server-only control plane it says the test is skipped,
/// appends the test's name and `needs` to the file `GITOPSD_E2E_SKIPPED` names (tests/run.sh
/// lists and counts them) and returns true, and the test returns at once. Elsewhere it
/// returns false and the test runs.
pub(crate) fn skipped_without_controllers(needs: &str) -> bool {
    if !api_only() {
        return false;
    }
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("an e2e test");
    println!("skipped: {test} needs {needs}, and the control plane has no controllers");
    if let Some(path) = std::env::var_os("GITOPSD_E2E_SKIPPED") {
        use std::io::Write as _;
        // One short write to a file opened for appending: lines of parallel tests never mix.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut file| file.write_all(format!("{test}: needs {needs}\n").as_bytes()))
            .unwrap_or_else(|e| panic!("cannot append to {}: {e}", path.to_string_lossy()));
    }
    true
}

/// The cluster under test, driven by `kubectl` as an operator would.
pub(crate) struct Cluster {
    _turn: Turn,
    pub(crate) kubeconfig: PathBuf,
    pub(crate) kubectl: PathBuf,
    /// Deleted when the test ends: objects in namespaces the test does not own (namespace,
    /// `kind/name`), namespaces, then cluster-scoped objects (`kind/name`).
    outside_objects: Vec<(String, String)>,
    namespaces: Vec<String>,
    cluster_objects: Vec<String>,
}

/// A test's hold on [`QUIET`].
#[allow(dead_code, reason = "held only for its drop")]
enum Turn {
    Shared(std::sync::RwLockReadGuard<'static, ()>),
    Alone(std::sync::RwLockWriteGuard<'static, ()>),
}

impl Cluster {
    pub(crate) fn new() -> Self {
        let turn = Turn::Shared(QUIET.read().unwrap_or_else(|p| p.into_inner()));
        Self::with_turn(turn)
    }

    /// For tests that count requests: waits for every other test to end and for namespaces
    /// they deleted to go (the namespace controller lists what they held). With no
    /// controllers, deleted namespaces stay Terminating and nothing lists what they held.
    pub(crate) fn alone() -> Self {
        let cluster = Self::with_turn(Turn::Alone(
            QUIET.write().unwrap_or_else(|p| p.into_inner()),
        ));
        if api_only() {
            return cluster;
        }
        let settled = wait_for(Duration::from_secs(180), || {
            !cluster
                .kubectl(&[
                    "get",
                    "namespaces",
                    "-o",
                    "jsonpath={.items[*].status.phase}",
                ])
                .contains("Terminating")
        });
        assert!(settled, "namespaces of earlier tests are still terminating");
        cluster
    }

    fn with_turn(turn: Turn) -> Self {
        let Some(path) = std::env::var_os("GITOPSD_E2E_KUBECONFIG") else {
            panic!("set GITOPSD_E2E_KUBECONFIG to the kubeconfig of a disposable cluster");
        };
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "GITOPSD_E2E_KUBECONFIG names {}, which is not a file",
            path.display()
        );
        let kubectl = std::env::var_os("GITOPSD_TEST_KUBECTL")
            .map_or_else(|| PathBuf::from("kubectl"), PathBuf::from);
        Self {
            _turn: turn,
            kubeconfig: std::path::absolute(&path).expect("absolute path"),
            kubectl,
            outside_objects: Vec::new(),
            namespaces: Vec::new(),
            cluster_objects: Vec::new(),
        }
    }

    /// A namespace name of this test's own, deleted at the end.
    pub(crate) fn namespace(&mut self, tag: &str) -> String {
        let name = format!("gitopsd-e2e-{}-{tag}", std::process::id());
        self.namespaces.push(name.clone());
        name
    }

    /// `what` (`kind/name`) in `namespace`, a namespace the test shares (`default`), is
    /// deleted at the end.
    pub(crate) fn delete_at_end(&mut self, namespace: &str, what: &str) {
        self.outside_objects
            .push((namespace.to_string(), what.to_string()));
    }

    pub(crate) fn kubectl_output(&self, args: &[&str]) -> Output {
        Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.kubectl.display()))
    }

    /// Sets `label` on every object of `names` (`pod/…`) in `namespace` with one kubectl: a
    /// crash loop on the first can fail a step, and its revert delete the others, before a
    /// second kubectl would run.
    pub(crate) fn label_all(&self, namespace: &str, names: &[String], label: &str) {
        let mut args = vec!["label", "-n", namespace];
        args.extend(names.iter().map(String::as_str));
        args.extend([label, "--overwrite"]);
        self.kubectl(&args);
    }

    /// Runs kubectl and returns its stdout; fails the test when it fails.
    pub(crate) fn kubectl(&self, args: &[&str]) -> String {
        let output = self.kubectl_output(args);
        assert!(
            output.status.success(),
            "kubectl {args:?} failed:\n{}",
            stderr(&output)
        );
        stdout(&output)
    }

    /// The object as JSON, or `None` when it does not exist.
    pub(crate) fn get(&self, namespace: Option<&str>, what: &str) -> Option<Value> {
        let mut args = vec!["get", what, "-o", "json", "--ignore-not-found"];
        if let Some(namespace) = namespace {
            args.extend(["-n", namespace]);
        }
        let text = self.kubectl(&args);
        (!text.trim().is_empty()).then(|| serde_json::from_str(&text).expect("kubectl JSON"))
    }

    pub(crate) fn uid(&self, namespace: Option<&str>, what: &str) -> String {
        self.get(namespace, what)
            .unwrap_or_else(|| panic!("{what} exists"))["metadata"]["uid"]
            .as_str()
            .expect("uid")
            .to_string()
    }

    /// `apiserver_request_total` by (verb, resource, scope), read from the API server's
    /// metrics.
    fn request_counts(&self) -> BTreeMap<(String, String, String), u64> {
        let text = self.kubectl(&["get", "--raw", "/metrics"]);
        let mut counts = BTreeMap::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
                continue;
            };
            let Some((labels, value)) = rest.rsplit_once("} ") else {
                continue;
            };
            let label = |name: &str| {
                labels
                    .split(',')
                    .find_map(|pair| pair.strip_prefix(&format!("{name}=\"")))
                    .map(|value| value.trim_end_matches('"').to_string())
                    .unwrap_or_default()
            };
            let count: f64 = value.trim().parse().unwrap_or(0.0);
            *counts
                .entry((label("verb"), label("resource"), label("scope")))
                .or_insert(0) += count as u64;
        }
        counts
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (namespace, object) in &self.outside_objects {
            let _ = self.kubectl_output(&[
                "delete",
                "-n",
                namespace,
                object,
                "--ignore-not-found",
                "--wait=false",
            ]);
        }
        for namespace in &self.namespaces {
            let _ = self.kubectl_output(&[
                "delete",
                "namespace",
                namespace,
                "--ignore-not-found",
                "--wait=false",
            ]);
        }
        for object in &self.cluster_objects {
            let _ = self.kubectl_output(&["delete", object, "--ignore-not-found", "--wait=false"]);
        }
    }
}

/// A workspace whose staging environment targets the cluster with `namespace`, with
/// `staging_extra` appended to the environment (rollout and checks).
pub(crate) fn workspace_on(cluster: &Cluster, namespace: &str, staging_extra: &str) -> Workspace {
    let workspace = Workspace::new();
    workspace.write_config_with(
        &workspace.repo.dir.display().to_string(),
        "30s",
        staging_extra,
    );
    workspace.edit_config(
        "target = { type = \"directory\", path = \"live/staging\" }\nnamespace = \"shop\"",
        &format!(
            "target = {{ type = \"kubernetes\", kubeconfig = \"{}\" }}\nnamespace = \"{namespace}\"",
            cluster.kubeconfig.display()
        ),
    );
    workspace.repo.write(
        "environments/production/one.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: one\n",
    );
    workspace
}

/// A health check that fails while `marker` exists.
pub(crate) fn marker_check(marker: &std::path::Path) -> String {
    format!(
        "[[environment.health]]\nname = \"marker\"\ntype = \"exec\"\ncommand = \"sh -c 'test ! -f {}'\"\ninterval = \"1s\"\nfailures = 2\n",
        marker.display()
    )
}

pub(crate) fn rollout(steps: &str) -> String {
    format!(
        "[environment.rollout]\nsteps = {steps}\nbake = \"3s\"\nverify = \"3s\"\ntimeout = \"3m\"\n"
    )
}

/// Namespace, ConfigMap, Deployment (with `replicas` unless `None`) and Service.
fn app_yaml(namespace: &str, version: &str, replicas: Option<u32>, extra: bool) -> String {
    let replicas = replicas.map_or(String::new(), |n| format!("  replicas: {n}\n"));
    let mut text = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web-config\ndata:\n  VERSION: \"{version}\"\n  MODE: git\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n{replicas}  selector:\n    matchLabels: {{app: web}}\n  template:\n    metadata:\n      labels: {{app: web}}\n      annotations: {{release: \"{version}\"}}\n    spec:\n      containers:\n        - name: web\n          image: registry.k8s.io/pause:3.9\n          envFrom: [{{configMapRef: {{name: web-config}}}}]\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector: {{app: web}}\n  ports: [{{port: 80}}]\n"
    );
    if extra {
        text.push_str("---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: extra\n");
    }
    text
}

/// Commits [`app_yaml`] at `version` to staging and runs a pass that must succeed.
fn deploy(
    workspace: &Workspace,
    namespace: &str,
    version: &str,
    replicas: Option<u32>,
    extra: bool,
) -> String {
    workspace.repo.write(
        "environments/staging/app.yaml",
        &app_yaml(namespace, version, replicas, extra),
    );
    let commit = workspace.repo.commit(&format!("v{version}"));
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    commit
}

pub(crate) fn events<'a>(records: &'a [gitopsd::journal::Record], name: &str) -> Vec<&'a Event> {
    records
        .iter()
        .map(|record| &record.event)
        .filter(|event| event.name() == name)
        .collect()
}

fn replicas(cluster: &Cluster, namespace: &str, name: &str) -> u64 {
    cluster
        .get(Some(namespace), &format!("deployment/{name}"))
        .unwrap_or_else(|| panic!("deployment {name}"))["spec"]["replicas"]
        .as_u64()
        .expect("replicas")
}

#[test]
#[ignore = "needs a real cluster: set GITOPSD_E2E_KUBECONFIG"]
fn e2e_deploy_canary_revert_and_prune_on_a_real_cluster() {
    if skipped_without_controllers(READY_PODS) {
        return;
    }
    let mut cluster = Cluster::new();
    let namespace = cluster.namespace("flow");
    let marker_dir = tempfile::tempdir().expect("tempdir");
    let marker = marker_dir.path().join("unhealthy");
    let workspace = workspace_on(
        &cluster,
        &namespace,
        &format!("{}\n{}", rollout("[50, 100]"), marker_check(&marker)),
    );
    let staging = |version: &str, extra: bool| {
        workspace.repo.write(
            "environments/staging/app.yaml",
            &app_yaml(&namespace, version, Some(2), extra),
        );
    };

    staging("1", true);
    workspace.repo.commit("v1");
    let first = workspace.run(&["run", "--once"]);
    assert!(
        first.status.code() == Some(0),
        "the first deploy failed; is the cluster reachable?\n{}",
        stderr(&first)
    );
    assert_exit(&workspace.run(&["diff", "--env", "staging"]), 0);
    let parent = cluster
        .get(Some(&namespace), "configmap/gitopsd-staging")
        .expect("the applyset parent is in the environment's namespace");
    assert_eq!(
        parent["metadata"]["annotations"]["applyset.kubernetes.io/contains-group-kinds"],
        "ConfigMap,Deployment.apps,Namespace,Service"
    );

    // A template change rolls through a canary.
    staging("2", true);
    let second = workspace.repo.commit("v2");
    let output = workspace.run(&["run", "--once"]);
    assert_exit(&output, 0);
    assert!(
        stderr(&output).contains("canaries=[\"Deployment.apps"),
        "{}",
        stderr(&output)
    );
    assert_exit(&workspace.run(&["diff", "--env", "staging"]), 0);

    // A revision whose check fails is reverted.
    std::fs::write(&marker, "").expect("marker");
    staging("3", true);
    workspace.repo.commit("v3, unhealthy");
    assert_exit(&workspace.run(&["run", "--once"]), 1);
    std::fs::remove_file(&marker).expect("marker");
    let status = stdout(&workspace.run(&["status", "--env", "staging"]));
    assert!(
        status.contains(&format!("last healthy revision:  {}", &second[..12])),
        "{status}"
    );
    assert!(
        cluster
            .get(Some(&namespace), "deployment/web-canary")
            .is_none()
    );

    // An object removed from git is pruned.
    staging("4", false);
    workspace.repo.commit("v4 without extra");
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    assert!(cluster.get(Some(&namespace), "configmap/extra").is_none());
    assert_exit(&workspace.run(&["diff", "--env", "staging"]), 0);
}

#[test]
#[ignore = "needs a real cluster: set GITOPSD_E2E_KUBECONFIG"]
fn e2e_drift_from_kubectl_is_put_back_and_fields_git_omits_are_left_alone() {
    if skipped_without_controllers(READY_PODS) {
        return;
    }
    let mut cluster = Cluster::new();
    let namespace = cluster.namespace("drift");
    let workspace = workspace_on(&cluster, &namespace, &rollout("[100]"));
    deploy(&workspace, &namespace, "1", Some(2), false);

    // An operator edits what git sets, and adds what git does not.
    let ns = namespace.as_str();
    cluster.kubectl(&[
        "-n",
        ns,
        "set",
        "image",
        "deployment/web",
        "web=registry.k8s.io/pause:hotfix",
    ]);
    cluster.kubectl(&[
        "-n",
        ns,
        "patch",
        "configmap",
        "web-config",
        "-p",
        r#"{"data":{"MODE":"manual","EXTRA":"kept"}}"#,
    ]);
    cluster.kubectl(&["-n", ns, "scale", "deployment/web", "--replicas=5"]);

    // diff against live shows the drift before anything is put back.
    let diff = workspace.run(&["diff", "--env", "staging"]);
    assert_exit(&diff, 1);
    assert!(stdout(&diff).contains("pause:hotfix"), "{}", stdout(&diff));
    let text = stdout(&diff);
    let web_line = text
        .lines()
        .find(|line| line.contains(&format!("update Deployment.apps {namespace}/web")))
        .unwrap_or_else(|| panic!("the deployment's drift is shown:\n{text}"));
    assert!(
        web_line.contains("(drift: changed outside git:") && web_line.contains("spec.replicas"),
        "{web_line}"
    );

    assert_exit(&workspace.run(&["run", "--once"]), 0);
    let deployment = cluster.get(Some(ns), "deployment/web").expect("deployment");
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.k8s.io/pause:3.9"
    );
    assert_eq!(deployment["spec"]["replicas"], 2);
    let config = cluster.get(Some(ns), "configmap/web-config").expect("cm");
    assert_eq!(config["data"]["MODE"], "git");
    assert_eq!(
        config["data"]["EXTRA"], "kept",
        "a key git does not set is left alone"
    );

    let records = workspace.journal("staging");
    let drift = events(&records, "drift_corrected");
    assert_eq!(drift.len(), 1, "{records:?}");
    let Event::DriftCorrected { objects, .. } = drift[0] else {
        unreachable!("filtered by name")
    };
    let fields: BTreeMap<&str, &Vec<String>> = objects
        .iter()
        .map(|object| (object.object.as_str(), &object.fields))
        .collect();
    let web = fields
        .get(format!("Deployment.apps {ns}/web").as_str())
        .expect("the deployment drifted");
    assert!(web.contains(&"spec.replicas".to_string()), "{web:?}");
    assert!(
        web.contains(&"spec.template.spec.containers[0].image".to_string()),
        "{web:?}"
    );
    assert_eq!(
        fields.get(format!("ConfigMap {ns}/web-config").as_str()),
        Some(&&vec!["data.MODE".to_string()])
    );

    // Nothing is left to put back: a further pass changes nothing, and diff agrees.
    assert_exit(&workspace.run(&["diff", "--env", "staging"]), 0);
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    let after = workspace.journal("staging");
    assert_eq!(
        events(&after, "reconcile_started").len(),
        events(&records, "reconcile_started").len(),
        "a pass without drift writes nothing"
    );
}

#[test]
#[ignore = "needs a real cluster: set GITOPSD_E2E_KUBECONFIG"]
fn e2e_two_installs_with_one_environment_name_never_prune_each_other() {
    let mut cluster = Cluster::new();
    let first_ns = cluster.namespace("one");
    let second_ns = cluster.namespace("two");
    let install = |namespace: &str| {
        let workspace = workspace_on(&cluster, namespace, &rollout("[100]"));
        workspace.repo.write(
            "environments/staging/app.yaml",
            &format!(
                "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: b\n"
            ),
        );
        workspace.repo.commit("two config maps");
        workspace
    };
    let first = install(&first_ns);
    let second = install(&second_ns);
    for _ in 0..5 {
        assert_exit(&first.run(&["run", "--once"]), 0);
        assert_exit(&second.run(&["run", "--once"]), 0);
    }
    for namespace in [&first_ns, &second_ns] {
        for name in ["a", "b"] {
            assert!(
                cluster
                    .get(Some(namespace), &format!("configmap/{name}"))
                    .is_some(),
                "{namespace}/{name} survived the other install's passes"
            );
        }
    }

    // The second install pointed at the first one's namespace, and so its parent: refused.
    second.edit_config(
        &format!("namespace = \"{second_ns}\""),
        &format!("namespace = \"{first_ns}\""),
    );
    let output = second.run(&["run", "--once"]);
    assert_exit(&output, 1);
    let errors = stderr(&output);
    let first_source = format!("{}#main:environments/staging", first.repo.dir.display());
    assert!(errors.contains(&first_source), "{errors}");
    assert!(errors.contains("adopt = true"), "{errors}");
    assert!(
        cluster
            .get(Some(&first_ns), "configmap/a")
            .is_some_and(|cm| cm["metadata"]["labels"]["gitopsd.io/environment"] == "staging")
    );

    // Back in its own namespace, the second install wants an object the first one owns.
    second.edit_config(
        &format!("namespace = \"{first_ns}\""),
        &format!("namespace = \"{second_ns}\""),
    );
    second.repo.write(
        "environments/staging/theirs.yaml",
        &format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  namespace: {first_ns}\ndata:\n  taken: \"yes\"\n"),
    );
    second.repo.commit("wants the first install's config map");
    let output = second.run(&["run", "--once"]);
    assert_exit(&output, 1);
    let errors = stderr(&output);
    assert!(
        errors.contains(&format!(
            "ConfigMap {first_ns}/a is live and held by applyset"
        )),
        "{errors}"
    );
    assert!(
        errors.contains(&first_source),
        "the owner is named: {errors}"
    );
    let a = cluster.get(Some(&first_ns), "configmap/a").expect("a");
    assert!(a.get("data").is_none(), "nothing was written: {a}");

    // `adopt = true` takes it over; then the first install is the one refused.
    second.edit_config(
        &format!("kubeconfig = \"{}\" }}", cluster.kubeconfig.display()),
        &format!(
            "kubeconfig = \"{}\", adopt = true }}",
            cluster.kubeconfig.display()
        ),
    );
    assert_exit(&second.run(&["run", "--once"]), 0);
    let a = cluster.get(Some(&first_ns), "configmap/a").expect("a");
    assert_eq!(a["data"]["taken"], "yes");
    let second_parent = cluster
        .get(Some(&second_ns), "configmap/gitopsd-staging")
        .expect("second parent");
    assert_eq!(
        a["metadata"]["labels"]["applyset.kubernetes.io/part-of"],
        second_parent["metadata"]["labels"]["applyset.kubernetes.io/id"]
    );
    let output = first.run(&["run", "--once"]);
    assert_exit(&output, 1);
    let second_source = format!("{}#main:environments/staging", second.repo.dir.display());
    assert!(
        stderr(&output).contains(&second_source),
        "{}",
        stderr(&output)
    );
}

#[test]
#[ignore = "needs a real cluster: set GITOPSD_E2E_KUBECONFIG"]
fn e2e_a_wiped_state_dir_deletes_and_recreates_nothing() {
    if skipped_without_controllers(READY_PODS) {
        return;
    }
    let mut cluster = Cluster::new();
    let namespace = cluster.namespace("wiped");
    let ns = namespace.as_str();
    let workspace = workspace_on(&cluster, ns, &rollout("[100]"));
    deploy(&workspace, ns, "1", Some(1), true);
    let objects = [
        "configmap/web-config",
        "configmap/extra",
        "deployment/web",
        "service/web",
    ];
    let uids: Vec<String> = objects
        .iter()
        .map(|what| cluster.uid(Some(ns), what))
        .collect();
    let namespace_uid = cluster.uid(None, &format!("namespace/{ns}"));

    std::fs::remove_dir_all(workspace.path("state")).expect("wipe the state dir");
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    let after: Vec<String> = objects
        .iter()
        .map(|what| cluster.uid(Some(ns), what))
        .collect();
    assert_eq!(uids, after, "nothing was deleted or re-created");
    assert_eq!(namespace_uid, cluster.uid(None, &format!("namespace/{ns}")));

    // The cluster remembers what the environment owns: a removal from git still prunes.
    workspace.repo.write(
        "environments/staging/app.yaml",
        &app_yaml(ns, "1", Some(1), false),
    );
    workspace.repo.commit("without extra");
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    assert!(cluster.get(Some(ns), "configmap/extra").is_none());
    assert_eq!(uids[0], cluster.uid(Some(ns), "configmap/web-config"));
}

#[test]
#[ignore = "needs a real cluster: set GITOPSD_E2E_KUBECONFIG"]
fn e2e_a_cluster_scoped_crd_and_its_resource_keep_their_uid() {
    let mut cluster = Cluster::new();
    let namespace = cluster.namespace("crd");
    let group = format!("e2e{}.gitopsd.test", std::process::id());
    let crd = format!("widgets.{group}");
    cluster
        .cluster_objects
        .push(format!("customresourcedefinition/{crd}"));
    let workspace = workspace_on(&cluster, &namespace, &rollout("[100]"));
    workspace.repo.write(
        "environments/staging/widgets.yaml",
        &format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n---\napiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: {crd}\nspec:\n  group: {group}\n  scope: Cluster\n  names: {{kind: Widget, plural: widgets, singular: widget, listKind: WidgetList}}\n  versions:\n    - name: v1\n      served: true\n      storage: true\n      schema:\n        openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}\n---\napiVersion: {group}/v1\nkind: Widget\nmetadata:\n  name: gear-{pid}\nspec:\n  teeth: 12\n",
            pid = std::process::id()
        ),
    );
    workspace.repo.commit("crd and a cluster-scoped widget");
    let widget = format!("widgets.{group}/gear-{}", std::process::id());
    cluster.cluster_objects.insert(0, widget.clone());
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    let uid = cluster.uid(None, &widget);
    let written = events(&workspace.journal("staging"), "rollout_started").len();
    for _ in 0..2 {
        assert_exit(&workspace.run(&["run", "--once"]), 0);
    }
    assert_eq!(
        uid,
        cluster.uid(None, &widget),
        "never deleted and re-created"
    );
    let records = workspace.journal("staging");
    assert_eq!(events(&records, "rollout_started").len(), written);
    assert!(
        events(&records, "reconcile_started").is_empty(),
        "passes 2 and 3 change nothing: {records:?}"
    );

    // A namespace on a cluster-scoped object is an error naming it; nothing is applied.
    workspace.repo.write(
        "environments/staging/wrong.yaml",
        &format!("apiVersion: {group}/v1\nkind: Widget\nmetadata:\n  name: cog\n  namespace: {namespace}\n"),
    );
    workspace.repo.commit("a namespaced widget");
    let output = workspace.run(&["run", "--once"]);
    assert_exit(&output, 1);
    assert!(
        stderr(&output).contains(&format!(
            "environments/staging/wrong.yaml: document 1 (line 1): Widget cog: Widget is cluster-scoped but names metadata.namespace \"{namespace}\""
        )),
        "{}",
        stderr(&output)
    );
}

#[test]
#[ignore = "needs a real cluster: set GITOPSD_E2E_KUBECONFIG"]
fn e2e_an_empty_revision_is_refused_unless_allowed() {
    if skipped_without_controllers(READY_PODS) {
        return;
    }
    let mut cluster = Cluster::new();
    let namespace = cluster.namespace("empty");
    let ns = namespace.as_str();
    let workspace = workspace_on(&cluster, ns, &rollout("[100]"));
    deploy(&workspace, ns, "1", Some(1), true);
    let uid = cluster.uid(Some(ns), "configmap/extra");

    workspace.repo.remove("environments/staging/app.yaml");
    workspace
        .repo
        .write("environments/staging/README.md", "nothing here\n");
    workspace.repo.commit("empty folder");
    let output = workspace.run(&["run", "--once"]);
    assert_exit(&output, 1);
    assert!(
        stderr(&output).contains("allow_empty = true"),
        "{}",
        stderr(&output)
    );
    assert_eq!(uid, cluster.uid(Some(ns), "configmap/extra"), "untouched");
    let diff = workspace.run(&["diff", "--env", "staging"]);
    assert!(stdout(&diff).contains("rejected:"), "{}", stdout(&diff));
    let validate = workspace.run(&["validate"]);
    assert_exit(&validate, 1);
    assert!(
        stdout(&validate).contains("holds no objects"),
        "{}",
        stdout(&validate)
    );

    workspace.allow_empty_staging();
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    assert!(cluster.get(Some(ns), "configmap/extra").is_none());
    assert!(cluster.get(Some(ns), "deployment/web").is_none());
    let gone = wait_for(Duration::from_secs(60), || {
        cluster.get(None, &format!("namespace/{ns}")).is_none()
    });
    assert!(gone, "the namespace in git is pruned too");
}

#[test]
#[ignore = "needs a real cluster: set GITOPSD_E2E_KUBECONFIG"]
fn e2e_replicas_git_omits_stay_with_whoever_set_them_through_canary_and_revert() {
    if skipped_without_controllers(READY_PODS) {
        return;
    }
    let mut cluster = Cluster::new();
    let namespace = cluster.namespace("hpa");
    let ns = namespace.as_str();
    let marker_dir = tempfile::tempdir().expect("tempdir");
    let marker = marker_dir.path().join("unhealthy");
    let workspace = workspace_on(
        &cluster,
        ns,
        &format!("{}\n{}", rollout("[50, 100]"), marker_check(&marker)),
    );
    let commit = |version: &str| {
        workspace.repo.write(
            "environments/staging/app.yaml",
            &app_yaml(ns, version, None, false),
        );
        workspace.repo.commit(&format!("v{version}"))
    };
    commit("1");
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    // An autoscaler, or an operator, sets the size.
    cluster.kubectl(&["-n", ns, "scale", "deployment/web", "--replicas=5"]);
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    assert_eq!(
        replicas(&cluster, ns, "web"),
        5,
        "not drift: git sets no replicas"
    );

    // A canary rollout: the canary runs on top, the stable keeps 5 throughout.
    commit("2");
    let mut rollout = ChildGuard(
        workspace
            .gitopsd(&["run", "--once"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("gitopsd"),
    );
    let mut seen_canary = None;
    let mut stable_sizes = std::collections::BTreeSet::new();
    let mut finished = None;
    // Samples the sizes until the rollout ends.
    let ended = wait_for(Duration::from_secs(600), || {
        finished = rollout.0.try_wait().expect("wait");
        if let Some(canary) = cluster.get(Some(ns), "deployment/web-canary") {
            seen_canary = canary["spec"]["replicas"].as_u64();
        }
        stable_sizes.insert(replicas(&cluster, ns, "web"));
        finished.is_some()
    });
    assert!(ended, "the rollout never ended");
    assert!(finished.is_some_and(|status| status.success()));
    assert_eq!(seen_canary, Some(3), "round(50% of 5) canary pods on top");
    assert_eq!(stable_sizes.into_iter().collect::<Vec<_>>(), [5]);
    assert_eq!(replicas(&cluster, ns, "web"), 5, "promotion keeps the size");

    // A failing revision is reverted; the size stays.
    std::fs::write(&marker, "").expect("marker");
    commit("3");
    assert_exit(&workspace.run(&["run", "--once"]), 1);
    std::fs::remove_file(&marker).expect("marker");
    assert_eq!(
        replicas(&cluster, ns, "web"),
        5,
        "the revert keeps the size"
    );
    assert!(cluster.get(Some(ns), "deployment/web-canary").is_none());
}

#[test]
#[ignore = "needs a real cluster: set GITOPSD_E2E_KUBECONFIG"]
fn e2e_a_no_op_pass_over_2004_objects_lists_each_type_once_in_pages_and_patches_nothing() {
    if skipped_without_controllers(READY_PODS) {
        return;
    }
    let mut cluster = Cluster::alone();
    let namespaces: Vec<String> = (0..4)
        .map(|index| cluster.namespace(&format!("many{index}")))
        .collect();
    let workspace = workspace_on(&cluster, &namespaces[0], &rollout("[100]"));
    workspace.edit_config("max_file_bytes = 65536", "max_file_bytes = 1048576");
    for (file, text) in scale_manifests(&namespaces) {
        workspace
            .repo
            .write(&format!("environments/staging/{file}"), &text);
    }
    workspace.repo.commit("2,004 objects");
    assert_exit(&workspace.run(&["run", "--once"]), 0);

    let before = cluster.request_counts();
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    let after = cluster.request_counts();
    // Writes in any scope; LISTs across the cluster, as gitopsd makes them (the namespace
    // controller lists inside namespaces it deletes).
    let delta = |verb: &str, resource: &str, scopes: &[&str]| -> u64 {
        scopes
            .iter()
            .map(|scope| {
                let key = (verb.to_string(), resource.to_string(), scope.to_string());
                after.get(&key).copied().unwrap_or(0) - before.get(&key).copied().unwrap_or(0)
            })
            .sum()
    };
    let any = ["cluster", "namespace", "resource"];
    // One list per type, paged by 500: a last page may come back empty when other objects
    // of the type follow the last one gitopsd owns.
    for (resource, owned) in [
        ("namespaces", 4u64),
        ("configmaps", 1000),
        ("deployments", 500),
        ("services", 500),
    ] {
        let pages = owned.div_ceil(500);
        let lists = delta("LIST", resource, &["cluster"]);
        assert!(
            (pages..=pages + 1).contains(&lists),
            "one list of {resource} in pages of 500: {lists} LIST requests"
        );
        assert_eq!(delta("PATCH", resource, &any), 0, "no PATCH of {resource}");
        assert_eq!(delta("APPLY", resource, &any), 0, "no apply of {resource}");
    }
}

#[test]
#[ignore = "needs a real cluster: set GITOPSD_E2E_KUBECONFIG"]
fn e2e_objects_applied_before_applysets_are_adopted_in_place() {
    let mut cluster = Cluster::new();
    let namespace = cluster.namespace("upgrade");
    let ns = namespace.as_str();
    let workspace = workspace_on(&cluster, ns, &rollout("[100]"));
    // What the gitopsd before applysets left: its labels, its one field manager.
    let legacy = |name: &str, data: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels:\n    app.kubernetes.io/managed-by: gitopsd\n    gitopsd.io/environment: staging\n  annotations:\n    gitopsd.io/revision: \"0000000000000000000000000000000000000000\"\n    gitopsd.io/hash: old\ndata:\n{data}"
        )
    };
    let old_state = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n---\n{}---\n{}",
        legacy("kept", "  A: \"1\"\n  B: \"2\"\n"),
        legacy("unknown-to-git", "  X: \"1\"\n")
    );
    let file = workspace.path("legacy.yaml");
    std::fs::write(&file, old_state).expect("legacy manifests");
    cluster.kubectl(&[
        "apply",
        "--server-side",
        "--field-manager=gitopsd",
        "-f",
        &file.display().to_string(),
    ]);
    let kept_uid = cluster.uid(Some(ns), "configmap/kept");

    workspace.repo.write(
        "environments/staging/app.yaml",
        &format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: kept\ndata:\n  A: \"1\"\n  B: \"2\"\n"),
    );
    workspace
        .repo
        .commit("the same objects, now from gitopsd with applysets");
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    let kept: Value = serde_json::from_str(&cluster.kubectl(&[
        "-n",
        ns,
        "get",
        "configmap/kept",
        "-o",
        "json",
        "--show-managed-fields",
    ]))
    .expect("kubectl JSON");
    assert_eq!(
        kept["metadata"]["uid"],
        kept_uid.as_str(),
        "adopted, not re-created"
    );
    assert!(kept["metadata"]["labels"]["applyset.kubernetes.io/part-of"].is_string());
    let managers: Vec<&str> = kept["metadata"]["managedFields"]
        .as_array()
        .expect("managed fields")
        .iter()
        .filter_map(|entry| entry["manager"].as_str())
        .collect();
    assert!(!managers.contains(&"gitopsd"), "{managers:?}");
    assert!(
        cluster.get(Some(ns), "configmap/unknown-to-git").is_some(),
        "an object gitopsd cannot prove it owns is never deleted"
    );

    // With the old manager gone, a key removed from git is removed live.
    workspace.repo.write(
        "environments/staging/app.yaml",
        &format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: kept\ndata:\n  A: \"1\"\n"),
    );
    workspace.repo.commit("drop B");
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    let kept = cluster.get(Some(ns), "configmap/kept").expect("kept");
    assert!(kept["data"].get("B").is_none(), "{kept}");
}

#[test]
#[ignore = "needs a real cluster: set GITOPSD_E2E_KUBECONFIG"]
fn e2e_another_writer_does_not_block_the_next_canary() {
    if skipped_without_controllers(READY_PODS) {
        return;
    }
    let mut cluster = Cluster::new();
    let namespace = cluster.namespace("writer");
    let ns = namespace.as_str();
    let workspace = workspace_on(&cluster, ns, &rollout("[50, 100]"));
    let commit = |version: &str| {
        workspace.repo.write(
            "environments/staging/app.yaml",
            &app_yaml(ns, version, Some(2), false),
        );
        workspace.repo.commit(&format!("v{version}"))
    };
    commit("1");
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    // Someone scales by hand, then a new image is committed before any pass puts it back.
    cluster.kubectl(&["-n", ns, "scale", "deployment/web", "--replicas=5"]);
    let second = commit("2");
    let output = workspace.run(&["run", "--once"]);
    assert_exit(&output, 0);
    assert!(
        stderr(&output).contains("canaries=[\"Deployment.apps"),
        "{}",
        stderr(&output)
    );
    let status = stdout(&workspace.run(&["status", "--env", "staging"]));
    assert!(
        status.contains(&format!("last healthy revision:  {}", &second[..12])),
        "{status}"
    );
    let web = cluster.get(Some(ns), "deployment/web").expect("web");
    assert_eq!(web["spec"]["replicas"], 2, "git sets the replicas");
    assert_eq!(
        web["spec"]["template"]["metadata"]["annotations"]["release"],
        "2"
    );
}
