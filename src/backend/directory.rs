//! Directory target: live state is a folder with one YAML file per object, written atomically.
//!
//! Layout: `<root>/<namespace>/<Kind>[.<group>]/<name>.yaml`, with cluster-scoped objects under
//! `<root>/_cluster/` (`_` cannot start a namespace, so the two never collide). A file belongs
//! to an environment when its object carries that environment's ownership labels and sits at
//! the path its key gives; nothing else is ever overwritten or deleted.
// the folder's file work runs in functions that the async `Target` methods hand to `crate::blocking::off_thread`; the methods themselves touch no file.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{FailureClass, Readiness, Target, TargetError};
use crate::diff;
use crate::model::{KindRef, Object, ResourceKey};

/// Folder of cluster-scoped objects.
const CLUSTER_DIR: &str = "_cluster";
/// Suffix of temporary files; a crash can leave one behind, and `list` removes it.
const TEMP_SUFFIX: &str = ".gitopsd-tmp";

#[derive(Debug, Clone)]
pub struct DirectoryTarget {
    root: PathBuf,
    environment: String,
}

impl DirectoryTarget {
    pub fn new(root: impl Into<PathBuf>, environment: impl Into<String>) -> Self {
        Self {
            root: root.into(),
            environment: environment.into(),
        }
    }

    /// The file that holds `key`.
    pub fn path_of(root: &Path, key: &ResourceKey) -> PathBuf {
        let namespace = key.namespace.as_deref().unwrap_or(CLUSTER_DIR);
        root.join(namespace)
            .join(key.qualified_kind())
            .join(format!("{}.yaml", key.name))
    }

    async fn blocking<T, F>(&self, work: F) -> Result<T, TargetError>
    where
        T: Send + 'static,
        F: FnOnce(&Path, &str) -> Result<T, TargetError> + Send + 'static,
    {
        let root = self.root.clone();
        let environment = self.environment.clone();
        crate::blocking::off_thread("directory target file work", move || {
            work(&root, &environment)
        })
        .await
        .map_err(|stopped| TargetError::List {
            location: "directory target".into(),
            message: stopped.to_string(),
        })?
    }
}

impl Target for DirectoryTarget {
    /// Every owned file, whatever its type: the folder is read whole.
    async fn list(&self, _kinds: &BTreeSet<KindRef>) -> Result<Vec<Object>, TargetError> {
        self.blocking(list_owned).await
    }

    async fn apply(&self, key: &ResourceKey, body: &Value) -> Result<(), TargetError> {
        let key = key.clone();
        let body = body.clone();
        self.blocking(move |root, environment| write_object(root, environment, &key, &body))
            .await
    }

    async fn delete(&self, key: &ResourceKey) -> Result<(), TargetError> {
        let key = key.clone();
        self.blocking(move |root, environment| delete_object(root, environment, &key))
            .await
    }

    /// Unchanged passes are skipped by the fingerprint, so parsed files would only be held.
    fn keeps_parsed_files(&self) -> bool {
        false
    }

    /// Every file's path, size, modification time and inode, hashed: `stat` only, nothing read.
    async fn fingerprint(&self) -> Result<Option<String>, TargetError> {
        self.blocking(|root, _| fingerprint(root).map(Some)).await
    }

    /// A file is ready once written: there is nothing behind it to wait for.
    async fn readiness(
        &self,
        keys: &[ResourceKey],
        _max_restarts: u32,
    ) -> Result<Readiness, TargetError> {
        Ok(Readiness {
            waiting: keys
                .iter()
                .filter(|key| !Self::path_of(&self.root, key).is_file())
                .map(|key| format!("{key}: not written"))
                .collect(),
            failed: Vec::new(),
        })
    }
}

/// A file that cannot be written is the host's problem (disk, permissions), not the revision's.
fn object_error(operation: &'static str, key: &ResourceKey, message: String) -> TargetError {
    TargetError::Object {
        operation,
        object: key.to_string(),
        message,
        class: FailureClass::Infrastructure,
        missing: None,
    }
}

