//! One attempt with one worker: lend a connection, send the request, read the answer
//! head, hand the body to `relay`, and return the connection to the pool if it is
//! still good. Whether another attempt follows is `retry`'s call; this module says
//! what happened (`Attempt`) and what it means for the worker's breaker (`Verdict`).

use super::headers::{
    write_client_head, write_upstream_head, ClientFraming, UpstreamBody, UpstreamTarget,
    REQUEST_ID_HEADER,
};
use super::relay::{relay_body, RelayEnd};
use super::wait::{read_upstream, ClientWatch, Wake};
use crate::breaker::BreakerState;
use crate::codec::body::BodyDecoder;
use crate::codec::limits::{MAX_RESPONSE_HEAD_BYTES, READ_BUFFER_BYTES};
use crate::codec::response::ResponseHead;
use crate::codec::sse::SseScanner;
use crate::codec::Status;
use crate::deadline::Deadline;
use crate::messages::{Report, WorkerId};
use crate::pool::{self, Upstream};
use crate::server::Client;
use crate::shard::Shard;
use futures_lite::future::or;
use futures_lite::AsyncWriteExt;
use std::io;

/// Bodies up to this size are copied behind the head and sent in one write; larger
/// ones go in a second write instead of being copied (glommio has no writev).
const COALESCE_BODY_BYTES: usize = 64 * 1024;

/// The request body as the pipeline holds it.
pub enum RequestBody<'a> {
    /// Fully read (or empty): can be sent again on a fresh connection. `declared`
    /// is false when the client sent no body at all.
    Replayable { bytes: &'a [u8], declared: bool },
    /// Still arriving from the client: streamed through in the client's own framing.
    Streamed,
}

impl RequestBody<'_> {
    pub fn replayable(&self) -> bool {
        matches!(self, RequestBody::Replayable { .. })
    }
}

/// Why no answer head came back; decides the status the client sees.
enum Failure {
    Refused(io::Error),
    ConnectTimeout,
    Reset,
    BadResponse(&'static str),
    /// No answer head within `--upstream-head-timeout-secs`.
    HeadTimeout,
    /// The request's own time (`--request-timeout-secs`) ran out.
    Deadline,
    ClientGone,
    /// The client's streamed chunked body was malformed.
    BadRequestBody(&'static str),
}

impl Failure {
    /// What the failure says about the worker.
    fn verdict(&self) -> Verdict {
        match self {
            Failure::Refused(_)
            | Failure::ConnectTimeout
            | Failure::Reset
            | Failure::BadResponse(_)
            | Failure::HeadTimeout => Verdict::Failure,
            Failure::Deadline | Failure::ClientGone | Failure::BadRequestBody(_) => {
                Verdict::Neutral
            }
        }
    }

    /// Another worker might answer where this one did not.
    fn retryable(&self) -> bool {
        self.verdict() == Verdict::Failure
    }
}

/// What an attempt says about the worker, for its circuit breaker (see `breaker`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Success,
    Failure,
    /// Not the worker's doing (the client left, the request's own time ran out).
    Neutral,
    /// A 500: the worker's fault only if another worker then serves the request.
    Status500,
}

/// How an attempt ended for the client.
pub enum AttemptEnd {
    /// The client got its answer (or left). `keep`: its connection may carry another
    /// request. `failed`: the answer is a failure a retry was meant for.
    Answered { keep: bool, failed: bool },
    /// Nothing reached the client and another worker may do better. The status and
    /// message are what the client gets if no retry follows.
    Retry { status: u16, message: String },
}

/// One attempt's result.
pub struct Attempt {
    pub end: AttemptEnd,
    pub verdict: Verdict,
}

/// Statuses another worker may answer differently (REFERENCE.md).
pub fn retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
}

/// 4xx answers are not the worker's failure; 408 and 429 (it is busy) are not proof
/// of health either.
pub fn status_verdict(status: u16) -> Verdict {
    match status {
        500 => Verdict::Status500,
        502..=504 => Verdict::Failure,
        408 | 429 => Verdict::Neutral,
        _ => Verdict::Success,
    }
}

/// Counts a request in flight to a worker on this shard, for as long as it lives; a
/// request to a half-open worker also holds one of its probe places.
struct InFlight<'a> {
    shard: &'a Shard,
    worker: WorkerId,
    probe: bool,
}

