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
        stdout(&drift).contains("~ update ConfigMap shop/extra"),
        "{}",
        stdout(&drift)
    );
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    assert_eq!(std::fs::read_to_string(&file).expect("live file"), original);
}
