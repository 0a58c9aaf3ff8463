//! Benchmark: `gitopsd run` idling after reconciling two directory environments of 2,004
//! objects each (4 Namespaces, 1,000 ConfigMaps, 500 Deployments, 500 Services in 20 files):
//! resident memory once both are reconciled, and CPU used over the following idle window, at
//! `poll_interval = "5s"` and at the default interval. Reads `/proc/<pid>/status` and
//! `/proc/<pid>/stat`. Run with `benches/run.sh` (or `cargo bench --bench idle`).
// Test and benchmark code drives files and processes directly: the I/O boundary is for the
// daemon's async code.
#![allow(clippy::disallowed_methods)]

mod support;
use support::git;

#[path = "../tests/it/scale.rs"]
mod scale;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long the idle window lasts.
const IDLE: Duration = Duration::from_secs(30);

fn write_environment(repo: &Path, environment: &str) {
    let dir = repo.join(format!("environments/{environment}"));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let namespaces: Vec<String> = (0..4).map(|n| format!("{environment}-{n}")).collect();
    for (file, text) in scale::scale_manifests(&namespaces) {
        std::fs::write(dir.join(file), text).expect("write");
    }
}

fn count_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| {
            let path = entry.path();
            if path.is_dir() { count_files(&path) } else { 1 }
        })
        .sum()
}

/// VmRSS of `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// User plus system CPU time of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    let after_name = stat.rsplit(')').next().expect("stat fields");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; 12 and 13 after the name.
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).unwrap_or(100)
}

fn measure(poll_interval: Option<&str>) -> (u64, f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(&repo).expect("mkdir");
    git(&repo, &["init", "-q", "-b", "main"]);
    let environments = ["staging", "production"];
    for environment in environments {
        write_environment(&repo, environment);
    }
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "fixture"]);
    let mut config = format!("[repo]\nurl = \"{}\"\n", repo.display());
    if let Some(interval) = poll_interval {
        config.push_str(&format!("poll_interval = \"{interval}\"\n"));
    }
    config.push_str("[state]\ndir = \"state\"\n");
    for environment in environments {
        config.push_str(&format!(
            "[[environment]]\nname = \"{environment}\"\npath = \"environments/{environment}\"\ntarget = {{ type = \"directory\", path = \"live/{environment}\" }}\n"
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
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(120);
    while environments
        .iter()
        .any(|e| count_files(&dir.path().join(format!("live/{e}"))) < 2004)
    {
        assert!(Instant::now() < deadline, "not reconciled within 2 minutes");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Let the passes that wrote the files finish, and one more poll run: the steady state.
    let interval = poll_interval.map_or(Ok(Duration::from_secs(30)), humantime::parse_duration);
    std::thread::sleep(interval.expect("a duration") + Duration::from_secs(5));
    let rss = rss_kib(pid);
    let before = cpu_ticks(pid);
    std::thread::sleep(IDLE);
    let used = cpu_ticks(pid) - before;
    let _ = child.kill();
    let _ = child.wait();
    let percent = used as f64 / clock_ticks_per_second() as f64 / IDLE.as_secs_f64() * 100.0;
    (rss, percent)
}

fn main() {
    println!(
        "`gitopsd run`, 2 directory environments × 2,004 objects, idle for {} s:",
        IDLE.as_secs()
    );
    println!("| poll interval | RSS after reconciling | CPU while idle |");
    println!("| --- | --- | --- |");
    for (name, interval) in [("5s", Some("5s")), ("default (30s)", None)] {
        let (rss, cpu) = measure(interval);
        println!("| {name} | {:.1} MiB | {cpu:.2}% |", rss as f64 / 1024.0);
    }
}
