//! Helpers the benchmarks share.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs git in `dir` with a fixed identity and no user config; returns its trimmed stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "bench")
        .env("GIT_AUTHOR_EMAIL", "bench@example.com")
        .env("GIT_COMMITTER_NAME", "bench")
        .env("GIT_COMMITTER_EMAIL", "bench@example.com")
        .output()
        .expect("git runs");
    assert!(output.status.success(), "git {args:?} failed");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Median wall time and largest peak RSS of a command run several times.
#[allow(dead_code, reason = "not every benchmark measures commands this way")]
pub struct Measurement {
    pub median: Duration,
    /// Of the command's own process (wait4's rusage), not of the processes it starts.
    pub peak_rss_kib: i64,
}

/// Runs the command `make` builds `runs` times, calling `before` ahead of each run (unmeasured).
/// Exit codes 0 and 1 (changes found) count as success.
#[allow(dead_code, reason = "not every benchmark measures commands this way")]
pub fn measure(
    runs: usize,
    mut before: impl FnMut(),
    mut make: impl FnMut() -> Command,
) -> Measurement {
    let mut times = Vec::new();
    let mut peak = 0;
    for _ in 0..runs {
        before();
        let mut command = make();
        command.stdout(Stdio::null()).stderr(Stdio::null());
        let start = Instant::now();
        let child = command.spawn().expect("command starts");
        let pid = i32::try_from(child.id()).expect("pid fits");
        let mut status = 0;
        // SAFETY: a zeroed rusage is a valid value for wait4 to fill in.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: waits for our own child; pointers are to live locals.
        let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        times.push(start.elapsed());
        assert_eq!(waited, pid, "wait4 failed");
        assert!(libc::WIFEXITED(status), "command did not exit normally");
        let code = libc::WEXITSTATUS(status);
        assert!(code <= 1, "command failed with exit code {code}");
        peak = peak.max(usage.ru_maxrss);
        std::mem::forget(child); // already reaped by wait4
    }
    times.sort();
    Measurement {
        median: times[runs / 2],
        peak_rss_kib: peak,
    }
}
