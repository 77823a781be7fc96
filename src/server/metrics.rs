//! Prometheus metrics.
//!
//! # Cost on the data path
//!
//! Per message a worker touches only its own connection's counters (see
//! [`crate::traffic::Traffic`]): plain integers while a read's messages are
//! handled, then one relaxed store per changed counter. Nothing shared is
//! written per message, and no lock is taken. Events that happen once per
//! connection (accept, reject, close) or on the timer thread use
//! `prometheus-client` metrics directly.
//!
//! A scrape adds up the live connections' counters (a registry snapshot,
//! whose lock the data path never holds) and the totals folded in from
//! closed connections, and reports them through a [`Collector`].

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use prometheus_client::registry::Metric;

use crate::server::conn::close::CloseReason;
use crate::traffic::{Kind, Tally};

/// One label, `name="value"`.
pub(crate) type Label = [(&'static str, &'static str); 1];

/// Every drain reason, so that each shows up at zero.
pub(crate) const DRAIN_REASONS: [&str; 2] = ["shutdown", "max_age"];

/// Why an accepted connection was turned away.
pub(crate) const REJECT_REASONS: [&str; 4] =
    ["server_full", "no_thread", "per_ip_limit", "per_ip_rate"];

/// Every stage a handshake can time out in.
pub(crate) const HANDSHAKE_STAGES: [&str; 4] = ["proxy", "tls", "websocket", "auth"];

/// Everything the server counts.
pub(crate) struct Metrics {
    /// The metrics, for encoding.
    registry: Registry,
    /// Serialises scrapes (they share `live`).
    scrape: Mutex<()>,
    /// Values computed at scrape time.
    live: Arc<Live>,
    /// Connections accepted and admitted.
    pub(crate) accepted: Counter,
    /// Connections turned away, by reason.
    pub(crate) rejected: Family<Label, Counter>,
    /// Connections closed, by reason.
    pub(crate) closed: Family<Label, Counter>,
    /// `accept()` failures, by errno.
    pub(crate) accept_errors: Family<Label, Counter>,
    /// Server PINGs sent (or queued) to silent connections.
    pub(crate) probes_sent: Counter,
    /// Connections closed by the idle timeout.
    pub(crate) expirations: Counter,
    /// Connections asked to drain (CLOSE 1001), by reason.
    pub(crate) drains: Family<Label, Counter>,
    /// Drains cut short by their grace period.
    pub(crate) drains_forced: Counter,
    /// Bytes read after a CLOSE and discarded unanswered.
    pub(crate) discarded_bytes: Counter,
    /// Register and deregister events the timer thread processed.
    pub(crate) timer_events: Family<Label, Counter>,
    /// Timers that fired on an active connection and were re-armed.
    pub(crate) activity_rearms: Counter,
    /// Timers in the wheel.
    pub(crate) timers_armed: Gauge,
    /// When the TLS certificate expires (seconds since the epoch);
    /// registered only with TLS listeners.
    pub(crate) tls_cert_expiry: Gauge,
    /// What the worker thread cache did.
    pub(crate) threads: ThreadCounters,
    /// What the parking thread did.
    pub(crate) parking: ParkCounters,
    /// How late each tick ran after its instant.
    pub(crate) tick_lag: Histogram,
    /// HTTP connections to the operations endpoint refused with 503
    /// because every worker was busy and the queue full.
    pub(crate) http_refused: Counter,
    /// HTTP connections closed because a request head or a response missed
    /// its deadline.
    pub(crate) http_timeouts: Counter,
    /// Connects let through untracked because the connect-rate table was
    /// full.
    pub(crate) rate_untracked: Counter,
    /// Authentications, by result (`ok`, `refused`, `refreshed`).
    pub(crate) auth: Family<Label, Counter>,
    /// Connections dropped because their handshake missed its deadline, by
    /// stage.
    pub(crate) handshake_timeouts: Family<Label, Counter>,
    /// WebSocket upgrade requests, by result (`ok` or why refused).
    pub(crate) ws_upgrades: Family<Label, Counter>,
    /// TLS handshakes, by result (`full`, `resumed`, or why they failed).
    pub(crate) tls_handshakes: Family<Label, Counter>,
    /// Messages published to topics.
    pub(crate) publishes: Counter,
    /// Published messages written or queued to subscribers.
    pub(crate) deliveries: Counter,
    /// Published messages that did not reach a subscriber (closing, slow,
    /// or its protocol cannot carry them).
    pub(crate) undelivered: Counter,
    /// What a client asked for past a bound and was refused (the
    /// connection stays), by reason.
    pub(crate) refused: Family<Label, Counter>,
    /// Connections closed, all reasons (for the summary log line).
    pub(crate) closed_total: AtomicU64,
}

