//! kv_aware: route by what each worker really holds, from vLLM's KV events. A
//! request's prompt tokens are cut into blocks, each named by the router's chained
//! hash of its tokens; the shard's copy of the block index ([`KvIndex`]) says how many
//! leading blocks each worker holds, per medium. The cost has 0.1.17's shape
//! (`../shared/REFERENCE-0.1.17.md` §1.5); two of its weights default to values that
//! measured better, with 0.1.17's as options:
//!
//! ```text
//! credited = min(B * (d + c * e), N - 1)     d: blocks on the GPU, e: more blocks in
//!                                            the best lower tier, c: its penalty
//! new      = N - credited                    tokens the worker must prefill
//! score    = (new + w * A) * (load + 1)^e    lowest wins; softmax with temperature
//! ```
//!
//! `A` is the tokens the router's requests to the worker must still prefill (priced
//! so when routed, until their answers start), less the blocks this request shares
//! with them ([`ahead`]); `w` is `--kv-pending-prefill-weight` (0.1.17: 1; ours 0 by
//! default: at 1 a conversation leaves its cached blocks whenever another prompt is
//! prefilling at home, see docs/kv-aware.md); `e` is `--kv-load-exponent` (0.1.17: 1;
//! ours 0.5: at 1 a worker with three requests in flight loses a prompt it holds most
//! of to an idle one that must prefill all of it); `load` is the requests in flight to the
//! worker from the whole router plus what the worker reports beyond that (other
//! replicas). Ties go to the worker ranked first by
//! rendezvous hashing of the first block's name, the same on every replica (0.1.17
//! takes its internal worker order). For a cold prompt, one no worker holds a quarter
//! of, a worker's load is at least its share of everything in flight, this request
//! included, as the requests this shard sent lately divide it ([`RecentTraffic`];
//! 0.1.17: requests in flight). With session affinity a named session goes where its
//! first request went ([`Affinity`]).
//!
//! In P/D mode the prefill pool's kv_aware prices prefill as above, without session
//! affinity; the decode pool's takes the least loaded decode worker, and binds sessions
//! there (0.1.17 §1.7: decode holds no prompt blocks to match).

use super::kv_affinity::Affinity;
use super::kv_index::{Depth, KvIndex};
use super::placement::Rendezvous;
use super::random::Random;
use super::recent_traffic::RecentTraffic;
use super::{Policy, PolicyKind, Priced, RouteInput};
use crate::kv_blocks::{chain_hash, KvBlockDelta, ProvisionalBlocks, RequestChain, ROOT};
use crate::metrics::RatioHistogram;
use crate::state::{PoolView, Worker};
use crate::worker::{WorkerId, WorkerRole};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `--router-temperature`, `--kv-penalty-*`.
#[derive(Clone, Debug)]
pub struct KvAwareConfig {
    pub temperature: f64,
    pub penalty_host: f64,
    pub penalty_external: f64,
    pub penalty_disk: f64,
    /// `--kv-event-block-size`: how a request is cut before any worker said.
    pub default_block_size: u32,
    /// `--kv-aware-session-affinity-ttl-secs` (None: no affinity).
    pub session_affinity_ttl: Option<Duration>,
    /// `--kv-pending-prefill-weight`: how much `A` counts (1: as 0.1.17; 0, the
    /// default: not, which measured better, docs/kv-aware.md).
    pub pending_prefill_weight: f64,
    /// `--kv-load-exponent`: the power of `load + 1` (1: as 0.1.17; 0.5, the default:
    /// a queued request delays a prefill less than a whole one, since vLLM batches).
    pub load_exponent: f64,
    /// `--kv-provisional-ttl-secs` (None: off): how long a routed request's blocks
    /// count as on its worker before its events arrive.
    pub provisional_ttl: Option<Duration>,
    /// `--kv-cold-placement recent` (the default): a cold prompt is priced with each
    /// worker's recent share of the traffic; `load`: with requests in flight, as 0.1.17.
    pub cold_by_recent_traffic: bool,
}

