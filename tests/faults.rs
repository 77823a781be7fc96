//! Hostile and broken clients: connection floods, descriptor exhaustion,
//! churn, slow consumers, clients that die mid-frame. None may hurt other
//! connections or the process.

mod util;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use util::{
    Client, Msg, PATIENCE, Recv, ServerProcess, config, fds, ms, sample, start, wait_until,
    worker_threads,
};
use wheel_server::protocol::{Message, Protocol};

/// CPU seconds (user + system) a process has used, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()) / hz
}

#[test]
fn a_connection_flood_gets_1013_and_admitted_clients_keep_normal_latency() {
    let server = start({
        let mut config = config();
        config.max_connections = 20;
        config
    });
    let addr = server.local_addr();
    let mut admitted: Vec<Client> = (0..20).map(|_| Client::connect(addr)).collect();
    for c in &mut admitted {
        assert_eq!(c.ping(b"in"), Msg::Pong(b"in".to_vec()));
    }
    let flood = std::thread::spawn(move || {
        let mut slowest = Duration::ZERO;
        for _ in 0..300 {
            let start = Instant::now();
            let mut extra = Client::connect(addr);
            assert_eq!(extra.expect_close().0, 1013);
            slowest = slowest.max(start.elapsed());
        }
        slowest
    });
    // Meanwhile, an admitted client keeps talking.
    let mut worst = Duration::ZERO;
    let mut rounds = 0;
    while !flood.is_finished() || rounds < 50 {
        let start = Instant::now();
        assert_eq!(admitted[0].ping(b"rtt"), Msg::Pong(b"rtt".to_vec()));
        worst = worst.max(start.elapsed());
        rounds += 1;
    }
    let slowest_rejection = flood.join().unwrap();
    eprintln!(
        "flood: slowest rejection {slowest_rejection:?}; admitted client's worst RTT {worst:?} over {rounds} pings"
    );
    assert!(
        slowest_rejection < ms(500),
        "a rejection took {slowest_rejection:?}"
    );
    assert!(worst < ms(100), "an admitted client waited {worst:?}");
    for c in &mut admitted {
        assert_eq!(c.ping(b"still"), Msg::Pong(b"still".to_vec()));
    }
}

#[test]
fn descriptor_exhaustion_does_not_spin_crash_or_stick() {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_wheel-server"));
    cmd.args(["--listen", "127.0.0.1:0", "--idle-timeout", "0"]);
    // SAFETY: the closure only calls setrlimit, which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 64,
                rlim_max: 64,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let server = ServerProcess::spawn(cmd);
    let pid = server.pid();
    // More connections than descriptors: the kernel completes them all, the
    // server can accept only some.
    let clients: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(server.addr).unwrap())
        .collect();
    assert!(
        server.wait_for_log("backing off", PATIENCE).is_some(),
        "the server should report running out of descriptors"
    );
    assert!(wait_until(PATIENCE, || fds(pid) >= 60));
    // Saturated: a spinning accept loop would burn a core.
    let (cpu0, t0) = (cpu_seconds(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(2));
    let busy = (cpu_seconds(pid) - cpu0) / t0.elapsed().as_secs_f64();
    eprintln!(
        "descriptor exhaustion: server CPU {:.1}% of a core while saturated",
        busy * 100.0
    );
    assert!(
        busy < 0.10,
        "server used {:.0}% of a core while out of descriptors",
        busy * 100.0
    );
    assert!(
        server.child.id() == pid && std::fs::metadata(format!("/proc/{pid}")).is_ok(),
        "still running"
    );
    // Connections close: the server recovers and serves again.
    drop(clients);
    assert!(
        wait_until(PATIENCE, || fds(pid) < 20),
        "descriptors freed: {}",
        fds(pid)
    );
    let mut fresh = Client::connect(server.addr);
    assert_eq!(fresh.ping(b"back"), Msg::Pong(b"back".to_vec()));
    assert!(server.wait_for_log("accepting again", PATIENCE).is_some());
}

