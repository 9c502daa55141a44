//! Exec plugins: plugins that are plain executables, spawned and supervised here (and only here),
//! called over the line protocol of `docs/plugin-protocol.md`.
//!
//! The control layer never spawns: it holds an [`ExecPlugins`] (the daemon's is [`ExecBridge`],
//! the CLI's [`OneShotExec`]) and calls contributions through [`crate::sandbox::Module`] handles
//! this module gives out, exactly like WASM modules.
//!
//! - `lines` (persistent): one process per activation, in its own process group and (when the
//!   system allows) its own cgroup with the activation's memory limit (else `RLIMIT_AS`). The host
//!   writes a hello line, the plugin answers with its own (protocol version, capabilities, name
//!   and version, which must equal the manifest's), then requests and answers are one JSON
//!   object per line, matched by id. A supervisor thread restarts a process that exits, with
//!   exponential backoff; stderr is kept (its last lines in the status, all of it, capped, in
//!   `logs/plugin-<activation>.log`).
//! - `oneShot`: a process per call, as a Unix filter (input on stdin, output on stdout, exit 0 =
//!   ok), in its own process group with `RLIMIT_AS`.
//!
//! # Guarantees
//! - A line longer than [`MAX_LINE_BYTES`], an answer that is not a protocol object, an answer
//!   to an unknown id, a call past its timeout, or an exit mid-request fails the call(s) with a
//!   message saying which, and ends the process (group and cgroup); the supervisor starts a new
//!   one after the backoff. Nothing the plugin writes is buffered beyond the line cap.
//! - At most `max_concurrent` calls are in flight per activation; waiting for a slot counts
//!   against the call's timeout.
//! - Every process is recorded (`run/exec-plugins/<activation>.json`: pid and `/proc` start
//!   time) and marked in its environment, so a daemon that was killed finds its leftovers.
//!
//! # Caveats
//! - A leftover from a killed daemon is **killed and replaced**, never adopted: its stdin and
//!   stdout were pipes to the dead daemon and cannot be re-attached. [`ExecStatus::replaced`]
//!   names it, so the caller can say so.
//! - A one-shot call gets no cgroup (a cgroup per call would cost more than most filters);
//!   killing its process group ends it unless it left the group with `setsid`.
#![allow(clippy::type_complexity)]

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc as chan;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::limits::{self, Applied};
use super::native::{ENV_OWNER, ENV_STACK, backoff_delay, proc_stat, same_process_alive};
use crate::api::plugin::ExecProtocol;
use crate::home::LasHome;
use crate::sandbox::{CallOutcome, Limits as CallLimits, Module, SandboxError};

/// The line protocol's version; the handshake must name it.
pub const PROTOCOL_VERSION: u64 = 1;
/// The most bytes of one line either way (the newline not counted).
pub const MAX_LINE_BYTES: usize = 1 << 20;
/// How long a plugin has to answer the host's hello.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// What this host supports (the hello says so; a plugin must support `call`).
pub const HOST_CAPABILITIES: [&str; 1] = ["call"];
/// Calls in flight per activation when its limits say nothing.
pub const DEFAULT_MAX_CONCURRENT: u32 = 4;
const STDERR_TAIL: usize = 20;
const STDERR_LINE: usize = 4096;
const LOG_MAX_BYTES: u64 = 1 << 20;

/// What the runtime needs to run one activation's executable (built by the control layer from
/// the manifest and the activation).
#[derive(Debug, Clone, PartialEq)]
pub struct ExecSpec {
    /// The PluginActivation's name (the owner of the process).
    pub activation: String,
    /// The installed executable (`$LAS_HOME/bin/<sha256>/<file>`).
    pub program: PathBuf,
    pub sha256: String,
    pub protocol: ExecProtocol,
    /// What the handshake must name (the manifest's name and version).
    pub name: String,
    pub version: String,
    /// One-shot legacy text plugins read the text itself on stdin and write it on stdout
    /// (`{"text": …}` in and out of the call); otherwise stdin and stdout carry JSON.
    pub text_io: bool,
    pub memory_bytes: Option<u64>,
    pub max_concurrent: u32,
}

/// The lifecycle of an activation's process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ExecState {
    /// Handshake done; calls are served.
    Running,
    /// It exited (or was ended); a new one starts after the backoff.
    Restarting,
    /// `oneShot`: a process per call, nothing runs between calls.
    OneShot,
    #[default]
    Stopped,
}

/// What the runtime reports of an activation's process.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecStatus {
    pub state: ExecState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    pub restarts: u32,
    /// Why the last process ended (exit code, protocol violation, timeout, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
    /// The last lines the plugin wrote on stderr.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stderr_tail: Vec<String>,
    pub limits_applied: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_path: Option<PathBuf>,
    /// Processes a previous daemon left running for this activation, killed before this one
    /// started (set only by the `ensure` that did it).
    #[serde(skip)]
    pub replaced: Vec<u32>,
}

/// Why an executable could not be started or refused the handshake.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExecError {
    #[error("cannot start {program}: {reason}")]
    Spawn { program: String, reason: String },
    #[error(
        "the plugin did not answer the handshake within {} ms{}", waited.as_millis(), stderr_note(stderr)
    )]
    NoHandshake { waited: Duration, stderr: String },
    #[error(
        "the plugin speaks line protocol version {found}, this host speaks {PROTOCOL_VERSION} (see docs/plugin-protocol.md)"
    )]
    ProtocolVersion { found: String },
    #[error(
        "the plugin says it is {found_name} {found_version}, the manifest says {name} {version}: the executable is not the one the manifest describes"
    )]
    Mismatch {
        name: String,
        version: String,
        found_name: String,
        found_version: String,
    },
    #[error("bad handshake: {0}")]
    BadHandshake(String),
}

fn stderr_note(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!(" (stderr: {stderr})")
    }
}

impl ExecError {
    /// A stable CamelCase name, for conditions.
    pub fn reason(&self) -> &'static str {
        match self {
            ExecError::Spawn { .. } => "ExecSpawnFailed",
            ExecError::NoHandshake { .. } => "NoHandshake",
            ExecError::ProtocolVersion { .. } => "ProtocolVersionMismatch",
            ExecError::Mismatch { .. } => "PluginMismatch",
            ExecError::BadHandshake(_) => "BadHandshake",
        }
    }
    /// Whether trying again with the same bytes cannot help.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            ExecError::ProtocolVersion { .. } | ExecError::Mismatch { .. }
        )
    }
}

