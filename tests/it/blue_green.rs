//! Blue/green rollouts on the directory target: the phases and their journal records, a
//! preview that fails, what `diff` says, and a SIGKILL at every journal point.

use std::time::Duration;

use gitopsd::history::History;
use gitopsd::journal::Event;

use crate::crash::copy_dir;
use crate::helpers::*;
use crate::rollout::{RolloutWorkspace, web};

const BLUE_GREEN: &str = r#"strategy = "blue-green"
bake = "400ms"
verify = "600ms"
scale_down_delay = "300ms"
timeout = "5s""#;

fn deployed(rollout: &RolloutWorkspace) -> usize {
    web(&rollout.workspace.repo, "web:1", "hello", 4);
    rollout.workspace.repo.commit("web 1");
    assert_exit(&rollout.workspace.run(&["run", "--once"]), 0);
    rollout.take_observed();
    rollout.workspace.journal("staging").len()
}

fn service_selector(workspace: &Workspace) -> String {
    let path = workspace.live("staging").join("shop/Service/web.yaml");
    let text = std::fs::read_to_string(&path).expect("the Service is live");
    let start = text.find("selector:").expect("a selector");
    text[start..]
        .lines()
        .skip(1)
        .take_while(|line| line.starts_with("    "))
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn blue_green_previews_at_full_size_switches_then_scales_down_and_leaves_only_git_objects() {
    let rollout = RolloutWorkspace::new(BLUE_GREEN);
    let before = deployed(&rollout);
    web(&rollout.workspace.repo, "web:2", "hello", 4);
    rollout.workspace.repo.commit("web 2");
    let diff = rollout.workspace.run(&["diff", "--env", "staging"]);
    assert!(
        stdout(&diff).contains(
            "rollout: blue-green for Deployment.apps shop/web: preview → switch → verify → scale down (old pods kept 300ms after the switch)"
        ),
        "{}",
        stdout(&diff)
    );
    let output = rollout.workspace.run(&["run", "--once"]);
    assert_exit(&output, 0);
    assert_eq!(
        rollout.take_observed(),
        ["4 web:1 4 web:2 hello -", "4 web:2 4 web:2 hello -"],
        "the preview runs the new template in full beside the old pods, then beside the Deployment named in git on the new template until the verify window ends"
    );
    assert_eq!(
        rollout.events_since(before),
        [
            "rollout_started",
            "preview_started",
            "switched",
            "scaled_down",
            "healthy"
        ]
    );
    let live = tree(&rollout.workspace.live("staging"));
    assert!(
        !live
            .keys()
            .any(|path| path.contains("canary") || path.contains("preview")),
        "{:?}",
        live.keys()
    );
    assert_eq!(service_selector(&rollout.workspace), "app: web");
}

#[test]
fn a_blue_green_preview_that_fails_its_check_is_removed_and_the_revision_held() {
    let rollout = RolloutWorkspace::new(BLUE_GREEN);
    let before = deployed(&rollout);
    let old_tree = tree(&rollout.workspace.live("staging"));
    rollout.fail_when("web:2");
    web(&rollout.workspace.repo, "web:2", "hello", 4);
    let bad = rollout.workspace.repo.commit("web 2");
    let output = rollout.workspace.run(&["run", "--once"]);
    assert_exit(&output, 1);
    assert!(stderr(&output).contains("reverted"), "{}", stderr(&output));
    let events = rollout.events_since(before);
    assert_eq!(
        events,
        [
            "rollout_started",
            "preview_started",
            "check_failed",
            "rollout_failed",
            "revert_started",
            "reverted"
        ]
    );
    assert_eq!(
        tree(&rollout.workspace.live("staging")),
        old_tree,
        "nothing served changed and the preview is gone"
    );
    let history = History::from_records(&rollout.workspace.journal("staging"));
    assert!(
        history.failed.iter().any(|failed| failed.0 == bad),
        "{:?}",
        history.failed
    );
    rollout.workspace.run(&["run", "--once"]);
    assert_eq!(
        rollout.events_since(before).len(),
        events.len(),
        "the failed revision is held, not tried again"
    );
}

#[test]
fn blue_green_sigkill_at_each_journal_point_ends_with_one_version_and_no_preview() {
    let rollout = RolloutWorkspace::new(BLUE_GREEN);
    let workspace = &rollout.workspace;
    let old_records = deployed(&rollout);
    let journal_dir = workspace.path("state/journal");
    let saved_journal = workspace.path("saved-journal");
    copy_dir(&journal_dir, &saved_journal);
    let old_tree = tree(&workspace.live("staging"));
    let saved_live = workspace.path("saved-live");
    copy_dir(&workspace.live("staging"), &saved_live);

    web(&workspace.repo, "web:2", "hello", 4);
    workspace.repo.commit("web 2");
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    let new_tree = tree(&workspace.live("staging"));
    let points = workspace.journal("staging").len() - old_records;
    assert_eq!(
        points, 5,
        "rollout_started, preview_started, switched, scaled_down, healthy"
    );
    for point in 1..=points {
        copy_dir(&saved_journal, &journal_dir);
        copy_dir(&saved_live, &workspace.live("staging"));
        assert_eq!(tree(&workspace.live("staging")), old_tree);
        let mut child = workspace.spawn(&["run", "--once"]);
        let reached = wait_for(Duration::from_secs(30), || {
            gitopsd::journal::load_all(&workspace.path("state"), "staging")
                .is_ok_and(|records| records.len() >= old_records + point)
        });
        assert!(reached, "journal point {point} was never reached");
        child.signal(libc::SIGKILL);
        child
            .wait_timeout(Duration::from_secs(10))
            .expect("killed child exits");
        let killed_at = workspace.journal("staging").len();
        let flight = History::from_records(&workspace.journal("staging")).in_flight;
        let interrupted = flight.is_some();
        if let Some(phase) = flight.and_then(|flight| flight.phase) {
            let status = workspace.run(&["status", "--env", "staging"]);
            assert!(
                stdout(&status).contains(&format!("blue-green: {phase}")),
                "point {point}: {}",
                stdout(&status)
            );
        }

        assert_exit(&workspace.run(&["run", "--once"]), 0);
        let after: Vec<&str> = workspace.journal("staging")[killed_at..]
            .iter()
            .map(|record| record.event.name())
            .collect();
        if interrupted {
            assert_eq!(
                after.first(),
                Some(&"revert_started"),
                "point {point}: an interrupted blue/green rollout is undone first: {after:?}"
            );
            assert!(
                after.contains(&"preview_started") && !after.contains(&"rollout_failed"),
                "point {point}: then started over, not blamed: {after:?}"
            );
        }
        assert_eq!(
            tree(&workspace.live("staging")),
            new_tree,
            "point {point}: the restart ends fully new, with no preview left"
        );
        assert!(
            matches!(
                workspace.journal("staging").last().map(|r| &r.event),
                Some(Event::Healthy { .. })
            ),
            "point {point}: the journal ends healthy"
        );
    }
}

/// A Deployment `name` (2 replicas, image `image`) with its Service, annotated with
/// `strategy` when given.
fn workload(name: &str, image: &str, strategy: Option<&str>) -> String {
    let annotations = strategy.map_or(String::new(), |strategy| {
        format!("  annotations:\n    gitopsd.io/strategy: {strategy}\n")
    });
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\n{annotations}spec:\n  replicas: 2\n  selector:\n    matchLabels: {{app: {name}}}\n  template:\n    metadata:\n      labels: {{app: {name}}}\n    spec:\n      containers:\n        - name: {name}\n          image: {image}\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  selector: {{app: {name}}}\n  ports: [{{port: 80}}]\n"
    )
}

