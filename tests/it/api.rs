//! The HTTP API and the gates: auth, /metrics scraped by a real Prometheus, manual approval,
//! the `after` gate, pause/resume, rollback pins, and a closed window.

use std::process::Stdio;
use std::time::Duration;

use crate::helpers::*;
use crate::prometheus::Prometheus;

const TOKEN: &str = "test-token-123";

/// A workspace whose config polls every `poll_interval` and has an [api] on 127.0.0.1 port 0
/// with a token file.
fn with_api(workspace: &Workspace, poll_interval: &str, extra_staging: &str) {
    workspace.write_config_with(
        &workspace.repo.dir.display().to_string(),
        poll_interval,
        extra_staging,
    );
    configure_api(workspace, TOKEN, "");
}

/// Starts the daemon (its stderr to `log` when given) and waits for /readyz; returns it and
/// its API's address.
fn start_logging(workspace: &Workspace, log: Option<&std::path::Path>) -> (ChildGuard, String) {
    let mut command = workspace.gitopsd(&["run"]);
    command.stdout(Stdio::null()).stderr(match log {
        Some(log) => Stdio::from(std::fs::File::create(log).expect("log")),
        None => Stdio::null(),
    });
    let (child, address) = spawn_with_api(workspace, &mut command);
    let ready = wait_for(Duration::from_secs(30), || {
        http_request(&address, "GET", "/readyz", &[], "").is_some_and(|(status, _)| status == 200)
    });
    assert!(ready, "/readyz never answered 200");
    (child, address)
}

fn start(workspace: &Workspace) -> (ChildGuard, String) {
    start_logging(workspace, None)
}

fn post(address: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let bearer = token.map(|token| format!("Bearer {token}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(bearer) = &bearer {
        headers.push(("Authorization", bearer));
    }
    http_request(address, "POST", path, &headers, body).expect("daemon answers")
}

fn live_replicas(workspace: &Workspace, environment: &str) -> String {
    std::fs::read_to_string(
        workspace
            .live(environment)
            .join("shop/Deployment.apps/web.yaml"),
    )
    .ok()
    .and_then(|text| {
        text.lines()
            .find(|line| line.trim_start().starts_with("replicas:"))
            .map(|line| line.trim().to_string())
    })
    .unwrap_or_default()
}

#[test]
fn endpoints_answer_and_control_needs_the_token() {
    let workspace = Workspace::new();
    with_api(&workspace, "1h", "");
    write_environment(&workspace.repo, "staging", 1);
    write_environment(&workspace.repo, "production", 1);
    workspace.repo.commit("initial");
    let (_daemon, address) = start(&workspace);

    assert_eq!(
        http_request(&address, "GET", "/healthz", &[], "").map(|r| r.0),
        Some(200)
    );
    assert!(wait_for(Duration::from_secs(20), || {
        http_request(&address, "GET", "/status", &[], "").is_some_and(|(_, body)| {
            body.contains("\"last_healthy\":\"") && body.contains("\"environment\":\"staging\"")
        })
    }));

    let path = "/api/v1/environments/staging/pause";
    assert_eq!(post(&address, path, None, "").0, 401, "no token");
    assert_eq!(
        post(&address, path, Some("wrong"), "").0,
        401,
        "wrong token"
    );
    let (status, body) = post(&address, path, Some(TOKEN), "");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        post(
            &address,
            "/api/v1/environments/nowhere/pause",
            Some(TOKEN),
            ""
        )
        .0,
        404
    );
    let (status, body) = post(
        &address,
        "/api/v1/environments/staging/approve",
        Some(TOKEN),
        "{\"revision\":\"no-such-rev\"}",
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("unknown revision"), "{body}");
}

#[test]
fn the_api_refuses_big_bodies_guessing_and_a_token_anyone_can_read() {
    let workspace = Workspace::new();
    with_api(&workspace, "1h", "");
    write_environment(&workspace.repo, "staging", 1);
    write_environment(&workspace.repo, "production", 1);
    workspace.repo.commit("initial");
    let (daemon, address) = start(&workspace);
    let path = "/api/v1/environments/staging/approve";

    let huge = format!("{{\"revision\":\"{}\"}}", "x".repeat(100_000));
    assert_eq!(
        post(&address, path, Some(TOKEN), &huge).0,
        413,
        "body limit"
    );

    for attempt in 1..=5 {
        assert_eq!(
            post(&address, path, Some("guess"), "").0,
            401,
            "failed attempt {attempt}"
        );
    }
    let (status, body) = post(&address, path, Some("guess"), "");
    assert_eq!(status, 429, "{body}");
    let (status, _) = post(
        &address,
        "/api/v1/environments/staging/pause",
        Some(TOKEN),
        "",
    );
    assert_eq!(status, 429, "locked out for a while, even with the token");
    drop(daemon);

    // A token file every user can read is refused (and the daemon says why).
    use std::os::unix::fs::PermissionsExt as _;
    let token = workspace.path("api-token");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let log = workspace.path("daemon.log");
    let (_daemon, address) = start_logging(&workspace, Some(&log));
    let (status, body) = post(
        &address,
        "/api/v1/environments/staging/pause",
        Some(TOKEN),
        "",
    );
    assert_eq!(status, 403, "{body}");
    let logged = std::fs::read_to_string(&log).expect("log");
    assert!(logged.contains("readable by every user"), "{logged}");
}

