//! The engine checks its own settings against the model and the machine before it loads anything,
//! as the daemon's admission does for a Module: a context the model was not trained for, more
//! decode threads than the process may use, or a context whose KV cache does not fit in memory are
//! refused with a sentence, instead of growing until the kernel kills the process.

use super::{EngineConfig, EngineError};
use crate::artifacts::estimate::{ModelFacts, Placement, estimate};
use crate::artifacts::gguf::read_header;

/// Parallel slots one engine serves at most.
pub const MAX_PARALLEL: u32 = 64;
/// Requests that may wait for a slot, at most.
pub const MAX_QUEUE: u32 = 4096;
/// The largest default context per slot when `--ctx 0`.
pub const DEFAULT_CTX_CAP: u32 = 4096;

/// What the machine offers the engine.
#[derive(Debug, Clone, Copy)]
pub struct Machine {
    /// CPUs this process may run on (affinity and cgroup quota included).
    pub cpus: u32,
    /// Memory available to new allocations, in bytes.
    pub available_ram: u64,
}

impl Machine {
    /// The live figures; memory that cannot be read counts as unlimited (the check is skipped).
    pub fn detect() -> Self {
        let available_ram = sysinfo::System::new()
            .map(|mut sys| {
                sys.refresh_memory();
                sys.available_memory()
            })
            .unwrap_or(u64::MAX);
        Machine {
            cpus: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            available_ram,
        }
    }
}

/// The settings the engine runs with once checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    pub threads: u32,
    pub ctx_per_slot: u32,
}

fn gib(b: u64) -> String {
    format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
}

/// Checks `config` against the model's header and `machine`.
pub fn check(config: &EngineConfig, machine: Machine) -> Result<Checked, EngineError> {
    let bad = |m: String| Err(EngineError::Config(m));
    if config.parallel == 0 || config.parallel > MAX_PARALLEL {
        return bad(format!(
            "--parallel {} is out of range: use 1 to {MAX_PARALLEL}",
            config.parallel
        ));
    }
    if config.queue > MAX_QUEUE {
        return bad(format!(
            "--queue {} is out of range: use 0 to {MAX_QUEUE}",
            config.queue
        ));
    }
    let threads = match config.threads {
        0 => super::default_threads(),
        t if t > machine.cpus => {
            return bad(format!(
                "--threads {t} is more than the {} CPUs this process may use (ggml's spinning \
                 threads make oversubscription thousands of times slower): use at most {} or 0 for the default",
                machine.cpus, machine.cpus
            ));
        }
        t => t,
    };
    std::fs::metadata(&config.model).map_err(|source| EngineError::ModelFile {
        path: config.model.clone(),
        source,
    })?;
    let header = read_header(&config.model).map_err(|e| EngineError::ModelLoad {
        path: config.model.clone(),
        reason: e.to_string(),
    })?;
    let trained = header
        .arch_u64("context_length")
        .map(|c| c.min(u64::from(u32::MAX)) as u32)
        .filter(|c| *c > 0);
    let ctx_per_slot = match (config.ctx, trained) {
        (0, Some(t)) => t.min(DEFAULT_CTX_CAP),
        (0, None) => DEFAULT_CTX_CAP,
        (c, Some(t)) if c > t => {
            return bad(format!(
                "--ctx {c} is over the {t} tokens this model was trained for: use at most {t} (or 0 for min({t}, {DEFAULT_CTX_CAP}))"
            ));
        }
        (c, _) => c,
    };
    if let Ok(facts) = ModelFacts::from_header(&header) {
        let has_gpu = cfg!(any(feature = "cuda", feature = "vulkan", feature = "metal"))
            && config.gpu_layers != 0;
        let placement = Placement {
            n_ctx: ctx_per_slot.saturating_mul(config.parallel),
            n_gpu_layers: if config.gpu_layers < 0 {
                u32::MAX
            } else {
                config.gpu_layers as u32
            },
            n_parallel: config.parallel,
            has_gpu,
            ..Placement::cpu(ctx_per_slot)
        };
        let need = estimate(&facts, &placement).ram();
        if need > machine.available_ram {
            return bad(format!(
                "serving {} with {ctx_per_slot} tokens x {} slots needs about {} of RAM, and {} is available: \
                 lower --ctx or --parallel",
                config.model.display(),
                config.parallel,
                gib(need),
                gib(machine.available_ram)
            ));
        }
    }
    Ok(Checked {
        threads,
        ctx_per_slot,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifacts::testmodel::{TestModelConfig, generate};

    fn model() -> (tempfile::TempDir, EngineConfig) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.gguf");
        generate(&path, &TestModelConfig::tiny()).unwrap();
        (dir, EngineConfig::new(path))
    }

    const BIG: Machine = Machine {
        cpus: 2,
        available_ram: 16 << 30,
    };

    #[test]
    fn absurd_settings_are_refused_with_a_sentence() {
        let (_d, c) = model();
        let cases = [
            (
                EngineConfig {
                    ctx: 2_000_000_000,
                    ..c.clone()
                },
                "trained for",
            ),
            (
                EngineConfig {
                    threads: 1000,
                    ..c.clone()
                },
                "more than the 2 CPUs",
            ),
            (
                EngineConfig {
                    parallel: 0,
                    ..c.clone()
                },
                "--parallel 0",
            ),
            (
                EngineConfig {
                    parallel: 1000,
                    ..c.clone()
                },
                "--parallel 1000",
            ),
            (
                EngineConfig {
                    queue: 1 << 20,
                    ..c.clone()
                },
                "--queue",
            ),
        ];
        for (cfg, want) in cases {
            let e = check(&cfg, BIG).unwrap_err().to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
    }

    #[test]
    fn a_context_that_does_not_fit_in_memory_is_refused() {
        let (_d, c) = model();
        let small = Machine {
            cpus: 2,
            available_ram: 1 << 20,
        };
        let e = check(&c, small).unwrap_err().to_string();
        assert!(e.contains("of RAM"), "{e}");
    }

    #[test]
    fn defaults_pass() {
        let (_d, c) = model();
        let ok = check(&c, BIG).unwrap();
        assert!(ok.threads >= 1 && ok.ctx_per_slot >= 1);
    }
}
