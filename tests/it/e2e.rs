//! Real-cluster suite, ignored by default. Run it against a disposable cluster with
//!
//! ```sh
//! GITOPSD_E2E_KUBECONFIG=$HOME/.kube/config cargo test --test it -- --ignored e2e
//! ```
//!
//! It needs an API server with the controller manager (pods must start: the Deployment runs
//! `registry.k8s.io/pause`), creates the namespace `gitopsd-e2e-<pid>` and deletes it at the
//! end. It deploys a Namespace, ConfigMap, Deployment and Service; rolls an image change
//! through a canary; reverts a revision whose health check fails; and prunes an object
//! removed from git.

use std::path::PathBuf;

use crate::helpers::*;

fn kubeconfig() -> PathBuf {
    let Some(path) = std::env::var_os("GITOPSD_E2E_KUBECONFIG") else {
        panic!("set GITOPSD_E2E_KUBECONFIG to the kubeconfig of a disposable cluster");
    };
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "GITOPSD_E2E_KUBECONFIG names {}, which is not a file",
        path.display()
    );
    std::path::absolute(&path).expect("absolute path")
}

fn manifests(repo: &Repo, namespace: &str, version: &str, with_extra: bool) {
    let mut text = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web-config\ndata:\n  VERSION: \"{version}\"\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 2\n  selector:\n    matchLabels: {{app: web}}\n  template:\n    metadata:\n      labels: {{app: web}}\n      annotations: {{release: \"{version}\"}}\n    spec:\n      containers:\n        - name: web\n          image: registry.k8s.io/pause:3.9\n          envFrom: [{{configMapRef: {{name: web-config}}}}]\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector: {{app: web}}\n  ports: [{{port: 80}}]\n"
    );
    if with_extra {
        text.push_str("---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: extra\n");
    }
    repo.write("environments/staging/app.yaml", &text);
}

#[test]
#[ignore = "needs a real cluster: set GITOPSD_E2E_KUBECONFIG"]
fn e2e_deploy_canary_revert_and_prune_on_a_real_cluster() {
    let kubeconfig = kubeconfig();
    let namespace = format!("gitopsd-e2e-{}", std::process::id());
    let workspace = Workspace::new();
    let marker = workspace.path("unhealthy");
    workspace.write_config_with(
        &workspace.repo.dir.display().to_string(),
        "30s",
        &format!(
            "[environment.rollout]\nsteps = [50, 100]\nbake = \"5s\"\nverify = \"5s\"\ntimeout = \"3m\"\n\n[[environment.health]]\nname = \"marker\"\ntype = \"exec\"\ncommand = \"sh -c 'test ! -f {}'\"\ninterval = \"1s\"\nfailures = 2\n",
            marker.display()
        ),
    );
    workspace.edit_config(
        "target = { type = \"directory\", path = \"live/staging\" }\nnamespace = \"shop\"",
        &format!(
            "target = {{ type = \"kubernetes\", kubeconfig = \"{}\" }}\nnamespace = \"{namespace}\"",
            kubeconfig.display()
        ),
    );
    workspace.repo.write(
        "environments/production/one.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: one\n",
    );

    manifests(&workspace.repo, &namespace, "1", true);
    workspace.repo.commit("v1");
    let first = workspace.run(&["run", "--once"]);
    let errors = stderr(&first);
    assert!(
        first.status.code() == Some(0),
        "the first deploy failed; is the cluster reachable?\n{errors}"
    );
    assert_exit(&workspace.run(&["diff", "--env", "staging"]), 0);

    // A template change rolls through a canary.
    manifests(&workspace.repo, &namespace, "2", true);
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
    manifests(&workspace.repo, &namespace, "3", true);
    workspace.repo.commit("v3, unhealthy");
    assert_exit(&workspace.run(&["run", "--once"]), 1);
    std::fs::remove_file(&marker).expect("marker");
    let status = stdout(&workspace.run(&["status", "--env", "staging"]));
    assert!(
        status.contains(&format!("last healthy revision:  {}", &second[..12])),
        "{status}"
    );

    // An object removed from git is pruned.
    manifests(&workspace.repo, &namespace, "4", false);
    workspace.repo.commit("v4 without extra");
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    assert_exit(&workspace.run(&["diff", "--env", "staging"]), 0);

    // Clean up: an empty environment prunes everything, the namespace last.
    workspace.repo.remove("environments/staging/app.yaml");
    workspace
        .repo
        .write("environments/staging/README.md", "nothing deployed\n");
    workspace.repo.commit("empty");
    assert_exit(&workspace.run(&["run", "--once"]), 0);
}
