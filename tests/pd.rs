//! Prefill/decode disaggregation (vLLM NIXL flow) against mock workers in the prefill
//! and decode roles.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::HashMap;

fn pd_router(prefill: &[&Proc], decode: &[&Proc], args: &[&str]) -> Router {
    let mut all: Vec<String> = vec!["--vllm-pd-disaggregation".into()];
    for p in prefill {
        all.extend(["--prefill".into(), p.url()]);
    }
    for d in decode {
        all.extend(["--decode".into(), d.url()]);
    }
    all.extend(args.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    router(&[], &refs)
}

fn expected_prefill_body(original: &Value) -> Value {
    let mut p = original.clone();
    let o = p.as_object_mut().unwrap();
    o.insert("max_tokens".into(), json!(1));
    o.insert("stream".into(), json!(false));
    o.remove("stream_options");
    o.insert(
        "kv_transfer_params".into(),
        json!({"do_remote_decode": true, "do_remote_prefill": false, "remote_engine_id": null,
               "remote_block_ids": null, "remote_host": null, "remote_port": null}),
    );
    p
}

#[test]
fn both_legs_get_the_exact_bodies_for_chat_and_completions_streamed_or_not() {
    let p = mock(&["--name", "p"]);
    let d = mock(&["--name", "d"]);
    let r = pd_router(&[&p], &[&d], &[]);
    let cases = [
        (
            "/v1/chat/completions",
            json!({"model": "mock-model", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 4, "stream": false}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "mock-model", "messages": [{"role": "user", "content": "stream me"}], "max_tokens": 4, "stream": true, "stream_options": {"include_usage": true}}),
        ),
        (
            "/v1/completions",
            json!({"model": "mock-model", "prompt": "once upon", "max_tokens": 3}),
        ),
        (
            "/v1/completions",
            json!({"model": "mock-model", "prompt": "a stream", "max_tokens": 3, "stream": true}),
        ),
    ];
    for (i, (path, body)) in cases.iter().enumerate() {
        let resp = post_json(r.port, path, body);
        assert_eq!(resp.status, 200, "{path}: {}", resp.text());
        assert_eq!(
            resp.header("x-mock-worker"),
            Some("d"),
            "the answer is the decode leg's"
        );
        let streamed = body["stream"] == json!(true);
        if streamed {
            assert!(resp.text().contains("data: [DONE]"), "{}", resp.text());
        } else {
            assert!(resp.json()["choices"].is_array(), "{}", resp.text());
        }
        let pre = mock_requests(&p);
        let dec = mock_requests(&d);
        assert_eq!(pre.len(), i + 1);
        assert_eq!(dec.len(), i + 1);
        let (pre, dec) = (&pre[i], &dec[i]);
        assert_eq!(pre["path"], *path);
        assert_eq!(dec["path"], *path);
        assert_eq!(pre["body"], expected_prefill_body(body), "prefill body");
        // Decode: the original plus the prefill answer's transfer params, verbatim.
        let params = &dec["body"]["kv_transfer_params"];
        assert_eq!(params["do_remote_prefill"], true, "{dec}");
        assert_eq!(params["remote_engine_id"], "engine-p", "{dec}");
        let mut without = dec["body"].clone();
        without
            .as_object_mut()
            .unwrap()
            .remove("kv_transfer_params");
        assert_eq!(without, *body, "decode body");
        // One request id on both legs, naming both workers.
        let id = pre["headers"]["x-request-id"].as_str().unwrap();
        assert_eq!(dec["headers"]["x-request-id"], id);
        let prefix = format!(
            "___prefill_addr_127.0.0.1:{}___decode_addr_127.0.0.1:{}_",
            p.port, d.port
        );
        assert!(id.starts_with(&prefix), "{id}");
        assert_eq!(resp.header("x-request-id"), Some(id));
    }
    // Each shard sends its counters once a second: wait until every shard's have come.
    let route = [("route", "/v1/chat/completions")];
    let prefill_legs = [("worker", p.url())];
    let labels: Vec<(&str, &str)> = prefill_legs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut m = String::new();
    let counted = eventually(std::time::Duration::from_secs(5), || {
        m = r.metrics();
        metric(&m, "vllm_router_pd_requests_total", &route) == Some(2.0)
            && metric(&m, "vllm_router_pd_prefill_requests_total", &labels) == Some(4.0)
            && m.contains("vllm_router_pd_decode_duration_seconds_count 4")
    });
    assert!(counted, "{m}");
}

