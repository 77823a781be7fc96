//! Command-line flags of `wheel-server`.
//!
//! Longer than most files here, on purpose: it is one table, a field per
//! flag with its help text, environment variable and heading, then the one
//! function that turns it into a [`Config`]. Split, a reader would lose the
//! order `--help` shows.

use std::io::IsTerminal;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use clap::builder::{BoolishValueParser, TypedValueParser};
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, CommandFactory, FromArgMatches, Parser};
use tracing_subscriber::EnvFilter;
use wheel_server::protocol::Protocol;
use wheel_server::server::auth::Jwt;
use wheel_server::server::{ConfigError, Listen, TlsFiles};
use wheel_server::{Config, Keepalive, parse_bytes, parse_duration};

/// Long-connection TCP server that keeps live peers and finds dead ones
/// fast: echo or pub/sub with history (frame, line, WebSocket; TLS; JWT;
/// topics across instances through Redis), with PING/PONG heartbeats, an
/// idle timeout on a hashed timing wheel, and tuned TCP keepalive and
/// TCP_USER_TIMEOUT.
///
/// Every flag can also be set through the environment variable shown, e.g.
/// WHEEL_SERVER_IDLE_TIMEOUT=30s. Durations are written like 250ms, 5s, 2m;
/// on/off flags take 1/0, true/false, yes/no or on/off from the environment.
/// Invalid settings exit with status 2, runtime failures (a port in use)
/// with 1.
///
/// `wheel-server check [FLAGS]` starts nothing: it reports how many
/// connections this box lets the process hold (descriptors, threads, task
/// and mapping limits, the cgroup's, memory) and which limit binds first,
/// and exits 1 if --max-connections is above it.
#[derive(Parser, Debug)]
#[command(name = "wheel-server", version, about, long_about = None)]
pub struct Args {
    /// Address to listen on, IP:PORT or HOST:PORT (port 0 picks a free port). Repeat it (or give
    /// a comma-separated list in the environment variable) to listen on several addresses, each
    /// optionally written SCHEME://HOST:PORT[/PATH] to choose its protocol: frame://, line://,
    /// ws:// (WebSocket; with a path, upgrades to any other path get 404), or the same over TLS:
    /// tls://, tls+line://, wss:// (with --tls-cert and --tls-key). Topics, limits, metrics and
    /// shutdown span them all.
    #[arg(help_heading = "Listeners and protocols", long, env = "WHEEL_SERVER_LISTEN", default_value = "127.0.0.1:5005", value_delimiter = ',', value_parser = listen_spec)]
    listen: Vec<ListenSpec>,

    /// Wire protocol of the --listen addresses written without a scheme: length-prefixed frames,
    /// text lines (for nc), or WebSocket (any path).
    #[arg(help_heading = "Listeners and protocols", long, env = "WHEEL_SERVER_PROTOCOL", default_value = "frame", value_parser = protocol_parser())]
    protocol: Protocol,

    /// Close connections silent for this long with CLOSE 4000 (0 = off).
    #[arg(help_heading = "Timeouts and heartbeats", long, env = "WHEEL_SERVER_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    idle_timeout: Duration,

    /// Timer resolution: idle connections close at most one tick late.
    #[arg(help_heading = "Timeouts and heartbeats", long, env = "WHEEL_SERVER_TICK", default_value = "100ms", value_parser = parse_duration)]
    tick: Duration,

