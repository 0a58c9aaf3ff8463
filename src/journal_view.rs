//! Renders journal records as text for `gitopsd history` and `gitopsd status`.

use std::io::{self, Write};

use crate::history::History;
use crate::journal::{ChangeRecord, Event, Record};

/// Writes journal records, one line each, with the objects or problems they name indented
/// below.
pub fn write_history(records: &[Record], out: &mut dyn Write) -> io::Result<()> {
    for record in records {
        write_headline(record, out)?;
        write_details(&record.event, out)?;
    }
    Ok(())
}

/// Writes a record's line: time, environment, sequence number, event and revision.
fn write_headline(record: &Record, out: &mut dyn Write) -> io::Result<()> {
    writeln!(
        out,
        "{}  {:<12} #{:<5} {:<18} {}",
        record.time.format("%Y-%m-%dT%H:%M:%SZ"),
        record.environment,
        record.seq,
        record.event.name(),
        record.event.revision().short()
    )?;
    match &record.by {
        Some(by) => writeln!(out, "    by {by}"),
        None => Ok(()),
    }
}

/// Writes the indented lines below a record's line, for events that name more than a
/// revision.
fn write_details(event: &Event, out: &mut dyn Write) -> io::Result<()> {
    match event {
        Event::Rejected { .. }
        | Event::ReconcileStarted { .. }
        | Event::ReconcileFinished { .. }
        | Event::ReconcileFailed { .. }
        | Event::DriftCorrected { .. }
        | Event::Inventory { .. } => write_reconcile_details(event, out),
        Event::RolloutStarted { .. }
        | Event::RolloutResumed { .. }
        | Event::StepStarted { .. }
        | Event::StepPassed { .. }
        | Event::CheckFailed { .. }
        | Event::RolloutFailed { .. }
        | Event::Blocked { .. }
        | Event::VerifyFailed { .. } => write_rollout_details(event, out),
        Event::RevertStarted { .. }
        | Event::Reverted { .. }
        | Event::RevertCommitted { .. }
        | Event::Pinned { .. } => write_revert_details(event, out),
        Event::SwitchedBack { reason, .. } => writeln!(out, "      {reason}"),
        Event::Acquired {
            holder,
            from,
            state,
            ..
        } => {
            let from = from.as_deref().unwrap_or("a released or new Lease");
            let adopted = if state.is_some() {
                "; acting on the cluster's history"
            } else {
                ""
            };
            writeln!(out, "      {holder} from {from}{adopted}")
        }
        Event::HookStarted {
            when, hook, run, ..
        } => match run {
            Some(run) => writeln!(out, "      {when}: {hook} as {run}"),
            None => writeln!(out, "      {when}: {hook}"),
        },
        Event::HookSucceeded {
            when,
            hook,
            duration_ms,
            ..
        } => writeln!(out, "      {when}: {hook} after {}", seconds(*duration_ms)),
        Event::HookFailed {
            when,
            hook,
            duration_ms,
            message,
            ..
        } => writeln!(
            out,
            "      {when}: {hook} after {}: {message}",
            seconds(*duration_ms)
        ),
        Event::Promoted { .. }
        | Event::PreviewStarted { .. }
        | Event::AwaitingApproval { .. }
        | Event::Switched { .. }
        | Event::ScaledDown { .. }
        | Event::Healthy { .. }
        | Event::Paused { .. }
        | Event::Resumed { .. }
        | Event::Approved { .. }
        | Event::Unblocked { .. }
        | Event::Retried { .. } => Ok(()),
    }
}

/// Details of a reconcile: problems, changes, the error, drift put back, types used.
fn write_reconcile_details(event: &Event, out: &mut dyn Write) -> io::Result<()> {
    match event {
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
        // `write_details` sends only reconcile events here.
        _ => {}
    }
    Ok(())
}

/// Details of a rollout: its plan, steps, failing checks, and why it failed or was held.
fn write_rollout_details(event: &Event, out: &mut dyn Write) -> io::Result<()> {
    match event {
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
        // `write_details` sends only rollout events here.
        _ => {}
    }
    Ok(())
}

/// Details of a revert: where it goes and why, the commit pushed, an operator's pin.
fn write_revert_details(event: &Event, out: &mut dyn Write) -> io::Result<()> {
    match event {
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
        // `write_details` sends only revert events here.
        _ => {}
    }
    Ok(())
}