#[test]
fn a_client_leaving_during_the_prefill_leg_cancels_it() {
    let p = mock(&["--slow-headers-ms", "30000"]);
    let d = mock(&[]);
    let r = pd_router(&[&p], &[&d], &[]);
    {
        let mut c = Conn::open(r.port);
        c.post(
            "/v1/completions",
            &json!({"model": "m", "prompt": "x"}).to_string(),
        );
        assert!(eventually(std::time::Duration::from_secs(2), || {
            mock_stats(&p)["generation_requests"] == 1
        }));
    }
    assert!(
        eventually(std::time::Duration::from_secs(2), || {
            mock_stats(&p)["cancelled"] == 1
        }),
        "{}",
        mock_stats(&p)
    );
    assert_eq!(mock_stats(&d)["generation_requests"], 0);
}

#[test]
fn an_unpriced_prefill_leg_shows_in_the_p_d_gauges_while_it_runs() {
    let p = mock(&["--slow-headers-ms", "30000"]);
    let d = mock(&[]);
    let r = pd_router(&[&p], &[&d], &[]);
    // 0.1.17's labels: the worker, and its data-parallel ranks together.
    let gauge = |name: &str, w: &Proc| {
        let labels = [("worker", w.url()), ("rank", "aggregate".to_string())];
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        metric(&r.metrics(), name, &labels).unwrap_or(-1.0)
    };
    let now = |unknown: f64, pending: f64| {
        gauge("vllm_router_pd_unknown_prefill_requests", &p) == unknown
            && gauge("vllm_router_pd_prefill_occupancy", &p) == unknown
            && gauge("vllm_router_pd_pending_decode_requests", &d) == pending
            && gauge("vllm_router_pd_active_prefill_tokens", &p) == 0.0
    };
    {
        let mut c = Conn::open(r.port);
        c.post(
            "/v1/completions",
            &json!({"model": "m", "prompt": "x"}).to_string(),
        );
        assert!(
            eventually(std::time::Duration::from_secs(5), || now(1.0, 1.0)),
            "{}",
            r.metrics()
        );
    }
    assert!(
        eventually(std::time::Duration::from_secs(5), || now(0.0, 0.0)),
        "{}",
        r.metrics()
    );
}

#[test]
fn two_prefill_and_three_decode_workers_with_their_own_policies() {
    let ps: Vec<Proc> = ["p0", "p1"].iter().map(|n| mock(&["--name", n])).collect();
    let ds: Vec<Proc> = ["d0", "d1", "d2"]
        .iter()
        .map(|n| mock(&["--name", n]))
        .collect();
    let r = pd_router(
        &ps.iter().collect::<Vec<_>>(),
        &ds.iter().collect::<Vec<_>>(),
        &[
            "--prefill-policy",
            "consistent_hash",
            "--decode-policy",
            "round_robin",
            "--shards",
            "1",
        ],
    );
    let mut decode_counts: HashMap<String, u32> = HashMap::new();
    for i in 0..12 {
        let session = format!("s{}", i % 3);
        let body = chat_body(&format!("q{i}"), 2, false).to_string();
        let resp = request(
            r.port,
            "POST",
            "/v1/chat/completions",
            &[("x-session-id", &session)],
            body.as_bytes(),
        );
        assert_eq!(resp.status, 200, "{}", resp.text());
        *decode_counts
            .entry(resp.header("x-mock-worker").unwrap().to_string())
            .or_default() += 1;
    }
    // round_robin on decode: exactly even.
    assert_eq!(decode_counts.len(), 3, "{decode_counts:?}");
    assert!(decode_counts.values().all(|&n| n == 4), "{decode_counts:?}");
    // consistent_hash on prefill: each session always prefills on the same worker.
    let mut home: HashMap<String, String> = HashMap::new();
    for p in &ps {
        let name = mock_stats(p)["name"].as_str().unwrap().to_string();
        for req in mock_requests(p) {
            let content = req["body"]["messages"][0]["content"]
                .as_str()
                .unwrap()
                .to_string();
            let i: usize = content[1..].parse().unwrap();
            let session = format!("s{}", i % 3);
            if let Some(prev) = home.insert(session.clone(), name.clone()) {
                assert_eq!(prev, name, "{session} prefilled on two workers");
            }
        }
    }
    assert_eq!(home.len(), 3);
}

