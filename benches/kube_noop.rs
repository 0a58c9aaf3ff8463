//! Benchmark: a no-op reconcile of 1,000 owned objects on the kubernetes target, against the
//! in-repo API server stand-in: wall time and the requests it sends (one LIST per type, no
//! PATCH). Run with `benches/run.sh` (or `cargo bench --bench kube_noop`).
// Test and benchmark code drives files and processes directly: the I/O boundary is for the
// daemon's async code.
#![allow(clippy::disallowed_methods)]

mod support;
use support::git;

#[path = "../tests/it/apiserver.rs"]
#[allow(dead_code)]
mod apiserver;

use std::process::Command;
use std::time::{Duration, Instant};

const OBJECTS: usize = 1000;
const RUNS: usize = 5;

fn main() {
    let server = apiserver::ApiServerStandIn::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(repo.join("env")).expect("mkdir");
    git(&repo, &["init", "-q", "-b", "main"]);
    let mut text = String::new();
    for index in 0..OBJECTS {
        text.push_str(&format!(
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: config-{index:04}\ndata:\n  value: \"{index}\"\n"
        ));
    }
    std::fs::write(repo.join("env/many.yaml"), text).expect("manifests");
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "many"]);
    std::fs::write(dir.path().join("kubeconfig"), server.kubeconfig()).expect("kubeconfig");
    let config = dir.path().join("gitopsd.toml");
    std::fs::write(
        &config,
        format!(
            "[repo]\nurl = \"{}\"\n[state]\ndir = \"state\"\n[[environment]]\nname = \"bench\"\npath = \"env\"\nnamespace = \"bench\"\ntarget = {{ type = \"kubernetes\", kubeconfig = \"kubeconfig\" }}\n",
            repo.display()
        ),
    )
    .expect("config");
    let run = || {
        let output = Command::new(env!("CARGO_BIN_EXE_gitopsd"))
            .arg("--config")
            .arg(&config)
            .args(["run", "--once"])
            .env("GITOPSD_LOG", "warn")
            .output()
            .expect("gitopsd runs");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let started = Instant::now();
    run();
    let first = started.elapsed();
    let mut times: Vec<Duration> = Vec::new();
    server.reset_counts();
    for _ in 0..RUNS {
        let started = Instant::now();
        run();
        times.push(started.elapsed());
    }
    times.sort();
    println!("{OBJECTS} owned ConfigMaps on the API server stand-in");
    println!("| pass | time | LIST | PATCH | GET |");
    println!("| --- | --- | --- | --- | --- |");
    println!(
        "| first (creates everything) | {:.0} ms | | {OBJECTS} | |",
        first.as_secs_f64() * 1000.0
    );
    println!(
        "| no-op (median of {RUNS}) | {:.0} ms | {} per pass | {} | {} |",
        times[RUNS / 2].as_secs_f64() * 1000.0,
        server.count_method("LIST") / RUNS,
        server.count_method("PATCH"),
        server.count_method("GET"),
    );
}
