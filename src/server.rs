//! The HTTP API: `/healthz`, `/readyz`, `/metrics`, `/status`, and the control endpoints
//! (approve, pause, resume, retry, rollback) behind a bearer token.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::backend::kubernetes::lease::{EnvironmentLease, ForwardedRequest, Holding};
use crate::backend::kubernetes::{CacheTypeStatus, CacheView};
use crate::history::History;
use crate::journal::{Event, SharedJournal};
use crate::metrics::Metrics;
use crate::model::Revision;
use crate::source::{GitSource, OffloadError};

/// What the API needs to reach an environment's task.
#[derive(Debug, Clone)]
pub struct EnvironmentHandle {
    pub journal: SharedJournal,
    /// Wakes the task for a pass now.
    pub wake: Arc<Notify>,
    /// The watch cache its target reads (a Kubernetes target).
    pub cache: Option<CacheView>,
    /// The environment's config (target, rollout, checks), for the status pages.
    pub config: Arc<crate::config::EnvironmentConfig>,
    /// What holds the branch tip back after the last pass (a gate, a pause): the tip and why.
    pub waiting: Arc<tokio::sync::watch::Sender<Option<(Revision, String)>>>,
    /// `[ha]`: the environment's Lease (who acts for it, and where requests are forwarded).
    pub lease: Option<Arc<EnvironmentLease>>,
}

impl EnvironmentHandle {
    /// The history decisions follow: this host's journal, or under `[ha]` while another
    /// daemon holds the environment, the one the cluster keeps on its Lease.
    pub fn history(&self) -> History {
        self.lease
            .as_ref()
            .and_then(|lease| lease.history_elsewhere())
            .unwrap_or_else(|| self.journal.with_history(History::clone))
    }

    /// Whether another daemon acts for the environment (`[ha]`): requests go to it.
    pub fn held_elsewhere(&self) -> bool {
        self.lease.as_ref().is_some_and(|lease| !lease.is_held())
    }
}

/// The running environments, by name; each task registers itself when it starts.
#[derive(Debug, Clone, Default)]
pub struct Controls(Arc<Mutex<BTreeMap<String, EnvironmentHandle>>>);

impl Controls {
    pub fn register(&self, name: &str, handle: EnvironmentHandle) {
        self.lock().insert(name.to_string(), handle);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, EnvironmentHandle>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn get(&self, name: &str) -> Option<EnvironmentHandle> {
        self.lock().get(name).cloned()
    }

    pub fn all(&self) -> Vec<(String, EnvironmentHandle)> {
        self.lock()
            .iter()
            .map(|(name, handle)| (name.clone(), handle.clone()))
            .collect()
    }
}

/// Settings that follow config reloads.
#[derive(Debug, Clone)]
pub struct Reloadable {
    pub token: Option<String>,
    pub source: GitSource,
}

/// Largest request body a control endpoint reads.
const MAX_BODY_BYTES: usize = 16 * 1024;
/// Failed authentications one address may make within [`FAILURE_WINDOW`].
const MAX_FAILURES: u32 = 5;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Addresses with failures [`AuthLimiter`] keeps at most.
const MAX_TRACKED: usize = 65_536;

/// Failed authentications per client address, so a token cannot be guessed at speed.
#[derive(Debug, Default)]
pub struct AuthLimiter(Mutex<HashMap<IpAddr, (u32, Instant)>>);

impl AuthLimiter {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, (u32, Instant)>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// How long `peer` must wait before it may try again, if it used up its failures.
    pub fn locked_out(&self, peer: IpAddr, now: Instant) -> Option<Duration> {
        let mut failures = self.lock();
        let (count, since) = *failures.get(&peer)?;
        let elapsed = now.saturating_duration_since(since);
        if elapsed >= FAILURE_WINDOW {
            failures.remove(&peer);
            return None;
        }
        (count >= MAX_FAILURES).then(|| FAILURE_WINDOW - elapsed)
    }

