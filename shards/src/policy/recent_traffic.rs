//! Each worker's share of the requests the router sent lately, decayed exponentially:
//! this shard's, and the other shards' as their provisional entries announce them.
//!
//! kv_aware prices a cold prompt (one no worker holds much of) by it. The prompt's
//! later conversations follow it to the worker it lands on, for minutes, so what the
//! price should weigh is the load each worker carries over that time. Requests in
//! flight, a few per worker, say mostly which conversations happen to be mid-turn this
//! millisecond.
//!
//! Counts are kept scaled by `2^((t - epoch) / HALF_LIFE)` at the time `t` of each
//! request, so that noting one costs one `exp2` and comparing workers none: every
//! worker's count decays by the same factor, which a share cancels.

use crate::state::PoolView;
use crate::worker::WorkerId;
use std::time::{Duration, Instant};

/// A request counts half after this long. Long enough to span many turns of the
/// conversations a prompt draws (a turn every few seconds), short enough that a worker
/// that joins, or one whose prompts went quiet, draws new prompts within a minute.
pub const HALF_LIFE: Duration = Duration::from_secs(20);

/// The scale is brought back to one after this long: the factor is 2^180 then, far
/// from overflowing an f64 (2^1023), and the rescale is one pass over the workers.
const REBASE_AFTER: Duration = Duration::from_secs(3600);

/// Per worker: requests routed there, decayed and scaled (see the module doc).
#[derive(Default)]
pub struct RecentTraffic {
    epoch: Option<Instant>,
    /// By worker id: ids are small integers handed out in sequence (as the shard's
    /// `WorkerSet` indexes them), and a cold prompt reads every worker's.
    per_worker: Vec<f64>,
    total: f64,
}

impl RecentTraffic {
    /// One more request went to `worker`.
    pub fn note(&mut self, worker: WorkerId, now: Instant) {
        let epoch = *self.epoch.get_or_insert(now);
        let mut age = now.saturating_duration_since(epoch);
        if age > REBASE_AFTER {
            let down = scale(age).recip();
            self.per_worker.iter_mut().for_each(|c| *c *= down);
            self.total *= down;
            self.epoch = Some(now);
            age = Duration::ZERO;
        }
        let weight = scale(age);
        let i = worker as usize;
        if self.per_worker.len() <= i {
            self.per_worker.resize(i + 1, 0.0);
        }
        self.per_worker[i] += weight;
        self.total += weight;
    }

    /// `worker`'s share of the recent requests (0 when there were none).
    pub fn share(&self, worker: WorkerId) -> f64 {
        match self.per_worker.get(worker as usize) {
            Some(c) if self.total > 0.0 => c / self.total,
            _ => 0.0,
        }
    }

    /// Forgets workers that left the pool.
    pub fn retain_workers(&mut self, workers: &PoolView<'_>) {
        for (id, c) in self.per_worker.iter_mut().enumerate() {
            if workers.get(id as WorkerId).is_none() {
                *c = 0.0;
            }
        }
        self.total = self.per_worker.iter().sum();
    }
}

/// `2^(age / HALF_LIFE)`.
fn scale(age: Duration) -> f64 {
    (age.as_secs_f64() / HALF_LIFE.as_secs_f64()).exp2()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_weighs_half_after_the_half_life() {
        let mut t = RecentTraffic::default();
        let t0 = Instant::now();
        t.note(1, t0);
        t.note(1, t0);
        t.note(2, t0);
        assert!((t.share(1) - 2.0 / 3.0).abs() < 1e-9);
        // A half-life later worker 1's two requests weigh 1, worker 2's old one 0.5
        // and its new one 1.
        t.note(2, t0 + HALF_LIFE);
        assert!((t.share(1) - 1.0 / 2.5).abs() < 1e-9, "{}", t.share(1));
        assert_eq!(t.share(3), 0.0);
    }

    #[test]
    fn shares_survive_a_rebase() {
        let mut t = RecentTraffic::default();
        let t0 = Instant::now();
        t.note(1, t0);
        let later = t0 + REBASE_AFTER + HALF_LIFE;
        t.note(2, later);
        // Worker 1's request is 181 half-lives old: next to nothing.
        assert!(t.share(2) > 0.999_999, "{}", t.share(2));
        t.note(1, later);
        assert!((t.share(1) - 0.5).abs() < 1e-6, "{}", t.share(1));
    }
}
