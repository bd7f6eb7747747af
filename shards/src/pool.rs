//! Upstream keep-alive connections, per shard and per worker.
//!
//! Rules (after pingora-pool): reuse the most recently returned connection first (it
//! is the least likely to have been closed by the worker); never hand out one idle
//! longer than the worker keeps it; and look at an idle socket before reuse, so a close
//! or stray bytes from the worker are noticed before a request is written into it.

use crate::codec::response::ResponseHead;
use crate::io::ReadBuf;
use crate::worker::WorkerId;
use glommio::net::TcpStream;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// Longest a connection waits in the pool. vLLM's uvicorn closes idle connections
/// after 5 s (`--timeout-keep-alive`); staying under it avoids writing a request into
/// a connection the worker is closing.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// A connection idle for less than this is reused without the liveness peek. Under
/// load connections come back within microseconds and the peek would be a fifth of
/// the proxy's syscalls; a worker that died inside this window is caught by the
/// retry on a fresh connection (see `forward`). Idle time is measured on the shard's
/// coarse clock (`Deadlines::now`, one deadline tick), so "less than this" means
/// "returned within the same tick"; no clock read per request.
pub const PEEK_AFTER_IDLE: Duration = Duration::from_millis(50);

/// Idle connections kept per worker per shard. More than the busiest burst needs;
/// bounds the file descriptors a quiet router holds.
pub const POOL_MAX_IDLE_PER_WORKER: usize = 256;

/// A connection to a worker with its own read buffer while bytes are in flight (bytes
/// past one response stay with the connection) and the head of its current answer
/// (reused for as long as the connection lives).
pub struct Upstream {
    pub stream: TcpStream,
    pub rbuf: ReadBuf,
    pub head: ResponseHead,
    pub worker: WorkerId,
    /// Taken from the pool rather than freshly connected: a failure before any answer
    /// byte may be the worker's keep-alive close racing our write.
    pub reused: bool,
}

struct Idle {
    conn: Upstream,
    since: Instant,
}

/// The idle connections of one shard.
#[derive(Default)]
pub struct Pool {
    idle: HashMap<WorkerId, Vec<Idle>>,
}

impl Pool {
    /// A live idle connection to `worker`, if one is pooled.
    pub fn take(&mut self, worker: WorkerId, now: Instant) -> Option<Upstream> {
        let list = self.idle.get_mut(&worker)?;
        while let Some(idle) = list.pop() {
            let idle_for = now.duration_since(idle.since);
            if idle_for < POOL_IDLE_TIMEOUT
                && (idle_for < PEEK_AFTER_IDLE || is_quiet(&idle.conn.stream))
            {
                let mut conn = idle.conn;
                conn.reused = true;
                return Some(conn);
            }
        }
        None
    }

    /// Returns a connection whose last exchange ended cleanly.
    pub fn give(&mut self, mut conn: Upstream, now: Instant) {
        if !conn.rbuf.is_empty() {
            return; // bytes past the response: the worker is out of step, drop it
        }
        // An idle connection holds no read buffer (`io`): the next answer takes one.
        conn.rbuf.release();
        let list = self.idle.entry(conn.worker).or_default();
        if list.len() < POOL_MAX_IDLE_PER_WORKER {
            list.push(Idle { conn, since: now });
        }
    }

    /// Closes connections idle too long; runs on a coarse per-shard tick.
    pub fn sweep(&mut self, now: Instant) {
        for list in self.idle.values_mut() {
            list.retain(|i| now.duration_since(i.since) < POOL_IDLE_TIMEOUT);
        }
    }

    pub fn forget_worker(&mut self, worker: WorkerId) {
        self.idle.remove(&worker);
    }
}

/// An idle socket should have nothing to read: EOF means the worker closed it, bytes
/// mean it is out of step. One non-blocking peek, no io_uring round trip.
fn is_quiet(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    let flags = nix::sys::socket::MsgFlags::MSG_PEEK | nix::sys::socket::MsgFlags::MSG_DONTWAIT;
    matches!(
        nix::sys::socket::recv(stream.as_raw_fd(), &mut byte, flags),
        Err(nix::errno::Errno::EAGAIN)
    )
}

/// Opens a new connection to a worker, with TCP_NODELAY so small heads and SSE events
/// are not held back by Nagle's algorithm.
pub async fn connect(
    worker: WorkerId,
    addr: SocketAddr,
    timeout: Duration,
) -> io::Result<Upstream> {
    let stream = TcpStream::connect_timeout(addr, timeout)
        .await
        .map_err(io::Error::from)?;
    stream.set_nodelay(true).map_err(io::Error::from)?;
    Ok(Upstream {
        stream,
        rbuf: ReadBuf::default(),
        head: ResponseHead::default(),
        worker,
        reused: false,
    })
}
