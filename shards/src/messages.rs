//! What crosses between the control core and the shards. Nothing else is shared.
//!
//! Deltas flow out (control -> every shard), reports flow back (shard -> control),
//! both over crossbeam channels. A shard drains its deltas between requests.

pub use crate::worker::{MooncakeBootstrap, WorkerId, WorkerInFlight, WorkerRole, WorkerSpec};

/// A decision one shard tells the others: this text (cache_aware) or session name
/// (sticky sessions) went to this worker. `at` is when: the shards share one process
/// clock, and a report that arrives late must not pass for news (cache_aware's pin).
#[derive(Clone, Debug)]
pub struct RoutedText {
    pub worker: WorkerId,
    pub text: std::sync::Arc<str>,
    pub at: std::time::Instant,
}

/// A change to a shard's view, sent by the control core.
#[derive(Clone, Debug)]
pub enum Delta {
    /// Add a worker, or replace the one with the same id.
    Upsert(WorkerSpec),
    /// Stop sending new requests; in-flight ones finish.
    Remove(WorkerId),
    Health {
        id: WorkerId,
        healthy: bool,
    },
    /// The breaker of record for a worker changed (state or failure count).
    Breaker {
        id: WorkerId,
        state: crate::breaker::BreakerState,
        failures: u32,
    },
    /// Stop accepting, finish what is in flight, then exit the executor.
    Drain,
    /// The router is in its start-up wait, for this reason (a healthy worker, with
    /// each unhealthy one and why): `/readiness` and inference calls say so in their
    /// 503. None once the wait is over.
    StartupWait(Option<std::sync::Arc<str>>),
    /// Other shards routed these texts to these workers (cache_aware trees). One batch
    /// is shared by every receiving shard.
    CacheInserts(std::sync::Arc<Vec<RoutedText>>),
    /// A worker's KV blocks changed (kv_aware: from its KV events).
    KvBlocks(std::sync::Arc<crate::kv_blocks::KvBlockDelta>),
    /// Other shards noted these blocks provisionally on these workers (kv_aware). One
    /// batch is shared by every receiving shard.
    KvProvisional(std::sync::Arc<Vec<crate::kv_blocks::ProvisionalBlocks>>),
    /// Another shard's client finished this session (`POST /finish_session`).
    SessionFinished(std::sync::Arc<str>),
    /// Evict every worker's routing state down to this many bytes.
    CacheEvict {
        max: usize,
    },
    /// What the other shards have in flight, per worker (absent: nothing).
    Loads(Vec<WorkerInFlight>),
    /// Whether the workers' own counters say this router sends all of their requests
    /// (no other replica places requests on them): cache_aware's homes may then follow
    /// its traffic. Assumed false until said.
    SoleSender(bool),
    /// The control core's answer to a `Report::Admin`.
    AdminReply {
        token: u64,
        reply: AdminReply,
    },
}

/// An admin API call, forwarded by the shard that received it.
#[derive(Clone, Debug)]
pub struct AdminRequest {
    pub method: String,
    /// Path without the query, percent-encoding kept.
    pub path: String,
    pub query: String,
    pub body: Vec<u8>,
}

/// The answer to an admin call: status and a JSON (or plain text) body.
#[derive(Clone, Debug)]
pub struct AdminReply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

/// What a shard tells the control core.
#[derive(Clone, Debug)]
pub enum Report {
    /// A connect to this worker was refused or failed during traffic.
    WorkerUnreachable { shard: usize, id: WorkerId },
    /// A breaker outcome the control core must count (see `breaker`): every failure,
    /// and successes that reset a count or probe a half-open worker.
    Outcome {
        shard: usize,
        id: WorkerId,
        success: bool,
    },
    /// The shard finished draining and its executor is about to exit.
    Drained { shard: usize },
    /// The shard applied the end of the start-up wait (the worker set before it):
    /// once every shard has, the router says it serves.
    StartupWaitOver { shard: usize },
    /// What this shard routed where since its last batch (forwarded to the others).
    CacheInserts {
        shard: usize,
        inserts: Vec<RoutedText>,
    },
    /// kv_aware's provisional copies noted here since the last batch (forwarded to
    /// the other shards).
    KvProvisional {
        shard: usize,
        notes: Vec<crate::kv_blocks::ProvisionalBlocks>,
    },
    /// A client finished a session here (forwarded to the other shards).
    SessionFinished {
        shard: usize,
        session: std::sync::Arc<str>,
    },
    /// What this shard has in flight per worker, and the requests its policy has sent
    /// each worker so far (`policy_decisions_total`, and the sole-sender check, which
    /// compares them with the workers' own counters: a once-a-second copy lagged too
    /// much for that); sent every 100 ms when either changed.
    Loads {
        shard: usize,
        loads: Vec<WorkerInFlight>,
        sent: Vec<(WorkerId, u64)>,
    },
    /// The shard's cumulative counters, sent once a second.
    Metrics {
        shard: usize,
        metrics: Box<crate::metrics::ShardMetrics>,
    },
    /// An admin call to be answered with `Delta::AdminReply { token }` to this shard.
    Admin {
        shard: usize,
        token: u64,
        request: AdminRequest,
    },
}
