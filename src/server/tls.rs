//! TLS for `tls://`, `tls+line://` and `wss://` listeners: the server's
//! certificate (reloadable without touching live connections), its
//! `rustls` configuration (TLS 1.2 and 1.3, `ring`; stateless session
//! tickets with key rotation and a session cache, so reconnecting clients
//! resume with a short handshake), and the labels handshakes are counted
//! by.
//!
//! A connection's session lives with its outbound path
//! ([`Outbound`](super::outbound::Outbound)): every record, ours or the
//! session's own (alerts, tickets, key updates), is written under the one
//! lock that orders the connection's bytes, and the worker's blocking read
//! happens outside it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, ServerConnection};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Sessions the server remembers for resumption by session id (TLS 1.2,
/// and TLS 1.3 clients that do not take tickets).
const SESSION_CACHE: usize = 16 * 1024;

/// Where the certificate chain and its key are read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, PEM, leaf first.
    pub cert: PathBuf,
    /// The private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// The server's TLS state: one configuration for every TLS listener.
pub(crate) struct Tls {
    config: Arc<ServerConfig>,
    certs: Arc<Reloadable>,
    files: TlsFiles,
}

impl Tls {
    /// Loads the files and builds the configuration.
    ///
    /// # Errors
    ///
    /// The setting at fault (`tls_cert` or `tls_key`) and one line naming
    /// the file and what is wrong with it.
    pub(crate) fn load(files: &TlsFiles) -> Result<Tls, (&'static str, String)> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = certified_key(files, &provider)?;
        let setup = |e: String| ("tls_cert", e);
        let certs = Arc::new(Reloadable {
            current: RwLock::new(Arc::new(key)),
        });
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| setup(format!("TLS configuration: {e}")))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&certs) as Arc<dyn ResolvesServerCert>);
        config.ticketer = rustls::crypto::ring::Ticketer::new()
            .map_err(|e| setup(format!("TLS session tickets: {e}")))?;
        config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
        Ok(Tls {
            config: Arc::new(config),
            certs,
            files: files.clone(),
        })
    }

    /// A session for a new connection. Its own buffer limit is off: the
    /// outbound path bounds what it hands the session (see
    /// [`Outbound`](super::outbound::Outbound)).
    pub(crate) fn session(&self) -> Result<ServerConnection, rustls::Error> {
        let mut session = ServerConnection::new(Arc::clone(&self.config))?;
        session.set_buffer_limit(None);
        Ok(session)
    }

    /// Re-reads the files: new handshakes get the new certificate, live
    /// connections keep theirs. On any error the old certificate stays.
    ///
    /// # Errors
    ///
    /// Why the new files were refused.
    pub(crate) fn reload(&self) -> Result<(), String> {
        let key = certified_key(&self.files, &self.config.crypto_provider().clone())
            .map_err(|(_, why)| why)?;
        *self.certs.current.write() = Arc::new(key);
        Ok(())
    }

    /// The files, for logs.
    pub(crate) fn files(&self) -> &TlsFiles {
        &self.files
    }
}

/// Reloads the server's certificate, logging the outcome: what `SIGHUP`
/// and `POST /admin/reload-tls` do.
///
/// # Errors
///
/// There is no TLS listener, or the new files were refused (the old
/// certificate stays).
pub(crate) fn reload(tls: Option<&Tls>) -> Result<(), String> {
    let Some(tls) = tls else {
        tracing::info!("TLS reload asked for: no TLS listener, nothing to reload");
        return Err("no TLS listener".into());
    };
    match tls.reload() {
        Ok(()) => {
            tracing::info!(cert = %tls.files().cert.display(), "TLS certificate reloaded: new handshakes use it");
            Ok(())
        }
        Err(why) => {
            tracing::error!("TLS certificate not reloaded, the old one stays: {why}");
            Err(why)
        }
    }
}

/// Reads and checks a certificate chain and its key.
fn certified_key(
    files: &TlsFiles,
    provider: &Arc<CryptoProvider>,
) -> Result<CertifiedKey, (&'static str, String)> {
    let chain = read_chain(&files.cert).map_err(|e| ("tls_cert", e))?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        (
            "tls_key",
            format!("{}: no usable private key: {e}", files.key.display()),
        )
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        (
            "tls_key",
            format!(
                "{} does not go with the certificate in {}: {e}",
                files.key.display(),
                files.cert.display()
            ),
        )
    })
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(chain)
}

/// The certificate every handshake gets: swapped whole by a reload.
struct Reloadable {
    current: RwLock<Arc<CertifiedKey>>,
}

impl fmt::Debug for Reloadable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Reloadable")
    }
}

impl ResolvesServerCert for Reloadable {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current.read()))
    }
}

/// Every `result` label of `wheel_tls_handshakes_total`.
pub(crate) const RESULTS: [&str; 7] = [
    "full",
    "resumed",
    "timeout",
    "not_tls",
    "peer_refused",
    "incompatible",
    "error",
];

/// The label of a failed handshake's error.
pub(crate) fn failure_label(err: &rustls::Error) -> &'static str {
    use rustls::Error;
    match err {
        Error::InvalidMessage(_) | Error::InappropriateMessage { .. } => "not_tls",
        Error::AlertReceived(_) | Error::InvalidCertificate(_) => "peer_refused",
        Error::PeerIncompatible(_) | Error::NoCertificatesPresented => "incompatible",
        _ => "error",
    }
}