/// Reads a file as an object, or `None` when it is not a readable manifest.
fn read_object(path: &Path) -> Option<Object> {
    let text = fs::read_to_string(path).ok()?;
    let body: Value = serde_saphyr::from_str(&text).ok()?;
    Object::from_body(body)
}

fn list_owned(root: &Path, environment: &str) -> Result<Vec<Object>, TargetError> {
    let list_error = |error: ReadDirError| TargetError::List {
        location: root.display().to_string(),
        message: error.to_string(),
    };
    let mut objects = Vec::new();
    if !root.exists() {
        return Ok(objects);
    }
    // Exactly three levels: namespace / kind / file.
    for namespace in read_dir_sorted(root).map_err(&list_error)? {
        if !namespace.is_dir() {
            continue;
        }
        for kind in read_dir_sorted(&namespace).map_err(&list_error)? {
            if !kind.is_dir() {
                continue;
            }
            for file in read_dir_sorted(&kind).map_err(&list_error)? {
                let Some(name) = file.file_name().and_then(|n| n.to_str()) else {
                    continue;
                };
                if name.starts_with('.') && name.ends_with(TEMP_SUFFIX) {
                    // Left by a crash between write and rename; the object is rewritten.
                    let _ = fs::remove_file(&file);
                    continue;
                }
                if name.starts_with('.') || !name.ends_with(".yaml") {
                    continue;
                }
                let Some(object) = read_object(&file) else {
                    continue;
                };
                if object.is_owned_by(environment)
                    && DirectoryTarget::path_of(root, &object.key) == file
                {
                    objects.push(object);
                }
            }
        }
    }
    Ok(objects)
}

/// A folder that could not be read while listing.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
struct ReadDirError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>, ReadDirError> {
    let read_error = |source| ReadDirError {
        path: dir.to_path_buf(),
        source,
    };
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir).map_err(read_error)? {
        paths.push(entry.map_err(read_error)?.path());
    }
    paths.sort();
    Ok(paths)
}

fn write_object(
    root: &Path,
    environment: &str,
    key: &ResourceKey,
    body: &Value,
) -> Result<(), TargetError> {
    let path = DirectoryTarget::path_of(root, key);
    let fail = |message: String| object_error("apply", key, message);
    if path.exists() {
        let owned = read_object(&path).is_some_and(|live| live.is_owned_by(environment));
        if !owned {
            return Err(fail(format!(
                "{} exists and is not managed by gitopsd environment {environment:?}; not overwriting it",
                path.display()
            )));
        }
    }
    let text = diff::to_yaml(body).map_err(|e| fail(e.to_string()))?;
    let dir = path
        .parent()
        .expect("an object path always has a parent folder");
    create_dirs_durably(root, dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .expect("object file names are built from valid UTF-8 names");
    let temp = dir.join(format!(".{file_name}{TEMP_SUFFIX}"));
    let write = || -> std::io::Result<()> {
        let mut file = File::create(&temp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&temp, &path)?;
        File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&temp);
        fail(format!("{}: {e}", path.display()))
    })
}

