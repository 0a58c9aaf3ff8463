//! Webhook notifications: a receiver on 127.0.0.1 gets the rollout's events in order, even
//! when its first answer is an error (retried with backoff).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use crate::helpers::*;
use crate::rollout::{RolloutWorkspace, web};

/// Records every POST body; answers 500 to the very first request, 200 afterwards.
pub(crate) fn receiver() -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = received.clone();
    // Serves until the test process ends; it only answers loopback requests.
    std::thread::spawn(move || {
        let mut first = true;
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let status = if first {
                "500 Internal Server Error"
            } else {
                "200 OK"
            };
            if !first && let Ok(value) = serde_json::from_slice(&body) {
                sink.lock().expect("lock").push(value);
            }
            first = false;
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    (address, received)
}

pub(crate) fn add_webhook(workspace: &Workspace, address: &str) {
    workspace.edit_config(
        "[state]",
        &format!("[[webhook]]\nurl = \"http://{address}/hook\"\ntimeout = \"2s\"\n\n[state]"),
    );
}

#[test]
fn events_arrive_in_order_and_a_failed_delivery_is_retried() {
    let rollout = RolloutWorkspace::new("steps = [50, 100]\nbake = \"300ms\"\nverify = \"300ms\"");
    let (address, received) = receiver();
    add_webhook(&rollout.workspace, &address);
    web(&rollout.workspace.repo, "web:1", "hello", 4);
    rollout.workspace.repo.commit("web 1");
    assert_exit(&rollout.workspace.run(&["run", "--once"]), 0);

    web(&rollout.workspace.repo, "web:2", "hello", 4);
    let good = rollout.workspace.repo.commit("web 2");
    assert_exit(&rollout.workspace.run(&["run", "--once"]), 0);

    rollout.fail_when("web:3");
    web(&rollout.workspace.repo, "web:3", "hello", 4);
    let bad = rollout.workspace.repo.commit("web 3");
    assert_exit(&rollout.workspace.run(&["run", "--once"]), 1);

    let events: Vec<(String, String)> = received
        .lock()
        .expect("lock")
        .iter()
        .filter(|event| event["environment"] == "staging")
        .map(|event| {
            (
                event["event"].as_str().unwrap_or_default().to_string(),
                event["revision"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    // The first deploy's rollout_started met the 500 and was retried; nothing is lost.
    assert_eq!(
        names,
        [
            "rollout_started",
            "promoted", // first deploy
            "rollout_started",
            "step_passed",
            "promoted", // web 2
            "rollout_started",
            "failed",
            "reverted", // web 3
        ]
    );
    assert_eq!(events[2].1, good);
    assert_eq!(events[7].1, bad);
    let all = received.lock().expect("lock").clone();
    let reverted = all
        .iter()
        .rev()
        .find(|e| e["event"] == "reverted")
        .expect("reverted");
    assert_eq!(reverted["to"], good.as_str());
    assert!(
        reverted["text"]
            .as_str()
            .expect("text")
            .starts_with("gitopsd staging: ")
    );
    let failed = all.iter().find(|e| e["event"] == "failed").expect("failed");
    assert!(
        failed["reason"]
            .as_str()
            .expect("reason")
            .contains("live-state"),
        "{failed}"
    );
}
