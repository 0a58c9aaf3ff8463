//! Decrypting files that sops 3.11 wrote (`testdata/`, made with `age-keygen` and `sops
//! --encrypt --age`; the keys are test keys and protect nothing else).

use serde_json::json;

use super::*;

const KEY1: &str = include_str!("testdata/key1.txt");
const KEY2: &str = include_str!("testdata/key2.txt");
const OTHER_KEY: &str = include_str!("testdata/other-key.txt");
/// A Secret for two recipients (key1, key2), every value encrypted but `note_unencrypted`.
const SECRET: &str = include_str!("testdata/secret.enc.yaml");
/// Two ConfigMaps for key1, `encrypted_regex: ^(data|stringData)$`, `mac_only_encrypted`.
const MULTI: &str = include_str!("testdata/multi.enc.yaml");

fn identities(text: &str) -> Identities {
    Identities::parse(text, "key.txt").expect("a test key")
}

/// The file's documents, split as sops' YAML decoder does.
fn documents(text: &str) -> Vec<Node> {
    text.split("\n---\n")
        .map(|document| serde_saphyr::from_str(document).expect("valid YAML"))
        .collect()
}

fn decrypt_text(text: &str, key: &str) -> Result<Vec<Decrypted>, SopsError> {
    decrypt(&documents(text), &identities(key))
}

#[test]
fn a_file_for_two_recipients_decrypts_with_either_key() {
    for key in [KEY1, KEY2] {
        let decrypted = decrypt_text(SECRET, key).expect("decrypts");
        assert_eq!(
            decrypted[0].body,
            json!({
                "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"},
                "stringData": {
                    "password": "s3cr3t", "port": 5432, "ratio": 0.25, "enabled": true,
                    "list": ["a", 7], "empty": "", "nothing": null, "note_unencrypted": "plain"
                }
            })
        );
        assert_eq!(
            decrypted[0].encrypted,
            [
                "/apiVersion",
                "/kind",
                "/metadata/name",
                "/stringData/password",
                "/stringData/port",
                "/stringData/ratio",
                "/stringData/enabled",
                "/stringData/list/0",
                "/stringData/list/1",
                "/stringData/empty"
            ]
        );
    }
}

#[test]
fn a_multi_document_file_has_one_mac_over_its_documents() {
    let decrypted = decrypt_text(MULTI, KEY1).expect("decrypts");
    assert_eq!(decrypted.len(), 2);
    assert_eq!(decrypted[0].body["data"], json!({"a": "1"}));
    assert_eq!(decrypted[1].body["metadata"], json!({"name": "two"}));
    assert_eq!(decrypted[1].encrypted, ["/data/b"]);
    // One document alone is not the file sops signed.
    let first = documents(MULTI).remove(0);
    assert_eq!(
        decrypt(&[first], &identities(KEY1)),
        Err(SopsError::MacMismatch)
    );
}

#[test]
fn mac_only_encrypted_leaves_unencrypted_values_out_of_the_mac() {
    let renamed = MULTI.replace("name: two", "name: three");
    let decrypted = decrypt_text(&renamed, KEY1).expect("outside the MAC");
    assert_eq!(decrypted[1].body["metadata"]["name"], "three");
}

#[test]
fn a_changed_unencrypted_value_fails_the_mac() {
    let changed = SECRET.replace("note_unencrypted: plain", "note_unencrypted: other");
    assert_eq!(decrypt_text(&changed, KEY1), Err(SopsError::MacMismatch));
    let reordered = MULTI.replace(
        "data:\n    a:",
        "data:\n    z: ENC[AES256_GCM,data:,iv:,tag:,type:str]\n    a:",
    );
    assert!(decrypt_text(&reordered, KEY1).is_err(), "an added value");
}

#[test]
fn a_changed_ciphertext_is_a_tampered_value_named_by_path() {
    let line = SECRET
        .lines()
        .find(|line| line.trim_start().starts_with("password:"))
        .expect("a password line");
    let data = line.split("data:").nth(1).expect("data");
    let flipped = if data.starts_with('A') { "B" } else { "A" };
    let changed = SECRET.replace(line, &line.replacen(&data[..1], flipped, 1));
    assert_eq!(
        decrypt_text(&changed, KEY1),
        Err(SopsError::TamperedValue {
            document: 1,
            path: "stringData.password".into()
        })
    );
    let message = decrypt_text(&changed, KEY1)
        .expect_err("tampered")
        .to_string();
    assert!(!message.contains("s3cr3t"), "{message}");
}

#[test]
fn a_value_moved_to_another_key_does_not_verify() {
    let moved = SECRET.replacen("password:", "passw0rd:", 1);
    assert!(matches!(
        decrypt_text(&moved, KEY1),
        Err(SopsError::TamperedValue { .. })
    ));
}

#[test]
fn another_key_is_no_matching_key_naming_the_recipients() {
    let error = decrypt_text(SECRET, OTHER_KEY).expect_err("not for this key");
    let SopsError::NoMatchingKey {
        recipients,
        key_file,
    } = &error
    else {
        panic!("{error:?}")
    };
    assert_eq!(recipients.len(), 2);
    assert!(recipients.iter().all(|r| r.starts_with("age1")));
    assert_eq!(key_file, "key.txt");
    assert!(
        error.to_string().starts_with("no matching key: "),
        "{error}"
    );
}

#[test]
fn a_kms_only_file_says_which_key_types_are_supported() {
    let start = SECRET.find("    age:").expect("age block");
    let end = SECRET.find("    lastmodified:").expect("lastmodified");
    let kms = format!(
        "{}    kms:\n        - arn: arn:aws:kms:eu-west-1:111122223333:key/x\n          created_at: \"2026-12-07T04:23:07Z\"\n          enc: AQICAHg=\n          aws_profile: \"\"\n{}",
        &SECRET[..start],
        &SECRET[end..]
    );
    let error = decrypt_text(&kms, KEY1).expect_err("no age key");
    assert_eq!(error, SopsError::OnlyOtherKeys(vec!["AWS KMS"]));
    assert_eq!(
        error.to_string(),
        "encrypted only for AWS KMS; gitopsd decrypts SOPS files encrypted for age recipients only (sops --age)"
    );
}
