//! [`WasmiEngine`]: the sandbox on the `wasmi` interpreter.
//!
//! # How a call is bounded
//! - **Fuel.** The engine meters fuel. A call is given its fuel in slices of [`FUEL_SLICE`]
//!   through wasmi's resumable calls: when a slice runs out, execution pauses
//!   (`ResumableCall::OutOfFuel`), the host adds the next slice if the call's budget allows and
//!   resumes. The budget is shared by `las_alloc` and the entry.
//! - **Wall-clock time.** Between two slices the host reads the clock; past the deadline the
//!   paused call is dropped and the result is [`SandboxError::Timeout`]. So the timeout holds
//!   whatever the fuel budget: a slice is at most a few milliseconds of interpretation, and every
//!   instruction, a loop's back edge included, costs fuel. Bulk memory instructions cost fuel per
//!   byte, and memory is capped, so no single instruction runs long either.
//! - **Memory.** A [`ResourceLimiter`] sees the initial size of every memory and table at
//!   instantiation and every growth. Past [`Limits::memory_bytes`] it refuses with an error, which
//!   ends the call at once (a guest spinning on a failing `memory.grow` would only burn its fuel)
//!   and is reported as [`SandboxError::MemoryLimit`] with the size asked for.
//! - **Isolation.** Every call gets a new `Store` and instance; nothing survives a call.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wasmi::{
    Caller, CompilationMode, Config, ExternType, Func, Linker, ResourceLimiter, ResumableCall,
    Store, Val,
};
// `wasmi` does not re-export the error type of its own `ResourceLimiter` trait.
use wasmi_core::LimiterError;

use super::abi::{self, ValType};
use super::{
    ALLOC_EXPORT, CallOutcome, Capability, Engine, Grants, HOST_MODULE, Limits, MEMORY_EXPORT,
    Module, SandboxError,
};

/// Fuel given to the guest between two looks at the clock. About a millisecond of
/// interpretation; small enough for a tight timeout, large enough that resuming costs nothing.
pub const FUEL_SLICE: u64 = 1_000_000;

/// The most table elements a guest may hold (function tables of real plugins hold a few hundred).
const MAX_TABLE_ELEMENTS: usize = 100_000;

/// The most log lines one call keeps; the bytes of all lines are capped by the output limit.
const MAX_LOG_LINES: usize = 1_000;

/// The sandbox on the `wasmi` interpreter: builds in about two minutes on two cores, no JIT.
///
/// Each compiled module gets its own `wasmi::Engine`: wasmi's code map is append-only, so
/// modules compiled into one shared engine would keep their code until the engine is dropped,
/// and a daemon that recompiles plugins as they change would grow without bound. Here a
/// module's code is freed with the module.
#[derive(Clone)]
pub struct WasmiEngine {
    config: Config,
}

impl WasmiEngine {
    pub fn new() -> Self {
        let mut config = Config::default();
        config
            .consume_fuel(true)
            // A start function would run at instantiation, outside the entry's metering.
            .allow_start_fn(false)
            // One memory, so the memory limit is the limit.
            .wasm_multi_memory(false)
            // Translate everything at compile time: errors surface at `compile`, and no fuel is
            // charged for lazy translation during a call.
            .compilation_mode(CompilationMode::Eager);
        Self { config }
    }
}

impl Default for WasmiEngine {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for WasmiEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WasmiEngine")
    }
}

impl Engine for WasmiEngine {
    fn compile(&self, wasm: &[u8], grants: &Grants) -> Result<Arc<dyn Module>, SandboxError> {
        if !wasm.starts_with(b"\0asm") {
            return Err(SandboxError::InvalidModule(
                "not a WebAssembly binary (no \\0asm magic); compile WAT text to .wasm first"
                    .into(),
            ));
        }
        let engine = wasmi::Engine::new(&self.config);
        let module = wasmi::Module::new(&engine, wasm).map_err(|e| {
            let msg = e.to_string();
            if msg.contains("start") {
                SandboxError::InvalidModule(format!(
                    "{msg}: plugins may not have a start function; do setup work in the entry"
                ))
            } else {
                SandboxError::InvalidModule(msg)
            }
        })?;
        check_imports(&module, grants)?;
        check_exports(&module)?;
        let mut entries: Vec<String> = module
            .exports()
            .filter(|e| e.name() != ALLOC_EXPORT)
            .filter(|e| {
                e.ty()
                    .func()
                    .is_some_and(|f| same_sig(f, &[ValType::I32, ValType::I32], &[ValType::I64]))
            })
            .map(|e| e.name().to_string())
            .collect();
        entries.sort();
        let linker = linker(&engine, grants);
        Ok(Arc::new(WasmiModule {
            module,
            linker,
            entries,
        }))
    }
}

