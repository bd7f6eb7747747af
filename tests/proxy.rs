//! The data plane seen from a client: real router, real mock workers, real sockets.

mod common;

use common::*;
use serde_json::json;
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[test]
fn chat_completion_round_trips_and_round_robin_alternates() {
    let (a, b) = (mock(&[]), mock(&[]));
    let r = router(&[&a, &b], &["--shards", "1"]);
    let mut c = Conn::open(r.port);
    let mut seen = Vec::new();
    for _ in 0..6 {
        let body = chat_body("hello", 3, false).to_string();
        c.send(format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        ).as_bytes());
        let resp = c.read_response(false);
        assert_eq!(resp.status, 200);
        let v = resp.json();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["choices"][0]["message"]["content"], "tok tok tok ");
        seen.push(resp.header("x-mock-worker").unwrap().to_string());
    }
    // One connection stays on one shard, whose counter rotates exactly.
    for pair in seen.windows(2) {
        assert_ne!(pair[0], pair[1], "{seen:?}");
    }
    assert_eq!(mock_stats(&a)["generation_requests"], 3);
    assert_eq!(mock_stats(&b)["generation_requests"], 3);
}

#[test]
fn sse_events_are_forwarded_as_they_arrive() {
    let w = mock(&["--token-delay-us", "150000"]);
    let r = router(&[&w], &[]);
    let mut c = Conn::open(r.port);
    let body = json!({"prompt": "hi", "max_tokens": 5, "stream": true}).to_string();
    let start = Instant::now();
    c.post("/v1/completions", &body);
    let head = c.read_head(false);
    assert_eq!(head.status, 200);
    assert!(head
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    assert_eq!(head.header("transfer-encoding"), Some("chunked"));
    let first = c.read_until(b"data: {").duration_since(start);
    let done = c.read_until(b"data: [DONE]").duration_since(start);
    assert!(
        first < Duration::from_millis(120),
        "first event after {first:?}"
    );
    assert!(
        done >= Duration::from_millis(600),
        "last event after {done:?}"
    );
    // The events arrived in order and whole.
    let text = String::from_utf8_lossy(c.buffered()).to_string();
    assert_eq!(text.matches("data: {").count(), 5, "{text}");
}

#[test]
fn client_disconnect_cancels_the_upstream_generation() {
    let w = mock(&["--token-delay-us", "100000"]);
    let r = router(&[&w], &[]);
    let mut c = Conn::open(r.port);
    let body = chat_body("long", 200, true).to_string();
    c.post("/v1/chat/completions", &body);
    c.read_until(b"data: {");
    assert_eq!(mock_stats(&w)["running"], 1);
    drop(c);
    assert!(
        eventually(Duration::from_secs(1), || mock_stats(&w)["running"] == 0),
        "the worker still generates for a client that left"
    );
    assert_eq!(mock_stats(&w)["cancelled"], 1);
}

#[test]
fn eight_mib_bodies_arrive_intact() {
    let w = mock(&[]);
    let r = router(&[&w], &[]);
    let body: Vec<u8> = (0..8 * 1024 * 1024u32)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let expect = format!("{:016x}", xxhash_rust::xxh64::xxh64(&body, 0));
    // Streamed through (transparent path).
    let resp = request(r.port, "POST", "/mock/echo", &[], &body);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["body_len"], body.len());
    assert_eq!(resp.json()["body_xxh64"], expect);
    // Buffered (generation path): an 8 MiB prompt.
    let prompt = "x".repeat(8 * 1024 * 1024);
    let resp = post_json(
        r.port,
        "/v1/completions",
        &json!({"prompt": prompt, "max_tokens": 1}),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
}

#[test]
fn chunked_client_bodies_are_accepted_both_ways() {
    let w = mock(&[]);
    let r = router(&[&w], &[]);
    // Transparent path: streamed through still chunked.
    let mut c = Conn::open(r.port);
    c.send(
        b"POST /mock/echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
    );
    std::thread::sleep(Duration::from_millis(50));
    c.send(b"6;ext=1\r\n world\r\n0\r\n\r\n");
    let resp = c.read_response(false);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["body_len"], 11);
    assert_eq!(resp.json()["headers"]["transfer-encoding"], "chunked");
    // Generation path: decoded, buffered, sent with a Content-Length.
    let body = chat_body("chunked", 2, false).to_string();
    let (a, b) = body.split_at(10);
    c.send(format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        a.len(), b.len()
    ).as_bytes());
    let resp = c.read_response(false);
    assert_eq!(resp.status, 200, "{}", resp.text());
    let sent = request(w.port, "GET", "/mock/requests", &[], b"").json();
    let last = sent.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["headers"]["content-length"], body.len().to_string());
    assert_eq!(last["body"]["messages"][0]["content"], "chunked");
}

