//! `gitopsd diff`: against live state and between two revisions, with exit codes 0/1/2.

use crate::helpers::*;

fn two_commits(workspace: &Workspace) -> (String, String) {
    write_environment(&workspace.repo, "staging", 1);
    write_environment(&workspace.repo, "production", 1);
    let old = workspace.repo.commit("old");
    write_environment(&workspace.repo, "staging", 3);
    workspace.repo.remove("environments/staging/extra.yaml");
    let new = workspace.repo.commit("new");
    (old, new)
}

#[test]
fn diff_between_revisions_prints_changes_and_exits_one() {
    let workspace = Workspace::new();
    let (old, new) = two_commits(&workspace);
    let output = workspace.run(&["diff", "--against", &old, "--rev", &new]);
    assert_exit(&output, 1);
    let text = stdout(&output);
    assert!(text.contains("~ update Deployment.apps shop/web"), "{text}");
    assert!(text.contains("-  replicas: 1\n+  replicas: 3"), "{text}");
    assert!(text.contains("- delete ConfigMap shop/extra"), "{text}");
    assert!(
        text.contains("staging: 0 to create, 1 to update, 1 to delete, 2 unchanged"),
        "{text}"
    );
    assert!(
        text.contains("production: 0 to create, 0 to update, 0 to delete, 4 unchanged"),
        "{text}"
    );
    assert!(
        !workspace.live("staging").exists(),
        "an offline diff touches no target"
    );
}

#[test]
fn files_unchanged_between_the_revisions_are_parsed_once() {
    let workspace = Workspace::new();
    let (old, new) = two_commits(&workspace);
    let output = workspace
        .gitopsd(&["diff", "--against", &old, "--rev", &new])
        .env("GITOPSD_LOG", "gitopsd=debug")
        .output()
        .expect("gitopsd runs");
    assert_exit(&output, 1);
    let log = stderr(&output);
    let reads: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("manifests read"))
        .collect();
    assert_eq!(
        reads.len(),
        4,
        "two environments, two revisions each:\n{log}"
    );
    // production is the same at both revisions: the second read parses nothing.
    let production: Vec<&&str> = reads
        .iter()
        .filter(|line| line.contains("env=production"))
        .collect();
    assert!(
        production[0].contains("parsed=") && production[0].contains("cached=0"),
        "{log}"
    );
    assert!(production[1].contains("parsed=0"), "{log}");
    // staging changed one file and lost another: only the changed one is parsed again.
    let staging: Vec<&&str> = reads
        .iter()
        .filter(|line| line.contains("env=staging"))
        .collect();
    assert!(staging[1].contains("parsed=1"), "{log}");
}

#[test]
fn diff_of_identical_trees_exits_zero() {
    let workspace = Workspace::new();
    let (old, _) = two_commits(&workspace);
    // A commit that changes nothing under the environments.
    workspace.repo.write("README.md", "docs only\n");
    let docs = workspace.repo.commit("docs");
    let same = workspace.run(&["diff", "--against", &old, "--rev", &old]);
    assert_exit(&same, 0);
    let parent = git(&workspace.repo.dir, &["rev-parse", "HEAD~1"]);
    let docs_only = workspace.run(&["diff", "--against", &parent, "--rev", &docs]);
    assert_exit(&docs_only, 0);
}

#[test]
fn unknown_revision_exits_two_with_a_clear_message() {
    let workspace = Workspace::new();
    two_commits(&workspace);
    let output = workspace.run(&["diff", "--against", "no-such-branch"]);
    assert_exit(&output, 2);
    assert!(
        stderr(&output).contains("unknown revision \"no-such-branch\""),
        "{}",
        stderr(&output)
    );
}

