//! Topics on their own: numbering, history bounds, replay budgets,
//! renumbering and fan-out to real sockets.

use super::topic::PARALLEL_FANOUT;
use super::*;
use crate::protocol::Protocol;
use crate::protocol::{OwnedMessage, Reader};
use crate::server::Config;
use crate::server::config::RETAINED_OVERHEAD;
use crate::server::conn::close::CloseRequest;
use crate::server::test_support::{pair, shared};
use std::time::Duration;

fn retention() -> Retention {
    Retention {
        count: 100,
        ttl: Duration::from_secs(60),
        bytes: 1 << 20,
        memory: 8 << 20,
    }
}

fn bounds() -> Bounds {
    Bounds {
        max_topics: 1000,
        max_frame: 1 << 20,
        replay_budget: 1 << 20,
        presence_rate: 20,
        presence_page: crate::server::config::PRESENCE_PAGE,
    }
}

fn publish(topics: &Topics, flushes: &Flushes, name: &str, payload: &[u8]) -> u64 {
    topics
        .publish(flushes, name, None, payload, None)
        .unwrap()
        .seq
}

/// The sequence numbers a subscriber resuming after `since` is sent,
/// and what the subscription said.
fn resume(topics: &Topics, name: &str, since: u64) -> (Resumed, Vec<u64>) {
    let (shared, listener) = shared(Config::default());
    let (conn, mut client) = pair(&shared, &listener);
    let resumed = topics
        .subscribe(&shared.flushes, &conn, name, Some(since), false, 8, |_| {
            Vec::new()
        })
        .unwrap();
    // Everything was written or queued; let the queue go out.
    while conn.out.flush_listed(None) == crate::server::conn::outbound::Flushed::Pending {
        std::thread::sleep(Duration::from_millis(1));
    }
    topics.unsubscribe(&Flushes::default(), &conn, name);
    drop(conn);
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reader = Reader::new(Protocol::Frame, 4 << 20);
    let mut seqs = Vec::new();
    while let Ok(Some(OwnedMessage::Data(msg))) = reader.read_message(&mut client) {
        let text = String::from_utf8_lossy(&msg[..msg.len().min(64)]).into_owned();
        seqs.push(text.split(' ').nth(2).unwrap().parse().unwrap());
    }
    (resumed, seqs)
}

#[test]
fn a_message_whose_msg_would_pass_the_largest_frame_is_refused_and_not_retained() {
    let (shared, _listener) = shared(Config::default());
    let topics = Topics::new(
        Retention {
            bytes: 2 << 20,
            ..retention()
        },
        bounds(),
        None,
    );
    let max = max_payload(1 << 20, "news");
    assert_eq!(max, (1 << 20) - "MSG news  ".len() - 20);
    assert_eq!(
        topics.publish(&shared.flushes, "news", None, &vec![b'x'; max + 1], None),
        Err(TopicError::TooLarge(max))
    );
    assert_eq!(topics.totals(), (0, 0), "nothing created or retained");
    assert_eq!(
        publish(&topics, &shared.flushes, "news", &vec![b'x'; max]),
        1
    );
    assert_eq!(topics.totals(), (1, max + RETAINED_OVERHEAD));
}

#[test]
fn no_topic_is_created_past_the_limit() {
    let (shared, listener) = shared(Config::default());
    let topics = Topics::new(
        retention(),
        Bounds {
            max_topics: 3,
            ..bounds()
        },
        None,
    );
    for name in ["a", "b", "c"] {
        publish(&topics, &shared.flushes, name, b"m");
    }
    assert_eq!(
        topics.publish(&shared.flushes, "d", None, b"m", None),
        Err(TopicError::TooManyTopics)
    );
    let (conn, _client) = pair(&shared, &listener);
    assert_eq!(
        topics.subscribe(&shared.flushes, &conn, "d", None, false, 8, |_| Vec::new()),
        Err(TopicError::TooManyTopics)
    );
    assert!(
        conn.subscriptions.lock().is_empty(),
        "the refusal is not listed"
    );
    // Existing topics still take messages and subscribers.
    assert_eq!(publish(&topics, &shared.flushes, "a", b"m"), 2);
    topics
        .subscribe(&shared.flushes, &conn, "b", None, false, 8, |_| Vec::new())
        .unwrap();
    assert_eq!(topics.list(None, 10).1, 3);
}

#[test]
fn all_topics_history_drops_the_oldest_message_of_any_topic_first() {
    let (shared, _listener) = shared(Config::default());
    let cost = 1000 + RETAINED_OVERHEAD;
    let topics = Topics::new(
        Retention {
            memory: 5 * cost,
            ..retention()
        },
        bounds(),
        None,
    );
    let m = [b'm'; 1000];
    publish(&topics, &shared.flushes, "old", &m);
    publish(&topics, &shared.flushes, "new", &m);
    publish(&topics, &shared.flushes, "old", &m);
    for _ in 0..3 {
        publish(&topics, &shared.flushes, "new", &m);
    }
    // Six retained: the first of "old" went.
    assert_eq!(topics.totals(), (2, 5 * cost));
    assert_eq!(topics.evicted().get(), 1);
    let (resumed, seqs) = resume(&topics, "old", 0);
    assert_eq!(
        resumed,
        Resumed::Gap {
            last: 2,
            first_missing: 1
        }
    );
    assert_eq!(seqs, [2]);
    // Six more to "new": every message of "old" goes, and with it the
    // topic (no subscribers, no history).
    for _ in 0..6 {
        publish(&topics, &shared.flushes, "new", &m);
    }
    assert_eq!(topics.totals(), (1, 5 * cost));
    assert_eq!(resume(&topics, "new", 5).1, [6, 7, 8, 9, 10]);
}

