//! The client's heartbeat as a pure state machine: it is given the time and
//! what arrived, and says when to PING and when the server is dead.

use std::time::{Duration, Instant};

/// What the connection should do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Nothing until this instant (unless a message arrives).
    WaitUntil(Instant),
    /// Send a PING carrying this sequence number now.
    Ping(u64),
    /// `retries` PINGs in a row went unanswered: the server is dead.
    Dead,
}

/// Heartbeat state of one connection.
///
/// When nothing has been received for `interval`, PING; if no PONG comes
/// within `timeout`, PING again; after `retries` consecutive unanswered
/// PINGs the server is declared dead. Anything received is proof of life and
/// starts the cycle over. A silent dead server is therefore detected
/// `interval + timeout * retries` after the last thing it sent.
#[derive(Debug)]
pub(crate) struct Heartbeat {
    interval: Duration,
    timeout: Duration,
    retries: u32,
    /// When something was last received (or the connection opened).
    last_received: Instant,
    /// The PING awaiting its PONG: (sequence number, sent at).
    outstanding: Option<(u64, Instant)>,
    /// The last PING sent, kept after proof of life so a late PONG still
    /// yields an RTT.
    last_ping: Option<(u64, Instant)>,
    /// Consecutive unanswered PINGs.
    misses: u32,
    next_seq: u64,
}

impl Heartbeat {
    pub(crate) fn new(
        interval: Duration,
        timeout: Duration,
        retries: u32,
        now: Instant,
    ) -> Heartbeat {
        Heartbeat {
            interval,
            timeout,
            retries: retries.max(1),
            last_received: now,
            outstanding: None,
            last_ping: None,
            misses: 0,
            next_seq: 1,
        }
    }

    /// Something arrived: the server is alive.
    pub(crate) fn received(&mut self, now: Instant) {
        self.last_received = now;
        self.outstanding = None;
        self.misses = 0;
    }

    /// A PONG arrived (call [`received`](Self::received) too). Returns the
    /// round-trip time if it answers the last PING.
    pub(crate) fn pong(&mut self, seq: u64, now: Instant) -> Option<Duration> {
        match self.last_ping {
            Some((sent_seq, sent_at)) if sent_seq == seq => {
                self.last_ping = None;
                Some(now.saturating_duration_since(sent_at))
            }
            _ => None,
        }
    }

    /// What to do at `now`. A returned [`Action::Ping`] is recorded as sent.
    pub(crate) fn poll(&mut self, now: Instant) -> Action {
        let due = match self.outstanding {
            None => self.last_received + self.interval,
            Some((_, sent_at)) => sent_at + self.timeout,
        };
        if now < due {
            return Action::WaitUntil(due);
        }
        if self.outstanding.is_some() {
            self.misses += 1;
            if self.misses >= self.retries {
                return Action::Dead;
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.outstanding = Some((seq, now));
        self.last_ping = Some((seq, now));
        Action::Ping(seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_secs(25);
    const TIMEOUT: Duration = Duration::from_secs(5);

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn silent_server_is_dead_after_interval_plus_timeout_times_retries() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(INTERVAL, TIMEOUT, 3, t0);
        assert_eq!(hb.poll(t0), Action::WaitUntil(t0 + INTERVAL));
        assert_eq!(hb.poll(t0 + secs(25)), Action::Ping(1));
        assert_eq!(hb.poll(t0 + secs(26)), Action::WaitUntil(t0 + secs(30)));
        assert_eq!(hb.poll(t0 + secs(30)), Action::Ping(2));
        assert_eq!(hb.poll(t0 + secs(35)), Action::Ping(3));
        assert_eq!(hb.poll(t0 + secs(39)), Action::WaitUntil(t0 + secs(40)));
        assert_eq!(hb.poll(t0 + secs(40)), Action::Dead);
    }

    #[test]
    fn a_pong_resets_the_cycle_and_gives_the_rtt() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(INTERVAL, TIMEOUT, 3, t0);
        assert_eq!(hb.poll(t0 + secs(25)), Action::Ping(1));
        assert_eq!(hb.poll(t0 + secs(30)), Action::Ping(2));
        let at = t0 + secs(31);
        hb.received(at);
        assert_eq!(hb.pong(2, at), Some(secs(1)));
        assert_eq!(hb.pong(2, at), None, "one RTT per PING");
        assert_eq!(hb.poll(at), Action::WaitUntil(at + INTERVAL));
        // The misses were forgotten: three more are needed.
        assert_eq!(hb.poll(at + secs(25)), Action::Ping(3));
        assert_eq!(hb.poll(at + secs(30)), Action::Ping(4));
        assert_eq!(hb.poll(at + secs(35)), Action::Ping(5));
        assert_eq!(hb.poll(at + secs(40)), Action::Dead);
    }

    #[test]
    fn any_message_is_proof_of_life() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(INTERVAL, TIMEOUT, 2, t0);
        for minute in 1..10u64 {
            // Data every 20 s: no PING is ever needed.
            let t = t0 + secs(20 * minute);
            assert!(matches!(hb.poll(t), Action::WaitUntil(_)));
            hb.received(t);
        }
    }

    #[test]
    fn a_stale_pong_gives_no_rtt() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(INTERVAL, TIMEOUT, 3, t0);
        assert_eq!(hb.poll(t0 + secs(25)), Action::Ping(1));
        assert_eq!(hb.poll(t0 + secs(30)), Action::Ping(2));
        assert_eq!(hb.pong(1, t0 + secs(31)), None);
    }
}
