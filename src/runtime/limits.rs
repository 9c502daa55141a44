//! Resource limits for native processes: cgroup v2 when this program may create cgroups, else
//! rlimits. The choice is reported as a string in the workload's status and record.
#![allow(unsafe_code)]

use std::path::{Path, PathBuf};

use super::Limits;

/// What was applied to one process.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    None,
    /// A cgroup v2 directory with `memory.max` / `cpu.max` written.
    CgroupV2(PathBuf),
    /// `RLIMIT_AS` (memory); CPU limits cannot be expressed as rlimits and are not applied.
    Rlimit {
        address_space: Option<u64>,
        cpus_ignored: bool,
    },
}

impl Applied {
    pub fn describe(&self) -> String {
        match self {
            Applied::None => "none".into(),
            Applied::CgroupV2(p) => format!("cgroup-v2 {}", p.display()),
            Applied::Rlimit {
                address_space,
                cpus_ignored,
            } => {
                let mut s = String::from("rlimit");
                if let Some(a) = address_space {
                    s.push_str(&format!(" as={a}"));
                }
                if *cpus_ignored {
                    s.push_str(" (cpus not limited: needs cgroup v2)");
                }
                s
            }
        }
    }
}

/// The cgroup v2 directory this process lives in, if the unified hierarchy is mounted and we may
/// create children there with the memory and cpu controllers enabled.
fn own_cgroup_v2() -> Option<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    std::fs::metadata(root.join("cgroup.controllers")).ok()?;
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    let dir = root.join(rel.trim_start_matches('/'));
    let ctl = std::fs::read_to_string(dir.join("cgroup.subtree_control")).ok()?;
    (ctl.contains("memory") && ctl.contains("cpu")).then_some(dir)
}

/// Creates a cgroup for `slug` with the limits, if cgroup v2 allows it.
pub fn prepare_cgroup(slug: &str, limits: &Limits) -> Option<PathBuf> {
    if limits.cpus.is_none() && limits.memory_bytes.is_none() {
        return None;
    }
    let dir = own_cgroup_v2()?.join(format!("las-{slug}"));
    std::fs::create_dir_all(&dir).ok()?;
    if let Some(m) = limits.memory_bytes {
        std::fs::write(dir.join("memory.max"), m.to_string()).ok()?;
    }
    if let Some(c) = limits.cpus {
        let period = 100_000u64;
        let quota = ((c * period as f64) as u64).max(1000);
        std::fs::write(dir.join("cpu.max"), format!("{quota} {period}")).ok()?;
    }
    Some(dir)
}

/// Moves `pid` into the cgroup.
pub fn join_cgroup(dir: &Path, pid: u32) -> std::io::Result<()> {
    std::fs::write(dir.join("cgroup.procs"), pid.to_string())
}

/// Removes an (empty) cgroup created by `prepare_cgroup`.
pub fn remove_cgroup(slug: &str) {
    if let Some(dir) = own_cgroup_v2() {
        let _ = std::fs::remove_dir(dir.join(format!("las-{slug}")));
    }
}

/// Installs rlimits in the child before exec (used when no cgroup could be made).
pub fn apply_rlimits(cmd: &mut tokio::process::Command, limits: &Limits) -> Applied {
    let Some(bytes) = limits.memory_bytes else {
        return if limits.cpus.is_some() {
            Applied::Rlimit {
                address_space: None,
                cpus_ignored: true,
            }
        } else {
            Applied::None
        };
    };
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
    Applied::Rlimit {
        address_space: Some(bytes),
        cpus_ignored: limits.cpus.is_some(),
    }
}
