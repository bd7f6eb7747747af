//! The request pipeline: from a parsed head to a worker's answer on the client socket.
//!
//! - `route`: which kind of endpoint a path is, and so which routing mode it takes;
//! - `pipeline`: the three routing modes (head only, JSON body, multi-leg);
//! - `choose`: asking a pool's policy for a worker;
//! - `attempts`: the one attempt driver: more attempts on other workers, with backoff,
//!   before the answer starts, for every leg;
//! - `exchange`: one exchange with one worker, up to the answer head;
//! - `failure`: what went wrong, for the client and for the breaker;
//! - `forward`: the relayed leg (an attempt whose answer goes to the client);
//! - `buffered`: an exchange whose answer is read whole (the P/D prefill leg);
//! - `relay`: the answer's body, from worker to client, event by event;
//! - `headers`: what is rewritten between the two sides;
//! - `request_id`: the id a request carries, P/D ids included;
//! - `wait`: racing a worker read against the client leaving and the deadline;
//! - `pd`: the prefill/decode flow (mode 3).

mod attempts;
mod buffered;
mod choose;
mod exchange;
mod failure;
mod forward;
mod headers;
mod mooncake;
mod pd;
pub mod pipeline;
mod relay;
mod request_id;
mod route;
mod tokenize;
mod wait;

pub use request_id::DEFAULT_REQUEST_ID_HEADERS;
pub use route::is_wrong_method;
