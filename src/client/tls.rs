//! TLS for the client: which certificates it trusts, the handshake, and the
//! session shared by the connection's reader thread (which reads the socket
//! outside the session's lock and decrypts under it) and its writer (which
//! encrypts under the lock and writes outside it).
//!
//! One [`TlsClient`] serves every connection of a client, so its session
//! store carries tickets from one connection to the next: a reconnect
//! resumes with a short handshake.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

/// A connection's TLS session.
pub(crate) type Session = ClientConnection;

/// The client's TLS settings.
#[derive(Clone, Debug)]
pub struct TlsClient {
    /// The rustls configuration, kept across reconnects (its session store
    /// is what makes them resume).
    pub config: Arc<ClientConfig>,
    /// The name the server's certificate must carry; `None`: the host of
    /// the address connected to (an IP address then must be in the
    /// certificate as such).
    pub server_name: Option<String>,
}

/// Two settings are equal when they share their rustls configuration (and
/// so their session store) and check the same name.
impl PartialEq for TlsClient {
    fn eq(&self, other: &TlsClient) -> bool {
        Arc::ptr_eq(&self.config, &other.config) && self.server_name == other.server_name
    }
}

impl TlsClient {
    /// Trusts the CA certificates in `ca` (PEM) if given, the system's
    /// roots if `system_roots`, or both.
    ///
    /// # Errors
    ///
    /// A file that cannot be read or holds no certificate, or no root at
    /// all to trust.
    pub fn new(ca: Option<&Path>, system_roots: bool) -> io::Result<TlsClient> {
        let mut roots = RootCertStore::empty();
        if system_roots {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // A root the system has but rustls cannot use is skipped.
                let _ = roots.add(cert);
            }
        }
        if let Some(path) = ca {
            let invalid = |e: String| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{}: {e}", path.display()),
                )
            };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| invalid(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| invalid(e.to_string()))?;
            if certs.is_empty() {
                return Err(invalid("no certificate in it".into()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| invalid(e.to_string()))?;
            }
        }
        if roots.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "no certificate to trust: give a CA file, or use the system's roots",
            ));
        }
        let provider = Arc::new(crate::crypto::tls_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(TlsClient {
            config: Arc::new(config),
            server_name: None,
        })
    }

    /// The handshake on a connected `stream`, within `timeout`; `host` is
    /// the name (or address) connected to.
    ///
    /// # Errors
    ///
    /// The handshake failed (the reason names what: an unknown issuer, a
    /// name mismatch, ...) or timed out.
    pub(crate) fn handshake(
        &self,
        stream: &mut TcpStream,
        host: &str,
        timeout: Duration,
    ) -> io::Result<Arc<Mutex<ClientConnection>>> {
        let name = self.server_name.as_deref().unwrap_or(host).to_owned();
        let server_name = ServerName::try_from(name.clone()).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("TLS server name {name:?}: {e}"),
            )
        })?;
        let mut session = ClientConnection::new(Arc::clone(&self.config), server_name)
            .map_err(io::Error::other)?;
        let (read_timeout, write_timeout) = (stream.read_timeout()?, stream.write_timeout()?);
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let done = (|| {
            while session.is_handshaking() {
                session.complete_io(stream)?;
            }
            // The rest of the first flight (TLS 1.3 tickets come later, on
            // the reader's watch).
            while session.wants_write() {
                session.write_tls(stream)?;
            }
            Ok::<_, io::Error>(())
        })();
        stream.set_read_timeout(read_timeout)?;
        stream.set_write_timeout(write_timeout)?;
        done.map_err(|e| {
            let why = e.to_string();
            let advice = explain(&why).map_or_else(String::new, |a| format!(" ({a})"));
            io::Error::new(
                e.kind(),
                format!("TLS handshake with {name}: {why}{advice}"),
            )
        })?;
        Ok(Arc::new(Mutex::new(session)))
    }
}

/// What a certificate error means and how to fix it, in words, for the
/// failures a new user meets (rustls names them in Rust's debug syntax).
fn explain(error: &str) -> Option<&'static str> {
    const ADVICE: [(&str, &str); 5] = [
        (
            "CaUsedAsEndEntity",
            "the server's certificate is a CA certificate (basicConstraints CA:TRUE, what a plain `openssl req -x509` makes), which is refused as a server's own: make it with `-addext basicConstraints=critical,CA:FALSE` and a subjectAltName (README, TLS)",
        ),
        (
            "UnknownIssuer",
            "the server's certificate is not signed by a CA in --tls-ca (or the system roots, with --tls-system-roots)",
        ),
        (
            "NotValidForName",
            "the certificate does not name the host connected to: use a name from its subjectAltName, or set --tls-server-name",
        ),
        ("Expired", "the server's certificate has expired"),
        (
            "NotValidYet",
            "the server's certificate is not valid yet: is either clock wrong?",
        ),
    ];
    ADVICE
        .iter()
        .find(|(needle, _)| error.contains(needle))
        .map(|&(_, advice)| advice)
}

/// Encrypts `plaintext` under the session's lock and writes the records
/// outside it.
pub(crate) fn write(
    session: &Mutex<ClientConnection>,
    stream: &mut TcpStream,
    plaintext: &[u8],
) -> io::Result<()> {
    let mut records = Vec::with_capacity(plaintext.len() + 64);
    {
        let mut tls = session.lock();
        tls.writer().write_all(plaintext)?;
        while tls.wants_write() {
            tls.write_tls(&mut records)?;
        }
    }
    stream.write_all(&records)
}

/// The reader thread's view of a TLS connection: plaintext, read from the
/// socket outside the session's lock and decrypted under it. Ends (`Ok(0)`)
/// at the server's `close_notify` or the socket's end.
pub(crate) struct TlsRead {
    pub(crate) stream: TcpStream,
    pub(crate) session: Arc<Mutex<ClientConnection>>,
    /// Bytes read from the socket that the session has not taken yet.
    raw: Vec<u8>,
}

impl TlsRead {
    pub(crate) fn new(stream: TcpStream, session: Arc<Mutex<ClientConnection>>) -> TlsRead {
        TlsRead {
            stream,
            session,
            raw: Vec::new(),
        }
    }
}

impl Read for TlsRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            {
                let mut tls = self.session.lock();
                match tls.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    // The socket ended without close_notify: an end all the
                    // same (the heartbeat client treats it as one).
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                    Err(e) => return Err(e),
                }
                if !self.raw.is_empty() {
                    let mut data = &self.raw[..];
                    // An error here is a full plaintext buffer: drained
                    // above on the next turn.
                    let _ = tls.read_tls(&mut data);
                    let consumed = self.raw.len() - data.len();
                    self.raw.drain(..consumed);
                    tls.process_new_packets()
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    continue;
                }
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Ok(0);
            }
            self.raw.extend_from_slice(&chunk[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_errors_are_explained_in_words() {
        let ca_as_leaf = "invalid peer certificate: Other(OtherError(CaUsedAsEndEntity))";
        assert!(explain(ca_as_leaf).unwrap().contains("CA:FALSE"));
        assert!(explain("invalid peer certificate: UnknownIssuer").is_some());
        assert_eq!(explain("connection reset by peer"), None);
    }
}
