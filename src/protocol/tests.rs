use super::*;
use proptest::prelude::*;

/// An owned copy of a decoded message (or the error that ended the stream).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Owned {
    Msg(OwnedMessage),
    Err(DecodeError),
}

fn own(msg: &Message<'_>) -> Owned {
    Owned::Msg(OwnedMessage::from(*msg))
}

/// Feeds `input` to a decoder in chunks ending at `cuts`, the way a
/// connection's read loop does, and returns what came out. Also checks that
/// the decoder never needs more than `max_message_len` bytes buffered.
fn decode_in_chunks(protocol: Protocol, max: usize, input: &[u8], cuts: &[usize]) -> Vec<Owned> {
    let mut decoder = Decoder::new(protocol, max);
    let mut buffer: Vec<u8> = Vec::new();
    let mut out = Vec::new();
    let mut ends: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    ends.push(input.len());
    ends.sort_unstable();
    let mut fed = 0;
    for end in ends {
        buffer.extend_from_slice(&input[fed..end]);
        fed = end;
        loop {
            match decoder.decode(&buffer) {
                Ok(Some((msg, used))) => {
                    out.push(own(&msg));
                    buffer.drain(..used);
                }
                Ok(None) => {
                    assert!(
                        buffer.len() < decoder.max_message_len(),
                        "decoder wants more than {} bytes buffered ({} held)",
                        decoder.max_message_len(),
                        buffer.len()
                    );
                    break;
                }
                Err(e) => {
                    out.push(Owned::Err(e));
                    return out;
                }
            }
        }
    }
    out
}

fn one(protocol: Protocol, max: usize, input: &[u8]) -> Result<Option<Owned>, DecodeError> {
    Decoder::new(protocol, max)
        .decode(input)
        .map(|m| m.map(|(msg, _)| own(&msg)))
}

fn frame(len: u32, kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = len.to_be_bytes().to_vec();
    v.push(kind);
    v.extend_from_slice(payload);
    v
}

#[test]
fn frame_round_trip() {
    let msgs = [
        Message::Data(b""),
        Message::Data(b"hello"),
        Message::Ping(&[7; MAX_PING_PAYLOAD]),
        Message::Pong(b"x"),
        Message::Close {
            code: code::IDLE_TIMEOUT,
            reason: "idle timeout",
        },
    ];
    let mut wire = Vec::new();
    for m in &msgs {
        Protocol::Frame.encode(m, &mut wire).unwrap();
    }
    let got = decode_in_chunks(Protocol::Frame, 1024, &wire, &[]);
    assert_eq!(got, msgs.iter().map(own).collect::<Vec<_>>());
}

#[test]
fn frame_layout_matches_the_spec() {
    let mut wire = Vec::new();
    Protocol::Frame
        .encode(&Message::Ping(b"ab"), &mut wire)
        .unwrap();
    assert_eq!(wire, [0, 0, 0, 3, 0x02, b'a', b'b']);
    wire.clear();
    Protocol::Frame
        .encode(
            &Message::Close {
                code: 1000,
                reason: "x",
            },
            &mut wire,
        )
        .unwrap();
    assert_eq!(wire, [0, 0, 0, 4, 0x04, 0x03, 0xe8, b'x']);
}

#[test]
fn frame_errors_and_their_codes() {
    let e = one(Protocol::Frame, 100, &frame(0, 1, b"")).unwrap_err();
    assert_eq!((e.clone(), e.close_code()), (DecodeError::EmptyFrame, 1002));
    let e = one(Protocol::Frame, 100, &frame(1, 9, b"")).unwrap_err();
    assert_eq!(
        (e.clone(), e.close_code()),
        (DecodeError::UnknownType(9), 1002)
    );
    let e = one(Protocol::Frame, 1000, &frame(127, 2, &[0; 126])).unwrap_err();
    assert_eq!(
        (e.clone(), e.close_code()),
        (DecodeError::PingTooLong(126), 1002)
    );
    let e = one(Protocol::Frame, 100, &frame(2, 4, b"x")).unwrap_err();
    assert_eq!(e, DecodeError::MalformedClose);
    let e = one(Protocol::Frame, 100, &frame(4, 4, &[3, 232, 0xff])).unwrap_err();
    assert_eq!(e, DecodeError::MalformedClose);
}