/// A hook's duration as `25ms` or `1.2s`.
fn seconds(duration_ms: u64) -> String {
    if duration_ms < 1000 {
        format!("{duration_ms}ms")
    } else {
        format!("{:.1}s", duration_ms as f64 / 1000.0)
    }
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

/// The last hook run and how it ended, for `status`.
fn write_last_hook(history: &History, out: &mut dyn Write) -> io::Result<()> {
    if let Some(hook) = &history.last_hook {
        let outcome = match (hook.state, hook.duration_ms, &hook.message) {
            (crate::hooks::HookState::Running, _, _) => "running".to_string(),
            (crate::hooks::HookState::Succeeded, duration, _) => {
                format!("succeeded after {}", seconds(duration.unwrap_or(0)))
            }
            (crate::hooks::HookState::Failed, duration, message) => format!(
                "failed after {}: {}",
                seconds(duration.unwrap_or(0)),
                message.as_deref().unwrap_or("")
            ),
        };
        writeln!(
            out,
            "  last hook:              {} {} of {}: {outcome}",
            hook.when,
            hook.hook,
            hook.revision.short()
        )?;
    }
    Ok(())
}

/// Where a rollout in flight stands: its blue/green phase or canary step.
fn flight_step(environment: &str, flight: &crate::history::InFlight) -> String {
    match (&flight.phase, flight.step) {
        (Some(phase), _) if phase == "awaiting approval" && !flight.switch_approved => format!(
            "blue-green: awaiting approval of the switch (gitopsd approve --env {environment} {})",
            flight.revision.short()
        ),
        (Some(phase), _) => format!("blue-green: {phase}"),
        (None, Some((index, weight))) => format!("step {} ({weight}%)", index + 1),
        (None, None) => "starting".to_string(),
    }
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
        (None, Some(flight)) => writeln!(
            out,
            "  in flight:              {} {}",
            flight.revision.short(),
            flight_step(environment, flight)
        )?,
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
    write_last_hook(history, out)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::DriftRecord;
    use crate::model::{Action, Revision};
    use chrono::{TimeZone, Utc};

    fn revision(c: char) -> Revision {
        Revision(c.to_string().repeat(40))
    }

    fn record(seq: u64, event: Event) -> Record {
        Record {
            seq,
            time: Utc
                .timestamp_opt(1_800_000_000 + seq as i64, 0)
                .single()
                .expect("valid timestamp"),
            environment: "staging".into(),
            by: None,
            event,
        }
    }

    #[test]
    fn history_lines_name_the_event_and_indent_what_it_carries() {
        let records = [
            record(
                1,
                Event::RolloutStarted {
                    revision: revision('a'),
                    previous: None,
                    steps: vec![10, 100],
                    changes: vec![ChangeRecord {
                        action: Action::Update,
                        object: "Deployment.apps shop/web".into(),
                        hash: None,
                    }],
                    canaries: vec!["Deployment.apps shop/web".into()],
                    baseline: Vec::new(),
                },
            ),
            record(
                2,
                Event::RolloutFailed {
                    revision: revision('a'),
                    reason: "slow".into(),
                    cause: Some("Timeout".into()),
                },
            ),
            record(
                3,
                Event::Healthy {
                    revision: revision('b'),
                },
            ),
            record(
                4,
                Event::Pinned {
                    revision: revision('b'),
                    tip: revision('c'),
                },
            ),
            record(
                5,
                Event::DriftCorrected {
                    revision: revision('b'),
                    objects: vec![DriftRecord {
                        object: "ConfigMap shop/web".into(),
                        fields: vec!["data.MODE".into(), "data.LEVEL".into()],
                    }],
                },
            ),
        ];
        let mut out = Vec::new();
        write_history(&records, &mut out).expect("writes to memory");
        let a = "a".repeat(12);
        let b = "b".repeat(12);
        let c = "c".repeat(12);
        let expected = [
            format!("2027-01-15T08:00:01Z  staging      #1     rollout_started    {a}"),
            "      from nothing (first deploy), steps 10% → 100%".to_string(),
            "      canary for Deployment.apps shop/web".to_string(),
            "      ~ update Deployment.apps shop/web".to_string(),
            format!("2027-01-15T08:00:02Z  staging      #2     rollout_failed     {a}"),
            "      Timeout: slow".to_string(),
            format!("2027-01-15T08:00:03Z  staging      #3     healthy            {b}"),
            format!("2027-01-15T08:00:04Z  staging      #4     pinned             {b}"),
            format!("      pinned until a commit after {c} or a resume"),
            format!("2027-01-15T08:00:05Z  staging      #5     drift_corrected    {b}"),
            "      ~ ConfigMap shop/web (data.MODE, data.LEVEL)".to_string(),
        ];
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            expected.map(|line| line + "\n").concat()
        );
    }
}
