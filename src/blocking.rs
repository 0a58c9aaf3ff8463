//! The one boundary between async code and blocking work (files, git, processes): async code
//! hands such work to [`off_thread`], or, when it must borrow, runs it through [`run`].

use thiserror::Error;

/// Blocking work that never returned: it panicked, or the runtime is shutting down.
#[derive(Debug, Error)]
#[error("{what} did not finish: {source}")]
pub struct Stopped {
    /// What the work was doing, e.g. `reading the revision's files`.
    pub what: &'static str,
    #[source]
    pub source: tokio::task::JoinError,
}

/// Runs `work` on tokio's blocking pool and waits for it, so no async worker blocks on it.
pub async fn off_thread<T: Send + 'static>(
    what: &'static str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Stopped> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|source| Stopped { what, source })
}

/// Runs `work` where blocking is allowed: on a multi-thread runtime the worker hands its other
/// tasks to another worker first (`block_in_place`); on a current-thread runtime (tests) or
/// outside any runtime, it simply runs.
pub fn run<T>(work: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn other_tasks_run_while_a_worker_blocks() {
        // On a worker: a task it spawns waits in that worker's own slot, which no other worker
        // takes; only handing the worker's tasks over lets it run while this one blocks.
        let outer = tokio::spawn(async {
            let (sender, receiver) = std::sync::mpsc::channel();
            let other = tokio::spawn(async move {
                sender.send(()).expect("the blocked side is waiting");
            });
            let ran = run(|| {
                receiver
                    .recv_timeout(std::time::Duration::from_secs(3))
                    .is_ok()
            });
            other.await.expect("task ends");
            ran
        });
        assert!(
            outer.await.expect("task ends"),
            "the other task ran while this worker blocked"
        );
    }

    #[tokio::test]
    async fn off_thread_work_returns_its_value_and_a_panic_is_named() {
        assert_eq!(off_thread("adding", || 2 + 2).await.expect("finished"), 4);
        let stopped = off_thread("exploding", || -> () { panic!("boom") })
            .await
            .expect_err("a panic is an error, not a crash");
        assert!(
            stopped.to_string().starts_with("exploding did not finish"),
            "{stopped}"
        );
    }

    #[tokio::test]
    async fn a_current_thread_runtime_just_runs_it() {
        assert_eq!(run(|| 7), 7);
    }
}
