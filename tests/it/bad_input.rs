//! A bad revision is rejected whole: nothing applied, the journal says why, other environments
//! go on.

use gitopsd::journal::Event;

use crate::helpers::*;

struct BadCase {
    name: &'static str,
    file: &'static str,
    text: String,
    /// Text the error must contain (file and document are checked for every case).
    expect: &'static str,
}

fn cases() -> Vec<BadCase> {
    vec![
        BadCase {
            name: "malformed YAML",
            file: "environments/staging/broken.yaml",
            text: "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ok\n---\napiVersion: v1\nkind: [ConfigMap\n"
                .into(),
            expect: "environments/staging/broken.yaml: document 2",
        },
        BadCase {
            name: "missing kind",
            file: "environments/staging/nokind.yaml",
            text: "apiVersion: v1\nmetadata:\n  name: lost\n".into(),
            expect: "environments/staging/nokind.yaml: document 1 (line 1): object lost: missing kind",
        },
        BadCase {
            name: "duplicate object",
            file: "environments/staging/zz-dup.yaml",
            text: "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: extra\n".into(),
            expect: "environments/staging/zz-dup.yaml: document 1 (line 1): ConfigMap shop/extra: duplicate object, first defined in environments/staging/extra.yaml document 1",
        },
        BadCase {
            name: "oversized file",
            file: "environments/staging/huge.yaml",
            text: format!("# {}\n", "x".repeat(70_000)),
            expect: "environments/staging/huge.yaml: file is",
        },
    ]
}

#[test]
fn bad_revisions_are_rejected_and_other_environments_still_reconcile() {
    let workspace = Workspace::new();
    write_environment(&workspace.repo, "staging", 1);
    write_environment(&workspace.repo, "production", 1);
    workspace.repo.commit("good");
    assert_exit(&workspace.run(&["run", "--once"]), 0);

    for (index, case) in cases().into_iter().enumerate() {
        let staging_before = tree(&workspace.live("staging"));
        let journal_before = workspace.journal("staging");

        // The bad commit also carries a good change to staging and to production.
        let replicas = 10 + index as u32;
        write_environment(&workspace.repo, "staging", replicas);
        write_environment(&workspace.repo, "production", replicas);
        workspace.repo.write(case.file, &case.text);
        let bad = workspace.repo.commit(case.name);

        let output = workspace.run(&["run", "--once"]);
        assert_exit(&output, 1);
        let errors = stderr(&output);
        assert!(errors.contains(case.expect), "{}: {errors}", case.name);
        assert_eq!(
            tree(&workspace.live("staging")),
            staging_before,
            "{}: staging must be byte-identical",
            case.name
        );
        let production = std::fs::read_to_string(
            workspace
                .live("production")
                .join("shop/Deployment.apps/web.yaml"),
        )
        .expect("production deployment");
        assert!(
            production.contains(&format!("replicas: {replicas}")),
            "{}: production reconciles anyway",
            case.name
        );

        let journal = workspace.journal("staging");
        assert_eq!(
            journal[..journal_before.len()],
            journal_before[..],
            "nothing recorded is lost"
        );
        assert_eq!(journal.len(), journal_before.len() + 1, "{}", case.name);
        let Event::Rejected { revision, problems } = &journal.last().expect("record").event else {
            panic!("{}: last record is not a rejection", case.name);
        };
        assert_eq!(revision.0, bad);
        assert!(
            problems.iter().any(|p| p.contains(case.expect)),
            "{problems:?}"
        );

        // Rejections are journaled once per revision, not on every pass.
        assert_exit(&workspace.run(&["run", "--once"]), 1);
        assert_eq!(workspace.journal("staging").len(), journal.len());

        workspace.repo.remove(case.file);
        workspace.repo.commit("fix");
        assert_exit(&workspace.run(&["run", "--once"]), 0);
    }
}

#[test]
fn symlinks_are_refused() {
    let workspace = Workspace::new();
    write_environment(&workspace.repo, "staging", 1);
    write_environment(&workspace.repo, "production", 1);
    std::os::unix::fs::symlink(
        "/etc/passwd",
        workspace.repo.dir.join("environments/staging/escape.yaml"),
    )
    .expect("symlink");
    workspace.repo.commit("symlink out of the repository");
    let output = workspace.run(&["run", "--once"]);
    assert_exit(&output, 1);
    assert!(
        stderr(&output).contains("environments/staging/escape.yaml: symlinks are not followed"),
        "{}",
        stderr(&output)
    );
    assert!(tree(&workspace.live("staging")).is_empty());
    assert!(!tree(&workspace.live("production")).is_empty());
}

#[test]
fn objects_outside_what_an_environment_may_touch_reject_the_whole_revision() {
    let workspace = Workspace::new();
    workspace.write_config_with(
        &workspace.repo.dir.display().to_string(),
        "30s",
        "allowed_namespaces = [\"shop\", \"shop-*\"]\nallowed_kinds = [\"core/*\", \"apps/*\", \"rbac.authorization.k8s.io/*\"]\ndenied_kinds = [\"core/Secret\"]\ncluster_scoped = \"deny\"\n",
    );
    write_environment(&workspace.repo, "staging", 1);
    write_environment(&workspace.repo, "production", 1);
    workspace.repo.commit("good");
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    let staging_before = tree(&workspace.live("staging"));

    write_environment(&workspace.repo, "staging", 3);
    workspace.repo.write(
        "environments/staging/outside.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: elsewhere\n  namespace: kube-system\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: everything\nrules: []\n---\napiVersion: batch/v1\nkind: CronJob\nmetadata:\n  name: nightly\nspec:\n  schedule: \"0 0 * * *\"\n  jobTemplate: {spec: {template: {spec: {restartPolicy: Never, containers: [{name: c, image: x}]}}}}\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: token\nstringData: {token: x}\n",
    );
    workspace.repo.commit("four objects staging may not touch");
    let output = workspace.run(&["run", "--once"]);
    assert_exit(&output, 1);
    let errors = stderr(&output);
    for expected in [
        "environments/staging/outside.yaml: document 1 (line 1): ConfigMap kube-system/elsewhere: not allowed in environment staging: namespace \"kube-system\" is not allowed (allowed_namespaces: \"shop\", \"shop-*\")",
        "environments/staging/outside.yaml: document 2 (line 6): ClusterRole.rbac.authorization.k8s.io everything: not allowed in environment staging: rbac.authorization.k8s.io/ClusterRole is cluster-scoped and this environment may hold no cluster-scoped objects (cluster_scoped = \"deny\")",
        "environments/staging/outside.yaml: document 3 (line 12): CronJob.batch shop/nightly: not allowed in environment staging: kind batch/CronJob is not allowed",
        "environments/staging/outside.yaml: document 4 (line 20): Secret shop/token: not allowed in environment staging: kind core/Secret is denied (denied_kinds \"core/Secret\")",
    ] {
        assert!(
            errors.contains(expected),
            "missing {expected:?} in:\n{errors}"
        );
    }
    assert_eq!(
        tree(&workspace.live("staging")),
        staging_before,
        "nothing of the revision is applied, not even its allowed change"
    );
    let validate = workspace.run(&["validate"]);
    assert_exit(&validate, 1);
    assert!(
        stdout(&validate).contains("kind batch/CronJob is not allowed"),
        "{}",
        stdout(&validate)
    );
    let diff = workspace.run(&["diff", "--env", "staging"]);
    assert_exit(&diff, 2);
    assert!(
        stderr(&diff).contains("cluster_scoped = \"deny\""),
        "{}",
        stderr(&diff)
    );
}
