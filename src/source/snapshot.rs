//! Reading one environment folder at a revision: its manifest files, within the source's
//! limits, and the folder's tree id (two revisions with the same id hold the same files).
// git work (gix): the blocking side of the I/O boundary; async code calls it through `crate::blocking`.

use super::error::{Cause, SourceError};
use super::git::{GitSource, Snapshot};
use crate::manifest::{ManifestFile, Problem, is_manifest_path};
use crate::model::Revision;

impl GitSource {
    /// Reads the manifest files under `path` at `revision`, recursively, in sorted order.
    pub fn snapshot(&self, revision: &Revision, path: &str) -> Result<Snapshot, SourceError> {
        let repo = self.open()?;
        let mut reader = FolderReader {
            source: self,
            repo: &repo,
            revision,
            path,
            files: Vec::new(),
            problems: Vec::new(),
            total_bytes: 0,
        };
        for record in folder_entries(&repo, revision, path)? {
            if reader.take(record)?.is_break() {
                break;
            }
        }
        Ok(Snapshot {
            revision: revision.clone(),
            files: reader.files,
            problems: reader.problems,
            limits: self.limits,
        })
    }

    /// The tree id of the folder `path` at `revision` (`None` where it has no such folder):
    /// two revisions with the same id hold the same files there.
    pub fn folder_id(
        &self,
        revision: &Revision,
        path: &str,
    ) -> Result<Option<String>, SourceError> {
        let repo = self.open()?;
        match folder_tree(&repo, revision, path) {
            Ok(tree) => Ok(Some(tree.id.to_string())),
            Err(SourceError::MissingPath { .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }
}

fn read_error(what: &str, revision: &Revision, source: Cause) -> SourceError {
    SourceError::Read {
        what: what.to_string(),
        revision: revision.clone(),
        source,
    }
}

/// The folder `path` at `revision`.
fn folder_tree<'repo>(
    repo: &'repo gix::Repository,
    revision: &Revision,
    path: &str,
) -> Result<gix::Tree<'repo>, SourceError> {
    let id = gix::ObjectId::from_hex(revision.0.as_bytes())
        .map_err(|e| read_error("commit id", revision, Box::new(e)))?;
    let commit = repo
        .find_commit(id)
        .map_err(|e| read_error("commit", revision, Box::new(e)))?;
    let root = commit
        .tree()
        .map_err(|e| read_error("root tree", revision, Box::new(e)))?;
    let entry = root
        .lookup_entry_by_path(path)
        .map_err(|e| read_error(path, revision, Box::new(e)))?
        .ok_or_else(|| SourceError::MissingPath {
            path: path.to_string(),
            revision: revision.clone(),
        })?;
    if !entry.mode().is_tree() {
        return Err(SourceError::NotAFolder {
            path: path.to_string(),
            revision: revision.clone(),
        });
    }
    Ok(entry
        .object()
        .map_err(|e| read_error(path, revision, Box::new(e)))?
        .into_tree())
}

/// Every entry under the folder `path` at `revision`, sorted by path.
fn folder_entries(
    repo: &gix::Repository,
    revision: &Revision,
    path: &str,
) -> Result<Vec<gix::traverse::tree::recorder::Entry>, SourceError> {
    let tree = folder_tree(repo, revision, path)?;
    let mut recorder = gix::traverse::tree::Recorder::default();
    tree.traverse()
        .breadthfirst(&mut recorder)
        .map_err(|e| read_error(path, revision, Box::new(e)))?;
    let mut records = recorder.records;
    records.sort_by(|a, b| a.filepath.cmp(&b.filepath));
    Ok(records)
}

/// Reads one environment folder's entries into manifest files, within the source's limits.
struct FolderReader<'a> {
    source: &'a GitSource,
    repo: &'a gix::Repository,
    revision: &'a Revision,
    path: &'a str,
    files: Vec<ManifestFile>,
    /// Entries refused, and limits reached.
    problems: Vec<Problem>,
    total_bytes: u64,
}

impl FolderReader<'_> {
    /// Takes one entry: a manifest file is read, anything else skipped or refused with a
    /// problem; `Break` once a limit says the rest is not read.
    fn take(
        &mut self,
        record: gix::traverse::tree::recorder::Entry,
    ) -> Result<std::ops::ControlFlow<()>, SourceError> {
        use std::ops::ControlFlow::{Break, Continue};
        let (path, source) = (self.path, self.source);
        let file = format!("{path}/{}", record.filepath);
        if self.files.len() >= source.max_files && is_manifest_path(&file) {
            self.problems.push(Problem::file(
                file,
                format!(
                    "{path} holds more than {} manifest files (repo.max_files); the rest is not read",
                    source.max_files
                ),
            ));
            return Ok(Break(()));
        }
        if record.mode.is_tree() {
            return Ok(Continue(()));
        }
        if record.mode.is_commit() {
            self.problems
                .push(Problem::file(file, "submodules are not supported"));
            return Ok(Continue(()));
        }
        if !is_manifest_path(&file) {
            return Ok(Continue(()));
        }
        if record.mode.is_link() {
            self.problems.push(Problem::file(
                file,
                "symlinks are not followed: they can point outside the repository",
            ));
            return Ok(Continue(()));
        }
        let read_error = |source: gix::Error| read_error(&file, self.revision, Box::new(source));
        let size = self
            .repo
            .find_header(record.oid)
            .map_err(read_error)?
            .size();
        if size > source.max_file_bytes {
            self.problems.push(Problem::file(
                file,
                format!(
                    "file is {size} bytes, over the limit of {} (repo.max_file_bytes)",
                    source.max_file_bytes
                ),
            ));
            return Ok(Continue(()));
        }
        self.total_bytes += size;
        if self.total_bytes > source.max_total_bytes {
            self.problems.push(Problem::file(
                file,
                format!(
                    "{path} holds more than {} bytes of manifests (repo.max_total_bytes); the rest is not read",
                    source.max_total_bytes
                ),
            ));
            return Ok(Break(()));
        }
        let blob = self.repo.find_blob(record.oid).map_err(read_error)?;
        self.files.push(ManifestFile {
            path: file,
            bytes: blob.data.clone(),
            blob: Some(record.oid.to_string()),
        });
        Ok(Continue(()))
    }
}
