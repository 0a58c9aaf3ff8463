//! Durable per-environment journal: append-only JSON lines, fsynced, torn tail tolerated.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::model::Revision;
use crate::plan::Action;

/// One journal line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// 1-based position in the environment's journal.
    pub seq: u64,
    pub time: DateTime<Utc>,
    pub environment: String,
    #[serde(flatten)]
    pub event: Event,
}

/// A decision or outcome, written before the action it announces is carried out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The revision's manifests are invalid; nothing of it was applied.
    Rejected {
        revision: Revision,
        problems: Vec<String>,
    },
    /// About to apply these changes.
    ReconcileStarted {
        revision: Revision,
        changes: Vec<ChangeRecord>,
    },
    /// Every change of the revision is in place.
    ReconcileFinished {
        revision: Revision,
        changes: Vec<ChangeRecord>,
    },
    /// Applying stopped on an error; the target may hold part of the changes.
    ReconcileFailed {
        revision: Revision,
        applied: usize,
        error: String,
    },
    /// A new revision starts rolling out. `previous` is the last healthy revision, which a
    /// revert returns to; `baseline` is how the objects it touches were marked before.
    RolloutStarted {
        revision: Revision,
        previous: Option<Revision>,
        steps: Vec<u8>,
        changes: Vec<ChangeRecord>,
        /// Deployments that get canaries.
        canaries: Vec<String>,
        baseline: Vec<Baseline>,
    },
    /// A rollout interrupted by a restart goes on from step `step` (its objects are still
    /// there; the step is written again and its bake starts over).
    RolloutResumed { revision: Revision, step: usize },
    /// About to write the objects of a step (weight 100 is the promotion).
    StepStarted {
        revision: Revision,
        step: usize,
        weight: u8,
    },
    /// A canary step stayed ready and healthy for its bake time.
    StepPassed {
        revision: Revision,
        step: usize,
        weight: u8,
    },
    /// The promotion is written and ready; the verify window starts.
    Promoted { revision: Revision },
    /// A check reached its failure threshold.
    CheckFailed {
        revision: Revision,
        check: String,
        detail: String,
    },
    /// The revision failed; it is not applied again unless an operator retries it. `cause`
    /// is short (`CrashLoopBackOff`, `CheckFailed`, `Timeout`, `Rejected`), for metrics.
    RolloutFailed {
        revision: Revision,
        reason: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cause: Option<String>,
    },
    /// The cluster could not take the revision now (unreachable, 5xx, 429, a conflict):
    /// the revision is not blamed and is tried again with backoff.
    Blocked { revision: Revision, reason: String },
    /// What blocked the environment is gone: a pass went through.
    Unblocked { revision: Revision },
    /// An operator cleared the held failure of `revision`, so it rolls out again.
    Retried { revision: Revision },
    /// The branch tip `revision` is not applied: `commit` (the tip, or with `mode = "all"` a
    /// commit before it) is unsigned or not signed by an allowed key.
    VerifyFailed {
        revision: Revision,
        commit: Revision,
        reason: String,
    },
    /// About to put the environment back to `to`. `failed` is false when undoing a rollout
    /// that a restart interrupted.
    RevertStarted {
        revision: Revision,
        to: Revision,
        reason: String,
        failed: bool,
    },
    /// The environment is back at `to`.
    Reverted { revision: Revision, to: Revision },
    /// A commit restoring the environment's folder to the healthy revision was pushed.
    RevertCommitted {
        revision: Revision,
        commit: Revision,
    },
    /// The revision finished its rollout and verify window healthy.
    Healthy { revision: Revision },
    /// An operator paused the environment (`revision`: the branch tip then).
    Paused { revision: Revision },
    /// An operator resumed it; a rollback pin is lifted too.
    Resumed { revision: Revision },
    /// An operator approved `revision` for rollout.
    Approved { revision: Revision },
    /// An operator rolled back to `revision`; it stays pinned while the branch tip is `tip`.
    Pinned { revision: Revision, tip: Revision },
    /// Objects found changed outside git since they were applied were put back: each with
    /// the field paths that no longer held git's values.
    DriftCorrected {
        revision: Revision,
        objects: Vec<DriftRecord>,
    },
    /// Every type the environment has used so far (listed on each pass, so objects of a type a
    /// revision drops entirely are still found and pruned).
    Inventory {
        revision: Revision,
        kinds: Vec<crate::model::KindRef>,
    },
}

/// One object whose drift was put back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftRecord {
    pub object: String,
    /// Field paths (`spec.replicas`, `data.MODE`) that differed from git.
    pub fields: Vec<String>,
}

/// How an object was marked before a rollout touched it (absent: it did not exist).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Baseline {
    pub object: String,
    pub revision: Revision,
    pub hash: String,
}

