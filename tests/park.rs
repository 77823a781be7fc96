//! Parked connections (`--park-after`): an idle connection gives its thread
//! back and waits in the parking thread's epoll set, which answers its
//! PINGs itself; anything else takes a thread again, with the bytes read,
//! and the client sees nothing different. The timer, pushes and shutdown
//! reach a parked connection as any other.

mod util;

use std::net::SocketAddr;
use std::time::Duration;

use util::{Client, Msg, PATIENCE, config, ms, sample, scrape, start, wait_until};
use wheel_server::protocol::{Message, Protocol};
use wheel_server::{Config, Server};

/// Connections park after 30 ms without DATA; metrics on.
fn parking() -> Config {
    let mut config = config();
    config.park_after = Some(ms(30));
    config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    config
}

fn metric(metrics: SocketAddr, name: &str) -> f64 {
    sample(&scrape(metrics), name)
}

/// Waits until `n` connections are open and all of them parked.
fn all_parked(server: &Server, n: usize) -> bool {
    wait_until(PATIENCE, || {
        let conns = server.handle().connections();
        conns.len() == n && conns.iter().all(|c| c.parked)
    })
}

/// Connection threads not back in the cache: those serving a connection.
fn busy_threads(metrics: SocketAddr) -> f64 {
    let text = scrape(metrics);
    sample(&text, "wheel_worker_threads_spawned_total")
        - sample(&text, "wheel_worker_threads_parked")
}

#[test]
fn idle_connections_hold_no_thread_and_their_pings_wake_none() {
    let server = start(parking());
    let metrics = server.metrics_addr().unwrap();
    let addr = server.local_addr();
    let mut clients: Vec<Client> = (0..8).map(|_| Client::connect(addr)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        let hello = format!("hello {i}");
        c.send(Message::Data(hello.as_bytes()));
        assert_eq!(c.recv_msg(), Msg::Data(hello.into_bytes()));
    }
    assert!(all_parked(&server, 8), "every idle connection parks");
    assert!(
        wait_until(PATIENCE, || busy_threads(metrics) == 0.0),
        "every connection thread is back in the cache"
    );
    assert_eq!(metric(metrics, "wheel_connections_parked"), 8.0);

    for round in 0..3u8 {
        for c in &mut clients {
            assert_eq!(c.ping(&[round]), Msg::Pong(vec![round]));
        }
    }
    let text = scrape(metrics);
    assert_eq!(sample(&text, "wheel_parked_pongs_total"), 24.0);
    assert_eq!(sample(&text, "wheel_connection_unparks_total"), 0.0);
    assert_eq!(sample(&text, "wheel_connections_parked"), 8.0);
    assert_eq!(busy_threads(metrics), 0.0, "a PING took a thread");
    // The PINGs count as traffic and as activity, as on a thread.
    let received: u64 = server
        .handle()
        .connections()
        .iter()
        .map(|c| c.received.0)
        .sum();
    assert_eq!(received, 8 + 24, "DATA and PINGs received");
    assert!(
        server
            .handle()
            .connections()
            .iter()
            .all(|c| c.answered.0 == 4),
        "an echo and three PONGs answered each"
    );
}

#[test]
fn pings_in_every_protocol_are_answered_parked() {
    let mut config = parking();
    config.also_listen = vec![
        wheel_server::server::Listen::new("127.0.0.1:0".parse().unwrap(), Protocol::Line),
        wheel_server::server::Listen::new("127.0.0.1:0".parse().unwrap(), Protocol::Ws),
    ];
    let server = start(config);
    let metrics = server.metrics_addr().unwrap();
    let listeners = server.listeners();
    let mut clients: Vec<Client> = listeners
        .iter()
        .map(|l| Client::connect_with(l.addr, l.protocol))
        .collect();
    for c in &mut clients {
        c.send(Message::Data(b"x"));
        assert_eq!(c.recv_msg(), Msg::Data(b"x".to_vec()));
    }
    assert!(all_parked(&server, 3));
    for c in &mut clients {
        assert_eq!(c.ping(b"hb"), Msg::Pong(b"hb".to_vec()));
    }
    let text = scrape(metrics);
    assert_eq!(sample(&text, "wheel_parked_pongs_total"), 3.0);
    assert_eq!(sample(&text, "wheel_connection_unparks_total"), 0.0);
}

