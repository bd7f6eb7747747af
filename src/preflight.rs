//! Start-up checks that turn obscure executor failures into one clear line each:
//! io_uring blocked (seccomp, sysctl) and a locked-memory limit too low; and the
//! open-file limit raised as far as the process may.

use nix::libc;
use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// Locked memory one glommio executor needs: its registered I/O buffers plus its three
/// rings. Measured with `ulimit -l`; see docs/architecture.md.
pub const MEMLOCK_PER_SHARD: u64 = shards::SHARD_IO_MEMORY as u64 + 512 * 1024;

/// Probes io_uring with a real `io_uring_setup`. Container runtimes' default seccomp
/// profiles and `kernel.io_uring_disabled` make it fail with EPERM or ENOSYS.
pub fn check_io_uring() -> Result<(), String> {
    // struct io_uring_params is 120 bytes; zeroed means "no flags".
    let mut params = [0u32; 30];
    // SAFETY: a plain syscall with a valid, writable params buffer.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, params.as_mut_ptr()) };
    if fd >= 0 {
        // SAFETY: fd was just returned to us.
        unsafe { libc::close(fd as i32) };
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    Err(match err.raw_os_error() {
        Some(libc::EPERM) | Some(libc::ENOSYS) => format!(
            "io_uring is unavailable ({err}). In a container it is usually blocked by the \
             default seccomp profile: run with the profile in deploy/kubernetes/ or \
             `--security-opt seccomp=unconfined`; on a host check `sysctl kernel.io_uring_disabled`"
        ),
        Some(libc::ENOMEM) => format!(
            "io_uring setup failed ({err}): the locked-memory limit is too low; raise it \
             (ulimit -l, or LimitMEMLOCK= in the systemd unit)"
        ),
        _ => format!("io_uring setup failed: {err}"),
    })
}

/// Raises the soft RLIMIT_MEMLOCK to the hard limit when needed, and fails clearly
/// when even that is below what `shards` executors need.
pub fn check_memlock(shards: usize) -> Result<(), String> {
    if has_cap_ipc_lock() {
        return Ok(()); // the limit does not apply (root, or granted the capability)
    }
    let need = MEMLOCK_PER_SHARD * shards as u64;
    let (soft, hard) = getrlimit(Resource::RLIMIT_MEMLOCK)
        .map_err(|e| format!("cannot read RLIMIT_MEMLOCK: {e}"))?;
    if soft >= need {
        return Ok(());
    }
    if hard >= need {
        return setrlimit(Resource::RLIMIT_MEMLOCK, hard, hard)
            .map_err(|e| format!("cannot raise RLIMIT_MEMLOCK: {e}"));
    }
    Err(format!(
        "locked-memory limit too low: {} KiB allowed, {} KiB needed for {shards} shards \
         ({} KiB each); raise it with `ulimit -l {}` or LimitMEMLOCK= in the systemd unit, \
         or run fewer --shards",
        hard / 1024,
        need / 1024,
        MEMLOCK_PER_SHARD / 1024,
        need / 1024
    ))
}

/// Raises the soft open-file limit to the hard one. Every client connection and every
/// upstream connection is a file descriptor, and an idle keep-alive connection costs
/// the router about 1.5 KiB, so the limit, not memory, is what caps connections: a
/// login shell's soft limit is often 1,024 while the hard limit allows far more (nginx
/// has `worker_rlimit_nofile` for this; systemd units set `LimitNOFILE=`). Returns
/// (before, after) when it raised it.
pub fn raise_nofile() -> Option<(u64, u64)> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    // An unlimited hard limit is refused above the kernel's fs.nr_open.
    let most = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1 << 20);
    let target = hard.min(most);
    if soft >= target {
        return None;
    }
    setrlimit(Resource::RLIMIT_NOFILE, target, hard).ok()?;
    Some((soft, target))
}

/// CAP_IPC_LOCK (bit 14 of the effective set) exempts a process from RLIMIT_MEMLOCK.
fn has_cap_ipc_lock() -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

/// The CPUs this process may run on (its affinity mask, not every online CPU).
pub fn allowed_cpus() -> Vec<usize> {
    use nix::sched::{sched_getaffinity, CpuSet};
    use nix::unistd::Pid;
    match sched_getaffinity(Pid::from_raw(0)) {
        Ok(set) => (0..CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap_or(false))
            .collect(),
        Err(_) => (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect(),
    }
}
