//! The CPU time this process's cgroup allows: a Kubernetes CPU limit, systemd's
//! `CPUQuota=`, `docker run --cpus`. The affinity mask does not show it: without the
//! kubelet's static CPU manager a pod limited to 2 CPUs still sees every CPU of its
//! node, and one pinned shard per CPU would start dozens of shards that the quota
//! then throttles. Read once at start-up, before any shard runs.

use std::path::{Path, PathBuf};

/// Where cgroup v2 and, for v1, the `cpu` controller are usually mounted.
const CGROUP_V2_ROOT: &str = "/sys/fs/cgroup";
const CGROUP_V1_CPU_ROOTS: &[&str] = &[
    "/sys/fs/cgroup/cpu",
    "/sys/fs/cgroup/cpu,cpuacct",
    "/sys/fs/cgroup/cpuacct,cpu",
];

/// CPUs' worth of time the cgroup (or any cgroup above it) allows, if limited.
pub fn cpu_quota() -> Option<f64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let (v2, v1) = own_cgroups(&own);
    let from_v2 = v2.and_then(|p| tightest(Path::new(CGROUP_V2_ROOT), &p, read_cpu_max));
    let from_v1 = v1.and_then(|p| {
        CGROUP_V1_CPU_ROOTS
            .iter()
            .filter_map(|root| tightest(Path::new(root), &p, read_cfs))
            .reduce(f64::min)
    });
    [from_v2, from_v1].into_iter().flatten().reduce(f64::min)
}

/// This process's cgroup path under v2 (`0::/path`) and under v1's `cpu` controller
/// (`4:cpu,cpuacct:/path`), from `/proc/self/cgroup`.
fn own_cgroups(proc_self_cgroup: &str) -> (Option<String>, Option<String>) {
    let mut v2 = None;
    let mut v1 = None;
    for line in proc_self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            v2 = Some(path.to_string());
        } else if controllers.split(',').any(|c| c == "cpu") {
            v1 = Some(path.to_string());
        }
    }
    (v2, v1)
}

/// The smallest limit `read` finds in `root/path` and each directory above it up to
/// `root`. A container often sees its own cgroup mounted at `root` while
/// `/proc/self/cgroup` names the host's path, so directories that do not exist are
/// skipped.
fn tightest(root: &Path, path: &str, read: fn(&Path) -> Option<f64>) -> Option<f64> {
    let mut dir: PathBuf = root.join(path.trim_start_matches('/'));
    let mut limit: Option<f64> = None;
    loop {
        if let Some(l) = read(&dir) {
            limit = Some(limit.map_or(l, |m| m.min(l)));
        }
        if dir.as_path() == root || !dir.pop() || !dir.starts_with(root) {
            return limit;
        }
    }
}

/// cgroup v2 `cpu.max`: `"200000 100000"` is two CPUs; `"max 100000"` is no limit.
fn read_cpu_max(dir: &Path) -> Option<f64> {
    parse_cpu_max(&std::fs::read_to_string(dir.join("cpu.max")).ok()?)
}

fn parse_cpu_max(text: &str) -> Option<f64> {
    let mut fields = text.split_whitespace();
    let quota: f64 = fields.next()?.parse().ok()?;
    let period: f64 = fields.next()?.parse().ok()?;
    (quota > 0.0 && period > 0.0).then(|| quota / period)
}

/// cgroup v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`; a quota of -1 is no limit.
fn read_cfs(dir: &Path) -> Option<f64> {
    let quota = std::fs::read_to_string(dir.join("cpu.cfs_quota_us")).ok()?;
    let period = std::fs::read_to_string(dir.join("cpu.cfs_period_us")).ok()?;
    parse_cpu_max(&format!("{} {}", quota.trim(), period.trim()))
}

/// `--pin-shards`: whether each shard is bound to one CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinShards {
    /// Pinned when this process was given CPUs of its own (an affinity mask narrower
    /// than the machine: `taskset`, systemd `CPUAffinity=`, the kubelet's static CPU
    /// manager) and no quota below them; otherwise the kernel places the shards.
    Auto,
    Always,
    Never,
}

