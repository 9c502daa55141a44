//! The built-in llama.cpp engine: one native process that loads a GGUF and serves an
//! OpenAI-compatible API (`lasctl engine llama`).
//!
//! The process binds its port first, answers `/health` with 503 while the model loads, then 200.
//! All inference runs on one dedicated OS thread ([`worker`]) that owns the llama.cpp model and
//! context; the HTTP side ([`server`]) talks to it over channels.
//!
//! # Threads
//! ggml's worker threads spin while they wait for work, so running more decode threads than the
//! cores the process may use makes decoding thousands of times slower (measured: 2,600x on a 2-core
//! machine with llama.cpp's default of 4). [`default_threads`] therefore counts the cores this
//! process may really use, and the engine never runs more than one set of decode threads: every
//! slot is decoded in the same llama.cpp context, in one batch (see [`worker`]).
//!
//! The whole module compiles without the `llama` feature so that the CLI can say the engine was not
//! built in; only [`serve`] needs llama.cpp.

#[cfg(feature = "llama")]
mod metrics;
#[cfg(feature = "llama")]
mod openai;
#[cfg(feature = "llama")]
mod server;
pub mod settings;
pub mod text;
#[cfg(feature = "llama")]
mod worker;

use std::net::IpAddr;
use std::path::PathBuf;

/// How to run the engine. Built by `lasctl engine llama` (and, through it, the runtime for
/// `engine: {type: llama}` Modules).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The GGUF file to serve.
    pub model: PathBuf,
    /// The model id reported by `/v1/models` and accepted in requests; default: the file stem.
    pub model_name: Option<String>,
    pub host: IpAddr,
    /// 0 lets the OS choose; the chosen port is printed on stdout.
    pub port: u16,
    /// Context length per slot, in tokens; 0 = the model's training context (capped at 4096).
    pub ctx: u32,
    /// Decode threads; 0 = [`default_threads`].
    pub threads: u32,
    /// Layers offloaded to a GPU; negative = all.
    pub gpu_layers: i32,
    /// Requests decoded at the same time.
    pub parallel: u32,
    /// Requests that may wait for a slot; one more gets 503.
    pub queue: u32,
}

impl EngineConfig {
    /// The configuration with the defaults of `lasctl engine llama --model PATH`.
    pub fn new(model: PathBuf) -> Self {
        EngineConfig {
            model,
            model_name: None,
            host: IpAddr::from([127, 0, 0, 1]),
            port: 0,
            ctx: 0,
            threads: 0,
            gpu_layers: 0,
            parallel: 1,
            queue: 16,
        }
    }

    /// The id clients use for this model.
    pub fn model_id(&self) -> String {
        self.model_name.clone().unwrap_or_else(|| {
            self.model
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".to_owned())
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(
        "the llama engine was not built into this lasctl (rebuild with `cargo build --features llama`)"
    )]
    NotBuiltIn,
    #[error("invalid engine setting: {0}")]
    Config(String),
    #[error("cannot read model {path}: {source}")]
    ModelFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot load model {path}: llama.cpp rejected it ({reason}); is it a valid GGUF of a supported architecture?"
    )]
    ModelLoad { path: PathBuf, reason: String },
    #[error("cannot create a llama.cpp context: {0}")]
    Context(String),
    #[error("cannot initialise llama.cpp: {0}")]
    Backend(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("engine i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("the inference thread stopped unexpectedly")]
    WorkerDied,
}

/// Runs the engine until SIGTERM or SIGINT: binds, prints `listening on http://HOST:PORT` on
/// stdout, loads the model (503 on `/health` meanwhile), prints `ready`, serves.
///
/// # Guarantees
/// Returns `Ok(())` only after a graceful shutdown: the listener closed, in-flight requests finished
/// (or cancelled after a grace period), the model freed.
#[cfg(feature = "llama")]
pub fn serve(config: EngineConfig) -> Result<(), EngineError> {
    server::serve(config)
}

#[cfg(not(feature = "llama"))]
pub fn serve(_config: EngineConfig) -> Result<(), EngineError> {
    Err(EngineError::NotBuiltIn)
}

/// The number of decode threads to use by default: the physical cores this process may use.
///
/// `std::thread::available_parallelism` already respects `sched_getaffinity` and the cgroup v2
/// `cpu.max` quota (and cgroup v1 `cpu.cfs_quota_us`); it counts logical CPUs, so it is further
/// capped by the number of physical cores (hyper-threads share execution units, and ggml's
/// spinning threads on sibling hyper-threads slow each other down).
pub fn default_threads() -> u32 {
    let allowed = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let physical = sysinfo::System::physical_core_count().unwrap_or(allowed);
    let quota = cgroup_cpu_quota().unwrap_or(usize::MAX);
    allowed.min(physical).min(quota).max(1) as u32
}

/// The cgroup v2 `cpu.max` quota of this process, in whole CPUs (rounded up), if one is set.
/// Checked here as well as in the standard library so that the figure is visible and testable.
fn cgroup_cpu_quota() -> Option<usize> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    let path = format!("/sys/fs/cgroup{}/cpu.max", rel.trim_end_matches('/'));
    let text = std::fs::read_to_string(path)
        .or_else(|_| std::fs::read_to_string("/sys/fs/cgroup/cpu.max"))
        .ok()?;
    parse_cpu_max(&text)
}

/// Parses cgroup v2 `cpu.max` ("max 100000" or "150000 100000") into whole CPUs, rounded up.
pub fn parse_cpu_max(text: &str) -> Option<usize> {
    let mut parts = text.split_whitespace();
    let quota: u64 = parts.next()?.parse().ok()?;
    let period: u64 = parts.next()?.parse().ok()?;
    if period == 0 {
        return None;
    }
    Some(quota.div_ceil(period).max(1) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_max_parses_quota_and_unlimited() {
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("200000 100000\n"), Some(2));
        assert_eq!(parse_cpu_max("150000 100000"), Some(2));
        assert_eq!(parse_cpu_max("50000 100000"), Some(1));
        assert_eq!(parse_cpu_max("garbage"), None);
    }

    #[test]
    fn default_threads_is_within_available_parallelism() {
        let n = default_threads();
        let avail = std::thread::available_parallelism().unwrap().get() as u32;
        assert!(n >= 1 && n <= avail, "{n} threads, {avail} available");
    }

    #[test]
    fn model_id_defaults_to_file_stem() {
        let c = EngineConfig::new(PathBuf::from("/m/tiny.gguf"));
        assert_eq!(c.model_id(), "tiny");
    }
}
