//! What names a worker everywhere: the id the control core hands out, the resolved
//! address a shard connects to, and the pool it serves. Shared by the messages, the
//! shard's state and its metrics, so none of them has to import another for it.

use std::net::SocketAddr;

/// Stable id the control core gives a worker; shards key pools and loads by it.
pub type WorkerId = u32;

/// A worker as a shard needs it: already resolved, so a shard never looks up a name.
#[derive(Clone, Debug)]
pub struct WorkerSpec {
    pub id: WorkerId,
    /// The URL users know it by, with `@rank` for data-parallel ranks.
    pub url: String,
    pub addr: SocketAddr,
    /// `host:port` for the Host header upstream.
    pub authority: String,
    /// Data-parallel rank sent as `X-data-parallel-rank`, if any.
    pub dp_rank: Option<u32>,
    pub healthy: bool,
    /// Which pool it serves: regular, or a prefill or decode worker (P/D).
    pub role: WorkerRole,
    /// The address P/D request ids name this worker by, when it is not `authority`:
    /// the ZMQ address a vLLM NCCL instance announced in its heartbeats.
    pub pd_address: Option<String>,
    /// A prefill worker's Mooncake bootstrap server and engine ids, once the control
    /// core has asked it (`--kv-connector mooncake`).
    pub mooncake: Option<MooncakeBootstrap>,
    /// The models it serves, from its `/v1/models` (`--enable-igw`; empty: not asked).
    pub models: Vec<String>,
}

/// What a Mooncake decode leg names its prefill worker by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MooncakeBootstrap {
    /// `http://host:port` of the prefill worker's bootstrap server.
    pub addr: String,
    /// Engine id per data-parallel rank, as its `/query` listed them.
    pub engines: Vec<(u32, String)>,
}

impl MooncakeBootstrap {
    /// The engine of `rank`, else rank 0's, else any.
    pub fn engine(&self, rank: Option<u32>) -> Option<&str> {
        let of = |r: u32| self.engines.iter().find(|(k, _)| *k == r);
        rank.and_then(of)
            .or_else(|| of(0))
            .or(self.engines.first())
            .map(|(_, e)| e.as_str())
    }
}

impl WorkerSpec {
    /// How P/D request ids name this worker.
    pub fn pd_peer(&self) -> &str {
        self.pd_address.as_deref().unwrap_or(&self.authority)
    }
}

/// A worker's pool. Each has its own policy instance; P/D requests take one worker
/// from each of the prefill and decode pools.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum WorkerRole {
    #[default]
    Regular = 0,
    Prefill = 1,
    Decode = 2,
}

impl WorkerRole {
    pub const ALL: [WorkerRole; 3] = [WorkerRole::Regular, WorkerRole::Prefill, WorkerRole::Decode];

    pub fn name(self) -> &'static str {
        match self {
            WorkerRole::Regular => "regular",
            WorkerRole::Prefill => "prefill",
            WorkerRole::Decode => "decode",
        }
    }
}

/// What is in flight to one worker: requests, and the prompt tokens of those still
/// waiting for their first answer byte that the worker must prefill (kv_aware's `A`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerInFlight {
    pub worker: WorkerId,
    pub requests: u32,
    pub prefill_tokens: u32,
}
