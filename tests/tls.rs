//! TLS listeners (`tls://`, `tls+line://`, `wss://`) against clients
//! nobody here wrote (Python's `ssl`, `openssl s_client`, Python
//! `websockets`) and rustls's own client: every protocol over TLS, session
//! resumption, the idle timeout and `close_notify`, bad input (plaintext,
//! garbage, a dribbled handshake), and certificate reload under load.
//! Certificates are made at test time with rcgen.

mod util;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use util::{PATIENCE, ServerProcess, http, ms, sample, scrape, wait_until};
use wheel_server::protocol::{Message, OwnedMessage as Msg, Protocol, Reader};

/// A CA, and a certificate for localhost and 127.0.0.1 it signed, written
/// as PEM files in a directory of their own.
struct Pki {
    dir: PathBuf,
    ca: CertificateDer<'static>,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new(test: &str) -> Pki {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("tls-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "wheel-server test CA");
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.join("ca.pem"), issuer.pem()).unwrap();
        let pki = Pki {
            dir,
            ca: issuer.der().clone(),
            issuer,
        };
        pki.issue("server");
        pki
    }

    /// Writes `<name>.pem` and `<name>.key`: a leaf for localhost and
    /// 127.0.0.1 signed by the CA. Returns the leaf's DER.
    fn issue(&self, name: &str) -> CertificateDer<'static> {
        self.issue_with(name, &format!("localhost ({name})"), None)
    }

    /// As `issue`, with this common name, valid until `until` (year, month,
    /// day; else rcgen's default, far off).
    fn issue_with(
        &self,
        name: &str,
        common_name: &str,
        until: Option<(i32, u8, u8)>,
    ) -> CertificateDer<'static> {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        if let Some((year, month, day)) = until {
            // Valid from a year before, or from 2025 for a future end.
            params.not_before = rcgen::date_time_ymd((year - 1).min(2025), month, day);
            params.not_after = rcgen::date_time_ymd(year, month, day);
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        std::fs::write(self.dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(self.dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
        cert.der().clone()
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    /// rustls's client configuration trusting the CA.
    fn client(&self) -> Arc<ClientConfig> {
        Arc::new(self.client_builder().with_no_client_auth())
    }

    /// As `client`, presenting the certificate `<name>.pem` (and its key).
    fn client_with_cert(&self, name: &str) -> Arc<ClientConfig> {
        let chain =
            vec![CertificateDer::from_pem_file(self.dir.join(format!("{name}.pem"))).unwrap()];
        let key =
            rustls::pki_types::PrivateKeyDer::from_pem_file(self.dir.join(format!("{name}.key")))
                .unwrap();
        Arc::new(
            self.client_builder()
                .with_client_auth_cert(chain, key)
                .unwrap(),
        )
    }

    fn client_builder(
        &self,
    ) -> rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone()).unwrap();
        ClientConfig::builder_with_provider(Arc::new(wheel_server::tls_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A server process with TLS listeners of every protocol (frame first)
/// and the admin endpoint.
fn server(pki: &Pki, extra: &[&str]) -> (ServerProcess, SocketAddr) {
    let (cert, key) = (pki.path("server.pem"), pki.path("server.key"));
    let mut args = vec!["--listen", "tls://127.0.0.1:0", "--tls-cert", &cert];
    args.extend(["--tls-key", &key, "--admin-listen", "127.0.0.1:0"]);
    args.extend(extra);
    let server = ServerProcess::start(&args);
    let admin = server.metrics_addr();
    (server, admin)
}

/// A loopback port free right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

fn connect(config: &Arc<ClientConfig>, addr: SocketAddr) -> Tls {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(PATIENCE)).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let conn = ClientConnection::new(Arc::clone(config), name).unwrap();
    StreamOwned::new(conn, tcp)
}

fn send(tls: &mut Tls, msg: Message<'_>) -> std::io::Result<()> {
    let mut wire = Vec::new();
    Protocol::Frame.encode(&msg, &mut wire).unwrap();
    tls.write_all(&wire)?;
    tls.flush()
}

/// The next message; `None` at a clean end (after `close_notify`).
fn recv(tls: &mut Tls, reader: &mut Reader) -> std::io::Result<Option<Msg>> {
    reader.read_message(tls)
}

fn ping_pong(tls: &mut Tls, reader: &mut Reader, payload: &[u8]) -> bool {
    send(tls, Message::Ping(payload)).is_ok()
        && matches!(recv(tls, reader), Ok(Some(Msg::Pong(p))) if p == payload)
}

fn handshakes(admin: SocketAddr, result: &str) -> f64 {
    sample(
        &scrape(admin),
        &format!("wheel_tls_handshakes_total{{result=\"{result}\"}}"),
    )
}

#[test]
fn rustls_frames_resume_and_end_with_an_idle_close_and_close_notify() {
    let pki = Pki::new("frames");
    let (server, admin) = server(&pki, &["--idle-timeout", "400ms", "--tick", "20ms"]);
    let config = pki.client();
    let mut tls = connect(&config, server.addr);
    let mut reader = Reader::new(Protocol::Frame, 1 << 20);
    assert!(ping_pong(&mut tls, &mut reader, b"over tls"));
    let big = vec![7u8; 300_000];
    send(&mut tls, Message::Data(&big)).unwrap();
    assert_eq!(recv(&mut tls, &mut reader).unwrap(), Some(Msg::Data(big)));
    // Silent now: the timer's CLOSE 4000 comes encrypted, then
    // close_notify (a clean end, not a truncation).
    let started = Instant::now();
    assert_eq!(
        recv(&mut tls, &mut reader).unwrap(),
        Some(Msg::Close(4000, "idle timeout".into()))
    );
    assert!(started.elapsed() >= ms(350), "{:?}", started.elapsed());
    assert_eq!(recv(&mut tls, &mut reader).unwrap(), None, "close_notify");
    // The client's session cache holds a ticket: the next handshake is
    // short.
    let mut again = connect(&config, server.addr);
    let mut reader = Reader::new(Protocol::Frame, 1 << 20);
    assert!(ping_pong(&mut again, &mut reader, b"resumed"));
    assert_eq!(
        again.conn.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    assert!(util::wait_until(ms(2000), || handshakes(admin, "resumed") == 1.0));
    assert_eq!(handshakes(admin, "full"), 1.0);
}

#[test]
fn python_ssl_openssl_and_websockets_speak_every_protocol_over_tls() {
    if !util::tool_or_skip("python3", "--version") || !util::tool_or_skip("openssl", "version") {
        return;
    }
    let pki = Pki::new("clients");
    let line: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let ws: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let (server, _admin) = server(
        &pki,
        &[
            "--listen",
            &format!("tls+line://{line}"),
            "--listen",
            &format!("wss://{ws}/ws"),
        ],
    );
    // Python's ssl module, frame mode: a PING and a DATA.
    let script = r#"
import socket, ssl, struct, sys
ctx = ssl.create_default_context(cafile=sys.argv[1])
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[2]))), server_hostname="localhost")
frame = lambda t, p: struct.pack(">I", len(p) + 1) + bytes([t]) + p
s.sendall(frame(2, b"py") + frame(1, b"hello"))
want, got = 2 * 5 + 2 + 5, b""
while len(got) < want:
    got += s.recv(want - len(got))
