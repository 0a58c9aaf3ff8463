//! The measured phases of the fleet benchmark, each on the running daemon.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use crate::daemon::Daemon;
use crate::fixture::{self, Fleet};

/// How often the daemon's API is read while waiting for passes.
const SCRAPE: Duration = Duration::from_millis(100);
/// No-op rounds measured.
const NOOP_ROUNDS: usize = 3;
/// The idle window of the memory reading.
const IDLE: Duration = Duration::from_secs(20);

/// Polls `done` every `every` for up to `limit`; whether it came true.
pub(crate) fn wait_until(limit: Duration, every: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(every);
    }
    false
}

/// The machine's load average, as the report notes it.
pub fn load() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let fields: Vec<&str> = load.split_whitespace().take(3).collect();
    format!(
        "{} cores, load average {} at the end",
        std::thread::available_parallelism().map_or(0, usize::from),
        fields.join(" ")
    )
}

pub fn requests_text(requests: &BTreeMap<String, u64>) -> String {
    requests
        .iter()
        .map(|(verb, count)| format!("{verb} {count}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every fleet environment's name, and `bake`.
fn environment_names(fleet: &Fleet) -> Vec<String> {
    (0..fleet.environments).map(fixture::environment).collect()
}

/// Journal records of `environment` named `event`, oldest first.
pub(crate) fn journal_records(state: &Path, environment: &str, event: &str) -> Vec<Value> {
    let path = state.join("journal").join(format!("{environment}.jsonl"));
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|record| record["event"] == event)
        .collect()
}

pub(crate) fn record_time(record: &Value) -> SystemTime {
    let text = record["time"].as_str().expect("a record's time");
    let time: chrono::DateTime<chrono::Utc> = text.parse().expect("an RFC 3339 time");
    SystemTime::from(time)
}

pub(crate) fn since(later: SystemTime, earlier: SystemTime) -> Duration {
    later.duration_since(earlier).unwrap_or_default()
}

pub struct FirstApply {
    pub took: Duration,
    pub detail: String,
}

/// From the daemon's start until every fleet environment is healthy.
pub fn first_apply(fleet: &Fleet, daemon: &Daemon) -> FirstApply {
    let names = environment_names(fleet);
    let started = daemon.started;
    let healthy = |status: &BTreeMap<String, Value>| {
        names
            .iter()
            .filter(|name| {
                status
                    .get(*name)
                    .is_some_and(|s| s["last_healthy"].is_string())
            })
            .count()
    };
    // The daemon polls every 10 minutes (for the drift row): an environment the cluster
    // blocks gets through on its own retries, with no commit to nudge it.
    let mut last = 0;
    let done = wait_until(
        Duration::from_secs(1800),
        Duration::from_millis(250),
        || {
            let count = healthy(&daemon.status());
            if count / 100 != last / 100 {
                eprintln!(
                    "fleet: {count} environments healthy after {:.1} s",
                    started.elapsed().as_secs_f64()
                );
            }
            last = count;
            count == names.len()
        },
    );
    let took = started.elapsed();
    assert!(
        done,
        "only {last} of {} environments became healthy",
        names.len()
    );
    let metrics = daemon.metrics();
    let requests = Daemon::requests(&metrics);
    let blocked: usize = names
        .iter()
        .map(|name| journal_records(&fleet.state, name, "blocked").len())
        .sum();
    eprintln!(
        "fleet: first apply {:.1} s; requests {}",
        took.as_secs_f64(),
        requests_text(&requests)
    );
    FirstApply {
        took,
        detail: format!(
            "{} PATCH, {} LIST, {} GET; {blocked} blocked passes; daemon CPU {:.1} s, peak RSS {:.0} MiB",
            requests.get("patch").copied().unwrap_or(0),
            requests.get("list").copied().unwrap_or(0),
            requests.get("get").copied().unwrap_or(0),
            daemon.cpu_seconds(),
            daemon.memory_kib().1 as f64 / 1024.0
        ),
    }
}

pub struct Noop {
    pub rounds: usize,
    pub wall: Duration,
    pub lists: u64,
    pub gets: u64,
    pub detail: String,
}

/// Whether every store each environment reads is synced.
fn caches_synced(status: &BTreeMap<String, Value>) -> bool {
    status.values().all(|entry| {
        entry["cache"]
            .as_array()
            .is_some_and(|types| !types.is_empty() && types.iter().all(|t| t["state"] == "synced"))
    })
}

/// No-op rounds: a commit that changes no environment's folder, then every fleet
/// environment's next pass. Wall time from the commit to the last pass's end.
pub fn noop_passes(fleet: &Fleet, daemon: &Daemon) -> Noop {
    let names = environment_names(fleet);
    assert!(
        wait_until(Duration::from_secs(120), Duration::from_secs(1), || {
            caches_synced(&daemon.status())
        }),
        "the watch cache never synced"
    );
    let profile = Profile::start(daemon, "FLEET_PERF_NOOP");
    let cpu_before = daemon.cpu_seconds();
    let mut walls = Vec::new();
    let (mut lists, mut gets, mut patches) = (0, 0, 0);
    let (mut passes_seen, mut pass_seconds, mut fetch_seconds, mut scrape) =
        (0, 0.0, 0.0, Duration::ZERO);
    for round in 0..NOOP_ROUNDS {
        // Let the passes of the previous round (and the bake environment's) settle.
        std::thread::sleep(Duration::from_secs(3));
        let metrics = daemon.metrics();
        let before = Daemon::passes(&metrics);
        let requests = Daemon::requests(&metrics);
        let seconds = Daemon::total(&metrics, "gitopsd_reconcile_duration_seconds_sum");
        let fetched = Daemon::total(&metrics, "gitopsd_git_fetch_duration_seconds_sum");
        let started = Instant::now();
        fleet.touch_readme(round);
        let mut after = BTreeMap::new();
        let mut last = String::new();
        let done = wait_until(Duration::from_secs(300), SCRAPE, || {
            let asked = Instant::now();
            last = daemon.metrics();
            scrape = scrape.max(asked.elapsed());
            after = Daemon::passes(&last);
            names.iter().all(|name| {
                after.get(name).copied().unwrap_or(0) > before.get(name).copied().unwrap_or(0)
            })
        });
        let wall = started.elapsed();
        assert!(done, "round {round}: not every environment passed");
        walls.push(wall);
        let now = Daemon::requests(&last);
        let delta = |verb: &str| {
            now.get(verb).copied().unwrap_or(0) - requests.get(verb).copied().unwrap_or(0)
        };
        lists += delta("list");
        gets += delta("get");
        patches += delta("patch");
        passes_seen += names
            .iter()
            .map(|n| after[n] - before.get(n).copied().unwrap_or(0))
            .sum::<u64>();
        pass_seconds += Daemon::total(&last, "gitopsd_reconcile_duration_seconds_sum") - seconds;
        fetch_seconds += Daemon::total(&last, "gitopsd_git_fetch_duration_seconds_sum") - fetched;
        eprintln!(
            "fleet: no-op round {round}: {} ms; LIST {} GET {} PATCH {}",
            wall.as_millis(),
            delta("list"),
            delta("get"),
            delta("patch")
        );
    }
    // Includes the 3 s pauses between rounds, when the daemon idles (about 2% CPU).
    let cpu = daemon.cpu_seconds() - cpu_before;
    drop(profile);
    walls.sort();
    Noop {
        rounds: NOOP_ROUNDS,
        wall: walls[NOOP_ROUNDS / 2],
        lists,
        gets,
        detail: format!(
            "from the commit (100 ms ref-change settle, fetch {:.0} ms on average) to the last environment's pass; rounds {}; {patches} PATCH; passes {:.1} ms on average ({passes_seen} passes); daemon CPU {:.1} s a round, {:.2} ms per pass; a /metrics read took up to {} ms",
            fetch_seconds * 1000.0 / NOOP_ROUNDS as f64,
            walls
                .iter()
                .map(|w| format!("{} ms", w.as_millis()))
                .collect::<Vec<_>>()
                .join(", "),
            pass_seconds * 1000.0 / passes_seen.max(1) as f64,
            cpu / NOOP_ROUNDS as f64,
            cpu * 1000.0 / passes_seen.max(1) as f64,
            scrape.as_millis()
        ),
    }
}

pub struct Idle {
    pub rss_kib: u64,
    pub peak_kib: u64,
    pub cpu_percent: f64,
    pub cached: u64,
    pub window: Duration,
    /// Where the resident memory is (see [`Daemon::memory_split`]).
    pub split: String,
}

/// Resident memory once every object is cached and the daemon idles, and CPU over the window.
pub fn idle_memory(daemon: &Daemon) -> Idle {
    std::thread::sleep(Duration::from_secs(5));
    let cpu = daemon.cpu_seconds();
    std::thread::sleep(IDLE);
    let used = daemon.cpu_seconds() - cpu;
    let (rss_kib, peak_kib) = daemon.memory_kib();
    let split = daemon.memory_split();
    let cached = Daemon::total(&daemon.metrics(), "gitopsd_cache_objects") as u64;
    Idle {
        rss_kib,
        peak_kib,
        cpu_percent: used / IDLE.as_secs_f64() * 100.0,
        cached,
        window: IDLE,
        split,
    }
}

/// `perf record -g` of the daemon while it lives, when the environment variable `variable`
/// names the output file (`FLEET_PERF_NOOP=/tmp/noop.data benches/fleet.sh`).
struct Profile(Option<std::process::Child>);

impl Profile {
    fn start(daemon: &Daemon, variable: &str) -> Self {
        let Some(output) = std::env::var_os(variable) else {
            return Self(None);
        };
        let child = std::process::Command::new("perf")
            .args(["record", "-g", "-F", "499", "-o"])
            .arg(&output)
            .args(["-p", &daemon.pid().to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("perf starts (install linux-perf)");
        // perf needs a moment to attach before the first round's commit.
        std::thread::sleep(Duration::from_secs(1));
        eprintln!(
            "fleet: perf record of the daemon into {}",
            output.to_string_lossy()
        );
        Self(Some(child))
    }
}

impl Drop for Profile {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            // SIGINT makes perf write its file out.
            let _ = std::process::Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}