#[test]
fn two_hundred_requests_on_one_keep_alive_connection() {
    let w = mock(&[]);
    let r = router(&[&w], &[]);
    let mut c = Conn::open(r.port);
    let body = chat_body("k", 1, false).to_string();
    for i in 0..200 {
        c.post("/v1/chat/completions", &body);
        let resp = c.read_response(false);
        assert_eq!(resp.status, 200, "request {i}");
        assert_eq!(resp.header("connection"), None);
    }
    assert_eq!(mock_stats(&w)["generation_requests"], 200);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let w = mock(&[]);
    let r = router(&[&w], &[]);
    let mut c = Conn::open(r.port);
    let mut raw = Vec::new();
    for i in 0..5 {
        raw.extend_from_slice(
            format!("GET /mock/echo?i={i} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes(),
        );
    }
    c.send(&raw);
    for i in 0..5 {
        let resp = c.read_response(false);
        assert_eq!(resp.status, 200);
        assert_eq!(resp.json()["target"], format!("/mock/echo?i={i}"));
    }
}

#[test]
fn expect_100_continue_is_honoured() {
    let w = mock(&[]);
    let r = router(&[&w], &[]);
    let mut c = Conn::open(r.port);
    let body = chat_body("continue", 1, false).to_string();
    c.send(format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: {}\r\n\r\n",
        body.len()
    ).as_bytes());
    let interim = c.read_head(true);
    assert_eq!(interim.status, 100);
    c.send(body.as_bytes());
    let resp = c.read_response(false);
    assert_eq!(resp.status, 200);
    let sent = request(w.port, "GET", "/mock/requests", &[], b"").json();
    let last = sent.as_array().unwrap().last().unwrap().clone();
    assert!(
        last["headers"].get("expect").is_none(),
        "Expect is handled by the router"
    );
}