#[test]
fn anything_but_a_ping_takes_a_thread_with_the_bytes_read() {
    let server = start(parking());
    let metrics = server.metrics_addr().unwrap();
    let mut c = Client::connect(server.local_addr());
    assert!(all_parked(&server, 1));

    // DATA: answered as ever; the connection parks again after.
    c.send(Message::Data(b"one"));
    assert_eq!(c.recv_msg(), Msg::Data(b"one".to_vec()));
    assert_eq!(metric(metrics, "wheel_connection_unparks_total"), 1.0);
    assert!(all_parked(&server, 1));

    // A PING and DATA in one write: the PONG first, then the echo.
    let mut wire = Vec::new();
    Protocol::Frame
        .encode_as_client(&Message::Ping(b"p"), &mut wire)
        .unwrap();
    Protocol::Frame
        .encode_as_client(&Message::Data(b"two"), &mut wire)
        .unwrap();
    c.send_raw(&wire);
    assert_eq!(c.recv_msg(), Msg::Pong(b"p".to_vec()));
    assert_eq!(c.recv_msg(), Msg::Data(b"two".to_vec()));
    assert!(all_parked(&server, 1));

    // Part of a message: a thread takes it and waits for the rest.
    let mut wire = Vec::new();
    Protocol::Frame
        .encode_as_client(&Message::Data(b"three"), &mut wire)
        .unwrap();
    c.send_raw(&wire[..3]);
    assert!(wait_until(PATIENCE, || {
        metric(metrics, "wheel_connection_unparks_total") == 3.0
    }));
    c.send_raw(&wire[3..]);
    assert_eq!(c.recv_msg(), Msg::Data(b"three".to_vec()));
    assert!(all_parked(&server, 1));

    // A CLOSE: answered and closed by a thread.
    c.send(Message::Close {
        code: 1000,
        reason: "done",
    });
    assert_eq!(c.recv_msg(), Msg::Close(1000, "bye".into()));
    assert!(wait_until(PATIENCE, || server.connection_count() == 0));
    assert_eq!(metric(metrics, "wheel_connections_parked"), 0.0);
}

#[test]
fn a_parked_connection_that_goes_silent_is_closed_on_time() {
    let mut config = parking();
    config.idle_timeout = Some(ms(300));
    let server = start(config);
    let metrics = server.metrics_addr().unwrap();
    let mut c = Client::connect(server.local_addr());
    assert!(all_parked(&server, 1));
    assert_eq!(c.expect_close(), (4000, "idle timeout".into()));
    assert!(wait_until(PATIENCE, || server.connection_count() == 0));
    let text = scrape(metrics);
    assert_eq!(
        sample(
            &text,
            "wheel_connections_closed_total{reason=\"idle_timeout\"}"
        ),
        1.0
    );
    assert_eq!(sample(&text, "wheel_connections_parked"), 0.0);
}

#[test]
fn pushes_reach_a_parked_connection_without_a_thread() {
    let server = start(parking());
    let metrics = server.metrics_addr().unwrap();
    let mut c = Client::connect(server.local_addr());
    assert!(all_parked(&server, 1));
    let id = server.connection_ids()[0];
    for i in 0..5u8 {
        server.handle().send(id, &[b'm', i]).unwrap();
        assert_eq!(c.recv_msg(), Msg::Data(vec![b'm', i]));
    }
    assert_eq!(metric(metrics, "wheel_connection_unparks_total"), 0.0);
    assert!(server.handle().connections()[0].parked);
}

#[test]
fn shutdown_drains_parked_connections() {
    let server = start(parking());
    let metrics = server.metrics_addr().unwrap();
    let mut clients: Vec<Client> = (0..5)
        .map(|_| Client::connect(server.local_addr()))
        .collect();
    assert!(all_parked(&server, 5));
    assert_eq!(metric(metrics, "wheel_connections_parked"), 5.0);
    let stopping = std::thread::spawn(move || server.shutdown());
    for c in &mut clients {
        assert_eq!(c.expect_close(), (1001, "server shutting down".into()));
    }
    assert!(stopping.join().unwrap(), "every connection drained in time");
}

#[test]
fn a_ping_flood_while_parked_is_closed_as_on_a_thread() {
    let mut config = parking();
    config.min_ping_interval = Some(Duration::from_secs(1));
    config.ping_strikes = 2;
    let server = start(config);
    let mut c = Client::connect(server.local_addr());
    assert!(all_parked(&server, 1));
    // The first PING is on time, the next two are strikes, the third one
    // too many.
    for i in 0..3u8 {
        assert_eq!(c.ping(&[i]), Msg::Pong(vec![i]));
    }
    c.send(Message::Ping(b"3"));
    assert_eq!(c.expect_close(), (1008, "too many pings".into()));
}

#[test]
fn without_a_cached_thread_a_new_one_takes_the_connection() {
    let mut config = parking();
    config.thread_cache = 0;
    let server = start(config);
    let metrics = server.metrics_addr().unwrap();
    let mut c = Client::connect(server.local_addr());
    assert!(all_parked(&server, 1));
    let spawned = metric(metrics, "wheel_worker_threads_spawned_total");
    c.send(Message::Data(b"again"));
    assert_eq!(c.recv_msg(), Msg::Data(b"again".to_vec()));
    assert_eq!(
        metric(metrics, "wheel_worker_threads_spawned_total"),
        spawned + 1.0
    );
}

#[test]
fn with_parking_off_every_connection_keeps_its_thread() {
    let mut config = parking();
    config.park_after = None;
    let server = start(config);
    let metrics = server.metrics_addr().unwrap();
    let mut c = Client::connect(server.local_addr());
    c.send(Message::Data(b"x"));
    assert_eq!(c.recv_msg(), Msg::Data(b"x".to_vec()));
    // Ten times what parking would need.
    assert_eq!(c.try_recv(ms(300)), None);
    assert!(!server.handle().connections()[0].parked);
    assert_eq!(metric(metrics, "wheel_connection_parks_total"), 0.0);
    assert_eq!(busy_threads(metrics), 1.0);
    assert!(matches!(c.ping(b"p"), Msg::Pong(_)));
    drop(c);
    assert!(wait_until(PATIENCE, || server.connection_count() == 0));
}
