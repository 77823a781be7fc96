//! The timer thread: one thread owning the [`Wheel`] that decides when idle
//! connections are probed, drained and closed, publishing the coarse
//! [`Clock`], and flushing output other threads left queued.
//!
//! # Activity without messages
//!
//! A worker does not tell the timer thread about every message. It stamps
//! its connection's activity atomic with the [`Clock`] tick (a load and a
//! conditional store, see [`Stamp::touch`]), and that is all. Each
//! connection has one timer in the wheel, set for the earliest moment
//! something may have to happen to it ([`schedule`] says what and when).
//! When the timer fires, the timer thread reads the stamp: if there was
//! activity since, it re-arms the timer for the time that remains; only if
//! not does it act. A busy connection thus costs the timer thread one wheel
//! operation per idle timeout, however many messages it carries, and the
//! channel carries only a connection's register, deregister and token
//! expiry events (and the stop), never its activity.
//!
//! Nor does an event wake the timer thread: it sleeps until its next tick
//! and takes the events that arrived meanwhile before ticking, so a
//! connection's open and close cost no context switch to it. (An event
//! waits at most one tick, and nothing is decided on a connection before its
//! Register is taken: a stamp is read only when its timer fires.) Only
//! [`Event::Stop`] wakes it, by unparking it.
//!
//! # Precision
//!
//! A connection is not closed before it has been idle for the timeout, and
//! is closed at most one tick (plus the thread's wake-up latency) after; see
//! [`schedule`] for how stamps and clock jumps are read so.
//!
//! # Maximum age
//!
//! With `max_connection_age` set, the same timer carries each connection's
//! age deadline, drawn within +/-10% of the setting when the connection
//! registers. At that deadline the timer thread starts a drain (CLOSE 1001
//! on the connection's outbound path; the worker keeps answering) and, with
//! a grace period, re-arms for its end, when the drain is forced. A draining
//! connection that stays silent past the idle timeout is forced as well, so
//! a client that vanished mid-drain is not kept forever.
//!
//! [`Stamp::touch`]: crate::activity::Stamp::touch

pub(crate) mod event;
mod schedule;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};
use prometheus_client::metrics::counter::Counter;
use tracing::{debug, info, trace};

use crate::activity::Clock;
use crate::server::conn::Conn;
use crate::server::conn::close::{CloseRequest, CloseState};
use crate::server::conn::id::ConnId;
use crate::server::conn::outbound::{Expired, Flushed};
use crate::server::serve::shared::Shared;
use crate::time::TimeSource;
use crate::wheel::{TimerKey, Wheel};
pub(crate) use event::Event;
use schedule::{Entry, Jumps, Schedule, Step};

/// Most events taken between two checks of the clock.
const EVENTS_PER_WAKE: usize = 4096;

/// How often (in ticks) topics whose history expired and that nobody
/// subscribes to are forgotten.
const TOPIC_SWEEP_TICKS: u64 = 64;

/// The timer's view of one connection.
struct Tracked {
    /// The connection (checked against the registry slot's occupant).
    id: ConnId,
    /// The armed timer; `None` while it is firing.
    timer: Option<TimerKey>,
    /// Its place in the schedule.
    entry: Entry,
}

/// Stops the timer thread: queues [`Event::Stop`] after every event sent
/// so far, and wakes the thread, which otherwise sleeps until its next tick.
pub(crate) fn stop(shared: &Shared, timer: &std::thread::Thread) {
    let _ = shared.events.send(Event::Stop);
    timer.unpark();
}

