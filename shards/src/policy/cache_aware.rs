//! cache_aware: send a request where the least work waits for it, counting the part of
//! its prompt a worker must prefill because it is not cached there and the requests
//! already queued on it, in one currency (docs/routing.md has the formula and why):
//!
//! ```text
//! cost(w) = (1 - matched(w) / len) + LOAD_COST * load(w) - HOME_PULL * [w is home]
//! ```
//!
//! - `matched(w)`: the longest prefix of the request's text this router sent to `w`
//!   (an approximate radix tree per worker); below `--cache-threshold` of `len` it
//!   counts as none, as in the published router.
//! - `load(w)`: requests in flight to `w` from the whole router (this shard's exact
//!   count plus the other shards'), plus what the worker reports beyond that in its
//!   `/metrics` (other replicas, direct clients).
//! - `[w is home]`: 1 for the home of the request's shared prefix (below), else 0.
//! - When the loads are imbalanced (`--balance-abs-threshold` and
//!   `--balance-rel-threshold` both exceeded) the least loaded worker wins, whatever
//!   the cache says: the published router's guard, kept.
//!
//! A request's key is its first [`PLACEMENT_KEY_BYTES`]. A key other requests share
//! (a system prompt) has a home (`prefix_homes`: spread evenly, the same on every
//! replica). A new conversation on a shared key goes to its home, or, when the home has
//! more than [`NEW_CONVERSATION_SLACK`] requests over the mean, to the least loaded
//! worker; so does a conversation whose previous turn another replica sent (the tree
//! holds its older turns but not the answer before its latest question). Otherwise the
//! candidates are the workers holding a match over the threshold, the key's home
//! (credited with the shared prefix) and the least loaded worker, and the cheapest
//! wins: a conversation stays where its longer prefix is cached. A cold key goes to its
//! best-ranked worker, so it lands on one worker from every shard and every replica.
//! While the workers' counters say this router sends all of their requests
//! (`Delta::SoleSender`), the homes follow its traffic (`prefix_homes`).
//!
//! The chosen worker's text is inserted into this shard's tree and, gathered for 2 ms,
//! reported to the control core, which forwards it to the other shards.

use super::placement::Rendezvous;
use super::prefix_homes::PrefixHomes;
use super::radix_tree::RadixTree;
use super::text::{conversation_text, BodyFields};
use super::{Policy, PolicyKind, RouteInput};
use crate::state::{PoolView, Worker};
use crate::worker::WorkerId;
use std::sync::Arc;
use std::time::Instant;
use xxhash_rust::xxh3::xxh3_64;

/// How much of a request's text is used for routing. A prefix this long already tells
/// conversations apart; longer texts would only grow the tree and the time per request.
pub const MAX_ROUTING_TEXT_BYTES: usize = 32 * 1024;

/// The prefix deterministic placement keys on. About four of vLLM's 16-token blocks:
/// long enough to tell system prompts (and prompt templates) apart, short enough that
/// every turn of a conversation and every request sharing a long system prompt has
/// the same key, so they meet on one worker.
pub const PLACEMENT_KEY_BYTES: usize = 256;

/// What one request in flight on a worker costs, in prompts prefilled: a queued
/// request delays this one by a fraction of a prefill (vLLM batches running requests),
/// while an uncached prompt is GPU work nobody else saves. At 0.15, a worker holding
/// 95% of the prompt loses to an empty one once it has seven more requests in flight.
/// Tuned on bench/routing_quality (docs/routing.md has the runs).
pub const LOAD_COST: f64 = 0.15;

/// What being the home of the request's shared prefix is worth, in prompts prefilled.
/// A conversation that started away from its prompt's home (placed before the prompt
/// was known to be shared, spilled over the new-conversation cap, or started while the
/// homes moved as the set of shared prompts grew) comes back at its next turn unless
/// its own history is more than this share of its text, or the home has two more
/// requests in flight: early, when moving costs re-prefilling a question or two.
/// Left where it started, it splits its prompt over two caches and leaves the load as
/// uneven as the early placements were. docs/routing.md has the runs.
pub const HOME_PULL: f64 = 0.3;

