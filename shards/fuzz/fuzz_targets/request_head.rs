#![no_main]
use libfuzzer_sys::fuzz_target;
use shards::codec::request::RequestHead;
use shards::codec::response::ResponseHead;

fuzz_target!(|data: &[u8]| {
    let mut req = RequestHead::default();
    let _ = req.parse(data);
    let mut resp = ResponseHead::default();
    let _ = resp.parse(data, false);
});
