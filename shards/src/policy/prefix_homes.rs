//! Homes for shared prefixes (system prompts, templates: the keys many conversations
//! start with), spread evenly over the workers and the same on every router replica.
//!
//! Rendezvous hashing alone places each key on its best-ranked worker, which leaves a
//! handful of system prompts lumpy (eight over four workers: often three, two, two,
//! one) and overflows the busiest worker's cache. Here no worker is home to more than
//! its share of the known shared keys (`ceil(keys / workers)`: bounded-load
//! consistent hashing with a factor of one, over keys instead of requests), and as
//! many keys as that allows stay at their best-ranked worker: that is where a key's
//! first conversations went, before it was shared, and a home elsewhere strands them
//! there. Each worker keeps the keys that rank it highest; the others go, in the order
//! of their hashes, to the worker home to the fewest keys. Then no worker is left home
//! to fewer than `floor(keys / workers)` keys (with five to seven prompts over four
//! workers, rendezvous often ranks none of them best on one worker, which would take
//! only spills until the eighth prompt arrives): a worker below takes the key that
//! ranks it highest from a worker above. The outcome depends only on
//! the set of keys and the worker URLs, not on the order traffic arrived in, so
//! replicas that see the same system prompts give them the same homes without talking.
//!
//! A key not shared yet (a new prompt, one conversation's own start) goes to its
//! best-ranked worker: that depends on nothing the shards of a router may briefly
//! disagree on, so a burst of one new prompt lands on one worker. (Placing it where its
//! home would be once shared split such bursts whenever the shards differed on the set
//! of keys, which a 2 ms report lag makes common.)
//!
//! A key that becomes shared while only one worker holds it is pinned there until a
//! newer key becomes shared: the shards of a router may briefly differ on the set (a
//! report in flight on a loaded machine), and the key's first requests must not split
//! over two workers because of it. A key learned from a report that arrives after the
//! pin (another shard's request, older than the pinned key's) joins the spread and
//! leaves the pin alone: under load reports lag by tens of milliseconds, and letting
//! such a key take the pin split the burst under way on one shard only.
//!
//! While the workers' counters say this router sends all of their requests
//! ([`PrefixHomes::set_follow_traffic`]), the homes follow its traffic instead of the
//! rank alone: a worker is kept by the key that sent it the most requests, a key
//! prefers the worker it sent the most to, and the floor moves the key with the fewest
//! requests at its home. Conversations started at a home stay there (they are cached
//! there), so a key whose home moves leaves load behind; following the traffic moves
//! the keys that left the least. Replicas would count differently (each sees only its
//! own requests), so with more than one sender the homes depend on the keys alone.

use super::placement::{load_cap, Rendezvous};
use crate::prehashed::PrehashedMap;
use crate::state::{PoolView, Worker};
use crate::worker::WorkerId;
use smallvec::SmallVec;
use std::time::Instant;

/// While homes follow the traffic, how long a newly shared key stays pinned to the
/// worker that held it: long enough for every shard to learn that the key is shared
/// (a report takes 2 ms, tens under load), after which the key claims its worker by
/// the requests it sent there like any other. A pin that lasts until the next key
/// becomes shared makes that new key outrank keys whose conversations have run on the
/// worker for a while, and the stranded conversations keep the load uneven.
pub const FOLLOWING_PIN_HOLD: std::time::Duration = std::time::Duration::from_millis(100);

/// Shared keys remembered at most: a bound on memory and on the work of spreading
/// them (keys x workers rank computations each time the set changes). Past it, the
/// least recently used eighth is dropped.
pub const MAX_KEYS: usize = 1024;

/// The shared keys of one policy instance and their homes.
#[derive(Default)]
pub struct PrefixHomes {
    /// Key -> the recency clock when last used.
    keys: PrehashedMap<u64>,
    /// (key, home) sorted by key, for the keys and workers as of the last
    /// [`PrefixHomes::refresh`].
    homes: Vec<(u64, WorkerId)>,
    /// Per worker id: the keys homed there.
    counts: Vec<u32>,
    /// The key that became shared last, held by one worker then (see the module doc).
    pin: Option<(u64, WorkerId)>,
    /// When the newest key known to be shared was first seen shared: an older key
    /// learned late does not take the pin.
    newest: Option<Instant>,
    /// Per shared key: requests routed to each worker since it became shared or homes
    /// began to follow the traffic (this shard's and the others').
    traffic: PrehashedMap<SmallVec<[(WorkerId, u32); 4]>>,
    /// Homes follow the traffic: this router sends all of the workers' requests.
    follow: bool,
    /// The keys or the workers changed since the homes were computed.
    stale: bool,
    clock: u64,
    /// The clock at the last [`PrefixHomes::age`].
    aged_at: u64,
}

