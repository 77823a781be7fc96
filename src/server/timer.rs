//! The timer thread: one thread owning the [`Wheel`] that decides when idle
//! connections are probed and closed.
//!
//! # Activity without messages
//!
//! A worker does not tell the timer thread about every message. It stamps
//! its connection's `last_activity` atomic with the [`Clock`] tick (a load
//! and a conditional store, see [`Stamp::touch`]), and that is all. Each
//! connection has one timer in the wheel, set for the earliest moment the
//! connection *could* be idle for long enough. When the timer fires, the
//! timer thread reads the stamp: if there was activity since, it re-arms the
//! timer for the time that remains; only if not does it act. A busy
//! connection thus costs the timer thread one wheel operation per idle
//! timeout, however many messages it carries, and the channel carries only
//! register and deregister events.
//!
//! # Precision
//!
//! A stamp `p` means the message arrived while `p` was the published tick,
//! that is before tick `p + 1` was published. The timer thread computes the
//! idle deadline from that upper bound, `p + 1 + idle_ticks`, so a
//! connection is not closed before it has been idle for the timeout, and is
//! closed at most one tick (plus the thread's wake-up latency) after. If the
//! timer thread falls behind and publishes a jump from `p` straight to `q`,
//! stamps of `p` may be as late as `q`; such jumps are remembered for as long
//! as they matter, so a stall of the timer thread delays expiries rather
//! than making them early.
//!
//! # Maximum age
//!
//! With `max_connection_age` set, the same timer also carries each
//! connection's age deadline, drawn within +/-10% of the setting when the
//! connection registers. At that deadline the timer thread starts a drain
//! ([`Conn::drain`]: CLOSE 1001, the worker keeps answering) and, with a
//! grace period, re-arms for its end, when the drain is forced. A draining
//! connection that stays silent past the idle timeout is forced as well, so
//! a client that vanished mid-drain is not kept forever.
//!
//! [`Stamp::touch`]: crate::activity::Stamp::touch

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, RecvTimeoutError};
use prometheus_client::metrics::counter::Counter;
use tracing::{debug, info, trace};

use super::Shared;
use super::close::CloseReason;
use super::conn::{CloseRequest, Conn, Drain, Probe};
use super::registry::ConnId;
use crate::activity::Clock;
use crate::time::TimeSource;
use crate::wheel::{TimerKey, Wheel};

/// What workers and the acceptor tell the timer thread.
#[derive(Debug)]
pub(crate) enum Event {
    /// A connection opened, its activity stamp set to `activity`.
    Register { id: ConnId, activity: u64 },
    /// A connection's worker finished.
    Deregister(ConnId),
    /// The server is shutting down.
    Stop,
}

/// The timer's view of one connection.
struct Tracked {
    id: ConnId,
    /// The armed timer; `None` while it is firing.
    timer: Option<TimerKey>,
    /// The last server PING: (the activity stamp it was sent for, the tick
    /// it was sent at).
    probe: Option<(u64, u64)>,
    /// The activity stamp when the timer was last armed: a different stamp
    /// at the next fire means the connection was active meanwhile.
    armed_stamp: u64,
    /// The maximum-age schedule, if there is one.
    age: Option<AgeStage>,
}

/// Where a connection is in its maximum-age schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AgeStage {
    /// The drain begins at this tick.
    Drain(u64),
    /// The drain is forced at this tick.
    Force(u64),
}

/// Remembers when the published clock skipped ticks, so that a stamp can be
/// mapped to the tick at which it stopped being current.
#[derive(Default)]
struct Jumps {
    /// `(from, to)`: the clock went from `from` straight to `to > from + 1`.
    /// Sorted by `from`.
    jumps: VecDeque<(u64, u64)>,
}

impl Jumps {
    fn record(&mut self, from: u64, to: u64) {
        if to > from + 1 {
            self.jumps.push_back((from, to));
        }
    }

    /// The tick at which stamp `p` stopped being the published tick.
    fn superseded(&self, p: u64) -> u64 {
        match self.jumps.binary_search_by_key(&p, |&(from, _)| from) {
            Ok(i) => self.jumps[i].1,
            Err(_) => p + 1,
        }
    }

