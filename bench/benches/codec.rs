//! The codec's hot paths (`cargo bench -p vllm-router-bench --bench codec`): parsing a
//! realistic request head, decoding a chunked SSE body, and scanning SSE events.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shards::codec::chunked::ChunkedDecoder;
use shards::codec::request::RequestHead;
use shards::codec::sse::SseScanner;
use std::hint::black_box;

const HEAD: &[u8] = b"POST /v1/chat/completions HTTP/1.1\r\nHost: router:30000\r\nUser-Agent: OpenAI/Python 1.51.0\r\nAccept: application/json\r\nContent-Type: application/json\r\nAuthorization: Bearer sk-0123456789abcdef\r\nX-Request-Id: 3f1e2d4c-5b6a-4798-8a9b-0c1d2e3f4a5b\r\nX-Stainless-Lang: python\r\nX-Stainless-Runtime: CPython\r\nContent-Length: 4096\r\nConnection: keep-alive\r\n\r\n";

/// 64 vLLM-shaped chat chunks, each in its own HTTP chunk, then the last chunk.
fn sse_body() -> (Vec<u8>, Vec<u8>) {
    let mut payload = Vec::new();
    let mut chunked = Vec::new();
    for i in 0..64 {
        let event = format!(
            "data: {{\"id\":\"chatcmpl-abc\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i} \"}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n"
        );
        payload.extend_from_slice(event.as_bytes());
        chunked.extend_from_slice(format!("{:x}\r\n", event.len()).as_bytes());
        chunked.extend_from_slice(event.as_bytes());
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    (payload, chunked)
}

fn bench_codec(c: &mut Criterion) {
    let mut head = RequestHead::default();
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Bytes(HEAD.len() as u64));
    g.bench_function("request head (11 headers)", |b| {
        b.iter(|| black_box(head.parse(black_box(HEAD)).is_ok()))
    });
    let (payload, chunked) = sse_body();
    g.throughput(Throughput::Bytes(chunked.len() as u64));
    g.bench_function("chunked SSE body (64 chunks)", |b| {
        b.iter(|| {
            let mut d = ChunkedDecoder::new();
            let mut n = 0usize;
            let p = d
                .decode(black_box(&chunked), |data| n += data.len())
                .unwrap();
            black_box((p.consumed, n))
        })
    });
    g.throughput(Throughput::Bytes(payload.len() as u64));
    g.bench_function("SSE event scan (64 events)", |b| {
        b.iter(|| {
            let mut s = SseScanner::default();
            black_box(s.feed(black_box(&payload)))
        })
    });
    g.finish();
}

criterion_group!(benches, bench_codec);
criterion_main!(benches);
