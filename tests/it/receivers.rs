//! Push receivers against a real `git daemon` repository with `poll_interval = "10m"`: a signed
//! push event makes the pushed revision live at once; a bad signature, another repository,
//! another branch or a tag causes no fetch (the fetch counter says so); each forge's documented
//! event format is taken with its own signature scheme; hostile requests get 413, 400, 404 and
//! 429 and cause no fetch either.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::helpers::*;

pub const SECRET: &str = "It's a Secret to Everybody";
const GITHUB: &str = include_str!("../forge-events/github-push.json");
const GITLAB: &str = include_str!("../forge-events/gitlab-push.json");
const GITEA: &str = include_str!("../forge-events/gitea-push.json");
const BITBUCKET: &str = include_str!("../forge-events/bitbucket-server-refs-changed.json");

/// A daemon fetching from `git daemon` every 10 minutes, with its API (for the metrics) and
/// its receivers on 127.0.0.1, and a work tree whose `origin` is the served repository.
pub struct ReceiverDaemon {
    pub workspace: Workspace,
    pub _git: GitDaemon,
    pub _daemon: ChildGuard,
    pub api: String,
    pub receivers: String,
    /// `127.0.0.1:<port>/proj/repository`: what the forge events are rewritten to name.
    pub served: String,
}

/// The `[[receivers.hook]]` tables for `hooks` (`(name, type)`), with the shared secret file.
fn hook_tables(hooks: &[(&str, &str)]) -> String {
    hooks
        .iter()
        .map(|(name, kind)| {
            format!(
                "[[receivers.hook]]\nname = \"{name}\"\ntype = \"{kind}\"\nsecret_file = \"hook-secret\"\n"
            )
        })
        .collect()
}

impl ReceiverDaemon {
    /// Starts it with `hooks` and `receivers_extra` (more `[receivers]` keys), once the first
    /// revision (one replica in each environment) is live.
    pub fn start(hooks: &[(&str, &str)], receivers_extra: &str) -> Self {
        let workspace = Workspace::new();
        let bare = workspace.path("proj/repository.git");
        fs::create_dir_all(workspace.path("proj")).expect("mkdir proj");
        git(
            workspace.root.path(),
            &[
                "init",
                "-q",
                "--bare",
                "-b",
                "main",
                &bare.display().to_string(),
            ],
        );
        git(
            &workspace.repo.dir,
            &["remote", "add", "origin", &bare.display().to_string()],
        );
        let git_daemon = GitDaemon::serve(workspace.root.path());
        let served = format!("127.0.0.1:{}/proj/repository", git_daemon.port);
        workspace.write_config(&format!("git://{served}.git"), "10m");
        write_environment(&workspace.repo, "staging", 1);
        write_environment(&workspace.repo, "production", 1);
        workspace.repo.commit("initial");
        git(&workspace.repo.dir, &["push", "-q", "origin", "main"]);
        {
            use std::os::unix::fs::PermissionsExt as _;
            let secret = workspace.path("hook-secret");
            fs::write(&secret, format!("{SECRET}\n")).expect("write secret");
            fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).expect("chmod");
        }
        let receivers = format!(
            "[receivers]\nlisten = \"127.0.0.1:0\"\n{receivers_extra}\n{}\n",
            hook_tables(hooks)
        );
        configure_api(&workspace, "api-token-for-tests", &receivers);
        let (daemon, api) = spawn_with_api(
            &workspace,
            workspace
                .gitopsd(&["run"])
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let address_file = workspace.path("state/receivers.addr");
        let mut receivers = String::new();
        assert!(
            wait_for(Duration::from_secs(30), || {
                receivers = fs::read_to_string(&address_file)
                    .unwrap_or_default()
                    .trim()
                    .to_string();
                !receivers.is_empty()
            }),
            "the daemon never wrote {}",
            address_file.display()
        );
        let this = Self {
            workspace,
            _git: git_daemon,
            _daemon: daemon,
            api,
            receivers,
            served,
        };
        assert!(
            wait_for(Duration::from_secs(30), || this.replicas("staging")
                == Some(1)),
            "the first revision never went live"
        );
        this
    }

    /// The replicas of the live Deployment `web` in `environment`.
    pub fn replicas(&self, environment: &str) -> Option<u32> {
        let file = self
            .workspace
            .live(environment)
            .join("shop/Deployment.apps/web.yaml");
        let text = fs::read_to_string(file).ok()?;
        text.lines()
            .find_map(|line| line.trim().strip_prefix("replicas: ")?.parse().ok())
    }