/// The seam between the plugin host (control) and the processes (runtime).
pub trait ExecPlugins: Send + Sync {
    /// Makes the activation's process run as `spec` says (idempotent; a changed spec replaces the
    /// process). Blocks for at most the handshake. `oneShot` starts nothing.
    fn ensure(&self, spec: &ExecSpec) -> Result<ExecStatus, ExecError>;
    /// Ends the activation's process (group and cgroup) and forgets it. Idempotent.
    fn stop(&self, activation: &str);
    /// Ends every process (daemon shutdown: their pipes die with the daemon anyway).
    fn stop_all(&self);
    /// The handle the host calls; errors when the process is not running.
    fn module(&self, spec: &ExecSpec) -> Arc<dyn Module>;
}

/// Where the runtime keeps records and logs, and how it restarts.
#[derive(Debug, Clone)]
pub struct ExecConfig {
    pub records_dir: PathBuf,
    pub logs_dir: PathBuf,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// A process that ran this long resets the backoff.
    pub healthy_reset: Duration,
}

impl ExecConfig {
    pub fn for_home(home: &LasHome) -> Self {
        ExecConfig {
            records_dir: home.run().join("exec-plugins"),
            logs_dir: home.logs(),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            healthy_reset: Duration::from_secs(60),
        }
    }

    fn owner(activation: &str) -> String {
        format!("PluginActivation/{activation}")
    }

    fn slug(activation: &str) -> String {
        activation
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect()
    }

    fn record_path(&self, activation: &str) -> PathBuf {
        self.records_dir
            .join(format!("{}.json", Self::slug(activation)))
    }

    pub fn log_path(&self, activation: &str) -> PathBuf {
        self.logs_dir
            .join(format!("plugin-{}.log", Self::slug(activation)))
    }

    /// Named like the native runtime's cgroups (`las-<stack>-<owner>`), so the same sweeps find
    /// them.
    fn cgroup_name(&self, activation: &str) -> String {
        use sha2::Digest;
        let stack = sha2::Sha256::digest(self.logs_dir.as_os_str().as_encoded_bytes());
        format!(
            "{}-PluginActivation-{}",
            &hex::encode(stack)[..10],
            Self::slug(activation)
        )
    }
}

/// `run/exec-plugins/<activation>.json`: the process a daemon started, so the next one finds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExecRecord {
    activation: String,
    pid: u32,
    start_time: u64,
    #[serde(default)]
    cgroup: Option<PathBuf>,
}

// ---------------------------------------------------------------------------------------------
// Reading lines with a cap.

enum Line {
    Got(Vec<u8>),
    Eof,
    TooLong,
}

