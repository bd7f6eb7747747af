//! KV-event ingestion on the control core, without its sockets
//! (`cargo bench -p vllm-router-bench --bench kv_ingest`): msgpack payloads as the mock
//! worker publishes them (vLLM's encoding) decoded, applied to the source's block
//! table, and the resulting delta applied to one shard's kv_aware index, as every shard
//! does. Throughput is in block events (one stored or removed block each).
//!
//! The stream is a steady state: each batch stores 16 requests' prefills of 8 blocks
//! (16 tokens each) and removes what was stored 64 batches before, and the last batches
//! drain it, so every iteration starts and ends with an empty index.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shards::kv_blocks::KvBlockDelta;
use shards::messages::WorkerRole;
use shards::policy::{PolicyKind, PolicyOptions};
use std::hint::black_box;
use vllm_router::kv_ingest::{decode_batch, BlockChanges, SourceBlocks};
use vllm_router_bench::fixtures::workers;
use vllm_router_bench::mock::kv_cache::CacheEvent;
use vllm_router_bench::mock::kv_publisher::{encode_batch, PublisherConfig};

const BLOCK: usize = 16;
const BLOCKS_PER_REQUEST: usize = 8;
const REQUESTS_PER_BATCH: usize = 16;
const BATCHES: usize = 256;
/// How many batches a block lives before the engine evicts it.
const LIFETIME: usize = 64;

/// Payloads in `encoding` ("positional": vLLM's arrays; "map": tagged maps), and the
/// number of block events they carry.
fn stream(positional: bool) -> (Vec<bytes::Bytes>, u64) {
    let cfg = PublisherConfig {
        host: String::new(),
        port: 0,
        replay_port: None,
        block_size: BLOCK,
        positional_events: positional,
        positional_batch: positional,
        skip_every: 0,
    };
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut chains: Vec<Vec<u64>> = Vec::new();
    let (mut payloads, mut blocks) = (Vec::new(), 0);
    for b in 0..BATCHES + LIFETIME {
        let mut events = Vec::new();
        if b < BATCHES {
            for _ in 0..REQUESTS_PER_BATCH {
                let hashes: Vec<u64> = (0..BLOCKS_PER_REQUEST).map(|_| next()).collect();
                let tokens = (0..BLOCK * BLOCKS_PER_REQUEST)
                    .map(|_| (next() % 150_000) as u32)
                    .collect();
                blocks += hashes.len() as u64;
                chains.push(hashes.clone());
                events.push(CacheEvent::Stored {
                    hashes,
                    parent: None,
                    tokens,
                    salt: None,
                    adapter: None,
                });
            }
        }
        if b >= LIFETIME {
            let old = (b - LIFETIME) * REQUESTS_PER_BATCH;
            let hashes: Vec<u64> = chains[old..old + REQUESTS_PER_BATCH].concat();
            blocks += hashes.len() as u64;
            events.push(CacheEvent::Removed { hashes });
        }
        payloads.push(encode_batch(&events, &cfg));
    }
    (payloads, blocks)
}

fn bench_ingest(c: &mut Criterion) {
    let set = workers(1);
    let mut group = c.benchmark_group("kv_ingest");
    for (name, positional) in [("vllm arrays", true), ("tagged maps", false)] {
        let (payloads, blocks) = stream(positional);
        group.throughput(Throughput::Elements(blocks));
        let mut shard =
            PolicyKind::KvAware.build(1, &PolicyOptions::default(), WorkerRole::Regular);
        shard.on_workers_changed(&set.view(WorkerRole::Regular, &[]));
        let mut source = SourceBlocks::new(BLOCK as u32);
        group.bench_function(format!("decode+table+shard index/{name}"), |b| {
            b.iter(|| {
                for p in &payloads {
                    let batch = decode_batch(p).expect("a batch");
                    let mut changes = BlockChanges::default();
                    for e in &batch.events {
                        source.apply(e, &mut changes);
                    }
                    shard.kv_blocks(&KvBlockDelta {
                        worker: 0,
                        block_size: BLOCK as u32,
                        changes,
                    });
                }
                assert!(source.is_empty(), "the stream drains the table");
                black_box(&source);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_ingest);
criterion_main!(benches);
