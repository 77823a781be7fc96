//! `wheel-server`: the long-connection echo server. Run with `--help`.

mod cli;
mod config_file;

use std::process::ExitCode;

use wheel_server::Echo;
use wheel_server::Server;
use wheel_server::server::auth::{Authenticated, Jwt};
use wheel_server::server::pubsub::PubSub;
use wheel_server::server::{ConfigError, ShutdownSignals, capacity};

/// Exit status for an invalid setting (as clap uses for bad flags); 1 is
/// for runtime failures such as a port in use.
const INVALID_SETTING: u8 = 2;

fn main() -> ExitCode {
    // `wheel-server check [FLAGS]` and `wheel-server config [FLAGS]`: the
    // same flags, nothing started.
    let mut argv: Vec<_> = std::env::args_os().collect();
    let verb = argv
        .get(1)
        .and_then(|a| ["check", "config"].into_iter().find(|v| a == *v));
    if verb.is_some() {
        argv.remove(1);
    }
    let (args, matches, from_file) = cli::Args::parse_from(argv);
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
    match verb {
        Some("check") => return check_box(&config),
        Some(_) => {
            use clap::CommandFactory;
            print!(
                "{}",
                config_file::print(&cli::Args::command(), &matches, &from_file)
            );
            return ExitCode::SUCCESS;
        }
        None => {}
    }
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

/// `wheel-server check`: what this box lets the process hold, every limit
/// smallest first; exit 1 if `--max-connections` is above it.
fn check_box(config: &wheel_server::Config) -> ExitCode {
    let capacity = capacity::this_box(config.park_after.is_some());
    for bound in &capacity.bounds {
        println!("{bound}");
    }
    for warning in &capacity.warnings {
        println!("warning: {warning}");
    }
    let holds = capacity.connections();
    match capacity.binding() {
        Some(first) if config.max_connections as u64 > holds => {
            println!(
                "FAIL: --max-connections {} is above the {holds} this box allows; {} binds first (raise: {})",
                config.max_connections, first.limit, first.raise
            );
            ExitCode::FAILURE
        }
        Some(first) => {
            println!(
                "ok: --max-connections {} fits the {holds} this box allows ({} binds first)",
                config.max_connections, first.limit
            );
            ExitCode::SUCCESS
        }
        None => {
            println!("ok: no limit could be read on this box");
            ExitCode::SUCCESS
        }
    }
}

/// The start-up line on what this box allows, and a warning when
/// `--max-connections` is above it.
fn log_capacity(max_connections: usize, parking: bool) {
    let capacity = capacity::this_box(parking);
    let holds = capacity.connections();
    let each = if parking {
        "idle ones parked, holding no thread"
    } else {
        "a thread each"
    };
    if let Some(first) = capacity.binding() {
        tracing::info!(
            connections = holds,
            binds_first = first.limit,
            "this box lets the process hold {holds} connections ({each}); {first}"
        );
        if max_connections as u64 > holds {
            tracing::warn!(
                "--max-connections {max_connections} is above the {holds} connections this box allows: past them connections are refused (no_thread, accept errors); raise {}",
                first.raise
            );
        }
    }
    for warning in &capacity.warnings {
        tracing::warn!("{warning}");
    }
}

fn run(
    args: &cli::Args,
    config: wheel_server::Config,
    jwt: Option<Jwt>,
) -> Result<(), Box<dyn std::error::Error>> {
    cli::init_logging(args).map_err(|e| e.to_string())?;
    // Said once the server is up: a setting it cannot use is the one line
    // a failed start prints.
    let max_connections = config.max_connections;
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    // Registered before the server starts, so an early signal is not lost.
    let signals = ShutdownSignals::register()?;
    let parking = config.park_after.is_some();
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
    log_capacity(max_connections, parking);
    server.run_until(signals)?;
    Ok(())
}
