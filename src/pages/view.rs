//! What the status pages show, decided from an environment's history, journal and the branch
//! tip (pure: no IO, `now` is passed in): the state badge, the rollout strip, the checks' dots,
//! a timeline page and the weekly delivery figures.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Datelike, Utc};

use crate::history::History;
use crate::journal::records::{Event, Record};
use crate::model::Revision;
use crate::stats::{Delivery, DeliveryStats};

/// Where an environment stands, as its badge says.
#[derive(Debug, Clone, PartialEq)]
pub enum Badge {
    Healthy,
    /// A canary rollout at step `step` (1-based) of `of`, at `weight` percent.
    RollingOut {
        step: usize,
        of: usize,
        weight: u8,
    },
    /// A rollout started and has not written its first step yet, or a blue/green phase.
    Starting {
        phase: Option<String>,
    },
    Reverting {
        to: Revision,
    },
    /// The tip failed; the environment is back at (or stays at) its last healthy revision.
    RevertedHeld {
        failed: Revision,
    },
    Blocked {
        reason: String,
    },
    Paused,
    WaitingForApproval {
        revision: Revision,
    },
    OutsideWindow {
        reason: String,
    },
    WaitingForUpstream {
        reason: String,
    },
    CacheSyncing,
    /// Rolled back by an operator and held at this revision while the tip stays.
    Pinned {
        revision: Revision,
    },
    NotDeployed,
}

impl Badge {
    /// The words on the badge (what a reader without CSS or JavaScript sees too).
    pub fn text(&self) -> String {
        match self {
            Badge::Healthy => "healthy".into(),
            Badge::RollingOut { step, of, weight } => {
                format!("rolling out step {step} of {of} ({weight}%)")
            }
            Badge::Starting { phase: None } => "rolling out (starting)".into(),
            Badge::Starting { phase: Some(phase) } => format!("rolling out: {phase}"),
            Badge::Reverting { to } => format!("reverting to {}", to.short()),
            Badge::RevertedHeld { failed } => {
                format!("reverted and held ({} failed)", failed.short())
            }
            Badge::Blocked { .. } => "blocked".into(),
            Badge::Paused => "paused".into(),
            Badge::WaitingForApproval { .. } => "waiting for approval".into(),
            Badge::OutsideWindow { .. } => "outside its window".into(),
            Badge::WaitingForUpstream { .. } => "waiting for upstream".into(),
            Badge::CacheSyncing => "cache syncing".into(),
            Badge::Pinned { revision } => format!("rolled back to {}", revision.short()),
            Badge::NotDeployed => "not deployed yet".into(),
        }
    }

    /// The CSS class of its colour: good, busy, bad or idle.
    pub fn tone(&self) -> &'static str {
        match self {
            Badge::Healthy => "good",
            Badge::RollingOut { .. } | Badge::Starting { .. } | Badge::CacheSyncing => "busy",
            Badge::Reverting { .. } | Badge::RevertedHeld { .. } | Badge::Blocked { .. } => "bad",
            _ => "idle",
        }
    }

    /// More words, when the badge has them (a block's reason, a gate's).
    pub fn detail(&self) -> Option<&str> {
        match self {
            Badge::Blocked { reason }
            | Badge::OutsideWindow { reason }
            | Badge::WaitingForUpstream { reason } => Some(reason),
            _ => None,
        }
    }
}

/// What decides the badge besides the history.
#[derive(Debug, Clone, Default)]
pub struct Situation<'a> {
    /// The branch tip, when the mirror has one.
    pub tip: Option<&'a Revision>,
    /// What held the tip back on the last pass: the tip then and why.
    pub waiting: Option<&'a (Revision, String)>,
    /// A store of the watch cache is still syncing.
    pub cache_syncing: bool,
}

