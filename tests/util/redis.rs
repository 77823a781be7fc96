//! A real `redis-server` per test: on a free loopback port, with an
//! append-only file in a directory of its own (so that a restart keeps the
//! data, as a production Redis must), killed and its directory removed on
//! drop.
//!
//! Needs Debian's `redis-server` (`.ci/run` installs it). Without it a test
//! says SKIPPED on stderr; under CI it fails.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{PATIENCE, tool_or_skip, wait_until};

pub fn redis_or_skip() -> bool {
    tool_or_skip("redis-server", "--version")
}

pub struct RedisServer {
    child: Option<Child>,
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl RedisServer {
    /// Starts one on a free port and waits until it answers PING.
    pub fn start() -> RedisServer {
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let dir = std::env::temp_dir().join(format!(
            "wheel-redis-{}-{}",
            std::process::id(),
            addr.port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut redis = RedisServer {
            child: None,
            addr,
            dir,
        };
        redis.restart();
        redis
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }

    /// Kills it (SIGKILL: no goodbye to its clients).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes it (SIGSTOP): connections stay open, nothing is answered.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Thaws it (SIGCONT).
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as i32, signal) };
        }
    }

    /// Kills it and starts it again on the same port with no data at all
    /// (as a Redis without persistence comes back), and waits until it
    /// answers.
    pub fn restart_empty(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
        std::fs::create_dir_all(&self.dir).unwrap();
        self.restart();
    }

    /// Starts it again on the same port with the same data, and waits until
    /// it answers.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &self.addr.port().to_string(),
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--dir",
            ])
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        assert!(
            wait_until(PATIENCE, || self
                .command("PING")
                .is_some_and(|r| r == "+PONG")),
            "redis-server did not answer on {}",
            self.addr
        );
    }

    /// One inline command's first reply line, if Redis answered.
    pub fn command(&self, line: &str) -> Option<String> {
        reply(self.addr, line).map(|text| text.lines().next().unwrap_or_default().to_owned())
    }
}

/// One inline command to the Redis (or Sentinel) at `addr`: what it
/// answered in one read (up to 4 KiB), if it did.
pub fn reply(addr: SocketAddr, line: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("{line}\r\n").as_bytes()).ok()?;
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TCP proxy in front of a Redis that injects link faults: existing
/// connections made silent (bytes dropped, no FIN, no RST: a NAT or
/// firewall that forgot the flows) or reset, and every byte delayed.
/// Connections made after a fault pass.
pub struct FaultProxy {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    accepted: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Connections numbered below this pass nothing.
    cut: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Connections numbered below this are reset.
    reset: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Delay before each chunk is passed on, in ms.
    delay_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl FaultProxy {
    pub fn start(to: SocketAddr) -> FaultProxy {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU64, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let proxy = FaultProxy {
            addr,
            accepted: Arc::new(AtomicU64::new(0)),
            cut: Arc::new(AtomicU64::new(0)),
            reset: Arc::new(AtomicU64::new(0)),
            delay_ms: Arc::new(AtomicU64::new(0)),
        };
        let (counter, cuts, resets, delay) = (
            Arc::clone(&proxy.accepted),
            Arc::clone(&proxy.cut),
            Arc::clone(&proxy.reset),
            Arc::clone(&proxy.delay_ms),
        );
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let (Ok(client), Ok(server)) = (client, TcpStream::connect(to)) else {
                    continue;
                };
                let n = counter.fetch_add(1, Ordering::AcqRel);
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let (cut, reset, delay) =
                        (Arc::clone(&cuts), Arc::clone(&resets), Arc::clone(&delay));
                    // Wakes the reader now and then, to notice a reset.
                    let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        loop {
                            if n < reset.load(Ordering::Acquire) {
                                // SO_LINGER 0: close sends RST.
                                let _ =
                                    socket2::SockRef::from(&to).set_linger(Some(Duration::ZERO));
                                let _ =
                                    socket2::SockRef::from(&from).set_linger(Some(Duration::ZERO));
                                let _ = to.shutdown(std::net::Shutdown::Both);
                                let _ = from.shutdown(std::net::Shutdown::Both);
                                return;
                            }
                            let got = match from.read(&mut buf) {
                                Ok(0) => {
                                    let _ = to.shutdown(std::net::Shutdown::Write);
                                    return;
                                }
                                Ok(got) => got,
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock
                                            | std::io::ErrorKind::TimedOut
                                    ) =>
                                {
                                    continue;
                                }
                                Err(_) => return,
                            };
                            let wait = delay.load(Ordering::Acquire);
                            if wait > 0 {
                                std::thread::sleep(Duration::from_millis(wait));
                            }
                            let silent = n < cut.load(Ordering::Acquire);
                            if !silent && to.write_all(&buf[..got]).is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        proxy
    }

    /// Every connection open now passes nothing from here on.
    pub fn silence_existing(&self) {
        use std::sync::atomic::Ordering;
        self.cut
            .store(self.accepted.load(Ordering::Acquire), Ordering::Release);
    }

    /// Every connection open now is reset (RST both ways).
    pub fn reset_existing(&self) {
        use std::sync::atomic::Ordering;
        self.reset
            .store(self.accepted.load(Ordering::Acquire), Ordering::Release);
    }

    /// Every chunk, both ways, waits this long first (zero: none).
    pub fn delay(&self, by: Duration) {
        self.delay_ms
            .store(by.as_millis() as u64, std::sync::atomic::Ordering::Release);
    }
}
