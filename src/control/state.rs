//! The control core's state: the worker registry of record and everything its tasks
//! share (one thread: `Rc<RefCell>`), with the one way workers join and leave.

use super::breakers::Breakers;
use super::health::{HealthTracker, ProbeConfig};
use super::metrics::Aggregator;
use super::registry::{Registry, WorkerEntry};
use super::scrape::WorkerLoad;
use shards::link::ControlEnd;
use shards::messages::{Delta, WorkerId, WorkerRole};
use shards::policy::PolicyKind;
use std::collections::{BTreeSet, HashMap};

/// Everything the control core's tasks share (one thread: `Rc<RefCell>`).
pub struct ControlState {
    /// Where the router serves, for `/router_info`.
    pub listen: std::net::SocketAddr,
    pub metrics_addr: std::net::SocketAddr,
    pub shard_count: usize,
    pub links: Vec<ControlEnd>,
    pub registry: Registry,
    pub metrics: Aggregator,
    pub probe: ProbeConfig,
    /// The policy, for `policy_decisions_total`.
    pub policy: PolicyKind,
    /// The pool kv_aware prices by blocks (regular, or prefill in P/D mode), if any.
    pub kv_stage: Option<shards::messages::WorkerRole>,
    /// A shard reported new in-flight counts since the last load broadcast.
    pub loads_dirty: bool,
    /// Per worker, what its own `/metrics` said at the last scrape.
    pub scraped: HashMap<WorkerId, WorkerLoad>,
    /// Per worker, the requests it had at the last scrape that were not this router's
    /// then (see [`ControlState::note_scrape`]).
    pub external: HashMap<WorkerId, u32>,
    pub breakers: Breakers,
    /// Base URLs the worker list file owns (see `reload`).
    pub file_workers: BTreeSet<String>,
    /// Workers added or removed by discovery (`discovery_updates_total`), and each.
    pub discovery_updates: u64,
    pub discovery_added: u64,
    pub discovery_removed: u64,
    /// Worker list file reloads (SIGHUP): applied, and refused as invalid.
    pub reloads: [u64; 2],
    /// KV event ingestion counters (kv_aware).
    pub kv: super::kv_events::stats::KvStats,
    /// Whether this router sends all of its workers' traffic (their counters say).
    pub sole: super::sole_sender::SoleSender,
}

impl ControlState {
    pub fn broadcast(&self, delta: Delta) {
        for link in &self.links {
            link.send(delta.clone());
        }
    }

    pub fn worker_json(&self, w: &WorkerEntry) -> serde_json::Value {
        serde_json::json!({
            "url": w.spec.url,
            "role": w.spec.role.name(),
            "address": w.spec.addr.to_string(),
            "healthy": w.health.healthy,
            "load": self.metrics.load(w.spec.id),
            "processed_requests": self.metrics.processed(w.spec.id),
            "dp_rank": w.spec.dp_rank,
            "kv_cache_usage": self.scraped.get(&w.spec.id).map(|l| l.kv_cache_usage),
            "external_load": self.external_load(w.spec.id),
            "circuit_breaker": {
                "state": self.breakers.state(w.spec.id).name(),
                "consecutive_failures": self.breakers.failures(w.spec.id),
            },
        })
    }

    /// Requests a worker has that did not come from this router (other routers,
    /// direct clients), from its last scrape.
    pub fn external_load(&self, id: WorkerId) -> u32 {
        self.external.get(&id).copied().unwrap_or(0)
    }

    /// Keeps what a scrape of `id` found (None: the scrape failed); true when the
    /// shards' load view changes. The worker's queue is compared with this router's
    /// in-flight count as the scrape lands, not later: a second on, this router's own
    /// requests that ended since would show as someone else's until the next scrape.
    pub fn note_scrape(&mut self, id: WorkerId, found: Option<WorkerLoad>) -> bool {
        // A scrape that lands after its worker was removed keeps nothing (ids are never
        // reused, so an entry kept here would stay for the router's life).
        if self.registry.get(id).is_none() {
            return false;
        }
        let Some(load) = found else {
            self.sole.forget(id);
            self.scraped.remove(&id);
            return self.external.remove(&id).is_some_and(|n| n > 0);
        };
        let ours = self.metrics.load(id) as f64;
        let external = (load.running + load.waiting - ours).max(0.0) as u32;
        match load.finished {
            Some(finished) => {
                let taken = finished + load.running + load.waiting;
                self.sole.note(id, taken, self.sent_to_server_of(id) as f64);
            }
            None => self.sole.forget(id),
        }
        self.scraped.insert(id, load);
        self.external.insert(id, external) != Some(external)
    }

    /// Requests this router sent to the server `id` runs on (every data-parallel rank
    /// of its base URL: they share one `/metrics`).
    fn sent_to_server_of(&self, id: WorkerId) -> u64 {
        let Some(base) = self.registry.get(id).map(|w| &w.base_url) else {
            return 0;
        };
        let ranks = self.registry.workers.iter().filter(|w| &w.base_url == base);
        ranks.map(|w| self.metrics.decisions(w.spec.id)).sum()
    }

