//! Rollout notifications to webhooks: generic JSON with a Slack-compatible `text`, sent in
//! order from a background task and retried with backoff, never on the rollout's own path;
//! signed (`X-Gitopsd-Signature`) when the webhook has a secret. The same notifier feeds the
//! forge's commit statuses.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::commit_status::{CommitStatusConfig, Statuses};
use crate::journal::Event;

/// Notifications queued beyond this are dropped (and logged) rather than slowing a rollout.
const QUEUE: usize = 1024;
/// Attempts per notification and webhook.
const ATTEMPTS: u32 = 5;

/// A webhook told about rollouts (`[[webhook]]`).
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookConfig {
    pub url: String,
    /// Only these events; empty means all.
    pub events: Vec<String>,
    pub timeout: Duration,
    /// Signs each delivery with the secret in this file (HMAC-SHA256 of the body).
    pub secret_file: Option<std::path::PathBuf>,
}

/// One notification, as posted.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Notification {
    /// `rollout_started`, `step_passed`, `promoted`, `failed`, `reverted`, `blocked`, the
    /// blue/green phases, the hook events, or `acquired` (`[ha]`).
    pub event: String,
    pub environment: String,
    pub revision: String,
    pub time: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weight: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For `failed`: the short cause (`CrashLoopBackOff`, `CheckFailed`, `Timeout`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// The revision a revert returned to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// For hook events: the hook (`command <name>` or the object) and when it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hook: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// For a finished hook: how long it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// For `acquired` (`[ha]`): the daemon that took the environment, and the one that held
    /// it before (none: the Lease was released or new).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// A one-line summary; Slack's incoming webhooks show this field.
    pub text: String,
}

impl Notification {
    /// The notification for a journal event, if it is one operators are told about.
    pub fn for_event(environment: &str, event: &Event, time: DateTime<Utc>) -> Option<Self> {
        let revision = event.revision();
        let short = revision.short();
        let base = |name: &str, text: String| Notification {
            event: name.to_string(),
            environment: environment.to_string(),
            revision: revision.0.clone(),
            time,
            text: format!("gitopsd {environment}: {text}"),
            ..Notification::default()
        };
        match event {
            Event::RolloutStarted {
                steps, previous, ..
            } => {
                let steps: Vec<String> = steps.iter().map(|w| format!("{w}%")).collect();
                let from = previous.as_ref().map_or("nothing", |p| p.short());
                Some(base(
                    "rollout_started",
                    format!(
                        "rollout of {short} started ({}), replacing {from}",
                        steps.join(" → ")
                    ),
                ))
            }
            Event::StepPassed { step, weight, .. } => Some(Notification {
                step: Some(step + 1),
                weight: Some(*weight),
                ..base(
                    "step_passed",
                    format!("{short} passed step {} ({weight}%)", step + 1),
                )
            }),
            Event::Promoted { .. } => {
                Some(base("promoted", format!("{short} promoted; verifying")))
            }
            Event::PreviewStarted { .. }
            | Event::AwaitingApproval { .. }
            | Event::Switched { .. }
            | Event::SwitchedBack { .. }
            | Event::ScaledDown { .. } => blue_green_notification(event, short, base),
            Event::RolloutFailed { reason, cause, .. } => Some(Notification {
                reason: Some(reason.clone()),
                cause: cause.clone(),
                ..base("failed", format!("{short} failed: {reason}"))
            }),
            Event::VerifyFailed { commit, reason, .. } => Some(Notification {
                reason: Some(reason.clone()),
                ..base(
                    "verify_failed",
                    format!(
                        "{short} refused: commit {} did not verify: {reason}",
                        commit.short()
                    ),
                )
            }),
            Event::Blocked { reason, .. } => Some(Notification {
                reason: Some(reason.clone()),
                ..base(
                    "blocked",
                    format!("{short} blocked by the cluster, not failed; retrying: {reason}"),
                )
            }),
            Event::Reverted { to, .. } => Some(Notification {
                to: Some(to.0.clone()),
                ..base("reverted", format!("{short} reverted to {}", to.short()))
            }),
            Event::HookStarted { .. } | Event::HookSucceeded { .. } | Event::HookFailed { .. } => {
                hook_notification(event, short, base)
            }
            Event::Acquired { holder, from, .. } => Some(handover_notification(holder, from, base)),
            _ => None,
        }
    }
}

