//! `--enable-igw`: one policy instance per model. A request naming a `model` is routed
//! among the workers whose `/v1/models` list it (the control core asks them), by that
//! model's own policy (its own counters, trees, sessions), so one model's traffic
//! never skews another's decisions. Only models some worker serves get an instance;
//! each is made when a worker first lists its model, so that kv_aware's index sees
//! every KV event about the model's workers from then on.

use crate::metrics::RatioHistogram;
use crate::policy::{Policy, PolicyKind, PolicyOptions};
use crate::state::WorkerSet;
use crate::worker::{WorkerId, WorkerRole};
use std::collections::HashMap;

/// The regular pool's policies, by model.
#[derive(Default)]
pub struct ModelPools {
    policies: HashMap<String, Box<dyn Policy>>,
    /// The last `Delta::SoleSender`, for policies made after it.
    sole_sender: bool,
}

impl ModelPools {
    /// The policy of `model`, made on first use.
    pub fn policy(
        &mut self,
        model: &str,
        workers: &WorkerSet,
        (kind, options): (PolicyKind, &PolicyOptions),
        shard: usize,
    ) -> &mut Box<dyn Policy> {
        if !self.policies.contains_key(model) {
            let seed = shard as u64 + 1 + self.policies.len() as u64 * 7919;
            let mut p = kind.build(seed, options, WorkerRole::Regular);
            p.set_sole_sender(self.sole_sender);
            p.on_workers_changed(&workers.view_serving(WorkerRole::Regular, &[], model));
            self.policies.insert(model.to_string(), p);
        }
        self.policies.get_mut(model).expect("inserted above")
    }

    /// Workers came, went or changed models: a model served for the first time gets
    /// its policy, every model's policy sees its workers again, and a model nobody
    /// serves any more loses its instance.
    pub fn on_workers_changed(
        &mut self,
        workers: &WorkerSet,
        kind: (PolicyKind, &PolicyOptions),
        shard: usize,
    ) {
        let served = workers.models(WorkerRole::Regular);
        self.policies
            .retain(|model, _| served.binary_search(&model.as_str()).is_ok());
        for model in &served {
            self.policy(model, workers, kind, shard);
        }
        for (model, p) in self.policies.iter_mut() {
            p.on_workers_changed(&workers.view_serving(WorkerRole::Regular, &[], model));
        }
    }

    /// Runs `f` on the policy of every model `worker` serves: another shard's decision
    /// (cache_aware text, a sticky session, kv_aware's provisional copies).
    pub fn for_worker(
        &mut self,
        workers: &WorkerSet,
        worker: WorkerId,
        mut f: impl FnMut(&mut dyn Policy),
    ) {
        let Some(w) = workers.get(worker) else { return };
        for model in &w.spec.models {
            if let Some(p) = self.policies.get_mut(model) {
                f(p.as_mut());
            }
        }
    }

    /// Whether `model`'s policy routes the request by its session (kv_aware).
    pub fn routes_by_session(
        &self,
        model: &str,
        workers: &crate::state::PoolView<'_>,
        input: &crate::policy::RouteInput<'_>,
    ) -> bool {
        (self.policies.get(model)).is_some_and(|p| p.routes_by_session(workers, input))
    }

    /// A worker's KV blocks changed: every model it serves hears of it.
    pub fn kv_blocks(&mut self, workers: &WorkerSet, delta: &crate::kv_blocks::KvBlockDelta) {
        let Some(w) = workers.get(delta.worker) else {
            return;
        };
        for model in &w.spec.models {
            if let Some(p) = self.policies.get_mut(model) {
                p.kv_blocks(delta);
            }
        }
    }

    /// Whether this router sends all of its workers' requests, for every model.
    pub fn set_sole_sender(&mut self, sole: bool) {
        self.sole_sender = sole;
        for p in self.policies.values_mut() {
            p.set_sole_sender(sole);
        }
    }

    /// A worker left: every model forgets its blocks.
    pub fn forget_worker(&mut self, worker: WorkerId) {
        for p in self.policies.values_mut() {
            p.forget_worker(worker);
        }
    }

    /// kv_aware's decisions over every model.
    pub fn kv_lookups(&self) -> [u64; 4] {
        let mut sum = [0; 4];
        for p in self.policies.values() {
            for (a, b) in sum.iter_mut().zip(p.kv_lookups()) {
                *a += b;
            }
        }
        sum
    }

    /// The cached fractions of every model's kv_aware decisions, together.
    pub fn kv_matched(&self) -> RatioHistogram {
        let mut sum = RatioHistogram::default();
        for p in self.policies.values() {
            sum.merge(&p.kv_matched());
        }
        sum
    }

    /// `POST /finish_session` in every model's policy.
    pub fn finish_session(&mut self, session: &str) -> bool {
        let mut known = false;
        for p in self.policies.values_mut() {
            known |= p.finish_session(session);
        }
        known
    }
}
