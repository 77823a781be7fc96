//! A handle to a running server, for reaching any connection from any
//! thread: send to it, close it, subscribe it to topics, publish.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::protocol::topic::valid_topic;
use crate::protocol::{EncodeError, Message, Protocol, code};
use crate::server::conn::Conn;
use crate::server::conn::close::{CloseReason, CloseRequest, clean_reason};
use crate::server::conn::id::ConnId;
use crate::server::conn::outbound::{DrainRefused, PushError};
use crate::server::metrics::Metrics;
use crate::server::serve::shared::{Shared, close_frame};
use crate::server::topics::presence::Members;
use crate::server::topics::{Published, TopicError, TopicInfo};

/// Why a push through a [`ServerHandle`] did not happen.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// No open connection has this id (it never existed, or it closed).
    UnknownConnection,
    /// The connection is closing (or draining): it takes no more pushes.
    Closed,
    /// The message would take the connection's outbox past
    /// [`Config::max_outbox`](crate::server::Config::max_outbox): the connection is
    /// now being closed as a slow consumer (CLOSE 4003).
    OutboxFull,
    /// The connection's protocol cannot carry the message.
    Encode(EncodeError),
    /// Not a valid topic name (see [`valid_topic`]).
    InvalidTopic,
    /// Not a valid publish id (see
    /// [`valid_publish_id`](crate::protocol::topic::valid_publish_id)).
    InvalidId,
    /// The connection is at [`Config::max_subscriptions`](crate::server::Config::max_subscriptions).
    TooManySubscriptions,
    /// The topic does not exist and the server is at
    /// [`Config::max_topics`](crate::server::Config::max_topics).
    TooManyTopics,
    /// The message is larger than a peer may be sent: for a publish, its
    /// `MSG` would pass [`Config::max_frame`](crate::server::Config::max_frame)
    /// (the largest payload for that topic); for a send, it is larger than
    /// the whole outbox. Nothing was sent, published or retained.
    TooLarge(usize),
    /// With [`Config::redis`](crate::server::Config::redis): Redis could not be
    /// reached (why). Nothing was published.
    Unavailable(String),
    /// With [`Config::redis`](crate::server::Config::redis): a publish timed out
    /// (or its connection broke) after it may have reached Redis: it may
    /// have been published, and delivered. Retrying may deliver it twice.
    Unknown(String),
    /// A [`Session::publish`](crate::server::Session::publish) past the
    /// connection's publish rate
    /// ([`Config::max_publish_rate`](crate::server::Config::max_publish_rate),
    /// [`Config::max_publish_bytes`](crate::server::Config::max_publish_bytes)).
    /// Nothing was published.
    RateLimited,
}

impl SendError {
    /// Counts a refusal at a bound in `wheel_refused_total` (the other
    /// errors are not a client's doing).
    pub(crate) fn count_refusal(&self, metrics: &Metrics) {
        let reason = match self {
            SendError::TooLarge(_) => "too_large",
            SendError::TooManyTopics => "too_many_topics",
            SendError::TooManySubscriptions => "too_many_subscriptions",
            _ => return,
        };
        metrics.count_refused(reason);
    }
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::UnknownConnection => f.write_str("unknown connection"),
            SendError::Closed => f.write_str("connection closing"),
            SendError::OutboxFull => {
                f.write_str("outbox full: closing the connection as a slow consumer")
            }
            SendError::Encode(e) => e.fmt(f),
            SendError::InvalidTopic => f.write_str("invalid topic"),
            SendError::InvalidId => f.write_str("invalid id"),
            SendError::TooManySubscriptions => f.write_str("too many subscriptions"),
            SendError::TooManyTopics => f.write_str("too many topics"),
            SendError::TooLarge(max) => write!(f, "too large: at most {max} bytes"),
            SendError::Unavailable(why) => write!(f, "redis unavailable: {why}"),
            SendError::Unknown(why) => {
                write!(f, "unknown: may have been published (redis: {why})")
            }
            SendError::RateLimited => f.write_str("rate limited"),
        }
    }
}

impl std::error::Error for SendError {}

impl From<PushError> for SendError {
    fn from(e: PushError) -> SendError {
        match e {
            PushError::Closed => SendError::Closed,
            PushError::Full => SendError::OutboxFull,
            // Never for the server's own messages: `max_outbox` holds the
            // largest one (checked at start).
            PushError::TooLarge => SendError::TooLarge(0),
        }
    }
}

