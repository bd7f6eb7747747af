//! Test support: start the real `vllm-router` and real `mock-vllm` processes on
//! loopback, and talk to them with a deliberately simple blocking HTTP/1.1 client that
//! shares no code with the router's codec.
#![allow(dead_code)]

mod client;
pub mod kv;

pub use client::*;

use std::io::{BufRead, BufReader};
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
        // A failing test says what its programs were doing: a request that hung shows
        // which threads sat where (io_uring_enter: parked, waiting for a wakeup).
        if std::thread::panicking() {
            eprintln!("{}", self.post_mortem());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Log lines a failing test prints per program: the recent past is what explains it.
const POST_MORTEM_LINES: usize = 30;

impl Proc {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its threads (name, state, kernel wait channel) and the end of its log.
    fn post_mortem(&self) -> String {
        let pid = self.child.id();
        let mut out = format!("--- pid {pid} on port {}: threads", self.port);
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten();
        for task in tasks.flatten() {
            let read = |f: &str| std::fs::read_to_string(task.path().join(f)).unwrap_or_default();
            let stat = read("stat");
            // The state follows the parenthesised name.
            let state = stat.rsplit(") ").next().and_then(|r| r.split(' ').next());
            out.push_str(&format!(
                "\n  {} {} {}",
                read("comm").trim(),
                state.unwrap_or("?"),
                read("wchan")
            ));
        }
        if let Some(log) = &self.log {
            let lines = log.lines.0.lock().unwrap_or_else(|e| e.into_inner());
            let from = lines.len().saturating_sub(POST_MORTEM_LINES);
            out.push_str(&format!("\n--- pid {pid}: last log lines"));
            for l in &lines[from..] {
                out.push_str(&format!("\n  {l}"));
            }
        }
        out
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

/// A process's resident memory in KiB, from /proc.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status")
}

/// The value of the first sample of `name` whose labels contain every `labels` pair
/// (`name{a="x"}` style), or None when absent.
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

/// A small chat completion (two tokens, not streamed) on a fresh connection.
pub fn chat(port: u16, headers: &[(&str, &str)]) -> Response {
    let body = chat_body("hello", 2, false).to_string();
    request(
        port,
        "POST",
        "/v1/chat/completions",
        headers,
        body.as_bytes(),
    )
}

/// Generation requests the mock has served (`/mock/stats`).
pub fn generation_requests(m: &Proc) -> u64 {
    mock_stats(m)["generation_requests"].as_u64().unwrap()
}

/// The requests the mock received, oldest first (`/mock/requests`).
pub fn mock_requests(m: &Proc) -> Vec<serde_json::Value> {
    request(m.port, "GET", "/mock/requests", &[], b"")
        .json()
        .as_array()
        .unwrap()
        .clone()
}

/// The burst target: 10 rounds of 6 new long prefixes, each sent 4 times in
/// quick succession over fresh connections (which spread over the router's shards);
/// every prefix must be served by one worker.
pub fn each_new_prefix_lands_on_one_worker(port: u16) {
    for round in 0..10 {
        for p in 0..6 {
            let system =
                format!("Round {round}, prefix {p}: answer as a careful assistant. ").repeat(30);
            let served: Vec<String> = (0..4)
                .map(|q| {
                    let body = prefixed_chat(&system, &format!("question {q}"));
                    worker_of(&post_json(port, "/v1/chat/completions", &body))
                })
                .collect();
            assert!(
                served.windows(2).all(|w| w[0] == w[1]),
                "round {round}, prefix {p} was split: {served:?}"
            );
        }
    }
}