    /// Commits `replicas` replicas for staging and pushes it to the served repository.
    pub fn push_replicas(&self, replicas: u32) {
        write_environment(&self.workspace.repo, "staging", replicas);
        self.workspace.repo.commit(&format!("{replicas} replicas"));
        git(&self.workspace.repo.dir, &["push", "-q", "origin", "main"]);
    }

    pub fn fetches(&self) -> u64 {
        fetches(&self.api).expect("the API answers")
    }

    /// `gitopsd_receiver_requests_total` for `hook` and `result`.
    pub fn requests(&self, hook: &str, result: &str) -> u64 {
        metric_sum(
            &self.api,
            "gitopsd_receiver_requests_total",
            &format!("hook=\"{hook}\",result=\"{result}\""),
        )
        .expect("the API answers")
    }

    /// POSTs `body` to `/hooks/<hook>` with `headers`; the status and body.
    pub fn post(&self, hook: &str, headers: &[(String, String)], body: &str) -> (u16, String) {
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        http_request(
            &self.receivers,
            "POST",
            &format!("/hooks/{hook}"),
            &headers,
            body,
        )
        .expect("the receivers answer")
    }
}

/// The headers `kind`'s forge sends with a push of `body` signed with `secret`.
pub fn forge_headers(kind: &str, secret: &str, body: &str) -> Vec<(String, String)> {
    let hex = gitopsd::signing::sign_hex(secret.as_bytes(), body.as_bytes());
    let pairs: Vec<(&str, String)> = match kind {
        "github" => vec![
            ("X-GitHub-Event", "push".into()),
            (
                "X-GitHub-Delivery",
                "72d3162e-cc78-11e3-81ab-4c9367dc0958".into(),
            ),
            ("X-Hub-Signature-256", format!("sha256={hex}")),
            ("Content-Type", "application/json".into()),
        ],
        "gitlab" => vec![
            ("X-Gitlab-Event", "Push Hook".into()),
            ("X-Gitlab-Token", secret.into()),
            ("Content-Type", "application/json".into()),
        ],
        "gitea" => vec![
            ("X-Gitea-Event", "push".into()),
            ("X-Gitea-Signature", hex),
            ("Content-Type", "application/json".into()),
        ],
        "forgejo" => vec![
            ("X-Forgejo-Event", "push".into()),
            ("X-Forgejo-Signature", hex),
            ("Content-Type", "application/json".into()),
        ],
        "bitbucket-server" => vec![
            ("X-Event-Key", "repo:refs_changed".into()),
            ("X-Hub-Signature", format!("sha256={hex}")),
            ("Content-Type", "application/json; charset=utf-8".into()),
        ],
        _ => vec![("X-Signature", format!("sha256={hex}"))],
    };
    pairs
        .into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .collect()
}

/// `kind`'s documented push event, its repository rewritten to `served`.
pub fn forge_event(kind: &str, served: &str) -> String {
    match kind {
        "github" => GITHUB.replace("github.com/Codertocat/Hello-World", served),
        "gitlab" => GITLAB.replace("example.com/mike/diaspora", served),
        "gitea" | "forgejo" => GITEA.replace("localhost:3000/gitea/webhooks", served),
        // Named by project key and slug: PROJ/repository, the served path.
        "bitbucket-server" => BITBUCKET.to_string(),
        _ => "{\"anything\": true}".to_string(),
    }
}

/// Waits for staging to have `replicas` replicas live; how long that took from `since`.
fn live_within(daemon: &ReceiverDaemon, replicas: u32, since: Instant) -> Duration {
    assert!(
        wait_for(Duration::from_secs(30), || daemon.replicas("staging")
            == Some(replicas)),
        "{replicas} replicas never went live (the poll interval is 10 minutes)"
    );
    since.elapsed()
}

