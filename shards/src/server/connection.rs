//! One client connection: read a head, hand the request to the pipeline, repeat while
//! the connection may be kept alive. Requests are handled one after another, so
//! pipelined requests are answered in order.

use super::endpoints;
use crate::codec::limits::{MAX_REQUEST_HEAD_BYTES, READ_BUFFER_BYTES};
use crate::codec::request::{HeadError, RequestHead};
use crate::codec::response::ResponseHead;
use crate::codec::Status;
use crate::deadline::Deadline;
use crate::errors::write_error;
use crate::io::ReadBuf;
use crate::shard::Shard;
use futures_lite::future::or;
use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
use std::rc::Rc;

/// Everything a connection reuses from one request to the next.
pub struct Client {
    pub stream: TcpStream,
    pub rbuf: ReadBuf,
    pub head: RequestHead,
    /// Output staging: heads coalesced with the first body bytes.
    pub out: Vec<u8>,
    /// Buffered request body (routing mode 2).
    pub body: Vec<u8>,
    /// The worker's answer head, reused like `head`.
    pub resp: ResponseHead,
}

impl Client {
    /// Writes and clears `out`. An error means the client is gone.
    pub async fn flush_out(&mut self) -> std::io::Result<()> {
        let r = self.stream.write_all(&self.out).await;
        self.out.clear();
        r
    }

    /// Writes an error answer. Returns false: after an error the connection closes
    /// unless `keep` says the request was fully read.
    pub async fn send_error(&mut self, status: u16, message: &str, keep: bool) -> bool {
        let keep = keep && self.head.keep_alive;
        self.out.clear(); // may hold a request staged for a worker
        write_error(
            &mut self.out,
            self.head.minor_version,
            status,
            message,
            !keep,
        );
        self.flush_out().await.is_ok() && keep
    }
}

enum HeadRead {
    Ready,
    /// Clean end: the client closed, went idle too long, or the shard is draining.
    Closed,
    Refused(HeadError),
    TimedOut,
}

pub async fn serve(shard: Rc<Shard>, stream: TcpStream) {
    let mut c = Client {
        stream,
        rbuf: ReadBuf::with_capacity(READ_BUFFER_BYTES),
        head: RequestHead::default(),
        out: Vec::with_capacity(1024),
        body: Vec::new(),
        resp: ResponseHead::default(),
    };
    loop {
        match read_head(&shard, &mut c).await {
            HeadRead::Ready => {}
            HeadRead::Closed => break,
            HeadRead::TimedOut => {
                write_error(
                    &mut c.out,
                    1,
                    408,
                    "timed out reading the request head",
                    true,
                );
                let _ = c.flush_out().await;
                break;
            }
            HeadRead::Refused(e) => {
                // The rest of the stream cannot be trusted: answer and close.
                write_error(&mut c.out, 1, e.status(), e.message(), true);
                let _ = c.flush_out().await;
                break;
            }
        }
        let keep = if endpoints::local_answer(&shard, &mut c).is_some() {
            c.flush_out().await.is_ok() && !c.head.has_body() && c.head.keep_alive
        } else {
            crate::proxy::pipeline::handle(&shard, &mut c).await
        };
        if !keep || shard.draining.get() {
            break;
        }
    }
    let _ = c.stream.close().await;
}

/// Reads until a whole head is buffered and parsed into `c.head`. The idle wait for
/// the first byte is bounded by the keep-alive timeout (and ends when the shard
/// drains); the rest of the head by the header-read timeout (slowloris).
async fn read_head(shard: &Shard, c: &mut Client) -> HeadRead {
    let cfg = &shard.config;
    let mut deadline: Option<Deadline<'_>> = None;
    loop {
        if !c.rbuf.is_empty() {
            match c.head.parse(c.rbuf.filled()) {
                Ok(Status::Complete(n)) => {
                    c.rbuf.consume(n);
                    return HeadRead::Ready;
                }
                Ok(Status::Partial) => {}
                Err(e) => return HeadRead::Refused(e),
            }
        } else if shard.draining.get() {
            return HeadRead::Closed;
        }
        let idle = c.rbuf.is_empty();
        let timer = deadline.get_or_insert_with(|| {
            if idle {
                shard.deadlines.start(cfg.keepalive_timeout, true)
            } else {
                shard.deadlines.start(cfg.header_read_timeout, false)
            }
        });
        let read = async {
            match c
                .rbuf
                .read_from(&mut c.stream, MAX_REQUEST_HEAD_BYTES + 1)
                .await
            {
                Ok(0) | Err(_) => Some(HeadRead::Closed),
                Ok(_) => None,
            }
        };
        let expired = async {
            (&mut *timer).await;
            Some(if idle {
                HeadRead::Closed
            } else {
                HeadRead::TimedOut
            })
        };
        if let Some(end) = or(read, expired).await {
            return end;
        }
        if idle {
            // First bytes of a new head: the slowloris clock starts now.
            deadline = None;
        }
    }
}
