//! What client connections cost the router while they wait: chat clients and agents
//! keep connections open between turns, by the thousands.

mod common;
use common::*;

/// The router's resident memory, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

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
    // The second request arrives with the first: the connection must not give its
    // buffer back while it still holds those bytes.
    let w = mock(&[]);
    let r = router(&[&w], &[]);
    let mut c = Conn::open(r.port);
    c.post(
        "/v1/chat/completions",
        &chat_body("first", 1, false).to_string(),
    );
    assert_eq!(c.read_response(false).status, 200);
    let one = |content: &str| {
        let body = chat_body(content, 1, false).to_string();
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let both = one("second") + &one("third");
    c.send(both.as_bytes());
    for _ in 0..2 {
        let resp = c.read_response(false);
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    c.send(b"GET /health HTTP/1.1\r\nhost: t\r\n\r\n");
    assert_eq!(c.read_response(false).status, 200);
}
