//! HAProxy in front of three wheel-server instances: the PROXY protocol
//! carries the clients' real addresses, health checks use `/healthz`, and a
//! SIGTERM-ed instance's clients move to the others through HAProxy.
//!
//! Needs HAProxy (Debian's `haproxy`; `.ci/run` installs it). Without it the
//! test says SKIPPED on stderr; under CI it fails.

mod util;

use std::collections::HashSet;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use util::{Client, Msg, PATIENCE, ServerProcess, http_get, ms, wait_until};
use wheel_server::client::{self, Backoff, ClientConfig, DeadReason, Event};

fn haproxy_or_skip() -> bool {
    let found = Command::new("haproxy")
        .arg("-v")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        if std::env::var_os("CI").is_some() {
            panic!("haproxy is not installed, and CI must run this test");
        }
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED haproxy test: haproxy is not installed"
        );
    }
    found
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// HAProxy in the foreground, killed on drop.
struct HaProxy(Child, std::path::PathBuf);

impl HaProxy {
    fn start(front: u16, instances: &[(SocketAddr, SocketAddr)]) -> HaProxy {
        let mut cfg = format!(
            "global\n    maxconn 2000\ndefaults\n    mode tcp\n    timeout connect 2s\n    timeout client 10m\n    \
             timeout server 10m\n    timeout tunnel 1h\n    retries 3\n    option redispatch\n\
             frontend wheel\n    bind 127.0.0.1:{front}\n    default_backend servers\n\
             backend servers\n    balance leastconn\n    option httpchk\n    http-check send meth GET uri /healthz\n    \
             http-check expect status 200\n    default-server send-proxy-v2 inter 100ms fall 1 rise 1\n"
        );
        for (i, (addr, metrics)) in instances.iter().enumerate() {
            cfg += &format!("    server s{i} {addr} check port {}\n", metrics.port());
        }
        let path =
            std::env::temp_dir().join(format!("wheel-haproxy-{}-{front}.cfg", std::process::id()));
        std::fs::write(&path, cfg).unwrap();
        let child = Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy");
        HaProxy(child, path)
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_file(&self.1);
    }
}

fn peers(metrics: SocketAddr) -> Vec<String> {
    let (_, body) = http_get(metrics, "/connections");
    let list: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    list.iter()
        .map(|c| c["peer"].as_str().unwrap().to_owned())
        .collect()
}

fn open_connections(metrics: SocketAddr) -> usize {
    util::sample(&util::scrape(metrics), "wheel_connections_open") as usize
}

#[test]
fn three_instances_behind_haproxy() {
    if !haproxy_or_skip() {
        return;
    }
    let mut instances: Vec<ServerProcess> = (0..3)
        .map(|_| {
            ServerProcess::start(&[
                "--proxy-protocol",
                "--metrics-listen",
                "127.0.0.1:0",
                "--shutdown-grace",
                "2s",
            ])
        })
        .collect();
    let metrics: Vec<SocketAddr> = instances.iter().map(ServerProcess::metrics_addr).collect();
    let pairs: Vec<_> = instances
        .iter()
        .zip(&metrics)
        .map(|(s, m)| (s.addr, *m))
        .collect();
    let port = free_port();
    let front: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let _haproxy = HaProxy::start(port, &pairs);
    // Up once every instance passed a health check and a PING goes through.
    assert!(wait_until(PATIENCE, || {
        std::net::TcpStream::connect(front).is_ok_and(|s| {
            let _ = s.set_read_timeout(Some(ms(500)));
            let mut c = Client::from_stream(s);
            c.try_ping(b"up")
        })
    }));
    std::thread::sleep(ms(300));

    // The PROXY protocol: the instances see the clients' own addresses.
    let mut raw: Vec<Client> = (0..12).map(|_| Client::connect(front)).collect();
    for c in &mut raw {
        assert_eq!(c.ping(b"who"), Msg::Pong(b"who".to_vec()));
    }
    let expected: HashSet<String> = raw
        .iter()
        .map(|c| c.stream.local_addr().unwrap().to_string())
        .collect();
    assert!(
        wait_until(PATIENCE, || {
            let seen: HashSet<String> = metrics.iter().flat_map(|m| peers(*m)).collect();
            seen == expected
        }),
        "instances should list exactly the clients' addresses"
    );
    drop(raw);

    // Heartbeat clients through HAProxy.
    let clients: Vec<client::Client> = (0..60)
        .map(|i| {
            client::Client::start(ClientConfig {
                heartbeat_interval: ms(300),
                heartbeat_timeout: ms(300),
                heartbeat_retries: 2,
                connect_timeout: ms(500),
                backoff: Backoff {
                    initial: ms(200),
                    max: ms(1000),
                    multiplier: 2.0,
                },
                seed: Some(i),
                ..ClientConfig::new(front)
            })
            .unwrap()
        })
        .collect();
    for c in &clients {
        let first = c.events().recv_timeout(PATIENCE).unwrap();
        assert!(matches!(first, Event::Connected { .. }), "{first:?}");
    }
    assert!(wait_until(PATIENCE, || metrics
        .iter()
        .map(|m| open_connections(*m))
        .sum::<usize>()
        == 60));

    // SIGTERM the busiest instance: its clients get 1001 and come back
    // through HAProxy on the others.
    let victim = (0..3)
        .max_by_key(|&i| open_connections(metrics[i]))
        .unwrap();
    let on_victim = open_connections(metrics[victim]);
    assert!(on_victim > 0);
    let terminated = Instant::now();
    instances[victim].signal(libc::SIGTERM);
    let mut moved = 0;
    let mut slowest = Duration::ZERO;
    for c in &clients {
        let mut dead = false;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(event) = c
                .events()
                .recv_timeout(if dead { left } else { ms(1).min(left) })
            else {
                break;
            };
            match event {
                Event::Dead { reason } => {
                    assert_eq!(
                        reason,
                        DeadReason::Close {
                            code: 1001,
                            reason: "server shutting down".into()
                        }
                    );
                    dead = true;
                }
                Event::Connected { .. } if dead => {
                    moved += 1;
                    slowest = slowest.max(terminated.elapsed());
                    break;
                }
                _ => {}
            }
        }
    }
    eprintln!(
        "haproxy: {moved} of {on_victim} clients moved off the terminated instance; the last was back {slowest:?} after SIGTERM"
    );
    assert_eq!(
        moved, on_victim,
        "every client of the terminated instance should come back"
    );
    assert!(slowest < Duration::from_secs(3), "took {slowest:?}");
    let status = instances[victim]
        .wait_exit(PATIENCE)
        .expect("the terminated instance exits");
    assert_eq!(status.code(), Some(0));
    let survivors: usize = (0..3)
        .filter(|&i| i != victim)
        .map(|i| open_connections(metrics[i]))
        .sum();
    assert_eq!(survivors, 60);
}
