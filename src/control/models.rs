//! `--enable-igw`: which models each worker serves, from its `GET /v1/models` (every
//! `data[].id`: a vLLM server lists its base model and its LoRA adapters). Asked before
//! the router first serves and every few seconds after, so adapters loaded later and
//! workers added later are routed to; a worker's spec carries its list to the shards.

use super::http::{get, Get};
use super::state::ControlState;
use shards::messages::Delta;
use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

/// How often the lists are asked again: a worker added or an adapter loaded is
/// routed to within this.
const MODELS_REFRESH: Duration = Duration::from_secs(5);

/// Largest `/v1/models` answer read (thousands of adapters fit).
const MAX_MODELS_BODY: usize = 1 << 20;

/// Asks every healthy worker for its models and records them; returns the specs that
/// changed (not yet sent to the shards).
pub async fn learn(state: &Rc<RefCell<ControlState>>) -> Vec<shards::messages::WorkerSpec> {
    let (targets, probe) = {
        let s = state.borrow();
        let targets: Vec<(String, SocketAddr, String)> = s
            .registry
            .bases_with_health()
            .into_iter()
            .filter(|t| t.3)
            .map(|(url, addr, authority, _)| (url, addr, authority))
            .collect();
        (targets, s.probe.clone())
    };
    let asks: Vec<_> = targets
        .into_iter()
        .map(|(url, addr, authority)| {
            let probe = probe.clone();
            tokio::task::spawn_local(async move {
                let req = Get {
                    addr,
                    authority: &authority,
                    path: "/v1/models",
                    api_key: probe.api_key.as_deref(),
                };
                let answer = tokio::time::timeout(probe.timeout, get(&req, Some(MAX_MODELS_BODY)));
                let models = match answer.await {
                    Ok(Ok((200, body))) => model_ids(&body),
                    _ => None, // keep what is known; the health checks judge the worker
                };
                (url, models)
            })
        })
        .collect();
    let mut changed = Vec::new();
    for ask in asks {
        let Ok((url, Some(models))) = ask.await else {
            continue;
        };
        let mut s = state.borrow_mut();
        for w in s.registry.workers.iter_mut().filter(|w| w.base_url == url) {
            if w.spec.models != models {
                shards::info!("worker {} serves {}", w.spec.url, models.join(", "));
                w.spec.models = models.clone();
                changed.push(w.spec.clone());
            }
        }
    }
    changed
}

/// Asks again every few seconds and sends what changed to the shards.
pub async fn refresh_loop(state: Rc<RefCell<ControlState>>) {
    loop {
        tokio::time::sleep(MODELS_REFRESH).await;
        for spec in learn(&state).await {
            state.borrow().broadcast(Delta::Upsert(spec));
        }
    }
}

/// The ids of an OpenAI model list, sorted.
fn model_ids(body: &[u8]) -> Option<Vec<String>> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let mut ids: Vec<String> = v["data"]
        .as_array()?
        .iter()
        .filter_map(|m| m["id"].as_str().map(str::to_string))
        .collect();
    ids.sort();
    ids.dedup();
    Some(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_of_a_model_list() {
        let body =
            br#"{"object":"list","data":[{"id":"m2"},{"id":"m1","object":"model"},{"x":1}]}"#;
        assert_eq!(model_ids(body), Some(vec!["m1".into(), "m2".into()]));
        assert_eq!(model_ids(b"{}"), None);
    }
}
