//! The per-connection read buffer.

use futures_lite::{AsyncRead, AsyncReadExt};
use std::io;

/// A growable byte window: bytes arrive at `end`, the parser consumes from `start`.
/// Zeroed once when created or grown, never per read, and compacted only when the
/// free tail runs out, so steady-state reads do no allocation and no copying.
#[derive(Debug)]
pub struct ReadBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl ReadBuf {
    pub fn with_capacity(n: usize) -> Self {
        ReadBuf {
            buf: vec![0; n],
            start: 0,
            end: 0,
        }
    }

    pub fn filled(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    pub fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.len());
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// Makes room to read into: compacts first, then doubles up to `max` bytes.
    /// Returns false when `max` bytes are already buffered.
    pub fn make_room(&mut self, max: usize) -> bool {
        if self.end < self.buf.len() {
            return true;
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            return true;
        }
        if self.buf.len() >= max {
            return false;
        }
        let grown = (self.buf.len() * 2).max(1024).min(max);
        self.buf.resize(grown, 0);
        true
    }

    /// Free space at the tail; call [`ReadBuf::make_room`] first.
    pub fn spare(&mut self) -> &mut [u8] {
        &mut self.buf[self.end..]
    }

    /// Marks `n` bytes of [`ReadBuf::spare`] as filled.
    pub fn commit(&mut self, n: usize) {
        self.end += n;
    }

    /// One read from `src`, growing up to `max`. Ok(0) means end of stream; a buffer
    /// already holding `max` bytes is an error of kind `OutOfMemory`.
    pub async fn read_from<S: AsyncRead + Unpin>(
        &mut self,
        src: &mut S,
        max: usize,
    ) -> io::Result<usize> {
        if !self.make_room(max) {
            return Err(io::ErrorKind::OutOfMemory.into());
        }
        let n = src.read(&mut self.buf[self.end..]).await?;
        self.end += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compacts_before_growing() {
        let mut b = ReadBuf::with_capacity(8);
        assert!(b.make_room(64));
        b.spare()[..8].copy_from_slice(b"abcdefgh");
        b.commit(8);
        b.consume(6);
        assert!(b.make_room(64));
        assert_eq!(b.filled(), b"gh");
        assert_eq!(b.spare().len(), 6);
        b.commit(6);
        assert!(b.make_room(16));
        assert!(b.spare().len() >= 8);
    }

    #[test]
    fn refuses_past_max() {
        let mut b = ReadBuf::with_capacity(4);
        b.commit(4);
        assert!(!b.make_room(4));
    }
}
