//! The hardware profile: what this machine has, detected live or read from a profile file.
//!
//! The profile is plain data (serde, camelCase) so that policies can evaluate predicates over its
//! serialized JSON (see `control::policy` for the fact names) and so that `lasctl hardware -o yaml`
//! prints exactly the format that `LAS_HARDWARE_PROFILE=FILE` reads back.
//!
//! # Guarantees
//! - [`LiveProbe::probe`] never fails because a GPU library is missing: no NVML (no driver, no
//!   library, no permission) means no NVIDIA GPUs and a line in [`HardwareProfile::notes`] saying why.
//! - cgroup v2 limits are honoured: `cpu.usableCores` and `memory.usableBytes` are the figures the
//!   rest of the system plans with; the raw machine figures stay beside them.
//! - Lists are sorted (disks by mount point, GPUs by index), so the same machine gives the same bytes.
//!
//! # Caveats
//! - AMD and Intel GPUs are best effort from `/sys/class/drm` (VRAM only where the amdgpu driver
//!   exposes `mem_info_vram_*`); names are the PCI ids there.
//! - `memory.availableBytes` and GPU `memoryFreeBytes` are snapshots.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The environment variable that replaces detection with a profile file.
pub const PROFILE_ENV: &str = "LAS_HARDWARE_PROFILE";

#[derive(Debug, thiserror::Error)]
pub enum HardwareError {
    #[error("cannot detect {what}: {message}; set LAS_HARDWARE_PROFILE to a profile file instead")]
    Detect { what: &'static str, message: String },
    #[error("cannot read hardware profile {path}: {source}")]
    ReadProfile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {field}: {message}")]
    ParseProfile {
        path: PathBuf,
        line: usize,
        column: usize,
        field: String,
        message: String,
    },
}

/// Where a profile came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProfileSource {
    /// `live` (detected on this machine) or `file` (read from `LAS_HARDWARE_PROFILE`).
    #[serde(rename = "type")]
    pub type_: SourceType,
    /// The profile file, for `file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Host name of the machine the profile describes (the captured machine for files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceType {
    Live,
    File,
}