impl Event {
    pub fn name(&self) -> &'static str {
        match self {
            Event::Rejected { .. } => "rejected",
            Event::ReconcileStarted { .. } => "reconcile_started",
            Event::ReconcileFinished { .. } => "reconcile_finished",
            Event::ReconcileFailed { .. } => "reconcile_failed",
            Event::RolloutStarted { .. } => "rollout_started",
            Event::StepStarted { .. } => "step_started",
            Event::StepPassed { .. } => "step_passed",
            Event::Promoted { .. } => "promoted",
            Event::CheckFailed { .. } => "check_failed",
            Event::RolloutFailed { .. } => "rollout_failed",
            Event::RevertStarted { .. } => "revert_started",
            Event::Reverted { .. } => "reverted",
            Event::RevertCommitted { .. } => "revert_committed",
            Event::Healthy { .. } => "healthy",
            Event::Paused { .. } => "paused",
            Event::Resumed { .. } => "resumed",
            Event::Approved { .. } => "approved",
            Event::Pinned { .. } => "pinned",
            Event::DriftCorrected { .. } => "drift_corrected",
            Event::Inventory { .. } => "inventory",
            Event::Blocked { .. } => "blocked",
            Event::RolloutResumed { .. } => "rollout_resumed",
            Event::Unblocked { .. } => "unblocked",
            Event::Retried { .. } => "retried",
            Event::VerifyFailed { .. } => "verify_failed",
        }
    }

    pub fn revision(&self) -> &Revision {
        match self {
            Event::Rejected { revision, .. }
            | Event::ReconcileStarted { revision, .. }
            | Event::ReconcileFinished { revision, .. }
            | Event::ReconcileFailed { revision, .. }
            | Event::RolloutStarted { revision, .. }
            | Event::StepStarted { revision, .. }
            | Event::StepPassed { revision, .. }
            | Event::Promoted { revision }
            | Event::CheckFailed { revision, .. }
            | Event::RolloutFailed { revision, .. }
            | Event::Blocked { revision, .. }
            | Event::RolloutResumed { revision, .. }
            | Event::Unblocked { revision }
            | Event::Retried { revision }
            | Event::VerifyFailed { revision, .. }
            | Event::RevertStarted { revision, .. }
            | Event::Reverted { revision, .. }
            | Event::RevertCommitted { revision, .. }
            | Event::Healthy { revision }
            | Event::Paused { revision }
            | Event::Resumed { revision }
            | Event::Approved { revision }
            | Event::Pinned { revision, .. }
            | Event::DriftCorrected { revision, .. }
            | Event::Inventory { revision, .. } => revision,
        }
    }
}

/// One planned or applied change, as journaled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeRecord {
    pub action: Action,
    /// The object, as `Kind[.group] [namespace/]name`.
    pub object: String,
    /// Hash of the desired object; none for deletions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
}