/// `[ha]`: the notification that another daemon acts for the environment now.
fn handover_notification(
    holder: &str,
    from: &Option<String>,
    base: impl Fn(&str, String) -> Notification,
) -> Notification {
    let before = from.as_deref().unwrap_or("a released or new Lease");
    Notification {
        holder: Some(holder.to_string()),
        from: from.clone(),
        ..base(
            "acquired",
            format!("now acted for by {holder} (from {before})"),
        )
    }
}

/// The notification of a hook run.
fn hook_notification(
    event: &Event,
    short: &str,
    base: impl Fn(&str, String) -> Notification,
) -> Option<Notification> {
    let (name, when, hook, duration_ms, reason) = match event {
        Event::HookStarted { when, hook, .. } => ("hook_started", when, hook, None, None),
        Event::HookSucceeded {
            when,
            hook,
            duration_ms,
            ..
        } => ("hook_succeeded", when, hook, Some(*duration_ms), None),
        Event::HookFailed {
            when,
            hook,
            duration_ms,
            message,
            ..
        } => (
            "hook_failed",
            when,
            hook,
            Some(*duration_ms),
            Some(message.clone()),
        ),
        _ => return None,
    };
    let outcome = match (name, &reason) {
        ("hook_started", _) => "started".to_string(),
        (_, Some(reason)) => format!("failed: {reason}"),
        _ => "succeeded".to_string(),
    };
    Some(Notification {
        hook: Some(hook.clone()),
        when: Some(when.clone()),
        duration_ms,
        reason,
        ..base(name, format!("{short} {when} hook {hook} {outcome}"))
    })
}

/// The notification of a blue/green phase.
fn blue_green_notification(
    event: &Event,
    short: &str,
    base: impl Fn(&str, String) -> Notification,
) -> Option<Notification> {
    match event {
        Event::PreviewStarted { .. } => Some(base(
            "preview_started",
            format!("{short} preview started beside the serving pods"),
        )),
        Event::AwaitingApproval { .. } => Some(base(
            "awaiting_approval",
            format!("{short} preview ready and healthy; the switch waits for gitopsd approve"),
        )),
        Event::Switched { .. } => Some(base(
            "switched",
            format!("{short} switched: the active Services select the new pods; verifying"),
        )),
        Event::SwitchedBack { reason, .. } => Some(Notification {
            reason: Some(reason.clone()),
            ..base(
                "switched_back",
                format!("{short} switched back to the old pods: {reason}"),
            )
        }),
        Event::ScaledDown { .. } => Some(base(
            "scaled_down",
            format!("{short} scaling the old pods down"),
        )),
        _ => None,
    }
}

/// Queues notifications for the sender task, and commit status changes for theirs; cheap to
/// clone.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    queue: Option<mpsc::Sender<Notification>>,
    statuses: Statuses,
}

/// The tasks delivering queued notifications and statuses; `finish` flushes them.
#[derive(Debug)]
pub struct Delivery {
    tasks: Vec<JoinHandle<()>>,
}

impl Notifier {
    /// A notifier for `webhooks` and commit `statuses`; without any, it queues nothing and no
    /// task runs.
    pub fn start(
        webhooks: Vec<WebhookConfig>,
        statuses: Vec<CommitStatusConfig>,
    ) -> (Self, Option<Delivery>) {
        let mut tasks = Vec::new();
        let queue = (!webhooks.is_empty()).then(|| {
            let (queue, receiver) = mpsc::channel(QUEUE);
            tasks.push(tokio::spawn(deliver(webhooks, receiver)));
            queue
        });
        let (statuses, status_task) = Statuses::start(statuses);
        tasks.extend(status_task);
        let delivery = (!tasks.is_empty()).then_some(Delivery { tasks });
        (Self { queue, statuses }, delivery)
    }

