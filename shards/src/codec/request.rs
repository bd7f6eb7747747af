//! Request heads from clients: parsed once with httparse into spans over a reused buffer.

use super::framing::{request_framing, BodyFraming, FramingError};
use super::limits::{MAX_HEADERS, MAX_REQUEST_HEAD_BYTES, MAX_URI_BYTES};
use super::{eq_ignore_case, tokens, HeaderSpan, MinorVersion, Span, Status};

/// A parsed request head. Owns a copy of the head bytes so that the connection's read
/// buffer can be refilled while the head is still in use; both buffers are reused from
/// one request to the next, so parsing allocates nothing once a connection is warm.
#[derive(Debug, Default)]
pub struct RequestHead {
    bytes: Vec<u8>,
    method: Span,
    target: Span,
    pub minor_version: MinorVersion,
    headers: Vec<HeaderSpan>,
    pub framing: BodyFraming,
    /// The client allows the connection to stay open after this exchange.
    pub keep_alive: bool,
    /// `Expect: 100-continue` was sent (HTTP/1.1 only, RFC 9110 §10.1.1).
    pub expect_continue: bool,
}

/// Why a head was refused. Each maps to one status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadError {
    /// Bytes that are not HTTP/1.x: 400.
    Malformed(&'static str),
    /// Head larger than [`MAX_REQUEST_HEAD_BYTES`] or more than [`MAX_HEADERS`] fields: 431.
    TooLarge,
    /// Request-target longer than [`MAX_URI_BYTES`]: 414.
    UriTooLong,
    /// Body framing that cannot be trusted: 400.
    Framing(FramingError),
}

impl HeadError {
    pub fn status(self) -> u16 {
        match self {
            HeadError::Malformed(_) | HeadError::Framing(_) => 400,
            HeadError::TooLarge => 431,
            HeadError::UriTooLong => 414,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            HeadError::Malformed(m) => m,
            HeadError::TooLarge => "request header fields too large",
            HeadError::UriTooLong => "request URI too long",
            HeadError::Framing(f) => f.message(),
        }
    }
}

impl RequestHead {
    /// Parses a head from the start of `buf`. On `Complete(n)` the head used the first
    /// `n` bytes and the body (if any) starts at `buf[n..]`.
    pub fn parse(&mut self, buf: &[u8]) -> Result<Status<usize>, HeadError> {
        let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut raw);
        let len = match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                if buf.len() > MAX_REQUEST_HEAD_BYTES {
                    return Err(HeadError::TooLarge);
                }
                // A target that is already too long will not get shorter.
                if request_line_too_long(buf) {
                    return Err(HeadError::UriTooLong);
                }
                return Ok(Status::Partial);
            }
            Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
            Err(e) => return Err(HeadError::Malformed(parse_error_message(e))),
        };
        if len > MAX_REQUEST_HEAD_BYTES {
            return Err(HeadError::TooLarge);
        }
        let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version)
        else {
            return Err(HeadError::Malformed("incomplete request line"));
        };
        if target.len() > MAX_URI_BYTES {
            return Err(HeadError::UriTooLong);
        }
        let target = origin_form(target.as_bytes())?;
        self.bytes.clear();
        self.bytes.extend_from_slice(&buf[..len]);
        self.method = Span::of(buf, method.as_bytes());
        self.target = Span::of(buf, target);
        self.minor_version = version;
        self.headers.clear();
        for h in req.headers.iter() {
            self.headers.push(HeaderSpan {
                name: Span::of(buf, h.name.as_bytes()),
                value: Span::of(buf, h.value),
            });
        }
        self.framing = request_framing(version, self.headers()).map_err(HeadError::Framing)?;
        self.decide_connection();
        Ok(Status::Complete(len))
    }

    /// RFC 9112 §9.3: HTTP/1.1 defaults to persistent unless "close" is listed;
    /// HTTP/1.0 is persistent only with an explicit "keep-alive".
    fn decide_connection(&mut self) {
        let mut close = false;
        let mut keep_alive = false;
        let mut expect_continue = false;
        for (name, value) in self.headers() {
            if eq_ignore_case(name, b"connection") {
                for t in tokens(value) {
                    close |= eq_ignore_case(t, b"close");
                    keep_alive |= eq_ignore_case(t, b"keep-alive");
                }
            } else if eq_ignore_case(name, b"expect") {
                expect_continue = eq_ignore_case(super::trim(value), b"100-continue");
            }
        }
        self.keep_alive = if self.minor_version >= 1 {
            !close
        } else {
            keep_alive && !close
        };
        self.expect_continue = expect_continue && self.minor_version >= 1;
    }

    pub fn method(&self) -> &[u8] {
        self.method.get(&self.bytes)
    }

    /// The request-target in origin-form (path and query; see [`origin_form`]).
    pub fn target(&self) -> &[u8] {
        self.target.get(&self.bytes)
    }

    /// The path without the query string.
    pub fn path(&self) -> &[u8] {
        let t = self.target();
        match t.iter().position(|&b| b == b'?') {
            Some(i) => &t[..i],
            None => t,
        }
    }

    /// The query string without the leading '?', if any.
    pub fn query(&self) -> Option<&[u8]> {
        let t = self.target();
        t.iter().position(|&b| b == b'?').map(|i| &t[i + 1..])
    }

    pub fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.headers
            .iter()
            .map(|h| (h.name.get(&self.bytes), h.value.get(&self.bytes)))
    }

    /// First value of a header, by case-insensitive name.
    pub fn header(&self, name: &[u8]) -> Option<&[u8]> {
        self.headers()
            .find(|(n, _)| eq_ignore_case(n, name))
            .map(|(_, v)| v)
    }

    /// The value of the first non-empty header among `names`, in their order (a
    /// session a request names, say).
    pub fn first_of(&self, names: &[&[u8]]) -> Option<&[u8]> {
        names.iter().find_map(|name| {
            self.headers()
                .find(|(n, v)| eq_ignore_case(n, name) && !v.is_empty())
                .map(|(_, v)| v)
        })
    }

    pub fn is_head(&self) -> bool {
        self.method() == b"HEAD"
    }

    pub fn has_body(&self) -> bool {
        self.framing != BodyFraming::Empty
    }
}