#[test]
fn one_topics_history_is_bounded_in_bytes() {
    let (shared, _listener) = shared(Config::default());
    let topics = Topics::new(
        Retention {
            bytes: 3 * (100 + RETAINED_OVERHEAD),
            ..retention()
        },
        bounds(),
        None,
    );
    for _ in 0..10 {
        publish(&topics, &shared.flushes, "t", &[b'x'; 100]);
    }
    assert_eq!(topics.totals().1, 3 * (100 + RETAINED_OVERHEAD));
    let (resumed, seqs) = resume(&topics, "t", 0);
    assert_eq!(
        resumed,
        Resumed::Gap {
            last: 10,
            first_missing: 1
        }
    );
    assert_eq!(seqs, [8, 9, 10]);
}

#[test]
fn a_replay_sends_the_newest_messages_that_fit_its_budget_and_reports_the_rest_as_a_gap() {
    let (shared, _listener) = shared(Config::default());
    let topics = Topics::new(
        retention(),
        Bounds {
            replay_budget: 25_000,
            ..bounds()
        },
        None,
    );
    for _ in 0..10 {
        publish(&topics, &shared.flushes, "big", &[b'x'; 10_000]);
    }
    let (resumed, seqs) = resume(&topics, "big", 0);
    assert_eq!(
        resumed,
        Resumed::Gap {
            last: 10,
            first_missing: 1
        }
    );
    assert_eq!(seqs, [9, 10]);
    // A resume that fits is recovered whole.
    let (resumed, seqs) = resume(&topics, "big", 8);
    assert_eq!(resumed, Resumed::Recovered { last: 10 });
    assert_eq!(seqs, [9, 10]);
    // A message larger than the budget alone still goes.
    publish(&topics, &shared.flushes, "big", &[b'x'; 50_000]);
    assert_eq!(resume(&topics, "big", 0).1, [11]);
}

#[test]
fn topics_page_by_name_and_count_them_all() {
    let (shared, _listener) = shared(Config::default());
    let topics = Topics::new(retention(), bounds(), None);
    for name in ["d", "a", "c", "b", "e"] {
        publish(&topics, &shared.flushes, name, b"m");
    }
    let names = |page: Vec<TopicInfo>| page.into_iter().map(|t| t.topic).collect::<Vec<_>>();
    let (first, total) = topics.list(None, 2);
    assert_eq!((names(first), total), (vec!["a".into(), "b".into()], 5));
    assert_eq!(names(topics.list(Some("b"), 2).0), ["c", "d"]);
    assert_eq!(names(topics.list(Some("d"), 2).0), ["e"]);
    assert!(topics.list(Some("e"), 2).0.is_empty());
}

/// A fan-out large enough to be split over two threads still reaches
/// every subscriber once per publish, in publish order, and drops the
/// ones that are closing.
#[test]
fn a_split_fan_out_keeps_order_and_drops_closing_subscribers() {
    let (shared, listener) = shared(Config::default());
    let topics = Topics::new(
        Retention {
            count: 0,
            ..retention()
        },
        bounds(),
        None,
    );
    let mut clients = Vec::new();
    for _ in 0..PARALLEL_FANOUT + 10 {
        let (conn, client) = pair(&shared, &listener);
        topics
            .subscribe(&shared.flushes, &conn, "wide", None, false, 8, |_| {
                Vec::new()
            })
            .unwrap();
        clients.push((conn, client));
    }
    // One subscriber is closing: it gets nothing and leaves.
    assert!(clients[5].0.out.request_close(CloseRequest::IdleTimeout));
    for n in 1..=3u64 {
        let published = topics
            .publish(
                &shared.flushes,
                "wide",
                None,
                n.to_string().as_bytes(),
                None,
            )
            .unwrap();
        assert_eq!(published.seq, n);
        assert_eq!(published.delivered, PARALLEL_FANOUT + 9);
    }
    assert_eq!(topics.subscribers("wide"), PARALLEL_FANOUT + 9);
    for (i, (_, client)) in clients.iter_mut().enumerate().filter(|(i, _)| *i != 5) {
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut reader = Reader::new(Protocol::Frame, 1024);
        for n in 1..=3u64 {
            let got = reader.read_message(client).unwrap();
            assert_eq!(
                got,
                Some(OwnedMessage::Data(format!("MSG wide {n} {n}").into_bytes())),
                "subscriber {i}"
            );
        }
    }
}
