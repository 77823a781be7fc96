//! What to do for one connection when its timer fires: plain arithmetic on
//! ticks, no clock, no I/O, so that every rule is tested as arithmetic.
//!
//! A connection has one timer, set for the earliest tick at which something
//! may have to happen: its idle deadline, its next probe, its maximum-age
//! drain, or the end of that drain's grace period. When it fires,
//! [`Schedule::step`] looks at the connection's activity stamp and says
//! what to do ([`Step`]) and when to look again.
//!
//! # Stamps and jumps
//!
//! A stamp `p` means a message arrived while `p` was the published tick,
//! that is before tick `p + 1` was published. Deadlines are computed from
//! that upper bound, so a connection is never closed before it has been
//! idle for the timeout. If the timer thread falls behind and publishes a
//! jump from `p` straight to `q`, stamps of `p` may be as late as `q`;
//! [`Jumps`] remembers such jumps for as long as they matter, so a stall of
//! the timer thread delays expiries rather than making them early.

use std::collections::VecDeque;

/// The connection-independent settings, in ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Schedule {
    /// The idle timeout.
    pub(crate) idle: Option<u64>,
    /// Probe a connection silent this long, and again as long as it stays
    /// silent.
    pub(crate) probe: Option<u64>,
    /// How long a maximum-age drain may last before it is forced; `None`:
    /// until the client hangs up (or the idle timeout).
    pub(crate) age_grace: Option<u64>,
}

/// One connection's place in its schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    /// The last probe: (the activity stamp it was sent for, the tick it was
    /// sent at).
    probe: Option<(u64, u64)>,
    /// The activity stamp when the timer was last armed: a different stamp
    /// at the next fire means the connection was active meanwhile.
    pub(crate) armed_stamp: u64,
    /// The maximum-age schedule, if there is one.
    age: Option<AgeStage>,
    /// The tick at which the connection's credentials expire, if they do.
    pub(crate) expires: Option<u64>,
}

/// Where a connection is in its maximum-age schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AgeStage {
    /// The drain begins at this tick.
    Drain(u64),
    /// The drain is forced at this tick.
    Force(u64),
}

/// What the timer thread must do for a connection whose timer fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Silent for the whole idle timeout: close it now (CLOSE 4000).
    Expire,
    /// Its credentials expired: close it now (CLOSE 4002).
    TokenExpired,
    /// A draining connection went silent past the idle timeout, or its
    /// grace period ended: force the drain to its end.
    Force,
    /// The maximum age is reached: start a drain (CLOSE 1001), then look
    /// again at `then` (`None`: nothing left to time).
    Drain {
        /// The next tick to look at it.
        then: Option<u64>,
    },
    /// Silent for the probe interval: send a PING, then look again at
    /// `then`.
    Probe {
        /// The next tick to look at it.
        then: u64,
    },
    /// Nothing to do before this tick.
    Wait(u64),
    /// Nothing left to time (a shutdown drain without an idle timeout:
    /// shutdown's own grace period ends it).
    Done,
}

impl Entry {
    /// A new connection stamped `stamp`, whose maximum-age drain (if any)
    /// is due `age` ticks after that.
    pub(crate) fn new(stamp: u64, age: Option<u64>) -> Entry {
        Entry {
            probe: None,
            armed_stamp: stamp,
            age: age.map(|age| AgeStage::Drain(stamp + age)),
            expires: None,
        }
    }
}

impl Schedule {
    /// Decides what to do for a connection at tick `now`: `stamp` is its
    /// activity stamp and `base` the tick that superseded it
    /// ([`Jumps::superseded`]); `draining` says whether a drain is under
    /// way. Updates `entry` as if the step is carried out.
    pub(crate) fn step(
        &self,
        entry: &mut Entry,
        base: u64,
        stamp: u64,
        now: u64,
        draining: bool,
    ) -> Step {
        let idle_over = self.idle.is_some_and(|idle| base + idle <= now);
        entry.armed_stamp = stamp;
        if entry.expires.is_some_and(|at| at <= now) {
            // A draining connection is forced to its end instead.
            return if draining {
                Step::Force
            } else {
                Step::TokenExpired
            };
        }
        if draining {
            let grace_over = matches!(entry.age, Some(AgeStage::Force(at)) if at <= now);
            if idle_over || grace_over {
                return Step::Force;
            }
        } else if idle_over {
            return Step::Expire;
        } else if matches!(entry.age, Some(AgeStage::Drain(at)) if at <= now) {
            entry.age = self.age_grace.map(|grace| AgeStage::Force(now + grace));
            let next = self.next_deadline(entry, base, stamp, true);
            return Step::Drain {
                then: (next != u64::MAX).then(|| next.max(now + 1)),
            };
        }
        // Draining: no PINGs after a CLOSE (only answers may follow it).
        if !draining
            && self
                .probe_due(entry, base, stamp)
                .is_some_and(|due| due <= now)
        {
            entry.probe = Some((stamp, now));
            let next = self.next_deadline(entry, base, stamp, false);
            return Step::Probe {
                then: next.max(now + 1),
            };
        }
        match self.next_deadline(entry, base, stamp, draining) {
            u64::MAX => Step::Done,
            // A deadline not after `now` would fire again in the same tick.
            next => Step::Wait(next.max(now + 1)),
        }
    }

