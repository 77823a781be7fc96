//! The pub/sub service (`wheel-server --service pubsub`): every DATA message
//! is a command, every reply a DATA message. The same commands work in
//! frame mode (a DATA payload) and line mode (a line).
//!
//! | client sends | server answers |
//! |---|---|
//! | `SUB <topic>` | `OK SUB <topic> <last>`, then live messages |
//! | `SUB <topic> <since>` | `OK SUB <topic> <last> recovered` (or `... gap <first-missing>`), every retained message after `since`, then live ones |
//! | `SUB <topic> [<since>] presence` | as `SUB`, and from then on `JOIN`, `LEAVE`, `ONLINE`, `OFFLINE` as others come and go (docs/PROTOCOL.md, "Presence") |
//! | `WHO <topic> [<after>]` | a `MEMBER <topic> <conn> <user> <since-ms>` per member (at most 100, after connection `after`), then `OK WHO <topic> <connections> <users>` (`... more` if more follow) |
//! | `UNSUB <topic>` | `OK UNSUB <topic>` |
//! | `PUB <topic> <payload>` | `OK PUB <topic> <seq>`; subscribers get `MSG <topic> <seq> <payload>`; or `ERR too large: at most N bytes`, `ERR too many topics`, `ERR rate limited` |
//! | `PUBONCE <topic> <id> <payload>` | as `PUB`, but a retry with the same `id` is answered `OK PUB <topic> <seq>` of the first, not published again |
//! | `PING [text]` | `PONG [text]` |
//! | anything else | `ERR <reason>`; the connection stays open |

use std::str;

pub use crate::protocol::topic::personal_topic;
use crate::protocol::topic::{valid_publish_id, valid_topic};
use crate::server::conn::identity::Identity;
use crate::server::serve::handle::SendError;
use crate::server::serve::handler::{Handler, Session};
use crate::server::topics::Resumed;
use crate::server::topics::presence::{parse_member_id, show_user};

/// A parsed command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command<'a> {
    /// `SUB <topic> [<since>] [presence]`.
    Sub {
        /// The topic.
        topic: &'a str,
        /// Resume after this sequence number.
        since: Option<u64>,
        /// Watch the topic's presence: joins and leaves.
        presence: bool,
    },
    /// `WHO <topic> [<after>]`: the topic's members.
    Who {
        /// The topic.
        topic: &'a str,
        /// List those after this member (`<conn>` or `<conn>@<instance>`).
        after: Option<&'a str>,
    },
    /// `UNSUB <topic>`.
    Unsub {
        /// The topic.
        topic: &'a str,
    },
    /// `PUB <topic> <payload>`.
    Pub {
        /// The topic.
        topic: &'a str,
        /// Everything after the topic and one space (may be empty).
        payload: &'a [u8],
    },
    /// `PUBONCE <topic> <id> <payload>`: a publish that is safe to retry.
    /// A second publish with the same `id` to the same topic (within
    /// `--history-ttl`) is not published again: it is answered with the
    /// first one's number.
    PubOnce {
        /// The topic.
        topic: &'a str,
        /// The publisher's id for this message (see [`valid_publish_id`]).
        id: &'a str,
        /// Everything after the id and one space (may be empty).
        payload: &'a [u8],
    },
    /// `PING [text]`.
    Ping(&'a [u8]),
}

/// Parses one command. Tokens are separated by single spaces; a payload is
/// the rest of the message.
///
/// # Errors
///
/// The reason sent back after `ERR `.
///
/// # Examples
///
/// ```
/// use wheel_server::server::pubsub::{Command, parse_command};
///
/// assert_eq!(
///     parse_command(b"PUB chat:1 hello there"),
///     Ok(Command::Pub { topic: "chat:1", payload: b"hello there" })
/// );
/// assert_eq!(parse_command(b"SUB a b"), Err("invalid sequence number"));
/// ```
pub fn parse_command(msg: &[u8]) -> Result<Command<'_>, &'static str> {
    let (verb, rest) = split(msg);
    match verb {
        b"SUB" => {
            let (topic, rest) = split(rest.ok_or("missing topic")?);
            let topic = topic_of(topic)?;
            let (since, presence) = match rest {
                None => (None, false),
                Some(b"presence") => (None, true),
                Some(rest) => {
                    let (since, flag) = split(rest);
                    let presence = match flag {
                        None => false,
                        Some(b"presence") => true,
                        Some(_) => return Err("invalid sequence number"),
                    };
                    let since = str::from_utf8(since)
                        .ok()
                        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                        .and_then(|s| s.parse().ok())
                        .ok_or("invalid sequence number")?;
                    (Some(since), presence)
                }
            };
            Ok(Command::Sub {
                topic,
                since,
                presence,
            })
        }
        b"WHO" => {
            let (topic, rest) = split(rest.ok_or("missing topic")?);
            let topic = topic_of(topic)?;
            let after = match rest {
                None => None,
                Some(after) => Some(
                    str::from_utf8(after)
                        .ok()
                        .filter(|a| parse_member_id(a).is_some())
                        .ok_or("invalid member id")?,
                ),
            };
            Ok(Command::Who { topic, after })
        }
        b"UNSUB" => {
            let (topic, rest) = split(rest.ok_or("missing topic")?);
            if rest.is_some() {
                return Err("UNSUB takes one topic");
            }
            Ok(Command::Unsub {
                topic: topic_of(topic)?,
            })
        }
        b"PUB" => {
            let (topic, payload) = split(rest.ok_or("missing topic")?);
            Ok(Command::Pub {
                topic: topic_of(topic)?,
                payload: payload.unwrap_or_default(),
            })
        }
        b"PUBONCE" => {
            let (topic, rest) = split(rest.ok_or("missing topic")?);
            let topic = topic_of(topic)?;
            let (id, payload) = split(rest.ok_or("missing id")?);
            let id = str::from_utf8(id)
                .ok()
                .filter(|id| valid_publish_id(id))
                .ok_or("invalid id")?;
            Ok(Command::PubOnce {
                topic,
                id,
                payload: payload.unwrap_or_default(),
            })
        }
        b"PING" => Ok(Command::Ping(rest.unwrap_or_default())),
        _ => Err("unknown command"),
    }
}

