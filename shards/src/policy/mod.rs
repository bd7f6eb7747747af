//! Load-balancing policies. Each shard owns its instance and routes from its own state.

mod cache_aware;
mod consistent_hash;
mod kv_affinity;
mod kv_aware;
mod kv_holders;
mod kv_index;
mod placement;
mod power_of_two;
mod prefix_homes;
mod radix_tree;
mod random;
mod recent_traffic;
mod round_robin;
mod sessions;
mod sticky_least_loaded;
pub mod text;
mod text_key;

pub use cache_aware::{CacheAware, CacheAwareConfig};

pub use consistent_hash::ConsistentHash;
pub use kv_aware::{KvAware, KvAwareConfig};
pub use power_of_two::PowerOfTwo;
pub use random::Random;
pub use round_robin::RoundRobin;
pub use sticky_least_loaded::{StickyLeastLoaded, DEFAULT_SESSION_TTL};

use crate::codec::request::RequestHead;
use crate::metrics::RatioHistogram;
use crate::state::PoolView;
use crate::worker::{WorkerId, WorkerRole};

/// Headers that name a session, in priority order (0.1.17's consistent_hash and
/// sticky_least_loaded; docs/cli.md).
pub const SESSION_HEADERS: [&[u8]; 6] = [
    b"x-session-id",
    b"x-user-id",
    b"x-tenant-id",
    b"x-correlation-id",
    b"x-request-id",
    b"x-trace-id",
];

/// The policy names of the published router.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyKind {
    RoundRobin,
    Random,
    ConsistentHash,
    PowerOfTwo,
    CacheAware,
    StickyLeastLoaded,
    KvAware,
}

impl PolicyKind {
    pub fn parse(s: &str) -> Option<PolicyKind> {
        Some(match s {
            "round_robin" => PolicyKind::RoundRobin,
            "random" => PolicyKind::Random,
            "consistent_hash" => PolicyKind::ConsistentHash,
            "power_of_two" => PolicyKind::PowerOfTwo,
            "cache_aware" => PolicyKind::CacheAware,
            "sticky_least_loaded" => PolicyKind::StickyLeastLoaded,
            "kv_aware" => PolicyKind::KvAware,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::RoundRobin => "round_robin",
            PolicyKind::Random => "random",
            PolicyKind::ConsistentHash => "consistent_hash",
            PolicyKind::PowerOfTwo => "power_of_two",
            PolicyKind::CacheAware => "cache_aware",
            PolicyKind::StickyLeastLoaded => "sticky_least_loaded",
            PolicyKind::KvAware => "kv_aware",
        }
    }

    /// Builds the shard-local instance for `role`'s pool; `seed` differs per shard so
    /// shards do not move in lockstep.
    pub fn build(self, seed: u64, options: &PolicyOptions, role: WorkerRole) -> Box<dyn Policy> {
        match self {
            PolicyKind::Random => Box::new(Random::new(seed)),
            PolicyKind::ConsistentHash => {
                Box::new(ConsistentHash::new(options.consistent_hash_load_factor))
            }
            PolicyKind::PowerOfTwo => Box::new(PowerOfTwo::new(seed)),
            PolicyKind::CacheAware => Box::new(CacheAware::new(options.cache_aware.clone())),
            PolicyKind::RoundRobin => Box::new(RoundRobin::new(seed as usize)),
            PolicyKind::StickyLeastLoaded => Box::new(StickyLeastLoaded::new(options.session_ttl)),
            PolicyKind::KvAware => Box::new(KvAware::new(options.kv_aware.clone(), seed, role)),
        }
    }
}

impl Default for CacheAwareConfig {
    fn default() -> Self {
        CacheAwareConfig {
            cache_threshold: 0.3,
            balance_abs_threshold: 64,
            balance_rel_threshold: 1.5,
            max_tree_size: 33_554_432,
        }
    }
}

/// Policy settings from the command line.
#[derive(Clone, Debug)]
pub struct PolicyOptions {
    /// `--consistent-hash-load-factor`: bounded loads for consistent_hash (off: None).
    pub consistent_hash_load_factor: Option<f64>,
    pub cache_aware: CacheAwareConfig,
    /// sticky_least_loaded: idle time after which a session is forgotten.
    pub session_ttl: std::time::Duration,
    pub kv_aware: KvAwareConfig,
}

impl Default for PolicyOptions {
    fn default() -> Self {
        PolicyOptions {
            consistent_hash_load_factor: None,
            cache_aware: CacheAwareConfig::default(),
            session_ttl: DEFAULT_SESSION_TTL,
            kv_aware: KvAwareConfig::default(),
        }
    }
}

/// What a policy may look at to decide.
pub struct RouteInput<'a> {
    pub head: &'a RequestHead,
    /// The buffered JSON body, parsed, when the pipeline read it (routing mode 2).
    pub json: Option<&'a serde_json::Value>,
    /// The prompt's tokens, when the pipeline tokenized it (kv_aware).
    pub tokens: Option<&'a [u32]>,
}

