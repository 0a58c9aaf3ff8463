//! Who acts for an environment when several daemons share a cluster: what to do with a Lease
//! (acquire, renew, release, leave it), how long a held lease lets this daemon write, and each
//! daemon's fair share. Pure: the clocks are passed in.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

/// The `[ha]` timings every decision uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long a lease holds without a renewal.
    pub duration: Duration,
    /// How often the holder renews.
    pub renew_interval: Duration,
    /// The largest difference between two daemons' wall clocks that is tolerated.
    pub max_skew: Duration,
}

impl Timing {
    /// How long before its lease runs out a daemon stops starting writes: a write started
    /// later might land after a successor took over. It covers one renew interval (a renewal
    /// that failed once is not yet a loss) and is never more than a third of the lease.
    pub fn write_margin(&self) -> Duration {
        self.renew_interval.min(self.duration / 3)
    }
}

/// A Lease as read from the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// `spec.holderIdentity`; `None` (or empty) once released.
    pub holder: Option<String>,
    /// `spec.renewTime` (or `acquireTime` when it was never renewed).
    pub renewed: Option<DateTime<Utc>>,
    /// `spec.leaseDurationSeconds`.
    pub duration: Duration,
}

impl Observed {
    /// Whether the holder's term is over by this host's clock, with the skew bound on top, so
    /// that a holder whose clock is behind ours by up to `max_skew` still sees its own lease as
    /// valid whenever we see it as valid. A released or never-renewed lease is over.
    pub fn expired(&self, now: DateTime<Utc>, max_skew: Duration) -> bool {
        let Some(renewed) = self.renewed else {
            return true;
        };
        if self.holder().is_none() {
            return true;
        }
        let term =
            chrono::Duration::from_std(self.duration + max_skew).unwrap_or(chrono::Duration::MAX);
        now > renewed + term
    }

    /// The holder, unless released.
    pub fn holder(&self) -> Option<&str> {
        self.holder.as_deref().filter(|holder| !holder.is_empty())
    }

    /// When other daemons may take it, by this host's clock.
    pub fn expires(&self, max_skew: Duration) -> Option<DateTime<Utc>> {
        let term = chrono::Duration::from_std(self.duration + max_skew).ok()?;
        self.holder()?;
        Some(self.renewed? + term)
    }
}

/// What a daemon does with one environment's lease on this round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// It holds the lease and keeps it: renew once the renew interval has passed.
    Renew,
    /// Nobody holds it (never taken, released, or the holder's term is over): take it.
    Acquire,
    /// It holds the lease but has more than its share: give it up at once.
    Release,
    /// Another daemon holds it, or this one has its share already: leave it.
    Leave,
}

/// What `me` does with a lease observed as `observed` (`None`: no Lease object yet), when
/// `keep` says whether it wants the environment (it has room for it, or holds it within its
/// share).
pub fn next_step(
    observed: Option<&Observed>,
    me: &str,
    now: DateTime<Utc>,
    timing: &Timing,
    keep: bool,
) -> Step {
    let Some(observed) = observed else {
        return if keep { Step::Acquire } else { Step::Leave };
    };
    match observed.holder() {
        Some(holder) if holder == me => {
            if keep {
                Step::Renew
            } else {
                Step::Release
            }
        }
        _ if !observed.expired(now, timing.max_skew) => Step::Leave,
        _ if keep => Step::Acquire,
        _ => Step::Leave,
    }
}

/// Until when a daemon may write under a lease whose acquisition or renewal it *sent* at
/// `sent`, by its own monotonic clock (a pause or a wall clock jump does not stretch it).
/// The renewal carries the holder's wall clock at `sent`; other daemons add the skew bound
/// before they take it ([`Observed::expired`]), and the holder takes the bound off as well, so
/// its term ends first even when the clocks differ by up to twice the bound.
pub fn valid_until(sent: Instant, timing: &Timing) -> Instant {
    sent + timing.duration.saturating_sub(timing.max_skew)
}

