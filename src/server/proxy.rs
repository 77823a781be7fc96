//! The PROXY protocol header (HAProxy's, version 1 text or version 2
//! binary) that a load balancer sends before the client's bytes, carrying
//! the real client address. Parsing is the `ppp` crate's.

use std::net::SocketAddr;

use ppp::{HeaderResult, PartialResult, v1, v2};

/// The most bytes read while waiting for a header. A v1 header is at most
/// 107 bytes; v2 allows extensions (TLVs), and HAProxy's fit easily.
pub(crate) const MAX_HEADER: usize = 4096;

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
