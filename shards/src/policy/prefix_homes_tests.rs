//! prefix_homes: even spread, the share and the floor, order independence, aging, and
//! homes that follow the traffic.

use super::*;
use crate::state::{test_workers, WorkerSet};
use crate::worker::WorkerRole;
use std::collections::HashMap;

fn ranked(set: &WorkerSet) -> (PoolView<'_>, Rendezvous) {
    let view = set.view(WorkerRole::Regular, &[]);
    let mut rank = Rendezvous::default();
    rank.on_workers_changed(&view);
    (view, rank)
}

/// The homes the shards compute for `keys`, all shared.
fn refreshed(view: &PoolView<'_>, rank: &Rendezvous, keys: &[u64]) -> PrefixHomes {
    let mut h = PrefixHomes::default();
    keys.iter()
        .for_each(|k| h.note_shared(*k, None, Instant::now()));
    h.refresh(rank, view);
    h
}

fn best_ranked(view: &PoolView<'_>, rank: &Rendezvous, key: u64) -> WorkerId {
    let w = view.routable().max_by_key(|w| rank.score(key, w.spec.id));
    w.unwrap().spec.id
}

fn homes_of(set: &WorkerSet, keys: &[u64]) -> Vec<String> {
    let (view, rank) = ranked(set);
    let mut h = refreshed(&view, &rank, keys);
    (keys.iter())
        .map(|k| h.place(*k, &rank, &view, 0).unwrap().spec.url.clone())
        .collect()
}

