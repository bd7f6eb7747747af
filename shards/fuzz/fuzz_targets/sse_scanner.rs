#![no_main]
use libfuzzer_sys::fuzz_target;
use shards::codec::sse::SseScanner;

fuzz_target!(|data: &[u8]| {
    // Events must be counted the same however the stream is cut into reads.
    let split = data.first().map_or(0, |b| *b as usize % (data.len() + 1));
    let mut whole = SseScanner::default();
    let a = whole.feed(data);
    let mut parts = SseScanner::default();
    let b = parts.feed(&data[..split]) + parts.feed(&data[split..]);
    assert_eq!(a, b);
    assert_eq!(whole.at_boundary(), parts.at_boundary());
});