#[test]
fn twenty_thousand_connect_ping_disconnect_cycles_leave_nothing_behind() {
    // Parked threads leave soon after the churn, so that none remain.
    let server = ServerProcess::start(&[
        "--metrics-listen",
        "127.0.0.1:0",
        "--thread-cache-idle",
        "200ms",
    ]);
    let metrics = server.metrics_addr();
    let pid = server.pid();
    // After the start's last look at /proc (the capacity line), which
    // holds a descriptor for a moment.
    assert!(server.wait_for_log("this box lets", PATIENCE).is_some());
    let base_fds = fds(pid);
    let addr = server.addr;
    let start = Instant::now();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                for i in 0..5_000u32 {
                    let mut c = Client::connect(addr);
                    assert_eq!(
                        c.ping(&i.to_be_bytes()),
                        Msg::Pong(i.to_be_bytes().to_vec())
                    );
                    // The CLOSE handshake: the server closes first, so the
                    // TIME_WAIT state lands on its side, not on this
                    // machine's ephemeral ports.
                    c.send(Message::Close {
                        code: 1000,
                        reason: "",
                    });
                    assert_eq!(c.expect_close().0, 1000);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    eprintln!("churn: 20,000 cycles in {:?}", start.elapsed());
    // Worker threads by name: the metrics endpoint's HTTP threads come and
    // go on their own schedule.
    let settled = wait_until(PATIENCE, || {
        worker_threads(pid) == 0 && fds(pid) == base_fds
    });
    assert!(
        settled,
        "worker threads {} (expected 0), fds {} (baseline {base_fds})",
        worker_threads(pid),
        fds(pid)
    );
    // The timer thread processes the last deregister events and refreshes
    // its gauge on its next tick.
    let scrape = || util::scrape(metrics);
    assert!(
        wait_until(PATIENCE, || sample(&scrape(), "wheel_timers_armed") == 0.0),
        "{}",
        scrape()
    );
    let text = scrape();
    assert_eq!(sample(&text, "wheel_connections_open"), 0.0);
    assert_eq!(sample(&text, "wheel_connections_accepted_total"), 20_000.0);
    assert_eq!(
        sample(
            &text,
            "wheel_connections_closed_total{reason=\"peer_close_frame\"}"
        ),
        20_000.0
    );
    assert_eq!(
        sample(&text, "wheel_timer_events_total{kind=\"deregister\"}"),
        20_000.0
    );
}

#[test]
fn a_client_that_never_reads_is_ended_by_the_write_timeout() {
    let server = start({
        let mut config = config();
        config.write_timeout = Some(ms(200));
        config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        config
    });
    let metrics = server.metrics_addr().unwrap();
    let mut hog = TcpStream::connect(server.local_addr()).unwrap();
    hog.set_write_timeout(Some(ms(100))).unwrap();
    let mut frame = Vec::new();
    Protocol::Frame
        .encode(&Message::Data(&vec![b'x'; 256 * 1024]), &mut frame)
        .unwrap();
    let mut bystander = Client::connect(server.local_addr());
    let start = Instant::now();
    // Keep sending, never read: the echoes pile up until the server's write
    // blocks for the write timeout.
    while start.elapsed() < PATIENCE {
        match hog.write_all(&frame) {
            Ok(()) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break, // the server closed the connection
        }
        let text = util::scrape(metrics);
        if sample(
            &text,
            "wheel_connections_closed_total{reason=\"write_timeout\"}",
        ) == 1.0
        {
            break;
        }
    }
    assert!(wait_until(PATIENCE, || {
        let text = util::scrape(metrics);
        sample(
            &text,
            "wheel_connections_closed_total{reason=\"write_timeout\"}",
        ) == 1.0
    }));
    eprintln!(
        "slow consumer: closed for write_timeout after {:?}",
        start.elapsed()
    );
    // Nobody else was hurt.
    assert_eq!(bystander.ping(b"ok"), Msg::Pong(b"ok".to_vec()));
    assert!(wait_until(PATIENCE, || server.connection_count() == 1));
}

/// Closes with RST instead of FIN (SO_LINGER 0).
fn reset(stream: TcpStream) {
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(stream);
}

#[test]
fn clients_dying_mid_frame_or_mid_echo_free_everything() {
    let server = start({
        let mut config = config();
        config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        config
    });
    let metrics = server.metrics_addr().unwrap();
    // Dies with half a frame sent: the server is blocked reading the rest.
    let mut half = TcpStream::connect(server.local_addr()).unwrap();
    half.write_all(&[0, 0, 0, 100, 0x01, b'a', b'b']).unwrap();
    // Registered, so its worker is reading: the reset meets a connection,
    // not an accept queue entry.
    assert!(wait_until(PATIENCE, || server.connection_count() == 1));
    reset(half);
    // Dies right after sending a large message, while its echo is written.
    let mut big = TcpStream::connect(server.local_addr()).unwrap();
    let mut frame = Vec::new();
    Protocol::Frame
        .encode(&Message::Data(&vec![b'y'; 1_000_000]), &mut frame)
        .unwrap();
    big.write_all(&frame).unwrap();
    reset(big);
    // Both must have been accepted and closed: a count of zero alone also
    // holds before the server has accepted them (a busy machine).
    let closed_by_reset = || {
        sample(
            &util::scrape(metrics),
            "wheel_connections_closed_total{reason=\"reset\"}",
        )
    };
    assert!(
        wait_until(PATIENCE, || closed_by_reset() >= 2.0),
        "{}",
        util::scrape(metrics)
    );
    assert!(wait_until(PATIENCE, || server.connection_count() == 0));
    let text = util::scrape(metrics);
    assert_eq!(
        sample(&text, "wheel_connections_closed_total{reason=\"reset\"}"),
        2.0,
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "wheel_connections_closed_total{reason=\"handler_panic\"}"
        ),
        0.0
    );
    let mut c = Client::connect(server.local_addr());
    assert_eq!(c.ping(b"fine"), Msg::Pong(b"fine".to_vec()));
    assert!(matches!(c.try_recv(ms(50)), None | Some(Recv::Msg(_))));
}

