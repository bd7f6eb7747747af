//! CORS (`--cors-allowed-origins`), answered by the router so that browsers get one
//! policy whichever worker serves. Without the flag the router adds nothing and
//! forwards preflights like any request (vLLM's own `--allowed-origins` then decides).
//!
//! With it: a preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`,
//! Fetch standard §3.2.2) is answered on the shard; every other answer to a request
//! with an allowed `Origin` carries `Access-Control-Allow-Origin` and exposes
//! `x-request-id`; the workers' own `access-control-*` headers are dropped. A request
//! is never refused for its origin: the browser enforces what the headers say.

use crate::codec::request::RequestHead;

/// Origins whose pages may call the router (`--cors-allowed-origins`).
#[derive(Clone, Debug, Default)]
pub struct CorsConfig {
    /// `*` was given: any origin.
    pub any: bool,
    /// Exact `Origin` values (scheme, host and port).
    pub origins: Vec<String>,
}

/// How long a browser may cache a preflight answer (seconds), as 0.1.17.
const MAX_AGE: &[u8] = b"3600";

/// Methods the router's endpoints take.
const METHODS: &[u8] = b"GET, POST, DELETE, OPTIONS";

/// Request headers a preflight may ask for and get: what OpenAI SDKs send
/// (`x-stainless-*`, `openai-*`), the session and request id headers the policies and
/// logs read, and the CORS-safelisted ones. 0.1.17 allows only content-type and
/// authorization, which blocks a browser that sends `X-Session-ID`.
const ALLOWED_HEADERS: &[&[u8]] = &[
    b"accept",
    b"accept-language",
    b"authorization",
    b"content-language",
    b"content-type",
    b"openai-beta",
    b"openai-organization",
    b"openai-project",
    b"request-id",
    b"x-correlation-id",
    b"x-data-parallel-rank",
    b"x-request-id",
    b"x-session-id",
    b"x-tenant-id",
    b"x-trace-id",
    b"x-user-id",
];

const VARY: &[u8] = b"origin, access-control-request-method, access-control-request-headers";

/// Headers the router adds to an answer, by name.
pub type Headers = Vec<(&'static [u8], Vec<u8>)>;

/// The origin of the request when the configuration allows it.
fn allowed_origin<'h>(cfg: &CorsConfig, head: &'h RequestHead) -> Option<&'h [u8]> {
    let origin = head.header(b"origin")?;
    (cfg.any || cfg.origins.iter().any(|o| o.as_bytes() == origin)).then_some(origin)
}

/// A CORS preflight, which the router answers itself.
pub fn is_preflight(head: &RequestHead) -> bool {
    head.method() == b"OPTIONS"
        && head.header(b"origin").is_some()
        && head.header(b"access-control-request-method").is_some()
}

/// The preflight answer's headers.
pub fn preflight_headers(cfg: &CorsConfig, head: &RequestHead) -> Headers {
    let mut out: Headers = vec![(b"vary", VARY.to_vec())];
    let Some(origin) = allowed_origin(cfg, head) else {
        return out; // no allow-origin: the browser blocks the call
    };
    out.push((b"access-control-allow-origin", origin.to_vec()));
    out.push((b"access-control-allow-methods", METHODS.to_vec()));
    let asked = head
        .header(b"access-control-request-headers")
        .unwrap_or_default();
    let granted: Vec<&[u8]> = asked
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|h| !h.is_empty() && allowed_header(h))
        .collect();
    if !granted.is_empty() {
        out.push((b"access-control-allow-headers", granted.join(&b", "[..])));
    }
    out.push((b"access-control-max-age", MAX_AGE.to_vec()));
    out
}

fn allowed_header(name: &[u8]) -> bool {
    let lower = name.to_ascii_lowercase();
    ALLOWED_HEADERS.contains(&lower.as_slice()) || lower.starts_with(b"x-stainless-")
}

/// Headers for an ordinary answer to a request from a browser page.
pub fn answer_headers(cfg: &CorsConfig, head: &RequestHead, out: &mut Headers) {
    out.clear();
    if head.header(b"origin").is_none() {
        return;
    }
    out.push((b"vary", b"origin".to_vec()));
    if let Some(origin) = allowed_origin(cfg, head) {
        out.push((b"access-control-allow-origin", origin.to_vec()));
        out.push((b"access-control-expose-headers", b"x-request-id".to_vec()));
    }
}

/// A worker's header the router replaces when it owns CORS.
pub fn is_cors_header(name: &[u8]) -> bool {
    name.len() > 15 && name[..15].eq_ignore_ascii_case(b"access-control-")
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

    fn cfg(origins: &[&str]) -> CorsConfig {
        CorsConfig {
            any: origins.contains(&"*"),
            origins: origins.iter().map(|o| o.to_string()).collect(),
        }
    }

    fn get<'a>(h: &'a Headers, name: &[u8]) -> Option<&'a [u8]> {
        h.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_slice())
    }

    #[test]
    fn a_preflight_gets_what_it_asks_for_within_the_list() {
        let h = head(
            b"OPTIONS /v1/chat/completions HTTP/1.1\r\nOrigin: https://app.example\r\n\
              Access-Control-Request-Method: POST\r\n\
              Access-Control-Request-Headers: content-type, X-Session-ID, x-stainless-os, x-evil\r\n\r\n",
        );
        assert!(is_preflight(&h));
        let out = preflight_headers(&cfg(&["https://app.example"]), &h);
        assert_eq!(
            get(&out, b"access-control-allow-origin"),
            Some(&b"https://app.example"[..])
        );
        assert_eq!(
            get(&out, b"access-control-allow-headers"),
            Some(&b"content-type, X-Session-ID, x-stainless-os"[..])
        );
        assert_eq!(get(&out, b"access-control-max-age"), Some(&b"3600"[..]));
        let other = preflight_headers(&cfg(&["https://other.example"]), &h);
        assert_eq!(get(&other, b"access-control-allow-origin"), None);
        let any = preflight_headers(&cfg(&["*"]), &h);
        assert_eq!(
            get(&any, b"access-control-allow-origin"),
            Some(&b"https://app.example"[..])
        );
    }

    #[test]
    fn answers_name_the_allowed_origin_only() {
        let c = cfg(&["http://a.com"]);
        let mut out = Headers::new();
        answer_headers(
            &c,
            &head(b"POST / HTTP/1.1\r\nOrigin: http://a.com\r\n\r\n"),
            &mut out,
        );
        assert_eq!(
            get(&out, b"access-control-allow-origin"),
            Some(&b"http://a.com"[..])
        );
        assert_eq!(
            get(&out, b"access-control-expose-headers"),
            Some(&b"x-request-id"[..])
        );
        answer_headers(
            &c,
            &head(b"POST / HTTP/1.1\r\nOrigin: http://b.com\r\n\r\n"),
            &mut out,
        );
        assert_eq!(get(&out, b"access-control-allow-origin"), None);
        answer_headers(&c, &head(b"POST / HTTP/1.1\r\n\r\n"), &mut out);
        assert!(out.is_empty());
        assert!(!is_preflight(&head(
            b"OPTIONS / HTTP/1.1\r\nOrigin: http://a.com\r\n\r\n"
        )));
        assert!(is_cors_header(b"Access-Control-Allow-Origin"));
        assert!(!is_cors_header(b"access-control"));
    }
}