impl Default for KvAwareConfig {
    fn default() -> Self {
        KvAwareConfig {
            temperature: 0.0,
            penalty_host: 0.8,
            penalty_external: 0.6,
            penalty_disk: 0.3,
            default_block_size: 16,
            session_affinity_ttl: None,
            pending_prefill_weight: 0.0,
            load_exponent: 0.5,
            provisional_ttl: Some(Duration::from_secs(10)),
            cold_by_recent_traffic: true,
        }
    }
}

/// Blocks of one request noted provisionally at most (8k tokens of 16): naming them
/// is most of the cost, and a prefix past it is rarely shared.
const MAX_PROVISIONAL_BLOCKS: usize = 512;

/// LoRA adapters a shard remembers: a deployment serves a handful.
const MAX_ADAPTERS: usize = 1024;

/// A prompt no worker holds more of than this share is cold: where it lands decides
/// where its later conversations go. (0.5 measured the same on docs/benchmarks.md §3b.)
const COLD_SHARE: f64 = 0.25;

pub struct KvAware {
    cfg: KvAwareConfig,
    /// The pool this instance routes: decode prices load alone.
    stage: WorkerRole,
    index: KvIndex,
    rank: Rendezvous,
    rng: Random,
    tokens: Vec<u32>,
    /// How this request's blocks are named beyond their tokens (salt, adapter).
    chain: RequestChain,
    /// LoRA adapters the workers reported blocks of: a request whose `model` is one
    /// is named as vLLM hashes that adapter's blocks.
    adapters: std::collections::HashSet<Arc<str>>,
    /// Blocks the lookup named, and the last one's name.
    named: (usize, u64),
    /// The request's block names for provisional copies (scratch).
    names: Vec<u64>,
    /// The last pick's provisional copies, for the other shards.
    noted: Option<ProvisionalBlocks>,
    depths: Vec<Depth>,
    /// What the last pick priced.
    charge: Option<Priced>,
    affinity: Option<Affinity>,
    /// Decisions: credited, not credited, without tokens, by session
    /// (`kv_placement_lookups_total`).
    lookups: [u64; 4],
    /// The chosen worker's cached fraction of each priced prompt.
    matched: RatioHistogram,
    /// Requests this shard sent each worker lately, for cold prompts.
    recent: RecentTraffic,
}

/// One worker's score for a request.
struct Scored<'a> {
    worker: &'a Worker,
    score: f64,
    /// Tokens it would prefill.
    new: f64,
    credited: bool,
    rank: u64,
}

impl KvAware {
    pub fn new(cfg: KvAwareConfig, seed: u64, stage: WorkerRole) -> Self {
        let ttl = cfg
            .session_affinity_ttl
            .filter(|_| stage != WorkerRole::Prefill);
        KvAware {
            affinity: ttl.map(Affinity::new),
            stage,
            cfg,
            index: KvIndex::default(),
            rank: Rendezvous::default(),
            rng: Random::new(seed),
            tokens: Vec::new(),
            chain: RequestChain::PLAIN,
            adapters: Default::default(),
            named: (0, ROOT),
            names: Vec::new(),
            noted: None,
            depths: Vec::new(),
            charge: None,
            lookups: [0; 4],
            matched: RatioHistogram::default(),
            recent: RecentTraffic::default(),
        }
    }

    /// Tokens credited on a worker holding `depth` of a request of `n` tokens.
    fn credited(&self, depth: &Depth, n: usize, block: usize) -> f64 {
        // The GPU run is capped so the last token is always prefilled; a lower tier
        // adds the blocks it holds past the whole GPU run.
        let d = depth.device.min(n.saturating_sub(1) / block);
        let extra = |tier: usize| tier.saturating_sub(depth.device) as f64;
        let lower = [
            (extra(depth.host), self.cfg.penalty_host),
            (extra(depth.disk), self.cfg.penalty_disk),
            (extra(depth.external), self.cfg.penalty_external),
        ];
        // The tier adding the most blocks; at equal blocks the better credit.
        let (e, c) = lower
            .into_iter()
            .max_by(|a, b| (a.0, a.1).partial_cmp(&(b.0, b.1)).unwrap())
            .unwrap_or((0.0, 0.0));
        (block as f64 * (d as f64 + c * e)).min(n.saturating_sub(1) as f64)
    }

