//! Benchmark: render plus plan of a kustomize repository with three overlays (`gitopsd diff`
//! of three rendered environments against empty directory targets), cold (render cache
//! emptied before each run) and cached, beside `kubectl kustomize` of one overlay alone.
//! Needs a kubectl: `GITOPSD_TEST_KUBECTL`, or `kubectl` on the PATH. Run with
//! `benches/run.sh` (or `cargo bench --bench render`).
// Test and benchmark code drives files and processes directly: the I/O boundary is for the
// daemon's async code.
#![allow(clippy::disallowed_methods)]

mod support;
use support::{git, measure};

use std::path::{Path, PathBuf};
use std::process::Command;

/// Deployments in the base; each comes with a Service and a ConfigMap.
const APPS: usize = 40;
const OVERLAYS: [&str; 3] = ["dev", "staging", "production"];
const RUNS: usize = 5;

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().expect("files live in folders")).expect("mkdir");
    std::fs::write(path, text).expect("write");
}

fn write_fixture(repo: &Path) {
    let mut resources = String::from("resources:\n");
    for app in 0..APPS {
        let name = format!("app-{app:02}");
        resources.push_str(&format!("  - {name}.yaml\n"));
        write(
            &repo.join(format!("base/{name}.yaml")),
            &format!(
                "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\n  labels: {{app: {name}}}\nspec:\n  replicas: 2\n  selector:\n    matchLabels: {{app: {name}}}\n  template:\n    metadata:\n      labels: {{app: {name}}}\n    spec:\n      containers:\n        - name: app\n          image: registry.example.com/{name}:1.0\n          envFrom: [{{configMapRef: {{name: {name}-config}}}}]\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  selector: {{app: {name}}}\n  ports: [{{port: 80}}]\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}-config\ndata:\n  setting: \"{app}\"\n"
            ),
        );
    }
    resources.push_str("configMapGenerator:\n  - name: shared\n    literals: [MODE=base]\n");
    write(&repo.join("base/kustomization.yaml"), &resources);
    for overlay in OVERLAYS {
        write(
            &repo.join(format!("overlays/{overlay}/kustomization.yaml")),
            &format!(
                "namespace: {overlay}\nnamePrefix: {overlay}-\nresources: [../../base]\npatches:\n  - target: {{kind: Deployment}}\n    patch: |-\n      - op: replace\n        path: /spec/replicas\n        value: 3\nimages:\n  - name: registry.example.com/app-00\n    newTag: \"2.0\"\nconfigMapGenerator:\n  - name: shared\n    behavior: merge\n    literals: [MODE={overlay}]\n"
            ),
        );
    }
}

fn kubectl() -> PathBuf {
    std::env::var_os("GITOPSD_TEST_KUBECTL").map_or_else(|| PathBuf::from("kubectl"), PathBuf::from)
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).expect("mkdir");
    git(&repo, &["init", "-q", "-b", "main"]);
    write_fixture(&repo);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "fixture"]);
    let kubectl = kubectl();

    let mut config = format!(
        "[repo]\nurl = \"{}\"\n[state]\ndir = \"state\"\n",
        repo.display()
    );
    for overlay in OVERLAYS {
        config.push_str(&format!(
            "[[environment]]\nname = \"{overlay}\"\npath = \"overlays/{overlay}\"\nrender = {{ kind = \"kustomize\", binary = \"{}\" }}\ntarget = {{ type = \"directory\", path = \"live/{overlay}\" }}\n",
            kubectl.display()
        ));
    }
    let config_path = dir.path().join("gitopsd.toml");
    std::fs::write(&config_path, config).expect("config");
    let diff = || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_gitopsd"));
        command
            .arg("--config")
            .arg(&config_path)
            .args(["diff", "--color", "never"]);
        command
    };
    // The first run fills the mirror; it is not measured.
    let first = diff().output().expect("gitopsd diff runs");
    assert_eq!(
        first.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let summary: Vec<String> = String::from_utf8_lossy(&first.stdout)
        .lines()
        .filter(|line| line.contains(" to create,"))
        .map(str::to_string)
        .collect();

    let cache = dir.path().join("state/render-cache");
    let cold = measure(
        RUNS,
        || {
            let _ = std::fs::remove_dir_all(&cache);
        },
        diff,
    );
    let cached = measure(RUNS, || {}, diff);
    let alone = measure(
        RUNS,
        || {},
        || {
            let mut command = Command::new(&kubectl);
            command
                .current_dir(&repo)
                .args(["kustomize", "overlays/production"]);
            command
        },
    );
    println!(
        "fixture: base of {APPS} Deployments, Services and ConfigMaps, {} overlays; {}",
        OVERLAYS.len(),
        summary.join("; ")
    );
    println!("median of {RUNS} runs; peak RSS of the command's own process:");
    println!("| command | time | peak memory |");
    println!("| --- | --- | --- |");
    for (name, measured) in [
        ("`gitopsd diff`, 3 overlays, cold (renders all 3)", &cold),
        ("`gitopsd diff`, 3 overlays, cached (renders none)", &cached),
        ("`kubectl kustomize` of one overlay alone", &alone),
    ] {
        println!(
            "| {name} | {:.1} ms | {:.1} MiB |",
            measured.median.as_secs_f64() * 1000.0,
            measured.peak_rss_kib as f64 / 1024.0
        );
    }
}