/// The first token and, after one space, the rest (if there was a space).
fn split(bytes: &[u8]) -> (&[u8], Option<&[u8]>) {
    match bytes.iter().position(|&b| b == b' ') {
        Some(i) => (&bytes[..i], Some(&bytes[i + 1..])),
        None => (bytes, None),
    }
}

fn topic_of(bytes: &[u8]) -> Result<&str, &'static str> {
    str::from_utf8(bytes)
        .ok()
        .filter(|t| valid_topic(t))
        .ok_or("invalid topic")
}

/// The pub/sub service (see the module docs).
#[derive(Clone, Copy, Debug, Default)]
pub struct PubSub;

impl Handler for PubSub {
    /// Subscribes the connection to its subject's personal topic, when the
    /// subject's name makes a valid topic.
    fn on_authenticated(&self, session: &mut Session<'_>, identity: &Identity) {
        let topic = personal_topic(&identity.sub);
        if valid_topic(&topic) {
            subscribe(session, &topic, None, false);
        }
    }

    fn on_data(&self, session: &mut Session<'_>, payload: &[u8]) {
        let command = parse_command(payload);
        // An authenticated subject may use only its own `user:` topic and
        // those its token allows.
        let forbidden = match &command {
            Ok(
                Command::Sub { topic, .. }
                | Command::Who { topic, .. }
                | Command::Pub { topic, .. }
                | Command::PubOnce { topic, .. },
            ) => session.with_identity(|identity| identity.is_some_and(|id| !id.may_use(topic))),
            _ => false,
        };
        if forbidden {
            let _ = session.send(b"ERR forbidden topic");
            return;
        }
        let reply = match command {
            Ok(Command::Sub {
                topic,
                since,
                presence,
            }) => return subscribe(session, topic, since, presence),
            Ok(Command::Who { topic, after }) => return who(session, topic, after),
            Ok(Command::Unsub { topic }) => {
                session.unsubscribe(topic);
                format!("OK UNSUB {topic}").into_bytes()
            }
            Ok(Command::Pub { topic, payload }) => return publish(session, topic, None, payload),
            Ok(Command::PubOnce { topic, id, payload }) => {
                return publish(session, topic, Some(id), payload);
            }
            Ok(Command::Ping(text)) => {
                [&b"PONG"[..], if text.is_empty() { b"" } else { b" " }, text].concat()
            }
            Err(reason) => format!("ERR {reason}").into_bytes(),
        };
        if session.send(&reply).is_err() {
            // Only a PONG can fail (text with a line break in line mode,
            // which the line itself could not have held).
            let _ = session.send(b"ERR cannot echo that text");
        }
    }
}

/// `PUB`/`PUBONCE`: the replies queued so far go out first, then `OK PUB
/// <topic> <seq>` and (to every subscriber, the publisher too if
/// subscribed) `MSG`, in that order.
fn publish(session: &mut Session<'_>, topic: &str, id: Option<&str>, payload: &[u8]) {
    let ack = |seq: u64| format!("OK PUB {topic} {seq}").into_bytes();
    match session.publish(topic, id, payload, ack) {
        // Closed: nothing more to say (a connection publishing too fast
        // gets its CLOSE 1008).
        Ok(_) | Err(SendError::Closed) => {}
        Err(e) => {
            let _ = session.send(format!("ERR {e}").as_bytes());
        }
    }
}

/// `WHO`: a `MEMBER` line per member (a page), then `OK WHO`.
fn who(session: &mut Session<'_>, topic: &str, after: Option<&str>) {
    // A page as long as the server allows (--presence-page).
    let page = match session.server().presence(topic, after, usize::MAX) {
        Ok(page) => page,
        Err(e) => {
            let _ = session.send(format!("ERR {e}").as_bytes());
            return;
        }
    };
    for m in &page.members {
        let line = format!(
            "MEMBER {topic} {} {} {}",
            m.id(),
            show_user(m.user.as_deref()),
            m.since_ms
        );
        if session.send(line.as_bytes()).is_err() {
            return;
        }
    }
    let more = if page.more { " more" } else { "" };
    let _ = session
        .send(format!("OK WHO {topic} {} {}{more}", page.connections, page.users).as_bytes());
}

