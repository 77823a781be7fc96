//! Connection ids.

use std::fmt;
use std::net::IpAddr;

/// Identifies one connection for the server's lifetime.
///
/// An id is a slot index plus that slot's generation, bumped every time the
/// slot is freed: an id held after its connection closed never matches the
/// next connection in the same slot (no ABA).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    generation: u32,
    index: u32,
}

impl ConnId {
    /// The id as one number (generation in the high 32 bits).
    pub fn as_u64(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.index)
    }

    /// The slot index: dense, reused after a connection closes.
    pub(crate) fn index(self) -> usize {
        self.index as usize
    }

    /// The slot's generation when this connection took it.
    pub(crate) fn generation(self) -> u32 {
        self.generation
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.index, self.generation)
    }
}

impl ConnId {
    /// Builds an id from its parts (the registry's job).
    pub(crate) fn new(index: u32, generation: u32) -> ConnId {
        ConnId { generation, index }
    }
}

impl std::str::FromStr for ConnId {
    type Err = String;

    /// The [`Display`](fmt::Display) form, `index.generation`.
    fn from_str(s: &str) -> Result<ConnId, String> {
        let (index, generation) = s
            .split_once('.')
            .ok_or_else(|| format!("{s:?}: expected INDEX.GENERATION"))?;
        let number = |part: &str| {
            part.parse::<u32>()
                .map_err(|_| format!("{s:?}: expected INDEX.GENERATION"))
        };
        Ok(ConnId::new(number(index)?, number(generation)?))
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_reads_back_from_its_display_form() {
        let id = ConnId::new(7, 3);
        assert_eq!(id.to_string().parse::<ConnId>(), Ok(id));
        for bad in ["", "7", "7.", ".3", "7.3.1", "-1.0", "a.b"] {
            assert!(bad.parse::<ConnId>().is_err(), "{bad}");
        }
    }
}
