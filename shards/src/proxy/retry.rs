//! Retries: another attempt on a worker chosen again, after an exponential backoff
//! with jitter, while nothing of the answer has reached the client.
//!
//! - Retried: 408, 429, 500, 502, 503, 504 answers, connect failures, and resets
//!   before the answer head (`forward::retryable_status`, `Failure::retryable`).
//! - Each retry asks the policy again with the workers that already failed taken out
//!   of the choice, unless no other worker could serve.
//! - Only a replayable body is retried: a buffered generation body, or a small body
//!   that arrived with its head. A body still streaming from the client when the
//!   request went out has only one attempt (docs/resilience.md).
//! - The pause and every attempt count against `--request-timeout-secs`; a client
//!   that leaves during the pause ends the request.

use super::forward::{forward, AttemptEnd, RequestBody, Verdict};
use super::wait::{watch_client, ClientWatch, Waited};
use crate::deadline::Deadline;
use crate::messages::{WorkerId, WorkerRole};
use crate::server::Client;
use crate::shard::Shard;
use smallvec::SmallVec;
use std::time::Duration;

/// `--retry-*` flags.
#[derive(Clone, Debug)]
pub struct RetryConfig {
    /// Attempts in all, the first included (`--retry-max-retries`); 1 disables retries.
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub multiplier: f64,
    /// The pause varies by up to this fraction either way, so clients that failed
    /// together do not retry together.
    pub jitter: f64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(30),
            multiplier: 1.5,
            jitter: 0.2,
        }
    }
}

impl RetryConfig {
    /// The pause before retry number `retry` (0 = the first retry), given a uniform
    /// sample `u` in [0, 1): `min(initial * multiplier^retry, max) * (1 +- jitter)`.
    pub fn backoff(&self, retry: u32, u: f64) -> Duration {
        let base = self.initial_backoff.as_secs_f64() * self.multiplier.powi(retry as i32);
        let capped = base.min(self.max_backoff.as_secs_f64());
        let factor = 1.0 + self.jitter * (2.0 * u - 1.0);
        Duration::from_secs_f64((capped * factor).max(0.0))
    }
}

/// Workers one request tried; more than four attempts spill to the heap.
pub type Tried = SmallVec<[WorkerId; 4]>;

/// Which request the attempts carry.
#[derive(Clone, Copy)]
pub enum Leg<'a> {
    /// An ordinary request to a worker of `role`'s pool.
    Single { role: WorkerRole },
    /// The decode leg of a P/D request: each attempt's request id names the prefill
    /// worker (`prefill`, host:port) and the decode worker it goes to; the first
    /// attempt keeps the id the prefill leg carried.
    Decode { prefill: &'a str },
}

impl Leg<'_> {
    fn role(&self) -> WorkerRole {
        match self {
            Leg::Single { role } => *role,
            Leg::Decode { .. } => WorkerRole::Decode,
        }
    }
}

/// Forwards the request to `first`, and retries as the rules above allow. Returns true
/// when the client connection may carry another request.
pub async fn forward_with_retries(
    shard: &Shard,
    c: &mut Client,
    first: WorkerId,
    body: RequestBody<'_>,
    json: Option<&serde_json::Value>,
    leg: Leg<'_>,
    deadline: &mut Deadline<'_>,
) -> bool {
    let cfg = &shard.config.retry;
    let role = leg.role();
    let attempts = if body.replayable() {
        cfg.max_attempts.max(1)
    } else {
        1
    };
    let route = crate::metrics::route_index(c.head.path());
    let mut worker = first;
    let mut failed = Tried::new();
    let mut answered_500 = Tried::new();
    let mut watch = ClientWatch::new();
    for attempt in 0..attempts {
        let last = attempt + 1 == attempts;
        if let Leg::Decode { prefill } = leg {
            if attempt > 0 {
                // Another decode worker: the id must name it (the first attempt's id is
                // the one the prefill leg already carried).
                set_pd_request_id(shard, c, prefill, worker);
            }
        }
        let result = forward(shard, c, worker, &body, deadline, !last).await;
        record_verdict(shard, worker, result.verdict, &mut answered_500);
        let (status, message) = match result.end {
            AttemptEnd::Answered { keep, failed } => {
                if failed && last && attempt > 0 {
                    shard.metrics.borrow_mut().retries_exhausted[route] += 1;
                }
                return keep;
            }
            AttemptEnd::Retry { status, message } => (status, message),
        };
        if last {
            return c.send_error(status, &message, false).await;
        }
        failed.push(worker);
        let next = pause_and_choose(shard, c, json, role, attempt, &failed, &mut watch, deadline);
        match next.await {
            Next::Worker(w) => worker = w,
            Next::ClientGone => return false,
            Next::TimedOut => return c.send_error(504, "the request timed out", false).await,
            // Nothing left to try: the client gets the last failure.
            Next::NoWorker => return c.send_error(status, &message, false).await,
        }
    }
    unreachable!("the last attempt always returns")
}

