//! What the mock answers, path by path.

use super::kv;
use super::state::{Conn, Shared};
use futures_lite::future::or;
use futures_lite::AsyncWriteExt;
use serde_json::{json, Value};
use shards::codec::encode;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Answers one request; returns false when the connection must close.
pub async fn handle(shared: &Shared, c: &mut Conn) -> bool {
    let path = String::from_utf8_lossy(c.head.path()).into_owned();
    shared.count_path(&path);
    let method = c.head.method().to_vec();
    match (method.as_slice(), path.as_str()) {
        (b"GET", "/health") => reply(c, 200, "application/json", b"").await,
        (b"GET", "/v1/models") => {
            let body = json!({"object": "list", "data": [{
                "id": shared.cfg.model, "object": "model", "owned_by": "vllm",
                "created": now_secs(), "max_model_len": 32768
            }]});
            reply(c, 200, "application/json", body.to_string().as_bytes()).await
        }
        // vLLM's load (requests using the GPU) and its dev-mode prefix cache reset.
        // A Mooncake prefill instance's bootstrap server (on the same port here).
        (b"GET", "/query") => {
            let body = json!({"0": {"engine_id": format!("engine-{}", shared.name)}});
            reply(c, 200, "application/json", body.to_string().as_bytes()).await
        }
        (b"GET", "/load") => {
            let body = json!({"server_load": shared.running()});
            reply(c, 200, "application/json", body.to_string().as_bytes()).await
        }
        (b"POST", "/reset_prefix_cache") => {
            shared.cache.lock().unwrap().clear();
            if let Some(kv) = &shared.kv {
                kv.clear();
            }
            reply(c, 200, "application/json", b"").await
        }
        (b"GET", "/metrics") => {
            let text = metrics_text(shared);
            reply(c, 200, "text/plain; version=0.0.4", text.as_bytes()).await
        }
        (b"POST", "/tokenize") => {
            let v: Value = serde_json::from_slice(&c.body).unwrap_or(Value::Null);
            let body = kv::tokenize_answer(&v, shared.tokenizer.as_ref());
            reply(c, 200, "application/json", body.to_string().as_bytes()).await
        }
        (b"GET", "/get_server_info") if shared.kv.is_some() => {
            let body = kv::server_info(&shared.cfg, &shared.name);
            reply(c, 200, "application/json", body.to_string().as_bytes()).await
        }
        (b"GET", "/kv_event_sources") if shared.kv.is_some() => {
            let body = kv::event_sources(&shared.cfg).unwrap_or_default();
            reply(c, 200, "application/json", body.to_string().as_bytes()).await
        }
        (b"GET", "/mock/stats") => {
            let body = json!({
                "name": shared.name,
                "running": shared.running(),
                "generation_requests": shared.generation_requests.load(Ordering::Relaxed),
                "cancelled": shared.cancelled.load(Ordering::Relaxed),
                "by_path": *shared.by_path.lock().unwrap(),
            });
            reply(c, 200, "application/json", body.to_string().as_bytes()).await
        }
        (b"GET", "/mock/requests") => {
            let list: Vec<Value> = shared.recent.lock().unwrap().iter().cloned().collect();
            reply(
                c,
                200,
                "application/json",
                Value::Array(list).to_string().as_bytes(),
            )
            .await
        }
        (_, "/mock/echo") => {
            let body = json!({
                "worker": shared.name,
                "method": String::from_utf8_lossy(&method),
                "target": String::from_utf8_lossy(c.head.target()),
                "headers": headers_json(c),
                "body_len": c.body.len(),
                "body_xxh64": format!("{:016x}", xxhash_rust::xxh64::xxh64(&c.body, 0)),
            });
            reply(c, 200, "application/json", body.to_string().as_bytes()).await
        }
        (b"POST", "/v1/chat/completions") | (b"POST", "/v1/completions") => {
            generate(shared, c, path == "/v1/chat/completions").await
        }
        _ => {
            let body = json!({"error": {"message": format!("no route {path}"), "type": "not_found", "code": 404}});
            reply(c, 404, "application/json", body.to_string().as_bytes()).await
        }
    }
}

fn headers_json(c: &Conn) -> Value {
    let mut map = serde_json::Map::new();
    for (n, v) in c.head.headers() {
        map.insert(
            String::from_utf8_lossy(n).to_ascii_lowercase(),
            Value::String(String::from_utf8_lossy(v).into_owned()),
        );
    }
    Value::Object(map)
}