/// Reads one line of at most `cap` bytes; never buffers more than `cap` plus one read.
fn read_line_capped(r: &mut impl BufRead, cap: usize) -> std::io::Result<Line> {
    let mut buf = Vec::new();
    loop {
        let avail = match r.fill_buf() {
            Ok(a) => a,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if avail.is_empty() {
            return Ok(if buf.is_empty() {
                Line::Eof
            } else {
                Line::Got(buf)
            });
        }
        match avail.iter().position(|b| *b == b'\n') {
            Some(i) => {
                buf.extend_from_slice(&avail[..i]);
                r.consume(i + 1);
                return Ok(if buf.len() > cap {
                    Line::TooLong
                } else {
                    Line::Got(buf)
                });
            }
            None => {
                let n = avail.len();
                buf.extend_from_slice(avail);
                r.consume(n);
                if buf.len() > cap {
                    return Ok(Line::TooLong);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One process speaking the line protocol.

type Reply = Result<Value, String>;

/// A live connection to a `lines` process.
struct Conn {
    pid: u32,
    cgroup: Option<PathBuf>,
    /// Lines for the writer thread, which owns the process's stdin (so a plugin that stops
    /// reading blocks that thread, never a call: calls keep their timeouts). Dropped to close
    /// the plugin's stdin.
    input: Mutex<Option<chan::Sender<Vec<u8>>>>,
    pending: Mutex<HashMap<u64, chan::Sender<Reply>>>,
    next_id: AtomicU64,
    /// Why the connection ended, once it has.
    ended: Mutex<Option<String>>,
    /// The process was waited for: its pid may name another process now, so only its cgroup
    /// is killed from here on.
    reaped: AtomicBool,
}

impl Conn {
    /// Ends the connection: every pending call fails with `why`, the process group and the
    /// cgroup are killed. The first reason wins.
    fn end(&self, why: &str) {
        {
            let mut e = self.ended.lock().unwrap_or_else(|p| p.into_inner());
            if e.is_none() {
                *e = Some(why.to_string());
            }
        }
        for (_, tx) in self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
        {
            let _ = tx.send(Err(why.to_string()));
        }
        self.input.lock().unwrap_or_else(|p| p.into_inner()).take();
        if !self.reaped.load(Ordering::SeqCst) {
            kill_group(self.pid);
        }
        if let Some(c) = &self.cgroup {
            limits::kill_cgroup(c);
        }
    }

    fn ended(&self) -> Option<String> {
        self.ended.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn call(&self, entry: &str, input: &Value, timeout: Duration) -> Result<Value, SandboxError> {
        if let Some(why) = self.ended() {
            return Err(SandboxError::Exec(why));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let line = json!({"id": id, "method": "call", "entry": entry, "input": input}).to_string();
        if line.len() > MAX_LINE_BYTES {
            return Err(SandboxError::InputTooLarge {
                size: line.len(),
                limit: MAX_LINE_BYTES,
            });
        }
        let (tx, rx) = chan::channel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
        let mut bytes = line.into_bytes();
        bytes.push(b'\n');
        let sent = self
            .input
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|t| t.send(bytes).is_ok());
        if !sent {
            self.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            return Err(SandboxError::Exec(
                self.ended()
                    .unwrap_or_else(|| "the plugin's input is closed".into()),
            ));
        }
        match rx.recv_timeout(timeout) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(msg)) => Err(SandboxError::Exec(msg)),
            Err(_) => {
                self.pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
                // A plugin that does not answer in time may be stuck: it is ended and started
                // again, so it cannot hold the activation's slots forever.
                self.end(&format!(
                    "call {id} ({entry}) did not finish within {} ms; the process was ended",
                    timeout.as_millis()
                ));
                Err(SandboxError::Timeout {
                    timeout,
                    fuel_used: 0,
                })
            }
        }
    }
}

fn kill_group(pid: u32) {
    use nix::sys::signal::{Signal, kill, killpg};
    use nix::unistd::Pid;
    let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
}

/// The stderr of a process: the last lines in `tail`, everything (capped) in the log file.
fn drain_stderr(
    stderr: impl Read + Send + 'static,
    tail: Arc<Mutex<VecDeque<String>>>,
    log: Option<PathBuf>,
) {
    std::thread::spawn(move || {
        let mut r = BufReader::new(stderr);
        let mut file = log.as_ref().and_then(|p| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .ok()
        });
        loop {
            let line = match read_line_capped(&mut r, STDERR_LINE) {
                Ok(Line::Got(l)) => String::from_utf8_lossy(&l).into_owned(),
                Ok(Line::TooLong) => "<a line over 4 KiB, cut>".to_string(),
                Ok(Line::Eof) | Err(_) => return,
            };
            if let Some(f) = file.as_mut() {
                // Capped by truncation: stderr is for the last words, the tail keeps them.
                if f.metadata().is_ok_and(|m| m.len() > LOG_MAX_BYTES) {
                    let _ = f.set_len(0);
                }
                let _ = writeln!(f, "{line}");
            }
            let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
            if t.len() == STDERR_TAIL {
                t.pop_front();
            }
            t.push_back(line);
        }
    });
}

fn tail_text(tail: &Mutex<VecDeque<String>>, n: usize) -> String {
    let t = tail.lock().unwrap_or_else(|p| p.into_inner());
    let skip = t.len().saturating_sub(n);
    t.iter().skip(skip).cloned().collect::<Vec<_>>().join(" | ")
}

/// Builds the command of `spec`: own process group, a clean environment with the owner marks,
/// the memory limit in a cgroup (`cgroup: Some(name)`) or as `RLIMIT_AS`.
fn command(
    cfg: &ExecConfig,
    spec: &ExecSpec,
    args: &[&str],
    cgroup: Option<&str>,
) -> (tokio::process::Command, Applied) {
    let mut cmd = tokio::process::Command::new(&spec.program);
    cmd.args(args)
        .env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
        )
        .env(ENV_OWNER, ExecConfig::owner(&spec.activation))
        .env(ENV_STACK, &cfg.logs_dir)
        .env("LAS_PLUGIN_ACTIVATION", &spec.activation)
        .process_group(0);
    if let Some(h) = std::env::var_os("LAS_HOME") {
        cmd.env("LAS_HOME", h);
    }
    if let Some(dir) = spec.program.parent() {
        cmd.current_dir(dir);
    }
    let wanted = super::Limits {
        memory_bytes: spec.memory_bytes,
        ..Default::default()
    };
    let mut applied = Applied::default();
    if let Some(name) = cgroup
        && let Ok((dir, limited)) = limits::prepare_cgroup(name, &wanted)
    {
        limits::join_in_child(&mut cmd, &dir);
        applied.cgroup = Some(dir);
        applied.cgroup_limits = limited;
    }
    if !applied.cgroup_limits {
        applied.rlimit_as = limits::apply_rlimits(&mut cmd, &wanted);
    }
    (cmd, applied)
}

/// A started `lines` process whose handshake passed.
struct Started {
    child: Child,
    conn: Arc<Conn>,
    applied: Applied,
}

/// Spawns `spec`'s program and runs the handshake; on any failure nothing is left running.
fn start_lines(
    cfg: &ExecConfig,
    spec: &ExecSpec,
    tail: &Arc<Mutex<VecDeque<String>>>,
    cgroup: Option<&str>,
    log: Option<PathBuf>,
) -> Result<Started, ExecError> {
    let (mut cmd, mut applied) = command(cfg, spec, &[], cgroup);
    let cmd = cmd
        .as_std_mut()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| ExecError::Spawn {
        program: spec.program.display().to_string(),
        reason: e.to_string(),
    })?;
    let pid = child.id();
    if let Some(dir) = &applied.cgroup
        && limits::join_cgroup(dir, pid).is_err()
        && proc_stat(pid).is_some()
    {
        applied.cgroup = None;
    }
    drain_stderr(child.stderr.take().expect("piped"), tail.clone(), log);
    let (input, lines) = chan::channel::<Vec<u8>>();
    let conn = Arc::new(Conn {
        pid,
        cgroup: applied.cgroup.clone(),
        input: Mutex::new(Some(input)),
        pending: Mutex::default(),
        next_id: AtomicU64::new(1),
        ended: Mutex::default(),
        reaped: AtomicBool::new(false),
    });
    {
        let conn = conn.clone();
        let mut stdin = child.stdin.take().expect("piped");
        std::thread::spawn(move || {
            for line in lines {
                if stdin.write_all(&line).and_then(|_| stdin.flush()).is_err() {
                    conn.end("cannot write to the plugin: it closed its input");
                    return;
                }
            }
        });
    }
    let (hs_tx, hs_rx) = chan::channel::<Result<Vec<u8>, String>>();
    {
        let conn = conn.clone();
        let stdout = child.stdout.take().expect("piped");
        std::thread::spawn(move || read_answers(conn, stdout, hs_tx));
    }
    let cg = applied.cgroup.clone();
    let fail = |child: &mut Child, conn: &Conn, e: ExecError| {
        conn.end(&e.to_string());
        let _ = child.wait();
        conn.reaped.store(true, Ordering::SeqCst);
        if let Some(c) = &cg {
            limits::remove_cgroup(c);
        }
        Err(e)
    };
    let hello = json!({"protocol": "las-exec", "version": PROTOCOL_VERSION,
        "capabilities": HOST_CAPABILITIES, "host": "localaistack",
        "hostVersion": env!("CARGO_PKG_VERSION")})
    .to_string();
    if let Some(t) = conn
        .input
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
    {
        // A plugin that exits at once closes the pipe; the handshake then says so.
        let _ = t.send(format!("{hello}\n").into_bytes());
    }
    let line = match hs_rx.recv_timeout(HANDSHAKE_TIMEOUT) {
        Ok(Ok(l)) => l,
        Ok(Err(why)) => {
            std::thread::sleep(Duration::from_millis(50));
            let e = ExecError::BadHandshake(format!("{why}{}", stderr_note(&tail_text(tail, 3))));
            return fail(&mut child, &conn, e);
        }
        Err(_) => {
            let e = ExecError::NoHandshake {
                waited: HANDSHAKE_TIMEOUT,
                stderr: tail_text(tail, 3),
            };
            return fail(&mut child, &conn, e);
        }
    };
    if let Err(e) = check_handshake(&line, spec) {
        return fail(&mut child, &conn, e);
    }
    Ok(Started {
        child,
        conn,
        applied,
    })
}

/// The plugin's half of the handshake: `{"protocol":"las-exec","version":1,"name","version"…}`.
fn check_handshake(line: &[u8], spec: &ExecSpec) -> Result<(), ExecError> {
    let v: Value = serde_json::from_slice(line).map_err(|e| {
        ExecError::BadHandshake(format!(
            "expected a JSON object, got {:?} ({e})",
            String::from_utf8_lossy(&line[..line.len().min(120)])
        ))
    })?;
    if v["protocol"] != "las-exec" {
        return Err(ExecError::BadHandshake(format!(
            "expected \"protocol\": \"las-exec\", got {}",
            v["protocol"]
        )));
    }
    if v["version"].as_u64() != Some(PROTOCOL_VERSION) {
        return Err(ExecError::ProtocolVersion {
            found: v["version"].to_string(),
        });
    }
    let caps: Vec<&str> = v["capabilities"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if !caps.contains(&"call") {
        return Err(ExecError::BadHandshake(format!(
            "the plugin's capabilities {caps:?} do not include \"call\""
        )));
    }
    let (name, version) = (
        v["name"].as_str().unwrap_or_default(),
        v["pluginVersion"].as_str().unwrap_or_default(),
    );
    if name != spec.name || version != spec.version {
        return Err(ExecError::Mismatch {
            name: spec.name.clone(),
            version: spec.version.clone(),
            found_name: name.to_string(),
            found_version: version.to_string(),
        });
    }
    Ok(())
}

/// The reader of a `lines` process's stdout: the first line is the handshake, then answers.
/// Anything else ends the process.
fn read_answers(
    conn: Arc<Conn>,
    stdout: impl Read,
    handshake: chan::Sender<Result<Vec<u8>, String>>,
) {
    let mut r = BufReader::with_capacity(64 * 1024, stdout);
    let mut handshake = Some(handshake);
    loop {
        let line = match read_line_capped(&mut r, MAX_LINE_BYTES) {
            Ok(Line::Got(l)) => l,
            Ok(Line::TooLong) => {
                let why = format!(
                    "the plugin wrote a line over {MAX_LINE_BYTES} bytes (the line cap); the process was ended"
                );
                if let Some(h) = handshake.take() {
                    let _ = h.send(Err(why.clone()));
                }
                conn.end(&why);
                return;
            }
            Ok(Line::Eof) | Err(_) => {
                let why = "the plugin exited or closed its output".to_string();
                if let Some(h) = handshake.take() {
                    let _ = h.send(Err(why.clone()));
                }
                conn.end(&why);
                return;
            }
        };
        if let Some(h) = handshake.take() {
            let _ = h.send(Ok(line));
            continue;
        }
        let answer: Option<(u64, Reply)> =
            serde_json::from_slice::<Value>(&line).ok().and_then(|v| {
                let id = v.get("id")?.as_u64()?;
                match (v.get("output"), v.get("error")) {
                    (Some(o), None) => Some((id, Ok(o.clone()))),
                    (None, Some(e)) => Some((
                        id,
                        Err(format!(
                            "the plugin answered an error: {}",
                            e.as_str().map(String::from).unwrap_or(e.to_string())
                        )),
                    )),
                    _ => None,
                }
            });
        let Some((id, reply)) = answer else {
            conn.end(&format!(
                "protocol violation: expected {{\"id\":N,\"output\":…}} or {{\"id\":N,\"error\":…}}, got {:?}; the process was ended",
                String::from_utf8_lossy(&line[..line.len().min(120)])
            ));
            return;
        };
        let tx = conn
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        match tx {
            Some(tx) => {
                let _ = tx.send(reply);
            }
            None => {
                conn.end(&format!(
                    "protocol violation: an answer to id {id}, which no call is waiting for; the process was ended"
                ));
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One-shot calls.

/// Runs `spec`'s program once for `entry`: the input on stdin, the output from stdout, exit 0 =
/// ok. Killed (its process group) at the timeout or when the output passes the cap.
fn call_once(
    cfg: &ExecConfig,
    spec: &ExecSpec,
    entry: &str,
    input: &Value,
    timeout: Duration,
) -> Result<Value, SandboxError> {
    let started = Instant::now();
    let bytes = if spec.text_io {
        input
            .get("text")
            .and_then(Value::as_str)
            .ok_or_else(|| SandboxError::Exec("a text plugin's input has no \"text\"".into()))?
            .as_bytes()
            .to_vec()
    } else {
        let mut b = input.to_string().into_bytes();
        b.push(b'\n');
        b
    };
    if bytes.len() > MAX_LINE_BYTES {
        return Err(SandboxError::InputTooLarge {
            size: bytes.len(),
            limit: MAX_LINE_BYTES,
        });
    }
    let (mut cmd, _) = command(cfg, spec, &[entry], None);
    let mut child = cmd
        .as_std_mut()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| SandboxError::Exec(format!("cannot start {}: {e}", spec.program.display())))?;
    let pid = child.id();
    let mut stdin = child.stdin.take().expect("piped");
    std::thread::spawn(move || {
        let _ = stdin.write_all(&bytes);
    });
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    drain_stderr(child.stderr.take().expect("piped"), tail.clone(), None);
    let (tx, rx) = chan::channel();
    let mut stdout = child.stdout.take().expect("piped");
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let r = (&mut stdout)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_to_end(&mut out);
        let _ = tx.send(r.map(|_| out));
    });
    let end = |child: &mut Child| {
        kill_group(pid);
        let _ = child.wait();
    };
    let out = match rx.recv_timeout(timeout) {
        Ok(Ok(o)) if o.len() > MAX_LINE_BYTES => {
            end(&mut child);
            return Err(SandboxError::OutputTooLarge {
                size: o.len(),
                limit: MAX_LINE_BYTES,
            });
        }
        Ok(Ok(o)) => o,
        Ok(Err(e)) => {
            end(&mut child);
            return Err(SandboxError::Exec(format!("reading the output: {e}")));
        }
        Err(_) => {
            end(&mut child);
            return Err(SandboxError::Timeout {
                timeout,
                fuel_used: 0,
            });
        }
    };
    // Output closed: the exit follows (bounded by what is left of the timeout).
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if started.elapsed() < timeout => std::thread::sleep(Duration::from_millis(1)),
            _ => {
                end(&mut child);
                return Err(SandboxError::Timeout {
                    timeout,
                    fuel_used: 0,
                });
            }
        }
    };
    if !status.success() {
        std::thread::sleep(Duration::from_millis(30));
        return Err(SandboxError::Exec(format!(
            "the plugin exited with {status}{}",
            stderr_note(&tail_text(&tail, 3))
        )));
    }
    if spec.text_io {
        return Ok(json!({"text": String::from_utf8_lossy(&out)}));
    }
    serde_json::from_slice(&out).map_err(|e| {
        SandboxError::BadOutput(format!(
            "expected one JSON value on stdout: {e} (got {:?})",
            String::from_utf8_lossy(&out[..out.len().min(120)])
        ))
    })
}

/// Calls through a `lines` process started for this call only (CLI-side hosts).
fn call_transient(
    cfg: &ExecConfig,
    spec: &ExecSpec,
    entry: &str,
    input: &Value,
    timeout: Duration,
) -> Result<Value, SandboxError> {
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    let mut s =
        start_lines(cfg, spec, &tail, None, None).map_err(|e| SandboxError::Exec(e.to_string()))?;
    let r = s.conn.call(entry, input, timeout);
    s.conn.end("done");
    let _ = s.child.wait();
    s.conn.reaped.store(true, Ordering::SeqCst);
    r
}

/// Limits the calls in flight.
struct Slots {
    used: Mutex<u32>,
    freed: Condvar,
    max: u32,
}

impl Slots {
    fn new(max: u32) -> Self {
        Slots {
            used: Mutex::new(0),
            freed: Condvar::new(),
            max: max.max(1),
        }
    }
    fn acquire(&self, until: Instant) -> bool {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        while *used >= self.max {
            let now = Instant::now();
            if now >= until {
                return false;
            }
            used = self
                .freed
                .wait_timeout(used, until - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        *used += 1;
        true
    }
    fn release(&self) {
        *self.used.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
        self.freed.notify_one();
    }
}

fn with_slot<T>(
    slots: &Slots,
    timeout: Duration,
    max: u32,
    f: impl FnOnce(Duration) -> Result<T, SandboxError>,
) -> Result<T, SandboxError> {
    let t0 = Instant::now();
    if !slots.acquire(t0 + timeout) {
        return Err(SandboxError::Exec(format!(
            "{max} calls already in flight (maxConcurrent) for {} ms",
            timeout.as_millis()
        )));
    }
    let r = f(timeout.saturating_sub(t0.elapsed()));
    slots.release();
    // Said with the call's own timeout, not what was left of it after waiting for a slot.
    r.map_err(|e| match e {
        SandboxError::Timeout { fuel_used, .. } => SandboxError::Timeout { timeout, fuel_used },
        e => e,
    })
}

fn outcome(r: Result<Value, SandboxError>) -> Result<CallOutcome, SandboxError> {
    r.map(|output| CallOutcome {
        output,
        fuel_used: 0,
        logs: Vec::new(),
    })
}

// ---------------------------------------------------------------------------------------------
// The daemon's bridge: a supervisor per activation.

struct Sup {
    spec: ExecSpec,
    conn: Mutex<Option<Arc<Conn>>>,
    status: Mutex<ExecStatus>,
    stopping: AtomicBool,
    /// Wakes the supervisor out of a backoff when stopping.
    wake: (Mutex<()>, Condvar),
    slots: Slots,
    tail: Arc<Mutex<VecDeque<String>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// The daemon's [`ExecPlugins`]: supervised processes, found again after a crash.
pub struct ExecBridge {
    cfg: ExecConfig,
    sups: Arc<Mutex<HashMap<String, Arc<Sup>>>>,
    /// One-shot activations already ensured by this bridge (their leftovers were swept once;
    /// later processes marked with them are calls in flight).
    one_shot: Mutex<std::collections::HashSet<String>>,
}

impl ExecBridge {
    pub fn new(cfg: ExecConfig) -> Self {
        ExecBridge {
            cfg,
            sups: Arc::default(),
            one_shot: Mutex::default(),
        }
    }

    fn sup(&self, activation: &str) -> Option<Arc<Sup>> {
        self.sups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(activation)
            .cloned()
    }

    /// Kills what a previous daemon left for `activation` (the recorded process, and any
    /// process marked with it): their pipes died with that daemon. Returns their pids.
    fn kill_leftovers(&self, activation: &str) -> Vec<u32> {
        let mut killed = Vec::new();
        let path = self.cfg.record_path(activation);
        if let Ok(text) = std::fs::read(&path)
            && let Ok(rec) = serde_json::from_slice::<ExecRecord>(&text)
        {
            if same_process_alive(rec.pid, rec.start_time) {
                kill_group(rec.pid);
                killed.push(rec.pid);
            }
            if let Some(c) = &rec.cgroup {
                limits::kill_cgroup(c);
            }
        }
        let _ = std::fs::remove_file(&path);
        for pid in marked(&self.cfg, activation) {
            kill_group(pid);
            if !killed.contains(&pid) {
                killed.push(pid);
            }
        }
        killed
    }

    /// Starts the first process of `spec` (leftovers of a previous daemon killed first).
    fn start(&self, spec: &ExecSpec) -> Result<Arc<Sup>, (ExecError, Vec<u32>)> {
        let replaced = self.kill_leftovers(&spec.activation);
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let cgroup = self.cfg.cgroup_name(&spec.activation);
        let log = self.cfg.log_path(&spec.activation);
        let _ = std::fs::create_dir_all(&self.cfg.logs_dir);
        let s = start_lines(&self.cfg, spec, &tail, Some(&cgroup), Some(log.clone()))
            .map_err(|e| (e, replaced.clone()))?;
        save_record(&self.cfg, spec, s.conn.pid, s.applied.cgroup.clone());
        let sup = Arc::new(Sup {
            spec: spec.clone(),
            conn: Mutex::new(Some(s.conn.clone())),
            status: Mutex::new(ExecStatus {
                state: ExecState::Running,
                pid: Some(s.conn.pid),
                restarts: 0,
                last_exit: None,
                stderr_tail: Vec::new(),
                limits_applied: s.applied.describe(),
                log_path: Some(log),
                replaced,
            }),
            stopping: AtomicBool::new(false),
            wake: (Mutex::new(()), Condvar::new()),
            slots: Slots::new(spec.max_concurrent),
            tail,
            thread: Mutex::new(None),
        });
        let handle = supervise(self.cfg.clone(), sup.clone(), s.child);
        *sup.thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
        Ok(sup)
    }

    fn stop_sup(&self, sup: &Sup) {
        sup.stopping.store(true, Ordering::SeqCst);
        {
            let _g = sup.wake.0.lock().unwrap_or_else(|p| p.into_inner());
            sup.wake.1.notify_all();
        }
        let conn = sup.conn.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(c) = conn {
            // Its stdin closed, a well-behaved plugin ends by itself; it is killed regardless
            // after a short grace.
            c.input.lock().unwrap_or_else(|p| p.into_inner()).take();
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_millis(300)
                && proc_stat(c.pid).is_some_and(|(_, _, st)| st != 'Z')
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            c.end(&format!(
                "the activation {} was deactivated",
                sup.spec.activation
            ));
        }
        if let Some(h) = sup.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = h.join();
        }
        if let Some(c) = limits::cgroup_dir(&self.cfg.cgroup_name(&sup.spec.activation)) {
            limits::remove_cgroup(&c);
        }
        let _ = std::fs::remove_file(self.cfg.record_path(&sup.spec.activation));
    }
}

fn save_record(cfg: &ExecConfig, spec: &ExecSpec, pid: u32, cgroup: Option<PathBuf>) {
    let rec = ExecRecord {
        activation: spec.activation.clone(),
        pid,
        start_time: proc_stat(pid).map(|s| s.0).unwrap_or(0),
        cgroup,
    };
    let _ = std::fs::create_dir_all(&cfg.records_dir);
    let path = cfg.record_path(&spec.activation);
    let tmp = path.with_extension("json.tmp");
    if let Ok(text) = serde_json::to_vec(&rec)
        && std::fs::write(&tmp, text).is_ok()
    {
        let _ = std::fs::rename(&tmp, &path);
    }
}

/// The supervisor thread of one activation: waits for its process, then starts a new one after
/// the backoff, until stopped.
fn supervise(cfg: ExecConfig, sup: Arc<Sup>, mut child: Child) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let cgroup = cfg.cgroup_name(&sup.spec.activation);
        let mut failures = 0u32;
        let mut started = Instant::now();
        loop {
            let code = child.wait().ok();
            let conn = sup.conn.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(c) = &conn {
                c.reaped.store(true, Ordering::SeqCst);
            }
            let why = conn.as_ref().and_then(|c| c.ended());
            let exit = match (&why, code) {
                (Some(w), _) => w.clone(),
                (None, Some(c)) => format!("the plugin exited ({c})"),
                (None, None) => "the plugin exited".into(),
            };
            if let Some(c) = conn {
                // Give the stderr reader a moment: the last words usually say why.
                std::thread::sleep(Duration::from_millis(20));
                c.end(&format!(
                    "{exit}, while a call was in flight{}",
                    stderr_note(&tail_text(&sup.tail, 3))
                ));
            }
            let _ = std::fs::remove_file(cfg.record_path(&sup.spec.activation));
            if sup.stopping.load(Ordering::SeqCst) {
                let mut s = sup.status.lock().unwrap_or_else(|p| p.into_inner());
                s.state = ExecState::Stopped;
                s.pid = None;
                return;
            }
            if started.elapsed() >= cfg.healthy_reset {
                failures = 0;
            }
            {
                let mut s = sup.status.lock().unwrap_or_else(|p| p.into_inner());
                s.state = ExecState::Restarting;
                s.pid = None;
                s.last_exit = Some(exit.clone());
                s.stderr_tail = sup
                    .tail
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .cloned()
                    .collect();
            }
            tracing::warn!(activation = %sup.spec.activation, reason = %exit, "exec plugin ended; restarting after a backoff");
            loop {
                let delay = backoff_delay(cfg.backoff_initial, cfg.backoff_max, failures);
                failures = failures.saturating_add(1);
                {
                    let g = sup.wake.0.lock().unwrap_or_else(|p| p.into_inner());
                    if !sup.stopping.load(Ordering::SeqCst) {
                        let _ = sup.wake.1.wait_timeout(g, delay);
                    }
                }
                if sup.stopping.load(Ordering::SeqCst) {
                    let mut s = sup.status.lock().unwrap_or_else(|p| p.into_inner());
                    s.state = ExecState::Stopped;
                    return;
                }
                match start_lines(
                    &cfg,
                    &sup.spec,
                    &sup.tail,
                    Some(&cgroup),
                    Some(cfg.log_path(&sup.spec.activation)),
                ) {
                    Ok(s) => {
                        save_record(&cfg, &sup.spec, s.conn.pid, s.applied.cgroup.clone());
                        {
                            let mut st = sup.status.lock().unwrap_or_else(|p| p.into_inner());
                            st.state = ExecState::Running;
                            st.pid = Some(s.conn.pid);
                            st.restarts += 1;
                            st.limits_applied = s.applied.describe();
                        }
                        *sup.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(s.conn.clone());
                        child = s.child;
                        started = Instant::now();
                        // A stop that came while this one started ends it too.
                        if sup.stopping.load(Ordering::SeqCst) {
                            s.conn.end("stopped");
                        }
                        break;
                    }
                    Err(e) => {
                        let mut st = sup.status.lock().unwrap_or_else(|p| p.into_inner());
                        st.last_exit = Some(e.to_string());
                        st.restarts += 1;
                    }
                }
            }
        }
    })
}

impl ExecPlugins for ExecBridge {
    fn ensure(&self, spec: &ExecSpec) -> Result<ExecStatus, ExecError> {
        if spec.protocol == ExecProtocol::OneShot {
            if let Some(old) = self.sup(&spec.activation) {
                self.stop(&old.spec.activation);
            }
            let first = self
                .one_shot
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(spec.activation.clone());
            let replaced = if first {
                self.kill_leftovers(&spec.activation)
            } else {
                Vec::new()
            };
            check_program(spec)?;
            return Ok(ExecStatus {
                state: ExecState::OneShot,
                limits_applied: match spec.memory_bytes {
                    Some(m) => format!("rlimit as={m} (per call)"),
                    None => "none".into(),
                },
                replaced,
                ..Default::default()
            });
        }
        if let Some(sup) = self.sup(&spec.activation) {
            if sup.spec == *spec {
                let mut s = sup.status.lock().unwrap_or_else(|p| p.into_inner()).clone();
                s.stderr_tail = sup
                    .tail
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .cloned()
                    .collect();
                // Said once, by the ensure that replaced them.
                sup.status
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .replaced
                    .clear();
                return Ok(s);
            }
            self.stop(&spec.activation);
        }
        match self.start(spec) {
            Ok(sup) => {
                let mut s = sup.status.lock().unwrap_or_else(|p| p.into_inner()).clone();
                sup.status
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .replaced
                    .clear();
                s.stderr_tail.clear();
                self.sups
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(spec.activation.clone(), sup);
                Ok(s)
            }
            Err((e, _)) => Err(e),
        }
    }

    fn stop(&self, activation: &str) {
        self.one_shot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(activation);
        let sup = self
            .sups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(activation);
        match sup {
            Some(s) => self.stop_sup(&s),
            None => {
                self.kill_leftovers(activation);
            }
        }
    }

    fn stop_all(&self) {
        let all: Vec<Arc<Sup>> = self
            .sups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, s)| s)
            .collect();
        for s in all {
            self.stop_sup(&s);
        }
    }

    fn module(&self, spec: &ExecSpec) -> Arc<dyn Module> {
        match spec.protocol {
            ExecProtocol::OneShot => Arc::new(OneShotModule {
                cfg: self.cfg.clone(),
                spec: spec.clone(),
                slots: Arc::new(Slots::new(spec.max_concurrent)),
                transient: false,
            }),
            ExecProtocol::Lines => Arc::new(SupervisedModule {
                sups: self.sups.clone(),
                activation: spec.activation.clone(),
            }),
        }
    }
}