impl<'a> InFlight<'a> {
    fn start(shard: &'a Shard, worker: WorkerId) -> Self {
        let mut workers = shard.workers.borrow_mut();
        let mut probe = false;
        if let Some(w) = workers.get_mut(worker) {
            w.in_flight += 1;
            if w.breaker.state == BreakerState::HalfOpen {
                w.breaker.probes += 1;
                probe = true;
            }
        }
        if probe {
            workers.refresh_routable();
        }
        InFlight {
            shard,
            worker,
            probe,
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut workers = self.shard.workers.borrow_mut();
        if let Some(w) = workers.get_mut(self.worker) {
            w.in_flight = w.in_flight.saturating_sub(1);
            if self.probe {
                w.breaker.probes = w.breaker.probes.saturating_sub(1);
            }
        }
        if self.probe {
            workers.refresh_routable();
        }
    }
}

/// Sends the request in `c.head` with `body` to `worker` and relays the answer, unless
/// it failed before any byte reached the client and `may_retry` allows another try.
pub async fn forward(
    shard: &Shard,
    c: &mut Client,
    worker: WorkerId,
    body: &RequestBody<'_>,
    deadline: &mut Deadline<'_>,
    may_retry: bool,
) -> Attempt {
    let Some(addr) = write_request(shard, c, worker, body) else {
        return Attempt {
            end: AttemptEnd::Retry {
                status: 503,
                message: "worker was removed".to_string(),
            },
            verdict: Verdict::Neutral,
        };
    };
    let _in_flight = InFlight::start(shard, worker);
    let mut watch = ClientWatch::new();
    let replayable = matches!(body, RequestBody::Replayable { .. });
    let mut resp = std::mem::take(&mut c.resp);

    // A pooled connection may have been closed by the worker just as we wrote to it;
    // that failure shows before any answer byte and is retried once on a fresh
    // connection. Only a replayable body allows it.
    let mut allow_pool = replayable;
    let mut up = loop {
        let attempt = exchange_head(
            shard, c, worker, addr, body, allow_pool, &mut resp, &mut watch, deadline,
        )
        .await;
        match attempt {
            Ok(up) => break up,
            Err((Failure::Reset, true)) if allow_pool => allow_pool = false,
            Err((failure, reused)) => {
                if matches!(failure, Failure::Refused(_))
                    || (matches!(failure, Failure::Reset) && !reused)
                {
                    // Refused, or cut before answering on a fresh connection: ask the
                    // control core to probe the worker now.
                    let _ = shard.reports.try_send(Report::WorkerUnreachable {
                        shard: shard.index,
                        id: worker,
                    });
                }
                c.resp = resp;
                let verdict = failure.verdict();
                let retry = may_retry && failure.retryable();
                let end = fail(shard, c, worker, failure, retry).await;
                return Attempt { end, verdict };
            }
        }
    };
    c.out.clear();
    let verdict = status_verdict(resp.status);
    if may_retry && retryable_status(resp.status) {
        // Dropping `up` closes it: its body is not worth reading for a reuse.
        let url = worker_url(shard, worker);
        let status = resp.status;
        c.resp = resp;
        return Attempt {
            end: AttemptEnd::Retry {
                status,
                message: format!("worker {url} answered {status}"),
            },
            verdict,
        };
    }

    let framing = ClientFraming::choose(resp.framing, c.head.minor_version);
    let keep_client = c.head.keep_alive && framing.self_delimiting() && !shard.draining.get();
    c.outcome.status = resp.status;
    if let Some(w) = shard.workers.borrow_mut().get_mut(worker) {
        w.processed += 1;
    }
    let id: &[u8] = &c.request_id;
    write_client_head(
        &mut c.out,
        &resp,
        &c.head,
        framing,
        keep_client,
        &[(REQUEST_ID_HEADER, id)],
    );
    let mut decoder = BodyDecoder::new(resp.framing);
    let mut sse = resp.is_event_stream().then(SseScanner::default);
    let idle = shard.config.stream_idle_timeout;
    let end = relay_body(
        c,
        &mut up,
        framing,
        &mut decoder,
        sse.as_mut(),
        &mut watch,
        deadline,
        idle,
    )
    .await;
    let reusable = resp.keep_alive && decoder.is_done();
    c.resp = resp;
    let failed = retryable_status(c.outcome.status);
    let answered = |keep, verdict| Attempt {
        end: AttemptEnd::Answered { keep, failed },
        verdict,
    };
    match end {
        RelayEnd::Complete => {
            if reusable {
                shard.pool.borrow_mut().give(up, shard.deadlines.now());
            }
            answered(keep_client, verdict)
        }
        // Dropping `up` closes the worker's socket: vLLM aborts the generation.
        RelayEnd::ClientGone => {
            c.outcome.error = Some("client_gone");
            let v = if verdict == Verdict::Failure {
                Verdict::Failure
            } else {
                Verdict::Neutral
            };
            answered(false, v)
        }
        RelayEnd::UpstreamFailed | RelayEnd::TimedOut => {
            let timed_out = end == RelayEnd::TimedOut;
            let total = timed_out && deadline.limit_passed();
            c.outcome.error = Some(if timed_out {
                "upstream_timeout"
            } else {
                "stream_interrupted"
            });
            let (status, message) = if total {
                (504, "the request timed out".to_string())
            } else if timed_out {
                (
                    504,
                    format!(
                        "worker {} sent nothing for {}s",
                        worker_url(shard, worker),
                        idle.as_secs()
                    ),
                )
            } else {
                (
                    502,
                    format!("worker {} failed mid-answer", worker_url(shard, worker)),
                )
            };
            if let Some(sse) = &sse {
                end_stream_with_error(c, framing, &decoder, sse, status, &message).await;
            }
            let v = if total {
                Verdict::Neutral
            } else {
                Verdict::Failure
            };
            answered(false, v)
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

pub(super) fn worker_url(shard: &Shard, worker: WorkerId) -> String {
    shard
        .workers
        .borrow()
        .get(worker)
        .map_or_else(|| format!("#{worker}"), |w| w.spec.url.clone())
}

/// Writes the upstream head (and a small replayable body) into `c.out`. None when the
/// worker disappeared between the policy's choice and now.
fn write_request(
    shard: &Shard,
    c: &mut Client,
    worker: WorkerId,
    body: &RequestBody<'_>,
) -> Option<std::net::SocketAddr> {
    let workers = shard.workers.borrow();
    let w = workers.get(worker)?;
    let target = UpstreamTarget {
        authority: w.spec.authority.as_bytes(),
        dp_rank: w.spec.dp_rank,
        api_key: shard.config.api_key.as_deref(),
        request_id: &c.request_id,
    };
    let framing = match body {
        RequestBody::Replayable {
            declared: false, ..
        } => UpstreamBody::None,
        RequestBody::Replayable { bytes, .. } => UpstreamBody::Length(bytes.len() as u64),
        RequestBody::Streamed => match c.head.framing {
            crate::codec::framing::BodyFraming::Length(n) => UpstreamBody::Length(n),
            _ => UpstreamBody::Chunked,
        },
    };
    c.out.clear();
    write_upstream_head(&mut c.out, &c.head, &target, framing);
    if let RequestBody::Replayable { bytes, .. } = body {
        if bytes.len() <= COALESCE_BODY_BYTES {
            c.out.extend_from_slice(bytes);
        }
    }
    Some(w.spec.addr)
}

/// One attempt: connection, request, answer head. On error, the bool says whether the
/// connection came from the pool and failed before any answer byte.
#[allow(clippy::too_many_arguments)]
async fn exchange_head(
    shard: &Shard,
    c: &mut Client,
    worker: WorkerId,
    addr: std::net::SocketAddr,
    body: &RequestBody<'_>,
    allow_pool: bool,
    resp: &mut ResponseHead,
    watch: &mut ClientWatch,
    deadline: &mut Deadline<'_>,
) -> Result<Upstream, (Failure, bool)> {
    let pooled = if allow_pool {
        shard.pool.borrow_mut().take(worker, shard.deadlines.now())
    } else {
        None
    };
    let mut up = match pooled {
        Some(up) => up,
        None => {
            let connect = async {
                Some(
                    match pool::connect(worker, addr, shard.config.connect_timeout).await {
                        Ok(up) => Ok(up),
                        Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                            Err(Failure::ConnectTimeout)
                        }
                        Err(e) => Err(Failure::Refused(e)),
                    },
                )
            };
            let expired = async {
                (&mut *deadline).await;
                None
            };
            match or(connect, expired).await {
                Some(Ok(up)) => up,
                Some(Err(f)) => return Err((f, false)),
                None => return Err((Failure::Deadline, false)),
            }
        }
    };
    let reused = up.reused;
    if let Err(e) = send_request(c, &mut up, body, deadline).await {
        return Err(match e {
            SendError::Client => (Failure::ClientGone, false),
            SendError::Deadline => (Failure::Deadline, false),
            SendError::BadBody(m) => (Failure::BadRequestBody(m), false),
            SendError::Upstream(_) if reused => (Failure::Reset, true),
            SendError::Upstream(e) => (Failure::Refused(e), false),
        });
    }
    // The request is out: the worker has `--upstream-head-timeout-secs` to answer.
    deadline.phase(shard.config.head_timeout);
    loop {
        if !up.rbuf.is_empty() {
            match resp.parse(up.rbuf.filled(), c.head.is_head()) {
                Ok(Status::Complete(n)) => {
                    up.rbuf.consume(n);
                    if resp.is_interim() {
                        continue;
                    }
                    return Ok(up);
                }
                Ok(Status::Partial) => {}
                Err(e) => return Err((Failure::BadResponse(e.0), false)),
            }
        }
        let got_bytes = !up.rbuf.is_empty();
        match read_upstream(&mut up, MAX_RESPONSE_HEAD_BYTES + 1, c, watch, deadline).await {
            Wake::Upstream(Ok(0)) | Wake::Upstream(Err(_)) => {
                return Err((Failure::Reset, reused && !got_bytes));
            }
            Wake::Upstream(Ok(_)) => {}
            Wake::ClientGone => return Err((Failure::ClientGone, false)),
            Wake::Deadline if deadline.limit_passed() => return Err((Failure::Deadline, false)),
            Wake::Deadline => return Err((Failure::HeadTimeout, false)),
        }
    }
}

/// Which side broke while the request was being sent.
enum SendError {
    Upstream(io::Error),
    Client,
    Deadline,
    BadBody(&'static str),
}

/// Sends what `write_request` staged in `c.out`, then the rest of the body.
async fn send_request(
    c: &mut Client,
    up: &mut Upstream,
    body: &RequestBody<'_>,
    deadline: &mut Deadline<'_>,
) -> Result<(), SendError> {
    up.stream
        .write_all(&c.out)
        .await
        .map_err(SendError::Upstream)?;
    match body {
        RequestBody::Replayable { bytes, .. } => {
            if bytes.len() > COALESCE_BODY_BYTES {
                up.stream
                    .write_all(bytes)
                    .await
                    .map_err(SendError::Upstream)?;
            }
            Ok(())
        }
        RequestBody::Streamed => stream_body(c, up, deadline).await,
    }
}

/// Streams the client's body to the worker in its own framing, verbatim.
async fn stream_body(
    c: &mut Client,
    up: &mut Upstream,
    deadline: &mut Deadline<'_>,
) -> Result<(), SendError> {
    let mut decoder = BodyDecoder::new(c.head.framing);
    let mut sent_continue = false;
    loop {
        if !c.rbuf.is_empty() {
            let input = c.rbuf.filled();
            let progress = decoder
                .feed(input, |_| {})
                .map_err(|e| SendError::BadBody(e.0))?;
            up.stream
                .write_all(&input[..progress.consumed])
                .await
                .map_err(SendError::Upstream)?;
            c.rbuf.consume(progress.consumed);
            if progress.done {
                return Ok(());
            }
        }
        if c.head.expect_continue && !sent_continue {
            sent_continue = true;
            c.stream
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .map_err(|_| SendError::Client)?;
        }
        let read = async { Some(c.rbuf.read_from(&mut c.stream, READ_BUFFER_BYTES).await) };
        let expired = async {
            (&mut *deadline).await;
            None
        };
        match or(read, expired).await {
            Some(Ok(0)) | Some(Err(_)) => return Err(SendError::Client),
            Some(Ok(_)) => {}
            None => return Err(SendError::Deadline),
        }
    }
}

/// Answers the client for an exchange that produced no answer head, or hands the
/// answer it would have got to the retry loop.
async fn fail(
    shard: &Shard,
    c: &mut Client,
    worker: WorkerId,
    failure: Failure,
    retry: bool,
) -> AttemptEnd {
    let url = worker_url(shard, worker);
    let failed = failure.retryable();
    let (status, message) = match failure {
        Failure::Refused(e) => (502, format!("worker {url} unreachable: {e}")),
        Failure::ConnectTimeout => (504, format!("timed out connecting to worker {url}")),
        Failure::Reset => (
            502,
            format!("worker {url} closed the connection before answering"),
        ),
        Failure::BadResponse(m) => (502, format!("{m} ({url})")),
        Failure::HeadTimeout => (
            504,
            format!(
                "worker {url} did not answer within {}s",
                shard.config.head_timeout.as_secs()
            ),
        ),
        Failure::Deadline => (504, "request timed out waiting for the worker".to_string()),
        Failure::BadRequestBody(m) => (400, m.to_string()),
        Failure::ClientGone => {
            c.outcome.error = Some("client_gone");
            return AttemptEnd::Answered {
                keep: false,
                failed: false,
            };
        }
    };
    crate::debug!("shard {}: {} -> {status}: {message}", shard.index, url);
    if retry {
        return AttemptEnd::Retry { status, message };
    }
    // The request body may be half-read (streamed): close after the error.
    let keep = c.send_error(status, &message, false).await;
    AttemptEnd::Answered { keep, failed }
}

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

/// One exchange whose answer is read whole instead of relayed (the P/D prefill leg).
/// Nothing is written to the client.
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
    let Some(addr) = write_request(shard, c, worker, &body) else {
        return Buffered::Failed {
            status: 503,
            message: "worker was removed".into(),
            verdict: Verdict::Neutral,
            retryable: true,
        };
    };
    let _in_flight = InFlight::start(shard, worker);
    let mut watch = ClientWatch::new();
    let mut resp = std::mem::take(&mut c.resp);
    let mut allow_pool = true;
    let attempt = loop {
        let a = exchange_head(
            shard, c, worker, addr, &body, allow_pool, &mut resp, &mut watch, deadline,
        )
        .await;
        match a {
            Err((Failure::Reset, true)) if allow_pool => allow_pool = false,
            other => break other,
        }
    };
    c.out.clear();
    let mut up = match attempt {
        Ok(up) => up,
        Err((Failure::ClientGone, _)) => {
            c.resp = resp;
            return Buffered::ClientGone;
        }
        Err((failure, _)) => {
            c.resp = resp;
            let verdict = failure.verdict();
            let retryable = failure.retryable();
            let AttemptEnd::Retry { status, message } = fail(shard, c, worker, failure, true).await
            else {
                return Buffered::ClientGone;
            };
            return Buffered::Failed {
                status,
                message,
                verdict,
                retryable,
            };
        }
    };
    let status = resp.status;
    let mut decoder = BodyDecoder::new(resp.framing);
    let mut answer = Vec::new();
    deadline.phase(shard.config.stream_idle_timeout);
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
        match read_upstream(&mut up, READ_BUFFER_BYTES, c, &mut watch, deadline).await {
            Wake::Upstream(Ok(0)) if decoder.complete_at_eof() => break Ok(()),
            Wake::Upstream(Ok(0)) | Wake::Upstream(Err(_)) => {
                break Err("a body cut short");
            }
            Wake::Upstream(Ok(_)) => deadline.phase(shard.config.stream_idle_timeout),
            Wake::ClientGone => {
                c.resp = resp;
                return Buffered::ClientGone;
            }
            Wake::Deadline => break Err("no answer body in time"),
        }
    };
    let reusable = resp.keep_alive && decoder.is_done();
    c.resp = resp;
    deadline.end_phase();
    match ended {
        Ok(()) => {
            if reusable {
                shard.pool.borrow_mut().give(up, shard.deadlines.now());
            }
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
            message: format!("worker {} sent {why}", worker_url(shard, worker)),
            verdict: Verdict::Failure,
            retryable: true,
        },
    }
}