/// The badge of an environment: a rollout or revert in flight first, then what holds the tip.
pub fn badge(history: &History, situation: &Situation<'_>) -> Badge {
    if let Some(revert) = &history.reverting {
        return Badge::Reverting {
            to: revert.to.clone(),
        };
    }
    if let Some(flight) = history.in_flight.as_ref().filter(|f| f.failed.is_none()) {
        if flight.phase.as_deref() == Some("awaiting approval") && !flight.switch_approved {
            return Badge::WaitingForApproval {
                revision: flight.revision.clone(),
            };
        }
        return match (flight.step, &flight.phase) {
            (_, Some(phase)) => Badge::Starting {
                phase: Some(phase.clone()),
            },
            (Some((index, weight)), None) => Badge::RollingOut {
                step: index + 1,
                of: flight.steps.len(),
                weight,
            },
            (None, None) => Badge::Starting { phase: None },
        };
    }
    if history.paused {
        return Badge::Paused;
    }
    if let Some((pinned, pinned_tip)) = &history.pin
        && situation.tip == Some(pinned_tip)
    {
        return Badge::Pinned {
            revision: pinned.clone(),
        };
    }
    if let Some(tip) = situation.tip
        && history.failed.contains(tip)
    {
        return Badge::RevertedHeld {
            failed: tip.clone(),
        };
    }
    if let Some((_, reason)) = &history.blocked {
        return Badge::Blocked {
            reason: reason.clone(),
        };
    }
    if let Some(badge) = situation.waiting.and_then(gate_badge) {
        return badge;
    }
    if situation.cache_syncing {
        return Badge::CacheSyncing;
    }
    match &history.current {
        None => Badge::NotDeployed,
        Some(_) => Badge::Healthy,
    }
}

/// The badge of a gate's reason (as [`crate::gates::Gates::holds`] words it).
fn gate_badge((tip, reason): &(Revision, String)) -> Option<Badge> {
    if reason.starts_with("waiting for approval") {
        Some(Badge::WaitingForApproval {
            revision: tip.clone(),
        })
    } else if reason.starts_with("outside the change window") {
        Some(Badge::OutsideWindow {
            reason: reason.clone(),
        })
    } else if reason.starts_with("waiting for") {
        Some(Badge::WaitingForUpstream {
            reason: reason.clone(),
        })
    } else if reason.starts_with("paused") {
        Some(Badge::Paused)
    } else {
        None
    }
}

/// One step of the strip: its weight and where the rollout is with it.
#[derive(Debug, Clone, PartialEq)]
pub struct StripStep {
    pub weight: u8,
    pub state: StepState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepState {
    Passed,
    Current,
    Pending,
    Failed,
}

impl StepState {
    pub fn text(self) -> &'static str {
        match self {
            StepState::Passed => "passed",
            StepState::Current => "current",
            StepState::Pending => "pending",
            StepState::Failed => "failed",
        }
    }
}

/// The rollout in flight, as a strip of steps, with the time left in the current bake or in
/// the verify window.
#[derive(Debug, Clone, PartialEq)]
pub struct Strip {
    pub revision: Revision,
    pub steps: Vec<StripStep>,
    /// Time left baking the current step (none once it is the promotion).
    pub bake_left: Option<Duration>,
    /// Time left in the verify window once promoted.
    pub verify_left: Option<Duration>,
}

