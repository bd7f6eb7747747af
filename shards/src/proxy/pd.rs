//! Routing mode 3: prefill/decode disaggregation for vLLM (NIXL connector).
//!
//! The flow (docs/pd.md), of which this file holds the wire rules:
//! 1. the pipeline buffers and parses the JSON body (as in mode 2);
//! 2. the prefill leg gets `prefill_body`: one token, no stream, and
//!    `kv_transfer_params` asking for a remote decode; its whole answer is read;
//! 3. the decode leg gets `decode_body`: the original request plus the
//!    `kv_transfer_params` of the prefill answer, verbatim; its answer (JSON or SSE)
//!    is relayed like any other, with the same pool, deadline and cancellation.
//!
//! Both legs carry the same `pd_request_id` as `X-Request-Id`.
//!
//! Failures: the prefill leg is retried on other prefill workers by the retry rules
//! (a new request id each time, since it names the prefill worker); when retries run
//! out the client gets 502 naming the prefill stage, and a prefill answer the request
//! itself caused (4xx) is passed through. The decode leg is an ordinary
//! `forward_with_retries` on the decode pool: a failure before its first byte is
//! retried on another decode worker with the same prefill result (vLLM keeps the
//! prefilled blocks until a decode pulls them or they time out). Each leg counts for
//! its worker's breaker; a client that leaves during either leg cancels it.

use super::attempts::{drive, Attempt, Driven, Leg, Step};
use super::buffered::{exchange_buffered, Buffered};
use super::choose::{no_worker, pick};
use super::exchange::RequestBody;
use super::failure::{retryable_status, status_verdict, Verdict};
use super::forward::{forward_with_retries, Relayed};
use super::request_id::set_pd_request_id;
use crate::client::Client;
use crate::config::KvConnector;
use crate::deadline::Deadline;
use crate::shard::Shard;
use crate::worker::{WorkerId, WorkerRole};
use serde_json::{json, Map, Value};
use std::time::Instant;

/// Serves one generation request in P/D mode. Returns true when the client
/// connection may carry another request.
pub async fn handle(
    shard: &Shard,
    c: &mut Client,
    json: Option<&Value>,
    deadline: &mut Deadline<'_>,
) -> bool {
    let keep = serve(shard, c, json, deadline).await;
    let route = crate::metrics::route_index(c.head.path());
    let took = c.started.elapsed();
    shard.metrics.borrow_mut().pd_duration[route].observe(took);
    keep
}

/// The flow itself; `handle` times it (`vllm_router_pd_request_duration_seconds`).
async fn serve(
    shard: &Shard,
    c: &mut Client,
    json: Option<&Value>,
    deadline: &mut Deadline<'_>,
) -> bool {
    let Some(original) = json.and_then(Value::as_object) else {
        let msg = "a generation request must have a JSON object body";
        return c.send_error(400, msg, true).await;
    };
    let route = crate::metrics::route_index(c.head.path());
    shard.metrics.borrow_mut().pd_requests[route] += 1;
    let Some(decode) = pick(shard, c, json, WorkerRole::Decode, &[]) else {
        pd_error(shard, "no_decode_worker");
        return no_worker(shard, c, true, WorkerRole::Decode).await;
    };
    let pending = PendingDecode::start(shard, decode);
    let Some(first) = pick(shard, c, json, WorkerRole::Prefill, &[]) else {
        pd_error(shard, "no_prefill_worker");
        return no_worker(shard, c, true, WorkerRole::Prefill).await;
    };
    note_prefill_decision(shard, c);
    // Mooncake: one transfer id for both legs (the router makes both legs' params).
    let mooncake = shard.config.pd.as_ref().map(|p| p.connector) == Some(KvConnector::Mooncake);
    let transfer = mooncake.then(|| super::mooncake::transfer_id(&mut shard.rng.borrow_mut()));
    let mut prefill_json = prefill_body(original);
    if let Some(t) = &transfer {
        prefill_json.insert(
            "kv_transfer_params".into(),
            super::mooncake::prefill_params(t),
        );
    }
    let prefill_bytes = serde_json::to_vec(&prefill_json).expect("JSON values serialize");
    let mut prefill = Prefill {
        bytes: &prefill_bytes,
        decode,
        transfer: transfer.as_deref(),
    };
    let (params, prefill_addr) = match drive(shard, c, &mut prefill, first, json, deadline).await {
        Driven::Done(Ok(done)) => done,
        Driven::Done(Err(keep)) => return keep,
        Driven::Exhausted { message, .. } => {
            pd_error(shard, "prefill_failed");
            let attempts = prefill.attempts(shard);
            let msg = format!("prefill stage failed after {attempts} attempt(s): {message}");
            return c.send_error(502, &msg, true).await;
        }
        Driven::NoWorker { message, .. } => {
            pd_error(shard, "prefill_failed");
            let msg = format!("prefill stage failed: {message}");
            return c.send_error(502, &msg, true).await;
        }
        Driven::ClientGone => return false,
        Driven::TimedOut => return c.send_error(504, "the request timed out", true).await,
    };
    let decode_json = match params {
        Some(params) => decode_body(original, params),
        None => original.clone(), // Mooncake without bootstrap info yet
    };
    let decode_bytes = serde_json::to_vec(&decode_json).expect("JSON values serialize");
    *shard
        .metrics
        .borrow_mut()
        .pd_decode
        .entry(decode)
        .or_default() += 1;
    let waited = pending.since.elapsed().as_secs_f64();
    shard.metrics.borrow_mut().pd_decode_pending.observe(waited);
    drop(pending);
    let started = Instant::now();
    let leg = Relayed {
        body: RequestBody::Replayable {
            bytes: &decode_bytes,
            declared: true,
        },
        role: WorkerRole::Decode,
        prefill: Some(&prefill_addr),
    };
    let keep = forward_with_retries(shard, c, decode, leg, json, deadline).await;
    shard
        .metrics
        .borrow_mut()
        .pd_decode_duration
        .observe(started.elapsed());
    if c.outcome.status >= 500 || c.outcome.error.is_some() {
        pd_error(shard, "decode_failed");
    }
    keep
}

