//! Running unattended: admin and client keys, the port answering during the start-up
//! wait, and the per-shard budget for buffered request bodies.

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

fn listed(r: &Router) -> Vec<String> {
    let list = request(r.port, "GET", "/list_workers", &[], b"").json();
    list["urls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn admin_writes_need_the_admin_key_and_inference_a_client_key() {
    let a = mock(&["--name", "a"]);
    let b = mock(&["--name", "b"]);
    let mut cmd = Command::new(router_bin());
    cmd.args(["--policy", "round_robin", "--shards", "2"])
        .args(["--worker-urls", &a.url()])
        .args(["--client-api-key", "k1", "k2"])
        .env("VLLM_ROUTER_ADMIN_API_KEY", "adm1n");
    let r = start_router(cmd);
    let add = format!("/add_worker?url={}", b.url());

    // No key, a client key, a wrong key: refused, and the worker set is unchanged.
    for auth in [None, Some(bearer("k1")), Some(bearer("adm1"))] {
        let headers: Vec<(&str, &str)> = auth.iter().map(|v| ("authorization", &v[..])).collect();
        let resp = request(r.port, "POST", &add, &headers, b"");
        assert_eq!(resp.status, 401, "{auth:?}: {}", resp.text());
        assert_eq!(resp.header("www-authenticate"), Some("Bearer"));
        let err = resp.json();
        assert_eq!(err["error"]["type"], "authentication_error");
        assert!(err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("admin key"));
    }
    assert_eq!(listed(&r), vec![a.url()]);
    let auth = bearer("adm1n");
    let resp = request(r.port, "POST", &add, &[("authorization", &auth)], b"");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(listed(&r).len(), 2);

    // Inference: a client key, whichever; health stays open for probes.
    let body = chat_body("hi", 1, false).to_string();
    let chat = |headers: &[(&str, &str)]| {
        request(
            r.port,
            "POST",
            "/v1/chat/completions",
            headers,
            body.as_bytes(),
        )
    };
    let refused = chat(&[]);
    assert_eq!(refused.status, 401);
    assert!(refused.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("API key"));
    assert_eq!(chat(&[("authorization", &bearer("k3"))]).status, 401);
    assert_eq!(chat(&[("authorization", &bearer("adm1n"))]).status, 401);
    assert_eq!(chat(&[("authorization", &bearer("k2"))]).status, 200);
    assert_eq!(chat(&[("Authorization", &bearer("k1"))]).status, 200);
    let models = request(r.port, "GET", "/v1/models", &[], b"");
    assert_eq!(models.status, 401);
    assert_eq!(request(r.port, "GET", "/health", &[], b"").status, 200);
    assert_eq!(request(r.port, "GET", "/readiness", &[], b"").status, 200);
}

#[test]
fn an_open_admin_api_beyond_loopback_is_warned_about() {
    let a = mock(&["--name", "a"]);
    let mut r = router(&[&a], &["--host", "0.0.0.0"]);
    let Proc { child, log, .. } = &mut r.proc;
    let line =
        log.as_ref()
            .unwrap()
            .wait_for("the admin API is open to anyone", child, "vllm-router");
    assert!(line.contains("--admin-api-key"), "{line}");
    // The same router on loopback with a key says nothing of it.
    let mut quiet = router(&[&a], &["--admin-api-key", "x"]);
    let text = quiet.stop_and_log();
    assert!(!text.contains("admin API is open"), "{text}");
}

#[test]
fn the_port_answers_during_the_start_up_wait_and_says_what_it_waits_for() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut child = Command::new(router_bin())
        .args(["--port", "0", "--prometheus-port", "0", "--shards", "2"])
        .args(["--policy", "round_robin", "--worker-urls", &url])
        .args(["--worker-startup-check-interval", "1"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = StderrLog::start(&mut child);
    let line = log.wait_for("answers 503 and says why", &mut child, "vllm-router");
    let at = line.find("http://").unwrap() + "http://".len();
    let addr = &line[at..at + line[at..].find(' ').unwrap()];
    let router_port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();

    // Once the first check has failed, both answers name the worker and the reason.
    let mut readiness = String::new();
    let named = eventually(Duration::from_secs(10), || {
        let resp = request(router_port, "GET", "/readiness", &[], b"");
        readiness = resp.text();
        resp.status == 503 && readiness.contains(&url) && readiness.contains("refused")
    });
    assert!(named, "{readiness}\n{}", log.text());
    let starting = request(router_port, "GET", "/readiness", &[], b"").json();
    assert_eq!(starting["status"], "starting");
    assert_eq!(starting["total_workers"], 0); // the set is published once one is healthy
    let body = chat_body("hi", 1, false);
    let resp = post_json(router_port, "/v1/chat/completions", &body);
    assert_eq!(resp.status, 503);
    let msg = resp.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.contains("starting") && msg.contains(&url), "{msg}");

    // The worker comes up: the wait ends and the same port serves.
    let _worker = mock_on(port, &["--name", "late"]);
    let ready = eventually(Duration::from_secs(10), || {
        request(router_port, "GET", "/readiness", &[], b"").status == 200
    });
    assert!(ready, "{}", log.text());
    log.wait_for("listening on http://", &mut child, "vllm-router");
    assert_eq!(
        post_json(router_port, "/v1/chat/completions", &body).status,
        200
    );
    let ready = request(router_port, "GET", "/readiness", &[], b"").json();
    assert_eq!(
        ready,
        serde_json::json!({"status": "ready", "healthy_workers": 1, "total_workers": 1})
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_mistyped_worker_can_be_fixed_through_the_admin_api_during_the_wait() {
    let typo = format!("http://127.0.0.1:{}", free_port());
    let mut child = Command::new(router_bin())
        .args(["--port", "0", "--prometheus-port", "0", "--shards", "2"])
        .args(["--policy", "round_robin", "--worker-urls", &typo])
        .args(["--worker-startup-check-interval", "1"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = StderrLog::start(&mut child);
    let line = log.wait_for("answers 503 and says why", &mut child, "vllm-router");
    let at = line.find("http://").unwrap() + "http://".len();
    let addr = &line[at..at + line[at..].find(' ').unwrap()];
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();

    let list = request(port, "GET", "/list_workers", &[], b"");
    assert_eq!(list.status, 200, "{}", list.text());
    assert_eq!(list.json()["urls"][0], typo.as_str());
    let right = mock(&["--name", "right"]);
    let add = request(
        port,
        "POST",
        &format!("/add_worker?url={}", right.url()),
        &[],
        b"",
    );
    assert_eq!(add.status, 200, "{}", add.text());
    let remove = request(
        port,
        "POST",
        &format!("/remove_worker?url={typo}"),
        &[],
        b"",
    );
    assert_eq!(remove.status, 200, "{}", remove.text());
    log.wait_for("listening on http://", &mut child, "vllm-router");
    let resp = post_json(port, "/v1/chat/completions", &chat_body("hi", 1, false));
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("x-mock-worker"), Some("right"));
    let _ = child.kill();
    let _ = child.wait();
}

/// A chat request whose JSON body is `size` bytes long.
fn chat_of_size(size: usize) -> Vec<u8> {
    let empty = chat_body("", 1, false).to_string();
    chat_body(&"x".repeat(size - empty.len()), 1, false)
        .to_string()
        .into_bytes()
}

#[test]
fn bodies_past_the_shard_budget_get_503_and_the_budget_comes_back() {
    let a = mock(&["--name", "a"]);
    let r = router(
        &[&a],
        &["--shards", "1", "--body-buffer-budget-bytes", "300000"],
    );
    // A body larger than the whole budget can never be buffered: 413 at once.
    let huge = chat_of_size(300_001);
    let resp = request(r.port, "POST", "/v1/chat/completions", &[], &huge);
    assert_eq!(resp.status, 413);

    // A slow client holds 200 kB of a 250 kB body.
    let slow = chat_of_size(250_000);
    let mut held = Conn::open(r.port);
    held.send(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n\r\n",
            slow.len()
        )
        .as_bytes(),
    );
    held.send(&slow[..200_000]);
    let charged = eventually(Duration::from_secs(5), || {
        metric(&r.metrics(), "vllm_router_buffered_body_bytes", &[]).unwrap_or(0.0) >= 200_000.0
    });
    assert!(charged, "{}", r.metrics());

    // Another 100 kB body does not fit beside it.
    let other = chat_of_size(100_000);
    let resp = request(r.port, "POST", "/v1/chat/completions", &[], &other);
    assert_eq!(resp.status, 503, "{}", resp.text());
    assert_eq!(resp.header("retry-after"), Some("1"));
    assert!(resp.text().contains("retry shortly"), "{}", resp.text());

    // The slow body completes and is served; its share of the budget comes back.
    held.send(&slow[200_000..]);
    assert_eq!(held.read_response(false).status, 200);
    // (The charge is given back once the answer has ended, just after the client saw it.)
    let mut last = String::new();
    let served = eventually(Duration::from_secs(5), || {
        let resp = request(r.port, "POST", "/v1/chat/completions", &[], &other);
        last = resp.text();
        resp.status == 200
    });
    assert!(served, "{last}");
    let released = eventually(Duration::from_secs(5), || {
        metric(&r.metrics(), "vllm_router_buffered_body_bytes", &[]) == Some(0.0)
    });
    assert!(released, "{}", r.metrics());
}

#[test]
fn cors_preflights_are_answered_by_the_router_and_answers_name_the_origin() {
    let a = mock(&["--name", "a"]);
    let r = router(
        &[&a],
        &[
            "--cors-allowed-origins",
            "https://app.example",
            "http://localhost:3000",
        ],
    );
    let preflight = |origin: &str| {
        request(
            r.port,
            "OPTIONS",
            "/v1/chat/completions",
            &[
                ("origin", origin),
                ("access-control-request-method", "POST"),
                (
                    "access-control-request-headers",
                    "content-type,authorization,x-session-id,x-nope",
                ),
            ],
            b"",
        )
    };
    let ok = preflight("https://app.example");
    assert_eq!(ok.status, 200);
    assert_eq!(
        ok.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(
        ok.header("access-control-allow-headers"),
        Some("content-type, authorization, x-session-id")
    );
    assert!(ok
        .header("access-control-allow-methods")
        .unwrap()
        .contains("POST"));
    let refused = preflight("https://evil.example");
    assert_eq!(refused.status, 200);
    assert_eq!(refused.header("access-control-allow-origin"), None);
    // The worker never saw a preflight.
    assert!(mock_stats(&a)["by_path"]["/v1/chat/completions"].is_null());

    let body = chat_body("hi", 1, false).to_string();
    let post = |origin: &str| {
        request(
            r.port,
            "POST",
            "/v1/chat/completions",
            &[("origin", origin), ("content-type", "application/json")],
            body.as_bytes(),
        )
    };
    let resp = post("http://localhost:3000");
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("access-control-allow-origin"),
        Some("http://localhost:3000")
    );
    assert_eq!(
        resp.header("access-control-expose-headers"),
        Some("x-request-id")
    );
    assert_eq!(
        post("https://evil.example").header("access-control-allow-origin"),
        None
    );
    // The router's own answers carry them too, so a page can read the error.
    let err = request(
        r.port,
        "POST",
        "/v1/chat/completions",
        &[("origin", "https://app.example")],
        b"{not json",
    );
    assert_eq!(err.status, 400);
    assert_eq!(
        err.header("access-control-allow-origin"),
        Some("https://app.example")
    );
}

#[test]
fn without_cors_origins_preflights_go_to_the_worker() {
    let a = mock(&["--name", "a"]);
    let r = router(&[&a], &[]);
    let resp = request(
        r.port,
        "OPTIONS",
        "/v1/models",
        &[
            ("origin", "https://app.example"),
            ("access-control-request-method", "GET"),
        ],
        b"",
    );
    assert_eq!(resp.header("x-mock-worker"), Some("a"), "{}", resp.text());
    assert_eq!(resp.header("access-control-allow-origin"), None);
}

fn rate_chat(port: u16) -> Response {
    let body = chat_body("hello", 2, false).to_string();
    request(port, "POST", "/v1/chat/completions", &[], body.as_bytes())
}

#[test]
fn a_rate_limit_answers_429_with_retry_after_then_admits_again() {
    let w = mock(&[]);
    let r = router(
        &[&w],
        &["--shards", "1", "--rate-limit-tokens-per-second", "2"],
    );
    // A burst of one second's worth (2) passes; then one is refused with the wait.
    let mut passed = 0;
    let refused = loop {
        let resp = rate_chat(r.port);
        match resp.status {
            200 => passed += 1,
            429 => break resp,
            other => panic!("status {other}: {}", resp.text()),
        }
        assert!(passed < 10, "no request was refused");
    };
    assert!(passed >= 2, "the burst was not admitted: {passed}");
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(refused.json()["error"]["type"], "rate_limit_error");
    let labels = [
        ("route", "/v1/chat/completions"),
        ("error_type", "rate_limited"),
    ];
    let counted = eventually(Duration::from_secs(3), || {
        metric(&r.metrics(), "vllm_router_request_errors_total", &labels) == Some(1.0)
    });
    assert!(counted, "{}", r.metrics());
    // Health and admin calls are not counted against it.
    for _ in 0..5 {
        assert_eq!(request(r.port, "GET", "/health", &[], b"").status, 200);
    }
    // Tokens come back at the rate: a request is admitted again.
    assert!(eventually(Duration::from_secs(3), || rate_chat(r.port)
        .status
        == 200));
}
