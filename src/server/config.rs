//! Server configuration: data, and the checks between its values.
//!
//! Longer than most files here, on purpose: it is one struct, a field per
//! setting with its documentation, then its defaults and the checks that
//! relate them, which a reader scans top to bottom. Nothing here reads a
//! file or touches the network; what the settings name (TLS files, the
//! Redis address) is loaded once, when the server starts.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::protocol::Protocol;
use crate::sys::{Keepalive, SocketOptions};

/// Everything a [`Server`](crate::server::Server) can be told. Start from
/// [`Config::default`] and change what you need; [`Server::start`] checks
/// the values.
///
/// The struct is `#[non_exhaustive]`, as tungstenite's `WebSocketConfig`
/// is: a setting added in a later version is not a breaking change, so
/// outside this crate a `Config` is made by changing the fields of a
/// default one, not with a struct literal.
///
/// [`Server::start`]: crate::server::Server::start
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use wheel_server::server::Config;
///
/// let mut config = Config::default();
/// config.listen = "127.0.0.1:0".parse().unwrap();
/// config.idle_timeout = Some(Duration::from_secs(30));
/// assert!(config.validate().is_ok());
/// ```
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Wire protocol spoken on the connections of `listen`.
    pub protocol: Protocol,
    /// WebSocket mode: the path `listen`'s upgrades must ask for (404
    /// otherwise); `None`: any path.
    pub path: Option<String>,
    /// Whether `listen` speaks TLS (`tls://`, `tls+line://`, `wss://`).
    pub listen_tls: bool,
    /// The certificate chain and key of the TLS listeners (the crate's `tls`
    /// feature; without it, refused when the server starts).
    pub tls: Option<TlsFiles>,
    /// More addresses to listen on, each with its own protocol. Topics,
    /// limits, metrics and shutdown span every listener.
    pub also_listen: Vec<Listen>,
    /// Close a connection that sent no complete message for this long
    /// (CLOSE 4000). `None` disables the application idle timeout.
    pub idle_timeout: Option<Duration>,
    /// Timer resolution: idle timeouts fire at most one tick late.
    pub tick: Duration,
    /// Slots of the timing wheel (a power of two). `slots * tick` at least
    /// as long as the idle timeout keeps expiry to one look per timer.
    pub wheel_slots: usize,
    /// Send a PING to a connection idle this long (and again every
    /// `probe_after` while it stays silent); its PONG counts as activity.
    pub probe_after: Option<Duration>,
    /// Connections beyond this many get CLOSE 1013 and are closed.
    pub max_connections: usize,
    /// Largest frame (length field) or line accepted; larger ones get CLOSE
    /// 1009 without the body being read.
    pub max_frame: usize,
    /// PINGs arriving closer together than this are strikes.
    pub min_ping_interval: Option<Duration>,
    /// More than this many consecutive strikes get CLOSE 1008.
    pub ping_strikes: u32,
    /// TCP keepalive on every accepted socket; `None` turns it off.
    pub keepalive: Option<Keepalive>,
    /// `TCP_USER_TIMEOUT`: drop a connection whose sent data stays
    /// unacknowledged this long. `None`: with keepalive on,
    /// `idle + interval * count` (TCP keepalive sends no probes while data
    /// is unacknowledged, so without it a dead peer with data in flight is
    /// found only by retransmission, after about 15 minutes); with keepalive
    /// off, not set. `Some(Duration::ZERO)`: not set (the kernel's
    /// retransmission limit applies).
    pub user_timeout: Option<Duration>,
    /// How long the worker may spend writing one batch of answers to a peer
    /// that does not take them (however it trickles), and how long output
    /// queued by other threads may make no progress; then the connection is
    /// closed (reason `write_timeout`). `None`: forever.
    pub write_timeout: Option<Duration>,
    /// Most bytes that may wait to be written on one connection (probes,
    /// CLOSEs and pushes queued by threads other than its worker). A message
    /// that would pass it closes the connection as a slow consumer (CLOSE
    /// 4003) instead of growing memory.
    pub max_outbox: usize,
    /// On shutdown, how long connections may drain after CLOSE 1001 (the
    /// server answers until the client hangs up) before they are forced
    /// closed.
    pub shutdown_grace: Duration,
    /// Send CLOSE 1001 to a connection this old, so that long-lived
    /// connections spread over instances added since they opened. Each
    /// connection's age is drawn uniformly within +/-10% of this, so that a
    /// fleet's clients do not all reconnect at once. `None`: no limit.
    pub max_connection_age: Option<Duration>,
    /// How long a connection past its maximum age may drain before it is
    /// forced closed. `None`: until the client hangs up (the idle timeout
    /// still applies).
    pub max_connection_age_grace: Option<Duration>,
    /// Stack size of each connection's worker thread, in bytes.
    pub worker_stack: usize,
    /// Most finished worker threads kept parked for the next connections,
    /// instead of exiting (a new connection then costs no thread spawn).
    /// 0: every connection starts a thread and ends it.
    pub thread_cache: usize,
    /// How long a parked worker thread waits for a connection before it
    /// exits, so that an idle server gives its threads back.
    pub thread_cache_idle: Duration,
    /// A connection that has had no DATA for this long gives its thread
    /// back and waits in the parking thread's epoll set, which answers its
    /// PINGs itself; its next DATA (or anything but a PING) takes a thread
    /// again. `None`: every connection keeps its thread for its whole life.
    pub park_after: Option<Duration>,
    /// Serve `/metrics`, `/connections` and `/healthz` over HTTP here.
    pub metrics_listen: Option<SocketAddr>,
    /// Log a one-line summary at info level this often.
    pub stats_interval: Option<Duration>,
    /// Set `SO_REUSEPORT`, so that several server processes can listen on
    /// the same port (one per core, say) with the kernel balancing between
    /// them.
    pub reuse_port: bool,
    /// Expect a PROXY protocol header (v1 or v2) at the start of every
    /// connection, as HAProxy sends with `send-proxy`; logs, metrics and
    /// `/connections` then show the real client address.
    pub proxy_protocol: bool,
    /// With `proxy_protocol`: the peers whose PROXY headers are trusted
    /// (the load balancers). A connection from any other peer is refused
    /// and counted (`rejected{reason="untrusted_proxy"}`). Empty: any peer,
    /// which lets any client claim any address.
    pub proxy_from: Vec<crate::cidr::Cidr>,
    /// Everything before a connection is admitted (today the PROXY protocol
    /// header) must arrive within this long of the accept, or the
    /// connection is dropped and counted (`wheel_handshake_timeouts_total`).
    pub handshake_timeout: Duration,
    /// WebSocket listeners: the `Origin`s an upgrade may come from
    /// (compared without regard to case); an upgrade with another `Origin`
    /// gets 403. Empty: any. An upgrade without `Origin` (not from a
    /// browser) is not affected: this defends browsers' users against
    /// cross-site WebSocket hijacking, it does not authenticate.
    pub allowed_origins: Vec<String>,
    /// Connections one client address may hold at once (IPv6 grouped by
    /// /64; the PROXY protocol's address when that is on); further ones get
    /// CLOSE 1013 `too many connections from your address`. `None`: no
    /// limit.
    pub max_connections_per_ip: Option<usize>,
    /// Connects per second one client address may make (a burst of one
    /// second's worth); more get CLOSE 1013 `connecting too often from your
    /// address`. `None`: no limit.
    pub max_connect_rate_per_ip: Option<u32>,
    /// Messages retained per topic, for subscribers that resume with
    /// `SUB <topic> <since>` (0 turns history off).
    pub history: usize,
    /// How long a retained message is kept.
    pub history_ttl: Duration,
    /// Payload bytes retained per topic, at most (each message counted with
    /// a fixed overhead of 160 bytes for its bookkeeping): past it, the
    /// topic's oldest messages go first.
    pub history_bytes: usize,
    /// Bytes retained over all topics, at most (counted as for
    /// `history_bytes`): past it, the oldest message of any topic goes
    /// first, and resumes that needed it get `gap`.
    pub history_memory: usize,
    /// Topics at most (with or without subscribers and history); a publish
    /// or subscription that would create another is refused (`ERR too many
    /// topics`, HTTP 503).
    pub max_topics: usize,
    /// Publishes one connection may make per second (a burst of one
    /// second's worth); more get `ERR rate limited`, and
    /// [`RATE_LIMIT_STRIKES`](crate::server::RATE_LIMIT_STRIKES) in a row close the
    /// connection with CLOSE 1008. `None`: no limit.
    pub max_publish_rate: Option<u32>,
    /// Payload bytes one connection may publish per second (a burst of one
    /// second's worth, at least one largest message). `None`: no limit.
    pub max_publish_bytes: Option<u64>,
    /// Topics one connection may subscribe to at most.
    pub max_subscriptions: usize,
    /// Join and leave events per second per topic, at most (each sent to
    /// every subscriber that watches the topic's presence); past it they
    /// are dropped and watchers told to ask again. 0: no limit.
    pub presence_rate: u32,
    /// Members one `WHO` answer (or one `GET /presence` page) lists at
    /// most; the rest are paged.
    pub presence_page: usize,
    /// With [`redis`](Config::redis): how often this instance tells Redis
    /// it lives. Its members are taken for gone, with the leave reason
    /// `instance_lost`, once it misses 3 of them: another instance takes
    /// them out at most 4 heartbeats after this one's last.
    pub presence_heartbeat: Duration,
    /// Share topics with other instances through the Redis at this URL
    /// (`redis://[:password@]host:port/db`): sequence numbers and history
    /// live there, and every instance's subscribers get every message.
    /// `None`: topics are this instance's own.
    pub redis: Option<String>,
    /// Redis's password, if not in the URL (it overrides the URL's).
    pub redis_password: Option<String>,
    /// Instead of `redis`: the Sentinels (`host:port`) that name the
    /// current master of [`redis_master_name`](Config::redis_master_name),
    /// asked again on every reconnect, so that a fail-over is followed (a
    /// promoted replica that lagged is a new epoch: subscribers are told).
    pub redis_sentinels: Vec<String>,
    /// The master's name the Sentinels monitor.
    pub redis_master_name: Option<String>,
    /// How long a Redis connect or command may take, and how long a
    /// publisher waits for room in the Redis command queue.
    pub redis_timeout: Duration,
    /// Bearer token the admin endpoints (publish, send, close, topics)
    /// require; `/healthz` and `/metrics` stay open. Required when
    /// `metrics_listen` is not a loopback address.
    pub admin_token: Option<String>,
    /// Host names (beside IP addresses and `localhost`) the admin
    /// endpoint answers its data and control paths for; another `Host`
    /// gets 421, so a page on another name that resolves here (DNS
    /// rebinding) reads nothing.
    pub admin_allowed_hosts: Vec<String>,
}