print(got.hex())
"#;
    let out = Command::new("python3")
        .args([
            "-c",
            script,
            &pki.path("ca.pem"),
            &server.addr.port().to_string(),
        ])
        .output()
        .unwrap();
    let mut expected = Vec::new();
    Protocol::Frame
        .encode(&Message::Pong(b"py"), &mut expected)
        .unwrap();
    Protocol::Frame
        .encode(&Message::Data(b"hello"), &mut expected)
        .unwrap();
    let hex: String = expected.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), hex, "{out:?}");

    // openssl s_client, line mode.
    let mut client = Command::new("openssl")
        .args(["s_client", "-quiet", "-connect", &line.to_string()])
        .args(["-CAfile", &pki.path("ca.pem"), "-servername", "localhost"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    client
        .stdin
        .take()
        .unwrap()
        .write_all(b"PING s_client\nQUIT\n")
        .unwrap();
    let mut answer = String::new();
    client
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut answer)
        .unwrap();
    let _ = client.wait();
    assert_eq!(answer, "PONG s_client\nCLOSE 1000 bye\n");

    // Python websockets over wss://.
    if util::python_websockets_or_skip() {
        let script = r#"
import asyncio, ssl, sys, websockets
async def main():
    ctx = ssl.create_default_context(cafile=sys.argv[1])
    async with websockets.connect(f"wss://localhost:{sys.argv[2]}/ws", ssl=ctx) as ws:
        await ws.send("over wss")
        print(await ws.recv())
asyncio.run(main())
"#;
        let out = Command::new("python3")
            .args(["-c", script, &pki.path("ca.pem"), &ws.port().to_string()])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "over wss",
            "{out:?}"
        );
    }
}

