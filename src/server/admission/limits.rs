//! Admission limits per client address: how many connections one address
//! may hold at once (`--max-connections-per-ip`), and how often it may
//! connect (`--max-connect-rate-per-ip`).
//!
//! Addresses are grouped as a client is: an IPv4 address alone, an IPv6
//! address by its /64 prefix (what one subscriber, one host, usually gets).
//! With the PROXY protocol the address is the real client's, so the check
//! happens once the header is read. The table holds only addresses with
//! open connections: it is bounded by the connection limit, however many
//! addresses come and go.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use parking_lot::Mutex;

use crate::server::conn::close::CloseReason;
use crate::server::conn::id::IpKey;
use crate::server::rate::TokenBucket;

/// Open connections per address.
#[derive(Debug)]
pub(crate) struct PerIp {
    /// The most one address may hold; `None`: no limit (and no table).
    limit: Option<usize>,
    counts: Mutex<HashMap<IpKey, usize>>,
}

impl PerIp {
    pub(crate) fn new(limit: Option<usize>) -> PerIp {
        PerIp {
            limit,
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a connection from `ip` unless its address is at the limit;
    /// the key to [`release`](PerIp::release) when it closes. `Ok(None)`
    /// when there is no limit.
    pub(crate) fn admit(&self, ip: IpAddr) -> Result<Option<IpKey>, ()> {
        let Some(limit) = self.limit else {
            return Ok(None);
        };
        let key = IpKey::of(ip);
        let mut counts = self.counts.lock();
        let count = counts.entry(key).or_default();
        if *count >= limit {
            if *count == 0 {
                counts.remove(&key);
            }
            return Err(());
        }
        *count += 1;
        Ok(Some(key))
    }

    /// Forgets one connection of `key`.
    pub(crate) fn release(&self, key: IpKey) {
        let mut counts = self.counts.lock();
        if let Some(count) = counts.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&key);
            }
        }
    }

    /// Addresses in the table.
    pub(crate) fn len(&self) -> usize {
        self.counts.lock().len()
    }
}

/// Why a client address was turned away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// It connects faster than `max_connect_rate_per_ip`.
    Rate,
    /// It holds `max_connections_per_ip` already.
    Limit,
}

impl Refused {
    /// The label of `wheel_connections_rejected_total`.
    pub(crate) fn label(self) -> &'static str {
        self.close_reason().label()
    }

    /// The close reason (CLOSE 1013 and its text).
    pub(crate) fn close_reason(self) -> CloseReason {
        match self {
            Refused::Rate => CloseReason::PerIpRate,
            Refused::Limit => CloseReason::PerIpLimit,
        }
    }
}

/// Checks a connection from `ip` against both limits: the rate first (a
/// refused connect takes no slot), then the concurrent limit. Returns the
/// key to [`PerIp::release`] when the connection closes (`None` without a
/// concurrent limit); a connect let through untracked is counted in
/// `untracked`.
pub(crate) fn admit_address(
    rate: &ConnectRate,
    per_ip: &PerIp,
    untracked: &prometheus_client::metrics::counter::Counter,
    ip: IpAddr,
) -> Result<Option<IpKey>, Refused> {
    match rate.check(ip, Instant::now()) {
        RateCheck::Allowed => {}
        RateCheck::Untracked => {
            untracked.inc();
        }
        RateCheck::Refused => return Err(Refused::Rate),
    }
    per_ip.admit(ip).map_err(|()| Refused::Limit)
}

/// Addresses the connect-rate table tracks at most: an attacker cycling
/// source addresses cannot grow it past this. Past it, new addresses are
/// not limited (and counted) until the timer thread's sweep frees room.
pub(crate) const MAX_RATE_ENTRIES: usize = 65_536;

/// Connects per address per second, with a burst of one second's worth
/// (at least 1).
#[derive(Debug)]
pub(crate) struct ConnectRate {
    /// Connects per second; `None`: no limit (and no table).
    rate: Option<f64>,
    buckets: Mutex<HashMap<IpKey, TokenBucket>>,
}

/// What the connect-rate check said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RateCheck {
    /// Within the rate (or no limit).
    Allowed,
    /// Over the rate: refuse.
    Refused,
    /// The table is full: allowed untracked.
    Untracked,
}

