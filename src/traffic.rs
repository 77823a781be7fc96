//! Per-connection traffic counters: messages and bytes in and out by kind,
//! counted by the connection's worker in plain integers and published with
//! relaxed stores, read by scrapes without a lock.
//!
//! Public so that the benchmarks measure exactly the code the server runs.

use std::sync::atomic::{AtomicU64, Ordering};

/// The four message kinds, for per-kind traffic counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// DATA.
    Data = 0,
    /// PING.
    Ping = 1,
    /// PONG.
    Pong = 2,
    /// CLOSE.
    Close = 3,
}

impl Kind {
    /// Every kind, in label order.
    pub const ALL: [Kind; 4] = [Kind::Data, Kind::Ping, Kind::Pong, Kind::Close];

    /// The kind of a message.
    pub fn of(msg: &crate::protocol::Message<'_>) -> Kind {
        use crate::protocol::Message;
        match msg {
            Message::Data(_) => Kind::Data,
            Message::Ping(_) => Kind::Ping,
            Message::Pong(_) => Kind::Pong,
            Message::Close { .. } => Kind::Close,
        }
    }

    /// The metric label: `data`, `ping`, `pong` or `close`.
    pub fn as_str(self) -> &'static str {
        ["data", "ping", "pong", "close"][self as usize]
    }
}

/// Frames and bytes by kind, counted in plain integers by a connection's
/// worker and published to its [`Traffic`] once per read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Frames, indexed by [`Kind`].
    pub frames: [u64; 4],
    /// Bytes on the wire (framing included), indexed by [`Kind`].
    pub bytes: [u64; 4],
    /// Bit `k` set: kind `k` was counted, so [`Traffic::publish`] touches
    /// only those counters.
    kinds: u8,
}

impl Tally {
    /// Counts one message of `kind` taking `bytes` on the wire.
    #[inline]
    pub fn add(&mut self, kind: Kind, bytes: usize) {
        self.frames[kind as usize] += 1;
        self.bytes[kind as usize] += bytes as u64;
        self.kinds |= 1 << kind as u8;
    }

    /// Whether something was counted since the last [`Traffic::publish`].
    pub fn has_unpublished(&self) -> bool {
        self.kinds != 0
    }

    /// Adds `other` to this tally.
    pub fn merge(&mut self, other: &Tally) {
        for i in 0..4 {
            self.frames[i] += other.frames[i];
            self.bytes[i] += other.bytes[i];
        }
        self.kinds |= other.kinds;
    }
}

/// A connection's traffic in and out, readable from any thread.
///
/// The worker keeps the running totals in its own [`Tally`]s and, after each
/// read, publishes the counters of the kinds that read touched: a plain
/// relaxed store each, no read-modify-write, no lock, and nothing shared
/// with other connections. Scrapes read it without a lock. Not padded: it
/// lives in its connection's own allocation, and only that connection's
/// worker writes it (the benchmark pads each worker's copy to model that).
#[derive(Debug, Default)]
pub struct Traffic {
    /// `[received frames, received bytes, sent frames, sent bytes]`, each
    /// indexed by [`Kind`].
    counts: [[AtomicU64; 4]; 4],
}

impl Traffic {
    /// Publishes the running totals `received` and `sent` for the kinds
    /// counted since the last call, and forgets which kinds those were.
    /// Single writer: only the connection's worker calls this.
    #[inline]
    pub fn publish(&self, received: &mut Tally, sent: &mut Tally) {
        for (tally, rows) in [(received, &self.counts[0..2]), (sent, &self.counts[2..4])] {
            let mut kinds = tally.kinds;
            while kinds != 0 {
                let k = kinds.trailing_zeros() as usize;
                kinds &= kinds - 1;
                rows[0][k].store(tally.frames[k], Ordering::Relaxed);
                rows[1][k].store(tally.bytes[k], Ordering::Relaxed);
            }
            tally.kinds = 0;
        }
    }

    /// What was received and sent so far.
    pub fn snapshot(&self) -> (Tally, Tally) {
        let read = |row: &[AtomicU64; 4]| std::array::from_fn(|i| row[i].load(Ordering::Relaxed));
        let tally = |frames: [u64; 4], bytes| Tally {
            kinds: (0..4)
                .filter(|&k| frames[k] != 0)
                .fold(0, |m, k| m | 1 << k),
            frames,
            bytes,
        };
        (
            tally(read(&self.counts[0]), read(&self.counts[1])),
            tally(read(&self.counts[2]), read(&self.counts[3])),
        )
    }
}
