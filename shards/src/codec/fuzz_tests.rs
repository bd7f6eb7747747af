//! Deterministic fuzzing of the parsers with random and mutated inputs: whatever the
//! bytes, parsing returns a result and never panics. (Runs in `cargo test`; the
//! coverage-guided targets in `shards/fuzz/` explore further with cargo-fuzz.)

use super::chunked::ChunkedDecoder;
use super::request::RequestHead;
use super::response::ResponseHead;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

const SEEDS: &[&[u8]] = &[
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"a;x=1\r\n0123456789\r\n0\r\nT: 1\r\n\r\n",
];

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..(rng.next() % 8) {
        let at = (rng.next() as usize) % (v.len() + 1);
        match rng.next() % 4 {
            0 if at < v.len() => v[at] = rng.next() as u8,
            1 => v.insert(at, b"\r\n:; \t0f"[(rng.next() % 8) as usize]),
            2 if at < v.len() => {
                v.remove(at);
            }
            _ => v.truncate(at),
        }
    }
    v
}

#[test]
fn parsers_never_panic() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut req = RequestHead::default();
    let mut resp = ResponseHead::default();
    for i in 0..50_000 {
        let input = if i % 3 == 0 {
            (0..(rng.next() % 300)).map(|_| rng.next() as u8).collect()
        } else {
            mutate(&mut rng, SEEDS[i % SEEDS.len()])
        };
        let _ = req.parse(&input);
        let _ = resp.parse(&input, i % 2 == 0);
        let mut d = ChunkedDecoder::new();
        let mut total = 0;
        if let Ok(p) = d.decode(&input, |b| total += b.len()) {
            assert!(p.consumed <= input.len());
            assert!(total <= input.len());
        }
    }
}
