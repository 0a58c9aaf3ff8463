//! Shared test helpers: real git repositories made with the git CLI, a configured workspace,
//! the gitopsd binary, and snapshots of live folders.

use std::collections::BTreeMap;
use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Runs git in `dir` with a fixed identity and no user or system config.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .current_dir(dir)
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Test Author")
        .env("GIT_AUTHOR_EMAIL", "author@example.com")
        .env("GIT_COMMITTER_NAME", "Test Author")
        .env("GIT_COMMITTER_EMAIL", "author@example.com")
        .output()
        .expect("git runs because it is installed on every test machine");
    assert!(
        output.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// A work-tree repository the tests commit to.
pub struct Repo {
    pub dir: PathBuf,
}

impl Repo {
    pub fn init(dir: PathBuf) -> Self {
        fs::create_dir_all(&dir).expect("create repo dir");
        git(&dir, &["init", "-q", "-b", "main"]);
        Self { dir }
    }

    pub fn write(&self, path: &str, text: &str) {
        let path = self.dir.join(path);
        fs::create_dir_all(path.parent().expect("files live in folders")).expect("mkdir");
        fs::write(path, text).expect("write file");
    }

    pub fn remove(&self, path: &str) {
        fs::remove_file(self.dir.join(path)).expect("remove file");
    }

    /// Commits everything and returns the new commit id.
    pub fn commit(&self, message: &str) -> String {
        git(&self.dir, &["add", "-A"]);
        git(&self.dir, &["commit", "-q", "--allow-empty", "-m", message]);
        git(&self.dir, &["rev-parse", "HEAD"])
    }
}

/// A repository, a state folder and live folders under one temporary directory, with a
/// config for two environments (`staging`, `production`).
pub struct Workspace {
    pub root: TempDir,
    pub repo: Repo,
    pub config: PathBuf,
}

impl Workspace {
    pub fn new() -> Self {
        let root = tempfile::tempdir().expect("tempdir");
        let repo = Repo::init(root.path().join("repo"));
        let workspace = Self {
            config: root.path().join("gitopsd.toml"),
            repo,
            root,
        };
        workspace.write_config(&workspace.repo.dir.display().to_string(), "30s");
        workspace
    }

    /// Writes the config with another repository url and poll interval.
    pub fn write_config(&self, url: &str, poll_interval: &str) {
        self.write_config_with(url, poll_interval, "");
    }

    /// Writes the config; `staging_extra` is TOML appended to the staging environment (its
    /// `[environment.rollout]` and `[[environment.health]]` tables).
    pub fn write_config_with(&self, url: &str, poll_interval: &str, staging_extra: &str) {
        let text = format!(
            r#"
[repo]
url = "{url}"
branch = "main"
poll_interval = "{poll_interval}"
max_file_bytes = 65536

[state]
dir = "state"

[[environment]]
name = "production"
path = "environments/production"
target = {{ type = "directory", path = "live/production" }}
namespace = "shop"

[[environment]]
name = "staging"
path = "environments/staging"
target = {{ type = "directory", path = "live/staging" }}
namespace = "shop"
{staging_extra}
"#
        );
        fs::write(&self.config, text).expect("write config");
    }

    /// Replaces `from` with `to` in the config file; `from` must be there, so a test never
    /// runs on a config it only believes it changed.
    pub fn edit_config(&self, from: &str, to: &str) {
        let config = fs::read_to_string(&self.config).expect("read config");
        assert!(
            config.contains(from),
            "{from:?} is not in the config:\n{config}"
        );
        fs::write(&self.config, config.replacen(from, to, 1)).expect("write config");
    }

    /// Makes a bare repository `remote.git` the work tree's `origin` and gitopsd's url (so
    /// `git push origin main` is what reaches gitopsd); returns its path.
    pub fn bare_remote(&self) -> PathBuf {
        let bare = self.path("remote.git");
        let bare_text = bare.display().to_string();
        git(
            self.root.path(),
            &["init", "-q", "--bare", "-b", "main", &bare_text],
        );
        git(&self.repo.dir, &["remote", "add", "origin", &bare_text]);
        self.edit_config(
            &format!("url = \"{}\"", self.repo.dir.display()),
            &format!("url = \"{bare_text}\""),
        );
        bare
    }

    /// Writes the API token file, readable by its owner only (gitopsd refuses any other).
    pub fn write_token(&self, token: &str) {
        use std::os::unix::fs::PermissionsExt as _;
        let path = self.path("api-token");
        fs::write(&path, format!("{token}\n")).expect("token");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod 600");
    }

    /// Lets a revision empty the staging environment (`allow_empty = true`).
    pub fn allow_empty_staging(&self) {
        self.edit_config(
            "path = \"environments/staging\"\n",
            "path = \"environments/staging\"\nallow_empty = true\n",
        );
    }

    /// Adds lines to the `[repo]` table.
    pub fn add_repo_keys(&self, lines: &str) {
        self.edit_config(
            "max_file_bytes = 65536\n",
            &format!("max_file_bytes = 65536\n{lines}\n"),
        );
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.root.path().join(relative)
    }

    pub fn live(&self, environment: &str) -> PathBuf {
        self.path(&format!("live/{environment}"))
    }

    /// A gitopsd command with this workspace's config and a clean environment.
    pub fn gitopsd(&self, args: &[&str]) -> Command {
        gitopsd_with_config(&self.config, args)
    }

    /// Starts gitopsd with `args` in the background, its output discarded; killed when the
    /// guard drops.
    pub fn spawn(&self, args: &[&str]) -> ChildGuard {
        ChildGuard(
            self.gitopsd(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("gitopsd starts"),
        )
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.gitopsd(args).output().expect("gitopsd runs")
    }

    pub fn journal(&self, environment: &str) -> Vec<gitopsd::journal::Record> {
        gitopsd::journal::load_all(&self.path("state"), environment)
            .expect("journal reads back whole")
    }
}

/// A gitopsd command with `config`, isolated from the user's git and gitopsd settings.
pub fn gitopsd_with_config(config: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gitopsd"));
    command
        .arg("--config")
        .arg(config)
        .args(args)
        .env("GITOPSD_LOG", "info")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env_remove("GITOPSD_CONFIG");
    command
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts an exit code, showing the output when it differs.
pub fn assert_exit(output: &Output, code: i32) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        stdout(output),
        stderr(output)
    );
}

/// Every file under `dir` (relative path → bytes); empty when `dir` does not exist.
pub fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, files: &mut BTreeMap<String, Vec<u8>>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                walk(base, &path, files);
            } else {
                let relative = path
                    .strip_prefix(base)
                    .expect("under base")
                    .display()
                    .to_string();
                files.insert(relative, fs::read(&path).expect("read file"));
            }
        }
    }
    let mut files = BTreeMap::new();
    walk(dir, dir, &mut files);
    files
}

