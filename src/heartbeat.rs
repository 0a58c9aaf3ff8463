//! Liveness beats: each loop beats as it makes progress, so a stuck loop shows as a stale beat.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The longest a loop sleeps without beating.
pub const BEAT_INTERVAL: Duration = Duration::from_secs(1);

fn process_start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

fn now_millis() -> u64 {
    u64::try_from(process_start().elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// One loop's beat.
#[derive(Debug, Clone)]
pub struct Heartbeat(Arc<AtomicU64>);

impl Default for Heartbeat {
    fn default() -> Self {
        Self(Arc::new(AtomicU64::new(now_millis())))
    }
}

impl Heartbeat {
    pub fn beat(&self) {
        self.0.store(now_millis(), Ordering::Relaxed);
    }

    /// Time since the last beat.
    pub fn age(&self) -> Duration {
        Duration::from_millis(now_millis().saturating_sub(self.0.load(Ordering::Relaxed)))
    }
}

/// The beats of every loop of the process, by name.
#[derive(Debug, Clone, Default)]
pub struct Heartbeats(Arc<Mutex<Vec<(String, Heartbeat)>>>);

impl Heartbeats {
    /// A new beat for the loop `name` (replacing an older one of that name).
    pub fn register(&self, name: &str) -> Heartbeat {
        let beat = Heartbeat::default();
        let mut beats = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        beats.retain(|(existing, _)| existing != name);
        beats.push((name.to_string(), beat.clone()));
        beat
    }

    /// Loops whose last beat is older than `max_age`.
    pub fn stale(&self, max_age: Duration) -> Vec<String> {
        let beats = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        beats
            .iter()
            .filter(|(_, beat)| beat.age() > max_age)
            .map(|(name, _)| name.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_that_stops_beating_goes_stale() {
        let beats = Heartbeats::default();
        let busy = beats.register("busy");
        let _idle = beats.register("idle");
        // Wide margins: on a loaded machine the two lines below can be far apart.
        std::thread::sleep(Duration::from_millis(1500));
        busy.beat();
        assert_eq!(beats.stale(Duration::from_millis(1000)), ["idle"]);
        assert!(beats.stale(Duration::from_secs(10)).is_empty());
    }
}
