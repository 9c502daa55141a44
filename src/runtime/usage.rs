//! What a running workload uses now, for `lasctl ps`: memory, GPU memory and when it started.
//!
//! Only the runtime reads `/proc` and cgroups of workloads or asks the Docker engine; the daemon
//! asks through [`super::Runtime::usage`].
//!
//! # Caveats
//! - Memory of a native workload is its cgroup's `memory.current` when it has one of its own
//!   (`las-…`, see [`super::limits`]), else the resident set (`VmRSS`) of its main process.
//! - GPU memory comes from NVML (NVIDIA only) for the workload's processes; without NVML, or for
//!   containers (whose pids live in another namespace), it is unknown (`None`).

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::Serialize;

/// Measurements of one workload; `None` where nothing could say.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Usage {
    pub memory_bytes: Option<u64>,
    pub vram_bytes: Option<u64>,
    pub started_at: Option<DateTime<Utc>>,
}

/// The cgroup v2 directory of `pid` when it is a workload cgroup of ours (`las-…`).
fn workload_cgroup(pid: u32) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?.trim();
    let name = Path::new(rel).file_name()?.to_string_lossy().into_owned();
    if !name.starts_with("las-") {
        return None;
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = mounts.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        (post.split_whitespace().next()? == "cgroup2")
            .then(|| pre.split_whitespace().nth(4).map(PathBuf::from))?
    })?;
    let dir = mount.join(rel.trim_start_matches('/'));
    dir.is_dir().then_some(dir)
}

fn vm_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// When `pid` started, from its start time in clock ticks after boot.
fn process_start(pid: u32) -> Option<DateTime<Utc>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is field 3, starttime 22.
    let ticks: u64 = stat
        .rsplit(')')
        .next()?
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()?;
    let btime: i64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    // `/proc` counts in USER_HZ, which the kernel fixes at 100 on every architecture it exports
    // to user space (x86, arm, arm64, riscv); sysconf would need another nix feature to say so.
    let hz = 100u64;
    let ms = btime * 1000 + (ticks * 1000 / hz) as i64;
    DateTime::from_timestamp_millis(ms)
}

/// GPU memory NVML reports for `pids`, summed over devices; `None` without NVML.
fn vram_of(pids: &[u32]) -> Option<u64> {
    let nvml = nvml_wrapper::Nvml::init().ok()?;
    let mut total = 0u64;
    for i in 0..nvml.device_count().ok()? {
        let Ok(dev) = nvml.device_by_index(i) else {
            continue;
        };
        let procs = dev
            .running_compute_processes()
            .unwrap_or_default()
            .into_iter()
            .chain(dev.running_graphics_processes().unwrap_or_default());
        for p in procs {
            if pids.contains(&p.pid)
                && let nvml_wrapper::enums::device::UsedGpuMemory::Used(b) = p.used_gpu_memory
            {
                total += b;
            }
        }
    }
    Some(total)
}

/// A native workload whose main process is `pid`. Blocking (reads files, loads NVML): run it on
/// the blocking pool.
pub fn native(pid: u32) -> Usage {
    let cgroup = workload_cgroup(pid);
    let memory = cgroup
        .as_ref()
        .and_then(|d| std::fs::read_to_string(d.join("memory.current")).ok())
        .and_then(|s| s.trim().parse().ok())
        .or_else(|| vm_rss(pid));
    let mut pids: Vec<u32> = cgroup
        .as_ref()
        .map(|d| {
            super::limits::procs(d)
                .into_iter()
                .filter_map(|p| u32::try_from(p).ok())
                .collect()
        })
        .unwrap_or_default();
    if !pids.contains(&pid) {
        pids.push(pid);
    }
    Usage {
        memory_bytes: memory,
        vram_bytes: vram_of(&pids),
        started_at: process_start(pid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_memory_and_a_start_time_in_the_past() {
        let u = native(std::process::id());
        assert!(u.memory_bytes.is_some_and(|m| m > 0), "{u:?}");
        let started = u.started_at.expect("a start time");
        assert!(started <= Utc::now(), "{started}");
        assert!(
            Utc::now() - started < chrono::Duration::hours(1),
            "{started}"
        );
    }
}