#[test]
fn oversized_frame_is_rejected_from_its_header_alone() {
    let e = one(Protocol::Frame, 100, &101u32.to_be_bytes()).unwrap_err();
    assert_eq!(e, DecodeError::TooBig { len: 101, max: 100 });
    assert_eq!(e.close_code(), 1009);
    // Exactly max_frame is fine.
    assert_eq!(one(Protocol::Frame, 100, &100u32.to_be_bytes()), Ok(None));
}

#[test]
fn errors_that_need_only_the_type_byte_do_not_wait_for_the_body() {
    let e = one(Protocol::Frame, 10_000, &[0, 0, 1, 0, 0x09]).unwrap_err();
    assert_eq!(e, DecodeError::UnknownType(9));
    let e = one(Protocol::Frame, 10_000, &[0, 0, 1, 0, 0x02]).unwrap_err();
    assert_eq!(e, DecodeError::PingTooLong(255));
}

#[test]
fn partial_frames_need_more() {
    let wire = frame(6, 1, b"hello");
    for cut in 0..wire.len() {
        assert_eq!(
            one(Protocol::Frame, 100, &wire[..cut]),
            Ok(None),
            "cut at {cut}"
        );
    }
}

#[test]
fn line_commands() {
    let got = decode_in_chunks(
        Protocol::Line,
        100,
        b"PING\nPING hi there\r\nPONG\nQUIT\nCLOSE 4000 idle timeout\nPINGS\nhello\r\n\n",
        &[],
    );
    assert_eq!(
        got,
        vec![
            Owned::Msg(OwnedMessage::Ping(b"".to_vec())),
            Owned::Msg(OwnedMessage::Ping(b"hi there".to_vec())),
            Owned::Msg(OwnedMessage::Pong(b"".to_vec())),
            Owned::Msg(OwnedMessage::Close(1000, "quit".into())),
            Owned::Msg(OwnedMessage::Close(4000, "idle timeout".into())),
            Owned::Msg(OwnedMessage::Data(b"PINGS".to_vec())),
            Owned::Msg(OwnedMessage::Data(b"hello".to_vec())),
            Owned::Msg(OwnedMessage::Data(b"".to_vec())),
        ]
    );
}

#[test]
fn line_encoding() {
    let mut out = Vec::new();
    Protocol::Line
        .encode(&Message::Pong(b""), &mut out)
        .unwrap();
    Protocol::Line
        .encode(&Message::Pong(b"abc"), &mut out)
        .unwrap();
    Protocol::Line
        .encode(
            &Message::Close {
                code: 1000,
                reason: "bye",
            },
            &mut out,
        )
        .unwrap();
    Protocol::Line
        .encode(&Message::Data(b"echo"), &mut out)
        .unwrap();
    assert_eq!(out, b"PONG\nPONG abc\nCLOSE 1000 bye\necho\n");
}

#[test]
fn close_codes_that_must_never_be_sent_are_refused_both_ways() {
    for code in [0, 999, 1004, 1005, 1006, 1015] {
        let close = Message::Close { code, reason: "" };
        for protocol in Protocol::ALL {
            let mut out = Vec::new();
            assert_eq!(
                protocol.encode(&close, &mut out),
                Err(EncodeError::ForbiddenCloseCode(code))
            );
        }
        let mut frame = vec![0, 0, 0, 3, frame::CLOSE];
        frame.extend_from_slice(&code.to_be_bytes());
        assert_eq!(
            one(Protocol::Frame, 100, &frame),
            Err(DecodeError::ForbiddenCloseCode(code))
        );
        assert_eq!(
            one(Protocol::Line, 100, format!("CLOSE {code}\n").as_bytes()),
            Err(DecodeError::ForbiddenCloseCode(code))
        );
    }
    for code in [1000, 1001, 1003, 1007, 1011, 3000, 4000, 4999] {
        assert!(close_code_allowed(code), "{code}");
    }
}

#[test]
fn line_length_limit() {
    // max_frame bytes, with or without "\r", is fine.
    assert!(matches!(one(Protocol::Line, 4, b"abcd\r\n"), Ok(Some(_))));
    assert_eq!(one(Protocol::Line, 4, b"abcd\r"), Ok(None));
    // One byte more is too big, with or without the newline.
    assert!(one(Protocol::Line, 4, b"abcde\n").unwrap_err().is_too_big());
    assert!(one(Protocol::Line, 4, b"abcdef").unwrap_err().is_too_big());
}