#[test]
fn a_signed_push_event_makes_the_pushed_revision_live_and_others_fetch_nothing() {
    let daemon = ReceiverDaemon::start(&[("github", "github")], "");
    let before = daemon.fetches();
    daemon.push_replicas(2);

    let good = forge_event("github", &daemon.served);
    let mut bad_signature = forge_headers("github", SECRET, &good);
    bad_signature[2].1 = format!(
        "sha256={}",
        gitopsd::signing::sign_hex(b"not the secret", good.as_bytes())
    );
    let other_repository = good.replace("proj/repository", "proj/other");
    let other_branch = good.replace("refs/heads/main", "refs/heads/feature");
    let tag = good.replace("refs/heads/main", "refs/tags/v1.0.0");
    let (status, body) = daemon.post("github", &bad_signature, &good);
    assert_eq!((status, body.as_str()), (401, ""), "no detail");
    let unsigned: Vec<(String, String)> = forge_headers("github", SECRET, &good)
        .into_iter()
        .filter(|(name, _)| name != "X-Hub-Signature-256")
        .collect();
    assert_eq!(daemon.post("github", &unsigned, &good).0, 401);
    for (body, why) in [
        (&other_repository, "another repository"),
        (&other_branch, "another branch"),
        (&tag, "a tag"),
    ] {
        let (status, answer) = daemon.post("github", &forge_headers("github", SECRET, body), body);
        assert_eq!(status, 202, "{why}: {answer}");
        assert_eq!(answer.trim(), format!("ignored: {why}"));
    }
    let mut ping = forge_headers("github", SECRET, "{\"zen\": \"Design for failure.\"}");
    ping[0].1 = "ping".into();
    assert_eq!(
        daemon
            .post("github", &ping, "{\"zen\": \"Design for failure.\"}")
            .0,
        200
    );
    assert_eq!(daemon.fetches(), before, "no event so far fetched");
    assert_eq!(daemon.replicas("staging"), Some(1), "nothing was fetched");

    let sent = Instant::now();
    let (status, answer) = daemon.post("github", &forge_headers("github", SECRET, &good), &good);
    assert_eq!((status, answer.trim()), (202, "fetch queued"));
    let took = live_within(&daemon, 2, sent);
    eprintln!("push event → live: {took:?} (poll interval 10m)");
    // Every rejected event above was answered before this one was sent, and a fetch it had
    // queued would have run before or alongside this one: the count would be past one.
    assert_eq!(
        daemon.fetches(),
        before + 1,
        "one fetch, for the good event"
    );
    assert_eq!(daemon.requests("github", "fetch"), 1);
    assert_eq!(daemon.requests("github", "unauthorized"), 2);
    assert_eq!(daemon.requests("github", "ignored"), 3);
    assert_eq!(daemon.requests("github", "ping"), 1);
}

#[test]
fn every_receiver_type_takes_its_forges_documented_push_event() {
    let kinds = [
        ("github", "github"),
        ("gitlab", "gitlab"),
        ("gitea", "gitea"),
        ("forgejo", "gitea"),
        ("bitbucket-server", "bitbucket-server"),
        ("generic-hmac", "generic-hmac"),
    ];
    let daemon = ReceiverDaemon::start(&kinds, "");
    let mut replicas = 1;
    let start = daemon.fetches();
    for (round, (hook, kind)) in (1..).zip(kinds) {
        let body = forge_event(hook, &daemon.served);
        replicas += 1;
        daemon.push_replicas(replicas);
        let sent = Instant::now();
        let (status, answer) = daemon.post(hook, &forge_headers(hook, SECRET, &body), &body);
        assert_eq!(
            (status, answer.trim()),
            (202, "fetch queued"),
            "{hook} ({kind})"
        );
        live_within(&daemon, replicas, sent);
        // A bad signature (GitLab: a wrong token) is refused and fetches nothing. Five
        // failures lock an address out for a minute, so Forgejo's (Gitea's check under
        // another header) is left to the unit tests.
        let forged = forge_headers(hook, "It's a Secret to Everybody!", &body);
        if hook != "forgejo" {
            assert_eq!(
                daemon.post(hook, &forged, &body),
                (401, String::new()),
                "{hook}"
            );
        }
        // A fetch a bad event queued would show in the next round's count.
        assert_eq!(
            daemon.fetches(),
            start + round,
            "{hook}: one fetch per good event"
        );
        let refused = u64::from(hook != "forgejo");
        assert_eq!(daemon.requests(hook, "unauthorized"), refused, "{hook}");
    }
}

/// Sends a chunked body of `total` bytes, `chunk` at a time, and reads the answer once it is
/// sent or the server stops taking it; the status line's code.
fn stream_slowly(address: &str, path: &str, chunk: usize, total: usize) -> (u16, usize) {
    let mut stream = TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nTransfer-Encoding: chunked\r\nX-GitHub-Event: push\r\n\r\n"
    )
    .expect("headers");
    let mut sent = 0;
    while sent < total {
        let piece = format!("{chunk:x}\r\n{}\r\n", "x".repeat(chunk));
        if stream.write_all(piece.as_bytes()).is_err() {
            break;
        }
        stream.flush().expect("flush");
        sent += chunk;
    }
    // No terminating chunk: the body never ends, so any answer came before it was read whole.
    let mut answer = [0u8; 64];
    let read = stream.read(&mut answer).expect("an answer");
    let text = String::from_utf8_lossy(&answer[..read]).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (code, sent)
}