/// `SUB`: the replies queued so far go out first, then (under the topic's
/// lock, so no live message can come between) the OK and the replay.
fn subscribe(session: &mut Session<'_>, topic: &str, since: Option<u64>, presence: bool) {
    let ack = |resumed| {
        match resumed {
            Resumed::Live { last } => format!("OK SUB {topic} {last}"),
            Resumed::Recovered { last } => format!("OK SUB {topic} {last} recovered"),
            Resumed::Gap {
                last,
                first_missing,
            } => format!("OK SUB {topic} {last} gap {first_missing}"),
        }
        .into_bytes()
    };
    let subscribed = if presence {
        session.subscribe_watching(topic, since, ack)
    } else {
        session.subscribe(topic, since, ack)
    };
    match subscribed {
        Ok(_) | Err(SendError::Closed) => {}
        Err(e) => {
            let _ = session.send(format!("ERR {e}").as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn commands_and_their_errors() {
        assert_eq!(
            parse_command(b"SUB news"),
            Ok(Command::Sub {
                topic: "news",
                since: None,
                presence: false
            })
        );
        assert_eq!(
            parse_command(b"SUB a/b:c.d_e-f 42"),
            Ok(Command::Sub {
                topic: "a/b:c.d_e-f",
                since: Some(42),
                presence: false
            })
        );
        assert_eq!(
            parse_command(b"SUB news presence"),
            Ok(Command::Sub {
                topic: "news",
                since: None,
                presence: true
            })
        );
        assert_eq!(
            parse_command(b"SUB news 7 presence"),
            Ok(Command::Sub {
                topic: "news",
                since: Some(7),
                presence: true
            })
        );
        assert_eq!(
            parse_command(b"WHO news"),
            Ok(Command::Who {
                topic: "news",
                after: None
            })
        );
        assert_eq!(
            parse_command(b"WHO news 3.1"),
            Ok(Command::Who {
                topic: "news",
                after: Some("3.1")
            })
        );
        assert_eq!(
            parse_command(b"UNSUB news"),
            Ok(Command::Unsub { topic: "news" })
        );
        assert_eq!(
            parse_command(b"PUB news  two spaces"),
            Ok(Command::Pub {
                topic: "news",
                payload: b" two spaces"
            })
        );
        assert_eq!(
            parse_command(b"PUB news"),
            Ok(Command::Pub {
                topic: "news",
                payload: b""
            })
        );
        assert_eq!(parse_command(b"PING"), Ok(Command::Ping(b"")));
        assert_eq!(parse_command(b"PING x y"), Ok(Command::Ping(b"x y")));
        for (bad, why) in [
            (&b""[..], "unknown command"),
            (b"sub news", "unknown command"),
            (b"SUB", "missing topic"),
            (b"SUB ", "invalid topic"),
            (b"SUB bad! 1", "invalid topic"),
            (b"SUB news -1", "invalid sequence number"),
            (b"SUB news 1 2", "invalid sequence number"),
            (
                b"SUB news 99999999999999999999999",
                "invalid sequence number",
            ),
            (b"UNSUB a b", "UNSUB takes one topic"),
            (b"SUB news 7 watch", "invalid sequence number"),
            (b"SUB news presence 7", "invalid sequence number"),
            (b"WHO", "missing topic"),
            (b"WHO news x", "invalid member id"),
            (b"PUB", "missing topic"),
            (b"PUB \xff x", "invalid topic"),
        ] {
            assert_eq!(
                parse_command(bad),
                Err(why),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!("SUB {}", "t".repeat(129));
        assert_eq!(parse_command(long.as_bytes()), Err("invalid topic"));
        let longest = format!("SUB {}", "t".repeat(128));
        assert!(parse_command(longest.as_bytes()).is_ok());
    }

    proptest! {
        /// Any bytes: a command or an error, never a panic; a parsed topic is
        /// always valid, and a PUB payload is the message's tail.
        #[test]
        fn any_bytes_parse_or_are_refused(msg in proptest::collection::vec(any::<u8>(), 0..200)) {
            match parse_command(&msg) {
                Ok(Command::Sub { topic, .. } | Command::Unsub { topic } | Command::Who { topic, .. }) => prop_assert!(valid_topic(topic)),
                Ok(Command::Pub { topic, payload }) => {
                    prop_assert!(valid_topic(topic));
                    prop_assert!(msg.ends_with(payload));
                }
                Ok(Command::PubOnce { topic, id, payload }) => {
                    prop_assert!(valid_topic(topic) && valid_publish_id(id));
                    prop_assert!(msg.ends_with(payload));
                }
                Ok(Command::Ping(text)) => prop_assert!(msg.ends_with(text)),
                Err(why) => prop_assert!(!why.is_empty()),
            }
        }
    }
}
