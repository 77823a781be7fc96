//! A worker's receive buffer: bytes read from the socket and not yet decoded.
//!
//! It holds no memory until the first read and can give it back whenever it
//! is empty ([`ReadBuf::release`]), so that an idle connection holds none.

/// Capacity allocated for the first read, and returned to after a large
/// message.
pub(crate) const INITIAL: usize = 2048;

/// Capacity above which an emptied buffer is shrunk back to [`INITIAL`].
const RETAIN: usize = 64 * 1024;

/// A growable byte buffer with a consumed prefix, compacted lazily.
pub(crate) struct ReadBuf {
    /// Always fully initialised; `data.len()` is the capacity in use.
    data: Vec<u8>,
    /// Start of the unconsumed bytes.
    start: usize,
    /// End of the bytes read.
    end: usize,
}

impl ReadBuf {
    /// An empty buffer, holding no memory yet.
    pub(crate) fn new() -> ReadBuf {
        ReadBuf {
            data: Vec::new(),
            start: 0,
            end: 0,
        }
    }

    /// Whether the buffer holds no memory (and so no bytes).
    pub(crate) fn is_released(&self) -> bool {
        self.data.is_empty()
    }

    /// Gives the memory back if no bytes are pending.
    pub(crate) fn release(&mut self) {
        if self.start == self.end {
            self.data = Vec::new();
            self.start = 0;
            self.end = 0;
        }
    }

    /// Holding no memory, takes `initial` bytes (less than [`spare`]'s
    /// first allocation) for the next read: the parking thread reads a
    /// heartbeat into a small buffer and gives it back at once.
    ///
    /// [`spare`]: ReadBuf::spare
    pub(crate) fn prime(&mut self, initial: usize) {
        if self.data.is_empty() {
            self.data = vec![0; initial.max(1)];
        }
    }

    /// The bytes read and not yet consumed.
    pub(crate) fn data(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    /// Marks `n` leading bytes as consumed.
    pub(crate) fn consume(&mut self, n: usize) {
        debug_assert!(
            n <= self.end - self.start,
            "consumed {n} of {} bytes",
            self.end - self.start
        );
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.data.len() > RETAIN {
                self.data = vec![0; INITIAL];
            }
        }
    }

    /// Space to read into: compacts, and grows (doubling, up to `limit`
    /// bytes in all) only when the unconsumed bytes fill the buffer, that is
    /// when one message is larger than the buffer.
    pub(crate) fn spare(&mut self, limit: usize) -> &mut [u8] {
        if self.data.is_empty() {
            self.data = vec![0; INITIAL.min(limit.max(1))];
        } else if self.end == self.data.len() {
            if self.start > 0 {
                self.data.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                let grown = (self.data.len() * 2).min(limit.max(INITIAL));
                debug_assert!(
                    grown > self.data.len(),
                    "buffer full at its limit of {limit} bytes"
                );
                self.data.resize(grown, 0);
            }
        }
        &mut self.data[self.end..]
    }

    /// Records that `n` bytes were read into [`spare`](Self::spare).
    pub(crate) fn filled(&mut self, n: usize) {
        self.end += n;
        debug_assert!(self.end <= self.data.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(buf: &mut ReadBuf, limit: usize, bytes: &[u8]) {
        let mut rest = bytes;
        while !rest.is_empty() {
            let spare = buf.spare(limit);
            let n = spare.len().min(rest.len());
            spare[..n].copy_from_slice(&rest[..n]);
            buf.filled(n);
            rest = &rest[n..];
        }
    }

    #[test]
    fn grows_to_hold_a_large_message_and_shrinks_after() {
        let mut buf = ReadBuf::new();
        let big = vec![7u8; 100_000];
        fill(&mut buf, 200_000, &big);
        assert_eq!(buf.data(), &big[..]);
        buf.consume(big.len());
        assert_eq!(buf.data.len(), INITIAL);
    }

    #[test]
    fn holds_no_memory_until_the_first_read_nor_after_a_release() {
        let mut buf = ReadBuf::new();
        assert!(buf.is_released());
        fill(&mut buf, 1 << 20, b"abc");
        assert!(!buf.is_released());
        buf.release();
        assert_eq!(buf.data(), b"abc", "pending bytes are kept");
        buf.consume(3);
        buf.release();
        assert!(buf.is_released());
        assert_eq!(buf.data.capacity(), 0);
        fill(&mut buf, 1 << 20, b"de");
        assert_eq!(buf.data(), b"de");
    }

    #[test]
    fn never_grows_past_the_limit() {
        let mut buf = ReadBuf::new();
        fill(&mut buf, 10_000, &[1; 10_000]);
        assert_eq!(buf.data.len(), 10_000);
    }

    #[test]
    fn compacts_before_growing() {
        let mut buf = ReadBuf::new();
        fill(&mut buf, 1 << 20, &[1; INITIAL]);
        buf.consume(INITIAL - 10);
        fill(&mut buf, 1 << 20, &[2; 100]);
        assert_eq!(buf.data.len(), INITIAL, "compaction should have made room");
        assert_eq!(buf.data().len(), 110);
    }
}
