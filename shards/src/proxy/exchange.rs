//! One exchange with one worker (after pingora's `HttpSession`): it owns the upstream
//! connection and the answer head from connect-or-pool until the answer has ended.
//!
//! Opening an exchange lends a pooled connection (or connects), sends the request and
//! reads the answer head. A pooled connection that fails before any answer byte is
//! the worker's keep-alive close racing our write: that is retried once on a fresh
//! connection, when the body can be sent again. What happens to the body of the
//! answer is the caller's (`forward` relays it, `buffered` reads it whole).

use super::failure::Failure;
use super::headers::{write_upstream_head, UpstreamBody, UpstreamTarget};
use super::wait::{read_upstream, ClientWatch, Wake};
use crate::breaker::BreakerState;
use crate::client::Client;
use crate::codec::body::BodyDecoder;
use crate::codec::framing::BodyFraming;
use crate::codec::limits::MAX_RESPONSE_HEAD_BYTES;
use crate::codec::response::ResponseHead;
use crate::codec::Status;
use crate::deadline::Deadline;
use crate::messages::Report;
use crate::pool::{self, Upstream};
use crate::request_body::{BodyError, BodyWait};
use crate::shard::Shard;
use crate::state::Worker;
use crate::worker::{WorkerId, WorkerRole};
use futures_lite::AsyncWriteExt;
use std::io;
use std::net::SocketAddr;

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

/// An open exchange: the answer head is in `conn.head`, its body is still to come.
pub struct Exchange<'s> {
    shard: &'s Shard,
    pub worker: WorkerId,
    pub conn: Upstream,
    in_flight: InFlight<'s>,
}

impl<'s> Exchange<'s> {
    /// Sends the request in `c.head` with `body` to `worker` and reads the answer head.
    pub async fn open(
        shard: &'s Shard,
        c: &mut Client,
        worker: WorkerId,
        body: &RequestBody<'_>,
        watch: &mut ClientWatch,
        deadline: &mut Deadline<'_>,
    ) -> Result<Exchange<'s>, Failure> {
        let Some(addr) = stage_request(shard, c, worker, body) else {
            return Err(Failure::Removed);
        };
        // Charged only to the worker it was priced for (a decode leg is not).
        let charge = c.prefill_charge.take().filter(|(w, _)| *w == worker);
        let in_flight = InFlight::start(shard, worker, charge.map(|(_, p)| p.new));
        let mut allow_pool = body.replayable();
        let ask = loop {
            let to = Target { worker, addr };
            match ask(shard, c, to, body, allow_pool, watch, deadline).await {
                Err((Failure::Reset, true)) if allow_pool => allow_pool = false,
                other => break other,
            }
        };
        c.out.clear();
        match ask {
            Ok(conn) => Ok(Exchange {
                shard,
                worker,
                conn,
                in_flight,
            }),
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
                Err(failure)
            }
        }
    }

    pub fn head(&self) -> &ResponseHead {
        &self.conn.head
    }

    /// The answer's first body bytes came: the worker is past the request's prefill
    /// (vLLM sends a stream's head before it; a whole answer's with it).
    pub fn answered(&mut self) {
        self.in_flight.answered();
    }

    /// The answer's body ended cleanly (`decoder` says where it ended): the
    /// connection goes back to the pool when the worker allows it. Dropping an
    /// exchange instead closes the connection, which makes vLLM abort a generation.
    pub fn finish(self, decoder: &BodyDecoder) {
        if self.conn.head.keep_alive && decoder.is_done() {
            let now = self.shard.deadlines.now();
            self.shard.pool.borrow_mut().give(self.conn, now);
        }
    }
}

/// Counts a request in flight to a worker on this shard, for as long as it lives, and
/// the prompt tokens it must prefill until its answer starts (kv_aware's `A`; a P/D
/// prefill leg nobody priced counts as one unpriced prefill instead); a request to a
/// half-open worker also holds one of its probe places.
struct InFlight<'a> {
    shard: &'a Shard,
    worker: WorkerId,
    prefill_tokens: u32,
    unpriced: bool,
    probe: bool,
}

