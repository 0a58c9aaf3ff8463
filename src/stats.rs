//! Delivery statistics from a journal (pure): deployment frequency, lead time, change failure
//! rate and time to restore.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::journal::records::{Event, Record};
use crate::model::Revision;

#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryStats {
    /// Rollouts that finished healthy.
    pub deployments: usize,
    /// From the first rollout to the last record.
    pub span: Duration,
    /// Commit time until healthy, per deployment whose commit time is known.
    pub lead_times: Vec<Duration>,
    /// Rollouts that ended, healthy or failed (interrupted ones are not counted).
    pub rollouts: usize,
    pub failures: usize,
    /// Failed rollout's start until its revert finished.
    pub restore_times: Vec<Duration>,
    /// Each outcome with its time, oldest first (what weekly charts bucket).
    pub outcomes: Vec<(DateTime<Utc>, Delivery)>,
}

/// One outcome the figures count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Delivery {
    /// A rollout finished healthy; its lead time when the commit time is known.
    Deployed { lead: Option<Duration> },
    /// A rollout failed.
    Failed,
    /// A failed rollout's revert finished, this long after the rollout started.
    Restored { took: Duration },
}

fn between(from: DateTime<Utc>, to: DateTime<Utc>) -> Duration {
    (to - from).to_std().unwrap_or(Duration::ZERO)
}

fn mean(values: &[Duration]) -> Option<Duration> {
    let count = u32::try_from(values.len()).ok().filter(|n| *n > 0)?;
    Some(values.iter().sum::<Duration>() / count)
}

pub fn median(values: &[Duration]) -> Option<Duration> {
    let mut sorted = values.to_vec();
    sorted.sort();
    sorted
        .get(sorted.len() / 2)
        .copied()
        .filter(|_| !sorted.is_empty())
}

impl DeliveryStats {
    /// Computes the figures from an environment's records; `commit_time` looks up when a
    /// revision was committed.
    pub fn compute(
        records: &[Record],
        commit_time: impl Fn(&Revision) -> Option<DateTime<Utc>>,
    ) -> Self {
        let mut started: BTreeMap<&Revision, DateTime<Utc>> = BTreeMap::new();
        let mut failed_at: BTreeMap<&Revision, DateTime<Utc>> = BTreeMap::new();
        let mut stats = DeliveryStats {
            deployments: 0,
            span: Duration::ZERO,
            lead_times: Vec::new(),
            rollouts: 0,
            failures: 0,
            restore_times: Vec::new(),
            outcomes: Vec::new(),
        };
        let mut first_rollout = None;
        for record in records {
            match &record.event {
                Event::RolloutStarted { revision, .. } => {
                    started.insert(revision, record.time);
                    first_rollout.get_or_insert(record.time);
                }
                Event::Healthy { revision } if started.remove(revision).is_some() => {
                    stats.deployments += 1;
                    stats.rollouts += 1;
                    let lead = commit_time(revision).map(|c| between(c, record.time));
                    stats.lead_times.extend(lead);
                    let deployed = Delivery::Deployed { lead };
                    stats.outcomes.push((record.time, deployed));
                }
                Event::RolloutFailed { revision, .. } => {
                    stats.rollouts += 1;
                    stats.failures += 1;
                    stats.outcomes.push((record.time, Delivery::Failed));
                    if let Some(start) = started.remove(revision) {
                        failed_at.insert(revision, start);
                    }
                }
                Event::Reverted { revision, .. } => {
                    if let Some(start) = failed_at.remove(revision) {
                        let took = between(start, record.time);
                        stats.restore_times.push(took);
                        stats
                            .outcomes
                            .push((record.time, Delivery::Restored { took }));
                    }
                }
                _ => {}
            }
        }
        if let (Some(first), Some(last)) = (first_rollout, records.last()) {
            stats.span = between(first, last.time);
        }
        stats
    }

    pub fn deployments_per_day(&self) -> Option<f64> {
        let days = self.span.as_secs_f64() / 86_400.0;
        (self.deployments > 0).then(|| self.deployments as f64 / days.max(1.0))
    }

