//! Runs blocking file work (journal fsyncs, journal reads) from async code without stalling
//! the other tasks of the runtime's worker thread.

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
    async fn a_current_thread_runtime_just_runs_it() {
        assert_eq!(run(|| 7), 7);
    }
}
