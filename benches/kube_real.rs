//! Benchmark: 2,004 objects (4 Namespaces, 1,000 ConfigMaps, 500 Deployments, 500 Services)
//! on a real API server: the first `gitopsd run --once`, then no-op passes, beside
//! `kubectl diff --server-side` and a no-op `kubectl apply --server-side` of the same objects;
//! and the first apply of 1,504 objects without workloads (no readiness to wait for) by
//! gitopsd, by one `kubectl apply --server-side` and by 8 parallel ones, each into namespaces
//! of its own, in the same run. Needs the kubeconfig of a
//! disposable cluster in `GITOPSD_E2E_KUBECONFIG` and `kubectl` (`GITOPSD_TEST_KUBECTL`, else
//! the PATH); `benches/run.sh` starts a k8s-lab for it. Without the variable it says so and
//! measures nothing.
// Test and benchmark code drives files and processes directly: the I/O boundary is for the
// daemon's async code.
#![allow(clippy::disallowed_methods)]

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

/// The scale manifests without their Deployments: 4 Namespaces, 1,000 ConfigMaps and 500
/// Services.
fn without_workloads(namespaces: &[String]) -> Vec<(String, String)> {
    scale::scale_manifests(namespaces)
        .into_iter()
        .map(|(file, text)| {
            let kept: Vec<&str> = text
                .split("---\n")
                .filter(|document| !document.is_empty() && !document.contains("kind: Deployment"))
                .collect();
            (file, format!("---\n{}", kept.join("---\n")))
        })
        .collect()
}

fn bench_namespaces(tag: &str) -> Vec<String> {
    (0..4)
        .map(|index| format!("gitopsd-bench-{}-{tag}{index}", std::process::id()))
        .collect()
}

/// Writes `files` into a new folder `name` under `dir`.
fn write_files(dir: &std::path::Path, name: &str, files: &[(String, String)]) -> PathBuf {
    let folder = dir.join(name);
    std::fs::create_dir_all(&folder).expect("mkdir");
    for (file, text) in files {
        std::fs::write(folder.join(file), text).expect("manifests");
    }
    folder
}

