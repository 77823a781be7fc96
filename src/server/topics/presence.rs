//! Presence: who is in a topic, and join and leave events to the
//! subscribers that watch for them.
//!
//! A topic's members are its subscribers. Each has a user: the
//! authenticated subject (the JWT's `sub`), or none (`-`), when the member
//! is the connection alone. Joins and leaves go, as DATA messages on the
//! outbound path, to the subscribers that asked for them (`SUB <topic>
//! presence`), under the topic's lock, so that they keep their order with
//! the topic's messages:
//!
//! ```text
//! JOIN <topic> <conn> <user>             a connection subscribed
//! LEAVE <topic> <conn> <user> <reason>   it left, and why
//! ONLINE <topic> <user>                  a user's first connection joined
//! OFFLINE <topic> <user> <reason>        its last one left
//! PRESENCE <topic> overflow              events were dropped: ask WHO
//! ```
//!
//! A leave says why ([`leave_reason`]): `unsubscribed`, `closed` (by the
//! client), `idle_timeout` (a dead peer found by the wheel), `tcp_timeout`
//! (keepalive or `TCP_USER_TIMEOUT`), `write_timeout`, `slow_consumer`,
//! `drained` (shutdown or maximum age), or another close reason's label.
//!
//! Events are bounded per topic: at most `--presence-rate` a second (a
//! token bucket with as many tokens), each sent to every watcher. Past it
//! they are dropped and counted, and watchers get one `PRESENCE <topic>
//! overflow` a second while that lasts, so that a storm of 10,000 joins
//! costs at most `rate + 1` messages a second per watcher, and nobody
//! believes a stale view.
//!
//! With `--redis`, members are named `<conn>@<instance>` ([`member_id`]),
//! and presence spans every instance: each tells Redis of its own joins
//! and leaves, `WHO` reads every instance's members from there, and other
//! instances' events (and every `ONLINE` and `OFFLINE`, which count a
//! user's connections everywhere) come back through it to be told here,
//! within the same budget (see `topics::redis::presence`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;

use crate::protocol::{Message, Protocol};
use crate::server::conn::Conn;
use crate::server::conn::id::ConnId;
use crate::server::conn::outbound::Flushes;

/// One member of a topic: a subscribed connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The connection (its id on its instance).
    pub conn: ConnId,
    /// With `--redis`, the instance it is connected to (its id, as the
    /// instance's start-up log line gives it); `None` without.
    pub instance: Option<String>,
    /// Its user (the authenticated subject), if any.
    pub user: Option<String>,
    /// When it joined, in milliseconds since the Unix epoch.
    pub since_ms: u64,
}

impl Member {
    /// How events and `WHO` name it: `<conn>`, or `<conn>@<instance>` with
    /// `--redis`.
    pub fn id(&self) -> String {
        member_id(self.conn, self.instance.as_deref())
    }
}

/// A member as events and `WHO` name it: `<conn>`, or `<conn>@<instance>`
/// when instances share presence (`--redis`).
pub fn member_id(conn: ConnId, instance: Option<&str>) -> String {
    match instance {
        Some(instance) => format!("{conn}@{instance}"),
        None => conn.to_string(),
    }
}

/// A page of a topic's members, in the order they joined.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Members {
    /// The members on this page.
    pub members: Vec<Member>,
    /// Members in all (connections).
    pub connections: usize,
    /// Distinct users among them (authenticated members only).
    pub users: usize,
    /// More follow: ask again after the last one listed.
    pub more: bool,
}

/// The connection and the instance (if any) of a member's id as events and
/// `WHO` write it (`<conn>` or `<conn>@<instance>`, see [`member_id`]);
/// `None` if it is not one.
pub fn parse_member_id(id: &str) -> Option<(ConnId, Option<&str>)> {
    let (conn, instance) = match id.split_once('@') {
        Some((conn, instance)) => (conn, Some(instance)),
        None => (id, None),
    };
    if instance.is_some_and(|i| {
        i.is_empty() || i.len() > 32 || !i.bytes().all(|b| b.is_ascii_alphanumeric())
    }) {
        return None;
    }
    Some((conn.parse().ok()?, instance))
}

