//! Running as a service: systemd's notify protocol, the unit file, and SIGHUP reloads
//! of the worker list file.

mod common;

use common::*;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vr-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Collects notify datagrams until one contains `needle`.
fn wait_for(sock: &UnixDatagram, seen: &mut Vec<String>, needle: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            if seen.last().unwrap().contains(needle) {
                return true;
            }
        }
    }
    false
}

#[test]
fn sd_notify_ready_watchdog_stopping() {
    let dir = temp_dir("notify");
    let path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let w = mock(&[]);
    let mut child = Command::new(router_bin())
        .args(["--port", "0", "--prometheus-port", "0"])
        .args(["--policy", "round_robin", "--worker-urls", &w.url()])
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "400000")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = StderrLog::start(&mut child);
    let mut seen = Vec::new();
    assert!(wait_for(&sock, &mut seen, "READY=1"), "{seen:?}");
    let ready = seen.last().unwrap().clone();
    assert!(
        ready.contains("STATUS=serving; 1 of 1 worker(s) healthy"),
        "{ready}"
    );
    assert!(
        ready.contains(&format!("MAINPID={}", child.id())),
        "{ready}"
    );
    // READY means it serves (on the port its start-up line names).
    let line = log.wait_for("listening on http://", &mut child, "vllm-router");
    let addr = line.split("listening on http://").nth(1).unwrap();
    let port: u16 = addr[..addr.find(' ').unwrap()]
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let resp = post_json(port, "/v1/chat/completions", &chat_body("x", 1, false));
    assert_eq!(resp.status, 200);
    assert!(wait_for(&sock, &mut seen, "WATCHDOG=1"), "{seen:?}");
    let pings = Instant::now();
    assert!(wait_for(&sock, &mut seen, "WATCHDOG=1"), "{seen:?}");
    assert!(
        pings.elapsed() < Duration::from_millis(400),
        "pings at half the interval"
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(wait_for(&sock, &mut seen, "STOPPING=1"), "{seen:?}");
    assert!(child.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sighup_applies_an_edited_worker_list_file() {
    let a = mock(&["--name", "a"]);
    let b = mock(&["--name", "b"]);
    let dir = temp_dir("reload");
    let list = dir.join("workers.txt");
    std::fs::write(&list, format!("# fleet\n{}\n", a.url())).unwrap();
    let r = router(
        &[],
        &[
            "--worker-urls-file",
            list.to_str().unwrap(),
            "--shards",
            "2",
        ],
    );
    let served_by = |port| {
        let resp = post_json(port, "/v1/chat/completions", &chat_body("x", 1, false));
        assert_eq!(resp.status, 200, "{}", resp.text());
        resp.header("x-mock-worker").unwrap().to_string()
    };
    assert_eq!(served_by(r.port), "a");
    // A keep-alive connection open across the reload keeps working.
    let mut conn = Conn::open(r.port);
    conn.post(
        "/v1/chat/completions",
        &chat_body("x", 1, false).to_string(),
    );
    assert_eq!(conn.read_response(false).status, 200);

    std::fs::write(&list, format!("{}\n\n", b.url())).unwrap();
    r.signal("HUP");
    let moved = eventually(Duration::from_secs(5), || {
        (0..4).all(|_| served_by(r.port) == "b")
    });
    assert!(moved, "requests still reach a after the reload");
    conn.post(
        "/v1/chat/completions",
        &chat_body("x", 1, false).to_string(),
    );
    let resp = conn.read_response(false);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("x-mock-worker"), Some("b"));
    let list_json = request(r.port, "GET", "/list_workers", &[], b"").json();
    assert_eq!(list_json["urls"], serde_json::json!([b.url()]));

    // A bad file changes nothing: once the router has refused it, b still serves.
    std::fs::write(&list, "not a url\n").unwrap();
    r.signal("HUP");
    let refused = || {
        metric(
            &r.metrics(),
            "vllm_router_config_reloads_total",
            &[("result", "refused")],
        )
    };
    assert!(
        eventually(Duration::from_secs(10), || refused() == Some(1.0)),
        "the bad file was never refused"
    );
    assert_eq!(served_by(r.port), "b");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let analyze = Command::new("systemd-analyze").arg("--version").output();
    assert!(
        analyze.is_ok(),
        "systemd-analyze is missing: install systemd (apt-get install systemd); .ci/run does"
    );
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/systemd/vllm-router.service"
    ))
    .unwrap();
    assert!(unit.contains("Type=notify"));
    assert!(unit.contains("WatchdogSec="));
    assert!(unit.contains("ExecReload="));
    // verify checks that ExecStart's binary exists: point it at the one just built.
    let dir = temp_dir("unit");
    let path = dir.join("vllm-router.service");
    let unit = unit.replace("/usr/local/bin/vllm-router", router_bin().to_str().unwrap());
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    // Messages about the host's own units are not ours.
    let ours: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("vllm-router.service"))
        .collect();
    assert!(out.status.success() && ours.is_empty(), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_grafana_dashboard_uses_only_documented_metrics() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dash = std::fs::read_to_string(format!("{root}/deploy/grafana/vllm-router.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&dash).expect("dashboard is JSON");
    let docs = std::fs::read_to_string(format!("{root}/docs/metrics.md")).unwrap();
    let mut names = Vec::new();
    for panel in v["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(i) = rest.find("vllm_router_") {
                let tail = &rest[i..];
                let end = tail
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(tail.len());
                // A histogram's or summary's series are named by its family.
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .fold(&tail[..end], |n, s| n.strip_suffix(s).unwrap_or(n));
                names.push(family.to_string());
                rest = &tail[end..];
            }
        }
    }
    assert!(names.len() >= 10, "{names:?}");
    for n in names {
        assert!(
            docs.contains(&format!("`{n}`")),
            "{n} is not in docs/metrics.md"
        );
    }
}

#[test]
fn the_kubernetes_deployment_passes_only_flags_the_router_has() {
    let root = env!("CARGO_MANIFEST_DIR");
    let deployment =
        std::fs::read_to_string(format!("{root}/deploy/kubernetes/deployment.yaml")).unwrap();
    let help = String::from_utf8(
        Command::new(router_bin())
            .arg("--help")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let mut flags = 0;
    for word in deployment.split(|c: char| c.is_whitespace() || c == '=') {
        if let Some(flag) = word.strip_prefix("--") {
            assert!(
                help.contains(&format!("--{flag}")),
                "--{flag} is not a router flag"
            );
            flags += 1;
        }
    }
    assert!(flags >= 6, "{flags}");
    assert!(deployment.contains("localhostProfile: seccomp-io-uring.json"));
    let rbac = std::fs::read_to_string(format!("{root}/deploy/kubernetes/rbac.yaml")).unwrap();
    assert!(
        rbac.contains(r#"verbs: ["get", "list", "watch"]"#),
        "least RBAC: {rbac}"
    );
    let profile: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{root}/deploy/kubernetes/seccomp-io-uring.json"))
            .unwrap(),
    )
    .unwrap();
    let denied = profile["syscalls"][0]["names"].as_array().unwrap();
    assert!(
        !denied
            .iter()
            .any(|n| n.as_str().unwrap().starts_with("io_uring")),
        "the profile must allow io_uring"
    );
}