#[test]
fn plaintext_garbage_and_a_dribbled_handshake_are_dropped_and_counted() {
    let pki = Pki::new("bad");
    let (server, admin) = server(&pki, &["--handshake-timeout", "500ms"]);
    // A frame-mode client that forgot TLS.
    let mut plain = TcpStream::connect(server.addr).unwrap();
    plain.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut wire = Vec::new();
    Protocol::Frame
        .encode(&Message::Ping(b"x"), &mut wire)
        .unwrap();
    plain.write_all(&wire).unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(
        answer.first().is_none_or(|&b| b == 0x15),
        "only a TLS alert may come back: {answer:?}"
    );
    // Garbage that looks like a record header.
    let mut garbage = TcpStream::connect(server.addr).unwrap();
    garbage.set_read_timeout(Some(PATIENCE)).unwrap();
    garbage
        .write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 0xff, 0xff, 0xff, 0xff, 0xff])
        .unwrap();
    let _ = garbage.read_to_end(&mut Vec::new());
    // A real ClientHello, one byte at a time, slower than the deadline.
    let mut hello = Vec::new();
    let mut conn =
        ClientConnection::new(pki.client(), ServerName::try_from("localhost").unwrap()).unwrap();
    conn.write_tls(&mut hello).unwrap();
    let mut slow = TcpStream::connect(server.addr).unwrap();
    let started = Instant::now();
    let mut dropped = false;
    for byte in &hello {
        if slow.write_all(&[*byte]).is_err() {
            dropped = true;
            break;
        }
        // Pacing: the slowness is what is tested.
        std::thread::sleep(ms(50));
        if started.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    slow.set_read_timeout(Some(PATIENCE)).unwrap();
    let ended = dropped || matches!(slow.read(&mut [0u8; 64]), Ok(0) | Err(_));
    assert!(ended, "a dribbled handshake outlived the deadline");
    assert!(started.elapsed() >= ms(450), "{:?}", started.elapsed());
    assert!(util::wait_until(ms(2000), || handshakes(admin, "timeout") == 1.0));
    assert_eq!(handshakes(admin, "not_tls"), 2.0);
    let text = scrape(admin);
    assert_eq!(
        sample(&text, "wheel_handshake_timeouts_total{stage=\"tls\"}"),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "wheel_connections_closed_total{reason=\"tls_handshake\"}"
        ),
        3.0
    );
    // And it still serves.
    let mut tls = connect(&pki.client(), server.addr);
    let mut reader = Reader::new(Protocol::Frame, 1 << 20);
    assert!(ping_pong(&mut tls, &mut reader, b"still"));
}

