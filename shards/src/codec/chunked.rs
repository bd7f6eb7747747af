//! Incremental decoder for `Transfer-Encoding: chunked` (RFC 9112 §7.1).
//!
//! A proxy mostly passes chunked bodies through verbatim: the decoder then only finds
//! where the body ends. When the body must be buffered (JSON routing) or de-chunked
//! (HTTP/1.0 clients), the same pass hands the payload bytes to a callback.

use super::limits::{MAX_CHUNK_SIZE_LINE_BYTES, MAX_TRAILER_BYTES};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reading hex digits of a chunk size.
    Size,
    /// After the size: optional whitespace and `;ext` until CR.
    Extension,
    /// Expecting the LF that ends the size line.
    SizeLf,
    /// Reading chunk payload; `remaining` bytes left.
    Data,
    /// Expecting CR then LF after the payload.
    DataCr,
    DataLf,
    /// At the start of a trailer line, or the final empty line.
    TrailerStart,
    /// Inside a trailer field line.
    Trailer,
    /// Expecting the final LF.
    EndLf,
    Done,
}

/// Why a chunked body is refused: the peer is broken or hostile; the exchange fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkedError(pub &'static str);

/// How far one call got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of `input` that belong to the body (framing included).
    pub consumed: usize,
    /// The last chunk and trailers were read; bytes after `consumed` are the next message.
    pub done: bool,
}

/// The decoder's position inside a chunked body; one per body, no allocation.
#[derive(Clone, Debug)]
pub struct ChunkedDecoder {
    state: State,
    remaining: u64,
    digits: u8,
    line_bytes: usize,
    trailer_bytes: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        ChunkedDecoder {
            state: State::Size,
            remaining: 0,
            digits: 0,
            line_bytes: 0,
            trailer_bytes: 0,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// True between chunks: a cut here loses no partial chunk.
    pub fn at_chunk_boundary(&self) -> bool {
        self.state == State::Size && self.digits == 0
    }

    /// Feeds `input`; payload bytes go to `on_data` in order.
    pub fn decode(
        &mut self,
        input: &[u8],
        mut on_data: impl FnMut(&[u8]),
    ) -> Result<Progress, ChunkedError> {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::Data => {
                    let take = (input.len() - i).min(self.remaining as usize);
                    on_data(&input[i..i + take]);
                    i += take;
                    self.remaining -= take as u64;
                    if self.remaining == 0 {
                        self.state = State::DataCr;
                    }
                    continue;
                }
                State::Done => break,
                _ => {}
            }
            let b = input[i];
            i += 1;
            match self.state {
                State::Size => {
                    self.line_bytes += 1;
                    if let Some(d) = hex_value(b) {
                        // 16 hex digits already fill a u64.
                        if self.digits >= 15 {
                            return Err(ChunkedError("chunk size too large"));
                        }
                        self.remaining = self.remaining * 16 + u64::from(d);
                        self.digits += 1;
                    } else if self.digits == 0 {
                        return Err(ChunkedError("invalid chunk size"));
                    } else {
                        match b {
                            b'\r' => self.state = State::SizeLf,
                            b';' | b' ' | b'\t' => self.state = State::Extension,
                            _ => return Err(ChunkedError("invalid chunk size")),
                        }
                    }
                }
                State::Extension => {
                    self.line_bytes += 1;
                    if self.line_bytes > MAX_CHUNK_SIZE_LINE_BYTES {
                        return Err(ChunkedError("chunk extension too long"));
                    }
                    match b {
                        b'\r' => self.state = State::SizeLf,
                        // RFC 9112 §7.1.1: a bare LF inside an extension is not allowed.
                        b'\n' => return Err(ChunkedError("invalid chunk extension")),
                        _ => {}
                    }
                }
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkedError("invalid chunk size line ending"));
                    }
                    self.line_bytes = 0;
                    self.digits = 0;
                    self.state = if self.remaining == 0 {
                        State::TrailerStart
                    } else {
                        State::Data
                    };
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkedError("missing CRLF after chunk data"));
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkedError("missing CRLF after chunk data"));
                    }
                    self.state = State::Size;
                }
                State::TrailerStart => {
                    if b == b'\r' {
                        self.state = State::EndLf;
                    } else {
                        self.count_trailer()?;
                        self.state = State::Trailer;
                    }
                }
                State::Trailer => {
                    self.count_trailer()?;
                    if b == b'\n' {
                        self.state = State::TrailerStart;
                    }
                }
                State::EndLf => {
                    if b != b'\n' {
                        return Err(ChunkedError("invalid end of chunked body"));
                    }
                    self.state = State::Done;
                    return Ok(Progress {
                        consumed: i,
                        done: true,
                    });
                }
                State::Data | State::Done => unreachable!(),
            }
        }
        Ok(Progress {
            consumed: i,
            done: self.state == State::Done,
        })
    }

    fn count_trailer(&mut self) -> Result<(), ChunkedError> {
        self.trailer_bytes += 1;
        if self.trailer_bytes > MAX_TRAILER_BYTES {
            return Err(ChunkedError("chunked trailers too large"));
        }
        Ok(())
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(input: &[u8]) -> Result<(Vec<u8>, Progress), ChunkedError> {
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        let p = d.decode(input, |b| out.extend_from_slice(b))?;
        Ok((out, p))
    }

    #[test]
    fn whole_body_and_what_follows() {
        let raw = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\nGET / HTTP/1.1";
        let (out, p) = decode_all(raw).unwrap();
        assert_eq!(out, b"hello world");
        assert!(p.done);
        assert_eq!(&raw[p.consumed..], b"GET / HTTP/1.1");
    }

    #[test]
    fn trailers_are_consumed() {
        let raw = b"3\r\nabc\r\n0\r\nX-Checksum: 1\r\nX-Other: 2\r\n\r\n";
        let (out, p) = decode_all(raw).unwrap();
        assert_eq!(out, b"abc");
        assert_eq!(
            p,
            Progress {
                consumed: raw.len(),
                done: true
            }
        );
    }

    #[test]
    fn byte_at_a_time() {
        let raw = b"A\r\n0123456789\r\n1\r\nx\r\n0\r\n\r\n";
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        for (i, b) in raw.iter().enumerate() {
            let p = d
                .decode(std::slice::from_ref(b), |x| out.extend_from_slice(x))
                .unwrap();
            assert_eq!(p.consumed, 1);
            assert_eq!(p.done, i == raw.len() - 1);
        }
        assert_eq!(out, b"0123456789x");
    }

    #[test]
    fn boundaries() {
        let mut d = ChunkedDecoder::new();
        assert!(d.at_chunk_boundary());
        d.decode(b"3\r\nab", |_| {}).unwrap();
        assert!(!d.at_chunk_boundary());
        d.decode(b"c\r\n", |_| {}).unwrap();
        assert!(d.at_chunk_boundary());
    }

    #[test]
    fn malformed() {
        assert!(decode_all(b"zz\r\n").is_err());
        assert!(decode_all(b"\r\n").is_err());
        assert!(decode_all(b"3\r\nabcX").is_err());
        assert!(decode_all(b"3\nabc").is_err());
        assert!(decode_all(b"ffffffffffffffffff\r\n").is_err());
        let mut long_ext = b"1;".to_vec();
        long_ext.resize(MAX_CHUNK_SIZE_LINE_BYTES + 10, b'a');
        assert!(decode_all(&long_ext).is_err());
    }
}
