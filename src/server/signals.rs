//! Signals for a server run as a process: what `wheel-server` does, for
//! embedders too.
//!
//! | signal | effect |
//! |---|---|
//! | `SIGINT`, `SIGTERM` | graceful shutdown: stop accepting, CLOSE 1001 and drain every connection, force the rest after the grace period |
//! | the same again, during the drain | exit at once with status 128 + signal |
//! | `SIGHUP` | re-reads the TLS certificate and key (`--tls-cert`, `--tls-key`) for new handshakes; live connections are untouched, a bad file is refused with an error log and the old certificate stays; without TLS, logged and ignored |
//!
//! Every other signal keeps its default action.

use std::io;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing::info;

use crate::server::Server;

/// The signals a server process handles, registered (so their default
/// actions no longer apply) until dropped.
///
/// Register them before starting the server, so that a signal arriving
/// while it starts is not lost, then hand them to
/// [`Server::run_until`]; [`Server::run_until_signal`] does both in one
/// call.
pub struct ShutdownSignals {
    signals: Signals,
}

impl ShutdownSignals {
    /// Registers `SIGINT`, `SIGTERM` and `SIGHUP`.
    ///
    /// # Errors
    ///
    /// The handlers could not be installed.
    pub fn register() -> io::Result<ShutdownSignals> {
        Ok(ShutdownSignals {
            signals: Signals::new([SIGINT, SIGTERM, SIGHUP])?,
        })
    }

    /// Blocks until `SIGINT` or `SIGTERM` arrives and returns it; a
    /// `SIGHUP` meanwhile is logged and ignored.
    pub fn wait(&mut self) -> i32 {
        self.wait_with(|| info!("SIGHUP received: ignored (nothing to reload)"))
    }

    /// As [`wait`](ShutdownSignals::wait), calling `on_hangup` for every
    /// `SIGHUP` meanwhile.
    pub fn wait_with(&mut self, on_hangup: impl Fn()) -> i32 {
        loop {
            match self.signals.forever().next() {
                Some(SIGHUP) => on_hangup(),
                Some(signal) => return signal,
                // The iterator ends only when closed, which nothing does.
                None => return SIGTERM,
            }
        }
    }

    /// From now on, the next `SIGINT` or `SIGTERM` exits the process at once
    /// with status 128 + signal (a thread waits for it).
    ///
    /// # Errors
    ///
    /// The thread could not be started.
    pub fn exit_on_next(mut self) -> io::Result<()> {
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                let signal = self.wait();
                eprintln!("wheel-server: second signal ({signal}): exiting now");
                std::process::exit(128 + signal);
            })
            .map(drop)
    }
}

impl Server {
    /// Serves until `SIGINT` or `SIGTERM`, then shuts down gracefully as
    /// [`shutdown`](Server::shutdown) does; a second such signal during the
    /// drain exits the process at once (status 128 + signal). `SIGHUP`
    /// reloads the TLS certificate ([`reload_tls`](Server::reload_tls)). Returns what `shutdown` returns: whether every
    /// connection drained within the grace period.
    ///
    /// # Errors
    ///
    /// The signal handlers could not be installed (the server is then shut
    /// down before returning).
    pub fn run_until_signal(self) -> io::Result<bool> {
        let signals = ShutdownSignals::register()?;
        self.run_until(signals)
    }

    /// [`run_until_signal`](Server::run_until_signal) with signals
    /// registered before the server started.
    ///
    /// # Errors
    ///
    /// The thread that watches for a second signal could not be started
    /// (the server is then shut down before returning).
    pub fn run_until(self, mut signals: ShutdownSignals) -> io::Result<bool> {
        let signal = signals.wait_with(|| {
            info!("SIGHUP received");
            // The outcome is logged by the reload itself.
            let _ = self.reload_tls();
        });
        info!(
            signal,
            "signal received: shutting down (send another to exit at once)"
        );
        let watching = signals.exit_on_next();
        let clean = self.shutdown();
        watching.map(|()| clean)
    }
}
