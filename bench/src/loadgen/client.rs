//! A small HTTP/1.1 client that times what a streaming user sees: the answer head, each
//! SSE event, and the end. Written here (tokio, httparse) rather than taken from a
//! general client so that every timestamp is taken the moment the bytes are read.

use std::io;
use std::net::SocketAddr;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Timestamps of one exchange.
#[derive(Debug, Default)]
pub struct Timings {
    pub status: u16,
    /// The first body byte (JSON) or the first SSE event with data (streams).
    pub first_token: Option<Instant>,
    /// Every SSE event's arrival (streams only).
    pub events: Vec<Instant>,
    /// Per event stamped by the worker (`mock_sent_us`), the microseconds from its
    /// send to its arrival here: the delivery delay, router included.
    pub deliveries: Vec<u64>,
    pub end: Option<Instant>,
}

/// Finds every `"mock_sent_us":N` in `data` and records `now - N`.
fn stamp_deliveries(data: &[u8], t: &mut Timings) {
    const KEY: &[u8] = b"\"mock_sent_us\":";
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    let mut rest = data;
    while let Some(i) = find(rest, KEY) {
        let digits = &rest[i + KEY.len()..];
        let n = digits.iter().take_while(|b| b.is_ascii_digit()).count();
        if n > 0 && n < digits.len() {
            if let Ok(sent) = std::str::from_utf8(&digits[..n])
                .unwrap_or("")
                .parse::<u64>()
            {
                t.deliveries.push(now.saturating_sub(sent));
            }
        }
        rest = &digits[n..];
    }
}

/// One keep-alive connection to a target.
pub struct Connection {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Connection {
    pub async fn open(addr: SocketAddr) -> io::Result<Connection> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            buf: Vec::with_capacity(16 * 1024),
        })
    }

    /// Sends one request and reads its whole answer. Returns whether the connection
    /// can be reused.
    pub async fn exchange(&mut self, request: &[u8], t: &mut Timings) -> io::Result<bool> {
        self.stream.write_all(request).await?;
        self.buf.clear();
        // Head.
        let (head_len, status, framing, keep) = loop {
            self.fill().await?;
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&self.buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let mut framing = Framing::UntilClose;
                    let mut keep = resp.version == Some(1);
                    let mut sse = false;
                    for h in resp.headers.iter() {
                        let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
                        match h.name.to_ascii_lowercase().as_str() {
                            "content-length" => {
                                framing = Framing::Length(v.trim().parse().unwrap_or(0))
                            }
                            "transfer-encoding" if v.contains("chunked") => {
                                framing = Framing::Chunked
                            }
                            "connection" if v.contains("close") => keep = false,
                            "content-type" if v.starts_with("text/event-stream") => sse = true,
                            _ => {}
                        }
                    }
                    let code = resp.code.unwrap_or(0);
                    break (n, code, (framing, sse), keep);
                }
                Ok(httparse::Status::Partial) => continue,
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
            }
        };
        t.status = status;
        self.buf.drain(..head_len);
        let (framing, sse) = framing;
        let mut events = EventScan::default();
        let mut on_data = |data: &[u8], now: Instant, t: &mut Timings| {
            if data.is_empty() {
                return;
            }
            if sse {
                stamp_deliveries(data, t);
                for _ in 0..events.feed(data) {
                    t.events.push(now);
                    t.first_token.get_or_insert(now);
                }
            } else {
                t.first_token.get_or_insert(now);
            }
        };
        match framing {
            Framing::Length(mut left) => {
                loop {
                    let take = left.min(self.buf.len());
                    let now = Instant::now();
                    on_data(&self.buf[..take], now, t);
                    self.buf.drain(..take);
                    left -= take;
                    if left == 0 {
                        break;
                    }
                    self.fill().await?;
                }
                t.end = Some(Instant::now());
                Ok(keep)
            }
            Framing::Chunked => {
                loop {
                    let line_end = loop {
                        if let Some(i) = find(&self.buf, b"\r\n") {
                            break i;
                        }
                        self.fill().await?;
                    };
                    let size_text = String::from_utf8_lossy(&self.buf[..line_end]).to_string();
                    let size =
                        usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                            .map_err(|_| {
                                io::Error::new(io::ErrorKind::InvalidData, "bad chunk size")
                            })?;
                    self.buf.drain(..line_end + 2);
                    if size == 0 {
                        while find(&self.buf, b"\r\n").is_none() {
                            self.fill().await?;
                        }
                        let i = find(&self.buf, b"\r\n").unwrap_or(0);
                        self.buf.drain(..i + 2);
                        break;
                    }
                    while self.buf.len() < size + 2 {
                        self.fill().await?;
                    }
                    let now = Instant::now();
                    on_data(&self.buf[..size], now, t);
                    self.buf.drain(..size + 2);
                }
                t.end = Some(Instant::now());
                Ok(keep)
            }
            Framing::UntilClose => {
                loop {
                    let now = Instant::now();
                    let data = std::mem::take(&mut self.buf);
                    on_data(&data, now, t);
                    if self.fill_or_eof().await? == 0 {
                        break;
                    }
                }
                t.end = Some(Instant::now());
                Ok(false)
            }
        }
    }

    async fn fill(&mut self) -> io::Result<()> {
        if self.fill_or_eof().await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed mid-answer",
            ));
        }
        Ok(())
    }

    async fn fill_or_eof(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }
}

enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Counts completed SSE events with data (a blank line ends an event).
#[derive(Default)]
struct EventScan {
    line_empty: bool,
    has_data: bool,
    started: bool,
}

impl EventScan {
    fn feed(&mut self, bytes: &[u8]) -> usize {
        if !self.started {
            self.started = true;
            self.line_empty = true;
        }
        let mut done = 0;
        for &b in bytes {
            match b {
                b'\n' => {
                    if self.line_empty {
                        if self.has_data {
                            done += 1;
                            self.has_data = false;
                        }
                    } else {
                        self.line_empty = true;
                    }
                }
                b'\r' => {}
                _ => {
                    self.line_empty = false;
                    self.has_data = true;
                }
            }
        }
        done
    }
}

/// A raw POST request with a JSON body.
pub fn post(host: &str, path: &str, headers: &[(String, String)], body: &[u8]) -> Vec<u8> {
    let mut r =
        format!("POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    let mut r = r.into_bytes();
    r.extend_from_slice(body);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_scan_counts_events_across_splits() {
        let s = b"data: a\n\ndata: b\r\n\r\ndata: [DONE]\n\n";
        for cut in 0..s.len() {
            let mut e = EventScan::default();
            let n = e.feed(&s[..cut]) + e.feed(&s[cut..]);
            assert_eq!(n, 3, "cut {cut}");
        }
    }
}
