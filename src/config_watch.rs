//! Watches the config file, so an edit is picked up like a SIGHUP.

use std::path::{Path, PathBuf};

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Keeps the watcher alive; dropping it stops the notifications.
pub struct ConfigWatcher {
    _watcher: RecommendedWatcher,
}

/// Sends `()` on `changed` whenever `path` is written, created or replaced. The folder is
/// watched rather than the file, because editors and config management replace the file
/// by renaming a new one over it.
pub fn watch_config(path: &Path, changed: mpsc::Sender<()>) -> notify::Result<ConfigWatcher> {
    let file: PathBuf = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let folder = file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let name = file.file_name().map(|n| n.to_os_string());
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if !matches!(
            event.kind,
            EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)
        ) {
            return;
        }
        let ours = event
            .paths
            .iter()
            .any(|changed| changed.file_name().map(|n| n.to_os_string()) == name);
        if ours {
            let _ = changed.try_send(());
        }
    })?;
    watcher.watch(&folder, RecursiveMode::NonRecursive)?;
    Ok(ConfigWatcher { _watcher: watcher })
}
