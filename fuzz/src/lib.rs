//! What the fuzz targets check, shared by both.

use wheel_server::protocol::{Decoder, Protocol};

/// Feeds `data` to a decoder: it must never panic, must consume something
/// for every message it returns, and must never ask for more than
/// `max_message_len` bytes to be buffered.
pub fn decode_all(protocol: Protocol, data: &[u8]) {
    let mut decoder = Decoder::new(protocol, 256);
    let mut rest = data;
    loop {
        match decoder.decode(rest) {
            Ok(Some((_, used))) => {
                assert!(used > 0 && used <= rest.len());
                rest = &rest[used..];
            }
            Ok(None) => {
                assert!(rest.len() < decoder.max_message_len());
                return;
            }
            Err(_) => return,
        }
    }
}

/// Encodes `data` as each kind of message in each protocol: an encoding
/// that succeeds must decode back to exactly that message, as one message
/// using every byte written (so no payload can inject another message).
pub fn encode_round_trip(data: &[u8]) {
    use wheel_server::protocol::{Message, OwnedMessage, Reader};
    let reason = String::from_utf8_lossy(data);
    let ping = &data[..data.len().min(wheel_server::protocol::MAX_PING_PAYLOAD)];
    let msgs = [
        Message::Data(data),
        Message::Ping(ping),
        Message::Pong(data),
        Message::Close {
            code: 1000,
            reason: &reason,
        },
    ];
    for protocol in Protocol::ALL {
        for msg in msgs {
            let mut wire = Vec::new();
            if protocol.encode(&msg, &mut wire).is_err() {
                assert!(wire.is_empty(), "a refused message writes nothing");
                continue;
            }
            let mut reader = Reader::new(protocol, 1 << 20);
            reader.extend(&wire);
            assert_eq!(reader.next_message(), Ok(Some(OwnedMessage::from(msg))));
            assert!(!reader.has_partial());
        }
    }
}

/// Reads `data` as a WebSocket upgrade request under a policy with a path
/// and an origin list: never panics; an accepted request is whole, within
/// the size bound, and answered 101; a refusal is an HTTP error; only a
/// request shorter than the bound can be incomplete.
pub fn upgrade(data: &[u8]) {
    use wheel_server::server::upgrade::{MAX_REQUEST, Policy, Upgrade, upgrade};
    let origins = ["https://app.example".to_owned()];
    for policy in [
        Policy::default(),
        Policy {
            path: Some("/ws"),
            origins: &origins,
        },
    ] {
        match upgrade(data, policy) {
            Upgrade::Incomplete => assert!(data.len() < MAX_REQUEST),
            Upgrade::Accept { response, len, .. } => {
                assert!(len <= data.len() && len <= MAX_REQUEST);
                assert!(response.starts_with(b"HTTP/1.1 101 "));
            }
            Upgrade::Refuse(refusal) => {
                assert!((400..600).contains(&refusal.status));
                let head = format!("HTTP/1.1 {} ", refusal.status);
                assert!(refusal.response.starts_with(head.as_bytes()));
            }
        }
    }
}

/// Parses `data` as a pub/sub command: never panics; a parsed topic is
/// valid; a payload is the command's tail.
pub fn parse_command(data: &[u8]) {
    use wheel_server::server::pubsub::{Command, parse_command};
    use wheel_server::server::valid_topic;
    match parse_command(data) {
        Ok(Command::Sub { topic, .. } | Command::Unsub { topic }) => assert!(valid_topic(topic)),
        Ok(Command::Who { topic, after }) => {
            assert!(valid_topic(topic));
            // A member id reads back as it is written.
            if let Some(after) = after {
                let (conn, instance) = wheel_server::server::parse_member_id(after)
                    .expect("WHO takes only member ids");
                assert_eq!(wheel_server::server::member_id(conn, instance), after);
            }
        }
        Ok(Command::Pub { topic, payload }) => {
            assert!(valid_topic(topic));
            assert!(data.ends_with(payload));
        }
        Ok(Command::PubOnce { topic, id, payload }) => {
            assert!(valid_topic(topic));
            assert!(wheel_server::protocol::topic::valid_publish_id(id));
            assert!(data.ends_with(payload));
        }
        Ok(Command::Ping(text)) => assert!(data.ends_with(text)),
        Err(why) => assert!(!why.is_empty()),
    }
}