    /// Slots of the timing wheel (a power of two).
    #[arg(
        help_heading = "Timeouts and heartbeats",
        long,
        env = "WHEEL_SERVER_WHEEL_SLOTS",
        default_value_t = 512
    )]
    wheel_slots: usize,

    /// Send PING to a connection idle this long (and again as long as it stays silent);
    /// its PONG counts as activity. Off unless set.
    #[arg(help_heading = "Timeouts and heartbeats", long, env = "WHEEL_SERVER_PROBE_AFTER", value_parser = parse_duration)]
    probe_after: Option<Duration>,

    /// Connections above this many get CLOSE 1013 (try again later).
    #[arg(
        help_heading = "Limits",
        long,
        env = "WHEEL_SERVER_MAX_CONNECTIONS",
        default_value_t = 10_000
    )]
    max_connections: usize,

    /// Largest frame or line in bytes; larger gets CLOSE 1009.
    #[arg(
        help_heading = "Limits",
        long,
        env = "WHEEL_SERVER_MAX_FRAME",
        default_value_t = 1_048_576
    )]
    max_frame: usize,

    /// PINGs closer together than this count as strikes. Off unless set.
    #[arg(help_heading = "Timeouts and heartbeats", long, env = "WHEEL_SERVER_MIN_PING_INTERVAL", value_parser = parse_duration)]
    min_ping_interval: Option<Duration>,

    /// More consecutive strikes than this get CLOSE 1008.
    #[arg(
        help_heading = "Timeouts and heartbeats",
        long,
        env = "WHEEL_SERVER_PING_STRIKES",
        default_value_t = 3
    )]
    ping_strikes: u32,

    /// TCP keepalive: idle time before the first probe (whole seconds).
    #[arg(help_heading = "Timeouts and heartbeats", long, env = "WHEEL_SERVER_KEEPALIVE_IDLE", default_value = "30s", value_parser = parse_duration)]
    keepalive_idle: Duration,

    /// TCP keepalive: time between probes (whole seconds).
    #[arg(help_heading = "Timeouts and heartbeats", long, env = "WHEEL_SERVER_KEEPALIVE_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    keepalive_interval: Duration,

    /// TCP keepalive: unanswered probes before the peer is declared dead.
    #[arg(
        help_heading = "Timeouts and heartbeats",
        long,
        env = "WHEEL_SERVER_KEEPALIVE_COUNT",
        default_value_t = 3
    )]
    keepalive_count: u32,

    /// Turn TCP keepalive off.
    #[arg(help_heading = "Timeouts and heartbeats", long, env = "WHEEL_SERVER_NO_KEEPALIVE", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    no_keepalive: bool,

    /// TCP_USER_TIMEOUT: drop a connection whose sent data stays unacknowledged this long
    /// (0 = off). Unset: keepalive idle + interval x count while keepalive is on (keepalive
    /// sends no probes while data is in flight; without this a dead peer would then take
    /// ~15 minutes of retransmissions to find), off otherwise.
    #[arg(help_heading = "Timeouts and heartbeats", long, env = "WHEEL_SERVER_USER_TIMEOUT", value_parser = parse_duration)]
    user_timeout: Option<Duration>,

    /// Close a connection whose peer does not read for this long while the server writes (0 = off).
    #[arg(help_heading = "Timeouts and heartbeats", long, env = "WHEEL_SERVER_WRITE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    write_timeout: Duration,

    /// Everything before a connection is admitted (the PROXY protocol header, the TLS handshake,
    /// the WebSocket upgrade, AUTH with --auth jwt) must arrive within this long of the accept, or
    /// the connection is dropped and counted.
    #[arg(help_heading = "Listeners and protocols", long, env = "WHEEL_SERVER_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    handshake_timeout: Duration,

    /// Connections one client address may hold at once (IPv6 grouped by /64; the PROXY protocol's
    /// address when that is on); more get CLOSE 1013. Off unless set.
    #[arg(
        help_heading = "Limits",
        long,
        env = "WHEEL_SERVER_MAX_CONNECTIONS_PER_IP"
    )]
    max_connections_per_ip: Option<usize>,

    /// Connects per second one client address may make (with a burst of one second's worth);
    /// more get CLOSE 1013. Off unless set.
    #[arg(
        help_heading = "Limits",
        long,
        env = "WHEEL_SERVER_MAX_CONNECT_RATE_PER_IP"
    )]
    max_connect_rate_per_ip: Option<u32>,

    /// Most bytes that may wait to be written to one connection (messages pushed to it, probes,
    /// CLOSEs, while its socket buffer is full); a connection whose queue would pass it is closed
    /// as a slow consumer with CLOSE 4003. Must hold the largest message (--max-frame plus 14
    /// bytes of framing). Default: twice --max-frame.
    #[arg(help_heading = "Limits", long, env = "WHEEL_SERVER_MAX_OUTBOX", value_parser = parse_bytes, value_name = "BYTES")]
    max_outbox: Option<usize>,

    /// On SIGINT/SIGTERM, send CLOSE 1001 and let connections drain this long (the server keeps
    /// answering until each client hangs up), then force the rest closed.
    #[arg(help_heading = "Timeouts and heartbeats", long, env = "WHEEL_SERVER_SHUTDOWN_GRACE", default_value = "5s", value_parser = parse_duration)]
    shutdown_grace: Duration,

    /// Send CLOSE 1001 to connections this old (each gets its own age within +/-10%), so that
    /// clients reconnect and spread over instances added since (0 = off).
    #[arg(help_heading = "Timeouts and heartbeats", long, env = "WHEEL_SERVER_MAX_CONNECTION_AGE", default_value = "0", value_parser = parse_duration)]
    max_connection_age: Duration,

    /// How long a connection past its maximum age may drain before it is forced closed
    /// (0 = until the client hangs up or goes idle).
    #[arg(help_heading = "Timeouts and heartbeats", long, env = "WHEEL_SERVER_MAX_CONNECTION_AGE_GRACE", default_value = "30s", value_parser = parse_duration)]
    max_connection_age_grace: Duration,

    /// Stack size of each connection's thread, in bytes.
    #[arg(
        help_heading = "Limits",
        long,
        env = "WHEEL_SERVER_WORKER_STACK",
        default_value_t = 65_536
    )]
    worker_stack: usize,

    /// Keep up to this many finished connection threads parked for new connections instead of
    /// ending them: a new connection (or a parked one that needs a thread again) then costs a
    /// hand-over, not a thread spawn and teardown. 0 = off.
    #[arg(
        help_heading = "Limits",
        long,
        env = "WHEEL_SERVER_THREAD_CACHE",
        default_value_t = 1024
    )]
    thread_cache: usize,

    /// A parked thread that gets no connection for this long exits, so that an idle server
    /// gives its threads back.
    #[arg(help_heading = "Limits", long, env = "WHEEL_SERVER_THREAD_CACHE_IDLE", default_value = "60s", value_parser = parse_duration)]
    thread_cache_idle: Duration,

    /// Park a connection that has had no DATA for this long: its thread goes back to the cache
    /// and the connection waits in one epoll set, whose thread answers its PINGs without waking
    /// another; DATA (or anything but a PING) takes a thread again. An idle connection then
    /// costs no thread, its stack or its kernel stack. 0 = off (a thread per live connection).
    #[arg(help_heading = "Limits", long, env = "WHEEL_SERVER_PARK_AFTER", default_value = "1s", value_parser = parse_duration)]
    park_after: Duration,

    /// Serve the admin endpoint over HTTP on this address: Prometheus metrics (GET /metrics),
    /// live connections (GET /connections), health (GET /healthz), topics (GET /topics), and
    /// publish / send / close (POST). Off unless set. --admin-listen is the same flag.
    #[arg(help_heading = "Admin endpoint and metrics", long, visible_alias = "admin-listen", env = "WHEEL_SERVER_METRICS_LISTEN", value_parser = resolve)]
    metrics_listen: Option<SocketAddr>,

    /// Bearer token every admin path requires (Authorization: Bearer TOKEN) but /healthz, /readyz,
    /// /metrics and the pages that hold no data of their own (/, /demo, /wheel-client.js,
    /// /listeners). Required when the admin
    /// endpoint listens on a non-loopback address. Prefer the environment variable to the flag,
    /// which other users can see in the process list.
    #[arg(
        help_heading = "Admin endpoint and metrics",
        long,
        env = "WHEEL_SERVER_ADMIN_TOKEN",
        hide_env_values = true
    )]
    admin_token: Option<String>,

    /// A host name the admin endpoint may be reached by (repeatable; comma-separated in the
    /// variable), beside IP addresses and localhost: requests for its data and control paths
    /// with another Host get 421, which defeats DNS rebinding.
    #[arg(
        help_heading = "Admin endpoint and metrics",
        long,
        env = "WHEEL_SERVER_ADMIN_ALLOWED_HOST",
        value_delimiter = ',',
        value_name = "HOST"
    )]
    admin_allowed_host: Vec<String>,

    /// TLS listeners: the certificate chain, PEM, leaf first. Re-read on SIGHUP (and POST
    /// /admin/reload-tls) for new handshakes; live connections keep theirs.
    #[arg(
        help_heading = "TLS",
        long,
        env = "WHEEL_SERVER_TLS_CERT",
        value_name = "FILE"
    )]
    tls_cert: Option<std::path::PathBuf>,

    /// TLS listeners: the private key of --tls-cert, PEM (PKCS#8, PKCS#1 or SEC1).
    #[arg(
        help_heading = "TLS",
        long,
        env = "WHEEL_SERVER_TLS_KEY",
        value_name = "FILE"
    )]
    tls_key: Option<std::path::PathBuf>,

    /// TLS listeners: require a client certificate issued by a CA in this PEM file; its subject
    /// (common name) is the connection's identity in logs and /connections.
    #[arg(
        help_heading = "TLS",
        long,
        env = "WHEEL_SERVER_TLS_CLIENT_CA",
        value_name = "FILE"
    )]
    tls_client_ca: Option<std::path::PathBuf>,

    /// TLS listeners: the session-ticket key, 64 hex digits in a file (openssl rand -hex 32).
    /// Instances and restarts sharing it resume each other's sessions, so a fleet's reconnect
    /// storm after a restart makes short handshakes. Rotate it by replacing the file and SIGHUP
    /// (the previous key still opens tickets). Default: a random key per process.
    #[arg(
        help_heading = "TLS",
        long,
        env = "WHEEL_SERVER_TLS_TICKET_KEY",
        value_name = "FILE"
    )]
    tls_ticket_key: Option<std::path::PathBuf>,

    /// WebSocket listeners: accept upgrades from browsers on this origin only, e.g.
    /// https://app.example.com (repeat for more). An upgrade with any other Origin header gets
    /// 403: a defence against cross-site WebSocket hijacking. Clients that send no Origin (not
    /// browsers) are not affected. Default: any origin.
    #[arg(
        help_heading = "Listeners and protocols",
        long,
        env = "WHEEL_SERVER_ALLOWED_ORIGIN",
        value_delimiter = ','
    )]
    allowed_origin: Vec<String>,

    /// The service behind the heartbeat machinery: echo (DATA comes back), or pubsub (DATA is a
    /// command: SUB, UNSUB, PUB, PING; see docs/PROTOCOL.md).
    #[arg(help_heading = "Listeners and protocols", long, env = "WHEEL_SERVER_SERVICE", value_enum, default_value_t = Service::Echo)]
    pub service: Service,

    /// Authentication: none, or jwt (every connection's first message must be AUTH <jwt>; the
    /// token's exp closes the connection with CLOSE 4002 unless refreshed).
    #[arg(help_heading = "Authentication", long, env = "WHEEL_SERVER_AUTH", value_enum, default_value_t = AuthMode::None)]
    pub auth: AuthMode,

    /// HS256 secret for --auth jwt. Prefer the environment variable or --jwt-secret-file: a
    /// flag's value is visible in the process list.
    #[arg(
        help_heading = "Authentication",
        long,
        env = "WHEEL_SERVER_JWT_SECRET",
        hide_env_values = true
    )]
    jwt_secret: Option<String>,

    /// File holding the HS256 secret for --auth jwt (trailing newline ignored).
    #[arg(
        help_heading = "Authentication",
        long,
        env = "WHEEL_SERVER_JWT_SECRET_FILE"
    )]
    jwt_secret_file: Option<std::path::PathBuf>,

    /// PEM public key for --auth jwt with RS256 (RSA) or ES256 (P-256) tokens, by the key's type.
    #[arg(
        help_heading = "Authentication",
        long,
        env = "WHEEL_SERVER_JWT_PUBLIC_KEY"
    )]
    jwt_public_key: Option<std::path::PathBuf>,

    /// Messages kept per topic for subscribers that resume with SUB <topic> <since> (0 = off).
    #[arg(
        help_heading = "Pub/sub",
        long,
        env = "WHEEL_SERVER_HISTORY",
        default_value_t = 100
    )]
    history: usize,

    /// How long a topic keeps a message for resuming subscribers.
    #[arg(help_heading = "Pub/sub", long, env = "WHEEL_SERVER_HISTORY_TTL", default_value = "5m", value_parser = parse_duration)]
    history_ttl: Duration,

    /// Bytes of history kept per topic (each message counted with 160 bytes of overhead); past
    /// it the topic's oldest messages are dropped first. Accepts KiB, MiB, GiB.
    #[arg(help_heading = "Pub/sub", long, env = "WHEEL_SERVER_HISTORY_BYTES", default_value = "4MiB", value_parser = parse_bytes, value_name = "BYTES")]
    history_bytes: usize,

    /// Bytes of history kept over all topics; past it the oldest message of any topic is dropped
    /// first (resumes that needed it get gap). Accepts KiB, MiB, GiB.
    #[arg(help_heading = "Pub/sub", long, env = "WHEEL_SERVER_HISTORY_MEMORY", default_value = "256MiB", value_parser = parse_bytes, value_name = "BYTES")]
    history_memory: usize,

    /// Topics at most; a PUB or SUB that would create another gets ERR too many topics (HTTP
    /// 503).
    #[arg(
        help_heading = "Pub/sub",
        long,
        env = "WHEEL_SERVER_MAX_TOPICS",
        default_value_t = 100_000
    )]
    max_topics: usize,

    /// PUBs one connection may send per second (a burst of one second's worth); more get ERR
    /// rate limited, and 100 refused in a row close the connection with CLOSE 1008 (0 = off).
    #[arg(
        help_heading = "Pub/sub",
        long,
        env = "WHEEL_SERVER_MAX_PUBLISH_RATE",
        default_value_t = 1000
    )]
    max_publish_rate: u32,

    /// Payload bytes one connection may publish per second (a burst of one second's worth, at
    /// least one largest message); more get ERR rate limited (0 = off). Accepts KiB, MiB, GiB.
    #[arg(help_heading = "Pub/sub", long, env = "WHEEL_SERVER_MAX_PUBLISH_BYTES", default_value = "64MiB", value_parser = parse_bytes, value_name = "BYTES")]
    max_publish_bytes: usize,

    /// Topics one connection may subscribe to at most (then ERR too many subscriptions).
    #[arg(
        help_heading = "Pub/sub",
        long,
        env = "WHEEL_SERVER_MAX_SUBSCRIPTIONS",
        default_value_t = 128
    )]
    max_subscriptions: usize,

    /// Join and leave events per second per topic, at most, each sent to every subscriber that
    /// watches the topic (SUB <topic> presence); past it they are dropped and the watchers get
    /// PRESENCE <topic> overflow, once a second, to ask WHO again (0 = no limit).
    #[arg(
        help_heading = "Pub/sub",
        long,
        env = "WHEEL_SERVER_PRESENCE_RATE",
        default_value_t = 20
    )]
    presence_rate: u32,

    /// Members one WHO answer (and one GET /presence/<topic> page) lists at most, 1 to 10000;
    /// the answer ends with "more" and the client asks for the next page.
    #[arg(
        help_heading = "Pub/sub",
        long,
        env = "WHEEL_SERVER_PRESENCE_PAGE",
        default_value_t = wheel_server::server::PRESENCE_PAGE
    )]
    presence_page: usize,

    /// Share topics with the other instances using this Redis
    /// (redis://[:password@]host:port/db): sequence numbers and --history live in Redis, every
    /// instance's subscribers get every message, and a client resumes on any instance. A PUB while
    /// Redis is unreachable is refused (ERR redis unavailable, HTTP 503); /readyz answers 503.
    #[arg(
        help_heading = "Redis (topics across instances)",
        long,
        env = "WHEEL_SERVER_REDIS",
        hide_env_values = true,
        value_name = "URL"
    )]
    redis: Option<String>,

    /// Redis's password, if not in --redis's URL (overrides it; prefer the environment variable).
    #[arg(
        help_heading = "Redis (topics across instances)",
        long,
        env = "WHEEL_SERVER_REDIS_PASSWORD",
        hide_env_values = true
    )]
    redis_password: Option<String>,

    /// Instead of --redis: the Redis Sentinels (HOST:PORT, repeatable; comma-separated in the
    /// variable) that name the current master of --redis-master-name. Every reconnect asks them,
    /// so a fail-over is followed; a promoted replica that lagged is a new numbering, and
    /// subscribers are told (GAP <topic> 1).
    #[arg(
        help_heading = "Redis (topics across instances)",
        long,
        env = "WHEEL_SERVER_REDIS_SENTINEL",
        value_delimiter = ',',
        value_name = "HOST:PORT"
    )]
    redis_sentinel: Vec<String>,

    /// The master's name the --redis-sentinel Sentinels monitor.
    #[arg(
        help_heading = "Redis (topics across instances)",
        long,
        env = "WHEEL_SERVER_REDIS_MASTER_NAME",
        value_name = "NAME"
    )]
    redis_master_name: Option<String>,

    /// How long a Redis connect or command may take before the publish (or SUB) fails.
    #[arg(help_heading = "Redis (topics across instances)", long, env = "WHEEL_SERVER_REDIS_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    redis_timeout: Duration,

    /// With --redis, how often this instance tells Redis it lives (presence across instances).
    /// An instance that misses 3 (SIGKILLed, frozen, cut off) is taken for gone: another instance
    /// tells every watcher its members left (LEAVE ... instance_lost) at most 4 heartbeats after
    /// its last one.
    #[arg(help_heading = "Redis (topics across instances)", long, env = "WHEEL_SERVER_PRESENCE_HEARTBEAT", default_value = "1s", value_parser = parse_duration)]
    presence_heartbeat: Duration,

    /// Log a one-line summary (connections, closes, frames) at info level this often (0 = off).
    #[arg(help_heading = "Admin endpoint and metrics", long, env = "WHEEL_SERVER_STATS_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    stats_interval: Duration,

    /// Share the listening port with other processes (SO_REUSEPORT): run one instance per core
    /// on the same address and the kernel spreads connections across them.
    #[arg(help_heading = "Listeners and protocols", long, env = "WHEEL_SERVER_REUSE_PORT", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    reuse_port: bool,

    /// Expect a PROXY protocol header (v1 or v2, as HAProxy's send-proxy) on every connection;
    /// logs, metrics and /connections then show the real client address. A connection without
    /// one is refused with CLOSE 1002.
    #[arg(help_heading = "Listeners and protocols", long, env = "WHEEL_SERVER_PROXY_PROTOCOL", action = ArgAction::SetTrue, value_parser = BoolishValueParser::new())]
    proxy_protocol: bool,

    /// With --proxy-protocol: the load balancers' addresses (ADDR/BITS or ADDR, repeatable;
    /// comma-separated in the variable), the only peers whose PROXY header is believed; others
    /// are refused and counted. Without it any peer can claim any client address.
    #[arg(
        help_heading = "Listeners and protocols",
        long,
        env = "WHEEL_SERVER_PROXY_FROM",
        value_delimiter = ',',
        value_name = "CIDR"
    )]
    proxy_from: Vec<wheel_server::server::Cidr>,

    /// Log format: human-readable text, or one JSON object per line for log shippers.
    #[arg(help_heading = "Logging", long, env = "WHEEL_SERVER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// Read settings from this TOML file, keys named as the flags (max-connections = 50000); flags
    /// and environment variables win over it. An unknown key is refused (exit 2, naming its line).
    /// `wheel-server config` prints the effective settings in this form.
    #[arg(
        help_heading = "Configuration file",
        long = "config",
        env = "WHEEL_SERVER_CONFIG",
        value_name = "FILE"
    )]
    config_file: Option<std::path::PathBuf>,

    /// More log output (-v: debug from wheel-server itself, -vv: trace). Overrides RUST_LOG.
    #[arg(help_heading = "Logging", short, long, action = ArgAction::Count, conflicts_with = "quiet")]
    verbose: u8,

    /// Less log output (-q warnings, -qq errors only). Overrides RUST_LOG.
    #[arg(help_heading = "Logging", short, long, action = ArgAction::Count)]
    quiet: u8,
}