fn message() -> impl Strategy<Value = OwnedMessage> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(OwnedMessage::Data),
        proptest::collection::vec(any::<u8>(), 0..=MAX_PING_PAYLOAD).prop_map(OwnedMessage::Ping),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(OwnedMessage::Pong),
        ("[a-z ]{0,20}", sendable_code()).prop_map(|(r, c)| OwnedMessage::Close(c, r)),
    ]
}

fn sendable_code() -> impl Strategy<Value = u16> {
    any::<u16>().prop_filter("a code that may be sent", |&c| close_code_allowed(c))
}

fn encode_owned(protocol: Protocol, msg: &OwnedMessage, out: &mut Vec<u8>) {
    protocol.encode(&msg.as_message(), out).unwrap();
}

proptest! {
    /// Valid frames survive any split and come out as they went in.
    #[test]
    fn frames_decode_the_same_however_split(
        msgs in proptest::collection::vec(message(), 0..20),
        cuts in proptest::collection::vec(any::<usize>(), 0..30),
    ) {
        let mut wire = Vec::new();
        for m in &msgs {
            encode_owned(Protocol::Frame, m, &mut wire);
        }
        let expected: Vec<Owned> = msgs.iter().cloned().map(Owned::Msg).collect();
        prop_assert_eq!(decode_in_chunks(Protocol::Frame, 1 << 16, &wire, &cuts), expected);
    }

    /// Arbitrary bytes, whole or split anywhere, give the same messages and
    /// the same error, without panicking and without the decoder needing
    /// more than max_message_len bytes buffered.
    #[test]
    fn arbitrary_bytes_decode_the_same_however_split(
        protocol in prop_oneof![Just(Protocol::Frame), Just(Protocol::Line)],
        max in 1usize..64,
        input in proptest::collection::vec(any::<u8>(), 0..400),
        cuts in proptest::collection::vec(any::<usize>(), 0..30),
    ) {
        let whole = decode_in_chunks(protocol, max, &input, &[]);
        let split = decode_in_chunks(protocol, max, &input, &cuts);
        prop_assert_eq!(whole, split);
    }

    /// Line-mode input made mostly of newlines and command words.
    #[test]
    fn lines_decode_the_same_however_split(
        parts in proptest::collection::vec(prop_oneof![
            Just(b"PING".to_vec()), Just(b"PONG x".to_vec()), Just(b"\n".to_vec()),
            Just(b"\r\n".to_vec()), Just(b"QUIT".to_vec()), Just(b"CLOSE 1001 bye".to_vec()),
            "[a-z]{0,12}".prop_map(String::into_bytes),
        ], 0..40),
        cuts in proptest::collection::vec(any::<usize>(), 0..30),
    ) {
        let input = parts.concat();
        let whole = decode_in_chunks(Protocol::Line, 32, &input, &[]);
        let split = decode_in_chunks(Protocol::Line, 32, &input, &cuts);
        prop_assert_eq!(whole, split);
    }

    /// Line mode either refuses a message or writes one line that reads
    /// back as exactly that message: no payload can inject a line or pass
    /// for a command.
    #[test]
    fn line_mode_encodes_only_what_reads_back_the_same(
        msg in prop_oneof![
            proptest::collection::vec(prop_oneof![Just(b'\n'), Just(b'\r'), Just(b' '), any::<u8>()], 0..40)
                .prop_map(OwnedMessage::Data),
            prop_oneof![
                Just(b"PING".to_vec()), Just(b"PING x".to_vec()), Just(b"QUIT".to_vec()),
                Just(b"CLOSE 1000 bye".to_vec()), Just(b"CLOSE x".to_vec()), Just(b"PONG\r".to_vec()),
            ].prop_map(OwnedMessage::Data),
            proptest::collection::vec(any::<u8>(), 0..=MAX_PING_PAYLOAD).prop_map(OwnedMessage::Ping),
            proptest::collection::vec(any::<u8>(), 0..40).prop_map(OwnedMessage::Pong),
            ("[a-z \r\n]{0,20}", sendable_code()).prop_map(|(r, c)| OwnedMessage::Close(c, r)),
        ],
    ) {
        let mut wire = Vec::new();
        match Protocol::Line.encode(&msg.as_message(), &mut wire) {
            Ok(()) => {
                let mut reader = Reader::new(Protocol::Line, 1 << 16);
                reader.extend(&wire);
                prop_assert_eq!(reader.next_message(), Ok(Some(msg)));
                prop_assert!(!reader.has_partial(), "one line, wholly consumed");
            }
            Err(e) => {
                prop_assert!(wire.is_empty());
                let text = match &msg {
                    OwnedMessage::Data(p) | OwnedMessage::Ping(p) | OwnedMessage::Pong(p) => p.clone(),
                    OwnedMessage::Close(_, r) => r.clone().into_bytes(),
                };
                match e {
                    EncodeError::LineBreak => prop_assert!(text.contains(&b'\n') || text.contains(&b'\r')),
                    EncodeError::ReadsAsCommand => {
                        let OwnedMessage::Data(p) = &msg else { panic!("only DATA can read as a command") };
                        prop_assert!(!matches!(line::decode(&[p.as_slice(), b"\n"].concat(), 1 << 16, &mut 0), Ok(Some((Message::Data(_), _)))));
                    }
                    other => prop_assert!(false, "unexpected {other:?}"),
                }
            }
        }
    }
}