fn check_program(spec: &ExecSpec) -> Result<(), ExecError> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(&spec.program) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(()),
        Ok(_) => Err(ExecError::Spawn {
            program: spec.program.display().to_string(),
            reason: "not an executable file".into(),
        }),
        Err(e) => Err(ExecError::Spawn {
            program: spec.program.display().to_string(),
            reason: e.to_string(),
        }),
    }
}

/// The handle of a supervised (`lines`) activation.
/// The supervisor is looked up at each call: the handle outlives restarts and replacements.
struct SupervisedModule {
    sups: Arc<Mutex<HashMap<String, Arc<Sup>>>>,
    activation: String,
}

impl Module for SupervisedModule {
    fn call(
        &self,
        entry: &str,
        input: &Value,
        limits: &CallLimits,
    ) -> Result<CallOutcome, SandboxError> {
        let sup = self
            .sups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&self.activation)
            .cloned();
        let Some(sup) = &sup else {
            return Err(SandboxError::Exec(format!(
                "the plugin process of activation {} is not running",
                self.activation
            )));
        };
        outcome(with_slot(
            &sup.slots,
            limits.timeout,
            sup.slots.max,
            |left| {
                let conn = sup.conn.lock().unwrap_or_else(|p| p.into_inner()).clone();
                match conn {
                    Some(c) => c.call(entry, input, left),
                    None => {
                        let s = sup.status.lock().unwrap_or_else(|p| p.into_inner());
                        Err(SandboxError::Exec(format!(
                            "the plugin process of activation {} is restarting (last exit: {})",
                            self.activation,
                            s.last_exit.clone().unwrap_or_default()
                        )))
                    }
                }
            },
        ))
    }

    fn exports(&self) -> Vec<String> {
        Vec::new()
    }
}

