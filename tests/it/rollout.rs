//! Canary rollouts, health checks and automatic revert, on the directory target.
//!
//! An exec check (`check.sh`) records what the live folder holds each time it runs, so the
//! tests see exactly what every step looked like, and fails when the live state matches a
//! pattern the test chooses.

use std::fs;
use std::process::Stdio;
use std::time::Duration;

use gitopsd::history::History;
use gitopsd::journal::Event;

use crate::helpers::*;

const CHECK_SCRIPT: &str = r#"#!/bin/sh
# Usage: check.sh LIVE LOG FAIL_PATTERN_FILE
live="$1"; log="$2"; pattern_file="$3"
field() { if [ -f "$1" ]; then sed -n "s/^ *$2: //p" "$1" | head -n 1; else echo -; fi; }
d="$live/shop/Deployment.apps"
c="$live/shop/ConfigMap"
line="$(field "$d/web.yaml" replicas) $(field "$d/web.yaml" image) $(field "$d/web-canary.yaml" replicas) $(field "$d/web-canary.yaml" image) $(field "$c/web-config.yaml" GREETING) $(field "$c/web-config-canary.yaml" GREETING)"
echo "$line" >> "$log"
if [ -s "$pattern_file" ] && echo "$line" | grep -Eq -f "$pattern_file"; then
  echo "unhealthy: $line" >&2
  exit 1
fi
exit 0
"#;

