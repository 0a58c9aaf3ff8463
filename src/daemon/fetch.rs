//! Fetching the repository from the daemon: on the blocking pool, bounded by the fetch
//! timeout and shutdown, retried with backoff.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use crate::source::{Fetched, GitSource, SourceError};

/// Longest wait between retries of a failing fetch.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Fetches on a blocking thread.
pub async fn fetch(source: &GitSource) -> Result<Fetched, SourceError> {
    fetch_until(source, None).await
}

/// Fetches on a worker thread, interrupting it (gix's interrupt flag) after the source's
/// `fetch_timeout` or when `shutdown` turns true, so a remote that stops answering never holds
/// the daemon.
pub async fn fetch_until(
    source: &GitSource,
    shutdown: Option<watch::Receiver<bool>>,
) -> Result<Fetched, SourceError> {
    let interrupt = Arc::new(AtomicBool::new(false));
    let timeout = source.fetch_timeout();
    let worker = {
        let source = source.clone();
        let interrupt = interrupt.clone();
        crate::blocking::off_thread("fetching", move || source.fetch_with(&interrupt))
    };
    tokio::pin!(worker);
    let stopped = async move {
        match shutdown {
            Some(mut shutdown) => {
                while !*shutdown.borrow_and_update() {
                    if shutdown.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
            }
            None => std::future::pending::<()>().await,
        }
    };
    let gave_up = tokio::select! {
        joined = &mut worker => {
            return joined.map_err(|error| SourceError::Fetch {
                url: "(worker thread)".into(),
                message: error.to_string(),
            })?;
        }
        _ = tokio::time::sleep(timeout) => format!(
            "no answer within {} (repo.fetch_timeout); the fetch was interrupted",
            humantime::format_duration(timeout)
        ),
        _ = stopped => "stopped by shutdown".to_string(),
    };
    interrupt.store(true, Ordering::Relaxed);
    // The flag stops a transfer in progress; a connection that never answers is left to its
    // worker thread, which ends with it.
    Err(SourceError::Fetch {
        url: source.url().to_string(),
        message: gave_up,
    })
}

pub(super) fn log_fetched(fetched: &Fetched) {
    if fetched.force_pushed {
        tracing::warn!(
            previous = %fetched.previous.as_ref().map_or("", |r| r.short()),
            tip = %fetched.tip.short(),
            "branch was force-pushed: the previous commit is not an ancestor of the new one"
        );
    }
    if fetched.previous.as_ref() != Some(&fetched.tip) {
        tracing::info!(revision = %fetched.tip.short(), "new revision");
    }
}

/// Wait before retrying the `failures`-th failed fetch in a row: 2 s doubling, at most 5 min.
pub fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.clamp(1, 9)).min(MAX_BACKOFF)
}