impl From<TopicError> for SendError {
    fn from(e: TopicError) -> SendError {
        match e {
            TopicError::InvalidTopic => SendError::InvalidTopic,
            TopicError::TooManySubscriptions => SendError::TooManySubscriptions,
            TopicError::TooManyTopics => SendError::TooManyTopics,
            TopicError::TooLarge(max) => SendError::TooLarge(max),
            TopicError::Closed => SendError::Closed,
            TopicError::OutboxFull => SendError::OutboxFull,
            TopicError::Unavailable(e) => e.into(),
            TopicError::Unknown(why) => SendError::Unknown(why),
        }
    }
}

impl From<crate::server::topics::Unavailable> for SendError {
    fn from(e: crate::server::topics::Unavailable) -> SendError {
        SendError::Unavailable(e.why)
    }
}

/// What the server knows about one open connection, from
/// [`ServerHandle::connections`] or [`ServerHandle::connection`]: a
/// snapshot, taken without stopping the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionInfo {
    /// Its id, for [`ServerHandle::send`] and the rest.
    pub id: ConnId,
    /// The client's address (from the PROXY header, when there is one).
    pub peer: SocketAddr,
    /// The protocol it speaks.
    pub protocol: Protocol,
    /// Whether its listener speaks TLS.
    pub tls: bool,
    /// Where it is on its way: `open`, `draining`, `closing`, ...
    pub state: &'static str,
    /// Whether it is parked: idle, holding no thread (`--park-after`).
    pub parked: bool,
    /// The authenticated subject (the JWT's `sub`, or the client
    /// certificate's common name), if any.
    pub subject: Option<String>,
    /// How long it has been open.
    pub age: Duration,
    /// How long since its last complete message (to the timer's tick).
    pub idle: Duration,
    /// Topics it is subscribed to.
    pub subscriptions: usize,
    /// Bytes waiting in its outbox.
    pub outbox_bytes: usize,
    /// Messages and bytes received (framing included).
    pub received: (u64, u64),
    /// Messages and bytes its worker answered with (framing included).
    pub answered: (u64, u64),
    /// Messages and bytes other threads pushed to it (publishes, sends,
    /// probes).
    pub pushed: (u64, u64),
}

impl ConnectionInfo {
    fn of(shared: &Shared, conn: &Conn) -> ConnectionInfo {
        let (received, sent) = conn.traffic.snapshot();
        let idle_ticks = shared.clock.now().saturating_sub(conn.activity.get());
        let sum = |t: &crate::traffic::Tally| (t.frames.iter().sum(), t.bytes.iter().sum());
        ConnectionInfo {
            id: conn.id,
            peer: conn.peer(),
            protocol: conn.protocol,
            tls: shared.listeners.get(conn.listener).is_some_and(|l| l.tls),
            state: conn.out.close_state().label(),
            parked: conn.parked.load(std::sync::atomic::Ordering::Relaxed),
            subject: conn.identity.lock().as_ref().map(|i| i.sub.clone()),
            age: conn.opened.elapsed(),
            idle: shared
                .config
                .tick
                .saturating_mul(idle_ticks.min(u64::from(u32::MAX)) as u32),
            subscriptions: conn.subscriptions.lock().len(),
            outbox_bytes: conn.out.queued_bytes(),
            received: sum(&received),
            answered: sum(&sent),
            pushed: conn.out.pushed(),
        }
    }
}

/// A cloneable handle to a running server, usable from any thread: from
/// [`Server::handle`](crate::server::Server::handle), or inside a handler from
/// [`Session::server`](crate::server::Session::server).
///
/// Nothing here blocks on a peer: a message goes out at once or waits in
/// the connection's bounded outbox.
///
/// # Examples
///
/// ```
/// use wheel_server::server::{Config, Server};
///
/// let mut config = Config::default();
/// config.listen = "127.0.0.1:0".parse().unwrap();
/// let server = Server::start(config)?;
/// let handle = server.handle();
/// std::thread::spawn(move || {
///     // A ticker: every subscriber of "clock" gets "MSG clock <seq> tick".
///     let published = handle.publish("clock", b"tick").unwrap();
///     assert_eq!(published.seq, 1);
/// })
/// .join()
/// .unwrap();
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Clone)]
pub struct ServerHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerHandle").finish_non_exhaustive()
    }
}

impl ServerHandle {
    pub(crate) fn new(shared: Arc<Shared>) -> ServerHandle {
        ServerHandle { shared }
    }

    fn conn(&self, id: ConnId) -> Result<Arc<Conn>, SendError> {
        self.shared
            .registry
            .get(id)
            .ok_or(SendError::UnknownConnection)
    }

