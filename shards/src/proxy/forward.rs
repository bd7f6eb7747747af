//! The relayed leg: attempts whose answer is relayed to the client as it arrives (every
//! regular request, and the decode leg of a P/D request). `attempts` decides whether
//! another attempt follows; this module says what one attempt did.

use super::attempts::{drive, Attempt, Driven, Leg, Step};
use super::exchange::{Exchange, RequestBody};
use super::failure::{retryable_status, status_verdict, Failure, Verdict};
use super::headers::{write_client_head, ClientFraming, REQUEST_ID_HEADER};
use super::relay::{relay_body, RelayEnd};
use super::request_id::set_pd_request_id;
use super::wait::ClientWatch;
use crate::client::Client;
use crate::codec::body::BodyDecoder;
use crate::codec::sse::SseScanner;
use crate::deadline::Deadline;
use crate::shard::Shard;
use crate::worker::{WorkerId, WorkerRole};

/// A leg whose answer goes to the client.
pub struct Relayed<'a> {
    pub body: RequestBody<'a>,
    pub role: WorkerRole,
    /// The decode leg of a P/D request: each attempt's request id names the prefill
    /// worker (host:port) and the decode worker it goes to; the first attempt keeps the
    /// id the prefill leg carried.
    pub prefill: Option<&'a str>,
}

impl Leg for Relayed<'_> {
    /// Whether the client connection may carry another request.
    type Output = bool;

    fn role(&self) -> WorkerRole {
        self.role
    }

    fn attempts(&self, shard: &Shard) -> u32 {
        if self.body.replayable() {
            shard.config.retry.max_attempts
        } else {
            1
        }
    }

    async fn attempt(
        &mut self,
        shard: &Shard,
        c: &mut Client,
        worker: WorkerId,
        n: u32,
        last: bool,
        deadline: &mut Deadline<'_>,
    ) -> Attempt<bool> {
        if let (Some(prefill), true) = (self.prefill, n > 0) {
            set_pd_request_id(shard, c, prefill, worker);
        }
        forward(shard, c, worker, &self.body, deadline, !last).await
    }
}

/// Runs a relayed leg from `first` with its retries. Returns true when the client
/// connection may carry another request.
pub async fn forward_with_retries(
    shard: &Shard,
    c: &mut Client,
    first: WorkerId,
    mut leg: Relayed<'_>,
    json: Option<&serde_json::Value>,
    deadline: &mut Deadline<'_>,
) -> bool {
    match drive(shard, c, &mut leg, first, json, deadline).await {
        Driven::Done(keep) => keep,
        Driven::Exhausted { status, message } | Driven::NoWorker { status, message } => {
            c.send_error(status, &message, false).await
        }
        Driven::ClientGone => false,
        Driven::TimedOut => c.send_error(504, "the request timed out", false).await,
    }
}

/// One attempt: the request to `worker`, its answer relayed, unless it failed before
/// any byte reached the client and `may_retry` allows another try.
async fn forward(
    shard: &Shard,
    c: &mut Client,
    worker: WorkerId,
    body: &RequestBody<'_>,
    deadline: &mut Deadline<'_>,
    may_retry: bool,
) -> Attempt<bool> {
    let mut watch = ClientWatch::new();
    let exchange = match Exchange::open(shard, c, worker, body, &mut watch, deadline).await {
        Ok(exchange) => exchange,
        Err(failure) => return fail(shard, c, worker, failure, may_retry).await,
    };
    let status = exchange.head().status;
    let verdict = status_verdict(status);
    if may_retry && retryable_status(status) {
        // Dropping the exchange closes it: its body is not worth reading for a reuse.
        let message = format!("worker {} answered {status}", shard.worker_url(worker));
        return Attempt {
            step: Step::Retry { status, message },
            verdict,
        };
    }
    relay_answer(shard, c, exchange, &mut watch, deadline, verdict).await
}

