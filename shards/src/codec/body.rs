//! One decoder for every body framing, so the relay loops need not care which it is.

use super::chunked::{ChunkedDecoder, ChunkedError, Progress};
use super::framing::BodyFraming;

/// Where a body ends, tracked as its bytes go by.
#[derive(Clone, Debug)]
pub enum BodyDecoder {
    Empty,
    Length { remaining: u64 },
    Chunked(ChunkedDecoder),
    UntilClose,
}

impl BodyDecoder {
    pub fn new(framing: BodyFraming) -> Self {
        match framing {
            BodyFraming::Empty | BodyFraming::Length(0) => BodyDecoder::Empty,
            BodyFraming::Length(n) => BodyDecoder::Length { remaining: n },
            BodyFraming::Chunked => BodyDecoder::Chunked(ChunkedDecoder::new()),
            BodyFraming::UntilClose => BodyDecoder::UntilClose,
        }
    }

    pub fn is_done(&self) -> bool {
        match self {
            BodyDecoder::Empty => true,
            BodyDecoder::Length { remaining } => *remaining == 0,
            BodyDecoder::Chunked(c) => c.is_done(),
            BodyDecoder::UntilClose => false,
        }
    }

    /// Feeds bytes; the payload (framing stripped) goes to `on_data`. `consumed` says
    /// how many bytes of `input` belong to this body; the rest is the next message.
    pub fn feed(
        &mut self,
        input: &[u8],
        mut on_data: impl FnMut(&[u8]),
    ) -> Result<Progress, ChunkedError> {
        match self {
            BodyDecoder::Empty => Ok(Progress {
                consumed: 0,
                done: true,
            }),
            BodyDecoder::Length { remaining } => {
                let take = (*remaining).min(input.len() as u64) as usize;
                on_data(&input[..take]);
                *remaining -= take as u64;
                Ok(Progress {
                    consumed: take,
                    done: *remaining == 0,
                })
            }
            BodyDecoder::Chunked(c) => c.decode(input, on_data),
            BodyDecoder::UntilClose => {
                on_data(input);
                Ok(Progress {
                    consumed: input.len(),
                    done: false,
                })
            }
        }
    }

    /// The peer closed: is the body complete?
    pub fn complete_at_eof(&self) -> bool {
        matches!(self, BodyDecoder::UntilClose) || self.is_done()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_stops_at_boundary() {
        let mut d = BodyDecoder::new(BodyFraming::Length(3));
        let mut out = Vec::new();
        let p = d.feed(b"abcdef", |b| out.extend_from_slice(b)).unwrap();
        assert_eq!((p.consumed, p.done), (3, true));
        assert_eq!(out, b"abc");
    }

    #[test]
    fn until_close_needs_eof() {
        let mut d = BodyDecoder::new(BodyFraming::UntilClose);
        assert!(!d.feed(b"abc", |_| {}).unwrap().done);
        assert!(d.complete_at_eof());
        assert!(!BodyDecoder::new(BodyFraming::Length(2)).complete_at_eof());
    }
}
