//! Policies and isolation: connection limit, ping strikes, handlers that
//! close or panic, graceful shutdown of the library server.

mod util;

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Instant;

use util::{Client, Msg, Recv, config, ms, start};
use wheel_server::protocol::Message;
use wheel_server::{CloseReason, ConnId, Handler, Server, Session};

#[test]
fn connections_over_the_limit_get_1013_and_the_rest_are_served() {
    let server = start({
        let mut config = config();
        config.max_connections = 5;
        config
    });
    let mut admitted: Vec<Client> = (0..5)
        .map(|_| Client::connect(server.local_addr()))
        .collect();
    for c in &mut admitted {
        assert_eq!(c.ping(b"in"), Msg::Pong(b"in".to_vec()));
    }
    for _ in 0..10 {
        let start = Instant::now();
        let mut extra = Client::connect(server.local_addr());
        let (code, reason) = extra.expect_close();
        assert_eq!((code, reason.as_str()), (1013, "server full"));
        assert!(
            start.elapsed() < ms(500),
            "rejection took {:?}",
            start.elapsed()
        );
    }
    for c in &mut admitted {
        assert_eq!(c.ping(b"still"), Msg::Pong(b"still".to_vec()));
    }
    // A slot frees up once a connection leaves.
    drop(admitted.pop());
    assert!(util::wait_until(util::PATIENCE, || server
        .connection_count()
        == 4));
    let mut late = Client::connect(server.local_addr());
    assert_eq!(late.ping(b"room"), Msg::Pong(b"room".to_vec()));
}

#[test]
fn too_many_pings_too_fast_get_1008() {
    let server = start({
        let mut config = config();
        config.min_ping_interval = Some(ms(100));
        config.ping_strikes = 3;
        config
    });
    let mut flood = Client::connect(server.local_addr());
    let mut honest = Client::connect(server.local_addr());
    // Strikes 1-3 are tolerated and answered...
    for i in 0..4u8 {
        assert_eq!(flood.ping(&[i]), Msg::Pong(vec![i]), "ping {i}");
    }
    // ...the 4th strike is one too many.
    flood.send(Message::Ping(b"again"));
    assert_eq!(flood.expect_close().0, 1008);
    // A client pinging at the allowed rate is unaffected.
    for i in 0..3u8 {
        assert_eq!(honest.ping(&[i]), Msg::Pong(vec![i]));
        std::thread::sleep(ms(110));
    }
}

/// Echoes, except: "close" closes with 4100, "panic" panics. Records
/// closes.
#[derive(Default)]
struct Picky {
    closed: Mutex<Vec<(ConnId, SocketAddr, String)>>,
}

impl Handler for Picky {
    fn on_data(&self, session: &mut Session<'_>, payload: &[u8]) {
        match payload {
            b"close" => {
                session.send(b"closing").unwrap();
                session.close(4100, "asked to");
            }
            b"panic" => panic!("handler panics on purpose (expected in this test)"),
            _ => session.send(payload).unwrap(),
        }
    }

    fn on_close(&self, id: ConnId, peer: SocketAddr, reason: &CloseReason) {
        self.closed
            .lock()
            .unwrap()
            .push((id, peer, reason.label().to_owned()));
    }
}

struct Shared(std::sync::Arc<Picky>);

impl Handler for Shared {
    fn on_data(&self, session: &mut Session<'_>, payload: &[u8]) {
        self.0.on_data(session, payload)
    }
    fn on_close(&self, id: ConnId, peer: SocketAddr, reason: &CloseReason) {
        self.0.on_close(id, peer, reason)
    }
}

#[test]
fn a_handler_can_close_its_connection() {
    let handler = std::sync::Arc::new(Picky::default());
    let server = Server::with_handler(config(), Shared(handler.clone())).unwrap();
    let mut c = Client::connect(server.local_addr());
    c.send(Message::Data(b"close"));
    assert_eq!(c.recv_msg(), Msg::Data(b"closing".to_vec()));
    assert_eq!(c.expect_close(), (4100, "asked to".to_owned()));
    assert!(util::wait_until(util::PATIENCE, || handler
        .closed
        .lock()
        .unwrap()
        .len()
        == 1));
    assert_eq!(handler.closed.lock().unwrap()[0].2, "application");
}

#[test]
fn a_panicking_handler_takes_down_only_its_own_connection() {
    let handler = std::sync::Arc::new(Picky::default());
    let server = Server::with_handler(config(), Shared(handler.clone())).unwrap();
    let mut bystander = Client::connect(server.local_addr());
    let mut victim = Client::connect(server.local_addr());
    victim.send(Message::Data(b"panic"));
    assert!(matches!(victim.recv(), Recv::Eof | Recv::Error(_)));
    assert!(util::wait_until(util::PATIENCE, || server
        .connection_count()
        == 1));
    assert_eq!(handler.closed.lock().unwrap()[0].2, "handler_panic");
    bystander.send(Message::Data(b"fine"));
    assert_eq!(bystander.recv_msg(), Msg::Data(b"fine".to_vec()));
    let mut newcomer = Client::connect(server.local_addr());
    assert_eq!(newcomer.ping(b"new"), Msg::Pong(b"new".to_vec()));
}

#[test]
fn shutdown_sends_1001_to_every_connection() {
    let server = start(config());
    let mut clients: Vec<Client> = (0..10)
        .map(|_| Client::connect(server.local_addr()))
        .collect();
    for c in &mut clients {
        assert_eq!(c.ping(b"up"), Msg::Pong(b"up".to_vec()));
    }
    let addr = server.local_addr();
    let shutdown = std::thread::spawn(move || server.shutdown());
    for c in &mut clients {
        // Half-closes: the drain of each connection ends here.
        assert_eq!(c.expect_close().0, 1001);
    }
    assert!(
        shutdown.join().unwrap(),
        "all connections should finish within the grace period"
    );
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still accepting after shutdown"
    );
}

#[test]
fn shutdown_answers_what_was_already_sent_before_closing() {
    let server = start(config());
    let mut c = Client::connect(server.local_addr());
    assert_eq!(c.ping(b"up"), Msg::Pong(b"up".to_vec()));
    let mut wire = Vec::new();
    wheel_server::protocol::Protocol::Frame
        .encode(&Message::Data(b"one"), &mut wire)
        .unwrap();
    wheel_server::protocol::Protocol::Frame
        .encode(&Message::Data(b"two"), &mut wire)
        .unwrap();
    c.send_raw(&wire);
    // Whether the worker reads these before or during the drain, both are
    // answered (before or after the CLOSE).
    let shutdown = std::thread::spawn(move || server.shutdown());
    let mut answers = Vec::new();
    let code = loop {
        match c.recv_msg() {
            Msg::Close(code, _) => break code,
            other => answers.push(other),
        }
    };
    assert_eq!(code, 1001);
    c.stream.shutdown(std::net::Shutdown::Write).unwrap();
    loop {
        match c.recv() {
            Recv::Msg(msg) => answers.push(msg),
            Recv::Eof => break,
            other => panic!("expected answers then EOF, got {other:?}"),
        }
    }
    assert_eq!(
        answers,
        [Msg::Data(b"one".to_vec()), Msg::Data(b"two".to_vec())]
    );
    assert!(shutdown.join().unwrap(), "the drain should end cleanly");
}