impl std::fmt::Debug for Config {
    /// Every field, but the admin token's value.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("protocol", &self.protocol)
            .field("also_listen", &self.also_listen)
            .field("idle_timeout", &self.idle_timeout)
            .field("tick", &self.tick)
            .field("probe_after", &self.probe_after)
            .field("park_after", &self.park_after)
            .field("max_connections", &self.max_connections)
            .field("max_frame", &self.max_frame)
            .field("keepalive", &self.keepalive)
            .field("user_timeout", &self.user_timeout)
            .field("write_timeout", &self.write_timeout)
            .field("max_outbox", &self.max_outbox)
            .field("metrics_listen", &self.metrics_listen)
            .field("history", &self.history)
            .field("history_bytes", &self.history_bytes)
            .field("history_memory", &self.history_memory)
            .field("max_topics", &self.max_topics)
            .field("max_publish_rate", &self.max_publish_rate)
            .field("max_publish_bytes", &self.max_publish_bytes)
            .field("admin_allowed_hosts", &self.admin_allowed_hosts)
            .field("proxy_from", &self.proxy_from)
            .field("max_subscriptions", &self.max_subscriptions)
            .field("presence_rate", &self.presence_rate)
            .field("presence_page", &self.presence_page)
            .field("presence_heartbeat", &self.presence_heartbeat)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "<set>"))
            // The URL may hold a password.
            .field("redis", &self.redis.as_ref().map(|_| "<set>"))
            .field("redis_timeout", &self.redis_timeout)
            .field("redis_sentinels", &self.redis_sentinels)
            .field("redis_master_name", &self.redis_master_name)
            .finish_non_exhaustive()
    }
}

