//! The PROXY protocol header (HAProxy's, version 1 text or version 2
//! binary) that a load balancer sends before the client's bytes, carrying
//! the real client address. Parsing is the `ppp` crate's.

use std::net::SocketAddr;

use ppp::{HeaderResult, PartialResult, v1, v2};

/// The longest version 1 header, `\r\n` included (the specification's
/// bound).
const MAX_V1: usize = 107;

/// The most bytes read while waiting for a header: the longest version 2
/// header the format can describe (16 fixed bytes, then a 16-bit length of
/// addresses and TLVs). Held only during the header phase, which its
/// timeout bounds.
pub(crate) const MAX_HEADER: usize = 16 + u16::MAX as usize;

/// What the front of a connection's input holds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// Not enough bytes yet.
    Incomplete,
    /// A header of `len` bytes; `client` is `None` for the LOCAL command or
    /// unknown address families (health checks), which keep the socket's
    /// own peer address.
    Complete {
        client: Option<SocketAddr>,
        len: usize,
    },
    /// Not a PROXY protocol header.
    Invalid(String),
}

/// Parses a header from the front of `input`.
pub(crate) fn parse(input: &[u8]) -> Parsed {
    // A version 1 header ends at its CRLF; before that it is incomplete
    // (within its bound), whatever the parser makes of the prefix: `ppp`
    // reports an error for input cut right after a field's space.
    if input.starts_with(b"PROXY ") && !input[..input.len().min(MAX_V1)].contains(&b'\n') {
        return if input.len() < MAX_V1 {
            Parsed::Incomplete
        } else {
            Parsed::Invalid(format!("version 1 header longer than {MAX_V1} bytes"))
        };
    }
    let result = HeaderResult::parse(input);
    if result.is_incomplete() {
        return Parsed::Incomplete;
    }
    match result {
        HeaderResult::V1(Ok(header)) => Parsed::Complete {
            client: match header.addresses {
                v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Unknown => None,
            },
            len: header.header.len(),
        },
        HeaderResult::V2(Ok(header)) if header.protocol == v2::Protocol::Datagram => {
            Parsed::Invalid("version 2 header for a datagram (UDP) connection".into())
        }
        HeaderResult::V2(Ok(header)) => Parsed::Complete {
            client: match header.addresses {
                v2::Addresses::IPv4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v2::Addresses::IPv6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
            },
            len: header.len(),
        },
        HeaderResult::V1(Err(e)) => Parsed::Invalid(e.to_string()),
        HeaderResult::V2(Err(e)) => Parsed::Invalid(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_1_with_data_behind_it() {
        let input = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 5005\r\n\0\0\0\x01\x02";
        assert_eq!(
            parse(input),
            Parsed::Complete {
                client: Some("203.0.113.7:51234".parse().unwrap()),
                len: input.len() - 5
            }
        );
        assert_eq!(parse(&input[..20]), Parsed::Incomplete);
    }

    #[test]
    fn version_2_and_its_local_command() {
        let addrs: (SocketAddr, SocketAddr) = (
            "[2001:db8::9]:4000".parse().unwrap(),
            "[2001:db8::1]:5005".parse().unwrap(),
        );
        let header = v2::Builder::with_addresses(0x21, v2::Protocol::Stream, addrs)
            .build()
            .unwrap();
        assert_eq!(
            parse(&header),
            Parsed::Complete {
                client: Some(addrs.0),
                len: header.len()
            }
        );
        for cut in [1, 12, header.len() - 1] {
            assert_eq!(parse(&header[..cut]), Parsed::Incomplete, "cut at {cut}");
        }
        let local = v2::Builder::new(0x20, 0x00).build().unwrap();
        assert_eq!(
            parse(&local),
            Parsed::Complete {
                client: None,
                len: local.len()
            }
        );
    }

    /// Every prefix of a valid header is incomplete, never invalid.
    fn assert_every_split_is_incomplete(header: &[u8]) {
        for cut in 0..header.len() {
            assert_eq!(
                parse(&header[..cut]),
                Parsed::Incomplete,
                "cut at {cut} of {:?}",
                String::from_utf8_lossy(header)
            );
        }
        assert!(matches!(parse(header), Parsed::Complete { .. }));
    }

    #[test]
    fn a_header_split_anywhere_is_incomplete_until_its_end() {
        for v1 in [
            &b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 5005\r\n"[..],
            b"PROXY TCP6 2001:db8::9 2001:db8::1 4000 5005\r\n",
            b"PROXY UNKNOWN\r\n",
        ] {
            assert_every_split_is_incomplete(v1);
        }
        let addrs: (SocketAddr, SocketAddr) = (
            "203.0.113.7:51234".parse().unwrap(),
            "10.0.0.1:5005".parse().unwrap(),
        );
        let mut builder = v2::Builder::with_addresses(0x21, v2::Protocol::Stream, addrs);
        // TLVs past the old 4,096-byte bound: the format allows 64 KiB.
        builder = builder.write_tlv(0xE0, &[7u8; 5000][..]).unwrap();
        let v2 = builder.build().unwrap();
        assert!(v2.len() > 5000);
        assert_every_split_is_incomplete(&v2);
        assert!(v2.len() <= MAX_HEADER);
    }

    #[test]
    fn a_version_2_datagram_header_is_refused() {
        let addrs: (SocketAddr, SocketAddr) = (
            "203.0.113.7:51234".parse().unwrap(),
            "10.0.0.1:5005".parse().unwrap(),
        );
        let header = v2::Builder::with_addresses(0x21, v2::Protocol::Datagram, addrs)
            .build()
            .unwrap();
        assert!(matches!(parse(&header), Parsed::Invalid(why) if why.contains("datagram")));
    }

    #[test]
    fn a_version_1_header_without_its_end_within_107_bytes_is_refused() {
        let long = format!("PROXY TCP4 {}", "1".repeat(120));
        assert!(matches!(parse(long.as_bytes()), Parsed::Invalid(_)));
    }

    #[test]
    fn protocol_bytes_are_not_a_header() {
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\n\r\n"),
            Parsed::Invalid(_)
        ));
        assert!(matches!(
            parse(b"PING hello there, long enough\n"),
            Parsed::Invalid(_)
        ));
    }
}