/// How connections authenticate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// Not at all.
    None,
    /// With a JWT (`AUTH <jwt>` first): HS256 with --jwt-secret or --jwt-secret-file, RS256 or
    /// ES256 with --jwt-public-key.
    Jwt,
}

/// The application served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Service {
    /// DATA is answered with the same DATA.
    Echo,
    /// Topics with history: SUB, UNSUB, PUB, PING commands.
    Pubsub,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `2026-11-21T05:09:58Z  INFO wheel_server::server: listening on ...`
    Text,
    /// One JSON object per line.
    Json,
}

/// An address to listen on: `IP:PORT`, or `HOST:PORT` resolved with the
/// system resolver (the first address it gives).
fn resolve(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    s.to_socket_addrs()
        .map_err(|e| format!("cannot resolve {s:?}: {e} (expected IP:PORT or HOST:PORT)"))?
        .next()
        .ok_or_else(|| format!("{s:?} resolves to no address"))
}

/// One `--listen` value: `[SCHEME://]HOST:PORT[/PATH]`.
#[derive(Clone, Debug)]
struct ListenSpec {
    addr: SocketAddr,
    /// From the scheme; `None`: `--protocol`'s.
    protocol: Option<Protocol>,
    /// A WebSocket listener's path.
    path: Option<String>,
    /// TLS first.
    tls: bool,
}

