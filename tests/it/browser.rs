//! The status pages in a real headless Chromium, driven over WebDriver (fantoccini and
//! Debian's `chromium-driver`): a canary seen at step 2 of 3 and then healthy without a reload
//! (Server-Sent Events), a broken revision reverted and held with its check's detail, a login
//! and an Approve click that starts the rollout, a POST without the CSRF token refused, and a
//! planted secret on no page and in no event. Screenshots go to `target/tmp/artifacts/`.
//!
//! Each test starts its own `chromedriver` on 127.0.0.1 in a process group of its own, with a
//! fresh profile folder; both are removed when the test ends, passed or failed.

use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use gitopsd::journal::Event;
use serde_json::json;

use crate::helpers::*;
use crate::pages::{PLANTED, TOKEN, assert_no_secret, secret_yaml, start, wait_healthy};
use crate::rollout::{RolloutWorkspace, web};

/// The flags the browser runs with: headless, and nothing that reaches the network by itself.
const CHROMIUM_FLAGS: [&str; 11] = [
    "--headless",
    "--disable-crash-reporter",
    "--disable-breakpad",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1000",
];

/// Where screenshots are written (kept after the test: they are its artifacts).
fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("artifacts");
    std::fs::create_dir_all(&dir).expect("artifacts folder");
    dir
}

