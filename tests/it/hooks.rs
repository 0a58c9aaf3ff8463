//! Exec hooks (`[[environment.hook]]`) around rollouts on the directory target: their order,
//! the `GITOPSD_*` variables they see, a failing one holding or reverting the revision, and a
//! SIGKILL in the middle of one.
//!
//! The hook script appends one line per run to a log: its label, the variables it sees, and
//! the ConfigMap value live in the target folder when it ran (so the log shows whether the
//! revision's objects were written before or after it).

use std::fs;
use std::time::Duration;

use gitopsd::history::History;
use gitopsd::journal::Event;

use crate::helpers::*;

const HOOK_SCRIPT: &str = r#"#!/bin/sh
# Usage: hook.sh LOG LIVE LABEL [failif FLAG_FILE | wait RELEASE_FILE]
log="$1"; live="$2"; label="$3"
value="$(sed -n 's/^ *GREETING: //p' "$live/shop/ConfigMap/web-config.yaml" 2>/dev/null | head -n 1)"
echo "$label hook=$GITOPSD_HOOK env=$GITOPSD_ENVIRONMENT rev=$GITOPSD_REVISION prev=$GITOPSD_PREVIOUS_REVISION extra=$EXTRA home=$HOME path=${PATH:+set} other=${SECRET_TOKEN:-unset} live=${value:--}" >> "$log"
case "$4" in
  failif) if [ -e "$5" ]; then echo "migration 42 broke" >&2; exit 3; fi ;;
  wait) echo $$ > "$log.pid"; while [ ! -e "$5" ]; do sleep 0.05; done ;;
esac
exit 0
"#;

struct HookWorkspace {
    workspace: Workspace,
}

impl HookWorkspace {
    /// Staging with the given `[[environment.hook]]` tables; `{hook}` in them is the hook
    /// script's invocation up to its label.
    fn new(hooks: &str) -> Self {
        let workspace = Workspace::new();
        let script = workspace.path("hook.sh");
        fs::write(&script, HOOK_SCRIPT).expect("write hook script");
        let invocation = format!(
            "\"/bin/sh\", \"{}\", \"{}\", \"{}\"",
            script.display(),
            workspace.path("hooks.log").display(),
            workspace.live("staging").display()
        );
        let flags = workspace.path("flags");
        fs::create_dir_all(&flags).expect("flags folder");
        let extra = format!(
            "[environment.rollout]\nverify = \"0s\"\ntimeout = \"5s\"\n{}",
            hooks
                .replace("{hook}", &invocation)
                .replace("{flags}", &flags.display().to_string())
        );
        workspace.write_config_with(&workspace.repo.dir.display().to_string(), "30s", &extra);
        workspace.repo.write(
            "environments/production/one.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: one\n",
        );
        Self { workspace }
    }

    /// A file the hook script looks for (`{flags}/<name>` in the hook tables).
    fn flag(&self, name: &str) -> std::path::PathBuf {
        self.workspace.path("flags").join(name)
    }

    fn commit(&self, greeting: &str) -> String {
        crate::rollout::web(&self.workspace.repo, "web:1", greeting, 2);
        self.workspace.repo.commit(greeting)
    }

    fn run_once(&self) -> std::process::Output {
        let mut command = self.workspace.gitopsd(&["run", "--once"]);
        command.env("SECRET_TOKEN", "from-gitopsd");
        command.output().expect("gitopsd runs")
    }

