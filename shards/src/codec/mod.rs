//! The hand-written HTTP/1.1 codec: heads on httparse, bodies framed by hand.
//!
//! It parses and encodes; it never does I/O and never decides where a request goes.

pub mod body;
pub mod chunked;
pub mod encode;
pub mod framing;
pub mod limits;
pub mod request;
pub mod response;
pub mod sse;

#[cfg(test)]
mod fuzz_tests;

/// A byte range into a head buffer; heads are parsed once and then read by offset,
/// so the parsed form holds no borrows and needs no allocation per request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    /// `part` must lie inside `base`; an empty part (which httparse may hand out as a
    /// static "") is the empty span.
    pub(crate) fn of(base: &[u8], part: &[u8]) -> Span {
        if part.is_empty() {
            return Span::default();
        }
        let start = part.as_ptr() as usize - base.as_ptr() as usize;
        Span {
            start: start as u32,
            end: (start + part.len()) as u32,
        }
    }

    #[inline]
    pub fn get<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.start as usize..self.end as usize]
    }
}

/// One header field as spans into the head buffer.
#[derive(Clone, Copy, Debug, Default)]
pub struct HeaderSpan {
    pub name: Span,
    pub value: Span,
}

/// Result of feeding bytes to a parser that may need more input, in httparse's style.
#[derive(Debug, PartialEq, Eq)]
pub enum Status<T> {
    Complete(T),
    Partial,
}

/// HTTP minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
pub type MinorVersion = u8;

/// Case-insensitive comparison of header names and tokens.
#[inline]
pub fn eq_ignore_case(a: &[u8], b: &[u8]) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// Iterates the comma-separated tokens of a header value, trimmed.
pub fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim)
        .filter(|t| !t.is_empty())
}

pub fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}
