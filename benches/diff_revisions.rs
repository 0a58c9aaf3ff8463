//! Benchmark: `gitopsd diff --against A --rev B` on two revisions of 2,000 objects, beside
//! `git diff A B` of the same revisions, measured in the same run (wall time and peak RSS).
//! Run with `benches/run.sh` (or `cargo bench --bench diff_revisions`).
// Test and benchmark code drives files and processes directly: the I/O boundary is for the
// daemon's async code.
#![allow(clippy::disallowed_methods)]

mod support;
use support::{git, measure};

use std::path::Path;
use std::process::Command;

const OBJECTS: usize = 2000;
const FILES: usize = 20;
const RUNS: usize = 7;

/// One object of the fixture; `version` changes its content.
fn object(index: usize, version: u32) -> String {
    if index % 4 == 0 {
        format!(
            "---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: app-{index:04}\n  labels: {{app: app-{index:04}}}\nspec:\n  replicas: 3\n  selector:\n    matchLabels: {{app: app-{index:04}}}\n  template:\n    metadata:\n      labels: {{app: app-{index:04}}}\n    spec:\n      containers:\n        - name: app\n          image: registry.example.com/app-{index:04}:{version}.0\n          ports: [{{containerPort: 8080}}]\n          resources: {{requests: {{cpu: 100m, memory: 128Mi}}}}\n"
        )
    } else {
        format!(
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: config-{index:04}\ndata:\n  setting: \"{version}\"\n  description: configuration number {index} of the benchmark fixture\n"
        )
    }
}

/// Writes the environment: objects `range`, with every tenth at `changed_version`.
fn write_fixture(repo: &Path, range: std::ops::Range<usize>, changed_version: u32) {
    let dir = repo.join("environments/bench");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let per_file = OBJECTS / FILES;
    for file in 0..FILES + 1 {
        let mut text = String::new();
        for index in file * per_file..(file + 1) * per_file {
            if range.contains(&index) {
                let version = if index % 10 == 0 { changed_version } else { 1 };
                text.push_str(&object(index, version));
            }
        }
        if !text.is_empty() {
            std::fs::write(dir.join(format!("part-{file:02}.yaml")), text).expect("write");
        }
    }
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).expect("mkdir");
    git(&repo, &["init", "-q", "-b", "main"]);
    write_fixture(&repo, 0..OBJECTS, 1);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "A"]);
    let old = git(&repo, &["rev-parse", "HEAD"]);
    // B: every tenth object changed, 50 removed, 50 added.
    write_fixture(&repo, 50..OBJECTS + 50, 2);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "B"]);
    let new = git(&repo, &["rev-parse", "HEAD"]);
    // C: one object of one file changed.
    let part = repo.join("environments/bench/part-05.yaml");
    let text = std::fs::read_to_string(&part).expect("read");
    std::fs::write(&part, text.replacen("setting: \"1\"", "setting: \"9\"", 1)).expect("write");
    git(&repo, &["commit", "-q", "-am", "C"]);
    let one_file = git(&repo, &["rev-parse", "HEAD"]);

    let config = dir.path().join("gitopsd.toml");
    std::fs::write(
        &config,
        format!(
            "[repo]\nurl = \"{}\"\n[state]\ndir = \"state\"\n[[environment]]\nname = \"bench\"\npath = \"environments/bench\"\ntarget = {{ type = \"directory\", path = \"live\" }}\n",
            repo.display()
        ),
    )
    .expect("config");
    let gitopsd = env!("CARGO_BIN_EXE_gitopsd");
    let diff_between = |from: &str, to: &str| {
        let mut command = Command::new(gitopsd);
        command.arg("--config").arg(&config).args([
            "diff",
            "--against",
            from,
            "--rev",
            to,
            "--color",
            "never",
        ]);
        command
    };
    let diff = || diff_between(&old, &new);
    // The first run fills the mirror; it is not measured.
    let first = diff().output().expect("gitopsd diff runs");
    assert_eq!(
        first.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let stats = String::from_utf8_lossy(&first.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string();

    let ours = measure(RUNS, || {}, diff);
    let git_diff = |from: &str, to: &str| {
        let mut command = Command::new("git");
        command.current_dir(&repo).args(["diff", from, to]);
        command
    };
    let theirs = measure(RUNS, || {}, || git_diff(&old, &new));
    let ours_one = measure(RUNS, || {}, || diff_between(&new, &one_file));
    let theirs_one = measure(RUNS, || {}, || git_diff(&new, &one_file));
    println!("fixture: {OBJECTS} objects in {FILES} files; {stats}");
    println!("median of {RUNS} runs, peak RSS over all runs:");
    println!("| command | time | peak memory |");
    println!("| --- | --- | --- |");
    for (name, measured) in [
        ("`gitopsd diff --against A --rev B`", &ours),
        ("`git diff A B`", &theirs),
        (
            "`gitopsd diff --against B --rev C` (one object in one file changed)",
            &ours_one,
        ),
        ("`git diff B C`", &theirs_one),
    ] {
        println!(
            "| {name} | {:.1} ms | {:.1} MiB |",
            measured.median.as_secs_f64() * 1000.0,
            measured.peak_rss_kib as f64 / 1024.0
        );
    }
}