/// Whether a write may start at `now`: the lease stays valid for at least the margin after it.
pub fn may_write(valid_until: Option<Instant>, now: Instant, margin: Duration) -> bool {
    valid_until.is_some_and(|until| now + margin <= until)
}

/// The most environments one daemon takes while others are up: an even split rounded up, and
/// one more so that daemons do not hand environments back and forth over a remainder.
pub fn fair_share(environments: usize, live_daemons: usize) -> usize {
    environments.div_ceil(live_daemons.max(1)) + 1
}

/// The most environments `me` keeps this round, given how many each daemon that is up holds
/// (`held`, by identity, every live daemon listed, `me` too): its [`fair_share`], or the even
/// split without the extra one while some other daemon holds two or more fewer than an even
/// split rounded down (so that a third daemon is not left with none while two hold their
/// share plus one). One fewer is left alone: handing one over for it would leave the
/// environment with no holder for a moment, over a remainder.
pub fn room(
    environments: usize,
    held: &std::collections::BTreeMap<String, usize>,
    me: &str,
) -> usize {
    let live = held.len().max(1);
    let even = environments.div_ceil(live);
    let starving = held
        .iter()
        .any(|(daemon, count)| daemon != me && count + 1 < environments / live);
    if starving {
        even
    } else {
        fair_share(environments, live)
    }
}