    /// `(load + 1) ^ e`, without `powf` for the two usual exponents (it would be
    /// most of a decision's time over 64 workers).
    fn load_factor(&self, load: f64) -> f64 {
        let x = load + 1.0;
        match self.cfg.load_exponent {
            1.0 => x,
            0.5 => x.sqrt(),
            e => x.powf(e),
        }
    }

    /// The request's prompt tokens: given by the pipeline (tokenized), or the
    /// prompt itself when it is a list of token ids.
    fn load_tokens(&mut self, input: &RouteInput<'_>) -> bool {
        self.tokens.clear();
        if let Some(t) = input.tokens {
            self.tokens.extend_from_slice(t);
            return true;
        }
        let Some(ids) = input
            .json
            .and_then(|b| b.get("prompt"))
            .and_then(|p| p.as_array())
        else {
            return false;
        };
        for t in ids {
            match t.as_u64().and_then(|t| u32::try_from(t).ok()) {
                Some(t) => self.tokens.push(t),
                None => return false,
            }
        }
        !self.tokens.is_empty()
    }
}

/// `A`: the prompt tokens the worker must prefill before this request, less what
/// the request shares with them (blocks it is credited only provisionally: they are
/// being computed for a request in flight, and it would compute them anywhere else).
/// Without that, a burst of one new prompt would scatter, each copy computing it again.
fn ahead(w: &Worker, depth: Option<&Depth>, block: usize) -> f64 {
    let shared = depth.map_or(0, |d| d.provisional * block);
    (f64::from(w.prefill_load()) - shared as f64).max(0.0)
}

impl Policy for KvAware {
    fn kind(&self) -> PolicyKind {
        PolicyKind::KvAware
    }

    fn needs_body(&self) -> bool {
        true
    }

    fn on_workers_changed(&mut self, workers: &PoolView<'_>) {
        self.rank.on_workers_changed(workers);
        self.recent.retain_workers(workers);
        if let Some(a) = &mut self.affinity {
            a.retain_workers(workers);
        }
    }

    fn routes_by_session(&self, workers: &PoolView<'_>, input: &RouteInput<'_>) -> bool {
        self.affinity
            .as_ref()
            .is_some_and(|a| a.is_bound(workers, input))
    }

    fn take_insert(&mut self) -> Option<(WorkerId, Arc<str>)> {
        self.affinity.as_mut()?.take_pending()
    }

    fn remote_insert(&mut self, worker: WorkerId, session: &str, _at: Instant) {
        if let Some(a) = &mut self.affinity {
            a.remote(worker, session);
        }
    }

    fn kv_blocks(&mut self, delta: &KvBlockDelta) {
        if self.adapters.len() < MAX_ADAPTERS {
            self.adapters.extend(delta.changes.adapters.iter().cloned());
        }
        self.index.set_block_size(delta.worker, delta.block_size);
        self.index.apply(delta.worker, &delta.changes);
    }

    fn forget_worker(&mut self, worker: WorkerId) {
        self.index.forget(worker);
    }

    fn pick(&mut self, workers: &PoolView<'_>, input: &RouteInput<'_>) -> Option<WorkerId> {
        let now = Instant::now();
        let bound = (self.affinity.as_mut()).and_then(|a| a.bound(workers, input, now));
        let chosen = match bound {
            Some(w) => {
                self.lookups[3] += 1;
                w
            }
            None => {
                let chosen = self.pick_by_cost(workers, input, now)?;
                if let Some(a) = &mut self.affinity {
                    a.bind(input, chosen, now);
                }
                chosen
            }
        };
        self.recent.note(chosen, now);
        Some(chosen)
    }

