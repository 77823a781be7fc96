//! The wire protocol as a client sees it: echo, PING/PONG, framing across
//! and within reads, each protocol error with its close code, line mode.

mod util;

use util::{Client, Msg, Recv, config, start};
use wheel_server::Server;
use wheel_server::protocol::{Message, Protocol};

fn server() -> Server {
    start(config())
}

#[test]
fn echoes_data_and_answers_ping() {
    let server = server();
    let mut c = Client::connect(server.local_addr());
    c.send(Message::Data(b"hello"));
    assert_eq!(c.recv_msg(), Msg::Data(b"hello".to_vec()));
    assert_eq!(c.ping(b"seq-1"), Msg::Pong(b"seq-1".to_vec()));
    assert_eq!(c.ping(&[9; 125]), Msg::Pong(vec![9; 125]));
    c.send(Message::Data(b""));
    assert_eq!(c.recv_msg(), Msg::Data(Vec::new()));
}

#[test]
fn pong_from_client_is_not_answered() {
    let server = server();
    let mut c = Client::connect(server.local_addr());
    c.send(Message::Pong(b"unsolicited"));
    c.send(Message::Data(b"after"));
    assert_eq!(
        c.recv_msg(),
        Msg::Data(b"after".to_vec()),
        "nothing may come before the echo"
    );
}

#[test]
fn frames_delivered_one_byte_at_a_time() {
    let server = server();
    let mut c = Client::connect(server.local_addr());
    let mut wire = Vec::new();
    Protocol::Frame
        .encode(&Message::Data(b"slowly"), &mut wire)
        .unwrap();
    Protocol::Frame
        .encode(&Message::Ping(b"p"), &mut wire)
        .unwrap();
    for byte in &wire {
        c.send_raw(std::slice::from_ref(byte));
        // Let each byte arrive in a read of its own.
        std::thread::sleep(util::ms(1));
    }
    assert_eq!(c.recv_msg(), Msg::Data(b"slowly".to_vec()));
    assert_eq!(c.recv_msg(), Msg::Pong(b"p".to_vec()));
}

#[test]
fn many_frames_in_one_write_are_answered_in_order() {
    let server = server();
    let mut c = Client::connect(server.local_addr());
    let mut wire = Vec::new();
    for i in 0..500u32 {
        Protocol::Frame
            .encode(&Message::Data(&i.to_be_bytes()), &mut wire)
            .unwrap();
    }
    c.send_raw(&wire);
    for i in 0..500u32 {
        assert_eq!(
            c.recv_msg(),
            Msg::Data(i.to_be_bytes().to_vec()),
            "echo {i}"
        );
    }
}

#[test]
fn a_frame_of_max_size_is_echoed() {
    let server = start({
        let mut config = config();
        config.max_frame = 1 << 20;
        config
    });
    let mut c = Client::connect(server.local_addr());
    let payload: Vec<u8> = (0..(1 << 20) - 1).map(|i| (i % 251) as u8).collect();
    c.send(Message::Data(&payload));
    assert_eq!(c.recv_msg(), Msg::Data(payload));
}

/// Sends `bytes`, expects CLOSE `code` and the end of the stream.
fn assert_closed_with(server: &Server, bytes: &[u8], code: u16) -> String {
    let mut c = Client::connect(server.local_addr());
    c.send_raw(bytes);
    let (got, reason) = c.expect_close();
    assert_eq!(got, code, "reason: {reason}");
    reason
}

#[test]
fn zero_length_frame_is_a_protocol_error() {
    let server = server();
    assert_closed_with(&server, &[0, 0, 0, 0], 1002);
}

#[test]
fn unknown_type_is_a_protocol_error() {
    let server = server();
    let reason = assert_closed_with(&server, &[0, 0, 0, 1, 0x7f], 1002);
    assert!(reason.contains("0x7f"), "{reason}");
}

#[test]
fn ping_payload_over_125_bytes_is_a_protocol_error() {
    let server = server();
    let mut wire = vec![0, 0, 0, 127, 0x02];
    wire.extend_from_slice(&[0; 126]);
    assert_closed_with(&server, &wire, 1002);
}

#[test]
fn oversized_frame_is_refused_without_its_body() {
    let server = start({
        let mut config = config();
        config.max_frame = 1000;
        config
    });
    // Only the header: the server must answer without waiting for 1001 bytes.
    assert_closed_with(&server, &1001u32.to_be_bytes(), 1009);
    // A length near 4 GiB must not make the server try to allocate it.
    assert_closed_with(&server, &u32::MAX.to_be_bytes(), 1009);
    // And the server still serves.
    let mut c = Client::connect(server.local_addr());
    assert_eq!(c.ping(b"ok"), Msg::Pong(b"ok".to_vec()));
}

