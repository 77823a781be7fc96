//! `--proxy-protocol`: the real client address from HAProxy's PROXY header
//! (v1 and v2) reaches logs, metrics and `/connections`; connections without
//! a valid header are refused.

mod util;

use std::io::Write;
use std::net::SocketAddr;

use ppp::v2;
use util::{Client, Msg, PATIENCE, config, http_get, ms, start, wait_until};
use wheel_server::Server;

fn proxy_server() -> Server {
    start({
        let mut config = config();
        config.proxy_protocol = true;
        config.handshake_timeout = ms(300);
        config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        config
    })
}

/// The peers `/connections` shows.
fn peers(server: &Server) -> Vec<String> {
    let (_, body) = http_get(server.metrics_addr().unwrap(), "/connections");
    let list: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    list.iter()
        .map(|c| c["peer"].as_str().unwrap().to_owned())
        .collect()
}

fn closed_with(server: &Server, reason: &str) -> f64 {
    let text = util::scrape(server.metrics_addr().unwrap());
    util::sample(
        &text,
        &format!("wheel_connections_closed_total{{reason=\"{reason}\"}}"),
    )
}

#[test]
fn a_version_1_header_gives_the_real_client_address() {
    let server = proxy_server();
    let mut c = Client::connect(server.local_addr());
    // Header and the first frame in one write, as a balancer may send them.
    let mut wire = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 5005\r\n".to_vec();
    wire.extend_from_slice(&[0, 0, 0, 3, 0x02, b'h', b'i']);
    c.send_raw(&wire);
    assert_eq!(c.recv_msg(), Msg::Pong(b"hi".to_vec()));
    assert_eq!(peers(&server), ["203.0.113.7:51234"]);
}

#[test]
fn a_version_2_header_byte_by_byte() {
    let server = proxy_server();
    let client: SocketAddr = "[2001:db8::7]:40000".parse().unwrap();
    // One address family for both ends, as HAProxy sends them.
    let destination: SocketAddr = "[2001:db8::1]:5005".parse().unwrap();
    let header = v2::Builder::with_addresses(0x21, v2::Protocol::Stream, (client, destination))
        .build()
        .unwrap();
    let mut c = Client::connect(server.local_addr());
    for byte in &header {
        c.send_raw(std::slice::from_ref(byte));
    }
    assert_eq!(c.ping(b"v2"), Msg::Pong(b"v2".to_vec()));
    assert_eq!(peers(&server), [client.to_string()]);
}

#[test]
fn a_local_header_keeps_the_socket_address() {
    // HAProxy's health checks send LOCAL: no client address.
    let server = proxy_server();
    let mut c = Client::connect(server.local_addr());
    c.send_raw(&v2::Builder::new(0x20, 0x00).build().unwrap());
    assert_eq!(c.ping(b"check"), Msg::Pong(b"check".to_vec()));
    assert_eq!(peers(&server), [c.stream.local_addr().unwrap().to_string()]);
}

#[test]
fn no_header_is_refused_with_1002() {
    let server = proxy_server();
    let mut c = Client::connect(server.local_addr());
    c.send_raw(b"not a PROXY header at all, just bytes\r\n");
    assert_eq!(
        c.expect_close(),
        (1002, "PROXY protocol header required".to_owned())
    );
    assert!(wait_until(PATIENCE, || closed_with(
        &server,
        "bad_proxy_header"
    ) == 1.0));
}

#[test]
fn a_header_that_never_comes_is_refused_after_the_header_timeout() {
    let server = proxy_server();
    let start = std::time::Instant::now();
    let mut c = Client::connect(server.local_addr());
    assert_eq!(c.expect_close().0, 1002);
    let took = start.elapsed();
    assert!(took >= ms(300) && took < ms(2000), "refused after {took:?}");
}

/// Issue 26: with a per-address limit of 1, direct connections with forged
/// headers all got in. With `--proxy-from`, a header from any peer but the
/// balancer is refused and counted; the balancer's are believed.
#[test]
fn only_the_trusted_proxies_may_name_a_client_address() {
    let untrusting = start({
        let mut config = config();
        config.proxy_protocol = true;
        config.proxy_from = vec!["10.0.0.0/8".parse().unwrap()];
        config.max_connections_per_ip = Some(1);
        config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        config
    });
    for n in 0..3 {
        let mut forged = Client::connect(untrusting.local_addr());
        forged
            .stream
            .write_all(format!("PROXY TCP4 198.51.100.{n} 10.0.0.1 4000{n} 5005\r\n").as_bytes())
            .unwrap();
        let (code, _) = forged.expect_close();
        assert_eq!(code, 1002);
    }
    let text = util::scrape(untrusting.metrics_addr().unwrap());
    assert_eq!(
        util::sample(
            &text,
            "wheel_connections_rejected_total{reason=\"untrusted_proxy\"}"
        ),
        3.0
    );
    assert!(peers(&untrusting).is_empty());
    // Loopback is the balancer here: believed.
    let trusting = start({
        let mut config = config();
        config.proxy_protocol = true;
        config.proxy_from = vec!["127.0.0.1".parse().unwrap()];
        config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        config
    });
    let mut c = Client::connect(trusting.local_addr());
    c.send_raw(b"PROXY TCP4 203.0.113.9 10.0.0.1 51234 5005\r\n");
    assert_eq!(c.ping(b"x"), Msg::Pong(b"x".to_vec()));
    assert_eq!(peers(&trusting), ["203.0.113.9:51234"]);
}
