//! Response heads from workers: parsed with httparse into spans over a reused buffer.

use super::framing::{response_framing, BodyFraming};
use super::limits::{MAX_HEADERS, MAX_RESPONSE_HEAD_BYTES};
use super::{eq_ignore_case, tokens, HeaderSpan, MinorVersion, Span, Status};

/// A parsed response head; like [`super::request::RequestHead`] it owns a reused copy
/// of the head bytes.
#[derive(Debug, Default)]
pub struct ResponseHead {
    bytes: Vec<u8>,
    pub status: u16,
    reason: Span,
    pub minor_version: MinorVersion,
    headers: Vec<HeaderSpan>,
    pub framing: BodyFraming,
    /// The worker allows reuse of the connection after this body.
    pub keep_alive: bool,
}

/// A worker's head that cannot be parsed: the exchange fails with 502.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadResponse(pub &'static str);

impl ResponseHead {
    /// Parses a head from the start of `buf`; `request_was_head` decides framing per
    /// RFC 9112 §6.3 (1).
    pub fn parse(
        &mut self,
        buf: &[u8],
        request_was_head: bool,
    ) -> Result<Status<usize>, BadResponse> {
        let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut raw);
        let len = match resp.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                if buf.len() > MAX_RESPONSE_HEAD_BYTES {
                    return Err(BadResponse("worker response head too large"));
                }
                return Ok(Status::Partial);
            }
            Err(_) => return Err(BadResponse("malformed response from worker")),
        };
        let (Some(version), Some(status)) = (resp.version, resp.code) else {
            return Err(BadResponse("malformed response from worker"));
        };
        self.bytes.clear();
        self.bytes.extend_from_slice(&buf[..len]);
        self.status = status;
        self.minor_version = version;
        self.reason = resp
            .reason
            .map_or(Span::default(), |r| Span::of(buf, r.as_bytes()));
        self.headers.clear();
        for h in resp.headers.iter() {
            self.headers.push(HeaderSpan {
                name: Span::of(buf, h.name.as_bytes()),
                value: Span::of(buf, h.value),
            });
        }
        self.framing = response_framing(status, request_was_head, self.headers());
        let mut close = version == 0;
        for (name, value) in self.headers() {
            if eq_ignore_case(name, b"connection") {
                for t in tokens(value) {
                    if eq_ignore_case(t, b"close") {
                        close = true;
                    } else if eq_ignore_case(t, b"keep-alive") && version == 0 {
                        close = false;
                    }
                }
            }
        }
        self.keep_alive = !close && self.framing != BodyFraming::UntilClose;
        Ok(Status::Complete(len))
    }

    pub fn reason(&self) -> &[u8] {
        self.reason.get(&self.bytes)
    }

    pub fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.headers
            .iter()
            .map(|h| (h.name.get(&self.bytes), h.value.get(&self.bytes)))
    }

    pub fn header(&self, name: &[u8]) -> Option<&[u8]> {
        self.headers()
            .find(|(n, _)| eq_ignore_case(n, name))
            .map(|(_, v)| v)
    }

    /// An interim 1xx head that is followed by the real one (101 is final, but we never
    /// ask for an upgrade).
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }

    /// `text/event-stream`: the body is forwarded event by event.
    pub fn is_event_stream(&self) -> bool {
        self.header(b"content-type")
            .map(|v| v.len() >= 17 && eq_ignore_case(&v[..17], b"text/event-stream"))
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_response() {
        let raw =
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
        let mut h = ResponseHead::default();
        assert_eq!(
            h.parse(raw, false).unwrap(),
            Status::Complete(raw.len() - 2)
        );
        assert_eq!(h.status, 200);
        assert_eq!(h.reason(), b"OK");
        assert_eq!(h.framing, BodyFraming::Length(2));
        assert!(h.keep_alive);
        assert!(!h.is_event_stream());
    }

    #[test]
    fn sse_chunked() {
        let raw = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ntransfer-encoding: chunked\r\n\r\n";
        let mut h = ResponseHead::default();
        h.parse(raw, false).unwrap();
        assert_eq!(h.framing, BodyFraming::Chunked);
        assert!(h.is_event_stream());
    }

    #[test]
    fn close_delimited_is_not_reusable() {
        let mut h = ResponseHead::default();
        h.parse(b"HTTP/1.1 200 OK\r\n\r\n", false).unwrap();
        assert_eq!(h.framing, BodyFraming::UntilClose);
        assert!(!h.keep_alive);
        h.parse(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            false,
        )
        .unwrap();
        assert!(!h.keep_alive);
        h.parse(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false)
            .unwrap();
        assert!(!h.keep_alive);
    }

    #[test]
    fn missing_reason_phrase() {
        let mut h = ResponseHead::default();
        h.parse(b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", false)
            .unwrap();
        assert_eq!((h.status, h.reason()), (200, &b""[..]));
    }

    #[test]
    fn interim_and_partial() {
        let mut h = ResponseHead::default();
        h.parse(b"HTTP/1.1 100 Continue\r\n\r\n", false).unwrap();
        assert!(h.is_interim());
        assert_eq!(
            h.parse(b"HTTP/1.1 200 OK\r\nContent-Le", false).unwrap(),
            Status::Partial
        );
        assert!(h.parse(b"HTTP/1.1 abc OK\r\n\r\n", false).is_err());
    }
}
