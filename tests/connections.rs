//! What client connections cost the router while they wait: chat clients and agents
//! keep connections open between turns, by the thousands.

mod common;
use common::*;

#[test]
fn idle_keep_alive_connections_hold_no_buffers() {
    // Each connection has sent one request and read its answer, then waits. Before
    // buffers were taken only while bytes are in flight, each cost 24 KiB (a 16 KiB
    // read buffer, 1 KiB of staging, a 14 KiB task); now about 1.5 KiB (release
    // build; a debug build's futures are larger).
    const CONNECTIONS: usize = 2000;
    const MAX_KIB_EACH: f64 = 6.0;
    let w = mock(&[]);
    let r = router(&[&w], &[]);
    let pid = r.proc.child.id();
    let body = chat_body("hello", 1, false).to_string();
    let mut warm = Conn::open(r.port);
    for _ in 0..50 {
        warm.post("/v1/chat/completions", &body);
        assert_eq!(warm.read_response(false).status, 200);
    }
    let before = rss_kib(pid);
    let mut idle = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let mut c = Conn::open(r.port);
        c.post("/v1/chat/completions", &body);
        assert_eq!(c.read_response(false).status, 200);
        idle.push(c);
    }
    let each = (rss_kib(pid) - before) as f64 / CONNECTIONS as f64;
    assert!(
        each < MAX_KIB_EACH,
        "{each:.1} KiB of RSS per idle connection"
    );
    // Every one of them still carries its next request.
    for c in idle.iter_mut().step_by(97) {
        c.post("/v1/chat/completions", &body);
        assert_eq!(c.read_response(false).status, 200);
    }
}

#[test]
fn pipelined_requests_are_answered_in_order_after_an_idle_wait() {
    // The connection parks after its first request; the next two arrive in one
    // write, so it must keep its buffer while it still holds the third's bytes.
    let w = mock(&[]);
    let r = router(&[&w], &[]);
    let mut c = Conn::open(r.port);
    c.post(
        "/v1/chat/completions",
        &chat_body("first", 1, false).to_string(),
    );
    assert_eq!(c.read_response(false).status, 200);
    let chat = |tokens: u32| {
        let body = chat_body("next", tokens, false).to_string();
        post_bytes("/v1/chat/completions", &[], &body)
    };
    c.send(&[chat(2), chat(3)].concat());
    for tokens in [2, 3] {
        let resp = c.read_response(false);
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.json()["usage"]["completion_tokens"], tokens);
    }
    c.send(b"GET /health HTTP/1.1\r\nhost: t\r\n\r\n");
    assert_eq!(c.read_response(false).status, 200);
}
