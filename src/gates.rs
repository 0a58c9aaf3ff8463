//! Deployment gates (pure): change windows from a cron schedule, and the inputs the rollout
//! decision needs from manual approvals, pauses and upstream environments.

use std::collections::BTreeSet;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use crate::model::Revision;

/// A recurring window in which changes may start: each cron occurrence opens it for
/// `duration`.
#[derive(Debug, Clone)]
pub struct Window {
    schedule: cron::Schedule,
    duration: Duration,
    timezone: Tz,
}

/// Operators write the 5-field form (`0 2 * * Sun`); the cron crate wants seconds first.
fn with_seconds(schedule: &str) -> String {
    if schedule.split_whitespace().count() == 5 {
        format!("0 {schedule}")
    } else {
        schedule.to_string()
    }
}

/// What a time zone should look like.
const TIME_ZONE_HINT: &str = "use an IANA name like \"Europe/Berlin\"";

/// Why a change window's settings were refused.
#[derive(Debug, thiserror::Error)]
pub enum WindowError {
    /// The schedule is not a cron expression.
    #[error("invalid cron schedule {schedule:?}: {source}")]
    Schedule {
        schedule: String,
        #[source]
        source: cron::error::Error,
    },
    /// The time zone is not an IANA name.
    #[error("unknown time zone {timezone:?} ({TIME_ZONE_HINT})")]
    TimeZone { timezone: String },
    /// A window that never stays open.
    #[error("the window duration must be longer than zero")]
    ZeroDuration,
}

impl Window {
    /// Parses a 5-field (minute first) or 6/7-field (seconds first) cron schedule, a duration
    /// and an IANA time zone name.
    pub fn parse(schedule: &str, duration: Duration, timezone: &str) -> Result<Self, WindowError> {
        let parsed = cron::Schedule::from_str(&with_seconds(schedule)).map_err(|source| {
            WindowError::Schedule {
                schedule: schedule.to_string(),
                source,
            }
        })?;
        let timezone = Tz::from_str(timezone).map_err(|_| WindowError::TimeZone {
            timezone: timezone.to_string(),
        })?;
        if duration.is_zero() {
            return Err(WindowError::ZeroDuration);
        }
        Ok(Self {
            schedule: parsed,
            duration,
            timezone,
        })
    }

