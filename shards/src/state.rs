//! A shard's own view of the workers; changed only by deltas (through `Shard::apply`),
//! read by every request.

use crate::breaker::{BreakerState, BreakerView};
use crate::worker::{WorkerId, WorkerInFlight, WorkerRole, WorkerSpec};
use smallvec::SmallVec;

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
    /// Prompt tokens of this shard's requests to it that have no answer byte yet, as
    /// kv_aware priced them; and the other shards' (control core's last view).
    pub prefill_tokens: u32,
    pub remote_prefill_tokens: u32,
    /// P/D, this shard's: prefill legs to it not priced (no token count) and not yet
    /// answered; requests waiting for their prefill before their decode leg goes to it.
    pub unpriced_prefills: u32,
    pub pending_decodes: u32,
    /// Times this shard's policy chose the worker.
    pub decisions: u64,
    /// This shard's copy of the worker's circuit breaker.
    pub breaker: BreakerView,
    /// Breaker outcomes this shard counted: (successes, failures).
    pub outcomes: (u64, u64),
    /// Healthy and admitted by its breaker: the policies choose only among these
    /// (less a retry's excluded workers, see `PoolView`).
    pub routable: bool,
}

impl Worker {
    /// It lists `model` in its `/v1/models`.
    pub fn serves(&self, model: &str) -> bool {
        self.spec.models.iter().any(|m| m == model)
    }

    /// Requests in flight from the whole router: this shard's own count, exact and
    /// current, plus the other shards' from the last view.
    pub fn load(&self) -> u32 {
        self.in_flight + self.remote_load
    }

    /// Prompt tokens the worker has yet to start on for this router (kv_aware's `A`).
    pub fn prefill_load(&self) -> u32 {
        self.prefill_tokens
            .saturating_add(self.remote_prefill_tokens)
    }
}

/// The workers of one shard, in a Vec, with an index by id: ids are small integers
/// handed out in sequence by the control core, so `by_id[id]` is a direct lookup where
/// a scan over tens of ~200-byte entries cost tens of nanoseconds per request.
///
/// It holds every pool (regular, prefill, decode) so that lookups by id need not know
/// a worker's role; a policy sees one pool at a time through a `PoolView`.
#[derive(Debug, Default)]
pub struct WorkerSet {
    workers: Vec<Worker>,
    /// Per pool, indices into `workers` of the ones that may take new requests.
    routable: [Vec<usize>; 3],
    /// `by_id[id]` is the worker's index in `workers` plus one; 0 when absent.
    by_id: Vec<u32>,
}

impl WorkerSet {
    /// Adds a worker, or replaces the spec of the one with the same id.
    pub fn upsert(&mut self, spec: &WorkerSpec) {
        match self.get_mut(spec.id) {
            Some(w) => w.spec = spec.clone(),
            None => self.workers.push(Worker {
                spec: spec.clone(),
                in_flight: 0,
                processed: 0,
                remote_load: 0,
                prefill_tokens: 0,
                remote_prefill_tokens: 0,
                unpriced_prefills: 0,
                pending_decodes: 0,
                decisions: 0,
                breaker: BreakerView::default(),
                outcomes: (0, 0),
                routable: false,
            }),
        }
        self.reindex();
    }

    pub fn remove(&mut self, id: WorkerId) {
        self.workers.retain(|w| w.spec.id != id);
        self.reindex();
    }

    pub fn set_health(&mut self, id: WorkerId, healthy: bool) {
        if let Some(w) = self.get_mut(id) {
            w.spec.healthy = healthy;
            self.refresh_routable();
        }
    }

    /// The breaker of record changed (the control core's view).
    pub fn set_breaker(&mut self, id: WorkerId, state: BreakerState, failures: u32) {
        if let Some(w) = self.get_mut(id) {
            w.breaker.set(state, failures);
            self.refresh_routable();
        }
    }

    /// What the other shards (and other clients) have in flight; absent means 0. The
    /// routable set does not change.
    pub fn set_remote_loads(&mut self, loads: &[WorkerInFlight]) {
        for w in &mut self.workers {
            let l = loads.iter().find(|l| l.worker == w.spec.id);
            let l = l.copied().unwrap_or_default();
            w.remote_load = l.requests;
            w.remote_prefill_tokens = l.prefill_tokens;
        }
    }