fn header_u64(c: &Conn, name: &[u8]) -> Option<u64> {
    c.head
        .header(name)
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|s| s.trim().parse().ok())
}

async fn generate(shared: &Shared, c: &mut Conn, chat: bool) -> bool {
    let n = shared.generation_requests.fetch_add(1, Ordering::Relaxed) + 1;
    let cfg = &shared.cfg;
    let v: Value = match serde_json::from_slice(&c.body) {
        Ok(v) => v,
        Err(e) => return error(c, 400, &format!("invalid JSON: {e}")).await,
    };
    shared.remember(json!({
        "path": String::from_utf8_lossy(c.head.path()),
        "headers": headers_json(c),
        "body": v.clone(),
    }));
    let slow = header_u64(c, b"x-mock-slow-headers-ms").unwrap_or(cfg.slow_headers_ms);
    if slow > 0 && !pause(c, Duration::from_millis(slow)).await {
        // The client left before the head: vLLM would abort the request.
        shared.cancelled.fetch_add(1, Ordering::Relaxed);
        return false;
    }
    let forced = header_u64(c, b"x-mock-status")
        .map(|s| s as u16)
        .or_else(|| {
            if cfg.fail_first > 0 {
                (n <= cfg.fail_first).then(|| cfg.fail_status.unwrap_or(503))
            } else {
                cfg.fail_status
            }
        });
    if let Some(status) = forced {
        return error(c, status, "injected failure").await;
    }

    let text = kv::rendered_text(&v);
    let (blocks, hit_blocks) = match &shared.kv {
        Some(kv) => kv.lookup(
            &kv::tokens_of(&v, shared.tokenizer.as_ref()),
            &kv::block_keys(&v, &shared.cfg),
        ),
        None => {
            // vLLM hashes a cache_salt into the first block: salted text is other blocks.
            let salt = v.get("cache_salt").and_then(Value::as_str).unwrap_or("");
            let keyed = format!("{salt}\u{1}{text}");
            let keyed = if salt.is_empty() { &text } else { &keyed };
            let l = (shared.cache.lock().unwrap()).lookup_insert(keyed.as_bytes(), cfg.block_chars);
            (l.blocks, l.hit_blocks)
        }
    };
    let prefill_us = cfg.ttft_us + (blocks - hit_blocks) * cfg.prefill_us_per_block;
    let prompt_tokens = (text.len() / 4) as u64;
    let id = format!(
        "{}-mock-{}-{n}",
        if chat { "chatcmpl" } else { "cmpl" },
        shared.name
    );
    let model = v
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or(&cfg.model)
        .to_string();

    let remote_decode = v
        .pointer("/kv_transfer_params/do_remote_decode")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let max_tokens = v
        .get("max_tokens")
        .or_else(|| v.get("max_completion_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(u64::from(cfg.tokens))
        .min(1_000_000);
    let tokens = if remote_decode { 1 } else { max_tokens };
    let delay = Duration::from_micros(
        header_u64(c, b"x-mock-token-delay-us").unwrap_or(cfg.token_delay_us),
    );
    let stream = v.get("stream").and_then(Value::as_bool).unwrap_or(false) && !remote_decode;
    // Bytes of text per token (default "tok "): large tokens make big streams cheap.
    let token_bytes = header_u64(c, b"x-mock-token-bytes")
        .unwrap_or(4)
        .clamp(1, 1 << 20) as usize;
    let token: String = "tok ".chars().cycle().take(token_bytes).collect();

    shared.running.fetch_add(1, Ordering::Relaxed);
    let finished = if stream {
        let include_usage = v
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let shape = StreamShape {
            chat,
            id: &id,
            model: &model,
            token: &token,
            tokens,
            prompt_tokens,
            include_usage,
            timestamps: c.head.header(b"x-mock-timestamps").is_some(),
        };
        stream_tokens(shared, c, &shape, prefill_us, delay).await
    } else {
        let total = Duration::from_micros(prefill_us) + delay * tokens as u32;
        let alive = pause(c, total).await;
        if alive {
            let content = token.repeat(tokens as usize);
            let mut body = if chat {
                json!({"id": id, "object": "chat.completion", "created": now_secs(), "model": model,
                    "system_fingerprint": format!("mock-{}", shared.name),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                 "logprobs": null, "finish_reason": "length"}],
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": tokens,
                              "total_tokens": prompt_tokens + tokens}})
            } else {
                json!({"id": id, "object": "text_completion", "created": now_secs(), "model": model,
                    "choices": [{"index": 0, "text": content, "logprobs": null, "finish_reason": "length"}],
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": tokens,
                              "total_tokens": prompt_tokens + tokens}})
            };
            if remote_decode {
                body["kv_transfer_params"] = json!({
                    "do_remote_prefill": true, "do_remote_decode": false,
                    "remote_engine_id": format!("engine-{}", shared.name),
                    "remote_block_ids": (0..blocks.max(1)).collect::<Vec<u64>>(),
                    "remote_host": cfg.host, "remote_port": cfg.port,
                    "tp_size": 1,
                });
            }
            let drop_now = cfg.drop_after_tokens.is_some();
            let bytes = body.to_string();
            if drop_now {
                // Fault: announce the whole body, send half, close.
                c.out.clear();
                encode::status_line(&mut c.out, 1, 200, b"OK");
                encode::header(&mut c.out, b"content-type", b"application/json");
                encode::content_length(&mut c.out, bytes.len() as u64);
                encode::end_head(&mut c.out);
                c.out
                    .extend_from_slice(&bytes.as_bytes()[..bytes.len() / 2]);
                let _ = c.stream.write_all(&c.out).await;
                false
            } else {
                reply(c, 200, "application/json", bytes.as_bytes()).await
            }
        } else {
            false
        }
    };
    shared.running.fetch_sub(1, Ordering::Relaxed);
    if finished {
        shared.completed.fetch_add(1, Ordering::Relaxed);
    } else {
        shared.cancelled.fetch_add(1, Ordering::Relaxed);
    }
    finished
}

