//! The status pages over plain HTTP, as `curl` sees them (no JavaScript): the facts as text,
//! the security headers, the event streams, no secret value anywhere, and the actions behind a
//! login, a session cookie and the form's CSRF token.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use gitopsd::journal::Event;

use crate::helpers::*;

pub const TOKEN: &str = "pages-token";
/// Planted in a Secret: no page and no event shows it, in any form it takes in git.
pub const PLANTED: &str = "pl4nted-p4ge-value";

fn base64(value: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(value)
}

/// A Secret holding `value` in `stringData` and, base64-encoded, in `data`.
pub fn secret_yaml(value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: api\nstringData:\n  token: {value}-string\ndata:\n  key: {}\n",
        base64(&format!("{value}-data"))
    )
}

/// Fails naming `channel` when `text` holds the planted value in any form.
pub fn assert_no_secret(channel: &str, text: &str) {
    for form in [
        PLANTED.to_string(),
        base64(&format!("{PLANTED}-data")),
        base64(&format!("{PLANTED}-string")),
    ] {
        assert!(
            !text.contains(&form),
            "{channel} shows the secret value ({form}):\n{text}"
        );
    }
}

/// An HTTP answer: status, head (lower-cased header lines) and body.
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Answer {
    /// The value of the first header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == name).then(|| value.trim())
        })
    }

    /// `name=value` of the cookie `name` the answer sets.
    pub fn cookie(&self, name: &str) -> Option<String> {
        self.head
            .lines()
            .filter_map(|line| line.strip_prefix("set-cookie:"))
            .map(str::trim)
            .find(|cookie| cookie.starts_with(&format!("{name}=")))
            .map(|cookie| cookie.split(';').next().unwrap_or_default().to_string())
    }
}

/// One request; the body is read whole (chunks joined).
pub fn request(
    address: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut stream = TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut text = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    text.push_str(body);
    stream.write_all(text.as_bytes()).expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("a head");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let head = head.to_ascii_lowercase();
    let body = if head.contains("transfer-encoding: chunked") {
        unchunk(body)
    } else {
        body.to_string()
    };
    Answer { status, head, body }
}

fn unchunk(mut rest: &str) -> String {
    let mut joined = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if size == 0 {
            break;
        }
        joined.push_str(&tail[..size]);
        rest = &tail[size + 2..];
    }
    joined
}

/// The data of the first Server-Sent Event of `path` (with `cookie`, if any).
pub fn first_event(address: &str, path: &str, cookie: Option<&str>) -> String {
    let mut stream = TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let cookie = cookie
        .map(|c| format!("Cookie: {c}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nAccept: text/event-stream\r\n{cookie}\r\n"
    )
    .expect("write");
    let mut seen = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = String::from_utf8_lossy(&seen).to_string();
        if let Some((_, body)) = text.split_once("\r\n\r\n")
            && let Some(event) = complete_event(&unchunk_partial(body))
        {
            return event;
        }
        assert!(Instant::now() < deadline, "no event from {path}: {text}");
        let read = stream.read(&mut buffer).expect("read the stream");
        assert!(read > 0, "{path} ended without an event: {text}");
        seen.extend_from_slice(&buffer[..read]);
    }
}

/// The chunks of a chunked body received so far, joined.
fn unchunk_partial(mut rest: &str) -> String {
    let mut joined = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        let Some(chunk) = tail.get(..size) else {
            break;
        };
        joined.push_str(chunk);
        rest = tail.get(size + 2..).unwrap_or_default();
    }
    joined
}

/// The data lines of the first event with data in a stream, once it is complete.
fn complete_event(stream: &str) -> Option<String> {
    stream.split("\n\n").find_map(|event| {
        let data: Vec<&str> = event
            .lines()
            .filter_map(|line| line.strip_prefix("data:"))
            .map(|line| line.strip_prefix(' ').unwrap_or(line))
            .collect();
        (!data.is_empty() && stream.contains(&format!("{event}\n\n"))).then(|| data.join("\n"))
    })
}

