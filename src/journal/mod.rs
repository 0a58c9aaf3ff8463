//! Durable per-environment journal: append-only JSON lines, fsynced, torn tail tolerated.
// journal files: the blocking side of the I/O boundary; `SharedJournal` appends through `crate::blocking::run`.
#![allow(clippy::disallowed_methods)]

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::history::History;
use crate::model::Revision;

pub mod records;

pub use records::{Baseline, ChangeRecord, DriftRecord, Event, Record};

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
    /// `[ha]`: this daemon does not hold the environment's Lease, so it journals no decision.
    #[error("not journaled: {0}")]
    Fenced(String),
}

/// The first line of a compacted journal: the history folded from every record moved to a
/// segment, up to and including `seq`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SnapshotLine {
    // First, so that a snapshot line is told from a record by its opening bytes.
    snapshot: History,
    seq: u64,
    time: DateTime<Utc>,
    environment: String,
}

/// How a snapshot line starts.
const SNAPSHOT_PREFIX: &[u8] = br#"{"snapshot":"#;

/// Records read back from a journal file.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The history of the records compacted away, when the file starts with a snapshot.
    pub snapshot: Option<History>,
    /// Seq of the last record the snapshot holds (0 without one).
    pub snapshot_seq: u64,
    /// Whole records after the snapshot.
    pub records: Vec<Record>,
    /// Bytes of a torn last line (a write cut short by a crash), ignored.
    pub torn_bytes: usize,
}

impl Loaded {
    /// The environment's whole history: the snapshot's, with the records after it folded in.
    pub fn history(&self) -> History {
        let mut history = self.snapshot.clone().unwrap_or_default();
        for record in &self.records {
            history.apply(&record.event);
        }
        history
    }
}

/// Reads the active journal file: a snapshot (after a compaction) and the whole records after
/// it. A last line that is unterminated or unparsable is a torn write and is skipped; a bad
/// line anywhere else is corruption and an error.
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
        torn_bytes: text.len() - whole_len,
        ..Loaded::default()
    };
    let lines: Vec<&[u8]> = text[..whole_len]
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .collect();
    let corrupt = |line: usize, error: serde_json::Error| JournalError::Corrupt {
        path: path.to_path_buf(),
        line,
        message: error.to_string(),
    };
    for (index, line) in lines.iter().enumerate() {
        if index == 0 && line.starts_with(SNAPSHOT_PREFIX) {
            let snapshot: SnapshotLine = serde_json::from_slice(line).map_err(|e| corrupt(1, e))?;
            loaded.snapshot_seq = snapshot.seq;
            loaded.snapshot = Some(snapshot.snapshot);
            continue;
        }
        match serde_json::from_slice::<Record>(line) {
            Ok(record) => loaded.records.push(record),
            Err(_) if index + 1 == lines.len() && loaded.torn_bytes == 0 => {
                loaded.torn_bytes = line.len() + 1;
            }
            Err(error) => return Err(corrupt(index + 1, error)),
        }
    }
    Ok(loaded)
}

/// The environment's history as its active journal file tells it (snapshot and tail).
pub fn load_history(path: &Path) -> Result<History, JournalError> {
    load(path).map(|loaded| loaded.history())
}