/// Everything the policies and the planner know about the machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HardwareProfile {
    /// Always `localaistack.io/v1alpha1`.
    pub api_version: String,
    /// Always `HardwareProfile`.
    pub kind: String,
    pub source: ProfileSource,
    pub cpu: CpuInfo,
    pub memory: MemoryInfo,
    #[serde(default)]
    pub disks: Vec<DiskInfo>,
    pub os: OsInfo,
    #[serde(default)]
    pub gpus: Vec<GpuInfo>,
    /// Why something could not be detected (e.g. "NVML unavailable: ..."), and failed plugin
    /// hardware probes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Facts added by plugin hardware probes: plugin → probe → fact → value (a scalar or a list
    /// of scalars). Policies read them as `plugins.<plugin>.<probe>.<fact>`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub plugins: BTreeMap<String, BTreeMap<String, BTreeMap<String, serde_json::Value>>>,
    /// The tier chosen for this profile, as `lasctl hardware` prints it. Informational: it is
    /// recomputed from the policies and ignored when a profile file is read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CpuInfo {
    pub model: String,
    /// `x86_64`, `aarch64`, ...
    pub arch: String,
    pub physical_cores: u32,
    pub logical_cores: u32,
    /// Cores this process may use: the cgroup v2 `cpu.max` quota when lower, else logical cores.
    pub usable_cores: f64,
    /// The cgroup v2 quota in cores, when one is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_quota_cores: Option<f64>,
    /// Instruction-set features relevant to inference: `avx`, `avx2`, `avx512f`, `fma`, `f16c`, `neon`.
    #[serde(default)]
    pub features: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MemoryInfo {
    /// Installed memory (MemTotal).
    pub total_bytes: u64,
    /// Memory available now (MemAvailable).
    pub available_bytes: u64,
    /// What this process may use: min(total, cgroup memory.max).
    pub usable_bytes: u64,
    /// The cgroup v2 `memory.max`, when one is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_limit_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DiskInfo {
    pub mount: String,
    #[serde(default)]
    pub device: String,
    #[serde(default)]
    pub filesystem: String,
    pub total_bytes: u64,
    pub free_bytes: u64,
    /// From `/sys/block/*/queue/rotational`; absent when unknown (overlay, network, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotational: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OsInfo {
    /// e.g. `Debian GNU/Linux`.
    pub name: String,
    #[serde(default)]
    pub version: String,
    pub kernel: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GpuVendor {
    Nvidia,
    Amd,
    Intel,
    Other,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GpuInfo {
    /// Index as the vendor library numbers it (CUDA/NVML order for NVIDIA).
    pub index: u32,
    pub vendor: GpuVendor,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    pub memory_total_bytes: u64,
    pub memory_free_bytes: u64,
    /// e.g. `8.9`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_capability: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver_version: Option<String>,
    /// e.g. `12.4`: the CUDA version the driver supports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cuda_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pci_bus_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcie: Option<PcieLink>,
    /// PCI bus ids of the devices reachable over active NVLinks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nvlink_peers: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PcieLink {
    pub generation: u32,
    pub width: u32,
}

impl HardwareProfile {
    /// The profile as the JSON value predicates are evaluated over.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("profiles always serialize");
        if let Some(m) = v.as_object_mut() {
            m.remove("tier");
        }
        v
    }

    /// The profile as YAML, in the format `LAS_HARDWARE_PROFILE` reads.
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).expect("profiles always serialize")
    }

    /// Parses a profile file's text. The source becomes `file` with `path`; the host is kept.
    pub fn from_yaml(path: &Path, text: &str) -> Result<HardwareProfile, HardwareError> {
        let de = serde_yaml::Deserializer::from_str(text);
        let mut p: HardwareProfile = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner();
            let (line, column) = inner
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((1, 1));
            let mut message = inner.to_string();
            if let Some(i) = message.rfind(" at line ") {
                message.truncate(i);
            }
            HardwareError::ParseProfile {
                path: path.to_path_buf(),
                line,
                column,
                field,
                message,
            }
        })?;
        let bad = |field: &str, message: String| HardwareError::ParseProfile {
            path: path.to_path_buf(),
            line: 1,
            column: 1,
            field: field.into(),
            message,
        };
        if p.api_version != crate::api::API_VERSION {
            return Err(bad(
                "apiVersion",
                format!("expected {}", crate::api::API_VERSION),
            ));
        }
        if p.kind != "HardwareProfile" {
            return Err(bad("kind", "expected HardwareProfile".into()));
        }
        for (i, g) in p.gpus.iter().enumerate() {
            if g.memory_free_bytes > g.memory_total_bytes {
                return Err(bad(
                    &format!("gpus[{i}].memoryFreeBytes"),
                    "is larger than memoryTotalBytes".into(),
                ));
            }
        }
        p.source.type_ = SourceType::File;
        p.source.path = Some(path.display().to_string());
        p.tier = None;
        p.gpus.sort_by_key(|g| g.index);
        Ok(p)
    }

    /// Describes what changed between two profiles of the same machine, for events. Empty when
    /// nothing the planner uses changed (free memory fluctuates and is ignored).
    pub fn changes_since(&self, old: &HardwareProfile) -> Vec<String> {
        let mut out = Vec::new();
        let gib = super::policy::human_bytes;
        if old.memory.total_bytes != self.memory.total_bytes {
            out.push(format!(
                "memory changed from {} to {}",
                gib(old.memory.total_bytes),
                gib(self.memory.total_bytes)
            ));
        }
        if old.memory.usable_bytes != self.memory.usable_bytes
            && old.memory.total_bytes == self.memory.total_bytes
        {
            out.push(format!(
                "usable memory (cgroup limit) changed from {} to {}",
                gib(old.memory.usable_bytes),
                gib(self.memory.usable_bytes)
            ));
        }
        if old.cpu.logical_cores != self.cpu.logical_cores
            || old.cpu.usable_cores != self.cpu.usable_cores
        {
            out.push(format!(
                "CPU cores changed from {} ({} usable) to {} ({} usable)",
                old.cpu.logical_cores,
                old.cpu.usable_cores,
                self.cpu.logical_cores,
                self.cpu.usable_cores
            ));
        }
        let key = |g: &GpuInfo| {
            g.uuid
                .clone()
                .unwrap_or_else(|| format!("index {}", g.index))
        };
        for g in &old.gpus {
            if !self.gpus.iter().any(|n| key(n) == key(g)) {
                out.push(format!("GPU {} ({}, {}) is gone", g.index, g.name, key(g)));
            }
        }
        for g in &self.gpus {
            match old.gpus.iter().find(|o| key(o) == key(g)) {
                None => out.push(format!(
                    "GPU {} ({}, {}, {}) appeared",
                    g.index,
                    g.name,
                    key(g),
                    gib(g.memory_total_bytes)
                )),
                Some(o) if o.memory_total_bytes != g.memory_total_bytes => out.push(format!(
                    "GPU {} memory changed from {} to {}",
                    g.index,
                    gib(o.memory_total_bytes),
                    gib(g.memory_total_bytes)
                )),
                Some(_) => {}
            }
        }
        out
    }
}

