//! Real-cluster tests of a first repository as the public examples lay it out: an environment
//! whose namespace does not exist yet (`create_namespace = true`), and a helm environment whose
//! folder is the chart (no `chart` key, with a stand-in helm).

use std::fs;
use std::path::Path;

use crate::e2e::{Cluster, READY_PODS, skipped_without_controllers};
use crate::helpers::*;

/// A Deployment and a Service with no namespace of their own, as argocd-example-apps'
/// `guestbook` holds them.
const GUESTBOOK: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: guestbook-ui\nspec:\n  replicas: 1\n  selector:\n    matchLabels: {app: guestbook-ui}\n  template:\n    metadata:\n      labels: {app: guestbook-ui}\n    spec:\n      containers:\n        - name: guestbook-ui\n          image: registry.k8s.io/pause:3.9\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: guestbook-ui\nspec:\n  selector: {app: guestbook-ui}\n  ports: [{port: 80}]\n";

/// One environment on the cluster, in `namespace`, with `extra` TOML keys.
fn config(workspace: &Workspace, cluster: &Cluster, path: &str, namespace: &str, extra: &str) {
    fs::write(
        &workspace.config,
        format!(
            "[repo]\nurl = \"{}\"\nbranch = \"main\"\n\n[state]\ndir = \"state\"\n\n[[environment]]\nname = \"guestbook\"\npath = \"{path}\"\nnamespace = \"{namespace}\"\ncreate_namespace = true\ntarget = {{ type = \"kubernetes\", kubeconfig = \"{}\" }}\n{extra}",
            workspace.repo.dir.display(),
            cluster.kubeconfig.display(),
        ),
    )
    .expect("config");
}

#[test]
#[ignore = "needs a real cluster: set GITOPSD_E2E_KUBECONFIG"]
fn e2e_create_namespace_makes_it_first_labels_it_and_never_prunes_it() {
    if skipped_without_controllers(READY_PODS) {
        return;
    }
    let mut cluster = Cluster::new();
    let namespace = cluster.namespace("mkns");
    let ns = namespace.as_str();
    let workspace = Workspace::new();
    config(&workspace, &cluster, "guestbook", ns, "");
    workspace.repo.write("guestbook/guestbook.yaml", GUESTBOOK);
    workspace.repo.commit("guestbook");
    assert!(cluster.get(None, &format!("namespace/{ns}")).is_none());

    // The server dry-run counts the namespace as to be made, not as a problem.
    let validate = workspace.run(&["validate", "--server"]);
    assert_exit(&validate, 0);
    assert!(
        stdout(&validate).contains(&format!("namespace {ns} will be created")),
        "{}",
        stdout(&validate)
    );
    assert!(cluster.get(None, &format!("namespace/{ns}")).is_none());

    // The first pass deploys: the namespace first, then what goes in it.
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    let made = cluster
        .get(None, &format!("namespace/{ns}"))
        .expect("the namespace was made");
    assert_eq!(
        made["metadata"]["labels"]["gitopsd.io/created-by"],
        "gitopsd"
    );
    assert_eq!(
        made["metadata"]["annotations"]["gitopsd.io/created-for"],
        "guestbook"
    );
    assert!(
        made["metadata"]["labels"]
            .get("applyset.kubernetes.io/part-of")
            .is_none(),
        "no applyset member: {made}"
    );
    assert!(cluster.get(Some(ns), "deployment/guestbook-ui").is_some());
    assert!(cluster.get(Some(ns), "service/guestbook-ui").is_some());
    let uid = cluster.uid(None, &format!("namespace/{ns}"));
    assert_exit(&workspace.run(&["diff", "--env", "guestbook"]), 0);

    // Everything removed from git (allowed) is pruned; the namespace stays.
    workspace.repo.remove("guestbook/guestbook.yaml");
    workspace
        .repo
        .write("guestbook/README.md", "nothing here\n");
    workspace.repo.commit("empty");
    fs::write(
        &workspace.config,
        fs::read_to_string(&workspace.config)
            .expect("config")
            .replace(
                "create_namespace = true",
                "create_namespace = true\nallow_empty = true",
            ),
    )
    .expect("config");
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    assert!(cluster.get(Some(ns), "deployment/guestbook-ui").is_none());
    assert!(cluster.get(Some(ns), "service/guestbook-ui").is_none());
    assert_eq!(
        uid,
        cluster.uid(None, &format!("namespace/{ns}")),
        "the namespace gitopsd made is never pruned"
    );
}

/// A stand-in helm: it checks that the chart is the environment's own folder and prints the
/// chart's templates.
const HELM: &str = r#"#!/bin/sh
case "$1" in
  version) echo "v3.99.0+stand-in"; exit 0 ;;
esac
expected="template guestbook helm-guestbook --namespace $EXPECTED_NAMESPACE"
if [ "$*" != "$expected" ]; then
  echo "unexpected arguments: $*" >&2
  exit 2
fi
test -f helm-guestbook/Chart.yaml || { echo "no chart in $(pwd)" >&2; exit 2; }
cat helm-guestbook/templates/*.yaml
"#;

#[test]
#[ignore = "needs a real cluster: set GITOPSD_E2E_KUBECONFIG"]
fn e2e_a_helm_environment_with_no_chart_renders_its_own_folder() {
    if skipped_without_controllers(READY_PODS) {
        return;
    }
    let mut cluster = Cluster::new();
    let namespace = cluster.namespace("helm");
    let ns = namespace.as_str();
    let workspace = Workspace::new();
    let helm = workspace.path("helm");
    // The namespace reaches the stand-in through its own text: the render sandbox passes on
    // only the variables it allows.
    fs::write(&helm, HELM.replace("$EXPECTED_NAMESPACE", ns)).expect("helm");
    make_executable(&helm);
    config(
        &workspace,
        &cluster,
        "helm-guestbook",
        ns,
        &format!(
            "render = {{ kind = \"helm\", binary = \"{}\" }}\n",
            helm.display()
        ),
    );
    workspace.repo.write(
        "helm-guestbook/Chart.yaml",
        "apiVersion: v2\nname: helm-guestbook\nversion: 0.1.0\n",
    );
    workspace
        .repo
        .write("helm-guestbook/values.yaml", "replicaCount: 1\n");
    workspace
        .repo
        .write("helm-guestbook/templates/guestbook.yaml", GUESTBOOK);
    workspace.repo.commit("helm-guestbook");

    let output = workspace.run(&["run", "--once"]);
    assert_exit(&output, 0);
    assert!(cluster.get(Some(ns), "deployment/guestbook-ui").is_some());
    assert!(cluster.get(Some(ns), "service/guestbook-ui").is_some());
    assert_exit(&workspace.run(&["diff", "--env", "guestbook"]), 0);
}

fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).expect("chmod");
}