/// Parses a `--listen` value.
fn listen_spec(s: &str) -> Result<ListenSpec, String> {
    let (protocol, tls, rest) = match s.split_once("://") {
        None => (None, false, s),
        Some((scheme, rest)) => {
            let (protocol, tls) = match scheme {
                "frame" => (Protocol::Frame, false),
                "line" => (Protocol::Line, false),
                "ws" => (Protocol::Ws, false),
                "tls" => (Protocol::Frame, true),
                "tls+line" => (Protocol::Line, true),
                "wss" => (Protocol::Ws, true),
                other => {
                    return Err(format!(
                        "unknown scheme {other:?} (expected frame://, line://, ws://, tls://, tls+line:// or wss://, or no scheme)"
                    ));
                }
            };
            (Some(protocol), tls, rest)
        }
    };
    let (rest, path) = match rest.find('/') {
        None => (rest, None),
        Some(_) if protocol != Some(Protocol::Ws) => {
            return Err(format!(
                "{s:?}: a path is only meaningful for WebSocket (ws://, wss://) listeners"
            ));
        }
        Some(at) => (&rest[..at], Some(rest[at..].to_owned())),
    };
    if let Some(path) = &path
        && (path.contains(['?', '#']) || path.chars().any(char::is_whitespace))
    {
        return Err(format!(
            "{s:?}: the path must be a plain path like /ws (no query, fragment or spaces)"
        ));
    }
    Ok(ListenSpec {
        addr: resolve(rest)?,
        protocol,
        path,
        tls,
    })
}