/// A topic's presence (held under the topic's lock).
#[derive(Default)]
pub(super) struct Presence {
    /// The members, in the order they joined.
    members: Vec<Joined>,
    /// The members that watch joins and leaves.
    watchers: Vec<Arc<Conn>>,
    /// Connections per user, authenticated members only.
    users: HashMap<Arc<str>, usize>,
    /// The event budget: tokens, and when they were last refilled.
    bucket: Option<(f64, Instant)>,
    /// When watchers were last told that events were dropped.
    overflow_told: Option<Instant>,
}

struct Joined {
    conn: ConnId,
    user: Option<Arc<str>>,
    since_ms: u64,
}

/// A member as Redis is told of it: its connection, its user, and when it
/// joined (ms since the Unix epoch).
pub(crate) type Snapshot = (ConnId, Option<Arc<str>>, u64);

/// What presence sends and drops, for the metrics.
#[derive(Clone, Default)]
pub(crate) struct PresenceCounters {
    /// Event messages written or queued to watchers.
    pub(crate) sent: Counter,
    /// Events dropped past `--presence-rate`.
    pub(crate) dropped: Counter,
    /// Presence queries answered.
    pub(crate) queries: Counter,
    /// Members they listed.
    pub(crate) listed: Counter,
}

/// What a change of membership must tell watchers.
pub(super) struct Change<'a> {
    pub(super) name: &'a str,
    /// This instance, when instances share presence through Redis: members
    /// are then named `<conn>@<instance>`, and a user's `ONLINE` and
    /// `OFFLINE` come from Redis, which counts every instance's connections.
    pub(super) instance: Option<&'a str>,
    pub(super) rate: u32,
    pub(super) flushes: &'a Flushes,
    pub(super) counters: &'a PresenceCounters,
}

impl Presence {
    /// `conn`, a new subscriber, joined (a watcher itself, with `watch`);
    /// tells the watchers (not `conn` itself). Its user and when it
    /// joined.
    pub(super) fn join(
        &mut self,
        change: &Change<'_>,
        conn: &Arc<Conn>,
        watch: bool,
    ) -> (Option<Arc<str>>, u64) {
        let user = user_of(conn);
        let since_ms = now_ms();
        self.members.push(Joined {
            conn: conn.id,
            user: user.clone(),
            since_ms,
        });
        if watch {
            self.watchers.push(Arc::clone(conn));
        }
        let first = match &user {
            Some(user) => {
                let count = self.users.entry(Arc::clone(user)).or_insert(0);
                *count += 1;
                *count == 1
            }
            None => false,
        };
        self.tell(change, conn.id, || {
            let shown = show_user(user.as_deref());
            let id = member_id(conn.id, change.instance);
            let mut events = vec![format!("JOIN {} {id} {shown}", change.name)];
            if first && change.instance.is_none() {
                events.push(format!("ONLINE {} {shown}", change.name));
            }
            events
        });
        (user, since_ms)
    }

    /// `conn` left for `reason` (a close reason's label, or `unsubscribed`);
    /// tells the watchers that remain. False if it was not a member.
    pub(super) fn leave(&mut self, change: &Change<'_>, conn: ConnId, reason: &str) -> bool {
        let Some(at) = self.members.iter().position(|m| m.conn == conn) else {
            return false;
        };
        let gone = self.members.remove(at);
        self.watchers.retain(|w| w.id != conn);
        let last = match &gone.user {
            Some(user) => match self.users.get_mut(user) {
                Some(count) if *count > 1 => {
                    *count -= 1;
                    false
                }
                _ => {
                    self.users.remove(user);
                    true
                }
            },
            None => false,
        };
        self.tell(change, conn, || {
            let reason = leave_reason(reason);
            let shown = show_user(gone.user.as_deref());
            let id = member_id(conn, change.instance);
            let mut events = vec![format!("LEAVE {} {id} {shown} {reason}", change.name)];
            if last && change.instance.is_none() {
                events.push(format!("OFFLINE {} {shown} {reason}", change.name));
            }
            events
        });
        true
    }

