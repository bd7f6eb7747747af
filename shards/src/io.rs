//! The per-connection read buffer, held only while bytes are in flight.
//!
//! A connection waiting for its next request (or a stream waiting for its next
//! token) holds no buffer: one is taken from the shard's spares when a read finds
//! bytes, and given back when the read would wait with nothing buffered. Readiness
//! comes from glommio's poll on the socket, and the read itself is a plain `recv`
//! into whatever buffer the poll is handed, so nothing is lent to the kernel while
//! waiting. An idle keep-alive connection then costs what its task and socket cost,
//! not 16 KiB (docs/benchmarks.md, idle connections).

use crate::codec::limits::READ_BUFFER_BYTES;
use futures_lite::AsyncRead;
use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::Poll;

/// Spare buffers a shard keeps for reuse: enough for the bursts of a busy shard
/// without a trip to the allocator, few enough (1 MiB) that a burst of ten thousand
/// connections does not pin its peak for ever.
pub const MAX_SPARE_BUFFERS: usize = 64;

thread_local! {
    /// This shard's spare buffers, each [`READ_BUFFER_BYTES`] long and zeroed once.
    /// Thread-local because a shard is one thread: no lock, no sharing.
    static SPARES: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

fn take_spare() -> Vec<u8> {
    SPARES
        .with(|s| s.borrow_mut().pop())
        .unwrap_or_else(|| vec![0; READ_BUFFER_BYTES])
}

fn give_spare(buf: Vec<u8>) {
    // A buffer grown for a long head goes back to the allocator.
    if buf.len() == READ_BUFFER_BYTES {
        SPARES.with(|s| {
            let mut s = s.borrow_mut();
            if s.len() < MAX_SPARE_BUFFERS {
                s.push(buf);
            }
        });
    }
}

/// A growable byte window: bytes arrive at `end`, the parser consumes from `start`.
/// Zeroed once when created or grown, never per read, and compacted only when the
/// free tail runs out, so steady-state reads do no allocation and no copying.
/// Empty (no memory) while nothing is buffered and no read is under way.
#[derive(Debug, Default)]
pub struct ReadBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl ReadBuf {
    /// A buffer holding `n` bytes from the start (tests and tools; connections start
    /// with [`ReadBuf::default`] and take memory when bytes come).
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

    /// Gives the memory back to the shard's spares when nothing is buffered.
    pub fn release(&mut self) {
        if self.is_empty() && !self.buf.is_empty() {
            give_spare(std::mem::take(&mut self.buf));
        }
    }

    /// Makes room to read into: takes a spare buffer when holding none, compacts,
    /// then doubles up to `max` bytes. Returns false when `max` bytes are already
    /// buffered.
    pub fn make_room(&mut self, max: usize) -> bool {
        if self.buf.is_empty() {
            self.buf = take_spare();
        }
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
    /// already holding `max` bytes is an error of kind `OutOfMemory`. While the read
    /// waits with nothing buffered, the buffer is back among the spares.
    pub async fn read_from<S: AsyncRead + Unpin>(
        &mut self,
        src: &mut S,
        max: usize,
    ) -> io::Result<usize> {
        poll_fn(|cx| {
            if !self.make_room(max) {
                return Poll::Ready(Err(io::ErrorKind::OutOfMemory.into()));
            }
            match Pin::new(&mut *src).poll_read(cx, &mut self.buf[self.end..]) {
                Poll::Ready(Ok(n)) => {
                    self.end += n;
                    Poll::Ready(Ok(n))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => {
                    self.release();
                    Poll::Pending
                }
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;

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
    fn a_read_that_waits_holds_no_memory_and_one_that_reads_does() {
        struct Script(Vec<Option<&'static [u8]>>);
        impl AsyncRead for Script {
            fn poll_read(
                mut self: Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &mut [u8],
            ) -> Poll<io::Result<usize>> {
                match self.0.remove(0) {
                    Some(bytes) => {
                        buf[..bytes.len()].copy_from_slice(bytes);
                        Poll::Ready(Ok(bytes.len()))
                    }
                    None => {
                        cx.waker().wake_by_ref();
                        Poll::Pending
                    }
                }
            }
        }
        let mut b = ReadBuf::default();
        assert_eq!(b.buf.len(), 0);
        let mut src = Script(vec![None, Some(b"GET /"), None, Some(b" HTTP/1.1")]);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let spares = || SPARES.with(|s| s.borrow().len());
        {
            let mut read = std::pin::pin!(b.read_from(&mut src, 1024));
            // Nothing buffered while the first poll waits: the buffer went back.
            assert!(read.as_mut().poll(&mut cx).is_pending());
            assert_eq!(spares(), 1);
            assert!(matches!(read.as_mut().poll(&mut cx), Poll::Ready(Ok(5))));
        }
        assert_eq!(b.filled(), b"GET /");
        assert_eq!((b.buf.len(), spares()), (READ_BUFFER_BYTES, 0));
        {
            // Bytes buffered: a waiting read keeps them (and the memory).
            let mut read = std::pin::pin!(b.read_from(&mut src, 1024));
            assert!(read.as_mut().poll(&mut cx).is_pending());
            assert_eq!(spares(), 0);
            assert!(matches!(read.as_mut().poll(&mut cx), Poll::Ready(Ok(9))));
        }
        assert_eq!(b.filled(), b"GET / HTTP/1.1");
        b.consume(14);
        b.release();
        assert_eq!((b.buf.len(), spares()), (0, 1));
    }

    #[test]
    fn refuses_past_max() {
        let mut b = ReadBuf::with_capacity(4);
        b.commit(4);
        assert!(!b.make_room(4));
    }
}
