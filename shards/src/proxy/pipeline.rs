//! The three routing modes, chosen per request from its head:
//!
//! 1. head only: the policy decides from the head and the body streams through
//!    (transparent paths, bodies that are not all here yet);
//! 2. JSON body: the body is read whole (up to `--max-payload-size`), parsed once if
//!    the policy reads it, and kept for replay (generation paths);
//! 3. multi-leg: the JSON body is rewritten and sent to two workers in turn (P/D,
//!    see `pd`; not built yet).

use super::forward::RequestBody;
use super::request_id::request_id;
use super::retry::{forward_with_retries, Leg};
use super::route::{classify, RouteKind};
use super::wait::{watch_client, ClientWatch, Waited};
use crate::admission::{Admit, Permit};
use crate::codec::body::BodyDecoder;
use crate::codec::framing::BodyFraming;
use crate::codec::limits::READ_BUFFER_BYTES;
use crate::deadline::Deadline;
use crate::messages::{WorkerId, WorkerRole};
use crate::policy::RouteInput;
use crate::server::Client;
use crate::shard::Shard;
use futures_lite::future::or;
use futures_lite::AsyncWriteExt;
use std::time::Instant;

/// A buffered body larger than this is freed after its request instead of being kept
/// for the connection's next one.
const KEEP_BODY_CAPACITY: usize = 1024 * 1024;

/// Handles one request whose head is in `c.head`. Returns true when the connection
/// may carry another request.
pub async fn handle(shard: &Shard, c: &mut Client) -> bool {
    let max = shard.config.max_payload_bytes;
    if let BodyFraming::Length(n) = c.head.framing {
        if n > max {
            // Refused before reading it: nothing goes upstream, and the connection
            // closes since the unread body would follow.
            let msg = format!("request body of {n} bytes exceeds the limit of {max} bytes");
            return c.send_error(413, &msg, false).await;
        }
    }
    request_id(
        &mut c.request_id,
        &c.head,
        &shard.config.request_id_headers,
        &mut shard.rng.borrow_mut(),
    );
    // Held until the answer has ended, streams included.
    let (_slot, admitted) = match admit(shard, c).await {
        Ok(admitted) => admitted,
        Err(keep) => return keep,
    };
    let mut deadline = shard
        .deadlines
        .start_at(admitted, shard.config.request_timeout, false);
    let buffered = classify(c.head.method(), c.head.path()) == RouteKind::Generation
        || shard.policy(shard.main_role()).borrow().needs_body();
    if buffered {
        handle_buffered(shard, c, &mut deadline).await
    } else {
        handle_streamed(shard, c, &mut deadline).await
    }
}

/// Mode 2.
async fn handle_buffered(shard: &Shard, c: &mut Client, deadline: &mut Deadline<'_>) -> bool {
    match read_body(c, shard.config.max_payload_bytes, deadline).await {
        Ok(()) => {}
        Err(BodyError::TooLarge) => {
            let msg = format!(
                "request body exceeds the limit of {} bytes",
                shard.config.max_payload_bytes
            );
            return c.send_error(413, &msg, false).await;
        }
        Err(BodyError::Malformed(m)) => return c.send_error(400, m, false).await,
        Err(BodyError::TimedOut) => {
            return c
                .send_error(408, "timed out reading the request body", false)
                .await
        }
        Err(BodyError::Closed) => return false,
    }
    let body = std::mem::take(&mut c.body);
    let generation = classify(c.head.method(), c.head.path()) == RouteKind::Generation;
    let role = shard.main_role();
    let pd = generation && shard.config.pd.is_some();
    let needs_json = pd || shard.policy(role).borrow().needs_body();
    let json = if needs_json && !body.is_empty() {
        match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(v) => Some(v),
            // A generation request must be JSON; other paths may carry anything.
            Err(e) if generation => {
                let msg = format!("invalid JSON body: {e}");
                let keep = c.send_error(400, &msg, true).await;
                c.body = body;
                return keep;
            }
            Err(_) => None,
        }
    } else {
        None
    };
    let keep = if pd {
        super::pd::handle(shard, c, json.as_ref(), deadline).await
    } else {
        match pick(shard, c, json.as_ref(), role) {
            Some(worker) => {
                let declared = c.head.has_body();
                let req_body = RequestBody::Replayable {
                    bytes: &body,
                    declared,
                };
                let leg = Leg::Single { role };
                forward_with_retries(shard, c, worker, req_body, json.as_ref(), leg, deadline).await
            }
            None => no_worker(shard, c, true, role).await,
        }
    };
    if body.capacity() <= KEEP_BODY_CAPACITY {
        c.body = body;
        c.body.clear();
    }
    keep
}

