//! The data plane of vllm-router: one glommio executor per core, each with its own
//! listener, codec, upstream pools and policy state. Shards share nothing on the request
//! path; they learn about workers from deltas sent by the control core (see `link`).

pub mod admission;
pub mod breaker;
pub mod codec;
pub mod deadline;
pub mod errors;
pub mod io;
pub mod link;
pub mod log;
pub mod messages;
pub mod metrics;
pub mod policy;
pub mod pool;
pub mod proxy;
pub mod server;
pub mod shard;
pub mod state;

pub use shard::{spawn_shard, ShardConfig};