/// A chromedriver and the Chromium it drives, in a process group of their own, with a fresh
/// profile; the group is killed and the profile removed on drop.
struct Browser {
    runtime: tokio::runtime::Runtime,
    client: Option<Client>,
    driver: ChildGuard,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Self {
        for program in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
            assert!(
                std::path::Path::new(program).exists(),
                "{program} is missing: install Debian's chromium and chromium-driver (tests/run.sh does)"
            );
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let profile = tempfile::Builder::new()
            .prefix("gitopsd-browser-profile")
            .tempdir()
            .expect("profile folder");
        // The port is picked free a moment before chromedriver binds it: another process may
        // take it first, so the start is tried again with a new one.
        for _ in 0..3 {
            let [port] = ports_for_external_process::<1>();
            let mut driver = ChildGuard(
                Command::new("/usr/bin/chromedriver")
                    .arg(format!("--port={port}"))
                    .arg("--allowed-ips=127.0.0.1")
                    // Whatever Chromium writes under the home folder goes to the profile.
                    .env("HOME", profile.path())
                    .env("XDG_CONFIG_HOME", profile.path().join(".config"))
                    .env("XDG_CACHE_HOME", profile.path().join(".cache"))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .process_group(0)
                    .spawn()
                    .expect("chromedriver starts"),
            );
            let address = format!("127.0.0.1:{port}");
            let ready = wait_for(Duration::from_secs(20), || {
                driver.0.try_wait().expect("try_wait").is_some()
                    || std::net::TcpStream::connect(&address).is_ok()
            });
            if !ready || driver.0.try_wait().expect("try_wait").is_some() {
                continue;
            }
            let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|f| f.to_string()).collect();
            args.push(format!("--user-data-dir={}", profile.path().display()));
            let capabilities = json!({
                "goog:chromeOptions": { "binary": "/usr/bin/chromium", "args": args }
            });
            let serde_json::Value::Object(capabilities) = capabilities else {
                unreachable!("a JSON object")
            };
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            let client = runtime
                .block_on(
                    ClientBuilder::new(connector)
                        .capabilities(capabilities)
                        .connect(&format!("http://{address}")),
                )
                .expect("a Chromium session");
            return Self {
                runtime,
                client: Some(client),
                driver,
                _profile: profile,
            };
        }
        panic!("chromedriver did not start on a free port in three tries");
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("a session until drop")
    }

    fn goto(&self, url: &str) {
        self.runtime
            .block_on(self.client().goto(url))
            .unwrap_or_else(|error| panic!("cannot open {url}: {error}"));
    }

    /// The text of the first element `css` matches, or "" when there is none.
    fn text(&self, css: &str) -> String {
        self.runtime.block_on(async {
            match self.client().find(Locator::Css(css)).await {
                Ok(element) => element.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            }
        })
    }

    /// Waits until the text of `css` holds `wanted`; fails with what it showed last.
    fn wait_text(&self, css: &str, wanted: &str, limit: Duration) -> String {
        let mut last = String::new();
        let seen = wait_for(limit, || {
            last = self.text(css);
            last.contains(wanted)
        });
        assert!(seen, "{css} never showed {wanted:?}; it shows: {last}");
        last
    }

    fn click(&self, css: &str) {
        self.runtime
            .block_on(async { self.client().find(Locator::Css(css)).await?.click().await })
            .unwrap_or_else(|error| panic!("cannot click {css}: {error}"));
    }

    fn type_into(&self, css: &str, text: &str) {
        self.runtime
            .block_on(async {
                self.client()
                    .find(Locator::Css(css))
                    .await?
                    .send_keys(text)
                    .await
            })
            .unwrap_or_else(|error| panic!("cannot type into {css}: {error}"));
    }

    fn source(&self) -> String {
        self.runtime
            .block_on(self.client().source())
            .expect("page source")
    }

    fn url(&self) -> String {
        self.runtime
            .block_on(self.client().current_url())
            .expect("current url")
            .to_string()
    }

    /// Runs `script` in the page; answers what it returns.
    fn execute(&self, script: &str) -> serde_json::Value {
        self.runtime
            .block_on(self.client().execute(script, Vec::new()))
            .unwrap_or_else(|error| panic!("script failed: {error}\n{script}"))
    }

    /// Runs `script`, which calls its last argument with the answer.
    fn execute_async(&self, script: &str) -> serde_json::Value {
        self.runtime
            .block_on(self.client().execute_async(script, Vec::new()))
            .unwrap_or_else(|error| panic!("script failed: {error}\n{script}"))
    }

    /// Looks at `url` in a second tab (the first keeps its page and its event streams), checks
    /// it with `check`, and closes it.
    fn in_new_tab(&self, url: &str, check: impl FnOnce(&Self)) {
        let first = self
            .runtime
            .block_on(self.client().window())
            .expect("a window");
        let tab = self
            .runtime
            .block_on(self.client().new_window(true))
            .expect("a new tab");
        self.runtime
            .block_on(self.client().switch_to_window(tab.handle))
            .expect("switch to the tab");
        self.goto(url);
        check(self);
        self.runtime
            .block_on(self.client().close_window())
            .expect("close the tab");
        self.runtime
            .block_on(self.client().switch_to_window(first))
            .expect("back to the first tab");
    }

    /// Makes the window `height` pixels tall, so a screenshot shows a whole page.
    fn resize(&self, height: u32) {
        self.runtime
            .block_on(self.client().set_window_size(1280, height))
            .expect("resize the window");
    }

    fn screenshot(&self, name: &str) {
        let png = self
            .runtime
            .block_on(self.client().screenshot())
            .expect("a screenshot");
        std::fs::write(artifacts().join(name), png).expect("write the screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _entered = self.runtime.enter();
        if let Some(client) = self.client.take() {
            let close =
                async { tokio::time::timeout(Duration::from_secs(10), client.close()).await };
            let _ = self.runtime.block_on(close);
        }
        // Chromium's processes are in chromedriver's group: the whole group goes.
        // SAFETY: kill(2) of our own child's process group has no memory-safety preconditions.
        unsafe { libc::kill(-self.driver.pid(), libc::SIGKILL) };
        // Its crash handler starts a session of its own: it is found by the profile folder
        // (unique to this browser) on its command line.
        for pid in processes_naming(self._profile.path()) {
            // SAFETY: as above, for a process this browser started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// The processes whose command line names `path`.
fn processes_naming(path: &std::path::Path) -> Vec<i32> {
    let needle = path.display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|line| String::from_utf8_lossy(&line).contains(&needle))
        })
        .collect()
}

/// Keeps every Server-Sent Event of the overview and of `environment`'s page the browser
/// receives, in `window.gitopsdEvents`.
const RECORD_EVENTS: &str = "window.gitopsdEvents = []; \
    for (const path of ['/events', '/env/staging/events?page=1']) { \
      new EventSource(path).onmessage = e => window.gitopsdEvents.push(e.data); } \
    return true;";