impl PinShards {
    pub fn parse(s: &str) -> Option<PinShards> {
        match s {
            "auto" => Some(PinShards::Auto),
            "always" => Some(PinShards::Always),
            "never" => Some(PinShards::Never),
            _ => None,
        }
    }
}

/// Where the shards run, and why (the start-up line says it).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ShardPlacement {
    /// Each bound to one CPU of the affinity mask.
    Pinned,
    /// Left to the kernel: the cgroup allows this many CPUs' time, fewer than the mask
    /// has (the CPUs are shared with other cgroups: other pods).
    UnderQuota(f64),
    /// Left to the kernel on the mask's CPUs: the whole machine, shared with whatever
    /// else runs there, or `--pin-shards never`.
    Shared,
}

/// How many shards to start and where, from `--shards`, `--pin-shards`, the CPUs in
/// the affinity mask, the CPUs online and the cgroup's quota.
///
/// - A quota below the mask means the CPUs are shared with other cgroups (other
///   pods): as many shards as the quota allows, rounded up.
/// - Pinned (by default) only on CPUs given to this process: on CPUs it shares with
///   other busy processes (a load generator, the workers' own processes, other
///   services), a pinned shard whose CPU is taken waits for it while another CPU may
///   be idle. Measured with the load generator and backend on the same two CPUs
///   (docs/benchmarks.md §11): unpinned, about 20 us less added latency at p50 at
///   500-8000 req/s, throughput level, p99 doubled when every CPU is saturated.
pub fn shard_plan(
    flag: Option<usize>,
    pin: PinShards,
    cpus: usize,
    online: usize,
    quota: Option<f64>,
) -> (usize, ShardPlacement) {
    // (quota, the CPUs it is worth rounded up) when that is fewer than the mask has.
    let by_quota = quota
        .map(|q| (q, (q.ceil() as usize).max(1)))
        .filter(|&(_, n)| n < cpus);
    let count = match (flag, by_quota) {
        (Some(n), _) => n.max(1),
        (None, Some((_, n))) => n,
        (None, None) => cpus.max(1),
    };
    let pinned = match pin {
        PinShards::Always => true,
        PinShards::Never => false,
        PinShards::Auto => by_quota.is_none() && cpus < online,
    };
    let placement = match (pinned, by_quota) {
        (true, _) => ShardPlacement::Pinned,
        (false, Some((q, _))) => ShardPlacement::UnderQuota(q),
        (false, None) => ShardPlacement::Shared,
    };
    (count, placement)
}

/// CPUs online (`/sys/devices/system/cpu/online`, e.g. `0-3,8-11`), whatever this
/// process's affinity mask; None when unreadable.
pub fn online_cpus() -> Option<usize> {
    let list = std::fs::read_to_string("/sys/devices/system/cpu/online").ok()?;
    parse_cpu_list(&list)
}