/// Which held environments to give up to come down to `share`: idle ones before those with a
/// pass under way, the last by name first (a stable choice, so two rounds agree).
pub fn surplus(held: &[(String, bool)], share: usize) -> Vec<String> {
    let excess = held.len().saturating_sub(share);
    let mut order: Vec<&(String, bool)> = held.iter().collect();
    order.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)));
    order
        .into_iter()
        .take(excess)
        .map(|(name, _)| name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing() -> Timing {
        Timing {
            duration: Duration::from_secs(15),
            renew_interval: Duration::from_secs(5),
            max_skew: Duration::from_secs(2),
        }
    }

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).expect("a valid time")
    }

    fn held_by(holder: &str, renewed: i64) -> Observed {
        Observed {
            holder: Some(holder.into()),
            renewed: Some(at(renewed)),
            duration: Duration::from_secs(15),
        }
    }

    #[test]
    fn a_lease_nobody_made_or_holds_is_acquired_when_there_is_room() {
        assert_eq!(next_step(None, "a", at(0), &timing(), true), Step::Acquire);
        assert_eq!(next_step(None, "a", at(0), &timing(), false), Step::Leave);
        let released = Observed {
            holder: Some(String::new()),
            ..held_by("b", 0)
        };
        assert_eq!(
            next_step(Some(&released), "a", at(1), &timing(), true),
            Step::Acquire
        );
    }

    #[test]
    fn the_holder_renews_and_gives_up_what_it_has_no_room_for() {
        let mine = held_by("a", 0);
        assert_eq!(
            next_step(Some(&mine), "a", at(4), &timing(), true),
            Step::Renew
        );
        assert_eq!(
            next_step(Some(&mine), "a", at(4), &timing(), false),
            Step::Release
        );
    }

    #[test]
    fn another_holders_lease_is_left_until_its_term_and_the_skew_bound_are_over() {
        let theirs = held_by("b", 0);
        // 15 s lease + 2 s skew: still theirs at 17 s, ours to take after.
        for second in [0, 10, 15, 17] {
            assert_eq!(
                next_step(Some(&theirs), "a", at(second), &timing(), true),
                Step::Leave,
                "at {second} s"
            );
        }
        assert_eq!(
            next_step(Some(&theirs), "a", at(18), &timing(), true),
            Step::Acquire
        );
        // Expired but no room: still left for a daemon with room.
        assert_eq!(
            next_step(Some(&theirs), "a", at(18), &timing(), false),
            Step::Leave
        );
    }

    #[test]
    fn a_holder_stops_writing_before_any_daemon_within_the_skew_bound_may_steal() {
        let timing = timing();
        let sent = Instant::now();
        let until = valid_until(sent, &timing);
        let margin = timing.write_margin();
        assert_eq!(margin, Duration::from_secs(5));
        assert!(may_write(Some(until), sent, margin));
        // The last write may start 13 s - 5 s after sending the renewal.
        assert!(may_write(
            Some(until),
            sent + Duration::from_secs(8),
            margin
        ));
        assert!(!may_write(
            Some(until),
            sent + Duration::from_millis(8_001),
            margin
        ));
        assert!(!may_write(None, sent, margin));
        // renewTime is the holder's wall clock at `sent`. A thief whose clock runs 2 s ahead
        // may take the lease only after its 17 s past that stamp, the holder's 15 s: after
        // the holder's last write started (8 s) and its validity ended (13 s).
        let stamp = at(0);
        let thief_now = at(17) + chrono::Duration::milliseconds(1);
        assert!(held_by("b", 0).expired(thief_now, timing.max_skew));
        assert!(until <= sent + Duration::from_secs(15));
        assert_eq!(
            held_by("b", 0).expires(timing.max_skew),
            Some(stamp + chrono::Duration::seconds(17))
        );
    }

    #[test]
    fn a_paused_holder_finds_its_lease_over_by_its_monotonic_clock() {
        let timing = timing();
        let sent = Instant::now();
        let until = valid_until(sent, &timing);
        // Stopped for 30 s: whatever it was about to write is refused on waking.
        assert!(!may_write(
            Some(until),
            sent + Duration::from_secs(30),
            timing.write_margin()
        ));
    }

    #[test]
    fn fair_share_is_an_even_split_rounded_up_plus_one() {
        assert_eq!(fair_share(6, 2), 4);
        assert_eq!(fair_share(6, 1), 7);
        assert_eq!(fair_share(7, 3), 4);
        assert_eq!(fair_share(1000, 4), 251);
        assert_eq!(fair_share(3, 0), 4);
    }

    #[test]
    fn a_daemon_left_without_its_share_makes_the_others_come_down_to_an_even_split() {
        let counts = |pairs: &[(&str, usize)]| -> std::collections::BTreeMap<String, usize> {
            pairs.iter().map(|(d, n)| (d.to_string(), *n)).collect()
        };
        // Two daemons at 3 each: the extra one is allowed (3 + 1), so a remainder does not
        // make them hand environments back and forth.
        assert_eq!(room(6, &counts(&[("a", 3), ("b", 3)]), "a"), 4);
        assert_eq!(room(7, &counts(&[("a", 4), ("b", 3)]), "a"), 5);
        // b one below an even split rounded down: left as it is (4 and 2).
        assert_eq!(room(6, &counts(&[("a", 4), ("b", 2)]), "a"), 4);
        // b two below: a comes down to 3.
        assert_eq!(room(6, &counts(&[("a", 5), ("b", 1)]), "a"), 3);
        // Three: c has none while a and b hold 3 each; both come down to 2.
        let three = counts(&[("a", 3), ("b", 3), ("c", 0)]);
        assert_eq!(room(6, &three, "a"), 2);
        assert_eq!(room(6, &three, "b"), 2);
        assert_eq!(room(6, &three, "c"), 3);
        // Once c has its two, the extra one is allowed again.
        assert_eq!(room(6, &counts(&[("a", 2), ("b", 2), ("c", 2)]), "a"), 3);
        // Alone: everything, and one more.
        assert_eq!(room(6, &counts(&[("a", 6)]), "a"), 7);
    }

    #[test]
    fn surplus_gives_up_idle_environments_first() {
        let held = vec![
            ("a".to_string(), false),
            ("b".to_string(), true),
            ("c".to_string(), false),
            ("d".to_string(), false),
            ("e".to_string(), true),
            ("f".to_string(), false),
        ];
        assert_eq!(surplus(&held, 4), vec!["f".to_string(), "d".to_string()]);
        assert_eq!(surplus(&held, 6), Vec::<String>::new());
        assert_eq!(
            surplus(&held, 1),
            vec!["f", "d", "c", "a", "e"]
                .into_iter()
                .map(String::from)
                .collect::<Vec<_>>()
        );
    }
}