    /// Sends DATA to connection `id`.
    ///
    /// # Errors
    ///
    /// Unknown or closing connection, a full outbox (the connection is then
    /// closed as a slow consumer), or a payload its protocol cannot carry.
    pub fn send(&self, id: ConnId, payload: &[u8]) -> Result<(), SendError> {
        let conn = self.conn(id)?;
        let max = self.shared.config.max_frame;
        if payload.len() > max {
            return Err(SendError::TooLarge(max));
        }
        let mut wire = Vec::with_capacity(payload.len() + 8);
        conn.protocol
            .encode(&Message::Data(payload), &mut wire)
            .map_err(SendError::Encode)?;
        conn.out.push(id, &self.shared.flushes, &wire)?;
        Ok(())
    }

    /// Closes connection `id` with `code` and `reason` (cut to 123 bytes,
    /// line breaks made spaces). With 1001 (going away) the connection
    /// drains: CLOSE 1001 goes out now and the server answers until the
    /// client hangs up. With any other code the worker answers what it has
    /// read, sends the CLOSE, and hangs up.
    ///
    /// # Errors
    ///
    /// Unknown connection, or one already closing.
    pub fn close(&self, id: ConnId, code: u16, reason: &str) -> Result<(), SendError> {
        if !crate::protocol::close_code_allowed(code) {
            return Err(SendError::Encode(EncodeError::ForbiddenCloseCode(code)));
        }
        let conn = self.conn(id)?;
        let reason = clean_reason(reason);
        if code == code::GOING_AWAY {
            let frame = close_frame(
                conn.protocol,
                &CloseReason::Application {
                    code,
                    reason: reason.clone(),
                },
            )
            .expect("1001 may be sent");
            let _ = conn.app_close.set((code, reason));
            return match conn.out.drain(
                id,
                &self.shared.flushes,
                CloseRequest::ApplicationDrain,
                &frame,
            ) {
                Ok(_) => Ok(()),
                Err(DrainRefused::Requested | DrainRefused::Finishing) => Err(SendError::Closed),
            };
        }
        let _ = conn.app_close.set((code, reason));
        if conn.out.request_close(CloseRequest::Application) {
            Ok(())
        } else {
            Err(SendError::Closed)
        }
    }

    /// Subscribes connection `id` to `topic`: it receives
    /// `MSG <topic> <seq> <payload>` for every later publish.
    ///
    /// # Errors
    ///
    /// Unknown or closing connection, an invalid topic, or the subscription
    /// limit.
    pub fn subscribe(&self, id: ConnId, topic: &str) -> Result<(), SendError> {
        let conn = self.conn(id)?;
        let shared = &self.shared;
        shared.topics.subscribe(
            &shared.flushes,
            &conn,
            topic,
            None,
            false,
            shared.config.max_subscriptions,
            |_| Vec::new(),
        )?;
        Ok(())
    }

    /// Unsubscribes connection `id` from `topic`; whether it was subscribed.
    ///
    /// # Errors
    ///
    /// Unknown connection.
    pub fn unsubscribe(&self, id: ConnId, topic: &str) -> Result<bool, SendError> {
        let conn = self.conn(id)?;
        Ok(self
            .shared
            .topics
            .unsubscribe(&self.shared.flushes, &conn, topic))
    }

    /// Publishes `payload` to `topic`: numbers it, retains it (per
    /// [`Config::history`](crate::server::Config::history)), and writes or queues it
    /// to every subscriber.
    ///
    /// With [`Config::redis`](crate::server::Config::redis) the message is numbered
    /// and stored in Redis and reaches subscribers on every instance
    /// through it: [`Published::delivered`] is then 0.
    ///
    /// # Errors
    ///
    /// An invalid topic name, a payload too large for the topic
    /// ([`SendError::TooLarge`]), a new topic past the topic limit; with
    /// Redis, [`SendError::Unavailable`] when Redis did not take the
    /// message.
    pub fn publish(&self, topic: &str, payload: &[u8]) -> Result<Published, SendError> {
        self.publish_with(topic, None, payload)
    }

    /// As [`publish`](ServerHandle::publish), but safe to retry: a second
    /// publish with the same `id` to the same topic within
    /// [`Config::history_ttl`](crate::server::Config::history_ttl) is not
    /// published again, and gets the first one's number. What to send
    /// again after [`SendError::Unknown`].
    ///
    /// # Errors
    ///
    /// As for [`publish`](ServerHandle::publish), and an invalid `id`
    /// ([`SendError::InvalidId`]: see
    /// [`valid_publish_id`](crate::protocol::topic::valid_publish_id)).
    pub fn publish_once(
        &self,
        topic: &str,
        id: &str,
        payload: &[u8],
    ) -> Result<Published, SendError> {
        if !crate::protocol::topic::valid_publish_id(id) {
            return Err(SendError::InvalidId);
        }
        self.publish_with(topic, Some(id), payload)
    }

