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
use std::sync::atomic::{AtomicI64, Ordering};

use parking_lot::RwLock;
use rustls::crypto::CryptoProvider;
use rustls::server::{
    ClientHello, ResolvesServerCert, ServerSessionMemoryCache, WebPkiClientVerifier,
};
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
    /// CA certificates (PEM) that client certificates must chain to: with
    /// it, every TLS client must present a valid certificate, whose subject
    /// is the connection's identity. `None`: no client certificates.
    pub client_ca: Option<PathBuf>,
}

/// The server's TLS state: one configuration for every TLS listener.
pub(crate) struct Tls {
    config: Arc<ServerConfig>,
    certs: Arc<Reloadable>,
    files: TlsFiles,
    /// When the served certificate expires, in seconds since the Unix
    /// epoch.
    expires: AtomicI64,
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
        let (key, expires) = certified_key(files, &provider)?;
        let setup = |e: String| ("tls_cert", e);
        let certs = Arc::new(Reloadable {
            current: RwLock::new(Arc::new(key)),
        });
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| setup(format!("TLS configuration: {e}")))?;
        let builder = match &files.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let bad = |e: String| ("tls_client_ca", format!("{}: {e}", path.display()));
                let mut roots = rustls::RootCertStore::empty();
                for cert in read_chain(path).map_err(|e| ("tls_client_ca", e))? {
                    roots.add(cert).map_err(|e| bad(e.to_string()))?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    Arc::clone(&provider),
                )
                .build()
                .map_err(|e| bad(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config =
            builder.with_cert_resolver(Arc::clone(&certs) as Arc<dyn ResolvesServerCert>);
        config.ticketer = rustls::crypto::ring::Ticketer::new()
            .map_err(|e| setup(format!("TLS session tickets: {e}")))?;
        config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
        Ok(Tls {
            config: Arc::new(config),
            certs,
            files: files.clone(),
            expires: AtomicI64::new(expires),
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
        let (key, expires) = certified_key(&self.files, &self.config.crypto_provider().clone())
            .map_err(|(_, why)| why)?;
        *self.certs.current.write() = Arc::new(key);
        self.expires.store(expires, Ordering::Relaxed);
        Ok(())
    }

    /// When the served certificate expires, in seconds since the Unix
    /// epoch.
    pub(crate) fn expires(&self) -> i64 {
        self.expires.load(Ordering::Relaxed)
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
pub(crate) fn reload(tls: Option<&Tls>, metrics: &super::metrics::Metrics) -> Result<(), String> {
    let Some(tls) = tls else {
        tracing::info!("TLS reload asked for: no TLS listener, nothing to reload");
        return Err("no TLS listener".into());
    };
    match tls.reload() {
        Ok(()) => {
            metrics.tls_cert_expiry.set(tls.expires());
            tracing::info!(
                cert = %tls.files().cert.display(),
                expires = %expiry_text(tls.expires()),
                "TLS certificate reloaded: new handshakes use it"
            );
            Ok(())
        }
        Err(why) => {
            tracing::error!("TLS certificate not reloaded, the old one stays: {why}");
            Err(why)
        }
    }
}

/// An expiry in seconds since the epoch, as RFC 3339.
pub(crate) fn expiry_text(expires: i64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(expires.max(0) as u64);
    humantime::format_rfc3339_seconds(at).to_string()
}

/// The subject of a client's certificate (its common name, else the whole
/// distinguished name), the connection's identity.
pub(crate) fn subject(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let subject = parsed.subject();
    let cn = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    Some(cn.unwrap_or_else(|| subject.to_string()))
}

/// Reads and checks a certificate chain and its key; returns them with
/// the leaf's expiry (seconds since the epoch).
fn certified_key(
    files: &TlsFiles,
    provider: &Arc<CryptoProvider>,
) -> Result<(CertifiedKey, i64), (&'static str, String)> {
    let chain = read_chain(&files.cert).map_err(|e| ("tls_cert", e))?;
    let expires = x509_parser::parse_x509_certificate(&chain[0])
        .map(|(_, leaf)| leaf.validity().not_after.timestamp())
        .map_err(|e| {
            (
                "tls_cert",
                format!("{}: not an X.509 certificate: {e}", files.cert.display()),
            )
        })?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        (
            "tls_key",
            format!("{}: no usable private key: {e}", files.key.display()),
        )
    })?;
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        (
            "tls_key",
            format!(
                "{} does not go with the certificate in {}: {e}",
                files.key.display(),
                files.cert.display()
            ),
        )
    })?;
    Ok((certified, expires))
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
pub(crate) const RESULTS: [&str; 8] = [
    "full",
    "resumed",
    "timeout",
    "not_tls",
    "peer_refused",
    "bad_client_cert",
    "incompatible",
    "error",
];

/// The label of a failed handshake's error.
pub(crate) fn failure_label(err: &rustls::Error) -> &'static str {
    use rustls::Error;
    match err {
        Error::InvalidMessage(_) | Error::InappropriateMessage { .. } => "not_tls",
        Error::AlertReceived(_) => "peer_refused",
        Error::InvalidCertificate(_) | Error::NoCertificatesPresented => "bad_client_cert",
        Error::PeerIncompatible(_) => "incompatible",
        _ => "error",
    }
}
