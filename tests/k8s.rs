//! Kubernetes service discovery: the router's real kube-rs client against a local
//! stand-in API server (tests/k8s_standin; not a Kubernetes implementation), reached
//! through KUBECONFIG. Workers are mock-vllm processes on distinct loopback addresses
//! (127.0.0.x) sharing one port, as pods share `--service-discovery-port`.

mod common;
mod k8s_standin;

use common::*;
use k8s_standin::{pod, ApiServer};
use serde_json::json;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A mock worker on 127.0.0.`last`:`port`, named `name`.
fn mock_at(last: u8, port: u16, name: &str) -> Proc {
    let host = format!("127.0.0.{last}");
    let child = Command::new(mock_bin())
        .args(["--host", &host, "--port", &port.to_string(), "--name", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect((host.as_str(), port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "mock on {host} did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    Proc {
        child,
        port,
        log: None,
    }
}

fn router_with_kubeconfig(api: &ApiServer, args: &[&str]) -> (Router, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("vr-k8s-{}-{}", std::process::id(), api.port));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = api.kubeconfig(&dir);
    let mut cmd = Command::new(router_bin());
    cmd.args([
        "--policy",
        "round_robin",
        "--shards",
        "2",
        "--service-discovery",
    ])
    .args(args)
    .env("KUBECONFIG", &kubeconfig);
    (start_router(cmd), dir)
}

fn workers(r: &Router) -> Vec<String> {
    let v = request(r.port, "GET", "/list_workers", &[], b"").json();
    let mut urls: Vec<String> = v["urls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap().to_string())
        .collect();
    urls.sort();
    urls
}

fn wait_workers(r: &Router, want: &[String]) {
    let mut want = want.to_vec();
    want.sort();
    let ok = eventually(Duration::from_secs(5), || workers(r) == want);
    assert!(ok, "workers {:?}, wanted {want:?}", workers(r));
}

#[test]
fn pods_join_and_leave_with_their_lifecycle_and_an_api_restart() {
    let port = free_low_port();
    let (_a, _b, _a2) = (
        mock_at(2, port, "a"),
        mock_at(3, port, "b"),
        mock_at(5, port, "a2"),
    );
    let url = |last: u8| format!("http://127.0.0.{last}:{port}");
    let api = ApiServer::new(free_port());
    let vllm = [("app", "vllm")];
    api.put(pod("default", "a", &vllm, "127.0.0.2", true));
    // Same IP scheme, other labels: must never become a worker.
    api.put(pod("default", "x", &[("app", "other")], "127.0.0.3", true));
    let port_s = port.to_string();
    let (r, dir) = router_with_kubeconfig(
        &api,
        &[
            "--selector",
            "app=vllm",
            "--service-discovery-port",
            &port_s,
        ],
    );
    wait_workers(&r, &[url(2)]);
    let served = post_json(
        r.port,
        "/v1/completions",
        &json!({"prompt": "x", "max_tokens": 1}),
    );
    assert_eq!(served.header("x-mock-worker"), Some("a"));

    // Not ready, then ready.
    api.put(pod("default", "b", &vllm, "127.0.0.3", false));
    // A ready marker pod after it: once the marker is a worker, the router has seen
    // b's event too (a watch delivers in order).
    api.put(pod("default", "marker", &vllm, "127.0.0.4", true));
    wait_workers(&r, &[url(2), url(4)]);
    api.delete("default", "marker");
    assert_eq!(
        workers(&r)
            .into_iter()
            .filter(|u| *u != url(4))
            .collect::<Vec<_>>(),
        [url(2)],
        "a pod that is not ready is not a worker"
    );
    wait_workers(&r, &[url(2)]);
    api.put(pod("default", "b", &vllm, "127.0.0.3", true));
    wait_workers(&r, &[url(2), url(3)]);

    // a stops being ready; then comes back with a new IP.
    api.put(pod("default", "a", &vllm, "127.0.0.2", false));
    wait_workers(&r, &[url(3)]);
    api.put(pod("default", "a", &vllm, "127.0.0.5", true));
    wait_workers(&r, &[url(3), url(5)]);

    // Deleted: gone at once.
    api.delete("default", "b");
    wait_workers(&r, &[url(5)]);
    // A pod with a deletion timestamp (terminating) leaves before it is deleted.
    let mut terminating = pod("default", "a", &vllm, "127.0.0.5", true);
    terminating["metadata"]["deletionTimestamp"] = json!("2026-11-23T00:00:00Z");
    api.put(terminating);
    wait_workers(&r, &[]);
    api.put(pod("default", "a", &vllm, "127.0.0.5", true));
    wait_workers(&r, &[url(5)]);

    // The API server restarts; meanwhile the router keeps serving what it knows.
    api.stop();
    std::thread::sleep(Duration::from_millis(500));
    let resp = post_json(
        r.port,
        "/v1/completions",
        &json!({"prompt": "x", "max_tokens": 1}),
    );
    assert_eq!(resp.status, 200, "serving on during the outage");
    assert_eq!(resp.header("x-mock-worker"), Some("a2"));
    // Changes made while it was down, with the history compacted: the router's watch
    // resumes from an expired resourceVersion (410) and must list again.
    api.delete("default", "a");
    api.put(pod("default", "b", &vllm, "127.0.0.3", true));
    api.compact();
    api.start();
    wait_workers(&r, &[url(3)]);
    let resp = post_json(
        r.port,
        "/v1/completions",
        &json!({"prompt": "x", "max_tokens": 1}),
    );
    assert_eq!(resp.header("x-mock-worker"), Some("b"));
    // Added: a, the marker, b, a at its new IP, a again after terminating, b after
    // the restart. Removed: the marker, a not ready, b deleted, a terminating, a
    // deleted during the outage.
    let counted = eventually(Duration::from_secs(3), || {
        let m = r.metrics();
        metric(&m, "vllm_router_discovery_workers_added_total", &[]) == Some(6.0)
            && metric(&m, "vllm_router_discovery_workers_removed_total", &[]) == Some(5.0)
    });
    assert!(counted, "{}", r.metrics());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn namespace_filter_and_pd_roles() {
    let port = free_low_port();
    let (_p, _d, _other) = (
        mock_at(6, port, "p"),
        mock_at(7, port, "d"),
        mock_at(8, port, "elsewhere"),
    );
    let url = |last: u8| format!("http://127.0.0.{last}:{port}");
    let api = ApiServer::new(free_port());
    api.put(pod(
        "serving",
        "prefill-0",
        &[("role", "prefill")],
        "127.0.0.6",
        true,
    ));
    api.put(pod(
        "serving",
        "decode-0",
        &[("role", "decode")],
        "127.0.0.7",
        true,
    ));
    // Right labels, wrong namespace.
    api.put(pod(
        "staging",
        "decode-9",
        &[("role", "decode")],
        "127.0.0.8",
        true,
    ));
    let port_s = port.to_string();
    let (r, dir) = router_with_kubeconfig(
        &api,
        &[
            "--vllm-pd-disaggregation",
            "--prefill-selector",
            "role=prefill",
            "--decode-selector",
            "role=decode",
            "--service-discovery-namespace",
            "serving",
            "--service-discovery-port",
            &port_s,
        ],
    );
    wait_workers(&r, &[url(6), url(7)]);
    let roles = request(r.port, "GET", "/workers", &[], b"").json();
    for w in roles["workers"].as_array().unwrap() {
        let want = if w["url"] == url(6) {
            "prefill"
        } else {
            "decode"
        };
        assert_eq!(w["role"], want, "{roles}");
    }
    let resp = post_json(
        r.port,
        "/v1/completions",
        &json!({"prompt": "x", "max_tokens": 2}),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("x-mock-worker"), Some("d"));
    let id = resp.header("x-request-id").unwrap();
    assert!(
        id.starts_with(&format!(
            "___prefill_addr_127.0.0.6:{port}___decode_addr_127.0.0.7:{port}_"
        )),
        "{id}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
