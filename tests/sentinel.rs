//! Issue 27: Redis with a replica and a Sentinel. The instance asks the
//! Sentinel for the master on every connect; when the master dies, the
//! Sentinel promotes the replica and publishing and delivery go on through
//! it. A promoted replica that lagged is a new numbering: subscribers are
//! told `GAP <topic> 1`.

mod util;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use util::{Client, Msg, PATIENCE, config, ms, tool_or_skip, wait_until};
use wheel_server::Server;
use wheel_server::protocol::Message;
use wheel_server::server::pubsub::PubSub;

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    util::haproxy::free_addr().port()
}

/// One inline command's reply, whole.
fn command(port: u16, line: &str) -> Option<String> {
    util::redis::reply(SocketAddr::from(([127, 0, 0, 1], port)), line)
}

fn redis(port: u16, extra: &[&str]) -> Proc {
    let child = Command::new("redis-server")
        .args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--save",
            "",
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server");
    assert!(wait_until(PATIENCE, || command(port, "PING")
        .is_some_and(|r| r.starts_with("+PONG"))));
    Proc(child)
}

fn data(c: &mut Client) -> String {
    match c.recv_msg() {
        Msg::Data(p) => String::from_utf8(p).unwrap(),
        other => panic!("expected DATA, got {other:?}"),
    }
}

fn ask(c: &mut Client, text: &str) -> String {
    c.send(Message::Data(text.as_bytes()));
    data(c)
}

#[test]
fn a_sentinel_fail_over_is_followed_and_nothing_acknowledged_is_lost_untold() {
    if !tool_or_skip("redis-server", "--version") || !tool_or_skip("redis-sentinel", "--version") {
        return;
    }
    let (master_port, replica_port, sentinel_port) = (free_port(), free_port(), free_port());
    let mut master = Some(redis(master_port, &[]));
    let _replica = redis(
        replica_port,
        &["--replicaof", "127.0.0.1", &master_port.to_string()],
    );
    assert!(wait_until(PATIENCE, || command(
        replica_port,
        "INFO replication"
    )
    .is_some_and(|r| r.contains("master_link_status:up"))));
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("sentinel-{sentinel_port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port {sentinel_port}\nbind 127.0.0.1\nsentinel monitor wheel 127.0.0.1 {master_port} 1\n\
             sentinel down-after-milliseconds wheel 300\nsentinel failover-timeout wheel 3000\n"
        ),
    )
    .unwrap();
    let _sentinel = Proc(
        Command::new("redis-sentinel")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-sentinel"),
    );
    assert!(wait_until(PATIENCE, || command(
        sentinel_port,
        "SENTINEL get-master-addr-by-name wheel"
    )
    .is_some_and(|r| r.contains(&master_port.to_string()))));
    let server = Server::with_handler(
        {
            let mut config = config();
            config.redis_sentinels = vec![format!("127.0.0.1:{sentinel_port}")];
            config.redis_master_name = Some("wheel".into());
            config.redis_timeout = ms(300);
            config
        },
        PubSub,
    )
    .unwrap();
    let mut subscriber = Client::connect(server.local_addr());
    assert_eq!(ask(&mut subscriber, "SUB t"), "OK SUB t 0");
    let mut publisher = Client::connect(server.local_addr());
    for n in 1..=5 {
        assert_eq!(
            ask(&mut publisher, &format!("PUBONCE t m{n} m{n}")),
            format!("OK PUB t {n}")
        );
        assert_eq!(data(&mut subscriber), format!("MSG t {n} m{n}"));
    }
    // The master dies; the Sentinel promotes the replica.
    drop(master.take());
    let deadline = Instant::now() + PATIENCE * 2;
    let mut acked = Vec::new();
    for n in 6..=10 {
        loop {
            let answer = ask(&mut publisher, &format!("PUBONCE t m{n} m{n}"));
            if let Some(seq) = answer.strip_prefix("OK PUB t ") {
                acked.push((seq.parse::<u64>().unwrap(), n));
                break;
            }
            assert!(
                Instant::now() < deadline,
                "never published after the fail-over: {answer}"
            );
            std::thread::sleep(ms(100));
        }
    }
    assert!(
        command(sentinel_port, "SENTINEL get-master-addr-by-name wheel")
            .is_some_and(|r| r.contains(&replica_port.to_string())),
        "the replica was promoted"
    );
    // Every acknowledged message arrives, in order; a GAP first if the
    // promoted replica had lost numbers.
    let mut lines = Vec::new();
    while lines
        .iter()
        .filter(|l: &&String| l.starts_with("MSG"))
        .count()
        < acked.len()
    {
        lines.push(data(&mut subscriber));
    }
    let msgs: Vec<String> = lines
        .iter()
        .filter(|l| l.starts_with("MSG"))
        .cloned()
        .collect();
    let expected: Vec<String> = acked
        .iter()
        .map(|(seq, n)| format!("MSG t {seq} m{n}"))
        .collect();
    assert_eq!(msgs, expected, "{lines:?}");
    if acked[0].0 != 6 {
        assert_eq!(lines[0], "GAP t 1", "renumbered without a GAP: {lines:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