/// Paths that were added, removed or changed between two trees.
pub fn changed_paths(
    before: &BTreeMap<String, Vec<u8>>,
    after: &BTreeMap<String, Vec<u8>>,
) -> Vec<String> {
    let mut paths: Vec<String> = before
        .keys()
        .chain(after.keys())
        .filter(|path| before.get(*path) != after.get(*path))
        .cloned()
        .collect();
    paths.sort();
    paths.dedup();
    paths
}

/// Polls `condition` every 20 ms until it holds or `limit` passes. The one place tests wait:
/// every wait is on an observable condition, with a deadline.
pub fn wait_for(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        // The poll interval of this waiting helper, not a synchronisation of its own.
        std::thread::sleep(Duration::from_millis(20));
    }
    condition()
}

/// A child process killed (and reaped) when dropped, so a failing test leaves nothing behind.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    pub fn pid(&self) -> i32 {
        i32::try_from(self.0.id()).expect("pids fit in i32")
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        let result = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(result, 0, "kill({}, {signal}) failed", self.pid());
    }

    /// Waits up to `limit` for the child to exit.
    pub fn wait_timeout(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let mut status = None;
        wait_for(limit, || {
            status = self.0.try_wait().expect("try_wait");
            status.is_some()
        });
        status
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Adds an `[api]` on 127.0.0.1 port 0 (the system picks a free port; the daemon writes the
/// one it got to `<state dir>/api.addr`) with `token` in its token file; `extra_top` is TOML
/// put before `[state]`.
pub fn configure_api(workspace: &Workspace, token: &str, extra_top: &str) {
    workspace.write_token(token);
    workspace.edit_config(
        "[state]",
        &format!(
            "[api]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"api-token\"\n\n{extra_top}[state]"
        ),
    );
}

/// Where a daemon of `workspace` reports its API's address.
pub fn api_address_file(workspace: &Workspace) -> PathBuf {
    workspace.path("state/api.addr")
}

/// Starts `command` (a `gitopsd run` of `workspace`, whose config has an `[api]` on port 0) and
/// waits for the address its API listens on, from `<state dir>/api.addr`. An address file a
/// killed daemon left is removed first, so the address is this daemon's.
pub fn spawn_with_api(workspace: &Workspace, command: &mut Command) -> (ChildGuard, String) {
    let file = api_address_file(workspace);
    match fs::remove_file(&file) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => panic!("cannot remove {}: {error}", file.display()),
    }
    let mut child = ChildGuard(command.spawn().expect("gitopsd starts"));
    let mut address = String::new();
    let reported = wait_for(Duration::from_secs(30), || {
        address = fs::read_to_string(&file)
            .unwrap_or_default()
            .trim()
            .to_string();
        !address.is_empty() || child.0.try_wait().expect("try_wait").is_some()
    });
    assert!(
        reported && !address.is_empty(),
        "the daemon never wrote {} (exited: {:?})",
        file.display(),
        child.0.try_wait()
    );
    assert!(
        address.starts_with("127.0.0.1:"),
        "the API listens on 127.0.0.1 only: {address}"
    );
    (child, address)
}

/// A running `gitopsd run` with an `[api]` on 127.0.0.1 (port 0) and `token` in its token
/// file, output discarded; killed when dropped. Returns it and the API's address.
pub fn daemon_with_api(workspace: &Workspace, token: &str) -> (ChildGuard, String) {
    configure_api(workspace, token, "");
    spawn_with_api(
        workspace,
        workspace
            .gitopsd(&["run"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
}

/// The sum of the samples named `name` in the daemon's `/metrics` whose labels contain
/// `labels` (`""`: every one); `None` when the API does not answer.
pub fn metric_sum(address: &str, name: &str, labels: &str) -> Option<u64> {
    let (status, body) = http_request(address, "GET", "/metrics", &[], "")?;
    (status == 200).then(|| {
        body.lines()
            .filter(|line| {
                line.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
                    && line.contains(labels)
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|value| value as u64)
            .sum()
    })
}

/// Passes over `environment` the daemon has finished, of any outcome (the count of
/// `gitopsd_reconcile_duration_seconds`).
pub fn passes(address: &str, environment: &str) -> Option<u64> {
    metric_sum(
        address,
        "gitopsd_reconcile_duration_seconds_count",
        &format!("environment=\"{environment}\""),
    )
}

/// Fetches the daemon has finished, failed ones included.
pub fn fetches(address: &str) -> Option<u64> {
    metric_sum(address, "gitopsd_git_fetch_duration_seconds_count", "")
}

/// Waits until the daemon has finished a pass over `environment` that began after a fetch
/// that began after this call, so that what the test changed before calling (a commit, a
/// pause) has been seen: the fetch count moves by three (fetches run one after the other, so
/// the second new one began after the call, and the third began after its tip was handed on),
/// then the pass count moves by two (the second new pass began after that). Only then is
/// "nothing happened" worth asserting. Needs a daemon that keeps fetching (a short
/// `poll_interval`).
pub fn wait_for_pass_after_now(address: &str, environment: &str) -> bool {
    let limit = Duration::from_secs(60);
    let Some(fetched) = fetches(address) else {
        return false;
    };
    if !wait_for(limit, || {
        fetches(address).is_some_and(|now| now >= fetched + 3)
    }) {
        return false;
    }
    let Some(passed) = passes(address, environment) else {
        return false;
    };
    wait_for(limit, || {
        passes(address, environment).is_some_and(|now| now >= passed + 2)
    })
}

/// A listening socket on 127.0.0.1 port 0 serving each connection with a process of its own
/// that talks over its stdin and stdout (inetd style: `git daemon --inetd`, `sshd -i`), so
/// servers that cannot report a port the system picked still need no reserved port. The
/// processes are killed when it drops.
pub struct InetdServer {
    pub port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    children: std::sync::Arc<std::sync::Mutex<Vec<Child>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InetdServer {
    pub fn serve(command: impl Fn() -> Command + Send + 'static) -> Self {
        use std::os::fd::OwnedFd;
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let children = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Child>::new()));
        let (stopping, running) = (stop.clone(), children.clone());
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let Ok(input) = stream.try_clone() else {
                    continue;
                };
                let child = command()
                    .stdin(Stdio::from(OwnedFd::from(input)))
                    .stdout(Stdio::from(OwnedFd::from(stream)))
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("the server process starts");
                let mut running = running.lock().unwrap_or_else(|p| p.into_inner());
                // Reap the ones that are done, so a long test keeps no zombies.
                running.retain_mut(|child| child.try_wait().ok().flatten().is_none());
                running.push(child);
            }
        });
        Self {
            port,
            stop,
            children,
            thread: Some(thread),
        }
    }
}

impl Drop for InetdServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wakes the accept loop, which then sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        for mut child in self
            .children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `git daemon` serving `base` on 127.0.0.1, at a port the system picked: git daemon cannot
/// report a port it was given as 0, so it runs in inetd mode behind an [`InetdServer`].
pub struct GitDaemon {
    pub port: u16,
    _server: InetdServer,
}

impl GitDaemon {
    pub fn serve(base: &Path) -> Self {
        // `git daemon` runs git-daemon as a child of its own; start that binary directly so
        // the kill reaches the process that serves.
        let exec_path = git(base, &["--exec-path"]);
        let binary = Path::new(&exec_path).join("git-daemon");
        let base = base.to_path_buf();
        let server = InetdServer::serve(move || {
            let mut command = Command::new(&binary);
            command.args([
                "--inetd",
                "--log-destination=none",
                "--export-all",
                &format!("--base-path={}", base.display()),
                &base.display().to_string(),
            ]);
            command
        });
        Self {
            port: server.port,
            _server: server,
        }
    }
}

/// Manifests for one environment: a ConfigMap, a Deployment and a Service in one multi-document
/// file, plus a second file with one ConfigMap named `extra`.
pub fn write_environment(repo: &Repo, environment: &str, replicas: u32) {
    repo.write(
        &format!("environments/{environment}/app.yaml"),
        &format!(
            r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: app-config
data:
  MODE: {environment}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: web}}
  template:
    metadata:
      labels: {{app: web}}
    spec:
      containers:
        - name: web
          image: registry.example.com/web:1.0.0
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {{app: web}}
  ports: [{{port: 80}}]
"#
        ),
    );
    repo.write(
        &format!("environments/{environment}/extra.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: extra\ndata:\n  a: \"1\"\n",
    );
}

/// One HTTP/1.1 request over a plain TCP connection; returns the status and body.
pub fn http_request(
    address: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = TcpStream::connect(address).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    // axum answers small bodies with Content-Length; chunked ones are joined here.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut joined = String::new();
        let mut rest = body;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let size = usize::from_str_radix(size.trim(), 16).ok()?;
            if size == 0 {
                break;
            }
            joined.push_str(tail.get(..size)?);
            rest = tail.get(size + 2..)?;
        }
        joined
    } else {
        body.to_string()
    };
    Some((status, body))
}

/// `N` distinct ports on 127.0.0.1 that were free a moment ago, for external processes that
/// must be told their ports and cannot report ports the system picked (kube-apiserver, etcd,
/// kube-controller-manager). Another process may take one before they bind it: callers retry
/// the start with new ports when it fails.
pub fn ports_for_external_process<const N: usize>() -> [u16; N] {
    // Held together until all are picked, so that no port is handed out twice.
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port"))
        .collect();
    std::array::from_fn(|index| listeners[index].local_addr().expect("local addr").port())
}