/// Where the certificate chain and its key are read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, PEM, leaf first.
    pub cert: PathBuf,
    /// The private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates (PEM) that client certificates must chain to: with
    /// it, every TLS client must present a valid certificate, whose subject
    /// is the connection's identity. `None`: no client certificates.
    pub client_ca: Option<PathBuf>,
    /// The session-ticket key: 32 bytes as 64 hex digits (`openssl rand
    /// -hex 32`). Instances (and restarts) sharing it resume each other's
    /// sessions. `None`: a random key per process, rotated every few hours.
    pub ticket_key: Option<PathBuf>,
}

/// A setting [`Config::validate`] refused: which one, and why.
///
/// [`Server::start`](crate::server::Server::start) returns it inside an
/// [`io::Error`] of kind [`io::ErrorKind::InvalidInput`]; get it back with
/// [`io::Error::get_ref`] and `downcast_ref`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The [`Config`] field, e.g. `idle_timeout`.
    pub setting: &'static str,
    /// What is wrong with its value.
    pub reason: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "invalid {}: {}",
            self.setting.replace('_', " "),
            self.reason
        )
    }
}

impl std::error::Error for ConfigError {}

impl From<ConfigError> for io::Error {
    fn from(e: ConfigError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidInput, e)
    }
}

/// Bytes a retained message is counted for beyond its payload: its slot in
/// its topic's queue, the shared payload's header and allocation rounding,
/// and its entry in the age index. Measured (BENCHMARKS.md, "Memory per
/// retained message and per topic"): 144 bytes with 100-byte payloads, 153
/// with 1 KiB ones; counted as 160 so that `--history-memory` bounds what
/// the process really holds.
pub(crate) const RETAINED_OVERHEAD: usize = 160;