/// The seam between hardware detection and everything that decides with it.
pub trait HardwareProbe {
    /// Returns the profile of the machine this probe describes.
    fn probe(&self) -> Result<HardwareProfile, HardwareError>;
}

/// Detection on the machine itself (sysinfo, /proc, /sys, NVML).
#[derive(Debug, Clone, Default)]
pub struct LiveProbe {
    /// The cgroup v2 mount; `/sys/fs/cgroup` by default.
    pub cgroup_root: Option<PathBuf>,
}

/// A profile read from a file, in the format `lasctl hardware -o yaml` prints.
#[derive(Debug, Clone)]
pub struct ProfileFile {
    pub path: PathBuf,
}

impl HardwareProbe for ProfileFile {
    fn probe(&self) -> Result<HardwareProfile, HardwareError> {
        let text =
            std::fs::read_to_string(&self.path).map_err(|source| HardwareError::ReadProfile {
                path: self.path.clone(),
                source,
            })?;
        HardwareProfile::from_yaml(&self.path, &text)
    }
}

/// The probe the environment asks for: [`ProfileFile`] when `LAS_HARDWARE_PROFILE` is set and
/// not empty, else [`LiveProbe`].
pub fn probe_from_env() -> Box<dyn HardwareProbe> {
    match std::env::var_os(PROFILE_ENV).filter(|v| !v.is_empty()) {
        Some(p) => Box::new(ProfileFile {
            path: PathBuf::from(p),
        }),
        None => Box::new(LiveProbe::default()),
    }
}

impl HardwareProbe for LiveProbe {
    fn probe(&self) -> Result<HardwareProfile, HardwareError> {
        let _span = tracing::debug_span!("hardware_probe").entered();
        let mut notes = Vec::new();
        let cgroup_root = self
            .cgroup_root
            .clone()
            .unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup"));
        let cg = read_cgroup_limits(&cgroup_root);
        let cpu = probe_cpu(cg.cpu_quota_cores)?;
        let memory = probe_memory(cg.memory_max)?;
        let disks = probe_disks(&mut notes);
        let os = OsInfo {
            name: sysinfo::System::name().unwrap_or_else(|_| std::env::consts::OS.to_string()),
            version: sysinfo::System::os_version().unwrap_or_default(),
            kernel: sysinfo::System::kernel_version().unwrap_or_default(),
        };
        let mut gpus = probe_nvidia(&mut notes);
        let next = gpus.len() as u32;
        gpus.extend(probe_drm(Path::new("/sys/class/drm"), next, &mut notes));
        Ok(HardwareProfile {
            api_version: crate::api::API_VERSION.into(),
            kind: "HardwareProfile".into(),
            source: ProfileSource {
                type_: SourceType::Live,
                path: None,
                host: sysinfo::System::host_name().ok(),
            },
            cpu,
            memory,
            disks,
            os,
            gpus,
            notes,
            plugins: BTreeMap::new(),
            tier: None,
        })
    }
}

