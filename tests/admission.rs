//! Admission before the application sees a byte: the handshake deadline
//! and the per-address connection limit, with and without the PROXY
//! protocol.

mod util;

use std::io::Write;

use util::{Client, Msg, PATIENCE, config, ms, start, wait_until};
use wheel_server::Server;

fn metric(server: &Server, name: &str) -> f64 {
    util::sample(&util::scrape(server.metrics_addr().unwrap()), name)
}

#[test]
fn one_address_holds_at_most_its_limit() {
    let server = start({
        let mut config = config();
        config.max_connections_per_ip = Some(2);
        config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        config
    });
    let mut first = Client::connect(server.local_addr());
    let mut second = Client::connect(server.local_addr());
    assert_eq!(first.ping(b"1"), Msg::Pong(b"1".to_vec()));
    assert_eq!(second.ping(b"2"), Msg::Pong(b"2".to_vec()));
    let mut third = Client::connect(server.local_addr());
    assert_eq!(
        third.recv_msg(),
        Msg::Close(1013, "too many connections from your address".into())
    );
    assert_eq!(
        metric(
            &server,
            "wheel_connections_rejected_total{reason=\"per_ip_limit\"}"
        ),
        1.0
    );
    assert_eq!(metric(&server, "wheel_admission_addresses"), 1.0);
    // A slot frees when a connection closes.
    drop(first);
    assert!(wait_until(PATIENCE, || server.connection_count() == 1));
    let mut again = Client::connect(server.local_addr());
    assert_eq!(again.ping(b"3"), Msg::Pong(b"3".to_vec()));
    drop((second, again));
    assert!(wait_until(PATIENCE, || server.connection_count() == 0));
    assert_eq!(metric(&server, "wheel_admission_addresses"), 0.0);
}

/// Behind a load balancer every socket comes from the balancer: the limit
/// applies to the client address of the PROXY header, and the table keeps
/// only addresses with open connections, however many were seen.
#[test]
fn behind_the_proxy_protocol_the_limit_counts_real_clients_and_the_table_stays_bounded() {
    let server = start({
        let mut config = config();
        config.proxy_protocol = true;
        config.max_connections_per_ip = Some(1);
        config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        config
    });
    let connect_as = |client: &str| {
        let mut c = Client::connect(server.local_addr());
        c.stream
            .write_all(format!("PROXY TCP4 {client} 10.0.0.1 40000 5005\r\n").as_bytes())
            .unwrap();
        c
    };
    let mut alice = connect_as("198.51.100.1");
    assert_eq!(alice.ping(b"a"), Msg::Pong(b"a".to_vec()));
    let mut alice_again = connect_as("198.51.100.1");
    assert_eq!(alice_again.expect_close().0, 1013);
    let mut bob = connect_as("198.51.100.2");
    assert_eq!(bob.ping(b"b"), Msg::Pong(b"b".to_vec()));
    // The refused connection is counted when its worker is done with it,
    // which may be just after the client read the CLOSE.
    assert!(wait_until(PATIENCE, || {
        metric(
            &server,
            "wheel_connections_closed_total{reason=\"per_ip_limit\"}",
        ) == 1.0
    }));
    // 2,000 forged addresses come and go: the table ends with the two
    // still connected.
    for n in 0..2000u32 {
        let ip = format!("10.{}.{}.{}", n >> 16, (n >> 8) & 255, n & 255);
        let mut c = connect_as(&ip);
        assert_eq!(c.ping(b"x"), Msg::Pong(b"x".to_vec()));
    }
    assert!(wait_until(PATIENCE, || server.connection_count() == 2));
    assert_eq!(metric(&server, "wheel_admission_addresses"), 2.0);
}

#[test]
fn a_proxy_header_slower_than_the_handshake_timeout_is_dropped_and_counted() {
    let server = start({
        let mut config = config();
        config.proxy_protocol = true;
        config.handshake_timeout = ms(300);
        config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        config
    });
    let mut slow = Client::connect(server.local_addr());
    let started = std::time::Instant::now();
    // One byte of the header every 100 ms for 1.5 s: each read makes
    // progress (a per-read timeout never fires), but the deadline counts
    // from the accept.
    let mut writer = slow.stream.try_clone().unwrap();
    let dribbler = std::thread::spawn(move || {
        for byte in b"PROXY TCP4 198.51.100.1 10.0.0.1 40000 5005"
            .iter()
            .take(15)
        {
            if writer.write_all(&[*byte]).is_err() {
                break;
            }
            // Pacing: the slowness is what is tested.
            std::thread::sleep(ms(100));
        }
    });
    let closed = slow.recv_msg();
    let took = started.elapsed();
    assert_eq!(closed.close_code(), Some(1002), "{closed:?}");
    assert!(took >= ms(300) - ms(5) && took < ms(1000), "{took:?}");
    dribbler.join().unwrap();
    assert_eq!(
        metric(&server, "wheel_handshake_timeouts_total{stage=\"proxy\"}"),
        1.0
    );
}

#[test]
fn connects_beyond_the_rate_per_address_are_refused_until_it_refills() {
    let server = start({
        let mut config = config();
        config.max_connect_rate_per_ip = Some(5);
        config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        config
    });
    let mut admitted = Vec::new();
    let mut refused = 0;
    for _ in 0..8 {
        let mut c = Client::connect(server.local_addr());
        c.send(wheel_server::protocol::Message::Ping(b"?"));
        match c.recv_msg() {
            Msg::Pong(_) => admitted.push(c),
            Msg::Close(1013, reason) => {
                assert_eq!(reason, "connecting too often from your address");
                refused += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    // A burst of one second's worth, then refusals (a refill of 5 per
    // second may let one more in on a slow machine).
    assert!(
        (5..=6).contains(&admitted.len()),
        "{} admitted",
        admitted.len()
    );
    assert_eq!(admitted.len() + refused, 8);
    assert_eq!(
        metric(
            &server,
            "wheel_connections_rejected_total{reason=\"per_ip_rate\"}"
        ),
        refused as f64
    );
    // Within a second or so the bucket has tokens again.
    assert!(wait_until(PATIENCE, || {
        let mut c = Client::connect(server.local_addr());
        c.send(wheel_server::protocol::Message::Ping(b"!"));
        matches!(c.recv_msg(), Msg::Pong(_))
    }));
}