/// The number of CPUs in a kernel CPU list (`0-3,8,10-11`).
fn parse_cpu_list(list: &str) -> Option<usize> {
    let mut n = 0;
    for part in list.trim().split(',') {
        n += match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
                b.checked_sub(a)? + 1
            }
            None => part.parse::<usize>().map(|_| 1).ok()?,
        };
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_max_reads_as_cpus_of_time() {
        assert_eq!(parse_cpu_max("200000 100000\n"), Some(2.0));
        assert_eq!(parse_cpu_max("150000 100000"), Some(1.5));
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("-1 100000"), None);
        assert_eq!(parse_cpu_max(""), None);
    }

    #[test]
    fn own_cgroups_come_from_proc_self_cgroup() {
        let v2 = "0::/kubepods.slice/pod1/cri-abc\n";
        assert_eq!(
            own_cgroups(v2),
            (Some("/kubepods.slice/pod1/cri-abc".into()), None)
        );
        let v1 = "12:memory:/x\n4:cpu,cpuacct:/kubepods/burstable/pod1/abc\n0::/\n";
        assert_eq!(
            own_cgroups(v1),
            (
                Some("/".into()),
                Some("/kubepods/burstable/pod1/abc".into())
            )
        );
        assert_eq!(own_cgroups("garbage\n"), (None, None));
    }

    #[test]
    fn the_tightest_limit_on_the_way_up_counts_and_missing_directories_are_skipped() {
        let root = std::env::temp_dir().join(format!("vr-cgroup-{}", std::process::id()));
        let pod = root.join("kubepods/pod1");
        std::fs::create_dir_all(pod.join("ctr")).unwrap();
        std::fs::write(root.join("cpu.max"), "max 100000\n").unwrap();
        std::fs::write(root.join("kubepods/cpu.max"), "800000 100000\n").unwrap();
        std::fs::write(pod.join("cpu.max"), "200000 100000\n").unwrap();
        std::fs::write(pod.join("ctr/cpu.max"), "max 100000\n").unwrap();
        assert_eq!(
            tightest(&root, "/kubepods/pod1/ctr", read_cpu_max),
            Some(2.0)
        );
        // The host's path under a container's own mount: only the mount itself exists.
        assert_eq!(
            tightest(&pod, "/kubepods/pod1/ctr", read_cpu_max),
            Some(2.0)
        );
        assert_eq!(tightest(&root, "/", read_cpu_max), None);
        std::fs::write(pod.join("cpu.cfs_quota_us"), "50000\n").unwrap();
        std::fs::write(pod.join("cpu.cfs_period_us"), "100000\n").unwrap();
        assert_eq!(tightest(&root, "/kubepods/pod1", read_cfs), Some(0.5));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_quota_below_the_mask_sets_the_shard_count_and_the_flag_wins() {
        use ShardPlacement::{Pinned, UnderQuota};
        let plan = |flag, cpus, quota| shard_plan(flag, PinShards::Auto, cpus, 64, quota);
        assert_eq!(plan(None, 64, Some(2.0)), (2, UnderQuota(2.0)));
        assert_eq!(plan(None, 64, Some(1.5)), (2, UnderQuota(1.5)));
        assert_eq!(plan(None, 64, Some(0.5)), (1, UnderQuota(0.5)));
        assert_eq!(plan(None, 2, Some(4.0)), (2, Pinned));
        assert_eq!(plan(None, 2, Some(2.0)), (2, Pinned));
        assert_eq!(plan(None, 8, None), (8, Pinned));
        assert_eq!(plan(Some(3), 64, Some(2.0)), (3, UnderQuota(2.0)));
        assert_eq!(plan(Some(3), 8, None), (3, Pinned));
    }

    #[test]
    fn shards_are_pinned_by_default_only_on_cpus_given_to_the_process() {
        use ShardPlacement::{Pinned, Shared, UnderQuota};
        // The whole machine: shared with whatever else runs there.
        assert_eq!(shard_plan(None, PinShards::Auto, 8, 8, None), (8, Shared));
        assert_eq!(
            shard_plan(Some(2), PinShards::Auto, 8, 8, None),
            (2, Shared)
        );
        // A quota that rounds up to the mask limits nothing: the machine decides.
        assert_eq!(
            shard_plan(None, PinShards::Auto, 2, 2, Some(1.5)),
            (2, Shared)
        );
        // A mask narrower than the machine (taskset, CPUAffinity=, static CPU manager).
        assert_eq!(shard_plan(None, PinShards::Auto, 4, 8, None), (4, Pinned));
        // The flag decides either way.
        assert_eq!(shard_plan(None, PinShards::Always, 8, 8, None), (8, Pinned));
        assert_eq!(
            shard_plan(None, PinShards::Always, 64, 64, Some(2.0)),
            (2, Pinned)
        );
        assert_eq!(shard_plan(None, PinShards::Never, 4, 8, None), (4, Shared));
        assert_eq!(
            shard_plan(None, PinShards::Never, 64, 64, Some(2.0)),
            (2, UnderQuota(2.0))
        );
    }

    #[test]
    fn cpu_lists_count_ranges_and_single_cpus() {
        assert_eq!(parse_cpu_list("0-1\n"), Some(2));
        assert_eq!(parse_cpu_list("0"), Some(1));
        assert_eq!(parse_cpu_list("0-3,8-11,16"), Some(9));
        assert_eq!(parse_cpu_list("3-1"), None);
        assert_eq!(parse_cpu_list("x"), None);
    }
}
