//! How a message body is delimited (RFC 9112 §6.3), decided from the head.
//!
//! Requests are judged strictly, as hyper does, because a proxy that frames a request
//! differently from its upstream invites request smuggling. Responses come from our own
//! workers and are judged leniently.

use super::{eq_ignore_case, tokens, trim};

/// How the body that follows a head ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body at all (GET without Content-Length, 204, 304, HEAD answers).
    #[default]
    Empty,
    /// Exactly this many bytes follow.
    Length(u64),
    /// Transfer-Encoding: chunked.
    Chunked,
    /// The body runs until the peer closes (responses only).
    UntilClose,
}

/// Why a request's framing is refused; each maps to 400.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FramingError {
    /// RFC 9112 §6.1: "A sender MUST NOT send a Content-Length header field in any
    /// message that contains a Transfer-Encoding header field." Refused outright.
    TransferEncodingWithContentLength,
    /// RFC 9112 §6.3 (4): "If a Transfer-Encoding header field is present in a request
    /// and the chunked transfer coding is not the final encoding, the message body
    /// length cannot be determined reliably; the server MUST respond with 400".
    ChunkedNotFinal,
    /// RFC 9110 §8.6: several Content-Length values that differ.
    ConflictingContentLength,
    /// A Content-Length that is not a plain decimal number.
    InvalidContentLength,
    /// Transfer-Encoding in an HTTP/1.0 request: RFC 9112 §6.1 says such a message
    /// must be treated as faulty framing, so it is refused.
    TransferEncodingInHttp10,
}

impl FramingError {
    pub fn message(self) -> &'static str {
        match self {
            Self::TransferEncodingWithContentLength => {
                "request has both Transfer-Encoding and Content-Length"
            }
            Self::ChunkedNotFinal => "Transfer-Encoding must end with chunked",
            Self::ConflictingContentLength => "conflicting Content-Length values",
            Self::InvalidContentLength => "invalid Content-Length",
            Self::TransferEncodingInHttp10 => "Transfer-Encoding is not allowed in HTTP/1.0",
        }
    }
}

/// Parses a Content-Length value: ASCII digits only, no sign, no spaces inside.
pub fn parse_content_length(value: &[u8]) -> Option<u64> {
    let value = trim(value);
    if value.is_empty() || value.len() > 19 {
        return None;
    }
    let mut n: u64 = 0;
    for &b in value {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(b - b'0');
    }
    Some(n)
}

/// Framing of a request from its headers.
pub fn request_framing<'a>(
    minor_version: u8,
    headers: impl Iterator<Item = (&'a [u8], &'a [u8])>,
) -> Result<BodyFraming, FramingError> {
    let mut content_length: Option<u64> = None;
    let mut saw_te = false;
    let mut chunked_last = false;
    for (name, value) in headers {
        if eq_ignore_case(name, b"content-length") {
            // A list like "5, 5" is allowed by RFC 9110 §8.6 when all values agree.
            for v in value.split(|&b| b == b',') {
                let n = parse_content_length(v).ok_or(FramingError::InvalidContentLength)?;
                match content_length {
                    Some(prev) if prev != n => return Err(FramingError::ConflictingContentLength),
                    _ => content_length = Some(n),
                }
            }
        } else if eq_ignore_case(name, b"transfer-encoding") {
            saw_te = true;
            // Only the final coding across all TE fields decides.
            if let Some(last) = tokens(value).last() {
                chunked_last = eq_ignore_case(last, b"chunked");
            }
        }
    }
    if saw_te {
        if minor_version == 0 {
            return Err(FramingError::TransferEncodingInHttp10);
        }
        if content_length.is_some() {
            return Err(FramingError::TransferEncodingWithContentLength);
        }
        if !chunked_last {
            return Err(FramingError::ChunkedNotFinal);
        }
        return Ok(BodyFraming::Chunked);
    }
    Ok(match content_length {
        Some(0) | None => BodyFraming::Empty,
        Some(n) => BodyFraming::Length(n),
    })
}