    /// Queues the notification and status change for `event`, if any; never waits.
    pub fn event(&self, environment: &str, event: &Event, time: DateTime<Utc>) {
        self.statuses.event(environment, event);
        let Some(queue) = &self.queue else { return };
        let Some(notification) = Notification::for_event(environment, event, time) else {
            return;
        };
        if queue.try_send(notification).is_err() {
            tracing::warn!(env = %environment, "webhook queue full; notification dropped");
        }
    }
}

impl Delivery {
    /// Waits up to `limit` for queued notifications and statuses to go out (all notifiers
    /// must be dropped first, so the queues end).
    pub async fn finish(self, limit: Duration) {
        let all = futures_util::future::join_all(self.tasks);
        if tokio::time::timeout(limit, all).await.is_err() {
            tracing::warn!(
                "webhook notifications or commit statuses still pending at exit were dropped"
            );
        }
    }
}

/// A webhook with its secret, read once when the task starts.
struct Destination {
    webhook: WebhookConfig,
    secret: Option<Vec<u8>>,
}

/// The secret of `webhook`; `Err` when it has a secret file that cannot be read (the webhook
/// is then left out rather than sent unsigned).
async fn read_secret(webhook: &WebhookConfig) -> Result<Option<Vec<u8>>, ()> {
    let Some(path) = &webhook.secret_file else {
        return Ok(None);
    };
    match tokio::fs::read_to_string(path).await {
        Ok(secret) if !secret.trim().is_empty() => Ok(Some(secret.trim().as_bytes().to_vec())),
        Ok(_) => {
            tracing::error!(file = %path.display(), url = %webhook.url, "webhook secret file is empty; the webhook is off");
            Err(())
        }
        Err(error) => {
            tracing::error!(file = %path.display(), url = %webhook.url, %error, "cannot read the webhook secret file; the webhook is off");
            Err(())
        }
    }
}

/// A delivery id no other delivery has: 128 random bits in hex.
fn delivery_id() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // No system randomness: the time and a counter still make ids unique in this process.
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let count = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = Utc::now().timestamp_nanos_opt().unwrap_or_default();
        bytes[..8].copy_from_slice(&nanos.to_be_bytes());
        bytes[8..].copy_from_slice(&count.to_be_bytes());
    }
    crate::signing::hex(&bytes)
}

async fn deliver(webhooks: Vec<WebhookConfig>, mut queue: mpsc::Receiver<Notification>) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = match reqwest::Client::builder().build() {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "cannot build the webhook HTTP client; notifications are off");
            return;
        }
    };
    let mut destinations = Vec::new();
    for webhook in webhooks {
        if let Ok(secret) = read_secret(&webhook).await {
            destinations.push(Destination { webhook, secret });
        }
    }
    while let Some(notification) = queue.recv().await {
        let body = match serde_json::to_string(&notification) {
            Ok(body) => body,
            Err(error) => {
                tracing::error!(%error, "cannot encode a notification");
                continue;
            }
        };
        for destination in &destinations {
            let events = &destination.webhook.events;
            if !events.is_empty() && !events.contains(&notification.event) {
                continue;
            }
            send(&client, destination, &notification.event, &body).await;
        }
    }
}

