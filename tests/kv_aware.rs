//! kv_aware against mock workers that publish real KV events over ZMQ: the router
//! learns what each worker holds from the worker itself, so traffic that never passed
//! through it counts too. (Sessions, bursts, the router's own tokenizer and P/D are in
//! tests/kv_aware_routing.rs.)

mod common;

use common::kv::*;
use common::*;
use serde_json::json;
use std::time::Duration;

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
    // Each had 96 of its 100 tokens cached on its worker.
    let ratio = |le: &str| {
        let name = "vllm_router_kv_matched_prefix_ratio_bucket";
        sample(&r, name, &[("le", le)])
    };
    assert_eq!(
        (ratio("0.95"), ratio("0.98")),
        (0.0, 36.0),
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
    prime_chat(&r, &b, &chat, 20.0);
    chats_go_to(&r, &chat, 4, "b");
    // One /tokenize call for four identical requests, to one worker.
    assert_eq!(answered(&a, "/tokenize") + answered(&b, "/tokenize"), 1);
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

#[test]
fn a_restarted_router_learns_what_workers_still_buffer_for_replay() {
    // b keeps its batches for replay (as vLLM's publisher does); a does not.
    let replay = free_low_port().to_string();
    let a = kv_mock("a", &[]);
    let b = kv_mock("b", &["--kv-events-replay-port", &replay]);
    let mut first = router(&[&a, &b], &["--policy", "kv_aware"]);
    wait_subscribed(&mut first, &[&a, &b]);
    let body = prime(&first, &b, 0, 6.0);
    drop(first);
    // While no router listens, b caches one more prompt.
    let unseen = prompt(900_000, 100);
    served_by(b.port, &unseen);
    let mut second = router(&[&a, &b], &["--policy", "kv_aware"]);
    wait_subscribed(&mut second, &[&a, &b]);
    assert!(
        eventually(Duration::from_secs(5), || blocks_of(&second, &b) >= 12.0),
        "the new router's index is empty:\n{}",
        second.metrics()
    );
    for body in [&body, &unseen] {
        assert_eq!(served_by(second.port, body), "b");
    }
    assert!(
        eventually(Duration::from_secs(5), || lookups(&second, "hit") >= 2.0),
        "{}",
        second.metrics()
    );
}

/// Where a burst of `n` requests for one new prompt went, sent at once over fresh
/// connections while each takes the mock `ms` to answer.
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

/// A completion of the 16 tokens `0..16` followed by 84 others from `rest`.
fn one_block_then(rest: u32) -> serde_json::Value {
    let tokens: Vec<u32> = (0..16).chain(rest..rest + 84).collect();
    json!({"model": "m", "max_tokens": 1, "prompt": tokens})
}

#[test]
fn load_outweighs_a_small_overlap_as_the_cost_says() {
    let a = kv_mock("a", &[]);
    let b = kv_mock("b", &[]);
    // 0.1.17's load, requests in flight (the default prices a prompt this cold by
    // recent traffic: tested below).
    let mut r = router(
        &[&a, &b],
        &[
            "--policy",
            "kv_aware",
            "--shards",
            "1",
            "--kv-cold-placement",
            "load",
        ],
    );
    wait_subscribed(&mut r, &[&a, &b]);
    // b holds one block (16 tokens) of each prompt below: it prefills 84, a 100.
    for attempt in 0.. {
        assert!(attempt < 20, "never indexed:\n{}", r.metrics());
        served_by(b.port, &prompt(0, 20));
        if eventually(Duration::from_secs(2), || blocks_of(&r, &b) >= 1.0) {
            break;
        }
        // Published before the router's subscription joined: store it again.
        request(b.port, "POST", "/reset_prefix_cache", &[], b"");
    }
    assert_eq!(
        served_by(r.port, &one_block_then(10_000)),
        "b",
        "84 x 1 < 100"
    );
    // One slow request in flight to b: 84 x sqrt(1 + 1) = 119 > 100 x 1, so a
    // (the default --kv-load-exponent 0.5; 0.1.17's 1 gives 168).
    let slow = one_block_then(20_000).to_string();
    let port = r.port;
    let held = std::thread::spawn(move || {
        let headers = [
            ("content-type", "application/json"),
            ("x-mock-token-delay-us", "3000000"),
        ];
        let resp = request(port, "POST", "/v1/completions", &headers, slow.as_bytes());
        resp.header("x-mock-worker").unwrap().to_string()
    });
    let in_flight = eventually(Duration::from_secs(5), || {
        let w = metric(
            &r.metrics(),
            "vllm_router_worker_load",
            &[("worker", &b.url())],
        );
        w == Some(1.0)
    });
    assert!(in_flight, "{}", r.metrics());
    assert_eq!(served_by(r.port, &one_block_then(30_000)), "a", "119 > 100");
    assert_eq!(held.join().unwrap(), "b");
}

/// New prompts one at a time, each sharing only its first block (16 of 100 tokens)
/// with the others: 0.1.17's load (nothing in flight) credits that block and sends
/// every one to the worker that took the first; by default the worker that took
/// the recent traffic counts as busier, and the prompts spread.
#[test]
fn cold_prompts_one_at_a_time_spread_over_the_workers() {
    let a = kv_mock("a", &[]);
    let b = kv_mock("b", &[]);
    let spread = |extra: &[&str]| {
        let mut args = vec!["--policy", "kv_aware", "--shards", "1"];
        args.extend_from_slice(extra);
        let mut r = router(&[&a, &b], &args);
        wait_subscribed(&mut r, &[&a, &b]);
        let mut served = [0; 2];
        for k in 0..6 {
            let w = served_by(r.port, &one_block_then(40_000 + k * 1_000));
            served[usize::from(w == "b")] += 1;
        }
        request(a.port, "POST", "/reset_prefix_cache", &[], b"");
        request(b.port, "POST", "/reset_prefix_cache", &[], b"");
        served
    };
    let by_default = spread(&[]);
    assert!(by_default.iter().all(|n| *n >= 2), "a, b: {by_default:?}");
    let by_load = spread(&["--kv-cold-placement", "load"]);
    assert!(
        by_load.contains(&6),
        "0.1.17: one worker takes all; a, b: {by_load:?}"
    );
}

/// Two workers hold the same 100 tokens: `a` as the request `plain`, `b` as `plain`
/// changed by `vary` (another salt, an adapter), which vLLM keys apart. Each request
/// follows the worker holding its own blocks. Returns the router, the workers (alive
/// while they are held) and the plain request.
fn same_tokens_keyed_apart(
    a_args: &[&str],
    b_args: &[&str],
    vary: impl Fn(&mut serde_json::Value),
) -> (Router, [Proc; 2], serde_json::Value) {
    let a = kv_mock("a", a_args);
    let b = kv_mock("b", b_args);
    let mut r = router(&[&a, &b], &["--policy", "kv_aware", "--shards", "1"]);
    wait_subscribed(&mut r, &[&a, &b]);
    let plain = prime(&r, &a, 0, 6.0);
    let mut varied = plain.clone();
    vary(&mut varied);
    prime_with(&r, &b, "/v1/completions", &varied, 6.0);
    for _ in 0..4 {
        assert_eq!(served_by(r.port, &varied), "b");
        assert_eq!(served_by(r.port, &plain), "a");
    }
    (r, [a, b], plain)
}

/// vLLM hashes a request's `cache_salt` into its first block, so the same tokens under
/// another salt (or none) are other blocks; it names the salt in that block's
/// `extra_keys`. And a request asking for `prompt_logprobs` computes its whole prompt.
#[test]
fn a_cache_salt_is_matched_only_by_blocks_cached_under_it() {
    // b: vLLM's positional encoding, extra_keys its eighth field.
    let (r, _workers, plain) =
        same_tokens_keyed_apart(&["--kv-events-encoding", "map"], &[], |v| {
            v["cache_salt"] = json!("tenant-b")
        });
    // Another tenant's salt, and prompt logprobs, are credited nowhere.
    let mut other = plain.clone();
    other["cache_salt"] = json!("tenant-c");
    served_by(r.port, &other);
    let mut logprobs = plain.clone();
    logprobs["prompt_logprobs"] = json!(1);
    served_by(r.port, &logprobs);
    assert!(
        eventually(Duration::from_secs(5), || lookups(&r, "hit") == 8.0
            && lookups(&r, "miss") == 2.0),
        "{}",
        r.metrics()
    );
}

/// vLLM hashes a LoRA adapter's name into every block of its requests: the base
/// model's cached prompt is no use to the adapter's requests, nor theirs to it.
#[test]
fn a_lora_adapter_s_requests_follow_that_adapter_s_blocks() {
    let adapters = ["--lora-adapters", "sql,chat"];
    let b_args = ["--lora-adapters", "sql,chat", "--kv-events-encoding", "map"];
    let (r, _workers, _) =
        same_tokens_keyed_apart(&adapters, &b_args, |v| v["model"] = json!("sql"));
    assert!(
        eventually(Duration::from_secs(5), || lookups(&r, "hit") == 8.0),
        "{}",
        r.metrics()
    );
}
