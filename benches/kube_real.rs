//! Benchmark: 2,004 objects (4 Namespaces, 1,000 ConfigMaps, 500 Deployments, 500 Services)
//! on a real API server: the first `gitopsd run --once`, then no-op passes, beside
//! `kubectl diff --server-side` of the same objects, in the same run. Needs the kubeconfig of a
//! disposable cluster in `GITOPSD_E2E_KUBECONFIG` and `kubectl` (`GITOPSD_TEST_KUBECTL`, else
//! the PATH); `benches/run.sh` starts a k8s-lab for it. Without the variable it says so and
//! measures nothing.

mod support;
use support::git;

#[path = "../tests/it/scale.rs"]
mod scale;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

const RUNS: usize = 5;

/// Runs `command` under `/usr/bin/time`: wall time, peak RSS in KiB, exit code.
fn measure(command: &mut Command) -> (Duration, u64, i32) {
    let mut timed = Command::new("/usr/bin/time");
    timed
        .args(["-f", "%M"])
        .arg(command.get_program())
        .args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => timed.env(key, value),
            None => timed.env_remove(key),
        };
    }
    if let Some(dir) = command.get_current_dir() {
        timed.current_dir(dir);
    }
    let started = Instant::now();
    let output = timed
        .output()
        .expect("/usr/bin/time runs (apt-get install time)");
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let peak = stderr
        .lines()
        .last()
        .and_then(|line| line.trim().parse().ok())
        .unwrap_or(0);
    (took, peak, output.status.code().unwrap_or(-1))
}

fn median(mut runs: Vec<(Duration, u64)>) -> (Duration, u64) {
    runs.sort();
    runs[runs.len() / 2]
}

fn main() {
    let Some(kubeconfig) = std::env::var_os("GITOPSD_E2E_KUBECONFIG").map(PathBuf::from) else {
        eprintln!("kube_real: GITOPSD_E2E_KUBECONFIG is not set; nothing measured");
        return;
    };
    let kubectl =
        std::env::var_os("GITOPSD_TEST_KUBECTL").map_or_else(|| "kubectl".into(), PathBuf::from);
    let kubectl_cmd = |args: &[&str]| {
        let mut command = Command::new(&kubectl);
        command.arg("--kubeconfig").arg(&kubeconfig).args(args);
        command
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(repo.join("env")).expect("mkdir");
    std::fs::create_dir_all(&manifests).expect("mkdir");
    let namespaces: Vec<String> = (0..4)
        .map(|index| format!("gitopsd-bench-{}-{index}", std::process::id()))
        .collect();
    for (file, text) in scale::scale_manifests(&namespaces) {
        std::fs::write(repo.join("env").join(&file), &text).expect("manifests");
        std::fs::write(manifests.join(&file), &text).expect("manifests");
    }
    git(&repo, &["init", "-q", "-b", "main"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "2,004 objects"]);
    let config = dir.path().join("gitopsd.toml");
    std::fs::write(
        &config,
        format!(
            "[repo]\nurl = \"{}\"\nmax_file_bytes = 1048576\n[state]\ndir = \"state\"\n[[environment]]\nname = \"bench\"\npath = \"env\"\nnamespace = \"{}\"\ntarget = {{ type = \"kubernetes\", kubeconfig = \"{}\" }}\n[environment.rollout]\nsteps = [100]\nbake = \"0s\"\nverify = \"0s\"\n",
            repo.display(),
            namespaces[0],
            kubeconfig.display()
        ),
    )
    .expect("config");
    let gitopsd = || {
        let mut command = Command::new(env!("CARGO_BIN_EXE_gitopsd"));
        command
            .arg("--config")
            .arg(&config)
            .args(["run", "--once"])
            .env("GITOPSD_LOG", "warn");
        command
    };

    let (first, first_peak, code) = measure(&mut gitopsd());
    assert_eq!(code, 0, "the first pass failed");
    let noop = median(
        (0..RUNS)
            .map(|_| {
                let (took, peak, code) = measure(&mut gitopsd());
                assert_eq!(code, 0, "a no-op pass failed");
                (took, peak)
            })
            .collect(),
    );
    // kubectl diff exits 0 for no differences, 1 for some.
    let manifests_arg = manifests.display().to_string();
    let diff = median(
        (0..3)
            .map(|_| {
                let (took, peak, code) = measure(&mut kubectl_cmd(&[
                    "diff",
                    "--server-side",
                    "--field-manager=gitopsd-bench",
                    "--force-conflicts",
                    "-f",
                    &manifests_arg,
                ]));
                assert!(code == 0 || code == 1, "kubectl diff failed ({code})");
                (took, peak)
            })
            .collect(),
    );
    for namespace in &namespaces {
        let _ = kubectl_cmd(&["delete", "namespace", namespace, "--wait=false"]).output();
    }

    let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
    let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);
    println!(
        "2,004 objects on the API server in {}",
        kubeconfig.display()
    );
    println!("| command | time | peak memory |");
    println!("| --- | --- | --- |");
    println!(
        "| `gitopsd run --once`, first pass (creates everything, waits for readiness) | {} | {} |",
        ms(first),
        mib(first_peak)
    );
    println!(
        "| `gitopsd run --once`, no-op (median of {RUNS}) | {} | {} |",
        ms(noop.0),
        mib(noop.1)
    );
    println!(
        "| `kubectl diff --server-side -f` of the same objects (median of 3) | {} | {} |",
        ms(diff.0),
        mib(diff.1)
    );
}