#[test]
fn hostile_requests_are_refused_and_fetch_nothing() {
    let daemon = ReceiverDaemon::start(
        &[("github", "github")],
        "max_body_bytes = 65536\nheader_timeout = \"300ms\"\nread_timeout = \"500ms\"",
    );
    let before = daemon.fetches();

    // Headers that never end: the connection is closed (no answer is owed).
    let mut stream = TcpStream::connect(&daemon.receivers).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    write!(stream, "POST /hooks/github HTTP/1.1\r\nHost: x\r\n").expect("half the headers");
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => assert!(
            answer.is_empty() || answer.starts_with(b"HTTP/1.1 408"),
            "{}",
            String::from_utf8_lossy(&answer)
        ),
        Err(error) => assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "{error}"),
    }

    // A body that stops coming: 408.
    let mut stream = TcpStream::connect(&daemon.receivers).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    write!(
        stream,
        "POST /hooks/github HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{\"ref\": "
    )
    .expect("part of the body");
    let mut answer = [0u8; 12];
    stream.read_exact(&mut answer).expect("an answer");
    assert_eq!(&answer, b"HTTP/1.1 408");

    // A declared length over the cap: refused before a byte of the body is sent.
    let mut stream = TcpStream::connect(&daemon.receivers).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    write!(
        stream,
        "POST /hooks/github HTTP/1.1\r\nHost: x\r\nContent-Length: 104857600\r\n\r\n"
    )
    .expect("headers");
    let mut answer = [0u8; 12];
    stream.read_exact(&mut answer).expect("an answer");
    assert_eq!(&answer, b"HTTP/1.1 413");

    // A chunked body that passes the cap: answered 413 while it is still being sent.
    let (code, sent) = stream_slowly(&daemon.receivers, "/hooks/github", 8192, 65536 + 8192);
    assert_eq!(code, 413, "after {sent} bytes");

    // Valid signatures over bodies that are not push events.
    let deep = format!(
        "{{\"ref\": \"refs/heads/main\", \"repository\": {}1{}}}",
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let huge = format!(
        "{{\"ref\": \"refs/heads/main\", \"repository\": {{\"clone_url\": \"git://{}.git\"}}, \"commits\": [{}0]}}",
        daemon.served,
        "0,".repeat(20_000)
    );
    for body in [
        "",
        "not json",
        "{\"ref\": 5, \"repository\": {}}",
        "{\"repository\": {\"clone_url\": \"x\"}}",
        "{\"ref\": \"refs/heads/main\", \"repository\": {\"clone_url\": [1, 2]}}",
        deep.as_str(),
        huge.as_str(),
    ] {
        let (status, _) = daemon.post("github", &forge_headers("github", SECRET, body), body);
        assert_eq!(status, 400, "{:?}", body.get(..40));
    }

    // Nothing else is served here: not the API, not another hook.
    let body = forge_event("github", &daemon.served);
    let signed = forge_headers("github", SECRET, &body);
    assert_eq!(daemon.post("nope", &signed, &body).0, 404);
    for path in ["/metrics", "/status", "/healthz", "/hooks/"] {
        let (status, _) = http_request(&daemon.receivers, "GET", path, &[], "").expect("answer");
        assert_eq!(status, 404, "{path}");
    }

    // Five bad signatures a minute from one address, then that address waits.
    let forged = forge_headers("github", "guess", &body);
    for _ in 0..5 {
        assert_eq!(daemon.post("github", &forged, &body).0, 401);
    }
    assert_eq!(daemon.post("github", &forged, &body).0, 429);
    assert_eq!(
        daemon.post("github", &signed, &body).0,
        429,
        "even signed, for now"
    );

    assert_eq!(daemon.requests("github", "too_large"), 2);
    assert_eq!(daemon.requests("github", "malformed"), 7);
    assert_eq!(daemon.requests("github", "rate_limited"), 2);
    assert_eq!(daemon.requests("github", "timeout"), 1);
    assert_eq!(daemon.requests("github", "fetch"), 0);
    assert_eq!(daemon.fetches(), before, "no request fetched");
}