#[test]
fn browser_sees_a_canary_at_step_two_then_healthy_without_a_reload_and_no_secret() {
    let rollout = RolloutWorkspace::new(
        "steps = [10, 50, 100]\nbake = \"5s\"\nverify = \"1s\"\ntimeout = \"30s\"",
    );
    let workspace = &rollout.workspace;
    workspace.edit_config("poll_interval = \"30s\"", "poll_interval = \"1s\"");
    configure_api(workspace, TOKEN, "");
    web(&workspace.repo, "web:1", "hello", 10);
    workspace
        .repo
        .write("environments/staging/secret.yaml", &secret_yaml("v1"));
    let first = workspace.repo.commit("web 1");
    let (_daemon, address) = start(workspace);
    wait_healthy(workspace, "staging", &first);

    let browser = Browser::start();
    browser.goto(&format!("http://{address}/"));
    browser.wait_text("#env-staging .state", "healthy", Duration::from_secs(30));
    assert_eq!(
        browser.execute("window.gitopsdMarker = 'same page'; return true;"),
        json!(true)
    );
    assert_eq!(browser.execute(RECORD_EVENTS), json!(true));

    web(&workspace.repo, "web:2", "hello", 10);
    workspace
        .repo
        .write("environments/staging/secret.yaml", &secret_yaml(PLANTED));
    let second = workspace.repo.commit("web 2: the new image");
    browser.wait_text(
        "#env-staging .state",
        "rolling out step 2 of 3 (50%)",
        Duration::from_secs(60),
    );
    browser.screenshot("overview.png");
    browser.in_new_tab(&format!("http://{address}/env/staging"), |tab| {
        tab.resize(1900);
        let page = tab.wait_text("#live", "Rollout", Duration::from_secs(30));
        // The step moves on in its own time: the replicas are checked against the weight
        // this very page shows.
        if let Some(weight) = page
            .split("rolling out step ")
            .nth(1)
            .and_then(|rest| rest.split('(').nth(1))
            .and_then(|rest| rest.split('%').next())
            .and_then(|weight| weight.parse::<u8>().ok())
            .filter(|weight| *weight < 100)
        {
            let canary = gitopsd::canary::canary_replicas(weight, 10);
            let row = format!("Deployment.apps shop/web {} {canary}", 10 - canary);
            let canaries = tab.text("#canaries");
            let canaries = canaries.split_whitespace().collect::<Vec<_>>().join(" ");
            assert!(canaries.contains(&row), "{row}: {canaries}");
            assert!(
                tab.text("#rollout")
                    .contains(&format!("{weight}% (current)")),
                "{page}"
            );
        }
        tab.screenshot("rollout.png");
        tab.resize(1000);
    });
    browser.wait_text("#env-staging .state", "healthy", Duration::from_secs(60));
    let row = browser.wait_text("#env-staging", &second[..12], Duration::from_secs(30));
    assert!(row.contains("web 2: the new image"), "{row}");
    assert_eq!(
        browser.execute("return window.gitopsdMarker || 'reloaded';"),
        json!("same page"),
        "the overview changed without a reload"
    );
    let events = browser.execute("return window.gitopsdEvents.join('\\n');");
    let events = events.as_str().unwrap_or_default().to_string();
    assert!(
        events.contains("Step 2: 50%"),
        "the page's events showed the strip: {events}"
    );
    assert_no_secret("the event streams", &events);
    assert_no_secret("the overview", &browser.source());

    browser.goto(&format!("http://{address}/env/staging"));
    let changes = browser.wait_text("#changes", "<redacted>", Duration::from_secs(30));
    assert!(changes.contains("image: web:2"), "{changes}");
    assert_no_secret("the staging page", &browser.source());
    assert_no_secret("the staging page's text", &browser.text("body"));
    browser.goto(&format!("http://{address}/env/production"));
    assert_no_secret("the production page", &browser.source());
}