#[test]
fn http10_clients_and_connection_close() {
    let w = mock(&["--token-delay-us", "1000"]);
    let r = router(&[&w], &[]);
    // HTTP/1.0: answered as 1.0 and closed; a chunked stream is de-chunked.
    let mut c = Conn::open(r.port);
    let body = json!({"prompt": "p", "max_tokens": 3, "stream": true}).to_string();
    c.send(
        format!(
            "POST /v1/completions HTTP/1.0\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    let resp = c.read_response(false);
    assert_eq!((resp.status, resp.version), (200, 0));
    assert!(resp.header("transfer-encoding").is_none());
    assert_eq!(resp.text().matches("data: ").count(), 4);
    assert!(c.is_closed());
    // HTTP/1.0 keep-alive with a Content-Length answer stays open.
    let mut c = Conn::open(r.port);
    c.send(b"GET /v1/models HTTP/1.0\r\nconnection: keep-alive\r\n\r\n");
    let resp = c.read_response(false);
    assert_eq!(resp.header("connection"), Some("keep-alive"));
    c.send(b"GET /v1/models HTTP/1.0\r\n\r\n");
    assert_eq!(c.read_response(false).status, 200);
    assert!(c.is_closed());
    // HTTP/1.1 with Connection: close.
    let mut c = Conn::open(r.port);
    c.send(b"GET /v1/models HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    let resp = c.read_response(false);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(c.is_closed());
}

#[test]
fn transparent_paths_keep_method_query_and_headers() {
    let w = mock(&[]);
    let r = router(&[&w], &["--api-key", "sekret"]);
    let resp = request(
        r.port,
        "PATCH",
        "/mock/echo?a=1&b=two",
        &[
            ("x-custom", "kept"),
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "dropped"),
            ("keep-alive", "timeout=5"),
            ("x-data-parallel-rank", "7"),
        ],
        b"payload",
    );
    assert_eq!(resp.status, 200);
    let v = resp.json();
    assert_eq!(v["method"], "PATCH");
    assert_eq!(v["target"], "/mock/echo?a=1&b=two");
    let h = &v["headers"];
    assert_eq!(h["x-custom"], "kept");
    assert_eq!(h["authorization"], "Bearer sekret");
    assert_eq!(h["host"], format!("127.0.0.1:{}", w.port));
    for dropped in ["x-hop", "keep-alive", "connection", "x-data-parallel-rank"] {
        assert!(h.get(dropped).is_none(), "{dropped} reached the worker");
    }
    assert_eq!(v["body_len"], 7);
}

#[test]
fn health_endpoints_and_models() {
    let w = mock(&[]);
    let r = router(&[&w], &[]);
    assert_eq!(request(r.port, "GET", "/liveness", &[], b"").status, 200);
    assert_eq!(request(r.port, "GET", "/readiness", &[], b"").status, 200);
    assert_eq!(request(r.port, "GET", "/health", &[], b"").status, 200);
    let models = request(r.port, "GET", "/v1/models", &[], b"");
    assert_eq!(models.status, 200);
    assert_eq!(models.json()["data"][0]["id"], "mock-model");
    // HEAD: GET's head without the content; the next answer on the connection is whole.
    let mut c = Conn::open(r.port);
    c.send(b"HEAD /readiness HTTP/1.1\r\nhost: x\r\n\r\n");
    let head = c.read_response(true);
    assert_eq!((head.status, head.body.len()), (200, 0));
    c.send(b"GET /liveness HTTP/1.1\r\nhost: x\r\n\r\n");
    assert_eq!(c.read_response(false).json()["status"], "alive");

    let empty = router(&[], &[]);
    assert_eq!(
        request(empty.port, "GET", "/liveness", &[], b"").status,
        200
    );
    assert_eq!(
        request(empty.port, "GET", "/readiness", &[], b"").status,
        503
    );
}

#[test]
fn both_shards_serve() {
    let w = mock(&[]);
    let r = router(&[&w], &["--shards", "2"]);
    let mut statuses = HashMap::new();
    for _ in 0..40 {
        let s = request(r.port, "GET", "/v1/models", &[], b"").status;
        *statuses.entry(s).or_insert(0) += 1;
    }
    assert_eq!(statuses.get(&200), Some(&40));
}

#[test]
fn a_worker_restart_does_not_break_pooled_connections() {
    let port = free_low_port();
    let w = mock_on(port, &[]);
    let r = router(&[&w], &["--shards", "1"]);
    let mut c = Conn::open(r.port);
    let body = chat_body("pool", 1, false).to_string();
    let send = |c: &mut Conn| {
        c.post("/v1/chat/completions", &body);
        c.read_response(false)
    };
    assert_eq!(send(&mut c).status, 200);
    // The pooled upstream connection dies with the worker; a new worker takes the port
    // (once the old io_uring socket is really gone).
    drop(w);
    assert!(eventually(Duration::from_secs(5), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
    }));
    let _restarted = mock_on(port, &[]);
    for _ in 0..3 {
        assert_eq!(send(&mut c).status, 200);
    }
}

#[test]
fn close_delimited_answers_are_rechunked_for_http11_clients() {
    let w = mock(&[]);
    let r = router(&[&w], &[]);
    let mut c = Conn::open(r.port);
    for i in 0..3 {
        c.send(
            format!(
                "GET /mock/echo?n={i} HTTP/1.1\r\nhost: x\r\nx-mock-close-delimited: 1\r\n\r\n"
            )
            .as_bytes(),
        );
        let resp = c.read_response(false);
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("transfer-encoding"), Some("chunked"));
        assert_eq!(resp.json()["target"], format!("/mock/echo?n={i}"));
    }
    // HTTP/1.0 gets the body until close.
    let mut c = Conn::open(r.port);
    c.send(b"GET /mock/echo HTTP/1.0\r\nx-mock-close-delimited: 1\r\n\r\n");
    let resp = c.read_response(false);
    assert_eq!(resp.json()["method"], "GET");
    assert!(c.is_closed());
}