/// Parses `--protocol`, listing the names in `--help`.
fn protocol_parser() -> impl clap::builder::TypedValueParser<Value = Protocol> {
    clap::builder::PossibleValuesParser::new(Protocol::ALL.map(Protocol::as_str))
        .map(|name| name.parse::<Protocol>().expect("one of the listed names"))
}

/// Zero means "off" for optional durations.
fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

impl Args {
    /// Parses `args` (the program name first), the environment and the
    /// `--config` file; returns the flags, the matches, and the settings
    /// the file set. On an invalid value, prints one line naming the flag
    /// (and the environment variable or the file's line, when that is
    /// where the value came from) and exits with status 2.
    pub fn parse_from(
        args: impl IntoIterator<Item = std::ffi::OsString>,
    ) -> (Args, ArgMatches, std::collections::BTreeSet<String>) {
        let args: Vec<_> = args.into_iter().collect();
        let (command, from_file) = match crate::config_file::path(&args) {
            Some(path) => crate::config_file::apply(Args::command(), &path).unwrap_or_else(|e| {
                eprintln!("wheel-server: error: {e}");
                std::process::exit(2)
            }),
            None => (Args::command(), Default::default()),
        };
        let matches = command
            .try_get_matches_from(args)
            .unwrap_or_else(|e| exit_for(&e));
        match Args::from_arg_matches(&matches) {
            Ok(args) => (args, matches, from_file),
            Err(e) => exit_for(&e),
        }
    }

