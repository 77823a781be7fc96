//! TLS listeners when the crate is built without its `tls` feature: no
//! [`Tls`] value can exist, so no listener speaks TLS; a configuration that
//! names TLS files is refused at start with a line that says how to get
//! it. The call sites stay the same as with the feature.

use crate::server::config::TlsFiles;
use crate::server::conn::outbound::{HandshakePool, Session, TlsError};

const NOT_BUILT: &str =
    "this wheel-server was built without its `tls` feature (cargo build --features tls)";

/// The server's TLS state: none without the feature.
pub(crate) enum Tls {}

impl Tls {
    pub(crate) fn load(_files: &TlsFiles) -> Result<Tls, (&'static str, String)> {
        Err(("tls_cert", NOT_BUILT.into()))
    }

    pub(crate) fn session(&self) -> Result<Session, TlsError> {
        match *self {}
    }

    pub(crate) fn handshakes(&self) -> &HandshakePool {
        match *self {}
    }

    pub(crate) fn expires(&self) -> i64 {
        match *self {}
    }

    pub(crate) fn files(&self) -> &TlsFiles {
        match *self {}
    }
}

/// What `SIGHUP` and `POST /admin/reload-tls` do: nothing to reload.
///
/// # Errors
///
/// Always: there is no TLS listener.
pub(crate) fn reload(
    tls: Option<&Tls>,
    _metrics: &crate::server::metrics::Metrics,
) -> Result<(), String> {
    match tls {
        None => Err("no TLS listener".into()),
        Some(tls) => match *tls {},
    }
}

pub(crate) fn expiry_text(_expires: i64) -> String {
    String::new()
}

/// No `result` labels of `wheel_tls_handshakes_total`: there are none.
pub(crate) const RESULTS: [&str; 0] = [];

pub(crate) fn failure_label(err: &TlsError) -> &'static str {
    match *err {}
}

#[cfg(test)]
mod tests {
    use crate::server::Server;
    use crate::server::config::{Config, ConfigError, TlsFiles};

    #[test]
    fn tls_files_are_refused_at_start_saying_how_to_get_tls() {
        let mut config = Config::default();
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.tls = Some(TlsFiles {
            cert: "cert.pem".into(),
            key: "key.pem".into(),
            client_ca: None,
            ticket_key: None,
        });
        let e = Server::start(config).err().expect("refused");
        let e = e.get_ref().and_then(|e| e.downcast_ref::<ConfigError>());
        let e = e.expect("a ConfigError");
        assert_eq!(e.setting, "tls_cert");
        assert!(e.reason.contains("--features tls"), "{}", e.reason);
    }
}