#[test]
fn metrics_are_scraped_by_a_real_prometheus() {
    let workspace = Workspace::new();
    with_api(&workspace, "1h", "");
    write_environment(&workspace.repo, "staging", 1);
    write_environment(&workspace.repo, "production", 1);
    let revision = workspace.repo.commit("initial");
    let (_daemon, address) = start(&workspace);
    let prometheus = Prometheus::start_waiting_for(
        address.parse().expect("socket address"),
        "gitopsd_git_fetch_duration_seconds_count",
    );
    let seen = wait_for(Duration::from_secs(30), || {
        prometheus
            .query("gitopsd_revision_info")
            .is_some_and(|body| {
                body.contains(&revision) && body.contains("\"environment\":\"production\"")
            })
    });
    assert!(seen, "{:?}", prometheus.query("gitopsd_revision_info"));
    let up = prometheus.query("up").unwrap_or_default();
    assert!(up.contains("\"1\""), "the scrape succeeded: {up}");
    let rollouts = prometheus
        .query("gitopsd_rollouts_total")
        .unwrap_or_default();
    assert!(rollouts.contains("\"result\":\"healthy\""), "{rollouts}");
}

#[test]
fn manual_approval_holds_a_revision_until_approved() {
    let workspace = Workspace::new();
    with_api(&workspace, "1h", "approval = \"manual\"\n");
    write_environment(&workspace.repo, "staging", 1);
    write_environment(&workspace.repo, "production", 1);
    let first = workspace.repo.commit("initial");
    let (_daemon, address) = start(&workspace);
    assert!(wait_for(Duration::from_secs(10), || live_replicas(
        &workspace,
        "production"
    ) == "replicas: 1"));
    // The only tip there is was committed before the start: any finished staging pass saw it.
    assert!(
        wait_for(Duration::from_secs(20), || passes(&address, "staging")
            .is_some_and(|n| n >= 1)),
        "staging never finished a pass"
    );
    assert_eq!(
        live_replicas(&workspace, "staging"),
        "",
        "staging waits for approval"
    );
    let status = workspace.run(&["status", "--env", "staging"]);
    assert!(
        stdout(&status).contains("current revision:       none"),
        "{}",
        stdout(&status)
    );

    let approve = workspace.run(&["approve", "--env", "staging", &first[..10]]);
    assert_exit(&approve, 0);
    assert!(stdout(&approve).contains(&first), "{}", stdout(&approve));
    assert!(
        wait_for(Duration::from_secs(10), || live_replicas(
            &workspace, "staging"
        ) == "replicas: 1"),
        "approved revision rolls out"
    );
    // Without the token file the command refuses clearly.
    std::fs::remove_file(workspace.path("api-token")).expect("remove token");
    let refused = workspace.run(&["approve", "--env", "staging", &first]);
    assert_exit(&refused, 2);
    assert!(
        stderr(&refused).contains("api token file"),
        "{}",
        stderr(&refused)
    );
}

#[test]
fn pause_resume_and_rollback_pin() {
    let workspace = Workspace::new();
    // Polls every second, so that later passes show what the daemon made of a commit.
    with_api(&workspace, "1s", "");
    write_environment(&workspace.repo, "staging", 1);
    write_environment(&workspace.repo, "production", 1);
    let first = workspace.repo.commit("one");
    let (_daemon, address) = start(&workspace);
    assert!(wait_for(Duration::from_secs(10), || live_replicas(
        &workspace, "staging"
    ) == "replicas: 1"));

    assert_exit(&workspace.run(&["pause", "--env", "staging"]), 0);
    write_environment(&workspace.repo, "staging", 2);
    workspace.repo.commit("two");
    assert!(
        wait_for_pass_after_now(&address, "staging"),
        "no staging pass after the commit"
    );
    assert_eq!(
        live_replicas(&workspace, "staging"),
        "replicas: 1",
        "paused: nothing changes"
    );
    assert_exit(&workspace.run(&["resume", "--env", "staging"]), 0);
    assert!(wait_for(Duration::from_secs(10), || live_replicas(
        &workspace, "staging"
    ) == "replicas: 2"));

    assert_exit(
        &workspace.run(&["rollback", "--env", "staging", "--to", &first]),
        0,
    );
    assert!(
        wait_for(Duration::from_secs(10), || live_replicas(
            &workspace, "staging"
        ) == "replicas: 1"),
        "rolled back to the first commit"
    );
    assert!(
        wait_for_pass_after_now(&address, "staging"),
        "no staging pass after the rollback"
    );
    assert_eq!(
        live_replicas(&workspace, "staging"),
        "replicas: 1",
        "the pin holds"
    );
    write_environment(&workspace.repo, "staging", 3);
    workspace.repo.commit("three");
    assert!(
        wait_for(Duration::from_secs(10), || live_replicas(
            &workspace, "staging"
        ) == "replicas: 3"),
        "the next commit lifts the pin"
    );
}