#[test]
fn a_failing_prefill_worker_is_retried_on_another_and_named_when_all_fail() {
    let bad = mock(&["--name", "bad", "--fail-status", "503"]);
    let good = mock(&["--name", "good"]);
    let d = mock(&["--name", "d"]);
    let r = pd_router(
        &[&bad, &good],
        &[&d],
        &["--retry-initial-backoff-ms", "5", "--policy", "round_robin"],
    );
    for _ in 0..6 {
        let resp = post_json(
            r.port,
            "/v1/completions",
            &json!({"model": "m", "prompt": "x", "max_tokens": 2}),
        );
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    assert!(mock_stats(&bad)["generation_requests"].as_u64().unwrap() >= 1);
    assert_eq!(mock_requests(&d).len(), 6);

    // Only a failing prefill worker: 502 naming the prefill stage; decode never called.
    let bad = mock(&["--fail-status", "503"]);
    let d = mock(&[]);
    let r = pd_router(
        &[&bad],
        &[&d],
        &[
            "--retry-max-retries",
            "2",
            "--retry-initial-backoff-ms",
            "5",
        ],
    );
    let resp = post_json(
        r.port,
        "/v1/completions",
        &json!({"model": "m", "prompt": "x", "max_tokens": 2}),
    );
    assert_eq!(resp.status, 502);
    let msg = resp.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(msg.contains("prefill stage"), "{msg}");
    assert_eq!(mock_stats(&bad)["generation_requests"], 2);
    assert_eq!(mock_stats(&d)["generation_requests"], 0);
    // A 400 from the prefill worker is the request's fault: passed through, not retried.
    let resp = request(
        r.port,
        "POST",
        "/v1/completions",
        &[("x-mock-status", "400")],
        json!({"model": "m", "prompt": "x"}).to_string().as_bytes(),
    );
    assert_eq!(resp.status, 400);
    assert_eq!(mock_stats(&bad)["generation_requests"], 3);
}

#[test]
fn pd_needs_both_pools() {
    let p = mock(&[]);
    let out = std::process::Command::new(router_bin())
        .args([
            "--vllm-pd-disaggregation",
            "--prefill",
            &p.url(),
            "--port",
            "0",
        ])
        .args(["--prometheus-port", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("needs at least one --prefill URL and one --decode URL"),
        "{text}"
    );
}

#[test]
fn a_failing_decode_worker_is_retried_on_another_with_the_same_prefill() {
    let p = mock(&["--name", "p"]);
    let bad = mock(&["--name", "bad", "--fail-status", "503"]);
    let good = mock(&["--name", "good"]);
    let r = pd_router(
        &[&p],
        &[&bad, &good],
        &[
            "--retry-initial-backoff-ms",
            "5",
            "--policy",
            "round_robin",
            "--shards",
            "1",
        ],
    );
    for _ in 0..4 {
        let resp = post_json(r.port, "/v1/chat/completions", &chat_body("x", 2, true));
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.header("x-mock-worker"), Some("good"));
    }
    // The prefill ran once per request: decode retries reuse its result.
    assert_eq!(mock_requests(&p).len(), 4);
    assert!(
        !mock_requests(&bad).is_empty(),
        "round robin never tried the failing decode worker"
    );
    // The retried leg's id names the decode worker it went to.
    for req in mock_requests(&good) {
        let id = req["headers"]["x-request-id"].as_str().unwrap();
        assert!(
            id.contains(&format!("___decode_addr_127.0.0.1:{}_", good.port)),
            "{id}"
        );
    }
}

#[test]
fn mooncake_legs_share_a_transfer_id_and_decode_names_the_bootstrap_server() {
    let p = mock(&["--name", "p"]);
    let d = mock(&["--name", "d"]);
    // The mock serves the bootstrap `/query` on its own port.
    let port = p.port.to_string();
    let r = router(
        &[],
        &[
            "--vllm-pd-disaggregation",
            "--prefill",
            &p.url(),
            &port,
            "--decode",
            &d.url(),
            "--kv-connector",
            "mooncake",
        ],
    );
    let body = json!({"model": "m", "prompt": "hello", "max_tokens": 3});
    // The control core asks the bootstrap server at start: until the shards have its
    // answer, decode legs go without params. Wait for the first one that has them.
    let mut last = Value::Null;
    let named = eventually(std::time::Duration::from_secs(10), || {
        assert_eq!(post_json(r.port, "/v1/completions", &body).status, 200);
        last = mock_requests(&d).last().cloned().unwrap();
        !last["body"]["kv_transfer_params"].is_null()
    });
    assert!(named, "{last}");
    let pre = mock_requests(&p).last().cloned().unwrap();
    let pre_params = &pre["body"]["kv_transfer_params"];
    let transfer = pre_params["transfer_id"].as_str().unwrap();
    assert!(
        transfer.starts_with("xfer-") && transfer.len() == 41,
        "{transfer}"
    );
    assert_eq!(
        *pre_params,
        json!({"do_remote_decode": true, "do_remote_prefill": false, "transfer_id": transfer})
    );
    assert_eq!(
        last["body"]["kv_transfer_params"],
        json!({
            "do_remote_decode": false, "do_remote_prefill": true, "transfer_id": transfer,
            "remote_bootstrap_addr": format!("http://127.0.0.1:{port}"),
            "remote_engine_id": "engine-p",
        })
    );
    assert_eq!(pre["body"]["max_tokens"], 1);
    assert_eq!(last["body"]["max_tokens"], 3);
    assert!(mock_stats(&p)["by_path"]["/query"].as_u64().unwrap() >= 1);
}
