//! Scrapes each worker's vLLM `/metrics` for the load this router did not send:
//! `vllm:num_requests_running + vllm:num_requests_waiting` (and
//! `vllm:kv_cache_usage_perc`, kept for the admin view). Other routers and direct
//! clients show up there; the difference to our own in-flight count is added to every
//! shard's load view. A worker without `/metrics` simply adds nothing.

use super::http::{get, Get};
use super::state::ControlState;
use shards::messages::WorkerId;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

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
            "vllm:kv_cache_usage_perc" | "vllm:gpu_cache_usage_perc" => {
                load.kv_cache_usage = load.kv_cache_usage.max(value)
            }
            _ => {}
        }
    }
    load
}

/// How often workers' `/metrics` are scraped for load-aware policies.
const SCRAPE_INTERVAL: Duration = Duration::from_secs(1);

pub async fn scrape_loop(state: Rc<RefCell<ControlState>>, timeout: Duration) {
    let mut tick = tokio::time::interval(SCRAPE_INTERVAL);
    loop {
        tick.tick().await;
        let targets: Vec<(WorkerId, SocketAddr, String, Option<u32>)> = state
            .borrow()
            .registry
            .workers
            .iter()
            .filter(|w| w.health.healthy)
            .map(|w| {
                (
                    w.spec.id,
                    w.spec.addr,
                    w.spec.authority.clone(),
                    w.spec.dp_rank,
                )
            })
            .collect();
        let mut tasks = Vec::new();
        for (id, addr, authority, rank) in targets {
            // DP ranks share one server (and one /metrics): count it on rank 0 only.
            if rank.unwrap_or(0) != 0 {
                continue;
            }
            tasks.push(tokio::task::spawn_local(async move {
                (id, scrape(addr, &authority, timeout).await)
            }));
        }
        for t in tasks {
            if let Ok((id, found)) = t.await {
                let mut s = state.borrow_mut();
                match found {
                    Some(load) => {
                        if s.scraped.insert(id, load) != Some(load) {
                            s.loads_dirty = true;
                        }
                    }
                    None => {
                        s.scraped.remove(&id);
                    }
                }
            }
        }
    }
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