impl<'a> InFlight<'a> {
    fn start(shard: &'a Shard, worker: WorkerId, charge: Option<u32>) -> Self {
        let mut workers = shard.workers.borrow_mut();
        let mut probe = false;
        let prefill_tokens = charge.unwrap_or(0);
        let mut unpriced = false;
        if let Some(w) = workers.get_mut(worker) {
            w.in_flight += 1;
            w.prefill_tokens = w.prefill_tokens.saturating_add(prefill_tokens);
            unpriced = charge.is_none() && w.spec.role == WorkerRole::Prefill;
            w.unpriced_prefills += u32::from(unpriced);
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
            prefill_tokens,
            unpriced,
            probe,
        }
    }

    /// The answer started: the worker is past this request's prefill.
    fn answered(&mut self) {
        if self.prefill_tokens > 0 || self.unpriced {
            if let Some(w) = self.shard.workers.borrow_mut().get_mut(self.worker) {
                self.prefill_done(w);
            }
        }
    }

    /// Takes this request's prefill off `w` (once: the counts are zeroed here).
    fn prefill_done(&mut self, w: &mut Worker) {
        let n = std::mem::take(&mut self.prefill_tokens);
        let unpriced = std::mem::take(&mut self.unpriced);
        w.prefill_tokens = w.prefill_tokens.saturating_sub(n);
        w.unpriced_prefills = w.unpriced_prefills.saturating_sub(u32::from(unpriced));
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut workers = self.shard.workers.borrow_mut();
        if let Some(w) = workers.get_mut(self.worker) {
            w.in_flight = w.in_flight.saturating_sub(1);
            self.prefill_done(w);
            if self.probe {
                w.breaker.probes = w.breaker.probes.saturating_sub(1);
            }
        }
        if self.probe {
            workers.refresh_routable();
        }
    }
}

/// Writes the upstream head (and a small replayable body) into `c.out`. None when the
/// worker disappeared between the policy's choice and now.
fn stage_request(
    shard: &Shard,
    c: &mut Client,
    worker: WorkerId,
    body: &RequestBody<'_>,
) -> Option<SocketAddr> {
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
            BodyFraming::Length(n) => UpstreamBody::Length(n),
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

/// Where an exchange goes.
#[derive(Clone, Copy)]
struct Target {
    worker: WorkerId,
    addr: SocketAddr,
}

/// Connection, request, answer head. On error, the bool says whether the connection
/// came from the pool and failed before any answer byte.
async fn ask(
    shard: &Shard,
    c: &mut Client,
    to: Target,
    body: &RequestBody<'_>,
    allow_pool: bool,
    watch: &mut ClientWatch,
    deadline: &mut Deadline<'_>,
) -> Result<Upstream, (Failure, bool)> {
    let pooled = if allow_pool {
        shard
            .pool
            .borrow_mut()
            .take(to.worker, shard.deadlines.now())
    } else {
        None
    };
    let mut up = match pooled {
        Some(up) => up,
        None => {
            let connect = pool::connect(to.worker, to.addr, shard.config.connect_timeout);
            match deadline.bound(connect).await {
                Some(Ok(up)) => up,
                Some(Err(e)) if e.kind() == io::ErrorKind::TimedOut => {
                    return Err((Failure::ConnectTimeout, false))
                }
                Some(Err(e)) => return Err((Failure::Refused(e), false)),
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
            match up.head.parse(up.rbuf.filled(), c.head.is_head()) {
                Ok(Status::Complete(n)) => {
                    up.rbuf.consume(n);
                    if up.head.is_interim() {
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

/// Sends what `stage_request` staged in `c.out`, then the rest of the body.
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
    let mut wait = BodyWait::default();
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
        wait.more(c, deadline).await.map_err(|e| match e {
            BodyError::TimedOut => SendError::Deadline,
            _ => SendError::Client,
        })?;
    }
}
