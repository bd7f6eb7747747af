//! The admin API, answered by the control core for whichever shard received the call:
//! `POST /add_worker?url=`, `POST /remove_worker?url=`, `GET /list_workers`, the
//! REST forms `GET/POST /workers`, `GET/DELETE /workers/{url}`, and `GET /router_info`
//! (where this router listens: the ports `--port 0` and `--prometheus-port 0` chose).

use super::ControlState;
use serde_json::{json, Value};
use shards::messages::{AdminReply, AdminRequest, WorkerRole};
use std::cell::RefCell;
use std::rc::Rc;

fn json_reply(status: u16, body: Value) -> AdminReply {
    AdminReply {
        status,
        content_type: "application/json",
        body: body.to_string(),
    }
}

fn text_reply(status: u16, body: String) -> AdminReply {
    AdminReply {
        status,
        content_type: "text/plain; charset=utf-8",
        body,
    }
}

fn error(status: u16, message: String) -> AdminReply {
    json_reply(
        status,
        json!({"error": {"message": message, "type": shards::error_type(status), "code": status}}),
    )
}

/// Decodes `%XX` escapes (and `+` in queries).
pub fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (percent_decode(k, true) == name).then(|| percent_decode(v, true))
    })
}

pub async fn handle(state: Rc<RefCell<ControlState>>, req: AdminRequest) -> AdminReply {
    let path = req.path.as_str();
    match (req.method.as_str(), path) {
        ("POST", "/add_worker") => match query_param(&req.query, "url") {
            Some(url) => match add(&state, &url).await {
                Ok(()) => text_reply(200, format!("Successfully added worker: {url}")),
                Err(e) => e,
            },
            None => error(400, "missing ?url= parameter".into()),
        },
        ("POST", "/remove_worker") => match query_param(&req.query, "url") {
            Some(url) => match remove(&state, &url) {
                Ok(()) => text_reply(200, format!("Successfully removed worker: {url}")),
                Err(e) => e,
            },
            None => error(400, "missing ?url= parameter".into()),
        },
        ("GET", "/get_loads") => json_reply(200, super::worker_calls::loads(&state).await),
        ("POST", "/flush_cache") => {
            let (status, body) = super::worker_calls::flush_caches(&state).await;
            json_reply(status, body)
        }
        ("GET", "/router_info") => {
            let s = state.borrow();
            json_reply(
                200,
                json!({
                    "version": env!("CARGO_PKG_VERSION"),
                    "listen": s.listen.to_string(),
                    "metrics": s.metrics_addr.to_string(),
                    "shards": s.shard_count,
                    "policy": s.policy.name(),
                }),
            )
        }
        ("GET", "/list_workers") => {
            let s = state.borrow();
            let urls: Vec<&str> = s
                .registry
                .workers
                .iter()
                .map(|w| w.spec.url.as_str())
                .collect();
            json_reply(200, json!({ "urls": urls }))
        }
        ("GET", "/workers") => {
            let s = state.borrow();
            let workers: Vec<Value> = s
                .registry
                .workers
                .iter()
                .map(|w| s.worker_json(w))
                .collect();
            let healthy = s.registry.healthy_count();
            json_reply(
                200,
                json!({"workers": workers, "total": workers.len(), "healthy": healthy}),
            )
        }
        ("POST", "/workers") => {
            let url = serde_json::from_slice::<Value>(&req.body)
                .ok()
                .and_then(|v| v.get("url").and_then(Value::as_str).map(str::to_string));
            match url {
                Some(url) => match add(&state, &url).await {
                    Ok(()) => json_reply(201, json!({"status": "added", "url": url})),
                    Err(e) => e,
                },
                None => error(
                    400,
                    "expected a JSON body like {\"url\": \"http://host:port\"}".into(),
                ),
            }
        }
        (method, p) if p.starts_with("/workers/") => {
            let url = percent_decode(&p["/workers/".len()..], false);
            match method {
                "GET" => {
                    let s = state.borrow();
                    let found: Vec<Value> = s
                        .registry
                        .workers
                        .iter()
                        .filter(|w| w.base_url == url || w.spec.url == url)
                        .map(|w| s.worker_json(w))
                        .collect();
                    match found.len() {
                        0 => error(404, format!("no worker {url}")),
                        1 => json_reply(200, found.into_iter().next().unwrap()),
                        _ => json_reply(200, json!({ "workers": found })),
                    }
                }
                "DELETE" => match remove(&state, &url) {
                    Ok(()) => json_reply(200, json!({"status": "removed", "url": url})),
                    Err(e) => e,
                },
                _ => error(405, format!("{method} is not allowed on /workers/{{url}}")),
            }
        }
        (method, _) => error(405, format!("{method} is not allowed on {path}")),
    }
}

/// Probes a new worker, then adds it everywhere. It gets no traffic unless healthy.
async fn add(state: &Rc<RefCell<ControlState>>, url: &str) -> Result<(), AdminReply> {
    match add_worker(state, url, true).await {
        Ok(_) => {
            shards::info!("worker {url} added through the admin API");
            Ok(())
        }
        Err(AddError::Invalid(e)) => Err(error(400, e)),
        Err(AddError::Unhealthy(e)) => Err(error(503, e)),
    }
}

/// Why a worker was not added.
#[derive(Debug)]
pub enum AddError {
    Invalid(String),
    Unhealthy(String),
}

impl std::fmt::Display for AddError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AddError::Invalid(e) | AddError::Unhealthy(e) => f.write_str(e),
        }
    }
}

/// Probes a worker, then adds it everywhere. With `require_healthy` an unhealthy
/// worker is not added; without, it is added out of rotation until the health checks
/// pass. Returns whether it is healthy.
pub async fn add_worker(
    state: &Rc<RefCell<ControlState>>,
    url: &str,
    require_healthy: bool,
) -> Result<bool, AddError> {
    // Registered (resolved once, here on the control core) before the probe, so a
    // second add of the same URL meanwhile is refused; out of rotation until then.
    let (first, probe_cfg) = {
        let mut s = state.borrow_mut();
        let specs = s
            .registry
            .add_role(url, WorkerRole::Regular)
            .map_err(AddError::Invalid)?;
        (specs[0].clone(), s.probe.clone())
    };
    let probe = super::health::probe(first.addr, &first.authority, &probe_cfg).await;
    if let Err(why) = &probe {
        if require_healthy {
            state.borrow_mut().registry.remove(url);
            return Err(AddError::Unhealthy(format!(
                "worker {url} is not healthy: {why}"
            )));
        }
    }
    let healthy = probe.is_ok();
    state.borrow_mut().publish(url, healthy, None);
    Ok(healthy)
}

/// Removes a worker everywhere; its in-flight requests finish on the shards.
fn remove(state: &Rc<RefCell<ControlState>>, url: &str) -> Result<(), AdminReply> {
    if state.borrow_mut().remove_worker(url).is_empty() {
        return Err(error(404, format!("no worker {url}")));
    }
    shards::info!("worker {url} removed through the admin API");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding() {
        assert_eq!(percent_decode("http%3A%2F%2Fa%3A1", false), "http://a:1");
        assert_eq!(
            query_param("x=1&url=http%3A%2F%2Fa%3A1", "url").as_deref(),
            Some("http://a:1")
        );
        assert_eq!(percent_decode("100%", false), "100%");
        assert_eq!(query_param("a=b", "url"), None);
    }
}