    /// Whether the window is open at `now`; when closed, when it opens next.
    pub fn state(&self, now: DateTime<Utc>) -> WindowState {
        let length = chrono::Duration::from_std(self.duration).unwrap_or(chrono::Duration::MAX);
        let start = (now - length).with_timezone(&self.timezone);
        match self.schedule.after(&start).next() {
            Some(opened) if opened.with_timezone(&Utc) <= now => WindowState::Open {
                closes: opened.with_timezone(&Utc) + length,
            },
            Some(next) => WindowState::Closed {
                opens: Some(next.with_timezone(&Utc)),
            },
            None => WindowState::Closed { opens: None },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowState {
    Open { closes: DateTime<Utc> },
    Closed { opens: Option<DateTime<Utc>> },
}

/// Everything outside the journal that can hold a new rollout back.
#[derive(Debug, Clone, Default)]
pub struct Gates {
    /// Changes may only start inside this window.
    pub window: Option<Window>,
    /// `after`: the upstream environment's name and the revisions it finished healthy.
    pub upstream: Option<(String, BTreeSet<Revision>)>,
    /// `approval = "manual"`.
    pub manual_approval: bool,
}

impl Gates {
    /// Why `revision` may not start rolling out at `now`, if anything holds it.
    pub fn hold(
        &self,
        revision: &Revision,
        approved: &BTreeSet<Revision>,
        now: DateTime<Utc>,
    ) -> Option<String> {
        self.holds(revision, approved, now).into_iter().next()
    }

    /// Everything that holds `revision` back at `now`: upstream, approval, window.
    pub fn holds(
        &self,
        revision: &Revision,
        approved: &BTreeSet<Revision>,
        now: DateTime<Utc>,
    ) -> Vec<String> {
        let mut holds = Vec::new();
        if let Some((upstream, healthy)) = &self.upstream
            && !healthy.contains(revision)
        {
            holds.push(format!(
                "waiting for {} to be healthy in {upstream} (after = \"{upstream}\")",
                revision.short()
            ));
        }
        if self.manual_approval && !approved.contains(revision) {
            holds.push(format!(
                "waiting for approval: gitopsd approve --env <env> {}",
                revision.short()
            ));
        }
        if let Some(window) = &self.window
            && let WindowState::Closed { opens } = window.state(now)
        {
            holds.push(match opens {
                Some(opens) => format!(
                    "outside the change window; it opens at {}",
                    opens.format("%Y-%m-%dT%H:%M:%SZ")
                ),
                None => "outside the change window; it never opens again".into(),
            });
        }
        holds
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0)
            .single()
            .expect("valid time")
    }

    #[test]
    fn sunday_two_am_for_two_hours() {
        // 2026-11-22 is a Sunday.
        let window = Window::parse("0 2 * * Sun", Duration::from_secs(7200), "UTC").expect("valid");
        assert_eq!(
            window.state(utc(2026, 11, 22, 2, 30)),
            WindowState::Open {
                closes: utc(2026, 11, 22, 4, 0)
            }
        );
        assert_eq!(
            window.state(utc(2026, 11, 22, 4, 0)),
            WindowState::Closed {
                opens: Some(utc(2026, 11, 29, 2, 0))
            }
        );
        assert_eq!(
            window.state(utc(2026, 11, 22, 1, 59)),
            WindowState::Closed {
                opens: Some(utc(2026, 11, 22, 2, 0))
            }
        );
    }

    #[test]
    fn the_six_field_form_and_time_zones_work() {
        // 02:00 in Berlin is 01:00 UTC in November.
        let window = Window::parse("0 0 2 * * Sun", Duration::from_secs(3600), "Europe/Berlin")
            .expect("valid");
        assert!(matches!(
            window.state(utc(2026, 11, 22, 1, 30)),
            WindowState::Open { .. }
        ));
        assert!(matches!(
            window.state(utc(2026, 11, 22, 2, 30)),
            WindowState::Closed { .. }
        ));
    }

    #[test]
    fn bad_schedules_and_zones_are_refused() {
        assert!(matches!(
            Window::parse("every sunday", Duration::from_secs(60), "UTC"),
            Err(WindowError::Schedule { .. })
        ));
        let zone = Window::parse("0 2 * * Sun", Duration::from_secs(60), "Mars/Olympus")
            .expect_err("no such zone");
        assert!(matches!(zone, WindowError::TimeZone { .. }));
        assert_eq!(
            zone.to_string(),
            "unknown time zone \"Mars/Olympus\" (use an IANA name like \"Europe/Berlin\")"
        );
        assert!(matches!(
            Window::parse("0 2 * * Sun", Duration::ZERO, "UTC"),
            Err(WindowError::ZeroDuration)
        ));
    }

    #[test]
    fn gates_hold_until_upstream_approval_and_window_allow() {
        let revision = Revision("a".repeat(40));
        let mut approved = BTreeSet::new();
        let now = utc(2026, 11, 22, 3, 0);
        let gates = Gates {
            window: Some(
                Window::parse("0 2 * * Sun", Duration::from_secs(7200), "UTC").expect("valid"),
            ),
            upstream: Some(("staging".into(), BTreeSet::new())),
            manual_approval: true,
        };
        assert!(
            gates
                .hold(&revision, &approved, now)
                .expect("held")
                .contains("healthy in staging")
        );
        let gates = Gates {
            upstream: Some(("staging".into(), [revision.clone()].into())),
            ..gates
        };
        assert!(
            gates
                .hold(&revision, &approved, now)
                .expect("held")
                .contains("approval")
        );
        approved.insert(revision.clone());
        assert_eq!(gates.hold(&revision, &approved, now), None);
        let closed = utc(2026, 11, 22, 5, 0);
        assert!(
            gates
                .hold(&revision, &approved, closed)
                .expect("held")
                .contains("opens at 2026-11-29T02:00:00Z")
        );
    }
}