#[test]
fn messages_before_an_error_are_answered_first() {
    let server = server();
    let mut wire = Vec::new();
    Protocol::Frame
        .encode(&Message::Data(b"first"), &mut wire)
        .unwrap();
    wire.extend_from_slice(&[0, 0, 0, 0]);
    let mut c = Client::connect(server.local_addr());
    c.send_raw(&wire);
    assert_eq!(c.recv_msg(), Msg::Data(b"first".to_vec()));
    assert_eq!(c.expect_close().0, 1002);
}

#[test]
fn client_close_is_answered_with_1000() {
    let server = server();
    let mut c = Client::connect(server.local_addr());
    c.send(Message::Close {
        code: 1000,
        reason: "done",
    });
    assert_eq!(c.expect_close().0, 1000);
}

/// 0, 1005 and 1006 must never be sent; a client that does gets 1002, not
/// the normal 1000.
#[test]
fn a_client_close_with_a_code_that_must_not_be_sent_gets_1002() {
    let server = server();
    for code in [0u16, 1005, 1006] {
        let mut c = Client::connect(server.local_addr());
        let mut frame = vec![0, 0, 0, 3, 0x04];
        frame.extend_from_slice(&code.to_be_bytes());
        c.send_raw(&frame);
        let (answer, reason) = c.expect_close();
        assert_eq!(answer, 1002, "code {code}: {reason}");
    }
}

#[test]
fn server_closes_when_the_client_half_closes() {
    let server = server();
    let mut c = Client::connect(server.local_addr());
    c.send(Message::Data(b"last words"));
    c.stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(c.recv_msg(), Msg::Data(b"last words".to_vec()));
    assert_eq!(c.recv(), Recv::Eof);
    assert!(util::wait_until(util::PATIENCE, || server
        .connection_count()
        == 0));
}

fn line_server(max_frame: usize) -> Server {
    start({
        let mut config = config();
        config.protocol = Protocol::Line;
        config.max_frame = max_frame;
        config
    })
}

/// Reads raw lines (the way `nc` shows them).
fn read_lines(c: &mut Client, n: usize) -> Vec<String> {
    use std::io::BufRead;
    let mut reader = std::io::BufReader::new(c.stream.try_clone().unwrap());
    (0..n)
        .map(|_| {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            line
        })
        .collect()
}

#[test]
fn line_mode_commands() {
    let server = line_server(1024);
    let mut c = Client::connect_with(server.local_addr(), Protocol::Line);
    c.send_raw(b"hello there\nPING\nPING 42\r\nPONG\nwhat\nQUIT\n");
    assert_eq!(
        read_lines(&mut c, 5),
        [
            "hello there\n",
            "PONG\n",
            "PONG 42\n",
            "what\n",
            "CLOSE 1000 bye\n"
        ]
    );
    assert_eq!(c.recv(), Recv::Eof);
}

#[test]
fn line_mode_too_long_line() {
    let server = line_server(16);
    let mut c = Client::connect_with(server.local_addr(), Protocol::Line);
    c.send_raw(&[b'x'; 40]);
    let line = read_lines(&mut c, 1).remove(0);
    assert!(line.starts_with("CLOSE 1009 "), "{line:?}");
}

#[test]
fn line_mode_ping_too_long() {
    let server = line_server(1024);
    let mut c = Client::connect_with(server.local_addr(), Protocol::Line);
    c.send_raw(format!("PING {}\n", "y".repeat(126)).as_bytes());
    let line = read_lines(&mut c, 1).remove(0);
    assert!(line.starts_with("CLOSE 1002 "), "{line:?}");
}

/// A handler that tries to inject lines: its payloads come from the
/// client's DATA, with `|` turned into line breaks, and it reports whether
/// the send was refused.
struct Injector;

impl wheel_server::Handler for Injector {
    fn on_data(&self, session: &mut wheel_server::Session<'_>, payload: &[u8]) {
        let crafted: Vec<u8> = payload
            .iter()
            .map(|&b| if b == b'|' { b'\n' } else { b })
            .collect();
        match session.send(&crafted) {
            Ok(()) => {}
            Err(e) => session.send(format!("refused: {e}").as_bytes()).unwrap(),
        }
        if payload == b"bye" {
            session.close(4100, "see you\nPING injected");
        }
    }
}

