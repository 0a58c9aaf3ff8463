//! Secret values never leave the Secret: a planted value is looked for in every output channel
//! (daemon logs at trace level, journal, status, history, diff in every format, validate, a YAML
//! error on the value's line, the API's /status and webhooks), and so are values decrypted from
//! SOPS files, in a Secret and in a ConfigMap.

use std::process::Stdio;
use std::time::Duration;

use gitopsd::journal::Event;

use crate::helpers::*;
use crate::sops::{AgeKey, decrypt_staging_with, encrypt};
use crate::webhook::{add_webhook, receiver};

const PLANTED: &str = "pl4nted-s3cret-value";
/// Planted in SOPS-encrypted files: gitopsd decrypts it, and shows it nowhere.
const SOPS_PLANTED: &str = "pl4nted-s0ps-value";
const TOKEN: &str = "secrets-token";

fn base64(value: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(value)
}

fn secret_yaml(value: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: api\nstringData:\n  token: {value}-string\ndata:\n  key: {}\n",
        base64(&format!("{value}-data"))
    )
}

/// Fails naming `channel` when `text` holds the planted value in any form it takes in git.
fn assert_clean(channel: &str, text: &str) {
    let forms = [
        PLANTED.to_string(),
        SOPS_PLANTED.to_string(),
        base64(&format!("{SOPS_PLANTED}-data")),
        base64(&format!("{PLANTED}-data")),
        base64(&format!("{PLANTED}-string")),
    ];
    for form in forms {
        assert!(
            !text.contains(&form),
            "{channel} shows the secret value ({form}):\n{text}"
        );
    }
}

/// SOPS-encrypted files holding `value`: a Secret (every value encrypted, base64 `data` and
/// `stringData`) and a ConfigMap whose `data` is encrypted.
fn write_sops_files(workspace: &Workspace, key: &AgeKey, value: &str) {
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: sealed\nstringData:\n  token: {value}-string\ndata:\n  key: {}\n",
        base64(&format!("{value}-data"))
    );
    let config_map = format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: sealed-settings\ndata:\n  password: {value}-config\n"
    );
    let dir = workspace.root.path();
    workspace.repo.write(
        "environments/staging/sealed-secret.yaml",
        &encrypt(dir, &secret, &[key], &[]),
    );
    workspace.repo.write(
        "environments/staging/sealed-settings.yaml",
        &encrypt(
            dir,
            &config_map,
            &[key],
            &["--encrypted-regex", "^(data|stringData)$"],
        ),
    );
}

fn all_output(output: &std::process::Output) -> String {
    format!("{}{}", stdout(output), stderr(output))
}

fn staging_events(workspace: &Workspace, name: &str) -> usize {
    workspace
        .journal("staging")
        .iter()
        .filter(|record| record.event.name() == name)
        .count()
}

#[test]
fn a_planted_secret_value_appears_on_no_channel() {
    let workspace = Workspace::new();
    workspace.write_config(&workspace.repo.dir.display().to_string(), "1s");
    let (hook, received) = receiver();
    add_webhook(&workspace, &hook);
    configure_api(&workspace, TOKEN, "");
    write_environment(&workspace.repo, "production", 1);
    write_environment(&workspace.repo, "staging", 1);
    workspace
        .repo
        .write("environments/staging/secret.yaml", &secret_yaml("v1"));
    let key = AgeKey::new(workspace.path("age.key"));
    decrypt_staging_with(&workspace, &key.file);
    write_sops_files(&workspace, &key, "v1");
    workspace.repo.commit("a secret");
    let log = workspace.path("daemon.log");
    let (daemon, address) = spawn_with_api(
        &workspace,
        workspace
            .gitopsd(&["run"])
            .env("RUST_LOG", "trace")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file")),
    );
    assert!(wait_for(Duration::from_secs(30), || {
        staging_events(&workspace, "healthy") == 1
    }));

    // A new value, previewed, then rolled out by the daemon.
    workspace
        .repo
        .write("environments/staging/secret.yaml", &secret_yaml(PLANTED));
    write_sops_files(&workspace, &key, SOPS_PLANTED);
    workspace.repo.commit("rotate the secret");
    for format in ["text", "markdown", "json"] {
        let diff = workspace.run(&["diff", "--env", "staging", "--output", format]);
        assert_clean(&format!("diff --output {format}"), &all_output(&diff));
    }
    assert!(wait_for(Duration::from_secs(30), || {
        staging_events(&workspace, "healthy") == 2
    }));
    // The SOPS values were decrypted and applied (so their absence elsewhere means something).
    let applied = std::fs::read_to_string(
        workspace
            .live("staging")
            .join("shop/ConfigMap/sealed-settings.yaml"),
    )
    .expect("the decrypted ConfigMap is applied");
    assert!(
        applied.contains(&format!("{SOPS_PLANTED}-config")),
        "{applied}"
    );
    // A YAML error on the line that holds the value.
    workspace.repo.write(
        "environments/staging/secret.yaml",
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: api\nstringData:\n  token: \"{PLANTED} unterminated\n  other: [x\n"
        ),
    );
    workspace.repo.commit("broken secret");
    assert!(wait_for(Duration::from_secs(30), || {
        staging_events(&workspace, "rejected") == 1
    }));
    let (status, body) = http_request(&address, "GET", "/status", &[], "").expect("/status");
    assert_eq!(status, 200);
    assert_clean("GET /status", &body);
    // The receiver refuses the first delivery; the retries bring every event in.
    assert!(
        wait_for(Duration::from_secs(30), || {
            received.lock().expect("lock").len() >= 4
        }),
        "the webhook heard both rollouts"
    );
    drop(daemon);

    assert_clean(
        "daemon logs at trace level",
        &std::fs::read_to_string(&log).expect("log"),
    );
    let hooks: Vec<String> = received
        .lock()
        .expect("lock")
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_clean("webhooks", &hooks.join("\n"));
    let run = workspace.run(&["run", "--once"]);
    assert_exit(&run, 1);
    assert_clean("run --once on the broken secret", &all_output(&run));
    for command in [
        &["validate"][..],
        &["status"][..],
        &["history"][..],
        &["diff", "--env", "staging"][..],
    ] {
        assert_clean(
            &format!("{command:?}"),
            &all_output(&workspace.run(command)),
        );
    }
    let journal = std::fs::read_to_string(gitopsd::journal::Journal::path_for(
        &workspace.path("state"),
        "staging",
    ))
    .expect("journal");
    assert_clean("the journal", &journal);
    assert!(
        workspace
            .journal("staging")
            .iter()
            .any(|record| matches!(&record.event, Event::Rejected { .. })),
        "the broken revision was rejected (so its error was on the channels checked)"
    );
}
