//! The operator's actions as forms: a login that exchanges the API token for a session, a
//! logout, and approve, pause, resume, retry and rollback, each POSTed with the session's
//! CSRF token and journaled with the session's label, as the control API journals its caller.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::extract::rejection::FormRejection;
use axum::extract::{ConnectInfo, Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::session::{self, LOGIN_COOKIE, Session};
use super::{PagesState, html as pages_html, message, with_cookie};
use crate::server::{self, ControlBody};

#[derive(Debug, Default, Deserialize)]
pub(super) struct LoginQuery {
    next: Option<String>,
}

/// Where a login goes next: a path on this server only.
fn next_path(next: Option<&str>) -> String {
    match next {
        Some(next) if next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') => {
            next.to_string()
        }
        _ => "/".into(),
    }
}

pub(super) async fn login_form(
    State(pages): State<PagesState>,
    Query(query): Query<LoginQuery>,
) -> Response {
    let Ok(nonce) = pages.sessions.login_form(Instant::now()) else {
        return message(StatusCode::INTERNAL_SERVER_ERROR, "Error", "no randomness");
    };
    let next = next_path(query.next.as_deref());
    let body = html! {
        section.login {
            h1 { "Log in" }
            p { "Enter the API token (" code { "api.token_file" } ") to act on environments." }
            form method="post" action="/login" {
                input type="hidden" name="nonce" value=(nonce);
                input type="hidden" name="next" value=(next);
                label for="token" { "API token" }
                input #token type="password" name="token" autocomplete="current-password" required;
                button type="submit" { "Log in" }
            }
        }
    };
    let page = Html(pages_html::layout("Log in", None, None, body)).into_response();
    with_cookie(page, super::login_cookie(&nonce))
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct LoginForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    nonce: String,
    next: Option<String>,
}