    fn reindex(&mut self) {
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
            w.routable = w.spec.healthy && w.breaker.admits();
            if w.routable {
                self.routable[w.spec.role as usize].push(i);
            }
        }
    }

    /// `role`'s pool as a policy sees it. `excluded` (the workers a retried request
    /// already failed on) is taken out of the choice, unless that leaves nothing to
    /// choose: a retry avoids them only when others can serve.
    pub fn view<'a>(&'a self, role: WorkerRole, excluded: &'a [WorkerId]) -> PoolView<'a> {
        let all = &self.routable[role as usize];
        let kept = |&&i: &&usize| !excluded.contains(&self.workers[i].spec.id);
        if excluded.is_empty() || !all.iter().any(|i| kept(&i)) {
            return PoolView {
                set: self,
                role,
                routable: Positions::All(all),
                excluded: &[],
                model: None,
            };
        }
        PoolView {
            set: self,
            role,
            routable: Positions::Kept(all.iter().filter(kept).copied().collect()),
            excluded,
            model: None,
        }
    }

    /// `role`'s pool narrowed to the workers serving `model` (`--enable-igw`), with
    /// `excluded` taken out as in [`WorkerSet::view`].
    pub fn view_serving<'a>(
        &'a self,
        role: WorkerRole,
        excluded: &'a [WorkerId],
        model: &'a str,
    ) -> PoolView<'a> {
        let serving: SmallVec<[usize; 8]> = self.routable[role as usize]
            .iter()
            .copied()
            .filter(|&i| self.workers[i].serves(model))
            .collect();
        let kept: SmallVec<[usize; 8]> = serving
            .iter()
            .copied()
            .filter(|&i| !excluded.contains(&self.workers[i].spec.id))
            .collect();
        let (routable, excluded) = if excluded.is_empty() || kept.is_empty() {
            (serving, &[][..])
        } else {
            (kept, excluded)
        };
        PoolView {
            set: self,
            role,
            routable: Positions::Kept(routable),
            excluded,
            model: Some(model),
        }
    }

    /// Some healthy worker of `role` serves `model` (per request: no allocation).
    pub fn serves(&self, role: WorkerRole, model: &str) -> bool {
        self.workers
            .iter()
            .any(|w| w.spec.role == role && w.spec.healthy && w.serves(model))
    }

    /// Every model some worker of `role` serves, sorted, once each.
    pub fn models(&self, role: WorkerRole) -> Vec<&str> {
        let mut out: Vec<&str> = self
            .workers
            .iter()
            .filter(|w| w.spec.role == role && w.spec.healthy)
            .flat_map(|w| w.spec.models.iter().map(String::as_str))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Routable workers of a pool.
    pub fn routable_in(&self, role: WorkerRole) -> usize {
        self.routable[role as usize].len()
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

    /// (healthy, all) workers of every pool, for `/readiness`.
    pub fn health_counts(&self) -> (usize, usize) {
        let healthy = self.workers.iter().filter(|w| w.spec.healthy).count();
        (healthy, self.workers.len())
    }

    pub fn get(&self, id: WorkerId) -> Option<&Worker> {
        self.index_of(id).map(|i| &self.workers[i])
    }

    pub fn get_mut(&mut self, id: WorkerId) -> Option<&mut Worker> {
        self.index_of(id).map(|i| &mut self.workers[i])
    }
}

/// Positions in `WorkerSet::workers` a view may choose from.
enum Positions<'a> {
    /// The pool's routable list as it stands (no exclusion: every first attempt).
    All(&'a [usize]),
    /// Less a retry's excluded workers.
    Kept(SmallVec<[usize; 8]>),
}

/// One pool of a `WorkerSet`, borrowed for one decision. What a policy may choose
/// from is fixed when the view is made, so nothing has to be undone afterwards.
pub struct PoolView<'a> {
    set: &'a WorkerSet,
    role: WorkerRole,
    routable: Positions<'a>,
    /// The workers taken out of this choice (empty unless a retry's exclusion holds).
    excluded: &'a [WorkerId],
    /// Only the workers serving this model are members (`--enable-igw`).
    model: Option<&'a str>,
}

