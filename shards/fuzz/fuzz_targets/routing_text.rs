#![no_main]
use libfuzzer_sys::fuzz_target;
use shards::policy::text::{request_text, BodyFields};

fuzz_target!(|data: &[u8]| {
    // Whatever JSON a client sends, extracting the routing text returns.
    if let Ok(body) = serde_json::from_slice::<serde_json::Value>(data) {
        let mut text = String::new();
        request_text(&BodyFields::of(&body), &mut text);
    }
});