/// The smallest worker stack accepted: below this, ordinary library code
/// (formatting, logging) risks overflowing it.
pub const MIN_WORKER_STACK: usize = 32 * 1024;

/// The default [`Config::park_after`]: one second without DATA. A
/// conversation's next message usually comes within it (no park, no
/// hand-over), and a connection that goes quiet gives its thread back at
/// once on the scale of any heartbeat (tens of seconds). Parking it and
/// taking it back costs three `epoll_ctl` calls and one thread hand-over,
/// some tens of microseconds: at most once a second per connection.
pub const DEFAULT_PARK_AFTER: Duration = Duration::from_secs(1);

/// Members a `WHO` answer (or a `GET /presence` page) lists at most, by
/// default ([`Config::presence_page`]).
pub const PRESENCE_PAGE: usize = 100;

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 5005)),
            protocol: Protocol::Frame,
            path: None,
            listen_tls: false,
            tls: None,
            also_listen: Vec::new(),
            idle_timeout: Some(Duration::from_secs(60)),
            tick: Duration::from_millis(100),
            wheel_slots: 512,
            probe_after: None,
            max_connections: 10_000,
            max_frame: 1 << 20,
            min_ping_interval: None,
            ping_strikes: 3,
            keepalive: Some(Keepalive::default()),
            user_timeout: None,
            write_timeout: Some(Duration::from_secs(5)),
            max_outbox: 2 << 20,
            shutdown_grace: Duration::from_secs(5),
            max_connection_age: None,
            max_connection_age_grace: Some(Duration::from_secs(30)),
            worker_stack: 64 * 1024,
            thread_cache: 1024,
            thread_cache_idle: Duration::from_secs(60),
            park_after: Some(DEFAULT_PARK_AFTER),
            metrics_listen: None,
            stats_interval: Some(Duration::from_secs(60)),
            reuse_port: false,
            proxy_protocol: false,
            proxy_from: Vec::new(),
            handshake_timeout: Duration::from_secs(10),
            allowed_origins: Vec::new(),
            max_connections_per_ip: None,
            max_connect_rate_per_ip: None,
            history: 100,
            history_ttl: Duration::from_secs(300),
            history_bytes: 4 << 20,
            history_memory: 256 << 20,
            max_topics: 100_000,
            max_publish_rate: Some(1000),
            max_publish_bytes: Some(64 << 20),
            max_subscriptions: 128,
            presence_rate: 20,
            presence_page: PRESENCE_PAGE,
            presence_heartbeat: Duration::from_secs(1),
            admin_token: None,
            admin_allowed_hosts: Vec::new(),
            redis: None,
            redis_password: None,
            redis_sentinels: Vec::new(),
            redis_master_name: None,
            redis_timeout: Duration::from_secs(1),
        }
    }
}

