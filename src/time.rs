//! Conversion between [`Instant`]s and the integer ticks the
//! [wheel](crate::wheel) counts in.

use std::time::{Duration, Instant};

/// Maps real time onto ticks of a fixed length, counted from a start instant.
///
/// Deadlines are rounded *up* to the next tick boundary and the current time
/// *down*, so a timer scheduled through a `TimeSource` is never due before its
/// deadline instant.
///
/// # Examples
///
/// ```
/// use std::time::{Duration, Instant};
/// use wheel_server::time::TimeSource;
///
/// let start = Instant::now();
/// let source = TimeSource::new(start, Duration::from_millis(100));
/// assert_eq!(source.now_tick(start + Duration::from_millis(250)), 2);
/// assert_eq!(source.deadline_tick(start + Duration::from_millis(250)), 3);
/// assert_eq!(source.ticks_ceil(Duration::from_secs(5)), 50);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct TimeSource {
    start: Instant,
    tick_nanos: u64,
}

impl TimeSource {
    /// A time source whose tick 0 starts at `start`.
    ///
    /// # Panics
    ///
    /// If `tick` is zero or longer than `u64::MAX` nanoseconds.
    pub fn new(start: Instant, tick: Duration) -> TimeSource {
        let tick_nanos = u64::try_from(tick.as_nanos()).expect("tick too long");
        assert!(tick_nanos > 0, "tick must be longer than zero");
        TimeSource { start, tick_nanos }
    }

    /// The length of one tick.
    pub fn tick(&self) -> Duration {
        Duration::from_nanos(self.tick_nanos)
    }

    /// The tick `t` falls in (rounded down). Instants before the start map
    /// to tick 0.
    pub fn now_tick(&self, t: Instant) -> u64 {
        self.nanos_since_start(t) / self.tick_nanos
    }

    /// The first tick boundary at or after `t` (rounded up): the tick a
    /// deadline at `t` must be scheduled for so that it never fires early.
    pub fn deadline_tick(&self, t: Instant) -> u64 {
        self.nanos_since_start(t).div_ceil(self.tick_nanos)
    }

    /// The number of ticks covering `d`, rounded up.
    pub fn ticks_ceil(&self, d: Duration) -> u64 {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        nanos.div_ceil(self.tick_nanos)
    }

    /// The instant at which tick `tick` begins.
    pub fn instant_of(&self, tick: u64) -> Instant {
        self.start + Duration::from_nanos(tick.saturating_mul(self.tick_nanos))
    }

    fn nanos_since_start(&self, t: Instant) -> u64 {
        let elapsed = t.saturating_duration_since(self.start);
        u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> (Instant, TimeSource) {
        let start = Instant::now();
        (start, TimeSource::new(start, Duration::from_millis(10)))
    }

    #[test]
    fn boundaries_round_the_right_way() {
        let (start, s) = source();
        let ms = Duration::from_millis;
        assert_eq!(s.now_tick(start), 0);
        assert_eq!(s.deadline_tick(start), 0);
        assert_eq!(s.now_tick(start + ms(10)), 1);
        assert_eq!(s.deadline_tick(start + ms(10)), 1);
        assert_eq!(s.now_tick(start + ms(19)), 1);
        assert_eq!(s.deadline_tick(start + ms(11)), 2);
        assert_eq!(s.instant_of(3), start + ms(30));
    }

    #[test]
    fn a_deadline_tick_never_begins_before_the_deadline() {
        let (start, s) = source();
        for micros in (0..100_000).step_by(777) {
            let deadline = start + Duration::from_micros(micros);
            assert!(s.instant_of(s.deadline_tick(deadline)) >= deadline);
            assert!(s.instant_of(s.now_tick(deadline)) <= deadline);
        }
    }

    #[test]
    fn durations_round_up() {
        let (_, s) = source();
        assert_eq!(s.ticks_ceil(Duration::ZERO), 0);
        assert_eq!(s.ticks_ceil(Duration::from_millis(1)), 1);
        assert_eq!(s.ticks_ceil(Duration::from_millis(10)), 1);
        assert_eq!(s.ticks_ceil(Duration::from_millis(21)), 3);
    }

    #[test]
    fn instants_before_the_start_are_tick_zero() {
        let (start, s) = source();
        let before = start.checked_sub(Duration::from_secs(1));
        if let Some(before) = before {
            assert_eq!(s.now_tick(before), 0);
        }
    }
}
