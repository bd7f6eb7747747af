//! vllm-router-bench against a real mock worker: open loop keeps its schedule while the
//! target stalls (no coordinated omission), SSE events are timed, outputs are written.

mod support;

use std::process::Command;
use support::mock;

fn bench(args: &[&str]) -> serde_json::Value {
    let dir = std::env::temp_dir().join(format!("vr-bench-{}-{}", std::process::id(), args.len()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("out.json");
    let svg = dir.join("out.svg");
    let out = Command::new(env!("CARGO_BIN_EXE_vllm-router-bench"))
        .args(args)
        .arg("--json")
        .arg(&json)
        .arg("--svg")
        .arg(&svg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("| target | p50 | p90 | p99 | p99.9 | max |"),
        "{text}"
    );
    let svg_text = std::fs::read_to_string(&svg).unwrap();
    assert!(
        svg_text.starts_with("<svg") && svg_text.contains("<polyline"),
        "{svg_text}"
    );
    let v = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    v
}

#[test]
fn open_loop_keeps_its_schedule_while_the_target_stalls() {
    let (_m, port) = mock(&["--slow-headers-ms", "400"]);
    let url = format!("direct=http://127.0.0.1:{port}");
    let v = bench(&[
        "--target",
        &url,
        "--rate",
        "20",
        "--duration",
        "1",
        "--warmup",
        "0",
    ]);
    let d = &v["targets"]["direct"];
    // 20 requests were due in the second, each answered 400 ms later: an open loop
    // sent them all on time (a closed loop with one connection would send 3).
    assert_eq!(d["ok"], 20, "{v}");
    let p50 = d["e2e_ms"]["p50"].as_f64().unwrap();
    assert!((400.0..600.0).contains(&p50), "{v}");
}

#[test]
fn streams_are_timed_per_event_and_added_latency_is_reported() {
    let (_m, port) = mock(&["--token-delay-us", "5000"]);
    let direct = format!("direct=http://127.0.0.1:{port}");
    let same = format!("again=http://127.0.0.1:{port}");
    let v = bench(&[
        "--target",
        &direct,
        "--target",
        &same,
        "--rate",
        "20",
        "--duration",
        "1",
        "--warmup",
        "0",
        "--stream",
        "--max-tokens",
        "5",
        "--api",
        "completions",
        "--header",
        "x-mock-timestamps: 1",
    ]);
    for name in ["direct", "again"] {
        let t = &v["targets"][name];
        assert_eq!(t["ok"], 20, "{v}");
        // 5 token events and [DONE]: 5 gaps per request, the token ones ~5 ms apart.
        assert_eq!(t["itl_ms"]["count"], 100, "{v}");
        let gap = t["itl_ms"]["p50"].as_f64().unwrap();
        assert!((4.5..15.0).contains(&gap), "{v}");
        assert!(t["ttft_ms"]["p50"].as_f64().unwrap() < t["e2e_ms"]["p50"].as_f64().unwrap());
        // Every token event was stamped by the mock and timed on arrival.
        assert_eq!(t["event_delivery_ms"]["count"], 100, "{v}");
        assert!(t["event_delivery_ms"]["p50"].as_f64().unwrap() < 5.0, "{v}");
    }
}