    /// When the next probe is due for a connection stamped `stamp`.
    fn probe_due(&self, entry: &Entry, base: u64, stamp: u64) -> Option<u64> {
        let probe = self.probe?;
        Some(match entry.probe {
            // Still silent since the last PING: the next one, `probe` later.
            Some((for_stamp, sent)) if for_stamp == stamp => sent + probe,
            _ => base + probe,
        })
    }

    /// The earliest tick at which something must happen to this
    /// connection; `u64::MAX` if nothing is timed.
    pub(crate) fn next_deadline(
        &self,
        entry: &Entry,
        base: u64,
        stamp: u64,
        draining: bool,
    ) -> u64 {
        // The credentials' expiry is a deadline like the idle one.
        let idle = self
            .idle
            .map_or(u64::MAX, |idle| base + idle)
            .min(entry.expires.unwrap_or(u64::MAX));
        if draining {
            return match entry.age {
                Some(AgeStage::Force(at)) => idle.min(at),
                _ => idle,
            };
        }
        let probe = self.probe_due(entry, base, stamp).unwrap_or(u64::MAX);
        let age = match entry.age {
            Some(AgeStage::Drain(at)) => at,
            _ => u64::MAX,
        };
        idle.min(probe).min(age)
    }

    /// Whether connections need timers at all.
    pub(crate) fn times_anything(&self, max_age: bool) -> bool {
        self.idle.is_some() || self.probe.is_some() || max_age
    }
}

/// Remembers when the published clock skipped ticks, so that a stamp can be
/// mapped to the tick at which it stopped being current.
#[derive(Debug, Default)]
pub(crate) struct Jumps {
    /// `(from, to)`: the clock went from `from` straight to `to > from + 1`.
    /// Sorted by `from`.
    jumps: VecDeque<(u64, u64)>,
}

impl Jumps {
    /// Records that the clock went from `from` to `to`.
    pub(crate) fn record(&mut self, from: u64, to: u64) {
        if to > from + 1 {
            self.jumps.push_back((from, to));
        }
    }

    /// The tick at which stamp `p` stopped being the published tick.
    pub(crate) fn superseded(&self, p: u64) -> u64 {
        match self.jumps.binary_search_by_key(&p, |&(from, _)| from) {
            Ok(i) => self.jumps[i].1,
            Err(_) => p + 1,
        }
    }