/// Creates `dir` and any missing parents below `root`, syncing each parent so the new entries
/// survive a crash.
fn create_dirs_durably(root: &Path, dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if dir == root {
        fs::create_dir_all(root)?;
    } else if let Some(parent) = dir.parent() {
        create_dirs_durably(root, parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(error) => return Err(error),
    }
    if let Some(parent) = dir.parent() {
        File::open(parent)?.sync_all()?;
    }
    Ok(())
}

fn delete_object(root: &Path, environment: &str, key: &ResourceKey) -> Result<(), TargetError> {
    let path = DirectoryTarget::path_of(root, key);
    let fail = |message: String| object_error("delete", key, message);
    if !path.exists() {
        return Ok(());
    }
    if !read_object(&path).is_some_and(|live| live.is_owned_by(environment)) {
        return Err(fail(format!(
            "{} is not managed by gitopsd environment {environment:?}; not deleting it",
            path.display()
        )));
    }
    match fs::remove_file(&path) {
        // Gone meanwhile (another write of the same stage): deleted is deleted.
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        result => result.map_err(|e| fail(format!("{}: {e}", path.display())))?,
    }
    let mut dir = path.parent();
    while let Some(current) = dir {
        if current == root {
            break;
        }
        // Only empty folders go; a folder holding anything else stays.
        if fs::remove_dir(current).is_err() {
            break;
        }
        dir = current.parent();
    }
    let synced = dir.unwrap_or(root);
    File::open(synced)
        .and_then(|f| f.sync_all())
        .map_err(|e| fail(format!("{}: {e}", synced.display())))
}

/// Hash of the metadata of every entry under `root`, in path order.
fn fingerprint(root: &Path) -> Result<String, TargetError> {
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::MetadataExt as _;
    let fail = |path: &Path, error: std::io::Error| TargetError::List {
        location: path.display().to_string(),
        message: error.to_string(),
    };
    let mut hasher = Sha256::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => return Err(fail(&dir, error)),
        };
        let mut paths = Vec::new();
        for entry in entries {
            paths.push(entry.map_err(|e| fail(&dir, e))?.path());
        }
        paths.sort();
        for path in paths.into_iter().rev() {
            let meta = fs::symlink_metadata(&path).map_err(|e| fail(&path, e))?;
            hasher.update(path.as_os_str().as_encoded_bytes());
            for number in [
                meta.len(),
                meta.ino(),
                u64::from(meta.mode()),
                meta.mtime() as u64,
                meta.mtime_nsec() as u64,
                meta.ctime() as u64,
                meta.ctime_nsec() as u64,
            ] {
                hasher.update(number.to_le_bytes());
            }
            if meta.is_dir() {
                stack.push(path);
            }
        }
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Revision;
    use crate::plan::Desired;
    use serde_json::json;

    fn object(name: &str) -> (ResourceKey, Value) {
        let object = Object::from_body(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "web"},
            "data": {"k": "v"}
        }))
        .expect("valid body");
        let desired = Desired::new(&object);
        (
            object.key,
            desired.stamped("staging", &Revision("a".repeat(40))),
        )
    }

    #[tokio::test]
    async fn apply_list_delete_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = DirectoryTarget::new(dir.path(), "staging");
        let (key, body) = object("settings");
        target.apply(&key, &body).await.expect("apply");
        let path = dir.path().join("web/ConfigMap/settings.yaml");
        assert!(path.is_file());
        let live = target.list(&BTreeSet::new()).await.expect("list");
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].body, body);
        assert!(
            DirectoryTarget::new(dir.path(), "production")
                .list(&BTreeSet::new())
                .await
                .expect("list")
                .is_empty(),
            "another environment owns nothing here"
        );
        target.delete(&key).await.expect("delete");
        assert!(!path.exists());
        assert!(
            !dir.path().join("web").exists(),
            "empty folders are removed"
        );
    }

    #[tokio::test]
    async fn foreign_files_are_never_overwritten_or_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = DirectoryTarget::new(dir.path(), "staging");
        let (key, body) = object("handmade");
        let path = DirectoryTarget::path_of(dir.path(), &key);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(
            &path,
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: handmade}\n",
        )
        .expect("write");
        assert!(
            target
                .list(&BTreeSet::new())
                .await
                .expect("list")
                .is_empty()
        );
        assert!(target.apply(&key, &body).await.is_err());
        assert!(target.delete(&key).await.is_err());
        assert!(path.is_file());
    }

    #[tokio::test]
    async fn stale_temp_files_are_cleaned_on_list() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = DirectoryTarget::new(dir.path(), "staging");
        let (key, body) = object("a");
        target.apply(&key, &body).await.expect("apply");
        let stale = dir.path().join("web/ConfigMap/.b.yaml.gitopsd-tmp");
        fs::write(&stale, "partial").expect("write");
        target.list(&BTreeSet::new()).await.expect("list");
        assert!(!stale.exists());
    }
}
