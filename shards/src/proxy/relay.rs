//! The answer's body, from worker to client, forwarded as it arrives.
//!
//! Flush rule (after pingora's streamed bodies): every read from the worker is written
//! to the client before the next read is issued. An SSE event therefore leaves as soon
//! as it arrives, nothing waits to be coalesced, and a slow client slows the reads from
//! the worker (backpressure) instead of growing a buffer.

use super::exchange::Exchange;
use super::headers::ClientFraming;
use super::wait::{read_upstream, ClientWatch, Wake};
use crate::client::Client;
use crate::codec::body::BodyDecoder;
use crate::codec::encode;
use crate::codec::limits::READ_BUFFER_BYTES;
use crate::codec::sse::SseScanner;
use crate::deadline::Deadline;
use futures_lite::AsyncWriteExt;
use std::time::{Duration, Instant};

/// How a relayed body ended.
#[derive(Debug, PartialEq, Eq)]
pub enum RelayEnd {
    /// The whole body reached the client.
    Complete,
    ClientGone,
    /// The worker closed or broke the body before its end.
    UpstreamFailed,
    TimedOut,
}

/// Forwards the body. `c.out` may hold the client head; it leaves with the first bytes.
/// `sse` (event streams) tracks event boundaries; the worker may stay silent for at
/// most `idle` between reads.
#[allow(clippy::too_many_arguments)]
pub async fn relay_body(
    c: &mut Client,
    exchange: &mut Exchange<'_>,
    framing: ClientFraming,
    decoder: &mut BodyDecoder,
    mut sse: Option<&mut SseScanner>,
    watch: &mut ClientWatch,
    deadline: &mut Deadline<'_>,
    idle: Duration,
) -> RelayEnd {
    deadline.phase(idle);
    loop {
        if !exchange.conn.rbuf.is_empty() || decoder.is_done() {
            let input = exchange.conn.rbuf.filled();
            let out = &mut c.out;
            let mut sse = sse.as_deref_mut();
            let fed = decoder.feed(input, |d| {
                if let Some(s) = sse.as_deref_mut() {
                    s.feed(d);
                }
                match framing {
                    ClientFraming::Rechunk => encode::chunk(out, d),
                    ClientFraming::Dechunk => out.extend_from_slice(d),
                    _ => {} // raw framings are written from `input` below
                }
            });
            let Ok(progress) = fed else {
                return RelayEnd::UpstreamFailed;
            };
            let raw = matches!(
                framing,
                ClientFraming::Length(_) | ClientFraming::Chunked | ClientFraming::UntilClose
            );
            let written = if raw && c.out.is_empty() {
                // Common case mid-stream: straight from the worker's buffer.
                c.stream.write_all(&input[..progress.consumed]).await
            } else {
                if raw {
                    c.out.extend_from_slice(&input[..progress.consumed]);
                }
                if progress.done && framing == ClientFraming::Rechunk {
                    c.out.extend_from_slice(encode::LAST_CHUNK);
                }
                c.flush_out().await
            };
            exchange.conn.rbuf.consume(progress.consumed);
            if written.is_err() {
                return RelayEnd::ClientGone;
            }
            if (progress.consumed > 0 || progress.done) && c.outcome.first_byte.is_none() {
                // First body byte (or a bodiless answer): the TTFT for a stream.
                c.outcome.first_byte = Some(Instant::now());
                exchange.answered();
            }
            if progress.done {
                return RelayEnd::Complete;
            }
        }
        if !c.out.is_empty() && c.flush_out().await.is_err() {
            // The head came alone (a stream before its first event): send it now.
            return RelayEnd::ClientGone;
        }
        match read_upstream(&mut exchange.conn, READ_BUFFER_BYTES, c, watch, deadline).await {
            Wake::Upstream(Ok(0)) => {
                if !decoder.complete_at_eof() {
                    return RelayEnd::UpstreamFailed;
                }
                if framing == ClientFraming::Rechunk {
                    c.out.extend_from_slice(encode::LAST_CHUNK);
                }
                return if c.flush_out().await.is_ok() {
                    RelayEnd::Complete
                } else {
                    RelayEnd::ClientGone
                };
            }
            Wake::Upstream(Ok(_)) => deadline.phase(idle),
            Wake::Upstream(Err(_)) => return RelayEnd::UpstreamFailed,
            Wake::ClientGone => return RelayEnd::ClientGone,
            Wake::Deadline => return RelayEnd::TimedOut,
        }
    }
}