    /// Tells every watcher but `subject` `events` from Redis (another
    /// instance's members, or what only Redis counts), within the same
    /// budget as this instance's own.
    pub(super) fn relay(
        &mut self,
        change: &Change<'_>,
        subject: Option<ConnId>,
        events: Vec<String>,
    ) {
        self.tell(change, subject, || events);
    }

    /// The members, each with its user and when it joined: what this
    /// instance tells Redis when it brings Redis's view up to date.
    pub(super) fn snapshot(&self) -> Vec<Snapshot> {
        self.members
            .iter()
            .map(|m| (m.conn, m.user.clone(), m.since_ms))
            .collect()
    }

    /// Makes `conn`, a member, a watcher of joins and leaves (or not);
    /// false if it is not a member.
    pub(super) fn watch(&mut self, conn: &Arc<Conn>, on: bool) -> bool {
        if !self.members.iter().any(|m| m.conn == conn.id) {
            return false;
        }
        self.watchers.retain(|w| w.id != conn.id);
        if on {
            self.watchers.push(Arc::clone(conn));
        }
        true
    }

    /// Up to `limit` members after connection `after` (from the first
    /// without it).
    pub(super) fn page(&self, after: Option<ConnId>, limit: usize) -> Members {
        let from = after
            .and_then(|after| self.members.iter().position(|m| m.conn == after))
            .map_or(0, |at| at + 1);
        let rest = &self.members[from.min(self.members.len())..];
        Members {
            members: rest
                .iter()
                .take(limit)
                .map(|m| Member {
                    conn: m.conn,
                    instance: None,
                    user: m.user.as_deref().map(str::to_owned),
                    since_ms: m.since_ms,
                })
                .collect(),
            connections: self.members.len(),
            users: self.users.len(),
            more: rest.len() > limit,
        }
    }

    /// Sends the `events` to every watcher but `subject`, within the
    /// topic's event budget. They are written only if someone watches.
    fn tell(
        &mut self,
        change: &Change<'_>,
        subject: impl Into<Option<ConnId>>,
        events: impl FnOnce() -> Vec<String>,
    ) {
        let subject = subject.into();
        if !self.watchers.iter().any(|w| Some(w.id) != subject) {
            return;
        }
        let events = events();
        if events.is_empty() {
            return;
        }
        let now = Instant::now();
        let lines = if self.spend(change.rate, events.len(), now) {
            events
        } else {
            change.counters.dropped.inc_by(events.len() as u64);
            // Once a second while events are dropped: ask WHO.
            if self
                .overflow_told
                .is_some_and(|told| now.duration_since(told).as_secs() < 1)
            {
                return;
            }
            self.overflow_told = Some(now);
            vec![format!("PRESENCE {} overflow", change.name)]
        };
        let mut encoded: [Option<Vec<u8>>; 3] = Default::default();
        for watcher in self.watchers.iter().filter(|w| Some(w.id) != subject) {
            let slot = &mut encoded[protocol_slot(watcher.protocol)];
            let wire = slot.get_or_insert_with(|| encode(watcher.protocol, &lines));
            if !wire.is_empty() && watcher.out.push(watcher.id, change.flushes, wire).is_ok() {
                change.counters.sent.inc_by(lines.len() as u64);
            }
        }
    }