/// Writes the answer head for the client and relays the body.
async fn relay_answer(
    shard: &Shard,
    c: &mut Client,
    mut exchange: Exchange<'_>,
    watch: &mut ClientWatch,
    deadline: &mut Deadline<'_>,
    verdict: Verdict,
) -> Attempt<bool> {
    let worker = exchange.worker;
    let resp = exchange.head();
    let status = resp.status;
    let framing = ClientFraming::choose(resp.framing, c.head.minor_version);
    let keep_client = c.head.keep_alive && framing.self_delimiting() && !shard.draining.get();
    c.outcome.status = status;
    if let Some(w) = shard.workers.borrow_mut().get_mut(worker) {
        w.processed += 1;
    }
    let id: &[u8] = &c.request_id;
    // The request id and at most three CORS headers: no allocation per answer.
    let mut extra: smallvec::SmallVec<[(&[u8], &[u8]); 4]> =
        smallvec::smallvec![(REQUEST_ID_HEADER, id)];
    extra.extend(c.cors.iter().map(|(n, v)| (*n, v.as_slice())));
    let own_cors = shard.config.cors.is_some();
    write_client_head(
        &mut c.out,
        resp,
        &c.head,
        framing,
        keep_client,
        &extra,
        own_cors,
    );
    drop(extra); // it borrows the client, which the body relay writes to
    let mut decoder = BodyDecoder::new(resp.framing);
    let mut sse = resp.is_event_stream().then(SseScanner::default);
    let idle = shard.config.stream_idle_timeout;
    let end = relay_body(
        c,
        &mut exchange,
        framing,
        &mut decoder,
        sse.as_mut(),
        watch,
        deadline,
        idle,
    )
    .await;
    let failed = retryable_status(status);
    let done = |keep, verdict| Attempt {
        step: Step::Done {
            value: keep,
            failed,
        },
        verdict,
    };
    match end {
        RelayEnd::Complete => {
            exchange.finish(&decoder);
            done(keep_client, verdict)
        }
        // Dropping the exchange closes the worker's socket: vLLM aborts the generation.
        RelayEnd::ClientGone => {
            c.outcome.error = Some("client_gone");
            let v = if verdict == Verdict::Failure {
                Verdict::Failure
            } else {
                Verdict::Neutral
            };
            done(false, v)
        }
        RelayEnd::UpstreamFailed | RelayEnd::TimedOut => {
            let timed_out = end == RelayEnd::TimedOut;
            let total = timed_out && deadline.limit_passed();
            c.outcome.error = Some(if timed_out {
                "upstream_timeout"
            } else {
                "stream_interrupted"
            });
            let url = shard.worker_url(worker);
            let (status, message) = if total {
                (504, "the request timed out".to_string())
            } else if timed_out {
                let secs = idle.as_secs();
                (504, format!("worker {url} sent nothing for {secs}s"))
            } else {
                (502, format!("worker {url} failed mid-answer"))
            };
            if let Some(sse) = &sse {
                end_stream_with_error(c, framing, &decoder, sse, status, &message).await;
            }
            done(
                false,
                if total {
                    Verdict::Neutral
                } else {
                    Verdict::Failure
                },
            )
        }
    }
}

/// A worker that fails mid-stream: the client has the events so far; give it an SSE
/// error event in vLLM's shape, `[DONE]` and a proper end of body, so an SDK reports
/// an error instead of a truncated stream. Only possible between events and between
/// chunks; otherwise the connection just closes (a client drops a partial event).
async fn end_stream_with_error(
    c: &mut Client,
    framing: ClientFraming,
    decoder: &BodyDecoder,
    sse: &SseScanner,
    status: u16,
    message: &str,
) {
    let between_chunks = match decoder {
        BodyDecoder::Chunked(d) => d.at_chunk_boundary(),
        _ => true,
    };
    let can_append = matches!(
        framing,
        ClientFraming::Chunked
            | ClientFraming::Rechunk
            | ClientFraming::Dechunk
            | ClientFraming::UntilClose
    );
    if !(can_append && between_chunks && sse.at_boundary()) {
        return;
    }
    let event = crate::errors::sse_error_event(status, message);
    c.out.clear();
    if matches!(framing, ClientFraming::Chunked | ClientFraming::Rechunk) {
        crate::codec::encode::chunk(&mut c.out, &event);
        c.out.extend_from_slice(crate::codec::encode::LAST_CHUNK);
    } else {
        c.out.extend_from_slice(&event);
    }
    let _ = c.flush_out().await;
}

/// An exchange that produced no answer head: the client gets the error now, or the
/// driver gets it for another try.
async fn fail(
    shard: &Shard,
    c: &mut Client,
    worker: WorkerId,
    failure: Failure,
    may_retry: bool,
) -> Attempt<bool> {
    let verdict = failure.verdict();
    let failed = failure.retryable();
    let Some((status, message)) = describe(shard, worker, &failure) else {
        c.outcome.error = Some("client_gone");
        let step = Step::Done {
            value: false,
            failed: false,
        };
        return Attempt { step, verdict };
    };
    // Removed is retried even on the last attempt: the driver answers for it.
    if (may_retry && failed) || matches!(failure, Failure::Removed) {
        let step = Step::Retry { status, message };
        return Attempt { step, verdict };
    }
    // The request body may be half-read (streamed): close after the error.
    let keep = c.send_error(status, &message, false).await;
    let step = Step::Done {
        value: keep,
        failed,
    };
    Attempt { step, verdict }
}

/// The client's status and message for a failure (None: the client left), logged at
/// debug.
pub fn describe(shard: &Shard, worker: WorkerId, failure: &Failure) -> Option<(u16, String)> {
    let url = shard.worker_url(worker);
    let (status, message) = failure.answer(&url, shard.config.head_timeout)?;
    crate::debug!("shard {}: {url} -> {status}: {message}", shard.index);
    Some((status, message))
}
