//! A heartbeat client: keeps a connection to a wheel-server alive, notices
//! when the server is gone, and reconnects with jittered backoff.
//!
//! ```text
//! cargo run --release --example heartbeat-client -- [ADDR...] [--json] ...
//! ```
//!
//! With several addresses, each connection attempt takes the next one in
//! turn. On CLOSE 1001 (the server is going away) the client drains the
//! connection, then reconnects promptly, to the next address first.
//!
//! Each line read from stdin is sent as DATA and the echo is printed. When
//! stdin ends the client keeps heartbeating. Events go to stdout, one per
//! line: human-readable, or with `--json` one JSON object per line, each with
//! `"event"` and `"t_ms"` (milliseconds since start).
//!
//! Exit status: 0 after `--duration` or Ctrl-C, 1 when `--max-attempts`
//! connection attempts failed (`gave_up`), 2 for bad flags.

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use crossbeam_channel::select;
use serde_json::json;
use signal_hook::consts::{SIGINT, SIGTERM};
use wheel_server::client::{
    Backoff, Client, ClientConfig, Event, PresenceChange, ServerAddr, TlsClient, Token,
};
use wheel_server::parse_duration;
use wheel_server::protocol::Protocol;

/// Keeps a long connection to a wheel-server alive and reports what happens.
#[derive(Parser, Debug)]
#[command(name = "heartbeat-client", version)]
struct Args {
    /// Server addresses (IP:PORT or HOST:PORT, resolved again at every attempt): each
    /// connection attempt takes the next one in turn.
    #[arg(default_value = "127.0.0.1:5005", num_args = 1..)]
    addrs: Vec<ServerAddr>,

    /// Wire protocol, as the server speaks it.
    #[arg(long, default_value = "frame")]
    protocol: Protocol,

    /// Send PING after this long without hearing from the server.
    #[arg(long, default_value = "25s", value_parser = parse_duration)]
    heartbeat_interval: Duration,

    /// Wait this long for each PING's PONG.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    heartbeat_timeout: Duration,

    /// Unanswered PINGs in a row before the server is declared dead.
    #[arg(long, default_value_t = 3)]
    heartbeat_retries: u32,

    /// Give up a connection attempt after this long.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    connect_timeout: Duration,

    /// Upper bound of the first reconnect delay (delays are uniformly jittered below the bound).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    backoff_initial: Duration,

    /// Upper bound of every reconnect delay.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    backoff_max: Duration,

    /// Growth of the delay bound per failed attempt.
    #[arg(long, default_value_t = 2.0)]
    backoff_multiplier: f64,

    /// Stop after this many failed connection attempts in a row (default: never).
    #[arg(long)]
    max_attempts: Option<u32>,

    /// A connection that stays up this long resets the backoff.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    healthy_after: Duration,

    /// Run this long, then exit 0 (default: until Ctrl-C).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,

    /// One JSON object per event on stdout.
    #[arg(long)]
    json: bool,

    /// Subscribe to this topic on a --service pubsub server (repeatable); after a reconnect the
    /// client resumes after the last message it saw.
    #[arg(long = "subscribe", value_name = "TOPIC")]
    subscribe: Vec<String>,

    /// Subscribe to this topic and print who joins and leaves it, with why they left (`SUB
    /// <topic> presence`; repeatable).
    #[arg(long = "presence", value_name = "TOPIC")]
    presence: Vec<String>,

    /// Token for a server run with --auth: sent as AUTH <token> first on every connection.
    #[arg(
        long,
        env = "WHEEL_CLIENT_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    token: Option<String>,

    /// File holding the token, read again before every connection (so a refreshed token is used).
    #[arg(long)]
    token_file: Option<std::path::PathBuf>,

    /// Send each line of stdin as PUB TOPIC <line> instead of as plain DATA.
    #[arg(long, value_name = "TOPIC")]
    publish: Option<String>,

    /// Speak TLS (to a tls:// or tls+line:// listener), trusting the system's root certificates
    /// unless --tls-ca is given. Reconnects resume the TLS session.
    #[arg(long)]
    tls: bool,

    /// Trust the CA certificates in this PEM file (implies --tls); with --tls-system-roots,
    /// in addition to the system's.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<std::path::PathBuf>,