    /// Takes `n` events from the budget of `rate` a second (0: no limit).
    fn spend(&mut self, rate: u32, n: usize, now: Instant) -> bool {
        if rate == 0 {
            return true;
        }
        let rate = f64::from(rate);
        let (tokens, at) = self.bucket.get_or_insert((rate, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(rate);
        *at = now;
        if *tokens >= n as f64 {
            *tokens -= n as f64;
            true
        } else {
            false
        }
    }
}

/// The user a connection is a member as: its authenticated subject.
fn user_of(conn: &Conn) -> Option<Arc<str>> {
    conn.identity
        .lock()
        .as_ref()
        .map(|i| Arc::from(i.sub.as_str()))
}

/// A user as written in an event: `-` for none; a space, `%` or a control
/// or non-ASCII byte percent-encoded, so that the line splits on spaces.
pub fn show_user(user: Option<&str>) -> String {
    let Some(user) = user else {
        return "-".into();
    };
    let mut shown = String::with_capacity(user.len());
    for b in user.bytes() {
        if b.is_ascii_graphic() && b != b'%' {
            shown.push(char::from(b));
        } else {
            shown.push_str(&format!("%{b:02X}"));
        }
    }
    if shown == "-" { "%2D".into() } else { shown }
}

/// The user a `show_user` form names (`None` for `-`); `None` as well for
/// a form `show_user` never writes.
pub fn unshow_user(shown: &str) -> Option<String> {
    if shown == "-" {
        return None;
    }
    let bytes = shown.as_bytes();
    let mut raw = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            raw.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            raw.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(raw).ok()
}

/// Why a member left, from the close reason's label (or `unsubscribed`).
pub fn leave_reason(label: &str) -> &str {
    match label {
        "peer_closed" | "peer_close_frame" | "reset" => "closed",
        "shutdown" | "max_age" => "drained",
        other => other,
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn protocol_slot(protocol: Protocol) -> usize {
    match protocol {
        Protocol::Frame => 0,
        Protocol::Line => 1,
        Protocol::Ws => 2,
    }
}

/// `lines`, each a DATA message, in `protocol` (empty if it cannot carry
/// them).
fn encode(protocol: Protocol, lines: &[String]) -> Vec<u8> {
    let mut wire = Vec::new();
    for line in lines {
        if protocol
            .encode(&Message::Data(line.as_bytes()), &mut wire)
            .is_err()
        {
            return Vec::new();
        }
    }
    wire
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_shown_as_one_token() {
        assert_eq!(show_user(None), "-");
        assert_eq!(show_user(Some("alice")), "alice");
        assert_eq!(show_user(Some("a b%c")), "a%20b%25c");
        assert_eq!(show_user(Some("-")), "%2D");
        assert_eq!(show_user(Some("é")), "%C3%A9");
        for user in ["alice", "a b%c", "-", "é", "x\ny"] {
            assert_eq!(unshow_user(&show_user(Some(user))).as_deref(), Some(user));
        }
        assert_eq!(unshow_user("-"), None);
        assert_eq!(unshow_user("%4"), None, "a cut escape");
    }

    #[test]
    fn member_ids_name_the_instance_with_redis() {
        let conn = ConnId::new(3, 1);
        assert_eq!(member_id(conn, None), "3.1");
        assert_eq!(member_id(conn, Some("ab12")), "3.1@ab12");
        assert_eq!(parse_member_id("3.1"), Some((conn, None)));
        assert_eq!(parse_member_id("3.1@ab12"), Some((conn, Some("ab12"))));
        for bad in ["", "3", "3.1@", "3.1@a-b", "x@ab", "3.1@ab@c"] {
            assert_eq!(parse_member_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn leave_reasons_name_what_happened() {
        assert_eq!(leave_reason("peer_closed"), "closed");
        assert_eq!(leave_reason("reset"), "closed");
        assert_eq!(leave_reason("shutdown"), "drained");
        assert_eq!(leave_reason("max_age"), "drained");
        assert_eq!(leave_reason("idle_timeout"), "idle_timeout");
        assert_eq!(leave_reason("tcp_timeout"), "tcp_timeout");
        assert_eq!(leave_reason("unsubscribed"), "unsubscribed");
    }

    #[test]
    fn the_event_budget_refills_at_its_rate() {
        let mut p = Presence::default();
        let t0 = Instant::now();
        assert!(p.spend(10, 10, t0), "a full bucket to start");
        assert!(!p.spend(10, 1, t0), "then empty");
        assert!(p.spend(10, 5, t0 + std::time::Duration::from_millis(500)));
        assert!(!p.spend(10, 1, t0 + std::time::Duration::from_millis(500)));
        assert!(p.spend(0, 1_000_000, t0), "0: no limit");
    }
}