pub(super) async fn login(
    State(pages): State<PagesState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    let form = form.map(|Form(form)| form).unwrap_or_default();
    let now = Instant::now();
    let cookie = session::cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if !pages.sessions.take_login_form(cookie, &form.nonce, now) {
        return message(
            StatusCode::FORBIDDEN,
            "Refused",
            "the login form expired or did not come from this server: load it again",
        );
    }
    let api = &pages.api;
    if let Some(wait) = api.limiter.locked_out(peer.ip(), now) {
        tracing::warn!(%peer, "dashboard login refused: too many failed authentications");
        let text = format!(
            "too many failed logins; try again in {}s",
            wait.as_secs().max(1)
        );
        return message(StatusCode::TOO_MANY_REQUESTS, "Refused", &text);
    }
    let token = api
        .reloadable
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .token
        .clone();
    let Some(token) = token else {
        return message(
            StatusCode::FORBIDDEN,
            "Refused",
            "actions are disabled: set api.token_file",
        );
    };
    if !server::same(form.token.trim().as_bytes(), token.as_bytes()) {
        api.limiter.failed(peer.ip(), now);
        tracing::warn!(%peer, "dashboard login refused: wrong token");
        return message(
            StatusCode::UNAUTHORIZED,
            "Wrong token",
            "that is not the API token",
        );
    }
    let Ok(id) = pages.sessions.open(peer.ip(), now) else {
        return message(StatusCode::INTERNAL_SERVER_ERROR, "Error", "no randomness");
    };
    tracing::info!(%peer, "dashboard login");
    let to = Redirect::to(&next_path(form.next.as_deref())).into_response();
    let to = with_cookie(to, super::session_cookie(&id));
    with_cookie(to, session::set_cookie(LOGIN_COOKIE, "", Duration::ZERO))
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct ActionForm {
    csrf: Option<String>,
    revision: Option<String>,
    to: Option<String>,
}

/// The session of a POST whose form carries its CSRF token; a refusal (403) otherwise.
fn checked(
    pages: &PagesState,
    headers: &HeaderMap,
    csrf: Option<&str>,
) -> Result<(Session, String), Box<Response>> {
    let id = session::cookie(headers, super::SESSION_COOKIE).unwrap_or_default();
    let Some(session) = pages.sessions.get(id, Instant::now()) else {
        return Err(Box::new(message(
            StatusCode::FORBIDDEN,
            "Refused",
            "log in first",
        )));
    };
    if !csrf.is_some_and(|csrf| session::same(csrf, &session.csrf)) {
        tracing::warn!("dashboard POST refused: missing or wrong CSRF token");
        return Err(Box::new(message(
            StatusCode::FORBIDDEN,
            "Refused",
            "the form's CSRF token is missing or wrong: load the page again",
        )));
    }
    Ok((session, id.to_string()))
}

pub(super) async fn logout(
    State(pages): State<PagesState>,
    headers: HeaderMap,
    form: Result<Form<ActionForm>, FormRejection>,
) -> Response {
    let form = form.map(|Form(form)| form).unwrap_or_default();
    let (_, id) = match checked(&pages, &headers, form.csrf.as_deref()) {
        Ok(session) => session,
        Err(refused) => return *refused,
    };
    pages.sessions.close(&id);
    with_cookie(Redirect::to("/").into_response(), super::clear_session())
}

pub(super) async fn action(
    State(pages): State<PagesState>,
    Path((name, action)): Path<(String, String)>,
    headers: HeaderMap,
    form: Result<Form<ActionForm>, FormRejection>,
) -> Response {
    let form = form.map(|Form(form)| form).unwrap_or_default();
    let (session, _) = match checked(&pages, &headers, form.csrf.as_deref()) {
        Ok(session) => session,
        Err(refused) => return *refused,
    };
    let Some(handle) = pages.api.controls.get(&name) else {
        return message(StatusCode::NOT_FOUND, "Not found", "no such environment");
    };
    let body = ControlBody {
        revision: form.revision,
        to: form.to,
    };
    let event = server::control_event(&action, body, &handle, &pages.source()).await;
    let done = match event {
        Ok(event) => server::act(&handle, event, session.label)
            .await
            .map(|(revision, _)| revision),
        Err(refused) => Err(refused),
    };
    match done {
        Ok(_) => Redirect::to(&format!("/env/{}", super::encode(&name))).into_response(),
        Err(refusal) => message(refusal.status, "Refused", &refusal.message),
    }
}

/// The actions an environment page offers its session (a link to log in without one).
pub(super) async fn form(pages: &PagesState, name: &str, session: Option<&Session>) -> Markup {
    let Some(session) = session else {
        return html! {
            section #actions .actions { p {
                a href={ "/login?next=/env/" (super::encode(name)) } { "Log in" }
                " to approve, pause, resume, retry or roll back."
            } }
        };
    };
    let Some(handle) = pages.api.controls.get(name) else {
        return html! {};
    };
    let source = pages.source();
    let tip = source.branch_tip_off_thread().await.ok().flatten();
    let seq = handle.journal.next_seq();
    let records = pages.caches.records(&source, name, seq).await;
    let history = handle.history();
    let waiting = handle.waiting.borrow().clone();
    let badge = super::view::badge(
        &history,
        &super::view::Situation {
            tip: tip.as_ref(),
            waiting: waiting.as_ref(),
            cache_syncing: false,
        },
    );
    let healthy = super::gather::healthy_revisions(&records, 20);
    let commits = pages.caches.commits(&source, healthy.clone()).await;
    let post = |action: &str| format!("/env/{}/actions/{action}", super::encode(name));
    let held = tip.as_ref().is_some_and(|tip| history.failed.contains(tip));
    html! {
        section #actions .actions {
            h2 { "Actions" }
            @if let super::view::Badge::WaitingForApproval { revision } = &badge {
                form method="post" action=(post("approve")) {
                    input type="hidden" name="csrf" value=(session.csrf);
                    input type="hidden" name="revision" value=(revision.0);
                    button #approve type="submit" { "Approve " (revision.short()) }
                }
            }
            form method="post" action=(post(if history.paused { "resume" } else { "pause" })) {
                input type="hidden" name="csrf" value=(session.csrf);
                button type="submit" { @if history.paused { "Resume" } @else { "Pause" } }
            }
            @if held {
                form method="post" action=(post("retry")) {
                    input type="hidden" name="csrf" value=(session.csrf);
                    button type="submit" { "Retry the held tip" }
                }
            }
            @if !healthy.is_empty() {
                form method="post" action=(post("rollback")) {
                    input type="hidden" name="csrf" value=(session.csrf);
                    label for="to" { "Roll back to " }
                    select #to name="to" {
                        @for revision in &healthy {
                            option value=(revision.0) {
                                (revision.short())
                                @if let Some(Some(commit)) = commits.get(revision) { " " (commit.subject) }
                            }
                        }
                    }
                    " " button type="submit" { "Roll back" }
                }
            }
        }
    }
}