#[test]
fn the_strategy_annotation_mixes_strategies_in_one_environment_and_in_one_revision() {
    let rollout = RolloutWorkspace::new(
        "steps = [50, 100]\nbake = \"200ms\"\nverify = \"200ms\"\nscale_down_delay = \"200ms\"\ntimeout = \"5s\"",
    );
    let repo = &rollout.workspace.repo;
    let write = |web: &str, api: &str| {
        repo.write(
            "environments/staging/web.yaml",
            &workload("web", web, Some("blue-green")),
        );
        repo.write("environments/staging/api.yaml", &workload("api", api, None));
    };
    write("web:1", "api:1");
    repo.commit("v1");
    assert_exit(&rollout.workspace.run(&["run", "--once"]), 0);

    write("web:2", "api:1");
    repo.commit("web 2");
    let before = rollout.workspace.journal("staging").len();
    let diff = rollout.workspace.run(&["diff", "--env", "staging"]);
    assert!(
        stdout(&diff).contains("rollout: blue-green for Deployment.apps shop/web: preview →"),
        "{}",
        stdout(&diff)
    );
    assert_exit(&rollout.workspace.run(&["run", "--once"]), 0);
    assert_eq!(
        rollout.events_since(before),
        [
            "rollout_started",
            "preview_started",
            "switched",
            "scaled_down",
            "healthy"
        ],
        "the annotated Deployment runs blue/green in a canary environment"
    );

    write("web:2", "api:2");
    repo.commit("api 2");
    let before = rollout.workspace.journal("staging").len();
    assert_exit(&rollout.workspace.run(&["run", "--once"]), 0);
    assert_eq!(
        rollout.events_since(before),
        [
            "rollout_started",
            "step_started 50",
            "step_passed 50",
            "step_started 100",
            "promoted",
            "healthy"
        ],
        "the other one keeps the environment's canary steps"
    );

    write("web:3", "api:3");
    repo.commit("both");
    let before = rollout.workspace.journal("staging").len();
    let diff = rollout.workspace.run(&["diff", "--env", "staging"]);
    assert!(
        stdout(&diff).contains("rollout: mixed: blue-green for Deployment.apps shop/web and canary 50% → 100% for Deployment.apps shop/api: preview beside the canary steps below 100% → switch, then the canaries' promotion → verify → scale down"),
        "{}",
        stdout(&diff)
    );
    assert_exit(&rollout.workspace.run(&["run", "--once"]), 0);
    assert_eq!(
        rollout.events_since(before),
        [
            "rollout_started",
            "preview_started",
            "step_started 50",
            "step_passed 50",
            "switched",
            "step_started 100",
            "promoted",
            "scaled_down",
            "healthy"
        ],
        "a revision changing both rolls out with both strategies at once"
    );
    let live = tree(&rollout.workspace.live("staging"));
    assert!(
        !live
            .keys()
            .any(|path| path.contains("canary") || path.contains("preview")),
        "{:?}",
        live.keys()
    );
    for (path, image) in [
        ("shop/Deployment.apps/web.yaml", "web:3"),
        ("shop/Deployment.apps/api.yaml", "api:3"),
    ] {
        assert!(
            live.get(path)
                .is_some_and(|text| String::from_utf8_lossy(text).contains(image)),
            "{path}: {:?}",
            live.get(path)
        );
    }
}

