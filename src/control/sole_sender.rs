//! Whether this router sends all of its workers' traffic, from the workers' own
//! counters: over the last [`WINDOW_ROUNDS`] scrapes, the requests the workers took in
//! (`vllm:request_success_total` plus running and waiting) against the requests this
//! router sent them (its policy's decisions).
//!
//! cache_aware's prompt homes can follow the traffic only while nobody else places
//! requests on the same workers: two router replicas each count only what they sent,
//! and homes computed from different counts differ, which splits prompts over caches.
//! The router cannot tell it is alone from its own traffic (clients whose connections
//! stick to one replica of a Service never show the other), but the workers can: their
//! counters grow with every sender's requests. A counter, unlike the running and
//! waiting gauges, does not depend on the moment of the scrape.

use shards::messages::WorkerId;
use std::collections::{HashMap, VecDeque};

/// Scrape rounds (one a second) the evidence spans: long enough that the second of lag
/// in the shards' decision counts is a small part of it, short enough that a replica
/// that starts sending is noticed within seconds.
pub const WINDOW_ROUNDS: usize = 10;

/// Requests the workers must have taken in over the window before it says anything:
/// below that, a handful of direct calls (a health script, an operator's curl) would
/// swing the share.
pub const MIN_REQUESTS: f64 = 32.0;

/// A router becomes the sole sender when at most this share of the workers' requests
/// was not its own, and stops being one when more than [`LEAVE_SHARE`] was: the gap
/// keeps scrape noise from flipping the homes back and forth.
pub const ENTER_SHARE: f64 = 0.1;
pub const LEAVE_SHARE: f64 = 0.2;

/// The window of evidence and what it says.
#[derive(Default)]
pub struct SoleSender {
    /// Per worker: (requests it had taken in, requests this router had sent it) at its
    /// last scrape.
    last: HashMap<WorkerId, (f64, f64)>,
    /// This round's growth, summed over the workers scraped in it.
    round: (f64, f64),
    /// The last rounds' growth, newest last.
    rounds: VecDeque<(f64, f64)>,
    /// None until the window has held enough requests.
    state: Option<bool>,
}

impl SoleSender {
    /// A worker's scrape: `taken` is its finished, running and waiting requests; `sent`
    /// is what this router's policy sent it so far.
    pub fn note(&mut self, id: WorkerId, taken: f64, sent: f64) {
        if let Some((t, s)) = self.last.insert(id, (taken, sent)) {
            // A counter that went back is a restarted worker: no growth to compare.
            if taken >= t {
                self.round.0 += taken - t;
                self.round.1 += sent - s;
            }
        }
    }

    /// The worker's scrape failed, or it left: its next scrape starts afresh.
    pub fn forget(&mut self, id: WorkerId) {
        self.last.remove(&id);
    }

    /// Closes a scrape round; the new verdict when it changed.
    pub fn end_round(&mut self) -> Option<bool> {
        self.rounds.push_back(std::mem::take(&mut self.round));
        if self.rounds.len() > WINDOW_ROUNDS {
            self.rounds.pop_front();
        }
        let (taken, sent) = self
            .rounds
            .iter()
            .fold((0.0, 0.0), |a, r| (a.0 + r.0, a.1 + r.1));
        if taken < MIN_REQUESTS {
            return None;
        }
        let foreign = (taken - sent).max(0.0) / taken;
        let limit = if self.state == Some(true) {
            LEAVE_SHARE
        } else {
            ENTER_SHARE
        };
        let sole = foreign <= limit;
        (self.state != Some(sole)).then(|| {
            self.state = Some(sole);
            sole
        })
    }

    /// The verdict: None while the evidence is short.
    pub fn state(&self) -> Option<bool> {
        self.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both workers' counters so far: (taken in, sent by this router).
    type Totals = [(f64, f64); 2];

    /// `rounds` rounds in which two workers each take in `taken` requests, of which
    /// this router sent `sent`; the verdicts that changed.
    fn feed(
        s: &mut SoleSender,
        at: &mut Totals,
        rounds: usize,
        taken: f64,
        sent: f64,
    ) -> Vec<bool> {
        let mut changes = Vec::new();
        for _ in 0..rounds {
            for (id, t) in at.iter_mut().enumerate() {
                *t = (t.0 + taken, t.1 + sent);
                s.note(id as WorkerId, t.0, t.1);
            }
            changes.extend(s.end_round());
        }
        changes
    }

    #[test]
    fn a_router_sending_everything_is_the_sole_sender() {
        let mut s = SoleSender::default();
        let mut at = Totals::default();
        assert_eq!(feed(&mut s, &mut at, 12, 20.0, 20.0), vec![true]);
        assert_eq!(s.state(), Some(true));
    }

    #[test]
    fn a_second_replica_taking_half_the_traffic_is_seen() {
        let mut s = SoleSender::default();
        let mut at = Totals::default();
        assert_eq!(feed(&mut s, &mut at, 12, 20.0, 10.0), vec![false]);
        let mut s = SoleSender::default();
        feed(&mut s, &mut at, 12, 20.0, 20.0);
        // The other replica starts: noticed once its share of the window passes 20%.
        let changes = feed(&mut s, &mut at, WINDOW_ROUNDS, 20.0, 10.0);
        assert_eq!(changes, vec![false]);
    }

    #[test]
    fn a_few_direct_calls_say_nothing_and_a_little_noise_does_not_flip_the_verdict() {
        let mut s = SoleSender::default();
        let mut at = Totals::default();
        assert!(feed(&mut s, &mut at, 20, 1.0, 0.0).is_empty());
        assert_eq!(s.state(), None);
        feed(&mut s, &mut at, 12, 20.0, 20.0);
        // 15% of the traffic from elsewhere: between the two shares, the verdict stays.
        assert!(feed(&mut s, &mut at, 20, 20.0, 17.0).is_empty());
        assert_eq!(s.state(), Some(true));
    }

    #[test]
    fn a_restarted_worker_is_not_counted_as_traffic() {
        let mut s = SoleSender::default();
        let mut at = Totals::default();
        feed(&mut s, &mut at, 12, 20.0, 20.0);
        // Worker 0 restarts (its counter falls to zero) while this router sends on.
        s.note(0, 0.0, at[0].1 + 20.0);
        s.forget(1);
        assert_eq!(s.end_round(), None);
        assert_eq!(s.state(), Some(true));
    }
}
