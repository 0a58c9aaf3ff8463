//! `run --once` reconciles every environment, and a later commit changes exactly what it says.

use gitopsd::journal::Event;
use gitopsd::plan::Action;

use crate::helpers::*;

/// Two environments reconciled, then a commit that updates, adds and deletes one object each
/// in staging: exactly those three files change, and the journal says the same.
fn reconcile_then_change(workspace: &Workspace) {
    write_environment(&workspace.repo, "staging", 2);
    write_environment(&workspace.repo, "production", 5);
    let first = workspace.repo.commit("initial");

    let output = workspace.run(&["run", "--once"]);
    assert_exit(&output, 0);
    let staging = tree(&workspace.live("staging"));
    let production = tree(&workspace.live("production"));
    let expected = [
        "shop/ConfigMap/app-config.yaml",
        "shop/ConfigMap/extra.yaml",
        "shop/Deployment.apps/web.yaml",
        "shop/Service/web.yaml",
    ];
    assert_eq!(staging.keys().collect::<Vec<_>>(), expected);
    assert_eq!(production.keys().collect::<Vec<_>>(), expected);
    let deployment = String::from_utf8_lossy(&production["shop/Deployment.apps/web.yaml"]);
    assert!(deployment.contains("replicas: 5"), "{deployment}");
    assert!(
        deployment.contains(&format!("gitopsd.io/revision: {first}")),
        "{deployment}"
    );
    assert!(
        deployment.contains("app.kubernetes.io/managed-by: gitopsd"),
        "{deployment}"
    );

    write_environment(&workspace.repo, "staging", 3);
    workspace.repo.remove("environments/staging/extra.yaml");
    workspace.repo.write(
        "environments/staging/added.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: added\nstringData:\n  token: abc\n",
    );
    let second = workspace
        .repo
        .commit("update web, add a secret, drop extra");

    let output = workspace.run(&["run", "--once"]);
    assert_exit(&output, 0);
    let staging_after = tree(&workspace.live("staging"));
    assert_eq!(
        changed_paths(&staging, &staging_after),
        [
            "shop/ConfigMap/extra.yaml",
            "shop/Deployment.apps/web.yaml",
            "shop/Secret/added.yaml",
        ]
    );
    assert_eq!(tree(&workspace.live("production")), production);
    let unchanged = String::from_utf8_lossy(&staging_after["shop/Service/web.yaml"]);
    assert!(unchanged.contains(&format!("gitopsd.io/revision: {first}")));

    let records = workspace.journal("staging");
    let last = records.last().expect("journal has records");
    assert_eq!(
        last.event,
        Event::Healthy {
            revision: gitopsd::model::Revision(second.clone())
        }
    );
    let changes = records
        .iter()
        .rev()
        .find_map(|record| match &record.event {
            Event::RolloutStarted {
                revision, changes, ..
            } if revision.0 == second => Some(changes),
            _ => None,
        })
        .expect("the second commit's rollout is journaled");
    let summary: Vec<(Action, &str)> = changes
        .iter()
        .map(|c| (c.action, c.object.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            (Action::Create, "Secret shop/added"),
            (Action::Update, "Deployment.apps shop/web"),
            (Action::Delete, "ConfigMap shop/extra"),
        ]
    );
    let production_rollouts = workspace
        .journal("production")
        .iter()
        .filter(|record| matches!(record.event, Event::RolloutStarted { .. }))
        .count();
    assert_eq!(production_rollouts, 1, "production changed only once");

    let history = workspace.run(&["history", "--env", "staging"]);
    assert_exit(&history, 0);
    let text = stdout(&history);
    assert!(text.contains("~ update Deployment.apps shop/web"), "{text}");
    assert!(text.contains("- delete ConfigMap shop/extra"), "{text}");

    let again = workspace.run(&["run", "--once"]);
    assert_exit(&again, 0);
    assert_eq!(
        workspace.journal("staging").len(),
        records.len(),
        "a no-op pass journals nothing"
    );
}

#[test]
fn local_repository_is_reconciled_into_two_directory_targets() {
    let workspace = Workspace::new();
    reconcile_then_change(&workspace);
}

