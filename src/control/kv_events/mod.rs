//! Ingestion of vLLM's KV-cache events (`--policy kv_aware`): for every regular worker,
//! find its event publishers (the command line's `--kv-event-source`, or the worker's
//! `/kv_event_sources`), subscribe to each DP rank, and keep every shard's copy of the
//! block index in step (`Delta::KvBlocks`). Workers that come and go (admin API,
//! Kubernetes, ZMQ discovery) are followed within a second.

pub mod index;
pub mod metrics;
pub mod sequence;
pub mod sources;
pub mod stats;
pub mod subscriber;
pub mod wire;

use super::http::{get, Get};
use super::state::ControlState;
use serde_json::Value;
use shards::messages::{WorkerId, WorkerRole};
use sources::{parse_block_size, parse_sources, SourceSpec, WorkerSources};
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;
use subscriber::Target;
use tokio::task::{JoinHandle, JoinSet};

/// How often the worker set is compared with the running subscribers.
const FOLLOW_INTERVAL: Duration = Duration::from_secs(1);

/// How long to wait before asking a worker for its sources again (it may still be
/// starting, or not publish at all).
const DISCOVERY_RETRY: Duration = Duration::from_secs(5);

/// Largest discovery answer read.
const MAX_DISCOVERY_BODY: usize = 64 * 1024;

/// The command line's part.
#[derive(Clone, Debug, Default)]
pub struct KvEventsConfig {
    /// `--kv-event-source`: worker URL -> endpoints by DP rank.
    pub static_sources: HashMap<String, Vec<String>>,
    /// `--kv-event-replay-source`: worker URL -> replay endpoints by DP rank.
    pub replay_sources: HashMap<String, Vec<String>>,
    /// `--kv-event-block-size`, for the static sources.
    pub block_size: u32,
    pub api_key: Option<String>,
    /// The pool whose workers are followed: regular, or prefill in P/D mode.
    pub role: WorkerRole,
}

impl KvEventsConfig {
    /// The static sources of `base`, if it has any.
    fn static_of(&self, base: &str) -> Option<WorkerSources> {
        let endpoints = self.static_sources.get(base)?;
        let replays = self.replay_sources.get(base);
        let sources = endpoints
            .iter()
            .enumerate()
            .map(|(rank, endpoint)| SourceSpec {
                rank: rank as u32,
                endpoint: endpoint.clone(),
                replay: replays.and_then(|r| r.get(rank)).cloned(),
                topic: String::new(),
            })
            .collect();
        Some(WorkerSources {
            block_size: self.block_size,
            sources,
        })
    }
}

/// Follows the workers of `cfg.role` forever, one ingestion task per base URL.
pub async fn run(state: Rc<RefCell<ControlState>>, cfg: KvEventsConfig) {
    let cfg = Rc::new(cfg);
    let mut tasks: HashMap<String, JoinHandle<()>> = HashMap::new();
    let mut tick = tokio::time::interval(FOLLOW_INTERVAL);
    loop {
        tick.tick().await;
        let bases: Vec<(String, SocketAddr, String)> = {
            let s = state.borrow();
            let followed = |b: &str| {
                (s.registry.workers.iter()).any(|w| w.base_url == b && w.spec.role == cfg.role)
            };
            s.registry
                .bases()
                .into_iter()
                .filter(|(b, _, _)| followed(b))
                .collect()
        };
        tasks.retain(|base, task| {
            let kept = bases.iter().any(|(b, _, _)| b == base);
            if !kept {
                // Its blocks went with it: the shards forget a removed worker.
                task.abort();
            }
            kept
        });
        for (base, addr, authority) in bases {
            if let std::collections::hash_map::Entry::Vacant(e) = tasks.entry(base) {
                let task =
                    worker_task(state.clone(), cfg.clone(), e.key().clone(), addr, authority);
                e.insert(tokio::task::spawn_local(task));
            }
        }
    }
}

/// Finds one worker's sources, then runs a subscriber per DP rank.
async fn worker_task(
    state: Rc<RefCell<ControlState>>,
    cfg: Rc<KvEventsConfig>,
    base: String,
    addr: SocketAddr,
    authority: String,
) {
    let found = loop {
        let found = match cfg.static_of(&base) {
            Some(s) => Ok(s),
            None => discover(&cfg, addr, &authority).await,
        };
        match found {
            Ok(s) if !s.sources.is_empty() => break s,
            Ok(_) => shards::debug!("kv events: {base} publishes none"),
            Err(e) => shards::debug!("kv events: {base}: {e}"),
        }
        tokio::time::sleep(DISCOVERY_RETRY).await;
    };
    // Dropped (the worker left): every subscriber ends with it.
    let mut subscribers = JoinSet::new();
    for spec in found.sources {
        let Some((worker, url)) = worker_of(&state, &base, spec.rank) else {
            shards::warn!("kv events: {base} has no DP rank {}", spec.rank);
            continue;
        };
        let target = Target {
            worker,
            url,
            block_size: found.block_size,
        };
        subscribers.spawn_local(subscriber::run(state.clone(), spec, target));
    }
    while subscribers.join_next().await.is_some() {}
}

/// The worker a DP rank's events are about: `base@rank` when the router splits the
/// worker by rank, else the worker itself.
fn worker_of(
    state: &Rc<RefCell<ControlState>>,
    base: &str,
    rank: u32,
) -> Option<(WorkerId, String)> {
    let s = state.borrow();
    let entries: Vec<_> = s
        .registry
        .workers
        .iter()
        .filter(|w| w.base_url == base)
        .collect();
    let w = match entries.iter().find(|w| w.spec.dp_rank == Some(rank)) {
        Some(w) => w,
        None if entries.len() == 1 => entries[0],
        None => return None,
    };
    Some((w.spec.id, w.spec.url.clone()))
}

/// Asks a worker for its block size and publishers.
async fn discover(
    cfg: &KvEventsConfig,
    addr: SocketAddr,
    authority: &str,
) -> Result<WorkerSources, String> {
    let fetch = |path: &'static str| async move {
        let req = Get {
            addr,
            authority,
            path,
            api_key: cfg.api_key.as_deref(),
        };
        let (status, body) = get(&req, Some(MAX_DISCOVERY_BODY)).await?;
        if status != 200 {
            return Err(format!("{path} answered {status}"));
        }
        serde_json::from_slice::<Value>(&body).map_err(|e| format!("{path}: {e}"))
    };
    let info = fetch("/get_server_info").await?;
    let block_size = parse_block_size(&info).unwrap_or(cfg.block_size);
    let listed = fetch("/kv_event_sources").await?;
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    Ok(WorkerSources {
        block_size,
        sources: parse_sources(&listed, host),
    })
}
