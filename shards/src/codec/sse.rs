//! Server-sent event boundaries (WHATWG HTML §9.2.6), found without copying.
//!
//! The proxy forwards SSE bytes as they arrive and never waits for a whole event; the
//! scanner only tells where events end, so that the router can count events (time to
//! first token) and, when a worker dies mid-stream, append an error event without
//! cutting one in half.

/// Tracks event boundaries across reads. CR is ignored, so LF and CRLF line endings
/// both work; a bare-CR stream (allowed by the spec, never sent by vLLM) is seen as one
/// long event, which only makes the scanner conservative.
#[derive(Clone, Debug)]
pub struct SseScanner {
    line_empty: bool,
    event_has_data: bool,
    events: u64,
}

impl Default for SseScanner {
    fn default() -> Self {
        SseScanner {
            line_empty: true,
            event_has_data: false,
            events: 0,
        }
    }
}

impl SseScanner {
    /// Scans `bytes` and returns how many events they completed. Only line ends
    /// matter, so it jumps from one `\n` to the next (8 bytes at a time) and looks at
    /// what lies between: anything but `\r` makes the line non-empty.
    pub fn feed(&mut self, bytes: &[u8]) -> u64 {
        let before = self.events;
        let mut rest = bytes;
        loop {
            let (line, newline) = match find_newline(rest) {
                Some(i) => (&rest[..i], true),
                None => (rest, false),
            };
            if line.iter().any(|&b| b != b'\r') {
                self.line_empty = false;
                self.event_has_data = true;
            }
            if !newline {
                break;
            }
            if self.line_empty {
                if self.event_has_data {
                    self.events += 1;
                    self.event_has_data = false;
                }
            } else {
                self.line_empty = true;
            }
            rest = &rest[line.len() + 1..];
        }
        self.events - before
    }

    /// Events completed so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// No partial event is pending: anything written now starts a new event.
    pub fn at_boundary(&self) -> bool {
        !self.event_has_data
    }
}

/// The first `\n` in `bytes`, eight bytes at a time (SWAR: a zero byte in
/// `word ^ 0x0a0a..` marks one).
fn find_newline(bytes: &[u8]) -> Option<usize> {
    const LF: u64 = 0x0a0a_0a0a_0a0a_0a0a;
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let mut i = 0;
    while i + 8 <= bytes.len() {
        let word = u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        let x = word ^ LF;
        let found = x.wrapping_sub(LO) & !x & HI;
        if found != 0 {
            return Some(i + (found.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    bytes[i..].iter().position(|&b| b == b'\n').map(|p| i + p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_events_split_anywhere() {
        let stream = b"data: {\"a\":1}\n\ndata: {\"a\":2}\r\n\r\ndata: [DONE]\n\n";
        for split in 0..stream.len() {
            let mut s = SseScanner::default();
            let n = s.feed(&stream[..split]) + s.feed(&stream[split..]);
            assert_eq!(n, 3, "split at {split}");
            assert!(s.at_boundary());
        }
    }

    #[test]
    fn newline_search_agrees_with_a_plain_scan() {
        let text = b"abcdefgh\nijklmnopqrstuvwx\r\n\n\x8a\x0b\n_".repeat(3);
        for start in 0..text.len() {
            let plain = text[start..].iter().position(|&b| b == b'\n');
            assert_eq!(find_newline(&text[start..]), plain, "from {start}");
        }
    }

    #[test]
    fn partial_event_is_not_a_boundary() {
        let mut s = SseScanner::default();
        assert_eq!(s.feed(b"data: x\n"), 0);
        assert!(!s.at_boundary());
        assert_eq!(s.feed(b"\n"), 1);
        assert!(s.at_boundary());
        assert_eq!(s.feed(b"\n\n"), 0, "blank lines alone are not events");
    }
}