#[test]
fn diff_against_live_shows_pending_changes() {
    let workspace = Workspace::new();
    write_environment(&workspace.repo, "staging", 1);
    write_environment(&workspace.repo, "production", 1);
    workspace.repo.commit("initial");
    let first = workspace.run(&["diff", "--env", "staging"]);
    assert_exit(&first, 1);
    assert!(
        stdout(&first).contains("staging: 4 to create"),
        "{}",
        stdout(&first)
    );
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    assert_exit(&workspace.run(&["diff"]), 0);

    // An edit made outside git is drift: diff shows it, the next pass puts it back.
    let file = workspace.live("staging").join("shop/ConfigMap/extra.yaml");
    let original = std::fs::read_to_string(&file).expect("live file");
    std::fs::write(&file, original.replace("a: \"1\"", "a: \"2\"")).expect("edit live file");
    assert_ne!(std::fs::read_to_string(&file).expect("live file"), original);
    let drift = workspace.run(&["diff", "--env", "staging"]);
    assert_exit(&drift, 1);
    assert!(
        stdout(&drift)
            .contains("~ update ConfigMap shop/extra (drift: changed outside git: data.a)"),
        "{}",
        stdout(&drift)
    );
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    assert_eq!(std::fs::read_to_string(&file).expect("live file"), original);
    let records = workspace.journal("staging");
    let corrected: Vec<_> = records
        .iter()
        .filter_map(|record| match &record.event {
            gitopsd::journal::Event::DriftCorrected { objects, .. } => Some(objects.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(corrected.len(), 1, "{records:?}");
    assert_eq!(corrected[0][0].object, "ConfigMap shop/extra");
    assert_eq!(corrected[0][0].fields, ["data.a"]);
}

/// A fixture with one of each: a create, an update, a delete, a Secret change, and a
/// Deployment whose image change gets a canary (with the ConfigMap it uses).
fn fixture(workspace: &Workspace) -> (String, String) {
    let repo = &workspace.repo;
    let web = |image: &str, greeting: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: web-config\ndata:\n  GREETING: {greeting}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 4\n  selector:\n    matchLabels: {{app: web}}\n  template:\n    metadata:\n      labels: {{app: web}}\n    spec:\n      containers:\n        - name: web\n          image: {image}\n          envFrom: [{{configMapRef: {{name: web-config}}}}]\n"
        )
    };
    let secret = |password: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\ndata:\n  user: YWRtaW4=\n  password: {password}\n"
        )
    };
    repo.write("environments/staging/web.yaml", &web("web:1", "hello"));
    repo.write(
        "environments/staging/secret.yaml",
        &secret("b2xkLXBhc3N3b3Jk"),
    );
    repo.write(
        "environments/staging/old.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: retired\ndata:\n  a: \"1\"\n",
    );
    write_environment(repo, "production", 1);
    let old = repo.commit("old");
    repo.write("environments/staging/web.yaml", &web("web:2", "bonjour"));
    repo.write(
        "environments/staging/secret.yaml",
        &secret("bmV3LXBhc3N3b3Jk"),
    );
    repo.remove("environments/staging/old.yaml");
    repo.write(
        "environments/staging/new.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector: {app: web}\n  ports: [{port: 80}]\n",
    );
    let new = repo.commit("new");
    (old, new)
}

fn rollout_config(workspace: &Workspace) {
    workspace.write_config_with(
        &workspace.repo.dir.display().to_string(),
        "30s",
        "[environment.rollout]\nsteps = [10, 50, 100]\n",
    );
}

/// The output with revision ids replaced, so snapshots do not depend on commit times.
fn normalized(output: &std::process::Output, old: &str, new: &str) -> String {
    stdout(output)
        .replace(old, "<OLD>")
        .replace(new, "<NEW>")
        .replace(&old[..12], "<OLD>")
        .replace(&new[..12], "<NEW>")
}

#[test]
fn text_output_snapshot() {
    let workspace = Workspace::new();
    rollout_config(&workspace);
    let (old, new) = fixture(&workspace);
    let output = workspace.run(&["diff", "--against", &old, "--rev", &new, "--color", "never"]);
    assert_exit(&output, 1);
    let text = normalized(&output, &old, &new);
    assert!(
        !text.contains("bmV3") && !text.contains("b2xk"),
        "secret values leaked:\n{text}"
    );
    insta::assert_snapshot!("diff_text", text);
}

#[test]
fn markdown_output_snapshot() {
    let workspace = Workspace::new();
    rollout_config(&workspace);
    let (old, new) = fixture(&workspace);
    let output = workspace.run(&[
        "diff",
        "--against",
        &old,
        "--rev",
        &new,
        "--output",
        "markdown",
    ]);
    assert_exit(&output, 1);
    insta::assert_snapshot!("diff_markdown", normalized(&output, &old, &new));
}

