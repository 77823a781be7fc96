//! `wheel-server`: the long-connection echo server. Run with `--help`.

mod cli;

use std::process::ExitCode;

use wheel_server::Server;
use wheel_server::server::ShutdownSignals;

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
    let signals = ShutdownSignals::register()?;
    let server = Server::start(config)?;
    server.run_until(signals)?;
    Ok(())
}
