//! Load-balancing policies against real mock workers.

mod common;

use common::*;
use serde_json::json;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Named mock workers (each answers with `x-mock-worker: NAME`) behind a router.
fn cluster(names: &[&str], args: &[&str]) -> (Vec<Proc>, Router) {
    let workers: Vec<Proc> = names.iter().map(|n| mock(&["--name", n])).collect();
    let refs: Vec<&Proc> = workers.iter().collect();
    let r = router(&refs, args);
    (workers, r)
}

#[test]
fn round_robin_is_exact_over_three_workers() {
    let (_ws, r) = cluster(
        &["a", "b", "c"],
        &["--policy", "round_robin", "--shards", "1"],
    );
    let mut c = Conn::open(r.port);
    let body = chat_body("rr", 1, false).to_string();
    let order: Vec<String> = (0..9)
        .map(|_| {
            c.post("/v1/chat/completions", &body);
            worker_of(&c.read_response(false))
        })
        .collect();
    for i in 3..9 {
        assert_eq!(order[i], order[i - 3], "{order:?}");
    }
    let mut first: Vec<&String> = order[..3].iter().collect();
    first.sort();
    assert_eq!(first, ["a", "b", "c"]);
}

#[test]
fn consistent_hash_keeps_a_session_and_spreads_sessions() {
    let (_ws, r) = cluster(&["a", "b", "c"], &["--policy", "consistent_hash"]);
    let mut homes = HashMap::new();
    for s in 0..30 {
        let session = format!("session-{s}");
        let mut messages = vec![json!({"role": "user", "content": "hello"})];
        let mut seen = Vec::new();
        for turn in 0..3 {
            let body = json!({"model": "m", "messages": messages, "max_tokens": 1});
            let resp = request(
                r.port,
                "POST",
                "/v1/chat/completions",
                &[("X-Session-Id", &session)],
                body.to_string().as_bytes(),
            );
            seen.push(worker_of(&resp));
            messages.push(json!({"role": "assistant", "content": format!("turn {turn}")}));
            messages.push(json!({"role": "user", "content": "more"}));
        }
        assert!(
            seen.windows(2).all(|p| p[0] == p[1]),
            "{session} moved: {seen:?}"
        );
        *homes.entry(seen[0].clone()).or_insert(0) += 1;
        // The body's `user` field is a key too (no header).
        let body = json!({"model": "m", "prompt": "p", "max_tokens": 1, "user": session});
        let a = worker_of(&post_json(r.port, "/v1/completions", &body));
        let b = worker_of(&post_json(r.port, "/v1/completions", &body));
        assert_eq!(a, b);
    }
    assert_eq!(homes.len(), 3, "sessions did not spread: {homes:?}");
}

