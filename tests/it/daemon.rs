//! The daemon: reacts to a new local commit at once, and stops cleanly on SIGTERM.

use std::process::Stdio;
use std::time::Duration;

use crate::helpers::*;

#[test]
fn daemon_picks_up_a_local_commit_without_waiting_for_the_poll_and_stops_on_sigterm() {
    let workspace = Workspace::new();
    // An hour between polls: only the ref watcher can explain a quick pickup.
    workspace.write_config(&workspace.repo.dir.display().to_string(), "1h");
    write_environment(&workspace.repo, "staging", 1);
    write_environment(&workspace.repo, "production", 1);
    workspace.repo.commit("initial");

    let mut daemon = ChildGuard(
        workspace
            .gitopsd(&["run"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("daemon starts"),
    );
    let deployment = workspace
        .live("staging")
        .join("shop/Deployment.apps/web.yaml");
    let read = || std::fs::read_to_string(&deployment).unwrap_or_default();
    assert!(
        wait_for(Duration::from_secs(30), || read().contains("replicas: 1")),
        "first reconcile"
    );

    write_environment(&workspace.repo, "staging", 7);
    workspace.repo.commit("seven replicas");
    assert!(
        wait_for(Duration::from_secs(20), || read().contains("replicas: 7")),
        "the new commit was not picked up"
    );

    daemon.signal(libc::SIGTERM);
    let status = daemon
        .wait_timeout(Duration::from_secs(20))
        .expect("daemon exits after SIGTERM");
    assert!(status.success(), "clean exit, got {status:?}");
    let mut logs = String::new();
    std::io::Read::read_to_string(
        daemon.0.stderr.as_mut().expect("stderr is piped"),
        &mut logs,
    )
    .expect("read logs");
    assert!(logs.contains("SIGTERM received"), "{logs}");
    assert!(logs.contains("stopped"), "{logs}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let workspace = Workspace::new();
    write_environment(&workspace.repo, "staging", 1);
    write_environment(&workspace.repo, "production", 1);
    workspace.repo.commit("initial");
    let output = workspace.run(&["--log-format", "json", "run", "--once"]);
    assert_exit(&output, 0);
    let logs = stderr(&output);
    let mut lines = 0;
    for line in logs.lines() {
        let value: serde_json::Value = serde_json::from_str(line).expect("each line is JSON");
        assert!(value.get("level").is_some(), "{line}");
        lines += 1;
    }
    assert!(lines > 0);
}

#[test]
fn quiet_passes_skip_work_until_the_live_folder_changes() {
    let workspace = Workspace::new();
    workspace.write_config(&workspace.repo.dir.display().to_string(), "1s");
    write_environment(&workspace.repo, "staging", 1);
    write_environment(&workspace.repo, "production", 1);
    workspace.repo.commit("initial");
    let log = workspace.path("daemon.log");
    let _daemon = ChildGuard(
        workspace
            .gitopsd(&["run"])
            .env("GITOPSD_LOG", "gitopsd=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("daemon starts"),
    );
    let quiet = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|line| line.contains("env=staging") && line.contains("nothing to do"))
            .count()
    };
    assert!(
        wait_for(Duration::from_secs(30), || quiet() >= 2),
        "passes over an unchanged tip and folder are skipped"
    );

    let deployment = workspace
        .live("staging")
        .join("shop/Deployment.apps/web.yaml");
    let text = std::fs::read_to_string(&deployment).expect("live file");
    std::fs::write(&deployment, text.replace("replicas: 1", "replicas: 9")).expect("drift");
    assert!(
        wait_for(Duration::from_secs(20), || {
            std::fs::read_to_string(&deployment).is_ok_and(|text| text.contains("replicas: 1"))
        }),
        "a change to the live folder ends the quiet: the drift is put back"
    );
    let after_drift = quiet();
    assert!(
        wait_for(Duration::from_secs(20), || quiet() > after_drift + 1),
        "and then it is quiet again"
    );
}

#[test]
fn a_commit_outside_a_folder_makes_the_tip_healthy_without_a_full_pass_and_one_inside_does_not() {
    let workspace = Workspace::new();
    workspace.write_config(&workspace.repo.dir.display().to_string(), "1s");
    write_environment(&workspace.repo, "staging", 1);
    write_environment(&workspace.repo, "production", 1);
    workspace.repo.commit("initial");
    let (_daemon, address) = daemon_with_api(&workspace, "quiet-token");
    let count = |environment: &str, result: &str| {
        metric_sum(
            &address,
            "gitopsd_passes_total",
            &format!("environment=\"{environment}\",result=\"{result}\""),
        )
        .unwrap_or(0)
    };
    assert!(
        wait_for(Duration::from_secs(30), || count("staging", "unchanged")
            >= 1
            && count("production", "unchanged") >= 1),
        "passes over an unchanged tip and folder are skipped"
    );
    let healthy_at = |environment: &str, tip: &str| {
        workspace.journal(environment).iter().any(|record| {
            matches!(&record.event, gitopsd::journal::Event::Healthy { revision } if revision.0 == tip)
        })
    };

    workspace
        .repo
        .write("README.md", "outside every environment\n");
    let outside = workspace.repo.commit("readme");
    assert!(
        wait_for(Duration::from_secs(20), || healthy_at("staging", &outside)
            && healthy_at("production", &outside)),
        "both environments take the new tip"
    );
    assert_eq!(count("staging", "same_folder"), 1);
    assert_eq!(count("production", "same_folder"), 1);

    let full = count("staging", "full");
    write_environment(&workspace.repo, "staging", 2);
    let inside = workspace.repo.commit("staging: two replicas");
    let deployment = workspace
        .live("staging")
        .join("shop/Deployment.apps/web.yaml");
    assert!(
        wait_for(Duration::from_secs(30), || healthy_at("staging", &inside)
            && healthy_at("production", &inside)),
        "both environments take the tip that changes staging"
    );
    assert!(
        std::fs::read_to_string(&deployment).is_ok_and(|text| text.contains("replicas: 2")),
        "staging's change was rolled out"
    );
    assert!(count("staging", "full") > full, "by a full pass");
    assert_eq!(count("staging", "same_folder"), 1);
    assert_eq!(
        count("production", "same_folder"),
        2,
        "production's folder did not change"
    );
}
