//! Scrapes each worker's vLLM `/metrics` for the load this router did not send:
//! `vllm:num_requests_running + vllm:num_requests_waiting` (and
//! `vllm:kv_cache_usage_perc`, kept for the admin view). Other routers and direct
//! clients show up there; the difference to our own in-flight count is added to every
//! shard's load view. A worker without `/metrics` simply adds nothing.

use shards::codec::response::ResponseHead;
use shards::codec::Status;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What one scrape found.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct WorkerLoad {
    pub running: f64,
    pub waiting: f64,
    pub kv_cache_usage: f64,
}

/// Largest `/metrics` answer read (vLLM's is tens of KiB).
const MAX_METRICS_BYTES: usize = 4 * 1024 * 1024;

pub async fn scrape(addr: SocketAddr, authority: &str, timeout: Duration) -> Option<WorkerLoad> {
    tokio::time::timeout(timeout, scrape_inner(addr, authority))
        .await
        .ok()
        .flatten()
}

async fn scrape_inner(addr: SocketAddr, authority: &str) -> Option<WorkerLoad> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    let req = format!("GET /metrics HTTP/1.1\r\nhost: {authority}\r\nconnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_METRICS_BYTES {
            return None;
        }
    }
    let mut head = ResponseHead::default();
    let Ok(Status::Complete(n)) = head.parse(&buf, false) else {
        return None;
    };
    if head.status != 200 {
        return None;
    }
    // Chunked bodies only add hex size lines between the metric lines we look for.
    Some(parse(&String::from_utf8_lossy(&buf[n..])))
}

/// Sums the series over their labels (one line per model or engine).
pub fn parse(text: &str) -> WorkerLoad {
    let mut load = WorkerLoad::default();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let name = line.split(['{', ' ']).next().unwrap_or("");
        let value = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        match name {
            "vllm:num_requests_running" => load.running += value,
            "vllm:num_requests_waiting" => load.waiting += value,
            "vllm:kv_cache_usage_perc" | "vllm:gpu_cache_usage_perc" => {
                load.kv_cache_usage = load.kv_cache_usage.max(value)
            }
            _ => {}
        }
    }
    load
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_vllm_gauges() {
        let text = "# HELP x\nvllm:num_requests_running{model_name=\"m\",engine=\"0\"} 3.0\n\
                    vllm:num_requests_running{model_name=\"m\",engine=\"1\"} 2.0\n\
                    vllm:num_requests_waiting{model_name=\"m\"} 4\n\
                    vllm:kv_cache_usage_perc{model_name=\"m\"} 0.25\nother 9\n";
        assert_eq!(
            parse(text),
            WorkerLoad {
                running: 5.0,
                waiting: 4.0,
                kv_cache_usage: 0.25
            }
        );
    }
}