    fn publish_with(
        &self,
        topic: &str,
        id: Option<&str>,
        payload: &[u8],
    ) -> Result<Published, SendError> {
        if !valid_topic(topic) {
            return Err(SendError::InvalidTopic);
        }
        let shared = &self.shared;
        let published = shared
            .topics
            .publish(&shared.flushes, topic, id, payload, None)?;
        shared
            .metrics
            .count_publish(published.delivered, published.dropped);
        Ok(published)
    }

    /// The open connections authenticated as `sub`.
    pub fn user_connections(&self, sub: &str) -> Vec<ConnId> {
        self.shared
            .registry
            .snapshot()
            .iter()
            .filter(|c| c.identity.lock().as_ref().is_some_and(|i| i.sub == sub))
            .map(|c| c.id)
            .collect()
    }

    /// Sends DATA to every connection authenticated as `sub`; how many it
    /// reached, of how many there were.
    pub fn send_to_user(&self, sub: &str, payload: &[u8]) -> (usize, usize) {
        let ids = self.user_connections(sub);
        let sent = ids
            .iter()
            .filter(|&&id| self.send(id, payload).is_ok())
            .count();
        (sent, ids.len())
    }

    /// Closes every connection authenticated as `sub` (as
    /// [`close`](ServerHandle::close) does); how many.
    pub fn close_user(&self, sub: &str, code: u16, reason: &str) -> usize {
        self.user_connections(sub)
            .into_iter()
            .filter(|&id| self.close(id, code, reason).is_ok())
            .count()
    }

    /// Every open connection, oldest slot first.
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        self.shared
            .registry
            .snapshot()
            .iter()
            .map(|conn| ConnectionInfo::of(&self.shared, conn))
            .collect()
    }

    /// One connection, if it is open.
    pub fn connection(&self, id: ConnId) -> Option<ConnectionInfo> {
        let conn = self.shared.registry.get(id)?;
        Some(ConnectionInfo::of(&self.shared, &conn))
    }

    /// How many connections are open.
    pub fn connection_count(&self) -> usize {
        self.shared.registry.len()
    }

    /// Sends DATA to every open connection (as [`send`](ServerHandle::send)
    /// does, so never waiting on a peer); how many it reached, of how many
    /// there were. Connections closing, still in their handshake, or whose
    /// protocol cannot carry the payload are not reached.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use wheel_server::server::{Config, Server};
    ///
    /// let server = Server::start(Config::default())?;
    /// let handle = server.handle();
    /// std::thread::spawn(move || loop {
    ///     let (reached, open) = handle.broadcast(b"tick");
    ///     println!("tick to {reached} of {open}");
    ///     std::thread::sleep(Duration::from_secs(1));
    /// });
    /// server.run_until_signal()?;
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn broadcast(&self, payload: &[u8]) -> (usize, usize) {
        let conns = self.shared.registry.snapshot();
        let reached = conns
            .iter()
            .filter(|conn| self.send(conn.id, payload).is_ok())
            .count();
        (reached, conns.len())
    }

    /// Up to `limit` members of `topic` (its subscribers, with their users
    /// and when they joined) after the member `after` (its id as
    /// [`Member::id`](crate::server::Member::id) gives it), in the order
    /// they joined, with the totals. `limit` is capped at
    /// [`Config::presence_page`](crate::server::Config::presence_page). Without
    /// [`Config::redis`](crate::server::Config::redis), this instance's
    /// subscribers; with it, every instance's, read from Redis.
    ///
    /// # Errors
    ///
    /// With Redis, [`SendError::Unavailable`] when it did not answer.
    pub fn presence(
        &self,
        topic: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Members, SendError> {
        self.shared
            .topics
            .members(topic, after, limit)
            .map_err(|e| SendError::Unavailable(e.why))
    }

    /// Local subscribers of `topic`.
    pub fn subscribers(&self, topic: &str) -> usize {
        self.shared.topics.subscribers(topic)
    }

    /// Every topic with subscribers or retained messages, by name. With
    /// many topics, page through them with
    /// [`topics_after`](ServerHandle::topics_after) instead.
    pub fn topics(&self) -> Vec<TopicInfo> {
        self.shared.topics.list(None, usize::MAX).0
    }

    /// Up to `limit` topics named after `after` (from the first, without
    /// it), by name, and how many topics there are.
    pub fn topics_after(&self, after: Option<&str>, limit: usize) -> (Vec<TopicInfo>, usize) {
        self.shared.topics.list(after, limit)
    }
}