fn request_line_too_long(buf: &[u8]) -> bool {
    let line_end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    line_end > MAX_URI_BYTES + 64
}

fn parse_error_message(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid token in request line",
        httparse::Error::Version => "invalid HTTP version",
        httparse::Error::TooManyHeaders => "too many headers",
    }
}

/// RFC 9112 §3.2.2: "A server MUST accept the absolute-form in requests even though
/// most HTTP/1.1 clients will only send the absolute-form to a proxy." The router
/// routes, answers and forwards by the path, so it keeps the origin-form part of one
/// (`http://host:port/path?query` -> `/path?query`).
fn origin_form(target: &[u8]) -> Result<&[u8], HeadError> {
    let scheme = |s: &[u8]| target.len() >= s.len() && target[..s.len()].eq_ignore_ascii_case(s);
    let Some(after) = [&b"http://"[..], b"https://"]
        .into_iter()
        .find(|s| scheme(s))
        .map(|s| &target[s.len()..])
    else {
        return Ok(target);
    };
    match after.iter().position(|&b| b == b'/') {
        Some(i) if !after[..i].contains(&b'?') => Ok(&after[i..]),
        _ => Err(HeadError::Malformed("absolute-form target without a path")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Result<(RequestHead, Status<usize>), HeadError> {
        let mut h = RequestHead::default();
        let s = h.parse(raw)?;
        Ok((h, s))
    }

    #[test]
    fn simple_post_with_length() {
        let raw =
            b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{}";
        let (h, s) = parse(raw).unwrap();
        assert_eq!(s, Status::Complete(raw.len() - 2));
        assert_eq!(h.method(), b"POST");
        assert_eq!(h.path(), b"/v1/chat/completions");
        assert_eq!(h.query(), Some(&b"x=1"[..]));
        assert_eq!(h.framing, BodyFraming::Length(2));
        assert!(h.keep_alive);
        assert_eq!(h.header(b"HOST"), Some(&b"a"[..]));
    }

    #[test]
    fn absolute_form_is_read_as_its_path() {
        let (h, _) =
            parse(b"GET http://gpu-1:8000/health?x=1 HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!(h.target(), b"/health?x=1");
        assert_eq!(h.path(), b"/health");
        let (h, _) = parse(b"POST HTTPS://a/v1/completions HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(h.path(), b"/v1/completions");
        assert!(matches!(
            parse(b"GET http://a?x HTTP/1.1\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        // Origin-form and asterisk-form are kept as sent.
        assert_eq!(
            parse(b"OPTIONS * HTTP/1.1\r\n\r\n").unwrap().0.target(),
            b"*"
        );
    }

    #[test]
    fn partial_until_blank_line() {
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nHost: a\r\n").unwrap().1,
            Status::Partial
        );
        assert_eq!(parse(b"GE").unwrap().1, Status::Partial);
    }

    #[test]
    fn http10_keep_alive_rules() {
        let (h, _) = parse(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        assert!(!h.keep_alive);
        let (h, _) = parse(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").unwrap();
        assert!(h.keep_alive);
        let (h, _) = parse(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
        assert!(!h.keep_alive);
    }

    #[test]
    fn expect_continue_only_for_http11() {
        let (h, _) =
            parse(b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n").unwrap();
        assert!(h.expect_continue);
        let (h, _) =
            parse(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n").unwrap();
        assert!(!h.expect_continue);
    }

    #[test]
    fn garbage_is_malformed() {
        assert!(matches!(
            parse(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        assert!(matches!(
            parse(b"GET / HTTP/9.9\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
    }

    #[test]
    fn limits() {
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..(MAX_HEADERS + 1) {
            many.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse(&many).unwrap_err(), HeadError::TooLarge);

        let mut big = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        big.resize(MAX_REQUEST_HEAD_BYTES + 10, b'a');
        assert_eq!(parse(&big).unwrap_err(), HeadError::TooLarge);

        let mut long = b"GET /".to_vec();
        long.resize(MAX_URI_BYTES + 100, b'a');
        assert_eq!(parse(&long).unwrap_err(), HeadError::UriTooLong);
        long.extend_from_slice(b" HTTP/1.1\r\n\r\n");
        assert_eq!(parse(&long).unwrap_err(), HeadError::UriTooLong);
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        let te_cl = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n";
        assert_eq!(
            parse(te_cl).unwrap_err(),
            HeadError::Framing(FramingError::TransferEncodingWithContentLength)
        );
        let two_cl = b"POST / HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(
            parse(two_cl).unwrap_err(),
            HeadError::Framing(FramingError::ConflictingContentLength)
        );
        let not_last = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n";
        assert_eq!(
            parse(not_last).unwrap_err(),
            HeadError::Framing(FramingError::ChunkedNotFinal)
        );
    }

    #[test]
    fn reuse_between_requests() {
        let mut h = RequestHead::default();
        h.parse(b"POST /a HTTP/1.1\r\nContent-Length: 1\r\nX: y\r\n\r\n")
            .unwrap();
        h.parse(b"GET /bb HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(h.path(), b"/bb");
        assert_eq!(h.headers().count(), 0);
        assert_eq!(h.framing, BodyFraming::Empty);
    }
}
