//! Deterministic placement: rendezvous (highest-random-weight) hashing with a bounded
//! load. A key's workers are ranked by a hash of the key and each worker's URL, so the
//! same key ranks them the same way on every shard and every router replica without
//! any of them talking (ids differ between replicas; URLs do not). The key goes to the
//! less loaded of its two best-ranked workers under a load cap, so a hot key spills to
//! its next choice instead of piling up (bounded-load consistent hashing, Mirrokni,
//! Thorup and Zadimoghaddam, 2018; two choices, Mitzenmacher, 2001).
//!
//! Rendezvous rather than a ring: with a handful of workers a ring needs many virtual
//! nodes to spread keys evenly, and removing a worker moves only its own keys either
//! way.

use crate::state::{PoolView, Worker};
use crate::worker::WorkerId;
use xxhash_rust::xxh3::xxh3_64;

/// How far above the mean load a worker may be before a key skips it: the cap is
/// `ceil(LOAD_CAP_FACTOR * (total load + 1) / workers) + LOAD_CAP_SLACK`. Tuned on
/// bench/routing_quality (docs/routing.md): tighter caps move prefixes that are
/// merely popular and cost cache hits.
pub const LOAD_CAP_FACTOR: f64 = 1.5;

/// Requests a worker may have above the factor's share before the cap bites: at low
/// load the share rounds to one or two, and one request in flight (or a load report
/// 100 ms old) must not move a prefix off its worker.
pub const LOAD_CAP_SLACK: u64 = 2;

/// How many fewer requests the second-ranked worker must have to take a key from the
/// first: a load report is up to 150 ms old, and a difference of one request must not
/// send the same key to two workers.
pub const CHOICE_MARGIN: u32 = 2;

/// Per worker, the seed its rankings are drawn from.
#[derive(Default)]
pub struct Rendezvous {
    /// Indexed by worker id (ids are small and dense); a hash of the worker's URL.
    seeds: Vec<u64>,
}

impl Rendezvous {
    /// Workers came or went: seed the ones of this pool.
    pub fn on_workers_changed(&mut self, workers: &PoolView<'_>) {
        for w in workers.members() {
            let id = w.spec.id as usize;
            if self.seeds.len() <= id {
                self.seeds.resize(id + 1, 0);
            }
            self.seeds[id] = xxh3_64(w.spec.url.as_bytes());
        }
    }

    /// The key's rank on a worker: higher is preferred.
    pub fn score(&self, key: u64, worker: WorkerId) -> u64 {
        let seed = self.seeds.get(worker as usize).copied().unwrap_or(0);
        mix(key ^ seed)
    }

    /// The least loaded routable worker, ties broken by `key`'s rank (the same on
    /// every replica).
    pub fn least_loaded<'a>(&self, workers: &PoolView<'a>, key: u64) -> Option<&'a Worker> {
        workers
            .routable()
            .min_by_key(|w| (w.load(), std::cmp::Reverse(self.score(key, w.spec.id))))
    }

    /// Where `key` goes: of its two best-ranked routable workers under the load cap,
    /// the second only when it has [`CHOICE_MARGIN`] fewer requests in flight. Two
    /// choices, because with a few prefixes per worker one choice leaves some workers
    /// with three system prompts and others with one. `total` is the routable
    /// workers' load, which the caller sums anyway. None when there is no routable
    /// worker.
    pub fn place<'a>(&self, key: u64, workers: &PoolView<'a>, total: u64) -> Option<&'a Worker> {
        let n = workers.routable_count();
        if n == 0 {
            return None;
        }
        let cap = load_cap(total, n);
        let mut top: [Option<(&'a Worker, u64)>; 2] = [None, None];
        for w in workers.routable().filter(|w| u64::from(w.load()) < cap) {
            let s = self.score(key, w.spec.id);
            if top[0].is_none_or(|(_, t)| s > t) {
                top[1] = top[0];
                top[0] = Some((w, s));
            } else if top[1].is_none_or(|(_, t)| s > t) {
                top[1] = Some((w, s));
            }
        }
        match top {
            [Some((a, _)), Some((b, _))] if b.load() + CHOICE_MARGIN <= a.load() => Some(b),
            [Some((a, _)), _] => Some(a),
            _ => workers.routable().min_by_key(|w| w.load()),
        }
    }
}

/// The bounded-load cap over `workers` routable workers with `total` requests in
/// flight: see [`LOAD_CAP_FACTOR`].
pub fn load_cap(total: u64, workers: usize) -> u64 {
    (LOAD_CAP_FACTOR * (total + 1) as f64 / workers as f64).ceil() as u64 + LOAD_CAP_SLACK
}

/// A 64-bit finalizer (murmur3's fmix64): every input bit flips each output bit with
/// probability about one half, so `mix(key ^ seed)` ranks independently per worker.
fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::test_workers;
    use crate::worker::WorkerRole;

    fn place_in<'a>(r: &Rendezvous, v: &PoolView<'a>, key: u64) -> &'a Worker {
        let total = v.routable().map(|w| u64::from(w.load())).sum();
        r.place(key, v, total).unwrap()
    }

    #[test]
    fn keys_spread_and_stay_put_when_another_worker_leaves() {
        let mut set = test_workers(4);
        let mut r = Rendezvous::default();
        r.on_workers_changed(&set.view(WorkerRole::Regular, &[]));
        let place = |set: &crate::state::WorkerSet, r: &Rendezvous, k: u64| {
            place_in(r, &set.view(WorkerRole::Regular, &[]), k).spec.id
        };
        let before: Vec<WorkerId> = (0..400).map(|k| place(&set, &r, mix(k))).collect();
        let mut counts = [0; 4];
        before.iter().for_each(|&w| counts[w as usize] += 1);
        assert!(counts.iter().all(|&c| c > 60), "{counts:?}");
        set.remove(3);
        for (k, &was) in before.iter().enumerate() {
            let now = place(&set, &r, mix(k as u64));
            if was != 3 {
                assert_eq!(now, was, "key {k} moved although its worker stayed");
            }
        }
    }

    #[test]
    fn the_same_key_ranks_workers_the_same_in_another_router() {
        // Another replica knows the same URLs by other ids.
        let a = test_workers(3);
        let mut b = crate::state::WorkerSet::default();
        for (id, w) in a.all().iter().rev().enumerate() {
            let mut spec = w.spec.clone();
            spec.id = id as WorkerId + 10;
            b.upsert(&spec);
        }
        let (mut ra, mut rb) = (Rendezvous::default(), Rendezvous::default());
        ra.on_workers_changed(&a.view(WorkerRole::Regular, &[]));
        rb.on_workers_changed(&b.view(WorkerRole::Regular, &[]));
        for k in 0..100 {
            let wa = place_in(&ra, &a.view(WorkerRole::Regular, &[]), mix(k));
            let wb = place_in(&rb, &b.view(WorkerRole::Regular, &[]), mix(k));
            assert_eq!(wa.spec.url, wb.spec.url);
        }
    }

    #[test]
    fn a_loaded_worker_passes_its_keys_to_their_next_choice() {
        let mut set = test_workers(4);
        let mut r = Rendezvous::default();
        r.on_workers_changed(&set.view(WorkerRole::Regular, &[]));
        let home = place_in(&r, &set.view(WorkerRole::Regular, &[]), 7).spec.id;
        // Mean load 8/4 = 2, cap ceil(1.25 * 9 / 4) = 3: the home at 8 is over it.
        set.get_mut(home).unwrap().in_flight = 8;
        let next = place_in(&r, &set.view(WorkerRole::Regular, &[]), 7).spec.id;
        assert_ne!(next, home);
    }
}
