//! What the pages read: each environment's journal (cached until it grows), commit subjects
//! (cached by id), and the redacted diff of the revision shown (cached by its two ends). Git
//! and file work runs on the blocking pool.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use crate::history::History;
use crate::journal::{self, Event, Record};
use crate::model::Revision;
use crate::plan::Desired;
use crate::report::{DiffReport, EnvironmentReport, ReportInput};
use crate::server::{Controls, EnvironmentHandle};
use crate::source::{CommitSummary, GitSource};

/// Diffs and commit summaries kept at most; the cache is emptied when full.
const MAX_CACHED: usize = 512;

/// An environment as a page sees it at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub name: String,
    pub handle: EnvironmentHandle,
    pub history: History,
    pub records: Arc<Vec<Record>>,
    pub waiting: Option<(Revision, String)>,
    pub cache_syncing: bool,
}

/// The diff of the revision an environment page shows: its text lines, or why there is none.
#[derive(Debug, Clone)]
pub struct Changes {
    pub from: Revision,
    pub to: Revision,
    pub report: Result<EnvironmentReport, String>,
    /// Replicas of each canaried Deployment in the revision (name, replicas, the manifest sets them).
    pub replicas: Vec<(String, u32, bool)>,
}

/// Each environment's journal records, with the next seq they were read at.
type RecordsCache = HashMap<String, (u64, Arc<Vec<Record>>)>;

/// Caches shared by every request.
#[derive(Debug, Default)]
pub struct Caches {
    records: Mutex<RecordsCache>,
    commits: Mutex<HashMap<Revision, Option<CommitSummary>>>,
    diffs: Mutex<HashMap<(String, Revision, Revision), Arc<Changes>>>,
}

fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Caches {
    /// The environment's journal records, read again only when it has grown.
    pub async fn records(&self, source: &GitSource, name: &str, seq: u64) -> Arc<Vec<Record>> {
        if let Some((cached, records)) = locked(&self.records).get(name)
            && *cached == seq
        {
            return records.clone();
        }
        let (dir, env) = (source.state_dir().to_path_buf(), name.to_string());
        let read =
            crate::blocking::off_thread("reading a journal", move || journal::load_all(&dir, &env))
                .await;
        let records = match read {
            Ok(Ok(records)) => Arc::new(records),
            Ok(Err(error)) => {
                tracing::warn!(env = %name, %error, "status page: cannot read the journal");
                Arc::new(Vec::new())
            }
            Err(stopped) => {
                tracing::warn!(env = %name, %stopped, "status page: journal read stopped");
                Arc::new(Vec::new())
            }
        };
        locked(&self.records).insert(name.to_string(), (seq, records.clone()));
        records
    }

    /// Subject, author and time of each revision (unknown ones are `None`).
    pub async fn commits(
        &self,
        source: &GitSource,
        revisions: impl IntoIterator<Item = Revision>,
    ) -> BTreeMap<Revision, Option<CommitSummary>> {
        let mut found = BTreeMap::new();
        let mut missing = Vec::new();
        {
            let cache = locked(&self.commits);
            for revision in revisions {
                match cache.get(&revision) {
                    Some(summary) => {
                        found.insert(revision, summary.clone());
                    }
                    None => missing.push(revision),
                }
            }
        }
        if missing.is_empty() {
            return found;
        }
        let read = source.commit_summaries_off_thread(missing).await;
        let mut cache = locked(&self.commits);
        if cache.len() > MAX_CACHED {
            cache.clear();
        }
        for (revision, summary) in read {
            // Unknown commits may arrive with a fetch: only found ones are kept.
            if summary.is_some() {
                cache.insert(revision.clone(), summary.clone());
            }
            found.insert(revision, summary);
        }
        found
    }

    /// What `to` changes from `from` in the environment, as `gitopsd diff --against` shows it.
    pub async fn changes(
        &self,
        source: &GitSource,
        handle: &EnvironmentHandle,
        from: Revision,
        to: Revision,
    ) -> Arc<Changes> {
        let key = (handle.config.name.clone(), from.clone(), to.clone());
        if let Some(changes) = locked(&self.diffs).get(&key) {
            return changes.clone();
        }
        let config = &handle.config;
        let old = crate::desired::load_offline_with_hooks(source, config, &from).await;
        let new = crate::desired::load_offline_with_hooks(source, config, &to).await;
        let (report, replicas) = match (old, new) {
            (Ok((old, _)), Ok((new, _))) => {
                let plan = crate::plan::compare_revisions(&old, &new);
                let live: Vec<_> = old
                    .iter()
                    .map(|d| crate::model::Object {
                        key: d.key.clone(),
                        body: d.body.clone(),
                    })
                    .collect();
                let report = EnvironmentReport::build(ReportInput {
                    environment: &config.name,
                    from: from.0.clone(),
                    to: to.0.clone(),
                    plan: &plan,
                    desired: &new,
                    live: &live,
                    rollout: &config.rollout,
                    holds: Vec::new(),
                    hooks: Vec::new(),
                })
                .map_err(|error| error.to_string());
                (report, deployment_replicas(&new))
            }
            (Err(error), _) | (_, Err(error)) => (Err(error.to_string()), Vec::new()),
        };
        let changes = Arc::new(Changes {
            from,
            to,
            report,
            replicas,
        });
        let mut diffs = locked(&self.diffs);
        if diffs.len() > MAX_CACHED {
            diffs.clear();
        }
        diffs.insert(key, changes.clone());
        changes
    }
}

