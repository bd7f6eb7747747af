//! The mock's KV-event mode (`--kv-events-port`): a token-block cache that publishes
//! what it stores and evicts, the tokenizer it uses (one token per byte of the
//! rendered text, which `/tokenize` answers too), and the discovery routes a router
//! asks a vLLM worker for its event sources (`/get_server_info`, `/kv_event_sources`).

use super::kv_cache::{BlockKeys, TokenBlockCache};
use super::kv_publisher::{self, KvPublisher, PublisherConfig};
use super::MockConfig;
use serde_json::{json, Value};
use shards::chat_tokens::ChatTokenizer;
use std::sync::Mutex;

/// The cache and its publisher.
pub struct KvState {
    pub cache: Mutex<TokenBlockCache>,
    publisher: KvPublisher,
}

impl KvState {
    /// Starts the publisher when the flags ask for events.
    pub fn start(cfg: &MockConfig, name: &str) -> std::io::Result<Option<KvState>> {
        let Some(port) = cfg.kv_events_port else {
            return Ok(None);
        };
        let publisher = kv_publisher::start(PublisherConfig {
            host: cfg.host.clone(),
            port,
            replay_port: cfg.kv_events_replay_port,
            block_size: cfg.kv_block_size,
            positional_events: cfg.kv_events_encoding == "positional",
            positional_batch: cfg.kv_events_encoding != "map",
            skip_every: cfg.kv_events_skip_every,
        })?;
        // Engine hashes differ per worker, as with vLLM's random hash seed.
        let seed = xxhash_rust::xxh3::xxh3_64(name.as_bytes());
        Ok(Some(KvState {
            cache: Mutex::new(TokenBlockCache::new(
                cfg.kv_block_size,
                cfg.cache_blocks,
                seed,
            )),
            publisher,
        }))
    }

    /// Looks up and caches a request's tokens (under its `cache_salt` and LoRA
    /// adapter); returns (blocks, hit blocks).
    pub fn lookup(&self, tokens: &[u32], keys: &BlockKeys<'_>) -> (u64, u64) {
        let mut events = Vec::new();
        let l = self
            .cache
            .lock()
            .unwrap()
            .lookup_insert(tokens, keys, &mut events);
        self.publisher.publish(events);
        (l.blocks, l.hit_blocks)
    }

    /// `/reset_prefix_cache`.
    pub fn clear(&self) {
        let mut events = Vec::new();
        self.cache.lock().unwrap().clear(&mut events);
        self.publisher.publish(events);
    }

    /// (usage, queried tokens, hit tokens) for `/metrics`.
    pub fn counters(&self) -> (f64, u64, u64) {
        let c = self.cache.lock().unwrap();
        (c.usage(), c.queries_tokens, c.hits_tokens)
    }
}

/// What a request's blocks are hashed under besides their tokens: its `cache_salt`,
/// and the LoRA adapter its `model` names (ids from 1, in `--lora-adapters` order).
pub fn block_keys<'a>(v: &'a Value, cfg: &'a MockConfig) -> BlockKeys<'a> {
    let model = v.get("model").and_then(Value::as_str);
    BlockKeys {
        salt: v.get("cache_salt").and_then(Value::as_str),
        adapter: model.and_then(|m| {
            let i = cfg.lora_adapters.iter().position(|a| a == m)?;
            Some((i as u32 + 1, cfg.lora_adapters[i].as_str()))
        }),
    }
}

/// The text a chat template would render: every message as `role: content\n`, or the
/// prompt.
pub fn rendered_text(v: &Value) -> String {
    if let Some(msgs) = v.get("messages").and_then(Value::as_array) {
        let mut s = String::new();
        for m in msgs {
            s.push_str(m.get("role").and_then(Value::as_str).unwrap_or(""));
            s.push_str(": ");
            match m.get("content") {
                Some(Value::String(t)) => s.push_str(t),
                Some(other) => s.push_str(&other.to_string()),
                None => {}
            }
            s.push('\n');
        }
        s
    } else {
        match v.get("prompt") {
            Some(Value::String(p)) => p.clone(),
            Some(other) => other.to_string(),
            None => String::new(),
        }
    }
}

/// A request's prompt tokens: its token ids when the prompt is a list of them, else
/// the model's tokens of the text vLLM would render (`--tokenizer-path`; empty when
/// that fails), else one token per byte of the rendered text.
pub fn tokens_of(v: &Value, tokenizer: Option<&ChatTokenizer>) -> Vec<u32> {
    if let Some(ids) = v.get("prompt").and_then(Value::as_array) {
        let ids: Option<Vec<u32>> = ids
            .iter()
            .map(|t| t.as_u64().and_then(|t| u32::try_from(t).ok()))
            .collect();
        if let Some(ids) = ids {
            return ids;
        }
    }
    if let Some(t) = tokenizer {
        let whole = t
            .prompt(v)
            .and_then(|(text, special)| t.whole(&text, special));
        return whole.unwrap_or_default();
    }
    rendered_text(v).bytes().map(u32::from).collect()
}

/// `POST /tokenize`, vLLM's answer shape.
pub fn tokenize_answer(v: &Value, tokenizer: Option<&ChatTokenizer>) -> Value {
    let tokens = tokens_of(v, tokenizer);
    json!({"count": tokens.len(), "max_model_len": 32768, "tokens": tokens})
}

/// `GET /get_server_info`: what a router reads to name the worker's cache.
pub fn server_info(cfg: &MockConfig, name: &str) -> Value {
    json!({"model_id": cfg.model, "instance_id": name, "kv_block_size": cfg.kv_block_size})
}

/// `GET /kv_event_sources`: current vLLM's list form, one entry per DP rank, with
/// the bind-style host vLLM reports.
pub fn event_sources(cfg: &MockConfig) -> Option<Value> {
    let port = cfg.kv_events_port?;
    let mut source = json!({
        "enable_kv_cache_events": true, "publisher": "zmq", "encoding": "msgpack",
        "schema_version": 1, "endpoint": format!("tcp://*:{port}"), "topic": "",
        "data_parallel_rank": 0,
    });
    if let Some(r) = cfg.kv_events_replay_port {
        source["replay_endpoint"] = json!(format!("tcp://*:{r}"));
    }
    if cfg.kv_event_sources_form == "object" {
        return Some(json!({"0": source}));
    }
    Some(json!([source]))
}

#[cfg(test)]
mod tests {
    use super::super::kv_cache::CacheEvent;
    use super::*;

    #[test]
    fn tokens_are_ids_or_bytes_of_the_rendered_text() {
        assert_eq!(tokens_of(&json!({"prompt": [5, 6]}), None), vec![5, 6]);
        assert_eq!(tokens_of(&json!({"prompt": "ab"}), None), vec![97, 98]);
        let chat = json!({"messages": [{"role": "user", "content": "hi"}]});
        assert_eq!(
            tokens_of(&chat, None),
            "user: hi\n".bytes().map(u32::from).collect::<Vec<_>>()
        );
        assert_eq!(tokenize_answer(&chat, None)["count"], 9);
    }

    #[test]
    fn cleared_is_an_event() {
        let mut c = TokenBlockCache::new(2, 4, 1);
        let mut ev = Vec::new();
        c.clear(&mut ev);
        assert_eq!(ev, vec![CacheEvent::Cleared]);
    }
}
