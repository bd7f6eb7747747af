//! What ingestion counts, per worker, for `/metrics` (`vllm_router_kv_events_*`).

use std::collections::BTreeMap;

/// One worker's ingestion counters.
#[derive(Clone, Debug, Default)]
pub struct KvWorkerStats {
    /// Event messages received (live and replayed).
    pub received: u64,
    /// Events applied to the index.
    pub applied: u64,
    /// Messages or blocks dropped, by reason.
    pub dropped: BTreeMap<&'static str, u64>,
    /// Sequence gaps seen, replays asked for, publisher restarts.
    pub gaps: u64,
    pub replays: u64,
    pub restarts: u64,
    /// Blocks indexed now.
    pub blocks: u64,
}

/// Per worker URL (`url@rank` for a DP rank of its own).
#[derive(Debug, Default)]
pub struct KvStats {
    pub workers: BTreeMap<String, KvWorkerStats>,
}

impl KvStats {
    /// The counters of `worker`, created at its first message (the name is copied
    /// only then: this runs several times per message).
    pub fn of(&mut self, worker: &str) -> &mut KvWorkerStats {
        if !self.workers.contains_key(worker) {
            self.workers
                .insert(worker.to_string(), KvWorkerStats::default());
        }
        self.workers.get_mut(worker).expect("inserted above")
    }
}
