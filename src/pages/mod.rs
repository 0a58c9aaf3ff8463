//! The status pages on the API listener: `/` (every environment) and `/env/<name>` (one),
//! rendered on the server, live through Server-Sent Events, with the operator's actions as
//! POST forms behind a session and a CSRF token.

mod actions;
pub mod gather;
pub mod html;
pub mod session;
pub mod svg;
pub mod view;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::Utc;
use maud::html;
use serde::Deserialize;

use crate::config::Dashboard;
use crate::server::{self, ApiState};
use crate::source::GitSource;
use actions::{action, login, login_form, logout};
use gather::{Caches, Snapshot};
use session::{LOGIN_COOKIE, SESSION_COOKIE, SESSION_IDLE, Session, Sessions};

/// The pages' `Content-Security-Policy`: nothing but this server's own styles and script.
pub const CSP: &str =
    "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";
/// How often a live page refreshes when nothing was journaled (ages, time left in a bake).
const REFRESH: Duration = Duration::from_secs(5);

/// What the pages share with every request.
#[derive(Debug, Clone)]
pub struct PagesState {
    pub api: ApiState,
    pub sessions: Arc<Sessions>,
    pub caches: Arc<Caches>,
    pub dashboard: Dashboard,
}

impl PagesState {
    pub fn new(api: ApiState, dashboard: Dashboard) -> Self {
        Self {
            api,
            sessions: Arc::default(),
            caches: Arc::default(),
            dashboard,
        }
    }

    fn source(&self) -> GitSource {
        self.api
            .reloadable
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .source
            .clone()
    }

    fn session(&self, headers: &HeaderMap) -> Option<Session> {
        let id = session::cookie(headers, SESSION_COOKIE)?;
        self.sessions.get(id, Instant::now())
    }

    /// The reader's session; a private dashboard sends a reader without one to log in.
    fn reader(&self, headers: &HeaderMap, path: &str) -> Result<Option<Session>, Box<Response>> {
        let session = self.session(headers);
        if session.is_none() && self.dashboard == Dashboard::Private {
            return Err(Box::new(
                Redirect::to(&format!("/login?next={}", encode(path))).into_response(),
            ));
        }
        Ok(session)
    }
}

/// The API and the pages on one router.
pub fn router(pages: PagesState) -> Router {
    let api = server::router(pages.api.clone());
    let routes = Router::new()
        .route("/", get(overview))
        .route("/events", get(overview_events))
        .route("/env/{environment}", get(environment))
        .route("/env/{environment}/events", get(environment_events))
        .route("/env/{environment}/actions/{action}", post(action))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/assets/style.css", get(style))
        .route("/assets/live.js", get(script))
        .layer(axum::middleware::map_response(secure_headers))
        .with_state(pages);
    api.merge(routes)
}

/// Serves the API and the pages on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, pages: PagesState) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(pages).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}

async fn secure_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("assets/style.css"),
    )
        .into_response()
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("assets/live.js"),
    )
        .into_response()
}

/// Percent-encodes a path for a query value.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' => {
                char::from(byte).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// The overview's live part, and what it read.
pub async fn overview_body(pages: &PagesState) -> String {
    let source = pages.source();
    let snapshots = gather::snapshots(&pages.api.controls, &pages.caches, &source).await;
    let tip = source.branch_tip_off_thread().await.ok().flatten();
    let revisions = snapshots.iter().flat_map(|s| {
        [s.history.current.clone(), s.history.last_healthy.clone()]
            .into_iter()
            .flatten()
    });
    let commits = pages
        .caches
        .commits(&source, revisions.collect::<Vec<_>>())
        .await;
    html::overview(&snapshots, tip.as_ref(), &commits, Utc::now()).into_string()
}

async fn overview(State(pages): State<PagesState>, headers: HeaderMap) -> Response {
    let session = match pages.reader(&headers, "/") {
        Ok(session) => session,
        Err(login) => return *login,
    };
    let started = Instant::now();
    let body = maud::PreEscaped(overview_body(&pages).await);
    let page = Html(html::layout(
        "Environments",
        session.as_ref(),
        Some("/events"),
        html! { (body) },
    ));
    timed(page.into_response(), started)
}

