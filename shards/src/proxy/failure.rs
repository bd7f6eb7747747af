//! What can go wrong in one exchange with a worker, and what it means: for the client
//! (a status and a message) and for the worker's circuit breaker (a `Verdict`).

use std::io;
use std::time::Duration;

/// Why no answer head came back.
pub enum Failure {
    /// The worker left the set between the policy's choice and the exchange.
    Removed,
    Refused(io::Error),
    ConnectTimeout,
    Reset,
    BadResponse(&'static str),
    /// No answer head within `--upstream-head-timeout-secs`.
    HeadTimeout,
    /// The request's own time (`--request-timeout-secs`) ran out.
    Deadline,
    ClientGone,
    /// The client's streamed chunked body was malformed.
    BadRequestBody(&'static str),
}

impl Failure {
    /// What the failure says about the worker.
    pub fn verdict(&self) -> Verdict {
        match self {
            Failure::Refused(_)
            | Failure::ConnectTimeout
            | Failure::Reset
            | Failure::BadResponse(_)
            | Failure::HeadTimeout => Verdict::Failure,
            Failure::Removed
            | Failure::Deadline
            | Failure::ClientGone
            | Failure::BadRequestBody(_) => Verdict::Neutral,
        }
    }

    /// Another worker might answer where this one did not.
    pub fn retryable(&self) -> bool {
        matches!(self, Failure::Removed) || self.verdict() == Verdict::Failure
    }

    /// The status and message the client gets (None: the client left, nobody to tell).
    /// `url` names the worker; `head_timeout` is the one it missed, if it did.
    pub fn answer(&self, url: &str, head_timeout: Duration) -> Option<(u16, String)> {
        Some(match self {
            Failure::Removed => (503, "worker was removed".to_string()),
            Failure::Refused(e) => (502, format!("worker {url} unreachable: {e}")),
            Failure::ConnectTimeout => (504, format!("timed out connecting to worker {url}")),
            Failure::Reset => (
                502,
                format!("worker {url} closed the connection before answering"),
            ),
            Failure::BadResponse(m) => (502, format!("{m} ({url})")),
            Failure::HeadTimeout => (
                504,
                format!(
                    "worker {url} did not answer within {}s",
                    head_timeout.as_secs()
                ),
            ),
            Failure::Deadline => (504, "request timed out waiting for the worker".to_string()),
            Failure::BadRequestBody(m) => (400, m.to_string()),
            Failure::ClientGone => return None,
        })
    }
}

/// What an attempt says about the worker, for its circuit breaker (see `breaker`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Success,
    Failure,
    /// Not the worker's doing (the client left, the request's own time ran out).
    Neutral,
    /// A 500: the worker's fault only if another worker then serves the request.
    Status500,
}

/// Statuses another worker may answer differently (docs/resilience.md).
pub fn retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
}

/// 4xx answers are not the worker's failure; 408 and 429 (it is busy) are not proof
/// of health either.
pub fn status_verdict(status: u16) -> Verdict {
    match status {
        500 => Verdict::Status500,
        502..=504 => Verdict::Failure,
        408 | 429 => Verdict::Neutral,
        _ => Verdict::Success,
    }
}
