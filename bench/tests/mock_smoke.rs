//! The mock worker answers like vLLM. (This test also makes `cargo test --workspace`
//! build the `mock-vllm` binary that the router's tests start.)

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;

fn get(port: u16, raw: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(raw.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn serves_health_models_metrics_and_prefill_role() {
    let (_mock, port) = support::mock(&[]);
    assert!(
        get(port, "GET /health HTTP/1.1\r\nconnection: close\r\n\r\n").starts_with("HTTP/1.1 200")
    );
    assert!(
        get(port, "GET /v1/models HTTP/1.1\r\nconnection: close\r\n\r\n")
            .contains("\"mock-model\"")
    );
    let body = r#"{"prompt":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","max_tokens":9,"kv_transfer_params":{"do_remote_decode":true}}"#;
    let prefill = get(
        port,
        &format!(
        "POST /v1/completions HTTP/1.1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    ),
    );
    assert!(prefill.contains("\"do_remote_prefill\":true"), "{prefill}");
    assert!(prefill.contains("\"completion_tokens\":1"), "{prefill}");
    get(port, &format!("POST /v1/completions HTTP/1.1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}", body.len()));
    let metrics = get(port, "GET /metrics HTTP/1.1\r\nconnection: close\r\n\r\n");
    assert!(
        metrics.contains("vllm:num_requests_running{model_name=\"mock-model\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("vllm:prefix_cache_hits_total{model_name=\"mock-model\"} 16"),
        "{metrics}"
    );
}
