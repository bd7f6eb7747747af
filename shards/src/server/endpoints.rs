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
    let starting;
    let (status, body): (u16, &[u8]) = match c.head.path() {
        b"/liveness" => (200, br#"{"status":"alive"}"#),
        b"/health" | b"/readiness" if ready => (200, br#"{"status":"ready"}"#),
        b"/health" | b"/readiness" => match shard.starting.borrow().as_deref() {
            Some(why) => {
                starting =
                    serde_json::json!({"status": "starting", "waiting_for": why}).to_string();
                (503, starting.as_bytes())
            }
            None => (503, br#"{"status":"no available workers"}"#),
        },
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
    if c.head.is_head() {
        // Same head, no body (RFC 9110 §9.3.2).
        let head_len = c.out.len() - body.len();
        c.out.truncate(head_len);
    }
    Some(status)
}