/// What a reader without a browser sees: the text of an HTML page, tags removed.
pub fn text_of(html: &str) -> String {
    let mut text = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                text.push(' ');
            }
            _ if !in_tag => text.push(c),
            _ => {}
        }
    }
    let text = text
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&");
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The value of the hidden field `name` in a page.
pub fn field(html: &str, name: &str) -> Option<String> {
    let at = html.find(&format!("name=\"{name}\" value=\""))?;
    let rest = &html[at + name.len() + 15..];
    Some(rest[..rest.find('"')?].to_string())
}

/// Starts the daemon of `workspace` (an `[api]` configured) and waits for /readyz.
pub fn start(workspace: &Workspace) -> (ChildGuard, String) {
    let mut command = workspace.gitopsd(&["run"]);
    command.stdout(Stdio::null()).stderr(Stdio::null());
    let (child, address) = spawn_with_api(workspace, &mut command);
    let ready = wait_for(Duration::from_secs(30), || {
        http_request(&address, "GET", "/readyz", &[], "").is_some_and(|(status, _)| status == 200)
    });
    assert!(ready, "/readyz never answered 200");
    (child, address)
}

/// Waits until `environment` has journaled `healthy` at `revision`.
pub fn wait_healthy(workspace: &Workspace, environment: &str, revision: &str) {
    let healthy = wait_for(Duration::from_secs(60), || {
        workspace.journal(environment).iter().any(
            |record| matches!(&record.event, Event::Healthy { revision: r } if r.0 == revision),
        )
    });
    assert!(healthy, "{environment} never healthy at {revision}");
}

/// Logs in through the form; answers the session cookie (`gitopsd_session=…`).
pub fn log_in(address: &str, token: &str) -> Answer {
    let form = request(address, "GET", "/login?next=/env/staging", &[], "");
    assert_eq!(form.status, 200, "{}", form.body);
    let nonce_cookie = form.cookie("gitopsd_login").expect("a login cookie");
    let nonce = field(&form.body, "nonce").expect("a nonce field");
    let body = format!("token={token}&nonce={nonce}&next=%2Fenv%2Fstaging");
    request(
        address,
        "POST",
        "/login",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Cookie", &nonce_cookie),
        ],
        &body,
    )
}

#[test]
fn curl_of_each_page_shows_the_facts_as_text_and_no_secret() {
    let workspace = Workspace::new();
    workspace.write_config(&workspace.repo.dir.display().to_string(), "1s");
    configure_api(&workspace, TOKEN, "");
    write_environment(&workspace.repo, "staging", 1);
    write_environment(&workspace.repo, "production", 1);
    workspace
        .repo
        .write("environments/staging/secret.yaml", &secret_yaml("v1"));
    let first = workspace.repo.commit("first release");
    let (_daemon, address) = start(&workspace);
    wait_healthy(&workspace, "staging", &first);
    write_environment(&workspace.repo, "staging", 2);
    workspace
        .repo
        .write("environments/staging/secret.yaml", &secret_yaml(PLANTED));
    let second = workspace.repo.commit("second release: two replicas");
    wait_healthy(&workspace, "staging", &second);

    let overview = request(&address, "GET", "/", &[], "");
    assert_eq!(overview.status, 200, "{}", overview.body);
    let csp = overview
        .header("content-security-policy")
        .unwrap_or_default();
    assert!(csp.starts_with("default-src 'self'"), "{}", overview.head);
    assert!(
        overview.header("server-timing").is_some(),
        "{}",
        overview.head
    );
    let text = text_of(&overview.body);
    for fact in [
        "staging",
        "production",
        "healthy",
        &second[..12],
        "second release: two replicas",
        "directory",
        "ago",
    ] {
        assert!(text.contains(fact), "the overview lacks {fact:?}: {text}");
    }
    assert!(!overview.body.contains("<script>"), "no inline script");

    let page = request(&address, "GET", "/env/staging", &[], "");
    assert_eq!(page.status, 200, "{}", page.body);
    let text = text_of(&page.body);
    for fact in [
        "Rollout",
        "No rollout in flight",
        "Checks",
        "Changes",
        &format!("{} → {}", &first[..12], &second[..12]),
        "- replicas: 1",
        "+ replicas: 2",
        "<redacted>",
        "Timeline",
        "rollout_started",
        "Deployment frequency: 2",
        "Change failure rate: 0%",
        "Log in",
    ] {
        assert!(
            text.contains(fact),
            "the staging page lacks {fact:?}: {text}"
        );
    }
    assert_eq!(page.body.matches("<svg").count(), 4, "a chart per figure");

    let pages = [
        ("/", overview.body),
        ("/env/staging", page.body),
        (
            "/env/production",
            request(&address, "GET", "/env/production", &[], "").body,
        ),
        (
            "/env/staging?page=2",
            request(&address, "GET", "/env/staging?page=2", &[], "").body,
        ),
        ("/events", first_event(&address, "/events", None)),
        (
            "/env/staging/events",
            first_event(&address, "/env/staging/events?page=1", None),
        ),
    ];
    for (path, body) in &pages {
        assert_no_secret(path, body);
    }
    assert!(
        text_of(&pages[4].1).contains("second release: two replicas"),
        "{}",
        pages[4].1
    );
    assert!(
        text_of(&pages[5].1).contains("+ replicas: 2"),
        "{}",
        pages[5].1
    );

    let script = request(&address, "GET", "/assets/live.js", &[], "");
    assert_eq!(script.status, 200);
    assert!(script.body.contains("EventSource") && script.body.lines().count() < 15);
    let style = request(&address, "GET", "/assets/style.css", &[], "");
    assert!(
        style
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/css"))
    );
    let missing = request(&address, "GET", "/env/nowhere", &[], "");
    assert_eq!(missing.status, 404);
    assert!(text_of(&missing.body).contains("No environment named nowhere"));
}