#[derive(Debug, Error)]
pub enum JournalError {
    #[error("journal {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("journal {} line {line} is corrupt: {message}", path.display())]
    Corrupt {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("cannot encode journal record: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Records read back from a journal file.
#[derive(Debug, Default)]
pub struct Loaded {
    pub records: Vec<Record>,
    /// Bytes of a torn last line (a write cut short by a crash), ignored.
    pub torn_bytes: usize,
}

/// Reads all whole records. A last line that is unterminated or unparsable is a torn write and
/// is skipped; a bad line anywhere else is corruption and an error.
pub fn load(path: &Path) -> Result<Loaded, JournalError> {
    let text = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Loaded::default());
        }
        Err(source) => {
            return Err(JournalError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let whole_len = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let mut loaded = Loaded {
        records: Vec::new(),
        torn_bytes: text.len() - whole_len,
    };
    let lines: Vec<&[u8]> = text[..whole_len]
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .collect();
    for (index, line) in lines.iter().enumerate() {
        match serde_json::from_slice::<Record>(line) {
            Ok(record) => loaded.records.push(record),
            Err(_) if index + 1 == lines.len() && loaded.torn_bytes == 0 => {
                loaded.torn_bytes = line.len() + 1;
            }
            Err(error) => {
                return Err(JournalError::Corrupt {
                    path: path.to_path_buf(),
                    line: index + 1,
                    message: error.to_string(),
                });
            }
        }
    }
    Ok(loaded)
}

/// A journal shared by an environment's task and the control API; appends are serialized.
#[derive(Debug, Clone)]
pub struct SharedJournal(std::sync::Arc<std::sync::Mutex<Journal>>);

impl SharedJournal {
    pub fn new(journal: Journal) -> Self {
        Self(std::sync::Arc::new(std::sync::Mutex::new(journal)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Journal> {
        // A panic while appending cannot leave a half-written record in memory: the record
        // is pushed only after the write succeeded.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn append(&self, event: Event, now: DateTime<Utc>) -> Result<Record, JournalError> {
        self.lock().append(event, now).cloned()
    }

    /// Runs `read` on the records without copying them.
    pub fn with_records<T>(&self, read: impl FnOnce(&[Record]) -> T) -> T {
        read(self.lock().records())
    }

    pub fn last_rejected_is(&self, revision: &Revision) -> bool {
        self.lock().last_rejected_is(revision)
    }
}

/// An open journal of one environment, ready to append.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    environment: String,
    file: File,
    next_seq: u64,
    records: Vec<Record>,
}

impl Journal {
    /// Path of an environment's journal under the state directory.
    pub fn path_for(state_dir: &Path, environment: &str) -> PathBuf {
        state_dir
            .join("journal")
            .join(format!("{environment}.jsonl"))
    }

    /// Opens (creating if needed) and loads the journal, cutting off a torn last line so the
    /// next record starts on a line of its own.
    pub fn open(state_dir: &Path, environment: &str) -> Result<Self, JournalError> {
        let path = Self::path_for(state_dir, environment);
        let io = |source| JournalError::Io {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io)?;
        }
        let loaded = load(&path)?;
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io)?;
        if loaded.torn_bytes > 0 {
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes).map_err(io)?;
            let keep = bytes.len() - loaded.torn_bytes;
            tracing::warn!(
                journal = %path.display(),
                bytes = loaded.torn_bytes,
                "dropping a torn last journal line left by a crash"
            );
            file.set_len(keep as u64).map_err(io)?;
            file.seek(SeekFrom::End(0)).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        let next_seq = loaded.records.last().map_or(1, |r| r.seq + 1);
        Ok(Self {
            path,
            environment: environment.to_string(),
            file,
            next_seq,
            records: loaded.records,
        })
    }

    /// Appends one record and makes it durable before returning.
    pub fn append(&mut self, event: Event, now: DateTime<Utc>) -> Result<&Record, JournalError> {
        let record = Record {
            seq: self.next_seq,
            time: now,
            environment: self.environment.clone(),
            event,
        };
        let mut line = serde_json::to_vec(&record)?;
        line.push(b'\n');
        let io = |source| JournalError::Io {
            path: self.path.clone(),
            source,
        };
        self.file.write_all(&line).map_err(io)?;
        self.file.sync_data().map_err(io)?;
        self.next_seq += 1;
        self.records.push(record);
        Ok(self.records.last().expect("a record was just pushed"))
    }

    /// Every record, oldest first.
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// The revision of the last finished reconcile.
    pub fn last_applied(&self) -> Option<&Revision> {
        self.records
            .iter()
            .rev()
            .find_map(|record| match &record.event {
                Event::ReconcileFinished { revision, .. } => Some(revision),
                _ => None,
            })
    }

    /// A reconcile that started and has no outcome: the process died while applying.
    pub fn interrupted(&self) -> Option<&Revision> {
        match self.records.last().map(|r| &r.event) {
            Some(Event::ReconcileStarted { revision, .. }) => Some(revision),
            _ => None,
        }
    }

    /// True when the last record already rejects `revision`, so it is not recorded again.
    pub fn last_rejected_is(&self, revision: &Revision) -> bool {
        matches!(
            self.records.last().map(|r| &r.event),
            Some(Event::Rejected { revision: rejected, .. }) if rejected == revision
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revision(c: char) -> Revision {
        Revision(c.to_string().repeat(40))
    }

    fn finished(c: char) -> Event {
        Event::ReconcileFinished {
            revision: revision(c),
            changes: vec![ChangeRecord {
                action: Action::Create,
                object: "ConfigMap default/a".into(),
                hash: Some("h".into()),
            }],
        }
    }

    #[test]
    fn records_survive_reopen_with_increasing_seq() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = Utc::now();
        {
            let mut journal = Journal::open(dir.path(), "staging").expect("open");
            journal.append(finished('a'), now).expect("append");
            journal.append(finished('b'), now).expect("append");
        }
        let journal = Journal::open(dir.path(), "staging").expect("reopen");
        let seqs: Vec<u64> = journal.records().iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [1, 2]);
        assert_eq!(journal.last_applied(), Some(&revision('b')));
    }

    #[test]
    fn torn_last_line_is_ignored_and_cut_before_appending() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = Utc::now();
        {
            let mut journal = Journal::open(dir.path(), "staging").expect("open");
            journal.append(finished('a'), now).expect("append");
        }
        let path = Journal::path_for(dir.path(), "staging");
        let mut file = OpenOptions::new().append(true).open(&path).expect("open");
        file.write_all(br#"{"seq":2,"time":"20"#)
            .expect("write torn tail");
        drop(file);

        assert_eq!(load(&path).expect("loads").records.len(), 1);
        let mut journal = Journal::open(dir.path(), "staging").expect("reopen");
        journal.append(finished('c'), now).expect("append");
        let loaded = load(&path).expect("loads");
        assert_eq!(loaded.torn_bytes, 0);
        assert_eq!(loaded.records.len(), 2);
        assert_eq!(loaded.records[1].seq, 2);
    }

    #[test]
    fn corruption_before_the_last_line_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("j.jsonl");
        fs::write(&path, "garbage\n{}\n").expect("write");
        let error = load(&path).expect_err("corrupt");
        assert!(error.to_string().contains("line 1 is corrupt"), "{error}");
    }

    #[test]
    fn interrupted_reconcile_is_visible() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut journal = Journal::open(dir.path(), "s").expect("open");
        journal
            .append(
                Event::ReconcileStarted {
                    revision: revision('d'),
                    changes: Vec::new(),
                },
                Utc::now(),
            )
            .expect("append");
        assert_eq!(journal.interrupted(), Some(&revision('d')));
    }
}
