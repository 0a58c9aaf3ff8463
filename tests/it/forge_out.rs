//! What gitopsd tells the forge and webhooks: commit statuses for GitHub, GitLab and Gitea
//! (path, method, headers and JSON body checked by a local server, pending → success and
//! pending → failure), and signed webhook deliveries, each signature checked with
//! `openssl dgst -sha256 -hmac`.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::{Arc, Mutex};

use crate::helpers::*;
use crate::rollout::{RolloutWorkspace, web};

/// One request as the server got it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// Lowercase names.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// A server on 127.0.0.1 recording every request; it answers 500 to the first `failing`
/// requests and 201 to the rest.
pub fn recorder(failing: usize) -> (String, Arc<Mutex<Vec<Received>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = received.clone();
    // Serves until the test process ends; it only answers loopback requests.
    std::thread::spawn(move || {
        let mut served = 0;
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut request_line = String::new();
            let _ = reader.read_line(&mut request_line);
            let mut parts = request_line.split_whitespace();
            let (method, path) = (
                parts.next().unwrap_or_default(),
                parts.next().unwrap_or_default(),
            );
            let mut headers = BTreeMap::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((name, value)) = line.split_once(':') {
                    headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
                }
            }
            let length = headers
                .get("content-length")
                .and_then(|value| value.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            sink.lock().expect("lock").push(Received {
                method: method.to_string(),
                path: path.to_string(),
                headers,
                body,
            });
            served += 1;
            let status = if served <= failing {
                "500 Internal Server Error"
            } else {
                "201 Created"
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Length: 2\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{{}}"
            );
        }
    });
    (address, received)
}

const TOKENS: [(&str, &str); 3] = [
    ("github", "ghp_statusTokenForTests"),
    ("gitlab", "glpat-statusTokenForTests"),
    ("gitea", "gitea-statusTokenForTests"),
];