/// Counts one attempt's verdict for the breakers. A 500 is held in `answered_500`
/// until the request succeeds elsewhere: only then was it the worker's failure.
pub fn record_verdict(shard: &Shard, worker: WorkerId, verdict: Verdict, answered_500: &mut Tried) {
    match verdict {
        Verdict::Success => {
            shard.record_outcome(worker, true);
            // Another worker served what these answered 500 to: theirs was the
            // failure, not the request's.
            for w in answered_500.iter().filter(|w| **w != worker) {
                shard.record_outcome(*w, false);
            }
        }
        Verdict::Failure => shard.record_outcome(worker, false),
        Verdict::Status500 => answered_500.push(worker),
        Verdict::Neutral => {}
    }
}

/// What `pause_and_choose` came to.
pub enum Next {
    Worker(WorkerId),
    /// The client left during the pause.
    ClientGone,
    /// The request's own time ran out during the pause.
    TimedOut,
    /// No routable worker in the pool.
    NoWorker,
}

/// Between two attempts: count the retry, pause for the backoff of retry number
/// `attempt` (watching the client and the request's deadline), then ask `role`'s
/// policy again with the workers in `failed` taken out of the choice.
#[allow(clippy::too_many_arguments)]
pub async fn pause_and_choose(
    shard: &Shard,
    c: &mut Client,
    json: Option<&serde_json::Value>,
    role: WorkerRole,
    attempt: u32,
    failed: &[WorkerId],
    watch: &mut ClientWatch,
    deadline: &mut Deadline<'_>,
) -> Next {
    let route = crate::metrics::route_index(c.head.path());
    shard.metrics.borrow_mut().retries[route] += 1;
    let pause = shard
        .config
        .retry
        .backoff(attempt, shard.rng.borrow_mut().unit());
    // A phase (head or idle timeout) of the failed attempt must not cut the pause.
    deadline.end_phase();
    match watch_client(glommio::timer::sleep(pause), c, watch, deadline).await {
        Waited::Done(()) => {}
        Waited::ClientGone => {
            c.outcome.error = Some("client_gone");
            return Next::ClientGone;
        }
        Waited::Deadline => return Next::TimedOut,
    }
    {
        let mut workers = shard.workers.borrow_mut();
        workers.set_view(role);
        workers.exclude(failed);
    }
    let next = super::pipeline::pick(shard, c, json, role);
    shard.workers.borrow_mut().clear_excluded();
    next.map_or(Next::NoWorker, Next::Worker)
}

/// A P/D request's id names both of its workers (vLLM's connector reads them).
pub fn set_pd_request_id(shard: &Shard, c: &mut Client, prefill: &str, decode: WorkerId) {
    let workers = shard.workers.borrow();
    let decode = workers.get(decode).map_or("", |w| w.spec.pd_peer());
    let id = super::pd::pd_request_id(prefill, decode, &mut shard.rng.borrow_mut());
    c.request_id.clear();
    c.request_id.extend_from_slice(id.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let cfg = RetryConfig {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(300),
            multiplier: 2.0,
            jitter: 0.5,
            ..RetryConfig::default()
        };
        let mid = |r| cfg.backoff(r, 0.5).as_millis();
        assert_eq!((mid(0), mid(1), mid(2), mid(5)), (100, 200, 300, 300));
        assert_eq!(cfg.backoff(0, 0.0).as_millis(), 50);
        assert_eq!(cfg.backoff(0, 0.999_999).as_millis(), 149);
    }
}
