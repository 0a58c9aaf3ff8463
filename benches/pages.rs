//! Benchmark: the status overview (`/`) of a daemon with 50 directory environments, each
//! deployed at two commits (so every row has a current revision with its subject, a last
//! healthy revision and a journal): the page's size and the server's time to gather and render
//! it, from the `Server-Timing` header the page carries. Targets: under 100 KB and under 50 ms.
//! Run with `cargo bench --bench pages` (or `benches/run.sh`).
// Benchmark code drives files and processes directly: the I/O boundary is for the daemon's
// async code.
#![allow(clippy::disallowed_methods)]

mod support;
use support::git;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ENVIRONMENTS: usize = 50;
const REQUESTS: usize = 50;

fn write_environment(repo: &Path, name: &str, replicas: u32) {
    let dir = repo.join(format!("environments/{name}"));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let text = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  NAME: {name}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: {replicas}\n  selector:\n    matchLabels: {{app: web}}\n  template:\n    metadata:\n      labels: {{app: web}}\n    spec:\n      containers:\n        - name: web\n          image: registry.example.com/web:{replicas}\n"
    );
    std::fs::write(dir.join("app.yaml"), text).expect("write");
}

/// GET `path`; answers the body's size and the `Server-Timing` render time in ms.
fn get(address: &str, path: &str) -> (usize, f64) {
    let mut stream = TcpStream::connect(address).expect("connect");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("a head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let millis = head
        .lines()
        .find_map(|line| {
            line.to_ascii_lowercase()
                .strip_prefix("server-timing: render;dur=")
                .map(str::to_string)
        })
        .and_then(|value| value.trim().parse().ok())
        .expect("a Server-Timing header");
    // A chunked body counts its chunk lines too: at most a few bytes per chunk.
    (body.len(), millis)
}

fn healthy_everywhere(state: &Path, revision: &str) -> bool {
    (0..ENVIRONMENTS).all(|index| {
        gitopsd::journal::load_all(state, &format!("env-{index:02}"))
            .unwrap_or_default()
            .iter()
            .any(|record| {
                matches!(&record.event, gitopsd::journal::Event::Healthy { revision: r } if r.0 == revision)
            })
    })
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).expect("mkdir");
    git(&repo, &["init", "-q", "-b", "main"]);
    let names: Vec<String> = (0..ENVIRONMENTS).map(|i| format!("env-{i:02}")).collect();
    for name in &names {
        write_environment(&repo, name, 1);
    }
    git(&repo, &["add", "-A"]);
    git(
        &repo,
        &["commit", "-q", "-m", "first release of every environment"],
    );
    let mut config = format!(
        "[repo]\nurl = \"{}\"\npoll_interval = \"1s\"\n[api]\nlisten = \"127.0.0.1:0\"\n[state]\ndir = \"state\"\n",
        repo.display()
    );
    for name in &names {
        config.push_str(&format!(
            "[[environment]]\nname = \"{name}\"\npath = \"environments/{name}\"\ntarget = {{ type = \"directory\", path = \"live/{name}\" }}\nnamespace = \"shop\"\n"
        ));
    }
    let config_path = dir.path().join("gitopsd.toml");
    std::fs::write(&config_path, config).expect("config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_gitopsd"))
        .arg("--config")
        .arg(&config_path)
        .arg("run")
        .env("GITOPSD_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("gitopsd starts");
    let state = dir.path().join("state");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut address = String::new();
    while address.is_empty() {
        assert!(Instant::now() < deadline, "the API never started");
        address = std::fs::read_to_string(state.join("api.addr"))
            .unwrap_or_default()
            .trim()
            .to_string();
        std::thread::sleep(Duration::from_millis(50));
    }
    for name in &names {
        write_environment(&repo, name, 2);
    }
    git(&repo, &["add", "-A"]);
    git(
        &repo,
        &[
            "commit",
            "-q",
            "-m",
            "second release: two replicas everywhere",
        ],
    );
    let second = git(&repo, &["rev-parse", "HEAD"]);
    while !healthy_everywhere(&state, &second) {
        assert!(
            Instant::now() < deadline,
            "not every environment got healthy in 2 minutes"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The first request fills the page's caches (journals, commit subjects).
    let (_, cold) = get(&address, "/");
    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..REQUESTS {
        let (bytes, millis) = get(&address, "/");
        size = bytes;
        times.push(millis);
    }
    let _ = child.kill();
    let _ = child.wait();
    times.sort_by(f64::total_cmp);
    let median = times[REQUESTS / 2];
    let worst = times[REQUESTS - 1];
    println!("the overview (`/`) of {ENVIRONMENTS} directory environments, {REQUESTS} requests:");
    println!("| page size | render (server), median | render, slowest | first (cold caches) |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| {:.1} KB | {median:.2} ms | {worst:.2} ms | {cold:.2} ms |",
        size as f64 / 1000.0
    );
    println!(
        "targets: under 100 KB ({}), under 50 ms ({})",
        if size < 100_000 { "met" } else { "NOT met" },
        if median < 50.0 { "met" } else { "NOT met" }
    );
}