/// A prompt as kv_aware priced it on the worker it chose, in tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Priced {
    /// What the worker must prefill.
    pub new: u32,
    /// What it holds (credited).
    pub credited: u32,
}

/// Chooses a worker for one request.
pub trait Policy {
    fn kind(&self) -> PolicyKind;

    /// The policy reads the JSON body, so the pipeline must buffer and parse it.
    fn needs_body(&self) -> bool {
        false
    }

    /// The worker set changed (added or removed workers).
    fn on_workers_changed(&mut self, _workers: &PoolView<'_>) {}

    /// A routable worker for the request, or None when there is none.
    fn pick(&mut self, workers: &PoolView<'_>, input: &RouteInput<'_>) -> Option<WorkerId>;

    /// What the last `pick` learned and the other shards should too (cache_aware).
    fn take_insert(&mut self) -> Option<(WorkerId, std::sync::Arc<str>)> {
        None
    }

    /// What the last `pick` priced (kv_aware): the prompt tokens its worker must
    /// prefill, counted against it until its answer starts, and those it holds.
    fn take_charge(&mut self) -> Option<Priced> {
        None
    }

    /// Whether this router sends all of its workers' requests (`Delta::SoleSender`).
    fn set_sole_sender(&mut self, _sole: bool) {}

    /// Another shard routed `text` to `worker` at `at`.
    fn remote_insert(&mut self, _worker: WorkerId, _text: &str, _at: std::time::Instant) {}

    /// The blocks the last `pick` noted provisionally (kv_aware), for the other shards.
    fn take_provisional(&mut self) -> Option<crate::kv_blocks::ProvisionalBlocks> {
        None
    }

    /// Another shard noted `names` provisionally on `worker` (kv_aware).
    fn remote_provisional(&mut self, _worker: WorkerId, _names: &[u64]) {}

    /// A worker's KV blocks changed (kv_aware).
    fn kv_blocks(&mut self, _delta: &crate::kv_blocks::KvBlockDelta) {}

    /// A worker left: whatever is known of its cache goes.
    fn forget_worker(&mut self, _worker: WorkerId) {}

    /// `POST /finish_session`: the session is over (sticky_least_loaded). Whether it
    /// was known.
    fn finish_session(&mut self, _session: &str) -> bool {
        false
    }

    /// Shrinks per-worker state to `max` (the control core's periodic eviction).
    fn evict(&mut self, _max: usize) {}

    /// Bytes of routing state per worker (`tree_size`).
    fn tree_sizes(&self) -> Vec<(WorkerId, usize)> {
        Vec::new()
    }

    /// kv_aware decisions: credited, not credited, without tokens, by session.
    fn kv_lookups(&self) -> [u64; 4] {
        [0; 4]
    }

    /// kv_aware: the fraction of each priced prompt its chosen worker had cached.
    fn kv_matched(&self) -> RatioHistogram {
        RatioHistogram::default()
    }

    /// The request goes where its session is bound, so its prompt's tokens are not
    /// needed (kv_aware's session affinity).
    fn routes_by_session(&self, _workers: &PoolView<'_>, _input: &RouteInput<'_>) -> bool {
        false
    }

    /// Decisions taken from the cache, and not (`cache_hits_total`, `cache_misses_total`).
    fn cache_counts(&self) -> (u64, u64) {
        (0, 0)
    }
}
