//! Reconnect delays: capped exponential backoff with full jitter.

use std::time::Duration;

/// Capped exponential backoff with full jitter ("Exponential Backoff And
/// Jitter", AWS Architecture Blog, 2015).
///
/// Before retry `k` (the first retry after a failure is `k = 1`) the delay is
/// drawn uniformly from `[0, cap(k)]` with
/// `cap(k) = min(max, initial * multiplier^(k-1))`. Full jitter spreads
/// clients that lost the same server at the same instant across the whole
/// window, so they do not come back as a synchronised herd.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use wheel_server::client::Backoff;
///
/// let backoff = Backoff {
///     initial: Duration::from_secs(1),
///     max: Duration::from_secs(30),
///     multiplier: 2.0,
/// };
/// assert_eq!(backoff.cap(1), Duration::from_secs(1));
/// assert_eq!(backoff.cap(3), Duration::from_secs(4));
/// assert_eq!(backoff.cap(10), Duration::from_secs(30));
/// let mut rng = fastrand::Rng::with_seed(7);
/// assert!(backoff.delay(3, &mut rng) <= Duration::from_secs(4));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// Cap of the first retry's delay.
    pub initial: Duration,
    /// Cap of every delay.
    pub max: Duration,
    /// Growth of the cap per retry (at least 1).
    pub multiplier: f64,
}

impl Default for Backoff {
    /// 1 s, doubling, at most 30 s.
    fn default() -> Backoff {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
            multiplier: 2.0,
        }
    }
}

impl Backoff {
    /// The upper bound of the delay before retry `k` (`k >= 1`; 0 is
    /// treated as 1).
    pub fn cap(&self, k: u32) -> Duration {
        let exponent = k.saturating_sub(1).min(1024) as i32;
        let grown = self.initial.as_secs_f64() * self.multiplier.max(1.0).powi(exponent);
        if !grown.is_finite() || grown >= self.max.as_secs_f64() {
            self.max
        } else {
            Duration::from_secs_f64(grown).min(self.max)
        }
    }

    /// A delay for retry `k`, uniform in `[0, cap(k)]`.
    pub fn delay(&self, k: u32, rng: &mut fastrand::Rng) -> Duration {
        self.cap(k).mul_f64(rng.f64())
    }

    /// The delay after the server said it is going away (CLOSE 1001):
    /// uniform in `[0, initial / 4]`. Prompt, since another instance (or the
    /// restarted one) is usually ready, and still jittered, so a whole
    /// drained instance's clients do not arrive in one instant.
    pub fn prompt_delay(&self, rng: &mut fastrand::Rng) -> Duration {
        (self.initial / 4).mul_f64(rng.f64())
    }

    /// A delay for retry `k` when the server asked us to come back later
    /// (CLOSE 1013): uniform in `[cap(k) / 2, cap(k)]`, still jittered but
    /// never an instant retry.
    pub fn delay_at_least_half(&self, k: u32, rng: &mut fastrand::Rng) -> Duration {
        self.cap(k).mul_f64(0.5 + 0.5 * rng.f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff() -> Backoff {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(3),
            multiplier: 2.0,
        }
    }

    #[test]
    fn the_cap_grows_geometrically_up_to_the_max() {
        let b = backoff();
        let caps: Vec<u64> = (1..=8).map(|k| b.cap(k).as_millis() as u64).collect();
        assert_eq!(caps, [100, 200, 400, 800, 1600, 3000, 3000, 3000]);
        assert_eq!(b.cap(0), b.cap(1));
        assert_eq!(b.cap(u32::MAX), b.max, "no overflow for huge retry counts");
    }

    #[test]
    fn delays_stay_within_their_window() {
        let b = backoff();
        let mut rng = fastrand::Rng::with_seed(1);
        for k in 1..=20 {
            for _ in 0..200 {
                let d = b.delay(k, &mut rng);
                assert!(d <= b.cap(k), "retry {k}: {d:?} > {:?}", b.cap(k));
                assert!(d <= b.max);
                let hard = b.delay_at_least_half(k, &mut rng);
                assert!(
                    hard >= b.cap(k) / 2 && hard <= b.cap(k),
                    "retry {k}: {hard:?}"
                );
            }
        }
    }

    #[test]
    fn a_herd_of_clients_spreads_over_the_window() {
        // 1,000 clients that lost the same server draw their first delay.
        let b = Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
            multiplier: 2.0,
        };
        let mut rng = fastrand::Rng::with_seed(2024);
        let mut buckets = [0u32; 10];
        for _ in 0..1000 {
            let d = b.delay(1, &mut rng);
            let bucket = ((d.as_secs_f64() / b.cap(1).as_secs_f64()) * 10.0) as usize;
            buckets[bucket.min(9)] += 1;
        }
        // Uniform: about 100 per tenth of the window. A synchronised herd
        // would put them all in one bucket.
        for (i, n) in buckets.iter().enumerate() {
            assert!(
                (50..=150).contains(n),
                "bucket {i} holds {n} of 1000: {buckets:?}"
            );
        }
    }

    #[test]
    fn a_multiplier_below_one_does_not_shrink_the_cap() {
        let b = Backoff {
            multiplier: 0.5,
            ..backoff()
        };
        assert_eq!(b.cap(5), b.initial);
    }
}
