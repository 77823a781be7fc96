//! TLS for `tls://`, `tls+line://` and `wss://` listeners: the server's
//! certificate (reloadable without touching live connections), its
//! `rustls` configuration (TLS 1.2 and 1.3, `ring`; stateless session
//! tickets with key rotation and a session cache, so reconnecting clients
//! resume with a short handshake), and the labels handshakes are counted
//! by.
//!
//! A connection's session lives with its outbound path
//! ([`Outbound`](crate::server::conn::outbound::Outbound)): every record, ours or the
//! session's own (alerts, tickets, key updates), is written under the one
//! lock that orders the connection's bytes, and the worker's blocking read
//! happens outside it. The handshake's own work runs on a few threads of
//! its own ([`HandshakePool`]), which keeps an idle TLS connection's memory
//! within 2x a plain one's.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::server::config::TlsFiles;
use crate::server::conn::outbound::HandshakePool;

use parking_lot::RwLock;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
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

/// The server's TLS state: one configuration for every TLS listener.
pub(crate) struct Tls {
    config: Arc<ServerConfig>,
    certs: Arc<Reloadable>,
    /// The ticket keys read from `files.ticket_key`, if any.
    tickets: Option<Arc<FileTicketer>>,
    files: TlsFiles,
    /// When the served certificate expires, in seconds since the Unix
    /// epoch.
    expires: AtomicI64,
    /// Where handshakes do their work.
    handshakes: HandshakePool,
}

impl Tls {
    /// Loads the files and builds the configuration.
    ///
    /// # Errors
    ///
    /// The setting at fault (`tls_cert` or `tls_key`) and one line naming
    /// the file and what is wrong with it.
    pub(crate) fn load(files: &TlsFiles) -> Result<Tls, (&'static str, String)> {
        let provider = Arc::new(crate::crypto::tls_provider());
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
        let tickets = match &files.ticket_key {
            Some(path) => {
                let key = read_ticket_key(path).map_err(|e| ("tls_ticket_key", e))?;
                let ticketer = Arc::new(FileTicketer::new(key));
                config.ticketer = Arc::clone(&ticketer) as Arc<dyn rustls::server::ProducesTickets>;
                Some(ticketer)
            }
            None => {
                config.ticketer = rustls::crypto::ring::Ticketer::new()
                    .map_err(|e| setup(format!("TLS session tickets: {e}")))?;
                None
            }
        };
        config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
        Ok(Tls {
            config: Arc::new(config),
            certs,
            tickets,
            files: files.clone(),
            expires: AtomicI64::new(expires),
            handshakes: HandshakePool::default(),
        })
    }

    /// A session for a new connection. Its own buffer limit is off: the
    /// outbound path bounds what it hands the session (see
    /// [`Outbound`](crate::server::conn::outbound::Outbound)).
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
        let ticket_key = match (&self.tickets, &self.files.ticket_key) {
            (Some(_), Some(path)) => Some(read_ticket_key(path)?),
            _ => None,
        };
        *self.certs.current.write() = Arc::new(key);
        if let (Some(tickets), Some(key)) = (&self.tickets, ticket_key) {
            tickets.rotate(key);
        }
        self.expires.store(expires, Ordering::Relaxed);
        Ok(())
    }

    /// When the served certificate expires, in seconds since the Unix
    /// epoch.
    pub(crate) fn expires(&self) -> i64 {
        self.expires.load(Ordering::Relaxed)
    }

    /// Where handshakes do their work.
    pub(crate) fn handshakes(&self) -> &HandshakePool {
        &self.handshakes
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
pub(crate) fn reload(
    tls: Option<&Tls>,
    metrics: &crate::server::metrics::Metrics,
) -> Result<(), String> {
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

/// Reads a ticket key file: 64 hex digits.
fn read_ticket_key(path: &Path) -> Result<[u8; 32], String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let hex = text.trim();
    let bad = || {
        format!(
            "{}: a ticket key is 64 hex digits (openssl rand -hex 32)",
            path.display()
        )
    };
    if hex.len() != 64 || !hex.is_ascii() {
        return Err(bad());
    }
    let mut key = [0u8; 32];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(key)
}

/// Session tickets sealed with a key from a file (ChaCha20-Poly1305, a
/// random nonce per ticket), so that every instance and restart holding the
/// same file resumes the sessions of the others. A reload with a new key
/// keeps the previous one for opening tickets, one rotation long.
pub(crate) struct FileTicketer {
    keys: RwLock<(LessSafeKey, Option<LessSafeKey>)>,
    rng: SystemRandom,
}

impl FileTicketer {
    fn new(key: [u8; 32]) -> FileTicketer {
        FileTicketer {
            keys: RwLock::new((sealing_key(&key), None)),
            rng: SystemRandom::new(),
        }
    }

    /// Seals new tickets with `key`; the current one still opens them.
    fn rotate(&self, key: [u8; 32]) {
        let mut keys = self.keys.write();
        let previous = std::mem::replace(&mut keys.0, sealing_key(&key));
        keys.1 = Some(previous);
    }
}

fn sealing_key(key: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, key).expect("a 32-byte key"))
}

impl fmt::Debug for FileTicketer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FileTicketer")
    }
}

/// Bytes of a ticket's nonce, before the sealed session.
const NONCE_LEN: usize = 12;

impl rustls::server::ProducesTickets for FileTicketer {
    fn enabled(&self) -> bool {
        true
    }

    /// A hint to clients; the key's life is the operator's rotation.
    fn lifetime(&self) -> u32 {
        6 * 60 * 60
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut sealed = plain.to_vec();
        self.keys
            .read()
            .0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                &mut sealed,
            )
            .ok()?;
        let mut ticket = nonce.to_vec();
        ticket.extend_from_slice(&sealed);
        Some(ticket)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        let (nonce, sealed) = ticket.split_at_checked(NONCE_LEN)?;
        let keys = self.keys.read();
        for key in std::iter::once(&keys.0).chain(keys.1.as_ref()) {
            let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
            let mut buf = sealed.to_vec();
            if let Ok(plain) = key.open_in_place(nonce, Aad::empty(), &mut buf) {
                let len = plain.len();
                buf.truncate(len);
                return Some(buf);
            }
        }
        None
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
