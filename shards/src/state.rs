//! A shard's own view of the workers; changed only by deltas, read by every request.

use crate::breaker::BreakerView;
use crate::messages::{Delta, WorkerId, WorkerRole, WorkerSpec};

/// One worker as this shard sees it.
#[derive(Debug)]
pub struct Worker {
    pub spec: WorkerSpec,
    /// Requests this shard has in flight to the worker.
    pub in_flight: u32,
    /// Requests this shard sent to the worker that got an answer head.
    pub processed: u64,
    /// Requests the other shards have in flight to it (control core's last view).
    pub remote_load: u32,
    /// Times this shard's policy chose the worker.
    pub decisions: u64,
    /// This shard's copy of the worker's circuit breaker.
    pub breaker: BreakerView,
    /// Breaker outcomes this shard counted: (successes, failures).
    pub outcomes: (u64, u64),
    /// Healthy, admitted by its breaker, and not excluded for a retry: the policies
    /// choose only among these.
    pub routable: bool,
    /// A failed attempt of the request being retried went here (see `exclude`).
    excluded: bool,
}

impl Worker {
    /// Requests in flight from the whole router: this shard's own count, exact and
    /// current, plus the other shards' from the last view.
    pub fn load(&self) -> u32 {
        self.in_flight + self.remote_load
    }
}

/// The workers of one shard, in a Vec, with an index by id: ids are small integers
/// handed out in sequence by the control core, so `by_id[id]` is a direct lookup where
/// a scan over tens of ~200-byte entries cost tens of nanoseconds per request.
///
/// It holds every pool (regular, prefill, decode) so that lookups by id need not know
/// a worker's role; a policy sees one pool at a time through `view`.
#[derive(Debug, Default)]
pub struct WorkerSet {
    workers: Vec<Worker>,
    /// Per pool, indices into `workers` of the ones that may take new requests.
    routable: [Vec<usize>; 3],
    /// `by_id[id]` is the worker's index in `workers` plus one; 0 when absent.
    by_id: Vec<u32>,
    /// The pool that `routable*`, `members` and `exclude` speak of.
    view: WorkerRole,
}

impl WorkerSet {
    pub fn apply(&mut self, delta: &Delta) {
        match delta {
            Delta::Upsert(spec) => match self.get_mut(spec.id) {
                Some(w) => w.spec = spec.clone(),
                None => self.workers.push(Worker {
                    spec: spec.clone(),
                    in_flight: 0,
                    processed: 0,
                    remote_load: 0,
                    decisions: 0,
                    breaker: BreakerView::default(),
                    outcomes: (0, 0),
                    routable: false,
                    excluded: false,
                }),
            },
            Delta::Remove(id) => self.workers.retain(|w| w.spec.id != *id),
            Delta::Health { id, healthy } => {
                if let Some(w) = self.get_mut(*id) {
                    w.spec.healthy = *healthy;
                }
            }
            Delta::Loads(loads) => {
                for w in &mut self.workers {
                    w.remote_load = loads
                        .iter()
                        .find(|(id, _)| *id == w.spec.id)
                        .map_or(0, |(_, l)| *l);
                }
                return; // the routable set is unchanged
            }
            Delta::Breaker {
                id,
                state,
                failures,
            } => {
                if let Some(w) = self.get_mut(*id) {
                    w.breaker.set(*state, *failures);
                }
            }
            Delta::Drain
            | Delta::AdminReply { .. }
            | Delta::CacheInserts(_)
            | Delta::CacheEvict { .. } => return,
        }
        self.by_id.iter_mut().for_each(|slot| *slot = 0);
        for (i, w) in self.workers.iter().enumerate() {
            let id = w.spec.id as usize;
            if self.by_id.len() <= id {
                self.by_id.resize(id + 1, 0);
            }
            self.by_id[id] = i as u32 + 1;
        }
        self.refresh_routable();
    }

    /// Recomputes which workers the policies may choose. Runs on deltas and on
    /// breaker changes seen by this shard, never per request in steady state.
    pub fn refresh_routable(&mut self) {
        self.routable.iter_mut().for_each(Vec::clear);
        for (i, w) in self.workers.iter_mut().enumerate() {
            w.routable = w.spec.healthy && w.breaker.admits() && !w.excluded;
            if w.routable {
                self.routable[w.spec.role as usize].push(i);
            }
        }
    }