impl PrefixHomes {
    /// Other requests start with `key` too; `holder` is the one worker holding it, if
    /// only one does; `at` is when the request that showed it was routed (now, or
    /// another shard's reported time).
    pub fn note_shared(&mut self, key: u64, holder: Option<WorkerId>, at: Instant) {
        self.clock += 1;
        if let Some(used) = self.keys.get_mut(&key) {
            *used = self.clock;
            return;
        }
        if self.keys.len() >= MAX_KEYS {
            self.drop_oldest(MAX_KEYS / 8);
        }
        self.keys.insert(key, self.clock);
        if self.newest.is_none_or(|newest| at >= newest) {
            self.newest = Some(at);
            self.pin = holder.map(|w| (key, w));
        }
        self.stale = true;
    }

    /// Whether `key` is known to be shared.
    pub fn is_shared(&self, key: u64) -> bool {
        self.keys.contains_key(&key)
    }

    /// The home of `key`, as of the last placement.
    pub fn home(&self, key: u64) -> Option<WorkerId> {
        let i = self.homes.binary_search_by_key(&key, |(k, _)| *k).ok()?;
        Some(self.homes[i].1)
    }

    /// The workers changed: homes are computed again.
    pub fn workers_changed(&mut self) {
        self.stale = true;
    }

    /// Forgets the keys unused since the previous call (the tree's periodic eviction
    /// calls it): a system prompt nobody sends any more stops taking a share.
    pub fn age(&mut self) {
        let since = self.aged_at;
        self.aged_at = self.clock;
        let before = self.keys.len();
        self.keys.retain(|_, used| *used > since);
        if self.keys.len() != before {
            self.traffic.retain(|k, _| self.keys.contains_key(k));
            self.stale = true;
            self.pin = None;
        }
    }

    fn drop_oldest(&mut self, n: usize) {
        let mut ages: Vec<u64> = self.keys.values().copied().collect();
        let nth = n.min(ages.len() - 1);
        let (_, cut, _) = ages.select_nth_unstable(nth);
        let cut = *cut;
        self.keys.retain(|_, used| *used > cut);
        self.traffic.retain(|k, _| self.keys.contains_key(k));
        self.stale = true;
        self.pin = None;
    }

    /// A request of `key` went to `worker`: counted while homes follow the traffic and
    /// `key` is shared.
    pub fn note_routed(&mut self, key: u64, worker: WorkerId) {
        if !self.follow || !self.keys.contains_key(&key) {
            return;
        }
        let counts = self.traffic.entry(key).or_default();
        match counts.iter_mut().find(|(w, _)| *w == worker) {
            Some((_, n)) => *n = n.saturating_add(1),
            None => counts.push((worker, 1)),
        }
    }

    /// Whether homes follow the traffic (the router sends all of its workers'
    /// requests); they are computed again when it changes. Requests are counted only
    /// while they do (a count with a gap in it would mislead), from when they start.
    pub fn set_follow_traffic(&mut self, follow: bool) {
        self.stale |= self.follow != follow;
        self.follow = follow;
        if !follow {
            self.traffic.clear();
        }
    }

    /// Requests of `key` routed to `worker`, as far as homes count them.
    fn sent(&self, key: u64, worker: WorkerId) -> u32 {
        let counts = self.traffic.get(&key).map_or(&[][..], |c| &c[..]);
        counts.iter().find(|(w, _)| *w == worker).map_or(0, |c| c.1)
    }

    /// How strongly `key` claims `worker`: the requests it sent there (while homes
    /// follow the traffic; else none), then its rank there.
    fn claim(&self, key: u64, worker: WorkerId, rank: &Rendezvous) -> (u32, u64) {
        (self.sent(key, worker), rank.score(key, worker))
    }

    /// Computes the homes again when the keys or workers changed: as many keys as
    /// the share allows stay at their best-ranked worker (where a key's first
    /// conversations went, before it was shared), the strongest-ranked first; the rest
    /// go, in the order of their hashes, to the worker home to the fewest keys; then
    /// workers below `floor(keys / workers)` take keys from workers above it. Runs
    /// when the set of keys or workers changes: at most 0.4 ms for 1,024 keys over 64
    /// workers (0.3 ms without the floor), a few us for tens of keys.
    fn refresh(&mut self, rank: &Rendezvous, workers: &PoolView<'_>) {
        if !self.stale {
            return;
        }
        self.stale = false;
        self.homes.clear();
        self.counts.clear();
        let n = workers.routable_count();
        if n == 0 {
            return;
        }
        let share = self.keys.len().div_ceil(n) as u32;
        let pin = self
            .pin
            .filter(|(k, w)| self.keys.contains_key(k) && workers.routable_get(*w).is_some());
        // (worker, claim, key): each key's first choice (the worker it sent the most
        // requests to, when homes follow the traffic; else, and on a tie, its
        // best-ranked) and how strongly it claims it; the pinned key claims its holder
        // before any other.
        let mut first: Vec<(WorkerId, (u32, u64), u64)> = self
            .keys
            .keys()
            .filter_map(|&key| match pin {
                Some((k, w)) if k == key => Some((w, (u32::MAX, u64::MAX), key)),
                _ => {
                    let ids = workers.routable().map(|w| w.spec.id);
                    let best = ids.max_by_key(|&w| self.claim(key, w, rank))?;
                    Some((best, self.claim(key, best, rank), key))
                }
            })
            .collect();
        first.sort_unstable_by(|a, b| (a.0, b.1, a.2).cmp(&(b.0, a.1, b.2)));
        let mut over = Vec::new();
        for (w, _, key) in first {
            if count(&self.counts, w) < share {
                self.homes.push((key, w));
                bump(&mut self.counts, w);
            } else {
                over.push(key);
            }
        }
        over.sort_unstable();
        for key in over {
            let home = workers
                .routable()
                .filter(|w| count(&self.counts, w.spec.id) < share)
                .min_by_key(|w| {
                    let homed = count(&self.counts, w.spec.id);
                    (homed, std::cmp::Reverse(self.claim(key, w.spec.id, rank)))
                });
            if let Some(home) = home {
                self.homes.push((key, home.spec.id));
                bump(&mut self.counts, home.spec.id);
            }
        }
        self.lift_to_floor(rank, workers, pin.map(|(k, _)| k));
        self.homes.sort_unstable_by_key(|(k, _)| *k);
    }

