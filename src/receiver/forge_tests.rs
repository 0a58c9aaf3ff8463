//! Each forge's documented push event, authenticated and read; arbitrary bodies with valid
//! signatures never panic.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;

use super::*;

const SECRET: &[u8] = b"It's a Secret to Everybody";
const GITHUB: &str = include_str!("../../tests/forge-events/github-push.json");
const GITLAB: &str = include_str!("../../tests/forge-events/gitlab-push.json");
const GITEA: &str = include_str!("../../tests/forge-events/gitea-push.json");
const BITBUCKET: &str = include_str!("../../tests/forge-events/bitbucket-server-refs-changed.json");

const KINDS: [HookKind; 5] = [
    HookKind::Github,
    HookKind::Gitlab,
    HookKind::Gitea,
    HookKind::BitbucketServer,
    HookKind::GenericHmac,
];

fn headers(pairs: &[(&str, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.insert(
            HeaderName::from_bytes(name.as_bytes()).expect("test header names are valid"),
            HeaderValue::from_str(value).expect("test header values are valid"),
        );
    }
    map
}

/// The headers `kind`'s forge sends with a push of `body`, signed with `secret`.
pub(crate) fn signed(kind: HookKind, secret: &[u8], body: &[u8]) -> HeaderMap {
    let hex = signing::sign_hex(secret, body);
    let sha = format!("sha256={hex}");
    match kind {
        HookKind::Github => headers(&[
            ("x-github-event", "push".into()),
            ("x-hub-signature-256", sha),
        ]),
        HookKind::Gitlab => headers(&[
            ("x-gitlab-event", "Push Hook".into()),
            (
                "x-gitlab-token",
                String::from_utf8_lossy(secret).into_owned(),
            ),
        ]),
        HookKind::Gitea => headers(&[("x-gitea-event", "push".into()), ("x-gitea-signature", hex)]),
        HookKind::BitbucketServer => headers(&[
            ("x-event-key", "repo:refs_changed".into()),
            ("x-hub-signature", sha),
        ]),
        HookKind::GenericHmac => headers(&[("x-signature", sha)]),
    }
}

fn read(kind: HookKind, body: &str) -> Hint {
    let headers = signed(kind, SECRET, body.as_bytes());
    assert!(authentic(kind, SECRET, &headers, body.as_bytes()));
    assert!(!authentic(
        kind,
        b"another secret",
        &headers,
        body.as_bytes()
    ));
    let tampered = format!("{body} ");
    assert!(
        kind == HookKind::Gitlab || !authentic(kind, SECRET, &headers, tampered.as_bytes()),
        "a changed body fails the signature"
    );
    interpret(kind, &headers, body.as_bytes()).expect("the documented event reads")
}

#[test]
fn github_push_matches_its_repository_and_branch() {
    let hint = read(HookKind::Github, GITHUB);
    for url in [
        "https://github.com/Codertocat/Hello-World.git",
        "git@github.com:codertocat/hello-world.git",
    ] {
        assert_eq!(verdict(hint.clone(), url, "main"), Verdict::Fetch);
    }
    assert_eq!(
        verdict(hint.clone(), "https://github.com/Codertocat/Other", "main"),
        Verdict::Ignore("another repository".into())
    );
    assert_eq!(
        verdict(hint, "https://github.com/Codertocat/Hello-World", "prod"),
        Verdict::Ignore("another branch".into())
    );
    let ping = headers(&[("x-github-event", "ping".into())]);
    assert_eq!(
        interpret(HookKind::Github, &ping, b"{}").ok(),
        Some(Hint::Ping)
    );
    let issue = headers(&[("x-github-event", "issues".into())]);
    assert!(matches!(
        interpret(HookKind::Github, &issue, b"{}"),
        Ok(Hint::NotAPush(_))
    ));
}

#[test]
fn github_signature_is_checked_against_the_documented_example() {
    // GitHub's documentation: this secret and body give this signature.
    let headers = headers(&[(
        "x-hub-signature-256",
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17".into(),
    )]);
    assert!(authentic(
        HookKind::Github,
        SECRET,
        &headers,
        b"Hello, World!"
    ));
    assert!(!authentic(
        HookKind::Github,
        SECRET,
        &headers,
        b"Hello, World?"
    ));
    assert!(!authentic(
        HookKind::Github,
        SECRET,
        &HeaderMap::new(),
        b"Hello, World!"
    ));
}

#[test]
fn gitlab_push_uses_its_token_and_project_urls() {
    let hint = read(HookKind::Gitlab, GITLAB);
    assert_eq!(
        verdict(
            hint.clone(),
            "ssh://git@EXAMPLE.com:2222/mike/diaspora",
            "main"
        ),
        Verdict::Fetch
    );
    assert_eq!(
        verdict(hint, "http://example.com/mike/other.git", "main"),
        Verdict::Ignore("another repository".into())
    );
    let wrong = headers(&[("x-gitlab-token", "It's a Secret to Everybod".into())]);
    assert!(!authentic(
        HookKind::Gitlab,
        SECRET,
        &wrong,
        GITLAB.as_bytes()
    ));
    let tag = headers(&[("x-gitlab-event", "Tag Push Hook".into())]);
    assert!(matches!(
        interpret(HookKind::Gitlab, &tag, GITLAB.as_bytes()),
        Ok(Hint::NotAPush(_))
    ));
}

#[test]
fn gitea_and_forgejo_pushes_are_read_alike() {
    let hint = read(HookKind::Gitea, GITEA);
    assert_eq!(
        verdict(hint, "http://localhost:3000/gitea/webhooks.git", "main"),
        Verdict::Fetch
    );
    let hex = signing::sign_hex(SECRET, GITEA.as_bytes());
    let forgejo = headers(&[
        ("x-forgejo-event", "push".into()),
        ("x-forgejo-signature", hex),
    ]);
    assert!(authentic(
        HookKind::Gitea,
        SECRET,
        &forgejo,
        GITEA.as_bytes()
    ));
    assert!(!authentic(
        HookKind::Gitea,
        b"another secret",
        &forgejo,
        GITEA.as_bytes()
    ));
    assert!(!authentic(HookKind::Gitea, SECRET, &forgejo, b"{}"));
    assert!(matches!(
        interpret(HookKind::Gitea, &forgejo, GITEA.as_bytes()),
        Ok(Hint::Push(_))
    ));
}

#[test]
fn bitbucket_server_is_matched_by_clone_links_or_project_and_slug() {
    let hint = read(HookKind::BitbucketServer, BITBUCKET);
    assert_eq!(
        verdict(
            hint.clone(),
            "https://bitbucket.example/scm/proj/repository.git",
            "main"
        ),
        Verdict::Fetch
    );
    assert_eq!(
        verdict(hint, "https://bitbucket.example/scm/proj/other.git", "main"),
        Verdict::Ignore("another repository".into())
    );
    let ping = headers(&[("x-event-key", "diagnostics:ping".into())]);
    assert_eq!(
        interpret(HookKind::BitbucketServer, &ping, b"").ok(),
        Some(Hint::Ping)
    );
}

#[test]
fn tags_are_ignored() {
    let body = GITHUB.replace("refs/heads/main", "refs/tags/v1.0");
    let hint = read(HookKind::Github, &body);
    assert_eq!(
        verdict(hint, "https://github.com/Codertocat/Hello-World", "main"),
        Verdict::Ignore("a tag".into())
    );
}

#[test]
fn malformed_bodies_are_errors() {
    let deep = format!(
        "{{\"ref\": \"refs/heads/main\", \"repository\": {{\"x\": {}1{}}}}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let huge = format!(
        "{{\"ref\": \"refs/heads/main\", \"repository\": {{\"x\": [{}0]}}}}",
        "0,".repeat(200_000)
    );
    for kind in KINDS {
        for body in [
            "",
            "not json",
            "{\"ref\": 5, \"repository\": {}}",
            "{\"repository\": {}}",
            "{\"ref\": \"refs/heads/main\", \"repository\": []}",
            "{\"ref\": \"refs/heads/main\", \"repository\": {\"clone_url\": 7}}",
            "{\"repository\": {\"slug\": \"s\", \"project\": {\"key\": 1}}, \"changes\": {}}",
            deep.as_str(),
        ] {
            let headers = signed(kind, SECRET, body.as_bytes());
            let read = interpret(kind, &headers, body.as_bytes());
            assert!(
                kind == HookKind::GenericHmac || read.is_err(),
                "{kind:?} {:?}: {read:?}",
                body.get(..60)
            );
        }
        let headers = signed(kind, SECRET, huge.as_bytes());
        let read = interpret(kind, &headers, huge.as_bytes());
        assert!(
            kind == HookKind::GenericHmac || read.is_err(),
            "{kind:?} huge array: {read:?}"
        );
    }
}

#[test]
fn the_shape_check_skips_strings_and_counts_per_level() {
    let brackets_in_a_string = format!(
        "{{\"a\": \"{}\\\"{}\"}}",
        "[".repeat(100),
        ",".repeat(20_000)
    );
    assert!(check_shape(brackets_in_a_string.as_bytes()).is_ok());
    let at_limit = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
    assert!(check_shape(at_limit.as_bytes()).is_ok());
    let over = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
    assert!(check_shape(over.as_bytes()).is_err());
    let object_commas = format!("{{{}}}", vec!["\"k\":1"; MAX_ARRAY + 5].join(","));
    assert!(
        check_shape(object_commas.as_bytes()).is_ok(),
        "objects are not arrays"
    );
    let many_small = format!("[{}]", vec!["[1,2]"; 100].join(","));
    assert!(check_shape(many_small.as_bytes()).is_ok());
    for body in [GITHUB, GITLAB, GITEA, BITBUCKET] {
        assert!(check_shape(body.as_bytes()).is_ok());
    }
}

fn kind() -> impl Strategy<Value = HookKind> {
    proptest::sample::select(KINDS.to_vec())
}

/// JSON text shaped like push events: objects with the keys the readers look for, holding
/// values of any type, nested.
fn push_like() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        "[ -~]{0,12}".prop_map(|s| serde_json::Value::String(s).to_string()),
        Just("\"refs/heads/main\"".to_string()),
    ];
    let keys = proptest::sample::select(vec![
        "ref",
        "refId",
        "id",
        "repository",
        "project",
        "changes",
        "clone_url",
        "ssh_url",
        "git_http_url",
        "links",
        "clone",
        "href",
        "slug",
        "key",
        "homepage",
    ]);
    leaf.prop_recursive(6, 64, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5)
                .prop_map(|items| format!("[{}]", items.join(","))),
            prop::collection::vec((keys.clone(), inner), 0..6).prop_map(|fields| {
                let fields: Vec<String> = fields
                    .into_iter()
                    .map(|(key, value)| format!("\"{key}\":{value}"))
                    .collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
    })
}

