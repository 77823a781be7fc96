//! HAProxy in front of test instances: started in the foreground from a
//! configuration written for the test, asked for its servers' states on
//! its admin socket, killed on drop.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use wheel_server::client::{Backoff, ClientConfig};

use super::{PATIENCE, ms, tool_or_skip};

/// A client of a fleet behind HAProxy: quick heartbeats (dead after about
/// 900 ms of silence), a short jittered backoff seeded with `seed`.
pub fn fleet_client(front: SocketAddr, seed: u64) -> ClientConfig {
    ClientConfig {
        heartbeat_interval: ms(300),
        heartbeat_timeout: ms(300),
        heartbeat_retries: 2,
        connect_timeout: ms(500),
        backoff: Backoff {
            initial: ms(200),
            max: ms(1000),
            multiplier: 2.0,
        },
        seed: Some(seed),
        ..ClientConfig::new(front)
    }
}

pub fn haproxy_or_skip() -> bool {
    tool_or_skip("haproxy", "-v")
}

pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// HAProxy in the foreground, with an admin socket; killed on drop.
pub struct HaProxy {
    pub child: Child,
    config: PathBuf,
    socket: PathBuf,
}

impl HaProxy {
    /// Backend servers `s0`, `s1`, ... at `(address, metrics address)`.
    pub fn start(front: SocketAddr, servers: &[(SocketAddr, SocketAddr)]) -> HaProxy {
        let base = std::env::temp_dir().join(format!(
            "wheel-haproxy-{}-{}",
            std::process::id(),
            front.port()
        ));
        let socket = base.with_extension("sock");
        let mut cfg = format!(
            "global\n    maxconn 2000\n    stats socket {} mode 600 level admin\n\
             defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 10m\n    \
             timeout server 10m\n    timeout tunnel 1h\n    retries 3\n    option redispatch\n\
             frontend wheel\n    bind {front}\n    default_backend servers\n\
             backend servers\n    balance leastconn\n    option httpchk\n    \
             http-check send meth GET uri /healthz\n    http-check expect status 200\n    \
             default-server send-proxy-v2 inter 100ms fall 1 rise 1\n",
            socket.display()
        );
        for (i, (addr, metrics)) in servers.iter().enumerate() {
            cfg += &format!("    server s{i} {addr} check port {}\n", metrics.port());
        }
        HaProxy::with_config(base, socket, &cfg)
    }

    /// HAProxy running `cfg`, written next to `base`; `socket` is the admin
    /// socket the configuration names.
    pub fn with_config(base: PathBuf, socket: PathBuf, cfg: &str) -> HaProxy {
        let config = base.with_extension("cfg");
        std::fs::write(&config, cfg).unwrap();
        let child = Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy");
        HaProxy {
            child,
            config,
            socket,
        }
    }

    /// Each backend server's status (`UP`, `DOWN`, ...), from `show stat`.
    pub fn status(&self) -> HashMap<String, String> {
        let Ok(mut socket) = UnixStream::connect(&self.socket) else {
            return HashMap::new();
        };
        let mut csv = String::new();
        if socket.write_all(b"show stat\n").is_err() || socket.read_to_string(&mut csv).is_err() {
            return HashMap::new();
        }
        let mut lines = csv.lines();
        let Some(header) = lines.next().and_then(|h| h.strip_prefix("# ")) else {
            return HashMap::new();
        };
        let column = |name| header.split(',').position(|c| c == name).unwrap();
        let (px, sv, status) = (column("pxname"), column("svname"), column("status"));
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f.len() > status && f[px] == "servers" && f[sv].starts_with('s'))
            .map(|f| (f[sv].to_owned(), f[status].to_owned()))
            .collect()
    }

    pub fn wait_status(&self, want: &[(&str, &str)]) -> bool {
        super::wait_until(PATIENCE, || {
            let status = self.status();
            want.iter()
                .all(|(sv, st)| status.get(*sv).is_some_and(|s| s == st))
        })
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
        let _ = std::fs::remove_file(&self.socket);
    }
}