fn as_strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
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
    // Namespaces still being deleted (an earlier run's) load the server: wait for them.
    let deadline = Instant::now() + Duration::from_secs(600);
    while Instant::now() < deadline {
        let phases = kubectl_cmd(&[
            "get",
            "namespaces",
            "-o",
            "jsonpath={.items[*].status.phase}",
        ])
        .output()
        .expect("kubectl runs");
        if !String::from_utf8_lossy(&phases.stdout).contains("Terminating") {
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
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
    if std::env::var_os("GITOPSD_BENCH_KEEP").is_some() {
        // For profiling a no-op pass by hand: leave the workspace and the objects in place.
        let kept = dir.keep();
        println!(
            "kept: gitopsd --config {} run --once (namespaces {namespaces:?})",
            kept.join("gitopsd.toml").display()
        );
        return;
    }
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
    let apply_args = |folder: &str| -> Vec<String> {
        [
            "apply",
            "--server-side",
            "--field-manager=gitopsd-bench",
            "--force-conflicts",
            "-f",
            folder,
        ]
        .iter()
        .map(|arg| arg.to_string())
        .collect()
    };
    // The first apply takes the fields over from gitopsd's manager; the next ones are no-ops.
    let warm = measure(&mut kubectl_cmd(&as_strs(&apply_args(&manifests_arg))));
    assert_eq!(warm.2, 0, "kubectl apply failed");
    let apply_noop = median(
        (0..3)
            .map(|_| {
                let (took, peak, code) =
                    measure(&mut kubectl_cmd(&as_strs(&apply_args(&manifests_arg))));
                assert_eq!(code, 0, "kubectl apply failed");
                (took, peak)
            })
            .collect(),
    );

    // First apply of 1,504 objects, three ways, each into namespaces of its own.
    let ours = bench_namespaces("g");
    let single = bench_namespaces("k");
    let parallel = bench_namespaces("p");
    let first_repo = dir.path().join("first-repo");
    std::fs::create_dir_all(first_repo.join("env")).expect("mkdir");
    for (file, text) in without_workloads(&ours) {
        std::fs::write(first_repo.join("env").join(&file), &text).expect("manifests");
    }
    git(&first_repo, &["init", "-q", "-b", "main"]);
    git(&first_repo, &["add", "-A"]);
    git(&first_repo, &["commit", "-q", "-m", "1,504 objects"]);
    let first_config = dir.path().join("first.toml");
    std::fs::write(
        &first_config,
        format!(
            "[repo]\nurl = \"{}\"\nmax_file_bytes = 1048576\n[state]\ndir = \"first-state\"\n[[environment]]\nname = \"first\"\npath = \"env\"\nnamespace = \"{}\"\ntarget = {{ type = \"kubernetes\", kubeconfig = \"{}\" }}\n",
            first_repo.display(),
            ours[0],
            kubeconfig.display()
        ),
    )
    .expect("config");
    let (ours_took, ours_peak, code) = measure(
        Command::new(env!("CARGO_BIN_EXE_gitopsd"))
            .arg("--config")
            .arg(&first_config)
            .args(["run", "--once"])
            .env("GITOPSD_LOG", "warn"),
    );
    assert_eq!(code, 0, "gitopsd's first apply failed");
    let single_folder = write_files(dir.path(), "single", &without_workloads(&single));
    let (single_took, single_peak, code) = measure(&mut kubectl_cmd(&as_strs(&apply_args(
        &single_folder.display().to_string(),
    ))));
    assert_eq!(code, 0, "kubectl apply failed");
    // 8 processes: the Namespaces first (the rest needs them), then the 19 other files
    // shared out among the 8.
    let parallel_files = without_workloads(&parallel);
    let started = Instant::now();
    let namespaces_folder = write_files(dir.path(), "parallel-ns", &parallel_files[..1]);
    let status = kubectl_cmd(&as_strs(&apply_args(
        &namespaces_folder.display().to_string(),
    )))
    .output()
    .expect("kubectl runs");
    assert!(
        status.status.success(),
        "kubectl apply of the namespaces failed"
    );
    let children: Vec<std::process::Child> = (0..8)
        .map(|worker| {
            let share: Vec<(String, String)> = parallel_files[1..]
                .iter()
                .enumerate()
                .filter(|(index, _)| index % 8 == worker)
                .map(|(_, file)| file.clone())
                .collect();
            let folder = write_files(dir.path(), &format!("parallel-{worker}"), &share);
            kubectl_cmd(&as_strs(&apply_args(&folder.display().to_string())))
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("kubectl starts")
        })
        .collect();
    for mut child in children {
        assert!(
            child.wait().expect("kubectl ends").success(),
            "a kubectl failed"
        );
    }
    let parallel_took = started.elapsed();

    for namespace in namespaces
        .iter()
        .chain(&ours)
        .chain(&single)
        .chain(&parallel)
    {
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
    println!(
        "| `kubectl apply --server-side -f`, no-op (median of 3) | {} | {} |",
        ms(apply_noop.0),
        mib(apply_noop.1)
    );
    println!();
    println!("First apply of 1,504 objects (4 Namespaces, 1,000 ConfigMaps, 500 Services):");
    println!("| command | time | peak memory |");
    println!("| --- | --- | --- |");
    println!(
        "| `gitopsd run --once` | {} | {} |",
        ms(ours_took),
        mib(ours_peak)
    );
    println!(
        "| `kubectl apply --server-side -f` | {} | {} |",
        ms(single_took),
        mib(single_peak)
    );
    println!(
        "| 8 parallel `kubectl apply --server-side` (after the Namespaces) | {} | |",
        ms(parallel_took)
    );
}