/// Every record of an environment, oldest first: the compacted segments, then the active
/// file. A record found twice (a compaction cut short after writing its segment) counts once.
pub fn load_all(state_dir: &Path, environment: &str) -> Result<Vec<Record>, JournalError> {
    let dir = Journal::segments_for(state_dir, environment);
    let mut segments = Vec::new();
    match fs::read_dir(&dir) {
        Ok(entries) => {
            for entry in entries {
                let path = entry
                    .map_err(|source| JournalError::Io {
                        path: dir.clone(),
                        source,
                    })?
                    .path();
                if path.extension().is_some_and(|ext| ext == "jsonl") {
                    segments.push(path);
                }
            }
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(JournalError::Io { path: dir, source }),
    }
    // Named by their first seq, zero-padded: name order is seq order.
    segments.sort();
    segments.push(Journal::path_for(state_dir, environment));
    let mut records: Vec<Record> = Vec::new();
    for path in segments {
        for record in load(&path)?.records {
            if records.last().is_none_or(|last| record.seq > last.seq) {
                records.push(record);
            }
        }
    }
    Ok(records)
}

/// A journal shared by an environment's task and the control API. Appends are serialized by
/// the writer's lock, which is held across the fsync; readers never take it: they read a view
/// that is updated in memory once each append is durable.
#[derive(Debug, Clone)]
pub struct SharedJournal {
    writer: std::sync::Arc<std::sync::Mutex<Journal>>,
    view: std::sync::Arc<std::sync::RwLock<View>>,
    /// The seq of the next record, sent after each durable append (what live pages wait on).
    appended: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
}

/// What readers see of a journal: its history and position, as of the last durable append.
#[derive(Debug, Clone)]
struct View {
    history: History,
    next_seq: u64,
    last_rejected: Option<Revision>,
}

impl View {
    fn of(journal: &Journal) -> Self {
        Self {
            history: journal.history().clone(),
            next_seq: journal.next_seq,
            last_rejected: journal.last_rejected().cloned(),
        }
    }
}

impl SharedJournal {
    pub fn new(journal: Journal) -> Self {
        let view = View::of(&journal);
        let (appended, _) = tokio::sync::watch::channel(view.next_seq);
        Self {
            writer: std::sync::Arc::new(std::sync::Mutex::new(journal)),
            view: std::sync::Arc::new(std::sync::RwLock::new(view)),
            appended: std::sync::Arc::new(appended),
        }
    }

    fn view(&self) -> std::sync::RwLockReadGuard<'_, View> {
        // The view is replaced whole under the lock: a panic elsewhere cannot leave it torn.
        self.view
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends and fsyncs (and compacts when due), off the async worker's other tasks; then
    /// shows the record to readers.
    pub fn append(&self, event: Event, now: DateTime<Utc>) -> Result<Record, JournalError> {
        self.append_by(event, now, None)
    }

    /// [`SharedJournal::append`] of an operator's action, with who asked for it.
    pub fn append_by(
        &self,
        event: Event,
        now: DateTime<Utc>,
        by: Option<String>,
    ) -> Result<Record, JournalError> {
        let record = crate::blocking::run(|| {
            // A panic while appending cannot leave a half-written record in memory: the
            // record is folded in only after the write succeeded.
            let mut journal = self
                .writer
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let record = journal.append_by(event, now, by)?;
            // The same fold as the journal's own, so readers see what it sees.
            let mut view = self
                .view
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            view.history.apply(&record.event);
            view.next_seq = journal.next_seq;
            view.last_rejected = journal.last_rejected().cloned();
            Ok::<_, JournalError>(record)
        })?;
        self.appended.send_replace(record.seq + 1);
        Ok(record)
    }

    /// Told the next seq after each append.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.appended.subscribe()
    }

    /// Runs `read` on the environment's history, folded as records were appended.
    pub fn with_history<T>(&self, read: impl FnOnce(&History) -> T) -> T {
        read(&self.view().history)
    }

    /// True when the last record already rejects `revision`, so it is not recorded again.
    pub fn last_rejected_is(&self, revision: &Revision) -> bool {
        self.view().last_rejected.as_ref() == Some(revision)
    }

    /// Seq the next record gets: changes whenever anything is journaled.
    pub fn next_seq(&self) -> u64 {
        self.view().next_seq
    }
}

/// When the active journal file is compacted (`[state]` journal keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compaction {
    /// Compact once the active file is larger than this.
    pub max_bytes: u64,
    /// Compact once its oldest record is older than this.
    pub max_age: std::time::Duration,
    /// Records kept in the active file after the snapshot.
    pub keep_records: usize,
}

impl Default for Compaction {
    fn default() -> Self {
        Self {
            max_bytes: 16 * 1024 * 1024,
            max_age: std::time::Duration::from_secs(90 * 24 * 3600),
            keep_records: 1000,
        }
    }
}

/// An open journal of one environment, ready to append. Only the folded history and the last
/// record are held in memory; `load_all` reads every record back.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    segments: PathBuf,
    environment: String,
    file: File,
    next_seq: u64,
    history: History,
    last: Option<Record>,
    compaction: Compaction,
    /// Size of the active file.
    bytes: u64,
    /// Records after the snapshot in the active file, and the time of the oldest.
    active_records: usize,
    oldest: Option<DateTime<Utc>>,
}

