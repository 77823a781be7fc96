//! Pushing from outside a handler: a pub/sub server whose own thread
//! publishes the time to the topic `clock` every second.
//!
//! ```text
//! cargo run --example ticker -- 127.0.0.1:5005
//! # another terminal: subscribe and watch the ticks arrive
//! cargo run --example heartbeat-client -- 127.0.0.1:5005 --subscribe clock
//! ```
//!
//! A client that reconnects resumes after the last tick it saw, within the
//! server's history (100 messages by default).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wheel_server::server::pubsub::PubSub;
use wheel_server::{Config, Server};

fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:5005".into());
    let config = {
        let mut config = Config::default();
        config.listen = listen.parse().map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{listen}: {e}"))
        })?;
        config
    };
    let server = Server::with_handler(config, PubSub)?;
    let handle = server.handle();
    std::thread::Builder::new()
        .name("ticker".into())
        .spawn(move || {
            loop {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs();
                let published = handle
                    .publish("clock", now.to_string().as_bytes())
                    .expect("clock is a valid topic");
                tracing::debug!(
                    seq = published.seq,
                    subscribers = published.delivered,
                    "tick"
                );
                std::thread::sleep(Duration::from_secs(1));
            }
        })?;
    println!("ticking on {} (topic clock)", server.local_addr());
    server.run_until_signal()?;
    Ok(())
}
