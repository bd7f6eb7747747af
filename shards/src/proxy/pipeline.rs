//! The three routing modes, chosen per request from its head:
//!
//! 1. head only: the policy decides from the head and the body streams through
//!    (transparent paths, bodies that are not all here yet);
//! 2. JSON body: the body is read whole (up to `--max-payload-size`), parsed once if
//!    the policy reads it, and kept for replay (generation paths);
//! 3. multi-leg: the JSON body is rewritten and sent to two workers in turn (P/D,
//!    see `pd`).

use super::choose::{igw_model, no_worker, pick, unknown_model};
use super::exchange::RequestBody;
use super::forward::{forward_with_retries, Relayed};
use super::request_id::request_id;
use super::route::{classify, RouteKind};
use super::wait::{watch_client, ClientWatch, Waited};
use crate::admission::{Admit, Permit};
use crate::client::Client;
use crate::codec::framing::BodyFraming;
use crate::codec::request::RequestHead;
use crate::deadline::Deadline;
use crate::policy::RouteInput;
use crate::request_body::read_body;
use crate::shard::Shard;
use crate::worker::WorkerRole;
use std::time::Instant;

/// A buffered body larger than this is freed after its request instead of being kept
/// for the connection's next one: an idle keep-alive connection should hold little,
/// and a kept buffer is outside the shard's body budget.
const KEEP_BODY_CAPACITY: usize = crate::codec::limits::READ_BUFFER_BYTES;

/// Handles one request whose head is in `c.head`. Returns true when the connection
/// may carry another request.
pub async fn handle(shard: &Shard, c: &mut Client) -> bool {
    let max = max_body(shard);
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
    if let Some(bucket) = &shard.rate {
        if let Err(wait) = bucket.take(c.started) {
            return rate_limited(c, wait).await;
        }
    }
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

/// The largest body a request may have: `--max-payload-size`, or the shard's whole
/// body budget when that is smaller.
fn max_body(shard: &Shard) -> u64 {
    shard.config.max_payload_bytes.min(shard.bodies.limit())
}

/// Mode 2.
async fn handle_buffered(shard: &Shard, c: &mut Client, deadline: &mut Deadline<'_>) -> bool {
    let mut body = std::mem::take(&mut c.body);
    let max = max_body(shard);
    // Held while the body is: until the answer has ended (a retry replays it).
    let mut charge = shard.bodies.charge();
    if let Err(e) = read_body(c, &mut body, max, deadline, &mut charge).await {
        c.body = body;
        let msg = format!("request body exceeds the limit of {max} bytes");
        return e.answer(c, &msg).await;
    }
    let generation = classify(c.head.method(), c.head.path()) == RouteKind::Generation;
    let role = shard.main_role();
    let pd = generation && shard.config.pd.is_some();
    let needs_json = pd || shard.config.igw || shard.policy(role).borrow().needs_body();
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
    if let Some(model) = igw_model(shard, json.as_ref(), role) {
        if !shard.workers.borrow().serves(role, model) {
            let keep = unknown_model(c, model).await;
            c.body = body;
            return keep;
        }
    }
    c.tokens = None;
    if generation {
        // In P/D mode the prefill pool's policy reads the prompt.
        let role = if pd { WorkerRole::Prefill } else { role };
        if let Some(body) = json
            .as_ref()
            .filter(|b| wants_tokens(shard, &c.head, b, role))
        {
            c.tokens = super::tokenize::tokens(shard, c, body, role, deadline).await;
        }
    }
    let keep = if pd {
        super::pd::handle(shard, c, json.as_ref(), deadline).await
    } else {
        match pick(shard, c, json.as_ref(), role, &[]) {
            Some(worker) => {
                let declared = c.head.has_body();
                let leg = Relayed {
                    body: RequestBody::Replayable {
                        bytes: &body,
                        declared,
                    },
                    role,
                    prefill: None,
                };
                forward_with_retries(shard, c, worker, leg, json.as_ref(), deadline).await
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

/// kv_aware needs the prompt's tokens, and the body does not give them (a prompt of
/// token ids does) nor does a session binding make them moot.
fn wants_tokens(
    shard: &Shard,
    head: &RequestHead,
    body: &serde_json::Value,
    role: WorkerRole,
) -> bool {
    let policy = shard.policy(role).borrow();
    if policy.kind() != crate::policy::PolicyKind::KvAware {
        return false;
    }
    let ids = body
        .get("prompt")
        .and_then(|p| p.as_array())
        .is_some_and(|a| a.first().is_some_and(|t| t.is_u64()));
    if ids {
        return false;
    }
    let input = RouteInput {
        head,
        json: Some(body),
        tokens: None,
    };
    let workers = shard.workers.borrow();
    let bound = match igw_model(shard, Some(body), role) {
        // `--enable-igw`: the model's own policy holds its sessions.
        Some(model) => shard.model_pools.borrow().routes_by_session(
            model,
            &workers.view_serving(role, &[], model),
            &input,
        ),
        None => policy.routes_by_session(&workers.view(role, &[]), &input),
    };
    !bound
}

/// Mode 1. A body that already sits whole in the read buffer is copied out so the
/// request stays replayable; otherwise it streams through.
async fn handle_streamed(shard: &Shard, c: &mut Client, deadline: &mut Deadline<'_>) -> bool {
    let role = shard.main_role();
    let Some(worker) = pick(shard, c, None, role, &[]) else {
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
            let leg = Relayed {
                body: RequestBody::Replayable {
                    bytes: &body,
                    declared: c.head.has_body(),
                },
                role,
                prefill: None,
            };
            let keep = forward_with_retries(shard, c, worker, leg, None, deadline).await;
            c.body = body;
            keep
        }
        None => {
            let leg = Relayed {
                body: RequestBody::Streamed,
                role,
                prefill: None,
            };
            forward_with_retries(shard, c, worker, leg, None, deadline).await
        }
    }
}

/// 429 for a request over `--rate-limit-tokens-per-second`, with `Retry-After` in whole
/// seconds (RFC 9110 §10.2.3), rounded up so that a client that waits gets a token.
async fn rate_limited(c: &mut Client, wait: std::time::Duration) -> bool {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let retry = secs.max(1).to_string();
    let keep = !c.head.has_body();
    let msg = "too many requests: over the router's rate limit; retry after the time it says";
    let kept = c
        .send_error_with(429, msg, keep, &[(b"retry-after", retry.as_bytes())])
        .await;
    c.outcome.error = Some("rate_limited");
    kept
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
