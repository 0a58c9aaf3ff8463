//! Whole-file writes that readers never see half done, and that survive a crash once returned.
// whole-file writes: the blocking side of the I/O boundary, called through `crate::blocking`.
#![allow(clippy::disallowed_methods)]

use std::fs::File;
use std::io::Write;
use std::path::Path;

/// Creates `dir` and its parents, as `std::fs::create_dir_all` does.
pub fn create_dir_all(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

/// Writes `bytes` to `path` so that readers see the old file or all of the new one: a
/// temporary `*.tmp` file beside it (a unique name, so concurrent writers never share one),
/// fsync, rename, fsync of the folder. A crash can leave only the temporary behind.
pub fn write_whole(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut file = tempfile::Builder::new().suffix(".tmp").tempfile_in(dir)?;
    file.write_all(bytes)?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|error| error.error)?;
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to a new file at `path`, failing with `AlreadyExists` when there is one
/// (never replaces it), then fsyncs it and its folder.
pub fn create_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    File::open(path.parent().unwrap_or(Path::new(".")))?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_whole_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("file.jsonl");
        std::fs::write(&path, "old").expect("write");
        write_whole(&path, b"new").expect("written");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "new");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("read dir")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["file.jsonl"]);
    }

    #[test]
    fn create_new_never_replaces_a_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("gitopsd.toml");
        create_new(&path, b"first").expect("a new file");
        let error = create_new(&path, b"second").expect_err("there is one");
        assert_eq!(error.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "first");
    }
}