    fn log(&self) -> Vec<String> {
        fs::read_to_string(self.workspace.path("hooks.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn events_since(&self, count: usize) -> Vec<String> {
        self.workspace.journal("staging")[count..]
            .iter()
            .map(|record| match &record.event {
                Event::HookStarted { when, hook, .. }
                | Event::HookSucceeded { when, hook, .. }
                | Event::HookFailed { when, hook, .. } => {
                    format!("{} {when} {hook}", record.event.name())
                }
                other => other.name().to_string(),
            })
            .collect()
    }
}

#[test]
fn hooks_run_in_order_around_the_rollout_with_the_gitopsd_variables() {
    let hooks = HookWorkspace::new(
        r#"
[[environment.hook]]
name = "smoke"
when = "post-promotion"
command = [{hook}, "smoke"]
[[environment.hook]]
name = "backup"
when = "pre-rollout"
weight = 5
command = [{hook}, "backup"]
env = { EXTRA = "set-in-config" }
[[environment.hook]]
name = "migrate"
when = "pre-rollout"
command = [{hook}, "migrate"]
env = ["SECRET_TOKEN"]
"#,
    );
    let first = hooks.commit("hello");
    assert_exit(&hooks.run_once(), 0);
    let second = hooks.commit("bonjour");
    let diff = stdout(&hooks.workspace.run(&["diff", "--env", "staging"]));
    let announced: Vec<&str> = diff
        .lines()
        .filter(|line| line.contains(" will run"))
        .map(|line| line.split(" (").next().unwrap_or_default())
        .collect();
    assert_eq!(
        announced,
        [
            "pre-rollout: command migrate",
            "pre-rollout: command backup",
            "post-promotion: command smoke"
        ],
        "{diff}"
    );
    let before = hooks.workspace.journal("staging").len();
    assert_exit(&hooks.run_once(), 0);

    let log = hooks.log();
    assert_eq!(log.len(), 6, "{log:#?}");
    let (first_run, second_run) = log.split_at(3);
    let labels = |lines: &[String]| -> Vec<String> {
        lines
            .iter()
            .map(|line| line.split(' ').next().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(labels(first_run), ["migrate", "backup", "smoke"]);
    assert_eq!(labels(second_run), ["migrate", "backup", "smoke"]);
    let field = |line: &str, name: &str| -> String {
        line.split(' ')
            .find_map(|word| word.strip_prefix(&format!("{name}=")))
            .unwrap_or_default()
            .to_string()
    };
    // First deploy: nothing before it, nothing live while the pre-rollout hooks run.
    assert_eq!(field(&first_run[0], "prev"), "");
    assert_eq!(field(&first_run[0], "rev"), first);
    assert_eq!(field(&first_run[0], "live"), "-");
    assert_eq!(field(&first_run[2], "live"), "hello");
    // The next revision: pre-rollout hooks see the old objects, post-promotion the new.
    for line in second_run {
        assert_eq!(field(line, "rev"), second, "{line}");
        assert_eq!(field(line, "prev"), first, "{line}");
        assert_eq!(field(line, "env"), "staging", "{line}");
        assert_eq!(field(line, "path"), "set", "{line}");
        assert!(field(line, "home").contains("hook-tmp"), "{line}");
    }
    assert_eq!(field(&second_run[0], "hook"), "pre-rollout");
    assert_eq!(field(&second_run[0], "live"), "hello");
    assert_eq!(field(&second_run[1], "live"), "hello");
    assert_eq!(field(&second_run[2], "hook"), "post-promotion");
    assert_eq!(field(&second_run[2], "live"), "bonjour");
    // Only what `env` names reaches a hook.
    assert_eq!(field(&second_run[0], "other"), "from-gitopsd");
    assert_eq!(field(&second_run[0], "extra"), "");
    assert_eq!(field(&second_run[1], "other"), "unset");
    assert_eq!(field(&second_run[1], "extra"), "set-in-config");

    assert_eq!(
        hooks.events_since(before),
        [
            "hook_started pre-rollout command migrate",
            "hook_succeeded pre-rollout command migrate",
            "hook_started pre-rollout command backup",
            "hook_succeeded pre-rollout command backup",
            "rollout_started",
            "step_started",
            "promoted",
            "hook_started post-promotion command smoke",
            "hook_succeeded post-promotion command smoke",
            "healthy",
        ]
    );
    let history = hooks.workspace.run(&["history", "--env", "staging"]);
    let text = stdout(&history);
    assert!(
        text.contains("post-promotion: command smoke after "),
        "{text}"
    );
    let status = stdout(&hooks.workspace.run(&["status", "--env", "staging"]));
    assert!(
        status.contains(&format!(
            "last hook:              post-promotion command smoke of {}: succeeded after",
            &second[..12]
        )),
        "{status}"
    );
    // No hook folder is left behind.
    let left = fs::read_dir(hooks.workspace.path("state/hook-tmp"))
        .expect("hook folder root")
        .count();
    assert_eq!(left, 0);
}

#[test]
fn a_failed_pre_rollout_hook_holds_and_a_failed_post_promotion_hook_reverts_then_on_failure_runs() {
    let hooks = HookWorkspace::new(
        r#"
[[environment.hook]]
name = "migrate"
when = "pre-rollout"
command = [{hook}, "migrate", "failif", "{flags}/migrate"]
[[environment.hook]]
name = "smoke"
when = "post-promotion"
command = [{hook}, "smoke", "failif", "{flags}/smoke"]
[[environment.hook]]
name = "cleanup"
when = "on-failure"
command = [{hook}, "cleanup"]
"#,
    );
    let flag = |name: &str| hooks.flag(name);
    let first = hooks.commit("hello");
    assert_exit(&hooks.run_once(), 0);
    let healthy_tree = tree(&hooks.workspace.live("staging"));

    // A failing migration: the revision is failed and held, nothing of it written, nothing
    // reverted, and no on-failure hook runs (nothing was changed).
    fs::write(flag("migrate"), "").expect("flag");
    let held = hooks.commit("bonjour");
    let before = hooks.workspace.journal("staging").len();
    let output = hooks.run_once();
    assert_exit(&output, 1);
    assert!(
        stderr(&output).contains("pre-rollout hook command migrate failed"),
        "{}",
        stderr(&output)
    );
    assert_eq!(tree(&hooks.workspace.live("staging")), healthy_tree);
    assert_eq!(
        hooks.events_since(before),
        [
            "hook_started pre-rollout command migrate",
            "hook_failed pre-rollout command migrate",
            "rollout_failed",
        ]
    );
    let records = hooks.workspace.journal("staging");
    let Some(Event::HookFailed {
        message,
        duration_ms,
        ..
    }) = records
        .iter()
        .rev()
        .map(|r| &r.event)
        .find(|e| e.name() == "hook_failed")
    else {
        panic!("no hook_failed record");
    };
    assert_eq!(message, "exited with status 3: migration 42 broke");
    assert!(*duration_ms < 60_000);
    let history = History::from_records(&records);
    assert!(history.failed.iter().any(|r| r.0 == held));
    assert_eq!(history.in_flight, None, "nothing to revert");
    let status = stdout(&hooks.workspace.run(&["status", "--env", "staging"]));
    assert!(
        status.contains(&format!(
            "last failed revision:   {} (held; gitopsd retry rolls it out again): pre-rollout hook command migrate failed: exited with status 3: migration 42 broke",
            &held[..12]
        )),
        "{status}"
    );
    let runs = hooks.log().len();
    hooks.run_once();
    assert_eq!(
        hooks.log().len(),
        runs,
        "a held revision runs no hook again"
    );

    // A failing smoke test after the promotion: reverted, then the on-failure hook runs
    // against the restored objects.
    fs::remove_file(flag("migrate")).expect("unflag");
    fs::write(flag("smoke"), "").expect("flag");
    let bad = hooks.commit("salut");
    let before = hooks.workspace.journal("staging").len();
    assert_exit(&hooks.run_once(), 1);
    let after = tree(&hooks.workspace.live("staging"));
    let config = "shop/ConfigMap/web-config.yaml";
    assert_eq!(
        after[config], healthy_tree[config],
        "the ConfigMap is put back"
    );
    assert_eq!(
        hooks.events_since(before),
        [
            "hook_started pre-rollout command migrate",
            "hook_succeeded pre-rollout command migrate",
            "rollout_started",
            "step_started",
            "promoted",
            "hook_started post-promotion command smoke",
            "hook_failed post-promotion command smoke",
            "rollout_failed",
            "revert_started",
            "hook_started on-failure command cleanup",
            "hook_succeeded on-failure command cleanup",
            "reverted",
        ]
    );
    let cleanup = hooks.log().pop().expect("a cleanup line");
    assert_eq!(
        cleanup.split(' ').next(),
        Some("cleanup"),
        "{:#?}",
        hooks.log()
    );
    assert!(
        cleanup.contains(&format!("rev={bad} prev={first}")),
        "{cleanup}"
    );
    assert!(cleanup.contains("hook=on-failure"), "{cleanup}");
    assert!(cleanup.ends_with("live=hello"), "{cleanup}");
}

#[test]
fn a_hook_killed_with_gitopsd_runs_again_from_the_start_on_restart() {
    let hooks = HookWorkspace::new(
        r#"
[[environment.hook]]
name = "migrate"
when = "pre-rollout"
command = [{hook}, "migrate", "wait", "{flags}/release"]
"#,
    );
    let release = hooks.flag("release");
    hooks.commit("hello");
    let mut child = hooks.workspace.spawn(&["run", "--once"]);
    let pid_file = hooks.workspace.path("hooks.log.pid");
    assert!(
        wait_for(Duration::from_secs(30), || pid_file.exists()
            && !fs::read_to_string(&pid_file)
                .unwrap_or_default()
                .trim()
                .is_empty()),
        "the hook started"
    );
    let hook_pid: i32 = fs::read_to_string(&pid_file)
        .expect("pid")
        .trim()
        .parse()
        .expect("a pid");
    child.signal(libc::SIGKILL);
    child
        .wait_timeout(Duration::from_secs(10))
        .expect("gitopsd died");
    // The hook dies with gitopsd (it is not left running unsupervised).
    assert!(
        wait_for(Duration::from_secs(10), || unsafe {
            libc::kill(hook_pid, 0) != 0
        }),
        "the hook process {hook_pid} outlived gitopsd"
    );
    let records = hooks.workspace.journal("staging");
    assert_eq!(
        records.last().map(|r| r.event.name()),
        Some("hook_started"),
        "killed while the hook ran"
    );

    fs::write(&release, "").expect("release");
    assert_exit(&hooks.run_once(), 0);
    let labels: Vec<String> = hooks
        .log()
        .iter()
        .map(|line| line.split(' ').next().unwrap_or_default().to_string())
        .collect();
    assert_eq!(labels, ["migrate", "migrate"], "run again from the start");
    assert_eq!(
        hooks.events_since(0),
        [
            "inventory",
            "hook_started pre-rollout command migrate",
            "hook_started pre-rollout command migrate",
            "hook_succeeded pre-rollout command migrate",
            "rollout_started",
            "step_started",
            "promoted",
            "healthy",
        ]
    );
}

#[test]
fn a_hook_object_on_a_directory_target_is_refused_with_its_file_and_document() {
    let hooks = HookWorkspace::new("");
    hooks.commit("hello");
    hooks.workspace.repo.write(
        "environments/staging/migrate.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: other\n---\napiVersion: batch/v1\nkind: Job\nmetadata:\n  name: migrate\n  annotations: {gitopsd.io/hook: pre-rollout}\nspec:\n  template:\n    spec:\n      restartPolicy: Never\n      containers: [{name: m, image: m}]\n",
    );
    hooks.workspace.repo.commit("a hook Job");
    let output = hooks.workspace.run(&["validate"]);
    assert_exit(&output, 1);
    let text = stdout(&output);
    assert!(
        text.contains("environments/staging/migrate.yaml")
            && text.contains("document 2")
            && text.contains("objects annotated gitopsd.io/hook run on a kubernetes target"),
        "{text}"
    );
    let output = hooks.run_once();
    assert_exit(&output, 1);
    assert!(
        !hooks.workspace.live("staging").join("shop").exists(),
        "nothing of the revision was applied"
    );
}

#[test]
fn the_daemon_s_status_endpoint_shows_the_last_hook_run() {
    let hooks = HookWorkspace::new(
        r#"
[[environment.hook]]
name = "migrate"
when = "pre-rollout"
command = [{hook}, "migrate", "failif", "{flags}/migrate"]
"#,
    );
    fs::write(hooks.flag("migrate"), "").expect("flag");
    let revision = hooks.commit("hello");
    let (_daemon, address) = daemon_with_api(&hooks.workspace, "token");
    let mut last_hook = serde_json::Value::Null;
    let seen = wait_for(Duration::from_secs(30), || {
        let Some((200, body)) = http_request(&address, "GET", "/status", &[], "") else {
            return false;
        };
        let status: serde_json::Value = serde_json::from_str(&body).expect("status JSON");
        last_hook = status
            .as_array()
            .and_then(|all| all.iter().find(|env| env["environment"] == "staging"))
            .map(|env| env["last_hook"].clone())
            .unwrap_or_default();
        last_hook["state"] == "failed"
    });
    assert!(seen, "{last_hook}");
    assert_eq!(last_hook["revision"], revision.as_str());
    assert_eq!(last_hook["when"], "pre-rollout");
    assert_eq!(last_hook["hook"], "command migrate");
    assert_eq!(
        last_hook["message"],
        "exited with status 3: migration 42 broke"
    );
    assert!(last_hook["duration_ms"].is_u64(), "{last_hook}");
}

#[test]
fn hooks_wait_for_the_window_like_any_change() {
    let hooks = HookWorkspace::new(
        r#"
[[environment.hook]]
name = "migrate"
when = "pre-rollout"
command = [{hook}, "migrate"]
"#,
    );
    // Opens one minute a year, at new year.
    hooks.workspace.edit_config(
        "[environment.rollout]",
        "window = { schedule = \"0 0 1 1 *\", duration = \"1m\", timezone = \"UTC\" }\n[environment.rollout]",
    );
    hooks.commit("hello");
    let output = hooks.run_once();
    assert_exit(&output, 0);
    assert!(
        stderr(&output).contains("outside the change window"),
        "{}",
        stderr(&output)
    );
    assert_eq!(hooks.log(), Vec::<String>::new(), "no hook ran");
    assert!(
        !hooks
            .workspace
            .journal("staging")
            .iter()
            .any(|record| record.event.name().starts_with("hook_")),
        "no hook journaled"
    );
}