#[test]
fn actions_need_a_session_and_the_forms_csrf_token() {
    let workspace = Workspace::new();
    workspace.write_config(&workspace.repo.dir.display().to_string(), "1s");
    configure_api(&workspace, TOKEN, "");
    write_environment(&workspace.repo, "staging", 1);
    write_environment(&workspace.repo, "production", 1);
    let first = workspace.repo.commit("initial");
    let (_daemon, address) = start(&workspace);
    wait_healthy(&workspace, "staging", &first);
    write_environment(&workspace.repo, "staging", 2);
    let second = workspace.repo.commit("second");
    wait_healthy(&workspace, "staging", &second);
    let form = [("Content-Type", "application/x-www-form-urlencoded")];

    let anonymous = request(&address, "POST", "/env/staging/actions/pause", &form, "");
    assert_eq!(anonymous.status, 403, "{}", anonymous.body);
    let wrong = log_in(&address, "not-the-token");
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    assert_eq!(wrong.cookie("gitopsd_session"), None);
    // A login POST without the form's nonce (a cross-site form) is refused.
    let forged = request(&address, "POST", "/login", &form, &format!("token={TOKEN}"));
    assert_eq!(forged.status, 403, "{}", forged.body);

    let login = log_in(&address, TOKEN);
    assert_eq!(login.status, 303, "{}", login.body);
    assert_eq!(login.header("location"), Some("/env/staging"));
    let set = login
        .head
        .lines()
        .find(|line| line.starts_with("set-cookie: gitopsd_session="))
        .expect("a session cookie");
    assert!(
        set.contains("httponly") && set.contains("samesite=strict"),
        "{set}"
    );
    let session = login.cookie("gitopsd_session").expect("session");
    let with_session = [form[0], ("Cookie", session.as_str())];

    let page = request(&address, "GET", "/env/staging", &[("Cookie", &session)], "");
    let csrf = field(&page.body, "csrf").expect("the page's forms carry a CSRF token");
    assert!(text_of(&page.body).contains("Pause"), "{}", page.body);
    let before = workspace.journal("staging").len();
    for body in ["", "csrf=", "csrf=0123456789abcdef"] {
        let refused = request(
            &address,
            "POST",
            "/env/staging/actions/pause",
            &with_session,
            body,
        );
        assert_eq!(refused.status, 403, "{body:?}: {}", refused.body);
    }
    assert_eq!(
        workspace.journal("staging").len(),
        before,
        "nothing journaled"
    );

    let paused = request(
        &address,
        "POST",
        "/env/staging/actions/pause",
        &with_session,
        &format!("csrf={csrf}"),
    );
    assert_eq!(paused.status, 303, "{}", paused.body);
    let journal = workspace.journal("staging");
    let record = journal.last().expect("a record");
    assert!(matches!(record.event, Event::Paused { .. }), "{record:?}");
    assert_eq!(
        record.by.as_deref(),
        Some("dashboard session 1 from 127.0.0.1")
    );
    let page = request(&address, "GET", "/env/staging", &[("Cookie", &session)], "");
    let text = text_of(&page.body);
    assert!(text.contains("paused") && text.contains("Resume"), "{text}");
    assert!(
        text.contains("by dashboard session 1 from 127.0.0.1"),
        "{text}"
    );

    // Resume, then roll back to the revision chosen among the healthy ones the form offers.
    let resumed = request(
        &address,
        "POST",
        "/env/staging/actions/resume",
        &with_session,
        &format!("csrf={csrf}"),
    );
    assert_eq!(resumed.status, 303, "{}", resumed.body);
    let page = request(&address, "GET", "/env/staging", &[("Cookie", &session)], "");
    assert!(
        page.body.contains(&format!("<option value=\"{first}\">"))
            && page.body.contains(&format!("<option value=\"{second}\">")),
        "both healthy revisions are offered: {}",
        page.body
    );
    let rolled = request(
        &address,
        "POST",
        "/env/staging/actions/rollback",
        &with_session,
        &format!("csrf={csrf}&to={first}"),
    );
    assert_eq!(rolled.status, 303, "{}", rolled.body);
    let journal = workspace.journal("staging");
    let pinned = journal
        .iter()
        .rev()
        .find(|record| matches!(record.event, Event::Pinned { .. }))
        .expect("the rollback is journaled");
    assert_eq!(pinned.event.revision().0, first);
    assert_eq!(
        pinned.by.as_deref(),
        Some("dashboard session 1 from 127.0.0.1")
    );
    let back = wait_for(Duration::from_secs(30), || {
        text_of(&request(&address, "GET", "/", &[], "").body).contains("rolled back to")
    });
    assert!(back, "the overview shows the rollback");

    let out = request(
        &address,
        "POST",
        "/logout",
        &with_session,
        &format!("csrf={csrf}"),
    );
    assert_eq!(out.status, 303, "{}", out.body);
    let after = request(
        &address,
        "POST",
        "/env/staging/actions/resume",
        &with_session,
        &format!("csrf={csrf}"),
    );
    assert_eq!(
        after.status, 403,
        "a closed session acts no more: {}",
        after.body
    );
}

