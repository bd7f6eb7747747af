//! kv_aware against mock workers that publish real KV events over ZMQ: the router
//! learns what each worker holds from the worker itself, so traffic that never passed
//! through it counts too.

mod common;

use common::*;
use serde_json::json;
use std::process::Command;
use std::time::Duration;

/// A mock publishing KV events (discovered by the router from `/kv_event_sources`).
fn kv_mock(name: &str, extra: &[&str]) -> Proc {
    let port = free_low_port().to_string();
    let mut args = vec!["--name", name, "--kv-events-port", &port];
    args.extend_from_slice(extra);
    mock(&args)
}

/// A completion whose prompt is token ids `from..from + n`.
fn prompt(from: u32, n: u32) -> serde_json::Value {
    json!({"model": "m", "max_tokens": 1, "prompt": (from..from + n).collect::<Vec<u32>>()})
}

fn served_by(port: u16, body: &serde_json::Value) -> String {
    let r = post_json(port, "/v1/completions", body);
    assert_eq!(r.status, 200, "{}", r.text());
    r.header("x-mock-worker").unwrap().to_string()
}

/// A sample of the router's metrics (0 while it is not exposed yet).
fn sample(r: &Router, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(&r.metrics(), name, labels).unwrap_or(0.0)
}

fn blocks_of(r: &Router, w: &Proc) -> f64 {
    sample(r, "vllm_router_kv_index_blocks", &[("worker", &w.url())])
}

/// kv_aware lookups with this result (`hit`, `miss`, `missing_tokens`).
fn lookups(r: &Router, result: &str) -> f64 {
    sample(
        r,
        "vllm_router_kv_placement_lookups_total",
        &[("result", result)],
    )
}