#[test]
fn a_revision_mixing_strategies_over_one_shared_service_is_refused() {
    let rollout = RolloutWorkspace::new(
        "steps = [50, 100]\nbake = \"200ms\"\nverify = \"200ms\"\nscale_down_delay = \"200ms\"\ntimeout = \"5s\"",
    );
    let repo = &rollout.workspace.repo;
    let front = "apiVersion: v1\nkind: Service\nmetadata:\n  name: front\nspec:\n  selector: {tier: front}\n  ports: [{port: 80}]\n";
    let write = |web: &str, api: &str| {
        let tiered = |text: String| text.replace("labels: {app: ", "labels: {tier: front, app: ");
        repo.write(
            "environments/staging/web.yaml",
            &tiered(workload("web", web, Some("blue-green"))),
        );
        repo.write(
            "environments/staging/api.yaml",
            &tiered(workload("api", api, None)),
        );
        repo.write("environments/staging/front.yaml", front);
    };
    write("web:1", "api:1");
    repo.commit("v1");
    assert_exit(&rollout.workspace.run(&["run", "--once"]), 0);

    write("web:2", "api:2");
    let mixed = repo.commit("both");
    let diff = rollout.workspace.run(&["diff", "--env", "staging"]);
    assert!(
        stdout(&diff).contains("refused: the revision changes workloads of both strategies, blue-green (Deployment.apps shop/web) and canary (Deployment.apps shop/api), that share Service shop/front"),
        "{}",
        stdout(&diff)
    );
    let live_before = tree(&rollout.workspace.live("staging"));
    let output = rollout.workspace.run(&["run", "--once"]);
    assert_ne!(output.status.code(), Some(0));
    assert!(
        stderr(&output).contains("both strategies"),
        "{}",
        stderr(&output)
    );
    assert_eq!(
        tree(&rollout.workspace.live("staging")),
        live_before,
        "nothing of the refused revision is applied"
    );
    let rejected = rollout.workspace.journal("staging");
    assert!(
        matches!(rejected.last().map(|r| &r.event), Some(Event::Rejected { revision, problems }) if revision.0 == mixed && problems[0].contains("both strategies")),
        "{:?}",
        rejected.last()
    );
}

