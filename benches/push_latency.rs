//! Benchmark: push → live through a push receiver. A `gitopsd run` fetches a repository served
//! by `git daemon` on 127.0.0.1 with `poll_interval = "10m"`; each round commits a change,
//! `git push`es it, sends a signed GitHub-format push event and times from the event to the
//! change being in the directory target. Prints the median of 10 next to the poll interval.
//! Run with `benches/push_latency.sh` (or `cargo bench --bench push_latency`).
// Test and benchmark code drives files and processes directly: the I/O boundary is for the
// daemon's async code.
#![allow(clippy::disallowed_methods)]

mod support;
use support::git;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ROUNDS: usize = 10;
const POLL_INTERVAL: &str = "10m";
const SECRET: &str = "bench-secret";
const EVENT: &str = include_str!("../tests/forge-events/github-push.json");

/// `git daemon --inetd` behind a listener on 127.0.0.1 port 0, one process per connection.
fn serve_git(base: &Path) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    let exec_path = git(base, &["--exec-path"]);
    let binary = Path::new(&exec_path).join("git-daemon");
    let base = base.to_path_buf();
    // Serves until the benchmark exits; each connection's process ends with its connection.
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let Ok(input) = stream.try_clone() else {
                continue;
            };
            let _ = Command::new(&binary)
                .args(["--inetd", "--log-destination=none", "--export-all"])
                .arg(format!("--base-path={}", base.display()))
                .arg(&base)
                .stdin(Stdio::from(OwnedFd::from(input)))
                .stdout(Stdio::from(OwnedFd::from(stream)))
                .stderr(Stdio::null())
                .spawn()
                .map(|mut child| std::thread::spawn(move || child.wait()));
        }
    });
    port
}

fn write_manifest(repo: &Path, round: usize) {
    let dir = repo.join("environments/staging");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(
        dir.join("app.yaml"),
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\ndata:\n  ROUND: \"{round}\"\n"
        ),
    )
    .expect("write manifest");
}

fn live_round(live: &Path) -> Option<usize> {
    let text = std::fs::read_to_string(live.join("shop/ConfigMap/app.yaml")).ok()?;
    text.lines().find_map(|line| {
        line.trim()
            .strip_prefix("ROUND: ")?
            .trim_matches(['"', '\''])
            .parse()
            .ok()
    })
}

fn wait_for(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

/// POSTs a signed GitHub push event; the status code.
fn send_event(address: &str, body: &str) -> u16 {
    let signature = gitopsd::signing::sign_hex(SECRET.as_bytes(), body.as_bytes());
    let mut stream = TcpStream::connect(address).expect("connect to the receivers");
    write!(
        stream,
        "POST /hooks/github HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Type: application/json\r\nX-GitHub-Event: push\r\nX-Hub-Signature-256: sha256={signature}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("answer");
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let work = root.join("work");
    let bare = root.join("repo.git");
    std::fs::create_dir_all(&work).expect("mkdir");
    git(
        root,
        &[
            "init",
            "-q",
            "--bare",
            "-b",
            "main",
            &bare.display().to_string(),
        ],
    );
    git(&work, &["init", "-q", "-b", "main"]);
    git(
        &work,
        &["remote", "add", "origin", &bare.display().to_string()],
    );
    write_manifest(&work, 0);
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "round 0"]);
    git(&work, &["push", "-q", "origin", "main"]);
    let port = serve_git(root);
    let served = format!("127.0.0.1:{port}/repo");
    {
        use std::os::unix::fs::PermissionsExt as _;
        let secret = root.join("hook-secret");
        std::fs::write(&secret, SECRET).expect("secret");
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let config = root.join("gitopsd.toml");
    std::fs::write(
        &config,
        format!(
            r#"[repo]
url = "git://{served}.git"
branch = "main"
poll_interval = "{POLL_INTERVAL}"

[receivers]
listen = "127.0.0.1:0"
[[receivers.hook]]
name = "github"
type = "github"
secret_file = "hook-secret"

[state]
dir = "state"

[[environment]]
name = "staging"
path = "environments/staging"
target = {{ type = "directory", path = "live" }}
namespace = "shop"
"#
        ),
    )
    .expect("write config");
    let _daemon = Daemon(
        Command::new(env!("CARGO_BIN_EXE_gitopsd"))
            .args(["--config", &config.display().to_string(), "run"])
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env_remove("GITOPSD_CONFIG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("gitopsd starts"),
    );
    let address_file = root.join("state/receivers.addr");
    let mut receivers = String::new();
    assert!(
        wait_for(Duration::from_secs(30), || {
            receivers = std::fs::read_to_string(&address_file)
                .unwrap_or_default()
                .trim()
                .to_string();
            !receivers.is_empty()
        }),
        "the receivers never listened"
    );
    let live = root.join("live");
    assert!(
        wait_for(Duration::from_secs(30), || live_round(&live) == Some(0)),
        "the first revision never went live"
    );
    let event = EVENT.replace("github.com/Codertocat/Hello-World", &served);
    let mut times = Vec::new();
    for round in 1..=ROUNDS {
        write_manifest(&work, round);
        git(&work, &["commit", "-q", "-am", &format!("round {round}")]);
        git(&work, &["push", "-q", "origin", "main"]);
        let sent = Instant::now();
        assert_eq!(send_event(&receivers, &event), 202, "the event is taken");
        assert!(
            wait_for(Duration::from_secs(60), || live_round(&live) == Some(round)),
            "round {round} never went live"
        );
        times.push(sent.elapsed());
    }
    times.sort();
    let median = times[ROUNDS / 2];
    println!(
        "push → live through a GitHub push event (git daemon on 127.0.0.1, directory target), median of {ROUNDS}: {:.0} ms (fastest {:.0} ms, slowest {:.0} ms); poll_interval = \"{POLL_INTERVAL}\", so without the event a push waits up to 10 minutes (the default 30 s interval: up to 30 s)",
        median.as_secs_f64() * 1000.0,
        times[0].as_secs_f64() * 1000.0,
        times[ROUNDS - 1].as_secs_f64() * 1000.0,
    );
}
