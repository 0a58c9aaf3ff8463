//! The fleet's repository, config and manifests: environments of 20 objects each (a Namespace,
//! ConfigMaps and Services; every tenth environment has one Deployment of one replica in place
//! of a ConfigMap), plus the `bake` environment whose Deployment rolls out through canary steps
//! with a 60 s bake.

use std::path::{Path, PathBuf};

use crate::support::git;

/// Objects in each fleet environment.
pub const OBJECTS_PER_ENVIRONMENT: usize = 20;
/// Services in each fleet environment; the rest, after the Namespace, are ConfigMaps (and one
/// Deployment in every tenth environment).
const SERVICES: usize = 7;
/// The label every namespace of a run carries, so that a run on a shared cluster can delete
/// what it made.
pub const RUN_LABEL: &str = "gitopsd-bench/fleet";

/// One run's workspace: repository, config and state under a temporary folder.
pub struct Fleet {
    pub repo: PathBuf,
    pub config: PathBuf,
    pub state: PathBuf,
    pub environments: usize,
    /// Distinguishes this run's namespaces from an earlier run's on the same cluster.
    pub tag: String,
}

/// The name of fleet environment `index`.
pub fn environment(index: usize) -> String {
    format!("fleet-{index:04}")
}

/// Whether fleet environment `index` holds a Deployment (every tenth: 100 of 1,000).
pub fn has_deployment(index: usize) -> bool {
    index % 10 == 0
}

/// The 20 objects of one fleet environment, in namespace `namespace`, as one YAML stream.
pub fn manifests(namespace: &str, index: usize, tag: &str) -> String {
    let mut text = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n  labels: {{{RUN_LABEL}: \"{tag}\"}}\n"
    );
    let workloads = usize::from(has_deployment(index));
    let config_maps = OBJECTS_PER_ENVIRONMENT - 1 - SERVICES - workloads;
    for n in 0..config_maps {
        text.push_str(&format!(
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: config-{n:02}\n  namespace: {namespace}\n  labels: {{app: app-{n:02}, tier: fleet}}\ndata:\n  value: \"{index}-{n}\"\n  mode: git\n  settings.ini: |\n    [server]\n    port = {port}\n    workers = 4\n    log_level = info\n",
            port = 8000 + n
        ));
    }
    for n in 0..SERVICES {
        text.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: svc-{n:02}\n  namespace: {namespace}\n  labels: {{app: app-{n:02}, tier: fleet}}\nspec:\n  selector: {{app: app-{n:02}}}\n  ports:\n    - name: http\n      port: 80\n      targetPort: {port}\n",
            port = 8000 + n
        ));
    }
    if workloads == 1 {
        text.push_str(&deployment(namespace, "app", "1"));
    }
    text
}

/// A Deployment of one replica; `release` goes in a pod template annotation.
fn deployment(namespace: &str, name: &str, release: &str) -> String {
    format!(
        "---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  replicas: 1\n  selector:\n    matchLabels: {{app: {name}}}\n  template:\n    metadata:\n      labels: {{app: {name}}}\n      annotations: {{release: \"{release}\"}}\n    spec:\n      containers:\n        - name: {name}\n          image: registry.k8s.io/pause:3.9\n"
    )
}

/// The `bake` environment at `release`: a Namespace, a Deployment of one replica and a
/// Service.
pub fn bake_manifests(namespace: &str, release: &str, tag: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n  labels: {{{RUN_LABEL}: \"{tag}\"}}\n{}---\napiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: {namespace}\nspec:\n  selector: {{app: web}}\n  ports: [{{port: 80}}]\n",
        deployment(namespace, "web", release)
    )
}

impl Fleet {
    /// Writes the repository (one commit) and the config under `dir`.
    pub fn create(dir: &Path, environments: usize, kubeconfig: &Path) -> Self {
        let tag = format!("{:05}", std::process::id() % 100_000);
        let fleet = Self {
            repo: dir.join("repo"),
            config: dir.join("gitopsd.toml"),
            state: dir.join("state"),
            environments,
            tag,
        };
        for index in 0..environments {
            let folder = fleet.repo.join("environments").join(environment(index));
            std::fs::create_dir_all(&folder).expect("mkdir");
            let text = manifests(&fleet.namespace(index), index, &fleet.tag);
            std::fs::write(folder.join("app.yaml"), text).expect("manifests");
        }
        fleet.write_bake("1");
        std::fs::write(fleet.repo.join("README.md"), "fleet benchmark\n").expect("readme");
        git(&fleet.repo, &["init", "-q", "-b", "main"]);
        fleet.commit("the fleet");
        std::fs::write(&fleet.config, fleet.config_text(kubeconfig)).expect("config");
        fleet
    }

    /// The namespace of fleet environment `index`.
    pub fn namespace(&self, index: usize) -> String {
        format!("fl{}-{index:04}", self.tag)
    }

    /// The namespace kubectl applies fleet environment `index` to.
    pub fn kubectl_namespace(&self, index: usize) -> String {
        format!("kc{}-{index:04}", self.tag)
    }

    pub fn bake_namespace(&self) -> String {
        format!("bake{}", self.tag)
    }

    /// Writes the `bake` environment at `release` (not committed).
    pub fn write_bake(&self, release: &str) {
        let folder = self.repo.join("environments/bake");
        std::fs::create_dir_all(&folder).expect("mkdir");
        let text = bake_manifests(&self.bake_namespace(), release, &self.tag);
        std::fs::write(folder.join("app.yaml"), text).expect("manifests");
    }

    /// Commits everything; returns the new tip.
    pub fn commit(&self, message: &str) -> String {
        git(&self.repo, &["add", "-A"]);
        git(&self.repo, &["commit", "-q", "-m", message]);
        git(&self.repo, &["rev-parse", "HEAD"])
    }

    /// A commit that changes no environment's folder: every environment passes over an
    /// unchanged tree.
    pub fn touch_readme(&self, round: usize) -> String {
        std::fs::write(
            self.repo.join("README.md"),
            format!("fleet benchmark, no-op round {round}\n"),
        )
        .expect("readme");
        self.commit(&format!("no-op round {round}"))
    }

    fn config_text(&self, kubeconfig: &Path) -> String {
        let target = format!(
            "target = {{ type = \"kubernetes\", kubeconfig = \"{}\" }}\n",
            kubeconfig.display()
        );
        let mut text = format!(
            "[repo]\nurl = \"{}\"\npoll_interval = \"10m\"\n[state]\ndir = \"{}\"\n[api]\nlisten = \"127.0.0.1:0\"\n",
            self.repo.display(),
            self.state.display()
        );
        for index in 0..self.environments {
            text.push_str(&format!(
                "[[environment]]\nname = \"{}\"\npath = \"environments/{}\"\nnamespace = \"{}\"\n{target}[environment.rollout]\nsteps = [100]\nbake = \"0s\"\nverify = \"0s\"\n",
                environment(index),
                environment(index),
                self.namespace(index)
            ));
        }
        text.push_str(&format!(
            "[[environment]]\nname = \"bake\"\npath = \"environments/bake\"\nnamespace = \"{}\"\n{target}[environment.rollout]\nsteps = [50, 100]\nbake = \"60s\"\nverify = \"0s\"\ntimeout = \"3m\"\nrevert_commit = false\n",
            self.bake_namespace()
        ));
        text
    }
}