#[test]
fn line_mode_never_lets_a_payload_inject_a_line() {
    let server = Server::with_handler(
        {
            let mut config = config();
            config.protocol = Protocol::Line;
            config
        },
        Injector,
    )
    .unwrap();
    let mut c = Client::connect_with(server.local_addr(), Protocol::Line);
    // A payload with a line break, and one that is data to the handler
    // (the client sent it as data) but would read as a command.
    c.send_raw(b"a|PING x|CLOSE 1000\nPING alone\nCLOSE abc\nbye\n");
    let lines = read_lines(&mut c, 5);
    assert_eq!(
        lines[0],
        "refused: line mode cannot carry a line break (LF or CR) in a message\n"
    );
    // "PING alone" was a PING from the client: answered, not handed over.
    assert_eq!(lines[1], "PONG alone\n");
    // "CLOSE abc" is not a well-formed CLOSE, so it is data both ways.
    assert_eq!(lines[2], "CLOSE abc\n");
    assert_eq!(lines[3], "bye\n");
    // The close reason's line break became a space.
    assert_eq!(lines[4], "CLOSE 4100 see you PING injected\n");
    assert_eq!(c.recv(), Recv::Eof);
}

#[test]
fn line_mode_data_that_reads_as_a_command_is_refused_by_the_encoder() {
    use wheel_server::protocol::EncodeError;
    let mut out = Vec::new();
    for (payload, refused) in [
        (&b"PING x"[..], Some(EncodeError::ReadsAsCommand)),
        (b"PONG", Some(EncodeError::ReadsAsCommand)),
        (b"QUIT", Some(EncodeError::ReadsAsCommand)),
        (b"CLOSE 1000 bye", Some(EncodeError::ReadsAsCommand)),
        (b"one\ntwo", Some(EncodeError::LineBreak)),
        (b"PINGS are fine", None),
        (b"CLOSE later", None),
        (b"", None),
    ] {
        out.clear();
        let encoded = Protocol::Line.encode(&Message::Data(payload), &mut out);
        assert_eq!(
            encoded.err(),
            refused,
            "{:?}",
            String::from_utf8_lossy(payload)
        );
        if refused.is_some() {
            assert!(out.is_empty(), "nothing written for a refused message");
        }
    }
    // Frame mode carries any bytes.
    Protocol::Frame
        .encode(&Message::Data(b"PING\nCLOSE 1000"), &mut out)
        .unwrap();
}

/// Issue 26: a lone `\r` in a payload must not reach a line-mode reader,
/// many of which (Python's universal newlines) take it as a line break: a
/// publisher could forge `MSG` and `CLOSE` lines for every subscriber.
#[test]
fn a_lone_carriage_return_never_reaches_a_line_mode_reader() {
    let server = Server::with_handler(
        {
            let mut config = config();
            config.protocol = Protocol::Line;
            config
        },
        wheel_server::server::pubsub::PubSub,
    )
    .unwrap();
    let mut sub = Client::connect_with(server.local_addr(), Protocol::Line);
    sub.send_raw(b"SUB chat\n");
    assert_eq!(sub.recv_msg(), Msg::Data(b"OK SUB chat 0".to_vec()));
    let mut publisher = Client::connect_with(server.local_addr(), Protocol::Line);
    publisher.send_raw(b"PUB chat hi\rMSG chat 999 forged\rCLOSE 4001 unauthorized\n");
    assert_eq!(publisher.recv_msg(), Msg::Data(b"OK PUB chat 1".to_vec()));
    publisher.send_raw(b"PUB chat clean\n");
    assert_eq!(publisher.recv_msg(), Msg::Data(b"OK PUB chat 2".to_vec()));
    // The subscriber's next line is the clean message: nothing of the
    // first reached it.
    let mut line = Vec::new();
    let mut byte = [0u8];
    while byte[0] != b'\n' {
        std::io::Read::read_exact(&mut sub.stream, &mut byte).unwrap();
        line.push(byte[0]);
    }
    assert_eq!(line, b"MSG chat 2 clean\n");
}

/// `nc` against a frame listener: the first bytes, `hell`, would be a
/// 1.7 GB frame; the CLOSE says what happened instead (issue 32).
#[test]
fn text_sent_to_a_frame_listener_is_told_which_protocol_it_speaks() {
    let server = start(config());
    let mut c = Client::connect(server.local_addr());
    c.send_raw(b"hello\n");
    assert_eq!(
        c.expect_close(),
        (
            1002,
            "this listener speaks the frame protocol; for text use --protocol line or line://"
                .to_owned()
        )
    );
}