/// A new conversation (no worker holds more of it than the prefix other requests
/// share) skips workers with this many requests more than the mean: balance is cheap
/// to keep when a conversation starts and dear to restore later, since a conversation
/// stays where it is cached. Four: with two (the previous release) a home holding
/// two system prompts sent one conversation in four elsewhere at moments of uneven
/// arrivals, splitting its prompts over workers; docs/routing.md has the runs.
pub const NEW_CONVERSATION_SLACK: f64 = 4.0;

/// `--cache-threshold`, `--balance-*-threshold`, `--max-tree-size`.
#[derive(Clone, Debug)]
pub struct CacheAwareConfig {
    pub cache_threshold: f64,
    pub balance_abs_threshold: u32,
    pub balance_rel_threshold: f64,
    pub max_tree_size: usize,
}

pub struct CacheAware {
    cfg: CacheAwareConfig,
    tree: RadixTree,
    placement: Rendezvous,
    homes: PrefixHomes,
    text: String,
    /// Where the request's previous turn ends in `text` (`conversation_text`).
    previous_end: usize,
    matches: Vec<(WorkerId, usize)>,
    /// The last decision's insert, for the pipeline to report.
    pending_insert: Option<(WorkerId, Arc<str>)>,
    pub hits: u64,
    pub misses: u64,
}

/// The routable workers' loads, gathered in one pass per decision for the imbalance
/// guard, placement's cap and the new-conversation cap.
struct Loads {
    min: u32,
    max: u32,
    total: u64,
}

impl Loads {
    fn of(workers: &PoolView<'_>) -> Loads {
        let init = Loads {
            min: u32::MAX,
            max: 0,
            total: 0,
        };
        workers
            .routable()
            .map(Worker::load)
            .fold(init, |l, w| Loads {
                min: l.min.min(w),
                max: l.max.max(w),
                total: l.total + u64::from(w),
            })
    }
}

/// A worker that may take the request, and what it would cost.
#[derive(Clone, Copy)]
struct Candidate<'a> {
    worker: &'a Worker,
    /// Bytes of the prompt it holds (0 below the threshold).
    matched: usize,
    cost: f64,
    /// Its rendezvous rank for the request's key: breaks ties the same way everywhere.
    rank: u64,
}

impl CacheAware {
    pub fn new(cfg: CacheAwareConfig) -> Self {
        CacheAware {
            cfg,
            tree: RadixTree::default(),
            placement: Rendezvous::default(),
            homes: PrefixHomes::default(),
            text: String::new(),
            previous_end: 0,
            matches: Vec::new(),
            pending_insert: None,
            hits: 0,
            misses: 0,
        }
    }