#[test]
fn json_output_snapshot() {
    let workspace = Workspace::new();
    rollout_config(&workspace);
    let (old, new) = fixture(&workspace);
    let output = workspace.run(&["diff", "--against", &old, "--rev", &new, "--output", "json"]);
    assert_exit(&output, 1);
    let text = normalized(&output, &old, &new);
    let parsed: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(parsed["version"], 1);
    insta::assert_snapshot!("diff_json", text);
}

#[test]
fn coloured_text_marks_additions_and_removals() {
    let workspace = Workspace::new();
    let (old, new) = fixture(&workspace);
    let output = workspace.run(&[
        "diff",
        "--against",
        &old,
        "--rev",
        &new,
        "--color",
        "always",
    ]);
    assert_exit(&output, 1);
    let text = stdout(&output);
    assert!(
        text.contains("\u{1b}[32m+        image: web:2\u{1b}[0m"),
        "{text}"
    );
    assert!(
        text.contains("\u{1b}[31m-        image: web:1\u{1b}[0m"),
        "{text}"
    );
}

#[test]
fn markdown_is_truncated_with_a_note() {
    let workspace = Workspace::new();
    let mut big = String::new();
    for index in 0..200 {
        big.push_str(&format!(
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: big-{index:03}\ndata:\n  value: \"{}\"\n",
            "x".repeat(100)
        ));
    }
    write_environment(&workspace.repo, "production", 1);
    write_environment(&workspace.repo, "staging", 1);
    let old = workspace.repo.commit("small");
    workspace.repo.write("environments/staging/big.yaml", &big);
    let new = workspace.repo.commit("big");
    let output = workspace.run(&[
        "diff",
        "--against",
        &old,
        "--rev",
        &new,
        "--output",
        "markdown",
        "--max-bytes",
        "5000",
    ]);
    assert_exit(&output, 1);
    let text = stdout(&output);
    assert!(text.len() < 5000 + 1000, "{} bytes", text.len());
    assert!(text.contains("**Truncated:**"), "{text}");
    assert!(
        text.contains("object diffs were left out to stay under 5000 bytes"),
        "{text}"
    );
    assert!(
        text.contains("200 to create"),
        "the summary still counts everything"
    );
}

#[test]
fn json_of_identical_revisions_exits_zero_and_unknown_revision_two() {
    let workspace = Workspace::new();
    let (old, _) = fixture(&workspace);
    let same = workspace.run(&["diff", "--against", &old, "--rev", &old, "--output", "json"]);
    assert_exit(&same, 0);
    let parsed: serde_json::Value = serde_json::from_str(&stdout(&same)).expect("JSON");
    assert_eq!(parsed["environments"][0]["summary"]["create"], 0);
    let unknown = workspace.run(&["diff", "--against", "origin/no-such", "--output", "json"]);
    assert_exit(&unknown, 2);
    assert!(stderr(&unknown).contains("unknown revision \"origin/no-such\""));
}

#[test]
fn a_remote_branch_is_fetched_when_missing() {
    let workspace = Workspace::new();
    let (_, new) = fixture(&workspace);
    assert_exit(
        &workspace.run(&["diff", "--against", &new, "--rev", &new]),
        0,
    );
    git(&workspace.repo.dir, &["checkout", "-q", "-b", "feature"]);
    workspace.repo.write(
        "environments/staging/feature.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: feature\n",
    );
    workspace.repo.commit("feature");
    // The mirror has never seen `feature`: the diff fetches it.
    let output = workspace.run(&["diff", "--against", "main", "--rev", "origin/feature"]);
    assert_exit(&output, 1);
    assert!(
        stdout(&output).contains("+ create ConfigMap shop/feature"),
        "{}",
        stdout(&output)
    );
}