/// A process per call: `oneShot` plugins, and `lines` plugins called from the CLI.
struct OneShotModule {
    cfg: ExecConfig,
    spec: ExecSpec,
    slots: Arc<Slots>,
    /// A `lines` plugin started, greeted, called once and ended.
    transient: bool,
}

impl Module for OneShotModule {
    fn call(
        &self,
        entry: &str,
        input: &Value,
        limits: &CallLimits,
    ) -> Result<CallOutcome, SandboxError> {
        outcome(with_slot(
            &self.slots,
            limits.timeout,
            self.slots.max,
            |left| {
                if self.transient {
                    call_transient(&self.cfg, &self.spec, entry, input, left)
                } else {
                    call_once(&self.cfg, &self.spec, entry, input, left)
                }
            },
        ))
    }

    fn exports(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The CLI's [`ExecPlugins`] (`lasctl apply`'s admission checks): nothing persistent; every
/// call starts a process (a `lines` plugin is greeted, called once and ended).
pub struct OneShotExec {
    cfg: ExecConfig,
}

impl OneShotExec {
    pub fn new(home: &LasHome) -> Self {
        OneShotExec {
            cfg: ExecConfig::for_home(home),
        }
    }
}

impl ExecPlugins for OneShotExec {
    fn ensure(&self, spec: &ExecSpec) -> Result<ExecStatus, ExecError> {
        check_program(spec)?;
        Ok(ExecStatus {
            state: ExecState::OneShot,
            ..Default::default()
        })
    }
    fn stop(&self, _activation: &str) {}
    fn stop_all(&self) {}
    fn module(&self, spec: &ExecSpec) -> Arc<dyn Module> {
        Arc::new(OneShotModule {
            cfg: self.cfg.clone(),
            spec: spec.clone(),
            slots: Arc::new(Slots::new(spec.max_concurrent)),
            transient: spec.protocol == ExecProtocol::Lines,
        })
    }
}

/// Pids of live processes marked as `activation`'s exec plugin of this stack.
fn marked(cfg: &ExecConfig, activation: &str) -> Vec<u32> {
    let want_owner = format!("{ENV_OWNER}={}", ExecConfig::owner(activation));
    let want_stack = format!("{ENV_STACK}={}", cfg.logs_dir.display());
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
                return false;
            };
            let (mut o, mut s) = (false, false);
            for v in env.split(|b| *b == 0) {
                o |= v == want_owner.as_bytes();
                s |= v == want_stack.as_bytes();
            }
            o && s && proc_stat(*pid).is_some_and(|(_, _, st)| st != 'Z')
        })
        .collect()
}