/// The statuses one forge got for `revision`: (state, description), in order.
fn states(requests: &[Received], prefix: &str, revision: &str) -> Vec<(String, String)> {
    requests
        .iter()
        .filter(|request| request.path.starts_with(prefix) && request.path.ends_with(revision))
        .map(|request| {
            let body = request.json();
            (
                body["state"].as_str().unwrap_or_default().to_string(),
                body["description"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[test]
fn commit_statuses_go_to_each_forge_pending_then_success_or_failure() {
    let rollout = RolloutWorkspace::new("steps = [50, 100]\nbake = \"300ms\"\nverify = \"300ms\"");
    let workspace = &rollout.workspace;
    // The first request fails: statuses are retried like webhooks.
    let (address, received) = recorder(1);
    let mut notify = String::new();
    for (forge, token) in TOKENS {
        fs::write(
            workspace.path(&format!("{forge}-token")),
            format!("{token}\n"),
        )
        .expect("token");
        let api = match forge {
            "github" => format!("http://{address}/github"),
            "gitlab" => format!("http://{address}/gitlab/api/v4"),
            _ => format!("http://{address}/gitea/api/v1"),
        };
        notify.push_str(&format!(
            "[[notify]]\ntype = \"{forge}-status\"\napi_url = \"{api}\"\ntoken_file = \"{forge}-token\"\nrepository = \"ops/deploy\"\n\n"
        ));
    }
    workspace.edit_config("[state]", &format!("{notify}[state]"));

    web(&workspace.repo, "web:1", "hello", 4);
    let good = workspace.repo.commit("web 1");
    let first = workspace.run(&["run", "--once"]);
    assert_exit(&first, 0);
    rollout.fail_when("web:2");
    web(&workspace.repo, "web:2", "hello", 4);
    let bad = workspace.repo.commit("web 2");
    let second = workspace.run(&["run", "--once"]);
    assert_exit(&second, 1);
    for output in [&first, &second] {
        let log = format!("{}{}", stdout(output), stderr(output));
        for (_, token) in TOKENS {
            assert!(!log.contains(token), "a token reached the log:\n{log}");
        }
    }

    let requests = received.lock().expect("lock").clone();
    assert!(
        requests.iter().all(|request| request.method == "POST"),
        "{requests:#?}"
    );
    // Production has a context of its own; the checks below look at staging.
    let staging: Vec<Received> = requests
        .into_iter()
        .filter(|r| {
            let body = r.json();
            body["context"] == "gitopsd/staging" || body["name"] == "gitopsd/staging"
        })
        .collect();

    // GitHub: POST /repos/{owner}/{repo}/statuses/{sha}, a bearer token, state/context/description.
    let github: Vec<&Received> = staging
        .iter()
        .filter(|r| r.path.starts_with("/github/"))
        .collect();
    for request in &github {
        assert!(
            request
                .path
                .starts_with("/github/repos/ops/deploy/statuses/"),
            "{}",
            request.path
        );
        assert_eq!(
            request.headers["authorization"],
            "Bearer ghp_statusTokenForTests"
        );
        assert_eq!(request.headers["accept"], "application/vnd.github+json");
        assert_eq!(request.headers["content-type"], "application/json");
        let body = request.json();
        let keys: Vec<&String> = body.as_object().expect("object").keys().collect();
        assert_eq!(keys, ["context", "description", "state"]);
    }
    // GitLab: POST /projects/{url-encoded path}/statuses/{sha}, PRIVATE-TOKEN, state/name.
    let gitlab: Vec<&Received> = staging
        .iter()
        .filter(|r| r.path.starts_with("/gitlab/"))
        .collect();
    for request in &gitlab {
        assert!(
            request
                .path
                .starts_with("/gitlab/api/v4/projects/ops%2Fdeploy/statuses/"),
            "{}",
            request.path
        );
        assert_eq!(
            request.headers["private-token"],
            "glpat-statusTokenForTests"
        );
        assert!(!request.headers.contains_key("authorization"));
        assert_eq!(request.json()["name"], "gitopsd/staging");
    }
    // Gitea: POST /repos/{owner}/{repo}/statuses/{sha}, `token` authorization.
    let gitea: Vec<&Received> = staging
        .iter()
        .filter(|r| r.path.starts_with("/gitea/"))
        .collect();
    for request in &gitea {
        assert!(
            request
                .path
                .starts_with("/gitea/api/v1/repos/ops/deploy/statuses/"),
            "{}",
            request.path
        );
        assert_eq!(
            request.headers["authorization"],
            "token gitea-statusTokenForTests"
        );
        assert_eq!(request.json()["context"], "gitopsd/staging");
    }

    let pending_success = |prefix: &str| {
        let got = states(&staging, prefix, &good);
        let kinds: Vec<&str> = got.iter().map(|(state, _)| state.as_str()).collect();
        // The first attempt of the very first status met the 500; its retry repeats it.
        let mut kinds = kinds;
        kinds.dedup();
        assert_eq!(kinds, ["pending", "success"], "{prefix}: {got:?}");
    };
    pending_success("/github/");
    pending_success("/gitlab/");
    pending_success("/gitea/");

    for (prefix, failure) in [
        ("/github/", "failure"),
        ("/gitlab/", "failed"),
        ("/gitea/", "failure"),
    ] {
        let got = states(&staging, prefix, &bad);
        assert_eq!(
            got.first().map(|(s, _)| s.as_str()),
            Some("pending"),
            "{prefix}: {got:?}"
        );
        let (state, description) = got.last().expect("a final status");
        assert_eq!(state, failure, "{prefix}: {got:?}");
        assert!(
            description.contains("live-state"),
            "{prefix}: the cause is in the description: {description}"
        );
        // GitLab takes one status per state, so it keeps the failure; the others end on the
        // revert, which names the failure too.
        if prefix != "/gitlab/" {
            assert!(description.starts_with("reverted to "), "{description}");
        }
    }
    // GitLab refuses a transition to the state a status already has: sent once per state.
    let gitlab_bad = states(&staging, "/gitlab/", &bad);
    assert_eq!(gitlab_bad.len(), 2, "{gitlab_bad:?}");
}

/// `openssl dgst -sha256 -hmac SECRET` over `body`: the hex digest.
fn openssl_hmac(secret: &str, body: &[u8], dir: &std::path::Path, index: usize) -> String {
    let file = dir.join(format!("delivery-{index}.json"));
    fs::write(&file, body).expect("write body");
    let output = Command::new("openssl")
        .args(["dgst", "-sha256", "-hmac", secret])
        .arg(&file)
        .output()
        .expect("openssl runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // `HMAC-SHA2-256(file)= <hex>`
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn webhook_deliveries_are_signed_and_verify_with_openssl() {
    let rollout = RolloutWorkspace::new("steps = [50, 100]\nbake = \"300ms\"\nverify = \"300ms\"");
    let workspace = &rollout.workspace;
    let (signed_address, signed) = recorder(1);
    let (plain_address, plain) = recorder(0);
    let secret = "whsec-for-tests";
    fs::write(workspace.path("webhook-secret"), format!("{secret}\n")).expect("secret");
    workspace.edit_config(
        "[state]",
        &format!(
            "[[webhook]]\nurl = \"http://{signed_address}/hook\"\nsecret_file = \"webhook-secret\"\ntimeout = \"2s\"\n\n[[webhook]]\nurl = \"http://{plain_address}/hook\"\ntimeout = \"2s\"\n\n[state]"
        ),
    );
    web(&workspace.repo, "web:1", "hello", 4);
    workspace.repo.commit("web 1");
    assert_exit(&workspace.run(&["run", "--once"]), 0);
    web(&workspace.repo, "web:2", "hello", 4);
    workspace.repo.commit("web 2");
    assert_exit(&workspace.run(&["run", "--once"]), 0);

    let deliveries = signed.lock().expect("lock").clone();
    assert!(deliveries.len() >= 4, "{deliveries:#?}");
    let mut ids = Vec::new();
    for (index, delivery) in deliveries.iter().enumerate() {
        let signature = &delivery.headers["x-gitopsd-signature"];
        let hex = signature.strip_prefix("sha256=").expect("sha256= prefix");
        assert_eq!(
            hex,
            openssl_hmac(secret, &delivery.body, workspace.root.path(), index),
            "delivery {index}"
        );
        assert_eq!(
            delivery.headers["x-gitopsd-event"],
            delivery.json()["event"].as_str().expect("event")
        );
        let id = &delivery.headers["x-gitopsd-delivery"];
        assert_eq!(id.len(), 32, "{id}");
        ids.push(id.clone());
    }
    // The first delivery met a 500 and was sent again under the same id; every other id is new.
    assert_eq!(ids[0], ids[1], "a retry keeps its delivery id");
    let mut unique = ids[1..].to_vec();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len() - 1, "{ids:?}");
    // A tampered body does not verify.
    let mut tampered = deliveries[0].body.clone();
    tampered.push(b' ');
    assert_ne!(
        deliveries[0].headers["x-gitopsd-signature"],
        format!(
            "sha256={}",
            openssl_hmac(secret, &tampered, workspace.root.path(), 999)
        )
    );

    // A webhook without a secret gets the event and delivery headers but no signature.
    let unsigned = plain.lock().expect("lock").clone();
    assert_eq!(unsigned.len(), deliveries.len() - 1);
    for delivery in &unsigned {
        assert!(!delivery.headers.contains_key("x-gitopsd-signature"));
        assert!(delivery.headers.contains_key("x-gitopsd-delivery"));
        assert!(delivery.headers.contains_key("x-gitopsd-event"));
    }
}