    pub fn change_failure_rate(&self) -> Option<f64> {
        (self.rollouts > 0).then(|| self.failures as f64 / self.rollouts as f64)
    }
}

pub fn human(duration: Option<Duration>) -> String {
    duration.map_or_else(
        || "n/a".to_string(),
        |d| humantime::format_duration(Duration::from_secs(d.as_secs())).to_string(),
    )
}

impl fmt::Display for DeliveryStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let per_day = self
            .deployments_per_day()
            .map_or_else(|| "n/a".into(), |n| format!("{n:.2} per day"));
        writeln!(
            f,
            "  deployment frequency:   {} deployments over {} ({per_day})",
            self.deployments,
            human(Some(self.span))
        )?;
        writeln!(
            f,
            "  lead time:              median {}, mean {} (commit to healthy)",
            human(median(&self.lead_times)),
            human(mean(&self.lead_times))
        )?;
        let rate = self
            .change_failure_rate()
            .map_or_else(|| "n/a".into(), |r| format!("{:.0}%", r * 100.0));
        writeln!(
            f,
            "  change failure rate:    {rate} ({} of {} rollouts failed)",
            self.failures, self.rollouts
        )?;
        writeln!(
            f,
            "  mean time to restore:   {} (failed rollout's start to reverted, {} restores)",
            human(mean(&self.restore_times)),
            self.restore_times.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(minutes: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + minutes * 60, 0)
            .single()
            .expect("valid")
    }

    fn revision(c: char) -> Revision {
        Revision(c.to_string().repeat(40))
    }

    fn record(minutes: i64, event: Event) -> Record {
        Record {
            seq: 0,
            time: at(minutes),
            environment: "staging".into(),
            by: None,
            event,
        }
    }

    fn started(c: char) -> Event {
        Event::RolloutStarted {
            revision: revision(c),
            previous: None,
            steps: vec![100],
            changes: Vec::new(),
            canaries: Vec::new(),
            baseline: Vec::new(),
        }
    }

    #[test]
    fn dora_figures_from_a_journal() {
        let records = [
            record(0, started('a')),
            record(
                10,
                Event::Healthy {
                    revision: revision('a'),
                },
            ),
            record(60, started('b')),
            record(
                70,
                Event::RolloutFailed {
                    revision: revision('b'),
                    reason: "x".into(),
                    cause: None,
                },
            ),
            record(
                75,
                Event::RevertStarted {
                    revision: revision('b'),
                    to: revision('a'),
                    reason: "x".into(),
                    failed: true,
                },
            ),
            record(
                76,
                Event::Reverted {
                    revision: revision('b'),
                    to: revision('a'),
                },
            ),
            record(120, started('c')),
            record(
                150,
                Event::Healthy {
                    revision: revision('c'),
                },
            ),
            // A commit with nothing to roll out is not a deployment.
            record(
                200,
                Event::Healthy {
                    revision: revision('d'),
                },
            ),
        ];
        let committed = |r: &Revision| match r.0.chars().next() {
            Some('a') => Some(at(-20)),
            Some('c') => Some(at(100)),
            _ => None,
        };
        let stats = DeliveryStats::compute(&records, committed);
        assert_eq!(stats.deployments, 2);
        assert_eq!(stats.rollouts, 3);
        assert_eq!(stats.failures, 1);
        assert_eq!(stats.change_failure_rate(), Some(1.0 / 3.0));
        assert_eq!(
            stats.lead_times,
            [Duration::from_secs(30 * 60), Duration::from_secs(50 * 60)]
        );
        assert_eq!(stats.restore_times, [Duration::from_secs(16 * 60)]);
        assert_eq!(stats.span, Duration::from_secs(200 * 60));
        let text = stats.to_string();
        assert!(
            text.contains("change failure rate:    33% (1 of 3 rollouts failed)"),
            "{text}"
        );
        assert!(text.contains("mean time to restore:   16m"), "{text}");
    }
}
