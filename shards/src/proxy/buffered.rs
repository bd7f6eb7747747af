//! An exchange whose answer is read whole instead of relayed (the P/D prefill leg).
//! Nothing is written to the client.

use super::exchange::{Exchange, RequestBody};
use super::failure::{Failure, Verdict};
use super::forward::describe;
use super::wait::{read_upstream, ClientWatch, Wake};
use crate::client::Client;
use crate::codec::body::BodyDecoder;
use crate::codec::limits::READ_BUFFER_BYTES;
use crate::deadline::Deadline;
use crate::shard::Shard;
use crate::worker::WorkerId;

/// Largest answer body a buffered leg (P/D prefill) reads: a one-token completion with
/// transfer params is a few KiB; anything near this is not a prefill answer.
pub const MAX_BUFFERED_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// How a buffered exchange ended.
pub enum Buffered {
    /// A whole answer (any status).
    Answer {
        status: u16,
        body: Vec<u8>,
    },
    /// No usable answer: what the client would be told, and what it says of the worker.
    Failed {
        status: u16,
        message: String,
        verdict: Verdict,
        retryable: bool,
    },
    ClientGone,
}

pub async fn exchange_buffered(
    shard: &Shard,
    c: &mut Client,
    worker: WorkerId,
    bytes: &[u8],
    deadline: &mut Deadline<'_>,
) -> Buffered {
    let body = RequestBody::Replayable {
        bytes,
        declared: true,
    };
    let mut watch = ClientWatch::new();
    let mut exchange = match Exchange::open(shard, c, worker, &body, &mut watch, deadline).await {
        Ok(exchange) => exchange,
        Err(failure) => return failed(shard, worker, failure),
    };
    let status = exchange.head().status;
    let mut decoder = BodyDecoder::new(exchange.head().framing);
    let mut answer = Vec::new();
    let idle = shard.config.stream_idle_timeout;
    deadline.phase(idle);
    let up = &mut exchange.conn;
    let ended = loop {
        if !up.rbuf.is_empty() || decoder.is_done() {
            let fed = decoder.feed(up.rbuf.filled(), |d| answer.extend_from_slice(d));
            let Ok(progress) = fed else {
                break Err("a malformed answer body");
            };
            up.rbuf.consume(progress.consumed);
            if answer.len() > MAX_BUFFERED_ANSWER_BYTES {
                break Err("an answer body over the size limit");
            }
            if progress.done {
                break Ok(());
            }
        }
        match read_upstream(up, READ_BUFFER_BYTES, c, &mut watch, deadline).await {
            Wake::Upstream(Ok(0)) if decoder.complete_at_eof() => break Ok(()),
            Wake::Upstream(Ok(0)) | Wake::Upstream(Err(_)) => break Err("a body cut short"),
            Wake::Upstream(Ok(_)) => deadline.phase(idle),
            Wake::ClientGone => return Buffered::ClientGone,
            Wake::Deadline => break Err("no answer body in time"),
        }
    };
    deadline.end_phase();
    match ended {
        Ok(()) => {
            exchange.finish(&decoder);
            if let Some(w) = shard.workers.borrow_mut().get_mut(worker) {
                w.processed += 1;
            }
            Buffered::Answer {
                status,
                body: answer,
            }
        }
        Err(why) => Buffered::Failed {
            status: 502,
            message: format!("worker {} sent {why}", shard.worker_url(worker)),
            verdict: Verdict::Failure,
            retryable: true,
        },
    }
}

fn failed(shard: &Shard, worker: WorkerId, failure: Failure) -> Buffered {
    match describe(shard, worker, &failure) {
        None => Buffered::ClientGone,
        Some((status, message)) => Buffered::Failed {
            status,
            message,
            verdict: failure.verdict(),
            retryable: failure.retryable(),
        },
    }
}