    /// Points the pool-wise accessors at `role`'s pool (policies see one pool).
    pub fn set_view(&mut self, role: WorkerRole) {
        self.view = role;
    }

    pub fn view(&self) -> WorkerRole {
        self.view
    }

    /// The workers of the viewed pool, routable or not.
    pub fn members(&self) -> impl Iterator<Item = &Worker> + '_ {
        let role = self.view;
        self.workers.iter().filter(move |w| w.spec.role == role)
    }

    /// Takes `ids` out of the choice for one retry, unless that leaves nothing to
    /// choose: a retry avoids the workers that just failed only when others can serve.
    /// Undo with `clear_excluded` before any `.await`.
    pub fn exclude(&mut self, ids: &[WorkerId]) {
        let others = self
            .members()
            .any(|w| w.spec.healthy && w.breaker.admits() && !ids.contains(&w.spec.id));
        if !others {
            return;
        }
        for w in &mut self.workers {
            w.excluded = ids.contains(&w.spec.id);
        }
        self.refresh_routable();
    }

    /// Healthy workers of the viewed pool, and how many of them their breaker keeps
    /// out (for the 503).
    pub fn unavailable_counts(&self) -> (usize, usize) {
        let healthy = self.members().filter(|w| w.spec.healthy).count();
        let open = self
            .members()
            .filter(|w| w.spec.healthy && !w.breaker.admits())
            .count();
        (healthy, open)
    }

    pub fn clear_excluded(&mut self) {
        if self.workers.iter().any(|w| w.excluded) {
            self.workers.iter_mut().for_each(|w| w.excluded = false);
            self.refresh_routable();
        }
    }

    fn index_of(&self, id: WorkerId) -> Option<usize> {
        match self.by_id.get(id as usize) {
            Some(&slot) if slot > 0 => Some(slot as usize - 1),
            _ => None,
        }
    }

    pub fn all(&self) -> &[Worker] {
        &self.workers
    }

    /// Workers of the viewed pool that may take a new request, in a stable order.
    pub fn routable(&self) -> impl ExactSizeIterator<Item = &Worker> + '_ {
        self.routable[self.view as usize]
            .iter()
            .map(|&i| &self.workers[i])
    }

    pub fn routable_count(&self) -> usize {
        self.routable[self.view as usize].len()
    }

    /// Routable workers of a pool, whatever the view.
    pub fn routable_in(&self, role: WorkerRole) -> usize {
        self.routable[role as usize].len()
    }

    /// The `n`th routable worker of the viewed pool.
    pub fn routable_nth(&self, n: usize) -> &Worker {
        &self.workers[self.routable[self.view as usize][n]]
    }

    pub fn get(&self, id: WorkerId) -> Option<&Worker> {
        self.index_of(id).map(|i| &self.workers[i])
    }

    pub fn get_mut(&mut self, id: WorkerId) -> Option<&mut Worker> {
        self.index_of(id).map(|i| &mut self.workers[i])
    }
}

/// `n` healthy workers `http://10.0.0.{id}:8000`, for policy tests.
#[cfg(test)]
pub fn test_workers(n: u32) -> WorkerSet {
    let mut s = WorkerSet::default();
    for id in 0..n {
        s.apply(&Delta::Upsert(tests::spec(id, true)));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn spec(id: WorkerId, healthy: bool) -> WorkerSpec {
        WorkerSpec {
            id,
            url: format!("http://10.0.0.{id}:8000"),
            addr: format!("10.0.0.{id}:8000").parse().unwrap(),
            authority: format!("10.0.0.{id}:8000"),
            dp_rank: None,
            healthy,
            role: Default::default(),
            pd_address: None,
        }
    }

    #[test]
    fn deltas_change_routable_set() {
        let mut s = WorkerSet::default();
        s.apply(&Delta::Upsert(spec(1, true)));
        s.apply(&Delta::Upsert(spec(2, true)));
        s.apply(&Delta::Upsert(spec(3, false)));
        assert_eq!(s.routable_count(), 2);
        s.apply(&Delta::Health {
            id: 1,
            healthy: false,
        });
        assert_eq!(s.routable().map(|w| w.spec.id).collect::<Vec<_>>(), vec![2]);
        s.apply(&Delta::Remove(2));
        assert_eq!(s.routable_count(), 0);
        assert_eq!(s.all().len(), 2);
    }
}
