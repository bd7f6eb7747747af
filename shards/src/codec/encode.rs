//! Writing heads and chunk framing into a reused output buffer.
//!
//! glommio has no vectored write, so a head and the first body bytes are placed in one
//! buffer and leave in one `send`.

use super::{eq_ignore_case, tokens};

/// Hop-by-hop fields (RFC 9110 §7.6.1) plus the framing fields the proxy always
/// rewrites itself. None of them is copied from one connection to the next.
const HOP_BY_HOP: &[&[u8]] = &[
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
    b"content-length",
    b"expect",
];

/// True for a field that must not be forwarded: a hop-by-hop name, or one that the
/// message's own `Connection` field lists (RFC 9110 §7.6.1).
pub fn is_hop_by_hop(name: &[u8], connection_value: Option<&[u8]>) -> bool {
    // Most fields are not hop-by-hop: compare only against names of the same length.
    if HOP_BY_HOP
        .iter()
        .any(|h| h.len() == name.len() && eq_ignore_case(name, h))
    {
        return true;
    }
    match connection_value {
        Some(v) => tokens(v).any(|t| eq_ignore_case(t, name)),
        None => false,
    }
}

/// The start line of a request: always HTTP/1.1 upstream.
pub fn request_line(out: &mut Vec<u8>, method: &[u8], target: &[u8]) {
    out.extend_from_slice(method);
    out.push(b' ');
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\n");
}

/// The start line of a response to a client of HTTP/1.`minor`.
pub fn status_line(out: &mut Vec<u8>, minor: u8, status: u16, reason: &[u8]) {
    out.extend_from_slice(if minor == 0 {
        b"HTTP/1.0 "
    } else {
        b"HTTP/1.1 "
    });
    push_decimal(out, u64::from(status));
    out.push(b' ');
    if reason.is_empty() {
        out.extend_from_slice(canonical_reason(status).as_bytes());
    } else {
        out.extend_from_slice(reason);
    }
    out.extend_from_slice(b"\r\n");
}

pub fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

pub fn content_length(out: &mut Vec<u8>, len: u64) {
    out.extend_from_slice(b"content-length: ");
    push_decimal(out, len);
    out.extend_from_slice(b"\r\n");
}

pub fn end_head(out: &mut Vec<u8>) {
    out.extend_from_slice(b"\r\n");
}

/// One chunk of a chunked body. An empty `data` writes nothing: a zero-size chunk
/// would end the body.
pub fn chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    push_hex(out, data.len() as u64);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk with no trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

pub fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn push_hex(out: &mut Vec<u8>, mut n: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = HEX[(n & 15) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Reason phrases for the statuses the router produces itself.
pub fn canonical_reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        414 => "URI Too Long",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_names() {
        assert!(is_hop_by_hop(b"Connection", None));
        assert!(is_hop_by_hop(b"TRANSFER-ENCODING", None));
        assert!(!is_hop_by_hop(b"authorization", None));
        assert!(is_hop_by_hop(b"x-secret", Some(b"close, X-Secret")));
    }

    #[test]
    fn heads_and_chunks() {
        let mut out = Vec::new();
        status_line(&mut out, 1, 413, b"");
        content_length(&mut out, 1234567);
        end_head(&mut out);
        assert_eq!(
            out,
            b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 1234567\r\n\r\n"
        );
        out.clear();
        chunk(&mut out, &[b'x'; 26]);
        chunk(&mut out, b"");
        out.extend_from_slice(LAST_CHUNK);
        let mut expect = b"1a\r\n".to_vec();
        expect.extend_from_slice(&[b'x'; 26]);
        expect.extend_from_slice(b"\r\n0\r\n\r\n");
        assert_eq!(out, expect);
        out.clear();
        push_decimal(&mut out, 0);
        assert_eq!(out, b"0");
    }
}