/// Framing of a response (RFC 9112 §6.3 rules 1-7, in order).
pub fn response_framing<'a>(
    status: u16,
    request_was_head: bool,
    headers: impl Iterator<Item = (&'a [u8], &'a [u8])>,
) -> BodyFraming {
    // Rule 1: HEAD answers, 1xx, 204 and 304 never have a body.
    if request_was_head || (100..200).contains(&status) || status == 204 || status == 304 {
        return BodyFraming::Empty;
    }
    let mut content_length: Option<u64> = None;
    let mut te: Option<bool> = None;
    for (name, value) in headers {
        if eq_ignore_case(name, b"transfer-encoding") {
            let last_chunked = tokens(value)
                .last()
                .map(|t| eq_ignore_case(t, b"chunked"))
                .unwrap_or(false);
            te = Some(last_chunked);
        } else if eq_ignore_case(name, b"content-length") {
            content_length = parse_content_length(value);
        }
    }
    match (te, content_length) {
        // Rule 3: TE overrides CL; a final coding other than chunked reads until close.
        (Some(true), _) => BodyFraming::Chunked,
        (Some(false), _) => BodyFraming::UntilClose,
        (None, Some(0)) => BodyFraming::Empty,
        (None, Some(n)) => BodyFraming::Length(n),
        (None, None) => BodyFraming::UntilClose,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(minor: u8, h: &[(&str, &str)]) -> Result<BodyFraming, FramingError> {
        request_framing(minor, h.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
    }

    #[test]
    fn request_rules() {
        assert_eq!(req(1, &[]), Ok(BodyFraming::Empty));
        assert_eq!(
            req(1, &[("Content-Length", "12")]),
            Ok(BodyFraming::Length(12))
        );
        assert_eq!(
            req(1, &[("content-length", "5, 5")]),
            Ok(BodyFraming::Length(5))
        );
        assert_eq!(
            req(1, &[("Content-Length", "5"), ("Content-Length", "6")]),
            Err(FramingError::ConflictingContentLength)
        );
        assert_eq!(
            req(1, &[("Content-Length", "+5")]),
            Err(FramingError::InvalidContentLength)
        );
        assert_eq!(
            req(1, &[("Content-Length", "")]),
            Err(FramingError::InvalidContentLength)
        );
        assert_eq!(
            req(1, &[("Transfer-Encoding", "chunked")]),
            Ok(BodyFraming::Chunked)
        );
        assert_eq!(
            req(1, &[("Transfer-Encoding", "gzip, chunked")]),
            Ok(BodyFraming::Chunked)
        );
        assert_eq!(
            req(1, &[("Transfer-Encoding", "chunked, gzip")]),
            Err(FramingError::ChunkedNotFinal)
        );
        assert_eq!(
            req(
                1,
                &[("Transfer-Encoding", "chunked"), ("Content-Length", "3")]
            ),
            Err(FramingError::TransferEncodingWithContentLength)
        );
        assert_eq!(
            req(0, &[("Transfer-Encoding", "chunked")]),
            Err(FramingError::TransferEncodingInHttp10)
        );
    }

    #[test]
    fn response_rules() {
        let h = |v: &[(&'static str, &'static str)]| {
            v.iter()
                .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
                .collect::<Vec<_>>()
        };
        let cl = h(&[("Content-Length", "7")]);
        assert_eq!(
            response_framing(200, false, cl.iter().copied()),
            BodyFraming::Length(7)
        );
        assert_eq!(
            response_framing(200, true, cl.iter().copied()),
            BodyFraming::Empty
        );
        assert_eq!(
            response_framing(204, false, cl.iter().copied()),
            BodyFraming::Empty
        );
        assert_eq!(
            response_framing(304, false, cl.iter().copied()),
            BodyFraming::Empty
        );
        let te = h(&[("Transfer-Encoding", "chunked"), ("Content-Length", "7")]);
        assert_eq!(
            response_framing(200, false, te.iter().copied()),
            BodyFraming::Chunked
        );
        assert_eq!(
            response_framing(200, false, std::iter::empty()),
            BodyFraming::UntilClose
        );
    }
}
