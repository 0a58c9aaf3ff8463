//! Commit statuses on the forge (`[[notify]]` of type `github-status`, `gitlab-status`,
//! `gitea-status`): each environment's state for a revision, as context `gitopsd/<env>`,
//! posted from a background task and retried with backoff. Tokens never reach a log line.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::journal::Event;
use crate::model::Revision;

/// Statuses queued beyond this are dropped (and logged) rather than slowing a rollout.
const QUEUE: usize = 1024;
/// Attempts per status and forge.
const ATTEMPTS: u32 = 5;
/// GitHub refuses longer descriptions; the others take them, but a status is one line.
const MAX_DESCRIPTION: usize = 140;
/// Revisions whose last posted state is remembered, per forge.
const REMEMBERED: usize = 4096;

/// Which forge's commit status API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forge {
    Github,
    Gitlab,
    Gitea,
}

impl Forge {
    /// The `[[notify]] type` naming it.
    pub fn parse(kind: &str) -> Option<Self> {
        match kind {
            "github-status" => Some(Self::Github),
            "gitlab-status" => Some(Self::Gitlab),
            "gitea-status" => Some(Self::Gitea),
            _ => None,
        }
    }
}

/// One `[[notify]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct CommitStatusConfig {
    pub forge: Forge,
    /// `https://api.github.com`, `https://gitlab.example.com/api/v4`,
    /// `https://gitea.example.com/api/v1`.
    pub api_url: String,
    pub token_file: PathBuf,
    /// `owner/name` (GitLab: the project's path with its groups, or its numeric id).
    pub repository: String,
    pub timeout: Duration,
}

/// A commit status state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Pending,
    Success,
    Failure,
}

/// What a journal event means for the revision's status; the task words it.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    RollingOut,
    Healthy,
    Failed(String),
    Reverted { to: Revision },
    Rejected(String),
}

impl Change {
    /// The status change `event` makes, if any, and the revision it concerns.
    pub fn for_event(event: &Event) -> Option<(Revision, Self)> {
        let change = match event {
            Event::RolloutStarted { .. } => Self::RollingOut,
            Event::Healthy { .. } => Self::Healthy,
            Event::RolloutFailed { reason, .. } => Self::Failed(reason.clone()),
            Event::Reverted { to, .. } => Self::Reverted { to: to.clone() },
            Event::Rejected { problems, .. } => Self::Rejected(problems.join("; ")),
            Event::VerifyFailed { reason, .. } => {
                Self::Rejected(format!("commit did not verify: {reason}"))
            }
            _ => return None,
        };
        Some((event.revision().clone(), change))
    }
}

/// One status to post.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusUpdate {
    pub environment: String,
    pub revision: Revision,
    pub state: State,
    pub description: String,
}

/// Turns changes into statuses, remembering each failure's reason so that the revert that
/// follows still names it. Pure: no IO.
#[derive(Debug, Default)]
pub struct Wording {
    reasons: HashMap<(String, String), String>,
}

impl Wording {
    pub fn update(
        &mut self,
        environment: &str,
        revision: &Revision,
        change: Change,
    ) -> StatusUpdate {
        let key = (environment.to_string(), revision.0.clone());
        let (state, description) = match change {
            Change::RollingOut => (State::Pending, "rolling out".to_string()),
            Change::Healthy => (State::Success, "healthy".to_string()),
            Change::Failed(reason) => {
                if self.reasons.len() >= REMEMBERED {
                    self.reasons.clear();
                }
                self.reasons.insert(key, reason.clone());
                (State::Failure, format!("failed: {reason}"))
            }
            Change::Reverted { to } => match self.reasons.remove(&key) {
                Some(reason) => (
                    State::Failure,
                    format!("reverted to {}: {reason}", to.short()),
                ),
                None => (State::Failure, format!("reverted to {}", to.short())),
            },
            Change::Rejected(problems) => (State::Failure, format!("rejected: {problems}")),
        };
        StatusUpdate {
            environment: environment.to_string(),
            revision: revision.clone(),
            state,
            description: shorten(&description),
        }
    }
}

/// At most [`MAX_DESCRIPTION`] characters, on one line.
fn shorten(text: &str) -> String {
    let line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if line.chars().count() <= MAX_DESCRIPTION {
        return line;
    }
    let mut short: String = line.chars().take(MAX_DESCRIPTION - 1).collect();
    short.push('…');
    short
}