/// A request whose decode worker is chosen while its prefill runs: counted on the
/// decode worker (`vllm_router_pd_pending_decode_requests`) until its decode leg goes
/// out or the request ends.
struct PendingDecode<'a> {
    shard: &'a Shard,
    worker: WorkerId,
    since: Instant,
}

impl<'a> PendingDecode<'a> {
    fn start(shard: &'a Shard, worker: WorkerId) -> Self {
        if let Some(w) = shard.workers.borrow_mut().get_mut(worker) {
            w.pending_decodes += 1;
        }
        PendingDecode {
            shard,
            worker,
            since: Instant::now(),
        }
    }
}

impl Drop for PendingDecode<'_> {
    fn drop(&mut self) {
        if let Some(w) = self.shard.workers.borrow_mut().get_mut(self.worker) {
            w.pending_decodes = w.pending_decodes.saturating_sub(1);
        }
    }
}

/// With a kv_aware prefill policy, what its first pick priced (0.1.17's
/// `vllm_router_pd_prefill_decisions_total`, `..._credited_prefix_tokens_total` and
/// `..._new_prefill_tokens`).
fn note_prefill_decision(shard: &Shard, c: &Client) {
    let kind = shard.policy(WorkerRole::Prefill).borrow().kind();
    if kind != crate::policy::PolicyKind::KvAware {
        return;
    }
    let mut m = shard.metrics.borrow_mut();
    match c.prefill_charge {
        Some((_, priced)) => {
            m.pd_prefill_decisions[0] += 1;
            m.pd_credited_tokens += u64::from(priced.credited);
            m.pd_new_prefill_tokens.observe(f64::from(priced.new));
        }
        None => m.pd_prefill_decisions[1] += 1,
    }
}

/// The prefill leg: its answer is read whole for the transfer params. Done(Ok): the
/// params and the prefill worker's host:port. Done(Err): the client was answered (or
/// left); the value is `handle`'s.
struct Prefill<'a> {
    bytes: &'a [u8],
    decode: WorkerId,
    /// Mooncake's transfer id: the decode params come from the router, not the answer.
    transfer: Option<&'a str>,
}