#[test]
fn a_statefulset_asking_for_blue_green_is_refused_with_its_file_and_document() {
    let rollout = RolloutWorkspace::new("strategy = \"blue-green\"");
    let repo = &rollout.workspace.repo;
    let statefulset = |strategy: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: db-config\n---\napiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: db\n{strategy}spec:\n  serviceName: db\n  replicas: 2\n  selector:\n    matchLabels: {{app: db}}\n  template:\n    metadata:\n      labels: {{app: db}}\n    spec:\n      containers:\n        - name: db\n          image: db:1\n"
        )
    };
    repo.write("environments/staging/db.yaml", &statefulset(""));
    repo.commit("db");
    let output = rollout.workspace.run(&["run", "--once"]);
    assert_ne!(output.status.code(), Some(0));
    assert!(
        stderr(&output).contains("environments/staging/db.yaml: document 2 (line 5): StatefulSet.apps shop/db: a StatefulSet cannot run blue-green (asked by the environment's rollout.strategy): it has no second set of pods to switch to; use the canary strategy, which steps a StatefulSet's partition (annotate it gitopsd.io/strategy: canary)"),
        "{}",
        stderr(&output)
    );
    assert!(
        !rollout.workspace.live("staging").join("shop").exists(),
        "nothing of the refused revision is applied"
    );
    repo.write(
        "environments/staging/db.yaml",
        &statefulset("  annotations: {gitopsd.io/strategy: canary}\n"),
    );
    repo.commit("db as canary");
    assert_exit(&rollout.workspace.run(&["run", "--once"]), 0);
    assert!(
        rollout
            .workspace
            .live("staging")
            .join("shop/StatefulSet.apps/db.yaml")
            .exists()
    );
}

