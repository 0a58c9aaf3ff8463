//! How many requests may be in flight to an API server: additive increase while throughput
//! grows, multiplicative decrease when the server throttles (429, as priority and fairness
//! answers when its seats are taken).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Where the limit starts, below the ceiling: a server that can take more shows it quickly.
pub const INITIAL_LIMIT: usize = 8;

/// The decision logic, with no clock of its own: callers pass the time since they started.
#[derive(Debug, Clone, PartialEq)]
pub struct Aimd {
    limit: usize,
    max: usize,
    /// Completions in the current window, and when it started. A window is as many
    /// completions as the limit allows at once: one round of requests.
    window_done: usize,
    window_started: Duration,
    /// Completions per second of the last whole window; `None` right after a change forced by
    /// throttling, so that the next window raises the limit again.
    last_rate: Option<f64>,
    /// True once this window lowered the limit: the other requests of the same round saw the
    /// same crowded server, and lowering again for each would collapse the limit.
    lowered_this_window: bool,
}

impl Aimd {
    pub fn new(initial: usize, max: usize) -> Self {
        let max = max.max(1);
        Self {
            limit: initial.clamp(1, max),
            max,
            window_done: 0,
            window_started: Duration::ZERO,
            last_rate: None,
            lowered_this_window: false,
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    fn start_window(&mut self, now: Duration) {
        self.window_done = 0;
        self.window_started = now;
        self.lowered_this_window = false;
    }

    /// A request succeeded at `now`. Returns the new limit when it changes.
    pub fn on_success(&mut self, now: Duration) -> Option<usize> {
        self.window_done += 1;
        if self.window_done < self.limit {
            return None;
        }
        let elapsed = now.saturating_sub(self.window_started).as_secs_f64();
        let rate = self.window_done as f64 / elapsed.max(1e-6);
        // One more request in flight can add at most 1/limit; ask for half of that, so noise
        // on a saturated server does not keep raising the limit.
        let grew = self
            .last_rate
            .is_none_or(|last| rate >= last * (1.0 + 0.5 / self.limit as f64));
        self.last_rate = Some(rate);
        self.start_window(now);
        if grew && self.limit < self.max {
            self.limit += 1;
            return Some(self.limit);
        }
        None
    }

    /// The server throttled a request at `now`. Returns the new limit when it changes.
    pub fn on_throttled(&mut self, now: Duration) -> Option<usize> {
        if self.lowered_this_window {
            return None;
        }
        let lowered = (self.limit / 2).max(1);
        self.start_window(now);
        self.lowered_this_window = true;
        self.last_rate = None;
        if lowered == self.limit {
            return None;
        }
        self.limit = lowered;
        Some(lowered)
    }
}

/// The edge: a semaphore whose permits follow [`Aimd`]'s limit. Permits above a lowered limit
/// are taken out of circulation as they come back.
#[derive(Debug)]
pub struct AdaptiveLimiter {
    semaphore: Arc<Semaphore>,
    state: Mutex<LimiterState>,
    started: tokio::time::Instant,
}

#[derive(Debug)]
struct LimiterState {
    aimd: Aimd,
    /// Permits in circulation (held or free); above the limit after a decrease until
    /// enough come back.
    circulating: usize,
    /// The most requests that were ever in flight at once, for the debug log and tests.
    peak_in_flight: usize,
    in_flight: usize,
}

/// One request's right to be in flight.
#[derive(Debug)]
pub struct Slot<'a> {
    permit: Option<OwnedSemaphorePermit>,
    limiter: &'a AdaptiveLimiter,
}

impl AdaptiveLimiter {
    pub fn new(max: usize) -> Self {
        let aimd = Aimd::new(INITIAL_LIMIT, max);
        Self {
            semaphore: Arc::new(Semaphore::new(aimd.limit())),
            state: Mutex::new(LimiterState {
                circulating: aimd.limit(),
                aimd,
                peak_in_flight: 0,
                in_flight: 0,
            }),
            started: tokio::time::Instant::now(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LimiterState> {
        // The state is a few counters, valid after any panic.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits for a free slot.
    pub async fn acquire(&self) -> Result<Slot<'_>, tokio::sync::AcquireError> {
        let permit = self.semaphore.clone().acquire_owned().await?;
        let mut state = self.lock();
        state.in_flight += 1;
        state.peak_in_flight = state.peak_in_flight.max(state.in_flight);
        Ok(Slot {
            permit: Some(permit),
            limiter: self,
        })
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.lock().aimd.limit()
    }

    /// The most requests in flight at once so far.
    pub fn peak_in_flight(&self) -> usize {
        self.lock().peak_in_flight
    }

    fn apply(&self, state: &mut LimiterState, changed: Option<usize>) {
        let Some(limit) = changed else { return };
        if limit > state.circulating {
            self.semaphore.add_permits(limit - state.circulating);
            state.circulating = limit;
        } else {
            // Free permits go at once; held ones as they are released.
            while state.circulating > limit {
                match self.semaphore.try_acquire() {
                    Ok(permit) => {
                        permit.forget();
                        state.circulating -= 1;
                    }
                    Err(_) => break,
                }
            }
        }
        tracing::debug!(limit, "Kubernetes requests in flight: new limit");
    }
}

impl Slot<'_> {
    /// The request succeeded.
    pub fn succeeded(&self) {
        let limiter = self.limiter;
        let mut state = limiter.lock();
        let changed = state.aimd.on_success(limiter.started.elapsed());
        limiter.apply(&mut state, changed);
    }

    /// The server answered 429.
    pub fn throttled(&self) {
        let limiter = self.limiter;
        let mut state = limiter.lock();
        let changed = state.aimd.on_throttled(limiter.started.elapsed());
        limiter.apply(&mut state, changed);
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut state = self.limiter.lock();
        state.in_flight -= 1;
        if let Some(permit) = self.permit.take()
            && state.circulating > state.aimd.limit()
        {
            permit.forget();
            state.circulating -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    /// Feeds `rounds` windows of successes, each taking `round_time(limit)`.
    fn run(aimd: &mut Aimd, rounds: usize, round_time: impl Fn(usize) -> Duration) {
        let mut now = Duration::ZERO;
        for _ in 0..rounds {
            let limit = aimd.limit();
            let step = round_time(limit) / limit as u32;
            for _ in 0..limit {
                now += step;
                aimd.on_success(now);
            }
        }
    }

    #[test]
    fn the_limit_rises_while_more_requests_in_flight_finish_more_per_second() {
        let mut aimd = Aimd::new(8, 32);
        // Fixed latency: a round takes 50 ms however many are in it.
        run(&mut aimd, 40, |_| ms(50));
        assert_eq!(aimd.limit(), 32, "up to the ceiling, never past it");
    }

    #[test]
    fn the_limit_holds_when_throughput_stops_growing() {
        let mut aimd = Aimd::new(8, 64);
        // The server does 400 requests per second whatever the concurrency.
        run(&mut aimd, 40, |limit| ms(limit as u64 * 1000 / 400));
        assert!(aimd.limit() <= 10, "limit {}", aimd.limit());
    }

    #[test]
    fn throttling_halves_the_limit_once_per_round() {
        let mut aimd = Aimd::new(8, 32);
        run(&mut aimd, 8, |_| ms(50));
        assert_eq!(aimd.limit(), 16);
        assert_eq!(aimd.on_throttled(ms(10_000)), Some(8));
        // The rest of the round was in flight already and saw the same crowd.
        for _ in 0..10 {
            assert_eq!(aimd.on_throttled(ms(10_001)), None);
        }
        assert_eq!(aimd.limit(), 8);
        // A new round that is throttled again halves again, down to one and no further.
        let mut now = ms(10_002);
        for _ in 0..8 {
            now += ms(1);
            aimd.on_success(now);
        }
        assert_eq!(aimd.limit(), 9, "the first round after a decrease raises");
        assert_eq!(aimd.on_throttled(now), Some(4));
        for round in 0..5 {
            for _ in 0..aimd.limit() {
                now += ms(1);
                aimd.on_success(now);
            }
            aimd.on_throttled(now + ms(round));
        }
        assert_eq!(aimd.limit(), 1);
    }

    #[tokio::test]
    async fn the_limiter_admits_no_more_than_the_limit_and_shrinks_as_slots_return() {
        let limiter = AdaptiveLimiter::new(32);
        assert_eq!(limiter.limit(), INITIAL_LIMIT);
        let mut slots = Vec::new();
        for _ in 0..INITIAL_LIMIT {
            slots.push(limiter.acquire().await.expect("open"));
        }
        assert!(limiter.semaphore.try_acquire().is_err(), "all taken");
        slots[0].throttled();
        assert_eq!(limiter.limit(), INITIAL_LIMIT / 2);
        slots.clear();
        // Only the new limit's worth of permits is left in circulation.
        let held: Vec<_> = (0..INITIAL_LIMIT / 2)
            .map(|_| limiter.semaphore.try_acquire().expect("within the limit"))
            .collect();
        assert!(limiter.semaphore.try_acquire().is_err(), "over the limit");
        drop(held);
        assert_eq!(limiter.peak_in_flight(), INITIAL_LIMIT);
    }
}
