//! Reading a request body from the client, bounded by the request's deadline. Every
//! reader of client bodies uses this: the buffered pipeline, the admin API and the
//! streamed upload to a worker.

use crate::body_budget::BodyCharge;
use crate::client::Client;
use crate::codec::body::BodyDecoder;
use crate::codec::framing::BodyFraming;
use crate::codec::limits::READ_BUFFER_BYTES;
use crate::deadline::Deadline;
use futures_lite::AsyncWriteExt;

/// Most of a body reserved before its bytes arrive. A declared length is a claim, not
/// bytes: reserving it whole let a client make a shard reserve `--max-payload-size`
/// per connection without sending anything, and a failed allocation aborts the whole
/// process. Beyond this the buffer grows as bytes arrive (doubling, so copies stay
/// amortized).
const MAX_BODY_RESERVE_BYTES: u64 = READ_BUFFER_BYTES as u64;

/// The interim answer to `Expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Why a body could not be read.
pub enum BodyError {
    TooLarge,
    /// The shard's budget for buffered bodies is spent (by other requests).
    Busy,
    Malformed(&'static str),
    TimedOut,
    /// The client closed or failed.
    Closed,
}

impl BodyError {
    /// Answers the client for a body that could not be read (`too_large` is the 413
    /// message). Returns false: the rest of the body is unread, so the connection
    /// closes.
    pub async fn answer(self, c: &mut Client, too_large: &str) -> bool {
        match self {
            BodyError::TooLarge => c.send_error(413, too_large, false).await,
            BodyError::Busy => {
                let msg = "the router is buffering as many request bodies as it may; retry shortly";
                let keep = c
                    .send_error_with(503, msg, false, &[(b"retry-after", b"1")])
                    .await;
                c.outcome.error = Some("body_budget");
                keep
            }
            BodyError::Malformed(m) => c.send_error(400, m, false).await,
            BodyError::TimedOut => {
                c.send_error(408, "timed out reading the request body", false)
                    .await
            }
            BodyError::Closed => false,
        }
    }
}

/// Makes room for `incoming` more bytes in `out`, charged first: doubling, so copies
/// stay amortized, and never past `max + 1` (one byte over is enough to say 413).
fn grow(
    out: &mut Vec<u8>,
    incoming: usize,
    max: u64,
    charge: &mut BodyCharge<'_>,
) -> Result<(), BodyError> {
    let ceiling = usize::try_from(max).unwrap_or(usize::MAX).saturating_add(1);
    let want = out.len().saturating_add(incoming).min(ceiling);
    if want <= out.capacity() {
        return charge
            .cover(out.capacity())
            .then_some(())
            .ok_or(BodyError::Busy);
    }
    let target = want.max(out.capacity().saturating_mul(2)).min(ceiling);
    if !charge.cover(target) {
        return Err(BodyError::Busy);
    }
    out.reserve_exact(target - out.len());
    Ok(())
}

/// Waits for more body bytes in the client's read buffer.
///
/// RFC 9110 §10.1.1: "A server that receives a 100-continue expectation in an HTTP/1.1
/// request [...] ought to send an immediate 100 (Continue) response if it intends to
/// process the content"; it goes out before the first wait, once.
#[derive(Default)]
pub struct BodyWait {
    sent_continue: bool,
}

impl BodyWait {
    pub async fn more(
        &mut self,
        c: &mut Client,
        deadline: &mut Deadline<'_>,
    ) -> Result<(), BodyError> {
        if c.head.expect_continue && !self.sent_continue {
            self.sent_continue = true;
            c.stream
                .write_all(CONTINUE)
                .await
                .map_err(|_| BodyError::Closed)?;
        }
        let read = c.rbuf.read_from(&mut c.stream, READ_BUFFER_BYTES);
        match deadline.bound(read).await {
            Some(Ok(0)) | Some(Err(_)) => Err(BodyError::Closed),
            Some(Ok(_)) => Ok(()),
            None => Err(BodyError::TimedOut),
        }
    }
}

/// Reads the whole body into `out` (cleared first; chunked bodies are decoded), at
/// most `max` bytes. The buffer grows with what arrives, and `charge` covers it.
pub async fn read_body(
    c: &mut Client,
    out: &mut Vec<u8>,
    max: u64,
    deadline: &mut Deadline<'_>,
    charge: &mut BodyCharge<'_>,
) -> Result<(), BodyError> {
    out.clear();
    let mut decoder = BodyDecoder::new(c.head.framing);
    let first = match c.head.framing {
        BodyFraming::Length(n) => n.min(max).min(MAX_BODY_RESERVE_BYTES) as usize,
        _ => 0,
    };
    grow(out, first, max, charge)?;
    let mut wait = BodyWait::default();
    loop {
        if !c.rbuf.is_empty() || decoder.is_done() {
            // Decoded bytes are never more than the raw ones.
            grow(out, c.rbuf.len(), max, charge)?;
            let progress = decoder
                .feed(c.rbuf.filled(), |d| out.extend_from_slice(d))
                .map_err(|e| BodyError::Malformed(e.0))?;
            c.rbuf.consume(progress.consumed);
            if out.len() as u64 > max {
                return Err(BodyError::TooLarge);
            }
            if progress.done {
                return Ok(());
            }
        }
        wait.more(c, deadline).await?;
    }
}