    /// With --tls-ca: trust the system's roots too.
    #[arg(long, requires = "tls_ca")]
    tls_system_roots: bool,

    /// The name the server's certificate must carry, when connecting by address or through
    /// a name the certificate does not hold (implies --tls).
    #[arg(long, value_name = "NAME")]
    tls_server_name: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("heartbeat-client: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let start = Instant::now();
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    let (stop_tx, stop) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            let _ = stop_tx.send(());
        }
    });
    let tls = if args.tls || args.tls_ca.is_some() || args.tls_server_name.is_some() {
        let mut tls = TlsClient::new(
            args.tls_ca.as_deref(),
            args.tls_ca.is_none() || args.tls_system_roots,
        )?;
        tls.server_name = args.tls_server_name.clone();
        Some(tls)
    } else {
        None
    };
    let client = Client::start(ClientConfig {
        tls,
        addrs: args.addrs.clone(),
        protocol: args.protocol,
        connect_timeout: args.connect_timeout,
        heartbeat_interval: args.heartbeat_interval,
        heartbeat_timeout: args.heartbeat_timeout,
        heartbeat_retries: args.heartbeat_retries,
        backoff: Backoff {
            initial: args.backoff_initial,
            max: args.backoff_max,
            multiplier: args.backoff_multiplier,
        },
        max_attempts: args.max_attempts,
        healthy_after: args.healthy_after,
        subscriptions: args.subscribe.clone(),
        presence: args.presence.clone(),
        token: match (&args.token, &args.token_file) {
            (Some(token), _) => Some(Token::Fixed(token.clone())),
            (None, Some(path)) => Some(Token::File(path.clone())),
            (None, None) => None,
        },
        ..ClientConfig::new(args.addrs[0].clone())
    })?;
    let (lines_tx, lines) = crossbeam_channel::unbounded::<Vec<u8>>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().split(b'\n') {
            let Ok(mut line) = line else { break };
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = args.duration.map(|d| start + d);
    let timeout = deadline.map_or(crossbeam_channel::never(), crossbeam_channel::at);
    let mut lines = Some(lines);
    let mut out = std::io::stdout().lock();
    loop {
        let line_rx = lines.clone().unwrap_or_else(crossbeam_channel::never);
        select! {
            recv(client.events()) -> event => {
                let Ok(event) = event else {
                    return Ok(ExitCode::FAILURE);
                };
                let gave_up = matches!(event, Event::GaveUp { .. });
                writeln!(out, "{}", describe(&event, start.elapsed(), args.json))?;
                out.flush()?;
                if gave_up {
                    return Ok(ExitCode::FAILURE);
                }
            }
            recv(line_rx) -> line => match line {
                Ok(line) => {
                    let sent = match &args.publish {
                        Some(topic) => client.publish(topic, &line),
                        None => client.send(&line),
                    };
                    if let Err(e) = sent {
                        eprintln!("heartbeat-client: line not sent: {e}");
                    }
                }
                // stdin ended: stop sending, keep heartbeating.
                Err(_) => lines = None,
            },
            recv(timeout) -> _ => break,
            recv(stop) -> _ => break,
        }
    }
    client.close();
    Ok(ExitCode::SUCCESS)
}

