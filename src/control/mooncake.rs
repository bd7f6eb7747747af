//! `--kv-connector mooncake`: each prefill worker given with a bootstrap port
//! (`--prefill URL PORT`) is asked `GET /query` there for its engine ids (an object
//! keyed by data-parallel rank: `{"0": {"engine_id": "..."}}`). Until it answers,
//! decode legs go without `kv_transfer_params`, as in 0.1.17; once it has, its worker
//! spec carries the answer to every shard.

use super::http::{get, Get};
use super::state::ControlState;
use shards::messages::{Delta, MooncakeBootstrap};
use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

/// Attempts per worker, as 0.1.17: a prefill worker may take minutes to load a model.
const QUERY_ATTEMPTS: u32 = 30;

/// Pause after a failed attempt: 1, 2, 4, 8, then 10 s (about four and a half
/// minutes in all).
fn backoff(attempt: u32) -> Duration {
    let secs = match attempt {
        0..=4 => 1u64 << attempt.saturating_sub(1),
        _ => 10,
    };
    Duration::from_secs(secs)
}

/// Largest `/query` answer read: a few engine ids.
const MAX_QUERY_BODY: usize = 64 * 1024;

/// Starts one query loop per prefill worker with a bootstrap port.
pub fn spawn_queries(state: &Rc<RefCell<ControlState>>, workers: &[(String, u16)]) {
    for (url, port) in workers {
        let (state, url, port) = (state.clone(), url.trim_end_matches('/').to_string(), *port);
        tokio::task::spawn_local(async move { query_loop(state, url, port).await });
    }
}

async fn query_loop(state: Rc<RefCell<ControlState>>, url: String, port: u16) {
    for attempt in 1..=QUERY_ATTEMPTS {
        let target = {
            let s = state.borrow();
            let w = s.registry.workers.iter().find(|w| w.base_url == url);
            w.map(|w| (w.spec.addr.ip(), w.spec.authority.clone(), s.probe.timeout))
        };
        let Some((ip, authority, timeout)) = target else {
            return; // the worker was removed
        };
        let host = authority
            .rsplit_once(':')
            .map_or(authority.as_str(), |(h, _)| h);
        let bootstrap = format!("{host}:{port}");
        let req = Get {
            addr: SocketAddr::new(ip, port),
            authority: &bootstrap,
            path: "/query",
            api_key: None,
        };
        let answer = tokio::time::timeout(timeout, get(&req, Some(MAX_QUERY_BODY))).await;
        let outcome = match answer {
            Ok(Ok((200, body))) => engines(&body),
            Ok(Ok((status, _))) => Err(format!("answered {status}")),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!("no answer within {timeout:?}")),
        };
        match outcome {
            Ok(engines) => {
                shards::info!(
                    "Mooncake bootstrap of {url} at http://{bootstrap}: {} engine(s)",
                    engines.len()
                );
                let info = MooncakeBootstrap {
                    addr: format!("http://{bootstrap}"),
                    engines,
                };
                publish(&state, &url, info);
                return;
            }
            Err(e) => shards::warn!(
                "Mooncake bootstrap query {attempt}/{QUERY_ATTEMPTS} to http://{bootstrap}/query \
                 for {url} failed: {e}"
            ),
        }
        tokio::time::sleep(backoff(attempt)).await;
    }
    shards::warn!("gave up asking {url}'s Mooncake bootstrap server: its decode legs go without kv_transfer_params");
}

/// The engine ids of a `/query` answer, by rank.
fn engines(body: &[u8]) -> Result<Vec<(u32, String)>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let ranks = v.as_object().ok_or("not an object keyed by rank")?;
    let mut out: Vec<(u32, String)> = ranks
        .iter()
        .filter_map(|(rank, info)| {
            let engine = info.get("engine_id")?.as_str()?;
            Some((rank.parse().ok()?, engine.to_string()))
        })
        .collect();
    if out.is_empty() {
        return Err("no engine_id in the answer".into());
    }
    out.sort();
    Ok(out)
}

/// Gives every rank of the worker the bootstrap info, on every shard.
fn publish(state: &Rc<RefCell<ControlState>>, url: &str, info: MooncakeBootstrap) {
    let mut s = state.borrow_mut();
    let mut specs = Vec::new();
    for w in s.registry.workers.iter_mut().filter(|w| w.base_url == url) {
        w.spec.mooncake = Some(info.clone());
        specs.push(w.spec.clone());
    }
    for spec in specs {
        s.broadcast(Delta::Upsert(spec));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engines_by_rank() {
        let body = br#"{"1":{"engine_id":"b"},"0":{"engine_id":"a","x":1},"n":{"engine_id":"c"}}"#;
        assert_eq!(engines(body).unwrap(), [(0, "a".into()), (1, "b".into())]);
        assert!(engines(b"[]").is_err());
        assert!(engines(br#"{"0":{}}"#).is_err());
    }

    #[test]
    fn backoff_grows_to_ten_seconds() {
        let s: Vec<u64> = (1..=7).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(s, [1, 2, 4, 8, 10, 10, 10]);
    }
}
