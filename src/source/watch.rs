//! Watches a repository on this host for ref changes, so a new commit is picked up at once.

use std::path::{Path, PathBuf};

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Keeps the watcher alive; dropping it stops the notifications.
pub struct RefWatcher {
    _watcher: RecommendedWatcher,
}

/// The git dir of a repository path: `<path>/.git` for a work tree, the path itself when bare.
fn git_dir(repo: &Path) -> PathBuf {
    let dot_git = repo.join(".git");
    if dot_git.is_dir() {
        dot_git
    } else {
        repo.to_path_buf()
    }
}

/// Starts watching `repo`'s refs and packed-refs; each change sends `()` on `wake`
/// (coalesced: a full channel means a wake-up is already pending).
pub fn watch_refs(repo: &Path, wake: mpsc::Sender<()>) -> notify::Result<RefWatcher> {
    let git_dir = git_dir(repo);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if matches!(event.kind, EventKind::Access(_)) {
            return;
        }
        let touches_refs = event.paths.iter().any(|path| {
            path.components().any(|c| c.as_os_str() == "refs")
                || path.file_name().is_some_and(|name| name == "packed-refs")
        });
        if touches_refs {
            let _ = wake.try_send(());
        }
    })?;
    watcher.watch(&git_dir.join("refs"), RecursiveMode::Recursive)?;
    watcher.watch(&git_dir, RecursiveMode::NonRecursive)?;
    Ok(RefWatcher { _watcher: watcher })
}