/// An HTTP proxy stand-in on 127.0.0.1: answers every request `200 ok` and keeps its request
/// line, so a test sees which URL gitopsd asked for.
struct RecordingProxy {
    port: u16,
    requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RecordingProxy {
    fn start() -> Self {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (seen, stopping) = (requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
                let mut line = String::new();
                let _ = reader.read_line(&mut line);
                seen.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(line.trim().to_string());
                let mut header = String::new();
                while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
                    header.clear();
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
            }
        });
        Self {
            port,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    fn requests(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Drop for RecordingProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn an_http_check_naming_preview_asks_the_preview_service_until_the_end() {
    let check = "\n[[environment.health]]\nname = \"new-version\"\ntype = \"http\"\nurl = \"http://{preview}:8080/health\"\ninterval = \"100ms\"\nfailures = 2\n";
    let rollout = RolloutWorkspace::new(&format!("{BLUE_GREEN}\n{check}"));
    let before = deployed(&rollout);
    let proxy = RecordingProxy::start();
    web(&rollout.workspace.repo, "web:2", "hello", 4);
    rollout.workspace.repo.commit("web 2");
    let proxy_url = format!("http://127.0.0.1:{}", proxy.port);
    let output = rollout
        .workspace
        .gitopsd(&["run", "--once"])
        .env("http_proxy", &proxy_url)
        .env("HTTP_PROXY", &proxy_url)
        .env_remove("no_proxy")
        .env_remove("NO_PROXY")
        .output()
        .expect("gitopsd runs");
    assert_exit(&output, 0);
    assert_eq!(
        rollout.events_since(before),
        [
            "rollout_started",
            "preview_started",
            "switched",
            "scaled_down",
            "healthy"
        ]
    );
    let requests = proxy.requests();
    let preview = "GET http://web-preview.shop.svc:8080/health HTTP/1.1";
    assert!(
        !requests.is_empty() && requests.iter().all(|r| r == preview),
        "the preview Service selects only the new pods until the verify window ends: {requests:?}"
    );
}

#[test]
fn a_mixed_rollout_killed_at_each_journal_point_ends_with_one_version_and_nothing_left_over() {
    let rollout = RolloutWorkspace::new(
        "steps = [50, 100]\nbake = \"200ms\"\nverify = \"300ms\"\nscale_down_delay = \"200ms\"\ntimeout = \"5s\"",
    );
    let workspace = &rollout.workspace;
    let write = |web: &str, api: &str| {
        workspace.repo.write(
            "environments/staging/web.yaml",
            &workload("web", web, Some("blue-green")),
        );
        workspace
            .repo
            .write("environments/staging/api.yaml", &workload("api", api, None));
    };
    write("web:1", "api:1");
    workspace.repo.commit("v1");
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    let old_records = workspace.journal("staging").len();
    let journal_dir = workspace.path("state/journal");
    let saved_journal = workspace.path("saved-journal");
    copy_dir(&journal_dir, &saved_journal);
    let old_tree = tree(&workspace.live("staging"));
    let saved_live = workspace.path("saved-live");
    copy_dir(&workspace.live("staging"), &saved_live);

    write("web:2", "api:2");
    workspace.repo.commit("both 2");
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    let new_tree = tree(&workspace.live("staging"));
    let points = workspace.journal("staging").len() - old_records;
    assert_eq!(
        points, 9,
        "rollout_started, preview_started, step_started, step_passed, switched, step_started, promoted, scaled_down, healthy"
    );
    for point in 1..=points {
        copy_dir(&saved_journal, &journal_dir);
        copy_dir(&saved_live, &workspace.live("staging"));
        assert_eq!(tree(&workspace.live("staging")), old_tree);
        let mut child = workspace.spawn(&["run", "--once"]);
        let reached = wait_for(Duration::from_secs(30), || {
            gitopsd::journal::load_all(&workspace.path("state"), "staging")
                .is_ok_and(|records| records.len() >= old_records + point)
        });
        assert!(reached, "journal point {point} was never reached");
        child.signal(libc::SIGKILL);
        child
            .wait_timeout(Duration::from_secs(10))
            .expect("killed child exits");
        let killed_at = workspace.journal("staging").len();
        let interrupted = History::from_records(&workspace.journal("staging"))
            .in_flight
            .is_some();
        assert_exit(&workspace.run(&["run", "--once"]), 0);
        let after: Vec<&str> = workspace.journal("staging")[killed_at..]
            .iter()
            .map(|record| record.event.name())
            .collect();
        if interrupted {
            assert_eq!(
                after.first(),
                Some(&"revert_started"),
                "point {point}: an interrupted mixed rollout is undone first: {after:?}"
            );
            assert!(
                after.contains(&"preview_started") && !after.contains(&"rollout_failed"),
                "point {point}: then started over, not blamed: {after:?}"
            );
        }
        assert_eq!(
            tree(&workspace.live("staging")),
            new_tree,
            "point {point}: the restart ends fully new, with no preview nor canary left"
        );
    }
}

#[test]
fn a_failure_after_the_scale_down_restores_the_old_template_behind_the_preview_then_switches_back()
{
    let rollout = RolloutWorkspace::new(BLUE_GREEN);
    let before = deployed(&rollout);
    let old_tree = tree(&rollout.workspace.live("staging"));
    // Only once the Deployment named in git runs the new template beside the preview.
    rollout.fail_when("^4 web:2 4 web:2 ");
    web(&rollout.workspace.repo, "web:2", "hello", 4);
    let bad = rollout.workspace.repo.commit("web 2");
    let output = rollout.workspace.run(&["run", "--once"]);
    assert_exit(&output, 1);
    let events = rollout.events_since(before);
    assert_eq!(
        events,
        [
            "rollout_started",
            "preview_started",
            "switched",
            "scaled_down",
            "check_failed",
            "rollout_failed",
            "revert_started",
            "switched_back",
            "reverted"
        ]
    );
    let records = rollout.workspace.journal("staging");
    assert!(
        records.iter().any(|record| matches!(&record.event, Event::SwitchedBack { reason, .. } if reason.contains("old template is ready again"))),
        "{records:?}"
    );
    assert_eq!(
        rollout.take_observed().last().map(String::as_str),
        Some("4 web:2 4 web:2 hello -"),
        "the check saw the new template on both Deployments, the Service on the preview"
    );
    assert_eq!(tree(&rollout.workspace.live("staging")), old_tree);
    let history = History::from_records(&records);
    assert!(history.failed.iter().any(|failed| failed.0 == bad));
}
