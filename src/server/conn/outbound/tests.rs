//! The outbound path against real sockets: expiries, drains, slow
//! consumers and stalls meeting the write right.

use super::*;
use crate::protocol::{Message, OwnedMessage, Protocol, Reader, code};
use crate::server::Config;
use crate::server::conn::Conn;
use crate::server::test_support::{KERNEL_HOLDS, pair, shared};
use std::io::Read;
use std::net::TcpStream;
use std::sync::{Arc, Barrier};

fn encode(msg: Message<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    Protocol::Frame.encode(&msg, &mut out).unwrap();
    out
}

fn close_1001() -> Vec<u8> {
    encode(Message::Close {
        code: code::GOING_AWAY,
        reason: "server shutting down",
    })
}

/// Reads messages from the client end until a CLOSE (included) or the
/// end of stream.
fn read_until_close(client: &mut TcpStream) -> Vec<OwnedMessage> {
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reader = Reader::new(Protocol::Frame, 1 << 24);
    let mut got = Vec::new();
    while let Some(msg) = reader.read_message(client).unwrap() {
        let last = msg.close_code().is_some();
        got.push(msg);
        if last {
            break;
        }
    }
    got
}

/// Pushes `msg` until the socket stops taking it (the peer does not
/// read); returns how many were pushed, the last one queued.
fn fill(conn: &Conn, flushes: &Flushes, msg: &[u8]) -> usize {
    for n in 1..100_000 {
        if conn.out.push(conn.id, flushes, msg) == Ok(Delivery::Queued) {
            return n;
        }
    }
    panic!("the socket never filled");
}

/// The race of the old design: a drain that met the write lock held by
/// a probe left its CLOSE to a worker blocked in `read`. Now the drain
/// waits for the lock (held only across non-blocking sends) and sends.
fn close_4000() -> Vec<u8> {
    encode(Message::Close {
        code: code::IDLE_TIMEOUT,
        reason: "idle timeout",
    })
}

#[test]
fn an_expiry_of_a_waiting_worker_sends_the_close_itself() {
    let (shared, listener) = shared(Config::default());
    let (conn, mut client) = pair(&shared, &listener);
    // The worker answered everything and waits.
    conn.out.end_read();
    let expired = conn.out.expire(
        conn.id,
        &shared.flushes,
        CloseRequest::IdleTimeout,
        &close_4000(),
    );
    assert_eq!(expired, Expired::Sent);
    // No worker exists here and none was woken: the timer's thread
    // wrote it.
    assert_eq!(
        read_until_close(&mut client),
        [OwnedMessage::Close(
            code::IDLE_TIMEOUT,
            "idle timeout".into()
        )]
    );
    assert_eq!(conn.out.close_sent(), Some(close_4000().len()));
    // Bytes the worker reads now came after the CLOSE: dropped.
    assert!(!conn.out.begin_read());
    // The worker's own finish adds no second CLOSE.
    conn.out
        .finish(conn.id, &shared.flushes, Some(&close_4000()))
        .unwrap();
    conn.stream().shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "more after the CLOSE: {rest:?}");
}

#[test]
fn an_expiry_leaves_the_close_to_a_worker_with_input_to_answer() {
    let (shared, listener) = shared(Config::default());
    // Busy: it has not reached its first wait.
    let (busy, _client) = pair(&shared, &listener);
    let expired = busy.out.expire(
        busy.id,
        &shared.flushes,
        CloseRequest::IdleTimeout,
        &close_4000(),
    );
    assert_eq!(expired, Expired::Requested);
    assert_eq!(busy.out.close_sent(), None);
    // Waiting, but a message came in that it has not read yet.
    let (unread, mut client) = pair(&shared, &listener);
    unread.out.end_read();
    client.write_all(&encode(Message::Ping(b"late"))).unwrap();
    assert!(
        crate::sys::wait_readable(unread.stream()).is_ok(),
        "the PING arrives"
    );
    let expired = unread.out.expire(
        unread.id,
        &shared.flushes,
        CloseRequest::IdleTimeout,
        &close_4000(),
    );
    assert_eq!(expired, Expired::Requested);
    assert_eq!(unread.out.close_sent(), None, "the worker answers first");
    assert!(unread.out.begin_read(), "its bytes are to be answered");
    // And a second expiry finds the close under way.
    let again = unread.out.expire(
        unread.id,
        &shared.flushes,
        CloseRequest::IdleTimeout,
        &close_4000(),
    );
    assert_eq!(again, Expired::Closing);
}

