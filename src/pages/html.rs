//! The pages' HTML, from maud templates (escaped by default; no template files to ship).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::gather::{Changes, Snapshot, diff_text};
use super::session::Session;
use super::view::{self, Badge, Situation};
use crate::backend::TargetConfig;
use crate::model::Revision;
use crate::source::CommitSummary;

/// Commit summaries by revision.
pub type Commits = BTreeMap<Revision, Option<CommitSummary>>;

/// A whole page around `body`; `live` is its event stream's path (the script swaps `main` for
/// each event).
pub fn layout(title: &str, session: Option<&Session>, live: Option<&str>, body: Markup) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · gitopsd" }
                link rel="stylesheet" href="/assets/style.css";
                script src="/assets/live.js" defer {}
            }
            body {
                header {
                    a.home href="/" { "gitopsd" }
                    @if let Some(session) = session {
                        form.inline method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(session.csrf);
                            button type="submit" { "Log out" }
                        }
                    } @else {
                        a href="/login" { "Log in" }
                    }
                }
                main id="live" data-events=[live] { (body) }
            }
        }
    }
    .into_string()
}

/// Where an environment applies: a folder, or a cluster context and namespace.
pub fn target_text(target: &TargetConfig, namespace: &str) -> String {
    match target {
        TargetConfig::Directory { path } => format!("directory {}", path.display()),
        TargetConfig::Kubernetes(settings) => format!(
            "kubernetes {} / {namespace}",
            settings.context.as_deref().unwrap_or("current context")
        ),
    }
}

/// A revision with its subject, author and age, when the mirror knows it.
fn revision_cell(revision: Option<&Revision>, commits: &Commits, now: DateTime<Utc>) -> Markup {
    html! {
        @match revision {
            None => span.muted { "none" },
            Some(revision) => {
                code title=(revision.0) { (revision.short()) }
                @if let Some(Some(commit)) = commits.get(revision) {
                    " " span.subject { (commit.subject) }
                    br;
                    span.muted { (commit.author) ", " (view::age(commit.time, now)) }
                }
            }
        }
    }
}

fn badge(badge: &Badge) -> Markup {
    html! {
        span class={ "badge " (badge.tone()) } { (badge.text()) }
        @if let Some(detail) = badge.detail() {
            " " span.muted.detail { (detail) }
        }
    }
}

/// The badge of a snapshot.
pub fn badge_of(snapshot: &Snapshot, tip: Option<&Revision>) -> Badge {
    view::badge(
        &snapshot.history,
        &Situation {
            tip,
            waiting: snapshot.waiting.as_ref(),
            cache_syncing: snapshot.cache_syncing,
        },
    )
}

/// The overview: one row per environment.
pub fn overview(
    snapshots: &[Snapshot],
    tip: Option<&Revision>,
    commits: &Commits,
    now: DateTime<Utc>,
) -> Markup {
    html! {
        h1 { "Environments" }
        @if let Some(tip) = tip {
            p.muted { "Branch tip " code { (tip.short()) } }
        }
        table.overview {
            thead { tr {
                th { "Environment" } th { "Target" } th { "Current revision" }
                th { "State" } th { "Last healthy" } th { "Last change" }
            } }
            tbody {
                @for snapshot in snapshots {
                    @let config = &snapshot.handle.config;
                    tr id={ "env-" (snapshot.name) } {
                        td { a href={ "/env/" (snapshot.name) } { (snapshot.name) } }
                        td { (target_text(&config.target, &config.namespace)) }
                        td { (revision_cell(snapshot.history.current.as_ref(), commits, now)) }
                        td.state { (badge(&badge_of(snapshot, tip))) }
                        td { (revision_cell(snapshot.history.last_healthy.as_ref(), commits, now)) }
                        td { @match view::last_change(&snapshot.records) {
                            Some(at) => (view::age(at, now)),
                            None => span.muted { "never" },
                        } }
                    }
                }
            }
        }
    }
}

