//! `wheel-server`: the long-connection echo server. Run with `--help`.

mod cli;

use std::process::ExitCode;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing::info;
use wheel_server::Server;

fn main() -> ExitCode {
    match try_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wheel-server: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn try_main() -> Result<(), Box<dyn std::error::Error>> {
    let args = cli::Args::parse_args();
    cli::init_logging(&args).map_err(|e| e.to_string())?;
    let config = args.config()?;
    // Registered before the server starts, so an early signal is not lost.
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    let server = Server::start(config)?;
    if let Some(signal) = signals.forever().next() {
        info!(
            signal,
            "signal received: shutting down (send another to exit at once)"
        );
    }
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                eprintln!("wheel-server: second signal ({signal}): exiting now");
                std::process::exit(128 + signal);
            }
        })?;
    server.shutdown();
    Ok(())
}