impl Leg for Prefill<'_> {
    type Output = Result<(Option<Value>, String), bool>;

    fn role(&self) -> WorkerRole {
        WorkerRole::Prefill
    }

    fn attempts(&self, shard: &Shard) -> u32 {
        shard.config.retry.max_attempts
    }

    async fn attempt(
        &mut self,
        shard: &Shard,
        c: &mut Client,
        worker: WorkerId,
        _n: u32,
        _last: bool,
        deadline: &mut Deadline<'_>,
    ) -> Attempt<Self::Output> {
        let addr = authority(shard, worker);
        set_pd_request_id(shard, c, &addr, self.decode);
        *shard
            .metrics
            .borrow_mut()
            .pd_prefill
            .entry(worker)
            .or_default() += 1;
        let started = Instant::now();
        let result = exchange_buffered(shard, c, worker, self.bytes, deadline).await;
        shard
            .metrics
            .borrow_mut()
            .pd_prefill_duration
            .observe(started.elapsed());
        let answered = |value, verdict| Attempt {
            step: Step::Done {
                value: Err(value),
                failed: false,
            },
            verdict,
        };
        let retry = |status, message, verdict| Attempt {
            step: Step::Retry { status, message },
            verdict,
        };
        match result {
            Buffered::ClientGone => {
                c.outcome.error = Some("client_gone");
                answered(false, Verdict::Neutral)
            }
            Buffered::Answer { status, body } if (200..300).contains(&status) => {
                let params = match self.transfer {
                    Some(t) => Ok(mooncake_decode_params(shard, worker, t)),
                    None => transfer_params(&body).map(Some),
                };
                let step = match params {
                    Ok(params) => Step::Done {
                        value: Ok((params, addr)),
                        failed: false,
                    },
                    Err(e) => Step::Done {
                        value: Err(no_params(shard, c, worker, e).await),
                        failed: false,
                    },
                };
                Attempt {
                    step,
                    verdict: Verdict::Success,
                }
            }
            Buffered::Answer { status, body } => {
                let verdict = status_verdict(status);
                if !retryable_status(status) {
                    // The request's own fault (a 4xx): the client sees vLLM's answer.
                    pd_error(shard, "prefill_rejected");
                    return answered(pass_through(c, status, &body).await, verdict);
                }
                let message = format!("worker {} answered {status}", shard.worker_url(worker));
                retry(status, message, verdict)
            }
            Buffered::Failed {
                status,
                message,
                verdict,
                retryable,
            } => {
                if retryable {
                    return retry(status, message, verdict);
                }
                pd_error(shard, "prefill_failed");
                let msg = format!("prefill stage failed: {message}");
                answered(c.send_error(status, &msg, true).await, verdict)
            }
        }
    }
}

/// The decode params naming the prefill worker that served; None (and a warning, once
/// per shard) while its bootstrap server has not answered the control core.
fn mooncake_decode_params(shard: &Shard, worker: WorkerId, transfer: &str) -> Option<Value> {
    let workers = shard.workers.borrow();
    let spec = &workers.get(worker)?.spec;
    let params = super::mooncake::decode_params(transfer, spec);
    if params.is_none() && !shard.warned_mooncake.replace(true) {
        crate::warn!(
            "no Mooncake bootstrap info for prefill {} yet: decode proceeds without \
             kv_transfer_params",
            spec.url
        );
    }
    params
}

/// A 2xx prefill answer that cannot feed a decode leg: 502 naming the worker.
async fn no_params(shard: &Shard, c: &mut Client, worker: WorkerId, e: PrefillAnswerError) -> bool {
    pd_error(shard, "prefill_no_transfer_params");
    let why = match e {
        PrefillAnswerError::NotJson => "an answer that is not JSON",
        PrefillAnswerError::NoTransferParams => {
            "no kv_transfer_params (is it a vLLM NIXL prefill instance?)"
        }
    };
    let url = shard.worker_url(worker);
    let msg = format!("prefill stage failed: worker {url} sent {why}");
    c.send_error(502, &msg, true).await
}

/// A worker's own error answer, passed to the client as it came.
async fn pass_through(c: &mut Client, status: u16, body: &[u8]) -> bool {
    c.outcome.status = status;
    c.outcome.first_byte.get_or_insert_with(Instant::now);
    c.out.clear();
    let keep = c.head.keep_alive;
    crate::errors::write_answer(
        &mut c.out,
        c.head.minor_version,
        status,
        "application/json",
        body,
        !keep,
    );
    c.flush_out().await.is_ok() && keep
}

fn pd_error(shard: &Shard, kind: &'static str) {
    *shard
        .metrics
        .borrow_mut()
        .pd_errors
        .entry(kind)
        .or_default() += 1;
}