#[test]
fn a_drain_meeting_a_probe_that_holds_the_write_right_still_sends_its_close() {
    let (shared, listener) = shared(Config::default());
    let (conn, mut client) = pair(&shared, &listener);
    let holding = Arc::new(Barrier::new(2));
    let prober = {
        let conn = Arc::clone(&conn);
        let holding = Arc::clone(&holding);
        std::thread::spawn(move || {
            let guard = conn.out.hold();
            holding.wait();
            std::thread::sleep(Duration::from_millis(50));
            drop(guard);
        })
    };
    holding.wait();
    let drained = conn.out.drain(
        conn.id,
        &shared.flushes,
        CloseRequest::Shutdown,
        &close_1001(),
    );
    assert_eq!(drained, Ok(Delivery::Written));
    prober.join().unwrap();
    // No worker exists here: the CLOSE went out from this thread.
    assert_eq!(
        read_until_close(&mut client),
        [OwnedMessage::Close(
            code::GOING_AWAY,
            "server shutting down".into()
        )]
    );
    assert_eq!(
        conn.out.close_state(),
        CloseState::Requested(CloseRequest::Shutdown)
    );
    assert_eq!(
        conn.out.push(conn.id, &shared.flushes, b"x"),
        Err(PushError::Closed),
        "nothing from other threads after a CLOSE"
    );
    assert_eq!(
        conn.out
            .drain(conn.id, &shared.flushes, CloseRequest::MaxAge, b"c"),
        Err(DrainRefused::Requested)
    );
}

#[test]
fn a_close_queued_behind_a_full_socket_goes_out_whole_on_the_next_flush() {
    let (shared, listener) = shared(Config::default());
    let (conn, mut client) = pair(&shared, &listener);
    let ping = encode(Message::Ping(&[7; 100]));
    let pushed = fill(&conn, &shared.flushes, &ping);
    let close = close_1001();
    assert_eq!(
        conn.out
            .drain(conn.id, &shared.flushes, CloseRequest::MaxAge, &close),
        Ok(Delivery::Queued)
    );
    assert_eq!(
        shared.flushes.take(),
        [conn.id],
        "listed once for the timer"
    );
    // The client reads while the timer thread flushes, tick by tick.
    let reader = std::thread::spawn(move || read_until_close(&mut client));
    let deadline = Instant::now() + Duration::from_secs(5);
    while conn.out.flush_listed(None) == Flushed::Pending {
        assert!(Instant::now() < deadline, "the queue never drained");
        std::thread::sleep(Duration::from_millis(1));
    }
    let got = reader.join().unwrap();
    assert_eq!(got.len(), pushed + 1, "every PING whole, then the CLOSE");
    assert!(
        got[..pushed]
            .iter()
            .all(|m| *m == OwnedMessage::Ping(vec![7; 100]))
    );
    assert_eq!(got[pushed].close_code(), Some(code::GOING_AWAY));
    assert_eq!(conn.out.queued_bytes(), 0);
}

#[test]
fn the_workers_answers_follow_what_other_threads_queued() {
    let (shared, listener) = shared(Config::default());
    let (conn, mut client) = pair(&shared, &listener);
    let ping = encode(Message::Ping(&[b'p'; 100]));
    let pushed = fill(&conn, &shared.flushes, &ping);
    let mut batch = encode(Message::Data(b"answer"));
    batch.extend(close_1001());
    let reader = std::thread::spawn(move || read_until_close(&mut client));
    // Blocks (outside the lock) until the client has read enough.
    conn.out
        .write_batch(conn.id, &shared.flushes, &batch)
        .unwrap();
    let got = reader.join().unwrap();
    assert_eq!(got.len(), pushed + 2);
    assert!(
        got[..pushed]
            .iter()
            .all(|m| *m == OwnedMessage::Ping(vec![b'p'; 100]))
    );
    assert_eq!(got[pushed], OwnedMessage::Data(b"answer".to_vec()));
}

