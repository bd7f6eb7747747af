//! The control core seen from outside: health checks, the admin API, Prometheus
//! metrics and request ids, against the real router and real mock workers.

mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;

fn served_by(port: u16) -> String {
    let resp = post_json(port, "/v1/chat/completions", &chat_body("who", 1, false));
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.header("x-mock-worker").unwrap().to_string()
}

fn worker_healthy(r: &Router, url: &str) -> Option<bool> {
    let v = request(r.port, "GET", "/workers", &[], b"").json();
    v["workers"]
        .as_array()?
        .iter()
        .find(|w| w["url"] == url)
        .and_then(|w| w["healthy"].as_bool())
}

fn wait_refused(port: u16) {
    assert!(eventually(Duration::from_secs(5), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
    }));
}

#[test]
fn a_killed_worker_leaves_rotation_and_returns_after_restart() {
    let a = mock(&["--name", "a"]);
    let b_port = free_low_port();
    let b = mock_on(b_port, &["--name", "b"]);
    let b_url = b.url();
    let r = router(
        &[&a, &b],
        &[
            "--health-check-interval-secs",
            "1",
            "--health-failure-threshold",
            "1",
            "--health-success-threshold",
            "1",
            "--shards",
            "1",
        ],
    );
    let first: Vec<String> = (0..4).map(|_| served_by(r.port)).collect();
    assert!(first.contains(&"b".to_string()), "{first:?}");

    drop(b);
    wait_refused(b_port);
    assert!(
        eventually(Duration::from_secs(10), || worker_healthy(&r, &b_url)
            == Some(false)),
        "the dead worker is still in rotation"
    );
    for _ in 0..6 {
        assert_eq!(served_by(r.port), "a");
    }

    let _b = mock_on(b_port, &["--name", "b"]);
    // Health checks run every second; 10 s of polling leaves room for a loaded
    // machine (4 s was missed once, a CI run beside a release build).
    assert!(
        eventually(Duration::from_secs(10), || worker_healthy(&r, &b_url)
            == Some(true)),
        "the restarted worker did not come back"
    );
    let again: Vec<String> = (0..4).map(|_| served_by(r.port)).collect();
    assert!(again.contains(&"b".to_string()), "{again:?}");
}

