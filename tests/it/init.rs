//! `gitopsd init`: a starting config written after the branch tip was fetched and read, from a
//! `git daemon` on 127.0.0.1 and from the quickstart's repository; never over an existing file.

use std::fs;
use std::path::Path;

use crate::helpers::*;

/// argocd-example-apps' layout: a plain folder, a kustomize folder and a chart.
fn example_apps(repo: &Repo) {
    let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: guestbook-ui\nspec:\n  selector:\n    matchLabels: {app: guestbook-ui}\n  template:\n    metadata:\n      labels: {app: guestbook-ui}\n    spec:\n      containers: [{name: ui, image: registry.k8s.io/pause:3.9}]\n";
    let service = "apiVersion: v1\nkind: Service\nmetadata:\n  name: guestbook-ui\nspec:\n  selector: {app: guestbook-ui}\n  ports: [{port: 80}]\n";
    repo.write("README.md", "example apps\n");
    repo.write("guestbook/guestbook-ui-deployment.yaml", deployment);
    repo.write("guestbook/guestbook-ui-svc.yaml", service);
    repo.write(
        "kustomize-guestbook/kustomization.yaml",
        "resources:\n- guestbook-ui-deployment.yaml\n",
    );
    repo.write(
        "kustomize-guestbook/guestbook-ui-deployment.yaml",
        deployment,
    );
    repo.write(
        "helm-guestbook/Chart.yaml",
        "apiVersion: v2\nname: helm-guestbook\nversion: 0.1.0\n",
    );
    repo.write("helm-guestbook/values.yaml", "replicaCount: 1\n");
    repo.write("helm-guestbook/templates/deployment.yaml", deployment);
    repo.commit("example apps");
}

fn init(config: &Path, args: &[&str]) -> std::process::Output {
    let mut full = vec!["init"];
    full.extend_from_slice(args);
    gitopsd_with_config(config, &full)
        .output()
        .expect("gitopsd runs")
}

#[test]
fn init_over_git_daemon_recognises_plain_kustomize_and_helm_folders() {
    let root = tempfile::tempdir().expect("tempdir");
    let repo = Repo::init(root.path().join("apps"));
    example_apps(&repo);
    let daemon = GitDaemon::serve(root.path());
    let url = format!("git://127.0.0.1:{}/apps", daemon.port);

    let plain = root.path().join("plain.toml");
    let output = init(
        &plain,
        &[
            "--repo",
            &url,
            "--path",
            "guestbook",
            "--namespace",
            "guestbook",
        ],
    );
    assert_exit(&output, 0);
    let said = stdout(&output);
    assert!(
        said.contains("1 folder of plain manifests (guestbook), 1 kustomize folder (kustomize-guestbook), 1 helm chart (helm-guestbook)"),
        "{said}"
    );
    assert!(
        said.contains("guestbook: plain manifests, 2 objects at"),
        "{said}"
    );
    let text = fs::read_to_string(&plain).expect("written");
    assert!(text.contains(&format!("url = \"{url}\"")), "{text}");
    assert!(text.contains("create_namespace = true"), "{text}");
    assert!(!text.contains("render"), "{text}");
    assert_exit(
        &gitopsd_with_config(&plain, &["validate", "--config-only"])
            .output()
            .expect("runs"),
        0,
    );

    let kustomize = root.path().join("kustomize.toml");
    let output = init(
        &kustomize,
        &["--repo", &url, "--path", "kustomize-guestbook/"],
    );
    assert_exit(&output, 0);
    let text = fs::read_to_string(&kustomize).expect("written");
    assert!(text.contains("render = { kind = \"kustomize\" }"), "{text}");
    assert!(text.contains("path = \"kustomize-guestbook\""), "{text}");

    let helm = root.path().join("helm.toml");
    let output = init(
        &helm,
        &[
            "--repo",
            &url,
            "--path",
            "helm-guestbook",
            "--target",
            "directory",
        ],
    );
    assert_exit(&output, 0);
    let text = fs::read_to_string(&helm).expect("written");
    assert!(text.contains("render = { kind = \"helm\" }"), "{text}");
    assert!(
        text.contains("target = { type = \"directory\", path = \"/srv/hydrated/helm-guestbook\" }"),
        "{text}"
    );
    assert_exit(
        &gitopsd_with_config(&helm, &["validate", "--config-only"])
            .output()
            .expect("runs"),
        0,
    );

    // A folder the tip does not hold: nothing written, and what is there is named.
    let missing = root.path().join("missing.toml");
    let output = init(&missing, &["--repo", &url, "--path", "guestbok"]);
    assert_exit(&output, 2);
    assert!(
        stderr(&output).contains("\"guestbok\" holds no files at"),
        "{}",
        stderr(&output)
    );
    assert!(!missing.exists());
}

#[test]
fn init_on_the_quickstart_repository_writes_a_config_that_validates() {
    let root = tempfile::tempdir().expect("tempdir");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/quickstart/repo");
    let copy = std::process::Command::new("cp")
        .arg("-r")
        .arg(&source)
        .arg(root.path().join("repo"))
        .status()
        .expect("cp runs");
    assert!(copy.success());
    let repo = Repo::init(root.path().join("repo"));
    repo.commit("quickstart");
    let config = root.path().join("etc/gitopsd.toml");
    fs::create_dir_all(config.parent().expect("folder")).expect("mkdir");

    let output = gitopsd_with_config(
        &config,
        &[
            "init",
            "--repo",
            "repo",
            "--path",
            "environments/staging",
            "--target",
            "directory",
            "--live",
            "live/staging",
        ],
    )
    .current_dir(root.path())
    .output()
    .expect("gitopsd runs");
    assert_exit(&output, 0);
    let said = stdout(&output);
    assert!(
        said.contains("3 folders of plain manifests (environments/bluegreen, environments/production, environments/staging)"),
        "{said}"
    );
    assert!(
        said.contains("environments/staging: plain manifests, 4 objects at"),
        "{said}"
    );
    let text = fs::read_to_string(&config).expect("written");
    assert!(
        text.contains(&format!("url = \"{}\"", repo.dir.display())),
        "a relative repository is taken from the current folder: {text}"
    );

    // The config it wrote works as it is (its state folder moved to a scratch one).
    let validate = gitopsd_with_config(&config, &["validate"])
        .env("GITOPSD_STATE__DIR", root.path().join("state"))
        .output()
        .expect("gitopsd runs");
    assert_exit(&validate, 0);
    assert!(
        stdout(&validate).contains("ok: staging at"),
        "{}",
        stdout(&validate)
    );
}

#[test]
fn init_never_overwrites_an_existing_config() {
    let workspace = Workspace::new();
    write_environment(&workspace.repo, "staging", 1);
    workspace.repo.commit("staging");
    let before = fs::read(&workspace.config).expect("config");
    let output = workspace.run(&[
        "init",
        "--repo",
        &workspace.repo.dir.display().to_string(),
        "--path",
        "environments/staging",
    ]);
    assert_exit(&output, 2);
    assert!(
        stderr(&output).contains("already exists; gitopsd init never overwrites a config"),
        "{}",
        stderr(&output)
    );
    assert_eq!(fs::read(&workspace.config).expect("config"), before);
    assert!(
        !workspace.path("state").exists(),
        "refused before anything was fetched"
    );
}
