//! Prompt tokens on the shard (`--tokenizer-path`): a chat of about 4,000 tokens with
//! the test tokenizer (byte-level BPE, ChatML), cold (nothing cached) and warm (the
//! conversation's earlier turns cached, a new question added)
//! (`cargo bench -p vllm-router-bench --bench tokenize`).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use serde_json::{json, Value};
use shards::chat_tokens::{ChatTokenizer, ShardTokenizer};
use std::hint::black_box;
use vllm_router_bench::mock::test_tokenizer;

/// Exchanges before the last question: about 4,000 tokens in all.
const TURNS: usize = 21;

/// A conversation of `turns` exchanges after a long system prompt.
fn chat(turns: usize, question: &str) -> Value {
    let system = "You are a helpful assistant for a support desk. Answer briefly and well. ";
    let mut messages = vec![json!({"role": "system", "content": system.repeat(40)})];
    for t in 0..turns {
        messages.push(json!({"role": "user", "content": format!("Question {t}: why does a prefix cache save time on the GPU? ").repeat(3)}));
        messages.push(json!({"role": "assistant", "content": format!("Answer {t}: the router sends each request to the worker that holds its prefix. ").repeat(3)}));
    }
    messages.push(json!({"role": "user", "content": question}));
    json!({"model": "m", "messages": messages})
}

fn bench_tokenize(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("vr-bench-tokenizer-{}", std::process::id()));
    test_tokenizer::write(&dir).unwrap();
    let model = ChatTokenizer::load(&dir).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let body = chat(TURNS, "And how large is it?");
    let (text, _) = model.prompt(&body).unwrap();
    let n = model.whole(&text, false).unwrap().len();
    eprintln!("the chat: {} bytes, {n} tokens", text.len());
    c.bench_function("tokenize/4k-token chat/cold", |b| {
        b.iter_batched(
            || ShardTokenizer::new(model.clone()),
            |mut t| black_box(t.tokens(&body)),
            BatchSize::SmallInput,
        )
    });
    let mut warm = ShardTokenizer::new(model.clone());
    warm.tokens(&body);
    // New questions, each asked once (a cached question would not be new).
    let questions: Vec<Value> = (0..20_000)
        .map(|i| chat(TURNS, &format!("And how large is it, {i}?")))
        .collect();
    let mut next = questions.iter().cycle();
    c.bench_function("tokenize/4k-token chat/warm, a new question", |b| {
        b.iter(|| black_box(warm.tokens(next.next().unwrap())))
    });
    // The same, with the body just made, as the router has it just parsed: the loop
    // above reads 20,000 bodies of 13 KB that left the CPU's caches long ago.
    let mut i = 20_000u64;
    c.bench_function(
        "tokenize/4k-token chat/warm, a new question, body just parsed",
        |b| {
            b.iter_batched_ref(
                || {
                    i += 1;
                    let mut b = body.clone();
                    b["messages"][2 * TURNS + 1]["content"] =
                        format!("And how large is it, {i}?").into();
                    b
                },
                |b| black_box(warm.tokens(b)),
                BatchSize::PerIteration,
            )
        },
    );
    c.bench_function("tokenize/render only", |b| {
        b.iter(|| black_box(model.prompt(&body)))
    });
}

criterion_group!(benches, bench_tokenize);
criterion_main!(benches);