#[test]
fn a_private_dashboard_shows_nothing_before_login() {
    let workspace = Workspace::new();
    workspace.write_config(&workspace.repo.dir.display().to_string(), "1s");
    configure_api(&workspace, TOKEN, "dashboard = \"private\"\n");
    write_environment(&workspace.repo, "staging", 1);
    write_environment(&workspace.repo, "production", 1);
    let first = workspace.repo.commit("private release");
    let (_daemon, address) = start(&workspace);
    wait_healthy(&workspace, "staging", &first);
    for path in ["/", "/events", "/env/staging", "/env/staging/events"] {
        let answer = request(&address, "GET", path, &[], "");
        assert_eq!(answer.status, 303, "{path}: {}", answer.body);
        assert!(
            answer
                .header("location")
                .is_some_and(|to| to.starts_with("/login?next=")),
            "{path}: {}",
            answer.head
        );
        assert!(!answer.body.contains("private release"), "{path}");
    }
    let login = log_in(&address, TOKEN);
    let session = login.cookie("gitopsd_session").expect("session");
    let overview = request(&address, "GET", "/", &[("Cookie", &session)], "");
    assert_eq!(overview.status, 200);
    assert!(
        text_of(&overview.body).contains("private release"),
        "{}",
        overview.body
    );
}