#[derive(Debug, Default, PartialEq)]
struct CgroupLimits {
    cpu_quota_cores: Option<f64>,
    memory_max: Option<u64>,
}

/// Reads cgroup v2 `cpu.max` and `memory.max` for this process's cgroup and its ancestors; the
/// tightest limit wins (a parent's limit binds its children).
fn read_cgroup_limits(root: &Path) -> CgroupLimits {
    let rel = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("0::").map(|p| p.trim().to_string()))
        })
        .unwrap_or_else(|| "/".into());
    let mut dirs = Vec::new();
    let mut p = PathBuf::from(rel.trim_start_matches('/'));
    loop {
        dirs.push(root.join(&p));
        if !p.pop() {
            break;
        }
    }
    let mut out = CgroupLimits::default();
    for d in dirs {
        if let Ok(s) = std::fs::read_to_string(d.join("cpu.max"))
            && let Some(q) = parse_cpu_max(&s)
        {
            out.cpu_quota_cores = Some(out.cpu_quota_cores.map_or(q, |c: f64| c.min(q)));
        }
        if let Ok(s) = std::fs::read_to_string(d.join("memory.max"))
            && let Ok(m) = s.trim().parse::<u64>()
        {
            out.memory_max = Some(out.memory_max.map_or(m, |c| c.min(m)));
        }
    }
    out
}

/// `max 100000` → None; `150000 100000` → 1.5 cores.
fn parse_cpu_max(s: &str) -> Option<f64> {
    let mut it = s.split_whitespace();
    let quota = it.next()?;
    let period: f64 = it.next().and_then(|p| p.parse().ok()).unwrap_or(100_000.0);
    if quota == "max" || period <= 0.0 {
        return None;
    }
    quota.parse::<f64>().ok().map(|q| q / period)
}

fn probe_cpu(quota: Option<f64>) -> Result<CpuInfo, HardwareError> {
    use sysinfo::{CpuRefreshKind, RefreshKind, System};
    let sys =
        System::new_with_specifics(RefreshKind::nothing().with_cpu(CpuRefreshKind::nothing()))
            .map_err(|e| HardwareError::Detect {
                what: "the CPU",
                message: e.to_string(),
            })?;
    let logical = sys.cpus().len().max(1) as u32;
    let model = sys
        .cpus()
        .first()
        .map(|c| c.brand().trim().to_string())
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| "unknown".into());
    let physical = System::physical_core_count()
        .map(|n| n as u32)
        .unwrap_or(logical);
    // The scheduler affinity mask can be narrower than the machine (taskset, cpusets).
    let affinity = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(logical);
    let mut usable = affinity.min(logical) as f64;
    if let Some(q) = quota {
        usable = usable.min(q);
    }
    Ok(CpuInfo {
        model,
        arch: std::env::consts::ARCH.to_string(),
        physical_cores: physical,
        logical_cores: logical,
        usable_cores: usable,
        cgroup_quota_cores: quota,
        features: cpu_features(),
    })
}

fn cpu_features() -> Vec<String> {
    #[allow(unused_mut)]
    let mut f: Vec<String> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        for (name, on) in [
            ("avx", std::arch::is_x86_feature_detected!("avx")),
            ("avx2", std::arch::is_x86_feature_detected!("avx2")),
            ("avx512f", std::arch::is_x86_feature_detected!("avx512f")),
            ("f16c", std::arch::is_x86_feature_detected!("f16c")),
            ("fma", std::arch::is_x86_feature_detected!("fma")),
        ] {
            if on {
                f.push(name.into());
            }
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("neon") {
            f.push("neon".into());
        }
    }
    f
}

