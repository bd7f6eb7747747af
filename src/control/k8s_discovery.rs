//! Kubernetes service discovery (`--service-discovery`): kube-rs's watcher on the
//! control core's tokio runtime. The watcher lists, then watches from the list's
//! resourceVersion (bookmarks on), and lists again after a 410 Gone or a lost
//! connection. API errors go through its default backoff, and the workers already known
//! keep serving while the API server is unreachable.
//!
//! A pod is a worker while its phase is Running, its Ready condition is True, it has an
//! IP, and it has no deletion timestamp. It leaves when any of these stops holding or
//! when it is deleted: the published router keeps deleted pods, we do not. A pod whose IP
//! changes is replaced. In P/D mode, `--prefill-selector` and `--decode-selector` give
//! the pools.

use super::ControlState;
use futures_lite::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client};
use shards::messages::WorkerRole;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::Duration;

/// What one watcher looks for.
#[derive(Clone, Debug)]
pub struct Watch {
    pub role: WorkerRole,
    /// `k=v` pairs, all required.
    pub selector: Vec<String>,
}

/// `--service-discovery*` settings.
#[derive(Clone, Debug)]
pub struct K8sConfig {
    pub watches: Vec<Watch>,
    /// None: all namespaces.
    pub namespace: Option<String>,
    pub port: u16,
}

/// Annotation a prefill pod may carry (recorded in the log; vLLM's NIXL flow has no
/// bootstrap step).
const BOOTSTRAP_ANNOTATION: &str = "vllm.ai/bootstrap-port";

/// The worker URL of a pod that should serve, or None.
pub fn serving_url(pod: &Pod, port: u16) -> Option<String> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    let ready = status
        .conditions
        .as_ref()?
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let ip = status.pod_ip.as_deref().filter(|ip| !ip.is_empty())?;
    if !ready {
        return None;
    }
    Some(if ip.contains(':') {
        format!("http://[{ip}]:{port}")
    } else {
        format!("http://{ip}:{port}")
    })
}

/// Pause before building the Kubernetes client again: long enough not to flood the log
/// while a kubeconfig or service account is missing, short enough to start soon after
/// it appears.
const CLIENT_RETRY: Duration = Duration::from_secs(5);

/// Starts one watcher task per pool. A client that cannot be built (no KUBECONFIG, not
/// in a cluster) is retried with a pause, and said so in the log.
pub async fn run(state: Rc<RefCell<ControlState>>, cfg: K8sConfig) {
    let client = loop {
        match Client::try_default().await {
            Ok(c) => break c,
            Err(e) => {
                let secs = CLIENT_RETRY.as_secs();
                shards::warn!(
                    "service discovery: no Kubernetes client yet ({e}); retrying in {secs}s"
                );
                tokio::time::sleep(CLIENT_RETRY).await;
            }
        }
    };
    for w in cfg.watches.clone() {
        let api: Api<Pod> = match &cfg.namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        tokio::task::spawn_local(watch_pool(state.clone(), api, w, cfg.port));
    }
}

/// One pod tracked as a worker.
struct Tracked {
    url: String,
}

async fn watch_pool(state: Rc<RefCell<ControlState>>, api: Api<Pod>, w: Watch, port: u16) {
    let config = watcher::Config::default().labels(&w.selector.join(","));
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    // Pods by namespace/name.
    let mut tracked: HashMap<String, Tracked> = HashMap::new();
    // Pods listed since the last (re)list began; the others are gone.
    let mut listed: HashSet<String> = HashSet::new();
    let mut failing = false;
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(e) => {
                if failing {
                    shards::info!("service discovery: the API server answers again");
                    failing = false;
                }
                e
            }
            Err(e) => {
                if !failing {
                    shards::warn!(
                        "service discovery: {e}; keeping the {} known worker(s) while retrying",
                        tracked.len()
                    );
                    failing = true;
                }
                continue;
            }
        };
        match event {
            Event::Init => listed.clear(),
            Event::InitApply(pod) => {
                listed.insert(key(&pod));
                apply(&state, &mut tracked, &pod, w.role, port);
            }
            Event::InitDone => {
                let gone: Vec<String> = tracked
                    .keys()
                    .filter(|k| !listed.contains(*k))
                    .cloned()
                    .collect();
                for k in gone {
                    remove(&state, &mut tracked, &k, "no longer listed");
                }
            }
            Event::Apply(pod) => apply(&state, &mut tracked, &pod, w.role, port),
            Event::Delete(pod) => remove(&state, &mut tracked, &key(&pod), "deleted"),
        }
    }
}