/// Counts of what the cache did, for the metrics.
#[derive(Clone, Default)]
pub(crate) struct ThreadCounters {
    /// Threads started.
    pub(crate) spawned: Counter,
    /// Connections handed to a parked thread.
    pub(crate) reused: Counter,
    /// Threads parked now.
    pub(crate) parked: Gauge,
}

/// Counts of what the parking thread did (`--park-after`), for the
/// metrics.
#[derive(Clone, Default)]
pub(crate) struct ParkCounters {
    /// Connections parked now, holding no thread.
    pub(crate) parked: Gauge,
    /// Connections parked.
    pub(crate) parks: Counter,
    /// Parked connections handed back to a thread.
    pub(crate) unparks: Counter,
    /// PINGs the parking thread answered itself.
    pub(crate) pongs: Counter,
}

/// What a scrape measures outside the metrics: connections, pub/sub and
/// per-address tables, and the traffic of every connection.
#[derive(Debug, Default)]
pub(crate) struct LiveValues {
    /// Connections open.
    pub(crate) open: usize,
    /// `[topics, retained payload bytes, subscriptions, largest outbox,
    /// addresses in the per-address table, addresses in the rate table]`.
    pub(crate) pubsub: [usize; 6],
    /// Received and sent, all connections (closed ones included).
    pub(crate) traffic: (Tally, Tally),
}

/// Values computed at scrape time, read by [`LiveCollector`].
#[derive(Debug, Default)]
struct Live {
    /// Connections open.
    open: AtomicI64,
    /// `[topics, retained payload bytes, subscriptions, largest outbox,
    /// addresses in the per-address table, addresses in the rate table]`.
    pubsub: [AtomicI64; 6],
    /// `[frames in, bytes in, frames out, bytes out]` by [`Kind`].
    traffic: [[AtomicU64; 4]; 4],
}

#[derive(Debug)]
struct LiveCollector(Arc<Live>);

impl Collector for LiveCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let live = &self.0;
        let open = encoder.encode_descriptor(
            "wheel_connections_open",
            "Connections open now.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(live.open.load(Ordering::Relaxed)).encode(open)?;
        for ((name, help), value) in [
            (
                "wheel_pubsub_topics",
                "Topics with subscribers or retained messages.",
            ),
            (
                "wheel_pubsub_history_bytes",
                "Bytes retained for resuming subscribers, all topics (payloads plus a fixed overhead per message), bounded by --history-memory.",
            ),
            (
                "wheel_pubsub_subscriptions",
                "Subscriptions open, all connections.",
            ),
            (
                "wheel_outbox_max_bytes",
                "Bytes waiting in the fullest connection outbox.",
            ),
            (
                "wheel_admission_addresses",
                "Client addresses tracked by --max-connections-per-ip (those with open connections).",
            ),
            (
                "wheel_admission_rate_addresses",
                "Client addresses tracked by --max-connect-rate-per-ip (those whose bucket is not full).",
            ),
        ]
        .into_iter()
        .zip(&live.pubsub)
        {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(value.load(Ordering::Relaxed)).encode(metric)?;
        }
        let families = [
            ("wheel_frames_received", "Messages received, by type."),
            (
                "wheel_bytes_received",
                "Bytes received in complete messages (framing included), by type.",
            ),
            ("wheel_frames_sent", "Messages sent, by type."),
            (
                "wheel_bytes_sent",
                "Bytes sent (framing included), by type.",
            ),
        ];
        for ((name, help), row) in families.into_iter().zip(&live.traffic) {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for kind in Kind::ALL {
                let labels = [("type", kind.as_str())];
                let value = row[kind as usize].load(Ordering::Relaxed);
                ConstCounter::new(value).encode(metric.encode_family(&labels)?)?;
            }
        }
        let value =
            |row: usize, kind: Kind| live.traffic[row][kind as usize].load(Ordering::Relaxed);
        for (name, help, v) in [
            (
                "wheel_pings_received",
                "PINGs received from peers.",
                value(0, Kind::Ping),
            ),
            (
                "wheel_pongs_sent",
                "PONGs sent in answer to PINGs.",
                value(2, Kind::Pong),
            ),
        ] {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(v).encode(metric)?;
        }
        Ok(())
    }
}

impl Metrics {
    /// Registers the TLS certificate's expiry (servers with TLS listeners).
    pub(crate) fn register_tls(&mut self, expires: i64) {
        self.tls_cert_expiry.set(expires);
        self.registry.register(
            "wheel_tls_cert_expiry_timestamp_seconds",
            "When the TLS certificate served to new handshakes expires, in seconds since the Unix epoch (updated by a reload)",
            self.tls_cert_expiry.clone(),
        );
    }

    /// Registers a metric of a part that counts for itself (Redis, the
    /// history bound), in this registry.
    pub(crate) fn register(&mut self, name: &str, help: &str, metric: impl Metric) {
        self.registry.register(name, help, metric);
    }