fn probe_memory(cgroup_max: Option<u64>) -> Result<MemoryInfo, HardwareError> {
    let mut sys = sysinfo::System::new().map_err(|e| HardwareError::Detect {
        what: "memory",
        message: e.to_string(),
    })?;
    sys.refresh_memory();
    let total = sys.total_memory();
    let usable = cgroup_max.map_or(total, |m| m.min(total));
    Ok(MemoryInfo {
        total_bytes: total,
        available_bytes: sys.available_memory().min(usable),
        usable_bytes: usable,
        cgroup_limit_bytes: cgroup_max,
    })
}

fn probe_disks(notes: &mut Vec<String>) -> Vec<DiskInfo> {
    let disks = match sysinfo::Disks::new_with_refreshed_list() {
        Ok(d) => d,
        Err(e) => {
            notes.push(format!("disks could not be listed: {e}"));
            return Vec::new();
        }
    };
    let mut out: Vec<DiskInfo> = disks
        .iter()
        .map(|d| {
            let device = d.name().to_string_lossy().into_owned();
            DiskInfo {
                mount: d.mount_point().display().to_string(),
                rotational: rotational(&device),
                device,
                filesystem: d.file_system().to_string_lossy().into_owned(),
                total_bytes: d.total_space(),
                free_bytes: d.available_space(),
            }
        })
        .collect();
    out.sort_by(|a, b| a.mount.cmp(&b.mount));
    out.dedup_by(|a, b| a.mount == b.mount);
    out
}

/// `/dev/sda1` → `/sys/block/sda/queue/rotational`.
fn rotational(device: &str) -> Option<bool> {
    let name = Path::new(device).file_name()?.to_str()?;
    let class = Path::new("/sys/class/block").join(name);
    let real = std::fs::canonicalize(&class).ok()?;
    // A partition's sysfs directory sits inside its disk's and has a `partition` file.
    let disk = if real.join("partition").exists() {
        real.parent()?.to_path_buf()
    } else {
        real
    };
    let disk_name = disk.file_name()?.to_str()?;
    let s = std::fs::read_to_string(
        Path::new("/sys/block")
            .join(disk_name)
            .join("queue/rotational"),
    )
    .ok()?;
    match s.trim() {
        "1" => Some(true),
        "0" => Some(false),
        _ => None,
    }
}