    fn candidate<'a>(
        &self,
        worker: &'a Worker,
        matched: usize,
        len: usize,
        key: u64,
    ) -> Candidate<'a> {
        let uncached = (len - matched) as f64 / len as f64;
        Candidate {
            worker,
            matched,
            cost: uncached + LOAD_COST * f64::from(worker.load()),
            rank: self.placement.score(key, worker.spec.id),
        }
    }

    fn imbalanced(&self, loads: &Loads) -> bool {
        loads.max - loads.min > self.cfg.balance_abs_threshold
            && f64::from(loads.max) > f64::from(loads.min) * self.cfg.balance_rel_threshold
    }

    /// The cheapest of the matching workers, the prefix's placement and the least
    /// loaded worker.
    fn cheapest<'a>(
        &mut self,
        workers: &PoolView<'a>,
        len: usize,
        key: u64,
        loads: &Loads,
    ) -> Option<Candidate<'a>> {
        let text = &self.text.as_bytes()[..len];
        let shared = self.tree.matches(text, &mut self.matches);
        let key_len = len.min(PLACEMENT_KEY_BYTES);
        if shared >= key_len {
            // Other requests start the same way: the key gets a home of its own.
            let holder = sole_holder(&self.matches, key_len);
            self.homes.note_shared(key, holder, Instant::now());
        }
        let placed = self
            .homes
            .place(key, &self.placement, workers, loads.total)?;
        // A conversation whose previous turn this router did not send (another
        // replica did) is found where every replica sends a new conversation: the
        // tree here holds only older turns, and the worker holding those does not hold
        // the latest.
        let known = self.matches.iter().map(|(_, m)| *m).max().unwrap_or(0);
        let lost = known < self.previous_end.min(len);
        let threshold = self.cfg.cache_threshold * len as f64;
        // Below the threshold a match counts as none; no match is longer than the text.
        for m in self.matches.iter_mut() {
            m.1 = if m.1 as f64 > threshold {
                m.1.min(len)
            } else {
                0
            };
        }
        self.matches
            .retain(|(id, m)| *m > 0 && workers.routable_get(*id).is_some());
        let matched_on = |id: WorkerId| {
            self.matches
                .iter()
                .find(|(w, _)| *w == id)
                .map_or(0, |(_, m)| *m)
        };
        // A new conversation (nobody holds more of it than what other requests share;
        // a cold prefix too) skips workers over the tight cap.
        let new_conversation = lost || self.matches.iter().all(|(_, m)| *m <= shared);
        let n = workers.routable_count() as f64;
        let cap = ((loads.total as f64 + 1.0) / n).ceil() + NEW_CONVERSATION_SLACK;
        let allowed = |w: &Worker| !new_conversation || f64::from(w.load()) < cap;
        // A cold prefix goes where placement puts it (the same worker everywhere); the
        // least loaded worker competes only with workers that already hold the prefix.
        let warm = !self.matches.is_empty();
        let idle = if warm {
            self.placement.least_loaded(workers, key)
        } else {
            None
        };
        // A new conversation on a shared prefix goes to the prefix's home (or spills to
        // the least loaded worker), not to another worker that happens to hold the
        // prefix too: every replica agrees on the home, not on the rest.
        let homed = new_conversation && self.homes.is_shared(key);
        let others = self
            .matches
            .iter()
            .filter(|_| !homed)
            .filter_map(|(id, m)| Some((workers.routable_get(*id)?, *m)));
        // The home holds the shared prefix as far as every replica is concerned, though
        // this one's tree may not have seen it go there.
        // A lost conversation's latest turns went there too.
        let at_home = self.homes.is_shared(key) && self.homes.home(key) == Some(placed.spec.id);
        let assumed = match (at_home, lost) {
            (true, true) if homed => self.previous_end.max(shared).min(len),
            (true, false) if shared as f64 > threshold => shared.min(len),
            _ => 0,
        };
        let candidates = std::iter::once((placed, matched_on(placed.spec.id).max(assumed)))
            .chain(idle.filter(|_| !homed).map(|w| (w, matched_on(w.spec.id))))
            .chain(others)
            .filter(|(w, _)| allowed(w));
        let mut best: Option<Candidate<'a>> = None;
        for (w, matched) in candidates {
            let mut c = self.candidate(w, matched, len, key);
            if at_home && w.spec.id == placed.spec.id {
                c.cost -= HOME_PULL;
            }
            if best.is_none_or(|b| c.cost < b.cost || (c.cost == b.cost && c.rank > b.rank)) {
                best = Some(c);
            }
        }
        if best.is_some() {
            return best;
        }
        // Every candidate over the cap: the least loaded of all.
        let idle = idle.or_else(|| self.placement.least_loaded(workers, key))?;
        Some(self.candidate(idle, matched_on(idle.spec.id), len, key))
    }

    fn insert(&mut self, worker: WorkerId, text_len: usize) {
        let text = &self.text.as_bytes()[..text_len];
        self.tree.insert(text, worker);
        if self.tree.size_of(worker) > self.cfg.max_tree_size {
            // Keep memory bounded between the control core's periodic evictions.
            self.tree.evict(worker, self.cfg.max_tree_size / 10 * 9);
        }
        let shared: Arc<str> = Arc::from(&self.text[..text_len]);
        self.pending_insert = Some((worker, shared));
    }
}

