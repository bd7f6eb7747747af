//! Admin calls answered by asking every worker: `GET /get_loads` (vLLM's `GET /load`)
//! and `POST /flush_cache` (vLLM's `POST /reset_prefix_cache`). One request per worker
//! URL, all at once, each bounded by the health-check timeout; the answer says per
//! worker what happened.

use super::http::{call, Get};
use super::state::ControlState;
use hyper::Method;
use serde_json::{json, Value};
use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;

/// Largest answer read from a worker's `/load`: `{"server_load": N}` is a few bytes.
const MAX_LOAD_BODY: usize = 4096;

/// `(url, address, authority, healthy)` of every worker URL (DP ranks share one).
fn targets(state: &Rc<RefCell<ControlState>>) -> Vec<(String, SocketAddr, String, bool)> {
    state.borrow().registry.bases_with_health()
}

/// One call to one worker, bounded by the probe timeout.
async fn ask(
    state: &Rc<RefCell<ControlState>>,
    addr: SocketAddr,
    authority: &str,
    method: Method,
    path: &str,
) -> Result<(u16, bytes::Bytes), String> {
    let probe = state.borrow().probe.clone();
    let req = Get {
        addr,
        authority,
        path,
        api_key: probe.api_key.as_deref(),
    };
    match tokio::time::timeout(probe.timeout, call(&req, method, Some(MAX_LOAD_BODY))).await {
        Ok(answer) => answer,
        Err(_) => Err(format!("no answer within {:?}", probe.timeout)),
    }
}

/// `GET /get_loads`: 0.1.17's shape, `{"workers":[{"worker":url,"load":n}]}`, with
/// -1 where a worker did not say. vLLM serves its load at `GET /load`
/// (`{"server_load": N}`; 0.1.17 asks `/get_load`, which vLLM does not serve).
pub async fn loads(state: &Rc<RefCell<ControlState>>) -> Value {
    let calls = targets(state).into_iter().map(|(url, addr, authority, _)| {
        let state = state.clone();
        async move {
            let answer = ask(&state, addr, &authority, Method::GET, "/load").await;
            let load = answer
                .ok()
                .filter(|(status, _)| *status == 200)
                .and_then(|(_, body)| serde_json::from_slice::<Value>(&body).ok())
                .and_then(|v| v["server_load"].as_i64())
                .unwrap_or(-1);
            json!({"worker": url, "load": load})
        }
    });
    json!({ "workers": futures_join(calls).await })
}

/// `POST /flush_cache`: asks every healthy worker to drop its prefix cache. 200 when
/// all did, else 500; either way the answer lists each worker and what it said
/// (unhealthy ones are skipped and listed so).
pub async fn flush_caches(state: &Rc<RefCell<ControlState>>) -> (u16, Value) {
    let calls = targets(state)
        .into_iter()
        .map(|(url, addr, authority, healthy)| {
            let state = state.clone();
            async move {
                if !healthy {
                    return (true, json!({"worker": url, "skipped": "not healthy"}));
                }
                let answer = ask(
                    &state,
                    addr,
                    &authority,
                    Method::POST,
                    "/reset_prefix_cache",
                )
                .await;
                match answer {
                    Ok((status, _)) if (200..300).contains(&status) => {
                        (true, json!({"worker": url, "status": status}))
                    }
                    Ok((status, body)) => (
                        false,
                        json!({"worker": url, "status": status,
                           "error": String::from_utf8_lossy(&body).trim().to_string()}),
                    ),
                    Err(e) => (false, json!({"worker": url, "error": e})),
                }
            }
        });
    let results = futures_join(calls).await;
    let ok = results.iter().all(|(ok, _)| *ok);
    let workers: Vec<Value> = results.into_iter().map(|(_, v)| v).collect();
    let (status, message) = if ok {
        (200, "Cache flushed on all servers")
    } else {
        (500, "Cache flush failed on one or more servers")
    };
    (status, json!({"message": message, "workers": workers}))
}

/// Runs the futures concurrently on this thread and returns their outputs in order.
async fn futures_join<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + 'static,
    F::Output: 'static,
{
    let handles: Vec<_> = futures.map(tokio::task::spawn_local).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("a worker call task panicked"));
    }
    out
}
