//! What a commit says about itself (subject, author, time), for the status pages; read from
//! the mirror on the blocking side of the I/O boundary.

use super::git::GitSource;
use crate::model::Revision;

/// A commit as the status pages show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitSummary {
    /// The first line of the message.
    pub subject: String,
    /// The author's name.
    pub author: String,
    /// Committer time.
    pub time: chrono::DateTime<chrono::Utc>,
}

impl GitSource {
    /// `revision`'s subject, author and committer time, if the mirror has it (blocking).
    pub fn commit_summary(&self, revision: &Revision) -> Option<CommitSummary> {
        let repo = self.open().ok()?;
        let id = gix::ObjectId::from_hex(revision.0.as_bytes()).ok()?;
        let commit = repo.find_commit(id).ok()?;
        let time = chrono::DateTime::from_timestamp(commit.time().ok()?.seconds, 0)?;
        let message = commit.message_raw_sloppy().to_string();
        let subject = message
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        let author = commit.author().ok()?.name.to_string();
        Some(CommitSummary {
            subject,
            author,
            time,
        })
    }

    /// [`GitSource::commit_summary`] of each revision, off the async workers.
    pub async fn commit_summaries_off_thread(
        &self,
        revisions: Vec<Revision>,
    ) -> Vec<(Revision, Option<CommitSummary>)> {
        let source = self.clone();
        crate::blocking::off_thread("reading commit summaries", move || {
            revisions
                .into_iter()
                .map(|revision| {
                    let summary = source.commit_summary(&revision);
                    (revision, summary)
                })
                .collect()
        })
        .await
        .unwrap_or_default()
    }
}
