//! Helpers for the kv_aware tests: mocks that publish KV events, the router's
//! kv_aware metrics, and priming a worker's cache behind the router's back.

use super::*;
use serde_json::json;
use std::time::Duration;

/// A mock publishing KV events (discovered by the router from `/kv_event_sources`).
pub fn kv_mock(name: &str, extra: &[&str]) -> Proc {
    let port = free_low_port().to_string();
    let mut args = vec!["--name", name, "--kv-events-port", &port];
    args.extend_from_slice(extra);
    mock(&args)
}

/// A completion whose prompt is token ids `from..from + n`.
pub fn prompt(from: u32, n: u32) -> serde_json::Value {
    json!({"model": "m", "max_tokens": 1, "prompt": (from..from + n).collect::<Vec<u32>>()})
}

pub fn served_by(port: u16, body: &serde_json::Value) -> String {
    let r = post_json(port, "/v1/completions", body);
    assert_eq!(r.status, 200, "{}", r.text());
    r.header("x-mock-worker").unwrap().to_string()
}

/// A sample of the router's metrics (0 while it is not exposed yet).
pub fn sample(r: &Router, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(&r.metrics(), name, labels).unwrap_or(0.0)
}

pub fn blocks_of(r: &Router, w: &Proc) -> f64 {
    sample(r, "vllm_router_kv_index_blocks", &[("worker", &w.url())])
}

/// kv_aware lookups with this result (`hit`, `miss`, `missing_tokens`).
pub fn lookups(r: &Router, result: &str) -> f64 {
    sample(
        r,
        "vllm_router_kv_placement_lookups_total",
        &[("result", result)],
    )
}

/// kv_aware decisions in `stage` with `outcome`.
pub fn decisions(r: &Router, stage: &str, outcome: &str) -> f64 {
    let labels = [
        ("policy", "kv_aware"),
        ("stage", stage),
        ("outcome", outcome),
    ];
    sample(r, "vllm_router_prefix_routing_decisions_total", &labels)
}

/// Waits until the router has subscribed to `n` publishers.
pub fn wait_subscribed(r: &mut Router, workers: &[&Proc]) {
    for w in workers {
        let p = &mut r.proc;
        let needle = format!("for {} (rank 0)", w.url());
        p.log
            .as_ref()
            .unwrap()
            .wait_for(&needle, &mut p.child, "router");
    }
}

/// Sends `body` straight to worker `w` until the router's index shows `blocks` of its
/// blocks (a SUB socket may miss what is published while it joins); returns the body.
pub fn prime(r: &Router, w: &Proc, from: u32, blocks: f64) -> serde_json::Value {
    for attempt in 0..20 {
        let body = prompt(from + attempt * 10_000, 100);
        served_by(w.port, &body);
        if eventually(Duration::from_secs(2), || blocks_of(r, w) >= blocks) {
            return body;
        }
    }
    panic!(
        "the router never indexed {}'s blocks:\n{}",
        w.url(),
        r.metrics()
    );
}

/// Requests a mock answered on `path`.
pub fn answered(w: &Proc, path: &str) -> u64 {
    mock_stats(w)["by_path"][path].as_u64().unwrap_or(0)
}

/// Sends `chat` straight to `w` (another replica's traffic, say) until the router's
/// index shows `blocks` of its blocks.
pub fn prime_chat(r: &Router, w: &Proc, chat: &serde_json::Value, blocks: f64) {
    prime_with(r, w, "/v1/chat/completions", chat, blocks)
}

/// Sends `body` to `path` straight to `w` until the router's index shows `blocks` of
/// its blocks, clearing the worker's cache between tries (a store published while the
/// router's subscription joined is not published again).
pub fn prime_with(r: &Router, w: &Proc, path: &str, body: &serde_json::Value, blocks: f64) {
    for attempt in 0.. {
        assert!(attempt < 20, "never indexed:\n{}", r.metrics());
        assert_eq!(post_json(w.port, path, body).status, 200);
        if eventually(Duration::from_secs(2), || blocks_of(r, w) >= blocks) {
            return;
        }
        request(w.port, "POST", "/reset_prefix_cache", &[], b"");
    }
}

/// Sends `chat` `n` times through the router: each is served by `worker`.
pub fn chats_go_to(r: &Router, chat: &serde_json::Value, n: usize, worker: &str) {
    for _ in 0..n {
        let resp = post_json(r.port, "/v1/chat/completions", chat);
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.header("x-mock-worker"), Some(worker));
    }
}
