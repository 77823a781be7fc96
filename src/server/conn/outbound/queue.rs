//! The byte queue behind the write right: whole encoded messages, cut
//! only at their boundaries.

use std::collections::VecDeque;
use std::mem;

use super::RETAIN_QUEUE;

/// Encoded messages waiting to be written, and where each ends, so that a
/// slow consumer's queue can be cut at a message boundary.
#[derive(Debug, Default)]
pub(super) struct Queue {
    pub(super) bytes: Vec<u8>,
    /// Start of the unwritten bytes in `bytes`.
    head: usize,
    /// End (in `bytes`) of every message with bytes still unwritten.
    ends: VecDeque<usize>,
    /// Some of the first of those messages is already on the wire.
    front_begun: bool,
}

impl Queue {
    /// Unwritten bytes.
    pub(super) fn len(&self) -> usize {
        self.bytes.len() - self.head
    }

    /// The unwritten bytes.
    pub(super) fn unwritten(&self) -> &[u8] {
        &self.bytes[self.head..]
    }

    /// Appends a message, or the rest of one whose start already went out
    /// (`begun`; only ever into an empty queue).
    pub(super) fn push(&mut self, msg: &[u8], begun: bool) {
        debug_assert!(!begun || self.ends.is_empty());
        if self.ends.is_empty() {
            self.front_begun = begun;
        }
        self.bytes.extend_from_slice(msg);
        self.ends.push_back(self.bytes.len());
    }

    /// Records that `n` more bytes went out.
    pub(super) fn advance(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        self.head += n;
        let mut boundary = None;
        while self.ends.front().is_some_and(|&end| end <= self.head) {
            boundary = self.ends.pop_front();
        }
        self.front_begun = match boundary {
            Some(end) => self.head > end,
            None => true,
        };
        if self.head == self.bytes.len() {
            self.clear();
        }
    }

    /// Drops the messages not begun, keeping the rest of the one on the
    /// wire (cutting it would tear the stream mid-frame).
    pub(super) fn drop_unbegun(&mut self) {
        let keep = match self.ends.front() {
            Some(&end) if self.front_begun => end,
            _ => self.head,
        };
        self.bytes.truncate(keep);
        self.ends.truncate(usize::from(self.front_begun));
        if self.head == self.bytes.len() {
            self.clear();
        }
    }

    /// Takes the unwritten bytes out, leaving the queue empty.
    pub(super) fn take(&mut self) -> Vec<u8> {
        let mut bytes = mem::take(&mut self.bytes);
        bytes.drain(..self.head);
        self.clear();
        bytes
    }

    /// Empties the queue, giving back a large allocation.
    pub(super) fn clear(&mut self) {
        self.head = 0;
        self.ends.clear();
        self.front_begun = false;
        if self.bytes.capacity() > RETAIN_QUEUE {
            self.bytes = Vec::new();
        } else {
            self.bytes.clear();
        }
    }
}