/// Adds `Server-Timing: render;dur=<ms>`: how long the server took to gather and render the
/// page (what the page-weight benchmark reads).
fn timed(mut response: Response, started: Instant) -> Response {
    let millis = started.elapsed().as_secs_f64() * 1000.0;
    if let Ok(value) = HeaderValue::from_str(&format!("render;dur={millis:.2}")) {
        response
            .headers_mut()
            .insert(header::HeaderName::from_static("server-timing"), value);
    }
    response
}

#[derive(Debug, Default, Deserialize)]
struct PageQuery {
    page: Option<usize>,
}

/// An environment page's live part; `None` when no environment has that name.
pub async fn environment_body(pages: &PagesState, name: &str, page: usize) -> Option<String> {
    let handle = pages.api.controls.get(name)?;
    let source = pages.source();
    let snapshot = gather::snapshot(name.to_string(), handle, &pages.caches, &source).await;
    let tip = source.branch_tip_off_thread().await.ok().flatten();
    let changes = match compared(&snapshot, tip.as_ref()) {
        Some((from, to)) => Some(
            pages
                .caches
                .changes(&source, &snapshot.handle, from, to)
                .await,
        ),
        None => None,
    };
    let healthy: Vec<_> = gather::healthy_revisions(&snapshot.records, usize::MAX);
    // Commit times come from the shared cache: a live page renders again on every record.
    let commits = pages.caches.commits(&source, healthy).await;
    let stats = crate::stats::DeliveryStats::compute(&snapshot.records, |r| {
        commits
            .get(r)
            .and_then(Option::as_ref)
            .map(|commit| commit.time)
    });
    let now = Utc::now();
    let badge = html::badge_of(&snapshot, tip.as_ref());
    Some(
        html! {
            h1 { (snapshot.name) " " span class={ "badge " (badge.tone()) } { (badge.text()) } }
            @if let Some(detail) = badge.detail() { p.muted { (detail) } }
            p.muted { (html::target_text(&snapshot.handle.config.target, &snapshot.handle.config.namespace)) }
            (html::strip(&snapshot, now))
            (html::checks(&snapshot))
            (html::canaries(&snapshot, changes.as_deref()))
            (html::changes(changes.as_deref()))
            (html::timeline(&snapshot, page))
            (html::dora(&stats, now))
        }
        .into_string(),
    )
}

/// An environment page's live part with the actions its reader may take (they change with
/// the environment: *Approve* goes once the revision is approved).
async fn environment_live(
    pages: &PagesState,
    name: &str,
    page: usize,
    session: Option<&Session>,
) -> Option<String> {
    let body = environment_body(pages, name, page).await?;
    let actions = actions::form(pages, name, session).await;
    Some(html! { (actions) (maud::PreEscaped(body)) }.into_string())
}

/// The two revisions whose diff the page shows: the rollout in flight's, what waits at the
/// tip, or the last rollout's.
fn compared(
    snapshot: &Snapshot,
    tip: Option<&crate::model::Revision>,
) -> Option<(crate::model::Revision, crate::model::Revision)> {
    let history = &snapshot.history;
    if let Some(flight) = &history.in_flight {
        return Some((flight.previous.clone()?, flight.revision.clone()));
    }
    if let (Some(current), Some(tip)) = (&history.current, tip)
        && current != tip
    {
        return Some((current.clone(), tip.clone()));
    }
    snapshot
        .records
        .iter()
        .rev()
        .find_map(|record| match &record.event {
            crate::journal::Event::RolloutStarted {
                revision,
                previous: Some(previous),
                ..
            } => Some((previous.clone(), revision.clone())),
            _ => None,
        })
}

async fn environment(
    State(pages): State<PagesState>,
    Path(name): Path<String>,
    Query(query): Query<PageQuery>,
    headers: HeaderMap,
) -> Response {
    let session = match pages.reader(&headers, &format!("/env/{name}")) {
        Ok(session) => session,
        Err(login) => return *login,
    };
    let (page, started) = (query.page.unwrap_or(1), Instant::now());
    let Some(body) = environment_live(&pages, &name, page, session.as_ref()).await else {
        return not_found(&name);
    };
    let live = format!("/env/{}/events?page={page}", encode(&name));
    let page = Html(html::layout(
        &name,
        session.as_ref(),
        Some(&live),
        html! { (maud::PreEscaped(body)) },
    ));
    timed(page.into_response(), started)
}

