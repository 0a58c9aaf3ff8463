//! Push receivers: the listener forges send push events to (`[receivers]`), on an address of
//! its own that serves nothing else. A verified push for the configured repository and branch
//! wakes the fetch loop; everything about the request is treated as hostile until its
//! signature checks out: the body is capped before it is read, reads are timed, failures are
//! answered without detail and rate-limited per address.

pub mod forge;
pub mod url;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures_util::StreamExt as _;
use tokio::sync::mpsc;
use tower::ServiceExt as _;

use crate::config::{Config, HookKind};
use crate::server::AuthLimiter;
use forge::Verdict;

/// Connections served at once; more are closed as they arrive.
const MAX_CONNECTIONS: usize = 256;

/// Wakes the fetch loop for a push. The queue holds one wake: with a fetch in flight, a burst
/// of pushes leaves at most one more fetch to run after it.
#[derive(Debug, Clone)]
pub struct PushTrigger(mpsc::Sender<()>);

impl PushTrigger {
    /// A trigger and the queue the fetch loop reads.
    pub fn channel() -> (Self, mpsc::Receiver<()>) {
        let (sender, receiver) = mpsc::channel(1);
        (Self(sender), receiver)
    }

    /// Asks for a fetch; a fetch already queued covers this push too.
    pub fn push(&self) {
        let _ = self.0.try_send(());
    }
}

/// One configured hook, with its secret read (`None`: unreadable, so the hook is off).
#[derive(Clone)]
pub struct Hook {
    pub name: String,
    pub kind: HookKind,
    secret: Option<Vec<u8>>,
}

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hook")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// What the receivers check requests against; replaced whole on a config reload.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub hooks: Vec<Hook>,
    pub repo_url: String,
    pub branch: String,
    pub max_body_bytes: usize,
    /// Longest a client may take to send its body.
    pub read_timeout: Duration,
}

/// Shared by every request.
#[derive(Debug, Clone)]
pub struct ReceiverState {
    pub settings: Arc<RwLock<Settings>>,
    pub limiter: Arc<AuthLimiter>,
    pub pushes: PushTrigger,
}

/// The secret in `path`, refused when every user may read it or it is empty.
async fn read_secret(name: &str, path: &std::path::Path) -> Option<Vec<u8>> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(metadata) = tokio::fs::metadata(path).await
        && metadata.permissions().mode() & 0o004 != 0
    {
        tracing::error!(hook = %name, file = %path.display(), "the receiver secret file is readable by every user; the hook is off until it is not (chmod 600)");
        return None;
    }
    match tokio::fs::read_to_string(path).await {
        Ok(secret) if !secret.trim().is_empty() => Some(secret.trim().as_bytes().to_vec()),
        Ok(_) => {
            tracing::error!(hook = %name, file = %path.display(), "the receiver secret file is empty; the hook is off");
            None
        }
        Err(error) => {
            tracing::error!(hook = %name, file = %path.display(), %error, "cannot read the receiver secret file; the hook is off");
            None
        }
    }
}

/// The receivers' settings for `config`, secrets read; `None` without `[receivers]`.
pub async fn settings(config: &Config) -> Option<Settings> {
    let receivers = config.receivers.as_ref()?;
    let mut hooks = Vec::new();
    for hook in &receivers.hooks {
        hooks.push(Hook {
            name: hook.name.clone(),
            kind: hook.kind,
            secret: read_secret(&hook.name, &hook.secret_file).await,
        });
    }
    Some(Settings {
        hooks,
        repo_url: config.repo.url.clone(),
        branch: config.repo.branch.clone(),
        max_body_bytes: receivers.max_body_bytes,
        read_timeout: receivers.read_timeout,
    })
}

/// `<state dir>/receivers.addr`: the address the receivers listen on (port 0: the one the
/// system picked), written once bound.
pub fn address_file(state_dir: &std::path::Path) -> std::path::PathBuf {
    state_dir.join("receivers.addr")
}

/// Binds the receivers' listener and logs `receivers listening on ADDRESS`.
pub async fn bind(listen: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!("receivers listening on {}", listener.local_addr()?);
    Ok(listener)
}

pub fn router(state: ReceiverState) -> Router {
    Router::new()
        .route("/hooks/{name}", post(receive))
        .fallback(|| async { StatusCode::NOT_FOUND })
        .with_state(state)
}

/// Serves the receivers on `listener` until the process ends: HTTP/1, a connection closed
/// when its request line and headers take longer than `header_timeout`, at most
/// [`MAX_CONNECTIONS`] connections at once.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ReceiverState,
    header_timeout: Duration,
) {
    let router = router(state);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors, most likely: give connections in flight a moment.
                tracing::warn!(%error, "receivers cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "receivers busy: connection closed");
            continue;
        };
        let router = router.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(
                move |mut request: axum::http::Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    router.clone().oneshot(request.map(Body::new))
                },
            );
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            if let Err(error) = connection.await {
                tracing::debug!(%peer, %error, "receiver connection ended");
            }
            drop(slot);
        });
    }
}