impl Journal {
    /// Path of an environment's journal under the state directory.
    pub fn path_for(state_dir: &Path, environment: &str) -> PathBuf {
        state_dir
            .join("journal")
            .join(format!("{environment}.jsonl"))
    }

    /// Folder of an environment's compacted segments.
    pub fn segments_for(state_dir: &Path, environment: &str) -> PathBuf {
        state_dir
            .join("journal")
            .join(format!("{environment}.segments"))
    }

    /// Opens with the default compaction settings.
    pub fn open(state_dir: &Path, environment: &str) -> Result<Self, JournalError> {
        Self::open_with(state_dir, environment, Compaction::default())
    }

    /// Opens (creating if needed) and loads the journal, cutting off a torn last line so the
    /// next record starts on a line of its own, and removing what a compaction cut short
    /// left behind.
    pub fn open_with(
        state_dir: &Path,
        environment: &str,
        compaction: Compaction,
    ) -> Result<Self, JournalError> {
        let path = Self::path_for(state_dir, environment);
        let segments = Self::segments_for(state_dir, environment);
        let io = |source| JournalError::Io {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io)?;
        }
        remove_temporaries(path.parent().unwrap_or(state_dir)).map_err(io)?;
        remove_temporaries(&segments).map_err(io)?;
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
        let bytes = file.metadata().map_err(io)?.len();
        let history = loaded.history();
        let next_seq = loaded.records.last().map_or(loaded.snapshot_seq, |r| r.seq) + 1;
        Ok(Self {
            path,
            segments,
            environment: environment.to_string(),
            file,
            next_seq,
            history,
            active_records: loaded.records.len(),
            oldest: loaded.records.first().map(|r| r.time),
            last: loaded.records.into_iter().last(),
            compaction,
            bytes,
        })
    }

    /// Appends one record and makes it durable before returning; then compacts the file if it
    /// has grown past its size or age.
    pub fn append(&mut self, event: Event, now: DateTime<Utc>) -> Result<Record, JournalError> {
        self.append_by(event, now, None)
    }

    /// [`Journal::append`] of an operator's action, with who asked for it.
    pub fn append_by(
        &mut self,
        event: Event,
        now: DateTime<Utc>,
        by: Option<String>,
    ) -> Result<Record, JournalError> {
        let record = Record {
            seq: self.next_seq,
            time: now,
            environment: self.environment.clone(),
            by,
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
        self.bytes += line.len() as u64;
        self.active_records += 1;
        self.oldest.get_or_insert(now);
        self.history.apply(&record.event);
        self.last = Some(record.clone());
        if self.due(now) {
            self.compact(now)?;
        }
        Ok(record)
    }

    fn due(&self, now: DateTime<Utc>) -> bool {
        if self.active_records <= self.compaction.keep_records {
            return false;
        }
        let old = self.oldest.is_some_and(|oldest| {
            (now - oldest)
                .to_std()
                .is_ok_and(|age| age > self.compaction.max_age)
        });
        self.bytes > self.compaction.max_bytes || old
    }

    /// Moves every record but the newest `keep_records` to a segment file, and rewrites the
    /// active file as a snapshot of their history followed by the records kept. Each file is
    /// written whole (temp, fsync, rename, fsync of the folder): a crash at any point leaves
    /// the old active file or the new one, and at worst a segment whose records the active
    /// file also holds (read once by [`load_all`]).
    pub fn compact(&mut self, now: DateTime<Utc>) -> Result<(), JournalError> {
        let loaded = load(&self.path)?;
        let split = loaded
            .records
            .len()
            .saturating_sub(self.compaction.keep_records.max(1));
        if split == 0 {
            return Ok(());
        }
        let (moved, kept) = loaded.records.split_at(split);
        let mut snapshot = loaded.snapshot.clone().unwrap_or_default();
        for record in moved {
            snapshot.apply(&record.event);
        }
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| JournalError::Io { path, source }
        };
        fs::create_dir_all(&self.segments).map_err(io(&self.segments))?;
        let segment = self.segments.join(format!("{:012}.jsonl", moved[0].seq));
        let mut text = Vec::new();
        for record in moved {
            serde_json::to_writer(&mut text, record)?;
            text.push(b'\n');
        }
        crate::durable::write_whole(&segment, &text).map_err(io(&segment))?;

        let mut text = Vec::new();
        serde_json::to_writer(
            &mut text,
            &SnapshotLine {
                snapshot,
                seq: moved[moved.len() - 1].seq,
                time: now,
                environment: self.environment.clone(),
            },
        )?;
        text.push(b'\n');
        for record in kept {
            serde_json::to_writer(&mut text, record)?;
            text.push(b'\n');
        }
        crate::durable::write_whole(&self.path, &text).map_err(io(&self.path))?;
        self.file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(io(&self.path))?;
        self.bytes = text.len() as u64;
        self.active_records = kept.len();
        self.oldest = kept.first().map(|r| r.time);
        tracing::info!(
            journal = %self.path.display(),
            moved = moved.len(),
            kept = kept.len(),
            segment = %segment.display(),
            "journal compacted"
        );
        Ok(())
    }

    /// The environment's history, folded from every record.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// True when the last record already rejects `revision`, so it is not recorded again.
    pub fn last_rejected_is(&self, revision: &Revision) -> bool {
        self.last_rejected() == Some(revision)
    }

    /// The revision the last record rejects, if it is a rejection.
    fn last_rejected(&self) -> Option<&Revision> {
        match self.last.as_ref().map(|r| &r.event) {
            Some(Event::Rejected { revision, .. }) => Some(revision),
            _ => None,
        }
    }
}

