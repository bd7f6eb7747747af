#![no_main]
use libfuzzer_sys::fuzz_target;
use shards::codec::chunked::ChunkedDecoder;

fuzz_target!(|data: &[u8]| {
    // Feed in two pieces: the decoder must agree with itself across a split.
    let split = data.first().map_or(0, |b| *b as usize % (data.len() + 1));
    let (mut whole, mut parts) = (Vec::new(), Vec::new());
    let a = ChunkedDecoder::new().decode(data, |b| whole.extend_from_slice(b));
    let mut d = ChunkedDecoder::new();
    let b = d
        .decode(&data[..split], |b| parts.extend_from_slice(b))
        .and_then(|p| {
            if p.done {
                Ok(p)
            } else {
                d.decode(&data[split..], |b| parts.extend_from_slice(b))
            }
        });
    if let (Ok(x), Ok(y)) = (a, b) {
        if x.done && y.done {
            assert_eq!(whole, parts);
        }
    }
});