/// Why a body was not read.
enum Unread {
    TooLarge,
    TimedOut,
    Broken,
}

/// The body, up to `cap` bytes: refused as soon as the declared length or the bytes received
/// pass it, so an oversized body is never held in memory.
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    cap: usize,
    limit: Duration,
) -> Result<Vec<u8>, Unread> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > cap as u64) {
        return Err(Unread::TooLarge);
    }
    let read = async {
        let mut stream = body.into_data_stream();
        let mut bytes = Vec::with_capacity(declared.map_or(0, |n| n as usize));
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|_| Unread::Broken)?;
            if bytes.len() + chunk.len() > cap {
                return Err(Unread::TooLarge);
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    };
    tokio::time::timeout(limit, read)
        .await
        .unwrap_or(Err(Unread::TimedOut))
}

/// The answer, counted under the hook and result.
fn answer(hook: &str, result: &str, status: StatusCode, text: &str) -> Response {
    crate::metrics::forge().receiver_request(hook, result);
    (status, format!("{text}\n")).into_response()
}

/// What a request to one hook is checked against, copied out of the settings.
struct Target {
    hook: Hook,
    secret: Vec<u8>,
    repo_url: String,
    branch: String,
    cap: usize,
    read_timeout: Duration,
}

/// The hook called `name` with its secret; `None` (404) for no such hook, or one whose secret
/// could not be read.
fn target(state: &ReceiverState, name: &str) -> Option<Target> {
    let settings = state
        .settings
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let hook = settings.hooks.iter().find(|hook| hook.name == name)?;
    Some(Target {
        hook: hook.clone(),
        secret: hook.secret.clone()?,
        repo_url: settings.repo_url.clone(),
        branch: settings.branch.clone(),
        cap: settings.max_body_bytes,
        read_timeout: settings.read_timeout,
    })
}

/// The answer to a body that was not read.
fn unread(name: &str, why: Unread) -> Response {
    match why {
        Unread::TooLarge => answer(
            name,
            "too_large",
            StatusCode::PAYLOAD_TOO_LARGE,
            "body too large",
        ),
        Unread::TimedOut => answer(
            name,
            "timeout",
            StatusCode::REQUEST_TIMEOUT,
            "body too slow",
        ),
        Unread::Broken => answer(
            name,
            "malformed",
            StatusCode::BAD_REQUEST,
            "body unreadable",
        ),
    }
}

async fn receive(
    State(state): State<ReceiverState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(target) = target(&state, &name) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let name = target.hook.name.as_str();
    if let Some(wait) = state.limiter.locked_out(peer.ip(), Instant::now()) {
        // Logged at debug only: a flood of bad signatures must not flood the log too.
        tracing::debug!(%peer, hook = %name, "receiver request refused: too many failed signatures");
        crate::metrics::forge().receiver_request(name, "rate_limited");
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, wait.as_secs().max(1).to_string())],
        )
            .into_response();
    }
    let body = match read_body(&headers, body, target.cap, target.read_timeout).await {
        Ok(body) => body,
        Err(why) => return unread(name, why),
    };
    if !forge::authentic(target.hook.kind, &target.secret, &headers, &body) {
        state.limiter.failed(peer.ip(), Instant::now());
        tracing::warn!(%peer, hook = %name, "receiver request refused: bad or missing signature");
        crate::metrics::forge().receiver_request(name, "unauthorized");
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let hint = match forge::interpret(target.hook.kind, &headers, &body) {
        Ok(hint) => hint,
        Err(malformed) => {
            tracing::warn!(%peer, hook = %name, error = %malformed, "receiver request refused");
            return answer(name, "malformed", StatusCode::BAD_REQUEST, &malformed.0);
        }
    };
    match forge::verdict(hint, &target.repo_url, &target.branch) {
        Verdict::Ping => answer(name, "ping", StatusCode::OK, "pong"),
        Verdict::Ignore(reason) => {
            tracing::debug!(hook = %name, %reason, "push event ignored");
            answer(
                name,
                "ignored",
                StatusCode::ACCEPTED,
                &format!("ignored: {reason}"),
            )
        }
        Verdict::Fetch => {
            state.pushes.push();
            tracing::info!(hook = %name, "push event: fetching");
            answer(name, "fetch", StatusCode::ACCEPTED, "fetch queued")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_burst_of_pushes_queues_one_fetch() {
        let (trigger, mut queue) = PushTrigger::channel();
        for _ in 0..100 {
            trigger.push();
        }
        assert_eq!(queue.recv().await, Some(()));
        assert!(queue.try_recv().is_err(), "one wake covers the whole burst");
        trigger.push();
        assert_eq!(queue.recv().await, Some(()), "a later push queues again");
    }
}
