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
    let (code, text) = run(&["--mini-lb"]);
    assert_eq!(code, 2);
    assert!(text.contains("--mini-lb is not supported yet"), "{text}");
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
        let flag = word.trim_end_matches(|c| ",.;:)".contains(c));
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
fn a_low_open_file_limit_is_raised_to_the_hard_limit() {
    // A login shell's soft limit of 1,024 would refuse the 1,025th connection.
    fn low_nofile() -> std::io::Result<()> {
        use nix::libc;
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: plain syscalls on this (child) process.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            lim.rlim_cur = 1024.min(lim.rlim_max);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(router_bin());
    cmd.args(["--policy", "random"]);
    // SAFETY: the hook only makes async-signal-safe syscalls.
    unsafe { cmd.pre_exec(low_nofile) };
    let r = start_router(cmd);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", r.proc.child.id())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let nums: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    let (soft, hard) = (nums[0], nums[1]);
    let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let want = if hard == "unlimited" {
        nr_open
    } else {
        hard.parse::<u64>().unwrap().min(nr_open)
    };
    assert_eq!(soft.parse::<u64>().unwrap(), want, "{line}");
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

#[test]
fn help_describes_every_flag() {
    let (_, help) = run(&["--help"]);
    let lines: Vec<&str> = help.lines().collect();
    let mut flags = 0;
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        if !t.starts_with("--") {
            continue;
        }
        flags += 1;
        // Short help puts the text after the flag; long help on the next line.
        let inline = t.split_once("  ").map(|(_, d)| d.trim()).unwrap_or("");
        let below = lines.get(i + 1).map_or("", |l| l.trim());
        let text = if inline.is_empty() && !below.starts_with("--") {
            below
        } else {
            inline
        };
        assert!(
            !text.is_empty() && !text.starts_with('['),
            "{t} has no description in --help"
        );
    }
    assert!(flags > 70, "only {flags} flags in --help:\n{help}");
}

/// A line of the 0.1.17 flag list, run to where the router either starts (it then
/// fails its start-up wait on a dead worker) or refuses the flag by name.
fn try_published_flags(line: &str, log_dir: &str) -> Result<&'static str, String> {
    let mut args: Vec<String> = line
        .split_whitespace()
        .map(|a| a.replace("LOGDIR", log_dir))
        .collect();
    let has = |args: &[String], f: &str| args.iter().any(|a| a == f);
    for (flag, value) in [
        ("--port", "0"),
        ("--prometheus-port", "0"),
        ("--worker-startup-timeout-secs", "1"),
        ("--worker-startup-check-interval", "1"),
        ("--shards", "1"),
    ] {
        if !has(&args, flag) {
            args.extend([flag.to_string(), value.to_string()]);
        }
    }
    let pools = ["--worker-urls", "--prefill", "--service-discovery"];
    if !pools.iter().any(|f| has(&args, f)) && !has(&args, "--vllm-discovery-address") {
        args.extend(["--worker-urls".into(), "http://127.0.0.1:1".into()]);
    }
    let mut child = Command::new(router_bin())
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Discovery modes without workers serve (and wait) instead of failing: started.
    let exited = eventually(std::time::Duration::from_secs(15), || {
        child.try_wait().unwrap().is_some()
    });
    if !exited {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    let named = line
        .split_whitespace()
        .filter(|a| a.starts_with("--"))
        .any(|f| text.contains(&format!("{f} ")));
    if out.status.code() == Some(2) {
        return if text.contains("not supported yet") && named {
            Ok("refused")
        } else {
            Err(format!("{line}: exit 2 without a refusal by name:\n{text}"))
        };
    }
    if text.contains("unexpected argument") || text.contains("invalid value") {
        return Err(format!("{line}: not parsed:\n{text}"));
    }
    Ok("built")
}

#[test]
fn every_flag_of_0_1_17_is_built_or_refused_by_name() {
    let list = include_str!("data/published-0.1.17-flags.txt");
    let dir = std::env::temp_dir().join(format!("vr-flags-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dir = dir.to_str().unwrap().to_string();
    let lines: Vec<&str> = list
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .collect();
    let results: Vec<Result<&str, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = lines
            .chunks(8)
            .map(|chunk| {
                let dir = dir.clone();
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|l| try_published_flags(l, &dir))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let _ = std::fs::remove_dir_all(&dir);
    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failures.is_empty(), "{failures:#?}");
    let refused = results.iter().filter(|r| r == &&Ok("refused")).count();
    assert!(refused > 0 && refused < lines.len());
}

#[test]
fn kv_event_sources_are_checked_with_the_published_messages() {
    let cases: [(&[&str], &str); 5] = [
        (
            &[
                "--policy",
                "kv_aware",
                "--kv-event-source",
                "http://127.0.0.1:1=tcp://127.0.0.1:5557",
            ],
            "static KV event sources require worker URLs and model identity",
        ),
        (
            &[
                "--kv-event-model",
                "m",
                "--kv-event-source",
                "http://127.0.0.1:1=tcp://127.0.0.1:5557",
            ],
            "--kv-event-source requires the kv_aware policy",
        ),
        (
            &[
                "--policy",
                "kv_aware",
                "--kv-event-model",
                "m",
                "--kv-event-source",
                "http://127.0.0.1:9=tcp://127.0.0.1:5557",
            ],
            "static KV event source worker 'http://127.0.0.1:9' is not in --worker-urls",
        ),
        (
            &[
                "--policy",
                "kv_aware",
                "--kv-event-model",
                "m",
                "--kv-event-source",
                "http://127.0.0.1:1=tcp://*:5557",
            ],
            "KV connect host cannot be a wildcard",
        ),
        (
            &[
                "--policy",
                "kv_aware",
                "--kv-event-replay-source",
                "http://127.0.0.1:1=tcp://127.0.0.1:5558",
            ],
            "--kv-event-replay-source requires a matching --kv-event-source",
        ),
    ];
    let pd_cases: [(&[&str], &str); 2] = [
        (
            &[
                "--policy",
                "kv_aware",
                "--pd-kv-events",
                "http://127.0.0.1:1=tcp://127.0.0.1:5557",
            ],
            "pd_kv_event_sources requires vllm_prefill_decode mode",
        ),
        (
            &[
                "--vllm-pd-disaggregation",
                "--prefill",
                "http://127.0.0.1:1",
                "--decode",
                "http://127.0.0.1:2",
                "--prefill-policy",
                "round_robin",
                "--pd-kv-events",
                "http://127.0.0.1:1=tcp://127.0.0.1:5557",
            ],
            "pd_kv_event_sources requires a kv_aware prefill policy",
        ),
    ];
    let regular: &[&str] = &["--worker-urls", "http://127.0.0.1:1"];
    let all = (cases.iter().map(|c| (regular, c))).chain(pd_cases.iter().map(|c| (&[][..], c)));
    for (workers, (args, message)) in all {
        let ports: &[&str] = &["--port", "0", "--prometheus-port", "0"];
        let (code, text) = run(&[ports, workers, args].concat());
        assert_ne!(code, 0, "{args:?} started");
        assert!(text.contains(message), "{args:?}: {text}");
    }
}
