//! Circuit breakers, one per worker.
//!
//! The control core holds the breaker of record ([`Breaker`]): it counts the outcomes
//! every shard reports and broadcasts each change as `Delta::Breaker`, so all shards
//! agree within a doorbell's latency. Each shard keeps a [`BreakerView`]: the last
//! state and failure count it was told, plus what it saw itself since. A shard that
//! sees the threshold crossed opens its view at once, without waiting for the control
//! core, which reaches the same count from the same reports a moment later.
//!
//! What counts (docs/resilience.md):
//! - failure: no answer (connect refused or timed out, reset, malformed head, no head
//!   within `--upstream-head-timeout-secs`), a 502/503/504 answer, or a body cut short
//!   (the worker died or went silent mid-stream);
//! - success: any other answer whose body arrived whole, 4xx included;
//! - a 500 counts as a failure only when the same request then succeeded on another
//!   worker. vLLM answers some bad requests (a prompt too long for the model, say) with
//!   500; if every worker says 500 the request is at fault, not the worker.
//!
//! Reports are rare: a shard reports every failure, and a success only when the count
//! it knows is not zero (or the breaker is half-open). Healthy traffic sends nothing.

use std::time::{Duration, Instant};

/// The three states of docs/resilience.md, with the `cb_state` gauge's values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

impl BreakerState {
    pub fn name(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// `--cb-*` flags.
#[derive(Clone, Debug)]
pub struct BreakerConfig {
    /// False with `--disable-circuit-breaker`: every worker always admits.
    pub enabled: bool,
    /// Consecutive failures that open the breaker.
    pub failure_threshold: u32,
    /// Consecutive half-open successes that close it.
    pub success_threshold: u32,
    /// Time spent open before probing.
    pub timeout: Duration,
    /// Consecutive failures further apart than this do not add up: a worker failing
    /// once an hour is not broken.
    pub window: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            enabled: true,
            failure_threshold: 10,
            success_threshold: 3,
            timeout: Duration::from_secs(60),
            window: Duration::from_secs(120),
        }
    }
}

/// Requests one shard may have in flight to a half-open worker. The whole router
/// probes with at most one per shard, so a worker still recovering gets a trickle,
/// not the traffic it was spared while open.
pub const HALF_OPEN_PROBES_PER_SHARD: u32 = 1;

/// The breaker of record for one worker (control core).
#[derive(Clone, Debug)]
pub struct Breaker {
    pub state: BreakerState,
    /// Consecutive failures (closed) counted within the window.
    pub failures: u32,
    /// Consecutive successes while half-open.
    pub successes: u32,
    last_failure: Option<Instant>,
    opened_at: Option<Instant>,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            state: BreakerState::Closed,
            failures: 0,
            successes: 0,
            last_failure: None,
            opened_at: None,
        }
    }
}

/// A state change, for `cb_state_transitions_total`.
pub type Transition = (BreakerState, BreakerState);

impl Breaker {
    /// Counts one outcome. Returns the transition it caused, if any.
    pub fn record(
        &mut self,
        success: bool,
        cfg: &BreakerConfig,
        now: Instant,
    ) -> Option<Transition> {
        let from = self.state;
        match (self.state, success) {
            (BreakerState::Closed, true) => self.failures = 0,
            (BreakerState::Closed, false) => {
                let stale = self
                    .last_failure
                    .is_some_and(|t| now.duration_since(t) > cfg.window);
                self.failures = if stale { 1 } else { self.failures + 1 };
                self.last_failure = Some(now);
                if self.failures >= cfg.failure_threshold {
                    self.open(now);
                }
            }
            (BreakerState::HalfOpen, true) => {
                self.successes += 1;
                if self.successes >= cfg.success_threshold {
                    self.state = BreakerState::Closed;
                    self.failures = 0;
                    self.successes = 0;
                }
            }
            (BreakerState::HalfOpen, false) => self.open(now),
            // Answers to requests sent before it opened: already accounted for.
            (BreakerState::Open, _) => {}
        }
        (self.state != from).then_some((from, self.state))
    }

    /// Open -> HalfOpen once the timeout has passed.
    pub fn tick(&mut self, cfg: &BreakerConfig, now: Instant) -> Option<Transition> {
        match (self.state, self.opened_at) {
            (BreakerState::Open, Some(at)) if now.duration_since(at) >= cfg.timeout => {
                self.state = BreakerState::HalfOpen;
                self.successes = 0;
                Some((BreakerState::Open, BreakerState::HalfOpen))
            }
            _ => None,
        }
    }