/// An HTTP request to a forge's status API, built without IO so each forge's shape is tested.
#[derive(Clone, PartialEq)]
pub struct StatusRequest {
    pub url: String,
    /// Header names and values; the token is among them, so this type is never logged whole.
    pub headers: Vec<(&'static str, String)>,
    pub body: serde_json::Value,
}

impl std::fmt::Debug for StatusRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusRequest")
            .field("url", &self.url)
            .field("body", &self.body)
            .finish_non_exhaustive()
    }
}

/// The POST that sets `update` on `config`'s forge.
pub fn request(config: &CommitStatusConfig, token: &str, update: &StatusUpdate) -> StatusRequest {
    let base = config.api_url.trim_end_matches('/');
    let context = format!("gitopsd/{}", update.environment);
    let sha = &update.revision.0;
    match config.forge {
        Forge::Github => StatusRequest {
            url: format!("{base}/repos/{}/statuses/{sha}", config.repository),
            headers: vec![
                ("Authorization", format!("Bearer {token}")),
                ("Accept", "application/vnd.github+json".into()),
                ("X-GitHub-Api-Version", "2022-11-28".into()),
            ],
            body: json!({
                "state": github_state(update.state),
                "context": context,
                "description": update.description,
            }),
        },
        Forge::Gitea => StatusRequest {
            url: format!("{base}/repos/{}/statuses/{sha}", config.repository),
            headers: vec![("Authorization", format!("token {token}"))],
            body: json!({
                "state": github_state(update.state),
                "context": context,
                "description": update.description,
            }),
        },
        Forge::Gitlab => StatusRequest {
            url: format!(
                "{base}/projects/{}/statuses/{sha}",
                config.repository.replace('/', "%2F")
            ),
            headers: vec![("PRIVATE-TOKEN", token.to_string())],
            body: json!({
                "state": match update.state {
                    State::Pending => "pending",
                    State::Success => "success",
                    State::Failure => "failed",
                },
                "name": context,
                "description": update.description,
            }),
        },
    }
}

fn github_state(state: State) -> &'static str {
    match state {
        State::Pending => "pending",
        State::Success => "success",
        State::Failure => "failure",
    }
}

/// The repository path a forge knows `url` by (`owner/name` from
/// `https://github.com/owner/name.git` or `git@github.com:owner/name.git`).
pub fn repository_of(url: &str) -> Option<String> {
    let rest = match url.split_once("://") {
        Some((_, rest)) => rest.split_once('/')?.1,
        None => url.split_once(':')?.1,
    };
    let path = rest.trim_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path);
    (path.contains('/') && !path.starts_with('/')).then(|| path.to_string())
}

/// Queues status changes for the delivery task; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Statuses {
    queue: Option<mpsc::Sender<(String, Revision, Change)>>,
}

impl Statuses {
    /// A sender for `targets`; without any, it queues nothing and no task runs.
    pub fn start(targets: Vec<CommitStatusConfig>) -> (Self, Option<JoinHandle<()>>) {
        if targets.is_empty() {
            return (Self::default(), None);
        }
        let (queue, receiver) = mpsc::channel(QUEUE);
        let task = tokio::spawn(deliver(targets, receiver));
        (Self { queue: Some(queue) }, Some(task))
    }

    /// Queues the status change `event` makes, if any; never waits.
    pub fn event(&self, environment: &str, event: &Event) {
        let Some(queue) = &self.queue else { return };
        let Some((revision, change)) = Change::for_event(event) else {
            return;
        };
        if queue
            .try_send((environment.to_string(), revision, change))
            .is_err()
        {
            tracing::warn!(env = %environment, "commit status queue full; status dropped");
        }
    }
}

/// A forge to post to, with its token (read once, when the task starts).
struct Target {
    config: CommitStatusConfig,
    token: String,
    /// The state last posted per context and commit: GitLab refuses a transition to the
    /// state a status is already in, so a repeat is not sent there.
    posted: HashMap<(String, String), State>,
}

async fn read_token(config: &CommitStatusConfig) -> Option<String> {
    match tokio::fs::read_to_string(&config.token_file).await {
        Ok(token) if !token.trim().is_empty() => Some(token.trim().to_string()),
        Ok(_) => {
            tracing::error!(file = %config.token_file.display(), "commit status token file is empty; statuses to {} are off", config.api_url);
            None
        }
        Err(error) => {
            tracing::error!(file = %config.token_file.display(), %error, "cannot read the commit status token file; statuses to {} are off", config.api_url);
            None
        }
    }
}

