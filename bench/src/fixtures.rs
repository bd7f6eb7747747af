//! What the criterion benchmarks route over: a worker set made in memory.

use shards::messages::WorkerSpec;
use shards::WorkerSet;

/// `n` healthy regular workers with distinct URLs (ids 0..n).
pub fn workers(n: u32) -> WorkerSet {
    let mut s = WorkerSet::default();
    for id in 0..n {
        s.upsert(&WorkerSpec {
            id,
            url: format!("http://10.0.{}.{}:8000", id / 250, id % 250),
            addr: "127.0.0.1:8000".parse().unwrap(),
            authority: "10.0.0.1:8000".into(),
            dp_rank: None,
            healthy: true,
            role: Default::default(),
            pd_address: None,
            mooncake: None,
            models: Vec::new(),
        });
    }
    s
}