    fn open(&mut self, now: Instant) {
        self.state = BreakerState::Open;
        self.opened_at = Some(now);
        self.successes = 0;
    }
}

/// A shard's copy of one worker's breaker.
#[derive(Clone, Debug)]
pub struct BreakerView {
    pub state: BreakerState,
    /// Consecutive failures: the control core's last count plus this shard's since.
    pub failures: u32,
    /// This shard's requests in flight to the worker while half-open.
    pub probes: u32,
}

impl Default for BreakerView {
    fn default() -> Self {
        BreakerView {
            state: BreakerState::Closed,
            failures: 0,
            probes: 0,
        }
    }
}

impl BreakerView {
    /// May a new request go to the worker?
    pub fn admits(&self) -> bool {
        match self.state {
            BreakerState::Closed => true,
            BreakerState::Open => false,
            BreakerState::HalfOpen => self.probes < HALF_OPEN_PROBES_PER_SHARD,
        }
    }

    /// Counts one of this shard's outcomes. Returns whether the control core must hear
    /// of it; the view may open at once when the threshold is crossed here.
    pub fn record(&mut self, success: bool, threshold: u32) -> bool {
        match (self.state, success) {
            (BreakerState::Closed, true) => std::mem::take(&mut self.failures) > 0,
            (BreakerState::Closed, false) => {
                self.failures += 1;
                if self.failures >= threshold {
                    self.state = BreakerState::Open;
                }
                true
            }
            (BreakerState::HalfOpen, ok) => {
                if !ok {
                    self.state = BreakerState::Open;
                }
                true
            }
            (BreakerState::Open, _) => false,
        }
    }

    /// The control core's word replaces the local view (probes in flight stay counted).
    pub fn set(&mut self, state: BreakerState, failures: u32) {
        self.state = state;
        self.failures = failures;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            failure_threshold: 3,
            success_threshold: 2,
            timeout: Duration::from_secs(10),
            window: Duration::from_secs(60),
            ..BreakerConfig::default()
        }
    }

    #[test]
    fn full_cycle() {
        let (c, t0) = (cfg(), Instant::now());
        let mut b = Breaker::default();
        assert_eq!(b.record(false, &c, t0), None);
        assert_eq!(b.record(true, &c, t0), None, "a success resets the count");
        b.record(false, &c, t0);
        b.record(false, &c, t0);
        assert_eq!(
            b.record(false, &c, t0),
            Some((BreakerState::Closed, BreakerState::Open))
        );
        assert_eq!(b.tick(&c, t0 + Duration::from_secs(5)), None);
        assert_eq!(
            b.tick(&c, t0 + Duration::from_secs(10)),
            Some((BreakerState::Open, BreakerState::HalfOpen))
        );
        assert_eq!(b.record(true, &c, t0), None);
        assert_eq!(
            b.record(false, &c, t0),
            Some((BreakerState::HalfOpen, BreakerState::Open)),
            "any half-open failure reopens"
        );
        let t1 = t0 + Duration::from_secs(30);
        b.tick(&c, t1);
        b.record(true, &c, t1);
        assert_eq!(
            b.record(true, &c, t1),
            Some((BreakerState::HalfOpen, BreakerState::Closed))
        );
        assert_eq!(b.failures, 0);
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up() {
        let (c, t0) = (cfg(), Instant::now());
        let mut b = Breaker::default();
        b.record(false, &c, t0);
        b.record(false, &c, t0 + Duration::from_secs(30));
        b.record(false, &c, t0 + Duration::from_secs(100));
        assert_eq!((b.state, b.failures), (BreakerState::Closed, 1));
    }

    #[test]
    fn shard_view_opens_on_its_own_and_reports_sparingly() {
        let mut v = BreakerView::default();
        assert!(!v.record(true, 3), "healthy traffic reports nothing");
        v.set(BreakerState::Closed, 1); // another shard's failure
        assert!(v.record(false, 3));
        assert!(v.admits());
        assert!(v.record(false, 3));
        assert!(!v.admits(), "threshold crossed here: stop at once");
        v.set(BreakerState::HalfOpen, 0);
        assert!(v.admits());
        v.probes = 1;
        assert!(!v.admits(), "one probe per shard");
        v.probes = 0;
        assert!(v.record(true, 3), "half-open outcomes are all reported");
        v.set(BreakerState::Closed, 0);
        assert!(!v.record(true, 3));
    }
}