/// Spawns the timer thread.
pub(crate) fn spawn(
    shared: Arc<Shared>,
    events: Receiver<Event>,
    source: TimeSource,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let timer = Timer::new(shared, source, fastrand::Rng::new());
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

/// The timer thread's state.
struct Timer {
    /// One timer per tracked connection.
    wheel: Wheel<ConnId>,
    /// Indexed by [`ConnId::index`].
    tracked: Vec<Option<Tracked>>,
    /// Clock jumps that deadlines must still account for.
    jumps: Jumps,
    /// The last tick published on the [`Clock`] and processed.
    published: u64,
    /// Maps instants to ticks.
    source: TimeSource,
    /// The settings in ticks.
    schedule: Schedule,
    /// How far back a stamp can matter, in ticks.
    horizon: u64,
    /// When the next summary line is due.
    next_summary: Option<Instant>,
    /// The tick of the next topic sweep.
    next_sweep: u64,
    /// Connections expired in this tick, to wake once all are expired.
    to_wake: Vec<Arc<Conn>>,
    /// Register and deregister counters.
    counters: EventCounters,
    /// The maximum-age setting and its jitter, if set.
    age: Option<MaxAge>,
    shared: Arc<Shared>,
}

/// The maximum-age setting and the jitter's random generator.
struct MaxAge {
    age: Duration,
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
    fn new(shared: Arc<Shared>, source: TimeSource, rng: fastrand::Rng) -> Timer {
        let config = &shared.config;
        let ticks = |d: Duration| source.ticks_ceil(d).max(1);
        let schedule = Schedule {
            idle: config.idle_timeout.map(ticks),
            probe: config.probe_after.map(ticks),
            age_grace: config.max_connection_age_grace.map(ticks),
        };
        Timer {
            horizon: schedule.idle.unwrap_or(0).max(schedule.probe.unwrap_or(0)) + 1,
            schedule,
            age: config.max_connection_age.map(|age| MaxAge { age, rng }),
            wheel: Wheel::with_capacity(config.wheel_slots, 1024),
            tracked: Vec::new(),
            jumps: Jumps::default(),
            published: 0,
            source,
            next_summary: config.stats_interval.map(|every| Instant::now() + every),
            next_sweep: TOPIC_SWEEP_TICKS,
            to_wake: Vec::new(),
            counters: EventCounters::new(&shared),
            shared,
        }
    }

    fn clock(&self) -> &Clock {
        &self.shared.clock
    }

    fn run(mut self, events: Receiver<Event>) {
        loop {
            // Bounded, so that a flood of events cannot starve expiry.
            let mut taken = 0;
            while taken < EVENTS_PER_WAKE {
                match events.try_recv() {
                    Ok(Event::Register { id, activity }) => self.register(id, activity),
                    Ok(Event::Deregister(id)) => self.deregister(id),
                    Ok(Event::Expires { id, at }) => self.expires(id, at),
                    Ok(Event::Stop) | Err(TryRecvError::Disconnected) => return,
                    Err(TryRecvError::Empty) => break,
                }
                taken += 1;
            }
            let next_tick = self.source.instant_of(self.published + 1);
            let now = Instant::now();
            if now >= next_tick {
                self.tick(now);
            } else if taken < EVENTS_PER_WAKE {
                // Woken early only by Stop (or spuriously).
                std::thread::park_timeout(next_tick - now);
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
        let expired_before = self.shared.metrics.expirations.get();
        while let Some(id) = self.wheel.poll(now) {
            self.fire(id, now);
        }
        let expired = self.shared.metrics.expirations.get() - expired_before;
        if expired > 0 {
            // How long the burst took to go out, from the tick's due time.
            debug!(
                expired,
                closes_sent = self
                    .to_wake
                    .iter()
                    .filter(|c| c.out.close_sent().is_some())
                    .count(),
                after_due = ?due.elapsed(),
                "idle timeouts this tick"
            );
        }
        for conn in self.to_wake.drain(..) {
            conn.out.wake();
        }
        self.flush_queued();
        if now >= self.next_sweep {
            self.shared.topics.sweep();
            self.shared.connect_rate.sweep(Instant::now());
            self.next_sweep = now + TOPIC_SWEEP_TICKS;
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

    /// Writes what other threads left queued on connections whose workers
    /// sit in `read`; closes those whose queue made no progress for the
    /// write timeout.
    fn flush_queued(&self) {
        let shared = &self.shared;
        let listed = shared.flushes.take();
        if listed.is_empty() {
            return;
        }
        let mut pending = Vec::new();
        for id in listed {
            let Some(conn) = shared.registry.get(id) else {
                continue;
            };
            match conn.out.flush_listed(shared.config.write_timeout) {
                Flushed::Empty => {}
                Flushed::Pending => pending.push(id),
                Flushed::Stalled => {
                    debug!(conn = %id, peer = %conn.peer(), "queued output stalled: closing");
                }
            }
        }
        shared.flushes.extend(pending);
    }

    /// The periodic info line with the headline numbers.
    fn summary(&self) {
        let shared = &self.shared;
        let metrics = &shared.metrics;
        let (received, sent) = shared.registry.traffic();
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
        if !self.schedule.times_anything(self.age.is_some()) && !self.shared.requires_auth {
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
        let age = self.age.as_mut().map(|age| age.draw_ticks(source));
        let entry = Entry::new(activity, age);
        self.counters.registered.inc();
        let base = self.jumps.superseded(activity);
        let deadline = self.schedule.next_deadline(&entry, base, activity, false);
        self.tracked[index] = Some(Tracked {
            id,
            timer: Some(self.wheel.insert(id, deadline)),
            entry,
        });
    }

    /// Sets (or pushes back) a connection's credential expiry, and re-arms
    /// its timer if that comes first.
    fn expires(&mut self, id: ConnId, at: Instant) {
        let tick = self.source.deadline_tick(at);
        let Some(tracked) = self
            .tracked
            .get_mut(id.index())
            .and_then(Option::as_mut)
            .filter(|t| t.id == id)
        else {
            return;
        };
        tracked.entry.expires = Some(tick);
        if let Some(timer) = tracked.timer.take() {
            self.wheel.remove(timer);
        }
        let stamp = tracked.entry.armed_stamp;
        let base = self.jumps.superseded(stamp);
        let deadline = self
            .schedule
            .next_deadline(&tracked.entry, base, stamp, false)
            .max(self.published + 1);
        tracked.timer = Some(self.wheel.insert(id, deadline));
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

    /// A connection's timer is due: ask its schedule what to do, do it, and
    /// re-arm if something is left to time.
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
        // Gone (its Deregister is on the way) or closing: forget it.
        let Some(conn) = self.shared.registry.get(id) else {
            return;
        };
        let draining = match conn.out.close_state() {
            CloseState::Open => false,
            CloseState::Requested(request) if request.drains() => true,
            CloseState::Requested(_) | CloseState::Finishing => return,
        };
        let stamp = conn.activity.get();
        if stamp != tracked.entry.armed_stamp {
            self.shared.metrics.activity_rearms.inc();
        }
        let base = self.jumps.superseded(stamp);
        let next = match self
            .schedule
            .step(&mut tracked.entry, base, stamp, now, draining)
        {
            Step::TokenExpired => {
                if self.expire(&conn, CloseRequest::TokenExpired) {
                    trace!(conn = %id, peer = %conn.peer(), "token expired");
                }
                return;
            }
            Step::Expire => {
                if self.expire(&conn, CloseRequest::IdleTimeout) {
                    trace!(conn = %id, peer = %conn.peer(), "idle timeout");
                    self.shared.metrics.expirations.inc();
                }
                return;
            }
            Step::Force => {
                debug!(conn = %id, peer = %conn.peer(), "drain cut short");
                self.shared.metrics.drains_forced.inc();
                conn.out.wake();
                return;
            }
            Step::Drain { then } => {
                if !self.start_drain(&conn) {
                    return;
                }
                match then {
                    Some(then) => then,
                    None => return,
                }
            }
            Step::Probe { then } => {
                let probe = self.shared.frames.probe(conn.protocol);
                let pushed = conn.out.push(id, &self.shared.flushes, probe);
                trace!(conn = %id, ?pushed, "server ping");
                if pushed.is_err() {
                    // Closing, or its outbox is full (closing now).
                    return;
                }
                self.shared.metrics.probes_sent.inc();
                then
            }
            Step::Wait(then) => then,
            Step::Done => return,
        };
        tracked.timer = Some(self.wheel.insert(id, next));
        self.tracked[id.index()] = Some(tracked);
    }

    /// Closes an expired connection: its CLOSE goes on the wire now if its
    /// worker has nothing to answer (see [`Outbound::expire`]); otherwise
    /// the worker sends it after its answers. Either way the worker is woken
    /// (to hang up, or to answer and close) only after every expiry of the
    /// tick, so that thousands of connections expiring together have their
    /// CLOSEs on the wire before any of their threads competes for the CPU.
    /// False if it was already closing.
    ///
    /// [`Outbound::expire`]: crate::server::conn::outbound::Outbound::expire
    fn expire(&mut self, conn: &Arc<Conn>, request: CloseRequest) -> bool {
        let close = self.shared.frames.expiry(conn.protocol, request);
        let expired = conn
            .out
            .expire(conn.id, &self.shared.flushes, request, close);
        match expired {
            Expired::Requested | Expired::Sent => self.to_wake.push(Arc::clone(conn)),
            Expired::Closing => return false,
        }
        true
    }

    /// Starts the maximum-age drain of `conn`; false if it was already
    /// closing.
    fn start_drain(&self, conn: &Conn) -> bool {
        let shared = &self.shared;
        let close = shared.frames.drain(conn.protocol, CloseRequest::MaxAge);
        let drain = conn
            .out
            .drain(conn.id, &shared.flushes, CloseRequest::MaxAge, close);
        debug!(conn = %conn.id, peer = %conn.peer(), ?drain, "maximum age: draining");
        if drain.is_err() {
            return false;
        }
        shared
            .metrics
            .drains
            .get_or_create(&[("reason", "max_age")])
            .inc();
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::conn::close::CloseState;
    use crate::server::test_support::{pair, shared};

    #[test]
    fn max_ages_spread_evenly_over_ten_percent_either_side() {
        let source = TimeSource::new(Instant::now(), Duration::from_millis(10));
        let mut age = MaxAge {
            age: Duration::from_secs(10),
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

    fn timer(shared: &Arc<Shared>) -> Timer {
        let source = TimeSource::new(Instant::now(), shared.config.tick);
        Timer::new(Arc::clone(shared), source, fastrand::Rng::with_seed(1))
    }

    /// Runs ticks `from..=to` as the thread would.
    fn run_ticks(timer: &mut Timer, from: u64, to: u64) {
        for now in from..=to {
            timer.published = now - 1;
            timer.tick(timer.source.instant_of(now));
        }
    }

    /// The race behind a CI failure: the new occupant of a registry slot is
    /// registered before the old occupant's Deregister arrives.
    #[test]
    fn a_reused_slot_registered_before_the_old_deregister_is_still_reaped() {
        let (shared, listener) = shared(crate::server::Config {
            idle_timeout: Some(Duration::from_secs(1)),
            tick: Duration::from_millis(100),
            ..Default::default()
        });
        let mut timer = timer(&shared);
        let (old, _old_client) = pair(&shared, &listener);
        timer.register(old.id, 0);
        shared.registry.remove(old.id, Default::default());
        let (new, _new_client) = pair(&shared, &listener);
        assert_eq!(old.id.index(), new.id.index(), "the slot should be reused");
        timer.register(new.id, 0);
        timer.deregister(old.id);
        assert_eq!(
            timer.wheel.len(),
            1,
            "the old connection's timer must be gone"
        );
        // Past the idle deadline (stamp 0 -> 1 + 10 ticks).
        run_ticks(&mut timer, 1, 11);
        assert_eq!(
            new.out.close_state(),
            CloseState::Requested(CloseRequest::IdleTimeout)
        );
    }

    /// A drain's CLOSE that found the socket full waits in the queue; with
    /// no worker to write it (a worker sits in `read`), the next tick does.
    #[test]
    fn the_tick_after_a_queued_close_flushes_it() {
        use crate::protocol::{Message, Protocol, Reader, code};
        use std::io::Read;

        let (shared, listener) = shared(crate::server::Config {
            idle_timeout: None,
            tick: Duration::from_millis(10),
            ..Default::default()
        });
        let mut timer = timer(&shared);
        let (conn, mut client) = pair(&shared, &listener);
        let mut data = Vec::new();
        Protocol::Frame
            .encode(&Message::Data(&[0; 4096]), &mut data)
            .unwrap();
        while conn.out.push(conn.id, &shared.flushes, &data)
            == Ok(crate::server::conn::outbound::Delivery::Written)
        {}
        let close = shared.frames.drain(conn.protocol, CloseRequest::Shutdown);
        conn.out
            .drain(conn.id, &shared.flushes, CloseRequest::Shutdown, close)
            .unwrap();
        // The client reads everything the socket holds, then waits.
        client
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut received = Vec::new();
        let mut chunk = vec![0; 1 << 16];
        while let Ok(n) = client.read(&mut chunk) {
            if n == 0 {
                break;
            }
            received.extend_from_slice(&chunk[..n]);
            // One tick: what the socket now has room for goes out.
            let next = timer.published + 1;
            run_ticks(&mut timer, next, next);
        }
        let mut reader = Reader::new(Protocol::Frame, 1 << 20);
        reader.extend(&received);
        let mut last = None;
        while let Some(msg) = reader.next_message().unwrap() {
            last = Some(msg);
        }
        assert_eq!(last.and_then(|m| m.close_code()), Some(code::GOING_AWAY));
        assert!(!reader.has_partial());
        assert_eq!(conn.out.queued_bytes(), 0);
    }
}