/// An in-memory [`ExecPlugins`] for unit tests of the layers above: nothing is spawned; calls
/// answer with `answer(entry, input)`; `ensure` and `stop` are recorded.
pub struct MemoryExec {
    pub answer: Arc<dyn Fn(&str, &Value) -> Result<Value, String> + Send + Sync>,
    pub ensured: Mutex<Vec<String>>,
    pub stopped: Mutex<Vec<String>>,
}

impl MemoryExec {
    pub fn new(
        answer: impl Fn(&str, &Value) -> Result<Value, String> + Send + Sync + 'static,
    ) -> Self {
        MemoryExec {
            answer: Arc::new(answer),
            ensured: Mutex::default(),
            stopped: Mutex::default(),
        }
    }
}

struct MemoryModule(Arc<dyn Fn(&str, &Value) -> Result<Value, String> + Send + Sync>);

impl Module for MemoryModule {
    fn call(
        &self,
        entry: &str,
        input: &Value,
        _limits: &CallLimits,
    ) -> Result<CallOutcome, SandboxError> {
        outcome((self.0)(entry, input).map_err(SandboxError::Exec))
    }
    fn exports(&self) -> Vec<String> {
        Vec::new()
    }
}

impl ExecPlugins for MemoryExec {
    fn ensure(&self, spec: &ExecSpec) -> Result<ExecStatus, ExecError> {
        self.ensured
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(spec.activation.clone());
        Ok(ExecStatus {
            state: ExecState::Running,
            pid: Some(1),
            limits_applied: "none".into(),
            ..Default::default()
        })
    }
    fn stop(&self, activation: &str) {
        self.stopped
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(activation.to_string());
    }
    fn stop_all(&self) {}
    fn module(&self, _spec: &ExecSpec) -> Arc<dyn Module> {
        Arc::new(MemoryModule(self.answer.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn setup(script: &str, protocol: ExecProtocol) -> (tempfile::TempDir, ExecConfig, ExecSpec) {
        let dir = tempfile::tempdir().unwrap();
        let home = LasHome::at(dir.path().join("home"));
        home.ensure().unwrap();
        let program = dir.path().join("plugin.sh");
        std::fs::write(&program, script).unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        let spec = ExecSpec {
            activation: "t".into(),
            program,
            sha256: String::new(),
            protocol,
            name: "p".into(),
            version: "1.0.0".into(),
            text_io: false,
            memory_bytes: None,
            max_concurrent: 2,
        };
        (dir, ExecConfig::for_home(&home), spec)
    }

    fn script(version: u32, name: &str, on_call: &str) -> String {
        format!(
            "#!/bin/sh\nread hello\nprintf '{{\"protocol\":\"las-exec\",\"version\":{version},\"name\":\"{name}\",\"pluginVersion\":\"1.0.0\",\"capabilities\":[\"call\"]}}\\n'\nwhile read -r line; do\n  rest=${{line#*\\\"id\\\":}}\n  id=${{rest%%,*}}\n  {on_call}\ndone\n"
        )
    }

    const ECHO: &str = r#"printf '{"id":%s,"output":{"ok":true}}\n' "$id""#;

    fn limits(ms: u64) -> CallLimits {
        CallLimits {
            timeout: Duration::from_millis(ms),
            ..CallLimits::default()
        }
    }

    #[test]
    fn a_persistent_plugin_answers_calls_and_ends_on_stop() {
        let (_d, cfg, spec) = setup(&script(1, "p", ECHO), ExecProtocol::Lines);
        let bridge = ExecBridge::new(cfg);
        let st = bridge.ensure(&spec).unwrap();
        assert_eq!(st.state, ExecState::Running);
        let pid = st.pid.unwrap();
        let m = bridge.module(&spec);
        for _ in 0..3 {
            let out = m.call("e", &json!({"x": 1}), &limits(2000)).unwrap();
            assert_eq!(out.output, json!({"ok": true}));
        }
        // The same spec again: the same process.
        assert_eq!(bridge.ensure(&spec).unwrap().pid, Some(pid));
        bridge.stop("t");
        assert!(proc_stat(pid).is_none_or(|(_, _, s)| s == 'Z'));
        let e = m.call("e", &json!({}), &limits(500)).unwrap_err();
        assert!(e.to_string().contains("not running"), "{e}");
    }

    #[test]
    fn handshake_failures_name_what_is_wrong_and_leave_nothing() {
        for (text, want) in [
            (script(2, "p", ECHO), "version 2"),
            (script(1, "q", ECHO), "says it is q 1.0.0"),
            (
                "#!/bin/sh\nread hello\necho hi\nsleep 5\n".to_string(),
                "bad handshake",
            ),
        ] {
            let (_d, cfg, spec) = setup(&text, ExecProtocol::Lines);
            let bridge = ExecBridge::new(cfg.clone());
            let e = bridge.ensure(&spec).unwrap_err();
            assert!(e.to_string().contains(want), "{e}");
            assert!(marked(&cfg, "t").is_empty());
        }
    }

    #[test]
    fn an_oversized_line_a_timeout_and_a_violation_end_the_process_which_restarts() {
        for (on_call, want) in [
            ("head -c 1100000 /dev/zero | tr '\\0' a; echo", "line over"),
            (&format!("sleep 3; {ECHO}") as &str, "did not finish"),
            ("echo nonsense", "protocol violation"),
        ] {
            let (_d, mut cfg, spec) = setup(&script(1, "p", on_call), ExecProtocol::Lines);
            cfg.backoff_initial = Duration::from_millis(50);
            let bridge = ExecBridge::new(cfg);
            let first = bridge.ensure(&spec).unwrap().pid.unwrap();
            let m = bridge.module(&spec);
            let e = m.call("e", &json!({}), &limits(400)).unwrap_err();
            assert!(e.to_string().contains(want), "{want}: {e}");
            let t0 = Instant::now();
            loop {
                let s = bridge.ensure(&spec).unwrap();
                if s.state == ExecState::Running && s.pid != Some(first) {
                    assert_eq!(s.restarts, 1);
                    break;
                }
                assert!(t0.elapsed() < Duration::from_secs(5), "no restart: {s:?}");
                std::thread::sleep(Duration::from_millis(20));
            }
            bridge.stop_all();
        }
    }

    #[test]
    fn one_shot_filters_take_json_or_text_and_fail_on_a_bad_exit() {
        let (_d, cfg, mut spec) = setup(
            "#!/bin/sh\n[ \"$1\" = fail ] && { echo broken >&2; exit 2; }\ntr a-z A-Z\n",
            ExecProtocol::OneShot,
        );
        spec.text_io = true;
        let bridge = ExecBridge::new(cfg);
        assert_eq!(bridge.ensure(&spec).unwrap().state, ExecState::OneShot);
        let m = bridge.module(&spec);
        let out = m.call("e", &json!({"text": "abc"}), &limits(2000)).unwrap();
        assert_eq!(out.output, json!({"text": "ABC"}));
        let e = m
            .call("fail", &json!({"text": "abc"}), &limits(2000))
            .unwrap_err();
        assert!(e.to_string().contains("broken"), "{e}");
        spec.text_io = false;
        let m = bridge.module(&spec);
        // JSON mode: one JSON line in, one JSON value out (`{"a":1}` upper-cased).
        let out = m.call("e", &json!({"a": 1}), &limits(2000)).unwrap();
        assert_eq!(out.output, json!({"A": 1}));
    }

    #[test]
    fn lines_are_read_with_a_cap() {
        let mut r = std::io::BufReader::with_capacity(4, &b"abc\ndefghij\nk"[..]);
        assert!(matches!(read_line_capped(&mut r, 5).unwrap(), Line::Got(l) if l == b"abc"));
        assert!(matches!(
            read_line_capped(&mut r, 5).unwrap(),
            Line::TooLong
        ));
    }
}
