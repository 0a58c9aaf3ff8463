//! SIGKILL in the middle of a large reconcile: the rerun converges and the journal is whole.

use std::time::Duration;

use gitopsd::history::History;
use gitopsd::journal::Event;

use crate::helpers::*;

const OBJECTS: usize = 1000;

fn many_objects(repo: &Repo) {
    // Ten files of a hundred objects, each under the workspace's file size limit.
    for file in 0..OBJECTS / 100 {
        let mut text = String::new();
        for index in file * 100..(file + 1) * 100 {
            text.push_str(&format!(
                "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: config-{index:04}\ndata:\n  value: \"{index}\"\n"
            ));
        }
        repo.write(&format!("environments/staging/many-{file}.yaml"), &text);
    }
    repo.write(
        "environments/production/one.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: one\n",
    );
}

#[test]
fn sigkill_during_reconcile_then_rerun_converges() {
    let workspace = Workspace::new();
    many_objects(&workspace.repo);
    workspace.repo.commit("a thousand objects");

    let mut child = workspace.spawn(&["run", "--once"]);
    let live = workspace.live("staging").join("shop/ConfigMap");
    let count = || std::fs::read_dir(&live).map(|d| d.count()).unwrap_or(0);
    let started = wait_for(Duration::from_secs(60), || count() >= 50);
    assert!(started, "the reconcile never got going");
    child.signal(libc::SIGKILL);
    child
        .wait_timeout(Duration::from_secs(10))
        .expect("killed child exits");
    let written = count();
    assert!(
        written < OBJECTS,
        "the kill landed mid-reconcile ({written} files)"
    );

    let journal = workspace.journal("staging");
    assert!(
        History::from_records(&journal).in_flight.is_some(),
        "the interrupted rollout is visible in the journal"
    );

    let rerun = workspace.run(&["run", "--once"]);
    assert_exit(&rerun, 0);

    // The result equals a clean reconcile of the same commit into a fresh workspace.
    let reference = tempfile::tempdir().expect("tempdir");
    let config = std::fs::read_to_string(&workspace.config)
        .expect("config")
        .replace(
            "dir = \"state\"",
            &format!("dir = \"{}\"", reference.path().join("state").display()),
        )
        .replace(
            "path = \"live/",
            &format!("path = \"{}/live/", reference.path().display()),
        );
    let reference_config = reference.path().join("gitopsd.toml");
    std::fs::write(&reference_config, config).expect("write reference config");
    let output = gitopsd_with_config(&reference_config, &["run", "--once"])
        .output()
        .expect("reference run");
    assert_exit(&output, 0);
    assert_eq!(
        tree(&workspace.live("staging")),
        tree(&reference.path().join("live/staging")),
        "live folder converged to exactly the revision"
    );

    let journal = workspace.journal("staging");
    assert!(matches!(
        journal.last().map(|r| &r.event),
        Some(Event::Healthy { .. })
    ));
    let seqs: Vec<u64> = journal.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=journal.len() as u64).collect::<Vec<_>>());
}

/// Copies every file of `from` into a fresh `to`.
pub(crate) fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    let _ = std::fs::remove_dir_all(to);
    for (path, bytes) in tree(from) {
        let target = to.join(path);
        std::fs::create_dir_all(target.parent().expect("parent")).expect("mkdir");
        std::fs::write(target, bytes).expect("copy file");
    }
}

#[test]
fn sigkill_at_each_journal_point_of_a_rollout_resumes_and_ends_fully_new() {
    sigkill_at_each_journal_point(false);
}

/// The same with the journal compacted after every record, so that kills land during
/// compactions too; `history --stats` must not change.
#[test]
fn sigkill_at_each_journal_point_while_the_journal_compacts_loses_nothing() {
    sigkill_at_each_journal_point(true);
}