/// The scenario end to end: a reader with a 16 KiB buffer taking
/// 16 KiB every 400 ms while 12 MiB of echoes wait. The connection ends for
/// `write_timeout` within a bound. (On this loopback the kernel does not
/// wake the blocked writer for such small reads, so the old per-call send
/// timeout fired here too; the unit test in `outbound.rs` reads enough to
/// wake it and shows the old code writing on until the reader stopped.)
#[test]
fn a_trickling_reader_is_ended_by_the_write_timeout_for_the_whole_batch() {
    let server = start({
        let mut config = config();
        config.write_timeout = Some(ms(1000));
        config.idle_timeout = Some(ms(2000));
        config.max_frame = 2 << 20;
        config.max_outbox = 4 << 20;
        config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
        config
    });
    let metrics = server.metrics_addr().unwrap();
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    socket.connect(&server.local_addr().into()).unwrap();
    let trickler: TcpStream = socket.into();
    let mut frame = Vec::new();
    Protocol::Frame
        .encode(&Message::Data(&vec![b'x'; 1 << 20]), &mut frame)
        .unwrap();
    let started = Instant::now();
    let reader = {
        let mut stream = trickler.try_clone().unwrap();
        std::thread::spawn(move || {
            // The reader: 16 KiB every 400 ms, far too slow for
            // 12 MiB of echoes (more than the socket buffers hold), but
            // never silent for a whole write timeout.
            let mut chunk = vec![0u8; 16 * 1024];
            stream.set_read_timeout(Some(ms(20))).unwrap();
            while started.elapsed() < Duration::from_secs(20) {
                match stream.read(&mut chunk) {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => return,
                }
                std::thread::sleep(ms(400));
            }
        })
    };
    // Sends all 12 MiB, blocking as long as the server reads.
    let writer = {
        let mut stream = trickler.try_clone().unwrap();
        std::thread::spawn(move || {
            for _ in 0..12 {
                if stream.write_all(&frame).is_err() {
                    return;
                }
            }
        })
    };
    let closed = |text: &str| {
        sample(
            text,
            "wheel_connections_closed_total{reason=\"write_timeout\"}",
        ) == 1.0
    };
    let ended = wait_until(Duration::from_secs(30), || closed(&util::scrape(metrics)));
    assert!(ended, "{}", util::scrape(metrics));
    let took = started.elapsed();
    eprintln!("trickling reader: closed for write_timeout after {took:?}");
    // Filling the socket buffers, then one batch of at most 300 ms.
    assert!(took < Duration::from_secs(4), "took {took:?}");
    let _ = trickler.shutdown(std::net::Shutdown::Both);
    reader.join().unwrap();
    writer.join().unwrap();
}

/// Out of threads (address space capped, large worker stacks): refusals are
/// CLOSE 1013 `server out of threads`, counted as rejected and not as
/// accepted, so accepted - closed = open; and warned about once, not once
/// per refusal.
#[test]
fn running_out_of_threads_keeps_the_counters_adding_up_and_warns_once() {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_wheel-server"));
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--worker-stack",
        "268435456",
    ]);
    util::limit_address_space(&mut cmd, 2 << 30);
    let mut server = ServerProcess::spawn(cmd);
    let metrics = server.metrics_addr();
    let mut clients: Vec<Client> = (0..12).map(|_| Client::connect(server.addr)).collect();
    let mut served = 0;
    let mut refused = 0;
    for c in &mut clients {
        c.send(Message::Ping(b"?"));
        match c.recv_msg() {
            Msg::Pong(_) => served += 1,
            Msg::Close(1013, reason) => {
                assert_eq!(reason, "server out of threads");
                refused += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    eprintln!("out of threads: {served} served, {refused} refused");
    assert!(
        refused > 0 && served > 0,
        "{served} served, {refused} refused"
    );
    let text = util::scrape(metrics);
    let accepted = sample(&text, "wheel_connections_accepted_total");
    let open = sample(&text, "wheel_connections_open");
    let no_thread = sample(
        &text,
        "wheel_connections_rejected_total{reason=\"no_thread\"}",
    );
    let closed: f64 = text
        .lines()
        .filter(|l| l.starts_with("wheel_connections_closed_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(accepted, served as f64);
    assert_eq!(no_thread, refused as f64);
    assert_eq!(accepted - closed, open);
    drop(clients);
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(PATIENCE).is_some());
    let warnings = server.log_lines_containing("out of threads: rejecting");
    assert_eq!(warnings, 1, "one warning for {refused} refusals");
}
