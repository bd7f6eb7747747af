//! Consistent hashing: a ring of 160 virtual nodes per worker (xxh3), keyed by the
//! session, user or tenant of a request, so that a conversation keeps its worker (and
//! its KV cache). Only the keys of a removed worker move; a key whose worker is
//! unhealthy goes to the next worker along the ring, not to one fixed fallback.
//!
//! Beyond the published router: with `--consistent-hash-load-factor F`, a worker that
//! holds more than F times the mean load is skipped too ("consistent hashing with
//! bounded loads"), so one hot session cannot saturate a worker while others idle.

use super::text::{request_text, BodyFields};
use super::text_key::{TextKey, TextKeyBuffers};
use super::{Policy, PolicyKind, RouteInput, SESSION_HEADERS};
use crate::state::PoolView;
use crate::worker::WorkerId;
use serde_json::Value;
use xxhash_rust::xxh3::xxh3_64;

pub const VIRTUAL_NODES: u32 = 160;

/// The ring is searched from a bucket of this many top bits of the key: a few
/// comparisons in a cache line or two instead of a binary search over 160 x workers.
const BUCKET_BITS: u32 = 12;

pub struct ConsistentHash {
    /// (point, worker), sorted by point.
    ring: Vec<(u64, WorkerId)>,
    /// `buckets[b]`: index of the first ring point whose top bits are >= b.
    buckets: Vec<u32>,
    load_factor: Option<f64>,
    /// Where a text key's bytes are gathered.
    text_key: TextKeyBuffers,
}

impl ConsistentHash {
    pub fn new(load_factor: Option<f64>) -> Self {
        ConsistentHash {
            ring: Vec::new(),
            buckets: Vec::new(),
            load_factor,
            text_key: TextKeyBuffers::default(),
        }
    }

    /// The routing key of a request.
    fn key(&mut self, input: &RouteInput<'_>) -> u64 {
        if let Some(session) = input.head.first_of(&SESSION_HEADERS) {
            return xxh3_64(session);
        }
        if let Some(body) = input.json {
            let body = BodyFields::of(body);
            let session = body.session_params.and_then(|p| p.get("session_id"));
            // Chained rather than an array of candidates: the array was stored and
            // reloaded wider than written (a store-forwarding stall per decision).
            if let Some(key) = field_key(session)
                .or_else(|| field_key(body.user))
                .or_else(|| field_key(body.session_id))
                .or_else(|| field_key(body.user_id))
            {
                return key;
            }
            let mut key = TextKey::new(&mut self.text_key);
            request_text(&body, &mut key);
            return key.finish();
        }
        xxh3_64(input.head.target())
    }
}

/// The key of a body field that names a session: a non-empty string or a number.
fn field_key(field: Option<&Value>) -> Option<u64> {
    match field? {
        Value::String(s) if !s.is_empty() => Some(xxh3_64(s.as_bytes())),
        Value::Number(n) => Some(xxh3_64(n.to_string().as_bytes())),
        _ => None,
    }
}

impl Policy for ConsistentHash {
    fn kind(&self) -> PolicyKind {
        PolicyKind::ConsistentHash
    }

    fn needs_body(&self) -> bool {
        true
    }

    fn on_workers_changed(&mut self, workers: &PoolView<'_>) {
        self.ring.clear();
        for w in workers.members() {
            for i in 0..VIRTUAL_NODES {
                let point = xxh3_64(format!("{}#{i}", w.spec.url).as_bytes());
                self.ring.push((point, w.spec.id));
            }
        }
        self.ring.sort_unstable();
        let ring = &self.ring;
        self.buckets = (0..=(1u64 << BUCKET_BITS))
            .map(|b| ring.partition_point(|(p, _)| (p >> (64 - BUCKET_BITS)) < b) as u32)
            .collect();
    }

    fn pick(&mut self, workers: &PoolView<'_>, input: &RouteInput<'_>) -> Option<WorkerId> {
        if self.ring.is_empty() || workers.routable_count() == 0 {
            return None;
        }
        let key = self.key(input);
        // Bounded loads: capacity = ceil(F * (total + 1) / n).
        let capacity = self.load_factor.map(|f| {
            let n = workers.routable_count() as f64;
            let total: f64 = workers.routable().map(|w| f64::from(w.load())).sum();
            (f * (total + 1.0) / n).ceil()
        });
        let bucket = (key >> (64 - BUCKET_BITS)) as usize;
        let (lo, hi) = (
            self.buckets[bucket] as usize,
            self.buckets[bucket + 1] as usize,
        );
        let start = lo + self.ring[lo..hi].partition_point(|(p, _)| *p < key);
        let mut fallback = None;
        let len = self.ring.len();
        for i in 0..len {
            let at = start + i;
            let id = self.ring[if at < len { at } else { at - len }].1;
            let Some(w) = workers.routable_get(id) else {
                continue;
            };
            fallback.get_or_insert(id);
            match capacity {
                Some(cap) if f64::from(w.load()) >= cap => continue,
                _ => return Some(id),
            }
        }
        fallback
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

    fn pick_for(p: &mut ConsistentHash, s: &crate::state::WorkerSet, session: &str) -> WorkerId {
        let mut h = RequestHead::default();
        h.parse(
            format!("POST /v1/chat/completions HTTP/1.1\r\nX-Session-Id: {session}\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
        p.pick(
            &s.view(WorkerRole::Regular, &[]),
            &RouteInput {
                head: &h,
                json: None,
                tokens: None,
            },
        )
        .unwrap()
    }

    #[test]
    fn only_the_removed_workers_keys_move() {
        let mut s = set(4);
        let mut p = ConsistentHash::new(None);
        p.on_workers_changed(&s.view(WorkerRole::Regular, &[]));
        let before: Vec<_> = (0..400)
            .map(|i| pick_for(&mut p, &s, &format!("s{i}")))
            .collect();
        let mut counts = [0; 4];
        before.iter().for_each(|&w| counts[w as usize] += 1);
        assert!(counts.iter().all(|&c| c > 50), "{counts:?}");
        s.remove(2);
        p.on_workers_changed(&s.view(WorkerRole::Regular, &[]));
        for (i, &was) in before.iter().enumerate() {
            let now = pick_for(&mut p, &s, &format!("s{i}"));
            if was != 2 {
                assert_eq!(now, was, "key s{i} moved although its worker stayed");
            } else {
                assert_ne!(now, 2);
            }
        }
    }

    #[test]
    fn unhealthy_worker_keys_spread_along_the_ring() {
        let mut s = set(4);
        let mut p = ConsistentHash::new(None);
        p.on_workers_changed(&s.view(WorkerRole::Regular, &[]));
        let keys: Vec<String> = (0..400)
            .map(|i| format!("k{i}"))
            .filter(|k| pick_for(&mut p, &s, k) == 1)
            .collect();
        s.set_health(1, false);
        let mut moved_to = std::collections::HashSet::new();
        for k in &keys {
            moved_to.insert(pick_for(&mut p, &s, k));
        }
        assert!(!moved_to.contains(&1));
        assert!(
            moved_to.len() >= 2,
            "keys of a sick worker all went to {moved_to:?}"
        );
    }

    #[test]
    fn bounded_load_moves_a_hot_key_on() {
        let mut s = set(3);
        let mut p = ConsistentHash::new(Some(1.25));
        p.on_workers_changed(&s.view(WorkerRole::Regular, &[]));
        let home = pick_for(&mut p, &s, "hot");
        s.get_mut(home).unwrap().in_flight = 10;
        assert_ne!(pick_for(&mut p, &s, "hot"), home);
    }
}