/// What a stream carries.
struct StreamShape<'a> {
    chat: bool,
    id: &'a str,
    model: &'a str,
    token: &'a str,
    tokens: u64,
    prompt_tokens: u64,
    include_usage: bool,
    /// Stamp each event with `mock_sent_us` (wall clock, microseconds) so a client on
    /// the same host can time each event's delivery (`x-mock-timestamps` header).
    timestamps: bool,
}

/// Streams `tokens` SSE events. Returns false if the client left (or a fault dropped
/// the connection).
async fn stream_tokens(
    shared: &Shared,
    c: &mut Conn,
    shape: &StreamShape<'_>,
    prefill_us: u64,
    delay: Duration,
) -> bool {
    let StreamShape {
        chat,
        id,
        model,
        token,
        tokens,
        prompt_tokens,
        include_usage,
        timestamps,
    } = *shape;
    c.out.clear();
    encode::status_line(&mut c.out, 1, 200, b"OK");
    encode::header(
        &mut c.out,
        b"content-type",
        b"text/event-stream; charset=utf-8",
    );
    encode::header(&mut c.out, b"cache-control", b"no-cache");
    encode::header(&mut c.out, b"transfer-encoding", b"chunked");
    encode::header(&mut c.out, b"x-mock-worker", shared.name.as_bytes());
    encode::end_head(&mut c.out);
    if c.stream.write_all(&c.out).await.is_err() {
        return false;
    }
    if !pause(c, Duration::from_micros(prefill_us)).await {
        return false;
    }
    let created = now_secs();
    for i in 0..tokens {
        if i > 0 && !pause(c, delay).await {
            return false;
        }
        if shared.cfg.drop_after_tokens == Some(i as u32) {
            return false;
        }
        let last = i + 1 == tokens;
        let finish = if last { json!("length") } else { Value::Null };
        let mut event = if chat {
            json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model,
                   "choices": [{"index": 0, "delta": {"content": token}, "logprobs": null, "finish_reason": finish}]})
        } else {
            json!({"id": id, "object": "text_completion", "created": created, "model": model,
                   "choices": [{"index": 0, "text": token, "logprobs": null, "finish_reason": finish}]})
        };
        if timestamps {
            let us = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64);
            event["mock_sent_us"] = json!(us);
        }
        if !send_event(c, &event.to_string()).await {
            return false;
        }
    }
    if include_usage {
        let usage = json!({"id": id, "object": if chat { "chat.completion.chunk" } else { "text_completion" },
            "created": created, "model": model, "choices": [],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": tokens, "total_tokens": prompt_tokens + tokens}});
        if !send_event(c, &usage.to_string()).await {
            return false;
        }
    }
    if !send_event(c, "[DONE]").await {
        return false;
    }
    c.stream.write_all(encode::LAST_CHUNK).await.is_ok()
}

async fn send_event(c: &mut Conn, data: &str) -> bool {
    c.out.clear();
    let mut event = Vec::with_capacity(data.len() + 8);
    event.extend_from_slice(b"data: ");
    event.extend_from_slice(data.as_bytes());
    event.extend_from_slice(b"\n\n");
    encode::chunk(&mut c.out, &event);
    c.stream.write_all(&c.out).await.is_ok()
}

/// Sleeps, noticing a client that closes meanwhile (as vLLM notices a disconnect).
async fn pause(c: &mut Conn, d: Duration) -> bool {
    if d.is_zero() {
        return true;
    }
    let sleep = async {
        glommio::timer::sleep(d).await;
        true
    };
    let watch = async {
        loop {
            match c.rbuf.read_from(&mut c.stream, 1 << 20).await {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            }
        }
    };
    or(sleep, watch).await
}

async fn error(c: &mut Conn, status: u16, message: &str) -> bool {
    let body = json!({"error": {"message": message, "type": "mock_error", "code": status}, "object": "error"});
    reply(c, status, "application/json", body.to_string().as_bytes()).await
}

/// Writes a whole answer. With the request header `x-mock-close-delimited` the body
/// has no length and ends with the connection, as an HTTP/1.0 server would do.
async fn reply(c: &mut Conn, status: u16, content_type: &str, body: &[u8]) -> bool {
    let close_delimited = c.head.header(b"x-mock-close-delimited").is_some();
    c.out.clear();
    encode::status_line(&mut c.out, 1, status, b"");
    encode::header(&mut c.out, b"content-type", content_type.as_bytes());
    encode::header(&mut c.out, b"x-mock-worker", c.worker.as_bytes());
    if close_delimited {
        encode::header(&mut c.out, b"connection", b"close");
    } else {
        encode::content_length(&mut c.out, body.len() as u64);
    }
    encode::end_head(&mut c.out);
    if !c.head.is_head() {
        c.out.extend_from_slice(body);
    }
    c.stream.write_all(&c.out).await.is_ok() && !close_delimited
}

fn metrics_text(shared: &Shared) -> String {
    let (usage, queries, hits) = match &shared.kv {
        Some(kv) => kv.counters(),
        None => {
            let c = shared.cache.lock().unwrap();
            (c.usage(), c.queries_tokens, c.hits_tokens)
        }
    };
    let m = &shared.cfg.model;
    format!(
        "# HELP vllm:num_requests_running Number of requests in model execution batches.\n\
         # TYPE vllm:num_requests_running gauge\n\
         vllm:num_requests_running{{model_name=\"{m}\"}} {}\n\
         # HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n\
         # TYPE vllm:num_requests_waiting gauge\n\
         vllm:num_requests_waiting{{model_name=\"{m}\"}} 0\n\
         # HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n\
         # TYPE vllm:kv_cache_usage_perc gauge\n\
         vllm:kv_cache_usage_perc{{model_name=\"{m}\"}} {:.4}\n\
         # HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.\n\
         # TYPE vllm:prefix_cache_queries_total counter\n\
         vllm:prefix_cache_queries_total{{model_name=\"{m}\"}} {}\n\
         # HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of number of cached tokens.\n\
         # TYPE vllm:prefix_cache_hits_total counter\n\
         vllm:prefix_cache_hits_total{{model_name=\"{m}\"}} {}\n\
         # HELP vllm:request_success_total Count of successfully processed requests.\n\
         # TYPE vllm:request_success_total counter\n\
         vllm:request_success_total{{finished_reason=\"length\",model_name=\"{m}\"}} {}\n\
         vllm:request_success_total{{finished_reason=\"abort\",model_name=\"{m}\"}} {}\n",
        shared.running(),
        usage,
        queries,
        hits,
        shared.completed.load(Ordering::Relaxed),
        shared.cancelled.load(Ordering::Relaxed),
    )
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