    /// The server configuration these flags describe.
    pub fn config(&self) -> Result<Config, ConfigError> {
        // Each flag sets its setting; a setting added to Config needs its
        // flag here (and in README, "Flags").
        let mut config = Config::default();
        config.listen = self.listen[0].addr;
        config.protocol = self.listen[0].protocol.unwrap_or(self.protocol);
        config.path = self.listen[0].path.clone();
        config.listen_tls = self.listen[0].tls;
        config.tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca.clone(),
                ticket_key: self.tls_ticket_key.clone(),
            }),
            (Some(_), None) => {
                return Err(ConfigError {
                    setting: "tls_key",
                    reason: "--tls-cert needs --tls-key".into(),
                });
            }
            (None, Some(_)) => {
                return Err(ConfigError {
                    setting: "tls_cert",
                    reason: "--tls-key needs --tls-cert".into(),
                });
            }
            (None, None) => None,
        };
        config.also_listen = self.listen[1..]
            .iter()
            .map(|spec| Listen {
                addr: spec.addr,
                protocol: spec.protocol.unwrap_or(self.protocol),
                path: spec.path.clone(),
                tls: spec.tls,
            })
            .collect();
        config.idle_timeout = nonzero(self.idle_timeout);
        config.tick = self.tick;
        config.wheel_slots = self.wheel_slots;
        config.probe_after = self.probe_after.and_then(nonzero);
        config.max_connections = self.max_connections;
        config.max_frame = self.max_frame;
        config.min_ping_interval = self.min_ping_interval.and_then(nonzero);
        config.ping_strikes = self.ping_strikes;
        config.keepalive = (!self.no_keepalive).then_some(Keepalive {
            idle: self.keepalive_idle,
            interval: self.keepalive_interval,
            count: self.keepalive_count,
        });
        config.user_timeout = self.user_timeout;
        config.write_timeout = nonzero(self.write_timeout);
        config.max_outbox = self
            .max_outbox
            .unwrap_or_else(|| self.max_frame.saturating_mul(2));
        config.handshake_timeout = self.handshake_timeout;
        config.max_connections_per_ip = self.max_connections_per_ip;
        config.max_connect_rate_per_ip = self.max_connect_rate_per_ip;
        config.shutdown_grace = self.shutdown_grace;
        config.max_connection_age = nonzero(self.max_connection_age);
        config.max_connection_age_grace = nonzero(self.max_connection_age_grace);
        config.worker_stack = self.worker_stack;
        config.thread_cache = self.thread_cache;
        config.thread_cache_idle = self.thread_cache_idle;
        config.park_after = nonzero(self.park_after);
        config.metrics_listen = self.metrics_listen;
        config.admin_token = self.admin_token.clone();
        config.admin_allowed_hosts = self.admin_allowed_host.clone();
        config.allowed_origins = self.allowed_origin.clone();
        config.history = self.history;
        config.history_ttl = self.history_ttl;
        config.history_bytes = self.history_bytes;
        config.history_memory = self.history_memory;
        config.max_topics = self.max_topics;
        config.max_publish_rate = (self.max_publish_rate > 0).then_some(self.max_publish_rate);
        config.max_publish_bytes =
            (self.max_publish_bytes > 0).then_some(self.max_publish_bytes as u64);
        config.max_subscriptions = self.max_subscriptions;
        config.presence_rate = self.presence_rate;
        config.presence_page = self.presence_page;
        config.redis = self.redis.clone();
        config.redis_password = self.redis_password.clone();
        config.redis_sentinels = self.redis_sentinel.clone();
        config.redis_master_name = self.redis_master_name.clone();
        config.redis_timeout = self.redis_timeout;
        config.presence_heartbeat = self.presence_heartbeat;
        config.stats_interval = nonzero(self.stats_interval);
        config.reuse_port = self.reuse_port;
        config.proxy_protocol = self.proxy_protocol;
        config.proxy_from = self.proxy_from.clone();
        config.validate()?;
        Ok(config)
    }
}

