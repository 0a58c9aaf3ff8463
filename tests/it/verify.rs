//! Signed commits only (`[repo.verify]`): real `git` signs with `ssh-keygen` keys and with
//! GnuPG in a temporary home; unsigned, untrusted and (with `mode = "all"`) unsigned commits in
//! the middle are refused and the environment stays at its last verified revision.

use std::path::{Path, PathBuf};
use std::process::Command;

use gitopsd::journal::Event;

use crate::helpers::*;

/// An ssh-keygen ed25519 key pair in `dir`; returns the private key path and the public key.
fn ssh_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    let output = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&key)
        .output()
        .expect("ssh-keygen runs");
    assert!(output.status.success(), "{}", stderr(&output));
    let public = std::fs::read_to_string(key.with_extension("pub")).expect("public key");
    (key, public.trim().to_string())
}

/// Commits everything, signed as `git commit -S` would with the given config.
fn commit_signed(repo: &Repo, message: &str, config: &[String], envs: &[(&str, &Path)]) -> String {
    git(&repo.dir, &["add", "-A"]);
    let mut command = Command::new("git");
    command
        .current_dir(&repo.dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Test Author")
        .env("GIT_AUTHOR_EMAIL", "author@example.com")
        .env("GIT_COMMITTER_NAME", "Test Author")
        .env("GIT_COMMITTER_EMAIL", "author@example.com");
    for (name, value) in envs {
        command.env(name, value);
    }
    for setting in config {
        command.args(["-c", setting]);
    }
    let output = command
        .args(["commit", "-q", "-S", "--allow-empty", "-m", message])
        .output()
        .expect("git runs");
    assert!(
        output.status.success(),
        "signed commit: {}",
        stderr(&output)
    );
    git(&repo.dir, &["rev-parse", "HEAD"])
}

fn ssh_signing(key: &Path) -> Vec<String> {
    vec![
        "gpg.format=ssh".into(),
        format!("user.signingkey={}", key.display()),
    ]
}

/// A workspace whose repository must be signed by the keys in `allowed` (`mode` head or all).
fn verifying_workspace(allowed: &str, mode: &str) -> Workspace {
    let workspace = Workspace::new();
    workspace.write_config(&workspace.repo.dir.display().to_string(), "30s");
    std::fs::write(workspace.path("allowed_signers"), allowed).expect("allowed signers");
    workspace.edit_config(
        "max_file_bytes = 65536\n",
        &format!(
            "max_file_bytes = 65536\n\n[repo.verify]\nallowed_signers = \"allowed_signers\"\nmode = \"{mode}\"\n"
        ),
    );
    workspace
}

/// A pass refuses the tip, naming `commit` and why.
fn assert_refused(workspace: &Workspace, commit: &str, why: &str) {
    let output = workspace.run(&["run", "--once"]);
    assert_exit(&output, 1);
    assert!(
        stderr(&output).contains(&format!("commit {} {why}", &commit[..12])),
        "{}",
        stderr(&output)
    );
}

fn verify_failures(workspace: &Workspace) -> Vec<(String, String)> {
    workspace
        .journal("staging")
        .iter()
        .filter_map(|record| match &record.event {
            Event::VerifyFailed { commit, reason, .. } => Some((commit.0.clone(), reason.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn only_commits_signed_by_an_allowed_ssh_key_are_applied() {
    let keys = tempfile::tempdir().expect("tempdir");
    let (deployer, deployer_public) = ssh_key(keys.path(), "deployer");
    let (stranger, _) = ssh_key(keys.path(), "stranger");
    let workspace =
        verifying_workspace(&format!("deployer@example.com {deployer_public}\n"), "head");

    write_environment(&workspace.repo, "staging", 1);
    write_environment(&workspace.repo, "production", 1);
    let signed = commit_signed(&workspace.repo, "signed", &ssh_signing(&deployer), &[]);
    let output = workspace.run(&["run", "--once"]);
    assert_exit(&output, 0);
    let verified_tree = tree(&workspace.live("staging"));
    assert!(!verified_tree.is_empty());
    let validate = workspace.run(&["validate"]);
    assert_exit(&validate, 0);
    assert!(
        stdout(&validate).contains("signed by deployer@example.com"),
        "{}",
        stdout(&validate)
    );

    // An unsigned commit on top: refused, and staging stays where it was.
    write_environment(&workspace.repo, "staging", 5);
    let unsigned = workspace.repo.commit("unsigned");
    assert_refused(&workspace, &unsigned, "not signed");
    assert_eq!(tree(&workspace.live("staging")), verified_tree);
    assert_eq!(verify_failures(&workspace).len(), 1);
    let status = stdout(&workspace.run(&["status", "--env", "staging"]));
    assert!(status.contains("refused tip"), "{status}");
    assert!(
        status.contains(&format!("current revision:       {}", &signed[..12])),
        "{status}"
    );
    let validate = workspace.run(&["validate"]);
    assert_exit(&validate, 1);
    assert!(
        stdout(&validate).contains("not signed"),
        "{}",
        stdout(&validate)
    );
    let diff = workspace.run(&["diff", "--env", "staging"]);
    assert!(stdout(&diff).contains("not signed"), "{}", stdout(&diff));
    // The same refusal is journaled once, not on every pass.
    assert_exit(&workspace.run(&["run", "--once"]), 1);
    assert_eq!(verify_failures(&workspace).len(), 1);

    // Signed, but by a key outside the signers file.
    let untrusted = commit_signed(&workspace.repo, "stranger", &ssh_signing(&stranger), &[]);
    assert_refused(
        &workspace,
        &untrusted,
        "signed by a key that is not allowed",
    );
    assert_eq!(tree(&workspace.live("staging")), verified_tree);

    // A signed commit on top goes out (mode = "head" looks at the tip only).
    commit_signed(
        &workspace.repo,
        "signed again",
        &ssh_signing(&deployer),
        &[],
    );
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    assert_ne!(tree(&workspace.live("staging")), verified_tree);
}

#[test]
fn with_mode_all_an_unsigned_commit_in_the_middle_is_refused() {
    let keys = tempfile::tempdir().expect("tempdir");
    let (deployer, deployer_public) = ssh_key(keys.path(), "deployer");
    let workspace =
        verifying_workspace(&format!("deployer@example.com {deployer_public}\n"), "all");
    write_environment(&workspace.repo, "staging", 1);
    write_environment(&workspace.repo, "production", 1);
    commit_signed(&workspace.repo, "signed", &ssh_signing(&deployer), &[]);
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    let verified_tree = tree(&workspace.live("staging"));

    write_environment(&workspace.repo, "staging", 2);
    let middle = workspace.repo.commit("unsigned, in the middle");
    write_environment(&workspace.repo, "staging", 3);
    commit_signed(&workspace.repo, "signed tip", &ssh_signing(&deployer), &[]);
    assert_refused(&workspace, &middle, "not signed");
    assert_eq!(tree(&workspace.live("staging")), verified_tree);
    let failures = verify_failures(&workspace);
    assert_eq!(failures.len(), 1);
    assert_eq!(
        failures[0].0, middle,
        "the journal names the commit in the middle"
    );
}

#[test]
fn an_openpgp_signature_is_checked_with_gpgv_against_the_keyring() {
    let home = tempfile::tempdir().expect("GnuPG home");
    let gpg = |args: &[&str]| {
        let output = Command::new("gpg")
            .env("GNUPGHOME", home.path())
            .args([
                "--batch",
                "--no-tty",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
            ])
            .args(args)
            .output()
            .expect("gpg runs");
        assert!(output.status.success(), "gpg {args:?}: {}", stderr(&output));
        output.stdout
    };
    gpg(&[
        "--quick-gen-key",
        "Deployer <deploy@example.com>",
        "ed25519",
        "sign",
        "never",
    ]);
    let workspace = Workspace::new();
    workspace.write_config(&workspace.repo.dir.display().to_string(), "30s");
    std::fs::write(workspace.path("trusted.gpg"), gpg(&["--export"])).expect("keyring");
    workspace.edit_config(
        "max_file_bytes = 65536\n",
        "max_file_bytes = 65536\n\n[repo.verify]\ngpg_keyring = \"trusted.gpg\"\n",
    );
    write_environment(&workspace.repo, "staging", 1);
    write_environment(&workspace.repo, "production", 1);
    let gpg_env = [("GNUPGHOME", home.path())];
    let signing = vec!["user.signingkey=deploy@example.com".to_string()];
    commit_signed(&workspace.repo, "signed with OpenPGP", &signing, &gpg_env);
    let output = workspace.run(&["run", "--once"]);
    assert_exit(&output, 0);
    let validate = stdout(&workspace.run(&["validate"]));
    assert!(
        validate.contains("signed by Deployer <deploy@example.com>"),
        "{validate}"
    );

    // A key the keyring does not hold.
    let other = tempfile::tempdir().expect("another home");
    let output = Command::new("gpg")
        .env("GNUPGHOME", other.path())
        .args([
            "--batch",
            "--passphrase",
            "",
            "--quick-gen-key",
            "Mallory <m@example.com>",
            "ed25519",
            "sign",
            "never",
        ])
        .output()
        .expect("gpg runs");
    assert!(output.status.success(), "{}", stderr(&output));
    write_environment(&workspace.repo, "staging", 4);
    let untrusted = commit_signed(
        &workspace.repo,
        "signed by someone else",
        &["user.signingkey=m@example.com".to_string()],
        &[("GNUPGHOME", other.path())],
    );
    assert_refused(
        &workspace,
        &untrusted,
        "signed by a key that is not allowed",
    );
}

#[test]
fn gitopsd_signs_its_revert_commits_so_they_verify_too() {
    use crate::rollout::{RolloutWorkspace, web};
    let keys = tempfile::tempdir().expect("tempdir");
    let (deployer, deployer_public) = ssh_key(keys.path(), "deployer");
    let (robot, robot_public) = ssh_key(keys.path(), "gitopsd");
    let rollout = RolloutWorkspace::new(
        "steps = [50, 100]\nbake = \"300ms\"\nverify = \"300ms\"\ntimeout = \"5s\"\nrevert_commit = true",
    );
    let workspace = &rollout.workspace;
    let allowed =
        format!("deployer@example.com {deployer_public}\ngitopsd@example.com {robot_public}\n");
    std::fs::write(workspace.path("allowed_signers"), &allowed).expect("allowed signers");
    let bare = workspace.bare_remote();
    workspace.edit_config(
        "max_file_bytes = 65536\n",
        &format!(
            "max_file_bytes = 65536\n\n[repo.verify]\nallowed_signers = \"allowed_signers\"\nsigning_key = \"{}\"\n",
            robot.display()
        ),
    );
    web(&workspace.repo, "web:1", "hello", 4);
    commit_signed(&workspace.repo, "web 1", &ssh_signing(&deployer), &[]);
    git(&workspace.repo.dir, &["push", "-q", "origin", "main"]);
    assert_exit(&workspace.run(&["run", "--once"]), 0);

    rollout.fail_when("web:bad");
    web(&workspace.repo, "web:bad", "hello", 4);
    commit_signed(&workspace.repo, "web bad", &ssh_signing(&deployer), &[]);
    git(&workspace.repo.dir, &["push", "-q", "origin", "main"]);
    let output = workspace.run(&["run", "--once"]);
    assert_exit(&output, 1);
    assert!(
        stderr(&output).contains("revert commit pushed"),
        "{}",
        stderr(&output)
    );

    // git itself accepts gitopsd's signature.
    let signers = workspace.path("allowed_signers");
    let output = Command::new("git")
        .args(["--git-dir", &bare.display().to_string()])
        .args([
            "-c",
            &format!("gpg.ssh.allowedSignersFile={}", signers.display()),
        ])
        .args(["verify-commit", "main"])
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .expect("git runs");
    assert!(
        output.status.success(),
        "git verify-commit: {}",
        stderr(&output)
    );
    assert!(
        stderr(&output).contains("gitopsd@example.com"),
        "{}",
        stderr(&output)
    );
    // And so does gitopsd: the revert commit is the healthy tip, nothing is refused.
    rollout.fail_when("");
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    assert!(verify_failures(workspace).is_empty());
}

#[test]
fn a_rollback_to_an_unsigned_revision_is_refused() {
    let keys = tempfile::tempdir().expect("tempdir");
    let (deployer, deployer_public) = ssh_key(keys.path(), "deployer");
    let workspace =
        verifying_workspace(&format!("deployer@example.com {deployer_public}\n"), "head");
    write_environment(&workspace.repo, "staging", 1);
    write_environment(&workspace.repo, "production", 1);
    let unsigned = workspace.repo.commit("unsigned first");
    write_environment(&workspace.repo, "staging", 2);
    let signed = commit_signed(&workspace.repo, "signed", &ssh_signing(&deployer), &[]);
    let (_daemon, address) = daemon_with_api(&workspace, "verify-token");
    let ready = wait_for(std::time::Duration::from_secs(30), || {
        http_request(&address, "GET", "/readyz", &[], "").is_some_and(|(status, _)| status == 200)
    });
    assert!(ready, "/readyz never answered 200");
    let output = workspace.run(&["rollback", "--env", "staging", "--to", &unsigned]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("409") && stderr(&output).contains("not signed"),
        "{}",
        stderr(&output)
    );
    let output = workspace.run(&["rollback", "--env", "staging", "--to", &signed]);
    assert_exit(&output, 0);
}
