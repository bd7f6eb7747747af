//! A request's prompt tokens for kv_aware: from the model's tokenizer on the shard
//! when `--tokenizer-path` gave one (`chat_tokens`), else asked of one worker: vLLM's
//! `/tokenize`
//! renders a chat with the model's own template and tokenizer, so the tokens are what
//! the worker will see and hash into KV blocks. One call per request to one worker (the
//! published router asks every candidate), cached per shard by the request's content,
//! so a retried or repeated request costs nothing. The call is an ordinary exchange on
//! the shard's upstream pool: it never blocks the shard.

use super::buffered::{exchange_buffered, Buffered};
use crate::client::Client;
use crate::codec::request::RequestHead;
use crate::codec::Status;
use crate::deadline::Deadline;
use crate::shard::Shard;
use crate::worker::{WorkerId, WorkerRole};
use serde_json::Value;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Instant;
use xxhash_rust::xxh3::xxh3_64;

/// The head of the call (the body's length is added when it is sent).
const TOKENIZE_PATH_HEAD: &[u8] =
    b"POST /tokenize HTTP/1.1\r\ncontent-type: application/json\r\n\r\n";

/// The `/tokenize` body's fields for a chat or completion request, as 0.1.17 sends
/// them, borrowed from the request (serialized once: the call's body and the cache's
/// key); None when there is nothing to tokenize.
pub fn tokenize_body(body: &Value) -> Option<BTreeMap<&'static str, &Value>> {
    static NULL: Value = Value::Null;
    static FALSE: Value = Value::Bool(false);
    let mut m = BTreeMap::new();
    m.insert("model", body.get("model").unwrap_or(&NULL));
    if let Some(messages) = body.get("messages") {
        m.insert("messages", messages);
        m.insert("continue_final_message", &FALSE);
        if let Some(kw) = body.get("chat_template_kwargs") {
            m.insert("chat_template_kwargs", kw);
        }
        return Some(m);
    }
    m.insert("prompt", body.get("prompt")?);
    Some(m)
}

/// The prompt tokens in a `/tokenize` answer.
pub fn parse_answer(answer: &[u8]) -> Option<Vec<u32>> {
    let v: Value = serde_json::from_slice(answer).ok()?;
    v.get("tokens")?
        .as_array()?
        .iter()
        .map(|t| t.as_u64().and_then(|t| u32::try_from(t).ok()))
        .collect()
}

/// The request's tokens: from the shard's cache, or asked of the least loaded worker
/// of `role`. None when no worker could say (the request then goes by load).
pub async fn tokens(
    shard: &Shard,
    c: &mut Client,
    body: &Value,
    role: WorkerRole,
    deadline: &mut Deadline<'_>,
) -> Option<Rc<[u32]>> {
    if let Some(t) = &shard.chat_tokenizer {
        // The model's own tokenizer, here: no worker is asked.
        let started = Instant::now();
        if let Some(tokens) = t.borrow_mut().tokens(body) {
            shard
                .metrics
                .borrow_mut()
                .observe_prepare(0, started.elapsed());
            return Some(tokens);
        }
    }
    let request = tokenize_body(body)?;
    let bytes = serde_json::to_vec(&request).ok()?;
    let key = xxh3_64(&bytes);
    let cached = shard.tokens.borrow_mut().get(key);
    if let Some(t) = cached {
        shard.tokens.borrow_mut().counts[1] += 1;
        return Some(t);
    }
    let worker = least_loaded(shard, role)?;
    let started = Instant::now();
    let answer = ask(shard, c, worker, &bytes, deadline).await;
    shard
        .metrics
        .borrow_mut()
        .observe_prepare(1, started.elapsed());
    let mut cache = shard.tokens.borrow_mut();
    match answer.and_then(|a| parse_answer(&a)) {
        Some(t) => {
            cache.counts[0] += 1;
            let t: Rc<[u32]> = t.into();
            cache.put(key, t.clone());
            Some(t)
        }
        None => {
            cache.counts[2] += 1;
            None
        }
    }
}

fn least_loaded(shard: &Shard, role: WorkerRole) -> Option<WorkerId> {
    let workers = shard.workers.borrow();
    let view = workers.view(role, &[]);
    let w = view.routable().min_by_key(|w| w.load())?;
    Some(w.spec.id)
}

/// One `POST /tokenize` to `worker`; the client's own head is set aside meanwhile.
async fn ask(
    shard: &Shard,
    c: &mut Client,
    worker: WorkerId,
    bytes: &[u8],
    deadline: &mut Deadline<'_>,
) -> Option<Vec<u8>> {
    let mut head = RequestHead::default();
    match head.parse(TOKENIZE_PATH_HEAD) {
        Ok(Status::Complete(_)) => {}
        _ => return None,
    }
    let client_head = std::mem::replace(&mut c.head, head);
    let answer = exchange_buffered(shard, c, worker, bytes, deadline).await;
    c.head = client_head;
    match answer {
        Buffered::Answer { status: 200, body } => Some(body),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn chat_and_completion_bodies() {
        let chat = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                          "temperature": 0.2});
        let as_value = |b: &Value| serde_json::to_value(tokenize_body(b)).unwrap();
        assert_eq!(
            as_value(&chat),
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                   "continue_final_message": false})
        );
        let completion = json!({"model": "m", "prompt": "once", "max_tokens": 3});
        assert_eq!(
            as_value(&completion),
            json!({"model": "m", "prompt": "once"})
        );
        assert!(tokenize_body(&json!({"model": "m"})).is_none());
        assert_eq!(
            parse_answer(br#"{"count":2,"tokens":[5,6]}"#),
            Some(vec![5, 6])
        );
        assert_eq!(parse_answer(br#"{"tokens":[-1]}"#), None);
    }
}