#[test]
fn after_gate_promotes_only_what_is_healthy_upstream() {
    let workspace = Workspace::new();
    std::fs::write(workspace.path("fail"), "").expect("marker");
    // Production (configured first) follows staging; staging's check fails while `fail` holds
    // "yes".
    workspace.write_config_with(
        &workspace.repo.dir.display().to_string(),
        "1h",
        &format!(
            "[[environment.health]]\ntype = \"exec\"\ncommand = \"sh -c 'test \\\"$(cat {})\\\" != yes'\"\ninterval = \"100ms\"\nfailures = 1\n[environment.rollout]\nverify = \"300ms\"\n",
            workspace.path("fail").display()
        ),
    );
    // Production, configured first, waits for staging.
    workspace.edit_config(
        "namespace = \"shop\"\n",
        "namespace = \"shop\"\nafter = \"staging\"\n",
    );

    write_environment(&workspace.repo, "staging", 1);
    write_environment(&workspace.repo, "production", 1);
    workspace.repo.commit("one");
    let output = workspace.run(&["run", "--once"]);
    assert_exit(&output, 0);
    assert_eq!(
        live_replicas(&workspace, "production"),
        "replicas: 1",
        "healthy in staging first, same pass"
    );

    std::fs::write(workspace.path("fail"), "yes").expect("marker");
    write_environment(&workspace.repo, "staging", 2);
    write_environment(&workspace.repo, "production", 2);
    workspace.repo.commit("two, bad");
    let output = workspace.run(&["run", "--once"]);
    assert_exit(&output, 1);
    assert_eq!(
        live_replicas(&workspace, "staging"),
        "replicas: 1",
        "reverted"
    );
    assert_eq!(
        live_replicas(&workspace, "production"),
        "replicas: 1",
        "never promoted downstream"
    );
    assert!(
        stderr(&output).contains("healthy in staging"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_closed_window_holds_changes() {
    let workspace = Workspace::new();
    // Opens one minute a year, at new year.
    workspace.write_config_with(
        &workspace.repo.dir.display().to_string(),
        "1h",
        "window = { schedule = \"0 0 1 1 *\", duration = \"1m\", timezone = \"UTC\" }\n",
    );
    write_environment(&workspace.repo, "staging", 1);
    write_environment(&workspace.repo, "production", 1);
    workspace.repo.commit("one");
    let output = workspace.run(&["run", "--once"]);
    assert_exit(&output, 0);
    assert!(
        stderr(&output).contains("outside the change window"),
        "{}",
        stderr(&output)
    );
    assert_eq!(live_replicas(&workspace, "staging"), "");
    assert_eq!(live_replicas(&workspace, "production"), "replicas: 1");
}

#[test]
fn drift_put_back_by_the_daemon_is_counted_in_metrics() {
    let workspace = Workspace::new();
    with_api(&workspace, "1s", "");
    write_environment(&workspace.repo, "staging", 1);
    write_environment(&workspace.repo, "production", 1);
    workspace.repo.commit("initial");
    let (_daemon, address) = start(&workspace);
    let live = workspace
        .live("staging")
        .join("shop/Deployment.apps/web.yaml");
    assert!(wait_for(Duration::from_secs(20), || live.is_file()));
    let metrics = || {
        http_request(&address, "GET", "/metrics", &[], "")
            .map(|(_, body)| body)
            .unwrap_or_default()
    };
    let drift_line = |text: &str| {
        text.lines()
            .find(|line| line.starts_with("gitopsd_drift_total{environment=\"staging\"}"))
            .map(str::to_string)
    };

    let text = std::fs::read_to_string(&live).expect("live file");
    std::fs::write(&live, text.replace("replicas: 1", "replicas: 7")).expect("edit live file");
    let counted = wait_for(Duration::from_secs(20), || {
        drift_line(&metrics()).is_some_and(|line| line.ends_with(" 1"))
    });
    assert!(counted, "{}", metrics());
    assert_eq!(live_replicas(&workspace, "staging"), "replicas: 1");
}

#[test]
fn the_api_address_is_reported_and_its_file_removed_on_a_clean_stop() {
    let workspace = Workspace::new();
    with_api(&workspace, "1h", "");
    write_environment(&workspace.repo, "staging", 1);
    write_environment(&workspace.repo, "production", 1);
    workspace.repo.commit("initial");
    let log = workspace.path("daemon.log");
    let (mut daemon, address) = start_logging(&workspace, Some(&log));
    let logged = std::fs::read_to_string(&log).expect("log");
    assert!(
        logged.contains(&format!("api listening on {address}")),
        "{logged}"
    );
    // The command finds the port the system picked in the address file.
    assert_exit(&workspace.run(&["pause", "--env", "staging"]), 0);

    daemon.signal(libc::SIGTERM);
    let status = daemon
        .wait_timeout(Duration::from_secs(20))
        .expect("the daemon stops on SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(
        !api_address_file(&workspace).exists(),
        "a clean stop removes the address file"
    );
    let refused = workspace.run(&["resume", "--env", "staging"]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("is the daemon running?"),
        "{}",
        stderr(&refused)
    );
}