fn to_abi(t: &wasmi::ValType) -> Option<ValType> {
    match t {
        wasmi::ValType::I32 => Some(ValType::I32),
        wasmi::ValType::I64 => Some(ValType::I64),
        _ => None,
    }
}

fn same_sig(f: &wasmi::FuncType, params: &[ValType], results: &[ValType]) -> bool {
    let conv = |v: &[wasmi::ValType]| v.iter().map(to_abi).collect::<Option<Vec<_>>>();
    conv(f.params()).as_deref() == Some(params) && conv(f.results()).as_deref() == Some(results)
}

fn describe(ty: &ExternType) -> String {
    match ty {
        ExternType::Func(f) => {
            let names = |v: &[wasmi::ValType]| -> Vec<String> {
                v.iter().map(|t| format!("{t:?}").to_lowercase()).collect()
            };
            let (p, r) = (names(f.params()), names(f.results()));
            let p: Vec<&str> = p.iter().map(String::as_str).collect();
            let r: Vec<&str> = r.iter().map(String::as_str).collect();
            format!("a function {}", abi::wat_signature(&p, &r))
        }
        ExternType::Memory(_) => "a memory".into(),
        ExternType::Table(_) => "a table".into(),
        ExternType::Global(_) => "a global".into(),
    }
}

fn check_imports(module: &wasmi::Module, grants: &Grants) -> Result<(), SandboxError> {
    for import in module.imports() {
        let (m, n) = (import.module(), import.name());
        let known = (m == HOST_MODULE)
            .then(|| abi::host_import(n))
            .flatten()
            .filter(|_| import.ty().func().is_some());
        let Some(host) = known else {
            let kind = match import.ty() {
                ExternType::Func(_) => "function",
                ExternType::Memory(_) => "memory",
                ExternType::Table(_) => "table",
                ExternType::Global(_) => "global",
            };
            return Err(SandboxError::UnknownImport {
                module: m.to_string(),
                name: n.to_string(),
                kind: kind.to_string(),
            });
        };
        if !grants.contains(host.capability) {
            return Err(SandboxError::UngrantedImport {
                module: m.to_string(),
                name: n.to_string(),
                capability: host.capability,
            });
        }
        let f = import.ty().func().expect("checked above");
        if !same_sig(f, host.params, host.results) {
            return Err(SandboxError::InvalidModule(format!(
                "import {m}.{n} must have the signature {}, found {}",
                host.signature(),
                describe(import.ty())
            )));
        }
    }
    Ok(())
}

fn check_exports(module: &wasmi::Module) -> Result<(), SandboxError> {
    match module.get_export(MEMORY_EXPORT) {
        None => return Err(SandboxError::MissingExport(MEMORY_EXPORT.into())),
        Some(ExternType::Memory(_)) => {}
        Some(other) => {
            return Err(SandboxError::BadExport {
                name: MEMORY_EXPORT.into(),
                expected: "a memory".into(),
                found: describe(&other),
            });
        }
    }
    match module.get_export(ALLOC_EXPORT) {
        None => Err(SandboxError::MissingExport(ALLOC_EXPORT.into())),
        Some(ExternType::Func(f)) if same_sig(&f, &[ValType::I32], &[ValType::I32]) => Ok(()),
        Some(other) => Err(SandboxError::BadExport {
            name: ALLOC_EXPORT.into(),
            expected: "a function (param i32) (result i32)".into(),
            found: describe(&other),
        }),
    }
}

/// What a call's store holds: the limiter and what the host functions collect.
struct HostState {
    limiter: CallLimiter,
    logs: Vec<String>,
    log_bytes: usize,
    log_cap: usize,
    logs_dropped: usize,
}

struct CallLimiter {
    memory_bytes: usize,
    /// The size a refused memory asked for.
    refused: Option<usize>,
    table_refused: Option<usize>,
}

impl ResourceLimiter for CallLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> Result<bool, LimiterError> {
        if desired > self.memory_bytes {
            self.refused = Some(desired);
            return Err(LimiterError::ResourceLimiterDeniedAllocation);
        }
        Ok(maximum.is_none_or(|m| desired <= m))
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> Result<bool, LimiterError> {
        if desired > MAX_TABLE_ELEMENTS {
            self.table_refused = Some(desired);
            return Err(LimiterError::ResourceLimiterDeniedAllocation);
        }
        Ok(maximum.is_none_or(|m| desired <= m))
    }

    fn instances(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        1
    }

    fn memories(&self) -> usize {
        1
    }
}

/// The memory range `[ptr, ptr + len)` of the guest, when it lies inside `data`.
fn range(data: &[u8], ptr: u32, len: u32) -> Option<std::ops::Range<usize>> {
    let start = usize::try_from(ptr).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    (end <= data.len()).then_some(start..end)
}