/// The worker's own answers, however large, do not count against the
/// outbox: a probe or push meanwhile is queued, not a slow consumer.
#[test]
fn a_push_while_the_worker_writes_a_large_batch_is_queued() {
    let (shared, listener) = shared(Config {
        max_outbox: 64 * 1024,
        ..Config::default()
    });
    let (conn, mut client) = pair(&shared, &listener);
    let batch = encode(Message::Data(&vec![3; 4 << 20]));
    let writer = {
        let conn = Arc::clone(&conn);
        let shared = Arc::clone(&shared);
        std::thread::spawn(move || conn.out.write_batch(conn.id, &shared.flushes, &batch))
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !conn.out.state.lock().worker_mid_batch {
        assert!(Instant::now() < deadline, "the batch never blocked");
        std::thread::sleep(Duration::from_millis(1));
    }
    let ping = encode(Message::Ping(b"probe"));
    assert_eq!(
        conn.out.push(conn.id, &shared.flushes, &ping),
        Ok(Delivery::Queued)
    );
    assert_eq!(conn.out.close_state(), CloseState::Open);
    let reader = std::thread::spawn(move || {
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut reader = Reader::new(Protocol::Frame, 8 << 20);
        let first = reader.read_message(&mut client).unwrap();
        let second = reader.read_message(&mut client).unwrap();
        (first, second)
    });
    writer.join().unwrap().unwrap();
    assert!(conn.out.flush_listed(None) == Flushed::Empty);
    let (first, second) = reader.join().unwrap();
    assert!(matches!(first, Some(OwnedMessage::Data(p)) if p.len() == 4 << 20));
    assert_eq!(second, Some(OwnedMessage::Ping(b"probe".to_vec())));
}

#[test]
fn a_message_past_the_bound_closes_a_slow_consumer_and_frees_its_queue() {
    let (shared, listener) = shared(Config {
        max_outbox: 64 * 1024,
        ..Config::default()
    });
    let (conn, _client) = pair(&shared, &listener);
    let data = encode(Message::Data(&[1; 1000]));
    fill(&conn, &shared.flushes, &data);
    let mut outcome = Ok(Delivery::Queued);
    for _ in 0..100 {
        outcome = conn.out.push(conn.id, &shared.flushes, &data);
        if outcome.is_err() {
            break;
        }
    }
    assert_eq!(outcome, Err(PushError::Full));
    assert_eq!(
        conn.out.close_state(),
        CloseState::Requested(CloseRequest::SlowConsumer)
    );
    // Only the rest of the message already begun on the wire is kept.
    assert!(
        conn.out.queued_bytes() < data.len(),
        "{}",
        conn.out.queued_bytes()
    );
    assert_eq!(
        conn.out.push(conn.id, &shared.flushes, &data),
        Err(PushError::Closed)
    );
}

#[test]
fn a_queue_that_makes_no_progress_for_the_stall_limit_asks_for_a_close() {
    let (shared, listener) = shared(Config::default());
    let (conn, _client) = pair(&shared, &listener);
    let data = encode(Message::Data(&[1; 1000]));
    fill(&conn, &shared.flushes, &data);
    // A full socket may still take a little (acknowledgements free its
    // send buffer later on a busy machine): queue more than it can
    // ever take, so the queue cannot drain before the stall check.
    while conn.out.queued_bytes() <= KERNEL_HOLDS {
        conn.out.push(conn.id, &shared.flushes, &data).unwrap();
    }
    assert_eq!(
        conn.out.flush_listed(Some(Duration::from_secs(60))),
        Flushed::Pending
    );
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(
        conn.out.flush_listed(Some(Duration::from_millis(10))),
        Flushed::Stalled
    );
    assert_eq!(
        conn.out.close_state(),
        CloseState::Requested(CloseRequest::WriteStalled)
    );
}

#[test]
fn an_idle_connection_holds_no_queue_memory_after_a_burst() {
    let (shared, listener) = shared(Config::default());
    let (conn, mut client) = pair(&shared, &listener);
    let data = encode(Message::Data(&[1; 60_000]));
    fill(&conn, &shared.flushes, &data);
    conn.out.push(conn.id, &shared.flushes, &data).unwrap();
    conn.out
        .push(conn.id, &shared.flushes, &close_1001())
        .unwrap();
    let reader = std::thread::spawn(move || read_until_close(&mut client));
    while conn.out.flush_listed(None) == Flushed::Pending {
        std::thread::sleep(Duration::from_millis(1));
    }
    reader.join().unwrap();
    assert_eq!(conn.out.state.lock().queue.bytes.capacity(), 0);
}

/// A peer that reads a little every so often never lets one write call
/// time out; the limit bounds the whole batch instead.
#[test]
fn a_trickling_reader_cannot_stretch_a_batch_past_the_write_limit() {
    let (shared, listener) = shared(Config {
        write_timeout: Some(Duration::from_millis(300)),
        ..Config::default()
    });
    let (conn, client) = pair(&shared, &listener);
    let socket = socket2::SockRef::from(conn.stream());
    socket.set_send_buffer_size(64 * 1024).unwrap();
    socket2::SockRef::from(&client)
        .set_recv_buffer_size(64 * 1024)
        .unwrap();
    conn.stream()
        .set_write_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let started = Instant::now();
    let reader = std::thread::spawn(move || {
        // 64 KiB every 100 ms: progress well within every 300 ms.
        let mut client = client;
        let mut chunk = vec![0u8; 64 * 1024];
        while started.elapsed() < Duration::from_secs(10) {
            use std::io::Read;
            match client.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    });
    let batch = vec![0u8; 8 << 20];
    let written = conn.out.write_batch(conn.id, &shared.flushes, &batch);
    let took = started.elapsed();
    assert_eq!(written.unwrap_err().kind(), io::ErrorKind::WouldBlock);
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_millis(1500), "{took:?}");
    conn.force_close();
    reader.join().unwrap();
}

mod queue {
    use crate::server::conn::outbound::Queue;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        /// A message of this length, of which this many bytes were
        /// written before it was queued (only into an empty queue).
        Push(usize, usize),
        /// The socket takes this many bytes.
        Advance(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1usize..50, 0usize..50).prop_map(|(len, w)| Op::Push(len, w % len)),
            (0usize..120).prop_map(Op::Advance),
        ]
    }

    proptest! {
        /// Whatever was queued and however much went out, dropping the
        /// messages not begun keeps exactly the rest of the message on
        /// the wire, so the stream never tears mid-frame.
        #[test]
        fn dropping_unbegun_messages_keeps_exactly_the_one_on_the_wire(
            ops in proptest::collection::vec(op(), 0..40),
        ) {
            let mut queue = Queue::default();
            // The model: messages (id, total length, bytes written).
            let mut model: Vec<(u8, usize, usize)> = Vec::new();
            let mut next_id = 0u8;
            for op in ops {
                match op {
                    Op::Push(len, written) => {
                        let written = if model.is_empty() { written } else { 0 };
                        next_id = next_id.wrapping_add(1);
                        let msg = vec![next_id; len];
                        queue.push(&msg[written..], written > 0);
                        model.push((next_id, len, written));
                    }
                    Op::Advance(n) => {
                        let n = n.min(queue.len());
                        queue.advance(n);
                        let mut left = n;
                        while left > 0 {
                            let front = &mut model[0];
                            let take = left.min(front.1 - front.2);
                            front.2 += take;
                            left -= take;
                            if front.2 == front.1 {
                                model.remove(0);
                            }
                        }
                    }
                }
                let expected: usize = model.iter().map(|m| m.1 - m.2).sum();
                prop_assert_eq!(queue.len(), expected);
            }
            queue.drop_unbegun();
            let kept: Vec<u8> = match model.first() {
                Some(&(id, len, written)) if written > 0 => vec![id; len - written],
                _ => Vec::new(),
            };
            prop_assert_eq!(queue.unwritten(), &kept[..]);
        }
    }
}