async fn deliver(
    configs: Vec<CommitStatusConfig>,
    mut queue: mpsc::Receiver<(String, Revision, Change)>,
) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = match reqwest::Client::builder()
        .user_agent(concat!("gitopsd/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "cannot build the commit status HTTP client; statuses are off");
            return;
        }
    };
    let mut targets = Vec::new();
    for config in configs {
        if let Some(token) = read_token(&config).await {
            targets.push(Target {
                config,
                token,
                posted: HashMap::new(),
            });
        }
    }
    let mut wording = Wording::default();
    while let Some((environment, revision, change)) = queue.recv().await {
        let update = wording.update(&environment, &revision, change);
        for target in &mut targets {
            let key = (update.environment.clone(), update.revision.0.clone());
            if target.config.forge == Forge::Gitlab
                && target.posted.get(&key) == Some(&update.state)
            {
                continue;
            }
            if send(&client, target, &update).await {
                if target.posted.len() >= REMEMBERED {
                    target.posted.clear();
                }
                target.posted.insert(key, update.state);
            }
        }
    }
}

/// Posts `update`, retrying with backoff (1 s, 2 s, 4 s, …) on errors and 5xx and 429
/// answers; whether it was taken.
async fn send(client: &reqwest::Client, target: &Target, update: &StatusUpdate) -> bool {
    let metrics = crate::metrics::forge();
    let built = request(&target.config, &target.token, update);
    let short = update.revision.short();
    for attempt in 1..=ATTEMPTS {
        let mut post = client
            .post(&built.url)
            .timeout(target.config.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(built.body.to_string());
        for (name, value) in &built.headers {
            post = post.header(*name, value);
        }
        // Errors are logged without their URL's query or any header: the token is in one.
        let retry = match post.send().await {
            Ok(response) if response.status().is_success() => {
                metrics.status_delivery("delivered");
                return true;
            }
            Ok(response)
                if response.status().is_client_error()
                    && response.status() != reqwest::StatusCode::TOO_MANY_REQUESTS =>
            {
                metrics.status_delivery("failed");
                tracing::error!(url = %built.url, status = %response.status(), env = %update.environment, revision = %short, "the forge refused the commit status");
                return false;
            }
            Ok(response) => format!("status {}", response.status()),
            Err(error) => error.without_url().to_string(),
        };
        if attempt == ATTEMPTS {
            metrics.status_delivery("failed");
            tracing::error!(url = %built.url, error = %retry, env = %update.environment, revision = %short, "commit status given up after {ATTEMPTS} attempts");
            return false;
        }
        metrics.status_delivery("retried");
        let wait = Duration::from_secs(1 << (attempt - 1));
        tracing::warn!(url = %built.url, error = %retry, retry_in = ?wait, env = %update.environment, "commit status failed");
        tokio::time::sleep(wait).await;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(forge: Forge, api_url: &str, repository: &str) -> CommitStatusConfig {
        CommitStatusConfig {
            forge,
            api_url: api_url.into(),
            token_file: "/dev/null".into(),
            repository: repository.into(),
            timeout: Duration::from_secs(5),
        }
    }

    fn update(state: State) -> StatusUpdate {
        StatusUpdate {
            environment: "prod".into(),
            revision: Revision("a".repeat(40)),
            state,
            description: "healthy".into(),
        }
    }

    #[test]
    fn each_forge_gets_its_own_path_headers_and_body() {
        let sha = "a".repeat(40);
        let github = request(
            &config(Forge::Github, "https://api.github.com/", "ops/deploy"),
            "t0k",
            &update(State::Failure),
        );
        assert_eq!(
            github.url,
            format!("https://api.github.com/repos/ops/deploy/statuses/{sha}")
        );
        assert!(
            github
                .headers
                .contains(&("Authorization", "Bearer t0k".into()))
        );
        assert_eq!(
            github.body,
            json!({"state": "failure", "context": "gitopsd/prod", "description": "healthy"})
        );
        let gitlab = request(
            &config(
                Forge::Gitlab,
                "https://gl.example/api/v4",
                "group/sub/deploy",
            ),
            "t0k",
            &update(State::Failure),
        );
        assert_eq!(
            gitlab.url,
            format!("https://gl.example/api/v4/projects/group%2Fsub%2Fdeploy/statuses/{sha}")
        );
        assert_eq!(gitlab.headers, vec![("PRIVATE-TOKEN", "t0k".to_string())]);
        assert_eq!(gitlab.body["state"], "failed");
        assert_eq!(gitlab.body["name"], "gitopsd/prod");
        let gitea = request(
            &config(Forge::Gitea, "https://gitea.example/api/v1", "ops/deploy"),
            "t0k",
            &update(State::Pending),
        );
        assert_eq!(
            gitea.headers,
            vec![("Authorization", "token t0k".to_string())]
        );
        assert_eq!(gitea.body["state"], "pending");
        assert!(!format!("{gitea:?}").contains("t0k"), "{gitea:?}");
    }

    #[test]
    fn a_revert_names_the_failure_that_caused_it() {
        let mut wording = Wording::default();
        let bad = Revision("b".repeat(40));
        let good = Revision("c".repeat(40));
        let pending = wording.update("prod", &bad, Change::RollingOut);
        assert_eq!(pending.state, State::Pending);
        let failed = wording.update("prod", &bad, Change::Failed("check web failed".into()));
        assert_eq!(failed.description, "failed: check web failed");
        let reverted = wording.update("prod", &bad, Change::Reverted { to: good.clone() });
        assert_eq!(reverted.state, State::Failure);
        assert_eq!(
            reverted.description,
            format!("reverted to {}: check web failed", good.short())
        );
        let long = wording.update("prod", &bad, Change::Rejected("x\n".repeat(200)));
        assert_eq!(long.description.chars().count(), MAX_DESCRIPTION);
        assert!(!long.description.contains('\n'));
    }

    /// The value of `gitopsd_commit_status_deliveries_total{result}` as exported.
    fn deliveries(result: &str) -> u64 {
        let text = crate::metrics::Metrics::default().render();
        let prefix = format!("gitopsd_commit_status_deliveries_total{{result=\"{result}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&prefix)?.parse().ok())
            .unwrap_or(0)
    }

    /// Answers each connection with the next of `statuses`; returns the request heads.
    async fn forge(statuses: &'static [&'static str]) -> (String, JoinHandle<Vec<String>>) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let server = tokio::spawn(async move {
            let mut heads = Vec::new();
            for status in statuses {
                let (mut stream, _) = listener.accept().await.expect("accept");
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                // The JSON body ends the request: `}` after the blank line.
                while !(request.windows(4).any(|w| w == b"\r\n\r\n") && request.ends_with(b"}")) {
                    let read = stream.read(&mut buffer).await.expect("read");
                    assert!(read > 0, "the request ended early");
                    request.extend_from_slice(&buffer[..read]);
                }
                heads.push(String::from_utf8_lossy(&request).into_owned());
                let answer =
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                stream.write_all(answer.as_bytes()).await.expect("answer");
            }
            heads
        });
        (address, server)
    }

    #[tokio::test]
    async fn a_refused_post_is_retried_and_counted() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (address, server) = forge(&["503 Service Unavailable", "201 Created"]).await;
        let target = Target {
            config: config(
                Forge::Gitea,
                &format!("http://{address}/api/v1"),
                "ops/deploy",
            ),
            token: "t0k".into(),
            posted: HashMap::new(),
        };
        let (retried, delivered) = (deliveries("retried"), deliveries("delivered"));
        let client = reqwest::Client::new();
        assert!(send(&client, &target, &update(State::Success)).await);
        let heads = server.await.expect("the forge saw both attempts");
        assert_eq!(heads.len(), 2);
        for head in &heads {
            assert!(head.starts_with(&format!(
                "POST /api/v1/repos/ops/deploy/statuses/{} HTTP/1.1",
                "a".repeat(40)
            )));
            assert!(
                head.to_ascii_lowercase()
                    .contains("authorization: token t0k")
            );
        }
        assert!(deliveries("retried") > retried);
        assert!(deliveries("delivered") > delivered);
    }

    #[test]
    fn the_repository_comes_from_the_repo_url() {
        assert_eq!(
            repository_of("https://github.com/ops/deploy.git").as_deref(),
            Some("ops/deploy")
        );
        assert_eq!(
            repository_of("git@gitlab.com:group/sub/deploy.git").as_deref(),
            Some("group/sub/deploy")
        );
        assert_eq!(
            repository_of("ssh://git@gitea.example:2222/ops/deploy").as_deref(),
            Some("ops/deploy")
        );
        assert_eq!(repository_of("/srv/deploy"), None);
    }
}