fn key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or(""),
        pod.metadata.name.as_deref().unwrap_or("")
    )
}

fn apply(
    state: &Rc<RefCell<ControlState>>,
    tracked: &mut HashMap<String, Tracked>,
    pod: &Pod,
    role: WorkerRole,
    port: u16,
) {
    let k = key(pod);
    let want = serving_url(pod, port);
    match (tracked.get(&k), want) {
        (Some(t), Some(url)) if t.url == url => {}
        (Some(_), Some(url)) => {
            remove(state, tracked, &k, "its IP changed");
            add(state, tracked, k, url, role, pod);
        }
        (Some(_), None) => remove(state, tracked, &k, "not ready"),
        (None, Some(url)) => add(state, tracked, k, url, role, pod),
        (None, None) => {}
    }
}

fn add(
    state: &Rc<RefCell<ControlState>>,
    tracked: &mut HashMap<String, Tracked>,
    k: String,
    url: String,
    role: WorkerRole,
    pod: &Pod,
) {
    let mut s = state.borrow_mut();
    // Kubernetes says it is ready; our health checks take over from here.
    match s.add_worker(&url, role, true, None) {
        Ok(_) => {}
        Err(e) => {
            shards::warn!("service discovery: pod {k}: {e}");
            return;
        }
    }
    s.discovery_updates += 1;
    s.discovery_added += 1;
    let bootstrap = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(BOOTSTRAP_ANNOTATION))
        .map(|p| format!(", bootstrap port {p}"))
        .unwrap_or_default();
    shards::info!(
        "service discovery: pod {k} joined as {} worker {url}{bootstrap}",
        role.name()
    );
    tracked.insert(k, Tracked { url });
}

fn remove(
    state: &Rc<RefCell<ControlState>>,
    tracked: &mut HashMap<String, Tracked>,
    k: &str,
    why: &str,
) {
    let Some(t) = tracked.remove(k) else {
        return;
    };
    let mut s = state.borrow_mut();
    s.remove_worker(&t.url);
    s.discovery_updates += 1;
    s.discovery_removed += 1;
    shards::info!("service discovery: pod {k} left ({why}): {}", t.url);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(phase: &str, ready: &str, ip: &str, deleting: bool) -> Pod {
        let mut v = serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "status": {"phase": phase, "podIP": ip,
                       "conditions": [{"type": "Ready", "status": ready}]}
        });
        if deleting {
            v["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z".into();
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn only_running_ready_live_pods_serve() {
        assert_eq!(
            serving_url(&pod("Running", "True", "10.1.2.3", false), 8000).as_deref(),
            Some("http://10.1.2.3:8000")
        );
        assert_eq!(
            serving_url(&pod("Running", "False", "10.1.2.3", false), 8000),
            None
        );
        assert_eq!(
            serving_url(&pod("Pending", "True", "10.1.2.3", false), 8000),
            None
        );
        assert_eq!(serving_url(&pod("Running", "True", "", false), 8000), None);
        assert_eq!(
            serving_url(&pod("Running", "True", "10.1.2.3", true), 8000),
            None
        );
        assert_eq!(
            serving_url(&pod("Running", "True", "fd00::5", false), 9).as_deref(),
            Some("http://[fd00::5]:9")
        );
    }
}