#[test]
fn browser_sees_a_broken_revision_reverted_and_held_with_the_checks_detail() {
    let rollout = RolloutWorkspace::new(
        "steps = [10, 50, 100]\nbake = \"1s\"\nverify = \"1s\"\ntimeout = \"30s\"",
    );
    let workspace = &rollout.workspace;
    workspace.edit_config("poll_interval = \"30s\"", "poll_interval = \"1s\"");
    configure_api(workspace, TOKEN, "");
    web(&workspace.repo, "web:1", "hello", 10);
    let first = workspace.repo.commit("web 1");
    let (_daemon, address) = start(workspace);
    wait_healthy(workspace, "staging", &first);

    let browser = Browser::start();
    browser.goto(&format!("http://{address}/"));
    browser.wait_text("#env-staging .state", "healthy", Duration::from_secs(30));
    rollout.fail_when("web:broken");
    web(&workspace.repo, "web:broken", "hello", 10);
    let broken = workspace.repo.commit("web broken");
    let state = browser.wait_text(
        "#env-staging .state",
        "reverted and held",
        Duration::from_secs(60),
    );
    assert!(state.contains(&broken[..12]), "{state}");

    browser.resize(1900);
    browser.goto(&format!("http://{address}/env/staging"));
    let checks = browser.wait_text("#checks", "live-state", Duration::from_secs(30));
    assert!(
        checks.contains(&format!("{} failed: ", &broken[..12]))
            && checks.contains("unhealthy: 9 web:1 1 web:broken hello -"),
        "the failing check's detail as text: {checks}"
    );
    let hover = browser.execute("return document.querySelector('#checks .dot.bad').title;");
    assert!(
        hover
            .as_str()
            .is_some_and(|title| title.contains("unhealthy:") && title.contains("web:broken")),
        "the failing check's detail on hover: {hover}"
    );
    browser.screenshot("environment.png");
}

#[test]
fn browser_logs_in_approves_and_sees_the_rollout_start_and_csrf_less_posts_fail() {
    let workspace = Workspace::new();
    workspace.write_config_with(
        &workspace.repo.dir.display().to_string(),
        "1s",
        "approval = \"manual\"\n",
    );
    configure_api(&workspace, TOKEN, "");
    write_environment(&workspace.repo, "staging", 1);
    write_environment(&workspace.repo, "production", 1);
    let first = workspace.repo.commit("needs an approval");
    let (_daemon, address) = start(&workspace);

    let browser = Browser::start();
    browser.goto(&format!("http://{address}/env/staging"));
    browser.wait_text("#live h1", "waiting for approval", Duration::from_secs(30));
    browser.click("#actions a");
    browser.type_into("#token", TOKEN);
    browser.click("form[action='/login'] button");
    let approve = browser.wait_text("#approve", "Approve", Duration::from_secs(30));
    assert!(approve.contains(&first[..12]), "{approve}");
    assert!(browser.url().ends_with("/env/staging"), "{}", browser.url());

    let started = Instant::now();
    browser.click("#approve");
    browser.wait_text("#timeline", "rollout_started", Duration::from_secs(30));
    browser.wait_text("#live h1", "healthy", Duration::from_secs(30));
    assert!(started.elapsed() < Duration::from_secs(60));
    // The actions are live too: nothing waits for an approval any more.
    let actions = browser.wait_text("#actions", "Pause", Duration::from_secs(10));
    assert!(!actions.contains("Approve"), "{actions}");
    let journal = workspace.journal("staging");
    let approved = journal
        .iter()
        .find(|record| matches!(record.event, Event::Approved { .. }))
        .expect("the approval is journaled");
    assert_eq!(
        approved.by.as_deref(),
        Some("dashboard session 1 from 127.0.0.1")
    );
    assert_eq!(approved.event.revision().0, first);

    // The session's cookie goes with a POST from the page itself, but the CSRF token does not:
    // refused.
    let status = browser.execute_async(
        "const done = arguments[arguments.length - 1]; \
         fetch('/env/staging/actions/pause', { method: 'POST', credentials: 'same-origin', \
           headers: { 'Content-Type': 'application/x-www-form-urlencoded' }, body: '' }) \
         .then(r => done(r.status), e => done(String(e)));",
    );
    assert_eq!(status, json!(403));
    assert!(
        !workspace
            .journal("staging")
            .iter()
            .any(|record| matches!(record.event, Event::Paused { .. })),
        "nothing was paused"
    );
    browser.screenshot("approved.png");
}