#[test]
fn ci_workflow_recipe_works_with_environment_overrides() {
    // What examples/ci/gitopsd-diff.yml does: the config points elsewhere, the environment
    // variables point it at the checkout and a scratch state folder.
    let workspace = Workspace::new();
    workspace.write_config("/nonexistent/repo", "30s");
    let (old, new) = fixture(&workspace);
    git(&workspace.repo.dir, &["branch", "-f", "gitopsd-base", &old]);
    git(&workspace.repo.dir, &["branch", "-f", "gitopsd-head", &new]);
    let scratch = tempfile::tempdir().expect("tempdir");
    let output = workspace
        .gitopsd(&[
            "diff",
            "--against",
            "gitopsd-base",
            "--rev",
            "gitopsd-head",
            "--output",
            "markdown",
        ])
        .env("GITOPSD_REPO__URL", &workspace.repo.dir)
        .env("GITOPSD_STATE__DIR", scratch.path())
        .output()
        .expect("runs");
    assert_exit(&output, 1);
    assert!(stdout(&output).starts_with("### gitopsd diff"));
    assert!(
        scratch.path().join("repo.git").is_dir(),
        "the mirror lives in the scratch folder"
    );
    assert!(!workspace.path("state").exists());
}

#[test]
fn gates_that_would_hold_the_rollout_are_shown() {
    let workspace = Workspace::new();
    workspace.write_config_with(
        &workspace.repo.dir.display().to_string(),
        "30s",
        "approval = \"manual\"\nwindow = { schedule = \"0 0 1 1 *\", duration = \"1m\" }\n",
    );
    let (old, new) = fixture(&workspace);
    let output = workspace.run(&["diff", "--env", "staging", "--against", &old, "--rev", &new]);
    assert_exit(&output, 1);
    let text = stdout(&output);
    assert!(text.contains("hold: waiting for approval"), "{text}");
    let json = workspace.run(&[
        "diff",
        "--env",
        "staging",
        "--against",
        &old,
        "--rev",
        &new,
        "--output",
        "json",
    ]);
    let parsed: serde_json::Value = serde_json::from_str(&stdout(&json)).expect("JSON");
    let holds = parsed["environments"][0]["rollout"]["holds"]
        .as_array()
        .expect("holds")
        .clone();
    assert_eq!(holds.len(), 2, "{holds:?}");
    assert!(
        holds[1]
            .as_str()
            .expect("text")
            .starts_with("outside the change window; it opens at")
    );
}

#[test]
fn diff_says_how_statefulsets_and_daemonsets_roll_out() {
    let workspace = Workspace::new();
    rollout_config(&workspace);
    let workloads = |image: &str| {
        format!(
            "apiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: db\nspec:\n  replicas: 4\n  serviceName: db\n  selector: {{matchLabels: {{app: db}}}}\n  template:\n    metadata: {{labels: {{app: db}}}}\n    spec: {{containers: [{{name: db, image: {image}}}]}}\n---\napiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: agent\nspec:\n  selector: {{matchLabels: {{app: agent}}}}\n  template:\n    metadata: {{labels: {{app: agent}}}}\n    spec: {{containers: [{{name: agent, image: {image}}}]}}\n"
        )
    };
    workspace
        .repo
        .write("environments/staging/workloads.yaml", &workloads("v:1"));
    write_environment(&workspace.repo, "production", 1);
    let old = workspace.repo.commit("v1");
    workspace
        .repo
        .write("environments/staging/workloads.yaml", &workloads("v:2"));
    let new = workspace.repo.commit("v2");
    let output = workspace.run(&["diff", "--env", "staging", "--against", &old, "--rev", &new]);
    assert_exit(&output, 1);
    let text = stdout(&output);
    assert!(
        text.contains(
            "canary 10% → 50% → 100% for StatefulSet.apps shop/db by partition, highest ordinals first"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "DaemonSet.apps shop/agent roll out at 100% with readiness and verify (DaemonSets get no canary)"
        ),
        "{text}"
    );
    let json = stdout(&workspace.run(&[
        "diff",
        "--env",
        "staging",
        "--against",
        &old,
        "--rev",
        &new,
        "--output",
        "json",
    ]));
    let report: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    let rollout = &report["environments"][0]["rollout"];
    assert_eq!(rollout["partitioned"][0], "StatefulSet.apps shop/db");
    assert_eq!(rollout["direct"][0], "DaemonSet.apps shop/agent");
}
