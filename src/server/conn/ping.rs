//! The ping-flood policy: PINGs closer together than a minimum interval are
//! strikes; too many strikes in a row end the connection with CLOSE 1008.

use std::time::{Duration, Instant};

/// Per-connection PING rate state.
#[derive(Debug)]
pub(crate) struct PingPolicy {
    /// `None`: every PING is fine.
    min_interval: Option<Duration>,
    /// Strikes tolerated; one more closes the connection.
    max_strikes: u32,
    /// When the previous PING arrived.
    last: Option<Instant>,
    /// Consecutive PINGs that came too soon. A PING that respects the
    /// interval clears them, so occasional jitter over a long life is never
    /// punished, only a sustained flood.
    strikes: u32,
}

impl PingPolicy {
    pub(crate) fn new(min_interval: Option<Duration>, max_strikes: u32) -> PingPolicy {
        PingPolicy {
            min_interval,
            max_strikes,
            last: None,
            strikes: 0,
        }
    }

    /// Records a PING arriving at `now`; `false` means the connection has
    /// struck out.
    pub(crate) fn allow(&mut self, now: impl FnOnce() -> Instant) -> bool {
        let Some(min) = self.min_interval else {
            return true;
        };
        let now = now();
        if let Some(last) = self.last.replace(now)
            && now.duration_since(last) < min
        {
            self.strikes += 1;
            return self.strikes <= self.max_strikes;
        }
        self.strikes = 0;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_strikes_than_allowed_strike_out() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut policy = PingPolicy::new(Some(ms(100)), 2);
        assert!(policy.allow(|| t0));
        assert!(policy.allow(|| t0 + ms(10)), "strike 1");
        assert!(policy.allow(|| t0 + ms(20)), "strike 2");
        assert!(!policy.allow(|| t0 + ms(30)), "strike 3 > 2");
    }

    #[test]
    fn a_well_spaced_ping_clears_strikes() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut policy = PingPolicy::new(Some(ms(100)), 1);
        assert!(policy.allow(|| t0));
        assert!(policy.allow(|| t0 + ms(10)), "strike 1");
        assert!(policy.allow(|| t0 + ms(200)), "respects the interval");
        assert!(policy.allow(|| t0 + ms(210)), "strike 1 again");
        assert!(!policy.allow(|| t0 + ms(220)), "strike 2");
    }

    #[test]
    fn no_interval_allows_everything_without_reading_the_clock() {
        let mut policy = PingPolicy::new(None, 0);
        for _ in 0..1000 {
            assert!(policy.allow(|| unreachable!("clock read with no policy")));
        }
    }
}
