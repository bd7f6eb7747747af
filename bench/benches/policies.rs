//! Routing decision time per policy: 64 workers, a 4 KiB chat prompt
//! (`cargo bench -p vllm-router-bench --bench policies`). cache_aware includes
//! extracting the text, matching it in the tree and inserting it; kv_aware naming a
//! 4k-token prompt's blocks and looking them up.

use criterion::{criterion_group, criterion_main, Criterion};
use shards::codec::request::RequestHead;
use shards::messages::WorkerRole;
use shards::policy::{PolicyKind, PolicyOptions, RouteInput};
use std::hint::black_box;
use vllm_router_bench::fixtures::workers;

fn bench_policies(c: &mut Criterion) {
    let set = workers(64);
    let mut head = RequestHead::default();
    head.parse(b"POST /v1/chat/completions HTTP/1.1\r\nhost: r\r\nx-session-id: s-42\r\n\r\n")
        .unwrap();
    // 64 conversations over 8 shared system prompts, ~4 KiB each.
    let bodies: Vec<serde_json::Value> = (0..64)
        .map(|i| {
            let system = format!("You are assistant {} for a support desk. ", i % 8).repeat(80);
            serde_json::json!({"model": "m", "messages": [
                {"role": "system", "content": &system[..3000]},
                {"role": "user", "content": format!("conversation {i}: ").repeat(50)},
            ]})
        })
        .collect();
    // cache_aware twice: homes by the prompts alone, and following the traffic (the
    // router is its workers' sole sender), which counts every request of a shared prompt.
    for (kind, sole) in [
        (PolicyKind::RoundRobin, false),
        (PolicyKind::Random, false),
        (PolicyKind::PowerOfTwo, false),
        (PolicyKind::ConsistentHash, false),
        (PolicyKind::CacheAware, false),
        (PolicyKind::CacheAware, true),
    ] {
        let mut policy = kind.build(1, &PolicyOptions::default(), WorkerRole::Regular);
        policy.on_workers_changed(&set.view(WorkerRole::Regular, &[]));
        policy.set_sole_sender(sole);
        let mut i = 0;
        let mode = if sole { ", sole sender" } else { "" };
        c.bench_function(
            &format!("{}/64 workers/4 KiB prompt{mode}", kind.name()),
            |b| {
                b.iter(|| {
                    i = (i + 1) % bodies.len();
                    let input = RouteInput {
                        head: &head,
                        json: Some(&bodies[i]),
                        tokens: None,
                    };
                    let picked = policy.pick(&set.view(WorkerRole::Regular, &[]), &input);
                    black_box(policy.take_insert());
                    black_box(picked)
                })
            },
        );
    }
}

/// consistent_hash when no header names a session: the key is the conversation text.
fn bench_consistent_hash_text_key(c: &mut Criterion) {
    let set = workers(64);
    let mut head = RequestHead::default();
    head.parse(b"POST /v1/chat/completions HTTP/1.1\r\nhost: r\r\n\r\n")
        .unwrap();
    let body = serde_json::json!({"model": "m", "messages": [
        {"role": "system", "content": "You are a support assistant. ".repeat(100)},
        {"role": "user", "content": "why? ".repeat(200)},
    ]});
    let mut policy =
        PolicyKind::ConsistentHash.build(1, &PolicyOptions::default(), WorkerRole::Regular);
    policy.on_workers_changed(&set.view(WorkerRole::Regular, &[]));
    c.bench_function("consistent_hash/64 workers/4 KiB prompt, text key", |b| {
        b.iter(|| {
            black_box(policy.pick(
                &set.view(WorkerRole::Regular, &[]),
                &RouteInput {
                    head: &head,
                    json: Some(&body),
                    tokens: None,
                },
            ))
        })
    });
}

/// kv_aware: a 4,096-token prompt (256 blocks of 16) over 64 workers, each holding the
/// first blocks of it to another depth (1 to 64 blocks; with `whole`, the last one all
/// 256), the index holding 16,384 other blocks. The time covers naming the blocks, the
/// index lookup and the cost per worker. Provisional copies are off, so that every
/// iteration sees the same index.
fn bench_kv_aware(c: &mut Criterion) {
    use shards::kv_blocks::{block_hashes, BlockChanges, KvBlockDelta, Medium};
    let set = workers(64);
    let head = RequestHead::default();
    let tokens: Vec<u32> = (0..4096).map(|t| (t * 7919) % 50_000).collect();
    let mut names = Vec::new();
    block_hashes(&tokens, 16, &mut names);
    for whole in [false, true] {
        let mut options = PolicyOptions::default();
        options.kv_aware.provisional_ttl = None;
        let mut policy = PolicyKind::KvAware.build(1, &options, WorkerRole::Regular);
        policy.on_workers_changed(&set.view(WorkerRole::Regular, &[]));
        for w in 0..64u32 {
            let depth = if whole && w == 63 {
                256
            } else {
                w as usize + 1
            };
            let mut stored: Vec<(u64, Medium)> = names[..depth]
                .iter()
                .map(|n| (*n, Medium::Device))
                .collect();
            stored.extend((0..256u64).map(|k| ((u64::from(w) << 32) | k, Medium::Device)));
            policy.kv_blocks(&KvBlockDelta {
                worker: w,
                block_size: 16,
                changes: BlockChanges {
                    stored,
                    ..Default::default()
                },
            });
        }
        let name = if whole {
            "kv_aware/64 workers/4k-token prompt, one worker holding all of it"
        } else {
            "kv_aware/64 workers/4k-token prompt"
        };
        c.bench_function(name, |b| {
            b.iter(|| {
                let input = RouteInput {
                    head: &head,
                    json: None,
                    tokens: Some(&tokens),
                };
                black_box(policy.pick(&set.view(WorkerRole::Regular, &[]), &input))
            })
        });
    }
}

criterion_group!(
    benches,
    bench_policies,
    bench_consistent_hash_text_key,
    bench_kv_aware
);
criterion_main!(benches);