/// The rollout strip of the rollout in flight.
pub fn strip(snapshot: &Snapshot, now: DateTime<Utc>) -> Markup {
    let rollout = &snapshot.handle.config.rollout;
    let strip = view::strip(
        &snapshot.history,
        &snapshot.records,
        rollout.bake,
        rollout.verify,
        now,
    );
    html! {
        section #rollout {
            h2 { "Rollout" }
            @match strip {
                None => p.muted { "No rollout in flight." },
                Some(strip) => {
                    p { "Revision " code { (strip.revision.short()) } }
                    ol.strip {
                        @for (index, step) in strip.steps.iter().enumerate() {
                            li class=(step.state.text()) {
                                "Step " (index + 1) ": " (step.weight) "% "
                                span.muted { "(" (step.state.text()) ")" }
                            }
                        }
                    }
                    @if let Some(left) = strip.bake_left {
                        p { "Bake: " (view::short_duration(left)) " left" }
                    }
                    @if let Some(left) = strip.verify_left {
                        p { "Verify window: " (view::short_duration(left)) " left" }
                    }
                }
            }
        }
    }
}

/// Each check's verdicts over recent rollouts, as dots with the failure's detail on hover and
/// as text.
pub fn checks(snapshot: &Snapshot) -> Markup {
    let names: Vec<String> = snapshot
        .handle
        .config
        .health
        .iter()
        .map(|check| check.name.clone())
        .collect();
    let rows = view::check_dots(&names, &snapshot.records, 20);
    html! {
        section #checks {
            h2 { "Checks" }
            @if rows.is_empty() { p.muted { "No health checks configured." } }
            @for (check, dots) in &rows {
                div.check {
                    strong { (check) } " "
                    span.dots {
                        @for dot in dots {
                            @let text = match &dot.failure {
                                Some(detail) => format!("{} failed: {detail}", dot.revision.short()),
                                None => format!("{} passed", dot.revision.short()),
                            };
                            span class={ "dot " (if dot.failure.is_some() { "bad" } else { "good" }) }
                                title=(text) { @if dot.failure.is_some() { "✗" } @else { "✓" } }
                        }
                    }
                    @if dots.is_empty() { span.muted { " no rollout finished yet" } }
                    ul.failures {
                        @for dot in dots.iter().filter(|d| d.failure.is_some()) {
                            li { code { (dot.revision.short()) } " failed: "
                                (dot.failure.as_deref().unwrap_or_default()) }
                        }
                    }
                }
            }
            @if let Some(failure) = &snapshot.history.last_failure {
                p.failure { "Last failure: " code { (failure.revision.short()) } " — " (failure.reason) }
                ul { @for (check, detail) in &failure.checks { li { (check) ": " (detail) } } }
            }
        }
    }
}

/// Stable and canary replicas of each canaried Deployment of the rollout in flight.
pub fn canaries(snapshot: &Snapshot, changes: Option<&Changes>) -> Markup {
    let flight = snapshot.history.in_flight.as_ref();
    let weight = flight.and_then(|f| f.step).map(|(_, w)| w);
    let canaried = canaried_names(snapshot);
    html! {
        section #canaries {
            h2 { "Canaries" }
            @match (weight, changes) {
                (Some(weight), Some(changes)) if weight < 100 && !canaried.is_empty() => {
                    table { thead { tr { th { "Deployment" } th { "Stable" } th { "Canary" } } }
                    tbody { @for (name, replicas, owned) in changes.replicas.iter().filter(|r| canaried.contains(&r.0)) {
                        @let canary = crate::canary::canary_replicas(weight, *replicas);
                        tr { td { (name) }
                             td { @if *owned { (replicas.saturating_sub(canary)) } @else { (replicas) } }
                             td { (canary) } }
                    } } }
                }
                _ => p.muted { "No canary running." },
            }
        }
    }
}