#[test]
fn a_slow_client_slows_the_worker_instead_of_filling_memory() {
    // 20k events of 4 KiB (80 MiB) is about twice what the socket buffers on the path
    // hold (worker send 4 MiB, router receive up to 32 MiB, router send 4 MiB, and a
    // client receive buffer pinned at 64 KiB); without backpressure the worker would
    // finish in well under a second.
    let w = mock(&[]);
    let r = router(&[&w], &["--shards", "1"]);
    let mut c = Conn::open_small_rcvbuf(r.port, 64 * 1024);
    let body = json!({"prompt": "p", "max_tokens": 20_000, "stream": true}).to_string();
    c.send(format!("POST /v1/completions HTTP/1.1\r\nhost: x\r\nx-mock-token-bytes: 4096\r\ncontent-length: {}\r\n\r\n{body}", body.len()).as_bytes());
    c.read_until(b"data: {");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        mock_stats(&w)["running"],
        1,
        "the worker finished: nothing held it back"
    );
    let rss = rss_kib(r.child.id());
    assert!(
        rss < 32 * 1024,
        "router RSS {rss} KiB while a client stalls"
    );
    c.discard_until(b"data: [DONE]");
    assert!(eventually(Duration::from_secs(2), || mock_stats(&w)
        ["running"]
        == 0));
}

#[test]
fn sigterm_lets_a_running_stream_finish_then_exits() {
    let w = mock(&["--token-delay-us", "100000"]);
    let mut r = router(&[&w], &[]);
    let mut idle = Conn::open(r.port); // a keep-alive connection with nothing in flight
    let mut c = Conn::open(r.port);
    let body = chat_body("drain", 8, true).to_string();
    c.post("/v1/chat/completions", &body);
    c.read_until(b"data: {");
    r.signal("TERM");
    // The idle connection is closed, the stream runs to its end.
    assert!(idle.is_closed());
    // A second signal (`timeout -s TERM` and some supervisors send two) is logged and
    // changes nothing: the stream still finishes and the exit is clean.
    r.signal("TERM");
    let done = c.read_until(b"data: [DONE]");
    assert!(done.elapsed() < Duration::from_secs(1));
    let status = r.child.wait().unwrap();
    assert!(status.success(), "router exited with {status}");
    assert!(std::net::TcpStream::connect(("127.0.0.1", r.port)).is_err());
    let log = r.stop_and_log();
    assert!(log.contains("received again while draining"), "{log}");
}

#[test]
fn sigint_during_the_start_up_wait_stops_at_once() {
    let dead = format!("http://127.0.0.1:{}", free_port());
    let mut child = std::process::Command::new(router_bin())
        .args([
            "--port",
            "0",
            "--prometheus-port",
            "0",
            "--policy",
            "random",
        ])
        .args([
            "--worker-urls",
            &dead,
            "--worker-startup-check-interval",
            "1",
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = StderrLog::start(&mut child);
    // The wait names the worker and why it is not healthy, at the first check.
    let line = log.wait_for("waiting for a healthy worker", &mut child, "vllm-router");
    assert!(line.contains(&dead) && line.contains("refused"), "{line}");
    let sent = std::time::Instant::now();
    std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let exited = eventually(Duration::from_secs(5), || {
        child.try_wait().unwrap().is_some()
    });
    assert!(
        exited,
        "still waiting {:?} after SIGINT\n{}",
        sent.elapsed(),
        log.text()
    );
    assert!(child.wait().unwrap().success());
    assert!(log.text().contains("SIGINT during start-up: stopping"));
}

#[test]
fn absolute_form_targets_are_served_by_their_path() {
    // RFC 9112 3.2.2: a server must accept `GET http://host/path`.
    let w = mock(&[]);
    let r = router(&[&w], &[]);
    let live = request(r.port, "GET", "http://router.example/liveness", &[], b"");
    assert_eq!(live.status, 200, "{}", live.text());
    assert_eq!(live.json()["status"], "alive");
    let body = chat_body("hi", 1, false).to_string();
    let target = format!("http://127.0.0.1:{}/v1/chat/completions", r.port);
    let resp = request(r.port, "POST", &target, &[], body.as_bytes());
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(mock_requests(&w)[0]["path"], "/v1/chat/completions");
}