/// The strip of the rollout in flight, if any; `records` are the environment's journal.
pub fn strip(
    history: &History,
    records: &[Record],
    bake: Duration,
    verify: Duration,
    now: DateTime<Utc>,
) -> Option<Strip> {
    let flight = history.in_flight.as_ref()?;
    let current = flight.step.map(|(index, _)| index);
    let steps = flight
        .steps
        .iter()
        .enumerate()
        .map(|(index, &weight)| {
            let state = if flight.passed.is_some_and(|passed| index <= passed) {
                StepState::Passed
            } else if Some(index) == current && flight.failed.is_some() {
                StepState::Failed
            } else if Some(index) == current {
                StepState::Current
            } else {
                StepState::Pending
            };
            StripStep { weight, state }
        })
        .collect();
    let since = |wanted: fn(&Event) -> bool| {
        records
            .iter()
            .rev()
            .take_while(|record| !matches!(record.event, Event::RolloutStarted { .. }))
            .find(|record| wanted(&record.event) && record.event.revision() == &flight.revision)
            .map(|record| record.time)
    };
    let left = |start: DateTime<Utc>, span: Duration| {
        let elapsed = (now - start).to_std().unwrap_or(Duration::ZERO);
        span.saturating_sub(elapsed)
    };
    let promoted = since(|e| matches!(e, Event::Promoted { .. }));
    let verify_left = promoted.map(|at| left(at, verify));
    let bake_left = match (promoted, flight.step) {
        (None, Some((_, weight))) if weight < 100 => {
            since(|e| matches!(e, Event::StepStarted { .. })).map(|at| left(at, bake))
        }
        _ => None,
    };
    Some(Strip {
        revision: flight.revision.clone(),
        steps,
        bake_left,
        verify_left,
    })
}

/// One verdict of a check: in one rollout, it passed or failed with a detail.
#[derive(Debug, Clone, PartialEq)]
pub struct Dot {
    pub revision: Revision,
    pub time: DateTime<Utc>,
    /// The failure's detail; none when the check held through the rollout.
    pub failure: Option<String>,
}

/// Each configured check's verdicts over the last `limit` rollouts that ended (healthy or
/// failed), oldest first: a rollout's verdict is its failure when the check failed in it.
pub fn check_dots(checks: &[String], records: &[Record], limit: usize) -> Vec<(String, Vec<Dot>)> {
    let mut rollouts: Vec<(Revision, DateTime<Utc>, BTreeMap<String, String>)> = Vec::new();
    let mut open: Option<(Revision, BTreeMap<String, String>)> = None;
    for record in records {
        match &record.event {
            Event::RolloutStarted { revision, .. } => {
                open = Some((revision.clone(), BTreeMap::new()));
            }
            Event::CheckFailed { check, detail, .. } => {
                if let Some((_, failures)) = &mut open {
                    failures.insert(check.clone(), detail.clone());
                }
            }
            Event::Healthy { revision } | Event::RolloutFailed { revision, .. } => {
                if let Some((started, failures)) = open.take() {
                    if &started == revision {
                        rollouts.push((started, record.time, failures));
                    }
                }
            }
            _ => {}
        }
    }
    let recent = &rollouts[rollouts.len().saturating_sub(limit)..];
    checks
        .iter()
        .map(|check| {
            let dots = recent
                .iter()
                .map(|(revision, time, failures)| Dot {
                    revision: revision.clone(),
                    time: *time,
                    failure: failures.get(check).cloned(),
                })
                .collect();
            (check.clone(), dots)
        })
        .collect()
}

/// Records per timeline page.
pub const TIMELINE_PAGE: usize = 50;

/// Page `page` (1-based) of the journal, newest first, and the number of pages.
pub fn timeline_page(records: &[Record], page: usize) -> (&[Record], usize) {
    let pages = records.len().div_ceil(TIMELINE_PAGE).max(1);
    let page = page.clamp(1, pages);
    let end = records.len().saturating_sub((page - 1) * TIMELINE_PAGE);
    let start = end.saturating_sub(TIMELINE_PAGE);
    (&records[start..end], pages)
}

/// One week's delivery figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Week {
    /// Monday of the week.
    pub start: chrono::NaiveDate,
    pub deployments: usize,
    pub failures: usize,
    /// Median lead time of the week's deployments.
    pub lead: Option<Duration>,
    /// Median time to restore of the week's restores.
    pub restore: Option<Duration>,
}

impl Week {
    pub fn failure_rate(&self) -> Option<f64> {
        let ended = self.deployments + self.failures;
        (ended > 0).then(|| self.failures as f64 / ended as f64)
    }
}