/// The one worker holding at least `key_len` bytes of a text, if only one does.
fn sole_holder(matches: &[(WorkerId, usize)], key_len: usize) -> Option<WorkerId> {
    let mut holders = matches
        .iter()
        .filter(|(_, m)| *m >= key_len)
        .map(|(w, _)| *w);
    let first = holders.next()?;
    holders.next().is_none().then_some(first)
}

/// The key placement ranks workers by: a hash of the text's first bytes.
fn placement_key(text: &str) -> u64 {
    xxh3_64(&text.as_bytes()[..floor_boundary(text, PLACEMENT_KEY_BYTES)])
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn floor_boundary(s: &str, max: usize) -> usize {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    end
}

impl Policy for CacheAware {
    fn kind(&self) -> PolicyKind {
        PolicyKind::CacheAware
    }

    fn needs_body(&self) -> bool {
        true
    }

    fn on_workers_changed(&mut self, workers: &PoolView<'_>) {
        self.placement.on_workers_changed(workers);
        self.homes.workers_changed();
        let known: Vec<WorkerId> = self.tree.sizes().map(|(w, _)| w).collect();
        for w in known {
            if workers.get(w).is_none() {
                self.tree.remove_worker(w);
            }
        }
    }

    fn pick(&mut self, workers: &PoolView<'_>, input: &RouteInput<'_>) -> Option<WorkerId> {
        if workers.routable_count() == 0 {
            return None;
        }
        self.text.clear();
        self.previous_end = 0;
        if let Some(body) = input.json {
            self.previous_end = conversation_text(&BodyFields::of(body), &mut self.text);
        }
        let len = floor_boundary(&self.text, MAX_ROUTING_TEXT_BYTES);
        let key = placement_key(&self.text);
        if len == 0 {
            return self.placement.least_loaded(workers, key).map(|w| w.spec.id);
        }
        let loads = Loads::of(workers);
        let chosen = if self.imbalanced(&loads) {
            self.misses += 1;
            self.placement.least_loaded(workers, key)?.spec.id
        } else {
            let best = self.cheapest(workers, len, key, &loads)?;
            if best.matched > 0 {
                self.hits += 1;
            } else {
                self.misses += 1;
            }
            best.worker.spec.id
        };
        self.homes.note_routed(key, chosen);
        self.insert(chosen, len);
        Some(chosen)
    }

    fn set_sole_sender(&mut self, sole: bool) {
        self.homes.set_follow_traffic(sole);
    }

    fn take_insert(&mut self) -> Option<(WorkerId, Arc<str>)> {
        self.pending_insert.take()
    }

    fn remote_insert(&mut self, worker: WorkerId, text: &str, at: Instant) {
        self.tree.insert(text.as_bytes(), worker);
        // Another shard's request may make a key shared here too: every shard then
        // knows the same shared keys and gives them the same homes. At the time that
        // shard routed it: a late report must not take the pin from a newer key.
        let key = placement_key(text);
        if self.homes.is_shared(key) {
            self.homes.note_shared(key, None, at);
        } else {
            let shared = self.tree.matches(text.as_bytes(), &mut self.matches);
            let key_len = text.len().min(PLACEMENT_KEY_BYTES);
            if shared >= key_len {
                let holder = sole_holder(&self.matches, key_len);
                self.homes.note_shared(key, holder, at);
            }
        }
        self.homes.note_routed(key, worker);
        if self.tree.size_of(worker) > self.cfg.max_tree_size {
            self.tree.evict(worker, self.cfg.max_tree_size / 10 * 9);
        }
    }

    fn evict(&mut self, max: usize) {
        self.homes.age();
        let over: Vec<WorkerId> = self
            .tree
            .sizes()
            .filter(|(_, s)| *s > max)
            .map(|(w, _)| w)
            .collect();
        for w in over {
            self.tree.evict(w, max);
        }
    }

    fn tree_sizes(&self) -> Vec<(WorkerId, usize)> {
        self.tree.sizes().collect()
    }

    fn cache_counts(&self) -> (u64, u64) {
        (self.hits, self.misses)
    }
}

#[cfg(test)]
#[path = "cache_aware_tests.rs"]
mod tests;
