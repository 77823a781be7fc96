//! Test hosts in network namespaces: two namespaces joined by a veth pair,
//! 10.231.0.1 (server side) and 10.231.0.2 (client side). Pulling the cable
//! sets the client's veth down: the peer vanishes, no FIN, no RST.
//!
//! Needs root and iproute2. Without them a test reports that it could not
//! run (on stderr, plainly) and returns; under CI (`CI` set) it fails
//! instead, since CI must run these tests.

use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 1);
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 2);

/// A server namespace and a client namespace joined by a veth pair. Both
/// are deleted on drop (deleting a namespace deletes its veth end too).
pub struct Pair {
    pub server_ns: String,
    pub client_ns: String,
    client_if: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Pair {
    /// Creates the pair, or returns `None` (after saying why on stderr) when
    /// this machine cannot. Under CI that is a failure instead.
    pub fn create(test: &str) -> Option<Pair> {
        match Pair::try_create() {
            Ok(pair) => Some(pair),
            Err(why) if std::env::var_os("CI").is_some() => {
                panic!("{test}: network namespace test cannot run under CI: {why}")
            }
            Err(why) => {
                // Straight to the stderr handle: libtest captures eprintln!
                // from passing tests, and a skip must not pass silently.
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED {test}: needs root and iproute2 for network namespaces ({why})"
                );
                None
            }
        }
    }

    fn try_create() -> Result<Pair, String> {
        // SAFETY: geteuid has no memory effects.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not running as root".into());
        }
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let tag = format!(
            "{:x}{}",
            std::process::id() & 0xffff,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let pair = Pair {
            server_ns: format!("whs-{tag}"),
            client_ns: format!("whc-{tag}"),
            client_if: format!("wc{tag}"),
        };
        let server_if = format!("ws{tag}");
        ip(&["netns", "add", &pair.server_ns])?;
        // From here on, Drop cleans up whatever was made.
        ip(&["netns", "add", &pair.client_ns])?;
        ip(&[
            "link",
            "add",
            &server_if,
            "netns",
            &pair.server_ns,
            "type",
            "veth",
            "peer",
            "name",
            &pair.client_if,
            "netns",
            &pair.client_ns,
        ])?;
        for (ns, dev, addr) in [
            (&pair.server_ns, &server_if, SERVER_IP),
            (&pair.client_ns, &pair.client_if, CLIENT_IP),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(pair)
    }

    /// The cable goes: the client's end stops passing packets.
    pub fn pull_cable(&self) {
        ip(&[
            "-n",
            &self.client_ns,
            "link",
            "set",
            &self.client_if,
            "down",
        ])
        .unwrap();
    }

    /// The cable is back.
    pub fn plug_cable(&self) {
        ip(&["-n", &self.client_ns, "link", "set", &self.client_if, "up"]).unwrap();
    }

    /// A command that runs `program` inside the server namespace.
    pub fn server_command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.server_ns, program]);
        cmd
    }

    /// Runs `f` on a thread that has entered the client namespace. Sockets
    /// it creates belong to that namespace for their whole life, and threads
    /// it starts are born in it.
    pub fn in_client<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_namespace(&self.client_ns, f)
    }

    /// Runs `f` on a thread that has entered the server namespace.
    pub fn in_server<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_namespace(&self.server_ns, f)
    }
}

fn in_namespace<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let handle = File::open(format!("/var/run/netns/{ns}")).expect("namespace handle");
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns changes only this (scoped, short-lived) thread's
            // network namespace; the descriptor is valid for the call.
            let rc = unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "setns into {ns}: {}",
                std::io::Error::last_os_error()
            );
            f()
        })
        .join()
        .expect("namespace thread")
    })
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in [&self.client_ns, &self.server_ns] {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("warning: could not delete network namespace: {e}");
            }
        }
    }
}