fn sigkill_at_each_journal_point(compacting: bool) {
    use crate::rollout::{RolloutWorkspace, web};
    let rollout = RolloutWorkspace::new(
        "steps = [10, 50, 100]\nbake = \"300ms\"\nverify = \"300ms\"\ntimeout = \"5s\"",
    );
    let workspace = &rollout.workspace;
    if compacting {
        workspace.edit_config(
            "dir = \"state\"\n",
            "dir = \"state\"\njournal_max_bytes = 1\njournal_keep_records = 2\n",
        );
    }
    web(&workspace.repo, "web:1", "hello", 10);
    workspace.repo.commit("web 1");
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    if compacting {
        let active = gitopsd::journal::load(&gitopsd::journal::Journal::path_for(
            &workspace.path("state"),
            "staging",
        ))
        .expect("loads");
        assert!(
            active.snapshot.is_some() && active.records.len() == 2,
            "the first deploy was compacted already"
        );
    }
    let journal_dir = workspace.path("state/journal");
    let saved_journal = workspace.path("saved-journal");
    copy_dir(&journal_dir, &saved_journal);
    let old_records = workspace.journal("staging").len();
    let old_tree = tree(&workspace.live("staging"));
    let saved_live = workspace.path("saved-live");
    copy_dir(&workspace.live("staging"), &saved_live);

    web(&workspace.repo, "web:2", "hello", 10);
    workspace.repo.commit("web 2");
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    let new_tree = tree(&workspace.live("staging"));
    let points = workspace.journal("staging").len() - old_records;
    assert_eq!(
        points, 8,
        "rollout_started, 3 × step_started, 2 × step_passed, promoted, healthy"
    );

    let stats = |workspace: &Workspace| {
        let output = workspace.run(&["history", "--stats", "--env", "staging"]);
        assert_exit(&output, 0);
        stdout(&output)
    };
    let restore = || {
        copy_dir(&saved_journal, &journal_dir);
        copy_dir(&saved_live, &workspace.live("staging"));
        assert_eq!(tree(&workspace.live("staging")), old_tree);
    };
    for point in 1..=points {
        restore();
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

        let journal = workspace.journal("staging");
        let live = tree(&workspace.live("staging"));
        let history = History::from_records(&journal);
        if history.in_flight.is_none() {
            assert!(
                live == new_tree,
                "point {point}: no rollout in flight, so fully new"
            );
        }

        let killed_at = journal.len();
        let interrupted = history.in_flight.is_some();
        let rerun = workspace.run(&["run", "--once"]);
        assert_exit(&rerun, 0);
        let after: Vec<&str> = workspace.journal("staging")[killed_at..]
            .iter()
            .map(|record| record.event.name())
            .collect();
        if interrupted {
            assert_eq!(
                after.first(),
                Some(&"rollout_resumed"),
                "point {point}: the restart goes on with the rollout: {after:?}"
            );
            assert!(
                !after.contains(&"revert_started"),
                "point {point}: nothing is undone: {after:?}"
            );
        }
        let live = tree(&workspace.live("staging"));
        assert!(
            live == new_tree || live == old_tree,
            "point {point}: the target holds a mix of revisions"
        );
        assert_eq!(
            live, new_tree,
            "point {point}: the restart finishes the rollout"
        );
        let journal = workspace.journal("staging");
        assert!(
            matches!(
                journal.last().map(|r| &r.event),
                Some(Event::Healthy { .. })
            ),
            "point {point}: the journal ends healthy"
        );
    }
    let history = |workspace: &Workspace| stdout(&workspace.run(&["history", "--env", "staging"]));
    let before = (stats(workspace), history(workspace));
    let mut journal = gitopsd::journal::Journal::open_with(
        &workspace.path("state"),
        "staging",
        gitopsd::journal::Compaction {
            max_bytes: u64::MAX,
            max_age: Duration::from_secs(3600),
            keep_records: 1,
        },
    )
    .expect("journal opens");
    journal.compact(chrono::Utc::now()).expect("compacts");
    drop(journal);
    assert_eq!(
        (stats(workspace), history(workspace)),
        before,
        "a compaction changes neither the history nor its statistics"
    );
    assert!(before.0.contains("deployments over"), "{}", before.0);
}