impl Config {
    /// Checks that the values make sense together, without reading a file
    /// or touching the network: the TLS files and the Redis address are
    /// loaded and parsed once, when the server starts, and
    /// [`Server::start`](crate::server::Server::start) reports them as a
    /// [`ConfigError`] too.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first offending setting and why.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |setting, reason: String| Err(ConfigError { setting, reason });
        if self.tick.is_zero() {
            return invalid("tick", "must be longer than zero".into());
        }
        if !self.wheel_slots.is_power_of_two() || self.wheel_slots > 1 << 30 {
            return invalid(
                "wheel_slots",
                format!(
                    "must be a power of two up to 2^30, got {}",
                    self.wheel_slots
                ),
            );
        }
        if self.max_frame == 0 || self.max_frame > u32::MAX as usize - 1 {
            return invalid(
                "max_frame",
                format!("must be 1..={}, got {}", u32::MAX - 1, self.max_frame),
            );
        }
        if self.history_ttl.is_zero() {
            return invalid(
                "history_ttl",
                "must be longer than zero (use history 0 to turn history off)".into(),
            );
        }
        if !(1..=10_000).contains(&self.presence_page) {
            return invalid("presence_page", "must be 1 to 10000".into());
        }
        if self.presence_heartbeat < Duration::from_millis(10) {
            return invalid("presence_heartbeat", "must be at least 10ms".into());
        }
        if self.redis_timeout.is_zero() {
            return invalid("redis_timeout", "must be longer than zero".into());
        }
        if self.admin_token.as_deref().is_some_and(str::is_empty) {
            return invalid("admin_token", "must not be empty".into());
        }
        if let Some(addr) = self.metrics_listen
            && !addr.ip().is_loopback()
            && self.admin_token.is_none()
        {
            return invalid(
                "admin_token",
                format!(
                    "is required when the admin endpoint listens on {addr}, which is not loopback: the publish and close endpoints must not be open to the network"
                ),
            );
        }
        if self.max_outbox < self.largest_message() {
            return invalid(
                "max_outbox",
                format!(
                    "must hold the largest message, {} bytes (--max-frame {} plus up to {} of framing), got {}",
                    self.largest_message(),
                    self.max_frame,
                    crate::protocol::MAX_FRAMING,
                    self.max_outbox
                ),
            );
        }
        if !self.proxy_from.is_empty() && !self.proxy_protocol {
            return invalid(
                "proxy_from",
                "trusts PROXY headers, which only --proxy-protocol reads: set both".into(),
            );
        }
        if self.max_topics == 0 {
            return invalid("max_topics", "must be at least 1".into());
        }
        if self.max_publish_rate == Some(0) || self.max_publish_bytes == Some(0) {
            let setting = if self.max_publish_rate == Some(0) {
                "max_publish_rate"
            } else {
                "max_publish_bytes"
            };
            return invalid(
                setting,
                "must be at least 1 (leave it unset for no limit)".into(),
            );
        }
        let tls_listener = self.listeners().iter().any(|l| l.tls);
        match &self.tls {
            None if tls_listener => {
                return invalid(
                    "tls_cert",
                    "a tls://, tls+line:// or wss:// listener needs --tls-cert and --tls-key"
                        .into(),
                );
            }
            _ => {}
        }
        if self.handshake_timeout.is_zero() {
            return invalid("handshake_timeout", "must be longer than zero".into());
        }
        if self.max_connect_rate_per_ip == Some(0) {
            return invalid(
                "max_connect_rate_per_ip",
                "must be at least 1 per second (leave it unset for no limit)".into(),
            );
        }
        if self.max_connections_per_ip == Some(0) {
            return invalid(
                "max_connections_per_ip",
                "must be at least 1 (leave it unset for no limit)".into(),
            );
        }
        if self.max_connections == 0 {
            return invalid("max_connections", "must be at least 1".into());
        }
        if self.worker_stack < MIN_WORKER_STACK {
            return invalid(
                "worker_stack",
                format!(
                    "must be at least {MIN_WORKER_STACK} bytes, got {}",
                    self.worker_stack
                ),
            );
        }
        for (setting, d) in [
            ("idle_timeout", self.idle_timeout),
            ("probe_after", self.probe_after),
            ("park_after", self.park_after),
            ("write_timeout", self.write_timeout),
            ("stats_interval", self.stats_interval),
            ("max_connection_age", self.max_connection_age),
            ("max_connection_age_grace", self.max_connection_age_grace),
        ] {
            if d.is_some_and(|d| d.is_zero()) {
                return invalid(setting, "of zero: use None to turn it off".into());
            }
        }
        if let Some(k) = self.keepalive {
            let whole_seconds = |d: Duration| d.subsec_nanos() == 0 && d.as_secs() >= 1;
            for (setting, d) in [
                ("keepalive_idle", k.idle),
                ("keepalive_interval", k.interval),
            ] {
                if !whole_seconds(d) {
                    return invalid(
                        setting,
                        format!(
                            "must be whole seconds, at least 1s (the kernel counts in seconds), got {d:?}"
                        ),
                    );
                }
            }
            if k.count == 0 {
                return invalid("keepalive_count", "must be at least 1".into());
            }
        }
        Ok(())
    }

    /// Settings that are valid but cannot be honoured as written, each as a
    /// sentence for a warning: the server starts, and says so.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.history > 0 && self.history_bytes < self.max_frame + RETAINED_OVERHEAD {
            warnings.push(format!(
                "--history-bytes {} is smaller than one largest message (--max-frame {}): such messages are delivered but not kept for resumes",
                self.history_bytes, self.max_frame
            ));
        }
        if let Some(idle) = self.idle_timeout {
            if idle < self.tick {
                warnings.push(format!(
                    "--idle-timeout {idle:?} is shorter than --tick {:?}: idle connections close up to a tick late, so after {:?} at worst",
                    self.tick,
                    idle + self.tick
                ));
            }
            if let Some(probe) = self.probe_after
                && probe >= idle
            {
                warnings.push(format!(
                    "--probe-after {probe:?} is not shorter than --idle-timeout {idle:?}: silent connections close before they are probed"
                ));
            }
        }
        if let Some(probe) = self.probe_after
            && probe < self.tick
        {
            warnings.push(format!(
                "--probe-after {probe:?} is shorter than --tick {:?}: probes go out once per tick at most",
                self.tick
            ));
        }
        warnings
    }

    /// The `TCP_USER_TIMEOUT` set on connections, after the defaults of
    /// [`user_timeout`](Config::user_timeout).
    pub fn effective_user_timeout(&self) -> Option<Duration> {
        match self.user_timeout {
            Some(d) if d.is_zero() => None,
            Some(d) => Some(d),
            None => self.keepalive.map(|k| k.detection_time()),
        }
    }

    pub(crate) fn socket_options(&self) -> SocketOptions {
        SocketOptions {
            keepalive: self.keepalive,
            user_timeout: self.effective_user_timeout(),
            write_timeout: self.write_timeout,
        }
    }
}

