//! Scrapes each worker's vLLM `/metrics` for the load this router did not send:
//! `vllm:num_requests_running + vllm:num_requests_waiting` (and
//! `vllm:kv_cache_usage_perc`, kept for the admin view). Other routers and direct
//! clients show up there; the difference to our own in-flight count is added to every
//! shard's load view. A worker without `/metrics` simply adds nothing.
//! `vllm:request_success_total` (every request the worker finished, by reason) tells
//! whether this router sends all of the workers' traffic (`sole_sender`).

use super::http::{get, Get};
use std::net::SocketAddr;
use std::time::Duration;

/// What one scrape found.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct WorkerLoad {
    pub running: f64,
    pub waiting: f64,
    pub kv_cache_usage: f64,
    /// Requests the worker has finished since it started (None: it does not say).
    pub finished: Option<f64>,
}

/// Largest `/metrics` answer read (vLLM's is tens of KiB).
const MAX_METRICS_BYTES: usize = 4 * 1024 * 1024;

pub async fn scrape(addr: SocketAddr, authority: &str, timeout: Duration) -> Option<WorkerLoad> {
    let req = Get {
        addr,
        authority,
        path: "/metrics",
        api_key: None,
    };
    let answer = tokio::time::timeout(timeout, get(&req, Some(MAX_METRICS_BYTES))).await;
    match answer {
        Ok(Ok((200, body))) => Some(parse(&String::from_utf8_lossy(&body))),
        _ => None,
    }
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
            "vllm:request_success_total" => *load.finished.get_or_insert(0.0) += value,
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
                    vllm:kv_cache_usage_perc{model_name=\"m\"} 0.25\nother 9\n\
                    vllm:request_success_total{finished_reason=\"stop\"} 7\n\
                    vllm:request_success_total{finished_reason=\"abort\"} 2\n\
                    vllm:request_success_created{finished_reason=\"stop\"} 1.7e9\n";
        assert_eq!(
            parse(text),
            WorkerLoad {
                running: 5.0,
                waiting: 4.0,
                kv_cache_usage: 0.25,
                finished: Some(9.0),
            }
        );
    }

    #[test]
    fn a_worker_without_the_success_counter_says_nothing_about_finished_requests() {
        let text = "vllm:num_requests_running 1\n";
        assert_eq!(parse(text).finished, None);
    }
}