/// Each Deployment's replicas in a revision, and whether its manifest sets them.
fn deployment_replicas(desired: &[Desired]) -> Vec<(String, u32, bool)> {
    desired
        .iter()
        .filter(|d| d.key.kind == "Deployment")
        .map(|d| {
            let set = d.body.pointer("/spec/replicas").and_then(|r| r.as_u64());
            let replicas = set.and_then(|n| u32::try_from(n).ok()).unwrap_or(1);
            (d.key.to_string(), replicas, set.is_some())
        })
        .collect()
}

/// The diff text of a report, as `gitopsd diff` prints it without colour.
pub fn diff_text(report: &EnvironmentReport) -> String {
    let mut out = Vec::new();
    let whole = DiffReport::new(vec![report.clone()]);
    match whole.write_text(crate::report::Colour::Never, &mut out) {
        Ok(()) => String::from_utf8_lossy(&out).into_owned(),
        Err(error) => format!("cannot write the diff: {error}"),
    }
}

/// Every registered environment's snapshot (journal records included), by name.
pub async fn snapshots(controls: &Controls, caches: &Caches, source: &GitSource) -> Vec<Snapshot> {
    let mut snapshots = Vec::new();
    for (name, handle) in controls.all() {
        snapshots.push(snapshot(name, handle, caches, source).await);
    }
    snapshots
}

/// One environment's snapshot.
pub async fn snapshot(
    name: String,
    handle: EnvironmentHandle,
    caches: &Caches,
    source: &GitSource,
) -> Snapshot {
    // `[ha]`: while another daemon holds the environment, the history the cluster keeps.
    let (history, seq) = (handle.history(), handle.journal.next_seq());
    let records = caches.records(source, &name, seq).await;
    let waiting = handle.waiting.borrow().clone();
    let cache_syncing = handle
        .cache
        .as_ref()
        .is_some_and(|cache| cache.types().iter().any(|t| t.state != "synced"));
    Snapshot {
        name,
        handle,
        history,
        records,
        waiting,
        cache_syncing,
    }
}

/// The revisions a rollback may go to: those that finished healthy, newest first (at most
/// `limit`).
pub fn healthy_revisions(records: &[Record], limit: usize) -> Vec<Revision> {
    let mut seen = Vec::new();
    for record in records.iter().rev() {
        if let Event::Healthy { revision } = &record.event
            && !seen.contains(revision)
        {
            seen.push(revision.clone());
            if seen.len() == limit {
                break;
            }
        }
    }
    seen
}
