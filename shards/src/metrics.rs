//! What a shard counts about its own traffic: plain integers owned by the shard, no
//! atomics. A copy goes to the control core once a second (`Report::Metrics`); the
//! control core sums the shards and serves Prometheus text.

pub mod sketch;

use crate::worker::WorkerId;
use sketch::Sketch;
use std::collections::HashMap;
use std::time::Duration;

/// Route labels (`proxy::route::route_label`); anything else is "other", so a client
/// cannot grow label cardinality.
pub const ROUTES: [&str; 12] = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/rerank",
    "/rerank",
    "/generate",
    "/v1/models",
    "/health",
    "/liveness",
    "/readiness",
    "other",
];

pub fn route_index(path: &[u8]) -> usize {
    ROUTES
        .iter()
        .position(|r| r.as_bytes() == path)
        .unwrap_or(ROUTES.len() - 1)
}

/// Method labels, likewise bounded.
pub const METHODS: [&str; 8] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "OTHER",
];

pub fn method_index(method: &[u8]) -> usize {
    METHODS
        .iter()
        .position(|m| m.as_bytes() == method)
        .unwrap_or(METHODS.len() - 1)
}

/// Bucket bounds in seconds, from sub-millisecond proxying to half-hour generations.
pub const LATENCY_BUCKETS: [f64; 20] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0, 300.0, 600.0, 1800.0,
];

/// Bucket bounds of a fraction (kv_aware: how much of a prompt its worker had cached):
/// fine near 1, where conversations that stay put land.
pub const RATIO_BUCKETS: [f64; 10] = [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.98, 0.99, 1.0];

/// `vllm_router_pd_prefill_decisions_total{fallback}`: priced (`none`, 0.1.17's), or
/// by load for want of the prompt's tokens (`missing_tokens`, 0.1.17's outcome name).
pub const PD_PREFILL_FALLBACKS: [&str; 2] = ["none", "missing_tokens"];

/// A histogram of fractions in 0..=1 over [`RATIO_BUCKETS`] (non-cumulative counts).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RatioHistogram {
    pub counts: [u64; RATIO_BUCKETS.len()],
    pub sum: f64,
    pub count: u64,
}

impl RatioHistogram {
    pub fn observe(&mut self, r: f64) {
        let r = r.clamp(0.0, 1.0);
        let i = RATIO_BUCKETS.iter().position(|&b| r <= b).unwrap_or(0);
        self.counts[i] += 1;
        self.sum += r;
        self.count += 1;
    }

    pub fn merge(&mut self, other: &RatioHistogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a += b;
        }
        self.sum += other.sum;
        self.count += other.count;
    }
}

/// A fixed-bucket histogram (non-cumulative counts; the exposition accumulates).
#[derive(Clone, Debug, Default)]
pub struct Histogram {
    pub counts: [u64; LATENCY_BUCKETS.len()],
    /// Observations above the last bound.
    pub overflow: u64,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    pub fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        match LATENCY_BUCKETS.iter().position(|&b| s <= b) {
            Some(i) => self.counts[i] += 1,
            None => self.overflow += 1,
        }
        self.sum += s;
        self.count += 1;
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.overflow += other.overflow;
        self.sum += other.sum;
        self.count += other.count;
    }
}

