//! Test support: start the real `vllm-router` and real `mock-vllm` processes on
//! loopback, and talk to them with a deliberately simple blocking HTTP/1.1 client that
//! shares no code with the router's codec.
#![allow(dead_code)]

pub mod kv;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub fn router_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vllm-router"))
}

/// `mock-vllm` is built by `cargo test --workspace` next to the router binary.
pub fn mock_bin() -> PathBuf {
    let p = router_bin().with_file_name("mock-vllm");
    assert!(
        p.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (it builds the mock worker)",
        p.display()
    );
    p
}

/// A free port below the kernel's ephemeral range (32768+), so that no `free_port()`
/// of a parallel test can be handed it after its owner exits.
pub fn free_low_port() -> u16 {
    let mut x = std::process::id() as u64
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
    loop {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = 20000 + (x % 10000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Starts a mock worker on a given port.
pub fn mock_on(port: u16, args: &[&str]) -> Proc {
    let mut child = Command::new(mock_bin())
        .args(["--port", &port.to_string()])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mock-vllm");
    wait_for_port(port, &mut child, "mock-vllm");
    Proc {
        child,
        port,
        log: None,
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited early: {status}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{what} did not listen on {port}");
}

/// A running process killed when dropped.
pub struct Proc {
    pub child: Child,
    pub port: u16,
    /// Its stderr, when the harness reads it.
    pub log: Option<StderrLog>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn signal(&self, sig: &str) {
        Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
    }
}

/// Starts a mock worker on a port it chooses (`--port 0`; it prints the port).
pub fn mock(args: &[&str]) -> Proc {
    let mut child = Command::new(mock_bin())
        .args(["--port", "0"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mock-vllm");
    let log = StderrLog::start(&mut child);
    let line = log.wait_for(" listening on ", &mut child, "mock-vllm");
    let port = line.rsplit(':').next().unwrap().trim().parse().unwrap();
    Proc {
        child,
        port,
        log: Some(log),
    }
}

/// A child's stderr, read on its own thread: kept whole for failure messages, and
/// watched for the line that says where it listens.
pub struct StderrLog {
    lines: Arc<(Mutex<Vec<String>>, Condvar)>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl StderrLog {
    pub fn start(child: &mut Child) -> StderrLog {
        let stderr = child.stderr.take().expect("stderr piped");
        let lines = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let shared = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                shared.0.lock().unwrap().push(line);
                shared.1.notify_all();
            }
        });
        StderrLog {
            lines,
            reader: Some(reader),
        }
    }

    /// The first line containing `needle`; panics with the log if the child exits or
    /// 10 s pass first.
    pub fn wait_for(&self, needle: &str, child: &mut Child, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut lines = self.lines.0.lock().unwrap();
        loop {
            if let Some(l) = lines.iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{what} exited early: {status}\n{}", lines.join("\n"));
            }
            assert!(
                Instant::now() < deadline,
                "{what} never said {needle:?}\n{}",
                lines.join("\n")
            );
            lines = self
                .lines
                .1
                .wait_timeout(lines, Duration::from_millis(50))
                .unwrap()
                .0;
        }
    }

    /// Everything logged so far (all of it once the child has exited).
    pub fn text(&mut self) -> String {
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.lines.0.lock().unwrap().join("\n")
    }
}

pub struct Router {
    pub proc: Proc,
    pub port: u16,
    pub metrics_port: u16,
}

impl std::ops::Deref for Router {
    type Target = Proc;
    fn deref(&self) -> &Proc {
        &self.proc
    }
}

impl std::ops::DerefMut for Router {
    fn deref_mut(&mut self) -> &mut Proc {
        &mut self.proc
    }
}

impl Router {
    /// Stops the router and returns what it logged (for failure messages).
    pub fn stop_and_log(&mut self) -> String {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
        self.proc
            .log
            .as_mut()
            .map_or_else(String::new, StderrLog::text)
    }

    /// The Prometheus text the router serves.
    pub fn metrics(&self) -> String {
        request(self.metrics_port, "GET", "/metrics", &[], b"").text()
    }
}

/// Starts the router with `--policy round_robin --shards 2` unless the args say
/// otherwise, in front of `workers`.
pub fn router(workers: &[&Proc], args: &[&str]) -> Router {
    let mut cmd = Command::new(router_bin());
    if !args.contains(&"--policy") {
        cmd.args(["--policy", "round_robin"]);
    }
    if !args.contains(&"--shards") {
        cmd.args(["--shards", "2"]);
    }
    if !workers.is_empty() {
        cmd.arg("--worker-urls");
        for w in workers {
            cmd.arg(w.url());
        }
    }
    cmd.args(args);
    start_router(cmd)
}

/// Starts a configured router command on ports it chooses (`--port 0`,
/// `--prometheus-port 0`, unless the command names them) and learns them from its
/// start-up line.
pub fn start_router(mut cmd: Command) -> Router {
    let named = |flag: &str| cmd.get_args().any(|a| a == flag);
    let (port_named, metrics_named) = (named("--port"), named("--prometheus-port"));
    if !port_named {
        cmd.args(["--port", "0"]);
    }
    if !metrics_named {
        cmd.args(["--prometheus-port", "0"]);
    }
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start vllm-router");
    let log = StderrLog::start(&mut child);
    let log_dir = cmd
        .get_args()
        .skip_while(|a| *a != "--log-dir")
        .nth(1)
        .map(PathBuf::from);
    let line = match log_dir {
        // The log goes to a file instead of stderr.
        Some(dir) => {
            let file = dir.join("vllm-router.log");
            let mut line = None;
            let found = eventually(Duration::from_secs(10), || {
                let text = std::fs::read_to_string(&file).unwrap_or_default();
                line = text
                    .lines()
                    .find(|l| l.contains("listening on http://"))
                    .map(String::from);
                line.is_some()
            });
            assert!(
                found,
                "vllm-router never logged where it listens in {}",
                file.display()
            );
            line.unwrap()
        }
        None => log.wait_for("listening on http://", &mut child, "vllm-router"),
    };
    let port_after = |marker: &str, end: &str| -> u16 {
        let rest = &line[line.find(marker).unwrap() + marker.len()..];
        let addr = &rest[..rest.find(end).unwrap()];
        addr.rsplit(':').next().unwrap().parse().unwrap()
    };
    let port = port_after("listening on http://", " ");
    let metrics_port = port_after("metrics on http://", "/metrics");
    Router {
        proc: Proc {
            child,
            port,
            log: Some(log),
        },
        port,
        metrics_port,
    }
}

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
        use nix::sys::socket::{
            connect, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
        };
        use std::os::fd::{FromRawFd, IntoRawFd};
        let fd = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::empty(),
            None,
        )
        .unwrap();
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

/// The value of the first sample of `name` whose labels contain every `labels` pair
/// (`name{a="x"}` style), or None when absent.
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

/// A process's resident memory in KiB, from /proc.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Polls the router's `/metrics` until `name{labels}` reads `want`, for at most
/// `within`; fails the test with the exposition otherwise.
pub fn wait_metric_within(
    within: Duration,
    r: &Router,
    name: &str,
    labels: &[(&str, &str)],
    want: f64,
) {
    let ok = eventually(within, || metric(&r.metrics(), name, labels) == Some(want));
    assert!(ok, "{name}{labels:?} != {want}:\n{}", r.metrics());
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

/// Polls `f` until it holds or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn mock_stats(m: &Proc) -> serde_json::Value {
    request(m.port, "GET", "/mock/stats", &[], b"").json()
}
