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
    let (code, text) = run(&["--cors-allowed-origins", "https://a.example"]);
    assert_ne!(code, 0);
    assert!(
        text.contains("--cors-allowed-origins is not supported yet"),
        "{text}"
    );
}

#[test]
fn bad_worker_url_is_one_clear_line() {
    let (code, text) = run(&[
        "--port",
        "0",
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
    let (code, text) = run(&[
        "--port",
        &port,
        "--prometheus-port",
        "0",
        "--policy",
        "random",
    ]);
    assert_ne!(code, 0);
    assert!(text.contains("cannot listen on"), "{text}");
    // The metrics port is checked too.
    let (code, text) = run(&[
        "--port",
        "0",
        "--prometheus-port",
        &port,
        "--policy",
        "random",
    ]);
    assert_ne!(code, 0);
    assert!(text.contains("cannot listen for metrics on"), "{text}");
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

/// Runs the router with a hook applied in the child before exec.
fn run_with(hook: fn() -> std::io::Result<()>) -> (i32, String) {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(router_bin());
    cmd.args(["--policy", "random", "--port", "0"])
        .args(["--prometheus-port", "0"]);
    // SAFETY: the hooks only make async-signal-safe syscalls.
    unsafe { cmd.pre_exec(hook) };
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn io_uring_blocked_by_seccomp_is_reported() {
    // A seccomp filter like a container runtime's default: io_uring_setup -> EPERM.
    fn block_io_uring() -> std::io::Result<()> {
        use nix::libc;
        #[repr(C)]
        struct SockFilter {
            code: u16,
            jt: u8,
            jf: u8,
            k: u32,
        }
        #[repr(C)]
        struct SockFprog {
            len: u16,
            filter: *const SockFilter,
        }
        let prog = [
            SockFilter {
                code: 0x20,
                jt: 0,
                jf: 0,
                k: 0,
            }, // ld [nr]
            SockFilter {
                code: 0x15,
                jt: 0,
                jf: 1,
                k: libc::SYS_io_uring_setup as u32,
            },
            SockFilter {
                code: 0x06,
                jt: 0,
                jf: 0,
                k: 0x0005_0000 | libc::EPERM as u32,
            },
            SockFilter {
                code: 0x06,
                jt: 0,
                jf: 0,
                k: 0x7fff_0000,
            }, // allow
        ];
        let fprog = SockFprog {
            len: prog.len() as u16,
            filter: prog.as_ptr(),
        };
        // SAFETY: plain prctl calls with a valid filter program.
        unsafe {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(libc::PR_SET_SECCOMP, 2, &fprog as *const SockFprog) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
    let (code, err) = run_with(block_io_uring);
    assert_ne!(code, 0);
    assert!(err.contains("io_uring is unavailable"), "{err}");
    assert!(err.contains("seccomp"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one clear line: {err}");
}

#[test]
fn a_memlock_limit_too_low_is_reported() {
    // 64 KiB (Docker's default) and no CAP_IPC_LOCK, even for root.
    fn low_memlock() -> std::io::Result<()> {
        use nix::libc;
        let lim = libc::rlimit {
            rlim_cur: 64 * 1024,
            rlim_max: 64 * 1024,
        };
        // SAFETY: plain syscalls on this (child) process.
        unsafe {
            libc::prctl(libc::PR_CAPBSET_DROP, 14, 0, 0, 0); // CAP_IPC_LOCK; fails harmlessly when not root
            if libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
    let (code, err) = run_with(low_memlock);
    assert_ne!(code, 0);
    assert!(err.contains("locked-memory limit too low"), "{err}");
    assert!(err.contains("ulimit -l"), "{err}");
}

#[test]
fn log_dir_gets_the_log() {
    let dir = std::env::temp_dir().join(format!("vr-logs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let r = router(&[], &["--log-dir", dir.to_str().unwrap()]);
    assert!(eventually(std::time::Duration::from_secs(2), || {
        std::fs::read_to_string(dir.join("vllm-router.log"))
            .is_ok_and(|t| t.contains("listening on") && t.contains("shard(s)"))
    }));
    drop(r);
    let _ = std::fs::remove_dir_all(&dir);
}
