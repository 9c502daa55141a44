//! The WASM sandbox: runs plugin code as pure compute, with only what a grant links.
//!
//! A plugin is a WebAssembly module that follows the guest ABI in `docs/plugin-abi.md`: it exports
//! `memory`, `las_alloc(len) -> ptr` and entry functions `(ptr, len) -> i64` that take UTF-8 JSON in
//! and give UTF-8 JSON back. [`Engine::compile`] checks a module once (valid, no start function, the
//! exports the ABI needs, every import known and granted); [`Module::call`] runs one entry in a
//! fresh instance under [`Limits`].
//!
//! The engine sits behind the [`Engine`] and [`Module`] traits so a JIT can replace the interpreter
//! ([`WasmiEngine`]) without touching the callers. Nothing here reads files, opens sockets or
//! spawns anything; the only ways out of a guest are the host functions of [`Capability`], and
//! only the granted ones are linked.
//!
//! # Guarantees
//! - A call never affects another: each call instantiates the module in a new store, so a trap or
//!   a corrupted heap poisons only that call.
//! - A call ends: fuel bounds the instructions, [`Limits::timeout`] bounds the wall-clock time
//!   even when the fuel is large, linear memory is capped, and input, output and logs are sized
//!   before they are copied.
//! - Every refusal is a [`SandboxError`] that names the limit or the import involved.
//!
//! # Caveats
//! - The interpreter's own value stack (up to about 8 MiB) is not counted in
//!   [`Limits::memory_bytes`]; recursion deeper than the engine's limit traps.
//! - A call runs on the caller's thread and blocks it for at most about `timeout`; async callers
//!   should use `spawn_blocking`.

mod abi;
mod wasmi_engine;

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use abi::{ALLOC_EXPORT, HOST_MODULE, HostImport, MEMORY_EXPORT, host_imports, pack, unpack};
pub use wasmi_engine::WasmiEngine;

/// What one call may use. Checked per call; the defaults suit a hook on the `/v1` path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Instructions (roughly one unit of fuel each; bulk memory operations cost per byte),
    /// counted across `las_alloc` and the entry.
    pub fuel: u64,
    /// The most bytes the guest's linear memory may hold, its declared initial size included.
    pub memory_bytes: usize,
    /// Wall-clock time for the whole call: instantiation, copying in, running, copying out.
    #[serde(with = "duration_ms")]
    pub timeout: Duration,
    /// The most bytes of serialized JSON input.
    pub max_input_bytes: usize,
    /// The most bytes of JSON output; log lines are capped by the same figure in total.
    pub max_output_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            fuel: 100_000_000,
            memory_bytes: 16 << 20,
            timeout: Duration::from_secs(1),
            max_input_bytes: 1 << 20,
            max_output_bytes: 1 << 20,
        }
    }
}

mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis().try_into().unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// A host function set a plugin may be granted. Without a grant its functions are not linked at
/// all, and a module that imports one is refused with [`SandboxError::UngrantedImport`].
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    /// `las.log(ptr, len)`: append a line to the call's logs.
    Log,
    /// `las.clock_ms() -> i64`: the wall-clock time in milliseconds since the Unix epoch.
    Clock,
    /// `las.random_u64() -> i64`: 64 random bits from the operating system.
    Random,
    /// Links no host function: the host hands the plugin content, not only metadata (an event
    /// sink then sees each event's message).
    Content,
}

impl Capability {
    /// Every capability, in order.
    pub const ALL: [Capability; 4] = [
        Capability::Log,
        Capability::Clock,
        Capability::Random,
        Capability::Content,
    ];

    /// The name used in manifests, grants and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Log => "log",
            Capability::Clock => "clock",
            Capability::Random => "random",
            Capability::Content => "content",
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown capability name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown capability {0:?}: expected one of log, clock, random, content")]
pub struct UnknownCapability(pub String);

impl FromStr for Capability {
    type Err = UnknownCapability;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Capability::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownCapability(s.to_string()))
    }
}

/// The capabilities a module is granted (the intersection of what its manifest requests and what
/// its activation grants is computed by the caller; the sandbox links exactly this set).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Grants(BTreeSet<Capability>);

impl Grants {
    /// No capability: pure compute.
    pub fn none() -> Self {
        Self::default()
    }

    /// What both sets hold: the effective grants of what a manifest requests and an activation
    /// grants.
    pub fn intersection(&self, other: &Grants) -> Grants {
        Grants(self.0.intersection(&other.0).copied().collect())
    }

    /// What `self` holds that `other` does not, e.g. the requests a user has not granted.
    pub fn difference(&self, other: &Grants) -> Grants {
        Grants(self.0.difference(&other.0).copied().collect())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, c: Capability) -> bool {
        self.0.contains(&c)
    }

    pub fn iter(&self) -> impl Iterator<Item = Capability> + '_ {
        self.0.iter().copied()
    }
}

impl FromIterator<Capability> for Grants {
    fn from_iter<I: IntoIterator<Item = Capability>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl fmt::Display for Grants {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let names: Vec<&str> = self.iter().map(Capability::as_str).collect();
        f.write_str(&names.join(","))
    }
}