/// Waits until the router has subscribed to `n` publishers.
fn wait_subscribed(r: &mut Router, workers: &[&Proc]) {
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
fn prime(r: &Router, w: &Proc, from: u32, blocks: f64) -> serde_json::Value {
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

#[test]
fn a_prefix_cached_by_traffic_that_bypassed_the_router_draws_matching_requests() {
    // a publishes vLLM's positional encoding, b the map-tagged one.
    let a = kv_mock("a", &[]);
    let b = kv_mock("b", &["--kv-events-encoding", "map"]);
    let mut r = router(&[&a, &b], &["--policy", "kv_aware"]);
    wait_subscribed(&mut r, &[&a, &b]);
    // 100 tokens are 6 full blocks of 16: b prefills 4, a 100. Thirty in a row: what each must prefill is
    // counted against b only until its answer starts, so it never adds up.
    let body = prime(&r, &b, 0, 6.0);
    for _ in 0..30 {
        assert_eq!(served_by(r.port, &body), "b");
    }
    let body = prime(&r, &a, 500_000, 6.0);
    for _ in 0..6 {
        assert_eq!(served_by(r.port, &body), "a");
    }
    assert!(
        eventually(Duration::from_secs(5), || lookups(&r, "hit") >= 36.0),
        "{}",
        r.metrics()
    );
}

#[test]
fn a_chat_is_tokenized_by_one_worker_once_and_follows_its_cached_prefix() {
    let a = kv_mock("a", &[]);
    let b = kv_mock("b", &[]);
    let mut r = router(&[&a, &b], &["--policy", "kv_aware", "--shards", "1"]);
    wait_subscribed(&mut r, &[&a, &b]);
    let system = "You answer questions about routers, briefly. ".repeat(8);
    let chat = json!({"model": "m", "max_tokens": 1, "messages": [
        {"role": "system", "content": system}, {"role": "user", "content": "what is a shard?"}]});
    // Straight to b (another replica's traffic, say) until the router knows it.
    for attempt in 0.. {
        assert!(attempt < 20, "never indexed:\n{}", r.metrics());
        let resp = post_json(b.port, "/v1/chat/completions", &chat);
        assert_eq!(resp.status, 200);
        if eventually(Duration::from_secs(2), || blocks_of(&r, &b) >= 20.0) {
            break;
        }
        request(b.port, "POST", "/reset_prefix_cache", &[], b"");
    }
    for _ in 0..4 {
        let resp = post_json(r.port, "/v1/chat/completions", &chat);
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.header("x-mock-worker"), Some("b"));
    }
    // One /tokenize call for four identical requests, to one worker.
    let calls = |w: &Proc| mock_stats(w)["by_path"]["/tokenize"].as_u64().unwrap_or(0);
    assert_eq!(calls(&a) + calls(&b), 1);
    let inputs = |result: &str| {
        sample(
            &r,
            "vllm_router_kv_routing_inputs_total",
            &[("result", result)],
        )
    };
    assert!(
        eventually(Duration::from_secs(5), || inputs("tokenize") == 1.0
            && inputs("cache") == 3.0),
        "{}",
        r.metrics()
    );
}

#[test]
fn cleared_and_evicted_blocks_stop_drawing_requests() {
    // b holds 8 blocks at most: a second 6-block prompt evicts most of the first.
    let a = kv_mock("a", &[]);
    let b = kv_mock("b", &["--cache-blocks", "8"]);
    let mut r = router(&[&a, &b], &["--policy", "kv_aware", "--shards", "1"]);
    wait_subscribed(&mut r, &[&a, &b]);
    let first = prime(&r, &b, 0, 6.0);
    assert_eq!(served_by(r.port, &first), "b");
    // BlockRemoved: b keeps only 8 blocks, the newest prompt's six and two of the first.
    let second = prompt(700_000, 100);
    served_by(b.port, &second);
    assert!(
        eventually(Duration::from_secs(3), || blocks_of(&r, &b) <= 8.0),
        "{}",
        r.metrics()
    );
    // AllBlocksCleared: the worker's prefix cache was reset.
    request(b.port, "POST", "/reset_prefix_cache", &[], b"");
    assert!(
        eventually(Duration::from_secs(3), || blocks_of(&r, &b) == 0.0),
        "{}",
        r.metrics()
    );
    // The first request above was a hit; wait until the counters say so.
    assert!(
        eventually(Duration::from_secs(5), || lookups(&r, "hit") == 1.0),
        "{}",
        r.metrics()
    );
    let before = lookups(&r, "miss");
    served_by(r.port, &first);
    assert!(
        eventually(Duration::from_secs(5), || lookups(&r, "miss")
            == before + 1.0),
        "a request for a cleared prefix is not a hit:\n{}",
        r.metrics()
    );
}

/// The worker that served `body`, sent with `headers`.
fn served_with(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    body: &serde_json::Value,
) -> String {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    let r = request(port, "POST", path, &all, body.to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    r.header("x-mock-worker").unwrap().to_string()
}

#[test]
fn a_session_stays_on_its_worker_without_tokenizing_until_it_idles_out() {
    let a = kv_mock("a", &[]);
    let b = kv_mock("b", &[]);
    let ttl = Duration::from_secs(2);
    let ttl_flag = ttl.as_secs().to_string();
    let args = ["--policy", "kv_aware", "--shards", "1"];
    let mut r = router(
        &[&a, &b],
        &[
            &args[..],
            &["--kv-aware-session-affinity-ttl-secs", &ttl_flag],
        ]
        .concat(),
    );
    wait_subscribed(&mut r, &[&a, &b]);
    let on_a = prime(&r, &a, 0, 6.0);
    let on_b = prime(&r, &b, 500_000, 6.0);
    // A second prefix only b holds: a holds the first once the session sends it there.
    let only_on_b = prime(&r, &b, 600_000, 12.0);
    let session = [("x-session-id", "s1")];
    // The session's first request goes by cost, and binds it to a.
    assert_eq!(served_with(r.port, "/v1/completions", &session, &on_a), "a");
    // Then b's prefix goes to a too, as does a chat, which nobody is asked to tokenize.
    assert_eq!(served_with(r.port, "/v1/completions", &session, &on_b), "a");
    let chat = json!({"model": "m", "max_tokens": 1,
        "messages": [{"role": "user", "content": "and the same session"}]});
    assert_eq!(
        served_with(r.port, "/v1/chat/completions", &session, &chat),
        "a"
    );
    let calls = |w: &Proc| mock_stats(w)["by_path"]["/tokenize"].as_u64().unwrap_or(0);
    assert_eq!(calls(&a) + calls(&b), 0, "a bound session needs no tokens");
    // The body's session_id is the same session; without one, b's prefix goes to b.
    let mut named = only_on_b.clone();
    named["session_id"] = json!("s1");
    assert_eq!(served_with(r.port, "/v1/completions", &[], &named), "a");
    let on_b = prime(&r, &b, 700_000, 18.0);
    assert_eq!(served_with(r.port, "/v1/completions", &[], &on_b), "b");
    assert_eq!(
        served_with(r.port, "/v1/completions", &[("x-user-id", "s1")], &on_b),
        "b",
        "x-user-id does not name a kv_aware session"
    );
    let sticky = || {
        sample(
            &r,
            "vllm_router_prefix_routing_decisions_total",
            &[("policy", "kv_aware"), ("outcome", "sticky_hit")],
        )
    };
    assert!(
        eventually(Duration::from_secs(5), || sticky() == 3.0),
        "{}",
        r.metrics()
    );
    // Idle past the TTL, the session is placed by cost again (and bound anew).
    std::thread::sleep(ttl + Duration::from_millis(300));
    assert_eq!(served_with(r.port, "/v1/completions", &session, &on_b), "b");
    assert_eq!(served_with(r.port, "/v1/completions", &session, &on_a), "b");
}

#[test]
fn missed_events_are_replayed() {
    // Every second live message is lost on the way; the replay socket has them all.
    let replay = free_low_port().to_string();
    let a = kv_mock("a", &[]);
    let b = kv_mock(
        "b",
        &[
            "--kv-events-skip-every",
            "2",
            "--kv-events-replay-port",
            &replay,
        ],
    );
    let mut r = router(&[&a, &b], &["--policy", "kv_aware"]);
    wait_subscribed(&mut r, &[&a, &b]);
    prime(&r, &b, 0, 6.0);
    // Four more prompts straight to b: two of their messages are lost live.
    let bodies: Vec<_> = (1..=4).map(|k| prompt(k * 1000, 100)).collect();
    for body in &bodies {
        served_by(b.port, body);
    }
    assert!(
        eventually(Duration::from_secs(5), || blocks_of(&r, &b) >= 30.0),
        "{}",
        r.metrics()
    );
    for body in &bodies {
        assert_eq!(served_by(r.port, body), "b");
    }
    let m = r.metrics();
    let url = b.url();
    let labels = [("worker", url.as_str())];
    assert!(
        metric(&m, "vllm_router_kv_sequence_gaps_total", &labels).unwrap_or(0.0) >= 1.0,
        "{m}"
    );
    assert!(
        metric(&m, "vllm_router_kv_replays_total", &labels).unwrap_or(0.0) >= 1.0,
        "{m}"
    );
}

/// Where a burst of `n` requests for one new prompt went, sent at once over fresh
/// connections while each takes the mock `ms` to answer.
fn burst(port: u16, from: u32, n: usize, ms: u64) -> Vec<String> {
    let body = prompt(from, 200).to_string();
    let delay = (ms * 1000).to_string();
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let (body, delay) = (body.clone(), delay.clone());
            std::thread::spawn(move || {
                let headers = [
                    ("content-type", "application/json"),
                    ("x-mock-token-delay-us", delay.as_str()),
                ];
                let r = request(port, "POST", "/v1/completions", &headers, body.as_bytes());
                assert_eq!(r.status, 200, "{}", r.text());
                r.header("x-mock-worker").unwrap().to_string()
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn a_burst_of_one_new_prompt_waits_for_no_event_to_stay_together() {
    // The router hears no events at all (nothing listens where the sources are), so
    // only what it routed itself can hold the burst together: each request is still
    // in flight when the next comes, and by load alone they would spread.
    let a = mock(&["--name", "a"]);
    let b = mock(&["--name", "b"]);
    let dead = |w: &Proc| format!("{}=tcp://127.0.0.1:{}", w.url(), free_low_port());
    let (da, db) = (dead(&a), dead(&b));
    let args = [
        "--policy",
        "kv_aware",
        "--shards",
        "1",
        "--kv-event-model",
        "m",
    ];
    let sources = ["--kv-event-source", &da, "--kv-event-source", &db];
    let r = router(&[&a, &b], &[&args[..], &sources].concat());
    for (i, from) in [0, 100_000, 200_000].into_iter().enumerate() {
        let went = burst(r.port, from, 4, 300);
        assert!(went.iter().all(|w| *w == went[0]), "burst {i}: {went:?}");
    }
    let off = router(
        &[&a, &b],
        &[&args[..], &sources, &["--kv-provisional-ttl-secs", "0"]].concat(),
    );
    let went = burst(off.port, 300_000, 4, 300);
    assert!(
        went.iter().any(|w| *w != went[0]),
        "without it the burst spreads: {went:?}"
    );
}

#[test]
fn with_the_models_tokenizer_the_router_asks_no_worker_and_matches_its_blocks() {
    let dir = std::env::temp_dir().join(format!("vr-tokenizer-{}", std::process::id()));
    let made = Command::new(mock_bin())
        .arg("--write-test-tokenizer")
        .arg(&dir)
        .status()
        .unwrap();
    assert!(made.success());
    let path = dir.to_str().unwrap();
    let a = kv_mock("a", &["--tokenizer-path", path]);
    let b = kv_mock("b", &["--tokenizer-path", path]);
    let args = [
        "--policy",
        "kv_aware",
        "--shards",
        "1",
        "--tokenizer-path",
        path,
    ];
    let mut r = router(&[&a, &b], &args);
    wait_subscribed(&mut r, &[&a, &b]);
    let system = "You are a helpful assistant. Answer the question briefly and well. ".repeat(6);
    let chat = json!({"model": "m", "max_tokens": 1, "messages": [
        {"role": "system", "content": system},
        {"role": "user", "content": "What is a prefix cache? Why does it save time?"}]});
    // Straight to b until the router has its blocks (b tokenized the chat whole).
    for attempt in 0.. {
        assert!(attempt < 20, "never indexed:\n{}", r.metrics());
        assert_eq!(post_json(b.port, "/v1/chat/completions", &chat).status, 200);
        if eventually(Duration::from_secs(2), || blocks_of(&r, &b) >= 4.0) {
            break;
        }
        request(b.port, "POST", "/reset_prefix_cache", &[], b"");
    }
    for _ in 0..4 {
        let resp = post_json(r.port, "/v1/chat/completions", &chat);
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.header("x-mock-worker"), Some("b"));
    }
    assert_eq!(answered(&a, "/tokenize") + answered(&b, "/tokenize"), 0);
    // Credited every time: the router's tokens name the blocks b's events named.
    assert!(
        eventually(Duration::from_secs(5), || lookups(&r, "hit") == 4.0),
        "{}",
        r.metrics()
    );
    let tokenized = sample(
        &r,
        "vllm_router_kv_routing_inputs_total",
        &[("result", "tokenizer")],
    );
    assert_eq!(tokenized, 4.0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Requests a mock answered on `path`.
fn answered(w: &Proc, path: &str) -> u64 {
    mock_stats(w)["by_path"][path].as_u64().unwrap_or(0)
}

#[test]
fn in_p_d_mode_the_prefill_leg_follows_the_prefill_workers_blocks() {
    let pa = kv_mock("pa", &[]);
    let pb = kv_mock("pb", &[]);
    let d = mock(&["--name", "d"]);
    let args = [
        "--vllm-pd-disaggregation",
        "--prefill",
        &pa.url(),
        "--prefill",
        &pb.url(),
        "--decode",
        &d.url(),
        "--prefill-policy",
        "kv_aware",
        "--decode-policy",
        "round_robin",
        "--shards",
        "1",
    ];
    let mut r = router(&[], &args);
    wait_subscribed(&mut r, &[&pa, &pb]);
    for (owner, other, from) in [(&pb, &pa, 0), (&pa, &pb, 500_000)] {
        let body = prime(&r, owner, from, 6.0);
        let before = (
            answered(owner, "/v1/completions"),
            answered(other, "/v1/completions"),
        );
        for _ in 0..4 {
            let resp = post_json(r.port, "/v1/completions", &body);
            assert_eq!(resp.status, 200, "{}", resp.text());
            assert_eq!(resp.header("x-mock-worker"), Some("d"), "decode answers");
        }
        assert_eq!(
            answered(owner, "/v1/completions"),
            before.0 + 4,
            "every prefill leg"
        );
        assert_eq!(answered(other, "/v1/completions"), before.1);
    }
    // A chat's tokens are asked of one prefill worker.
    let resp = post_json(
        r.port,
        "/v1/chat/completions",
        &chat_body("hello", 1, false),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(answered(&pa, "/tokenize") + answered(&pb, "/tokenize"), 1);
    let prefill_decisions = || {
        sample(
            &r,
            "vllm_router_prefix_routing_decisions_total",
            &[("stage", "prefill"), ("outcome", "prefix_cost")],
        )
    };
    assert!(
        eventually(Duration::from_secs(5), || prefill_decisions() == 9.0),
        "{}",
        r.metrics()
    );
}

#[test]
fn a_dead_or_garbage_event_source_never_stops_routing() {
    let a = mock(&["--name", "a"]);
    let b = mock(&["--name", "b"]);
    // Nothing listens for a's events; b's "publisher" answers with garbage.
    let dead = format!("{}=tcp://127.0.0.1:{}", a.url(), free_low_port());
    let garbage = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let garbage_port = garbage.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in garbage.incoming().flatten() {
            use std::io::Write;
            let mut s = s;
            let _ = s.write_all(b"\xff\x00\x00\x00\x00\x00\x00\x00\x01\x7fnot zmq at all");
        }
    });
    let bad = format!("{}=tcp://127.0.0.1:{garbage_port}", b.url());
    let r = router(
        &[&a, &b],
        &[
            "--policy",
            "kv_aware",
            "--kv-event-model",
            "m",
            "--kv-event-source",
            &dead,
            "--kv-event-source",
            &bad,
        ],
    );
    let mut seen = std::collections::HashSet::new();
    for i in 0..20 {
        seen.insert(served_by(r.port, &prompt(i * 100, 40)));
    }
    let chat = post_json(r.port, "/v1/chat/completions", &chat_body("hi", 1, false));
    assert_eq!(chat.status, 200);
    assert!(!seen.is_empty());
}