/// Posts `body`, retrying with backoff (1 s, 2 s, 4 s, …) on errors and 5xx answers; every
/// attempt carries the same delivery id, so a receiver can drop the repeats it already took.
async fn send(client: &reqwest::Client, destination: &Destination, event: &str, body: &str) {
    let webhook = &destination.webhook;
    let delivery = delivery_id();
    let signature = destination.secret.as_ref().map(|secret| {
        format!(
            "sha256={}",
            crate::signing::sign_hex(secret, body.as_bytes())
        )
    });
    for attempt in 1..=ATTEMPTS {
        let mut post = client
            .post(&webhook.url)
            .timeout(webhook.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Gitopsd-Event", event)
            .header("X-Gitopsd-Delivery", &delivery);
        if let Some(signature) = &signature {
            post = post.header("X-Gitopsd-Signature", signature);
        }
        let retry = match post.body(body.to_string()).send().await {
            Ok(response) if response.status().is_success() => return,
            Ok(response) if response.status().is_client_error() => {
                tracing::error!(url = %webhook.url, status = %response.status(), event, "webhook refused the notification");
                return;
            }
            Ok(response) => format!("status {}", response.status()),
            Err(error) => error.to_string(),
        };
        if attempt == ATTEMPTS {
            tracing::error!(url = %webhook.url, event, error = %retry, "webhook notification given up after {ATTEMPTS} attempts");
            return;
        }
        let wait = Duration::from_secs(1 << (attempt - 1));
        tracing::warn!(url = %webhook.url, event, error = %retry, retry_in = ?wait, "webhook notification failed");
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Revision;

    #[test]
    fn hook_runs_name_the_hook_when_it_runs_and_how_it_ended() {
        let failed = Event::HookFailed {
            revision: Revision("b".repeat(40)),
            when: "pre-rollout".into(),
            hook: "Job.batch shop/migrate".into(),
            duration_ms: 1500,
            message: "Job failed: BackoffLimitExceeded".into(),
        };
        let n = Notification::for_event("prod", &failed, Utc::now()).expect("notified");
        assert_eq!(n.event, "hook_failed");
        assert_eq!(n.hook.as_deref(), Some("Job.batch shop/migrate"));
        assert_eq!(n.when.as_deref(), Some("pre-rollout"));
        assert_eq!(n.duration_ms, Some(1500));
        assert_eq!(
            n.text,
            "gitopsd prod: bbbbbbbbbbbb pre-rollout hook Job.batch shop/migrate failed: Job failed: BackoffLimitExceeded"
        );
        let started = Event::HookStarted {
            revision: Revision("b".repeat(40)),
            when: "post-promotion".into(),
            hook: "command smoke".into(),
            run: None,
        };
        let n = Notification::for_event("prod", &started, Utc::now()).expect("notified");
        assert_eq!(n.event, "hook_started");
        assert_eq!(n.duration_ms, None);
        let json = serde_json::to_value(&n).expect("serializes");
        assert_eq!(json["hook"], "command smoke");
        assert!(json.get("reason").is_none());
    }

    #[test]
    fn failures_and_reverts_carry_their_reason_and_target() {
        let failed = Event::RolloutFailed {
            revision: Revision("b".repeat(40)),
            reason: "check web failed".into(),
            cause: None,
        };
        let note = Notification::for_event("staging", &failed, Utc::now()).expect("notified");
        assert_eq!(note.event, "failed");
        assert_eq!(note.reason.as_deref(), Some("check web failed"));
        assert_eq!(
            note.text,
            "gitopsd staging: bbbbbbbbbbbb failed: check web failed"
        );
        let healthy = Event::Healthy {
            revision: Revision("b".repeat(40)),
        };
        assert!(Notification::for_event("staging", &healthy, Utc::now()).is_none());
    }

    #[test]
    fn a_fast_failure_names_its_cause_and_a_block_is_not_a_failure() {
        let crashed = Event::RolloutFailed {
            revision: Revision("b".repeat(40)),
            reason: "step 1 (25%): pod web-canary-x: container web is waiting in CrashLoopBackOff"
                .into(),
            cause: Some("CrashLoopBackOff".into()),
        };
        let note = Notification::for_event("staging", &crashed, Utc::now()).expect("notified");
        assert_eq!(note.cause.as_deref(), Some("CrashLoopBackOff"));
        let blocked = Event::Blocked {
            revision: Revision("b".repeat(40)),
            reason: "connection refused".into(),
        };
        let note = Notification::for_event("staging", &blocked, Utc::now()).expect("notified");
        assert_eq!(note.event, "blocked");
        assert_eq!(note.reason.as_deref(), Some("connection refused"));
        assert!(note.text.contains("not failed"), "{}", note.text);
        let json = serde_json::to_value(&note).expect("JSON");
        assert!(json.get("cause").is_none(), "absent, not null: {json}");
    }
}