    /// No worker is home to fewer than `floor(keys / workers)` keys: one key at a
    /// time, of all keys homed on workers above the floor (the pinned one excepted)
    /// and all workers below it, the pair that ranks highest moves (following the
    /// traffic: the key that sent its home the fewest requests, then the most to the
    /// worker it moves to).
    fn lift_to_floor(&mut self, rank: &Rendezvous, workers: &PoolView<'_>, pin: Option<u64>) {
        let floor = (self.homes.len() / workers.routable_count()) as u32;
        loop {
            let needy: Vec<WorkerId> = workers
                .routable()
                .map(|w| w.spec.id)
                .filter(|&w| count(&self.counts, w) < floor)
                .collect();
            if needy.is_empty() {
                return;
            }
            let mut best: Option<(MoveClaim, usize, WorkerId)> = None;
            for (i, &(key, from)) in self.homes.iter().enumerate() {
                if Some(key) == pin || count(&self.counts, from) <= floor {
                    continue;
                }
                let left = std::cmp::Reverse(self.sent(key, from));
                for &to in &needy {
                    let s = (left, self.sent(key, to), rank.score(key, to));
                    if best.is_none_or(|(b, _, _)| s > b) {
                        best = Some((s, i, to));
                    }
                }
            }
            let Some((_, i, to)) = best else { return };
            let from = self.homes[i].1;
            self.counts[from as usize] -= 1;
            bump(&mut self.counts, to);
            self.homes[i].1 = to;
        }
    }

    /// Where `key` goes: its home while that is under the load cap, else its
    /// best-ranked worker under the cap (a key without a home too: that depends on
    /// nothing the shards may disagree on); [`Rendezvous::place`] when every worker is
    /// over the cap.
    pub fn place<'a>(
        &mut self,
        key: u64,
        rank: &Rendezvous,
        workers: &PoolView<'a>,
        total: u64,
    ) -> Option<&'a Worker> {
        let n = workers.routable_count();
        if n == 0 {
            return None;
        }
        if self.follow && self.pin.is_some() {
            let held = self
                .newest
                .is_some_and(|at| at.elapsed() > FOLLOWING_PIN_HOLD);
            if held {
                self.pin = None;
                self.stale = true;
            }
        }
        self.refresh(rank, workers);
        let cap = load_cap(total, n);
        match self.home(key) {
            Some(id) => workers
                .routable_get(id)
                .filter(|home| u64::from(home.load()) < cap)
                .or_else(|| best_under(key, rank, workers, cap)),
            None => best_under(key, rank, workers, cap),
        }
        .or_else(|| rank.place(key, workers, total))
    }
}

/// How strongly a key should move to a worker below the floor, highest first: the
/// fewest requests left at its home, the most sent where it goes, then the rank.
type MoveClaim = (std::cmp::Reverse<u32>, u32, u64);

fn count(counts: &[u32], id: WorkerId) -> u32 {
    counts.get(id as usize).copied().unwrap_or(0)
}

fn bump(counts: &mut Vec<u32>, id: WorkerId) {
    let i = id as usize;
    if counts.len() <= i {
        counts.resize(i + 1, 0);
    }
    counts[i] += 1;
}

/// The best-ranked routable worker for `key` under `cap` requests in flight.
fn best_under<'a>(
    key: u64,
    rank: &Rendezvous,
    workers: &PoolView<'a>,
    cap: u64,
) -> Option<&'a Worker> {
    workers
        .routable()
        .filter(|w| u64::from(w.load()) < cap)
        .max_by_key(|w| rank.score(key, w.spec.id))
}

#[cfg(test)]
#[path = "prefix_homes_tests.rs"]
mod tests;
