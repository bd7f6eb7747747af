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

/// How many shards to start and whether to pin them, from `--shards`, the CPUs in
/// the affinity mask and the cgroup's quota. A quota below the mask means the CPUs
/// are shared with other cgroups (other pods): as many shards as the quota allows,
/// rounded up, and not pinned, so the kernel runs them wherever time is free.
pub fn shard_plan(flag: Option<usize>, cpus: usize, quota: Option<f64>) -> (usize, bool) {
    let by_quota = quota
        .map(|q| (q.ceil() as usize).max(1))
        .filter(|&n| n < cpus);
    match (flag, by_quota) {
        (Some(n), _) => (n.max(1), true),
        (None, Some(n)) => (n, false),
        (None, None) => (cpus.max(1), true),
    }
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
    fn a_quota_below_the_mask_sets_unpinned_shards_and_the_flag_wins() {
        assert_eq!(shard_plan(None, 64, Some(2.0)), (2, false));
        assert_eq!(shard_plan(None, 64, Some(1.5)), (2, false));
        assert_eq!(shard_plan(None, 64, Some(0.5)), (1, false));
        assert_eq!(shard_plan(None, 2, Some(4.0)), (2, true));
        assert_eq!(shard_plan(None, 2, Some(2.0)), (2, true));
        assert_eq!(shard_plan(None, 8, None), (8, true));
        assert_eq!(shard_plan(Some(3), 64, Some(2.0)), (3, true));
    }
}
