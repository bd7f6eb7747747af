//! Requests and workers that go wrong, seen from a client: each gets a clear
//! OpenAI-style error (or a closed connection where HTTP says so), and nothing else
//! is disturbed.

mod common;

use common::*;
use std::time::{Duration, Instant};

fn assert_openai_error(resp: &Response, status: u16) {
    assert_eq!(resp.status, status, "{}", resp.text());
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let v = resp.json();
    assert_eq!(v["error"]["code"], status);
    assert!(v["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    assert!(v["error"]["type"].is_string());
}

#[test]
fn no_worker_is_503() {
    let r = router(&[], &[]);
    let resp = post_json(r.port, "/v1/chat/completions", &chat_body("x", 1, false));
    assert_openai_error(&resp, 503);
}

#[test]
fn a_worker_that_dies_gives_502_then_leaves_rotation_at_once() {
    let w = mock_on(free_low_port(), &[]);
    let mut r = router(
        &[&w],
        &[
            "--health-check-interval-secs",
            "600",
            "--log-level",
            "debug",
        ],
    );
    let port = w.port;
    drop(w); // dies after start-up; the next health check is ten minutes away
             // An io_uring server's socket can outlive its process by a moment (the ring is
             // torn down asynchronously); wait until the port really refuses.
    assert!(eventually(Duration::from_secs(5), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
    }));
    let resp = post_json(r.port, "/v1/chat/completions", &chat_body("x", 1, false));
    assert_openai_error(&resp, 502);
    let first = resp.text();
    // The shard reported the refusal: the control core took the worker out.
    let out = eventually(Duration::from_secs(2), || {
        request(r.port, "GET", "/readiness", &[], b"").status == 503
    });
    assert!(out, "{first}\n{}", r.stop_and_log());
    let resp = post_json(r.port, "/v1/chat/completions", &chat_body("x", 1, false));
    assert_openai_error(&resp, 503);
}

#[test]
fn slow_worker_is_504_after_request_timeout() {
    let w = mock(&[]);
    let r = router(&[&w], &["--request-timeout-secs", "1"]);
    let start = Instant::now();
    let resp = chat(r.port, &[("x-mock-slow-headers-ms", "5000")]);
    assert_openai_error(&resp, 504);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[test]
fn body_too_large_is_413_and_nothing_goes_upstream() {
    let w = mock(&[]);
    let r = router(&[&w], &["--max-payload-size", "1000"]);
    let big = vec![b'a'; 2000];
    let resp = request(r.port, "POST", "/v1/completions", &[], &big);
    assert_openai_error(&resp, 413);
    // Chunked: the limit applies to the decoded size.
    let mut c = Conn::open(r.port);
    let mut raw =
        b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        raw.extend_from_slice(b"258\r\n");
        raw.extend_from_slice(&[b'b'; 600]);
        raw.extend_from_slice(b"\r\n");
    }
    c.send(&raw);
    assert_openai_error(&c.read_response(false), 413);
    assert_eq!(mock_stats(&w)["generation_requests"], 0);
}

#[test]
fn oversized_heads_and_uris() {
    let w = mock(&[]);
    let r = router(&[&w], &[]);
    let big = "a".repeat(70 * 1024);
    let resp = request(r.port, "GET", "/v1/models", &[("x-big", &big)], b"");
    assert_openai_error(&resp, 431);
    let long = format!("/{}", "u".repeat(9000));
    let resp = request(r.port, "GET", &long, &[], b"");
    assert_openai_error(&resp, 414);
}

#[test]
fn malformed_and_ambiguous_requests_are_400_and_closed() {
    let w = mock(&[]);
    let r = router(&[&w], &[]);
    let cases: &[&[u8]] = &[
        b"GARBAGE\r\n\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n",
        b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\n\r\n",
        b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello",
        b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip\r\n\r\n",
        b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
    ];
    for raw in cases {
        let mut c = Conn::open(r.port);
        c.send(raw);
        let resp = c.read_response(false);
        assert_openai_error(&resp, 400);
        assert!(
            c.is_closed(),
            "connection left open after {:?}",
            String::from_utf8_lossy(raw)
        );
    }
    assert_eq!(mock_stats(&w)["generation_requests"], 0);
}

#[test]
fn garbage_on_one_connection_does_not_disturb_others() {
    let w = mock(&["--token-delay-us", "50000"]);
    let r = router(&[&w], &["--shards", "1"]);
    let mut stream = Conn::open(r.port);
    let body = chat_body("s", 10, true).to_string();
    stream.post("/v1/chat/completions", &body);
    stream.read_until(b"data: {");
    for i in 0..50u8 {
        let mut bad = Conn::open(r.port);
        let junk: Vec<u8> = (0..200u16)
            .map(|j| (j as u8).wrapping_mul(31).wrapping_add(i))
            .collect();
        let _ = std::io::Write::write_all(&mut bad.stream, &junk);
        let _ = std::io::Write::write_all(&mut bad.stream, b"\r\n\r\n");
    }
    let done = stream.read_until(b"data: [DONE]");
    assert!(done.elapsed() < Duration::from_secs(1));
    assert_eq!(request(r.port, "GET", "/v1/models", &[], b"").status, 200);
}

#[test]
fn another_method_on_a_generation_path_is_405_and_never_reaches_a_worker() {
    let w = mock(&[]);
    let r = router(&[&w], &[]);
    for (method, path) in [
        ("GET", "/v1/chat/completions"),
        ("DELETE", "/v1/completions"),
        ("PUT", "/generate"),
    ] {
        let resp = request(r.port, method, path, &[], b"");
        assert_openai_error(&resp, 405);
        assert_eq!(resp.header("allow"), Some("POST"), "{method} {path}");
        assert!(resp.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains(method));
    }
    // The connection stays usable: keep-alive, then a real request.
    let mut c = Conn::open(r.port);
    c.send(b"GET /v1/completions HTTP/1.1\r\nhost: x\r\n\r\n");
    assert_eq!(c.read_response(false).status, 405);
    c.send(&post_bytes(
        "/v1/completions",
        &[("content-type", "application/json")],
        r#"{"prompt":"hi","max_tokens":1}"#,
    ));
    assert_eq!(c.read_response(false).status, 200);
    // HEAD gets the head alone: the next answer on the connection is whole.
    c.send(b"HEAD /v1/completions HTTP/1.1\r\nhost: x\r\n\r\n");
    let head = c.read_response(true);
    assert_eq!((head.status, head.body.len()), (405, 0));
    c.send(&post_bytes(
        "/v1/completions",
        &[("content-type", "application/json")],
        r#"{"prompt":"hi","max_tokens":1}"#,
    ));
    assert_eq!(c.read_response(false).status, 200);
    // Other paths keep the published router's passthrough, whatever the method.
    assert_eq!(request(r.port, "GET", "/mock/echo", &[], b"").status, 200);
    assert_eq!(mock_stats(&w)["generation_requests"], 2);
}