impl Args {
    /// The JWT verifier `--auth jwt` asks for, or the one line that says
    /// which flag is wrong.
    pub fn jwt(&self) -> Result<Option<Jwt>, String> {
        if self.auth == AuthMode::None {
            return Ok(None);
        }
        let secret = match (&self.jwt_secret, &self.jwt_secret_file) {
            (Some(secret), None) => Some(secret.clone().into_bytes()),
            (None, Some(path)) => {
                let text = std::fs::read(path).map_err(|e| {
                    format!(
                        "invalid value for --jwt-secret-file: {}: {e}",
                        path.display()
                    )
                })?;
                Some(text.strip_suffix(b"\n").unwrap_or(&text).to_vec())
            }
            (Some(_), Some(_)) => {
                return Err("--jwt-secret and --jwt-secret-file: give one, not both".into());
            }
            (None, None) => None,
        };
        match (secret, &self.jwt_public_key) {
            (Some(secret), None) if secret.is_empty() => {
                Err("invalid value for --jwt-secret: must not be empty".into())
            }
            (Some(secret), None) => Jwt::hs256(&secret)
                .map(Some)
                .map_err(|e| format!("invalid value for --jwt-secret: {e}")),
            (None, Some(path)) => {
                let pem = std::fs::read(path).map_err(|e| {
                    format!(
                        "invalid value for --jwt-public-key: {}: {e}",
                        path.display()
                    )
                })?;
                Jwt::rs256(&pem)
                    .or_else(|_| Jwt::es256(&pem))
                    .map(Some)
                    .map_err(|e| {
                        format!(
                            "invalid value for --jwt-public-key: {}: not an RSA or P-256 public key in PEM ({e})",
                            path.display()
                        )
                    })
            }
            (Some(_), Some(_)) => {
                Err("--jwt-secret and --jwt-public-key: give one, not both".into())
            }
            (None, None) => Err(
                "--auth jwt needs a key: --jwt-secret, --jwt-secret-file or --jwt-public-key"
                    .into(),
            ),
        }
    }
}

