//! P/D workers found by vLLM's ZMQ service discovery: instances join with their first
//! heartbeat and leave when heartbeats stop.

mod common;

use common::*;
use serde_json::json;

/// Sends vLLM-style heartbeats from a ZMQ DEALER socket for `for_how_long`.
fn heartbeats(
    zmq_port: u16,
    beats: Vec<(&'static str, String, String)>,
    for_how_long: std::time::Duration,
) -> std::thread::JoinHandle<()> {
    use zeromq::{Socket, SocketSend};
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut dealer = zeromq::DealerSocket::new();
            dealer
                .connect(&format!("tcp://127.0.0.1:{zmq_port}"))
                .await
                .unwrap();
            let until = std::time::Instant::now() + for_how_long;
            while std::time::Instant::now() < until {
                for (kind, http, zmq) in &beats {
                    let v = rmpv::Value::Map(vec![
                        ("type".into(), (*kind).into()),
                        ("http_address".into(), http.as_str().into()),
                        ("zmq_address".into(), zmq.as_str().into()),
                    ]);
                    let mut buf = Vec::new();
                    rmpv::encode::write_value(&mut buf, &v).unwrap();
                    dealer.send(buf.into()).await.unwrap();
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        });
    })
}

#[test]
fn discovered_instances_join_then_expire_after_their_last_heartbeat() {
    let p = mock(&["--name", "zp"]);
    let d = mock(&["--name", "zd"]);
    let zmq_port = free_port();
    let r = router(
        &[],
        &[
            "--vllm-pd-disaggregation",
            "--vllm-discovery-address",
            &format!("127.0.0.1:{zmq_port}"),
        ],
    );
    let body = json!({"model": "m", "prompt": "x", "max_tokens": 2});
    assert_eq!(post_json(r.port, "/v1/completions", &body).status, 503);
    let beats = vec![
        (
            "P",
            format!("127.0.0.1:{}", p.port),
            "127.0.0.1:21001".to_string(),
        ),
        (
            "D",
            format!("127.0.0.1:{}", d.port),
            "127.0.0.1:22001".to_string(),
        ),
    ];
    let sender = heartbeats(zmq_port, beats, std::time::Duration::from_secs(2));
    let joined = eventually(std::time::Duration::from_secs(2), || {
        post_json(r.port, "/v1/completions", &body).status == 200
    });
    assert!(joined, "discovered workers never served");
    // The request id names the instances by their ZMQ addresses.
    let last = mock_requests(&d).pop().unwrap();
    let id = last["headers"]["x-request-id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        id.starts_with("___prefill_addr_127.0.0.1:21001___decode_addr_127.0.0.1:22001_"),
        "{id}"
    );
    let roles = request(r.port, "GET", "/workers", &[], b"").json();
    let roles: Vec<&str> = roles["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles.len(), 2);
    assert!(
        roles.contains(&"prefill") && roles.contains(&"decode"),
        "{roles:?}"
    );
    sender.join().unwrap();
    // Silent for 5 s: gone.
    let stopped = std::time::Instant::now();
    let expired = eventually(std::time::Duration::from_secs(8), || {
        request(r.port, "GET", "/list_workers", &[], b"").json()["urls"] == json!([])
    });
    assert!(expired, "instances did not expire");
    assert!(
        stopped.elapsed() >= std::time::Duration::from_secs(4),
        "expired too early"
    );
    assert_eq!(post_json(r.port, "/v1/completions", &body).status, 503);
    assert!(eventually(std::time::Duration::from_secs(3), || {
        metric(&r.metrics(), "vllm_router_discovery_updates_total", &[]) == Some(4.0)
    }));
}
