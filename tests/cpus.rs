//! Where the shards run: how many, and on which CPUs, as the router's cgroup quota
//! and affinity mask allow.

mod common;

use common::*;
use std::process::Command;

/// `Cpus_allowed_list` of a `/proc/.../status` file.
fn allowed_cpus(status: &std::path::Path) -> String {
    std::fs::read_to_string(status)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap_or("")
        .trim()
        .to_string()
}

/// The shard threads of a router process: (name, allowed CPUs) per thread.
fn shard_threads(pid: u32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !name.starts_with("shard-") {
            continue;
        }
        out.push((
            name.trim().to_string(),
            allowed_cpus(&task.path().join("status")),
        ));
    }
    out
}

#[test]
fn a_cpu_quota_below_the_cpus_sets_the_shard_count_and_leaves_them_unpinned() {
    // As a Kubernetes CPU limit without dedicated cores: the affinity mask shows every
    // CPU, the cgroup allows one CPU's time. Made here as a cgroup v1 `cpu` child
    // (root, the hierarchy mounted read-write, as on the project's machines).
    let mask = allowed_cpus(std::path::Path::new("/proc/self/status"));
    assert!(
        !mask.is_empty(),
        "no Cpus_allowed_list in /proc/self/status"
    );
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cgroup =
        std::path::Path::new("/sys/fs/cgroup/cpu").join(format!("vr-quota-{}", std::process::id()));
    if cpus < 2 || std::fs::create_dir(&cgroup).is_err() {
        eprintln!("skipped: needs 2 CPUs and a writable cgroup v1 cpu hierarchy (root)");
        return;
    }
    std::fs::write(cgroup.join("cpu.cfs_period_us"), "100000").unwrap();
    std::fs::write(cgroup.join("cpu.cfs_quota_us"), "100000").unwrap();
    let procs = cgroup.join("cgroup.procs");
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        &format!("echo $$ > {}; exec \"$0\" \"$@\"", procs.display()),
        router_bin().to_str().unwrap(),
        "--policy",
        "random",
    ]);
    let r = start_router(cmd);
    let threads = shard_threads(r.proc.child.id());
    let names: std::collections::BTreeSet<&str> = threads.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["shard-0"],
        "{threads:?}"
    );
    assert!(
        threads.iter().all(|(_, allowed)| *allowed == mask),
        "{threads:?} against {mask}"
    );
    drop(r);
    // Without the quota: one shard per CPU.
    let mut cmd = Command::new(router_bin());
    cmd.args(["--policy", "random"]);
    let r = start_router(cmd);
    let threads = shard_threads(r.proc.child.id());
    assert!(threads.iter().any(|(n, _)| n == "shard-1"), "{threads:?}");
    drop(r);
    assert!(
        eventually(std::time::Duration::from_secs(5), || std::fs::remove_dir(
            &cgroup
        )
        .is_ok()),
        "the test cgroup could not be removed"
    );
}

/// The CPUs each shard's threads may run on, by shard (glommio gives each executor a
/// helper thread under the same name, bound as the executor is); waits for two shards.
fn cpus_of_two_shards(r: &Router) -> Vec<String> {
    let mut threads = Vec::new();
    let started = eventually(std::time::Duration::from_secs(5), || {
        threads = shard_threads(r.proc.child.id());
        threads.iter().any(|(n, _)| n == "shard-1")
    });
    assert!(started, "shard threads: {threads:?}");
    let by_shard: std::collections::BTreeMap<String, String> = threads.into_iter().collect();
    by_shard.into_values().collect()
}

#[test]
fn shards_are_pinned_only_on_cpus_given_to_the_router() {
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    let own = allowed_cpus(std::path::Path::new("/proc/self/status"));
    // On the whole machine the kernel places the shards; asked, each gets a CPU.
    let never = cpus_of_two_shards(&router(&[], &["--pin-shards", "never"]));
    assert_eq!(never, [own.clone(), own.clone()]);
    if own == online.trim() {
        let default = cpus_of_two_shards(&router(&[], &[]));
        assert_eq!(default, [own.clone(), own.clone()], "pinned by default");
    }
    // A shard's helper thread binds itself once it runs: on a loaded machine that may
    // be after the router reports ready.
    let r = router(&[], &["--pin-shards", "always"]);
    let mut always = Vec::new();
    let pinned = eventually(std::time::Duration::from_secs(5), || {
        always = cpus_of_two_shards(&r);
        always.iter().all(|c| c.parse::<usize>().is_ok())
    });
    assert!(pinned, "{always:?}");
    drop(r);
    if own.contains(['-', ',']) {
        assert_ne!(always[0], always[1], "two shards pinned to one CPU");
    }

    // CPUs given to the router (taskset, CPUAffinity=): pinned, as its log says.
    let first: usize = own.split(['-', ',']).next().unwrap().parse().unwrap();
    let dir = std::env::temp_dir().join(format!("vr-pin-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut cmd = Command::new(router_bin());
    cmd.args(["--policy", "random", "--log-dir", dir.to_str().unwrap()]);
    use std::os::unix::process::CommandExt;
    // SAFETY: the hook only makes an async-signal-safe syscall.
    unsafe {
        cmd.pre_exec(move || {
            let mut set = nix::sched::CpuSet::new();
            set.set(first).map_err(std::io::Error::from)?;
            nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
                .map_err(std::io::Error::from)
        })
    };
    let r = start_router(cmd);
    let log = std::fs::read_to_string(dir.join("vllm-router.log")).unwrap();
    if online.trim() != first.to_string() {
        assert!(
            log.contains(&format!("shard(s) on CPU(s) {first} ")),
            "{log}"
        );
    }
    drop(r);
    let _ = std::fs::remove_dir_all(&dir);
}