/// A client's WebSocket frame built byte by byte, so that tests can break
/// any rule: `first` is FIN/RSV/opcode, the payload is masked with `mask`
/// when given.
fn ws_frame(first: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![first];
    let masked = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => out.push(masked | n as u8),
        n @ 126..=0xffff => {
            out.push(masked | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(masked | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let start = out.len();
    if let Some(mask) = mask {
        out.extend_from_slice(&mask);
    }
    out.extend_from_slice(payload);
    if let Some(mask) = mask {
        for (i, b) in out[start + 4..].iter_mut().enumerate() {
            *b ^= mask[i & 3];
        }
    }
    out
}

const MASK: Option<[u8; 4]> = Some([0x37, 0xfa, 0x21, 0x3d]);

fn ws(input: &[u8]) -> Vec<Owned> {
    decode_in_chunks(Protocol::Ws, 64, input, &[])
}

#[test]
fn ws_decodes_the_rfc_examples() {
    // RFC 6455 section 5.7: a masked "Hello", and unmasked from a server.
    let masked = [
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    assert_eq!(
        ws(&masked),
        vec![Owned::Msg(OwnedMessage::Data(b"Hello".to_vec()))]
    );
    let mut wire = Vec::new();
    Protocol::Ws
        .encode(&Message::Data(b"Hello"), &mut wire)
        .unwrap();
    assert_eq!(wire, [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
    let mut reader = Reader::new(Protocol::Ws, 64);
    reader.extend(&wire);
    assert_eq!(
        reader.next_message(),
        Ok(Some(OwnedMessage::Data(b"Hello".to_vec())))
    );
    // A fragmented unmasked text message is refused by a server...
    let fragments = [0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f];
    assert_eq!(
        ws(&fragments),
        vec![Owned::Err(DecodeError::WebSocket("unmasked client frame"))]
    );
    // ...and read by a client.
    let mut reader = Reader::new(Protocol::Ws, 64);
    reader.extend(&fragments);
    assert_eq!(
        reader.next_message(),
        Ok(Some(OwnedMessage::Data(b"Hello".to_vec())))
    );
    assert!(!reader.has_partial());
}

#[test]
fn ws_data_is_text_when_utf8_and_replies_keep_a_binary_opcode() {
    let opcode = |wire: &[u8]| wire[0] & 0x0f;
    let mut wire = Vec::new();
    Protocol::Ws
        .encode(&Message::Data("héllo".as_bytes()), &mut wire)
        .unwrap();
    assert_eq!(opcode(&wire), 0x1);
    wire.clear();
    Protocol::Ws
        .encode(&Message::Data(&[0xff, 0x00]), &mut wire)
        .unwrap();
    assert_eq!(opcode(&wire), 0x2);
    wire.clear();
    Protocol::Ws
        .encode_reply(b"text but binary", true, &mut wire)
        .unwrap();
    assert_eq!(opcode(&wire), 0x2);
    // The decoder says which a message was.
    let mut decoder = Decoder::new(Protocol::Ws, 64);
    let binary = ws_frame(0x82, b"abc", MASK);
    let decoded = decoder.decode_message(&binary).unwrap().unwrap();
    assert_eq!(
        (decoded.message, decoded.binary),
        (Message::Data(b"abc"), true)
    );
    let text = ws_frame(0x81, b"abc", MASK);
    let decoded = decoder.decode_message(&text).unwrap().unwrap();
    assert_eq!(
        (decoded.message, decoded.binary),
        (Message::Data(b"abc"), false)
    );
}

#[test]
fn ws_control_frames_map_to_ping_pong_and_close() {
    let close = |payload: &[u8]| ws(&ws_frame(0x88, payload, MASK));
    assert_eq!(
        ws(&ws_frame(0x89, b"hb", MASK)),
        vec![Owned::Msg(OwnedMessage::Ping(b"hb".to_vec()))]
    );
    assert_eq!(
        ws(&ws_frame(0x8a, b"", MASK)),
        vec![Owned::Msg(OwnedMessage::Pong(Vec::new()))]
    );
    assert_eq!(
        close(&[0x03, 0xe8, b'o', b'k']),
        vec![Owned::Msg(OwnedMessage::Close(1000, "ok".into()))]
    );
    // No status: 1005, which the server answers but never sends.
    assert_eq!(
        close(b""),
        vec![Owned::Msg(OwnedMessage::Close(1005, String::new()))]
    );
    assert_eq!(
        close(&[0x03]),
        vec![Owned::Err(DecodeError::MalformedClose)]
    );
    for forbidden in [999u16, 1005, 1006, 1015, 1016, 2999, 5000] {
        assert_eq!(
            close(&forbidden.to_be_bytes()),
            vec![Owned::Err(DecodeError::ForbiddenCloseCode(forbidden))],
            "{forbidden}"
        );
    }
    let bad_reason = close(&[0x03, 0xe8, 0xff]);
    assert_eq!(bad_reason, vec![Owned::Err(DecodeError::InvalidUtf8)]);
    assert_eq!(DecodeError::InvalidUtf8.close_code(), 1007);
    // Our CLOSE encodes as a Close frame with the same code and reason.
    let mut wire = Vec::new();
    Protocol::Ws
        .encode(
            &Message::Close {
                code: 4000,
                reason: "idle timeout",
            },
            &mut wire,
        )
        .unwrap();
    assert_eq!(&wire[..4], &[0x88, 14, 0x0f, 0xa0]);
    assert_eq!(&wire[4..], b"idle timeout");
    let long = "x".repeat(124);
    assert_eq!(
        Protocol::Ws.encode(
            &Message::Close {
                code: 4000,
                reason: &long
            },
            &mut wire
        ),
        Err(EncodeError::ControlTooLong(126))
    );
}

#[test]
fn ws_frames_breaking_rfc_6455_are_refused_with_their_codes() {
    let err = |input: Vec<u8>| match ws(&input).pop() {
        Some(Owned::Err(e)) => e,
        other => panic!("expected an error, got {other:?}"),
    };
    let malformed = |why| DecodeError::WebSocket(why);
    for (first, mask, why) in [
        (0x81, None, "unmasked client frame"),
        (0xc1, MASK, "reserved bit set without an extension"),
        (0x83, MASK, "reserved opcode"),
        (0x8b, MASK, "reserved opcode"),
        (0x09, MASK, "fragmented control frame"),
        (0x80, MASK, "continuation frame without a message"),
    ] {
        assert_eq!(
            err(ws_frame(first, b"x", mask)),
            malformed(why),
            "{first:#x}"
        );
    }
    let mut twice = ws_frame(0x01, b"a", MASK);
    twice.extend(ws_frame(0x81, b"b", MASK));
    assert_eq!(err(twice), malformed("new message inside a fragmented one"));
    assert_eq!(
        err(ws_frame(0x89, &[0; 126], MASK)),
        DecodeError::PingTooLong(126)
    );
    assert_eq!(
        err(ws_frame(0x81, &[0xc3, 0x28], MASK)),
        DecodeError::InvalidUtf8
    );
    for e in [malformed("x"), DecodeError::PingTooLong(126)] {
        assert_eq!(e.close_code(), code::PROTOCOL_ERROR);
    }
}

#[test]
fn ws_size_limits_hold_across_fragments_and_from_the_header_alone() {
    // Over the limit: refused from the header, before the body.
    let big = ws_frame(0x82, &[0; 65], MASK);
    assert!(one(Protocol::Ws, 64, &big[..8]).unwrap_err().is_too_big());
    // Each fragment fits, together they do not.
    let mut split = ws_frame(0x02, &[0; 40], MASK);
    split.extend(ws_frame(0x80, &[0; 40], MASK));
    assert!(matches!(ws(&split).pop(), Some(Owned::Err(e)) if e.is_too_big()));
    // Empty fragments cost header bytes: bounded too.
    let mut empties = ws_frame(0x02, b"", MASK);
    for _ in 0..ws::FRAGMENT_ALLOWANCE {
        empties.extend(ws_frame(0x00, b"", MASK));
    }
    assert!(matches!(ws(&empties).pop(), Some(Owned::Err(e)) if e.is_too_big()));
    // A 64-byte message in 1-byte fragments fits.
    let mut fine = ws_frame(0x01, b"a", MASK);
    for _ in 0..62 {
        fine.extend(ws_frame(0x00, b"b", MASK));
    }
    fine.extend(ws_frame(0x80, b"c", MASK));
    let expected = [b"a".as_slice(), &[b'b'; 62], b"c"].concat();
    assert_eq!(ws(&fine), vec![Owned::Msg(OwnedMessage::Data(expected))]);
}

#[test]
fn ws_control_frames_between_fragments_are_answered_first() {
    let mut wire = ws_frame(0x01, b"hel", MASK);
    wire.extend(ws_frame(0x89, b"p", MASK));
    wire.extend(ws_frame(0x80, b"lo", MASK));
    let expected = vec![
        Owned::Msg(OwnedMessage::Ping(b"p".to_vec())),
        Owned::Msg(OwnedMessage::Data(b"hello".to_vec())),
    ];
    for cut in 0..wire.len() {
        assert_eq!(
            decode_in_chunks(Protocol::Ws, 64, &wire, &[cut]),
            expected,
            "cut at {cut}"
        );
    }
}

proptest! {
    /// What a client encodes, a server decodes the same however split, and
    /// what a server encodes a client reads back.
    #[test]
    fn ws_messages_decode_the_same_however_split(
        msgs in proptest::collection::vec(message(), 0..20),
        cuts in proptest::collection::vec(any::<usize>(), 0..30),
    ) {
        let mut wire = Vec::new();
        let mut server = Vec::new();
        for m in &msgs {
            Protocol::Ws.encode_as_client(&m.as_message(), &mut wire).unwrap();
            encode_owned(Protocol::Ws, m, &mut server);
        }
        // Close codes only RFC 6455 allows on the wire come back.
        let expected: Vec<Owned> = msgs
            .iter()
            .cloned()
            .map(|m| match m {
                OwnedMessage::Close(c, _) if (1016..=2999).contains(&c) || c >= 5000 => {
                    Owned::Err(DecodeError::ForbiddenCloseCode(c))
                }
                m => Owned::Msg(m),
            })
            .scan(false, |failed, item| {
                if *failed { return None; }
                *failed = matches!(item, Owned::Err(_));
                Some(item)
            })
            .collect();
        prop_assert_eq!(decode_in_chunks(Protocol::Ws, 1 << 16, &wire, &cuts), expected.clone());
        let mut reader = Reader::new(Protocol::Ws, 1 << 16);
        reader.extend(&server);
        let mut read = Vec::new();
        loop {
            match reader.next_message() {
                Ok(Some(m)) => read.push(Owned::Msg(m)),
                Ok(None) => break,
                Err(e) => { read.push(Owned::Err(e)); break; }
            }
        }
        prop_assert_eq!(read, expected);
    }

    /// Arbitrary bytes to a WebSocket server decoder: the same however
    /// split, never a panic, never more than max_message_len buffered.
    #[test]
    fn ws_arbitrary_bytes_decode_the_same_however_split(
        max in 1usize..64,
        input in proptest::collection::vec(any::<u8>(), 0..400),
        cuts in proptest::collection::vec(any::<usize>(), 0..30),
    ) {
        let whole = decode_in_chunks(Protocol::Ws, max, &input, &[]);
        let split = decode_in_chunks(Protocol::Ws, max, &input, &cuts);
        prop_assert_eq!(whole, split);
    }
}
