//! A stand-in for the Kubernetes API server: just enough of its wire protocol for the
//! real kube-rs client in the router. It is NOT a Kubernetes implementation:
//! - `GET /api/v1/pods` and `/api/v1/namespaces/{ns}/pods` with `labelSelector`: a JSON
//!   `PodList` with `metadata.resourceVersion`;
//! - the same with `watch=true&resourceVersion=N`: a chunked stream of JSON lines
//!   (`ADDED`, `MODIFIED`, `DELETED`, and a `BOOKMARK` every 200 ms), from the events
//!   after N;
//! - a watch from a resourceVersion older than the oldest kept event gets an `ERROR`
//!   event with a 410 `Status` (what a real server sends after compaction), so the
//!   client must list again;
//! - `stop` closes the listener and every stream (an API restart); `start` serves again
//!   on the same port.
#![allow(dead_code)]

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

#[derive(Default)]
struct State {
    /// (namespace, name) -> pod.
    pods: BTreeMap<(String, String), Value>,
    rv: u64,
    /// (rv, type, pod) since `oldest`.
    events: Vec<(u64, &'static str, Value)>,
    oldest: u64,
}

pub struct ApiServer {
    pub port: u16,
    state: Arc<(Mutex<State>, Condvar)>,
    /// Bumped by `stop`: connections of an older generation end.
    generation: Arc<AtomicU64>,
}

pub fn pod(ns: &str, name: &str, labels: &[(&str, &str)], ip: &str, ready: bool) -> Value {
    let labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{ns}-{name}"), "labels": labels},
        "spec": {"containers": [{"name": "vllm", "image": "vllm"}]},
        "status": {"phase": "Running", "podIP": ip,
                   "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
    })
}

impl ApiServer {
    pub fn new(port: u16) -> ApiServer {
        let s = ApiServer {
            port,
            state: Arc::new((Mutex::new(State::default()), Condvar::new())),
            generation: Arc::new(AtomicU64::new(0)),
        };
        s.start();
        s
    }

    /// Creates or replaces a pod (ADDED or MODIFIED).
    pub fn put(&self, mut pod: Value) {
        let (lock, cv) = &*self.state;
        let mut st = lock.lock().unwrap();
        st.rv += 1;
        pod["metadata"]["resourceVersion"] = json!(st.rv.to_string());
        let key = (
            pod["metadata"]["namespace"].as_str().unwrap().to_string(),
            pod["metadata"]["name"].as_str().unwrap().to_string(),
        );
        let kind = if st.pods.contains_key(&key) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        st.pods.insert(key, pod.clone());
        let rv = st.rv;
        st.events.push((rv, kind, pod));
        cv.notify_all();
    }

    pub fn delete(&self, ns: &str, name: &str) {
        let (lock, cv) = &*self.state;
        let mut st = lock.lock().unwrap();
        if let Some(mut pod) = st.pods.remove(&(ns.to_string(), name.to_string())) {
            st.rv += 1;
            pod["metadata"]["resourceVersion"] = json!(st.rv.to_string());
            let rv = st.rv;
            st.events.push((rv, "DELETED", pod));
            cv.notify_all();
        }
    }

    /// Forgets the event history: a watch from before now gets 410 Gone.
    pub fn compact(&self) {
        let mut st = self.state.0.lock().unwrap();
        st.events.clear();
        st.oldest = st.rv;
    }

