//! A token bucket: the one rate limiter behind the per-address connect rate
//! and the per-connection publish rate.
//!
//! The bucket holds at most `burst` tokens and gains `rate` per second; an
//! action costing `n` tokens is allowed while the bucket holds `n`. Time is
//! passed in, so the arithmetic is tested without a clock.

use std::time::Instant;

/// A token bucket (see the module docs).
#[derive(Clone, Copy, Debug)]
pub(crate) struct TokenBucket {
    /// Tokens gained per second.
    rate: f64,
    /// Most tokens held: the largest burst allowed after a quiet spell.
    burst: f64,
    /// Tokens as of `updated`.
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub(crate) fn new(rate: f64, burst: f64, now: Instant) -> TokenBucket {
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            updated: now,
        }
    }

    /// The tokens held at `now`.
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.updated = now;
    }

    /// Takes `cost` tokens if the bucket holds them at `now`.
    pub(crate) fn take(&mut self, cost: f64, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }

    /// Whether the bucket would be full at `now`: it then holds no
    /// information and can be forgotten.
    pub(crate) fn is_full_at(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens + elapsed * self.rate >= self.burst
    }
}

/// Refused publishes in a row after which a connection is closed (CLOSE
/// 1008 `publishing too fast`): a client that keeps publishing through
/// `ERR rate limited` is not reading its answers.
pub const RATE_LIMIT_STRIKES: u32 = 100;

/// One connection's publish rate: messages and payload bytes per second
/// (`--max-publish-rate`, `--max-publish-bytes`), each a token bucket with a
/// burst of one second's worth.
#[derive(Debug)]
pub(crate) struct PublishLimit {
    messages: Option<TokenBucket>,
    bytes: Option<TokenBucket>,
    /// Publishes refused since the last one allowed.
    strikes: u32,
}

/// What the publish limit said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PublishCheck {
    Allowed,
    /// Over the rate: `ERR rate limited`.
    Refused,
    /// Over the rate [`RATE_LIMIT_STRIKES`] times in a row: close.
    Abuse,
}

impl PublishLimit {
    /// The limit for `messages` and `bytes` per second (`None`: no limit of
    /// that kind); the bytes' burst is at least `largest`, so that one
    /// largest message always fits a full bucket.
    pub(crate) fn new(
        messages: Option<u32>,
        bytes: Option<u64>,
        largest: usize,
        now: Instant,
    ) -> PublishLimit {
        PublishLimit {
            messages: messages.map(|m| TokenBucket::new(f64::from(m), f64::from(m), now)),
            bytes: bytes.map(|b| TokenBucket::new(b as f64, (b as f64).max(largest as f64), now)),
            strikes: 0,
        }
    }

    /// Checks a publish of `len` payload bytes at `now` (spending tokens of
    /// both kinds only if both allow it).
    pub(crate) fn check(&mut self, len: usize, now: Instant) -> PublishCheck {
        let mut messages = self.messages;
        let mut bytes = self.bytes;
        let allowed = messages.as_mut().is_none_or(|b| b.take(1.0, now))
            && bytes.as_mut().is_none_or(|b| b.take(len as f64, now));
        if allowed {
            self.messages = messages;
            self.bytes = bytes;
            self.strikes = 0;
            return PublishCheck::Allowed;
        }
        self.strikes += 1;
        if self.strikes >= RATE_LIMIT_STRIKES {
            PublishCheck::Abuse
        } else {
            PublishCheck::Refused
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 3.0, t0);
        assert!((0..3).all(|_| bucket.take(1.0, t0)));
        assert!(!bucket.take(1.0, t0), "the burst is spent");
        // 10 per second: one token every 100 ms.
        assert!(!bucket.take(1.0, t0 + Duration::from_millis(50)));
        assert!(bucket.take(1.0, t0 + Duration::from_millis(150)));
        assert!(!bucket.is_full_at(t0 + Duration::from_millis(150)));
        assert!(bucket.is_full_at(t0 + Duration::from_secs(1)));
        // Never more than the burst, however long the quiet spell.
        let later = t0 + Duration::from_secs(3600);
        assert!((0..3).all(|_| bucket.take(1.0, later)));
        assert!(!bucket.take(1.0, later));
    }

    #[test]
    fn publishes_past_either_rate_are_refused_and_a_run_of_them_is_abuse() {
        let t0 = Instant::now();
        let mut limit = PublishLimit::new(Some(5), Some(1000), 600, t0);
        assert_eq!(limit.check(600, t0), PublishCheck::Allowed);
        // The bytes' bucket has 400 left: refused without spending a message.
        assert_eq!(limit.check(600, t0), PublishCheck::Refused);
        for _ in 0..4 {
            assert_eq!(limit.check(10, t0), PublishCheck::Allowed);
        }
        let refused_in_a_row = (0..RATE_LIMIT_STRIKES)
            .map(|_| limit.check(1, t0))
            .collect::<Vec<_>>();
        assert!(
            refused_in_a_row[..RATE_LIMIT_STRIKES as usize - 1]
                .iter()
                .all(|&c| c == PublishCheck::Refused)
        );
        assert_eq!(refused_in_a_row.last(), Some(&PublishCheck::Abuse));
        // One allowed publish (a second later) clears the strikes.
        let later = t0 + Duration::from_secs(1);
        assert_eq!(limit.check(600, later), PublishCheck::Allowed);
        assert_eq!(limit.check(600, later), PublishCheck::Refused);
    }

    #[test]
    fn a_cost_above_the_tokens_held_is_refused_without_spending() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(1000.0, 1000.0, t0);
        assert!(!bucket.take(1001.0, t0));
        assert!(bucket.take(1000.0, t0));
    }
}
