//! The names of topics and publish ids (docs/PROTOCOL.md, "Pub/sub"): what
//! a `SUB`, `PUB` or `PUBONCE` may name, and the personal topic of an
//! authenticated subject.

/// The longest topic name, in bytes.
pub const MAX_TOPIC_LEN: usize = 128;

/// The bytes a topic name may hold beside ASCII letters and digits. `@`
/// and `|` are there for the subjects tokens carry most (e-mail
/// addresses, `auth0|5f1...`), `+` and `=` for base64, and `%` for the
/// escapes of [`personal_topic`].
pub const TOPIC_PUNCTUATION: &[u8] = b"._-:/@|+=%";

/// Whether `name` is a valid topic: 1 to [`MAX_TOPIC_LEN`] bytes of
/// `A-Z a-z 0-9` and [`TOPIC_PUNCTUATION`].
pub fn valid_topic(name: &str) -> bool {
    (1..=MAX_TOPIC_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || TOPIC_PUNCTUATION.contains(&b))
}

/// The personal topic of an authenticated subject, subscribed to by
/// itself on every connection of that subject: `user:<sub>`, with every
/// byte a topic cannot hold (a space, say) and `%` itself written `%XX`.
/// E-mail addresses and `auth0|...` subjects stay as they are. A subject
/// whose topic would pass [`MAX_TOPIC_LEN`] has none.
///
/// # Examples
///
/// ```
/// use wheel_server::protocol::topic::personal_topic;
///
/// assert_eq!(personal_topic("alice@example.com"), "user:alice@example.com");
/// assert_eq!(personal_topic("auth0|5f1"), "user:auth0|5f1");
/// assert_eq!(personal_topic("Jo Do 100%"), "user:Jo%20Do%20100%25");
/// ```
pub fn personal_topic(sub: &str) -> String {
    use std::fmt::Write;
    let mut topic = String::from("user:");
    for b in sub.bytes() {
        if b.is_ascii_alphanumeric() || (b != b'%' && TOPIC_PUNCTUATION.contains(&b)) {
            topic.push(char::from(b));
        } else {
            let _ = write!(topic, "%{b:02X}");
        }
    }
    topic
}

/// Whether `id` may name a `PUBONCE` (or an HTTP `Idempotency-Key`): 1 to
/// 64 bytes of `A-Z a-z 0-9 . _ - :`.
pub fn valid_publish_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:".contains(&b))
}