fn guest_memory(caller: &Caller<'_, HostState>) -> Result<wasmi::Memory, wasmi::Error> {
    caller
        .get_export(MEMORY_EXPORT)
        .and_then(|e| e.into_memory())
        .ok_or_else(|| wasmi::Error::new("the module exports no memory"))
}

/// A linker with exactly the host functions of `grants`.
fn linker(engine: &wasmi::Engine, grants: &Grants) -> Linker<HostState> {
    let mut linker = Linker::new(engine);
    for c in grants.iter() {
        let res = match c {
            Capability::Log => linker.func_wrap(
                HOST_MODULE,
                "log",
                |mut caller: Caller<'_, HostState>, ptr: i32, len: i32| {
                    let memory = guest_memory(&caller)?;
                    let data = memory.data(&caller);
                    let r = range(data, ptr as u32, len as u32).ok_or_else(|| {
                        wasmi::Error::new(format!(
                            "las.log({ptr}, {len}): the range is outside the guest's memory"
                        ))
                    })?;
                    let state = caller.data();
                    let room = state.logs.len() < MAX_LOG_LINES
                        && state.log_bytes + r.len() <= state.log_cap;
                    let line = room.then(|| String::from_utf8_lossy(&data[r]).into_owned());
                    let state = caller.data_mut();
                    match line {
                        Some(line) => {
                            state.log_bytes += line.len();
                            state.logs.push(line);
                        }
                        None => state.logs_dropped += 1,
                    }
                    Ok(())
                },
            ),
            Capability::Clock => linker.func_wrap(HOST_MODULE, "clock_ms", || -> i64 {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0)
            }),
            Capability::Random => linker.func_wrap(HOST_MODULE, "random_u64", || {
                getrandom::u64()
                    .map(|v| v as i64)
                    .map_err(|e| wasmi::Error::new(format!("las.random_u64: {e}")))
            }),
            // A grant of data, not of a function: nothing to link.
            Capability::Content => continue,
        };
        res.expect("each host function is defined once");
    }
    linker
}

struct WasmiModule {
    module: wasmi::Module,
    linker: Linker<HostState>,
    entries: Vec<String>,
}

/// The fuel and time left to one call.
struct Budget {
    fuel: u64,
    used: u64,
    started: Instant,
    timeout: Duration,
}

impl Budget {
    fn left(&self) -> u64 {
        self.fuel - self.used
    }

    fn timed_out(&self) -> Option<SandboxError> {
        (self.started.elapsed() > self.timeout).then_some(SandboxError::Timeout {
            timeout: self.timeout,
            fuel_used: self.used,
        })
    }
}

impl WasmiModule {
    /// Runs `func` with fuel in slices, looking at the clock between slices.
    fn run(
        &self,
        store: &mut Store<HostState>,
        func: &Func,
        params: &[Val],
        results: &mut [Val],
        budget: &mut Budget,
    ) -> Result<(), SandboxError> {
        if let Some(e) = budget.timed_out() {
            return Err(e);
        }
        let mut given = budget.left().min(FUEL_SLICE);
        store.set_fuel(given).map_err(|e| internal(&e))?;
        let mut call = func.call_resumable(&mut *store, params, results);
        loop {
            let left = store.get_fuel().map_err(|e| internal(&e))?;
            budget.used += given.saturating_sub(left);
            let paused = match call {
                Ok(ResumableCall::Finished) => return Ok(()),
                Ok(ResumableCall::OutOfFuel(paused)) => paused,
                Ok(ResumableCall::HostTrap(trap)) => {
                    return Err(SandboxError::Trap(trap.host_error().to_string()));
                }
                Err(e) => return Err(classify(store, &e, budget)),
            };
            if let Some(e) = budget.timed_out() {
                return Err(e);
            }
            let need = paused.required_fuel().max(1);
            if budget.left() < need {
                return Err(SandboxError::OutOfFuel { fuel: budget.fuel });
            }
            given = budget.left().min(FUEL_SLICE.max(need));
            store.set_fuel(given).map_err(|e| internal(&e))?;
            call = paused.resume(&mut *store, results);
        }
    }
}

fn internal(e: &dyn std::fmt::Display) -> SandboxError {
    SandboxError::Trap(format!("sandbox: {e}"))
}

/// Turns an engine error into the limit it hit, or a trap.
fn classify(store: &Store<HostState>, e: &wasmi::Error, budget: &Budget) -> SandboxError {
    let limiter = &store.data().limiter;
    if let Some(requested) = limiter.refused {
        return SandboxError::MemoryLimit {
            limit_bytes: limiter.memory_bytes,
            requested_bytes: requested,
        };
    }
    if let Some(n) = limiter.table_refused {
        return SandboxError::Trap(format!(
            "a table asked for {n} elements, over the limit of {MAX_TABLE_ELEMENTS}"
        ));
    }
    if e.as_trap_code() == Some(wasmi::TrapCode::OutOfFuel) {
        return SandboxError::OutOfFuel { fuel: budget.fuel };
    }
    SandboxError::Trap(e.to_string())
}

