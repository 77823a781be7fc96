//! Where the client connects: socket addresses, or host names resolved
//! again on every connection attempt.

use std::fmt;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::str::FromStr;
use std::sync::Arc;

/// A server to connect to.
///
/// A [`Name`](ServerAddr::Name) is resolved again before every connection
/// attempt, so a fleet of clients follows a DNS change after the server
/// moves; when it resolves to several addresses they are tried in turn.
///
/// # Examples
///
/// ```
/// use wheel_server::client::ServerAddr;
///
/// let named: ServerAddr = "localhost:5005".parse().unwrap();
/// assert_eq!(named, ServerAddr::Name { host: "localhost".into(), port: 5005 });
/// let literal: ServerAddr = "[::1]:5005".parse().unwrap();
/// assert_eq!(literal, ServerAddr::Socket("[::1]:5005".parse().unwrap()));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ServerAddr {
    /// An IP address and port.
    Socket(SocketAddr),
    /// A host name and port, resolved at each connection attempt.
    Name {
        /// The host name.
        host: String,
        /// The port.
        port: u16,
    },
}

impl From<SocketAddr> for ServerAddr {
    fn from(addr: SocketAddr) -> ServerAddr {
        ServerAddr::Socket(addr)
    }
}

impl FromStr for ServerAddr {
    type Err = String;

    /// `IP:PORT`, `[IPv6]:PORT` or `HOST:PORT`.
    fn from_str(s: &str) -> Result<ServerAddr, String> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(ServerAddr::Socket(addr));
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?}: expected HOST:PORT"))?;
        let port = port
            .parse()
            .map_err(|_| format!("{s:?}: the port must be a number from 0 to 65535"))?;
        if host.is_empty() || host.contains(':') {
            return Err(format!("{s:?}: expected HOST:PORT (IPv6 in brackets)"));
        }
        Ok(ServerAddr::Name {
            host: host.to_owned(),
            port,
        })
    }
}

impl ServerAddr {
    /// The host: the name, or the IP address as text.
    pub fn host(&self) -> String {
        match self {
            ServerAddr::Socket(addr) => addr.ip().to_string(),
            ServerAddr::Name { host, .. } => host.clone(),
        }
    }
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerAddr::Socket(addr) => addr.fmt(f),
            ServerAddr::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// The signature of a resolver function: host and port to addresses.
type ResolveFn = dyn Fn(&str, u16) -> io::Result<Vec<SocketAddr>> + Send + Sync;

/// How host names are resolved: the system resolver unless a test (or an
/// application with its own discovery) plugs in another.
#[derive(Clone)]
pub struct Resolver(Arc<ResolveFn>);

impl Resolver {
    /// The system resolver (`getaddrinfo`, through `ToSocketAddrs`).
    pub fn system() -> Resolver {
        Resolver::new(|host, port| Ok((host, port).to_socket_addrs()?.collect()))
    }

    /// A resolver calling `resolve`.
    pub fn new(
        resolve: impl Fn(&str, u16) -> io::Result<Vec<SocketAddr>> + Send + Sync + 'static,
    ) -> Resolver {
        Resolver(Arc::new(resolve))
    }

    /// The addresses to try for `addr`, in order.
    ///
    /// # Errors
    ///
    /// The resolver's error, or [`io::ErrorKind::NotFound`] when a name
    /// resolves to no address.
    pub fn resolve(&self, addr: &ServerAddr) -> io::Result<Vec<SocketAddr>> {
        match addr {
            ServerAddr::Socket(addr) => Ok(vec![*addr]),
            ServerAddr::Name { host, port } => {
                let found = (self.0)(host, *port)
                    .map_err(|e| io::Error::new(e.kind(), format!("cannot resolve {host}: {e}")))?;
                if found.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("{host} resolves to no address"),
                    ));
                }
                Ok(found)
            }
        }
    }
}

impl Default for Resolver {
    fn default() -> Resolver {
        Resolver::system()
    }
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Resolver")
    }
}

impl PartialEq for Resolver {
    /// The same resolver (not merely one that answers alike).
    fn eq(&self, other: &Resolver) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_as_sockets_or_names_and_bad_ones_are_explained() {
        assert_eq!(
            "127.0.0.1:5".parse::<ServerAddr>(),
            Ok(ServerAddr::Socket("127.0.0.1:5".parse().unwrap()))
        );
        assert_eq!(
            "example.org:80".parse::<ServerAddr>().unwrap().to_string(),
            "example.org:80"
        );
        for bad in [
            "example.org",
            "example.org:http",
            ":80",
            "::1:80",
            "host:70000",
        ] {
            assert!(bad.parse::<ServerAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_name_resolving_to_nothing_is_an_error_naming_it() {
        let empty = Resolver::new(|_, _| Ok(Vec::new()));
        let name = ServerAddr::Name {
            host: "nowhere".into(),
            port: 1,
        };
        let err = empty.resolve(&name).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("nowhere"), "{err}");
    }
}