    fn kv_lookups(&self) -> [u64; 4] {
        self.lookups
    }

    fn kv_matched(&self) -> RatioHistogram {
        self.matched
    }

    fn take_charge(&mut self) -> Option<Priced> {
        self.charge.take()
    }

    fn take_provisional(&mut self) -> Option<ProvisionalBlocks> {
        self.noted.take()
    }

    fn remote_provisional(&mut self, worker: WorkerId, names: &[u64]) {
        if let Some(ttl) = self.cfg.provisional_ttl {
            let now = Instant::now();
            self.index.provisional(worker, names, now, now + ttl);
            // Another shard routed a request there: it counts in the recent share as
            // this shard's own do, so a cold prompt is priced by the router's traffic.
            self.recent.note(worker, now);
        }
    }
}

impl KvAware {
    /// 0.1.17's cost over the routable workers.
    fn pick_by_cost(
        &mut self,
        workers: &PoolView<'_>,
        input: &RouteInput<'_>,
        now: Instant,
    ) -> Option<WorkerId> {
        if workers.routable_count() == 0 {
            return None;
        }
        if self.stage == WorkerRole::Decode {
            return self.rank.least_loaded(workers, 0).map(|w| w.spec.id);
        }
        if !self.load_tokens(input) {
            // No tokens (0.1.17's `missing_tokens`): by load alone.
            self.lookups[2] += 1;
            return self.rank.least_loaded(workers, 0).map(|w| w.spec.id);
        }
        // One block size for the request: the first routable worker's that has said.
        let block = workers
            .routable()
            .map(|w| self.index.block_size(w.spec.id))
            .find(|b| *b > 0)
            .unwrap_or(self.cfg.default_block_size)
            .max(1) as usize;
        self.set_chain(input.json);
        // vLLM computes a prompt whose logprobs are asked for in full: nothing is credited.
        let reads_cache = (input.json)
            .and_then(|b| b.get("prompt_logprobs"))
            .is_none_or(|p| p.is_null());
        let (chain, named) = (self.chain, &mut self.named);
        *named = (0, chain.root);
        let names = self
            .tokens
            .chunks_exact(block)
            .scan(chain.root, |parent, b| {
                *parent = chain_hash(chain.parent(*parent, named.0), b);
                *named = (named.0 + 1, *parent);
                Some(*parent)
            });
        let names = names.take(if reads_cache { usize::MAX } else { 0 });
        self.index.depths(names, &mut self.depths);
        let key = self
            .tokens
            .get(..block)
            .map_or(0, |first| chain_hash(chain.root, first));
        let n = self.tokens.len();
        let mut best: Option<Scored<'_>> = None;
        // Per routable worker, in order: what it holds and the tokens credited.
        let mut credits: smallvec::SmallVec<[(Option<Depth>, f64); 16]> = smallvec::SmallVec::new();
        for w in workers.routable() {
            let depth = self.index.depth_of(w.spec.id, &self.depths).copied();
            credits.push((depth, depth.map_or(0.0, |d| self.credited(&d, n, block))));
        }
        let most_credited = credits.iter().map(|c| c.1).fold(0.0, f64::max);
        let cold = self.cfg.cold_by_recent_traffic && most_credited <= COLD_SHARE * n as f64;
        // For a cold prompt, a worker's load is at least its share of all the requests
        // in flight, this one included, as recent traffic divides them (see
        // `RecentTraffic`). With this one counted, one request at a time does not pile
        // every new prompt on the worker holding a shared first block.
        let in_flight = if cold {
            workers.routable().map(|w| f64::from(w.load())).sum::<f64>() + 1.0
        } else {
            0.0
        };
        // Every worker's score, for sampling with a temperature.
        let sample = self.cfg.temperature > 0.0;
        let mut scored: smallvec::SmallVec<[(WorkerId, f64, f64); 16]> = smallvec::SmallVec::new();
        for (w, &(depth, credited)) in workers.routable().zip(&credits) {
            let new = (n as f64 - credited).max(0.0).ceil();
            let a = self.cfg.pending_prefill_weight * ahead(w, depth.as_ref(), block);
            let mut load = f64::from(w.load());
            if cold {
                load = load.max(in_flight * self.recent.share(w.spec.id));
            }
            let score = (new + a) * self.load_factor(load);
            let s = Scored {
                worker: w,
                score,
                new,
                credited: credited > 0.0,
                rank: self.rank.score(key, w.spec.id),
            };
            if best
                .as_ref()
                .is_none_or(|b| s.score < b.score || (s.score == b.score && s.rank > b.rank))
            {
                best = Some(s);
            }
            if sample {
                scored.push((w.spec.id, score, new));
            }
        }
        let best = best?;
        let (mut chosen, mut credited, mut new) = (best.worker.spec.id, best.credited, best.new);
        if scored.len() > 1 {
            // P(i) ~ exp(-(score_i - min) / T).
            let t = self.cfg.temperature;
            let weights: smallvec::SmallVec<[f64; 16]> = scored
                .iter()
                .map(|(_, s, _)| (-(s - best.score) / t).exp())
                .collect();
            let mut r = self.rng.unit() * weights.iter().sum::<f64>();
            for ((id, _, n), w) in scored.iter().zip(&weights) {
                r -= w;
                if r <= 0.0 {
                    (chosen, new) = (*id, *n);
                    break;
                }
            }
            credited = self
                .index
                .depth_of(chosen, &self.depths)
                .is_some_and(|d| self.credited(d, n, block) > 0.0);
        }
        self.lookups[usize::from(!credited)] += 1;
        self.matched.observe((n as f64 - new) / n.max(1) as f64);
        self.charge = Some(Priced {
            new: new as u32,
            credited: (n as f64 - new).max(0.0) as u32,
        });
        self.note_provisional(chosen, block, now);
        Some(chosen)
    }

