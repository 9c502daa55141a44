//! Resource limits and process tracking for native processes.
//!
//! Every native workload gets a cgroup v2 of its own whenever the system lets this program make
//! one (the unified hierarchy, mounted at `/sys/fs/cgroup` or, on hybrid systems,
//! `/sys/fs/cgroup/unified`; writable for root or under a delegated subtree). The cgroup holds
//! every descendant of the process, also those that leave its process group or session
//! (`setsid`), so stopping a workload kills the whole cgroup. Memory and CPU limits are written
//! to it when the memory and cpu controllers are enabled there; otherwise memory falls back to
//! `RLIMIT_AS` (CPU cannot be limited by rlimit). What was applied is reported as a string in the
//! workload's status and record.
//!
//! The one module of the runtime with `unsafe` (`pre_exec`).
#![allow(unsafe_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::Limits;

/// What was applied to one process.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Applied {
    /// The cgroup v2 the process lives in, when one could be made.
    pub cgroup: Option<PathBuf>,
    /// `memory.max` / `cpu.max` were written to that cgroup.
    pub cgroup_limits: bool,
    /// `RLIMIT_AS` (memory) installed because the cgroup could not carry the limit.
    pub rlimit_as: Option<u64>,
    /// A CPU limit was asked for and could not be applied (needs the cgroup v2 cpu controller).
    pub cpus_ignored: bool,
}

impl Applied {
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(a) = self.rlimit_as {
            parts.push(format!("rlimit as={a}"));
        }
        if let Some(p) = &self.cgroup {
            parts.push(if self.cgroup_limits {
                format!("cgroup-v2 {}", p.display())
            } else {
                format!("cgroup-v2 {} (tracking only)", p.display())
            });
        }
        if self.cpus_ignored {
            parts.push("cpus not limited: needs the cgroup v2 cpu controller".into());
        }
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join("; ")
        }
    }
}

/// The cgroup v2 directory this process lives in: the `0::` line of `/proc/self/cgroup` under the
/// mount point of the `cgroup2` filesystem.
fn own_cgroup_v2() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = mounts.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        (post.split_whitespace().next()? == "cgroup2")
            .then(|| pre.split_whitespace().nth(4).map(PathBuf::from))?
    })?;
    Some(mount.join(rel.trim_start_matches('/')))
}

/// Where the cgroup named `name` lives, if this system has a cgroup v2 hierarchy.
pub fn cgroup_dir(name: &str) -> Option<PathBuf> {
    Some(own_cgroup_v2()?.join(format!("las-{name}")))
}

/// Creates the cgroup `name` for one workload (emptied first if a previous run left processes in
/// it) and writes the limits it can carry. `Err` says why no cgroup could be made.
pub fn prepare_cgroup(name: &str, limits: &Limits) -> Result<(PathBuf, bool), String> {
    let base = own_cgroup_v2().ok_or("no cgroup v2 hierarchy is mounted")?;
    let dir = base.join(format!("las-{name}"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    if !procs(&dir).is_empty() {
        tracing::warn!(cgroup = %dir.display(), "killing processes left in the workload's cgroup");
        kill_cgroup(&dir);
    }
    let want = limits.cpus.is_some() || limits.memory_bytes.is_some();
    let ctl = std::fs::read_to_string(base.join("cgroup.subtree_control")).unwrap_or_default();
    let can = ctl.contains("memory") && ctl.contains("cpu");
    let mut limited = false;
    if want && can {
        limited = true;
        if let Some(m) = limits.memory_bytes {
            limited &= std::fs::write(dir.join("memory.max"), m.to_string()).is_ok();
        }
        if let Some(c) = limits.cpus {
            let period = 100_000u64;
            let quota = ((c * period as f64) as u64).max(1000);
            limited &= std::fs::write(dir.join("cpu.max"), format!("{quota} {period}")).is_ok();
        }
    }
    Ok((dir, limited))
}

/// Moves the child into `dir` before it runs anything, so not even its first fork escapes.
/// A failure there is silent: the parent moves it again after the spawn and reports that.
pub fn join_in_child(cmd: &mut tokio::process::Command, dir: &Path) {
    let Ok(path) = std::ffi::CString::new(
        dir.join("cgroup.procs")
            .into_os_string()
            .into_encoded_bytes(),
    ) else {
        return;
    };
    // SAFETY: the closure runs in the forked child before exec; it calls only open, write and
    // close (async-signal-safe) on a path allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd >= 0 {
                let _ = libc::write(fd, b"0\n".as_ptr().cast(), 2);
                libc::close(fd);
            }
            Ok(())
        });
    }
}

/// Moves `pid` into the cgroup.
pub fn join_cgroup(dir: &Path, pid: u32) -> std::io::Result<()> {
    std::fs::write(dir.join("cgroup.procs"), pid.to_string())
}

/// The pids in the cgroup now.
pub fn procs(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Kills every process of the cgroup: `cgroup.kill` (Linux 5.14+, which also catches processes
/// forking meanwhile), else SIGKILL to each pid of `cgroup.procs` until it is empty.
pub fn kill_cgroup(dir: &Path) {
    if std::fs::write(dir.join("cgroup.kill"), "1").is_ok() {
        return;
    }
    for _ in 0..20 {
        let pids = procs(dir);
        if pids.is_empty() {
            return;
        }
        for p in pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Kills what is left in the cgroup and removes it (waiting up to 2 s for the kernel to empty it).
pub fn remove_cgroup(dir: &Path) {
    if !dir.exists() {
        return;
    }
    kill_cgroup(dir);
    let t0 = Instant::now();
    while !procs(dir).is_empty() && t0.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(10));
    }
    if let Err(e) = std::fs::remove_dir(dir) {
        tracing::warn!(cgroup = %dir.display(), error = %e, "cannot remove the workload's cgroup");
    }
}

/// Installs rlimits in the child before exec (for the limits no cgroup carries). Returns the
/// address-space limit installed, if any.
pub fn apply_rlimits(cmd: &mut tokio::process::Command, limits: &Limits) -> Option<u64> {
    let bytes = limits.memory_bytes?;
    let lim = bytes as libc::rlim_t;
    // SAFETY: the closure runs in the forked child before exec; it only calls setrlimit, which is
    // async-signal-safe, and touches no memory shared with the parent besides the copied `lim`.
    unsafe {
        cmd.pre_exec(move || {
            let r = libc::rlimit {
                rlim_cur: lim,
                rlim_max: lim,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &r) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_says_what_holds() {
        assert_eq!(Applied::default().describe(), "none");
        let a = Applied {
            cgroup: Some("/sys/fs/cgroup/las-x".into()),
            rlimit_as: Some(5),
            ..Default::default()
        };
        assert_eq!(
            a.describe(),
            "rlimit as=5; cgroup-v2 /sys/fs/cgroup/las-x (tracking only)"
        );
    }
}
