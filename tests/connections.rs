//! What client connections cost the router while they wait: chat clients and agents
//! keep connections open between turns, by the thousands.

mod common;
use common::*;
use std::time::{Duration, Instant};

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

/// Polls the router's gauge of dormant connections (sampled once a second) until it
/// reads `want`.
fn wait_dormant(r: &Router, want: f64) {
    let name = "vllm_router_idle_client_connections";
    wait_metric_within(Duration::from_secs(10), r, name, &[], want);
}

#[test]
fn connections_idle_past_a_second_leave_their_tasks_and_wake_for_the_next_request() {
    const CONNECTIONS: usize = 12;
    let w = mock(&[]);
    let r = router(&[&w], &[]);
    let chat = |tag: &str, tokens: u32| {
        let body = chat_body(tag, tokens, false).to_string();
        post_bytes("/v1/chat/completions", &[], &body)
    };
    let mut conns: Vec<Conn> = (0..CONNECTIONS).map(|_| Conn::open(r.port)).collect();
    for c in &mut conns {
        c.send(&chat("first", 1));
        assert_eq!(c.read_response(false).status, 200);
    }
    wait_dormant(&r, CONNECTIONS as f64);
    // Each wakes with its request; the last two send two pipelined requests at once.
    for (i, c) in conns.iter_mut().enumerate() {
        let pipelined = i >= CONNECTIONS - 2;
        if pipelined {
            c.send(&[chat("again", 2), chat("again", 3)].concat());
        } else {
            c.send(&chat("again", 2));
        }
        let resp = c.read_response(false);
        assert_eq!(resp.status, 200, "connection {i}: {}", resp.text());
        assert_eq!(resp.json()["usage"]["completion_tokens"], 2);
        if pipelined {
            assert_eq!(
                c.read_response(false).json()["usage"]["completion_tokens"],
                3
            );
        }
    }
    // Asleep again; a client that hangs up while its connection sleeps is closed.
    wait_dormant(&r, CONNECTIONS as f64);
    let mut leaving = conns.pop().unwrap();
    leaving.stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(leaving.is_closed());
    wait_dormant(&r, (CONNECTIONS - 1) as f64);
    // The rest still carry requests, streamed ones too.
    let body = chat_body("stream", 3, true).to_string();
    conns[0].post("/v1/chat/completions", &body);
    conns[0].read_until(b"data: [DONE]");
}

#[test]
fn a_dormant_connection_is_closed_at_the_keepalive_timeout() {
    let w = mock(&[]);
    let r = router(&[&w], &["--keepalive-timeout-secs", "3"]);
    let mut c = Conn::open(r.port);
    c.post(
        "/v1/chat/completions",
        &chat_body("x", 1, false).to_string(),
    );
    assert_eq!(c.read_response(false).status, 200);
    let answered = Instant::now();
    wait_dormant(&r, 1.0);
    assert!(c.is_closed());
    let took = answered.elapsed();
    // Counted from the end of the answer, across dormancy; closed by a sweep that
    // runs once a second.
    assert!(
        took >= Duration::from_millis(2900) && took < Duration::from_secs(6),
        "{took:?}"
    );
    wait_dormant(&r, 0.0);
}

#[test]
fn sigterm_closes_dormant_connections_and_exits() {
    let w = mock(&[]);
    let mut r = router(&[&w], &[]);
    let mut conns: Vec<Conn> = (0..3).map(|_| Conn::open(r.port)).collect();
    for c in &mut conns {
        c.post(
            "/v1/chat/completions",
            &chat_body("x", 1, false).to_string(),
        );
        assert_eq!(c.read_response(false).status, 200);
    }
    wait_dormant(&r, 3.0);
    r.signal("TERM");
    for c in &mut conns {
        assert!(c.is_closed());
    }
    let status = r.child.wait().unwrap();
    assert!(status.success(), "router exited with {status}");
}