fn authority(shard: &Shard, worker: WorkerId) -> String {
    shard
        .workers
        .borrow()
        .get(worker)
        .map_or_else(String::new, |w| w.spec.pd_peer().to_string())
}

/// The body of the prefill leg: the original request generating one token, not
/// streamed, with vLLM asked to keep the KV cache for a remote decode.
pub fn prefill_body(original: &Map<String, Value>) -> Map<String, Value> {
    let mut body = original.clone();
    body.insert("max_tokens".into(), json!(1));
    if body.contains_key("max_completion_tokens") {
        body.insert("max_completion_tokens".into(), json!(1));
    }
    if let Some(min) = body.get("min_tokens").and_then(Value::as_u64) {
        body.insert("min_tokens".into(), json!(min.min(1)));
    }
    body.insert("stream".into(), Value::Bool(false));
    body.remove("stream_options");
    body.insert(
        "kv_transfer_params".into(),
        json!({
            "do_remote_decode": true,
            "do_remote_prefill": false,
            "remote_engine_id": null,
            "remote_block_ids": null,
            "remote_host": null,
            "remote_port": null,
        }),
    );
    body
}

/// Why a prefill answer cannot feed a decode leg.
#[derive(Debug, PartialEq, Eq)]
pub enum PrefillAnswerError {
    NotJson,
    /// The prefill worker did not return `kv_transfer_params` (not a NIXL prefill
    /// instance, or it failed to keep the cache).
    NoTransferParams,
}

/// The top-level `kv_transfer_params` of a prefill answer.
pub fn transfer_params(answer: &[u8]) -> Result<Value, PrefillAnswerError> {
    let v: Value = serde_json::from_slice(answer).map_err(|_| PrefillAnswerError::NotJson)?;
    match v.get("kv_transfer_params") {
        Some(p) if !p.is_null() => Ok(p.clone()),
        _ => Err(PrefillAnswerError::NoTransferParams),
    }
}

/// The body of the decode leg: the original request (its own `stream`, `max_tokens`)
/// plus the prefill's transfer params, verbatim.
pub fn decode_body(original: &Map<String, Value>, params: Value) -> Map<String, Value> {
    let mut body = original.clone();
    body.insert("kv_transfer_params".into(), params);
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn prefill_leg_generates_one_token_without_streaming() {
        let original = obj(json!({
            "model": "m", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 200, "max_completion_tokens": 200, "min_tokens": 5,
            "stream": true, "stream_options": {"include_usage": true}, "temperature": 0.5
        }));
        let p = Value::Object(prefill_body(&original));
        assert_eq!(
            p,
            json!({
                "model": "m", "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 1, "max_completion_tokens": 1, "min_tokens": 1,
                "stream": false, "temperature": 0.5,
                "kv_transfer_params": {
                    "do_remote_decode": true, "do_remote_prefill": false,
                    "remote_engine_id": null, "remote_block_ids": null,
                    "remote_host": null, "remote_port": null
                }
            })
        );
        // Absent fields stay absent, except max_tokens and stream.
        let p = prefill_body(&obj(json!({"model": "m", "prompt": "x", "min_tokens": 0})));
        assert!(!p.contains_key("max_completion_tokens"));
        assert_eq!(p["min_tokens"], 0);
        assert_eq!((&p["max_tokens"], &p["stream"]), (&json!(1), &json!(false)));
    }

    #[test]
    fn decode_leg_is_the_original_plus_the_params_verbatim() {
        let answer = br#"{"id":"x","choices":[],"kv_transfer_params":{"do_remote_prefill":true,"remote_block_ids":[1,2],"remote_host":"10.0.0.1","remote_port":5600,"remote_engine_id":"e"}}"#;
        let params = transfer_params(answer).unwrap();
        let original = obj(json!({"model": "m", "prompt": "x", "max_tokens": 9, "stream": true}));
        let d = Value::Object(decode_body(&original, params.clone()));
        assert_eq!(
            d,
            json!({"model": "m", "prompt": "x", "max_tokens": 9, "stream": true,
                   "kv_transfer_params": params})
        );
        assert_eq!(
            transfer_params(br#"{"choices":[]}"#),
            Err(PrefillAnswerError::NoTransferParams)
        );
        assert_eq!(transfer_params(b"<html>"), Err(PrefillAnswerError::NotJson));
    }
}