    /// Forgets jumps that no deadline computed now could depend on: a stamp
    /// from before `to` gives a deadline of at most `to + horizon`, already
    /// past once `now` is beyond it.
    pub(crate) fn prune(&mut self, now: u64, horizon: u64) {
        while self
            .jumps
            .front()
            .is_some_and(|&(_, to)| to.saturating_add(horizon) < now)
        {
            self.jumps.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Schedule = Schedule {
        idle: Some(10),
        probe: None,
        age_grace: None,
    };

    /// Steps a connection that stays silent after stamp `stamp` from tick
    /// `from` on, following each step's next tick, until it expires, is
    /// forced or needs nothing more; returns the steps with their ticks.
    fn silent(
        schedule: Schedule,
        mut entry: Entry,
        stamp: u64,
        mut now: u64,
        draining: bool,
    ) -> Vec<(u64, Step)> {
        let mut steps = Vec::new();
        let mut draining = draining;
        for _ in 0..100 {
            let step = schedule.step(&mut entry, stamp + 1, stamp, now, draining);
            steps.push((now, step));
            now = match step {
                Step::Wait(t) | Step::Probe { then: t } => t,
                Step::Drain { then: Some(t) } => {
                    draining = true;
                    t
                }
                Step::Expire
                | Step::TokenExpired
                | Step::Force
                | Step::Done
                | Step::Drain { then: None } => break,
            };
        }
        steps
    }

    #[test]
    fn a_silent_connection_expires_idle_ticks_after_the_tick_that_superseded_its_stamp() {
        let entry = Entry::new(0, None);
        assert_eq!(IDLE.next_deadline(&entry, 1, 0, false), 11);
        assert_eq!(silent(IDLE, entry, 0, 11, false), [(11, Step::Expire)]);
    }

    #[test]
    fn a_timer_firing_early_waits_for_the_rest() {
        let mut entry = Entry::new(0, None);
        assert_eq!(IDLE.step(&mut entry, 1, 0, 5, false), Step::Wait(11));
    }

    #[test]
    fn activity_since_arming_moves_the_deadline_on() {
        let mut entry = Entry::new(0, None);
        // Active at tick 7: idle from 8, so due at 18.
        assert_eq!(IDLE.step(&mut entry, 8, 7, 11, false), Step::Wait(18));
        assert_eq!(entry.armed_stamp, 7);
    }

    #[test]
    fn probes_repeat_every_interval_while_silent_and_stop_at_the_idle_deadline() {
        let schedule = Schedule {
            idle: Some(10),
            probe: Some(3),
            age_grace: None,
        };
        let entry = Entry::new(0, None);
        assert_eq!(
            silent(schedule, entry, 0, 4, false),
            [
                (4, Step::Probe { then: 7 }),
                (7, Step::Probe { then: 10 }),
                (10, Step::Probe { then: 11 }),
                (11, Step::Expire),
            ]
        );
    }

    #[test]
    fn max_age_drains_then_forces_after_the_grace_period() {
        let schedule = Schedule {
            idle: Some(100),
            probe: None,
            age_grace: Some(5),
        };
        let entry = Entry::new(0, Some(20));
        assert_eq!(schedule.next_deadline(&entry, 1, 0, false), 20);
        let mut entry = entry;
        // Active just before: the drain starts at 20, forced at 25.
        assert_eq!(
            schedule.step(&mut entry, 20, 19, 20, false),
            Step::Drain { then: Some(25) }
        );
        assert_eq!(schedule.step(&mut entry, 20, 19, 25, true), Step::Force);
    }

    #[test]
    fn a_drain_without_grace_ends_at_the_idle_deadline_and_never_probes() {
        let schedule = Schedule {
            idle: Some(10),
            probe: Some(2),
            age_grace: None,
        };
        let entry = Entry::new(0, None);
        assert_eq!(
            silent(schedule, entry, 0, 3, true),
            [(3, Step::Wait(11)), (11, Step::Force)]
        );
    }

    #[test]
    fn a_shutdown_drain_with_nothing_timed_is_done() {
        let schedule = Schedule::default();
        let mut entry = Entry::new(0, None);
        assert_eq!(schedule.step(&mut entry, 1, 0, 5, true), Step::Done);
        assert!(!schedule.times_anything(false));
        assert!(schedule.times_anything(true));
    }

    #[test]
    fn a_token_expiry_is_a_deadline_that_activity_does_not_move() {
        let mut entry = Entry::new(0, None);
        entry.expires = Some(7);
        assert_eq!(IDLE.next_deadline(&entry, 1, 0, false), 7);
        // Active at 5: the idle deadline moves to 16, the expiry stays.
        assert_eq!(IDLE.step(&mut entry, 6, 5, 5, false), Step::Wait(7));
        assert_eq!(IDLE.step(&mut entry, 6, 5, 7, false), Step::TokenExpired);
        // While draining, an expired token forces the drain's end.
        assert_eq!(IDLE.step(&mut entry, 6, 5, 7, true), Step::Force);
    }

    #[test]
    fn stamps_are_superseded_by_the_next_published_tick() {
        let mut jumps = Jumps::default();
        jumps.record(4, 5);
        jumps.record(5, 9);
        jumps.record(9, 10);
        jumps.record(10, 12);
        assert_eq!(jumps.superseded(4), 5);
        assert_eq!(jumps.superseded(5), 9);
        assert_eq!(jumps.superseded(9), 10);
        assert_eq!(jumps.superseded(10), 12);
        assert_eq!(jumps.superseded(12), 13);
    }

    #[test]
    fn a_jump_delays_expiry_rather_than_making_it_early() {
        let mut jumps = Jumps::default();
        // Stamped at 5, but the clock jumped to 9: the message may have
        // arrived as late as just before 9.
        jumps.record(5, 9);
        let mut entry = Entry::new(5, None);
        let base = jumps.superseded(5);
        assert_eq!(IDLE.step(&mut entry, base, 5, 16, false), Step::Wait(19));
        assert_eq!(IDLE.step(&mut entry, base, 5, 19, false), Step::Expire);
    }

    #[test]
    fn old_jumps_are_forgotten() {
        let mut jumps = Jumps::default();
        jumps.record(5, 9);
        jumps.record(20, 30);
        jumps.prune(40, 10);
        assert_eq!(jumps.superseded(5), 6);
        assert_eq!(jumps.superseded(20), 30);
    }
}
