//! Admission limits per client address: how many connections one address
//! may hold at once (`--max-connections-per-ip`).
//!
//! Addresses are grouped as a client is: an IPv4 address alone, an IPv6
//! address by its /64 prefix (what one subscriber, one host, usually gets).
//! With the PROXY protocol the address is the real client's, so the check
//! happens once the header is read. The table holds only addresses with
//! open connections: it is bounded by the connection limit, however many
//! addresses come and go.

use std::collections::HashMap;
use std::net::IpAddr;

use parking_lot::Mutex;

/// An address as the limits count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum IpKey {
    /// An IPv4 address (IPv4-mapped IPv6 addresses too).
    V4(u32),
    /// The /64 prefix of an IPv6 address.
    V6(u64),
}

impl IpKey {
    pub(crate) fn of(ip: IpAddr) -> IpKey {
        match ip {
            IpAddr::V4(v4) => IpKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpKey::V4(u32::from(v4)),
                None => IpKey::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

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
}
