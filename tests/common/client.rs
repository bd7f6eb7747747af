//! A deliberately simple blocking HTTP/1.1 client that shares no code with the
//! router's codec: what the tests talk to the router and the mocks with.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A parsed answer.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub version: u8,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A client connection with its own read buffer (keeps bytes past one response).
pub struct Conn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

/// A new IPv4 TCP socket, for options that must be set before connect or bind.
pub fn tcp_socket() -> std::os::fd::OwnedFd {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::empty(),
        None,
    )
    .unwrap()
}

impl Conn {
    pub fn open(port: u16) -> Conn {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    /// A connection whose receive buffer is pinned small (set before connecting, so
    /// the kernel cannot autotune it), to make a slow reader visible upstream.
    pub fn open_small_rcvbuf(port: u16, bytes: usize) -> Conn {
        use nix::sys::socket::{connect, setsockopt, sockopt, SockaddrIn};
        use std::os::fd::{FromRawFd, IntoRawFd};
        let fd = tcp_socket();
        setsockopt(&fd, sockopt::RcvBuf, &bytes).unwrap();
        connect(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &SockaddrIn::new(127, 0, 0, 1, port),
        )
        .unwrap();
        // SAFETY: a connected TCP socket we own.
        let stream = unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) };
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Sends `POST path` with `body` and a Content-Length (HTTP/1.1).
    pub fn post(&mut self, path: &str, body: &str) {
        self.post_with_headers(path, &[], body);
    }

    /// Sends a POST with extra header fields (the mock's `x-mock-*` controls).
    pub fn post_with_headers(&mut self, path: &str, headers: &[(&str, &str)], body: &str) {
        self.send(&post_bytes(path, headers, body));
    }

    pub fn send(&mut self, raw: &[u8]) {
        self.stream.write_all(raw).unwrap();
    }

    /// Reads more bytes; false at EOF.
    fn fill(&mut self) -> bool {
        let mut tmp = [0u8; 65536];
        match self.stream.read(&mut tmp) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => false,
            Err(e) => panic!("read failed: {e}"),
        }
    }

    /// True when the server closed the connection (EOF with no more bytes).
    pub fn is_closed(&mut self) -> bool {
        self.buf.is_empty() && !self.fill()
    }

    /// Reads one response head (skipping 1xx unless `keep_interim`).
    pub fn read_head(&mut self, keep_interim: bool) -> Response {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&self.buf).expect("valid response head") {
                httparse::Status::Complete(n) => {
                    let r = Response {
                        status: resp.code.unwrap(),
                        version: resp.version.unwrap(),
                        headers: resp
                            .headers
                            .iter()
                            .map(|h| {
                                (
                                    h.name.to_string(),
                                    String::from_utf8_lossy(h.value).into_owned(),
                                )
                            })
                            .collect(),
                        body: Vec::new(),
                    };
                    self.buf.drain(..n);
                    if (100..200).contains(&r.status) && !keep_interim {
                        continue;
                    }
                    return r;
                }
                httparse::Status::Partial => assert!(self.fill(), "EOF inside a response head"),
            }
        }
    }

    /// Reads a whole response, body included.
    pub fn read_response(&mut self, request_was_head: bool) -> Response {
        let mut r = self.read_head(false);
        if request_was_head || r.status == 204 || r.status == 304 {
            return r;
        }
        let chunked = r
            .header("transfer-encoding")
            .map(|v| v.to_ascii_lowercase().contains("chunked"))
            .unwrap_or(false);
        if chunked {
            loop {
                let line_end = loop {
                    if let Some(i) = find(&self.buf, b"\r\n") {
                        break i;
                    }
                    assert!(self.fill(), "EOF inside chunk size");
                };
                let line = String::from_utf8_lossy(&self.buf[..line_end]).to_string();
                let size =
                    usize::from_str_radix(line.split(';').next().unwrap().trim(), 16).unwrap();
                self.buf.drain(..line_end + 2);
                if size == 0 {
                    while find(&self.buf, b"\r\n") != Some(0) {
                        if let Some(i) = find(&self.buf, b"\r\n") {
                            self.buf.drain(..i + 2);
                        } else {
                            assert!(self.fill(), "EOF in trailers");
                        }
                    }
                    self.buf.drain(..2);
                    break;
                }
                while self.buf.len() < size + 2 {
                    assert!(self.fill(), "EOF inside a chunk");
                }
                r.body.extend_from_slice(&self.buf[..size]);
                self.buf.drain(..size + 2);
            }
        } else if let Some(len) = r.header("content-length") {
            let len: usize = len.trim().parse().unwrap();
            while self.buf.len() < len {
                assert!(self.fill(), "EOF inside a body");
            }
            r.body = self.buf.drain(..len).collect();
        } else {
            while self.fill() {}
            r.body = std::mem::take(&mut self.buf);
        }
        r
    }

    /// Reads raw bytes until `needle` appears; returns when it did.
    pub fn read_until(&mut self, needle: &[u8]) -> Instant {
        let mut from = 0;
        while find(&self.buf[from..], needle).is_none() {
            from = self.buf.len().saturating_sub(needle.len());
            assert!(
                self.fill(),
                "EOF before {:?}",
                String::from_utf8_lossy(needle)
            );
        }
        Instant::now()
    }

    /// Like `read_until`, but throws the bytes away (for very long streams).
    pub fn discard_until(&mut self, needle: &[u8]) -> Instant {
        loop {
            if find(&self.buf, needle).is_some() {
                return Instant::now();
            }
            let keep = self.buf.len().saturating_sub(needle.len());
            self.buf.drain(..keep);
            assert!(
                self.fill(),
                "EOF before {:?}",
                String::from_utf8_lossy(needle)
            );
        }
    }

    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Everything until the server closes the connection, raw.
    pub fn read_to_close(&mut self) -> Vec<u8> {
        while self.fill() {}
        std::mem::take(&mut self.buf)
    }
}

/// A whole `POST path` request with a Content-Length (HTTP/1.1), to send as is or
/// several in one write (pipelining).
pub fn post_bytes(path: &str, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut head = format!("POST {path} HTTP/1.1\r\nhost: x\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    [head.as_bytes(), body.as_bytes()].concat()
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One request on a fresh connection.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut c = Conn::open(port);
    let mut raw = format!("{method} {path} HTTP/1.1\r\nhost: test\r\n");
    for (n, v) in headers {
        raw.push_str(&format!("{n}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        raw.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    raw.push_str("\r\n");
    let mut bytes = raw.into_bytes();
    bytes.extend_from_slice(body);
    c.send(&bytes);
    c.read_response(method == "HEAD")
}

pub fn post_json(port: u16, path: &str, body: &serde_json::Value) -> Response {
    request(
        port,
        "POST",
        path,
        &[("content-type", "application/json")],
        body.to_string().as_bytes(),
    )
}

pub fn chat_body(content: &str, max_tokens: u32, stream: bool) -> serde_json::Value {
    serde_json::json!({
        "model": "mock-model",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "stream": stream,
    })
}

/// A one-token chat: a system prompt, then a user message.
pub fn prefixed_chat(system: &str, user: &str) -> serde_json::Value {
    serde_json::json!({
        "model": "m",
        "max_tokens": 1,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
    })
}

/// The mock worker that answered (`x-mock-worker`), after checking it answered 200.
pub fn worker_of(resp: &Response) -> String {
    assert_eq!(resp.status, 200, "{}", resp.text());
    resp.header("x-mock-worker").unwrap().to_string()
}
