//! The Python package: `pip wheel .` builds the router with maturin into a wheel that
//! puts `vllm-router` on PATH and installs the `vllm_router` module
//! (`from vllm_router import Router`, `python -m vllm_router.launch_router`). Building it is a full release build (minutes), so this
//! runs when `VLLM_ROUTER_TEST_WHEEL=1` (`.ci/run` sets it) and says it skipped
//! otherwise.

use std::path::Path;
use std::process::Command;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn the_wheel_installs_a_working_vllm_router_command() {
    if std::env::var("VLLM_ROUTER_TEST_WHEEL").as_deref() != Ok("1") {
        eprintln!("skipped: set VLLM_ROUTER_TEST_WHEEL=1 to build and install the wheel");
        return;
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let dir = std::env::temp_dir().join(format!("vr-wheel-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let dist = dir.join("dist");
    // Its own target dir, so the wheel build never contends with the test binaries.
    run(Command::new("python3")
        .args(["-m", "pip", "wheel", "--no-deps", "-w"])
        .arg(&dist)
        .arg(root)
        .env("CARGO_TARGET_DIR", dir.join("target")));
    let wheel = std::fs::read_dir(&dist)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .expect("a wheel in dist/");
    let name = wheel.file_name().unwrap().to_string_lossy().to_string();
    assert!(name.starts_with("vllm_router-0.1.0-"), "{name}");

    let venv = dir.join("venv");
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "--no-index"])
        .arg(&wheel));
    let exe = venv.join("bin/vllm-router");
    assert!(
        Path::new(&exe).exists(),
        "the wheel did not install bin/vllm-router"
    );
    let help = run(Command::new(&exe).arg("--help"));
    assert!(help.contains("--worker-urls"), "{help}");
    assert!(help.contains("--retry-max-retries"), "{help}");

    // The published package's Python entry points run the same router.
    let python = venv.join("bin/python");
    let help = run(Command::new(&python).args(["-m", "vllm_router.launch_router", "--help"]));
    assert!(help.contains("--worker-urls"), "{help}");
    let dead = "http://127.0.0.1:1";
    let start_up = [
        "--port",
        "0",
        "--prometheus-port",
        "0",
        "--worker-urls",
        dead,
        "--worker-startup-timeout-secs",
        "1",
        "--worker-startup-check-interval",
        "1",
    ];
    let out = Command::new(&python)
        .args(["-m", "vllm_router.launch_router"])
        .args(start_up)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("no worker became healthy"), "{text}");
    let script = format!(
        "from vllm_router import Router\n\
         r = Router(worker_urls=['{dead}'], policy='random', port=0, prometheus_port=0,\n\
                    worker_startup_timeout_secs=1, worker_startup_check_interval=1)\n\
         try:\n    r.start()\nexcept RuntimeError as e:\n    print('exited:', e)\n"
    );
    let out = run(Command::new(&python).args(["-c", &script]));
    assert!(
        out.contains("exited: vllm-router exited with status 1"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
