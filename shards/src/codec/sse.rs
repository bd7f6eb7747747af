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
    /// Scans `bytes` and returns how many events they completed.
    pub fn feed(&mut self, bytes: &[u8]) -> u64 {
        let before = self.events;
        for &b in bytes {
            match b {
                b'\n' => {
                    if self.line_empty {
                        if self.event_has_data {
                            self.events += 1;
                            self.event_has_data = false;
                        }
                    } else {
                        self.line_empty = true;
                    }
                }
                b'\r' => {}
                _ => {
                    self.line_empty = false;
                    self.event_has_data = true;
                }
            }
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
    fn partial_event_is_not_a_boundary() {
        let mut s = SseScanner::default();
        assert_eq!(s.feed(b"data: x\n"), 0);
        assert!(!s.at_boundary());
        assert_eq!(s.feed(b"\n"), 1);
        assert!(s.at_boundary());
        assert_eq!(s.feed(b"\n\n"), 0, "blank lines alone are not events");
    }
}
