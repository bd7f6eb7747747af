//! The command line as a user meets it: unsupported flags, bad values, clear errors.

mod common;

use common::*;
use std::process::Command;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(router_bin()).args(args).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn unbuilt_features_are_refused_not_ignored() {
    let (code, text) = run(&[
        "--policy",
        "round_robin",
        "--service-discovery",
        "--selector",
        "app=vllm",
    ]);
    assert_ne!(code, 0);
    assert!(
        text.contains("--service-discovery is not supported yet"),
        "{text}"
    );
    assert!(text.contains("--selector is not supported yet"), "{text}");
    let (code, text) = run(&["--policy", "cache_aware"]);
    assert_ne!(code, 0);
    assert!(
        text.contains("--policy cache_aware is not supported yet"),
        "{text}"
    );
}

#[test]
fn bad_worker_url_is_one_clear_line() {
    let port = free_port().to_string();
    let (code, text) = run(&[
        "--port",
        &port,
        "--policy",
        "random",
        "--worker-urls",
        "ftp://nope",
    ]);
    assert_ne!(code, 0);
    assert!(text.contains("bad worker URL \"ftp://nope\""), "{text}");
}

#[test]
fn port_in_use_is_reported() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (code, text) = run(&["--port", &port, "--policy", "random"]);
    assert_ne!(code, 0);
    assert!(text.contains("cannot listen on"), "{text}");
}

#[test]
fn help_lists_the_published_flags() {
    let (code, text) = run(&["--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--worker-urls",
        "--prefill",
        "--decode",
        "--cache-threshold",
        "--retry-max-retries",
        "--cb-failure-threshold",
        "--health-check-endpoint",
        "--max-concurrent-requests",
        "--request-id-headers",
        "--prometheus-port",
        "--shards",
    ] {
        assert!(text.contains(flag), "{flag} missing from --help");
    }
}

#[test]
fn docs_cli_lists_every_flag() {
    let (_, help) = run(&["--help"]);
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/cli.md")).unwrap();
    for word in help.split_whitespace() {
        let flag = word.trim_end_matches(',');
        if flag.starts_with("--") && flag.len() > 2 && flag != "--help" && flag != "--version" {
            assert!(
                doc.contains(&format!("`{flag}")),
                "{flag} is not documented in docs/cli.md"
            );
        }
    }
}