/// One more address to listen on ([`Config::also_listen`]) and the
/// protocol its connections speak.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listen {
    /// Address; port 0 picks a free port.
    pub addr: SocketAddr,
    /// Wire protocol of its connections.
    pub protocol: Protocol,
    /// WebSocket mode: the path upgrades must ask for; `None`: any.
    pub path: Option<String>,
    /// TLS first (with [`Config::tls`]'s certificate).
    pub tls: bool,
}

impl Listen {
    /// A listener on `addr` speaking `protocol`, any path, no TLS.
    pub fn new(addr: SocketAddr, protocol: Protocol) -> Listen {
        Listen {
            addr,
            protocol,
            path: None,
            tls: false,
        }
    }
}

impl Config {
    /// Every address to listen on with its protocol, `listen` first.
    pub fn listeners(&self) -> Vec<Listen> {
        std::iter::once(Listen {
            addr: self.listen,
            protocol: self.protocol,
            path: self.path.clone(),
            tls: self.listen_tls,
        })
        .chain(self.also_listen.iter().cloned())
        .collect()
    }
}

impl Config {
    /// The largest message the server sends: a DATA of `max_frame` bytes
    /// (a publish whose `MSG` would be larger is refused) with the most
    /// framing any protocol adds. `max_outbox` must hold it.
    pub fn largest_message(&self) -> usize {
        self.max_frame.saturating_add(crate::protocol::MAX_FRAMING)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_timeout_defaults_to_the_keepalive_detection_time() {
        let keepalive = Keepalive {
            idle: Duration::from_secs(1),
            interval: Duration::from_secs(1),
            count: 2,
        };
        let with = |keepalive, user_timeout| {
            Config {
                keepalive,
                user_timeout,
                ..Config::default()
            }
            .effective_user_timeout()
        };
        assert_eq!(with(Some(keepalive), None), Some(Duration::from_secs(3)));
        assert_eq!(with(None, None), None);
        assert_eq!(with(Some(keepalive), Some(Duration::ZERO)), None);
        assert_eq!(
            with(None, Some(Duration::from_secs(7))),
            Some(Duration::from_secs(7))
        );
    }

    #[test]
    fn default_is_valid() {
        Config::default().validate().unwrap();
        assert_eq!(Config::default().warnings(), Vec::<String>::new());
    }

    #[test]
    fn settings_that_cannot_be_honoured_are_warned_about() {
        let config = Config {
            idle_timeout: Some(Duration::from_millis(50)),
            tick: Duration::from_millis(100),
            probe_after: Some(Duration::from_millis(60)),
            ..Config::default()
        };
        let warnings = config.warnings();
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("--idle-timeout") && w.contains("--tick")),
            "{warnings:?}"
        );
        assert!(
            warnings
                .iter()
                .any(|w| w.starts_with("--probe-after 60ms is not shorter")),
            "{warnings:?}"
        );
        assert!(
            warnings
                .iter()
                .any(|w| w.starts_with("--probe-after 60ms is shorter than --tick")),
            "{warnings:?}"
        );
    }

    #[test]
    fn bad_values_are_named() {
        let cases: Vec<(Config, &str)> = vec![
            (
                Config {
                    max_outbox: 0,
                    ..Config::default()
                },
                "max_outbox",
            ),
            (
                Config {
                    tick: Duration::ZERO,
                    ..Config::default()
                },
                "tick",
            ),
            (
                Config {
                    wheel_slots: 500,
                    ..Config::default()
                },
                "wheel_slots",
            ),
            (
                Config {
                    max_frame: 0,
                    ..Config::default()
                },
                "max_frame",
            ),
            (
                Config {
                    worker_stack: 4096,
                    ..Config::default()
                },
                "worker_stack",
            ),
            (
                Config {
                    idle_timeout: Some(Duration::ZERO),
                    ..Config::default()
                },
                "idle_timeout",
            ),
            (
                Config {
                    keepalive: Some(Keepalive {
                        idle: Duration::from_millis(500),
                        ..Keepalive::default()
                    }),
                    ..Config::default()
                },
                "keepalive_idle",
            ),
        ];
        for (config, setting) in cases {
            let err = config.validate().unwrap_err();
            assert_eq!(err.setting, setting);
            assert!(
                err.to_string()
                    .starts_with(&format!("invalid {}:", setting.replace('_', " "))),
                "{err}"
            );
            let io = io::Error::from(err.clone());
            assert_eq!(io.kind(), io::ErrorKind::InvalidInput);
            let inner = io.get_ref().and_then(|e| e.downcast_ref::<ConfigError>());
            assert_eq!(inner, Some(&err));
        }
    }
}