/// Mode 1. A body that already sits whole in the read buffer is copied out so the
/// request stays replayable; otherwise it streams through.
async fn handle_streamed(shard: &Shard, c: &mut Client, deadline: &mut Deadline<'_>) -> bool {
    let role = shard.main_role();
    let leg = Leg::Single { role };
    let Some(worker) = pick(shard, c, None, role) else {
        return no_worker(shard, c, !c.head.has_body(), role).await;
    };
    let whole = match c.head.framing {
        BodyFraming::Empty => Some(0),
        BodyFraming::Length(n) if n as usize <= c.rbuf.len() => Some(n as usize),
        _ => None,
    };
    match whole {
        Some(n) => {
            let mut body = std::mem::take(&mut c.body);
            body.clear();
            body.extend_from_slice(&c.rbuf.filled()[..n]);
            c.rbuf.consume(n);
            let declared = c.head.has_body();
            let req_body = RequestBody::Replayable {
                bytes: &body,
                declared,
            };
            let keep = forward_with_retries(shard, c, worker, req_body, None, leg, deadline).await;
            c.body = body;
            keep
        }
        None => {
            forward_with_retries(shard, c, worker, RequestBody::Streamed, None, leg, deadline).await
        }
    }
}

/// Takes an admission slot, queueing for one if need be, and says when it was
/// granted (the request timeout counts from there). Err carries what `handle`
/// returns when the request was answered instead (429, 408) or the client left.
async fn admit<'s>(shard: &'s Shard, c: &mut Client) -> Result<(Permit<'s>, Instant), bool> {
    let ticket = match shard.admission.admit() {
        Admit::Now(permit) => return Ok((permit, c.started)),
        Admit::Queued(ticket) => ticket,
        Admit::Full => {
            let keep = !c.head.has_body();
            return Err(c
                .send_error(429, "too many requests: the router's queue is full", keep)
                .await);
        }
    };
    let mut deadline = shard.deadlines.start(shard.config.queue_timeout, false);
    let mut watch = ClientWatch::new();
    match watch_client(ticket, c, &mut watch, &mut deadline).await {
        Waited::Done(permit) => Ok((permit, Instant::now())),
        Waited::ClientGone => {
            c.outcome.error = Some("client_gone");
            Err(false)
        }
        Waited::Deadline => {
            let msg = format!(
                "request waited {}s in the router's queue",
                shard.config.queue_timeout.as_secs()
            );
            Err(c.send_error(408, &msg, false).await)
        }
    }
}

pub(super) fn pick(
    shard: &Shard,
    c: &Client,
    json: Option<&serde_json::Value>,
    role: WorkerRole,
) -> Option<WorkerId> {
    let input = RouteInput {
        head: &c.head,
        json,
    };
    let (picked, insert) = {
        let mut policy = shard.policy(role).borrow_mut();
        let mut workers = shard.workers.borrow_mut();
        workers.set_view(role);
        let picked = policy.pick(&workers, &input);
        (picked, policy.take_insert())
    };
    if let Some(insert) = insert {
        shard.pending_inserts.borrow_mut().push(insert);
    }
    if let Some(id) = picked {
        if let Some(w) = shard.workers.borrow_mut().get_mut(id) {
            w.decisions += 1;
        }
    }
    picked
}

pub(super) async fn no_worker(
    shard: &Shard,
    c: &mut Client,
    body_read: bool,
    role: WorkerRole,
) -> bool {
    let (healthy, open) = {
        let mut workers = shard.workers.borrow_mut();
        workers.set_view(role);
        workers.unavailable_counts()
    };
    let pool = match role {
        WorkerRole::Regular => "",
        WorkerRole::Prefill => "prefill ",
        WorkerRole::Decode => "decode ",
    };
    let msg = if open > 0 {
        format!(
            "no {pool}worker is available: {open} of {healthy} healthy {pool}worker(s) \
             have an open circuit breaker after repeated failures"
        )
    } else {
        format!("no healthy {pool}worker is available")
    };
    c.send_error(503, &msg, body_read).await
}

enum BodyError {
    TooLarge,
    Malformed(&'static str),
    TimedOut,
    Closed,
}

/// Reads the whole body into `c.body` (chunked bodies are decoded), sending
/// `100 Continue` first when the client asked for it.
async fn read_body(c: &mut Client, max: u64, deadline: &mut Deadline<'_>) -> Result<(), BodyError> {
    c.body.clear();
    let mut decoder = BodyDecoder::new(c.head.framing);
    if let BodyFraming::Length(n) = c.head.framing {
        c.body.reserve(n as usize);
    }
    let mut sent_continue = false;
    loop {
        if !c.rbuf.is_empty() || decoder.is_done() {
            let body = &mut c.body;
            let progress = decoder
                .feed(c.rbuf.filled(), |d| body.extend_from_slice(d))
                .map_err(|e| BodyError::Malformed(e.0))?;
            c.rbuf.consume(progress.consumed);
            if c.body.len() as u64 > max {
                return Err(BodyError::TooLarge);
            }
            if progress.done {
                return Ok(());
            }
        }
        if c.head.expect_continue && !sent_continue {
            sent_continue = true;
            c.stream
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .map_err(|_| BodyError::Closed)?;
        }
        let read = async { Some(c.rbuf.read_from(&mut c.stream, READ_BUFFER_BYTES).await) };
        let expired = async {
            (&mut *deadline).await;
            None
        };
        match or(read, expired).await {
            Some(Ok(0)) | Some(Err(_)) => return Err(BodyError::Closed),
            Some(Ok(_)) => {}
            None => return Err(BodyError::TimedOut),
        }
    }
}
