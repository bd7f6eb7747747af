//! The request pipeline: from a parsed head to a worker's answer on the client socket.
//!
//! - `route`: which kind of endpoint a path is, and so which routing mode it takes;
//! - `pipeline`: the three routing modes (head only, JSON body, multi-leg);
//! - `retry`: more attempts on other workers, with backoff, before the answer starts;
//! - `forward`: one attempt with one worker;
//! - `relay`: the answer's body, from worker to client, event by event;
//! - `headers`: what is rewritten between the two sides;
//! - `wait`: racing a worker read against the client leaving and the deadline;
//! - `pd`: the prefill/decode flow (mode 3).

pub mod forward;
pub mod headers;
pub mod pd;
pub mod pipeline;
pub mod relay;
pub mod request_id;
pub mod retry;
pub mod route;
pub mod wait;
