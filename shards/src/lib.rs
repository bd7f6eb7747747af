//! The data plane of vllm-router: one glommio executor per core, each with its own
//! listener, codec, upstream pools and policy state. Shards share nothing on the request
//! path; they learn about workers from deltas sent by the control core (see `link`).
//!
//! The front door: a `ShardConfig` and `spawn_shard` start a shard; `link` and
//! `messages` are all the control core and a shard say to each other. The codec, the
//! policies, the breaker and the metrics types are public because the control core,
//! the mock worker, the benchmarks and the fuzzers use them too; everything on the
//! request path stays inside.

pub mod breaker;
pub mod chat_tokens;
pub mod codec;
pub mod kv_blocks;
pub mod link;
pub mod log;
pub mod messages;
pub mod metrics;
pub mod policy;

mod admin_waiters;
mod admission;
mod body_budget;
mod client;
mod config;
mod cors;
mod deadline;
mod dormant;
mod errors;
mod io;
mod listen;
mod model_pools;
mod pool;
mod prehashed;
mod proxy;
mod rate_limit;
mod recycled;
mod request_body;
mod run;
mod server;
mod shard;
mod state;
mod token_cache;
mod worker;

pub use config::{AccessKeys, CorsConfig, KvConnector, PdConfig, RetryConfig, ShardConfig};
pub use errors::error_type;
pub use io::ReadBuf;
pub use listen::{reserve_port, Reserved};
pub use proxy::DEFAULT_REQUEST_ID_HEADERS;
pub use run::{spawn_shard, SHARD_IO_MEMORY};
pub use state::WorkerSet;
