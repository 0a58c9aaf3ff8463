//! The SOPS files of a whole revision: what a rendered environment's SOPS documents are checked
//! against (a render re-sorts keys, which sops' MAC covers, so the MAC is verified on the file
//! in git that the document comes from).

use crate::manifest::{ManifestFile, is_manifest_path};
use crate::model::Revision;

use super::{GitSource, SourceError};

/// A line that starts a top-level `sops:` entry.
fn has_sops_block(bytes: &[u8]) -> bool {
    bytes.starts_with(b"sops:") || bytes.windows(6).any(|window| window == b"\nsops:")
}

impl GitSource {
    /// Every manifest file of `revision` (anywhere in the tree) with a top-level `sops:` entry,
    /// within `repo.max_file_bytes` each and `repo.max_total_bytes` in all; sorted by path.
    pub fn sops_files(&self, revision: &Revision) -> Result<Vec<ManifestFile>, SourceError> {
        let read_error = |what: &str, source: super::error::Cause| SourceError::Read {
            what: what.to_string(),
            revision: revision.clone(),
            source,
        };
        let repo = self.open()?;
        let records = super::tree::revision_entries(&repo, revision)?;
        let (max_file, max_total) = self.byte_limits();
        let mut total = 0u64;
        let mut files = Vec::new();
        for record in records {
            let path = record.filepath.to_string();
            if !record.mode.is_blob() || !is_manifest_path(&path) {
                continue;
            }
            let size = repo
                .find_header(record.oid)
                .map_err(|e| read_error(&path, Box::new(e)))?
                .size();
            total += size;
            if size > max_file || total > max_total {
                continue;
            }
            let blob = repo
                .find_blob(record.oid)
                .map_err(|e| read_error(&path, Box::new(e)))?;
            if has_sops_block(&blob.data) {
                files.push(ManifestFile {
                    path,
                    bytes: blob.data.clone(),
                    blob: Some(record.oid.to_string()),
                });
            }
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(files)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_top_level_sops_entry_is_found_anywhere_but_nested() {
        assert!(super::has_sops_block(b"sops:\n  mac: x\n"));
        assert!(super::has_sops_block(b"a: 1\nsops:\n  mac: x\n"));
        assert!(!super::has_sops_block(b"a:\n  sops: 1\n"));
    }
}