    /// Forgets jumps that no deadline computed now could depend on: a stamp
    /// from before `to` gives a deadline of at most `to + horizon`, already
    /// past once `now` is beyond it.
    fn prune(&mut self, now: u64, horizon: u64) {
        while self
            .jumps
            .front()
            .is_some_and(|&(_, to)| to.saturating_add(horizon) < now)
        {
            self.jumps.pop_front();
        }
    }
}

/// Spawns the timer thread.
pub(crate) fn spawn(
    shared: Arc<Shared>,
    events: Receiver<Event>,
    source: TimeSource,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let config = &shared.config;
    let idle_ticks = config.idle_timeout.map(|d| source.ticks_ceil(d).max(1));
    let probe_ticks = config.probe_after.map(|d| source.ticks_ceil(d).max(1));
    let horizon = idle_ticks.unwrap_or(0).max(probe_ticks.unwrap_or(0)) + 1;
    let age_close = shared
        .close_frame(&CloseReason::MaxAge)
        .expect("max age sends a CLOSE");
    let timer = Timer {
        age: config.max_connection_age.map(|age| MaxAge {
            age,
            grace_ticks: config
                .max_connection_age_grace
                .map(|grace| source.ticks_ceil(grace).max(1)),
            close: age_close,
            rng: fastrand::Rng::new(),
        }),
        wheel: Wheel::with_capacity(config.wheel_slots, 1024),
        tracked: Vec::new(),
        jumps: Jumps::default(),
        published: 0,
        source,
        idle_ticks,
        probe_ticks,
        horizon,
        next_summary: config.stats_interval.map(|every| Instant::now() + every),
        counters: EventCounters::new(&shared),
        shared,
    };
    std::thread::Builder::new()
        .name("wheel-timer".into())
        .spawn(move || {
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| timer.run(events)));
            if ran.is_err() {
                // Without this thread no idle connection is ever reaped and
                // none is probed: a server that silently stops doing its one
                // job is worse than one that stops.
                tracing::error!("the timer thread panicked; aborting");
                std::process::abort();
            }
        })
}

struct Timer {
    wheel: Wheel<ConnId>,
    /// Indexed by [`ConnId::index`].
    tracked: Vec<Option<Tracked>>,
    jumps: Jumps,
    /// The last tick published on the [`Clock`] and processed.
    published: u64,
    source: TimeSource,
    idle_ticks: Option<u64>,
    probe_ticks: Option<u64>,
    /// How far back a stamp can matter, in ticks.
    horizon: u64,
    /// When the next summary line is due.
    next_summary: Option<Instant>,
    counters: EventCounters,
    age: Option<MaxAge>,
    shared: Arc<Shared>,
}

/// The maximum-age settings, and the jitter's random generator.
struct MaxAge {
    age: std::time::Duration,
    grace_ticks: Option<u64>,
    /// The encoded CLOSE 1001 for a connection past its age.
    close: Vec<u8>,
    rng: fastrand::Rng,
}

impl MaxAge {
    /// This connection's age in ticks: the setting, scaled by a factor drawn
    /// uniformly from [0.9, 1.1).
    fn draw_ticks(&mut self, source: &TimeSource) -> u64 {
        let factor = 0.9 + 0.2 * self.rng.f64();
        source.ticks_ceil(self.age.mul_f64(factor)).max(1)
    }
}

/// The register and deregister counters, resolved once.
struct EventCounters {
    registered: Counter,
    deregistered: Counter,
}

impl EventCounters {
    fn new(shared: &Shared) -> EventCounters {
        let get = |kind| {
            shared
                .metrics
                .timer_events
                .get_or_create(&[("kind", kind)])
                .clone()
        };
        EventCounters {
            registered: get("register"),
            deregistered: get("deregister"),
        }
    }
}

impl Timer {
    fn clock(&self) -> &Clock {
        &self.shared.clock
    }