    /// Where the request's block names start and what each block after the first mixes
    /// in, as vLLM hashes its blocks: a `cache_salt` into the first block, and a LoRA
    /// adapter's name (the request's `model`, once the workers reported blocks of that
    /// adapter) into every block.
    fn set_chain(&mut self, body: Option<&serde_json::Value>) {
        let field = |name: &str| body.and_then(|b| b.get(name)).and_then(|v| v.as_str());
        let salt = field("cache_salt").filter(|s| !s.is_empty());
        let adapter = field("model").filter(|m| self.adapters.contains(*m));
        self.chain = RequestChain::new(salt, adapter);
    }

    /// The chosen worker will hold the request's blocks: noted provisionally, so the
    /// next request with this prefix finds them before the worker's events arrive.
    fn note_provisional(&mut self, chosen: WorkerId, block: usize, now: Instant) {
        let Some(ttl) = self.cfg.provisional_ttl else {
            return;
        };
        let held = self
            .index
            .depth_of(chosen, &self.depths)
            .map_or(0, |d| d.device);
        let upto = (self.tokens.len() / block).min(MAX_PROVISIONAL_BLOCKS);
        if held >= upto {
            return;
        }
        // The blocks past the lookup's are named on from its last; when the worker holds
        // fewer than the lookup named, the chain is named again from its start.
        let (mut at, mut parent) = match self.named {
            (n, last) if n <= held => (n, last),
            _ => (0, self.chain.root),
        };
        self.names.clear();
        for b in self.tokens.chunks_exact(block).take(upto).skip(at) {
            parent = chain_hash(self.chain.parent(parent, at), b);
            if at >= held {
                self.names.push(parent);
            }
            at += 1;
        }
        self.index.provisional(chosen, &self.names, now, now + ttl);
        if !self.names.is_empty() {
            self.noted = Some((chosen, self.names.as_slice().into()));
        }
    }
}

#[cfg(test)]
#[path = "kv_aware_tests.rs"]
mod tests;
