//! A whole revision's tree: every entry (what revert commits, SOPS files and `materialize`
//! walk), and the paths of its files (what `gitopsd init` surveys to say what a repository
//! holds). Blocking (git objects): call from a blocking thread.

use crate::model::Revision;

use super::{GitSource, SourceError};

impl GitSource {
    /// Every file (blob) path in the tree of `revision`, sorted.
    pub fn file_paths(&self, revision: &Revision) -> Result<Vec<String>, SourceError> {
        let records = revision_entries(&self.open()?, revision)?;
        let mut paths: Vec<String> = records
            .into_iter()
            .filter(|record| record.mode.is_blob())
            .map(|record| record.filepath.to_string())
            .collect();
        paths.sort();
        Ok(paths)
    }
}

/// Every entry of `revision`'s whole tree, breadth first.
pub(super) fn revision_entries(
    repo: &gix::Repository,
    revision: &Revision,
) -> Result<Vec<gix::traverse::tree::recorder::Entry>, SourceError> {
    let read_error = |what: &str, source: super::error::Cause| SourceError::Read {
        what: what.to_string(),
        revision: revision.clone(),
        source,
    };
    let id = gix::ObjectId::from_hex(revision.0.as_bytes())
        .map_err(|e| read_error("commit id", Box::new(e)))?;
    let root = repo
        .find_commit(id)
        .and_then(|commit| commit.tree())
        .map_err(|e| read_error("root tree", Box::new(e)))?;
    let mut recorder = gix::traverse::tree::Recorder::default();
    root.traverse()
        .breadthfirst(&mut recorder)
        .map_err(|e| read_error("root tree", Box::new(e)))?;
    Ok(recorder.records)
}