    /// Every counter at zero, each label of the families known up front
    /// at zero too (so that a dashboard sees them before the first event),
    /// with the WebSocket upgrade and TLS handshake results admission has.
    pub(crate) fn new(ws_results: &[&'static str], tls_results: &[&'static str]) -> Metrics {
        let live = Arc::new(Live::default());
        let metrics = Metrics {
            registry: Registry::default(),
            live: Arc::clone(&live),
            scrape: Mutex::new(()),
            accepted: Counter::default(),
            rejected: Family::default(),
            closed: Family::default(),
            accept_errors: Family::default(),
            probes_sent: Counter::default(),
            expirations: Counter::default(),
            drains: Family::default(),
            drains_forced: Counter::default(),
            discarded_bytes: Counter::default(),
            timer_events: Family::default(),
            activity_rearms: Counter::default(),
            timers_armed: Gauge::default(),
            tls_cert_expiry: Gauge::default(),
            threads: ThreadCounters::default(),
            parking: ParkCounters::default(),
            // 0.1 ms to about 3.3 s: how late the timer thread ran a tick.
            tick_lag: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            http_refused: Counter::default(),
            handshake_timeouts: Family::default(),
            ws_upgrades: Family::default(),
            tls_handshakes: Family::default(),
            auth: Family::default(),
            rate_untracked: Counter::default(),
            publishes: Counter::default(),
            deliveries: Counter::default(),
            undelivered: Counter::default(),
            refused: Family::default(),
            http_timeouts: Counter::default(),
            closed_total: AtomicU64::new(0),
        };
        for reason in CloseReason::LABELS {
            drop(metrics.closed.get_or_create(&[("reason", reason)]));
        }
        for reason in REJECT_REASONS {
            drop(metrics.rejected.get_or_create(&[("reason", reason)]));
        }
        for reason in DRAIN_REASONS {
            drop(metrics.drains.get_or_create(&[("reason", reason)]));
        }
        for result in ["ok", "refused", "refreshed"] {
            drop(metrics.auth.get_or_create(&[("result", result)]));
        }
        for stage in HANDSHAKE_STAGES {
            drop(
                metrics
                    .handshake_timeouts
                    .get_or_create(&[("stage", stage)]),
            );
        }
        for &result in ws_results {
            drop(metrics.ws_upgrades.get_or_create(&[("result", result)]));
        }
        for &result in tls_results {
            drop(metrics.tls_handshakes.get_or_create(&[("result", result)]));
        }
        for kind in ["register", "deregister"] {
            drop(metrics.timer_events.get_or_create(&[("kind", kind)]));
        }
        let mut registry = Registry::default();
        // `register` ends each help text with a period of its own; the
        // collector's descriptors are written whole.
        registry.register_collector(Box::new(LiveCollector(live)));
        let m = &metrics;
        registry.register(
            "wheel_connections_accepted",
            "Connections accepted and admitted",
            m.accepted.clone(),
        );
        registry.register(
            "wheel_connections_rejected",
            "Connections turned away with CLOSE 1013 before they were admitted, by reason",
            m.rejected.clone(),
        );
        registry.register(
            "wheel_connections_closed",
            "Connections closed, by reason",
            m.closed.clone(),
        );
        registry.register(
            "wheel_accept_errors",
            "accept() failures, by errno",
            m.accept_errors.clone(),
        );
        registry.register(
            "wheel_probes_sent",
            "Server PINGs sent to silent connections (--probe-after)",
            m.probes_sent.clone(),
        );
        registry.register(
            "wheel_timer_expirations",
            "Connections closed by the idle timeout",
            m.expirations.clone(),
        );
        registry.register(
            "wheel_drains",
            "Connections sent CLOSE 1001 and left to drain, by reason",
            m.drains.clone(),
        );
        registry.register(
            "wheel_drains_forced",
            "Drains cut short when their grace period ran out",
            m.drains_forced.clone(),
        );
        registry.register(
            "wheel_discarded_bytes",
            "Bytes read after the server's CLOSE and discarded unanswered (a peer that kept sending after a forced close)",
            m.discarded_bytes.clone(),
        );
        registry.register(
            "wheel_timer_events",
            "Register and deregister events processed by the timer thread",
            m.timer_events.clone(),
        );
        registry.register(
            "wheel_timer_activity_rearms",
            "Timers that fired on an active connection and were re-armed for the time left",
            m.activity_rearms.clone(),
        );
        registry.register(
            "wheel_timers_armed",
            "Timers in the wheel",
            m.timers_armed.clone(),
        );
        registry.register(
            "wheel_worker_threads_spawned",
            "Connection threads started (a connection handed to a parked thread starts none)",
            m.threads.spawned.clone(),
        );
        registry.register(
            "wheel_worker_threads_reused",
            "Connections handed to a parked thread of the thread cache (--thread-cache)",
            m.threads.reused.clone(),
        );
        registry.register(
            "wheel_worker_threads_parked",
            "Finished connection threads parked for the next connections",
            m.threads.parked.clone(),
        );
        registry.register(
            "wheel_connections_parked",
            "Connections parked now: idle, in the parking thread's epoll set, holding no thread (--park-after)",
            m.parking.parked.clone(),
        );
        registry.register(
            "wheel_connection_parks",
            "Idle connections that gave their thread back and were parked",
            m.parking.parks.clone(),
        );
        registry.register(
            "wheel_connection_unparks",
            "Parked connections handed back to a thread: DATA, a command, a CLOSE, a partial message or the end came",
            m.parking.unparks.clone(),
        );
        registry.register(
            "wheel_parked_pongs",
            "PINGs of parked connections answered by the parking thread, without waking a thread",
            m.parking.pongs.clone(),
        );
        registry.register(
            "wheel_http_refused",
            "HTTP connections to this endpoint refused with 503: every worker busy and the queue full",
            m.http_refused.clone(),
        );
        registry.register(
            "wheel_http_timeouts",
            "HTTP connections closed because a request head or a response missed its deadline",
            m.http_timeouts.clone(),
        );
        registry.register(
            "wheel_handshake_timeouts",
            "Connections dropped because what comes before admission (the PROXY header, the WebSocket upgrade, AUTH) missed --handshake-timeout, by stage",
            m.handshake_timeouts.clone(),
        );
        registry.register(
            "wheel_tls_handshakes",
            "TLS handshakes, by result: full, resumed (a session ticket or the session cache), or why they failed (timeout, not_tls, peer_refused, incompatible, error)",
            m.tls_handshakes.clone(),
        );
        registry.register(
            "wheel_ws_upgrades",
            "WebSocket upgrade requests, by result: ok, or the refusal (bad_request 400, upgrade_required 426, not_found 404, forbidden 403 for an Origin not allowed, too_large 431)",
            m.ws_upgrades.clone(),
        );
        registry.register(
            "wheel_auth",
            "AUTH messages checked, by result: ok, refused, refreshed",
            m.auth.clone(),
        );
        registry.register(
            "wheel_admission_rate_untracked",
            "Connects let through without a rate check because the per-address rate table was full",
            m.rate_untracked.clone(),
        );
        registry.register(
            "wheel_pubsub_publishes",
            "Messages published to topics",
            m.publishes.clone(),
        );
        registry.register(
            "wheel_pubsub_deliveries",
            "Published messages written or queued to subscribers",
            m.deliveries.clone(),
        );
        registry.register(
            "wheel_pubsub_dropped",
            "Published messages that did not reach a subscriber: closing, closed as a slow consumer, or its protocol cannot carry them",
            m.undelivered.clone(),
        );
        registry.register(
            "wheel_refused",
            "Requests refused at a bound, the connection kept, by reason: too_large (a message over --max-frame, or an HTTP body over it: 413), too_many_topics (--max-topics), too_many_subscriptions (--max-subscriptions), publish_rate (--max-publish-rate, --max-publish-bytes)",
            m.refused.clone(),
        );
        registry.register(
            "wheel_timer_tick_lag_seconds",
            "How late each tick ran after its instant",
            m.tick_lag.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }

    /// Counts a publish and what became of it.
    pub(crate) fn count_publish(&self, delivered: usize, dropped: usize) {
        self.publishes.inc();
        self.deliveries.inc_by(delivered as u64);
        self.undelivered.inc_by(dropped as u64);
    }

    /// Counts a request refused at a bound (see `wheel_refused_total`).
    pub(crate) fn count_refused(&self, reason: &'static str) {
        self.refused.get_or_create(&[("reason", reason)]).inc();
    }

    /// Counts a closed connection under its reason's label.
    pub(crate) fn count_close(&self, reason: &'static str) {
        self.closed.get_or_create(&[("reason", reason)]).inc();
        self.closed_total.fetch_add(1, Ordering::Relaxed);
    }

    /// The exposition text (OpenMetrics) with `live`'s values, measured
    /// by the caller just before.
    pub(crate) fn encode(&self, live: &LiveValues) -> String {
        let _one_at_a_time = self.scrape.lock();
        self.live.open.store(live.open as i64, Ordering::Relaxed);
        for (gauge, value) in self.live.pubsub.iter().zip(live.pubsub) {
            gauge.store(value as i64, Ordering::Relaxed);
        }
        let (received, sent) = &live.traffic;
        for (row, values) in [received.frames, received.bytes, sent.frames, sent.bytes]
            .iter()
            .enumerate()
        {
            for (i, v) in values.iter().enumerate() {
                self.live.traffic[row][i].store(*v, Ordering::Relaxed);
            }
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