/// The last `count` weeks up to `now`'s, oldest first, from the figures' outcomes.
pub fn weeks(stats: &DeliveryStats, now: DateTime<Utc>, count: usize) -> Vec<Week> {
    let monday = |time: DateTime<Utc>| {
        let date = time.date_naive();
        date - chrono::Days::new(u64::from(date.weekday().num_days_from_monday()))
    };
    let last = monday(now);
    let mut weeks: Vec<(Week, Vec<Duration>, Vec<Duration>)> = (0..count)
        .rev()
        .map(|back| {
            let start = last - chrono::Days::new(7 * back as u64);
            let week = Week {
                start,
                deployments: 0,
                failures: 0,
                lead: None,
                restore: None,
            };
            (week, Vec::new(), Vec::new())
        })
        .collect();
    for (time, outcome) in &stats.outcomes {
        let start = monday(*time);
        let Some((week, leads, restores)) = weeks.iter_mut().find(|(w, ..)| w.start == start)
        else {
            continue;
        };
        match outcome {
            Delivery::Deployed { lead } => {
                week.deployments += 1;
                leads.extend(*lead);
            }
            Delivery::Failed => week.failures += 1,
            Delivery::Restored { took } => restores.push(*took),
        }
    }
    weeks
        .into_iter()
        .map(|(mut week, leads, restores)| {
            week.lead = crate::stats::median(&leads);
            week.restore = crate::stats::median(&restores);
            week
        })
        .collect()
}

/// `3h 5m`-style: the largest two units of a duration, for ages and times left.
pub fn short_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    let (days, hours, minutes) = (seconds / 86_400, seconds / 3_600 % 24, seconds / 60 % 60);
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{seconds}s"),
        (0, 0, m) => format!("{m}m {}s", seconds % 60),
        (0, h, m) => format!("{h}h {m}m"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

/// How long ago `then` was at `now`.
pub fn age(then: DateTime<Utc>, now: DateTime<Utc>) -> String {
    format!(
        "{} ago",
        short_duration((now - then).to_std().unwrap_or(Duration::ZERO))
    )
}

/// When the environment last changed: its last rollout outcome, revert or reconcile.
pub fn last_change(records: &[Record]) -> Option<DateTime<Utc>> {
    records
        .iter()
        .rev()
        .find(|record| {
            matches!(
                record.event,
                Event::Healthy { .. }
                    | Event::Reverted { .. }
                    | Event::ReconcileFinished { .. }
                    | Event::StepStarted { .. }
                    | Event::RolloutStarted { .. }
            )
        })
        .map(|record| record.time)
}

/// A record's few words of detail on the timeline: reasons, checks, errors.
pub fn timeline_detail(event: &Event) -> Option<String> {
    match event {
        Event::Rejected { problems, .. } => Some(problems.join("; ")),
        Event::StepStarted { step, weight, .. } | Event::StepPassed { step, weight, .. } => {
            Some(format!("step {} at {weight}%", step + 1))
        }
        Event::CheckFailed { check, detail, .. } => Some(format!("{check}: {detail}")),
        Event::RolloutFailed { reason, .. }
        | Event::Blocked { reason, .. }
        | Event::VerifyFailed { reason, .. }
        | Event::SwitchedBack { reason, .. } => Some(reason.clone()),
        Event::RevertStarted { to, reason, .. } => Some(format!("to {}: {reason}", to.short())),
        Event::Reverted { to, .. } => Some(format!("back at {}", to.short())),
        Event::ReconcileFailed { error, .. } => Some(error.clone()),
        Event::HookFailed { hook, message, .. } => Some(format!("{hook}: {message}")),
        Event::Pinned { tip, .. } => Some(format!("while the tip is {}", tip.short())),
        Event::RolloutStarted { steps, .. } => Some(format!("steps {steps:?}")),
        _ => None,
    }
}

#[cfg(test)]
#[path = "view_tests.rs"]
mod tests;