    /// Counts a failed authentication of `peer`. Addresses whose window is over are dropped
    /// once [`MAX_TRACKED`] are held; past that many within one window (a spread of addresses
    /// the size of an IPv6 prefix), new ones are not counted, so memory stays bounded.
    pub fn failed(&self, peer: IpAddr, now: Instant) {
        let mut failures = self.lock();
        if failures.len() >= MAX_TRACKED && !failures.contains_key(&peer) {
            failures.retain(|_, (_, since)| now.saturating_duration_since(*since) < FAILURE_WINDOW);
            if failures.len() >= MAX_TRACKED {
                return;
            }
        }
        let entry = failures.entry(peer).or_insert((0, now));
        if now.saturating_duration_since(entry.1) >= FAILURE_WINDOW {
            *entry = (0, now);
        }
        entry.0 += 1;
    }
}

/// Shared by every request.
#[derive(Debug, Clone)]
pub struct ApiState {
    pub controls: Controls,
    pub ready: Arc<AtomicBool>,
    pub metrics: Arc<Metrics>,
    pub reloadable: Arc<RwLock<Reloadable>>,
    pub limiter: Arc<AuthLimiter>,
}

/// The warning for an API that listens beyond this host, if it does.
pub fn exposure_warning(listen: SocketAddr) -> Option<String> {
    (!listen.ip().is_loopback()).then(|| {
        format!(
            "the HTTP API listens on {listen}, beyond this host: /metrics and /status are readable by anyone who can reach it and the control endpoints are one token away; listen on 127.0.0.1 behind a proxy with TLS unless that is intended"
        )
    })
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/api/v1/environments/{environment}/{action}", post(control))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// `<state dir>/api.addr`: the address the running daemon's API listens on (one line), written
/// whole once it is bound and removed on a clean stop; how commands find an API on port 0.
pub fn address_file(state_dir: &std::path::Path) -> std::path::PathBuf {
    state_dir.join("api.addr")
}

/// Binds the API's listener on `listen` (port 0: a free port the system picks) and logs the
/// address it got as `api listening on ADDRESS`.
pub async fn bind(listen: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let bound = listener.local_addr()?;
    tracing::info!("api listening on {bound}");
    if let Some(warning) = exposure_warning(bound) {
        tracing::warn!("{warning}");
    }
    Ok(listener)
}

/// Serves the API on `listener` (from [`bind`]) until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, state: ApiState) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}

async fn readyz(State(state): State<ApiState>) -> Response {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response()
    }
}

async fn metrics(State(state): State<ApiState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

#[derive(Debug, Serialize)]
struct EnvironmentStatus {
    environment: String,
    current: Option<String>,
    last_healthy: Option<String>,
    /// The rollout in flight: revision, step (1-based) and weight.
    in_flight: Option<InFlightStatus>,
    reverting: Option<String>,
    failing_checks: Vec<CheckStatus>,
    last_failed: Option<FailureStatus>,
    paused: bool,
    pinned: Option<String>,
    /// What the cluster refuses now (the revision is not blamed and is retried).
    blocked: Option<String>,
    /// The last hook run: revision, when, hook, state and, once ended, duration and message.
    #[serde(skip_serializing_if = "Option::is_none")]
    last_hook: Option<crate::history::HookLine>,
    /// The watch cache's stores the environment reads, per type (Kubernetes targets).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    cache: Vec<CacheTypeStatus>,
    /// Revisions that failed and are held (not applied again unless retried).
    held: Vec<String>,
    /// `[ha]`: who holds the environment's Lease, until when, and whether it is this daemon.
    #[serde(skip_serializing_if = "Option::is_none")]
    lease: Option<Holding>,
    /// `[ha]`, while another daemon holds the environment: the whole history the cluster
    /// keeps (this host's journal is behind), for `gitopsd status`.
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster_history: Option<History>,
}

#[derive(Debug, Serialize)]
struct InFlightStatus {
    revision: String,
    step: Option<usize>,
    weight: Option<u8>,
    /// A blue/green rollout's phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    phase: Option<String>,
    /// Blue/green with `auto_promote = false`: the switch was approved.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    switch_approved: bool,
}

#[derive(Debug, Serialize)]
struct CheckStatus {
    check: String,
    detail: String,
}

#[derive(Debug, Serialize)]
struct FailureStatus {
    revision: String,
    reason: String,
}

fn environment_status(name: &str, handle: &EnvironmentHandle) -> EnvironmentStatus {
    let history = handle.history();
    let text = |revision: &Option<Revision>| revision.as_ref().map(|r| r.0.clone());
    EnvironmentStatus {
        environment: name.to_string(),
        current: text(&history.current),
        last_healthy: text(&history.last_healthy),
        in_flight: history.in_flight.as_ref().map(|flight| InFlightStatus {
            revision: flight.revision.0.clone(),
            step: flight.step.map(|(index, _)| index + 1),
            weight: flight.step.map(|(_, weight)| weight),
            phase: flight.phase.clone(),
            switch_approved: flight.switch_approved,
        }),
        reverting: history
            .reverting
            .as_ref()
            .map(|revert| revert.revision.0.clone()),
        failing_checks: history
            .in_flight
            .as_ref()
            .map(|flight| {
                flight
                    .failing_checks
                    .iter()
                    .map(|(check, detail)| CheckStatus {
                        check: check.clone(),
                        detail: detail.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        last_failed: history.last_failure.as_ref().map(|failure| FailureStatus {
            revision: failure.revision.0.clone(),
            reason: failure.reason.clone(),
        }),
        paused: history.paused,
        pinned: history.pin.as_ref().map(|(revision, _)| revision.0.clone()),
        blocked: history.blocked.as_ref().map(|(_, reason)| reason.clone()),
        last_hook: history.last_hook.clone(),
        cache: handle
            .cache
            .as_ref()
            .map(CacheView::types)
            .unwrap_or_default(),
        held: history.failed.iter().map(|r| r.0.clone()).collect(),
        lease: handle.lease.as_ref().map(|lease| lease.holding()),
        cluster_history: handle.held_elsewhere().then_some(history),
    }
}

async fn status(State(state): State<ApiState>) -> Json<Vec<EnvironmentStatus>> {
    Json(
        state
            .controls
            .all()
            .iter()
            .map(|(name, handle)| environment_status(name, handle))
            .collect(),
    )
}

/// Body of approve (`revision`) and rollback (`to`).
#[derive(Debug, Default, Deserialize)]
pub struct ControlBody {
    pub revision: Option<String>,
    pub to: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ControlReply {
    pub environment: String,
    pub action: String,
    pub revision: String,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(a.ct_eq(b))
}

/// A request refused: its status, why, and a header that goes with it (`Retry-After`,
/// `WWW-Authenticate`).
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub message: String,
    header: Option<(header::HeaderName, String)>,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response = error(self.status, self.message);
        if let Some((name, value)) = self.header
            && let Ok(value) = value.parse()
        {
            response.headers_mut().insert(name, value);
        }
        response
    }
}

/// A refusal, boxed: handlers return it through `Result`s.
pub type Refused = Box<Refusal>;

fn refuse(status: StatusCode, message: impl Into<String>) -> Refused {
    Box::new(Refusal {
        status,
        message: message.into(),
        header: None,
    })
}

async fn control(
    State(state): State<ApiState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((environment, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let source = match authenticate(&state, peer, &headers, &environment, &action) {
        Ok(source) => source,
        Err(refused) => return refused.into_response(),
    };
    let Some(handle) = state.controls.get(&environment) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no environment named {environment:?}"),
        );
    };
    let event = match control_body(&body) {
        Ok(body) => control_event(&action, body, &handle, &source).await,
        Err(refused) => Err(refused),
    };
    let event = match event {
        Ok(event) => event,
        Err(refused) => return refused.into_response(),
    };
    let by = format!("api token from {}", peer.ip());
    let (revision, forwarded) = match act(&handle, event, by).await {
        Ok(done) => done,
        Err(refused) => return refused.into_response(),
    };
    // Forwarded: accepted here, journaled by the holder.
    let status = if forwarded {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    (
        status,
        Json(ControlReply {
            environment,
            action,
            revision,
        }),
    )
        .into_response()
}

/// An operator's action: journaled here, or under `[ha]` while another daemon holds the
/// environment, forwarded to it through the Lease (it journals and acts on it). Answers the
/// revision it names and whether it was forwarded.
pub async fn act(
    handle: &EnvironmentHandle,
    event: Event,
    by: String,
) -> Result<(String, bool), Refused> {
    let Some(lease) = handle.lease.as_ref().filter(|_| handle.held_elsewhere()) else {
        return journal_action(handle, event, by).map(|revision| (revision, false));
    };
    let revision = event.revision().0.clone();
    let action = event.name();
    let id = format!(
        "{}-{}",
        lease.identity(),
        Utc::now().timestamp_nanos_opt().unwrap_or_default()
    );
    let request = ForwardedRequest {
        id,
        by: format!("{by} via {}", lease.identity()),
        event,
    };
    lease.forward(request).await.map_err(|forward_error| {
        refuse(StatusCode::SERVICE_UNAVAILABLE, forward_error.to_string())
    })?;
    tracing::info!(env = %handle.config.name, %action, %revision, "control request forwarded to the Lease's holder");
    Ok((revision, true))
}

/// Journals an operator's action with who asked for it and wakes the environment; answers the
/// revision it names.
pub fn journal_action(
    handle: &EnvironmentHandle,
    event: Event,
    by: String,
) -> Result<String, Refused> {
    let (action, revision) = (event.name(), event.revision().0.clone());
    handle
        .journal
        .append_by(event, Utc::now(), Some(by.clone()))
        .map_err(|journal_error| {
            refuse(StatusCode::INTERNAL_SERVER_ERROR, journal_error.to_string())
        })?;
    tracing::info!(env = %handle.config.name, %action, %revision, %by, "control request");
    handle.wake.notify_one();
    Ok(revision)
}

/// Lets a control request through only with the API token, from an address that has not
/// failed too often; answers with the source to resolve revisions in.
fn authenticate(
    state: &ApiState,
    peer: SocketAddr,
    headers: &HeaderMap,
    environment: &str,
    action: &str,
) -> Result<GitSource, Refused> {
    let (token, source) = {
        let reloadable = state
            .reloadable
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        (reloadable.token.clone(), reloadable.source.clone())
    };
    let Some(token) = token else {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "control endpoints are disabled: set api.token_file",
        ));
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    if let Some(wait) = state.limiter.locked_out(peer.ip(), Instant::now()) {
        tracing::warn!(%peer, "control request refused: too many failed authentications");
        return Err(Box::new(Refusal {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: "too many failed authentications; try again later".into(),
            header: Some((header::RETRY_AFTER, wait.as_secs().max(1).to_string())),
        }));
    }
    if !presented.is_some_and(|presented| same(presented.as_bytes(), token.as_bytes())) {
        state.limiter.failed(peer.ip(), Instant::now());
        tracing::warn!(%peer, %environment, %action, "control request refused: bad or missing token");
        return Err(Box::new(Refusal {
            status: StatusCode::UNAUTHORIZED,
            message: "a valid bearer token is required".into(),
            header: Some((header::WWW_AUTHENTICATE, "Bearer".into())),
        }));
    }
    Ok(source)
}

/// The request's JSON body; an empty body is an empty request.
fn control_body(body: &[u8]) -> Result<ControlBody, Refused> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(ControlBody::default());
    }
    serde_json::from_slice(body).map_err(|parse_error| {
        refuse(
            StatusCode::BAD_REQUEST,
            format!("invalid JSON body: {parse_error}"),
        )
    })
}

/// What an action journals: pause and resume at the branch tip, a retry of the held tip, an
/// approval or a rollback of a revision the request names.
pub async fn control_event(
    action: &str,
    body: ControlBody,
    handle: &EnvironmentHandle,
    source: &GitSource,
) -> Result<Event, Refused> {
    let tip = match source.branch_tip_off_thread().await {
        Ok(Some(tip)) => tip,
        _ => {
            return Err(refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "no revision fetched yet",
            ));
        }
    };
    match action {
        "pause" => Ok(Event::Paused { revision: tip }),
        "resume" => Ok(Event::Resumed { revision: tip }),
        "retry" => {
            let held = handle.history().failed.contains(&tip);
            if !held {
                return Err(refuse(
                    StatusCode::CONFLICT,
                    format!(
                        "the branch tip {} is not held as failed: nothing to retry",
                        tip.short()
                    ),
                ));
            }
            Ok(Event::Retried { revision: tip })
        }
        "approve" => {
            let Some(rev) = body.revision else {
                return Err(refuse(
                    StatusCode::BAD_REQUEST,
                    "approve needs {\"revision\": REV}",
                ));
            };
            let revision = resolve(source, rev).await?;
            Ok(Event::Approved { revision })
        }
        "rollback" => {
            let Some(rev) = body.to else {
                return Err(refuse(
                    StatusCode::BAD_REQUEST,
                    "rollback needs {\"to\": REV}",
                ));
            };
            let revision = resolve(source, rev).await?;
            verified_for_rollback(source, &revision).await?;
            Ok(Event::Pinned { revision, tip })
        }
        other => Err(refuse(
            StatusCode::NOT_FOUND,
            format!("unknown action {other:?}"),
        )),
    }
}

/// The answer to a git read that failed: the request's fault when git refused it, the
/// server's when the work never finished.
fn git_refusal(error: OffloadError) -> Refused {
    match error {
        OffloadError::Source(source_error) => {
            refuse(StatusCode::BAD_REQUEST, source_error.to_string())
        }
        OffloadError::Stopped(stopped) => {
            refuse(StatusCode::INTERNAL_SERVER_ERROR, stopped.to_string())
        }
    }
}

/// The commit a request names (a sha, a tag, a branch).
async fn resolve(source: &GitSource, rev: String) -> Result<Revision, Refused> {
    source.resolve_off_thread(&rev).await.map_err(git_refusal)
}

/// A rollback applies a revision like any other: it must be signed as required.
async fn verified_for_rollback(source: &GitSource, revision: &Revision) -> Result<(), Refused> {
    match source.verify_off_thread(revision, None).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(unverified)) => Err(refuse(
            StatusCode::CONFLICT,
            format!("refused: {unverified} ([repo.verify])"),
        )),
        Err(stopped) => Err(refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            stopped.to_string(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_authentications_lock_an_address_out_for_a_while() {
        let limiter = AuthLimiter::default();
        let peer: IpAddr = [127, 0, 0, 1].into();
        let other: IpAddr = [127, 0, 0, 2].into();
        let start = Instant::now();
        for _ in 0..MAX_FAILURES {
            assert_eq!(limiter.locked_out(peer, start), None);
            limiter.failed(peer, start);
        }
        assert!(limiter.locked_out(peer, start).is_some());
        assert_eq!(limiter.locked_out(other, start), None, "per address");
        assert_eq!(
            limiter.locked_out(peer, start + FAILURE_WINDOW),
            None,
            "the window passes"
        );
    }

    #[test]
    fn the_failures_kept_are_bounded() {
        let limiter = AuthLimiter::default();
        let start = Instant::now();
        for n in 0..MAX_TRACKED as u32 {
            limiter.failed(IpAddr::from(n.to_be_bytes()), start);
        }
        let late: IpAddr = [255, 255, 255, 255].into();
        limiter.failed(late, start);
        assert_eq!(limiter.lock().len(), MAX_TRACKED, "full within one window");
        limiter.failed(late, start + FAILURE_WINDOW);
        assert_eq!(limiter.lock().len(), 1, "expired addresses make room");
    }

    #[test]
    fn an_api_beyond_loopback_is_warned_about() {
        assert!(exposure_warning("0.0.0.0:9107".parse().expect("address")).is_some());
        assert!(exposure_warning("[::]:9107".parse().expect("address")).is_some());
        assert_eq!(
            exposure_warning("127.0.0.1:9107".parse().expect("address")),
            None
        );
        assert_eq!(
            exposure_warning("[::1]:9107".parse().expect("address")),
            None
        );
    }
}