/// The Deployments the rollout in flight canaries (from its start record).
fn canaried_names(snapshot: &Snapshot) -> Vec<String> {
    snapshot
        .records
        .iter()
        .rev()
        .find_map(|record| match &record.event {
            crate::journal::Event::RolloutStarted { canaries, .. } => Some(canaries.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

/// What the revision shown changes, as `gitopsd diff` prints it (secret values redacted).
pub fn changes(changes: Option<&Changes>) -> Markup {
    html! {
        section #changes {
            h2 { "Changes" }
            @match changes {
                None => p.muted { "Nothing to compare yet." },
                Some(changes) => {
                    p { code { (changes.from.short()) } " → " code { (changes.to.short()) } }
                    @match &changes.report {
                        Err(error) => p.failure { "Cannot show the diff: " (error) },
                        Ok(report) => pre.diff { @for line in diff_text(report).lines() {
                            span class=(line_class(line)) { (line) } "\n"
                        } },
                    }
                }
            }
        }
    }
}

fn line_class(line: &str) -> &'static str {
    if line.starts_with("+++") || line.starts_with("---") || line.starts_with("===") {
        "head"
    } else if line.starts_with('+') {
        "add"
    } else if line.starts_with('-') {
        "del"
    } else {
        "ctx"
    }
}

/// One page of the journal, newest first, with links to the others.
pub fn timeline(snapshot: &Snapshot, page: usize) -> Markup {
    let (records, pages) = view::timeline_page(&snapshot.records, page);
    let page = page.clamp(1, pages);
    html! {
        section #timeline {
            h2 { "Timeline" }
            ol.timeline {
                @for record in records.iter().rev() {
                    li {
                        time datetime=(record.time.to_rfc3339()) { (record.time.format("%Y-%m-%d %H:%M:%S")) }
                        " #" (record.seq) " " strong { (record.event.name()) } " "
                        code { (record.event.revision().short()) }
                        @if let Some(detail) = view::timeline_detail(&record.event) { " — " (detail) }
                        @if let Some(by) = &record.by { span.muted { " by " (by) } }
                    }
                }
            }
            nav.pages {
                "Page " (page) " of " (pages) " "
                @if page > 1 { a href={ "?page=" (page - 1) } { "newer" } " " }
                @if page < pages { a href={ "?page=" (page + 1) } { "older" } }
            }
        }
    }
}

/// The delivery figures and a bar chart per week for each.
pub fn dora(stats: &crate::stats::DeliveryStats, now: DateTime<Utc>) -> Markup {
    let weeks = view::weeks(stats, now, 12);
    let per_day = stats
        .deployments_per_day()
        .map_or_else(|| "n/a".into(), |n| format!("{n:.2} per day"));
    let rate = stats
        .change_failure_rate()
        .map_or_else(|| "n/a".into(), |r| format!("{:.0}%", r * 100.0));
    let secs = |d: Option<std::time::Duration>| d.map_or(0.0, |d| d.as_secs_f64());
    html! {
        section #dora {
            h2 { "Delivery (DORA)" }
            div.charts {
                figure {
                    figcaption { "Deployment frequency: " (stats.deployments) " (" (per_day) ")" }
                    (PreEscaped(super::svg::bars(&weeks.iter().map(|w| w.deployments as f64).collect::<Vec<_>>(), "deployments per week")))
                }
                figure {
                    figcaption { "Lead time: median " (crate::stats::human(crate::stats::median(&stats.lead_times))) }
                    (PreEscaped(super::svg::bars(&weeks.iter().map(|w| secs(w.lead)).collect::<Vec<_>>(), "median lead time per week")))
                }
                figure {
                    figcaption { "Change failure rate: " (rate) }
                    (PreEscaped(super::svg::bars(&weeks.iter().map(|w| w.failure_rate().unwrap_or(0.0)).collect::<Vec<_>>(), "change failure rate per week")))
                }
                figure {
                    figcaption { "Time to restore: median " (crate::stats::human(crate::stats::median(&stats.restore_times))) }
                    (PreEscaped(super::svg::bars(&weeks.iter().map(|w| secs(w.restore)).collect::<Vec<_>>(), "median time to restore per week")))
                }
            }
            p.muted { "Weeks from " (weeks.first().map(|w| w.start.to_string()).unwrap_or_default()) ", oldest first." }
        }
    }
}
