//! kv_aware's routing beyond the cost of cached blocks: session affinity, bursts held
//! together by provisional copies, tokenizing on the router with the model's own
//! tokenizer, and the prefill leg in P/D mode, against mock workers publishing real
//! KV events.

mod common;

use common::kv::*;
use common::*;
use serde_json::json;
use std::process::Command;
use std::time::Duration;

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
    assert!(
        eventually(Duration::from_secs(5), || decisions(
            &r,
            "regular",
            "sticky_hit"
        ) == 3.0),
        "{}",
        r.metrics()
    );
    // Idle past the TTL, the session is placed by cost again (and bound anew).
    std::thread::sleep(ttl + Duration::from_millis(300));
    assert_eq!(served_with(r.port, "/v1/completions", &session, &on_b), "b");
    assert_eq!(served_with(r.port, "/v1/completions", &session, &on_a), "b");
}

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

/// kv_aware over `a` and `b` with `shards` shards, its event sources where nothing
/// listens: the router hears no events at all.
fn deaf_kv_aware(a: &Proc, b: &Proc, shards: &str) -> Vec<String> {
    let dead = |w: &Proc| format!("{}=tcp://127.0.0.1:{}", w.url(), free_low_port());
    let mut args: Vec<String> = ["--policy", "kv_aware", "--shards", shards]
        .map(String::from)
        .into();
    args.extend(["--kv-event-model".into(), "m".into()]);
    for w in [a, b] {
        args.extend(["--kv-event-source".into(), dead(w)]);
    }
    args
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

#[test]
fn a_burst_of_one_new_prompt_waits_for_no_event_to_stay_together() {
    // The router hears no events at all (nothing listens where the sources are), so
    // only what it routed itself can hold the burst together: each request is still
    // in flight when the next comes, and by load alone they would spread.
    let (a, b) = (mock(&["--name", "a"]), mock(&["--name", "b"]));
    let args = deaf_kv_aware(&a, &b, "1");
    let r = router(&[&a, &b], &strs(&args));
    for (i, from) in [0, 100_000, 200_000].into_iter().enumerate() {
        let went = burst(r.port, from, 4, 300);
        assert!(went.iter().all(|w| *w == went[0]), "burst {i}: {went:?}");
    }
    let off = router(
        &[&a, &b],
        &[&strs(&args)[..], &["--kv-provisional-ttl-secs", "0"]].concat(),
    );
    let went = burst(off.port, 300_000, 4, 300);
    assert!(
        went.iter().any(|w| *w != went[0]),
        "without it the burst spreads: {went:?}"
    );
}

#[test]
fn shards_share_provisional_copies_so_a_burst_over_both_stays_together() {
    // No events (nothing listens where the sources are): only provisional copies hold
    // a new prompt to its first worker. Each prompt's first request is held in flight;
    // once the other shard has its copies and the router sees that worker loaded, the
    // rest come over fresh connections, which land on either shard. By load alone
    // those reaching the other shard would go to the idle worker.
    let (a, b) = (mock(&["--name", "a"]), mock(&["--name", "b"]));
    let r = router(&[&a, &b], &strs(&deaf_kv_aware(&a, &b, "2")));
    for (i, from) in (0..6u32).map(|i| (i, i * 100_000)) {
        let port = r.port;
        let first = std::thread::spawn(move || {
            let body = prompt(from, 200).to_string();
            let headers = [
                ("content-type", "application/json"),
                ("x-mock-token-delay-us", "1500000"),
            ];
            let r = request(port, "POST", "/v1/completions", &headers, body.as_bytes());
            assert_eq!(r.status, 200, "{}", r.text());
            r.header("x-mock-worker").unwrap().to_string()
        });
        let ready = eventually(Duration::from_secs(10), || {
            let m = r.metrics();
            let shared = metric(&m, "vllm_router_kv_provisional_shared_total", &[]);
            let loaded = [a.url(), b.url()]
                .iter()
                .any(|url| metric(&m, "vllm_router_worker_load", &[("worker", url)]) == Some(1.0));
            shared.is_some_and(|n| n > f64::from(i)) && loaded
        });
        assert!(ready, "prompt {i}: copies not shared: {}", r.metrics());
        let mut went = burst(r.port, from, 3, 0);
        went.push(first.join().unwrap());
        assert!(went.iter().all(|w| *w == went[0]), "prompt {i}: {went:?}");
    }
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
    prime_chat(&r, &b, &chat, 4.0);
    chats_go_to(&r, &chat, 4, "b");
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
    let timed = sample(
        &r,
        "vllm_router_kv_prepare_seconds_count",
        &[("source", "tokenizer")],
    );
    assert_eq!(timed, 4.0, "each timed");
    let _ = std::fs::remove_dir_all(&dir);
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
    assert!(
        eventually(Duration::from_secs(5), || decisions(
            &r,
            "prefill",
            "prefix_cost"
        ) == 9.0),
        "{}",
        r.metrics()
    );
}

/// A P/D router over prefill worker `p`, priced by kv_aware, and decode worker `d`.
fn kv_pd_router(p: &Proc, d: &Proc, extra: &[&str]) -> Router {
    let (p, d) = (p.url(), d.url());
    let mut args = vec!["--vllm-pd-disaggregation", "--prefill", &p, "--decode", &d];
    args.extend_from_slice(&["--prefill-policy", "kv_aware"]);
    args.extend_from_slice(extra);
    router(&[], &args)
}

#[test]
fn p_d_gauges_show_a_request_waiting_on_its_prefill() {
    // The prefill worker takes 30 s to answer: the request stays in its prefill leg.
    let p = kv_mock("p", &["--slow-headers-ms", "30000"]);
    let d = mock(&["--name", "d"]);
    let r = kv_pd_router(&p, &d, &[]);
    let gauge = |name: &str, w: &Proc| sample(&r, name, &[("worker", &w.url())]);
    let now = |tokens: f64, pending: f64| {
        gauge("vllm_router_pd_active_prefill_tokens", &p) == tokens
            && gauge("vllm_router_pd_prefill_occupancy", &p) == pending
            && gauge("vllm_router_pd_pending_decode_requests", &d) == pending
            && gauge("vllm_router_pd_unknown_prefill_requests", &p) == 0.0
            && gauge("vllm_router_pd_active_decode_requests", &d) == 0.0
    };
    {
        let mut c = Conn::open(r.port);
        // 100 token ids, none cached anywhere: all 100 to prefill.
        c.post("/v1/completions", &prompt(0, 100).to_string());
        assert!(
            eventually(Duration::from_secs(5), || now(100.0, 1.0)),
            "{}",
            r.metrics()
        );
    }
    // The client left: its prefill leg was cancelled and nothing waits.
    assert!(
        eventually(Duration::from_secs(5), || now(0.0, 0.0)),
        "{}",
        r.metrics()
    );
}

#[test]
fn p_d_metrics_show_what_kv_aware_priced_as_0_1_17_names_them() {
    // Each prefill answer takes 30 ms: every decode leg waits that long.
    let p = kv_mock("p", &["--ttft-us", "30000"]);
    let d = mock(&["--name", "d"]);
    let mut r = kv_pd_router(&p, &d, &["--shards", "1"]);
    wait_subscribed(&mut r, &[&p]);
    // 100 tokens, of which the prefill worker holds 6 blocks of 16: 96 credited, 4 to
    // prefill, twice; then 100 tokens it holds none of.
    let cached = prime(&r, &p, 0, 6.0);
    for body in [&cached, &cached, &prompt(900_000, 100)] {
        let resp = post_json(r.port, "/v1/completions", body);
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    let m = |name: &str, labels: &[(&str, &str)]| sample(&r, name, labels);
    assert!(
        eventually(Duration::from_secs(5), || m(
            "vllm_router_pd_new_prefill_tokens_count",
            &[]
        ) == 3.0),
        "{}",
        r.metrics()
    );
    let decided = [("fallback", "none")];
    assert_eq!(m("vllm_router_pd_prefill_decisions_total", &decided), 3.0);
    assert_eq!(m("vllm_router_pd_credited_prefix_tokens_total", &[]), 192.0);
    assert_eq!(m("vllm_router_pd_new_prefill_tokens_sum", &[]), 108.0);
    // Quantiles come from buckets 2.2% wide.
    let near = |got: f64, want: f64| (got / want - 1.0).abs() < 0.02;
    let least = m("vllm_router_pd_new_prefill_tokens", &[("quantile", "0")]);
    let most = m("vllm_router_pd_new_prefill_tokens", &[("quantile", "1")]);
    assert!(near(least, 4.0) && near(most, 100.0), "{least} {most}");
    assert_eq!(m("vllm_router_pd_decode_pending_seconds_count", &[]), 3.0);
    let waited = m(
        "vllm_router_pd_decode_pending_seconds",
        &[("quantile", "0")],
    );
    assert!(
        waited >= 0.029,
        "decode legs waited {waited} s for a 30 ms prefill"
    );
    let route = [("route", "/v1/completions")];
    assert_eq!(
        m("vllm_router_pd_request_duration_seconds_count", &route),
        3.0
    );
    assert!(m("vllm_router_pd_request_duration_seconds_sum", &route) >= 0.09);
    let text = r.metrics();
    for kind in [
        "vllm_router_pd_new_prefill_tokens summary",
        "vllm_router_pd_decode_pending_seconds summary",
        "vllm_router_pd_request_duration_seconds histogram",
        "vllm_router_pd_credited_prefix_tokens_total counter",
    ] {
        assert!(text.contains(&format!("# TYPE {kind}")), "{kind}:\n{text}");
    }
}

#[test]
fn with_igw_each_models_policy_follows_its_own_workers_blocks() {
    let a1 = kv_mock("a1", &["--model", "model-a"]);
    let a2 = kv_mock("a2", &["--model", "model-a"]);
    let b1 = kv_mock("b1", &["--model", "model-b"]);
    let args = ["--enable-igw", "--policy", "kv_aware", "--shards", "1"];
    let mut r = router(&[&a1, &a2, &b1], &args);
    wait_subscribed(&mut r, &[&a1, &a2, &b1]);
    let as_model = |body: &serde_json::Value, model: &str| {
        let mut b = body.clone();
        b["model"] = json!(model);
        b
    };
    // Each model's policy exists once its workers listed it.
    let ready = eventually(Duration::from_secs(15), || {
        ["model-a", "model-b"].iter().all(|m| {
            let r = post_json(r.port, "/v1/completions", &as_model(&prompt(900_000, 8), m));
            r.status == 200
        })
    });
    assert!(ready, "{}", r.metrics());
    let body = prime(&r, &a2, 0, 6.0);
    for _ in 0..4 {
        assert_eq!(served_by(r.port, &as_model(&body, "model-a")), "a2");
    }
    // model-b's only worker serves it whatever model-a's workers hold.
    assert_eq!(served_by(r.port, &as_model(&body, "model-b")), "b1");
    assert!(
        eventually(Duration::from_secs(5), || lookups(&r, "hit") == 4.0),
        "{}",
        r.metrics()
    );
}
