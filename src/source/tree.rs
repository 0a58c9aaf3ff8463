//! The paths of a whole revision's files: what `gitopsd init` surveys to say what a repository
//! holds. Blocking (git objects): call from a blocking thread.

use crate::model::Revision;

use super::{GitSource, SourceError};

impl GitSource {
    /// Every file (blob) path in the tree of `revision`, sorted.
    pub fn file_paths(&self, revision: &Revision) -> Result<Vec<String>, SourceError> {
        let read_error = |what: &str, source: super::error::Cause| SourceError::Read {
            what: what.to_string(),
            revision: revision.clone(),
            source,
        };
        let repo = self.open()?;
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
        let mut paths: Vec<String> = recorder
            .records
            .into_iter()
            .filter(|record| record.mode.is_blob())
            .map(|record| record.filepath.to_string())
            .collect();
        paths.sort();
        Ok(paths)
    }
}
