//! What the control core is given at start, and what it is asked while it runs.

use super::health::ProbeConfig;
use super::k8s_discovery::K8sConfig;
use shards::policy::PolicyKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Asked of the control core by the main thread.
pub enum Command {
    /// Drain every shard, waiting up to `grace` for in-flight requests.
    Shutdown { grace: Duration },
    /// Re-read `--worker-urls-file` (SIGHUP).
    Reload,
}

/// Settings of the control core.
#[derive(Clone, Debug)]
pub struct ControlConfig {
    pub worker_urls: Vec<String>,
    /// `--service-discovery`: pods watched through the Kubernetes API.
    pub k8s: Option<K8sConfig>,
    /// `--vllm-discovery-address`: vLLM NCCL instances announce themselves here.
    pub discovery_address: Option<String>,
    /// P/D pools (`--prefill`, `--decode`).
    pub prefill_urls: Vec<String>,
    pub decode_urls: Vec<String>,
    /// `--enable-igw`: learn each worker's models (`models.rs`).
    pub igw: bool,
    /// `--kv-connector mooncake`: prefill URLs and the bootstrap ports to ask.
    pub mooncake_bootstrap: Vec<(String, u16)>,
    pub dp_size: u32,
    pub probe: ProbeConfig,
    pub health_interval: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
    pub startup_timeout: Duration,
    pub startup_interval: Duration,
    pub prometheus: SocketAddr,
    /// Where the shards listen (the chosen port for `--port 0`), for `/router_info`.
    pub listen: SocketAddr,
    pub shards: usize,
    pub policy: PolicyKind,
    /// cache_aware: evict every shard's tree down to `max_tree_size` this often.
    pub eviction_interval: Duration,
    pub max_tree_size: usize,
    pub breaker: shards::breaker::BreakerConfig,
    /// `--worker-urls-file`, and the URLs it held at start (already in `worker_urls`).
    pub worker_urls_file: Option<std::path::PathBuf>,
    pub file_urls: Vec<String>,
    /// kv_aware: where the KV events come from (None: another policy).
    pub kv_events: Option<super::kv_events::KvEventsConfig>,
    /// systemd's notify socket, when started with `Type=notify`.
    pub notifier: Option<Arc<crate::notify::Notifier>>,
}

/// What the control core tells the main thread while it starts.
pub enum StartUp {
    /// Its sockets are bound and the worker set is queued for the shards: they may
    /// listen now. The start-up wait goes on; they answer 503 and say why meanwhile.
    Bound,
    /// A worker is healthy (or none is configured): the router serves.
    Ready(Started),
    Failed(String),
}

/// What the control core found at start-up.
pub struct Started {
    /// (url, healthy, why not) per worker.
    pub workers: Vec<(String, bool, Option<String>)>,
    /// Where `/metrics` is served (the port the kernel chose for `--prometheus-port 0`).
    pub metrics: SocketAddr,
}
