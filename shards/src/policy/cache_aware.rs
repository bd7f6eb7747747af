//! cache_aware: send a request where its prefix is most likely cached, unless that
//! would unbalance the workers (docs/cli.md, `--cache-threshold` and the balance flags):
//!
//! 1. loads imbalanced (`max - min > balance_abs_threshold` and
//!    `max > min * balance_rel_threshold`): the least loaded worker;
//! 2. else, if some workers hold more than `cache_threshold` of the text as a prefix:
//!    the least loaded of those (ties: the longer match);
//! 3. else the least loaded worker.
//!
//! Beyond the published router: a cache hit is declined when its worker already has
//! [`PILE_UP_SLACK`] more requests in flight than the least loaded one. Many requests
//! sharing one system prompt would otherwise all follow the first worker that saw it
//! until the (large, default 64) absolute threshold trips, while the others idle; the
//! declined request teaches a second worker the prefix, so a hot prefix spreads.
//!
//! Load is the router-wide in-flight view (this shard's own count plus the other
//! shards'). The chosen worker's text is inserted into this shard's tree and, batched
//! per 50 ms tick, reported to the control core, which forwards it to the other shards.

use super::radix_tree::RadixTree;
use super::text::{request_text, BodyFields};
use super::{Policy, PolicyKind, RouteInput};
use crate::state::{PoolView, Worker};
use crate::worker::WorkerId;
use std::sync::Arc;

/// How much of a request's text is used for routing. A prefix this long already tells
/// conversations apart; longer texts would only grow the tree and the time per request.
pub const MAX_ROUTING_TEXT_BYTES: usize = 32 * 1024;

/// See the module comment.
pub const PILE_UP_SLACK: u32 = 2;

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
    text: String,
    matches: Vec<(WorkerId, usize)>,
    /// The last decision's insert, for the pipeline to report.
    pending_insert: Option<(WorkerId, Arc<str>)>,
    pub hits: u64,
    pub misses: u64,
}

impl CacheAware {
    pub fn new(cfg: CacheAwareConfig) -> Self {
        CacheAware {
            cfg,
            tree: RadixTree::default(),
            text: String::new(),
            matches: Vec::new(),
            pending_insert: None,
            hits: 0,
            misses: 0,
        }
    }

    /// The least loaded worker; among equals, the one holding the least text, so new
    /// prefixes spread over idle workers instead of all landing on the first.
    fn least_loaded<'a>(&self, workers: impl Iterator<Item = &'a Worker>) -> Option<&'a Worker> {
        workers.min_by_key(|w| (w.load(), self.tree.size_of(w.spec.id)))
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
        let known: Vec<WorkerId> = self.tree.sizes().map(|(w, _)| w).collect();
        for w in known {
            if workers.get(w).is_none() {
                self.tree.remove_worker(w);
            }
        }
    }

    fn pick(&mut self, workers: &PoolView<'_>, input: &RouteInput<'_>) -> Option<WorkerId> {
        let n = workers.routable_count();
        if n == 0 {
            return None;
        }
        let (min_w, max_load) = {
            let min_w = self.least_loaded(workers.routable())?;
            let max_load = workers.routable().map(Worker::load).max().unwrap_or(0);
            (min_w, max_load)
        };
        let min_load = min_w.load();
        let min_id = min_w.spec.id;
        self.text.clear();
        if let Some(body) = input.json {
            request_text(&BodyFields::of(body), &mut self.text);
        }
        let text_len = floor_boundary(&self.text, MAX_ROUTING_TEXT_BYTES);
        if text_len == 0 {
            return Some(min_id);
        }
        let imbalanced = max_load - min_load > self.cfg.balance_abs_threshold
            && f64::from(max_load) > f64::from(min_load) * self.cfg.balance_rel_threshold;
        let chosen = if imbalanced {
            min_id
        } else {
            self.tree
                .matches(&self.text.as_bytes()[..text_len], &mut self.matches);
            let threshold = self.cfg.cache_threshold * text_len as f64;
            let best = self
                .matches
                .iter()
                .filter(|(_, len)| *len as f64 > threshold)
                .filter_map(|(id, len)| workers.routable_get(*id).map(|w| (w, *len)))
                .min_by(|(a, la), (b, lb)| a.load().cmp(&b.load()).then(lb.cmp(la)));
            match best {
                Some((w, _)) if w.load() < min_load + PILE_UP_SLACK => {
                    self.hits += 1;
                    w.spec.id
                }
                _ => {
                    self.misses += 1;
                    min_id
                }
            }
        };
        self.insert(chosen, text_len);
        Some(chosen)
    }

    fn take_insert(&mut self) -> Option<(WorkerId, Arc<str>)> {
        self.pending_insert.take()
    }

    fn remote_insert(&mut self, worker: WorkerId, text: &str) {
        self.tree.insert(text.as_bytes(), worker);
        if self.tree.size_of(worker) > self.cfg.max_tree_size {
            self.tree.evict(worker, self.cfg.max_tree_size / 10 * 9);
        }
    }

    fn evict(&mut self, max: usize) {
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
mod tests {
    use super::*;
    use crate::codec::request::RequestHead;
    use crate::worker::WorkerRole;

    fn set(n: u32) -> crate::state::WorkerSet {
        crate::state::test_workers(n)
    }

    fn cfg() -> CacheAwareConfig {
        CacheAwareConfig {
            cache_threshold: 0.3,
            balance_abs_threshold: 64,
            balance_rel_threshold: 1.5,
            max_tree_size: 1 << 20,
        }
    }

    fn pick(p: &mut CacheAware, s: &crate::state::WorkerSet, prompt: &str) -> WorkerId {
        let h = RequestHead::default();
        let body = serde_json::json!({ "prompt": prompt });
        p.pick(
            &s.view(WorkerRole::Regular, &[]),
            &RouteInput {
                head: &h,
                json: Some(&body),
            },
        )
        .unwrap()
    }

    #[test]
    fn a_shared_prefix_stays_on_its_worker() {
        let s = set(4);
        let mut p = CacheAware::new(cfg());
        let prefix = "You are a helpful assistant. ".repeat(20);
        let first = pick(&mut p, &s, &format!("{prefix} question 1"));
        for i in 2..10 {
            assert_eq!(pick(&mut p, &s, &format!("{prefix} question {i}")), first);
        }
        assert_eq!(p.hits, 8);
    }

    #[test]
    fn a_busy_cached_worker_is_declined_and_the_prefix_spreads() {
        let mut s = set(2);
        let mut p = CacheAware::new(cfg());
        let prefix = "shared system prompt ".repeat(20);
        let first = pick(&mut p, &s, &format!("{prefix} a"));
        s.get_mut(first).unwrap().in_flight = PILE_UP_SLACK;
        let second = pick(&mut p, &s, &format!("{prefix} b"));
        assert_ne!(second, first);
        s.get_mut(first).unwrap().in_flight = 1;
        s.get_mut(second).unwrap().in_flight = 0;
        // Both hold the prefix now: the less loaded one wins.
        assert_eq!(pick(&mut p, &s, &format!("{prefix} c")), second);
    }

    #[test]
    fn memory_stays_bounded() {
        let s = set(2);
        let mut c = cfg();
        c.max_tree_size = 10_000;
        let mut p = CacheAware::new(c);
        for i in 0..2_000 {
            pick(
                &mut p,
                &s,
                &format!("unique prompt number {i} {}", "x".repeat(100)),
            );
            assert!(p.tree_sizes().iter().all(|(_, sz)| *sz <= 10_000));
        }
    }
}