#[test]
fn repository_is_fetched_over_git_daemon() {
    let workspace = Workspace::new();
    let daemon = GitDaemon::serve(workspace.root.path());
    workspace.write_config(&format!("git://127.0.0.1:{}/repo", daemon.port), "30s");
    reconcile_then_change(&workspace);
}

#[test]
fn file_url_and_force_push_are_handled() {
    let workspace = Workspace::new();
    workspace.write_config(&format!("file://{}", workspace.repo.dir.display()), "30s");
    write_environment(&workspace.repo, "staging", 1);
    write_environment(&workspace.repo, "production", 1);
    workspace.repo.commit("initial");
    write_environment(&workspace.repo, "staging", 2);
    workspace.repo.commit("two replicas");
    assert_exit(&workspace.run(&["run", "--once"]), 0);

    // Rewrite history: the branch now points at a sibling of the fetched commit.
    git(&workspace.repo.dir, &["reset", "-q", "--hard", "HEAD~1"]);
    write_environment(&workspace.repo, "staging", 4);
    workspace.repo.commit("four replicas, rewritten");
    let output = workspace.run(&["run", "--once"]);
    assert_exit(&output, 0);
    assert!(
        stderr(&output).contains("force-pushed"),
        "{}",
        stderr(&output)
    );
    let deployment = std::fs::read_to_string(
        workspace
            .live("staging")
            .join("shop/Deployment.apps/web.yaml"),
    )
    .expect("deployment file");
    assert!(deployment.contains("replicas: 4"));
}

#[test]
fn unreachable_remote_fails_the_pass_and_keeps_live_state() {
    let workspace = Workspace::new();
    write_environment(&workspace.repo, "staging", 1);
    write_environment(&workspace.repo, "production", 1);
    workspace.repo.commit("initial");
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    let before = tree(&workspace.live("staging"));

    workspace.write_config(&workspace.path("no-such-repo").display().to_string(), "30s");
    let output = workspace.run(&["run", "--once"]);
    assert_exit(&output, 1);
    assert!(
        stderr(&output).contains("fetch failed"),
        "{}",
        stderr(&output)
    );
    assert_eq!(tree(&workspace.live("staging")), before);
}

/// A git:// server on 127.0.0.1 that accepts connections and never answers.
fn silent_server() -> (std::net::TcpListener, String) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("git://{}/repo", listener.local_addr().expect("address"));
    (listener, url)
}

#[test]
fn a_remote_that_never_answers_is_given_up_on_and_a_shutdown_is_not_held() {
    let workspace = Workspace::new();
    write_environment(&workspace.repo, "staging", 1);
    write_environment(&workspace.repo, "production", 1);
    workspace.repo.commit("initial");
    let (listener, url) = silent_server();
    workspace.write_config(&url, "30s");
    workspace.edit_config(
        "max_file_bytes = 65536\n",
        "max_file_bytes = 65536\nfetch_timeout = \"1s\"\n",
    );
    let output = workspace.run(&["run", "--once"]);
    assert_exit(&output, 1);
    assert!(
        stderr(&output).contains("no answer within 1s (repo.fetch_timeout)"),
        "{}",
        stderr(&output)
    );

    // A long timeout: SIGTERM still stops the daemon in the middle of the fetch.
    workspace.edit_config("fetch_timeout = \"1s\"", "fetch_timeout = \"10m\"");
    // Connections of the finished `run --once` wait in the backlog: take them out, so that the
    // next one accepted is the daemon's.
    listener.set_nonblocking(true).expect("nonblocking");
    while listener.accept().is_ok() {}
    let mut daemon = workspace.spawn(&["run"]);
    let mut connection = None;
    assert!(
        wait_for(std::time::Duration::from_secs(30), || {
            connection = listener.accept().ok();
            connection.is_some()
        }),
        "the daemon never connected to the remote"
    );
    // Connected and never answered: the fetch is under way.
    daemon.signal(libc::SIGTERM);
    let status = daemon
        .wait_timeout(std::time::Duration::from_secs(30))
        .expect("the daemon stops although the fetch never ends");
    assert!(status.success(), "{status:?}");
}