#[test]
fn workers_are_added_and_removed_through_the_admin_api() {
    let a = mock(&["--name", "a"]);
    let b = mock(&["--name", "b"]);
    let c = mock(&["--name", "c"]);
    let r = router(&[&a], &["--shards", "2"]);
    let enc = |u: &str| u.replace(':', "%3A").replace('/', "%2F");

    let resp = request(
        r.port,
        "POST",
        &format!("/add_worker?url={}", enc(&b.url())),
        &[],
        b"",
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        resp.text(),
        format!("Successfully added worker: {}", b.url())
    );
    let list = request(r.port, "GET", "/list_workers", &[], b"").json();
    assert_eq!(list["urls"], serde_json::json!([a.url(), b.url()]));
    // Every shard routes to the new worker.
    let seen: Vec<String> = (0..8).map(|_| served_by(r.port)).collect();
    assert!(seen.contains(&"b".to_string()), "{seen:?}");

    let resp = request(
        r.port,
        "POST",
        &format!("/remove_worker?url={}", b.url()),
        &[],
        b"",
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    for _ in 0..6 {
        assert_eq!(served_by(r.port), "a");
    }

    // REST forms.
    let body = serde_json::json!({"url": c.url()}).to_string();
    let resp = request(
        r.port,
        "POST",
        "/workers",
        &[("content-type", "application/json")],
        body.as_bytes(),
    );
    assert_eq!(resp.status, 201, "{}", resp.text());
    let one = request(
        r.port,
        "GET",
        &format!("/workers/{}", enc(&c.url())),
        &[],
        b"",
    );
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["healthy"], true);
    assert_eq!(one.json()["url"], c.url());
    let all = request(r.port, "GET", "/workers", &[], b"").json();
    assert_eq!(all["total"], 2);
    assert!(all["workers"][0].get("load").is_some());
    assert!(all["workers"][0].get("processed_requests").is_some());
    assert_eq!(
        request(
            r.port,
            "DELETE",
            &format!("/workers/{}", enc(&c.url())),
            &[],
            b""
        )
        .status,
        200
    );
    assert_eq!(
        request(
            r.port,
            "GET",
            &format!("/workers/{}", enc(&c.url())),
            &[],
            b""
        )
        .status,
        404
    );

    // A worker that is not up is refused and not added.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let resp = request(
        r.port,
        "POST",
        &format!("/add_worker?url={}", enc(&dead)),
        &[],
        b"",
    );
    assert_eq!(resp.status, 503, "{}", resp.text());
    let list = request(r.port, "GET", "/list_workers", &[], b"").json();
    assert_eq!(list["urls"], serde_json::json!([a.url()]));
    let resp = request(r.port, "POST", "/add_worker?url=ftp%3A%2F%2Fx", &[], b"");
    assert_eq!(resp.status, 400);
}

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn metrics_count_the_traffic_sent() {
    let w = mock(&["--token-delay-us", "1000"]);
    let r = router(&[&w], &["--max-payload-size", "10000"]);
    for _ in 0..7 {
        assert_eq!(
            post_json(r.port, "/v1/chat/completions", &chat_body("m", 2, false)).status,
            200
        );
    }
    for _ in 0..3 {
        let body = serde_json::json!({"prompt": "p", "max_tokens": 3, "stream": true});
        assert_eq!(post_json(r.port, "/v1/completions", &body).status, 200);
    }
    assert_eq!(
        request(r.port, "GET", "/no/such/path", &[], b"").status,
        404
    );
    assert_eq!(
        request(r.port, "POST", "/v1/completions", &[], &[b'x'; 20000]).status,
        413
    );

    let url = w.url();
    let expect = [
        ("vllm_router_requests_total{route=\"/v1/chat/completions\"}".to_string(), 7.0),
        ("vllm_router_requests_total{route=\"/v1/completions\"}".to_string(), 4.0),
        ("vllm_router_requests_total{route=\"other\"}".to_string(), 1.0),
        ("vllm_router_http_requests_total{method=\"POST\",route=\"/v1/chat/completions\",status_code=\"200\"}".to_string(), 7.0),
        ("vllm_router_http_requests_total{method=\"POST\",route=\"/v1/completions\",status_code=\"413\"}".to_string(), 1.0),
        ("vllm_router_http_requests_total{method=\"GET\",route=\"other\",status_code=\"404\"}".to_string(), 1.0),
        ("vllm_router_request_errors_total{error_type=\"payload_too_large\",route=\"/v1/completions\"}".to_string(), 1.0),
        (format!("vllm_router_processed_requests_total{{worker=\"{url}\"}}"), 11.0),
        ("vllm_router_request_duration_seconds_count{route=\"/v1/chat/completions\"}".to_string(), 7.0),
        ("vllm_router_time_to_first_byte_seconds_count{route=\"/v1/completions\"}".to_string(), 4.0),
        (format!("vllm_router_worker_health{{worker=\"{url}\"}}"), 1.0),
        (format!("vllm_router_worker_load{{worker=\"{url}\"}}"), 0.0),
        ("vllm_router_active_workers".to_string(), 1.0),
    ];
    let mut text = String::new();
    let ok = eventually(Duration::from_secs(5), || {
        text = r.metrics();
        expect.iter().all(|(s, v)| sample(&text, s) == Some(*v))
    });
    let missing: Vec<_> = expect
        .iter()
        .filter(|(s, v)| sample(&text, s) != Some(*v))
        .map(|(s, v)| format!("{s} = {v} (got {:?})", sample(&text, s)))
        .collect();
    assert!(ok, "mismatched series: {missing:#?}\n{text}");
    assert!(text.contains("# TYPE vllm_router_request_duration_seconds histogram"));
    assert!(text.contains(
        "vllm_router_time_to_first_byte_seconds_bucket{route=\"/v1/completions\",le=\"+Inf\"} 4"
    ));
}

