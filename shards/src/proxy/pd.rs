//! Routing mode 3: prefill/decode disaggregation for vLLM (NIXL connector).
//!
//! The flow (REFERENCE.md), of which this file holds the wire rules:
//! 1. the pipeline buffers and parses the JSON body (as in mode 2);
//! 2. the prefill leg gets `prefill_body`: one token, no stream, and
//!    `kv_transfer_params` asking for a remote decode; its whole answer is read;
//! 3. the decode leg gets `decode_body`: the original request plus the
//!    `kv_transfer_params` of the prefill answer, verbatim; its answer (JSON or SSE)
//!    is relayed like any other, with the same pool, deadline and cancellation.
//!
//! Both legs carry the same `pd_request_id` as `X-Request-Id`. The flow itself (worker
//! roles, the two legs and their retries) is not wired in yet: until it is, the CLI
//! refuses `--vllm-pd-disaggregation` with a "not supported yet" error.

use crate::policy::Random;
use serde_json::{json, Map, Value};

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

/// `___prefill_addr_{P}___decode_addr_{D}_{32 hex}`: vLLM's NIXL connector reads the
/// peers' addresses from the request id.
pub fn pd_request_id(prefill: &str, decode: &str, rng: &mut Random) -> String {
    format!(
        "___prefill_addr_{prefill}___decode_addr_{decode}_{:016x}{:016x}",
        rng.next_u64(),
        rng.next_u64()
    )
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

    #[test]
    fn request_id_names_both_peers() {
        let mut rng = Random::new(7);
        let id = pd_request_id("10.0.0.1:8000", "10.0.0.2:8000", &mut rng);
        let rest = id
            .strip_prefix("___prefill_addr_10.0.0.1:8000___decode_addr_10.0.0.2:8000_")
            .unwrap();
        assert_eq!(rest.len(), 32);
        assert!(rest.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(
            id,
            pd_request_id("10.0.0.1:8000", "10.0.0.2:8000", &mut rng)
        );
    }
}