#[test]
fn power_of_two_avoids_a_slow_worker_under_concurrency() {
    let fast = mock(&["--name", "fast"]);
    let slow = mock(&["--name", "slow", "--token-delay-us", "100000"]);
    let r = router(&[&fast, &slow], &["--policy", "power_of_two"]);
    let port = r.port;
    let threads: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = Conn::open(port);
                let body = chat_body("p2", 4, false).to_string();
                (0..15)
                    .map(|_| {
                        c.post("/v1/chat/completions", &body);
                        worker_of(&c.read_response(false))
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut counts: HashMap<String, u32> = HashMap::new();
    for t in threads {
        for w in t.join().unwrap() {
            *counts.entry(w).or_default() += 1;
        }
    }
    let slow_share = f64::from(counts.get("slow").copied().unwrap_or(0)) / 120.0;
    assert!(
        slow_share < 0.25,
        "the slow worker got {slow_share:.2} of the requests: {counts:?}"
    );
    let metrics = r.metrics();
    assert!(
        metrics.contains("vllm_router_policy_decisions_total{policy=\"power_of_two\""),
        "{metrics}"
    );
}

#[test]
fn data_parallel_ranks_share_evenly() {
    let w = mock(&[]);
    let r = router(
        &[&w],
        &["--intra-node-data-parallel-size", "4", "--shards", "1"],
    );
    let mut c = Conn::open(r.port);
    let body = chat_body("dp", 1, false).to_string();
    for _ in 0..40 {
        c.post("/v1/chat/completions", &body);
        assert_eq!(c.read_response(false).status, 200);
    }
    let sent = request(w.port, "GET", "/mock/requests", &[], b"").json();
    let mut ranks: HashMap<String, u32> = HashMap::new();
    for req in sent.as_array().unwrap() {
        let rank = req["headers"]["x-data-parallel-rank"]
            .as_str()
            .unwrap_or("none")
            .to_string();
        *ranks.entry(rank).or_default() += 1;
    }
    assert_eq!(ranks.len(), 4, "{ranks:?}");
    assert!(ranks.values().all(|&n| n == 10), "{ranks:?}");
    let list = request(r.port, "GET", "/list_workers", &[], b"").json();
    assert_eq!(list["urls"][3], format!("{}@3", w.url()));
}

#[test]
fn cache_aware_keeps_each_shared_prefix_on_one_worker_and_uses_every_worker() {
    let (_ws, r) = cluster(&["a", "b", "c"], &["--policy", "cache_aware"]);
    // New prefixes are placed by rendezvous hashing: 30 of them leave a worker unused
    // with probability 3 x (2/3)^30, about 1 in 60,000.
    let systems: Vec<String> = (0..30)
        .map(|i| format!("You are assistant number {i}. ").repeat(30))
        .collect();
    // One keep-alive connection: one shard, so the decisions are deterministic.
    let mut c = Conn::open(r.port);
    let mut used = HashMap::new();
    for (i, system) in systems.iter().enumerate() {
        let homes: Vec<String> = (0..3)
            .map(|q| {
                c.post(
                    "/v1/chat/completions",
                    &prefixed_chat(system, &format!("question {q}")).to_string(),
                );
                worker_of(&c.read_response(false))
            })
            .collect();
        assert!(
            homes.windows(2).all(|p| p[0] == p[1]),
            "prefix {i} moved: {homes:?}"
        );
        *used.entry(homes[0].clone()).or_insert(0) += 1;
    }
    assert_eq!(used.len(), 3, "not every worker was used: {used:?}");
    // 30 first sightings are misses; the other 60 requests follow their prefix.
    let mut metrics = String::new();
    let ok = common::eventually(std::time::Duration::from_secs(3), || {
        metrics = r.metrics();
        metrics.contains("vllm_router_cache_hits_total 60")
            && metrics.contains("vllm_router_cache_misses_total 30")
    });
    assert!(ok, "{metrics}");
}

#[test]
fn cache_aware_places_a_new_prefix_once_across_shards() {
    // The shards learn each other's decisions on a 50 ms tick; a new prefix that
    // reaches both shards inside that window must still land on one worker. Fresh
    // connections spread over the two shards (SO_REUSEPORT).
    let (_ws, r) = cluster(
        &["a", "b", "c", "d"],
        &["--policy", "cache_aware", "--shards", "2"],
    );
    each_new_prefix_lands_on_one_worker(r.port);
}

#[test]
fn cache_aware_tree_stays_within_max_tree_size() {
    let (_ws, r) = cluster(
        &["a", "b"],
        &["--policy", "cache_aware", "--max-tree-size", "20000"],
    );
    let mut c = Conn::open(r.port);
    for i in 0..300 {
        let body = json!({"prompt": format!("{i} unique {}", "z".repeat(1000)), "max_tokens": 1});
        c.post("/v1/completions", &body.to_string());
        assert_eq!(c.read_response(false).status, 200);
    }
    let sizes = |text: &str| -> Vec<f64> {
        text.lines()
            .filter(|l| l.starts_with("vllm_router_tree_size{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect()
    };
    let mut text = String::new();
    assert!(common::eventually(
        std::time::Duration::from_secs(3),
        || {
            text = r.metrics();
            let s = sizes(&text);
            s.len() == 2 && s.iter().all(|&v| v > 0.0)
        }
    ));
    let s = sizes(&text);
    assert!(s.iter().all(|&v| v > 0.0 && v <= 20000.0), "{s:?}");
}

#[test]
fn power_of_two_sees_load_from_other_clients_through_worker_metrics() {
    let busy = mock(&["--name", "busy", "--token-delay-us", "200000"]);
    let idle = mock(&["--name", "idle"]);
    let r = router(&[&busy, &idle], &["--policy", "power_of_two"]);
    // Another client keeps 6 long streams on `busy`, not through this router.
    let mut others: Vec<Conn> = (0..6)
        .map(|_| {
            let mut c = Conn::open(busy.port);
            c.post(
                "/v1/completions",
                &json!({"prompt": "x", "max_tokens": 100, "stream": true}).to_string(),
            );
            c
        })
        .collect();
    for c in &mut others {
        c.read_until(b"data: {");
    }
    assert!(common::eventually(
        std::time::Duration::from_secs(4),
        || {
            let v = request(r.port, "GET", "/workers", &[], b"").json();
            v["workers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|w| w["external_load"] == 6)
        }
    ));
    // The shards get the view on the next load broadcast (every 50 ms): once eight
    // requests in a row went to the idle worker (1 in 256 by chance), they have it.
    let idle_in_a_row = |n| {
        (0..n).all(|_| {
            let resp = post_json(r.port, "/v1/chat/completions", &chat_body("x", 1, false));
            worker_of(&resp) == "idle"
        })
    };
    assert!(eventually(std::time::Duration::from_secs(4), || {
        idle_in_a_row(8)
    }));
    for _ in 0..10 {
        let resp = post_json(r.port, "/v1/chat/completions", &chat_body("x", 1, false));
        assert_eq!(worker_of(&resp), "idle");
    }
}

#[test]
fn a_routers_own_requests_never_show_as_another_clients_load() {
    // The worker's queue is compared with the router's own in-flight count when the
    // scrape (every second) lands: requests that end after it must not look like
    // someone else's for the rest of the second.
    let w = mock(&["--name", "w", "--token-delay-us", "200000"]);
    let r = router(&[&w], &["--policy", "power_of_two"]);
    let view = || {
        let v = request(r.port, "GET", "/workers", &[], b"").json();
        let w = v["workers"][0].clone();
        (
            w["load"].as_u64().unwrap(),
            w["external_load"].as_u64().unwrap(),
        )
    };
    let body = json!({"prompt": "x", "max_tokens": 100, "stream": true}).to_string();
    let mut streams: Vec<Conn> = (0..6)
        .map(|_| {
            let mut c = Conn::open(r.port);
            c.post("/v1/completions", &body);
            c
        })
        .collect();
    for c in &mut streams {
        c.read_until(b"data: {");
    }
    let settled = eventually(Duration::from_secs(5), || view() == (6, 0));
    assert!(settled, "{:?}", view());
    // Over a scrape interval and a bit: a scrape lands while the six are running.
    let until = Instant::now() + Duration::from_millis(1300);
    while Instant::now() < until {
        assert_eq!(view(), (6, 0));
    }
    drop(streams);
    let ended = eventually(Duration::from_secs(5), || view().0 == 0);
    assert!(ended, "{:?}", view());
    let until = Instant::now() + Duration::from_millis(1300);
    while Instant::now() < until {
        assert_eq!(
            view(),
            (0, 0),
            "the router's own ended requests counted as external"
        );
    }
}

#[test]
fn cache_aware_shards_share_what_they_learn() {
    let (_ws, r) = cluster(
        &["a", "b", "c"],
        &["--policy", "cache_aware", "--shards", "2"],
    );
    // Teach one shard three prefixes over one connection; they land on three workers,
    // so the last one's home is not where an uninformed shard would send it.
    let mut c = Conn::open(r.port);
    let mut home = String::new();
    for k in 0..3 {
        let system = format!("Shared system prompt number {k} about routing. ").repeat(40);
        c.post(
            "/v1/chat/completions",
            &prefixed_chat(&system, "first").to_string(),
        );
        home = worker_of(&c.read_response(false));
    }
    let system = "Shared system prompt number 2 about routing. ".repeat(40);
    // Inserts reach the other shard within a tick (50 ms) plus the control core's hop:
    // wait until it has applied all three (the shards' counters arrive once a second).
    let shared = || metric(&r.metrics(), "vllm_router_cache_shared_inserts_total", &[]);
    assert!(
        eventually(std::time::Duration::from_secs(10), || shared() >= Some(3.0)),
        "the other shard never learned the prefixes: {:?}",
        shared()
    );
    // New connections land on both shards (SO_REUSEPORT); all must know the prefix.
    for q in 0..12 {
        let resp = post_json(
            r.port,
            "/v1/chat/completions",
            &prefixed_chat(&system, &format!("q{q}")),
        );
        assert_eq!(worker_of(&resp), home, "request {q} missed the shared tree");
    }
}

fn chat_in(port: u16, session: &str) -> String {
    let body = chat_body("hi", 1, false).to_string();
    worker_of(&request(
        port,
        "POST",
        "/v1/chat/completions",
        &[
            ("x-session-id", session),
            ("content-type", "application/json"),
        ],
        body.as_bytes(),
    ))
}

#[test]
fn sticky_least_loaded_spreads_sessions_keeps_them_and_frees_finished_ones() {
    let (_ws, r) = cluster(
        &["a", "b", "c"],
        &["--policy", "sticky_least_loaded", "--shards", "1"],
    );
    let homes: Vec<String> = (0..6).map(|i| chat_in(r.port, &format!("s{i}"))).collect();
    for w in ["a", "b", "c"] {
        assert_eq!(homes.iter().filter(|h| *h == w).count(), 2, "{homes:?}");
    }
    for (i, home) in homes.iter().enumerate() {
        assert_eq!(&chat_in(r.port, &format!("s{i}")), home);
    }
    // Finished: its worker has a free place, which the next new session takes.
    let done = request(r.port, "POST", "/finish_session?session_id=s0", &[], b"");
    assert_eq!(done.status, 200);
    assert_eq!(chat_in(r.port, "fresh"), homes[0]);
}

#[test]
fn sticky_least_loaded_keeps_a_session_across_shards() {
    let (_ws, r) = cluster(
        &["a", "b", "c", "d"],
        &["--policy", "sticky_least_loaded", "--shards", "2"],
    );
    let home = chat_in(r.port, "conversation-1");
    // The shard that opened it tells the other (50 ms batches, counted once a second).
    let shared = common::eventually(std::time::Duration::from_secs(5), || {
        r.metrics().contains("vllm_router_sessions_shared_total 1")
    });
    assert!(shared, "{}", r.metrics());
    // Fresh connections land on either shard: all go to the session's worker.
    for _ in 0..12 {
        assert_eq!(chat_in(r.port, "conversation-1"), home);
    }
}

#[test]
fn igw_routes_each_model_to_the_workers_that_serve_it() {
    let a1 = mock(&["--name", "a1", "--model", "model-a"]);
    let a2 = mock(&["--name", "a2", "--model", "model-a"]);
    let b1 = mock(&["--name", "b1", "--model", "model-b"]);
    let r = router(
        &[&a1, &a2, &b1],
        &["--enable-igw", "--policy", "round_robin", "--shards", "1"],
    );
    let ask = |model: &str| {
        post_json(
            r.port,
            "/v1/chat/completions",
            &json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}),
        )
    };
    let mut a_workers: Vec<String> = (0..4).map(|_| worker_of(&ask("model-a"))).collect();
    a_workers.sort();
    assert_eq!(
        a_workers,
        ["a1", "a1", "a2", "a2"],
        "model-a's own round robin"
    );
    for _ in 0..3 {
        assert_eq!(worker_of(&ask("model-b")), "b1");
    }
    // A model nobody serves: OpenAI's 404, not some worker's answer.
    let unknown = ask("model-z");
    assert_eq!(unknown.status, 404, "{}", unknown.text());
    let err = unknown.json();
    assert_eq!(err["error"]["code"], "model_not_found");
    assert_eq!(err["error"]["param"], "model");
    // /v1/models lists the union, in OpenAI's shape.
    let models = request(r.port, "GET", "/v1/models", &[], b"").json();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        (models["object"].as_str(), ids),
        (Some("list"), vec!["model-a", "model-b"])
    );
    // A worker added later is asked for its models within seconds.
    let c1 = mock(&["--name", "c1", "--model", "model-c"]);
    let add = request(
        r.port,
        "POST",
        &format!("/add_worker?url={}", c1.url()),
        &[],
        b"",
    );
    assert_eq!(add.status, 200, "{}", add.text());
    let routed = common::eventually(std::time::Duration::from_secs(15), || {
        let resp = ask("model-c");
        resp.status == 200 && resp.header("x-mock-worker") == Some("c1")
    });
    assert!(routed);
}