    /// Closes a round of scrapes and tells the shards when the sole-sender verdict
    /// changed.
    pub fn end_scrape_round(&mut self) {
        let Some(sole) = self.sole.end_round() else {
            return;
        };
        self.broadcast(Delta::SoleSender(sole));
        // Only cache_aware's homes use the verdict.
        if self.policy == PolicyKind::CacheAware {
            let what = if sole {
                "the workers' counters say this router sends all of their requests: \
                 cache_aware's prompt homes follow its traffic"
            } else {
                "the workers' counters show requests from another sender: cache_aware's \
                 prompt homes depend on the prompts alone"
            };
            shards::info!("{what}");
        }
    }

    /// Sets the health of every rank of `base` and tells the shards.
    pub fn set_health(&mut self, base: &str, healthy: bool) {
        let mut ids: Vec<WorkerId> = Vec::new();
        for w in self.registry.of_base(base) {
            w.spec.healthy = healthy;
            ids.push(w.spec.id);
        }
        for id in ids {
            self.broadcast(Delta::Health { id, healthy });
        }
    }

    /// The URL users know a worker by (`#id` once it was removed).
    pub fn url_of(&self, id: WorkerId) -> String {
        self.registry
            .get(id)
            .map_or_else(|| format!("#{id}"), |w| w.spec.url.clone())
    }

    /// Registers a base URL in `role`'s pool (one worker per data-parallel rank) with
    /// the health it is known to have, and tells the shards. Every way a worker joins
    /// (command line, admin API, Kubernetes, vLLM discovery, the worker list file)
    /// comes through here.
    pub fn add_worker(
        &mut self,
        url: &str,
        role: WorkerRole,
        healthy: bool,
        pd_address: Option<&str>,
    ) -> Result<Vec<WorkerId>, String> {
        self.registry.add_role(url, role)?;
        Ok(self.publish(url, healthy, pd_address))
    }

    /// Gives a registered base URL (every rank) the health it is known to have and
    /// tells the shards; `add_worker`, and the admin API once its probe is back.
    pub fn publish(&mut self, url: &str, healthy: bool, pd_address: Option<&str>) -> Vec<WorkerId> {
        let base = url.trim_end_matches('/').to_string();
        let mut specs = Vec::new();
        for w in self.registry.of_base(&base) {
            w.health = HealthTracker::new(healthy);
            w.spec.healthy = healthy;
            w.spec.pd_address = pd_address.map(str::to_string);
            specs.push(w.spec.clone());
        }
        let ids = specs.iter().map(|s| s.id).collect();
        for spec in specs {
            self.broadcast(Delta::Upsert(spec));
        }
        ids
    }

    /// Removes a base URL (every rank) or one `url@rank` everywhere; in-flight
    /// requests finish on the shards. Returns the removed ids (none: no such worker).
    pub fn remove_worker(&mut self, url: &str) -> Vec<WorkerId> {
        let ids = self.registry.remove(url);
        for &id in &ids {
            self.breakers.forget(id);
            self.scraped.remove(&id);
            self.external.remove(&id);
            self.broadcast(Delta::Remove(id));
        }
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn state() -> ControlState {
        let addr: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
        ControlState {
            listen: addr,
            metrics_addr: addr,
            shard_count: 0,
            links: Vec::new(),
            registry: Registry::new(1),
            metrics: Aggregator::default(),
            probe: ProbeConfig {
                endpoint: "/health".into(),
                timeout: Duration::from_secs(1),
                api_key: None,
            },
            policy: PolicyKind::CacheAware,
            kv_stage: None,
            loads_dirty: false,
            scraped: HashMap::new(),
            external: HashMap::new(),
            breakers: Breakers::new(Default::default()),
            file_workers: BTreeSet::new(),
            discovery_updates: 0,
            discovery_added: 0,
            discovery_removed: 0,
            reloads: [0, 0],
            kv: Default::default(),
            sole: Default::default(),
        }
    }

    fn busy() -> Option<WorkerLoad> {
        Some(WorkerLoad {
            running: 3.0,
            waiting: 2.0,
            kv_cache_usage: 0.5,
            finished: None,
        })
    }

    #[test]
    fn a_removed_worker_leaves_no_scraped_load_behind() {
        let mut s = state();
        let ids = s
            .add_worker("http://127.0.0.1:9", WorkerRole::Regular, true, None)
            .unwrap();
        assert!(s.note_scrape(ids[0], busy()));
        assert_eq!(s.external_load(ids[0]), 5);
        assert_eq!(s.remove_worker("http://127.0.0.1:9"), ids);
        assert!(s.scraped.is_empty() && s.external.is_empty());
        // A scrape that was under way when the worker went keeps nothing either.
        assert!(!s.note_scrape(ids[0], busy()));
        assert!(s.scraped.is_empty() && s.external.is_empty());
    }
}