fn probe_nvidia(notes: &mut Vec<String>) -> Vec<GpuInfo> {
    let nvml = match nvml_wrapper::Nvml::init() {
        Ok(n) => n,
        Err(e) => {
            notes.push(format!(
                "NVML unavailable ({e}): no NVIDIA GPUs detected; install the NVIDIA driver (libnvidia-ml.so.1) to use them"
            ));
            return Vec::new();
        }
    };
    let driver = nvml.sys_driver_version().ok();
    let cuda = nvml.sys_cuda_driver_version().ok().map(|v| {
        format!(
            "{}.{}",
            nvml_wrapper::cuda_driver_version_major(v),
            nvml_wrapper::cuda_driver_version_minor(v)
        )
    });
    let count = match nvml.device_count() {
        Ok(c) => c,
        Err(e) => {
            notes.push(format!("NVML could not count devices: {e}"));
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for i in 0..count {
        let dev = match nvml.device_by_index(i) {
            Ok(d) => d,
            Err(e) => {
                notes.push(format!("NVIDIA GPU {i} could not be opened: {e}"));
                continue;
            }
        };
        let mem = dev.memory_info().ok();
        let mut peers = Vec::new();
        // NVML_NVLINK_MAX_LINKS is 18 on current hardware.
        for link in 0..18 {
            let l = dev.link_wrapper_for(link);
            if l.is_active().unwrap_or(false)
                && let Ok(pci) = l.remote_pci_info()
            {
                peers.push(pci.bus_id);
            }
        }
        peers.sort();
        peers.dedup();
        out.push(GpuInfo {
            index: i,
            vendor: GpuVendor::Nvidia,
            name: dev.name().unwrap_or_else(|_| "NVIDIA GPU".into()),
            uuid: dev.uuid().ok(),
            memory_total_bytes: mem.as_ref().map_or(0, |m| m.total),
            memory_free_bytes: mem.as_ref().map_or(0, |m| m.free),
            compute_capability: dev
                .cuda_compute_capability()
                .ok()
                .map(|c| format!("{}.{}", c.major, c.minor)),
            driver_version: driver.clone(),
            cuda_version: cuda.clone(),
            pci_bus_id: dev.pci_info().ok().map(|p| p.bus_id),
            pcie: match (dev.current_pcie_link_gen(), dev.current_pcie_link_width()) {
                (Ok(generation), Ok(width)) => Some(PcieLink { generation, width }),
                _ => None,
            },
            nvlink_peers: peers,
        });
    }
    out
}

/// AMD and Intel GPUs from `/sys/class/drm/card*/device` (NVIDIA cards are left to NVML).
fn probe_drm(root: &Path, first_index: u32, notes: &mut Vec<String>) -> Vec<GpuInfo> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut cards: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("card") && !n.contains('-'))
        })
        .collect();
    cards.sort();
    let read = |p: PathBuf| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
    };
    let mut out = Vec::new();
    for card in cards {
        let dev = card.join("device");
        let Some(vendor_id) = read(dev.join("vendor")) else {
            continue;
        };
        let vendor = match vendor_id.as_str() {
            "0x1002" => GpuVendor::Amd,
            "0x8086" => GpuVendor::Intel,
            _ => continue,
        };
        let device_id = read(dev.join("device")).unwrap_or_default();
        let total = read(dev.join("mem_info_vram_total")).and_then(|s| s.parse().ok());
        let used: Option<u64> = read(dev.join("mem_info_vram_used")).and_then(|s| s.parse().ok());
        if total.is_none() {
            notes.push(format!(
                "{} GPU at {} reports no VRAM size (integrated or driver without mem_info_vram_total)",
                if vendor == GpuVendor::Amd { "AMD" } else { "Intel" },
                card.display()
            ));
        }
        let total: u64 = total.unwrap_or(0);
        out.push(GpuInfo {
            index: first_index + out.len() as u32,
            vendor,
            name: format!(
                "{} GPU {vendor_id}:{device_id}",
                if vendor == GpuVendor::Amd {
                    "AMD"
                } else {
                    "Intel"
                }
            ),
            uuid: read(dev.join("unique_id")),
            memory_total_bytes: total,
            memory_free_bytes: total.saturating_sub(used.unwrap_or(0)),
            compute_capability: None,
            driver_version: None,
            cuda_version: None,
            pci_bus_id: std::fs::canonicalize(&dev)
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())),
            pcie: None,
            nvlink_peers: Vec::new(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_max_parsing() {
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("150000 100000\n"), Some(1.5));
        assert_eq!(parse_cpu_max("50000 100000"), Some(0.5));
    }

    #[test]
    fn cgroup_limits_from_a_fake_hierarchy() {
        // The process's own cgroup path is unknown here; a root with both files is enough, since
        // the root is always part of the walk.
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("cpu.max"), "200000 100000\n").unwrap();
        std::fs::write(d.path().join("memory.max"), "4294967296\n").unwrap();
        let l = read_cgroup_limits(d.path());
        assert_eq!(l.cpu_quota_cores, Some(2.0));
        assert_eq!(l.memory_max, Some(4 << 30));
    }

    #[test]
    fn drm_amd_card_is_read() {
        let d = tempfile::tempdir().unwrap();
        let dev = d.path().join("card0/device");
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(dev.join("vendor"), "0x1002\n").unwrap();
        std::fs::write(dev.join("device"), "0x744c\n").unwrap();
        std::fs::write(dev.join("mem_info_vram_total"), "25753026560\n").unwrap();
        std::fs::write(dev.join("mem_info_vram_used"), "753026560\n").unwrap();
        std::fs::create_dir_all(d.path().join("card0-DP-1")).unwrap();
        let mut notes = Vec::new();
        let g = probe_drm(d.path(), 0, &mut notes);
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].vendor, GpuVendor::Amd);
        assert_eq!(g[0].memory_free_bytes, 25_000_000_000);
    }
}