/// Everything a shard has counted since it started (cumulative).
#[derive(Clone, Debug, Default)]
pub struct ShardMetrics {
    pub requests: [u64; ROUTES.len()],
    pub duration: [Histogram; ROUTES.len()],
    /// Time to the first body byte sent to the client: the TTFT for streams.
    pub ttfb: [Histogram; ROUTES.len()],
    /// Retries (attempts after the first), by route.
    pub retries: [u64; ROUTES.len()],
    /// Requests whose every attempt failed, by route.
    pub retries_exhausted: [u64; ROUTES.len()],
    /// (route, error type) -> count.
    pub errors: HashMap<(usize, &'static str), u64>,
    /// (route, method, status) -> count.
    pub http: HashMap<(usize, usize, u16), u64>,
    /// Per worker, filled from the shard's `WorkerSet` when the copy is taken.
    pub processed: HashMap<WorkerId, u64>,
    pub in_flight: HashMap<WorkerId, u32>,
    /// P/D requests by route, legs per worker, errors by kind, and leg durations.
    pub pd_requests: [u64; ROUTES.len()],
    pub pd_prefill: HashMap<WorkerId, u64>,
    pub pd_decode: HashMap<WorkerId, u64>,
    pub pd_errors: HashMap<&'static str, u64>,
    /// P/D, per worker when the copy was taken: unpriced prefill legs in flight, and
    /// requests waiting for their prefill before their decode leg (nonzero only).
    pub pd_unpriced: HashMap<WorkerId, u32>,
    pub pd_pending_decodes: HashMap<WorkerId, u32>,
    pub pd_prefill_duration: Histogram,
    pub pd_decode_duration: Histogram,
    /// P/D requests by route, head to end of answer.
    pub pd_duration: [Histogram; ROUTES.len()],
    /// P/D: how long each decode leg waited for its request's prefill.
    pub pd_decode_pending: Sketch,
    /// P/D with a kv_aware prefill policy, per request: decisions priced and without
    /// tokens (`PD_PREFILL_FALLBACKS`), and the prompt tokens credited and left to
    /// prefill on the chosen prefill worker.
    pub pd_prefill_decisions: [u64; PD_PREFILL_FALLBACKS.len()],
    pub pd_credited_tokens: u64,
    pub pd_new_prefill_tokens: Sketch,
    /// Breaker outcomes per worker: (successes, failures).
    pub outcomes: HashMap<WorkerId, (u64, u64)>,
    /// cache_aware: bytes of the routing tree per worker, and decisions by cache.
    pub tree_sizes: HashMap<WorkerId, usize>,
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// kv_aware decisions per pool (`WorkerRole as usize`): credited, not credited, no
    /// tokens to look up, by session.
    pub kv_lookups: [[u64; 4]; 3],
    /// kv_aware prompt tokens: asked of a worker, from the shard's cache, not had,
    /// tokenized on the shard (`--tokenizer-path`).
    pub kv_inputs: [u64; 4],
    /// kv_aware: time to a request's tokens, on the shard and by a worker's
    /// `/tokenize` (cache hits not counted).
    pub kv_prepare: [Histogram; 2],
    /// The same times, both sources together, for 0.1.17's P/D summary.
    pub kv_prepare_all: Sketch,
    /// kv_aware: the fraction of each priced prompt its chosen worker had cached.
    pub kv_matched: RatioHistogram,
    /// cache_aware decisions of other shards this shard applied to its trees.
    pub shared_inserts: u64,
    /// kv_aware provisional copies of other shards this shard applied to its index.
    pub shared_provisional: u64,
    /// Requests waiting in this shard's admission queue when the copy was taken.
    pub queued: u64,
    /// Bytes of request bodies buffered on this shard when the copy was taken.
    pub buffered_body_bytes: u64,
    /// Client connections dormant (idle, without a task) when the copy was taken.
    pub dormant_connections: u64,
}

/// What one finished request adds.
pub struct RequestRecord<'a> {
    pub route: usize,
    pub method: &'a [u8],
    pub status: u16,
    pub error: Option<&'static str>,
    pub duration: Duration,
    pub ttfb: Option<Duration>,
}

/// Adds `from`'s counts into `into`, key by key.
fn add_all<K: Copy + Eq + std::hash::Hash, V: Copy + std::ops::AddAssign + Default>(
    into: &mut HashMap<K, V>,
    from: &HashMap<K, V>,
) {
    for (k, v) in from {
        *into.entry(*k).or_default() += *v;
    }
}

