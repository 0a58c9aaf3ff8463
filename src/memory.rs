//! Gives the memory passes freed back to the system.
//!
//! A full pass over a few thousand objects allocates tens of MiB for a moment (files, parsed
//! documents, the live listing, the plan) and frees it all. glibc keeps freed pages that are
//! not at the top of its heap, so without this the daemon idles at the peak of its last pass:
//! measured with `cargo bench --bench idle` (2 × 2,004 objects), 90 MiB resident, against 26
//! MiB after `malloc_trim`, which returns every whole free page.
//!
//! `malloc_trim` walks the whole heap under glibc's arena locks, so it costs in proportion to
//! everything the daemon holds (the watch cache included), and allocations on other threads
//! wait for it. Trimming after every pass made a no-op round of a fleet quadratic: 200
//! environments took 5 s, a third of it in `malloc_trim` (`benches/fleet.sh`). Passes
//! therefore only say that they freed memory ([`Trimmer::freed`]); one task trims, at most
//! once per [`SETTLE`], and always after the last pass of a burst.
//!
//! The `gitopsd` binary allocates with jemalloc (`main.rs`), whose background thread returns
//! freed pages on its own; there the trim finds glibc's heap all but empty and costs little.

use std::time::Duration;

use tokio::sync::mpsc;

/// How long the trimmer waits after a pass freed memory, so that passes ending together
/// share one trim.
pub const SETTLE: Duration = Duration::from_secs(1);

/// Returns freed heap pages to the system (glibc only; elsewhere nothing to do).
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own free lists; it takes no pointers from us.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Where passes report freed memory; trims, coalesced, on a task of its own (which ends once
/// every handle is dropped).
#[derive(Debug, Clone)]
pub struct Trimmer {
    /// One slot: a trim is pending while it is full.
    wanted: mpsc::Sender<()>,
}

impl Trimmer {
    /// Starts the trimming task on the current runtime: [`release_freed_memory`] on the
    /// blocking pool, [`SETTLE`] after the first pass that freed memory.
    pub fn start() -> Self {
        Self::start_with(SETTLE, || {
            crate::blocking::off_thread("returning freed memory", release_freed_memory)
        })
    }

    /// As [`Trimmer::start`], with the wait and the trim given.
    pub fn start_with<F, T>(settle: Duration, trim: F) -> Self
    where
        F: Fn() -> T + Send + 'static,
        T: std::future::Future + Send,
    {
        let (wanted, mut requests) = mpsc::channel(1);
        tokio::spawn(async move {
            while requests.recv().await.is_some() {
                tokio::time::sleep(settle).await;
                // Passes that end from now on ask for the next trim.
                let _ = requests.try_recv();
                trim().await;
            }
        });
        Self { wanted }
    }

    /// A pass freed memory: a trim follows within the settle time, shared with every other
    /// pass that ends meanwhile.
    pub fn freed(&self) {
        // Full: a trim is already pending and will cover this pass too.
        let _ = self.wanted.try_send(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A trimmer that counts its trims and reports each on `trims`.
    fn counting(settle: Duration) -> (Trimmer, mpsc::UnboundedReceiver<usize>) {
        let count = Arc::new(AtomicUsize::new(0));
        let (sender, trims) = mpsc::unbounded_channel();
        let trimmer = Trimmer::start_with(settle, move || {
            let done = count.fetch_add(1, Ordering::SeqCst) + 1;
            let _ = sender.send(done);
            std::future::ready(())
        });
        (trimmer, trims)
    }

    #[tokio::test]
    async fn a_thousand_passes_ending_together_trim_once() {
        let (trimmer, mut trims) = counting(Duration::from_millis(20));
        for _ in 0..1000 {
            trimmer.freed();
        }
        assert_eq!(trims.recv().await, Some(1), "one trim for the burst");
        drop(trimmer);
        // The task ends with the last handle; a second trim would have come first.
        assert_eq!(trims.recv().await, None, "and no other");
    }

    #[tokio::test]
    async fn a_pass_after_a_trim_is_trimmed_after_too() {
        let (trimmer, mut trims) = counting(Duration::from_millis(20));
        trimmer.freed();
        assert_eq!(trims.recv().await, Some(1));
        trimmer.freed();
        assert_eq!(
            trims.recv().await,
            Some(2),
            "a later pass's memory is returned too (the idle daemon stays small)"
        );
        drop(trimmer);
        assert_eq!(trims.recv().await, None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pass_ending_while_a_trim_waits_is_covered_by_a_later_one() {
        let (trimmer, mut trims) = counting(Duration::from_millis(50));
        trimmer.freed();
        // Ends during the settle time of the first trim: the slot is full, so it shares it.
        trimmer.freed();
        assert_eq!(trims.recv().await, Some(1));
        drop(trimmer);
        assert_eq!(trims.recv().await, None);
    }
}