    fn run(mut self, events: Receiver<Event>) {
        loop {
            let next_tick = self.source.instant_of(self.published + 1);
            // Ticks come first: a flood of events must not starve expiry.
            if Instant::now() >= next_tick {
                self.tick(Instant::now());
                continue;
            }
            match events.recv_deadline(next_tick) {
                Ok(Event::Register { id, activity }) => self.register(id, activity),
                Ok(Event::Deregister(id)) => self.deregister(id),
                Ok(Event::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }

    fn tick(&mut self, at: Instant) {
        let now = self.source.now_tick(at);
        if now <= self.published {
            return;
        }
        let due = self.source.instant_of(self.published + 1);
        let metrics = &self.shared.metrics;
        metrics
            .tick_lag
            .observe(at.saturating_duration_since(due).as_secs_f64());
        if now > self.published + 1 {
            trace!(
                from = self.published,
                to = now,
                "timer thread skipped ticks"
            );
        }
        self.jumps.record(self.published, now);
        self.jumps.prune(now, self.horizon);
        self.published = now;
        self.clock().publish(now);
        while let Some(id) = self.wheel.poll(now) {
            self.fire(id, now);
        }
        self.shared
            .metrics
            .timers_armed
            .set(self.wheel.len() as i64);
        if self.next_summary.is_some_and(|next| at >= next) {
            self.summary();
            self.next_summary = self.shared.config.stats_interval.map(|every| at + every);
        }
    }

    /// The periodic info line with the headline numbers.
    fn summary(&self) {
        let shared = &self.shared;
        let metrics = &shared.metrics;
        let (received, sent) = metrics.traffic(&shared.registry);
        info!(
            open = shared.registry.len(),
            accepted = metrics.accepted.get(),
            closed = metrics
                .closed_total
                .load(std::sync::atomic::Ordering::Relaxed),
            idle_timeouts = metrics.expirations.get(),
            frames_in = received.frames.iter().sum::<u64>(),
            frames_out = sent.frames.iter().sum::<u64>(),
            timers = self.wheel.len(),
            "summary"
        );
    }

    fn register(&mut self, id: ConnId, activity: u64) {
        if self.idle_ticks.is_none() && self.probe_ticks.is_none() && self.age.is_none() {
            return;
        }
        let index = id.index();
        if self.tracked.len() <= index {
            self.tracked.resize_with(index + 1, || None);
        }
        // The slot's previous connection may still be tracked: its worker
        // frees the registry slot before its Deregister reaches us, so the
        // slot can be reused, and registered, in between. That connection is
        // gone; cancel its timer so it cannot fire for the newcomer.
        if let Some(stale) = self.tracked[index].take()
            && let Some(timer) = stale.timer
        {
            self.wheel.remove(timer);
        }
        let source = &self.source;
        let age = self
            .age
            .as_mut()
            .map(|age| AgeStage::Drain(activity + age.draw_ticks(source)));
        let mut tracked = Tracked {
            id,
            timer: None,
            probe: None,
            armed_stamp: activity,
            age,
        };
        self.counters.registered.inc();
        let deadline = self.next_deadline(&tracked, activity, false);
        tracked.timer = Some(self.wheel.insert(id, deadline));
        self.tracked[index] = Some(tracked);
    }

    fn deregister(&mut self, id: ConnId) {
        let Some(slot) = self.tracked.get_mut(id.index()) else {
            return;
        };
        self.counters.deregistered.inc();
        if slot.as_ref().is_some_and(|t| t.id == id) {
            let tracked = slot.take().expect("checked above");
            if let Some(timer) = tracked.timer {
                self.wheel.remove(timer);
            }
        }
    }

    /// A connection's timer is due: close it, probe it, or re-arm it.
    fn fire(&mut self, id: ConnId, now: u64) {
        // Registration and deregistration remove a connection's timer, so
        // the entry should always be this connection's; if it ever is not,
        // leaving it alone is the safe answer (this thread must not panic).
        let slot = self.tracked.get_mut(id.index());
        let Some(mut tracked) = slot.and_then(|s| s.take_if(|t| t.id == id)) else {
            debug!(conn = %id, "timer fired for a connection no longer tracked");
            return;
        };
        tracked.timer = None;
        // Gone (its Deregister is on the way) or already closing: forget it.
        let Some(conn) = self.shared.registry.get(id) else {
            return;
        };
        let mut draining = match conn.close_requested() {
            Some(request) if request.drains() => true,
            _ if conn.is_closing() => return,
            _ => false,
        };
        let stamp = conn.activity.get();
        let base = self.jumps.superseded(stamp);
        let idle_over = self.idle_ticks.is_some_and(|idle| base + idle <= now);
        if draining {
            let grace_over = matches!(tracked.age, Some(AgeStage::Force(at)) if at <= now);
            if idle_over || grace_over {
                debug!(conn = %id, peer = %conn.peer(), idle_over, "drain cut short");
                self.shared.metrics.drains_forced.inc();
                conn.force();
                return;
            }
        } else if idle_over {
            debug!(conn = %id, peer = %conn.peer(), "idle timeout");
            self.shared.metrics.expirations.inc();
            conn.request_close(CloseRequest::IdleTimeout);
            return;
        } else if matches!(tracked.age, Some(AgeStage::Drain(at)) if at <= now) {
            let Some(age) = self.age.as_ref() else {
                return;
            };
            let drain = conn.drain(CloseRequest::MaxAge, &age.close);
            debug!(conn = %id, peer = %conn.peer(), ?drain, "maximum age: draining");
            if drain == Drain::AlreadyClosing {
                return;
            }
            self.shared
                .metrics
                .drains
                .get_or_create(&[("reason", "max_age")])
                .inc();
            tracked.age = age.grace_ticks.map(|grace| AgeStage::Force(now + grace));
            draining = true;
        }
        if stamp != tracked.armed_stamp {
            self.shared.metrics.activity_rearms.inc();
            tracked.armed_stamp = stamp;
        }
        // Draining (since before, or from now): no PINGs after a CLOSE (only
        // answers may follow it), and only the idle and grace deadlines.
        let mut retry_next_tick = false;
        if !draining
            && self
                .probe_due(&tracked, stamp)
                .is_some_and(|due| due <= now)
        {
            match self.send_probe(&conn) {
                Probe::Sent => tracked.probe = Some((stamp, now)),
                Probe::Skipped => retry_next_tick = true,
                Probe::Stalled => return,
            }
        }
        let mut deadline = self.next_deadline(&tracked, stamp, draining);
        if deadline == u64::MAX {
            // Nothing left to time (a shutdown drain without an idle
            // timeout): shutdown's own grace period ends it.
            return;
        }
        if retry_next_tick {
            deadline = deadline.min(now + 1);
        }
        // A deadline not after `now` would fire again in this same tick.
        tracked.timer = Some(self.wheel.insert(id, deadline.max(now + 1)));
        self.tracked[id.index()] = Some(tracked);
    }

    fn send_probe(&self, conn: &Conn) -> Probe {
        let probe = conn.try_send_probe(&self.shared.probe);
        trace!(conn = %conn.id, ?probe, "server ping");
        if probe == Probe::Sent {
            self.shared.metrics.probes_sent.inc();
        }
        probe
    }

    /// When the next server PING is due for a connection stamped `stamp`.
    fn probe_due(&self, tracked: &Tracked, stamp: u64) -> Option<u64> {
        let probe = self.probe_ticks?;
        Some(match tracked.probe {
            // Still silent since the last PING: the next one, `probe` later.
            Some((for_stamp, sent)) if for_stamp == stamp => sent + probe,
            _ => self.jumps.superseded(stamp) + probe,
        })
    }

    /// The earliest tick at which something must happen to this connection.
    fn next_deadline(&self, tracked: &Tracked, stamp: u64, draining: bool) -> u64 {
        let base = self.jumps.superseded(stamp);
        let idle = self.idle_ticks.map_or(u64::MAX, |idle| base + idle);
        if draining {
            return match tracked.age {
                Some(AgeStage::Force(at)) => idle.min(at),
                _ => idle,
            };
        }
        let probe = self.probe_due(tracked, stamp).unwrap_or(u64::MAX);
        let age = match tracked.age {
            Some(AgeStage::Drain(at)) => at,
            _ => u64::MAX,
        };
        idle.min(probe).min(age)
    }
}

#[cfg(test)]
mod tests {
    use super::{Jumps, MaxAge};
    use crate::time::TimeSource;
    use std::time::{Duration, Instant};

    #[test]
    fn max_ages_spread_evenly_over_ten_percent_either_side() {
        let source = TimeSource::new(Instant::now(), Duration::from_millis(10));
        let mut age = MaxAge {
            age: Duration::from_secs(10),
            grace_ticks: None,
            close: Vec::new(),
            rng: fastrand::Rng::with_seed(1),
        };
        // 10 s is 1,000 ticks: every draw in [900, 1100], and each tenth of
        // that range holds about a tenth of the draws.
        let mut buckets = [0u32; 10];
        for _ in 0..10_000 {
            let ticks = age.draw_ticks(&source);
            assert!((900..=1100).contains(&ticks), "{ticks}");
            buckets[((ticks - 900) / 20).min(9) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|&n| (800..1200).contains(&n)),
            "{buckets:?}"
        );
    }

    #[test]
    fn stamps_are_superseded_by_the_next_published_tick() {
        let mut jumps = Jumps::default();
        jumps.record(4, 5);
        jumps.record(5, 9);
        jumps.record(9, 10);
        jumps.record(10, 12);
        assert_eq!(jumps.superseded(4), 5);
        assert_eq!(jumps.superseded(5), 9);
        assert_eq!(jumps.superseded(9), 10);
        assert_eq!(jumps.superseded(10), 12);
        assert_eq!(jumps.superseded(12), 13);
    }

    #[test]
    fn old_jumps_are_forgotten() {
        let mut jumps = Jumps::default();
        jumps.record(5, 9);
        jumps.record(20, 30);
        jumps.prune(40, 10);
        assert_eq!(jumps.superseded(5), 6);
        assert_eq!(jumps.superseded(20), 30);
    }
}

#[cfg(test)]
mod reuse_tests {
    use super::*;
    use crate::server::conn::Conn;
    use std::net::{TcpListener, TcpStream};

    fn shared() -> (Arc<Shared>, TcpListener, Receiver<Event>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let (events, events_rx) = crossbeam_channel::unbounded();
        let shared = Arc::new(Shared {
            config: crate::server::Config {
                idle_timeout: Some(std::time::Duration::from_secs(1)),
                tick: std::time::Duration::from_millis(100),
                ..Default::default()
            },
            registry: Default::default(),
            clock: Default::default(),
            events,
            handler: Arc::new(crate::handler::Echo),
            stopping: Default::default(),
            listener: listener.try_clone().unwrap(),
            probe: Vec::new(),
            metrics: crate::server::metrics::Metrics::new(),
        });
        (shared, listener, events_rx)
    }

    fn timer(shared: &Arc<Shared>) -> Timer {
        Timer {
            wheel: Wheel::new(64),
            tracked: Vec::new(),
            jumps: Jumps::default(),
            published: 0,
            source: TimeSource::new(Instant::now(), shared.config.tick),
            idle_ticks: Some(10),
            probe_ticks: None,
            horizon: 11,
            next_summary: None,
            counters: EventCounters::new(shared),
            age: None,
            shared: Arc::clone(shared),
        }
    }

    fn add(shared: &Shared, listener: &TcpListener) -> (Arc<Conn>, TcpStream) {
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server_side, peer) = listener.accept().unwrap();
        let conn = shared
            .registry
            .insert(10, |id| Conn::new(id, server_side, peer, 0))
            .unwrap();
        (conn, client)
    }

    /// The race behind a CI failure: the new occupant of a registry slot is
    /// registered before the old occupant's Deregister arrives.
    #[test]
    fn a_reused_slot_registered_before_the_old_deregister_is_still_reaped() {
        let (shared, listener, _events) = shared();
        let mut timer = timer(&shared);
        let (old, _old_client) = add(&shared, &listener);
        timer.register(old.id, 0);
        shared.registry.remove(old.id);
        let (new, _new_client) = add(&shared, &listener);
        assert_eq!(old.id.index(), new.id.index(), "the slot should be reused");
        timer.register(new.id, 0);
        timer.deregister(old.id);
        assert_eq!(
            timer.wheel.len(),
            1,
            "the old connection's timer must be gone"
        );
        // Past the idle deadline (stamp 0 -> 1 + 10 ticks).
        for now in 1..=11 {
            timer.published = now - 1;
            timer.tick(timer.source.instant_of(now));
        }
        assert_eq!(new.close_requested(), Some(CloseRequest::IdleTimeout));
    }
}