impl ShardMetrics {
    /// Adds another shard's counts: the router-wide totals are the merge of every
    /// shard's copy. Tree sizes keep the largest shard's (each shard holds a full tree).
    pub fn merge(&mut self, other: &ShardMetrics) {
        for r in 0..ROUTES.len() {
            self.requests[r] += other.requests[r];
            self.retries[r] += other.retries[r];
            self.retries_exhausted[r] += other.retries_exhausted[r];
            self.pd_requests[r] += other.pd_requests[r];
            self.pd_duration[r].merge(&other.pd_duration[r]);
            self.duration[r].merge(&other.duration[r]);
            self.ttfb[r].merge(&other.ttfb[r]);
        }
        add_all(&mut self.errors, &other.errors);
        add_all(&mut self.http, &other.http);
        add_all(&mut self.processed, &other.processed);
        add_all(&mut self.in_flight, &other.in_flight);
        add_all(&mut self.pd_prefill, &other.pd_prefill);
        add_all(&mut self.pd_decode, &other.pd_decode);
        add_all(&mut self.pd_errors, &other.pd_errors);
        add_all(&mut self.pd_unpriced, &other.pd_unpriced);
        add_all(&mut self.pd_pending_decodes, &other.pd_pending_decodes);
        for (k, (ok, failed)) in &other.outcomes {
            let e = self.outcomes.entry(*k).or_default();
            e.0 += ok;
            e.1 += failed;
        }
        for (k, v) in &other.tree_sizes {
            let e = self.tree_sizes.entry(*k).or_default();
            *e = (*e).max(*v);
        }
        self.pd_prefill_duration.merge(&other.pd_prefill_duration);
        self.pd_decode_duration.merge(&other.pd_decode_duration);
        self.pd_decode_pending.merge(&other.pd_decode_pending);
        for (a, b) in (self.pd_prefill_decisions.iter_mut()).zip(other.pd_prefill_decisions) {
            *a += b;
        }
        self.pd_credited_tokens += other.pd_credited_tokens;
        self.pd_new_prefill_tokens
            .merge(&other.pd_new_prefill_tokens);
        self.kv_prepare_all.merge(&other.kv_prepare_all);
        self.cache_hits += other.cache_hits;
        self.cache_misses += other.cache_misses;
        for (a, b) in self
            .kv_lookups
            .iter_mut()
            .flatten()
            .zip(other.kv_lookups.as_flattened())
        {
            *a += b;
        }
        for (a, b) in self.kv_prepare.iter_mut().zip(&other.kv_prepare) {
            a.merge(b);
        }
        self.kv_matched.merge(&other.kv_matched);
        for (a, b) in self.kv_inputs.iter_mut().zip(other.kv_inputs) {
            *a += b;
        }
        self.shared_inserts += other.shared_inserts;
        self.shared_provisional += other.shared_provisional;
        self.queued += other.queued;
        self.buffered_body_bytes += other.buffered_body_bytes;
        self.dormant_connections += other.dormant_connections;
    }

    /// kv_aware: a request's tokens took `took`, from `source` (0: the shard's own
    /// tokenizer, 1: a worker's `/tokenize`).
    pub fn observe_prepare(&mut self, source: usize, took: Duration) {
        self.kv_prepare[source].observe(took);
        self.kv_prepare_all.observe(took.as_secs_f64());
    }

    pub fn record(&mut self, r: &RequestRecord<'_>) {
        self.requests[r.route] += 1;
        self.duration[r.route].observe(r.duration);
        if let Some(t) = r.ttfb {
            self.ttfb[r.route].observe(t);
        }
        if let Some(e) = r.error {
            *self.errors.entry((r.route, e)).or_default() += 1;
        }
        *self
            .http
            .entry((r.route, method_index(r.method), r.status))
            .or_default() += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_and_labels() {
        let mut h = Histogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_secs(4000));
        assert_eq!((h.counts[0], h.overflow, h.count), (1, 1, 2));
        assert_eq!(ROUTES[route_index(b"/v1/completions")], "/v1/completions");
        assert_eq!(ROUTES[route_index(b"/secret/path")], "other");
        assert_eq!(METHODS[method_index(b"BREW")], "OTHER");
    }
}
