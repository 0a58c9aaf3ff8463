//! Renders journal records as text for `gitopsd history` and `gitopsd status`.

use std::io::{self, Write};

use crate::history::History;
use crate::journal::{ChangeRecord, Event, Record};

/// Writes journal records, one line each, with the objects or problems they name indented
/// below.
pub fn write_history(records: &[Record], out: &mut dyn Write) -> io::Result<()> {
    for record in records {
        writeln!(
            out,
            "{}  {:<12} #{:<5} {:<18} {}",
            record.time.format("%Y-%m-%dT%H:%M:%SZ"),
            record.environment,
            record.seq,
            record.event.name(),
            record.event.revision().short()
        )?;
        match &record.event {
            Event::Rejected { problems, .. } => {
                for problem in problems {
                    writeln!(out, "      {problem}")?;
                }
            }
            Event::ReconcileStarted { changes, .. } | Event::ReconcileFinished { changes, .. } => {
                write_changes(changes, out)?;
            }
            Event::ReconcileFailed { applied, error, .. } => {
                writeln!(out, "      after {applied} changes: {error}")?;
            }
            Event::RolloutStarted {
                previous,
                steps,
                changes,
                canaries,
                ..
            } => {
                let from = previous
                    .as_ref()
                    .map_or("nothing (first deploy)", |p| p.short());
                let steps: Vec<String> = steps.iter().map(|w| format!("{w}%")).collect();
                writeln!(out, "      from {from}, steps {}", steps.join(" → "))?;
                for canary in canaries {
                    writeln!(out, "      canary for {canary}")?;
                }
                write_changes(changes, out)?;
            }
            Event::RolloutResumed { step, .. } => {
                writeln!(out, "      after a restart, from step {}", step + 1)?;
            }
            Event::StepStarted { step, weight, .. } | Event::StepPassed { step, weight, .. } => {
                writeln!(out, "      step {} ({weight}%)", step + 1)?;
            }
            Event::CheckFailed { check, detail, .. } => {
                writeln!(out, "      {check}: {detail}")?;
            }
            Event::RolloutFailed { reason, cause, .. } => match cause {
                Some(cause) => writeln!(out, "      {cause}: {reason}")?,
                None => writeln!(out, "      {reason}")?,
            },
            Event::Blocked { reason, .. } => writeln!(out, "      {reason}")?,
            Event::VerifyFailed { reason, .. } => writeln!(out, "      {reason}")?,
            Event::RevertStarted { to, reason, .. } => {
                writeln!(out, "      back to {}: {reason}", to.short())?;
            }
            Event::Reverted { to, .. } => writeln!(out, "      at {}", to.short())?,
            Event::RevertCommitted { commit, .. } => {
                writeln!(out, "      pushed revert commit {}", commit.short())?;
            }
            Event::Pinned { tip, .. } => {
                writeln!(
                    out,
                    "      pinned until a commit after {} or a resume",
                    tip.short()
                )?;
            }
            Event::DriftCorrected { objects, .. } => {
                for object in objects {
                    writeln!(
                        out,
                        "      ~ {} ({})",
                        object.object,
                        object.fields.join(", ")
                    )?;
                }
            }
            Event::Inventory { kinds, .. } => {
                let kinds: Vec<String> = kinds.iter().map(ToString::to_string).collect();
                writeln!(out, "      types: {}", kinds.join(", "))?;
            }
            Event::Promoted { .. }
            | Event::Healthy { .. }
            | Event::Paused { .. }
            | Event::Resumed { .. }
            | Event::Approved { .. }
            | Event::Unblocked { .. }
            | Event::Retried { .. } => {}
        }
    }
    Ok(())
}

fn write_changes(changes: &[ChangeRecord], out: &mut dyn Write) -> io::Result<()> {
    for change in changes {
        writeln!(
            out,
            "      {} {} {}",
            change.action.sign(),
            change.action.verb(),
            change.object
        )?;
    }
    Ok(())
}

/// Writes one environment's status, as its journal tells it.
pub fn write_status(environment: &str, history: &History, out: &mut dyn Write) -> io::Result<()> {
    let short = |revision: Option<&crate::model::Revision>| {
        revision.map_or_else(|| "none".to_string(), |r| r.short().to_string())
    };
    writeln!(out, "{environment}")?;
    writeln!(
        out,
        "  current revision:       {}",
        short(history.current.as_ref())
    )?;
    writeln!(
        out,
        "  last healthy revision:  {}",
        short(history.last_healthy.as_ref())
    )?;
    match (&history.reverting, &history.in_flight) {
        (Some(revert), _) => writeln!(
            out,
            "  in flight:              revert of {} to {}",
            revert.revision.short(),
            revert.to.short()
        )?,
        (None, Some(flight)) => {
            let step = flight.step.map_or_else(
                || "starting".to_string(),
                |(index, weight)| format!("step {} ({weight}%)", index + 1),
            );
            writeln!(
                out,
                "  in flight:              {} {step}",
                flight.revision.short()
            )?;
        }
        (None, None) => writeln!(out, "  in flight:              nothing")?,
    }
    let failing = history
        .in_flight
        .as_ref()
        .map(|flight| flight.failing_checks.clone())
        .unwrap_or_default();
    if failing.is_empty() {
        writeln!(out, "  failing checks:         none")?;
    } else {
        for (check, detail) in failing {
            writeln!(out, "  failing check:          {check}: {detail}")?;
        }
    }
    if let Some((revision, reason)) = &history.unverified {
        writeln!(
            out,
            "  refused tip:            {} ({reason}); staying at the last verified revision",
            revision.short()
        )?;
    }
    if let Some((revision, reason)) = &history.blocked {
        writeln!(
            out,
            "  blocked: {reason} (revision {} is not blamed; retried with backoff)",
            revision.short()
        )?;
    }
    if let Some(failure) = &history.last_failure {
        let held = if history.failed.contains(&failure.revision) {
            "held; gitopsd retry rolls it out again"
        } else {
            "retried"
        };
        writeln!(
            out,
            "  last failed revision:   {} ({held}): {}",
            failure.revision.short(),
            failure.reason
        )?;
    }
    Ok(())
}
