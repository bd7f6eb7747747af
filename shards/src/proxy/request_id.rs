//! Request ids (docs/cli.md, `--request-id-headers`): the first configured header the client sent, else a
//! generated id shaped like OpenAI's (`chatcmpl-`, `cmpl-` or `req-` plus 24
//! alphanumerics). Sent to the worker as `x-request-id` and echoed to the client.

use crate::client::Client;
use crate::codec::request::RequestHead;
use crate::policy::Random;
use crate::shard::Shard;
use crate::worker::WorkerId;

/// The headers looked at when `--request-id-headers` is not given.
pub const DEFAULT_REQUEST_ID_HEADERS: &[&str] = &[
    "x-request-id",
    "x-correlation-id",
    "x-trace-id",
    "request-id",
];

/// Longest client-supplied id that is passed on; longer ones are replaced, so a client
/// cannot make the router copy an 8 KiB header into every log line and answer.
const MAX_CLIENT_ID_BYTES: usize = 256;

const ALPHANUMERIC: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// Writes the request's id into `out` (cleared first).
pub fn request_id(out: &mut Vec<u8>, head: &RequestHead, headers: &[String], rng: &mut Random) {
    out.clear();
    for name in headers {
        if let Some(v) = head.header(name.as_bytes()) {
            let v = crate::codec::trim(v);
            if !v.is_empty() && v.len() <= MAX_CLIENT_ID_BYTES {
                out.extend_from_slice(v);
                return;
            }
        }
    }
    let prefix: &[u8] = match head.path() {
        b"/v1/chat/completions" => b"chatcmpl-",
        b"/v1/completions" => b"cmpl-",
        _ => b"req-",
    };
    out.extend_from_slice(prefix);
    let mut bits = rng.next_u64();
    for i in 0..24 {
        if i == 10 || i == 20 {
            bits = rng.next_u64(); // 6 bits a character, 10 per draw
        }
        out.push(ALPHANUMERIC[(bits % 62) as usize]);
        bits /= 62;
    }
}

/// A P/D request's id names both of its workers (vLLM's connector reads them).
pub fn set_pd_request_id(shard: &Shard, c: &mut Client, prefill: &str, decode: WorkerId) {
    let workers = shard.workers.borrow();
    let decode = workers.get(decode).map_or("", |w| w.spec.pd_peer());
    let id = pd_request_id(prefill, decode, &mut shard.rng.borrow_mut());
    c.request_id.clear();
    c.request_id.extend_from_slice(id.as_bytes());
}

/// `___prefill_addr_{P}___decode_addr_{D}_{32 hex}`: vLLM's NIXL connector reads the
/// peers' addresses from the request id.
pub fn pd_request_id(prefill: &str, decode: &str, rng: &mut Random) -> String {
    format!(
        "___prefill_addr_{prefill}___decode_addr_{decode}_{:016x}{:016x}",
        rng.next_u64(),
        rng.next_u64()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Status;

    fn head(raw: &[u8]) -> RequestHead {
        let mut h = RequestHead::default();
        assert!(matches!(h.parse(raw), Ok(Status::Complete(_))));
        h
    }

    #[test]
    fn first_configured_header_wins() {
        let h = head(
            b"POST /v1/completions HTTP/1.1\r\nX-Trace-Id: t1\r\nX-Correlation-Id: c1\r\n\r\n",
        );
        let names: Vec<String> = DEFAULT_REQUEST_ID_HEADERS
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut out = Vec::new();
        request_id(&mut out, &h, &names, &mut Random::new(1));
        assert_eq!(out, b"c1");
    }

    #[test]
    fn generated_ids_are_shaped_like_openai() {
        let h = head(b"POST /v1/chat/completions HTTP/1.1\r\n\r\n");
        let mut rng = Random::new(7);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        request_id(&mut a, &h, &[], &mut rng);
        request_id(&mut b, &h, &[], &mut rng);
        assert!(a.starts_with(b"chatcmpl-") && a.len() == 9 + 24);
        assert!(a[9..].iter().all(u8::is_ascii_alphanumeric));
        assert_ne!(a, b);
        let h = head(b"GET /v1/models HTTP/1.1\r\n\r\n");
        request_id(&mut a, &h, &[], &mut rng);
        assert!(a.starts_with(b"req-"));
    }

    #[test]
    fn request_id_names_both_peers() {
        let mut rng = Random::new(7);
        let id = pd_request_id("10.0.0.1:8000", "10.0.0.2:8000", &mut rng);
        let rest = id
            .strip_prefix("___prefill_addr_10.0.0.1:8000___decode_addr_10.0.0.2:8000_")
            .unwrap();
        assert_eq!(rest.len(), 32);
        assert!(rest.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(
            id,
            pd_request_id("10.0.0.1:8000", "10.0.0.2:8000", &mut rng)
        );
    }
}
