//! Endpoints the shard answers from its own state, without a worker or the control core.

use crate::client::Client;
use crate::errors::write_answer;
use crate::shard::Shard;

/// Answers `/health`, `/liveness` and `/readiness` when `path` is one of them.
/// Returns None for any other path, else the status written into `c.out`.
pub fn local_answer(shard: &Shard, c: &mut Client) -> Option<u16> {
    let method = c.head.method();
    if method != b"GET" && method != b"HEAD" {
        return None;
    }
    let ready = shard.ready();
    let body;
    let (status, body): (u16, &[u8]) = match c.head.path() {
        b"/liveness" => (200, br#"{"status":"alive"}"#),
        // --enable-igw: the union of what the workers serve, in OpenAI's list shape.
        b"/v1/models" if shard.config.igw => {
            let workers = shard.workers.borrow();
            let data: Vec<serde_json::Value> = workers
                .models(crate::worker::WorkerRole::Regular)
                .into_iter()
                .map(|id| serde_json::json!({"id": id, "object": "model", "owned_by": "vllm-router"}))
                .collect();
            body = serde_json::json!({"object": "list", "data": data}).to_string();
            (200, body.as_bytes())
        }
        b"/health" | b"/readiness" => {
            // 0.1.17's shape, with the start-up wait's reason while it lasts.
            let (healthy, total) = shard.workers.borrow().health_counts();
            let starting = shard.starting.borrow().clone();
            let status = match (&starting, ready) {
                (_, true) => "ready",
                (Some(_), false) => "starting",
                (None, false) => "no available workers",
            };
            let mut v = serde_json::json!({
                "status": status,
                "healthy_workers": healthy,
                "total_workers": total,
            });
            if let (Some(why), false) = (starting, ready) {
                v["waiting_for"] = serde_json::Value::from(&*why);
            }
            body = v.to_string();
            (if ready { 200 } else { 503 }, body.as_bytes())
        }
        _ => return None,
    };
    let close = !c.head.keep_alive || c.head.has_body() || shard.draining.get();
    write_answer(
        &mut c.out,
        c.head.minor_version,
        status,
        "application/json",
        body,
        close,
    );
    c.drop_content_for_head();
    Some(status)
}