/// Removes `*.tmp` files a compaction cut short left in `dir`.
fn remove_temporaries(dir: &Path) -> std::io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "tmp") {
            fs::remove_file(&path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Action;

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
        let mut journal = Journal::open(dir.path(), "staging").expect("reopen");
        assert_eq!(journal.append(finished('c'), now).expect("append").seq, 3);
        let records = load_all(dir.path(), "staging").expect("loads");
        let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [1, 2, 3]);
    }

    #[test]
    fn readers_are_not_held_up_while_an_append_holds_the_writer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shared = SharedJournal::new(Journal::open(dir.path(), "staging").expect("open"));
        shared
            .append(
                Event::Healthy {
                    revision: revision('a'),
                },
                Utc::now(),
            )
            .expect("append");
        // As an append in the middle of its fsync would.
        let writing = shared.writer.lock().expect("not poisoned");
        let (answer, answered) = std::sync::mpsc::channel();
        let reader = shared.clone();
        std::thread::spawn(move || {
            let read = (
                reader.with_history(|history| history.last_healthy.clone()),
                reader.next_seq(),
                reader.last_rejected_is(&revision('a')),
            );
            answer.send(read).expect("the test waits");
        });
        let read = answered
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the reader answers while the writer is held");
        assert_eq!(read, (Some(revision('a')), 2, false));
        drop(writing);
    }

    #[test]
    fn readers_see_the_history_the_journal_folds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shared = SharedJournal::new(Journal::open(dir.path(), "staging").expect("open"));
        let events = [
            Event::Healthy {
                revision: revision('a'),
            },
            Event::Rejected {
                revision: revision('b'),
                problems: vec!["bad".into()],
            },
            finished('a'),
            Event::Paused {
                revision: revision('a'),
            },
        ];
        for event in events {
            shared.append(event, Utc::now()).expect("append");
        }
        let folded = load_history(&Journal::path_for(dir.path(), "staging")).expect("loads");
        assert_eq!(shared.with_history(History::clone), folded);
        assert_eq!(shared.next_seq(), 5);
        assert!(
            !shared.last_rejected_is(&revision('b')),
            "a later record followed"
        );
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

    fn healthy(c: char) -> Event {
        Event::Healthy {
            revision: revision(c),
        }
    }

    fn settings(keep_records: usize) -> Compaction {
        Compaction {
            max_bytes: 1,
            max_age: std::time::Duration::from_secs(3600),
            keep_records,
        }
    }

    /// Appends `count` rollouts' worth of records, alternating revisions.
    fn fill(journal: &mut Journal, count: usize, now: DateTime<Utc>) {
        for index in 0..count {
            let c = if index % 2 == 0 { 'a' } else { 'b' };
            journal.append(finished(c), now).expect("append");
            journal.append(healthy(c), now).expect("append");
        }
    }

    #[test]
    fn compaction_moves_old_records_to_segments_and_keeps_history_and_every_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = Utc::now();
        let mut plain = Journal::open(dir.path(), "plain").expect("open");
        fill(&mut plain, 10, now);
        let mut compacted = Journal::open_with(dir.path(), "small", settings(3)).expect("open");
        fill(&mut compacted, 10, now);

        let active = load(&Journal::path_for(dir.path(), "small")).expect("loads");
        assert!(active.snapshot.is_some());
        assert_eq!(
            active.records.len(),
            3,
            "only the newest records stay active"
        );
        assert_eq!(compacted.history(), plain.history());
        assert_eq!(active.history(), *plain.history());
        let all: Vec<(u64, Event)> = load_all(dir.path(), "small")
            .expect("loads")
            .into_iter()
            .map(|r| (r.seq, r.event))
            .collect();
        let expected: Vec<(u64, Event)> = load_all(dir.path(), "plain")
            .expect("loads")
            .into_iter()
            .map(|r| (r.seq, r.event))
            .collect();
        assert_eq!(all, expected);

        let reopened = Journal::open_with(dir.path(), "small", settings(3)).expect("reopen");
        assert_eq!(reopened.history(), plain.history());
        assert_eq!(reopened.next_seq, 21);
    }

    #[test]
    fn a_compaction_cut_short_loses_nothing_and_counts_nothing_twice() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = Utc::now();
        let mut journal = Journal::open(dir.path(), "s").expect("open");
        fill(&mut journal, 5, now);
        let path = Journal::path_for(dir.path(), "s");
        let before = fs::read(&path).expect("read");
        let expected = load_all(dir.path(), "s").expect("loads");
        drop(journal);

        // Killed after the segment was renamed into place, before the active file was.
        let mut journal = Journal::open_with(dir.path(), "s", settings(2)).expect("open");
        journal.compact(now).expect("compact");
        drop(journal);
        fs::write(&path, &before).expect("put the old active file back");
        assert_eq!(load_all(dir.path(), "s").expect("loads"), expected);
        // Killed while writing temporaries: they are ignored and removed.
        let segments = Journal::segments_for(dir.path(), "s");
        fs::write(segments.join("000000000009.jsonl.tmp"), b"{\"seq\":9,").expect("tmp");
        fs::write(path.with_extension("jsonl.tmp"), b"{\"snap").expect("tmp");
        assert_eq!(load_all(dir.path(), "s").expect("loads"), expected);
        let mut journal = Journal::open_with(dir.path(), "s", settings(2)).expect("reopen");
        assert!(!segments.join("000000000009.jsonl.tmp").exists());
        assert!(!path.with_extension("jsonl.tmp").exists());
        assert_eq!(
            *journal.history(),
            History::from_records(&expected),
            "the history is whole"
        );
        // The next compaction rewrites the same segment with more records.
        journal.append(finished('c'), now).expect("append");
        let all = load_all(dir.path(), "s").expect("loads");
        assert_eq!(all.len(), expected.len() + 1);
        assert_eq!(all[..expected.len()], expected[..]);
    }

    #[test]
    fn old_records_are_compacted_by_age_even_when_the_file_is_small() {
        let dir = tempfile::tempdir().expect("tempdir");
        let start = Utc::now();
        let settings = Compaction {
            max_bytes: u64::MAX,
            max_age: std::time::Duration::from_secs(3600),
            keep_records: 2,
        };
        let mut journal = Journal::open_with(dir.path(), "s", settings).expect("open");
        fill(&mut journal, 3, start);
        let path = Journal::path_for(dir.path(), "s");
        assert!(
            load(&path).expect("loads").snapshot.is_none(),
            "young: kept"
        );
        journal
            .append(healthy('a'), start + chrono::Duration::hours(2))
            .expect("append");
        let active = load(&path).expect("loads");
        assert!(active.snapshot.is_some());
        assert_eq!(active.records.len(), 2);
    }
}