/// The staging web app: a Deployment of `replicas` running `image`, its ConfigMap and Service.
pub fn web(repo: &Repo, image: &str, greeting: &str, replicas: u32) {
    repo.write(
        "environments/staging/web.yaml",
        &format!(
            r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: web-config
data:
  GREETING: {greeting}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {{app: web}}
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
          image: {image}
          envFrom:
            - configMapRef: {{name: web-config}}
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
}

/// A workspace whose staging environment rolls out in [10, 50, 100] with the check script.
pub struct RolloutWorkspace {
    pub workspace: Workspace,
}

impl RolloutWorkspace {
    pub fn new(rollout: &str) -> Self {
        let workspace = Workspace::new();
        let script = workspace.path("check.sh");
        fs::write(&script, CHECK_SCRIPT).expect("write check script");
        fs::write(workspace.path("fail-pattern"), "").expect("write pattern file");
        let extra = format!(
            r#"
[environment.rollout]
{rollout}

[[environment.health]]
name = "live-state"
type = "exec"
command = "sh {} {} {} {}"
interval = "100ms"
failures = 2
timeout = "5s"
"#,
            script.display(),
            workspace.live("staging").display(),
            workspace.path("observed.log").display(),
            workspace.path("fail-pattern").display()
        );
        workspace.write_config_with(&workspace.repo.dir.display().to_string(), "30s", &extra);
        workspace.repo.write(
            "environments/production/one.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: one\n",
        );
        Self { workspace }
    }

    /// Makes the check fail whenever the observed line matches `pattern` (extended regex).
    pub fn fail_when(&self, pattern: &str) {
        fs::write(self.workspace.path("fail-pattern"), pattern).expect("write pattern");
    }

    /// Observed lines, consecutive duplicates removed, and the log emptied.
    pub fn take_observed(&self) -> Vec<String> {
        let path = self.workspace.path("observed.log");
        let text = fs::read_to_string(&path).unwrap_or_default();
        fs::write(&path, "").expect("clear log");
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        lines.dedup();
        lines
    }

    pub fn events_since(&self, count: usize) -> Vec<String> {
        self.workspace.journal("staging")[count..]
            .iter()
            .map(|record| match &record.event {
                Event::StepStarted { weight, .. } => format!("step_started {weight}"),
                Event::StepPassed { weight, .. } => format!("step_passed {weight}"),
                other => other.name().to_string(),
            })
            .collect()
    }
}

const STEPS: &str = r#"steps = [10, 50, 100]
bake = "400ms"
verify = "400ms"
timeout = "5s""#;

fn first_deploy(rollout: &RolloutWorkspace) -> String {
    web(&rollout.workspace.repo, "web:1", "hello", 10);
    let first = rollout.workspace.repo.commit("web 1");
    assert_exit(&rollout.workspace.run(&["run", "--once"]), 0);
    rollout.take_observed();
    first
}

#[test]
fn good_commit_passes_through_each_canary_step_then_promotes() {
    let rollout = RolloutWorkspace::new(STEPS);
    first_deploy(&rollout);
    let before = rollout.workspace.journal("staging").len();

    web(&rollout.workspace.repo, "web:2", "hello", 10);
    rollout.workspace.repo.commit("web 2");
    let output = rollout.workspace.run(&["run", "--once"]);
    assert_exit(&output, 0);

    assert_eq!(
        rollout.take_observed(),
        [
            "9 web:1 1 web:2 hello -",
            "5 web:1 5 web:2 hello -",
            "10 web:2 - - hello -",
        ],
        "stable/canary replicas and images at each step, then the promoted Deployment alone"
    );
    assert_eq!(
        rollout.events_since(before),
        [
            "rollout_started",
            "step_started 10",
            "step_passed 10",
            "step_started 50",
            "step_passed 50",
            "step_started 100",
            "promoted",
            "healthy",
        ]
    );
    let live = tree(&rollout.workspace.live("staging"));
    assert!(
        !live.keys().any(|path| path.contains("canary")),
        "{:?}",
        live.keys()
    );
    let logs = stderr(&output);
    assert!(
        logs.contains("step started") && logs.contains("env=staging"),
        "{logs}"
    );
}

#[test]
fn bad_commit_fails_at_step_two_and_is_reverted_byte_for_byte_and_held() {
    let rollout = RolloutWorkspace::new(STEPS);
    let first = first_deploy(&rollout);
    let healthy_tree = tree(&rollout.workspace.live("staging"));
    let before = rollout.workspace.journal("staging").len();

    // web:bad is only unhealthy once it takes half the traffic.
    rollout.fail_when("^5 web:1 5 web:bad ");
    web(&rollout.workspace.repo, "web:bad", "hello", 10);
    let bad = rollout.workspace.repo.commit("web bad");
    let output = rollout.workspace.run(&["run", "--once"]);
    assert_exit(&output, 1);
    assert!(stderr(&output).contains("reverted"), "{}", stderr(&output));
    assert_eq!(
        tree(&rollout.workspace.live("staging")),
        healthy_tree,
        "the live folder is byte-identical to the healthy revision"
    );
    assert_eq!(
        rollout.events_since(before),
        [
            "rollout_started",
            "step_started 10",
            "step_passed 10",
            "step_started 50",
            "check_failed",
            "rollout_failed",
            "revert_started",
            "reverted",
        ]
    );
    let history = History::from_records(&rollout.workspace.journal("staging"));
    assert_eq!(
        history.last_healthy.as_ref().map(|r| r.0.as_str()),
        Some(first.as_str())
    );
    assert!(history.failed.iter().any(|r| r.0 == bad));

    let status = rollout.workspace.run(&["status", "--env", "staging"]);
    assert_exit(&status, 0);
    let text = stdout(&status);
    assert!(
        text.contains(&format!("last healthy revision:  {}", &first[..12])),
        "{text}"
    );
    assert!(
        text.contains(&format!("last failed revision:   {} (held", &bad[..12])),
        "{text}"
    );

    let stats = rollout
        .workspace
        .run(&["history", "--stats", "--env", "staging"]);
    assert_exit(&stats, 0);
    let text = stdout(&stats);
    assert!(text.contains("1 deployments over"), "{text}");
    assert!(
        text.contains("change failure rate:    50% (1 of 2 rollouts failed)"),
        "{text}"
    );
    assert!(
        text.contains("(failed rollout's start to reverted, 1 restores)"),
        "{text}"
    );
    assert!(
        !text.contains("lead time:              median n/a"),
        "{text}"
    );

    // The next pass does not retry the failed commit.
    let journal_len = rollout.workspace.journal("staging").len();
    rollout.take_observed();
    assert_exit(&rollout.workspace.run(&["run", "--once"]), 0);
    assert_eq!(rollout.workspace.journal("staging").len(), journal_len);
    assert_eq!(tree(&rollout.workspace.live("staging")), healthy_tree);

    // A newer good commit rolls out.
    rollout.fail_when("");
    web(&rollout.workspace.repo, "web:3", "hello", 10);
    rollout.workspace.repo.commit("web 3");
    assert_exit(&rollout.workspace.run(&["run", "--once"]), 0);
    let observed = rollout.take_observed();
    assert_eq!(
        observed.last().map(String::as_str),
        Some("10 web:3 - - hello -")
    );
}

#[test]
fn changed_config_reaches_only_the_canary_until_promotion() {
    let rollout = RolloutWorkspace::new(STEPS);
    first_deploy(&rollout);
    web(&rollout.workspace.repo, "web:1", "bonjour", 10);
    rollout.workspace.repo.commit("new greeting");
    assert_exit(&rollout.workspace.run(&["run", "--once"]), 0);
    assert_eq!(
        rollout.take_observed(),
        [
            "9 web:1 1 web:1 hello bonjour",
            "5 web:1 5 web:1 hello bonjour",
            "10 web:1 - - bonjour -",
        ]
    );
    let canary = tree(&rollout.workspace.live("staging"));
    assert!(!canary.keys().any(|path| path.contains("canary")));
}

#[test]
fn failure_in_the_verify_window_after_promotion_reverts() {
    let rollout = RolloutWorkspace::new(STEPS);
    first_deploy(&rollout);
    let healthy_tree = tree(&rollout.workspace.live("staging"));
    rollout.fail_when("^10 web:4 - -");
    web(&rollout.workspace.repo, "web:4", "hello", 10);
    rollout
        .workspace
        .repo
        .commit("web 4, broken once fully rolled out");
    let before = rollout.workspace.journal("staging").len();
    assert_exit(&rollout.workspace.run(&["run", "--once"]), 1);
    let events = rollout.events_since(before);
    let tail: Vec<&str> = events[events.len() - 5..]
        .iter()
        .map(String::as_str)
        .collect();
    assert_eq!(
        tail,
        [
            "promoted",
            "check_failed",
            "rollout_failed",
            "revert_started",
            "reverted"
        ]
    );
    assert_eq!(tree(&rollout.workspace.live("staging")), healthy_tree);
}

#[test]
fn status_shows_the_step_in_flight() {
    let rollout = RolloutWorkspace::new(
        r#"steps = [10, 100]
bake = "30s"
timeout = "5s""#,
    );
    first_deploy(&rollout);
    web(&rollout.workspace.repo, "web:2", "hello", 10);
    rollout.workspace.repo.commit("web 2");
    let _daemon = ChildGuard(
        rollout
            .workspace
            .gitopsd(&["run", "--once"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("gitopsd starts"),
    );
    let in_flight = wait_for(Duration::from_secs(20), || {
        stdout(&rollout.workspace.run(&["status", "--env", "staging"])).contains("step 1 (10%)")
    });
    assert!(in_flight, "status never showed the step in flight");
}

#[test]
fn revert_commit_is_pushed_to_a_bare_repository() {
    let rollout = RolloutWorkspace::new(&format!("{STEPS}\nrevert_commit = true"));
    let workspace = &rollout.workspace;
    let bare = workspace.bare_remote();

    web(&workspace.repo, "web:1", "hello", 10);
    let healthy = workspace.repo.commit("web 1");
    git(&workspace.repo.dir, &["push", "-q", "origin", "main"]);
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    let healthy_tree = tree(&workspace.live("staging"));

    rollout.fail_when("web:bad");
    web(&workspace.repo, "web:bad", "hello", 10);
    let bad = workspace.repo.commit("web bad");
    git(&workspace.repo.dir, &["push", "-q", "origin", "main"]);
    let output = workspace.run(&["run", "--once"]);
    assert_exit(&output, 1);
    assert!(
        stderr(&output).contains("revert commit pushed"),
        "{}",
        stderr(&output)
    );

    let bare_git = |args: &[&str]| {
        let mut full = vec!["--git-dir", bare.to_str().expect("utf-8 path")];
        full.extend_from_slice(args);
        git(workspace.root.path(), &full)
    };
    let tip = bare_git(&["rev-parse", "main"]);
    assert_ne!(tip, bad, "the branch moved past the bad commit");
    assert_eq!(
        bare_git(&["rev-parse", "main^"]),
        bad,
        "a fast-forward on top of it"
    );
    assert!(
        bare_git(&["log", "-1", "--format=%s", "main"])
            .starts_with("Revert environments/staging to")
    );
    assert_eq!(
        bare_git(&["rev-parse", "main:environments/staging"]),
        bare_git(&["rev-parse", &format!("{healthy}:environments/staging")]),
        "the folder is back at the healthy revision"
    );
    assert_eq!(
        bare_git(&["rev-parse", "main:environments/production"]),
        bare_git(&["rev-parse", &format!("{bad}:environments/production")]),
        "other folders are untouched"
    );
    assert!(
        workspace
            .journal("staging")
            .iter()
            .any(|r| matches!(&r.event, Event::RevertCommitted { commit, .. } if commit.0 == tip))
    );

    // The revert commit holds what is live: it is healthy without a rollout.
    rollout.fail_when("");
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    assert_eq!(tree(&workspace.live("staging")), healthy_tree);
    let history = History::from_records(&workspace.journal("staging"));
    assert_eq!(history.last_healthy.map(|r| r.0), Some(tip));
}
