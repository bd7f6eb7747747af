//! The metrics endpoint as a real Prometheus server sees it: `promtool check metrics`
//! accepts the exposition, and a Prometheus that scrapes the router answers a query
//! for one of our series. Needs Debian's `prometheus` package (`.ci/run` installs it).

mod common;

use common::*;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

fn installed(tool: &str) {
    let found = Command::new(tool).arg("--version").output().is_ok();
    assert!(
        found,
        "{tool} is missing: install Debian's prometheus package (apt-get install prometheus); .ci/run does"
    );
}

/// Serves one chat request, so that per-route series exist.
fn router_with_traffic() -> (Proc, Router) {
    let a = mock(&["--name", "a"]);
    let r = router(&[&a], &[]);
    let resp = post_json(r.port, "/v1/chat/completions", &chat_body("hi", 1, false));
    assert_eq!(resp.status, 200);
    // Shards send their counters once a second.
    let counted = eventually(Duration::from_secs(5), || {
        metric(
            &r.metrics(),
            "vllm_router_requests_total",
            &[("route", "/v1/chat/completions")],
        ) == Some(1.0)
    });
    assert!(counted, "{}", r.metrics());
    (a, r)
}

#[test]
fn promtool_accepts_the_exposition() {
    installed("promtool");
    let (_a, r) = router_with_traffic();
    let text = r.metrics();
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "{said}\n{text}"
    );
}

#[test]
fn a_prometheus_server_scrapes_the_router_and_answers_a_query() {
    installed("prometheus");
    let (_a, r) = router_with_traffic();
    let dir = std::env::temp_dir().join(format!("vr-prometheus-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: vllm-router\n    \
             static_configs:\n      - targets: ['127.0.0.1:{}']\n",
            r.metrics_port
        ),
    )
    .unwrap();
    let web = free_port();
    let server = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Proc {
        child: server,
        port: web,
        log: None,
    };
    // Prometheus starts, scrapes every second, and answers from what it stored.
    let query = "/api/v1/query?query=vllm_router_requests_total";
    let mut last = String::new();
    let answered = eventually(Duration::from_secs(60), || {
        let Ok(mut c) = std::net::TcpStream::connect(("127.0.0.1", server.port)) else {
            return false;
        };
        let _ = write!(
            c,
            "GET {query} HTTP/1.1\r\nhost: p\r\nconnection: close\r\n\r\n"
        );
        let mut raw = String::new();
        let _ = std::io::Read::read_to_string(&mut c, &mut raw);
        last = raw;
        last.contains(r#""route":"/v1/chat/completions""#) && last.contains(r#""1"]"#)
    });
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(answered, "Prometheus never returned the series: {last}");
}
