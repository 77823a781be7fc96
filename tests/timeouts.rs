//! Idle timeouts, heartbeats and server probes, with timing bounds.
//!
//! Bounds: a silent connection is closed no earlier than the idle timeout
//! T after its last complete message and no later than T + one tick + a
//! scheduling margin. The lower bound has a small tolerance too: activity is
//! stamped with the timer thread's published tick, which can trail real time
//! by that thread's wake-up latency (see the `timer` module docs).

mod util;

use std::time::{Duration, Instant};

use util::{Client, Msg, Recv, config, ms, start};
use wheel_server::Config;
use wheel_server::protocol::Message;

const TICK: Duration = Duration::from_millis(10);
/// Scheduling slack on a busy 2-core machine running tests in parallel.
const MARGIN: Duration = Duration::from_millis(150);
/// Allowed earliness from the published clock trailing real time.
const EARLY_TOLERANCE: Duration = Duration::from_millis(5);

fn idle_config(idle: Duration) -> Config {
    {
        let mut config = config();
        config.idle_timeout = Some(idle);
        config.tick = TICK;
        config
    }
}

fn assert_in_bounds(elapsed: Duration, idle: Duration, what: &str) {
    assert!(
        elapsed + EARLY_TOLERANCE >= idle,
        "{what}: closed after {elapsed:?}, before the idle timeout {idle:?}"
    );
    assert!(
        elapsed <= idle + TICK + MARGIN,
        "{what}: closed after {elapsed:?}, later than {idle:?} + tick {TICK:?} + {MARGIN:?}"
    );
}

#[test]
fn silent_connections_expire_within_one_tick_of_the_timeout() {
    let idle = ms(200);
    let server = start(idle_config(idle));
    let addr = server.local_addr();
    let clients: Vec<_> = (0..20)
        .map(|_| {
            std::thread::spawn(move || {
                let start = Instant::now();
                let mut c = Client::connect(addr);
                let (code, reason) = c.expect_close();
                (code, reason, start.elapsed())
            })
        })
        .collect();
    for client in clients {
        let (code, reason, elapsed) = client.join().unwrap();
        assert_eq!((code, reason.as_str()), (4000, "idle timeout"));
        assert_in_bounds(elapsed, idle, "silent connection");
    }
    assert!(util::wait_until(util::PATIENCE, || server
        .connection_count()
        == 0));
}

#[test]
fn pings_every_third_of_the_timeout_keep_a_connection_alive() {
    let idle = ms(150);
    let server = start(idle_config(idle));
    let mut c = Client::connect(server.local_addr());
    let start = Instant::now();
    let mut last = Instant::now();
    // Several timeouts' worth of pings, each answered.
    while start.elapsed() < idle * 5 {
        std::thread::sleep(idle / 3);
        last = Instant::now();
        assert_eq!(
            c.ping(b"hb"),
            Msg::Pong(b"hb".to_vec()),
            "after {:?}",
            start.elapsed()
        );
    }
    // Then silence: closed one timeout after the last ping.
    let (code, _) = c.expect_close();
    assert_eq!(code, 4000);
    assert_in_bounds(last.elapsed(), idle, "after the last ping");
}

#[test]
fn data_counts_as_activity() {
    // DATA every quarter of the timeout, for two timeouts: closed unless
    // DATA counts. The gap is pacing, with three quarters of the timeout
    // to spare for a busy machine.
    let idle = ms(400);
    let server = start(idle_config(idle));
    let mut c = Client::connect(server.local_addr());
    for _ in 0..8 {
        std::thread::sleep(idle / 4);
        c.send(Message::Data(b"x"));
        assert_eq!(c.recv_msg(), Msg::Data(b"x".to_vec()));
    }
}

#[test]
fn slowloris_dribbling_a_partial_frame_is_reaped() {
    let idle = ms(200);
    let server = start(idle_config(idle));
    let mut c = Client::connect(server.local_addr());
    let start = Instant::now();
    // A 1000-byte frame, one byte every 20 ms: never complete within T.
    c.send_raw(&1000u32.to_be_bytes());
    c.send_raw(&[0x01]);
    let closed = loop {
        match c.try_recv(ms(20)) {
            None => {
                let _ = std::io::Write::write_all(&mut c.stream, b"z");
            }
            Some(Recv::Msg(Msg::Close(code, _))) => break code,
            Some(other) => panic!("unexpected {other:?}"),
        }
        assert!(start.elapsed() < util::PATIENCE, "never reaped");
    };
    assert_eq!(closed, 4000);
    assert_in_bounds(start.elapsed(), idle, "slowloris");
}

#[test]
fn answered_server_probes_keep_a_silent_client_alive() {
    let idle = ms(200);
    let server = start({
        let mut config = idle_config(idle);
        config.probe_after = Some(ms(60));
        config
    });
    let mut c = Client::connect(server.local_addr());
    let start = Instant::now();
    let mut probes = 0;
    while start.elapsed() < idle * 4 {
        match c.try_recv(ms(20)) {
            None => {}
            Some(Recv::Msg(Msg::Ping(payload))) => {
                probes += 1;
                c.send(Message::Pong(&payload));
            }
            Some(other) => panic!("after {:?}: {other:?}", start.elapsed()),
        }
    }
    assert!(
        probes >= 4,
        "expected a probe about every 60 ms, got {probes} in {:?}",
        start.elapsed()
    );
}

#[test]
fn unanswered_server_probes_end_in_an_idle_close() {
    let idle = ms(200);
    let server = start({
        let mut config = idle_config(idle);
        config.probe_after = Some(ms(60));
        config
    });
    let start = Instant::now();
    let mut c = Client::connect(server.local_addr());
    let mut probes = 0;
    let code = loop {
        match c.recv() {
            Recv::Msg(Msg::Ping(_)) => probes += 1,
            Recv::Msg(Msg::Close(code, _)) => break code,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(code, 4000);
    assert!(probes >= 1, "no probe before the idle close");
    assert_in_bounds(start.elapsed(), idle, "unanswered probes");
}

#[test]
fn idle_timeout_off_keeps_silent_connections() {
    let server = start({
        let mut config = config();
        config.idle_timeout = None;
        config.tick = TICK;
        config
    });
    let mut c = Client::connect(server.local_addr());
    // Many ticks pass; nothing may arrive.
    assert_eq!(c.try_recv(ms(300)), None);
    assert_eq!(c.ping(b"still here"), Msg::Pong(b"still here".to_vec()));
}