    /// An API server restart, first half: nothing listens, streams end.
    pub fn stop(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.state.1.notify_all();
        // Wait until the port is free again.
        for _ in 0..100 {
            if TcpStream::connect(("127.0.0.1", self.port)).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn start(&self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).expect("bind stand-in");
        listener.set_nonblocking(true).unwrap();
        let generation = self.generation.load(Ordering::SeqCst);
        let (gen, state) = (self.generation.clone(), self.state.clone());
        std::thread::spawn(move || loop {
            if gen.load(Ordering::SeqCst) != generation {
                return; // drops the listener
            }
            match listener.accept() {
                Ok((stream, _)) => {
                    let (gen, state) = (gen.clone(), state.clone());
                    std::thread::spawn(move || serve(stream, state, gen, generation));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        });
    }

    pub fn kubeconfig(&self, dir: &std::path::Path) -> std::path::PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: http://127.0.0.1:{}\ncontexts:\n- name: standin\n  context:\n    cluster: standin\n    user: standin\n    namespace: default\ncurrent-context: standin\nusers:\n- name: standin\n  user: {{}}\n",
                self.port
            ),
        )
        .unwrap();
        path
    }
}

fn decode(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn matches(pod: &Value, ns: Option<&str>, selector: &[(String, String)]) -> bool {
    if let Some(ns) = ns {
        if pod["metadata"]["namespace"] != ns {
            return false;
        }
    }
    selector
        .iter()
        .all(|(k, v)| pod["metadata"]["labels"][k].as_str() == Some(v.as_str()))
}

fn serve(
    mut stream: TcpStream,
    state: Arc<(Mutex<State>, Condvar)>,
    gen: Arc<AtomicU64>,
    generation: u64,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let target = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let params: BTreeMap<String, String> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), decode(v)))
        .collect();
    let ns = path
        .strip_prefix("/api/v1/namespaces/")
        .and_then(|r| r.strip_suffix("/pods"))
        .map(str::to_string);
    if ns.is_none() && path != "/api/v1/pods" {
        let _ = stream
            .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        return;
    }
    let selector: Vec<(String, String)> = params
        .get("labelSelector")
        .map(|s| {
            s.split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .unwrap_or_default();
    let (lock, cv) = &*state;
    if params.get("watch").map(String::as_str) != Some("true")
        && params.get("watch").map(String::as_str) != Some("1")
    {
        let st = lock.lock().unwrap();
        let items: Vec<Value> = st
            .pods
            .values()
            .filter(|p| matches(p, ns.as_deref(), &selector))
            .cloned()
            .collect();
        let body = json!({"apiVersion": "v1", "kind": "PodList",
                          "metadata": {"resourceVersion": st.rv.to_string()}, "items": items})
        .to_string();
        let _ = stream.write_all(
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        return;
    }
    let from: u64 = params
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if stream
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n")
        .is_err()
    {
        return;
    }
    let send = |stream: &mut TcpStream, v: &Value| -> bool {
        let line = format!("{v}\n");
        stream
            .write_all(format!("{:x}\r\n{line}\r\n", line.len()).as_bytes())
            .is_ok()
    };
    let mut seen = from;
    {
        let st = lock.lock().unwrap();
        if from < st.oldest {
            let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
                "status": "Failure", "reason": "Expired", "code": 410,
                "message": format!("too old resource version: {from} ({})", st.oldest)}});
            send(&mut stream, &gone);
            let _ = stream.write_all(b"0\r\n\r\n");
            return;
        }
    }
    loop {
        let pending: Vec<Value> = {
            let st = lock.lock().unwrap();
            let (st, _) = cv
                .wait_timeout_while(st, Duration::from_millis(200), |st| {
                    st.rv <= seen && gen.load(Ordering::SeqCst) == generation
                })
                .unwrap();
            if gen.load(Ordering::SeqCst) != generation {
                return; // API restart: the stream just ends
            }
            let mut out: Vec<Value> = st
                .events
                .iter()
                .filter(|(rv, _, p)| *rv > seen && matches(p, ns.as_deref(), &selector))
                .map(|(_, t, p)| json!({"type": t, "object": p}))
                .collect();
            if out.is_empty() {
                out.push(
                    json!({"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1",
                    "metadata": {"resourceVersion": st.rv.to_string()}}}),
                );
            }
            seen = st.rv;
            out
        };
        for ev in pending {
            if !send(&mut stream, &ev) {
                return;
            }
        }
    }
}