/// One line describing `event`, as JSON or for people.
fn describe(event: &Event, since_start: Duration, as_json: bool) -> String {
    let t_ms = since_start.as_millis() as u64;
    if as_json {
        let value = match event {
            Event::Connected { addr, local } => {
                json!({"event": "connected", "t_ms": t_ms, "addr": addr.to_string(), "local": local.to_string()})
            }
            Event::ConnectFailed { addr, error } => {
                json!({"event": "connect_failed", "t_ms": t_ms, "addr": addr.to_string(), "error": error})
            }
            Event::HeartbeatSent { seq } => {
                json!({"event": "heartbeat_sent", "t_ms": t_ms, "seq": seq})
            }
            Event::Pong { seq, rtt } => {
                json!({"event": "pong", "t_ms": t_ms, "seq": seq, "rtt_ms": rtt.as_secs_f64() * 1e3})
            }
            Event::Data(payload) => {
                json!({"event": "data", "t_ms": t_ms, "payload": String::from_utf8_lossy(payload)})
            }
            Event::Message {
                topic,
                seq,
                payload,
            } => json!({
                "event": "message", "t_ms": t_ms, "topic": topic, "seq": seq,
                "payload": String::from_utf8_lossy(payload)
            }),
            Event::Gap {
                topic,
                first_missing,
            } => {
                json!({"event": "gap", "t_ms": t_ms, "topic": topic, "first_missing": first_missing})
            }
            Event::Presence { topic, change } => {
                let mut v = json!({"event": "presence", "t_ms": t_ms, "topic": topic});
                match change {
                    PresenceChange::Join { conn, user } => {
                        v["change"] = json!("join");
                        v["conn"] = json!(conn);
                        v["user"] = json!(user);
                    }
                    PresenceChange::Leave { conn, user, reason } => {
                        v["change"] = json!("leave");
                        v["conn"] = json!(conn);
                        v["user"] = json!(user);
                        v["reason"] = json!(reason);
                    }
                    PresenceChange::Online { user } => {
                        v["change"] = json!("online");
                        v["user"] = json!(user);
                    }
                    PresenceChange::Offline { user, reason } => {
                        v["change"] = json!("offline");
                        v["user"] = json!(user);
                        v["reason"] = json!(reason);
                    }
                    PresenceChange::Overflow => v["change"] = json!("overflow"),
                }
                v
            }
            Event::Dead { reason } => {
                let mut v = json!({"event": "dead", "t_ms": t_ms, "reason": reason.label()});
                if let wheel_server::client::DeadReason::Close { code, reason } = reason {
                    v["code"] = json!(code);
                    v["close_reason"] = json!(reason);
                }
                v
            }
            Event::Reconnecting { attempt, delay } => json!({
                "event": "reconnecting", "t_ms": t_ms, "attempt": attempt, "delay_ms": delay.as_millis() as u64
            }),
            Event::GaveUp { attempts } => {
                json!({"event": "gave_up", "t_ms": t_ms, "attempts": attempts})
            }
        };
        return value.to_string();
    }
    let t = format!("[{:>9.3}s]", since_start.as_secs_f64());
    match event {
        Event::Connected { addr, local } => format!("{t} connected to {addr} from {local}"),
        Event::ConnectFailed { addr, error } => format!("{t} cannot connect to {addr}: {error}"),
        Event::HeartbeatSent { seq } => format!("{t} heartbeat {seq} sent"),
        Event::Pong { seq, rtt } => format!(
            "{t} heartbeat {seq} answered in {:.3} ms",
            rtt.as_secs_f64() * 1e3
        ),
        Event::Data(payload) => format!("{t} data: {}", String::from_utf8_lossy(payload)),
        Event::Message {
            topic,
            seq,
            payload,
        } => {
            format!("{t} {topic} #{seq}: {}", String::from_utf8_lossy(payload))
        }
        Event::Gap {
            topic,
            first_missing,
        } => format!(
            "{t} {topic}: messages from #{first_missing} were lost (beyond the server's history)"
        ),
        Event::Presence { topic, change } => match change {
            PresenceChange::Join { conn, user } => {
                format!("{t} {topic}: {} joined", who(conn, user.as_deref()))
            }
            PresenceChange::Leave { conn, user, reason } => {
                format!(
                    "{t} {topic}: {} left ({reason})",
                    who(conn, user.as_deref())
                )
            }
            PresenceChange::Online { user } => format!("{t} {topic}: {user} is online"),
            PresenceChange::Offline { user, reason } => {
                format!("{t} {topic}: {user} is offline ({reason})")
            }
            PresenceChange::Overflow => {
                format!("{t} {topic}: joins and leaves were dropped (too many at once)")
            }
        },
        Event::Dead { reason } => format!("{t} connection lost: {reason}"),
        Event::Reconnecting { attempt, delay } => {
            format!(
                "{t} reconnecting in {} (attempt {attempt})",
                humantime::format_duration(round_ms(*delay))
            )
        }
        Event::GaveUp { attempts } => format!("{t} giving up after {attempts} attempts"),
    }
}

/// A member as printed: its user and connection, or the connection.
fn who(conn: &str, user: Option<&str>) -> String {
    match user {
        Some(user) => format!("{user} (connection {conn})"),
        None => format!("connection {conn}"),
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}