impl ConnectRate {
    pub(crate) fn new(rate: Option<f64>) -> ConnectRate {
        ConnectRate {
            rate,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn burst(rate: f64) -> f64 {
        rate.max(1.0)
    }

    /// Takes a token for a connect from `ip` at `now`.
    pub(crate) fn check(&self, ip: IpAddr, now: Instant) -> RateCheck {
        let Some(rate) = self.rate else {
            return RateCheck::Allowed;
        };
        let burst = ConnectRate::burst(rate);
        let key = IpKey::of(ip);
        let mut buckets = self.buckets.lock();
        let len = buckets.len();
        let bucket = match buckets.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(_) if len >= MAX_RATE_ENTRIES => {
                return RateCheck::Untracked;
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(TokenBucket::new(rate, burst, now))
            }
        };
        if bucket.take(1.0, now) {
            RateCheck::Allowed
        } else {
            RateCheck::Refused
        }
    }

    /// Forgets the addresses whose buckets have refilled: they hold no
    /// information (the timer thread calls this on its tick).
    pub(crate) fn sweep(&self, now: Instant) {
        if self.rate.is_none() {
            return;
        }
        self.buckets.lock().retain(|_, b| !b.is_full_at(now));
    }

    /// Addresses in the table.
    pub(crate) fn len(&self) -> usize {
        self.buckets.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_is_grouped_by_64_and_mapped_ipv4_is_ipv4() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(IpKey::of(a), IpKey::of(b));
        assert_ne!(IpKey::of(a), IpKey::of(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(IpKey::of(mapped), IpKey::of(v4));
    }

    #[test]
    fn the_limit_holds_and_released_addresses_leave_the_table() {
        let per_ip = PerIp::new(Some(2));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let first = per_ip.admit(ip).unwrap().unwrap();
        let second = per_ip.admit(ip).unwrap().unwrap();
        assert!(per_ip.admit(ip).is_err());
        assert!(per_ip.admit("192.0.2.2".parse().unwrap()).is_ok());
        per_ip.release(first);
        assert!(per_ip.admit(ip).is_ok());
        per_ip.release(second);
        per_ip.release(IpKey::of(ip));
        per_ip.release(IpKey::of("192.0.2.2".parse().unwrap()));
        assert_eq!(per_ip.len(), 0);
        assert_eq!(PerIp::new(None).admit(ip), Ok(None));
    }

    #[test]
    fn connects_beyond_the_rate_are_refused_until_the_bucket_refills() {
        let limit = ConnectRate::new(Some(5.0));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        let checks: Vec<RateCheck> = (0..7).map(|_| limit.check(ip, t0)).collect();
        assert_eq!(&checks[..5], &[RateCheck::Allowed; 5]);
        assert_eq!(&checks[5..], &[RateCheck::Refused; 2]);
        // 200 ms later one token is back, and only one.
        let later = t0 + std::time::Duration::from_millis(200);
        assert_eq!(limit.check(ip, later), RateCheck::Allowed);
        assert_eq!(limit.check(ip, later), RateCheck::Refused);
        // Another address has its own bucket.
        assert_eq!(
            limit.check("192.0.2.2".parse().unwrap(), later),
            RateCheck::Allowed
        );
        assert_eq!(ConnectRate::new(None).check(ip, t0), RateCheck::Allowed);
    }

    /// 100,000 distinct addresses (an attacker cycling its source): the
    /// table never passes its bound, and the sweep empties it once the
    /// buckets refill.
    #[test]
    fn the_rate_table_stays_bounded_under_100_000_addresses() {
        let limit = ConnectRate::new(Some(2.0));
        let t0 = Instant::now();
        let mut untracked = 0;
        for n in 0..100_000u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n));
            if limit.check(ip, t0) == RateCheck::Untracked {
                untracked += 1;
            }
            assert!(limit.len() <= MAX_RATE_ENTRIES);
        }
        assert_eq!(limit.len(), MAX_RATE_ENTRIES);
        assert_eq!(untracked, 100_000 - MAX_RATE_ENTRIES);
        // Still partly drained: kept.
        limit.sweep(t0 + std::time::Duration::from_millis(100));
        assert_eq!(limit.len(), MAX_RATE_ENTRIES);
        // Refilled (one token in 0.5 s): forgotten.
        limit.sweep(t0 + std::time::Duration::from_secs(1));
        assert_eq!(limit.len(), 0);
    }
}
