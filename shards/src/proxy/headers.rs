//! Header rewriting between client and worker, kept out of the codec.
//!
//! Upstream: hop-by-hop fields dropped, Host set to the worker, framing re-declared,
//! the API key and data-parallel rank added (a client's own rank header is dropped).
//! Downstream: hop-by-hop fields dropped and framing re-declared for the client's
//! HTTP version.

use crate::codec::encode::{self, is_hop_by_hop};
use crate::codec::eq_ignore_case;
use crate::codec::framing::BodyFraming;
use crate::codec::request::RequestHead;
use crate::codec::response::ResponseHead;

/// Header carrying the data-parallel rank to vLLM.
pub const DP_RANK_HEADER: &[u8] = b"x-data-parallel-rank";

/// How the request body is declared upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamBody {
    None,
    Length(u64),
    /// Streamed through still chunk-encoded, exactly as the client sent it.
    Chunked,
}

/// Where and how a request goes: the per-worker parts of the upstream head.
pub struct UpstreamTarget<'a> {
    pub authority: &'a [u8],
    pub dp_rank: Option<u32>,
    pub api_key: Option<&'a str>,
    /// Sent as `x-request-id`, replacing the client's.
    pub request_id: &'a [u8],
}

/// The request id header on both sides.
pub const REQUEST_ID_HEADER: &[u8] = b"x-request-id";

pub fn write_upstream_head(
    out: &mut Vec<u8>,
    head: &RequestHead,
    target: &UpstreamTarget<'_>,
    body: UpstreamBody,
) {
    encode::request_line(out, head.method(), head.target());
    encode::header(out, b"host", target.authority);
    let connection = head.header(b"connection");
    for (name, value) in head.headers() {
        if is_hop_by_hop(name, connection)
            || eq_ignore_case(name, b"host")
            || eq_ignore_case(name, DP_RANK_HEADER)
            || eq_ignore_case(name, REQUEST_ID_HEADER)
            || (target.api_key.is_some() && eq_ignore_case(name, b"authorization"))
        {
            continue;
        }
        encode::header(out, name, value);
    }
    if let Some(key) = target.api_key {
        out.extend_from_slice(b"authorization: Bearer ");
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !target.request_id.is_empty() {
        encode::header(out, REQUEST_ID_HEADER, target.request_id);
    }
    if let Some(rank) = target.dp_rank {
        out.extend_from_slice(DP_RANK_HEADER);
        out.extend_from_slice(b": ");
        encode::push_decimal(out, u64::from(rank));
        out.extend_from_slice(b"\r\n");
    }
    match body {
        UpstreamBody::None => {}
        UpstreamBody::Length(n) => encode::content_length(out, n),
        UpstreamBody::Chunked => encode::header(out, b"transfer-encoding", b"chunked"),
    }
    encode::end_head(out);
}

/// How the answer's body is written to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientFraming {
    Empty,
    /// Content-Length, bytes passed through.
    Length(u64),
    /// Chunked from the worker, passed through verbatim to an HTTP/1.1 client.
    Chunked,
    /// Close-delimited from the worker, chunk-encoded for an HTTP/1.1 client so its
    /// connection survives.
    Rechunk,
    /// Chunked from the worker, decoded for an HTTP/1.0 client; ends with close.
    Dechunk,
    /// Close-delimited both ways (HTTP/1.0 client).
    UntilClose,
}

impl ClientFraming {
    pub fn choose(upstream: BodyFraming, client_minor: u8) -> ClientFraming {
        match (upstream, client_minor) {
            (BodyFraming::Empty, _) => ClientFraming::Empty,
            (BodyFraming::Length(n), _) => ClientFraming::Length(n),
            (BodyFraming::Chunked, 0) => ClientFraming::Dechunk,
            (BodyFraming::Chunked, _) => ClientFraming::Chunked,
            (BodyFraming::UntilClose, 0) => ClientFraming::UntilClose,
            (BodyFraming::UntilClose, _) => ClientFraming::Rechunk,
        }
    }

    /// The client learns where the body ends without the connection closing.
    pub fn self_delimiting(self) -> bool {
        !matches!(self, ClientFraming::Dechunk | ClientFraming::UntilClose)
    }
}

/// Writes the head of the worker's answer for the client.
pub fn write_client_head(
    out: &mut Vec<u8>,
    up: &ResponseHead,
    request: &RequestHead,
    framing: ClientFraming,
    keep_alive: bool,
    extra: &[(&[u8], &[u8])],
    own_cors: bool,
) {
    encode::status_line(out, request.minor_version, up.status, up.reason());
    let connection = up.header(b"connection");
    for (name, value) in up.headers() {
        // A HEAD answer's Content-Length describes the GET body: keep it as sent.
        let keep_length = request.is_head() && eq_ignore_case(name, b"content-length");
        if (!keep_length && is_hop_by_hop(name, connection))
            || extra.iter().any(|(n, _)| eq_ignore_case(name, n))
            || (own_cors && crate::cors::is_cors_header(name))
        {
            continue; // ours replaces the worker's (x-request-id, CORS)
        }
        encode::header(out, name, value);
    }
    for (name, value) in extra {
        encode::header(out, name, value);
    }
    match framing {
        ClientFraming::Length(n) if !request.is_head() => encode::content_length(out, n),
        ClientFraming::Chunked | ClientFraming::Rechunk => {
            encode::header(out, b"transfer-encoding", b"chunked")
        }
        _ => {}
    }
    if !keep_alive {
        encode::header(out, b"connection", b"close");
    } else if request.minor_version == 0 {
        encode::header(out, b"connection", b"keep-alive");
    }
    encode::end_head(out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Status;

    #[test]
    fn upstream_head_rewrites() {
        let mut h = RequestHead::default();
        let raw = b"POST /v1/completions?a=b HTTP/1.1\r\nHost: router\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nX-Keep: 2\r\nX-Data-Parallel-Rank: 9\r\nAuthorization: Bearer client\r\nContent-Length: 2\r\n\r\n";
        assert!(matches!(h.parse(raw), Ok(Status::Complete(_))));
        let mut out = Vec::new();
        let target = UpstreamTarget {
            authority: b"10.0.0.1:8000",
            dp_rank: Some(3),
            api_key: Some("k"),
            request_id: b"",
        };
        write_upstream_head(&mut out, &h, &target, UpstreamBody::Length(2));
        let s = String::from_utf8(out).unwrap();
        assert_eq!(
            s,
            "POST /v1/completions?a=b HTTP/1.1\r\nhost: 10.0.0.1:8000\r\nX-Keep: 2\r\nauthorization: Bearer k\r\nx-data-parallel-rank: 3\r\ncontent-length: 2\r\n\r\n"
        );
    }

    #[test]
    fn client_framing_by_version() {
        assert_eq!(
            ClientFraming::choose(BodyFraming::Chunked, 1),
            ClientFraming::Chunked
        );
        assert_eq!(
            ClientFraming::choose(BodyFraming::Chunked, 0),
            ClientFraming::Dechunk
        );
        assert_eq!(
            ClientFraming::choose(BodyFraming::UntilClose, 1),
            ClientFraming::Rechunk
        );
        assert!(!ClientFraming::Dechunk.self_delimiting());
    }
}
