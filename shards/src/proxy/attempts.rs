//! The one attempt driver: attempts on workers chosen again, after an exponential
//! backoff with jitter, while nothing of the answer has reached the client. The
//! regular path and both P/D legs run through it; what one attempt is belongs to the
//! leg (`Leg`).
//!
//! - Retried: 408, 429, 500, 502, 503, 504 answers, connect failures, and resets
//!   before the answer head (`failure::retryable_status`, `Failure::retryable`).
//! - Each retry asks the policy again with the workers that already failed taken out
//!   of the choice, unless no other worker could serve.
//! - Only a replayable body is retried (the leg says how many attempts it allows).
//! - The pause and every attempt count against `--request-timeout-secs`; a client
//!   that leaves during the pause ends the request.

use super::choose::pick;
use super::failure::Verdict;
use super::wait::{watch_client, ClientWatch, Waited};
use crate::client::Client;
use crate::deadline::Deadline;
use crate::metrics::route_index;
use crate::shard::Shard;
use crate::worker::{WorkerId, WorkerRole};
use smallvec::SmallVec;

/// Workers one request tried; more than four attempts spill to the heap.
pub type Tried = SmallVec<[WorkerId; 4]>;

/// How one attempt ended.
pub enum Step<T> {
    /// The leg is over with this result. `failed`: it ended in a failure the retries
    /// were meant for (counted as retries exhausted when it was the last of several).
    Done { value: T, failed: bool },
    /// Nothing reached the client and another worker may do better: the status and
    /// message are what the client gets if no retry follows.
    Retry { status: u16, message: String },
}

/// One attempt's result.
pub struct Attempt<T> {
    pub step: Step<T>,
    pub verdict: Verdict,
}

/// One kind of leg: what a single attempt on a chosen worker does.
pub trait Leg {
    type Output;

    /// The pool the leg's workers come from.
    fn role(&self) -> WorkerRole;

    /// Attempts in all, the first included.
    fn attempts(&self, shard: &Shard) -> u32;

    /// Attempt number `n` (0 = the first) on `worker`; `last` says no retry follows.
    async fn attempt(
        &mut self,
        shard: &Shard,
        c: &mut Client,
        worker: WorkerId,
        n: u32,
        last: bool,
        deadline: &mut Deadline<'_>,
    ) -> Attempt<Self::Output>;
}

/// How the driver ended when the leg did not.
pub enum Driven<T> {
    Done(T),
    /// Every attempt failed: the last one's answer.
    Exhausted {
        status: u16,
        message: String,
    },
    /// A retry found no other worker to go to: the last failure.
    NoWorker {
        status: u16,
        message: String,
    },
    /// The client left during a pause.
    ClientGone,
    /// The request's own time ran out during a pause.
    TimedOut,
}

/// Runs `leg` on `first`, then on workers chosen again, as the rules above allow.
pub async fn drive<L: Leg>(
    shard: &Shard,
    c: &mut Client,
    leg: &mut L,
    first: WorkerId,
    json: Option<&serde_json::Value>,
    deadline: &mut Deadline<'_>,
) -> Driven<L::Output> {
    let attempts = leg.attempts(shard).max(1);
    let route = route_index(c.head.path());
    let mut worker = first;
    let mut failed = Tried::new();
    let mut answered_500 = Tried::new();
    let mut watch = ClientWatch::new();
    for n in 0..attempts {
        let last = n + 1 == attempts;
        let attempt = leg.attempt(shard, c, worker, n, last, deadline).await;
        record_verdict(shard, worker, attempt.verdict, &mut answered_500);
        let (status, message) = match attempt.step {
            Step::Done { value, failed } => {
                if failed && last && n > 0 {
                    shard.metrics.borrow_mut().retries_exhausted[route] += 1;
                }
                return Driven::Done(value);
            }
            Step::Retry { status, message } => (status, message),
        };
        if last {
            if n > 0 {
                shard.metrics.borrow_mut().retries_exhausted[route] += 1;
            }
            return Driven::Exhausted { status, message };
        }
        failed.push(worker);
        shard.metrics.borrow_mut().retries[route] += 1;
        let pause = shard.config.retry.backoff(n, shard.rng.borrow_mut().unit());
        // A phase (head or idle timeout) of the failed attempt must not cut the pause.
        deadline.end_phase();
        match watch_client(glommio::timer::sleep(pause), c, &mut watch, deadline).await {
            Waited::Done(()) => {}
            Waited::ClientGone => {
                c.outcome.error = Some("client_gone");
                return Driven::ClientGone;
            }
            Waited::Deadline => return Driven::TimedOut,
        }
        match pick(shard, c, json, leg.role(), &failed) {
            Some(w) => worker = w,
            None => return Driven::NoWorker { status, message },
        }
    }
    unreachable!("the last attempt always returns")
}

/// Counts one attempt's verdict for the breakers. A 500 is held in `answered_500`
/// until the request succeeds elsewhere: only then was it the worker's failure.
fn record_verdict(shard: &Shard, worker: WorkerId, verdict: Verdict, answered_500: &mut Tried) {
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