impl Module for WasmiModule {
    fn call(
        &self,
        entry: &str,
        input: &serde_json::Value,
        limits: &Limits,
    ) -> Result<CallOutcome, SandboxError> {
        let mut budget = Budget {
            fuel: limits.fuel,
            used: 0,
            started: Instant::now(),
            timeout: limits.timeout,
        };
        if !self.entries.iter().any(|e| e == entry) {
            return Err(match self.module.get_export(entry) {
                None => SandboxError::MissingExport(entry.to_string()),
                Some(other) => SandboxError::BadExport {
                    name: entry.to_string(),
                    expected: "a function (param i32 i32) (result i64)".into(),
                    found: describe(&other),
                },
            });
        }
        let bytes = serde_json::to_vec(input).map_err(|e| internal(&e))?;
        if bytes.len() > limits.max_input_bytes {
            return Err(SandboxError::InputTooLarge {
                size: bytes.len(),
                limit: limits.max_input_bytes,
            });
        }
        let len = i32::try_from(bytes.len()).map_err(|_| SandboxError::InputTooLarge {
            size: bytes.len(),
            limit: i32::MAX as usize,
        })?;

        let state = HostState {
            limiter: CallLimiter {
                memory_bytes: limits.memory_bytes,
                refused: None,
                table_refused: None,
            },
            logs: Vec::new(),
            log_bytes: 0,
            log_cap: limits.max_output_bytes,
            logs_dropped: 0,
        };
        let mut store = Store::new(self.module.engine(), state);
        store.limiter(|s| &mut s.limiter);
        // Instantiation runs no guest code (start functions are refused at compile time), so it
        // needs no fuel; data segments are bounded by the module's size.
        let instance = self
            .linker
            .instantiate_and_start(&mut store, &self.module)
            .map_err(|e| classify(&store, &e, &budget))?;
        let memory = instance
            .get_memory(&store, MEMORY_EXPORT)
            .ok_or_else(|| SandboxError::MissingExport(MEMORY_EXPORT.into()))?;
        let alloc = instance
            .get_func(&store, ALLOC_EXPORT)
            .ok_or_else(|| SandboxError::MissingExport(ALLOC_EXPORT.into()))?;
        let func = instance
            .get_func(&store, entry)
            .ok_or_else(|| SandboxError::MissingExport(entry.into()))?;

        let mut out = [Val::I32(0)];
        self.run(&mut store, &alloc, &[Val::I32(len)], &mut out, &mut budget)?;
        let Val::I32(ptr) = out[0] else {
            return Err(internal(&"las_alloc returned a non-i32"));
        };
        let data = memory.data_mut(&mut store);
        let r = range(data, ptr as u32, len as u32).ok_or_else(|| {
            SandboxError::BadOutput(format!(
                "las_alloc({len}) returned {ptr}, which with {len} bytes is outside the guest's \
                 memory of {} bytes",
                data.len()
            ))
        })?;
        data[r].copy_from_slice(&bytes);

        let mut out = [Val::I64(0)];
        self.run(
            &mut store,
            &func,
            &[Val::I32(ptr), Val::I32(len)],
            &mut out,
            &mut budget,
        )?;
        let Val::I64(packed) = out[0] else {
            return Err(internal(&"the entry returned a non-i64"));
        };
        let (out_ptr, out_len) = abi::unpack(packed);
        if out_len as usize > limits.max_output_bytes {
            return Err(SandboxError::OutputTooLarge {
                size: out_len as usize,
                limit: limits.max_output_bytes,
            });
        }
        let data = memory.data(&store);
        let r = range(data, out_ptr, out_len).ok_or_else(|| {
            SandboxError::BadOutput(format!(
                "the entry returned ptr {out_ptr} len {out_len}, outside the guest's memory of {} \
                 bytes",
                data.len()
            ))
        })?;
        let output: serde_json::Value = serde_json::from_slice(&data[r])
            .map_err(|e| SandboxError::BadOutput(format!("not JSON: {e}")))?;
        let mut state = store.into_data();
        if state.logs_dropped > 0 {
            state.logs.push(format!(
                "[{} more log lines dropped: over {} lines or {} bytes]",
                state.logs_dropped, MAX_LOG_LINES, state.log_cap
            ));
        }
        Ok(CallOutcome {
            output,
            fuel_used: budget.used,
            logs: state.logs,
        })
    }

    fn exports(&self) -> Vec<String> {
        self.entries.clone()
    }
}