proptest! {
    /// Arbitrary bytes with a valid signature: authenticated, and read or refused, never a
    /// panic.
    #[test]
    fn arbitrary_signed_bodies_never_panic(kind in kind(), body in prop::collection::vec(any::<u8>(), 0..2048)) {
        let headers = signed(kind, SECRET, &body);
        prop_assert!(authentic(kind, SECRET, &headers, &body));
        if let Ok(hint) = interpret(kind, &headers, &body) {
            let _ = verdict(hint, "https://github.com/Codertocat/Hello-World", "main");
        }
    }

    /// JSON shaped like a push event, with wrong types and missing fields anywhere.
    #[test]
    fn push_shaped_json_never_panics(kind in kind(), body in push_like()) {
        let headers = signed(kind, SECRET, body.as_bytes());
        prop_assert!(authentic(kind, SECRET, &headers, body.as_bytes()));
        if let Ok(hint) = interpret(kind, &headers, body.as_bytes()) {
            let _ = verdict(hint, "git@example.com:mike/diaspora.git", "main");
        }
    }

    /// A signature made with another secret never passes.
    #[test]
    fn other_secrets_fail(kind in kind(), body in prop::collection::vec(any::<u8>(), 0..256), other in "[ -~]{1,40}") {
        prop_assume!(other.as_bytes() != SECRET);
        let headers = signed(kind, other.as_bytes(), &body);
        prop_assert!(!authentic(kind, SECRET, &headers, &body));
    }
}