#[test]
fn a_reload_under_load_keeps_every_connection_and_serves_the_new_certificate() {
    let pki = Pki::new("reload");
    let (server, admin) = server(&pki, &["--idle-timeout", "60s"]);
    let config = pki.client();
    let mut conns: Vec<(Tls, Reader)> = (0..200)
        .map(|_| {
            let mut tls = connect(&config, server.addr);
            let mut reader = Reader::new(Protocol::Frame, 1 << 20);
            assert!(ping_pong(&mut tls, &mut reader, b"before"));
            (tls, reader)
        })
        .collect();
    let old = conns[0].0.conn.peer_certificates().unwrap()[0].clone();
    let new = pki.issue_with("next", "localhost (next)", Some((2031, 6, 1)));
    std::fs::rename(pki.dir.join("next.pem"), pki.dir.join("server.pem")).unwrap();
    std::fs::rename(pki.dir.join("next.key"), pki.dir.join("server.key")).unwrap();
    server.signal(libc::SIGHUP);
    assert!(
        server
            .wait_for_log("TLS certificate reloaded", PATIENCE)
            .is_some()
    );
    for (tls, reader) in &mut conns {
        assert!(ping_pong(tls, reader, b"after"), "a connection was lost");
    }
    // A client without a session to resume: a full handshake.
    let mut fresh = connect(&pki.client(), server.addr);
    let mut reader = Reader::new(Protocol::Frame, 1 << 20);
    assert!(ping_pong(&mut fresh, &mut reader, b"new"));
    let served = fresh.conn.peer_certificates().unwrap()[0].clone();
    assert_ne!(served, old);
    assert_eq!(served, new);
    // 2031-06-01T00:00:00Z, the new certificate's end.
    assert_eq!(
        sample(&scrape(admin), "wheel_tls_cert_expiry_timestamp_seconds"),
        1_938_038_400.0
    );
    // A broken file is refused and the certificate stays.
    std::fs::write(pki.dir.join("server.key"), "not a key").unwrap();
    let (status, body) = http(
        admin,
        "POST /admin/reload-tls HTTP/1.0\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("server.key"), "{body}");
    let mut after = connect(&pki.client(), server.addr);
    let mut reader = Reader::new(Protocol::Frame, 1 << 20);
    assert!(ping_pong(&mut after, &mut reader, b"kept"));
    assert_eq!(after.conn.peer_certificates().unwrap()[0], new);
}

#[test]
fn bad_tls_files_exit_2_naming_the_file() {
    let pki = Pki::new("files");
    pki.issue("other");
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_wheel-server"))
            .args(["--listen", "tls://127.0.0.1:0"])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stderr) = run(&[]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--tls-cert"), "{stderr}");
    let missing = pki.path("missing.pem");
    let (code, stderr) = run(&["--tls-cert", &missing, "--tls-key", &pki.path("server.key")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("missing.pem"), "{stderr}");
    // A key that belongs to another certificate.
    let (code, stderr) = run(&[
        "--tls-cert",
        &pki.path("server.pem"),
        "--tls-key",
        &pki.path("other.key"),
    ]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("other.key"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn client_certificates_are_required_verified_and_name_the_connection() {
    let pki = Pki::new("clientca");
    let ca = pki.path("ca.pem");
    let (server, admin) = server(&pki, &["--tls-client-ca", &ca]);
    pki.issue_with("device", "device-42", None);
    let mut tls = connect(&pki.client_with_cert("device"), server.addr);
    let mut reader = Reader::new(Protocol::Frame, 1 << 20);
    assert!(ping_pong(&mut tls, &mut reader, b"me"));
    let (status, body) = util::http_get(admin, "/connections");
    assert_eq!(status, 200);
    assert!(body.contains("\"sub\":\"device-42\""), "{body}");
    // No certificate, and an expired one: refused in the handshake.
    let mut anonymous = connect(&pki.client(), server.addr);
    assert!(!ping_pong(
        &mut anonymous,
        &mut Reader::new(Protocol::Frame, 1024),
        b"x"
    ));
    pki.issue_with("old", "device-7", Some((2020, 1, 1)));
    let mut expired = connect(&pki.client_with_cert("old"), server.addr);
    assert!(!ping_pong(
        &mut expired,
        &mut Reader::new(Protocol::Frame, 1024),
        b"x"
    ));
    assert!(util::wait_until(ms(2000), || handshakes(
        admin,
        "bad_client_cert"
    ) == 2.0));
    assert_eq!(handshakes(admin, "full"), 1.0);
}

/// The client library over TLS: it trusts the test CA, reconnects after
/// the server drains it (maximum connection age), and resumes its TLS
/// session on the reconnect; a certificate for another name is a failed
/// connection attempt with the reason, backed off.
#[test]
fn the_client_library_speaks_tls_and_resumes_across_reconnects() {
    use wheel_server::client::{Backoff, Client, ClientConfig, Event, TlsClient};
    let pki = Pki::new("client");
    let (server, admin) = server(
        &pki,
        &[
            "--max-connection-age",
            "300ms",
            "--max-connection-age-grace",
            "1s",
        ],
    );
    let tls = TlsClient::new(Some(&pki.dir.join("ca.pem")), false).unwrap();
    let config = ClientConfig {
        tls: Some(tls.clone()),
        heartbeat_interval: ms(100),
        heartbeat_timeout: ms(500),
        backoff: Backoff {
            initial: ms(20),
            max: ms(100),
            multiplier: 2.0,
        },
        ..ClientConfig::new(server.addr)
    };
    let client = Client::start(config.clone()).unwrap();
    let mut connected = 0;
    let deadline = Instant::now() + PATIENCE;
    while connected < 3 && Instant::now() < deadline {
        match client.events().recv_timeout(PATIENCE) {
            Ok(Event::Connected { .. }) => connected += 1,
            Ok(Event::ConnectFailed { error, .. }) => panic!("connect failed: {error}"),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert_eq!(connected, 3, "connected, drained, reconnected twice");
    drop(client);
    assert_eq!(handshakes(admin, "full"), 1.0, "only the first was full");
    assert!(handshakes(admin, "resumed") >= 2.0);

    let wrong = TlsClient {
        server_name: Some("elsewhere.example".into()),
        ..tls
    };
    let client = Client::start(ClientConfig {
        tls: Some(wrong),
        max_attempts: Some(1),
        ..config
    })
    .unwrap();
    match client.events().recv_timeout(PATIENCE) {
        Ok(Event::ConnectFailed { error, .. }) => {
            assert!(error.contains("TLS handshake"), "{error}");
            assert!(error.contains("not valid for name"), "{error}");
        }
        other => panic!("expected a failed connection, got {other:?}"),
    }
}

/// With a shared ticket key, a session made with one instance resumes on
/// another (or on the same one after a restart); without it, it cannot.
#[test]
fn a_shared_ticket_key_resumes_sessions_across_instances() {
    let pki = Pki::new("tickets");
    let key = pki.path("ticket.key");
    std::fs::write(&key, format!("{}\n", "5a".repeat(32))).unwrap();
    let shared = ["--tls-ticket-key", key.as_str()];
    let (first, _) = server(&pki, &shared);
    let (second, second_admin) = server(&pki, &shared);
    let (lone, lone_admin) = server(&pki, &[]);
    let config = pki.client();
    let mut reader = Reader::new(Protocol::Frame, 1 << 20);
    let mut primer = connect(&config, first.addr);
    assert!(ping_pong(&mut primer, &mut reader, b"prime"));
    drop(primer);
    drop(first);
    let mut elsewhere = connect(&config, second.addr);
    assert!(ping_pong(&mut elsewhere, &mut reader, b"moved"));
    assert_eq!(
        elsewhere.conn.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    assert_eq!(handshakes(second_admin, "resumed"), 1.0);
    let mut stranger = connect(&config, lone.addr);
    assert!(ping_pong(&mut stranger, &mut reader, b"full"));
    assert_eq!(handshakes(lone_admin, "resumed"), 0.0);
    assert_eq!(handshakes(lone_admin, "full"), 1.0);
    // A key that is not 64 hex digits: exit 2 naming the file.
    std::fs::write(&key, "short").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wheel-server"))
        .args([
            "--listen",
            "tls://127.0.0.1:0",
            "--tls-cert",
            &pki.path("server.pem"),
        ])
        .args([
            "--tls-key",
            &pki.path("server.key"),
            "--tls-ticket-key",
            &key,
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("ticket.key") && stderr.contains("--tls-ticket-key"),
        "{stderr}"
    );
}

/// A drain over TLS: SIGTERM sends CLOSE 1001 through the session, the
/// server goes on answering, and the client's half-close ends it cleanly.
#[test]
fn sigterm_drains_a_tls_connection() {
    let pki = Pki::new("drain");
    let (mut server, _admin) = server(&pki, &["--shutdown-grace", "5s"]);
    let mut tls = connect(&pki.client(), server.addr);
    let mut reader = Reader::new(Protocol::Frame, 1 << 20);
    assert!(ping_pong(&mut tls, &mut reader, b"before"));
    server.signal(libc::SIGTERM);
    assert_eq!(
        recv(&mut tls, &mut reader).unwrap(),
        Some(Msg::Close(1001, "server shutting down".into()))
    );
    // Still answered after the CLOSE 1001.
    assert!(ping_pong(&mut tls, &mut reader, b"during"));
    tls.conn.send_close_notify();
    tls.flush().unwrap();
    tls.sock.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(recv(&mut tls, &mut reader).unwrap(), None, "a clean end");
    let status = server.wait_exit(PATIENCE).expect("the server exits");
    assert!(status.success(), "{status:?}");
}

/// README's certificate recipe, made by `openssl`, works with the client
/// library; the usual one-liner without it (a `CA:TRUE` certificate) is
/// refused with a reason that says what is wrong and how to fix it.
#[test]
fn the_readme_certificate_recipe_works_and_the_usual_one_liner_is_explained() {
    use wheel_server::client::{Client, ClientConfig, Event, TlsClient};
    if !util::tool_or_skip("openssl", "version") {
        return;
    }
    let pki = Pki::new("recipe");
    let make = |name: &str, extra: &[&str]| {
        let (cert, key) = (
            pki.path(&format!("{name}.pem")),
            pki.path(&format!("{name}.key")),
        );
        let mut args = vec![
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "365",
            "-keyout",
            &key,
            "-out",
            &cert,
            "-subj",
            "/CN=localhost",
        ];
        args.extend(extra);
        let made = Command::new("openssl").args(&args).output().unwrap();
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        (cert, key)
    };
    let recipe = make(
        "recipe",
        &[
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ],
    );
    let one_liner = make("oneliner", &[]);
    for ((cert, key), works) in [(recipe, true), (one_liner, false)] {
        let server = ServerProcess::start(&[
            "--listen",
            "tls://127.0.0.1:0",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ]);
        let tls = TlsClient {
            server_name: Some("localhost".into()),
            ..TlsClient::new(Some(std::path::Path::new(&cert)), false).unwrap()
        };
        let client = Client::start(ClientConfig {
            tls: Some(tls),
            max_attempts: Some(1),
            ..ClientConfig::new(server.addr)
        })
        .unwrap();
        match client.events().recv_timeout(PATIENCE) {
            Ok(Event::Connected { .. }) => assert!(works, "the one-liner's CA:TRUE was accepted"),
            Ok(Event::ConnectFailed { error, .. }) => {
                assert!(!works, "the recipe failed: {error}");
                assert!(error.contains("CA:FALSE"), "{error}");
            }
            other => panic!("expected a connection attempt's outcome, got {other:?}"),
        }
    }
}

/// A parked TLS connection: its PINGs are decrypted and answered by the
/// parking thread (no thread taken), and its DATA takes a thread again with
/// the plaintext already read; the session goes on as if nothing happened.
#[test]
fn a_parked_tls_connection_answers_pings_without_a_thread() {
    let pki = Pki::new("parked");
    let (server, admin) = server(&pki, &["--park-after", "30ms"]);
    let config = pki.client();
    let mut tls = connect(&config, server.addr);
    let mut reader = Reader::new(Protocol::Frame, 1 << 20);
    send(&mut tls, Message::Data(b"hello")).unwrap();
    assert_eq!(
        recv(&mut tls, &mut reader).unwrap(),
        Some(Msg::Data(b"hello".to_vec()))
    );
    let parked = || sample(&scrape(admin), "wheel_connections_parked") == 1.0;
    assert!(wait_until(PATIENCE, parked));
    for i in 0..3u8 {
        assert!(ping_pong(&mut tls, &mut reader, &[b'p', i]));
    }
    let text = scrape(admin);
    assert_eq!(sample(&text, "wheel_parked_pongs_total"), 3.0);
    assert_eq!(sample(&text, "wheel_connection_unparks_total"), 0.0);
    assert_eq!(sample(&text, "wheel_connections_parked"), 1.0);
    let big = vec![9u8; 100_000];
    send(&mut tls, Message::Data(&big)).unwrap();
    assert_eq!(recv(&mut tls, &mut reader).unwrap(), Some(Msg::Data(big)));
    assert_eq!(
        sample(&scrape(admin), "wheel_connection_unparks_total"),
        1.0
    );
    assert!(wait_until(PATIENCE, parked), "parks again");
}