#[test]
fn request_ids_are_propagated_and_echoed() {
    let w = mock(&[]);
    let r = router(&[&w], &[]);
    let last_sent_id = || -> Value {
        let sent = request(w.port, "GET", "/mock/requests", &[], b"").json();
        sent.as_array().unwrap().last().unwrap()["headers"]["x-request-id"].clone()
    };
    // Generated, shaped like OpenAI's.
    let resp = post_json(r.port, "/v1/chat/completions", &chat_body("id", 1, false));
    let id = resp.header("x-request-id").unwrap().to_string();
    assert!(id.starts_with("chatcmpl-") && id.len() == 33, "{id}");
    assert_eq!(last_sent_id(), id);
    // Taken from the default headers, in order.
    let body = chat_body("id", 1, false).to_string();
    let resp = request(
        r.port,
        "POST",
        "/v1/chat/completions",
        &[("X-Trace-Id", "trace-1"), ("X-Correlation-Id", "corr-1")],
        body.as_bytes(),
    );
    assert_eq!(resp.header("x-request-id"), Some("corr-1"));
    assert_eq!(last_sent_id(), "corr-1");
    // A custom list replaces the defaults.
    let r2 = router(&[&w], &["--request-id-headers", "x-my-id"]);
    let resp = request(
        r2.port,
        "POST",
        "/v1/completions",
        &[("x-request-id", "ignored"), ("x-my-id", "mine-7")],
        serde_json::json!({"prompt": "p", "max_tokens": 1})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(resp.header("x-request-id"), Some("mine-7"));
    assert_eq!(last_sent_id(), "mine-7");
    let resp = request(
        r2.port,
        "POST",
        "/v1/completions",
        &[("x-request-id", "ignored")],
        b"{}",
    );
    assert!(resp.header("x-request-id").unwrap().starts_with("cmpl-"));
}

#[test]
fn startup_fails_clearly_when_no_worker_becomes_healthy() {
    let dead = format!("http://127.0.0.1:{}", free_port());
    let out = std::process::Command::new(router_bin())
        .args(["--policy", "random", "--port", "0"])
        .args(["--prometheus-port", "0"])
        .args(["--worker-urls", &dead])
        .args([
            "--worker-startup-timeout-secs",
            "1",
            "--worker-startup-check-interval",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no worker became healthy within 1s"), "{err}");
}

#[test]
fn a_removed_worker_finishes_its_streams_and_gets_no_new_requests() {
    let a = mock(&["--name", "a", "--token-delay-us", "100000"]);
    let b = mock(&["--name", "b", "--token-delay-us", "100000"]);
    let r = router(&[&a, &b], &["--shards", "1"]);
    let mut c = Conn::open(r.port);
    c.post(
        "/v1/chat/completions",
        &chat_body("long", 10, true).to_string(),
    );
    let head = c.read_head(false);
    let (gone, gone_url, stays) = match head.header("x-mock-worker") {
        Some("a") => (&a, a.url(), "b"),
        _ => (&b, b.url(), "a"),
    };
    c.read_until(b"data: {");
    let resp = request(
        r.port,
        "POST",
        &format!("/remove_worker?url={gone_url}"),
        &[],
        b"",
    );
    assert_eq!(resp.status, 200);
    for _ in 0..4 {
        let resp = post_json(r.port, "/v1/chat/completions", &chat_body("x", 1, false));
        assert_eq!(resp.header("x-mock-worker"), Some(stays));
    }
    c.read_until(b"data: [DONE]");
    assert_eq!(mock_stats(gone)["cancelled"], 0);
}

#[test]
fn port_zero_is_chosen_once_and_reported() {
    // The harness starts every router with --port 0 --prometheus-port 0 and learns the
    // ports from the start-up line; the admin API says the same, and both shards
    // share the one port (requests over many connections all succeed).
    let w = mock(&[]);
    let r = router(&[&w], &["--shards", "2"]);
    let info = request(r.port, "GET", "/router_info", &[], b"").json();
    assert_eq!(info["listen"], format!("127.0.0.1:{}", r.port));
    assert_eq!(info["metrics"], format!("127.0.0.1:{}", r.metrics_port));
    assert_eq!(info["shards"], 2);
    for _ in 0..8 {
        let resp = post_json(r.port, "/v1/chat/completions", &chat_body("x", 1, false));
        assert_eq!(resp.status, 200);
    }
    // The Prometheus port serves what the shards counted (sent once a second).
    assert!(eventually(Duration::from_secs(5), || {
        metric(
            &r.metrics(),
            "vllm_router_requests_total",
            &[("route", "/v1/chat/completions")],
        ) == Some(8.0)
    }));
}

#[test]
fn get_loads_and_flush_cache_ask_every_worker() {
    let a = mock(&["--name", "a", "--token-delay-us", "200000"]);
    let b = mock(&["--name", "b"]);
    let dead = format!("http://127.0.0.1:{}", free_port());
    let r = router(&[&a, &b], &["--shards", "1"]);
    let add = request(r.port, "POST", &format!("/workers?url={dead}"), &[], b"");
    assert!(add.status >= 400, "a dead worker was added: {}", add.text());

    // A long stream keeps one request running on `a`.
    let mut c = Conn::open(a.port);
    c.post("/v1/completions", &json_prompt_stream());
    c.read_until(b"data: {");
    let loads = request(r.port, "GET", "/get_loads", &[], b"").json();
    let by_worker = |url: &str| {
        loads["workers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["worker"] == url)
            .map(|w| w["load"].as_i64().unwrap())
    };
    assert_eq!(by_worker(&a.url()), Some(1), "{loads}");
    assert_eq!(by_worker(&b.url()), Some(0), "{loads}");

    // Every healthy worker is asked to drop its prefix cache; each says how it went.
    let flush = request(r.port, "POST", "/flush_cache", &[], b"");
    assert_eq!(flush.status, 200, "{}", flush.text());
    let v = flush.json();
    assert_eq!(v["message"], "Cache flushed on all servers");
    assert_eq!(v["workers"].as_array().unwrap().len(), 2);
    for m in [&a, &b] {
        assert_eq!(mock_stats(m)["by_path"]["/reset_prefix_cache"], 1);
    }
    // A worker that fails the call makes it a 500 that names the worker (or, once the
    // health checks noticed, it is skipped as unhealthy).
    let b_url = b.url();
    drop(b);
    let flush = request(r.port, "POST", "/flush_cache", &[], b"");
    let v = flush.json();
    let entry = v["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["worker"] == b_url.as_str())
        .cloned()
        .unwrap();
    let failed = flush.status == 500
        && v["message"] == "Cache flush failed on one or more servers"
        && entry["error"].is_string();
    let skipped = flush.status == 200 && entry["skipped"] == "not healthy";
    assert!(failed || skipped, "{v}");
}

fn json_prompt_stream() -> String {
    serde_json::json!({"prompt": "long", "max_tokens": 50, "stream": true}).to_string()
}

#[test]
fn finish_session_answers_as_the_published_router() {
    let a = mock(&["--name", "a"]);
    let r = router(&[&a], &[]);
    let ok = request(
        r.port,
        "POST",
        "/finish_session?session_id=chat%2042",
        &[],
        b"",
    );
    assert_eq!(ok.status, 200);
    assert_eq!(
        ok.json(),
        serde_json::json!({"status": "ok", "session_id": "chat 42"})
    );
    let missing = request(r.port, "POST", "/finish_session", &[], b"");
    assert_eq!(missing.status, 400);
    assert!(missing.text().contains("missing field `session_id`"));
    assert_eq!(
        request(r.port, "GET", "/finish_session?session_id=x", &[], b"").status,
        405
    );
    // Answered by the router: the worker never saw it.
    assert!(mock_stats(&a)["by_path"]["/finish_session"].is_null());
}

#[test]
fn head_on_admin_routes_answers_what_get_would_without_content() {
    let w = mock(&[]);
    let r = router(&[&w], &[]);
    let get = request(r.port, "GET", "/list_workers", &[], b"");
    assert_eq!(get.status, 200);
    let mut c = Conn::open(r.port);
    c.send(b"HEAD /list_workers HTTP/1.1\r\nhost: x\r\n\r\n");
    let head = c.read_response(true);
    assert_eq!((head.status, head.body.len()), (200, 0));
    let length = get.body.len().to_string();
    assert_eq!(head.header("content-length"), Some(length.as_str()));
    // A POST route: 405, head alone; each next answer on the connection is whole.
    c.send(b"HEAD /add_worker HTTP/1.1\r\nhost: x\r\n\r\n");
    let head = c.read_response(true);
    assert_eq!((head.status, head.body.len()), (405, 0));
    c.send(b"GET /list_workers HTTP/1.1\r\nhost: x\r\n\r\n");
    let again = c.read_response(false);
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["urls"], get.json()["urls"]);
}
