//! `gitopsd validate`: config and manifests, every problem at once, with exit codes.

use crate::helpers::*;

#[test]
fn valid_revision_exits_zero_and_counts_objects() {
    let workspace = Workspace::new();
    write_environment(&workspace.repo, "staging", 1);
    write_environment(&workspace.repo, "production", 1);
    workspace.repo.commit("good");
    let output = workspace.run(&["validate"]);
    assert_exit(&output, 0);
    assert!(
        stdout(&output).contains("ok: staging at"),
        "{}",
        stdout(&output)
    );
    assert!(
        stdout(&output).contains(": 4 objects"),
        "{}",
        stdout(&output)
    );
}

#[test]
fn every_manifest_problem_is_listed() {
    let workspace = Workspace::new();
    write_environment(&workspace.repo, "staging", 1);
    write_environment(&workspace.repo, "production", 1);
    workspace.repo.write(
        "environments/staging/a.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {}\n",
    );
    workspace.repo.write(
        "environments/production/b.yaml",
        "kind: Secret\nmetadata: {name: s}\n",
    );
    workspace.repo.commit("two problems");
    let output = workspace.run(&["validate"]);
    assert_exit(&output, 1);
    let text = stdout(&output);
    assert!(
        text.contains(
            "environments/staging/a.yaml: document 1 (line 1): ConfigMap: missing metadata.name"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "environments/production/b.yaml: document 1 (line 1): Secret s: missing apiVersion"
        ),
        "{text}"
    );
}

#[test]
fn invalid_config_lists_every_key() {
    let workspace = Workspace::new();
    std::fs::write(
        &workspace.config,
        "[repo]\npoll_interval = \"often\"\n[[environment]]\nname = \"x\"\npath = \"x\"\ntarget = { type = \"directory\" }\nfoo = 1\n",
    )
    .expect("write config");
    let output = workspace.run(&["validate"]);
    assert_exit(&output, 1);
    let text = stdout(&output);
    for key in [
        "repo.url: missing",
        "repo.poll_interval: invalid duration",
        "environment[0].target.path: missing",
        "environment[0].foo: unknown key",
    ] {
        assert!(text.contains(key), "{key} not in:\n{text}");
    }
    // Other commands refuse to start on it with the same report.
    let run = workspace.run(&["run", "--once"]);
    assert_exit(&run, 2);
    assert!(
        stderr(&run).contains("repo.url: missing"),
        "{}",
        stderr(&run)
    );
}

#[test]
fn environment_variables_override_the_file() {
    let workspace = Workspace::new();
    write_environment(&workspace.repo, "staging", 1);
    write_environment(&workspace.repo, "production", 1);
    workspace.repo.commit("good");
    let output = workspace
        .gitopsd(&["validate"])
        .env("GITOPSD_REPO__BRANCH", "does-not-exist")
        .output()
        .expect("runs");
    assert_exit(&output, 2);
    assert!(
        stderr(&output).contains("does-not-exist"),
        "{}",
        stderr(&output)
    );
}