fn not_found(name: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Html(html::layout(
            "Not found",
            None,
            None,
            html! { h1 { "No environment named " code { (name) } } p { a href="/" { "All environments" } } },
        )),
    )
        .into_response()
}

/// Receivers told of anything that changes what an environment's page shows.
fn subscriptions(pages: &PagesState, only: Option<&str>) -> Vec<tokio::sync::watch::Receiver<()>> {
    let mut receivers = Vec::new();
    for (name, handle) in pages.api.controls.all() {
        if only.is_some_and(|only| only != name) {
            continue;
        }
        let (tell, told) = tokio::sync::watch::channel(());
        let (mut journal, mut waiting) = (handle.journal.subscribe(), handle.waiting.subscribe());
        tokio::spawn(async move {
            tokio::select! {
                _ = journal.changed() => {}
                _ = waiting.changed() => {}
                _ = tell.closed() => return,
            }
            tell.send_replace(());
        });
        receivers.push(told);
    }
    receivers
}

/// Waits until one of `receivers` is told, or [`REFRESH`] passes.
async fn changed(receivers: &mut [tokio::sync::watch::Receiver<()>]) {
    if receivers.is_empty() {
        tokio::time::sleep(REFRESH).await;
        return;
    }
    let any = futures_util::future::select_all(receivers.iter_mut().map(|r| Box::pin(r.changed())));
    let _ = tokio::time::timeout(REFRESH, any).await;
}

/// An event stream that sends `render`'s HTML whenever it differs from what was sent last.
fn live<F, Fut>(pages: PagesState, only: Option<String>, render: F) -> Response
where
    F: Fn(PagesState) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Option<String>> + Send,
{
    let render = Arc::new(render);
    let stream = futures_util::stream::unfold((pages, None::<String>), move |(pages, last)| {
        let (render, only) = (render.clone(), only.clone());
        async move {
            loop {
                let mut receivers = subscriptions(&pages, only.as_deref());
                let html = render(pages.clone()).await?;
                if last.as_ref() != Some(&html) {
                    let event = SseEvent::default().data(html.clone());
                    return Some((Ok::<_, Infallible>(event), (pages, Some(html))));
                }
                changed(&mut receivers).await;
            }
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn overview_events(State(pages): State<PagesState>, headers: HeaderMap) -> Response {
    if let Err(login) = pages.reader(&headers, "/") {
        return *login;
    }
    live(pages, None, |pages| async move {
        Some(overview_body(&pages).await)
    })
}

async fn environment_events(
    State(pages): State<PagesState>,
    Path(name): Path<String>,
    Query(query): Query<PageQuery>,
    headers: HeaderMap,
) -> Response {
    let session = match pages.reader(&headers, &format!("/env/{name}")) {
        Ok(session) => session,
        Err(login) => return *login,
    };
    if pages.api.controls.get(&name).is_none() {
        return not_found(&name);
    }
    let page = query.page.unwrap_or(1);
    let only = Some(name.clone());
    live(pages, only, move |pages| {
        let (name, session) = (name.clone(), session.clone());
        async move { environment_live(&pages, &name, page, session.as_ref()).await }
    })
}

/// A short HTML page for a refusal or an error.
fn message(status: StatusCode, title: &str, text: &str) -> Response {
    (
        status,
        Html(html::layout(
            title,
            None,
            None,
            html! { h1 { (title) } p { (text) } p { a href="/" { "All environments" } } },
        )),
    )
        .into_response()
}

/// Sets a cookie on a response.
fn with_cookie(mut response: Response, cookie: String) -> Response {
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

/// The session cookie removed.
fn clear_session() -> String {
    session::set_cookie(SESSION_COOKIE, "", Duration::ZERO)
}

/// The session cookie for a new session.
fn session_cookie(id: &str) -> String {
    session::set_cookie(SESSION_COOKIE, id, SESSION_IDLE)
}

/// The login nonce cookie.
fn login_cookie(nonce: &str) -> String {
    session::set_cookie(LOGIN_COOKIE, nonce, Duration::from_secs(15 * 60))
}
