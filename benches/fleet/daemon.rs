//! The `gitopsd run` process under measurement, read through its HTTP API (`/metrics`,
//! `/status`) and `/proc`.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A running daemon; killed when dropped.
pub struct Daemon {
    child: Child,
    pub address: String,
    /// When the process was started.
    pub started: Instant,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: signals our own child, which has not been reaped yet.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.0 GET; the body of a 200 answer.
fn get(address: &str, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(address).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).ok()?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200")
        .then(|| body.to_string())
        .or_else(|| head.starts_with("HTTP/1.0 200").then(|| body.to_string()))
}

/// The samples of `/metrics` named `name`, by their label text (`verb="list"`).
pub fn samples(metrics: &str, name: &str) -> BTreeMap<String, f64> {
    metrics
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (labels, value) = if let Some(rest) = rest.strip_prefix('{') {
                let (labels, value) = rest.split_once("} ")?;
                (labels.to_string(), value)
            } else {
                (String::new(), rest.strip_prefix(' ')?)
            };
            Some((labels, value.trim().parse().ok()?))
        })
        .collect()
}

impl Daemon {
    /// Starts `gitopsd run` on `config` and waits for its API's address.
    pub fn start(config: &Path, state: &Path, log: &Path) -> Self {
        let log = std::fs::File::create(log).expect("daemon log");
        let started = Instant::now();
        let mut command = Command::new(env!("CARGO_BIN_EXE_gitopsd"));
        command
            .arg("--config")
            .arg(config)
            .arg("run")
            .env("GITOPSD_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log);
        // A heap profiler that hooks malloc (heaptrack's preload library), for the daemon
        // alone: see the README's "Memory" under the fleet benchmark.
        if let Some(preload) = std::env::var_os("FLEET_DAEMON_PRELOAD") {
            command.env("LD_PRELOAD", preload);
        }
        let child = command.spawn().expect("gitopsd starts");
        let mut daemon = Self {
            child,
            address: String::new(),
            started,
        };
        let file = state.join("api.addr");
        let deadline = Instant::now() + Duration::from_secs(60);
        while daemon.address.is_empty() {
            assert!(Instant::now() < deadline, "the daemon's API never came up");
            assert!(
                daemon.child.try_wait().expect("wait").is_none(),
                "the daemon exited"
            );
            if let Ok(text) = std::fs::read_to_string(&file) {
                daemon.address = text.trim().to_string();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        daemon
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn metrics(&self) -> String {
        get(&self.address, "/metrics").expect("/metrics answers")
    }

    /// `/status`, by environment.
    pub fn status(&self) -> BTreeMap<String, Value> {
        let body = get(&self.address, "/status").expect("/status answers");
        let all: Vec<Value> = serde_json::from_str(&body).expect("/status is JSON");
        all.into_iter()
            .filter_map(|entry| Some((entry["environment"].as_str()?.to_string(), entry)))
            .collect()
    }

    /// `gitopsd_kube_requests_total`, by verb.
    pub fn requests(metrics: &str) -> BTreeMap<String, u64> {
        samples(metrics, "gitopsd_kube_requests_total")
            .into_iter()
            .map(|(labels, value)| {
                let verb = labels
                    .trim_start_matches("verb=\"")
                    .trim_end_matches('"')
                    .to_string();
                (verb, value as u64)
            })
            .collect()
    }

    /// Finished passes, by environment.
    pub fn passes(metrics: &str) -> BTreeMap<String, u64> {
        samples(metrics, "gitopsd_reconcile_duration_seconds_count")
            .into_iter()
            .map(|(labels, value)| {
                let environment = labels
                    .trim_start_matches("environment=\"")
                    .trim_end_matches('"')
                    .to_string();
                (environment, value as u64)
            })
            .collect()
    }

    /// The sum of one metric's samples.
    pub fn total(metrics: &str, name: &str) -> f64 {
        samples(metrics, name).values().sum()
    }

    /// Resident and peak resident memory, in KiB (`VmRSS`, `VmHWM`).
    pub fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("the daemon's /proc status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Where the resident memory is, from `/proc/<pid>/smaps`: the brk heap (`[heap]`, glibc's
    /// main arena; jemalloc does not use it), anonymous mappings of 64 MiB and more (glibc's
    /// per-thread arenas reserve that much; jemalloc maps its extents in large mappings too),
    /// other anonymous mappings (thread stacks, large allocations), file pages (the binary,
    /// the libraries); and the thread count.
    pub fn memory_split(&self) -> String {
        let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", self.pid()))
            .expect("the daemon's /proc smaps");
        let (mut heap, mut arenas, mut other_anon, mut file) = (0u64, 0u64, 0u64, 0u64);
        let mut kind = 0;
        for line in smaps.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if let Some(range) = fields
                .first()
                .filter(|f| f.contains('-') && !f.ends_with(':'))
            {
                let (start, end) = range.split_once('-').unwrap_or(("0", "0"));
                let size = u64::from_str_radix(end, 16).unwrap_or(0)
                    - u64::from_str_radix(start, 16).unwrap_or(0);
                kind = match fields.get(5) {
                    Some(&"[heap]") => 0,
                    Some(path) if path.starts_with('/') => 3,
                    _ if size >= 64 << 20 => 1,
                    _ => 2,
                };
            } else if fields.first() == Some(&"Rss:") {
                let kib: u64 = fields.get(1).and_then(|v| v.parse().ok()).unwrap_or(0);
                match kind {
                    0 => heap += kib,
                    1 => arenas += kib,
                    2 => other_anon += kib,
                    _ => file += kib,
                }
            }
        }
        let threads = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find_map(|line| line.strip_prefix("Threads:"))
                    .map(|n| n.trim().to_string())
            })
            .unwrap_or_default();
        let mib = |kib: u64| kib as f64 / 1024.0;
        format!(
            "[heap] {:.0} MiB, anonymous mappings of 64 MiB or more {:.0} MiB, other anonymous {:.0} MiB, file {:.0} MiB; {threads} threads",
            mib(heap),
            mib(arenas),
            mib(other_anon),
            mib(file)
        )
    }

    /// User plus system CPU the daemon has used, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .expect("the daemon's /proc stat");
        let after_name = stat.rsplit(')').next().unwrap_or_default();
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let ticks: u64 =
            fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
        // SAFETY: sysconf has no memory effects.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
        ticks as f64 / per_second as f64
    }
}