/// The message for a setting the server refused: names the flag, and the
/// environment variable when the value came from there.
pub fn describe(error: &ConfigError, matches: &ArgMatches) -> String {
    let flag = format!("--{}", error.setting.replace('_', "-"));
    let from_env = matches.try_get_raw(error.setting).is_ok()
        && matches.value_source(error.setting) == Some(ValueSource::EnvVariable);
    let source = if from_env {
        format!(" (from {})", env_name(error.setting))
    } else {
        String::new()
    };
    format!("invalid value for {flag}{source}: {}", error.reason)
}

/// `WHEEL_SERVER_<SETTING>`.
fn env_name(setting: &str) -> String {
    format!("WHEEL_SERVER_{}", setting.to_ascii_uppercase())
}

/// Exits for a command-line error: clap's own report (status 2), or, when
/// the bad value came from an environment variable, one line naming it.
fn exit_for(error: &clap::Error) -> ! {
    use clap::error::{ContextKind, ContextValue};
    if let Some(ContextValue::String(arg)) = error.get(ContextKind::InvalidArg) {
        let long = arg
            .trim_start_matches('-')
            .split([' ', '='])
            .next()
            .unwrap_or_default();
        let on_command_line = std::env::args()
            .any(|a| a == format!("--{long}") || a.starts_with(&format!("--{long}=")));
        let env = env_name(&long.replace('-', "_"));
        if !on_command_line && let Ok(value) = std::env::var(&env) {
            let why = error
                .to_string()
                .lines()
                .next()
                .unwrap_or_default()
                .trim_start_matches("error: ")
                .to_owned();
            eprintln!("wheel-server: error: {env}={value:?} (for --{long}): {why}");
            std::process::exit(2);
        }
    }
    error.exit()
}

/// Logs go to stderr. -v/-q pick the level; without them RUST_LOG does,
/// defaulting to info.
pub fn init_logging(args: &Args) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // -v raises our own crate's level only; libraries stay at info.
    let level = match (args.verbose, args.quiet) {
        (0, 0) => None,
        (1, _) => Some("info,wheel_server=debug"),
        (v, _) if v >= 2 => Some("debug,wheel_server=trace"),
        (_, 1) => Some("warn"),
        _ => Some("error"),
    };
    let filter = match level {
        Some(level) => EnvFilter::new(level),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().try_init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn flags_are_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn defaults_match_the_library_defaults() {
        let args = Args::try_parse_from(["wheel-server"]).unwrap();
        assert_eq!(args.config().unwrap(), Config::default());
    }

    #[test]
    fn zero_turns_timeouts_off() {
        let args = Args::try_parse_from([
            "wheel-server",
            "--idle-timeout",
            "0",
            "--write-timeout",
            "0",
        ])
        .unwrap();
        let config = args.config().unwrap();
        assert_eq!(config.idle_timeout, None);
        assert_eq!(config.write_timeout, None);
    }

    #[test]
    fn bad_durations_are_rejected_by_the_parser() {
        let err = Args::try_parse_from(["wheel-server", "--tick", "fast"]).unwrap_err();
        assert!(err.to_string().contains("--tick"), "{err}");
    }
}