impl<'a> PoolView<'a> {
    pub fn role(&self) -> WorkerRole {
        self.role
    }

    fn positions(&self) -> &[usize] {
        match &self.routable {
            Positions::All(p) => p,
            Positions::Kept(p) => p,
        }
    }

    /// The pool's workers, routable or not.
    pub fn members(&self) -> impl Iterator<Item = &'a Worker> + 'a {
        let (role, model) = (self.role, self.model);
        self.set
            .workers
            .iter()
            .filter(move |w| w.spec.role == role && model.is_none_or(|m| w.serves(m)))
    }

    /// Workers that may take the request, in a stable order.
    pub fn routable(&self) -> impl ExactSizeIterator<Item = &'a Worker> + '_ {
        let workers = &self.set.workers;
        self.positions().iter().map(move |&i| &workers[i])
    }

    pub fn routable_count(&self) -> usize {
        self.positions().len()
    }

    /// The `n`th routable worker.
    pub fn routable_nth(&self, n: usize) -> &'a Worker {
        &self.set.workers[self.positions()[n]]
    }

    /// The worker with this id when it may take the request.
    pub fn routable_get(&self, id: WorkerId) -> Option<&'a Worker> {
        let w = self.set.get(id)?;
        let serves = self.model.is_none_or(|m| w.serves(m));
        (w.routable && w.spec.role == self.role && serves && !self.excluded.contains(&id))
            .then_some(w)
    }

    /// Any worker by id, whatever its pool or state.
    pub fn get(&self, id: WorkerId) -> Option<&'a Worker> {
        self.set.get(id)
    }

    /// Healthy workers of the pool, and how many of them their breaker keeps out
    /// (for the 503).
    pub fn unavailable_counts(&self) -> (usize, usize) {
        let healthy = self.members().filter(|w| w.spec.healthy).count();
        let open = self
            .members()
            .filter(|w| w.spec.healthy && !w.breaker.admits())
            .count();
        (healthy, open)
    }
}

/// A healthy worker `http://10.0.0.{id}:8000`, for tests.
#[cfg(test)]
pub fn test_spec(id: WorkerId) -> WorkerSpec {
    tests::spec(id, true)
}

/// `n` healthy workers `http://10.0.0.{id}:8000`, for policy tests.
#[cfg(test)]
pub fn test_workers(n: u32) -> WorkerSet {
    let mut s = WorkerSet::default();
    for id in 0..n {
        s.upsert(&tests::spec(id, true));
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
            mooncake: None,
            models: Vec::new(),
        }
    }

    #[test]
    fn deltas_change_routable_set() {
        let mut s = WorkerSet::default();
        s.upsert(&spec(1, true));
        s.upsert(&spec(2, true));
        s.upsert(&spec(3, false));
        assert_eq!(s.view(WorkerRole::Regular, &[]).routable_count(), 2);
        s.set_health(1, false);
        let ids = |s: &WorkerSet| {
            let v = s.view(WorkerRole::Regular, &[]);
            v.routable().map(|w| w.spec.id).collect::<Vec<_>>()
        };
        assert_eq!(ids(&s), vec![2]);
        s.remove(2);
        assert_eq!(s.view(WorkerRole::Regular, &[]).routable_count(), 0);
        assert_eq!(s.all().len(), 2);
    }

    #[test]
    fn a_retry_avoids_failed_workers_only_when_others_can_serve() {
        let s = test_workers(3);
        let v = s.view(WorkerRole::Regular, &[0, 1]);
        assert_eq!(v.routable().map(|w| w.spec.id).collect::<Vec<_>>(), vec![2]);
        assert!(v.routable_get(0).is_none() && v.routable_get(2).is_some());
        let v = s.view(WorkerRole::Regular, &[0, 1, 2]);
        assert_eq!(
            v.routable_count(),
            3,
            "nothing else can serve: keep them all"
        );
        assert_eq!(s.view(WorkerRole::Prefill, &[]).routable_count(), 0);
    }
}