/// What a finished call gives back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallOutcome {
    /// The entry's JSON output.
    pub output: serde_json::Value,
    /// Fuel consumed by `las_alloc` and the entry together.
    pub fuel_used: u64,
    /// Lines the guest wrote with `las.log` (only when granted), in order, lossily decoded.
    pub logs: Vec<String>,
}

/// Why a module was refused or a call failed. Compile-time variants (`InvalidModule`,
/// `UngrantedImport`, `UnknownImport`, `MissingExport`, `BadExport`) mean the module can never run
/// under these grants; the others concern one call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SandboxError {
    #[error("invalid wasm module: {0}")]
    InvalidModule(String),
    #[error(
        "the module imports {module}.{name}, which needs the \"{capability}\" capability: grant \
         \"{capability}\" in the activation, or use a build of the plugin that does not import it"
    )]
    UngrantedImport {
        module: String,
        name: String,
        capability: Capability,
    },
    #[error(
        "the module imports {module}.{name} ({kind}), which this host does not provide: only \
         functions of module \"las\" are linked (log, clock_ms, random_u64; see docs/plugin-abi.md)"
    )]
    UnknownImport {
        module: String,
        name: String,
        kind: String,
    },
    #[error(
        "the module does not export {0:?}, which the plugin ABI requires (see docs/plugin-abi.md)"
    )]
    MissingExport(String),
    #[error("the module exports {name:?} as {found}, the plugin ABI expects {expected}")]
    BadExport {
        name: String,
        expected: String,
        found: String,
    },
    #[error(
        "the call ran out of fuel after {fuel} units: raise the fuel limit or make the plugin do less work"
    )]
    OutOfFuel { fuel: u64 },
    #[error(
        "the call did not finish within {}ms ({fuel_used} fuel used): raise the timeout or make \
         the plugin do less work", timeout.as_millis()
    )]
    Timeout { timeout: Duration, fuel_used: u64 },
    #[error(
        "the module asked for {requested_bytes} bytes of linear memory, over the limit of \
         {limit_bytes} bytes: raise the memory limit or make the plugin use less"
    )]
    MemoryLimit {
        limit_bytes: usize,
        requested_bytes: usize,
    },
    #[error("the input is {size} bytes, over the limit of {limit} bytes: raise the input limit")]
    InputTooLarge { size: usize, limit: usize },
    #[error(
        "the plugin returned {size} bytes, over the limit of {limit} bytes: raise the output limit \
         or make the plugin return less"
    )]
    OutputTooLarge { size: usize, limit: usize },
    #[error("the plugin trapped: {0}")]
    Trap(String),
    #[error("the plugin's output is not valid: {0}")]
    BadOutput(String),
    /// An `exec` plugin's process failed the call (it exited, broke the line protocol, answered
    /// an error); see `runtime::plugin_exec`.
    #[error("the plugin process failed: {0}")]
    Exec(String),
}

impl SandboxError {
    /// A stable, CamelCase name of the variant, for conditions, events and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            SandboxError::InvalidModule(_) => "InvalidModule",
            SandboxError::UngrantedImport { .. } => "UngrantedImport",
            SandboxError::UnknownImport { .. } => "UnknownImport",
            SandboxError::MissingExport(_) => "MissingExport",
            SandboxError::BadExport { .. } => "BadExport",
            SandboxError::OutOfFuel { .. } => "OutOfFuel",
            SandboxError::Timeout { .. } => "Timeout",
            SandboxError::MemoryLimit { .. } => "MemoryLimit",
            SandboxError::InputTooLarge { .. } => "InputTooLarge",
            SandboxError::OutputTooLarge { .. } => "OutputTooLarge",
            SandboxError::Trap(_) => "Trap",
            SandboxError::BadOutput(_) => "BadOutput",
            SandboxError::Exec(_) => "ExecFailed",
        }
    }

    /// Whether the error concerns the module itself (it can never run under these grants), as
    /// opposed to one call.
    pub fn is_compile_error(&self) -> bool {
        matches!(
            self,
            SandboxError::InvalidModule(_)
                | SandboxError::UngrantedImport { .. }
                | SandboxError::UnknownImport { .. }
                | SandboxError::MissingExport(_)
                | SandboxError::BadExport { .. }
        )
    }
}

/// Compiles plugin bytes into a [`Module`] that can be called many times, concurrently.
pub trait Engine: Send + Sync {
    /// Validates and translates `wasm` (binary format only) and checks it against the ABI and
    /// `grants`: no start function, `memory` and `las_alloc` exported, every import a known host
    /// function of a granted capability with the right signature.
    fn compile(&self, wasm: &[u8], grants: &Grants) -> Result<Arc<dyn Module>, SandboxError>;
}

/// A compiled plugin.
pub trait Module: Send + Sync {
    /// Runs `entry` on `input` in a fresh instance under `limits`.
    fn call(
        &self,
        entry: &str,
        input: &serde_json::Value,
        limits: &Limits,
    ) -> Result<CallOutcome, SandboxError>;

    /// The entry functions the module exports (functions of type `(i32, i32) -> i64`), sorted.
    fn exports(&self) -> Vec<String>;
}

#[cfg(test)]
mod tests;
