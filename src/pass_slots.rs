//! How many environments' passes work at once in one daemon: a pass holds a slot while it
//! reads, plans and writes, and gives it back while it only waits (readiness polls, a bake, a
//! hook command), so a slow rollout never holds up the others.
//!
//! Without a limit, every environment starts its pass together (a daemon start, a commit that
//! touches every folder) and all of them hold their pass's state (the folder's documents, the
//! plan, the answers of their writes) until the cluster's shared window of requests has let
//! each one through: 1,000 environments finished their first apply together after 70 s, with
//! the daemon at 589 MiB at the peak, and the memory freed after such a peak stays scattered
//! between the objects that live on. With slots, passes finish one batch after another, and
//! the peak is a batch's worth (`benches/fleet.sh`; README "A fleet on one daemon").

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Passes working at once when the daemon is not told otherwise: enough to keep a cluster's
/// window of requests full (each pass writes up to `concurrency` objects at once) and both
/// cores busy, few enough that their state stays a small part of the daemon's memory.
pub const PASSES_AT_ONCE: usize = 16;

/// The daemon's slots, shared by every environment task.
#[derive(Debug, Clone)]
pub struct PassSlots {
    slots: Arc<Semaphore>,
}

impl Default for PassSlots {
    fn default() -> Self {
        Self::new(PASSES_AT_ONCE)
    }
}

impl PassSlots {
    /// `at_once` passes may work together (at least one).
    pub fn new(at_once: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(at_once.max(1))),
        }
    }

    /// A pass's handle on the slots, holding none yet.
    pub fn slot(&self) -> Slot {
        Slot {
            slots: self.slots.clone(),
            held: None,
        }
    }

    /// Slots free now.
    pub fn available(&self) -> usize {
        self.slots.available_permits()
    }
}

/// One pass's slot: held or not; given back when dropped.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<Semaphore>,
    held: Option<OwnedSemaphorePermit>,
}

impl Slot {
    /// Whether the pass holds its slot now.
    pub fn is_held(&self) -> bool {
        self.held.is_some()
    }

    /// Waits for a slot (first come, first served), unless one is held already. Dropping the
    /// future gives up the place in line.
    pub async fn take(&mut self) {
        if self.held.is_some() {
            return;
        }
        // The semaphore is never closed: an error cannot happen; the pass then goes on
        // without a slot rather than not at all.
        self.held = self.slots.clone().acquire_owned().await.ok();
    }

    /// Gives the slot back while the pass only waits.
    pub fn give_back(&mut self) {
        self.held = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pass_waits_for_a_slot_until_one_is_given_back_and_the_first_in_line_gets_it() {
        let slots = PassSlots::new(1);
        let mut first = slots.slot();
        first.take().await;
        assert!(first.is_held());
        assert_eq!(slots.available(), 0);

        let mut second = slots.slot();
        let mut third = slots.slot();
        let second_waits = tokio::spawn(async move {
            second.take().await;
            second
        });
        tokio::task::yield_now().await;
        let third_waits = tokio::spawn(async move {
            third.take().await;
            third
        });
        tokio::task::yield_now().await;
        assert!(!second_waits.is_finished() && !third_waits.is_finished());

        first.give_back();
        let second = second_waits.await.expect("second in line");
        assert!(second.is_held());
        assert!(!third_waits.is_finished(), "the third is still in line");
        drop(second);
        assert!(third_waits.await.expect("third in line").is_held());
        assert_eq!(slots.available(), 1, "dropped slots are given back");
    }

    #[tokio::test]
    async fn taking_a_held_slot_again_takes_no_second_one() {
        let slots = PassSlots::new(2);
        let mut slot = slots.slot();
        slot.take().await;
        slot.take().await;
        assert_eq!(slots.available(), 1);
        slot.give_back();
        slot.give_back();
        assert_eq!(slots.available(), 2);
    }
}
