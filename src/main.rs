//! `wheel-server`: the long-connection echo server. Run with `--help`.

mod cli;

use std::process::ExitCode;

use wheel_server::Echo;
use wheel_server::Server;
use wheel_server::server::auth::{Authenticated, Jwt};
use wheel_server::server::pubsub::PubSub;
use wheel_server::server::{ConfigError, ShutdownSignals};

/// Exit status for an invalid setting (as clap uses for bad flags); 1 is
/// for runtime failures such as a port in use.
const INVALID_SETTING: u8 = 2;

fn main() -> ExitCode {
    let (args, matches) = cli::Args::parse_args();
    let config = match args.config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("wheel-server: error: {}", cli::describe(&e, &matches));
            return ExitCode::from(INVALID_SETTING);
        }
    };
    let jwt = match args.jwt() {
        Ok(jwt) => jwt,
        Err(e) => {
            eprintln!("wheel-server: error: {e}");
            return ExitCode::from(INVALID_SETTING);
        }
    };
    match run(&args, config, jwt) {
        Ok(()) => ExitCode::SUCCESS,
        // A setting the server could not use as it started (a TLS file, the
        // Redis address): the same exit as one refused above.
        Err(e) => match config_error(&*e) {
            Some(e) => {
                eprintln!("wheel-server: error: {}", cli::describe(e, &matches));
                ExitCode::from(INVALID_SETTING)
            }
            None => {
                eprintln!("wheel-server: error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// The [`ConfigError`] inside a start-up error, if that is what it is.
fn config_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a ConfigError> {
    e.downcast_ref::<std::io::Error>()?
        .get_ref()?
        .downcast_ref::<ConfigError>()
}

fn run(
    args: &cli::Args,
    config: wheel_server::Config,
    jwt: Option<Jwt>,
) -> Result<(), Box<dyn std::error::Error>> {
    cli::init_logging(args).map_err(|e| e.to_string())?;
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    // Registered before the server starts, so an early signal is not lost.
    let signals = ShutdownSignals::register()?;
    let server = match (args.service, jwt) {
        (cli::Service::Echo, None) => Server::start(config)?,
        (cli::Service::Pubsub, None) => Server::with_handler(config, PubSub)?,
        (cli::Service::Echo, Some(jwt)) => {
            Server::with_handler(config, Authenticated::new(Echo, jwt))?
        }
        (cli::Service::Pubsub, Some(jwt)) => {
            Server::with_handler(config, Authenticated::new(PubSub, jwt))?
        }
    };
    server.run_until(signals)?;
    Ok(())
}