#[test]
fn shared_keys_spread_evenly() {
    let set = test_workers(4);
    for round in 0..50u64 {
        let keys: Vec<u64> = (0..8)
            .map(|k| (round << 8 | k).wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .collect();
        let homes = homes_of(&set, &keys);
        let mut per: HashMap<&str, usize> = HashMap::new();
        homes.iter().for_each(|u| *per.entry(u).or_default() += 1);
        assert!(per.values().all(|&c| c == 2), "round {round}: {per:?}");
    }
}

#[test]
fn as_many_keys_as_the_share_allows_stay_at_their_best_ranked_worker() {
    // Before a key is shared its conversations go to its best-ranked worker; a
    // home elsewhere strands them. With eight keys over four workers (a share of
    // two), a worker that is best-ranked for k keys is home to min(k, 2) of them.
    let set = test_workers(4);
    let (view, rank) = ranked(&set);
    for round in 0..200u64 {
        let keys: Vec<u64> = (0..8)
            .map(|k| (round << 8 | k).wrapping_mul(0xd6e8_feb8_6659_fd93))
            .collect();
        let h = refreshed(&view, &rank, &keys);
        let best = |k: u64| best_ranked(&view, &rank, k);
        for w in view.routable().map(|w| w.spec.id) {
            let ranked_first = keys.iter().filter(|k| best(**k) == w).count();
            let kept = (keys.iter())
                .filter(|k| best(**k) == w && h.home(**k) == Some(w))
                .count();
            assert_eq!(kept, ranked_first.min(2), "round {round}, worker {w}");
        }
    }
}

#[test]
fn every_worker_is_home_to_its_floor_and_none_to_more_than_its_share() {
    // Five to seven keys over four workers: rendezvous alone often ranks none of
    // them best on some worker, which then took only spills until the eighth key.
    let set = test_workers(4);
    let (view, rank) = ranked(&set);
    let mut lifted = 0;
    for n in 1..=13u64 {
        for round in 0..100u64 {
            let keys: Vec<u64> = (0..n)
                .map(|k| (round << 8 | k).wrapping_mul(0xa076_1d64_78bd_642f))
                .collect();
            let h = refreshed(&view, &rank, &keys);
            let floor = n as u32 / 4;
            let share = n.div_ceil(4) as u32;
            for w in view.routable().map(|w| w.spec.id) {
                let homed = count(&h.counts, w);
                assert!((floor..=share).contains(&homed), "{n} keys: {homed} on {w}");
                let ranked_first = keys.iter().any(|k| best_ranked(&view, &rank, *k) == w);
                if homed > 0 && !ranked_first {
                    lifted += 1;
                }
            }
        }
    }
    assert!(
        lifted > 0,
        "no round needed the floor: the test shows nothing"
    );
}

#[test]
fn homes_do_not_depend_on_the_order_keys_came_in() {
    let set = test_workers(4);
    let keys: Vec<u64> = (1..=11)
        .map(|k: u64| k.wrapping_mul(0xc2b2_ae3d_27d4_eb4f))
        .collect();
    let forward = homes_of(&set, &keys);
    let mut backward_keys = keys.clone();
    backward_keys.reverse();
    let mut backward = homes_of(&set, &backward_keys);
    backward.reverse();
    assert_eq!(forward, backward);
}

#[test]
fn unused_keys_age_out_and_memory_stays_bounded() {
    let mut h = PrefixHomes::default();
    h.note_shared(1, None, Instant::now());
    h.note_shared(2, None, Instant::now());
    h.age();
    h.note_shared(1, None, Instant::now());
    h.age();
    assert!(h.is_shared(1) && !h.is_shared(2));
    for k in 0..(MAX_KEYS as u64 * 3) {
        h.note_shared(k, None, Instant::now());
        assert!(h.keys.len() <= MAX_KEYS);
    }
    assert!(h.is_shared(MAX_KEYS as u64 * 3 - 1));
}

/// Eight keys over four workers where some worker is best-ranked for three or more of
/// them (so one must leave it), with that worker and its keys, strongest-ranked first.
fn contested(view: &PoolView<'_>, rank: &Rendezvous) -> (Vec<u64>, WorkerId, Vec<u64>) {
    for round in 0..1000u64 {
        let keys: Vec<u64> = (0..8)
            .map(|k| (round << 8 | k).wrapping_mul(0x9fb2_1c65_1e98_df25))
            .collect();
        for w in view.routable().map(|w| w.spec.id) {
            let mut mine: Vec<u64> = (keys.iter().copied())
                .filter(|k| best_ranked(view, rank, *k) == w)
                .collect();
            if mine.len() >= 3 {
                mine.sort_by_key(|k| std::cmp::Reverse(rank.score(*k, w)));
                return (keys, w, mine);
            }
        }
    }
    panic!("no contested worker in 1,000 rounds");
}

#[test]
fn while_the_router_is_the_sole_sender_a_worker_is_kept_by_the_key_that_sent_it_the_most() {
    let set = test_workers(4);
    let (view, rank) = ranked(&set);
    let (keys, w, mine) = contested(&view, &rank);
    let weakest = *mine.last().unwrap();
    let mut h = refreshed(&view, &rank, &keys);
    // By rank alone the weakest of the worker's keys moves (the share is two).
    assert_ne!(h.home(weakest), Some(w));
    // The router becomes the sole sender; the key's conversations run there.
    h.set_follow_traffic(true);
    for _ in 0..20 {
        h.note_routed(weakest, w);
    }
    h.refresh(&rank, &view);
    assert_eq!(h.home(weakest), Some(w), "following the traffic");
    let per: Vec<u32> = (view.routable())
        .map(|x| count(&h.counts, x.spec.id))
        .collect();
    assert!(per.iter().all(|&c| c == 2), "still even: {per:?}");
    // Another sender appears: the homes depend on the keys and ranks alone again.
    h.set_follow_traffic(false);
    h.refresh(&rank, &view);
    assert_ne!(h.home(weakest), Some(w));
}

#[test]
fn requests_are_counted_only_while_following_for_shared_keys_and_forgotten_with_them() {
    let mut h = PrefixHomes::default();
    h.note_shared(7, None, Instant::now());
    h.note_routed(7, 1);
    assert!(
        h.traffic.is_empty(),
        "counted while not following the traffic"
    );
    h.set_follow_traffic(true);
    h.note_routed(8, 1);
    assert!(h.traffic.is_empty(), "a key not shared is not counted");
    h.note_routed(7, 1);
    h.note_routed(7, 1);
    assert_eq!(h.sent(7, 1), 2);
    h.age();
    h.age();
    assert!(!h.is_shared(7) && h.traffic.is_empty());
    h.note_shared(7, None, Instant::now());
    h.note_routed(7, 1);
    h.set_follow_traffic(false);
    assert!(h.traffic.is_empty(), "counts kept across a gap");
}

#[test]
fn following_the_traffic_a_new_keys_pin_lasts_only_until_every_shard_knows_the_key() {
    let set = test_workers(4);
    let (view, rank) = ranked(&set);
    let (keys, w, _) = contested(&view, &rank);
    let mut h = refreshed(&view, &rank, &keys);
    h.set_follow_traffic(true);
    // Every prompt's conversations have run at its best-ranked worker for a while.
    for k in &keys {
        for _ in 0..10 {
            h.note_routed(*k, best_ranked(&view, &rank, *k));
        }
    }
    // A new prompt becomes shared on `w`, which is already the first choice of three.
    let new = 0x5eed_u64;
    h.note_shared(new, Some(w), Instant::now());
    h.note_routed(new, w);
    assert_eq!(h.place(new, &rank, &view, 0).map(|x| x.spec.id), Some(w));
    // Once the pin has held long enough, the prompt with the fewest requests there
    // (the new one) leaves, not one whose conversations are cached there.
    h.newest = Some(Instant::now() - FOLLOWING_PIN_HOLD * 2); // as if that long ago
    h.place(new, &rank, &view, 0);
    assert_ne!(h.home(new), Some(w));
    assert!(h.pin.is_none());
}
