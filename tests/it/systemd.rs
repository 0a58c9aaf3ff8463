//! systemd integration: sd_notify messages caught on a NOTIFY_SOCKET the test creates, the
//! watchdog going silent while the loop is stuck, and SIGHUP reloads.

use std::os::unix::net::UnixDatagram;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::helpers::*;

/// Collects every datagram sent to a NOTIFY_SOCKET, with its arrival time.
struct NotifySocket {
    path: std::path::PathBuf,
    messages: Arc<Mutex<Vec<(Instant, String)>>>,
    _dir: tempfile::TempDir,
}

impl NotifySocket {
    fn bind() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let sink = messages.clone();
        // The thread ends when the test's process does; it only reads.
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            loop {
                if let Ok(size) = socket.recv(&mut buffer) {
                    let text = String::from_utf8_lossy(&buffer[..size]).to_string();
                    sink.lock().expect("lock").push((Instant::now(), text));
                }
                if Arc::strong_count(&sink) == 1 {
                    break;
                }
            }
        });
        Self {
            path,
            messages,
            _dir: dir,
        }
    }

    fn lines(&self) -> Vec<(Instant, String)> {
        self.messages
            .lock()
            .expect("lock")
            .iter()
            .flat_map(|(at, text)| {
                text.lines()
                    .map(|line| (*at, line.to_string()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn has(&self, line: &str) -> bool {
        self.lines().iter().any(|(_, l)| l == line)
    }

    fn pings_since(&self, since: Instant) -> usize {
        self.lines()
            .iter()
            .filter(|(at, line)| *at >= since && line == "WATCHDOG=1")
            .count()
    }
}

/// Starts the daemon with its log in `daemon.log` of the workspace (see [`logged`]).
fn daemon(workspace: &Workspace, socket: &NotifySocket) -> ChildGuard {
    let log = std::fs::File::create(workspace.path("daemon.log")).expect("log file");
    ChildGuard(
        workspace
            .gitopsd(&["run"])
            .env("NOTIFY_SOCKET", &socket.path)
            .env("WATCHDOG_USEC", "2000000")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("daemon starts"),
    )
}

/// How many lines of the daemon's log contain `text`.
fn logged(workspace: &Workspace, text: &str) -> usize {
    std::fs::read_to_string(workspace.path("daemon.log"))
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains(text))
        .count()
}

/// What the daemon logs at each watchdog tick while a loop is stuck.
const NOT_PINGING: &str = "not pinging the watchdog";

#[test]
fn ready_status_watchdog_and_stopping_and_a_stuck_loop_goes_silent() {
    let workspace = Workspace::new();
    // The check hangs for 40 s once `stuck` exists (part of the scenario: a stuck loop) and
    // says so by creating `stuck.hung`; `exec`, so that the process gitopsd kills when it
    // stops is the sleep itself and nothing outlives the test.
    let marker = workspace.path("stuck");
    let extra = format!(
        r#"
[environment.rollout]
verify = "10m"

[[environment.health]]
name = "maybe-stuck"
type = "exec"
command = "sh -c 'if [ -f {marker} ]; then touch {marker}.hung; exec sleep 40; fi'"
interval = "200ms"
failures = 1
timeout = "60s"
"#,
        marker = marker.display()
    );
    workspace.write_config_with(&workspace.repo.dir.display().to_string(), "1h", &extra);
    write_environment(&workspace.repo, "staging", 1);
    write_environment(&workspace.repo, "production", 1);
    workspace.repo.commit("initial");

    let socket = NotifySocket::bind();
    let mut child = daemon(&workspace, &socket);
    assert!(
        wait_for(Duration::from_secs(30), || socket.has("READY=1")),
        "READY=1"
    );
    // Staging sits in its ten-minute verify window, checks healthy: the loop beats.
    let healthy = Instant::now();
    assert!(
        wait_for(Duration::from_secs(20), || socket.pings_since(healthy) >= 2),
        "watchdog pings while the loop runs"
    );
    assert!(
        wait_for(Duration::from_secs(20), || socket.lines().iter().any(
            |(_, l)| l.starts_with("STATUS=") && l.contains("production: at")
        )),
        "{:?}",
        socket.lines()
    );

    // The next check hangs for 40 s: the loop is stuck, so the pings stop.
    std::fs::write(&marker, "").expect("marker");
    assert!(
        wait_for(Duration::from_secs(20), || workspace
            .path("stuck.hung")
            .is_file()),
        "the check never hung"
    );
    let before = logged(&workspace, NOT_PINGING);
    assert!(
        wait_for(Duration::from_secs(20), || logged(&workspace, NOT_PINGING)
            > before),
        "the daemon never noticed the stuck loop"
    );
    let stuck = Instant::now();
    let ticks = logged(&workspace, NOT_PINGING);
    // Two more watchdog ticks pass, each one deciding not to ping.
    assert!(
        wait_for(Duration::from_secs(20), || logged(&workspace, NOT_PINGING)
            >= ticks + 2),
        "the watchdog ticks stopped"
    );
    assert_eq!(
        socket.pings_since(stuck),
        0,
        "no pings while the loop is stuck"
    );

    child.signal(libc::SIGTERM);
    assert!(
        wait_for(Duration::from_secs(10), || socket.has("STOPPING=1")),
        "STOPPING=1"
    );
    let status = child
        .wait_timeout(Duration::from_secs(20))
        .expect("exits after SIGTERM");
    assert!(status.success(), "{status:?}");
}

#[test]
fn sighup_reloads_the_config_and_refuses_an_invalid_one() {
    let workspace = Workspace::new();
    workspace.write_config(&workspace.repo.dir.display().to_string(), "1h");
    write_environment(&workspace.repo, "staging", 1);
    write_environment(&workspace.repo, "production", 1);
    workspace.repo.commit("initial");
    let socket = NotifySocket::bind();
    let child = daemon(&workspace, &socket);
    assert!(wait_for(Duration::from_secs(30), || socket.has("READY=1")));
    assert!(wait_for(Duration::from_secs(10), || workspace
        .live("staging")
        .is_dir()));

    // An invalid config is refused; the daemon keeps serving with the old one.
    let good = std::fs::read_to_string(&workspace.config).expect("config");
    std::fs::write(&workspace.config, "[repo]\nurl = 5\n").expect("bad config");
    child.signal(libc::SIGHUP);
    assert!(
        wait_for(Duration::from_secs(20), || logged(
            &workspace,
            "refused; the running config stays in force"
        ) >= 1),
        "the invalid config was never refused"
    );
    write_environment(&workspace.repo, "staging", 2);
    workspace.repo.commit("two");
    let deployment = workspace
        .live("staging")
        .join("shop/Deployment.apps/web.yaml");
    assert!(
        wait_for(Duration::from_secs(20), || std::fs::read_to_string(
            &deployment
        )
        .is_ok_and(|text| text.contains("replicas: 2"))),
        "still reconciling after a refused reload"
    );
    assert!(!socket.has("RELOADING=1"));

    // A valid new config takes effect: a third environment appears.
    write_environment(&workspace.repo, "qa", 1);
    workspace.repo.commit("qa");
    let with_qa = format!(
        "{good}\n[[environment]]\nname = \"qa\"\npath = \"environments/qa\"\ntarget = {{ type = \"directory\", path = \"live/qa\" }}\nnamespace = \"shop\"\n"
    );
    std::fs::write(&workspace.config, with_qa).expect("new config");
    child.signal(libc::SIGHUP);
    assert!(
        wait_for(Duration::from_secs(20), || workspace
            .live("qa")
            .join("shop")
            .is_dir()),
        "the reloaded config's new environment is reconciled"
    );
    assert!(socket.has("RELOADING=1"));
}

#[test]
fn editing_the_config_file_reloads_it_without_a_signal() {
    let workspace = Workspace::new();
    workspace.write_config(&workspace.repo.dir.display().to_string(), "1h");
    write_environment(&workspace.repo, "staging", 1);
    write_environment(&workspace.repo, "production", 1);
    write_environment(&workspace.repo, "qa", 1);
    workspace.repo.commit("initial");
    let socket = NotifySocket::bind();
    let _child = daemon(&workspace, &socket);
    assert!(wait_for(Duration::from_secs(30), || socket.has("READY=1")));
    // The first pass is done (the config watcher was set up before it).
    assert!(wait_for(Duration::from_secs(20), || workspace
        .live("staging")
        .join("shop")
        .is_dir()));
    let config = std::fs::read_to_string(&workspace.config).expect("config");
    // Written the way editors do: a new file renamed over the old one.
    let replacement = workspace.path("gitopsd.toml.new");
    std::fs::write(
        &replacement,
        format!("{config}\n[[environment]]\nname = \"qa\"\npath = \"environments/qa\"\ntarget = {{ type = \"directory\", path = \"live/qa\" }}\nnamespace = \"shop\"\n"),
    )
    .expect("write");
    std::fs::rename(&replacement, &workspace.config).expect("rename");
    assert!(
        wait_for(Duration::from_secs(20), || workspace
            .live("qa")
            .join("shop")
            .is_dir()),
        "the edited config was picked up"
    );
    assert!(socket.has("RELOADING=1"));
}
