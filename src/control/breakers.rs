//! The circuit breakers of record, one per worker. Shards report outcomes
//! (`Report::Outcome`); every change of a breaker's state or failure count goes back
//! to all shards as `Delta::Breaker` at once, so they agree within milliseconds.

use shards::breaker::{Breaker, BreakerConfig, BreakerState, Transition};
use shards::messages::{Delta, WorkerId};
use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

/// How often open breakers are checked for their move to half-open.
pub const BREAKER_TICK: std::time::Duration = std::time::Duration::from_millis(100);

#[derive(Default)]
pub struct Breakers {
    pub config: BreakerConfig,
    by_worker: HashMap<WorkerId, Breaker>,
    /// (worker, from, to) -> count, for `cb_state_transitions_total`.
    transitions: BTreeMap<(WorkerId, &'static str, &'static str), u64>,
}

impl Breakers {
    pub fn new(config: BreakerConfig) -> Self {
        Breakers {
            config,
            ..Breakers::default()
        }
    }

    /// Counts an outcome; returns the delta to broadcast when the breaker changed.
    pub fn record(&mut self, id: WorkerId, success: bool, now: Instant) -> Option<Delta> {
        if !self.config.enabled {
            return None;
        }
        let b = self.by_worker.entry(id).or_default();
        let before = (b.state, b.failures);
        let transition = b.record(success, &self.config, now);
        let after = (b.state, b.failures);
        if let Some(t) = transition {
            self.count(id, t);
        }
        (after != before).then_some(Delta::Breaker {
            id,
            state: after.0,
            failures: after.1,
        })
    }

    /// Moves breakers whose open time is over to half-open; returns the deltas.
    pub fn tick(&mut self, now: Instant) -> Vec<(WorkerId, Delta)> {
        let mut out = Vec::new();
        let mut moved = Vec::new();
        for (id, b) in &mut self.by_worker {
            if let Some(t) = b.tick(&self.config, now) {
                moved.push((*id, t));
                out.push((
                    *id,
                    Delta::Breaker {
                        id: *id,
                        state: b.state,
                        failures: b.failures,
                    },
                ));
            }
        }
        for (id, t) in moved {
            self.count(id, t);
        }
        out
    }

    fn count(&mut self, id: WorkerId, (from, to): Transition) {
        *self
            .transitions
            .entry((id, from.name(), to.name()))
            .or_default() += 1;
    }

    pub fn state(&self, id: WorkerId) -> BreakerState {
        self.by_worker
            .get(&id)
            .map_or(BreakerState::Closed, |b| b.state)
    }

    pub fn failures(&self, id: WorkerId) -> u32 {
        self.by_worker.get(&id).map_or(0, |b| b.failures)
    }

    pub fn transitions(
        &self,
    ) -> impl Iterator<Item = (&(WorkerId, &'static str, &'static str), &u64)> {
        self.transitions.iter()
    }

    pub fn forget(&mut self, id: WorkerId) {
        self.by_worker.remove(&id);
        self.transitions.retain(|(w, _, _), _| *w != id);
    }
}
